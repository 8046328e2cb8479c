//! Small builders for config trees and git repos used across the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use tidekeeper::model::{self, Diagnostic, Diagnostics, Fleet};
use tidekeeper::source::ConfigTree;

/// A minimal valid config repo: one existing host with one role.
pub fn minimal() -> Fixture {
    Fixture::default()
        .file("tidekeeper.yaml", "fleet: test\n")
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.213.0.2\nroles: [base]\n",
        )
        .file("roles/base.yaml", "packages:\n  present: [jq]\n")
}

#[derive(Default, Clone)]
pub struct Fixture {
    pub tree: ConfigTree,
}

impl Fixture {
    pub fn file(mut self, path: &str, text: impl AsRef<[u8]>) -> Self {
        self.tree.insert_file(path, text.as_ref().to_vec());
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.tree.insert_symlink(path, target);
        self
    }
    pub fn without(mut self, path: &str) -> Self {
        self.tree.remove(path);
        self
    }
    pub fn load(&self) -> Result<Fleet, Diagnostics> {
        model::load(&self.tree)
    }
    pub fn errors(&self) -> Vec<Diagnostic> {
        match self.load() {
            Ok(_) => panic!("expected the config to be invalid, but it validated"),
            Err(d) => d.0,
        }
    }
    /// Assert that validation fails with exactly one error, at `location`
    /// (`file:line:column`), with `code` and `message`.
    #[track_caller]
    pub fn fails_with(&self, location: &str, code: &str, message: &str) -> Diagnostic {
        let errors = self.errors();
        let listing: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one error, got:\n{}",
            listing.join("\n")
        );
        let d = errors.into_iter().next().unwrap();
        assert_eq!(d.location(), location, "location of: {d}");
        assert_eq!(d.code, code, "code of: {d}");
        assert_eq!(d.message, message, "message of: {d}");
        d
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tidekeeper-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run real git in `dir`.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Serve `app` on `listener` from a thread of its own (a fake forge, an
/// attacker's server), for as long as the test process lives.
pub fn serve_in_thread(listener: std::net::TcpListener, app: axum::Router) {
    listener.set_nonblocking(true).unwrap();
    in_thread(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(l, app).await.unwrap();
    });
}

/// Run `work` on a runtime in a thread of its own.
pub fn in_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    });
}

/// The tidekeeper binary built for these tests.
/// An HTTP/1.1 response as read off the socket: its status code (0 if
/// there is none) and its body.
pub fn http_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A ```diff line of a plan comment or note: `marker` at column 0, then
/// (after the indentation) `text`.
pub fn diff_line(body: &str, marker: &str, text: &str) -> bool {
    body.lines().any(|l| {
        l.strip_prefix(marker)
            .is_some_and(|r| r.trim_start().starts_with(text))
    })
}

/// The binary, with nothing of the machine's AWS set-up: no profile
/// files, no instance metadata service (its address is not ours to reach),
/// no AWS variables unless a test passes them.
pub fn tidekeeper() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidekeeper"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/tidekeeper-test/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/tidekeeper-test/aws-credentials",
        );
    c
}

/// How tidekeeper's own SSH client reaches test host `h` as root with
/// `key`, its host key pinned (for floors measured next to tidekeeper).
#[allow(dead_code)] // the benchmarks' floors use it, the tests do not
pub fn ssh_target(h: &testbed::TestHost, key: &Path) -> tidekeeper::transport::SshTarget {
    let mut parts = h.host_key.split_whitespace();
    let (kind, k) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    tidekeeper::transport::SshTarget {
        name: h.name.clone(),
        addr: (h.address, h.port).into(),
        user: "root".into(),
        key_file: Some(key.to_str().unwrap().to_string()),
        host_keys: tidekeeper::transport::HostKeyPolicy::Pinned(vec![(kind, k)]),
        sudo: false,
        connect_timeout: std::time::Duration::from_secs(30),
        via: None,
    }
}

/// How long it takes tidekeeper's own SSH client to run `script` on every
/// host of `bed`, one new connection each, `parallel` at a time: the floor
/// the benchmarks compare with. `check` judges each host's output.
#[allow(dead_code)] // the benchmarks' floors use it, the tests do not
pub fn on_every_host(
    bed: &testbed::Testbed,
    rt: &tokio::runtime::Runtime,
    parallel: usize,
    script: &str,
    timeout: std::time::Duration,
    check: fn(&tidekeeper::transport::Output),
) -> std::time::Duration {
    use std::sync::Arc;
    let targets: Vec<_> = bed.hosts.iter().map(|h| ssh_target(h, &bed.key)).collect();
    let script: Arc<str> = Arc::from(script);
    let t = std::time::Instant::now();
    rt.block_on(async {
        let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut tasks = Vec::new();
        for target in targets {
            let (limit, script) = (limit.clone(), script.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = limit.acquire().await.unwrap();
                let ssh = tidekeeper::transport::Ssh::connect(target)
                    .await
                    .expect("connect");
                let out = ssh.run_script(&script, timeout).await.expect("run");
                check(&out);
                ssh.close().await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    t.elapsed()
}

pub mod cloud;
pub mod daemon;
pub mod example;
pub mod fleet;
pub mod receivers;
pub mod testbed;

/// `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
