//! A host's desired state flattened into the items the probe, planner and
//! applier work on. Users bring their `authorized_keys` file and its
//! directory as ordinary path items, so those get diffs, backups and atomic
//! writes like every other file.

use std::collections::BTreeMap;

use crate::change::ResourceKind;
use crate::digest::sha256_hex;
use crate::model::desired::{
    CommandResource, Content, Firewall, Handler, HealthCheck, Host, PackageState, Resource,
    ServiceState,
};

#[derive(Debug, Clone)]
pub enum Item {
    File(FileItem),
    Dir {
        path: String,
        mode: Option<u32>,
        owner: Option<String>,
        group: Option<String>,
    },
    Link {
        path: String,
        target: String,
    },
    Absent {
        path: String,
    },
    Package {
        name: String,
        state: PackageState,
    },
    Group {
        name: String,
        gid: Option<u32>,
    },
    User(UserItem),
    Service {
        name: String,
        enabled: Option<bool>,
        state: Option<ServiceState>,
    },
    Firewall(Firewall),
    Sysctl {
        key: String,
        value: String,
    },
    Command(CommandResource),
    /// A filesystem in fstab.
    Mount {
        path: String,
        entry: super::observed::FstabEntry,
        state: crate::model::desired::MountState,
    },
    /// A compose project: its files are File items under `dir`.
    Stack {
        name: String,
        dir: String,
        /// Checksum over every file of the stack.
        hash: String,
        /// The compose file's name in `dir`, and its services.
        compose: Option<String>,
        services: BTreeMap<String, super::compose::Service>,
        health: Vec<HealthCheck>,
        health_timeout_secs: u64,
    },
}

#[derive(Debug, Clone)]
pub struct FileItem {
    pub path: String,
    pub content: Content,
    pub sha256: String,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub validate: Option<String>,
    pub notify: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UserItem {
    pub name: String,
    pub uid: Option<u32>,
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: String,
    pub system: bool,
}

impl Item {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Item::File(_) => ResourceKind::File,
            Item::Dir { .. } => ResourceKind::Directory,
            Item::Link { .. } => ResourceKind::Symlink,
            Item::Absent { .. } => ResourceKind::Absent,
            Item::Package { .. } => ResourceKind::Package,
            Item::Group { .. } => ResourceKind::Group,
            Item::User(_) => ResourceKind::User,
            Item::Service { .. } => ResourceKind::Service,
            Item::Firewall(_) => ResourceKind::Firewall,
            Item::Sysctl { .. } => ResourceKind::Sysctl,
            Item::Command(_) => ResourceKind::Command,
            Item::Stack { .. } => ResourceKind::Stack,
            Item::Mount { .. } => ResourceKind::Mount,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Item::File(f) => &f.path,
            Item::Dir { path, .. } | Item::Link { path, .. } | Item::Absent { path } => path,
            Item::Package { name, .. } | Item::Group { name, .. } | Item::Service { name, .. } => {
                name
            }
            Item::User(u) => &u.name,
            Item::Firewall(_) => "ufw",
            Item::Sysctl { key, .. } => key,
            Item::Command(c) => &c.name,
            Item::Stack { name, .. } => name,
            Item::Mount { path, .. } => path,
        }
    }

    /// Items whose paths live on the host's filesystem (subject to a local root).
    pub fn path(&self) -> Option<&str> {
        match self {
            Item::File(f) => Some(&f.path),
            Item::Dir { path, .. } | Item::Link { path, .. } | Item::Absent { path } => Some(path),
            _ => None,
        }
    }
}

/// Home directory a user gets when none is configured.
pub fn default_home(name: &str) -> String {
    if name == "root" {
        "/root".into()
    } else {
        format!("/home/{name}")
    }
}

