//! The daemon's HTTP side: health, metrics, status, badges, the status page,
//! the git webhook (HMAC-verified) and `retry`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::Shared;

/// The largest request body taken (a webhook's payload): larger is 413.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// A client has this long to send a request's headers (a connection that
/// sends nothing, or half a header, is closed after it).
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections at once; more wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// A request (its body read, its answer made) takes at most this long.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits of the daemon's HTTP server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// The defaults, or what `TIDEKEEPER_HTTP_HEADER_TIMEOUT_MS` and
    /// `TIDEKEEPER_HTTP_MAX_CONNECTIONS` say (positive numbers; for tests
    /// and small machines).
    pub(crate) fn from_env() -> Limits {
        let num = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let d = Limits::default();
        Limits {
            header_timeout: num("TIDEKEEPER_HTTP_HEADER_TIMEOUT_MS")
                .map(Duration::from_millis)
                .unwrap_or(d.header_timeout),
            max_connections: num("TIDEKEEPER_HTTP_MAX_CONNECTIONS")
                .map(|n| n as usize)
                .unwrap_or(d.max_connections),
        }
    }
}

/// Serve `app` on `listener` for ever: HTTP/1.1, each connection with a
/// header read timeout, at most `limits.max_connections` at once (the next
/// one is accepted when one closes), so neither half-open nor idle
/// connections can use up the daemon's file descriptors.
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait, and try again.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

/// A request that takes too long (a body sent a byte at a time) is answered 408.
async fn deadline(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/hosts/{name}", get(host_page))
        .route("/proposals/{name}", get(proposal_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        .route("/badges/{name}", get(badge))
        .route("/hooks/git", post(webhook))
        .route("/retry", post(retry))
        .route("/reconcile", post(reconcile))
        .route("/release", post(release))
        .route("/jobs/{name}/run", post(run_job))
        .route("/suspend", post(suspend))
        .route("/resume", post(resume))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(deadline))
        .with_state(shared)
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no successful fetch yet\n",
        )
            .into_response()
    }
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the
/// classic text format to anyone else.
async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut metrics = s.metrics.lock().unwrap().clone();
    metrics.queue = s.scheduler.due_now() as u64;
    let scrape = super::metrics::Scrape {
        status: s.status.lock().unwrap().clone(),
        metrics,
        notify: s.notifier.status(),
        process: super::metrics::Process::current(),
    };
    let text = super::metrics::openmetrics(scrape);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
    } else {
        let text = super::metrics::classic_text(&text);
        let kind = super::metrics::CLASSIC_CONTENT_TYPE;
        ([(header::CONTENT_TYPE, kind)], text).into_response()
    }
}

async fn status_json(State(s): State<Arc<Shared>>) -> Response {
    let st = s.status.lock().unwrap().clone();
    let mut v = serde_json::to_value(&st).expect("status serializes");
    v["state"] = st.state().0.into();
    v["notifications"] = serde_json::to_value(s.notifier.status()).unwrap_or_default();
    axum::Json(v).into_response()
}

async fn page(State(s): State<Arc<Shared>>) -> Html<String> {
    let status = s.status.lock().unwrap().clone();
    let board = s.board.lock().unwrap();
    Html(super::dashboard::page(&view(
        &status,
        &board,
        s.clock.now(),
    )))
}

fn view<'a>(
    status: &'a super::status::FleetStatus,
    board: &'a super::Board,
    now: chrono::DateTime<chrono::Utc>,
) -> super::dashboard::View<'a> {
    super::dashboard::View {
        status,
        history: &board.history,
        timeline: &board.timeline,
        commits: &board.commits,
        web: board.web.as_deref(),
        now,
    }
}

async fn host_page(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let status = s.status.lock().unwrap().clone();
    let board = s.board.lock().unwrap();
    match super::dashboard::host_page(&view(&status, &board, s.clock.now()), &name) {
        Some(page) => Html(page).into_response(),
        None => missing("host", &name),
    }
}

