//! The audit trail on a reconciled commit: what the daemon decided, when,
//! and on whose word (who merged, who approved, which reviewed plan it
//! matched, who released it, the apply window). Written as a block of
//! git-trailer lines at the end of the commit's note, read back by
//! `tidekeeper log`. Pure: text in, text out.
//!
//! Values come partly from people (logins, branch names of proposals), so
//! each is made one line before it is written: a value can never add a
//! trailer line of its own.

use serde::Serialize;

/// What became of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every host got it.
    Applied,
    /// Some hosts were unreachable or busy; they get it on a later pass.
    AppliedInPart,
    /// An apply failed: held until a newer commit or `tidekeeper retry`.
    Quarantined,
    /// Not applied for want of a reviewed plan (or the plan differs from it).
    Held,
    /// Invalid config, or denied by the policies: nothing applied.
    Rejected,
    /// The fleet is suspended: planned, nothing applied.
    PlannedOnly,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Applied,
        Verdict::AppliedInPart,
        Verdict::Quarantined,
        Verdict::Held,
        Verdict::Rejected,
        Verdict::PlannedOnly,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::AppliedInPart => "applied-in-part",
            Verdict::Quarantined => "quarantined",
            Verdict::Held => "held",
            Verdict::Rejected => "rejected",
            Verdict::PlannedOnly => "planned-only",
        }
    }

    fn of_word(w: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.word() == w)
    }
}

/// The reviewed plan of the commit's tree: the proposal it was planned on
/// and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reviewed {
    pub proposal: String,
    pub digest: String,
}

/// An operator's release of a held commit (`tidekeeper release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub by: String,
    /// When it was asked for (RFC 3339).
    pub at: String,
    /// Applied at once, rather than in the apply window.
    pub now: bool,
}

/// The audit record of one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub commit: String,
    pub verdict: Verdict,
    /// When the daemon decided (RFC 3339).
    pub at: String,
    /// Who merged the proposal the commit came from.
    pub merged_by: Option<String>,
    /// Who approved it (on the forge, at the head that was merged).
    pub approved_by: Vec<String>,
    pub reviewed: Option<Reviewed>,
    pub released: Option<Released>,
    /// The apply window the commit was applied in.
    pub window: Option<String>,
    /// The verdict in one line, as the note's summary says it.
    pub summary: String,
}

const COMMIT: &str = "Tidekeeper-Commit";
const VERDICT: &str = "Tidekeeper-Verdict";
const AT: &str = "Tidekeeper-At";
const SUMMARY: &str = "Tidekeeper-Summary";
const MERGED_BY: &str = "Merged-By";
const APPROVED_BY: &str = "Approved-By";
const REVIEWED: &str = "Reviewed-Plan";
const RELEASED: &str = "Released-By";
const WINDOW: &str = "Apply-Window";
/// What `Released-By` ends with when the release applied at once.
const AT_ONCE: &str = ", at once";
/// At most this many characters in one trailer value.
const VALUE_LIMIT: usize = 200;

/// `text` as one trailer value: no control characters (line breaks
/// included) nor Unicode line or paragraph separators, spaces collapsed,
/// capped in length.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let words = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.chars().count() <= VALUE_LIMIT {
        return words;
    }
    let mut cut: String = words.chars().take(VALUE_LIMIT - 1).collect();
    cut.push('…');
    cut
}

/// One word: a login or a ref, where a space or a comma would split it.
fn one_word(text: &str) -> String {
    one_line(text).replace([' ', ','], "_")
}

impl Audit {
    /// The trailer block, one `Key: value` line each, ending in a newline.
    pub fn render(&self) -> String {
        let mut lines = vec![
            (VERDICT, self.verdict.word().to_string()),
            (AT, one_word(&self.at)),
            (COMMIT, one_word(&self.commit)),
        ];
        if let Some(m) = &self.merged_by {
            lines.push((MERGED_BY, one_word(m)));
        }
        if !self.approved_by.is_empty() {
            let names: Vec<String> = self.approved_by.iter().map(|a| one_word(a)).collect();
            lines.push((APPROVED_BY, names.join(", ")));
        }
        if let Some(r) = &self.reviewed {
            lines.push((
                REVIEWED,
                format!("{} {}", one_word(&r.proposal), one_word(&r.digest)),
            ));
        }
        if let Some(r) = &self.released {
            lines.push((
                RELEASED,
                format!(
                    "{} at {}{}",
                    one_line(&r.by),
                    one_word(&r.at),
                    if r.now { AT_ONCE } else { "" }
                ),
            ));
        }
        if let Some(w) = &self.window {
            lines.push((WINDOW, one_line(w)));
        }
        lines.push((SUMMARY, one_line(&self.summary)));
        lines
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }

