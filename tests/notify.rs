//! Notifications, end to end: the daemon in-process on local hosts, real
//! receivers on 127.0.0.1 (an HTTP server checking each chat service's
//! request format and auth; aiosmtpd with STARTTLS and a login), and
//! credentials from age secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::controller::{Running, Setup, commit, start_with, until};
use crate::support::fleet::{age_identity, text};
use crate::support::receivers::*;
use crate::support::{TempDir, git, tidekeeper};

struct Fleet {
    repo: PathBuf,
    /// Present: the backup job on `a` succeeds.
    backup_ok: PathBuf,
    /// Present: the threshold check on `b` passes.
    thresholds_ok: PathBuf,
}

/// Two local hosts: `a` (labels role=db) with a `nightly-backup` job and
/// `b` with a `thresholds` job (alert: health_threshold). The backup job's
/// output carries the webhook's signing key, which no message may show.
fn fleet(dir: &Path, notify: &str, secrets: &[(&str, &str)]) -> Fleet {
    let repo = dir.join("fleet");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&repo, &a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let identity = age_identity();
    let id_file = dir.join("identity.txt");
    std::fs::write(&id_file, &identity).unwrap();
    let leak = dir.join("leak.txt");
    std::fs::write(&leak, format!("debug: signing key {WEBHOOK_SECRET}\n")).unwrap();
    let backup_ok = dir.join("backup-ok");
    let thresholds_ok = dir.join("thresholds-ok");
    let w = |rel: &str, text: &str| {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "tidekeeper.yaml",
        &format!(
            "fleet: ntf\nsecrets:\n  identity_file: {}\n{notify}",
            id_file.display()
        ),
    );
    w(
        "hosts/a.yaml",
        &format!(
            "provider: local\nroot: {}\nlabels: {{role: db}}\nroles: [app]\n",
            a.display()
        ),
    );
    w(
        "hosts/b.yaml",
        &format!("provider: local\nroot: {}\nroles: [app]\n", b.display()),
    );
    w(
        "roles/app.yaml",
        "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\n",
    );
    w(
        "schedules.yaml",
        &format!(
            "jobs:\n  - name: nightly-backup\n    cron: \"0 0 1 1 *\"\n    hosts: {{names: [a]}}\n    command:\n      run: \"cat {}; test -e {}\"\n  - name: thresholds\n    cron: \"0 0 1 1 *\"\n    hosts: {{names: [b]}}\n    alert: health_threshold\n    command:\n      run: \"test -e {}\"\n",
            leak.display(),
            backup_ok.display(),
            thresholds_ok.display()
        ),
    );
    for (name, value) in secrets {
        crate::support::fleet::encrypt_secret(&repo, &identity, name, value);
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    commit(&repo, "fleet");
    Fleet {
        repo,
        backup_ok,
        thresholds_ok,
    }
}

async fn start(f: &Fleet, state: &Path) -> Running {
    let d = start_with(
        &f.repo,
        state,
        Setup {
            real_time: true,
            ..Default::default()
        },
    )
    .await;
    let c = git(&f.repo, &["rev-parse", "HEAD"]);
    until("the commit applied", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(c.as_str())
    })
    .await;
    d
}

/// Run `job` and wait until its run is recorded.
async fn run_job(d: &Running, job: &str) {
    let before = last_run(d, job);
    d.shared
        .scheduler
        .now(tidekeeper::daemon::scheduler::Request::RunJob(job.into()));
    until(&format!("job {job} run"), Duration::from_secs(60), || {
        last_run(d, job) != before && last_run(d, job).is_some()
    })
    .await;
}

/// How many runs of `job` finished (a run's times are in whole seconds).
fn last_run(d: &Running, job: &str) -> Option<u64> {
    let m = d.shared.metrics.lock().unwrap();
    let n: u64 = m
        .maintenance_runs
        .iter()
        .filter(|((j, _), _)| j == job)
        .map(|(_, n)| *n)
        .sum();
    (n > 0).then_some(n)
}

/// Let the loop finish what it was doing (a request after the job's report
/// is taken only after the job's alerts are queued), then let every message
/// be delivered.
async fn counts_settle(d: &Running) {
    let fetches = d.shared.metrics.lock().unwrap().fetches;
    d.shared.poke();
    until(
        "the loop past the job's report",
        Duration::from_secs(30),
        || d.shared.metrics.lock().unwrap().fetches > fetches,
    )
    .await;
    assert!(
        d.shared.notifier.flushed(Duration::from_secs(30)).await,
        "messages still waiting: {:?}",
        d.shared.notifier.status()
    );
}

