//! Observe a host in one round trip: a single shell script asks about every
//! managed item at once (one `stat`, one `sha256sum -c`, one `dpkg-query`,
//! one `systemctl show`, the user and group databases, ufw, sysctl, command
//! guards and tidekeeper's own inventory) and prints tab-separated records.
//! Building the script and parsing its output are pure.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::item::{Item, parse_ufw_rule};
use crate::model::desired::FirewallRule;
use crate::transport::shell_quote as q;

/// Where tidekeeper keeps its state on a host.
pub const STATE_DIR: &str = "/var/lib/tidekeeper";
/// Text files up to this size are fetched when they differ, for diffs.
pub const DIFF_LIMIT: u64 = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub paths: BTreeMap<String, PathState>,
    /// Paths whose content differs from the desired checksum (or are unreadable).
    pub content_differs: BTreeSet<String>,
    /// Current content of differing, non-sensitive, small files.
    pub contents: BTreeMap<String, Vec<u8>>,
    pub packages: BTreeMap<String, PackageState>,
    pub units: BTreeMap<String, UnitState>,
    pub users: BTreeMap<String, PasswdEntry>,
    pub groups: BTreeMap<String, GroupEntry>,
    pub firewall: Option<FirewallState>,
    pub sysctl: BTreeMap<String, Option<String>>,
    /// Command name → why it would run (None: guards say skip).
    pub commands: BTreeMap<String, Option<String>>,
    /// Stack name → its containers.
    pub stacks: BTreeMap<String, Vec<Container>>,
    pub inventory: Inventory,
    /// Handlers a failed earlier run still owes.
    pub pending_handlers: Vec<String>,
    /// Ancestor directories of managed paths that are symlinks not owned by
    /// root: (path, owner, target). Writing through them could land anywhere.
    pub unsafe_parents: Vec<(String, String)>,
}

/// A container of a compose project, as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub service: String,
    /// `running`, `exited`, …
    pub state: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub kind: PathKind,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub size: u64,
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    Link,
    Other,
}

impl PathKind {
    pub fn word(self) -> &'static str {
        match self {
            PathKind::File => "file",
            PathKind::Dir => "directory",
            PathKind::Link => "symlink",
            PathKind::Other => "special file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageState {
    pub installed: Option<String>,
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    pub load: String,
    pub active: String,
    pub file_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallState {
    pub enabled: bool,
    pub incoming: String,
    pub outgoing: String,
    pub rules: Vec<FirewallRule>,
    /// Rules in forms tidekeeper does not write (left alone).
    pub foreign: Vec<String>,
}

/// What tidekeeper manages on a host, kept in `/var/lib/tidekeeper/inventory.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    pub resources: Vec<InventoryEntry>,
    /// Command name → checksum of its definition when it last ran.
    #[serde(default)]
    pub commands: BTreeMap<String, String>,
    /// Stack name → checksum of its files when it was last brought up.
    #[serde(default)]
    pub stacks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InventoryEntry {
    pub kind: crate::change::ResourceKind,
    pub id: String,
    /// tidekeeper created it (users and groups are only removed if so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the probe's output ended early (no end marker); the host may be out of disk or memory"
    )]
    Truncated,
    #[error("cannot read the probe's output: {0}")]
    Garbled(String),
}

use super::sh::{HEREDOC, Tag};

