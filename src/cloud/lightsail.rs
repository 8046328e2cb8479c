//! AWS Lightsail through `aws-sdk-lightsail` (in the `tidekeeper-lightsail`
//! crate, so the SDK stays out of this crate's rebuilds).
//!
//! Instances are tagged with the ownership tags; public ports are managed only
//! when the host lists `server.firewall` rules; a `static_ip: true` host gets
//! a static IP named `tk-<fleet>-<host>`, released when the instance is
//! deleted. Lightsail cannot resize or rename an instance: a new bundle is
//! a new instance made from a snapshot of the old one, named
//! `<host>-<bundle>` and tagged with the host it is for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidekeeper_lightsail as ls;

use super::desired::{DesiredServer, fold_any};
use super::{
    ACTION_TIMEOUT, CloudError, FLEET, Fut, HOST_NAME, ObservedServer, PowerState, PriceList,
    Provider, Snapshot,
};
use crate::model::desired::{CloudPort, Lightsail as Settings, ProviderKind};

const NAME: &str = "lightsail";
const POLL: Duration = Duration::from_millis(500);

pub(crate) struct Lightsail {
    settings: Settings,
    /// Made on first use: the SDK's chain reads profiles asynchronously.
    client: tokio::sync::OnceCell<ls::Client>,
}

fn api(what: &str, e: ls::Error) -> CloudError {
    super::aws::error(NAME, what, e)
}

fn state(s: &str) -> PowerState {
    match s {
        "running" => PowerState::Running,
        "stopped" => PowerState::Off,
        "pending" | "starting" => PowerState::Starting,
        "stopping" => PowerState::Stopping,
        other => PowerState::Other(other.to_string()),
    }
}

fn static_ip_name(fleet: &str, host: &str) -> String {
    format!("tk-{fleet}-{host}")
}

fn ports(list: &[ls::Port]) -> Vec<CloudPort> {
    let mut out = Vec::new();
    for p in list {
        let mut from = p.cidrs.clone();
        from.extend(p.ipv6_cidrs.iter().cloned());
        out.push(CloudPort {
            from_port: p.from as u16,
            to_port: p.to as u16,
            proto: match p.protocol.as_str() {
                "all" => "any".into(),
                other => other.to_string(),
            },
            from,
        });
    }
    fold_any(out)
}

/// Rules in Lightsail's terms: `any` becomes a tcp and a udp port (Lightsail's
/// `all` protocol would open every port).
fn port_infos(rules: &[CloudPort]) -> Vec<ls::Port> {
    let mut out = Vec::new();
    for r in rules {
        let protos: &[&str] = match r.proto.as_str() {
            "any" => &["tcp", "udp"],
            "udp" => &["udp"],
            _ => &["tcp"],
        };
        for p in protos {
            out.push(ls::Port {
                from: r.from_port.into(),
                to: r.to_port.into(),
                protocol: p.to_string(),
                cidrs: r
                    .from
                    .iter()
                    .filter(|c| !c.contains(':'))
                    .cloned()
                    .collect(),
                ipv6_cidrs: r.from.iter().filter(|c| c.contains(':')).cloned().collect(),
            });
        }
    }
    out
}

fn owned(tags: &[(String, String)], fleet: &str) -> bool {
    super::owned(tags.iter().map(|(k, v)| (k, v)), fleet)
}

/// The host an instance is for: its tag, else its name.
fn host_of(i: &ls::Instance) -> &str {
    i.tags
        .iter()
        .find(|(k, _)| k == HOST_NAME)
        .map(|(_, v)| v.as_str())
        .unwrap_or(&i.name)
}