fn all_sinks(r: &Receivers, smtp: &Smtp, ca: &Path) -> String {
    format!(
        r#"notify:
  remind_every: 0s
  sinks:
    hook: {{type: webhook, url: {{secret: hook-url}}, secret: {{secret: hook-key}}}}
    team-slack: {{type: slack, url: {{secret: slack-url}}}}
    team-discord: {{type: discord, url: {{secret: discord-url}}}}
    phone: {{type: telegram, server: "{tg}", token: {{secret: tg-token}}, chat_id: 1275129801}}
    push: {{type: ntfy, server: "{ntfy}", topic: {{secret: ntfy-topic}}, token: {{secret: ntfy-token}}}}
    room: {{type: matrix, server: "{matrix}", room: "{MATRIX_ROOM}", token: {{secret: matrix-token}}}}
    mail:
      type: email
      host: 127.0.0.1
      port: {port}
      tls: starttls
      username: alerts
      password: {{secret: smtp-password}}
      from: tidekeeper@example.org
      to: [ops@example.org]
      ca_file: {ca}
  routes:
    - sinks: [hook, team-slack, team-discord, phone, push, room, mail]
      events: [job_failed]
    - sink: hook
      events: [health_threshold]
      labels: {{}}
"#,
        tg = r.url("/telegram"),
        ntfy = r.url("/ntfy"),
        matrix = r.url("/matrix"),
        port = smtp.port,
        ca = ca.display(),
    )
}

