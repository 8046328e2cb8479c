//! `files:` and templates. Observed by one `sha256sum -c` over every file
//! (the content of a small, non-sensitive file that differs comes back for
//! the diff); written to a temporary file in the same directory, synced,
//! validated, backed up and renamed over the original, so a crash leaves
//! each file wholly old or wholly new.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::path::{LOGIN_GROUP, on_host, ownership, parent, replaces, set_group};
use super::{
    ApplyCx, Change, Garbled, Kind, Need, Observe, PlanCx, ProbeCx, Prune, ReadCx, Saves, each,
    step,
};
use crate::change::{Action, ResourceKind};
use crate::engine::item::{FileItem, Item};
use crate::engine::observed::{
    DIFF_LIMIT, InventoryEntry, Observed, PathKind, STATE_DIR, Settled,
};
use crate::engine::sh::{Cmd, HEREDOC as EOF, Tag, Word, cmd};
use crate::model::desired::Confinement;
use crate::transport::shell_quote as q;

/// How the probe looks at file content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentCheck {
    /// Hash only files whose size, inode, mtime or ctime differ from when
    /// they last hashed as they should (the host's stat cache); otherwise
    /// hash every file.
    pub changed_only: bool,
    /// Record in the host's stat cache what hashed as it should (trusted
    /// runs only: a proposal's plan writes nothing on a host).
    pub record: bool,
    /// Between full checks: when the host's record of settled files is
    /// this config's, stat only the files it lists and report those whose
    /// stat moved ([`settled_probe`]); no path is sent.
    pub settled: bool,
}

/// The host's stat cache: `sha256 size inode mtime ctime<TAB>path` of every
/// managed file as it last hashed. ctime cannot be set by hand, so a file
/// whose four values are unchanged was not written since (nor chmod-ed,
/// chown-ed or renamed).
pub(crate) const STAT_CACHE: &str = "filestat";

/// Beside the stat cache: `DIGEST SHA256`, written after a plan found every
/// managed file as the config wants it. It says: the stat cache whose own
/// SHA-256 is `SHA256` lists every file of the config whose
/// [`settled_digest`] is `DIGEST`, each with the stat it had while it was
/// as wanted (content, mode, owner and group). A file with that stat still
/// is; a changed cache or config no longer matches.
#[cfg(test)]
pub(crate) const SETTLED: &str = "filestat.settled";

