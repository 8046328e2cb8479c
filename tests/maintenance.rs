//! Scheduled maintenance on the real test fleet.

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;

#[test]
fn a_rolling_upgrade_reboots_one_host_at_a_time_and_stops_at_a_failed_health_gate() {
    let bed = Testbed::start(3);
    let repo = FleetRepo::minimal(&bed, &[("base", "packages:\n  present: [jq]\n")]);
    let names: Vec<String> = bed.hosts.iter().map(|h| h.name.clone()).collect();
    repo.write(
        "schedules.yaml",
        &format!(
            r#"jobs:
  - name: upgrade
    cron: "0 3 * * SUN#1"
    hosts:
      names: [{}]
    rolling:
      max_parallel: 1
      stop_on_failure: true
    health:
      - unit: ssh
      - command: "test ! -e /etc/tk-unhealthy"
    timeout: 5m
    upgrade:
      reboot: always
"#,
            names.join(", ")
        ),
    );
    repo.commit("upgrade job");
    let boots: Vec<String> = (0..3).map(|i| bed.boot_id(i)).collect();
    bed.ssh_ok(1, "touch /etc/tk-unhealthy");
    let out = repo.tk(&["schedule", "run", "upgrade", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let hosts = run["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["result"], "ok", "{run}");
    assert_eq!(hosts[0]["rebooted"], true);
    assert_eq!(hosts[1]["result"], "failed", "{run}");
    assert!(
        hosts[1]["error"]
            .as_str()
            .unwrap()
            .contains("health gate failed: command test ! -e /etc/tk-unhealthy"),
        "{run}"
    );
    assert_eq!(hosts[2]["result"], "skipped", "{run}");
    assert!(
        hosts[2]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{} failed", names[1])),
        "{run}"
    );
    assert_ne!(bed.boot_id(0), boots[0], "host 0 rebooted");
    assert_ne!(
        bed.boot_id(1),
        boots[1],
        "host 1 rebooted before its gate failed"
    );
    assert_eq!(bed.boot_id(2), boots[2], "host 2 untouched");
}

#[test]
fn a_job_that_would_outlast_its_window_does_not_start() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("base", "packages:\n  present: [jq]\n")]);
    // A window that is open at `now` but closes within the job's timeout;
    // a fixed `now`, never today's clock (issue 33).
    let now = "2026-06-15T12:00:00Z";
    let (start, end) = ("09:00", "12:20");
    repo.write(
        "schedules.yaml",
        &format!(
            "jobs:\n  - name: tidy\n    cron: \"0 * * * *\"\n    hosts:\n      names: [{}]\n    window: \"daily {start}-{end} UTC\"\n    timeout: 1h\n    command:\n      run: touch /etc/tk-tidied\n",
            bed.host(0).name
        ),
    );
    repo.commit("tidy job");
    let out = repo.tk(&["schedule", "run", "tidy", "--now", now]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("not started: the window closes at"),
        "{}",
        text(&out)
    );
    assert!(!bed.ssh(0, "test -e /etc/tk-tidied").status.success());
    // With a timeout that fits, it runs.
    let fits = repo
        .read("schedules.yaml")
        .replace("timeout: 1h", "timeout: 10m");
    repo.write("schedules.yaml", &fits);
    repo.commit("shorter");
    let out = repo.tk(&["schedule", "run", "tidy", "--now", now]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(bed.ssh(0, "test -e /etc/tk-tidied").status.success());
}

#[test]
fn the_daemon_runs_jobs_on_schedule_and_reports_them() {
    use crate::support::daemon::Daemon;
    use crate::support::git;
    use std::time::Duration;
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "base",
            "files:\n  - {path: /etc/tk-base, content: \"x\\n\"}\n",
        )],
    );
    let h = bed.host(0).name.clone();
    repo.write(
        "schedules.yaml",
        &format!(
            r#"jobs:
  - name: tick
    cron: "*/3 * * * * *"
    hosts:
      names: [{h}]
    timeout: 1m
    command:
      run: date +%s >> /var/log/tk-tick.log
  - name: broken
    cron: "*/4 * * * * *"
    hosts:
      names: [{h}]
    timeout: 1m
    command:
      run: "echo the disk is full >&2; exit 4"
"#
        ),
    );
    repo.commit("jobs");
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    d.wait_for("two scheduled runs", Duration::from_secs(30), |_| {
        bed.ssh_ok(0, "cat /var/log/tk-tick.log 2>/dev/null | wc -l")
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            >= 2
    });
    d.wait_for(
        "the job status on the status branch",
        Duration::from_secs(20),
        |_| {
            let out = std::process::Command::new("git")
                .args(["show", "tidekeeper/status:status/schedules/broken.json"])
                .current_dir(&repo.path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"failed\"")
        },
    );
    let tick = git(
        &repo.path,
        &["show", "tidekeeper/status:status/schedules/tick.json"],
    );
    let v: serde_json::Value = serde_json::from_str(&tick).unwrap();
    assert_eq!(v["last_run"]["ok"], true, "{tick}");
    assert!(v["next_run"].is_string(), "{tick}");
    let badge = git(
        &repo.path,
        &["show", "tidekeeper/status:badges/schedule-broken.svg"],
    );
    assert!(badge.contains("failed"), "{badge}");
    let broken = git(
        &repo.path,
        &["show", "tidekeeper/status:status/schedules/broken.json"],
    );
    assert!(
        broken.contains("the disk is full"),
        "log tail kept: {broken}"
    );
    // The note is pushed right after the status branch.
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_for("the failure noted", Duration::from_secs(20), |_| {
        std::process::Command::new("git")
            .args(["notes", "--ref=tidekeeper", "show", &head])
            .current_dir(&repo.path)
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains("maintenance job broken failed")
            })
    });
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", "HEAD"]);
    assert_eq!(
        note.matches("maintenance job broken failed").count(),
        1,
        "only the latest failure: {note}"
    );
    assert!(
        note.contains("applied to 1 host(s)"),
        "the reconcile note is kept: {note}"
    );
    let audit = tidekeeper::audit::Audit::parse(&note);
    assert_eq!(
        audit.map(|a| a.verdict),
        Some(tidekeeper::audit::Verdict::Applied),
        "the audit trail stays last: {note}"
    );
    let metrics = d.get("/metrics").1;
    assert!(
        metrics
            .contains("tidekeeper_maintenance_runs_total{maintenance_job=\"tick\",result=\"ok\"}"),
        "{metrics}"
    );
}

