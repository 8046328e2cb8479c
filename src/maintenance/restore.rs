//! `tidekeeper restore`: a backup job's snapshot back onto its host, files
//! (restic restore) or a `pg_dump` database (loaded with psql). First a
//! preview that names the snapshot and what it holds, then the restore of
//! exactly that snapshot (a `latest` resolved once, so a backup finishing in
//! between cannot change what is restored). Scripts and parsing are pure.

use serde::Serialize;

use super::plan::{locked_prelude, repository_of, restic_env};
use crate::model::check;
use crate::model::desired::{Job, JobKind};
use crate::transport::shell_quote as q;

/// What to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
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
pub struct Request {
    pub host: String,
    /// `latest` or a snapshot id (hex, 8 to 64 digits).
    pub snapshot: String,
    pub what: What,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("job {0:?} is a {1} job; only backup jobs can be restored")]
    NotABackup(String, &'static str),
    #[error("{0}")]
    Invalid(String),
}

/// What the snapshot holds, as the preview found it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Preview {
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
pub const SAMPLE: usize = 20;

impl Request {
    /// Check what came from the command line against `job`; everything
    /// here reaches a shell script (quoted, and checked first).
    pub fn new(
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
            (Some(db), _) if path.is_none() && target.is_none() => {
                let into = database.unwrap_or(db);
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
                    pg_dump: Some(db), ..
                },
            ) => Some(format!("/{db}.sql")),
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
pub fn preview_script(job: &Job, req: &Request, password: &str) -> String {
    let mut s = locked_prelude();
    s.push_str(&restic_env(password, &repo(job, &req.host)));
    let path = req.listed(job).map(|p| q(&p)).unwrap_or_default();
    s.push_str(&format!(
        "exec restic ls --json --recursive --host {} {} {path}\n",
        q(&req.host),
        q(&req.snapshot)
    ));
    s
}

/// Parse restic's `ls --json` lines.
pub fn parse_preview(out: &str) -> Result<Preview, String> {
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
pub fn restore_script(job: &Job, req: &Request, password: &str, id: &str) -> String {
    let mut s = locked_prelude();
    s.push_str(&restic_env(password, &repo(job, &req.host)));
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
            let dump = req.listed(job).unwrap_or_default();
            s.push_str(
                "pg() { (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 \"$@\"); }\n",
            );
            let psql = "pg";
            let db = q(into);
            if *replace {
                s.push_str(&format!(
                    "(cd / && runuser -u postgres -- dropdb --if-exists {db}) || exit $?\n"
                ));
            }
            // Plain SQL dumps create their tables: loading one into a
            // database that has tables would fail half-way, so refuse first.
            s.push_str(&format!(
                "exists=$({psql} -tA -c \"SELECT 1 FROM pg_database WHERE datname = '{into}'\") || exit $?\n\
                 if [ \"$exists\" = 1 ]; then\n\
                 \x20 n=$({psql} -tA -d {db} -c \"SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')\") || exit $?\n\
                 \x20 if [ \"$n\" != 0 ]; then echo \"database {into} already has $n tables: restore into another (--database NAME) or replace it (--replace)\" >&2; exit 1; fi\n\
                 else\n\
                 \x20 (cd / && runuser -u postgres -- createdb {db}) || exit $?\n\
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
pub fn render_preview(job: &Job, req: &Request, p: &Preview) -> String {
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
                pg_dump: pg.map(String::from),
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
        let script = restore_script(&j, &r, "pw", "0123abcd");
        assert!(script.contains("--include '/srv/da ta'"), "{script}");
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
