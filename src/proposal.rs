//! The trust boundary for proposals (pull-request heads and any ref matched
//! by `--proposals`). A proposal is written by someone tidekeeper does not
//! trust, so it is planned under the trusted base's settings and may only
//! *read* what the base already manages. Pure: [`confine`] turns a proposal's
//! loaded fleet into one that cannot reach anything the base does not.
//!
//! What a proposal cannot change while it is planned (it takes effect after
//! merge): provider endpoints, regions and credential variables, forge and
//! secrets settings, SSH user/port/key/sudo, `trust_on_first_use`, pinned
//! host keys, the status branch, and the base's policies. Hosts that are new
//! or moved are not contacted; guards that differ from the base are not run;
//! paths the base does not manage are not read; secrets are not decrypted.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::kinds;
use crate::model::desired::{Confinement, Fleet, Host, Jump, ProviderKind, Trust};

/// A proposal made safe to plan.
#[derive(Debug, Clone)]
pub struct Confined {
    pub fleet: Fleet,
    /// The policies the plan is judged by: the base's files, exactly
    /// (a proposal cannot remove, weaken or add to a base policy).
    pub policies: Vec<(String, String)>,
    /// Policy files the proposal adds or changes: judged apart, in an
    /// engine of their own, and shown as taking effect after merge.
    pub proposed_policies: Vec<(String, String)>,
    /// What of the proposal takes effect only after merge, for the comment.
    pub after_merge: Vec<String>,
}

/// What the base manages on `host`, which bounds what a proposal may observe.
pub fn confinement(host: &Host) -> Confinement {
    let mut c = Confinement::default();
    for i in kinds::items(host) {
        if let Some(p) = i.path() {
            c.paths.insert(p.to_string());
        }
        i.kind_impl().limit(&i, &mut c);
    }
    c
}

/// Why a proposal's host must not be contacted, or None when it may be
/// observed (confined to what the base manages).
fn not_contacted(base: Option<&Host>, host: &Host) -> Option<String> {
    if host.provider == ProviderKind::Local {
        return Some(
            "a local host runs on tidekeeper's own machine: never from a proposal; configured after merge"
                .into(),
        );
    }
    let Some(b) = base else {
        return Some("new host, configured after merge".into());
    };
    let mut moved = Vec::new();
    if b.provider != host.provider {
        moved.push("provider");
    }
    if b.address != host.address {
        moved.push("address");
    }
    if b.root != host.root {
        moved.push("root");
    }
    (!moved.is_empty()).then(|| {
        format!(
            "its {} differs from the base branch: not contacted, configured after merge",
            moved.join(", ")
        )
    })
}

/// Plan `proposal` under `base`'s trust: see the module docs.
pub fn confine(
    base: &Fleet,
    base_policies: &[(String, String)],
    mut proposal: Fleet,
    proposal_policies: &[(String, String)],
) -> Confined {
    let mut after_merge = settings_after_merge(&proposal, base);
    proposal.settings = base.settings.clone();
    proposal.known_hosts = known_hosts(base, &proposal, &mut after_merge);
    trust_hosts(base, &mut proposal, &mut after_merge);
    let (policies, proposed_policies) =
        judged_policies(base_policies, proposal_policies, &mut after_merge);
    proposal.policies = policies
        .iter()
        .chain(&proposed_policies)
        .map(|(p, _)| p.clone())
        .collect();
    // Nothing of a proposal is decrypted; outputs are still cleaned of the
    // base's secrets (a base-managed file may hold one).
    proposal.secrets_decrypted = false;
    proposal.secret_values = Default::default();
    proposal.redactions = base.redactions.clone();
    Confined {
        fleet: proposal,
        policies,
        proposed_policies,
        after_merge,
    }
}

