//! The Dockerfile is linted with hadolint (no Docker engine runs here).

use std::process::Command;

#[test]
fn dockerfile_passes_hadolint() {
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    let out = match Command::new("hadolint").arg(dockerfile).output() {
        Ok(out) => out,
        Err(e) => {
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_some();
            assert!(
                !required,
                "hadolint is not installed ({e}); scripts/test installs it"
            );
            eprintln!("skipping: hadolint not installed; run scripts/test to install it");
            return;
        }
    };
    assert!(
        out.status.success(),
        "hadolint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dockerfile).unwrap();
    assert!(
        text.contains("HEALTHCHECK"),
        "the image declares a health check"
    );
    assert!(
        text.contains("USER 10001:10001"),
        "the image runs as a non-root user"
    );
}

#[test]
fn the_systemd_units_verify() {
    for unit in ["tidekeeper.service", "tidekeeper-pull.service"] {
        verify_unit(unit);
    }
    let pull = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/tidekeeper-pull.service"
    ))
    .unwrap();
    // Pull mode manages this machine: nothing may make /etc, /usr or /home read-only.
    for blocked in [
        "ProtectSystem=",
        "ProtectHome=",
        "ReadOnlyPaths=",
        "DynamicUser=",
    ] {
        assert!(
            !pull.lines().any(|l| l.starts_with(blocked)),
            "{blocked} would block pull mode"
        );
    }
    assert!(
        pull.contains("User=root") && pull.contains("Why root"),
        "it says why it runs as root"
    );
    assert!(
        pull.contains("--host %H"),
        "it reconciles this machine only"
    );
    let controller = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/tidekeeper.service"
    ))
    .unwrap();
    assert!(
        controller.contains("ProtectSystem=strict"),
        "the controller stays sandboxed"
    );
}

fn verify_unit(name: &str) {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
            "systemd-analyze missing"
        );
        return;
    }
    let tmp = crate::support::TempDir::new("unit");
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(name),
    )
    .unwrap()
    .replace(
        "/usr/local/bin/tidekeeper",
        env!("CARGO_BIN_EXE_tidekeeper"),
    )
    .replace(
        "EnvironmentFile=/etc/tidekeeper/env",
        "EnvironmentFile=-/etc/tidekeeper/env",
    );
    let path = tmp.path().join(name);
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains(&format!("{name}:")),
        "{name}: {err}"
    );
}
