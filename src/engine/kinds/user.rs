//! `users:` — local accounts. Observed from the whole passwd database (one
//! `getent passwd`) and the group database for memberships; made with
//! `useradd`, changed with `usermod`, removed only if tidekeeper made them.
//! Their authorized_keys come as ordinary file items.

use super::{ApplyCx, Change, Kind, PlanCx, ProbeCx, Prune, ReadCx, each, step};
use crate::change::ResourceKind;
use crate::engine::observed::{InventoryEntry, Observed};
use std::collections::{BTreeMap, BTreeSet};

use super::{Garbled, Need};
use crate::change::Action;
use crate::engine::item::{Item, UserItem};
use crate::engine::observed::{GroupEntry, PasswdEntry};
use crate::engine::sh::{Tag, Word, cmd};

/// Probe: the passwd database as [`Tag::Passwd`] records, when the host
/// has users or groups (a group's name may be a user's).
pub(crate) fn probe(items: &[Item]) -> String {
    if super::has_accounts(items) {
        format!("getent passwd | sed 's/^/{}\\t/'\n", Tag::Passwd)
    } else {
        String::new()
    }
}

/// Read one `getent passwd` line: the name and entry. Lines with fewer
/// fields are not accounts (`Ok(None)`).
pub(crate) fn parse(record: &str) -> Result<Option<(String, PasswdEntry)>, Garbled> {
    let c: Vec<&str> = record.split(':').collect();
    if c.len() < 7 {
        return Ok(None);
    }
    Ok(Some((
        c[0].to_string(),
        PasswdEntry {
            uid: c[2].parse().map_err(|_| Garbled)?,
            gid: c[3].parse().map_err(|_| Garbled)?,
            home: c[5].to_string(),
            shell: c[6].to_string(),
        },
    )))
}

/// What a user needs: made when missing; uid, shell, home and the list of
/// supplementary groups changed when they differ.
pub(crate) fn plan(
    u: &UserItem,
    have: Option<&PasswdEntry>,
    groups: &BTreeMap<String, GroupEntry>,
) -> Option<Need> {
    let Some(pw) = have else {
        let mut need = Need::new(Action::Create);
        if let Some(uid) = u.uid {
            need = need.attr("uid", None, Some(uid.to_string()));
        }
        if !u.groups.is_empty() {
            need = need.attr("groups", None, Some(u.groups.join(",")));
        }
        if let Some(s) = &u.shell {
            need = need.attr("shell", None, Some(s.clone()));
        }
        return Some(need.attr("home", None, Some(u.home.clone())));
    };
    let mut need = Need::new(Action::Update);
    if let Some(uid) = u.uid
        && uid != pw.uid
    {
        need = need.attr("uid", Some(pw.uid.to_string()), Some(uid.to_string()));
    }
    if let Some(s) = &u.shell
        && *s != pw.shell
    {
        need = need.attr("shell", Some(pw.shell.clone()), Some(s.clone()));
    }
    if u.home != pw.home {
        need = need.attr("home", Some(pw.home.clone()), Some(u.home.clone()));
    }
    let member_of: BTreeSet<&str> = groups
        .iter()
        .filter(|(_, g)| g.members.contains(&u.name))
        .map(|(n, _)| n.as_str())
        .collect();
    let want: BTreeSet<&str> = u.groups.iter().map(String::as_str).collect();
    if want != member_of {
        let join = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(",");
        need = need.attr("groups", Some(join(&member_of)), Some(join(&want)));
    }
    need.if_any()
}

/// Apply: `useradd` (with the group of its name as primary group when there
/// is one) or `usermod`, moving the home when it changes.
pub(crate) fn apply(u: &UserItem, action: Action, home_changes: bool) -> String {
    let with = |c: crate::engine::sh::Cmd| {
        let c = c
            .opt("-u", u.uid.map(Word::num))
            .opt("-s", u.shell.as_deref().map(Word::quoted));
        if u.groups.is_empty() && action == Action::Create {
            c
        } else {
            c.lit("-G").arg(&u.groups.join(","))
        }
    };
    if action == Action::Create {
        // A group of the user's name (managed here, or already there)
        // becomes its primary group; useradd would refuse it otherwise.
        let add = |primary: bool| {
            let c = cmd("useradd");
            let c = if primary { c.lit("-g").arg(&u.name) } else { c };
            let c = c.lit("-m").lit("-d").arg(&u.home);
            let c = if u.system { c.lit("-r") } else { c };
            with(c).lit("--").arg(&u.name)
        };
        format!(
            "if getent group {} >/dev/null; then {} || return; else {} || return; fi\n",
            Word::quoted(&u.name),
            add(true),
            add(false)
        )
    } else {
        let m = with(cmd("usermod"));
        let m = if home_changes {
            m.lit("-d").arg(&u.home).lit("-m")
        } else {
            m
        };
        m.lit("--").arg(&u.name).step()
    }
}

