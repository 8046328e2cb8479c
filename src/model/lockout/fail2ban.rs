//! fail2ban's SSH jail against where tidekeeper connects from: a jail whose
//! `ignoreip` does not cover tidekeeper bans it after a few failed logins (a
//! rotated key, a wrong user), and then nothing reaches the host. Read from
//! the text of the host's desired files, in fail2ban's own order.

use std::collections::BTreeMap;

use super::{Sources, short};
use crate::model::check::Net;
use crate::model::desired::{FileResource, Host, PackageState, Resource};
use crate::model::diag::{Diagnostic, Origin};

/// Debian's fail2ban package enables the sshd jail in this file.
const DEBIAN_DEFAULTS: &str = "/etc/fail2ban/jail.d/defaults-debian.conf";

/// Where fail2ban reads a jail file, in its order (jail.conf, jail.d/*.conf,
/// jail.local, jail.d/*.local; later files override earlier ones).
fn rank(path: &str) -> Option<u8> {
    let jail_d = |ext: &str| {
        path.strip_prefix("/etc/fail2ban/jail.d/")
            .is_some_and(|n| !n.contains('/') && n.ends_with(ext))
    };
    match path {
        "/etc/fail2ban/jail.conf" => Some(0),
        _ if jail_d(".conf") => Some(1),
        "/etc/fail2ban/jail.local" => Some(2),
        _ if jail_d(".local") => Some(3),
        _ => None,
    }
}

/// One `key = value` of an INI file: section, key, value, 1-based line.
type Entry = (String, String, String, usize);

/// The settings of fail2ban's INI dialect: `[section]`, `key = value` (or
/// `key: value`), indented lines continuing a value, `#`/`;` comments.
pub(super) fn parse_ini(text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or("");
        let line = line.split(" ;").next().unwrap_or("");
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // A continuation of the previous value (ignoreip on many lines).
            if let Some(last) = out.last_mut().filter(|e| e.0 == section) {
                last.2.push(' ');
                last.2.push_str(trimmed);
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = trimmed.split_once(['=', ':']) {
            out.push((
                section.clone(),
                k.trim().to_string(),
                v.trim().to_string(),
                i + 1,
            ));
        }
    }
    out
}

/// A setting as fail2ban ends up with it, and where it was written: the
/// file entry (None: the package's own file) and the line in its text.
struct Setting<'a> {
    value: String,
    path: String,
    line: usize,
    entry: Option<&'a FileResource>,
}

/// Settings by (section, key).
type Merged<'a> = BTreeMap<(String, String), Setting<'a>>;

/// The jail settings of a host's fail2ban: the package's own defaults
/// (unless the config replaces or removes their file), then each desired
/// jail file in fail2ban's order. None when fail2ban is not installed.
fn settings(h: &Host) -> Option<(Merged<'_>, &Origin)> {
    let package = h.resources.iter().find_map(|r| match r {
        Resource::Package {
            name,
            state: PackageState::Present | PackageState::Latest,
            origin,
        } if name == "fail2ban" => Some(origin),
        _ => None,
    })?;
    let mut files: Vec<(u8, &str, String, Option<&FileResource>)> = Vec::new();
    let replaced = |p: &str| {
        h.resources.iter().any(|r| match r {
            Resource::File(f) => f.path == p,
            Resource::Absent { path, .. } => path == p,
            _ => false,
        })
    };
    if !replaced(DEBIAN_DEFAULTS) {
        files.push((1, DEBIAN_DEFAULTS, "[sshd]\nenabled = true\n".into(), None));
    }
    for r in &h.resources {
        if let Resource::File(f) = r
            && let Some(rank) = rank(&f.path)
            && !f.content.sensitive
        {
            let text = String::from_utf8_lossy(&f.content.bytes).into_owned();
            files.push((rank, &f.path, text, Some(f)));
        }
    }
    files.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut merged = BTreeMap::new();
    for (_, path, text, entry) in files {
        for (section, key, value, line) in parse_ini(&text) {
            let s = Setting {
                value,
                path: path.to_string(),
                line,
                entry,
            };
            merged.insert((section, key.to_lowercase()), s);
        }
    }
    Some((merged, package))
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
}

