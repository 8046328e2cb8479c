//! A host's discovered facts (architecture, release, memory, CPUs,
//! interfaces) as templates see them: `facts.arch`, `facts.cpus`, …
//! The probe gathers them (see `engine::probe`); here is only the data and
//! the template value, which records which facts a host's templates read,
//! so a host whose content depends on them is rendered again once they are
//! known, and a plan made without a connection says they are unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use minijinja::value::{Enumerator, Object, Value};
use serde::{Deserialize, Serialize};

/// What the probe found out about a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The machine architecture as the kernel names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The distribution's id in /etc/os-release (`debian`, `ubuntu`).
    pub os: String,
    /// The release's VERSION_ID (`12`).
    pub release: String,
    /// The release's codename (`bookworm`).
    pub codename: String,
    /// /etc/debian_version (`12.7`, or `trixie/sid`); empty off Debian.
    pub debian_version: String,
    /// Memory the kernel sees, in MiB.
    pub memory_mb: u64,
    /// Online CPUs.
    pub cpus: u64,
    /// Every interface that has an address: its IPv4 and IPv6 addresses
    /// with their prefix length (`10.0.0.2/24`).
    pub interfaces: BTreeMap<String, Interface>,
}

/// One network interface's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
}

/// The names templates may read under `facts.`.
pub const NAMES: [&str; 8] = [
    "arch",
    "os",
    "release",
    "codename",
    "debian_version",
    "memory_mb",
    "cpus",
    "interfaces",
];

/// Which facts a host's templates read, collected while it renders.
pub(crate) type Seen = Arc<Mutex<BTreeSet<String>>>;

/// `facts` for templates: the host's facts when known; otherwise values of
/// the right type that stand in while the config is checked (`""`, `0`, no
/// interfaces) — a host that read any is rendered again with its real facts
/// before it is planned (see [`Host::facts_used`](super::desired::Host)).
/// A name that is not a fact stays undefined, so a typo is an error.
#[derive(Debug)]
pub(crate) struct FactsValue {
    known: Option<serde_json::Map<String, serde_json::Value>>,
    seen: Seen,
}

impl FactsValue {
    pub(crate) fn value(known: Option<&Facts>, seen: Seen) -> Value {
        let known = known.map(|f| match serde_json::to_value(f) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("facts serialize to an object"),
        });
        Value::from_object(FactsValue { known, seen })
    }
}

impl Object for FactsValue {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if !NAMES.contains(&name) {
            return None;
        }
        self.seen
            .lock()
            .expect("facts seen lock")
            .insert(name.to_string());
        let v = match &self.known {
            Some(m) => m.get(name).cloned()?,
            None => match name {
                "memory_mb" | "cpus" => serde_json::json!(0),
                "interfaces" => serde_json::json!({}),
                _ => serde_json::json!(""),
            },
        };
        Some(Value::from(minijinja::value::Serde(v)))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&NAMES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, known: Option<&Facts>) -> (Result<String, String>, BTreeSet<String>) {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let seen = Seen::default();
        let ctx = minijinja::context! { facts => FactsValue::value(known, seen.clone()) };
        let out = env.render_str(src, ctx).map_err(|e| e.to_string());
        let seen = seen.lock().unwrap().clone();
        (out, seen)
    }

    #[test]
    fn templates_read_known_facts_and_which_they_read_is_recorded() {
        let mut f = Facts {
            arch: "aarch64".into(),
            cpus: 4,
            memory_mb: 7820,
            ..Facts::default()
        };
        f.interfaces.insert(
            "eth0".into(),
            Interface {
                ipv4: vec!["10.0.0.2/24".into()],
                ipv6: vec![],
            },
        );
        let (out, seen) = render(
            "{{ facts.arch }} {{ facts.cpus * 2 }} {{ facts.interfaces.eth0.ipv4[0] }}",
            Some(&f),
        );
        assert_eq!(out.unwrap(), "aarch64 8 10.0.0.2/24");
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["arch", "cpus", "interfaces"]
        );
    }

    #[test]
    fn unknown_facts_stand_in_with_their_type_and_a_misspelt_fact_is_an_error() {
        let (out, seen) = render(
            "{% if facts.arch == 'aarch64' %}arm{% endif %}{{ facts.memory_mb // 2 }}\
             {% for i in facts.interfaces %}{{ i }}{% endfor %}",
            None,
        );
        assert_eq!(out.unwrap(), "0");
        assert_eq!(seen.len(), 3);
        let (out, _) = render("{{ facts.achr }}", None);
        assert!(out.unwrap_err().contains("undefined"));
    }
}
