//! `mounts:` — filesystems in /etc/fstab, mounted or not. Observed from
//! fstab's entries and `findmnt`; the entry is rewritten atomically (fstab
//! backed up first), then the filesystem mounted, remounted or unmounted.
//! A mount at or under /home or /root can hide the login user's keys, so a
//! change to one is guarded like an sshd change.

use super::{
    ApplyCx, Change, Kind, Observe, PlanCx, ProbeCx, Prune, ReadCx, Saves, each, managed, step,
};
use super::{Garbled, Need};
use crate::change::ResourceKind;
use crate::change::{Action, Attr};
use crate::engine::item::Item;
use crate::engine::observed::FstabEntry;
use crate::engine::observed::{InventoryEntry, Observed};
use crate::engine::sh::{Tag, Word, cmd};
use crate::model::desired::Confinement;
use crate::model::desired::MountState;

pub(crate) const FSTAB: &str = "/etc/fstab";

/// Probe: every fstab entry as a [`Tag::Fstab`] record (mount point,
/// device, type, options), and each managed mount point that is mounted as
/// a [`Tag::Mounted`] record (with its source and type).
pub(crate) fn probe(items: &[Item]) -> String {
    let paths: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::Mount { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    if paths.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "awk '$1 !~ /^#/ && NF >= 4 {{ print \"{t}\\t\" $2 \"\\t\" $1 \"\\t\" $3 \"\\t\" $4 }}' {FSTAB}\n",
        t = Tag::Fstab
    );
    for p in paths {
        let p = Word::quoted(p);
        s.push_str(&format!(
            "if m=$(findmnt -rn -M {p} -o SOURCE,FSTYPE); then printf '{t}\\t%s\\t%s\\n' {p} \"$m\"; fi\n",
            t = Tag::Mounted
        ));
    }
    s
}

/// Read a [`Tag::Fstab`] record: the mount point and its entry.
pub(crate) fn parse_fstab(record: &str) -> Result<(&str, FstabEntry), Garbled> {
    let cols: Vec<&str> = record.split('\t').collect();
    let [path, device, fstype, options] = cols[..] else {
        return Err(Garbled);
    };
    Ok((
        path,
        FstabEntry {
            device: device.into(),
            fstype: fstype.into(),
            options: options.into(),
        },
    ))
}

/// Read a [`Tag::Mounted`] record: the mount point and what is mounted.
pub(crate) fn parse_mounted(record: &str) -> Result<(&str, &str), Garbled> {
    record.split_once('\t').ok_or(Garbled)
}

/// An entry as plans show it and as the apply reads it back.
pub(crate) fn shown(e: &FstabEntry) -> String {
    format!("{} {} {}", e.device, e.fstype, e.options)
}

/// What a mount needs: its fstab entry written or removed, and the
/// filesystem mounted or unmounted.
pub(crate) fn plan(
    want: Option<&FstabEntry>,
    state: MountState,
    have: Option<&FstabEntry>,
    mounted: Option<&str>,
) -> Option<Need> {
    let action = match (state, have) {
        (MountState::Absent, _) => Action::Delete,
        (_, None) => Action::Create,
        _ => Action::Update,
    };
    let mut need = Need::new(action);
    let want_line = if state == MountState::Absent {
        None
    } else {
        want.map(shown)
    };
    let have_line = have.map(shown);
    if want_line != have_line {
        need = need.attr("fstab", have_line, want_line);
    }
    let want_mounted = state == MountState::Mounted;
    if want_mounted != mounted.is_some() {
        let word = |b: bool| Some(if b { "yes" } else { "no" }.to_string());
        need = need.attr("mounted", word(mounted.is_some()), word(want_mounted));
    }
    if let Some(m) = mounted {
        need.note = Some(format!("mounted now: {m}"));
    }
    need.if_any()
}

