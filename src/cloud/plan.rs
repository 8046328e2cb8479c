//! The cloud plan: desired servers against the servers the providers list,
//! with the monthly cost of each change and of the whole fleet. Pure, in
//! named steps: `costs`, a change per server (`server_change`: create,
//! update, resize, replace), `deletions` of servers whose hosts left, and
//! the destroy gate (`gate_destroys`) over them; private networks in
//! [`plan_networks`]. Also the plan's text and cost tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::desired::{DesiredServer, describe_port};
use super::{ALLOW_DESTROY, Monthly, Observed, ObservedNetwork, ObservedServer};
use crate::change::Attr;
use crate::model::desired::{Fleet, Network, ProviderKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudAction {
    Create,
    /// Labels, firewall rules, ports, static IP: changed in place.
    Update,
    /// A new server type in place (Hetzner).
    Resize,
    /// Deleted and created again: what the provider cannot change in place.
    Replace,
    Delete,
}

impl CloudAction {
    pub fn symbol(self) -> &'static str {
        match self {
            CloudAction::Create => "+",
            CloudAction::Update | CloudAction::Resize => "~",
            CloudAction::Replace => "-/+",
            CloudAction::Delete => "-",
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            CloudAction::Create => "create",
            CloudAction::Update => "update",
            CloudAction::Resize => "resize",
            CloudAction::Replace => "replace",
            CloudAction::Delete => "delete",
        }
    }
    /// Does the change end a server (and everything on its disk)?
    pub fn destroys(self) -> bool {
        matches!(self, CloudAction::Replace | CloudAction::Delete)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudChange {
    pub host: String,
    pub provider: ProviderKind,
    pub action: CloudAction,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<Attr>,
    /// Why a replace (or a resize) is needed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Monthly price before and after the change.
    pub cost_before: Option<Monthly>,
    pub cost_after: Option<Monthly>,
    /// For changes that destroy a server: is that permitted?
    pub allow_destroy: bool,
    /// Why apply refuses this change as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    #[serde(skip)]
    pub desired: Option<DesiredServer>,
    #[serde(skip)]
    pub observed: Option<ObservedServer>,
}

impl CloudChange {
    pub fn address(&self) -> String {
        format!("{} server", self.host)
    }

    /// Does carrying it out leave the host on a new server (new address,
    /// new host key)? A Lightsail resize does: the copy is a new instance.
    pub fn new_server(&self) -> bool {
        match self.action {
            CloudAction::Create | CloudAction::Replace => true,
            CloudAction::Resize => self.provider == ProviderKind::Lightsail,
            _ => false,
        }
    }
}

/// Monthly totals in one currency.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct CostLine {
    pub prior: f64,
    pub proposed: f64,
}

impl CostLine {
    pub fn delta(&self) -> f64 {
        self.proposed - self.prior
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CloudPlan {
    /// The fleet planned (its name labels what the plan creates).
    #[serde(skip)]
    pub fleet: String,
    pub changes: Vec<CloudChange>,
    /// Monthly cost of the fleet's servers, per currency.
    pub cost: BTreeMap<&'static str, CostLine>,
    /// Problems that stop the plan from being applied (name clashes, unknown sizes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Why the providers could not be listed (an outage, bad credentials):
    /// the cloud hosts fail this time, the others are reconciled as usual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What each host's server costs a month once the plan is applied.
    #[serde(skip)]
    pub server_cost: BTreeMap<String, (ProviderKind, Monthly)>,
    /// Private networks to create, extend or delete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkChange>,
    /// A digest of the servers and networks planned against
    /// ([`Observed::digest`]): what a saved plan records.
    #[serde(skip)]
    pub observed: Option<String>,
}

/// A change to a private network.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkChange {
    pub name: String,
    pub provider: ProviderKind,
    /// Create, Update (subnets added) or Delete.
    pub action: CloudAction,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<Attr>,
    /// Monthly price before and after (None: free): an EC2 NAT gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_before: Option<Monthly>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_after: Option<Monthly>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    #[serde(skip)]
    pub desired: Option<crate::model::desired::Network>,
    #[serde(skip)]
    pub observed: Option<crate::cloud::ObservedNetwork>,
}

impl CloudPlan {
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || !self.networks.is_empty()
    }
    pub fn blocked(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter_map(|c| c.blocked.clone())
            .chain(self.networks.iter().filter_map(|n| n.blocked.clone()))
            .chain(self.errors.iter().cloned())
            .collect()
    }
    pub fn change(&self, host: &str) -> Option<&CloudChange> {
        self.changes.iter().find(|c| c.host == host)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// `--allow-destroy`: permit deleting and replacing servers.
    pub allow_destroy: bool,
}

fn attr(name: &str, before: Option<String>, after: Option<String>) -> Attr {
    Attr {
        name: name.to_string(),
        before,
        after,
    }
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .filter(|(k, _)| !super::is_host_key_label(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rules_text(r: &[crate::model::desired::CloudPort]) -> String {
    if r.is_empty() {
        "(none)".into()
    } else {
        r.iter().map(describe_port).collect::<Vec<_>>().join("; ")
    }
}

/// Does the server need attaching or detaching? (A fixed address that
/// differs means detaching and attaching again.)
fn networks_differ(d: &DesiredServer, o: &ObservedServer) -> bool {
    d.networks.len() != o.networks.len()
        || d.networks.iter().any(|w| {
            !o.networks
                .iter()
                .any(|(n, ip)| *n == w.name && w.ip.as_ref().is_none_or(|want| want == ip))
        })
}

fn networks_text(n: &[crate::model::desired::ServerNetwork]) -> String {
    if n.is_empty() {
        return "(none)".into();
    }
    n.iter()
        .map(|n| match &n.ip {
            Some(ip) => format!("{} {ip}", n.name),
            None if n.reserved.is_empty() => format!("{} (next free address)", n.name),
            None => format!(
                "{} (next free address, not {})",
                n.name,
                n.reserved.join(", ")
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn observed_networks_text(n: &[(String, String)]) -> String {
    if n.is_empty() {
        return "(none)".into();
    }
    n.iter()
        .map(|(name, ip)| format!("{name} {ip}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The networks of tidekeeper.yaml some server names: a network no server
/// names is not made (a template may declare it).
fn used_networks(fleet: &Fleet) -> impl Iterator<Item = &Network> {
    fleet.networks.iter().filter(|n| {
        fleet.hosts.iter().any(|h| {
            h.server
                .as_ref()
                .is_some_and(|s| s.networks.iter().any(|x| x.name == n.name))
        })
    })
}

/// The network the providers have for `n`: of its name and provider; on
/// EC2, where names are tags anyone may write, only the fleet's own VPC.
fn find_network<'a>(
    observed: &'a Observed,
    fleet: &str,
    n: &Network,
) -> Option<&'a ObservedNetwork> {
    let named = |o: &&ObservedNetwork| o.provider == n.provider && o.name == n.name;
    let mut all = observed.networks.iter().filter(named);
    match n.provider {
        ProviderKind::Ec2 => all.find(|o| o.owned_by(fleet)),
        _ => all
            .clone()
            .find(|o| o.owned_by(fleet))
            .or_else(|| all.next()),
    }
}

/// What a network costs a month: an EC2 VPC's NAT gateway with its public
/// address (None: free, or no price for the region).
pub(crate) fn network_price(
    observed: &Observed,
    provider: ProviderKind,
    region: &str,
    nat: bool,
) -> Option<Monthly> {
    let list = observed.prices.get(&provider).filter(|_| nat)?;
    let a = list.attached.get(region)?;
    Some(Monthly {
        amount: a.nat + a.ipv4,
        currency: list.currency,
    })
}

/// What a new network is made of, as the plan shows it.
fn network_attrs(n: &Network) -> Vec<Attr> {
    let mut attrs = vec![attr("ip range", None, Some(n.ip_range.clone()))];
    if n.provider != ProviderKind::Ec2 {
        attrs.push(attr("subnets", None, Some(n.subnets.join(", "))));
        attrs.push(attr("zone", None, Some(n.zone.clone())));
        return attrs;
    }
    if !n.subnets.is_empty() {
        attrs.push(attr("private subnets", None, Some(n.subnets.join(", "))));
    }
    if !n.public_subnets.is_empty() {
        let public = format!(
            "{} (routed to an internet gateway)",
            n.public_subnets.join(", ")
        );
        attrs.push(attr("public subnets", None, Some(public)));
    }
    if n.nat {
        attrs.push(attr("NAT gateway", None, Some(nat_text(n))));
    }
    if !n.zone.is_empty() {
        attrs.push(attr("availability zone", None, Some(n.zone.clone())));
    }
    attrs
}

fn nat_text(n: &Network) -> String {
    match n.public_subnets.first() {
        Some(p) if n.nat => format!("in {p}, the private subnets' way out"),
        _ => "none".into(),
    }
}

/// What network `n` lacks of the config (subnets, a NAT gateway) or has
/// too much of (a NAT gateway), as one update; None when nothing.
fn network_update(n: &Network, o: &ObservedNetwork, observed: &Observed) -> Option<NetworkChange> {
    let lacks = |want: &[String], have: &[String]| want.iter().any(|s| !have.contains(s));
    let mut attrs = Vec::new();
    if lacks(&n.subnets, &o.subnets) {
        let name = if n.provider == ProviderKind::Ec2 {
            "private subnets"
        } else {
            "subnets"
        };
        attrs.push(attr(
            name,
            Some(o.subnets.join(", ")),
            Some(n.subnets.join(", ")),
        ));
    }
    if lacks(&n.public_subnets, &o.public_subnets) {
        let (b, a) = (o.public_subnets.join(", "), n.public_subnets.join(", "));
        attrs.push(attr("public subnets", Some(b), Some(a)));
    }
    if o.nat != n.nat {
        let was = if o.nat { "present" } else { "none" };
        attrs.push(attr("NAT gateway", Some(was.into()), Some(nat_text(n))));
    }
    let allowed = o.labels.get(ALLOW_DESTROY).map(String::as_str) == Some("true");
    if n.provider == ProviderKind::Ec2 && allowed != n.allow_destroy {
        let word = |on: bool| if on { "yes" } else { "no" }.to_string();
        attrs.push(attr(
            "allow destroy",
            Some(word(allowed)),
            Some(word(n.allow_destroy)),
        ));
    }
    (!attrs.is_empty()).then(|| NetworkChange {
        name: n.name.clone(),
        provider: n.provider,
        action: CloudAction::Update,
        attrs,
        cost_before: network_price(observed, n.provider, &o.region, o.nat),
        cost_after: network_price(observed, n.provider, &o.region, n.nat),
        blocked: None,
        desired: Some(n.clone()),
        observed: Some(o.clone()),
    })
}

/// Networks the fleet declares against those the providers have: create
/// the missing, add subnets (and on EC2 add or remove the NAT gateway),
/// and (planning the whole fleet) delete the fleet's networks no longer
/// declared, where their config allowed it.
pub(crate) fn plan_networks(
    fleet: &Fleet,
    observed: &Observed,
    whole: bool,
    opts: PlanOptions,
) -> (Vec<NetworkChange>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for n in used_networks(fleet) {
        let have = find_network(observed, &fleet.name, n);
        let price = |nat: bool, region: &str| network_price(observed, n.provider, region, nat);
        let Some(o) = have else {
            out.push(NetworkChange {
                name: n.name.clone(),
                provider: n.provider,
                action: CloudAction::Create,
                attrs: network_attrs(n),
                cost_before: None,
                cost_after: price(n.nat, &n.region),
                blocked: None,
                desired: Some(n.clone()),
                observed: None,
            });
            continue;
        };
        if !o.owned_by(&fleet.name) {
            errors.push(format!(
                "network {}: a network of that name exists but is not managed by tidekeeper for fleet {:?}; rename the network in tidekeeper.yaml, or adopt it by adding the labels managed-by=tidekeeper, tidekeeper-fleet={}",
                n.name, fleet.name, fleet.name
            ));
            continue;
        }
        if o.ip_range != n.ip_range {
            errors.push(format!(
                "network {}: its range is {} and the config asks for {}; a network's range is not changed in place (create a new network and move the servers)",
                n.name, o.ip_range, n.ip_range
            ));
            continue;
        }
        // A subnet's kind is its route table and its public addresses.
        let flipped: Vec<&String> = n
            .subnets
            .iter()
            .filter(|s| o.public_subnets.contains(s))
            .chain(n.public_subnets.iter().filter(|s| o.subnets.contains(s)))
            .collect();
        if let Some(sub) = flipped.first() {
            errors.push(format!(
                "network {}: subnet {sub} is {} in EC2 and {} in the config; a subnet does not change kind in place (make a new subnet and move the servers)",
                n.name,
                if o.public_subnets.contains(sub) { "public" } else { "private" },
                if n.public_subnets.contains(sub) { "public" } else { "private" },
            ));
            continue;
        }
        out.extend(network_update(n, o, observed));
    }
    if whole {
        for o in observed.networks.iter().filter(|o| o.owned_by(&fleet.name)) {
            if fleet
                .networks
                .iter()
                .any(|n| n.name == o.name && n.provider == o.provider)
            {
                continue;
            }
            let permitted = opts.allow_destroy
                || o.labels.get(ALLOW_DESTROY).map(String::as_str) == Some("true");
            out.push(NetworkChange {
                name: o.name.clone(),
                provider: o.provider,
                action: CloudAction::Delete,
                attrs: vec![],
                cost_before: network_price(observed, o.provider, &o.region, o.nat),
                cost_after: None,
                blocked: (!permitted).then(|| format!(
                    "network {}: it would be deleted, but destroying it is not permitted: set `allow_destroy: true` on it in tidekeeper.yaml (apply that first, then remove it), or run `tidekeeper apply --allow-destroy`",
                    o.name
                )),
                desired: None,
                observed: Some(o.clone()),
            });
        }
    }
    (out, errors)
}

fn size_word(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Lightsail => "bundle",
        _ => "type",
    }
}

fn location_word(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Lightsail => "zone",
        ProviderKind::Ec2 => "region",
        _ => "location",
    }
}

fn image_word(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Lightsail => "blueprint",
        _ => "image",
    }
}

/// Is destroying the server of `host` permitted: by `--allow-destroy`, by the
/// label its host's config put on it, or by its `count:` group's config?
fn destroy_permitted(fleet: &Fleet, o: &ObservedServer, opts: PlanOptions) -> bool {
    if opts.allow_destroy || o.labels.get(ALLOW_DESTROY).map(String::as_str) == Some("true") {
        return true;
    }
    // `web-3` after `count:` went down to 2: its group may allow it.
    let group = o
        .name
        .rsplit_once('-')
        .filter(|(_, n)| n.parse::<u32>().is_ok())
        .map(|(g, _)| g);
    fleet.hosts.iter().any(|h| {
        h.name == o.name && h.allow_destroy
            || (group.is_some() && h.group.as_deref() == group && h.allow_destroy)
    })
}

/// The name of the instance a Lightsail resize makes for `host` (Lightsail
/// cannot rename, and the old instance holds the old name until the end).
pub(crate) fn copy_name(host: &str, size: &str) -> String {
    format!("{host}-{size}")
}

fn refusal(c: &CloudChange) -> String {
    let what = match c.action {
        CloudAction::Replace => "replacing it deletes the server and its disk",
        CloudAction::Resize => "the resize deletes the old instance once its copy runs",
        _ => "it would be deleted",
    };
    format!(
        "{} server: {what}, but destroying it is not permitted: set `allow_destroy: true` in its \
         host file (apply that first, then remove the host), or run `tidekeeper apply --allow-destroy`",
        c.host
    )
}

/// Add the `cost:` of machines no provider prices (existing hosts): paid
/// before and after alike.
pub(crate) fn stated_costs(fleet: &Fleet, plan: &mut CloudPlan) {
    for h in &fleet.hosts {
        let Some(c) = &h.cost else { continue };
        let m = Monthly {
            amount: c.monthly,
            currency: currency(&c.currency),
        };
        let line = plan.cost.entry(m.currency).or_default();
        line.prior += m.amount;
        line.proposed += m.amount;
        plan.server_cost.insert(h.name.clone(), (h.provider, m));
    }
}

/// The plan of a fleet without cloud servers: only the stated costs, or
/// None when there are none.
pub(crate) fn costs_only(fleet: &Fleet) -> Option<CloudPlan> {
    let mut plan = CloudPlan::default();
    stated_costs(fleet, &mut plan);
    (!plan.cost.is_empty()).then_some(plan)
}

/// A currency code as the `&'static str` prices carry. Codes are three
/// capitals (checked at validation), so at most 26³ are ever kept.
fn currency(code: &str) -> &'static str {
    static KNOWN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = known.iter().find(|c| **c == code) {
        return c;
    }
    let c: &'static str = Box::leak(code.to_string().into_boxed_str());
    known.push(c);
    c
}

/// Plan the servers of `scope` (None: the whole fleet; only then can servers
/// whose host left the config be deleted): the fleet's costs, a change per
/// server that differs, deletions, and the destroy gate over them all.
pub(crate) fn plan(
    fleet: &Fleet,
    desired: &[DesiredServer],
    observed: &Observed,
    scope: Option<&[String]>,
    opts: PlanOptions,
) -> CloudPlan {
    let Costs { total, per_server } = costs(fleet, desired, observed);
    let hosts: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    let mut plan = CloudPlan {
        fleet: fleet.name.clone(),
        cost: total,
        server_cost: per_server,
        observed: Some(observed.digest(&fleet.name, &hosts)),
        ..Default::default()
    };
    let (twice, errors) = doubled(fleet, observed);
    plan.errors.extend(errors);
    let in_scope = |host: &str| scope.is_none_or(|s| s.iter().any(|h| h == host));
    let mut changes = Vec::new();
    for d in desired
        .iter()
        .filter(|d| in_scope(&d.host) && !twice.contains(&d.host))
    {
        let found = server_change(fleet, d, observed, opts);
        plan.warnings.extend(found.warning);
        plan.errors.extend(found.error);
        changes.extend(found.change);
    }
    if scope.is_none() {
        changes.extend(deletions(fleet, desired, observed, opts));
    }
    gate_destroys(&mut changes);
    plan.changes = changes;
    let (networks, errors) = plan_networks(fleet, observed, scope.is_none(), opts);
    plan.networks = networks;
    plan.errors.extend(errors);
    hold_networks_in_use(fleet, observed, &mut plan);
    plan
}

/// A network is deleted only once no server is in it: one whose server
/// stays (its deletion refused, or not planned) keeps it, and says why.
fn hold_networks_in_use(fleet: &Fleet, observed: &Observed, plan: &mut CloudPlan) {
    for n in plan
        .networks
        .iter_mut()
        .filter(|n| n.action == CloudAction::Delete && n.blocked.is_none())
    {
        let staying: Vec<&str> = observed
            .servers
            .iter()
            .filter(|o| o.provider == n.provider && o.owned_by(&fleet.name))
            .filter(|o| o.networks.iter().any(|(name, _)| *name == n.name))
            // …unless a change takes it out first (deleted, replaced
            // elsewhere, or detached in place), as apply runs those first.
            .filter(|o| {
                !plan.changes.iter().any(|c| {
                    c.host == o.name
                        && c.blocked.is_none()
                        && c.desired
                            .as_ref()
                            .is_none_or(|d| !d.networks.iter().any(|x| x.name == n.name))
                })
            })
            .map(|o| o.name.as_str())
            .collect();
        if !staying.is_empty() {
            n.blocked = Some(format!(
                "network {}: it would be deleted, but {} still in it; delete or move those servers first",
                n.name,
                match staying.as_slice() {
                    [one] => format!("server {one} is"),
                    many => format!("servers {} are", many.join(", ")),
                }
            ));
        }
    }
}

/// What a fleet pays a month, now and once a plan is applied.
#[derive(Debug, Default)]
struct Costs {
    /// Per currency: the stated costs, the servers the fleet has now
    /// (prior) and the servers it asks for (proposed).
    total: BTreeMap<&'static str, CostLine>,
    /// What each host's server costs once the plan is applied.
    per_server: BTreeMap<String, (ProviderKind, Monthly)>,
}

/// The fleet's monthly costs: what it states for machines no provider
/// prices, what its servers cost now, and what the servers it asks for
/// would cost (a name taken by a server tidekeeper does not manage is never
/// created, so it costs nothing).
fn costs(fleet: &Fleet, desired: &[DesiredServer], observed: &Observed) -> Costs {
    let mut plan = CloudPlan::default();
    stated_costs(fleet, &mut plan);
    let mut out = Costs {
        total: plan.cost,
        per_server: plan.server_cost,
    };
    let mut add = |m: Option<Monthly>, prior: bool| {
        if let Some(m) = m {
            let line = out.total.entry(m.currency).or_default();
            if prior {
                line.prior += m.amount;
            } else {
                line.proposed += m.amount;
            }
        }
    };
    for o in observed.servers.iter().filter(|o| o.owned_by(&fleet.name)) {
        add(observed.server_price(o).map(|p| p.monthly), true);
    }
    let mut priced = Vec::new();
    for d in desired {
        let clash = observed
            .server(d.provider, &d.host)
            .filter(|o| !o.owned_by(&fleet.name));
        if clash.is_none() {
            let m = observed.desired_price(d).map(|p| p.monthly);
            add(m, false);
            if let Some(m) = m {
                priced.push((d.host.clone(), (d.provider, m)));
            }
        }
    }
    out.per_server.extend(priced);
    // An EC2 VPC's NAT gateway, as it is and as the fleet asks.
    for o in observed.networks.iter().filter(|o| o.owned_by(&fleet.name)) {
        add(network_price(observed, o.provider, &o.region, o.nat), true);
    }
    for n in &fleet.networks {
        let have = find_network(observed, &fleet.name, n);
        let region = have.map_or(n.region.as_str(), |o| o.region.as_str());
        // A declared network no host names is not made, nor deleted: what
        // it has now it keeps.
        let nat = if used_networks(fleet).any(|u| u.name == n.name) {
            n.nat
        } else {
            have.is_some_and(|o| o.owned_by(&fleet.name) && o.nat)
        };
        add(network_price(observed, n.provider, region, nat), false);
    }
    out
}

/// Hosts with two servers: a Lightsail resize stopped between making the
/// copy and deleting the old instance. Which holds the newer data is for a
/// person to say: such hosts are not planned, and each is an error.
fn doubled(fleet: &Fleet, observed: &Observed) -> (Vec<String>, Vec<String>) {
    let mut claimed: Vec<(ProviderKind, &str, Vec<&str>)> = Vec::new();
    for o in observed.servers.iter().filter(|o| o.owned_by(&fleet.name)) {
        match claimed
            .iter_mut()
            .find(|(p, h, _)| *p == o.provider && *h == o.name)
        {
            Some((_, _, ids)) => ids.push(&o.id),
            None => claimed.push((o.provider, &o.name, vec![&o.id])),
        }
    }
    claimed
        .iter()
        .filter(|(_, _, ids)| ids.len() > 1)
        .map(|(p, host, ids)| {
            let error = format!(
                "{host}: {} {} servers are this host ({}); a resize stopped between making the \
                 copy and deleting the old one. Check which holds the data, delete the other \
                 in the provider's console, and run again",
                ids.len(),
                provider_name(*p),
                ids.join(", ")
            );
            (host.to_string(), error)
        })
        .unzip()
}

/// What planning one desired server found.
#[derive(Debug, Default)]
struct ServerPlan {
    change: Option<CloudChange>,
    /// What stops it from being planned (the plan cannot be applied).
    error: Option<String>,
    warning: Option<String>,
}

/// The change that makes the server `d` as the config asks: created when
/// there is none, changed where it differs, nothing when it is as asked.
fn server_change(
    fleet: &Fleet,
    d: &DesiredServer,
    observed: &Observed,
    opts: PlanOptions,
) -> ServerPlan {
    let mut out = ServerPlan::default();
    let list = observed.prices.get(&d.provider);
    if let Some(list) = list
        && !list.monthly.keys().any(|(s, _)| *s == d.size)
    {
        out.error = Some(format!(
            "{}: the {} {} {:?} is not offered; it offers: {}",
            d.host,
            provider_name(d.provider),
            size_word(d.provider),
            d.size,
            list.sizes().join(", ")
        ));
        return out;
    }
    let after = observed.desired_price(d).map(|p| p.monthly);
    if list.is_some() && after.is_none() {
        out.warning = Some(format!(
            "{}: no price for {} in {}; its cost is not counted",
            d.host, d.size, d.location
        ));
    }
    // An image chosen by `OWNER/NAME`: the AMI it chose when observed is
    // what the change launches (and shows), so apply does what the plan said.
    let chosen = match chosen_image(d, observed) {
        Ok(c) => c,
        Err(Unchosen::NoMatch(why)) => {
            out.error = Some(why);
            return out;
        }
        Err(Unchosen::NotLookedUp(why)) => {
            out.warning = Some(why);
            None
        }
    };
    if let Some(why) = architecture_mismatch(d, chosen.or_else(|| described(d, observed))) {
        out.error = Some(why);
        return out;
    }
    let pinned = match chosen {
        Some(img) => DesiredServer {
            image: img.id.clone(),
            ..d.clone()
        },
        None => d.clone(),
    };
    let Some(o) = observed.server(d.provider, &d.host) else {
        let mut change = creation(&pinned, after);
        if let Some(img) = chosen
            && let Some(a) = change.attrs.iter_mut().find(|a| a.name == "image")
        {
            a.after = Some(format!("{} ({}, {})", img.name, img.id, d.image));
        }
        out.change = Some(change);
        return out;
    };
    if !o.owned_by(&fleet.name) {
        out.error = Some(format!(
            "{}: a {} server named {:?} already exists but is not managed by tidekeeper for \
             fleet {:?} (it lacks the labels managed-by=tidekeeper, tidekeeper-fleet={}); it is \
             left alone. Rename the host, or adopt the server by adding those labels to it",
            d.host,
            provider_name(d.provider),
            o.name,
            fleet.name,
            fleet.name
        ));
        return out;
    }
    let diff = differences(d, o, observed);
    if diff.attrs.is_empty() {
        return out;
    }
    let action = diff.action();
    out.change = Some(CloudChange {
        host: d.host.clone(),
        provider: d.provider,
        action,
        reason: diff.reason(d, o),
        attrs: diff.attrs,
        cost_before: observed.server_price(o).map(|p| p.monthly),
        cost_after: after,
        allow_destroy: !(action == CloudAction::Replace || diff.copy)
            || destroy_permitted(fleet, o, opts),
        blocked: None,
        desired: Some(pinned),
        observed: Some(o.clone()),
    });
    out
}

/// Why a server's image filter chose no image.
enum Unchosen {
    /// The provider has no image it matches: the plan cannot be applied.
    NoMatch(String),
    /// It was not looked up: a proposal's new filter (the daemon looks up
    /// the base's), chosen when the change is planned on the base.
    NotLookedUp(String),
}

/// The image `d`'s `OWNER/NAME` filter chose when observed; None for an
/// image given by id or name.
fn chosen_image<'a>(
    d: &DesiredServer,
    observed: &'a Observed,
) -> Result<Option<&'a super::ImageInfo>, Unchosen> {
    let Some((owner, name)) = crate::model::desired::ami_filter(&d.image) else {
        return Ok(None);
    };
    if d.provider != ProviderKind::Ec2 {
        return Ok(None);
    }
    match observed.images.get(&d.image) {
        Some(Some(img)) => Ok(Some(img)),
        Some(None) => Err(Unchosen::NoMatch(format!(
            "{}: no available AMI of account {owner} is named like {name:?}; list them with \
             `aws ec2 describe-images --owners {owner} --filters 'Name=name,Values={name}'`",
            d.host
        ))),
        None => Err(Unchosen::NotLookedUp(format!(
            "{}: the AMI for {} is chosen when this is planned on the base branch \
             (a proposal's new image filters are not looked up)",
            d.host, d.image
        ))),
    }
}

/// The image `d` names by id, as the provider described it.
fn described<'a>(d: &DesiredServer, observed: &'a Observed) -> Option<&'a super::ImageInfo> {
    observed.images.get(&d.image).and_then(Option::as_ref)
}

/// Why EC2 would refuse to run `d`'s image on its instance type: an arm64
/// (Graviton) type needs an arm64 AMI, every other type an x86_64 one.
fn architecture_mismatch(d: &DesiredServer, image: Option<&super::ImageInfo>) -> Option<String> {
    let img = image.filter(|_| d.provider == ProviderKind::Ec2)?;
    let runs = super::ec2::type_architecture(&d.size);
    if img.architecture.is_empty() || img.architecture == runs {
        return None;
    }
    Some(format!(
        "{}: a {} runs {runs} programs, but image {} ({}) is built for {}: choose an {runs} image \
         (Debian's are named debian-12-{}-*) or an instance type for {}",
        d.host,
        d.size,
        img.name,
        img.id,
        img.architecture,
        if runs == "arm64" { "arm64" } else { "amd64" },
        img.architecture
    ))
}

/// Is server image `have` what `d` asks for? An `OWNER/NAME` filter asks
/// for any image of that owner and name, not only the newest: a server
/// is never replaced because a newer image came out. An image that can no
/// longer be described (deregistered) is not judged.
fn same_image(d: &DesiredServer, have: &str, observed: &Observed) -> bool {
    let Some((owner, name)) =
        crate::model::desired::ami_filter(&d.image).filter(|_| d.provider == ProviderKind::Ec2)
    else {
        return have == d.image;
    };
    match observed.images.get(have) {
        Some(Some(img)) => {
            let alias = matches!(owner, "amazon" | "aws-marketplace" | "self");
            (alias || img.owner == owner)
                && crate::model::desired::ami_name_matches(name, &img.name)
        }
        _ => true,
    }
}

/// A server to create.
fn creation(d: &DesiredServer, after: Option<Monthly>) -> CloudChange {
    let mut attrs = vec![
        attr(size_word(d.provider), None, Some(d.size.clone())),
        attr(image_word(d.provider), None, Some(d.image.clone())),
        attr(location_word(d.provider), None, Some(d.location.clone())),
    ];
    if !d.networks.is_empty() {
        attrs.push(attr("networks", None, Some(networks_text(&d.networks))));
    }
    if let Some(e) = &d.ec2 {
        attrs.extend(ec2_attrs(e));
    }
    CloudChange {
        host: d.host.clone(),
        provider: d.provider,
        action: CloudAction::Create,
        attrs,
        reason: None,
        cost_before: None,
        cost_after: after,
        allow_destroy: d.allow_destroy,
        blocked: None,
        desired: Some(d.clone()),
        observed: None,
    }
}

/// What a new EC2 instance gets besides type, AMI and region.
fn ec2_attrs(e: &crate::model::desired::Ec2Server) -> Vec<Attr> {
    let subnet = match &e.network_subnet {
        Some(cidr) => format!("{cidr} of the network"),
        None => e.subnet.clone(),
    };
    let mut attrs = vec![attr("subnet", None, Some(subnet))];
    if let Some(ip) = &e.private_ip {
        attrs.push(attr("private ip", None, Some(ip.clone())));
    }
    let size = e
        .root_gb
        .map(|g| format!("{g} GB"))
        .unwrap_or_else(|| "the AMI's size".into());
    attrs.push(attr(
        "root volume",
        None,
        Some(format!("{size} {}", e.root_type)),
    ));
    attrs.push(attr("metadata", None, Some("IMDSv2 required".into())));
    if e.termination_protection {
        attrs.push(attr("termination protection", None, Some("on".into())));
    }
    attrs
}

/// How a server differs from what the config asks.
#[derive(Debug, Default)]
struct Differences {
    attrs: Vec<Attr>,
    /// Why it must be replaced (what cannot change in place).
    replace: Vec<String>,
    resize: bool,
    /// A Lightsail resize: a new instance from a snapshot of this one.
    copy: bool,
}

impl Differences {
    fn action(&self) -> CloudAction {
        if !self.replace.is_empty() {
            CloudAction::Replace
        } else if self.resize {
            CloudAction::Resize
        } else {
            CloudAction::Update
        }
    }

    /// Why a replace or a resize, in words.
    fn reason(&self, d: &DesiredServer, o: &ObservedServer) -> Option<String> {
        match self.action() {
            CloudAction::Replace => Some(self.replace.join("; ") + "; the disk is not kept"),
            CloudAction::Resize if self.copy => Some(format!(
                "Lightsail cannot change an instance's bundle in place: a snapshot is taken, \
                 a new instance {:?} is made from it with the new bundle and a new host key, {}, \
                 and the old instance is deleted; its disk and data are kept (what is written \
                 during the copy is not)",
                copy_name(&d.host, &d.size),
                if o.static_ip || d.static_ip {
                    "the static IP moves to it"
                } else {
                    "its public address changes (no static IP)"
                }
            )),
            CloudAction::Resize if d.provider == ProviderKind::Ec2 => Some(
                "EC2 changes an instance type only while it is stopped: the instance is stopped, \
                 its type changed and it is started again; its EBS volumes and data are kept \
                 (its public IPv4 address, unless an Elastic IP, changes)"
                    .into(),
            ),
            CloudAction::Resize => {
                Some("the server is stopped for the change and started again; its disk and data are kept".into())
            }
            _ => None,
        }
    }
}

/// An EC2 instance's subnet and private address are chosen when it is
/// launched: another network, subnet or address is a new instance.
fn ec2_placement(
    d: &DesiredServer,
    e: &crate::model::desired::Ec2Server,
    o: &ObservedServer,
    out: &mut Differences,
) {
    let before = out.attrs.len();
    // In a network of tidekeeper.yaml: the network and address; placed by
    // subnet id: that subnet and address (whoever's network it is part of).
    if !d.networks.is_empty() {
        if networks_differ(d, o) {
            out.attrs.push(attr(
                "networks",
                Some(observed_networks_text(&o.networks)),
                Some(networks_text(&d.networks)),
            ));
        }
    } else {
        if !e.subnet.is_empty() && o.subnet.as_deref().is_some_and(|s| s != e.subnet) {
            out.attrs
                .push(attr("subnet", o.subnet.clone(), Some(e.subnet.clone())));
        }
        if let Some(ip) = e
            .private_ip
            .as_ref()
            .filter(|ip| o.private_address.as_ref() != Some(*ip))
        {
            out.attrs.push(attr(
                "private ip",
                o.private_address.clone(),
                Some(ip.clone()),
            ));
        }
    }
    if out.attrs.len() > before {
        out.replace.push(
            "EC2 places an instance in its subnet, at its private address, only when it is launched".into(),
        );
    }
}

/// What differs between server `o` and what the config asks (`d`), and
/// what of it cannot change in place.
fn differences(d: &DesiredServer, o: &ObservedServer, observed: &Observed) -> Differences {
    let mut out = Differences::default();
    if o.location != d.location {
        out.attrs.push(attr(
            location_word(d.provider),
            Some(o.location.clone()),
            Some(d.location.clone()),
        ));
        out.replace.push(format!(
            "a server cannot move to another {}",
            location_word(d.provider)
        ));
    }
    if let Some(img) = &o.image
        && !same_image(d, img, observed)
    {
        out.attrs.push(attr(
            image_word(d.provider),
            Some(img.clone()),
            Some(d.image.clone()),
        ));
        out.replace.push(format!(
            "the {} is chosen only when a server is created",
            image_word(d.provider)
        ));
    }
    if let Some(e) = &d.ec2 {
        ec2_placement(d, e, o, &mut out);
    }
    out.resize = o.size != d.size;
    if out.resize {
        out.attrs.push(attr(
            size_word(d.provider),
            Some(o.size.clone()),
            Some(d.size.clone()),
        ));
        if d.provider == ProviderKind::Lightsail {
            match resize_loses_disk(d, o, observed) {
                Some(why) => out.replace.push(why),
                None => out.copy = true,
            }
        }
    }
    out.attrs.extend(in_place(d, o));
    // A new server (a replace, a copy) gets a new key, rotated after it is made.
    if out.replace.is_empty() && !out.copy && needs_key_rotation(o) {
        out.attrs.push(attr(
            KEY_ROTATION,
            Some("the key cloud-init installed (readable in the user data)".into()),
            Some("a key generated on the server".into()),
        ));
    }
    out
}

/// The attribute of a change that rotates the server's host key.
pub(crate) const KEY_ROTATION: &str = "host key";

/// Does the running server still offer the host key tidekeeper sent in its
/// user data (made by this version, or an older one that did not rotate)?
/// Then the next apply rotates it. An imported server's key was not sent
/// by tidekeeper: it is pinned in known_hosts and left as it is.
pub(crate) fn needs_key_rotation(o: &ObservedServer) -> bool {
    o.state == super::PowerState::Running
        && o.labels.contains_key(super::HOST_KEY)
        && !o.labels.contains_key(super::HOST_KEY_ROTATED)
}

/// Why a Lightsail resize cannot keep the disk (a smaller one), if so.
fn resize_loses_disk(d: &DesiredServer, o: &ObservedServer, observed: &Observed) -> Option<String> {
    let disk = |size: &str| {
        observed
            .prices
            .get(&d.provider)
            .and_then(|l| l.disk_gb.get(size))
            .copied()
    };
    match (disk(&o.size), disk(&d.size)) {
        (Some(old), Some(new)) if new < old => Some(format!(
            "the new bundle's disk ({new} GB) is smaller than the old one's \
             ({old} GB), and Lightsail makes an instance from a snapshot only onto \
             a disk at least as large: the old disk is not kept; keep the data \
             elsewhere first"
        )),
        _ => None,
    }
}

/// What differs that changes in place: labels, firewall or public ports,
/// networks, a static IP to attach.
fn in_place(d: &DesiredServer, o: &ObservedServer) -> Vec<Attr> {
    let mut attrs = Vec::new();
    let mut have_labels = o.labels.clone();
    have_labels.retain(|k, _| !super::is_host_key_label(k));
    if have_labels != d.labels {
        attrs.push(attr(
            "labels",
            Some(labels_text(&have_labels)),
            Some(labels_text(&d.labels)),
        ));
    }
    let have_rules = o.firewall.clone().unwrap_or_default();
    // No rules in the config: Lightsail's default ports are left alone,
    // and a Hetzner firewall tidekeeper made earlier is removed.
    let managed =
        !d.firewall.is_empty() || (o.firewall.is_some() && d.provider == ProviderKind::Hetzner);
    if managed && !super::desired::same_rules(&have_rules, &d.firewall) {
        attrs.push(attr(
            match d.provider {
                ProviderKind::Lightsail => "public ports",
                ProviderKind::Ec2 => "security group",
                _ => "firewall",
            },
            Some(rules_text(&have_rules)),
            Some(rules_text(&d.firewall)),
        ));
    }
    if let Some(want) = d.ec2.as_ref().and_then(|e| e.egress.as_ref()) {
        let have = o.egress.clone().unwrap_or_default();
        if !super::desired::same_rules(&have, want) {
            attrs.push(attr(
                "outbound rules",
                Some(rules_text(&have)),
                Some(rules_text(want)),
            ));
        }
    }
    // (An EC2 instance's network is its placement: see `ec2_placement`.)
    if d.provider != ProviderKind::Ec2 && networks_differ(d, o) {
        attrs.push(attr(
            "networks",
            Some(observed_networks_text(&o.networks)),
            Some(networks_text(&d.networks)),
        ));
    }
    if let Some(e) = &d.ec2
        && e.termination_protection != o.delete_protection
    {
        let word = |on: bool| if on { "on" } else { "off" }.to_string();
        attrs.push(attr(
            "termination protection",
            Some(word(o.delete_protection)),
            Some(word(e.termination_protection)),
        ));
    }
    if d.static_ip && !o.static_ip {
        attrs.push(attr(
            "static ip",
            Some("none".into()),
            Some("attached".into()),
        ));
    }
    attrs
}

/// The fleet's servers whose hosts left the config: deleted (gated like
/// every destroy).
fn deletions(
    fleet: &Fleet,
    desired: &[DesiredServer],
    observed: &Observed,
    opts: PlanOptions,
) -> Vec<CloudChange> {
    observed
        .servers
        .iter()
        .filter(|o| o.owned_by(&fleet.name))
        .filter(|o| {
            !desired
                .iter()
                .any(|d| d.provider == o.provider && d.host == o.name)
        })
        .map(|o| CloudChange {
            host: o.name.clone(),
            provider: o.provider,
            action: CloudAction::Delete,
            attrs: vec![],
            reason: Some("its host is no longer in the config".into()),
            cost_before: observed.server_price(o).map(|p| p.monthly),
            cost_after: None,
            allow_destroy: destroy_permitted(fleet, o, opts),
            // EC2 refuses to terminate it; say so before apply tries.
            blocked: (o.provider == ProviderKind::Ec2 && o.delete_protection).then(|| {
                format!(
                    "{} server: it would be terminated, but EC2 termination protection is on \
                     for instance {}: turn it off (termination_protection: false, applied \
                     while the host is still in the config) before removing the host",
                    o.name, o.id
                )
            }),
            desired: None,
            observed: Some(o.clone()),
        })
        .collect()
}

/// The destroy gate: a change that ends a server (or a resize that deletes
/// the old instance) without permission is refused, saying how to permit it.
fn gate_destroys(changes: &mut [CloudChange]) {
    for c in changes {
        if (c.action.destroys() || c.action == CloudAction::Resize) && !c.allow_destroy {
            c.blocked = Some(refusal(c));
        }
    }
}

pub(crate) fn provider_name(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Hetzner => "Hetzner",
        ProviderKind::Lightsail => "Lightsail",
        ProviderKind::Ec2 => "EC2",
        ProviderKind::Existing => "existing",
        ProviderKind::Local => "local",
    }
}

pub(crate) fn money(m: &Monthly) -> String {
    format!("{:.2} {}", m.amount, m.currency)
}

fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{x:.2}")
    } else {
        format!("{x:.2}")
    }
}

