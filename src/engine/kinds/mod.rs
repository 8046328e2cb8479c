//! One module per resource kind, each owning all of its phases behind the
//! [`Kind`] trait: what the probe asks about it, how its records are read
//! back, when it needs a change, what the apply runs, what happens when it
//! leaves the config, whether a change to it risks tidekeeper's own access,
//! and what a proposal may observe of it. [`KINDS`] is the registry the
//! stages (probe, plan, apply, guard, confine) go through; adding a kind is
//! its file and one line there. The kinds depend on the items, the observed
//! state and the shell helpers; nothing here depends on the stages that
//! call it.

// What several kinds share, and resources written as files of other kinds.
pub(crate) mod apt_repo;
pub(crate) mod containers;
pub(crate) mod cron;
pub(crate) mod path;
pub(crate) mod timer;

mod kind;
pub(crate) use kind::*;

use crate::change::{Action, Attr, ResourceKind};
use crate::digest::sha256_hex;
use crate::engine::item::{FileItem, Item, UserItem, default_home, unit_name};
use crate::engine::observed::PathKind;
use crate::model::desired::{Content, Host, Resource, ServiceState};

/// Declares each kind's module and lists it in [`KINDS`].
macro_rules! registry {
    ($($module:ident::$kind:ident),* $(,)?) => {
        $(pub(crate) mod $module;)*

        /// Every kind, in the order the probe asks about them.
        pub(crate) static KINDS: &[&dyn Kind] = &[$(&$module::$kind),*];
    };
}

// The registry. Adding a kind: its file, and its line here.
registry! {
    symlink::Symlink,
    file::File,
    package::Package,
    service::Service,
    user::User,
    group::Group,
    firewall::Firewall,
    sysctl::Sysctl,
    mount::Mount,
    command::Command,
    stack::Stack,
    directory::Directory,
    absent::Absent,
    timezone::Timezone,
}

/// The kind that owns `(kind, id)`: a host setting by its name, any other
/// by its [`ResourceKind`]. A kind no registered one owns (an unknown
/// setting, a kind a newer tidekeeper recorded) gets [`Unowned`].
pub(crate) fn of(kind: ResourceKind, id: &str) -> &'static dyn Kind {
    KINDS
        .iter()
        .copied()
        .find(|k| k.kind() == kind && (kind != ResourceKind::Setting || k.setting() == Some(id)))
        .unwrap_or(&Unowned)
}

/// Host settings no kind knows, each located where the config names it:
/// the model cannot ask the registry (it sits below the engine), so the
/// commands that load a config ask here before planning.
pub(crate) fn unknown_settings(fleet: &crate::model::Fleet) -> Vec<crate::model::Diagnostic> {
    let known: Vec<&str> = KINDS.iter().filter_map(|k| k.setting()).collect();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in fleet.hosts.iter().flat_map(|h| &h.resources) {
        let Resource::Setting { name, origin, .. } = r else {
            continue;
        };
        if known.contains(&name.as_str()) || !seen.insert((name, origin.to_string())) {
            continue;
        }
        let d = origin.error(
            "unknown-setting",
            format!("tidekeeper has no setting {name:?}"),
        );
        out.push(match crate::suggest::closest(name, &known) {
            Some(c) => d.with_help(format!(
                "did you mean {c:?}? Settings: {}",
                known.join(", ")
            )),
            None => d.with_help(format!("settings: {}", known.join(", "))),
        });
    }
    out
}

/// The fleet, if every host setting it names is one a kind knows: what
/// every loader (the commands, the daemon, the proposal worker) passes a
/// loaded config through.
pub(crate) fn known_settings(
    fleet: crate::model::Fleet,
) -> Result<crate::model::Fleet, crate::model::Diagnostics> {
    let unknown = unknown_settings(&fleet);
    if unknown.is_empty() {
        Ok(fleet)
    } else {
        Err(crate::model::Diagnostics(unknown))
    }
}

impl Item {
    /// The kind that owns this item: every stage reaches it through here.
    pub fn kind_impl(&self) -> &'static dyn Kind {
        of(self.kind(), self.id())
    }
}

/// A probe record that does not read as its tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Garbled;

