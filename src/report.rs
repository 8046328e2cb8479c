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

/// A plan's text for a ```diff block: each line's marker moved to column 0
/// (GitHub colours a diff line only by its first character), `~` shown as
/// `!` (changed), the indentation kept after the marker.
pub fn diff_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        // A diff's own `---`/`+++` header is not a change.
        let header = body.starts_with("--- ") || body.starts_with("+++ ");
        let marker = body
            .chars()
            .next()
            .filter(|c| !header && matches!(c, '+' | '-' | '~'));
        match marker {
            // A replacement keeps its `-/+`.
            Some('-') if body.starts_with("-/+") => {
                out.push_str("-/+");
                out.push_str(&" ".repeat(indent));
                out.push_str(&body[3..]);
            }
            Some(m) if indent > 0 => {
                out.push(if m == '~' { '!' } else { m });
                out.push_str(&" ".repeat(indent));
                out.push_str(&body[1..]);
            }
            Some('~') => {
                out.push('!');
                out.push_str(&body[1..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One host's folded details: its summary line and the text of its code block.
struct Section {
    title: String,
    fence: &'static str,
    text: String,
}

impl Section {
    fn render(&self, text: &str, continued: bool) -> String {
        let more = if continued { " (continued)" } else { "" };
        format!(
            "<details><summary>{}{more}</summary>\n\n```{}\n{}```\n</details>\n\n",
            self.title, self.fence, text
        )
    }
}

/// A plan as reviewers read it: what the markdown is made of.
pub struct Review<'a, R> {
    pub fleet: &'a str,
    pub commit: &'a str,
    pub cloud: Option<&'a CloudPlan>,
    pub results: &'a [R],
    pub verdict: &'a Verdict,
    /// A proposal's settings that take effect only after merge.
    pub after_merge: &'a [String],
}

/// The summary, cost and verdicts (with the marker), and the per-host sections.
fn parts_of<R: Borrow<HostResult>>(r: &Review<'_, R>) -> (String, Vec<Section>) {
    let Review {
        fleet,
        commit,
        cloud,
        results,
        verdict,
        after_merge,
    } = *r;
    let refs: Vec<&HostResult> = results.iter().map(|r| r.borrow()).collect();
    let t = with_cloud(totals(&refs), cloud);
    let mut head = format!(
        "{}\n{}\n\n**{}**\n\n",
        marker(fleet),
        heading(fleet, commit),
        summary_line(&t).trim().replace('\n', " ")
    );
    match cloud
        .map(|c| cost_summary(&c.cost))
        .filter(|c| !c.is_empty())
    {
        Some(line) => {
            let _ = writeln!(head, "{}\n", line.trim_end());
            let table = cloud
                .map(crate::cloud::plan::cost_table)
                .unwrap_or_default();
            if !table.is_empty() {
                let _ = writeln!(head, "{table}");
            }
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
    head.push_str(&verdict.proposed_markdown());
    if let Some(c) =
        cloud.filter(|c| !c.changes.is_empty() || !c.errors.is_empty() || c.unavailable.is_some())
    {
        // Server changes are few and carry the cost: shown open, before the hosts.
        let _ = writeln!(
            head,
            "```diff\n{}```\n",
            diff_markers(&crate::cloud::plan::text(c, false))
        );
    }
    let mut sections = Vec::new();
    for r in results {
        let r = r.borrow();
        if let Some(e) = &r.error {
            sections.push(Section {
                title: format!("<b>{}</b>: error", r.host),
                fence: "",
                text: format!("{}\n", e.trim()),
            });
            continue;
        }
        let Some(p) = &r.plan else { continue };
        if !p.has_changes() {
            continue;
        }
        let n = p.changes.len() + p.handlers.len();
        sections.push(Section {
            title: format!(
                "<b>{}</b>: {n} change{}",
                r.host,
                if n == 1 { "" } else { "s" }
            ),
            fence: "diff",
            text: diff_markers(&crate::engine::render::host_plan(p, false)),
        });
    }
    (head, sections)
}

fn heading(fleet: &str, commit: &str) -> String {
    format!(
        "### tidekeeper plan for `{fleet}` at `{}`",
        &commit[..commit.len().min(12)]
    )
}

/// The marker of part `k` (from 1) of a plan's comments; part 1 has the
/// plain [`marker`].
pub fn part_marker(marker: &str, k: usize) -> String {
    if k <= 1 {
        return marker.to_string();
    }
    format!("{}:part-{k} -->", marker.trim_end_matches(" -->"))
}

/// The plan of `commit` as one markdown text (for the note on a commit and
/// `plan --markdown`): cut in the middle of the details when over `limit`.
pub fn markdown<R: Borrow<HostResult>>(r: &Review<'_, R>, limit: usize) -> String {
    let (head, sections) = parts_of(r);
    let body: String = sections.iter().map(|s| s.render(&s.text, false)).collect();
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

/// The plan as pull-request comments of at most `limit` bytes each, as
/// Atlantis splits them: the summary, cost and verdicts in the first, then
/// each host's details; a host's diff too long for what is left goes on in
/// the next comment, its code block closed and opened again — never cut
/// inside one. Each comment after the first has its own marker.
pub fn comments<R: Borrow<HostResult>>(r: &Review<'_, R>, limit: usize) -> Vec<String> {
    let (head, sections) = parts_of(r);
    let (fleet, commit) = (r.fleet, r.commit);
    // Room for the forge's own footer and a part's heading.
    let cap = limit.saturating_sub(300).max(1000);
    let next_head = |k: usize| {
        format!(
            "{}\n{} (part {k} of {{N}})\n\n",
            part_marker(&marker(fleet), k),
            heading(fleet, commit)
        )
    };
    let mut parts: Vec<String> = Vec::new();
    let mut cur = head;
    for s in &sections {
        let whole = s.render(&s.text, false);
        if cur.len() + whole.len() <= cap {
            cur.push_str(&whole);
            continue;
        }
        if next_head(parts.len() + 2).len() + whole.len() <= cap {
            parts.push(std::mem::replace(&mut cur, next_head(parts.len() + 2)));
            cur.push_str(&whole);
            continue;
        }
        // Longer than a comment: line by line, closing the block at each break.
        let wrap = s.render("", true).len();
        let mut chunk = String::new();
        let mut continued = false;
        for line in s.text.split_inclusive('\n') {
            let line = if line.len() > cap / 2 {
                let mut end = cap / 2;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{} …\n", &line[..end])
            } else {
                line.to_string()
            };
            if cur.len() + wrap + chunk.len() + line.len() > cap {
                if !chunk.is_empty() {
                    cur.push_str(&s.render(&chunk, continued));
                    continued = true;
                    chunk.clear();
                }
                parts.push(std::mem::replace(&mut cur, next_head(parts.len() + 2)));
            }
            chunk.push_str(&line);
        }
        if !chunk.is_empty() {
            cur.push_str(&s.render(&chunk, continued));
        }
    }
    parts.push(cur);
    let n = parts.len();
    if n > 1 {
        let first = heading(fleet, commit);
        parts[0] = parts[0].replacen(&first, &format!("{first} (part 1 of {n})"), 1);
    }
    parts
        .into_iter()
        .map(|p| p.replacen("{N}", &n.to_string(), 1))
        .collect()
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
            proposed: None,
            prints: vec![],
        };
        let md = markdown(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &[result("web-1", 1), result("web-2", 2)],
                verdict: &v,
                after_merge: &[],
            },
            GITHUB_LIMIT,
        );
        assert!(md.starts_with("<!-- tidekeeper:acme -->"));
        let summary = md
            .find("Plan: 0 to add, 3 to change, 0 to destroy.")
            .unwrap();
        let deny = md.find(":x: **deny**").unwrap();
        let details = md.find("<details>").unwrap();
        assert!(summary < deny && deny < details, "{md}");
        assert!(md.contains("\n+        new 1"), "{md}");
    }

    #[test]
    fn a_long_plan_is_cut_in_the_middle_with_the_summary_intact() {
        let big = result("web-1", 2000);
        let md = markdown(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &[big],
                verdict: &Verdict::default(),
                after_merge: &[],
            },
            GITHUB_LIMIT,
        );
        assert!(md.len() <= GITHUB_LIMIT, "{}", md.len());
        assert!(md.contains("Plan: 0 to add, 2000 to change, 0 to destroy."));
        assert!(md.contains("plan cut here to fit the comment limit"));
        assert!(md.contains("/etc/app/0.conf"), "the start stays");
        assert!(md.contains("/etc/app/1999.conf"), "the end stays");
        assert!(!md.contains("/etc/app/1000.conf"), "the middle goes");
    }

    #[test]
    fn diff_markers_are_at_column_zero_so_github_colours_them() {
        let plan = "    -/+ aegis server\n    ~ aegis file /etc/x\n        --- /etc/x\n        +++ /etc/x\n        @@ -1,2 +1,2 @@\n         same\n        -old\n        +new\n    + aegis dir /srv\n";
        let md = diff_markers(plan);
        assert_eq!(
            md,
            "-/+     aegis server\n!     aegis file /etc/x\n        --- /etc/x\n        +++ /etc/x\n        @@ -1,2 +1,2 @@\n         same\n-        old\n+        new\n+     aegis dir /srv\n"
        );
        for l in md.lines() {
            let first = l.chars().next().unwrap();
            assert!(matches!(first, '+' | '-' | '!' | ' '), "{l}");
        }
    }

    #[test]
    fn a_plan_too_long_for_one_comment_is_split_never_inside_a_code_block() {
        let big = result("web-1", 2000);
        let small = result("web-2", 3);
        let parts = comments(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &[small, big],
                verdict: &Verdict::default(),
                after_merge: &[],
            },
            GITHUB_LIMIT,
        );
        assert!(parts.len() >= 2, "{}", parts.len());
        let n = parts.len();
        for (k, p) in parts.iter().enumerate() {
            assert!(p.len() <= GITHUB_LIMIT - 200, "part {k}: {}", p.len());
            assert_eq!(
                p.matches("```").count() % 2,
                0,
                "part {k} leaves a code block open"
            );
            assert_eq!(
                p.matches("<details>").count(),
                p.matches("</details>").count()
            );
            assert!(p.contains(&format!("(part {} of {n})", k + 1)), "part {k}");
            assert!(
                p.starts_with(&part_marker(&marker("acme"), k + 1)),
                "part {k}"
            );
        }
        assert!(parts[0].contains("Plan: 0 to add, 2003 to change, 0 to destroy."));
        let all = parts.concat();
        for i in [0, 1000, 1999] {
            assert!(
                all.contains(&format!("/etc/app/{i}.conf")),
                "{i} is in some part"
            );
        }
        assert!(parts[1].contains("<b>web-1</b>: 2000 changes (continued)"));
        // A plan that fits is one comment with the plain marker.
        let one = comments(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &[result("web-1", 3)],
                verdict: &Verdict::default(),
                after_merge: &[],
            },
            GITHUB_LIMIT,
        );
        assert_eq!(one.len(), 1);
        assert!(!one[0].contains("(part"));
        assert_eq!(
            part_marker("<!-- tidekeeper:acme -->", 3),
            "<!-- tidekeeper:acme:part-3 -->"
        );
    }
}
