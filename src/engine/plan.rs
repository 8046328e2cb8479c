//! The plan: what must change on a host, computed from desired items and what
//! the probe observed, each item by its kind's rule; then lockouts, handlers,
//! prunes (each kind says what becomes of its own) and the inventory after.
//! Pure: no I/O, same inputs, same plan.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::item::{Item, handler_command};
use super::kinds::{self, Need};
use super::observed::{Inventory, InventoryEntry, Observed};
pub(crate) use crate::change::{Action, ResourceKind};
use crate::model::desired::Host;

pub(crate) use super::kinds::Change;

#[derive(Debug, Clone, Serialize)]
pub struct HandlerRun {
    pub name: String,
    pub command: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub changes: Vec<Change>,
    pub handlers: Vec<HandlerRun>,
    pub daemon_reload: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why this host's plan cannot be applied as it stands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
    #[serde(skip)]
    pub inventory: Inventory,
    /// The inventory the host had before, as observed.
    #[serde(skip)]
    pub previous_inventory: Inventory,
    /// Handlers owed or notified that need not run (their unit is started
    /// fresh by this run, or the handler left the config): cleared on apply.
    #[serde(skip)]
    pub settled_handlers: Vec<String>,
    /// Files kinds persist their state in for the next boot (sysctl's),
    /// written when one of their items changes.
    #[serde(skip)]
    pub persist: Vec<super::item::FileItem>,
    /// A digest of what the probe saw ([`Observed::digest`]), when the
    /// options asked for it: what a saved plan was planned against.
    #[serde(skip)]
    pub observed: Option<String>,
    /// The host's facts as the probe found them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::model::Facts>,
}

