//! The resolved desired state: what each host should look like, with roles
//! merged, templates rendered, defaults applied. This is what `show` prints
//! and what the planner compares with what is observed.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::diag::Origin;
pub use super::raw::{
    DriftMode, ForgeKind, MountState, Policy, ProviderKind, RebootPolicy, RuleAction, ServiceState,
    SshAddress, UpgradeMode,
};
use crate::schedule::Window;

#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub name: String,
    /// Commit the config was read from, when it came from git.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub settings: Settings,
    pub hosts: Vec<Host>,
    pub jobs: Vec<Job>,
    pub known_hosts: Vec<KnownHost>,
    /// Paths of `policies/*.rego` in the config repo.
    pub policies: Vec<String>,
    /// Secrets were decrypted (an identity was given); otherwise secret
    /// values are `(sensitive)` placeholders and hosts using them cannot be applied.
    #[serde(skip)]
    pub secrets_decrypted: bool,
    /// Decrypted secret values, to blank out of every output.
    #[serde(skip)]
    pub redactions: Vec<String>,
    /// Decrypted secrets by name, for maintenance jobs (backup passwords).
    #[serde(skip)]
    pub secret_values: SecretValues,
    /// Private networks (`networks:` in tidekeeper.yaml), by name order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// `rollout:` of `count: N` groups, by group name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub group_rollouts: BTreeMap<String, Rollout>,
    /// What the hosts' templates are rendered from, kept when they may show
    /// addresses a provider assigns: rendered again once they are known.
    #[serde(skip)]
    pub source: Option<Source>,
    /// What the config would break without locking tidekeeper out
    /// (`validate` and `plan` show them; nothing is refused).
    #[serde(skip)]
    pub warnings: Vec<super::diag::Diagnostic>,
}

/// What one server is reached at, as its provider assigned it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub public: Option<String>,
    /// In the server's first private network.
    pub private: Option<String>,
    /// The public host key generated for the server (its `HOST_KEY` label).
    pub host_key: Option<String>,
    /// Was that key generated on the server (its `HOST_KEY_ROTATED` label)?
    pub host_key_rotated: bool,
}

/// The addresses providers assigned, by server (host) name: what the cloud
/// stage learns and what templates see as `host.address` and
/// `hosts.NAME.private_address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBook(BTreeMap<String, Addresses>);

impl AddressBook {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, host: &str) -> Option<&Addresses> {
        self.0.get(host)
    }
    pub fn insert(&mut self, host: impl Into<String>, a: Addresses) {
        self.0.insert(host.into(), a);
    }
    pub fn get_mut(&mut self, host: &str) -> Option<&mut Addresses> {
        self.0.get_mut(host)
    }
    pub fn contains(&self, host: &str) -> bool {
        self.0.contains_key(host)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Addresses)> {
        self.0.iter()
    }
}

impl FromIterator<(String, Addresses)> for AddressBook {
    fn from_iter<I: IntoIterator<Item = (String, Addresses)>>(it: I) -> Self {
        Self(it.into_iter().collect())
    }
}

/// What a fleet's templates are rendered from: the config's text and its
/// roles as resolved, templates not yet rendered. No key material: the
/// secrets templates use are the fleet's decrypted values.
#[derive(Clone)]
pub struct Source {
    /// The config repo's files (templates are read from it; nothing is
    /// parsed again).
    pub tree: std::sync::Arc<crate::source::ConfigTree>,
    pub(crate) roles: std::sync::Arc<BTreeMap<String, RoleDef>>,
    /// The names under secrets/, and why those the identity could not
    /// open could not be.
    pub(crate) secrets: std::sync::Arc<std::collections::BTreeSet<String>>,
    pub(crate) undecryptable: std::sync::Arc<BTreeMap<String, String>>,
    /// The provider-assigned addresses the templates saw.
    pub book: AddressBook,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("commit", &self.tree.commit)
            .field("book", &self.book)
            .finish_non_exhaustive()
    }
}

/// A role with its checks done; templates are rendered per host.
pub(crate) struct RoleDef {
    pub(crate) vars: super::raw::Vars,
    pub(crate) items: Vec<Item>,
    pub(crate) handlers: Vec<Handler>,
    pub(crate) firewall: Option<RoleFirewall>,
}

