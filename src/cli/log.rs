//! `tidekeeper log`: the audit trail of the followed branch — its commits,
//! newest first along first parents, with what the daemon did with each
//! (the trailers at the end of its note: verdict, when, who merged, who
//! approved, the reviewed plan, who released it). Read-only, from the
//! local repo's notes ref.

use chrono::{DateTime, Utc};

use super::*;
use crate::audit::Audit;

/// The version of `tidekeeper log --format json`'s document.
const LOG_JSON_VERSION: u32 = 1;

/// One commit of the history, with what its note says.
struct Entry {
    commit: String,
    subject: String,
    committed_at: String,
    /// The note's first line, when there is a note.
    noted: Option<String>,
    audit: Option<Audit>,
}

pub(super) fn log(
    repo: &RepoArgs,
    count: usize,
    since: Option<DateTime<Utc>>,
    format: LogOutput,
) -> CliResult {
    let path = source::discover(&repo.repo).map_err(CliError::new)?;
    let git = git2::Repository::open(&path)
        .map_err(|e| CliError::new(format!("{}: {}", path.display(), e.message())))?;
    // The commit read first: a ref that is not there is that, not a config
    // that does not load.
    let tree = read_tree(repo)?;
    let notes_ref = notes_ref(&tree, &repo.refname);
    if git.find_reference(&notes_ref).is_err() {
        return Err(no_notes(&git, &path, &notes_ref));
    }
    let entries = history(&git, &repo.refname, &notes_ref, count, since)
        .map_err(|e| CliError::new(format!("{}: {}", path.display(), e.message())))?;
    match format {
        LogOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json(&repo.refname, &notes_ref, &entries)).expect("json")
        ),
        LogOutput::Text => print!("{}", table(&entries)),
    }
    Ok(Outcome::Done)
}

/// The fleet's `status.notes_ref` at the commit read; the default when the
/// config there does not load (its notes are still worth reading).
fn notes_ref(tree: &ConfigTree, refname: &str) -> String {
    match model::load(tree) {
        Ok(f) => f.settings.notes_ref,
        Err(_) => {
            let default = crate::model::desired::DEFAULT_NOTES_REF;
            eprintln!(
                "warning: the config at {refname} does not load; reading the notes in {default} (`tidekeeper validate` says why)"
            );
            default.to_string()
        }
    }
}

/// The notes ref is not here: git does not fetch notes by itself. The
/// command that brings it, from the remote the daemon pushes to.
fn no_notes(git: &git2::Repository, path: &Path, notes_ref: &str) -> CliError {
    let remotes = git.remotes().ok();
    let names: Vec<&str> = remotes
        .iter()
        .flat_map(|r| r.iter().flatten().flatten())
        .collect();
    let remote = names
        .iter()
        .find(|n| **n == "origin")
        .or(names.first())
        .copied()
        // No remote: the URL the daemon was given (`tidekeeper run --repo`).
        .unwrap_or("DAEMON-REPO-URL");
    CliError::new(format!(
        "no notes ref {notes_ref} in {}: the daemon pushes its notes on reconciled commits to the repo it follows, and git does not fetch notes unless asked",
        path.display()
    ))
    .help(format!(
        "fetch them: git -C {} fetch {remote} {notes_ref}:{notes_ref}",
        path.display()
    ))
}

