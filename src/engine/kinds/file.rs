//! `files:` and templates. Observed by one `sha256sum -c` over every file
//! (the content of a small, non-sensitive file that differs comes back for
//! the diff); written to a temporary file in the same directory, synced,
//! validated, backed up and renamed over the original, so a crash leaves
//! each file wholly old or wholly new.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::path::{on_host, ownership, parent, replaces, set_group};
use super::{Garbled, Need};
use crate::change::Action;
use crate::engine::item::{FileItem, Item};
use crate::engine::observed::{DIFF_LIMIT, Observed, PathKind};
use crate::engine::sh::{HEREDOC as EOF, Tag, Word, cmd};
use crate::transport::shell_quote as q;

/// Probe: one `sha256sum -c` per sensitivity. A file that differs prints a
/// [`Tag::Differs`] record; a non-sensitive one up to [`DIFF_LIMIT`] bytes
/// also its content as a [`Tag::Content`] record.
pub fn probe(items: &[Item], root: &str) -> String {
    let mut s = String::new();
    for sensitive in [false, true] {
        let files: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::File(f) if f.content.sensitive == sensitive => Some(f),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "sha256sum -c --quiet <<'{EOF}' | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; printf '{}\\t%s\\n' \"$f\"",
            Tag::Differs
        ));
        if !sensitive {
            s.push_str(&format!(
                "; if [ -f \"$f\" ] && [ \"$(stat -c %s -- \"$f\")\" -le {DIFF_LIMIT} ]; then \
                 printf '{t}\\t%s\\t' \"$f\"; base64 -w0 -- \"$f\"; echo; fi",
                t = Tag::Content
            ));
        }
        s.push_str("; done\n");
        for f in files {
            s.push_str(&format!("{}  {root}{}\n", f.sha256, f.path));
        }
        s.push_str(EOF);
        s.push('\n');
    }
    s
}

/// Read a [`Tag::Content`] record: the path (root still on it) and content.
pub fn parse_content(record: &str) -> Result<(&str, Vec<u8>), Garbled> {
    let (path, data) = record.rsplit_once('\t').ok_or(Garbled)?;
    Ok((path, B64.decode(data.trim()).map_err(|_| Garbled)?))
}

/// A unified diff of a text file's content; None for binary content.
pub fn text_diff(path: &str, before: &[u8], after: &[u8]) -> Option<String> {
    let (Ok(a), Ok(b)) = (std::str::from_utf8(before), std::str::from_utf8(after)) else {
        return None;
    };
    let diff = similar::TextDiff::from_lines(a, b);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(path, path)
            .to_string(),
    )
}

/// What a file needs, with its diff (never for sensitive content). `Err`
/// says why it must not be touched: a directory or a symlink is in its place.
pub fn plan(f: &FileItem, obs: &Observed) -> Result<Option<Need>, String> {
    let Some(ps) = obs.paths.get(&f.path) else {
        let mut need = Need::new(Action::Create);
        if f.content.sensitive {
            need.note = Some("(sensitive content)".into());
        } else {
            need.diff = text_diff(&f.path, b"", &f.content.bytes);
            if need.diff.is_none() {
                need.note = Some(format!("(binary, {} bytes)", f.content.bytes.len()));
            }
        }
        return Ok(Some(need));
    };
    match ps.kind {
        PathKind::Dir => Err(format!(
            "{} is a directory on the host; tidekeeper will not replace a directory with a file \
             (remove it by hand or declare it `absent` first)",
            f.path
        )),
        PathKind::Link => Err(format!(
            "{} is a symlink on the host (owned by {}); tidekeeper never writes through or replaces \
             a symlink it did not create, since one may have been planted to redirect the write \
             (remove it by hand, or declare the path `absent` first)",
            f.path, ps.owner
        )),
        PathKind::Other => Ok(Some(replaces(ps))),
        PathKind::File => {
            let mut need = Need::new(Action::Update);
            if obs.content_differs.contains(&f.path) {
                if f.content.sensitive {
                    need.note = Some("(sensitive content changed)".into());
                } else if let Some(before) = obs.contents.get(&f.path) {
                    need.diff = text_diff(&f.path, before, &f.content.bytes);
                    if need.diff.is_none() {
                        need.note = Some(format!(
                            "(binary content changed: {} → {} bytes)",
                            before.len(),
                            f.content.bytes.len()
                        ));
                    }
                } else {
                    need.note = Some(format!(
                        "(content changed: {} → {} bytes; too large or unreadable to diff)",
                        ps.size,
                        f.content.bytes.len()
                    ));
                }
            }
            let need = ownership(need, ps, f.mode, f.owner.as_deref(), f.group.as_deref());
            let none = need.diff.is_none() && need.note.is_none() && need.attrs.is_empty();
            Ok((!none).then_some(need))
        }
    }
}

