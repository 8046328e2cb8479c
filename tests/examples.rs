//! The reference fleets in `examples/`, end to end: each validates, is
//! reconciled on the test fleet (clouds through the emulators), and then
//! plans "No changes.". The plan output and PR comment in each example's
//! README are the ones these tests produce (`TIDEKEEPER_BLESS=1` rewrites
//! them; otherwise a README that no longer matches fails the test).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cloud::CloudFleet;
use crate::support::example::{Overlay, ReadmeCommands, dir, files, users_change};
use crate::support::fleet::{stdout, text};
use crate::support::testbed::Kind;
use crate::support::{TempDir, git, tidekeeper};

pub const EXAMPLES: [&str; 5] = [
    "agent-server",
    "platform-and-workspaces",
    "bare-metal",
    "bastion",
    "task-pool",
];

/// Replace `from` with `to` in the file `path` of `files` (adapting an
/// example to the test fleet, as its README tells users to adapt it).
pub fn patch(files: &mut [(String, String)], path: &str, from: &str, to: &str) {
    let f = files
        .iter_mut()
        .find(|f| f.0 == path)
        .unwrap_or_else(|| panic!("no {path} in the example"));
    assert!(f.1.contains(from), "{path} has no {from:?}");
    f.1 = f.1.replace(from, to);
}

/// Output as the README shows it: the test fleet's addresses, commits and
/// keys replaced by stable stand-ins.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut addrs: Vec<String> = Vec::new();
    let mut rest = text;
    // Addresses of the test network, numbered in order of appearance.
    while let Some(i) = rest.find("10.213.") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tail.len());
        let addr = tail[..end].trim_end_matches('.').to_string();
        let n = match addrs.iter().position(|a| *a == addr) {
            Some(n) => n,
            None => {
                addrs.push(addr.clone());
                addrs.len() - 1
            }
        };
        out.push_str(&format!("203.0.113.{}", 10 + n));
        rest = &tail[addr.len()..];
    }
    out.push_str(rest);
    // Commits: 40 or 12 hex digits standing alone.
    let mut s = String::new();
    for word in split_keep(&out) {
        let w = word.trim_matches('`');
        if (w.len() == 40 || w.len() == 12)
            && w.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            && w.chars().any(|c| c.is_ascii_digit())
        {
            s.push_str(&word.replace(w, &"c0ffee0123456789abcdef0123456789abcdef01"[..w.len()]));
        } else if w.starts_with("AAAAC3NzaC1lZDI1NTE5") && w.len() > 40 {
            s.push_str(&word.replace(w, "AAAAC3NzaC1lZDI1NTE5AAAA…"));
        } else {
            s.push_str(&word);
        }
    }
    s
}