/// Apply: rewrite fstab without the mount point's old entry and with its
/// new one, then mount, remount (options changed) or unmount.
pub(crate) fn apply(path: &str, want: &FstabEntry, state: MountState, attrs: &[Attr]) -> String {
    let mut body = String::new();
    let fstab = attrs.iter().find(|a| a.name == "fstab");
    if let Some(change) = fstab {
        body.push_str(&cmd("backup").lit(FSTAB).step());
        body.push_str("t=$(mktemp /etc/.fstab.tidekeeper.XXXXXX) || return\n");
        body.push_str(&format!(
            "awk -v {} '$1 ~ /^#/ || $2 != p' {FSTAB} >\"$t\" || return\n",
            Word::quoted(&format!("p={path}"))
        ));
        if change.after.is_some() {
            body.push_str(&format!(
                "printf '%s\\n' {} >>\"$t\" || return\n",
                Word::quoted(&format!(
                    "{} {path} {} {} 0 0",
                    want.device, want.fstype, want.options
                ))
            ));
        }
        body.push_str(&format!(
            "chmod 0644 \"$t\" || return\nmv -f \"$t\" {FSTAB} || return\n\
             systemctl daemon-reload 2>/dev/null; true\n"
        ));
    }
    let mounts_now = attrs
        .iter()
        .any(|a| a.name == "mounted" && a.after.as_deref() == Some("yes"));
    let unmounts = attrs
        .iter()
        .any(|a| a.name == "mounted" && a.after.as_deref() == Some("no"));
    let p = Word::quoted(path);
    if mounts_now {
        body.push_str(&cmd("mkdir").lit("-p").arg(path).step());
        body.push_str(&cmd("mount").word(p).step());
    } else if unmounts {
        body.push_str(&cmd("umount").word(p).step());
    } else if state == MountState::Mounted
        && let Some(change) = fstab
    {
        // Mounted already: the same filesystem takes new options by a
        // remount; another one is unmounted and mounted anew.
        if same_fs(change.before.as_deref(), change.after.as_deref()) {
            body.push_str(&cmd("mount").lit("-o").lit("remount").word(p).step());
        } else {
            body.push_str(&cmd("umount").word(p.clone()).step());
            body.push_str(&cmd("mount").word(p).step());
        }
    }
    body
}

/// Two fstab entries (as shown) of the same device and type.
fn same_fs(a: Option<&str>, b: Option<&str>) -> bool {
    fn fs(s: Option<&str>) -> Option<Vec<&str>> {
        s.map(|s| s.split(' ').take(2).collect())
    }
    fs(a) == fs(b)
}

