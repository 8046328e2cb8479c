//! Turn a host plan into ONE shell script that carries all changed content
//! and applies exactly the plan, step by step, under a lock on the host.
//! Building the script and reading its report are pure.
//!
//! Every file is written to a temporary file in its own directory, synced,
//! validated, the old file backed up under the state directory, then renamed
//! over the original: a crash at any point leaves each file wholly old or
//! wholly new. Handlers a step owes are recorded on the host before the step
//! runs, so a restart owed by a failed run is still done by the next one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::item::{FileItem, Item, policy_word, ufw_rule_args};
use super::plan::{Action, Change, HostPlan, ResourceKind};
use super::probe::{Inventory, STATE_DIR};
use crate::model::desired::{PackageState, ServiceState};
use crate::transport::shell_quote as q;

/// Backups of this many runs are kept on each host.
pub const BACKUP_RUNS: usize = 10;

use super::kinds::sysctl::CONF as SYSCTL_CONF;

use super::sh::HEREDOC as EOF;

/// One step of the script, and the plan entries it carries out.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
}

pub struct Script {
    pub text: String,
    pub steps: Vec<Step>,
}

struct Builder {
    root: String,
    text: String,
    steps: Vec<Step>,
    /// Files written, to verify at the end: (sha256, path).
    written: Vec<(String, String)>,
}

impl Builder {
    fn p(&self, path: &str) -> String {
        q(&format!("{}{path}", self.root))
    }

    /// Add a step: `body` is shell code where each command ends in `|| return`.
    fn step(&mut self, what: String, body: String) {
        let n = self.steps.len();
        self.text
            .push_str(&format!("s{n}() {{\n{body}}}\nrun {n} s{n}\n"));
        self.steps.push(Step { what });
    }
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

fn write_file(b: &Builder, f: &FileItem, exists: bool) -> String {
    let p = b.p(&f.path);
    let d = b.p(parent(&f.path));
    let mut s = format!(
        "p={p}; d={d}\n[ -d \"$d\" ] || mkdir -p \"$d\" || return\n\
         for x in \"$d\"/.tidekeeper.*; do [ -e \"$x\" ] && rm -f \"$x\"; done\n\
         t=$(mktemp \"$d/.tidekeeper.XXXXXX\") || return\n"
    );
    let data = B64.encode(&f.content.bytes);
    s.push_str(&format!("base64 -d >\"$t\" <<'{EOF}' || return\n"));
    for chunk in data.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(EOF);
    s.push('\n');
    match f.mode {
        Some(m) => s.push_str(&format!("chmod {m:04o} \"$t\" || return\n")),
        None if exists => s.push_str("chmod --reference=\"$p\" \"$t\" || return\n"),
        None => s.push_str("chmod 0644 \"$t\" || return\n"),
    }
    if exists && (f.owner.is_none() || f.group.is_none()) {
        s.push_str("chown --reference=\"$p\" \"$t\" || return\n");
    }
    if let Some(o) = &f.owner {
        s.push_str(&format!("chown {} \"$t\" || return\n", q(o)));
    }
    if let Some(g) = &f.group {
        s.push_str(&format!("chgrp {} \"$t\" || return\n", q(g)));
    }
    s.push_str("sync \"$t\" || return\n");
    if let Some(v) = &f.validate {
        let cmd = v.replace("%s", "\"$t\"");
        s.push_str(&format!(
            // A group, so `a; b` as a validator is judged by its last command.
            "if ! {{ {cmd}\n}}; then rm -f \"$t\"; echo {} >&2; return 1; fi\n",
            q(&format!(
                "validation failed ({v}); the live file is untouched"
            ))
        ));
    }
    s.push_str(&format!("backup {} || return\n", q(&f.path)));
    s.push_str("mv -f \"$t\" \"$p\" || return\n");
    s
}

/// The inventory as JSON, written atomically by the script.
/// Also a plain list of managed paths, which the probe stats without parsing JSON.
fn write_inventory(state: &str, inv: &Inventory) -> String {
    let json = serde_json::to_string_pretty(inv).expect("inventory serializes");
    let paths: String = inv
        .resources
        .iter()
        .filter(|e| e.kind.is_path())
        .map(|e| format!("{}\n", e.id))
        .collect();
    let mut s = String::new();
    for (name, data) in [("inventory.json", json), ("managed-paths", paths)] {
        s.push_str(&format!(
            "t=$(mktemp {state}/.inventory.XXXXXX) && base64 -d >\"$t\" <<'{EOF}' && mv -f \"$t\" {state}/{name} || return\n{}\n{EOF}\n",
            B64.encode(data)
        ));
    }
    s
}

fn same_entries(a: &Inventory, b: &Inventory) -> bool {
    a.resources.len() == b.resources.len() && a.resources.iter().all(|e| b.resources.contains(e))
}

/// Build the apply script for a plan. `run_id` names the backup directory.
/// Arm the lockout guard for risky changes: the login user and the deadline.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    pub login_user: String,
    pub deadline_secs: u64,
}

