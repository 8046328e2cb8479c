//! Stage 6: schedules.yaml's maintenance jobs and tidekeeper.yaml's apply
//! windows, checked against the hosts.

use super::*;
use crate::model::notify::EventKind;

/// What a job is checked against: the hosts resolved before it.
pub(super) struct Fleetwide<'h> {
    pub hosts: &'h [Host],
    pub groups: &'h BTreeMap<String, Vec<String>>,
    pub secrets: &'h BTreeSet<String>,
    /// Host files that failed to parse: jobs naming them get no second error.
    pub broken_hosts: &'h BTreeSet<String>,
}

impl Loader<'_> {
    pub(super) fn jobs(&mut self, s: raw::SchedulesFile, fleet: &Fleetwide) -> Vec<Job> {
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut out = Vec::new();
        for j in s.jobs {
            let o = at(SCHEDULES_FILE, &j.name);
            if let Some(first) = names.insert(j.name.value.clone(), o.clone()) {
                self.err(o.error(
                    "duplicate-name",
                    format!("job {:?} is already defined at {first}", j.name.value),
                ));
            }
            out.extend(self.job(&j, fleet));
        }
        out
    }

    /// One job: its schedule, window, limits, hosts and kind.
    fn job(&mut self, j: &raw::JobSpec, fleet: &Fleetwide) -> Option<Job> {
        let file = SCHEDULES_FILE;
        let hosts = fleet.hosts;
        let o = at(file, &j.name);
        if let Err(e) = check::host_name(&j.name.value) {
            self.err(o.error("invalid-name", format!("job name: {e}")));
        }
        let cron_ok = match schedule::parse_cron(&j.cron.value) {
            Ok(_) => true,
            Err(e) => {
                self.err(at(file, &j.cron).error("invalid-cron", e).with_help("see docs/config.md#schedules for the syntax; e.g. \"0 3 * * 0\" is Sundays at 03:00"));
                false
            }
        };
        let timezone = opt(&j.timezone).unwrap_or_else(|| "UTC".into());
        if let Some(tz) = &j.timezone
            && let Err(e) = schedule::parse_tz(&tz.value)
        {
            self.err(at(file, tz).error("invalid-timezone", e));
        }
        let window = j
            .window
            .as_ref()
            .and_then(|w| match Window::parse(&w.value) {
                Ok(w) => Some(w),
                Err(e) => {
                    self.err(at(file, w).error("invalid-window", e));
                    None
                }
            });
        let mut dur = |v: &Option<S<String>>, default: Option<u64>| -> Option<u64> {
            match v {
                None => default,
                Some(v) => match check::duration(&v.value) {
                    Ok(d) => Some(d.as_secs()),
                    Err(e) => {
                        self.err(at(file, v).error("invalid-duration", e));
                        default
                    }
                },
            }
        };
        let timeout = dur(&j.timeout, Some(3600)).unwrap_or(3600);
        let catch_up = dur(&j.catch_up, None);
        let pause = dur(&j.rolling.pause, Some(0)).unwrap_or(0);
        if let (Some(w), Some(t)) = (&window, &j.timeout)
            && timeout as i64 > w.length().num_seconds()
        {
            self.err(at(file, t).error("window-too-short", format!(
                        "timeout {} is longer than the window {:?} ({} min); the job could never finish inside it",
                        t.value, j.window.as_ref().map(|w| w.value.clone()).unwrap_or_default(), w.length().num_minutes())));
        }
        let health = self.health_checks(file, &o, &j.health, None);
        let alert = self.job_alert(j);
        let selected = self.job_hosts(j, fleet);
        let kind = self.job_kind(j, &o, &selected, hosts, fleet.secrets)?;
        self.confined_hosts(j, &kind, &selected, hosts);
        if !cron_ok {
            return None;
        }
        Some(Job {
            name: j.name.value.clone(),
            cron: j.cron.value.clone(),
            timezone,
            hosts: selected,
            window,
            max_parallel: j
                .rolling
                .max_parallel
                .as_ref()
                .map(|v| v.value.max(1))
                .unwrap_or(1),
            pause_secs: pause,
            stop_on_failure: j
                .rolling
                .stop_on_failure
                .as_ref()
                .map(|v| v.value)
                .unwrap_or(true),
            health,
            timeout_secs: timeout,
            catch_up_secs: catch_up,
            alert,
            kind,
            origin: o,
        })
    }

    /// A host confined under `root:` is a directory of this machine, not a
    /// machine: commands run there with `$TK_ROOT` and the root as their
    /// working directory, like role commands; a backup or an upgrade would
    /// act on the machine itself, so it is refused here (issue 33).
    fn confined_hosts(
        &mut self,
        j: &raw::JobSpec,
        kind: &JobKind,
        selected: &[String],
        hosts: &[Host],
    ) {
        if !matches!(kind, JobKind::Backup { .. } | JobKind::Upgrade { .. }) {
            return;
        }
        for h in hosts.iter().filter(|h| selected.contains(&h.name)) {
            if let Some(root) = h
                .root
                .as_deref()
                .filter(|r| !r.trim_matches('/').is_empty())
            {
                self.err(
                    at(SCHEDULES_FILE, &j.name)
                        .error(
                            "job-on-confined-host",
                            format!(
                                "job {:?} ({}) would run on this machine itself, but host {:?} is confined under {root:?}",
                                j.name.value,
                                kind.name(),
                                h.name
                            ),
                        )
                        .with_help("leave the host out of the job's hosts:, or use a command job, which runs inside the root with $TK_ROOT"),
                );
            }
        }
    }

    /// `alert:`: what the job's failure is reported as.
    fn job_alert(&mut self, j: &raw::JobSpec) -> EventKind {
        let Some(a) = &j.alert else {
            return EventKind::JobFailed;
        };
        match EventKind::parse(&a.value) {
            Some(k @ (EventKind::JobFailed | EventKind::HealthThreshold)) => k,
            _ => {
                self.err(
                    at(SCHEDULES_FILE, a)
                        .error("invalid-value", format!("alert {:?} is not what a job's failure can be reported as", a.value))
                        .with_help("job_failed (the default) or health_threshold (a job that checks thresholds)"),
                );
                EventKind::JobFailed
            }
        }
    }

    /// The hosts a job selects: by name (or group name), by group, by
    /// labels; all hosts when it names none. Unknown names are errors.
    fn job_hosts(&mut self, j: &raw::JobSpec, fleet: &Fleetwide) -> Vec<String> {
        let owner = format!("job {:?}", j.name.value);
        self.select_hosts(
            SCHEDULES_FILE,
            &owner,
            &j.hosts,
            at(SCHEDULES_FILE, &j.name),
            fleet,
        )
    }

    /// The hosts a selector (`hosts:` of a job or an apply window) chooses:
    /// by name (or group name), by group, by labels; all hosts when it names
    /// none. Unknown names are errors, said of `owner` in `file`.
    pub(super) fn select_hosts(
        &mut self,
        file: &str,
        owner: &str,
        sel: &raw::HostSelector,
        o: Origin,
        fleet: &Fleetwide,
    ) -> Vec<String> {
        let (hosts, groups, broken_hosts) = (fleet.hosts, fleet.groups, fleet.broken_hosts);
        let mut selected: Vec<String> = Vec::new();
        for n in &sel.names {
            let known = hosts.iter().any(|h| h.name == n.value) || groups.contains_key(&n.value);
            if !known && !broken_hosts.contains(&n.value) {
                let all: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                let d = at(file, n).error(
                    "unknown-host",
                    format!("{owner} selects unknown host {:?}", n.value),
                );
                let d = match closest(&n.value, &all) {
                    Some(c) => d.with_help(format!("did you mean {c:?}?")),
                    None => d.with_help("hosts are defined in hosts/*.yaml"),
                };
                self.err(d);
            }
        }
        for g in &sel.groups {
            if !groups.contains_key(&g.value) {
                self.err(
                    at(file, g)
                        .error(
                            "unknown-group",
                            format!("{owner} selects unknown group {:?}", g.value),
                        )
                        .with_help("groups are host files with `count: N`"),
                );
            }
        }
        let empty = sel.names.is_empty() && sel.groups.is_empty() && sel.labels.is_empty();
        for h in hosts {
            let by_name = sel
                .names
                .iter()
                .any(|n| n.value == h.name || h.group.as_deref() == Some(n.value.as_str()));
            let by_group = sel
                .groups
                .iter()
                .any(|g| h.group.as_deref() == Some(g.value.as_str()));
            let by_labels = !sel.labels.is_empty()
                && sel
                    .labels
                    .iter()
                    .all(|(k, v)| h.labels.get(k) == Some(&v.value));
            if empty || by_name || by_group || by_labels {
                selected.push(h.name.clone());
            }
        }
        if selected.is_empty() && !hosts.is_empty() && broken_hosts.is_empty() {
            self.err(
                o.error("no-hosts", format!("{owner} selects no hosts"))
                    .with_help("check hosts.names, hosts.groups and hosts.labels"),
            );
        }
        selected
    }

    /// `apply.apply_windows`: each entry's kind, when it is open (a cron
    /// `schedule` with a `duration`, or a weekly `window`) and the hosts it
    /// covers. Every error is located.
    pub(super) fn apply_windows(
        &mut self,
        f: &raw::FleetFile,
        fleet: &Fleetwide,
    ) -> Vec<schedule::ApplyWindow> {
        use schedule::{ApplyWindow, WindowKind};
        let file = FLEET_FILE;
        let mut out = Vec::new();
        for (i, w) in f.apply.apply_windows.iter().enumerate() {
            let kind = match w.kind.value.as_str() {
                "allow" => Some(WindowKind::Allow),
                "deny" => Some(WindowKind::Deny),
                other => {
                    self.err(
                        at(file, &w.kind)
                            .error(
                                "invalid-value",
                                format!("apply window kind {other:?} is neither allow nor deny"),
                            )
                            .with_help("allow: applies only while open; deny: never while open"),
                    );
                    None
                }
            };
            let opening = self.window_opening(w);
            let hosts = w.hosts.as_ref().map(|sel| {
                let owner = format!("apply window {}", i + 1);
                self.select_hosts(file, &owner, sel, at(file, &w.kind), fleet)
            });
            if let (Some(kind), Some(opening)) = (kind, opening) {
                out.push(ApplyWindow {
                    kind,
                    opening,
                    hosts,
                });
            }
        }
        out
    }

    /// When an apply window is open: `schedule` + `duration` (+ `timezone`),
    /// or `window`, never both.
    fn window_opening(&mut self, w: &raw::ApplyWindowSpec) -> Option<schedule::Opening> {
        let file = FLEET_FILE;
        let misplaced = |s: &Option<S<String>>| s.as_ref().map(|s| at(file, s));
        match (&w.schedule, &w.window) {
            (Some(_), Some(win)) => {
                self.err(
                    at(file, win)
                        .error(
                            "invalid-value",
                            "an apply window has a schedule or a window, not both",
                        )
                        .with_help(
                            "schedule + duration (cron), or window: \"Mon-Fri 09:00-17:00 UTC\"",
                        ),
                );
                None
            }
            (None, Some(win)) => {
                for extra in [misplaced(&w.duration), misplaced(&w.timezone)]
                    .into_iter()
                    .flatten()
                {
                    self.err(extra.error(
                        "invalid-value",
                        "duration and timezone go with schedule; a window names its own times and zone",
                    ));
                }
                match Window::parse(&win.value) {
                    Ok(window) => Some(schedule::Opening::Weekly { window }),
                    Err(e) => {
                        self.err(at(file, win).error("invalid-window", e));
                        None
                    }
                }
            }
            (Some(sched), None) => self.cron_opening(w, sched),
            (None, None) => {
                self.err(
                    at(file, &w.kind)
                        .error("missing-field", "an apply window needs schedule + duration, or window")
                        .with_help("e.g. schedule: \"0 22 * * fri\" with duration: 60h, or window: \"Sat-Sun 00:00-23:59 UTC\""),
                );
                None
            }
        }
    }

    fn cron_opening(
        &mut self,
        w: &raw::ApplyWindowSpec,
        sched: &S<String>,
    ) -> Option<schedule::Opening> {
        let file = FLEET_FILE;
        let cron = schedule::parse_cron(&sched.value)
            .map_err(|e| self.err(at(file, sched).error("invalid-cron", e)))
            .ok();
        let zone = w
            .timezone
            .as_ref()
            .map(|z| z.value.clone())
            .unwrap_or_else(|| "UTC".into());
        let tz = schedule::parse_tz(&zone)
            .map_err(|e| {
                let o = w
                    .timezone
                    .as_ref()
                    .map(|z| at(file, z))
                    .unwrap_or_else(|| at(file, sched));
                self.err(o.error("invalid-timezone", e))
            })
            .ok();
        let secs = match &w.duration {
            None => {
                self.err(
                    at(file, sched)
                        .error(
                            "missing-field",
                            "an apply window with a schedule needs a duration",
                        )
                        .with_help("how long it stays open after each start, e.g. duration: 2h"),
                );
                None
            }
            Some(d) => match check::duration(&d.value) {
                Ok(v) if v.as_secs() >= 60 => Some(v.as_secs()),
                Ok(_) => {
                    self.err(at(file, d).error(
                        "invalid-value",
                        "an apply window's duration must be at least 1m",
                    ));
                    None
                }
                Err(e) => {
                    self.err(at(file, d).error("invalid-duration", e));
                    None
                }
            },
        };
        Some(schedule::Opening::Cron {
            schedule: sched.value.clone(),
            duration_secs: secs?,
            timezone: zone,
            cron: Box::new(cron?),
            tz: tz?,
        })
    }

    /// What a job does: exactly one of backup, snapshot, upgrade, power,
    /// command.
    fn job_kind(
        &mut self,
        j: &raw::JobSpec,
        o: &Origin,
        selected: &[String],
        hosts: &[Host],
        secrets: &BTreeSet<String>,
    ) -> Option<JobKind> {
        let file = SCHEDULES_FILE;
        let kinds = [
            j.backup.is_some(),
            j.snapshot.is_some(),
            j.upgrade.is_some(),
            j.power.is_some(),
            j.command.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.err(o.error(
                "job-kind",
                format!(
                    "job {:?} needs exactly one of backup, snapshot, upgrade, power, command",
                    j.name.value
                ),
            ));
            return None;
        }
        Some(if let Some(b) = &j.backup {
            self.backup(b, secrets)
        } else if let Some(sn) = &j.snapshot {
            self.cloud_only(o, &j.name.value, "snapshot", selected, hosts);
            if sn.keep.value == 0 {
                self.err(at(file, &sn.keep).error("invalid-value", "keep must be at least 1"));
            }
            JobKind::Snapshot {
                keep: sn.keep.value,
                labels: sn
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
            }
        } else if let Some(u) = &j.upgrade {
            self.upgrade(u)
        } else if let Some(p) = &j.power {
            self.cloud_only(o, &j.name.value, "power", selected, hosts);
            let secs = match check::duration(&p.running_for.value) {
                Ok(d) if d.as_secs() > 0 && d.as_secs() < 86400 => d.as_secs(),
                Ok(_) => {
                    self.err(at(file, &p.running_for).error(
                        "invalid-value",
                        "running_for must be more than 0 and less than 24h",
                    ));
                    0
                }
                Err(e) => {
                    self.err(at(file, &p.running_for).error("invalid-duration", e));
                    0
                }
            };
            JobKind::Power {
                running_for_secs: secs,
            }
        } else if let Some(c) = &j.command {
            JobKind::Command {
                run: c.run.value.clone(),
            }
        } else {
            unreachable!("exactly one job kind was checked above")
        })
    }

    fn backup(&mut self, b: &raw::BackupSpec, secrets: &BTreeSet<String>) -> JobKind {
        let file = SCHEDULES_FILE;
        self.use_secret(file, &b.password_secret, secrets);
        for p in &b.paths {
            self.host_path(file, p);
        }
        let pg_dump = b.pg_dump.as_ref().and_then(|pg| self.pg_dump(pg));
        let sftp = b.sftp.as_ref().map(|sftp| {
            self.use_secret(file, &sftp.key_secret, secrets);
            self.sftp(&b.repository, sftp)
        });
        if b.paths.is_empty() && b.pg_dump.is_none() {
            self.err(at(file, &b.repository).error(
                "invalid-value",
                "a backup needs `paths`, `pg_dump`, or both",
            ));
        }
        JobKind::Backup {
            repository: b.repository.value.clone(),
            password_secret: b.password_secret.value.clone(),
            paths: b.paths.iter().map(|p| p.value.clone()).collect(),
            pg_dump,
            sftp,
            keep_daily: b.keep.daily.as_ref().map(|v| v.value).unwrap_or(7),
            keep_weekly: b.keep.weekly.as_ref().map(|v| v.value).unwrap_or(4),
            keep_monthly: b.keep.monthly.as_ref().map(|v| v.value).unwrap_or(6),
            check: b.check.as_ref().map(|v| v.value).unwrap_or(false),
        }
    }

    fn pg_dump(&mut self, pg: &S<raw::PgDumpSpec>) -> Option<PgDump> {
        let file = SCHEDULES_FILE;
        let (database, container, user) = match &pg.value {
            raw::PgDumpSpec::Name(db) => (db.clone(), None, None),
            raw::PgDumpSpec::Full {
                database,
                container,
                user,
            } => (database.clone(), container.clone(), user.clone()),
        };
        let user = user.unwrap_or_else(|| "postgres".into());
        let mut ok = true;
        for (what, value, valid, help) in [
            (
                "database name",
                database.as_str(),
                check::database_name(&database),
                "letters, digits, `_`, `-` and `.`, at most 63 (PostgreSQL's limit)",
            ),
            (
                "database user",
                user.as_str(),
                check::database_name(&user),
                "letters, digits, `_`, `-` and `.`, at most 63 (PostgreSQL's limit)",
            ),
            (
                "container",
                container.as_deref().unwrap_or("x"),
                container.as_deref().is_none_or(check::container_ref),
                "a container's name, or STACK/SERVICE of a compose stack",
            ),
        ] {
            if !valid {
                ok = false;
                self.err(
                    at(file, pg)
                        .error(
                            "invalid-value",
                            format!("{value:?} is not a {what} tidekeeper dumps"),
                        )
                        .with_help(help),
                );
            }
        }
        ok.then_some(PgDump {
            database,
            container,
            user,
        })
    }

    fn sftp(&mut self, repository: &S<String>, s: &raw::SftpSpec) -> SftpAccess {
        let file = SCHEDULES_FILE;
        if check::sftp_target(&repository.value).is_none() {
            self.err(
                at(file, repository)
                    .error(
                        "invalid-value",
                        "`sftp:` logs in to an sftp repository, and this one is not",
                    )
                    .with_help("write it `sftp:USER@HOST:/PATH`, or remove `sftp:`"),
            );
        }
        let lines: Vec<&str> = s
            .known_hosts
            .value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if lines.is_empty() || lines.iter().any(|l| l.split_whitespace().count() < 3) {
            self.err(
                at(file, &s.known_hosts)
                    .error(
                        "invalid-value",
                        "known_hosts needs the server's host keys as known_hosts lines: HOST KEYTYPE KEY",
                    )
                    .with_help("`ssh-keyscan -p PORT HOST` prints them; compare them with what the provider shows"),
            );
        }
        SftpAccess {
            key_secret: s.key_secret.value.clone(),
            known_hosts: lines.join("\n"),
            port: s.port.as_ref().map(|p| p.value),
        }
    }

    fn upgrade(&mut self, u: &raw::UpgradeSpec) -> JobKind {
        let file = SCHEDULES_FILE;
        let reboot = u
            .reboot
            .as_ref()
            .map(|r| r.value)
            .unwrap_or(RebootPolicy::IfRequired);
        let unattended = u.unattended.as_ref().map(|v| v.value).unwrap_or(false);
        if let (true, Some(m)) = (unattended, &u.mode) {
            self.err(at(file, m).error(
                "invalid-key",
                "`mode` chooses what apt-get runs; with `unattended: true`, unattended-upgrade follows its own configuration",
            ).with_help("remove `mode`, or `unattended`"));
        }
        // A job that may reboot is the one meant to take new kernels,
        // which `apt-get upgrade` keeps back (they are new packages).
        let mode = u.mode.as_ref().map(|m| m.value).unwrap_or(match reboot {
            RebootPolicy::Never => UpgradeMode::Upgrade,
            _ => UpgradeMode::FullUpgrade,
        });
        JobKind::Upgrade {
            reboot,
            unattended,
            mode,
        }
    }
}
