//! Hetzner Cloud through the `hcloud` crate (rustls).
//!
//! Each server gets a cloud firewall of its own (`tk-<fleet>-<host>`, with
//! the ownership labels) when its host lists `server.firewall` rules, and
//! delete protection from the moment it is created; the protection is lifted
//! only right before an allowed delete.
//!
//! Retries: 423 (locked by a running action), 5xx and timeouts are retried
//! with exponential backoff from 250 ms, up to 8 attempts. A 429 waits as
//! long as the rate-limit headers say one request takes to become available
//! again: the generated client drops response headers, so tidekeeper reads
//! `RateLimit-Limit`, `-Remaining` and `-Reset` from one small request of its
//! own. A create is never retried blindly: tidekeeper first looks the server
//! up by name.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hcloud::apis::configuration::Configuration;
use hcloud::apis::{
    Error as HError, actions_api, firewalls_api, floating_ips_api, images_api, networks_api,
    pricing_api, servers_api, ssh_keys_api,
};
use hcloud::models;

use super::desired::{DesiredServer, fold_any, normalize};
use super::{
    ACTION_TIMEOUT, CloudError, FLEET, Fut, MANAGED_BY, MANAGED_BY_VALUE, ObservedNetwork,
    ObservedServer, PowerState, PriceList, Provider, Snapshot,
};
use crate::model::desired::{CloudPort, Hetzner as Settings, Network, ProviderKind};

const NAME: &str = "hetzner";
const ATTEMPTS: u32 = 8;
/// The longest wait between two tries of an API call.
const RETRY_CAP: Duration = Duration::from_secs(16);

/// The waits between tries of an API call, from `first` up to [`RETRY_CAP`].
fn retry_waits(first: Duration) -> impl Iterator<Item = Duration> {
    crate::backoff::Backoff::new(first, RETRY_CAP).waits()
}
const POLL: Duration = Duration::from_millis(500);

pub(crate) struct Hetzner {
    config: Configuration,
    /// Held from choosing a free network address to attaching at it:
    /// servers made at once would otherwise choose the same one.
    choosing_address: tokio::sync::Mutex<()>,
}

/// Worth retrying: timeouts, connection failures, 429, 423 (locked by a
/// running action) and 5xx.
fn retryable<E>(e: &HError<E>) -> bool {
    match e {
        HError::Reqwest(r) => r.is_timeout() || r.is_connect() || r.is_request(),
        HError::Io(_) => true,
        HError::ResponseError(rc) => {
            matches!(rc.status.as_u16(), 429 | 423) || rc.status.is_server_error()
        }
        _ => false,
    }
}

/// `uniqueness_error: server name is already used (HTTP 409)`
fn describe<E>(e: &HError<E>) -> String {
    match e {
        HError::ResponseError(rc) => {
            let v: serde_json::Value = serde_json::from_str(&rc.content).unwrap_or_default();
            let code = v["error"]["code"].as_str().unwrap_or("error");
            let msg = v["error"]["message"]
                .as_str()
                .unwrap_or(rc.content.as_str());
            format!("{code}: {msg} (HTTP {})", rc.status.as_u16())
        }
        HError::Reqwest(r) => {
            let mut s = r.to_string();
            let mut src = std::error::Error::source(r);
            while let Some(e) = src {
                s.push_str(&format!(": {e}"));
                src = e.source();
            }
            s
        }
        HError::Serde(e) => format!("unexpected answer: {e}"),
        HError::Io(e) => e.to_string(),
    }
}

fn status_is<E>(e: &HError<E>, code: u16) -> bool {
    matches!(e, HError::ResponseError(rc) if rc.status.as_u16() == code)
}

fn state(s: models::server::Status) -> PowerState {
    use models::server::Status as S;
    match s {
        S::Running => PowerState::Running,
        S::Off => PowerState::Off,
        S::Initializing | S::Starting => PowerState::Starting,
        S::Stopping => PowerState::Stopping,
        S::Deleting => PowerState::Other("deleting".into()),
        S::Migrating => PowerState::Other("migrating".into()),
        S::Rebuilding => PowerState::Other("rebuilding".into()),
        S::Unknown => PowerState::Other("unknown".into()),
    }
}

impl Hetzner {
    /// The firewall applied to server `id` (at most one: tidekeeper keeps
    /// one per server) renamed `tk-<fleet>-<host>` and labelled the fleet's,
    /// and the networks it is attached to labelled the fleet's. Nothing is
    /// changed when one of them belongs to another fleet or there are two
    /// firewalls.
    async fn adopt_attached(&self, id: i64, fleet: &str, host: &str) -> Result<(), CloudError> {
        let refuse = |why: String| CloudError::api(NAME, "importing the server", &why);
        let fws: Vec<models::Firewall> = self
            .firewalls_labelled(None)
            .await?
            .into_iter()
            .filter(|f| {
                f.applied_to
                    .iter()
                    .any(|a| a.server.as_ref().is_some_and(|r| r.id == id))
            })
            .collect();
        if fws.len() > 1 {
            let names: Vec<&str> = fws.iter().map(|f| f.name.as_str()).collect();
            return Err(refuse(format!(
                "it has {} firewalls ({}); tidekeeper keeps one per server: merge their rules into one and detach the others first",
                fws.len(),
                names.join(", ")
            )));
        }
        let server = self.server(id).await?;
        let nets: Vec<models::Network> = self
            .list_networks()
            .await?
            .into_iter()
            .filter(|n| server.private_net.iter().any(|p| p.network == Some(n.id)))
            .collect();
        let foreign = |labels: &HashMap<String, String>| {
            labels.contains_key(super::MANAGED_BY) && !super::owned(labels.iter(), fleet)
        };
        if let Some(n) = nets.iter().find(|n| foreign(&n.labels)) {
            return Err(refuse(format!("its network {} is another fleet's", n.name)));
        }
        if let Some(f) = fws
            .iter()
            .find(|f| foreign(&f.labels.clone().unwrap_or_default()))
        {
            return Err(refuse(format!(
                "its firewall {} is another fleet's",
                f.name
            )));
        }
        let ours = |labels: &HashMap<String, String>| {
            let mut l = labels.clone();
            l.extend(super::desired::ownership(fleet));
            Some(l)
        };
        for f in &fws {
            let req = models::ReplaceFirewallRequest {
                labels: ours(&f.labels.clone().unwrap_or_default()),
                name: Some(host_resource_name(fleet, host)),
            };
            self.call("adopting the firewall", || {
                firewalls_api::replace_firewall(
                    &self.config,
                    firewalls_api::ReplaceFirewallParams {
                        id: f.id,
                        replace_firewall_request: req.clone(),
                    },
                )
            })
            .await?;
        }
        for n in nets
            .iter()
            .filter(|n| !super::owned(n.labels.iter(), fleet))
        {
            let req = models::ReplaceNetworkRequest {
                labels: ours(&n.labels),
                ..Default::default()
            };
            self.call("adopting the network", || {
                networks_api::replace_network(
                    &self.config,
                    networks_api::ReplaceNetworkParams {
                        id: n.id,
                        replace_network_request: req.clone(),
                    },
                )
            })
            .await?;
        }
        Ok(())
    }
}

