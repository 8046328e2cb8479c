//! The Dockerfile is linted with hadolint, and its runtime image is built
//! and run for real: Docker runs inside a test host (this machine has no
//! engine of its own), on a base image imported from a debootstrapped root
//! file system (no registry).

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
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=",
    ] {
        assert!(controller.contains(line), "the controller has {line:?}");
    }
    // systemd's own judgement of the sandbox: "OK" (below 2.0 of 10) for the
    // controller; pull mode runs as root on purpose and is only verified.
    let exposure = unit_exposure("tidekeeper.service");
    assert!(
        exposure.is_none_or(|e| e <= 2.0),
        "tidekeeper.service exposure {exposure:?}"
    );
}

/// `systemd-analyze security --offline=yes`'s overall exposure (0 safe, 10
/// exposed), None where systemd-analyze is missing and the suite may skip.
fn unit_exposure(name: &str) -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name);
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
                "systemd-analyze missing ({e})"
            );
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security {name}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    let value = line.split(": ").nth(1).and_then(|v| v.split(' ').next());
    Some(
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}")),
    )
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

/// The whole Dockerfile built as written, builder stage included, and its
/// image run. No registry is reached: the two `FROM` images are stand-ins
/// imported into the test host's Docker: `debian:bookworm-slim` is the host's
/// own debootstrapped root file system (its apt source is the local
/// repository, which holds what both stages install), and the Rust image is
/// that system with a C compiler, this machine's Rust toolchain (the
/// version the tag names) and the crates of Cargo.lock vendored into its
/// `CARGO_HOME`. The host's `/var/lib/docker` is kept between runs, so
/// Docker's own layer cache skips the dependency layer while Cargo.lock and
/// the workspace crates are unchanged: a cold build takes about 16 minutes
/// on 2 cores, a warm one about 3.
#[test]
fn the_dockerfile_builds_from_source_and_its_image_runs_as_non_root_and_answers_healthz() {
    use crate::support::testbed::{self, Kind, Testbed};
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        bases,
        ["rust:1.95-slim-bookworm", "debian:bookworm-slim"],
        "the bases the test stands in for"
    );
    let toolchain = Toolchain::matching(bases[0]);

    // One build at a time uses the kept Docker directory.
    let cache = testbed::cache_dir().join("dockerfile-build");
    std::fs::create_dir_all(cache.join("docker")).unwrap();
    let _lock = Lock::take(&cache.join("lock"));
    let bed = Testbed::start_binding(
        1,
        Kind::Docker,
        &[(cache.join("docker"), "/var/lib/docker")],
    );
    bed.ssh_ok(
        0,
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io curl busybox-static >/dev/null",
    );
    // The build runs at the lowest CPU priority: the rest of the suite runs beside it.
    bed.ssh_ok(
        0,
        "mkdir -p /etc/systemd/system/containerd.service.d && \
         printf '[Service]\\nNice=19\\n' >/etc/systemd/system/containerd.service.d/10-nice.conf && \
         systemctl daemon-reload && systemctl restart containerd",
    );
    if !bed.ssh(0, crate::stacks::DOCKER_PREP).status.success() {
        // A kept directory Docker cannot start from (a run killed at the
        // wrong moment): start over from an empty one.
        eprintln!("dockerd did not start on the kept directory; emptying it");
        bed.ssh_ok(
            0,
            "systemctl stop docker containerd; find /var/lib/docker -mindepth 1 -delete",
        );
        bed.ssh_ok(0, crate::stacks::DOCKER_PREP);
    }
    let driver = bed.ssh_ok(0, "docker info -f '{{.Driver}}'");
    assert_eq!(
        driver.trim(),
        "overlay2",
        "a layer cache that copies no layers"
    );

    let image = Kind::Docker.image();
    let image = image.file_name().unwrap().to_string_lossy();
    // The runtime stage finds what it installs installed: no packages needed.
    import_stand_in(&bed, bases[1], &image, "--exclude='./srv/tk-apt/*.deb'", "");
    let lock = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let key = sha256(&[image.as_bytes(), toolchain.version.as_bytes(), &lock].concat());
    if !stand_in_is(&bed, bases[0], &key) {
        bed.ssh_ok(
            0,
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null",
        );
        toolchain.install_into(&bed.root(0).join("usr/local"));
        import_stand_in(
            &bed,
            bases[0],
            &key,
            "",
            "--change 'ENV CARGO_HOME=/usr/local/cargo' \
             --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'",
        );
    }

    // A checkout without .git builds as "unknown", as build.rs says.
    let revision = git_out(&["rev-parse", "HEAD"])
        .map_or_else(|| "unknown".to_string(), |r| r.trim().to_string());
    write_context(&bed.root(0).join("root/ctx"));
    // The builder stage is tagged too: its layers (the dependencies') are
    // then no dangling image that the prune below would take, and the next
    // run builds on them.
    let built = bed.ssh(
        0,
        &format!(
            "cd /root/ctx && docker build --build-arg TIDEKEEPER_REVISION={revision} --target build -t tidekeeper:build . 2>&1 \
             && docker build --build-arg TIDEKEEPER_REVISION={revision} -t tidekeeper:test . 2>&1"
        ),
    );
    let log = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "docker build:\n{}",
        log.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "docker build: {} steps from the layer cache",
        log.matches("Using cache").count()
    );
    // The builder stage's steps ran, or came from the cache of a build of
    // the same context (Docker keys it by the files' checksums).
    assert!(
        log.contains("AS build")
            && log
                .matches("cargo build --release --locked --bin tidekeeper")
                .count()
                >= 2,
        "the builder stage's steps:\n{log}"
    );
    run_the_image(&bed, &revision);
    // What no later run builds on; the stand-ins and the dependency layer stay.
    bed.ssh_ok(
        0,
        "docker rm -f tk >/dev/null; docker image prune -f >/dev/null",
    );
}

