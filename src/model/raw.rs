//! The raw spec: the config repo's YAML files as written, with source spans.
//!
//! Everything here is parsed with unknown keys rejected. Meaning (defaults,
//! references, merging) is given in `resolve`; this module only mirrors the
//! files. The key-by-key reference is `docs/config.md`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;
pub type Vars = BTreeMap<String, serde_json::Value>;

/// `tidekeeper.yaml`: the fleet's own settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[schemars(with = "String")]
    pub fleet: S<String>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub providers: Providers,
    #[serde(default)]
    pub status: StatusSettings,
    #[schemars(with = "Option<DriftMode>")]
    pub drift: Option<S<DriftMode>>,
    #[serde(default)]
    pub intervals: Intervals,
    #[serde(default)]
    pub secrets: SecretSettings,
    /// Stop applies and maintenance while still planning and reporting.
    #[schemars(with = "Option<bool>")]
    pub suspend: Option<S<bool>>,
    #[serde(default)]
    pub apply: ApplySettings,
    /// Apply commits host by host: canaries, then batches, health-gated.
    pub rollout: Option<RolloutSpec>,
    /// Messages to people when something needs a human.
    pub notify: Option<NotifySpec>,
    /// Hetzner private networks servers attach to (`server.networks`), by name.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// What planning one proposal (a pull request) may use.
    #[serde(default)]
    pub proposals: ProposalSpec,
}

/// `proposals:`: limits of the worker process that plans a proposal, and
/// budgets of one proposal. Defaults: 1024 MiB, 60 s CPU, 120 s, 2 at once.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalSpec {
    /// The worker's memory (address space), in MiB (default 1024).
    #[schemars(with = "Option<u64>")]
    pub memory_mib: Option<S<u64>>,
    /// The worker's CPU time, e.g. `60s`.
    #[schemars(with = "Option<String>")]
    pub cpu: Option<S<String>>,
    /// Wall-clock time for one proposal, probing included, e.g. `120s`.
    #[schemars(with = "Option<String>")]
    pub deadline: Option<S<String>>,
    /// Proposals planned at once (default 2).
    #[schemars(with = "Option<usize>")]
    pub workers: Option<S<usize>>,
    /// Hosts after `count:` (default 2000).
    #[schemars(with = "Option<usize>")]
    pub max_hosts: Option<S<usize>>,
    /// MiB rendered from templates over all hosts (default 256).
    #[schemars(with = "Option<u64>")]
    pub max_rendered_mib: Option<S<u64>>,
    /// Managed resources over all hosts (default 500000).
    #[schemars(with = "Option<usize>")]
    pub max_resources: Option<S<usize>>,
}

/// `notify:`: sinks, routes and the limits that make a state an alert.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Repeat a firing alert after this long (`0s`: never).
    #[schemars(with = "Option<String>")]
    pub remind_every: Option<S<String>>,
    /// A host unreachable for this long is an alert.
    #[schemars(with = "Option<String>")]
    pub unreachable_after: Option<S<String>>,
    /// No successful fetch of the config repo for this long is an alert.
    #[schemars(with = "Option<String>")]
    pub fetch_stale_after: Option<S<String>>,
    /// A plan that raises the monthly cost above this is an alert.
    #[schemars(with = "Option<f64>")]
    pub monthly_cost_above: Option<S<f64>>,
}

/// One sink; which keys apply depends on `type`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: S<String>,
    #[schemars(with = "Option<CredentialSpec>")]
    pub url: Option<S<CredentialSpec>>,
    #[schemars(with = "Option<CredentialSpec>")]
    pub secret: Option<S<CredentialSpec>>,
    #[schemars(with = "Option<CredentialSpec>")]
    pub token: Option<S<CredentialSpec>>,
    #[schemars(with = "Option<CredentialSpec>")]
    pub topic: Option<S<CredentialSpec>>,
    #[schemars(with = "Option<CredentialSpec>")]
    pub password: Option<S<CredentialSpec>>,
    #[schemars(with = "Option<String>")]
    pub server: Option<S<String>>,
    #[schemars(with = "Option<ChatId>")]
    pub chat_id: Option<S<ChatId>>,
    #[schemars(with = "Option<String>")]
    pub room: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub host: Option<S<String>>,
    #[schemars(with = "Option<u16>")]
    pub port: Option<S<u16>>,
    #[schemars(with = "Option<crate::model::notify::SmtpTls>")]
    pub tls: Option<S<crate::model::notify::SmtpTls>>,
    #[schemars(with = "Option<String>")]
    pub username: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub from: Option<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub to: Vec<S<String>>,
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<S<String>>,
    #[schemars(with = "Option<u32>")]
    pub per_minute: Option<S<u32>>,
}

