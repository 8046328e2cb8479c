//! Apply windows under the daemon (`apply.apply_windows`): before a commit
//! is applied, the windows say which hosts may take it now. When none may,
//! the commit is held (nothing applied, nothing quarantined) and the loop
//! wakes when the first window opens; hosts whose window is shut are left
//! out of an apply like busy hosts and get the commit when it opens. An
//! operator's `tidekeeper release --now` applies a commit outside them.

use chrono::{DateTime, Utc};
use tracing::info;

use super::scheduler::Request;
use super::status::{self, HostStatus};
use super::{Ctx, State, proposals};
use crate::model::desired::Fleet;
use crate::schedule;

/// What the loop remembers of the windows between passes.
#[derive(Default)]
pub(super) struct Waiting {
    /// The commit held because every host's window is shut, and when it
    /// applies (None: no window opens within a year).
    held: Option<(String, Option<DateTime<Utc>>)>,
    /// The commit an operator released with `--now`: outside the windows on
    /// every pass that finishes applying it.
    released_now: Option<String>,
}

/// Why a host is left out of an apply, as `busy` holders are written; the
/// host's status says it ([`left_out`]): `waiting for its apply window: …`.
const HOLDER: &str = "its apply window";

/// The windows' verdict on `commit` now. `None`: held (reported here),
/// nothing to apply. `Some(hosts)`: apply, leaving out these hosts (with
/// why) whose window is shut.
pub(super) async fn windows_gate(
    ctx: &Ctx,
    state: &mut State,
    commit: &str,
    fleet: &Fleet,
    release: Option<&status::Release>,
) -> Option<Vec<(String, String)>> {
    let windows = &fleet.settings.apply_windows;
    if release.is_some_and(|r| r.now) {
        state.windows.released_now = Some(commit.to_string());
    }
    if windows.is_empty() || state.windows.released_now.as_deref() == Some(commit) {
        state.windows.held = None;
        return Some(vec![]);
    }
    let at = ctx.clock.now();
    let hosts = daemon_hosts(ctx, fleet);
    let shut = shut_hosts(windows, &hosts, at);
    if hosts.is_empty() || shut.len() < hosts.len() {
        state.windows.held = None;
        if let Some(t) = shut.iter().filter_map(|(_, t)| *t).min() {
            // A pass when the first of them opens (backoff may come later).
            ctx.sched.at(Request::Head, ctx.clock.instant_of(t));
        }
        return Some(left_out_as_busy(windows, shut, at));
    }
    let until = shut.iter().filter_map(|(_, t)| *t).min();
    hold(ctx, state, commit, fleet, until).await;
    None
}

/// The hosts this daemon applies to (`--host`, or all).
fn daemon_hosts<'f>(ctx: &Ctx, fleet: &'f Fleet) -> Vec<&'f str> {
    fleet
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| ctx.cfg.hosts.is_empty() || ctx.cfg.hosts.iter().any(|c| c == n))
        .collect()
}

/// Hosts whose window is shut as busy hosts are written: with why.
fn left_out_as_busy(
    windows: &[schedule::ApplyWindow],
    shut: Vec<(&str, Option<DateTime<Utc>>)>,
    at: DateTime<Utc>,
) -> Vec<(String, String)> {
    shut.into_iter()
        .map(|(h, t)| {
            let which = schedule::shutting(windows, h, at)
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            (
                h.to_string(),
                format!("{HOLDER} ({which}): {}", applies_at(t)),
            )
        })
        .collect()
}

/// Correcting drift is applying too: the hosts whose window is shut now
/// are left out of it (their drift is corrected once it opens).
pub(super) fn left_out_of_drift(
    ctx: &Ctx,
    state: &State,
    commit: &str,
    fleet: &Fleet,
) -> Vec<(String, String)> {
    let windows = &fleet.settings.apply_windows;
    if windows.is_empty() || state.windows.released_now.as_deref() == Some(commit) {
        return vec![];
    }
    let at = ctx.clock.now();
    let shut = shut_hosts(windows, &daemon_hosts(ctx, fleet), at);
    left_out_as_busy(windows, shut, at)
}

/// The hosts whose windows are shut at `at`, each with when it may be applied.
fn shut_hosts<'h>(
    windows: &[schedule::ApplyWindow],
    hosts: &[&'h str],
    at: DateTime<Utc>,
) -> Vec<(&'h str, Option<DateTime<Utc>>)> {
    hosts
        .iter()
        .filter(|h| !schedule::apply_allowed(windows, h, at))
        .map(|h| (*h, schedule::next_apply(windows, h, at)))
        .collect()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn applies_at(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => format!("applies at {}", stamp(t)),
        None => format!(
            "no window opens within {} days",
            schedule::APPLY_SEARCH_DAYS
        ),
    }
}