/// A role's firewall part: default policies only where the role sets them.
#[derive(Clone)]
pub(crate) struct RoleFirewall {
    pub(crate) incoming: Option<Policy>,
    pub(crate) outgoing: Option<Policy>,
    pub(crate) routed: Option<Policy>,
    pub(crate) metadata_from_containers: Option<Policy>,
    /// Each rule, where its `from` is (for template errors), and its site.
    pub(crate) rules: Vec<(FirewallRule, Origin, RuleSite)>,
    pub(crate) origin: Origin,
}

/// A role's resource before it is made for a host.
pub(crate) enum Item {
    Ready(Resource),
    Template {
        base: FileResource,
        template: String,
    },
    Stack {
        base: Stack,
    },
    /// `when:`: the item, made only for hosts where `condition` is true.
    When {
        condition: String,
        origin: Origin,
        item: Box<Item>,
    },
}

/// Secret values by name; `Debug` shows only the names.
#[derive(Clone, Default)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Fleet {
    /// `text` with every secret value replaced by `(sensitive)`.
    pub fn redact(&self, text: &str) -> String {
        redact(&self.redactions, text)
    }
}

/// `text` with each of `secrets` replaced by `(sensitive)`.
pub fn redact(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for r in secrets {
        if out.contains(r.as_str()) {
            out = out.replace(r.as_str(), SENSITIVE);
        }
    }
    out
}

impl Fleet {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// `status.notes_ref` when a fleet does not set it.
pub const DEFAULT_NOTES_REF: &str = "refs/notes/tidekeeper";

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Limits and budgets of planning one proposal (`proposals:`).
    pub proposals: ProposalLimits,
    pub ssh: Ssh,
    pub parallelism: u32,
    pub drift: DriftMode,
    pub poll_interval_secs: u64,
    pub drift_interval_secs: u64,
    /// A drift check hashes every managed file at least this often.
    pub full_check_secs: u64,
    pub status_branch: String,
    /// Where the notes on reconciled commits go (`status.notes_ref`).
    pub notes_ref: String,
    pub forge: Option<Forge>,
    pub hetzner: Hetzner,
    pub lightsail: Option<Lightsail>,
    /// `providers.ec2`: the same AWS settings as Lightsail's.
    pub ec2: Option<Lightsail>,
    pub secrets_identity_env: String,
    pub secrets_identity_file: Option<String>,
    /// `suspend: true`: plan and report, apply nothing, run no job.
    pub suspend: bool,
    /// `apply.require_reviewed_plan`: a merge whose plan differs from the
    /// plan reviewed on its pull request is held, not applied.
    pub require_reviewed_plan: bool,
    /// `apply.apply_requirements`: what the forge must show of a merged
    /// commit's pull request (None: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_requirements: Option<ApplyRequirements>,
    /// `apply.apply_windows`: when the daemon may apply a commit, to which hosts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apply_windows: Vec<crate::schedule::ApplyWindow>,
    /// How the daemon applies a commit across hosts (None: all at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// `notify:`: who is told what (no sinks: nobody).
    pub notify: crate::model::notify::Notify,
    /// `networks:`, for checking hosts while loading; the fleet's own copy
    /// ([`Fleet::networks`]) is what the cloud stage uses.
    #[serde(skip)]
    pub networks: Vec<Network>,
    /// Networks of `networks:` with errors (reported there): a host naming
    /// one is not told it is undeclared.
    #[serde(skip)]
    pub broken_networks: Vec<String>,
}

/// The user a provider's image lets the server's keys in as, where that is
/// not root: Lightsail's Debian `admin`, Ubuntu `ubuntu`, Amazon Linux
/// `ec2-user` (Hetzner's images let root in).
/// The login an AMI named `name` lets its key pair in as (the OS vendors'
/// own images: Debian, Ubuntu, Amazon Linux).
pub fn ami_login(name: &str) -> Option<&'static str> {
    if name.starts_with("debian-") {
        Some("admin")
    } else if name.starts_with("ubuntu/") || name.starts_with("ubuntu-") {
        Some("ubuntu")
    } else if name.starts_with("al20") || name.starts_with("amzn") {
        Some("ec2-user")
    } else {
        None
    }
}