impl Lightsail {
    /// A client for `s`. Credentials named in tidekeeper.yaml must be set
    /// now; the SDK's chain is asked on the first call.
    pub(crate) fn from_env(s: &Settings) -> Result<Lightsail, CloudError> {
        super::aws::check_env(NAME, s)?;
        Ok(Lightsail {
            settings: s.clone(),
            client: tokio::sync::OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<&ls::Client, CloudError> {
        self.client
            .get_or_try_init(|| async {
                ls::Client::new(super::aws::settings(NAME, &self.settings)?)
                    .await
                    .map_err(|e| api("setting up the client", e))
            })
            .await
    }

    async fn wait_ops(&self, ops: &[ls::Operation], what: &str) -> Result<(), CloudError> {
        let start = Instant::now();
        for op in ops {
            let mut op = op.clone();
            while !op.finished() {
                if start.elapsed() > ACTION_TIMEOUT {
                    return Err(CloudError::Timeout {
                        provider: NAME,
                        what: what.into(),
                        after: ACTION_TIMEOUT,
                    });
                }
                tokio::time::sleep(POLL).await;
                op = self
                    .client()
                    .await?
                    .operation(&op.id)
                    .await
                    .map_err(|e| api(what, e))?;
            }
            if op.failed() {
                return Err(CloudError::api(
                    NAME,
                    what,
                    op.error.unwrap_or_else(|| "the operation failed".into()),
                ));
            }
        }
        Ok(())
    }

    async fn wait_state(&self, name: &str, want: &str) -> Result<ls::Instance, CloudError> {
        let start = Instant::now();
        loop {
            if let Some(i) = self
                .client()
                .await?
                .instance(name)
                .await
                .map_err(|e| api("reading the instance", e))?
                && i.state == want
                && (want != "running" || i.public_ip.is_some())
            {
                return Ok(i);
            }
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: format!("instance {name} to be {want}"),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn observed(&self, i: &ls::Instance) -> ObservedServer {
        let mut labels: BTreeMap<String, String> = i.tags.iter().cloned().collect();
        labels.remove(HOST_NAME);
        ObservedServer {
            provider: ProviderKind::Lightsail,
            id: i.name.clone(),
            name: host_of(i).to_string(),
            size: i.bundle.clone(),
            image: Some(i.blueprint.clone()),
            location: i.zone.clone(),
            labels,
            state: state(&i.state),
            address: i.public_ip.clone(),
            private_address: i.private_ip.clone(),
            networks: Vec::new(),
            firewall: Some(ports(&i.ports)),
            static_ip: i.is_static_ip,
            delete_protection: false,
            subnet: None,
            volume_gb: None,
            public_ipv4: false,
            egress: None,
        }
    }

    /// Attach `host`'s static IP to `instance`, taking it from the
    /// instance it is attached to (a resized host's old one).
    async fn attach_static_ip(
        &self,
        fleet: &str,
        host: &str,
        instance: &str,
    ) -> Result<(), CloudError> {
        let name = static_ip_name(fleet, host);
        let ips = self
            .client()
            .await?
            .static_ips()
            .await
            .map_err(|e| api("listing static IPs", e))?;
        match ips.iter().find(|s| s.name == name) {
            Some(s) if s.attached_to.as_deref() == Some(instance) => return Ok(()),
            Some(s) if s.attached_to.is_some() => self
                .client()
                .await?
                .detach_static_ip(&name)
                .await
                .map_err(|e| api("detaching the static IP", e))?,
            Some(_) => {}
            None => self
                .client()
                .await?
                .allocate_static_ip(&name)
                .await
                .map_err(|e| api("allocating a static IP", e))?,
        }
        self.client()
            .await?
            .attach_static_ip(&name, instance)
            .await
            .map_err(|e| api("attaching the static IP", e))
    }

    /// The key pair for `entry`: a name as it is; a public key imported once
    /// as `tk-<fleet>-<fingerprint>`. (Lightsail takes one key pair per
    /// instance: the first entry; the others reach it through cloud-init.)
    async fn key_pair(&self, fleet: &str, entry: &str) -> Result<String, CloudError> {
        let Some(name) = super::desired::uploaded_key_name(fleet, entry) else {
            return Ok(entry.to_string());
        };
        let exists = self
            .client()
            .await?
            .key_pair_exists(&name)
            .await
            .map_err(|e| api("reading the key pair", e))?;
        if !exists {
            let tags: Vec<(String, String)> =
                super::desired::ownership(fleet).into_iter().collect();
            self.client()
                .await?
                .import_key_pair(&name, entry, &tags)
                .await
                .map_err(|e| api("importing the key pair", e))?;
        }
        Ok(name)
    }

    /// Make instance `name` for `want` (from `snapshot`'s disk, or from
    /// its blueprint), wait until it runs, and give it its static IP and
    /// public ports.
    async fn launch(
        &self,
        name: &str,
        want: &DesiredServer,
        user_data: &str,
        snapshot: Option<&str>,
    ) -> Result<ObservedServer, CloudError> {
        let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
        let mut tags: Vec<(String, String)> = want.labels.clone().into_iter().collect();
        if name != want.host {
            tags.push((HOST_NAME.into(), want.host.clone()));
        }
        let ours = |i: &ls::Instance| owned(&i.tags, &fleet) && host_of(i) == want.host;
        let existing = self
            .client()
            .await?
            .instance(name)
            .await
            .map_err(|e| api("reading the instance", e))?;
        match existing {
            Some(i) if ours(&i) => {
                tracing::info!(host = %want.host, instance = name, "the instance was created by an earlier attempt; using it")
            }
            Some(_) => {
                return Err(CloudError::Refused(format!(
                    "{}: an instance named {name:?} exists but is not this host's (not managed by \
                     tidekeeper for it); rename or delete it",
                    want.host
                )));
            }
            None => {
                let key_pair = match want.ssh_keys.first() {
                    Some(entry) => Some(self.key_pair(&fleet, entry).await?),
                    None => None,
                };
                let client = self.client().await?;
                let made = match snapshot {
                    Some(snap) => {
                        client
                            .create_instance_from_snapshot(
                                name,
                                &want.location,
                                snap,
                                &want.size,
                                key_pair.as_deref(),
                                user_data,
                                &tags,
                            )
                            .await
                    }
                    None => {
                        client
                            .create_instance(
                                name,
                                &want.location,
                                &want.image,
                                &want.size,
                                key_pair.as_deref(),
                                user_data,
                                &tags,
                            )
                            .await
                    }
                };
                match made {
                    Ok(ops) => self.wait_ops(&ops, "creating the instance").await?,
                    // The SDK retried; a retry after a create that did land
                    // says the name is taken. Look before giving up.
                    Err(e) => match self.client().await?.instance(name).await {
                        Ok(Some(i)) if ours(&i) => {}
                        _ => return Err(api("creating the instance", e)),
                    },
                }
            }
        }
        self.wait_state(name, "running").await?;
        if want.static_ip {
            self.attach_static_ip(&fleet, &want.host, name).await?;
        }
        if !want.firewall.is_empty() {
            self.client()
                .await?
                .put_ports(name, &port_infos(&want.firewall))
                .await
                .map_err(|e| api("opening the public ports", e))?;
        }
        let i = self.wait_state(name, "running").await?;
        Ok(self.observed(&i))
    }

    /// A resize: snapshot `have`, launch its copy with the new bundle, move
    /// the static IP, delete `have`. Until the copy runs, a failure leaves
    /// `have` as it was (and removes the copy and the snapshot).
    async fn copy_to_new_bundle(
        &self,
        have: &ObservedServer,
        want: &DesiredServer,
        user_data: &str,
    ) -> Result<ObservedServer, CloudError> {
        let name = super::plan::copy_name(&want.host, &want.size);
        if name == have.id {
            return Err(CloudError::Refused(format!(
                "{}: its instance is already named {name:?}",
                want.host
            )));
        }
        let mut labels =
            super::desired::ownership(&want.labels.get(FLEET).cloned().unwrap_or_default());
        labels.insert(super::SNAPSHOT_JOB.into(), "resize".into());
        let snap_name = format!(
            "tk-resize-{}-{}",
            want.host,
            chrono::Utc::now().format("%Y%m%d%H%M%S")
        );
        let snap = self.snapshot(have, &snap_name, &labels).await?;
        if let Err(e) = self.launch(&name, want, user_data, Some(&snap.name)).await {
            // The old instance still serves: leave nothing else behind.
            if let Ok(Some(i)) = self.client().await?.instance(&name).await
                && host_of(&i) == want.host
                && let Ok(ops) = self.client().await?.delete_instance(&name).await
            {
                let _ = self.wait_ops(&ops, "deleting the unfinished copy").await;
            }
            let _ = self.delete_snapshot(&snap).await;
            return Err(e);
        }
        if have.static_ip && !want.static_ip {
            // The address stays the host's: it moves to the copy too.
            let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
            self.attach_static_ip(&fleet, &want.host, &name).await?;
        }
        let old = match self.client().await?.delete_instance(&have.id).await {
            Ok(ops) => self.wait_ops(&ops, "deleting the old instance").await,
            Err(e) if e.not_found() => Ok(()),
            Err(e) => Err(api("deleting the old instance", e)),
        };
        if let Err(e) = old {
            return Err(CloudError::api(
                NAME,
                "deleting the old instance",
                format!(
                    "{e}; the copy {name:?} runs and holds the host's data: delete the old \
                     instance {:?} in the Lightsail console",
                    have.id
                ),
            ));
        }
        if let Err(e) = self.delete_snapshot(&snap).await {
            tracing::warn!(host = %want.host, snapshot = %snap.name, "the resize's snapshot is left: {e}");
        }
        let i = self.wait_state(&name, "running").await?;
        Ok(self.observed(&i))
    }
}

impl Provider for Lightsail {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lightsail
    }

    fn servers(&self) -> Fut<'_, Vec<ObservedServer>> {
        Box::pin(async move {
            let list = self
                .client()
                .await?
                .instances()
                .await
                .map_err(|e| api("listing instances", e))?;
            Ok(list.iter().map(|i| self.observed(i)).collect())
        })
    }

    fn prices(&self) -> Fut<'_, PriceList> {
        Box::pin(async move {
            let bundles = self
                .client()
                .await?
                .bundles()
                .await
                .map_err(|e| api("reading bundle prices", e))?;
            Ok(PriceList {
                currency: "USD",
                // A bundle's price includes its disk and its public address.
                attached: BTreeMap::new(),
                disk_gb: bundles
                    .iter()
                    .map(|b| (b.id.clone(), b.disk_gb.max(0) as u32))
                    .collect(),
                monthly: bundles
                    .into_iter()
                    .map(|b| ((b.id, "*".to_string()), b.price))
                    .collect(),
                bills_stopped: true,
            })
        })
    }

    fn create<'a>(
        &'a self,
        want: &'a DesiredServer,
        user_data: &'a str,
    ) -> Fut<'a, ObservedServer> {
        Box::pin(self.launch(&want.host, want, user_data, None))
    }

