//! The status page as a dashboard: the fleet at a glance, charts drawn from
//! the history as inline SVG, hosts with their own pages (last plan with its
//! diffs, drift, last error, recent runs), the timeline of applied commits
//! from the status branch, the maintenance calendar, cost per provider and
//! host, and the pull requests' plans. One HTML document per page, no
//! external assets; responsive and dark-mode aware; readable without
//! JavaScript (a few lines turn times into the reader's local time). Pure.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::history::History;
use super::status::{FleetStatus, HostState, HostStatus};

/// What a page is drawn from.
pub(crate) struct View<'a> {
    pub status: &'a FleetStatus,
    pub history: &'a History,
    /// Applied commits from the status branch's history: (time, commit), newest first.
    pub timeline: &'a [(i64, String)],
    /// The repository's web address on the forge, for commit links.
    pub web: Option<&'a str>,
    pub now: DateTime<Utc>,
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Path segment for a host's page (host names are checked, but be safe).
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// "5 min ago", "in 2 h", "3 days ago".
pub(crate) fn relative(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let text = match n {
        0..=44 => return "just now".into(),
        45..=5399 => format!("{} min", (n + 30) / 60),
        5400..=129_599 => format!("{} h", (n + 1800) / 3600),
        _ => format!("{} days", (n + 43_200) / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn parse(at: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl View<'_> {
    /// A time as "5 min ago", with the exact time (local, by the script) on hover.
    fn time(&self, at: Option<&str>) -> String {
        match at.and_then(|a| parse(a).map(|t| (a, t))) {
            Some((a, t)) => format!(
                "<time datetime=\"{a}\" title=\"{a}\">{}</time>",
                relative(self.now, t),
                a = esc(a)
            ),
            None => "—".into(),
        }
    }

    fn commit(&self, sha: Option<&str>) -> String {
        let Some(sha) = sha.filter(|s| !s.is_empty()) else {
            return "—".into();
        };
        let short = esc(&sha.chars().take(12).collect::<String>());
        match self.web {
            Some(web) if sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
                format!(
                    "<a href=\"{}/commit/{sha}\"><code>{short}</code></a>",
                    esc(web)
                )
            }
            _ => format!("<code>{short}</code>"),
        }
    }
}

const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1d232a;--muted:#5b6670;--card:#f3f5f8;--line:#dde3e8;\
--accent:#2f6fdf;--ok:#1f8a4c;--warn:#a86a12;--bad:#c93c3c;--orange:#c25e12}\
@media (prefers-color-scheme:dark){:root{--bg:#0f1419;--fg:#e3e7eb;--muted:#97a3ae;--card:#18212b;\
--line:#2a3542;--accent:#6ea8fe;--ok:#4cc38a;--warn:#e0a84a;--bad:#f07272;--orange:#f0954a}}\
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;\
background:var(--bg);color:var(--fg)}main{max-width:74rem;margin:0 auto;padding:1rem}\
a{color:var(--accent)}h1{font-size:1.6rem;margin:.2rem 0;display:flex;gap:.6rem;align-items:center;flex-wrap:wrap}\
h2{font-size:1.15rem;margin:1.6rem 0 .6rem}.muted,small{color:var(--muted)}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(10.5rem,1fr));gap:.7rem;margin-top:1rem}\
.card{background:var(--card);border-radius:.6rem;padding:.7rem .9rem}.card b{display:block;font-size:1.35rem}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(19rem,1fr));gap:.7rem}\
figure{margin:0;background:var(--card);border-radius:.6rem;padding:.6rem .8rem}figcaption{font-weight:600;margin-bottom:.3rem}\
svg{width:100%;height:auto;display:block}svg text{fill:var(--muted);font-size:11px}\
.bar{fill:var(--accent)}.bar2{fill:var(--warn)}.line{stroke:var(--accent);stroke-width:2;fill:none}\
.line2{stroke:var(--ok);stroke-width:2;fill:none}circle.line{fill:var(--accent)}circle.line2{fill:var(--ok)}.grid{stroke:var(--line);stroke-width:1}\
.scroll{overflow-x:auto}table{width:100%;border-collapse:collapse}\
td,th{padding:.45rem .5rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}\
th{font-weight:600;color:var(--muted);font-size:.85rem}td.num,th.num{text-align:right}\
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85rem}\
.synced,.ok{color:var(--ok)}.drifted,.pending{color:var(--warn)}.failed,.bad,.failure,.error{color:var(--bad)}\
.unreachable{color:var(--orange)}.success{color:var(--ok)}\
.alert{border-left:4px solid var(--bad);background:var(--card);padding:.6rem .8rem;border-radius:.3rem;margin:.8rem 0}\
.plan .add{color:var(--ok)}.plan .del{color:var(--bad)}.plan .hunk{color:var(--accent)}\
@media (max-width:40rem){main{padding:.6rem}.wide{display:none}h1{font-size:1.3rem}}";