/// Flatten a host's resources into items, in the order they are applied:
/// packages, groups, users, mounts, directories (parents first), files and
/// links, sysctl, firewall, services, commands, stacks.
pub fn items(host: &Host) -> Vec<Item> {
    let mut packages = Vec::new();
    let mut groups = Vec::new();
    let mut users = Vec::new();
    let mut mounts = Vec::new();
    let mut dirs = Vec::new();
    let mut paths = Vec::new();
    let mut rest = Vec::new();
    for r in &host.resources {
        match r {
            Resource::Package { name, state, .. } => packages.push(Item::Package {
                name: name.clone(),
                state: *state,
            }),
            Resource::Group { name, gid, .. } => groups.push(Item::Group {
                name: name.clone(),
                gid: *gid,
            }),
            Resource::User(u) => {
                let home = u.home.clone().unwrap_or_else(|| default_home(&u.name));
                if !u.authorized_keys.is_empty() {
                    let mut text = String::from("# Managed by tidekeeper.\n");
                    for k in &u.authorized_keys {
                        text.push_str(k.trim());
                        text.push('\n');
                    }
                    dirs.push(Item::Dir {
                        path: format!("{home}/.ssh"),
                        mode: Some(0o700),
                        owner: Some(u.name.clone()),
                        group: None,
                    });
                    paths.push(Item::File(FileItem {
                        path: format!("{home}/.ssh/authorized_keys"),
                        sha256: sha256_hex(text.as_bytes()),
                        content: Content {
                            bytes: text.into_bytes(),
                            sensitive: false,
                        },
                        mode: Some(0o600),
                        owner: Some(u.name.clone()),
                        group: None,
                        validate: None,
                        notify: vec![],
                    }));
                }
                users.push(Item::User(UserItem {
                    name: u.name.clone(),
                    uid: u.uid,
                    groups: u.groups.clone(),
                    shell: u.shell.clone(),
                    home,
                    system: u.system,
                }));
            }
            Resource::Directory(d) => dirs.push(Item::Dir {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            }),
            Resource::File(f) => paths.push(Item::File(FileItem {
                path: f.path.clone(),
                sha256: sha256_hex(&f.content.bytes),
                content: f.content.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                validate: f.validate.clone(),
                notify: f.notify.clone(),
            })),
            Resource::Symlink { path, target, .. } => paths.push(Item::Link {
                path: path.clone(),
                target: target.clone(),
            }),
            Resource::Absent { path, .. } => paths.push(Item::Absent { path: path.clone() }),
            Resource::Sysctl { key, value, .. } => rest.push((
                0,
                Item::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                },
            )),
            Resource::Firewall(fw) => rest.push((1, Item::Firewall(fw.clone()))),
            Resource::Service(s) => rest.push((
                2,
                Item::Service {
                    name: unit_name(&s.name),
                    enabled: s.enabled,
                    state: s.state,
                },
            )),
            Resource::Command(c) => rest.push((3, Item::Command(c.clone()))),
            // Timers and cron entries are files, and a timer also its unit.
            Resource::Timer(t) => {
                for (path, text) in super::kinds::timer::unit_files(t) {
                    paths.push(Item::File(text_file(path, text.into_bytes())));
                }
                rest.push((
                    2,
                    Item::Service {
                        name: super::kinds::timer::timer_name(t),
                        enabled: Some(true),
                        state: Some(ServiceState::Running),
                    },
                ));
            }
            Resource::Mount(m) => mounts.push(Item::Mount {
                path: m.path.clone(),
                entry: super::observed::FstabEntry {
                    device: m.device.clone(),
                    fstype: m.fstype.clone(),
                    options: m.options.clone(),
                },
                state: m.state,
            }),
            Resource::Cron(c) => {
                let (path, text) = super::kinds::cron::file(c);
                paths.push(Item::File(text_file(path, text.into_bytes())));
            }
            Resource::AptRepo(r) => {
                for (path, bytes) in super::kinds::apt_repo::files(r) {
                    paths.push(Item::File(text_file(path, bytes)));
                }
            }
            Resource::Stack(st) => {
                let dir = st.dir.trim_end_matches('/').to_string();
                let mut all = Vec::new();
                dirs.push(Item::Dir {
                    path: dir.clone(),
                    mode: Some(0o750),
                    owner: None,
                    group: None,
                });
                for (rel, content) in &st.files {
                    let sha = sha256_hex(&content.bytes);
                    all.extend_from_slice(rel.as_bytes());
                    all.extend_from_slice(sha.as_bytes());
                    paths.push(Item::File(FileItem {
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
                let compose = super::compose::FILES
                    .iter()
                    .find(|f| st.files.contains_key(**f))
                    .map(|f| f.to_string());
                let services = compose
                    .as_ref()
                    .and_then(|f| super::compose::services(&st.files[f].bytes))
                    .unwrap_or_default();
                rest.push((
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
        }
    }
    dirs.sort_by_key(|d| d.id().matches('/').count());
    rest.sort_by_key(|(rank, _)| *rank);
    let mut out = packages;
    out.extend(groups);
    out.extend(users);
    // Filesystems before the directories and files that may live on them.
    out.extend(mounts);
    out.extend(dirs);
    out.extend(paths);
    out.extend(rest.into_iter().map(|(_, i)| i));
    out
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

/// `ssh` → `ssh.service`; names with a unit suffix stay as they are.
pub fn unit_name(name: &str) -> String {
    const SUFFIXES: [&str; 6] = [
        ".service", ".timer", ".socket", ".target", ".mount", ".path",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// What a handler does, as a shell command.
pub fn handler_command(h: &Handler) -> String {
    use crate::model::desired::HandlerAction::*;
    use crate::transport::shell_quote;
    match &h.action {
        Restart(unit) => format!("systemctl restart {}", shell_quote(&unit_name(unit))),
        Reload(unit) => format!("systemctl reload {}", shell_quote(&unit_name(unit))),
        Run(cmd) => format!("sh -c {}", shell_quote(cmd)),
    }
}
