//! Observe a host in one round trip: a single shell script asks about every
//! managed item at once (one `stat` of every path, then each kind's own
//! fragment from the registry: one `sha256sum -c`, one `dpkg-query`, one
//! `systemctl show`, the user and group databases, ufw, sysctl, command
//! guards, host settings; the host's facts; and tidekeeper's own inventory) and prints
//! tab-separated records, which each kind reads back. Building the script
//! and parsing its output are pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::item::Item;
use super::kinds;
use crate::transport::shell_quote as q;

pub(crate) use super::observed::*;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error(
        "the probe's output ended early (no end marker); the host may be out of disk or memory"
    )]
    Truncated,
    #[error("cannot read the probe's output: {0}")]
    Garbled(String),
}

use super::sh::Tag;

pub(crate) use super::kinds::file::ContentCheck;

/// The probe script for a host's items. `root` prefixes every path.
/// With `content.settled`, the output says whether the host's record of
/// settled files was used ([`Settled`]); when it was not, probe again
/// without it.
#[cfg(test)]
pub(crate) fn script(items: &[Item], root: &str, content: ContentCheck) -> String {
    script_after(items, root, content, "")
}

/// [`script`], running `first` (a vouch owed to the stat cache, see
/// [`super::Vouches`]) before it looks at anything.
pub(crate) fn script_after(
    items: &[Item],
    root: &str,
    content: ContentCheck,
    first: &str,
) -> String {
    let mut s = super::sh::probe_prelude(root);
    s.push_str(first);
    s.push_str(&super::facts::probe());
    // Every path's stat, shared by the path kinds, then each kind's own.
    s.push_str(&kinds::path::probe(items, root, content.settled));
    let cx = kinds::ProbeCx { root, content };
    for kind in kinds::KINDS {
        s.push_str(&kind.probe(items, &cx));
    }
    // tidekeeper's own state.
    let state = format!("{root}{STATE_DIR}");
    s.push_str(&format!(
        "[ -f {inv} ] && printf '{inventory}\\t%s\\n' \"$(base64 -w0 < {inv})\"\n\
         [ -f {pend} ] && sed 's/^/{handler}\\t/' {pend}\n\
         [ -f {ran} ] && sed 's/^/{ran_tag}\\t/' {ran}\n\
         [ -f {failed} ] && sed 's/^/{failed_tag}\\t/' {failed}\n\
         printf '{end}\\tend\\n'\n",
        inv = q(&format!("{state}/inventory.json")),
        pend = q(&format!("{state}/pending-handlers")),
        ran = q(&format!("{state}/{RAN}")),
        failed = q(&format!("{state}/{FAILED}")),
        inventory = Tag::Inventory,
        handler = Tag::Handler,
        ran_tag = Tag::Ran,
        failed_tag = Tag::Failed,
        end = Tag::End,
    ));
    s
}

/// Parse the probe's output. `root` is stripped from paths again.
pub(crate) fn parse(out: &str, root: &str, items: &[Item]) -> Result<Observed, ProbeError> {
    let mut o = Observed::default();
    let mut ended = false;
    let mut ran = Vec::new();
    let mut facts = Vec::new();
    // The kinds' records, read by their kinds once all are in.
    let mut records: Vec<(Tag, &str)> = Vec::new();
    for line in out.lines() {
        let (tag, record) = line.split_once('\t').unwrap_or((line, ""));
        let Some(tag) = Tag::parse(tag) else { continue };
        match tag {
            Tag::End => ended = true,
            Tag::Inventory => o.inventory = inventory(record)?,
            Tag::Ran => ran.push(record),
            Tag::Fact => facts.push(record),
            Tag::Failed => failed(&mut o, record),
            Tag::Handler => {
                let h = record.trim().to_string();
                if !h.is_empty() && !o.pending_handlers.contains(&h) {
                    o.pending_handlers.push(h);
                }
            }
            Tag::Stat | Tag::Ancestor => path(&mut o, tag, record, root)
                .map_err(|_| ProbeError::Garbled(line.chars().take(200).collect()))?,
            _ => records.push((tag, record)),
        }
    }
    if !ended {
        return Err(ProbeError::Truncated);
    }
    o.facts = super::facts::read(facts);
    let cx = kinds::ReadCx { root, items };
    for kind in kinds::KINDS {
        let mine: Vec<(Tag, &str)> = records
            .iter()
            .filter(|(t, _)| kind.tags().contains(t))
            .copied()
            .collect();
        kind.read(&mine, &cx, &mut o)
            .map_err(|line| ProbeError::Garbled(line.chars().take(200).collect()))?;
    }
    // In the order they ran: the last record of a name stands.
    for r in ran {
        let mut f = r.splitn(3, '\t');
        match (f.next(), f.next(), f.next()) {
            (Some("command"), Some(name), Some(sum)) => {
                o.inventory.commands.insert(name.into(), sum.into());
                o.failed.remove(name);
            }
            (Some("stack"), Some(name), Some(sum)) => {
                o.inventory.stacks.insert(name.into(), sum.into());
            }
            _ => return Err(ProbeError::Garbled(r.chars().take(200).collect())),
        }
    }
    Ok(o)
}

/// A command that failed since the inventory was last written whole.
fn failed(o: &mut Observed, record: &str) {
    let mut f = record.splitn(3, '\t');
    if let (Some(name), Some(at), Some(code)) = (f.next(), f.next(), f.next()) {
        o.failed
            .insert(name.to_string(), format!("failed at {at}: exit {code}"));
    }
}

/// A path's stat, or an ancestor that is a symlink not owned by root: what
/// every path kind reads.
fn path(o: &mut Observed, tag: Tag, record: &str, root: &str) -> Result<(), kinds::Garbled> {
    if tag == Tag::Stat {
        let (path, ps) = kinds::path::parse_stat(record)?;
        o.paths.insert(strip(root, path), ps);
    } else if let Some((dir, owner)) = kinds::path::parse_ancestor(record)? {
        o.unsafe_parents.push((strip(root, dir), owner.to_string()));
    }
    Ok(())
}

fn strip(root: &str, p: &str) -> String {
    p.strip_prefix(root).unwrap_or(p).to_string()
}

/// tidekeeper's inventory on the host, as the probe printed it (base64).
fn inventory(record: &str) -> Result<Inventory, ProbeError> {
    let bytes = B64
        .decode(record.trim())
        .map_err(|e| ProbeError::Garbled(format!("{STATE_DIR}/inventory.json: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ProbeError::Garbled(format!("{STATE_DIR}/inventory.json: {e}")))
}