/// Turns `<time>`s into the reader's local time (the page works without it).
const SCRIPT: &str = "<script>for(const t of document.querySelectorAll('time[datetime]'))\
{const d=new Date(t.dateTime);if(!isNaN(d))t.title=d.toLocaleString();}</script>";

fn head(title: &str, refresh: bool) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">{}\
         <title>{} — tidekeeper</title><style>{STYLE}</style></head><body><main>",
        if refresh {
            "<meta http-equiv=\"refresh\" content=\"30\">"
        } else {
            ""
        },
        esc(title)
    )
}

fn foot() -> String {
    format!("</main>{SCRIPT}</body></html>\n")
}

fn state_counts(hosts: &[&HostStatus]) -> String {
    HostState::ALL
        .iter()
        .filter_map(|s| {
            let n = hosts.iter().filter(|h| h.state == *s).count();
            (n > 0).then(|| format!("<span class=\"{w}\">{n} {w}</span>", w = s.word()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every chart's size: width, height, the left margin for the scale, the
/// bottom margin for the labels.
const W: f64 = 600.0;
const H: f64 = 170.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;

/// A chart's opening: the SVG element and a scale of three lines up to `top`.
fn frame(top: f64) -> String {
    let mut s = format!("<svg viewBox=\"0 0 {W} {H}\" role=\"img\">");
    for frac in [0.0, 0.5, 1.0] {
        let y = (H - BOTTOM) * (1.0 - frac) + 4.0;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{W}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"0\" y=\"{:.1}\">{}</text>",
            y + 4.0,
            short_number(top * frac)
        );
    }
    s
}

/// A chart's closing: the first and last labels under the axis.
fn ends(first: Option<&str>, last: Option<&str>) -> String {
    let mut s = String::new();
    if let (Some(first), Some(last)) = (first, last) {
        let _ = write!(
            s,
            "<text x=\"{LEFT}\" y=\"{H}\">{}</text><text x=\"{W}\" y=\"{H}\" text-anchor=\"end\">{}</text>",
            esc(first),
            esc(last)
        );
    }
    s.push_str("</svg>");
    s
}

/// Bars for `values` (label, value), with the largest value marked.
fn bars(values: &[(String, f64)], unit: &str, class: &str) -> String {
    let (w, h, left, bottom) = (W, H, LEFT, BOTTOM);
    let max = values.iter().map(|v| v.1).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let n = values.len().max(1) as f64;
    let slot = (w - left) / n;
    let mut s = frame(top);
    for (i, (label, v)) in values.iter().enumerate() {
        let bh = (h - bottom - 4.0) * (v / top);
        let x = left + slot * i as f64 + slot * 0.15;
        let _ = write!(
            s,
            "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{}: {} {unit}</title></rect>",
            h - bottom - bh,
            slot * 0.7,
            esc(label),
            short_number(*v)
        );
    }
    // First and last labels under the axis.
    s.push_str(&ends(
        values.first().map(|v| v.0.as_str()),
        values.last().map(|v| v.0.as_str()),
    ));
    s
}

/// Two series per slot side by side (changes, drift).
fn paired_bars(values: &[(String, f64, f64)]) -> String {
    let (w, h, left, bottom) = (W, H, LEFT, BOTTOM);
    let max = values.iter().map(|v| v.1.max(v.2)).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let slot = (w - left) / values.len().max(1) as f64;
    let mut s = frame(top);
    for (i, (label, a, b)) in values.iter().enumerate() {
        for (k, (v, class, what)) in [(a, "bar", "changes"), (b, "bar2", "drift")]
            .into_iter()
            .enumerate()
        {
            let bh = (h - bottom - 4.0) * (v / top);
            let x = left + slot * i as f64 + slot * (0.1 + 0.4 * k as f64);
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{}: {} {what}</title></rect>",
                h - bottom - bh,
                slot * 0.38,
                esc(label),
                short_number(*v)
            );
        }
    }
    s.push_str(&ends(
        values.first().map(|v| v.0.as_str()),
        values.last().map(|v| v.0.as_str()),
    ));
    s
}

/// One line per currency over the days.
fn cost_lines(points: &[(String, std::collections::BTreeMap<String, f64>)]) -> String {
    let (w, h, left, bottom) = (W, H, LEFT, BOTTOM);
    let max = points
        .iter()
        .flat_map(|p| p.1.values())
        .fold(0.0_f64, |a, b| a.max(*b));
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let n = points.len().max(2) as f64 - 1.0;
    let mut s = frame(top);
    let currencies: std::collections::BTreeSet<&String> =
        points.iter().flat_map(|p| p.1.keys()).collect();
    for (k, cur) in currencies.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = p.1.get(*cur)?;
                let x = left + (w - left) * (i as f64 / n);
                let y = (h - bottom) - (h - bottom - 4.0) * (v / top);
                Some(format!("{x:.1},{y:.1}"))
            })
            .collect();
        let class = if k % 2 == 0 { "line" } else { "line2" };
        let last = points.iter().rev().find_map(|p| p.1.get(*cur));
        let _ = write!(
            s,
            "<polyline class=\"{class}\" points=\"{}\"><title>{}: {:.2} now</title></polyline>",
            pts.join(" "),
            esc(cur),
            last.copied().unwrap_or(0.0)
        );
        // A dot on the newest day: a single day shows too.
        for p in pts.iter().rev().take(1) {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                s,
                "<circle class=\"{class}\" cx=\"{x}\" cy=\"{y}\" r=\"3.5\"/>"
            );
        }
    }
    s.push_str(&ends(
        points.first().map(|p| p.0.as_str()),
        points.last().map(|p| p.0.as_str()),
    ));
    s
}

