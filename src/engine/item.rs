//! A host's desired state flattened into the items the probe, planner and
//! applier work on (each finds its kind through `Item::kind_impl`, which
//! the kinds' registry defines). Users bring their `authorized_keys` file and its
//! directory as ordinary path items, so those get diffs, backups and atomic
//! writes like every other file.

use std::collections::BTreeMap;

use crate::change::ResourceKind;
use crate::model::desired::{
    CommandResource, Content, Firewall, Handler, HealthCheck, PackageState, ServiceState,
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
    /// A host setting (one value per host), owned by the kind of its name.
    Setting {
        name: String,
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
            Item::Setting { .. } => ResourceKind::Setting,
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
            Item::Setting { name, .. } => name,
            Item::Command(c) => &c.name,
            Item::Stack { name, .. } => name,
            Item::Mount { path, .. } => path,
        }
    }

    /// The handlers a change to the item notifies.
    pub fn notify(&self) -> &[String] {
        match self {
            Item::File(f) => &f.notify,
            Item::Command(c) => &c.notify,
            _ => &[],
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
pub(crate) fn default_home(name: &str) -> String {
    if name == "root" {
        "/root".into()
    } else {
        format!("/home/{name}")
    }
}

/// `ssh` → `ssh.service`; names with a unit suffix stay as they are.
pub(crate) fn unit_name(name: &str) -> String {
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
pub(crate) fn handler_command(h: &Handler) -> String {
    use crate::model::desired::HandlerAction::*;
    use crate::transport::shell_quote;
    match &h.action {
        Restart(unit) => format!("systemctl restart {}", shell_quote(&unit_name(unit))),
        Reload(unit) => format!("systemctl reload {}", shell_quote(&unit_name(unit))),
        Run(cmd) => format!("sh -c {}", shell_quote(cmd)),
    }
}
