//! The cloud stage: the servers behind `provider: hetzner` and
//! `provider: lightsail` hosts. Observe (list calls), plan (pure, with monthly
//! costs from the provider's own prices), apply (create, update in place,
//! resize, replace, delete), and the maintenance calls (snapshots, power).
//!
//! - [`address_book`]: the addresses servers were given, for rendering.
//! - [`desired`]: the servers a fleet asks for (pure).
//! - [`plan`]: desired vs observed servers → changes with costs (pure).
//! - [`hostkey`]: host keys generated for new servers, and their cloud-init.
//! - [`apply`]: a cloud plan → provider calls, waiting for each server.
//! - [`hetzner`], [`lightsail`]: the providers, behind [`Provider`].
//!
//! Ownership: every resource tidekeeper creates carries the labels (tags)
//! [`MANAGED_BY`]` = tidekeeper` and [`FLEET`]` = <fleet>`. Servers without
//! them are never changed or deleted.

pub(crate) mod apply;
mod aws;
pub mod desired;
pub(crate) mod ec2;
pub(crate) mod ec2_prices;
pub(crate) mod hetzner;
pub mod hostkey;
pub(crate) mod lightsail;
pub(crate) mod plan;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use crate::model::desired::{AddressBook, Addresses, CloudPort, Fleet, Network, ProviderKind};
pub use desired::DesiredServer;

pub const MANAGED_BY: &str = "managed-by";
pub const MANAGED_BY_VALUE: &str = "tidekeeper";
pub const FLEET: &str = "tidekeeper-fleet";
/// SHA-256 of the host key tidekeeper generated for the server (hex, 40 digits).
pub const HOST_KEY: &str = "tidekeeper-host-key";
/// Set once the server's host key was generated on the server itself
/// (see [`hostkey`]): the key cloud-init installed from the user data, which
/// anything on the server can read from the metadata service, is gone.
pub const HOST_KEY_ROTATED: &str = "tidekeeper-host-key-rotated";

/// Labels tidekeeper keeps about a server's host key: never the user's to
/// set, never removed by an update.
pub fn is_host_key_label(name: &str) -> bool {
    name == HOST_KEY || name == HOST_KEY_ROTATED
}
/// Set while the host's config allows destroying the server.
pub const ALLOW_DESTROY: &str = "tidekeeper-allow-destroy";
/// On snapshots: the job that took them.
pub const SNAPSHOT_JOB: &str = "tidekeeper-job";
/// The host a Lightsail instance (or snapshot) is for, where its name cannot
/// say so: Lightsail cannot rename, so a resized host's instance has a new name.
pub const HOST_NAME: &str = "tidekeeper-host";

#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    #[error(
        "{provider}: no credentials: set the environment variable {var} (named in tidekeeper.yaml under providers.{provider})"
    )]
    Credentials { provider: &'static str, var: String },
    /// The SDK's credential chain found nothing.
    #[error("{provider}: {message}")]
    NoCredentials {
        provider: &'static str,
        message: String,
    },
    #[error("{provider}: {what} failed: {message}")]
    Api {
        provider: &'static str,
        what: String,
        message: String,
    },
    #[error("{provider}: {what} did not finish within {after:?}")]
    Timeout {
        provider: &'static str,
        what: String,
        after: Duration,
    },
    #[error("{0}")]
    Refused(String),
}

impl CloudError {
    /// No credentials at all, as opposed to refused or failing ones.
    pub fn is_missing_credentials(&self) -> bool {
        matches!(
            self,
            CloudError::Credentials { .. } | CloudError::NoCredentials { .. }
        )
    }

