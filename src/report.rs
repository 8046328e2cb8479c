//! Plans as reviewers read them on a pull request: markdown with the summary,
//! cost and policy verdicts first, per-host details folded, diffs last; cut
//! in the middle to fit a forge's comment limit. Pure.

use std::borrow::Borrow;
use std::fmt::Write;

use crate::cloud::plan::{CloudPlan, cost_summary};
use crate::engine::HostResult;
use crate::engine::render::{summary_line, totals, with_cloud};
use crate::policy::Verdict;

/// GitHub's limit for a comment body.
pub const GITHUB_LIMIT: usize = 65_536;
/// The hidden marker that finds tidekeeper's comment again.
pub fn marker(fleet: &str) -> String {
    format!("<!-- tidekeeper:{fleet} -->")
}

/// The PR comment for a plan of `commit`.
pub fn markdown<R: Borrow<HostResult>>(
    fleet: &str,
    commit: &str,
    cloud: Option<&CloudPlan>,
    results: &[R],
    verdict: &Verdict,
    after_merge: &[String],
    limit: usize,
) -> String {
    let refs: Vec<&HostResult> = results.iter().map(|r| r.borrow()).collect();
    let t = with_cloud(totals(&refs), cloud);
    let mut head = format!(
        "{}\n### tidekeeper plan for `{}` at `{}`\n\n**{}**\n\n",
        marker(fleet),
        fleet,
        &commit[..commit.len().min(12)],
        summary_line(&t).trim().replace('\n', " ")
    );
    match cloud
        .map(|c| cost_summary(&c.cost))
        .filter(|c| !c.is_empty())
    {
        Some(line) => {
            let _ = writeln!(head, "{}\n", line.trim_end());
        }
        None => head.push_str("Monthly cost: no cloud servers.\n\n"),
    }
    if !after_merge.is_empty() {
        // A proposal is planned under the base branch's trust.
        head.push_str(
            "Planned as a proposal: these of its settings take effect only after merge:\n\n",
        );
        for a in after_merge {
            let _ = writeln!(head, "- {a}");
        }
        head.push('\n');
    }
    if verdict.deny.is_empty() && verdict.warn.is_empty() && verdict.errors.is_empty() {
        head.push_str("Policies: all passed.\n\n");
    } else {
        for d in &verdict.deny {
            let _ = writeln!(head, "- :x: **deny**: {d}");
        }
        for e in &verdict.errors {
            let _ = writeln!(head, "- :x: **policy error**: {e}");
        }
        for w in &verdict.warn {
            let _ = writeln!(head, "- :warning: warn: {w}");
        }
        head.push('\n');
    }
    if let Some(c) =
        cloud.filter(|c| !c.changes.is_empty() || !c.errors.is_empty() || c.unavailable.is_some())
    {
        // Server changes are few and carry the cost: shown open, before the hosts.
        let _ = writeln!(head, "```diff\n{}```\n", crate::cloud::plan::text(c, false));
    }
    let mut body = String::new();
    for r in results {
        let r = r.borrow();
        if let Some(e) = &r.error {
            let _ = writeln!(
                body,
                "<details><summary><b>{}</b>: error</summary>\n\n```\n{}\n```\n</details>\n",
                r.host,
                e.trim()
            );
            continue;
        }
        let Some(p) = &r.plan else { continue };
        if !p.has_changes() {
            continue;
        }
        let _ = writeln!(
            body,
            "<details><summary><b>{}</b>: {} change{}</summary>\n\n```diff\n{}```\n</details>\n",
            r.host,
            p.changes.len() + p.handlers.len(),
            if p.changes.len() + p.handlers.len() == 1 {
                ""
            } else {
                "s"
            },
            crate::engine::render::host_plan(p, false)
        );
    }
    let mut out = head.clone();
    out.push_str(&body);
    if out.len() <= limit {
        return out;
    }
    // Cut the middle of the details, never the summary.
    let note = "\n\n… (plan cut here to fit the comment limit; the full plan is in the git note on this commit) …\n\n";
    let room = limit.saturating_sub(head.len() + note.len());
    let keep_front = room / 2;
    let keep_back = room - keep_front;
    let cut = |s: &str, at: usize| {
        let mut i = at.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let front_end = cut(&body, keep_front);
    let mut back_start = cut(&body, body.len().saturating_sub(keep_back));
    while back_start < body.len() && !body.is_char_boundary(back_start) {
        back_start += 1;
    }
    format!("{head}{}{note}{}", &body[..front_end], &body[back_start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::{Action, Change, HostPlan};

    fn result(host: &str, files: usize) -> HostResult {
        let changes = (0..files)
            .map(|i| Change {
                kind: crate::change::ResourceKind::File,
                id: format!("/etc/app/{i}.conf"),
                action: Action::Update,
                attrs: vec![],
                diff: Some(format!(
                    "--- a\n+++ b\n@@ -1 +1 @@\n-old {i}\n+new {i} {}\n",
                    "x".repeat(80)
                )),
                note: None,
                was: None,
                item: None,
                prune: false,
                notify: vec![],
            })
            .collect();
        let mut r = HostResult::new(host, "10.0.0.1");
        r.plan = Some(HostPlan::new(host, changes));
        r
    }

    #[test]
    fn summary_and_verdicts_come_first() {
        let v = Verdict {
            deny: vec!["web-1 firewall ufw opens port 22 to the whole internet".into()],
            warn: vec![],
            errors: vec![],
        };
        let md = markdown(
            "acme",
            "0123456789abcdef",
            None,
            &[result("web-1", 1), result("web-2", 2)],
            &v,
            &[],
            GITHUB_LIMIT,
        );
        assert!(md.starts_with("<!-- tidekeeper:acme -->"));
        let summary = md
            .find("Plan: 0 to add, 3 to change, 0 to destroy.")
            .unwrap();
        let deny = md.find(":x: **deny**").unwrap();
        let details = md.find("<details>").unwrap();
        assert!(summary < deny && deny < details, "{md}");
        assert!(md.contains("+new 1"), "{md}");
    }

    #[test]
    fn a_long_plan_is_cut_in_the_middle_with_the_summary_intact() {
        let big = result("web-1", 2000);
        let md = markdown(
            "acme",
            "0123456789abcdef",
            None,
            &[big],
            &Verdict::default(),
            &[],
            GITHUB_LIMIT,
        );
        assert!(md.len() <= GITHUB_LIMIT, "{}", md.len());
        assert!(md.contains("Plan: 0 to add, 2000 to change, 0 to destroy."));
        assert!(md.contains("plan cut here to fit the comment limit"));
        assert!(md.contains("/etc/app/0.conf"), "the start stays");
        assert!(md.contains("/etc/app/1999.conf"), "the end stays");
        assert!(!md.contains("/etc/app/1000.conf"), "the middle goes");
    }
}
