//! `packages:` — Debian packages. Observed with one `dpkg-query` over all of
//! them (and `apt-cache policy` for `latest` ones); installed, upgraded and
//! removed in one apt transaction each. The SSH server of a host reached
//! over SSH is never removed.

use super::{ApplyCx, Change, Kind, PlanCx, ProbeCx, Prune, ReadCx, each};
use super::{Garbled, Need};
use crate::change::Action;
use crate::change::ResourceKind;
use crate::engine::item::Item;
use crate::engine::observed::PackageState as Have;
use crate::engine::observed::{InventoryEntry, Observed};
use crate::engine::sh::{Tag, Word, cmd};
use crate::model::desired::PackageState;

/// Probe: a [`Tag::Package`] record (name, status, version) per package,
/// and a [`Tag::Candidate`] record for each `latest` one.
pub(crate) fn probe(items: &[Item]) -> String {
    let mut s = String::new();
    let names: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::Package { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !names.is_empty() {
        s.push_str(&format!(
            "dpkg-query -W -f='{}\\t${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' -- {}\n",
            Tag::Package,
            words(&names)
        ));
    }
    for i in items {
        if let Item::Package {
            name,
            state: PackageState::Latest,
        } = i
        {
            s.push_str(&format!(
                "printf '{t}\\t%s\\t%s\\n' {n} \"$(apt-cache policy -- {n} | sed -n 's/^ *Candidate: //p')\"\n",
                n = Word::quoted(name),
                t = Tag::Candidate
            ));
        }
    }
    s
}

/// Read a [`Tag::Package`] record: the name, and the installed version
/// (only `ii` is installed; `rc`, removed with its config left, is not).
pub(crate) fn parse(record: &str) -> Result<(&str, Option<String>), Garbled> {
    let cols: Vec<&str> = record.split('\t').collect();
    let [name, status, version] = cols[..] else {
        return Err(Garbled);
    };
    Ok((name, status.starts_with("ii").then(|| version.to_string())))
}

/// Read a [`Tag::Candidate`] record: the name and the version apt would
/// install, if any.
pub(crate) fn parse_candidate(record: &str) -> Result<(&str, Option<String>), Garbled> {
    let cols: Vec<&str> = record.split('\t').collect();
    let [name, candidate] = cols[..] else {
        return Err(Garbled);
    };
    let candidate = (!candidate.is_empty() && candidate != "(none)").then(|| candidate.to_string());
    Ok((name, candidate))
}

/// What a package needs.
pub(crate) fn plan(want: PackageState, have: Option<&Have>) -> Option<Need> {
    let installed = have.and_then(|p| p.installed.clone());
    match (want, installed) {
        (PackageState::Present | PackageState::Latest, None) => Some(Need::new(Action::Create)),
        (PackageState::Absent, Some(v)) => {
            Some(Need::new(Action::Delete).attr("version", Some(v), None))
        }
        (PackageState::Latest, Some(v)) => match have.and_then(|p| p.candidate.clone()) {
            Some(cand) if cand != v => {
                Some(Need::new(Action::Update).attr("version", Some(v), Some(cand)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Apply: refresh the package lists (APT's sources changed).
pub(crate) fn update() -> String {
    cmd("apt-get").lit("update").lit("-qq").step()
}

/// Apply: one step that installs and upgrades, with `apt-get update` only
/// when a package is unknown or the lists are a day old (and the lists were
/// not just `updated`). None when there is nothing to install.
pub(crate) fn install(install: &[String], upgrade: &[String], updated: bool) -> Option<String> {
    if install.is_empty() && upgrade.is_empty() {
        return None;
    }
    let all: Vec<&String> = install.iter().chain(upgrade).collect();
    let mut body = if updated {
        String::new()
    } else {
        format!(
            "if ! {} 2>&1 || [ -n \"$(find /var/lib/apt/lists -maxdepth 0 -mmin +1440)\" ]; \
             then apt-get update -qq || return; fi\n",
            cmd("apt-cache").lit("show").args(&all).quiet()
        )
    };
    let apt = |extra: &'static str| {
        cmd("apt-get")
            .lit("install")
            .lit("-y")
            .lit("-q")
            .lit(extra)
            .lit("-o")
            .lit("Dpkg::Options::=--force-confold")
    };
    if !install.is_empty() {
        body.push_str(&apt("--no-install-recommends").args(install).quiet().step());
    }
    if !upgrade.is_empty() {
        body.push_str(&apt("--only-upgrade").args(upgrade).quiet().step());
    }
    Some(body)
}

/// Apply: one removal for all of them.
pub(crate) fn remove(names: &[String]) -> String {
    cmd("apt-get")
        .lit("remove")
        .lit("-y")
        .lit("-q")
        .args(names)
        .quiet()
        .step()
}

/// The packages that provide the SSH server: removing one from a host
/// tidekeeper reaches over SSH would leave nobody able to log in.
pub(crate) fn is_ssh_server(package: &str) -> bool {
    let name = package.split([':', '=']).next().unwrap_or(package);
    matches!(
        name,
        "openssh-server" | "openssh-server-gssapi" | "dropbear" | "dropbear-bin"
    )
}

fn words(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| Word::quoted(n).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `packages:` as a [`Kind`]. Its changes are applied together, in one
/// install and one removal ([`steps`]), before anything else.
pub(crate) struct Package;

impl Kind for Package {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Package
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Package, Tag::Candidate]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |tag, record| {
            if tag == Tag::Package {
                let (name, installed) = parse(record)?;
                o.packages.entry(name.to_string()).or_default().installed = installed;
            } else {
                let (name, candidate) = parse_candidate(record)?;
                o.packages.entry(name.to_string()).or_default().candidate = candidate;
            }
            Ok(())
        })
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Package { name, state } = item else {
            return Ok(None);
        };
        Ok(plan(*state, cx.obs.packages.get(name)))
    }

    /// Applied by [`steps`], all at once.
    fn apply(&self, _c: &Change, _item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        vec![]
    }

    /// There is no rolling back a removed SSH server from a host nobody
    /// can log in to.
    fn lockout(&self, c: &Change) -> Option<String> {
        (c.action == Action::Delete && is_ssh_server(&c.id)).then(|| {
            format!(
                "removing {} would cut tidekeeper (and everyone) off from this host, which it reaches over SSH; \
                 remove it by hand if that is really meant",
                c.id
            )
        })
    }

    fn prune(&self, e: &InventoryEntry, _obs: &Observed) -> Prune {
        Prune::Warn(format!(
            "package {} is no longer managed; it stays installed (declare it absent to remove it)",
            e.id
        ))
    }
}

/// The package steps of a plan: one install (with ufw when a firewall is
/// new) and one removal for all of them, each with the changes it carries.
pub(crate) fn steps<'c>(desired: &[&'c Change], updated: bool) -> Vec<(String, String, Vec<&'c Change>)> {
    let mut installs = Vec::new();
    let mut upgrade = Vec::new();
    let mut removals = Vec::new();
    for c in desired {
        if let Some(Item::Package { name, state }) = &c.item {
            match (c.action, state) {
                (Action::Delete, _) => removals.push(name.clone()),
                (Action::Update, PackageState::Latest) => upgrade.push(name.clone()),
                _ => installs.push(name.clone()),
            }
        }
    }
    let fw_needs_ufw = desired
        .iter()
        .any(|c| c.kind == ResourceKind::Firewall && c.action == Action::Create);
    if fw_needs_ufw && !installs.iter().any(|p| p == "ufw") {
        installs.push("ufw".into());
    }
    let packages = |delete: bool| -> Vec<&'c Change> {
        desired
            .iter()
            .copied()
            .filter(|c| {
                matches!(c.item, Some(Item::Package { .. }))
                    && (c.action == Action::Delete) == delete
            })
            .collect()
    };
    let mut steps = Vec::new();
    if let Some(body) = install(&installs, &upgrade, updated) {
        let names: Vec<&str> = installs
            .iter()
            .chain(&upgrade)
            .map(String::as_str)
            .collect();
        steps.push((
            format!("install packages {}", names.join(" ")),
            body,
            packages(false),
        ));
    }
    if !removals.is_empty() {
        steps.push((
            format!("remove packages {}", removals.join(" ")),
            remove(&removals),
            packages(true),
        ));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let items = [
            Item::Package {
                name: "nginx".into(),
                state: PackageState::Present,
            },
            Item::Package {
                name: "restic".into(),
                state: PackageState::Latest,
            },
        ];
        let s = probe(&items);
        assert_eq!(
            s,
            "dpkg-query -W -f='P\\t${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' -- nginx restic\n\
             printf 'A\\t%s\\t%s\\n' restic \"$(apt-cache policy -- restic | sed -n 's/^ *Candidate: //p')\"\n"
        );
        sh_n(&s);
        assert_eq!(probe(&[]), "");
        let body = install(
            &["nginx".into(), "x;reboot".into()],
            &["restic".into()],
            false,
        )
        .unwrap();
        assert_eq!(
            body,
            "if ! apt-cache show nginx 'x;reboot' restic >/dev/null 2>&1 || [ -n \"$(find /var/lib/apt/lists -maxdepth 0 -mmin +1440)\" ]; \
             then apt-get update -qq || return; fi\n\
             apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold nginx 'x;reboot' >/dev/null || return\n\
             apt-get install -y -q --only-upgrade -o Dpkg::Options::=--force-confold restic >/dev/null || return\n"
        );
        sh_n_step(&body);
        assert_eq!(install(&[], &[], false), None);
        let fresh = install(&["nginx".into()], &[], true).unwrap();
        assert!(
            fresh.starts_with("apt-get install"),
            "lists just updated: {fresh}"
        );
        assert_eq!(update(), "apt-get update -qq || return\n");
        let rm = remove(&["telnet".into()]);
        assert_eq!(rm, "apt-get remove -y -q telnet >/dev/null || return\n");
        sh_n_step(&rm);
    }

    #[test]
    fn records_read_back_and_a_change_is_planned_only_when_needed() {
        assert_eq!(
            parse("nginx\tii \t1.22.1-9").unwrap(),
            ("nginx", Some("1.22.1-9".to_string()))
        );
        assert_eq!(parse("nginx\trc \t1.22.1-9").unwrap(), ("nginx", None));
        assert_eq!(parse("nginx\tii").unwrap_err(), Garbled);
        assert_eq!(parse_candidate("x\t(none)").unwrap(), ("x", None));
        assert_eq!(
            parse_candidate("x\t2.0").unwrap(),
            ("x", Some("2.0".to_string()))
        );
        let have = |installed: Option<&str>, candidate: Option<&str>| Have {
            installed: installed.map(String::from),
            candidate: candidate.map(String::from),
        };
        assert_eq!(
            plan(PackageState::Present, Some(&have(Some("1"), None))),
            None
        );
        assert_eq!(
            plan(PackageState::Present, None).unwrap().action,
            Action::Create
        );
        assert_eq!(
            plan(PackageState::Latest, Some(&have(Some("1"), Some("2"))))
                .unwrap()
                .action,
            Action::Update
        );
        assert_eq!(
            plan(PackageState::Latest, Some(&have(Some("2"), Some("2")))),
            None
        );
        assert_eq!(
            plan(PackageState::Absent, Some(&have(Some("1"), None)))
                .unwrap()
                .action,
            Action::Delete
        );
        assert!(is_ssh_server("openssh-server:amd64"));
        assert!(is_ssh_server("dropbear=2022.83-1"));
        assert!(!is_ssh_server("openssh-client"));
    }
}