/// The SSH jails fail2ban would run: `sshd` (jail.conf always defines it)
/// and any other jail on the `sshd` filter.
fn ssh_jails(set: &Merged<'_>) -> Vec<String> {
    let mut jails = vec!["sshd".to_string()];
    for ((section, key), s) in set {
        let on_sshd = (key == "filter" && s.value.starts_with("sshd")) || section == "ssh";
        if on_sshd && !jails.contains(section) && section != "DEFAULT" {
            jails.push(section.clone());
        }
    }
    jails
}

/// Does `ignoreip` (addresses and CIDRs, space or comma separated) cover
/// every source? Unknown sources are covered by nothing.
fn covers(ignoreip: &str, src: &Sources) -> bool {
    let nets: Vec<Net> = ignoreip
        .split([' ', ',', '\t'])
        .filter(|t| !t.is_empty() && *t != "any")
        .filter_map(Net::parse)
        .collect();
    match src {
        Sources::Known(srcs) => srcs.iter().all(|s| nets.iter().any(|n| n.contains(s))),
        Sources::Unknown(_) => false,
    }
}

/// An error per enabled SSH jail whose `ignoreip` leaves tidekeeper out,
/// unless a fail2ban file entry of the host acknowledges it (`lockout_ok`).
pub(super) fn check(h: &Host, src: &Sources) -> Vec<Diagnostic> {
    let Some((set, package)) = settings(h) else {
        return vec![];
    };
    let acknowledged = h.resources.iter().any(
        |r| matches!(r, Resource::File(f) if rank(&f.path).is_some() && f.lockout_ok.is_some()),
    );
    if acknowledged {
        return vec![];
    }
    let get = |jail: &str, key: &str| {
        set.get(&(jail.to_string(), key.to_string()))
            .or_else(|| set.get(&("DEFAULT".to_string(), key.to_string())))
    };
    let mut out = Vec::new();
    for jail in ssh_jails(&set) {
        let Some(enabled) = get(&jail, "enabled").filter(|s| truthy(&s.value)) else {
            continue;
        };
        let ignoreip = get(&jail, "ignoreip");
        if ignoreip.is_some_and(|s| covers(&s.value, src)) {
            continue;
        }
        let (origin, by) = match enabled.entry {
            Some(f) => (
                &f.origin,
                format!("enabled in {} line {}", enabled.path, enabled.line),
            ),
            None => (
                package,
                format!("enabled by the fail2ban package's {DEBIAN_DEFAULTS}"),
            ),
        };
        let ignored = match ignoreip {
            Some(s) => format!("its ignoreip is {:?}", s.value),
            None => "it has no ignoreip".to_string(),
        };
        let message = match src {
            Sources::Known(_) => format!(
                "{}: fail2ban's {jail} jail ({by}) would ban tidekeeper, which connects from {}, after a few failed logins: {ignored}",
                h.name,
                src.text()
            ),
            Sources::Unknown(why) => format!(
                "{}: fail2ban's {jail} jail ({by}) could ban tidekeeper after a few failed logins: {why}, and {ignored}",
                h.name
            ),
        };
        let add = match src {
            Sources::Known(n) => n.iter().map(short).collect::<Vec<_>>().join(" "),
            Sources::Unknown(_) => "<where tidekeeper connects from>".into(),
        };
        out.push(origin.error("lockout", message).with_help(format!(
            "add tidekeeper's address to ignoreip in [{jail}] or [DEFAULT] (e.g. in /etc/fail2ban/jail.local: `ignoreip = 127.0.0.1/8 ::1 {add}`), or acknowledge the risk with `lockout_ok: \"<why>\"` on a fail2ban file entry"
        )));
    }
    out
}