fn short_number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The dashboard.
pub(crate) fn page(v: &View) -> String {
    let mut s = head(&v.status.fleet, true);
    title(v, &mut s);
    alerts(v, &mut s);
    at_a_glance(v, &mut s);
    trends(v, &mut s);
    hosts_table(v, &mut s);
    cost_section(v, &mut s);
    timeline(v, &mut s);
    maintenance(v, &mut s);
    proposals(v, &mut s);
    s.push_str("<p class=\"muted\"><small>Also: <a href=\"/status\">/status</a> (JSON) · <a href=\"/metrics\">/metrics</a> · <a href=\"/badges/fleet.svg\">badges</a></small></p>");
    s.push_str(&foot());
    s
}

/// The fleet, its badge, and when it was last fetched, reconciled and written back.
fn title(v: &View, s: &mut String) {
    let st = v.status;
    let (word, _) = st.state();
    let _ = write!(
        s,
        "<h1>{fleet} <img src=\"/badges/fleet.svg\" alt=\"{word}\"></h1>\
         <p class=\"muted\">Branch <code>{branch}</code> of <code>{repo}</code> · head {head} · last fetch {fetch} · last reconcile {rec} · status branch written {pushed}</p>",
        fleet = esc(&st.fleet),
        branch = esc(&st.branch),
        repo = esc(&st.repo),
        head = v.commit(st.head_commit.as_deref()),
        fetch = v.time(st.last_fetch_ok.as_deref()),
        rec = v.time(st.last_reconcile.as_deref()),
        pushed = v.time(st.written_back.as_ref().map(|w| w.at.as_str())),
    );
}

