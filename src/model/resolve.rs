//! Resolution: raw spec → desired state, with every semantic check.
//!
//! Variable precedence, lowest first: `tidekeeper.yaml` `defaults.vars`, then
//! each role's `vars` in the order the host lists its roles, then the host's
//! own `vars`. Merging is per top-level key: a later level replaces the whole
//! value of a key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::{Environment, UndefinedBehavior};
use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::check;
use super::desired::*;
use super::diag::{Diagnostic, Diagnostics, Origin};
use super::raw::{self, S, Vars};
use crate::schedule::{self, Window};
use crate::source::{ConfigTree, Entry};

/// Config files (YAML) larger than this are refused before parsing.
pub const MAX_YAML_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted in a config file.
pub const MAX_YAML_DEPTH: usize = 32;
/// Most nodes an alias may expand to across a file (defuses "billion laughs").
pub const MAX_ALIAS_EVENTS: usize = 100_000;
/// Instructions one template render may execute.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

const FLEET_FILE: &str = "tidekeeper.yaml";
const SCHEDULES_FILE: &str = "schedules.yaml";
const KNOWN_HOSTS_FILE: &str = "known_hosts";

/// Load, check and resolve the config repo in `tree`.
pub fn load(tree: &ConfigTree) -> Result<Fleet, Diagnostics> {
    load_with_identity(tree, None)
}

/// Load with the age identity (the text of an identity file: one or more
/// `AGE-SECRET-KEY-1…` lines), so secrets are decrypted, in memory only.
/// Without one, secret values stay `(sensitive)` placeholders.
pub fn load_with_identity(tree: &ConfigTree, identity: Option<&str>) -> Result<Fleet, Diagnostics> {
    let mut l = Loader {
        tree,
        diags: Diagnostics::default(),
        reported: HashSet::new(),
        identity,
        plain: HashMap::new(),
    };
    let fleet = l.run();
    let mut diags = l.diags;
    if diags.is_empty()
        && let Some(mut fleet) = fleet
    {
        fleet.commit = tree.commit.clone();
        fleet.secrets_decrypted = identity.is_some();
        fleet.redactions = redactions(l.plain.values());
        fleet.secret_values = super::desired::SecretValues(l.plain.clone().into_iter().collect());
        return Ok(fleet);
    }
    diags.sort();
    // A template can push a secret into an error ("template … not found").
    let hide = redactions(l.plain.values());
    for d in diags.0.iter_mut() {
        d.message = super::desired::redact(&hide, &d.message);
        d.help = d.help.take().map(|h| super::desired::redact(&hide, &h));
    }
    Err(diags)
}

/// Shorter secrets are refused: they could not be redacted from output
/// without blanking ordinary words.
pub const MIN_SECRET_LEN: usize = 8;

fn yaml_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    alias_limits.max_replay_stack_depth = MAX_YAML_DEPTH;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_YAML_DEPTH,
            max_events: 500_000,
            max_nodes: 200_000,
            max_aliases: 10_000,
        },
        alias_limits: alias_limits,
    }
}

pub(crate) fn at<T>(file: &str, s: &Spanned<T>) -> Origin {
    Origin::new(file, s.referenced.line(), s.referenced.column())
}

/// Turn a YAML/serde error into a diagnostic in the user's words.
fn yaml_diagnostic(file: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let origin = match e.location() {
        Some(l) if l.line() > 0 => Origin::new(file, l.line(), l.column()),
        _ => Origin::file(file),
    };
    let mut msg = e.without_snippet().to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let tick = |s: &str| s.split('`').nth(1).unwrap_or("").to_string();
    if msg.starts_with("unknown field") {
        let expected = msg
            .split_once("expected ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        origin
            .error("unknown-key", format!("unknown key `{}`", tick(&msg)))
            .with_help(format!("{expected}; see docs/config.md"))
    } else if msg.starts_with("missing field") {
        origin
            .error(
                "missing-key",
                format!("missing required key `{}`", tick(&msg)),
            )
            .with_help("add it; see docs/config.md")
    } else if msg.starts_with("unknown variant") {
        let expected = msg
            .split_once("expected ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        origin
            .error(
                "invalid-value",
                format!("`{}` is not allowed here", tick(&msg)),
            )
            .with_help(expected)
    } else if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        origin
            .error(
                "duplicate-key",
                format!("key `{key}` appears twice in the same mapping"),
            )
            .with_help("remove one of them")
    } else if msg.contains("budget") || msg.contains("limit") || msg.contains("recursion") {
        origin.error("too-complex", format!("the YAML is too deeply nested or expands too many aliases ({msg})")).with_help(
            format!("config files may nest at most {MAX_YAML_DEPTH} levels and aliases may expand to at most {MAX_ALIAS_EVENTS} nodes"),
        )
    } else {
        origin.error("yaml", msg)
    }
}

struct Loader<'a> {
    tree: &'a ConfigTree,
    diags: Diagnostics,
    /// Keys of problems already reported, so a role used by 500 hosts reports once.
    reported: HashSet<String>,
    identity: Option<&'a str>,
    /// Decrypted secrets by name (only with an identity).
    plain: HashMap<String, String>,
}