/// What a kind's plan rule says an item needs. The planner turns it into a
/// change of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub action: Action,
    pub attrs: Vec<Attr>,
    pub note: Option<String>,
    /// Unified diff of a text file's content.
    pub diff: Option<String>,
    /// What the host has there now, for deletions and replacements.
    pub was: Option<PathKind>,
}

impl Need {
    pub fn new(action: Action) -> Need {
        Need {
            action,
            attrs: vec![],
            note: None,
            diff: None,
            was: None,
        }
    }

    /// Add an attribute: its value before and after.
    pub fn attr(mut self, name: &str, before: Option<String>, after: Option<String>) -> Need {
        self.attrs.push(attr(name, before, after));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Need {
        self.note = Some(note.into());
        self
    }

    /// The need, if it has any attribute to change.
    pub fn if_any(self) -> Option<Need> {
        (!self.attrs.is_empty()).then_some(self)
    }
}

/// The host has users or groups: both read both account databases (a
/// user's memberships are in the group database, a group may be named
/// like a user).
pub(crate) fn has_accounts(items: &[Item]) -> bool {
    items
        .iter()
        .any(|i| matches!(i, Item::User(_) | Item::Group { .. }))
}

pub(crate) fn attr(name: &str, before: Option<String>, after: Option<String>) -> Attr {
    Attr {
        name: name.to_string(),
        before,
        after,
    }
}

/// Flatten a host's resources into items, in the order they are applied:
/// packages, groups, users, mounts, directories (parents first), files and
/// links, sysctl and host settings, firewall, services, commands, stacks.
pub(crate) fn items(host: &Host) -> Vec<Item> {
    let mut b = Buckets::default();
    for r in &host.resources {
        b.add(r);
    }
    b.into_items()
}

/// Items by when they are applied.
#[derive(Default)]
struct Buckets {
    packages: Vec<Item>,
    groups: Vec<Item>,
    users: Vec<Item>,
    mounts: Vec<Item>,
    dirs: Vec<Item>,
    paths: Vec<Item>,
    /// Ranked: sysctl and settings, firewall, services, commands, stacks.
    rest: Vec<(u8, Item)>,
}

impl Buckets {
    /// A resource as its items, each kind expanded as its module says.
    fn add(&mut self, r: &Resource) {
        match r {
            Resource::Package { name, state, .. } => self.packages.push(Item::Package {
                name: name.clone(),
                state: *state,
            }),
            Resource::Group { name, gid, .. } => self.groups.push(Item::Group {
                name: name.clone(),
                gid: *gid,
            }),
            Resource::User(u) => self.user(u),
            Resource::Directory(d) => self.dirs.push(Item::Dir {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            }),
            Resource::File(f) => self.paths.push(Item::File(FileItem {
                path: f.path.clone(),
                sha256: sha256_hex(&f.content.bytes),
                content: f.content.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                validate: f.validate.clone(),
                notify: f.notify.clone(),
            })),
            Resource::Symlink { path, target, .. } => self.paths.push(Item::Link {
                path: path.clone(),
                target: target.clone(),
            }),
            Resource::Absent { path, .. } => self.paths.push(Item::Absent { path: path.clone() }),
            Resource::Sysctl { key, value, .. } => self.rest.push((
                0,
                Item::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                },
            )),
            Resource::Setting { name, value, .. } => self.rest.push((
                0,
                Item::Setting {
                    name: name.clone(),
                    value: value.clone(),
                },
            )),
            Resource::Firewall(fw) => self.rest.push((1, Item::Firewall(fw.clone()))),
            Resource::Service(s) => self.rest.push((
                2,
                Item::Service {
                    name: unit_name(&s.name),
                    enabled: s.enabled,
                    state: s.state,
                },
            )),
            Resource::Command(c) => self.rest.push((3, Item::Command(c.clone()))),
            // Timers and cron entries are files, and a timer also its unit.
            Resource::Timer(t) => {
                for (path, text) in timer::unit_files(t) {
                    self.paths
                        .push(Item::File(text_file(path, text.into_bytes())));
                }
                self.rest.push((
                    2,
                    Item::Service {
                        name: timer::timer_name(t),
                        enabled: Some(true),
                        state: Some(ServiceState::Running),
                    },
                ));
            }
            Resource::Mount(m) => self.mounts.push(Item::Mount {
                path: m.path.clone(),
                entry: super::observed::FstabEntry {
                    device: m.device.clone(),
                    fstype: m.fstype.clone(),
                    options: m.options.clone(),
                },
                state: m.state,
            }),
            Resource::Cron(c) => {
                let (path, text) = cron::file(c);
                self.paths
                    .push(Item::File(text_file(path, text.into_bytes())));
            }
            Resource::AptRepo(r) => {
                for (path, bytes) in apt_repo::files(r) {
                    self.paths.push(Item::File(text_file(path, bytes)));
                }
            }
            Resource::Stack(st) => self.stack(st),
        }
    }