#[test]
fn a_restic_backup_over_sftp_restores_byte_for_byte_and_applies_retention() {
    let bed = Testbed::start(2);
    let tmp = crate::support::TempDir::new("backup");
    // host 0 backs up to host 1 over sftp with its own key.
    let key = tmp.path().join("backup_key");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backup", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(kg.success());
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    bed.ssh_ok(
        1,
        &format!(
            "mkdir -p /root/.ssh /srv/restic && echo '{}' >> /root/.ssh/authorized_keys",
            public.trim()
        ),
    );
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let role = format!(
        "packages:\n  present: [restic]\nfiles:\n  - path: /root/.ssh/id_ed25519\n    mode: \"0600\"\n    sensitive: true\n    content: |\n{}  - path: /root/.ssh/known_hosts\n    content: \"{}\\n\"\n  - {{path: /srv/data/a.txt, content: \"alpha alpha alpha\\n\"}}\n  - {{path: /srv/data/sub/b.conf, content: \"beta = 2\\n\"}}\n",
        indent(&private),
        bed.host(1).known_hosts_line()
    );
    let repo = FleetRepo::minimal(&bed, &[("backup-client", &role)]);
    let identity = crate::support::fleet::age_identity();
    let password = "restic-pw-7f3a9c";
    repo.encrypt_secret(&identity, "restic", password);
    let h0 = bed.host(0).name.clone();
    repo.write(
        "schedules.yaml",
        &format!(
            r#"jobs:
  - name: nightly-backup
    cron: "30 1 * * *"
    timezone: Europe/Berlin
    hosts:
      names: [{h0}]
    timeout: 10m
    backup:
      repository: "sftp:root@{}:/srv/restic/{{{{ host.name }}}}"
      password_secret: restic
      paths: [/srv/data]
      keep: {{daily: 2, weekly: 1, monthly: 1}}
      check: true
"#,
            bed.host(1).address
        ),
    );
    repo.commit("backups");
    let tk = |args: &[&str]| repo.tk_env(args, &[("TIDEKEEPER_AGE_IDENTITY", &identity)]);
    let out = tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for _ in 0..3 {
        let out = tk(&["schedule", "run", "nightly-backup"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!text(&out).contains(password), "the password never shows");
    }
    let restic = format!(
        "RESTIC_PASSWORD={password} restic -q -r sftp:root@{}:/srv/restic/{h0}",
        bed.host(1).address
    );
    // Retention: three snapshots on one day, keep-daily keeps the newest of that day.
    let snaps = bed.ssh_ok(0, &format!("{restic} snapshots --json"));
    let v: serde_json::Value = serde_json::from_str(&snaps).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{snaps}");
    // A deleted file comes back byte for byte, through `tidekeeper restore`:
    // first a preview that names the snapshot and what it holds.
    let before = bed.ssh_ok(0, "sha256sum /srv/data/a.txt");
    bed.ssh_ok(
        0,
        "rm /srv/data/a.txt && echo changed > /srv/data/sub/b.conf",
    );
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "nightly-backup", "--host", h0.as_str()];
        args.extend_from_slice(extra);
        tk(&args)
    };
    // Without a terminal and without --yes, nothing is restored.
    let out = restore(&["--path", "/srv/data/a.txt"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "restores 1 files and 0 directories (18 bytes) under /srv/data/a.txt into /: in place"
        ),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("without confirmation"),
        "{}",
        text(&out)
    );
    assert!(bed.ssh(0, "test -e /srv/data/a.txt").status.code() == Some(1));
    let out = restore(&["--path", "/srv/data/a.txt", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Restore complete: snapshot "),
        "{}",
        text(&out)
    );
    assert_eq!(bed.ssh_ok(0, "sha256sum /srv/data/a.txt"), before);
    assert_eq!(
        bed.ssh_ok(0, "cat /srv/data/sub/b.conf"),
        "changed\n",
        "only --path was restored"
    );
    // The whole snapshot into another directory leaves the live files alone.
    let out = restore(&["--target", "/srv/restored", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("restores 2 files and 3 directories"),
        "{}",
        text(&out)
    );
    assert_eq!(
        bed.ssh_ok(0, "cat /srv/restored/srv/data/sub/b.conf"),
        "beta = 2\n"
    );
    assert_eq!(bed.ssh_ok(0, "cat /srv/data/sub/b.conf"), "changed\n");
    // A snapshot id that is not one never reaches the host's shell.
    let out = restore(&["--snapshot", "latest;touch /pwned", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("is not a snapshot"), "{}", text(&out));
    assert!(bed.ssh(0, "test -e /pwned").status.code() == Some(1));
}

/// A Storage Box style repository: restic logs in with a key kept as an age
/// secret and trusts only the host keys the job names, nothing in ~/.ssh.
#[test]
fn an_sftp_backup_logs_in_with_its_secret_key_and_trusts_only_the_named_host_key() {
    let bed = Testbed::start(2);
    let tmp = crate::support::TempDir::new("sftp-key");
    let key = tmp.path().join("box_key");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "box", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(kg.success());
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    bed.ssh_ok(
        1,
        &format!(
            "mkdir -p /root/.ssh /srv/box && echo '{}' >> /root/.ssh/authorized_keys",
            public.trim()
        ),
    );
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "backup-client",
            "packages:\n  present: [restic]\nfiles:\n  - {path: /srv/data/a.txt, content: \"alpha\\n\"}\n",
        )],
    );
    let identity = crate::support::fleet::age_identity();
    repo.encrypt_secret(&identity, "restic", "restic-pw-box-19c");
    repo.encrypt_secret(&identity, "box-key", &private);
    let h0 = bed.host(0).name.clone();
    let job = |name: &str, known: &str| {
        format!(
            "  - name: {name}\n    cron: \"30 1 * * *\"\n    timezone: UTC\n    hosts:\n      names: [{h0}]\n    timeout: 10m\n    backup:\n      repository: \"sftp:root@{}:/srv/box/{{{{ host.name }}}}\"\n      password_secret: restic\n      paths: [/srv/data]\n      sftp:\n        key_secret: box-key\n        known_hosts: \"{known}\"\n",
            bed.host(1).address
        )
    };
    // The second job names host 0's key for the box: a man in the middle.
    let impostor = format!("{} {}", bed.host(1).address, bed.host(0).host_key);
    repo.write(
        "schedules.yaml",
        &format!(
            "jobs:\n{}{}",
            job("box-backup", &bed.host(1).known_hosts_line()),
            job("mitm-backup", &impostor)
        ),
    );
    repo.commit("storage box backups");
    let tk = |args: &[&str]| repo.tk_env(args, &[("TIDEKEEPER_AGE_IDENTITY", &identity)]);
    let out = tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh(0, "ls /root/.ssh/id_* /root/.ssh/known_hosts")
            .status
            .code(),
        Some(2),
        "the host has no key or known host of its own to fall back on"
    );
    let out = tk(&["schedule", "run", "box-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains("OPENSSH PRIVATE KEY"),
        "{}",
        text(&out)
    );
    let snaps = bed.ssh_ok(1, &format!("ls /srv/box/{h0}/snapshots | wc -l"));
    assert_eq!(snaps.trim(), "1", "one snapshot on the box");
    assert_eq!(
        bed.ssh_ok(0, "ls -A /tmp | grep -c '^tmp[.]' || true")
            .trim(),
        "0",
        "key, known hosts and password files are gone"
    );
    // A box whose host key is not the named one is never written to.
    let out = tk(&["schedule", "run", "mitm-backup"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "cannot log in to root@{} (port 22) for the backup: Host key verification failed.",
            bed.host(1).address
        )),
        "{}",
        text(&out)
    );
    // Restore uses the same login.
    bed.ssh_ok(0, "rm /srv/data/a.txt");
    let out = tk(&[
        "restore",
        "box-backup",
        "--host",
        h0.as_str(),
        "--path",
        "/srv/data/a.txt",
        "--yes",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "cat /srv/data/a.txt"), "alpha\n");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["format_version"], 1, "{doc}");
    assert_eq!(doc["outcome"], "restored", "{doc}");
    assert_eq!(doc["host"], h0.as_str(), "{doc}");
    assert!(
        doc["snapshot"].as_str().is_some_and(|s| s.len() >= 8),
        "{doc}"
    );
}

