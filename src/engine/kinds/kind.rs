//! The [`Kind`] trait every resource kind implements, what the stages hand
//! it ([`ProbeCx`], [`PlanCx`], [`ApplyCx`]), and what it answers with
//! ([`Need`](super::Need), [`Prune`], [`Saves`], [`Observe`]). A planned
//! [`Change`] lives here too: the kinds read it when they apply, the plan
//! makes it.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::Need;
use crate::change::{Action, Attr, ResourceKind};
use crate::engine::item::{FileItem, Item};
use crate::engine::observed::{Inventory, InventoryEntry, Observed, PathKind};
use crate::engine::sh::Tag;
use crate::model::desired::Confinement;

pub(crate) use super::file::ContentCheck;

/// One planned change to a resource of a host.
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

impl Change {
    /// A change with nothing but its kind, id and action.
    pub fn bare(kind: ResourceKind, id: &str, action: Action) -> Change {
        Change {
            kind,
            id: id.to_string(),
            action,
            attrs: vec![],
            diff: None,
            note: None,
            was: None,
            item: None,
            prune: false,
            notify: vec![],
        }
    }

    /// Does the change set `name` to `value`?
    pub fn sets(&self, name: &str, value: &str) -> bool {
        self.attrs
            .iter()
            .any(|a| a.name == name && a.after.as_deref() == Some(value))
    }
}

/// What the probe of a host is asked to do.
pub struct ProbeCx<'a> {
    /// Prefix of every path on the host (a local root, or empty).
    pub root: &'a str,
    pub content: ContentCheck,
}

/// What a kind reads its probe records with.
pub struct ReadCx<'a> {
    pub root: &'a str,
    pub items: &'a [Item],
}

impl ReadCx<'_> {
    /// A path as the config names it (the root taken off again).
    pub fn strip(&self, p: &str) -> String {
        p.strip_prefix(self.root).unwrap_or(p).to_string()
    }
}

/// What a kind plans an item with.
pub struct PlanCx<'a> {
    pub obs: &'a Observed,
    /// The changes planned before this item (a stack looks at its files').
    pub earlier: &'a [Change],
    /// What the plan should tell the user without blocking it.
    pub warnings: &'a mut Vec<String>,
}

/// What a kind writes its apply steps with.
pub struct ApplyCx<'a> {
    pub root: &'a str,
    /// Shell lines recording the handlers the change notifies as owed.
    pub owes: &'a str,
    /// Files whose new content was staged: path → staging directory.
    pub staged: &'a HashMap<String, usize>,
    /// Files written, checked at the end of the run: (sha256, path).
    pub written: &'a mut Vec<(String, String)>,
}

/// What becomes of a resource that left the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prune {
    /// Removed; for paths, what is there now.
    Delete(Option<PathKind>),
    /// Left on the host, and the plan says so.
    Warn(String),
    /// Left on the host silently (gone already, or never removed).
    Keep,
}

/// What the lockout guard saves before risky changes, for its rollback.
#[derive(Debug, Default)]
pub struct Saves {
    /// Files restored (or removed, when they did not exist).
    pub paths: Vec<String>,
    /// sshd's configuration changes: reload it after a rollback.
    pub ssh: bool,
    /// ufw's state is saved and restored as a whole.
    pub ufw: bool,
    /// Units restored to enabled/active/masked as they were.
    pub units: Vec<String>,
    /// Mount points remounted as fstab says after a rollback.
    pub mounts: Vec<String>,
}

/// Whether a proposal's item may be observed on its host.
#[derive(Debug, Clone)]
pub enum Observe {
    Yes,
    /// Not managed by the base: not observed.
    NotManaged,
    /// A file the base treats as secret: never compared.
    Secret,
    /// Observed as this item, without the guards the base does not have.
    Unguarded(Item),
}

/// A resource kind: every phase of it, so the stages call one interface
/// and the compiler lists what a new kind still lacks.
pub trait Kind: Sync {
    /// The kind of resource this is.
    fn kind(&self) -> ResourceKind;

