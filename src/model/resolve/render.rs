//! Rendering again once providers have assigned addresses: what the hosts'
//! templates make (resources, handlers), made anew from the roles loading
//! kept, with the addresses of an [`AddressBook`]. Nothing is parsed again,
//! and no key material is needed: the secrets templates use are the fleet's
//! decrypted values.

use super::*;

/// `fleet` with the addresses and host keys of `book` (see [`assign_addresses`]), and
/// what its templates make rendered with every address now known
/// (`host.address`, `hosts.NAME.private_address`). Settings, pins, SSH and
/// trust stay as the caller set them (a proposal's are the base branch's).
/// Should the config not render with the addresses (only a template can
/// make it fail), the resources stay as they were and a warning says why.
pub fn render_with(fleet: &Fleet, book: &AddressBook) -> Fleet {
    let mut out = fleet.clone();
    assign_addresses(&mut out, book);
    let Some(src) = out.source.clone() else {
        return out;
    };
    let seen = assigned(&out);
    if seen == src.book {
        return out;
    }
    let before: Vec<_> = out
        .hosts
        .iter_mut()
        .map(|h| {
            (
                std::mem::take(&mut h.resources),
                std::mem::take(&mut h.handlers),
            )
        })
        .collect();
    match render(&mut out, &src, &seen) {
        Ok(()) => out.source = Some(Source { book: seen, ..src }),
        Err(d) => {
            let d = crate::model::desired::redact(&out.redactions, &d.to_string());
            tracing::warn!("the config does not render with the servers' addresses: {d}");
            for (h, (resources, handlers)) in out.hosts.iter_mut().zip(before) {
                h.resources = resources;
                h.handlers = handlers;
            }
        }
    }
    out
}

/// Put the addresses and host keys of `book` on the fleet's hosts: the
/// public address and host key as the book has them, the private address
/// where it has one.
pub fn assign_addresses(fleet: &mut Fleet, book: &AddressBook) {
    for h in fleet.hosts.iter_mut() {
        if let Some(a) = book.get(&h.name) {
            h.address = a.public.clone();
            h.private_address = a.private.clone().or(h.private_address.take());
            h.cloud_host_key = a.host_key.clone();
            h.cloud_host_key_rotated = a.host_key_rotated;
        }
    }
}

/// The provider-assigned addresses of the fleet's cloud hosts, as its
/// templates see them.
fn assigned(fleet: &Fleet) -> AddressBook {
    fleet
        .hosts
        .iter()
        .filter(|h| {
            matches!(
                h.provider,
                ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
            )
        })
        .filter(|h| h.address.is_some() || h.private_address.is_some())
        .map(|h| {
            let a = Addresses {
                public: h.address.clone(),
                private: h.private_address.clone(),
                host_key: None,
                host_key_rotated: false,
            };
            (h.name.clone(), a)
        })
        .collect()
}

/// Instantiate every host's roles again (their resources and handlers were
/// taken out) with `seen` known, the way loading does.
fn render(fleet: &mut Fleet, src: &Source, seen: &AddressBook) -> Result<(), Diagnostics> {
    let mut l = Loader::new(&src.tree, None, seen, None);
    l.plain = fleet.secret_values.0.clone().into_iter().collect();
    l.undecryptable = src
        .undecryptable
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let templates = l.templates(&src.secrets);
    l.host_facts = facts_of_hosts(&fleet.hosts);
    for host in fleet.hosts.iter_mut() {
        let roles: Vec<&RoleDef> = host.roles.iter().filter_map(|r| src.roles.get(r)).collect();
        let ctx = l.template_context(host, &fleet.name);
        l.instantiate(host, &roles, &ctx, &templates);
    }
    match l.diags.is_empty() {
        true => Ok(()),
        false => Err(l.diags),
    }
}

/// Host `name` of `fleet` rendered again with its discovered `facts`:
/// what its templates make with `facts.*` as the host has them (loading
/// rendered them with stand-ins). Errors are the templates' own, as text
/// naming file and line: only a template can make it fail (say, a
/// division by the CPU count of a host that reports none).
pub fn render_with_facts(
    fleet: &Fleet,
    name: &str,
    facts: &crate::model::Facts,
) -> Result<Host, String> {
    let mut host = fleet
        .host(name)
        .cloned()
        .ok_or_else(|| format!("no host named {name:?}"))?;
    host.facts = Some(facts.clone());
    let Some(src) = fleet.source.clone() else {
        // Loading keeps the source of every fleet whose templates read facts.
        return match host.facts_used.is_empty() {
            true => Ok(host),
            false => Err(format!(
                "{name}: the templates are not at hand to render again"
            )),
        };
    };
    host.resources.clear();
    host.handlers.clear();
    let mut l = Loader::new(&src.tree, None, &src.book, None);
    l.plain = fleet.secret_values.0.clone().into_iter().collect();
    l.undecryptable = src
        .undecryptable
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let templates = l.templates(&src.secrets);
    l.host_facts = facts_of_hosts(&fleet.hosts);
    let roles: Vec<&RoleDef> = host.roles.iter().filter_map(|r| src.roles.get(r)).collect();
    let ctx = l.template_context(&host, &fleet.name);
    l.instantiate(&mut host, &roles, &ctx, &templates);
    match l.diags.is_empty() {
        true => Ok(host),
        false => Err(crate::model::desired::redact(
            &fleet.redactions,
            &l.diags.to_string(),
        )),
    }
}

