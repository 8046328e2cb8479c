//! Every fenced block of README.md and docs/*.md is checked by what it is,
//! or carries `<!-- not run: REASON -->` on the line before its fence:
//!
//! - `yaml`: the config files they declare (`# hosts/web.yaml` as their
//!   first line), put with the doc's other snippets into a small repo and
//!   validated by the binary ([`configs`]); `jinja`: rendered there too, as a
//!   template of a role;
//! - `sh` / `console` / output: the command lines run as written, with the
//!   binary on PATH, against fixture repos, and shown output compared with
//!   what it prints ([`commands`]); lines that need a cloud, a daemon or a
//!   real server are parsed by the CLI at least;
//! - `json`, `rego`, trailers, sudoers: compared with what the code emits or
//!   evaluated by it ([`data`]); `rust`: compiled with the tests
//!   ([`testing_md`]).
//!
//! [`CLAIMS`] says which check takes which block; the coverage test fails
//! on any block that no check takes and that is not marked, and prints a
//! summary.

mod commands;
mod configs;
mod data;
mod testing_md;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// One fenced block of a doc.
#[derive(Debug, Clone)]
pub struct Block {
    /// Relative to the repository: `README.md`, `docs/config.md`.
    pub doc: String,
    /// The line of the opening fence (1-based).
    pub line: usize,
    /// The fence's info string: `yaml`, `sh`, … (empty for none).
    pub lang: String,
    pub body: String,
    /// `<!-- not run: REASON -->` right before the fence: the reason.
    pub not_run: Option<String>,
}

impl Block {
    pub fn at(&self) -> String {
        format!("{}:{}", self.doc, self.line)
    }
}

/// Which check takes which block: the block of `doc` fenced as `lang` whose
/// text contains `needle` (`doc` [`ANY`]: every block fenced as `lang`).
pub struct Claim {
    pub doc: &'static str,
    pub lang: &'static str,
    pub needle: &'static str,
    pub how: &'static str,
}

pub const ANY: &str = "*";

impl Claim {
    fn takes(&self, b: &Block) -> bool {
        (self.doc == ANY || self.doc == b.doc)
            && self.lang == b.lang
            && b.body.contains(self.needle)
    }
}

const fn claim(
    doc: &'static str,
    lang: &'static str,
    needle: &'static str,
    how: &'static str,
) -> Claim {
    Claim {
        doc,
        lang,
        needle,
        how,
    }
}

