//! EC2 on-demand prices, in US dollars, as a dated table: EC2's price list
//! API is a separate, large service, and plans must not depend on it.
//! Linux, shared tenancy; monthly figures are hourly × 730.

/// The month the table is of; plans say "prices of" it.
pub(crate) const PRICES_OF: &str = "2026-12";

/// The root volume of an AMI made from a Debian or Amazon Linux image, in
/// GB, where the config does not say.
pub(crate) const AMI_ROOT_GB: u32 = 8;

/// Hours in a billing month, as AWS's own calculator counts.
pub(crate) const HOURS_PER_MONTH: f64 = 730.0;

pub(crate) struct RegionPrices {
    pub region: &'static str,
    /// (instance type, USD per hour).
    pub hourly: &'static [(&'static str, f64)],
    /// EBS gp3, USD per GB-month.
    pub gp3_gb_month: f64,
    /// A public IPv4 address, USD per hour (attached or not).
    pub ipv4_hour: f64,
    /// A NAT gateway, USD per hour (data processed is extra).
    pub nat_hour: f64,
}

/// Spot instances are not priced: their price moves hourly and they can be
/// taken back. What plans may say about them.
pub(crate) const SPOT_NOTE: &str = "a typical range, never promised: the spot price moves \
     and AWS may reclaim a spot instance with two minutes' notice";
/// The share of the on-demand price spot has typically cost, low and high.
pub(crate) const SPOT_RANGE: (f64, f64) = (0.3, 0.5);

pub(crate) const REGIONS: &[RegionPrices] = &[
    RegionPrices {
        region: "us-east-1",
        hourly: &[
            ("t3.nano", 0.0052),
            ("t3.micro", 0.0104),
            ("t3.small", 0.0208),
            ("t3.medium", 0.0416),
            ("t3.large", 0.0832),
            ("t3.xlarge", 0.1664),
            ("t3.2xlarge", 0.3328),
            ("t4g.nano", 0.0042),
            ("t4g.micro", 0.0084),
            ("t4g.small", 0.0168),
            ("t4g.medium", 0.0336),
            ("t4g.large", 0.0672),
            ("t4g.xlarge", 0.1344),
            ("t4g.2xlarge", 0.2688),
            ("m6i.large", 0.096),
            ("m6i.xlarge", 0.192),
            ("m6i.2xlarge", 0.384),
            ("m6i.4xlarge", 0.768),
            ("m7g.medium", 0.0408),
            ("m7g.large", 0.0816),
            ("m7g.xlarge", 0.1632),
            ("m7g.2xlarge", 0.3264),
            ("c7g.medium", 0.0363),
            ("c7g.large", 0.0725),
            ("c7g.xlarge", 0.145),
            ("c7g.2xlarge", 0.29),
        ],
        gp3_gb_month: 0.08,
        ipv4_hour: 0.005,
        nat_hour: 0.045,
    },
    RegionPrices {
        region: "eu-central-1",
        hourly: &[
            ("t3.nano", 0.006),
            ("t3.micro", 0.012),
            ("t3.small", 0.024),
            ("t3.medium", 0.048),
            ("t3.large", 0.096),
            ("t3.xlarge", 0.192),
            ("t3.2xlarge", 0.384),
            ("t4g.nano", 0.0048),
            ("t4g.micro", 0.0096),
            ("t4g.small", 0.0192),
            ("t4g.medium", 0.0384),
            ("t4g.large", 0.0768),
            ("t4g.xlarge", 0.1536),
            ("t4g.2xlarge", 0.3072),
            ("m6i.large", 0.115),
            ("m6i.xlarge", 0.23),
            ("m6i.2xlarge", 0.46),
            ("m6i.4xlarge", 0.92),
            ("m7g.medium", 0.0486),
            ("m7g.large", 0.0972),
            ("m7g.xlarge", 0.1944),
            ("m7g.2xlarge", 0.3888),
            ("c7g.medium", 0.0431),
            ("c7g.large", 0.0862),
            ("c7g.xlarge", 0.1724),
            ("c7g.2xlarge", 0.3448),
        ],
        gp3_gb_month: 0.0952,
        ipv4_hour: 0.005,
        nat_hour: 0.052,
    },
    RegionPrices {
        region: "eu-west-1",
        hourly: &[
            ("t3.nano", 0.0057),
            ("t3.micro", 0.0114),
            ("t3.small", 0.0228),
            ("t3.medium", 0.0456),
            ("t3.large", 0.0912),
            ("t3.xlarge", 0.1824),
            ("t3.2xlarge", 0.3648),
            ("t4g.nano", 0.0046),
            ("t4g.micro", 0.0092),
            ("t4g.small", 0.0184),
            ("t4g.medium", 0.0368),
            ("t4g.large", 0.0736),
            ("t4g.xlarge", 0.1472),
            ("t4g.2xlarge", 0.2944),
            ("m6i.large", 0.107),
            ("m6i.xlarge", 0.214),
            ("m6i.2xlarge", 0.428),
            ("m6i.4xlarge", 0.856),
            ("m7g.medium", 0.0445),
            ("m7g.large", 0.089),
            ("m7g.xlarge", 0.178),
            ("m7g.2xlarge", 0.356),
            ("c7g.medium", 0.0395),
            ("c7g.large", 0.079),
            ("c7g.xlarge", 0.158),
            ("c7g.2xlarge", 0.316),
        ],
        gp3_gb_month: 0.088,
        ipv4_hour: 0.005,
        nat_hour: 0.048,
    },
];

