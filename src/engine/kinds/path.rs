//! What the four path kinds (file, directory, symlink, absent) share: one
//! `stat` over every managed path and every path tidekeeper managed before,
//! the check of their ancestors for planted symlinks, the comparison of
//! mode and ownership, and the lockout rule for paths access depends on.

use super::{Change, Garbled, Need, Prune, Saves};
use crate::engine::item::Item;
use crate::engine::observed::{InventoryEntry, Observed, PathKind, PathState, STATE_DIR};
use crate::engine::sh::Tag;
use crate::transport::shell_quote as q;

/// Paths whose change can cut off SSH access.
const ACCESS_PATHS: [&str; 10] = [
    "/etc/ssh/",
    "/etc/sudoers",
    "/etc/pam.d/",
    "/etc/network/",
    "/etc/netplan/",
    "/etc/systemd/network/",
    "/etc/ufw/",
    "/etc/hosts.allow",
    "/etc/hosts.deny",
    "/etc/security/access.conf",
];

/// Probe: [`Tag::Stat`] records for every managed path (but files, with
/// `settled_files`: the record of settled files stands in for them) and
/// every path the host's list of managed paths holds, and [`Tag::Ancestor`]
/// records for ancestors that are symlinks. `root` prefixes every path.
pub(crate) fn probe(items: &[Item], root: &str, settled_files: bool) -> String {
    let p = |path: &str| format!("{root}{path}");
    let mut s = String::new();
    let mut paths: Vec<String> = items
        .iter()
        .filter(|i| !(settled_files && matches!(i, Item::File(_))))
        .filter_map(|i| i.path())
        .map(p)
        .collect();
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        s.push_str(&format!(
            "stat -c '{}\t%F\t%a\t%U\t%G\t%s\t%n' --",
            Tag::Stat
        ));
        for path in &paths {
            s.push(' ');
            s.push_str(&q(path));
        }
        s.push('\n');
    }
    // A symlink among the ancestors that root does not own may have been
    // planted to redirect a write.
    let ancestors: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i.path())
        .flat_map(|path| {
            path.match_indices('/')
                .filter(|(i, _)| *i > 0)
                .map(|(i, _)| &path[..i])
        })
        .collect();
    if !ancestors.is_empty() {
        s.push_str(&format!("stat -c '{}\t%F\t%U\t%n' --", Tag::Ancestor));
        for a in &ancestors {
            s.push(' ');
            s.push_str(&q(&p(a)));
        }
        s.push_str(&format!(" | grep '^{}\tsymbolic link'\n", Tag::Ancestor));
    }
    // Paths tidekeeper managed before (to prune what left the config),
    // unless the host's list is this config's: the digest beside it says so
    // without a process, and a drift check of 10,000 files stats them once.
    let sed_root = root
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('&', "\\&");
    let digest = managed_digest(items.iter().filter_map(|i| match i {
        Item::File(_) | Item::Dir { .. } | Item::Link { .. } => i.path(),
        _ => None,
    }));
    s.push_str(&format!(
        "tk_mp=; [ -f {sum} ] && read -r tk_mp <{sum}; [ \"$tk_mp\" = {digest} ] || \
         {{ [ -f {list} ] && sed {sed} {list} | xargs -d '\\n' -r stat -c '{stat}\t%F\t%a\t%U\t%G\t%s\t%n' --; }}\n",
        sed = q(&format!("s|^|{sed_root}|")),
        sum = q(&format!("{root}{STATE_DIR}/{MANAGED_DIGEST}")),
        list = q(&format!("{root}{STATE_DIR}/managed-paths")),
        stat = Tag::Stat,
    ));
    s
}

/// Beside the host's list of managed paths: the [`managed_digest`] of it.
pub(crate) const MANAGED_DIGEST: &str = "managed-paths.sha256";

/// A digest of a set of paths (in any order, repeats counted once).
pub(crate) fn managed_digest<'a>(paths: impl Iterator<Item = &'a str>) -> String {
    let set: std::collections::BTreeSet<&str> = paths.collect();
    let mut text = String::new();
    for p in set {
        text.push_str(p);
        text.push('\n');
    }
    crate::digest::sha256_hex(text.as_bytes())
}