/// `{env: VAR}` or `{secret: name}`; a plain value is refused when resolved.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CredentialSpec {
    Plain(String),
    From(CredentialRef),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    pub env: Option<String>,
    pub secret: Option<String>,
}

/// Telegram chat ids are numbers; YAML reads them as such unless quoted.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ChatId {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// One sink or several.
    #[schemars(with = "Option<String>")]
    pub sink: Option<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub sinks: Vec<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub events: Vec<S<String>>,
    /// The least severity sent (info, warning, critical).
    #[schemars(with = "Option<String>")]
    pub severity: Option<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<S<String>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Hosts applied first, alone.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub canary: Vec<S<String>>,
    /// Hosts at once after the canaries: a count (`2`) or a share (`25%`).
    #[schemars(with = "Option<String>")]
    pub batch: Option<S<String>>,
    /// Wait between batches.
    #[schemars(with = "Option<String>")]
    pub pause: Option<S<String>>,
    /// Checked on every host of a batch before the next one starts.
    #[serde(default)]
    pub health: Vec<HealthSpec>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplySettings {
    /// Hold a merge whose plan differs from the plan reviewed on its PR.
    #[schemars(with = "Option<bool>")]
    pub require_reviewed_plan: Option<S<bool>>,
    /// What the forge must show of a merged commit's pull request before
    /// the daemon applies it (read from the last applied commit's config).
    pub apply_requirements: Option<RequirementsSpec>,
    /// When commits may be applied: `allow` and `deny` windows, as Argo
    /// CD's sync windows. None: at any time.
    #[serde(default)]
    pub apply_windows: Vec<ApplyWindowSpec>,
}

/// `apply.apply_requirements:`, as Atlantis names them.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequirementsSpec {
    /// Approvals the pull request needs at the head that was merged, from
    /// reviewers other than tidekeeper's own user.
    #[schemars(with = "Option<u32>")]
    pub approved: Option<S<u32>>,
    /// Who must approve a change of which files, one CODEOWNERS line each
    /// (`hosts/prod-* @alice @bob`); `.github/CODEOWNERS` of the applied
    /// commit is read first, these lines after it (the last match wins).
    #[schemars(with = "Option<Vec<String>>")]
    pub owners: Option<Vec<S<String>>>,
    /// The pull request was merged by the forge (its branch protection and
    /// required checks passed), not pushed around it.
    #[schemars(with = "Option<bool>")]
    pub mergeable: Option<S<bool>>,
    /// The merged commit's tree is the pull request head's tree: merging
    /// brought in nothing the reviewers did not see.
    #[schemars(with = "Option<bool>")]
    pub undiverged: Option<S<bool>>,
}

/// One `apply.apply_windows` entry: `kind`, and either `schedule` +
/// `duration` (+ `timezone`) or `window`; `hosts` to cover only some hosts.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyWindowSpec {
    /// `allow` or `deny`.
    #[schemars(with = "String")]
    pub kind: S<String>,
    /// A cron expression: when the window opens.
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    /// How long it stays open after each start, e.g. `2h`, `90m`.
    #[schemars(with = "Option<String>")]
    pub duration: Option<S<String>>,
    /// The schedule's time zone (default UTC).
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    /// A weekly window instead: `Mon-Fri 09:00-17:00 Europe/Berlin`.
    #[schemars(with = "Option<String>")]
    pub window: Option<S<String>>,
    /// The hosts it covers (names, groups, labels); none: every host.
    pub hosts: Option<HostSelector>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub ssh: SshSettings,
    #[schemars(with = "Option<u32>")]
    pub parallelism: Option<S<u32>>,
    #[serde(default)]
    pub vars: Vars,
}