fn all_secrets(r: &Receivers) -> Vec<(&'static str, String)> {
    vec![
        ("hook-url", r.url("/hook")),
        ("hook-key", WEBHOOK_SECRET.to_string()),
        ("slack-url", r.url(SLACK_PATH)),
        ("discord-url", r.url(DISCORD_PATH)),
        ("tg-token", TELEGRAM_TOKEN.to_string()),
        ("ntfy-topic", NTFY_TOPIC.to_string()),
        ("ntfy-token", NTFY_TOKEN.to_string()),
        ("matrix-token", MATRIX_TOKEN.to_string()),
        ("smtp-password", "correct-horse-battery".to_string()),
    ]
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

const CHAT: [&str; 6] = ["webhook", "slack", "discord", "telegram", "ntfy", "matrix"];

/// The text a chat service shows for a message.
fn shown(service: &str, m: &serde_json::Value) -> String {
    let key = match service {
        "webhook" => "summary",
        "slack" => "text",
        "discord" => "content",
        "telegram" => "text",
        "ntfy" => "message",
        _ => "body",
    };
    m[key].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_its_sinks_once_and_its_resolution_once_even_across_a_restart() {
    let tmp = TempDir::new("notify-e2e");
    let r = Receivers::start(0).await;
    let (ca, cert, key) = tls_files(tmp.path());
    let smtp = Smtp::start(
        tmp.path(),
        "starttls",
        &cert,
        &key,
        "alerts",
        "correct-horse-battery",
    );
    let secrets = all_secrets(&r);
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), &all_sinks(&r, &smtp, &ca), &secrets);
    let state = tmp.path().join("state");
    let d = start(&f, &state).await;

    // The backup fails: one message on every sink routed job_failed.
    run_job(&d, "nightly-backup").await;
    counts_settle(&d).await;
    for s in CHAT {
        let got = r.of(s);
        assert_eq!(got.len(), 1, "{s}: {got:?}");
        let t = shown(s, &got[0]);
        assert!(t.contains("nightly-backup failed on a"), "{s}: {t}");
    }
    let hook = &r.of("webhook")[0];
    assert_eq!(hook["kind"], "job_failed");
    assert_eq!(hook["status"], "firing");
    assert_eq!(hook["severity"], "warning");
    assert_eq!(hook["host"], "a");
    assert_eq!(hook["fleet"], "ntf");
    assert_eq!(r.of("telegram")[0]["chat_id"], TELEGRAM_CHAT);
    assert_eq!(r.of("ntfy")[0]["priority"], 4);
    assert!(
        r.of("ntfy")[0]["title"]
            .as_str()
            .unwrap()
            .starts_with("[ntf] warning: nightly-backup failed on a")
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].0["tls"], true, "sent over STARTTLS");
    assert_eq!(mails[0].0["login"], true, "logged in");
    assert_eq!(mails[0].0["to"], serde_json::json!(["ops@example.org"]));
    assert!(
        mails[0]
            .1
            .contains("Subject: [ntf] warning: nightly-backup failed on a"),
        "{}",
        mails[0].1
    );
    // The job's output went into the message, its secret did not.
    let everything = format!("{:?}{:?}", r.got.lock().unwrap().messages, mails);
    assert!(
        everything.contains("debug: signing key"),
        "the log tail is in the message"
    );
    assert!(
        !everything.contains(WEBHOOK_SECRET),
        "a secret reached a message"
    );
    assert!(!everything.contains(NTFY_TOKEN) && !everything.contains(MATRIX_TOKEN));

    // It fails again: nothing new (remind_every is 0s: never repeated).
    run_job(&d, "nightly-backup").await;
    // The threshold check fails: only the route naming health_threshold.
    run_job(&d, "thresholds").await;
    counts_settle(&d).await;
    assert_eq!(r.of("webhook").len(), 2);
    let t = &r.of("webhook")[1];
    assert_eq!(t["kind"], "health_threshold");
    assert_eq!(t["severity"], "critical");
    assert_eq!(t["host"], "b");
    for s in &CHAT[1..] {
        assert_eq!(
            r.of(s).len(),
            1,
            "{s} got a repeat or a message not routed to it"
        );
    }

    // A restart remembers what was already said.
    d.stop().await;
    let d = start(&f, &state).await;
    until("the notifier configured", Duration::from_secs(30), || {
        !d.shared.notifier.status().sinks.is_empty()
    })
    .await;
    run_job(&d, "nightly-backup").await;
    counts_settle(&d).await;
    assert_eq!(r.of("webhook").len(), 2, "{:?}", r.of("webhook"));
    assert_eq!(smtp.mails().len(), 1);

    // Fixed: one resolved message each.
    std::fs::write(&f.backup_ok, "").unwrap();
    std::fs::write(&f.thresholds_ok, "").unwrap();
    run_job(&d, "nightly-backup").await;
    run_job(&d, "thresholds").await;
    counts_settle(&d).await;
    for s in &CHAT[1..] {
        let got = r.of(s);
        assert_eq!(got.len(), 2, "{s}: {got:?}");
        assert!(
            shown(s, &got[1]).contains("resolved"),
            "{s}: {}",
            shown(s, &got[1])
        );
    }
    let hook = r.of("webhook");
    assert_eq!(hook.len(), 4, "{hook:?}");
    let resolved: Vec<_> = hook.iter().filter(|m| m["status"] == "resolved").collect();
    assert_eq!(resolved.len(), 2);
    assert_eq!(
        resolved.iter().find(|m| m["kind"] == "job_failed").unwrap()["id"],
        format!("{}-resolved", hook[0]["id"].as_str().unwrap())
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].1.contains("Subject: [ntf] resolved:"),
        "{}",
        mails[1].1
    );
    assert!(
        r.got.lock().unwrap().refused.is_empty(),
        "{:?}",
        r.got.lock().unwrap().refused
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_or_slow_holds_up_nothing_else_and_gets_its_messages_when_it_recovers()
{
    let tmp = TempDir::new("notify-down");
    let r = Receivers::start(0).await;
    // Telegram's server is not listening at all yet: connection refused.
    let tg_port = crate::support::daemon::free_port();
    let notify = format!(
        r#"notify:
  sinks:
    hook: {{type: webhook, url: {{secret: hook-url}}, secret: {{secret: hook-key}}}}
    down: {{type: slack, url: {{secret: slack-url}}}}
    slow: {{type: discord, url: {{secret: discord-url}}}}
    refused: {{type: telegram, server: "http://127.0.0.1:{tg_port}/telegram", token: {{secret: tg-token}}, chat_id: "{TELEGRAM_CHAT}"}}
  routes:
    - sinks: [hook, down, slow, refused]
"#
    );
    let secrets = [
        ("hook-url", r.url("/hook")),
        ("hook-key", WEBHOOK_SECRET.to_string()),
        ("slack-url", r.url(SLACK_PATH)),
        ("discord-url", r.url(DISCORD_PATH)),
        ("tg-token", TELEGRAM_TOKEN.to_string()),
    ];
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), &notify, &secrets);
    r.set_fail("slack", Some(500));
    r.set_slow("discord", true);
    let state = tmp.path().join("state");
    let d = start(&f, &state).await;

    run_job(&d, "nightly-backup").await;
    until("the webhook message", Duration::from_secs(30), || {
        r.of("webhook").len() == 1
    })
    .await;
    // The daemon goes on: a new commit is applied while one sink hangs.
    std::fs::write(
        f.repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"v2\\n\"}\n",
    )
    .unwrap();
    let c2 = commit(&f.repo, "v2");
    d.shared.poke();
    // Not behind the hanging sink: when v2 is applied, its first attempt
    // (cut off after 15 s) has not ended yet.
    let mut slow_then = None;
    until(
        "v2 applied while a sink hangs",
        Duration::from_secs(30),
        || {
            let applied = d.applied().as_deref() == Some(c2.as_str());
            if applied {
                slow_then = Some(d.shared.notifier.status().sinks["slow"].stats.clone());
            }
            applied
        },
    )
    .await;
    let slow_then = slow_then.unwrap();
    assert_eq!(
        (slow_then.sent, slow_then.failed_attempts),
        (0, 0),
        "v2 was applied only after the slow sink's attempt ended: {slow_then:?}"
    );
    until("the failures recorded", Duration::from_secs(30), || {
        let s = d.shared.notifier.status();
        s.sinks["down"].stats.failed_attempts >= 1 && s.sinks["refused"].stats.failed_attempts >= 1
    })
    .await;
    // Kept, and shown in /status and /metrics.
    let status = get(d.addr, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let n = &v["notifications"]["sinks"];
    assert_eq!(n["down"]["waiting"], 1, "{n}");
    assert!(
        n["down"]["last_error"].as_str().unwrap().contains("500"),
        "{n}"
    );
    assert_eq!(n["refused"]["waiting"], 1, "{n}");
    assert_eq!(n["hook"]["waiting"], 0, "{n}");
    assert_eq!(n["hook"]["sent"], 1, "{n}");
    assert!(
        !status.contains(TELEGRAM_TOKEN),
        "an error named the token (it is in the URL)"
    );
    let resp = reqwest::get(format!("http://{}/metrics", d.addr))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = resp.text().await.unwrap();
    assert!(
        metrics.contains("tidekeeper_notifications_waiting{sink=\"down\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE tidekeeper_notification_failures_total counter"));

    // Stopped while the sinks are down: nothing is lost.
    d.stop().await;
    r.set_fail("slack", None);
    r.set_slow("discord", false);
    let _tg = Receivers::start(tg_port).await;
    let d = start(&f, &state).await;
    until("every sink caught up", Duration::from_secs(60), || {
        r.of("slack").len() == 1 && r.of("discord").len() == 1 && _tg.of("telegram").len() == 1
    })
    .await;
    counts_settle(&d).await;
    assert_eq!(
        r.of("webhook").len(),
        1,
        "delivered once, not again after the restart"
    );
    assert_eq!(r.of("slack").len(), 1);
    assert_eq!(r.of("discord").len(), 1);
    let s = d.shared.notifier.status();
    assert!(s.sinks.values().all(|s| s.waiting == 0), "{s:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_one_message_and_says_what_is_missing() {
    let tmp = TempDir::new("notify-cli");
    let r = Receivers::start(0).await;
    let (ca, cert, key) = tls_files(tmp.path());
    // Implicit TLS this time (port 465 style).
    let smtp = Smtp::start(
        tmp.path(),
        "tls",
        &cert,
        &key,
        "alerts",
        "correct-horse-battery",
    );
    let notify = format!(
        r#"notify:
  sinks:
    push: {{type: ntfy, server: "{}", topic: {{env: TK_TEST_NTFY_TOPIC}}, token: {{env: TK_TEST_NTFY_TOKEN}}}}
    mail: {{type: email, host: 127.0.0.1, port: {}, tls: tls, username: alerts, password: {{env: TK_TEST_SMTP_PASSWORD}}, from: tk@example.org, to: [ops@example.org], ca_file: {}}}
"#,
        r.url("/ntfy"),
        smtp.port,
        ca.display()
    );
    let f = fleet(tmp.path(), &notify, &[]);
    let run = move |args: Vec<&'static str>, env: Vec<(&'static str, &'static str)>| {
        let repo = f.repo.clone();
        tokio::task::spawn_blocking(move || {
            tidekeeper()
                .args(&args)
                .arg("--repo")
                .arg(&repo)
                .env_remove("TK_TEST_NTFY_TOKEN")
                .envs(env)
                .output()
                .unwrap()
        })
    };
    let ok_env = vec![
        ("TK_TEST_NTFY_TOPIC", NTFY_TOPIC),
        ("TK_TEST_NTFY_TOKEN", NTFY_TOKEN),
        ("TK_TEST_SMTP_PASSWORD", "correct-horse-battery"),
    ];
    let out = run(vec!["notify", "test", "push"], ok_env.clone())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Sent a test message to push (ntfy)"));
    let got = r.of("ntfy");
    assert_eq!(got.len(), 1);
    assert!(
        got[0]["message"]
            .as_str()
            .unwrap()
            .contains("test message from tidekeeper"),
        "{got:?}"
    );

    let out = run(vec!["notify", "test", "mail"], ok_env.clone())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].0["tls"], true);

    // A missing credential is named; nothing is sent.
    let out = run(
        vec!["notify", "test", "push"],
        vec![("TK_TEST_NTFY_TOPIC", NTFY_TOPIC)],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("environment variable TK_TEST_NTFY_TOKEN is not set"),
        "{}",
        text(&out)
    );
    // A wrong token: the service's refusal, without the token.
    let out = run(
        vec!["notify", "test", "push"],
        vec![
            ("TK_TEST_NTFY_TOPIC", NTFY_TOPIC),
            ("TK_TEST_NTFY_TOKEN", "tk_wrong_wrong_wrong_wrong"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        text(&out)
    );
    // A wrong mail password.
    let out = run(
        vec!["notify", "test", "mail"],
        vec![("TK_TEST_SMTP_PASSWORD", "wrong-password-here")],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("wrong-password-here"),
        "{}",
        text(&out)
    );
    assert_eq!(smtp.mails().len(), 1);
    let out = run(vec!["notify", "test", "pager"], ok_env).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there are: mail, push"),
        "{}",
        text(&out)
    );
    assert_eq!(r.of("ntfy").len(), 1);
}