/// The probe script for a host's items. `root` prefixes every path.
pub fn script(items: &[Item], root: &str) -> String {
    let p = |path: &str| format!("{root}{path}");
    // Guards see the local root as TK_ROOT, like the commands they guard.
    let mut s = format!("exec 2>/dev/null\nTK_ROOT={}; export TK_ROOT\n", q(root));
    let state = p(STATE_DIR);
    // Paths: one stat for all.
    let mut paths: Vec<String> = items.iter().filter_map(|i| i.path()).map(p).collect();
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        s.push_str(&format!(
            "stat -c '{}\t%F\t%a\t%U\t%G\t%s\t%n' --",
            Tag::Stat
        ));
        for path in &paths {
            s.push(' ');
            s.push_str(&q(path));
        }
        s.push('\n');
    }
    // Ancestors of managed paths: a symlink among them that root does not
    // own may have been planted to redirect a write.
    let mut ancestors: Vec<String> = Vec::new();
    for i in items {
        if let Some(path) = i.path() {
            let mut cur = path;
            while let Some(idx) = cur.rfind('/') {
                cur = &cur[..idx];
                if cur.is_empty() {
                    break;
                }
                ancestors.push(p(cur));
            }
        }
    }
    ancestors.sort();
    ancestors.dedup();
    if !ancestors.is_empty() {
        s.push_str(&format!("stat -c '{}\t%F\t%U\t%n' --", Tag::Ancestor));
        for a in &ancestors {
            s.push(' ');
            s.push_str(&q(a));
        }
        s.push_str(&format!(" | grep '^{}\tsymbolic link'\n", Tag::Ancestor));
    }
    // Paths tidekeeper managed before (to prune what left the config).
    let sed_root = root
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('&', "\\&");
    s.push_str(&format!(
        "[ -f {list} ] && sed 's|^|{sed_root}|' {list} | xargs -d '\\n' -r stat -c '{stat}\t%F\t%a\t%U\t%G\t%s\t%n' --\n",
        list = q(&format!("{state}/managed-paths")),
        stat = Tag::Stat,
    ));
    // Symlink targets (few; one readlink each).
    for i in items {
        if let Item::Link { path, .. } = i {
            let rp = q(&p(path));
            s.push_str(&format!(
                "[ -L {rp} ] && printf '{t}\\t%s\\t%s\\n' {rp} \"$(readlink -- {rp})\"\n",
                t = Tag::Link
            ));
        }
    }
    // Content: one sha256sum -c over all files, contents of differing small files.
    for sensitive in [false, true] {
        let files: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::File(f) if f.content.sensitive == sensitive => Some(f),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        s.push_str("sha256sum -c --quiet <<'");
        s.push_str(HEREDOC);
        s.push_str(&format!(
            "' | while IFS= read -r l; do f=\"${{l%: FAILED*}}\"; printf '{}\\t%s\\n' \"$f\"",
            Tag::Differs
        ));
        if !sensitive {
            s.push_str(&format!(
                "; if [ -f \"$f\" ] && [ \"$(stat -c %s -- \"$f\")\" -le {DIFF_LIMIT} ]; then \
                 printf '{t}\\t%s\\t' \"$f\"; base64 -w0 -- \"$f\"; echo; fi",
                t = Tag::Content
            ));
        }
        s.push_str("; done\n");
        for f in files {
            s.push_str(&format!("{}  {}\n", f.sha256, p(&f.path)));
        }
        s.push_str(HEREDOC);
        s.push('\n');
    }
    // Packages.
    let pkgs: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::Package { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !pkgs.is_empty() {
        s.push_str(&format!(
            "dpkg-query -W -f='{}\\t${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' --",
            Tag::Package
        ));
        for n in &pkgs {
            s.push(' ');
            s.push_str(&q(n));
        }
        s.push('\n');
    }
    for i in items {
        if let Item::Package {
            name,
            state: crate::model::desired::PackageState::Latest,
        } = i
        {
            s.push_str(&format!(
                "printf '{t}\\t%s\\t%s\\n' {n} \"$(apt-cache policy -- {n} | sed -n 's/^ *Candidate: //p')\"\n",
                n = q(name),
                t = Tag::Candidate
            ));
        }
    }
    // Units: one systemctl show, in argument order.
    let units: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Item::Service { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !units.is_empty() {
        s.push_str("systemctl show -p Id -p LoadState -p ActiveState -p UnitFileState --");
        for u in &units {
            s.push(' ');
            s.push_str(&q(u));
        }
        s.push_str(&format!(" | sed 's/^/{}\\t/'\n", Tag::Unit));
    }
    // Users and groups: the whole databases (small), no per-user forks.
    if items
        .iter()
        .any(|i| matches!(i, Item::User(_) | Item::Group { .. }))
    {
        s.push_str(&format!("getent passwd | sed 's/^/{}\\t/'\n", Tag::Passwd));
    }
    s.push_str(&super::kinds::group::probe(items));
    // Firewall.
    if items.iter().any(|i| matches!(i, Item::Firewall(_))) {
        s.push_str(&format!(
            "if command -v ufw >/dev/null; then printf '{ufw}\\tinstalled\\n'; \
             ufw show added | sed '1d;s/^/{rule}\\t/'; \
             sed -n 's/^DEFAULT_\\(INPUT\\|OUTPUT\\)_POLICY=\"\\(.*\\)\"/{policy}\\t\\1\\t\\2/p' {defaults}; \
             sed -n 's/^ENABLED=\\(.*\\)/{enabled}\\t\\1/p' {conf}; fi\n",
            defaults = q(&p("/etc/default/ufw")),
            conf = q(&p("/etc/ufw/ufw.conf")),
            ufw = Tag::Ufw,
            rule = Tag::UfwRule,
            policy = Tag::UfwPolicy,
            enabled = Tag::UfwEnabled,
        ));
    }
    s.push_str(&super::kinds::sysctl::probe(items));
    // Command guards.
    for i in items {
        if let Item::Command(c) = i {
            let name = q(&c.name);
            let mut checks = Vec::new();
            if let Some(path) = &c.creates {
                checks.push(format!(
                    "if [ -e {} ]; then echo skip; return; fi",
                    q(&p(path))
                ));
            }
            if let Some(u) = &c.unless {
                checks.push(format!(
                    "if timeout 60 sh -c {} </dev/null >/dev/null; then echo skip; return; fi",
                    q(u)
                ));
            }
            if let Some(o) = &c.onlyif {
                checks.push(format!(
                    "if ! timeout 60 sh -c {} </dev/null >/dev/null; then echo skip; return; fi",
                    q(o)
                ));
            }
            if checks.is_empty() {
                continue;
            }
            s.push_str(&format!(
                "g() {{ {}; echo run; }}; printf '{}\\t%s\\t%s\\n' {name} \"$(g)\"\n",
                checks.join("; "),
                Tag::Guard
            ));
        }
    }
    // Compose projects: their containers' states.
    for i in items {
        if let Item::Stack { name, .. } = i {
            s.push_str(&format!(
                "command -v docker >/dev/null && docker ps -a --filter label=com.docker.compose.project={n} \
                 --format '{{{{.Label \"com.docker.compose.service\"}}}}\t{{{{.State}}}}\t{{{{.Image}}}}' | sed 's/^/{t}\t'{n}'\t/'\n",
                n = q(name),
                t = Tag::Container
            ));
        }
    }
    // tidekeeper's own state.
    s.push_str(&format!(
        "[ -f {inv} ] && printf '{inventory}\\t%s\\n' \"$(base64 -w0 < {inv})\"\n\
         [ -f {pend} ] && sed 's/^/{handler}\\t/' {pend}\n\
         printf '{end}\\tend\\n'\n",
        inv = q(&format!("{state}/inventory.json")),
        pend = q(&format!("{state}/pending-handlers")),
        inventory = Tag::Inventory,
        handler = Tag::Handler,
        end = Tag::End,
    ));
    s
}

/// Parse the probe's output. `root` is stripped from paths again.
pub fn parse(out: &str, root: &str, items: &[Item]) -> Result<Observed, ProbeError> {
    let mut o = Observed::default();
    let strip = |p: &str| p.strip_prefix(root).unwrap_or(p).to_string();
    let mut unit_block: Vec<(String, String)> = Vec::new();
    let mut unit_order: Vec<UnitState> = Vec::new();
    let mut unit_ids: Vec<String> = Vec::new();
    let mut fw = FirewallState {
        enabled: false,
        incoming: String::new(),
        outgoing: String::new(),
        rules: vec![],
        foreign: vec![],
    };
    let mut fw_seen = false;
    let mut ended = false;
    let flush_unit =
        |block: &mut Vec<(String, String)>, order: &mut Vec<UnitState>, ids: &mut Vec<String>| {
            if block.is_empty() {
                return;
            }
            let get = |k: &str| {
                block
                    .iter()
                    .find(|(a, _)| a == k)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default()
            };
            ids.push(get("Id"));
            order.push(UnitState {
                load: get("LoadState"),
                active: get("ActiveState"),
                file_state: get("UnitFileState"),
            });
            block.clear();
        };
    for line in out.lines() {
        let mut f = line.splitn(2, '\t');
        let tag = f.next().unwrap_or("");
        let rest = f.next().unwrap_or("");
        let cols: Vec<&str> = rest.split('\t').collect();
        let bad = || ProbeError::Garbled(line.chars().take(200).collect());
        match Tag::parse(tag) {
            Some(Tag::Stat) => {
                let mut c = rest.splitn(6, '\t');
                let (kind, mode, owner, group, size, name) = (
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                );
                let kind = match kind {
                    "regular file" | "regular empty file" => PathKind::File,
                    "directory" => PathKind::Dir,
                    "symbolic link" => PathKind::Link,
                    _ => PathKind::Other,
                };
                o.paths.insert(
                    strip(name),
                    PathState {
                        kind,
                        mode: u32::from_str_radix(mode, 8).map_err(|_| bad())?,
                        owner: owner.into(),
                        group: group.into(),
                        size: size.parse().map_err(|_| bad())?,
                        link_target: None,
                    },
                );
            }
            Some(Tag::Link) => {
                let (path, target) = rest.split_once('\t').ok_or_else(bad)?;
                if let Some(ps) = o.paths.get_mut(&strip(path)) {
                    ps.link_target = Some(target.to_string());
                }
            }
            Some(Tag::Differs) => {
                o.content_differs.insert(strip(rest));
            }
            Some(Tag::Content) => {
                let (path, data) = rest.rsplit_once('\t').ok_or_else(bad)?;
                let bytes = B64.decode(data.trim()).map_err(|_| bad())?;
                o.contents.insert(strip(path), bytes);
            }
            Some(Tag::Package) => {
                let [name, status, version] = cols[..] else {
                    return Err(bad());
                };
                // `ii` installed; anything else (rc = removed, config left) is not.
                let installed = status.starts_with("ii").then(|| version.to_string());
                o.packages.insert(
                    name.to_string(),
                    PackageState {
                        installed,
                        candidate: None,
                    },
                );
            }
            Some(Tag::Candidate) => {
                let [name, candidate] = cols[..] else {
                    return Err(bad());
                };
                let cand =
                    (!candidate.is_empty() && candidate != "(none)").then(|| candidate.to_string());
                o.packages
                    .entry(name.to_string())
                    .or_insert(PackageState {
                        installed: None,
                        candidate: None,
                    })
                    .candidate = cand;
            }
            Some(Tag::Unit) => {
                if rest.is_empty() {
                    flush_unit(&mut unit_block, &mut unit_order, &mut unit_ids);
                } else if let Some((k, v)) = rest.split_once('=') {
                    if k == "Id" {
                        flush_unit(&mut unit_block, &mut unit_order, &mut unit_ids);
                    }
                    unit_block.push((k.to_string(), v.to_string()));
                }
            }
            Some(Tag::Passwd) => {
                let c: Vec<&str> = rest.split(':').collect();
                if c.len() >= 7 {
                    o.users.insert(
                        c[0].to_string(),
                        PasswdEntry {
                            uid: c[2].parse().map_err(|_| bad())?,
                            gid: c[3].parse().map_err(|_| bad())?,
                            home: c[5].to_string(),
                            shell: c[6].to_string(),
                        },
                    );
                }
            }
            Some(Tag::GroupLine) => {
                if let Some((name, g)) = super::kinds::group::parse(rest).map_err(|_| bad())? {
                    o.groups.insert(name, g);
                }
            }
            Some(Tag::Ufw) => fw_seen = true,
            Some(Tag::UfwRule) => {
                if rest.trim() == "(None)" {
                    continue;
                }
                match parse_ufw_rule(rest) {
                    Some(r) => fw.rules.push(r),
                    None => fw.foreign.push(rest.to_string()),
                }
            }
            Some(Tag::UfwPolicy) => {
                let [which, policy] = cols[..] else {
                    return Err(bad());
                };
                let word = match policy {
                    "ACCEPT" => "allow",
                    "DROP" => "deny",
                    "REJECT" => "reject",
                    other => other,
                }
                .to_string();
                if which == "INPUT" {
                    fw.incoming = word;
                } else {
                    fw.outgoing = word;
                }
            }
            Some(Tag::UfwEnabled) => fw.enabled = rest.trim() == "yes",
            Some(Tag::Sysctl) => {
                let read = super::kinds::sysctl::parse(rest, items).map_err(|_| bad())?;
                if let Some((key, value)) = read {
                    o.sysctl.insert(key, Some(value));
                }
            }
            Some(Tag::Guard) => {
                let [name, verdict] = cols[..] else {
                    return Err(bad());
                };
                o.commands.insert(
                    name.to_string(),
                    (verdict == "run").then(|| "guards say it is needed".to_string()),
                );
            }
            Some(Tag::Inventory) => {
                let bytes = B64.decode(rest.trim()).map_err(|_| bad())?;
                o.inventory = serde_json::from_slice(&bytes)
                    .map_err(|e| ProbeError::Garbled(format!("{STATE_DIR}/inventory.json: {e}")))?;
            }
            Some(Tag::Handler) => {
                let h = rest.trim().to_string();
                if !h.is_empty() && !o.pending_handlers.contains(&h) {
                    o.pending_handlers.push(h);
                }
            }
            Some(Tag::Ancestor) => {
                let mut c = rest.splitn(3, '\t');
                let (kind, owner, name) = (
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                    c.next().ok_or_else(bad)?,
                );
                if kind == "symbolic link" && owner != "root" {
                    o.unsafe_parents.push((strip(name), owner.to_string()));
                }
            }
            Some(Tag::Container) => {
                let (stack, service, state, image) = match cols[..] {
                    [stack, service, state, image] => (stack, service, state, image),
                    [stack, service, state] => (stack, service, state, ""),
                    _ => return Err(bad()),
                };
                o.stacks
                    .entry(stack.to_string())
                    .or_default()
                    .push(Container {
                        service: service.to_string(),
                        state: state.to_string(),
                        image: image.to_string(),
                    });
            }
            Some(Tag::End) => ended = true,
            _ => {}
        }
    }
    flush_unit(&mut unit_block, &mut unit_order, &mut unit_ids);
    if !ended {
        return Err(ProbeError::Truncated);
    }
    // systemctl answers in argument order; aliases (sshd → ssh.service) keep
    // the name the config used.
    let asked = items.iter().filter_map(|i| match i {
        Item::Service { name, .. } => Some(name.clone()),
        _ => None,
    });
    if unit_ids.len() == unit_order.len() {
        o.units = asked.zip(unit_order).collect();
    }
    if fw_seen {
        o.firewall = Some(fw);
    }
    Ok(o)
}
