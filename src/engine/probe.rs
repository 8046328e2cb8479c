//! Observe a host in one round trip: a single shell script asks about every
//! managed item at once (one `stat`, one `sha256sum -c`, one `dpkg-query`,
//! one `systemctl show`, the user and group databases, ufw, sysctl, command
//! guards and tidekeeper's own inventory) and prints tab-separated records.
//! Building the script and parsing its output are pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::item::Item;
use super::kinds;
use crate::transport::shell_quote as q;

pub use super::observed::*;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the probe's output ended early (no end marker); the host may be out of disk or memory"
    )]
    Truncated,
    #[error("cannot read the probe's output: {0}")]
    Garbled(String),
}

use super::sh::Tag;

pub use super::kinds::file::ContentCheck;

/// The probe script for a host's items. `root` prefixes every path.
/// With `content.settled`, the output says whether the host's record of
/// settled files was used ([`Settled`]); when it was not, probe again
/// without it.
pub fn script(items: &[Item], root: &str, content: ContentCheck) -> String {
    script_after(items, root, content, "")
}

/// [`script`], running `first` (a vouch owed to the stat cache, see
/// [`super::Vouches`]) before it looks at anything.
pub fn script_after(items: &[Item], root: &str, content: ContentCheck, first: &str) -> String {
    use super::kinds::{
        command, file, firewall, group, mount, package, path, service, stack, symlink, sysctl, user,
    };
    let mut s = super::sh::probe_prelude(root);
    s.push_str(first);
    // Between full checks the record of settled files stands in for every
    // file's stat and hash: no file's path is sent.
    let files = if content.settled {
        file::settled_probe(items, root)
    } else {
        file::probe(items, root, content)
    };
    for fragment in [
        path::probe(items, root, content.settled),
        symlink::probe(items, root),
        files,
        package::probe(items),
        service::probe(items),
        user::probe(items),
        group::probe(items),
        firewall::probe(items, root),
        sysctl::probe(items),
        mount::probe(items),
        command::probe(items, root),
        stack::probe(items),
    ] {
        s.push_str(&fragment);
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
pub fn parse(out: &str, root: &str, items: &[Item]) -> Result<Observed, ProbeError> {
    let mut o = Observed::default();
    let mut units = kinds::service::Units::default();
    let mut ufw = kinds::firewall::Ufw::default();
    let mut ended = false;
    let mut settled: Option<&str> = None;
    let mut moved = std::collections::BTreeSet::new();
    let mut ran = Vec::new();
    for line in out.lines() {
        let (tag, record) = line.split_once('\t').unwrap_or((line, ""));
        let Some(tag) = Tag::parse(tag) else { continue };
        if tag == Tag::End {
            ended = true;
            continue;
        }
        match tag {
            Tag::Inventory => o.inventory = inventory(record)?,
            Tag::Settled => settled = Some(record),
            Tag::Moved => {
                moved.insert(strip(root, record));
            }
            Tag::Recorded => o.recorded = Some(record.trim().to_string()),
            Tag::Ran => ran.push(record),
            Tag::Failed => {
                let mut f = record.splitn(3, '\t');
                if let (Some(name), Some(at), Some(code)) = (f.next(), f.next(), f.next()) {
                    o.failed
                        .insert(name.to_string(), format!("failed at {at}: exit {code}"));
                }
            }
            _ => {
                read(&mut o, &mut units, &mut ufw, tag, record, root, items)
                    .map_err(|_| ProbeError::Garbled(line.chars().take(200).collect()))?;
            }
        }
    }
    if !ended {
        return Err(ProbeError::Truncated);
    }
    o.units = units.finish(items);
    o.firewall = ufw.finish();
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
    if let Some(record) = settled {
        use_settled(&mut o, record, &moved, items);
    }
    Ok(o)
}

/// Between full checks: every file the record of settled files vouches
/// for and that did not move is as the config wants it. A record that
/// does not list every managed file is not used.
fn use_settled(
    o: &mut Observed,
    record: &str,
    moved: &std::collections::BTreeSet<String>,
    items: &[Item],
) {
    let files: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::File(f) => Some(f.path.as_str()),
            _ => None,
        })
        .collect();
    let listed = record
        .strip_prefix("hit\t")
        .and_then(|n| n.trim().parse::<usize>().ok());
    if listed != Some(files.len()) {
        o.settled = Settled::Miss;
        return;
    }
    o.settled = Settled::Hit { moved: moved.len() };
    for i in items {
        if let Item::File(f) = i
            && !moved.contains(&f.path)
        {
            o.paths.insert(f.path.clone(), kinds::file::as_wanted(f));
        }
    }
}