/// Probe: one `sha256sum -c` per sensitivity, over every file or (with
/// `changed_only`) over the files whose stat moved. A file that differs
/// prints a [`Tag::Differs`] record; a non-sensitive one up to
/// [`DIFF_LIMIT`] bytes also its content as a [`Tag::Content`] record.
pub(crate) fn probe(items: &[Item], root: &str, check: ContentCheck) -> String {
    let list = |sensitive: bool| {
        let mut l = String::new();
        for i in items {
            if let Item::File(f) = i
                && f.content.sensitive == sensitive
            {
                l.push_str(&format!("{}  {root}{}\n", f.sha256, f.path));
            }
        }
        l
    };
    let (plain, sensitive) = (list(false), list(true));
    if plain.is_empty() && sensitive.is_empty() {
        return String::new();
    }
    if check == ContentCheck::default() {
        return hash_all(&plain, &sensitive);
    }
    let cache = q(&format!("{root}{STATE_DIR}/{STAT_CACHE}"));
    let mut s = format!(
        "fc={cache}; ft=$(mktemp) || ft=/tmp/tk-files.$$\n\
         cat >\"$ft.n\" <<'{EOF}'\n{plain}{EOF}\n\
         cat >\"$ft.s\" <<'{EOF}'\n{sensitive}{EOF}\n\
         cat \"$ft.n\" \"$ft.s\" | cut -c67- | tr '\\n' '\\0' | xargs -0r stat -c '%s %i %.9Y %.9Z\t%n' -- >\"$ft.now\"\n\
         : >\"$ft.bad\"\n"
    );
    // Keys: `path`; values: `sha size inode mtime ctime` (cache), `size
    // inode mtime ctime` (now). A line whose cached values are the desired
    // hash and today's stat is not hashed again.
    let maps = "function load(f, m,  l, i) { while ((getline l < f) > 0) { i = index(l, \"\\t\"); m[substr(l, i + 1)] = substr(l, 1, i - 1) } }";
    for (list, sensitive) in [("n", false), ("s", true)] {
        if check.changed_only {
            s.push_str(&format!(
                "awk -v c=\"$fc\" -v n=\"$ft.now\" '{maps} BEGIN {{ load(c, C); load(n, N) }} \
                 {{ p = substr($0, 67); if ((p in C) && (p in N) && C[p] == substr($0, 1, 64) \" \" N[p]) next; print }}' \
                 \"$ft.{list}\" >\"$ft.{list}c\"\n"
            ));
        } else {
            s.push_str(&format!("cp \"$ft.{list}\" \"$ft.{list}c\"\n"));
        }
        s.push_str(&hash_listed(&format!("\"$ft.{list}c\""), sensitive));
    }
    if check.record {
        // What hashed as it should, with the stat taken before hashing: a
        // write during the check shows as a changed stat next time.
        s.push_str(&format!(
            "if [ -d \"${{fc%/*}}\" ]; then (umask 077; awk -v b=\"$ft.bad\" -v n=\"$ft.now\" '{maps} \
             BEGIN {{ while ((getline l < b) > 0) B[l] = 1; load(n, N) }} \
             {{ p = substr($0, 67); if ((p in N) && !(p in B)) print substr($0, 1, 64) \" \" N[p] \"\\t\" p }}' \
             \"$ft.n\" \"$ft.s\" >\"$fc.tmp\" && {{ cmp -s \"$fc.tmp\" \"$fc\" && rm -f \"$fc.tmp\" || mv -f \"$fc.tmp\" \"$fc\"; }} && \
             sha256sum <\"$fc\" | {{ read -r h _ && printf '{}\\t%s\\n' \"$h\"; }}); fi\n",
            Tag::Recorded
        ));
    }
    s.push_str("rm -f \"$ft\" \"$ft\".*\n");
    s
}

/// Hash the `sha256  path` lines in `list` (a shell word): each file that
/// differs is added to `"$ft.bad"` and printed as a [`Tag::Differs`] record
/// (a non-sensitive one with its content).
fn hash_listed(list: &str, sensitive: bool) -> String {
    let mut s = format!(
        "[ -s {list} ] && sha256sum -c --quiet {list} | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; \
         printf '%s\\n' \"$f\" >>\"$ft.bad\"; printf '{}\\t%s\\n' \"$f\"",
        Tag::Differs
    );
    if !sensitive {
        s.push_str(&content_record());
    }
    s.push_str("; done\n");
    s
}