/// `8.21 → 15.59 EUR/month (+7.38)`
pub(crate) fn cost_text(c: &CloudChange) -> String {
    cost_words(c.cost_before, c.cost_after)
}

fn cost_words(before: Option<Monthly>, after: Option<Monthly>) -> String {
    match (&before, &after) {
        (None, Some(a)) => format!("+{:.2} {}/month", a.amount, a.currency),
        (Some(b), None) => format!("-{:.2} {}/month", b.amount, b.currency),
        (Some(b), Some(a)) if b.currency == a.currency => {
            if (a.amount - b.amount).abs() < 0.005 {
                format!("{:.2} {}/month (no change)", a.amount, a.currency)
            } else {
                format!(
                    "{:.2} → {:.2} {}/month ({})",
                    b.amount,
                    a.amount,
                    a.currency,
                    signed(a.amount - b.amount)
                )
            }
        }
        (Some(b), Some(a)) => format!("{} → {} a month", money(b), money(a)),
        (None, None) => "cost unknown".into(),
    }
}

/// `Monthly cost: 100.00 → 107.38 EUR (+7.38)`, one entry per currency.
pub(crate) fn cost_summary(cost: &BTreeMap<&'static str, CostLine>) -> String {
    if cost.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = cost
        .iter()
        .map(|(cur, l)| {
            format!(
                "{:.2} → {:.2} {cur} ({})",
                l.prior,
                l.proposed,
                signed(l.delta())
            )
        })
        .collect();
    format!("Monthly cost: {}\n", parts.join("; "))
}