/// Apply: replace what is in the way, then write the content, or, when
/// only mode or ownership differ, change them in place.
pub fn apply(root: &str, f: &FileItem, action: Action, content_changes: bool) -> String {
    let mut body = String::new();
    if action == Action::Replace {
        body.push_str(&cmd("backup").arg(&f.path).step());
        body.push_str(&format!("rm -f {} || return\n", on_host(root, &f.path)));
    }
    if content_changes {
        body.push_str(&write(root, f, action == Action::Update));
        return body;
    }
    let p = on_host(root, &f.path);
    if let Some(m) = f.mode {
        body.push_str(&format!("chmod {} {p} || return\n", Word::mode(m)));
    }
    if let Some(o) = &f.owner {
        body.push_str(&format!("chown {} {p} || return\n", q(o)));
    }
    if let Some(g) = &f.group {
        body.push_str(&set_group(g, f.owner.as_deref(), &p));
    }
    body
}

/// Write a file atomically: a temporary file in its directory, synced,
/// validated, the old file backed up, then renamed over it. `exists` keeps
/// the old file's mode and ownership where the config does not set them.
pub fn write(root: &str, f: &FileItem, exists: bool) -> String {
    let p = on_host(root, &f.path);
    let d = on_host(root, parent(&f.path));
    let mut s = format!(
        "p={p}; d={d}\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
         for x in \"$d\"/.tidekeeper.*; do [ -e \"$x\" ] && rm -f \"$x\"; done\n\
         t=$(mktemp \"$d/.tidekeeper.XXXXXX\") || return\n"
    );
    let data = B64.encode(&f.content.bytes);
    s.push_str(&format!("base64 -d >\"$t\" <<'{EOF}' || return\n"));
    for chunk in data.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(EOF);
    s.push('\n');
    match f.mode {
        Some(m) => s.push_str(&cmd("chmod").word(Word::mode(m)).word(Word::var("t")).step()),
        None if exists => s.push_str("chmod --reference=\"$p\" \"$t\" || return\n"),
        None => s.push_str("chmod 0644 \"$t\" || return\n"),
    }
    if exists && (f.owner.is_none() || f.group.is_none()) {
        s.push_str("chown --reference=\"$p\" \"$t\" || return\n");
    }
    if let Some(o) = &f.owner {
        s.push_str(&cmd("chown").arg(o).word(Word::var("t")).step());
    }
    if let Some(g) = &f.group {
        s.push_str(&set_group(g, f.owner.as_deref(), "\"$t\""));
    }
    s.push_str("sync \"$t\" || return\n");
    if let Some(v) = &f.validate {
        // The validator is the config's own shell command, run as written.
        let validator = v.replace("%s", "\"$t\"");
        s.push_str(&format!(
            // A group, so `a; b` as a validator is judged by its last command.
            "if ! {{ {validator}\n}}; then rm -f \"$t\"; echo {} >&2; return 1; fi\n",
            q(&format!(
                "validation failed ({v}); the live file is untouched"
            ))
        ));
    }
    s.push_str(&cmd("backup").arg(&f.path).step());
    s.push_str("mv -f \"$t\" \"$p\" || return\n");
    s
}