/// What the record of settled files vouches for: every managed file's
/// path, desired hash, mode, owner and group (in any order).
pub(crate) fn settled_digest(items: &[Item]) -> String {
    use sha2::Digest;
    let mut files: Vec<&FileItem> = items
        .iter()
        .filter_map(|i| match i {
            Item::File(f) => Some(f),
            _ => None,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    let mut h = sha2::Sha256::new();
    h.update(b"tidekeeper settled files v1\n");
    for f in files {
        let mode = f.mode.map_or("-".into(), |m| format!("{m:o}"));
        for field in [
            f.sha256.as_str(),
            &mode,
            f.owner.as_deref().unwrap_or("-"),
            f.group.as_deref().unwrap_or("-"),
        ] {
            h.update(field.as_bytes());
            h.update(b"\t");
        }
        h.update(f.path.as_bytes());
        h.update(b"\n");
    }
    crate::digest::hex(&h.finalize())
}

/// Probe between full checks, with no path sent: when the record of
/// settled files ([`SETTLED`]) is this config's and vouches for the stat
/// cache as it is, `stat` every file the cache lists and report each whose
/// stat moved or that is gone as a [`Tag::Moved`] record, with its
/// [`Tag::Stat`] record and its hash checked against the cache's (the
/// config's). Prints [`Tag::Settled`] `hit`, or `miss` when the record
/// cannot be used (then the caller probes in full). Every file not
/// reported is as the config wants it.
pub(crate) fn settled_probe(items: &[Item], root: &str) -> String {
    let mut sensitive = String::new();
    let mut any = false;
    for i in items {
        if let Item::File(f) = i {
            any = true;
            if f.content.sensitive {
                sensitive.push_str(&format!("{root}{}\n", f.path));
            }
        }
    }
    if !any {
        return String::new();
    }
    let cache = q(&format!("{root}{STATE_DIR}/{STAT_CACHE}"));
    let digest = settled_digest(items);
    let (hit, moved, stat) = (Tag::Settled, Tag::Moved, Tag::Stat);
    // Keys: `path`; values: `size inode mtime ctime`. A cache line is
    // `sha(64) size inode mtime ctime<TAB>path`; its stat starts at 66.
    let mut s = format!(
        "fc={cache}; tk_s=; tk_h=; [ -f \"$fc.settled\" ] && read -r tk_s tk_h <\"$fc.settled\"\n\
         if [ \"$tk_s\" = {digest} ] && [ -n \"$tk_h\" ] && printf '%s  %s\\n' \"$tk_h\" \"$fc\" | sha256sum -c --status 2>/dev/null; then\n\
         ft=$(mktemp) || ft=/tmp/tk-files.$$\n\
         cat >\"$ft.sens\" <<'{EOF}'\n{sensitive}{EOF}\n\
         : >\"$ft.n\"; : >\"$ft.s\"; : >\"$ft.bad\"\n\
         cut -f2- \"$fc\" | tr '\\n' '\\0' | xargs -0r stat -c '%s %i %.9Y %.9Z\t%n' -- >\"$ft.now\" 2>/dev/null\n\
         awk -v n=\"$ft.now\" -v s=\"$ft.sens\" -v o=\"$ft\" '\
         BEGIN {{ while ((getline l < n) > 0) {{ i = index(l, \"\\t\"); N[substr(l, i + 1)] = substr(l, 1, i - 1) }} while ((getline l < s) > 0) S[l] = 1 }} \
         {{ i = index($0, \"\\t\"); p = substr($0, i + 1); if ((p in N) && substr($0, 66, i - 66) == N[p]) next; \
         print \"{moved}\\t\" p; print substr($0, 1, 64) \"  \" p > (o ((p in S) ? \".s\" : \".n\")) }} \
         END {{ print \"{hit}\\thit\\t\" NR }}' \"$fc\"\n\
         cat \"$ft.n\" \"$ft.s\" | cut -c67- | tr '\\n' '\\0' | xargs -0r stat -c '{stat}\t%F\t%a\t%U\t%G\t%s\t%n' -- 2>/dev/null\n"
    );
    s.push_str(&hash_listed("\"$ft.n\"", false));
    s.push_str(&hash_listed("\"$ft.s\"", true));
    s.push_str(&format!(
        "rm -f \"$ft\" \"$ft\".*\nelse printf '{hit}\\tmiss\\n'; fi\n"
    ));
    s
}

/// After a plan found every managed file as the config wants it: vouch
/// that the stat cache the probe just recorded (its SHA-256 `recorded`)
/// lists them settled, unless the cache changed since.
pub(crate) fn settle(items: &[Item], root: &str, recorded: &str) -> String {
    let cache = q(&format!("{root}{STATE_DIR}/{STAT_CACHE}"));
    format!(
        "fc={cache}; printf '%s  %s\\n' {h} \"$fc\" | sha256sum -c --status && \
         {{ printf '%s %s\\n' {d} {h} >\"$fc.settled.tmp\" && mv -f \"$fc.settled.tmp\" \"$fc.settled\"; }}\n",
        h = q(recorded),
        d = settled_digest(items),
    )
}

/// A file the record of settled files vouches for: as the config wants it.
/// Mode, owner and group the config leaves open are never compared.
pub(crate) fn as_wanted(f: &FileItem) -> crate::engine::observed::PathState {
    crate::engine::observed::PathState {
        kind: PathKind::File,
        mode: f.mode.unwrap_or(0o644),
        owner: f.owner.clone().unwrap_or_default(),
        group: f.group.clone().unwrap_or_default(),
        size: f.content.bytes.len() as u64,
        link_target: None,
    }
}

/// Every file hashed, nothing recorded: one `sha256sum -c` per
/// sensitivity, and no other process.
fn hash_all(plain: &str, sensitive: &str) -> String {
    let mut s = String::new();
    for (list, sensitive) in [(plain, false), (sensitive, true)] {
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "sha256sum -c --quiet <<'{EOF}' | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; printf '{}\\t%s\\n' \"$f\"",
            Tag::Differs
        ));
        if !sensitive {
            s.push_str(&content_record());
        }
        s.push_str(&format!("; done\n{list}{EOF}\n"));
    }
    s
}