/// Read a [`Tag::Stat`] record: the path (with the root still on it) and
/// its state.
pub(crate) fn parse_stat(record: &str) -> Result<(&str, PathState), Garbled> {
    let mut c = record.splitn(6, '\t');
    let mut next = || c.next().ok_or(Garbled);
    let (kind, mode, owner, group, size, name) =
        (next()?, next()?, next()?, next()?, next()?, next()?);
    let kind = match kind {
        "regular file" | "regular empty file" => PathKind::File,
        "directory" => PathKind::Dir,
        "symbolic link" => PathKind::Link,
        _ => PathKind::Other,
    };
    Ok((
        name,
        PathState {
            kind,
            mode: u32::from_str_radix(mode, 8).map_err(|_| Garbled)?,
            owner: owner.into(),
            group: group.into(),
            size: size.parse().map_err(|_| Garbled)?,
            link_target: None,
        },
    ))
}

/// Read a [`Tag::Ancestor`] record: a symlink above managed paths that root
/// does not own, as (path, owner); `Ok(None)` for one root owns.
pub(crate) fn parse_ancestor(record: &str) -> Result<Option<(&str, &str)>, Garbled> {
    let mut c = record.splitn(3, '\t');
    let mut next = || c.next().ok_or(Garbled);
    let (kind, owner, name) = (next()?, next()?, next()?);
    Ok((kind == "symbolic link" && owner != "root").then_some((name, owner)))
}

/// The group "the owner's login group", for what tidekeeper makes for a
/// user (~/.ssh, authorized_keys), as `ssh-copy-id` would: set with
/// `chown OWNER:` on apply, not compared (the probe does not know it).
pub(crate) const LOGIN_GROUP: &str = "";

/// `chgrp GROUP P`, or for [`LOGIN_GROUP`] `chown OWNER: P`.
pub(crate) fn set_group(group: &str, owner: Option<&str>, p: &str) -> String {
    use crate::engine::sh::Word;
    match (group, owner) {
        (LOGIN_GROUP, Some(o)) => {
            format!("chown {} {p} || return\n", Word::quoted(&format!("{o}:")))
        }
        (LOGIN_GROUP, None) => String::new(),
        (g, _) => format!("chgrp {} {p} || return\n", Word::quoted(g)),
    }
}