/// The image, started as a daemon on a config repo, turns healthy by its
/// own health check, runs as its user, writes back, and reports the
/// revision it was built from.
fn run_the_image(bed: &crate::support::testbed::Testbed, revision: &str) {
    let root = bed.root(0);
    let fleet = root.join("srv/fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    std::fs::write(fleet.join("tidekeeper.yaml"), "fleet: boxed\n").unwrap();
    crate::support::git(&fleet, &["init", "-q", "-b", "main"]);
    crate::support::git(&fleet, &["add", "-A"]);
    crate::support::git(&fleet, &["commit", "-q", "-m", "a fleet"]);
    let head = crate::support::git(&fleet, &["rev-parse", "HEAD"]);
    // The daemon's user owns the repo it reads (libgit2 refuses others' repositories).
    bed.ssh_ok(0, "chown -R 10001:10001 /srv/fleet");
    bed.ssh_ok(
        0,
        "docker rm -f tk >/dev/null 2>&1; docker run -d --name tk --network host -v /srv/fleet:/fleet \
         -e TIDEKEEPER_REPO=/fleet --health-interval 1s --health-start-period 0s tidekeeper:test >/dev/null",
    );
    let logs = || bed.ssh_ok(0, "docker logs tk 2>&1 | tail -20");
    wait_for(
        "healthy",
        || {
            bed.ssh_ok(0, "docker inspect --format '{{.State.Health.Status}}' tk")
                .trim()
                == "healthy"
        },
        &logs,
    );
    assert_eq!(
        bed.ssh_ok(0, "curl -fsS http://127.0.0.1:8420/healthz")
            .trim(),
        "ok"
    );
    // Not root, inside and as configured.
    assert_eq!(bed.ssh_ok(0, "docker exec tk id -u").trim(), "10001");
    assert_eq!(
        bed.ssh_ok(0, "docker inspect --format '{{.Config.User}}' tk")
            .trim(),
        "10001:10001"
    );
    // The build argument reached the binary.
    let metrics = bed.ssh_ok(0, "curl -fsS http://127.0.0.1:8420/metrics");
    assert!(
        metrics.contains(&format!("revision=\"{revision}\"")),
        "build info names {revision}:\n{metrics}"
    );
    // It read the repo, as the user it runs as: the head is on its status,
    // and the status branch it wrote back is in the repo.
    wait_for(
        "the head on /status",
        || {
            bed.ssh_ok(0, "curl -fsS http://127.0.0.1:8420/status")
                .contains(&format!("\"head_commit\":\"{head}\""))
        },
        &logs,
    );
    wait_for(
        "the status branch",
        || {
            Command::new("git")
                .args(["-c", "safe.directory=*", "rev-parse", "--verify", "-q"])
                .arg("refs/heads/tidekeeper/status")
                .current_dir(&fleet)
                .output()
                .unwrap()
                .status
                .success()
        },
        &logs,
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool, logs: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not {what} within 60 s:\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// This machine's Rust toolchain, standing in for the builder's base image.
struct Toolchain {
    sysroot: std::path::PathBuf,
    version: String,
}

impl Toolchain {
    /// The toolchain, if its version is the one `base` (`rust:X.Y-…`) names.
    fn matching(base: &str) -> Toolchain {
        let rustc = |arg: &str| {
            let out = Command::new("rustc").arg(arg).output().unwrap();
            assert!(out.status.success(), "rustc {arg}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let version = rustc("-vV");
        let wanted = base
            .strip_prefix("rust:")
            .and_then(|t| t.split('-').next())
            .unwrap();
        assert!(
            version.starts_with(&format!("rustc {wanted}.")),
            "the Dockerfile builds with Rust {wanted} ({base}); this machine's toolchain is \
             {version:?}: install Rust {wanted} (rustup toolchain install {wanted}) or update the Dockerfile"
        );
        Toolchain {
            sysroot: rustc("--print=sysroot").into(),
            version,
        }
    }

    /// rustc, cargo and the standard library for this machine's target
    /// under `local` (rustc finds its sysroot beside its binary), and the
    /// vendored crates with cargo's source replacement in `local/cargo`.
    fn install_into(&self, local: &std::path::Path) {
        let target = self
            .version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap();
        let rustlib = format!("lib/rustlib/{target}");
        std::fs::create_dir_all(local.join("lib/rustlib")).unwrap();
        std::fs::create_dir_all(local.join("bin")).unwrap();
        let mut parts = vec!["bin/rustc".to_string(), "bin/cargo".to_string(), rustlib];
        for entry in std::fs::read_dir(self.sysroot.join("lib")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".so") || name.contains(".so.") {
                parts.push(format!("lib/{name}"));
            }
        }
        for part in parts {
            let to = local.join(&part);
            let out = Command::new("cp")
                .arg("-a")
                .arg(self.sysroot.join(&part))
                .arg(to.parent().unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cp {part}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cargo = local.join("cargo");
        let out = Command::new("cargo")
            .args(["vendor", "--locked", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg(cargo.join("vendor"))
            .env("CARGO_NET_OFFLINE", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo vendor: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            cargo.join("config.toml"),
            "[source.crates-io]\nreplace-with = \"vendored\"\n\n\
             [source.vendored]\ndirectory = \"/usr/local/cargo/vendor\"\n",
        )
        .unwrap();
    }
}

/// Whether image `tag` in the host's Docker is the stand-in made for `key`.
fn stand_in_is(bed: &crate::support::testbed::Testbed, tag: &str, key: &str) -> bool {
    let out = bed.ssh(
        0,
        &format!(
            "docker image inspect -f '{{{{index .Config.Labels \"tidekeeper.stand-in\"}}}}' {tag}"
        ),
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == key
}

/// The host's root file system imported as image `tag` (labelled with
/// `key`, and imported only if the kept one has another), without what
/// only the host needs.
fn import_stand_in(
    bed: &crate::support::testbed::Testbed,
    tag: &str,
    key: &str,
    excluded: &str,
    changes: &str,
) {
    if stand_in_is(bed, tag, key) {
        eprintln!("{tag}: the kept stand-in {key}");
        return;
    }
    eprintln!("{tag}: importing stand-in {key}");
    bed.ssh_ok(
        0,
        &format!(
            "tar -C / -c --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./run --exclude=./tmp \
             --exclude=./var/lib/docker --exclude=./root/ctx --exclude=./srv/fleet \
             --exclude=./usr/share/doc --exclude=./usr/share/man \
             --exclude=./usr/share/locale --exclude='./usr/bin/docker*' --exclude=./usr/sbin/dockerd \
             --exclude='./usr/bin/containerd*' --exclude=./usr/sbin/runc --exclude=./usr/bin/runsc {excluded} . \
             | docker import --change 'LABEL tidekeeper.stand-in={key}' {changes} - {tag} >/dev/null"
        ),
    );
}

/// The build context: the repository's files as checked out (what
/// .dockerignore leaves out is not copied at all).
fn write_context(ctx: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignored
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let _ = std::fs::remove_dir_all(ctx);
    // The checked-out files git knows, or without .git every file.
    let files: Vec<String> = match git_out(&["ls-files"]) {
        Some(list) => list.lines().map(str::to_string).collect(),
        None => every_file(root, root),
    };
    for file in files {
        let top = file.split('/').next().unwrap();
        if ignored.contains(&top) || top == "target" || !root.join(&file).is_file() {
            continue;
        }
        let to = ctx.join(&file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(&file), &to).unwrap();
    }
}

/// The files under `dir`, relative to `root`, but the build output and .git.
fn every_file(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name == "target" || name == ".git" {
            continue;
        }
        if path.is_dir() {
            out.extend(every_file(root, &path));
        } else {
            out.push(name);
        }
    }
    out
}

/// What git prints for `args` in the checkout; None where it has no .git.
fn git_out(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..16].to_string()
}

/// An exclusive lock on a file, held until dropped.
struct Lock {
    _held: std::fs::File,
}

impl Lock {
    fn take(path: &std::path::Path) -> Lock {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::create(path).unwrap();
        // SAFETY: flock on a descriptor this struct owns.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        Lock { _held: file }
    }
}

/// Every dependency's license is a permissive one, no version is a
/// wildcard and every crate comes from crates.io (`deny.toml`; advisories
/// need the RustSec database, which scripts/test checks where present).
#[test]
fn the_dependencies_pass_cargo_deny() {
    let out = match Command::new("cargo")
        .args(["deny", "--offline", "check", "licenses", "bans", "sources"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("no such command") => out,
        _ => {
            assert!(
                std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_none(),
                "cargo-deny is not installed; scripts/setup installs it"
            );
            eprintln!("skipping: cargo-deny not installed; run scripts/setup to install it");
            return;
        }
    };
    // The summary goes to stdout off a terminal, the findings to stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cargo deny:\n{text}");
    assert!(text.contains("bans ok, licenses ok, sources ok"), "{text}");
}

/// The targets of the `tidekeeper` package as cargo sees them in `dir`:
/// (kind, name) of each but the build script.
fn cargo_targets(dir: &std::path::Path) -> std::collections::BTreeSet<(String, String)> {
    cargo_targets_of(dir, "tidekeeper")
}

fn cargo_targets_of(
    dir: &std::path::Path,
    name: &str,
) -> std::collections::BTreeSet<(String, String)> {
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap();
    package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["kind"][0].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(kind, _)| kind != "custom-build")
        .collect()
}

fn stub_targets(dir: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stub-targets");
    let out = Command::new(script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Dockerfile's dependency layer builds with stand-ins for the sources;
/// cargo refuses to start ("can't find `scale` bench") if one is missing. The
/// stand-ins come from the manifest, so every target cargo sees in the
/// checkout must be there with them too.
#[test]
fn the_dockerfile_dependency_layer_has_a_stand_in_for_every_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = crate::support::TempDir::new("stubs");
    let layer = tmp.path();
    // What the layer copies before the sources, as the Dockerfile says.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let deps = &dockerfile[..dockerfile.find("COPY . .").expect("a full copy")];
    assert!(deps.contains("RUN scripts/stub-targets"), "{deps}");
    for line in deps.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        let sources: Vec<&str> = line.split_whitespace().collect();
        for src in &sources[..sources.len() - 1] {
            let out = Command::new("cp")
                .args(["-r", "--parents", src])
                .arg(layer)
                .current_dir(root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(!layer.join("src").exists() && !layer.join("benches").exists());
    stub_targets(layer);
    assert_eq!(cargo_targets(layer), cargo_targets(root));
}

/// The stand-ins follow each way a manifest can name a target.
#[test]
fn stand_ins_are_written_for_bins_tests_benches_and_examples_at_their_paths() {
    let tmp = crate::support::TempDir::new("stubs-shapes");
    let dir = tmp.path();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"x\"\nversion = \"0.1.0\"\nedition = \"2024\"\nautobenches = false\n\n\
         [[bin]]\nname = \"tool\"\n\n[[test]]\npath = \"tests/all/main.rs\"\nname = \"all\"\n\n\
         [[bench]] # with a comment\nharness = false\nname = \"speed\"\n\n[[example]]\nname = \"demo\"\n\n\
         [dependencies]\n",
    )
    .unwrap();
    stub_targets(dir);
    for f in [
        "src/lib.rs",
        "src/main.rs",
        "src/bin/tool.rs",
        "tests/all/main.rs",
        "benches/speed.rs",
        "examples/demo.rs",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let targets = cargo_targets_of(dir, "x");
    let want: std::collections::BTreeSet<(String, String)> = [
        ("bench", "speed"),
        ("bin", "tool"),
        ("bin", "x"),
        ("example", "demo"),
        ("lib", "x"),
        ("test", "all"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(targets, want, "cargo sees every target");
}

/// The controller's unit as shipped, started by systemd on a real host: the
/// sandbox (a dynamic user, no capabilities, the system call filter, a
/// read-only system) leaves the daemon able to fetch its repo, serve its API
/// and read its own /proc figures.
#[test]
fn the_sandboxed_unit_runs_the_daemon_as_its_own_user() {
    use crate::support::testbed::Testbed;
    let bed = Testbed::start(1);
    let root = bed.root(0);
    let out = Command::new("objcopy")
        .args(["--strip-debug", env!("CARGO_BIN_EXE_tidekeeper")])
        .arg(root.join("usr/local/bin/tidekeeper"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/tidekeeper.service"
    ))
    .unwrap();
    std::fs::write(root.join("etc/systemd/system/tidekeeper.service"), unit).unwrap();
    bed.ssh_ok(
        0,
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null",
    );
    // A config repo anyone may read (the service's user is made at start,
    // so git is told to trust it), the key the unit hands over, the settings.
    let fleet = root.join("srv/fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    std::fs::write(fleet.join("tidekeeper.yaml"), "fleet: boxed\n").unwrap();
    crate::support::git(&fleet, &["init", "-q", "-b", "main"]);
    crate::support::git(&fleet, &["add", "-A"]);
    crate::support::git(&fleet, &["commit", "-q", "-m", "a fleet"]);
    let head = crate::support::git(&fleet, &["rev-parse", "HEAD"]);
    let bare = root.join("srv/fleet.git");
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&fleet)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("etc/gitconfig"), "[safe]\n\tdirectory = *\n").unwrap();
    bed.ssh_ok(
        0,
        "chmod -R a+rX /srv/fleet.git \
         && mkdir -p /etc/tidekeeper && ssh-keygen -q -t ed25519 -N '' -f /etc/tidekeeper/id_ed25519 \
         && echo TIDEKEEPER_REPO=file:///srv/fleet.git > /etc/tidekeeper/env \
         && systemctl daemon-reload && systemctl start tidekeeper",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let out = bed.ssh(0, "curl -fsS http://127.0.0.1:8420/status");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains(&format!("\"head_commit\":\"{head}\"")) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not read its repo: {text}\n{}",
            bed.ssh_ok(0, "systemctl status tidekeeper --no-pager -l; journalctl -u tidekeeper --no-pager | tail -30")
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        status.contains("\"repo\":\"file:///srv/fleet.git\""),
        "{status}"
    );
    let user = bed.ssh_ok(0, "ps -o user= -C tidekeeper");
    assert!(
        !user.trim().is_empty() && !user.contains("root"),
        "runs as its own user: {user:?}"
    );
    let caps = bed.ssh_ok(0, "grep CapEff /proc/$(pgrep -x tidekeeper)/status");
    assert!(caps.contains("0000000000000000"), "no capabilities: {caps}");
    let metrics = bed.ssh_ok(0, "curl -fsS http://127.0.0.1:8420/metrics");
    for name in [
        "process_open_fds ",
        "process_start_time_seconds ",
        "tidekeeper_build_info{",
    ] {
        assert!(metrics.contains(name), "{name} in the sandbox:\n{metrics}");
    }
    bed.ssh_ok(0, "systemctl stop tidekeeper");
}
