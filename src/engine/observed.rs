//! What the probe saw on a host: plain data, read by every kind's plan
//! rule. Kept apart from the probe script so the kinds depend on the data
//! and the probe depends on the kinds, never both ways.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::desired::FirewallRule;

/// Where tidekeeper keeps its state on a host.
pub(crate) const STATE_DIR: &str = "/var/lib/tidekeeper";
/// Text files up to this size are fetched when they differ, for diffs.
pub(crate) const DIFF_LIMIT: u64 = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub paths: BTreeMap<String, PathState>,
    /// Paths whose content differs from the desired checksum (or are unreadable).
    pub content_differs: BTreeSet<String>,
    /// Current content of differing, non-sensitive, small files.
    pub contents: BTreeMap<String, Vec<u8>>,
    pub packages: BTreeMap<String, PackageState>,
    pub units: BTreeMap<String, UnitState>,
    pub users: BTreeMap<String, PasswdEntry>,
    pub groups: BTreeMap<String, GroupEntry>,
    pub firewall: Option<FirewallState>,
    pub sysctl: BTreeMap<String, Option<String>>,
    /// Host settings by name: what the setting's probe printed.
    pub settings: BTreeMap<String, String>,
    /// fstab entries by mount point.
    pub fstab: BTreeMap<String, FstabEntry>,
    /// Managed mount points that are mounted: what is mounted there.
    pub mounted: BTreeMap<String, String>,
    /// Command name → why it would run (None: guards say skip).
    pub commands: BTreeMap<String, Option<String>>,
    /// Stack name → its containers.
    pub stacks: BTreeMap<String, Vec<Container>>,
    pub inventory: Inventory,
    /// Handlers a failed earlier run still owes.
    pub pending_handlers: Vec<String>,
    /// Commands whose last run failed, and how ("failed at …: exit 3").
    pub failed: BTreeMap<String, String>,
    /// Ancestor directories of managed paths that are symlinks not owned by
    /// root: (path, owner, target). Writing through them could land anywhere.
    pub unsafe_parents: Vec<(String, String)>,
    /// Between full checks: whether the host's record of settled files
    /// stood in for statting and hashing every managed file.
    pub settled: Settled,
    /// The SHA-256 of the stat cache this probe recorded, if it did.
    pub recorded: Option<String>,
    /// What the host is (architecture, release, memory, …).
    pub facts: Option<crate::model::Facts>,
}

impl Observed {
    /// SHA-256 of everything the probe saw on the host, as hex: what a saved
    /// plan was planned against. How the probe looked (`settled`, the stat
    /// cache it `recorded`) is left out: it is not what is there.
    pub(crate) fn digest(&self) -> String {
        let Observed {
            paths,
            content_differs,
            contents,
            packages,
            units,
            users,
            groups,
            firewall,
            sysctl,
            settings,
            fstab,
            mounted,
            commands,
            stacks,
            inventory,
            pending_handlers,
            failed,
            unsafe_parents,
            settled: _,
            recorded: _,
            // What the host is, not what is on it: templates that read
            // facts are rendered with them, and the content is compared.
            facts: _,
        } = self;
        // Every map is ordered: the same state writes the same text.
        let seen = format!(
            "{:?}",
            (
                (paths, content_differs, contents, packages, units, users),
                (groups, firewall, sysctl, settings, fstab, mounted),
                (commands, stacks, inventory, pending_handlers, failed),
                unsafe_parents,
            )
        );
        crate::digest::sha256_hex(seen.as_bytes())
    }
}

/// The record of settled files, as a probe found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Settled {
    /// Not asked: every managed path was probed.
    #[default]
    NotAsked,
    /// Not this config's, or not the stat cache's as it is: probe in full.
    Miss,
    /// Used: `moved` files were probed; the rest are as wanted.
    Hit { moved: usize },
}

/// A container of a compose project, as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub service: String,
    /// `running`, `exited`, …
    pub state: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub kind: PathKind,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub size: u64,
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    Link,
    Other,
}

impl PathKind {
    pub fn word(self) -> &'static str {
        match self {
            PathKind::File => "file",
            PathKind::Dir => "directory",
            PathKind::Link => "symlink",
            PathKind::Other => "special file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackageState {
    pub installed: Option<String>,
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    pub load: String,
    pub active: String,
    pub file_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub gid: u32,
    pub members: Vec<String>,
}

/// An fstab entry: what is mounted at its mount point, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub device: String,
    pub fstype: String,
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirewallState {
    pub enabled: bool,
    pub incoming: String,
    pub outgoing: String,
    /// ufw's policy for forwarded packets (`deny` when ufw says DROP).
    pub routed: String,
    pub rules: Vec<FirewallRule>,
    /// Rules in forms tidekeeper does not write (left alone).
    pub foreign: Vec<String>,
    /// The rules of the chains that filter containers' traffic.
    pub containers: Vec<String>,
}

/// Steps that completed since the inventory was last written whole, one
/// line each (`kind\tname\tchecksum`), appended by the step itself right
/// after it succeeded; the next whole write of the inventory folds them in.
pub(crate) const RAN: &str = "ran";
/// Commands that failed since the inventory was last written whole
/// (`name\twhen\texit code`): why the next plan runs them again.
pub(crate) const FAILED: &str = "failed";

/// What tidekeeper manages on a host, kept in `/var/lib/tidekeeper/inventory.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    pub resources: Vec<InventoryEntry>,
    /// Command name → checksum of its definition when it last ran.
    #[serde(default)]
    pub commands: BTreeMap<String, String>,
    /// Stack name → checksum of its files when it was last brought up.
    #[serde(default)]
    pub stacks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InventoryEntry {
    pub kind: crate::change::ResourceKind,
    pub id: String,
    /// tidekeeper created it (users and groups are only removed if so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_what_a_probe_saw_moves_with_the_host_not_with_how_it_looked() {
        let mut seen = Observed::default();
        seen.paths.insert(
            "/etc/motd".into(),
            PathState {
                kind: PathKind::File,
                mode: 0o644,
                owner: "root".into(),
                group: "root".into(),
                size: 4,
                link_target: None,
            },
        );
        let digest = seen.digest();
        assert_eq!(digest.len(), 64);
        let mut looked = seen.clone();
        looked.settled = Settled::Hit { moved: 0 };
        looked.recorded = Some("abc".into());
        assert_eq!(looked.digest(), digest, "how the probe looked is left out");
        let mut edited = seen.clone();
        edited.content_differs.insert("/etc/motd".into());
        assert_ne!(edited.digest(), digest);
        let mut chmod = seen.clone();
        chmod.paths.get_mut("/etc/motd").unwrap().mode = 0o600;
        assert_ne!(chmod.digest(), digest);
    }
}