/// In a check's loop over differing files `$f`: the content of a small one
/// as a [`Tag::Content`] record (for the diff).
fn content_record() -> String {
    format!(
        "; if [ -f \"$f\" ] && [ \"$(stat -c %s -- \"$f\")\" -le {DIFF_LIMIT} ]; then \
         printf '{t}\\t%s\\t' \"$f\"; base64 -w0 -- \"$f\"; echo; fi",
        t = Tag::Content
    )
}

/// Read a [`Tag::Content`] record: the path (root still on it) and content.
pub(crate) fn parse_content(record: &str) -> Result<(&str, Vec<u8>), Garbled> {
    let (path, data) = record.rsplit_once('\t').ok_or(Garbled)?;
    Ok((path, B64.decode(data.trim()).map_err(|_| Garbled)?))
}

/// A unified diff of a text file's content; None for binary content.
pub(crate) fn text_diff(path: &str, before: &[u8], after: &[u8]) -> Option<String> {
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
pub(crate) fn plan(f: &FileItem, obs: &Observed) -> Result<Option<Need>, String> {
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
        // A symlink tidekeeper manages there (the config declared it), that
        // the config now wants to be a file: replaced (removed, never
        // written through). Not one planted there.
        PathKind::Link
            if obs
                .inventory
                .resources
                .iter()
                .any(|e| e.kind == crate::change::ResourceKind::Symlink && e.id == f.path) =>
        {
            Ok(Some(replaces(ps)))
        }
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
pub(crate) fn apply(
    root: &str,
    f: &FileItem,
    action: Action,
    content_changes: bool,
    staged: Option<usize>,
) -> String {
    let mut body = String::new();
    if action == Action::Replace {
        body.push_str(&cmd("backup").arg(&f.path).step());
        body.push_str(&format!("rm -f {} || return\n", on_host(root, &f.path)));
    }
    if content_changes {
        body.push_str(&write(root, f, action == Action::Update, staged));
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

/// The content of a file into `target` (a shell word). Text goes as one
/// quoted `printf` argument (a shell builtin: no process per file); bytes
/// that are not UTF-8 text, or hold a NUL, go base64-encoded.
fn content_into(s: &mut String, f: &FileItem, target: &str) {
    let bytes = &f.content.bytes;
    if let Ok(text) = std::str::from_utf8(bytes)
        && !bytes.contains(&0)
    {
        s.push_str(&format!(
            "printf %s {} >{target} || return\n",
            Word::quoted(text)
        ));
        return;
    }
    let data = B64.encode(bytes);
    s.push_str(&format!("base64 -d >{target} <<'{EOF}' || return\n"));
    for chunk in data.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(EOF);
    s.push('\n');
}

/// The file's name in its directory.
fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The umask that makes a new file (created 0666) exactly `mode`, when one
/// can: no execute or special bits.
fn umask_for(mode: u32) -> Option<u32> {
    (mode & !0o666 == 0).then_some(0o777 & !mode)
}

/// A file to stage: its item, and whether it is new (nothing at its path).
pub(crate) struct ToStage<'a> {
    pub file: &'a FileItem,
    pub new: bool,
}

/// Stage the new content of `files` before any of them is renamed into
/// place. Each directory gets one private staging directory (`"$tk_d<k>"`,
/// made by `mktemp -d` next to the files, so a rename out of it is atomic)
/// holding the files under their own names. A new file is written with
/// its mode (by umask, or one `chmod` per mode) and owner (one `chown` per
/// owner) already set; then ONE `sync` makes everything durable, instead
/// of an fsync per file. A crash before a rename leaves the old file;
/// after it, the new one, wholly. Returns the script and, for each file,
/// the number `k` of its staging directory.
pub(crate) fn stage(root: &str, files: &[ToStage]) -> (String, Vec<usize>) {
    let mut s = String::new();
    // Directory → its staging directory's number (a map: 10,000 files may
    // live in as many directories).
    let mut dirs: std::collections::HashMap<String, usize> = Default::default();
    let mut ks = Vec::with_capacity(files.len());
    let mut umask = 0o022;
    type Owner<'a> = (Option<&'a str>, Option<&'a str>);
    let mut owned: std::collections::BTreeMap<Owner, Vec<Word>> = Default::default();
    let mut modes: std::collections::BTreeMap<u32, Vec<Word>> = Default::default();
    for ToStage { file: f, new } in files {
        let d = on_host(root, parent(&f.path));
        let k = match dirs.get(&d) {
            Some(k) => *k,
            None => {
                // Leftovers of a killed run go first (never what this run staged).
                s.push_str(&format!(
                    "d={d}\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
                     for x in \"$d\"/.tidekeeper.*; do [ -e \"$x\" ] || [ -L \"$x\" ] || continue; rm -rf -- \"$x\" || return; done\n\
                     tk_d{k}=$(mktemp -d \"$d/.tidekeeper.XXXXXX\") || return\n\
                     printf '%s\\n' \"$tk_d{k}\" >>\"$S/staging\" || return\n",
                    k = dirs.len()
                ));
                let k = dirs.len();
                dirs.insert(d, k);
                k
            }
        };
        ks.push(k);
        let t = Word::staged(k, basename(&f.path));
        let mask = match f.mode {
            Some(m) if *new => umask_for(m).unwrap_or(0o022),
            _ => 0o022,
        };
        if mask != umask {
            s.push_str(&format!("umask {mask:03o}\n"));
            umask = mask;
        }
        content_into(&mut s, f, t.as_str());
        if *new {
            if let Some(m) = f.mode.filter(|m| umask_for(*m).is_none()) {
                modes.entry(m).or_default().push(t.clone());
            }
            if f.owner.is_some() || f.group.is_some() {
                let key = (f.owner.as_deref(), f.group.as_deref());
                owned.entry(key).or_default().push(t);
            }
        }
    }
    if umask != 0o022 {
        s.push_str("umask 022\n");
    }
    // A failed step (a validator saying no, a full disk while staging)
    // leaves nothing staged behind.
    let all: Vec<String> = (0..dirs.len())
        .map(|k| format!("${{tk_d{k}:+\"$tk_d{k}\"}}"))
        .collect();
    s = format!("tk_unstage() {{ rm -rf -- {}; }}\n{s}", all.join(" "));
    // Ownership before mode: chown clears the setuid and setgid bits.
    for ((owner, group), ts) in owned {
        let c = match (owner, group) {
            (Some(o), Some(LOGIN_GROUP)) => cmd("chown").arg(&format!("{o}:")),
            (Some(o), Some(g)) => cmd("chown").arg(&format!("{o}:{g}")),
            (Some(o), None) => cmd("chown").arg(o),
            (None, Some(LOGIN_GROUP)) | (None, None) => continue,
            (None, Some(g)) => cmd("chgrp").arg(g),
        };
        for chunk in ts.chunks(ARGS_PER_COMMAND) {
            s.push_str(&chunk.iter().cloned().fold(c.clone(), Cmd::word).step());
        }
    }
    for (m, ts) in modes {
        for chunk in ts.chunks(ARGS_PER_COMMAND) {
            let c = cmd("chmod").word(Word::mode(m));
            s.push_str(&chunk.iter().cloned().fold(c, Cmd::word).step());
        }
    }
    s.push_str("sync || return\n");
    (s, ks)
}

/// Paths per command line, well inside the kernel's limit on arguments.
pub(crate) const ARGS_PER_COMMAND: usize = 500;

/// Rename new staged files into place: one `mv` per directory (and per
/// [`ARGS_PER_COMMAND`] files), each rename atomic. `files` are the files'
/// paths with the numbers of their staging directories (see [`stage`]).
pub(crate) fn move_new(root: &str, files: &[(&str, usize)]) -> String {
    // In the order the directories first come, each with its files.
    let mut by_dir: Vec<(&str, Vec<Word>)> = Vec::new();
    let mut at: std::collections::HashMap<usize, usize> = Default::default();
    for (path, k) in files {
        let t = Word::staged(*k, basename(path));
        match at.get(k) {
            Some(i) => by_dir[*i].1.push(t),
            None => {
                at.insert(*k, by_dir.len());
                by_dir.push((parent(path), vec![t]));
            }
        }
    }
    let mut s = String::new();
    for (dir, ts) in by_dir {
        let into = Word::dir(&format!("{root}{dir}"));
        for chunk in ts.chunks(ARGS_PER_COMMAND) {
            let c = cmd("mv").lit("-f").lit("--");
            s.push_str(
                &chunk
                    .iter()
                    .cloned()
                    .fold(c, Cmd::word)
                    .word(into.clone())
                    .step(),
            );
        }
    }
    s
}

/// Remove the (by now empty) staging directories `"$tk_d0"` … of a run.
pub(crate) fn unstage(dirs: usize) -> String {
    if dirs == 0 {
        return String::new();
    }
    let mut c = cmd("rmdir").lit("--");
    for k in 0..dirs {
        c = c.word(Word::staged_dir(k));
    }
    // A kill before this leaves the list: the next apply removes what it names.
    format!("{}rm -f \"$S/staging\" || return\n", c.step())
}

/// Write a file atomically: a temporary file in its directory, synced,
/// validated, the old file backed up, then renamed over it. `exists` keeps
/// the old file's mode and ownership where the config does not set them.
/// With `staged` (the number of its staging directory, see [`stage`]), the
/// content is already there, synced, and a new file's mode and owner set.
pub(crate) fn write(root: &str, f: &FileItem, exists: bool, staged: Option<usize>) -> String {
    let p = on_host(root, &f.path);
    let mut s;
    if let Some(k) = staged {
        s = format!("p={p}; t={}\n", Word::staged(k, basename(&f.path)));
    } else {
        let d = on_host(root, parent(&f.path));
        s = format!(
            "p={p}; d={d}\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
             for x in \"$d\"/.tidekeeper.*; do [ -f \"$x\" ] && rm -f \"$x\"; done\n\
             t=$(mktemp \"$d/.tidekeeper.XXXXXX\") || return\n"
        );
        content_into(&mut s, f, "\"$t\"");
    }
    if staged.is_none() || exists {
        // Ownership before mode: chown clears the setuid and setgid bits.
        if exists && (f.owner.is_none() || f.group.is_none()) {
            s.push_str("chown --reference=\"$p\" \"$t\" || return\n");
        }
        if let Some(o) = &f.owner {
            s.push_str(&cmd("chown").arg(o).word(Word::var("t")).step());
        }
        if let Some(g) = &f.group {
            s.push_str(&set_group(g, f.owner.as_deref(), "\"$t\""));
        }
        match f.mode {
            Some(m) => s.push_str(&cmd("chmod").word(Word::mode(m)).word(Word::var("t")).step()),
            None if exists => s.push_str("chmod --reference=\"$p\" \"$t\" || return\n"),
            None => s.push_str("chmod 0644 \"$t\" || return\n"),
        }
    }
    if staged.is_none() {
        s.push_str("sync \"$t\" || return\n");
    }
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
pub(crate) fn prune(root: &str, path: &str) -> String {
    format!(
        "{}rm -f {} || return\n",
        cmd("backup").arg(path).step(),
        on_host(root, path)
    )
}

/// Between full checks: every file the record of settled files vouches
/// for and that did not move is as the config wants it. A record that
/// does not list every managed file is not used.
fn use_settled(
    o: &mut Observed,
    record: &str,
    moved: &BTreeSet<String>,
    items: &[Item],
) {
    let files: BTreeSet<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::File(f) => Some(f.path.as_str()),
            _ => None,
        })
        .collect();
    let listed = record
        .strip_prefix("hit\t")
        .and_then(|n| n.trim().parse::<usize>().ok());
    if listed != Some(files.len()) {
        o.settled = Settled::Miss;
        return;
    }
    o.settled = Settled::Hit { moved: moved.len() };
    for i in items {
        if let Item::File(f) = i
            && !moved.contains(&f.path)
        {
            o.paths.insert(f.path.clone(), as_wanted(f));
        }
    }
}

/// `files:` as a [`Kind`] (and everything written as files: timers, cron
/// entries, APT sources, authorized_keys).
pub(crate) struct File;

impl Kind for File {
    fn kind(&self) -> ResourceKind {
        ResourceKind::File
    }

    /// Between full checks the record of settled files stands in for every
    /// file's stat and hash: no file's path is sent.
    fn probe(&self, items: &[Item], cx: &ProbeCx) -> String {
        if cx.content.settled {
            settled_probe(items, cx.root)
        } else {
            probe(items, cx.root, cx.content)
        }
    }

    fn tags(&self) -> &'static [Tag] {
        &[
            Tag::Differs,
            Tag::Content,
            Tag::Settled,
            Tag::Moved,
            Tag::Recorded,
        ]
    }

    fn read(&self, records: &[(Tag, &str)], cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        let mut settled = None;
        let mut moved = BTreeSet::new();
        each(records, |tag, record| {
            match tag {
                Tag::Differs => {
                    o.content_differs.insert(cx.strip(record));
                }
                Tag::Content => {
                    let (path, bytes) = parse_content(record)?;
                    o.contents.insert(cx.strip(path), bytes);
                }
                Tag::Settled => settled = Some(record),
                Tag::Moved => {
                    moved.insert(cx.strip(record));
                }
                _ => o.recorded = Some(record.trim().to_string()),
            }
            Ok(())
        })?;
        if let Some(record) = settled {
            use_settled(o, record, &moved, cx.items);
        }
        Ok(())
    }

    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::File(f) = item else {
            return Ok(None);
        };
        plan(f, cx.obs)
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::File(f) = item else {
            return vec![];
        };
        let content = writes_content(c);
        if content {
            cx.written
                .push((f.sha256.clone(), format!("{}{}", cx.root, f.path)));
        }
        let staged = cx.staged.get(&f.path).copied();
        step(
            c,
            format!(
                "{}{}",
                cx.owes,
                apply(cx.root, f, c.action, content, staged)
            ),
        )
    }

    fn on_filesystem(&self) -> bool {
        true
    }

    fn prune(&self, e: &InventoryEntry, obs: &Observed) -> Prune {
        super::path::prune(e, obs)
    }

    fn remove(&self, root: &str, id: &str) -> Option<String> {
        Some(prune(root, id))
    }

    fn is_risky(&self, id: &str, login_user: &str) -> bool {
        super::path::is_risky(id, login_user)
    }

    fn save(&self, c: &Change, s: &mut Saves) {
        super::path::save(c, s);
    }

    /// Sensitive where the base says so, whatever the proposal says; a
    /// path the base treats as secret is never compared, whatever content
    /// the proposal gives it: a guess would be confirmed.
    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        let Item::File(f) = item else {
            return Observe::NotManaged;
        };
        if base.sensitive.contains(&f.path) {
            f.content.sensitive = true;
        }
        let placeholder = crate::model::desired::SENSITIVE.as_bytes();
        let is_placeholder = f
            .content
            .bytes
            .windows(placeholder.len())
            .any(|w| w == placeholder);
        if f.content.sensitive && (is_placeholder || base.sensitive.contains(&f.path)) {
            Observe::Secret
        } else if base.paths.contains(&f.path) {
            Observe::Yes
        } else {
            Observe::NotManaged
        }
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        if let Item::File(f) = item
            && f.content.sensitive
        {
            base.sensitive.insert(f.path.clone());
        }
    }
}

