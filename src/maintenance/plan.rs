//! When maintenance runs, and what it runs on a host. Pure: callers pass
//! the clock; scripts are text.

use chrono::{DateTime, Duration, Utc};

use crate::model::desired::{Job, JobKind, PgDump, RebootPolicy, UpgradeMode};
use crate::schedule::{Window, next_run, parse_cron, parse_tz};
use crate::transport::shell_quote as q;

/// The next scheduled run of `job` strictly after `after`. A power job also
/// runs when a running period ends (to stop the servers).
pub(crate) fn next(job: &Job, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = next_start(job, after);
    let end = power_period(job, after)
        .map(|(_, end)| end)
        .filter(|e| *e > after);
    match (start, end) {
        (Some(s), Some(e)) => Some(s.min(e)),
        (s, e) => s.or(e),
    }
}

/// The next cron time of `job` strictly after `after`.
fn next_start(job: &Job, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse_cron(&job.cron).ok()?;
    let tz = parse_tz(&job.timezone).ok()?;
    next_run(&cron, tz, after)
}

/// For a power job: the running period `[start, end)` that covers `t` — the
/// latest cron start at or before `t` whose `running_for` has not run out.
pub(crate) fn power_period(job: &Job, t: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let JobKind::Power { running_for_secs } = job.kind else {
        return None;
    };
    let d = Duration::seconds(running_for_secs as i64);
    let mut starts = Vec::new();
    let mut at = t - d;
    while let Some(n) = next_start(job, at) {
        if n > t {
            break;
        }
        starts.push(n);
        at = n;
    }
    starts.last().map(|s| (*s, *s + d))
}

/// Hours a power job keeps its servers up in the 30 days from `from`
/// (overlapping periods counted once).
pub(crate) fn power_hours(job: &Job, from: DateTime<Utc>) -> f64 {
    let JobKind::Power { running_for_secs } = job.kind else {
        return 0.0;
    };
    let d = Duration::seconds(running_for_secs as i64);
    let to = from + Duration::days(30);
    let mut covered = Duration::zero();
    let mut until = from;
    let mut at = from - d;
    while let Some(s) = next_start(job, at) {
        if s >= to {
            break;
        }
        let (a, b) = (s.max(until), (s + d).min(to));
        if b > a {
            covered += b - a;
            until = b;
        }
        at = s;
    }
    covered.num_seconds() as f64 / 3600.0
}

/// Every scheduled run in `(from, to]`.
pub(crate) fn runs_between(
    job: &Job,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(n) = next(job, t) {
        if n > to {
            break;
        }
        out.push(n);
        t = n;
    }
    out
}

/// At start-up: a run missed while tidekeeper was down (after `last_run`,
/// before `now`) is caught up once if it was due within the job's grace.
pub(crate) fn catch_up(
    job: &Job,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let grace = Duration::seconds(job.catch_up_secs? as i64);
    let from = last_run.unwrap_or(now - grace).max(now - grace);
    runs_between(job, from, now).last().copied()
}

/// Why a job (or the next host of a job) may not start now: the window is
/// closed, or would close before the job's timeout.
pub(crate) fn window_refusal(
    window: Option<&Window>,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Option<String> {
    let w = window?;
    match w.open_until(now) {
        None => Some(format!("outside its window ({} {})", days(w), w.timezone)),
        Some(end) if now + timeout > end => Some(format!(
            "the window closes at {} and the job may take up to {} min",
            end.format("%H:%M UTC"),
            timeout.num_minutes()
        )),
        Some(_) => None,
    }
}

fn days(w: &Window) -> String {
    format!("{}-{}", w.start.format("%H:%M"), w.end.format("%H:%M"))
}

/// What a job does on one host, as a shell script run under the host's
/// tidekeeper lock (so apply and maintenance never overlap). Output lines
/// `@@reboot` ask the runner to reboot the host afterwards.
/// The tag of a `pg_dump` snapshot until the dump is known to be whole.
const PARTIAL: &str = "tidekeeper-partial";

/// The start of every maintenance script: strict variables and the host's
/// tidekeeper lock, so applies, jobs and restores never overlap.
pub(crate) fn locked_prelude() -> String {
    String::from(
        "set -u\nexport DEBIAN_FRONTEND=noninteractive\nmkdir -p /var/lib/tidekeeper\nexec 9>/var/lib/tidekeeper/lock\n\
         if ! flock -w 600 9; then echo 'another tidekeeper run held the host for 10 minutes' >&2; exit 75; fi\n",
    )
}

/// A backup job's restic repository for `host` (`{{ host.name }}` filled in).
pub(crate) fn repository_of(repository: &str, host: &str) -> String {
    repository
        .replace("{{ host.name }}", host)
        .replace("{{host.name}}", host)
}

/// The decrypted secrets a backup job's scripts need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResticSecrets {
    pub password: String,
    /// The sftp login key, when the job names one.
    pub sftp_key: Option<String>,
}