/// Prune a file (or symlink) that left the config: backed up, then removed.
pub fn prune(root: &str, path: &str) -> String {
    format!(
        "{}rm -f {} || return\n",
        cmd("backup").arg(path).step(),
        on_host(root, path)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};
    use crate::engine::observed::PathState;
    use crate::model::desired::Content;

    pub(crate) fn file(path: &str, text: &str, sensitive: bool) -> FileItem {
        FileItem {
            path: path.into(),
            sha256: crate::digest::sha256_hex(text.as_bytes()),
            content: Content {
                bytes: text.as_bytes().to_vec(),
                sensitive,
            },
            mode: Some(0o640),
            owner: Some("root".into()),
            group: Some("adm".into()),
            validate: None,
            notify: vec![],
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let f = file("/etc/motd", "hi\n", false);
        let items = [
            Item::File(f.clone()),
            Item::File(file("/etc/key", "k", true)),
        ];
        let s = probe(&items, "");
        assert_eq!(
            s,
            format!(
                "sha256sum -c --quiet <<'{EOF}' | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; printf 'X\\t%s\\n' \"$f\"; \
                 if [ -f \"$f\" ] && [ \"$(stat -c %s -- \"$f\")\" -le 262144 ]; then printf 'C\\t%s\\t' \"$f\"; base64 -w0 -- \"$f\"; echo; fi; done\n\
                 {}  /etc/motd\n{EOF}\n\
                 sha256sum -c --quiet <<'{EOF}' | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; printf 'X\\t%s\\n' \"$f\"; done\n\
                 {}  /etc/key\n{EOF}\n",
                f.sha256,
                crate::digest::sha256_hex(b"k"),
            )
        );
        sh_n(&s);
        let w = write("/r", &f, false);
        assert_eq!(
            w,
            format!(
                "p=/r/etc/motd; d=/r/etc\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
                 for x in \"$d\"/.tidekeeper.*; do [ -e \"$x\" ] && rm -f \"$x\"; done\n\
                 t=$(mktemp \"$d/.tidekeeper.XXXXXX\") || return\n\
                 base64 -d >\"$t\" <<'{EOF}' || return\naGkK\n{EOF}\n\
                 chmod 0640 \"$t\" || return\nchown root \"$t\" || return\nchgrp adm \"$t\" || return\n\
                 sync \"$t\" || return\nbackup /etc/motd || return\nmv -f \"$t\" \"$p\" || return\n"
            )
        );
        sh_n_step(&w);
        let in_place = apply("", &f, Action::Update, false);
        assert_eq!(
            in_place,
            "chmod 0640 /etc/motd || return\nchown root /etc/motd || return\nchgrp adm /etc/motd || return\n"
        );
        sh_n_step(&in_place);
        sh_n_step(&prune("/r", "/etc/old"));
    }

    #[test]
    fn hostile_paths_owners_and_validators_stay_inside_their_quotes() {
        let mut f = file("/etc/$(reboot)/a'b", "x", false);
        f.owner = Some("x; reboot".into());
        f.validate = Some("visudo -cf %s".into());
        let body = apply("", &f, Action::Replace, true);
        assert!(body.contains("p='/etc/$(reboot)/a'\\''b'"), "{body}");
        assert!(body.contains("chown 'x; reboot' \"$t\""), "{body}");
        assert!(body.contains("if ! { visudo -cf \"$t\"\n}; then"), "{body}");
        sh_n_step(&body);
    }

    #[test]
    fn a_content_record_reads_back_and_the_plan_shows_the_diff() {
        let (path, bytes) = parse_content("/r/etc/motd\taGkK").unwrap();
        assert_eq!(
            (path, bytes.as_slice()),
            ("/r/etc/motd", b"hi\n".as_slice())
        );
        assert_eq!(parse_content("no tab").unwrap_err(), Garbled);
        assert_eq!(parse_content("/x\t!!!").unwrap_err(), Garbled);

        let f = file("/etc/motd", "hello\n", false);
        let mut obs = Observed::default();
        assert_eq!(plan(&f, &obs).unwrap().unwrap().action, Action::Create);
        obs.paths.insert(
            "/etc/motd".into(),
            PathState {
                kind: PathKind::File,
                mode: 0o640,
                owner: "root".into(),
                group: "adm".into(),
                size: 3,
                link_target: None,
            },
        );
        assert_eq!(plan(&f, &obs).unwrap(), None, "as wanted");
        obs.content_differs.insert("/etc/motd".into());
        obs.contents.insert("/etc/motd".into(), b"hi\n".to_vec());
        let need = plan(&f, &obs).unwrap().unwrap();
        assert!(need.diff.unwrap().contains("-hi\n+hello\n"));
        let secret = file("/etc/motd", "hello\n", true);
        let need = plan(&secret, &obs).unwrap().unwrap();
        assert_eq!(
            (need.diff, need.note.as_deref()),
            (None, Some("(sensitive content changed)"))
        );
        obs.paths.get_mut("/etc/motd").unwrap().kind = PathKind::Link;
        assert!(
            plan(&f, &obs)
                .unwrap_err()
                .contains("is a symlink on the host")
        );
    }
}
