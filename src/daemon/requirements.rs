//! `apply.apply_requirements`: what the forge must show of the pull request
//! a commit was merged from before the daemon applies it — approvals at the
//! merged head, the owners of the files it changes, a merge through the
//! forge, a merged tree that is the reviewed head's. The requirements are
//! the applied commit's (the base's), never the new commit's own: a pull
//! request cannot lower the bar it is judged by. Unmet: the commit is held
//! with the reason, and judged again on every poll.

use std::collections::BTreeSet;

use tracing::info;

use super::{Ctx, State};
use crate::codeowners;
use crate::forge::Forge;
use crate::model::desired::{ApplyRequirements, Fleet};
use crate::source::ConfigTree;

/// What the forge showed of the pull request a commit came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Approval {
    pub pr: u64,
    pub merged_by: Option<String>,
    pub approved_by: Vec<String>,
}

impl Approval {
    /// For the note: `pull request #9, merged by alice, approved by bob, carol`.
    pub(super) fn line(&self) -> String {
        let mut s = format!("pull request #{}", self.pr);
        if let Some(m) = &self.merged_by {
            s.push_str(&format!(", merged by {m}"));
        }
        if !self.approved_by.is_empty() {
            s.push_str(&format!(", approved by {}", self.approved_by.join(", ")));
        }
        s
    }
}

/// The prefix of every reason a commit is held for unmet requirements.
pub(super) const HELD: &str = "apply requirements not met";

/// The base: the applied commit's tree and its requirements.
struct Base {
    tree: ConfigTree,
    rules: ApplyRequirements,
    forge: Option<crate::model::desired::Forge>,
}

async fn base(ctx: &Ctx) -> Option<Base> {
    let applied = ctx.shared.status.lock().unwrap().applied_commit.clone()?;
    let path = ctx.mirror.lock().unwrap().path.clone();
    tokio::task::spawn_blocking(move || {
        let tree = ConfigTree::from_git(&path, &applied).ok()?;
        let fleet = crate::model::load(&tree).ok()?;
        Some(Base {
            rules: fleet.settings.apply_requirements.clone()?,
            forge: fleet.settings.forge.clone(),
            tree,
        })
    })
    .await
    .ok()
    .flatten()
}

/// `Ok(None)`: nothing is required (no requirements in the applied
/// commit's config, or nothing applied yet). `Ok(Some)`: met, with who
/// merged and approved. `Err`: held, and why.
pub(super) async fn check(
    ctx: &Ctx,
    state: &mut State,
    commit: &str,
    fleet: &Fleet,
) -> Result<Option<Approval>, String> {
    let Some(base) = base(ctx).await else {
        return Ok(None);
    };
    let held = |why: String| format!("{HELD}: {why}");
    let settings = base
        .forge
        .clone()
        .or_else(|| fleet.settings.forge.clone())
        .ok_or_else(|| held("they are read from a forge, and `status.forge` names none".into()))?;
    let forge = super::forge(ctx, state, &settings).map_err(|e| held(e.to_string()))?;
    let tree = super::proposals::tree_of(ctx, commit)
        .await
        .unwrap_or_default();
    let pr = match forge.pull_of_commit(commit).await {
        Ok(Some(pr)) => pr,
        Ok(None) => super::proposals::reviewed_in(state, &tree)
            .and_then(|(name, _)| crate::forge::pr_number(&name))
            .ok_or_else(|| {
                held(format!(
                    "no pull request merged {} (a direct push?)",
                    &commit[..12.min(commit.len())]
                ))
            })?,
        Err(e) => return Err(held(format!("cannot ask the forge: {e}"))),
    };
    let pull = forge
        .pull(pr)
        .await
        .map_err(|e| held(format!("cannot ask the forge: {e}")))?;
    let approved_by = forge
        .approvals(pr, &pull.head)
        .await
        .map_err(|e| held(format!("cannot ask the forge: {e}")))?;
    let head_tree = super::proposals::tree_of(ctx, &pull.head).await;
    let changed = changed_files(ctx, &base.tree, commit).await;
    let mut unmet = judge(&base, &pull, head_tree.as_deref(), &tree, &approved_by);
    unmet.extend(owners_unmet(&forge, &base, &changed, &approved_by).await);
    if !unmet.is_empty() {
        return Err(held(format!("pull request #{pr}: {}", unmet.join("; "))));
    }
    info!(pr, approved_by = %approved_by.join(","), "apply requirements met");
    Ok(Some(Approval {
        pr,
        merged_by: pull.merged_by,
        approved_by,
    }))
}

