//! The plan: what must change on a host, computed from desired items and what
//! the probe observed. Pure: no I/O, same inputs, same plan.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::item::{FileItem, Item, handler_command, policy_word, ufw_rule_args};
use super::probe::{Inventory, InventoryEntry, Observed, PathKind};
pub use crate::change::{Action, Attr, ResourceKind};
use crate::digest::sha256_hex;
use crate::model::desired::{Host, PackageState, ServiceState};

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: ResourceKind,
    pub id: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<Attr>,
    /// Unified diff of a text file's content (never for sensitive files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the host has there now, for deletions and replacements.
    #[serde(skip)]
    pub was: Option<PathKind>,
    #[serde(skip)]
    pub item: Option<Item>,
    /// Removal of something no longer in the config (from the host's inventory).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prune: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

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
    /// Content of the persisted sysctl file, when a sysctl setting changes.
    #[serde(skip)]
    pub sysctl_conf: Option<String>,
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
            sysctl_conf: None,
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

/// The packages that provide the SSH server.
fn is_ssh_server(package: &str) -> bool {
    let name = package.split([':', '=']).next().unwrap_or(package);
    matches!(
        name,
        "openssh-server" | "openssh-server-gssapi" | "dropbear" | "dropbear-bin"
    )
}

/// Why a compose project needs `up`, and what that does to its services.
fn plan_stack(
    name: &str,
    dir: &str,
    hash: &str,
    compose: Option<&str>,
    services: &BTreeMap<String, super::compose::Service>,
    changes: &[Change],
    obs: &Observed,
) -> Option<(String, Vec<Attr>)> {
    let containers = obs.stacks.get(name).cloned().unwrap_or_default();
    let files_change = changes
        .iter()
        .any(|c| c.kind == ResourceKind::File && c.id.starts_with(&format!("{dir}/")));
    let mut attrs = Vec::new();
    let reason = if containers.is_empty() {
        if obs.inventory.stacks.contains_key(name) {
            "no containers running".to_string()
        } else {
            "first deploy".to_string()
        }
    } else if files_change || obs.inventory.stacks.get(name) != Some(&hash.to_string()) {
        // What `up` does to the services, from the compose file before and after.
        let old = compose
            .and_then(|f| obs.contents.get(&format!("{dir}/{f}")))
            .and_then(|b| super::compose::services(b));
        match old {
            Some(old) => {
                let d = super::compose::changes(&old, services);
                for (what, list) in [
                    ("recreates", &d.recreate),
                    ("creates", &d.create),
                    ("removes", &d.remove),
                ] {
                    if !list.is_empty() {
                        attrs.push(attr(
                            &format!("{what} service"),
                            None,
                            Some(list.join(", ")),
                        ));
                    }
                }
                if d == Default::default() {
                    attrs.push(attr(
                        "services unchanged; other files of the stack changed",
                        None,
                        None,
                    ));
                }
            }
            None if compose
                .is_some_and(|f| changes.iter().any(|c| c.id == format!("{dir}/{f}"))) =>
            {
                attrs.push(attr("the services it changes cannot be shown (the compose file is sensitive or large)", None, None));
            }
            None => {}
        }
        "its files changed".to_string()
    } else {
        let mut drift = Vec::new();
        for c in &containers {
            if c.state != "running" {
                drift.push(format!("{} ({})", c.service, c.state));
            }
        }
        for svc in services.keys() {
            if !containers.iter().any(|c| c.service == *svc) {
                drift.push(format!("{svc} (no container)"));
            }
        }
        let mut images = Vec::new();
        for c in &containers {
            if let Some(want) = services.get(&c.service).and_then(|s| s.image.as_ref())
                && !c.image.is_empty()
                && c.image != *want
            {
                images.push(format!(
                    "{} runs {}, the config says {want}",
                    c.service, c.image
                ));
            }
        }
        if !drift.is_empty() {
            format!("not running: {}", drift.join(", "))
        } else if !images.is_empty() {
            format!("image changed: {}", images.join("; "))
        } else {
            return None;
        }
    };
    for c in &containers {
        attrs.push(attr(
            &format!("service {}", c.service),
            Some(c.state.clone()),
            Some("running".into()),
        ));
    }
    Some((reason, attrs))
}