/// A pull request's page: `/proposals/7`, or the ref of another proposal.
async fn proposal_page(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let status = s.status.lock().unwrap().clone();
    let board = s.board.lock().unwrap();
    match super::dashboard::proposal_page(&view(&status, &board, s.clock.now()), &name) {
        Some(page) => Html(page).into_response(),
        None => missing("pull request", &name),
    }
}

fn missing(what: &str, name: &str) -> Response {
    let page = super::dashboard::missing_page(what, name);
    (StatusCode::NOT_FOUND, Html(page)).into_response()
}

/// An operator's action in the dashboard's events.
fn event(s: &Shared, kind: &str, text: String) {
    let mut board = s.board.lock().unwrap();
    board.history.event(&s.clock.stamp(), kind, text);
    board.save();
}

async fn badge(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let Some(name) = name.strip_suffix(".svg") else {
        return (StatusCode::NOT_FOUND, "badges end in .svg\n").into_response();
    };
    let files = s.status.lock().unwrap().files();
    match files.get(&format!("badges/{name}.svg")) {
        Some(svg) => {
            *s.metrics
                .lock()
                .unwrap()
                .badges_served
                .entry(name.to_string())
                .or_default() += 1;
            (
                [
                    (header::CONTENT_TYPE, "image/svg+xml"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                svg.clone(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no badge named {name}\n")).into_response(),
    }
}

/// Check a webhook body against GitHub's `X-Hub-Signature-256: sha256=<hex>`
/// or Gitea's `X-Gitea-Signature: <hex>`, in constant time.
pub(crate) fn signature_ok(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let given = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .or_else(|| {
            headers
                .get("x-gitea-signature")
                .and_then(|v| v.to_str().ok())
        });
    let Some(hex) = given else { return false };
    let Some(bytes) = decode_hex(hex.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn webhook(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(secret) = &s.webhook_secret
        && !signature_ok(secret, &headers, &body)
    {
        // Anyone can send this: it changes no state (only a counter, so a
        // wrong secret on the forge shows in /metrics and the log).
        s.metrics.lock().unwrap().webhook_rejected += 1;
        let why = if headers.contains_key("x-hub-signature-256")
            || headers.contains_key("x-gitea-signature")
        {
            "wrong signature"
        } else {
            "unsigned"
        };
        tracing::warn!(
            why,
            "webhook rejected: check the webhook secret on the forge"
        );
        return (StatusCode::UNAUTHORIZED, format!("rejected: {why}\n")).into_response();
    }
    s.metrics.lock().unwrap().webhook_accepted += 1;
    s.poke();
    (StatusCode::ACCEPTED, "fetching\n").into_response()
}

/// Constant-time equality (a token compared byte by byte would leak its prefix).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a request may prove it acts for an operator.
#[derive(Clone, Copy, PartialEq)]
enum Proof {
    /// Only `Authorization: Bearer <api token>`.
    Token,
    /// The token, or a body signed with the webhook secret. A signed body can
    /// be replayed by whoever saw one (a forge's delivery log), so this is
    /// only for `retry`, which asks again for what the branch already says.
    TokenOrSignature,
}

/// A request allowed to act on the daemon.
fn authorized(
    s: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    proof: Proof,
) -> Result<(), (StatusCode, &'static str)> {
    let signature_counts = proof == Proof::TokenOrSignature && s.webhook_secret.is_some();
    if s.api_token.is_none() && !signature_counts {
        return Err((
            StatusCode::FORBIDDEN,
            "disabled: start the daemon with TIDEKEEPER_API_TOKEN to allow this\n",
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let by_token =
        matches!((&s.api_token, bearer), (Some(t), Some(b)) if same(t, b.trim().as_bytes()));
    let by_signature = signature_counts
        && s.webhook_secret
            .as_ref()
            .is_some_and(|secret| signature_ok(secret, headers, body));
    if by_token || by_signature {
        Ok(())
    } else {
        tracing::warn!("unauthenticated request to act on the daemon rejected");
        Err((
            StatusCode::UNAUTHORIZED,
            "rejected: authentication required\n",
        ))
    }
}

async fn retry(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::TokenOrSignature) {
        return r.into_response();
    }
    let waiting = {
        let st = s.status.lock().unwrap();
        st.quarantined.is_some()
            || st.held.is_some()
            || st
                .rollout
                .as_ref()
                .is_some_and(|r| r.state.starts_with("stopped"))
    };
    if !waiting {
        return (
            StatusCode::OK,
            "nothing is quarantined, held or stopped: nothing to retry\n",
        )
            .into_response();
    }
    s.scheduler.now(super::scheduler::Request::Retry);
    s.poke();
    event(
        &s,
        "retried",
        "an operator asked to retry the quarantined, held or stopped commit".into(),
    );
    (StatusCode::ACCEPTED, "retrying the quarantined commit\n").into_response()
}

/// `tidekeeper reconcile`: fetch the branch now (applying a new head) and
/// check the hosts for drift, as the timers would later.
async fn reconcile(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::TokenOrSignature) {
        return r.into_response();
    }
    s.scheduler.now(super::scheduler::Request::Head);
    s.scheduler.now(super::scheduler::Request::Drift);
    s.poke();
    (
        StatusCode::ACCEPTED,
        "fetching the branch and checking for drift\n",
    )
        .into_response()
}

/// What `tidekeeper release` sends.
#[derive(serde::Deserialize)]
struct ReleaseAsked {
    commit: String,
    by: String,
    /// Apply it outside the apply windows too.
    #[serde(default)]
    now: bool,
}

/// `POST /release` (`{"commit", "by", "now"}`, the API token): apply the
/// commit held for want of a reviewed plan once, as it plans now, recording
/// who released it; with `now`, also outside the apply windows (a commit
/// they hold, or the head for the hosts waiting for theirs). Refused (409)
/// for a commit that is not the held one, and without `now` for one the
/// windows hold.
async fn release(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::Token) {
        return r.into_response();
    }
    let Ok(asked) = serde_json::from_slice::<ReleaseAsked>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"commit\": SHA, \"by\": NAME}\n",
        )
            .into_response();
    };
    let by = asked.by.trim();
    let commit = asked.commit.trim().to_ascii_lowercase();
    if by.is_empty() || by.len() > 100 || by.chars().any(char::is_control) {
        return (
            StatusCode::BAD_REQUEST,
            "--by: a name of one line, at most 100 characters\n",
        )
            .into_response();
    }
    if commit.len() < 7 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return (
            StatusCode::BAD_REQUEST,
            "COMMIT: at least 7 hex digits of a commit id\n",
        )
            .into_response();
    }
    let held = {
        let st = s.status.lock().unwrap();
        // With --now, a head some of whose hosts wait for their window too.
        let waiting = (asked.now && st.hosts.values().any(|h| h.waits_for_window()))
            .then(|| st.head_commit.clone())
            .flatten()
            .map(|c| super::status::Held {
                tree: String::new(),
                reason: "hosts wait for their apply windows".into(),
                at: String::new(),
                until: None,
                windows: true,
                commit: c,
            });
        st.held.clone().or(waiting)
    };
    let Some(h) = held.filter(|h| h.commit.starts_with(&commit)) else {
        return (
            StatusCode::CONFLICT,
            format!("commit {commit} is not held: nothing to release\n"),
        )
            .into_response();
    };
    if h.windows && !asked.now {
        return (
            StatusCode::CONFLICT,
            format!(
                "commit {} is held by the apply windows ({}); `tidekeeper release --now` applies it outside them\n",
                &h.commit[..12],
                h.reason
            ),
        )
            .into_response();
    }
    tracing::info!(commit = %&h.commit[..12], by, now = asked.now, "held commit released by an operator");
    *s.release.lock().unwrap() = Some(super::status::Release {
        commit: h.commit.clone(),
        by: by.to_string(),
        at: s.clock.stamp(),
        now: asked.now,
    });
    s.poke();
    (
        StatusCode::ACCEPTED,
        format!("releasing held commit {}\n", &h.commit[..12]),
    )
        .into_response()
}

/// Who and why, as `tidekeeper suspend` sends them.
#[derive(serde::Deserialize, Default)]
struct Why {
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
}

/// Stop applies and jobs now (an emergency); planning and reporting go on.
async fn suspend(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::Token) {
        return r.into_response();
    }
    let why: Why = serde_json::from_slice(&body).unwrap_or_default();
    let clean = |t: &str, d: &str| {
        let t: String = t.chars().filter(|c| !c.is_control()).take(200).collect();
        if t.trim().is_empty() {
            d.to_string()
        } else {
            t
        }
    };
    let by = clean(&why.by, "an operator");
    let reason = clean(&why.reason, "no reason given");
    {
        let mut st = s.status.lock().unwrap();
        if st.suspended.as_ref().is_some_and(|x| x.source == "config") {
            return (StatusCode::OK, "already suspended by tidekeeper.yaml\n").into_response();
        }
        st.suspended = Some(super::status::Suspension {
            source: "operator".into(),
            by: by.clone(),
            reason: reason.clone(),
            at: s.clock.stamp(),
        });
    }
    event(&s, "suspended", format!("by {by}: {reason}"));
    tracing::warn!(%by, %reason, "suspended over HTTP: no applies, no jobs until resumed");
    s.poke();
    (
        StatusCode::ACCEPTED,
        "suspended: applies and jobs stop; planning goes on\n",
    )
        .into_response()
}

/// Undo an operator's suspension (not one committed in tidekeeper.yaml).
async fn resume(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::Token) {
        return r.into_response();
    }
    {
        let mut st = s.status.lock().unwrap();
        match &st.suspended {
            Some(x) if x.source == "config" => {
                return (
                    StatusCode::CONFLICT,
                    "suspended by tidekeeper.yaml: commit `suspend: false` to resume\n",
                )
                    .into_response();
            }
            Some(_) => st.suspended = None,
            None => return (StatusCode::OK, "not suspended\n").into_response(),
        }
    }
    tracing::warn!("resumed over HTTP");
    event(&s, "resumed", "an operator resumed applies and jobs".into());
    s.poke();
    (StatusCode::ACCEPTED, "resumed\n").into_response()
}

/// Run a maintenance job now (an extra backup before a risky change).
async fn run_job(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&s, &headers, &body, Proof::Token) {
        return r.into_response();
    }
    if !s.status.lock().unwrap().schedules.contains_key(&name) {
        return (
            StatusCode::NOT_FOUND,
            format!("no maintenance job named {name:?}\n"),
        )
            .into_response();
    }
    s.scheduler
        .now(super::scheduler::Request::RunJob(name.clone()));
    (StatusCode::ACCEPTED, format!("running {name}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_and_gitea_signatures() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut gh = HeaderMap::new();
        gh.insert(
            "x-hub-signature-256",
            format!("sha256={hex}").parse().unwrap(),
        );
        assert!(signature_ok(b"s3cret", &gh, body));
        assert!(!signature_ok(b"other", &gh, body));
        assert!(!signature_ok(b"s3cret", &gh, b"tampered"));
        let mut gitea = HeaderMap::new();
        gitea.insert("x-gitea-signature", hex.parse().unwrap());
        assert!(signature_ok(b"s3cret", &gitea, body));
        assert!(!signature_ok(b"s3cret", &HeaderMap::new(), body));
        let mut bad = HeaderMap::new();
        bad.insert("x-hub-signature-256", "sha256=zz".parse().unwrap());
        assert!(!signature_ok(b"s3cret", &bad, body));
    }
}