/// Cards: hosts by state, the applied commit, cost, the last run, drift.
fn at_a_glance(v: &View, s: &mut String) {
    let st = v.status;
    let hosts: Vec<&HostStatus> = st.hosts.values().collect();
    let cost: Vec<String> = st
        .monthly_cost
        .iter()
        .map(|(cur, a)| format!("{a:.2} {}", esc(cur)))
        .collect();
    let last = v.history.runs.back();
    let drift: usize = hosts.iter().map(|h| h.drift.len()).sum();
    let _ = write!(
        s,
        "<section class=\"cards\">\
         <div class=\"card\"><small>Hosts</small><b>{}</b>{}</div>\
         <div class=\"card\"><small>Applied</small><b>{}</b>{}</div>\
         <div class=\"card\" id=\"cost\"><small>Cloud servers a month</small><b>{}</b></div>\
         <div class=\"card\"><small>Last run</small><b>{}</b>{}</div>\
         <div class=\"card\"><small>Drift</small><b>{drift}</b>resource{}</div></section>",
        hosts.len(),
        state_counts(&hosts),
        v.commit(st.applied_commit.as_deref()),
        st.applied_commit
            .as_deref()
            .and_then(|c| v.timeline.iter().find(|t| t.1 == c))
            .map(|t| format!(" {}", v.time(Some(&rfc3339(t.0)))))
            .unwrap_or_default(),
        if cost.is_empty() {
            "—".into()
        } else {
            cost.join(" + ")
        },
        last.map(|r| format!("{:.1} s", r.seconds))
            .unwrap_or_else(|| "—".into()),
        last.map(|r| format!(
            "{} {}",
            if r.apply { "apply" } else { "drift check" },
            v.time(Some(&r.at))
        ))
        .unwrap_or_default(),
        if drift == 1 { "" } else { "s" },
    );
}

/// Charts from the history: durations, changes and drift per day, cost.
fn trends(v: &View, s: &mut String) {
    s.push_str("<h2>Trends</h2><section class=\"charts\" id=\"charts\">");
    let runs: Vec<(String, f64)> = v
        .history
        .runs
        .iter()
        .rev()
        .take(40)
        .rev()
        .map(|r| (r.at.get(..16).unwrap_or(&r.at).replace('T', " "), r.seconds))
        .collect();
    let _ = write!(
        s,
        "<figure id=\"chart-duration\"><figcaption>Reconcile duration <small>(last {} run{}, seconds)</small></figcaption>{}</figure>",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        bars(&runs, "s", "bar")
    );
    let days: Vec<(String, f64, f64)> = v
        .history
        .per_day(v.now.date_naive(), 14)
        .into_iter()
        .map(|(d, c, dr)| (d.format("%b %-d").to_string(), c as f64, dr as f64))
        .collect();
    let _ = write!(
        s,
        "<figure id=\"chart-changes\"><figcaption>Changes <span class=\"success\">■</span> and drift <span class=\"drifted\">■</span> per day <small>(14 days)</small></figcaption>{}</figure>",
        paired_bars(&days)
    );
    let points: Vec<(String, std::collections::BTreeMap<String, f64>)> = v
        .history
        .cost
        .iter()
        .rev()
        .take(90)
        .rev()
        .map(|p| (p.day.clone(), p.cost.clone()))
        .collect();
    let _ = write!(
        s,
        "<figure id=\"chart-cost\"><figcaption>Monthly cost <small>(per currency, {} day{})</small></figcaption>{}</figure></section>",
        points.len(),
        if points.len() == 1 { "" } else { "s" },
        cost_lines(&points)
    );
}

/// Each host: its state, applied commit, last run, cost, and drift or error.
fn hosts_table(v: &View, s: &mut String) {
    let hosts: Vec<&HostStatus> = v.status.hosts.values().collect();
    s.push_str("<h2>Hosts</h2><div class=\"scroll\"><table id=\"hosts\"><tr><th>host</th><th>state</th><th class=\"wide\">applied</th><th>last run</th><th class=\"num wide\">a month</th><th>drift / error</th></tr>");
    for h in &hosts {
        let detail = match (&h.last_error, h.drift.len()) {
            (Some(e), _) => format!(
                "<span class=\"bad\">{}</span>",
                esc(e.lines().next().unwrap_or(""))
            ),
            (None, 0) => esc(h.last_result.as_deref().unwrap_or("")),
            (None, n) => format!("{n} resource{} drifted", if n == 1 { "" } else { "s" }),
        };
        let cost = v
            .history
            .hosts
            .get(&h.host)
            .and_then(|x| x.cost.as_ref())
            .map(|(_, a, c)| format!("{a:.2} {}", esc(c)))
            .unwrap_or_else(|| "—".into());
        let _ = write!(
            s,
            "<tr><td><a href=\"/hosts/{link}\">{host}</a></td><td class=\"{st}\"><img src=\"/badges/{link}.svg\" alt=\"{st}\"></td><td class=\"wide\">{}</td><td>{}</td><td class=\"num wide\">{cost}</td><td>{detail}</td></tr>",
            v.commit(h.applied_commit.as_deref()),
            v.time(h.last_reconcile.as_deref()),
            link = url_part(&h.host),
            host = esc(&h.host),
            st = h.state.word(),
        );
    }
    s.push_str("</table></div>");
}

fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn alerts(v: &View, s: &mut String) {
    let st = v.status;
    if let Some(inv) = &st.invalid {
        let _ = write!(
            s,
            "<div class=\"alert\" id=\"invalid\"><b>{} at {}</b><pre>{}</pre></div>",
            if inv.denied {
                "Denied by policy"
            } else {
                "Invalid config"
            },
            v.commit(Some(&inv.commit)),
            esc(&inv.errors.join("\n"))
        );
    }
    if let Some(q) = &st.quarantined {
        let _ = write!(
            s,
            "<div class=\"alert\"><b>Quarantined commit {}</b><p>{}</p></div>",
            v.commit(Some(&q.commit)),
            esc(&q.reason)
        );
    }
    if let Some(h) = &st.held {
        let how = if h.windows {
            match &h.until {
                Some(t) => format!(
                    "Not applied: outside the apply windows. Applies at {} ({}); <code>tidekeeper release --now</code> applies it at once.",
                    esc(t),
                    v.time(Some(t))
                ),
                None => "Not applied: no apply window opens within a year; <code>tidekeeper release --now</code> applies it at once.".into(),
            }
        } else {
            "Not applied: a proposal planned with its tree, or <code>tidekeeper release</code>, lets it through.".into()
        };
        let _ = write!(
            s,
            "<div class=\"alert\" id=\"held\"><b>Held commit {}</b><p>{}</p><p>{how}</p></div>",
            v.commit(Some(&h.commit)),
            esc(&h.reason)
        );
    }
    for w in &st.stale {
        let _ = write!(s, "<div class=\"alert\">Stale: {}</div>", esc(w));
    }
    if let Some(x) = &st.suspended {
        let _ = write!(
            s,
            "<div class=\"alert\">Suspended by {} {}: {}. Nothing is applied and no job runs; plans go on.</div>",
            esc(&x.by),
            v.time(Some(&x.at)),
            esc(&x.reason)
        );
    }
    if let Some(r) = &st.rollout {
        let _ = write!(
            s,
            "<p>Rollout of {}: stage {} of {} ({}): {}</p>",
            v.commit(Some(&r.commit)),
            r.stage,
            r.stages,
            esc(&r.hosts.join(", ")),
            esc(&r.state)
        );
    }
}

fn cost_section(v: &View, s: &mut String) {
    let priced: Vec<(&String, &(String, f64, String))> = v
        .history
        .hosts
        .iter()
        .filter_map(|(h, x)| x.cost.as_ref().map(|c| (h, c)))
        .filter(|(h, _)| v.status.hosts.contains_key(*h))
        .collect();
    if priced.is_empty() {
        return;
    }
    let mut per_provider: std::collections::BTreeMap<(&str, &str), (usize, f64)> =
        Default::default();
    for (_, (p, a, c)) in &priced {
        let e = per_provider.entry((p.as_str(), c.as_str())).or_default();
        e.0 += 1;
        e.1 += a;
    }
    s.push_str("<h2>Cost</h2><div class=\"scroll\"><table id=\"cost-table\"><tr><th>provider</th><th class=\"num\">servers</th><th class=\"num\">a month</th></tr>");
    for ((p, c), (n, a)) in &per_provider {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"num\">{n}</td><td class=\"num\">{a:.2} {}</td></tr>",
            esc(p),
            esc(c)
        );
    }
    s.push_str("</table></div><details><summary>Per host</summary><table><tr><th>host</th><th>provider</th><th class=\"num\">a month</th></tr>");
    for (h, (p, a, c)) in &priced {
        let _ = write!(
            s,
            "<tr><td><a href=\"/hosts/{}\">{}</a></td><td>{}</td><td class=\"num\">{a:.2} {}</td></tr>",
            url_part(h),
            esc(h),
            esc(p),
            esc(c)
        );
    }
    s.push_str("</table></details>");
}

