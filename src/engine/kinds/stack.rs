//! `stacks:` — docker compose projects. Their files are ordinary file
//! items under the stack's directory; the stack itself is observed with one
//! `docker ps` per project and brought up with `docker compose up` when its
//! files changed or a container is not running as the config says.

use super::{ApplyCx, Change, Kind, Observe, PlanCx, ProbeCx, Prune, ReadCx, each, step};
use crate::change::ResourceKind;
use crate::engine::observed::{Inventory, InventoryEntry};
use crate::model::desired::Confinement;
use std::collections::BTreeMap;

use super::path::on_host;
use super::{Garbled, Need, attr};
use crate::change::{Action, Attr};
use crate::engine::compose::{self, Service};
use crate::engine::item::Item;
use crate::engine::observed::{Container, Observed};
use crate::engine::sh::{Tag, Word};

/// Probe: each project's containers as [`Tag::Container`] records (stack,
/// service, state, image), when docker is installed.
pub(crate) fn probe(items: &[Item]) -> String {
    let mut s = String::new();
    for i in items {
        if let Item::Stack { name, .. } = i {
            s.push_str(&format!(
                "command -v docker >/dev/null && docker ps -a --filter label=com.docker.compose.project={n} \
                 --format '{{{{.Label \"com.docker.compose.service\"}}}}\t{{{{.State}}}}\t{{{{.Image}}}}' | sed 's/^/{t}\t'{n}'\t/'\n",
                n = Word::quoted(name),
                t = Tag::Container
            ));
        }
    }
    s
}

/// Read a [`Tag::Container`] record: the stack and one of its containers
/// (docker before 23 prints no image).
pub(crate) fn parse(record: &str) -> Result<(&str, Container), Garbled> {
    let cols: Vec<&str> = record.split('\t').collect();
    let (stack, service, state, image) = match cols[..] {
        [stack, service, state, image] => (stack, service, state, image),
        [stack, service, state] => (stack, service, state, ""),
        _ => return Err(Garbled),
    };
    Ok((
        stack,
        Container {
            service: service.to_string(),
            state: state.to_string(),
            image: image.to_string(),
        },
    ))
}

/// The stack as the plan sees it.
pub(crate) struct Wanted<'a> {
    pub name: &'a str,
    pub dir: &'a str,
    /// Checksum over every file of the stack.
    pub hash: &'a str,
    /// The compose file's name in `dir`.
    pub compose: Option<&'a str>,
    pub services: &'a BTreeMap<String, Service>,
}

/// Whether the project needs `up`, why, and what that does to its
/// services. `files_change`: a file of the stack changes in this plan;
/// `compose_changes`: its compose file does.
pub(crate) fn plan(
    want: &Wanted,
    obs: &Observed,
    files_change: bool,
    compose_changes: bool,
) -> Option<Need> {
    let containers = obs.stacks.get(want.name).cloned().unwrap_or_default();
    let mut attrs = Vec::new();
    let reason = if containers.is_empty() {
        if obs.inventory.stacks.contains_key(want.name) {
            "no containers running".to_string()
        } else {
            "first deploy".to_string()
        }
    } else if files_change
        || obs.inventory.stacks.get(want.name).map(String::as_str) != Some(want.hash)
    {
        attrs = service_changes(want, obs, compose_changes);
        "its files changed".to_string()
    } else {
        drift(want.services, &containers)?
    };
    for c in &containers {
        attrs.push(attr(
            &format!("service {}", c.service),
            Some(c.state.clone()),
            Some("running".into()),
        ));
    }
    let mut need = Need::new(Action::Run).note(format!("docker compose up ({reason})"));
    need.attrs = attrs;
    Some(need)
}