    /// A user, with its authorized_keys file and .ssh directory as path items.
    fn user(&mut self, u: &crate::model::desired::UserResource) {
        let home = u.home.clone().unwrap_or_else(|| default_home(&u.name));
        if !u.authorized_keys.is_empty() {
            let mut text = String::from("# Managed by tidekeeper.\n");
            for k in &u.authorized_keys {
                text.push_str(k.trim());
                text.push('\n');
            }
            // The user's login group, as ssh-copy-id leaves them.
            self.dirs.push(Item::Dir {
                path: format!("{home}/.ssh"),
                mode: Some(0o700),
                owner: Some(u.name.clone()),
                group: Some(path::LOGIN_GROUP.into()),
            });
            self.paths.push(Item::File(FileItem {
                path: format!("{home}/.ssh/authorized_keys"),
                sha256: sha256_hex(text.as_bytes()),
                content: Content {
                    bytes: text.into_bytes(),
                    sensitive: false,
                },
                mode: Some(0o600),
                owner: Some(u.name.clone()),
                group: Some(path::LOGIN_GROUP.into()),
                validate: None,
                notify: vec![],
            }));
        }
        self.users.push(Item::User(UserItem {
            name: u.name.clone(),
            uid: u.uid,
            groups: u.groups.clone(),
            shell: u.shell.clone(),
            home,
            system: u.system,
        }));
    }

    /// A compose stack: its directory, its files, and the project.
    fn stack(&mut self, st: &crate::model::desired::Stack) {
        let dir = st.dir.trim_end_matches('/').to_string();
        let mut all = Vec::new();
        self.dirs.push(Item::Dir {
            path: dir.clone(),
            mode: Some(0o750),
            owner: None,
            group: None,
        });
        for (rel, content) in &st.files {
            let sha = sha256_hex(&content.bytes);
            all.extend_from_slice(rel.as_bytes());
            all.extend_from_slice(sha.as_bytes());
            self.paths.push(Item::File(FileItem {
                path: format!("{dir}/{rel}"),
                sha256: sha,
                content: content.clone(),
                mode: Some(if content.sensitive { 0o600 } else { 0o644 }),
                owner: None,
                group: None,
                validate: None,
                notify: vec![],
            }));
        }
        let compose = crate::engine::compose::FILES
            .iter()
            .find(|f| st.files.contains_key(**f))
            .map(|f| f.to_string());
        let services = compose
            .as_ref()
            .and_then(|f| crate::engine::compose::services(&st.files[f].bytes))
            .unwrap_or_default();
        self.rest.push((
            4,
            Item::Stack {
                name: st.name.clone(),
                dir,
                hash: sha256_hex(&all)[..16].to_string(),
                compose,
                services,
                health: st.health.clone(),
                health_timeout_secs: st.health_timeout_secs,
            },
        ));
    }

    /// On a host that runs Docker, the firewall's rules also filter what
    /// reaches its containers: their file, the unit that loads it at boot.
    fn containers(&mut self) {
        let docker = containers::runs_docker(&self.packages)
            || self
                .rest
                .iter()
                .any(|(_, i)| matches!(i, Item::Stack { .. }));
        let Some(Item::Firewall(fw)) = self
            .rest
            .iter_mut()
            .map(|(_, i)| i)
            .find(|i| matches!(i, Item::Firewall(_)))
        else {
            return;
        };
        if !docker {
            return;
        }
        fw.docker = true;
        for (path, text) in containers::files(fw) {
            self.paths
                .push(Item::File(text_file(path, text.into_bytes())));
        }
        self.rest.push((
            2,
            Item::Service {
                name: containers::UNIT.into(),
                enabled: Some(true),
                state: Some(ServiceState::Running),
            },
        ));
    }

