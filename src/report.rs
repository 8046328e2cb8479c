//! Plans as reviewers read them on a pull request: markdown with the summary,
//! cost and policy verdicts first, per-host details folded, diffs last; cut
//! in the middle to fit a forge's comment limit; a proposal's whole report
//! (note, comments, commit status) and the plan's JSON, formatted once for
//! the daemon and the CLI alike. Pure.

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

/// At most this many comments for one plan on a pull request: the rest is
/// summarised, with a pointer to the dashboard and the git note.
pub const MAX_COMMENTS: usize = 5;
/// At most this many bytes in a plan's git note.
pub const NOTE_LIMIT: usize = 256 * 1024;
/// Where the dashboard the daemon serves lists the proposals' plans.
pub const DASHBOARD_PROPOSALS: &str = "/#proposals";

/// A code fence for `text`: longer than any run of backticks in it (at
/// least three), so nothing inside can close the block.
pub fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// `text` in a fenced code block (with `info`, e.g. `diff`), whatever it holds.
pub fn fenced(info: &str, text: &str) -> String {
    let f = fence_for(text);
    let nl = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{f}{info}\n{text}{nl}{f}\n")
}

/// Text a proposal controls (a policy message, a name, an error) as one
/// line of markdown that shows as written: HTML (`<!--`, `<script>`) and
/// entities neutralised, backticks, pipes, brackets and backslashes escaped,
/// line breaks and control characters made spaces — it cannot open a code
/// block, a comment, a link or a table cell of its own.
pub fn md_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '|' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A commit status description: plain text of at most 140 characters, on
/// one line, without control characters.
pub fn status_text(text: &str) -> String {
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one = one.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= 140 {
        return one;
    }
    let mut cut: String = one.chars().take(139).collect();
    cut.push('…');
    cut
}

/// A git note as plain text: no control characters but line breaks and
/// tabs (nothing a terminal showing `git notes show` would act on), and at
/// most [`NOTE_LIMIT`] bytes, cut at a line with what was left out said.
pub fn note_text(text: &str) -> String {
    note_text_within(text, NOTE_LIMIT)
}

/// [`note_text`] within `limit` bytes (room left for what follows it).
pub fn note_text_within(text: &str, limit: usize) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    if clean.len() <= limit {
        return clean;
    }
    let room = limit.saturating_sub(300);
    let mut end = room;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(nl) = clean[..end].rfind('\n') {
        end = nl + 1;
    }
    let more = clean[end..].lines().count();
    format!(
        "{}\n… {more} more lines not shown (the note is capped at {} KiB); see the dashboard's page for this pull request at {DASHBOARD_PROPOSALS} on the tidekeeper daemon\n",
        &clean[..end],
        NOTE_LIMIT / 1024
    )
}

/// The comment for a proposal whose config does not load: its errors, in a
/// code block they cannot close.
pub fn invalid_config(marker: &str, errors: &[String]) -> String {
    format!(
        "{marker}\n**Invalid config**\n\n{}",
        fenced("", &errors.join("\n"))
    )
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
    /// Already escaped (see [`md_text`]).
    title: String,
    fence: &'static str,
    text: String,
}