#[derive(Debug, Deserialize, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    #[schemars(with = "Option<String>")]
    pub user: Option<S<String>>,
    #[schemars(with = "Option<u16>")]
    pub port: Option<S<u16>>,
    /// Private key file on the machine tidekeeper runs on.
    #[schemars(with = "Option<String>")]
    pub key: Option<S<String>>,
    /// Run commands through sudo when the login user is not root.
    #[schemars(with = "Option<bool>")]
    pub sudo: Option<S<bool>>,
    /// Accept and record a host's key on first contact when none is pinned.
    #[schemars(with = "Option<bool>")]
    pub trust_on_first_use: Option<S<bool>>,
    /// Reach the host through a jump host: a host of the fleet by name, or
    /// `[user@]address[:port]` whose key is pinned in known_hosts.
    #[schemars(with = "Option<String>")]
    pub via: Option<S<String>>,
    /// Which address of a cloud server to connect to: `public` (default)
    /// or `private` (its first network's, usually with `via`).
    #[schemars(with = "Option<SshAddress>")]
    pub address: Option<S<SshAddress>>,
    /// Where tidekeeper's connections come from (CIDRs), for the check
    /// that a firewall lets SSH in from there.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub from: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SshAddress {
    Public,
    Private,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub hetzner: Option<HetznerSettings>,
    pub lightsail: Option<LightsailSettings>,
    /// Amazon EC2: the same AWS settings as Lightsail (region, profile,
    /// named key variables, endpoint, timeout).
    pub ec2: Option<LightsailSettings>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HetznerSettings {
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S<String>>,
    /// Another API base than Hetzner's (a proxy, or a test emulator).
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<S<String>>,
    /// Limit for one API request.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LightsailSettings {
    #[schemars(with = "Option<String>")]
    pub region: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub profile: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub access_key_env: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub secret_key_env: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub session_token_env: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    #[schemars(with = "Option<String>")]
    pub branch: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub notes_ref: Option<S<String>>,
    pub forge: Option<ForgeSettings>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgeSettings {
    #[schemars(with = "ForgeKind")]
    pub kind: S<ForgeKind>,
    #[schemars(with = "Option<String>")]
    pub url: Option<S<String>>,
    #[schemars(with = "String")]
    pub repo: S<String>,
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitea,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    #[default]
    Report,
    Correct,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    #[schemars(with = "Option<String>")]
    pub poll: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub drift: Option<S<String>>,
    /// How often a drift check hashes every managed file (default 1d); in
    /// between, only files whose size, inode, mtime or ctime changed.
    #[schemars(with = "Option<String>")]
    pub full_check: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    #[schemars(with = "Option<String>")]
    pub identity_env: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub identity_file: Option<S<String>>,
}

/// `hosts/*.yaml`: one host, or `count` identical ones.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    #[schemars(with = "Option<String>")]
    pub name: Option<S<String>>,
    #[schemars(with = "Option<u32>")]
    pub count: Option<S<u32>>,
    #[schemars(with = "ProviderKind")]
    pub provider: S<ProviderKind>,
    pub server: Option<ServerSpec>,
    #[schemars(with = "Option<String>")]
    pub address: Option<S<String>>,
    /// For `provider: local`: confine every managed path under this directory.
    #[schemars(with = "Option<String>")]
    pub root: Option<S<String>>,
    #[serde(default)]
    pub ssh: SshSettings,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub roles: Vec<S<String>>,
    #[serde(default)]
    pub vars: Vars,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: BTreeMap<String, S<String>>,
    #[schemars(with = "Option<bool>")]
    pub allow_destroy: Option<S<bool>>,
    /// Acknowledges a lockout risk of how the host is reached (at its
    /// tailnet address, with nothing keeping Tailscale up): why it is fine.
    /// See docs/safety.md.
    #[schemars(with = "Option<String>")]
    pub lockout_ok: Option<S<String>>,
    /// For `count: N` groups: how the daemon rolls a commit out over the
    /// group's hosts (instead of the fleet's `rollout:`).
    pub rollout: Option<RolloutSpec>,
    /// What a machine the provider does not price costs a month
    /// (`provider: existing` or `local`), counted in plans and the status page.
    pub cost: Option<CostSpec>,
}

