//! `tidekeeper notify test SINK`: one message to a sink, now.

use super::*;

pub(super) fn test(repo: &RepoArgs, sink: &str) -> u8 {
    let tree = match read_tree(repo) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let fleet = match load_decrypted(&tree) {
        Ok(f) => f,
        Err(c) => return c,
    };
    let sinks: Vec<&str> = fleet
        .settings
        .notify
        .sinks
        .keys()
        .map(String::as_str)
        .collect();
    if !sinks.contains(&sink) {
        if sinks.is_empty() {
            eprintln!("error: tidekeeper.yaml has no sinks under notify.sinks");
        } else {
            eprintln!(
                "error: no sink {sink:?} in notify.sinks (there are: {})",
                sinks.join(", ")
            );
        }
        return EXIT_ERROR;
    }
    let kind = fleet.settings.notify.sinks[sink].target.kind();
    let sent = runtime().block_on(async {
        let n = crate::notify::deliver::Notifier::open(None);
        n.configure(&fleet);
        n.test(sink).await
    });
    match sent {
        Ok(()) => {
            println!("Sent a test message to {sink} ({kind}).");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {sink} ({kind}): {}", fleet.redact(&e.to_string()));
            EXIT_INVALID
        }
    }
}
