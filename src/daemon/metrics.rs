//! /metrics: the daemon's counters, the fleet's state, the notification
//! outboxes and the process itself, in the OpenMetrics text format
//! (prometheus-client encodes and escapes it).

use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::status::{DURATION_BUCKETS, FleetStatus, HostState, Metrics};
use crate::notify::deliver::NotifyStatus;

/// The content type of [`openmetrics`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The git revision this binary was built from ("unknown" outside a checkout).
pub const REVISION: &str = env!("TIDEKEEPER_REVISION");

/// Everything one scrape shows, copied out of the daemon's locks.
#[derive(Debug)]
pub struct Scrape {
    pub status: FleetStatus,
    pub metrics: Metrics,
    pub notify: NotifyStatus,
    /// This process's own figures; None where /proc cannot be read.
    pub process: Option<Process>,
}

/// The whole exposition, ending in `# EOF`.
pub fn openmetrics(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

/// The content type of [`classic_text`]'s text.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The same exposition in the Prometheus text format 0.0.4, for scrapers
/// and tools that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a family is named as its samples are (`_total` for counters,
/// `_info` for infos, which become gauges), and `# EOF` goes.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        host_families(&mut enc, &self.metrics)?;
        loop_families(&mut enc, &self.status, &self.metrics)?;
        fleet_families(&mut enc, &self.status, &self.metrics)?;
        notify_families(&mut enc, &self.notify)?;
        if let Some(p) = &self.process {
            p.encode(&mut enc)?;
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A family of counters, a sample per label set.
fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in samples {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

/// A family of gauges, a sample per label set.
fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> Result<(), Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// Per host: reconciles, errors and durations; requeues; the build.
fn host_families(enc: &mut DescriptorEncoder, m: &Metrics) -> Result<(), Error> {
    let reconciles = m.reconciles.iter().map(|((host, result), n)| {
        (
            vec![("host", host.as_str()), ("result", result.as_str())],
            *n,
        )
    });
    counter(
        enc,
        "tidekeeper_reconciles",
        "Host reconciles by result.",
        reconciles,
    )?;
    let errors = m.host_errors.iter().map(|(k, n)| (vec![("kind", *k)], *n));
    counter(
        enc,
        "tidekeeper_host_errors",
        "Host errors by kind.",
        errors,
    )?;
    let requeues = m.requeues.iter().map(|(r, n)| (vec![("reason", *r)], *n));
    counter(
        enc,
        "tidekeeper_requeues",
        "Requests tried again with backoff, by reason.",
        requeues,
    )?;
    enc.encode_descriptor(
        "tidekeeper_build",
        "The running tidekeeper's version and the git revision it was built from.",
        None,
        MetricType::Info,
    )?
    .encode_info(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("revision", REVISION),
    ])?;
    let mut d = enc.encode_descriptor(
        "tidekeeper_reconcile_duration_seconds",
        "Time spent reconciling a host.",
        None,
        MetricType::Histogram,
    )?;
    for (host, h) in &m.durations {
        // Counts per bucket: the encoder makes them cumulative.
        let beyond = h.count - h.buckets.iter().sum::<u64>();
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .zip(h.buckets)
            .chain([(f64::INFINITY, beyond)])
            .collect();
        d.encode_family(&[("host", host.as_str())])?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
    }
    Ok(())
}

/// The loop's own: fetches, applies, drift, the queue, webhooks, status pushes, staleness.
fn loop_families(enc: &mut DescriptorEncoder, st: &FleetStatus, m: &Metrics) -> Result<(), Error> {
    let unix = |t: Option<i64>| [(vec![], t.unwrap_or(0) as f64)];
    gauge(
        enc,
        "tidekeeper_last_successful_sync_timestamp_seconds",
        "When a commit was last applied to every host (0: not since the daemon started).",
        unix(m.last_applied_unix),
    )?;
    gauge(
        enc,
        "tidekeeper_last_successful_fetch_timestamp_seconds",
        "When the config repo was last fetched successfully (0: not since the daemon started).",
        unix(m.last_fetch_unix),
    )?;
    let drift: usize = st.hosts.values().map(|h| h.drift.len()).sum();
    let one = |v: f64| [(vec![], v)];
    gauge(
        enc,
        "tidekeeper_drift_resources",
        "Resources that differ from the config.",
        one(drift as f64),
    )?;
    gauge(
        enc,
        "tidekeeper_queue_length",
        "Requests due now and waiting for the reconcile loop (timers not yet due are not counted).",
        one(m.queue as f64),
    )?;
    let n = |v: u64| [(vec![], v)];
    counter(
        enc,
        "tidekeeper_git_fetches",
        "Fetches of the config repo.",
        n(m.fetches),
    )?;
    counter(
        enc,
        "tidekeeper_git_fetch_failures",
        "Failed fetches of the config repo.",
        n(m.fetch_failures),
    )?;
    let hooks = [
        (vec![("outcome", "accepted")], m.webhook_accepted),
        (vec![("outcome", "rejected")], m.webhook_rejected),
    ];
    counter(
        enc,
        "tidekeeper_webhooks",
        "Webhook requests by outcome.",
        hooks,
    )?;
    counter(
        enc,
        "tidekeeper_status_push_failures",
        "Status pushes that failed or kept losing races.",
        n(m.status_push_failures),
    )?;
    gauge(
        enc,
        "tidekeeper_stale",
        "1 when the status may be out of date.",
        one(f64::from(u8::from(!st.stale.is_empty()))),
    )?;
    gauge(
        enc,
        "tidekeeper_commit_quarantined",
        "1 while the branch head is quarantined (its apply failed; `tidekeeper retry` tries again).",
        one(f64::from(u8::from(st.quarantined.is_some()))),
    )
}

/// The fleet's: maintenance runs, badges served, cost, each host's state.
fn fleet_families(enc: &mut DescriptorEncoder, st: &FleetStatus, m: &Metrics) -> Result<(), Error> {
    let runs = m.maintenance_runs.iter().map(|((job, result), n)| {
        (
            vec![
                ("maintenance_job", job.as_str()),
                ("result", result.as_str()),
            ],
            *n,
        )
    });
    counter(
        enc,
        "tidekeeper_maintenance_runs",
        "Maintenance job runs by result.",
        runs,
    )?;
    let ok = m
        .job_last_success_unix
        .iter()
        .map(|(job, t)| (vec![("maintenance_job", job.as_str())], *t as f64));
    gauge(
        enc,
        "tidekeeper_maintenance_last_success_timestamp_seconds",
        "When a maintenance job (a backup, a snapshot) last ran successfully.",
        ok,
    )?;
    let badges = m
        .badges_served
        .iter()
        .map(|(b, n)| (vec![("badge", b.as_str())], *n));
    counter(
        enc,
        "tidekeeper_badge_requests",
        "Badges served, by badge.",
        badges,
    )?;
    let cost = st
        .monthly_cost
        .iter()
        .map(|(cur, v)| (vec![("currency", cur.as_str())], *v));
    gauge(
        enc,
        "tidekeeper_monthly_cost",
        "The fleet's cloud servers per month, by currency.",
        cost,
    )?;
    // One series per state, 1 for the host's own (as kube-state-metrics does).
    let states = st.hosts.iter().flat_map(|(name, h)| {
        HostState::ALL.map(|s| {
            let labels = vec![("host", name.as_str()), ("state", s.word())];
            (labels, f64::from(u8::from(h.state == s)))
        })
    });
    gauge(
        enc,
        "tidekeeper_host_state",
        "A host's state: 1 for the state it is in, 0 for the others.",
        states,
    )
}

/// The notification outboxes, by sink, and the alerts firing.
fn notify_families(enc: &mut DescriptorEncoder, n: &NotifyStatus) -> Result<(), Error> {
    let by_sink = |f: fn(&crate::notify::deliver::SinkStatus) -> u64| {
        n.sinks
            .iter()
            .map(move |(sink, s)| (vec![("sink", sink.as_str())], f(s)))
    };
    counter(
        enc,
        "tidekeeper_notifications_sent",
        "Messages delivered, by sink.",
        by_sink(|s| s.stats.sent),
    )?;
    counter(
        enc,
        "tidekeeper_notification_failures",
        "Delivery attempts that failed, by sink.",
        by_sink(|s| s.stats.failed_attempts),
    )?;
    counter(
        enc,
        "tidekeeper_notifications_dropped",
        "Messages dropped because a sink's outbox was full.",
        by_sink(|s| s.stats.dropped),
    )?;
    let waiting = by_sink(|s| s.waiting as u64).map(|(l, v)| (l, v as f64));
    gauge(
        enc,
        "tidekeeper_notifications_waiting",
        "Messages waiting for delivery (the sink is down, slow or gone).",
        waiting,
    )?;
    gauge(
        enc,
        "tidekeeper_alerts_firing",
        "Alerts firing now.",
        [(vec![], n.firing.len() as f64)],
    )
}

/// The standard process metrics, read from /proc/self (Linux only).
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_unix: f64,
}

impl Process {
    /// This process now; None off Linux or where /proc is not mounted.
    pub fn current() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        // SAFETY: sysconf only reads a system constant.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut p = Process::parse(&stat, &boot, tick as f64, page as u64)?;
        p.open_fds = open_fds;
        p.max_fds = max_open_files(&limits);
        Some(p)
    }

    /// From `/proc/self/stat` and `/proc/stat`, with the clock tick and the
    /// page size (`open_fds` is left 0).
    pub fn parse(stat: &str, proc_stat: &str, tick: f64, page: u64) -> Option<Process> {
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'. Field 3 (state) is the first after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        let (utime, stime, start, rss) = (field(14)?, field(15)?, field(22)?, field(24)?);
        let btime: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        Some(Process {
            cpu_seconds: (utime + stime) as f64 / tick,
            resident_bytes: rss * page,
            open_fds: 0,
            max_fds: None,
            start_time_unix: btime as f64 + start as f64 / tick,
        })
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let one = |v: f64| [(vec![], v)];
        let cpu = "Total user and system CPU time spent in seconds.";
        enc.encode_descriptor("process_cpu_seconds", cpu, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, f64>(&self.cpu_seconds, None)?;
        let rss = self.resident_bytes as f64;
        gauge(
            enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            one(rss),
        )?;
        let fds = self.open_fds as f64;
        gauge(
            enc,
            "process_open_fds",
            "Number of open file descriptors.",
            one(fds),
        )?;
        if let Some(max) = self.max_fds {
            let help = "Maximum number of open file descriptors.";
            gauge(enc, "process_max_fds", help, one(max as f64))?;
        }
        let help = "Start time of the process since unix epoch in seconds.";
        gauge(
            enc,
            "process_start_time_seconds",
            help,
            one(self.start_time_unix),
        )
    }
}

/// The soft limit on open files from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_come_from_the_fields_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (tide keeper)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456 2048";
        let p = Process::parse(stat, "cpu 1 2 3\nbtime 1700000000\n", 100.0, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 2048 * 4096);
        assert_eq!(p.start_time_unix, 1_700_000_010.0);
        assert_eq!(Process::parse("garbage", "", 100.0, 4096), None);
    }

    #[test]
    fn the_classic_text_names_families_as_their_samples() {
        let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{x=\"1\"} 2\n\
                  # HELP a_build The build.\n# TYPE a_build info\na_build_info{v=\"1\"} 1\n\
                  # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 2\n\
             # HELP a_build_info The build.\n# TYPE a_build_info gauge\na_build_info{v=\"1\"} 1\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }
}
