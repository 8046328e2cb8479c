//! Rotating the host keys cloud-init installed: each server whose key came
//! in its user data (new ones, imported ones, those made by older versions)
//! gets a key generated on the server, pinned in its `HOST_KEY` label
//! through the provider's update, and the old key deleted. One guarded
//! step: if any part fails, the old key stays and the error says what to do.

use std::time::Instant;

use crate::cloud::apply::CloudOutcome;
use crate::cloud::plan::{CloudAction, CloudPlan, KEY_ROTATION};
use crate::cloud::{Clouds, DesiredServer, HOST_KEY, HOST_KEY_ROTATED, ObservedServer};
use crate::engine::{HostResult, Options, rekey};
use crate::model::desired::{AddressBook, Addresses, Fleet};

/// A server whose key to rotate.
pub(super) struct Due {
    host: String,
    /// The server as last seen (created now, or observed for the plan).
    have: ObservedServer,
    want: DesiredServer,
}

/// The servers to rotate after the hosts were applied: those the plan
/// says still offer cloud-init's key, and those it created, where their
/// server change and their host went well.
pub(super) fn due(plan: &CloudPlan, outcomes: &[CloudOutcome], hosts: &[HostResult]) -> Vec<Due> {
    let mut out = Vec::new();
    for c in &plan.changes {
        let Some(want) = &c.desired else { continue };
        let done = outcomes
            .iter()
            .find(|o| o.host == c.host && o.what == "server");
        let have = match done {
            Some(o) if o.error.is_some() => continue,
            Some(CloudOutcome {
                server: Some(s),
                host_key: Some(_),
                ..
            }) => s.clone(),
            _ if c.attrs.iter().any(|a| a.name == KEY_ROTATION) => match &c.observed {
                Some(o) => o.clone(),
                None => continue,
            },
            _ => continue,
        };
        if hosts.iter().any(|r| r.host == c.host && r.error.is_some()) {
            continue;
        }
        out.push(Due {
            host: c.host.clone(),
            have,
            want: want.clone(),
        });
    }
    out
}

/// Rotate each due server's key; an outcome per server, and the new key's
/// known_hosts line recorded on the host's result.
pub(super) async fn rotate_all(
    due: Vec<Due>,
    fleet: &Fleet,
    clouds: &Clouds,
    opts: &Options,
    results: &mut [HostResult],
    made: &[CloudOutcome],
) -> Vec<CloudOutcome> {
    // Where each server is reached and by which key: the servers made by
    // this apply (a jump host among them), then those to rotate; a rotated
    // one is reached by its new key from then on.
    let mut book = AddressBook::new();
    for o in made
        .iter()
        .filter(|o| o.what == "server" && o.error.is_none())
    {
        if let Some(s) = &o.server {
            book.insert(o.host.clone(), addresses(s));
        }
    }
    for d in &due {
        if !book.contains(&d.host) {
            book.insert(d.host.clone(), addresses(&d.have));
        }
    }
    let mut outcomes = Vec::new();
    for d in due {
        let start = Instant::now();
        let done = rotate(&d, fleet, clouds, opts, &book).await;
        if let Ok((line, fp)) = &done {
            if let Some(a) = book.get_mut(&d.host) {
                a.host_key = Some(fp.clone());
                a.host_key_rotated = true;
            }
            if let Some(r) = results.iter_mut().find(|r| r.host == d.host) {
                r.generated_host_key = Some(line.clone());
            }
        }
        let done = done.map(|(line, _)| line);
        outcomes.push(CloudOutcome {
            host: d.host.clone(),
            what: "host key",
            action: CloudAction::Update,
            error: done.err().map(|e| {
                format!(
                    "{e}\n  its host key is rotated on the next apply (the server's label tells)"
                )
            }),
            server: None,
            host_key: None,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    outcomes
}

/// How a server is reached now: its addresses and its pinned key.
fn addresses(s: &ObservedServer) -> Addresses {
    Addresses {
        public: s.address.clone(),
        private: s.private_address.clone(),
        host_key: s.labels.get(HOST_KEY).cloned(),
        host_key_rotated: s.labels.contains_key(crate::cloud::HOST_KEY_ROTATED),
    }
}

/// One server: switch, confirm over a new connection, pin in the label,
/// delete the old key. The new key's known_hosts line and fingerprint, or
/// what failed.
async fn rotate(
    d: &Due,
    fleet: &Fleet,
    clouds: &Clouds,
    opts: &Options,
    book: &AddressBook,
) -> Result<(String, String), String> {
    let provider = clouds
        .get(d.have.provider)
        .ok_or_else(|| format!("no {:?} client", d.have.provider))?;
    let mut fleet = fleet.clone();
    crate::model::assign_addresses(&mut fleet, book);
    let host = fleet.host(&d.host).ok_or("the host left the config")?;
    let conn = crate::engine::connect(&fleet, host, opts)
        .await
        .map_err(|e| format!("cannot connect to rotate its host key: {e}"))?;
    let result = steps(&conn, d, &fleet, provider.as_ref(), opts).await;
    conn.close().await;
    result
}

/// The steps over the first connection `conn` (its old key still pinned).
async fn steps(
    conn: &crate::transport::Connection,
    d: &Due,
    fleet: &Fleet,
    provider: &dyn crate::cloud::Provider,
    opts: &Options,
) -> Result<(String, String), String> {
    let host = fleet.host(&d.host).ok_or("the host left the config")?;
    let b64 = rekey::switch(conn).await.map_err(|e| {
        format!(
            "rotating the host key failed: {e}; the old key stays in place; \
             fix that and apply again"
        )
    })?;
    let fp = crate::cloud::hostkey::fingerprint(&b64).ok_or("the new key does not parse")?;
    let line = match rekey::confirm(fleet, host, opts, &fp).await {
        Ok(line) => line,
        Err(e) => {
            let what = format!(
                "after switching sshd to the new host key, a new connection did not get it ({e})"
            );
            return Err(undo(conn, what).await);
        }
    };
    let mut want = d.want.clone();
    want.labels.insert(HOST_KEY.into(), fp.clone());
    want.labels.insert(HOST_KEY_ROTATED.into(), "true".into());
    if let Err(e) = provider.update(&d.have, &want).await {
        let what = format!("pinning the new host key in the server's label failed: {e}");
        return Err(undo(conn, what).await);
    }
    rekey::finish(conn).await.map_err(|e| {
        format!(
            "the new host key is pinned, but deleting the old one failed: {e}; \
             delete /etc/ssh/tidekeeper-rotate on the server by hand"
        )
    })?;
    Ok((line, fp))
}

/// Put the old key back after `what` failed; the message says both.
async fn undo(conn: &crate::transport::Connection, what: String) -> String {
    match rekey::restore(conn).await {
        Ok(()) => format!("{what}; the old key is back in place; apply again to retry"),
        Err(e) => format!(
            "{what}; putting the old key back failed too ({e}): the server may offer a key \
             tidekeeper has not pinned; its old keys are in /etc/ssh/tidekeeper-rotate/old — \
             move them back to /etc/ssh and reload sshd from the provider's console"
        ),
    }
}