fn strip(root: &str, p: &str) -> String {
    p.strip_prefix(root).unwrap_or(p).to_string()
}

/// Read one record into what was observed: each kind reads its own.
fn read(
    o: &mut Observed,
    units: &mut kinds::service::Units,
    ufw: &mut kinds::firewall::Ufw,
    tag: Tag,
    record: &str,
    root: &str,
    items: &[Item],
) -> Result<(), kinds::Garbled> {
    use kinds::{command, file, group, mount, package, path, stack, symlink, sysctl, user};
    let strip = |p: &str| strip(root, p);
    match tag {
        Tag::Stat => {
            let (path, ps) = path::parse_stat(record)?;
            o.paths.insert(strip(path), ps);
        }
        Tag::Ancestor => {
            if let Some((dir, owner)) = path::parse_ancestor(record)? {
                o.unsafe_parents.push((strip(dir), owner.to_string()));
            }
        }
        Tag::Link => {
            let (path, target) = symlink::parse(record)?;
            if let Some(ps) = o.paths.get_mut(&strip(path)) {
                ps.link_target = Some(target.to_string());
            }
        }
        Tag::Differs => {
            o.content_differs.insert(strip(record));
        }
        Tag::Content => {
            let (path, bytes) = file::parse_content(record)?;
            o.contents.insert(strip(path), bytes);
        }
        Tag::Package => {
            let (name, installed) = package::parse(record)?;
            o.packages.entry(name.to_string()).or_default().installed = installed;
        }
        Tag::Candidate => {
            let (name, candidate) = package::parse_candidate(record)?;
            o.packages.entry(name.to_string()).or_default().candidate = candidate;
        }
        Tag::Unit => units.record(record),
        Tag::Passwd => {
            if let Some((name, pw)) = user::parse(record)? {
                o.users.insert(name, pw);
            }
        }
        Tag::GroupLine => {
            if let Some((name, g)) = group::parse(record)? {
                o.groups.insert(name, g);
            }
        }
        Tag::Ufw | Tag::UfwRule | Tag::UfwPolicy | Tag::UfwEnabled => ufw.record(tag, record)?,
        Tag::Sysctl => {
            if let Some((key, value)) = sysctl::parse(record, items)? {
                o.sysctl.insert(key, Some(value));
            }
        }
        Tag::Guard => {
            let (name, why) = command::parse(record)?;
            o.commands.insert(name.to_string(), why);
        }
        Tag::Fstab => {
            let (path, entry) = mount::parse_fstab(record)?;
            o.fstab.insert(path.to_string(), entry);
        }
        Tag::Mounted => {
            let (path, what) = mount::parse_mounted(record)?;
            o.mounted.insert(path.to_string(), what.to_string());
        }
        Tag::Container => {
            let (stack, c) = stack::parse(record)?;
            o.stacks.entry(stack.to_string()).or_default().push(c);
        }
        Tag::Handler => {
            let h = record.trim().to_string();
            if !h.is_empty() && !o.pending_handlers.contains(&h) {
                o.pending_handlers.push(h);
            }
        }
        Tag::End
        | Tag::Inventory
        | Tag::Settled
        | Tag::Moved
        | Tag::Recorded
        | Tag::Ran
        | Tag::Failed => {}
    }
    Ok(())
}

/// tidekeeper's inventory on the host, as the probe printed it (base64).
fn inventory(record: &str) -> Result<Inventory, ProbeError> {
    let bytes = B64
        .decode(record.trim())
        .map_err(|e| ProbeError::Garbled(format!("{STATE_DIR}/inventory.json: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ProbeError::Garbled(format!("{STATE_DIR}/inventory.json: {e}")))
}
