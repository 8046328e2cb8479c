//! The raw spec: the config repo's YAML files as written, with source spans.
//!
//! Everything here is parsed with unknown keys rejected. Meaning (defaults,
//! references, merging) is given in `resolve`; this module only mirrors the
//! files. The key-by-key reference is `docs/config.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;
pub type Vars = BTreeMap<String, serde_json::Value>;

/// `tidekeeper.yaml`: the fleet's own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub fleet: S<String>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub providers: Providers,
    #[serde(default)]
    pub status: StatusSettings,
    pub drift: Option<S<DriftMode>>,
    #[serde(default)]
    pub intervals: Intervals,
    #[serde(default)]
    pub secrets: SecretSettings,
    /// Stop applies and maintenance while still planning and reporting.
    pub suspend: Option<S<bool>>,
    #[serde(default)]
    pub apply: ApplySettings,
    /// Apply commits host by host: canaries, then batches, health-gated.
    pub rollout: Option<RolloutSpec>,
    /// Messages to people when something needs a human.
    pub notify: Option<NotifySpec>,
}

/// `notify:`: sinks, routes and the limits that make a state an alert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Repeat a firing alert after this long (`0s`: never).
    pub remind_every: Option<S<String>>,
    /// A host unreachable for this long is an alert.
    pub unreachable_after: Option<S<String>>,
    /// No successful fetch of the config repo for this long is an alert.
    pub fetch_stale_after: Option<S<String>>,
    /// A plan that raises the monthly cost above this is an alert.
    pub monthly_cost_above: Option<S<f64>>,
}

/// One sink; which keys apply depends on `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(rename = "type")]
    pub kind: S<String>,
    pub url: Option<S<CredentialSpec>>,
    pub secret: Option<S<CredentialSpec>>,
    pub token: Option<S<CredentialSpec>>,
    pub topic: Option<S<CredentialSpec>>,
    pub password: Option<S<CredentialSpec>>,
    pub server: Option<S<String>>,
    pub chat_id: Option<S<ChatId>>,
    pub room: Option<S<String>>,
    pub host: Option<S<String>>,
    pub port: Option<S<u16>>,
    pub tls: Option<S<crate::model::notify::SmtpTls>>,
    pub username: Option<S<String>>,
    pub from: Option<S<String>>,
    #[serde(default)]
    pub to: Vec<S<String>>,
    pub ca_file: Option<S<String>>,
    pub per_minute: Option<S<u32>>,
}

/// `{env: VAR}` or `{secret: name}`; a plain value is refused when resolved.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CredentialSpec {
    Plain(String),
    From(CredentialRef),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    pub env: Option<String>,
    pub secret: Option<String>,
}