pub fn script(plan: &HostPlan, root: &str, run_id: &str, guard: Option<&GuardSettings>) -> Script {
    let state = q(&format!("{root}{STATE_DIR}"));
    let mut b = Builder {
        root: root.to_string(),
        text: String::new(),
        steps: vec![],
        written: vec![],
    };
    b.text.push_str(&format!(
        "set -u\numask 022\nexport DEBIAN_FRONTEND=noninteractive\nR={root}\nTK_ROOT=\"$R\"; export TK_ROOT\nS={state}\n\
         mkdir -p \"$S\" || exit 1\nexec 9>\"$S/lock\"\n\
         if ! flock -n 9; then echo '@@locked'; exit 75; fi\n\
         B=\"$S/backups/{run_id}\"; E=\"$S/step.err\"\n\
         mkdir -p \"$S/backups\" && chmod 0700 \"$S/backups\" && (umask 077; : >\"$E\") && chmod 0600 \"$E\" || exit 1\n\
         run() {{ printf '@@begin %s\\n' \"$1\"; if \"$2\" 2>\"$E\"; then printf '@@ok %s\\n' \"$1\"; \
         else printf '@@fail %s\\n' \"$1\"; cat \"$E\"; printf '\\n@@end\\n'; exit 1; fi; }}\n\
         owe() {{ grep -qxF \"$1\" \"$S/pending-handlers\" 2>/dev/null || printf '%s\\n' \"$1\" >>\"$S/pending-handlers\"; }}\n\
         paid() {{ [ -f \"$S/pending-handlers\" ] || return 0; grep -vxF \"$1\" \"$S/pending-handlers\" >\"$S/pending.tmp\"; \
         mv -f \"$S/pending.tmp\" \"$S/pending-handlers\"; }}\n\
         backup() {{ p=\"$R$1\"; [ -e \"$p\" ] || [ -L \"$p\" ] || return 0; \
         mkdir -p \"$B$(dirname \"$1\")\" && cp -a \"$p\" \"$B$1\"; }}\n",
        root = q(root),
    ));

    // First record that everything about to be touched is managed, so a run
    // cut short can still prune what it created.
    let mut union = plan.inventory.clone();
    for c in &plan.changes {
        if c.prune
            && !union
                .resources
                .iter()
                .any(|e| e.kind == c.kind && e.id == c.id)
        {
            union.resources.push(super::probe::InventoryEntry {
                kind: c.kind,
                id: c.id.clone(),
                created: true,
            });
        }
    }
    for e in &plan.previous_inventory.resources {
        if !union.resources.contains(e) {
            union.resources.push(e.clone());
        }
    }
    if !same_entries(&union, &plan.previous_inventory) {
        b.step(
            "record the inventory".into(),
            write_inventory("\"$S\"", &union),
        );
    }

    let owes = |c: &Change| -> String {
        c.notify
            .iter()
            .map(|n| format!("owe {} || return\n", q(n)))
            .collect()
    };
    let desired: Vec<&Change> = plan.changes.iter().filter(|c| !c.prune).collect();

    // Packages: one install and one removal for all of them.
    let mut install = Vec::new();
    let mut upgrade = Vec::new();
    let mut remove = Vec::new();
    for c in &desired {
        if let Some(Item::Package { name, state }) = &c.item {
            match (c.action, state) {
                (Action::Delete, _) => remove.push(name.clone()),
                (Action::Update, PackageState::Latest) => upgrade.push(name.clone()),
                _ => install.push(name.clone()),
            }
        }
    }
    let fw_needs_ufw = desired
        .iter()
        .any(|c| matches!(c.item, Some(Item::Firewall(_))) && c.action == Action::Create);
    if fw_needs_ufw && !install.iter().any(|p| p == "ufw") {
        install.push("ufw".into());
    }
    if !install.is_empty() || !upgrade.is_empty() {
        let all: Vec<String> = install.iter().chain(&upgrade).map(|p| q(p)).collect();
        let all = all.join(" ");
        let mut body = format!(
            "if ! apt-cache show {all} >/dev/null 2>&1 || [ -n \"$(find /var/lib/apt/lists -maxdepth 0 -mmin +1440)\" ]; \
             then apt-get update -qq || return; fi\n"
        );
        if !install.is_empty() {
            body.push_str(&format!(
                "apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold {} >/dev/null || return\n",
                install.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
            ));
        }
        if !upgrade.is_empty() {
            body.push_str(&format!(
                "apt-get install -y -q --only-upgrade -o Dpkg::Options::=--force-confold {} >/dev/null || return\n",
                upgrade.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
            ));
        }
        let names: Vec<&str> = install.iter().chain(&upgrade).map(String::as_str).collect();
        b.step(format!("install packages {}", names.join(" ")), body);
    }
    if !remove.is_empty() {
        let list = remove.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ");
        b.step(
            format!("remove packages {}", remove.join(" ")),
            format!("apt-get remove -y -q {list} >/dev/null || return\n"),
        );
    }

    // Packages first (they can take long and are not risky), then the guard
    // is armed before anything access depends on changes.
    let guarded = guard.filter(|g| !super::guard::risky(plan, &g.login_user).is_empty());
    if let Some(g) = guarded {
        b.step(
            "arm the lockout guard".into(),
            super::guard::arm(plan, &g.login_user, run_id, g.deadline_secs),
        );
    }

    let mut sysctl_changed = false;
    let mut reloaded = false;
    let mut files_done = false;
    for c in &desired {
        let Some(item) = &c.item else { continue };
        // systemd must see new unit files before services are touched.
        if !matches!(
            item,
            Item::File(_) | Item::Dir { .. } | Item::Link { .. } | Item::Absent { .. }
        ) && !files_done
        {
            files_done = true;
            if plan.daemon_reload && !reloaded {
                reloaded = true;
                b.step(
                    "systemctl daemon-reload".into(),
                    "systemctl daemon-reload || return\n".into(),
                );
            }
        }
        let what = format!("{} {}", c.kind, c.id);
        match item {
            Item::Package { .. } => {}
            Item::File(f) => {
                let mut body = owes(c);
                if c.action == Action::Replace {
                    body.push_str(&format!(
                        "backup {} || return\nrm -f {} || return\n",
                        q(&f.path),
                        b.p(&f.path)
                    ));
                }
                let exists = c.action == Action::Update;
                let content_changes =
                    c.action != Action::Update || c.diff.is_some() || c.note.is_some();
                if content_changes {
                    body.push_str(&write_file(&b, f, exists));
                    b.written
                        .push((f.sha256.clone(), format!("{}{}", b.root, f.path)));
                } else {
                    // Only mode or ownership differ: change them in place.
                    let p = b.p(&f.path);
                    if let Some(m) = f.mode {
                        body.push_str(&format!("chmod {m:04o} {p} || return\n"));
                    }
                    if let Some(o) = &f.owner {
                        body.push_str(&format!("chown {} {p} || return\n", q(o)));
                    }
                    if let Some(g) = &f.group {
                        body.push_str(&format!("chgrp {} {p} || return\n", q(g)));
                    }
                }
                b.step(what, body);
            }
            Item::Dir {
                path,
                mode,
                owner,
                group,
            } => {
                let p = b.p(path);
                let mut body = String::new();
                if c.action == Action::Replace {
                    body.push_str(&format!(
                        "backup {} || return\nrm -f {p} || return\n",
                        q(path)
                    ));
                }
                body.push_str(&format!("mkdir -p {p} || return\n"));
                body.push_str(&format!(
                    "chmod {:04o} {p} || return\n",
                    mode.unwrap_or(0o755)
                ));
                if let Some(o) = owner {
                    body.push_str(&format!("chown {} {p} || return\n", q(o)));
                }
                if let Some(g) = group {
                    body.push_str(&format!("chgrp {} {p} || return\n", q(g)));
                }
                b.step(what, body);
            }
            Item::Link { path, target } => {
                let p = b.p(path);
                let d = b.p(parent(path));
                let mut body = format!("[ -d {d} ] || mkdir -p {d} || return\n");
                if c.action == Action::Replace {
                    body.push_str(&format!("backup {} || return\n", q(path)));
                }
                body.push_str(&format!(
                    "t={d}/.tidekeeper.link.$$; rm -f \"$t\"; ln -s {} \"$t\" && mv -Tf \"$t\" {p} || return\n",
                    q(target)
                ));
                b.step(what, body);
            }
            Item::Absent { path } => {
                let p = b.p(path);
                let body = if c.was == Some(super::probe::PathKind::Dir) {
                    format!("rm -rf -- {p} || return\n")
                } else {
                    format!("backup {} || return\nrm -f {p} || return\n", q(path))
                };
                b.step(what, body);
            }
            Item::Group { name, gid } => {
                b.step(what, super::kinds::group::apply(c.action, name, *gid));
            }
            Item::User(u) => {
                let mut args = String::new();
                if let Some(uid) = u.uid {
                    args.push_str(&format!(" -u {uid}"));
                }
                if let Some(s) = &u.shell {
                    args.push_str(&format!(" -s {}", q(s)));
                }
                args.push_str(&format!(" -G {}", q(&u.groups.join(","))));
                let body = if c.action == Action::Create {
                    // A group of the user's name (managed here, or already
                    // there) becomes its primary group; useradd would refuse it.
                    format!(
                        "if getent group {n} >/dev/null; then ug='-g {n}'; else ug=''; fi\n\
                         useradd $ug -m -d {}{}{} -- {n} || return\n",
                        q(&u.home),
                        if u.system { " -r" } else { "" },
                        if u.groups.is_empty() {
                            args.replace(" -G ''", "")
                        } else {
                            args
                        },
                        n = q(&u.name)
                    )
                } else {
                    let home = if c.attrs.iter().any(|a| a.name == "home") {
                        format!(" -d {} -m", q(&u.home))
                    } else {
                        String::new()
                    };
                    format!("usermod{args}{home} -- {} || return\n", q(&u.name))
                };
                b.step(what, body);
            }
            Item::Sysctl { key, value } => {
                sysctl_changed = true;
                b.step(what, super::kinds::sysctl::apply(key, value));
            }
            Item::Firewall(fw) => {
                let mut body = String::new();
                // Allow rules first, so SSH is in force before a default deny.
                for a in &c.attrs {
                    if a.name == "rule"
                        && let (None, Some(r)) = (&a.before, &a.after)
                    {
                        body.push_str(&format!("ufw {r} >/dev/null || return\n"));
                    }
                }
                if c.action == Action::Create {
                    for r in &fw.rules {
                        body.push_str(&format!("ufw {} >/dev/null || return\n", ufw_rule_args(r)));
                    }
                }
                for a in &c.attrs {
                    if a.name == "rule"
                        && let (Some(r), None) = (&a.before, &a.after)
                    {
                        body.push_str(&format!("ufw delete {r} >/dev/null || return\n"));
                    }
                }
                body.push_str(&format!(
                    "ufw default {} incoming >/dev/null || return\nufw default {} outgoing >/dev/null || return\n\
                     ufw --force enable >/dev/null || return\n",
                    policy_word(fw.incoming),
                    policy_word(fw.outgoing)
                ));
                b.step(what, body);
            }
            Item::Service {
                name,
                enabled,
                state,
            } => {
                let u = q(name);
                let mut body = String::new();
                match enabled {
                    Some(true) => body.push_str(&format!("systemctl enable -q -- {u} || return\n")),
                    Some(false) => {
                        body.push_str(&format!("systemctl disable -q -- {u} || return\n"))
                    }
                    None => {}
                }
                let starts = c
                    .attrs
                    .iter()
                    .any(|a| a.name == "state" && a.after.as_deref() == Some("running"));
                match state {
                    // Not running when planned, so its restart handlers were
                    // dropped; but installing its package may have started it
                    // since, with the config as it was then: restart, not start.
                    Some(ServiceState::Running) if starts => {
                        body.push_str(&format!("systemctl restart -- {u} || return\n"))
                    }
                    Some(ServiceState::Running) => {
                        body.push_str(&format!("systemctl start -- {u} || return\n"))
                    }
                    Some(ServiceState::Stopped) => {
                        body.push_str(&format!("systemctl stop -- {u} || return\n"))
                    }
                    None => {}
                }
                b.step(what, body);
            }
            Item::Stack {
                name,
                dir,
                health,
                health_timeout_secs,
                ..
            } => {
                // Compose v2 (`docker compose`) where present, else v1.
                b.step(
                    what,
                    format!(
                        "cd {} || return\nif docker compose version >/dev/null 2>&1; then \
                         docker compose -p {n} up -d --remove-orphans >&2 || return; \
                         else docker-compose -p {n} up -d --remove-orphans >&2 || return; fi\n",
                        b.p(dir),
                        n = q(name)
                    ),
                );
                if !health.is_empty() {
                    b.step(
                        format!("stack {name} health"),
                        super::health::wait_script(health, *health_timeout_secs),
                    );
                }
            }
            Item::Command(cmd) => {
                let mut body = owes(c);
                body.push_str(&format!(
                    "timeout {} sh -c {} </dev/null >&2 || return\n",
                    cmd.timeout_secs,
                    q(&cmd.run)
                ));
                b.step(format!("command {}", cmd.name), body);
            }
        }
    }
    if plan.daemon_reload && !reloaded {
        b.step(
            "systemctl daemon-reload".into(),
            "systemctl daemon-reload || return\n".into(),
        );
    }
    if sysctl_changed && let Some(conf) = &plan.sysctl_conf {
        // Persist the settings so they survive a reboot.
        let f = FileItem {
            path: SYSCTL_CONF.into(),
            sha256: crate::digest::sha256_hex(conf.as_bytes()),
            content: crate::model::desired::Content {
                bytes: conf.clone().into_bytes(),
                sensitive: false,
            },
            mode: Some(0o644),
            owner: None,
            group: None,
            validate: None,
            notify: vec![],
        };
        let body = write_file(&b, &f, false);
        b.written
            .push((f.sha256.clone(), format!("{}{}", b.root, f.path)));
        b.step(format!("file {SYSCTL_CONF}"), body);
    }
    if !b.written.is_empty() {
        let mut body = format!("sha256sum -c --quiet >&2 <<'{EOF}' || return\n");
        for (h, p) in &b.written {
            body.push_str(&format!("{h}  {p}\n"));
        }
        body.push_str(EOF);
        body.push('\n');
        b.step("verify written files".into(), body);
    }
    for h in &plan.handlers {
        b.step(
            format!("handler {} ({})", h.name, h.command),
            format!("{} || return\npaid {} || return\n", h.command, q(&h.name)),
        );
    }
    // Prune only once everything else succeeded.
    for c in plan.changes.iter().filter(|c| c.prune) {
        let what = format!("{} {} (no longer in the config)", c.kind, c.id);
        let p = b.p(&c.id);
        let body = match c.kind {
            ResourceKind::File | ResourceKind::Symlink => {
                format!("backup {} || return\nrm -f {p} || return\n", q(&c.id))
            }
            ResourceKind::Directory => format!(
                "rmdir {p} 2>/dev/null || printf '@@warn %s\\n' {}\n",
                q(&format!("directory {} is not empty; left in place", c.id))
            ),
            ResourceKind::Service => format!(
                "systemctl disable -q --now -- {} 2>/dev/null; true\n",
                q(&c.id)
            ),
            // Containers and network of the project go; its files are pruned after.
            ResourceKind::Stack => format!(
                "if docker compose version >/dev/null 2>&1; then docker compose -p {n} down --remove-orphans >&2; \
                 else ids=$(docker ps -aq --filter label=com.docker.compose.project={n}); \
                 [ -z \"$ids\" ] || docker rm -f $ids >/dev/null || return; \
                 docker network rm {n}_default >/dev/null 2>&1; fi; true\n",
                n = q(&c.id)
            ),
            ResourceKind::User => format!("userdel -- {} || return\n", q(&c.id)),
            ResourceKind::Group => format!("groupdel -- {} || return\n", q(&c.id)),
            _ => continue,
        };
        b.step(what, body);
    }
    let mut final_inv = if plan.inventory == plan.previous_inventory {
        String::new()
    } else {
        write_inventory("\"$S\"", &plan.inventory)
    };
    for h in &plan.settled_handlers {
        final_inv.push_str(&format!("paid {} || return\n", q(h)));
    }
    b.step(
        "record the inventory".into(),
        format!(
            // Run ids sort by time; the glob lists them oldest first. Never
            // parse `ls` or word-split: the root may hold spaces.
            "{final_inv}if [ -d \"$B\" ]; then set -- \"$S\"/backups/*/; n=$(( $# - {keep} )); \
             for d in \"$@\"; do [ \"$n\" -gt 0 ] || break; rm -rf -- \"$d\" || return; n=$((n - 1)); done; fi\n",
            keep = BACKUP_RUNS
        ),
    );
    if let Some(g) = guarded {
        // The countdown starts again now that everything is applied, so a
        // long apply never eats the time left to prove access.
        b.step(
            "restart the lockout countdown".into(),
            super::guard::rearm(run_id, g.deadline_secs),
        );
    }
    b.text.push_str("echo '@@done'\n");
    Script {
        text: b.text,
        steps: b.steps,
    }
}

