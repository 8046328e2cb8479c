//! `tidekeeper notify test SINK`: one message to a sink, now.

use super::*;

pub(super) fn test(repo: &RepoArgs, sink: &str) -> CliResult {
    let tree = read_tree(repo)?;
    let fleet = load_decrypted(&tree)?;
    let sinks: Vec<&str> = fleet
        .settings
        .notify
        .sinks
        .keys()
        .map(String::as_str)
        .collect();
    if !sinks.contains(&sink) {
        return Err(CliError::new(if sinks.is_empty() {
            "tidekeeper.yaml has no sinks under notify.sinks".to_string()
        } else {
            format!(
                "no sink {sink:?} in notify.sinks (there are: {})",
                sinks.join(", ")
            )
        }));
    }
    let kind = fleet.settings.notify.sinks[sink].target.kind();
    let sent = runtime().block_on(async {
        let n = crate::notify::deliver::Notifier::open(None);
        n.configure(&fleet);
        n.test(sink).await
    });
    sent.map_err(|e| {
        CliError::invalid(format!("{sink} ({kind}): {}", fleet.redact(&e.to_string())))
    })?;
    println!("Sent a test message to {sink} ({kind}).");
    Ok(Outcome::Done)
}