/// Telegram chat ids are numbers; YAML reads them as such unless quoted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ChatId {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// One sink or several.
    pub sink: Option<S<String>>,
    #[serde(default)]
    pub sinks: Vec<S<String>>,
    #[serde(default)]
    pub events: Vec<S<String>>,
    /// The least severity sent (info, warning, critical).
    pub severity: Option<S<String>>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Hosts applied first, alone.
    #[serde(default)]
    pub canary: Vec<S<String>>,
    /// Hosts at once after the canaries: a count (`2`) or a share (`25%`).
    pub batch: Option<S<String>>,
    /// Wait between batches.
    pub pause: Option<S<String>>,
    /// Checked on every host of a batch before the next one starts.
    #[serde(default)]
    pub health: Vec<HealthSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApplySettings {
    /// Hold a merge whose plan differs from the plan reviewed on its PR.
    pub require_reviewed_plan: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub ssh: SshSettings,
    pub parallelism: Option<S<u32>>,
    #[serde(default)]
    pub vars: Vars,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    pub user: Option<S<String>>,
    pub port: Option<S<u16>>,
    /// Private key file on the machine tidekeeper runs on.
    pub key: Option<S<String>>,
    /// Run commands through sudo when the login user is not root.
    pub sudo: Option<S<bool>>,
    /// Accept and record a host's key on first contact when none is pinned.
    pub trust_on_first_use: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub hetzner: Option<HetznerSettings>,
    pub lightsail: Option<LightsailSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HetznerSettings {
    pub token_env: Option<S<String>>,
    /// Another API base than Hetzner's (a proxy, or a test emulator).
    pub endpoint: Option<S<String>>,
    /// Limit for one API request.
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightsailSettings {
    pub region: Option<S<String>>,
    pub profile: Option<S<String>>,
    pub access_key_env: Option<S<String>>,
    pub secret_key_env: Option<S<String>>,
    pub session_token_env: Option<S<String>>,
    pub endpoint: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    pub branch: Option<S<String>>,
    pub notes_ref: Option<S<String>>,
    pub forge: Option<ForgeSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeSettings {
    pub kind: S<ForgeKind>,
    pub url: Option<S<String>>,
    pub repo: S<String>,
    pub token_env: Option<S<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitea,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    #[default]
    Report,
    Correct,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    pub poll: Option<S<String>>,
    pub drift: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    pub identity_env: Option<S<String>>,
    pub identity_file: Option<S<String>>,
}

/// `hosts/*.yaml`: one host, or `count` identical ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub name: Option<S<String>>,
    pub count: Option<S<u32>>,
    pub provider: S<ProviderKind>,
    pub server: Option<ServerSpec>,
    pub address: Option<S<String>>,
    /// For `provider: local`: confine every managed path under this directory.
    pub root: Option<S<String>>,
    #[serde(default)]
    pub ssh: SshSettings,
    #[serde(default)]
    pub roles: Vec<S<String>>,
    #[serde(default)]
    pub vars: Vars,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
    pub allow_destroy: Option<S<bool>>,
    /// For `count: N` groups: how the daemon rolls a commit out over the
    /// group's hosts (instead of the fleet's `rollout:`).
    pub rollout: Option<RolloutSpec>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Hetzner,
    Lightsail,
    Existing,
    Local,
}

/// The cloud server behind a host. Hetzner uses type/image/location,
/// Lightsail bundle/blueprint/zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(rename = "type")]
    pub server_type: Option<S<String>>,
    pub image: Option<S<String>>,
    pub location: Option<S<String>>,
    pub bundle: Option<S<String>>,
    pub blueprint: Option<S<String>>,
    pub zone: Option<S<String>>,
    #[serde(default)]
    pub ssh_keys: Vec<S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
    /// Cloud firewall (Hetzner) or instance public ports (Lightsail).
    #[serde(default)]
    pub firewall: Vec<CloudPort>,
    pub static_ip: Option<S<bool>>,
    pub user_data: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudPort {
    pub port: S<String>,
    pub proto: Option<S<String>>,
    #[serde(default)]
    pub from: Vec<S<String>>,
}

/// `roles/*.yaml`: a reusable bundle of host resources.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub description: Option<String>,
    #[serde(default)]
    pub vars: Vars,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub directories: Vec<DirectorySpec>,
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    #[serde(default)]
    pub absent: Vec<S<String>>,
    #[serde(default)]
    pub packages: PackagesSpec,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    pub firewall: Option<FirewallSpec>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    pub stacks: Vec<StackSpec>,
    #[serde(default)]
    pub handlers: Vec<HandlerSpec>,
    #[serde(default)]
    pub timers: Vec<TimerSpec>,
    #[serde(default)]
    pub cron: Vec<CronSpec>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub apt_repositories: Vec<AptRepoSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: S<String>,
    pub content: Option<S<String>>,
    pub source: Option<S<String>>,
    pub template: Option<S<String>>,
    pub secret: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub owner: Option<S<String>>,
    pub group: Option<S<String>>,
    /// Command run on the candidate file before it replaces the live one; `%s` is its path.
    pub validate: Option<S<String>>,
    #[serde(default)]
    pub notify: Vec<S<String>>,
    pub sensitive: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    pub path: S<String>,
    pub mode: Option<S<String>>,
    pub owner: Option<S<String>>,
    pub group: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    pub path: S<String>,
    pub target: S<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PackagesSpec {
    #[serde(default)]
    pub present: Vec<S<String>>,
    #[serde(default)]
    pub latest: Vec<S<String>>,
    #[serde(default)]
    pub absent: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: S<String>,
    pub enabled: Option<S<bool>>,
    pub state: Option<S<ServiceState>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Stopped,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: S<String>,
    pub uid: Option<S<u32>>,
    #[serde(default)]
    pub groups: Vec<S<String>>,
    pub shell: Option<S<String>>,
    pub home: Option<S<String>>,
    pub system: Option<S<bool>>,
    #[serde(default)]
    pub authorized_keys: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: S<String>,
    pub gid: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSpec {
    pub incoming: Option<S<Policy>>,
    pub outgoing: Option<S<Policy>>,
    #[serde(default)]
    pub rules: Vec<FirewallRuleSpec>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Allow,
    Deny,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallRuleSpec {
    pub action: Option<S<RuleAction>>,
    pub port: Option<S<String>>,
    pub proto: Option<S<String>>,
    pub from: Option<S<String>>,
    pub comment: Option<S<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
    Reject,
    Limit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub name: S<String>,
    pub run: S<String>,
    pub creates: Option<S<String>>,
    pub unless: Option<S<String>>,
    pub onlyif: Option<S<String>>,
    pub timeout: Option<S<String>>,
    #[serde(default)]
    pub notify: Vec<S<String>>,
}

/// `timers:` in a role: a command on a schedule, as a systemd timer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    pub name: S<String>,
    /// A systemd calendar expression, e.g. `Mon..Fri 03:00`.
    pub on_calendar: Option<S<String>>,
    /// Or five cron fields, translated to calendar expressions.
    pub cron: Option<S<String>>,
    /// IANA zone of the schedule; the host's own zone if not given.
    pub timezone: Option<S<String>>,
    pub run: S<String>,
    pub user: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub persistent: Option<S<bool>>,
}

/// `apt_repositories:` in a role: an APT source and its signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptRepoSpec {
    pub name: S<String>,
    pub uris: Vec<S<String>>,
    pub suites: Vec<S<String>>,
    #[serde(default)]
    pub components: Vec<S<String>>,
    #[serde(default)]
    pub architectures: Vec<S<String>>,
    /// A file under files/ holding the repository's signing key.
    pub key: Option<S<String>>,
    pub trusted: Option<S<bool>>,
}

/// `mounts:` in a role: a filesystem in /etc/fstab.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub path: S<String>,
    pub device: Option<S<String>>,
    pub fstype: Option<S<String>>,
    pub options: Option<S<String>>,
    pub state: Option<S<MountState>>,
}

/// What a mount should be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronSpec {
    pub name: S<String>,
    pub schedule: S<String>,
    pub run: S<String>,
    pub user: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    pub name: S<String>,
    /// Directory on the host; default `/opt/stacks/<name>`.
    pub dir: Option<S<String>>,
    /// Checked after the stack is brought up, and after maintenance on its host.
    #[serde(default)]
    pub health: Vec<HealthSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    pub name: S<String>,
    pub restart: Option<S<String>>,
    pub reload: Option<S<String>>,
    pub run: Option<S<String>>,
}

