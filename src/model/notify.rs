//! `notify:` in tidekeeper.yaml, resolved: where messages go (sinks), which
//! events go where (routes), and the limits that turn a state into an alert.
//! Credentials are never values here, only where to find them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened. Names are the ones written in `routes[].events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ApplyFailed,
    RolledBack,
    Quarantined,
    InvalidCommit,
    Drift,
    DriftCorrected,
    JobFailed,
    JobSucceeded,
    HealthThreshold,
    FetchStale,
    PolicyDenied,
    CostThreshold,
    HostUnreachable,
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::ApplyFailed,
        EventKind::RolledBack,
        EventKind::Quarantined,
        EventKind::InvalidCommit,
        EventKind::Drift,
        EventKind::DriftCorrected,
        EventKind::JobFailed,
        EventKind::JobSucceeded,
        EventKind::HealthThreshold,
        EventKind::FetchStale,
        EventKind::PolicyDenied,
        EventKind::CostThreshold,
        EventKind::HostUnreachable,
        EventKind::Test,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::ApplyFailed => "apply_failed",
            EventKind::RolledBack => "rolled_back",
            EventKind::Quarantined => "quarantined",
            EventKind::InvalidCommit => "invalid_commit",
            EventKind::Drift => "drift",
            EventKind::DriftCorrected => "drift_corrected",
            EventKind::JobFailed => "job_failed",
            EventKind::JobSucceeded => "job_succeeded",
            EventKind::HealthThreshold => "health_threshold",
            EventKind::FetchStale => "fetch_stale",
            EventKind::PolicyDenied => "policy_denied",
            EventKind::CostThreshold => "cost_threshold",
            EventKind::HostUnreachable => "host_unreachable",
            EventKind::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// How bad it is when nothing else says.
    pub fn severity(self) -> Severity {
        match self {
            EventKind::RolledBack
            | EventKind::Quarantined
            | EventKind::HostUnreachable
            | EventKind::HealthThreshold => Severity::Critical,
            EventKind::ApplyFailed
            | EventKind::InvalidCommit
            | EventKind::Drift
            | EventKind::JobFailed
            | EventKind::FetchStale
            | EventKind::PolicyDenied
            | EventKind::CostThreshold => Severity::Warning,
            EventKind::DriftCorrected | EventKind::JobSucceeded | EventKind::Test => Severity::Info,
        }
    }

    /// Good news is sent only to routes that name it.
    pub fn is_problem(self) -> bool {
        self.severity() > Severity::Info
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where a URL, token or password is read from when a message is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Credential {
    /// An environment variable of the daemon.
    Env(String),
    /// `secrets/<name>.age`, decrypted with the fleet's identity.
    Secret(String),
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Env(v) => write!(f, "environment variable {v}"),
            Credential::Secret(s) => write!(f, "secret {s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); refused without it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same machine or network.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// JSON POSTed to a URL, signed with HMAC-SHA256 when `secret` is set.
    Webhook {
        url: Credential,
        secret: Option<Credential>,
    },
    Slack {
        url: Credential,
    },
    Discord {
        url: Credential,
    },
    Telegram {
        server: String,
        token: Credential,
        chat_id: String,
    },
    Ntfy {
        server: String,
        topic: Credential,
        token: Option<Credential>,
    },
    Matrix {
        server: String,
        room: String,
        token: Credential,
    },
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<Credential>,
        from: String,
        to: Vec<String>,
        /// A CA certificate (PEM) to trust besides the system's, for a
        /// relay behind a private CA.
        ca_file: Option<String>,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Discord { .. } => "discord",
            Target::Telegram { .. } => "telegram",
            Target::Ntfy { .. } => "ntfy",
            Target::Matrix { .. } => "matrix",
            Target::Email { .. } => "email",
        }
    }

    /// The credentials this sink reads, by role.
    pub fn credentials(&self) -> Vec<(&'static str, &Credential)> {
        let mut out = Vec::new();
        match self {
            Target::Webhook { url, secret } => {
                out.push(("url", url));
                if let Some(s) = secret {
                    out.push(("secret", s));
                }
            }
            Target::Slack { url } | Target::Discord { url } => out.push(("url", url)),
            Target::Telegram { token, .. } | Target::Matrix { token, .. } => {
                out.push(("token", token))
            }
            Target::Ntfy { topic, token, .. } => {
                out.push(("topic", topic));
                if let Some(t) = token {
                    out.push(("token", t));
                }
            }
            Target::Email { password, .. } => {
                if let Some(p) = password {
                    out.push(("password", p));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sink {
    pub name: String,
    pub target: Target,
    /// At most this many messages a minute; the rest wait their turn.
    pub per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub sinks: Vec<String>,
    /// Empty: every problem (not the good news, which must be named).
    pub events: Vec<EventKind>,
    pub min_severity: Severity,
    /// Only events about these hosts (empty: any host, and fleet-wide events).
    pub hosts: Vec<String>,
    /// Only events about hosts with these labels.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notify {
    pub sinks: BTreeMap<String, Sink>,
    pub routes: Vec<Route>,
    /// An alert still firing is repeated after this long (0: never).
    pub remind_every_secs: u64,
    pub unreachable_after_secs: u64,
    pub fetch_stale_after_secs: u64,
    /// A plan that raises the fleet's monthly cost above this (any currency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_cost_above: Option<f64>,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            sinks: BTreeMap::new(),
            routes: vec![],
            remind_every_secs: 4 * 3600,
            unreachable_after_secs: 600,
            fetch_stale_after_secs: 1800,
            monthly_cost_above: None,
        }
    }
}

impl Notify {
    /// The sinks an event goes to: every route it matches, each sink once.
    /// `labels` are the event's host's labels (None: fleet-wide event).
    pub fn sinks_for(
        &self,
        kind: EventKind,
        severity: Severity,
        host: Option<&str>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            let kind_ok = if r.events.is_empty() {
                kind.is_problem()
            } else {
                r.events.contains(&kind)
            };
            let host_ok = (r.hosts.is_empty()
                || host.is_some_and(|h| r.hosts.iter().any(|n| n == h)))
                && (r.labels.is_empty()
                    || labels.is_some_and(|l| r.labels.iter().all(|(k, v)| l.get(k) == Some(v))));
            if kind_ok && host_ok && severity >= r.min_severity {
                for s in &r.sinks {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(events: &[EventKind], hosts: &[&str], labels: &[(&str, &str)]) -> Route {
        Route {
            sinks: vec!["s".into()],
            events: events.to_vec(),
            min_severity: Severity::Info,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn routes_filter_by_kind_severity_host_and_labels() {
        let mut n = Notify {
            routes: vec![route(&[], &[], &[])],
            ..Default::default()
        };
        // An empty event list means every problem, but never good news.
        assert_eq!(
            n.sinks_for(EventKind::JobFailed, Severity::Warning, None, None),
            ["s"]
        );
        assert!(
            n.sinks_for(EventKind::JobSucceeded, Severity::Info, None, None)
                .is_empty()
        );
        n.routes = vec![route(&[EventKind::JobSucceeded], &[], &[])];
        assert_eq!(
            n.sinks_for(EventKind::JobSucceeded, Severity::Info, None, None),
            ["s"]
        );
        n.routes = vec![Route {
            min_severity: Severity::Critical,
            ..route(&[], &[], &[])
        }];
        assert!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("a"), None)
                .is_empty()
        );
        assert_eq!(
            n.sinks_for(EventKind::RolledBack, Severity::Critical, Some("a"), None),
            ["s"]
        );
        let prod: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        let dev: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
        n.routes = vec![route(&[], &[], &[("env", "prod")])];
        assert_eq!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("a"), Some(&prod)),
            ["s"]
        );
        assert!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("b"), Some(&dev))
                .is_empty()
        );
        // A host filter does not match fleet-wide events.
        assert!(
            n.sinks_for(EventKind::FetchStale, Severity::Warning, None, None)
                .is_empty()
        );
        n.routes = vec![route(&[], &["a"], &[])];
        assert_eq!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("a"), None),
            ["s"]
        );
        assert!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("b"), None)
                .is_empty()
        );
        // Two routes to one sink: one message.
        n.routes = vec![route(&[], &[], &[]), route(&[EventKind::Drift], &[], &[])];
        assert_eq!(
            n.sinks_for(EventKind::Drift, Severity::Warning, Some("a"), None),
            ["s"]
        );
    }

    #[test]
    fn every_event_name_reads_back() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
        assert_eq!(EventKind::parse("apply-failed"), None);
    }
}