    /// The audit in a note: its last paragraph, when that is a trailer
    /// block starting with `Tidekeeper-Verdict`. `None` for notes written
    /// before the daemon wrote one, and for anything else.
    pub fn parse(note: &str) -> Option<Audit> {
        let text = note.trim_end();
        let block = text.rsplit_once("\n\n").map_or(text, |(_, b)| b);
        let mut fields = Vec::new();
        for line in block.lines() {
            let (k, v) = line.split_once(": ")?;
            fields.push((k, v));
        }
        let get = |key: &str| fields.iter().rev().find(|(k, _)| *k == key).map(|f| f.1);
        if fields.first()?.0 != VERDICT {
            return None;
        }
        let released = get(RELEASED).and_then(|v| {
            let (v, now) = match v.strip_suffix(AT_ONCE) {
                Some(v) => (v, true),
                None => (v, false),
            };
            let (by, at) = v.rsplit_once(" at ")?;
            Some(Released {
                by: by.to_string(),
                at: at.to_string(),
                now,
            })
        });
        Some(Audit {
            commit: get(COMMIT).unwrap_or_default().to_string(),
            verdict: Verdict::of_word(get(VERDICT)?)?,
            at: get(AT).unwrap_or_default().to_string(),
            merged_by: get(MERGED_BY).map(String::from),
            approved_by: get(APPROVED_BY)
                .map(|v| v.split(", ").map(String::from).collect())
                .unwrap_or_default(),
            reviewed: get(REVIEWED).and_then(|v| {
                let (proposal, digest) = v.rsplit_once(' ')?;
                Some(Reviewed {
                    proposal: proposal.to_string(),
                    digest: digest.to_string(),
                })
            }),
            released,
            window: get(WINDOW).map(String::from),
            summary: get(SUMMARY).unwrap_or_default().to_string(),
        })
    }

    /// A note split into what comes before its trailer block and the block
    /// (with the blank line before it), so that what is added to the note
    /// later goes before the block and the block stays last.
    pub fn split(note: &str) -> (&str, &str) {
        let text = note.trim_end();
        match text.rfind("\n\n") {
            Some(i) if Audit::parse(&text[i..]).is_some() => (&text[..i], &note[i..]),
            _ => (note, ""),
        }
    }