/// One row of a plan's cost table: a server whose monthly price the plan
/// changes, or (`total`) the fleet's monthly cost in one currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CostRow {
    /// The server's host (`fleet` on a total).
    pub server: String,
    /// Its provider (empty on a total).
    pub provider: String,
    /// The monthly price now and after the plan (`—`: none).
    pub now: String,
    pub after: String,
    /// After less now, signed, with its currency.
    pub change: String,
    #[serde(default)]
    pub total: bool,
}

/// The servers whose monthly cost a plan changes, per host and provider,
/// then the totals per currency (none when no price changes).
pub(crate) fn cost_rows(plan: &CloudPlan) -> Vec<CostRow> {
    let priced: Vec<&CloudChange> = plan
        .changes
        .iter()
        .filter(|c| {
            let (b, a) = (
                c.cost_before.map(|m| m.amount),
                c.cost_after.map(|m| m.amount),
            );
            b != a && (b.is_some() || a.is_some())
        })
        .collect();
    if priced.is_empty() {
        return vec![];
    }
    let or_dash = |m: Option<Monthly>| m.map(|m| money(&m)).unwrap_or_else(|| "—".into());
    let mut rows: Vec<CostRow> = priced
        .into_iter()
        .map(|c| {
            let cur = c
                .cost_after
                .or(c.cost_before)
                .map(|m| m.currency)
                .unwrap_or("");
            let delta =
                c.cost_after.map_or(0.0, |m| m.amount) - c.cost_before.map_or(0.0, |m| m.amount);
            CostRow {
                server: c.host.clone(),
                provider: provider_name(c.provider).to_string(),
                now: or_dash(c.cost_before),
                after: or_dash(c.cost_after),
                change: format!("{} {cur}", signed(delta)),
                total: false,
            }
        })
        .collect();
    rows.extend(plan.cost.iter().map(|(cur, l)| CostRow {
        server: "fleet".into(),
        provider: String::new(),
        now: format!("{:.2} {cur}", l.prior),
        after: format!("{:.2} {cur}", l.proposed),
        change: format!("{} {cur}", signed(l.delta())),
        total: true,
    }));
    rows
}

