//! Telling people: alerts with a lifecycle, and the messages each kind of
//! sink takes.
//!
//! The daemon does not send a message per event. It *observes* states (a
//! host failed, a job's last run failed, the repo could not be fetched) and
//! [`Alerts`] turns them into messages: one when a problem starts (after
//! its `for` time), a reminder now and then while it lasts, one when it is
//! resolved. The active alerts are kept in the state directory, so a restart
//! does not send them again. This module is pure; [`deliver`] does the I/O.

pub mod deliver;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::model::notify::{EventKind, Notify, Severity, Target};

/// Where a message stands in its alert's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    /// Still firing after `remind_every`.
    Reminder,
    Resolved,
    /// News that is not a problem (a job succeeded, drift corrected, a test).
    Info,
}

/// One message, as the JSON webhook receives it (`version: 1`; see
/// docs/notify.md) and as every other sink renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable per alert state change: receivers may de-duplicate on it.
    pub id: String,
    pub kind: EventKind,
    pub status: Status,
    pub severity: Severity,
    pub fleet: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host: Option<String>,
    /// What the alert is about, e.g. `host web-1` or `job nightly-backup on aegis`.
    pub subject: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// When the problem started (for info: when it happened).
    pub since: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// What the daemon sees about one thing that can be a problem.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Unique within its scope, e.g. `host/web-1/apply_failed`.
    pub key: String,
    pub kind: EventKind,
    pub host: Option<String>,
    pub subject: String,
    pub summary: String,
    pub details: Vec<String>,
    pub seen: Seen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A problem now; an alert once it has lasted `after_secs`.
    Problem { after_secs: u64 },
    /// Fine now.
    Fine,
    /// Not known this time (a host left for later, a job not run there).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub kind: EventKind,
    pub severity: Severity,
    #[serde(default)]
    pub host: Option<String>,
    pub subject: String,
    pub summary: String,
    pub since: DateTime<Utc>,
    pub last_sent: DateTime<Utc>,
    pub id: String,
}

/// The alerts firing now, and problems waiting out their `after` time; by
/// `scope/key`. Kept in the state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    pub active: BTreeMap<String, Active>,
    #[serde(default)]
    pub pending: BTreeMap<String, DateTime<Utc>>,
}

impl Alerts {
    /// Compare what `obs` says about `scope` with the alerts: the messages
    /// to send. Anything of the scope that `obs` no longer mentions is
    /// resolved (a host or job removed from the config, a closed proposal).
    pub fn observe(
        &mut self,
        fleet: &str,
        scope: &str,
        now: DateTime<Utc>,
        obs: Vec<Observation>,
        remind_every_secs: u64,
    ) -> Vec<Event> {
        let prefix = format!("{scope}/");
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for o in obs {
            let key = format!("{prefix}{}", o.key);
            seen.insert(key.clone());
            match o.seen {
                Seen::Unknown => {}
                Seen::Fine => {
                    self.pending.remove(&key);
                    if let Some(a) = self.active.remove(&key) {
                        out.push(resolved(fleet, a, now, o.summary, o.details));
                    }
                }
                Seen::Problem { after_secs } => {
                    if let Some(a) = self.active.get_mut(&key) {
                        a.summary = o.summary.clone();
                        let due = remind_every_secs > 0
                            && (now - a.last_sent).num_seconds() >= remind_every_secs as i64;
                        if due {
                            a.last_sent = now;
                            out.push(Event {
                                id: format!("{}-{}", a.id, now.timestamp()),
                                kind: a.kind,
                                status: Status::Reminder,
                                severity: a.severity,
                                fleet: fleet.to_string(),
                                host: a.host.clone(),
                                subject: a.subject.clone(),
                                summary: o.summary,
                                details: o.details,
                                since: a.since,
                                at: now,
                            });
                        }
                        continue;
                    }
                    let since = *self.pending.entry(key.clone()).or_insert(now);
                    if (now - since).num_seconds() < after_secs as i64 {
                        continue;
                    }
                    self.pending.remove(&key);
                    let id = event_id(&key, since);
                    let severity = o.kind.severity();
                    self.active.insert(
                        key,
                        Active {
                            kind: o.kind,
                            severity,
                            host: o.host.clone(),
                            subject: o.subject.clone(),
                            summary: o.summary.clone(),
                            since,
                            last_sent: now,
                            id: id.clone(),
                        },
                    );
                    out.push(Event {
                        id,
                        kind: o.kind,
                        status: Status::Firing,
                        severity,
                        fleet: fleet.to_string(),
                        host: o.host,
                        subject: o.subject,
                        summary: o.summary,
                        details: o.details,
                        since,
                        at: now,
                    });
                }
            }
        }
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|k| k.starts_with(&prefix) && !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            let a = self.active.remove(&k).expect("listed");
            let why = format!("no longer applies: {} is gone", a.subject);
            out.push(resolved(fleet, a, now, why, vec![]));
        }
        self.pending
            .retain(|k, _| !k.starts_with(&prefix) || seen.contains(k));
        out
    }
}

