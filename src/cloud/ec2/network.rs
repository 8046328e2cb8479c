//! EC2 networks: a network of tidekeeper.yaml with `provider: ec2` is a
//! VPC of the fleet's, tagged with its name ([`NETWORK_TAG`]). Its private
//! subnets share a route table whose way out is the NAT gateway
//! (`nat: true`); its public subnets share one routed to the VPC's internet
//! gateway and give their instances a public address on launch. Every part
//! carries the fleet's ownership tags and is found again by them, so a run
//! that stopped halfway is finished by the next, never doubled.

use std::collections::BTreeMap;
use std::time::Instant;

use tidekeeper_ec2 as ec2;

use super::{Ec2, NAME, NAME_TAG, POLL, api, owned};
use crate::cloud::{ACTION_TIMEOUT, ALLOW_DESTROY, CloudError, ObservedNetwork};
use crate::model::desired::{Network, ProviderKind};

/// The network (of tidekeeper.yaml) a VPC, subnet, route table, gateway or
/// address belongs to.
pub(crate) const NETWORK_TAG: &str = "tidekeeper-network";
/// What a subnet or route table is for: `public` or `private` (`nat` on the
/// NAT gateway and its address).
const ROLE_TAG: &str = "tidekeeper-role";
const ANYWHERE: &str = "0.0.0.0/0";

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Is this (tagged) part of network `name` of `fleet`?
fn part_of(tags: &[(String, String)], fleet: &str, name: &str) -> bool {
    owned(tags, fleet) && tag(tags, NETWORK_TAG) == Some(name)
}

/// A NAT gateway that is, or is becoming, a way out.
fn live(n: &ec2::NatGateway) -> bool {
    matches!(n.state.as_str(), "pending" | "available")
}

/// The tags of a part of network `want` of `fleet`, with its role.
fn tags(fleet: &str, want: &Network, role: Option<&str>) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = crate::cloud::desired::ownership(fleet)
        .into_iter()
        .collect();
    t.push((NETWORK_TAG.into(), want.name.clone()));
    let name = match role {
        Some(r) => format!("{}-{r}", want.name),
        None => want.name.clone(),
    };
    t.push((NAME_TAG.into(), name));
    if let Some(r) = role {
        t.push((ROLE_TAG.into(), r.into()));
    }
    if want.allow_destroy && role.is_none() {
        t.push((ALLOW_DESTROY.into(), "true".into()));
    }
    t
}

/// The subnets of tidekeeper's networks: subnet id → network name.
pub(super) fn subnet_networks(subnets: &[ec2::Subnet]) -> BTreeMap<String, String> {
    subnets
        .iter()
        .filter_map(|s| Some((s.id.clone(), tag(&s.tags, NETWORK_TAG)?.to_string())))
        .collect()
}

impl Ec2 {
    /// The VPCs that are networks of tidekeeper.yaml, as networks.
    pub(super) async fn list_networks(&self) -> Result<Vec<ObservedNetwork>, CloudError> {
        let c = self.client().await?;
        let vpcs = match c.vpcs().await {
            Ok(v) => v,
            // A policy written before tidekeeper managed VPCs: a fleet
            // without EC2 networks still plans (one with them fails on
            // apply, naming the permission).
            Err(e) if e.code == "UnauthorizedOperation" => {
                tracing::warn!(
                    "ec2: not allowed to list VPCs (ec2:DescribeVpcs): EC2 networks are not read"
                );
                return Ok(Vec::new());
            }
            Err(e) => return Err(api("listing VPCs", e)),
        };
        let subnets = c.subnets().await.map_err(|e| api("listing subnets", e))?;
        let nats = c
            .nat_gateways()
            .await
            .map_err(|e| api("listing NAT gateways", e))?;
        let mut out = Vec::new();
        for v in vpcs {
            let Some(name) = tag(&v.tags, NETWORK_TAG) else {
                continue;
            };
            let mut private = Vec::new();
            let mut public = Vec::new();
            for s in subnets.iter().filter(|s| s.vpc == v.id) {
                match tag(&s.tags, ROLE_TAG) {
                    Some("public") => public.push(s.cidr.clone()),
                    _ => private.push(s.cidr.clone()),
                }
            }
            private.sort();
            public.sort();
            let mut labels: BTreeMap<String, String> = v.tags.iter().cloned().collect();
            labels.remove(NAME_TAG);
            labels.remove(NETWORK_TAG);
            out.push(ObservedNetwork {
                provider: ProviderKind::Ec2,
                id: v.id.clone(),
                name: name.to_string(),
                ip_range: v.cidr.clone(),
                subnets: private,
                public_subnets: public,
                nat: nats.iter().any(|n| n.vpc == v.id && live(n)),
                region: self.region(),
                labels,
                delete_protection: false,
            });
        }
        Ok(out)
    }

