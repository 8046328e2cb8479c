//! Schedule math: cron expressions, time zones and maintenance windows.
//!
//! Pure: no clocks are read here; callers pass the instant to compute from.
//! Cron semantics are croner's: POSIX OR of day-of-month and day-of-week,
//! 5 or 6 fields, evaluated in the job's time zone.

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::Serialize;

/// Parse a 5-field (minute precision) or 6-field (with seconds) cron expression.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "cron expression {expr:?} has {fields} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron expression {expr:?} is invalid: {e}"))
}

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("time zone {name:?} is not an IANA time zone such as \"UTC\" or \"Europe/Berlin\"")
    })
}

/// The next run of `cron` strictly after `after`, in zone `tz`.
pub fn next_run(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A recurring maintenance window: days of the week, a start and end time, a zone.
/// Written like `Sun 02:00-06:00 Europe/Berlin`, `daily 00:00-06:00 UTC`,
/// `Mon-Fri 22:00-02:00` (ending after midnight; the zone defaults to UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub timezone: String,
    #[serde(skip)]
    pub tz: Tz,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `Mon`, `monday`, `SUN`… (at least three letters) to 0 = Monday.
fn day_index(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    DAYS.iter().position(|d| s.len() >= 3 && d.starts_with(&s))
}

impl std::fmt::Display for Window {
    /// `Sun 03:00-06:00 UTC`, `daily 00:00-06:00 UTC`, `Mon,Fri 01:00-02:00 …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = if self.days.iter().all(|d| *d) {
            "daily".to_string()
        } else {
            DAYS.iter()
                .zip(self.days)
                .filter(|(_, on)| *on)
                .map(|(d, _)| {
                    let mut c = d[..3].chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase())
                        .into_iter()
                        .chain(c)
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "{days} {}-{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.timezone
        )
    }
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        let err = |why: &str| {
            format!(
                "window {s:?} {why}; write it like \"Sun 02:00-06:00 Europe/Berlin\" or \"daily 00:00-06:00 UTC\""
            )
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        let (days_s, times_s, tz_s) = match parts.as_slice() {
            [d, t] => (*d, *t, "UTC"),
            [d, t, z] => (*d, *t, *z),
            _ => return Err(err("is not \"DAYS HH:MM-HH:MM [ZONE]\"")),
        };
        let mut days = [false; 7];
        if matches!(days_s.to_ascii_lowercase().as_str(), "daily" | "*") {
            days = [true; 7];
        } else {
            for item in days_s.split(',') {
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (
                            day_index(a).ok_or_else(|| err("names an unknown day"))?,
                            day_index(b).ok_or_else(|| err("names an unknown day"))?,
                        );
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => {
                        days[day_index(item).ok_or_else(|| err("names an unknown day"))?] = true
                    }
                }
            }
        }
        let (a, b) = times_s
            .split_once('-')
            .ok_or_else(|| err("has no start-end times"))?;
        let t = |x: &str| {
            NaiveTime::parse_from_str(x, "%H:%M").map_err(|_| err("has a time that is not HH:MM"))
        };
        let (start, end) = (t(a)?, t(b)?);
        if start == end {
            return Err(err("starts and ends at the same time"));
        }
        let tz = parse_tz(tz_s)?;
        Ok(Window {
            days,
            start,
            end,
            timezone: tz_s.to_string(),
            tz,
        })
    }

    /// Length of the window.
    pub fn length(&self) -> chrono::Duration {
        let d = self.end - self.start;
        if d < chrono::Duration::zero() {
            d + chrono::Duration::days(1)
        } else {
            d
        }
    }

    /// If `at` lies inside an occurrence of the window, the instant that occurrence ends.
    pub fn open_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        // An occurrence starting today or (for windows past midnight) yesterday.
        for back in 0..=1 {
            let day = local.date_naive() - chrono::Duration::days(back);
            if !self.days[day.weekday().num_days_from_monday() as usize] {
                continue;
            }
            let start = self
                .tz
                .from_local_datetime(&day.and_time(self.start))
                .earliest()?;
            let end = start + self.length();
            if start <= local && local < end {
                return Some(end.with_timezone(&Utc));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_accepts_five_and_six_fields() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("30 0 2 * * *").is_ok());
        assert!(parse_cron("0 2 * *").unwrap_err().contains("has 4 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
    }

    #[test]
    fn window_parses_days_and_zone() {
        let w = Window::parse("Sun 02:00-06:00 Europe/Berlin").unwrap();
        assert_eq!(w.days, [false, false, false, false, false, false, true]);
        assert_eq!(w.length(), chrono::Duration::hours(4));
        let w = Window::parse("Mon-Fri 22:00-02:00").unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!(w.length(), chrono::Duration::hours(4));
        assert!(Window::parse("Someday 02:00-06:00").is_err());
        assert!(Window::parse("daily 02:00-02:00").is_err());
        assert!(Window::parse("daily 2am-6am").is_err());
    }

    #[test]
    fn window_open_until_handles_midnight() {
        let w = Window::parse("Mon 22:00-02:00 UTC").unwrap();
        // 2026-11-23 is a Monday.
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap();
        assert_eq!(
            w.open_until(at),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap())
        );
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap();
        assert_eq!(w.open_until(at), None);
    }
}