impl ResticSecrets {
    /// A backup job's secrets from the fleet's decrypted ones; `Err` names
    /// the secret that is not there.
    pub(crate) fn of(
        job: &Job,
        values: &std::collections::BTreeMap<String, String>,
    ) -> Result<ResticSecrets, String> {
        let JobKind::Backup {
            password_secret,
            sftp,
            ..
        } = &job.kind
        else {
            return Err(String::new());
        };
        let get = |name: &String| values.get(name).cloned().ok_or_else(|| name.clone());
        Ok(ResticSecrets {
            password: get(password_secret)?,
            sftp_key: sftp.as_ref().map(|s| get(&s.key_secret)).transpose()?,
        })
    }
}

/// Shell lines that point restic at a backup job's repository for `host`:
/// the password (and an sftp key and known hosts) in files removed on exit,
/// never in the environment of other processes.
pub(crate) fn restic_env(job: &Job, host: &str, secrets: &ResticSecrets) -> String {
    let JobKind::Backup {
        repository, sftp, ..
    } = &job.kind
    else {
        return String::new();
    };
    let repo = repository_of(repository, host);
    let mut s = format!(
        "pw=$(mktemp) && key=$(mktemp) && kh=$(mktemp) || exit 1\n\
         trap 'rm -f \"$pw\" \"$key\" \"$kh\"' EXIT\nprintf '%s' {} > \"$pw\"\n\
         export RESTIC_REPOSITORY={} RESTIC_PASSWORD_FILE=\"$pw\"\n",
        q(&secrets.password),
        q(&repo)
    );
    if let (Some(sftp), Some(key), Some((target, url_port))) = (
        sftp,
        &secrets.sftp_key,
        crate::model::check::sftp_target(&repo),
    ) {
        // mktemp makes files only their owner reads; ssh wants the key so.
        // restic's own ssh call would trust ~/.ssh; this one trusts only
        // the host keys the config names.
        let port = sftp.port.or(url_port).unwrap_or(22);
        // One login first: restic hides ssh's reason ("Host key
        // verification failed") behind "unable to start the sftp session".
        s.push_str(&format!(
            "printf '%s\\n' {} > \"$key\"\nprintf '%s\\n' {} > \"$kh\"\n\
             sftp_ssh=\"ssh -i $key -o IdentitiesOnly=yes -o UserKnownHostsFile=$kh -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -p {port} {target}\"\n\
             why=$($sftp_ssh -s sftp </dev/null 2>&1 >/dev/null) || {{ echo \"cannot log in to {target} (port {port}) for the backup: $(printf '%s' \"$why\" | tail -n 1)\" >&2; exit 1; }}\n\
             restic() {{ command restic -o sftp.command=\"$sftp_ssh -s sftp\" \"$@\"; }}\n",
            q(key.trim_end()),
            q(&sftp.known_hosts),
        ));
    }
    s
}