/// The trust-bearing settings the proposal changes: planned with the
/// base's values, in effect after merge.
fn settings_after_merge(proposal: &Fleet, base: &Fleet) -> Vec<String> {
    let s = &proposal.settings;
    let b = &base.settings;
    let checks: [(&str, bool); 8] = [
        ("SSH settings (defaults.ssh)", s.ssh != b.ssh),
        (
            "forge settings (status.forge)",
            json(&s.forge) != json(&b.forge),
        ),
        (
            "Hetzner provider settings (endpoint, token_env)",
            json(&s.hetzner) != json(&b.hetzner),
        ),
        (
            "Lightsail provider settings (endpoint, region, credential variables)",
            json(&s.lightsail) != json(&b.lightsail),
        ),
        (
            "secrets settings",
            s.secrets_identity_env != b.secrets_identity_env
                || s.secrets_identity_file != b.secrets_identity_file,
        ),
        ("status.branch", s.status_branch != b.status_branch),
        ("status.notes_ref", s.notes_ref != b.notes_ref),
        ("parallelism", s.parallelism != b.parallelism),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(what, _)| format!("{what}: planned with the base branch's values"))
        .collect()
}

/// Host keys: the base's pins; a proposal may add lines for names the base
/// pins nothing for (new hosts, which are not contacted anyway).
fn known_hosts(
    base: &Fleet,
    proposal: &Fleet,
    after_merge: &mut Vec<String>,
) -> Vec<crate::model::desired::KnownHost> {
    let pinned: BTreeSet<&String> = base.known_hosts.iter().flat_map(|k| &k.hosts).collect();
    let key =
        |k: &crate::model::desired::KnownHost| (k.hosts.clone(), k.key_type.clone(), k.key.clone());
    let base_keys: BTreeSet<_> = base.known_hosts.iter().map(key).collect();
    let mut known = base.known_hosts.clone();
    let mut replaced = false;
    for k in &proposal.known_hosts {
        if base_keys.contains(&key(k)) {
            continue;
        }
        if k.hosts.iter().any(|h| pinned.contains(h)) {
            replaced = true;
        } else {
            known.push(k.clone());
        }
    }
    if replaced || proposal.known_hosts.len() < base.known_hosts.len() {
        after_merge.push(
            "known_hosts: pins of hosts the base branch knows are kept as they are until merge"
                .into(),
        );
    }
    known
}

/// Each host's trust: confined to what the base manages where the base has
/// it at the same place and every jump host on the way is so too; else
/// configured after merge.
fn trust_hosts(base: &Fleet, proposal: &mut Fleet, after_merge: &mut Vec<String>) {
    for h in proposal.hosts.iter_mut() {
        let on_base = base.host(&h.name);
        match (not_contacted(on_base, h), on_base) {
            (None, Some(b)) => {
                if b.ssh != h.ssh {
                    after_merge.push(format!(
                        "{}: SSH settings are the base branch's until merge",
                        h.name
                    ));
                }
                h.ssh = b.ssh.clone();
                h.trust = Trust::Confined(confinement(b));
            }
            (why, _) => h.trust = Trust::AfterMerge(why.unwrap_or_default()),
        }
    }
    // A host reached through a jump host is reached as the base reaches it
    // only while every jump host on the way is: a proposal that moves the
    // bastion must not route the base's hosts (and their login) through it.
    let unreachable: Vec<(String, String)> = proposal
        .hosts
        .iter()
        .filter(|h| matches!(h.trust, Trust::Confined(_)))
        .filter_map(|h| {
            let mut next = h.ssh.via.clone();
            let mut hops = 0;
            while let Some(Jump::Host(j)) = next {
                hops += 1;
                match proposal.host(&j) {
                    Some(jh) if matches!(jh.trust, Trust::Confined(_)) && hops < 9 => {
                        next = jh.ssh.via.clone()
                    }
                    _ => return Some((h.name.clone(), j)),
                }
            }
            None
        })
        .collect();
    for (name, jump) in unreachable {
        if let Some(h) = proposal.hosts.iter_mut().find(|h| h.name == name) {
            h.trust = Trust::AfterMerge(format!(
                "its jump host {jump} is not contacted from this proposal: configured after merge"
            ));
        }
    }
}

/// A policy file: its path and text.
type PolicyFile = (String, String);

