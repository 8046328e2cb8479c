//! The daemon's status page in a real browser: headless Chromium (Debian's
//! package) loads the page of a reconciled example fleet; the test checks
//! what it rendered — the hosts, their states, the cost — and that it fetched
//! every badge, and saves the screenshot `docs/status-page.png` shows.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::TempDir;
use crate::support::cloud::CloudFleet;
use crate::support::daemon::Daemon;
use crate::support::git;
use crate::support::testbed::Kind;

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

#[test]
fn the_status_page_shows_the_reconciled_fleet_and_its_badges_in_chromium() {
    let profile = TempDir::new("chromium");
    let Some(_) = chromium(profile.path()) else {
        assert!(
            std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
            "chromium is not installed; scripts/setup installs it"
        );
        eprintln!("skipping: chromium not installed; run scripts/test to install it");
        return;
    };
    let mut files = crate::examples::files("agent-server");
    crate::examples::patch(
        &mut files,
        "tidekeeper.yaml",
        "tidekeeper_cidr: 192.0.2.10/32",
        "tidekeeper_cidr: 10.213.0.0/16",
    );
    let f = CloudFleet::with_repo(Kind::Full, files);
    let d = Daemon::start_env(
        &f.repo.path,
        &f.repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &crate::support::cloud::CREDENTIALS,
    );
    let head = git(&f.repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, Duration::from_secs(90));
    let url = format!("http://127.0.0.1:{}/", d.port);

    // What Chromium rendered.
    let out = chromium(profile.path())
        .unwrap()
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("<h1>outpost"), "{dom}");
    for host in ["outpost", "outpost-hz"] {
        assert!(
            dom.contains(&format!("<td>{host}</td><td class=\"synced\"><img src=\"/badges/{host}.svg\" alt=\"synced\"></td>")),
            "{host} shown synced with its badge:\n{dom}"
        );
    }
    assert!(
        dom.contains("Cloud servers: 13.60 EUR + 24.00 USD a month."),
        "{dom}"
    );

    // The screenshot; loading the page for it fetches every badge.
    let shot = profile.path().join("status-page.png");
    let out = chromium(profile.path())
        .unwrap()
        .arg("--window-size=1100,520")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    let (_, metrics) = d.get("/metrics");
    for badge in ["fleet", "outpost", "outpost-hz"] {
        assert!(
            metrics.contains(&format!(
                "tidekeeper_badge_requests_total{{badge=\"{badge}\"}}"
            )),
            "Chromium fetched the {badge} badge:\n{metrics}"
        );
    }
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    if std::env::var_os("TIDEKEEPER_BLESS").is_some() || !doc.exists() {
        std::fs::write(&doc, &png).unwrap();
    }
}