fn timeline(v: &View, s: &mut String) {
    s.push_str("<h2>Applied commits</h2>");
    if v.timeline.is_empty() {
        s.push_str("<p class=\"muted\" id=\"timeline\">None yet.</p>");
        return;
    }
    s.push_str(
        "<div class=\"scroll\"><table id=\"timeline\"><tr><th>when</th><th>commit</th></tr>",
    );
    for (t, c) in v.timeline.iter().take(20) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td></tr>",
            v.time(Some(&rfc3339(*t))),
            v.commit(Some(c))
        );
    }
    s.push_str("</table></div>");
}

fn maintenance(v: &View, s: &mut String) {
    if v.status.schedules.is_empty() {
        return;
    }
    s.push_str("<h2>Maintenance</h2><div class=\"scroll\"><table id=\"schedules\"><tr><th>job</th><th>next run</th><th>last run</th><th>result</th></tr>");
    for (name, sch) in &v.status.schedules {
        let (last, result) = match &sch.last_run {
            Some(r) => (
                v.time(Some(&r.started)),
                match (&r.not_started, r.ok) {
                    (Some(why), _) => {
                        format!("<span class=\"drifted\">not started: {}</span>", esc(why))
                    }
                    (None, true) => format!(
                        "<span class=\"ok\">ok</span> on {} host{}",
                        r.hosts.len(),
                        if r.hosts.len() == 1 { "" } else { "s" }
                    ),
                    (None, false) => {
                        let failed: Vec<String> = r
                            .hosts
                            .iter()
                            .filter(|h| h.error.is_some())
                            .map(|h| esc(&h.host))
                            .collect();
                        format!("<span class=\"bad\">failed</span> {}", failed.join(", "))
                    }
                },
            ),
            None => ("—".into(), String::new()),
        };
        let next = match sch.next_run.as_deref() {
            Some(n) => format!(
                "{} <small class=\"wide\">{}</small>",
                v.time(Some(n)),
                esc(n)
            ),
            None => "—".into(),
        };
        let _ = write!(
            s,
            "<tr><td><img src=\"/badges/schedule-{link}.svg\" alt=\"{n}\"> {n}</td><td>{next}</td><td>{last}</td><td>{result}</td></tr>",
            n = esc(name),
            link = url_part(name),
        );
    }
    s.push_str("</table></div>");
}

fn proposals(v: &View, s: &mut String) {
    if v.history.proposals.is_empty() {
        return;
    }
    s.push_str("<h2>Pull requests</h2><div class=\"scroll\"><table id=\"proposals\"><tr><th>ref</th><th>head</th><th>plan</th><th>when</th></tr>");
    for (name, p) in &v.history.proposals {
        let pr = crate::forge::pr_number(name);
        let title = match (pr, v.web) {
            (Some(n), Some(web)) => format!("<a href=\"{}/pull/{n}\">#{n}</a>", esc(web)),
            (Some(n), None) => format!("#{n}"),
            _ => format!("<code>{}</code>", esc(name)),
        };
        let _ = write!(
            s,
            "<tr><td>{title}</td><td>{}</td><td class=\"{st}\">{st}: {}</td><td>{}</td></tr>",
            v.commit(Some(&p.commit)),
            esc(&p.description),
            v.time(Some(&p.at)),
            st = esc(&p.state),
        );
    }
    s.push_str("</table></div>");
}