/// A private network: `{ip_range: 10.0.0.0/16, subnets: [10.0.1.0/24], zone: eu-central}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Whose network: `hetzner` (the default) or `ec2` (a VPC).
    #[schemars(with = "Option<ProviderKind>")]
    pub provider: Option<S<ProviderKind>>,
    /// The network's whole range (RFC 1918); on EC2 the VPC's CIDR.
    #[schemars(with = "String")]
    pub ip_range: S<String>,
    /// Cloud subnets servers get addresses from (default: the whole range).
    /// On EC2 these are private: no route to the internet but the NAT
    /// gateway's (`nat: true`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub subnets: Vec<S<String>>,
    /// EC2: subnets routed to an internet gateway, whose instances get a
    /// public address on launch.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub public_subnets: Vec<S<String>>,
    /// EC2: a NAT gateway in the first public subnet, the private subnets'
    /// way out (billed by the hour, with its public IPv4 address).
    #[schemars(with = "Option<bool>")]
    pub nat: Option<S<bool>>,
    /// Hetzner network zone (default eu-central); on EC2 the availability
    /// zone of its subnets (default: EC2's choice).
    #[schemars(with = "Option<String>")]
    pub zone: Option<S<String>>,
    /// Let tidekeeper delete the network once no host names it.
    #[schemars(with = "Option<bool>")]
    pub allow_destroy: Option<S<bool>>,
    /// Addresses no server of the fleet is given: a machine attached by
    /// hand (a scheduler, a VPN gateway). Servers without a fixed `ip` get
    /// the lowest free address past them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub reserved: Vec<S<String>>,
}

/// A server's network: its name, or `{name, ip}` for a fixed address.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum NetworkRef {
    Name(String),
    Fixed {
        name: String,
        /// The server's address in the network (default: the next free one).
        ip: Option<String>,
    },
}

/// `cost: {monthly: 49, currency: EUR}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostSpec {
    #[schemars(with = "f64")]
    pub monthly: S<f64>,
    /// ISO 4217 code, e.g. EUR or USD.
    #[schemars(with = "String")]
    pub currency: S<String>,
}

#[derive(
    Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Hetzner,
    Lightsail,
    Ec2,
    Existing,
    Local,
}

/// The cloud server behind a host. Hetzner uses type/image/location,
/// Lightsail bundle/blueprint/zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(rename = "type")]
    #[schemars(with = "Option<String>")]
    pub server_type: Option<S<String>>,
    /// The image: Hetzner's name (`debian-12`), or on EC2 an AMI id
    /// (`ami-…`) or `OWNER/NAME`, the newest available AMI of that account
    /// whose name matches (`*`, `?`), e.g. `136693071363/debian-12-amd64-*`.
    #[schemars(with = "Option<String>")]
    pub image: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub location: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub bundle: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub blueprint: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub zone: Option<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ssh_keys: Vec<S<String>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: BTreeMap<String, S<String>>,
    /// Cloud firewall (Hetzner) or instance public ports (Lightsail).
    #[serde(default)]
    pub firewall: Vec<CloudPort>,
    /// A fixed public address: Lightsail's static IP, EC2's Elastic IP.
    #[schemars(with = "Option<bool>")]
    pub static_ip: Option<S<bool>>,
    #[schemars(with = "Option<String>")]
    pub user_data: Option<S<String>>,
    /// Private networks (Hetzner) from tidekeeper.yaml's `networks:`.
    #[serde(default)]
    #[schemars(with = "Vec<NetworkRef>")]
    pub networks: Vec<S<NetworkRef>>,
    /// EC2: the region (default: providers.ec2.region).
    #[schemars(with = "Option<String>")]
    pub region: Option<S<String>>,
    /// EC2: the subnet id (`subnet-…`) the instance is placed in.
    #[schemars(with = "Option<String>")]
    pub subnet: Option<S<String>>,
    /// EC2: a fixed private IPv4 address inside the subnet.
    #[schemars(with = "Option<String>")]
    pub private_ip: Option<S<String>>,
    /// EC2: the root EBS volume.
    pub root_volume: Option<RootVolume>,
    /// EC2: termination protection (`DisableApiTermination`).
    #[schemars(with = "Option<bool>")]
    pub termination_protection: Option<S<bool>>,
    /// EC2: the outbound rules of the host's security group, exactly
    /// (absent: not managed; the group keeps the outbound rules it has, and
    /// EC2 gives a new group one that allows everything out).
    pub egress: Option<Vec<EgressRule>>,
}

/// An outbound rule: traffic to `port` (`proto`, default tcp) of `to`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[schemars(with = "String")]
    pub port: S<String>,
    #[schemars(with = "Option<String>")]
    pub proto: Option<S<String>>,
    /// Destinations, CIDRs (default: everywhere).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub to: Vec<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootVolume {
    #[schemars(with = "Option<u32>")]
    pub size_gb: Option<S<u32>>,
    /// `gp3` (default), `gp2`, `io1`, `io2`, `st1`, `sc1`, `standard`.
    #[serde(rename = "type")]
    #[schemars(with = "Option<String>")]
    pub volume_type: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudPort {
    #[schemars(with = "String")]
    pub port: S<String>,
    #[schemars(with = "Option<String>")]
    pub proto: Option<S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub from: Vec<S<String>>,
}

