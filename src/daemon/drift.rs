//! Drift: with no new commit, the last good one is planned against the
//! hosts again; differences are reported, or corrected when the config says
//! `drift: correct` (never for a quarantined commit, never while suspended,
//! never on a host whose apply window is shut).

use tracing::{Instrument, info_span, warn};

use super::commit::{Applied, Mode, Refused};
use super::status::HostState;
use super::{Ctx, State};
use crate::model::desired::DriftMode;

/// No new commit: look for drift with the last good config.
pub(super) async fn on_drift(ctx: &Ctx, st: &mut State) {
    let Some((commit, fleet, policies)) = st.head.good.clone() else {
        return;
    };
    let correct = fleet.settings.drift == DriftMode::Correct;
    let span = info_span!("drift", commit = %&commit[..12], correct);
    async {
        let quarantined = {
            let st = ctx.shared.status.lock().unwrap();
            st.quarantined.as_ref().is_some_and(|q| q.commit == commit)
                || st.held.as_ref().is_some_and(|h| h.commit == commit)
        };
        // Correcting drift means applying; never for a quarantined or held commit.
        let apply = correct && !quarantined && ctx.suspension(&commit, &fleet).is_none();
        let outside = match apply {
            true => super::windows::left_out_of_drift(ctx, st, &commit, &fleet),
            false => vec![],
        };
        let before = ctx.shared.status.lock().unwrap().files();
        // Between full checks only files whose stat moved are hashed.
        let now = ctx.clock.now();
        let every = std::time::Duration::from_secs(fleet.settings.full_check_secs);
        let full = super::full_check_due(st.last_full_check, now, every);
        let mode = Mode {
            apply,
            changed_files_only: !full,
            review: None,
            release: None,
            outside: &outside,
        };
        let result = ctx.reconcile(&commit, fleet.clone(), &policies, mode).await;
        if full && result.is_ok() {
            st.last_full_check = Some(now);
        }
        match result {
            Err(Refused::Denied(denied)) => {
                warn!(denials = denied.len(), "the policies deny correcting drift");
            }
            Ok(Applied::Done(done)) if apply => {
                // Found and corrected in one pass: the host never shows as
                // drifted, so this is the only word of it.
                let now = ctx.clock.now();
                let news = done
                    .hosts
                    .iter()
                    .filter(|h| h.state == HostState::Synced)
                    .filter(|h| {
                        h.last_result
                            .as_deref()
                            .is_some_and(|r| r.starts_with("applied: "))
                    })
                    .map(|h| {
                        crate::notify::info(
                            &fleet.name,
                            crate::notify::EventKind::DriftCorrected,
                            Some(&h.host),
                            &format!("host {}", h.host),
                            &format!(
                                "drift corrected on {}: {}",
                                h.host,
                                h.last_result.as_deref().unwrap_or("")
                            ),
                            now,
                        )
                    })
                    .collect();
                ctx.shared.notifier.send(news);
            }
            _ => {}
        }
        let after = ctx.shared.status.lock().unwrap().files();
        let changed = before
            .iter()
            .filter(|(k, _)| k.starts_with("status/hosts/"))
            .any(|(k, v)| after.get(k) != Some(v));
        // Push only when something a reader cares about changed.
        let state_changed =
            changed || before.get("badges/fleet.svg") != after.get("badges/fleet.svg");
        if state_changed {
            ctx.push_status(None).await;
        }
    }
    .instrument(span)
    .await
}