    pub fn api(provider: &'static str, what: impl Into<String>, message: impl ToString) -> Self {
        CloudError::Api {
            provider,
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// A server's power state as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Being created or started.
    Starting,
    Running,
    Stopping,
    Off,
    /// Anything else the provider says (`rebuilding`, `migrating`, …).
    Other(String),
}

/// One server as the provider lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ObservedServer {
    pub provider: ProviderKind,
    /// The provider's id (Hetzner: the numeric id; Lightsail: the name).
    pub id: String,
    pub name: String,
    /// Hetzner server type, or Lightsail bundle.
    pub size: String,
    /// Hetzner image, or Lightsail blueprint (None when unknown).
    pub image: Option<String>,
    /// Hetzner location, or Lightsail availability zone.
    pub location: String,
    pub labels: BTreeMap<String, String>,
    pub state: PowerState,
    pub address: Option<String>,
    pub private_address: Option<String>,
    /// Cloud firewall rules (Hetzner: of the server's managed firewall;
    /// Lightsail: the public ports), normalized; None when none is managed.
    pub firewall: Option<Vec<CloudPort>>,
    pub static_ip: bool,
    pub delete_protection: bool,
    /// Private networks it is attached to: (network name, its address there).
    pub networks: Vec<(String, String)>,
    /// EC2: the instance's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// EC2: the size of its EBS volumes, billed by the GB-month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_gb: Option<u32>,
    /// EC2: it has a public IPv4 address, billed by the hour.
    #[serde(default)]
    pub public_ipv4: bool,
    /// EC2: the outbound rules of its security groups together
    /// (destinations in `from`), normalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CloudPort>>,
}

/// A private network as the provider lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ObservedNetwork {
    pub provider: ProviderKind,
    pub id: String,
    pub name: String,
    pub ip_range: String,
    pub subnets: Vec<String>,
    /// EC2: subnets routed to its internet gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_subnets: Vec<String>,
    /// EC2: it has a NAT gateway (billed by the hour).
    #[serde(default)]
    pub nat: bool,
    /// EC2: its region (where its NAT gateway is priced).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub delete_protection: bool,
}

impl ObservedNetwork {
    pub fn owned_by(&self, fleet: &str) -> bool {
        owned(&self.labels, fleet)
    }
}

impl ObservedServer {
    /// Created by tidekeeper for `fleet`?
    pub fn owned_by(&self, fleet: &str) -> bool {
        owned(&self.labels, fleet)
    }
}

/// Do these labels say tidekeeper created the resource for `fleet`?
pub fn owned<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>, fleet: &str) -> bool {
    let (mut managed, mut ours) = (false, false);
    for (k, v) in labels {
        managed |= k == MANAGED_BY && v == MANAGED_BY_VALUE;
        ours |= k == FLEET && v == fleet;
    }
    managed && ours
}

/// A monthly price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Monthly {
    pub amount: f64,
    pub currency: &'static str,
}

/// What one provider charges for its server sizes, per location.
#[derive(Debug, Clone, Default)]
pub struct PriceList {
    pub currency: &'static str,
    /// (size, location) → monthly price; location `*` applies everywhere.
    pub monthly: BTreeMap<(String, String), f64>,
    /// Does the provider bill a stopped server? (Both Hetzner and Lightsail do.)
    pub bills_stopped: bool,
    /// Size → its disk in GB, where the provider says.
    pub disk_gb: BTreeMap<String, u32>,
    /// Location → what a server pays beside its size's price, where that is
    /// billed apart (EC2: its EBS volumes and its public IPv4 address).
    pub attached: BTreeMap<String, AttachedPrices>,
}

/// Prices billed apart from a server's size (EC2's), a month.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct AttachedPrices {
    /// Block storage (EC2: EBS gp3), per GB.
    pub volume_gb: f64,
    /// A public IPv4 address.
    pub ipv4: f64,
    /// A NAT gateway (EC2), without its address or the data it carries.
    #[serde(default)]
    pub nat: f64,
}

/// What one server costs a month, and the part it pays while stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerPrice {
    pub monthly: Monthly,
    /// Billed whether it runs or not: all of it where the provider bills a
    /// stopped server (Hetzner, Lightsail); its volumes on EC2 (a stopped
    /// instance gives its public IPv4 address back).
    pub while_stopped: f64,
}

