//! `services:` — systemd units. Observed with one `systemctl show` over all
//! of them; enabled, disabled, started, stopped with `systemctl`. Stopping,
//! disabling or masking a unit that serves SSH is guarded.

use super::{ApplyCx, Change, Kind, PlanCx, ProbeCx, Prune, ReadCx, Saves, step};
use crate::change::ResourceKind;
use crate::engine::observed::{InventoryEntry, Observed};
use std::collections::BTreeMap;

use super::Need;
use crate::change::Action;
use crate::engine::item::Item;
use crate::engine::observed::UnitState;
use crate::engine::sh::{Tag, cmd};
use crate::model::desired::ServiceState;

/// Units that serve SSH: stopping, disabling or masking one is risky.
const SSH_UNITS: [&str; 6] = [
    "ssh",
    "sshd",
    "ssh.service",
    "sshd.service",
    "ssh.socket",
    "sshd.socket",
];

/// Probe: `systemctl show` of every unit, its lines as [`Tag::Unit`]
/// records, a blank record between units.
pub(crate) fn probe(items: &[Item]) -> String {
    let units: Vec<&str> = names(items).collect();
    if units.is_empty() {
        return String::new();
    }
    format!(
        "{} | sed 's/^/{}\\t/'\n",
        cmd("systemctl")
            .lit("show")
            .lit("-p")
            .lit("Id")
            .lit("-p")
            .lit("LoadState")
            .lit("-p")
            .lit("ActiveState")
            .lit("-p")
            .lit("UnitFileState")
            .lit("--")
            .args(&units),
        Tag::Unit
    )
}

/// Reads the [`Tag::Unit`] records back, unit by unit.
#[derive(Debug, Default)]
pub(crate) struct Units {
    block: Vec<(String, String)>,
    read: Vec<UnitState>,
}

impl Units {
    /// One `Key=Value` line, or a blank one between units.
    pub(crate) fn record(&mut self, record: &str) {
        if record.is_empty() {
            self.flush();
        } else if let Some((k, v)) = record.split_once('=') {
            if k == "Id" {
                self.flush();
            }
            self.block.push((k.to_string(), v.to_string()));
        }
    }

    fn flush(&mut self) {
        if self.block.is_empty() {
            return;
        }
        let get = |k: &str| {
            self.block
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, b)| b.clone())
                .unwrap_or_default()
        };
        self.read.push(UnitState {
            load: get("LoadState"),
            active: get("ActiveState"),
            file_state: get("UnitFileState"),
        });
        self.block.clear();
    }

    /// The state of each unit the items name. systemctl answers in argument
    /// order, and an alias (sshd → ssh.service) keeps the name the config
    /// used.
    pub(crate) fn finish(mut self, items: &[Item]) -> BTreeMap<String, UnitState> {
        self.flush();
        names(items).map(String::from).zip(self.read).collect()
    }
}

/// What a unit needs: enabled or disabled, started or stopped as asked.
pub(crate) fn plan(have: &UnitState, enabled: Option<bool>, state: Option<ServiceState>) -> Option<Need> {
    let missing = have.load == "not-found" || have.load.is_empty();
    let mut need = Need::new(if missing {
        Action::Create
    } else {
        Action::Update
    });
    if let Some(e) = enabled
        && (missing || is_enabled(&have.file_state) != e)
    {
        need = need.attr(
            "enabled",
            (!missing).then(|| have.file_state.clone()),
            Some(e.to_string()),
        );
    }
    if let Some(s) = state {
        let running = matches!(have.active.as_str(), "active" | "reloading" | "activating");
        let want = s == ServiceState::Running;
        if missing || running != want {
            need = need.attr(
                "state",
                (!missing).then(|| have.active.clone()),
                Some(if want { "running" } else { "stopped" }.into()),
            );
        }
    }
    need.if_any()
}

fn is_enabled(file_state: &str) -> bool {
    matches!(
        file_state,
        "enabled" | "enabled-runtime" | "static" | "alias" | "indirect" | "generated"
    )
}

/// Apply: enable or disable, then start, restart or stop. `starts`: the
/// plan found it stopped. Its restart handlers were dropped then, but
/// installing its package may have started it since, with the config as it
/// was: so it is restarted, not started.
pub(crate) fn apply(
    name: &str,
    enabled: Option<bool>,
    state: Option<ServiceState>,
    starts: bool,
) -> String {
    let ctl = |verb: &'static str| cmd("systemctl").lit(verb);
    let mut body = String::new();
    match enabled {
        Some(true) => body.push_str(&ctl("enable").lit("-q").lit("--").arg(name).step()),
        Some(false) => body.push_str(&ctl("disable").lit("-q").lit("--").arg(name).step()),
        None => {}
    }
    let verb = match state {
        Some(ServiceState::Running) if starts => Some("restart"),
        Some(ServiceState::Running) => Some("start"),
        Some(ServiceState::Stopped) => Some("stop"),
        None => None,
    };
    if let Some(verb) = verb {
        body.push_str(&ctl(verb).lit("--").arg(name).step());
    }
    body
}

