//! Restoring a backup job's snapshot onto its host, files (restic restore)
//! or a `pg_dump` database (loaded with psql): the request checked, the
//! flow ([`run`]), its scripts and the preview. First a preview that names
//! the snapshot and what it holds, then, once the caller's [`Confirm`]
//! says yes, the restore of exactly that snapshot (a `latest` resolved
//! once, so a backup finishing in between cannot change what is restored).
//! Scripts and parsing are pure; the flow talks to the host and to no
//! terminal.

use serde::Serialize;

use super::plan::{ResticSecrets, locked_prelude, pg_prelude, repository_of, restic_env};
use crate::cloud::Clouds;
use crate::engine;
use crate::model::check;
use crate::model::desired::{Fleet, Job, JobKind};
use crate::transport::shell_quote as q;

/// What to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum What {
    /// Files under `path` (None: the whole snapshot) into `target`
    /// (`/`: in place).
    Files {
        path: Option<String>,
        target: String,
    },
    /// The job's `pg_dump` into database `into`; with `replace`, an
    /// existing database of that name is dropped first.
    Database { into: String, replace: bool },
}

/// A restore asked for on the command line, checked.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub host: String,
    /// `latest` or a snapshot id (hex, 8 to 64 digits).
    pub snapshot: String,
    pub what: What,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RestoreError {
    #[error("no job named {name:?}")]
    NoSuchJob {
        name: String,
        /// The fleet's backup jobs, the ones that can be restored.
        backups: Vec<String>,
    },
    #[error("job {0:?} is a {1} job; only backup jobs can be restored")]
    NotABackup(String, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("the backup's secret {0:?} could not be decrypted")]
    NoPassword(String),
    /// The host could not be reached, or the connection failed.
    #[error("{host}: {error}")]
    Unreachable { host: String, error: String },
    /// The host ran what it was asked and it failed (said redacted).
    #[error("{host}: {said}")]
    Failed { host: String, said: String },
    #[error("snapshot {short_id} holds no database dump of job {job}")]
    NoDump { short_id: String, job: String },
    #[error("not restoring without confirmation; run with --yes to restore non-interactively")]
    Unconfirmed,
}

impl RestoreError {
    /// What the person can do about it.
    pub(crate) fn help(&self) -> Option<String> {
        match self {
            RestoreError::NoSuchJob { backups, .. } => {
                Some(format!("backup jobs are: {}", backups.join(", ")))
            }
            RestoreError::NoPassword(_) => Some(
                "give the age identity (TIDEKEEPER_AGE_IDENTITY or secrets.identity_file)".into(),
            ),
            _ => None,
        }
    }

    /// The host, or what the host has, is not as asked (rather than
    /// the request or the way to the host).
    pub(crate) fn is_invalid(&self) -> bool {
        matches!(
            self,
            RestoreError::Failed { .. } | RestoreError::NoDump { .. }
        )
    }
}

/// What the person asked said to the preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Yes,
    No,
    /// There was no one to ask: nothing is restored.
    Unasked,
}

/// Asks whether to restore what the preview (its text for people) shows.
pub(crate) trait Confirm {
    fn confirm(&mut self, preview: &str) -> Answer;
}

impl<F: FnMut(&str) -> Answer> Confirm for F {
    fn confirm(&mut self, preview: &str) -> Answer {
        self(preview)
    }
}

/// How a restore that ran to the end ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Restored {
    /// The snapshot is back, in `elapsed`.
    Done {
        short_id: String,
        elapsed: std::time::Duration,
    },
    /// The person said no to the preview.
    Cancelled,
}

/// What the snapshot holds, as the preview found it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct Preview {
    pub snapshot: String,
    pub short_id: String,
    pub time: String,
    pub hostname: String,
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
    /// The first paths, for people to check.
    pub sample: Vec<String>,
}

/// How many paths the preview names.
pub(crate) const SAMPLE: usize = 20;