impl Section {
    fn render(&self, text: &str, continued: bool) -> String {
        let more = if continued { " (continued)" } else { "" };
        format!(
            "<details><summary>{}{more}</summary>\n\n{}</details>\n\n",
            self.title,
            fenced(self.fence, text)
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
            let _ = writeln!(head, "- {}", md_text(a));
        }
        head.push('\n');
    }
    if verdict.deny.is_empty() && verdict.warn.is_empty() && verdict.errors.is_empty() {
        head.push_str("Policies: all passed.\n\n");
    } else {
        for d in &verdict.deny {
            let _ = writeln!(head, "- :x: **deny**: {}", md_text(d));
        }
        for e in &verdict.errors {
            let _ = writeln!(head, "- :x: **policy error**: {}", md_text(e));
        }
        for w in &verdict.warn {
            let _ = writeln!(head, "- :warning: warn: {}", md_text(w));
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
            "{}",
            fenced("diff", &diff_markers(&crate::cloud::plan::text(c, false)))
        );
    }
    let mut sections = Vec::new();
    for r in results {
        let r = r.borrow();
        if let Some(e) = &r.error {
            sections.push(Section {
                title: format!("<b>{}</b>: error", md_text(&r.host)),
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
                md_text(&r.host),
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
        "### tidekeeper plan for `{}` at `{}`",
        fleet.replace(['`', '\n', '\r'], ""),
        commit
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect::<String>()
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
/// `plan --markdown`): when over `limit`, the middle of the details is left
/// out — whole lines, each host's code block closed — and counted.
pub fn markdown<R: Borrow<HostResult>>(r: &Review<'_, R>, limit: usize) -> String {
    let (head, sections) = parts_of(r);
    let body: String = sections.iter().map(|s| s.render(&s.text, false)).collect();
    let mut out = head.clone();
    out.push_str(&body);
    if out.len() <= limit {
        return out;
    }
    // Cut the middle of the details, never the summary.
    let lines: Vec<(usize, &str)> = sections
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.text.split_inclusive('\n').map(move |l| (i, l)))
        .collect();
    let wrap =
        |i: usize| sections[i].render("", true).len() + 2 * fence_for(&sections[i].text).len();
    let room = limit.saturating_sub(head.len() + 600);
    let (mut front, mut used, mut open) = (0, 0, None);
    while front < lines.len() {
        let (i, l) = lines[front];
        let cost = l.len() + if open == Some(i) { 0 } else { wrap(i) };
        if used + cost > room / 2 {
            break;
        }
        used += cost;
        open = Some(i);
        front += 1;
    }
    let (mut back, mut used, mut open) = (lines.len(), 0, None);
    while back > front {
        let (i, l) = lines[back - 1];
        let cost = l.len() + if open == Some(i) { 0 } else { wrap(i) };
        if used + cost > room - room / 2 {
            break;
        }
        used += cost;
        open = Some(i);
        back -= 1;
    }
    let render = |range: &[(usize, &str)], continued_first: bool| {
        let mut text = String::new();
        let mut k = 0;
        while k < range.len() {
            let i = range[k].0;
            let mut chunk = String::new();
            while k < range.len() && range[k].0 == i {
                chunk.push_str(range[k].1);
                k += 1;
            }
            let continued = continued_first && text.is_empty();
            text.push_str(&sections[i].render(&chunk, continued));
        }
        text
    };
    let kept: std::collections::BTreeSet<usize> = lines[..front]
        .iter()
        .chain(&lines[back..])
        .map(|(i, _)| *i)
        .collect();
    let hidden_hosts = sections.len() - kept.len();
    let continued = front > 0 && back < lines.len() && lines[front - 1].0 == lines[back].0;
    let hosts = if hidden_hosts > 0 {
        format!(" ({hidden_hosts} more hosts)")
    } else {
        String::new()
    };
    let note = format!(
        "\n\n… (plan cut here to fit the comment limit: {} more lines{hosts} not shown; the full plan is in the git note on this commit and on the dashboard's page for this pull request at {DASHBOARD_PROPOSALS}) …\n\n",
        back - front
    );
    format!(
        "{head}{}{note}{}",
        render(&lines[..front], false),
        render(&lines[back..], continued)
    )
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
    // Per part: the hosts it starts and the lines it shows.
    let mut shown: Vec<(usize, usize)> = vec![(0, 0)];
    let mut cur = head;
    for s in &sections {
        let whole = s.render(&s.text, false);
        let n_lines = s.text.lines().count();
        if cur.len() + whole.len() <= cap {
            cur.push_str(&whole);
            let last = shown.last_mut().expect("one per part");
            last.0 += 1;
            last.1 += n_lines;
            continue;
        }
        if next_head(parts.len() + 2).len() + whole.len() <= cap {
            parts.push(std::mem::replace(&mut cur, next_head(parts.len() + 2)));
            shown.push((1, n_lines));
            cur.push_str(&whole);
            continue;
        }
        shown.last_mut().expect("one per part").0 += 1;
        // Longer than a comment: line by line, closing the block at each break.
        let wrap = s.render("", true).len();
        let mut chunk = String::new();
        let mut continued = false;
        // The longest fence the chunk needs so far.
        let mut fence = 3;
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
            fence = fence.max(fence_for(&line).len());
            if cur.len() + wrap + 2 * fence + chunk.len() + line.len() > cap {
                if !chunk.is_empty() {
                    cur.push_str(&s.render(&chunk, continued));
                    continued = true;
                    chunk.clear();
                }
                fence = fence_for(&line).len();
                parts.push(std::mem::replace(&mut cur, next_head(parts.len() + 2)));
                shown.push((0, 0));
            }
            chunk.push_str(&line);
            shown.last_mut().expect("one per part").1 += 1;
        }
        if !chunk.is_empty() {
            cur.push_str(&s.render(&chunk, continued));
        }
    }
    parts.push(cur);
    if parts.len() > MAX_COMMENTS {
        // A flood of comments helps nobody: the rest is counted.
        let (hosts, lines) = shown[MAX_COMMENTS..]
            .iter()
            .fold((0, 0), |(h, l), (h2, l2)| (h + h2, l + l2));
        parts.truncate(MAX_COMMENTS);
        let _ = write!(
            parts[MAX_COMMENTS - 1],
            "\n… {hosts} more hosts and {lines} more lines not shown: at most {MAX_COMMENTS} comments per pull request; see the git note on this commit and the dashboard's page for this pull request at {DASHBOARD_PROPOSALS} on the tidekeeper daemon.\n"
        );
    }
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

/// The layout of the plan as JSON (`plan --json`, notes, saved plans);
/// raised when a field changes meaning or goes away.
pub const PLAN_JSON_VERSION: u32 = 1;

/// The plan as JSON: the format version, fleet and commit, the plan's own
/// document (`hosts`, `cloud`, `summary`) with the policies' verdict;
/// `after_merge` too for a proposal planned under a trusted base.
pub fn plan_json<R: Borrow<HostResult>>(r: &Review<'_, R>, after_merge: bool) -> serde_json::Value {
    let results: Vec<&HostResult> = r.results.iter().map(Borrow::borrow).collect();
    let mut doc = crate::reconcile::json(r.cloud, &results);
    // Machines reading it know which layout and which commit it is.
    doc["format_version"] = serde_json::json!(PLAN_JSON_VERSION);
    doc["fleet"] = serde_json::json!(r.fleet);
    doc["commit"] = serde_json::json!(r.commit);
    doc["policy"] = serde_json::to_value(r.verdict).unwrap_or_default();
    if after_merge {
        doc["after_merge"] = serde_json::to_value(r.after_merge).unwrap_or_default();
    }
    doc
}

/// Which proposal was planned, and its plan's digest.
pub struct Proposed<'a> {
    /// The proposal's ref.
    pub name: &'a str,
    /// The trusted base it was planned under.
    pub base: &'a str,
    pub digest: &'a str,
}

/// A proposal's plan as it is reported: the note on its commit, the
/// comments on its pull request, and the commit status.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalReport {
    /// The markdown, the digest and the plan as JSON.
    pub note: String,
    /// As many comments as the plan needs; the digest stamp on the first.
    pub comments: Vec<String>,
    /// The commit status: `success`, `failure` (denied) or `error` (some
    /// host or server could not be planned), and its description.
    pub status: (&'static str, String),
}

/// A proposal's report, formatted once for the daemon and the CLI alike.
/// Not redacted: the caller redacts with the fleet it trusts.
pub fn proposal<R: Borrow<HostResult>>(r: &Review<'_, R>, p: &Proposed<'_>) -> ProposalReport {
    let digest = p.digest;
    let stamp =
        format!("\nPlan digest: `{digest}` (a merge with this tree is compared with this plan)\n");
    let md = markdown(r, usize::MAX);
    let mut json = plan_json(r, true);
    json["ref"] = p.name.into();
    json["base"] = p.base.into();
    json["digest"] = digest.into();
    let note = format!(
        "{md}{stamp}\n<!-- plan as JSON -->\n{}",
        fenced(
            "json",
            &serde_json::to_string_pretty(&json).unwrap_or_default()
        )
    );
    let mut parts = comments(r, GITHUB_LIMIT - stamp.len() - 200);
    match parts.first_mut() {
        Some(first) => first.push_str(&stamp),
        None => parts.push(stamp),
    }
    ProposalReport {
        note,
        comments: parts,
        status: proposal_status(r),
    }
}

/// The commit status of a proposal's plan.
fn proposal_status<R: Borrow<HostResult>>(r: &Review<'_, R>) -> (&'static str, String) {
    let verdict = r.verdict;
    if verdict.blocks() {
        let first = verdict
            .deny
            .first()
            .or(verdict.errors.first())
            .cloned()
            .unwrap_or_default();
        // The policy's name first: the description is cut at 140 characters.
        let desc = match verdict.denial_of(&first) {
            Some(d) => format!("denied by {}: {}", d.policy, d.message),
            None => format!("denied: {first}"),
        };
        return ("failure", desc);
    }
    let results: Vec<&HostResult> = r.results.iter().map(Borrow::borrow).collect();
    let t = crate::reconcile::totals(r.cloud, &results);
    if t.errors > 0 {
        (
            "error",
            format!("{} host(s) or server(s) could not be planned", t.errors),
        )
    } else {
        (
            "success",
            summary_line(&t).lines().next().unwrap_or("").to_string(),
        )
    }
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
            ..Default::default()
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
        let big = result("web-1", 800);
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
        assert!(parts[0].contains("Plan: 0 to add, 803 to change, 0 to destroy."));
        let all = parts.concat();
        for i in [0, 400, 799] {
            assert!(
                all.contains(&format!("/etc/app/{i}.conf")),
                "{i} is in some part"
            );
        }
        assert!(parts[1].contains("<b>web-1</b>: 800 changes (continued)"));
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

    /// The lines of `md` outside its code blocks, as CommonMark reads the
    /// fences: a block closes only on a line of at least as many backticks.
    fn outside_code(md: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut open: Option<usize> = None;
        for l in md.lines() {
            let t = l.trim_start();
            let ticks = t.chars().take_while(|c| *c == '`').count();
            match open {
                None if ticks >= 3 => open = Some(ticks),
                None => out.push(l.to_string()),
                Some(n) if ticks >= n && t[ticks..].trim().is_empty() => open = None,
                Some(_) => {}
            }
        }
        assert!(open.is_none(), "a code block left open: {md}");
        out
    }

    fn hostile_review_parts() -> (Vec<String>, String) {
        let evil =
            "x\n```\n<!-- hide the rest\n<script>alert(1)</script> & | `tick` [link](http://evil)";
        let mut r = result("web-1", 1);
        r.host = "web-1<!--".into();
        let plan = r.plan.as_mut().unwrap();
        plan.changes[0].id = format!("/etc/{evil}");
        plan.changes[0].diff = Some(format!(
            "--- a\n+++ b\n@@ -1 +1 @@\n-old\n+````\n+<!-- hidden\n+{evil}\n"
        ));
        let v = Verdict {
            deny: vec![format!("denied {evil}")],
            warn: vec![format!("warned {evil}")],
            errors: vec![],
            ..Default::default()
        };
        let after = vec![format!("after merge {evil}")];
        let review = Review {
            fleet: "acme",
            commit: "0123456789abcdef",
            cloud: None,
            results: &[r],
            verdict: &v,
            after_merge: &after,
        };
        (
            comments(&review, GITHUB_LIMIT),
            markdown(&review, GITHUB_LIMIT),
        )
    }

    #[test]
    fn proposal_text_is_escaped_and_cannot_leave_its_code_block() {
        let (parts, md) = hostile_review_parts();
        assert_eq!(parts.len(), 1);
        for text in [&parts[0], &md] {
            let outside = outside_code(text).join("\n");
            // Only tidekeeper's own marker is an HTML comment.
            assert_eq!(outside.matches("<!--").count(), 1, "{text}");
            assert!(!outside.contains("<script>"), "{outside}");
            assert!(!outside.contains("[link](http"), "no link: {outside}");
            assert!(
                outside.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; \\| \\`tick\\`"),
                "{outside}"
            );
            assert!(
                outside.contains("<b>web-1&lt;!--</b>: 1 change"),
                "{outside}"
            );
            assert!(
                outside.contains("- :x: **deny**: denied x \\`\\`\\` &lt;!-- hide the rest"),
                "{outside}"
            );
            // The diff is all there, inside a fence longer than its backticks.
            assert!(text.contains("`````diff\n"), "{text}");
            assert!(text.contains("\n+        <!-- hidden\n"), "{text}");
            assert!(text.contains("</details>"), "{text}");
        }
        assert_eq!(fence_for("a ```` b"), "`````");
        assert_eq!(fence_for("none"), "```");
        let ic = invalid_config("<!-- m -->", &["bad ```\n<!-- x".into()]);
        assert_eq!(
            outside_code(&ic).join("\n").matches("<!--").count(),
            1,
            "{ic}"
        );
    }

    #[test]
    fn status_descriptions_and_notes_are_plain_capped_text() {
        let d = status_text(&format!("denied: a\nb\x1b[31m {}", "y".repeat(300)));
        assert_eq!(d.chars().count(), 140, "{d}");
        assert!(
            d.starts_with("denied: a b [31m y") && d.ends_with('…'),
            "{d}"
        );
        assert!(!d.contains(['\n', '\x1b']));
        assert_eq!(status_text("short"), "short");
        // A 43 MB plan makes a note of at most 256 KiB, saying what it left out.
        let huge = format!(
            "head\x1b]0;title\x07\n{}",
            "+ line of a 1 MB file\n".repeat(200_000)
        );
        let n = note_text(&huge);
        assert!(n.len() <= NOTE_LIMIT, "{}", n.len());
        assert!(
            n.starts_with("head]0;title\n"),
            "no escape sequences: {}",
            &n[..40]
        );
        assert!(n.contains("more lines not shown") && n.contains(DASHBOARD_PROPOSALS));
        assert_eq!(note_text("small\n"), "small\n");
    }

    #[test]
    fn a_huge_plan_makes_at_most_five_comments_and_says_what_it_left_out() {
        // A 1 MB file on 20 hosts.
        let hosts: Vec<HostResult> = (0..20).map(|i| result(&format!("web-{i}"), 400)).collect();
        let parts = comments(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &hosts,
                verdict: &Verdict::default(),
                after_merge: &[],
            },
            GITHUB_LIMIT,
        );
        assert_eq!(parts.len(), MAX_COMMENTS);
        for (k, p) in parts.iter().enumerate() {
            assert!(p.len() <= GITHUB_LIMIT, "part {k}: {}", p.len());
            assert!(
                p.contains(&format!("(part {} of {MAX_COMMENTS})", k + 1)),
                "part {k}"
            );
            outside_code(p);
        }
        let last = &parts[MAX_COMMENTS - 1];
        assert!(
            last.contains("15 more hosts and "),
            "{}",
            &last[last.len() - 400..]
        );
        assert!(last.contains("more lines not shown") && last.contains(DASHBOARD_PROPOSALS));
        // The note of the same plan is cut to whole lines, its blocks closed.
        let md = markdown(
            &Review {
                fleet: "acme",
                commit: "0123456789abcdef",
                cloud: None,
                results: &hosts,
                verdict: &Verdict::default(),
                after_merge: &[],
            },
            NOTE_LIMIT,
        );
        assert!(md.len() <= NOTE_LIMIT, "{}", md.len());
        outside_code(&md);
        assert!(md.contains("more hosts) not shown"), "{}", md.len());
    }

    #[test]
    fn a_proposal_report_carries_its_digest_json_and_status_once() {
        let results = [result("web-1", 1)];
        let verdict = Verdict::default();
        let review = Review {
            fleet: "acme",
            commit: "0123456789abcdef",
            cloud: None,
            results: &results,
            verdict: &verdict,
            after_merge: &[],
        };
        let p = proposal(
            &review,
            &Proposed {
                name: "refs/pull/7/head",
                base: "fedcba9876543210",
                digest: "d1g35t",
            },
        );
        assert!(p.note.starts_with("<!-- tidekeeper:acme -->"), "{}", p.note);
        assert!(p.note.contains("Plan digest: `d1g35t`"));
        assert!(
            p.note.contains("\"ref\": \"refs/pull/7/head\""),
            "{}",
            p.note
        );
        assert!(p.note.contains("\"base\": \"fedcba9876543210\""));
        assert!(p.note.contains("\"after_merge\": []"));
        assert_eq!(p.comments.len(), 1);
        assert!(p.comments[0].ends_with(
            "\nPlan digest: `d1g35t` (a merge with this tree is compared with this plan)\n"
        ));
        assert_eq!(p.status.0, "success");
        assert!(p.status.1.contains("1 to change"), "{}", p.status.1);
    }

    #[test]
    fn a_denied_proposal_names_the_denial_first_in_its_status() {
        let results = [result("web-1", 1)];
        let verdict = Verdict {
            deny: vec!["web-1 opens port 22 to the world".into()],
            ..Default::default()
        };
        let review = Review {
            fleet: "acme",
            commit: "0123456789abcdef",
            cloud: None,
            results: &results,
            verdict: &verdict,
            after_merge: &[],
        };
        let p = proposal(
            &review,
            &Proposed {
                name: "refs/pull/7/head",
                base: "fedcba9876543210",
                digest: "d1g35t",
            },
        );
        assert_eq!(
            p.status,
            ("failure", "denied: web-1 opens port 22 to the world".into())
        );
        // The CLI's JSON is the same document, without the proposal's fields.
        let doc = plan_json(&review, false);
        assert_eq!(doc["policy"]["deny"][0], "web-1 opens port 22 to the world");
        assert!(doc.get("after_merge").is_none() && doc.get("digest").is_none());
    }
}