/// An apt upgrade, and whether it asks the runner for a reboot.
fn upgrade_script(reboot: RebootPolicy, unattended: bool, mode: UpgradeMode) -> String {
    let mut s = String::new();
    if unattended {
        s.push_str("unattended-upgrade -v || exit $?\n");
    } else {
        // Held packages (apt-mark hold) stay as they are: apt-get
        // changes them only when told to, which this never does.
        let verb = match mode {
            UpgradeMode::Upgrade => "upgrade",
            UpgradeMode::FullUpgrade => "full-upgrade",
        };
        s.push_str(&format!(
            "apt-get update -qq || exit $?\n\
             held=$(apt-mark showhold | tr '\\n' ' ')\n\
             [ -z \"$held\" ] || echo \"held, left as they are: $held\"\n\
             apt-get -y -q -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef {verb} || exit $?\n",
        ));
    }
    if reboot != RebootPolicy::Never {
        // The boot this ran in, so the runner can tell when a reboot is over.
        s.push_str("printf '@@boot %s\\n' \"$(cat /proc/sys/kernel/random/boot_id)\"\n");
    }
    match reboot {
        RebootPolicy::Never => {}
        RebootPolicy::IfRequired => {
            s.push_str("[ -f /var/run/reboot-required ] && echo @@reboot\n")
        }
        RebootPolicy::Always => s.push_str("echo @@reboot\n"),
    }
    s.push_str("exit 0\n");
    s
}

/// `pgrun CMD ARGS…` runs a PostgreSQL client as the dump's user, on the
/// host or inside its container (found by name or compose labels).
pub(crate) fn pg_prelude(pg: &PgDump) -> String {
    match &pg.container {
        None => format!(
            "pgrun() {{ (cd / && runuser -u {} -- \"$@\"); }}\n",
            q(&pg.user)
        ),
        Some(c) => format!(
            "cid=$(docker ps -q {} | head -n1)\n\
             [ -n \"$cid\" ] || {{ echo \"container {c} is not running: the database cannot be reached\" >&2; exit 1; }}\n\
             pgrun() {{ docker exec -i -u {} \"$cid\" \"$@\"; }}\n",
            crate::engine::health::container_filter(c),
            q(&pg.user)
        ),
    }
}

/// A PostgreSQL dump into restic, kept only when the dump succeeded.
fn pg_dump_script(pg: &PgDump, host: &str) -> String {
    // sh has no pipefail: the dump's status goes through a file.
    // The snapshot is tagged partial until the dump is known to have
    // succeeded, and forgotten when it failed, so a broken dump is never
    // kept as a good backup.
    let db = &pg.database;
    format!(
        "{prelude}st=$(mktemp) || exit 1\n\
         {{ pgrun pg_dump {dbq}; echo $? > \"$st\"; }} \
         | restic backup -q --host {h} --tag {PARTIAL} --stdin --stdin-filename {file}\n\
         saved=$?; dumped=$(cat \"$st\"); rm -f \"$st\"\n\
         if [ \"$dumped\" != 0 ]; then\n\
         \x20 ids=$(restic snapshots -q --host {h} --tag {PARTIAL} --json | grep -o '\"id\":\"[0-9a-f]*\"' | cut -d'\"' -f4)\n\
         \x20 [ -z \"$ids\" ] || restic forget -q $ids >/dev/null\n\
         \x20 echo \"pg_dump {db} failed (exit $dumped): the partial dump was not kept\" >&2\n\
         \x20 exit 1\n\
         fi\n\
         [ \"$saved\" = 0 ] || exit \"$saved\"\n\
         restic tag -q --host {h} --tag {PARTIAL} --remove {PARTIAL} >/dev/null || exit $?\n",
        prelude = pg_prelude(pg),
        dbq = q(db),
        h = q(host),
        file = q(&format!("{db}.sql")),
    )
}

pub(crate) fn host_script(
    job: &Job,
    host: &str,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let mut s = locked_prelude();
    match &job.kind {
        JobKind::Command { run } => {
            s.push_str(&format!("sh -c {} </dev/null\n", q(run)));
        }
        JobKind::Upgrade {
            reboot,
            unattended,
            mode,
        } => {
            s.push_str(&upgrade_script(*reboot, *unattended, *mode));
        }
        JobKind::Backup {
            paths,
            pg_dump,
            keep_daily,
            keep_weekly,
            keep_monthly,
            check,
            ..
        } => {
            let secrets = ResticSecrets::of(job, secrets).map_err(|name| {
                format!("the backup needs its secret {name:?} decrypted (no age identity)")
            })?;
            s.push_str(&restic_env(job, host, &secrets));
            s.push_str("restic cat config >/dev/null 2>&1 || restic init -q || exit $?\n");
            let list: Vec<String> = paths.iter().map(|p| q(p)).collect();
            if !list.is_empty() {
                s.push_str(&format!(
                    "restic backup -q --host {} {} || exit $?\n",
                    q(host),
                    list.join(" ")
                ));
            }
            if let Some(db) = pg_dump {
                s.push_str(&pg_dump_script(db, host));
            }
            s.push_str(&format!(
                "restic forget -q --host {} --prune --keep-daily {keep_daily} --keep-weekly {keep_weekly} --keep-monthly {keep_monthly} || exit $?\n",
                q(host)
            ));
            if *check {
                s.push_str("restic check -q || exit $?\n");
            }
        }
        JobKind::Snapshot { .. } | JobKind::Power { .. } => {
            return Err(format!(
                "{} jobs act through the cloud provider, not on the host",
                job.kind.name()
            ));
        }
    }
    Ok(s)
}