impl PriceList {
    pub fn price(&self, size: &str, location: &str) -> Option<Monthly> {
        self.monthly
            .get(&(size.to_string(), location.to_string()))
            .or_else(|| self.monthly.get(&(size.to_string(), "*".to_string())))
            .map(|a| Monthly {
                amount: *a,
                currency: self.currency,
            })
    }
    /// What a server of `size` in `location` costs with `volume_gb` of
    /// storage and, if `public_ipv4`, a public address: the size's price
    /// plus what this provider bills apart. A `static_ip` (EC2's Elastic
    /// IP) is billed while the server is stopped too.
    pub fn server_price(
        &self,
        size: &str,
        location: &str,
        volume_gb: u32,
        public_ipv4: bool,
        static_ip: bool,
    ) -> Option<ServerPrice> {
        let mut monthly = self.price(size, location)?;
        let Some(a) = self.attached.get(location) else {
            let while_stopped = if self.bills_stopped {
                monthly.amount
            } else {
                0.0
            };
            return Some(ServerPrice {
                monthly,
                while_stopped,
            });
        };
        let volumes = a.volume_gb * f64::from(volume_gb);
        let ipv4 = if public_ipv4 || static_ip {
            a.ipv4
        } else {
            0.0
        };
        monthly.amount += volumes + ipv4;
        let while_stopped = if self.bills_stopped {
            monthly.amount
        } else if static_ip {
            volumes + ipv4
        } else {
            volumes
        };
        Some(ServerPrice {
            monthly,
            while_stopped,
        })
    }
    pub fn sizes(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self.monthly.keys().map(|k| k.0.as_str()).collect();
        s.dedup();
        s
    }
}

/// A snapshot (Hetzner: an image of type snapshot; Lightsail: an instance snapshot).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub server: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub labels: BTreeMap<String, String>,
}

pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;