/// An EC2 `image:` written as `OWNER/NAME`: the newest available AMI of
/// account OWNER (twelve digits, or `amazon`, `aws-marketplace`, `self`)
/// whose name matches NAME, with EC2's wildcards `*` and `?`. None for an
/// AMI id or anything else.
pub fn ami_filter(image: &str) -> Option<(&str, &str)> {
    if image.starts_with("ami-") {
        return None;
    }
    let (owner, name) = image.split_once('/')?;
    let account = owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit());
    let alias = matches!(owner, "amazon" | "aws-marketplace" | "self");
    ((account || alias) && !name.is_empty()).then_some((owner, name))
}

/// Does AMI `name` match an [`ami_filter`] NAME (`*` any run, `?` any one)?
/// Greedy with one backtrack point, so O(len(pattern) × len(name)): a
/// pattern in a pull request cannot make the planner's time explode.
pub fn ami_name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    // The last `*` seen and the name position it is tried against.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == b'?' || (p[i] != b'*' && p[i] == n[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            // Let that `*` take one more character and try again.
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

pub fn image_login(provider: ProviderKind, image: &str) -> Option<&'static str> {
    if provider != ProviderKind::Lightsail {
        return None;
    }
    match image.split('_').next().unwrap_or_default() {
        "debian" => Some("admin"),
        "ubuntu" => Some("ubuntu"),
        "amazon" => Some("ec2-user"),
        _ => None,
    }
}

/// What the forge must show of a merged commit's pull request before it is
/// applied (`apply.apply_requirements`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ApplyRequirements {
    /// Approvals at the merged head (0: none asked).
    pub approved: u32,
    /// `owners:` lines in CODEOWNERS syntax; `None`: owners are not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<String>>,
    pub mergeable: bool,
    pub undiverged: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rollout {
    pub canary: Vec<String>,
    pub batch: Batch,
    pub pause_secs: u64,
    pub health: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    Count(u32),
    Percent(u32),
}

/// Hosts of a rollout applied together, checked with `health` after, and
/// followed by a pause before the next stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub hosts: Vec<String>,
    pub health: Vec<HealthCheck>,
    pub pause_secs: u64,
    /// The `count:` group whose own rollout this stage belongs to.
    pub group: Option<String>,
}