/// The name of what tidekeeper makes for one host alone: its firewall, its
/// floating IP.
fn host_resource_name(fleet: &str, host: &str) -> String {
    format!("tk-{fleet}-{host}")
}

/// Rules as tidekeeper writes them: one inbound rule per port and protocol.
fn rules(ports: &[CloudPort]) -> Vec<models::Rule> {
    let mut out = Vec::new();
    for p in ports {
        let protos: &[models::rule::Protocol] = match p.proto.as_str() {
            "udp" => &[models::rule::Protocol::Udp],
            "any" => &[models::rule::Protocol::Tcp, models::rule::Protocol::Udp],
            _ => &[models::rule::Protocol::Tcp],
        };
        for proto in protos {
            let mut r = models::Rule::new(models::rule::Direction::In, *proto);
            r.port = Some(Some(if p.from_port == p.to_port {
                p.from_port.to_string()
            } else {
                format!("{}-{}", p.from_port, p.to_port)
            }));
            r.source_ips = Some(p.from.clone());
            out.push(r);
        }
    }
    out
}

/// Observed rules back in the config's terms.
fn ports(rules: &[models::RuleResponse]) -> Vec<CloudPort> {
    let mut out: Vec<CloudPort> = Vec::new();
    for r in rules {
        if r.direction != models::rule_response::Direction::In {
            continue;
        }
        let proto = match r.protocol {
            models::rule_response::Protocol::Tcp => "tcp",
            models::rule_response::Protocol::Udp => "udp",
            _ => continue,
        };
        let Some(port) = &r.port else { continue };
        let (a, b) = match port.split_once('-') {
            Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap_or(0)),
            None => {
                let p = port.parse().unwrap_or(0);
                (p, p)
            }
        };
        out.push(CloudPort {
            from_port: a,
            to_port: b,
            proto: proto.into(),
            from: r.source_ips.clone(),
        });
    }
    fold_any(out)
}

impl Hetzner {
    pub(crate) fn from_env(s: &Settings) -> Result<Hetzner, CloudError> {
        let token = std::env::var(&s.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| CloudError::Credentials {
                provider: NAME,
                var: s.token_env.clone(),
            })?;
        let mut config = Configuration::new();
        config.bearer_access_token = Some(token);
        config.user_agent = Some(format!("tidekeeper/{}", env!("CARGO_PKG_VERSION")));
        config.client = crate::http::builder(Duration::from_secs(s.timeout_secs.max(1)))
            .build()
            .map_err(|e| CloudError::api(NAME, "setting up the HTTP client", e))?;
        if let Some(url) = &s.endpoint {
            config.base_path_mapping.insert(
                "https://api.hetzner.cloud/v1".into(),
                url.trim_end_matches('/').to_string(),
            );
        }
        Ok(Hetzner {
            config,
            choosing_address: tokio::sync::Mutex::new(()),
        })
    }