/// What the cloud stage needs from a provider. Calls that start work on the
/// provider's side (create, resize, delete, power, snapshot) return when that
/// work has finished.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// Every server in the account (project / region), managed or not.
    fn servers(&self) -> Fut<'_, Vec<ObservedServer>>;
    fn prices(&self) -> Fut<'_, PriceList>;
    /// Create the server with `user_data`, wait until it runs; the created server.
    fn create<'a>(&'a self, want: &'a DesiredServer, user_data: &'a str)
    -> Fut<'a, ObservedServer>;
    /// Labels, firewall and static IP in place.
    fn update<'a>(&'a self, have: &'a ObservedServer, want: &'a DesiredServer) -> Fut<'a, ()>;
    /// A new size in place (Hetzner: stop, change type, start).
    fn resize<'a>(&'a self, have: &'a ObservedServer, size: &'a str) -> Fut<'a, ()>;
    /// A new size where the provider cannot resize in place (Lightsail): a
    /// snapshot, a new server from it with `want`'s size and `user_data`, the
    /// static IP moved over, the old server deleted. The new server.
    fn resize_by_copy<'a>(
        &'a self,
        have: &'a ObservedServer,
        want: &'a DesiredServer,
        user_data: &'a str,
    ) -> Fut<'a, ObservedServer> {
        let _ = (want, user_data);
        Box::pin(async move {
            Err(CloudError::Refused(format!(
                "{}: this provider resizes servers in place",
                have.name
            )))
        })
    }
    /// Does a new size need [`Provider::resize_by_copy`]?
    fn resizes_by_copy(&self) -> bool {
        false
    }
    /// Delete the server and what tidekeeper made for it alone (its
    /// firewall; its static IP too unless `keep_address`, as when the server
    /// is replaced and its successor takes the address over).
    fn delete<'a>(&'a self, have: &'a ObservedServer, keep_address: bool) -> Fut<'a, ()>;
    fn power<'a>(&'a self, have: &'a ObservedServer, on: bool) -> Fut<'a, ()>;
    fn snapshot<'a>(
        &'a self,
        have: &'a ObservedServer,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Snapshot>;
    /// Snapshots of `server` carrying all of `labels`.
    fn snapshots<'a>(
        &'a self,
        server: &'a ObservedServer,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Vec<Snapshot>>;
    fn delete_snapshot<'a>(&'a self, snapshot: &'a Snapshot) -> Fut<'a, ()>;
    /// Make a server made elsewhere `fleet`'s, as host `host`: add the
    /// ownership labels (its own labels stay) and, where the provider can,
    /// rename it to `host`.
    fn adopt<'a>(&'a self, have: &'a ObservedServer, fleet: &'a str, host: &'a str) -> Fut<'a, ()>;
    /// The login the server's image lets its keys in as, when known.
    fn login<'a>(&'a self, have: &'a ObservedServer) -> Fut<'a, Option<&'static str>> {
        Box::pin(async move {
            Ok(have
                .image
                .as_deref()
                .and_then(|i| crate::model::desired::image_login(self.kind(), i)))
        })
    }
    /// Private networks in the account (none where the provider has none).
    fn networks(&self) -> Fut<'_, Vec<ObservedNetwork>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// What the images `filters` choose (the newest match of each, None for
    /// no match) and what the images `ids` are, keyed by filter or id.
    /// Providers whose images are names (Hetzner, Lightsail) have no filters.
    fn images<'a>(&'a self, filters: &'a [String], ids: &'a [String]) -> Fut<'a, Images> {
        let _ = (filters, ids);
        Box::pin(async move { Ok(Images::new()) })
    }
    /// Create network `want` for `fleet`, or add the subnets it lacks.
    fn ensure_network<'a>(&'a self, fleet: &'a str, want: &'a Network) -> Fut<'a, ()> {
        let _ = (fleet, want);
        Box::pin(async move {
            Err(CloudError::api(
                "provider",
                "creating a network",
                "this provider has no private networks",
            ))
        })
    }
    fn delete_network<'a>(&'a self, have: &'a ObservedNetwork) -> Fut<'a, ()> {
        let _ = have;
        Box::pin(async move {
            Err(CloudError::api(
                "provider",
                "deleting a network",
                "this provider has no private networks",
            ))
        })
    }
}

/// How long to wait for the provider's work (create, resize, …).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(600);

/// An image as its provider describes it (EC2's AMIs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub name: String,
    /// The owning account.
    pub owner: String,
    pub created: String,
    /// `x86_64`, `arm64`, … (empty: not known).
    pub architecture: String,
}

/// Images looked up, by `OWNER/NAME` filter (None: nothing matched) or id.
pub type Images = BTreeMap<String, Option<ImageInfo>>;

/// The providers a fleet uses, with credentials from the environment.
#[derive(Default, Clone)]
pub struct Clouds {
    /// What the providers were seen to hold, handed over by a process that
    /// has their credentials (a proposal's worker has none): observing
    /// returns it instead of asking.
    pub seen: Option<Observed>,
    pub hetzner: Option<std::sync::Arc<dyn Provider>>,
    pub lightsail: Option<std::sync::Arc<dyn Provider>>,
    pub ec2: Option<std::sync::Arc<dyn Provider>>,
    /// Providers the fleet uses or tidekeeper.yaml configures but that
    /// cannot be reached (no credentials), with why: hosts of such a
    /// provider fail with it, and `import` says it.
    pub missing: Vec<(ProviderKind, CloudError)>,
    /// Providers tidekeeper.yaml configures but no host uses: listed when
    /// they have credentials, skipped quietly when they have none.
    pub unused: Vec<ProviderKind>,
    /// The `OWNER/NAME` image filters of the fleet's EC2 hosts, resolved
    /// when observing.
    pub image_filters: Vec<String>,
}