    /// The id of subnet `cidr` of network `network` (made before its servers).
    pub(super) async fn subnet_in(
        &self,
        fleet: &str,
        network: &str,
        cidr: &str,
    ) -> Result<String, CloudError> {
        let c = self.client().await?;
        let subnets = c.subnets().await.map_err(|e| api("listing subnets", e))?;
        subnets
            .into_iter()
            .find(|s| part_of(&s.tags, fleet, network) && s.cidr == cidr)
            .map(|s| s.id)
            .ok_or_else(|| {
                CloudError::api(
                    NAME,
                    "finding the subnet",
                    format!("network {network} has no subnet {cidr}; apply the network first"),
                )
            })
    }

    /// Make network `want` of `fleet`, or bring it to what it asks: its
    /// VPC, subnets, internet gateway, route tables and NAT gateway.
    pub(super) async fn make_network(&self, fleet: &str, want: &Network) -> Result<(), CloudError> {
        let c = self.client().await?;
        let vpc = self.vpc(fleet, want).await?;
        let have = c.subnets().await.map_err(|e| api("listing subnets", e))?;
        let mut ids: BTreeMap<&str, String> = BTreeMap::new();
        let roles = want
            .subnets
            .iter()
            .map(|s| (s, "private"))
            .chain(want.public_subnets.iter().map(|s| (s, "public")));
        for (cidr, role) in roles {
            let found = have.iter().find(|s| s.vpc == vpc && s.cidr == *cidr);
            let id = match found {
                Some(s) => s.id.clone(),
                None => {
                    let zone = (!want.zone.is_empty()).then_some(want.zone.as_str());
                    c.create_subnet(&vpc, cidr, zone, &tags(fleet, want, Some(role)))
                        .await
                        .map_err(|e| api(&format!("creating subnet {cidr}"), e))?
                }
            };
            if role == "public" && !found.is_some_and(|s| s.map_public_ip) {
                c.set_map_public_ip(&id, true)
                    .await
                    .map_err(|e| api("letting the public subnet map public addresses", e))?;
            }
            // Public and private subnets never overlap (checked at validate).
            ids.insert(cidr.as_str(), id);
        }
        let public: Vec<String> = want
            .public_subnets
            .iter()
            .filter_map(|s| ids.get(s.as_str()).cloned())
            .collect();
        let private: Vec<String> = want
            .subnets
            .iter()
            .filter_map(|s| ids.get(s.as_str()).cloned())
            .collect();
        if !public.is_empty() {
            let gw = self.internet_gateway(fleet, want, &vpc).await?;
            let table = self
                .route_table(fleet, want, &vpc, "public", &public)
                .await?;
            self.default_route(&table, Some(ec2::RouteTarget::Gateway(gw)))
                .await?;
        }
        if !private.is_empty() {
            let table = self
                .route_table(fleet, want, &vpc, "private", &private)
                .await?;
            let out = match public.first().filter(|_| want.nat) {
                Some(subnet) => Some(self.nat_gateway(fleet, want, &vpc, subnet).await?),
                None => None,
            };
            self.default_route(&table, out.map(ec2::RouteTarget::NatGateway))
                .await?;
        }
        if !want.nat {
            self.remove_nat(fleet, &want.name, &vpc).await?;
        }
        Ok(())
    }

