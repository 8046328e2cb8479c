//! The audit trail on the notes the daemon writes on the followed branch's
//! commits: the verdict, when, the reviewed plan of the commit's tree, an
//! operator's release and a forge approval that let a held commit through,
//! as [`crate::audit::Audit`] trailers at the end of the note
//! (`tidekeeper log` reads them back).

use super::{Ctx, State, proposals};
use crate::audit::{Audit, Released, Reviewed, Verdict};

/// `body` with the commit's audit at its end, the whole within the note's cap.
pub(super) async fn noted(
    ctx: &Ctx,
    state: &State,
    commit: &str,
    verdict: Verdict,
    summary: &str,
    body: String,
    window: Option<String>,
) -> String {
    let tree = proposals::tree_of(ctx, commit).await.unwrap_or_default();
    let reviewed = proposals::reviewed_in(state, &tree).map(|(proposal, r)| Reviewed {
        proposal,
        digest: r.digest,
    });
    // The pull request `apply.apply_requirements` found, else the approval
    // that released a held commit.
    let pull = state.head.approval.as_ref().filter(|(c, _)| c == commit);
    let approved_by = match pull {
        Some((_, a)) => a.approved_by.clone(),
        None => state
            .head
            .approved
            .iter()
            .filter(|(c, _)| c == commit)
            .map(|(_, by)| by.clone())
            .collect(),
    };
    let audit = Audit {
        commit: commit.to_string(),
        verdict,
        at: ctx.clock.stamp(),
        merged_by: pull.and_then(|(_, a)| a.merged_by.clone()),
        approved_by,
        reviewed,
        released: released(ctx, state, commit),
        window,
        summary: summary.to_string(),
    };
    audit.append_to(&body, crate::report::NOTE_LIMIT)
}

/// The operator's release of `commit`, as the history recorded it when the
/// loop took it (`now`: outside the apply windows too).
fn released(ctx: &Ctx, state: &State, commit: &str) -> Option<Released> {
    if state.head.released.as_deref() != Some(commit) {
        return None;
    }
    let board = ctx.shared.board.lock().unwrap();
    let r = board
        .history
        .releases
        .iter()
        .rev()
        .find(|r| r.commit == commit)?;
    Some(Released {
        by: r.by.clone(),
        at: r.at.clone(),
        now: r.now,
    })
}