/// The table's prices for `region`, if it has them.
pub(crate) fn region(region: &str) -> Option<&'static RegionPrices> {
    REGIONS.iter().find(|r| r.region == region)
}

/// Monthly on-demand price of `instance_type` in `region`.
pub(crate) fn monthly(instance_type: &str, region: &str) -> Option<f64> {
    let r = self::region(region)?;
    r.hourly
        .iter()
        .find(|(t, _)| *t == instance_type)
        .map(|(_, h)| h * HOURS_PER_MONTH)
}

/// The spot range of `instance_type` in `region`, a month (low, high).
pub(crate) fn spot_monthly(instance_type: &str, region: &str) -> Option<(f64, f64)> {
    let m = monthly(instance_type, region)?;
    Some((m * SPOT_RANGE.0, m * SPOT_RANGE.1))
}

/// The root volume a server is priced with, GB: as the instance it has now
/// has it (tidekeeper does not resize a root volume, so what the config
/// says would not change the bill), else as declared, else an AMI's usual.
pub(crate) fn root_gb(
    d: &super::desired::DesiredServer,
    now: Option<&super::ObservedServer>,
) -> u32 {
    now.and_then(|o| o.volume_gb)
        .or(d.ec2.as_ref().and_then(|e| e.root_gb))
        .unwrap_or(AMI_ROOT_GB)
}

/// Does `d`'s server have a public IPv4 address once applied? As the
/// server it has now does; a new one unless it goes in a private subnet.
pub(crate) fn public_ipv4(
    d: &super::desired::DesiredServer,
    now: Option<&super::ObservedServer>,
) -> bool {
    let private = d.ec2.as_ref().is_some_and(|e| e.private_subnet);
    now.map_or(!private, |o| o.public_ipv4)
}

/// The line a plan shows under an EC2 change with a price: where the price
/// comes from, what it is made of, and the spot range beside it.
pub(crate) fn plan_note(c: &super::plan::CloudChange) -> Option<String> {
    if c.provider != crate::model::desired::ProviderKind::Ec2 {
        return None;
    }
    let total = c.cost_after?.amount;
    let d = c.desired.as_ref()?;
    let mut note = format!("EC2 on-demand, prices of {PRICES_OF}");
    if let (Some(r), Some(compute)) = (region(&d.location), monthly(&d.size, &d.location)) {
        let now = c.observed.as_ref();
        let gb = root_gb(d, now);
        note.push_str(&format!(
            ": {compute:.2} compute + {:.2} for {gb} GB gp3",
            r.gp3_gb_month * f64::from(gb)
        ));
        if let Some(e) = d.ec2.as_ref().filter(|e| e.root_type != "gp3") {
            note.push_str(&format!(" (the volume is {}, priced as gp3)", e.root_type));
        }
        if public_ipv4(d, now) {
            note.push_str(&format!(
                " + {:.2} public IPv4",
                r.ipv4_hour * HOURS_PER_MONTH
            ));
        }
        note.push_str(&format!(" = {total:.2} USD/month"));
    }
    if let Some((lo, hi)) = spot_monthly(&d.size, &d.location) {
        note.push_str(&format!(
            "; spot compute {lo:.2}–{hi:.2} USD/month, {SPOT_NOTE}"
        ));
    }
    Some(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_prices_every_family_it_lists_and_the_month_is_hours_times_rate() {
        for r in REGIONS {
            for fam in ["t3.", "t4g.", "m6i.", "m7g.", "c7g."] {
                assert!(
                    r.hourly.iter().any(|(t, _)| t.starts_with(fam)),
                    "{} {fam}",
                    r.region
                );
            }
            assert!(r.gp3_gb_month > 0.0 && r.ipv4_hour > 0.0 && r.nat_hour > 0.0);
        }
        let m = monthly("t3.small", "us-east-1").unwrap();
        assert!((m - 15.184).abs() < 1e-9, "{m}");
        assert_eq!(monthly("t3.small", "ap-south-1"), None);
        let (lo, hi) = spot_monthly("t3.small", "us-east-1").unwrap();
        assert!(lo < hi && hi < m);
    }
}
