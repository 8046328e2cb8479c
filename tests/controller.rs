//! The daemon as a controller, in-process: `daemon::serve` runs in this
//! test's runtime with a listener bound here and a shutdown the test
//! completes. Most tests run it on a virtual clock over tokio's paused time:
//! work on hosts runs in real time while virtual time stands still, and
//! virtual time moves only while the daemon waits for its next timer — so
//! "at once" means "before any timer", and backoff is measured exactly.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidekeeper::clock::Clock;
use tidekeeper::daemon::scheduler::Request;
use tidekeeper::daemon::{self, Config, Shared};
use tokio::time::Instant;

use crate::support::fleet::FleetRepo;
use crate::support::testbed::Testbed;
use crate::support::{TempDir, git};

pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }

    pub(crate) fn applied(&self) -> Option<String> {
        self.shared.status.lock().unwrap().applied_commit.clone()
    }

    fn host(&self, name: &str) -> serde_json::Value {
        let st = self.shared.status.lock().unwrap();
        serde_json::to_value(st.hosts.get(name)).unwrap()
    }

    /// The commit quarantined (or held), if any.
    pub(crate) fn quarantined(&self) -> Option<String> {
        let st = self.shared.status.lock().unwrap();
        st.quarantined.as_ref().map(|q| q.commit.clone())
    }

    pub(crate) fn reconciles(&self, host: &str) -> u64 {
        let m = self.shared.metrics.lock().unwrap();
        m.reconciles
            .iter()
            .filter(|((h, _), _)| h == host)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// What a test daemon differs in.
#[derive(Default)]
pub(crate) struct Setup<'a> {
    pub(crate) api_token: Option<&'a str>,
    pub(crate) webhook_secret: Option<&'a str>,
    pub(crate) ssh_key: Option<&'a Path>,
    /// Real time instead of a virtual clock.
    pub(crate) real_time: bool,
    /// Refs of proposals to plan.
    pub(crate) proposals: &'a [&'a str],
    /// The drift interval, if not an hour.
    pub(crate) drift: Option<Duration>,
    /// Only these hosts (`--host`).
    pub(crate) hosts: &'a [&'a str],
    /// When the virtual clock starts (RFC 3339), if not 2026-06-01 12:00 UTC.
    pub(crate) start: Option<&'a str>,
}

/// Start the daemon in this runtime on the repo at `repo`, on a virtual clock.
async fn start(repo: &Path, state: &Path) -> Running {
    start_with(repo, state, Setup::default()).await
}

/// POST `body` to the daemon at `addr`; the status code and the body.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    post_raw(addr, path, &auth, body).await
}

/// POST with `auth` headers (each ending in CRLF) as given, from a blocking
/// task: on a virtual clock, time stands still until the answer.
async fn post_raw(
    addr: std::net::SocketAddr,
    path: &str,
    auth: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        crate::support::http_response(&out)
    })
    .await
    .unwrap()
}

pub(crate) async fn start_with(repo: &Path, state: &Path, setup: Setup<'_>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Config {
        repo: repo.display().to_string(),
        branch: "main".into(),
        state_dir: state.to_path_buf(),
        listen: listener.local_addr().unwrap(),
        // Only the test's own requests wake it.
        poll: Some(Duration::from_secs(3600)),
        drift: Some(setup.drift.unwrap_or(Duration::from_secs(3600))),
        webhook_secret: setup.webhook_secret.map(String::from),
        api_token: setup.api_token.map(String::from),
        ssh_key: setup.ssh_key.map(|k| k.display().to_string()),
        watch: false,
        hosts: setup.hosts.iter().map(|h| h.to_string()).collect(),
        labels: vec![],
        git: Default::default(),
        proposals: setup.proposals.iter().map(|p| p.to_string()).collect(),
        rollback_after: Duration::from_secs(120),
        worker: PathBuf::from(env!("CARGO_BIN_EXE_tidekeeper")),
    };
    let clock = if setup.real_time {
        // Real time, but never today's date: the fleets' "0 0 1 1 *" jobs
        // must not come due on 1 January (issue 33).
        Clock::starting_at(
            chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
                .unwrap()
                .into(),
        )
    } else {
        Clock::virtual_from(
            chrono::DateTime::parse_from_rfc3339(setup.start.unwrap_or("2026-06-01T12:00:00Z"))
                .unwrap()
                .into(),
        )
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::default();
    let s2 = slot.clone();
    let task = tokio::spawn(async move {
        daemon::serve(
            listener,
            async {
                let _ = rx.await;
            },
            clock,
            cfg,
            move |s| *s2.lock().unwrap() = Some(s),
        )
        .await
        .unwrap();
    });
    let shared = loop {
        if let Some(s) = slot.lock().unwrap().clone() {
            break s;
        }
        tokio::task::yield_now().await;
    };
    Running {
        shared,
        addr,
        stop: Some(tx),
        task,
    }
}

/// Wait until the repo's HEAD is applied; that commit.
async fn first_applied(d: &Running, repo: &Path) -> String {
    let c = git(repo, &["rev-parse", "HEAD"]);
    until("the first commit applied", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(c.as_str())
    })
    .await;
    c
}

/// Wait in real time until `ok` holds, without moving virtual time: each
/// wait is a blocking task, and tokio does not advance a paused clock
/// while one runs.
pub(crate) async fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20)))
            .await
            .unwrap();
    }
}

/// Let virtual time run in `step`s until `ok` holds (at most `limit` of
/// virtual time); how much virtual time that took.
async fn until_virtual(
    what: &str,
    step: Duration,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < limit,
            "no {what} within {limit:?} of virtual time"
        );
        tokio::time::sleep(step).await;
    }
    t.elapsed()
}

