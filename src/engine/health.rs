//! Health gates as shell: systemd units, commands, HTTP checks from the host,
//! and containers (a compose service's, healthy by its own health check or
//! running when it has none). Used after a stack is brought up and by
//! maintenance after each host. Pure: builds script text.

use crate::model::desired::HealthCheck;
use crate::transport::shell_quote as q;

/// The test for one check, and how it reads in a failure message.
fn test(c: &HealthCheck) -> (String, String) {
    match c {
        HealthCheck::Unit(u) => (
            format!("systemctl is-active -q {}", q(u)),
            format!("unit {u} active"),
        ),
        HealthCheck::Command(cmd) => (
            format!("timeout 120 sh -c {} >/dev/null", q(cmd)),
            format!("command {cmd}"),
        ),
        HealthCheck::Http(url) => (
            format!("curl -fsS -m 10 -o /dev/null {}", q(url)),
            format!("HTTP {url}"),
        ),
        HealthCheck::Container(c) => {
            let filter = container_filter(c);
            (
                format!(
                    "{{ cid=$(docker ps -q {filter} | head -n1); [ -n \"$cid\" ] && \
                     st=$(docker inspect -f '{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}{{{{.State.Status}}}}{{{{end}}}}' \"$cid\") && \
                     {{ [ \"$st\" = healthy ] || [ \"$st\" = running ]; }}; }}"
                ),
                format!("container {c} healthy"),
            )
        }
    }
}

/// `docker ps` filters for a container named `c`, or `STACK/SERVICE` of
/// a compose stack.
pub(crate) fn container_filter(c: &str) -> String {
    match c.split_once('/') {
        Some((project, service)) => format!(
            "--filter label=com.docker.compose.project={} --filter label=com.docker.compose.service={}",
            q(project),
            q(service)
        ),
        None => format!("--filter name=^/{}$", q(c)),
    }
}

/// Run `checks` on `host` over a new connection; the failures, named.
pub(crate) async fn check_host(
    fleet: &crate::model::desired::Fleet,
    host: &crate::model::desired::Host,
    checks: &[HealthCheck],
    opts: &super::Options,
) -> Result<(), String> {
    if checks.is_empty() {
        return Ok(());
    }
    let conn = super::connect(fleet, host, opts)
        .await
        .map_err(|e| e.to_string())?;
    let out = conn
        .run_script(&health_script(checks), std::time::Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string());
    conn.close().await;
    let out = out?;
    if out.success() {
        Ok(())
    } else {
        Err(opts.redact(out.stderr_text().trim()))
    }
}

/// Health gates as one script: every check must pass; each failure is named
/// on stderr.
pub(crate) fn health_script(checks: &[HealthCheck]) -> String {
    let mut s = String::from("fail=0\n");
    for c in checks {
        let (test, what) = test(c);
        s.push_str(&format!(
            "if ! {{ {test}; }} 2>/dev/null; then echo {} >&2; fail=1; fi\n",
            q(&format!("health gate failed: {what}"))
        ));
    }
    s.push_str("exit $fail\n");
    s
}

/// A shell function body that waits up to `secs` for every check to pass
/// (containers take a while to report healthy), then names what failed.
pub(crate) fn wait_script(checks: &[HealthCheck], secs: u64) -> String {
    let all: Vec<String> = checks.iter().map(|c| test(c).0).collect();
    let mut s = format!(
        "i=0; while [ $i -lt {secs} ]; do if {{ {}; }} 2>/dev/null; then break; fi; i=$((i+1)); sleep 1; done\n",
        all.join(" && ")
    );
    for c in checks {
        let (test, what) = test(c);
        s.push_str(&format!(
            "if ! {{ {test}; }} 2>/dev/null; then echo {} >&2; return 1; fi\n",
            q(&format!("health gate failed after {secs}s: {what}"))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failing_gate_is_named() {
        let s = health_script(&[
            HealthCheck::Command("true".into()),
            HealthCheck::Command("false".into()),
            HealthCheck::Container("web/db".into()),
        ]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("docker() {{ return 0; }}; {s}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("health gate failed: command false"), "{err}");
        assert!(
            err.contains("health gate failed: container web/db healthy"),
            "{err}"
        );
        assert!(!err.contains("command true"), "{err}");
    }
}