pub(crate) use crate::engine::health::health_script;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diag::Origin;
    use chrono::TimeZone;

    fn job(cron: &str, tz: &str) -> Job {
        Job {
            name: "j".into(),
            cron: cron.into(),
            timezone: tz.into(),
            hosts: vec![],
            window: None,
            max_parallel: 1,
            pause_secs: 0,
            stop_on_failure: true,
            health: vec![],
            timeout_secs: 3600,
            catch_up_secs: Some(6 * 3600),
            alert: crate::model::notify::EventKind::JobFailed,
            kind: JobKind::Command { run: "true".into() },
            origin: Origin::file("schedules.yaml"),
        }
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn spring_forward_runs_once_berlin_and_new_york() {
        // 2026-03-29 Berlin: 02:00 → 03:00; 02:30 does not exist that day.
        let j = job("30 2 * * *", "Europe/Berlin");
        let runs = runs_between(&j, utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 12, 0));
        assert_eq!(runs.len(), 1, "{runs:?}");
        // 2026-03-08 New York: 02:00 → 03:00.
        let j = job("30 2 * * *", "America/New_York");
        let runs = runs_between(&j, utc(2026, 3, 7, 17, 0), utc(2026, 3, 8, 17, 0));
        assert_eq!(runs.len(), 1, "{runs:?}");
    }

    #[test]
    fn fall_back_runs_once_berlin_and_new_york() {
        // 2026-10-25 Berlin: 03:00 → 02:00; 02:30 happens twice on the wall clock.
        let j = job("30 2 * * *", "Europe/Berlin");
        let runs = runs_between(&j, utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 12, 0));
        assert_eq!(runs.len(), 1, "{runs:?}");
        // 2026-11-01 New York: 02:00 → 01:00; 01:30 happens twice.
        let j = job("30 1 * * *", "America/New_York");
        let runs = runs_between(&j, utc(2026, 10, 31, 17, 0), utc(2026, 11, 1, 17, 0));
        assert_eq!(runs.len(), 1, "{runs:?}");
        // And every other day of the year still runs once a day.
        let j = job("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            runs_between(&j, utc(2026, 1, 1, 0, 0), utc(2027, 1, 1, 0, 0)).len(),
            365
        );
    }

    #[test]
    fn first_sunday_of_the_month_the_documented_way() {
        let j = job("0 3 * * SUN#1", "UTC");
        assert_eq!(
            next(&j, utc(2026, 11, 23, 0, 0)),
            Some(utc(2026, 12, 6, 3, 0))
        );
        assert_eq!(
            next(&j, utc(2026, 10, 31, 0, 0)),
            Some(utc(2026, 11, 1, 3, 0))
        );
        // The POSIX trap: "1-7 * 0" is days 1-7 OR any Sunday.
        let trap = job("0 3 1-7 * 0", "UTC");
        assert_eq!(
            runs_between(&trap, utc(2026, 11, 1, 0, 0), utc(2026, 12, 1, 0, 0)).len(),
            7 + 4
        );
    }

    #[test]
    fn the_29th_of_february() {
        let j = job("0 0 29 2 *", "UTC");
        assert_eq!(
            next(&j, utc(2026, 1, 1, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0))
        );
    }

    #[test]
    fn window_boundaries() {
        let w = Window::parse("Sun 02:00-06:00 UTC").unwrap();
        let hour = Duration::hours(1);
        // 2026-11-29 is a Sunday.
        assert!(
            window_refusal(Some(&w), utc(2026, 11, 29, 1, 59), hour)
                .unwrap()
                .contains("outside")
        );
        assert_eq!(
            window_refusal(Some(&w), utc(2026, 11, 29, 2, 0), hour),
            None
        );
        assert_eq!(
            window_refusal(Some(&w), utc(2026, 11, 29, 5, 0), hour),
            None,
            "ends exactly at the close"
        );
        assert!(
            window_refusal(Some(&w), utc(2026, 11, 29, 5, 1), hour)
                .unwrap()
                .contains("closes at 06:00")
        );
        assert!(
            window_refusal(Some(&w), utc(2026, 11, 29, 6, 0), hour)
                .unwrap()
                .contains("outside")
        );
        assert_eq!(window_refusal(None, utc(2026, 11, 29, 6, 0), hour), None);
    }

    fn power(cron: &str, tz: &str, hours: u64) -> Job {
        let mut j = job(cron, tz);
        j.kind = JobKind::Power {
            running_for_secs: hours * 3600,
        };
        j
    }

    #[test]
    fn a_power_schedule_is_on_for_its_hours_and_wakes_at_both_ends() {
        // Up at 08:00 Berlin for 5 hours, every day.
        let j = power("0 8 * * *", "Europe/Berlin", 5);
        let winter = utc(2026, 1, 15, 6, 59);
        assert_eq!(power_period(&j, winter), None, "07:59 Berlin: off");
        let (start, end) = power_period(&j, utc(2026, 1, 15, 7, 0)).unwrap();
        assert_eq!(
            (start, end),
            (utc(2026, 1, 15, 7, 0), utc(2026, 1, 15, 12, 0))
        );
        assert_eq!(
            power_period(&j, utc(2026, 1, 15, 12, 0)),
            None,
            "the end is exclusive"
        );
        // The daemon wakes to start the servers, then to stop them.
        assert_eq!(next(&j, winter), Some(utc(2026, 1, 15, 7, 0)));
        assert_eq!(
            next(&j, utc(2026, 1, 15, 7, 0)),
            Some(utc(2026, 1, 15, 12, 0))
        );
        assert_eq!(
            next(&j, utc(2026, 1, 15, 12, 0)),
            Some(utc(2026, 1, 16, 7, 0))
        );
        // Across the spring-forward night the start is 08:00 local, 06:00 UTC.
        assert_eq!(
            power_period(&j, utc(2026, 3, 29, 6, 30)).map(|p| p.0),
            Some(utc(2026, 3, 29, 6, 0))
        );
        assert!((power_hours(&j, utc(2026, 1, 1, 0, 0)) - 150.0).abs() < 1e-9);
        // Periods that overlap are counted once: every 4 hours for 6 hours is always on.
        let always = power("0 */4 * * *", "UTC", 6);
        assert!((power_hours(&always, utc(2026, 1, 1, 0, 0)) - 720.0).abs() < 1e-9);
    }

    #[test]
    fn catch_up_after_a_gap() {
        let j = job("30 1 * * *", "UTC");
        // Down from 00:00 to 05:00: the 01:30 run is caught up once.
        assert_eq!(
            catch_up(&j, Some(utc(2026, 11, 23, 0, 0)), utc(2026, 11, 23, 5, 0)),
            Some(utc(2026, 11, 23, 1, 30))
        );
        // Down for three days: only the latest missed run, once.
        assert_eq!(
            catch_up(&j, Some(utc(2026, 11, 20, 0, 0)), utc(2026, 11, 23, 5, 0)),
            Some(utc(2026, 11, 23, 1, 30))
        );
        // Missed longer ago than the grace (6 h): not caught up.
        assert_eq!(
            catch_up(&j, Some(utc(2026, 11, 22, 0, 0)), utc(2026, 11, 23, 9, 0)),
            None
        );
        // Already ran: nothing to catch up.
        assert_eq!(
            catch_up(&j, Some(utc(2026, 11, 23, 1, 30)), utc(2026, 11, 23, 5, 0)),
            None
        );
    }
}