/// Mode and ownership that differ from what is wanted, as attributes.
pub(crate) fn ownership(
    need: Need,
    ps: &PathState,
    mode: Option<u32>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Need {
    let mut need = need;
    if let Some(m) = mode
        && m != ps.mode
    {
        need = need.attr("mode", Some(octal(ps.mode)), Some(octal(m)));
    }
    if let Some(o) = owner
        && o != ps.owner
    {
        need = need.attr("owner", Some(ps.owner.clone()), Some(o.to_string()));
    }
    if let Some(g) = group
        && g != LOGIN_GROUP
        && g != ps.group
    {
        need = need.attr("group", Some(ps.group.clone()), Some(g.to_string()));
    }
    need
}

/// Something of another type is in the way: it is replaced.
pub(crate) fn replaces(ps: &PathState) -> Need {
    let mut need =
        Need::new(crate::change::Action::Replace).note(format!("replaces a {}", ps.kind.word()));
    need.was = Some(ps.kind);
    need
}

fn octal(m: u32) -> String {
    format!("{m:04o}")
}

/// The directory a path is in.
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// A path as the apply script writes it: under the root `$R`.
pub(crate) fn on_host(root: &str, path: &str) -> String {
    q(&format!("{root}{path}"))
}

/// Changing sshd's or the firewall's files, sudoers, PAM, the network
/// configuration or an authorized_keys file can take tidekeeper's access.
/// Not another user's keys when tidekeeper logs in as root (whose keys are
/// in /root): a file under `/home/<user>/` lets that user in, and only them.
pub(crate) fn is_risky(path: &str, login_user: &str) -> bool {
    if ACCESS_PATHS.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    let Some(home) = path.strip_suffix("/.ssh/authorized_keys") else {
        return false;
    };
    let someone_else = |u: &str| !u.is_empty() && !u.contains('/') && u != login_user;
    !(login_user == "root" && home.strip_prefix("/home/").is_some_and(someone_else))
}

/// What becomes of a path that left the config: removed when it is
/// there.
pub(crate) fn prune(e: &InventoryEntry, obs: &Observed) -> Prune {
    match obs.paths.get(&e.id) {
        Some(ps) => Prune::Delete(Some(ps.kind)),
        None => Prune::Keep,
    }
}

/// What the lockout guard saves for a risky path: the path itself (a
/// directory's content is saved by the files in it), and all of sshd's or
/// ufw's state when the path is theirs.
pub(crate) fn save(c: &Change, s: &mut Saves) {
    if c.id.starts_with("/etc/ssh/") {
        s.ssh = true;
    }
    if c.id.starts_with("/etc/ufw/") {
        s.ufw = true;
    }
    if !matches!(c.item, Some(Item::Dir { .. })) {
        s.paths.push(c.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::sh_n;

    #[test]
    fn one_stat_covers_every_path_and_ancestor_under_the_root() {
        let items = [
            Item::Dir {
                path: "/srv/app".into(),
                mode: None,
                owner: None,
                group: None,
            },
            Item::Absent {
                path: "/srv/it's here".into(),
            },
        ];
        let s = probe(&items, "/r oot", false);
        assert_eq!(
            s,
            format!(
                "stat -c 'S\t%F\t%a\t%U\t%G\t%s\t%n' -- '/r oot/srv/app' '/r oot/srv/it'\\''s here'\n\
             stat -c 'Y\t%F\t%U\t%n' -- '/r oot/srv' | grep '^Y\tsymbolic link'\n\
             tk_mp=; [ -f '/r oot/var/lib/tidekeeper/managed-paths.sha256' ] && read -r tk_mp <'/r oot/var/lib/tidekeeper/managed-paths.sha256'; \
             [ \"$tk_mp\" = {} ] || {{ [ -f '/r oot/var/lib/tidekeeper/managed-paths' ] && sed 's|^|/r oot|' '/r oot/var/lib/tidekeeper/managed-paths' \
             | xargs -d '\\n' -r stat -c 'S\t%F\t%a\t%U\t%G\t%s\t%n' --; }}\n",
                managed_digest(["/srv/app"].into_iter())
            )
        );
        sh_n(&s);
        // A root with sed's own characters in it stays literal.
        sh_n(&probe(&items, "/a|b&c\\d", false));
        assert!(probe(&items, "/a|b&c\\d", false).contains("sed 's|^|/a\\|b\\&c\\\\d|'"));
    }

    #[test]
    fn stat_and_ancestor_records_read_back() {
        let (path, ps) = parse_stat("regular empty file\t640\troot\tadm\t0\t/etc/a b").unwrap();
        assert_eq!(path, "/etc/a b");
        assert_eq!(
            (
                ps.kind,
                ps.mode,
                ps.owner.as_str(),
                ps.group.as_str(),
                ps.size
            ),
            (PathKind::File, 0o640, "root", "adm", 0)
        );
        assert_eq!(parse_stat("directory\t755\troot").unwrap_err(), Garbled);
        assert_eq!(
            parse_stat("directory\tNaN\troot\troot\t0\t/x").unwrap_err(),
            Garbled
        );
        assert_eq!(
            parse_ancestor("symbolic link\tmallory\t/srv").unwrap(),
            Some(("/srv", "mallory"))
        );
        assert_eq!(parse_ancestor("symbolic link\troot\t/lib").unwrap(), None);
        assert_eq!(parse_ancestor("junk").unwrap_err(), Garbled);
    }

    #[test]
    fn access_paths_are_risky() {
        for p in [
            "/etc/ssh/sshd_config",
            "/etc/sudoers.d/ops",
            "/home/ops/.ssh/authorized_keys",
            "/etc/ufw/user.rules",
            "/root/.ssh/authorized_keys",
            "/srv/deploy/.ssh/authorized_keys",
        ] {
            assert!(is_risky(p, "ops"), "{p}");
        }
        assert!(!is_risky("/etc/motd", "ops"));
        // Logged in as root: other users' keys under /home cannot shut it out.
        assert!(!is_risky("/home/alice/.ssh/authorized_keys", "root"));
        for p in [
            "/root/.ssh/authorized_keys",
            "/home/root/.ssh/authorized_keys",
            "/home/a/b/.ssh/authorized_keys",
            "/srv/alice/.ssh/authorized_keys",
            "/etc/ssh/sshd_config",
        ] {
            assert!(is_risky(p, "root"), "{p}");
        }
        assert_eq!(parent("/etc/motd"), "/etc");
        assert_eq!(parent("/motd"), "/");
    }
}