impl HostPlan {
    /// A plan of just `changes` (no handlers, inventory or warnings).
    pub fn new(host: &str, changes: Vec<Change>) -> HostPlan {
        HostPlan {
            host: host.to_string(),
            changes,
            handlers: vec![],
            daemon_reload: false,
            warnings: vec![],
            blocked: vec![],
            inventory: Default::default(),
            previous_inventory: Default::default(),
            settled_handlers: vec![],
            persist: vec![],
            observed: None,
            facts: None,
        }
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || !self.handlers.is_empty()
    }
    pub fn count(&self, a: Action) -> usize {
        self.changes.iter().filter(|c| c.action == a).count()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Permit a plan that deletes more than the mass-delete threshold.
    pub allow_mass_delete: bool,
}

/// Deleting more than this many resources on one host needs permission.
pub(crate) const MASS_DELETE_COUNT: usize = 20;

fn change(item: &Item, need: Need) -> Change {
    let notify = item.notify().to_vec();
    Change {
        kind: item.kind(),
        id: item.id().to_string(),
        action: need.action,
        attrs: need.attrs,
        diff: need.diff,
        note: need.note,
        was: need.was,
        item: Some(item.clone()),
        prune: false,
        notify,
    }
}

/// Compute the plan for one host.
pub(crate) fn plan_host(
    host: &Host,
    items: &[Item],
    obs: &Observed,
    opts: PlanOptions,
) -> HostPlan {
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let mut blocked = Vec::new();
    for item in items {
        let mut cx = kinds::PlanCx {
            obs,
            earlier: &changes,
            warnings: &mut warnings,
        };
        match item.kind_impl().plan(item, &mut cx) {
            Ok(Some(need)) => changes.push(change(item, need)),
            Ok(None) => {}
            Err(why) => blocked.push(why),
        }
    }
    blocked.extend(lockouts(host, &changes, obs));
    let (handlers, settled_handlers) = handlers(host, &changes, obs);
    let daemon_reload = changes
        .iter()
        .any(|c| c.kind == ResourceKind::File && kinds::service::is_unit_path(&c.id));
    let prunes = prunes(items, obs, opts, &mut warnings, &mut blocked);
    changes.extend(prunes);
    let inventory = inventory_after(items, &changes, obs);
    let persist = persisted(items, &changes);
    HostPlan {
        previous_inventory: obs.inventory.clone(),
        settled_handlers,
        persist,
        host: host.name.clone(),
        changes,
        handlers,
        daemon_reload,
        warnings,
        blocked,
        inventory,
        observed: None,
        facts: obs.facts.clone(),
    }
}

/// The files kinds persist their state in, for each kind an item of which
/// changes (by its desired item, never by a prune).
fn persisted(items: &[Item], changes: &[Change]) -> Vec<super::item::FileItem> {
    let mut kinds: Vec<&'static dyn kinds::Kind> = Vec::new();
    for c in changes.iter().filter(|c| !c.prune) {
        if let Some(item) = &c.item {
            let k = item.kind_impl();
            if !kinds.iter().any(|seen| std::ptr::addr_eq(*seen, k)) {
                kinds.push(k);
            }
        }
    }
    kinds.iter().filter_map(|k| k.persist(items)).collect()
}

/// Changes no plan may make: removing the SSH server of a host reached over
/// SSH, or writing through a planted symlink.
fn lockouts(host: &Host, changes: &[Change], obs: &Observed) -> Vec<String> {
    let mut blocked = Vec::new();
    // Each kind says which of its changes no rollback could undo.
    if host.provider != crate::model::desired::ProviderKind::Local
        && let Some(why) = changes
            .iter()
            .find_map(|c| kinds::of(c.kind, &c.id).lockout(c))
    {
        blocked.push(why);
    }
    for (dir, owner) in &obs.unsafe_parents {
        blocked.push(format!(
            "{dir} is a symlink owned by {owner}, not root, above managed paths; \
             tidekeeper will not write through it (it may have been planted to redirect writes)"
        ));
    }
    blocked
}

/// The handlers to run — notified by what changes now, or owed by a failed
/// earlier run — and those owed that need not run any more.
fn handlers(host: &Host, changes: &[Change], obs: &Observed) -> (Vec<HandlerRun>, Vec<String>) {
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    for c in changes {
        for n in &c.notify {
            reasons
                .entry(n.clone())
                .or_insert_with(|| format!("notified by {} {}", c.kind, c.id));
        }
    }
    for p in &obs.pending_handlers {
        reasons
            .entry(p.clone())
            .or_insert_with(|| "owed by an earlier run that did not finish".into());
    }
    // A restart is pointless for a unit this same run starts from stopped.
    let started_now: BTreeSet<&str> = changes
        .iter()
        .filter(|c| {
            c.kind == ResourceKind::Service
                && c.attrs
                    .iter()
                    .any(|a| a.name == "state" && a.after.as_deref() == Some("running"))
        })
        .map(|c| c.id.as_str())
        .collect();
    let runs: Vec<HandlerRun> = host
        .handlers
        .iter()
        .filter(|h| match &h.action {
            crate::model::desired::HandlerAction::Restart(unit) => {
                !started_now.contains(super::item::unit_name(unit).as_str())
            }
            _ => true,
        })
        .filter_map(|h| {
            reasons.get(&h.name).map(|r| HandlerRun {
                name: h.name.clone(),
                command: handler_command(h),
                reason: r.clone(),
            })
        })
        .collect();
    let settled = reasons
        .keys()
        .filter(|n| !runs.iter().any(|h| h.name == **n))
        .cloned()
        .collect();
    (runs, settled)
}

/// What the inventory lists but the config no longer has, in the order it
/// goes: stacks and units while their files exist, directories after what
/// is in them.
/// Too many at once is blocked unless allowed.
fn prunes(
    items: &[Item],
    obs: &Observed,
    opts: PlanOptions,
    warnings: &mut Vec<String>,
    blocked: &mut Vec<String>,
) -> Vec<Change> {
    let desired: BTreeSet<(ResourceKind, String)> = items
        .iter()
        .map(|i| (i.kind(), i.id().to_string()))
        .collect();
    // A path the config still names (as another kind, or absent) is that
    // item's to change: pruning it as well would count it twice, or remove
    // what the item has just put there.
    let named: BTreeSet<&str> = items.iter().filter_map(Item::path).collect();
    let mut prunes = Vec::new();
    // An inventory written by an older version may name a resource twice.
    let mut seen = BTreeSet::new();
    for e in &obs.inventory.resources {
        if desired.contains(&(e.kind, e.id.clone()))
            || (e.kind.is_path() && named.contains(e.id.as_str()))
            || !seen.insert((e.kind, e.id.as_str()))
        {
            continue;
        }
        let mut c = Change::bare(e.kind, &e.id, Action::Delete);
        c.note = Some("no longer in the config".into());
        c.prune = true;
        match kinds::of(e.kind, &e.id).prune(e, obs) {
            kinds::Prune::Delete(was) => c.was = was,
            kinds::Prune::Warn(why) => {
                warnings.push(why);
                continue;
            }
            kinds::Prune::Keep => continue,
        }
        prunes.push(c);
    }
    let managed = obs.inventory.resources.len();
    if !prunes.is_empty()
        && !opts.allow_mass_delete
        && (prunes.len() > MASS_DELETE_COUNT || prunes.len() * 4 > managed)
    {
        blocked.push(format!(
            "the plan would delete {} of the {managed} resources tidekeeper manages on this host; \
             a broken role or a bad merge must not wipe a host, so this needs explicit permission \
             (--allow-mass-delete)",
            prunes.len()
        ));
    }
    // Units stop while their unit files still exist.
    prunes.sort_by_key(|c: &Change| {
        let rank = kinds::of(c.kind, &c.id).prune_rank();
        (rank, std::cmp::Reverse(c.id.matches('/').count()))
    });
    prunes
}

/// The inventory after a successful apply.
fn inventory_after(items: &[Item], changes: &[Change], obs: &Observed) -> Inventory {
    let old: BTreeMap<(ResourceKind, String), bool> = obs
        .inventory
        .resources
        .iter()
        .map(|e| ((e.kind, e.id.clone()), e.created))
        .collect();
    let mut inventory = Inventory {
        resources: Vec::new(),
        commands: obs.inventory.commands.clone(),
        stacks: obs.inventory.stacks.clone(),
    };
    for i in items {
        let kind = i.kind_impl();
        if !kind.inventoried() {
            continue;
        }
        let key = (i.kind(), i.id().to_string());
        let created_now = changes
            .iter()
            .any(|c| !c.prune && c.kind == key.0 && c.id == key.1 && c.action == Action::Create);
        inventory.resources.push(InventoryEntry {
            created: old.get(&key).copied().unwrap_or(false) || created_now,
            kind: key.0,
            id: key.1,
        });
        kind.record(i, &mut inventory);
    }
    inventory.commands.retain(|name, _| {
        items
            .iter()
            .any(|i| i.kind() == ResourceKind::Command && i.id() == name)
    });
    inventory
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::items;
    use crate::engine::observed::PathKind;
    use crate::engine::probe::{self, PathState};
    use crate::source::ConfigTree;

    fn host(role: &str) -> Host {
        let mut t = ConfigTree::new();
        // tidekeeper inside 10.0.0.0/8, which the roles' firewalls admit.
        t.insert_file(
            "tidekeeper.yaml",
            "fleet: t\ndefaults: {ssh: {from: [10.9.0.1/32]}}\n",
        );
        t.insert_file(
            "hosts/h.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [r]\n",
        );
        t.insert_file("roles/r.yaml", role);
        t.insert_file("secrets/token.age", "x");
        let fleet = crate::model::load(&t).unwrap_or_else(|d| panic!("{d}"));
        fleet.hosts[0].clone()
    }

    /// Every kind in one role: the whole probe script and the whole apply
    /// script (first run, all created; guard armed) parse as sh.
    #[test]
    fn the_whole_probe_and_apply_scripts_of_every_kind_parse_as_sh() {
        let h = host(
            r#"
files:
  - {path: /etc/app/app.conf, content: "a = 1\n", validate: "test -s %s", notify: [restart-app]}
directories:
  - {path: /srv/app, mode: "0750", owner: root}
symlinks:
  - {path: /srv/app/current, target: /srv/app/releases/1}
absent: [/etc/cron.d/legacy]
packages:
  present: [jq]
  latest: [curl]
  absent: [telnet]
services:
  - {name: ssh, enabled: true, state: running}
groups:
  - {name: ops, gid: 2000}
users:
  - {name: deploy, groups: [ops], authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aT8ngnVVzMX+O1a4t2mC6x3Ksq9k7G3dZ8x4m ops"]}
firewall:
  rules:
    - {port: "22", from: 10.0.0.0/8, comment: ssh}
sysctl:
  net.ipv4.ip_forward: "1"
settings:
  timezone: Europe/Berlin
commands:
  - {name: migrate, run: "echo 'it''s $(date)'", unless: "test -f /x"}
timers:
  - {name: dump, cron: "30 3 1,15 * sun", run: "echo \"%s $HOME\""}
cron:
  - {name: rotate, schedule: "0 4 * * *", run: "date +%F"}
mounts:
  - {path: /srv/scratch, device: tmpfs, fstype: tmpfs, options: size=8m}
apt_repositories:
  - {name: local, uris: ["file:/srv/repo"], suites: ["./"], trusted: true}
handlers:
  - {name: restart-app, restart: app}
"#,
        );
        let it = items(&h);
        let declared: BTreeSet<ResourceKind> = h.resources.iter().map(|r| r.kind()).collect();
        assert_eq!(declared.len(), 16, "every kind but stacks: {declared:?}");
        let kinds: BTreeSet<ResourceKind> = it.iter().map(Item::kind).collect();
        assert_eq!(kinds.len(), 13, "timers, cron and APT are files: {kinds:?}");
        for (changed_only, settled) in [(false, false), (true, false), (true, true)] {
            let check = probe::ContentCheck {
                changed_only,
                record: true,
                settled,
            };
            crate::engine::kinds::sh_n(&probe::script(&it, "", check));
        }
        let obs = probe::parse("E\tend\n", "", &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        assert!(p.blocked.is_empty(), "{:?}", p.blocked);
        let guard = crate::engine::apply::GuardSettings {
            login_user: "root".into(),
            deadline_secs: 60,
        };
        let script = crate::engine::apply::script(&p, "", "run-1", Some(&guard));
        assert!(
            script
                .steps
                .iter()
                .any(|s| s.what == "arm the lockout guard")
        );
        crate::engine::kinds::sh_n(&script.text);
    }

    fn file_state(size: u64) -> PathState {
        PathState {
            kind: PathKind::File,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            size,
            link_target: None,
        }
    }

    #[test]
    fn removing_the_ssh_server_of_a_host_reached_over_ssh_is_blocked() {
        let h = host("packages:\n  absent: [openssh-server]\n");
        let it = items(&h);
        let mut obs = Observed::default();
        obs.packages.insert(
            "openssh-server".into(),
            crate::engine::probe::PackageState {
                installed: Some("1:9.2p1-2".into()),
                candidate: None,
            },
        );
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        assert!(
            p.blocked
                .iter()
                .any(|b| b.contains("removing openssh-server would cut tidekeeper")),
            "{:?}",
            p.blocked
        );
    }

    #[test]
    fn sensitive_content_never_appears_in_a_plan() {
        let h =
            host("files:\n  - {path: /etc/app/token, content: \"hunter2\\n\", sensitive: true}\n");
        let it = items(&h);
        let mut obs = Observed::default();
        obs.paths.insert("/etc/app/token".into(), file_state(8));
        obs.content_differs.insert("/etc/app/token".into());
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        assert_eq!(p.changes.len(), 1);
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(
            p.changes[0].note.as_deref(),
            Some("(sensitive content changed)")
        );
        assert!(p.changes[0].diff.is_none());
    }

    #[test]
    fn a_matching_host_needs_nothing() {
        let h = host("files:\n  - {path: /etc/motd, content: \"hi\\n\", mode: \"0644\"}\n");
        let it = items(&h);
        let mut obs = Observed::default();
        obs.paths.insert("/etc/motd".into(), file_state(3));
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        assert!(!p.has_changes(), "{:?}", p.changes);
        // Only the mode differs: an update of that attribute, no content.
        obs.paths.get_mut("/etc/motd").unwrap().mode = 0o600;
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        assert_eq!(p.changes[0].attrs[0].name, "mode");
        assert!(p.changes[0].diff.is_none());
    }

    #[test]
    fn mass_delete_is_blocked_unless_allowed() {
        let role: String = (0..4)
            .map(|i| format!("  - {{path: /etc/keep{i}, content: \"k\\n\"}}\n"))
            .collect();
        let h = host(&format!("files:\n{role}"));
        let it = items(&h);
        let observed = |gone: usize| {
            let mut obs = Observed::default();
            let paths = (0..4)
                .map(|i| format!("/etc/keep{i}"))
                .chain((0..gone).map(|i| format!("/etc/gone{i}")));
            for path in paths {
                obs.paths.insert(path.clone(), file_state(2));
                obs.inventory.resources.push(InventoryEntry {
                    kind: ResourceKind::File,
                    id: path,
                    created: false,
                });
            }
            obs
        };
        let p = plan_host(&h, &it, &observed(4), PlanOptions::default());
        assert_eq!(p.count(Action::Delete), 4);
        assert_eq!(p.blocked.len(), 1, "4 of 8 is more than a quarter");
        let allowed = PlanOptions {
            allow_mass_delete: true,
        };
        assert!(plan_host(&h, &it, &observed(4), allowed).blocked.is_empty());
        let p = plan_host(&h, &it, &observed(1), PlanOptions::default());
        assert_eq!(p.count(Action::Delete), 1);
        assert!(p.blocked.is_empty(), "1 of 5 is not: {:?}", p.blocked);
        let p = plan_host(&h, &it, &observed(21), allowed);
        assert_eq!(p.count(Action::Delete), 21);
    }

    /// Regression (model-based test): a prune of a file tidekeeper adopted
    /// (created: false) was recorded a second time, as created, in the
    /// inventory written before the apply; a kill after that step left a
    /// host whose next plan deleted the file twice.
    #[test]
    fn a_prune_is_recorded_once_and_an_inventory_naming_it_twice_is_pruned_once() {
        let h = host("files:\n  - {path: /etc/motd, content: \"hi\\n\", mode: \"0644\"}\n");
        let it = items(&h);
        let mut obs = Observed::default();
        obs.paths.insert("/etc/motd".into(), file_state(3));
        obs.paths.insert("/etc/old".into(), file_state(2));
        let adopted = InventoryEntry {
            kind: ResourceKind::File,
            id: "/etc/old".into(),
            created: false,
        };
        for _ in 0..2 {
            obs.inventory.resources.push(adopted.clone());
        }
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let deletes: Vec<&str> = p.changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(deletes, ["/etc/old"], "pruned once");
        obs.inventory.resources.pop();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, "", "run", None);
        let first = &script.steps[0];
        assert_eq!(first.what, "record the inventory");
        let json_start = script.text.find("\"resources\"").expect("inventory json");
        let json_end = json_start + script.text[json_start..].find(']').unwrap();
        let listed = script.text[json_start..json_end]
            .matches("/etc/old")
            .count();
        assert_eq!(listed, 1, "{}", &script.text[json_start..json_end]);
    }

    #[test]
    fn new_file_content_is_staged_and_synced_once_before_any_file_is_renamed() {
        let h = host(
            "directories:\n  - {path: /srv/app}\nfiles:\n  - {path: /etc/a.conf, content: \"a\\n\"}\n  - {path: /etc/b.conf, content: \"b\\n\"}\n  - {path: /srv/app/c, content: \"c\\n\"}\n",
        );
        let it = items(&h);
        let obs = probe::parse("E\tend\n", "", &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, "", "run", None);
        let text = &script.text;
        crate::engine::kinds::sh_n(text);
        let whats: Vec<&str> = script.steps.iter().map(|s| s.what.as_str()).collect();
        let stage = whats
            .iter()
            .position(|w| *w == "write 3 new file content(s), one sync")
            .expect("one staging step");
        let moved = whats
            .iter()
            .position(|w| *w == "3 new files: /etc/a.conf … /srv/app/c")
            .expect("one step renames the new files");
        assert!(stage < moved, "{whats:?}");
        assert!(!whats.iter().any(|w| w.starts_with("file ")), "{whats:?}");
        let dir = whats.iter().position(|w| w.starts_with("directory "));
        assert!(dir.unwrap() < stage, "{whats:?}");
        assert_eq!(text.matches("sync || return").count(), 1, "{text}");
        assert!(!text.contains("sync \"$t\""), "no fsync per file: {text}");
        // Per directory, not per file: the leftovers' sweep, the staging
        // directory, the rename.
        assert_eq!(text.matches("for x in \"$d\"/.tidekeeper.*").count(), 2);
        assert_eq!(text.matches("mktemp -d").count(), 2, "{text}");
        assert_eq!(text.matches("mv -f -- ").count(), 2, "{text}");
        assert!(!text.contains("base64"), "text travels as text: {text}");
        assert!(
            text.contains("rmdir -- \"$tk_d0\" \"$tk_d1\" || return\n"),
            "{text}"
        );
    }

    /// An empty scratch root named after `what`, with a quote in its name.
    fn scratch(what: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tk {what}'{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Apply `p` on a scratch root; it must run to the end.
    fn apply_on(root: &str, p: &HostPlan) {
        let script = crate::engine::apply::script(p, root, "run", None);
        let (out, err) = run_sh(&script.text);
        assert!(out.ends_with("@@done\n"), "{out}{err}");
    }

    /// What `h` wants, applied to an empty scratch root.
    fn apply_fresh(h: &Host, it: &[Item], root: &str) {
        let obs = probe::parse("E\tend\n", root, it).unwrap();
        apply_on(root, &plan_host(h, it, &obs, PlanOptions::default()));
    }

    /// Run a generated script with `sh`: its stdout and stderr.
    fn run_sh(script: &str) -> (String, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), text(&out.stderr))
    }

    /// What a run left staged in `dir`.
    fn staged_in(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tidekeeper"))
            .collect()
    }

    /// The apply script of new files, run on a scratch root: every content,
    /// mode and owner as configured (setuid kept though the owner changed),
    /// a validated file still validated on its own, nothing left staged.
    #[test]
    fn new_files_land_with_their_content_mode_and_owner_and_nothing_left_staged() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give files away");
            return;
        }
        let h = host(
            r##"
files:
  - {path: /etc/a.conf, content: "a é ✓\n"}
  - {path: /etc/b.conf, content: "it's $HOME `x`\n", mode: "0600", owner: nobody, group: nogroup}
  - {path: /srv/app/tool, content: "#!/bin/sh\n", mode: "4755", owner: nobody}
  - {path: /srv/app/bin.dat, content: "a\0b"}
  - {path: /srv/app/empty, content: ""}
  - {path: "/srv/app/it's $(touch pwned) `x`", content: "q\n"}
  - {path: /etc/v.conf, content: "ok\n", validate: "grep -q ok %s"}
"##,
        );
        let dir = scratch("staged");
        let root = dir.to_str().unwrap();
        let it = items(&h);
        let obs = probe::parse("E\tend\n", root, &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, root, "run", None);
        let whats: Vec<&str> = script.steps.iter().map(|s| s.what.as_str()).collect();
        assert!(
            whats.contains(&"6 new files: /etc/a.conf … /srv/app/it's $(touch pwned) `x`"),
            "{whats:?}"
        );
        assert!(whats.contains(&"file /etc/v.conf"), "{whats:?}");
        let (stdout, stderr) = run_sh(&script.text);
        assert!(stdout.ends_with("@@done\n"), "{stdout}{stderr}");
        let meta = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();
        let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
        assert_eq!(read("etc/a.conf"), "a é ✓\n".as_bytes());
        assert_eq!(read("etc/b.conf"), b"it's $HOME `x`\n");
        assert_eq!(read("srv/app/bin.dat"), b"a\0b");
        assert_eq!(read("srv/app/empty"), b"");
        // A name full of shell syntax is a name, and nothing ran.
        assert_eq!(read("srv/app/it's $(touch pwned) `x`"), b"q\n");
        assert!(!std::path::Path::new("pwned").exists() && !dir.join("pwned").exists());
        assert_eq!(read("etc/v.conf"), b"ok\n");
        let mode = |p: &str| meta(p).permissions().mode() & 0o7777;
        assert_eq!(mode("etc/a.conf"), 0o644);
        assert_eq!(mode("etc/b.conf"), 0o600);
        assert_eq!(mode("srv/app/tool"), 0o4755, "setuid kept after chown");
        assert_eq!(mode("etc/v.conf"), 0o644);
        let nobody = 65534;
        assert_eq!(
            (meta("etc/b.conf").uid(), meta("etc/b.conf").gid()),
            (nobody, nobody)
        );
        assert_eq!(
            (meta("srv/app/tool").uid(), meta("srv/app/tool").gid()),
            (nobody, 0)
        );
        assert_eq!(meta("etc/a.conf").uid(), 0);
        for d in ["etc", "srv/app"] {
            assert_eq!(
                staged_in(&dir.join(d)),
                Vec::<std::ffi::OsString>::new(),
                "{d}"
            );
        }