/// A mount at or under /home or /root can hide the login user's keys.
pub(crate) fn is_risky(path: &str) -> bool {
    ["/home", "/root"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// Rollback lines for the lockout guard: undo the mount, then mount what
/// the restored fstab says (if anything).
pub(crate) fn rollback(path: &str) -> String {
    let p = Word::quoted(path);
    format!("umount -l {p} 2>/dev/null; mount {p} 2>/dev/null\n")
}

/// `mounts:` as a [`Kind`].
pub(crate) struct Mount;

impl Kind for Mount {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Mount
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Fstab, Tag::Mounted]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |tag, record| {
            if tag == Tag::Fstab {
                let (path, entry) = parse_fstab(record)?;
                o.fstab.insert(path.to_string(), entry);
            } else {
                let (path, what) = parse_mounted(record)?;
                o.mounted.insert(path.to_string(), what.to_string());
            }
            Ok(())
        })
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Mount { path, entry, state } = item else {
            return Ok(None);
        };
        Ok(plan(
            Some(entry),
            *state,
            cx.obs.fstab.get(path),
            cx.obs.mounted.get(path).map(String::as_str),
        ))
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Mount { path, entry, state } = item else {
            return vec![];
        };
        step(c, apply(path, entry, *state, &c.attrs))
    }

    /// Filesystems go before the directories and files on them.
    fn on_filesystem(&self) -> bool {
        true
    }

    /// Data stays where it is unless the config says otherwise.
    fn prune(&self, e: &InventoryEntry, _obs: &Observed) -> Prune {
        Prune::Warn(format!(
            "mount {} is no longer managed; it stays in fstab (declare it with state: absent to remove it)",
            e.id
        ))
    }

    fn is_risky(&self, id: &str, _login_user: &str) -> bool {
        is_risky(id)
    }

    /// fstab comes back, then the mount point is as it says.
    fn save(&self, c: &Change, s: &mut Saves) {
        s.paths.push(FSTAB.to_string());
        s.mounts.push(c.id.clone());
    }

    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        managed(item, base)
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        base.managed.insert((item.kind(), item.id().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn tmpfs(options: &str) -> FstabEntry {
        FstabEntry {
            device: "tmpfs".into(),
            fstype: "tmpfs".into(),
            options: options.into(),
        }
    }

    fn item(path: &str) -> Item {
        Item::Mount {
            path: path.into(),
            entry: tmpfs("size=8m"),
            state: MountState::Mounted,
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let s = probe(&[item("/srv/scratch")]);
        assert_eq!(
            s,
            "awk '$1 !~ /^#/ && NF >= 4 { print \"T\\t\" $2 \"\\t\" $1 \"\\t\" $3 \"\\t\" $4 }' /etc/fstab\n\
             if m=$(findmnt -rn -M /srv/scratch -o SOURCE,FSTYPE); then printf 'N\\t%s\\t%s\\n' /srv/scratch \"$m\"; fi\n"
        );
        sh_n(&s);
        assert_eq!(probe(&[]), "");
        let need = plan(Some(&tmpfs("size=8m")), MountState::Mounted, None, None).unwrap();
        let body = apply(
            "/srv/scratch",
            &tmpfs("size=8m"),
            MountState::Mounted,
            &need.attrs,
        );
        assert_eq!(
            body,
            "backup /etc/fstab || return\nt=$(mktemp /etc/.fstab.tidekeeper.XXXXXX) || return\n\
             awk -v p=/srv/scratch '$1 ~ /^#/ || $2 != p' /etc/fstab >\"$t\" || return\n\
             printf '%s\\n' 'tmpfs /srv/scratch tmpfs size=8m 0 0' >>\"$t\" || return\n\
             chmod 0644 \"$t\" || return\nmv -f \"$t\" /etc/fstab || return\n\
             systemctl daemon-reload 2>/dev/null; true\n\
             mkdir -p /srv/scratch || return\nmount /srv/scratch || return\n"
        );
        sh_n_step(&body);
        // New options on a mounted filesystem: a remount; another device: umount and mount.
        let need = plan(
            Some(&tmpfs("size=16m")),
            MountState::Mounted,
            Some(&tmpfs("size=8m")),
            Some("tmpfs tmpfs"),
        )
        .unwrap();
        assert!(
            apply(
                "/srv/scratch",
                &tmpfs("size=16m"),
                MountState::Mounted,
                &need.attrs
            )
            .ends_with("mount -o remount /srv/scratch || return\n")
        );
        let mut disk = tmpfs("defaults");
        disk.device = "UUID=0a1b".into();
        disk.fstype = "ext4".into();
        let need = plan(
            Some(&disk),
            MountState::Mounted,
            Some(&tmpfs("size=8m")),
            Some("tmpfs tmpfs"),
        )
        .unwrap();
        assert!(
            apply("/srv/scratch", &disk, MountState::Mounted, &need.attrs)
                .ends_with("umount /srv/scratch || return\nmount /srv/scratch || return\n")
        );
    }

    #[test]
    fn a_hostile_path_stays_one_word() {
        let path = "/srv/x';reboot;'";
        let need = plan(Some(&tmpfs("size=8m")), MountState::Mounted, None, None).unwrap();
        let body = apply(path, &tmpfs("size=8m"), MountState::Mounted, &need.attrs);
        assert!(
            body.contains("awk -v 'p=/srv/x'\\'';reboot;'\\''' "),
            "{body}"
        );
        assert!(body.contains("mount '/srv/x'\\'';reboot;'\\'''"), "{body}");
        sh_n_step(&body);
        sh_n(&probe(&[item(path)]));
        sh_n(&rollback(path));
    }

    #[test]
    fn records_read_back_and_a_change_is_planned_only_when_needed() {
        let (path, e) = parse_fstab("/srv/scratch\ttmpfs\ttmpfs\tsize=8m").unwrap();
        assert_eq!((path, e), ("/srv/scratch", tmpfs("size=8m")));
        assert_eq!(parse_fstab("/srv\ttmpfs").unwrap_err(), Garbled);
        assert_eq!(
            parse_mounted("/srv/scratch\ttmpfs tmpfs").unwrap(),
            ("/srv/scratch", "tmpfs tmpfs")
        );
        let want = tmpfs("size=8m");
        assert_eq!(
            plan(
                Some(&want),
                MountState::Mounted,
                Some(&want),
                Some("tmpfs tmpfs")
            ),
            None
        );
        assert_eq!(
            plan(Some(&want), MountState::Unmounted, Some(&want), None),
            None
        );
        let need = plan(
            Some(&want),
            MountState::Unmounted,
            Some(&want),
            Some("tmpfs tmpfs"),
        )
        .unwrap();
        assert_eq!((need.action, need.attrs.len()), (Action::Update, 1));
        assert!(
            apply("/srv/scratch", &want, MountState::Unmounted, &need.attrs)
                == "umount /srv/scratch || return\n"
        );
        let need = plan(
            Some(&want),
            MountState::Absent,
            Some(&want),
            Some("tmpfs tmpfs"),
        )
        .unwrap();
        assert_eq!((need.action, need.attrs.len()), (Action::Delete, 2));
        let body = apply("/srv/scratch", &want, MountState::Absent, &need.attrs);
        assert!(!body.contains("printf"), "no new entry: {body}");
        assert_eq!(plan(Some(&want), MountState::Absent, None, None), None);
        assert!(is_risky("/home") && is_risky("/home/ops") && is_risky("/root"));
        assert!(!is_risky("/srv/home") && !is_risky("/homes"));
    }
}