pub const CLAIMS: &[Claim] = &[
    claim(
        ANY,
        "yaml",
        "",
        "config files: validated in a repo of the doc's snippets (configs::yaml_snippets_validate)",
    ),
    claim(
        ANY,
        "jinja",
        "",
        "a role's template: validated, and rendered with the stand-in facts (configs::yaml_snippets_validate)",
    ),
    claim(
        "README.md",
        "sh",
        "-- demo",
        "run: `tidekeeper demo` with its daemon; scripts/test exists, not run (commands::readme_quickstart)",
    ),
    claim(
        "README.md",
        "console",
        "$ tidekeeper plan --host demo-local",
        "the demo's output, matched line by line (commands::readme_quickstart)",
    ),
    claim(
        "README.md",
        "sh",
        "bsae",
        "run in the demo repo, `cargo run … --` as the binary (commands::readme_quickstart)",
    ),
    claim(
        "README.md",
        "text",
        "unknown role \"bsae\"",
        "validate's output, equal but for the commit (commands::readme_quickstart)",
    ),
    claim(
        "docs/apply.md",
        "console",
        "--host web-1 --host db-1",
        "run against local hosts: the hosts each line chooses (commands::host_selection)",
    ),
    claim(
        "docs/apply.md",
        "console",
        "--out web.plan",
        "run against a local host: save, show three ways, apply (commands::saved_plans)",
    ),
    claim(
        "docs/apply.md",
        "text",
        "the saved plan is stale",
        "apply's error after the host moved, equal (commands::saved_plans)",
    ),
    claim(
        "docs/cloud.md",
        "sh",
        "tidekeeper import",
        "run without cloud credentials: parsed, and refused for want of them (commands::cloud_import)",
    ),
    claim(
        "docs/cloud.md",
        "json",
        "\"ec2:DescribeInstances\"",
        "the IAM actions are the EC2 calls crates/ec2 makes (data::ec2_iam_policy)",
    ),
    claim(
        "docs/cloud.md",
        "json",
        "\"lightsail:GetInstances\"",
        "the IAM actions are the Lightsail calls crates/lightsail makes (data::lightsail_iam_policy)",
    ),
    claim(
        "docs/config.md",
        "text",
        "tidekeeper.yaml     fleet settings",
        "the layout is what `init` writes (commands::repo_layout)",
    ),
    claim(
        "docs/config.md",
        "sh",
        "secrets encrypt db-password",
        "run: encrypt, edit through $EDITOR, checked with age (commands::secrets)",
    ),
    claim(
        "docs/config.md",
        "sh",
        "secrets rekey",
        "run: a second person's key added and every secret rekeyed to it (commands::secrets)",
    ),
    claim(
        "docs/daemon.md",
        "sh",
        "tidekeeper run --repo",
        "parsed: each line with --help appended (commands::daemon_run)",
    ),
    claim(
        "docs/daemon.md",
        "text",
        "Tidekeeper-Verdict: applied",
        "read and written back by the audit trail's code, equal (data::audit_trailers)",
    ),
    claim(
        "docs/maintenance.md",
        "text",
        "tidekeeper restore JOB",
        "parsed: each synopsis filled in, with --help appended (commands::restore_synopsis)",
    ),
    claim(
        "docs/notify.md",
        "json",
        "\"version\": 1",
        "the webhook body the code builds for this event, equal (data::webhook_payload)",
    ),
    claim(
        "docs/notify.md",
        "json",
        "\"notifications\"",
        "the /status serialisation of these values, equal (data::notify_status)",
    ),
    claim(
        "docs/notify.md",
        "sh",
        "notify test phone",
        "run in the doc's repo: says what is missing; and a reachable sink (commands::notify_test)",
    ),
    claim(
        "docs/policies.md",
        "json",
        "\"resources\"",
        "the input a plan's policies get, same keys (data::policy_input)",
    ),
    claim(
        "docs/policies.md",
        "rego",
        "package tidekeeper.budget",
        "a repo policy: denies a plan over budget, passes one under (data::budget_policy)",
    ),
    claim(
        "docs/safety.md",
        "text",
        "NOPASSWD: /bin/sh",
        "written to a test host; tidekeeper applies as that user through it (data::sudoers_rule)",
    ),
    claim(
        "docs/testing.md",
        "sh",
        "# one module",
        "scripts and module exist; not run: the suite itself (commands::testing_commands)",
    ),
    claim(
        "docs/testing.md",
        "sh",
        "TESTBED_KEEP=1",
        "the test, variable and paths exist; not run: needs a kept host (commands::testing_commands)",
    ),
    claim(
        "docs/testing.md",
        "sh",
        "PROPTEST_CASES=500",
        "the module exists; not run: long (commands::testing_commands)",
    ),
    claim(
        "docs/testing.md",
        "sh",
        "cargo bench",
        "the benches exist; not run: benchmarks (commands::testing_commands)",
    ),
    claim(
        "docs/testing.md",
        "rust",
        "Testbed::start(3)",
        "compiled as an ignored test (testing_md)",
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, in that order.
fn doc_files() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    docs.insert(0, "README.md".into());
    docs
}

/// The fenced blocks of `text` (the doc `doc`).
fn parse(doc: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim_end() == "```")
            .unwrap_or_else(|| panic!("{doc}:{}: a fence that is never closed", i + 1));
        let not_run = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- not run:"))
            .and_then(|r| r.strip_suffix("-->"))
            .map(|r| r.trim().to_string());
        out.push(Block {
            doc: doc.to_string(),
            line: i + 1,
            lang: info.trim().to_string(),
            body: lines[i + 1..end].join("\n") + "\n",
            not_run,
        });
        i = end + 1;
    }
    out
}

/// Every fenced block of the docs.
pub fn blocks() -> &'static [Block] {
    static BLOCKS: OnceLock<Vec<Block>> = OnceLock::new();
    BLOCKS.get_or_init(|| {
        doc_files()
            .iter()
            .flat_map(|d| parse(d, &std::fs::read_to_string(root().join(d)).unwrap()))
            .collect()
    })
}

