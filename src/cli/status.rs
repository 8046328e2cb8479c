//! `tidekeeper status` and `tidekeeper reconcile`: a running daemon's status
//! as a summary, and a reconcile asked for now (and waited on) — what
//! `flux get` and `flux reconcile` are to Flux.

use super::daemon::{exchange, post_daemon, said};
use super::*;
use crate::daemon::status::FleetStatus;

/// GET /status of the daemon at `addr`.
fn fetch(addr: std::net::SocketAddr) -> Result<(String, FleetStatus), CliError> {
    let resp = exchange(addr, "GET", "/status", "", "")
        .map_err(|e| CliError::new(format!("cannot reach the daemon at {addr}: {e}")))?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(CliError::new(format!(
            "the daemon at {addr} answered: {}",
            resp.lines().next().unwrap_or("")
        )));
    }
    let body = said(&resp);
    let st = serde_json::from_str(&body).map_err(|e| {
        CliError::new(format!(
            "the daemon at {addr} answered /status with what is not its status: {e}"
        ))
        .help("is --daemon the address of a tidekeeper daemon?")
    })?;
    Ok((body, st))
}

pub(super) fn status(addr: std::net::SocketAddr, format: LogOutput) -> CliResult {
    let (body, st) = fetch(addr)?;
    if format == LogOutput::Json {
        println!("{body}");
        return Ok(Outcome::Done);
    }
    print!("{}", summary(&st));
    Ok(Outcome::Done)
}

fn short(c: &Option<String>) -> &str {
    c.as_deref().map_or("-", |c| &c[..c.len().min(12)])
}

/// The status as a few lines and a table of hosts.
fn summary(st: &FleetStatus) -> String {
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
    let mut out = format!(
        "fleet {}  branch {}\nhead     {}\napplied  {}{}\n",
        clean(&st.fleet),
        clean(&st.branch),
        short(&st.head_commit),
        short(&st.applied_commit),
        if st.head_commit.is_some() && st.head_commit == st.applied_commit {
            "  (in sync)"
        } else {
            ""
        }
    );
    if let Some(s) = &st.suspended {
        out.push_str(&format!(
            "suspended by {} ({})\n",
            clean(&s.by),
            clean(&s.reason)
        ));
    }
    if let Some(h) = &st.held {
        let until = h
            .until
            .as_deref()
            .map(|u| format!("; applies at {u}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "held     {}: {}{until}\n",
            &h.commit[..h.commit.len().min(12)],
            clean(&h.reason)
        ));
    }
    if let Some(q) = &st.quarantined {
        out.push_str(&format!(
            "quarantined {}: {}\n",
            &q.commit[..q.commit.len().min(12)],
            clean(&q.reason)
        ));
    }
    if let Some(i) = &st.invalid {
        out.push_str(&format!(
            "invalid  {}: {} error(s)\n",
            &i.commit[..i.commit.len().min(12)],
            i.errors.len()
        ));
    }
    for s in &st.stale {
        out.push_str(&format!("stale    {}\n", clean(s)));
    }
    if st.hosts.is_empty() {
        return out;
    }
    let rows: Vec<[String; 4]> = st
        .hosts
        .values()
        .map(|h| {
            [
                clean(&h.host),
                format!("{:?}", h.state).to_lowercase(),
                short(&h.applied_commit).to_string(),
                clean(
                    h.last_error
                        .as_deref()
                        .or(h.last_result.as_deref())
                        .unwrap_or(""),
                ),
            ]
        })
        .collect();
    let head = ["HOST", "STATE", "APPLIED", "LAST"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    out.push('\n');
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let line = format!("{:w0$}  {:w1$}  {:w2$}  {}", r[0], r[1], r[2], r[3]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Where a reconcile of `head` stands: `None` while the daemon works on it.
fn settled(st: &FleetStatus) -> Option<Result<String, String>> {
    let head = st.head_commit.as_deref()?;
    let at = |c: &str| c == head;
    if let Some(h) = st.held.as_ref().filter(|h| at(&h.commit)) {
        return Some(Err(format!("held: {}", h.reason)));
    }
    if let Some(q) = st.quarantined.as_ref().filter(|q| at(&q.commit)) {
        return Some(Err(format!("quarantined: {}", q.reason)));
    }
    if let Some(i) = st.invalid.as_ref().filter(|i| at(&i.commit)) {
        return Some(Err(format!("invalid config: {}", i.errors.join("; "))));
    }
    if let Some(s) = &st.suspended {
        return Some(Err(format!("suspended by {} ({})", s.by, s.reason)));
    }
    (st.applied_commit.as_deref() == Some(head)).then(|| {
        Ok(format!(
            "applied {} to {} host(s)",
            &head[..head.len().min(12)],
            st.hosts.len()
        ))
    })
}

pub(super) fn reconcile(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    wait: bool,
    timeout: std::time::Duration,
) -> CliResult {
    let before = if wait { Some(fetch(addr)?.1) } else { None };
    post_daemon(
        addr,
        "/reconcile",
        token,
        "",
        "The daemon at {addr} fetches the branch and checks for drift now.",
    )?;
    let Some(before) = before else {
        return Ok(Outcome::Done);
    };
    let asked = std::time::Instant::now();
    let deadline = asked + timeout;
    loop {
        let (_, st) = fetch(addr)?;
        // Looked at since asking: a new head, or a newer fetch or reconcile
        // (their times are to the second, so a branch already in sync that
        // shows no change for a few seconds is taken as it is).
        let fetched = st.head_commit != before.head_commit
            || st.last_fetch_ok != before.last_fetch_ok
            || st.last_reconcile != before.last_reconcile
            || asked.elapsed() > std::time::Duration::from_secs(3);
        if let Some(r) = settled(&st).filter(|_| fetched) {
            return match r {
                Ok(done) => {
                    println!("{done}.");
                    Ok(Outcome::Done)
                }
                Err(why) => Err(CliError::invalid(format!(
                    "{} is not applied: {why}",
                    short(&st.head_commit)
                ))),
            };
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "the daemon at {addr} has not settled {} within {}s (applied: {})",
                short(&st.head_commit),
                timeout.as_secs(),
                short(&st.applied_commit)
            ))
            .help("`tidekeeper status` shows what it is doing"));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