/// A fleet of two local hosts, `a` and `b`, each confined to its own
/// directory, with a role writing `/etc/app.conf` and a job `slow` on `a`.
fn fleet(dir: &Path, job: &str) -> (PathBuf, PathBuf, PathBuf) {
    let repo = dir.join("fleet");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&repo, &a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let w = |rel: &str, text: &str| {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("tidekeeper.yaml", "fleet: ctl\n");
    for (name, root) in [("a", &a), ("b", &b)] {
        w(
            &format!("hosts/{name}.yaml"),
            &format!("provider: local\nroot: {}\nroles: [app]\n", root.display()),
        );
    }
    w("roles/app.yaml", &app("v1"));
    w(
        "schedules.yaml",
        &format!(
            "jobs:\n  - name: slow\n    cron: \"0 0 1 1 *\"\n    hosts: {{names: [a]}}\n    timeout: 1h\n    command:\n      run: \"{job}\"\n"
        ),
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    commit(&repo, "v1");
    (repo, a, b)
}

fn app(v: &str) -> String {
    format!("files:\n  - {{path: /etc/app.conf, content: \"{v}\\n\"}}\n")
}

pub(crate) fn commit(repo: &Path, msg: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "--allow-empty", "-m", msg]);
    git(repo, &["rev-parse", "HEAD"])
}