    /// The network's VPC, made when missing; its `allow_destroy` tag as
    /// the config says.
    async fn vpc(&self, fleet: &str, want: &Network) -> Result<String, CloudError> {
        let c = self.client().await?;
        let vpcs = c.vpcs().await.map_err(|e| api("listing VPCs", e))?;
        let Some(v) = vpcs.iter().find(|v| part_of(&v.tags, fleet, &want.name)) else {
            return c
                .create_vpc(&want.ip_range, &tags(fleet, want, None))
                .await
                .map_err(|e| api("creating the VPC", e));
        };
        let allowed = tag(&v.tags, ALLOW_DESTROY) == Some("true");
        if want.allow_destroy && !allowed {
            c.tag(&v.id, &[(ALLOW_DESTROY.into(), "true".into())])
                .await
                .map_err(|e| api("tagging the VPC", e))?;
        } else if !want.allow_destroy && allowed {
            c.untag(&v.id, &[ALLOW_DESTROY.into()])
                .await
                .map_err(|e| api("tagging the VPC", e))?;
        }
        Ok(v.id.clone())
    }

    /// The VPC's internet gateway: the one attached, else the network's own
    /// (attached now), else a new one.
    async fn internet_gateway(
        &self,
        fleet: &str,
        want: &Network,
        vpc: &str,
    ) -> Result<String, CloudError> {
        let c = self.client().await?;
        let all = c
            .internet_gateways()
            .await
            .map_err(|e| api("listing internet gateways", e))?;
        if let Some(g) = all.iter().find(|g| g.vpcs.iter().any(|v| v == vpc)) {
            return Ok(g.id.clone());
        }
        let id = match all
            .iter()
            .find(|g| g.vpcs.is_empty() && part_of(&g.tags, fleet, &want.name))
        {
            Some(g) => g.id.clone(),
            None => c
                .create_internet_gateway(&tags(fleet, want, None))
                .await
                .map_err(|e| api("creating the internet gateway", e))?,
        };
        c.attach_internet_gateway(&id, vpc)
            .await
            .map_err(|e| api("attaching the internet gateway", e))?;
        Ok(id)
    }

    /// The network's route table for `role`, made when missing, with
    /// exactly `subnets` of the network associated to it.
    async fn route_table(
        &self,
        fleet: &str,
        want: &Network,
        vpc: &str,
        role: &str,
        subnets: &[String],
    ) -> Result<String, CloudError> {
        let c = self.client().await?;
        let tables = c
            .route_tables()
            .await
            .map_err(|e| api("listing route tables", e))?;
        let mine = |t: &&ec2::RouteTable| {
            t.vpc == vpc
                && part_of(&t.tags, fleet, &want.name)
                && tag(&t.tags, ROLE_TAG) == Some(role)
        };
        let id = match tables.iter().find(mine) {
            Some(t) => t.id.clone(),
            None => c
                .create_route_table(vpc, &tags(fleet, want, Some(role)))
                .await
                .map_err(|e| api("creating a route table", e))?,
        };
        for subnet in subnets {
            let held = tables
                .iter()
                .flat_map(|t| t.subnets.iter().map(move |(a, s)| (t, a, s)))
                .find(|(_, _, s)| *s == subnet);
            match held {
                Some((t, _, _)) if t.id == id => continue,
                // Another table of the VPC holds it: moved to this one.
                Some((_, assoc, _)) => c
                    .disassociate_route_table(assoc)
                    .await
                    .map_err(|e| api("moving the subnet's route table", e))?,
                None => {}
            }
            c.associate_route_table(&id, subnet)
                .await
                .map_err(|e| api("associating the route table", e))?;
        }
        Ok(id)
    }

