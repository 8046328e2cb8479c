//! The reference fleets in `examples/` as their tests run them: the example
//! as written, plus only its `test-overlay.yaml` (what a user's own
//! environment supplies: endpoints, addresses, credentials), and the
//! commands its README shows, run as shown.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The directory of the example `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Files of an example that are about it, not part of its config repo.
const NOT_CONFIG: [&str; 2] = ["README.md", "test-overlay.yaml"];

/// Every file of an example's config repo, as (path, bytes), sorted.
fn config_files(name: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, at: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(at).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".git") {
                    walk(base, &p, out);
                }
                continue;
            }
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if !NOT_CONFIG.contains(&rel.as_str()) {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir(name), &dir(name), &mut out);
    out
}

/// Every text file of an example's config repo, as (path, text); the binary
/// ones (age secrets) are made afresh by the tests.
pub fn files(name: &str) -> Vec<(String, String)> {
    config_files(name)
        .into_iter()
        .filter_map(|(p, b)| String::from_utf8(b).ok().map(|t| (p, t)))
        .collect()
}

/// What a substitution stands for in the user's environment.
const KINDS: [&str; 3] = ["endpoint", "address", "credential"];

/// One entry of a test overlay: in `file`, `from` becomes `to`; without
/// `from`, the whole file is the test's own (an age secret the test
/// encrypts with its own identity).
#[derive(Debug, Clone)]
pub struct Substitution {
    pub file: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub why: String,
    pub note: String,
}

/// An example's `test-overlay.yaml`.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub example: String,
    pub entries: Vec<Substitution>,
}

impl Overlay {
    /// Read `examples/NAME/test-overlay.yaml`; every entry must say what it
    /// stands for (`why`) and why the test needs it (`note`).
    pub fn load(example: &str) -> Overlay {
        let path = dir(example).join("test-overlay.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let s = |e: &serde_json::Value, k: &str| e[k].as_str().map(str::to_string);
        let entries: Vec<Substitution> = v["substitutions"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no `substitutions:` list", path.display()))
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = format!("{} entry {}", path.display(), i + 1);
                let entry = Substitution {
                    file: s(e, "file").unwrap_or_else(|| panic!("{at}: no file")),
                    from: s(e, "from"),
                    to: s(e, "to"),
                    why: s(e, "why").unwrap_or_default(),
                    note: s(e, "note").unwrap_or_default(),
                };
                assert!(
                    KINDS.contains(&entry.why.as_str()),
                    "{at}: why is {:?}; one of {KINDS:?} (what the user's environment supplies)",
                    entry.why
                );
                assert!(!entry.note.trim().is_empty(), "{at}: no note");
                assert_eq!(
                    entry.from.is_some(),
                    entry.to.is_some(),
                    "{at}: from and to go together"
                );
                if entry.from.is_none() {
                    assert!(
                        entry.why == "credential" && entry.file.ends_with(".age"),
                        "{at}: only an age secret is replaced whole"
                    );
                }
                entry
            })
            .collect();
        Overlay {
            example: example.to_string(),
            entries,
        }
    }

    /// The entries that rewrite the config repo's files (not the README's commands).
    fn config_entries(&self) -> impl Iterator<Item = &Substitution> {
        self.entries.iter().filter(|e| e.file != "README.md")
    }

    /// The example's text files with this overlay applied (`${NAME}` in a
    /// `to` is the test's value `vars[NAME]`), printed as applied. Fails
    /// naming the entry whose `from` is not in its file.
    pub fn apply(&self, vars: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut files = files(&self.example);
        println!(
            "{}: the example as written, with its test overlay:",
            self.example
        );
        for (i, e) in self.config_entries().enumerate() {
            let (Some(from), Some(to)) = (&e.from, &e.to) else {
                println!("  {} ({}): the test's own; {}", e.file, e.why, e.note);
                continue;
            };
            let to = expand(to, vars);
            let f = files.iter_mut().find(|f| f.0 == e.file).unwrap_or_else(|| {
                panic!(
                    "examples/{}/test-overlay.yaml entry {}: no file {} in the example",
                    self.example,
                    i + 1,
                    e.file
                )
            });
            assert!(
                f.1.contains(from.as_str()),
                "examples/{}/test-overlay.yaml entry {}: {} has no {from:?}",
                self.example,
                i + 1,
                e.file
            );
            f.1 = f.1.replace(from.as_str(), &to);
            println!("  {} ({}): {from:?} → {to:?}; {}", e.file, e.why, e.note);
        }
        files
    }