/// `roles/*.yaml`: a reusable bundle of host resources.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    /// What the role is for, in a sentence (shown to people, not used).
    pub description: Option<String>,
    /// Variables for templates, overridden by the fleet's and the host's `vars:` (see docs/config.md).
    #[serde(default)]
    pub vars: Vars,
    /// Files the role manages: content inline, from files/, rendered from templates/, or a secret.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Directories to create, with mode and owner.
    #[serde(default)]
    pub directories: Vec<DirectorySpec>,
    /// Symbolic links: `path` pointing at `target`.
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    /// Paths that must not exist on the host (removed if they do).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub absent: Vec<S<String>>,
    /// APT packages: present, at their latest version, or absent.
    #[serde(default)]
    pub packages: PackagesSpec,
    /// systemd units: enabled or not, running or stopped.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Local user accounts with their groups, shell and SSH keys.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// Local groups.
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// The host firewall (ufw): default policies and rules.
    pub firewall: Option<FirewallSpec>,
    /// Kernel settings (`net.ipv4.ip_forward: "1"`), written to /etc/sysctl.d and applied.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub sysctl: BTreeMap<String, S<String>>,
    /// Host settings, one value per host, each owned by the engine's kind
    /// of its name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub settings: BTreeMap<String, S<String>>,
    /// Commands to run, guarded by `creates`, `unless` or `onlyif` so they run once.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    /// Docker Compose stacks from stacks/NAME/, brought up and checked.
    #[serde(default)]
    pub stacks: Vec<StackSpec>,
    /// Actions run once after the resources that `notify` them changed.
    #[serde(default)]
    pub handlers: Vec<HandlerSpec>,
    /// Scheduled commands as systemd timers.
    #[serde(default)]
    pub timers: Vec<TimerSpec>,
    /// Scheduled commands as cron entries.
    #[serde(default)]
    pub cron: Vec<CronSpec>,
    /// Filesystems mounted and kept in /etc/fstab.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// APT sources with their signing keys.
    #[serde(default)]
    pub apt_repositories: Vec<AptRepoSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path of the file on the host.
    #[schemars(with = "String")]
    pub path: S<String>,
    /// The file's text, inline.
    #[schemars(with = "Option<String>")]
    pub content: Option<S<String>>,
    /// A file under files/ in the config repo, copied as it is.
    #[schemars(with = "Option<String>")]
    pub source: Option<S<String>>,
    /// A minijinja template under templates/, rendered per host.
    #[schemars(with = "Option<String>")]
    pub template: Option<S<String>>,
    /// A secret under secrets/ (NAME for secrets/NAME.age), decrypted on the way to the host.
    #[schemars(with = "Option<String>")]
    pub secret: Option<S<String>>,
    /// Octal permissions, e.g. "0644".
    #[schemars(with = "Option<String>")]
    pub mode: Option<S<String>>,
    /// Owning user (name).
    #[schemars(with = "Option<String>")]
    pub owner: Option<S<String>>,
    /// Owning group (name).
    #[schemars(with = "Option<String>")]
    pub group: Option<S<String>>,
    /// Command run on the candidate file before it replaces the live one; `%s` is its path.
    #[schemars(with = "Option<String>")]
    pub validate: Option<S<String>>,
    /// Handlers to run when this file changes.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub notify: Vec<S<String>>,
    /// Never show the content in plans and logs (secrets always are).
    #[schemars(with = "Option<bool>")]
    pub sensitive: Option<S<bool>>,
    /// Acknowledges a lockout risk this file brings (a fail2ban jail that
    /// could ban tidekeeper): why it is fine. See docs/safety.md.
    #[schemars(with = "Option<String>")]
    pub lockout_ok: Option<S<String>>,
    /// A condition (a minijinja expression, e.g. `facts.arch == "aarch64"`):
    /// the file is managed only on hosts where it is true.
    #[schemars(with = "Option<String>")]
    pub when: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    /// Absolute path of the directory on the host.
    #[schemars(with = "String")]
    pub path: S<String>,
    /// Octal permissions, e.g. "0755".
    #[schemars(with = "Option<String>")]
    pub mode: Option<S<String>>,
    /// Owning user (name).
    #[schemars(with = "Option<String>")]
    pub owner: Option<S<String>>,
    /// Owning group (name).
    #[schemars(with = "Option<String>")]
    pub group: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    /// Absolute path of the link on the host.
    #[schemars(with = "String")]
    pub path: S<String>,
    /// What the link points at (absolute, or relative to the link's directory).
    #[schemars(with = "String")]
    pub target: S<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesSpec {
    /// Packages installed (any version).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub present: Vec<S<String>>,
    /// Packages kept at the newest version the APT sources offer.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub latest: Vec<S<String>>,
    /// Packages removed.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub absent: Vec<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The systemd unit, e.g. nginx or nginx.service.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Started at boot (true) or not (false); unset: left as it is.
    #[schemars(with = "Option<bool>")]
    pub enabled: Option<S<bool>>,
    /// running or stopped; unset: left as it is.
    #[schemars(with = "Option<ServiceState>")]
    pub state: Option<S<ServiceState>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Stopped,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// The login name.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Numeric user id; unset: the next free one.
    #[schemars(with = "Option<u32>")]
    pub uid: Option<S<u32>>,
    /// Supplementary groups the user is in.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub groups: Vec<S<String>>,
    /// Login shell, e.g. /bin/bash.
    #[schemars(with = "Option<String>")]
    pub shell: Option<S<String>>,
    /// Home directory; unset: /home/NAME.
    #[schemars(with = "Option<String>")]
    pub home: Option<S<String>>,
    /// A system account (useradd --system).
    #[schemars(with = "Option<bool>")]
    pub system: Option<S<bool>>,
    /// SSH public keys that may log in as this user (the whole authorized_keys file).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub authorized_keys: Vec<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group name.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Numeric group id; unset: the next free one.
    #[schemars(with = "Option<u32>")]
    pub gid: Option<S<u32>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallSpec {
    /// Default for incoming packets: allow, deny or reject.
    #[schemars(with = "Option<Policy>")]
    pub incoming: Option<S<Policy>>,
    /// Default for outgoing packets: allow, deny or reject.
    #[schemars(with = "Option<Policy>")]
    pub outgoing: Option<S<Policy>>,
    /// Forwarded packets (`ufw default … routed`); unset: left as it is
    /// (ufw's own default is deny).
    #[schemars(with = "Option<Policy>")]
    pub routed: Option<S<Policy>>,
    /// Whether containers (Docker's bridge networks) may reach the cloud
    /// metadata service at 169.254.169.254, which hands out the server's
    /// user data: deny (the default on a host that runs Docker), reject or
    /// allow. See docs/safety.md.
    #[schemars(with = "Option<Policy>")]
    pub metadata_from_containers: Option<S<Policy>>,
    /// Rules in order, e.g. `{port: "22", from: 10.0.0.0/8}`.
    #[serde(default)]
    pub rules: Vec<FirewallRuleSpec>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Allow,
    Deny,
    Reject,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRuleSpec {
    /// allow (the default), deny, reject or limit.
    #[schemars(with = "Option<RuleAction>")]
    pub action: Option<S<RuleAction>>,
    /// A port or range, e.g. "22", "8000:8100".
    #[schemars(with = "Option<String>")]
    pub port: Option<S<String>>,
    /// tcp (the default), udp or any.
    #[schemars(with = "Option<String>")]
    pub proto: Option<S<String>>,
    /// Source: an IP, a CIDR or any; may use template variables.
    #[schemars(with = "Option<String>")]
    pub from: Option<S<String>>,
    /// Only on this network interface (`ufw allow in on IFACE`), e.g.
    /// `tailscale0` or `wg0`.
    #[schemars(with = "Option<String>")]
    pub interface: Option<S<String>>,
    /// A note kept with the rule in ufw.
    #[schemars(with = "Option<String>")]
    pub comment: Option<S<String>>,
    /// Acknowledges a lockout risk of this rule (SSH only through a tunnel
    /// whose service the config does not keep up): why it is fine. See
    /// docs/safety.md.
    #[schemars(with = "Option<String>")]
    pub lockout_ok: Option<S<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
    Reject,
    Limit,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// A name for the command in plans and for `notify`.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// The shell command.
    #[schemars(with = "String")]
    pub run: S<String>,
    /// Skip when this path exists.
    #[schemars(with = "Option<String>")]
    pub creates: Option<S<String>>,
    /// Skip when this command exits 0.
    #[schemars(with = "Option<String>")]
    pub unless: Option<S<String>>,
    /// Run only when this command exits 0.
    #[schemars(with = "Option<String>")]
    pub onlyif: Option<S<String>>,
    /// How long it may take (default 10m).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
    /// Handlers to run after it ran.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub notify: Vec<S<String>>,
}

/// `timers:` in a role: a command on a schedule, as a systemd timer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    /// Letters, digits, _ and -: the units NAME.service and NAME.timer.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// A systemd calendar expression, e.g. `Mon..Fri 03:00`.
    #[schemars(with = "Option<String>")]
    pub on_calendar: Option<S<String>>,
    /// Or five cron fields, translated to calendar expressions.
    #[schemars(with = "Option<String>")]
    pub cron: Option<S<String>>,
    /// IANA zone of the schedule; the host's own zone if not given.
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    /// The command, run through /bin/sh -c exactly as written.
    #[schemars(with = "String")]
    pub run: S<String>,
    /// The user it runs as; default root.
    #[schemars(with = "Option<String>")]
    pub user: Option<S<String>>,
    /// How long a run may take (default 1h).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
    /// Run once at boot if a run was missed while the host was down (default true).
    #[schemars(with = "Option<bool>")]
    pub persistent: Option<S<bool>>,
}

/// `apt_repositories:` in a role: an APT source and its signing key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AptRepoSpec {
    /// The source's name: /etc/apt/sources.list.d/NAME.sources.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Repository URLs.
    #[schemars(with = "Vec<String>")]
    pub uris: Vec<S<String>>,
    /// Suites, e.g. bookworm; a flat repository: ["./"] and no components.
    #[schemars(with = "Vec<String>")]
    pub suites: Vec<S<String>>,
    /// Components, e.g. main.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub components: Vec<S<String>>,
    /// Only these architectures, e.g. amd64.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub architectures: Vec<S<String>>,
    /// A file under files/ holding the repository's signing key.
    #[schemars(with = "Option<String>")]
    pub key: Option<S<String>>,
    /// Accept it unsigned (a local repository).
    #[schemars(with = "Option<bool>")]
    pub trusted: Option<S<bool>>,
}