/// The one block of `doc` fenced as `lang` containing `needle`, which a
/// claim of [`CLAIMS`] names.
#[track_caller]
pub fn block(doc: &str, lang: &str, needle: &str) -> &'static Block {
    assert!(
        CLAIMS
            .iter()
            .any(|c| c.doc == doc && c.lang == lang && c.needle == needle),
        "no claim in CLAIMS for {doc} {lang} {needle:?}"
    );
    let found: Vec<&Block> = blocks()
        .iter()
        .filter(|b| b.doc == doc && b.lang == lang && b.body.contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{doc}: want exactly one ```{lang} block containing {needle:?}"
    );
    assert!(
        found[0].not_run.is_none(),
        "{} is marked not run",
        found[0].at()
    );
    found[0]
}

/// The claims that take `b`.
fn claims_of(b: &Block) -> Vec<&'static Claim> {
    CLAIMS.iter().filter(|c| c.takes(b)).collect()
}

#[test]
fn every_block_is_checked_or_marked_not_run() {
    let all = blocks();
    assert!(all.len() > 40, "{} blocks", all.len());
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    let mut marked = Vec::new();
    for b in all {
        let claims = claims_of(b);
        match (&b.not_run, claims.len()) {
            (Some(r), 0) if !r.is_empty() => {
                marked.push(format!("  {} ```{}: {r}", b.at(), b.lang))
            }
            (Some(_), 0) => problems.push(format!("{}: `not run:` without a reason", b.at())),
            (Some(_), _) => problems.push(format!("{}: marked not run, but checked", b.at())),
            (None, 1) => checked.push(format!("  {} ```{}: {}", b.at(), b.lang, claims[0].how)),
            (None, 0) => problems.push(format!(
                "{}: ```{} block neither checked (CLAIMS) nor marked <!-- not run: why -->",
                b.at(),
                b.lang
            )),
            (None, _) => problems.push(format!("{}: taken by {} claims", b.at(), claims.len())),
        }
    }
    for c in CLAIMS.iter().filter(|c| c.doc != ANY) {
        let n = all.iter().filter(|b| c.takes(b)).count();
        if n != 1 {
            problems.push(format!(
                "claim {} {} {:?} takes {n} blocks",
                c.doc, c.lang, c.needle
            ));
        }
    }
    println!(
        "docs examples: {} blocks, {} checked, {} marked not run\nchecked:\n{}\nmarked:\n{}",
        all.len(),
        checked.len(),
        marked.len(),
        checked.join("\n"),
        marked.join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_block_parser_finds_fences_markers_and_languages() {
    let text = "x\n```yaml\na: 1\n```\n<!-- not run: a diagram -->\n```\n[a] -> [b]\n```\n```sh\nls\n```\n";
    let b = parse("d.md", text);
    assert_eq!(b.len(), 3);
    assert_eq!(
        (b[0].line, b[0].lang.as_str(), b[0].body.as_str()),
        (2, "yaml", "a: 1\n")
    );
    assert_eq!(b[0].not_run, None);
    assert_eq!(b[1].not_run.as_deref(), Some("a diagram"));
    assert_eq!(b[1].lang, "");
    assert_eq!(b[2].lang, "sh");
    // A block no claim takes and no marker excuses is what the coverage
    // test reports.
    assert!(claims_of(&b[1]).is_empty() && claims_of(&b[2]).is_empty());
    assert_eq!(claims_of(&b[0]).len(), 1);
}

// ---------------------------------------------------------------------
// Running doc lines

/// `script` run by `sh` in `dir`, as a user would type it: the binary under
/// test is `tidekeeper` on PATH, git commits as a test user, nothing of
/// this machine's AWS set-up or TIDEKEEPER_* settings leaks in.
pub fn sh(dir: &Path, script: &str, env: &[(&str, &str)]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_tidekeeper"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AWS_") || k.starts_with("TIDEKEEPER_") || k == "EDITOR" {
            c.env_remove(&*k);
        }
    }
    c.env("PATH", path)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/tidekeeper-test/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/tidekeeper-test/aws-credentials",
        )
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@localhost")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@localhost")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "commit.gpgsign")
        .env("GIT_CONFIG_VALUE_0", "false")
        .envs(env.iter().copied());
    c.output().unwrap()
}

/// The command lines of a shell block: comment-only and empty lines
/// dropped, a `$ ` prompt taken off.
pub fn command_lines(body: &str) -> Vec<String> {
    body.lines()
        .map(|l| l.strip_prefix("$ ").unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `line` without its trailing `# comment` (a `#` after a blank, outside
/// quotes).
pub fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, ch) in line.char_indices() {
        match ch {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return line[..i].trim_end().to_string();
            }
            _ => {}
        }
        prev = ch;
    }
    line.trim_end().to_string()
}

