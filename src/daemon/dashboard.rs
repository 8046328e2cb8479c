//! The status page as a dashboard: the fleet at a glance, charts drawn from
//! the history as inline SVG, hosts with their own pages (last plan with its
//! diffs, drift, last error, the output of the jobs that ran there, recent
//! runs), the timeline of applied commits with their messages and authors,
//! the maintenance calendar, cost per provider and host, the pull requests
//! with a page each, and what operators and alerts did (events). One HTML
//! document per page, drawn from the templates under `dashboard/` with
//! HTML auto-escaping, no external assets; responsive and dark-mode aware;
//! readable without JavaScript (a few lines turn times into the reader's
//! local time). Pure.

mod charts;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use minijinja::{Environment, Value, context};
use serde::Serialize;

use super::history::{CommitInfo, History, ProposalPlan};
use super::status::{FleetStatus, HostState, HostStatus};

/// What a page is drawn from.
pub(crate) struct View<'a> {
    pub status: &'a FleetStatus,
    pub history: &'a History,
    /// Applied commits from the status branch's history: (time, commit), newest first.
    pub timeline: &'a [(i64, String)],
    /// Messages and authors of the commits shown, as the mirror has them.
    pub commits: &'a BTreeMap<String, CommitInfo>,
    /// The repository's web address on the forge, for commit links.
    pub web: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// The templates, compiled once; every value they print is HTML-escaped
/// (the names end in `.html`), links are made only of checked addresses.
fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, text) in [
            ("base.html", include_str!("dashboard/base.html")),
            ("macros.html", include_str!("dashboard/macros.html")),
            ("index.html", include_str!("dashboard/index.html")),
            ("host.html", include_str!("dashboard/host.html")),
            ("proposal.html", include_str!("dashboard/proposal.html")),
            ("missing.html", include_str!("dashboard/missing.html")),
            ("style.css", include_str!("dashboard/style.css")),
            ("local-time.js", include_str!("dashboard/local-time.js")),
        ] {
            env.add_template(name, text)
                .unwrap_or_else(|e| panic!("dashboard template {name}: {e:#}"));
        }
        env
    })
}

fn render(name: &str, ctx: Value) -> String {
    templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| panic!("dashboard template {name}: {e:#}"))
}

/// Path segment for a page's address (host names are checked, but be safe).
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An address fit for an `href` as it is: http(s), with nothing that could
/// end the attribute or start markup; anything else is shown without a link.
fn link(url: String) -> Option<Value> {
    let plain = url.starts_with("https://") || url.starts_with("http://");
    let harmless = !url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'<>&`\\{}".contains(c));
    (plain && harmless).then(|| Value::from_safe_string(url))
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

fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What the pages draw, handed to the templates as serialized values.
macro_rules! template_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::from(minijinja::value::Serde(x))
            }
        }
    )*};
}
template_value!(
    Time,
    Commit,
    PlanLine,
    charts::Chart,
    crate::cloud::plan::CostRow,
    super::worker::Unplanned
);

/// A time: machine-readable, relative to the page's now, and in UTC.
#[derive(Serialize)]
struct Time {
    at: String,
    rel: String,
    utc: String,
}

#[derive(Serialize)]
struct Commit {
    short: String,
    url: Option<Value>,
    subject: Option<String>,
    author: Option<String>,
}

/// A plan's line, coloured by what it says.
#[derive(Serialize, Clone, Debug)]
struct PlanLine {
    class: &'static str,
    text: String,
}

fn plan_lines(text: &str) -> Vec<PlanLine> {
    text.lines()
        .map(|line| {
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
            PlanLine {
                class,
                text: line.to_string(),
            }
        })
        .collect()
}

