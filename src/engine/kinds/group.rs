//! `groups:` — local groups. Observed from the whole group database (one
//! `getent group`, also read for users' memberships), made with `groupadd`,
//! changed with `groupmod`. Removed only if tidekeeper created them.

use super::Garbled;
use super::{ApplyCx, Change, Kind, Need, PlanCx, ProbeCx, Prune, ReadCx, each, step};
use crate::change::ResourceKind;
use crate::change::{Action, Attr};
use crate::engine::item::Item;
use crate::engine::observed::GroupEntry;
use crate::engine::observed::{InventoryEntry, Observed};
use crate::engine::sh::Tag;
use crate::transport::shell_quote as q;

/// Probe: the group database as [`Tag::GroupLine`] records, when the host
/// has groups or users (whose memberships it holds).
pub(crate) fn probe(items: &[Item]) -> String {
    if super::has_accounts(items) {
        format!("getent group | sed 's/^/{}\\t/'\n", Tag::GroupLine)
    } else {
        String::new()
    }
}

/// Read one `getent group` line (after its tag): name and entry. Lines with
/// fewer fields are not groups (`Ok(None)`); a gid that is not a number is
/// garbled output.
pub(crate) fn parse(record: &str) -> Result<Option<(String, GroupEntry)>, Garbled> {
    let c: Vec<&str> = record.split(':').collect();
    if c.len() < 4 {
        return Ok(None);
    }
    let gid = c[2].parse().map_err(|_| Garbled)?;
    let members = c[3]
        .split(',')
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect();
    Ok(Some((c[0].to_string(), GroupEntry { gid, members })))
}

/// What a group needs: made when missing (with its gid if given), its gid
/// changed when given and different; None when it is as wanted.
pub(crate) fn plan(have: Option<&GroupEntry>, gid: Option<u32>) -> Option<(Action, Vec<Attr>)> {
    let attr = |before: Option<u32>, after: u32| Attr {
        name: "gid".into(),
        before: before.map(|g| g.to_string()),
        after: Some(after.to_string()),
    };
    match (have, gid) {
        (None, want) => Some((
            Action::Create,
            want.map(|g| attr(None, g)).into_iter().collect(),
        )),
        (Some(g), Some(want)) if want != g.gid => {
            Some((Action::Update, vec![attr(Some(g.gid), want)]))
        }
        (Some(_), _) => None,
    }
}

/// Apply: make or change the group.
pub(crate) fn apply(action: Action, name: &str, gid: Option<u32>) -> String {
    let g = gid.map(|g| format!("-g {g} ")).unwrap_or_default();
    let cmd = if action == Action::Create {
        "groupadd"
    } else {
        "groupmod"
    };
    format!("{cmd} {g}-- {} || return\n", q(name))
}

/// Prune a group tidekeeper made that left the config.
pub(crate) fn prune(name: &str) -> String {
    format!("groupdel -- {} || return\n", q(name))
}

/// Changing the group named like the login user can take its access (its
/// primary group, sudo rules by group).
pub(crate) fn is_risky(name: &str, login_user: &str) -> bool {
    name == login_user
}

/// `groups:` as a [`Kind`].
pub(crate) struct Group;

impl Kind for Group {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Group
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::GroupLine]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            if let Some((name, g)) = parse(record)? {
                o.groups.insert(name, g);
            }
            Ok(())
        })
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Group { name, gid } = item else {
            return Ok(None);
        };
        Ok(plan(cx.obs.groups.get(name), *gid).map(|(action, attrs)| {
            let mut need = Need::new(action);
            need.attrs = attrs;
            need
        }))
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Group { name, gid } = item else {
            return vec![];
        };
        step(c, apply(c.action, name, *gid))
    }

    /// Only a group tidekeeper made, and that is still there.
    fn prune(&self, e: &InventoryEntry, obs: &Observed) -> Prune {
        if e.created && obs.groups.contains_key(&e.id) {
            Prune::Delete(None)
        } else {
            Prune::Keep
        }
    }

    fn remove(&self, _root: &str, id: &str) -> Option<String> {
        Some(prune(id))
    }

    fn is_risky(&self, id: &str, login_user: &str) -> bool {
        is_risky(id, login_user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::sh_n;

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let items = [Item::Group {
            name: "deploy".into(),
            gid: Some(2000),
        }];
        let getent = probe(&items);
        assert_eq!(getent, "getent group | sed 's/^/G\\t/'\n");
        sh_n(&getent);
        assert_eq!(probe(&[]), "");
        let add = apply(Action::Create, "deploy", Some(2000));
        assert_eq!(add, "groupadd -g 2000 -- deploy || return\n");
        let modify = apply(Action::Update, "-rf $(reboot)", None);
        assert_eq!(modify, "groupmod -- '-rf $(reboot)' || return\n");
        for body in [add, modify] {
            sh_n(&format!("f() {{\n{body}}}"));
        }
    }

    #[test]
    fn a_group_line_reads_back_and_a_change_is_planned_only_when_needed() {
        let (name, g) = parse("docker:x:998:alice,bob").unwrap().unwrap();
        assert_eq!(name, "docker");
        assert_eq!(g.gid, 998);
        assert_eq!(g.members, ["alice", "bob"]);
        assert_eq!(
            parse("nogroup:x:65534:").unwrap().unwrap().1.members.len(),
            0
        );
        assert_eq!(parse("short:x").unwrap(), None);
        assert_eq!(parse("bad:x:NaN:").unwrap_err(), Garbled);

        assert!(plan(Some(&g), None).is_none(), "no gid asked: as it is");
        assert!(plan(Some(&g), Some(998)).is_none());
        let (action, attrs) = plan(Some(&g), Some(2000)).unwrap();
        assert_eq!(action, Action::Update);
        assert_eq!(
            (attrs[0].before.as_deref(), attrs[0].after.as_deref()),
            (Some("998"), Some("2000"))
        );
        let (action, attrs) = plan(None, None).unwrap();
        assert_eq!((action, attrs.len()), (Action::Create, 0));
        assert!(is_risky("admin", "admin"));
        assert!(!is_risky("docker", "admin"));
    }
}
