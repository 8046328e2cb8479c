//! The docs' command lines, run as written (the binary is `tidekeeper` on
//! PATH) against fixture repos whose hosts are this machine in pull mode,
//! confined to a directory; lines that would need a cloud account, a
//! running daemon or a real server are run up to where they would act, or
//! parsed by the CLI with `--help` appended. Shown output is compared with
//! what the binary prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use super::{Repo, block, command_lines, files, normalise, parses, sh, shows, strip_comment};
use crate::support::fleet::{stdout, text};
use crate::support::{TempDir, tidekeeper};

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a daemon answers `GET /healthz` on `listen` within 60 s.
fn answers(listen: &str) -> bool {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(listen) {
            let _ = write!(
                s,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            if got.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `tidekeeper ARGS` in `dir` until it prints `last` (a line) and its
/// daemon answers on `listen`, then stopped with SIGTERM: what it printed.
fn run_until(dir: &Path, args: &[&str], last: &str, listen: &str) -> String {
    let mut child = tidekeeper()
        .args(args)
        .current_dir(dir)
        .env_remove("TIDEKEEPER_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
                if line == last {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("`tidekeeper {args:?}` never printed {last:?}; it printed:\n{said}");
            }
        }
    }
    let up = answers(listen);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap().code();
    assert!(up, "the daemon never answered on {listen}:\n{said}");
    assert_eq!(code, Some(0), "{said}");
    said
}

#[test]
fn readme_quickstart() {
    let quick = block("README.md", "sh", "-- demo");
    let shown = block(
        "README.md",
        "console",
        "$ tidekeeper plan --host demo-local",
    );
    let typo = block("README.md", "sh", "bsae");
    let caught = block("README.md", "text", "unknown role \"bsae\"");
    let lines = command_lines(&quick.body);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // `cargo run --release -- demo`: the binary's demo, with its daemon, on
    // a free port rather than 8420 (the output is read back as 8420).
    let demo = strip_comment(&lines[0]);
    let args = demo
        .strip_prefix("cargo run --release -- ")
        .unwrap_or_else(|| panic!("{demo}"));
    let tmp = TempDir::new("docs-demo");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut argv: Vec<&str> = args.split_whitespace().collect();
    argv.extend(["--listen", &listen]);
    let said = run_until(tmp.path(), &argv, "Ctrl-C stops the daemon.", &listen);
    let said = said.replace(&listen, "127.0.0.1:8420");
    assert!(
        shows(&shown.body, &said),
        "{}: the demo's output is not as shown:\n--- shown\n{}--- printed\n{said}",
        shown.at(),
        shown.body
    );
    // The test suite: not run here (it is what runs this).
    assert_eq!(strip_comment(&lines[1]), "scripts/test");
    assert!(executable(&super::root().join("scripts/test")));
    // Breaking the demo repo, with the binary for `cargo run … --`.
    let cargo = "cargo run --release --manifest-path ../Cargo.toml --";
    assert!(typo.body.contains(cargo), "{}", typo.body);
    let out = sh(tmp.path(), &typo.body.replace(cargo, "tidekeeper"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        normalise(&printed).trim(),
        normalise(&caught.body).trim(),
        "{}: validate prints otherwise",
        caught.at()
    );
}

/// Hosts web-1 (env=prod, tier=web), web-2 (staging, web) and db-1 (prod,
/// db): this machine, each confined to a directory beside the repo.
fn selection_fleet() -> Repo {
    let repo = Repo::new(
        "docs-select",
        &files(&[
            ("tidekeeper.yaml", "fleet: lab\n"),
            (
                "roles/app.yaml",
                "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
            ),
        ]),
    );
    for (name, env, tier) in [
        ("web-1", "prod", "web"),
        ("web-2", "staging", "web"),
        ("db-1", "prod", "db"),
    ] {
        let root = repo.beside(name);
        repo.write(
            &format!("hosts/{name}.yaml"),
            &format!(
                "provider: local\nroot: {}\nlabels: {{env: {env}, tier: {tier}}}\nroles: [app]\n",
                root.display()
            ),
        );
    }
    repo.commit("three hosts");
    repo
}

/// The hosts a plan's text shows (`NAME (local)` headings).
fn planned(out: &std::process::Output) -> Vec<String> {
    let mut hosts: Vec<String> = stdout(out)
        .lines()
        .filter_map(|l| l.strip_suffix(" (local)"))
        .filter(|l| !l.starts_with(' '))
        .map(String::from)
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn host_selection() {
    let b = block("docs/apply.md", "console", "--host web-1 --host db-1");
    let repo = selection_fleet();
    // What each line chooses, and how it ends: apply without --yes, off a
    // terminal, shows its plan and applies nothing.
    let want: &[(&str, &[&str], i32)] = &[
        (
            "tidekeeper plan --host web-1 --host db-1",
            &["db-1", "web-1"],
            0,
        ),
        ("tidekeeper plan --host 'web-*'", &["web-1", "web-2"], 0),
        ("tidekeeper plan -l env=prod,tier=web", &["web-1"], 0),
        ("tidekeeper apply --host 'web-*' -l env=prod", &["web-1"], 1),
    ];
    let lines = command_lines(&b.body);
    assert_eq!(lines.len(), want.len(), "{lines:?}");
    let mut last = String::new();
    for (line, (cmd, hosts, code)) in lines.iter().zip(want) {
        assert_eq!(&strip_comment(line), cmd, "{}", b.at());
        let out = sh(&repo.path, line, &[]);
        assert_eq!(out.status.code(), Some(*code), "{line}\n{}", text(&out));
        assert_eq!(planned(&out), *hosts, "{line}\n{}", text(&out));
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    assert!(last.contains("not applying without confirmation"), "{last}");
    assert!(
        !repo.tmp.path().join("web-1/etc/app.conf").exists(),
        "nothing applied"
    );
}

#[test]
fn saved_plans() {
    let b = block("docs/apply.md", "console", "--out web.plan");
    let stale = block("docs/apply.md", "text", "the saved plan is stale");
    let tmp = TempDir::new("docs-saved");
    let root = tmp.path().join("web-1");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/app.conf"), "x\n").unwrap();
    let role = |motd: &str| {
        format!(
            "files:\n  - {{path: /etc/app.conf, content: \"x\\n\"}}\n  - {{path: /etc/motd, content: \"{motd}\\n\"}}\n"
        )
    };
    let repo = Repo::new(
        "docs-saved-repo",
        &files(&[
            ("tidekeeper.yaml", "fleet: docs\n"),
            (
                "hosts/web-1.yaml",
                &format!("provider: local\nroot: {}\nroles: [app]\n", root.display()),
            ),
            ("roles/app.yaml", &role("hi")),
        ]),
    );
    let lines = command_lines(&b.body);
    let expect = [
        "tidekeeper plan --out web.plan",
        "tidekeeper show web.plan",
        "tidekeeper show web.plan -o markdown",
        "tidekeeper show web.plan -o json",
        "tidekeeper apply web.plan",
    ];
    let cmds: Vec<String> = lines.iter().map(|l| strip_comment(l)).collect();
    assert_eq!(cmds, expect, "{}", b.at());
    let outs: Vec<_> = lines.iter().map(|l| sh(&repo.path, l, &[])).collect();
    for (l, o) in lines.iter().zip(&outs) {
        assert_eq!(o.status.code(), Some(0), "{l}\n{}", text(o));
    }
    // `show FILE` prints the plan as plan printed it (host, changes, totals).
    let plan = stdout(&outs[0]);
    let planned: String = plan
        .lines()
        .take_while(|l| !l.starts_with("Plan: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let totals = plan.lines().find(|l| l.starts_with("Plan: ")).unwrap();
    assert!(
        shows(&format!("{planned}{totals}\n"), &stdout(&outs[1])),
        "{plan}\n---\n{}",
        stdout(&outs[1])
    );
    let md = stdout(&outs[2]);
    assert!(
        md.starts_with("<!-- tidekeeper:docs -->") && md.contains("**Plan: 1 to add"),
        "{md}"
    );
    let file: serde_json::Value = serde_json::from_str(&repo_file(&repo, "web.plan")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&outs[3])).unwrap(),
        file
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hi\n",
        "applied"
    );

    // A saved plan the host moved away from: refused, as shown.
    repo.write("roles/app.yaml", &role("hello"));
    repo.commit("a new motd");
    assert_eq!(sh(&repo.path, &lines[0], &[]).status.code(), Some(0));
    std::fs::write(root.join("etc/app.conf"), "changed by hand\n").unwrap();
    let out = sh(&repo.path, &lines[4], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        shows(&stale.body, &said),
        "{}:\n{}\n--- printed\n{said}",
        stale.at(),
        stale.body
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hi\n",
        "nothing applied"
    );
}

fn repo_file(repo: &Repo, rel: &str) -> String {
    std::fs::read_to_string(repo.path.join(rel)).unwrap()
}

#[test]
fn cloud_import() {
    let b = block("docs/cloud.md", "sh", "tidekeeper import");
    let repo = Repo::new(
        "docs-import",
        &files(&[
            (
                "tidekeeper.yaml",
                "fleet: docs\nproviders:\n  hetzner: {}\n  lightsail: {region: eu-central-1}\n  ec2: {region: eu-central-1}\n",
            ),
            (
                "hosts/metal.yaml",
                "provider: existing\naddress: 192.0.2.10\n",
            ),
        ]),
    );
    let lines = command_lines(&b.body);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        parses(&repo.path, line, "import");
        // Run as written, with no credentials: refused for want of them,
        // and nothing written.
        let out = sh(&repo.path, line, &[]);
        let said = String::from_utf8_lossy(&out.stderr);
        let provider = line.split_whitespace().nth(2).unwrap();
        assert_eq!(out.status.code(), Some(1), "{line}\n{said}");
        assert!(
            said.contains(&format!("{provider}: no ")) && said.contains("credentials"),
            "{line}\n{said}"
        );
        let host = line
            .split("--as ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert!(!repo.path.join(format!("hosts/{host}.yaml")).exists());
    }
    // Without the provider in tidekeeper.yaml, that is what is missing.
    repo.write("tidekeeper.yaml", "fleet: docs\n");
    repo.commit("no providers");
    for line in &lines {
        let out = sh(&repo.path, line, &[]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}\n{said}");
        assert!(
            said.contains("not configured in tidekeeper.yaml"),
            "{line}\n{said}"
        );
    }
}

#[test]
fn daemon_run() {
    let b = block("docs/daemon.md", "sh", "tidekeeper run --repo");
    let tmp = TempDir::new("docs-run");
    let lines = command_lines(&b.body);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for line in &lines {
        parses(tmp.path(), line, "run");
        // Variables set before the command are ones `run` reads.
        for var in line.split_whitespace().take_while(|w| w.contains('=')) {
            let name = var.split('=').next().unwrap();
            let help = stdout(&tidekeeper().args(["run", "--help"]).output().unwrap());
            assert!(
                help.contains(&format!("[env: {name}")),
                "{name} is not read by run:\n{help}"
            );
        }
    }
}

#[test]
fn restore_synopsis() {
    let b = block("docs/maintenance.md", "text", "tidekeeper restore JOB");
    let tmp = TempDir::new("docs-restore");
    let fill = [
        ("JOB", "nightly-backup"),
        ("HOST", "web-1"),
        ("ID|latest", "latest"),
        ("P", "/etc/app"),
        ("DIR", "/tmp/restored"),
        ("NAME", "app_restored"),
    ];
    let lines = command_lines(&b.body);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("tidekeeper restore "), "{line}");
        let words: Vec<String> = line
            .replace(['[', ']'], "")
            .split_whitespace()
            .map(|w| {
                fill.iter()
                    .find(|(k, _)| *k == w)
                    .map_or(w.to_string(), |(_, v)| v.to_string())
            })
            .collect();
        let filled = words.join(" ");
        assert!(
            !filled.chars().any(|c| c.is_ascii_uppercase()),
            "a placeholder left in {filled}"
        );
        parses(tmp.path(), &filled, "restore");
    }
}

/// An age identity in `dir/NAME.key`: (its file, its public key).
fn identity(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, crate::support::fleet::age_identity()).unwrap();
    let out = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&file)
        .output()
        .unwrap();
    (
        file,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// `secrets/NAME.age` of `repo` decrypted by age itself with `key`.
fn decrypted(repo: &Repo, name: &str, key: &Path) -> String {
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(key)
        .arg(repo.path.join(format!("secrets/{name}.age")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn secrets() {
    let write = block("docs/config.md", "sh", "secrets encrypt db-password");
    let rekey = block("docs/config.md", "sh", "secrets rekey");
    let keys = TempDir::new("docs-secrets-keys");
    let (daemon_key, daemon_pub) = identity(keys.path(), "daemon");
    let repo = Repo::new(
        "docs-secrets",
        &files(&[
            ("tidekeeper.yaml", "fleet: docs\n"),
            (
                "hosts/metal.yaml",
                "provider: existing\naddress: 192.0.2.10\n",
            ),
            (
                "secrets/.recipients",
                &format!("# the daemon\n{daemon_pub}\n"),
            ),
        ]),
    );
    let id = std::fs::read_to_string(&daemon_key).unwrap();
    let lines = command_lines(&write.body);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let out = sh(&repo.path, &lines[0], &[("TIDEKEEPER_AGE_IDENTITY", &id)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(decrypted(&repo, "db-password", &daemon_key), "s3cret");
    // The editor sees the secret and writes a new one.
    let editor = keys.path().join("editor");
    let seen = keys.path().join("seen");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\ncp \"$1\" {}\nprintf n3w > \"$1\"\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = [
        ("TIDEKEEPER_AGE_IDENTITY", id.as_str()),
        ("EDITOR", editor.to_str().unwrap()),
    ];
    let out = sh(&repo.path, &lines[1], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "s3cret");
    assert_eq!(decrypted(&repo, "db-password", &daemon_key), "n3w");

    // A second person: their key added to the list, every secret rekeyed.
    let home = repo.beside("home");
    std::fs::create_dir_all(home.join(".config/age")).unwrap();
    let (mine, mine_pub) = identity(&home.join(".config/age"), "key");
    std::fs::rename(&mine, home.join(".config/age/key.txt")).unwrap();
    let mine = home.join(".config/age/key.txt");
    let lines = command_lines(&rekey.body);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let home_env = [
        ("HOME", home.to_str().unwrap()),
        ("TIDEKEEPER_AGE_IDENTITY", id.as_str()),
    ];
    let out = sh(&repo.path, &lines[0], &home_env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(repo_file(&repo, "secrets/.recipients").contains(&mine_pub));
    let out = sh(&repo.path, &lines[1], &home_env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(decrypted(&repo, "db-password", &mine), "n3w");
    assert_eq!(decrypted(&repo, "db-password", &daemon_key), "n3w");
}

/// One HTTP request to a listener of its own: its URL, and the request
/// (head and body) once it came; the answer is 200.
fn capture_one() -> (String, std::thread::JoinHandle<(String, String)>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, end) = loop {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let t = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = t.find("\r\n\r\n") {
                let len: usize = t[..i]
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                break (t[..i].to_string(), (i + 4, i + 4 + len));
            }
        };
        while buf.len() < end.1 {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end.0..end.1]).to_string();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
        (head, body)
    });
    (url, h)
}

#[test]
fn notify_test() {
    let b = block("docs/notify.md", "sh", "notify test phone");
    let repo = Repo::new("docs-notify", &super::configs::doc_repo("docs/notify.md"));
    let lines = command_lines(&b.body);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // As written: the sink's topic is a secret, and no identity opens it.
    let out = sh(&repo.path, &lines[0], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("phone (ntfy): secret ntfy-topic") && said.contains("is not set"),
        "{said}"
    );
    // An unknown sink: 1 too, naming the sinks there are.
    let out = sh(&repo.path, "tidekeeper notify test nosuch --repo .", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(there are: oncall, ops-mail, phone, team)")
    );
    // A sink that accepts: 0, and it got a message.
    let (url, got) = capture_one();
    let out = sh(
        &repo.path,
        "tidekeeper notify test team --repo .",
        &[("SLACK_WEBHOOK_URL", &url)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Sent a test message to team (slack)."),
        "{}",
        text(&out)
    );
    let (head, body) = got.join().unwrap();
    assert!(head.starts_with("POST /hook "), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["text"].as_str().unwrap().contains("test message"), "{v}");
}

#[test]
fn repo_layout() {
    let b = block(
        "docs/config.md",
        "text",
        "tidekeeper.yaml     fleet settings",
    );
    let tmp = TempDir::new("docs-layout");
    let repo = tmp.path().join("fleet");
    let out = tidekeeper().arg("init").arg(&repo).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<String> = b
        .body
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split('/').next().unwrap().to_string())
        .collect();
    // Every entry is one `init` writes (the example has no compose stack)…
    for name in &listed {
        assert!(
            repo.join(name).exists() || name == "stacks",
            "{name} is listed; init writes none"
        );
    }
    // …and `init` writes nothing else but its README.
    for e in std::fs::read_dir(&repo).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            listed.contains(&name) || name == ".git" || name == "README.md",
            "init writes {name}, which the layout does not list"
        );
    }
    assert!(
        b.body.contains(".tidekeeper/schema/")
            && repo.join(".tidekeeper/schema/host.json").exists()
    );
}

/// What a line of docs/testing.md names, checked; None for a line that is
/// not checked (the suite itself, commands on a test host).
fn dev_line(line: &str) -> Option<String> {
    let root = super::root();
    let words: Vec<&str> = line
        .split_whitespace()
        .filter(|w| !w.contains('='))
        .collect();
    let tests_rs = std::fs::read_to_string(root.join("tests/tests.rs")).unwrap();
    let module = |m: &str| {
        tests_rs
            .lines()
            .any(|l| l.trim_start_matches("pub ") == format!("mod {m};"))
    };
    match words.as_slice() {
        [script] if script.starts_with("scripts/") => {
            assert!(executable(&root.join(script)), "{script}");
            Some(format!("{script} exists"))
        }
        ["cargo", "test", filter, ..] if filter.ends_with("::") || filter.contains("::") => {
            let (m, test) = filter.split_once("::").unwrap();
            assert!(module(m), "no module {m} in tests/tests.rs");
            let file = std::fs::read_to_string(root.join(format!("tests/{m}.rs"))).unwrap();
            assert!(
                test.is_empty() || file.contains(&format!("fn {test}")),
                "no test {test} in tests/{m}.rs"
            );
            Some(format!("{filter} names tests"))
        }
        ["cargo", "test", "--test", "tests", "--", m] => {
            assert!(module(m), "no module {m} in tests/tests.rs");
            Some(format!("module {m} exists"))
        }
        ["cargo", "bench", "--bench", name] => {
            let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
            assert!(
                toml.contains(&format!("[[bench]]\nname = \"{name}\"")),
                "no bench {name}"
            );
            assert!(root.join(format!("benches/{name}.rs")).exists());
            Some(format!("bench {name} exists"))
        }
        _ => None,
    }
}

#[test]
fn testing_commands() {
    let root = super::root();
    let support = std::fs::read_to_string(root.join("tests/support/testbed.rs")).unwrap();
    // The suite itself, and commands typed on a kept test host.
    let not_run = |l: &str| {
        ["cargo test", "journalctl -b", "systemctl --failed"].contains(&l)
            || l.starts_with("ssh -i ")
    };
    for needle in [
        "# one module",
        "TESTBED_KEEP=1",
        "PROPTEST_CASES=500",
        "cargo bench",
    ] {
        let b = block("docs/testing.md", "sh", needle);
        let body = b.body.replace("\\\n", " ");
        for line in command_lines(&body) {
            let line = strip_comment(&line);
            if dev_line(&line).is_none() {
                assert!(
                    not_run(&line),
                    "{}: {line:?} is neither checked nor known not to run here",
                    b.at()
                );
            }
            // Variables the suite reads, and where it keeps a kept host's key.
            if line.starts_with("TESTBED_KEEP=") {
                assert!(support.contains("\"TESTBED_KEEP\""));
            }
            if line.starts_with("ssh -i ") {
                assert!(
                    line.contains("/var/tmp/tidekeeper-testbed/run-…/id_ed25519"),
                    "{line}"
                );
                assert!(
                    support.contains("\"/var/tmp/tidekeeper-testbed\"")
                        && support.contains("\"run-")
                );
                assert!(
                    support.contains("join(\"id_ed25519\")")
                        && support.contains("join(\"known_hosts\")")
                );
            }
        }
    }
    assert!(
        executable(&root.join("scripts/setup")),
        "scripts/setup, named beside `cargo test`"
    );
}
