//! Issue 33, point 8: a model-based test of the engine. "After anything goes
//! wrong, the next plan shows exactly the work that is left."
//!
//! Random sequences of operations (commit a new config, apply, make a command
//! fail, edit a managed file by hand, kill an apply at a random point) run
//! against one `provider: local` host confined to a scratch root, with the
//! real binary. After every step the plan (`plan --json`) must list exactly
//! what a small reference model says differs: the desired files, directories,
//! symlinks and `absent:` paths compared with what is on disk (read directly),
//! what tidekeeper manages but the config no longer has, and the commands
//! whose current definition never completed (read from their own logs).
//!
//! `PROPTEST_CASES=500 cargo test --test tests -- model_based` runs it long;
//! docs/testing.md says how to replay a failure.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use crate::support::fleet::text;
use crate::support::{TempDir, git, tidekeeper};

// ---------------------------------------------------------------- universe

/// File slots; the last one lives in the first directory slot.
const FILES: [&str; 3] = ["/srv/app/a.conf", "/srv/app/b.conf", "/srv/app/d/c.conf"];
const DIRS: [&str; 2] = ["/srv/app/d", "/srv/app/e"];
const LINKS: [&str; 2] = ["/srv/app/l1", "/srv/app/l2"];
const CONTENTS: [&str; 3] = ["one\n", "two\n", "three\nlines\n"];
const FILE_MODES: [u32; 3] = [0o644, 0o600, 0o640];
const DIR_MODES: [u32; 3] = [0o755, 0o750, 0o700];
/// Relative to /srv/app, where the links are.
const TARGETS: [&str; 3] = ["a.conf", "b.conf", "d/c.conf"];
const COMMANDS: [&str; 2] = ["c1", "c2"];
const EDITED: &str = "edited by hand\n";
/// A path that is a file in one config and a symlink in another.
const FLEX: &str = "/srv/app/x";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flex {
    /// (content index, mode index)
    File(usize, usize),
    /// target index
    Link(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot<T> {
    Unmanaged,
    Present(T),
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// (content index, mode index)
    files: [Slot<(usize, usize)>; 3],
    /// mode index
    dirs: [Slot<usize>; 2],
    /// target index
    links: [Slot<usize>; 2],
    flex: Slot<Flex>,
    /// The version of each command's `run` text, if declared.
    commands: [Option<u8>; 2],
}

impl Config {
    /// A file inside a directory slot needs that directory: never declared
    /// absent, a file or a link while something is placed under it.
    fn normalized(mut self) -> Config {
        if matches!(self.files[2], Slot::Present(_)) && self.dirs[0] == Slot::Absent {
            self.dirs[0] = Slot::Unmanaged;
        }
        self
    }

    fn yaml(&self) -> String {
        let mut s = String::from("description: model-based test\n");
        let mut files: Vec<String> = (0..FILES.len())
            .filter_map(|i| match self.files[i] {
                Slot::Present((c, m)) => Some(format!(
                    "  - {{path: {}, content: {:?}, mode: \"{:04o}\"}}\n",
                    FILES[i], CONTENTS[c], FILE_MODES[m]
                )),
                _ => None,
            })
            .collect();
        if let Slot::Present(Flex::File(c, m)) = self.flex {
            files.push(format!(
                "  - {{path: {FLEX}, content: {:?}, mode: \"{:04o}\"}}\n",
                CONTENTS[c], FILE_MODES[m]
            ));
        }
        if !files.is_empty() {
            s.push_str("files:\n");
            s.push_str(&files.concat());
        }
        let dirs: Vec<String> = (0..DIRS.len())
            .filter_map(|i| match self.dirs[i] {
                Slot::Present(m) => Some(format!(
                    "  - {{path: {}, mode: \"{:04o}\"}}\n",
                    DIRS[i], DIR_MODES[m]
                )),
                _ => None,
            })
            .collect();
        if !dirs.is_empty() {
            s.push_str("directories:\n");
            s.push_str(&dirs.concat());
        }
        let mut links: Vec<String> = (0..LINKS.len())
            .filter_map(|i| match self.links[i] {
                Slot::Present(t) => Some(format!(
                    "  - {{path: {}, target: {}}}\n",
                    LINKS[i], TARGETS[t]
                )),
                _ => None,
            })
            .collect();
        if let Slot::Present(Flex::Link(t)) = self.flex {
            links.push(format!("  - {{path: {FLEX}, target: {}}}\n", TARGETS[t]));
        }
        if !links.is_empty() {
            s.push_str("symlinks:\n");
            s.push_str(&links.concat());
        }
        let absent = self.absent();
        if !absent.is_empty() {
            s.push_str(&format!("absent: [{}]\n", absent.join(", ")));
        }
        let commands: Vec<String> = (0..COMMANDS.len())
            .filter_map(|i| {
                self.commands[i].map(|v| {
                    format!(
                        "  - name: {}\n    run: '{}'\n",
                        COMMANDS[i],
                        command_run(COMMANDS[i], v)
                    )
                })
            })
            .collect();
        if !commands.is_empty() {
            s.push_str("commands:\n");
            s.push_str(&commands.concat());
        }
        s
    }

    fn absent(&self) -> Vec<&'static str> {
        let mut v = vec![];
        for (i, f) in self.files.iter().enumerate() {
            if *f == Slot::Absent {
                v.push(FILES[i]);
            }
        }
        for (i, d) in self.dirs.iter().enumerate() {
            if *d == Slot::Absent {
                v.push(DIRS[i]);
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            if *l == Slot::Absent {
                v.push(LINKS[i]);
            }
        }
        if self.flex == Slot::Absent {
            v.push(FLEX);
        }
        v
    }

    /// Every path the config names, whatever it says of it.
    fn paths(&self) -> BTreeSet<&'static str> {
        let mut v: BTreeSet<&str> = self.absent().into_iter().collect();
        for (i, f) in self.files.iter().enumerate() {
            if matches!(f, Slot::Present(_)) {
                v.insert(FILES[i]);
            }
        }
        for (i, d) in self.dirs.iter().enumerate() {
            if matches!(d, Slot::Present(_)) {
                v.insert(DIRS[i]);
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            if matches!(l, Slot::Present(_)) {
                v.insert(LINKS[i]);
            }
        }
        if matches!(self.flex, Slot::Present(_)) {
            v.insert(FLEX);
        }
        v
    }
}

/// A command logs that it started, fails while its marker exists, and logs
/// that it completed as its last act.
fn command_run(name: &str, version: u8) -> String {
    format!(
        "echo \"{name} {version} start\" >> \"$TK_ROOT/commands.log\"; \
         if [ -e \"$TK_ROOT/fail-{name}\" ]; then echo \"{name} failed\" >&2; exit 3; fi; \
         echo \"{name} {version} ok\" >> \"$TK_ROOT/commands.log\""
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Content,
    Mode,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Commit(Config),
    Apply,
    Arm(usize),
    Disarm(usize),
    Edit(usize, Edit),
    /// Kill an apply `ms` after it started, or after it started applying.
    Kill {
        applying: bool,
        ms: u64,
    },
    Plan,
}

// ---------------------------------------------------------------- strategies

fn slot<T: std::fmt::Debug + Clone + 'static>(
    present: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Slot<T>> {
    prop_oneof![
        2 => Just(Slot::Unmanaged),
        3 => present.prop_map(Slot::Present),
        1 => Just(Slot::Absent),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let file = || slot((0..CONTENTS.len(), 0..FILE_MODES.len()));
    let dir = || slot(0..DIR_MODES.len());
    let link = || slot(0..TARGETS.len());
    let command = || proptest::option::of(0u8..3);
    let flex = slot(prop_oneof![
        (0..CONTENTS.len(), 0..FILE_MODES.len()).prop_map(|(c, m)| Flex::File(c, m)),
        (0..TARGETS.len()).prop_map(Flex::Link),
    ]);
    (
        [file(), file(), file()],
        [dir(), dir()],
        [link(), link()],
        flex,
        [command(), command()],
    )
        .prop_map(|(files, dirs, links, flex, commands)| {
            Config {
                files,
                dirs,
                links,
                flex,
                commands,
            }
            .normalized()
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => config().prop_map(Op::Commit),
        3 => Just(Op::Apply),
        1 => (0..COMMANDS.len()).prop_map(Op::Arm),
        1 => (0..COMMANDS.len()).prop_map(Op::Disarm),
        2 => (
            0..=FILES.len(),
            prop_oneof![Just(Edit::Content), Just(Edit::Mode), Just(Edit::Delete)]
        )
            .prop_map(|(f, e)| Op::Edit(f, e)),
        2 => (any::<bool>(), 0u64..=60).prop_map(|(applying, ms)| Op::Kill { applying, ms }),
        1 => Just(Op::Plan),
    ]
}

fn proptest_config() -> ProptestConfig {
    let env = |k: &str, default: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    ProptestConfig {
        cases: env("PROPTEST_CASES", 12),
        // Each case runs the binary some twenty times: shrink, but not forever.
        max_shrink_iters: env("PROPTEST_MAX_SHRINK_ITERS", 200),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/model_based.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn the_next_plan_shows_exactly_the_work_that_is_left(
        first in config(),
        ops in proptest::collection::vec(op(), 1..12),
    ) {
        run(first, &ops);
    }
}

// ---------------------------------------------------------------- the model

struct World {
    root: TempDir,
    repo: TempDir,
    config: Config,
    /// Per command, what tidekeeper may have recorded as its last
    /// completed version (None: never). One candidate, except after a kill
    /// that let a command complete but perhaps not be recorded.
    recorded: [BTreeSet<Option<u8>>; 2],
    /// Lines of commands.log already accounted for.
    log_seen: usize,
    /// Every step so far, for failure messages.
    trail: Vec<String>,
}

/// What the model expects of the plan.
#[derive(Default, Debug)]
struct Expected {
    /// (kind, id) that must be listed.
    must: BTreeSet<(String, String)>,
    /// Commands that may or may not be listed (a kill's uncertainty).
    maybe: BTreeSet<String>,
}

impl World {
    fn new(first: Config) -> World {
        let root = TempDir::new("model-root");
        let repo = TempDir::new("model-repo");
        let p = repo.path();
        fs::create_dir_all(p.join("hosts")).unwrap();
        fs::create_dir_all(p.join("roles")).unwrap();
        fs::write(p.join("tidekeeper.yaml"), "fleet: model\n").unwrap();
        fs::write(
            p.join("hosts/dev.yaml"),
            format!(
                "provider: local\nroot: {}\nroles: [app]\n",
                root.path().display()
            ),
        )
        .unwrap();
        git(p, &["init", "-q", "-b", "main"]);
        let mut w = World {
            root,
            repo,
            config: first.clone(),
            recorded: [BTreeSet::from([None]), BTreeSet::from([None])],
            log_seen: 0,
            trail: vec![],
        };
        w.commit(first);
        w
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn tk(&self, args: &[&str]) -> Output {
        tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(self.repo.path())
            .output()
            .unwrap()
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- steps\n{}\n--- config\n{}",
            self.trail.join("\n"),
            self.config.yaml()
        )
    }

    fn commit(&mut self, config: Config) {
        let p = self.repo.path();
        fs::write(p.join("roles/app.yaml"), config.yaml()).unwrap();
        git(p, &["add", "-A"]);
        git(p, &["commit", "-q", "--allow-empty", "-m", "model"]);
        self.config = config;
    }

    /// New lines of commands.log: (name, version) of each completion.
    fn completions(&mut self) -> Vec<(usize, u8)> {
        let log = fs::read_to_string(self.root.path().join("commands.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let new = lines[self.log_seen.min(lines.len())..]
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                (w.len() == 3 && w[2] == "ok").then(|| {
                    let i = COMMANDS.iter().position(|c| *c == w[0]).unwrap();
                    (i, w[1].parse().unwrap())
                })
            })
            .collect();
        self.log_seen = lines.len();
        new
    }

    /// The paths tidekeeper lists as managed, by kind.
    fn inventory(&self) -> Vec<(String, String)> {
        let Ok(text) = fs::read_to_string(self.at("/var/lib/tidekeeper/inventory.json")) else {
            return vec![];
        };
        let doc: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| self.fail(&format!("inventory.json unreadable: {e}: {text}")));
        doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["id"].as_str().unwrap().to_string(),
                )
            })
            .filter(|(k, _)| matches!(k.as_str(), "file" | "directory" | "symlink"))
            .collect()
    }

    /// What the plan must list: desired ≠ disk, managed-but-dropped paths
    /// still there, commands whose definition never completed.
    fn expected(&self) -> Expected {
        let mut e = Expected::default();
        let c = &self.config;
        let mut must = |kind: &str, id: &str| {
            e.must.insert((kind.to_string(), id.to_string()));
        };
        for (i, f) in c.files.iter().enumerate() {
            match f {
                Slot::Present((content, mode)) => {
                    let p = self.at(FILES[i]);
                    let ok = fs::symlink_metadata(&p).is_ok_and(|m| {
                        m.file_type().is_file()
                            && m.permissions().mode() & 0o7777 == FILE_MODES[*mode]
                    }) && fs::read(&p).is_ok_and(|b| b == CONTENTS[*content].as_bytes());
                    if !ok {
                        must("file", FILES[i]);
                    }
                }
                Slot::Absent if self.exists(FILES[i]) => must("absent", FILES[i]),
                _ => {}
            }
        }
        for (i, d) in c.dirs.iter().enumerate() {
            match d {
                Slot::Present(mode) => {
                    let ok = fs::symlink_metadata(self.at(DIRS[i])).is_ok_and(|m| {
                        m.file_type().is_dir()
                            && m.permissions().mode() & 0o7777 == DIR_MODES[*mode]
                    });
                    if !ok {
                        must("directory", DIRS[i]);
                    }
                }
                Slot::Absent if self.exists(DIRS[i]) => must("absent", DIRS[i]),
                _ => {}
            }
        }
        for (i, l) in c.links.iter().enumerate() {
            match l {
                Slot::Present(t) => {
                    let ok = fs::read_link(self.at(LINKS[i]))
                        .is_ok_and(|got| got == Path::new(TARGETS[*t]));
                    if !ok {
                        must("symlink", LINKS[i]);
                    }
                }
                Slot::Absent if self.exists(LINKS[i]) => must("absent", LINKS[i]),
                _ => {}
            }
        }
        match c.flex {
            Slot::Present(Flex::File(content, mode)) => {
                let p = self.at(FLEX);
                let ok = fs::symlink_metadata(&p).is_ok_and(|m| {
                    m.file_type().is_file() && m.permissions().mode() & 0o7777 == FILE_MODES[mode]
                }) && fs::read(&p).is_ok_and(|b| b == CONTENTS[content].as_bytes());
                if !ok {
                    must("file", FLEX);
                }
            }
            Slot::Present(Flex::Link(t))
                if !fs::read_link(self.at(FLEX)).is_ok_and(|got| got == Path::new(TARGETS[t])) =>
            {
                must("symlink", FLEX)
            }
            Slot::Absent if self.exists(FLEX) => must("absent", FLEX),
            _ => {}
        }
        // Managed before, not in the config now, still there: pruned.
        let named = c.paths();
        for (kind, id) in self.inventory() {
            if !named.contains(id.as_str()) && self.exists(&id) {
                must(&kind, &id);
            }
        }
        for (i, v) in c.commands.iter().enumerate() {
            let Some(v) = v else { continue };
            let done = &self.recorded[i];
            if done.iter().all(|r| *r != Some(*v)) {
                must("command", COMMANDS[i]);
            } else if done.iter().any(|r| *r != Some(*v)) {
                e.maybe.insert(COMMANDS[i].to_string());
            }
        }
        e
    }

    fn exists(&self, path: &str) -> bool {
        fs::symlink_metadata(self.at(path)).is_ok()
    }

    /// `plan --json` agrees with the model; a kill's uncertainty about a
    /// command is settled by what the plan says.
    fn check_plan(&mut self) -> BTreeSet<(String, String)> {
        let want = self.expected();
        let out = self.tk(&["plan", "--json", "--allow-mass-delete"]);
        if out.status.code() != Some(0) {
            self.fail(&format!("plan failed: {}", text(&out)));
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| self.fail(&format!("plan --json: {e}: {}", text(&out))));
        let host = &doc["hosts"][0];
        if host["status"] == "error" || host["plan"]["blocked"].is_array() {
            self.fail(&format!("the plan is not clean: {host:#}"));
        }
        let mut got: Vec<(String, String)> = host["plan"]["changes"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                (
                    c["kind"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let set: BTreeSet<(String, String)> = got.iter().cloned().collect();
        if set.len() != got.len() {
            self.fail(&format!("the plan lists something twice: {got:?}"));
        }
        let handlers = host["plan"]["handlers"].as_array().map_or(0, |h| h.len());
        let unsure = |k: &(String, String)| k.0 == "command" && want.maybe.contains(&k.1);
        let extra: Vec<_> = set
            .iter()
            .filter(|k| !want.must.contains(*k) && !unsure(k))
            .collect();
        let missing: Vec<_> = want.must.iter().filter(|k| !set.contains(*k)).collect();
        if !extra.is_empty() || !missing.is_empty() || handlers != 0 {
            self.fail(&format!(
                "the plan is not the work that is left:\n  listed but not needed: {extra:?}\n  \
                 needed but not listed: {missing:?}\n  handlers: {handlers}\n--- plan\n{}",
                serde_json::to_string_pretty(&host["plan"]).unwrap()
            ));
        }
        // What the plan says of an uncertain command is what was recorded.
        for name in &want.maybe {
            let i = COMMANDS.iter().position(|c| c == name).unwrap();
            let v = self.config.commands[i];
            let listed = set.contains(&("command".to_string(), name.clone()));
            self.recorded[i].retain(|r| (*r != v) == listed);
        }
        set
    }

    /// Commands the next apply must run and that will fail.
    fn doomed(&self, plan: &BTreeSet<(String, String)>) -> bool {
        (0..COMMANDS.len()).any(|i| {
            plan.contains(&("command".to_string(), COMMANDS[i].to_string()))
                && self
                    .root
                    .path()
                    .join(format!("fail-{}", COMMANDS[i]))
                    .exists()
        })
    }

    fn armed(&self) -> bool {
        COMMANDS
            .iter()
            .any(|c| self.root.path().join(format!("fail-{c}")).exists())
    }

    fn apply(&mut self, plan: &BTreeSet<(String, String)>) {
        let doomed = self.doomed(plan);
        let out = self.tk(&["apply", "--yes", "--allow-mass-delete"]);
        for (i, v) in self.completions() {
            self.recorded[i] = BTreeSet::from([Some(v)]);
        }
        match out.status.code() {
            Some(0) if !doomed => {
                self.forget_dropped_commands(false);
                // Converged: nothing left by the model, nothing by the plan.
                let left = self.expected();
                if !left.must.is_empty() || !left.maybe.is_empty() {
                    self.fail(&format!(
                        "apply succeeded but left {left:?}\n{}",
                        text(&out)
                    ));
                }
                let p = self.tk(&["plan", "--detailed-exitcode", "--allow-mass-delete"]);
                if p.status.code() != Some(0) {
                    self.fail(&format!(
                        "the plan after a good apply is not empty: {}",
                        text(&p)
                    ));
                }
                // The inventory is the config's paths, no more.
                let mut managed: Vec<String> =
                    self.inventory().into_iter().map(|(_, id)| id).collect();
                managed.sort();
                let mut desired: Vec<String> = self
                    .config
                    .paths()
                    .difference(&self.config.absent().into_iter().collect())
                    .map(|s| s.to_string())
                    .collect();
                desired.sort();
                if managed != desired {
                    self.fail(&format!(
                        "after a good apply tidekeeper manages {managed:?}, the config {desired:?}"
                    ));
                }
                // An apply that ran leaves no staging directory, not even
                // one a killed apply left (it lists them before it stages).
                if !plan.is_empty() {
                    let left = leftovers(self.root.path());
                    if !left.is_empty() {
                        self.fail(&format!("staging directories left behind: {left:?}"));
                    }
                }
            }
            Some(1) if doomed => {}
            _ => self.fail(&format!(
                "apply: expected {}, got {}",
                if doomed { "a failure" } else { "success" },
                text(&out)
            )),
        }
    }

    fn kill(&mut self, applying: bool, delay: u64) {
        let mut child = tidekeeper()
            .args(["apply", "--yes", "--allow-mass-delete", "--repo"])
            .arg(self.repo.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        // Planning takes longer than the delay: to land inside the apply
        // script, wait for its progress line ("dev: applying…") first.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("applying") {
                    tx.take().map(|t| t.send(()));
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if applying {
            // A message, or the end of stderr: there was nothing to apply.
            let _ = rx.recv();
        }
        std::thread::sleep(Duration::from_millis(delay));
        let pid = child.id() as i32;
        // SAFETY: kill(2) on our own child, by its PID (not yet reaped).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.wait();
        let said = reader.join().unwrap_or_default();
        let when = if said.contains("Apply complete") || said.contains("FAILED") {
            "after it finished"
        } else if said.contains("applying") {
            "while applying"
        } else {
            "before applying"
        };
        self.note(format!("  (killed {when})"));
        // The script tidekeeper started may outlive it: wait until nothing
        // of its process group is left.
        let start = Instant::now();
        // SAFETY: signal 0 only asks whether the group still exists.
        while unsafe { libc::kill(-pid, 0) } == 0 {
            if start.elapsed() > Duration::from_secs(60) {
                self.fail("the killed apply's scripts are still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A command that completed may or may not have been recorded, and
        // the run may or may not have got as far as forgetting the others.
        for (i, v) in self.completions() {
            self.recorded[i].insert(Some(v));
        }
        self.forget_dropped_commands(true);
        // Whatever the moment, each file is wholly old or wholly new.
        for path in FILES.iter().chain([&FLEX]) {
            let p = self.at(path);
            if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file()) {
                let got = fs::read_to_string(&p).unwrap_or_default();
                if !CONTENTS.contains(&got.as_str()) && got != EDITED {
                    self.fail(&format!("after a kill {path} holds {got:?}"));
                }
            }
        }
    }

    /// An apply that gets to its end forgets the commands the config no
    /// longer has: added again, a command runs again (tidekeeper's choice,
    /// `inventory_after`). After a kill, perhaps.
    fn forget_dropped_commands(&mut self, perhaps: bool) {
        for i in 0..COMMANDS.len() {
            if self.config.commands[i].is_none() {
                if !perhaps {
                    self.recorded[i].clear();
                }
                self.recorded[i].insert(None);
            }
        }
    }

    fn edit(&mut self, file: usize, edit: Edit) {
        let p = self.at(FILES.get(file).copied().unwrap_or(FLEX));
        let Ok(m) = fs::symlink_metadata(&p) else {
            return;
        };
        if !m.file_type().is_file() {
            return;
        }
        match edit {
            Edit::Content => fs::write(&p, EDITED).unwrap(),
            Edit::Mode => fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap(),
            Edit::Delete => fs::remove_file(&p).unwrap(),
        }
    }

    /// A line of the trail (printed as it goes with TK_MODEL_TRACE=1).
    fn note(&mut self, line: String) {
        if std::env::var_os("TK_MODEL_TRACE").is_some() {
            eprintln!("model: {line}");
        }
        self.trail.push(line);
    }

    fn step(&mut self, op: &Op) {
        self.note(format!("{op:?}"));
        match op {
            Op::Commit(c) => self.commit(c.clone()),
            Op::Apply => {
                let plan = self.check_plan();
                self.apply(&plan);
            }
            Op::Arm(i) => {
                fs::write(self.root.path().join(format!("fail-{}", COMMANDS[*i])), "").unwrap()
            }
            Op::Disarm(i) => {
                let _ = fs::remove_file(self.root.path().join(format!("fail-{}", COMMANDS[*i])));
            }
            Op::Edit(f, e) => self.edit(*f, *e),
            Op::Kill { applying, ms } => {
                self.kill(*applying, *ms);
                // Nothing armed: the next apply converges and the plan
                // after it is empty.
                if !self.armed() {
                    self.note("Apply (after the kill)".into());
                    let plan = self.check_plan();
                    self.apply(&plan);
                }
            }
            Op::Plan => {}
        }
        self.check_plan();
    }
}

fn run(first: Config, ops: &[Op]) {
    let mut w = World::new(first);
    w.check_plan();
    for op in ops {
        w.step(op);
    }
}

// ---------------------------------------------------------------- seed corpus
//
// Sequences the property found a defect with, kept as plain tests.

fn nothing() -> Config {
    Config {
        files: [Slot::Unmanaged; 3],
        dirs: [Slot::Unmanaged; 2],
        links: [Slot::Unmanaged; 2],
        flex: Slot::Unmanaged,
        commands: [None; 2],
    }
}

/// A managed directory the config then declares `absent:` was planned
/// twice, once as absent and once as pruned ("2 to destroy" for one path).
#[test]
fn seed_a_managed_path_declared_absent_is_planned_once() {
    let dir = Config {
        dirs: [Slot::Unmanaged, Slot::Present(0)],
        ..nothing()
    };
    let gone = Config {
        dirs: [Slot::Unmanaged, Slot::Absent],
        ..nothing()
    };
    run(
        nothing(),
        &[Op::Commit(dir), Op::Apply, Op::Commit(gone), Op::Apply],
    );
}

/// The same defect for a path that changes kind (outside the property's
/// universe, where each path keeps its kind): a file that becomes a symlink
/// was replaced by the symlink, and then the prune of the file removed the
/// symlink. The apply said it succeeded; the next plan created it again.
#[test]
fn a_managed_file_that_becomes_a_symlink_is_replaced_and_not_pruned() {
    let w = World::new(nothing());
    let role = |s: &str| {
        fs::write(w.repo.path().join("roles/app.yaml"), s).unwrap();
        git(w.repo.path(), &["add", "-A"]);
        git(w.repo.path(), &["commit", "-q", "-m", "role"]);
    };
    role("files:\n  - {path: /srv/app/x, content: \"x\\n\"}\n");
    let out = w.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    role("symlinks:\n  - {path: /srv/app/x, target: elsewhere}\n");
    let out = w.tk(&["plan", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = doc["hosts"][0]["plan"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{}", text(&out));
    assert_eq!(changes[0]["kind"], "symlink", "{}", text(&out));
    let out = w.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        fs::read_link(w.at("/srv/app/x")).ok().as_deref(),
        Some(Path::new("elsewhere")),
        "{}",
        text(&out)
    );
    let out = w.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Not a defect (the model was wrong): a command dropped from the config is
/// forgotten by the next apply that completes, and runs again when it is
/// added back.
#[test]
fn seed_a_command_dropped_from_the_config_runs_again_when_it_is_back() {
    let with = |c1, c2| Config {
        commands: [c1, c2],
        ..nothing()
    };
    run(
        with(None, Some(0)),
        &[
            Op::Kill {
                applying: false,
                ms: 0,
            },
            Op::Commit(with(Some(0), None)),
            Op::Apply,
            Op::Commit(with(None, Some(0))),
            Op::Apply,
        ],
    );
}

/// A symlink tidekeeper manages, that the config then wants to be a file,
/// blocked the plan ("a symlink it did not create") with no change listed:
/// the host could never get there without a hand.
#[test]
fn seed_a_symlink_tidekeeper_manages_can_become_a_file() {
    let flex = |f| Config {
        flex: Slot::Present(f),
        ..nothing()
    };
    run(
        nothing(),
        &[
            Op::Commit(flex(Flex::Link(0))),
            Op::Apply,
            Op::Commit(flex(Flex::File(0, 0))),
            Op::Apply,
        ],
    );
    // Also when the symlink itself replaced a file: file, symlink, file.
    run(
        nothing(),
        &[
            Op::Commit(flex(Flex::File(2, 1))),
            Op::Apply,
            Op::Commit(flex(Flex::Link(1))),
            Op::Apply,
            Op::Commit(flex(Flex::File(2, 2))),
            Op::Apply,
        ],
    );
}

/// `.tidekeeper.*` staging directories anywhere under `dir`.
fn leftovers(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if e.file_name().to_string_lossy().starts_with(".tidekeeper.") {
            out.push(p);
        } else if is_dir {
            out.extend(leftovers(&p));
        }
    }
    out
}
