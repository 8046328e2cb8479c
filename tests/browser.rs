//! The daemon's dashboard in a real browser: headless Chromium (Debian's
//! package) loads the pages of a reconciled example fleet; the test checks
//! what it rendered — hosts, states, cost, charts, timeline, a host's plan —
//! that it fetched every badge, and keeps the screenshots docs/ shows
//! (desktop, phone, host page). A pull request's page is rendered too: its
//! plan as text (no markdown, no JSON), verdicts and cost table, its markup
//! as text, and that it fits a phone; and the page of one not planned.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::TempDir;
use crate::support::daemon::Daemon;
use crate::support::git;

/// Chromium as the machine has it: headless, with everything that would
/// reach out to the network switched off, and a profile of its own.
fn chromium(profile: &Path) -> Option<Command> {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    Some(c)
}

/// Chromium's rendering of `url` as a PNG at `width`×`height` (`extra`:
/// more flags, e.g. dark mode).
fn screenshot(profile: &Path, url: &str, width: u32, height: u32, extra: &[&str]) -> Vec<u8> {
    let shot = profile.join(format!("shot-{width}.png"));
    let out = chromium(profile)
        .unwrap()
        .args(extra)
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // The PNG's own header says how wide the page was drawn.
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(w, width, "drawn at the window's width");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    png
}