impl Clouds {
    /// Clients for the providers the fleet's hosts use, or that
    /// tidekeeper.yaml configures (so servers whose hosts all left the config
    /// are still seen). Missing credentials matter only where hosts need them.
    pub fn from_env(fleet: &Fleet) -> Clouds {
        let uses = |k: ProviderKind| fleet.hosts.iter().any(|h| h.provider == k);
        let mut c = Clouds {
            unused: [
                ProviderKind::Hetzner,
                ProviderKind::Lightsail,
                ProviderKind::Ec2,
            ]
            .into_iter()
            .filter(|k| !uses(*k))
            .collect(),
            ..Default::default()
        };
        if uses(ProviderKind::Hetzner) || fleet.settings.hetzner.declared {
            match hetzner::Hetzner::from_env(&fleet.settings.hetzner) {
                Ok(p) => c.hetzner = Some(std::sync::Arc::new(p)),
                Err(e) => c.missing.push((ProviderKind::Hetzner, e)),
            }
        }
        if let Some(settings) = &fleet.settings.lightsail {
            match lightsail::Lightsail::from_env(settings) {
                Ok(p) => c.lightsail = Some(std::sync::Arc::new(p)),
                Err(e) => c.missing.push((ProviderKind::Lightsail, e)),
            }
        }
        if let Some(settings) = &fleet.settings.ec2 {
            match ec2::Ec2::from_env(settings) {
                Ok(p) => c.ec2 = Some(std::sync::Arc::new(p)),
                Err(e) => c.missing.push((ProviderKind::Ec2, e)),
            }
        }
        let mut filters: Vec<String> = fleet
            .hosts
            .iter()
            .filter(|h| h.provider == ProviderKind::Ec2)
            .filter_map(|h| h.server.as_ref()?.image.clone())
            .filter(|i| crate::model::desired::ami_filter(i).is_some())
            .collect();
        filters.sort();
        filters.dedup();
        c.image_filters = filters;
        c
    }