/// Prune a unit that left the config: disabled and stopped, whatever it is.
pub(crate) fn prune(name: &str) -> String {
    format!(
        "{} 2>/dev/null; true\n",
        cmd("systemctl")
            .lit("disable")
            .lit("-q")
            .lit("--now")
            .lit("--")
            .arg(name)
    )
}

/// A unit file: systemd must be told when one changes or goes.
pub(crate) fn is_unit_path(path: &str) -> bool {
    ["/etc/systemd/", "/lib/systemd/", "/usr/lib/systemd/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// A unit that serves SSH.
pub(crate) fn is_risky(name: &str) -> bool {
    SSH_UNITS.contains(&name)
}

/// The unit name as systemctl takes it (`ssh` → `ssh.service`).
pub(crate) fn full_unit(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

fn names(items: &[Item]) -> impl Iterator<Item = &str> {
    items.iter().filter_map(|i| match i {
        Item::Service { name, .. } => Some(name.as_str()),
        _ => None,
    })
}

/// `services:` as a [`Kind`] (and the units of timers).
pub(crate) struct Service;

impl Kind for Service {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Service
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Unit]
    }

    fn read(&self, records: &[(Tag, &str)], cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        let mut units = Units::default();
        for (_, record) in records {
            units.record(record);
        }
        o.units = units.finish(cx.items);
        Ok(())
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Service {
            name,
            enabled,
            state,
        } = item
        else {
            return Ok(None);
        };
        Ok(plan(
            &cx.obs.units.get(name).cloned().unwrap_or_default(),
            *enabled,
            *state,
        ))
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Service {
            name,
            enabled,
            state,
        } = item
        else {
            return vec![];
        };
        step(c, apply(name, *enabled, *state, c.sets("state", "running")))
    }

    fn prune(&self, _e: &InventoryEntry, _obs: &Observed) -> Prune {
        Prune::Delete(None)
    }

    fn remove(&self, _root: &str, id: &str) -> Option<String> {
        Some(prune(id))
    }

    /// Units stop while their unit files still exist.
    fn prune_rank(&self) -> u8 {
        1
    }

    fn is_risky(&self, id: &str, _login_user: &str) -> bool {
        is_risky(id)
    }

    fn save(&self, c: &Change, s: &mut Saves) {
        s.units.push(full_unit(&c.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn service(name: &str) -> Item {
        Item::Service {
            name: name.into(),
            enabled: Some(true),
            state: Some(ServiceState::Running),
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let s = probe(&[service("nginx.service"), service("a b.service")]);
        assert_eq!(
            s,
            "systemctl show -p Id -p LoadState -p ActiveState -p UnitFileState -- nginx.service 'a b.service' \
             | sed 's/^/U\\t/'\n"
        );
        sh_n(&s);
        assert_eq!(probe(&[]), "");
        let body = apply(
            "x;reboot.service",
            Some(true),
            Some(ServiceState::Running),
            true,
        );
        assert_eq!(
            body,
            "systemctl enable -q -- 'x;reboot.service' || return\nsystemctl restart -- 'x;reboot.service' || return\n"
        );
        sh_n_step(&body);
        assert_eq!(
            apply("a.service", Some(false), Some(ServiceState::Stopped), false),
            "systemctl disable -q -- a.service || return\nsystemctl stop -- a.service || return\n"
        );
        assert_eq!(
            prune("old.service"),
            "systemctl disable -q --now -- old.service 2>/dev/null; true\n"
        );
        sh_n_step(&prune("o'ld"));
    }

    #[test]
    fn systemctl_show_reads_back_in_argument_order_under_the_configs_names() {
        let items = [service("sshd.service"), service("nginx.service")];
        let mut units = Units::default();
        for line in [
            "Id=ssh.service",
            "LoadState=loaded",
            "ActiveState=active",
            "UnitFileState=enabled",
            "",
            "Id=nginx.service",
            "LoadState=not-found",
            "ActiveState=inactive",
            "UnitFileState=",
        ] {
            units.record(line);
        }
        let read = units.finish(&items);
        assert_eq!(read["sshd.service"].active, "active");
        assert_eq!(read["nginx.service"].load, "not-found");
        let mut short = Units::default();
        short.record("Id=ssh.service");
        short.record("garbage without an equals sign");
        assert_eq!(short.finish(&items).len(), 1);
    }

    #[test]
    fn a_change_is_planned_only_when_needed_and_ssh_units_are_risky() {
        let up = UnitState {
            load: "loaded".into(),
            active: "active".into(),
            file_state: "enabled".into(),
        };
        assert_eq!(plan(&up, Some(true), Some(ServiceState::Running)), None);
        let need = plan(&up, Some(false), Some(ServiceState::Stopped)).unwrap();
        assert_eq!(need.attrs.len(), 2);
        let need = plan(&UnitState::default(), None, Some(ServiceState::Running)).unwrap();
        assert_eq!(
            (need.action, need.attrs[0].before.clone()),
            (Action::Create, None)
        );
        assert!(is_risky("ssh.socket") && !is_risky("nginx.service"));
        assert_eq!(full_unit("ssh"), "ssh.service");
        assert_eq!(full_unit("ssh.socket"), "ssh.socket");
    }
}