/// Strings to blank out of any output: each secret, and each of its lines
/// long enough not to match ordinary text.
fn redactions<'s>(plain: impl Iterator<Item = &'s String>) -> Vec<String> {
    use base64::Engine;
    let mut out: Vec<String> = Vec::new();
    for p in plain {
        for cand in std::iter::once(p.trim()).chain(p.lines().map(str::trim)) {
            if cand.chars().count() < MIN_SECRET_LEN {
                continue;
            }
            // The common transforms a template applies (`| upper`, `| b64encode`).
            let b64 = base64::engine::general_purpose::STANDARD.encode(cand);
            for v in [
                cand.to_string(),
                cand.to_uppercase(),
                cand.to_lowercase(),
                b64,
            ] {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
    }
    // Longest first, so a secret is replaced before any of its lines.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// Decrypt one age file with the identity text (for `tidekeeper secrets edit`).
pub fn decrypt_secret(identity: &str, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    decrypt_age(identity, ciphertext)
}

/// Decrypt one age file with the identity text.
fn decrypt_age(identity: &str, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    use std::str::FromStr;
    let ids: Vec<age::x25519::Identity> = identity
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .collect();
    if ids.is_empty() {
        return Err("the identity holds no AGE-SECRET-KEY-1… line".into());
    }
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
        .map_err(|e| e.to_string())?;
    let mut reader = decryptor
        .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A server setting and its key, for provider-specific checks.
type NamedSetting<'s> = (&'static str, &'s Option<S<String>>);

/// A role with its checks done; templates are rendered per host.
struct RoleDef {
    vars: Vars,
    items: Vec<Item>,
    handlers: Vec<Handler>,
    firewall: Option<RoleFirewall>,
}

/// A role's firewall part: default policies only where the role sets them.
#[derive(Clone)]
struct RoleFirewall {
    incoming: Option<Policy>,
    outgoing: Option<Policy>,
    rules: Vec<(FirewallRule, Origin)>,
    origin: Origin,
}

enum Item {
    Ready(Resource),
    Template {
        base: FileResource,
        template: String,
    },
    Stack {
        base: Stack,
    },
}

struct Templates {
    env: Environment<'static>,
    used_secret: Arc<AtomicBool>,
    /// Template name → repo path, for error locations.
    paths: HashMap<String, String>,
}

impl<'a> Loader<'a> {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Report `d` only the first time `key` is seen.
    fn err_once(&mut self, key: String, d: Diagnostic) {
        if self.reported.insert(key) {
            self.diags.push(d);
        }
    }

    fn parse<T: DeserializeOwned>(&mut self, path: &str) -> Option<T> {
        let bytes = match self.tree.get(path) {
            Some(Entry::File { bytes, .. }) => bytes,
            Some(Entry::Symlink(t)) => {
                self.err(Origin::file(path).error("symlink", format!("{path} is a symlink (to {t:?})"))
                    .with_help("config files must be regular files in the repo; replace the link with the file"));
                return None;
            }
            Some(Entry::TooLarge(n)) => {
                self.err(too_large(path, *n as usize));
                return None;
            }
            _ => return None,
        };
        if bytes.len() > MAX_YAML_BYTES {
            self.err(too_large(path, bytes.len()));
            return None;
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let before = &bytes[..e.valid_up_to()];
                let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                let col = before
                    .rsplit(|b| *b == b'\n')
                    .next()
                    .map(|l| String::from_utf8_lossy(l).chars().count())
                    .unwrap_or(0) as u64
                    + 1;
                self.err(
                    Origin::new(path, line, col)
                        .error("not-utf8", "the file is not valid UTF-8")
                        .with_help("save it as UTF-8"),
                );
                return None;
            }
        };
        match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(yaml_diagnostic(path, &e));
                None
            }
        }
    }

    /// YAML files directly in `dir`, as (stem, path).
    fn yaml_files(&mut self, dir: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (path, _) in self.tree.under(dir) {
            let rel = &path[dir.len() + 1..];
            let Some(stem) = rel
                .strip_suffix(".yaml")
                .or_else(|| rel.strip_suffix(".yml"))
            else {
                continue;
            };
            if rel.contains('/') {
                self.err(
                    Origin::file(path)
                        .error(
                            "misplaced-file",
                            format!("{path} is in a subdirectory of {dir}/"),
                        )
                        .with_help(format!("put it directly in {dir}/")),
                );
                continue;
            }
            if let Some(first) = seen.insert(stem.to_string(), path.to_string()) {
                self.err(
                    Origin::file(path)
                        .error(
                            "duplicate-name",
                            format!("{path} and {first} both define {stem:?}"),
                        )
                        .with_help("remove or rename one of them"),
                );
                continue;
            }
            out.push((stem.to_string(), path.to_string()));
        }
        out
    }

    fn run(&mut self) -> Option<Fleet> {
        if self.tree.get(FLEET_FILE).is_none() {
            self.err(
                Origin::file(FLEET_FILE)
                    .error(
                        "missing-file",
                        "the config repo has no tidekeeper.yaml at its top level",
                    )
                    .with_help(
                        "create it with at least `fleet: <name>`, or start from `tidekeeper init`",
                    ),
            );
        }
        let fleet_file: Option<raw::FleetFile> = self.parse(FLEET_FILE);
        // With a broken tidekeeper.yaml, the rest is still checked against defaults
        // so that one run shows every error.
        let settings = Some(match fleet_file.as_ref() {
            Some(f) => self.settings(f),
            None => default_settings(),
        });

        let secrets = self.secrets();
        let templates = self.templates(&secrets);

        let mut roles: BTreeMap<String, RoleDef> = BTreeMap::new();
        let mut broken_roles: BTreeSet<String> = BTreeSet::new();
        for (name, path) in self.yaml_files("roles") {
            match self.parse::<raw::RoleFile>(&path) {
                Some(r) => {
                    let def = self.role(&path, r, &secrets);
                    roles.insert(name, def);
                }
                None => {
                    broken_roles.insert(name);
                }
            }
        }

        let host_files = self.yaml_files("hosts");
        if host_files.is_empty() && fleet_file.is_some() {
            self.err(
                Origin::file("hosts")
                    .error("no-hosts", "the config repo defines no hosts")
                    .with_help("add a file hosts/<name>.yaml; see docs/config.md"),
            );
        }
        let mut hosts: Vec<Host> = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut group_rollouts = BTreeMap::new();
        // Host files that failed to parse: jobs naming them get no second error.
        let mut broken_hosts: BTreeSet<String> = BTreeSet::new();
        for (stem, path) in host_files {
            let Some(h) = self.parse::<raw::HostFile>(&path) else {
                broken_hosts.insert(stem);
                continue;
            };
            let Some(settings) = &settings else { continue };
            let fleet_defaults = fleet_file.as_ref().map(|f| &f.defaults.vars);
            let fleet_name = settings_fleet_name(fleet_file.as_ref());
            let first = hosts.len();
            for host in self.hosts(
                &stem,
                &path,
                &h,
                settings,
                fleet_defaults,
                &fleet_name,
                &roles,
                &broken_roles,
                &templates,
            ) {
                if let Some(first) = names.get(&host.name) {
                    let d = host.origin.error("duplicate-host", format!("host name {:?} is already used by {first}", host.name))
                        .with_help("host names must be unique across hosts/; rename one (count: N groups are named <name>-1 … <name>-N)");
                    self.err(d);
                    continue;
                }
                names.insert(host.name.clone(), host.origin.clone());
                if let Some(g) = &host.group {
                    groups.entry(g.clone()).or_default().push(host.name.clone());
                }
                hosts.push(host);
            }
            if let Some(spec) = &h.rollout {
                let group = hosts[first..].first().and_then(|g| g.group.clone());
                match (&h.count, group) {
                    (Some(_), Some(group)) => {
                        let r = self.rollout(&path, spec);
                        for (name, s) in r.canary.iter().zip(&spec.canary) {
                            if !hosts[first..].iter().any(|h| h.name == *name) {
                                self.err(at(&path, s).error(
                                    "unknown-host",
                                    format!("rollout canary {name:?} is not a host of this group"),
                                ).with_help(format!("the group's hosts are {group}-1 … {group}-N")));
                            }
                        }
                        group_rollouts.insert(group, r);
                    }
                    (None, _) => {
                        let origin = spec
                            .canary
                            .first()
                            .or(spec.batch.as_ref())
                            .or(spec.pause.as_ref())
                            .map(|v| at(&path, v))
                            .unwrap_or_else(|| Origin::file(&path));
                        let d = origin
                            .error("invalid-key", "`rollout:` in a host file is for `count: N` groups")
                            .with_help("a single host is applied at once; for a rollout across hosts, put `rollout:` in tidekeeper.yaml");
                        self.err(d);
                    }
                    (Some(_), None) => {}
                }
            }
        }

        let known_hosts = self.known_hosts();
        let jobs = match self.tree.get(SCHEDULES_FILE) {
            Some(_) => self
                .parse::<raw::SchedulesFile>(SCHEDULES_FILE)
                .map(|s| self.jobs(s, &hosts, &groups, &secrets, &broken_hosts))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let policies = self
            .tree
            .under("policies")
            .filter(|(p, _)| p.ends_with(".rego"))
            .map(|(p, _)| p.to_string())
            .collect();

        let settings = settings?;
        if let (Some(r), Some(f)) = (&settings.rollout, &fleet_file)
            && let Some(spec) = &f.rollout
        {
            for (name, s) in r.canary.iter().zip(&spec.canary) {
                if !hosts.iter().any(|h| h.name == *name) && !broken_hosts.contains(name) {
                    self.err(at(FLEET_FILE, s).error(
                        "unknown-host",
                        format!("rollout canary {name:?} is not a host of the fleet"),
                    ));
                }
            }
        }
        let fleet_file = fleet_file?;
        Some(Fleet {
            name: fleet_file.fleet.value,
            commit: None,
            settings,
            hosts,
            jobs,
            known_hosts,
            policies,
            secrets_decrypted: false,
            redactions: vec![],
            secret_values: Default::default(),
            group_rollouts,
        })
    }

    fn rollout(&mut self, file: &str, r: &raw::RolloutSpec) -> super::desired::Rollout {
        use super::desired::Batch;
        let batch = match &r.batch {
            None => Batch::Count(1),
            Some(b) => {
                let v = b.value.trim();
                let parsed = match v.strip_suffix('%') {
                    Some(p) => p
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|p| (1..=100).contains(p))
                        .map(Batch::Percent),
                    None => v.parse::<u32>().ok().filter(|n| *n >= 1).map(Batch::Count),
                };
                parsed.unwrap_or_else(|| {
                    self.err(at(file, b).error(
                        "invalid-value",
                        format!("rollout batch {v:?} is not a count (2) or a share (25%)"),
                    ));
                    Batch::Count(1)
                })
            }
        };
        let pause_secs = match &r.pause {
            None => 0,
            Some(p) => match check::duration(&p.value) {
                Ok(d) => d.as_secs(),
                Err(e) => {
                    self.err(at(file, p).error("invalid-duration", e));
                    0
                }
            },
        };
        let origin = Origin::file(file);
        let health = self.health_checks(file, &origin, &r.health, None);
        super::desired::Rollout {
            canary: r.canary.iter().map(|c| c.value.clone()).collect(),
            batch,
            pause_secs,
            health,
        }
    }

    fn settings(&mut self, f: &raw::FleetFile) -> Settings {
        let file = FLEET_FILE;
        if let Err(e) = check::host_name(&f.fleet.value) {
            self.err(at(file, &f.fleet).error("invalid-name", format!("fleet name: {e}")));
        }
        let ssh = self.ssh(file, &f.defaults.ssh, None);
        let parallelism = f.defaults.parallelism.as_ref().map(|p| {
            if p.value == 0 {
                self.err(at(file, p).error("invalid-value", "parallelism must be at least 1"));
            }
            p.value
        });
        let mut duration = |v: &Option<S<String>>, default: u64, min: u64, what: &str| -> u64 {
            let Some(v) = v else { return default };
            match check::duration(&v.value) {
                Ok(d) if d.as_secs() >= min => d.as_secs(),
                Ok(_) => {
                    self.err(
                        at(file, v)
                            .error("invalid-value", format!("{what} must be at least {min}s")),
                    );
                    default
                }
                Err(e) => {
                    self.err(at(file, v).error("invalid-duration", e));
                    default
                }
            }
        };
        let poll = duration(&f.intervals.poll, 60, 5, "intervals.poll");
        let drift = duration(&f.intervals.drift, 600, 30, "intervals.drift");
        let hz = f.providers.hetzner.as_ref();
        let hz_timeout = duration(
            &hz.and_then(|h| h.timeout.clone()),
            30,
            1,
            "providers.hetzner.timeout",
        );
        let ls_timeout = duration(
            &f.providers
                .lightsail
                .as_ref()
                .and_then(|l| l.timeout.clone()),
            30,
            1,
            "providers.lightsail.timeout",
        );
        for e in [
            hz.and_then(|h| h.endpoint.as_ref()),
            f.providers
                .lightsail
                .as_ref()
                .and_then(|l| l.endpoint.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            if !(e.value.starts_with("https://") || e.value.starts_with("http://")) {
                self.err(at(file, e).error(
                    "invalid-value",
                    format!("endpoint {:?} must be an http:// or https:// URL", e.value),
                ));
            }
        }
        let forge = f.status.forge.as_ref().map(|fg| {
            let (default_url, default_env) = match fg.kind.value {
                ForgeKind::Github => (Some("https://api.github.com"), "GITHUB_TOKEN"),
                ForgeKind::Gitea => (None, "GITEA_TOKEN"),
            };
            let url = match (&fg.url, default_url) {
                (Some(u), _) => u.value.clone(),
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    self.err(at(file, &fg.kind).error(
                        "missing-key",
                        "a gitea forge needs `url`, e.g. https://gitea.example.com/api/v1",
                    ));
                    String::new()
                }
            };
            if !fg.repo.value.contains('/') {
                self.err(at(file, &fg.repo).error(
                    "invalid-value",
                    format!("forge repo {:?} must be \"owner/name\"", fg.repo.value),
                ));
            }
            Forge {
                kind: fg.kind.value,
                url,
                repo: fg.repo.value.clone(),
                token_env: opt(&fg.token_env).unwrap_or_else(|| default_env.into()),
            }
        });
        let branch = opt(&f.status.branch).unwrap_or_else(|| "tidekeeper/status".into());
        if let Some(b) = &f.status.branch
            && (b.value.is_empty()
                || b.value.contains("..")
                || b.value.contains(' ')
                || b.value.starts_with('/'))
        {
            self.err(at(file, b).error(
                "invalid-value",
                format!("{:?} is not a valid branch name", b.value),
            ));
        }
        if let Some(n) = &f.status.notes_ref
            && (!n.value.starts_with("refs/notes/") || !git2::Reference::is_valid_name(&n.value))
        {
            self.err(
                at(file, n)
                    .error("invalid-value", format!("{:?} is not a notes ref", n.value))
                    .with_help("a ref under refs/notes/, e.g. refs/notes/tidekeeper"),
            );
        }
        Settings {
            ssh,
            parallelism: parallelism.unwrap_or(10).max(1),
            drift: f.drift.as_ref().map(|d| d.value).unwrap_or_default(),
            poll_interval_secs: poll,
            drift_interval_secs: drift,
            status_branch: branch,
            notes_ref: opt(&f.status.notes_ref).unwrap_or_else(|| "refs/notes/tidekeeper".into()),
            forge,
            hetzner: Hetzner {
                declared: hz.is_some(),
                token_env: hz
                    .and_then(|h| opt(&h.token_env))
                    .unwrap_or_else(|| "HCLOUD_TOKEN".into()),
                endpoint: hz.and_then(|h| opt(&h.endpoint)),
                timeout_secs: hz_timeout,
            },
            lightsail: f.providers.lightsail.as_ref().map(|l| Lightsail {
                region: l.region.value.clone(),
                access_key_env: opt(&l.access_key_env)
                    .unwrap_or_else(|| "AWS_ACCESS_KEY_ID".into()),
                secret_key_env: opt(&l.secret_key_env)
                    .unwrap_or_else(|| "AWS_SECRET_ACCESS_KEY".into()),
                endpoint: opt(&l.endpoint),
                timeout_secs: ls_timeout,
            }),
            secrets_identity_env: opt(&f.secrets.identity_env)
                .unwrap_or_else(|| "TIDEKEEPER_AGE_IDENTITY".into()),
            secrets_identity_file: opt(&f.secrets.identity_file),
            suspend: f.suspend.as_ref().is_some_and(|s| s.value),
            rollout: f.rollout.as_ref().map(|r| self.rollout(file, r)),
            require_reviewed_plan: f
                .apply
                .require_reviewed_plan
                .as_ref()
                .is_some_and(|s| s.value),
        }
    }

    fn ssh(&mut self, file: &str, s: &raw::SshSettings, base: Option<&Ssh>) -> Ssh {
        if let Some(u) = &s.user
            && let Err(e) = check::account_name(&u.value)
        {
            self.err(at(file, u).error("invalid-value", format!("ssh user: {e}")));
        }
        if let Some(p) = &s.port
            && p.value == 0
        {
            self.err(at(file, p).error("invalid-port", "ssh port must be 1 to 65535"));
        }
        let base = base.cloned().unwrap_or(Ssh {
            user: "root".into(),
            port: 22,
            key: None,
            sudo: false,
            trust_on_first_use: false,
        });
        Ssh {
            user: opt(&s.user).unwrap_or(base.user),
            port: s.port.as_ref().map(|p| p.value).unwrap_or(base.port),
            key: opt(&s.key).or(base.key),
            sudo: s.sudo.as_ref().map(|p| p.value).unwrap_or(base.sudo),
            trust_on_first_use: s
                .trust_on_first_use
                .as_ref()
                .map(|p| p.value)
                .unwrap_or(base.trust_on_first_use),
        }
    }

    /// Names of `secrets/<name>.age`; anything else in secrets/ is refused.
    fn secrets(&mut self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let entries: Vec<(String, bool)> = self
            .tree
            .under("secrets")
            .map(|(p, e)| (p.to_string(), matches!(e, Entry::File { .. })))
            .collect();
        for (path, is_file) in entries {
            let rel = &path["secrets/".len()..];
            if matches!(
                rel.rsplit('/').next(),
                Some("README.md" | ".gitkeep" | ".gitattributes")
            ) {
                continue;
            }
            match rel.strip_suffix(".age") {
                Some(name) if is_file => {
                    names.insert(name.to_string());
                    if let Some(identity) = self.identity {
                        let bytes = self.tree.file(&path).unwrap_or_default().to_vec();
                        match decrypt_age(identity, &bytes) {
                            Ok(p) => match String::from_utf8(p) {
                                Ok(text) if text.trim().chars().count() < MIN_SECRET_LEN => self.err(
                                    Origin::file(&path)
                                        .error("secret-too-short", format!("{path} decrypts to fewer than {MIN_SECRET_LEN} characters"))
                                        .with_help("a value this short cannot be told apart from ordinary text, so it could not be kept out of plans and logs; use a longer secret"),
                                ),
                                Ok(text) => {
                                    self.plain.insert(name.to_string(), text);
                                }
                                Err(_) => self.err(Origin::file(&path).error("secret-not-text", "the decrypted secret is not UTF-8 text")),
                            },
                            Err(e) => self.err(
                                Origin::file(&path)
                                    .error("secret-decrypt", format!("cannot decrypt {path}: {e}"))
                                    .with_help("encrypt it to a recipient whose identity tidekeeper has (secrets.identity_env / identity_file)"),
                            ),
                        }
                    }
                }
                _ => self.err(Origin::file(&path).error("plaintext-secret", format!("{path} is not an age-encrypted file"))
                    .with_help("only <name>.age files belong in secrets/; encrypt it with `tidekeeper secrets encrypt` and remove the plaintext from git history")),
            }
        }
        names
    }

    fn templates(&mut self, secrets: &BTreeSet<String>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Templates render config files, not web pages: never escape implicitly
        // (minijinja would JSON-escape `*.json.j2`); use `|tojson` where wanted.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build();
        env.set_syntax(syntax.expect("default delimiters are valid"));
        // Bound the work one render may do, so a runaway loop is an error, not a hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        let used_secret = Arc::new(AtomicBool::new(false));
        let flag = used_secret.clone();
        let known = secrets.clone();
        let plain = self.plain.clone();
        env.add_function(
            "secret",
            move |name: String| -> Result<String, minijinja::Error> {
                flag.store(true, Ordering::Relaxed);
                if let Some(p) = plain.get(&name) {
                    Ok(p.clone())
                } else if known.contains(&name) {
                    // No identity here (validate): the value stays hidden.
                    Ok(SENSITIVE.to_string())
                } else {
                    Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!(
                            "secret {name:?} is referenced but secrets/{name}.age does not exist"
                        ),
                    ))
                }
            },
        );
        let mut paths = HashMap::new();
        let sources: Vec<(String, String, Option<Vec<u8>>)> = self
            .tree
            .under("templates")
            .map(|(p, e)| {
                (
                    p["templates/".len()..].to_string(),
                    p.to_string(),
                    entry_bytes(e),
                )
            })
            .chain(
                self.tree
                    .under("stacks")
                    .filter(|(p, _)| p.ends_with(".j2"))
                    .map(|(p, e)| (p.to_string(), p.to_string(), entry_bytes(e))),
            )
            .collect();
        for (name, path, bytes) in sources {
            let Some(bytes) = bytes else { continue };
            let Ok(text) = String::from_utf8(bytes) else {
                self.err(Origin::file(&path).error("not-utf8", "the template is not valid UTF-8"));
                continue;
            };
            paths.insert(name.clone(), path.clone());
            if let Err(e) = env.add_template_owned(name, text.clone()) {
                let d = template_diagnostic(&path, &text, &e);
                self.err(d);
            }
        }
        Templates {
            env,
            used_secret,
            paths,
        }
    }

    /// Check that `rel` names a regular file inside `dir/` of the repo.
    fn repo_file(&mut self, file: &str, s: &S<String>, dir: &str, what: &str) -> Option<String> {
        let o = at(file, s);
        if let Err(e) = check::repo_relative(&s.value) {
            self.err(o.error("path-escape", format!("{what}: {e}")));
            return None;
        }
        let full = format!("{dir}/{}", s.value);
        if let Some((link, target)) = self.tree.symlink_on_path(&full) {
            let (link, target) = (link.to_string(), target.to_string());
            self.err(
                o.error(
                    "symlink",
                    format!("{what} {full} goes through the symlink {link} (to {target:?})"),
                )
                .with_help(
                    "tidekeeper never follows symlinks in the config repo; commit the file itself",
                ),
            );
            return None;
        }
        match self.tree.get(&full) {
            Some(Entry::File { .. }) => Some(full),
            Some(Entry::TooLarge(n)) => {
                let n = *n;
                self.err(o.error(
                    "file-too-large",
                    format!(
                        "{full} is {n} bytes; managed files may be at most {} bytes",
                        crate::source::MAX_FILE_BYTES
                    ),
                ));
                None
            }
            _ => {
                let d = o.error(
                    "not-found",
                    format!("{what} {full} does not exist in the config repo"),
                );
                let d = match self.tree.has_dir(&full) {
                    true => d.with_help(format!("{full} is a directory; name a file")),
                    false => d.with_help(format!(
                        "add the file under {dir}/ and commit it, or fix the path"
                    )),
                };
                self.err(d);
                None
            }
        }
    }

    fn mode(&mut self, file: &str, m: &Option<S<String>>) -> Option<u32> {
        let m = m.as_ref()?;
        match check::mode(&m.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(at(file, m).error("invalid-mode", e));
                None
            }
        }
    }

    fn host_path(&mut self, file: &str, p: &S<String>) {
        if let Err(e) = check::host_path(&p.value) {
            self.err(at(file, p).error("invalid-path", e));
        }
    }

    fn account(&mut self, file: &str, n: &Option<S<String>>) {
        if let Some(n) = n
            && let Err(e) = check::account_name(&n.value)
        {
            self.err(at(file, n).error("invalid-name", e));
        }
    }

    fn role(&mut self, file: &str, r: raw::RoleFile, secrets: &BTreeSet<String>) -> RoleDef {
        let mut items = Vec::new();
        for f in &r.files {
            self.host_path(file, &f.path);
            let o = at(file, &f.path);
            let sources = [
                f.content.is_some(),
                f.source.is_some(),
                f.template.is_some(),
                f.secret.is_some(),
            ];
            if sources.iter().filter(|b| **b).count() != 1 {
                self.err(o.error("file-content", format!("file {} needs exactly one of content, source, template, secret", f.path.value))
                    .with_help("content: inline text; source: a file under files/; template: a minijinja template under templates/; secret: a secret under secrets/"));
                continue;
            }
            let mode = self.mode(file, &f.mode);
            self.account(file, &f.owner);
            self.account(file, &f.group);
            if let Some(v) = &f.validate
                && !v.value.contains("%s")
            {
                self.err(
                    at(file, v)
                        .error(
                            "invalid-value",
                            "validate command must contain %s (the candidate file's path)",
                        )
                        .with_help("e.g. validate: \"sshd -t -f %s\""),
                );
            }
            let secret = f.secret.is_some();
            let sensitive = f.sensitive.as_ref().map(|s| s.value).unwrap_or(false) || secret;
            let mut base = FileResource {
                path: f.path.value.clone(),
                content: Content {
                    bytes: Vec::new(),
                    sensitive,
                },
                // Secret-bearing files default to owner-only.
                mode: mode.or(if secret { Some(0o600) } else { None }),
                owner: opt(&f.owner),
                group: opt(&f.group),
                validate: opt(&f.validate),
                notify: f.notify.iter().map(|n| n.value.clone()).collect(),
                origin: o.clone(),
            };
            if let Some(c) = &f.content {
                base.content.bytes = c.value.clone().into_bytes();
                items.push(Item::Ready(Resource::File(base)));
            } else if let Some(s) = &f.source {
                if let Some(full) = self.repo_file(file, s, "files", "source") {
                    base.content.bytes = self.tree.file(&full).unwrap_or_default().to_vec();
                    items.push(Item::Ready(Resource::File(base)));
                }
            } else if let Some(t) = &f.template {
                if self.repo_file(file, t, "templates", "template").is_some() {
                    items.push(Item::Template {
                        base,
                        template: t.value.clone(),
                    });
                }
            } else if let Some(s) = &f.secret {
                if !secrets.contains(&s.value) {
                    self.err(missing_secret(file, s));
                } else {
                    base.content.bytes = match self.plain.get(&s.value) {
                        Some(p) => p.clone().into_bytes(),
                        None => SENSITIVE.as_bytes().to_vec(),
                    };
                    items.push(Item::Ready(Resource::File(base)));
                }
            }
        }
        for d in &r.directories {
            self.host_path(file, &d.path);
            let mode = self.mode(file, &d.mode);
            self.account(file, &d.owner);
            self.account(file, &d.group);
            items.push(Item::Ready(Resource::Directory(DirectoryResource {
                path: d.path.value.clone(),
                mode,
                owner: opt(&d.owner),
                group: opt(&d.group),
                origin: at(file, &d.path),
            })));
        }
        for s in &r.symlinks {
            self.host_path(file, &s.path);
            if s.target.value.is_empty() {
                self.err(at(file, &s.target).error("invalid-value", "symlink target is empty"));
            }
            items.push(Item::Ready(Resource::Symlink {
                path: s.path.value.clone(),
                target: s.target.value.clone(),
                origin: at(file, &s.path),
            }));
        }
        for a in &r.absent {
            self.host_path(file, a);
            items.push(Item::Ready(Resource::Absent {
                path: a.value.clone(),
                origin: at(file, a),
            }));
        }
        for (list, state) in [
            (&r.packages.present, PackageState::Present),
            (&r.packages.latest, PackageState::Latest),
            (&r.packages.absent, PackageState::Absent),
        ] {
            for p in list {
                if let Err(e) = check::package_name(&p.value) {
                    self.err(at(file, p).error("invalid-name", e));
                    continue;
                }
                items.push(Item::Ready(Resource::Package {
                    name: p.value.clone(),
                    state,
                    origin: at(file, p),
                }));
            }
        }
        for s in &r.services {
            if let Err(e) = check::unit_name(&s.name.value) {
                self.err(at(file, &s.name).error("invalid-name", e));
            }
            items.push(Item::Ready(Resource::Service(ServiceResource {
                name: s.name.value.clone(),
                enabled: s.enabled.as_ref().map(|e| e.value),
                state: s.state.as_ref().map(|e| e.value),
                origin: at(file, &s.name),
            })));
        }
        for g in &r.groups {
            self.account(file, &Some(clone_s(&g.name)));
            items.push(Item::Ready(Resource::Group {
                name: g.name.value.clone(),
                gid: g.gid.as_ref().map(|g| g.value),
                origin: at(file, &g.name),
            }));
        }
        for u in &r.users {
            self.account(file, &Some(clone_s(&u.name)));
            for g in &u.groups {
                self.account(file, &Some(clone_s(g)));
            }
            for p in [&u.home, &u.shell].into_iter().flatten() {
                self.host_path(file, p);
            }
            for k in &u.authorized_keys {
                if let Err(e) = check::public_key(&k.value) {
                    self.err(at(file, k).error("invalid-key", format!("authorized key: {e}")));
                }
            }
            items.push(Item::Ready(Resource::User(UserResource {
                name: u.name.value.clone(),
                uid: u.uid.as_ref().map(|v| v.value),
                groups: u.groups.iter().map(|g| g.value.clone()).collect(),
                shell: opt(&u.shell),
                home: opt(&u.home),
                system: u.system.as_ref().map(|v| v.value).unwrap_or(false),
                authorized_keys: u
                    .authorized_keys
                    .iter()
                    .map(|k| k.value.trim().to_string())
                    .collect(),
                origin: at(file, &u.name),
            })));
        }
        let firewall = r.firewall.as_ref().map(|fw| {
            let mut rules = Vec::new();
            for rule in &fw.rules {
                let o = [rule.port.as_ref(), rule.from.as_ref()]
                    .into_iter()
                    .flatten()
                    .next()
                    .map(|v| at(file, v));
                let o = o
                    .or_else(|| rule.action.as_ref().map(|a| at(file, a)))
                    .unwrap_or_else(|| Origin::file(file));
                if rule.port.is_none() && rule.from.is_none() {
                    self.err(o.error(
                        "invalid-rule",
                        "a firewall rule needs `port`, `from`, or both",
                    ));
                    continue;
                }
                let mut fr = FirewallRule {
                    action: rule
                        .action
                        .as_ref()
                        .map(|a| a.value)
                        .unwrap_or(RuleAction::Allow),
                    from_port: None,
                    to_port: None,
                    proto: opt(&rule.proto).unwrap_or_else(|| {
                        if rule.port.is_some() {
                            "tcp".into()
                        } else {
                            "any".into()
                        }
                    }),
                    from: opt(&rule.from).unwrap_or_else(|| "any".into()),
                    comment: opt(&rule.comment),
                };
                if let Some(p) = &rule.port {
                    match check::port_spec(&p.value) {
                        Ok((a, b)) => (fr.from_port, fr.to_port) = (Some(a), Some(b)),
                        Err(e) => self.err(at(file, p).error("invalid-port", e)),
                    }
                }
                if let Some(p) = &rule.proto
                    && let Err(e) = check::proto(&p.value)
                {
                    self.err(at(file, p).error("invalid-value", e));
                }
                // `from` may be a template such as "{{ ssh_allow_from }}"; it is checked per host.
                if let Some(c) = &rule.from
                    && !is_template(&c.value)
                    && let Err(e) = check::cidr(&c.value)
                {
                    self.err(at(file, c).error("invalid-cidr", e));
                }
                let from_at = rule.from.as_ref().map(|c| at(file, c)).unwrap_or(o);
                rules.push((fr, from_at));
            }
            let origin = fw
                .incoming
                .as_ref()
                .map(|p| at(file, p))
                .unwrap_or_else(|| Origin::file(file));
            RoleFirewall {
                incoming: fw.incoming.as_ref().map(|p| p.value),
                outgoing: fw.outgoing.as_ref().map(|p| p.value),
                rules,
                origin,
            }
        });
        for (key, value) in &r.sysctl {
            let ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !ok {
                self.err(at(file, value).error(
                    "invalid-name",
                    format!("{key:?} is not a sysctl key such as net.ipv4.ip_forward"),
                ));
            }
            items.push(Item::Ready(Resource::Sysctl {
                key: key.clone(),
                value: value.value.clone(),
                origin: at(file, value),
            }));
        }
        for c in &r.commands {
            let timeout = match &c.timeout {
                Some(t) => match check::duration(&t.value) {
                    Ok(d) => d.as_secs(),
                    Err(e) => {
                        self.err(at(file, t).error("invalid-duration", e));
                        0
                    }
                },
                None => 600,
            };
            if let Some(p) = &c.creates {
                self.host_path(file, p);
            }
            if let Err(e) = check::shell_word("command", &c.name.value) {
                self.err(at(file, &c.name).error("invalid-name", e));
            }
            if c.run.value.trim().is_empty() {
                self.err(at(file, &c.run).error("invalid-value", "command `run` is empty"));
            }
            items.push(Item::Ready(Resource::Command(CommandResource {
                name: c.name.value.clone(),
                run: c.run.value.clone(),
                creates: opt(&c.creates),
                unless: opt(&c.unless),
                onlyif: opt(&c.onlyif),
                timeout_secs: timeout,
                notify: c.notify.iter().map(|n| n.value.clone()).collect(),
                origin: at(file, &c.name),
            })));
        }
        for s in &r.stacks {
            let dir = format!("stacks/{}", s.name.value);
            if let Err(e) = check::repo_relative(&s.name.value).and_then(|_| {
                if s.name.value.contains('/') {
                    Err(format!(
                        "{:?} must be a single directory name",
                        s.name.value
                    ))
                } else {
                    Ok(())
                }
            }) {
                self.err(at(file, &s.name).error("path-escape", format!("stack: {e}")));
                continue;
            }
            if !self.tree.has_dir(&dir) {
                self.err(
                    at(file, &s.name)
                        .error(
                            "not-found",
                            format!(
                                "stack {:?} has no directory {dir}/ in the config repo",
                                s.name.value
                            ),
                        )
                        .with_help(format!("add {dir}/compose.yaml")),
                );
                continue;
            }
            // Any of compose's own names, or one of them as a template.
            let has_compose = COMPOSE_FILES.iter().any(|f| {
                self.tree.file(&format!("{dir}/{f}")).is_some()
                    || self.tree.file(&format!("{dir}/{f}.j2")).is_some()
            });
            if !has_compose {
                self.err(at(file, &s.name).error(
                    "not-found",
                    format!("stack directory {dir}/ has no compose.yaml"),
                ));
            }
            let target = opt(&s.dir).unwrap_or_else(|| format!("/opt/stacks/{}", s.name.value));
            if let Some(d) = &s.dir {
                self.host_path(file, d);
            }
            let mut files = BTreeMap::new();
            let entries: Vec<(String, Entry)> = self
                .tree
                .under(&dir)
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect();
            for (p, e) in entries {
                let rel = p[dir.len() + 1..].to_string();
                // The name reaches the plan and apply scripts on the host.
                if let Err(e) = check::host_path(&format!("{target}/{rel}")) {
                    self.err(
                        Origin::file(&p)
                            .error("invalid-name", format!("stack file: {e}"))
                            .with_help("rename the file in the config repo"),
                    );
                    continue;
                }
                match e {
                    Entry::File { bytes, .. } => {
                        files.insert(rel, Content { bytes, sensitive: false });
                    }
                    Entry::Symlink(t) => self.err(Origin::file(&p).error("symlink", format!("{p} is a symlink (to {t:?})"))
                        .with_help("tidekeeper never follows symlinks in the config repo; commit the file itself")),
                    Entry::TooLarge(n) => self.err(too_large(&p, n as usize)),
                    Entry::Submodule => {}
                }
            }
            let health =
                self.health_checks(file, &at(file, &s.name), &s.health, Some(&s.name.value));
            // How long the gates may take to pass after `up`: the longest `timeout` given.
            let mut given: Option<u64> = None;
            for t in s.health.iter().filter_map(|h| h.timeout.as_ref()) {
                match check::duration(&t.value) {
                    Ok(d) => given = Some(given.unwrap_or(0).max(d.as_secs().max(1))),
                    Err(e) => self.err(at(file, t).error("invalid-duration", e)),
                }
            }
            let health_timeout_secs = given.unwrap_or(120);
            items.push(Item::Stack {
                base: Stack {
                    name: s.name.value.clone(),
                    dir: target,
                    files,
                    health,
                    health_timeout_secs,
                    origin: at(file, &s.name),
                },
            });
        }
        let mut handlers = Vec::new();
        for h in &r.handlers {
            let actions: Vec<HandlerAction> = [
                h.restart
                    .as_ref()
                    .map(|v| HandlerAction::Restart(v.value.clone())),
                h.reload
                    .as_ref()
                    .map(|v| HandlerAction::Reload(v.value.clone())),
                h.run.as_ref().map(|v| HandlerAction::Run(v.value.clone())),
            ]
            .into_iter()
            .flatten()
            .collect();
            for u in [&h.restart, &h.reload].into_iter().flatten() {
                if let Err(e) = check::unit_name(&u.value) {
                    self.err(at(file, u).error("invalid-name", e));
                }
            }
            if let Err(e) = check::shell_word("handler", &h.name.value) {
                self.err(at(file, &h.name).error("invalid-name", e));
            }
            if actions.len() != 1 {
                self.err(at(file, &h.name).error(
                    "invalid-handler",
                    format!(
                        "handler {:?} needs exactly one of restart, reload, run",
                        h.name.value
                    ),
                ));
                continue;
            }
            handlers.push(Handler {
                name: h.name.value.clone(),
                action: actions.into_iter().next().unwrap(),
                origin: at(file, &h.name),
            });
        }
        RoleDef {
            vars: r.vars,
            items,
            handlers,
            firewall,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hosts(
        &mut self,
        stem: &str,
        file: &str,
        h: &raw::HostFile,
        settings: &Settings,
        fleet_vars: Option<&Vars>,
        fleet_name: &str,
        roles: &BTreeMap<String, RoleDef>,
        broken_roles: &BTreeSet<String>,
        templates: &Templates,
    ) -> Vec<Host> {
        let name_origin = h
            .name
            .as_ref()
            .map(|n| at(file, n))
            .unwrap_or_else(|| Origin::file(file));
        let base_name = h
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| stem.to_string());
        let count = h.count.as_ref().map(|c| c.value);
        let check_name = match count {
            Some(n) => format!("{base_name}-{n}"),
            None => base_name.clone(),
        };
        if let Err(e) = check::host_name(&check_name) {
            self.err(
                name_origin
                    .error("invalid-name", e)
                    .with_help("host names come from `name:` or the file name"),
            );
            return Vec::new();
        }
        if let Some(c) = &h.count
            && (c.value == 0 || c.value > 1000)
        {
            self.err(at(file, c).error("invalid-value", "count must be from 1 to 1000"));
            return Vec::new();
        }
        let provider = h.provider.value;
        let p_at = at(file, &h.provider);
        let server = self.server(file, &p_at, provider, h, settings);
        match (provider, &h.address) {
            (ProviderKind::Existing, None) => self.err(p_at.error("missing-key", "an existing host needs `address` (IP or DNS name)")),
            (ProviderKind::Existing, Some(a)) if a.value.trim().is_empty() || a.value.contains(char::is_whitespace) => {
                self.err(at(file, a).error("invalid-value", format!("address {:?} is not an IP address or DNS name", a.value)))
            }
            (ProviderKind::Existing, Some(_)) if count.is_some() => {
                self.err(p_at.error("invalid-value", "count cannot be used with provider: existing").with_help("write one file per existing host, each with its address"))
            }
            (ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Local, Some(a)) => self.err(at(file, a).error(
                "invalid-key",
                format!("`address` is only for provider: existing; a {} host's address comes from {}", provider_name(provider), if provider == ProviderKind::Local { "the machine itself" } else { "the cloud" }),
            )),
            _ => {}
        }
        if let Some(r) = &h.root {
            if provider != ProviderKind::Local {
                self.err(at(file, r).error("invalid-key", "`root` is only for provider: local"));
            } else {
                self.host_path(file, r);
            }
        }
        let ssh = self.ssh(file, &h.ssh, Some(&settings.ssh));

        // Roles: every name must exist.
        let mut host_roles: Vec<&RoleDef> = Vec::new();
        let mut role_names = Vec::new();
        for r in &h.roles {
            match roles.get(&r.value) {
                Some(def) => {
                    if role_names.contains(&r.value) {
                        self.err(at(file, r).error(
                            "duplicate-role",
                            format!("role {:?} is listed twice", r.value),
                        ));
                        continue;
                    }
                    host_roles.push(def);
                    role_names.push(r.value.clone());
                }
                None if broken_roles.contains(&r.value) => {}
                None => {
                    let available: Vec<&str> = roles.keys().map(|s| s.as_str()).collect();
                    let help = match closest(&r.value, &available) {
                        Some(c) => format!("did you mean {c:?}? Roles are the files in roles/"),
                        None => format!(
                            "add roles/{}.yaml or fix the name; roles: {}",
                            r.value,
                            available.join(", ")
                        ),
                    };
                    self.err(
                        at(file, r)
                            .error("unknown-role", format!("unknown role {:?}", r.value))
                            .with_help(help),
                    );
                }
            }
        }

        let labels: BTreeMap<String, String> = h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        let mut vars = serde_json::Map::new();
        for (k, v) in fleet_vars.into_iter().flatten() {
            vars.insert(k.clone(), v.clone());
        }
        for role in &host_roles {
            for (k, v) in &role.vars {
                vars.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &h.vars {
            vars.insert(k.clone(), v.clone());
        }

        let members: Vec<(String, Option<u32>)> = match count {
            Some(n) => (1..=n)
                .map(|i| (format!("{base_name}-{i}"), Some(i)))
                .collect(),
            None => vec![(base_name.clone(), None)],
        };
        let mut out = Vec::new();
        for (name, index) in members {
            let mut host = Host {
                name: name.clone(),
                group: count.map(|_| base_name.clone()),
                index,
                provider,
                server: server.clone(),
                address: opt(&h.address),
                root: opt(&h.root),
                ssh: ssh.clone(),
                labels: labels.clone(),
                roles: role_names.clone(),
                vars: vars.clone(),
                resources: Vec::new(),
                handlers: Vec::new(),
                allow_destroy: h.allow_destroy.as_ref().map(|a| a.value).unwrap_or(false),
                cloud_host_key: None,
                trust: Default::default(),
                origin: name_origin.clone(),
            };
            let ctx = self.template_context(&host, fleet_name);
            self.instantiate(&mut host, &host_roles, &ctx, templates);
            out.push(host);
        }
        out
    }

    fn server(
        &mut self,
        file: &str,
        p_at: &Origin,
        provider: ProviderKind,
        h: &raw::HostFile,
        settings: &Settings,
    ) -> Option<Server> {
        let cloud = matches!(provider, ProviderKind::Hetzner | ProviderKind::Lightsail);
        let Some(s) = &h.server else {
            if cloud {
                self.err(p_at.error("missing-key", format!("a {} host needs a `server:` section", provider_name(provider)))
                    .with_help(match provider {
                        ProviderKind::Hetzner => "e.g. server: {type: cpx31, image: debian-12, location: fsn1}",
                        _ => "e.g. server: {bundle: medium_3_0, blueprint: debian_12, zone: eu-central-1a}",
                    }));
            }
            return None;
        };
        if !cloud {
            self.err(p_at.error(
                "invalid-key",
                format!(
                    "`server:` is only for cloud hosts (hetzner, lightsail), not provider: {}",
                    provider_name(provider)
                ),
            ));
            return None;
        }
        let (need, forbid): (&[NamedSetting], &[NamedSetting]) = match provider {
            ProviderKind::Hetzner => (
                &[
                    ("type", &s.server_type),
                    ("image", &s.image),
                    ("location", &s.location),
                ],
                &[
                    ("bundle", &s.bundle),
                    ("blueprint", &s.blueprint),
                    ("zone", &s.zone),
                ],
            ),
            _ => (
                &[
                    ("bundle", &s.bundle),
                    ("blueprint", &s.blueprint),
                    ("zone", &s.zone),
                ],
                &[
                    ("type", &s.server_type),
                    ("image", &s.image),
                    ("location", &s.location),
                ],
            ),
        };
        for (key, v) in need {
            if v.is_none() {
                self.err(p_at.error(
                    "missing-key",
                    format!("a {} server needs `server.{key}`", provider_name(provider)),
                ));
            }
        }
        for (key, v) in forbid {
            if let Some(v) = v {
                self.err(
                    at(file, v)
                        .error(
                            "invalid-key",
                            format!(
                                "`{key}` is not a {} server setting",
                                provider_name(provider)
                            ),
                        )
                        .with_help(match provider {
                            ProviderKind::Hetzner => "Hetzner servers use type, image, location",
                            _ => "Lightsail instances use bundle, blueprint, zone",
                        }),
                );
            }
        }
        if provider == ProviderKind::Lightsail && settings.lightsail.is_none() {
            self.err(p_at.error("missing-key", "this host uses provider: lightsail but tidekeeper.yaml has no providers.lightsail.region")
                .with_help("add providers: {lightsail: {region: eu-central-1}} to tidekeeper.yaml"));
        }
        let mut firewall = Vec::new();
        for p in &s.firewall {
            let (a, b) = match check::port_spec(&p.port.value) {
                Ok(r) => r,
                Err(e) => {
                    self.err(at(file, &p.port).error("invalid-port", e));
                    continue;
                }
            };
            let proto = opt(&p.proto).unwrap_or_else(|| "tcp".into());
            if let Some(pr) = &p.proto
                && let Err(e) = check::proto(&pr.value)
            {
                self.err(at(file, pr).error("invalid-value", e));
            }
            for c in &p.from {
                if let Err(e) = check::cidr(&c.value) {
                    self.err(at(file, c).error("invalid-cidr", e));
                }
            }
            let from = if p.from.is_empty() {
                vec!["0.0.0.0/0".into(), "::/0".into()]
            } else {
                p.from.iter().map(|c| c.value.clone()).collect()
            };
            firewall.push(CloudPort {
                from_port: a,
                to_port: b,
                proto,
                from,
            });
        }
        Some(Server {
            server_type: opt(&s.server_type),
            image: opt(&s.image),
            location: opt(&s.location),
            bundle: opt(&s.bundle),
            blueprint: opt(&s.blueprint),
            zone: opt(&s.zone),
            ssh_keys: s
                .ssh_keys
                .iter()
                .map(|k| {
                    // A name of a key the provider has, or a public key to upload.
                    if super::desired::is_public_key(&k.value)
                        && let Err(e) = check::public_key(&k.value)
                    {
                        self.err(at(file, k).error("invalid-key", format!("ssh key: {e}")));
                    }
                    k.value.clone()
                })
                .collect(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            firewall,
            static_ip: s.static_ip.as_ref().map(|v| v.value).unwrap_or(false),
            user_data: opt(&s.user_data),
        })
    }

    /// Health checks as written (`unit`, `command`, `http` or `container`,
    /// exactly one each); `stack` names the compose project of a stack's checks.
    fn health_checks(
        &mut self,
        file: &str,
        o: &Origin,
        specs: &[raw::HealthSpec],
        stack: Option<&str>,
    ) -> Vec<HealthCheck> {
        let mut health = Vec::new();
        for hc in specs {
            let set: Vec<HealthCheck> = [
                hc.unit.as_ref().map(|v| HealthCheck::Unit(v.value.clone())),
                hc.command
                    .as_ref()
                    .map(|v| HealthCheck::Command(v.value.clone())),
                hc.http.as_ref().map(|v| HealthCheck::Http(v.value.clone())),
                hc.container.as_ref().map(|v| {
                    HealthCheck::Container(match stack {
                        Some(p) => format!("{p}/{}", v.value),
                        None => v.value.clone(),
                    })
                }),
            ]
            .into_iter()
            .flatten()
            .collect();
            if set.len() != 1 {
                self.err(o.clone().error(
                    "invalid-health",
                    "each health check needs exactly one of unit, command, http, container",
                ));
                continue;
            }
            if let Some(u) = &hc.http
                && !(u.value.starts_with("http://") || u.value.starts_with("https://"))
            {
                self.err(at(file, u).error(
                    "invalid-value",
                    format!("{:?} is not an http:// or https:// URL", u.value),
                ));
            }
            health.extend(set);
        }
        health
    }

    fn template_context(&self, host: &Host, fleet_name: &str) -> serde_json::Value {
        let mut ctx = host.vars.clone();
        ctx.insert(
            "host".into(),
            serde_json::json!({
                "name": host.name,
                "group": host.group,
                "index": host.index,
                "provider": provider_name(host.provider),
                "address": host.address,
                "labels": host.labels,
                "roles": host.roles,
            }),
        );
        ctx.insert("fleet".into(), serde_json::json!({ "name": fleet_name }));
        serde_json::Value::Object(ctx)
    }

    /// Merge the roles' resources into `host`, rendering templates for it and
    /// checking that no two resources claim the same thing.
    fn instantiate(
        &mut self,
        host: &mut Host,
        roles: &[&RoleDef],
        ctx: &serde_json::Value,
        t: &Templates,
    ) {
        let mut claims: HashMap<(String, String), (Origin, Option<PackageState>)> = HashMap::new();
        let mut firewall: Option<RoleFirewall> = None;
        let mut handlers: BTreeMap<String, Handler> = BTreeMap::new();
        for role in roles {
            for h in &role.handlers {
                match handlers.get(&h.name) {
                    Some(first) if first.action != h.action => {
                        let d = h.origin.error(
                            "duplicate-name",
                            format!(
                                "handler {:?} is also defined differently at {}",
                                h.name, first.origin
                            ),
                        );
                        self.err_once(format!("handler:{}:{}", first.origin, h.origin), d);
                    }
                    Some(_) => {}
                    None => {
                        handlers.insert(h.name.clone(), h.clone());
                    }
                }
            }
            if let Some(fw) = &role.firewall {
                let acc = firewall.get_or_insert_with(|| RoleFirewall {
                    incoming: None,
                    outgoing: None,
                    rules: Vec::new(),
                    origin: fw.origin.clone(),
                });
                for (mine, theirs) in [
                    (&mut acc.incoming, fw.incoming),
                    (&mut acc.outgoing, fw.outgoing),
                ] {
                    match (*mine, theirs) {
                        (Some(a), Some(b)) if a != b => {
                            let d = fw.origin.error("conflict", format!("firewall default policies differ from those at {}", acc.origin))
                                .with_help(format!("set incoming/outgoing in one role only (both roles apply to host {})", host.name));
                            self.err_once(format!("fw:{}:{}", acc.origin, fw.origin), d);
                        }
                        (None, Some(b)) => {
                            *mine = Some(b);
                            acc.origin = fw.origin.clone();
                        }
                        _ => {}
                    }
                }
                acc.rules.extend(fw.rules.iter().cloned());
            }
        }
        for role in roles {
            for item in &role.items {
                let resource = match item {
                    Item::Ready(Resource::Sysctl { key, value, origin }) if is_template(value) => {
                        let Some(value) = self.render_str(t, value, ctx, origin, &host.name) else {
                            continue;
                        };
                        Resource::Sysctl {
                            key: key.clone(),
                            value,
                            origin: origin.clone(),
                        }
                    }
                    Item::Ready(r) => r.clone(),
                    Item::Template { base, template } => {
                        let mut f = base.clone();
                        match self.render(t, template, ctx, &host.name) {
                            Some((bytes, used_secret)) => {
                                f.content.bytes = bytes;
                                f.content.sensitive |= used_secret;
                                if used_secret && f.mode.is_none() {
                                    f.mode = Some(0o600);
                                }
                            }
                            None => continue,
                        }
                        Resource::File(f)
                    }
                    Item::Stack { base } => {
                        let mut s = base.clone();
                        let mut rendered = BTreeMap::new();
                        for (rel, content) in &base.files {
                            match rel.strip_suffix(".j2") {
                                Some(plain) => {
                                    let name = format!("stacks/{}/{rel}", base.name);
                                    if let Some((bytes, used_secret)) =
                                        self.render(t, &name, ctx, &host.name)
                                    {
                                        rendered.insert(
                                            plain.to_string(),
                                            Content {
                                                bytes,
                                                sensitive: used_secret,
                                            },
                                        );
                                    }
                                }
                                None => {
                                    rendered.insert(rel.clone(), content.clone());
                                }
                            }
                        }
                        s.files = rendered;
                        Resource::Stack(s)
                    }
                };
                let claim = claim_key(&resource);
                let origin = resource.origin().clone();
                let state = match &resource {
                    Resource::Package { state, .. } => Some(*state),
                    _ => None,
                };
                if let Some((first, first_state)) = claims.get(&claim) {
                    if resource.kind() == crate::change::ResourceKind::Package
                        && *first_state == state
                    {
                        continue; // two roles wanting the same package state agree
                    }
                    let d = origin
                        .error("conflict", format!("{} {} is also declared at {}", resource.kind(), resource.id(), first))
                        .with_help(format!("each path, user, unit and package may be managed once per host (both apply to host {}); keep one", host.name));
                    self.err_once(format!("claim:{first}:{origin}"), d);
                    continue;
                }
                claims.insert(claim, (origin, state));
                host.resources.push(resource);
            }
        }
        if let Some(fw) = firewall {
            let mut rules: Vec<FirewallRule> = Vec::new();
            for (mut rule, from_at) in fw.rules {
                if is_template(&rule.from) {
                    let Some(from) = self.render_str(t, &rule.from, ctx, &from_at, &host.name)
                    else {
                        continue;
                    };
                    if let Err(e) = check::cidr(&from) {
                        let d = from_at.error(
                            "invalid-cidr",
                            format!("{e} (rendered for host {})", host.name),
                        );
                        self.err_once(format!("cidr:{from_at}:{from}"), d);
                        continue;
                    }
                    rule.from = from;
                }
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
            host.resources.push(Resource::Firewall(Firewall {
                incoming: fw.incoming.unwrap_or(Policy::Deny),
                outgoing: fw.outgoing.unwrap_or(Policy::Allow),
                rules,
                origin: fw.origin,
            }));
        }
        // Every notify must name a handler the host has.
        for r in &host.resources {
            let notify = match r {
                Resource::File(f) => &f.notify,
                Resource::Command(c) => &c.notify,
                _ => continue,
            };
            for n in notify {
                if !handlers.contains_key(n) {
                    let d = r.origin().error("unknown-handler", format!("{} {} notifies {n:?}, but no role of host {} defines that handler", r.kind(), r.id(), host.name))
                        .with_help("add it under `handlers:` in one of the host's roles, e.g. {name: ssh, restart: ssh}");
                    self.err_once(format!("notify:{}:{n}", r.origin()), d);
                }
            }
        }
        host.handlers = handlers.into_values().collect();
    }

    /// Render template `name` for a host; errors are reported once per template location.
    fn render(
        &mut self,
        t: &Templates,
        name: &str,
        ctx: &serde_json::Value,
        host: &str,
    ) -> Option<(Vec<u8>, bool)> {
        let tmpl = t.env.get_template(name).ok()?; // syntax errors were reported when loading
        t.used_secret.store(false, Ordering::Relaxed);
        match tmpl.render(minijinja::value::Serde(ctx)) {
            Ok(s) => Some((s.into_bytes(), t.used_secret.load(Ordering::Relaxed))),
            Err(e) => {
                let tname = e.name().unwrap_or(name).to_string();
                let path = t
                    .paths
                    .get(&tname)
                    .cloned()
                    .unwrap_or_else(|| format!("templates/{tname}"));
                let text = self.tree.text(&path).unwrap_or_default();
                let mut d = template_diagnostic(&path, &text, &e);
                d.message = format!("{} (rendering for host {host})", d.message);
                self.err_once(format!("render:{}:{}:{}", d.file, d.line, d.column), d);
                None
            }
        }
    }

    /// Render an inline template string (a YAML value) for a host.
    fn render_str(
        &mut self,
        t: &Templates,
        src: &str,
        ctx: &serde_json::Value,
        origin: &Origin,
        host: &str,
    ) -> Option<String> {
        match t.env.render_str(src, minijinja::value::Serde(ctx)) {
            Ok(s) => Some(s),
            Err(e) => {
                let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
                let d = origin
                    .error("template", format!("{}{detail} (rendering {src:?} for host {host})", e.kind()))
                    .with_help("variables come from vars in tidekeeper.yaml, roles and hosts, plus host.* and fleet.*");
                self.err_once(format!("render-str:{origin}"), d);
                None
            }
        }
    }

    fn known_hosts(&mut self) -> Vec<KnownHost> {
        let Some(bytes) = self.tree.file(KNOWN_HOSTS_FILE) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(bytes).into_owned();
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let o = Origin::new(KNOWN_HOSTS_FILE, i as u64 + 1, 1);
            if l.starts_with('@') {
                self.err(
                    o.error(
                        "invalid-known-host",
                        "markers such as @cert-authority and @revoked are not supported",
                    )
                    .with_help("pin each host's key on its own line: \"<host> <type> <key>\""),
                );
                continue;
            }
            let Some((hosts, key)) = l.split_once(char::is_whitespace) else {
                self.err(o.error(
                    "invalid-known-host",
                    "expected \"<host>[,<host>…] <type> <key>\"",
                ));
                continue;
            };
            match check::public_key(key.trim()) {
                Ok((key_type, key)) => out.push(KnownHost {
                    hosts: hosts.split(',').map(str::to_string).collect(),
                    key_type,
                    key,
                    line: i as u64 + 1,
                }),
                Err(e) => self.err(
                    Origin::new(
                        KNOWN_HOSTS_FILE,
                        i as u64 + 1,
                        hosts.chars().count() as u64 + 2,
                    )
                    .error("invalid-known-host", e),
                ),
            }
        }
        out
    }

    fn jobs(
        &mut self,
        s: raw::SchedulesFile,
        hosts: &[Host],
        groups: &BTreeMap<String, Vec<String>>,
        secrets: &BTreeSet<String>,
        broken_hosts: &BTreeSet<String>,
    ) -> Vec<Job> {
        let file = SCHEDULES_FILE;
        let mut out = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        for j in s.jobs {
            let o = at(file, &j.name);
            if let Err(e) = check::host_name(&j.name.value) {
                self.err(o.error("invalid-name", format!("job name: {e}")));
            }
            if let Some(first) = names.insert(j.name.value.clone(), o.clone()) {
                self.err(o.error(
                    "duplicate-name",
                    format!("job {:?} is already defined at {first}", j.name.value),
                ));
            }
            let cron_ok = match schedule::parse_cron(&j.cron.value) {
                Ok(_) => true,
                Err(e) => {
                    self.err(at(file, &j.cron).error("invalid-cron", e).with_help("see docs/config.md#schedules for the syntax; e.g. \"0 3 * * 0\" is Sundays at 03:00"));
                    false
                }
            };
            let timezone = opt(&j.timezone).unwrap_or_else(|| "UTC".into());
            if let Some(tz) = &j.timezone
                && let Err(e) = schedule::parse_tz(&tz.value)
            {
                self.err(at(file, tz).error("invalid-timezone", e));
            }
            let window = j
                .window
                .as_ref()
                .and_then(|w| match Window::parse(&w.value) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        self.err(at(file, w).error("invalid-window", e));
                        None
                    }
                });
            let mut dur = |v: &Option<S<String>>, default: Option<u64>| -> Option<u64> {
                match v {
                    None => default,
                    Some(v) => match check::duration(&v.value) {
                        Ok(d) => Some(d.as_secs()),
                        Err(e) => {
                            self.err(at(file, v).error("invalid-duration", e));
                            default
                        }
                    },
                }
            };
            let timeout = dur(&j.timeout, Some(3600)).unwrap_or(3600);
            let catch_up = dur(&j.catch_up, None);
            let pause = dur(&j.rolling.pause, Some(0)).unwrap_or(0);
            if let (Some(w), Some(t)) = (&window, &j.timeout)
                && timeout as i64 > w.length().num_seconds()
            {
                self.err(at(file, t).error("window-too-short", format!(
                        "timeout {} is longer than the window {:?} ({} min); the job could never finish inside it",
                        t.value, j.window.as_ref().map(|w| w.value.clone()).unwrap_or_default(), w.length().num_minutes())));
            }
            let health = self.health_checks(file, &o, &j.health, None);
            // Host selection.
            let mut selected: Vec<String> = Vec::new();
            for n in &j.hosts.names {
                let known =
                    hosts.iter().any(|h| h.name == n.value) || groups.contains_key(&n.value);
                if !known && !broken_hosts.contains(&n.value) {
                    let all: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                    let d = at(file, n).error(
                        "unknown-host",
                        format!("job {:?} selects unknown host {:?}", j.name.value, n.value),
                    );
                    let d = match closest(&n.value, &all) {
                        Some(c) => d.with_help(format!("did you mean {c:?}?")),
                        None => d.with_help("hosts are defined in hosts/*.yaml"),
                    };
                    self.err(d);
                }
            }
            for g in &j.hosts.groups {
                if !groups.contains_key(&g.value) {
                    self.err(
                        at(file, g)
                            .error(
                                "unknown-group",
                                format!(
                                    "job {:?} selects unknown group {:?}",
                                    j.name.value, g.value
                                ),
                            )
                            .with_help("groups are host files with `count: N`"),
                    );
                }
            }
            let empty =
                j.hosts.names.is_empty() && j.hosts.groups.is_empty() && j.hosts.labels.is_empty();
            for h in hosts {
                let by_name = j
                    .hosts
                    .names
                    .iter()
                    .any(|n| n.value == h.name || h.group.as_deref() == Some(n.value.as_str()));
                let by_group = j
                    .hosts
                    .groups
                    .iter()
                    .any(|g| h.group.as_deref() == Some(g.value.as_str()));
                let by_labels = !j.hosts.labels.is_empty()
                    && j.hosts
                        .labels
                        .iter()
                        .all(|(k, v)| h.labels.get(k) == Some(&v.value));
                if empty || by_name || by_group || by_labels {
                    selected.push(h.name.clone());
                }
            }
            if selected.is_empty() && !hosts.is_empty() && broken_hosts.is_empty() {
                self.err(
                    o.error(
                        "no-hosts",
                        format!("job {:?} selects no hosts", j.name.value),
                    )
                    .with_help("check hosts.names, hosts.groups and hosts.labels"),
                );
            }
            let kinds = [
                j.backup.is_some(),
                j.snapshot.is_some(),
                j.upgrade.is_some(),
                j.power.is_some(),
                j.command.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                self.err(o.error(
                    "job-kind",
                    format!(
                        "job {:?} needs exactly one of backup, snapshot, upgrade, power, command",
                        j.name.value
                    ),
                ));
                continue;
            }
            let kind = if let Some(b) = &j.backup {
                if !secrets.contains(&b.password_secret.value) {
                    self.err(missing_secret(file, &b.password_secret));
                }
                for p in &b.paths {
                    self.host_path(file, p);
                }
                if b.paths.is_empty() && b.pg_dump.is_none() {
                    self.err(at(file, &b.repository).error(
                        "invalid-value",
                        "a backup needs `paths`, `pg_dump`, or both",
                    ));
                }
                JobKind::Backup {
                    repository: b.repository.value.clone(),
                    password_secret: b.password_secret.value.clone(),
                    paths: b.paths.iter().map(|p| p.value.clone()).collect(),
                    pg_dump: opt(&b.pg_dump),
                    keep_daily: b.keep.daily.as_ref().map(|v| v.value).unwrap_or(7),
                    keep_weekly: b.keep.weekly.as_ref().map(|v| v.value).unwrap_or(4),
                    keep_monthly: b.keep.monthly.as_ref().map(|v| v.value).unwrap_or(6),
                    check: b.check.as_ref().map(|v| v.value).unwrap_or(false),
                }
            } else if let Some(sn) = &j.snapshot {
                self.cloud_only(&o, &j.name.value, "snapshot", &selected, hosts);
                if sn.keep.value == 0 {
                    self.err(at(file, &sn.keep).error("invalid-value", "keep must be at least 1"));
                }
                JobKind::Snapshot {
                    keep: sn.keep.value,
                    labels: sn
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect(),
                }
            } else if let Some(u) = &j.upgrade {
                JobKind::Upgrade {
                    reboot: u
                        .reboot
                        .as_ref()
                        .map(|r| r.value)
                        .unwrap_or(RebootPolicy::IfRequired),
                    unattended: u.unattended.as_ref().map(|v| v.value).unwrap_or(false),
                }
            } else if let Some(p) = &j.power {
                self.cloud_only(&o, &j.name.value, "power", &selected, hosts);
                let secs = match check::duration(&p.running_for.value) {
                    Ok(d) if d.as_secs() > 0 && d.as_secs() < 86400 => d.as_secs(),
                    Ok(_) => {
                        self.err(at(file, &p.running_for).error(
                            "invalid-value",
                            "running_for must be more than 0 and less than 24h",
                        ));
                        0
                    }
                    Err(e) => {
                        self.err(at(file, &p.running_for).error("invalid-duration", e));
                        0
                    }
                };
                JobKind::Power {
                    running_for_secs: secs,
                }
            } else if let Some(c) = &j.command {
                JobKind::Command {
                    run: c.run.value.clone(),
                }
            } else {
                unreachable!("exactly one job kind was checked above")
            };
            if !cron_ok {
                continue;
            }
            out.push(Job {
                name: j.name.value.clone(),
                cron: j.cron.value.clone(),
                timezone,
                hosts: selected,
                window,
                max_parallel: j
                    .rolling
                    .max_parallel
                    .as_ref()
                    .map(|v| v.value.max(1))
                    .unwrap_or(1),
                pause_secs: pause,
                stop_on_failure: j
                    .rolling
                    .stop_on_failure
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or(true),
                health,
                timeout_secs: timeout,
                catch_up_secs: catch_up,
                kind,
                origin: o,
            });
        }
        out
    }

    fn cloud_only(
        &mut self,
        o: &Origin,
        job: &str,
        kind: &str,
        selected: &[String],
        hosts: &[Host],
    ) {
        for name in selected {
            if let Some(h) = hosts.iter().find(|h| &h.name == name)
                && !matches!(h.provider, ProviderKind::Hetzner | ProviderKind::Lightsail)
            {
                self.err(o.error("cloud-only", format!("job {job:?} is a {kind} job but selects host {name:?}, which is provider: {}", provider_name(h.provider)))
                        .with_help(format!("{kind} jobs act through a cloud API; select only hetzner or lightsail hosts")));
                return;
            }
        }
    }
}

fn default_settings() -> Settings {
    Settings {
        ssh: Ssh {
            user: "root".into(),
            port: 22,
            key: None,
            sudo: false,
            trust_on_first_use: false,
        },
        parallelism: 10,
        drift: DriftMode::Report,
        poll_interval_secs: 60,
        drift_interval_secs: 600,
        status_branch: "tidekeeper/status".into(),
        notes_ref: "refs/notes/tidekeeper".into(),
        forge: None,
        hetzner: Hetzner {
            declared: false,
            token_env: "HCLOUD_TOKEN".into(),
            endpoint: None,
            timeout_secs: 30,
        },
        lightsail: None,
        secrets_identity_env: "TIDEKEEPER_AGE_IDENTITY".into(),
        secrets_identity_file: None,
        suspend: false,
        rollout: None,
        require_reviewed_plan: false,
    }
}

/// Whether a YAML string value is a minijinja expression to render per host.
fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

fn settings_fleet_name(f: Option<&raw::FleetFile>) -> String {
    f.map(|f| f.fleet.value.clone()).unwrap_or_default()
}

fn entry_bytes(e: &Entry) -> Option<Vec<u8>> {
    match e {
        Entry::File { bytes, .. } => Some(bytes.clone()),
        _ => None,
    }
}

fn opt(s: &Option<S<String>>) -> Option<String> {
    s.as_ref().map(|s| s.value.clone())
}

fn clone_s(s: &S<String>) -> S<String> {
    Spanned {
        value: s.value.clone(),
        referenced: s.referenced,
        defined: s.defined,
    }
}

fn provider_name(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Hetzner => "hetzner",
        ProviderKind::Lightsail => "lightsail",
        ProviderKind::Existing => "existing",
        ProviderKind::Local => "local",
    }
}