/// `schedules.yaml`: the maintenance calendar.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SchedulesFile {
    #[serde(default)]
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: S<String>,
    pub cron: S<String>,
    pub timezone: Option<S<String>>,
    #[serde(default)]
    pub hosts: HostSelector,
    pub window: Option<S<String>>,
    #[serde(default)]
    pub rolling: Rolling,
    #[serde(default)]
    pub health: Vec<HealthSpec>,
    pub timeout: Option<S<String>>,
    pub catch_up: Option<S<String>>,
    pub backup: Option<BackupSpec>,
    pub snapshot: Option<SnapshotSpec>,
    pub upgrade: Option<UpgradeSpec>,
    pub power: Option<PowerSpec>,
    pub command: Option<JobCommandSpec>,
    /// What a failure is reported as: `job_failed` (the default) or
    /// `health_threshold` (a job that checks thresholds).
    pub alert: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostSelector {
    #[serde(default)]
    pub names: Vec<S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub groups: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    pub max_parallel: Option<S<u32>>,
    pub pause: Option<S<String>>,
    pub stop_on_failure: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub unit: Option<S<String>>,
    pub command: Option<S<String>>,
    pub http: Option<S<String>>,
    /// A compose service (in a stack: of that stack) or a container name:
    /// healthy by its health check, or running when it has none.
    pub container: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    pub repository: S<String>,
    pub password_secret: S<String>,
    #[serde(default)]
    pub paths: Vec<S<String>>,
    pub pg_dump: Option<S<String>>,
    #[serde(default)]
    pub keep: Retention,
    pub check: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub daily: Option<S<u32>>,
    pub weekly: Option<S<u32>>,
    pub monthly: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    pub keep: S<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    pub reboot: Option<S<RebootPolicy>>,
    pub unattended: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    Never,
    IfRequired,
    Always,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// How long the servers stay up after the cron start time, e.g. `5h`.
    pub running_for: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCommandSpec {
    pub run: S<String>,
}
