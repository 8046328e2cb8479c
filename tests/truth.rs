//! Issue 33: what tidekeeper records and reports is what happened. A failed
//! step is never recorded as done; jobs on a confined host stay in its root;
//! secrets keep their recipients; an unused secret never stops a plan.

use std::fs;
use std::path::Path;

use crate::support::fleet::{age_identity, stdout, text};
use crate::support::{TempDir, git, tidekeeper};

/// A config repo with one `provider: local` host `dev` confined to `root`.
fn repo(root: &Path, files: &[(&str, &str)]) -> TempDir {
    let tmp = TempDir::new("truth");
    let p = tmp.path();
    let w = |rel: &str, text: &str| {
        let f = p.join(rel);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, text).unwrap();
    };
    w("tidekeeper.yaml", "fleet: truth\n");
    w(
        "hosts/dev.yaml",
        &format!("provider: local\nroot: {}\nroles: [app]\n", root.display()),
    );
    for (rel, text) in files {
        w(rel, text);
    }
    git(p, &["init", "-q", "-b", "main"]);
    commit(p, "fleet");
    tmp
}

fn commit(p: &Path, msg: &str) {
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "--allow-empty", "-m", msg]);
}

fn tk(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tidekeeper()
        .args(args)
        .arg("--repo")
        .arg(repo)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

const COMMANDS: &str = r#"commands:
  - name: first
    run: echo ran >> "$TK_ROOT/first.log"
  - name: will-fail
    run: test -e "$TK_ROOT/fixed" || { echo boom >&2; exit 3; }
"#;

#[test]
fn a_failed_command_is_not_recorded_as_run_and_the_next_plan_says_why() {
    let root = TempDir::new("truth-root");
    let repo = repo(root.path(), &[("roles/app.yaml", COMMANDS)]);
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("boom"), "{}", text(&out));
    // The totals count what the host did before it stopped, not nothing.
    assert!(
        stdout(&out).contains("done before it stopped: 1 run"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("done in all: 0 added, 0 changed, 0 destroyed, 1 run."),
        "{}",
        text(&out)
    );

    // The landed main said "No changes" here: the failed command was
    // recorded as run. The command that did run is not run again.
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plan = stdout(&out);
    assert!(plan.contains("command will-fail"), "{plan}");
    assert!(!plan.contains("command first"), "ran once already: {plan}");
    assert!(
        plan.contains("first run; failed at ") && plan.contains(": exit 3"),
        "the plan says why it runs again: {plan}"
    );

    // It keeps failing, and keeps being planned.
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Once it succeeds it is recorded, and the plan is empty.
    fs::write(root.path().join("fixed"), "").unwrap();
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("No changes"), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(root.path().join("first.log")).unwrap(),
        "ran\n",
        "the command that succeeded ran once"
    );
}