    fn into_items(mut self) -> Vec<Item> {
        self.containers();
        self.dirs.sort_by_key(|d| d.id().matches('/').count());
        self.rest.sort_by_key(|(rank, _)| *rank);
        let mut out = self.packages;
        out.extend(self.groups);
        out.extend(self.users);
        // Filesystems before the directories and files that may live on them.
        out.extend(self.mounts);
        out.extend(self.dirs);
        out.extend(self.paths);
        out.extend(self.rest.into_iter().map(|(_, i)| i));
        out
    }
}

/// A file tidekeeper writes from content it made: root's, mode 0644.
fn text_file(path: String, bytes: Vec<u8>) -> FileItem {
    FileItem {
        path,
        sha256: sha256_hex(&bytes),
        content: Content {
            bytes,
            sensitive: false,
        },
        mode: Some(0o644),
        owner: Some("root".into()),
        group: Some("root".into()),
        validate: None,
        notify: vec![],
    }
}

/// `sh -n` over a generated fragment: it must at least parse.
#[cfg(test)]
pub(crate) fn sh_n(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sh -n` over a step body (which uses `return`, so it lives in a function).
#[cfg(test)]
pub(crate) fn sh_n_step(body: &str) {
    sh_n(&format!("f() {{\n:\n{body}}}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::observed::Observed;

    /// Each kind is found by what it owns, once; a setting no kind owns
    /// and a kind a newer tidekeeper recorded fall to [`Unowned`], which
    /// blocks a plan and is never pruned.
    /// A setting no kind knows is a located error when the config loads,
    /// with the names there are; a known one passes.
    #[test]
    fn unknown_settings_are_located_with_the_names_there_are() {
        let load = |role: &str| {
            let mut t = crate::source::ConfigTree::default();
            t.insert_file("tidekeeper.yaml", "fleet: t\n");
            t.insert_file(
                "hosts/h.yaml",
                "provider: existing\naddress: 10.0.0.1\nroles: [r]\n",
            );
            t.insert_file("roles/r.yaml", role);
            known_settings(crate::model::load(&t).unwrap_or_else(|d| panic!("{d}")))
        };
        assert!(load("settings:\n  timezone: Europe/Berlin\n").is_ok());
        let d = load("settings:\n  timezon: Europe/Berlin\n").unwrap_err();
        assert_eq!(d.0.len(), 1);
        assert_eq!((d.0[0].file.as_str(), d.0[0].line), ("roles/r.yaml", 2));
        assert_eq!(d.0[0].code, "unknown-setting");
        assert!(
            d.0[0]
                .help
                .as_deref()
                .unwrap()
                .contains("did you mean \"timezone\"?")
        );
    }

    #[test]
    fn the_registry_finds_each_kind_by_what_it_owns() {
        for k in KINDS {
            let id = k.setting().unwrap_or("x");
            assert!(std::ptr::addr_eq(of(k.kind(), id), *k), "{}", k.kind());
            let owners = KINDS
                .iter()
                .filter(|o| o.kind() == k.kind() && o.setting() == k.setting())
                .count();
            assert_eq!(owners, 1, "{} is owned once", k.kind());
        }
        let unowned = Item::Setting {
            name: "no_such".into(),
            value: "1".into(),
        };
        assert_eq!(unowned.kind_impl().kind(), ResourceKind::Unknown);
        let obs = Observed::default();
        let mut warnings = vec![];
        let mut cx = PlanCx {
            obs: &obs,
            earlier: &[],
            warnings: &mut warnings,
        };
        let why = unowned.kind_impl().plan(&unowned, &mut cx).unwrap_err();
        assert!(why.contains("no such setting"), "{why}");
        let e = crate::engine::observed::InventoryEntry {
            kind: ResourceKind::Unknown,
            id: "vault".into(),
            created: true,
        };
        assert_eq!(of(e.kind, &e.id).prune(&e, &obs), Prune::Keep);
    }

    /// The tags the kinds read are theirs alone, but for host settings,
    /// whose records start with the setting's name.
    #[test]
    fn no_two_kinds_read_the_same_records() {
        let mut seen: Vec<crate::engine::sh::Tag> = vec![];
        for k in KINDS {
            for t in k.tags() {
                if *t != crate::engine::sh::Tag::Setting {
                    assert!(!seen.contains(t), "{t:?} read twice");
                    seen.push(*t);
                }
            }
        }
    }
}
