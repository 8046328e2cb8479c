//! The one HTTP client every outgoing request uses (forge, notifications,
//! Hetzner's API): rustls with the system's CA roots, so a forge or a
//! webhook behind a private CA works once its CA is installed
//! (`update-ca-certificates`) or named in `SSL_CERT_FILE`, as for curl.

use std::time::Duration;

/// A client that gives up on a request after `timeout` (and on connecting
/// after 10 s at most).
pub fn client(timeout: Duration) -> reqwest::Client {
    builder(timeout).build().expect("HTTP client")
}

pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("tidekeeper/", env!("CARGO_PKG_VERSION")))
}

/// Why a request failed, down to the root cause (a TLS error sits under
/// "error sending request"), without the URL: URLs can carry credentials.
pub fn reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