    fn adopt<'a>(&'a self, have: &'a ObservedServer, fleet: &'a str, host: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            if have.name != host {
                return Err(CloudError::api(
                    "lightsail",
                    "adopting the instance",
                    format!(
                        "Lightsail cannot rename an instance; import it as its own name: --as {}",
                        have.name
                    ),
                ));
            }
            let tags: Vec<(String, String)> =
                super::desired::ownership(fleet).into_iter().collect();
            self.client()
                .await?
                .tag(&have.id, &tags)
                .await
                .map_err(|e| api("tagging the instance", e))
        })
    }

    fn update<'a>(&'a self, have: &'a ObservedServer, want: &'a DesiredServer) -> Fut<'a, ()> {
        Box::pin(async move {
            let stale: Vec<String> = have
                .labels
                .keys()
                .filter(|k| !want.labels.contains_key(*k) && !super::is_host_key_label(k))
                .cloned()
                .collect();
            if !stale.is_empty() {
                self.client()
                    .await?
                    .untag(&have.id, &stale)
                    .await
                    .map_err(|e| api("removing tags", e))?;
            }
            let changed: Vec<(String, String)> = want
                .labels
                .iter()
                .filter(|(k, v)| have.labels.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !changed.is_empty() {
                self.client()
                    .await?
                    .tag(&have.id, &changed)
                    .await
                    .map_err(|e| api("tagging the instance", e))?;
            }
            if !want.firewall.is_empty()
                && !have
                    .firewall
                    .as_deref()
                    .is_some_and(|h| super::desired::same_rules(h, &want.firewall))
            {
                self.client()
                    .await?
                    .put_ports(&have.id, &port_infos(&want.firewall))
                    .await
                    .map_err(|e| api("setting the public ports", e))?;
            }
            if want.static_ip && !have.static_ip {
                let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
                self.attach_static_ip(&fleet, &have.name, &have.id).await?;
            }
            Ok(())
        })
    }

    fn resize<'a>(&'a self, have: &'a ObservedServer, _size: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            Err(CloudError::Refused(format!(
                "{}: Lightsail cannot change an instance's bundle in place; it is copied",
                have.name
            )))
        })
    }

    fn resizes_by_copy(&self) -> bool {
        true
    }

    fn resize_by_copy<'a>(
        &'a self,
        have: &'a ObservedServer,
        want: &'a DesiredServer,
        user_data: &'a str,
    ) -> Fut<'a, ObservedServer> {
        Box::pin(self.copy_to_new_bundle(have, want, user_data))
    }

    fn delete<'a>(&'a self, have: &'a ObservedServer, keep_address: bool) -> Fut<'a, ()> {
        Box::pin(async move {
            match self.client().await?.delete_instance(&have.id).await {
                Ok(ops) => self.wait_ops(&ops, "deleting the instance").await?,
                Err(e) if e.not_found() => {}
                Err(e) => return Err(api("deleting the instance", e)),
            }
            if keep_address {
                return Ok(());
            }
            let fleet = have.labels.get(FLEET).cloned().unwrap_or_default();
            let name = static_ip_name(&fleet, &have.name);
            let ips = self
                .client()
                .await?
                .static_ips()
                .await
                .map_err(|e| api("listing static IPs", e))?;
            if ips.iter().any(|s| s.name == name) {
                self.client()
                    .await?
                    .release_static_ip(&name)
                    .await
                    .map_err(|e| api("releasing the static IP", e))?;
            }
            Ok(())
        })
    }

    fn power<'a>(&'a self, have: &'a ObservedServer, on: bool) -> Fut<'a, ()> {
        Box::pin(async move {
            let (ops, want) = if on {
                (self.client().await?.start(&have.id).await, "running")
            } else {
                (self.client().await?.stop(&have.id).await, "stopped")
            };
            let what = if on {
                "starting the instance"
            } else {
                "stopping the instance"
            };
            match ops {
                Ok(ops) => self.wait_ops(&ops, what).await?,
                // Already in that state.
                Err(e) if e.code == "InvalidInputException" => {}
                Err(e) => return Err(api(what, e)),
            }
            self.wait_state(&have.id, want).await.map(|_| ())
        })
    }

    fn snapshot<'a>(
        &'a self,
        have: &'a ObservedServer,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Snapshot> {
        Box::pin(async move {
            let mut tags: Vec<(String, String)> = labels.clone().into_iter().collect();
            // Its host, so retention finds it after a resize renamed the instance.
            tags.push((HOST_NAME.into(), have.name.clone()));
            let ops = self
                .client()
                .await?
                .create_snapshot(&have.id, name, &tags)
                .await
                .map_err(|e| api("creating a snapshot", e))?;
            self.wait_ops(&ops, "creating a snapshot").await?;
            let start = Instant::now();
            loop {
                let all = self
                    .client()
                    .await?
                    .snapshots()
                    .await
                    .map_err(|e| api("listing snapshots", e))?;
                if let Some(s) = all
                    .iter()
                    .find(|s| s.name == name && s.state == "available")
                {
                    return Ok(snapshot(s));
                }
                if start.elapsed() > ACTION_TIMEOUT {
                    return Err(CloudError::Timeout {
                        provider: NAME,
                        what: format!("snapshot {name}"),
                        after: ACTION_TIMEOUT,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    fn snapshots<'a>(
        &'a self,
        server: &'a ObservedServer,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Vec<Snapshot>> {
        Box::pin(async move {
            let all = self
                .client()
                .await?
                .snapshots()
                .await
                .map_err(|e| api("listing snapshots", e))?;
            let mut out: Vec<Snapshot> = all
                .iter()
                .filter(|s| {
                    s.instance == server.id
                        || s.tags
                            .iter()
                            .any(|(k, v)| k == HOST_NAME && *v == server.name)
                })
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.tags.iter().any(|(a, b)| a == k && b == v))
                })
                .map(snapshot)
                .collect();
            out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
            Ok(out)
        })
    }

    fn delete_snapshot<'a>(&'a self, snapshot: &'a Snapshot) -> Fut<'a, ()> {
        Box::pin(async move {
            match self.client().await?.delete_snapshot(&snapshot.name).await {
                Ok(()) => Ok(()),
                Err(e) if e.not_found() => Ok(()),
                Err(e) => Err(api("deleting a snapshot", e)),
            }
        })
    }
}

fn snapshot(s: &ls::Snapshot) -> Snapshot {
    Snapshot {
        id: s.name.clone(),
        name: s.name.clone(),
        server: s.instance.clone(),
        created: chrono::DateTime::from_timestamp_millis(s.created_at_ms).unwrap_or_default(),
        labels: s.tags.iter().cloned().collect(),
    }
}