/// `hosts` for templates from the resolved hosts: the same facts loading
/// reads from the host files (see `hosts::facts`), with the addresses the
/// hosts now have.
fn facts_of_hosts(hosts: &[Host]) -> minijinja::Value {
    let mut out = serde_json::Map::new();
    for h in hosts {
        // A fixed address in the first network is a single host's own.
        let fixed = match h.group {
            Some(_) => None,
            None => h
                .server
                .as_ref()
                .and_then(|s| s.networks.first())
                .and_then(|n| n.ip.clone()),
        };
        out.insert(
            h.name.clone(),
            serde_json::json!({
                "name": h.name,
                "group": h.group,
                "index": h.index,
                "provider": provider_name(h.provider),
                "labels": h.labels,
                "address": h.address,
                "private_address": fixed.or(h.private_address.clone()),
            }),
        );
    }
    minijinja::Value::from(minijinja::value::Serde(serde_json::Value::Object(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> ConfigTree {
        let mut t = ConfigTree::default();
        for (p, text) in files {
            t.insert_file(p.to_string(), text.as_bytes().to_vec());
        }
        t
    }

    /// A fleet of two Hetzner servers on a network, whose templates show
    /// addresses the provider assigns and a secret.
    fn cloud_fleet(recipient: &str) -> ConfigTree {
        let secret = crate::secrets::encrypt(&[recipient.to_string()], b"s3cret-token-42")
            .expect("encrypts");
        let mut t = tree(&[
            (
                "tidekeeper.yaml",
                "fleet: acme\nproviders:\n  hetzner: {}\nnetworks:\n  lan: {ip_range: 10.0.0.0/16}\n",
            ),
            (
                "hosts/web.yaml",
                "provider: hetzner\nserver: {type: cpx11, image: debian-12, location: fsn1, networks: [lan]}\nroles: [r]\nvars: {port: 8080}\n",
            ),
            (
                "hosts/db.yaml",
                "provider: hetzner\nserver: {type: cpx11, image: debian-12, location: fsn1, networks: [lan]}\nroles: [r]\n",
            ),
            (
                "roles/r.yaml",
                "files:\n  - {path: /etc/peers, template: peers.j2}\n  - {path: /etc/motd, content: hello}\nfirewall:\n  rules:\n    - {port: \"22\"}\n    - {port: \"5432\", from: \"{{ hosts.web.private_address or '10.0.0.0/16' }}\"}\nhandlers:\n  - {name: peers, restart: ssh}\n",
            ),
            (
                "templates/peers.j2",
                "{{ host.name }} {{ host.address }} {{ host.private_address }}\n{% for n, h in hosts | items %}{{ n }}={{ h.address }}/{{ h.private_address }}\n{% endfor %}token={{ secret('token') }}\n",
            ),
        ]);
        t.insert_file("secrets/token.age".to_string(), secret);
        t
    }

    fn book() -> AddressBook {
        [
            ("web", "203.0.113.5", "10.0.0.2"),
            ("db", "203.0.113.6", "10.0.0.3"),
        ]
        .into_iter()
        .map(|(n, public, private)| {
            let a = Addresses {
                public: Some(public.into()),
                private: Some(private.into()),
                host_key: Some(format!("ssh-ed25519 AAAA{n}")),
                host_key_rotated: false,
            };
            (n.to_string(), a)
        })
        .collect()
    }

    fn made(f: &Fleet) -> Vec<(Vec<String>, Vec<String>)> {
        f.hosts
            .iter()
            .map(|h| {
                // Debug hides what a secret went into: the bytes too.
                let rs = h
                    .resources
                    .iter()
                    .map(|r| match r {
                        Resource::File(f) => {
                            format!("{r:?} {}", String::from_utf8_lossy(&f.content.bytes))
                        }
                        _ => format!("{r:?}"),
                    })
                    .collect();
                let hs = h.handlers.iter().map(|x| format!("{x:?}")).collect();
                (rs, hs)
            })
            .collect()
    }

    #[test]
    fn a_loaded_fleet_keeps_no_key_material() {
        let id = age::x25519::Identity::generate();
        let key = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        let t = cloud_fleet(&id.to_public().to_string());
        let fleet = load_with_identity(&t, Some(&key)).expect("loads");
        assert!(fleet.source.is_some(), "its templates can show addresses");
        assert!(fleet.secrets_decrypted);
        let everything = format!("{fleet:?}");
        assert!(!everything.contains("AGE-SECRET-KEY"), "{everything}");
        let secret_part = key.trim_start_matches("AGE-SECRET-KEY-1");
        assert!(!everything.contains(secret_part));
        // Rendering again needs no identity either.
        let again = render_with(&fleet, &book());
        assert!(!format!("{again:?}").contains(secret_part));
    }

    #[test]
    fn rendering_with_an_address_book_makes_what_loading_with_its_addresses_makes() {
        let id = age::x25519::Identity::generate();
        let key = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
        let t = cloud_fleet(&id.to_public().to_string());
        let fleet = load_with_identity(&t, Some(&key)).expect("loads");
        let rendered = render_with(&fleet, &book());

        let seen: AddressBook = book()
            .iter()
            .map(|(n, a)| {
                let a = Addresses {
                    host_key: None,
                    host_key_rotated: false,
                    ..a.clone()
                };
                (n.clone(), a)
            })
            .collect();
        let reloaded = load_knowing(&t, Some(&key), &seen).expect("loads");
        assert_eq!(made(&rendered), made(&reloaded));
        assert_ne!(
            made(&rendered),
            made(&fleet),
            "the addresses reach templates"
        );
        let peers = &made(&rendered)[1].0[0];
        assert!(peers.contains("web 203.0.113.5 10.0.0.2\n"), "{peers}");
        assert!(peers.contains("db=203.0.113.6/10.0.0.3\n"), "{peers}");
        assert!(peers.contains("web=203.0.113.5/10.0.0.2\n"), "{peers}");
        assert!(peers.contains("token=s3cret-token-42"), "{peers}");
        for (r, l) in rendered.hosts.iter().zip(&reloaded.hosts) {
            assert_eq!(r.address, l.address);
            assert_eq!(r.private_address, l.private_address);
        }
        let web = rendered.host("web").unwrap();
        assert_eq!(web.cloud_host_key.as_deref(), Some("ssh-ed25519 AAAAweb"));
        // What the templates saw is recorded: the same book renders nothing anew.
        assert_eq!(rendered.source.as_ref().unwrap().book, seen);
        let twice = render_with(&rendered, &book());
        assert_eq!(made(&twice), made(&rendered));
    }

    #[test]
    fn a_fleet_without_templates_only_takes_the_addresses() {
        let t = tree(&[
            (
                "tidekeeper.yaml",
                "fleet: acme\nproviders:\n  hetzner: {}\n",
            ),
            (
                "hosts/web.yaml",
                "provider: hetzner\nserver: {type: cpx11, image: debian-12, location: fsn1}\n",
            ),
        ]);
        let fleet = load(&t).expect("loads");
        assert!(fleet.source.is_none());
        let out = render_with(&fleet, &book());
        assert_eq!(out.hosts[0].address.as_deref(), Some("203.0.113.5"));
        assert_eq!(out.hosts[0].private_address.as_deref(), Some("10.0.0.2"));
    }

    fn content(h: &Host, path: &str) -> String {
        h.resources
            .iter()
            .find_map(|r| match r {
                Resource::File(f) if f.path == path => {
                    Some(String::from_utf8_lossy(&f.content.bytes).into_owned())
                }
                _ => None,
            })
            .expect("the file is managed")
    }

    #[test]
    fn a_host_whose_templates_read_facts_renders_with_stand_ins_then_with_its_facts() {
        let t = tree(&[
            ("tidekeeper.yaml", "fleet: acme\n"),
            (
                "hosts/db.yaml",
                "provider: existing\naddress: 192.0.2.7\nroles: [r]\n",
            ),
            (
                "hosts/web.yaml",
                "provider: existing\naddress: 192.0.2.8\nroles: [plain]\n",
            ),
            (
                "roles/r.yaml",
                "files:\n  - {path: /etc/pg.conf, template: pg.j2}\n  - {path: /etc/arm, content: arm, when: facts.arch == \"aarch64\"}\n  - {path: /etc/sparc, content: sparc, when: facts.arch == \"sparc64\"}\n",
            ),
            (
                "roles/plain.yaml",
                "files:\n  - {path: /etc/motd, content: hi}\n",
            ),
            (
                "templates/pg.j2",
                "shared_buffers = {{ facts.memory_mb // 4 }}MB\narch = {{ facts.arch }}\n",
            ),
        ]);
        let fleet = load(&t).expect("loads");
        let db = fleet.host("db").unwrap();
        assert_eq!(db.facts_used, ["arch", "memory_mb"]);
        assert_eq!(
            content(db, "/etc/pg.conf"),
            "shared_buffers = 0MB\narch = \n"
        );
        assert!(fleet.host("web").unwrap().facts_used.is_empty());
        let paths =
            |h: &Host| -> Vec<String> { h.resources.iter().map(|r| r.id().to_string()).collect() };
        assert_eq!(paths(db), ["/etc/pg.conf"], "no fact holds for stand-ins");
        let facts = crate::model::Facts {
            arch: "aarch64".into(),
            memory_mb: 8000,
            ..Default::default()
        };
        let db = render_with_facts(&fleet, "db", &facts).expect("renders");
        assert_eq!(
            content(&db, "/etc/pg.conf"),
            "shared_buffers = 2000MB\narch = aarch64\n"
        );
        assert_eq!(db.facts.as_ref(), Some(&facts));
        assert_eq!(paths(&db), ["/etc/pg.conf", "/etc/arm"]);
        assert_eq!(db.facts_used, ["arch", "memory_mb"]);
    }
}
