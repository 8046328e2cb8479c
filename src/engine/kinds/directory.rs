//! `directories:`. Observed by the shared `stat`; made with `mkdir -p`, its
//! mode and ownership set every time it changes. A directory that left the
//! config is removed only when empty.

use super::Need;
use super::path::{on_host, ownership, replaces};
use super::{ApplyCx, Change, Kind, PlanCx, Prune, Saves, step};
use crate::change::Action;
use crate::change::ResourceKind;
use crate::engine::item::Item;
use crate::engine::observed::{InventoryEntry, Observed};
use crate::engine::observed::{PathKind, PathState};
use crate::engine::sh::{Word, cmd};

/// What a directory needs.
pub(crate) fn plan(
    have: Option<&PathState>,
    mode: Option<u32>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Option<Need> {
    match have {
        None => Some(Need::new(Action::Create)),
        Some(ps) if ps.kind != PathKind::Dir => Some(replaces(ps)),
        Some(ps) => ownership(Need::new(Action::Update), ps, mode, owner, group).if_any(),
    }
}

/// Apply: move what is in the way aside, make the directory, set its mode
/// (0755 unless the config says) and ownership.
pub(crate) fn apply(
    root: &str,
    path: &str,
    action: Action,
    mode: Option<u32>,
    owner: Option<&str>,
    group: Option<&str>,
) -> String {
    let p = on_host(root, path);
    let mut body = String::new();
    if action == Action::Replace {
        body.push_str(&format!(
            "{}rm -f {p} || return\n",
            cmd("backup").arg(path).step()
        ));
    }
    body.push_str(&format!("mkdir -p {p} || return\n"));
    body.push_str(&format!(
        "chmod {} {p} || return\n",
        Word::mode(mode.unwrap_or(0o755))
    ));
    if let Some(o) = owner {
        body.push_str(&format!("chown {} {p} || return\n", Word::quoted(o)));
    }
    if let Some(g) = group {
        body.push_str(&super::path::set_group(g, owner, &p));
    }
    body
}

/// Prune: removed only when empty; otherwise a warning, and it stays.
pub(crate) fn prune(root: &str, path: &str) -> String {
    format!(
        "rmdir {} 2>/dev/null || printf '@@warn %s\\n' {}\n",
        on_host(root, path),
        Word::quoted(&format!("directory {path} is not empty; left in place"))
    )
}

/// `directories:` as a [`Kind`].
pub(crate) struct Directory;

impl Kind for Directory {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Directory
    }

    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Dir {
            path,
            mode,
            owner,
            group,
        } = item
        else {
            return Ok(None);
        };
        Ok(plan(
            cx.obs.paths.get(path),
            *mode,
            owner.as_deref(),
            group.as_deref(),
        ))
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Dir {
            path,
            mode,
            owner,
            group,
        } = item
        else {
            return vec![];
        };
        step(
            c,
            apply(
                cx.root,
                path,
                c.action,
                *mode,
                owner.as_deref(),
                group.as_deref(),
            ),
        )
    }

    fn on_filesystem(&self) -> bool {
        true
    }

    fn prune(&self, e: &InventoryEntry, obs: &Observed) -> Prune {
        super::path::prune(e, obs)
    }

    fn remove(&self, root: &str, id: &str) -> Option<String> {
        Some(prune(root, id))
    }

    /// After what is in them.
    fn prune_rank(&self) -> u8 {
        3
    }

    fn is_risky(&self, id: &str, login_user: &str) -> bool {
        super::path::is_risky(id, login_user)
    }

    fn save(&self, c: &Change, s: &mut Saves) {
        super::path::save(c, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::sh_n_step;

    fn dir(kind: PathKind, mode: u32) -> PathState {
        PathState {
            kind,
            mode,
            owner: "root".into(),
            group: "root".into(),
            size: 4096,
            link_target: None,
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let body = apply(
            "",
            "/srv/a b",
            Action::Replace,
            Some(0o750),
            Some("app"),
            None,
        );
        assert_eq!(
            body,
            "backup '/srv/a b' || return\nrm -f '/srv/a b' || return\nmkdir -p '/srv/a b' || return\n\
             chmod 0750 '/srv/a b' || return\nchown app '/srv/a b' || return\n"
        );
        sh_n_step(&body);
        let hostile = apply(
            "/r",
            "/srv/$(reboot)",
            Action::Create,
            None,
            None,
            Some("g`id`"),
        );
        assert!(hostile.contains("mkdir -p '/r/srv/$(reboot)'"));
        assert!(hostile.contains("chgrp 'g`id`'"));
        sh_n_step(&hostile);
        let gone = prune("", "/srv/old dir");
        assert_eq!(
            gone,
            "rmdir '/srv/old dir' 2>/dev/null || printf '@@warn %s\\n' 'directory /srv/old dir is not empty; left in place'\n"
        );
        sh_n_step(&gone);
    }

    #[test]
    fn a_change_is_planned_only_when_needed() {
        assert_eq!(plan(None, None, None, None).unwrap().action, Action::Create);
        assert_eq!(
            plan(
                Some(&dir(PathKind::Dir, 0o755)),
                Some(0o755),
                Some("root"),
                None
            ),
            None
        );
        let need = plan(Some(&dir(PathKind::Dir, 0o755)), Some(0o700), None, None).unwrap();
        assert_eq!(
            (
                need.attrs[0].before.as_deref(),
                need.attrs[0].after.as_deref()
            ),
            (Some("0755"), Some("0700"))
        );
        let need = plan(Some(&dir(PathKind::File, 0o644)), None, None, None).unwrap();
        assert_eq!(
            (need.action, need.was),
            (Action::Replace, Some(PathKind::File))
        );
    }
}
