//! What tidekeeper reads from a stack's compose file: its services, each
//! service's image and a fingerprint of its definition, so a plan can say
//! which services bringing the project up recreates, creates or removes, and
//! the probe's containers can be checked against the images configured. Pure.

use std::collections::BTreeMap;

use crate::digest::sha256_hex;

pub(crate) use crate::model::desired::COMPOSE_FILES as FILES;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub image: Option<String>,
    /// SHA-256 of the service's definition, keys sorted.
    pub fingerprint: String,
}

/// The services of a compose file; None when it is not YAML with a
/// `services:` mapping (compose itself will say what is wrong).
pub(crate) fn services(text: &[u8]) -> Option<BTreeMap<String, Service>> {
    let text = std::str::from_utf8(text).ok()?;
    let doc: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let map = doc.get("services")?.as_object()?;
    Some(
        map.iter()
            .map(|(name, def)| {
                (
                    name.clone(),
                    Service {
                        image: def.get("image").and_then(|i| i.as_str()).map(String::from),
                        // serde_json's maps are sorted: equal definitions print alike.
                        fingerprint: sha256_hex(def.to_string().as_bytes()),
                    },
                )
            })
            .collect(),
    )
}

/// Old and new services compared: what `up` recreates, creates and removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceChanges {
    pub recreate: Vec<String>,
    pub create: Vec<String>,
    pub remove: Vec<String>,
}

pub(crate) fn changes(
    old: &BTreeMap<String, Service>,
    new: &BTreeMap<String, Service>,
) -> ServiceChanges {
    let mut c = ServiceChanges::default();
    for (name, s) in new {
        match old.get(name) {
            None => c.create.push(name.clone()),
            Some(o) if o.fingerprint != s.fingerprint => c.recreate.push(name.clone()),
            Some(_) => {}
        }
    }
    c.remove = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_changed_service_is_recreated() {
        let old = services(b"services:\n  web:\n    image: a:1\n    ports: [\"80:80\"]\n  db:\n    image: pg:16\n  old: {image: x}\n").unwrap();
        // Key order and flow style do not matter; the definition does.
        let new = services(b"services:\n  db: {image: \"pg:16\"}\n  web:\n    ports: [\"8080:80\"]\n    image: a:1\n  cache: {image: redis:7}\n").unwrap();
        assert_eq!(new["web"].image.as_deref(), Some("a:1"));
        assert_eq!(
            changes(&old, &new),
            ServiceChanges {
                recreate: vec!["web".into()],
                create: vec!["cache".into()],
                remove: vec!["old".into()],
            }
        );
        assert_eq!(services(b"not: [compose"), None);
    }
}
