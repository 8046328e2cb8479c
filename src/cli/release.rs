//! `tidekeeper release COMMIT --by NAME`: ask a running daemon to apply the
//! commit it holds for want of a reviewed plan, once, recording who.

use super::*;

pub(super) fn release(
    daemon: std::net::SocketAddr,
    commit: String,
    by: String,
    api_token: Option<&str>,
) -> CliResult {
    let body = serde_json::json!({ "commit": commit, "by": by }).to_string();
    post_daemon(
        daemon,
        "/release",
        api_token,
        &body,
        "The daemon at {addr} will apply the held commit (released by you, recorded in its note).",
    )
}
