//! Pull mode: run scripts on the machine tidekeeper itself runs on.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Output, TransportError, runner_command};

pub struct Local {
    root: String,
}

impl Local {
    /// `root` confines every managed path under a directory (`""` for `/`).
    pub fn new(root: &str) -> Self {
        Local {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub async fn run_script(
        &self,
        script: &str,
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        // The daemon's environment holds tokens (forge, cloud, webhook secret):
        // scripts get only what a login shell needs.
        let keep = |k: &str| std::env::var_os(k).map(|v| (k.to_string(), v));
        let env: Vec<_> = ["PATH", "LANG", "HOME"]
            .into_iter()
            .filter_map(keep)
            .collect();
        let mut child = tokio::process::Command::new("sh");
        child.env_clear().envs(env);
        // Confined under a root: every script (jobs too) sees it as
        // `$TK_ROOT` and starts there, never in the daemon's directory.
        if !self.root.is_empty() {
            child.env("TK_ROOT", &self.root);
            if std::path::Path::new(&self.root).is_dir() {
                child.current_dir(&self.root);
            }
        }
        let mut child = child
            .arg("-c")
            .arg(runner_command(script.len(), false))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TransportError::Local(format!("cannot start sh: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let body = script.as_bytes().to_vec();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| TransportError::Timeout {
                addr: "local".into(),
                what: "script".into(),
                after: timeout,
            })?
            .map_err(|e| TransportError::Local(e.to_string()))?;
        let _ = writer.await;
        Ok(Output {
            status: out.status.code().map(|c| c as u32),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