/// A line as the clap parser of the binary sees it: `--help` appended, so
/// nothing runs, but every flag and value must parse (exit 0), and the
/// usage printed is that of `subcommand`.
#[track_caller]
pub fn parses(dir: &Path, line: &str, subcommand: &str) {
    let out = sh(dir, &format!("{} --help", strip_comment(line)), &[]);
    let said = crate::support::fleet::text(&out);
    assert_eq!(out.status.code(), Some(0), "{line}\n{said}");
    assert!(
        said.contains(&format!("Usage: tidekeeper {subcommand} ")),
        "{line}: not the usage of {subcommand}:\n{said}"
    );
}

/// `text` with what varies from run to run made fixed: durations in
/// parentheses (`(0.1s)`) and 12-hex-digit commits.
pub fn normalise(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.split(' ')
                .map(|w| {
                    let bare = w.trim_end_matches([')', ',', '.', ':']);
                    if w.starts_with('(') && w.ends_with("s)") && w.len() > 3 {
                        let n = w[1..w.len() - 2].trim_end_matches('m');
                        if n.chars().all(|c| c.is_ascii_digit() || c == '.') {
                            return "(TIME)".to_string();
                        }
                    }
                    if bare.len() == 12 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
                        return w.replacen(bare, "COMMIT", 1);
                    }
                    w.to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `line` of a shown transcript matches `actual`: equal, or with
/// each `…` in it standing for any text.
fn line_matches(line: &str, actual: &str) -> bool {
    let parts: Vec<&str> = line.split('…').collect();
    if parts.len() == 1 {
        return line == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the `shown` transcript (a doc's) occurs in `actual` output: its
/// lines in a run of consecutive lines, where a line that is only `…`
/// stands for any number of lines. Both are [`normalise`]d.
pub fn shows(shown: &str, actual: &str) -> bool {
    fn from(p: &[&str], a: &[&str]) -> bool {
        match p.first() {
            None => true,
            Some(l) if l.trim() == "…" => (0..=a.len()).any(|k| from(&p[1..], &a[k..])),
            Some(l) => !a.is_empty() && line_matches(l, a[0]) && from(&p[1..], &a[1..]),
        }
    }
    let (shown, actual) = (normalise(shown), normalise(actual));
    let p: Vec<&str> = shown.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    (0..a.len()).any(|s| from(&p, &a[s..]))
}

#[test]
fn transcripts_match_with_ellipses_and_fail_without() {
    let out = "intro\n$ tk plan   # what (0.6s)\nhost\n  + a\n  + b\n  + c\nPlan: 3\ncommit 0123456789ab\n";
    assert!(shows(
        "$ tk plan   # what (0.1s)\nhost\n  + a\n  …\n  + c\n",
        out
    ));
    assert!(shows("host\n  + a\n…\nPlan: 3\ncommit 115aa40945a2\n", out));
    assert!(shows("$ tk plan   # …\n", out));
    assert!(
        !shows("host\n  + a\n  + c\n", out),
        "a line left out needs a …"
    );
    assert!(!shows("$ tk plan\n", out), "a line cut short needs a …");
    assert!(!shows("Plan: 4\n", out));
    assert_eq!(
        strip_comment("tk run --repo 'a # b'   # why"),
        "tk run --repo 'a # b'"
    );
    assert_eq!(
        command_lines("$ tk a   # x\n# only a comment\n\n  tk b\n"),
        ["tk a   # x", "tk b"]
    );
}

/// A config repo in a temporary directory: `files` committed on `main`.
pub struct Repo {
    pub tmp: crate::support::TempDir,
    pub path: PathBuf,
}

impl Repo {
    pub fn new(tag: &str, files: &BTreeMap<String, String>) -> Repo {
        let tmp = crate::support::TempDir::new(tag);
        let path = tmp.path().join("repo");
        std::fs::create_dir_all(&path).unwrap();
        crate::support::git(&path, &["init", "-q", "-b", "main"]);
        let repo = Repo { tmp, path };
        for (rel, text) in files {
            repo.write(rel, text);
        }
        repo.commit("docs example");
        repo
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn commit(&self, msg: &str) {
        crate::support::git(&self.path, &["add", "-A"]);
        crate::support::git(&self.path, &["commit", "-q", "--allow-empty", "-m", msg]);
    }

    /// A sibling directory of the repo (a local host's root, a home).
    pub fn beside(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// `files` as a map, for [`Repo::new`].
pub fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
