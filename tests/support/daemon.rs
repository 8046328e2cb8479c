//! A `tidekeeper run` daemon started by a test, with a tiny HTTP client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, tidekeeper};

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub state: TempDir,
    log: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Start on `repo` with `args` added (e.g. `--poll 1s`).
    pub fn start(repo: &Path, key: &Path, args: &[&str]) -> Daemon {
        let state = TempDir::new("daemon");
        Self::start_with_state(repo, key, args, state)
    }

    pub fn start_with_state(repo: &Path, key: &Path, args: &[&str], state: TempDir) -> Daemon {
        Self::start_full(repo, key, args, state, &[])
    }

    /// Start with extra environment variables for the daemon process.
    pub fn start_env(repo: &Path, key: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_full(repo, key, args, TempDir::new("daemon"), env)
    }

    /// Start with a given state directory and extra environment variables.
    pub fn start_full(
        repo: &Path,
        key: &Path,
        args: &[&str],
        state: TempDir,
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let log = state.path().join(format!("daemon-{port}.log"));
        let child = tidekeeper()
            .args(["run", "--repo"])
            .arg(repo)
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--ssh-key")
            .arg(key)
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            port,
            state,
            log,
        };
        d.wait_for("the HTTP server", Duration::from_secs(10), |d| {
            d.get("/healthz").0 == 200
        });
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        if s.write_all(req.as_bytes())
            .and_then(|_| s.write_all(body))
            .is_err()
        {
            return (0, String::new());
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        // Chunked bodies: good enough to search in.
        super::http_response(&out)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, &[], b"")
    }

    pub fn status(&self) -> serde_json::Value {
        let (_, body) = self.get("/status");
        let start = body.find('{').unwrap_or(0);
        let end = body.rfind('}').map(|e| e + 1).unwrap_or(body.len());
        serde_json::from_str(&body[start..end]).unwrap_or(serde_json::Value::Null)
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {}\nlog:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the daemon reports `commit` applied and has pushed a
    /// status branch that says so (the live status is ahead of the push).
    pub fn wait_applied(&self, commit: &str, timeout: Duration) {
        self.wait_for(&format!("commit {commit} applied"), timeout, |d| {
            let st = d.status();
            st["applied_commit"].as_str() == Some(commit)
                && st["written_back"]["applied_commit"].as_str() == Some(commit)
        });
    }

    /// Wait until the daemon has fetched the repo `n` times (since it started).
    pub fn wait_fetches(&self, n: u32, timeout: Duration) {
        self.wait_for(&format!("{n} fetches"), timeout, |d| {
            d.get("/metrics")
                .1
                .lines()
                .find_map(|l| l.strip_prefix("tidekeeper_git_fetches_total "))
                .and_then(|v| v.trim().parse::<u32>().ok())
                .is_some_and(|v| v >= n)
        });
    }

    /// Wait until the daemon has pushed a note on `commit`.
    pub fn wait_noted(&self, commit: &str, timeout: Duration) {
        self.wait_for(&format!("a note on {commit} pushed"), timeout, |d| {
            d.status()["written_back"]["noted_commit"].as_str() == Some(commit)
        });
    }

    /// Stop, keeping the state directory for the next daemon.
    pub fn stop_keep_state(mut self) -> TempDir {
        let _ = self.terminate();
        std::mem::replace(&mut self.state, TempDir::new("unused"))
    }

    /// SIGTERM; the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let t = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status.code(), t.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