/// How an apply went on one host, read from the script's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        steps: usize,
        warnings: Vec<String>,
    },
    Failed {
        step: usize,
        what: String,
        error: String,
        completed: usize,
    },
    Locked,
    /// The script stopped without saying how (connection cut, host crashed).
    Interrupted {
        completed: usize,
    },
}

/// Did the script arm the lockout guard?
pub fn armed(stdout: &str) -> bool {
    stdout.lines().any(|l| l.starts_with("@@armed "))
}

pub fn read_report(stdout: &str, stderr: &str, steps: &[Step]) -> Outcome {
    let mut completed = 0;
    let mut warnings = Vec::new();
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        if line == "@@locked" {
            return Outcome::Locked;
        }
        if line == "@@done" {
            return Outcome::Done {
                steps: completed,
                warnings,
            };
        }
        if let Some(w) = line.strip_prefix("@@warn ") {
            warnings.push(w.to_string());
        } else if line.starts_with("@@ok ") {
            completed += 1;
        } else if let Some(n) = line.strip_prefix("@@fail ") {
            let step: usize = n.trim().parse().unwrap_or(0);
            let mut error = String::new();
            for l in lines.by_ref() {
                if l == "@@end" {
                    break;
                }
                error.push_str(l);
                error.push('\n');
            }
            let error = if error.trim().is_empty() {
                stderr.trim().to_string()
            } else {
                error.trim().to_string()
            };
            return Outcome::Failed {
                step,
                what: steps.get(step).map(|s| s.what.clone()).unwrap_or_default(),
                error,
                completed,
            };
        }
    }
    Outcome::Interrupted { completed }
}
