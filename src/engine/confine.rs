//! Planning a proposal's host within what the trusted base manages there
//! ([`Confinement`]): which items the probe may look at (each kind says,
//! through [`Kind::confine`](super::kinds::Kind::confine)), and how the
//! plan says what was not looked at. Pure.

use super::item::Item;
use super::kinds::Observe;
use super::plan::{Action, Change, HostPlan, ResourceKind};
use crate::model::desired::Confinement;

pub(crate) const NOT_READ: &str = "current content not shown (not managed on the base branch)";
pub(crate) const GUARD_NOT_RUN: &str = "runs if its guard says so (not evaluated for proposals)";

/// What the probe leaves alone on a confined host.
#[derive(Debug, Default)]
pub(crate) struct Unobserved {
    /// Paths, sysctl keys and stacks the base does not manage.
    pub ids: Vec<String>,
    /// Commands whose guards differ from the base's.
    pub guards: Vec<String>,
    /// Files holding secrets (never decrypted for proposals).
    pub secrets: Vec<String>,
}

/// Mark content sensitive where the base does (whatever the proposal says),
/// then split off what may be probed.
pub(crate) fn split(items: &mut [Item], c: &Confinement) -> (Vec<Item>, Unobserved) {
    let mut un = Unobserved::default();
    let mut probed = Vec::new();
    for i in items.iter_mut() {
        match i.kind_impl().confine(i, c) {
            Observe::Yes => probed.push(i.clone()),
            Observe::NotManaged => un.ids.push(i.id().to_string()),
            Observe::Secret => un.secrets.push(i.id().to_string()),
            Observe::Unguarded(unguarded) => {
                un.guards.push(i.id().to_string());
                probed.push(unguarded);
            }
        }
    }
    (probed, un)
}

/// A proposal's new host: its guarded commands show as "runs if its guard
/// says so" (the preview observed nothing, so it cannot say otherwise).
pub(crate) fn new_host(plan: &mut HostPlan, items: &[Item]) {
    let nothing = Confinement::default();
    let un = Unobserved {
        guards: items
            .iter()
            .filter(|i| {
                let mut i = (*i).clone();
                matches!(
                    i.kind_impl().confine(&mut i, &nothing),
                    Observe::Unguarded(_)
                )
            })
            .map(|i| i.id().to_string())
            .collect(),
        ..Default::default()
    };
    annotate(plan, &un);
}

/// Say in the plan what was not observed.
pub(crate) fn annotate(plan: &mut HostPlan, un: &Unobserved) {
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
            None => {
                let mut c = Change::bare(ResourceKind::Command, name, Action::Run);
                c.note = Some(GUARD_NOT_RUN.into());
                plan.changes.push(c);
            }
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
        c.managed.insert((ResourceKind::Mount, "/srv/data".into()));
        let mut items = vec![mount("/srv/data"), mount("/home")];
        let (probed, un) = split(&mut items, &c);
        assert_eq!(probed.len(), 1);
        assert_eq!(probed[0].id(), "/srv/data");
        assert_eq!(un.ids, ["/home"]);
    }
}