impl Request {
    /// Check what came from the command line against `job`; everything
    /// here reaches a shell script (quoted, and checked first).
    pub(crate) fn new(
        job: &Job,
        host: &str,
        snapshot: &str,
        path: Option<&str>,
        target: Option<&str>,
        database: Option<&str>,
        replace: bool,
    ) -> Result<Request, RestoreError> {
        let JobKind::Backup { pg_dump, .. } = &job.kind else {
            return Err(RestoreError::NotABackup(job.name.clone(), job.kind.name()));
        };
        let invalid = |m: String| Err(RestoreError::Invalid(m));
        if !job.hosts.iter().any(|h| h == host) {
            return invalid(format!(
                "job {} does not back up {host}; it backs up: {}",
                job.name,
                job.hosts.join(", ")
            ));
        }
        let snap_ok = snapshot == "latest"
            || ((8..=64).contains(&snapshot.len())
                && snapshot.bytes().all(|c| c.is_ascii_hexdigit()));
        if !snap_ok {
            return invalid(format!(
                "{snapshot:?} is not a snapshot: write `latest` or its id (8 to 64 hex digits, as `restic snapshots` shows)"
            ));
        }
        let what = match (pg_dump, database) {
            (Some(pg), _) if path.is_none() && target.is_none() => {
                let into = database.unwrap_or(&pg.database);
                if !check::database_name(into) {
                    return invalid(format!(
                        "{into:?} is not a database name: letters, digits, `_`, `-` and `.`, at most 63"
                    ));
                }
                What::Database {
                    into: into.to_string(),
                    replace,
                }
            }
            (None, Some(_)) => {
                return invalid(format!(
                    "job {} backs up files, not a database: --database is for pg_dump jobs",
                    job.name
                ));
            }
            _ => {
                if replace {
                    return invalid("--replace is for restoring a database".into());
                }
                for p in path.iter().chain(target.iter()) {
                    check::host_path(p).map_err(RestoreError::Invalid)?;
                }
                What::Files {
                    path: path
                        .map(|p| p.trim_end_matches('/').to_string())
                        .filter(|p| !p.is_empty()),
                    target: target.unwrap_or("/").to_string(),
                }
            }
        };
        Ok(Request {
            host: host.to_string(),
            snapshot: snapshot.to_string(),
            what,
        })
    }

    /// The restic path the preview lists.
    fn listed(&self, job: &Job) -> Option<String> {
        match (&self.what, &job.kind) {
            (What::Files { path, .. }, _) => path.clone(),
            (
                What::Database { .. },
                JobKind::Backup {
                    pg_dump: Some(pg), ..
                },
            ) => Some(format!("/{}.sql", pg.database)),
            _ => None,
        }
    }
}

fn repo(job: &Job, host: &str) -> String {
    match &job.kind {
        JobKind::Backup { repository, .. } => repository_of(repository, host),
        _ => String::new(),
    }
}

/// Lists the snapshot (resolving `latest` among the host's snapshots):
/// restic's JSON lines, the snapshot first.
pub(crate) fn preview_script(job: &Job, req: &Request, secrets: &ResticSecrets) -> String {
    let mut s = locked_prelude();
    s.push_str(&restic_env(job, &req.host, secrets));
    let path = req.listed(job).map(|p| q(&p)).unwrap_or_default();
    s.push_str(&format!(
        // Not `exec`: restic may be the shell function that logs in over sftp.
        "restic ls --json --recursive --host {} {} {path}\nexit $?\n",
        q(&req.host),
        q(&req.snapshot)
    ));
    s
}

