//! Schedule math: cron expressions, time zones and maintenance windows.
//!
//! Pure: no clocks are read here; callers pass the instant to compute from.
//! Cron semantics are croner's: POSIX OR of day-of-month and day-of-week,
//! 5 or 6 fields, evaluated in the job's time zone.

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
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

    /// The occurrence starting on local `day`, by the wall clock of its
    /// zone: `09:00-17:00` ends at 17:00 on a day the clocks move too. A
    /// time the clocks skip is taken as the moment they land.
    fn occurrence(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days[day.weekday().num_days_from_monday() as usize] {
            return None;
        }
        let end_day = if self.end > self.start {
            day
        } else {
            day.succ_opt()?
        };
        let resolve = |t: NaiveDateTime| {
            (0..=2)
                .find_map(|h| {
                    self.tz
                        .from_local_datetime(&(t + chrono::Duration::minutes(30 * h)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
        };
        Some((
            resolve(day.and_time(self.start))?,
            resolve(end_day.and_time(self.end))?,
        ))
    }

    /// The end of the occurrence `at` lies in, by the wall clock of its zone.
    fn active_end(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&self.tz).date_naive();
        (0..=2)
            .filter_map(|back| self.occurrence(today - chrono::Duration::days(back)))
            .find(|(s, e)| *s <= at && at < *e)
            .map(|(_, e)| e)
    }

    /// The first start of the window strictly after `at`.
    fn next_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&self.tz).date_naive();
        (0..=8)
            .filter_map(|d| self.occurrence(today + chrono::Duration::days(d)))
            .map(|(s, _)| s)
            .find(|s| *s > at)
    }
}

/// `kind:` of an apply window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Commits are applied only while an allow window covering the host is open.
    Allow,
    /// Commits are never applied while a deny window covering the host is open.
    Deny,
}

/// When an apply window is open.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Opening {
    /// From each time `schedule` (cron, in `timezone`) names, for `duration_secs`.
    Cron {
        schedule: String,
        duration_secs: u64,
        timezone: String,
        #[serde(skip)]
        cron: Box<Cron>,
        #[serde(skip)]
        tz: Tz,
    },
    /// A weekly window, `Mon-Fri 09:00-17:00 Europe/Berlin`.
    Weekly { window: Window },
}

impl Opening {
    /// If open at `at`, the end of (an) occurrence it is open in.
    fn active_end(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Opening::Cron {
                cron,
                tz,
                duration_secs,
                ..
            } => {
                let d = chrono::Duration::seconds(*duration_secs as i64);
                // The first start after `at - d` is open at `at` if it began by then.
                let start = next_run(cron, *tz, at - d)?;
                (start <= at).then_some(start + d)
            }
            Opening::Weekly { window } => window.active_end(at),
        }
    }

    fn next_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Opening::Cron { cron, tz, .. } => next_run(cron, *tz, at),
            Opening::Weekly { window } => window.next_start(at),
        }
    }
}

/// `apply.apply_windows:` one entry: when commits may (allow) or may not
/// (deny) be applied, to which hosts.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyWindow {
    pub kind: WindowKind,
    #[serde(flatten)]
    pub opening: Opening,
    /// The hosts it covers, by name; None: the whole fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

impl ApplyWindow {
    pub fn covers(&self, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|h| h.iter().any(|n| n == host))
    }
}

impl std::fmt::Display for ApplyWindow {
    /// `deny "0 2 * * *" for 4h UTC`, `allow Mon-Fri 09:00-17:00 UTC`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        };
        match &self.opening {
            Opening::Cron {
                schedule,
                duration_secs,
                timezone,
                ..
            } => {
                let (h, m) = (duration_secs / 3600, duration_secs % 3600 / 60);
                let length = match (h, m) {
                    (0, m) => format!("{m}m"),
                    (h, 0) => format!("{h}h"),
                    (h, m) => format!("{h}h{m}m"),
                };
                write!(f, "{kind} {schedule:?} for {length} {timezone}")
            }
            Opening::Weekly { window } => write!(f, "{kind} {window}"),
        }
    }
}

/// How far ahead [`next_apply`] looks for an opening.
pub const APPLY_SEARCH_DAYS: i64 = 366;

/// May `host` be applied to at `at`? As Argo CD's sync windows: not while a
/// deny window covering it is open, and, if allow windows cover it, only
/// while one of them is open.
pub fn apply_allowed(windows: &[ApplyWindow], host: &str, at: DateTime<Utc>) -> bool {
    let (mut allow_seen, mut allow_open) = (false, false);
    for w in windows.iter().filter(|w| w.covers(host)) {
        let open = w.opening.active_end(at).is_some();
        match w.kind {
            WindowKind::Deny if open => return false,
            WindowKind::Deny => {}
            WindowKind::Allow => {
                allow_seen = true;
                allow_open |= open;
            }
        }
    }
    !allow_seen || allow_open
}