/// `mounts:` in a role: a filesystem in /etc/fstab.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The mount point.
    #[schemars(with = "String")]
    pub path: S<String>,
    /// What is mounted: a device, UUID=…, LABEL=…, or a remote share.
    #[schemars(with = "Option<String>")]
    pub device: Option<S<String>>,
    /// Filesystem type, e.g. ext4, nfs, tmpfs.
    #[schemars(with = "Option<String>")]
    pub fstype: Option<S<String>>,
    /// Mount options, e.g. defaults,noatime.
    #[schemars(with = "Option<String>")]
    pub options: Option<S<String>>,
    /// mounted (default), unmounted, or absent (removed from fstab).
    #[schemars(with = "Option<MountState>")]
    pub state: Option<S<MountState>>,
}

/// What a mount should be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountState {
    /// In fstab and mounted.
    #[default]
    Mounted,
    /// In fstab, not mounted.
    Unmounted,
    /// Neither.
    Absent,
}

/// `cron:` in a role: a command on a schedule, as a file in /etc/cron.d.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronSpec {
    /// A name for the entry (its file in /etc/cron.d).
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Five cron fields, e.g. "30 3 * * *".
    #[schemars(with = "String")]
    pub schedule: S<String>,
    /// The shell command.
    #[schemars(with = "String")]
    pub run: S<String>,
    /// The user it runs as; default root.
    #[schemars(with = "Option<String>")]
    pub user: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// The compose project in stacks/NAME/ of the config repo.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// Directory on the host; default `/opt/stacks/<name>`.
    #[schemars(with = "Option<String>")]
    pub dir: Option<S<String>>,
    /// Checked after the stack is brought up, and after maintenance on its host.
    #[serde(default)]
    pub health: Vec<HealthSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// The name resources `notify`.
    #[schemars(with = "String")]
    pub name: S<String>,
    /// A systemd unit to restart.
    #[schemars(with = "Option<String>")]
    pub restart: Option<S<String>>,
    /// A systemd unit to reload.
    #[schemars(with = "Option<String>")]
    pub reload: Option<S<String>>,
    /// A command to run (exactly one of restart, reload and run).
    #[schemars(with = "Option<String>")]
    pub run: Option<S<String>>,
}

