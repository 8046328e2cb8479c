//! Saved plans on real hosts: `plan --out FILE` then `apply FILE` applies
//! exactly that plan, and refuses it, naming what moved, once a host was
//! edited by hand, the config repo moved on, or the file was edited.

use std::fs;

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;
use crate::support::{TempDir, tidekeeper};

const ROLE: &str = "files:\n  - {path: /etc/motd-saved, content: \"one\\n\"}\n  - {path: /etc/app-saved.conf, content: \"port 80\\n\"}\n";

/// The file at `path` on host `i` ("" when there is none).
fn on_host(bed: &Testbed, i: usize, path: &str) -> String {
    stdout(&bed.ssh(i, &format!("cat {path} 2>/dev/null || true")))
}

/// A hand edit on host `i`.
fn edit(bed: &Testbed, i: usize, path: &str, content: &str) {
    let out = bed.ssh(i, &format!("printf '{content}' > {path}"));
    assert!(out.status.success(), "{}", text(&out));
}

fn show(file: &std::path::Path, format: &[&str]) -> std::process::Output {
    tidekeeper()
        .arg("show")
        .arg(file)
        .args(format)
        .output()
        .unwrap()
}

#[test]
fn a_saved_plan_is_applied_exactly_and_refused_once_what_it_saw_moved() {
    let bed = Testbed::start_light(2);
    let repo = FleetRepo::minimal(&bed, &[("app", ROLE)]);
    let dir = TempDir::new("saved-plan");
    let file = dir.path().join("first.plan");
    let file_arg = file.to_str().unwrap();
    let (web, other) = (&bed.hosts[0].name, &bed.hosts[1].name);

    let out = repo.tk(&["plan", "--out", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Saved this plan to"),
        "{}",
        text(&out)
    );
    assert_eq!(
        on_host(&bed, 0, "/etc/motd-saved"),
        "",
        "plan changes nothing"
    );

    // Shown as text, as the pull-request comment, and as JSON.
    let out = show(&file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("/etc/motd-saved"), "{}", text(&out));
    assert!(
        stdout(&out).contains("Saved plan of test at"),
        "{}",
        text(&out)
    );
    let out = show(&file, &["--format", "markdown"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains(web.as_str()), "{}", text(&out));
    assert!(stdout(&out).contains("```"), "markdown: {}", text(&out));
    let out = show(&file, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["format_version"], 1);
    let changes = doc["plan"]["hosts"][0]["changes"].as_array().unwrap();
    let conf = changes
        .iter()
        .find(|c| c["id"] == "/etc/app-saved.conf")
        .expect("the file's change");
    // The new content's digest, never the content.
    assert_eq!(
        conf["content"],
        "2db0a32d1fc841d0bbfa919a9daa2eb1a9c5f9123f2c1a2f194de7957902e99c"
    );
    assert!(doc["plan"]["hosts"][0]["observed"].is_string());

    // Applied exactly, without asking.
    let out = repo.tk(&["apply", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("Apply complete"), "{}", text(&out));
    for i in [0, 1] {
        assert_eq!(on_host(&bed, i, "/etc/motd-saved"), "one\n");
    }

    // A new commit: its plan saved, then a hand edit on one host.
    repo.write("roles/app.yaml", &ROLE.replace("one", "two"));
    repo.commit("motd two");
    let second = dir.path().join("second.plan");
    let second_arg = second.to_str().unwrap();
    let out = repo.tk(&["plan", "--out", second_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    edit(&bed, 0, "/etc/app-saved.conf", "port 8080\\n");
    let out = repo.tk(&["apply", second_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("the saved plan is stale"), "{said}");
    assert!(
        said.contains(&format!(
            "host {web}: file /etc/app-saved.conf: not in the plan, now to update"
        )),
        "{said}"
    );
    assert!(!said.contains(&format!("host {other}:")), "{said}");
    for i in [0, 1] {
        assert_eq!(
            on_host(&bed, i, "/etc/motd-saved"),
            "one\n",
            "nothing was applied"
        );
    }
    assert_eq!(on_host(&bed, 0, "/etc/app-saved.conf"), "port 8080\n");

    // The hand edit undone, the plan holds again; a newer commit does not.
    edit(&bed, 0, "/etc/app-saved.conf", "port 80\\n");
    repo.write("roles/app.yaml", &ROLE.replace("one", "three"));
    repo.commit("motd three");
    let out = repo.tk(&["apply", second_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the commit differs: the plan is of"),
        "{}",
        text(&out)
    );
    assert_eq!(on_host(&bed, 0, "/etc/motd-saved"), "one\n");

    // A saved plan edited by hand is refused before anything is looked at.
    let third = dir.path().join("third.plan");
    let third_arg = third.to_str().unwrap();
    let out = repo.tk(&["plan", "--out", third_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let saved = fs::read_to_string(&third).unwrap();
    let tampered = dir.path().join("tampered.plan");
    fs::write(
        &tampered,
        saved.replace("/etc/motd-saved", "/etc/motd-other"),
    )
    .unwrap();
    let out = repo.tk(&["apply", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("edited or is corrupt"),
        "{}",
        text(&out)
    );
    let out = show(&tampered, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The fresh plan is applied exactly.
    let out = repo.tk(&["apply", third_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for i in [0, 1] {
        assert_eq!(on_host(&bed, i, "/etc/motd-saved"), "three\n");
    }
}

#[test]
fn a_saved_cloud_plan_creates_its_server_and_is_refused_once_the_fleets_servers_moved() {
    use crate::cloud::{BASE, HELLO, WEB};
    use crate::support::cloud::CloudFleet;
    let f = CloudFleet::start(
        &[
            ("roles/base.yaml", BASE),
            ("templates/hello.j2", HELLO),
            ("hosts/web.yaml", WEB),
        ],
        "",
    );
    let dir = TempDir::new("saved-cloud-plan");
    let file = dir.path().join("web.plan");
    let file_arg = file.to_str().unwrap();
    let out = f.tk(&["plan", "--out", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = show(&file, &["--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(doc["plan"]["cloud"]["observed"].is_string(), "{doc}");
    assert_eq!(doc["plan"]["cloud"]["changes"][0]["host"], "web");

    // Applied as saved: the server created and configured.
    let out = f.tk(&["apply", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.ssh("web", "cat /etc/tk-cloud"), "hello web\n");

    // Saved again; then a server of the fleet appears (made by another
    // run, or by hand) before it is applied.
    repo_edit(&f);
    let out = f.tk(&["plan", "--out", file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    f.hetzner.add_owned_off("acme", "old", "cpx11");
    let out = f.tk(&["apply", file_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cloud: the servers or networks changed since the plan"),
        "{}",
        text(&out)
    );
    assert_eq!(
        f.ssh("web", "cat /etc/tk-cloud"),
        "hello web\n",
        "nothing applied"
    );
}

/// A change to the cloud fleet's files, committed.
fn repo_edit(f: &crate::support::cloud::CloudFleet) {
    f.repo.write("templates/hello.j2", "bye {{ host.name }}\n");
    f.repo.commit("bye");
}

#[test]
fn a_saved_plan_keeps_only_the_digest_of_a_secret_files_content() {
    use crate::support::fleet::age_identity;
    const PASSWORD: &str = "saved-plan-secret-4471-long";
    let bed = Testbed::start_light(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[("app", "files:\n  - {path: /etc/db-password, secret: db}\n")],
    );
    let identity = age_identity();
    repo.encrypt_secret(&identity, "db", PASSWORD);
    repo.commit("a secret file");
    let env = [("TIDEKEEPER_AGE_IDENTITY", identity.as_str())];
    let dir = TempDir::new("saved-secret-plan");
    let file = dir.path().join("secret.plan");
    let file_arg = file.to_str().unwrap();
    let out = repo.tk_env(&["plan", "--out", file_arg], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let saved = fs::read_to_string(&file).unwrap();
    assert!(!saved.contains(PASSWORD), "{saved}");
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let change = &doc["plan"]["hosts"][0]["changes"][0];
    assert_eq!(change["id"], "/etc/db-password");
    assert_eq!(
        change["content"],
        tidekeeper::digest::sha256_hex(PASSWORD.as_bytes())
    );

    let out = repo.tk_env(&["apply", file_arg], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    assert_eq!(on_host(&bed, 0, "/etc/db-password"), PASSWORD);
}
