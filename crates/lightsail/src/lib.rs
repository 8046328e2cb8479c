//! The AWS Lightsail calls tidekeeper makes, with plain types in and out.
//!
//! The real `aws-sdk-lightsail` client does the work: SigV4 signing, the
//! awsJson1.1 protocol, and retries (standard mode: throttling and 5xx
//! answers are retried with exponential backoff, honouring the server's
//! `x-amz-retry-after`). Credentials are either a key pair the caller read
//! from the environment, or the SDK's default chain; they are never logged.

use aws_sdk_lightsail::types;

use tidekeeper_aws::error as err;
pub use tidekeeper_aws::{Auth, Error, Settings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub from: i32,
    pub to: i32,
    /// `tcp`, `udp` or `all`.
    pub protocol: String,
    pub cidrs: Vec<String>,
    pub ipv6_cidrs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub bundle: String,
    pub blueprint: String,
    pub zone: String,
    /// `pending`, `running`, `stopping`, `stopped`, …
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub is_static_ip: bool,
    pub tags: Vec<(String, String)>,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub id: String,
    /// US dollars a month.
    pub price: f64,
    pub cpus: i32,
    pub ram_gb: f32,
    pub disk_gb: i32,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub resource: String,
    /// `Started`, `Succeeded`, `Failed`, `Completed`, …
    pub status: String,
    pub error: Option<String>,
}

impl Operation {
    pub fn failed(&self) -> bool {
        self.status == "Failed"
    }
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "Succeeded" | "Completed" | "Failed")
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub instance: String,
    /// `pending`, `available`, `error`.
    pub state: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
    pub tags: Vec<(String, String)>,
    /// The disk size it holds (an instance made from it needs at least this).
    pub size_gb: i32,
}

#[derive(Debug, Clone)]
pub struct StaticIp {
    pub name: String,
    pub ip: String,
    pub attached_to: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    inner: aws_sdk_lightsail::Client,
}