/// The windows that keep `host` from being applied to at `at`: the deny
/// windows open then, or, if none is, the allow windows covering it (all shut).
pub fn shutting<'w>(
    windows: &'w [ApplyWindow],
    host: &str,
    at: DateTime<Utc>,
) -> Vec<&'w ApplyWindow> {
    let covering = windows.iter().filter(|w| w.covers(host));
    let denying: Vec<&ApplyWindow> = covering
        .clone()
        .filter(|w| w.kind == WindowKind::Deny && w.opening.active_end(at).is_some())
        .collect();
    if !denying.is_empty() {
        return denying;
    }
    covering.filter(|w| w.kind == WindowKind::Allow).collect()
}

/// The first instant from `at` on (`at` itself if allowed) at which `host`
/// may be applied to; None if there is none within [`APPLY_SEARCH_DAYS`].
/// Only the instants a covering window opens or closes can change the
/// answer, so those are the ones looked at.
pub fn next_apply(windows: &[ApplyWindow], host: &str, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let covering: Vec<&ApplyWindow> = windows.iter().filter(|w| w.covers(host)).collect();
    let limit = at + chrono::Duration::days(APPLY_SEARCH_DAYS);
    let mut t = at;
    // A window opening every minute would take half a million steps to
    // rule out a year; an opening that far in steps is as good as none.
    for _ in 0..20_000 {
        if t > limit {
            return None;
        }
        if apply_allowed(windows, host, t) {
            return Some(t);
        }
        t = covering
            .iter()
            .flat_map(|w| [w.opening.active_end(t), w.opening.next_start(t)])
            .flatten()
            .filter(|b| *b > t)
            .min()?;
    }
    None
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
    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn weekly(kind: WindowKind, w: &str, hosts: Option<&[&str]>) -> ApplyWindow {
        ApplyWindow {
            kind,
            opening: Opening::Weekly {
                window: Window::parse(w).unwrap(),
            },
            hosts: hosts.map(|h| h.iter().map(|n| n.to_string()).collect()),
        }
    }

    fn cron(kind: WindowKind, schedule: &str, secs: u64, zone: &str) -> ApplyWindow {
        ApplyWindow {
            kind,
            opening: Opening::Cron {
                schedule: schedule.into(),
                duration_secs: secs,
                timezone: zone.into(),
                cron: Box::new(parse_cron(schedule).unwrap()),
                tz: parse_tz(zone).unwrap(),
            },
            hosts: None,
        }
    }

    fn next(ws: &[ApplyWindow], host: &str, at: &str) -> Option<String> {
        next_apply(ws, host, utc(at)).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    #[test]
    fn a_deny_window_holds_applies_until_it_ends() {
        let ws = [weekly(WindowKind::Deny, "daily 02:00-06:00 UTC", None)];
        assert!(apply_allowed(&ws, "a", utc("2026-06-02T01:59:59Z")));
        assert!(!apply_allowed(&ws, "a", utc("2026-06-02T02:00:00Z")));
        assert_eq!(
            next(&ws, "a", "2026-06-02T02:00:00Z").as_deref(),
            Some("2026-06-02T06:00:00Z")
        );
        assert_eq!(
            next(&ws, "a", "2026-06-02T07:00:00Z").as_deref(),
            Some("2026-06-02T07:00:00Z"),
            "open now: now"
        );
        let ws = [cron(WindowKind::Deny, "0 22 * * fri", 3 * 86400, "UTC")];
        assert_eq!(
            next(&ws, "a", "2026-12-06T12:00:00Z").as_deref(),
            Some("2026-12-07T22:00:00Z"),
            "a weekend freeze from Friday 22:00 to Monday 22:00"
        );
    }

    #[test]
    fn allow_windows_open_applies_only_inside_them_in_their_zone() {
        let ws = [weekly(
            WindowKind::Allow,
            "Mon-Fri 09:00-17:00 Europe/Berlin",
            None,
        )];
        // Friday 2026-12-04 18:00 in Berlin (UTC+1): next Monday 09:00.
        assert_eq!(
            next(&ws, "a", "2026-12-04T17:00:00Z").as_deref(),
            Some("2026-12-07T08:00:00Z")
        );
        assert!(apply_allowed(&ws, "a", utc("2026-12-07T15:59:00Z")));
        assert!(!apply_allowed(&ws, "a", utc("2026-12-07T16:00:00Z")));
    }

    #[test]
    fn overlapping_windows_deny_wins_and_the_latest_end_counts() {
        let ws = [
            weekly(WindowKind::Allow, "Mon-Fri 09:00-17:00 UTC", None),
            cron(WindowKind::Deny, "0 12 * * *", 2 * 3600, "UTC"),
            weekly(WindowKind::Deny, "daily 13:00-15:00 UTC", None),
        ];
        // Monday 2026-12-07.
        assert!(apply_allowed(&ws, "a", utc("2026-12-07T11:00:00Z")));
        assert_eq!(
            next(&ws, "a", "2026-12-07T12:30:00Z").as_deref(),
            Some("2026-12-07T15:00:00Z")
        );
        // After 17:00 the allow window is shut: Tuesday 09:00.
        assert_eq!(
            next(&ws, "a", "2026-12-07T17:00:00Z").as_deref(),
            Some("2026-12-08T09:00:00Z")
        );
        // Two allow windows: either open is enough.
        let ws = [
            weekly(WindowKind::Allow, "Mon 09:00-10:00 UTC", None),
            weekly(WindowKind::Allow, "Mon 11:00-12:00 UTC", None),
        ];
        assert_eq!(
            next(&ws, "a", "2026-12-07T10:00:00Z").as_deref(),
            Some("2026-12-07T11:00:00Z")
        );
    }

    #[test]
    fn a_window_with_hosts_covers_only_them() {
        let ws = [
            weekly(WindowKind::Deny, "daily 02:00-06:00 UTC", Some(&["db1"])),
            weekly(WindowKind::Allow, "daily 20:00-22:00 UTC", Some(&["web1"])),
        ];
        let at = "2026-06-02T03:00:00Z";
        assert_eq!(
            next(&ws, "db1", at).as_deref(),
            Some("2026-06-02T06:00:00Z")
        );
        assert_eq!(
            next(&ws, "web1", at).as_deref(),
            Some("2026-06-02T20:00:00Z")
        );
        assert_eq!(next(&ws, "other", at).as_deref(), Some(at));
        let names = |h: &str| -> Vec<String> {
            shutting(&ws, h, utc(at))
                .iter()
                .map(|w| w.to_string())
                .collect()
        };
        assert_eq!(names("db1"), ["deny daily 02:00-06:00 UTC"]);
        assert_eq!(names("web1"), ["allow daily 20:00-22:00 UTC"]);
    }

    #[test]
    fn windows_keep_their_wall_clock_times_across_daylight_saving_changes() {
        // 2027-03-28 Berlin skips 02:00-03:00: a window from 02:30 opens when
        // the clocks land at 03:00 CEST (01:00 UTC) and ends at 03:30 CEST.
        let ws = [weekly(
            WindowKind::Allow,
            "daily 02:30-03:30 Europe/Berlin",
            None,
        )];
        assert_eq!(
            next(&ws, "a", "2027-03-28T00:00:00Z").as_deref(),
            Some("2027-03-28T01:00:00Z")
        );
        assert!(!apply_allowed(&ws, "a", utc("2027-03-28T01:30:00Z")));
        // 2026-10-25 Berlin repeats 02:00-03:00: 01:00 CEST to 04:00 CET is
        // four hours.
        let ws = [weekly(
            WindowKind::Deny,
            "daily 01:00-04:00 Europe/Berlin",
            None,
        )];
        assert_eq!(
            next(&ws, "a", "2026-10-24T23:30:00Z").as_deref(),
            Some("2026-10-25T03:00:00Z")
        );
        // A cron start in the zone: 01:00 Berlin is 23:00 UTC in summer and
        // 00:00 UTC in winter.
        let ws = [cron(WindowKind::Allow, "0 1 * * *", 3600, "Europe/Berlin")];
        assert_eq!(
            next(&ws, "a", "2026-10-24T12:00:00Z").as_deref(),
            Some("2026-10-24T23:00:00Z")
        );
        assert_eq!(
            next(&ws, "a", "2026-10-25T12:00:00Z").as_deref(),
            Some("2026-10-26T00:00:00Z")
        );
    }

    #[test]
    fn an_allow_window_that_does_not_open_within_a_year_gives_no_time() {
        let ws = [cron(WindowKind::Allow, "0 0 29 2 *", 3600, "UTC")];
        assert_eq!(next(&ws, "a", "2026-03-01T00:00:00Z"), None);
        let always = [cron(WindowKind::Deny, "0 0 * * *", 86400 * 2, "UTC")];
        assert_eq!(next(&always, "a", "2026-03-01T00:00:00Z"), None);
        let every_minute = [cron(WindowKind::Deny, "* * * * *", 120, "UTC")];
        assert_eq!(next(&every_minute, "a", "2026-03-01T00:00:00Z"), None);
        assert_eq!(always[0].to_string(), "deny \"0 0 * * *\" for 48h UTC");
        assert_eq!(
            weekly(WindowKind::Allow, "Mon-Fri 09:00-17:00 UTC", None).to_string(),
            "allow Mon,Tue,Wed,Thu,Fri 09:00-17:00 UTC"
        );
    }
}