        // A validator that says no ends the run and leaves nothing staged.
        let h = host(
            "files:\n  - {path: /etc/x.conf, content: \"x\\n\"}\n  - {path: /etc/bad.conf, content: \"b\\n\", validate: \"grep -q never %s\"}\n",
        );
        let it = items(&h);
        let obs = probe::parse("E\tend\n", root, &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, root, "run2", None);
        let (stdout, _) = run_sh(&script.text);
        assert!(stdout.contains("@@fail"), "{stdout}");
        assert!(
            stdout.contains("validation failed (grep -q never %s)"),
            "{stdout}"
        );
        assert!(!dir.join("etc/bad.conf").exists());
        assert_eq!(
            staged_in(&dir.join("etc")),
            Vec::<std::ffi::OsString>::new()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// After an apply, a probe of the same config stats each path once: the
    /// digest beside the host's list of managed paths says it is this
    /// config's. A config that dropped a path, or a host without the
    /// digest, has the list statted as well, so what left is seen.
    #[test]
    fn the_list_of_managed_paths_is_statted_only_when_it_is_not_this_configs() {
        let role = "directories:\n  - {path: /srv/app}\nfiles:\n  - {path: /srv/app/a, content: \"a\\n\"}\n  - {path: /srv/app/b, content: \"b\\n\"}\n";
        let dir = scratch("managed");
        let root = dir.to_str().unwrap();
        let h = host(role);
        let it = items(&h);
        apply_fresh(&h, &it, root);
        let stats_of = |items: &[Item], path: &str| {
            let (out, _) = run_sh(&crate::engine::kinds::path::probe(items, root, false));
            out.lines()
                .filter(|l| l.starts_with("S\t") && l.ends_with(&format!("{root}{path}")))
                .count()
        };
        assert_eq!(stats_of(&it, "/srv/app/b"), 1, "statted once");
        // b left the config: the list is statted too, and b is seen.
        let fewer = items(&host(
            &role.replace("  - {path: /srv/app/b, content: \"b\\n\"}\n", ""),
        ));
        assert_eq!(stats_of(&fewer, "/srv/app/b"), 1, "seen to prune");
        assert_eq!(stats_of(&fewer, "/srv/app/a"), 2);
        // A host whose list has no digest beside it (an older tidekeeper).
        std::fs::remove_file(dir.join("var/lib/tidekeeper/managed-paths.sha256")).unwrap();
        assert_eq!(stats_of(&it, "/srv/app/b"), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Between full checks, once a plan found every file as wanted and the
    /// stat cache it recorded was vouched for, a probe sends no file's path:
    /// it stats what the cache lists and reports only what moved. A config
    /// or a cache changed since is not used; the caller probes in full.
    #[test]
    fn between_full_checks_the_record_of_settled_files_stands_in_for_every_file() {
        use crate::engine::kinds::file::{SETTLED, STAT_CACHE, settle};
        use crate::engine::probe::{ContentCheck, Settled};
        let role = r##"
directories:
  - {path: /srv/app}
files:
  - {path: /srv/app/a.conf, content: "a\n", mode: "0600"}
  - {path: /srv/app/b.conf, content: "b\n"}
  - {path: /srv/app/key, content: "secret\n", sensitive: true}
  - {path: "/srv/app/it's $(touch pwned) `x`", content: "q\n"}
"##;
        let dir = scratch("settled");
        let root = dir.to_str().unwrap();
        let h = host(role);
        let it = items(&h);
        apply_fresh(&h, &it, root);
        let check = |items: &[Item], content: ContentCheck| {
            let script = probe::script(items, root, content);
            let (out, err) = run_sh(&script);
            let obs = probe::parse(&out, root, items).unwrap_or_else(|e| panic!("{e}: {err}"));
            (script, obs, out)
        };
        let full = ContentCheck {
            changed_only: false,
            record: true,
            settled: false,
        };
        let quick = ContentCheck {
            changed_only: true,
            record: true,
            settled: true,
        };
        let state = dir.join("var/lib/tidekeeper");
        assert_eq!(SETTLED, format!("{STAT_CACHE}.settled"));
        // What is vouched for: the files, in any order, with their modes.
        let digest = crate::engine::kinds::file::settled_digest;
        let reversed: Vec<Item> = it.iter().rev().cloned().collect();
        assert_eq!(digest(&reversed), digest(&it));
        let mode = items(&host(&role.replace("\"0600\"", "\"0640\"")));
        assert_ne!(digest(&mode), digest(&it));

        // Nothing vouched for yet.
        assert_eq!(check(&it, quick).1.settled, Settled::Miss);
        // A full check records the stat cache; its plan is clean: vouch.
        let (_, obs, _) = check(&it, full);
        let recorded = obs.recorded.clone().expect("the cache was recorded");
        assert!(!plan_host(&h, &it, &obs, PlanOptions::default()).has_changes());
        let (out, err) = run_sh(&settle(&it, root, &recorded));
        assert!(state.join(SETTLED).exists(), "{out}{err}");

        // No file's path is sent, and nothing moved.
        let (script, obs, _) = check(&it, quick);
        assert!(
            !script.contains("a.conf") && !script.contains("pwned"),
            "{script}"
        );
        assert_eq!(obs.settled, Settled::Hit { moved: 0 });
        assert!(!plan_host(&h, &it, &obs, PlanOptions::default()).has_changes());

        // Hand edits: content of the same size, a mode, the secret, and a
        // file removed. Each is reported, and only these.
        let app = dir.join("srv/app");
        std::fs::write(app.join("b.conf"), "B\n").unwrap();
        std::fs::set_permissions(
            app.join("a.conf"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(app.join("key"), "SECRET\n").unwrap();
        std::fs::remove_file(app.join("it's $(touch pwned) `x`")).unwrap();
        let (_, obs, out) = check(&it, quick);
        assert_eq!(obs.settled, Settled::Hit { moved: 4 });
        assert!(
            !out.contains("U0VDUkVU"),
            "a secret's content never comes back: {out}"
        );
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let summary: Vec<String> = p
            .changes
            .iter()
            .map(|c| format!("{:?} {} {:?} {:?}", c.action, c.id, c.attrs, c.note))
            .collect();
        assert_eq!(p.changes.len(), 4, "{summary:#?}");
        let change = |id: &str| p.changes.iter().find(|c| c.id.ends_with(id)).unwrap();
        assert!(
            change("/b.conf")
                .diff
                .as_deref()
                .unwrap()
                .contains("-B\n+b\n")
        );
        assert_eq!(change("/a.conf").attrs.len(), 1, "{summary:#?}");
        assert_eq!(
            change("/key").note.as_deref(),
            Some("(sensitive content changed)")
        );
        assert_eq!(change("`x`").action, Action::Create);
        assert!(!dir.join("pwned").exists() && !app.join("pwned").exists());
        // Put right: what moved is hashed again until the next full check.
        apply_on(root, &p);
        let (_, obs, _) = check(&it, quick);
        assert_eq!(obs.settled, Settled::Hit { moved: 4 });
        assert!(!plan_host(&h, &it, &obs, PlanOptions::default()).has_changes());

        // Another config (b's content changed) is not vouched for.
        let other = items(&host(&role.replace("\"b\\n\"", "\"b2\\n\"")));
        assert_eq!(check(&other, quick).1.settled, Settled::Miss);
        // Nor is a cache changed since: a line dropped by hand.
        let cache = state.join(STAT_CACHE);
        let text = std::fs::read_to_string(&cache).unwrap();
        let first = text.lines().next().unwrap();
        std::fs::write(&cache, text.replacen(&format!("{first}\n"), "", 1)).unwrap();
        assert_eq!(check(&it, quick).1.settled, Settled::Miss);
        // A cache that changed after it was recorded is not vouched for.
        let before = std::fs::read_to_string(state.join(SETTLED)).unwrap();
        let (_, obs, _) = check(&it, full);
        let recorded = obs.recorded.unwrap();
        std::fs::write(&cache, "").unwrap();
        run_sh(&settle(&it, root, &recorded));
        assert_eq!(
            std::fs::read_to_string(state.join(SETTLED)).unwrap(),
            before
        );
        // What a host printed as the cache's hash is one quoted word.
        let (out, err) = run_sh(&settle(&it, root, "$(touch pwned)'; touch pwned #"));
        assert!(!dir.join("pwned").exists() && !std::path::Path::new("pwned").exists());
        assert_eq!(
            std::fs::read_to_string(state.join(SETTLED)).unwrap(),
            before,
            "{out}{err}"
        );
        // A record listing fewer files than the config has is not used.
        let obs = probe::parse("V\thit\t3\nE\tend\n", root, &it).unwrap();
        assert_eq!(obs.settled, Settled::Miss);
        assert!(obs.paths.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a drift check between full checks does, through the engine on
    /// a local root: the first probes in full and vouches for the stat
    /// cache; files that moved but are as wanted are recorded again, so the
    /// next check hears of nothing; a file drifted is found, and nothing is
    /// vouched for until it is put right.
    #[test]
    fn a_drift_check_vouches_for_what_it_saw_as_wanted_and_records_moved_files_again() {
        use crate::engine::kinds::file::SETTLED;
        use crate::engine::probe::{ContentCheck, Settled};
        let role = "files:\n  - {path: /srv/app/a.conf, content: \"a\\n\", mode: \"0600\"}\n  - {path: /srv/app/b.conf, content: \"b\\n\"}\n";
        let dir = scratch("drift");
        let root = dir.to_str().unwrap();
        let h = host(role);
        let it = items(&h);
        apply_fresh(&h, &it, root);
        let conn = crate::transport::Connection::Local(crate::transport::Local::new(root));
        let opts = crate::engine::Options {
            changed_files_only: true,
            record_file_stats: true,
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let drift_check = || {
            rt.block_on(crate::engine::plan_host(&conn, &h, &opts))
                .unwrap()
        };
        // What the next check will find, without changing anything.
        let quick = || {
            let check = ContentCheck {
                changed_only: true,
                record: false,
                settled: true,
            };
            let (out, _) = run_sh(&probe::script(&it, root, check));
            probe::parse(&out, root, &it).unwrap().settled
        };
        let settled = dir.join("var/lib/tidekeeper").join(SETTLED);

        assert!(!drift_check().has_changes());
        assert!(settled.exists(), "vouched for");
        assert_eq!(quick(), Settled::Hit { moved: 0 });
        // Touched (moved, still as wanted): recorded again by the check.
        let b = dir.join("srv/app/b.conf");
        std::fs::write(&b, "b\n").unwrap();
        assert_eq!(quick(), Settled::Hit { moved: 1 });
        assert!(!drift_check().has_changes());
        assert_eq!(quick(), Settled::Hit { moved: 0 });
        // Drifted: found by every check, as a file that moved; nothing is
        // recorded or vouched for while it stays so.
        std::fs::write(&b, "drift\n").unwrap();
        let before = std::fs::read_to_string(&settled).unwrap();
        for _ in 0..2 {
            let p = drift_check();
            assert_eq!(p.changes.len(), 1);
            assert!(
                p.changes[0]
                    .diff
                    .as_deref()
                    .unwrap()
                    .contains("-drift\n+b\n")
            );
            assert_eq!(quick(), Settled::Hit { moved: 1 });
        }
        assert_eq!(std::fs::read_to_string(&settled).unwrap(), before);
        let p = drift_check();
        // Put right: the next check vouches again.
        apply_on(root, &p);
        assert!(!drift_check().has_changes());
        assert_eq!(quick(), Settled::Hit { moved: 0 });

        // The daemon's way: the vouch waits for the host's next check and
        // runs first in it, with no round trip of its own.
        std::fs::remove_file(&settled).unwrap();
        let opts = crate::engine::Options {
            vouches: Some(Default::default()),
            ..opts.clone()
        };
        let drift_check = || {
            rt.block_on(crate::engine::plan_host(&conn, &h, &opts))
                .unwrap()
        };
        assert!(!drift_check().has_changes());
        assert!(!settled.exists(), "owed, not sent");
        assert_eq!(quick(), Settled::Miss);
        assert!(!drift_check().has_changes());
        assert!(settled.exists(), "sent with the next check");
        assert_eq!(quick(), Settled::Hit { moved: 0 });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ufw_allow_rules_come_before_the_default_deny() {
        let h = host("firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\", comment: ssh}\n");
        let it = items(&h);
        let obs = probe::parse("E\tend\n", "", &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, "", "run", None).text;
        let allow = script
            .find("ufw allow 22/tcp comment ssh >")
            .expect("allow rule");
        let deny = script
            .find("ufw default deny incoming")
            .expect("default deny");
        let enable = script.find("ufw --force enable").expect("enable");
        assert!(allow < deny && deny < enable, "{script}");
    }

    #[test]
    fn probe_output_without_its_end_marker_is_refused() {
        let h = host("files:\n  - {path: /etc/motd, content: \"hi\\n\"}\n");
        let it = items(&h);
        assert!(matches!(
            probe::parse("S\tregular file\t644\troot\troot\t3\t/etc/motd\n", "", &it),
            Err(probe::ProbeError::Truncated)
        ));
    }
}