    /// `body` with the trailer block at its end, after a blank line; the
    /// body is cut first so that the whole stays within `limit` bytes and
    /// the block is never what a cap cuts off.
    pub fn append_to(&self, body: &str, limit: usize) -> String {
        let block = self.render();
        let room = limit.saturating_sub(block.len() + 2);
        let body = crate::report::note_text_within(body, room);
        format!("{}\n\n{block}", body.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Audit {
        Audit {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            verdict: Verdict::Applied,
            at: "2026-12-07T02:00:00Z".into(),
            merged_by: Some("alice".into()),
            approved_by: vec!["bob".into(), "carol".into()],
            reviewed: Some(Reviewed {
                proposal: "refs/pull/9/head".into(),
                digest: "0123456789abcdef".into(),
            }),
            released: Some(Released {
                by: "dave".into(),
                at: "2026-12-07T01:00:00Z".into(),
                now: true,
            }),
            window: Some("Sat 02:00-04:00 Europe/Berlin".into()),
            summary: "applied to 2 host(s)".into(),
        }
    }

    #[test]
    fn an_audit_renders_as_trailers_and_reads_back_the_same() {
        let a = full();
        let block = a.render();
        assert_eq!(
            block,
            "Tidekeeper-Verdict: applied\n\
             Tidekeeper-At: 2026-12-07T02:00:00Z\n\
             Tidekeeper-Commit: 0123456789abcdef0123456789abcdef01234567\n\
             Merged-By: alice\n\
             Approved-By: bob, carol\n\
             Reviewed-Plan: refs/pull/9/head 0123456789abcdef\n\
             Released-By: dave at 2026-12-07T01:00:00Z, at once\n\
             Apply-Window: Sat 02:00-04:00 Europe/Berlin\n\
             Tidekeeper-Summary: applied to 2 host(s)\n"
        );
        let note = a.append_to("tidekeeper reconcile of x\n\nweb1 synced\n", 4096);
        assert!(note.starts_with("tidekeeper reconcile of x\n"), "{note}");
        assert_eq!(Audit::parse(&note), Some(a));
    }

    #[test]
    fn every_verdict_and_the_empty_fields_read_back_the_same() {
        for verdict in Verdict::ALL {
            let a = Audit {
                verdict,
                merged_by: None,
                approved_by: vec![],
                reviewed: None,
                released: Some(Released {
                    by: "Dave at Ops".into(),
                    at: "2026-12-07T01:00:00Z".into(),
                    now: false,
                }),
                window: None,
                ..full()
            };
            let note = a.append_to("tidekeeper: held x; nothing applied\n", 4096);
            assert_eq!(Audit::parse(&note), Some(a), "{note}");
        }
    }

    #[test]
    fn a_note_without_the_block_has_no_audit() {
        assert_eq!(
            Audit::parse("tidekeeper reconcile of abc\n\napplied to 1 host(s)\n"),
            None
        );
        assert_eq!(Audit::parse(""), None);
        // Trailer-like lines that do not start with the verdict are not ours.
        assert_eq!(Audit::parse("x\n\nMerged-By: mallory\n"), None);
    }

    #[test]
    fn a_proposal_name_or_login_cannot_add_a_trailer_line() {
        let a = Audit {
            merged_by: Some("mallory\nReleased-By: root at 2020-01-01T00:00:00Z".into()),
            approved_by: vec!["eve\r\nMerged-By: root".into(), "a, b".into()],
            reviewed: Some(Reviewed {
                proposal:
                    "refs/heads/x\u{2028}Tidekeeper-Verdict: applied\n\nTidekeeper-Verdict: applied"
                        .into(),
                digest: "d\u{85}Approved-By: root".into(),
            }),
            released: None,
            summary: "ok\n\nTidekeeper-Verdict: rejected".into(),
            ..full()
        };
        let block = a.render();
        assert_eq!(block.lines().count(), 8, "{block}");
        let keys: Vec<&str> = block
            .lines()
            .map(|l| l.split_once(": ").unwrap().0)
            .collect();
        assert_eq!(
            keys,
            [
                "Tidekeeper-Verdict",
                "Tidekeeper-At",
                "Tidekeeper-Commit",
                "Merged-By",
                "Approved-By",
                "Reviewed-Plan",
                "Apply-Window",
                "Tidekeeper-Summary"
            ]
        );
        let read = Audit::parse(&a.append_to("body\n", 4096)).unwrap();
        assert_eq!(read.verdict, Verdict::Applied);
        assert_eq!(read.released, None);
        assert_eq!(read.approved_by.len(), 2, "{:?}", read.approved_by);
        assert!(read.approved_by[1] == "a__b", "{:?}", read.approved_by);
        assert_eq!(
            read.merged_by.as_deref(),
            Some("mallory_Released-By:_root_at_2020-01-01T00:00:00Z")
        );
    }

    #[test]
    fn what_is_added_to_a_note_later_goes_before_its_block() {
        let a = full();
        let note = a.append_to("tidekeeper reconcile of x\n\napplied\n", 4096);
        let (body, block) = Audit::split(&note);
        assert_eq!(body, "tidekeeper reconcile of x\n\napplied");
        assert_eq!(block, format!("\n\n{}", a.render()));
        let later = format!("{body}\n\nmaintenance job backup failed:\nweb1: exit 1{block}");
        assert_eq!(Audit::parse(&later), Some(a));
        assert_eq!(
            Audit::split("no block\n\nhere\n"),
            ("no block\n\nhere\n", "")
        );
    }

    #[test]
    fn a_body_too_long_is_cut_and_the_block_survives() {
        let a = full();
        let body = "web1 synced applied: 1 changed\n".repeat(10_000);
        let note = a.append_to(&body, 8192);
        assert!(note.len() <= 8192, "{}", note.len());
        assert!(note.contains("more lines not shown"));
        assert_eq!(Audit::parse(&note), Some(a));
    }
}
