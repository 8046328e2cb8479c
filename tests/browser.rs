//! The daemon's dashboard in a real browser: headless Chromium (Debian's
//! package) loads the pages of a reconciled example fleet; the test checks
//! what it rendered — hosts, states, cost, charts, timeline, a host's plan —
//! that it fetched every badge, and keeps the screenshots docs/ shows
//! (desktop, phone, host page).

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

#[test]
fn the_dashboard_and_a_host_page_render_in_chromium_on_desktop_and_phone() {
    let profile = TempDir::new("chromium");
    let Some(_) = chromium(profile.path()) else {
        assert!(
            std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
            "chromium is not installed; scripts/setup installs it"
        );
        eprintln!("skipping: chromium not installed; run scripts/test to install it");
        return;
    };
    let (f, _) = crate::examples::agent_server_fleet();
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
    assert!(
        dom.contains("<td>Lightsail</td><td class=\"num\">1</td><td class=\"num\">24.00 USD</td>"),
        "cost per provider:\n{dom}"
    );
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