impl View<'_> {
    fn time(&self, at: Option<&str>) -> Option<Time> {
        let at = at?;
        let t = parse(at)?;
        Some(Time {
            at: at.to_string(),
            rel: relative(self.now, t),
            utc: t.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }

    fn commit(&self, sha: Option<&str>) -> Option<Commit> {
        let sha = sha.filter(|s| !s.is_empty())?;
        let info = self.commits.get(sha);
        Some(Commit {
            short: sha.chars().take(12).collect(),
            url: self
                .web
                .filter(|_| sha.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|web| link(format!("{web}/commit/{sha}"))),
            subject: info.map(|i| i.subject.clone()),
            author: info.map(|i| i.author.clone()),
        })
    }
}

/// The dashboard.
pub(crate) fn page(v: &View) -> String {
    let st = v.status;
    let base = context! {
        title => &st.fleet,
        refresh => true,
        fleet => &st.fleet,
        word => st.state().0,
        branch => &st.branch,
        repo => &st.repo,
        head => v.commit(st.head_commit.as_deref()),
        fetch => v.time(st.last_fetch_ok.as_deref()),
        reconciled => v.time(st.last_reconcile.as_deref()),
        pushed => v.time(st.written_back.as_ref().map(|w| w.at.as_str())),
        hosts => hosts(v),
        priced => priced(v),
        timeline => timeline(v),
        schedules => schedules(v),
        proposals => proposals(v),
        events => events(v),
    };
    let ctx = context! { ..base, ..banners(v), ..cards(v), ..trends(v) };
    render("index.html", ctx)
}

/// What needs a human: an invalid or quarantined commit, a held one,
/// stale data, a suspension, a rollout under way.
fn banners(v: &View) -> Value {
    let st = v.status;
    context! {
        invalid => st.invalid.as_ref().map(|i| context! {
            denied => i.denied,
            commit => v.commit(Some(&i.commit)),
            errors => i.errors.join("\n"),
        }),
        quarantined => st.quarantined.as_ref().map(|q| context! {
            commit => v.commit(Some(&q.commit)),
            reason => &q.reason,
        }),
        held => st.held.as_ref().map(|h| context! {
            commit => v.commit(Some(&h.commit)),
            reason => &h.reason,
            windows => h.windows,
            until => v.time(h.until.as_deref()),
        }),
        stale => &st.stale,
        suspended => st.suspended.as_ref().map(|x| context! {
            by => &x.by,
            at => v.time(Some(&x.at)),
            reason => &x.reason,
        }),
        rollout => st.rollout.as_ref().map(|r| context! {
            commit => v.commit(Some(&r.commit)),
            stage => r.stage,
            stages => r.stages,
            hosts => r.hosts.join(", "),
            state => &r.state,
        }),
    }
}

/// Cards: hosts by state, the applied commit, cost, the last run, drift.
fn cards(v: &View) -> Value {
    let st = v.status;
    let hosts: Vec<&HostStatus> = st.hosts.values().collect();
    let counts: Vec<(&str, usize)> = HostState::ALL
        .iter()
        .map(|s| (s.word(), hosts.iter().filter(|h| h.state == *s).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let cost: Vec<String> = st
        .monthly_cost
        .iter()
        .map(|(cur, a)| format!("{a:.2} {cur}"))
        .collect();
    let applied_at = st
        .applied_commit
        .as_deref()
        .and_then(|c| v.timeline.iter().find(|t| t.1 == c))
        .and_then(|t| v.time(Some(&rfc3339(t.0))));
    context! {
        counts => counts,
        applied => v.commit(st.applied_commit.as_deref()),
        applied_at => applied_at,
        cost => (!cost.is_empty()).then(|| cost.join(" + ")),
        last_run => v.history.runs.back().map(|r| context! {
            seconds => format!("{:.1}", r.seconds),
            what => if r.apply { "apply" } else { "drift check" },
            at => v.time(Some(&r.at)),
        }),
        drift => hosts.iter().map(|h| h.drift.len()).sum::<usize>(),
    }
}

/// Charts from the history: durations, changes and drift per day, and cost
/// (only for a fleet with cloud servers: nothing else has a price).
fn trends(v: &View) -> Value {
    let runs: Vec<(String, f64)> = v
        .history
        .runs
        .iter()
        .rev()
        .take(40)
        .rev()
        .map(|r| (r.at.get(..16).unwrap_or(&r.at).replace('T', " "), r.seconds))
        .collect();
    let days: Vec<(String, f64, f64)> = v
        .history
        .per_day(v.now.date_naive(), 14)
        .into_iter()
        .map(|(d, c, dr)| (d.format("%b %-d").to_string(), c as f64, dr as f64))
        .collect();
    let points: Vec<(String, BTreeMap<String, f64>)> = v
        .history
        .cost
        .iter()
        .rev()
        .take(90)
        .rev()
        .map(|p| (p.day.clone(), p.cost.clone()))
        .collect();
    let priced = !v.status.monthly_cost.is_empty() && !points.is_empty();
    context! {
        durations => context! { n => runs.len(), chart => charts::bars(&runs, "s") },
        changes => charts::paired_bars(&days),
        costs => priced.then(|| context! { n => points.len(), chart => charts::cost_lines(&points) }),
    }
}

/// Each host: its state, applied commit, last run, cost, and drift or error.
fn hosts(v: &View) -> Vec<Value> {
    v.status
        .hosts
        .values()
        .map(|h| {
            let cost = v
                .history
                .hosts
                .get(&h.host)
                .and_then(|x| x.cost.as_ref())
                .map(|(_, a, c)| format!("{a:.2} {c}"));
            context! {
                name => &h.host,
                link => url_part(&h.host),
                state => h.state.word(),
                applied => v.commit(h.applied_commit.as_deref()),
                last => v.time(h.last_reconcile.as_deref()),
                cost => cost,
                error => h.last_error.as_deref().map(|e| e.lines().next().unwrap_or("")),
                drift => h.drift.len(),
                result => h.last_result.as_deref().unwrap_or(""),
            }
        })
        .collect()
}

/// Cost per provider and per host, for the hosts that have a price.
fn priced(v: &View) -> Option<Value> {
    let priced: Vec<(&String, &(String, f64, String))> = v
        .history
        .hosts
        .iter()
        .filter_map(|(h, x)| x.cost.as_ref().map(|c| (h, c)))
        .filter(|(h, _)| v.status.hosts.contains_key(*h))
        .collect();
    if priced.is_empty() {
        return None;
    }
    let mut per_provider: BTreeMap<(&str, &str), (usize, f64)> = BTreeMap::new();
    for (_, (p, a, c)) in &priced {
        let e = per_provider.entry((p.as_str(), c.as_str())).or_default();
        e.0 += 1;
        e.1 += a;
    }
    let providers: Vec<Value> = per_provider
        .iter()
        .map(|((p, c), (n, a))| context! { provider => *p, servers => n, amount => format!("{a:.2} {c}") })
        .collect();
    let hosts: Vec<Value> = priced
        .iter()
        .map(|(h, (p, a, c))| context! { name => *h, link => url_part(h), provider => p, amount => format!("{a:.2} {c}") })
        .collect();
    Some(context! { providers => providers, hosts => hosts })
}

fn timeline(v: &View) -> Vec<Value> {
    v.timeline
        .iter()
        .take(20)
        .map(|(t, c)| context! { at => v.time(Some(&rfc3339(*t))), commit => v.commit(Some(c)) })
        .collect()
}

/// The maintenance calendar: next run (relative and in UTC), the last one.
fn schedules(v: &View) -> Vec<Value> {
    v.status
        .schedules
        .iter()
        .map(|(name, sch)| {
            let last = sch.last_run.as_ref();
            let failed: Vec<String> = last
                .map(|r| {
                    r.hosts
                        .iter()
                        .filter(|h| h.error.is_some())
                        .map(|h| h.host.clone())
                        .collect()
                })
                .unwrap_or_default();
            context! {
                name => name,
                link => url_part(name),
                next => v.time(sch.next_run.as_deref()),
                last => last.and_then(|r| v.time(Some(&r.started))),
                not_started => last.and_then(|r| r.not_started.as_deref()),
                ok => last.filter(|r| r.not_started.is_none()).map(|r| r.ok),
                hosts => last.map(|r| r.hosts.len()).unwrap_or(0),
                failed => failed,
            }
        })
        .collect()
}

/// The page address of a proposal: its number for a pull request.
fn proposal_link(name: &str) -> String {
    match crate::forge::pr_number(name) {
        Some(n) => n.to_string(),
        None => url_part(name),
    }
}

fn proposals(v: &View) -> Vec<Value> {
    v.history
        .proposals
        .iter()
        .map(|(name, p)| {
            let number = crate::forge::pr_number(name);
            context! {
                name => name,
                number => number,
                forge => number.zip(v.web).and_then(|(n, web)| link(format!("{web}/pull/{n}"))),
                link => proposal_link(name),
                title => (!p.subject.is_empty()).then_some(&p.subject),
                commit => v.commit(Some(&p.commit)),
                state => &p.state,
                description => &p.description,
                at => v.time(Some(&p.at)),
            }
        })
        .collect()
}

/// What operators and alerts did, newest first.
fn events(v: &View) -> Vec<Value> {
    v.history
        .events
        .iter()
        .rev()
        .take(50)
        .map(|e| {
            let class = match e.kind.as_str() {
                "alert resolved" | "resumed" | "released" | "retried" => "ok",
                "alert firing" | "quarantined" => "bad",
                _ => "drifted",
            };
            context! { at => v.time(Some(&e.at)), kind => &e.kind, class => class, text => &e.text }
        })
        .collect()
}

/// A host's own page; None for a host the fleet does not have.
pub(crate) fn host_page(v: &View, host: &str) -> Option<String> {
    let h = v.status.hosts.get(host)?;
    let x = v.history.hosts.get(host);
    let runs: Vec<Value> = x
        .map(|x| x.runs.iter().rev().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            context! {
                at => v.time(Some(&r.at)),
                apply => r.apply,
                commit => v.commit(Some(&r.commit)),
                state => r.state.word(),
                result => &r.result,
                took => format!("{:.1}", r.ms as f64 / 1000.0),
            }
        })
        .collect();
    let ctx = context! {
        title => host,
        refresh => true,
        fleet => &v.status.fleet,
        name => host,
        link => url_part(host),
        state => h.state.word(),
        applied => v.commit(h.applied_commit.as_deref()),
        last => v.time(h.last_reconcile.as_deref()),
        result => h.last_result.as_deref(),
        cost => x.and_then(|x| x.cost.as_ref()).map(|(p, a, c)| format!("{p} {a:.2} {c}")),
        error => h.last_error.as_deref(),
        drift => &h.drift,
        last_plan => x.and_then(|x| x.last_plan.as_ref()).map(|p| context! {
            apply => p.apply,
            commit => v.commit(Some(&p.commit)),
            at => v.time(Some(&p.at)),
            lines => plan_lines(&p.text),
        }),
        jobs => jobs_on(v, host),
        runs => runs,
    };
    Some(render("host.html", ctx))
}

/// The last run of each maintenance job on `host`: its result and the
/// tail of what it printed there.
fn jobs_on(v: &View, host: &str) -> Vec<Value> {
    v.status
        .schedules
        .values()
        .filter_map(|s| s.last_run.as_ref())
        .filter_map(|r| Some((r, r.hosts.iter().find(|h| h.host == host)?)))
        .map(|(r, h)| {
            let ok = h.error.is_none();
            context! {
                job => &r.job,
                kind => &r.kind,
                started => v.time(Some(&r.started)),
                class => if ok { "ok" } else { "bad" },
                result => format!(
                    "{} in {:.1} s",
                    if ok { "ok" } else { "failed" },
                    h.duration_ms as f64 / 1000.0
                ),
                error => h.error.as_deref(),
                tail => h.log_tail.join("\n"),
            }
        })
        .collect()
}

/// A proposal's own page (`/proposals/7` for pull request 7, else its ref):
/// its head, status, the policies' verdicts, the cost it adds and its cost
/// table, the plan as text with its diffs coloured, or why there is no
/// plan. None for a proposal the daemon has not planned.
pub(crate) fn proposal_page(v: &View, key: &str) -> Option<String> {
    let (name, p): (&String, &ProposalPlan) = v
        .history
        .proposals
        .iter()
        .find(|(name, _)| proposal_link(name) == url_part(key) || name.as_str() == key)?;
    let number = crate::forge::pr_number(name);
    let raised: Vec<String> = p
        .raised_cost
        .iter()
        .map(|(c, a)| format!("{a:.2} {c}"))
        .collect();
    let ctx = context! {
        title => match number { Some(n) => format!("#{n}"), None => name.clone() },
        refresh => true,
        fleet => &v.status.fleet,
        name => name,
        number => number,
        forge => number.zip(v.web).and_then(|(n, web)| link(format!("{web}/pull/{n}"))),
        subject => (!p.subject.is_empty()).then_some(&p.subject),
        author => (!p.author.is_empty()).then_some(&p.author),
        head => v.commit(Some(&p.commit)),
        at => v.time(Some(&p.at)),
        state => &p.state,
        description => &p.description,
        denials => &p.denials,
        warnings => &p.warnings,
        raised => raised,
        cost => &p.cost,
        unplanned => &p.unplanned,
        lines => plan_lines(&p.text),
    };
    Some(render("proposal.html", ctx))
}

/// The page for an address naming no host or proposal.
pub(crate) fn missing_page(what: &str, name: &str) -> String {
    let ctx = context! { title => "not found", refresh => false, what => what, name => name };
    render("missing.html", ctx)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::plan::CostRow;
    use crate::daemon::history::{HostEntry, HostRun, Run};
    use crate::daemon::status::ScheduleStatus;
    use crate::daemon::worker::Unplanned;
    use crate::maintenance::run::{HostRun as MaintenanceHostRun, HostRunResult, JobRun};

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
                ..Default::default()
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
                ..Default::default()
            },
        );
        let v = View {
            status: &st,
            history: &history,
            timeline: &[],
            commits: &BTreeMap::new(),
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
            commits: &BTreeMap::new(),
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
            commits: &BTreeMap::new(),
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
            // minijinja escapes `/` too (`&#x2f;`), as OWASP advises.
            host.contains("<span class=\"add\">      +&lt;b&gt;hi&lt;&#x2f;b&gt;</span>"),
            "{host}"
        );
        assert!(host.contains("&lt;script&gt;alert(1)&lt;"), "{host}");
        assert!(host_page(&v, "nope").is_none());
    }

    /// Text anyone can get onto the page: a host name (checked by the model,
    /// but the page must not rely on it), a commit's message and author, a
    /// pull request's title and plan, a job's output and an error.
    const HOSTILE: &str = "<script>document.body.dataset.pwned=1</script>\"'{{ 7*7 }}{% if true %}x{% endif %}\n<img src=x onerror=alert(1)>";

    struct Fixture {
        status: FleetStatus,
        history: History,
        timeline: Vec<(i64, String)>,
        commits: BTreeMap<String, CommitInfo>,
    }

    impl Fixture {
        fn view(&self) -> View<'_> {
            View {
                status: &self.status,
                history: &self.history,
                timeline: &self.timeline,
                commits: &self.commits,
                web: Some("https://github.com/acme/fleet"),
                now: now(),
            }
        }
    }

    fn job_run(job: &str, host: &str, error: Option<&str>, tail: &[&str]) -> JobRun {
        JobRun {
            job: job.into(),
            kind: "command".into(),
            started: "2026-11-28T11:00:00Z".into(),
            finished: "2026-11-28T11:00:05Z".into(),
            ok: error.is_none(),
            not_started: None,
            hosts: vec![MaintenanceHostRun {
                host: host.into(),
                result: if error.is_none() {
                    HostRunResult::Ok
                } else {
                    HostRunResult::Failed
                },
                error: error.map(String::from),
                rebooted: false,
                duration_ms: 5000,
                log_tail: tail.iter().map(|t| t.to_string()).collect(),
            }],
        }
    }

    /// A fleet whose every text field holds [`HOSTILE`].
    fn hostile() -> Fixture {
        let name = format!("web{HOSTILE}");
        let mut h = HostStatus::new(&name);
        h.last_error = Some(format!("apply failed: {HOSTILE}"));
        h.drift = vec![HOSTILE.into()];
        let mut status = FleetStatus {
            fleet: format!("acme{HOSTILE}"),
            ..Default::default()
        };
        status.hosts.insert(name.clone(), h);
        status.schedules.insert(
            format!("nightly{HOSTILE}"),
            ScheduleStatus {
                next_run: Some("2026-11-28T15:00:00Z".into()),
                last_run: Some(job_run(
                    &format!("nightly{HOSTILE}"),
                    &name,
                    Some(HOSTILE),
                    &[HOSTILE, "done"],
                )),
            },
        );
        let mut history = History::default();
        history.proposals.insert(
            "refs/pull/7/head".into(),
            ProposalPlan {
                commit: "e".repeat(40),
                at: "2026-11-28T11:30:00Z".into(),
                state: "failure".into(),
                description: format!("denied: {HOSTILE}"),
                subject: HOSTILE.into(),
                author: HOSTILE.into(),
                text: format!("  ~ web file /etc/motd\n      -old\n      +{HOSTILE}\n"),
                denials: vec![HOSTILE.into()],
                warnings: vec![HOSTILE.into()],
                raised_cost: BTreeMap::from([("EUR".to_string(), 17.5)]),
                cost: vec![
                    CostRow {
                        server: HOSTILE.into(),
                        provider: "Hetzner".into(),
                        now: "—".into(),
                        after: "17.50 EUR".into(),
                        change: "+17.50 EUR".into(),
                        total: false,
                    },
                    CostRow {
                        server: "fleet".into(),
                        provider: String::new(),
                        now: "0.00 EUR".into(),
                        after: "17.50 EUR".into(),
                        change: "+17.50 EUR".into(),
                        total: true,
                    },
                ],
                unplanned: None,
            },
        );
        // One that could not be planned: its config's errors quote it.
        history.proposals.insert(
            "refs/pull/6/head".into(),
            ProposalPlan {
                commit: "d".repeat(40),
                at: "2026-11-28T11:20:00Z".into(),
                state: "failure".into(),
                description: "invalid config".into(),
                subject: HOSTILE.into(),
                unplanned: Some(Unplanned {
                    why: "invalid config".into(),
                    details: format!("hosts/web.yaml: unknown role {HOSTILE}"),
                }),
                ..Default::default()
            },
        );
        history.event("2026-11-28T11:40:00Z", "suspended", format!("by {HOSTILE}"));
        let commits = BTreeMap::from([(
            "a".repeat(40),
            CommitInfo {
                subject: HOSTILE.into(),
                author: HOSTILE.into(),
            },
        )]);
        Fixture {
            status,
            history,
            timeline: vec![(1_764_327_600, "a".repeat(40))],
            commits,
        }
    }

    /// Markup that only hostile text could have put there.
    fn assert_inert(page: &str) {
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the page's own script:\n{page}"
        );
        for bad in [
            "<img src=x",
            "dataset.pwned=1</script>",
            "&#x27;49",
            "&#x27;x",
        ] {
            assert!(!page.contains(bad), "{bad:?} got through:\n{page}");
        }
        assert!(
            page.contains("&lt;script&gt;document.body.dataset.pwned=1&lt;")
                && page.contains("&quot;&#x27;{{ 7*7 }}{% if true %}x{% endif %}"),
            "shown as the text it is:\n{page}"
        );
    }

    #[test]
    fn hostile_names_messages_titles_output_and_errors_are_shown_as_text_on_every_page() {
        let f = hostile();
        let v = f.view();
        let index = page(&v);
        assert_inert(&index);
        // The host's link is made of its name, percent-encoded.
        assert!(
            index.contains("<a href=\"/hosts/web%3Cscript%3Edocument.body.dataset.pwned%3D1"),
            "{index}"
        );
        let host = host_page(&v, &format!("web{HOSTILE}")).unwrap();
        assert_inert(&host);
        let pr = proposal_page(&v, "7").unwrap();
        assert_inert(&pr);
        assert_inert(&proposal_page(&v, "6").unwrap());
        assert_inert(&missing_page("host", HOSTILE));
    }

    #[test]
    fn the_changes_legend_has_the_colours_of_the_bars() {
        let f = hostile();
        let index = page(&f.view());
        let at = index.find("<figure id=\"chart-changes\">").unwrap();
        let figure = &index[at..at + index[at..].find("</figure>").unwrap()];
        let legend = &figure[..figure.find("<svg").unwrap()];
        // Each series' key carries its bars' class, whose colour the style sets.
        assert!(
            legend.contains("Changes <span class=\"key bar\">■</span>")
                && legend.contains("drift <span class=\"key bar2\">■</span>"),
            "{legend}"
        );
        assert!(
            figure.contains("<rect class=\"bar\"") && figure.contains("<rect class=\"bar2\""),
            "{figure}"
        );
        let style = include_str!("dashboard/style.css");
        assert!(
            style.contains(".bar{fill:var(--accent)}")
                && style.contains(".key.bar{color:var(--accent)}")
                && style.contains(".bar2{fill:var(--warn)}")
                && style.contains(".key.bar2{color:var(--warn)}"),
            "legend and bars share colours"
        );
    }

    #[test]
    fn a_fleet_without_cloud_servers_has_no_cost_chart() {
        let mut f = hostile();
        assert!(!page(&f.view()).contains("chart-cost"));
        // With a priced server the chart is drawn.
        f.status.monthly_cost.insert("EUR".into(), 4.51);
        f.history
            .cost_on("2026-11-28", &BTreeMap::from([("EUR".to_string(), 4.51)]));
        let index = page(&f.view());
        assert!(
            index.contains("<figure id=\"chart-cost\">") && index.contains("<polyline"),
            "{index}"
        );
    }

    #[test]
    fn a_job_due_later_reads_in_so_many_hours_next_to_its_time_in_utc() {
        let f = hostile();
        let index = page(&f.view());
        let at = index.find("<table id=\"schedules\">").unwrap();
        let table = &index[at..at + index[at..].find("</table>").unwrap()];
        assert!(
            table.contains(
                "<time datetime=\"2026-11-28T15:00:00Z\" title=\"2026-11-28T15:00:00Z\">in 3 h</time> <small class=\"wide\">2026-11-28 15:00 UTC</small>"
            ),
            "{table}"
        );
        assert!(!table.contains("just now"), "{table}");
    }

    #[test]
    fn the_quarantine_banner_says_how_to_retry() {
        let mut f = hostile();
        f.status.quarantined = Some(crate::daemon::status::Quarantine {
            commit: "c".repeat(40),
            reason: "apply failed: web: step 2 exited with 1".into(),
        });
        let index = page(&f.view());
        let at = index
            .find("<div class=\"alert\" id=\"quarantined\">")
            .unwrap();
        let banner = &index[at..at + index[at..].find("</div>").unwrap()];
        assert!(
            banner.contains("<code>tidekeeper retry --daemon HOST</code>")
                && banner.contains("apply failed: web: step 2 exited with 1"),
            "{banner}"
        );
    }

    #[test]
    fn a_pull_request_has_a_page_with_its_plan_verdicts_cost_and_status() {
        let mut f = hostile();
        f.history.proposals.insert(
            "refs/pull/9/head".into(),
            ProposalPlan {
                commit: "f".repeat(40),
                at: "2026-11-28T11:00:00Z".into(),
                state: "success".into(),
                description: "Plan: 0 to add, 1 to change".into(),
                subject: "Raise the motd".into(),
                author: "Ada Lovelace".into(),
                text: "  ~ web file /etc/motd\n@@ -1 +1 @@\n-old\n+new\n".into(),
                ..Default::default()
            },
        );
        let v = f.view();
        let index = page(&v);
        let at = index.find("<table id=\"proposals\">").unwrap();
        let rows = &index[at..at + index[at..].find("</table>").unwrap()];
        assert!(
            rows.contains("<a href=\"https://github.com/acme/fleet/pull/9\">#9</a>")
                && rows.contains("<a href=\"/proposals/9\">Raise the motd</a>"),
            "{rows}"
        );
        let pr = proposal_page(&v, "9").unwrap();
        assert!(pr.contains("<h1>#9 Raise the motd</h1>"), "{pr}");
        assert!(pr.contains(" by Ada Lovelace"), "{pr}");
        assert!(
            pr.contains(
                "<td class=\"success\" id=\"status\">success: Plan: 0 to add, 1 to change</td>"
            ),
            "{pr}"
        );
        assert!(pr.contains("<span class=\"ok\">no denials</span>"), "{pr}");
        assert!(pr.contains("no rise in the monthly cost"), "{pr}");
        assert!(
            pr.contains("<span class=\"hunk\">@@ -1 +1 @@</span>")
                && pr.contains("<span class=\"del\">-old</span>")
                && pr.contains("<span class=\"add\">+new</span>"),
            "{pr}"
        );
        assert!(!pr.contains("id=\"cost\""), "no price changes: {pr}");
        // The denied one: its verdicts, the cost it raises and its table.
        let denied = proposal_page(&v, "7").unwrap();
        assert!(
            denied.contains("<li class=\"bad\">&lt;script&gt;")
                && denied.contains("<li class=\"warn\">warn: &lt;script&gt;")
                && denied.contains("raises the monthly cost to 17.50 EUR"),
            "{denied}"
        );
        assert!(
            denied.contains("<td class=\"num\">—</td><td class=\"num\">17.50 EUR</td><td class=\"num\">+17.50 EUR</td></tr>")
                && denied.contains("<tr class=\"total\"><th>fleet</th><td></td><td class=\"num\">0.00 EUR</td><td class=\"num\">17.50 EUR</td><td class=\"num\"><b>+17.50 EUR</b></td></tr>"),
            "{denied}"
        );
        // One not planned: why, and no verdicts, cost or plan made up.
        let failed = proposal_page(&v, "6").unwrap();
        assert!(
            failed.contains("<div class=\"alert\" id=\"plan-error\"><b>Not planned: invalid config</b><pre>hosts&#x2f;web.yaml: unknown role &lt;script&gt;")
                && failed.contains("not judged: nothing was planned")
                && failed.contains("not known: nothing was planned")
                && !failed.contains("id=\"plan\"")
                && !failed.contains("no denials"),
            "{failed}"
        );
        assert!(proposal_page(&v, "8").is_none());
    }

    #[test]
    fn applied_commits_show_their_message_and_author() {
        let mut f = hostile();
        f.commits.insert(
            "a".repeat(40),
            CommitInfo {
                subject: "Open port 443 on web".into(),
                author: "Grace Hopper".into(),
            },
        );
        let index = page(&f.view());
        let at = index.find("<table id=\"timeline\">").unwrap();
        let table = &index[at..at + index[at..].find("</table>").unwrap()];
        assert!(
            table.contains(
                "</a></td><td>Open port 443 on web</td><td class=\"wide\">Grace Hopper</td></tr>"
            ),
            "{table}"
        );
    }

    #[test]
    fn events_are_listed_newest_first() {
        let mut f = hostile();
        f.history.event(
            "2026-11-28T11:50:00Z",
            "resumed",
            "an operator resumed applies and jobs".into(),
        );
        f.history.event(
            "2026-11-28T11:55:00Z",
            "alert firing",
            "host web: apply failed".into(),
        );
        let index = page(&f.view());
        let at = index.find("<table id=\"events\">").unwrap();
        let table = &index[at..at + index[at..].find("</table>").unwrap()];
        let order: Vec<usize> = ["alert firing", "resumed", "suspended"]
            .iter()
            .map(|k| {
                table
                    .find(&format!(">{k}</td>"))
                    .unwrap_or_else(|| panic!("{k}: {table}"))
            })
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{table}");
        assert!(table.contains(">5 min ago</time>"), "{table}");
    }

    #[test]
    fn a_host_page_shows_the_output_of_the_jobs_that_ran_there() {
        let mut f = hostile();
        let name = format!("web{HOSTILE}");
        f.status.schedules.insert(
            "backup".into(),
            ScheduleStatus {
                next_run: None,
                last_run: Some(job_run(
                    "backup",
                    &name,
                    None,
                    &["snapshot 4f2a saved", "processed 120 files"],
                )),
            },
        );
        let host = host_page(&f.view(), &name).unwrap();
        let at = host.find("<div id=\"jobs\">").unwrap();
        let jobs = &host[at..];
        assert!(
            jobs.contains("<pre class=\"output\">snapshot 4f2a saved\nprocessed 120 files</pre>")
                && jobs.contains("<span class=\"ok\">ok in 5.0 s</span>"),
            "{jobs}"
        );
        assert!(
            jobs.contains("<span class=\"bad\">failed in 5.0 s</span>"),
            "{jobs}"
        );
    }
}
