//! `absent:` — paths that must not exist. Observed by the shared `stat`; a
//! file or link is backed up and removed, a directory removed with what is
//! in it.

use super::Need;
use super::path::on_host;
use super::{ApplyCx, Change, Kind, PlanCx, Saves, step};
use crate::change::Action;
use crate::change::ResourceKind;
use crate::engine::item::Item;
use crate::engine::observed::{PathKind, PathState};
use crate::engine::sh::cmd;

/// A path that is there goes.
pub(crate) fn plan(have: Option<&PathState>) -> Option<Need> {
    have.map(|ps| {
        let mut need = Need::new(Action::Delete).note(format!("removes a {}", ps.kind.word()));
        need.was = Some(ps.kind);
        need
    })
}

/// Apply: remove it (a file or link backed up first).
pub(crate) fn apply(root: &str, path: &str, was: Option<PathKind>) -> String {
    let p = on_host(root, path);
    if was == Some(PathKind::Dir) {
        format!("rm -rf -- {p} || return\n")
    } else {
        format!("{}rm -f {p} || return\n", cmd("backup").arg(path).step())
    }
}

/// `absent:` as a [`Kind`].
pub(crate) struct Absent;

impl Kind for Absent {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Absent
    }

    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Absent { path } = item else {
            return Ok(None);
        };
        Ok(plan(cx.obs.paths.get(path)))
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Absent { path } = item else {
            return vec![];
        };
        step(c, apply(cx.root, path, c.was))
    }

    fn on_filesystem(&self) -> bool {
        true
    }

    /// Nothing is there to manage once it is gone.
    fn inventoried(&self) -> bool {
        false
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

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        assert_eq!(
            apply("", "/tmp/-rf *", Some(PathKind::Dir)),
            "rm -rf -- '/tmp/-rf *' || return\n"
        );
        let body = apply("/r", "/etc/cron.d/old;x", Some(PathKind::File));
        assert_eq!(
            body,
            "backup '/etc/cron.d/old;x' || return\nrm -f '/r/etc/cron.d/old;x' || return\n"
        );
        sh_n_step(&body);
    }

    #[test]
    fn only_a_path_that_is_there_is_removed() {
        assert_eq!(plan(None), None);
        let ps = PathState {
            kind: PathKind::Dir,
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
            size: 0,
            link_target: None,
        };
        let need = plan(Some(&ps)).unwrap();
        assert_eq!(
            (need.action, need.was, need.note.as_deref()),
            (
                Action::Delete,
                Some(PathKind::Dir),
                Some("removes a directory")
            )
        );
    }
}