/// Prune a user tidekeeper made that left the config.
pub(crate) fn prune(name: &str) -> String {
    cmd("userdel").lit("--").arg(name).step()
}

/// Changing the login user or root can take tidekeeper's access.
pub(crate) fn is_risky(name: &str, login_user: &str) -> bool {
    name == login_user || name == "root"
}

/// `users:` as a [`Kind`].
pub(crate) struct User;

impl Kind for User {
    fn kind(&self) -> ResourceKind {
        ResourceKind::User
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Passwd]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            if let Some((name, pw)) = parse(record)? {
                o.users.insert(name, pw);
            }
            Ok(())
        })
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::User(u) = item else {
            return Ok(None);
        };
        Ok(plan(u, cx.obs.users.get(&u.name), &cx.obs.groups))
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::User(u) = item else {
            return vec![];
        };
        step(
            c,
            apply(u, c.action, c.attrs.iter().any(|a| a.name == "home")),
        )
    }

    /// Only a user tidekeeper made, and that is still there.
    fn prune(&self, e: &InventoryEntry, obs: &Observed) -> Prune {
        if e.created && obs.users.contains_key(&e.id) {
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
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn user() -> UserItem {
        UserItem {
            name: "deploy".into(),
            uid: Some(1500),
            groups: vec!["docker".into(), "adm".into()],
            shell: Some("/bin/bash".into()),
            home: "/home/deploy".into(),
            system: false,
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let items = [Item::User(user())];
        assert_eq!(probe(&items), "getent passwd | sed 's/^/W\\t/'\n");
        sh_n(&probe(&items));
        assert_eq!(probe(&[]), "");
        let add = apply(&user(), Action::Create, false);
        assert_eq!(
            add,
            "if getent group deploy >/dev/null; \
             then useradd -g deploy -m -d /home/deploy -u 1500 -s /bin/bash -G docker,adm -- deploy || return; \
             else useradd -m -d /home/deploy -u 1500 -s /bin/bash -G docker,adm -- deploy || return; fi\n"
        );
        sh_n_step(&add);
        let mut bare = user();
        bare.groups.clear();
        bare.uid = None;
        bare.shell = None;
        bare.system = true;
        assert!(
            apply(&bare, Action::Create, false)
                .contains("else useradd -m -d /home/deploy -r -- deploy || return; fi")
        );
        let m = apply(&bare, Action::Update, true);
        assert_eq!(m, "usermod -G '' -d /home/deploy -m -- deploy || return\n");
        sh_n_step(&m);
        assert_eq!(prune("old"), "userdel -- old || return\n");
    }

    #[test]
    fn a_hostile_name_stays_one_word_everywhere() {
        let mut u = user();
        u.name = "x$(reboot)'; rm -rf /".into();
        u.home = "/home/a b".into();
        for body in [
            apply(&u, Action::Create, false),
            apply(&u, Action::Update, true),
            prune(&u.name),
        ] {
            assert!(body.contains("'x$(reboot)'\\''; rm -rf /'"), "{body}");
            sh_n_step(&body);
        }
    }

    #[test]
    fn a_passwd_line_reads_back_and_a_change_is_planned_only_when_needed() {
        let (name, pw) = parse("deploy:x:1500:1500::/home/deploy:/bin/bash")
            .unwrap()
            .unwrap();
        assert_eq!(name, "deploy");
        assert_eq!(
            (pw.uid, pw.gid, pw.shell.as_str()),
            (1500, 1500, "/bin/bash")
        );
        assert_eq!(parse("short:x:1").unwrap(), None);
        assert_eq!(parse("a:x:NaN:1::/h:/bin/sh").unwrap_err(), Garbled);

        let mut groups = BTreeMap::new();
        for g in ["docker", "adm"] {
            groups.insert(
                g.to_string(),
                GroupEntry {
                    gid: 1,
                    members: vec!["deploy".into()],
                },
            );
        }
        assert_eq!(plan(&user(), Some(&pw), &groups), None);
        groups.get_mut("adm").unwrap().members.clear();
        let need = plan(&user(), Some(&pw), &groups).unwrap();
        assert_eq!(
            (
                need.attrs[0].name.as_str(),
                need.attrs[0].before.as_deref(),
                need.attrs[0].after.as_deref()
            ),
            ("groups", Some("docker"), Some("adm,docker"))
        );
        let need = plan(&user(), None, &groups).unwrap();
        assert_eq!((need.action, need.attrs.len()), (Action::Create, 4));
        assert!(is_risky("root", "admin") && is_risky("admin", "admin"));
        assert!(!is_risky("deploy", "admin"));
    }
}
