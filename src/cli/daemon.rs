//! `tidekeeper run`, `retry`, `suspend`, `resume`: the daemon and requests to it.

use super::*;

impl From<super::args::RunArgs> for crate::daemon::Config {
    /// The daemon's settings as given; the git server's known_hosts file is
    /// read here (missing: nothing pinned).
    fn from(a: super::args::RunArgs) -> Self {
        let git = crate::daemon::mirror::Access {
            ssh_key: a
                .git_ssh_key
                .or_else(|| a.ssh_key.as_ref().map(std::path::PathBuf::from)),
            known_hosts: std::fs::read_to_string(&a.git_known_hosts)
                .map(|t| crate::daemon::mirror::Access::parse_known_hosts(&t))
                .unwrap_or_default(),
            token: a.git_token,
        };
        crate::daemon::Config {
            repo: a.repo,
            branch: a.branch,
            state_dir: a.state_dir,
            listen: a.listen,
            poll: a.poll,
            drift: a.drift,
            webhook_secret: a.webhook_secret,
            api_token: a.api_token,
            ssh_key: a.ssh_key,
            watch: !a.no_watch,
            hosts: a.hosts,
            labels: a.labels,
            git,
            proposals: a.proposals,
            rollback_after: a.rollback_after,
            worker: this_exe(),
        }
    }
}

pub(super) fn run_daemon(cfg: crate::daemon::Config) -> CliResult {
    runtime()
        .block_on(crate::daemon::run(cfg))
        .map_err(CliError::new)?;
    Ok(Outcome::Done)
}

/// One plain HTTP/1.1 request to a running daemon (`auth`: a whole header
/// line or nothing); the whole response.
pub(super) fn exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The body of a response [`exchange`] read.
pub(super) fn said(resp: &str) -> String {
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default()
}

/// POST to a running daemon (plain HTTP/1.1 on loopback); `done` is said on
/// success, with `{addr}` filled in.
pub(super) fn post_daemon(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
    done: &str,
) -> CliResult {
    if token.is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err(CliError::new("TIDEKEEPER_API_TOKEN must be one line"));
    }
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let result = exchange(addr, "POST", path, &auth, body);
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.1 202") => {
            println!("{}", done.replace("{addr}", &addr.to_string()));
            Ok(Outcome::Done)
        }
        // Already so (resumed, nothing to retry): what was asked for holds.
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => {
            println!("The daemon at {addr}: {}; nothing to do.", said(&resp));
            Ok(Outcome::Done)
        }
        Ok(resp) if resp.starts_with("HTTP/1.1 401") => Err(CliError::invalid(format!(
            "the daemon at {addr} refused the request: 401 Unauthorized"
        ))
        .help("pass the daemon's API token with --api-token or TIDEKEEPER_API_TOKEN")),
        Ok(resp) => {
            let said = said(&resp);
            Err(CliError::invalid(format!(
                "the daemon at {addr} answered: {}{}",
                resp.lines().next().unwrap_or(""),
                if said.is_empty() {
                    String::new()
                } else {
                    format!("\n  {said}")
                }
            )))
        }
        Err(e) => Err(CliError::new(format!(
            "cannot reach the daemon at {addr}: {e}"
        ))),
    }
}