/// `schedules.yaml`: the maintenance calendar.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulesFile {
    #[serde(default)]
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[schemars(with = "String")]
    pub name: S<String>,
    #[schemars(with = "String")]
    pub cron: S<String>,
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    #[serde(default)]
    pub hosts: HostSelector,
    #[schemars(with = "Option<String>")]
    pub window: Option<S<String>>,
    #[serde(default)]
    pub rolling: Rolling,
    #[serde(default)]
    pub health: Vec<HealthSpec>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub catch_up: Option<S<String>>,
    pub backup: Option<BackupSpec>,
    pub snapshot: Option<SnapshotSpec>,
    pub upgrade: Option<UpgradeSpec>,
    pub power: Option<PowerSpec>,
    pub command: Option<JobCommandSpec>,
    /// What a failure is reported as: `job_failed` (the default) or
    /// `health_threshold` (a job that checks thresholds).
    #[schemars(with = "Option<String>")]
    pub alert: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSelector {
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub names: Vec<S<String>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: BTreeMap<String, S<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub groups: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    #[schemars(with = "Option<u32>")]
    pub max_parallel: Option<S<u32>>,
    #[schemars(with = "Option<String>")]
    pub pause: Option<S<String>>,
    #[schemars(with = "Option<bool>")]
    pub stop_on_failure: Option<S<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// A systemd unit that must be active.
    #[schemars(with = "Option<String>")]
    pub unit: Option<S<String>>,
    /// A shell command that must succeed.
    #[schemars(with = "Option<String>")]
    pub command: Option<S<String>>,
    /// A URL fetched from the host (curl) that must answer with success.
    #[schemars(with = "Option<String>")]
    pub http: Option<S<String>>,
    /// A compose service (in a stack: of that stack) or a container name:
    /// healthy by its health check, or running when it has none.
    #[schemars(with = "Option<String>")]
    pub container: Option<S<String>>,
    /// How long the checks may take to pass (default 120s).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    #[schemars(with = "String")]
    pub repository: S<String>,
    #[schemars(with = "String")]
    pub password_secret: S<String>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub paths: Vec<S<String>>,
    /// A PostgreSQL database to dump into the repository: its name (a
    /// server on the host), or `{database, container, user}`.
    #[schemars(with = "Option<PgDumpSpec>")]
    pub pg_dump: Option<S<PgDumpSpec>>,
    /// The key and known host keys restic uses for an `sftp:` repository.
    pub sftp: Option<SftpSpec>,
    #[serde(default)]
    pub keep: Retention,
    #[schemars(with = "Option<bool>")]
    pub check: Option<S<bool>>,
}

