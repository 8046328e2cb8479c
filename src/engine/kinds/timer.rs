//! `timers:` — scheduled commands as systemd timers, so the config's cron
//! jobs live in systemd (logged in the journal, run once after downtime
//! when `persistent`). A timer is two unit files under /etc/systemd/system
//! — a oneshot service running the command and a timer with its schedule —
//! written as ordinary files (diffs, backups, atomic writes, pruning), and
//! the timer unit enabled and started like any service.

use crate::model::desired::TimerResource;

/// Where the units are written.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";

/// The two unit files of a timer: (path, content).
pub(crate) fn unit_files(t: &TimerResource) -> [(String, String); 2] {
    [
        (format!("{UNIT_DIR}/{}.service", t.name), service_unit(t)),
        (format!("{UNIT_DIR}/{}.timer", t.name), timer_unit(t)),
    ]
}

/// The timer unit's name, enabled and started as a service.
pub(crate) fn timer_name(t: &TimerResource) -> String {
    format!("{}.timer", t.name)
}

/// The oneshot service: the command through `/bin/sh -c`, as the timer's
/// user, with its time limit.
pub(crate) fn service_unit(t: &TimerResource) -> String {
    let mut s = format!(
        "# Managed by tidekeeper.\n[Unit]\nDescription=tidekeeper timer {}\n\n[Service]\nType=oneshot\n",
        t.name
    );
    if let Some(u) = &t.user {
        s.push_str(&format!("User={u}\n"));
    }
    s.push_str(&format!(
        "ExecStart=/bin/sh -c {}\nTimeoutStartSec={}\n",
        exec_arg(&t.run),
        t.timeout_secs
    ));
    s
}

/// The timer: one `OnCalendar=` per schedule line.
pub(crate) fn timer_unit(t: &TimerResource) -> String {
    let mut s = format!(
        "# Managed by tidekeeper.\n[Unit]\nDescription=tidekeeper timer {}\n\n[Timer]\n",
        t.name
    );
    for line in &t.on_calendar {
        s.push_str(&format!("OnCalendar={line}\n"));
    }
    s.push_str(&format!(
        "Persistent={}\n\n[Install]\nWantedBy=timers.target\n",
        t.persistent
    ));
    s
}

/// One argument of `ExecStart=` that systemd hands to the command exactly
/// as written: double-quoted with C escapes, `%` specifiers and `$`
/// variable expansion turned off.
pub(crate) fn exec_arg(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '%' => s.push_str("%%"),
            '$' => s.push_str("$$"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer() -> TimerResource {
        TimerResource {
            name: "db-backup".into(),
            on_calendar: vec!["*-*-* 03:30:00".into(), "Sun *-*-* 12:00:00".into()],
            run: "pg_dump app | gzip > \"/var/backups/app-$(date +%F).sql.gz\"".into(),
            user: Some("postgres".into()),
            timeout_secs: 3600,
            persistent: true,
            origin: Default::default(),
        }
    }

    #[test]
    fn its_units_are_these() {
        let [(sp, service), (tp, timer_text)] = unit_files(&timer());
        assert_eq!(sp, "/etc/systemd/system/db-backup.service");
        assert_eq!(tp, "/etc/systemd/system/db-backup.timer");
        assert_eq!(
            service,
            "# Managed by tidekeeper.\n[Unit]\nDescription=tidekeeper timer db-backup\n\n[Service]\nType=oneshot\n\
             User=postgres\nExecStart=/bin/sh -c \"pg_dump app | gzip > \\\"/var/backups/app-$$(date +%%F).sql.gz\\\"\"\n\
             TimeoutStartSec=3600\n"
        );
        assert_eq!(
            timer_text,
            "# Managed by tidekeeper.\n[Unit]\nDescription=tidekeeper timer db-backup\n\n[Timer]\n\
             OnCalendar=*-*-* 03:30:00\nOnCalendar=Sun *-*-* 12:00:00\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
        );
        assert_eq!(timer_name(&timer()), "db-backup.timer");
    }

    #[test]
    fn systemd_reads_the_command_back_exactly() {
        // systemd-analyze is systemd's own parser: what it shows as the
        // command line is what the service will run.
        let hostile = "echo \"a\\\\b\" '$HOME' %n ${X}\nline2; rm -rf /tmp/x";
        let dir = std::env::temp_dir().join(format!("tk-timer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unit = dir.join("tk-exec-test.service");
        let mut t = timer();
        t.user = None;
        t.run = hostile.into();
        std::fs::write(&unit, service_unit(&t)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze");
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            exec_arg(hostile).starts_with("\"echo \\\"a\\\\\\\\b\\\" '$$HOME' %%n $${X}\\nline2")
        );
    }
}