/// PostgreSQL in a container (as in a compose stack): the dump and the
/// restore run inside it with `docker exec`, and the host's own server
/// (stopped here) is never asked.
#[test]
fn a_pg_dump_of_a_database_in_a_container_is_dumped_and_restored_inside_it() {
    let bed = Testbed::start_kind(1, crate::support::testbed::Kind::Docker);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "db",
            "packages:\n  present: [restic, postgresql, docker.io, busybox-static]\n",
        )],
    );
    let identity = crate::support::fleet::age_identity();
    let password = "restic-pw-ct-77e";
    repo.encrypt_secret(&identity, "restic", password);
    let h0 = bed.host(0).name.clone();
    repo.write(
        "schedules.yaml",
        "jobs:\n  - name: db-backup\n    cron: \"30 1 * * *\"\n    timezone: UTC\n    timeout: 10m\n    backup:\n      repository: /srv/restic/{{ host.name }}\n      password_secret: restic\n      pg_dump: {database: app, container: appdb}\n",
    );
    repo.commit("database in a container");
    let tk = |args: &[&str]| repo.tk_env(args, &[("TIDEKEEPER_AGE_IDENTITY", &identity)]);
    let out = tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bed.ssh_ok(0, crate::stacks::DOCKER_PREP);
    // The container runs the packaged server on its cluster; the host's
    // own service is stopped and its client cannot reach it.
    bed.ssh_ok(
        0,
        "systemctl stop postgresql && v=$(ls /usr/lib/postgresql) && \
         cp -a /tmp/bb /tmp/pg && mkdir /tmp/pg/etc && cp /etc/passwd /etc/group /tmp/pg/etc/ && \
         tar -C /tmp/pg -c . | docker import - local/pg:1 >/dev/null && \
         docker run -d --name appdb --user postgres --network none \
           -v /usr:/usr:ro -v /lib:/lib:ro -v /lib64:/lib64:ro -v /etc/alternatives:/etc/alternatives:ro \
           -v /etc/postgresql:/etc/postgresql:ro -v /etc/postgresql-common:/etc/postgresql-common:ro \
           -v /var/lib/postgresql:/var/lib/postgresql --tmpfs /var/run/postgresql:mode=1777 \
           local/pg:1 /usr/lib/postgresql/$v/bin/postgres -D /var/lib/postgresql/$v/main \
           -c config_file=/etc/postgresql/$v/main/postgresql.conf -c ssl=off >/dev/null && \
         for i in $(seq 100); do docker exec -u postgres appdb psql -qtAc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done && \
         { docker exec -u postgres appdb psql -qtAc 'SELECT 1' 2>&1 || { docker logs appdb; exit 1; }; } && \
         docker exec -u postgres appdb psql -qc 'CREATE DATABASE app' && \
         docker exec -u postgres appdb psql -q -d app -c \"CREATE TABLE tides (id int, name text); INSERT INTO tides VALUES (1, 'spring'), (2, 'neap')\"",
    );
    assert_ne!(
        bed.ssh(0, "runuser -u postgres -- psql -qtAc 'SELECT 1'")
            .status
            .code(),
        Some(0),
        "no server on the host itself"
    );
    let out = tk(&["schedule", "run", "db-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dump = bed.ssh_ok(
        0,
        &format!("RESTIC_PASSWORD={password} restic -q -r /srv/restic/{h0} dump latest /app.sql"),
    );
    assert!(
        dump.contains("1\tspring") && dump.contains("2\tneap"),
        "{dump}"
    );
    let out = tk(&[
        "restore",
        "db-backup",
        "--host",
        h0.as_str(),
        "--database",
        "app_copy",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = bed.ssh_ok(
        0,
        "docker exec -u postgres appdb psql -tA -d app_copy -c 'SELECT id, name FROM tides ORDER BY id'",
    );
    assert_eq!(rows, "1|spring\n2|neap\n");
    // A container that is not running: the job says so and fails.
    bed.ssh_ok(0, "docker stop appdb >/dev/null");
    let out = tk(&["schedule", "run", "db-backup"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("container appdb is not running"),
        "{}",
        text(&out)
    );
}

/// A backup with `pg_dump` streams a real PostgreSQL database into restic;
/// a dump that fails fails the job, and its partial snapshot is not kept.
#[test]
fn a_pg_dump_backup_holds_the_rows_and_a_failed_dump_fails_the_job_and_is_not_kept() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[("db", "packages:\n  present: [restic, postgresql]\n")],
    );
    let identity = crate::support::fleet::age_identity();
    let password = "restic-pw-pg-41d2";
    repo.encrypt_secret(&identity, "restic", password);
    let h0 = bed.host(0).name.clone();
    let job = |name: &str, db: &str| {
        format!(
            "  - name: {name}\n    cron: \"30 1 * * *\"\n    timezone: UTC\n    timeout: 10m\n    backup:\n      repository: \"/srv/restic/{{{{ host.name }}}}\"\n      password_secret: restic\n      pg_dump: {db}\n"
        )
    };
    repo.write(
        "schedules.yaml",
        &format!(
            "jobs:\n{}{}",
            job("db-backup", "app"),
            job("broken-backup", "missing")
        ),
    );
    repo.commit("database backups");
    let tk = |args: &[&str]| repo.tk_env(args, &[("TIDEKEEPER_AGE_IDENTITY", &identity)]);
    let out = tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bed.ssh_ok(
        0,
        "runuser -u postgres -- psql -qc 'CREATE DATABASE app' && \
         runuser -u postgres -- psql -q -d app -c \"CREATE TABLE tides (id int, name text); INSERT INTO tides VALUES (1, 'spring'), (2, 'neap')\"",
    );
    let out = tk(&["schedule", "run", "db-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restic = format!("RESTIC_PASSWORD={password} restic -q -r /srv/restic/{h0}");
    let snapshots = || -> Vec<serde_json::Value> {
        let json = bed.ssh_ok(0, &format!("{restic} snapshots --json"));
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let before = snapshots();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        before[0]["tags"].is_null(),
        "no longer tagged partial: {before:?}"
    );
    // The rows are in the dump restic holds.
    let dump = bed.ssh_ok(0, &format!("{restic} dump latest /app.sql"));
    assert!(dump.contains("CREATE TABLE public.tides"), "{dump}");
    assert!(
        dump.contains("1\tspring") && dump.contains("2\tneap"),
        "{dump}"
    );

    // A database that is not there: pg_dump fails, so does the job.
    let out = tk(&["schedule", "run", "broken-backup"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("pg_dump missing failed"),
        "{}",
        text(&out)
    );
    let after = snapshots();
    assert_eq!(after, before, "the partial dump was forgotten");

    // Restore: into a new database, then over the live one (which has
    // lost a row since), and the rows are back.
    let rows = |db: &str| {
        bed.ssh_ok(
            0,
            &format!("runuser -u postgres -- psql -tA -d {db} -c 'SELECT id, name FROM tides ORDER BY id'"),
        )
    };
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "db-backup", "--host", h0.as_str(), "--yes"];
        args.extend_from_slice(extra);
        tk(&args)
    };
    let out = restore(&["--database", "app_copy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("loads the database dump /app.sql"),
        "{}",
        text(&out)
    );
    assert_eq!(rows("app_copy"), "1|spring\n2|neap\n");
    bed.ssh_ok(
        0,
        "runuser -u postgres -- psql -q -d app -c 'DELETE FROM tides WHERE id = 2'",
    );
    // The live database has tables: loading over them is refused…
    let out = restore(&[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("database app already has 1 tables"),
        "{}",
        text(&out)
    );
    assert_eq!(rows("app"), "1|spring\n");
    // …unless it is replaced.
    let out = restore(&["--replace"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("DROPS the database first"),
        "{}",
        text(&out)
    );
    assert_eq!(rows("app"), "1|spring\n2|neap\n");
}

/// Build a `.deb` of `name` `version` into `dir` with dpkg-deb: `depends`
/// as its Depends, and a postinst that asks for a reboot when `kernel`.
fn deb(dir: &std::path::Path, name: &str, version: &str, depends: &str, kernel: bool) {
    let root = dir.join(format!("build-{name}-{version}"));
    let debian = root.join("DEBIAN");
    std::fs::create_dir_all(&debian).unwrap();
    std::fs::create_dir_all(root.join("usr/share/tk")).unwrap();
    std::fs::write(
        root.join(format!("usr/share/tk/{name}")),
        format!("{version}\n"),
    )
    .unwrap();
    let depends = if depends.is_empty() {
        String::new()
    } else {
        format!("Depends: {depends}\n")
    };
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: test <t@example.org>\n{depends}Description: test package\n"
        ),
    )
    .unwrap();
    if kernel {
        // As Debian's kernel packages do.
        let post = debian.join("postinst");
        std::fs::write(&post, "#!/bin/sh\ntouch /var/run/reboot-required\n").unwrap();
        std::fs::set_permissions(&post, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(dir.join(format!("{name}_{version}_all.deb")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// An apt repository in `dir` (flat, unsigned) of the debs in it.
fn index(dir: &std::path::Path) {
    let out = std::process::Command::new("dpkg-scanpackages")
        .args(["-m", "."])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.join("Packages"), out.stdout).unwrap();
}

/// `apt-get upgrade` keeps back a kernel that comes as a new package; the
/// job that may reboot runs `full-upgrade`, which installs it, and reboots
/// because the kernel asks to. A held package stays at its version.
#[test]
fn a_kernel_job_full_upgrades_keeps_held_packages_and_reboots_when_required() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("base", "packages:\n  present: [jq]\n")]);
    let h0 = bed.host(0).name.clone();
    let apt = bed.root(0).join("srv/tk-apt");
    std::fs::create_dir_all(&apt).unwrap();
    deb(&apt, "tk-kernel", "1.0", "", false);
    deb(&apt, "tk-held", "1.0", "", false);
    index(&apt);
    std::fs::write(
        bed.root(0).join("etc/apt/sources.list.d/tk-test.list"),
        "deb [trusted=yes] file:/srv/tk-apt ./\n",
    )
    .unwrap();
    bed.ssh_ok(
        0,
        "apt-get update -qq && apt-get install -y -qq tk-kernel tk-held >/dev/null && apt-mark hold tk-held",
    );
    // Version 2: the kernel now needs a package the host does not have.
    deb(&apt, "tk-kernel-image-2", "2.0", "", true);
    deb(&apt, "tk-kernel", "2.0", "tk-kernel-image-2", false);
    deb(&apt, "tk-held", "2.0", "", false);
    index(&apt);
    let job = |name: &str, upgrade: &str| {
        format!(
            "  - name: {name}\n    cron: \"0 3 * * SUN#1\"\n    hosts: {{names: [{h0}]}}\n    timeout: 10m\n    upgrade: {upgrade}\n"
        )
    };
    repo.write(
        "schedules.yaml",
        &format!(
            "jobs:\n{}{}",
            job("security", "{reboot: never}"),
            job("monthly-kernel", "{reboot: if-required}")
        ),
    );
    repo.commit("upgrade jobs");
    let version = |p: &str| {
        bed.ssh_ok(
            0,
            &format!("dpkg-query -W -f '${{Version}}' {p} 2>/dev/null || echo none"),
        )
        .trim()
        .to_string()
    };
    let boot = bed.boot_id(0);

    // reboot: never → `upgrade`: the kernel is kept back.
    let out = repo.tk(&["schedule", "run", "security", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(version("tk-kernel"), "1.0");
    assert_eq!(version("tk-kernel-image-2"), "none");
    assert!(
        stdout(&out).contains("held, left as they are: tk-held"),
        "{}",
        text(&out)
    );

    // reboot: if-required → `full-upgrade`: the kernel comes, with its new
    // package, the host reboots; the held package does not move.
    let out = repo.tk(&["schedule", "run", "monthly-kernel", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["hosts"][0]["rebooted"], true, "{run}");
    assert_ne!(bed.boot_id(0), boot, "the host rebooted");
    assert_eq!(version("tk-kernel"), "2.0");
    assert_eq!(version("tk-kernel-image-2"), "2.0");
    assert_eq!(version("tk-held"), "1.0");
}