/// Parse restic's `ls --json` lines.
pub(crate) fn parse_preview(out: &str) -> Result<Preview, String> {
    let mut p = Preview::default();
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("restic ls: {e}"))?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        match v["struct_type"].as_str() {
            Some("snapshot") => {
                p.snapshot = text("id");
                p.short_id = text("short_id");
                p.time = text("time");
                p.hostname = text("hostname");
            }
            Some("node") => {
                match v["type"].as_str() {
                    Some("dir") => p.dirs += 1,
                    _ => {
                        p.files += 1;
                        p.bytes += v["size"].as_u64().unwrap_or(0);
                    }
                }
                if p.sample.len() < SAMPLE {
                    p.sample.push(text("path"));
                }
            }
            _ => {}
        }
    }
    if p.snapshot.is_empty() {
        return Err("restic listed no snapshot".into());
    }
    Ok(p)
}

/// Restores snapshot `id` (as the preview resolved it).
pub(crate) fn restore_script(
    job: &Job,
    req: &Request,
    secrets: &ResticSecrets,
    id: &str,
) -> String {
    let mut s = locked_prelude();
    s.push_str(&restic_env(job, &req.host, secrets));
    match &req.what {
        What::Files { path, target } => {
            let include = path
                .as_ref()
                .map(|p| format!(" --include {}", q(p)))
                .unwrap_or_default();
            s.push_str(&format!(
                "mkdir -p {t} || exit $?\nrestic restore -q {id} --target {t}{include} || exit $?\n",
                id = q(id),
                t = q(target),
            ));
        }
        What::Database { into, replace } => {
            let JobKind::Backup {
                pg_dump: Some(pg), ..
            } = &job.kind
            else {
                unreachable!("Request::new makes a database restore only of a pg_dump job")
            };
            let dump = req.listed(job).unwrap_or_default();
            s.push_str(&pg_prelude(pg));
            s.push_str("pg() { pgrun psql -X -q -v ON_ERROR_STOP=1 \"$@\"; }\n");
            let psql = "pg";
            let db = q(into);
            if *replace {
                s.push_str(&format!("pgrun dropdb --if-exists {db} || exit $?\n"));
            }
            // Plain SQL dumps create their tables: loading one into a
            // database that has tables would fail half-way, so refuse first.
            s.push_str(&format!(
                "exists=$({psql} -tA -c \"SELECT 1 FROM pg_database WHERE datname = '{into}'\") || exit $?\n\
                 if [ \"$exists\" = 1 ]; then\n\
                 \x20 n=$({psql} -tA -d {db} -c \"SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')\") || exit $?\n\
                 \x20 if [ \"$n\" != 0 ]; then echo \"database {into} already has $n tables: restore into another (--database NAME) or replace it (--replace)\" >&2; exit 1; fi\n\
                 else\n\
                 \x20 pgrun createdb {db} || exit $?\n\
                 fi\n\
                 st=$(mktemp) || exit 1\n\
                 {{ restic dump -q {id} {dump}; echo $? > \"$st\"; }} | {psql} -d {db} >/dev/null\n\
                 loaded=$?; dumped=$(cat \"$st\"); rm -f \"$st\"\n\
                 [ \"$dumped\" = 0 ] || {{ echo \"restic could not read {d} from the snapshot (exit $dumped)\" >&2; exit 1; }}\n\
                 [ \"$loaded\" = 0 ] || {{ echo \"psql failed loading the dump into {into} (exit $loaded)\" >&2; exit 1; }}\n",
                id = q(id),
                dump = q(&dump),
                d = dump,
            ));
        }
    }
    s.push_str("echo @@restored\n");
    s
}