/// Policies: every base policy as the base has it; the files the proposal
/// adds or changes apart, in effect after merge.
fn judged_policies(
    base_policies: &[(String, String)],
    proposal_policies: &[(String, String)],
    after_merge: &mut Vec<String>,
) -> (Vec<PolicyFile>, Vec<PolicyFile>) {
    let base_paths: BTreeMap<&str, &str> = base_policies
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let mut proposed_policies = Vec::new();
    for (p, t) in proposal_policies {
        match base_paths.get(p.as_str()) {
            None => {
                after_merge.push(format!(
                    "{p}: a new policy, judged apart (shown below) and in effect after merge"
                ));
                proposed_policies.push((p.clone(), t.clone()));
            }
            Some(bt) if bt != t => {
                after_merge.push(format!(
                    "{p}: judged by the base branch's version until merge"
                ));
                proposed_policies.push((p.clone(), t.clone()));
            }
            Some(_) => {}
        }
    }
    for p in base_paths.keys() {
        if !proposal_policies.iter().any(|(q, _)| q == p) {
            after_merge.push(format!(
                "{p}: removed by this proposal, still judged until merge"
            ));
        }
    }
    (base_policies.to_vec(), proposed_policies)
}

/// Settings compared by their JSON form (they carry no secret values).
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ConfigTree;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn fleet(files: &[(&str, &str)]) -> Fleet {
        let mut t = ConfigTree::new();
        t.insert_file("tidekeeper.yaml", "fleet: t\n");
        t.insert_file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [r]\n",
        );
        t.insert_file(
            "roles/r.yaml",
            "files:\n  - {path: /etc/a, content: \"a\\n\"}\n  - {path: /etc/k, content: \"k\\n\", sensitive: true}\n",
        );
        t.insert_file("known_hosts", format!("10.0.0.1 ssh-ed25519 {KEY}\n"));
        for (p, text) in files {
            t.insert_file(*p, *text);
        }
        crate::model::load(&t).unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn trust_bearing_settings_come_from_the_base_and_are_listed() {
        let base = fleet(&[]);
        let pr = fleet(&[(
            "tidekeeper.yaml",
            "fleet: t\ndefaults:\n  ssh:\n    user: eve\n    trust_on_first_use: true\nproviders:\n  hetzner:\n    endpoint: http://evil\n    token_env: TIDEKEEPER_WEBHOOK_SECRET\nstatus:\n  branch: x\n",
        )]);
        let c = confine(&base, &[], pr, &[]);
        assert_eq!(c.fleet.settings.ssh, base.settings.ssh);
        assert_eq!(c.fleet.settings.hetzner.endpoint, None);
        assert_eq!(c.fleet.settings.hetzner.token_env, "HCLOUD_TOKEN");
        assert_eq!(c.fleet.settings.status_branch, "tidekeeper/status");
        assert_eq!(c.fleet.hosts[0].ssh, base.hosts[0].ssh);
        let said = c.after_merge.join("\n");
        for what in ["SSH settings", "Hetzner provider settings", "status.branch"] {
            assert!(said.contains(what), "{said}");
        }
    }

    #[test]
    fn new_moved_and_local_hosts_are_never_contacted() {
        let base = fleet(&[]);
        let pr = fleet(&[
            (
                "hosts/web.yaml",
                "provider: existing\naddress: 10.0.0.9\nroles: [r]\n",
            ),
            (
                "hosts/new.yaml",
                "provider: existing\naddress: 10.0.0.2\nroles: [r]\n",
            ),
            (
                "hosts/me.yaml",
                "provider: local\nroot: /tmp/x\nroles: [r]\n",
            ),
        ]);
        let c = confine(&base, &[], pr, &[]);
        for h in &c.fleet.hosts {
            match (&h.trust, h.name.as_str()) {
                (Trust::AfterMerge(why), "web") => assert!(why.contains("address"), "{why}"),
                (Trust::AfterMerge(why), "new") => assert!(why.contains("new host"), "{why}"),
                (Trust::AfterMerge(why), "me") => assert!(why.contains("local"), "{why}"),
                (t, n) => panic!("{n} may be contacted: {t:?}"),
            }
        }
    }

    #[test]
    fn hosts_behind_a_bastion_the_proposal_moves_are_not_contacted() {
        let bastion = "provider: existing\naddress: 10.0.0.5\nroles: [r]\n";
        let app = "provider: existing\naddress: 10.1.0.2\nssh: {via: bastion}\nroles: [r]\n";
        let base = fleet(&[("hosts/bastion.yaml", bastion), ("hosts/app.yaml", app)]);
        // The proposal moves the bastion to an address of its choosing and
        // routes web through it too; app and web keep their addresses.
        let pr = fleet(&[
            (
                "hosts/bastion.yaml",
                "provider: existing\naddress: 10.6.6.6\nroles: [r]\n",
            ),
            ("hosts/app.yaml", app),
            (
                "hosts/web.yaml",
                "provider: existing\naddress: 10.0.0.1\nssh: {via: bastion}\nroles: [r]\n",
            ),
        ]);
        let c = confine(&base, &[], pr, &[]);
        let trust = |n: &str| c.fleet.host(n).unwrap().trust.clone();
        assert!(matches!(trust("bastion"), Trust::AfterMerge(w) if w.contains("address")));
        assert!(
            matches!(trust("app"), Trust::AfterMerge(w) if w.contains("jump host bastion")),
            "app would be reached through the proposal's bastion: {:?}",
            trust("app")
        );
        // web keeps the base's way in: directly, not through the bastion.
        assert!(matches!(trust("web"), Trust::Confined(_)));
        assert_eq!(c.fleet.host("web").unwrap().ssh.via, None);
        // Unmoved, the bastion carries app as on the base.
        let c = confine(
            &base,
            &[],
            fleet(&[("hosts/bastion.yaml", bastion), ("hosts/app.yaml", app)]),
            &[],
        );
        assert!(matches!(
            c.fleet.host("app").unwrap().trust,
            Trust::Confined(_)
        ));
    }

    #[test]
    fn a_kept_host_is_confined_to_what_the_base_manages() {
        let base = fleet(&[]);
        let pr = fleet(&[(
            "roles/r.yaml",
            "files:\n  - {path: /etc/a, content: \"b\\n\"}\n  - {path: /etc/k, content: \"k\\n\"}\n  - {path: /root/x, content: \"x\\n\"}\n",
        )]);
        let c = confine(&base, &[], pr, &[]);
        let Trust::Confined(limits) = &c.fleet.hosts[0].trust else {
            panic!("web is kept at the same address")
        };
        assert!(limits.paths.contains("/etc/a") && !limits.paths.contains("/root/x"));
        assert!(
            limits.sensitive.contains("/etc/k"),
            "sensitive on the base stays so"
        );
    }

    #[test]
    fn pins_of_known_hosts_and_base_policies_cannot_be_replaced() {
        let base = fleet(&[]);
        let pr = fleet(&[(
            "known_hosts",
            "10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmNTSW6Dez2ZUtbcAtzx2Vl+5DuGB5ChSnrAXGGYdc1\n10.0.0.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmNTSW6Dez2ZUtbcAtzx2Vl+5DuGB5ChSnrAXGGYdc1\n",
        )]);
        let base_policies = vec![("policies/deny.rego".to_string(), "package a".to_string())];
        let pr_policies = vec![("policies/new.rego".to_string(), "package b".to_string())];
        let c = confine(&base, &base_policies, pr, &pr_policies);
        let for_web: Vec<_> = c
            .fleet
            .known_hosts
            .iter()
            .filter(|k| k.hosts.contains(&"10.0.0.1".to_string()))
            .collect();
        assert_eq!(for_web.len(), 1);
        assert_eq!(for_web[0].key, KEY);
        assert!(c.fleet.known_hosts.iter().any(|k| k.hosts == ["10.0.0.7"]));
        // Judged by the base's files alone; the new one apart (issue 34).
        let paths: Vec<&str> = c.policies.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(paths, ["policies/deny.rego"]);
        let proposed: Vec<&str> = c.proposed_policies.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(proposed, ["policies/new.rego"]);
        assert!(
            c.after_merge
                .iter()
                .any(|a| a.contains("removed by this proposal"))
        );
    }
}