/// [`cost_rows`] as a markdown table (empty when no price changes).
pub(crate) fn cost_table(plan: &CloudPlan) -> String {
    let rows = cost_rows(plan);
    if rows.is_empty() {
        return String::new();
    }
    let mut t =
        String::from("| server | provider | now | after | change |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        if r.total {
            let _ = writeln!(
                t,
                "| **{}** | | {} | {} | **{}** |",
                r.server, r.now, r.after, r.change
            );
        } else {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                r.server, r.provider, r.now, r.after, r.change
            );
        }
    }
    t
}

/// The cloud part of a plan, as people read it.
/// A change's attributes, a line each: `name: before → after`.
fn attr_lines(s: &mut String, attrs: &[Attr]) {
    for a in attrs {
        let line = match (&a.before, &a.after) {
            (Some(b), Some(x)) => format!("{}: {b} → {x}", a.name),
            (None, Some(x)) => format!("{}: {x}", a.name),
            (Some(b), None) => format!("- {}: {b}", a.name),
            (None, None) => a.name.clone(),
        };
        let _ = writeln!(s, "        {line}");
    }
}

pub(crate) fn text(p: &CloudPlan, color: bool) -> String {
    let (green, yellow, red, bold, reset) = if color {
        ("\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "", "")
    };
    let mut s = String::new();
    if !p.networks.is_empty() {
        s.push_str("Private networks\n");
        for n in &p.networks {
            let col = match n.action {
                CloudAction::Create => green,
                CloudAction::Delete => red,
                _ => yellow,
            };
            let billed = n.desired.as_ref().is_some_and(|d| d.nat)
                || n.observed.as_ref().is_some_and(|o| o.nat);
            let cost = match (n.cost_before, n.cost_after) {
                // A NAT gateway in a region the price table lacks.
                (None, None) if billed => "cost unknown".to_string(),
                (None, None) => "free".to_string(),
                (b, a) => cost_words(b, a),
            };
            let _ = writeln!(
                s,
                "  {col}{:>3}{reset} {bold}{} network{reset} ({})  {cost}",
                n.action.symbol(),
                n.name,
                provider_name(n.provider)
            );
            attr_lines(&mut s, &n.attrs);
            if let Some(b) = &n.blocked {
                let _ = writeln!(s, "  {red}blocked:{reset} {b}");
            }
        }
        s.push('\n');
    }
    if p.changes.is_empty()
        && p.errors.is_empty()
        && p.warnings.is_empty()
        && p.unavailable.is_none()
    {
        return s;
    }
    s.push_str("Cloud servers\n");
    for c in &p.changes {
        let col = match c.action {
            CloudAction::Create => green,
            CloudAction::Update | CloudAction::Resize => yellow,
            CloudAction::Replace | CloudAction::Delete => red,
        };
        let _ = write!(
            s,
            "  {col}{:>3}{reset} {bold}{} server{reset} ({}, {})  {}",
            c.action.symbol(),
            c.host,
            provider_name(c.provider),
            c.action.word(),
            cost_text(c)
        );
        s.push('\n');
        if let Some(r) = &c.reason {
            let _ = writeln!(s, "        why: {r}");
        }
        if let Some(note) = super::ec2_prices::plan_note(c) {
            let _ = writeln!(s, "        prices: {note}");
        }
        attr_lines(&mut s, &c.attrs);
        if let Some(b) = &c.blocked {
            let _ = writeln!(s, "  {red}blocked:{reset} {b}");
        }
    }
    if let Some(u) = &p.unavailable {
        let _ = writeln!(s, "  {red}error:{reset} {u}");
    }
    for e in &p.errors {
        let _ = writeln!(s, "  {red}error:{reset} {e}");
    }
    for w in &p.warnings {
        let _ = writeln!(s, "  {yellow}warning:{reset} {w}");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{FLEET, MANAGED_BY, PowerState, PriceList};
    use crate::model::desired::CloudPort;

    fn fleet(hosts: &str) -> Fleet {
        let mut t = crate::source::ConfigTree::default();
        t.insert_file(
            "tidekeeper.yaml",
            b"fleet: acme\ndefaults: {ssh: {from: [10.0.0.2/32]}}\nproviders: {lightsail: {region: eu-central-1}}\n".to_vec(),
        );
        for (i, h) in hosts.split("---\n").enumerate() {
            t.insert_file(format!("hosts/h{i}.yaml"), h.as_bytes().to_vec());
        }
        crate::model::load(&t).expect("valid fleet")
    }

    fn prices() -> BTreeMap<ProviderKind, PriceList> {
        let mut h = PriceList {
            currency: "EUR",
            bills_stopped: true,
            ..Default::default()
        };
        h.monthly.insert(("cpx21".into(), "fsn1".into()), 8.21);
        h.monthly.insert(("cpx31".into(), "fsn1".into()), 15.59);
        let mut l = PriceList {
            currency: "USD",
            bills_stopped: true,
            ..Default::default()
        };
        l.monthly.insert(("medium_3_0".into(), "*".into()), 24.0);
        l.monthly.insert(("large_3_0".into(), "*".into()), 44.0);
        BTreeMap::from([(ProviderKind::Hetzner, h), (ProviderKind::Lightsail, l)])
    }

    fn server(name: &str, p: ProviderKind, size: &str, loc: &str, owned: bool) -> ObservedServer {
        let mut labels = BTreeMap::new();
        if owned {
            labels = crate::cloud::desired::ownership("acme");
        }
        ObservedServer {
            provider: p,
            id: name.into(),
            name: name.into(),
            size: size.into(),
            image: Some(
                if p == ProviderKind::Hetzner {
                    "debian-12"
                } else {
                    "debian_12"
                }
                .into(),
            ),
            location: loc.into(),
            labels,
            state: PowerState::Running,
            address: Some("10.0.0.1".into()),
            private_address: None,
            networks: vec![],
            firewall: None,
            static_ip: false,
            delete_protection: true,
            subnet: None,
            volume_gb: None,
            public_ipv4: false,
            egress: None,
        }
    }

    const WEB: &str =
        "name: web\nprovider: hetzner\nserver: {type: cpx31, image: debian-12, location: fsn1}\n";
    const AGENT: &str = "name: agent\nprovider: lightsail\nssh: {user: admin, sudo: true}\nserver: {bundle: large_3_0, blueprint: debian_12, zone: eu-central-1a}\n";

    fn run(f: &Fleet, servers: Vec<ObservedServer>, opts: PlanOptions) -> CloudPlan {
        let obs = Observed {
            servers,
            prices: prices(),
            networks: vec![],
            ..Default::default()
        };
        plan(f, &crate::cloud::desired::servers(f), &obs, None, opts)
    }

    #[test]
    fn an_empty_account_plans_creates_with_their_monthly_cost() {
        let f = fleet(&format!("{WEB}---\n{AGENT}"));
        let p = run(&f, vec![], PlanOptions::default());
        let actions: Vec<_> = p
            .changes
            .iter()
            .map(|c| (c.host.as_str(), c.action))
            .collect();
        assert_eq!(
            actions,
            [("web", CloudAction::Create), ("agent", CloudAction::Create)]
        );
        assert_eq!(
            p.cost["EUR"],
            CostLine {
                prior: 0.0,
                proposed: 15.59
            }
        );
        assert_eq!(
            p.cost["USD"],
            CostLine {
                prior: 0.0,
                proposed: 44.0
            }
        );
        assert_eq!(cost_text(&p.changes[0]), "+15.59 EUR/month");
    }

    #[test]
    fn a_hetzner_type_change_is_a_resize_with_its_cost_delta() {
        let f = fleet(WEB);
        let p = run(
            &f,
            vec![server("web", ProviderKind::Hetzner, "cpx21", "fsn1", true)],
            PlanOptions::default(),
        );
        assert_eq!(p.changes.len(), 1);
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Resize);
        assert_eq!(cost_text(c), "8.21 → 15.59 EUR/month (+7.38)");
        assert!(c.blocked.is_none());
        assert!((p.cost["EUR"].delta() - 7.38).abs() < 1e-9);
        // Per server and provider, then the fleet, as a table for the PR comment.
        let t = cost_table(&p);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows[0], "| server | provider | now | after | change |");
        assert_eq!(
            rows[2],
            "| web | Hetzner | 8.21 EUR | 15.59 EUR | +7.38 EUR |"
        );
        assert!(
            rows[3].starts_with("| **fleet** | |") && rows[3].ends_with("**+7.38 EUR** |"),
            "{t}"
        );
        // The same rows for the dashboard, the fleet's last.
        let r = cost_rows(&p);
        assert_eq!(
            (
                r[0].server.as_str(),
                r[0].provider.as_str(),
                r[0].change.as_str(),
                r[0].total
            ),
            ("web", "Hetzner", "+7.38 EUR", false)
        );
        assert_eq!(
            (r[1].server.as_str(), r[1].change.as_str(), r[1].total),
            ("fleet", "+7.38 EUR", true),
            "{r:?}"
        );
        // No price change: no table.
        let same = run(
            &f,
            vec![server("web", ProviderKind::Hetzner, "cpx31", "fsn1", true)],
            PlanOptions::default(),
        );
        assert_eq!(cost_table(&same), "", "{same:?}");
        assert!(cost_rows(&same).is_empty());
    }

    #[test]
    fn a_lightsail_bundle_change_copies_the_disk_and_needs_permission_to_delete_the_old_one() {
        let f = fleet(AGENT);
        let have = vec![server(
            "agent",
            ProviderKind::Lightsail,
            "medium_3_0",
            "eu-central-1a",
            true,
        )];
        let p = run(&f, have.clone(), PlanOptions::default());
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Resize);
        assert!(c.new_server(), "the copy is a new instance");
        let why = c.reason.as_deref().unwrap();
        assert!(why.contains("a new instance \"agent-large_3_0\""), "{why}");
        assert!(why.contains("its disk and data are kept"), "{why}");
        assert!(why.contains("its public address changes"), "{why}");
        assert!(c.blocked.as_deref().unwrap().contains("allow_destroy"));
        let p = run(
            &f,
            have,
            PlanOptions {
                allow_destroy: true,
            },
        );
        assert!(p.changes[0].blocked.is_none());
    }

    #[test]
    fn a_lightsail_bundle_with_a_smaller_disk_is_a_replace_that_says_the_disk_is_lost() {
        let f = fleet(&AGENT.replace("large_3_0", "medium_3_0"));
        let have = vec![server(
            "agent",
            ProviderKind::Lightsail,
            "large_3_0",
            "eu-central-1a",
            true,
        )];
        let mut o = Observed {
            servers: have,
            prices: prices(),
            networks: vec![],
            ..Default::default()
        };
        let l = o.prices.get_mut(&ProviderKind::Lightsail).unwrap();
        l.disk_gb.insert("medium_3_0".into(), 80);
        l.disk_gb.insert("large_3_0".into(), 160);
        let desired = crate::cloud::desired::servers(&f);
        let p = plan(&f, &desired, &o, None, PlanOptions::default());
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Replace);
        let why = c.reason.as_deref().unwrap();
        assert!(
            why.contains("disk (80 GB) is smaller than the old one's (160 GB)"),
            "{why}"
        );
        assert!(why.ends_with("the disk is not kept"), "{why}");
    }

    #[test]
    fn two_servers_for_one_host_are_an_error_naming_both_and_nothing_is_planned_for_it() {
        let f = fleet(AGENT);
        let old = server(
            "agent",
            ProviderKind::Lightsail,
            "medium_3_0",
            "eu-central-1a",
            true,
        );
        let mut copy = old.clone();
        copy.id = "agent-large_3_0".into();
        copy.size = "large_3_0".into();
        let p = run(&f, vec![old, copy], PlanOptions::default());
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        let e = p.errors.join("\n");
        assert!(
            e.contains("2 Lightsail servers are this host (agent, agent-large_3_0)"),
            "{e}"
        );
    }

    #[test]
    fn unmanaged_servers_are_never_touched() {
        let f = fleet(WEB);
        let p = run(
            &f,
            vec![
                server("web", ProviderKind::Hetzner, "cpx21", "fsn1", false),
                server("legacy", ProviderKind::Hetzner, "cpx21", "fsn1", false),
            ],
            PlanOptions {
                allow_destroy: true,
            },
        );
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].contains("not managed by tidekeeper"),
            "{}",
            p.errors[0]
        );
        // Neither is counted as the fleet's cost.
        let eur = p.cost.get("EUR").copied().unwrap_or_default();
        assert_eq!((eur.prior, eur.proposed), (0.0, 0.0));
    }

    #[test]
    fn a_removed_host_plans_a_delete_refused_without_permission() {
        let f = fleet(WEB);
        let mut gone = server("old", ProviderKind::Hetzner, "cpx21", "fsn1", true);
        let p = run(&f, vec![gone.clone()], PlanOptions::default());
        let c = p.changes.iter().find(|c| c.host == "old").unwrap();
        assert_eq!(c.action, CloudAction::Delete);
        assert!(c.blocked.is_some());
        assert_eq!(cost_text(c), "-8.21 EUR/month");
        // The label put there while its config said allow_destroy permits it.
        gone.labels.insert(ALLOW_DESTROY.into(), "true".into());
        let p = run(&f, vec![gone], PlanOptions::default());
        assert!(p.changes.iter().all(|c| c.blocked.is_none()));
    }

    #[test]
    fn lowering_count_deletes_the_highest_numbered_with_the_groups_permission() {
        let f = fleet(
            "name: ws\ncount: 1\nallow_destroy: true\nprovider: hetzner\nserver: {type: cpx21, image: debian-12, location: fsn1}\n",
        );
        let mut s1 = server("ws-1", ProviderKind::Hetzner, "cpx21", "fsn1", true);
        s1.labels.insert(ALLOW_DESTROY.into(), "true".into());
        let s2 = server("ws-2", ProviderKind::Hetzner, "cpx21", "fsn1", true);
        let p = run(&f, vec![s1, s2], PlanOptions::default());
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.changes[0].host, "ws-2");
        assert_eq!(p.changes[0].action, CloudAction::Delete);
        assert!(p.changes[0].blocked.is_none());
    }

    #[test]
    fn only_a_key_tidekeeper_sent_in_user_data_is_rotated() {
        let f = fleet(
            "name: web\nprovider: hetzner\nserver:\n  type: cpx31\n  image: debian-12\n  location: fsn1\n",
        );
        let imported = server("web", ProviderKind::Hetzner, "cpx31", "fsn1", true);
        let p = run(&f, vec![imported.clone()], PlanOptions::default());
        assert!(
            p.changes.is_empty(),
            "an imported server's key stays: {:?}",
            p.changes
        );
        let mut made = imported;
        made.labels
            .insert(crate::cloud::HOST_KEY.into(), "ab".repeat(20));
        let p = run(&f, vec![made.clone()], PlanOptions::default());
        let names: Vec<&str> = p.changes[0].attrs.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, [KEY_ROTATION]);
        made.state = crate::cloud::PowerState::Off;
        let p = run(&f, vec![made], PlanOptions::default());
        assert!(
            p.changes.is_empty(),
            "rotated once it runs: {:?}",
            p.changes
        );
    }

    #[test]
    fn labels_and_firewall_rules_update_in_place_and_the_host_key_label_is_ignored() {
        let f = fleet(
            "name: web\nprovider: hetzner\nserver:\n  type: cpx31\n  image: debian-12\n  location: fsn1\n  labels: {role: web}\n  firewall: [{port: \"22\", from: [10.0.0.2/32]}]\n",
        );
        let mut s = server("web", ProviderKind::Hetzner, "cpx31", "fsn1", true);
        s.labels
            .insert(crate::cloud::HOST_KEY.into(), "ab".repeat(20));
        s.labels
            .insert(crate::cloud::HOST_KEY_ROTATED.into(), "true".into());
        let p = run(&f, vec![s.clone()], PlanOptions::default());
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Update);
        let names: Vec<&str> = c.attrs.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["labels", "firewall"]);
        s.labels.insert("role".into(), "web".into());
        s.firewall = Some(vec![CloudPort {
            from_port: 22,
            to_port: 22,
            proto: "tcp".into(),
            from: vec!["10.0.0.2/32".into()],
        }]);
        let p = run(&f, vec![s], PlanOptions::default());
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert!(
            labels_text(&BTreeMap::from([
                (FLEET.to_string(), "acme".to_string()),
                (MANAGED_BY.to_string(), "x".to_string())
            ]))
            .contains("tidekeeper-fleet=acme")
        );
    }

    #[test]
    fn an_unknown_size_names_what_the_provider_offers() {
        let f = fleet(
            "name: web\nprovider: hetzner\nserver: {type: cpx311, image: debian-12, location: fsn1}\n",
        );
        let p = run(&f, vec![], PlanOptions::default());
        assert!(p.changes.is_empty());
        assert!(
            p.errors[0].contains("\"cpx311\" is not offered; it offers: cpx21, cpx31"),
            "{}",
            p.errors[0]
        );
    }

    fn observed(servers: Vec<ObservedServer>) -> Observed {
        Observed {
            servers,
            prices: prices(),
            networks: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn costs_count_what_the_fleet_has_and_what_it_asks_for_but_never_a_clashing_name() {
        let f = fleet(&format!("{WEB}---\n{AGENT}"));
        let desired = crate::cloud::desired::servers(&f);
        let obs = observed(vec![
            server("web", ProviderKind::Hetzner, "cpx21", "fsn1", true),
            server(
                "agent",
                ProviderKind::Lightsail,
                "medium_3_0",
                "eu-central-1a",
                false,
            ),
        ]);
        let c = costs(&f, &desired, &obs);
        assert_eq!(
            c.total["EUR"],
            CostLine {
                prior: 8.21,
                proposed: 15.59
            }
        );
        assert!(
            !c.total.contains_key("USD"),
            "the clash is neither had nor made"
        );
        assert_eq!(c.per_server.len(), 1);
        assert_eq!(c.per_server["web"].1.amount, 15.59);
    }

    #[test]
    fn a_host_with_two_servers_is_not_planned_and_says_why() {
        let f = fleet(AGENT);
        let mut copy = server(
            "agent",
            ProviderKind::Lightsail,
            "large_3_0",
            "eu-central-1a",
            true,
        );
        copy.id = "agent-large".into();
        let obs = observed(vec![
            server(
                "agent",
                ProviderKind::Lightsail,
                "medium_3_0",
                "eu-central-1a",
                true,
            ),
            copy,
        ]);
        let (twice, errors) = doubled(&f, &obs);
        assert_eq!(twice, ["agent"]);
        assert!(errors[0].contains("agent, agent-large"), "{errors:?}");
    }

    #[test]
    fn a_server_as_asked_needs_no_change_and_a_moved_one_is_replaced() {
        let f = fleet(WEB);
        let d = &crate::cloud::desired::servers(&f)[0];
        let same = observed(vec![server(
            "web",
            ProviderKind::Hetzner,
            "cpx31",
            "fsn1",
            true,
        )]);
        let found = server_change(&f, d, &same, PlanOptions::default());
        assert!(found.change.is_none() && found.error.is_none(), "{found:?}");
        let moved = observed(vec![server(
            "web",
            ProviderKind::Hetzner,
            "cpx31",
            "nbg1",
            true,
        )]);
        let c = server_change(&f, d, &moved, PlanOptions::default())
            .change
            .expect("a change");
        assert_eq!(c.action, CloudAction::Replace);
        assert!(!c.allow_destroy, "not permitted without allow_destroy");
        let none = observed(vec![]);
        let c = server_change(&f, d, &none, PlanOptions::default()).change;
        assert_eq!(c.map(|c| c.action), Some(CloudAction::Create));
    }

    #[test]
    fn only_servers_whose_hosts_left_are_deleted_and_the_gate_refuses_them_without_permission() {
        let f = fleet(WEB);
        let desired = crate::cloud::desired::servers(&f);
        let obs = observed(vec![
            server("web", ProviderKind::Hetzner, "cpx31", "fsn1", true),
            server("old", ProviderKind::Hetzner, "cpx21", "fsn1", true),
            server("theirs", ProviderKind::Hetzner, "cpx21", "fsn1", false),
        ]);
        let mut gone = deletions(&f, &desired, &obs, PlanOptions::default());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].host, "old");
        gate_destroys(&mut gone);
        assert!(
            gone[0]
                .blocked
                .as_deref()
                .unwrap()
                .contains("allow_destroy")
        );
        let permitted = PlanOptions {
            allow_destroy: true,
        };
        let mut gone = deletions(&f, &desired, &obs, permitted);
        gate_destroys(&mut gone);
        assert!(gone[0].blocked.is_none());
    }
}