/// The preview for people.
pub(crate) fn render_preview(job: &Job, req: &Request, p: &Preview) -> String {
    let mut s = format!(
        "Restore on {} from job {} (repository {}):\n  snapshot {} of {} (host {})\n",
        req.host,
        job.name,
        repo(job, &req.host),
        p.short_id,
        p.time.get(..19).unwrap_or(&p.time).replace('T', " "),
        p.hostname
    );
    match &req.what {
        What::Files { path, target } => {
            s.push_str(&format!(
                "  restores {} files and {} directories ({}) {}into {target}{}\n",
                p.files,
                p.dirs,
                bytes(p.bytes),
                path.as_ref()
                    .map(|p| format!("under {p} "))
                    .unwrap_or_default(),
                if target == "/" {
                    ": in place, files there are replaced"
                } else {
                    ""
                }
            ));
            for path in &p.sample {
                s.push_str(&format!("    {path}\n"));
            }
            if p.files + p.dirs > p.sample.len() {
                s.push_str(&format!(
                    "    … and {} more\n",
                    p.files + p.dirs - p.sample.len()
                ));
            }
        }
        What::Database { into, replace } => {
            s.push_str(&format!(
                "  loads the database dump {} ({}) into database {into}{}\n",
                p.sample.first().map(String::as_str).unwrap_or("(missing)"),
                bytes(p.bytes),
                if *replace {
                    ": DROPS the database first"
                } else {
                    " (created when missing; refused when it has tables)"
                }
            ));
        }
    }
    s
}

/// The backup job named `name`.
pub(crate) fn job<'a>(fleet: &'a Fleet, name: &str) -> Result<&'a Job, RestoreError> {
    fleet
        .jobs
        .iter()
        .find(|j| j.name == name)
        .ok_or_else(|| RestoreError::NoSuchJob {
            name: name.to_string(),
            backups: fleet
                .jobs
                .iter()
                .filter(|j| matches!(j.kind, JobKind::Backup { .. }))
                .map(|j| j.name.clone())
                .collect(),
        })
}

/// The restic repository's password (and sftp key), decrypted with the fleet.
pub(crate) fn secrets(fleet: &Fleet, job: &Job) -> Result<ResticSecrets, RestoreError> {
    if !matches!(job.kind, JobKind::Backup { .. }) {
        return Err(RestoreError::NotABackup(job.name.clone(), job.kind.name()));
    }
    ResticSecrets::of(job, &fleet.secret_values.0).map_err(RestoreError::NoPassword)
}

/// Restore `req` from `job` onto its host: preview the snapshot, ask
/// `confirm` with the preview, then restore exactly the snapshot shown.
pub(crate) async fn run(
    fleet: &Fleet,
    clouds: &Clouds,
    job: &Job,
    req: &Request,
    opts: &engine::Options,
    mut confirm: impl Confirm,
) -> Result<Restored, RestoreError> {
    let secrets = secrets(fleet, job)?;
    let host = req.host.as_str();
    let unreachable = |e: &dyn std::fmt::Display| RestoreError::Unreachable {
        host: host.to_string(),
        error: e.to_string(),
    };
    let fleet = super::run::with_addresses(fleet, clouds).await;
    let h = fleet
        .host(host)
        .ok_or_else(|| unreachable(&"not a host of the fleet"))?;
    let conn = engine::connect(&fleet, h, opts)
        .await
        .map_err(|e| unreachable(&e))?;
    let timeout = std::time::Duration::from_secs(job.timeout_secs.max(60));
    let script = preview_script(job, req, &secrets);
    let out = conn
        .run_script(&script, timeout)
        .await
        .map_err(|e| unreachable(&e))?;
    let preview = checked_preview(job, req, &out, opts)?;
    match confirm.confirm(&render_preview(job, req, &preview)) {
        Answer::Yes => {}
        Answer::No => return Ok(Restored::Cancelled),
        Answer::Unasked => return Err(RestoreError::Unconfirmed),
    }
    let start = std::time::Instant::now();
    let script = restore_script(job, req, &secrets, &preview.snapshot);
    let out = conn
        .run_script(&script, timeout)
        .await
        .map_err(|e| unreachable(&e))?;
    if out.success() && String::from_utf8_lossy(&out.stdout).contains("@@restored") {
        Ok(Restored::Done {
            short_id: preview.short_id,
            elapsed: start.elapsed(),
        })
    } else {
        Err(RestoreError::Failed {
            host: host.to_string(),
            said: format!("the restore failed: {}", opts.redact(&out.stderr_text())),
        })
    }
}

