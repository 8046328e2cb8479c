//! Real receivers on 127.0.0.1 for the notification tests: one HTTP server
//! answering as each chat service's documented API does (request format and
//! auth checked, its own error answers), and a real SMTP server (aiosmtpd)
//! with STARTTLS or TLS and a login.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};

pub const WEBHOOK_SECRET: &str = "whsec-5f0c1d2e3a4b5c6d7e8f";
pub const TELEGRAM_TOKEN: &str = "7012345678:AAH-test-token-0123456789abcdefghi";
pub const TELEGRAM_CHAT: &str = "1275129801";
pub const NTFY_TOPIC: &str = "aegis-alerts-7f3k2q9z";
pub const NTFY_TOKEN: &str = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2";
pub const MATRIX_TOKEN: &str = "syt_dGVzdA_abcdefghijklmnop_0a1b2c";
pub const MATRIX_ROOM: &str = "!ops:example.org";
pub const SLACK_PATH: &str = "/slack/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX";
pub const DISCORD_PATH: &str = "/discord/api/webhooks/1234567890/abcDEF-ghiJKL-token";

/// What the receivers got, and how they are told to misbehave.
#[derive(Default)]
pub struct Got {
    /// (service, the message as the service parsed it).
    pub messages: Vec<(String, serde_json::Value)>,
    /// (service, why a request was refused).
    pub refused: Vec<(String, String)>,
    /// Service → the status it answers with (a sink that is down).
    pub fail: BTreeMap<String, u16>,
    /// Services that take a minute to answer (a slow sink).
    pub slow: BTreeSet<String>,
    matrix_txns: BTreeMap<String, String>,
}