    pub fn get(&self, k: ProviderKind) -> Option<&std::sync::Arc<dyn Provider>> {
        match k {
            ProviderKind::Hetzner => self.hetzner.as_ref(),
            ProviderKind::Lightsail => self.lightsail.as_ref(),
            ProviderKind::Ec2 => self.ec2.as_ref(),
            _ => None,
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &std::sync::Arc<dyn Provider>> {
        self.hetzner
            .iter()
            .chain(self.lightsail.iter())
            .chain(self.ec2.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_none()
            && self.hetzner.is_none()
            && self.lightsail.is_none()
            && self.ec2.is_none()
    }
}

/// What the cloud looks like now: every provider's servers and prices.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub servers: Vec<ObservedServer>,
    pub networks: Vec<ObservedNetwork>,
    pub prices: BTreeMap<ProviderKind, PriceList>,
    /// The images the fleet's filters chose and its servers run (EC2).
    pub images: Images,
}

impl Observed {
    /// SHA-256 of the servers and networks that concern `fleet` (its own,
    /// and any named as one of its `hosts`), as hex: what a saved plan's
    /// cloud changes were planned against. Prices are left out: the plan's
    /// costs carry them.
    pub(crate) fn digest(&self, fleet: &str, hosts: &[&str]) -> String {
        let mut servers: Vec<&ObservedServer> = self
            .servers
            .iter()
            .filter(|s| s.owned_by(fleet) || hosts.contains(&s.name.as_str()))
            .collect();
        servers.sort_by(|a, b| (a.provider, &a.name, &a.id).cmp(&(b.provider, &b.name, &b.id)));
        let mut networks: Vec<&ObservedNetwork> =
            self.networks.iter().filter(|n| n.owned_by(fleet)).collect();
        networks.sort_by(|a, b| (a.provider, &a.name, &a.id).cmp(&(b.provider, &b.name, &b.id)));
        // Images chosen by filter are in the plan's changes, which a saved
        // plan compares too: a newer image makes it stale.
        let seen = serde_json::json!({ "servers": servers, "networks": networks });
        crate::digest::sha256_hex(seen.to_string().as_bytes())
    }
}

/// [`Observed`] as data that crosses a process boundary (JSON): price
/// lists flattened, since their keys are pairs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CloudSnapshot {
    pub servers: Vec<ObservedServer>,
    pub networks: Vec<ObservedNetwork>,
    pub prices: Vec<SnapshotPrices>,
    #[serde(default)]
    pub images: Images,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SnapshotPrices {
    pub provider: ProviderKind,
    pub currency: String,
    /// (size, location, monthly price).
    pub monthly: Vec<(String, String, f64)>,
    pub bills_stopped: bool,
    pub disk_gb: BTreeMap<String, u32>,
    #[serde(default)]
    pub attached: BTreeMap<String, AttachedPrices>,
}

impl From<&Observed> for CloudSnapshot {
    fn from(o: &Observed) -> CloudSnapshot {
        CloudSnapshot {
            servers: o.servers.clone(),
            networks: o.networks.clone(),
            images: o.images.clone(),
            prices: o
                .prices
                .iter()
                .map(|(k, p)| SnapshotPrices {
                    provider: *k,
                    currency: p.currency.to_string(),
                    monthly: p
                        .monthly
                        .iter()
                        .map(|((s, l), v)| (s.clone(), l.clone(), *v))
                        .collect(),
                    bills_stopped: p.bills_stopped,
                    disk_gb: p.disk_gb.clone(),
                    attached: p.attached.clone(),
                })
                .collect(),
        }
    }
}

impl From<CloudSnapshot> for Observed {
    fn from(s: CloudSnapshot) -> Observed {
        Observed {
            servers: s.servers,
            networks: s.networks,
            images: s.images,
            prices: s
                .prices
                .into_iter()
                .map(|p| {
                    // Currencies are a handful of static names.
                    let currency: &'static str = match p.currency.as_str() {
                        "EUR" => "EUR",
                        "USD" => "USD",
                        other => Box::leak(other.to_string().into_boxed_str()),
                    };
                    (
                        p.provider,
                        PriceList {
                            currency,
                            monthly: p.monthly.into_iter().map(|(s, l, v)| ((s, l), v)).collect(),
                            bills_stopped: p.bills_stopped,
                            disk_gb: p.disk_gb,
                            attached: p.attached,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl Observed {
    /// What an observed server costs a month, its volumes and address
    /// included where they are billed apart.
    pub fn server_price(&self, o: &ObservedServer) -> Option<ServerPrice> {
        self.prices.get(&o.provider)?.server_price(
            &o.size,
            &o.location,
            o.volume_gb.unwrap_or(0),
            o.public_ipv4,
            o.static_ip,
        )
    }

    /// What `d`'s server costs a month once applied: its root volume as
    /// the server it has now has it (a root volume is not resized), else as
    /// declared, else an AMI's usual size; a public IPv4 address as
    /// [`ec2_prices::public_ipv4`] says.
    pub fn desired_price(&self, d: &desired::DesiredServer) -> Option<ServerPrice> {
        let now = self.server(d.provider, &d.host);
        let gb = ec2_prices::root_gb(d, now);
        let ipv4 = ec2_prices::public_ipv4(d, now);
        self.prices
            .get(&d.provider)?
            .server_price(&d.size, &d.location, gb, ipv4, d.static_ip)
    }

    pub fn server(&self, provider: ProviderKind, name: &str) -> Option<&ObservedServer> {
        self.servers
            .iter()
            .find(|s| s.provider == provider && s.name == name)
    }
}

/// What the cloud stage learned for rendering: the addresses and generated
/// host key of every host whose server (created by tidekeeper for this
/// fleet) runs and has a public address. The private address is the one
/// in the server's first network, as attached.
pub fn address_book(fleet: &Fleet, observed: &Observed) -> AddressBook {
    let mut book = AddressBook::new();
    for h in &fleet.hosts {
        let Some(s) = observed
            .server(h.provider, &h.name)
            .filter(|s| s.owned_by(&fleet.name))
        else {
            continue;
        };
        let (PowerState::Running, Some(public)) = (&s.state, &s.address) else {
            continue;
        };
        let first = h.server.as_ref().and_then(|sv| sv.networks.first());
        let private = first
            .and_then(|n| s.networks.iter().find(|(name, _)| *name == n.name))
            .map(|(_, ip)| ip.clone());
        let a = Addresses {
            public: Some(public.clone()),
            private,
            host_key: s.labels.get(HOST_KEY).cloned(),
            host_key_rotated: s.labels.contains_key(HOST_KEY_ROTATED),
        };
        book.insert(h.name.clone(), a);
    }
    book
}

/// List servers and prices of every provider, in parallel.
pub async fn observe(clouds: &Clouds) -> Result<Observed, CloudError> {
    if let Some(seen) = &clouds.seen {
        return Ok(seen.clone());
    }
    let mut out = Observed::default();
    let work: Vec<_> = clouds
        .all()
        .map(|p| async move {
            let (servers, prices, networks) = tokio::join!(p.servers(), p.prices(), p.networks());
            let mut r = servers.and_then(|s| Ok((s, prices?, networks?, Images::new())));
            // Only fleets that choose images by filter pay for the lookup.
            if let Ok((servers, _, _, images)) = &mut r
                && !clouds.image_filters.is_empty()
            {
                let mut ids: Vec<String> = servers.iter().filter_map(|s| s.image.clone()).collect();
                ids.sort();
                ids.dedup();
                match p.images(&clouds.image_filters, &ids).await {
                    Ok(found) => *images = found,
                    Err(e) => r = Err(e),
                }
            }
            (p.kind(), r)
        })
        .collect();
    for (kind, r) in join_all(work).await {
        let (servers, prices, networks, images) = match r {
            Ok(v) => v,
            Err(e) if e.is_missing_credentials() && clouds.unused.contains(&kind) => continue,
            Err(e) => return Err(e),
        };
        out.images.extend(images);
        out.servers.extend(servers);
        out.networks.extend(networks);
        out.prices.insert(kind, prices);
    }
    Ok(out)
}

/// Await futures concurrently, results in order (no extra dependency for it).
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<Pin<Box<F>>>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, h) in handles.iter_mut().enumerate() {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        outs[i] = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, fleet: Option<&str>, size: &str) -> ObservedServer {
        let mut labels = BTreeMap::new();
        if let Some(f) = fleet {
            labels.insert(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string());
            labels.insert(FLEET.to_string(), f.to_string());
        }
        ObservedServer {
            provider: ProviderKind::Hetzner,
            id: name.len().to_string(),
            name: name.into(),
            size: size.into(),
            image: None,
            location: "fsn1".into(),
            labels,
            state: PowerState::Running,
            address: None,
            private_address: None,
            firewall: None,
            static_ip: false,
            delete_protection: false,
            networks: vec![],
            subnet: None,
            volume_gb: None,
            public_ipv4: false,
            egress: None,
        }
    }

    #[test]
    fn the_digest_of_the_cloud_moves_with_the_fleets_servers_and_name_clashes_only() {
        let obs = |servers| Observed {
            servers,
            ..Default::default()
        };
        let ours = obs(vec![
            server("web", Some("acme"), "cx22"),
            server("db", None, "cx22"),
        ]);
        let digest = ours.digest("acme", &["web"]);
        let resized = obs(vec![
            server("web", Some("acme"), "cx32"),
            server("db", None, "cx22"),
        ]);
        assert_ne!(resized.digest("acme", &["web"]), digest);
        let others = obs(vec![
            server("db", None, "cx52"),
            server("web", Some("acme"), "cx22"),
        ]);
        assert_eq!(
            others.digest("acme", &["web"]),
            digest,
            "another's server, in any order"
        );
        assert_ne!(
            others.digest("acme", &["web", "db"]),
            ours.digest("acme", &["web", "db"]),
            "a server named as one of the fleet's hosts counts"
        );
    }
}