/// The requirements other than owners, judged on what the forge said.
fn judge(
    base: &Base,
    pull: &crate::forge::Pull,
    head_tree: Option<&str>,
    tree: &str,
    approved_by: &[String],
) -> Vec<String> {
    let r = &base.rules;
    let mut unmet = Vec::new();
    if r.mergeable && !pull.merged && pull.mergeable != Some(true) {
        unmet.push("it was not merged by the forge, nor does the forge call it mergeable".into());
    }
    if r.undiverged {
        match head_tree {
            None => unmet.push(format!(
                "its head {} is not fetched, so it cannot be compared with what was merged (follow pull request heads with --proposals)",
                short(&pull.head)
            )),
            Some(t) if t != tree => unmet.push(format!(
                "it diverged: the merged tree is not its head {}'s (the branch moved on after review; update the pull request and review again)",
                short(&pull.head)
            )),
            Some(_) => {}
        }
    }
    let n = approved_by.len() as u32;
    if n < r.approved {
        let who = if approved_by.is_empty() {
            String::new()
        } else {
            format!(" ({})", approved_by.join(", "))
        };
        unmet.push(format!(
            "{} approval(s) asked, {n} at its head {}{who}",
            r.approved,
            short(&pull.head)
        ));
    }
    unmet
}

/// Each changed file whose owners (CODEOWNERS of the base, then `owners:`)
/// include no one who approved, grouped by its owners.
async fn owners_unmet(
    forge: &Forge,
    base: &Base,
    changed: &[String],
    approved_by: &[String],
) -> Vec<String> {
    let Some(lines) = &base.rules.owners else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    if let Some(text) = codeowners::FILES.iter().find_map(|f| base.tree.text(f)) {
        // The base's file was read when it was applied; a line that is not
        // one is skipped here rather than holding every commit.
        rules.extend(
            text.lines()
                .filter_map(|l| codeowners::parse_line(l).ok().flatten()),
        );
    }
    rules.extend(
        lines
            .iter()
            .filter_map(|l| codeowners::parse_line(l).ok().flatten()),
    );
    let mut missing: std::collections::BTreeMap<Vec<String>, Vec<&str>> = Default::default();
    // Each team is asked once, however many changed files it owns.
    let mut teams: std::collections::HashMap<String, Vec<String>> = Default::default();
    for path in changed {
        let Some(owners) = codeowners::owners_of(&rules, path).filter(|o| !o.is_empty()) else {
            continue;
        };
        let mut members: BTreeSet<String> = BTreeSet::new();
        for o in owners {
            match o.split_once('/') {
                Some((org, team)) => {
                    if !teams.contains_key(o) {
                        match forge.team_members(org, team).await {
                            Ok(m) => teams.insert(o.clone(), m),
                            Err(e) => return vec![format!("owners of {path}: {e}")],
                        };
                    }
                    members.extend(teams[o].iter().cloned());
                }
                None => {
                    members.insert(o.clone());
                }
            }
        }
        if !approved_by.iter().any(|a| members.contains(a)) {
            missing.entry(owners.to_vec()).or_default().push(path);
        }
    }
    missing
        .into_iter()
        .map(|(owners, paths)| {
            let who: Vec<String> = owners.iter().map(|o| format!("@{o}")).collect();
            // A pull request may change thousands of files: the reason
            // names a few, and how many more.
            let more = match paths.len().saturating_sub(10) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!(
                "{}{more} need(s) an approval by {}",
                paths[..paths.len().min(10)].join(", "),
                who.join(" or ")
            )
        })
        .collect()
}

/// The files that differ between the base's tree and `commit`'s.
async fn changed_files(ctx: &Ctx, base: &ConfigTree, commit: &str) -> Vec<String> {
    let path = ctx.mirror.lock().unwrap().path.clone();
    let c = commit.to_string();
    let Ok(Ok(new)) = tokio::task::spawn_blocking(move || ConfigTree::from_git(&path, &c)).await
    else {
        return Vec::new();
    };
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for (p, e) in base.paths() {
        if new.get(p) != Some(e) {
            changed.insert(p.to_string());
        }
    }
    for (p, _) in new.paths() {
        if base.get(p).is_none() {
            changed.insert(p.to_string());
        }
    }
    changed.into_iter().collect()
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// A head held for unmet requirements: are they met now? Asked on each
/// poll, as approvals come after merges.
pub(super) async fn met_now(ctx: &Ctx, state: &mut State, head: &str) -> bool {
    let held = ctx.shared.status.lock().unwrap().held.clone();
    if !held.is_some_and(|h| h.commit == head && h.reason.starts_with(&format!("held: {HELD}"))) {
        return false;
    }
    let Some((_, fleet, _)) = state.head.good.clone() else {
        return false;
    };
    check(ctx, state, head, &fleet).await.is_ok()
}