    /// For a host setting (one value per host, under `settings:`): its name.
    fn setting(&self) -> Option<&'static str> {
        None
    }

    /// Shell lines that print this kind's records for `items` (all of the
    /// host's items; empty when none is of this kind).
    fn probe(&self, _items: &[Item], _cx: &ProbeCx) -> String {
        String::new()
    }

    /// The probe records this kind reads.
    fn tags(&self) -> &'static [Tag] {
        &[]
    }

    /// Read this kind's records (all of them, in order) into `o`. `Err`
    /// holds a record that does not read as its tag says.
    fn read(
        &self,
        _records: &[(Tag, &str)],
        _cx: &ReadCx,
        _o: &mut Observed,
    ) -> Result<(), String> {
        Ok(())
    }

    /// What an item of this kind needs; `Err` says why it must not be
    /// touched.
    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String>;

    /// The steps (what, shell body) that carry out a planned change.
    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)>;

    /// Can it be managed under a local root (a directory standing in for
    /// the host's `/`)? Only what lives in the filesystem, every path of
    /// it prefixed with the root, can.
    fn under_root(&self) -> bool {
        false
    }

    /// Applied with the filesystem: before systemd reloads its units.
    fn on_filesystem(&self) -> bool {
        false
    }

    /// A file that records the kind's state for the next boot, written
    /// when one of its items changes.
    fn persist(&self, _items: &[Item]) -> Option<FileItem> {
        None
    }

    /// Listed in the host's inventory (what the config no longer names is
    /// found there and pruned).
    fn inventoried(&self) -> bool {
        true
    }

    /// Record in the inventory what the kind keeps beside the entry (a
    /// command's definition, a stack's files).
    fn record(&self, _item: &Item, _inv: &mut Inventory) {}

    /// Why a change must not be made at all on a host reached over SSH:
    /// no rollback could undo it (the host would be out of reach).
    fn lockout(&self, _c: &Change) -> Option<String> {
        None
    }

    /// What becomes of `e`, which left the config.
    fn prune(&self, _e: &InventoryEntry, _obs: &Observed) -> Prune {
        Prune::Keep
    }

    /// The shell body that removes a pruned `id`.
    fn remove(&self, _root: &str, _id: &str) -> Option<String> {
        None
    }

    /// Where a prune goes among the others: units stop (0, 1) while their
    /// files exist (2), directories go after what is in them (3).
    fn prune_rank(&self) -> u8 {
        2
    }

    /// Can a change to `id` cut tidekeeper off from the host?
    fn is_risky(&self, _id: &str, _login_user: &str) -> bool {
        false
    }

    /// What the lockout guard saves before a risky change of this kind.
    fn save(&self, _c: &Change, _s: &mut Saves) {}

    /// May a proposal's item be observed, given what the base manages?
    /// Paths are observed where the base manages them; other kinds say.
    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        if item.path().is_none_or(|p| base.paths.contains(p)) {
            Observe::Yes
        } else {
            Observe::NotManaged
        }
    }

    /// Record what the base manages of `item` (its path is recorded for
    /// every kind).
    fn limit(&self, _item: &Item, _base: &mut Confinement) {}
}

/// The kind of what no registered kind owns: a host setting of a name no
/// kind has, or a kind a newer tidekeeper recorded in the inventory.
pub(crate) struct Unowned;

impl Kind for Unowned {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Unknown
    }

    fn plan(&self, item: &Item, _cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let known: BTreeSet<&str> = super::KINDS.iter().filter_map(|k| k.setting()).collect();
        Err(format!(
            "{} {}: tidekeeper has no such setting (it knows {})",
            item.kind(),
            item.id(),
            known.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }

    fn apply(&self, _c: &Change, _item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        vec![]
    }

    fn confine(&self, _item: &mut Item, _base: &Confinement) -> Observe {
        Observe::NotManaged
    }
}

/// One step of `body` that says what it does as the change does.
pub(crate) fn step(c: &Change, body: String) -> Vec<(String, String)> {
    vec![(format!("{} {}", c.kind, c.id), body)]
}

/// Read each record with `f`; the first that is garbled is the error.
pub(crate) fn each<'r>(
    records: &[(Tag, &'r str)],
    mut f: impl FnMut(Tag, &'r str) -> Result<(), super::Garbled>,
) -> Result<(), String> {
    for (tag, record) in records {
        f(*tag, record).map_err(|_| format!("{tag}\t{record}"))?;
    }
    Ok(())
}

/// Observed for a proposal where the base manages the same (kind, id).
pub(crate) fn managed(item: &Item, base: &Confinement) -> Observe {
    if base.managed.contains(&(item.kind(), item.id().to_string())) {
        Observe::Yes
    } else {
        Observe::NotManaged
    }
}