/// Split into words and the separators between them, keeping both.
fn split_keep(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        let sep = c.is_whitespace() || c == '"' || c == '(' || c == ')' || c == ',';
        if sep {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(c.to_string());
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The README of `example` must show `content` in its generated `section`
/// (between `<!-- generated: SECTION -->` and `<!-- end: SECTION -->`).
/// With TIDEKEEPER_BLESS=1 the README is rewritten instead.
pub fn readme_shows(example: &str, section: &str, lang: &str, content: &str) {
    let path = dir(example).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let begin = format!("<!-- generated: {section} -->\n");
    let end = format!("<!-- end: {section} -->");
    let (Some(a), Some(b)) = (readme.find(&begin), readme.find(&end)) else {
        panic!("{} has no generated section {section}", path.display());
    };
    let body = normalize(content);
    // A fence longer than any inside (the PR comment has its own).
    let fence = if body.contains("```") { "````" } else { "```" };
    let block = format!("{fence}{lang}\n{}\n{fence}\n", body.trim_end());
    let now = &readme[a + begin.len()..b];
    if now == block {
        return;
    }
    if std::env::var_os("TIDEKEEPER_BLESS").is_some() {
        let updated = format!("{}{block}{}", &readme[..a + begin.len()], &readme[b..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "{} section {section} is out of date; run `TIDEKEEPER_BLESS=1 cargo test examples::` to regenerate it.\n--- README has\n{now}\n--- the test produced\n{block}",
        path.display()
    );
}

#[test]
fn every_example_validates_and_its_policy_tests_pass() {
    for name in EXAMPLES {
        let tmp = TempDir::new("example");
        let repo = tmp.path().join(name);
        copy_dir(&dir(name), &repo);
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "example"]);
        let out = tidekeeper()
            .args(["validate", "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let out = tidekeeper()
            .args(["policy", "test", "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert!(
            std::fs::read_to_string(dir(name).join("README.md"))
                .unwrap()
                .contains("<!-- generated: plan -->"),
            "{name}'s README shows a generated plan"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// Commit what `change` does on a branch `pr`, plan it as the PR comment
/// (the README's command), and go back to main.
fn pr_comment_shown(
    f: &CloudFleet,
    readme: &mut ReadmeCommands,
    change: impl FnOnce(&Path),
) -> String {
    git(&f.repo.path, &["checkout", "-q", "-b", "pr"]);
    change(&f.repo.path);
    f.repo.commit("pull request");
    let comment = readme.run_ok(
        "tidekeeper plan --markdown --ref pr",
        &f.repo.path,
        &readme_env(f, &[]),
        &[],
    );
    git(&f.repo.path, &["checkout", "-q", "main"]);
    comment
}

/// Commit `change` on a branch `pr`, plan it as the PR comment, and go back to main.
fn pr_comment(f: &CloudFleet, change: impl FnOnce(&CloudFleet)) -> String {
    git(&f.repo.path, &["checkout", "-q", "-b", "pr"]);
    change(f);
    f.repo.commit("pull request");
    let out = f.tk(&["plan", "--markdown", "--ref", "pr"]);
    git(&f.repo.path, &["checkout", "-q", "main"]);
    stdout(&out)
}

fn merge_pr(f: &CloudFleet) {
    git(&f.repo.path, &["merge", "-q", "--ff-only", "pr"]);
    git(&f.repo.path, &["branch", "-q", "-d", "pr"]);
}

/// Where tidekeeper runs in the tests: the test network.
const TEST_NETWORK: &str = "10.213.0.0/16";

/// A cloud example as its test runs it: as written plus its overlay, on
/// servers of `kind` behind the emulators, with `plain` ordinary test hosts
/// beside them. `more` gives the test's values for the rest of the overlay
/// (and may run the README's commands that produce them).
fn cloud_example(
    name: &str,
    kind: Kind,
    plain: usize,
    more: impl FnOnce(&crate::support::cloud::Cloud, &mut ReadmeCommands),
) -> (CloudFleet, Overlay, ReadmeCommands) {
    let overlay = Overlay::load(name);
    let mut readme = ReadmeCommands::load(&overlay);
    let f = CloudFleet::with_files_from(kind, plain, |cloud, hetzner, lightsail, ec2| {
        readme.var("test_network", TEST_NETWORK);
        readme.var("hetzner_api", hetzner);
        readme.var("lightsail_api", lightsail);
        readme.var("ec2_api", ec2);
        readme.var("ec2_subnet", crate::support::cloud::ec2::SUBNET);
        more(cloud, &mut readme);
        overlay.apply(&readme.values())
    });
    (f, overlay, readme)
}

/// The environment README commands run with: the emulators' credentials,
/// the test's SSH key (where a user's agent or key would be), and `more`.
fn readme_env<'a>(f: &'a CloudFleet, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = crate::support::cloud::CREDENTIALS.to_vec();
    env.push(("TIDEKEEPER_SSH_KEY", f.repo.key.to_str().unwrap()));
    env.extend_from_slice(more);
    env
}

/// The agent-server example on the emulators, as written plus its overlay
/// (also the dashboard tests' fleet).
pub fn agent_server_fleet() -> (CloudFleet, ReadmeCommands) {
    let (f, overlay, readme) = cloud_example("agent-server", Kind::Full, 0, |_, _| {});
    overlay.assert_only_difference(&f.repo.path, &readme.values());
    (f, readme)
}

#[test]
fn agent_server_three_candidates_priced_configured_and_upsized_by_pr() {
    let (f, mut readme) = agent_server_fleet();
    let env = readme_env(&f, &[]);
    let repo = f.repo.path.clone();
    readme.run_ok("tidekeeper validate", &repo, &env, &[]);
    readme.run_ok("tidekeeper policy test", &repo, &env, &[]);
    let plan = readme.run_ok(
        "tidekeeper plan",
        &repo,
        &env,
        &[
            "+ outpost-hz server (Hetzner, create)  +13.60 EUR/month",
            "+ outpost server (Lightsail, create)  +24.00 USD/month",
            "+ outpost-ec2 server (EC2, create)  +83.25 USD/month",
            "image: debian-12-amd64-20261201-1 (ami-0abcdef1234567890, 136693071363/debian-12-amd64-*)",
            "Monthly cost: 0.00 → 13.60 EUR (+13.60); 0.00 → 107.25 USD (+107.25)",
            "+ outpost service outpost-dispatcher",
        ],
    );
    readme_shows("agent-server", "plan", "text", &plan);

    readme.run_ok("tidekeeper apply --yes", &repo, &env, &[]);
    let ec2 = f
        .ec2
        .instance_for("outpost-ec2")
        .expect("the EC2 candidate");
    assert_eq!(
        (ec2.instance_type.as_str(), ec2.image.as_str()),
        ("t3.large", crate::support::cloud::ec2::AMI),
        "the newest Debian 12 amd64 AMI"
    );
    for h in ["outpost", "outpost-hz", "outpost-ec2"] {
        let health = f.ssh(h, "curl -fsS http://127.0.0.1:8700/health");
        assert!(health.contains("\"status\": \"ok\""), "{h}: {health}");
        let queued = f.ssh(
            h,
            "curl -fsS -X POST -d '{\"prompt\": \"hello\"}' http://127.0.0.1:8700/tasks && ls /srv/outpost/runs | wc -l",
        );
        assert!(queued.trim_end().ends_with('1'), "{h}: {queued}");
        assert!(
            f.ssh(h, "ufw status").contains("8700"),
            "{h}: the host firewall too"
        );
    }
    readme.run_ok(
        "tidekeeper plan --detailed-exitcode",
        &repo,
        &env,
        &["No changes."],
    );

    // The pull request: Lightsail medium → large, which Lightsail can only do as a copy.
    let comment = pr_comment_shown(&f, &mut readme, |repo| {
        users_change(
            repo,
            "hosts/outpost.yaml",
            "bundle: medium_3_0",
            "bundle: large_3_0",
            "the pull request to the larger size",
        );
        users_change(
            repo,
            "hosts/outpost.yaml",
            "roles:",
            "allow_destroy: true      # a resize deletes the old instance once its copy runs\nroles:",
            "the same pull request allows the old instance's deletion",
        );
    });
    assert!(
        crate::support::diff_line(
            &comment,
            "!",
            "outpost server (Lightsail, resize)  24.00 → 44.00 USD/month (+20.00)"
        ),
        "{comment}"
    );
    assert!(
        comment.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "planned against the instance it copies: {comment}"
    );
    for want in [
        "Monthly cost: 13.60 → 13.60 EUR (+0.00); 107.25 → 127.25 USD (+20.00)",
        "Policies: all passed.",
    ] {
        assert!(comment.contains(want), "missing {want:?}:\n{comment}");
    }
    readme_shows("agent-server", "pr-comment", "markdown", &comment);
    merge_pr(&f);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        f.lightsail.instance("outpost").is_none(),
        "the old instance is gone"
    );
    assert_eq!(
        f.lightsail.instance("outpost-large_3_0").unwrap().bundle,
        "large_3_0"
    );
    assert!(
        f.ssh("outpost", "curl -fsS http://127.0.0.1:8700/health")
            .contains("ok")
    );
    assert_eq!(
        f.ssh("outpost", "ls /srv/outpost/runs | wc -l").trim(),
        "1",
        "the queued run was copied with the disk"
    );
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    readme.all_ran();
}

/// A test host standing in for a Storage Box: `dir` made, and the login key
/// the test made authorized; the key's file. The box is host `i` of the bed.
fn storage_box(bed: &crate::support::testbed::Testbed, i: usize, dir: &str, tmp: &Path) -> PathBuf {
    let key = tmp.join("storagebox");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "storagebox", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(kg.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    bed.ssh_ok(
        i,
        &format!(
            "mkdir -p /root/.ssh {dir} && echo '{}' >> /root/.ssh/authorized_keys",
            public.trim()
        ),
    );
    key
}

/// The README's commands that give the example its own secrets, and the
/// commit of what they wrote.
fn encrypt_secrets(
    readme: &mut ReadmeCommands,
    repo: &crate::support::fleet::FleetRepo,
    env: &[(&str, &str)],
    restic: &str,
) {
    let out = readme.run("tidekeeper secrets encrypt restic", &repo.path, env, restic);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = readme.run(
        "tidekeeper secrets encrypt storagebox-key < ~/.ssh/storagebox",
        &repo.path,
        env,
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    repo.commit("our own restic password and Storage Box key");
}

#[test]
fn platform_and_workspaces_hardened_gvisor_backed_up_and_scaled_by_pr() {
    let tmp = TempDir::new("storagebox");
    let (f, overlay, mut readme) = cloud_example(
        "platform-and-workspaces",
        Kind::Docker,
        1,
        |cloud, readme| {
            let bed = cloud.bed.lock().unwrap();
            let key = storage_box(&bed, 0, "/podex", tmp.path());
            readme.var("storage_box", &bed.host(0).address.to_string());
            readme.var("storage_box_key_file", key.to_str().unwrap());
            let scan = readme.run_ok(
                "ssh-keyscan -t ed25519 -p 23 u100000.your-storagebox.de",
                tmp.path(),
                &[],
                &["ssh-ed25519"],
            );
            readme.var("storage_box_known_host", scan.trim());
        },
    );
    let identity = crate::support::fleet::age_identity();
    let env = readme_env(&f, &[("TIDEKEEPER_AGE_IDENTITY", identity.as_str())]);
    encrypt_secrets(&mut readme, &f.repo, &env, "correct horse battery staple");
    overlay.assert_only_difference(&f.repo.path, &readme.values());
    let repo = f.repo.path.clone();
    readme.run_ok("tidekeeper validate", &repo, &env, &[]);
    readme.run_ok("tidekeeper policy test", &repo, &env, &[]);

    let plan = readme.run_ok(
        "tidekeeper plan",
        &repo,
        &env,
        &[
            "+ platform server (Hetzner, create)  +12.49 EUR/month",
            "+ workspace-2 server (Hetzner, create)  +24.49 EUR/month",
            "Monthly cost: 0.00 → 61.47 EUR (+61.47)",
        ],
    );
    readme_shows("platform-and-workspaces", "plan", "text", &plan);
    readme.run_ok("tidekeeper apply --yes", &repo, &env, &[]);
    for h in ["platform", "workspace-1", "workspace-2"] {
        let sshd = f.ssh(h, "sshd -T");
        assert!(sshd.contains("passwordauthentication no"), "{h}");
        // Only the jump host opens tunnels.
        let forwarding = if h == "platform" { "local" } else { "no" };
        assert!(
            sshd.contains(&format!("allowtcpforwarding {forwarding}")),
            "{h}"
        );
        assert!(sshd.contains("kexalgorithms curve25519-sha256"), "{h}");
        assert_eq!(
            f.ssh(h, "systemctl is-active fail2ban unattended-upgrades docker")
                .lines()
                .filter(|l| *l == "active")
                .count(),
            3,
            "{h}"
        );
        let conf: serde_json::Value =
            serde_json::from_str(&f.ssh(h, "cat /etc/docker/daemon.json")).unwrap();
        assert_eq!(conf["icc"], false);
        assert_eq!(conf["no-new-privileges"], true);
        assert_eq!(conf["log-opts"]["max-size"], "10m");
        assert!(
            conf["runtimes"]["runsc"].get("runtimeArgs").is_none(),
            "runsc as the example configures it: {conf}"
        );
    }
    assert_eq!(
        f.ssh("workspace-1", "docker info --format '{{.DefaultRuntime}}'")
            .trim(),
        "runsc"
    );
    assert_eq!(
        f.ssh("platform", "docker info --format '{{.DefaultRuntime}}'")
            .trim(),
        "runc"
    );
    let ufw = f.ssh("workspace-2", "ufw status");
    assert!(
        ufw.contains("22/tcp") && ufw.contains("10.0.0.2") && !ufw.contains("2376"),
        "SSH from the platform only; no Docker API port where nothing listens: {ufw}"
    );
    // A user container on a workspace server runs under gVisor.
    f.ssh(
        "workspace-1",
        "mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ 2>/dev/null || (apt-get install -y -qq busybox-static >/dev/null && cp /bin/busybox /tmp/bb/bin/); \
         ln -sf busybox /tmp/bb/bin/dmesg && tar -C /tmp/bb -c . | docker import - local/busybox:1 >/dev/null",
    );
    let dmesg = f.ssh("workspace-1", "docker run --rm local/busybox:1 dmesg");
    assert!(
        dmesg.contains("gVisor") || dmesg.contains("Ready!"),
        "{dmesg}"
    );
    readme.run_ok("tidekeeper plan --detailed-exitcode", &repo, &env, &[]);

    // The nightly backup, run now, to the box over sftp with the example's login.
    readme.run_ok(
        "tidekeeper schedule run nightly-backup --ignore-window",
        &repo,
        &env,
        &[],
    );
    let bed = f.cloud.bed.lock().unwrap();
    for h in ["platform", "workspace-1", "workspace-2"] {
        let snaps = bed.ssh_ok(0, &format!("ls /podex/{h}/snapshots | wc -l"));
        assert_eq!(snaps.trim(), "1", "{h}'s snapshot on the box");
    }
    drop(bed);
    readme.run_ok(
        "tidekeeper schedule list",
        &repo,
        &env,
        &["nightly-backup", "weekly-upgrade"],
    );

    // A third workspace server, by pull request.
    let comment = pr_comment_shown(&f, &mut readme, |repo| {
        users_change(
            repo,
            "hosts/workspace.yaml",
            "count: 2",
            "count: 3",
            "the pull request adding a workspace server",
        );
    });
    assert!(
        crate::support::diff_line(
            &comment,
            "+",
            "workspace-3 server (Hetzner, create)  +24.49 EUR/month"
        ),
        "{comment}"
    );
    for want in [
        "Monthly cost: 61.47 → 85.96 EUR (+24.49)",
        "Policies: all passed.",
    ] {
        assert!(comment.contains(want), "missing {want:?}:\n{comment}");
    }
    readme_shows(
        "platform-and-workspaces",
        "pr-comment",
        "markdown",
        &comment,
    );
    merge_pr(&f);
    let out = f.repo.tk_env(&["apply", "--yes"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        f.ssh("workspace-3", "docker info --format '{{.DefaultRuntime}}'")
            .trim(),
        "runsc"
    );

    // Drained, then removed with permission.
    users_change(
        &repo,
        "hosts/workspace.yaml",
        "count: 3",
        "count: 2",
        "workspace-3 is drained and goes",
    );
    users_change(
        &repo,
        "hosts/workspace.yaml",
        "roles:",
        "allow_destroy: true\nroles:",
        "its deletion allowed in the same commit",
    );
    f.repo.commit("workspace-3 is drained");
    let out = f.repo.tk_env(&["apply", "--yes"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(f.hetzner.server("workspace-3").is_none());
    assert_eq!(f.hetzner.servers().len(), 3);
    let out = f.repo.tk_env(&["plan", "--detailed-exitcode"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    readme.all_ran();
}

#[test]
fn bare_metal_configured_its_maintenance_run_and_its_health_reported_on_the_status_branch() {
    use crate::support::daemon::Daemon;
    use crate::support::fleet::FleetRepo;
    use crate::support::testbed::Testbed;
    // Host 0 stands in for the server, host 1 for the Storage Box.
    let bed = Testbed::start(2);
    let tmp = TempDir::new("storagebox");
    let box_key = storage_box(&bed, 1, "/aegis", tmp.path());
    // The example's Telegram and Discord sinks, at receivers here.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chat = rt.block_on(crate::support::receivers::Receivers::start(0));
    let overlay = Overlay::load("bare-metal");
    let mut readme = ReadmeCommands::load(&overlay);
    readme.var("test_network", TEST_NETWORK);
    readme.var("host_address", &bed.host(0).address.to_string());
    readme.var("storage_box", &bed.host(1).address.to_string());
    readme.var("storage_box_key_file", box_key.to_str().unwrap());
    readme.var("telegram_api", &chat.url("/telegram"));
    for (line, var) in [
        ("ssh-keyscan -t ed25519 157.180.63.15", "host_known_host"),
        (
            "ssh-keyscan -t ed25519 -p 23 u200000.your-storagebox.de",
            "storage_box_known_host",
        ),
    ] {
        let scan = readme.run_ok(line, tmp.path(), &[], &["ssh-ed25519"]);
        readme.var(var, scan.trim());
    }
    assert_eq!(
        readme
            .values()
            .iter()
            .find(|v| v.0 == "host_known_host")
            .unwrap()
            .1,
        bed.host(0).known_hosts_line(),
        "ssh-keyscan printed the test host's key"
    );
    let files = overlay.apply(&readme.values());
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = FleetRepo::with_files(bed.key.clone(), &refs);
    let identity = crate::support::fleet::age_identity();
    let discord = chat.url(crate::support::receivers::DISCORD_PATH);
    let key = repo.key.to_str().unwrap().to_string();
    let env = [
        ("TIDEKEEPER_AGE_IDENTITY", identity.as_str()),
        ("TIDEKEEPER_SSH_KEY", key.as_str()),
        (
            "AEGIS_TELEGRAM_BOT_TOKEN",
            crate::support::receivers::TELEGRAM_TOKEN,
        ),
        ("AEGIS_DISCORD_WEBHOOK_URL", discord.as_str()),
    ];
    encrypt_secrets(&mut readme, &repo, &env, "aegis backup password");
    overlay.assert_only_difference(&repo.path, &readme.values());
    let dir = repo.path.clone();
    readme.run_ok("tidekeeper validate", &dir, &env, &[]);
    for sink in ["phone", "alerts-channel"] {
        readme.run_ok(
            &format!("tidekeeper notify test {sink}"),
            &dir,
            &env,
            &[format!("Sent a test message to {sink}").as_str()],
        );
    }
    assert_eq!(chat.of("telegram").len(), 1, "{:?}", chat.of("telegram"));
    assert_eq!(chat.of("discord").len(), 1, "{:?}", chat.of("discord"));

    let plan = readme.run_ok(
        "tidekeeper plan",
        &dir,
        &env,
        &["+ aegis file /usr/local/bin/aegis-health"],
    );
    readme_shows("bare-metal", "plan", "text", &plan);
    readme.run_ok("tidekeeper apply --yes", &dir, &env, &[]);
    readme.run_ok("tidekeeper plan --detailed-exitcode", &dir, &env, &[]);
    // SSH from tidekeeper's address and the tailnet; nothing about Tailscale running.
    let ufw = bed.ssh_ok(0, "ufw status");
    assert!(
        ufw.contains("10.213.0.0/16") && ufw.contains("100.64.0.0/10"),
        "{ufw}"
    );

    // A PR that tightens the disk threshold.
    git(&dir, &["checkout", "-q", "-b", "pr"]);
    users_change(
        &dir,
        "hosts/aegis.yaml",
        "disk_alert: \"85\"",
        "disk_alert: \"80\"",
        "the pull request alerting on disk use above 80 %",
    );
    repo.commit("alert on disk above 80%");
    let comment = readme.run_ok("tidekeeper plan --markdown --ref pr", &dir, &env, &[]);
    assert!(
        crate::support::diff_line(&comment, "-", "DISK_ALERT=85")
            && crate::support::diff_line(&comment, "+", "DISK_ALERT=80"),
        "{comment}"
    );
    readme_shows("bare-metal", "pr-comment", "markdown", &comment);
    git(&dir, &["checkout", "-q", "main"]);

    // The test machine runs many hosts on two cores and one disk they all
    // share: its load and disk are no measure of this host's health, so
    // those thresholds are lifted for what follows.
    users_change(
        &dir,
        "hosts/aegis.yaml",
        "cpu_alert: \"90\"",
        "cpu_alert: \"100000\"",
        "the test machine's load is shared",
    );
    users_change(
        &dir,
        "hosts/aegis.yaml",
        "disk_alert: \"85\"",
        "disk_alert: \"100\"",
        "the test machine's disk is shared",
    );
    repo.commit("the test machine is busy");
    let out = repo.tk_env(&["apply", "--yes"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    for job in ["daily-backup", "weekly-verified-backup", "monthly-kernel"] {
        readme.run_ok(
            &format!("tidekeeper schedule run {job} --ignore-window"),
            &dir,
            &env,
            &[],
        );
    }
    // Two backups on one day to the box: `keep daily 7` keeps the day's last.
    let snaps = bed.ssh_ok(1, "ls /aegis/snapshots | wc -l");
    assert_eq!(snaps.trim(), "1", "retention applied on the box");
    readme.run_ok(
        "tidekeeper schedule list",
        &dir,
        &env,
        &["health-thresholds", "monthly-kernel"],
    );
    readme.all_ran();

    // The daemon runs the health check on its cron and reports it on the status branch.
    users_change(
        &dir,
        "schedules.yaml",
        "cron: \"*/5 * * * *\"",
        "cron: \"*/2 * * * * *\"",
        "the check every 2 seconds, so the test need not wait 5 minutes",
    );
    repo.commit("check every 2 seconds for the test");
    // A Wednesday afternoon, whatever today is: none of the example's other
    // jobs is due (the next is 01:00), and the daily backup's 01:00 run is
    // beyond its 12 h catch-up, so only the health check runs.
    let mut daemon_env = env.to_vec();
    daemon_env.push(("TIDEKEEPER_NOW", "2026-06-17T14:00:00Z"));
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &daemon_env,
    );
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, Duration::from_secs(60));
    d.wait_for(
        "the health report on the status branch",
        Duration::from_secs(60),
        |_| {
            std::process::Command::new("git")
                .args([
                    "show",
                    "tidekeeper/status:status/schedules/health-thresholds.json",
                ])
                .current_dir(&repo.path)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("alert above"))
        },
    );
    let report = git(
        &repo.path,
        &[
            "show",
            "tidekeeper/status:status/schedules/health-thresholds.json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let tail = v["last_run"]["hosts"][0]["log_tail"].to_string();
    for m in ["cpu", "ram", "disk"] {
        assert!(tail.contains(&format!(" {m} ")), "{m} reported: {tail}");
    }
    assert_eq!(v["last_run"]["ok"], true, "{report}");
    assert_eq!(
        chat.of("telegram").len(),
        1,
        "no alert while all is well, only the test message"
    );

    // The disk threshold is crossed: the phone and the channel hear of it once.
    users_change(
        &dir,
        "hosts/aegis.yaml",
        "disk_alert: \"100\"",
        "disk_alert: \"0\"",
        "a threshold every disk crosses",
    );
    repo.commit("a threshold every disk crosses");
    d.wait_for(
        "the threshold alert on the phone",
        Duration::from_secs(60),
        |_| chat.of("telegram").len() > 1 && chat.of("discord").len() > 1,
    );
    let phone = chat.of("telegram");
    let text = phone[1]["text"].as_str().unwrap();
    assert!(
        text.contains("[aegis] critical: health-thresholds is over a threshold on aegis"),
        "{text}"
    );
    assert!(
        text.contains("ALERT disk"),
        "the figures are in the message: {text}"
    );
    assert_eq!(phone[1]["chat_id"], "1275129801");
    // Later failed runs of the same check send nothing more.
    let mut runs = std::collections::BTreeSet::new();
    d.wait_for("two more runs of the check", Duration::from_secs(60), |d| {
        let st = d.status();
        if let Some(f) = st["schedules"]["health-thresholds"]["last_run"]["finished"].as_str() {
            runs.insert(f.to_string());
        }
        runs.len() >= 3
    });
    let st = d.status();
    assert_eq!(st["notifications"]["sinks"]["phone"]["waiting"], 0, "{st}");
    assert_eq!(chat.of("telegram").len(), 2, "{:?}", chat.of("telegram"));
    assert!(chat.got.lock().unwrap().refused.is_empty());
}

#[test]
fn bastion_on_ec2_adopted_in_its_private_subnet_netboot_on_its_address_power_saving_and_budget() {
    use crate::support::cloud::ec2::{AMI_ARM64, Existing, SUBNET, permission};
    let mut files = files("bastion");
    for (file, from, to) in [
        (
            "tidekeeper.yaml",
            "tidekeeper_cidr: 192.0.2.10/32",
            "tidekeeper_cidr: 10.213.0.0/16",
        ),
        (
            "tidekeeper.yaml",
            "from: [192.0.2.10/32]",
            "from: [10.213.0.0/16]",
        ),
        ("hosts/bastion.yaml", "192.0.2.10/32", "10.213.0.0/16"),
        ("hosts/bastion.yaml", "subnet-0123456789abcdef0", SUBNET),
    ] {
        patch(&mut files, file, from, to);
    }
    let f = CloudFleet::with_repo(Kind::Docker, files);
    // The bastion exists already, made by hand in the private subnet at
    // .140, in a group that lets SSH in from anywhere. Adopting it is
    // tagging it as this fleet's.
    let by_hand = f
        .ec2
        .add_group("bastion-sg", vec![permission(22, "0.0.0.0/0")]);
    let id = f.ec2.add_existing_from(
        Existing {
            instance_type: "t4g.small",
            image: AMI_ARM64,
            private_ip: Some("10.20.13.140"),
        },
        true,
        &[&by_hand],
        &[
            ("Name", "bastion"),
            ("managed-by", "tidekeeper"),
            ("tidekeeper-fleet", "homelab"),
            ("tidekeeper-host", "bastion"),
        ],
    );
    let host = f.ec2.instance(&id).unwrap().host.expect("booted");
    let key = f.cloud.bed.lock().unwrap().host(host).host_key.clone();
    f.repo.write("known_hosts", &format!("bastion {key}\n"));
    f.repo.commit("pin the bastion's host key");

    let out = f.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = stdout(&out);
    assert!(plan.contains("~ bastion server (EC2, update)"), "{plan}");
    assert!(
        plan.contains("stack netboot  docker compose up (first deploy)"),
        "{plan}"
    );
    assert!(
        !plan.contains("create") && !plan.contains("replace"),
        "the bastion is modified, never recreated: {plan}"
    );
    readme_shows("bastion", "plan", "text", &plan);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = f.ec2.instances();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(
        (after[0].id.as_str(), after[0].private_ip.as_str()),
        (id.as_str(), "10.20.13.140")
    );
    // Its own security group now: SSH only from the operator and tidekeeper.
    let groups: Vec<_> = after[0]
        .groups
        .iter()
        .map(|g| f.ec2.account.lock().unwrap().groups[g].clone())
        .collect();
    let ssh: Vec<_> = groups
        .iter()
        .flat_map(|g| &g.ingress)
        .filter(|p| p.from == 22)
        .collect();
    assert!(
        ssh.iter()
            .all(|p| !p.cidrs.contains(&"0.0.0.0/0".to_string()))
            && ssh
                .iter()
                .any(|p| p.ipv6_cidrs == ["2001:db8:1234::42/128"]),
        "{groups:?}"
    );
    // The seed's phase checks, from the host, on the bastion's own
    // address: they also ran as health gates.
    assert!(
        f.ssh(
            "bastion",
            "curl -fsS http://10.20.13.140:8080/assets/boot.ipxe"
        )
        .contains("#!ipxe")
    );
    let running = f.ssh(
        "bastion",
        "docker ps --format '{{.Label \"com.docker.compose.service\"}}' | sort | tr '\\n' ' '",
    );
    assert_eq!(
        running.trim(),
        "dhcp matchbox registry-docker-io registry-ghcr-io"
    );
    assert!(
        f.ssh("bastion", "ss -Hlnu 'sport = :67'").contains(":67"),
        "udhcpd listens on ens5"
    );
    assert!(f.ssh("bastion", "ufw status").contains("2001:db8:1234::42"));
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bastion_schedule_and_budget(&f);
}

/// The power schedule saves on EC2 (a stopped instance bills its volume
/// only), and a Talos test node proposed as a second instance breaks the
/// lab's budget.
fn bastion_schedule_and_budget(f: &CloudFleet) {
    let out = tidekeeper()
        .args([
            "schedule",
            "list",
            "--now",
            "2026-06-15T12:00:00Z",
            "--repo",
        ])
        .arg(&f.repo.path)
        .envs(crate::support::cloud::CREDENTIALS)
        .output()
        .unwrap();
    let list = text(&out);
    assert!(list.contains("h in the next 30 days"), "{list}");
    assert!(
        list.contains("saving: ") && !list.contains("saving: 0.00"),
        "{list}"
    );
    // Without the next run times: the README shows the jobs, not a date.
    let shown: String = stdout(&out)
        .lines()
        .filter(|l| !l.trim_start().starts_with("next:"))
        .map(|l| format!("{l}\n"))
        .collect();
    readme_shows("bastion", "schedule", "text", &shown);

    let comment = pr_comment(f, |f| {
        f.repo.write(
            "hosts/talos-1.yaml",
            &format!(
                "provider: ec2\nserver:\n  type: t4g.small\n  image: \"136693071363/debian-12-arm64-*\"\n  subnet: {}\n",
                crate::support::cloud::ec2::SUBNET
            ),
        );
    });
    assert!(
        comment.contains("the lab's budget allows 0.10 (policy bastion.budget)"),
        "{comment}"
    );
    readme_shows("bastion", "pr-comment", "markdown", &comment);
}

#[test]
fn task_pool_locked_down_task_containers_and_scaled_by_pr_within_its_limits() {
    let (f, overlay, mut readme) = cloud_example("task-pool", Kind::Docker, 0, |_, _| {});
    overlay.assert_only_difference(&f.repo.path, &readme.values());
    let env = readme_env(&f, &[]);
    let repo = f.repo.path.clone();
    readme.run_ok("tidekeeper validate", &repo, &env, &[]);
    readme.run_ok("tidekeeper policy test", &repo, &env, &[]);
    let plan = readme.run_ok(
        "tidekeeper plan",
        &repo,
        &env,
        &["Monthly cost: 0.00 → 50.40 EUR (+50.40)"],
    );
    readme_shows("task-pool", "plan", "text", &plan);
    readme.run_ok("tidekeeper apply --yes", &repo, &env, &[]);
    for h in ["tasks-1", "tasks-2"] {
        let inspect = f.ssh(
            h,
            "docker inspect $(docker ps -q --filter label=com.docker.compose.service=canary) \
             --format '{{json .HostConfig.CapDrop}} {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.ReadonlyRootfs}}'",
        );
        assert_eq!(
            inspect.trim(),
            "[\"ALL\"] 256 2147483648 1000000000 [\"no-new-privileges:true\"] true",
            "{h}"
        );
        let conf: serde_json::Value =
            serde_json::from_str(&f.ssh(h, "cat /etc/docker/daemon.json")).unwrap();
        assert_eq!(conf["no-new-privileges"], true);
    }
    // A task through the launcher, as the README shows it: no capabilities,
    // its limits, its own workspace.
    let task = format!(
        "{} && {}",
        readme.take("run-task t42 u7 sh -c 'grep CapEff /proc/self/status; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; echo hi > /workspace/out'"),
        readme.take("cat /workspace/u7/t42/out")
    );
    let task = f.ssh("tasks-1", &task);
    assert!(task.contains("CapEff:\t0000000000000000"), "{task}");
    assert!(task.contains("256"), "{task}");
    assert!(task.trim_end().ends_with("hi"), "{task}");
    readme.run_ok("tidekeeper plan --detailed-exitcode", &repo, &env, &[]);

    // Scale to 3 by pull request: within the limits, priced.
    let comment = pr_comment_shown(&f, &mut readme, |repo| {
        users_change(
            repo,
            "hosts/tasks.yaml",
            "count: 2",
            "count: 3",
            "the pull request scaling the pool to 3",
        );
    });
    assert!(
        crate::support::diff_line(
            &comment,
            "+",
            "tasks-3 server (Hetzner, create)  +25.20 EUR/month"
        ),
        "{comment}"
    );
    assert!(comment.contains("Policies: all passed."), "{comment}");
    readme_shows("task-pool", "pr-comment", "markdown", &comment);
    merge_pr(&f);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.hetzner.servers().len(), 3);

    // Six is over the policy's maximum: the plan is denied.
    users_change(
        &repo,
        "hosts/tasks.yaml",
        "count: 3",
        "count: 6",
        "a commit asking for 6 servers",
    );
    f.repo.commit("six");
    let out = f.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out)
            .contains("the task pool would have 6 servers; at most 5 (policy taskpool.size)"),
        "{}",
        text(&out)
    );
    // Back to 2: the highest-numbered server goes (the group allows destroying).
    users_change(
        &repo,
        "hosts/tasks.yaml",
        "count: 6",
        "count: 2",
        "back to 2 servers",
    );
    f.repo.commit("two");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(f.hetzner.server("tasks-3").is_none());
    assert!(f.hetzner.server("tasks-2").is_some());
    readme.all_ran();
}