/// A host's own page; None for a host the fleet does not have.
pub(crate) fn host_page(v: &View, host: &str) -> Option<String> {
    let h = v.status.hosts.get(host)?;
    let x = v.history.hosts.get(host);
    let mut s = head(host, true);
    let _ = write!(
        s,
        "<p><a href=\"/\">← {fleet}</a></p><h1>{name} <img src=\"/badges/{link}.svg\" alt=\"{st}\"></h1>\
         <p class=\"muted\">{st} · applied {} · last run {} ({}){}</p>",
        v.commit(h.applied_commit.as_deref()),
        v.time(h.last_reconcile.as_deref()),
        esc(h.last_result.as_deref().unwrap_or("—")),
        x.and_then(|x| x.cost.as_ref())
            .map(|(p, a, c)| format!(" · {} {a:.2} {} a month", esc(p), esc(c)))
            .unwrap_or_default(),
        fleet = esc(&v.status.fleet),
        name = esc(host),
        link = url_part(host),
        st = h.state.word(),
    );
    if let Some(e) = &h.last_error {
        let _ = write!(
            s,
            "<div class=\"alert\" id=\"error\"><b>Last error</b><pre>{}</pre></div>",
            esc(e)
        );
    }
    if !h.drift.is_empty() {
        let _ = write!(
            s,
            "<h2>Drift <small>({})</small></h2><pre id=\"drift\">",
            h.drift.len()
        );
        for d in &h.drift {
            let _ = writeln!(s, "{}", esc(d));
        }
        s.push_str("</pre>");
    }
    s.push_str("<h2>Last plan with changes</h2>");
    match x.and_then(|x| x.last_plan.as_ref()) {
        Some(p) => {
            let _ = write!(
                s,
                "<p class=\"muted\">{} of {} {}</p><pre class=\"plan\" id=\"plan\">",
                if p.apply {
                    "Applied"
                } else {
                    "Planned (drift check)"
                },
                v.commit(Some(&p.commit)),
                v.time(Some(&p.at))
            );
            for line in p.text.lines() {
                let t = line.trim_start();
                let class = if t.starts_with("@@") {
                    "hunk"
                } else if t.starts_with('+') && !t.starts_with("+++") {
                    "add"
                } else if t.starts_with('-') && !t.starts_with("---") && !t.starts_with("-/+") {
                    "del"
                } else {
                    ""
                };
                if class.is_empty() {
                    let _ = writeln!(s, "{}", esc(line));
                } else {
                    let _ = writeln!(s, "<span class=\"{class}\">{}</span>", esc(line));
                }
            }
            s.push_str("</pre>");
        }
        None => s.push_str(
            "<p class=\"muted\" id=\"plan\">None since the daemon started keeping history.</p>",
        ),
    }
    s.push_str("<h2>Recent runs</h2><div class=\"scroll\"><table id=\"runs\"><tr><th>when</th><th>what</th><th>commit</th><th>state</th><th>result</th><th class=\"num\">took</th></tr>");
    for r in x
        .map(|x| x.runs.iter().rev().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{st}\">{st}</td><td>{}</td><td class=\"num\">{:.1} s</td></tr>",
            v.time(Some(&r.at)),
            if r.apply { "apply" } else { "drift check" },
            v.commit(Some(&r.commit)),
            esc(&r.result),
            r.ms as f64 / 1000.0,
            st = r.state.word(),
        );
    }
    s.push_str("</table></div>");
    s.push_str(&foot());
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::history::{HostEntry, HostRun, Run};

    fn now() -> DateTime<Utc> {
        "2026-11-28T12:00:00Z".parse().unwrap()
    }

    /// Proposal refs and plan descriptions come from whoever pushed the
    /// branch: git allows `<`, `>`, `"` and `&` in ref names.
    #[test]
    fn a_proposal_named_and_described_by_an_attacker_is_shown_as_text() {
        let st = FleetStatus::default();
        let mut history = History::default();
        history.proposals.insert(
            "refs/heads/feature/<img src=x onerror=alert(1)>".into(),
            crate::daemon::history::ProposalPlan {
                commit: "\"><script>x</script>".into(),
                at: "2026-11-28T11:00:00Z".into(),
                state: "failure\" onmouseover=\"alert(2)".into(),
                description: "denied: <b>host</b> & \"name\"".into(),
            },
        );
        // A commit that is no commit id, cut by characters, never mid-character.
        history.proposals.insert(
            "refs/pull/7/head".into(),
            crate::daemon::history::ProposalPlan {
                commit: format!("a{}", "é".repeat(20)),
                at: "2026-11-28T11:00:00Z".into(),
                state: "success".into(),
                description: "ok".into(),
            },
        );
        let v = View {
            status: &st,
            history: &history,
            timeline: &[],
            web: Some("https://github.com/acme/fleet"),
            now: now(),
        };
        let page = page(&v);
        let at = page.find("<table id=\"proposals\">").unwrap();
        let prs = &page[at..at + page[at..].find("</table>").unwrap()];
        assert!(
            !prs.contains("<img") && !prs.contains("<script>") && !prs.contains("<b>"),
            "{prs}"
        );
        assert!(!prs.contains("\" onmouseover"), "{prs}");
        assert!(prs.contains("&lt;img src=x onerror=alert(1)&gt;"), "{prs}");
        assert!(
            prs.contains(&format!("<code>a{}</code>", "é".repeat(11))),
            "{prs}"
        );
        // Not a hex commit: no link is made of it.
        assert!(!prs.contains("/commit/"), "{prs}");
    }

    #[test]
    fn a_commit_held_by_the_apply_windows_shows_when_it_applies() {
        let st = FleetStatus {
            held: Some(crate::daemon::status::Held {
                commit: "c".repeat(40),
                tree: "t".into(),
                reason: "outside the apply windows; applies at 2026-11-28T14:00:00Z".into(),
                at: "2026-11-28T12:00:00Z".into(),
                until: Some("2026-11-28T14:00:00Z".into()),
                windows: true,
            }),
            ..Default::default()
        };
        let history = History::default();
        let v = View {
            status: &st,
            history: &history,
            timeline: &[],
            web: None,
            now: now(),
        };
        let page = page(&v);
        let at = page.find("<div class=\"alert\" id=\"held\">").unwrap();
        let held = &page[at..at + page[at..].find("</div>").unwrap()];
        assert!(
            held.contains("Applies at 2026-11-28T14:00:00Z (<time")
                && held.contains(">in 2 h</time>")
                && held.contains("tidekeeper release --now"),
            "{held}"
        );
    }

    #[test]
    fn relative_times_read_as_people_say_them() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(relative(now(), at("2026-11-28T11:59:50Z")), "just now");
        assert_eq!(relative(now(), at("2026-11-28T11:55:00Z")), "5 min ago");
        assert_eq!(relative(now(), at("2026-11-28T09:00:00Z")), "3 h ago");
        assert_eq!(relative(now(), at("2026-11-25T12:00:00Z")), "3 days ago");
        assert_eq!(relative(now(), at("2026-11-28T14:00:00Z")), "in 2 h");
    }

    #[test]
    fn names_and_plans_are_escaped_and_commits_link_to_the_forge() {
        let mut st = FleetStatus {
            fleet: "<acme>".into(),
            applied_commit: Some("a".repeat(40)),
            ..Default::default()
        };
        let mut h = HostStatus::new("web");
        h.last_error = Some("<script>alert(1)</script>".into());
        st.hosts.insert("web".into(), h);
        let mut history = History::default();
        history.record(
            Run {
                at: "2026-11-28T11:00:00Z".into(),
                commit: "b".repeat(40),
                apply: true,
                seconds: 2.5,
                changes: 3,
                drift: 0,
                failed: 0,
                hosts: 1,
            },
            vec![(
                "web".into(),
                HostEntry {
                    run: HostRun {
                        at: "2026-11-28T11:00:00Z".into(),
                        commit: "b".repeat(40),
                        apply: true,
                        state: HostState::Synced,
                        result: "3 added".into(),
                        ms: 2500,
                    },
                    plan: Some("  + web file /etc/<x>\n      +<b>hi</b>\n".into()),
                    cost: Some(("hetzner".into(), 4.51, "EUR".into())),
                },
            )],
        );
        let timeline = [(1_764_327_600, "a".repeat(40))];
        let v = View {
            status: &st,
            history: &history,
            timeline: &timeline,
            web: Some("https://github.com/acme/fleet"),
            now: now(),
        };
        let page = page(&v);
        assert!(page.contains("<h1>&lt;acme&gt; "), "{page}");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains(&format!(
            "<a href=\"https://github.com/acme/fleet/commit/{0}\"><code>{1}</code></a>",
            "a".repeat(40),
            "a".repeat(12)
        )));
        assert!(page.contains("<a href=\"/hosts/web\">web</a>"));
        assert!(page.contains("4.51 EUR"), "per-host cost");
        assert!(
            page.contains("<figure id=\"chart-duration\">") && page.contains("<rect class=\"bar\"")
        );
        let host = host_page(&v, "web").unwrap();
        assert!(
            host.contains("<span class=\"add\">      +&lt;b&gt;hi&lt;/b&gt;</span>"),
            "{host}"
        );
        assert!(host.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(host_page(&v, "nope").is_none());
    }
}