/// The preview from what the preview script printed, when it holds
/// what the request restores.
fn checked_preview(
    job: &Job,
    req: &Request,
    out: &crate::transport::Output,
    opts: &engine::Options,
) -> Result<Preview, RestoreError> {
    let failed = |said: String| RestoreError::Failed {
        host: req.host.clone(),
        said,
    };
    if !out.success() {
        return Err(failed(format!(
            "restic could not list {} of job {}: {}",
            req.snapshot,
            job.name,
            opts.redact(&out.stderr_text())
        )));
    }
    let preview = parse_preview(&String::from_utf8_lossy(&out.stdout)).map_err(failed)?;
    if matches!(req.what, What::Database { .. }) && preview.files == 0 {
        return Err(RestoreError::NoDump {
            short_id: preview.short_id,
            job: job.name.clone(),
        });
    }
    Ok(preview)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diag::Origin;

    fn job(pg: Option<&str>) -> Job {
        Job {
            name: "nightly".into(),
            cron: "0 1 * * *".into(),
            timezone: "UTC".into(),
            hosts: vec!["db".into()],
            window: None,
            max_parallel: 1,
            pause_secs: 0,
            stop_on_failure: true,
            health: vec![],
            timeout_secs: 600,
            catch_up_secs: None,
            alert: crate::model::notify::EventKind::JobFailed,
            kind: JobKind::Backup {
                repository: "/srv/restic/{{ host.name }}".into(),
                password_secret: "restic".into(),
                paths: vec!["/srv/data".into()],
                pg_dump: pg.map(|db| crate::model::desired::PgDump {
                    database: db.into(),
                    container: None,
                    user: "postgres".into(),
                }),
                sftp: None,
                keep_daily: 7,
                keep_weekly: 4,
                keep_monthly: 3,
                check: false,
            },
            origin: Origin::file("schedules.yaml"),
        }
    }

    #[test]
    fn what_reaches_the_script_is_checked_first() {
        let j = job(None);
        let bad = |snap: &str, path: Option<&str>, target: Option<&str>| {
            Request::new(&j, "db", snap, path, target, None, false).unwrap_err()
        };
        for snap in ["latest; reboot", "$(id)", "abc", "../x"] {
            assert!(
                matches!(bad(snap, None, None), RestoreError::Invalid(m) if m.contains("not a snapshot"))
            );
        }
        assert!(matches!(
            bad("latest", Some("srv/data"), None),
            RestoreError::Invalid(_)
        ));
        assert!(matches!(
            bad("latest", None, Some("/tmp/../etc")),
            RestoreError::Invalid(_)
        ));
        assert!(Request::new(&j, "web", "latest", None, None, None, false).is_err());
        let pg = job(Some("app"));
        let e = Request::new(
            &pg,
            "db",
            "latest",
            None,
            None,
            Some("x'; DROP DATABASE app; --"),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, RestoreError::Invalid(m) if m.contains("not a database name")));
        // Names that pass are quoted all the same.
        let r = Request::new(&j, "db", "latest", Some("/srv/da ta"), None, None, false).unwrap();
        let secrets = ResticSecrets {
            password: "pw".into(),
            sftp_key: None,
        };
        let script = restore_script(&j, &r, &secrets, "0123abcd");
        assert!(script.contains("--include '/srv/da ta'"), "{script}");
    }

    fn fleet() -> Fleet {
        let mut tree = crate::source::ConfigTree::default();
        tree.insert_file("tidekeeper.yaml", b"fleet: f\n".to_vec());
        tree.insert_file(
            "hosts/db.yaml",
            b"provider: existing\naddress: 10.0.0.9\n".to_vec(),
        );
        tree.insert_file(
            "schedules.yaml",
            b"jobs:\n  - {name: tidy, cron: \"0 3 * * *\", hosts: {names: [db]}, command: {run: x}}\n"
                .to_vec(),
        );
        let mut fleet = crate::model::load(&tree).unwrap_or_else(|d| panic!("{d}"));
        fleet.jobs.push(job(None));
        fleet
    }

    #[test]
    fn only_a_backup_job_of_the_fleet_is_restored_and_its_password_must_open() {
        let mut f = fleet();
        let e = super::job(&f, "nightli").unwrap_err();
        assert_eq!(e.to_string(), "no job named \"nightli\"");
        assert_eq!(e.help().as_deref(), Some("backup jobs are: nightly"));
        let tidy = super::job(&f, "tidy").unwrap();
        assert!(matches!(
            secrets(&f, tidy),
            Err(RestoreError::NotABackup(n, _)) if n == "tidy"
        ));
        let nightly = super::job(&f, "nightly").unwrap().clone();
        let e = secrets(&f, &nightly).unwrap_err();
        assert_eq!(e, RestoreError::NoPassword("restic".into()));
        assert!(e.help().unwrap().contains("TIDEKEEPER_AGE_IDENTITY"));
        f.secret_values.0.insert("restic".into(), "pw".into());
        assert_eq!(secrets(&f, &nightly).unwrap().password, "pw");
    }

    #[test]
    fn a_preview_must_hold_what_is_restored() {
        let out = |status: u32, stdout: &str, stderr: &str| crate::transport::Output {
            status: Some(status),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let opts = engine::Options {
            redactions: vec!["s3cret".into()],
            ..Default::default()
        };
        let j = job(Some("app"));
        let r = Request::new(&j, "db", "latest", None, None, None, false).unwrap();
        let e = checked_preview(&j, &r, &out(1, "", "wrong password s3cret"), &opts).unwrap_err();
        assert!(e.is_invalid());
        assert!(
            e.to_string()
                .starts_with("db: restic could not list latest of job nightly: wrong password"),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let snapshot = r#"{"id":"0123abcd99","short_id":"0123abcd","struct_type":"snapshot"}"#;
        assert_eq!(
            checked_preview(&j, &r, &out(0, snapshot, ""), &opts).unwrap_err(),
            RestoreError::NoDump {
                short_id: "0123abcd".into(),
                job: "nightly".into()
            }
        );
        let dump = format!(
            "{snapshot}\n{}",
            r#"{"type":"file","path":"/app.sql","size":9,"struct_type":"node"}"#
        );
        assert_eq!(
            checked_preview(&j, &r, &out(0, &dump, ""), &opts)
                .unwrap()
                .files,
            1
        );
    }

    #[test]
    fn a_preview_counts_what_restic_lists() {
        let out = r#"{"time":"2026-11-28T01:30:02.1+00:00","paths":["/srv/data"],"hostname":"db","id":"0123abcd99","short_id":"0123abcd","struct_type":"snapshot"}
{"name":"data","type":"dir","path":"/srv/data","struct_type":"node"}
{"name":"a.txt","type":"file","path":"/srv/data/a.txt","size":18,"struct_type":"node"}
{"name":"b.conf","type":"file","path":"/srv/data/b.conf","size":2048,"struct_type":"node"}
"#;
        let p = parse_preview(out).unwrap();
        assert_eq!((p.files, p.dirs, p.bytes), (2, 1, 2066));
        assert_eq!(p.snapshot, "0123abcd99");
        let j = job(None);
        let r = Request::new(&j, "db", "latest", Some("/srv/data"), None, None, false).unwrap();
        let text = render_preview(&j, &r, &p);
        assert!(
            text.contains("snapshot 0123abcd of 2026-11-28 01:30:02"),
            "{text}"
        );
        assert!(
            text.contains(
                "restores 2 files and 1 directories (2.0 KiB) under /srv/data into /: in place"
            ),
            "{text}"
        );
        assert!(parse_preview("").is_err());
    }
}