fn rendered(profile: &Path, url: &str) -> String {
    let out = chromium(profile)
        .unwrap()
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kept in docs/ (rewritten with TIDEKEEPER_BLESS=1 or when missing).
fn keep(name: &str, png: &[u8]) {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    if std::env::var_os("TIDEKEEPER_BLESS").is_some() || !doc.exists() {
        std::fs::write(&doc, png).unwrap();
    }
}

/// Whether Chromium is there to test with (a test without it is skipped,
/// unless TIDEKEEPER_REQUIRE_TOOLS says it must be).
fn have_chromium(profile: &Path) -> bool {
    if chromium(profile).is_some() {
        return true;
    }
    assert!(
        std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
        "chromium is not installed; scripts/setup installs it"
    );
    eprintln!("skipping: chromium not installed; run scripts/test to install it");
    false
}

#[test]
fn the_dashboard_and_a_host_page_render_in_chromium_on_desktop_and_phone() {
    let profile = TempDir::new("chromium");
    if !have_chromium(profile.path()) {
        return;
    }
    let (f, _) = crate::examples::agent_server_fleet();
    // The page needs servers of two providers and currencies, not all three
    // candidates: the EC2 one is created and checked in the example's own test.
    std::fs::remove_file(f.repo.path.join("hosts/outpost-ec2.yaml")).unwrap();
    f.repo
        .commit("the dashboard's fleet: the Lightsail and Hetzner candidates");
    let d = Daemon::start_env(
        &f.repo.path,
        &f.repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &crate::support::cloud::CREDENTIALS,
    );
    let head = git(&f.repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, crate::support::cloud::SERVER_CREATE);
    // The status branch records the apply before the timeline can show it.
    d.wait_for("the status branch written", Duration::from_secs(30), |d| {
        d.status()["written_back"]["applied_commit"] == head.as_str()
    });
    let url = format!("http://127.0.0.1:{}/", d.port);

    // What Chromium rendered: hosts linking to their pages, the cost, the
    // charts drawn from the history, the applied commit in the timeline.
    let dom = rendered(profile.path(), &url);
    assert!(dom.contains("<h1>outpost"), "{dom}");
    assert!(dom.contains("name=\"viewport\""), "made for phones too");
    for host in ["outpost", "outpost-hz"] {
        assert!(
            dom.contains(&format!("<td><a href=\"/hosts/{host}\">{host}</a></td><td class=\"synced\"><img src=\"/badges/{host}.svg\" alt=\"synced\"></td>")),
            "{host} shown synced with its badge and a link to its page:\n{dom}"
        );
    }
    assert!(dom.contains("13.60 EUR + 24.00 USD"), "{dom}");
    for (provider, cost) in [("Lightsail", "24.00 USD"), ("Hetzner", "13.60 EUR")] {
        assert!(
            dom.contains(&format!(
                "<td>{provider}</td><td class=\"num\">1</td><td class=\"num\">{cost}</td>"
            )),
            "cost per provider:\n{dom}"
        );
    }
    for chart in ["chart-duration", "chart-changes", "chart-cost"] {
        let at = dom
            .find(&format!("id=\"{chart}\""))
            .unwrap_or_else(|| panic!("{chart}:\n{dom}"));
        let figure = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        assert!(figure.contains("<svg"), "{chart}: {figure}");
        if chart != "chart-cost" {
            assert!(
                figure.contains("<rect class=\"bar\""),
                "{chart} has bars: {figure}"
            );
        } else {
            assert!(figure.contains("<polyline"), "{figure}");
        }
    }
    let timeline = &dom[dom.find("id=\"timeline\"").expect("timeline")..];
    assert!(timeline.contains(&head[..12]), "{timeline}");
    assert!(
        dom.contains("<time datetime="),
        "times are machine-readable"
    );

    // A host's page: its last plan with the diffs, and its runs.
    let host = rendered(profile.path(), &format!("{url}hosts/outpost"));
    assert!(host.contains("<h1>outpost"), "{host}");
    let plan = &host[host.find("id=\"plan\"").expect("a plan")..];
    assert!(
        plan.contains("<span class=\"add\">"),
        "diff lines coloured: {plan}"
    );
    assert!(
        host.contains("<table id=\"runs\">") && host.contains("<td>apply</td>"),
        "{host}"
    );
    let missing = rendered(profile.path(), &format!("{url}hosts/%3Cscript%3E"));
    assert!(missing.contains("No host &lt;script&gt;"), "{missing}");

    // Screenshots at desktop and phone widths; loading the page fetches every badge.
    let light = screenshot(profile.path(), &url, 1280, 1000, &[]);
    keep("dashboard.png", &light);
    keep(
        "dashboard-phone.png",
        &screenshot(profile.path(), &url, 390, 1400, &[]),
    );
    keep(
        "dashboard-host.png",
        &screenshot(
            profile.path(),
            &format!("{url}hosts/outpost"),
            1100,
            900,
            &[],
        ),
    );
    // The system's dark mode turns the page dark (the corner's pixel: the background).
    let dark = screenshot(profile.path(), &url, 1280, 1000, &["--force-dark-mode"]);
    keep("dashboard-dark.png", &dark);
    let (bright, dim) = (first_pixel(&light), first_pixel(&dark));
    assert!(
        bright.iter().all(|c| *c > 0xf0),
        "light background: {bright:?}"
    );
    assert!(dim.iter().all(|c| *c < 0x30), "dark background: {dim:?}");
    let (_, metrics) = d.get("/metrics");
    for badge in ["fleet", "outpost", "outpost-hz"] {
        assert!(
            metrics.contains(&format!(
                "tidekeeper_badge_requests_total{{badge=\"{badge}\"}}"
            )),
            "Chromium fetched the {badge} badge:\n{metrics}"
        );
    }
}

/// The top-left pixel's RGB. Row 0's first pixel is stored as it is under
/// every PNG filter, so inflating the first IDAT chunk is enough (Python's
/// zlib does that; no image crate needed).
fn first_pixel(png: &[u8]) -> [u8; 3] {
    let script = "import sys,zlib,struct\n\
d=sys.stdin.buffer.read();i=d.find(b'IDAT');n=struct.unpack('>I',d[i-4:i])[0]\n\
r=zlib.decompressobj().decompress(d[i+4:i+4+n]);print(r[1],r[2],r[3])";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(png).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u8> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    [v[0], v[1], v[2]]
}

/// Markup a pull request carries in its commit message and in a file: it
/// must reach the pages as text, never run.
const MARKUP: &str = "<script>document.title='owned'</script>";
const MARKUP_TEXT: &str = "&lt;script&gt;document.title='owned'&lt;/script&gt;";

/// A daemon that has planned pull request 7, and what the test knows of it.
struct PlannedPr {
    d: Daemon,
    /// The fake GitHub's port (its web pages are under it too).
    forge: u16,
    head: String,
    fleet: crate::support::cloud::CloudFleet,
    _root: TempDir,
}

/// A fleet of one local host (a directory) with its file, reporting to the
/// fake GitHub, applied by a daemon; then pull request 7, by Grace Hopper,
/// rewrites the file (markup and a long unbroken URL in it) and adds a
/// Hetzner server open to SSH from anywhere: a diff, a cost rise and a
/// policy denial. Returns once the daemon has planned it.
fn planned_pull_request() -> PlannedPr {
    let root = TempDir::new("browser-pr-root");
    let forge = crate::support::daemon::free_port();
    let fake = crate::forge::fake_github(forge);
    let f = crate::support::cloud::CloudFleet::start(
        &[
            (
                "hosts/box.yaml",
                &format!(
                    "provider: local\nroot: {}\nroles: [app]\n",
                    root.path().display()
                ),
            ),
            (
                "roles/app.yaml",
                "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\n",
            ),
        ],
        &format!(
            "status:\n  forge:\n    kind: github\n    url: http://127.0.0.1:{forge}\n    repo: acme/fleet\n"
        ),
    );
    fake.lock().unwrap().pulls_from(&f.repo.path);
    let main = git(&f.repo.path, &["rev-parse", "HEAD"]);
    let mut env = vec![("GITHUB_TOKEN", "t0k")];
    env.extend(crate::support::cloud::CREDENTIALS);
    let d = Daemon::start_env(
        &f.repo.path,
        &f.repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &env,
    );
    d.wait_applied(&main, Duration::from_secs(120));

    git(&f.repo.path, &["checkout", "-q", "-b", "pr-7"]);
    let url = format!(
        "https://mirror.example.org/debian/{}",
        "0a1b2c3d".repeat(20)
    );
    f.repo.write(
        "roles/app.yaml",
        &format!(
            "files:\n  - {{path: /etc/app.conf, content: \"v2 {MARKUP}\\nmirror = {url}\\n\"}}\n"
        ),
    );
    f.repo.write(
        "hosts/web.yaml",
        "provider: hetzner\nserver:\n  type: cpx21\n  image: debian-12\n  location: fsn1\n  firewall:\n    - port: \"22\"\n      from: [0.0.0.0/0]\nroles: []\n",
    );
    git(&f.repo.path, &["add", "-A"]);
    git(
        &f.repo.path,
        &[
            "commit",
            "-q",
            "--author",
            "Grace Hopper <grace@example.org>",
            "-m",
            &format!("Add a web server {MARKUP}"),
        ],
    );
    let head = git(&f.repo.path, &["rev-parse", "HEAD"]);
    git(&f.repo.path, &["update-ref", "refs/pull/7/head", &head]);
    git(&f.repo.path, &["checkout", "-q", "main"]);
    d.wait_for("pull request 7 planned", Duration::from_secs(240), |d| {
        let (code, page) = d.get("/proposals/7");
        code == 200 && page.contains(&head[..12])
    });
    PlannedPr {
        d,
        forge,
        head,
        fleet: f,
        _root: root,
    }
}

/// A page at `/` of a server of its own that loads `page` in a frame
/// `?w=` pixels wide and writes, as JSON in its `<pre id="m">`, what the
/// frame measured: its viewport's width, the document's scroll width,
/// whether the phone and dark styles apply, the body's background, how far
/// the plan and the summary table overflow their boxes, the elements and
/// text reaching past the right edge outside a scrolling box, and the
/// page's text as laid out (`innerText`). (Headless
/// Chromium's window is never narrower than 500 pixels; a frame is.)
fn measuring_page(page: &str) -> String {
    let html =
        r#"<!doctype html><meta charset="utf-8"><body style="margin:0"><pre id="m"></pre><script>
const w = +new URLSearchParams(location.search).get('w');
const m = document.getElementById('m');
const f = document.createElement('iframe');
f.style.cssText = 'border:0;display:block;height:900px;width:' + w + 'px';
f.onload = () => {
  try {
    const win = f.contentWindow, doc = win.document, root = doc.documentElement;
    const over = el => el.scrollWidth - el.clientWidth;
    // Elements and text reaching past the right edge, but in a scrolling box.
    const past = box => box.right > root.clientWidth + 0.5;
    const outside = [...doc.body.querySelectorAll('*')]
      .filter(el => !el.closest('.scroll') && past(el.getBoundingClientRect()))
      .map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : ''));
    const walk = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT), range = doc.createRange();
    while (walk.nextNode()) {
      const t = walk.currentNode;
      range.selectNodeContents(t);
      if (!t.parentElement.closest('.scroll') && past(range.getBoundingClientRect()))
        outside.push(t.parentElement.tagName.toLowerCase() + ': ' + t.textContent.slice(0, 60));
    }
    m.textContent = JSON.stringify({
      viewport: win.innerWidth, scroll: root.scrollWidth,
      phone: win.matchMedia('(max-width: 40rem)').matches,
      dark: win.matchMedia('(prefers-color-scheme: dark)').matches,
      background: win.getComputedStyle(doc.body).backgroundColor,
      plan: over(doc.getElementById('plan')),
      summary: over(doc.getElementById('proposal').parentElement),
      outside, text: doc.body.innerText,
    });
  } catch (e) { m.textContent = JSON.stringify({error: String(e)}); }
};
f.src = 'PAGE';
document.body.append(f);
</script>"#
            .replace("PAGE", page);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    crate::support::serve_in_thread(listener, app);
    format!("http://127.0.0.1:{port}/")
}