pub struct Receivers {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Got>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Got>>;

impl Receivers {
    /// Start on 127.0.0.1:`port` (0: any free port).
    pub async fn start(port: u16) -> Receivers {
        let got: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/hook", post(webhook))
            .route(SLACK_PATH, post(slack))
            .route(DISCORD_PATH, post(discord))
            .route("/telegram/{bot}/sendMessage", post(telegram))
            .route("/ntfy/", post(ntfy))
            .route(
                "/matrix/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                put(matrix),
            )
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receivers { addr, got, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Messages one service accepted.
    pub fn of(&self, service: &str) -> Vec<serde_json::Value> {
        let g = self.got.lock().unwrap();
        g.messages
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn set_fail(&self, service: &str, status: Option<u16>) {
        let mut g = self.got.lock().unwrap();
        match status {
            Some(s) => g.fail.insert(service.into(), s),
            None => g.fail.remove(service),
        };
    }

    pub fn set_slow(&self, service: &str, slow: bool) {
        let mut g = self.got.lock().unwrap();
        if slow {
            g.slow.insert(service.into());
        } else {
            g.slow.remove(service);
        }
    }
}

/// The misbehaviour asked for, if any.
async fn misbehave(got: &Shared, service: &str) -> Option<Response> {
    let (fail, slow) = {
        let g = got.lock().unwrap();
        (g.fail.get(service).copied(), g.slow.contains(service))
    };
    if slow {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    fail.map(|s| {
        (
            StatusCode::from_u16(s).unwrap(),
            "the test made this receiver fail",
        )
            .into_response()
    })
}

fn refuse(
    got: &Shared,
    service: &str,
    status: StatusCode,
    why: &str,
    body: serde_json::Value,
) -> Response {
    got.lock()
        .unwrap()
        .refused
        .push((service.to_string(), why.to_string()));
    (status, axum::Json(body)).into_response()
}

fn accept(got: &Shared, service: &str, msg: serde_json::Value) {
    got.lock()
        .unwrap()
        .messages
        .push((service.to_string(), msg));
}

fn json_body(headers: &HeaderMap, body: &[u8]) -> Option<serde_json::Value> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return None;
    }
    serde_json::from_slice(body).ok()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The generic webhook: signed with HMAC-SHA256 over the exact body.
async fn webhook(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misbehave(&got, "webhook").await {
        return r;
    }
    let sig = headers
        .get("x-tidekeeper-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let want = tidekeeper::notify::sign(WEBHOOK_SECRET.as_bytes(), &body);
    if sig != want {
        return refuse(
            &got,
            "webhook",
            StatusCode::UNAUTHORIZED,
            "bad signature",
            serde_json::json!({"error": "bad signature"}),
        );
    }
    let Some(v) = json_body(&headers, &body) else {
        return refuse(
            &got,
            "webhook",
            StatusCode::BAD_REQUEST,
            "not JSON",
            serde_json::json!({}),
        );
    };
    let delivery = headers
        .get("x-tidekeeper-delivery")
        .and_then(|v| v.to_str().ok());
    if v["version"] != 1 || v["id"].as_str() != delivery || v["kind"].as_str().is_none() {
        return refuse(
            &got,
            "webhook",
            StatusCode::BAD_REQUEST,
            "not the documented schema",
            serde_json::json!({}),
        );
    }
    accept(&got, "webhook", v);
    StatusCode::NO_CONTENT.into_response()
}

/// Slack incoming webhooks answer `ok`, or 400 `invalid_payload` / `no_text`.
async fn slack(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misbehave(&got, "slack").await {
        return r;
    }
    let Some(v) = json_body(&headers, &body) else {
        got.lock()
            .unwrap()
            .refused
            .push(("slack".into(), "invalid_payload".into()));
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if v["text"].as_str().is_none_or(|t| t.trim().is_empty()) {
        got.lock()
            .unwrap()
            .refused
            .push(("slack".into(), "no_text".into()));
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    accept(&got, "slack", v);
    "ok".into_response()
}

/// Discord webhooks: `content` of 1–2000 characters; 204 without `?wait`.
async fn discord(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misbehave(&got, "discord").await {
        return r;
    }
    let Some(v) = json_body(&headers, &body) else {
        return refuse(
            &got,
            "discord",
            StatusCode::BAD_REQUEST,
            "not JSON",
            serde_json::json!({"code": 50109, "message": "The request body contains invalid JSON."}),
        );
    };
    let n = v["content"]
        .as_str()
        .map(|c| c.chars().count())
        .unwrap_or(0);
    if !(1..=2000).contains(&n) {
        return refuse(
            &got,
            "discord",
            StatusCode::BAD_REQUEST,
            "content length",
            serde_json::json!({"code": 50035, "message": "Invalid Form Body"}),
        );
    }
    accept(&got, "discord", v);
    StatusCode::NO_CONTENT.into_response()
}

/// Telegram Bot API: POST /bot<token>/sendMessage with chat_id and text.
async fn telegram(
    State(got): State<Shared>,
    UrlPath(bot): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = misbehave(&got, "telegram").await {
        return r;
    }
    if bot != format!("bot{TELEGRAM_TOKEN}") {
        return refuse(
            &got,
            "telegram",
            StatusCode::UNAUTHORIZED,
            "bad token",
            serde_json::json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
        );
    }
    let Some(v) = json_body(&headers, &body) else {
        return refuse(
            &got,
            "telegram",
            StatusCode::BAD_REQUEST,
            "not JSON",
            serde_json::json!({"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"}),
        );
    };
    let chat = match &v["chat_id"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if chat != TELEGRAM_CHAT {
        return refuse(
            &got,
            "telegram",
            StatusCode::BAD_REQUEST,
            "chat not found",
            serde_json::json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
        );
    }
    let n = v["text"].as_str().map(|c| c.chars().count()).unwrap_or(0);
    if !(1..=4096).contains(&n) {
        return refuse(
            &got,
            "telegram",
            StatusCode::BAD_REQUEST,
            "text length",
            serde_json::json!({"ok": false, "error_code": 400, "description": "Bad Request: message is too long"}),
        );
    }
    accept(&got, "telegram", v);
    axum::Json(serde_json::json!({"ok": true, "result": {"message_id": 1, "chat": {"id": 1275129801_i64}}})).into_response()
}

/// ntfy's JSON publishing: POST / with topic and message; access token as Bearer.
async fn ntfy(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misbehave(&got, "ntfy").await {
        return r;
    }
    if bearer(&headers) != Some(NTFY_TOKEN) {
        return refuse(
            &got,
            "ntfy",
            StatusCode::UNAUTHORIZED,
            "bad token",
            serde_json::json!({"code": 40101, "http": 401, "error": "unauthorized"}),
        );
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return refuse(
            &got,
            "ntfy",
            StatusCode::BAD_REQUEST,
            "not JSON",
            serde_json::json!({"code": 40017, "http": 400, "error": "invalid request: request body must be message JSON"}),
        );
    };
    let priority_ok = v["priority"].as_u64().is_none_or(|p| (1..=5).contains(&p));
    if v["topic"] != NTFY_TOPIC || v["message"].as_str().is_none_or(str::is_empty) || !priority_ok {
        return refuse(
            &got,
            "ntfy",
            StatusCode::BAD_REQUEST,
            "topic, message or priority",
            serde_json::json!({"code": 40009, "http": 400, "error": "invalid request"}),
        );
    }
    accept(&got, "ntfy", v);
    axum::Json(serde_json::json!({"id": "sPs7fQ2x", "event": "message", "topic": NTFY_TOPIC}))
        .into_response()
}

/// Matrix client-server API: PUT a m.room.message with a transaction id;
/// the same transaction id again is the same event (not posted twice).
async fn matrix(
    State(got): State<Shared>,
    UrlPath((room, txn)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = misbehave(&got, "matrix").await {
        return r;
    }
    match bearer(&headers) {
        None => {
            return refuse(
                &got,
                "matrix",
                StatusCode::UNAUTHORIZED,
                "no token",
                serde_json::json!({"errcode": "M_MISSING_TOKEN", "error": "Missing access token"}),
            );
        }
        Some(t) if t != MATRIX_TOKEN => {
            return refuse(
                &got,
                "matrix",
                StatusCode::UNAUTHORIZED,
                "bad token",
                serde_json::json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown access token"}),
            );
        }
        _ => {}
    }
    if room != MATRIX_ROOM {
        return refuse(
            &got,
            "matrix",
            StatusCode::FORBIDDEN,
            "not in room",
            serde_json::json!({"errcode": "M_FORBIDDEN", "error": "not in room"}),
        );
    }
    let Some(v) = json_body(&headers, &body) else {
        return refuse(
            &got,
            "matrix",
            StatusCode::BAD_REQUEST,
            "not JSON",
            serde_json::json!({"errcode": "M_NOT_JSON"}),
        );
    };
    if v["msgtype"] != "m.text" || v["body"].as_str().is_none_or(str::is_empty) {
        return refuse(
            &got,
            "matrix",
            StatusCode::BAD_REQUEST,
            "not a text message",
            serde_json::json!({"errcode": "M_BAD_JSON"}),
        );
    }
    let mut g = got.lock().unwrap();
    if let Some(id) = g.matrix_txns.get(&txn) {
        return axum::Json(serde_json::json!({"event_id": id})).into_response();
    }
    let id = format!("$event{}", g.matrix_txns.len());
    g.matrix_txns.insert(txn, id.clone());
    g.messages.push(("matrix".into(), v));
    axum::Json(serde_json::json!({"event_id": id})).into_response()
}

/// A CA and a certificate for 127.0.0.1 signed by it (openssl), in `dir`:
/// (ca.pem, leaf.pem, leaf.key).
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tidekeeper test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

/// HTTPS on 127.0.0.1 in front of the plain HTTP server on `backend`
/// (a TLS-terminating proxy, as a forge behind nginx is), with the
/// certificate `leaf` and its `key`; its port. Runs until the test ends.
pub fn https_front(backend: u16, leaf: &Path, key: &Path) -> u16 {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(leaf)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    super::in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// A real SMTP server (aiosmtpd) on 127.0.0.1; stopped when dropped.
pub struct Smtp {
    pub port: u16,
    pub dir: PathBuf,
    child: std::process::Child,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    /// `mode`: starttls or tls. Mail lands in `dir/out`.
    pub fn start(
        dir: &Path,
        mode: &str,
        cert: &Path,
        key: &Path,
        user: &str,
        password: &str,
    ) -> Smtp {
        use std::io::BufRead;
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let port = super::daemon::free_port();
        // Debian's python3, which has python3-aiosmtpd (scripts/setup installs it).
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(mode)
            .arg(cert)
            .arg(key)
            .arg(user)
            .arg(password)
            .arg(&out)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start (is python3-aiosmtpd installed? scripts/setup installs it)"
        );
        Smtp {
            port,
            dir: out,
            child,
        }
    }

    /// The mails received: (how it came as JSON, the message text).
    pub fn mails(&self) -> Vec<(serde_json::Value, String)> {
        let mut out = Vec::new();
        for n in 0.. {
            let eml = self.dir.join(format!("{n}.eml"));
            let Ok(text) = std::fs::read_to_string(&eml) else {
                break;
            };
            let meta = std::fs::read(self.dir.join(format!("{n}.json"))).unwrap();
            out.push((serde_json::from_slice(&meta).unwrap(), text));
        }
        out
    }
}