/// Every host's window is shut: the commit is held until `until`, in the
/// status, a note and the forge's pending status; the loop wakes then.
async fn hold(
    ctx: &Ctx,
    state: &mut State,
    commit: &str,
    fleet: &Fleet,
    until: Option<DateTime<Utc>>,
) {
    let reason = format!("outside the apply windows; {}", applies_at(until));
    if let Some(t) = until {
        ctx.sched.at(Request::Head, ctx.clock.instant_of(t));
    }
    state.head.incomplete = None;
    let again = state.windows.held.as_ref() == Some(&(commit.to_string(), until));
    state.windows.held = Some((commit.to_string(), until));
    let tree = proposals::tree_of(ctx, commit).await.unwrap_or_default();
    ctx.shared.status.lock().unwrap().held = Some(status::Held {
        commit: commit.to_string(),
        tree,
        reason: reason.clone(),
        at: ctx.clock.stamp(),
        until: until.map(stamp),
        windows: true,
    });
    if again {
        return; // already reported
    }
    info!(
        until = until.map(stamp).unwrap_or_default(),
        "{reason}; held, nothing applied"
    );
    let list: Vec<String> = fleet
        .settings
        .apply_windows
        .iter()
        .map(|w| format!("  {w}"))
        .collect();
    let note = format!(
        "tidekeeper: held {commit}; nothing applied\n\n{reason}\n\napply windows:\n{}\n\n`tidekeeper release {} --now --by NAME` applies it outside them.\n",
        list.join("\n"),
        &commit[..commit.len().min(12)]
    );
    super::pending_on_forge(ctx, state, fleet, commit, &format!("held: {reason}")).await;
    let note = super::trail::noted(
        ctx,
        state,
        commit,
        crate::audit::Verdict::Held,
        &reason,
        note,
        audit_line(state, commit),
    )
    .await;
    ctx.push_status(Some((commit.to_string(), note))).await;
}

/// The poll found the held commit still the head: apply it if its time
/// has come; otherwise make sure the loop wakes then.
pub(super) fn due(ctx: &Ctx, state: &State, head: &str) -> bool {
    let Some((commit, Some(until))) = &state.windows.held else {
        return false;
    };
    if commit != head {
        return false;
    }
    if ctx.clock.now() + chrono::Duration::seconds(1) >= *until {
        return true;
    }
    ctx.sched.at(Request::Head, ctx.clock.instant_of(*until));
    false
}

/// A host left out of an apply for its window says so, and it is no error.
pub(super) fn left_out(h: &mut HostStatus, holder: &str) {
    if holder.starts_with(HOLDER) {
        h.last_error = None;
        h.last_result = Some(format!("waiting for {holder}"));
    }
}

/// What the audit trail says of the windows for `commit`: held outside
/// them, released outside them, or applied within them (None: no windows).
pub(super) fn audit_line(state: &State, commit: &str) -> Option<String> {
    let (_, fleet, _) = state.head.good.as_ref()?;
    let windows = &fleet.settings.apply_windows;
    if windows.is_empty() {
        return None;
    }
    let list: Vec<String> = windows.iter().map(|w| w.to_string()).collect();
    let how = match &state.windows.held {
        Some((c, until)) if c == commit => format!("outside them; {}", applies_at(*until)),
        _ if state.windows.released_now.as_deref() == Some(commit) => {
            "released outside them".to_string()
        }
        _ => "within them".to_string(),
    };
    Some(format!("{how} ({})", list.join("; ")))
}

/// What the note on a commit released with `--now` says of it.
pub(super) fn released_note(r: &status::Release) -> String {
    let outside = if r.now {
        ", outside the apply windows"
    } else {
        ""
    };
    format!("released by {} at {}{outside}", r.by, r.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holder_reads_as_waiting_and_a_job_stays_busy() {
        let mut h = HostStatus::new("a");
        h.last_error = Some("busy: its apply window: applies at T runs on this host".into());
        left_out(&mut h, "its apply window: applies at 2026-06-02T06:00:00Z");
        assert_eq!(h.last_error, None);
        assert_eq!(
            h.last_result.as_deref(),
            Some("waiting for its apply window: applies at 2026-06-02T06:00:00Z")
        );
        assert!(h.waits_for_window(), "what POST /release --now looks for");
        let mut j = HostStatus::new("b");
        j.last_error = Some("busy: maintenance job slow runs on this host".into());
        left_out(&mut j, "maintenance job slow");
        assert!(j.last_error.is_some());
        assert!(!j.waits_for_window());
    }
}