/// What `up` does to the services, from the compose file before and after.
fn service_changes(want: &Wanted, obs: &Observed, compose_changes: bool) -> Vec<Attr> {
    let old = want
        .compose
        .and_then(|f| obs.contents.get(&format!("{}/{f}", want.dir)))
        .and_then(|b| compose::services(b));
    let Some(old) = old else {
        return if compose_changes {
            vec![attr(
                "the services it changes cannot be shown (the compose file is sensitive or large)",
                None,
                None,
            )]
        } else {
            vec![]
        };
    };
    let d = compose::changes(&old, want.services);
    if d == Default::default() {
        return vec![attr(
            "services unchanged; other files of the stack changed",
            None,
            None,
        )];
    }
    [
        ("recreates", &d.recreate),
        ("creates", &d.create),
        ("removes", &d.remove),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .map(|(what, list)| attr(&format!("{what} service"), None, Some(list.join(", "))))
    .collect()
}

/// Why the running containers differ from the config: not running, missing,
/// or running another image. None when they match.
fn drift(services: &BTreeMap<String, Service>, containers: &[Container]) -> Option<String> {
    let mut down: Vec<String> = containers
        .iter()
        .filter(|c| c.state != "running")
        .map(|c| format!("{} ({})", c.service, c.state))
        .collect();
    down.extend(
        services
            .keys()
            .filter(|svc| !containers.iter().any(|c| c.service == **svc))
            .map(|svc| format!("{svc} (no container)")),
    );
    if !down.is_empty() {
        return Some(format!("not running: {}", down.join(", ")));
    }
    let images: Vec<String> = containers
        .iter()
        .filter_map(|c| {
            let want = services.get(&c.service)?.image.as_ref()?;
            (!c.image.is_empty() && c.image != *want)
                .then(|| format!("{} runs {}, the config says {want}", c.service, c.image))
        })
        .collect();
    (!images.is_empty()).then(|| format!("image changed: {}", images.join("; ")))
}

/// Record a stack as brought up with `hash` (in `$S/ran`), once `up` and
/// its health checks succeeded.
pub(crate) fn record(name: &str, hash: &str) -> String {
    format!(
        "printf 'stack\\t%s\\t%s\\n' {} {} >>\"$S/{}\" || return\n",
        Word::quoted(name),
        Word::quoted(hash),
        crate::engine::observed::RAN
    )
}

/// Apply: `up` in the stack's directory, with compose v2 (`docker compose`)
/// where present, else v1.
pub(crate) fn apply(root: &str, name: &str, dir: &str) -> String {
    format!(
        "cd {} || return\nif docker compose version >/dev/null 2>&1; then \
         docker compose -p {n} up -d --remove-orphans >&2 || return; \
         else docker-compose -p {n} up -d --remove-orphans >&2 || return; fi\n",
        on_host(root, dir),
        n = Word::quoted(name)
    )
}

/// Prune a stack that left the config: its containers and network go (its
/// files are pruned after, as files).
pub(crate) fn prune(name: &str) -> String {
    format!(
        "if docker compose version >/dev/null 2>&1; then docker compose -p {n} down --remove-orphans >&2; \
         else ids=$(docker ps -aq --filter label=com.docker.compose.project={n}); \
         [ -z \"$ids\" ] || docker rm -f $ids >/dev/null || return; \
         docker network rm {n}_default >/dev/null 2>&1; fi; true\n",
        n = Word::quoted(name)
    )
}

/// `stacks:` as a [`Kind`].
pub(crate) struct Stack;

impl Kind for Stack {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Stack
    }

    fn probe(&self, items: &[Item], _cx: &ProbeCx) -> String {
        probe(items)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Container]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            let (stack, c) = parse(record)?;
            o.stacks.entry(stack.to_string()).or_default().push(c);
            Ok(())
        })
    }

    /// Brought up again when its files change (looked up among the changes
    /// planned before it).
    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Stack {
            name,
            dir,
            hash,
            compose,
            services,
            ..
        } = item
        else {
            return Ok(None);
        };
        let in_dir = format!("{dir}/");
        let files_change = cx
            .earlier
            .iter()
            .any(|c| c.kind == ResourceKind::File && c.id.starts_with(&in_dir));
        let compose_changes = compose
            .as_ref()
            .is_some_and(|f| cx.earlier.iter().any(|c| c.id == format!("{dir}/{f}")));
        let want = Wanted {
            name,
            dir,
            hash,
            compose: compose.as_deref(),
            services,
        };
        Ok(plan(&want, cx.obs, files_change, compose_changes))
    }

    /// Recorded as up only once it is up and healthy.
    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Stack {
            name,
            dir,
            hash,
            health,
            health_timeout_secs,
            ..
        } = item
        else {
            return vec![];
        };
        let record = record(name, hash);
        if health.is_empty() {
            return step(c, format!("{}{record}", apply(cx.root, name, dir)));
        }
        let mut steps = step(c, apply(cx.root, name, dir));
        steps.push((
            format!("stack {name} health"),
            format!(
                "{}{record}",
                crate::engine::health::wait_script(health, *health_timeout_secs)
            ),
        ));
        steps
    }

    fn record(&self, item: &Item, inv: &mut Inventory) {
        if let Item::Stack { name, hash, .. } = item {
            inv.stacks.insert(name.clone(), hash.clone());
        }
    }

    fn prune(&self, _e: &InventoryEntry, _obs: &Observed) -> Prune {
        Prune::Delete(None)
    }

    fn remove(&self, _root: &str, id: &str) -> Option<String> {
        Some(prune(id))
    }

    /// Stopped first, while its files still exist.
    fn prune_rank(&self) -> u8 {
        0
    }

    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        super::managed(item, base)
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        base.managed.insert((item.kind(), item.id().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn stack(name: &str) -> Item {
        Item::Stack {
            name: name.into(),
            dir: "/srv/bastion".into(),
            hash: "abc".into(),
            compose: Some("compose.yaml".into()),
            services: BTreeMap::new(),
            health: vec![],
            health_timeout_secs: 60,
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let s = probe(&[stack("bastion")]);
        assert_eq!(
            s,
            "command -v docker >/dev/null && docker ps -a --filter label=com.docker.compose.project=bastion \
             --format '{{.Label \"com.docker.compose.service\"}}\t{{.State}}\t{{.Image}}' | sed 's/^/D\t'bastion'\t/'\n"
        );
        sh_n(&s);
        let up = apply("", "bastion", "/srv/bastion");
        assert_eq!(
            up,
            "cd /srv/bastion || return\nif docker compose version >/dev/null 2>&1; then \
             docker compose -p bastion up -d --remove-orphans >&2 || return; \
             else docker-compose -p bastion up -d --remove-orphans >&2 || return; fi\n"
        );
        sh_n_step(&up);
        sh_n_step(&prune("bastion"));
        // A hostile name stays one word in every fragment.
        for body in [
            probe(&[stack("x$(reboot)")]),
            apply("", "x$(reboot)", "/srv/a b"),
            prune("x$(reboot)"),
        ] {
            assert!(body.contains("'x$(reboot)'"), "{body}");
            assert!(!body.contains(" x$(reboot)"), "{body}");
            sh_n_step(&body);
        }
    }

    #[test]
    fn container_records_read_back_and_drift_is_named() {
        let (stack, c) = parse("bastion\tdnsmasq\trunning\tdnsmasq:2").unwrap();
        assert_eq!(
            (stack, c.service.as_str(), c.image.as_str()),
            ("bastion", "dnsmasq", "dnsmasq:2")
        );
        assert_eq!(parse("bastion\tdnsmasq\texited").unwrap().1.image, "");
        assert_eq!(parse("bastion").unwrap_err(), Garbled);

        let mut services = BTreeMap::new();
        services.insert(
            "dnsmasq".to_string(),
            Service {
                image: Some("dnsmasq:2".into()),
                fingerprint: String::new(),
            },
        );
        let want = Wanted {
            name: "bastion",
            dir: "/srv/bastion",
            hash: "abc",
            compose: None,
            services: &services,
        };
        let mut obs = Observed::default();
        assert_eq!(
            plan(&want, &obs, false, false).unwrap().note.as_deref(),
            Some("docker compose up (first deploy)")
        );
        obs.inventory.stacks.insert("bastion".into(), "abc".into());
        obs.stacks.insert("bastion".into(), vec![c.clone()]);
        assert_eq!(
            plan(&want, &obs, false, false),
            None,
            "running as the config says"
        );
        obs.stacks.get_mut("bastion").unwrap()[0].image = "dnsmasq:1".into();
        assert!(
            plan(&want, &obs, false, false)
                .unwrap()
                .note
                .unwrap()
                .contains("image changed: dnsmasq runs dnsmasq:1")
        );
        obs.stacks.get_mut("bastion").unwrap()[0].state = "exited".into();
        assert!(
            plan(&want, &obs, false, false)
                .unwrap()
                .note
                .unwrap()
                .contains("not running: dnsmasq (exited)")
        );
        assert!(
            plan(&want, &obs, true, false)
                .unwrap()
                .note
                .unwrap()
                .contains("its files changed")
        );
    }
}