/// Deleting more than this many resources on one host needs permission.
pub const MASS_DELETE_COUNT: usize = 20;

fn attr(name: &str, before: Option<String>, after: Option<String>) -> Attr {
    Attr {
        name: name.to_string(),
        before,
        after,
    }
}

fn octal(m: u32) -> String {
    format!("{m:04o}")
}

fn change(item: &Item, action: Action) -> Change {
    Change {
        kind: item.kind(),
        id: item.id().to_string(),
        action,
        attrs: vec![],
        diff: None,
        note: None,
        was: None,
        item: Some(item.clone()),
        prune: false,
        notify: vec![],
    }
}

pub fn text_diff(path: &str, before: &[u8], after: &[u8]) -> Option<String> {
    let (Ok(a), Ok(b)) = (std::str::from_utf8(before), std::str::from_utf8(after)) else {
        return None;
    };
    let diff = similar::TextDiff::from_lines(a, b);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(path, path)
            .to_string(),
    )
}

fn plan_file(
    f: &FileItem,
    item: &Item,
    obs: &Observed,
    blocked: &mut Vec<String>,
) -> Option<Change> {
    let ps = obs.paths.get(&f.path);
    let mut c = match ps {
        None => {
            let mut c = change(item, Action::Create);
            if f.content.sensitive {
                c.note = Some("(sensitive content)".into());
            } else {
                c.diff = text_diff(&f.path, b"", &f.content.bytes);
                if c.diff.is_none() {
                    c.note = Some(format!("(binary, {} bytes)", f.content.bytes.len()));
                }
            }
            c
        }
        Some(ps) if ps.kind == PathKind::Dir => {
            blocked.push(format!(
                "{} is a directory on the host; tidekeeper will not replace a directory with a file \
                 (remove it by hand or declare it `absent` first)",
                f.path
            ));
            return None;
        }
        Some(ps) if ps.kind == PathKind::Link => {
            blocked.push(format!(
                "{} is a symlink on the host (owned by {}); tidekeeper never writes through or replaces \
                 a symlink it did not create, since one may have been planted to redirect the write \
                 (remove it by hand, or declare the path `absent` first)",
                f.path, ps.owner
            ));
            return None;
        }
        Some(ps) if ps.kind != PathKind::File => {
            let mut c = change(item, Action::Replace);
            c.was = Some(ps.kind);
            c.note = Some(format!("replaces a {}", ps.kind.word()));
            c
        }
        Some(ps) => {
            let mut c = change(item, Action::Update);
            if obs.content_differs.contains(&f.path) {
                if f.content.sensitive {
                    c.note = Some("(sensitive content changed)".into());
                } else if let Some(before) = obs.contents.get(&f.path) {
                    c.diff = text_diff(&f.path, before, &f.content.bytes);
                    if c.diff.is_none() {
                        c.note = Some(format!(
                            "(binary content changed: {} → {} bytes)",
                            before.len(),
                            f.content.bytes.len()
                        ));
                    }
                } else {
                    c.note = Some(format!(
                        "(content changed: {} → {} bytes; too large or unreadable to diff)",
                        ps.size,
                        f.content.bytes.len()
                    ));
                }
            }
            if let Some(m) = f.mode
                && m != ps.mode
            {
                c.attrs
                    .push(attr("mode", Some(octal(ps.mode)), Some(octal(m))));
            }
            if let Some(o) = &f.owner
                && *o != ps.owner
            {
                c.attrs
                    .push(attr("owner", Some(ps.owner.clone()), Some(o.clone())));
            }
            if let Some(g) = &f.group
                && *g != ps.group
            {
                c.attrs
                    .push(attr("group", Some(ps.group.clone()), Some(g.clone())));
            }
            if c.diff.is_none() && c.note.is_none() && c.attrs.is_empty() {
                return None;
            }
            c
        }
    };
    c.notify = f.notify.clone();
    Some(c)
}