#[test]
fn a_job_on_a_confined_host_runs_inside_its_root_and_a_backup_there_is_refused() {
    let root = TempDir::new("truth-job-root");
    let jobs = "jobs:\n  - name: tidy\n    cron: \"0 3 * * *\"\n    hosts: {names: [dev]}\n    command:\n      run: mkdir -p srv/www && touch \"$TK_ROOT/srv/www/tidy\" && pwd > where\n";
    let repo = repo(
        root.path(),
        &[
            (
                "roles/app.yaml",
                "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
            ),
            ("schedules.yaml", jobs),
        ],
    );
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = tk(repo.path(), &["schedule", "run", "tidy"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.path().join("srv/www/tidy").exists(), "{}", text(&out));
    let cwd = fs::read_to_string(root.path().join("where")).unwrap();
    assert_eq!(
        fs::canonicalize(cwd.trim()).unwrap(),
        fs::canonicalize(root.path()).unwrap(),
        "the job started in the root"
    );

    // A backup would read the machine's own files: refused, with its place.
    fs::write(
        repo.path().join("schedules.yaml"),
        "jobs:\n  - name: nightly\n    cron: \"0 3 * * *\"\n    hosts: {names: [dev]}\n    backup:\n      repository: /srv/restic\n      password_secret: restic\n      paths: [/etc]\n",
    )
    .unwrap();
    let out = tk(repo.path(), &["validate", "--worktree"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("schedules.yaml:2:"), "{all}");
    assert!(all.contains("job-on-confined-host"), "{all}");
    assert!(all.contains("confined under"), "{all}");
}

fn public_key(identity: &str) -> String {
    identity
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .trim()
        .to_string()
}

/// Decrypt with the `age` command, as another person's tool would.
fn age_decrypts(identity: &str, file: &Path) -> Option<String> {
    let dir = TempDir::new("age-id");
    let key = dir.path().join("key.txt");
    fs::write(&key, identity).unwrap();
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(file)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

fn secrets(repo: &Path, args: &[&str], identity: &str, editor: &str) -> std::process::Output {
    tidekeeper()
        .arg("secrets")
        .args(args)
        .arg("--repo")
        .arg(repo)
        .env("TIDEKEEPER_AGE_IDENTITY", identity)
        .env("EDITOR", editor)
        .output()
        .unwrap()
}

#[test]
fn secrets_keep_their_recipients_through_edit_and_rekey() {
    let (alice, daemon, carol) = (age_identity(), age_identity(), age_identity());
    let tmp = TempDir::new("secrets-recipients");
    let repo = tmp.path();
    let file = repo.join("secrets/db.age");
    // Encrypted to two people; the daemon is one of them.
    crate::support::fleet::encrypt_secret_to(
        repo,
        "db",
        "password-one-long-enough",
        &[&public_key(&alice), &public_key(&daemon)],
        None,
    );
    assert!(age_decrypts(&daemon, &file).is_some());

    // Alice edits with nothing naming the daemon: refused, the file untouched.
    let before = fs::read(&file).unwrap();
    let out = secrets(repo, &["edit", "db"], &alice, "sed -i s/one/two/");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is encrypted to 2 recipients; this edit would encrypt it to 1"),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read(&file).unwrap(), before);

    // With both in secrets/.recipients, the edit keeps both.
    fs::write(
        repo.join("secrets/.recipients"),
        format!(
            "# the team\n{}  # alice\n{}\n",
            public_key(&alice),
            public_key(&daemon)
        ),
    )
    .unwrap();
    let out = secrets(repo, &["edit", "db"], &alice, "sed -i s/one/two/");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        age_decrypts(&daemon, &file).as_deref(),
        Some("password-two-long-enough")
    );
    assert_eq!(age_decrypts(&carol, &file), None);

    // Carol joins: rekey encrypts every secret to the list again.
    let list = fs::read_to_string(repo.join("secrets/.recipients")).unwrap();
    fs::write(
        repo.join("secrets/.recipients"),
        format!("{list}{}\n", public_key(&carol)),
    )
    .unwrap();
    let out = secrets(repo, &["rekey"], &alice, "true");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Rekeyed 1 secret to 3 recipients"),
        "{}",
        text(&out)
    );
    for who in [&alice, &daemon, &carol] {
        assert_eq!(
            age_decrypts(who, &file).as_deref(),
            Some("password-two-long-enough")
        );
    }

    // A bad line in the list is named with its line number.
    fs::write(repo.join("secrets/.recipients"), "age1notakey\n").unwrap();
    let out = secrets(repo, &["rekey"], &alice, "true");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("secrets/.recipients:1: \"age1notakey\" is not an age public key"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_secret_no_host_uses_is_never_an_error_and_a_used_one_is_named_where_it_is_used() {
    let (daemon, someone_else) = (age_identity(), age_identity());
    let root = TempDir::new("truth-secret-root");
    let repo = repo(
        root.path(),
        &[(
            "roles/app.yaml",
            "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
        )],
    );
    // Like the template's secrets/restic.age: encrypted to another key, unused.
    crate::support::fleet::encrypt_secret(
        repo.path(),
        &someone_else,
        "restic",
        "restic-password-long",
    );
    crate::support::fleet::encrypt_secret(repo.path(), &daemon, "db", "db-password-long-enough");
    commit(repo.path(), "secrets");
    let env = [("TIDEKEEPER_AGE_IDENTITY", daemon.as_str())];
    let out = tk(repo.path(), &["plan"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("secret-decrypt"), "{}", text(&out));

    // Used by a file: an error at the reference, naming the secret.
    fs::write(
        repo.path().join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n  - {path: /etc/restic.pw, secret: restic}\n",
    )
    .unwrap();
    commit(repo.path(), "use it");
    let out = tk(repo.path(), &["plan"], &env);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("roles/app.yaml:3:"), "{all}");
    assert!(all.contains("secret-decrypt"), "{all}");
    assert!(
        all.contains("secrets/restic.age cannot be decrypted"),
        "{all}"
    );
}

/// Found by the model-based test: a host whose only planned work is blocked
/// (a symlink planted where a file is wanted) reported "No changes", and
/// apply exited 0 with the configuration unmet.
#[test]
fn a_blocked_host_is_never_reported_as_matching_the_configuration() {
    let root = TempDir::new("truth-blocked-root");
    let repo = repo(
        root.path(),
        &[(
            "roles/app.yaml",
            "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
        )],
    );
    fs::create_dir_all(root.path().join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.path().join("etc/app.conf")).unwrap();
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let plan = stdout(&out);
    assert!(!plan.contains("No changes"), "{plan}");
    assert!(
        plan.contains("Nothing can be applied: 1 host is blocked"),
        "{plan}"
    );
    let out = tk(repo.path(), &["plan", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hosts"][0]["status"], "blocked", "{v}");
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        fs::symlink_metadata(root.path().join("etc/app.conf"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "nothing written through the planted link"
    );
}

/// Issue 39: `-q` means only errors on stderr — the progress lines too.
#[test]
fn quiet_plan_and_apply_print_no_progress() {
    let root = TempDir::new("truth-quiet-root");
    let repo = repo(
        root.path(),
        &[(
            "roles/app.yaml",
            "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
        )],
    );
    for cmd in [&["-q", "plan"][..], &["-q", "apply", "--yes"][..]] {
        let out = tk(repo.path(), cmd, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stderr.is_empty(), "{cmd:?}: {}", text(&out));
    }
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tk(repo.path(), &["plan"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dev: planning"),
        "{}",
        text(&out)
    );
}

/// Found by the model-based test: an apply killed after its files were
/// renamed into place, before their staging directory was removed, left
/// `<dir>/.tidekeeper.XXXXXX` behind until an apply wrote into that very
/// directory. Now every staging directory is listed in the state directory
/// first, and the next apply — whatever it writes — removes what is listed.
#[test]
fn a_staging_directory_left_by_a_killed_apply_is_removed_by_the_next_apply() {
    let root = TempDir::new("truth-staging-root");
    let repo = repo(
        root.path(),
        &[(
            "roles/app.yaml",
            "files:\n  - {path: /etc/app/a.conf, content: \"a\\n\"}\n  - {path: /srv/b.conf, content: \"b\\n\"}\n",
        )],
    );
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = root.path().join("var/lib/tidekeeper");
    assert!(
        !state.join("staging").exists(),
        "a finished apply lists none"
    );
    // What a kill at that point leaves: the directory, and the list naming it.
    let left = root.path().join("etc/app/.tidekeeper.Xk3p9Q");
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("a.conf"), "a\n").unwrap();
    fs::write(state.join("staging"), format!("{}\n", left.display())).unwrap();
    // The next apply writes elsewhere only (/srv), and still cleans up.
    fs::write(
        repo.path().join("roles/app.yaml"),
        "files:\n  - {path: /etc/app/a.conf, content: \"a\\n\"}\n  - {path: /srv/b.conf, content: \"b2\\n\"}\n",
    )
    .unwrap();
    commit(repo.path(), "b2");
    let out = tk(repo.path(), &["apply", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!left.exists(), "the leftover is gone");
    assert!(!state.join("staging").exists());
    assert_eq!(
        fs::read_to_string(root.path().join("etc/app/a.conf")).unwrap(),
        "a\n"
    );
}