fn resolved(
    fleet: &str,
    a: Active,
    now: DateTime<Utc>,
    why: String,
    details: Vec<String>,
) -> Event {
    Event {
        id: format!("{}-resolved", a.id),
        kind: a.kind,
        status: Status::Resolved,
        severity: a.severity,
        fleet: fleet.to_string(),
        host: a.host,
        subject: a.subject,
        summary: if why.is_empty() {
            format!("resolved: {}", a.summary)
        } else {
            why
        },
        details,
        since: a.since,
        at: now,
    }
}

/// A one-off message (good news, a test): no alert, nothing to resolve.
pub fn info(
    fleet: &str,
    kind: EventKind,
    host: Option<&str>,
    subject: &str,
    summary: &str,
    now: DateTime<Utc>,
) -> Event {
    Event {
        id: event_id(&format!("info/{}/{subject}/{summary}", kind.name()), now),
        kind,
        status: Status::Info,
        severity: kind.severity(),
        fleet: fleet.to_string(),
        host: host.map(String::from),
        subject: subject.to_string(),
        summary: summary.to_string(),
        details: vec![],
        since: now,
        at: now,
    }
}

fn event_id(key: &str, at: DateTime<Utc>) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{key}@{}", at.timestamp_millis()).as_bytes());
    h.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

impl Event {
    /// Every text field passed through `redact` (secrets out of messages).
    pub fn redacted(mut self, redact: impl Fn(&str) -> String) -> Event {
        self.summary = redact(&self.summary);
        self.subject = redact(&self.subject);
        for d in &mut self.details {
            *d = redact(d);
        }
        self
    }

    /// One line: `[fleet] critical: summary`.
    pub fn title(&self) -> String {
        let state = match self.status {
            Status::Firing => self.severity.name().to_string(),
            Status::Reminder => format!("still {}", self.severity.name()),
            Status::Resolved => "resolved".to_string(),
            Status::Info => "info".to_string(),
        };
        let summary = one_line(&self.summary);
        format!("[{}] {state}: {summary}", self.fleet)
    }

    /// The message body in plain text (details capped, so a long log tail
    /// does not flood a phone).
    pub fn text(&self) -> String {
        let mut t = format!("{}\n", self.title());
        if self.status == Status::Resolved {
            t.push_str(&format!("{} ({})\n", self.subject, self.kind.name()));
        } else {
            t.push_str(&format!("{} — {}\n", self.subject, self.kind.name()));
        }
        for d in self.details.iter().take(MAX_DETAIL_LINES) {
            t.push_str(&format!("  {}\n", one_line(d)));
        }
        if self.details.len() > MAX_DETAIL_LINES {
            t.push_str(&format!(
                "  … and {} more\n",
                self.details.len() - MAX_DETAIL_LINES
            ));
        }
        let since = self
            .since
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self.status {
            Status::Info => t.push_str(&format!("at {since}\n")),
            _ => t.push_str(&format!("since {since}\n")),
        }
        t
    }
}

const MAX_DETAIL_LINES: usize = 15;

