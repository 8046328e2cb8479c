//! Delivery: an outbox in the state directory and one worker per sink.
//!
//! The daemon only puts messages in the outbox; each sink's worker sends
//! them in order, at most `per_minute`, retrying with backoff (1 s doubling
//! to 5 min) while the sink is down. A sink that is slow or down holds up
//! nothing but its own messages. Nothing is dropped on a failure: a message
//! waits in the outbox (which survives a restart) until it is delivered,
//! and /status and /metrics show what waits and why. Only past
//! [`MAX_QUEUED`] messages for one sink are the oldest dropped, and counted.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Alerts, Event, Observation, Target};
use crate::model::Fleet;
use crate::model::notify::{Credential, Notify, SmtpTls};

/// Messages kept per sink while it is down.
pub const MAX_QUEUED: usize = 1000;
/// One delivery attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no sink {0:?} in notify.sinks")]
    UnknownSink(String),
    #[error("{0} is not set")]
    MissingCredential(String),
    #[error("{0}")]
    Send(String),
}

/// What one sink's worker needs: the sink and its credentials' values.
#[derive(Clone)]
struct Ready {
    fleet: String,
    notify: Notify,
    /// Host → labels, for routes by label.
    labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Decrypted secrets the sinks name (nothing else).
    secrets: BTreeMap<String, String>,
    redactions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    sink: String,
    event: Event,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    last_error: Option<String>,
    /// Not kept: after a restart every waiting message is tried at once.
    #[serde(skip)]
    next_try: Option<Instant>,
}

/// Per sink: what was sent, what failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkStats {
    pub sent: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What /status shows about notifications.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NotifyStatus {
    pub sinks: BTreeMap<String, SinkStatus>,
    /// Alerts firing now: `kind: subject (since)`.
    pub firing: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SinkStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Messages waiting (the sink is down or slow, or no longer configured).
    pub waiting: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_waiting: Option<String>,
    #[serde(flatten)]
    pub stats: SinkStats,
}

#[derive(Default)]
struct State {
    ready: Option<Arc<Ready>>,
    alerts: Alerts,
    outbox: Vec<Queued>,
    stats: BTreeMap<String, SinkStats>,
    workers: BTreeMap<String, Worker>,
}

struct Worker {
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::AbortHandle,
}

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    alerts: Alerts,
    #[serde(default)]
    outbox: Vec<Queued>,
    #[serde(default)]
    stats: BTreeMap<String, SinkStats>,
}

struct Inner {
    /// `notify.json` in the state directory (None: kept in memory only).
    file: Option<PathBuf>,
    state: Mutex<State>,
    http: reqwest::Client,
}

