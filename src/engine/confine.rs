//! Planning a proposal's host within what the trusted base manages there
//! ([`Confinement`]): which items the probe may look at, and how the plan
//! says what was not looked at. Pure.

use super::item::Item;
use super::plan::{Action, Change, HostPlan, ResourceKind};
use crate::model::desired::{Confinement, SENSITIVE};

pub const NOT_READ: &str = "current content not shown (not managed on the base branch)";
pub const GUARD_NOT_RUN: &str = "runs if its guard says so (not evaluated for proposals)";

/// What the probe leaves alone on a confined host.
#[derive(Debug, Default)]
pub struct Unobserved {
    /// Paths, sysctl keys and stacks the base does not manage.
    pub ids: Vec<String>,
    /// Commands whose guards differ from the base's.
    pub guards: Vec<String>,
    /// Files holding secrets (never decrypted for proposals).
    pub secrets: Vec<String>,
}

fn is_placeholder(bytes: &[u8]) -> bool {
    let p = SENSITIVE.as_bytes();
    bytes.windows(p.len()).any(|w| w == p)
}

/// Mark content sensitive where the base does (whatever the proposal says),
/// then split off what may be probed.
pub fn split(items: &mut [Item], c: &Confinement) -> (Vec<Item>, Unobserved) {
    let mut un = Unobserved::default();
    let mut probed = Vec::new();
    for i in items.iter_mut() {
        if let Item::File(f) = i
            && c.sensitive.contains(&f.path)
        {
            f.content.sensitive = true;
        }
        // A path the base treats as secret is never compared, whatever
        // content the proposal gives it: a guess would be confirmed.
        if let Item::File(f) = &*i
            && f.content.sensitive
            && (is_placeholder(&f.content.bytes) || c.sensitive.contains(&f.path))
        {
            un.secrets.push(f.path.clone());
            continue;
        }
        let allowed = match &*i {
            Item::Sysctl { key, .. } => c.sysctl.contains(key),
            Item::Stack { name, .. } => c.stacks.contains(name),
            Item::Mount { path, .. } => c.mounts.contains(path),
            other => other.path().is_none_or(|p| c.paths.contains(p)),
        };
        if !allowed {
            un.ids.push(i.id().to_string());
            continue;
        }
        if let Item::Command(cmd) = i {
            let guard = (
                cmd.name.clone(),
                cmd.creates.clone(),
                cmd.unless.clone(),
                cmd.onlyif.clone(),
            );
            let guarded = cmd.creates.is_some() || cmd.unless.is_some() || cmd.onlyif.is_some();
            if guarded && !c.guards.contains(&guard) {
                // Not even its `creates:` path is looked at: it would tell
                // whether a path the base does not show exists.
                un.guards.push(cmd.name.clone());
                let mut unguarded = cmd.clone();
                unguarded.creates = None;
                unguarded.unless = None;
                unguarded.onlyif = None;
                probed.push(Item::Command(unguarded));
                continue;
            }
        }
        probed.push(i.clone());
    }
    (probed, un)
}

/// A proposal's new host: its guarded commands show as "runs if its guard
/// says so" (the preview observed nothing, so it cannot say otherwise).
pub fn new_host(plan: &mut HostPlan, items: &[Item]) {
    let un = Unobserved {
        guards: items
            .iter()
            .filter_map(|i| match i {
                Item::Command(c)
                    if c.unless.is_some() || c.onlyif.is_some() || c.creates.is_some() =>
                {
                    Some(c.name.clone())
                }
                _ => None,
            })
            .collect(),
        ..Default::default()
    };
    annotate(plan, &un);
}

/// Say in the plan what was not observed.
pub fn annotate(plan: &mut HostPlan, un: &Unobserved) {
    plan.changes
        .retain(|c| !(c.kind == ResourceKind::File && un.secrets.contains(&c.id)));
    for c in plan.changes.iter_mut() {
        if un.ids.contains(&c.id) && c.kind != ResourceKind::Command {
            c.note = Some(match c.kind {
                k if k.is_path() || k == ResourceKind::Absent => NOT_READ.into(),
                _ => "current state not observed (not managed on the base branch)".into(),
            });
        }
    }
    for name in &un.guards {
        match plan
            .changes
            .iter_mut()
            .find(|c| c.kind == ResourceKind::Command && c.id == *name)
        {
            Some(c) => c.note = Some(GUARD_NOT_RUN.into()),
            None => plan.changes.push(Change {
                kind: ResourceKind::Command,
                id: name.clone(),
                action: Action::Run,
                attrs: vec![],
                diff: None,
                note: Some(GUARD_NOT_RUN.into()),
                was: None,
                item: None,
                prune: false,
                notify: vec![],
            }),
        }
    }
    if !un.secrets.is_empty() {
        plan.warnings.push(format!(
            "not compared (secrets are never decrypted for proposals): {}",
            un.secrets.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::observed::FstabEntry;
    use crate::model::desired::MountState;

    /// A proposal's mount is looked at (fstab, findmnt) only where the base
    /// manages that mount point: a proposal cannot use the probe to learn
    /// what is mounted elsewhere.
    #[test]
    fn a_proposal_observes_a_mount_only_where_the_base_has_it() {
        let mount = |path: &str| Item::Mount {
            path: path.into(),
            entry: FstabEntry {
                device: "tmpfs".into(),
                fstype: "tmpfs".into(),
                options: "defaults".into(),
            },
            state: MountState::Mounted,
        };
        let mut c = Confinement::default();
        c.mounts.insert("/srv/data".into());
        let mut items = vec![mount("/srv/data"), mount("/home")];
        let (probed, un) = split(&mut items, &c);
        assert_eq!(probed.len(), 1);
        assert_eq!(probed[0].id(), "/srv/data");
        assert_eq!(un.ids, ["/home"]);
    }
}
