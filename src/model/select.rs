//! Which hosts a command works on: `--host` names and globs (`web-*`,
//! also a `count: N` group's name) and `-l KEY=VALUE` label selectors.
//! Pure; a name, glob or label that matches no host is an error naming it,
//! with the host or label it most likely meant.

use std::collections::BTreeSet;

use super::desired::{Fleet, Host};

/// `--host` patterns (any may match) and `-l` labels (all must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    hosts: Vec<String>,
    labels: Vec<(String, String)>,
}

/// Why a selection chose nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectError {
    pub message: String,
    /// "did you mean …", or what there is to choose from.
    pub help: String,
}

impl Selector {
    /// From `--host` values and `-l` values (`KEY=VALUE[,KEY=VALUE…]` each).
    pub fn new(hosts: &[String], labels: &[String]) -> Result<Selector, String> {
        let mut pairs = vec![];
        for item in labels.iter().flat_map(|l| l.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!(
                    "-l {item:?}: write KEY=VALUE, e.g. -l env=prod (several: -l env=prod,tier=web)"
                ));
            };
            pairs.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Selector {
            hosts: hosts.to_vec(),
            labels: pairs,
        })
    }

    /// No `--host` and no `-l`: every host.
    pub fn is_all(&self) -> bool {
        self.hosts.is_empty() && self.labels.is_empty()
    }

    /// Whether `host` is chosen.
    pub fn matches(&self, host: &Host) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|p| pattern_matches(p, host)))
            && self.labels.iter().all(|(k, v)| label_matches(host, k, v))
    }

    /// The chosen hosts' names, in the fleet's order; an error when a
    /// `--host` or a label matches no host, or together they match none.
    pub fn select(&self, fleet: &Fleet) -> Result<Vec<String>, SelectError> {
        for p in &self.hosts {
            if !fleet.hosts.iter().any(|h| pattern_matches(p, h)) {
                return Err(no_host(fleet, p));
            }
        }
        for (k, v) in &self.labels {
            if !fleet.hosts.iter().any(|h| label_matches(h, k, v)) {
                return Err(no_label(fleet, k, v));
            }
        }
        let chosen: Vec<String> = fleet
            .hosts
            .iter()
            .filter(|h| self.matches(h))
            .map(|h| h.name.clone())
            .collect();
        if chosen.is_empty() {
            return Err(SelectError {
                message: format!(
                    "no host in fleet {:?} matches {} together",
                    fleet.name,
                    self.describe()
                ),
                help: "each matches some hosts, but none matches all; `tidekeeper show HOST` prints a host's labels".into(),
            });
        }
        Ok(chosen)
    }

    /// The selection as it was written, e.g. `--host web-* -l env=prod`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.hosts.iter().map(|h| format!("--host {h}")).collect();
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("-l {}", l.join(",")));
        }
        parts.join(" ")
    }
}

/// A host's name or its group's name, by `*`/`?` glob or exactly.
fn pattern_matches(pattern: &str, host: &Host) -> bool {
    glob(pattern, &host.name) || host.group.as_deref().is_some_and(|g| glob(pattern, g))
}

/// A label, or `group=NAME` for a `count: N` group's hosts.
fn label_matches(host: &Host, key: &str, value: &str) -> bool {
    match host.labels.get(key) {
        Some(v) => v == value,
        None => key == "group" && host.group.as_deref() == Some(value),
    }
}

/// `*` any run of characters, `?` one; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn no_host(fleet: &Fleet, pattern: &str) -> SelectError {
    let mut names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    names.extend(fleet.hosts.iter().filter_map(|h| h.group.as_deref()));
    let kind = if pattern.contains(['*', '?']) {
        "matches"
    } else {
        "is named"
    };
    SelectError {
        message: format!("no host {kind} {pattern:?} in fleet {:?}", fleet.name),
        help: match crate::suggest::closest(pattern, &names) {
            Some(m) => format!("did you mean {m:?}?"),
            None => format!("hosts are: {}", list(names)),
        },
    }
}

fn no_label(fleet: &Fleet, key: &str, value: &str) -> SelectError {
    let keys: BTreeSet<&str> = fleet
        .hosts
        .iter()
        .flat_map(|h| h.labels.keys().map(String::as_str))
        .collect();
    let values: BTreeSet<&str> = fleet
        .hosts
        .iter()
        .filter_map(|h| h.labels.get(key).map(String::as_str))
        .collect();
    let help = if values.is_empty() {
        let keys: Vec<&str> = keys.into_iter().collect();
        match crate::suggest::closest(key, &keys) {
            Some(k) => format!("did you mean {k}={value}?"),
            None if keys.is_empty() => "no host has labels; set `labels:` in hosts/*.yaml".into(),
            None => format!("label keys are: {}", keys.join(", ")),
        }
    } else {
        let values: Vec<&str> = values.into_iter().collect();
        match crate::suggest::closest(value, &values) {
            Some(v) => format!("did you mean {key}={v}?"),
            None => format!("{key} is one of: {}", values.join(", ")),
        }
    };
    SelectError {
        message: format!("no host in fleet {:?} has label {key}={value}", fleet.name),
        help,
    }
}

fn list(mut names: Vec<&str>) -> String {
    names.sort();
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_runs_and_single_characters_and_nothing_else() {
        assert!(glob("web-*", "web-1"));
        assert!(glob("web-*", "web-"));
        assert!(glob("*-db", "eu-db"));
        assert!(glob("w?b", "web"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("web-*", "db-1"));
        assert!(!glob("web", "web-1"));
        assert!(!glob("w?b", "weeb"));
    }
}