impl Fleet {
    /// How a commit is rolled out over `hosts`, or None for all at once.
    /// Hosts outside groups with their own `rollout:` go first (by the
    /// fleet's rollout, or together), then each such group by its own, in
    /// name order; the first failure stops what follows. Pure.
    pub fn rollout_stages(&self, hosts: &[String]) -> Option<Vec<Stage>> {
        if self.settings.rollout.is_none() && self.group_rollouts.is_empty() {
            return None;
        }
        let group_of = |name: &String| {
            self.host(name)
                .and_then(|h| h.group.clone())
                .filter(|g| self.group_rollouts.contains_key(g))
        };
        let stages = |r: &Rollout, members: &[String], group: Option<&String>| {
            r.stages(members)
                .into_iter()
                .map(|hosts| Stage {
                    hosts,
                    health: r.health.clone(),
                    pause_secs: r.pause_secs,
                    group: group.cloned(),
                })
                .collect::<Vec<_>>()
        };
        let rest: Vec<String> = hosts
            .iter()
            .filter(|h| group_of(h).is_none())
            .cloned()
            .collect();
        let mut out = match (&self.settings.rollout, rest.is_empty()) {
            (_, true) => vec![],
            (Some(r), false) => stages(r, &rest, None),
            (None, false) => vec![Stage {
                hosts: rest,
                health: vec![],
                pause_secs: 0,
                group: None,
            }],
        };
        for (group, r) in &self.group_rollouts {
            let members: Vec<String> = hosts
                .iter()
                .filter(|h| group_of(h).as_ref() == Some(group))
                .cloned()
                .collect();
            if !members.is_empty() {
                out.extend(stages(r, &members, Some(group)));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i}")).collect()
    }

    #[test]
    fn a_rollout_goes_canaries_first_then_batches_of_a_count_or_a_share() {
        let r = Rollout {
            canary: vec!["web-3".into(), "gone".into()],
            batch: Batch::Count(2),
            pause_secs: 0,
            health: vec![],
        };
        assert_eq!(
            r.stages(&names(6)),
            [
                vec!["web-3"],
                vec!["web-1", "web-2"],
                vec!["web-4", "web-5"],
                vec!["web-6"]
            ]
        );
        let r = Rollout {
            canary: vec![],
            batch: Batch::Percent(25),
            ..r
        };
        let stages = r.stages(&names(10));
        assert_eq!(
            stages.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert_eq!(
            stages.concat(),
            names(10),
            "every host once, in fleet order"
        );
    }
}

impl Rollout {
    /// The hosts in the order they are applied: canaries (each alone), then
    /// the others in batches. Pure.
    pub fn stages(&self, hosts: &[String]) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .canary
            .iter()
            .filter(|c| hosts.contains(c))
            .map(|c| vec![c.clone()])
            .collect();
        let rest: Vec<String> = hosts
            .iter()
            .filter(|h| !self.canary.contains(h))
            .cloned()
            .collect();
        let size = match self.batch {
            Batch::Count(n) => n as usize,
            Batch::Percent(p) => (rest.len() * p as usize).div_ceil(100),
        }
        .max(1);
        out.extend(rest.chunks(size).map(|c| c.to_vec()));
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Forge {
    pub kind: ForgeKind,
    pub url: String,
    pub repo: String,
    pub token_env: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hetzner {
    /// tidekeeper.yaml has a `providers.hetzner` section.
    pub declared: bool,
    pub token_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub timeout_secs: u64,
}

/// Where Lightsail's credentials come from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AwsCredentials {
    /// The SDK's default chain, as the AWS CLI finds them; `profile` picks
    /// a profile other than `AWS_PROFILE`'s.
    Chain { profile: Option<String> },
    /// A key pair from the environment variables named in tidekeeper.yaml.
    Env {
        access_key_env: String,
        secret_key_env: String,
        session_token_env: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Lightsail {
    /// None: the SDK's region chain (`AWS_REGION`, the profile, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub credentials: AwsCredentials,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub sudo: bool,
    /// Accept and record a host's key on first contact when none is pinned.
    pub trust_on_first_use: bool,
    /// The jump host the connection tunnels through (none: direct).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Jump>,
    /// Connect to a cloud server's public or private (network) address.
    pub address: SshAddress,
    /// Where tidekeeper connects from (CIDRs; empty: not stated).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// A private network: a Hetzner network or an EC2 VPC.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// Hetzner or EC2 (a VPC).
    pub provider: ProviderKind,
    /// EC2: providers.ec2's region ("" when the AWS chain gives it).
    pub region: String,
    pub ip_range: String,
    pub subnets: Vec<String>,
    /// EC2: subnets routed to the internet gateway.
    pub public_subnets: Vec<String>,
    /// EC2: a NAT gateway for the private subnets.
    pub nat: bool,
    /// Hetzner's network zone; EC2's availability zone ("" = EC2's choice).
    pub zone: String,
    pub allow_destroy: bool,
    /// Addresses no server is given (`reserved:`).
    pub reserved: Vec<String>,
}

/// A server's place in a network: fixed `ip`, or the next free one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerNetwork {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The network's reserved addresses, which "the next free one" skips.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<String>,
}

/// A jump host (`ssh.via`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Jump {
    /// A host of the fleet, reached as that host is (its own address, user,
    /// pinned key, and its own `via`).
    Host(String),
    /// A machine outside the fleet; its key must be pinned in known_hosts.
    Address {
        user: String,
        address: String,
        port: u16,
    },
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Jump::Host(h) => write!(f, "{h}"),
            Jump::Address {
                user,
                address,
                port,
            } => write!(f, "{user}@{address}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    /// The host file's group name when it was expanded from `count: N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub provider: ProviderKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The address in the server's first private network: fixed in the
    /// config, or assigned by the provider (filled in by the cloud stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_address: Option<String>,
    /// For `provider: local`: every managed path lives under this directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    pub ssh: Ssh,
    pub labels: BTreeMap<String, String>,
    pub roles: Vec<String>,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub resources: Vec<Resource>,
    pub handlers: Vec<Handler>,
    pub allow_destroy: bool,
    /// `cost:` of a machine no provider prices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<HostCost>,
    /// Fingerprint of the host key tidekeeper generated for the cloud server
    /// (from the server's label); set by the cloud stage with the address.
    #[serde(skip)]
    pub cloud_host_key: Option<String>,
    /// That key was generated on the server, replacing the one its user data
    /// carried: it is checked even where known_hosts pins the replaced one.
    #[serde(skip)]
    pub cloud_host_key_rotated: bool,
    /// What planning may do on this host: everything for trusted config;
    /// less for a proposal (see [`crate::proposal`]).
    #[serde(skip)]
    pub trust: Trust,
    /// Where `address:` is written (None: not written, or assigned).
    #[serde(skip)]
    pub address_origin: Option<Origin>,
    /// `lockout_ok:` of the host file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockout_ok: Option<String>,
    pub origin: Origin,
    /// The facts (`facts.arch`, …) this host's templates read. Loading
    /// renders them with stand-ins; a host that reads any is rendered again
    /// with its real facts once connected ([`crate::model::render_with_facts`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts_used: Vec<String>,
    /// The facts the host's resources were rendered with, when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::model::Facts>,
}

/// A monthly cost stated in the config (`cost:` of an existing host).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostCost {
    pub monthly: f64,
    pub currency: String,
}

/// What planning may do on a host.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Trusted config (the followed branch, or the CLI user's own repo).
    #[default]
    Full,
    /// A proposal's host that the trusted base manages at the same address:
    /// observed only where the base already looks.
    Confined(Confinement),
    /// A proposal's host that is new or moved: never contacted; its plan is
    /// its whole desired state. The text says why.
    AfterMerge(String),
}

/// What the trusted base manages on a host, which bounds what planning a
/// proposal may observe there.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Paths the base manages (files, directories, links, stack files,
    /// authorized_keys): only these are observed.
    pub paths: std::collections::BTreeSet<String>,
    /// Of those, the ones whose content the base treats as sensitive.
    pub sensitive: std::collections::BTreeSet<String>,
    /// What else the base manages, by kind and id (sysctl keys, stacks,
    /// mount points, host settings): each kind says which of its own it
    /// records and looks at.
    pub managed: std::collections::BTreeSet<(crate::change::ResourceKind, String)>,
    /// Command guards exactly as the base has them: (command, creates,
    /// unless, onlyif). Any other guard is not run for a proposal: even a
    /// `creates:` path test tells whether a path exists.
    pub guards: std::collections::BTreeSet<CommandGuard>,
}

/// A command's guards: (name, creates, unless, onlyif).
pub type CommandGuard = (String, Option<String>, Option<String>, Option<String>);

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    pub server_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Names of keys the provider has, or public keys to upload (see
    /// [`is_public_key`]).
    pub ssh_keys: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub firewall: Vec<CloudPort>,
    pub static_ip: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<ServerNetwork>,
    /// EC2: where the instance lives and what its root disk is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Server>,
    /// Where `firewall:` is written, for the lockout check.
    #[serde(skip)]
    pub firewall_origin: Option<Origin>,
}

/// The EC2-only parts of a server (`region`, type and AMI are `location`,
/// `server_type` and `image`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ec2Server {
    /// The subnet's id (`server.subnet`); empty in a network of
    /// tidekeeper.yaml, whose subnet is found by `network_subnet`.
    pub subnet: String,
    /// The CIDR of its subnet in the network it names (`server.networks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_subnet: Option<String>,
    /// That subnet is one of the network's private ones: no public address.
    #[serde(skip)]
    pub private_subnet: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_gb: Option<u32>,
    pub root_type: String,
    pub termination_protection: bool,
    /// The security group's outbound rules (`from` holds destinations);
    /// None: not managed, EC2's default lets everything out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CloudPort>>,
    /// Where `egress:` is written, for the lockout check of the hosts
    /// reached through this one.
    #[serde(skip)]
    pub egress_origin: Option<Origin>,
}

