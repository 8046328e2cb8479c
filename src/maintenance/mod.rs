//! Scheduled maintenance: backups, upgrades with reboots, commands — on
//! cron, inside windows, rolling over hosts with health gates.
//!
//! - [`plan`]: schedule math and the per-host scripts (pure).
//! - [`run`]: running a job over its hosts.

pub mod plan;
pub mod run;

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
            h.result,
            h.duration_ms as f64 / 1000.0
        );
        if h.rebooted {
            s.push_str("  rebooted");
        }
        if let Some(e) = &h.error {
            let _ = write!(s, "  {e}");
        }
        s.push('\n');
        if h.result == "failed" {
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