    /// Fails unless the config repo at `repo` holds exactly the example's
    /// files as written, with only this overlay applied.
    pub fn assert_only_difference(&self, repo: &Path, vars: &[(&str, &str)]) {
        let expected = self.apply(vars);
        let own: Vec<&str> = self
            .config_entries()
            .filter(|e| e.from.is_none())
            .map(|e| e.file.as_str())
            .collect();
        let written = config_files(&self.example);
        let mut problems = Vec::new();
        let mut in_repo = Vec::new();
        collect(repo, repo, &mut in_repo);
        for rel in &in_repo {
            if !written.iter().any(|(p, _)| p == rel) {
                problems.push(format!("{rel} is not in the example"));
            }
        }
        for (rel, bytes) in &written {
            let Ok(now) = std::fs::read(repo.join(rel)) else {
                problems.push(format!("{rel} is missing"));
                continue;
            };
            if own.contains(&rel.as_str()) {
                continue;
            }
            let want = expected
                .iter()
                .find(|(p, _)| p == rel)
                .map_or(bytes.clone(), |(_, t)| t.clone().into_bytes());
            if now != want {
                problems.push(format!(
                    "{rel} differs from the example plus its overlay:\n--- expected\n{}\n--- the test ran\n{}",
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(&now)
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "examples/{}: the test runs something else than the example as written plus examples/{}/test-overlay.yaml:\n{}",
            self.example,
            self.example,
            problems.join("\n")
        );
    }
}

/// Files under `at`, relative to `base`, without git's own.
fn collect(base: &Path, at: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(at).unwrap().flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if p.is_dir() {
            collect(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// `text` with every `${NAME}` replaced by the test's value of NAME.
fn expand(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
        let name = &rest[i + 2..i + end];
        let value = vars
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("the test gives no value for ${{{name}}} in {text:?}"))
            .1;
        out.push_str(value);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Marks a README command the tests cannot run, with the reason after it.
const NOT_RUN: &str = "# not run by the tests:";

/// A command an example's README shows in a ```sh block.
#[derive(Debug)]
struct Shown {
    line: String,
    not_run: Option<String>,
    ran: bool,
}

/// The commands an example's README shows, run by its test as shown: with
/// the overlay's README substitutions, in the test's repo, with the test's
/// credentials in the environment.
pub struct ReadmeCommands {
    example: String,
    shown: Vec<Shown>,
    /// The README's substitutions, `to` not yet expanded.
    subs: Vec<(String, String)>,
    /// The test's values for `${NAME}`, in the README's commands and the overlay.
    pub vars: Vec<(String, String)>,
}

impl ReadmeCommands {
    pub fn load(overlay: &Overlay) -> ReadmeCommands {
        let readme = std::fs::read_to_string(dir(&overlay.example).join("README.md")).unwrap();
        let mut shown = Vec::new();
        let mut in_sh = false;
        let mut not_run: Option<String> = None;
        for line in readme.lines() {
            let t = line.trim();
            if !in_sh {
                in_sh = t == "```sh";
                continue;
            }
            if t == "```" {
                in_sh = false;
            } else if let Some(why) = t.strip_prefix(NOT_RUN) {
                not_run = Some(why.trim().to_string());
            } else if !t.is_empty() && !t.starts_with('#') {
                shown.push(Shown {
                    line: t.to_string(),
                    not_run: not_run.take(),
                    ran: false,
                });
            }
        }
        let subs = overlay
            .entries
            .iter()
            .filter(|e| e.file == "README.md")
            .map(|e| (e.from.clone().unwrap(), e.to.clone().unwrap()))
            .collect();
        ReadmeCommands {
            example: overlay.example.clone(),
            shown,
            subs,
            vars: Vec::new(),
        }
    }

    /// Give `${name}` the test's `value`.
    pub fn var(&mut self, name: &str, value: &str) {
        self.vars.push((name.to_string(), value.to_string()));
    }

    /// The test's values, as an overlay takes them.
    pub fn values(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    /// Run `line`, which the README must show (and not mark as not run), in
    /// `cwd` with `env` and `stdin`; its output.
    #[track_caller]
    pub fn run(&mut self, line: &str, cwd: &Path, env: &[(&str, &str)], stdin: &str) -> Output {
        let cmd_line = self.take(line);
        println!("{}$ {cmd_line}", self.example);
        let out = shell(&cmd_line, cwd, env, stdin);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        out
    }

    /// The command `line` as the README shows it (with the README
    /// substitutions), for the test to run elsewhere (on a test host).
    #[track_caller]
    pub fn take(&mut self, line: &str) -> String {
        let example = self.example.clone();
        let values: Vec<(String, String)> = self.vars.clone();
        let s = self
            .shown
            .iter_mut()
            .find(|s| s.line == line)
            .unwrap_or_else(|| {
                panic!("examples/{example}/README.md shows no `{line}` in a ```sh block")
            });
        assert!(
            s.not_run.is_none(),
            "examples/{example}/README.md marks `{line}` as not run"
        );
        s.ran = true;
        // Each README substitution whose `from` is in the command.
        let mut out = line.to_string();
        for (from, to) in &self.subs {
            let refs: Vec<(&str, &str)> = values
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            out = out.replace(from.as_str(), &expand(to, &refs));
        }
        out
    }

    /// [`ReadmeCommands::run`] that must exit 0 and print each of `want`.
    #[track_caller]
    pub fn run_ok(
        &mut self,
        line: &str,
        cwd: &Path,
        env: &[(&str, &str)],
        want: &[&str],
    ) -> String {
        let out = self.run(line, cwd, env, "");
        let all = crate::support::fleet::text(&out);
        assert_eq!(out.status.code(), Some(0), "`{line}`: {all}");
        for w in want {
            assert!(all.contains(w), "`{line}` printed no {w:?}:\n{all}");
        }
        crate::support::fleet::stdout(&out)
    }

    /// Fails naming every command the README shows that the test neither
    /// ran nor finds marked as not run.
    #[track_caller]
    pub fn all_ran(&self) {
        let missed: Vec<&str> = self
            .shown
            .iter()
            .filter(|s| !s.ran && s.not_run.is_none())
            .map(|s| s.line.as_str())
            .collect();
        assert!(
            missed.is_empty(),
            "examples/{}/README.md shows commands its test does not run: {missed:?}",
            self.example
        );
        for s in self.shown.iter().filter(|s| s.not_run.is_some()) {
            println!(
                "{}: not run: `{}` ({})",
                self.example,
                s.line,
                s.not_run.as_deref().unwrap()
            );
        }
    }
}

/// `sh -c LINE` with tidekeeper first on PATH, the environment the other
/// tests give tidekeeper, and `env`.
fn shell(line: &str, cwd: &Path, env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let bin = Path::new(env!("CARGO_BIN_EXE_tidekeeper"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let base = crate::support::tidekeeper();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line]).current_dir(cwd).env("PATH", path);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env_remove("SSH_AUTH_SOCK")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // A command that reads no input may be gone before it is written.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// A change the user makes later (a pull request, a commit), as the test
/// makes it: `from` becomes `to` in `file` of the repo at `repo`, and the
/// test says what the user does.
#[track_caller]
pub fn users_change(repo: &Path, file: &str, from: &str, to: &str, says: &str) {
    let p = repo.join(file);
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(t.contains(from), "{file} has no {from:?}");
    println!("the user's change ({says}): {file}: {from:?} → {to:?}");
    std::fs::write(&p, t.replace(from, to)).unwrap();
}