fn too_large(path: &str, n: usize) -> Diagnostic {
    Origin::file(path)
        .error(
            "file-too-large",
            format!("{path} is {n} bytes; config files may be at most {MAX_YAML_BYTES} bytes"),
        )
        .with_help("split it into several files (one per host or role)")
}

fn missing_secret(file: &str, s: &S<String>) -> Diagnostic {
    at(file, s)
        .error(
            "missing-secret",
            format!(
                "secret {:?} is referenced but secrets/{}.age does not exist",
                s.value, s.value
            ),
        )
        .with_help(format!(
            "create it with `tidekeeper secrets encrypt {}`, or fix the name",
            s.value
        ))
}

fn claim_key(r: &Resource) -> (String, String) {
    let ns = match r {
        Resource::File(_)
        | Resource::Directory(_)
        | Resource::Symlink { .. }
        | Resource::Absent { .. } => "path",
        Resource::Service(_) => "unit",
        other => other.kind().word(),
    };
    (ns.to_string(), r.id().to_string())
}

/// A template error as a located diagnostic in the template's own file.
fn template_diagnostic(path: &str, text: &str, e: &minijinja::Error) -> Diagnostic {
    let line = e.line().unwrap_or(0) as u64;
    let column = e
        .range()
        .and_then(|r| text.get(..r.start))
        .map(|before| before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1)
        .unwrap_or(if line > 0 { 1 } else { 0 });
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    Origin::new(path, line, column)
        .error("template", format!("{}{detail}", e.kind()))
        .with_help("templates are minijinja (Jinja2) syntax; variables come from vars in tidekeeper.yaml, roles and hosts, plus host.* and fleet.*")
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn closest<'b>(word: &str, candidates: &[&'b str]) -> Option<&'b str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (dist(word, c), *c))
        .filter(|(d, _)| *d <= 2.max(word.len() / 4))
        .min()
        .map(|(_, c)| c)
}