fn read(root: &Path) -> String {
    std::fs::read_to_string(root.join("etc/app.conf")).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_long_job_on_one_host_never_holds_up_a_commit_for_the_others() {
    let tmp = TempDir::new("controller-job");
    let (started, go, done) = (
        tmp.path().join("job-started"),
        tmp.path().join("job-go"),
        tmp.path().join("job-done"),
    );
    // The job runs until the test lets it finish.
    let job = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.02; done; touch {}",
        started.display(),
        go.display(),
        done.display()
    );
    let (repo, a, b) = fleet(tmp.path(), &job);
    let d = start(&repo, &tmp.path().join("state")).await;
    first_applied(&d, &repo).await;

    d.shared.scheduler.now(Request::RunJob("slow".into()));
    until("the job running on a", Duration::from_secs(30), || {
        started.exists()
    })
    .await;
    std::fs::write(repo.join("roles/app.yaml"), app("v2")).unwrap();
    let c2 = commit(&repo, "v2");
    let poked = Instant::now();
    d.shared.poke();
    // The reconcile of the new commit is done when b has it and a says it waits.
    until("b applied and a waiting", Duration::from_secs(30), || {
        read(&b) == "v2\n" && d.host("a")["last_result"] == "waiting for maintenance job slow"
    })
    .await;
    assert_eq!(
        poked.elapsed(),
        Duration::ZERO,
        "b was applied at once, before any timer"
    );
    assert!(!done.exists(), "b was applied while the job still ran on a");
    assert_eq!(read(&a), "v1\n", "a is left to the job");
    let ha = d.host("a");
    assert_eq!(ha["state"], "pending", "{ha}");
    assert_eq!(ha["error_kind"], "locked", "{ha}");
    assert_ne!(
        d.applied(),
        Some(c2.clone()),
        "not applied to every host yet"
    );

    std::fs::write(&go, "").unwrap();
    until("a applied after the job", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert!(done.exists());
    assert_eq!(read(&a), "v2\n");
    assert_eq!(
        poked.elapsed(),
        Duration::ZERO,
        "a got the commit as soon as the job let go of it"
    );
    let runs = d.shared.status.lock().unwrap().schedules["slow"]
        .last_run
        .clone()
        .unwrap();
    assert!(runs.ok, "{runs:?}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn five_quick_commits_are_one_reconcile_of_the_newest() {
    let tmp = TempDir::new("controller-quick");
    let (repo, a, b) = fleet(tmp.path(), "true");
    let d = start(&repo, &tmp.path().join("state")).await;
    first_applied(&d, &repo).await;
    assert_eq!(d.reconciles("a"), 1);
    let mut last = String::new();
    for i in 2..=6 {
        std::fs::write(repo.join("roles/app.yaml"), app(&format!("v{i}"))).unwrap();
        last = commit(&repo, &format!("v{i}"));
    }
    for _ in 0..5 {
        d.shared.poke();
    }
    until("the newest applied", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(last.as_str())
    })
    .await;
    // Let a minute of virtual time pass: anything still queued would run.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!((read(&a), read(&b)), ("v6\n".into(), "v6\n".into()));
    assert_eq!(
        (d.reconciles("a"), d.reconciles("b")),
        (2, 2),
        "five pokes are one reconcile, of the newest commit"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_group_rolls_out_by_its_own_rollout_and_its_pause_holds_up_nothing_else() {
    let tmp = TempDir::new("controller-rollout");
    let (repo, a, w) = (
        tmp.path().join("fleet"),
        tmp.path().join("a"),
        tmp.path().join("ws"),
    );
    let ran = tmp.path().join("job-ran");
    for d in [&repo, &a, &w] {
        std::fs::create_dir_all(d).unwrap();
    }
    let write = |rel: &str, text: &str| {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // The group's hosts share one directory: one host at a time.
    write(
        "tidekeeper.yaml",
        "fleet: ctl\ndefaults:\n  parallelism: 1\n",
    );
    write(
        "hosts/a.yaml",
        &format!("provider: local\nroot: {}\nroles: [app]\n", a.display()),
    );
    let group = format!(
        "provider: local\nroot: {}\ncount: 2\nroles: [app]\n",
        w.display()
    );
    write("hosts/ws.yaml", &group);
    write("roles/app.yaml", &app("v1"));
    write(
        "schedules.yaml",
        &format!(
            "jobs:\n  - name: slow\n    cron: \"0 0 1 1 *\"\n    hosts: {{names: [a]}}\n    command:\n      run: \"touch {}\"\n",
            ran.display()
        ),
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    let c1 = commit(&repo, "v1");
    let d = start(&repo, &tmp.path().join("state")).await;
    until("the first commit applied", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c1.as_str())
    })
    .await;

    // The group gets its own rollout: one host at a time, ten minutes apart.
    write(
        "hosts/ws.yaml",
        &format!("{group}rollout:\n  batch: 1\n  pause: 10m\n"),
    );
    write("roles/app.yaml", &app("v2"));
    let c2 = commit(&repo, "v2 by rollout");
    let poked = Instant::now();
    d.shared.poke();
    let rollout = || {
        d.shared
            .status
            .lock()
            .unwrap()
            .rollout
            .clone()
            .map(|r| (r.stage, r.stages, r.state, r.hosts))
    };
    until("the pause after ws-1", Duration::from_secs(30), || {
        rollout().is_some_and(|r| r.2 == "pausing")
    })
    .await;
    assert_eq!(
        rollout(),
        Some((2, 3, "pausing".into(), vec!["ws-1".to_string()])),
        "a (outside the group) first, then ws-1, then the pause"
    );
    assert_eq!((read(&a), read(&w)), ("v2\n".into(), "v2\n".into()));
    assert_ne!(d.applied(), Some(c2.clone()));

    // During the pause the loop serves other work: a job on a runs now.
    d.shared.scheduler.now(Request::RunJob("slow".into()));
    until("the job on a", Duration::from_secs(30), || {
        d.shared.status.lock().unwrap().schedules["slow"]
            .last_run
            .is_some()
    })
    .await;
    assert!(ran.exists());
    assert_eq!(poked.elapsed(), Duration::ZERO, "no virtual time passed");
    assert_eq!(rollout().map(|r| r.2), Some("pausing".into()));

    // The pause is ten minutes of virtual time; then ws-2, and the commit is applied.
    let took = until_virtual(
        "the rollout done",
        Duration::from_secs(5),
        Duration::from_secs(1200),
        || d.applied().as_deref() == Some(c2.as_str()),
    )
    .await;
    assert!(
        took >= Duration::from_secs(600) && took <= Duration::from_secs(605),
        "the pause took {took:?}"
    );
    assert_eq!(
        rollout(),
        Some((3, 3, "done".into(), vec!["ws-2".to_string()]))
    );
    for h in ["a", "ws-1", "ws-2"] {
        assert_eq!(d.host(h)["state"], "synced", "{h}: {}", d.host(h));
    }
    d.stop().await;
}

const ROLE: &str = "files:\n  - {path: /etc/tk-ctl, content: \"VERSION\\n\"}\n";

#[tokio::test(start_paused = true)]
async fn a_host_that_cannot_be_reached_is_tried_again_with_growing_jittered_waits_and_recovers() {
    let bed = Testbed::start_light(2);
    let repo = FleetRepo::minimal(&bed, &[("app", &ROLE.replace("VERSION", "one"))]);
    let tmp = TempDir::new("controller-backoff");
    let d = start_with(
        &repo.path,
        &tmp.path().join("state"),
        Setup {
            ssh_key: Some(&repo.key),
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo.path).await;
    let cut = bed.host(1).name.clone();
    bed.cut_off(1);
    repo.write("roles/app.yaml", &ROLE.replace("VERSION", "two"));
    repo.commit("two");
    let c2 = git(&repo.path, &["rev-parse", "HEAD"]);
    let tries = || {
        let m = d.shared.metrics.lock().unwrap();
        m.host_errors.get("unreachable").copied().unwrap_or(0)
    };
    d.shared.poke();
    until("the first try", Duration::from_secs(60), || tries() == 1).await;
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-ctl"),
        "two\n",
        "the host that is up has it"
    );
    let st = d.host(&cut);
    assert_eq!(
        (st["state"].as_str(), st["error_kind"].as_str()),
        (Some("unreachable"), Some("unreachable")),
        "{st}"
    );
    assert!(
        d.shared.status.lock().unwrap().quarantined.is_none(),
        "an unreachable host quarantines nothing"
    );
    // Four more tries, timed on the virtual clock to 0.1 s: each wait is
    // 2 s, 4 s, 8 s, 16 s scaled by a jitter factor in [0.5, 1).
    let step = Duration::from_millis(100);
    let mut waits = vec![];
    for n in 2..=5 {
        let w = until_virtual("next try", step, Duration::from_secs(60), || tries() == n).await;
        waits.push(w.as_secs_f64());
    }
    for (i, w) in waits.iter().enumerate() {
        let full = f64::from(2u32 << i);
        assert!(
            *w >= full / 2.0 - 0.11 && *w <= full + 0.11,
            "wait {} was {w:.1} s, not in [{}, {full}) s: {waits:?}",
            i + 1,
            full / 2.0
        );
    }
    assert!(
        waits
            .iter()
            .enumerate()
            .any(|(i, w)| *w < 0.95 * f64::from(2u32 << i)),
        "the waits are jittered, not exact doublings: {waits:?}"
    );
    assert!(d.applied().as_deref() != Some(c2.as_str()));
    // Fetched, but not applied to every host: the sync metric does not move.
    let (fetched, synced) = {
        let m = d.shared.metrics.lock().unwrap();
        (m.last_fetch_unix, m.last_applied_unix)
    };
    assert!(fetched.is_some());
    let synced_before = synced;
    // Back on the network: the next try brings the commit, with no poll or webhook.
    bed.reconnect(1);
    until_virtual("recovery", step, Duration::from_secs(120), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(bed.ssh_ok(1, "cat /etc/tk-ctl"), "two\n");
    assert_eq!(d.host(&cut)["state"], "synced");
    let requeued = d
        .shared
        .metrics
        .lock()
        .unwrap()
        .requeues
        .get("unreachable")
        .copied();
    assert_eq!(requeued, Some(5), "one requeue per failed try");
    let synced = d.shared.metrics.lock().unwrap().last_applied_unix;
    assert!(
        synced.is_some() && synced > synced_before,
        "the sync metric moves once every host has the commit: {synced_before:?} → {synced:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_anyone_can_send_over_http_changes_nothing_and_what_operators_send_is_cleaned() {
    let tmp = TempDir::new("controller-http");
    let (started, _) = (tmp.path().join("job-started"), ());
    let (repo, _, _) = fleet(tmp.path(), &format!("touch {}", started.display()));
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            api_token: Some("tok-http-1"),
            webhook_secret: Some("hook-secret-1"),
            real_time: true,
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo).await;
    until("the timers queued", Duration::from_secs(30), || {
        d.shared.scheduler.len() == 3
    })
    .await;
    // Without the token: refused, nothing changes.
    for path in ["/suspend", "/resume", "/retry", "/jobs/slow/run"] {
        let (code, _) = post(d.addr, path, None, b"{}").await;
        assert_eq!(code, 401, "{path}");
        let (code, _) = post(d.addr, path, Some("tok-http-2"), b"{}").await;
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    // A body signed with the webhook secret (say, a push delivery someone
    // saw in the forge's log) is not an operator: it cannot suspend or run jobs.
    let delivery = br#"{"ref":"refs/heads/main"}"#;
    let signed = format!(
        "X-Hub-Signature-256: sha256={}\r\n",
        sign("hook-secret-1", delivery)
    );
    for path in ["/suspend", "/resume", "/jobs/slow/run"] {
        let (code, _) = post_raw(d.addr, path, &signed, delivery).await;
        assert_eq!(code, 401, "{path} with a replayed signed body");
    }
    assert!(d.shared.status.lock().unwrap().suspended.is_none());
    assert!(!started.exists(), "no job ran");
    // A job name that is not a job: nothing is scheduled.
    let (code, _) = post(d.addr, "/jobs/..%2F..%2Fetc/run", Some("tok-http-1"), b"").await;
    assert_eq!(code, 404);
    assert!(
        d.shared
            .scheduler
            .when(&Request::RunJob("../../etc".into()))
            .is_none()
    );
    assert_eq!(
        d.shared.scheduler.len(),
        3,
        "only the poll, the drift timer and the job's cron are queued"
    );
    // An operator's words are kept without control characters, at most 200 characters.
    let body = serde_json::json!({
        "by": "eve\n\u{1b}[31mroot",
        "reason": "x".repeat(5000),
    });
    let (code, _) = post(
        d.addr,
        "/suspend",
        Some("tok-http-1"),
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 202);
    let s = d.shared.status.lock().unwrap().suspended.clone().unwrap();
    assert_eq!(s.by, "eve[31mroot");
    assert_eq!(s.reason.len(), 200);
    // Garbage instead of JSON still suspends (an emergency), with defaults.
    let (code, _) = post(d.addr, "/resume", Some("tok-http-1"), b"").await;
    assert_eq!(code, 202);
    let (code, _) = post(d.addr, "/suspend", Some("tok-http-1"), b"\xff\x00not json").await;
    assert_eq!(code, 202);
    assert_eq!(
        d.shared
            .status
            .lock()
            .unwrap()
            .suspended
            .clone()
            .unwrap()
            .reason,
        "no reason given"
    );
    // The delivery that could act on nothing above is a good webhook.
    let (code, _) = post_raw(d.addr, "/hooks/git", &signed, delivery).await;
    assert_eq!(code, 202);
    d.stop().await;
}

/// GitHub's `X-Hub-Signature-256` of `body` (hex).
pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn suspend_stops_applies_and_jobs_for_hours_and_resume_goes_on() {
    let tmp = TempDir::new("controller-suspend");
    let ran = tmp.path().join("job-ran");
    let (repo, a, b) = fleet(tmp.path(), &format!("touch {}", ran.display()));
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            api_token: Some("tok-susp-1"),
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo).await;
    let (code, _) = post(
        d.addr,
        "/suspend",
        Some("tok-susp-1"),
        br#"{"by":"ops","reason":"incident 42"}"#,
    )
    .await;
    assert_eq!(code, 202);
    std::fs::write(repo.join("roles/app.yaml"), app("v2")).unwrap();
    let c2 = commit(&repo, "v2");
    d.shared.poke();
    until(
        "the commit planned, not applied",
        Duration::from_secs(30),
        || d.host("a")["state"] == "drifted" && d.host("b")["state"] == "drifted",
    )
    .await;
    d.shared.scheduler.now(Request::RunJob("slow".into()));
    until("the job turned away", Duration::from_secs(30), || {
        d.shared.status.lock().unwrap().schedules["slow"]
            .last_run
            .as_ref()
            .is_some_and(|r| r.not_started.is_some())
    })
    .await;
    // Three hours of polls and drift checks (hourly here) change nothing.
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    assert!(d.reconciles("a") >= 4, "it kept planning");
    assert_eq!((read(&a), read(&b)), ("v1\n".into(), "v1\n".into()));
    assert!(!ran.exists(), "no job ran while suspended");
    let run = d.shared.status.lock().unwrap().schedules["slow"]
        .last_run
        .clone()
        .unwrap();
    assert_eq!(
        run.not_started.as_deref(),
        Some("not started: suspended by ops (incident 42)")
    );
    assert_ne!(d.applied(), Some(c2.clone()));
    // The note's audit trail says so, at the daemon's clock's time.
    let audit = |c: &str| {
        let out = std::process::Command::new("git")
            .args(["notes", "--ref=tidekeeper", "show", c])
            .current_dir(&repo)
            .output()
            .unwrap();
        tidekeeper::audit::Audit::parse(&String::from_utf8_lossy(&out.stdout))
    };
    until("the planned-only note", Duration::from_secs(30), || {
        audit(&c2).is_some()
    })
    .await;
    let planned = audit(&c2).unwrap();
    assert_eq!(planned.verdict, tidekeeper::audit::Verdict::PlannedOnly);
    assert!(planned.at.starts_with("2026-06-01T1"), "{planned:?}");
    assert!(
        planned.summary.starts_with("suspended by ops"),
        "{planned:?}"
    );

    let resumed = Instant::now();
    let (code, _) = post(d.addr, "/resume", Some("tok-susp-1"), b"").await;
    assert_eq!(code, 202);
    until("the held commit applied", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(
        resumed.elapsed(),
        Duration::ZERO,
        "at once, not at the next poll"
    );
    assert_eq!((read(&a), read(&b)), ("v2\n".into(), "v2\n".into()));
    until("the applied note", Duration::from_secs(30), || {
        audit(&c2).is_some_and(|a| a.verdict == tidekeeper::audit::Verdict::Applied)
    })
    .await;
    let applied = audit(&c2).unwrap();
    assert!(
        applied.at.starts_with("2026-06-01T15:0"),
        "three hours of the virtual clock later: {applied:?}"
    );
    assert_eq!(applied.summary, "applied to 2 host(s)");
    assert_eq!(applied.commit, c2);
    d.shared.scheduler.now(Request::RunJob("slow".into()));
    until("the job ran", Duration::from_secs(30), || ran.exists()).await;
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_rollout_stops_after_a_failed_canary_and_leaves_the_other_hosts_untouched() {
    let tmp = TempDir::new("controller-canary");
    let (repo, a, b) = fleet(tmp.path(), "true");
    let d = start(&repo, &tmp.path().join("state")).await;
    first_applied(&d, &repo).await;
    // a is the canary; on a the new commit also runs a command that fails.
    std::fs::write(
        repo.join("tidekeeper.yaml"),
        "fleet: ctl\nrollout:\n  canary: [a]\n  pause: 1h\n",
    )
    .unwrap();
    std::fs::write(repo.join("roles/app.yaml"), app("v2")).unwrap();
    std::fs::write(
        repo.join("roles/broken.yaml"),
        "commands:\n  - {name: migrate, run: \"exit 3\"}\n",
    )
    .unwrap();
    let host_a = std::fs::read_to_string(repo.join("hosts/a.yaml")).unwrap();
    std::fs::write(
        repo.join("hosts/a.yaml"),
        host_a.replace("roles: [app]", "roles: [app, broken]"),
    )
    .unwrap();
    let c2 = commit(&repo, "v2 with a broken migration");
    let poked = Instant::now();
    d.shared.poke();
    until("the commit quarantined", Duration::from_secs(30), || {
        d.quarantined().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(poked.elapsed(), Duration::ZERO, "stopped at once, no pause");
    assert_eq!(read(&b), "v1\n", "b is untouched");
    let hb = d.host("b");
    assert_eq!(hb["state"], "pending", "{hb}");
    assert!(
        hb["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the rollout stopped at stage 1 (a failed)")),
        "{hb}"
    );
    let ha = d.host("a");
    assert_eq!(ha["state"], "failed", "{ha}");
    assert_eq!(read(&a), "v2\n", "the canary got the change it failed on");
    let r = d.shared.status.lock().unwrap().rollout.clone().unwrap();
    assert_eq!(
        (r.stage, r.stages, r.state.as_str()),
        (1, 2, "stopped: a failed")
    );
    // A day later nothing more was tried: a failed rollout waits for a human.
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert_eq!(read(&b), "v1\n");
    assert_ne!(d.applied(), Some(c2));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_merge_whose_plan_is_not_the_reviewed_one_is_held_until_retried() {
    let bed = Testbed::start_light(1);
    let files = |v: &str| {
        format!(
            "{}  - {{path: /etc/tk-other, content: \"other\\n\"}}\n",
            ROLE.replace("VERSION", v)
        )
    };
    let repo = FleetRepo::minimal(&bed, &[("app", &files("one"))]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\napply:\n  require_reviewed_plan: true\n",
    );
    repo.commit("reviewed plans only");
    let tmp = TempDir::new("controller-review");
    let d = start_with(
        &repo.path,
        &tmp.path().join("state"),
        Setup {
            ssh_key: Some(&repo.key),
            proposals: &["refs/pull/*/head"],
            ..Default::default()
        },
    )
    .await;
    let head = || git(&repo.path, &["rev-parse", "HEAD"]);
    first_applied(&d, &repo.path).await;
    let note = |c: &str| {
        std::process::Command::new("git")
            .args(["notes", "--ref=tidekeeper", "show", c])
            .current_dir(&repo.path)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    git(&repo.path, &["checkout", "-q", "-b", "pr-1"]);
    repo.write("roles/app.yaml", &files("two"));
    repo.commit("pr 1");
    let pr = head();
    git(&repo.path, &["update-ref", "refs/pull/1/head", &pr]);
    git(&repo.path, &["checkout", "-q", "main"]);
    d.shared.poke();
    until("the proposal planned", Duration::from_secs(60), || {
        note(&pr).contains("Plan digest: `")
    })
    .await;
    // After review, the host drifts; then the PR is merged.
    bed.ssh_ok(0, "echo edited > /etc/tk-other");
    git(
        &repo.path,
        &["merge", "-q", "--no-ff", "-m", "merge pr 1", "pr-1"],
    );
    let m = head();
    d.shared.poke();
    until("the merge held", Duration::from_secs(60), || {
        d.quarantined().as_deref() == Some(m.as_str())
    })
    .await;
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-ctl"), "one\n", "nothing applied");
    until("the note", Duration::from_secs(30), || {
        note(&m).contains("differs")
    })
    .await;
    let n = note(&m);
    assert!(
        n.contains("the plan differs from the one reviewed on refs/pull/1/head")
            && n.contains("now also:")
            && n.contains("/etc/tk-other"),
        "{n}"
    );
    let audit = tidekeeper::audit::Audit::parse(&n).expect("an audit trail");
    assert_eq!(audit.verdict, tidekeeper::audit::Verdict::Held, "{n}");
    let reviewed = audit.reviewed.expect("the reviewed plan of its tree");
    assert_eq!(reviewed.proposal, "refs/pull/1/head");
    assert!(
        note(&pr).contains(&format!("Plan digest: `{}", reviewed.digest)),
        "the digest the proposal's note gave: {reviewed:?}"
    );
    // An hour of polls does not apply it.
    tokio::time::sleep(Duration::from_secs(3600 + 60)).await;
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-ctl"), "one\n");
    // Looked at and accepted: retry applies it as it plans now.
    d.shared.scheduler.now(Request::Retry);
    until("applied after retry", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(m.as_str())
    })
    .await;
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-ctl /etc/tk-other"),
        "two\nother\n"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drift_is_found_at_its_interval_and_corrected_when_the_config_says_so() {
    let tmp = TempDir::new("controller-drift");
    let (repo, a, b) = fleet(tmp.path(), "true");
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            drift: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo).await;
    let conf = a.join("etc/app.conf");
    std::fs::write(&conf, "tampered\n").unwrap();
    let step = Duration::from_secs(5);
    let took = until_virtual("drift found", step, Duration::from_secs(1800), || {
        d.host("a")["state"] == "drifted"
    })
    .await;
    assert!(
        took >= Duration::from_secs(600) && took <= Duration::from_secs(605),
        "found after {took:?}, at the 10 min drift check"
    );
    let ha = d.host("a");
    assert!(ha["drift"].to_string().contains("/etc/app.conf"), "{ha}");
    assert_eq!(d.host("b")["state"], "synced");
    assert_eq!(read(&a), "tampered\n", "drift: report changes nothing");

    std::fs::write(repo.join("tidekeeper.yaml"), "fleet: ctl\ndrift: correct\n").unwrap();
    let c2 = commit(&repo, "correct drift");
    d.shared.poke();
    until("the commit applied", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(read(&a), "v1\n", "the commit put it back");
    std::fs::write(&conf, "tampered again\n").unwrap();
    let took = until_virtual("drift corrected", step, Duration::from_secs(1800), || {
        read(&a) == "v1\n"
    })
    .await;
    assert!(
        took >= Duration::from_secs(600) && took <= Duration::from_secs(605),
        "corrected after {took:?}"
    );
    assert_eq!(read(&b), "v1\n");
    d.stop().await;
}

/// Issue 39: `suspend`, `resume` and `retry` say what is true and succeed
/// when what was asked for already holds; `--daemon` takes what people
/// write (a URL, a host name); a 401 says which token is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_and_retry_are_idempotent_and_take_urls() {
    let tmp = TempDir::new("controller-cli");
    let (repo, _a, _b) = fleet(tmp.path(), "true");
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            api_token: Some("tok-cli-1"),
            real_time: true,
            ..Default::default()
        },
    )
    .await;
    let head = git(&repo, &["rev-parse", "HEAD"]);
    until("applied", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(head.as_str())
    })
    .await;
    let port = d.addr.port();
    let tk = move |args: Vec<String>, token: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            let mut c = crate::support::tidekeeper();
            c.args(&args).env_remove("TIDEKEEPER_API_TOKEN");
            if let Some(t) = token {
                c.env("TIDEKEEPER_API_TOKEN", t);
            }
            let out = c.output().unwrap();
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };
    let url = format!("http://localhost:{port}/");
    let by_url = |cmd: &str| vec![cmd.to_string(), "--daemon".into(), url.clone()];
    // Nothing quarantined: nothing to retry, and that is not an error.
    let (code, said) = tk(by_url("retry"), Some("tok-cli-1")).await.unwrap();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("nothing to retry"), "{said}");
    // Not suspended: resume succeeds and says so.
    let (code, said) = tk(by_url("resume"), Some("tok-cli-1")).await.unwrap();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("not suspended; nothing to do"), "{said}");
    let mut suspend = by_url("suspend");
    suspend.extend([
        "--reason".into(),
        "cli test".into(),
        "--by".into(),
        "ada".into(),
    ]);
    let (code, said) = tk(suspend, Some("tok-cli-1")).await.unwrap();
    assert_eq!(code, Some(0), "{said}");
    assert!(d.shared.status.lock().unwrap().suspended.is_some());
    // A host name with a port, no scheme.
    let (code, said) = tk(
        vec![
            "resume".into(),
            "--daemon".into(),
            format!("localhost:{port}"),
        ],
        Some("tok-cli-1"),
    )
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{said}");
    assert!(d.shared.status.lock().unwrap().suspended.is_none());
    // Without the token: refused, and told what to set.
    let (code, said) = tk(by_url("resume"), None).await.unwrap();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("TIDEKEEPER_API_TOKEN"), "{said}");
    d.stop().await;
}

/// A `--host` or `-l` the fleet does not have stops the daemon at start,
/// naming it (the pull-mode unit passes `--host %H`: a hostname that is not
/// the host's name must not run a daemon that manages nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_or_label_the_fleet_does_not_have_stops_the_daemon_at_start() {
    let tmp = TempDir::new("controller-unknown-host");
    let (repo, _a, _b) = fleet(tmp.path(), "true");
    let serve = |hosts: &[&str], labels: &[&str], state: &str| {
        let cfg = Config {
            repo: repo.display().to_string(),
            branch: "main".into(),
            state_dir: tmp.path().join(state),
            listen: "127.0.0.1:0".parse().unwrap(),
            poll: Some(Duration::from_secs(3600)),
            drift: Some(Duration::from_secs(3600)),
            webhook_secret: None,
            api_token: None,
            ssh_key: None,
            watch: false,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            labels: labels.iter().map(|h| h.to_string()).collect(),
            git: Default::default(),
            proposals: vec![],
            rollback_after: Duration::from_secs(120),
            worker: PathBuf::from(env!("CARGO_BIN_EXE_tidekeeper")),
        };
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let clock = Clock::virtual_from(
                chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
                    .unwrap()
                    .into(),
            );
            // Stopped at once if it does start: only its start is looked at.
            daemon::serve(listener, async {}, clock, cfg, |_| {})
                .await
                .map_err(|e| e.to_string())
        }
    };
    let err = serve(&["web-01"], &[], "s1").await.unwrap_err();
    assert!(
        err.contains("no host is named \"web-01\" in fleet \"ctl\"")
            && err.contains("hosts are: a, b"),
        "{err}"
    );
    let err = serve(&["web-*"], &[], "s2").await.unwrap_err();
    assert!(err.contains("no host matches \"web-*\""), "{err}");
    let err = serve(&[], &["env=prod"], "s3").await.unwrap_err();
    assert!(
        err.contains("no host in fleet \"ctl\" has label env=prod"),
        "{err}"
    );
    // A glob that matches starts it.
    serve(&["?"], &[], "s4").await.unwrap();
}

