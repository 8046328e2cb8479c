//! `cron:` — entries in /etc/cron.d for hosts that run cron. One file per
//! entry, written as an ordinary file; the file name has no dot (cron
//! ignores such files) and a `%` in the command is escaped (cron would turn
//! it into a newline).

use crate::model::desired::CronResource;

/// Where the entries are written.
pub(crate) const DIR: &str = "/etc/cron.d";

/// The entry's file: (path, content).
pub(crate) fn file(c: &CronResource) -> (String, String) {
    (
        format!("{DIR}/{}", c.name),
        format!(
            "# Managed by tidekeeper.\nSHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{} {} {}\n",
            c.schedule,
            c.user,
            c.run.replace('%', "\\%")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_file_is_this_with_percent_escaped() {
        let c = CronResource {
            name: "rotate-logs".into(),
            schedule: "15 4 * * 1-5".into(),
            user: "www-data".into(),
            run: "find /var/log/app -mtime +7 -name '*.log' -delete; date +%F > /tmp/rotated"
                .into(),
            origin: Default::default(),
        };
        let (path, text) = file(&c);
        assert_eq!(path, "/etc/cron.d/rotate-logs");
        assert_eq!(
            text,
            "# Managed by tidekeeper.\nSHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             15 4 * * 1-5 www-data find /var/log/app -mtime +7 -name '*.log' -delete; date +\\%F > /tmp/rotated\n"
        );
    }
}
