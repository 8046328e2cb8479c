//! `links:` — symbolic links. Observed by the shared `stat` and one
//! `readlink` each; made next to their place and renamed over it, so the
//! link is never missing. Never made over a directory.

use super::path::{on_host, parent, replaces};
use super::{ApplyCx, Change, Kind, PlanCx, ProbeCx, Prune, ReadCx, Saves, each, step};
use super::{Garbled, Need};
use crate::change::Action;
use crate::change::ResourceKind;
use crate::engine::item::Item;
use crate::engine::observed::{InventoryEntry, Observed};
use crate::engine::observed::{PathKind, PathState};
use crate::engine::sh::{Tag, Word, cmd};

/// Probe: a [`Tag::Link`] record (path, target) for each managed link that
/// is a link on the host.
pub(crate) fn probe(items: &[Item], root: &str) -> String {
    let mut s = String::new();
    for i in items {
        if let Item::Link { path, .. } = i {
            let rp = on_host(root, path);
            s.push_str(&format!(
                "[ -L {rp} ] && printf '{t}\\t%s\\t%s\\n' {rp} \"$(readlink -- {rp})\"\n",
                t = Tag::Link
            ));
        }
    }
    s
}

/// Read a [`Tag::Link`] record: the path (root still on it) and its target.
pub(crate) fn parse(record: &str) -> Result<(&str, &str), Garbled> {
    record.split_once('\t').ok_or(Garbled)
}

/// What a link needs. `Err` when a directory is in its place.
pub(crate) fn plan(path: &str, target: &str, have: Option<&PathState>) -> Result<Option<Need>, String> {
    let to = || Some(target.to_string());
    Ok(match have {
        None => Some(Need::new(Action::Create).attr("target", None, to())),
        Some(ps) if ps.kind == PathKind::Dir => {
            return Err(format!(
                "{path} is a directory on the host; tidekeeper will not replace it with a symlink"
            ));
        }
        Some(ps) if ps.kind != PathKind::Link => Some(replaces(ps).attr("target", None, to())),
        Some(ps) if ps.link_target.as_deref() != Some(target) => {
            Some(Need::new(Action::Update).attr("target", ps.link_target.clone(), to()))
        }
        Some(_) => None,
    })
}

/// Apply: a new link beside the old path, renamed over it.
pub(crate) fn apply(root: &str, path: &str, target: &str, action: Action) -> String {
    let p = on_host(root, path);
    let d = on_host(root, parent(path));
    let mut body = format!("[ -d {d} ] || mkdir -p {d} || return\n");
    if action == Action::Replace {
        body.push_str(&cmd("backup").arg(path).step());
    }
    body.push_str(&format!(
        "t={d}/.tidekeeper.link.$$; rm -f \"$t\"; ln -s {} \"$t\" && mv -Tf \"$t\" {p} || return\n",
        Word::quoted(target)
    ));
    body
}

/// `links:` as a [`Kind`].
pub(crate) struct Symlink;

impl Kind for Symlink {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Symlink
    }

    fn probe(&self, items: &[Item], cx: &ProbeCx) -> String {
        probe(items, cx.root)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Link]
    }

    fn read(&self, records: &[(Tag, &str)], cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            let (path, target) = parse(record)?;
            if let Some(ps) = o.paths.get_mut(&cx.strip(path)) {
                ps.link_target = Some(target.to_string());
            }
            Ok(())
        })
    }

    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Link { path, target } = item else {
            return Ok(None);
        };
        plan(path, target, cx.obs.paths.get(path))
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Link { path, target } = item else {
            return vec![];
        };
        step(c, apply(cx.root, path, target, c.action))
    }

    fn on_filesystem(&self) -> bool {
        true
    }

    fn prune(&self, e: &InventoryEntry, obs: &Observed) -> Prune {
        super::path::prune(e, obs)
    }

    fn remove(&self, root: &str, id: &str) -> Option<String> {
        Some(super::file::prune(root, id))
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
    use crate::engine::kinds::{sh_n, sh_n_step};

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let items = [Item::Link {
            path: "/etc/nginx/sites-enabled/a b".into(),
            target: "../sites-available/a b".into(),
        }];
        let s = probe(&items, "");
        assert_eq!(
            s,
            "[ -L '/etc/nginx/sites-enabled/a b' ] && printf 'L\\t%s\\t%s\\n' '/etc/nginx/sites-enabled/a b' \
             \"$(readlink -- '/etc/nginx/sites-enabled/a b')\"\n"
        );
        sh_n(&s);
        let body = apply("", "/usr/local/bin/x", "/opt/x;reboot", Action::Replace);
        assert_eq!(
            body,
            "[ -d /usr/local/bin ] || mkdir -p /usr/local/bin || return\nbackup /usr/local/bin/x || return\n\
             t=/usr/local/bin/.tidekeeper.link.$$; rm -f \"$t\"; ln -s '/opt/x;reboot' \"$t\" && mv -Tf \"$t\" /usr/local/bin/x || return\n"
        );
        sh_n_step(&body);
    }

    #[test]
    fn a_link_record_reads_back_and_a_change_is_planned_only_when_needed() {
        assert_eq!(parse("/x\t/y\tz").unwrap(), ("/x", "/y\tz"));
        assert_eq!(parse("/x").unwrap_err(), Garbled);
        let link = |kind, target: Option<&str>| PathState {
            kind,
            mode: 0o777,
            owner: "root".into(),
            group: "root".into(),
            size: 0,
            link_target: target.map(String::from),
        };
        assert_eq!(
            plan("/x", "/y", Some(&link(PathKind::Link, Some("/y")))).unwrap(),
            None
        );
        let need = plan("/x", "/y", Some(&link(PathKind::Link, Some("/z"))))
            .unwrap()
            .unwrap();
        assert_eq!(need.attrs[0].before.as_deref(), Some("/z"));
        assert_eq!(
            plan("/x", "/y", Some(&link(PathKind::File, None)))
                .unwrap()
                .unwrap()
                .action,
            Action::Replace
        );
        assert!(plan("/x", "/y", Some(&link(PathKind::Dir, None))).is_err());
    }
}