/// `pg_dump: app`, or `pg_dump: {database: app, container: app/db}`.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum PgDumpSpec {
    Name(String),
    Full {
        /// The database to dump.
        database: String,
        /// The container PostgreSQL runs in: its name, or `STACK/SERVICE`
        /// of a compose stack (default: a server on the host itself).
        container: Option<String>,
        /// The database user pg_dump runs as (default: postgres).
        user: Option<String>,
    },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftpSpec {
    /// The secret holding the private key restic logs in with.
    #[schemars(with = "String")]
    pub key_secret: S<String>,
    /// The server's host keys as known_hosts lines
    /// (`ssh-keyscan -p PORT HOST` prints them; check them out of band).
    #[schemars(with = "String")]
    pub known_hosts: S<String>,
    /// The server's SSH port (a Hetzner Storage Box answers sftp on 23).
    #[schemars(with = "Option<u16>")]
    pub port: Option<S<u16>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[schemars(with = "Option<u32>")]
    pub daily: Option<S<u32>>,
    #[schemars(with = "Option<u32>")]
    pub weekly: Option<S<u32>>,
    #[schemars(with = "Option<u32>")]
    pub monthly: Option<S<u32>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    #[schemars(with = "u32")]
    pub keep: S<u32>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    #[schemars(with = "Option<RebootPolicy>")]
    pub reboot: Option<S<RebootPolicy>>,
    #[schemars(with = "Option<bool>")]
    pub unattended: Option<S<bool>>,
    /// `upgrade` never installs or removes packages (a new kernel is kept
    /// back); `full-upgrade` does. Default: full-upgrade for jobs that may
    /// reboot, upgrade for the others.
    #[schemars(with = "Option<UpgradeMode>")]
    pub mode: Option<S<UpgradeMode>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    Upgrade,
    FullUpgrade,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    Never,
    IfRequired,
    Always,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// How long the servers stay up after the cron start time, e.g. `5h`.
    #[schemars(with = "String")]
    pub running_for: S<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCommandSpec {
    #[schemars(with = "String")]
    pub run: S<String>,
}
