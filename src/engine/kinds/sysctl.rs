//! `sysctl:` settings. Observed from /proc/sys, set with `sysctl -w`, and
//! persisted in one file under /etc/sysctl.d so they survive a reboot.

use super::Garbled;
use super::{ApplyCx, Change, Kind, Need, Observe, PlanCx, ProbeCx, ReadCx, each, managed, step};
use crate::change::{Action, ResourceKind};
use crate::engine::item::FileItem;
use crate::engine::item::Item;
use crate::engine::observed::Observed;
use crate::engine::sh::Tag;
use crate::model::desired::Confinement;
use crate::transport::shell_quote as q;

/// Where the settings are persisted.
pub(crate) const CONF: &str = "/etc/sysctl.d/90-tidekeeper.conf";

/// The file under /proc/sys holding a setting.
pub(crate) fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Probe: one `grep` over every setting's file, printing `path:value` as
/// [`Tag::Sysctl`] records. Empty when the host has no settings.
pub(crate) fn probe(items: &[Item]) -> String {
    let files: Vec<String> = keys(items).map(|(k, _)| q(&path(k))).collect();
    if files.is_empty() {
        return String::new();
    }
    format!(
        "grep -H '' -- {} | sed 's/^/{}\t/'\n",
        files.join(" "),
        Tag::Sysctl
    )
}

/// Read one record (after its tag): the setting it is for, among `items`,
/// and its value with runs of blanks as one space (/proc separates the
/// fields of some values with tabs). `Err` when the record is garbled;
/// `Ok(None)` for a file no setting names.
pub(crate) fn parse(record: &str, items: &[Item]) -> Result<Option<(String, String)>, Garbled> {
    let (file, value) = record.split_once(':').ok_or(Garbled)?;
    Ok(keys(items)
        .find(|(k, _)| path(k) == file)
        .map(|(k, _)| (k.to_string(), words(value))))
}

/// The value to set when it differs from what the host has (compared by
/// words); None when nothing needs doing.
pub(crate) fn plan(have: Option<&str>, want: &str) -> Option<String> {
    (have.map(words) != Some(words(want))).then(|| want.to_string())
}

/// Apply: set the value now.
pub(crate) fn apply(key: &str, value: &str) -> String {
    format!(
        "sysctl -q -w -- {} || return\n",
        q(&format!("{key}={value}"))
    )
}

/// The persisted file: every setting of the host, in config order.
pub(crate) fn conf(items: &[Item]) -> String {
    let mut conf = String::from("# Managed by tidekeeper.\n");
    for (key, value) in keys(items) {
        conf.push_str(&format!("{key} = {value}\n"));
    }
    conf
}

/// A network setting can cut tidekeeper off (forwarding, rp_filter,
/// SYN cookies): its change is guarded like a firewall change.
pub(crate) fn is_risky(key: &str) -> bool {
    key.starts_with("net.")
}

fn keys(items: &[Item]) -> impl Iterator<Item = (&str, &str)> {
    items.iter().filter_map(|i| match i {
        Item::Sysctl { key, value } => Some((key.as_str(), value.as_str())),
        _ => None,
    })
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `sysctl:` as a [`Kind`].
pub(crate) struct Sysctl;

impl Kind for Sysctl {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Sysctl
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Sysctl]
    }

    fn read(&self, records: &[(Tag, &str)], cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            if let Some((key, value)) = parse(record, cx.items)? {
                o.sysctl.insert(key, Some(value));
            }
            Ok(())
        })
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Sysctl { key, value } = item else {
            return Ok(None);
        };
        let have = cx.obs.sysctl.get(key).cloned().flatten();
        Ok(plan(have.as_deref(), value)
            .map(|want| Need::new(Action::Update).attr("value", have, Some(want))))
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Sysctl { key, value } = item else {
            return vec![];
        };
        step(c, apply(key, value))
    }

    /// Every setting of the host, persisted so it survives a reboot.
    fn persist(&self, items: &[Item]) -> Option<FileItem> {
        let conf = conf(items);
        Some(FileItem {
            path: CONF.into(),
            sha256: crate::digest::sha256_hex(conf.as_bytes()),
            content: crate::model::desired::Content {
                bytes: conf.into_bytes(),
                sensitive: false,
            },
            mode: Some(0o644),
            owner: None,
            group: None,
            validate: None,
            notify: vec![],
        })
    }

    fn is_risky(&self, id: &str, _login_user: &str) -> bool {
        is_risky(id)
    }

    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        managed(item, base)
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        base.managed.insert((item.kind(), item.id().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::sh_n;

    fn items() -> Vec<Item> {
        vec![
            Item::Sysctl {
                key: "vm.swappiness".into(),
                value: "10".into(),
            },
            Item::Sysctl {
                key: "net.ipv4.ip_local_port_range".into(),
                value: "32768 60999".into(),
            },
        ]
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let grep = probe(&items());
        assert_eq!(
            grep,
            "grep -H '' -- /proc/sys/vm/swappiness /proc/sys/net/ipv4/ip_local_port_range | sed 's/^/K\t/'\n"
        );
        let set = apply("net.ipv4.ip_local_port_range", "32768 60999");
        assert_eq!(
            set,
            "sysctl -q -w -- 'net.ipv4.ip_local_port_range=32768 60999' || return\n"
        );
        sh_n(&grep);
        sh_n(&format!("f() {{\n{set}}}"));
        // A value that tries to break out of its quotes stays one word.
        let hostile = apply("kernel.hostname", "x'; rm -rf / #");
        assert_eq!(
            hostile,
            "sysctl -q -w -- 'kernel.hostname=x'\\''; rm -rf / #' || return\n"
        );
        sh_n(&format!("f() {{\n{hostile}}}"));
        assert_eq!(probe(&[]), "", "no settings, no probe");
        assert_eq!(
            conf(&items()),
            "# Managed by tidekeeper.\nvm.swappiness = 10\nnet.ipv4.ip_local_port_range = 32768 60999\n"
        );
    }

    #[test]
    fn a_probe_record_reads_back_to_its_setting_with_blanks_as_one_space() {
        let items = items();
        assert_eq!(
            parse(
                "/proc/sys/net/ipv4/ip_local_port_range:32768\t60999",
                &items
            ),
            Ok(Some((
                "net.ipv4.ip_local_port_range".to_string(),
                "32768 60999".to_string()
            )))
        );
        assert_eq!(
            parse("/proc/sys/vm/swappiness:60", &items),
            Ok(Some(("vm.swappiness".to_string(), "60".to_string())))
        );
        assert_eq!(parse("/proc/sys/vm/other:1", &items), Ok(None));
        assert_eq!(parse("no colon here", &items), Err(Garbled));
    }

    #[test]
    fn a_change_is_planned_only_when_the_words_differ_and_net_settings_are_risky() {
        assert_eq!(plan(Some("32768\t60999"), "32768 60999"), None);
        assert_eq!(plan(Some("60"), "10"), Some("10".to_string()));
        assert_eq!(
            plan(None, "10"),
            Some("10".to_string()),
            "unreadable: set it"
        );
        assert!(is_risky("net.ipv4.ip_forward"));
        assert!(!is_risky("vm.swappiness"));
    }
}