#[test]
fn credentials_in_plain_text_and_unknown_names_are_refused_with_file_and_line() {
    use crate::support::minimal;
    let yaml = r#"fleet: test
notify:
  sinks:
    chat:
      type: slak
      url: https://hooks.slack.com/services/T0/B0/SECRETSECRET
    ok: {type: slack, url: {env: SLACK_URL}}
    hook: {type: webhook, url: https://example.org/hook-token-1234}
    pager: {type: ntfy, topic: {env: T}, room: "!x:y"}
  routes:
    - sink: okk
      events: [job_faild]
      hosts: [webb]
"#;
    let errors = minimal().file("tidekeeper.yaml", yaml).errors();
    let text: String = errors.iter().map(|d| format!("{d}\n")).collect();
    let has = |needle: &str| assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    has("tidekeeper.yaml:5:");
    has("unknown type \"slak\"");
    has("did you mean \"slack\"");
    has("tidekeeper.yaml:8:");
    has("`url` is written in the repo in plain text");
    has("a ntfy sink has no `room`");
    has("route names sink \"okk\"");
    has("did you mean \"ok\"");
    has("unknown event \"job_faild\"");
    has("did you mean \"job_failed\"");
    has("route names host \"webb\"");
    assert!(
        !text.contains("hook-token-1234"),
        "the error repeated a credential:\n{text}"
    );
}

/// (kind, status, host) of every webhook message.
fn seen(r: &Receivers) -> Vec<(String, String, String)> {
    r.of("webhook")
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap_or("").to_string(),
                m["status"].as_str().unwrap_or("").to_string(),
                m["host"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn wait_seen(r: &Receivers, kind: &str, status: &str, host: &str) {
    until(
        &format!("{kind} {status} {host}"),
        Duration::from_secs(30),
        || seen(r).contains(&(kind.into(), status.into(), host.into())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_failed_applies_drift_and_a_lost_repo_are_announced_and_resolved() {
    let tmp = TempDir::new("notify-events");
    let r = Receivers::start(0).await;
    let notify = r#"notify:
  fetch_stale_after: 0s
  sinks:
    hook: {type: webhook, url: {secret: hook-url}, secret: {secret: hook-key}}
  routes:
    - sink: hook
    - sink: hook
      events: [job_succeeded, drift_corrected]
"#;
    let secrets = [
        ("hook-url", r.url("/hook")),
        ("hook-key", WEBHOOK_SECRET.to_string()),
    ];
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), notify, &secrets);
    let d = start(&f, &tmp.path().join("state")).await;
    let role = f.repo.join("roles/app.yaml");
    let push = |text: &str, msg: &str| {
        std::fs::write(&role, text).unwrap();
        commit(&f.repo, msg);
        d.shared.poke();
    };

    // An invalid commit.
    push(
        "files:\n  - {path: etc/app.conf, content: x}\n",
        "relative path",
    );
    wait_seen(&r, "invalid_commit", "firing", "").await;
    // A valid one whose apply fails on both hosts: quarantined.
    push(
        "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\ncommands:\n  - {name: migrate, run: \"exit 3\"}\n",
        "a failing migration",
    );
    wait_seen(&r, "invalid_commit", "resolved", "").await;
    wait_seen(&r, "apply_failed", "firing", "a").await;
    wait_seen(&r, "apply_failed", "firing", "b").await;
    wait_seen(&r, "quarantined", "firing", "").await;
    // Fixed.
    push(
        "files:\n  - {path: /etc/app.conf, content: \"v2\\n\"}\n",
        "fixed",
    );
    wait_seen(&r, "apply_failed", "resolved", "a").await;
    wait_seen(&r, "apply_failed", "resolved", "b").await;
    wait_seen(&r, "quarantined", "resolved", "").await;

    // Someone edits a file by hand: drift, reported.
    let conf = tmp.path().join("a/etc/app.conf");
    std::fs::write(&conf, "by hand\n").unwrap();
    d.shared
        .scheduler
        .now(tidekeeper::daemon::scheduler::Request::Drift);
    wait_seen(&r, "drift", "firing", "a").await;
    // The config now corrects drift: the commit puts the file back.
    let yaml = f.repo.join("tidekeeper.yaml");
    let t = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{t}drift: correct\n")).unwrap();
    commit(&f.repo, "correct drift");
    d.shared.poke();
    wait_seen(&r, "drift", "resolved", "a").await;
    // Drift again: corrected on the next check, and said so.
    std::fs::write(&conf, "by hand again\n").unwrap();
    d.shared
        .scheduler
        .now(tidekeeper::daemon::scheduler::Request::Drift);
    wait_seen(&r, "drift_corrected", "info", "a").await;
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "v2\n");

    // Good news only where a route names it.
    std::fs::write(&f.backup_ok, "").unwrap();
    run_job(&d, "nightly-backup").await;
    wait_seen(&r, "job_succeeded", "info", "a").await;

    // The config repo is gone: fetch_stale (0s here), until it is back.
    let away = tmp.path().join("fleet-away");
    std::fs::rename(&f.repo, &away).unwrap();
    d.shared.poke();
    wait_seen(&r, "fetch_stale", "firing", "").await;
    std::fs::rename(&away, &f.repo).unwrap();
    d.shared.poke();
    wait_seen(&r, "fetch_stale", "resolved", "").await;
    counts_settle(&d).await;

    let all = seen(&r);
    let mut once = all.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), all.len(), "a message came twice: {all:#?}");
    assert!(
        !all.iter()
            .any(|(k, _, _)| k == "job_failed" || k == "host_unreachable"),
        "{all:#?}"
    );
    assert!(r.got.lock().unwrap().refused.is_empty());
    d.stop().await;
}

fn hook_only(r: &Receivers, extra: &str) -> (String, Vec<(&'static str, String)>) {
    (
        format!(
            "notify:\n{extra}  sinks:\n    hook: {{type: webhook, url: {{secret: hook-url}}, secret: {{secret: hook-key}}}}\n  routes:\n    - sink: hook\n"
        ),
        vec![
            ("hook-url", r.url("/hook")),
            ("hook-key", WEBHOOK_SECRET.to_string()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_commit_and_a_denied_pull_request_are_announced_until_allowed_or_closed() {
    let tmp = TempDir::new("notify-policy");
    let r = Receivers::start(0).await;
    let (notify, secrets) = hook_only(&r, "");
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), &notify, &secrets);
    std::fs::create_dir_all(f.repo.join("policies")).unwrap();
    std::fs::write(
        f.repo.join("policies/files.rego"),
        "package acme.files\n\nimport rego.v1\n\ndeny contains msg if {\n\tsome r in input.resources\n\tr.type == \"file\"\n\tcontains(r.after.path, \"forbidden\")\n\tmsg := sprintf(\"%s is forbidden\", [r.address])\n}\n",
    )
    .unwrap();
    commit(&f.repo, "a policy");
    let d = start_with(
        &f.repo,
        &tmp.path().join("state"),
        Setup {
            real_time: true,
            proposals: &["refs/pull/*/head"],
            ..Default::default()
        },
    )
    .await;
    let role = f.repo.join("roles/app.yaml");
    let allowed = std::fs::read_to_string(&role).unwrap();
    let forbidden = format!("{allowed}  - {{path: /etc/forbidden.conf, content: x}}\n");

    // A pull request the policies deny.
    git(&f.repo, &["checkout", "-q", "-b", "pr-1"]);
    std::fs::write(&role, &forbidden).unwrap();
    let pr = commit(&f.repo, "pr 1");
    git(&f.repo, &["update-ref", "refs/pull/1/head", &pr]);
    git(&f.repo, &["checkout", "-q", "main"]);
    d.shared.poke();
    wait_seen(&r, "policy_denied", "firing", "").await;
    let m = r.of("webhook").last().unwrap().clone();
    assert_eq!(m["subject"], "proposal refs/pull/1/head", "{m}");
    assert!(
        m["details"]
            .to_string()
            .contains("/etc/forbidden.conf is forbidden"),
        "{m}"
    );
    // Closed: resolved.
    git(&f.repo, &["update-ref", "-d", "refs/pull/1/head"]);
    d.shared.poke();
    wait_seen(&r, "policy_denied", "resolved", "").await;

    // The same change merged straight to main: denied, not applied.
    std::fs::write(&role, &forbidden).unwrap();
    commit(&f.repo, "forbidden on main");
    d.shared.poke();
    until("the second denial", Duration::from_secs(30), || {
        seen(&r)
            .iter()
            .filter(|s| s.0 == "policy_denied" && s.1 == "firing")
            .count()
            == 2
    })
    .await;
    assert!(!tmp.path().join("a/etc/forbidden.conf").exists());
    std::fs::write(&role, &allowed).unwrap();
    commit(&f.repo, "revert");
    d.shared.poke();
    until("the second resolution", Duration::from_secs(30), || {
        seen(&r)
            .iter()
            .filter(|s| s.0 == "policy_denied" && s.1 == "resolved")
            .count()
            == 2
    })
    .await;
    counts_settle(&d).await;
    assert_eq!(seen(&r).len(), 4, "{:#?}", seen(&r));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_unreachable_for_longer_than_the_limit_is_announced() {
    let tmp = TempDir::new("notify-unreachable");
    let r = Receivers::start(0).await;
    let (notify, secrets) = hook_only(&r, "  unreachable_after: 1s\n");
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), &notify, &secrets);
    // Nothing listens on this port: every connection is refused.
    let port = crate::support::daemon::free_port();
    std::fs::write(
        f.repo.join("hosts/gone.yaml"),
        format!("provider: existing\naddress: 127.0.0.1\nssh: {{port: {port}}}\nroles: [app]\n"),
    )
    .unwrap();
    commit(&f.repo, "a host that is off");
    let d = start_with(
        &f.repo,
        &tmp.path().join("state"),
        Setup {
            real_time: true,
            ..Default::default()
        },
    )
    .await;
    until("gone unreachable", Duration::from_secs(30), || {
        d.shared
            .status
            .lock()
            .unwrap()
            .hosts
            .get("gone")
            .is_some_and(|h| h.state.word() == "unreachable")
    })
    .await;
    until("the alert", Duration::from_secs(30), || {
        d.shared.poke();
        seen(&r).contains(&("host_unreachable".into(), "firing".into(), "gone".into()))
    })
    .await;
    assert_eq!(seen(&r).len(), 1, "{:?}", seen(&r));
    // Not at once: only once it had lasted unreachable_after.
    let m = &r.of("webhook")[0];
    let t = |k: &str| chrono::DateTime::parse_from_rfc3339(m[k].as_str().unwrap()).unwrap();
    assert!(t("at") - t("since") >= chrono::Duration::seconds(1), "{m}");
    // Taken out of the fleet: resolved.
    std::fs::remove_file(f.repo.join("hosts/gone.yaml")).unwrap();
    commit(&f.repo, "retired");
    d.shared.poke();
    wait_seen(&r, "host_unreachable", "resolved", "gone").await;
    d.stop().await;
}

/// Issue 33: a drift check of a quarantined commit found the host "synced"
/// and sent the apply_failed alert as resolved, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_stays_firing_through_drift_checks_until_a_commit_applies() {
    let tmp = TempDir::new("notify-failed-apply");
    let r = Receivers::start(0).await;
    let notify = "notify:\n  sinks:\n    hook: {type: webhook, url: {secret: hook-url}, secret: {secret: hook-key}}\n  routes:\n    - sinks: [hook]\n      events: [apply_failed]\n";
    let secrets = [
        ("hook-url", r.url("/hook")),
        ("hook-key", WEBHOOK_SECRET.to_string()),
    ];
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = fleet(tmp.path(), notify, &secrets);
    let state = tmp.path().join("state");
    let d = start(&f, &state).await;

    std::fs::write(
        f.repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\ncommands:\n  - {name: will-fail, run: \"echo boom >&2; exit 3\"}\n",
    )
    .unwrap();
    let bad = commit(&f.repo, "a failing command");
    d.shared.poke();
    until("the commit quarantined", Duration::from_secs(30), || {
        d.quarantined().as_deref() == Some(bad.as_str())
    })
    .await;
    until("apply_failed firing", Duration::from_secs(30), || {
        r.of("webhook").iter().any(|m| m["status"] == "firing")
    })
    .await;
    // Drift checks plan the quarantined commit again: the host is not synced
    // (the command is still to run), and nothing is resolved.
    for _ in 0..2 {
        let before = d.reconciles("a");
        d.shared
            .scheduler
            .now(tidekeeper::daemon::scheduler::Request::Drift);
        until("a drift check", Duration::from_secs(30), || {
            d.reconciles("a") > before
        })
        .await;
    }
    counts_settle(&d).await;
    let sent = r.of("webhook");
    assert!(
        sent.iter().all(|m| m["status"] == "firing"),
        "resolved while still quarantined: {sent:#?}"
    );
    let host = d.shared.status.lock().unwrap().hosts["a"].clone();
    assert_eq!(host.state.word(), "drifted", "{host:?}");
    assert!(
        host.drift.iter().any(|c| c.contains("will-fail")),
        "{host:?}"
    );

    // A commit that applies: resolved, once per host.
    std::fs::write(
        f.repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"v2\\n\"}\n",
    )
    .unwrap();
    let good = commit(&f.repo, "no failing command");
    d.shared.poke();
    until("the fix applied", Duration::from_secs(30), || {
        d.applied().as_deref() == Some(good.as_str())
    })
    .await;
    counts_settle(&d).await;
    let resolved = r
        .of("webhook")
        .into_iter()
        .filter(|m| m["status"] == "resolved")
        .count();
    assert_eq!(resolved, 2, "{:#?}", r.of("webhook"));
    d.stop().await;
}

/// Issue 33: a state file that cannot be read is set aside, named in a
/// warning and in /status, never dropped without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_state_files_are_set_aside_and_named_in_status() {
    let tmp = TempDir::new("notify-state-files");
    let f = fleet(tmp.path(), "", &[]);
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    for name in ["proposals.json", "history.json", "notify.json"] {
        std::fs::write(state.join(name), b"{\"truncated\": ").unwrap();
    }
    let d = start(&f, &state).await;
    let status: serde_json::Value = serde_json::from_str(&get(d.addr, "/status").await).unwrap();
    let named: Vec<String> = status["unreadable_state"]
        .as_array()
        .unwrap_or_else(|| panic!("no unreadable_state in {status}"))
        .iter()
        .map(|u| u["kept_as"].as_str().unwrap().to_string())
        .collect();
    for name in ["proposals.json", "history.json", "notify.json"] {
        let kept = state.join(format!("{name}.unreadable"));
        assert!(
            named.contains(&kept.display().to_string()),
            "{name} not named: {named:?}"
        );
        assert_eq!(std::fs::read(&kept).unwrap(), b"{\"truncated\": ");
    }
    d.stop().await;
}