    /// Route table `table`'s way to the internet: `to`, or none.
    async fn default_route(
        &self,
        table: &str,
        to: Option<ec2::RouteTarget>,
    ) -> Result<(), CloudError> {
        let c = self.client().await?;
        let tables = c
            .route_tables()
            .await
            .map_err(|e| api("listing route tables", e))?;
        let have = tables
            .iter()
            .find(|t| t.id == table)
            .and_then(|t| t.routes.iter().find(|r| r.destination == ANYWHERE))
            .map(|r| r.target.clone());
        let r = match (have, to) {
            (Some(h), Some(t)) if h == t => return Ok(()),
            (Some(_), Some(t)) => c.replace_route(table, ANYWHERE, &t).await,
            (None, Some(t)) => c.create_route(table, ANYWHERE, &t).await,
            (Some(_), None) => c.delete_route(table, ANYWHERE).await,
            (None, None) => return Ok(()),
        };
        r.map_err(|e| api("setting the route to the internet", e))
    }

    /// The network's NAT gateway in `subnet`, made (with an Elastic IP)
    /// when missing; its id once it is available.
    async fn nat_gateway(
        &self,
        fleet: &str,
        want: &Network,
        vpc: &str,
        subnet: &str,
    ) -> Result<String, CloudError> {
        let c = self.client().await?;
        let nats = c
            .nat_gateways()
            .await
            .map_err(|e| api("listing NAT gateways", e))?;
        let id = match nats.iter().find(|n| n.vpc == vpc && live(n)) {
            Some(n) => n.id.clone(),
            None => {
                let addresses = c
                    .addresses()
                    .await
                    .map_err(|e| api("listing Elastic IPs", e))?;
                let free = addresses.into_iter().find(|a| {
                    a.association.is_none()
                        && part_of(&a.tags, fleet, &want.name)
                        && tag(&a.tags, ROLE_TAG) == Some("nat")
                });
                let address = match free {
                    Some(a) => a,
                    None => c
                        .allocate_address(&tags(fleet, want, Some("nat")))
                        .await
                        .map_err(|e| api("allocating the NAT gateway's Elastic IP", e))?,
                };
                let cidr = want
                    .public_subnets
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default();
                let at = crate::model::check::nat_address(cidr);
                c.create_nat_gateway(
                    subnet,
                    &address.allocation,
                    at.as_deref(),
                    &tags(fleet, want, Some("nat")),
                )
                .await
                .map_err(|e| api("creating the NAT gateway", e))?
            }
        };
        self.wait_nat(&id, "available").await?;
        Ok(id)
    }

