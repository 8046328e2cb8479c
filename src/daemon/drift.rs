//! Drift: with no new commit, the last good one is planned against the
//! hosts again; differences are reported, or corrected when the config says
//! `drift: correct` (never for a quarantined commit, never while suspended).

use tracing::{Instrument, info_span, warn};

use super::Loop;
use super::commit::Refused;
use crate::model::desired::DriftMode;

impl Loop {
    /// No new commit: look for drift with the last good config.
    pub(super) async fn drift_check(&mut self) {
        let Some((commit, fleet, policies)) = self.good.clone() else {
            return;
        };
        let correct = fleet.settings.drift == DriftMode::Correct;
        let span = info_span!("drift", commit = %&commit[..12], correct);
        async {
            let quarantined = self
                .shared
                .status
                .lock()
                .unwrap()
                .quarantined
                .as_ref()
                .is_some_and(|q| q.commit == commit);
            // Correcting drift means applying; never for a quarantined commit.
            let apply = correct && !quarantined && self.suspension(&commit, &fleet).is_none();
            let before = self.shared.status.lock().unwrap().files();
            if let Err(Refused::Denied(denied)) =
                self.reconcile(&commit, fleet, &policies, apply, None).await
            {
                warn!(denials = denied.len(), "the policies deny correcting drift");
            }
            let after = self.shared.status.lock().unwrap().files();
            let changed = before
                .iter()
                .filter(|(k, _)| k.starts_with("status/hosts/"))
                .any(|(k, v)| after.get(k) != Some(v));
            // Push only when something a reader cares about changed.
            let state_changed =
                changed || before.get("badges/fleet.svg") != after.get("badges/fleet.svg");
            if state_changed {
                self.push_status(None).await;
            }
        }
        .instrument(span)
        .await
    }
}