/// Does a file change write its content (not only mode or owner)?
pub(crate) fn writes_content(c: &Change) -> bool {
    c.action != Action::Update || c.diff.is_some() || c.note.is_some()
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

    /// Run the file probe against files under a scratch root, as the host's
    /// shell would: the records it prints.
    fn run_probe(root: &std::path::Path, items: &[Item], check: ContentCheck) -> Vec<String> {
        let script = probe(items, root.to_str().unwrap(), check);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let prefix = root.to_str().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("X\t"))
            .map(|l| l[2..].strip_prefix(prefix).unwrap_or(&l[2..]).to_string())
            .collect()
    }

    #[test]
    fn between_full_checks_only_files_whose_stat_moved_are_hashed() {
        // A root with a space and a quote: nothing in the check may split or unquote it.
        let dir = std::env::temp_dir().join(format!("tk file'stat {}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.as_path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/tidekeeper")).unwrap();
        std::fs::write(root.join("etc/motd"), "hi\n").unwrap();
        std::fs::write(root.join("etc/my key"), "k").unwrap();
        let items = [
            Item::File(file("/etc/motd", "hi\n", false)),
            Item::File(file("/etc/my key", "k", true)),
        ];
        let (full, quick) = (
            ContentCheck {
                changed_only: false,
                record: true,
                settled: false,
            },
            ContentCheck {
                changed_only: true,
                record: true,
                settled: false,
            },
        );
        let cache = root.join("var/lib/tidekeeper").join(STAT_CACHE);
        assert!(run_probe(root, &items, full).is_empty());
        let recorded = std::fs::read_to_string(&cache).unwrap();
        assert_eq!(recorded.lines().count(), 2, "{recorded}");
        assert!(recorded.contains("/etc/my key\n"), "{recorded}");

        // A hand edit of the same size: its ctime moved, so it is hashed.
        std::fs::write(root.join("etc/motd"), "ho\n").unwrap();
        assert_eq!(run_probe(root, &items, quick), ["/etc/motd"]);
        std::fs::write(root.join("etc/motd"), "hi\n").unwrap();
        assert!(run_probe(root, &items, quick).is_empty());

        // What the cache vouches for is not hashed: a cache that lies (the
        // desired hash next to today's stat of a changed file) hides the
        // change from a quick check, and a full check still finds it.
        std::fs::write(root.join("etc/motd"), "XX\n").unwrap();
        assert_eq!(run_probe(root, &items, quick), ["/etc/motd"]);
        let stat = std::process::Command::new("stat")
            .args(["-c", "%s %i %.9Y %.9Z"])
            .arg(root.join("etc/motd"))
            .output()
            .unwrap();
        let lie = format!(
            "{} {}\t{}/etc/motd\n",
            crate::digest::sha256_hex(b"hi\n"),
            String::from_utf8_lossy(&stat.stdout).trim(),
            root.display()
        );
        std::fs::write(&cache, lie).unwrap();
        assert!(run_probe(root, &items, quick).is_empty(), "not hashed");
        assert_eq!(run_probe(root, &items, full), ["/etc/motd"]);

        // Without `record` (a proposal's plan) the cache is left as it is.
        let before = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(root.join("etc/motd"), "hi\n").unwrap();
        let no_record = ContentCheck {
            changed_only: false,
            record: false,
            settled: false,
        };
        assert!(run_probe(root, &items, no_record).is_empty());
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let f = file("/etc/motd", "hi\n", false);
        let items = [
            Item::File(f.clone()),
            Item::File(file("/etc/key", "k", true)),
        ];
        for changed_only in [false, true] {
            sh_n(&probe(
                &items,
                "/r",
                ContentCheck {
                    changed_only,
                    record: true,
                    settled: false,
                },
            ));
        }
        // Nothing to record or compare: the plain check, one process per sensitivity.
        let s = probe(&items, "", ContentCheck::default());
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
        let w = write("/r", &f, false, None);
        assert_eq!(
            w,
            format!(
                "p=/r/etc/motd; d=/r/etc\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
                 for x in \"$d\"/.tidekeeper.*; do [ -f \"$x\" ] && rm -f \"$x\"; done\n\
                 t=$(mktemp \"$d/.tidekeeper.XXXXXX\") || return\n\
                 printf %s 'hi\n' >\"$t\" || return\n\
                 chown root \"$t\" || return\nchgrp adm \"$t\" || return\nchmod 0640 \"$t\" || return\n\
                 sync \"$t\" || return\nbackup /etc/motd || return\nmv -f \"$t\" \"$p\" || return\n"
            )
        );
        sh_n_step(&w);
        let in_place = apply("", &f, Action::Update, false, None);
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
        let body = apply("", &f, Action::Replace, true, None);
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