    /// Wait until NAT gateway `id` is `want` (`available` or `deleted`).
    async fn wait_nat(&self, id: &str, want: &str) -> Result<(), CloudError> {
        let start = Instant::now();
        loop {
            let c = self.client().await?;
            let nats = c
                .nat_gateways()
                .await
                .map_err(|e| api("reading the NAT gateway", e))?;
            let state = nats.iter().find(|n| n.id == id);
            match state {
                None if want == "deleted" => return Ok(()),
                Some(n) if n.state == want => return Ok(()),
                Some(n) if n.state == "failed" => {
                    return Err(CloudError::api(
                        NAME,
                        "creating the NAT gateway",
                        format!(
                            "NAT gateway {id} failed: {}",
                            n.failure.as_deref().unwrap_or("no reason given")
                        ),
                    ));
                }
                _ => {}
            }
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: format!("NAT gateway {id} to be {want}"),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Delete the VPC's NAT gateways and release the network's addresses
    /// they held (a gateway and its address bill by the hour).
    async fn remove_nat(&self, fleet: &str, network: &str, vpc: &str) -> Result<(), CloudError> {
        let c = self.client().await?;
        let nats = c
            .nat_gateways()
            .await
            .map_err(|e| api("listing NAT gateways", e))?;
        // A failed gateway is not billed and EC2 removes it by itself.
        for n in nats.iter().filter(|n| {
            n.vpc == vpc && matches!(n.state.as_str(), "pending" | "available" | "deleting")
        }) {
            if n.state != "deleting" {
                c.delete_nat_gateway(&n.id)
                    .await
                    .map_err(|e| api("deleting the NAT gateway", e))?;
            }
            self.wait_nat(&n.id, "deleted").await?;
        }
        let addresses = c
            .addresses()
            .await
            .map_err(|e| api("listing Elastic IPs", e))?;
        for a in addresses.iter().filter(|a| {
            a.association.is_none()
                && part_of(&a.tags, fleet, network)
                && tag(&a.tags, ROLE_TAG) == Some("nat")
        }) {
            c.release_address(&a.allocation)
                .await
                .map_err(|e| api("releasing the NAT gateway's Elastic IP", e))?;
        }
        Ok(())
    }

    /// Delete network `have` (its servers are gone): NAT gateway, route
    /// tables, internet gateway, the hosts' security groups, subnets, VPC,
    /// in the order EC2 lets them go.
    pub(super) async fn remove_network(&self, have: &ObservedNetwork) -> Result<(), CloudError> {
        let c = self.client().await?;
        let vpc = have.id.as_str();
        let fleet = have
            .labels
            .get(crate::cloud::FLEET)
            .cloned()
            .unwrap_or_default();
        // Nothing is taken from under a server still in the VPC.
        let subnets = c.subnets().await.map_err(|e| api("listing subnets", e))?;
        let instances = c
            .instances()
            .await
            .map_err(|e| api("listing instances", e))?;
        let inside: Vec<&str> = instances
            .iter()
            .filter(|i| {
                let sub = i.subnet.as_deref();
                subnets
                    .iter()
                    .any(|s| Some(s.id.as_str()) == sub && s.vpc == vpc)
            })
            .map(|i| i.id.as_str())
            .collect();
        if !inside.is_empty() {
            return Err(CloudError::Refused(format!(
                "network {}: instances {} are still in VPC {vpc}; nothing of it was deleted",
                have.name,
                inside.join(", ")
            )));
        }
        self.remove_nat(&fleet, &have.name, vpc).await?;
        let tables = c
            .route_tables()
            .await
            .map_err(|e| api("listing route tables", e))?;
        for t in tables.iter().filter(|t| t.vpc == vpc && !t.main) {
            for (assoc, _) in &t.subnets {
                c.disassociate_route_table(assoc)
                    .await
                    .map_err(|e| api("detaching a route table", e))?;
            }
            c.delete_route_table(&t.id)
                .await
                .map_err(|e| api("deleting a route table", e))?;
        }
        let gateways = c
            .internet_gateways()
            .await
            .map_err(|e| api("listing internet gateways", e))?;
        for g in gateways.iter().filter(|g| g.vpcs.iter().any(|v| v == vpc)) {
            c.detach_internet_gateway(&g.id, vpc)
                .await
                .map_err(|e| api("detaching the internet gateway", e))?;
            c.delete_internet_gateway(&g.id)
                .await
                .map_err(|e| api("deleting the internet gateway", e))?;
        }
        let groups = c
            .security_groups()
            .await
            .map_err(|e| api("listing security groups", e))?;
        for g in groups
            .iter()
            .filter(|g| g.vpc == vpc && g.name != "default" && owned(&g.tags, &fleet))
        {
            c.delete_security_group(&g.id)
                .await
                .map_err(|e| api("deleting a security group", e))?;
        }
        for s in subnets.iter().filter(|s| s.vpc == vpc) {
            c.delete_subnet(&s.id)
                .await
                .map_err(|e| api("deleting a subnet", e))?;
        }
        c.delete_vpc(vpc)
            .await
            .map_err(|e| api("deleting the VPC", e))
    }
}