/// The note tidekeeper left on `commit` in `repo`, or "".
fn note_on(repo: &Path, commit: &str) -> String {
    std::process::Command::new("git")
        .args(["notes", "--ref=tidekeeper", "show", commit])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// The fleet of `fleet()` with `windows` as its `apply.apply_windows`,
/// its daemon started at 01:00 UTC with v1 applied, and v2 committed at 02:00.
async fn v2_at_two_oclock(
    tmp: &TempDir,
    windows: &str,
    api_token: Option<&'static str>,
) -> (Running, PathBuf, PathBuf, PathBuf, String) {
    let (repo, a, b) = fleet(tmp.path(), "true");
    std::fs::write(
        repo.join("tidekeeper.yaml"),
        format!("fleet: ctl\napply:\n  apply_windows:\n{windows}"),
    )
    .unwrap();
    commit(&repo, "apply windows");
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            start: Some("2026-06-02T01:00:00Z"),
            api_token,
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo).await;
    assert_eq!(
        read(&a),
        "v1\n",
        "applied at 01:00, outside the deny window"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    std::fs::write(repo.join("roles/app.yaml"), app("v2")).unwrap();
    let c2 = commit(&repo, "v2 at 02:00");
    d.shared.poke();
    (d, repo, a, b, c2)
}

const NIGHTS_DENIED: &str = "    - {kind: deny, window: 'daily 02:00-06:00 UTC'}\n";

#[tokio::test(start_paused = true)]
async fn a_merge_inside_a_deny_window_is_held_and_applied_when_the_window_ends() {
    let tmp = TempDir::new("controller-windows");
    let (d, repo, a, b, c2) = v2_at_two_oclock(&tmp, NIGHTS_DENIED, None).await;
    let merged = Instant::now();
    let held = || d.shared.status.lock().unwrap().held.clone();
    until("the merge held", Duration::from_secs(30), || {
        held().is_some_and(|h| h.commit == c2)
    })
    .await;
    let h = held().unwrap();
    assert_eq!(
        h.reason,
        "outside the apply windows; applies at 2026-06-02T06:00:00Z"
    );
    let json = serde_json::to_value(&*d.shared.status.lock().unwrap()).unwrap();
    assert_eq!(json["held"]["until"], "2026-06-02T06:00:00Z", "{json}");
    assert_eq!(d.quarantined(), None, "held, not quarantined");
    until("the note", Duration::from_secs(30), || {
        note_on(&repo, &c2).contains("outside the apply windows")
    })
    .await;
    let n = note_on(&repo, &c2);
    assert!(
        n.contains("nothing applied") && n.contains("deny daily 02:00-06:00 UTC"),
        "{n}"
    );
    assert!(
        n.contains("\nApply-Window: outside them; applies at 2026-06-02T06:00:00Z (deny daily 02:00-06:00 UTC)"),
        "the audit trail says why and until when: {n}"
    );
    // A second before the window ends, hourly polls have applied nothing.
    tokio::time::sleep(Duration::from_secs(4 * 3600 - 1)).await;
    assert_eq!((read(&a), read(&b)), ("v1\n".into(), "v1\n".into()));
    assert_ne!(d.applied(), Some(c2.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    until("applied at 06:00", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(
        merged.elapsed(),
        Duration::from_secs(4 * 3600),
        "at 06:00 sharp"
    );
    assert_eq!((read(&a), read(&b)), ("v2\n".into(), "v2\n".into()));
    assert_eq!(held(), None);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn release_now_applies_a_commit_held_by_the_apply_windows_at_once() {
    let tmp = TempDir::new("controller-windows-release");
    let token = "tok-windows-1";
    let (d, repo, a, b, c2) = v2_at_two_oclock(&tmp, NIGHTS_DENIED, Some(token)).await;
    until("the merge held", Duration::from_secs(30), || {
        d.shared
            .status
            .lock()
            .unwrap()
            .held
            .as_ref()
            .is_some_and(|h| h.commit == c2)
    })
    .await;
    // A plain release does not override the windows.
    let body = format!(r#"{{"commit":"{c2}","by":"ops"}}"#);
    let (code, text) = post(d.addr, "/release", Some(token), body.as_bytes()).await;
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("--now"), "{text}");
    let released = Instant::now();
    let body = format!(r#"{{"commit":"{c2}","by":"ops","now":true}}"#);
    let (code, text) = post(d.addr, "/release", Some(token), body.as_bytes()).await;
    assert_eq!(code, 202, "{text}");
    until("applied on release", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(
        released.elapsed(),
        Duration::ZERO,
        "at once, inside the window"
    );
    assert_eq!((read(&a), read(&b)), ("v2\n".into(), "v2\n".into()));
    until("the note", Duration::from_secs(30), || {
        note_on(&repo, &c2).contains("released by ops at ")
    })
    .await;
    let n = note_on(&repo, &c2);
    assert!(n.contains(", outside the apply windows"), "{n}");
    assert!(
        n.contains("\nReleased-By: ops at ") && n.contains(", at once\n"),
        "{n}"
    );
    assert!(
        n.contains("\nApply-Window: released outside them (deny daily 02:00-06:00 UTC)"),
        "{n}"
    );
    let history = d.shared.board.lock().unwrap().history.releases.clone();
    assert!(
        history
            .back()
            .is_some_and(|r| r.commit == c2 && r.by == "ops" && r.now),
        "{history:?}"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_whose_window_is_shut_waits_while_the_others_take_the_commit() {
    let tmp = TempDir::new("controller-windows-host");
    let windows = "    - {kind: deny, window: 'daily 02:00-06:00 UTC', hosts: {names: [a]}}\n";
    let (d, _repo, a, b, c2) = v2_at_two_oclock(&tmp, windows, None).await;
    let merged = Instant::now();
    until("b applied, a left out", Duration::from_secs(30), || {
        read(&b) == "v2\n" && d.host("a")["state"] == "pending"
    })
    .await;
    assert_eq!(read(&a), "v1\n", "a waits for its window");
    let ha = d.host("a");
    assert_eq!(ha["state"], "pending", "{ha}");
    assert_eq!(
        ha["last_result"],
        "waiting for its apply window (deny daily 02:00-06:00 UTC): applies at 2026-06-02T06:00:00Z",
        "{ha}"
    );
    assert!(ha["last_error"].is_null(), "{ha}");
    assert_eq!(
        d.shared.status.lock().unwrap().held,
        None,
        "not held: applied in part"
    );
    let waited = until_virtual(
        "a applied",
        Duration::from_secs(60),
        Duration::from_secs(5 * 3600),
        || d.applied().as_deref() == Some(c2.as_str()),
    )
    .await;
    assert!(
        merged.elapsed() >= Duration::from_secs(4 * 3600)
            && waited <= Duration::from_secs(4 * 3600 + 60),
        "when the window ended: {:?}",
        merged.elapsed()
    );
    assert_eq!(read(&a), "v2\n");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn release_now_applies_to_the_hosts_that_wait_for_their_window() {
    let tmp = TempDir::new("controller-windows-host-release");
    let token = "tok-windows-2";
    let windows = "    - {kind: deny, window: 'daily 02:00-06:00 UTC', hosts: {names: [a]}}\n";
    let (d, _repo, a, b, c2) = v2_at_two_oclock(&tmp, windows, Some(token)).await;
    until("b applied, a left out", Duration::from_secs(30), || {
        read(&b) == "v2\n" && d.host("a")["state"] == "pending"
    })
    .await;
    assert_eq!(read(&a), "v1\n");
    let released = Instant::now();
    let body = format!(r#"{{"commit":"{c2}","by":"ops","now":true}}"#);
    let (code, text) = post(d.addr, "/release", Some(token), body.as_bytes()).await;
    assert_eq!(code, 202, "{text}");
    until("a applied on release", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(c2.as_str())
    })
    .await;
    assert_eq!(
        released.elapsed(),
        Duration::ZERO,
        "at once, inside a's window"
    );
    assert_eq!(read(&a), "v2\n");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drift_on_a_host_inside_its_deny_window_is_corrected_when_the_window_ends() {
    let tmp = TempDir::new("controller-windows-drift");
    let (repo, a, b) = fleet(tmp.path(), "true");
    std::fs::write(
        repo.join("tidekeeper.yaml"),
        "fleet: ctl\ndrift: correct\napply:\n  apply_windows:\n    - {kind: deny, window: 'daily 02:00-06:00 UTC', hosts: {names: [a]}}\n",
    )
    .unwrap();
    commit(&repo, "correct drift, not on a at night");
    let d = start_with(
        &repo,
        &tmp.path().join("state"),
        Setup {
            start: Some("2026-06-02T01:00:00Z"),
            drift: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    )
    .await;
    first_applied(&d, &repo).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    for root in [&a, &b] {
        std::fs::write(root.join("etc/app.conf"), "tampered\n").unwrap();
    }
    let tampered = Instant::now();
    let step = Duration::from_secs(5);
    until_virtual("b corrected", step, Duration::from_secs(1200), || {
        read(&b) == "v1\n" && d.host("a")["state"] == "pending"
    })
    .await;
    assert_eq!(read(&a), "tampered\n", "a's window is shut");
    let ha = d.host("a");
    assert!(
        ha["last_result"].as_str().is_some_and(
            |r| r.starts_with("waiting for its apply window (deny daily 02:00-06:00 UTC)")
        ),
        "{ha}"
    );
    until_virtual("a corrected", step, Duration::from_secs(5 * 3600), || {
        read(&a) == "v1\n"
    })
    .await;
    let took = tampered.elapsed();
    assert!(
        took >= Duration::from_secs(4 * 3600) && took <= Duration::from_secs(4 * 3600 + 605),
        "corrected after {took:?}, at the first drift check from 06:00"
    );
    d.stop().await;
}