/// The first-parent history from `refname`, newest first: at most `count`
/// commits, none older than `since`.
fn history(
    git: &git2::Repository,
    refname: &str,
    notes_ref: &str,
    count: usize,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Entry>, git2::Error> {
    let head = git.revparse_single(refname)?.peel_to_commit()?;
    let mut walk = git.revwalk()?;
    walk.push(head.id())?;
    walk.simplify_first_parent()?;
    let mut out = Vec::new();
    for oid in walk.take(count) {
        let c = git.find_commit(oid?)?;
        let when = DateTime::from_timestamp(c.time().seconds(), 0).unwrap_or_default();
        if since.is_some_and(|s| when < s) {
            break;
        }
        let note = git
            .find_note(Some(notes_ref), c.id())
            .ok()
            .and_then(|n| n.message().ok().map(String::from));
        out.push(Entry {
            commit: c.id().to_string(),
            subject: c.summary().ok().flatten().unwrap_or("").to_string(),
            committed_at: when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            noted: note
                .as_deref()
                .map(|n| n.lines().next().unwrap_or("").to_string()),
            audit: note.as_deref().and_then(Audit::parse),
        });
    }
    Ok(out)
}

/// The versioned JSON document: every field present in every entry.
fn json(refname: &str, notes_ref: &str, entries: &[Entry]) -> serde_json::Value {
    let commits: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let a = e.audit.as_ref();
            serde_json::json!({
                "commit": e.commit,
                "subject": e.subject,
                "committed_at": e.committed_at,
                "reconciled": e.noted.is_some(),
                "verdict": a.map(|a| a.verdict),
                "at": a.map(|a| &a.at),
                "merged_by": a.and_then(|a| a.merged_by.as_ref()),
                "approved_by": a.map(|a| a.approved_by.clone()).unwrap_or_default(),
                "reviewed_plan": a.and_then(|a| a.reviewed.as_ref()),
                "released": a.and_then(|a| a.released.as_ref()),
                "window": a.and_then(|a| a.window.as_ref()),
                "summary": a.map(|a| a.summary.clone()).or_else(|| e.noted.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "format_version": LOG_JSON_VERSION,
        "ref": refname,
        "notes_ref": notes_ref,
        "commits": commits,
    })
}

/// A cell as a terminal shows it safely: no control characters.
fn cell(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// One row per commit, columns as wide as their widest cell.
fn table(entries: &[Entry]) -> String {
    let head = [
        "COMMIT",
        "WHEN",
        "VERDICT",
        "MERGED BY",
        "APPROVED BY",
        "REVIEWED PLAN",
        "RELEASED BY",
        "SUMMARY",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for e in entries {
        rows.push(row(e));
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if entries.is_empty() {
        out.push_str("(no commits)\n");
    }
    out
}

fn row(e: &Entry) -> Vec<String> {
    let short = e.commit[..e.commit.len().min(12)].to_string();
    let dash = || "-".to_string();
    let Some(a) = &e.audit else {
        // Not reconciled, or noted before notes carried an audit.
        let (verdict, summary) = match &e.noted {
            None => ("not reconciled".to_string(), e.subject.clone()),
            Some(first) => (dash(), first.clone()),
        };
        return [
            short,
            dash(),
            verdict,
            dash(),
            dash(),
            dash(),
            dash(),
            summary,
        ]
        .map(|c| cell(&c))
        .to_vec();
    };
    let or_dash = |v: Option<String>| v.filter(|v| !v.is_empty()).unwrap_or_else(dash);
    [
        short,
        a.at.clone(),
        a.verdict.word().to_string(),
        or_dash(a.merged_by.clone()),
        or_dash(Some(a.approved_by.join(", "))),
        or_dash(
            a.reviewed
                .as_ref()
                .map(|r| format!("{} {}", r.proposal, &r.digest[..r.digest.len().min(12)])),
        ),
        or_dash(a.released.as_ref().map(|r| format!("{} at {}", r.by, r.at))),
        a.summary.clone(),
    ]
    .map(|c| cell(&c))
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Released, Verdict};

    fn entry(noted: Option<&str>, audit: Option<Audit>) -> Entry {
        Entry {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            subject: "raise the web tier".into(),
            committed_at: "2026-12-07T01:00:00Z".into(),
            noted: noted.map(String::from),
            audit,
        }
    }

    #[test]
    fn the_table_shows_the_audit_an_old_note_and_a_commit_never_reconciled() {
        let a = Audit {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            verdict: Verdict::Applied,
            at: "2026-12-07T02:00:00Z".into(),
            merged_by: None,
            approved_by: vec![],
            reviewed: None,
            released: Some(Released {
                by: "dave".into(),
                at: "2026-12-07T01:30:00Z".into(),
                now: true,
            }),
            window: None,
            summary: "applied to 1 host(s)".into(),
        };
        let t = table(&[
            entry(Some("tidekeeper reconcile of 0123"), Some(a)),
            entry(Some("tidekeeper reconcile of 0123"), None),
            entry(None, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("COMMIT        WHEN"), "{t}");
        assert!(
            lines[1].contains("2026-12-07T02:00:00Z  applied")
                && lines[1].contains("dave at 2026-12-07T01:30:00Z"),
            "{t}"
        );
        assert!(lines[2].ends_with("tidekeeper reconcile of 0123"), "{t}");
        assert!(lines[3].contains("not reconciled"), "{t}");
        assert!(lines[3].ends_with("raise the web tier"), "{t}");
    }

    #[test]
    fn a_cell_cannot_send_escape_sequences_to_the_terminal() {
        let mut e = entry(Some("x\u{1b}[2Jcleared"), None);
        e.subject = "s".into();
        assert!(!table(&[e]).contains('\u{1b}'));
    }
}