/// The daemon's notifier: cheap to clone, shared with the HTTP server.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// The notifier whose alerts and outbox live in `state_dir` (read back
    /// after a restart).
    pub fn open(state_dir: Option<&Path>) -> Notifier {
        Notifier::open_reporting(state_dir).0
    }

    /// [`Notifier::open`], and the state file if it was unreadable (set
    /// aside as `notify.json.unreadable`).
    pub fn open_reporting(
        state_dir: Option<&Path>,
    ) -> (Notifier, Option<crate::state_file::Unreadable>) {
        let file = state_dir.map(|d| d.join("notify.json"));
        let (saved, unreadable): (Saved, _) = match &file {
            Some(f) => crate::state_file::read(f),
            None => (Saved::default(), None),
        };
        if !saved.outbox.is_empty() {
            info!(
                waiting = saved.outbox.len(),
                "messages from before the restart are waiting for delivery"
            );
        }
        let n = Notifier {
            inner: Arc::new(Inner {
                file,
                state: Mutex::new(State {
                    alerts: saved.alerts,
                    outbox: saved.outbox,
                    stats: saved.stats,
                    ..Default::default()
                }),
                http: crate::http::client(ATTEMPT_TIMEOUT),
            }),
        };
        (n, unreadable)
    }

    /// Take the sinks and routes of a (trusted) config, and start a worker
    /// for each sink that has none. Must run inside the tokio runtime.
    pub fn configure(&self, fleet: &Fleet) {
        let notify = fleet.settings.notify.clone();
        let secrets = notify
            .sinks
            .values()
            .flat_map(|s| s.target.credentials())
            .filter_map(|(_, c)| match c {
                Credential::Secret(n) => fleet
                    .secret_values
                    .0
                    .get(n)
                    .map(|v| (n.clone(), v.trim().to_string())),
                Credential::Env(_) => None,
            })
            .collect();
        let ready = Arc::new(Ready {
            fleet: fleet.name.clone(),
            labels: fleet
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.labels.clone()))
                .collect(),
            notify,
            secrets,
            redactions: fleet.redactions.clone(),
        });
        let mut st = self.inner.state.lock().unwrap();
        st.ready = Some(ready.clone());
        for name in ready.notify.sinks.keys() {
            if !st.workers.contains_key(name) {
                let wake = Arc::new(tokio::sync::Notify::new());
                let task = tokio::spawn(worker(self.inner.clone(), name.clone(), wake.clone()));
                st.workers.insert(
                    name.clone(),
                    Worker {
                        wake,
                        task: task.abort_handle(),
                    },
                );
            }
        }
        for w in st.workers.values() {
            w.wake.notify_one();
        }
    }

    /// The limits of the current config (defaults before one is taken).
    pub fn settings(&self) -> Notify {
        let st = self.inner.state.lock().unwrap();
        st.ready
            .as_ref()
            .map(|r| r.notify.clone())
            .unwrap_or_default()
    }

    /// What `obs` says about `scope`, turned into messages and queued.
    /// Returns the alerts that fired or resolved (for the dashboard's events).
    pub fn observe(
        &self,
        scope: &str,
        now: chrono::DateTime<chrono::Utc>,
        obs: Vec<Observation>,
    ) -> Vec<Event> {
        let events = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(ready) = st.ready.clone() else {
                return vec![];
            };
            let before = st.alerts.clone();
            let ev = st.alerts.observe(
                &ready.fleet,
                scope,
                now,
                obs,
                ready.notify.remind_every_secs,
            );
            if ev.is_empty() && before == st.alerts {
                return vec![];
            }
            ev
        };
        let changed = events
            .iter()
            .filter(|e| matches!(e.status, super::Status::Firing | super::Status::Resolved))
            .cloned()
            .collect();
        self.send(events);
        changed
    }

    /// Queue one-off messages (good news).
    pub fn send(&self, events: Vec<Event>) {
        let mut st = self.inner.state.lock().unwrap();
        let Some(ready) = st.ready.clone() else {
            return;
        };
        for ev in events {
            let ev = ev.redacted(|t| crate::model::desired::redact(&ready.redactions, t));
            let labels = ev.host.as_ref().and_then(|h| ready.labels.get(h));
            let sinks = ready
                .notify
                .sinks_for(ev.kind, ev.severity, ev.host.as_deref(), labels);
            info!(kind = ev.kind.name(), status = ?ev.status, subject = %ev.subject, sinks = ?sinks, "notification");
            for sink in sinks {
                let waiting = st.outbox.iter().filter(|q| q.sink == sink).count();
                if waiting >= MAX_QUEUED
                    && let Some(i) = st.outbox.iter().position(|q| q.sink == sink)
                {
                    let old = st.outbox.remove(i);
                    warn!(%sink, dropped = %old.event.title(), "outbox full: the oldest waiting message is dropped");
                    st.stats.entry(sink.clone()).or_default().dropped += 1;
                }
                st.outbox.push(Queued {
                    sink: sink.clone(),
                    event: ev.clone(),
                    attempts: 0,
                    last_error: None,
                    next_try: None,
                });
                if let Some(w) = st.workers.get(&sink) {
                    w.wake.notify_one();
                }
            }
        }
        save(&self.inner, &st);
    }

    /// Stop the workers (the daemon is shutting down). What waits stays in
    /// the outbox for the next start; a message cut off mid-delivery is
    /// sent again then (receivers can tell by its id).
    pub fn stop(&self) {
        let mut st = self.inner.state.lock().unwrap();
        for (_, w) in std::mem::take(&mut st.workers) {
            w.task.abort();
        }
    }

    /// Send a test message to `sink` now, without the outbox.
    pub async fn test(&self, sink: &str) -> Result<(), NotifyError> {
        let ready = self
            .inner
            .state
            .lock()
            .unwrap()
            .ready
            .clone()
            .ok_or_else(|| NotifyError::UnknownSink(sink.to_string()))?;
        if !ready.notify.sinks.contains_key(sink) {
            return Err(NotifyError::UnknownSink(sink.to_string()));
        }
        let ev = super::info(
            &ready.fleet,
            super::EventKind::Test,
            None,
            &format!("sink {sink}"),
            &format!("test message from tidekeeper to sink {sink}"),
            chrono::Utc::now(),
        );
        deliver(&self.inner.http, &ready, sink, &ev)
            .await
            .map_err(|(e, _)| e)
    }

    pub fn status(&self) -> NotifyStatus {
        let st = self.inner.state.lock().unwrap();
        let mut sinks: BTreeMap<String, SinkStatus> = BTreeMap::new();
        if let Some(r) = &st.ready {
            for (name, s) in &r.notify.sinks {
                sinks.entry(name.clone()).or_default().kind = Some(s.target.kind());
            }
        }
        for (name, s) in &st.stats {
            sinks.entry(name.clone()).or_default().stats = s.clone();
        }
        for q in &st.outbox {
            let s = sinks.entry(q.sink.clone()).or_default();
            s.waiting += 1;
            if s.oldest_waiting.is_none() {
                s.oldest_waiting = Some(
                    q.event
                        .at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            if s.stats.last_error.is_none() {
                s.stats.last_error = q.last_error.clone();
            }
            if s.kind.is_none() {
                s.stats.last_error = Some("the sink is no longer in notify.sinks".into());
            }
        }
        NotifyStatus {
            sinks,
            firing: st
                .alerts
                .active
                .values()
                .map(|a| {
                    format!(
                        "{}: {} (since {})",
                        a.kind.name(),
                        a.subject,
                        a.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .collect(),
        }
    }

    /// Wait until nothing is waiting (for tests); false on timeout.
    pub async fn flushed(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.inner.state.lock().unwrap().outbox.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

fn save(inner: &Inner, st: &State) {
    let Some(file) = &inner.file else { return };
    let saved = serde_json::json!({
        "alerts": st.alerts,
        "outbox": st.outbox,
        "stats": st.stats,
    });
    if let Err(e) = crate::state_file::write(file, &saved) {
        warn!(error = %e, file = %file.display(), "cannot save the notification outbox");
    }
}

/// One sink's messages, in order.
async fn worker(inner: Arc<Inner>, sink: String, wake: Arc<tokio::sync::Notify>) {
    let mut limit = RateLimit::default();
    loop {
        let next = {
            let st = inner.state.lock().unwrap();
            let ready = st.ready.clone();
            let q = st.outbox.iter().find(|q| q.sink == sink).cloned();
            q.zip(ready)
        };
        let Some((q, ready)) = next else {
            wake.notified().await;
            continue;
        };
        let Some(per_minute) = ready.notify.sinks.get(&sink).map(|s| s.per_minute) else {
            // The sink left the config: its messages wait (and show) until it is back.
            wake.notified().await;
            continue;
        };
        if let Some(t) = q.next_try
            && t > Instant::now()
        {
            tokio::select! {
                _ = tokio::time::sleep_until(t) => {}
                _ = wake.notified() => {}
            }
            continue;
        }
        if let Some(until) = limit.take(Instant::now(), per_minute) {
            tokio::time::sleep_until(until).await;
            continue;
        }
        let result = deliver(&inner.http, &ready, &sink, &q.event).await;
        let mut st = inner.state.lock().unwrap();
        let Some(i) = st
            .outbox
            .iter()
            .position(|o| o.sink == sink && o.event.id == q.event.id)
        else {
            continue;
        };
        match result {
            Ok(()) => {
                st.outbox.remove(i);
                let s = st.stats.entry(sink.clone()).or_default();
                s.sent += 1;
                s.last_error = None;
                info!(%sink, kind = q.event.kind.name(), status = ?q.event.status, "notification delivered");
            }
            Err((e, retry_after)) => {
                let e = crate::model::desired::redact(&ready.redactions, &e.to_string());
                let o = &mut st.outbox[i];
                o.attempts += 1;
                let backoff = backoff(o.attempts).max(retry_after.unwrap_or_default());
                o.next_try = Some(Instant::now() + backoff);
                o.last_error = Some(e.clone());
                warn!(%sink, error = %e, attempts = o.attempts, retry_in_s = backoff.as_secs(), "notification not delivered; kept for a retry");
                let s = st.stats.entry(sink.clone()).or_default();
                s.failed_attempts += 1;
                s.last_error = Some(e);
            }
        }
        save(&inner, &st);
    }
}

/// At most `per_minute` sends in any 60 s.
#[derive(Default)]
struct RateLimit {
    sent: VecDeque<Instant>,
}

impl RateLimit {
    /// Take a send at `now`; or, when the minute is full, when to ask again.
    fn take(&mut self, now: Instant, per_minute: u32) -> Option<Instant> {
        let minute = Duration::from_secs(60);
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= per_minute as usize {
            return Some(self.sent[0] + minute);
        }
        self.sent.push_back(now);
        None
    }
}

/// The wait after `attempts` failed attempts: about 1 s, 2 s, 4 s … 5 min, jittered.
fn backoff(attempts: u32) -> Duration {
    crate::backoff::Backoff::new(Duration::from_secs(1), MAX_BACKOFF).after(attempts)
}

fn value(ready: &Ready, c: &Credential) -> Result<String, NotifyError> {
    match c {
        Credential::Env(v) => std::env::var(v)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| NotifyError::MissingCredential(format!("environment variable {v}"))),
        Credential::Secret(n) => ready.secrets.get(n).cloned().ok_or_else(|| {
            NotifyError::MissingCredential(format!(
                "secret {n} (not decrypted: the daemon has no identity for it)"
            ))
        }),
    }
}

/// One attempt; on failure, the error and how long the sink asked us to wait.
async fn deliver(
    http: &reqwest::Client,
    ready: &Ready,
    sink: &str,
    ev: &Event,
) -> Result<(), (NotifyError, Option<Duration>)> {
    let s = ready
        .notify
        .sinks
        .get(sink)
        .ok_or_else(|| (NotifyError::UnknownSink(sink.to_string()), None))?;
    let mut creds = BTreeMap::new();
    for (role, c) in s.target.credentials() {
        creds.insert(role, value(ready, c).map_err(|e| (e, None))?);
    }
    if let Target::Email { .. } = &s.target {
        return tokio::time::timeout(ATTEMPT_TIMEOUT, email(&s.target, creds.get("password"), ev))
            .await
            .unwrap_or_else(|_| {
                Err(NotifyError::Send(
                    "the mail server did not answer in time".into(),
                ))
            })
            .map_err(|e| (e, None));
    }
    let req = super::request(&s.target, &creds, ev).expect("an HTTP sink");
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).expect("method");
    let mut b = http.request(method, &req.url).body(req.body);
    for (k, v) in req.headers {
        b = b.header(k, v);
    }
    // The URL may hold a credential (Slack, Discord, Telegram): never in an error.
    let hide = |e: reqwest::Error| NotifyError::Send(crate::http::reason(e));
    let resp = b.send().await.map_err(|e| (hide(e), None))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    Err((
        NotifyError::Send(format!(
            "{} answered {status}: {}",
            s.target.kind(),
            body.trim()
        )),
        retry_after,
    ))
}

async fn email(target: &Target, password: Option<&String>, ev: &Event) -> Result<(), NotifyError> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let Target::Email {
        host,
        port,
        tls,
        username,
        from,
        to,
        ca_file,
        ..
    } = target
    else {
        unreachable!("email sinks only")
    };
    let err = |what: &str, e: &dyn std::fmt::Display| NotifyError::Send(format!("{what}: {e}"));
    let mut params = TlsParameters::builder(host.clone());
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| err(&format!("cannot read ca_file {ca}"), &e))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| err(&format!("ca_file {ca}"), &e))?;
        params = params.add_root_certificate(cert);
    }
    let params = params.build().map_err(|e| err("TLS", &e))?;
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(*port)
        .timeout(Some(ATTEMPT_TIMEOUT))
        .tls(match tls {
            SmtpTls::Starttls => Tls::Required(params),
            SmtpTls::Tls => Tls::Wrapper(params),
            SmtpTls::None => Tls::None,
        });
    if let (Some(u), Some(p)) = (username, password) {
        b = b.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let mut m = Message::builder()
        .from(from.parse().map_err(|e| err("from", &e))?)
        .subject(ev.title())
        .message_id(Some(format!("<{}@tidekeeper>", ev.id)))
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        m = m.to(t.parse().map_err(|e| err("to", &e))?);
    }
    let msg = m.body(ev.text()).map_err(|e| err("message", &e))?;
    b.build()
        .send(msg)
        .await
        .map_err(|e| err(&format!("mail server {host}:{port}"), &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_minute_in_any_sixty_seconds() {
        let t0 = Instant::now();
        let mut l = RateLimit::default();
        for i in 0..3 {
            assert_eq!(l.take(t0 + Duration::from_secs(i), 3), None);
        }
        // The fourth waits until the first is a minute old.
        assert_eq!(
            l.take(t0 + Duration::from_secs(5), 3),
            Some(t0 + Duration::from_secs(60))
        );
        assert_eq!(l.take(t0 + Duration::from_secs(60), 3), None);
        assert_eq!(
            l.take(t0 + Duration::from_secs(60), 3),
            Some(t0 + Duration::from_secs(61))
        );
    }

    #[test]
    fn retries_back_off_from_a_second_to_five_minutes() {
        let plain = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300];
        for (a, full) in (1..=12).zip(plain) {
            let (w, full) = (backoff(a), Duration::from_secs(full));
            assert!(w >= full / 2 && w <= full, "attempt {a}: {w:?} of {full:?}");
        }
    }

    #[test]
    fn a_garbled_state_file_starts_empty_and_a_good_one_is_read_back() {
        let dir = std::env::temp_dir().join(format!("tk-notify-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notify.json"), b"{not json").unwrap();
        let n = Notifier::open(Some(&dir));
        assert!(n.status().firing.is_empty());
        assert_eq!(
            std::fs::read(dir.join("notify.json.unreadable")).unwrap(),
            b"{not json"
        );
        {
            let mut st = n.inner.state.lock().unwrap();
            st.stats.insert(
                "s".into(),
                SinkStats {
                    sent: 3,
                    ..Default::default()
                },
            );
            save(&n.inner, &st);
        }
        let back = Notifier::open(Some(&dir));
        assert_eq!(back.status().sinks["s"].stats.sent, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