fn unit_enabled(file_state: &str) -> bool {
    matches!(
        file_state,
        "enabled" | "enabled-runtime" | "static" | "alias" | "indirect" | "generated"
    )
}

pub fn command_hash(c: &crate::model::desired::CommandResource) -> String {
    sha256_hex(c.run.as_bytes())[..16].to_string()
}

/// Compute the plan for one host.
pub fn plan_host(host: &Host, items: &[Item], obs: &Observed, opts: PlanOptions) -> HostPlan {
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let mut blocked = Vec::new();
    for item in items {
        let ch = match item {
            Item::File(f) => plan_file(f, item, obs, &mut blocked),
            Item::Dir {
                path,
                mode,
                owner,
                group,
            } => match obs.paths.get(path) {
                None => Some(change(item, Action::Create)),
                Some(ps) if ps.kind != PathKind::Dir => {
                    let mut c = change(item, Action::Replace);
                    c.was = Some(ps.kind);
                    c.note = Some(format!("replaces a {}", ps.kind.word()));
                    Some(c)
                }
                Some(ps) => {
                    let mut c = change(item, Action::Update);
                    if let Some(m) = mode
                        && *m != ps.mode
                    {
                        c.attrs
                            .push(attr("mode", Some(octal(ps.mode)), Some(octal(*m))));
                    }
                    if let Some(o) = owner
                        && *o != ps.owner
                    {
                        c.attrs
                            .push(attr("owner", Some(ps.owner.clone()), Some(o.clone())));
                    }
                    if let Some(g) = group
                        && *g != ps.group
                    {
                        c.attrs
                            .push(attr("group", Some(ps.group.clone()), Some(g.clone())));
                    }
                    (!c.attrs.is_empty()).then_some(c)
                }
            },
            Item::Link { path, target } => match obs.paths.get(path) {
                None => {
                    let mut c = change(item, Action::Create);
                    c.attrs.push(attr("target", None, Some(target.clone())));
                    Some(c)
                }
                Some(ps) if ps.kind == PathKind::Dir => {
                    blocked.push(format!(
                        "{path} is a directory on the host; tidekeeper will not replace it with a symlink"
                    ));
                    None
                }
                Some(ps) if ps.kind != PathKind::Link => {
                    let mut c = change(item, Action::Replace);
                    c.was = Some(ps.kind);
                    c.note = Some(format!("replaces a {}", ps.kind.word()));
                    c.attrs.push(attr("target", None, Some(target.clone())));
                    Some(c)
                }
                Some(ps) if ps.link_target.as_deref() != Some(target.as_str()) => {
                    let mut c = change(item, Action::Update);
                    c.attrs
                        .push(attr("target", ps.link_target.clone(), Some(target.clone())));
                    Some(c)
                }
                Some(_) => None,
            },
            Item::Absent { path } => obs.paths.get(path).map(|ps| {
                let mut c = change(item, Action::Delete);
                c.was = Some(ps.kind);
                c.note = Some(format!("removes a {}", ps.kind.word()));
                c
            }),
            Item::Package { name, state } => {
                let installed = obs.packages.get(name).and_then(|p| p.installed.clone());
                match (state, installed) {
                    (PackageState::Present | PackageState::Latest, None) => {
                        Some(change(item, Action::Create))
                    }
                    (PackageState::Absent, Some(v)) => {
                        let mut c = change(item, Action::Delete);
                        c.attrs.push(attr("version", Some(v), None));
                        Some(c)
                    }
                    (PackageState::Latest, Some(v)) => {
                        let cand = obs.packages.get(name).and_then(|p| p.candidate.clone());
                        match cand {
                            Some(cand) if cand != v => {
                                let mut c = change(item, Action::Update);
                                c.attrs.push(attr("version", Some(v), Some(cand)));
                                Some(c)
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            Item::Group { name, gid } => {
                super::kinds::group::plan(obs.groups.get(name), *gid).map(|(action, attrs)| {
                    let mut c = change(item, action);
                    c.attrs = attrs;
                    c
                })
            }
            Item::User(u) => {
                let member_of: BTreeSet<String> = obs
                    .groups
                    .iter()
                    .filter(|(_, g)| g.members.contains(&u.name))
                    .map(|(n, _)| n.clone())
                    .collect();
                let want_groups: BTreeSet<String> = u.groups.iter().cloned().collect();
                match obs.users.get(&u.name) {
                    None => {
                        let mut c = change(item, Action::Create);
                        if let Some(uid) = u.uid {
                            c.attrs.push(attr("uid", None, Some(uid.to_string())));
                        }
                        if !u.groups.is_empty() {
                            c.attrs.push(attr("groups", None, Some(u.groups.join(","))));
                        }
                        if let Some(s) = &u.shell {
                            c.attrs.push(attr("shell", None, Some(s.clone())));
                        }
                        c.attrs.push(attr("home", None, Some(u.home.clone())));
                        Some(c)
                    }
                    Some(pw) => {
                        let mut c = change(item, Action::Update);
                        if let Some(uid) = u.uid
                            && uid != pw.uid
                        {
                            c.attrs.push(attr(
                                "uid",
                                Some(pw.uid.to_string()),
                                Some(uid.to_string()),
                            ));
                        }
                        if let Some(s) = &u.shell
                            && *s != pw.shell
                        {
                            c.attrs
                                .push(attr("shell", Some(pw.shell.clone()), Some(s.clone())));
                        }
                        if u.home != pw.home {
                            c.attrs
                                .push(attr("home", Some(pw.home.clone()), Some(u.home.clone())));
                        }
                        if want_groups != member_of {
                            let join = |s: &BTreeSet<String>| {
                                s.iter().cloned().collect::<Vec<_>>().join(",")
                            };
                            c.attrs.push(attr(
                                "groups",
                                Some(join(&member_of)),
                                Some(join(&want_groups)),
                            ));
                        }
                        (!c.attrs.is_empty()).then_some(c)
                    }
                }
            }
            Item::Service {
                name,
                enabled,
                state,
            } => {
                let u = obs.units.get(name).cloned().unwrap_or_default();
                let missing = u.load == "not-found" || u.load.is_empty();
                let mut c = change(
                    item,
                    if missing {
                        Action::Create
                    } else {
                        Action::Update
                    },
                );
                if let Some(e) = enabled
                    && (missing || unit_enabled(&u.file_state) != *e)
                {
                    c.attrs.push(attr(
                        "enabled",
                        (!missing).then(|| u.file_state.clone()),
                        Some(e.to_string()),
                    ));
                }
                if let Some(s) = state {
                    let running =
                        matches!(u.active.as_str(), "active" | "reloading" | "activating");
                    let want = *s == ServiceState::Running;
                    if missing || running != want {
                        c.attrs.push(attr(
                            "state",
                            (!missing).then(|| u.active.clone()),
                            Some(if want { "running" } else { "stopped" }.into()),
                        ));
                    }
                }
                (!c.attrs.is_empty()).then_some(c)
            }
            Item::Firewall(fw) => {
                let want: Vec<String> = fw.rules.iter().map(ufw_rule_args).collect();
                match &obs.firewall {
                    None => {
                        let mut c = change(item, Action::Create);
                        c.attrs.push(attr(
                            "incoming",
                            None,
                            Some(policy_word(fw.incoming).into()),
                        ));
                        c.attrs.push(attr(
                            "outgoing",
                            None,
                            Some(policy_word(fw.outgoing).into()),
                        ));
                        for r in &want {
                            c.attrs.push(attr("rule", None, Some(r.clone())));
                        }
                        c.note = Some("installs ufw".into());
                        Some(c)
                    }
                    Some(o) => {
                        let mut c = change(item, Action::Update);
                        let have: Vec<String> = o.rules.iter().map(ufw_rule_args).collect();
                        for r in &want {
                            if !have.contains(r) {
                                c.attrs.push(attr("rule", None, Some(r.clone())));
                            }
                        }
                        for r in &have {
                            if !want.contains(r) {
                                c.attrs.push(attr("rule", Some(r.clone()), None));
                            }
                        }
                        if o.incoming != policy_word(fw.incoming) {
                            c.attrs.push(attr(
                                "incoming",
                                Some(o.incoming.clone()),
                                Some(policy_word(fw.incoming).into()),
                            ));
                        }
                        if o.outgoing != policy_word(fw.outgoing) {
                            c.attrs.push(attr(
                                "outgoing",
                                Some(o.outgoing.clone()),
                                Some(policy_word(fw.outgoing).into()),
                            ));
                        }
                        if !o.enabled {
                            c.attrs
                                .push(attr("enabled", Some("no".into()), Some("yes".into())));
                        }
                        for f in &o.foreign {
                            warnings.push(format!(
                                "ufw rule not written by tidekeeper left in place: {f}"
                            ));
                        }
                        (!c.attrs.is_empty()).then_some(c)
                    }
                }
            }
            Item::Sysctl { key, value } => {
                let have = obs.sysctl.get(key).cloned().flatten();
                super::kinds::sysctl::plan(have.as_deref(), value).map(|want| {
                    let mut c = change(item, Action::Update);
                    c.attrs.push(attr("value", have, Some(want)));
                    c
                })
            }
            Item::Stack {
                name,
                dir,
                hash,
                compose,
                services,
                ..
            } => plan_stack(name, dir, hash, compose.as_deref(), services, &changes, obs).map(
                |(reason, attrs)| {
                    let mut c = change(item, Action::Run);
                    c.note = Some(format!("docker compose up ({reason})"));
                    c.attrs = attrs;
                    c
                },
            ),
            Item::Command(cmd) => {
                let guarded = cmd.creates.is_some() || cmd.unless.is_some() || cmd.onlyif.is_some();
                let reason = if guarded {
                    obs.commands.get(&cmd.name).cloned().flatten()
                } else {
                    match obs.inventory.commands.get(&cmd.name) {
                        None => Some("first run".to_string()),
                        Some(h) if *h != command_hash(cmd) => {
                            Some("its command changed".to_string())
                        }
                        Some(_) => None,
                    }
                };
                reason.map(|r| {
                    let mut c = change(item, Action::Run);
                    c.note = Some(r);
                    c.notify = cmd.notify.clone();
                    c
                })
            }
        };
        changes.extend(ch);
    }

    // A host tidekeeper reaches over SSH must keep its SSH server: there is
    // no rolling back a removed package from a host nobody can log in to.
    if host.provider != crate::model::desired::ProviderKind::Local
        && let Some(c) = changes.iter().find(|c| {
            c.kind == ResourceKind::Package && c.action == Action::Delete && is_ssh_server(&c.id)
        })
    {
        blocked.push(format!(
            "removing {} would cut tidekeeper (and everyone) off from this host, which it reaches over SSH;              remove it by hand if that is really meant",
            c.id
        ));
    }

    for (dir, owner) in &obs.unsafe_parents {
        blocked.push(format!(
            "{dir} is a symlink owned by {owner}, not root, above managed paths; \
             tidekeeper will not write through it (it may have been planted to redirect writes)"
        ));
    }

    // Handlers: notified by what changes now, or owed by a failed earlier run.
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    for c in &changes {
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
    let handlers: Vec<HandlerRun> = host
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
    let settled_handlers: Vec<String> = reasons
        .keys()
        .filter(|n| !handlers.iter().any(|h: &HandlerRun| h.name == **n))
        .cloned()
        .collect();
    let daemon_reload = changes.iter().any(|c| {
        c.kind == ResourceKind::File
            && ["/etc/systemd/", "/lib/systemd/", "/usr/lib/systemd/"]
                .iter()
                .any(|p| c.id.starts_with(p))
    });

    // Prune: what the inventory lists but the config no longer has.
    let desired: BTreeSet<(ResourceKind, String)> = items
        .iter()
        .map(|i| (i.kind(), i.id().to_string()))
        .collect();
    let mut prunes = Vec::new();
    for e in &obs.inventory.resources {
        if desired.contains(&(e.kind, e.id.clone())) {
            continue;
        }
        let mut c = Change {
            kind: e.kind,
            id: e.id.clone(),
            action: Action::Delete,
            attrs: vec![],
            diff: None,
            note: Some("no longer in the config".into()),
            was: None,
            item: None,
            prune: true,
            notify: vec![],
        };
        match e.kind {
            k if k.is_path() => match obs.paths.get(&e.id) {
                Some(ps) => c.was = Some(ps.kind),
                None => continue,
            },
            ResourceKind::Service | ResourceKind::Stack => {}
            ResourceKind::User if e.created && obs.users.contains_key(&e.id) => {}
            ResourceKind::Group if e.created && obs.groups.contains_key(&e.id) => {}
            ResourceKind::Package => {
                warnings.push(format!(
                    "package {} is no longer managed; it stays installed (declare it absent to remove it)",
                    e.id
                ));
                continue;
            }
            _ => continue,
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
    // Stacks go down while their files exist; directories go after what is in them.
    prunes.sort_by_key(|c: &Change| {
        (
            c.kind != ResourceKind::Stack,
            c.kind == ResourceKind::Directory,
            std::cmp::Reverse(c.id.matches('/').count()),
        )
    });
    changes.extend(prunes);

    // The inventory after a successful apply.
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
        if matches!(i, Item::Absent { .. }) {
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
        if let Item::Command(cmd) = i {
            inventory
                .commands
                .insert(cmd.name.clone(), command_hash(cmd));
        }
        if let Item::Stack { name, hash, .. } = i {
            inventory.stacks.insert(name.clone(), hash.clone());
        }
    }
    inventory.commands.retain(|name, _| {
        items
            .iter()
            .any(|i| matches!(i, Item::Command(c) if c.name == *name))
    });

    let sysctl_conf = changes
        .iter()
        .any(|c| c.kind == ResourceKind::Sysctl)
        .then(|| super::kinds::sysctl::conf(items));
    HostPlan {
        previous_inventory: obs.inventory.clone(),
        settled_handlers,
        sysctl_conf,
        host: host.name.clone(),
        changes,
        handlers,
        daemon_reload,
        warnings,
        blocked,
        inventory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::item::items;
    use crate::engine::probe::{self, PathState};
    use crate::source::ConfigTree;

    fn host(role: &str) -> Host {
        let mut t = ConfigTree::new();
        t.insert_file("tidekeeper.yaml", "fleet: t\n");
        t.insert_file(
            "hosts/h.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [r]\n",
        );
        t.insert_file("roles/r.yaml", role);
        t.insert_file("secrets/token.age", "x");
        let fleet = crate::model::load(&t).unwrap_or_else(|d| panic!("{d}"));
        fleet.hosts[0].clone()
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

    #[test]
    fn ufw_allow_rules_come_before_the_default_deny() {
        let h = host("firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\", comment: ssh}\n");
        let it = items(&h);
        let obs = probe::parse("E\tend\n", "", &it).unwrap();
        let p = plan_host(&h, &it, &obs, PlanOptions::default());
        let script = crate::engine::apply::script(&p, "", "run", None).text;
        let allow = script
            .find("ufw allow 22/tcp comment 'ssh'")
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
