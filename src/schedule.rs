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

/// A 5-field cron expression as systemd `OnCalendar=` lines with the same
/// meaning: every field expanded to its values, and cron's rule that a
/// restricted day of month and a restricted day of week match when EITHER
/// does (systemd would require both) written as two lines, whose union
/// systemd takes. `@` forms and the seconds field are not accepted here.
pub fn cron_to_on_calendar(expr: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = fields[..] else {
        return Err(format!(
            "cron expression {expr:?} must have 5 fields (minute hour day-of-month month day-of-week)"
        ));
    };
    let bad = |what: &str, e: String| format!("cron expression {expr:?}: {what}: {e}");
    let minutes = cron_field(minute, 0, 59, &[]).map_err(|e| bad("minute", e))?;
    let hours = cron_field(hour, 0, 23, &[]).map_err(|e| bad("hour", e))?;
    let days = cron_field(dom, 1, 31, &[]).map_err(|e| bad("day of month", e))?;
    let months = cron_field(month, 1, 12, &MONTHS).map_err(|e| bad("month", e))?;
    let mut weekdays = cron_field(dow, 0, 7, &WEEKDAYS).map_err(|e| bad("day of week", e))?;
    // 7 is Sunday too.
    if let Some(v) = weekdays.as_mut()
        && v.contains(&7)
    {
        v.retain(|d| *d != 7);
        if !v.contains(&0) {
            v.insert(0, 0);
        }
    }
    let list = |v: &Option<Vec<u32>>, width: usize| match v {
        None => "*".to_string(),
        Some(v) => v
            .iter()
            .map(|n| format!("{n:0width$}"))
            .collect::<Vec<_>>()
            .join(","),
    };
    let time = format!("{}:{}:00", list(&hours, 2), list(&minutes, 2));
    let names = |v: &[u32]| {
        v.iter()
            .map(|d| ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][*d as usize])
            .collect::<Vec<_>>()
            .join(",")
    };
    let date = |days: &Option<Vec<u32>>| format!("*-{}-{}", list(&months, 2), list(days, 2));
    let weekly = |w: &[u32]| format!("{} {} {time}", names(w), date(&None));
    // As cron does: a field written from `*` (`*`, `*/2`) leaves the other
    // day field alone (both must match); two restricted ones match either.
    let either = !dom.starts_with('*') && !dow.starts_with('*');
    Ok(match (&days, &weekdays) {
        (Some(_), Some(w)) if either => vec![format!("{} {time}", date(&days)), weekly(w)],
        (_, Some(w)) => vec![format!("{} {} {time}", names(w), date(&days))],
        (_, None) => vec![format!("{} {time}", date(&days))],
    })
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One cron field as its values in order; None for `*` (every value).
/// `names` are the field's words (`jan`, `mon`), numbered from `min`.
fn cron_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<Option<Vec<u32>>, String> {
    if field == "*" {
        return Ok(None);
    }
    let number = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + i as u32);
        }
        let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut values = std::collections::BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                // `5/15` runs from 5 to the end.
                None if step > 1 => (number(r)?, max),
                None => (number(r)?, number(r)?),
            },
        };
        if from > to {
            return Err(format!("range {range:?} runs backwards"));
        }
        values.extend((from..=to).step_by(step as usize));
    }
    Ok(Some(values.into_iter().collect()))
}

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()).collect();
        // Case first (europe/berlin), then typos (Europe/Berln).
        let guess = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .copied()
            .or_else(|| crate::suggest::closest(name, &names));
        match guess {
            Some(g) => format!("time zone {name:?} is not an IANA time zone; did you mean {g:?}?"),
            None => format!(
                "time zone {name:?} is not an IANA time zone such as \"UTC\" or \"Europe/Berlin\""
            ),
        }
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
    fn cron_becomes_these_calendar_lines() {
        let cases: [(&str, &[&str]); 6] = [
            ("30 3 * * *", &["*-*-* 03:30:00"]),
            (
                "*/15 9-17 * * 1-5",
                &["Mon,Tue,Wed,Thu,Fri *-*-* 09,10,11,12,13,14,15,16,17:00,15,30,45:00"],
            ),
            // Both day fields restricted: either matches, as cron does.
            (
                "0 4 1,15 * sun",
                &["*-*-01,15 04:00:00", "Sun *-*-* 04:00:00"],
            ),
            // A day field written from `*` leaves the other alone.
            ("0 4 1 * */7", &["Sun *-*-01 04:00:00"]),
            ("0 0 * jan,jul 7", &["Sun *-01,07-* 00:00:00"]),
            ("5/20 2 * * *", &["*-*-* 02:05,25,45:00"]),
        ];
        for (cron, lines) in cases {
            assert_eq!(cron_to_on_calendar(cron).unwrap(), lines, "{cron}");
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "0 0 * * 8",
            "0 0 5-1 * *",
            "*/0 * * * *",
            "@daily",
        ] {
            assert!(cron_to_on_calendar(bad).is_err(), "{bad}");
        }
    }

    /// systemd itself computes the elapses of the lines, and they are the
    /// runs croner computes for the cron expression.
    #[test]
    fn systemd_runs_the_translated_lines_when_cron_would() {
        let from = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        for cron in [
            "30 3 * * *",
            "*/20 9-11 * * mon-fri",
            "0 4 1,15 * sun",
            "15 6 * feb,aug 3",
        ] {
            let parsed = parse_cron(cron).unwrap();
            let mut want = Vec::new();
            let mut t = from;
            for _ in 0..12 {
                t = next_run(&parsed, chrono_tz::UTC, t).unwrap();
                want.push(t.format("%Y-%m-%d %H:%M:%S").to_string());
            }
            let mut got = std::collections::BTreeSet::new();
            for line in cron_to_on_calendar(cron).unwrap() {
                let out = std::process::Command::new("systemd-analyze")
                    .args([
                        "calendar",
                        "--iterations=12",
                        "--base-time=2026-11-28 12:00:00 UTC",
                    ])
                    .arg(format!("{line} UTC"))
                    .env("TZ", "UTC")
                    .output()
                    .expect("systemd-analyze");
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    out.status.success(),
                    "{line}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                for l in text.lines() {
                    let l = l.trim();
                    if let Some(at) = l.strip_prefix("Next elapse: ").or_else(|| {
                        l.split_once(": ")
                            .filter(|(k, _)| k.starts_with("Iter."))
                            .map(|(_, v)| v)
                    }) {
                        // "Fri 2027-01-01 03:00:00 UTC"
                        let parts: Vec<&str> = at.split_whitespace().collect();
                        got.insert(format!("{} {}", parts[1], parts[2]));
                    }
                }
            }
            let got: Vec<String> = got.into_iter().take(12).collect();
            assert_eq!(got, want, "{cron}");
        }
    }

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