/// A `server.ssh_keys` entry is a public key (`type base64 [comment]`) when
/// it has a space; a provider's key name never does.
pub fn is_public_key(entry: &str) -> bool {
    entry.contains(' ')
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CloudPort {
    pub from_port: u16,
    pub to_port: u16,
    pub proto: String,
    pub from: Vec<String>,
}

/// File content. Sensitive content never prints: it serializes as `(sensitive)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    pub bytes: Vec<u8>,
    pub sensitive: bool,
}

pub const SENSITIVE: &str = "(sensitive)";

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sensitive {
            write!(f, "{SENSITIVE}")
        } else {
            write!(f, "{:?}", String::from_utf8_lossy(&self.bytes))
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.sensitive {
            return s.serialize_str(SENSITIVE);
        }
        match std::str::from_utf8(&self.bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&format!("(binary, {} bytes)", self.bytes.len())),
        }
    }
}

fn octal<S: Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => s.serialize_str(&format!("{m:04o}")),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    File(FileResource),
    Directory(DirectoryResource),
    Symlink {
        path: String,
        target: String,
        origin: Origin,
    },
    Absent {
        path: String,
        origin: Origin,
    },
    Package {
        name: String,
        state: PackageState,
        origin: Origin,
    },
    Service(ServiceResource),
    User(UserResource),
    Group {
        name: String,
        gid: Option<u32>,
        origin: Origin,
    },
    Firewall(Firewall),
    Sysctl {
        key: String,
        value: String,
        origin: Origin,
    },
    /// A host setting under `settings:` (one value per host); the engine's
    /// kind of that name owns it.
    Setting {
        name: String,
        value: String,
        origin: Origin,
    },
    Command(CommandResource),
    Stack(Stack),
    Timer(TimerResource),
    Cron(CronResource),
    Mount(MountResource),
    AptRepo(AptRepoResource),
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Present,
    Latest,
    Absent,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileResource {
    pub path: String,
    pub content: Content,
    #[serde(serialize_with = "octal")]
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub validate: Option<String>,
    pub notify: Vec<String>,
    /// `lockout_ok:` — why a lockout risk the lockout check sees in this
    /// file is acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockout_ok: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectoryResource {
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceResource {
    pub name: String,
    pub enabled: Option<bool>,
    pub state: Option<ServiceState>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserResource {
    pub name: String,
    pub uid: Option<u32>,
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub system: bool,
    pub authorized_keys: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize)]
pub struct Firewall {
    pub incoming: Policy,
    pub outgoing: Policy,
    /// ufw's policy for forwarded packets; None: not managed (ufw's default
    /// is deny).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routed: Option<Policy>,
    /// Containers' packets to the cloud metadata address; None: denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_from_containers: Option<Policy>,
    /// The host runs Docker: its published ports and its containers'
    /// traffic are filtered as these rules say (set when the host's items
    /// are made).
    #[serde(skip)]
    pub docker: bool,
    pub rules: Vec<FirewallRule>,
    /// Where each rule is written, in the order of `rules`.
    #[serde(skip)]
    pub sites: Vec<RuleSite>,
    pub origin: Origin,
}

/// Where a firewall rule is written, and its `lockout_ok:`.
#[derive(Debug, Clone, Default)]
pub struct RuleSite {
    /// Its `interface:` if it has one, else its `port:` or `from:`.
    pub origin: Origin,
    pub lockout_ok: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FirewallRule {
    pub action: RuleAction,
    pub from_port: Option<u16>,
    pub to_port: Option<u16>,
    pub proto: String,
    pub from: String,
    /// Only packets coming in on this interface (`in on IFACE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandResource {
    pub name: String,
    pub run: String,
    pub creates: Option<String>,
    pub unless: Option<String>,
    pub onlyif: Option<String>,
    pub timeout_secs: u64,
    pub notify: Vec<String>,
    pub origin: Origin,
}

/// A command run on a schedule by a systemd timer.
#[derive(Debug, Clone, Serialize)]
pub struct TimerResource {
    pub name: String,
    /// systemd `OnCalendar=` lines (a `cron:` schedule already translated).
    pub on_calendar: Vec<String>,
    pub run: String,
    pub user: Option<String>,
    pub timeout_secs: u64,
    /// Run once at boot when a run was missed while the host was down.
    pub persistent: bool,
    pub origin: Origin,
}

/// A command run on a schedule by cron, from a file in /etc/cron.d.
#[derive(Debug, Clone, Serialize)]
pub struct CronResource {
    pub name: String,
    /// Five cron fields.
    pub schedule: String,
    pub user: String,
    pub run: String,
    pub origin: Origin,
}

/// An APT repository: a deb822 source and its signing key.
#[derive(Debug, Clone, Serialize)]
pub struct AptRepoResource {
    pub name: String,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    /// The signing key (armored or binary), from files/.
    #[serde(skip)]
    pub key: Option<Content>,
    /// Accept the repository unsigned (a local or flat repository).
    pub trusted: bool,
    pub origin: Origin,
}

/// A filesystem in /etc/fstab.
#[derive(Debug, Clone, Serialize)]
pub struct MountResource {
    pub path: String,
    pub device: String,
    pub fstype: String,
    pub options: String,
    pub state: MountState,
    pub origin: Origin,
}

/// The names compose looks for in a project directory, in its order.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub name: String,
    pub dir: String,
    /// Files of `stacks/<name>/`, relative to the stack directory, templates rendered.
    pub files: BTreeMap<String, Content>,
    /// Checked after the stack is brought up, and after maintenance on its host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthCheck>,
    /// How long the health gates may take to pass after the stack is brought up.
    pub health_timeout_secs: u64,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", content = "target", rename_all = "lowercase")]
pub enum HandlerAction {
    Restart(String),
    Reload(String),
    Run(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Handler {
    pub name: String,
    #[serde(flatten)]
    pub action: HandlerAction,
    pub origin: Origin,
}

impl Resource {
    /// The resource type as users write it: `file`, `package`, …
    pub fn kind(&self) -> crate::change::ResourceKind {
        use crate::change::ResourceKind as K;
        match self {
            Resource::File(_) => K::File,
            Resource::Directory(_) => K::Directory,
            Resource::Symlink { .. } => K::Symlink,
            Resource::Absent { .. } => K::Absent,
            Resource::Package { .. } => K::Package,
            Resource::Service(_) => K::Service,
            Resource::User(_) => K::User,
            Resource::Group { .. } => K::Group,
            Resource::Firewall(_) => K::Firewall,
            Resource::Sysctl { .. } => K::Sysctl,
            Resource::Setting { .. } => K::Setting,
            Resource::Command(_) => K::Command,
            Resource::Stack(_) => K::Stack,
            Resource::Timer(_) => K::Timer,
            Resource::Cron(_) => K::Cron,
            Resource::Mount(_) => K::Mount,
            Resource::AptRepo(_) => K::AptRepo,
        }
    }

    /// What identifies the resource on its host: a path, a name, a key.
    pub fn id(&self) -> &str {
        match self {
            Resource::File(f) => &f.path,
            Resource::Directory(d) => &d.path,
            Resource::Symlink { path, .. } | Resource::Absent { path, .. } => path,
            Resource::Package { name, .. } | Resource::Group { name, .. } => name,
            Resource::Service(s) => &s.name,
            Resource::User(u) => &u.name,
            Resource::Firewall(_) => "ufw",
            Resource::Sysctl { key, .. } => key,
            Resource::Setting { name, .. } => name,
            Resource::Command(c) => &c.name,
            Resource::Stack(s) => &s.name,
            Resource::Timer(t) => &t.name,
            Resource::Cron(c) => &c.name,
            Resource::Mount(m) => &m.path,
            Resource::AptRepo(r) => &r.name,
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Resource::File(f) => &f.origin,
            Resource::Directory(d) => &d.origin,
            Resource::Symlink { origin, .. }
            | Resource::Absent { origin, .. }
            | Resource::Package { origin, .. }
            | Resource::Group { origin, .. }
            | Resource::Sysctl { origin, .. }
            | Resource::Setting { origin, .. } => origin,
            Resource::Service(s) => &s.origin,
            Resource::User(u) => &u.origin,
            Resource::Firewall(f) => &f.origin,
            Resource::Command(c) => &c.origin,
            Resource::Stack(s) => &s.origin,
            Resource::Timer(t) => &t.origin,
            Resource::Cron(c) => &c.origin,
            Resource::Mount(m) => &m.origin,
            Resource::AptRepo(r) => &r.origin,
        }
    }

    /// Address as plans show it: `web-1 file /etc/ssh/sshd_config`.
    pub fn address(&self, host: &str) -> String {
        format!("{host} {} {}", self.kind(), self.id())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KnownHost {
    pub hosts: Vec<String>,
    pub key_type: String,
    pub key: String,
    pub line: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// Hosts the selector chose, in fleet order.
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    pub max_parallel: u32,
    pub pause_secs: u64,
    pub stop_on_failure: bool,
    pub health: Vec<HealthCheck>,
    pub timeout_secs: u64,
    pub catch_up_secs: Option<u64>,
    /// What a failure is reported as (job_failed or health_threshold).
    pub alert: crate::model::notify::EventKind,
    pub kind: JobKind,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "check", content = "target", rename_all = "lowercase")]
pub enum HealthCheck {
    Unit(String),
    Command(String),
    Http(String),
    /// `project/service` of a compose stack, or a container's name.
    Container(String),
}

/// A PostgreSQL database a backup dumps: on the host, or inside a
/// container (a compose stack's database), as `user`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PgDump {
    pub database: String,
    /// A container's name, or `STACK/SERVICE` of a compose stack.
    pub container: Option<String>,
    pub user: String,
}

/// The login restic uses for an `sftp:` repository: a private key kept as a
/// secret and the server's host key, so nothing is trusted on first use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SftpAccess {
    pub key_secret: String,
    /// known_hosts lines for the server (its public host keys).
    pub known_hosts: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    Backup {
        repository: String,
        password_secret: String,
        paths: Vec<String>,
        pg_dump: Option<PgDump>,
        /// How restic logs in to an sftp repository.
        sftp: Option<SftpAccess>,
        keep_daily: u32,
        keep_weekly: u32,
        keep_monthly: u32,
        check: bool,
    },
    Snapshot {
        keep: u32,
        labels: BTreeMap<String, String>,
    },
    Upgrade {
        reboot: RebootPolicy,
        unattended: bool,
        /// apt-get's `upgrade` or `full-upgrade` (unused when unattended).
        mode: UpgradeMode,
    },
    Power {
        running_for_secs: u64,
    },
    Command {
        run: String,
    },
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Backup { .. } => "backup",
            JobKind::Snapshot { .. } => "snapshot",
            JobKind::Upgrade { .. } => "upgrade",
            JobKind::Power { .. } => "power",
            JobKind::Command { .. } => "command",
        }
    }
}

/// `proposals:` in the base's tidekeeper.yaml: what planning one proposal
/// (untrusted computation, in a worker process) may use. Over a budget is a
/// verdict on the proposal, never an outage of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProposalLimits {
    /// The worker's address space.
    pub memory_bytes: u64,
    /// The worker's CPU time.
    pub cpu_secs: u64,
    /// Wall-clock time, probing included.
    pub deadline_secs: u64,
    pub open_files: u64,
    /// What the worker may print (its plan, as JSON).
    pub output_bytes: usize,
    /// Proposals planned at once.
    pub workers: usize,
    /// Hosts after `count:` expansion.
    pub max_hosts: usize,
    /// Bytes rendered from templates, over every host.
    pub max_rendered_bytes: u64,
    /// Values in every host's variables after merging (YAML aliases expanded).
    pub max_var_nodes: u64,
    /// Managed resources over every host.
    pub max_resources: usize,
}

impl Default for ProposalLimits {
    fn default() -> Self {
        ProposalLimits {
            memory_bytes: 1 << 30,
            cpu_secs: 60,
            deadline_secs: 120,
            open_files: 1024,
            output_bytes: 64 << 20,
            workers: 2,
            max_hosts: 2000,
            max_rendered_bytes: 256 << 20,
            max_var_nodes: 5_000_000,
            max_resources: 500_000,
        }
    }
}