    async fn call<T, E, F, Fu>(&self, what: &str, mut f: F) -> Result<T, CloudError>
    where
        F: FnMut() -> Fu,
        Fu: std::future::Future<Output = Result<T, HError<E>>>,
    {
        let mut delays = retry_waits(Duration::from_millis(250));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                    let wait = self.backoff(&e, delays.next()).await;
                    tracing::debug!(
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "retrying a Hetzner call"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(CloudError::api(NAME, what, describe(&e))),
            }
        }
    }

    /// How long to wait before retrying after `e`: for a 429, until one
    /// request is available again per the rate-limit headers; else `delay`.
    async fn backoff<E>(&self, e: &HError<E>, delay: Option<Duration>) -> Duration {
        let delay = delay.unwrap_or(RETRY_CAP);
        if !status_is(e, 429) {
            return delay;
        }
        self.rate_limit_wait().await.unwrap_or(delay)
    }

    /// The time until the bucket holds one request: `(reset − now) / limit`
    /// when none remain (the bucket refills evenly until `reset`).
    async fn rate_limit_wait(&self) -> Option<Duration> {
        let base = self.config.get_base_path("https://api.hetzner.cloud/v1");
        let mut req = self
            .config
            .client
            .get(format!("{base}/locations?per_page=1"));
        if let Some(t) = &self.config.bearer_access_token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?;
        let h = |name: &str| -> Option<f64> {
            resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
        };
        let (limit, remaining, reset) = (
            h("ratelimit-limit")?,
            h("ratelimit-remaining")?,
            h("ratelimit-reset")?,
        );
        if remaining >= 1.0 {
            return Some(Duration::ZERO);
        }
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let secs = ((reset - now) / limit.max(1.0)).clamp(0.25, 60.0);
        Some(Duration::from_secs_f64(secs))
    }

    /// Wait for a Hetzner action to finish.
    async fn wait(&self, action: &models::Action, what: &str) -> Result<(), CloudError> {
        let start = Instant::now();
        let mut a = action.clone();
        loop {
            match a.status {
                models::action::Status::Success => return Ok(()),
                models::action::Status::Error => {
                    let e = a.error.map(|e| format!("{}: {}", e.code, e.message));
                    return Err(CloudError::api(
                        NAME,
                        what,
                        e.unwrap_or_else(|| "the action failed".into()),
                    ));
                }
                models::action::Status::Running => {}
            }
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: what.into(),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
            let id = a.id;
            a = *self
                .call(what, || {
                    actions_api::get_action(&self.config, actions_api::GetActionParams { id })
                })
                .await?
                .action;
        }
    }

    async fn list_servers(&self, name: Option<&str>) -> Result<Vec<models::Server>, CloudError> {
        self.paged(|page| {
            let params = servers_api::ListServersParams {
                name: name.map(String::from),
                page: Some(page),
                per_page: Some(50),
                ..Default::default()
            };
            async move {
                let r = self
                    .call("listing servers", || {
                        servers_api::list_servers(&self.config, params.clone())
                    })
                    .await?;
                Ok((r.servers, r.meta.pagination.next_page))
            }
        })
        .await
    }

    async fn list_firewalls(&self) -> Result<Vec<models::Firewall>, CloudError> {
        self.firewalls_labelled(Some(format!("{MANAGED_BY}={MANAGED_BY_VALUE}")))
            .await
    }

    /// Firewalls with labels matching `selector` (None: every firewall).
    async fn firewalls_labelled(
        &self,
        selector: Option<String>,
    ) -> Result<Vec<models::Firewall>, CloudError> {
        self.paged(|page| {
            let params = firewalls_api::ListFirewallsParams {
                label_selector: selector.clone(),
                page: Some(page),
                per_page: Some(50),
                ..Default::default()
            };
            async move {
                let r = self
                    .call("listing firewalls", || {
                        firewalls_api::list_firewalls(&self.config, params.clone())
                    })
                    .await?;
                Ok((r.firewalls, r.meta.pagination.next_page))
            }
        })
        .await
    }

    /// Every page of a listing: `fetch(page)` gives that page's items and
    /// the number of the next page, if any.
    async fn paged<T, Fu>(&self, mut fetch: impl FnMut(i64) -> Fu) -> Result<Vec<T>, CloudError>
    where
        Fu: std::future::Future<Output = Result<(Vec<T>, Option<i64>), CloudError>>,
    {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let (items, next) = fetch(page).await?;
            out.extend(items);
            match next {
                Some(n) if n > page => page = n,
                _ => return Ok(out),
            }
        }
    }

    async fn list_networks(&self) -> Result<Vec<models::Network>, CloudError> {
        self.paged(|page| {
            let params = networks_api::ListNetworksParams {
                page: Some(page),
                per_page: Some(50),
                ..Default::default()
            };
            async move {
                let r = self
                    .call("listing networks", || {
                        networks_api::list_networks(&self.config, params.clone())
                    })
                    .await?;
                Ok((r.networks, r.meta.pagination.next_page))
            }
        })
        .await
    }

    async fn network_protection(&self, id: i64, on: bool) -> Result<(), CloudError> {
        let req = models::ChangeNetworkProtectionRequest { delete: Some(on) };
        let r = self
            .call("changing the network's delete protection", || {
                networks_api::change_network_protection(
                    &self.config,
                    networks_api::ChangeNetworkProtectionParams {
                        id,
                        change_network_protection_request: req.clone(),
                    },
                )
            })
            .await?;
        self.wait(&r.action, "changing the network's delete protection")
            .await
    }

    /// Attach the server to the networks `want` names (at its fixed
    /// address where one is asked for) and detach it from the others.
    async fn sync_networks(&self, id: i64, want: &DesiredServer) -> Result<(), CloudError> {
        let server = self.server(id).await?;
        if want.networks.is_empty() && server.private_net.is_empty() {
            return Ok(());
        }
        let networks = self.list_networks().await?;
        let id_of = |name: &str| networks.iter().find(|n| n.name == name).map(|n| n.id);
        for have in &server.private_net {
            let Some(net) = have.network else { continue };
            let name = networks
                .iter()
                .find(|n| n.id == net)
                .map(|n| n.name.as_str());
            let keep = want.networks.iter().any(|w| {
                Some(w.name.as_str()) == name
                    && w.ip.as_ref().is_none_or(|ip| have.ip.as_ref() == Some(ip))
            });
            if keep {
                continue;
            }
            let req = models::DetachServerFromNetworkRequest { network: net };
            let r = self
                .call("detaching the server from a network", || {
                    servers_api::detach_server_from_network(
                        &self.config,
                        servers_api::DetachServerFromNetworkParams {
                            id,
                            detach_server_from_network_request: req.clone(),
                        },
                    )
                })
                .await?;
            self.wait(&r.action, "detaching the server from a network")
                .await?;
        }
        let server = self.server(id).await?;
        for w in &want.networks {
            let net = id_of(&w.name).ok_or_else(|| {
                CloudError::api(
                    NAME,
                    "attaching the server to a network",
                    format!("there is no network {}", w.name),
                )
            })?;
            if server.private_net.iter().any(|p| p.network == Some(net)) {
                continue;
            }
            // Hetzner gives the lowest free address, a reserved one too:
            // past reserved addresses, tidekeeper chooses.
            let _choosing = match (&w.ip, w.reserved.is_empty()) {
                (None, false) => Some(self.choosing_address.lock().await),
                _ => None,
            };
            let ip = match (&w.ip, networks.iter().find(|n| n.id == net)) {
                (Some(ip), _) => Some(ip.clone()),
                (None, Some(n)) if !w.reserved.is_empty() => {
                    Some(self.free_address(n, &w.reserved).await?)
                }
                _ => None,
            };
            let req = models::AttachServerToNetworkRequest {
                network: net,
                ip,
                ..Default::default()
            };
            let r = self
                .call("attaching the server to a network", || {
                    servers_api::attach_server_to_network(
                        &self.config,
                        servers_api::AttachServerToNetworkParams {
                            id,
                            attach_server_to_network_request: req.clone(),
                        },
                    )
                })
                .await?;
            self.wait(&r.action, "attaching the server to a network")
                .await?;
        }
        Ok(())
    }

    /// The lowest address of `net`'s first subnet that no server has and
    /// that is not `reserved` (its first address is the gateway's).
    async fn free_address(
        &self,
        net: &models::Network,
        reserved: &[String],
    ) -> Result<String, CloudError> {
        let used: Vec<String> = self
            .list_servers(None)
            .await?
            .iter()
            .flat_map(|s| &s.private_net)
            .filter(|p| p.network == Some(net.id))
            .filter_map(|p| p.ip.clone())
            .collect();
        let range = net
            .subnets
            .first()
            .and_then(|s| s.ip_range.clone())
            .unwrap_or_else(|| net.ip_range.clone());
        free_in(&range, &used, reserved).ok_or_else(|| {
            CloudError::api(
                NAME,
                "attaching the server to a network",
                format!("no free address left in {range} of network {}", net.name),
            )
        })
    }

    fn observed(&self, s: &models::Server, firewalls: &[models::Firewall]) -> ObservedServer {
        let applied = |f: &&models::Firewall| {
            f.applied_to
                .iter()
                .any(|a| a.server.as_ref().is_some_and(|r| r.id == s.id))
        };
        ObservedServer {
            provider: ProviderKind::Hetzner,
            id: s.id.to_string(),
            name: s.name.clone(),
            size: s.server_type.name.clone(),
            image: s.image.as_ref().and_then(|i| i.name.clone()),
            location: s.location.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            state: state(s.status),
            address: s.public_net.ipv4.as_ref().map(|i| i.ip.clone()),
            private_address: s.private_net.first().and_then(|n| n.ip.clone()),
            firewall: firewalls.iter().find(applied).map(|f| ports(&f.rules)),
            static_ip: !s.public_net.floating_ips.is_empty(),
            delete_protection: s.protection.delete,
            networks: Vec::new(),
            subnet: None,
            volume_gb: None,
            public_ipv4: false,
            egress: None,
        }
    }

    async fn server(&self, id: i64) -> Result<models::Server, CloudError> {
        Ok(*self
            .call("reading the server", || {
                servers_api::get_server(&self.config, servers_api::GetServerParams { id })
            })
            .await?
            .server
            .ok_or_else(|| CloudError::api(NAME, "reading the server", "it is gone"))?)
    }

    /// Wait until the server runs and has an address.
    async fn until_running(&self, id: i64) -> Result<models::Server, CloudError> {
        let start = Instant::now();
        loop {
            let s = self.server(id).await?;
            if s.status == models::server::Status::Running && s.public_net.ipv4.is_some() {
                return Ok(s);
            }
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: format!("server {} to run", s.name),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The server's own firewall: created or updated to `rules`, applied to it.
    async fn ensure_firewall(
        &self,
        fleet: &str,
        host: &str,
        server: Option<i64>,
        want: &[CloudPort],
    ) -> Result<i64, CloudError> {
        let name = host_resource_name(fleet, host);
        let existing = self
            .list_firewalls()
            .await?
            .into_iter()
            .find(|f| f.name == name);
        let fw = match existing {
            Some(f) => {
                if ports(&f.rules) != normalize(want) {
                    let req = models::SetRulesRequest { rules: rules(want) };
                    let r = self
                        .call("setting firewall rules", || {
                            firewalls_api::set_rules(
                                &self.config,
                                firewalls_api::SetRulesParams {
                                    id: f.id,
                                    set_rules_request: req.clone(),
                                },
                            )
                        })
                        .await?;
                    for a in &r.actions {
                        self.wait(a, "setting firewall rules").await?;
                    }
                }
                f
            }
            None => {
                let mut req = models::CreateFirewallRequest::new(name.clone());
                let mut labels = super::desired::ownership(fleet);
                labels.insert("tidekeeper-host".into(), host.into());
                req.labels = Some(labels.into_iter().collect());
                req.rules = Some(rules(want));
                let r = self
                    .call("creating the firewall", || {
                        firewalls_api::create_firewall(
                            &self.config,
                            firewalls_api::CreateFirewallParams {
                                create_firewall_request: req.clone(),
                            },
                        )
                    })
                    .await?;
                for a in r.actions.iter().flatten() {
                    self.wait(a, "creating the firewall").await?;
                }
                *r.firewall.ok_or_else(|| {
                    CloudError::api(NAME, "creating the firewall", "no firewall in the answer")
                })?
            }
        };
        if let Some(id) = server
            && !fw
                .applied_to
                .iter()
                .any(|a| a.server.as_ref().is_some_and(|r| r.id == id))
        {
            let mut res = models::FirewallResource::new(models::firewall_resource::Type::Server);
            res.server = Some(Box::new(models::ResourceId { id }));
            let req = models::ApplyToResourcesRequest {
                apply_to: vec![res],
            };
            let r = self
                .call("applying the firewall", || {
                    firewalls_api::apply_to_resources(
                        &self.config,
                        firewalls_api::ApplyToResourcesParams {
                            id: fw.id,
                            apply_to_resources_request: req.clone(),
                        },
                    )
                })
                .await?;
            for a in &r.actions {
                self.wait(a, "applying the firewall").await?;
            }
        }
        Ok(fw.id)
    }

    async fn drop_firewall(&self, fleet: &str, host: &str) -> Result<(), CloudError> {
        let name = host_resource_name(fleet, host);
        let Some(fw) = self
            .list_firewalls()
            .await?
            .into_iter()
            .find(|f| f.name == name)
        else {
            return Ok(());
        };
        let attached: Vec<models::FirewallResource> = fw
            .applied_to
            .iter()
            .filter_map(|a| a.server.as_ref())
            .map(|r| {
                let mut res =
                    models::FirewallResource::new(models::firewall_resource::Type::Server);
                res.server = Some(Box::new(models::ResourceId { id: r.id }));
                res
            })
            .collect();
        if !attached.is_empty() {
            let req = models::RemoveFromResourcesRequest {
                remove_from: attached,
            };
            let r = self
                .call("detaching the firewall", || {
                    firewalls_api::remove_from_resources(
                        &self.config,
                        firewalls_api::RemoveFromResourcesParams {
                            id: fw.id,
                            remove_from_resources_request: req.clone(),
                        },
                    )
                })
                .await?;
            for a in &r.actions {
                self.wait(a, "detaching the firewall").await?;
            }
        }
        self.call("deleting the firewall", || {
            firewalls_api::delete_firewall(
                &self.config,
                firewalls_api::DeleteFirewallParams { id: fw.id },
            )
        })
        .await
    }

    /// The provider's names for `entries`: names as they are; a public key is
    /// uploaded once (with the ownership labels) — or, when the project has
    /// it already under another name, that key is used.
    async fn key_names(&self, fleet: &str, entries: &[String]) -> Result<Vec<String>, CloudError> {
        let mut names = Vec::new();
        // The project's keys, listed once and only when a key is to be uploaded.
        let mut have: Option<Vec<models::SshKey>> = None;
        for entry in entries {
            let Some(name) = super::desired::uploaded_key_name(fleet, entry) else {
                names.push(entry.clone());
                continue;
            };
            let keys = match &mut have {
                Some(k) => k,
                None => have.insert(self.list_ssh_keys().await?),
            };
            let blob = entry.split_whitespace().nth(1).unwrap_or_default();
            if let Some(k) = keys
                .iter()
                .find(|k| k.name == name || k.public_key.split_whitespace().nth(1) == Some(blob))
            {
                names.push(k.name.clone());
                continue;
            }
            let mut req = models::CreateSshKeyRequest::new(name.clone(), entry.clone());
            req.labels = Some(super::desired::ownership(fleet).into_iter().collect());
            let made = self
                .call("uploading an SSH key", || {
                    ssh_keys_api::create_ssh_key(
                        &self.config,
                        ssh_keys_api::CreateSshKeyParams {
                            create_ssh_key_request: req.clone(),
                        },
                    )
                })
                .await?;
            keys.push(*made.ssh_key);
            names.push(name);
        }
        Ok(names)
    }

    async fn list_ssh_keys(&self) -> Result<Vec<models::SshKey>, CloudError> {
        self.paged(|page| {
            let params = ssh_keys_api::ListSshKeysParams {
                page: Some(page),
                per_page: Some(50),
                ..Default::default()
            };
            async move {
                let r = self
                    .call("listing SSH keys", || {
                        ssh_keys_api::list_ssh_keys(&self.config, params.clone())
                    })
                    .await?;
                Ok((r.ssh_keys, r.meta.pagination.next_page))
            }
        })
        .await
    }

    /// The host's floating IPv4 (`tk-<fleet>-<host>`), its `static_ip`:
    /// created in the server's location, or assigned to the server if it
    /// exists (a replaced server's successor takes it over).
    async fn ensure_floating_ip(
        &self,
        fleet: &str,
        host: &str,
        server: i64,
        location: &str,
    ) -> Result<(), CloudError> {
        let name = host_resource_name(fleet, host);
        let existing = self.floating_ips_named(&name).await?.into_iter().next();
        match existing {
            Some(ip) if !super::owned(&ip.labels, fleet) => Err(CloudError::Refused(format!(
                "{host}: a floating IP named {name:?} exists but is not managed by tidekeeper; \
                 rename or delete it, or drop `static_ip` from the host"
            ))),
            Some(ip) if ip.server == Some(server) => Ok(()),
            Some(ip) => {
                let r = self
                    .call("assigning the floating IP", || {
                        floating_ips_api::assign_floating_ip_to_server(
                            &self.config,
                            floating_ips_api::AssignFloatingIpToServerParams {
                                id: ip.id,
                                assign_floating_ip_to_server_request:
                                    models::AssignFloatingIpToServerRequest::new(Some(server)),
                            },
                        )
                    })
                    .await?;
                self.wait(&r.action, "assigning the floating IP").await
            }
            None => {
                let mut req = models::CreateFloatingIpRequest::new(models::IpType::Ipv4);
                req.name = Some(name.clone());
                req.server = Some(Some(server));
                req.home_location = Some(location.to_string());
                req.labels = Some(super::desired::ownership(fleet).into_iter().collect());
                req.description = Some(Some(format!("{host}'s static address")));
                let r = self
                    .call("creating the floating IP", || {
                        floating_ips_api::create_floating_ip(
                            &self.config,
                            floating_ips_api::CreateFloatingIpParams {
                                create_floating_ip_request: req.clone(),
                            },
                        )
                    })
                    .await?;
                if let Some(a) = &r.action {
                    self.wait(a, "creating the floating IP").await?;
                }
                Ok(())
            }
        }
    }

    async fn floating_ips_named(&self, name: &str) -> Result<Vec<models::FloatingIp>, CloudError> {
        Ok(self
            .call("listing floating IPs", || {
                floating_ips_api::list_floating_ips(
                    &self.config,
                    floating_ips_api::ListFloatingIpsParams {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                )
            })
            .await?
            .floating_ips)
    }

    async fn drop_floating_ip(&self, fleet: &str, host: &str) -> Result<(), CloudError> {
        let name = host_resource_name(fleet, host);
        let ips = self.floating_ips_named(&name).await?;
        for ip in ips.into_iter().filter(|ip| super::owned(&ip.labels, fleet)) {
            self.call("deleting the floating IP", || {
                floating_ips_api::delete_floating_ip(
                    &self.config,
                    floating_ips_api::DeleteFloatingIpParams { id: ip.id },
                )
            })
            .await?;
        }
        Ok(())
    }

    async fn protect(&self, id: i64, on: bool) -> Result<(), CloudError> {
        let req = models::ChangeServerProtectionRequest {
            delete: Some(on),
            rebuild: Some(on),
        };
        let r = self
            .call("changing delete protection", || {
                servers_api::change_server_protection(
                    &self.config,
                    servers_api::ChangeServerProtectionParams {
                        id,
                        change_server_protection_request: req.clone(),
                    },
                )
            })
            .await?;
        self.wait(&r.action, "changing delete protection").await
    }

    async fn create_server(
        &self,
        want: &DesiredServer,
        user_data: &str,
    ) -> Result<ObservedServer, CloudError> {
        let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
        let firewall = if want.firewall.is_empty() {
            None
        } else {
            Some(
                self.ensure_firewall(&fleet, &want.host, None, &want.firewall)
                    .await?,
            )
        };
        let mut req = models::CreateServerRequest::new(
            want.image.clone(),
            want.host.clone(),
            want.size.clone(),
        );
        req.location = Some(want.location.clone());
        req.labels = Some(want.labels.clone().into_iter().collect());
        req.user_data = Some(user_data.to_string());
        req.start_after_create = Some(true);
        if !want.ssh_keys.is_empty() {
            req.ssh_keys = Some(self.key_names(&fleet, &want.ssh_keys).await?);
        }
        req.firewalls =
            firewall.map(|id| vec![models::CreateServerRequestFirewalls { firewall: id }]);
        // Never two servers for one host: before every retry, look it up.
        let mut delays = retry_waits(Duration::from_millis(500));
        let mut attempt = 0;
        let created = loop {
            attempt += 1;
            let res = servers_api::create_server(
                &self.config,
                servers_api::CreateServerParams {
                    create_server_request: req.clone(),
                },
            )
            .await;
            match res {
                Ok(r) => {
                    self.wait(&r.action, "creating the server").await?;
                    for a in &r.next_actions {
                        self.wait(a, "starting the server").await?;
                    }
                    break *r.server;
                }
                Err(e) => {
                    let maybe_made = retryable(&e) || status_is(&e, 409);
                    if maybe_made
                        && let Some(s) = self
                            .list_servers(Some(&want.host))
                            .await?
                            .into_iter()
                            .find(|s| super::owned(&s.labels, &fleet))
                    {
                        tracing::info!(host = %want.host, "the server was created by an earlier attempt; using it");
                        break s;
                    }
                    if !retryable(&e) || attempt >= ATTEMPTS {
                        return Err(CloudError::api(NAME, "creating the server", describe(&e)));
                    }
                    tokio::time::sleep(self.backoff(&e, delays.next()).await).await;
                }
            }
        };
        if !created.protection.delete {
            self.protect(created.id, true).await?;
        }
        if want.static_ip {
            self.ensure_floating_ip(&fleet, &want.host, created.id, &want.location)
                .await?;
        }
        self.sync_networks(created.id, want).await?;
        let s = self.until_running(created.id).await?;
        let (firewalls, networks) = (self.list_firewalls().await?, self.list_networks().await?);
        let mut o = self.observed(&s, &firewalls);
        o.networks = attached(&s, &networks);
        Ok(o)
    }

    async fn wait_power(&self, id: i64, want: models::server::Status) -> Result<(), CloudError> {
        let start = Instant::now();
        while self.server(id).await?.status != want {
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: format!("the server to be {want:?}"),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    async fn set_power(&self, id: i64, on: bool) -> Result<(), CloudError> {
        let current = self.server(id).await?.status;
        if on {
            if current == models::server::Status::Running {
                return Ok(());
            }
            let r = self
                .call("starting the server", || {
                    servers_api::power_on_server(
                        &self.config,
                        servers_api::PowerOnServerParams { id },
                    )
                })
                .await?;
            self.wait(&r.action, "starting the server").await?;
            self.wait_power(id, models::server::Status::Running).await
        } else {
            if current == models::server::Status::Off {
                return Ok(());
            }
            // A clean shutdown first; cut the power if it does not stop in a minute.
            let r = self
                .call("shutting the server down", || {
                    servers_api::shutdown_server(
                        &self.config,
                        servers_api::ShutdownServerParams { id },
                    )
                })
                .await?;
            self.wait(&r.action, "shutting the server down").await?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if self.server(id).await?.status == models::server::Status::Off {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
            let r = self
                .call("powering the server off", || {
                    servers_api::power_off_server(
                        &self.config,
                        servers_api::PowerOffServerParams { id },
                    )
                })
                .await?;
            self.wait(&r.action, "powering the server off").await?;
            self.wait_power(id, models::server::Status::Off).await
        }
    }
}

/// The lowest host address of `range` past its gateway (the first) that is
/// neither `used` nor `reserved`.
fn free_in(range: &str, used: &[String], reserved: &[String]) -> Option<String> {
    let (base, len) = range.split_once('/')?;
    let base = u32::from(base.parse::<std::net::Ipv4Addr>().ok()?);
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let size = 1u32 << (32 - len);
    (2..size - 1)
        .map(|i| std::net::Ipv4Addr::from(base + i).to_string())
        .find(|a| !used.contains(a) && !reserved.contains(a))
}

/// The networks a server is attached to, by name, with its address there.
fn attached(s: &models::Server, networks: &[models::Network]) -> Vec<(String, String)> {
    s.private_net
        .iter()
        .map(|p| {
            let name = networks
                .iter()
                .find(|n| Some(n.id) == p.network)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| format!("#{}", p.network.unwrap_or_default()));
            (name, p.ip.clone().unwrap_or_default())
        })
        .collect()
}

fn id_of(s: &ObservedServer) -> Result<i64, CloudError> {
    s.id.parse()
        .map_err(|_| CloudError::api(NAME, "reading the server id", &s.id))
}

fn snapshot(i: &models::Image, server: &str) -> Snapshot {
    Snapshot {
        id: i.id.to_string(),
        name: i.description.clone(),
        server: server.to_string(),
        created: chrono::DateTime::parse_from_rfc3339(&i.created)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default(),
        labels: i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

impl Provider for Hetzner {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Hetzner
    }

    fn servers(&self) -> Fut<'_, Vec<ObservedServer>> {
        Box::pin(async move {
            let (servers, firewalls, networks) = tokio::join!(
                self.list_servers(None),
                self.list_firewalls(),
                self.list_networks()
            );
            let (servers, firewalls, networks) = (servers?, firewalls?, networks?);
            Ok(servers
                .iter()
                .map(|s| {
                    let mut o = self.observed(s, &firewalls);
                    o.networks = attached(s, &networks);
                    o
                })
                .collect())
        })
    }

    fn prices(&self) -> Fut<'_, PriceList> {
        Box::pin(async move {
            let r = self
                .call("reading prices", || pricing_api::list_prices(&self.config))
                .await?;
            let mut list = PriceList {
                currency: match r.pricing.currency.as_str() {
                    "USD" => "USD",
                    _ => "EUR",
                },
                monthly: BTreeMap::new(),
                bills_stopped: true,
                disk_gb: BTreeMap::new(),
                // Only the server type's price is counted.
                attached: BTreeMap::new(),
            };
            for t in &r.pricing.server_types {
                for p in &t.prices {
                    if let Ok(net) = p.price_monthly.net.parse::<f64>() {
                        list.monthly
                            .insert((t.name.clone(), p.location.clone()), net);
                    }
                }
            }
            Ok(list)
        })
    }

    fn create<'a>(
        &'a self,
        want: &'a DesiredServer,
        user_data: &'a str,
    ) -> Fut<'a, ObservedServer> {
        Box::pin(self.create_server(want, user_data))
    }

    fn update<'a>(&'a self, have: &'a ObservedServer, want: &'a DesiredServer) -> Fut<'a, ()> {
        Box::pin(async move {
            let id = id_of(have)?;
            let mut labels: HashMap<String, String> = want.labels.clone().into_iter().collect();
            // The host-key labels stay as they are unless this update sets them.
            for (k, v) in have
                .labels
                .iter()
                .filter(|(k, _)| super::is_host_key_label(k))
            {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let current: HashMap<String, String> = have.labels.clone().into_iter().collect();
            if labels != current {
                let req = models::ReplaceServerRequest {
                    labels: Some(labels),
                    name: None,
                };
                self.call("changing labels", || {
                    servers_api::replace_server(
                        &self.config,
                        servers_api::ReplaceServerParams {
                            id,
                            replace_server_request: req.clone(),
                        },
                    )
                })
                .await?;
            }
            let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
            if !want.firewall.is_empty() {
                self.ensure_firewall(&fleet, &want.host, Some(id), &want.firewall)
                    .await?;
            } else if have.firewall.is_some() {
                self.drop_firewall(&fleet, &want.host).await?;
            }
            if want.static_ip && !have.static_ip {
                self.ensure_floating_ip(&fleet, &want.host, id, &want.location)
                    .await?;
            }
            self.sync_networks(id, want).await
        })
    }

    fn resize<'a>(&'a self, have: &'a ObservedServer, size: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let id = id_of(have)?;
            let was_running = self.server(id).await?.status != models::server::Status::Off;
            self.set_power(id, false).await?;
            // The disk keeps its size, so the server can be made smaller again later.
            let req = models::ChangeTypeOfServerRequest {
                server_type: size.to_string(),
                upgrade_disk: false,
            };
            let r = self
                .call("changing the server type", || {
                    servers_api::change_type_of_server(
                        &self.config,
                        servers_api::ChangeTypeOfServerParams {
                            id,
                            change_type_of_server_request: req.clone(),
                        },
                    )
                })
                .await?;
            self.wait(&r.action, "changing the server type").await?;
            if was_running {
                self.set_power(id, true).await?;
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, have: &'a ObservedServer, keep_address: bool) -> Fut<'a, ()> {
        Box::pin(async move {
            let id = id_of(have)?;
            if have.delete_protection {
                self.protect(id, false).await?;
            }
            let r = self
                .call("deleting the server", || {
                    servers_api::delete_server(&self.config, servers_api::DeleteServerParams { id })
                })
                .await;
            match r {
                Ok(r) => {
                    if let Some(a) = r.action {
                        self.wait(&a, "deleting the server").await?;
                    }
                }
                // Gone already (an earlier attempt deleted it).
                Err(CloudError::Api { message, .. }) if message.contains("HTTP 404") => {}
                Err(e) => return Err(e),
            }
            let fleet = have.labels.get(FLEET).cloned().unwrap_or_default();
            if !keep_address {
                self.drop_floating_ip(&fleet, &have.name).await?;
            }
            self.drop_firewall(&fleet, &have.name).await
        })
    }

    fn power<'a>(&'a self, have: &'a ObservedServer, on: bool) -> Fut<'a, ()> {
        Box::pin(async move { self.set_power(id_of(have)?, on).await })
    }

    fn snapshot<'a>(
        &'a self,
        have: &'a ObservedServer,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Snapshot> {
        Box::pin(async move {
            let id = id_of(have)?;
            let req = models::CreateImageFromServerRequest {
                description: Some(name.to_string()),
                labels: Some(labels.clone().into_iter().collect()),
                r#type: Some(models::create_image_from_server_request::Type::Snapshot),
            };
            let r = self
                .call("creating a snapshot", || {
                    servers_api::create_image_from_server(
                        &self.config,
                        servers_api::CreateImageFromServerParams {
                            id,
                            create_image_from_server_request: req.clone(),
                        },
                    )
                })
                .await?;
            if let Some(a) = &r.action {
                self.wait(a, "creating a snapshot").await?;
            }
            let image = r.image.ok_or_else(|| {
                CloudError::api(NAME, "creating a snapshot", "no image in the answer")
            })?;
            Ok(snapshot(&image, &have.name))
        })
    }

    fn snapshots<'a>(
        &'a self,
        server: &'a ObservedServer,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Vec<Snapshot>> {
        Box::pin(async move {
            let id = id_of(server)?;
            let sel = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let images = self
                .paged(|page| {
                    let params = images_api::ListImagesParams {
                        r#type: Some(vec!["snapshot".into()]),
                        label_selector: (!sel.is_empty()).then(|| sel.clone()),
                        page: Some(page),
                        per_page: Some(50),
                        ..Default::default()
                    };
                    async move {
                        let r = self
                            .call("listing snapshots", || {
                                images_api::list_images(&self.config, params.clone())
                            })
                            .await?;
                        Ok((r.images, r.meta.pagination.next_page))
                    }
                })
                .await?;
            let mut out: Vec<Snapshot> = images
                .iter()
                .filter(|i| {
                    i.created_from.as_ref().is_some_and(|c| c.id == id) && i.deleted.is_none()
                })
                .map(|i| snapshot(i, &server.name))
                .collect();
            out.sort_by_key(|s| (s.created, s.id.parse::<i64>().unwrap_or(0)));
            Ok(out)
        })
    }

    fn delete_snapshot<'a>(&'a self, snapshot: &'a Snapshot) -> Fut<'a, ()> {
        Box::pin(async move {
            let id: i64 = snapshot
                .id
                .parse()
                .map_err(|_| CloudError::api(NAME, "reading the snapshot id", &snapshot.id))?;
            self.call("deleting a snapshot", || {
                images_api::delete_image(&self.config, images_api::DeleteImageParams { id })
            })
            .await
        })
    }

    fn adopt<'a>(&'a self, have: &'a ObservedServer, fleet: &'a str, host: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let id = id_of(have)?;
            // What is attached to it becomes the fleet's too, so the first
            // plan finds the firewall and networks it declares as they are.
            self.adopt_attached(id, fleet, host).await?;
            let mut labels: HashMap<String, String> = have.labels.clone().into_iter().collect();
            labels.extend(super::desired::ownership(fleet));
            let req = models::ReplaceServerRequest {
                labels: Some(labels),
                name: (have.name != host).then(|| host.to_string()),
            };
            self.call("labelling the server", || {
                servers_api::replace_server(
                    &self.config,
                    servers_api::ReplaceServerParams {
                        id,
                        replace_server_request: req.clone(),
                    },
                )
            })
            .await?;
            Ok(())
        })
    }

    fn networks(&self) -> Fut<'_, Vec<ObservedNetwork>> {
        Box::pin(async move {
            Ok(self
                .list_networks()
                .await?
                .into_iter()
                .map(|n| ObservedNetwork {
                    provider: ProviderKind::Hetzner,
                    id: n.id.to_string(),
                    name: n.name,
                    ip_range: n.ip_range,
                    subnets: n.subnets.into_iter().filter_map(|s| s.ip_range).collect(),
                    public_subnets: Vec::new(),
                    nat: false,
                    region: String::new(),
                    labels: n.labels.into_iter().collect(),
                    delete_protection: n.protection.delete,
                })
                .collect())
        })
    }

    fn ensure_network<'a>(&'a self, fleet: &'a str, want: &'a Network) -> Fut<'a, ()> {
        Box::pin(async move {
            let subnet = |range: &str| {
                let mut s = models::Subnet::new(want.zone.clone(), models::subnet::Type::Cloud);
                s.ip_range = Some(range.to_string());
                s
            };
            let found = self
                .list_networks()
                .await?
                .into_iter()
                .find(|n| n.name == want.name);
            let (id, protected) = match found {
                Some(n) => {
                    if !super::owned(&n.labels, fleet) {
                        return Err(CloudError::api(
                            NAME,
                            "creating a network",
                            format!(
                                "a network named {} exists but is not managed by tidekeeper for fleet {fleet}",
                                want.name
                            ),
                        ));
                    }
                    for range in &want.subnets {
                        if n.subnets.iter().any(|s| s.ip_range.as_ref() == Some(range)) {
                            continue;
                        }
                        let params = networks_api::AddSubnetToNetworkParams {
                            id: n.id,
                            subnet: subnet(range),
                        };
                        let r = self
                            .call("adding a subnet", || {
                                networks_api::add_subnet_to_network(&self.config, params.clone())
                            })
                            .await?;
                        self.wait(&r.action, "adding a subnet").await?;
                    }
                    (n.id, n.protection.delete)
                }
                None => {
                    let mut labels: HashMap<String, String> =
                        super::desired::ownership(fleet).into_iter().collect();
                    if want.allow_destroy {
                        labels.insert(super::ALLOW_DESTROY.into(), "true".into());
                    }
                    let req = models::CreateNetworkRequest {
                        ip_range: want.ip_range.clone(),
                        name: want.name.clone(),
                        labels: Some(labels),
                        subnets: Some(want.subnets.iter().map(|r| subnet(r)).collect()),
                        ..Default::default()
                    };
                    let r = self
                        .call("creating a network", || {
                            networks_api::create_network(
                                &self.config,
                                networks_api::CreateNetworkParams {
                                    create_network_request: req.clone(),
                                },
                            )
                        })
                        .await?;
                    let n = r.network.ok_or_else(|| {
                        CloudError::api(NAME, "creating a network", "the answer named no network")
                    })?;
                    (n.id, n.protection.delete)
                }
            };
            // Protected as servers are: deleted only when the config allows.
            if protected == want.allow_destroy {
                self.network_protection(id, !want.allow_destroy).await?;
            }
            Ok(())
        })
    }

    fn delete_network<'a>(&'a self, have: &'a ObservedNetwork) -> Fut<'a, ()> {
        Box::pin(async move {
            let id: i64 = have
                .id
                .parse()
                .map_err(|_| CloudError::api(NAME, "reading the network id", &have.id))?;
            if have.delete_protection {
                self.network_protection(id, false).await?;
            }
            self.call("deleting a network", || {
                networks_api::delete_network(&self.config, networks_api::DeleteNetworkParams { id })
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_next_free_address_skips_the_gateway_the_used_and_the_reserved() {
        let used = ["10.0.0.3".to_string()];
        let reserved = ["10.0.0.2".to_string()];
        assert_eq!(
            super::free_in("10.0.0.0/24", &used, &reserved).as_deref(),
            Some("10.0.0.4")
        );
        assert_eq!(
            super::free_in("10.0.0.0/24", &[], &[]).as_deref(),
            Some("10.0.0.2")
        );
        let all: Vec<String> = (2..255).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(super::free_in("10.0.0.0/24", &all, &[]), None);
    }
}
