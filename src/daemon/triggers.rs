//! Triggers: the poll (a `Head` request: fetch, and act on a new head), and
//! the file watch of a local repo. Webhooks and retries come in over HTTP;
//! each only asks the scheduler to look again.

use std::path::PathBuf;
use std::sync::Arc;

use super::scheduler::{Again, Request, Requeue};
use super::{Ctx, Shared, State};

/// Fetch; apply the head if it is new, was retried, or was applied only
/// in part. The poll comes again after its interval; a failed fetch or
/// hosts not reached go to the error policy.
pub(super) async fn on_head(ctx: &Ctx, state: &mut State, retry: bool) -> Result<Requeue, Again> {
    let head = super::fetch(ctx, state).await;
    if head.is_some() && ctx.unpushed.lock().unwrap().is_some() {
        ctx.push_status(None).await;
    }
    if !ctx.cfg.proposals.is_empty() {
        ctx.sched.now(Request::Proposals);
    }
    let Some(head) = head else {
        return Err(Again::Fetch);
    };
    let poll = Ok(Requeue::After(super::poll_interval(ctx, state)));
    ctx.shared.status.lock().unwrap().head_commit = Some(head.clone());
    // While suspended, a held commit is not planned again on every poll.
    let suspended = ctx.shared.status.lock().unwrap().suspended.clone();
    let held = suspended.is_some() && state.head.last_seen.as_deref() == Some(head.as_str());
    if suspended != state.head.reported_suspension {
        state.head.reported_suspension = suspended;
        ctx.push_status(None).await;
    }
    if held && !retry {
        return poll;
    }
    let released = ctx.release_asked(&head);
    if state.head.last_seen.as_deref() != Some(head.as_str())
        || retry
        || released
        || state.head.incomplete.is_some()
        || super::windows::due(ctx, state, &head)
        || super::requirements::met_now(ctx, state, &head).await
    {
        state.head.last_seen = Some(head.clone());
        // A drift check right after an apply would find nothing.
        let next = tokio::time::Instant::now() + super::drift_interval(ctx, state);
        ctx.sched.reset(Request::Drift, next);
        super::commit::on_commit(ctx, state, head, retry).await?;
    }
    poll
}

/// For a repo on this machine: wake on ref updates of the watched branch
/// (never on tidekeeper's own status and notes writes).
pub(super) fn watch(
    repo: &str,
    branch: &str,
    shared: Arc<Shared>,
) -> Option<fs_watch::RecommendedWatcher> {
    use fs_watch::{RecursiveMode, Watcher};
    let path = PathBuf::from(repo.strip_prefix("file://").unwrap_or(repo));
    if !path.exists() {
        return None;
    }
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path.clone()
    };
    let branch_ref = git_dir.join("refs/heads").join(branch);
    let packed = git_dir.join("packed-refs");
    let mut w = fs_watch::recommended_watcher(move |ev: fs_watch::Result<fs_watch::Event>| {
        // Only writes count: fetching reads the same ref files, and reacting
        // to reads would make every fetch trigger the next.
        if let Ok(ev) = ev
            && matches!(
                ev.kind,
                fs_watch::EventKind::Create(_)
                    | fs_watch::EventKind::Modify(_)
                    | fs_watch::EventKind::Remove(_)
            )
            && !matches!(
                ev.kind,
                fs_watch::EventKind::Modify(fs_watch::event::ModifyKind::Metadata(_))
            )
            && ev.paths.iter().any(|p| p == &branch_ref || p == &packed)
        {
            shared.poke();
        }
    })
    .ok()?;
    w.watch(&git_dir.join("refs/heads"), RecursiveMode::Recursive)
        .ok()?;
    let _ = w.watch(&git_dir, RecursiveMode::NonRecursive);
    Some(w)
}