/// Control characters out (a summary cannot add lines or headers).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// An HTTP request to a sink, before credentials are filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The request `target` takes for `ev`, with its credentials (by role:
/// `url`, `token`, `topic`, `secret`); None for email.
pub fn request(
    target: &Target,
    creds: &BTreeMap<&'static str, String>,
    ev: &Event,
) -> Option<Request> {
    let cred = |k: &str| creds.get(k).cloned().unwrap_or_default();
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    let mut headers = vec![("content-type", "application/json".to_string())];
    let (method, url, body) = match target {
        Target::Webhook { secret, .. } => {
            let mut v = serde_json::to_value(ev).expect("event serializes");
            v["version"] = 1.into();
            let body = json(v);
            headers.push(("x-tidekeeper-event", ev.kind.name().to_string()));
            headers.push(("x-tidekeeper-delivery", ev.id.clone()));
            if secret.is_some() {
                headers.push((
                    "x-tidekeeper-signature-256",
                    sign(cred("secret").as_bytes(), &body),
                ));
            }
            ("POST", cred("url"), body)
        }
        // Slack reads <…> as links and mentions (<!channel>): escape them.
        Target::Slack { .. } => (
            "POST",
            cred("url"),
            json(serde_json::json!({ "text": slack_escape(&ev.text()) })),
        ),
        // No mentions parsed, whatever a summary says (@everyone).
        Target::Discord { .. } => (
            "POST",
            cred("url"),
            json(serde_json::json!({
                "content": cut(&ev.text(), 2000),
                "allowed_mentions": { "parse": [] },
            })),
        ),
        // Plain text (no parse_mode): nothing in a summary is markup.
        Target::Telegram {
            server, chat_id, ..
        } => (
            "POST",
            format!("{server}/bot{}/sendMessage", cred("token")),
            json(serde_json::json!({
                "chat_id": chat_id,
                "text": cut(&ev.text(), 4096),
                "disable_web_page_preview": true,
            })),
        ),
        // ntfy's JSON publishing: no header can be broken by the text.
        Target::Ntfy { server, token, .. } => {
            if token.is_some() {
                headers.push(("authorization", format!("Bearer {}", cred("token"))));
            }
            let (priority, tag) = match (ev.status, ev.severity) {
                (Status::Resolved, _) => (3, "white_check_mark"),
                (_, Severity::Critical) => (5, "rotating_light"),
                (_, Severity::Warning) => (4, "warning"),
                (_, Severity::Info) => (3, "information_source"),
            };
            let body = json(serde_json::json!({
                "topic": cred("topic"),
                "title": ev.title(),
                "message": cut(&ev.text(), 4000),
                "priority": priority,
                "tags": [tag],
            }));
            ("POST", format!("{server}/"), body)
        }
        // The transaction id is the event id: a retried PUT is not posted twice.
        Target::Matrix { server, room, .. } => {
            headers.push(("authorization", format!("Bearer {}", cred("token"))));
            (
                "PUT",
                format!(
                    "{server}/_matrix/client/v3/rooms/{}/send/m.room.message/tk-{}",
                    percent(room),
                    percent(&ev.id)
                ),
                json(serde_json::json!({ "msgtype": "m.text", "body": ev.text() })),
            )
        }
        Target::Email { .. } => return None,
    };
    Some(Request {
        method,
        url,
        headers,
        body,
    })
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body), as GitHub signs webhooks.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max_chars - 1).collect();
    t.push('…');
    t
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn problem(key: &str, after: u64) -> Observation {
        Observation {
            key: key.into(),
            kind: EventKind::JobFailed,
            host: Some("aegis".into()),
            subject: format!("job {key}"),
            summary: format!("{key} failed"),
            details: vec![],
            seen: Seen::Problem { after_secs: after },
        }
    }

    fn fine(key: &str) -> Observation {
        Observation {
            seen: Seen::Fine,
            summary: String::new(),
            ..problem(key, 0)
        }
    }

    #[test]
    fn one_message_when_it_starts_reminders_and_one_when_resolved() {
        let mut a = Alerts::default();
        let e = a.observe("f", "s", t(0), vec![problem("backup", 0)], 3600);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].status, Status::Firing);
        // The same state again: nothing.
        assert!(
            a.observe("f", "s", t(10), vec![problem("backup", 0)], 3600)
                .is_empty()
        );
        assert!(
            a.observe("f", "s", t(59), vec![problem("backup", 0)], 3600)
                .is_empty()
        );
        let r = a.observe("f", "s", t(60), vec![problem("backup", 0)], 3600);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, Status::Reminder);
        assert_eq!(r[0].since, t(0));
        assert!(
            a.observe("f", "s", t(61), vec![problem("backup", 0)], 3600)
                .is_empty()
        );
        // Unknown keeps it as it is.
        let mut unknown = problem("backup", 0);
        unknown.seen = Seen::Unknown;
        assert!(a.observe("f", "s", t(62), vec![unknown], 3600).is_empty());
        let done = a.observe("f", "s", t(70), vec![fine("backup")], 3600);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].status, Status::Resolved);
        assert_eq!(done[0].id, format!("{}-resolved", e[0].id));
        assert!(a.active.is_empty());
        assert!(
            a.observe("f", "s", t(71), vec![fine("backup")], 3600)
                .is_empty()
        );
    }

    #[test]
    fn a_problem_with_an_after_time_fires_only_once_it_has_lasted() {
        let mut a = Alerts::default();
        assert!(
            a.observe("f", "s", t(0), vec![problem("h", 600)], 0)
                .is_empty()
        );
        assert!(
            a.observe("f", "s", t(9), vec![problem("h", 600)], 0)
                .is_empty()
        );
        let e = a.observe("f", "s", t(10), vec![problem("h", 600)], 0);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].since,
            t(0),
            "the alert dates from when the problem began"
        );
        // A blip that heals before its time sends nothing, and starts over.
        let mut b = Alerts::default();
        b.observe("f", "s", t(0), vec![problem("h", 600)], 0);
        assert!(b.observe("f", "s", t(5), vec![fine("h")], 0).is_empty());
        assert!(
            b.observe("f", "s", t(12), vec![problem("h", 600)], 0)
                .is_empty()
        );
        // remind_every 0: never repeated.
        assert!(
            a.observe("f", "s", t(500), vec![problem("h", 600)], 0)
                .is_empty()
        );
    }

    #[test]
    fn what_is_no_longer_observed_in_its_scope_is_resolved_and_other_scopes_are_left_alone() {
        let mut a = Alerts::default();
        a.observe("f", "status", t(0), vec![problem("x", 0)], 0);
        a.observe("f", "proposal/1", t(0), vec![problem("y", 0)], 0);
        let e = a.observe("f", "status", t(1), vec![], 0);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].status, Status::Resolved);
        assert!(e[0].summary.contains("gone"));
        assert_eq!(a.active.len(), 1);
        assert!(a.active.contains_key("proposal/1/y"));
    }

    #[test]
    fn alerts_survive_a_restart_through_their_json() {
        let mut a = Alerts::default();
        a.observe("f", "s", t(0), vec![problem("backup", 0)], 3600);
        let back: Alerts = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut b = back;
        assert!(
            b.observe("f", "s", t(1), vec![problem("backup", 0)], 3600)
                .is_empty()
        );
    }

    fn event(summary: &str) -> Event {
        info(
            "fleet",
            EventKind::JobFailed,
            Some("h"),
            "job x on h",
            summary,
            t(0),
        )
    }

    #[test]
    fn hostile_text_stays_text_in_every_sink() {
        let ev = event("<!channel> @everyone\nX-Injected: 1 <http://evil|click>");
        let creds: BTreeMap<&str, String> = [
            ("url", "http://127.0.0.1:1/x".to_string()),
            ("token", "tok".to_string()),
            ("topic", "top".to_string()),
        ]
        .into();
        let slack = request(
            &Target::Slack {
                url: crate::model::notify::Credential::Env("U".into()),
            },
            &creds,
            &ev,
        )
        .unwrap();
        let text = serde_json::from_slice::<serde_json::Value>(&slack.body).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !text.contains("<!channel>") && text.contains("&lt;!channel&gt;"),
            "{text}"
        );
        assert!(!text.contains("<http://evil"), "{text}");
        let discord = request(
            &Target::Discord {
                url: crate::model::notify::Credential::Env("U".into()),
            },
            &creds,
            &ev,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&discord.body).unwrap();
        assert_eq!(v["allowed_mentions"]["parse"], serde_json::json!([]));
        // The title is one line: a summary cannot add lines to it.
        assert!(!ev.title().contains('\n'));
        let ntfy = request(
            &Target::Ntfy {
                server: "http://127.0.0.1:1".into(),
                topic: crate::model::notify::Credential::Env("T".into()),
                token: None,
            },
            &creds,
            &ev,
        )
        .unwrap();
        assert!(ntfy.headers.iter().all(|(_, v)| !v.contains('\n')));
        let m = request(
            &Target::Matrix {
                server: "http://127.0.0.1:1".into(),
                room: "!room/../x:ex.org".into(),
                token: crate::model::notify::Credential::Env("T".into()),
            },
            &creds,
            &ev,
        )
        .unwrap();
        assert!(
            m.url
                .contains("/rooms/%21room%2F..%2Fx%3Aex.org/send/m.room.message/tk-"),
            "{}",
            m.url
        );
    }

    #[test]
    fn webhooks_are_signed_over_the_exact_body() {
        let ev = event("backup failed");
        let creds: BTreeMap<&str, String> =
            [("url", "http://x/".to_string()), ("secret", "k".repeat(20))].into();
        let target = Target::Webhook {
            url: crate::model::notify::Credential::Env("U".into()),
            secret: Some(crate::model::notify::Credential::Env("S".into())),
        };
        let r = request(&target, &creds, &ev).unwrap();
        let sig = r
            .headers
            .iter()
            .find(|(k, _)| *k == "x-tidekeeper-signature-256")
            .unwrap();
        assert_eq!(sig.1, sign("k".repeat(20).as_bytes(), &r.body));
        assert_ne!(sig.1, sign(b"other", &r.body));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["kind"], "job_failed");
        assert_eq!(v["status"], "info");
    }

    #[test]
    fn long_details_are_capped() {
        let mut ev = event("x");
        ev.details = (0..100).map(|i| format!("line {i}")).collect();
        let text = ev.text();
        assert!(text.contains("line 14") && !text.contains("line 15"));
        assert!(text.contains("and 85 more"));
        assert_eq!(cut(&"é".repeat(3000), 2000).chars().count(), 2000);
    }
}
