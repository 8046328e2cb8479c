//! Stage 7: `notify:` in tidekeeper.yaml — sinks checked per type, routes
//! against the sinks and hosts. A URL, token or password written into the
//! repo in plain text is refused: it must come from `{env: VAR}` or
//! `{secret: name}`.

use super::*;
use crate::model::notify::{Credential, EventKind, Notify, Route, Severity, Sink, SmtpTls, Target};
use raw::{CredentialSpec, SinkSpec};

const SINK_TYPES: [&str; 7] = [
    "webhook", "slack", "discord", "telegram", "ntfy", "matrix", "email",
];

impl Loader<'_> {
    pub(super) fn notify(
        &mut self,
        n: &raw::NotifySpec,
        secrets: &BTreeSet<String>,
        hosts: &[Host],
        broken_hosts: &BTreeSet<String>,
    ) -> Notify {
        let file = FLEET_FILE;
        let defaults = Notify::default();
        let mut dur = |v: &Option<S<String>>, default: u64, what: &str| -> u64 {
            let Some(v) = v else { return default };
            match check::duration(&v.value) {
                Ok(d) => d.as_secs(),
                Err(e) => {
                    self.err(at(file, v).error("invalid-duration", format!("notify.{what}: {e}")));
                    default
                }
            }
        };
        let remind = dur(&n.remind_every, defaults.remind_every_secs, "remind_every");
        let unreachable = dur(
            &n.unreachable_after,
            defaults.unreachable_after_secs,
            "unreachable_after",
        );
        let stale = dur(
            &n.fetch_stale_after,
            defaults.fetch_stale_after_secs,
            "fetch_stale_after",
        );
        if let Some(c) = &n.monthly_cost_above
            && !(c.value.is_finite() && c.value >= 0.0)
        {
            self.err(at(file, c).error(
                "invalid-value",
                "notify.monthly_cost_above must be a non-negative amount",
            ));
        }
        let mut sinks = BTreeMap::new();
        for (name, spec) in &n.sinks {
            if let Err(e) = check::host_name(name) {
                self.err(
                    at(file, &spec.kind).error("invalid-name", format!("sink name {name:?}: {e}")),
                );
                continue;
            }
            if let Some(target) = self.sink(name, spec, secrets) {
                let per_minute = spec.per_minute.as_ref().map(|p| p.value).unwrap_or(20);
                if per_minute == 0 {
                    self.err(
                        at(file, spec.per_minute.as_ref().unwrap())
                            .error("invalid-value", "per_minute must be at least 1"),
                    );
                }
                sinks.insert(
                    name.clone(),
                    Sink {
                        name: name.clone(),
                        target,
                        per_minute: per_minute.max(1),
                    },
                );
            }
        }
        let routes = n
            .routes
            .iter()
            .map(|r| self.route(r, &n.sinks, hosts, broken_hosts))
            .collect();
        Notify {
            sinks,
            routes,
            remind_every_secs: remind,
            unreachable_after_secs: unreachable,
            fetch_stale_after_secs: stale,
            monthly_cost_above: n.monthly_cost_above.as_ref().map(|c| c.value),
        }
    }

    fn credential(
        &mut self,
        sink: &str,
        key: &str,
        c: &S<CredentialSpec>,
        secrets: &BTreeSet<String>,
    ) -> Option<Credential> {
        let file = FLEET_FILE;
        match &c.value {
            CredentialSpec::Plain(_) => {
                // The value is not repeated in the error: it is a credential.
                self.err(
                    at(file, c)
                        .error("plaintext-credential", format!("sink {sink:?}: `{key}` is written in the repo in plain text"))
                        .with_help(format!("a {key} is a credential: give it as `{key}: {{env: VARIABLE}}` (read from the daemon's environment) or `{key}: {{secret: name}}` (secrets/name.age); then remove the value from git history")),
                );
                None
            }
            CredentialSpec::From(r) => match (&r.env, &r.secret) {
                (Some(v), None) => {
                    if v.is_empty() || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                    {
                        self.err(at(file, c).error(
                            "invalid-value",
                            format!("sink {sink:?}: {v:?} is not an environment variable name"),
                        ));
                    }
                    Some(Credential::Env(v.clone()))
                }
                (None, Some(s)) => {
                    if !secrets.contains(s) {
                        self.err(
                            at(file, c)
                                .error("missing-secret", format!("sink {sink:?}: secret {s:?} is referenced but secrets/{s}.age does not exist"))
                                .with_help(format!("create it with `tidekeeper secrets encrypt {s}`, or fix the name")),
                        );
                    } else if let Some(why) = self.undecryptable.get(s).cloned() {
                        self.err(
                            at(file, c)
                                .error("secret-decrypt", format!("sink {sink:?}: secret {s:?} is used but secrets/{s}.age cannot be decrypted: {why}"))
                                .with_help("encrypt it to a recipient whose identity tidekeeper has (secrets/.recipients, then `tidekeeper secrets rekey`)"),
                        );
                    }
                    Some(Credential::Secret(s.clone()))
                }
                _ => {
                    self.err(at(file, c).error(
                        "invalid-value",
                        format!("sink {sink:?}: `{key}` needs exactly one of `env:` and `secret:`"),
                    ));
                    None
                }
            },
        }
    }

    /// One sink: the keys its type needs, and no others.
    fn sink(&mut self, name: &str, s: &SinkSpec, secrets: &BTreeSet<String>) -> Option<Target> {
        let file = FLEET_FILE;
        let kind = s.kind.value.as_str();
        if !SINK_TYPES.contains(&kind) {
            let d = at(file, &s.kind).error(
                "unknown-sink-type",
                format!("sink {name:?}: unknown type {kind:?}"),
            );
            self.err(match closest(kind, &SINK_TYPES) {
                Some(c) => d.with_help(format!(
                    "did you mean {c:?}? Types: {}",
                    SINK_TYPES.join(", ")
                )),
                None => d.with_help(format!("one of {}", SINK_TYPES.join(", "))),
            });
            return None;
        }
        let ok = self.sink_keys(name, kind, s);
        let cred = |key: &str, c: &Option<S<CredentialSpec>>, this: &mut Self| {
            c.as_ref()
                .and_then(|c| this.credential(name, key, c, secrets))
        };
        let url = cred("url", &s.url, self);
        let secret = cred("secret", &s.secret, self);
        let token = cred("token", &s.token, self);
        let topic = cred("topic", &s.topic, self);
        let password = cred("password", &s.password, self);
        let server = |default: &str, this: &mut Self| -> String {
            match &s.server {
                None => default.to_string(),
                Some(v) => {
                    if !(v.value.starts_with("https://") || v.value.starts_with("http://")) {
                        this.err(at(file, v).error(
                            "invalid-value",
                            format!(
                                "sink {name:?}: server {:?} must be an http:// or https:// URL",
                                v.value
                            ),
                        ));
                    }
                    v.value.trim_end_matches('/').to_string()
                }
            }
        };
        let target = match kind {
            "webhook" => Target::Webhook { url: url?, secret },
            "slack" => Target::Slack { url: url? },
            "discord" => Target::Discord { url: url? },
            "telegram" => Target::Telegram {
                server: server("https://api.telegram.org", self),
                token: token?,
                chat_id: match &s.chat_id.as_ref()?.value {
                    raw::ChatId::Number(n) => n.to_string(),
                    raw::ChatId::Text(t) => t.clone(),
                },
            },
            "ntfy" => Target::Ntfy {
                server: server("https://ntfy.sh", self),
                topic: topic?,
                token,
            },
            "matrix" => {
                let room = s.room.as_ref()?;
                if !(room.value.starts_with('!') && room.value.contains(':')) {
                    self.err(
                        at(file, room)
                            .error("invalid-value", format!("sink {name:?}: room {:?} is not a room id", room.value))
                            .with_help("a room id looks like !AbCdEf:example.org (Room settings → Advanced)"),
                    );
                }
                Target::Matrix {
                    server: server("", self),
                    room: room.value.clone(),
                    token: token?,
                }
            }
            _ => self.email(name, s, password)?,
        };
        ok.then_some(target)
    }

    /// The type-specific keys a sink has: each one its type takes, and
    /// every one it needs. False after reporting what is wrong.
    fn sink_keys(&mut self, name: &str, kind: &str, s: &SinkSpec) -> bool {
        let file = FLEET_FILE;
        // (key, present) for every type-specific key; checked against what the type takes.
        let present: [(&str, bool); 15] = [
            ("url", s.url.is_some()),
            ("secret", s.secret.is_some()),
            ("token", s.token.is_some()),
            ("topic", s.topic.is_some()),
            ("password", s.password.is_some()),
            ("server", s.server.is_some()),
            ("chat_id", s.chat_id.is_some()),
            ("room", s.room.is_some()),
            ("host", s.host.is_some()),
            ("port", s.port.is_some()),
            ("tls", s.tls.is_some()),
            ("username", s.username.is_some()),
            ("from", s.from.is_some()),
            ("to", !s.to.is_empty()),
            ("ca_file", s.ca_file.is_some()),
        ];
        let (takes, needs): (&[&str], &[&str]) = match kind {
            "webhook" => (&["url", "secret"], &["url"]),
            "slack" | "discord" => (&["url"], &["url"]),
            "telegram" => (&["token", "chat_id", "server"], &["token", "chat_id"]),
            "ntfy" => (&["topic", "token", "server"], &["topic"]),
            "matrix" => (&["server", "room", "token"], &["server", "room", "token"]),
            _ => (
                &[
                    "host", "port", "tls", "username", "password", "from", "to", "ca_file",
                ],
                &["host", "from", "to"],
            ),
        };
        let mut ok = true;
        for (key, here) in present {
            if here && !takes.contains(&key) {
                self.err(
                    at(file, &s.kind)
                        .error(
                            "unknown-key",
                            format!("sink {name:?}: a {kind} sink has no `{key}`"),
                        )
                        .with_help(format!("a {kind} sink takes {}", takes.join(", "))),
                );
                ok = false;
            }
            if !here && needs.contains(&key) {
                self.err(at(file, &s.kind).error(
                    "missing-key",
                    format!("sink {name:?}: a {kind} sink needs `{key}`"),
                ));
                ok = false;
            }
        }
        ok
    }

    fn email(&mut self, name: &str, s: &SinkSpec, password: Option<Credential>) -> Option<Target> {
        let file = FLEET_FILE;
        let tls = s.tls.as_ref().map(|t| t.value).unwrap_or(SmtpTls::Starttls);
        let port = s.port.as_ref().map(|p| p.value).unwrap_or(match tls {
            SmtpTls::Tls => 465,
            SmtpTls::Starttls => 587,
            SmtpTls::None => 25,
        });
        let mut addresses = s.from.iter().chain(&s.to);
        if let Some(bad) = addresses.find(|a| a.value.parse::<lettre::Address>().is_err()) {
            self.err(at(file, bad).error(
                "invalid-value",
                format!("sink {name:?}: {:?} is not an email address", bad.value),
            ));
        }
        if password.is_some() && s.username.is_none() {
            self.err(at(file, &s.kind).error(
                "missing-key",
                format!("sink {name:?}: a password needs a `username`"),
            ));
        }
        if password.is_some() && tls == SmtpTls::None {
            self.err(
                match &s.tls {
                    Some(t) => at(file, t),
                    None => at(file, &s.kind),
                }
                .error(
                    "insecure",
                    format!("sink {name:?}: a password would cross the network in clear text"),
                )
                .with_help("use tls: starttls or tls"),
            );
        }
        Some(Target::Email {
            host: s.host.as_ref()?.value.clone(),
            port,
            tls,
            username: opt(&s.username),
            password,
            from: s.from.as_ref()?.value.clone(),
            to: s.to.iter().map(|t| t.value.clone()).collect(),
            ca_file: opt(&s.ca_file),
        })
    }

    fn route(
        &mut self,
        r: &raw::RouteSpec,
        sinks: &BTreeMap<String, SinkSpec>,
        hosts: &[Host],
        broken_hosts: &BTreeSet<String>,
    ) -> Route {
        let file = FLEET_FILE;
        let names: Vec<&S<String>> = r.sink.iter().chain(&r.sinks).collect();
        if names.is_empty() {
            let where_ = r
                .events
                .first()
                .map(|e| at(file, e))
                .unwrap_or_else(|| Origin::file(file));
            self.err(where_.error("missing-key", "a route needs `sink` (or `sinks`)"));
        }
        let known: Vec<&str> = sinks.keys().map(String::as_str).collect();
        for n in &names {
            if !sinks.contains_key(&n.value) {
                let d = at(file, *n).error(
                    "unknown-sink",
                    format!(
                        "route names sink {:?}, which notify.sinks does not define",
                        n.value
                    ),
                );
                self.err(match closest(&n.value, &known) {
                    Some(c) => d.with_help(format!("did you mean {c:?}?")),
                    None => d,
                });
            }
        }
        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        let events = r
            .events
            .iter()
            .filter_map(|e| match EventKind::parse(&e.value) {
                Some(k) => Some(k),
                None => {
                    let d =
                        at(file, e).error("unknown-event", format!("unknown event {:?}", e.value));
                    self.err(match closest(&e.value, &all) {
                        Some(c) => d.with_help(format!("did you mean {c:?}?")),
                        None => d.with_help(format!("events: {}", all.join(", "))),
                    });
                    None
                }
            })
            .collect();
        let min_severity = match &r.severity {
            None => Severity::Info,
            Some(s) => match s.value.as_str() {
                "info" => Severity::Info,
                "warning" => Severity::Warning,
                "critical" => Severity::Critical,
                other => {
                    self.err(at(file, s).error(
                        "invalid-value",
                        format!("severity {other:?} is not info, warning or critical"),
                    ));
                    Severity::Info
                }
            },
        };
        let host_names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        for h in &r.hosts {
            if !host_names.contains(&h.value.as_str()) && !broken_hosts.contains(&h.value) {
                let d = at(file, h).error(
                    "unknown-host",
                    format!(
                        "route names host {:?}, which is not a host of the fleet",
                        h.value
                    ),
                );
                self.err(match closest(&h.value, &host_names) {
                    Some(c) => d.with_help(format!("did you mean {c:?}?")),
                    None => d,
                });
            }
        }
        Route {
            sinks: names.iter().map(|n| n.value.clone()).collect(),
            events,
            min_severity,
            hosts: r.hosts.iter().map(|h| h.value.clone()).collect(),
            labels: r
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        }
    }
}