fn tags(list: &[types::Tag]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn tag_list(list: &[(String, String)]) -> Vec<types::Tag> {
    list.iter()
        .map(|(k, v)| types::Tag::builder().key(k).value(v).build())
        .collect()
}

fn operation(o: &types::Operation) -> Operation {
    Operation {
        id: o.id().unwrap_or_default().to_string(),
        resource: o.resource_name().unwrap_or_default().to_string(),
        status: o
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        error: o
            .error_details()
            .map(|d| format!("{} {}", o.error_code().unwrap_or_default(), d)),
    }
}

fn instance(i: &types::Instance) -> Instance {
    Instance {
        name: i.name().unwrap_or_default().to_string(),
        bundle: i.bundle_id().unwrap_or_default().to_string(),
        blueprint: i.blueprint_id().unwrap_or_default().to_string(),
        zone: i
            .location()
            .and_then(|l| l.availability_zone())
            .unwrap_or_default()
            .to_string(),
        state: i
            .state()
            .and_then(|s| s.name())
            .unwrap_or_default()
            .to_string(),
        public_ip: i.public_ip_address().map(String::from),
        private_ip: i.private_ip_address().map(String::from),
        is_static_ip: i.is_static_ip().unwrap_or(false),
        tags: tags(i.tags()),
        ports: i
            .networking()
            .map(|n| {
                n.ports()
                    .iter()
                    .map(|p| Port {
                        from: p.from_port(),
                        to: p.to_port(),
                        protocol: p
                            .protocol()
                            .map(|x| x.as_str().to_string())
                            .unwrap_or_else(|| "tcp".into()),
                        cidrs: p.cidrs().to_vec(),
                        ipv6_cidrs: p.ipv6_cidrs().to_vec(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl Client {
    /// A client; with [`Auth::Chain`] the profile files are read now and
    /// the credentials fetched on the first call.
    pub async fn new(s: Settings) -> Result<Client, Error> {
        let shared = tidekeeper_aws::config(s, "lightsail").await?;
        Ok(Client {
            inner: aws_sdk_lightsail::Client::new(&shared),
        })
    }

    /// Every instance in the region (all pages).
    pub async fn instances(&self) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .get_instances()
                .set_page_token(token.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.instances().iter().map(instance));
            match page.next_page_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn instance(&self, name: &str) -> Result<Option<Instance>, Error> {
        match self.inner.get_instance().instance_name(name).send().await {
            Ok(r) => Ok(r.instance().map(instance)),
            Err(e) => {
                let e = err(e);
                if e.not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Bundles on offer, with their monthly prices.
    pub async fn bundles(&self) -> Result<Vec<Bundle>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .get_bundles()
                .include_inactive(true)
                .set_page_token(token.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.bundles().iter().map(|b| Bundle {
                id: b.bundle_id().unwrap_or_default().to_string(),
                price: b.price().unwrap_or_default() as f64,
                cpus: b.cpu_count().unwrap_or_default(),
                ram_gb: b.ram_size_in_gb().unwrap_or_default(),
                disk_gb: b.disk_size_in_gb().unwrap_or_default(),
                active: b.is_active().unwrap_or(true),
            }));
            match page.next_page_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_instance(
        &self,
        name: &str,
        zone: &str,
        blueprint: &str,
        bundle: &str,
        key_pair: Option<&str>,
        user_data: &str,
        tags: &[(String, String)],
    ) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .create_instances()
            .instance_names(name)
            .availability_zone(zone)
            .blueprint_id(blueprint)
            .bundle_id(bundle)
            .set_key_pair_name(key_pair.map(String::from))
            .user_data(user_data)
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    /// A new instance whose disk is a copy of `snapshot`'s.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_instance_from_snapshot(
        &self,
        name: &str,
        zone: &str,
        snapshot: &str,
        bundle: &str,
        key_pair: Option<&str>,
        user_data: &str,
        tags: &[(String, String)],
    ) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .create_instances_from_snapshot()
            .instance_names(name)
            .availability_zone(zone)
            .instance_snapshot_name(snapshot)
            .bundle_id(bundle)
            .set_key_pair_name(key_pair.map(String::from))
            .user_data(user_data)
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    pub async fn delete_instance(&self, name: &str) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .delete_instance()
            .instance_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    pub async fn operation(&self, id: &str) -> Result<Operation, Error> {
        let r = self
            .inner
            .get_operation()
            .operation_id(id)
            .send()
            .await
            .map_err(err)?;
        r.operation().map(operation).ok_or_else(|| Error {
            code: String::new(),
            message: format!("operation {id}: empty answer"),
        })
    }

    pub async fn tag(&self, resource: &str, tags: &[(String, String)]) -> Result<(), Error> {
        self.inner
            .tag_resource()
            .resource_name(resource)
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn untag(&self, resource: &str, keys: &[String]) -> Result<(), Error> {
        self.inner
            .untag_resource()
            .resource_name(resource)
            .set_tag_keys(Some(keys.to_vec()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Replace the instance's open public ports with `ports`.
    pub async fn put_ports(&self, name: &str, ports: &[Port]) -> Result<(), Error> {
        let infos: Vec<types::PortInfo> = ports
            .iter()
            .map(|p| {
                types::PortInfo::builder()
                    .from_port(p.from)
                    .to_port(p.to)
                    .protocol(types::NetworkProtocol::from(p.protocol.as_str()))
                    .set_cidrs(Some(p.cidrs.clone()))
                    .set_ipv6_cidrs(Some(p.ipv6_cidrs.clone()))
                    .build()
            })
            .collect();
        self.inner
            .put_instance_public_ports()
            .instance_name(name)
            .set_port_infos(Some(infos))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .start_instance()
            .instance_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    pub async fn stop(&self, name: &str) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .stop_instance()
            .instance_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    pub async fn static_ips(&self) -> Result<Vec<StaticIp>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .get_static_ips()
                .set_page_token(token.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.static_ips().iter().map(|s| {
                StaticIp {
                    name: s.name().unwrap_or_default().to_string(),
                    ip: s.ip_address().unwrap_or_default().to_string(),
                    attached_to: s
                        .attached_to()
                        .filter(|_| s.is_attached().unwrap_or(false))
                        .map(String::from),
                }
            }));
            match page.next_page_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn allocate_static_ip(&self, name: &str) -> Result<(), Error> {
        self.inner
            .allocate_static_ip()
            .static_ip_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn attach_static_ip(&self, name: &str, instance: &str) -> Result<(), Error> {
        self.inner
            .attach_static_ip()
            .static_ip_name(name)
            .instance_name(instance)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn detach_static_ip(&self, name: &str) -> Result<(), Error> {
        self.inner
            .detach_static_ip()
            .static_ip_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn release_static_ip(&self, name: &str) -> Result<(), Error> {
        self.inner
            .release_static_ip()
            .static_ip_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn create_snapshot(
        &self,
        instance: &str,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<Vec<Operation>, Error> {
        let r = self
            .inner
            .create_instance_snapshot()
            .instance_name(instance)
            .instance_snapshot_name(name)
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(r.operations().iter().map(operation).collect())
    }

    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .get_instance_snapshots()
                .set_page_token(token.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.instance_snapshots().iter().map(|s| {
                Snapshot {
                    name: s.name().unwrap_or_default().to_string(),
                    instance: s.from_instance_name().unwrap_or_default().to_string(),
                    state: s
                        .state()
                        .map(|x| x.as_str().to_string())
                        .unwrap_or_default(),
                    created_at_ms: s
                        .created_at()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or_default(),
                    tags: tags(s.tags()),
                    size_gb: s.size_in_gb().unwrap_or_default(),
                }
            }));
            match page.next_page_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<(), Error> {
        self.inner
            .delete_instance_snapshot()
            .instance_snapshot_name(name)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn key_pair_exists(&self, name: &str) -> Result<bool, Error> {
        match self.inner.get_key_pair().key_pair_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = err(e);
                if e.not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// Upload `public_key` (an OpenSSH line) as the key pair `name`.
    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key: &str,
        tags: &[(String, String)],
    ) -> Result<(), Error> {
        self.inner
            .import_key_pair()
            .key_pair_name(name)
            .public_key_base64(public_key)
            .send()
            .await
            .map_err(err)?;
        // Key pairs take tags through TagResource.
        self.tag(name, tags).await
    }

    /// Names of the key pairs in the region.
    pub async fn key_pairs(&self) -> Result<Vec<String>, Error> {
        let r = self.inner.get_key_pairs().send().await.map_err(err)?;
        Ok(r.key_pairs()
            .iter()
            .filter_map(|k| k.name().map(String::from))
            .collect())
    }
}