/// What the measuring page at `harness` measured at `width` (`extra`: more
/// flags). The frame is of another origin: reading it needs Chromium's
/// same-origin checks off, for this run only.
fn measure(profile: &Path, harness: &str, width: u32, extra: &[&str]) -> serde_json::Value {
    let out = chromium(profile)
        .unwrap()
        .args(extra)
        .arg("--disable-web-security")
        .arg("--window-size=1400,1000")
        .arg("--dump-dom")
        .arg(format!("{harness}?w={width}"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let json = dom
        .split("<pre id=\"m\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .filter(|j| !j.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "nothing measured:\n{dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let json = json
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["viewport"], width, "laid out at {width} pixels: {v}");
    v
}

/// `rgb(r, g, b)` as CSS computes it → its channels.
fn rgb(css: &serde_json::Value) -> Vec<u8> {
    let s = css.as_str().unwrap_or_default();
    s.trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect()
}

#[test]
fn a_pull_request_page_shows_its_plan_verdicts_and_cost_on_desktop_phone_and_dark() {
    let profile = TempDir::new("chromium-pr");
    if !have_chromium(profile.path()) {
        return;
    }
    let pr = planned_pull_request();
    let url = format!("http://127.0.0.1:{}/", pr.d.port);

    // The dashboard lists the pull request, its title linking to its page.
    let dom = rendered(profile.path(), &url);
    let at = dom.find("<table id=\"proposals\">").expect("a PR table");
    let rows = &dom[at..at + dom[at..].find("</table>").unwrap()];
    assert!(
        rows.contains(&format!(
            "<a href=\"http://127.0.0.1:{}/acme/fleet/pull/7\">#7</a>",
            pr.forge
        )) && rows.contains(&format!(
            "<a href=\"/proposals/7\">Add a web server {MARKUP_TEXT}</a>"
        )),
        "{rows}"
    );
    assert!(
        rows.contains("<td class=\"failure\">failure: denied by tidekeeper.builtin.exposure"),
        "{rows}"
    );

    let page = format!("{url}proposals/7");
    proposal_rendered(&rendered(profile.path(), &page), &pr);

    // At a phone's width nothing reaches past the screen's edge: the plan
    // wraps its long lines, the summary table fits; on a desktop too.
    let harness = measuring_page(&page);
    let phone = measure(profile.path(), &harness, 390, &[]);
    assert_eq!(phone["phone"], true, "the phone styles apply: {phone}");
    assert!(phone["scroll"].as_u64().unwrap() <= 390, "{phone}");
    assert_eq!(phone["outside"], serde_json::json!([]), "{phone}");
    assert_eq!(phone["plan"], 0, "the plan wraps: {phone}");
    assert_eq!(phone["summary"], 0, "the summary fits: {phone}");
    let light = rgb(&phone["background"]);
    assert!(light.iter().all(|c| *c > 0xf0), "light: {phone}");
    let desk = measure(profile.path(), &harness, 1280, &[]);
    assert_eq!(desk["phone"], false, "{desk}");
    assert!(desk["scroll"].as_u64().unwrap() <= 1280, "{desk}");
    assert_eq!(desk["plan"], 0, "{desk}");
    page_text_plain(desk["text"].as_str().expect("the page's text"));

    // In the system's dark mode the page is dark, on a phone too.
    let dark = measure(profile.path(), &harness, 390, &["--force-dark-mode"]);
    assert_eq!(dark["dark"], true, "{dark}");
    assert!(rgb(&dark["background"]).iter().all(|c| *c < 0x30), "{dark}");
    assert!(dark["scroll"].as_u64().unwrap() <= 390, "{dark}");

    // As drawn: light and dark at a desktop's width (the corner: the background).
    let shot = screenshot(profile.path(), &page, 1280, 1000, &[]);
    let shot_dark = screenshot(profile.path(), &page, 1280, 1000, &["--force-dark-mode"]);
    let (bright, dim) = (first_pixel(&shot), first_pixel(&shot_dark));
    assert!(bright.iter().all(|c| *c > 0xf0), "light: {bright:?}");
    assert!(dim.iter().all(|c| *c < 0x30), "dark: {dim:?}");

    failed_pull_request_rendered(profile.path(), &pr);
}

/// The page's text as a reader sees it: the plan as text, its summary, cost
/// and verdicts, and nothing of the forge comment's markdown (its marker,
/// folds, fences, tables) nor the plan's JSON the git note carries.
fn page_text_plain(text: &str) {
    for raw in [
        "<!-- tidekeeper",
        "<details>",
        "<summary>",
        "```",
        "\"format_version\"",
        "|---|",
        "**",
    ] {
        assert!(!text.contains(raw), "{raw:?} on the page:\n{text}");
    }
    let plan = &text[text.find("\nPlan\n").expect("a Plan heading")..];
    for line in [
        "Cloud servers",
        "+ web server (Hetzner, create)  +7.55 EUR/month",
        "Monthly cost: 0.00 → 7.55 EUR (+7.55)",
        "Plan: 2 to add, 0 to change, 0 to destroy.",
    ] {
        assert!(
            plan.lines().any(|l| l.trim() == line),
            "{line:?} a line of the plan:\n{plan}"
        );
    }
    assert!(
        text.contains("lets port 22 in from 0.0.0.0/0 at the cloud firewall"),
        "the denial shown:\n{text}"
    );
}

/// Pull request 8 makes the config invalid (markup in what it names): its
/// page says it could not be planned and why, as text, with no plan, no
/// verdicts and no cost made up.
fn failed_pull_request_rendered(profile: &Path, pr: &PlannedPr) {
    let repo = &pr.fleet.repo;
    git(&repo.path, &["checkout", "-q", "-b", "pr-8"]);
    repo.write(
        "hosts/bad.yaml",
        &format!("provider: local\nroot: /nonexistent\nroles: [\"{MARKUP}\"]\n"),
    );
    git(&repo.path, &["add", "-A"]);
    git(&repo.path, &["commit", "-q", "-m", "Break the config"]);
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["update-ref", "refs/pull/8/head", &head]);
    git(&repo.path, &["checkout", "-q", "main"]);
    pr.d.wait_for("pull request 8 planned", Duration::from_secs(120), |d| {
        let (code, page) = d.get("/proposals/8");
        code == 200 && page.contains(&head[..12])
    });
    let dom = rendered(
        profile,
        &format!("http://127.0.0.1:{}/proposals/8", pr.d.port),
    );
    assert!(dom.contains("<h1>#8 Break the config</h1>"), "{dom}");
    assert!(
        dom.contains("<td class=\"failure\" id=\"status\">failure: invalid config</td>"),
        "{dom}"
    );
    let at = dom
        .find("<div class=\"alert\" id=\"plan-error\">")
        .unwrap_or_else(|| panic!("why there is no plan:\n{dom}"));
    let why = &dom[at..at + dom[at..].find("</div>").unwrap()];
    assert!(
        why.contains("<b>Not planned: invalid config</b>")
            && why.contains("hosts/bad.yaml")
            && why.contains(MARKUP_TEXT),
        "the config's errors, its markup as text: {why}"
    );
    assert!(!dom.contains("id=\"plan\""), "no plan: {dom}");
    assert!(
        dom.contains(
            "<td id=\"verdicts\"><span class=\"muted\">not judged: nothing was planned</span></td>"
        ) && dom.contains(
            "<td id=\"cost-delta\"><span class=\"muted\">not known: nothing was planned</span></td>"
        ),
        "{dom}"
    );
    assert!(!dom.contains("id=\"cost\""), "no cost table: {dom}");
    assert!(!dom.contains(MARKUP), "no markup of the PR's: {dom}");
}

/// The proposal page as Chromium rendered it: the PR's title and author,
/// its head linking to the forge, its status, the policy's denial, the
/// cost it adds, the plan with its diff coloured and its markup as text.
fn proposal_rendered(dom: &str, pr: &PlannedPr) {
    assert!(
        dom.contains(&format!("<h1>#7 Add a web server {MARKUP_TEXT}</h1>")),
        "{dom}"
    );
    assert!(dom.contains("<title>#7 — tidekeeper</title>"), "{dom}");
    assert!(dom.contains(" by Grace Hopper"), "{dom}");
    let head = format!(
        "<a href=\"http://127.0.0.1:{}/acme/fleet/commit/{}\"><code>{}</code></a>",
        pr.forge,
        pr.head,
        &pr.head[..12]
    );
    assert!(dom.contains(&head), "{dom}");
    assert!(
        dom.contains(&format!(
            "<a href=\"http://127.0.0.1:{}/acme/fleet/pull/7\">on the forge</a>",
            pr.forge
        )),
        "{dom}"
    );
    assert!(
        dom.contains(
            "<td class=\"failure\" id=\"status\">failure: denied by tidekeeper.builtin.exposure: "
        ),
        "{dom}"
    );
    let verdicts = &dom[dom.find("id=\"verdicts\"").expect("verdicts")..];
    assert!(
        verdicts.starts_with("id=\"verdicts\"><ul><li class=\"bad\">")
            && verdicts[..verdicts.find("</td>").unwrap()]
                .contains("lets port 22 in from 0.0.0.0/0 at the cloud firewall"),
        "{verdicts}"
    );
    assert!(
        dom.contains("<td id=\"cost-delta\">raises the monthly cost to 7.55 EUR</td>"),
        "{dom}"
    );
    // The cost per server and the fleet's, as a table.
    let cost = &dom[dom.find("<table id=\"cost\">").expect("a cost table")..];
    let cost = &cost[..cost.find("</table>").unwrap()];
    assert!(
        cost.contains("<tr><td>web</td><td>Hetzner</td><td class=\"num\">—</td><td class=\"num\">7.55 EUR</td><td class=\"num\">+7.55 EUR</td></tr>")
            && cost.contains("<tr class=\"total\"><th>fleet</th><td></td><td class=\"num\">0.00 EUR</td><td class=\"num\">7.55 EUR</td><td class=\"num\"><b>+7.55 EUR</b></td></tr>"),
        "{cost}"
    );
    let plan = &dom[dom
        .find("<pre class=\"plan\" id=\"plan\">")
        .expect("a plan")..];
    let plan = &plan[..plan.find("</pre>").unwrap()];
    assert!(
        plan.contains("Monthly cost: 0.00 → 7.55 EUR (+7.55)"),
        "{plan}"
    );
    // Lines added and hunks coloured, the server's creation an addition.
    let coloured = |class: &str, text: &str| {
        plan.lines().any(|l| {
            l.starts_with(&format!("<span class=\"{class}\">"))
                && l.trim_end_matches("</span>").trim_end().ends_with(text)
        })
    };
    assert!(
        coloured("add", "web server (Hetzner, create)  +7.55 EUR/month"),
        "{plan}"
    );
    assert!(coloured("hunk", "@@ -0,0 +1,2 @@"), "{plan}");
    assert!(
        coloured("add", &format!("v2 {MARKUP_TEXT}")),
        "the file's markup as text, its line coloured: {plan}"
    );
    assert!(!dom.contains(MARKUP), "no markup of the PR's: {dom}");
}
