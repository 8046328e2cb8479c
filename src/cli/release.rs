//! `tidekeeper release COMMIT --by NAME [--now]`: ask a running daemon to
//! apply the commit it holds for want of a reviewed plan (with `--now`: or
//! outside the apply windows), once, recording who.

use super::*;

pub(super) fn release(
    daemon: std::net::SocketAddr,
    commit: String,
    by: String,
    now: bool,
    api_token: Option<&str>,
) -> CliResult {
    let body = serde_json::json!({ "commit": commit, "by": by, "now": now }).to_string();
    post_daemon(
        daemon,
        "/release",
        api_token,
        &body,
        "The daemon at {addr} will apply the held commit (released by you, recorded in its note).",
    )
}
