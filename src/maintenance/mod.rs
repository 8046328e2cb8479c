//! Scheduled maintenance: backups, upgrades with reboots, commands, cloud
//! snapshots with retention and power schedules — on cron, inside windows,
//! rolling over hosts with health gates.
//!
//! - [`plan`]: schedule math and the per-host scripts (pure).
//! - [`run`]: running a job over its hosts.
//! - [`restore`]: a backup's snapshot back onto its host: the request
//!   checked, the preview, the confirmation asked through the caller, the
//!   restore.

pub(crate) mod plan;
pub(crate) mod restore;
pub(crate) mod run;

/// What a power schedule keeps up and what that saves, for people:
/// hours up in the next 30 days and, with `observed` prices, the monthly cost
/// of its servers and the saving under the providers' billing.
pub fn power_saving(
    fleet: &crate::model::desired::Fleet,
    job: &crate::model::desired::Job,
    now: chrono::DateTime<chrono::Utc>,
    observed: Option<&crate::cloud::Observed>,
) -> String {
    use std::fmt::Write;
    let hours = plan::power_hours(job, now);
    let share = hours / 720.0;
    let mut s = format!(
        "  up {hours:.0} h in the next 30 days ({:.0}% of the time)\n",
        share * 100.0
    );
    let Some(obs) = observed else {
        s.push_str("  saving: unknown (the providers' prices could not be read)\n");
        return s;
    };
    // Per currency: the full monthly cost, the saving, and what servers
    // billed while stopped would save if billed by running time.
    #[derive(Default)]
    struct Sum {
        full: f64,
        saving: f64,
        billed_stopped: f64,
        all_billed_stopped: bool,
        hosts: usize,
    }
    let mut by_currency: std::collections::BTreeMap<&str, Sum> = Default::default();
    for name in &job.hosts {
        let Some(host) = fleet.host(name) else {
            continue;
        };
        let Some(server) = crate::cloud::desired::server(&fleet.name, host) else {
            continue;
        };
        let Some(list) = obs.prices.get(&host.provider) else {
            continue;
        };
        let Some(price) = obs.desired_price(&server) else {
            continue;
        };
        let e = by_currency.entry(price.monthly.currency).or_default();
        e.all_billed_stopped = (e.hosts == 0 || e.all_billed_stopped) && list.bills_stopped;
        e.hosts += 1;
        e.full += price.monthly.amount;
        e.saving += (price.monthly.amount - price.while_stopped) * (1.0 - share);
        if list.bills_stopped {
            e.billed_stopped += price.monthly.amount * (1.0 - share);
        }
    }
    for (cur, e) in by_currency {
        let Sum {
            full,
            saving,
            billed_stopped,
            ..
        } = e;
        if e.all_billed_stopped {
            let _ = writeln!(
                s,
                "  saving: 0.00 {cur}/month: the provider bills a stopped server like a running one \
                 ({full:.2} {cur}/month either way; billed by running time it would save {billed_stopped:.2})"
            );
        } else if billed_stopped > 0.0 {
            let _ = writeln!(
                s,
                "  saving: {saving:.2} {cur}/month of {full:.2} {cur}/month (storage is billed while stopped; \
                 servers of providers that bill stopped servers save nothing, {billed_stopped:.2} if billed by running time)"
            );
        } else {
            let _ = writeln!(
                s,
                "  saving: {saving:.2} {cur}/month of {full:.2} {cur}/month (storage is billed while stopped)"
            );
        }
    }
    s
}

/// A job run for people: one line per host, the log tail of failures.
pub fn render(run: &run::JobRun) -> String {
    use std::fmt::Write;
    let mut s = format!("{} ({}) started {}\n", run.job, run.kind, run.started);
    if let Some(why) = &run.not_started {
        let _ = writeln!(s, "  {why}");
        return s;
    }
    for h in &run.hosts {
        let _ = write!(
            s,
            "  {:<16} {:<8} {:>6.1}s",
            h.host,
            h.result.word(),
            h.duration_ms as f64 / 1000.0
        );
        if h.rebooted {
            s.push_str("  rebooted");
        }
        if let Some(e) = &h.error {
            let _ = write!(s, "  {e}");
        }
        s.push('\n');
        if h.result == run::HostRunResult::Failed {
            for l in &h.log_tail {
                let _ = writeln!(s, "      | {l}");
            }
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if run.ok {
            "Job succeeded."
        } else {
            "Job failed."
        }
    );
    s
}
