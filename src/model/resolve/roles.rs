//! Stage 4: each role under roles/, checked once, however many hosts use it:
//! its files, paths, packages, services, accounts, firewall, sysctl, host
//! settings, commands, stacks and handlers.

use super::templates::is_template;
use super::*;

impl Loader<'_> {
    pub(super) fn role(
        &mut self,
        file: &str,
        r: raw::RoleFile,
        secrets: &BTreeSet<String>,
    ) -> RoleDef {
        let mut items = Vec::new();
        self.role_files(file, &r, secrets, &mut items);
        self.role_paths(file, &r, &mut items);
        self.role_software(file, &r, &mut items);
        self.role_accounts(file, &r, &mut items);
        let firewall = r.firewall.as_ref().map(|fw| self.role_firewall(file, fw));
        self.role_settings(file, &r, &mut items);
        for s in &r.stacks {
            items.extend(self.role_stack(file, s));
        }
        self.role_schedules(file, &r, &mut items);
        for a in &r.apt_repositories {
            items.extend(
                self.role_apt_repo(file, a)
                    .map(|a| Item::Ready(Resource::AptRepo(a))),
            );
        }
        for m in &r.mounts {
            items.extend(
                self.role_mount(file, m)
                    .map(|m| Item::Ready(Resource::Mount(m))),
            );
        }
        let handlers = self.role_handlers(file, &r);
        RoleDef {
            vars: r.vars,
            items,
            handlers,
            firewall,
        }
    }

    /// `files:` — exactly one source each: inline content, a file under
    /// files/, a template (rendered per host) or a secret.
    fn role_files(
        &mut self,
        file: &str,
        r: &raw::RoleFile,
        secrets: &BTreeSet<String>,
        items: &mut Vec<Item>,
    ) {
        for f in &r.files {
            self.host_path(file, &f.path);
            let o = at(file, &f.path);
            let sources = [
                f.content.is_some(),
                f.source.is_some(),
                f.template.is_some(),
                f.secret.is_some(),
            ];
            if sources.iter().filter(|b| **b).count() != 1 {
                self.err(o.error("file-content", format!("file {} needs exactly one of content, source, template, secret", f.path.value))
                    .with_help("content: inline text; source: a file under files/; template: a minijinja template under templates/; secret: a secret under secrets/"));
                continue;
            }
            let mode = self.mode(file, &f.mode);
            self.account(file, &f.owner);
            self.account(file, &f.group);
            if let Some(v) = &f.validate
                && !v.value.contains("%s")
            {
                self.err(
                    at(file, v)
                        .error(
                            "invalid-value",
                            "validate command must contain %s (the candidate file's path)",
                        )
                        .with_help("e.g. validate: \"sshd -t -f %s\""),
                );
            }
            self.lockout_ok(file, &f.lockout_ok);
            let secret = f.secret.is_some();
            let sensitive = f.sensitive.as_ref().map(|s| s.value).unwrap_or(false) || secret;
            let made = items.len();
            let mut base = FileResource {
                path: f.path.value.clone(),
                content: Content {
                    bytes: Vec::new(),
                    sensitive,
                },
                // Secret-bearing files default to owner-only.
                mode: mode.or(if secret { Some(0o600) } else { None }),
                owner: opt(&f.owner),
                group: opt(&f.group),
                validate: opt(&f.validate),
                notify: f.notify.iter().map(|n| n.value.clone()).collect(),
                lockout_ok: opt(&f.lockout_ok),
                origin: o.clone(),
            };
            if let Some(c) = &f.content {
                base.content.bytes = c.value.clone().into_bytes();
                items.push(Item::Ready(Resource::File(base)));
            } else if let Some(s) = &f.source {
                if let Some(full) = self.repo_file(file, s, "files", "source") {
                    base.content.bytes = self.tree.file(&full).unwrap_or_default().to_vec();
                    items.push(Item::Ready(Resource::File(base)));
                }
            } else if let Some(t) = &f.template {
                if self.repo_file(file, t, "templates", "template").is_some() {
                    items.push(Item::Template {
                        base,
                        template: t.value.clone(),
                    });
                }
            } else if let Some(s) = &f.secret
                && self.use_secret(file, s, secrets)
            {
                base.content.bytes = match self.plain.get(&s.value) {
                    Some(p) => p.clone().into_bytes(),
                    None => SENSITIVE.as_bytes().to_vec(),
                };
                items.push(Item::Ready(Resource::File(base)));
            }
            if let Some(w) = &f.when
                && items.len() > made
            {
                let item = items.pop().expect("an item was just made");
                items.push(Item::When {
                    condition: w.value.clone(),
                    origin: at(file, w),
                    item: Box::new(item),
                });
            }
        }
    }

    /// `directories:`, `symlinks:` and `absent:`.
    fn role_paths(&mut self, file: &str, r: &raw::RoleFile, items: &mut Vec<Item>) {
        for d in &r.directories {
            self.host_path(file, &d.path);
            let mode = self.mode(file, &d.mode);
            self.account(file, &d.owner);
            self.account(file, &d.group);
            items.push(Item::Ready(Resource::Directory(DirectoryResource {
                path: d.path.value.clone(),
                mode,
                owner: opt(&d.owner),
                group: opt(&d.group),
                origin: at(file, &d.path),
            })));
        }
        for s in &r.symlinks {
            self.host_path(file, &s.path);
            if s.target.value.is_empty() {
                self.err(at(file, &s.target).error("invalid-value", "symlink target is empty"));
            }
            items.push(Item::Ready(Resource::Symlink {
                path: s.path.value.clone(),
                target: s.target.value.clone(),
                origin: at(file, &s.path),
            }));
        }
        for a in &r.absent {
            self.host_path(file, a);
            items.push(Item::Ready(Resource::Absent {
                path: a.value.clone(),
                origin: at(file, a),
            }));
        }
    }

    /// `packages:` and `services:`.
    fn role_software(&mut self, file: &str, r: &raw::RoleFile, items: &mut Vec<Item>) {
        for (list, state) in [
            (&r.packages.present, PackageState::Present),
            (&r.packages.latest, PackageState::Latest),
            (&r.packages.absent, PackageState::Absent),
        ] {
            for p in list {
                if let Err(e) = check::package_name(&p.value) {
                    self.err(at(file, p).error("invalid-name", e));
                    continue;
                }
                items.push(Item::Ready(Resource::Package {
                    name: p.value.clone(),
                    state,
                    origin: at(file, p),
                }));
            }
        }
        for s in &r.services {
            if let Err(e) = check::unit_name(&s.name.value) {
                self.err(at(file, &s.name).error("invalid-name", e));
            }
            items.push(Item::Ready(Resource::Service(ServiceResource {
                name: s.name.value.clone(),
                enabled: s.enabled.as_ref().map(|e| e.value),
                state: s.state.as_ref().map(|e| e.value),
                origin: at(file, &s.name),
            })));
        }
    }

    /// `groups:` and `users:`.
    fn role_accounts(&mut self, file: &str, r: &raw::RoleFile, items: &mut Vec<Item>) {
        for g in &r.groups {
            self.account(file, &Some(clone_s(&g.name)));
            items.push(Item::Ready(Resource::Group {
                name: g.name.value.clone(),
                gid: g.gid.as_ref().map(|g| g.value),
                origin: at(file, &g.name),
            }));
        }
        for u in &r.users {
            self.account(file, &Some(clone_s(&u.name)));
            for g in &u.groups {
                self.account(file, &Some(clone_s(g)));
            }
            for p in [&u.home, &u.shell].into_iter().flatten() {
                self.host_path(file, p);
            }
            for k in &u.authorized_keys {
                if let Err(e) = check::public_key(&k.value) {
                    self.err(at(file, k).error("invalid-key", format!("authorized key: {e}")));
                }
            }
            items.push(Item::Ready(Resource::User(UserResource {
                name: u.name.value.clone(),
                uid: u.uid.as_ref().map(|v| v.value),
                groups: u.groups.iter().map(|g| g.value.clone()).collect(),
                shell: opt(&u.shell),
                home: opt(&u.home),
                system: u.system.as_ref().map(|v| v.value).unwrap_or(false),
                authorized_keys: u
                    .authorized_keys
                    .iter()
                    .map(|k| k.value.trim().to_string())
                    .collect(),
                origin: at(file, &u.name),
            })));
        }
    }

    /// `lockout_ok:` says why a lockout risk is acceptable: an empty one
    /// says nothing.
    pub(super) fn lockout_ok(&mut self, file: &str, ack: &Option<S<String>>) {
        if let Some(a) = ack
            && a.value.trim().is_empty()
        {
            self.err(
                at(file, a)
                    .error(
                        "invalid-value",
                        "lockout_ok needs the reason the risk is acceptable",
                    )
                    .with_help("e.g. lockout_ok: \"console access through the provider\""),
            );
        }
    }

    /// `firewall:` — the role's rules, and its default policies where it
    /// sets them.
    fn role_firewall(&mut self, file: &str, fw: &raw::FirewallSpec) -> RoleFirewall {
        let mut rules = Vec::new();
        for rule in &fw.rules {
            let o = [rule.port.as_ref(), rule.from.as_ref()]
                .into_iter()
                .flatten()
                .next()
                .map(|v| at(file, v));
            let o = o
                .or_else(|| rule.action.as_ref().map(|a| at(file, a)))
                .unwrap_or_else(|| Origin::file(file));
            if rule.port.is_none() && rule.from.is_none() {
                self.err(o.error(
                    "invalid-rule",
                    "a firewall rule needs `port`, `from`, or both",
                ));
                continue;
            }
            let mut fr = FirewallRule {
                action: rule
                    .action
                    .as_ref()
                    .map(|a| a.value)
                    .unwrap_or(RuleAction::Allow),
                from_port: None,
                to_port: None,
                proto: opt(&rule.proto).unwrap_or_else(|| {
                    if rule.port.is_some() {
                        "tcp".into()
                    } else {
                        "any".into()
                    }
                }),
                from: opt(&rule.from).unwrap_or_else(|| "any".into()),
                interface: opt(&rule.interface),
                comment: opt(&rule.comment),
            };
            if let Some(i) = &rule.interface
                && let Err(e) = check::interface(&i.value)
            {
                self.err(at(file, i).error("invalid-value", e));
            }
            self.lockout_ok(file, &rule.lockout_ok);
            if let Some(p) = &rule.port {
                match check::port_spec(&p.value) {
                    Ok((a, b)) => (fr.from_port, fr.to_port) = (Some(a), Some(b)),
                    Err(e) => self.err(at(file, p).error("invalid-port", e)),
                }
            }
            if let Some(p) = &rule.proto
                && let Err(e) = check::proto(&p.value)
            {
                self.err(at(file, p).error("invalid-value", e));
            }
            // `from` may be a template such as "{{ ssh_allow_from }}"; it is checked per host.
            if let Some(c) = &rule.from
                && !is_template(&c.value)
                && let Err(e) = check::cidr(&c.value)
            {
                self.err(at(file, c).error("invalid-cidr", e));
            }
            let site = RuleSite {
                origin: rule
                    .interface
                    .as_ref()
                    .map(|i| at(file, i))
                    .unwrap_or(o.clone()),
                lockout_ok: opt(&rule.lockout_ok),
            };
            let from_at = rule.from.as_ref().map(|c| at(file, c)).unwrap_or(o);
            rules.push((fr, from_at, site));
        }
        let origin = fw
            .incoming
            .as_ref()
            .map(|p| at(file, p))
            .unwrap_or_else(|| Origin::file(file));
        RoleFirewall {
            incoming: fw.incoming.as_ref().map(|p| p.value),
            outgoing: fw.outgoing.as_ref().map(|p| p.value),
            routed: fw.routed.as_ref().map(|p| p.value),
            metadata_from_containers: fw.metadata_from_containers.as_ref().map(|p| p.value),
            rules,
            origin,
        }
    }

    /// `sysctl:`, `settings:` and `commands:`.
    fn role_settings(&mut self, file: &str, r: &raw::RoleFile, items: &mut Vec<Item>) {
        // A setting's value reaches the host's shell as one word; which
        // names there are, the engine's kinds say.
        for (name, value) in &r.settings {
            let named = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !named {
                self.err(at(file, value).error(
                    "invalid-name",
                    format!("{name:?} is not a setting name (lowercase letters, digits and _)"),
                ));
            }
            if let Err(e) = check::shell_word("setting", &value.value) {
                self.err(at(file, value).error("invalid-value", e));
            }
            items.push(Item::Ready(Resource::Setting {
                name: name.clone(),
                value: value.value.clone(),
                origin: at(file, value),
            }));
        }
        for (key, value) in &r.sysctl {
            let ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !ok {
                self.err(at(file, value).error(
                    "invalid-name",
                    format!("{key:?} is not a sysctl key such as net.ipv4.ip_forward"),
                ));
            }
            items.push(Item::Ready(Resource::Sysctl {
                key: key.clone(),
                value: value.value.clone(),
                origin: at(file, value),
            }));
        }
        for c in &r.commands {
            let timeout = match &c.timeout {
                Some(t) => match check::duration(&t.value) {
                    Ok(d) => d.as_secs().max(1),
                    Err(e) => {
                        self.err(at(file, t).error("invalid-duration", e));
                        0
                    }
                },
                None => 600,
            };
            if let Some(p) = &c.creates {
                self.host_path(file, p);
            }
            if let Err(e) = check::shell_word("command", &c.name.value) {
                self.err(at(file, &c.name).error("invalid-name", e));
            }
            if c.run.value.trim().is_empty() {
                self.err(at(file, &c.run).error("invalid-value", "command `run` is empty"));
            }
            items.push(Item::Ready(Resource::Command(CommandResource {
                name: c.name.value.clone(),
                run: c.run.value.clone(),
                creates: opt(&c.creates),
                unless: opt(&c.unless),
                onlyif: opt(&c.onlyif),
                timeout_secs: timeout,
                notify: c.notify.iter().map(|n| n.value.clone()).collect(),
                origin: at(file, &c.name),
            })));
        }
    }

    /// One of `stacks:`: a directory stacks/NAME/ of the config repo with a
    /// compose file, deployed to the host with its health gates.
    fn role_stack(&mut self, file: &str, s: &raw::StackSpec) -> Option<Item> {
        let dir = format!("stacks/{}", s.name.value);
        if let Err(e) = check::repo_relative(&s.name.value).and_then(|_| {
            if s.name.value.contains('/') {
                Err(format!(
                    "{:?} must be a single directory name",
                    s.name.value
                ))
            } else {
                Ok(())
            }
        }) {
            self.err(at(file, &s.name).error("path-escape", format!("stack: {e}")));
            return None;
        }
        if !self.tree.has_dir(&dir) {
            self.err(
                at(file, &s.name)
                    .error(
                        "not-found",
                        format!(
                            "stack {:?} has no directory {dir}/ in the config repo",
                            s.name.value
                        ),
                    )
                    .with_help(format!("add {dir}/compose.yaml")),
            );
            return None;
        }
        // Any of compose's own names, or one of them as a template.
        let has_compose = COMPOSE_FILES.iter().any(|f| {
            self.tree.file(&format!("{dir}/{f}")).is_some()
                || self.tree.file(&format!("{dir}/{f}.j2")).is_some()
        });
        if !has_compose {
            self.err(at(file, &s.name).error(
                "not-found",
                format!("stack directory {dir}/ has no compose.yaml"),
            ));
        }
        let target = opt(&s.dir).unwrap_or_else(|| format!("/opt/stacks/{}", s.name.value));
        if let Some(d) = &s.dir {
            self.host_path(file, d);
        }
        let mut files = BTreeMap::new();
        let entries: Vec<(String, Entry)> = self
            .tree
            .under(&dir)
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect();
        for (p, e) in entries {
            let rel = p[dir.len() + 1..].to_string();
            // The name reaches the plan and apply scripts on the host.
            if let Err(e) = check::host_path(&format!("{target}/{rel}")) {
                self.err(
                    Origin::file(&p)
                        .error("invalid-name", format!("stack file: {e}"))
                        .with_help("rename the file in the config repo"),
                );
                return None;
            }
            match e {
                    Entry::File { bytes, .. } => {
                        files.insert(rel, Content { bytes, sensitive: false });
                    }
                    Entry::Symlink(t) => self.err(Origin::file(&p).error("symlink", format!("{p} is a symlink (to {t:?})"))
                        .with_help("tidekeeper never follows symlinks in the config repo; commit the file itself")),
                    Entry::TooLarge(n) => self.err(too_large(&p, n as usize)),
                    Entry::Submodule => {}
                }
        }
        let health = self.health_checks(file, &at(file, &s.name), &s.health, Some(&s.name.value));
        // How long the gates may take to pass after `up`: the longest `timeout` given.
        let mut given: Option<u64> = None;
        for t in s.health.iter().filter_map(|h| h.timeout.as_ref()) {
            match check::duration(&t.value) {
                Ok(d) => given = Some(given.unwrap_or(0).max(d.as_secs().max(1))),
                Err(e) => self.err(at(file, t).error("invalid-duration", e)),
            }
        }
        let health_timeout_secs = given.unwrap_or(120);
        Some(Item::Stack {
            base: Stack {
                name: s.name.value.clone(),
                dir: target,
                files,
                health,
                health_timeout_secs,
                origin: at(file, &s.name),
            },
        })
    }

    /// One of `mounts:`: a mount point tidekeeper may take (never a system
    /// directory, whose contents the host needs), and fstab fields without
    /// blanks (fstab separates fields by them).
    fn role_mount(&mut self, file: &str, m: &raw::MountSpec) -> Option<MountResource> {
        self.host_path(file, &m.path);
        let path = m.path.value.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        // fstab separates its fields by blanks: a blank in the mount point
        // would make the line say something else.
        if path.contains(|c: char| c.is_whitespace() || c == '\\' || c == '#') {
            self.err(at(file, &m.path).error(
                "invalid-value",
                format!("mount point {path:?} must be one word without blanks, \\ or #"),
            ));
            return None;
        }
        const SYSTEM: [&str; 11] = [
            "/",
            "/etc",
            "/usr",
            "/boot",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/var",
            "/var/lib",
            "/var/lib/tidekeeper",
        ];
        let under = |dir: &str| path.starts_with(&format!("{dir}/"));
        if SYSTEM.contains(&path)
            || ["/proc", "/sys", "/dev", "/run", "/etc", "/usr"]
                .iter()
                .any(|d| under(d))
        {
            self.err(
                at(file, &m.path)
                    .error(
                        "invalid-value",
                        format!("{path} is a system directory; tidekeeper will not mount over it"),
                    )
                    .with_help(
                        "mount data under a directory of its own, e.g. /srv/data or /mnt/backup",
                    ),
            );
            return None;
        }
        let state = m.state.as_ref().map(|s| s.value).unwrap_or_default();
        let mut field = |v: Option<&S<String>>, what: &str, default: Option<&str>| -> String {
            match (v, default) {
                (Some(v), _) => {
                    if v.value.is_empty()
                        || v.value
                            .contains(|c: char| c.is_whitespace() || c == '\\' || c == '#')
                    {
                        self.err(at(file, v).error(
                            "invalid-value",
                            format!(
                                "mount {what} {:?} must be one word without blanks, \\ or #",
                                v.value
                            ),
                        ));
                    }
                    v.value.clone()
                }
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    if state != MountState::Absent {
                        self.err(
                            at(file, &m.path)
                                .error("missing-key", format!("mount {path} needs `{what}`"))
                                .with_help("e.g. device: UUID=… (see blkid), fstype: ext4"),
                        );
                    }
                    String::new()
                }
            }
        };
        let device = field(m.device.as_ref(), "device", None);
        let fstype = field(m.fstype.as_ref(), "fstype", None);
        let options = field(m.options.as_ref(), "options", Some("defaults"));
        Some(MountResource {
            path: path.to_string(),
            device,
            fstype,
            options,
            state,
            origin: at(file, &m.path),
        })
    }

    /// One of `apt_repositories:`: URIs APT can fetch, words without
    /// blanks (deb822 separates values by them), a flat repository's suite
    /// ending in `/`, and the key a file of the config repo.
    fn role_apt_repo(&mut self, file: &str, a: &raw::AptRepoSpec) -> Option<AptRepoResource> {
        let o = at(file, &a.name);
        if let Err(e) = check::schedule_name("apt repository", &a.name.value) {
            self.err(o.error("invalid-name", e));
        }
        let mut words = |list: &[S<String>], what: &str, required: bool| -> Vec<String> {
            if required && list.is_empty() {
                self.err(o.error(
                    "missing-key",
                    format!("apt repository {:?} needs `{what}`", a.name.value),
                ));
            }
            for v in list {
                if v.value.is_empty()
                    || v.value
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '#')
                {
                    self.err(at(file, v).error(
                        "invalid-value",
                        format!("{what} {:?} must be one word", v.value),
                    ));
                }
            }
            list.iter().map(|v| v.value.clone()).collect()
        };
        let uris = words(&a.uris, "uris", true);
        let suites = words(&a.suites, "suites", true);
        let components = words(&a.components, "components", false);
        let architectures = words(&a.architectures, "architectures", false);
        for u in &a.uris {
            if !["https://", "http://", "file:", "mirror+", "tor+"]
                .iter()
                .any(|p| u.value.starts_with(p))
            {
                self.err(at(file, u).error(
                    "invalid-value",
                    format!(
                        "{:?} is not a URI APT fetches (https://, http://, file:)",
                        u.value
                    ),
                ));
            }
        }
        if components.is_empty() && suites.iter().any(|s| !s.ends_with('/')) {
            self.err(o.error("missing-key", format!("apt repository {:?} needs `components`, or suites ending in / (a flat repository)", a.name.value)));
        }
        let key = match &a.key {
            Some(k) => {
                let full = self.repo_file(file, k, "files", "key")?;
                Some(Content {
                    bytes: self.tree.file(&full).unwrap_or_default().to_vec(),
                    sensitive: false,
                })
            }
            None => None,
        };
        Some(AptRepoResource {
            name: a.name.value.clone(),
            uris,
            suites,
            components,
            architectures,
            key,
            trusted: a.trusted.as_ref().is_some_and(|t| t.value),
            origin: o,
        })
    }

    /// `timers:` and `cron:` — commands on a schedule.
    fn role_schedules(&mut self, file: &str, r: &raw::RoleFile, items: &mut Vec<Item>) {
        for t in &r.timers {
            if let Some(timer) = self.role_timer(file, t) {
                items.push(Item::Ready(Resource::Timer(timer)));
            }
        }
        for c in &r.cron {
            let o = at(file, &c.name);
            if let Err(e) = check::schedule_name("cron", &c.name.value) {
                self.err(o.error("invalid-name", e));
            }
            if let Err(e) = cron_schedule(&c.schedule.value) {
                self.err(at(file, &c.schedule).error("invalid-cron", e));
            }
            self.account(file, &c.user);
            self.command_text(file, &c.run, true);
            items.push(Item::Ready(Resource::Cron(CronResource {
                name: c.name.value.clone(),
                schedule: c
                    .schedule
                    .value
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                user: opt(&c.user).unwrap_or_else(|| "root".into()),
                run: c.run.value.clone(),
                origin: o,
            })));
        }
    }

    /// One timer: exactly one of `on_calendar` and `cron` (translated), an
    /// optional zone, user, time limit.
    fn role_timer(&mut self, file: &str, t: &raw::TimerSpec) -> Option<TimerResource> {
        let o = at(file, &t.name);
        if let Err(e) = check::schedule_name("timer", &t.name.value) {
            self.err(o.error("invalid-name", e));
        }
        self.account(file, &t.user);
        self.command_text(file, &t.run, false);
        let mut on_calendar = match (&t.on_calendar, &t.cron) {
            (Some(c), None) => {
                let v = c.value.trim();
                if v.is_empty() || v.chars().any(char::is_control) {
                    self.err(at(file, c).error(
                        "invalid-value",
                        "on_calendar must be one systemd calendar expression, e.g. \"Mon..Fri 03:00\"",
                    ));
                }
                vec![v.to_string()]
            }
            (None, Some(c)) => match cron_schedule(&c.value)
                .and_then(|_| crate::schedule::cron_to_on_calendar(&c.value))
            {
                Ok(lines) => lines,
                Err(e) => {
                    self.err(at(file, c).error("invalid-cron", e));
                    return None;
                }
            },
            _ => {
                self.err(o.error(
                    "invalid-timer",
                    format!("timer {:?} needs exactly one of on_calendar, cron", t.name.value),
                ).with_help("on_calendar: a systemd calendar expression (\"*-*-* 03:30\"); cron: five cron fields (\"30 3 * * *\")"));
                return None;
            }
        };
        if let Some(tz) = &t.timezone {
            match crate::schedule::parse_tz(&tz.value) {
                Ok(_) => on_calendar
                    .iter_mut()
                    .for_each(|l| *l = format!("{l} {}", tz.value)),
                Err(e) => self.err(at(file, tz).error("invalid-timezone", e)),
            }
        }
        let timeout_secs = match &t.timeout {
            Some(v) => match check::duration(&v.value) {
                Ok(d) => d.as_secs().max(1),
                Err(e) => {
                    self.err(at(file, v).error("invalid-duration", e));
                    3600
                }
            },
            None => 3600,
        };
        Some(TimerResource {
            name: t.name.value.clone(),
            on_calendar,
            run: t.run.value.clone(),
            user: opt(&t.user),
            timeout_secs,
            persistent: t.persistent.as_ref().is_none_or(|p| p.value),
            origin: o,
        })
    }

    /// A command a timer or cron entry runs: not empty; for cron one line
    /// (a newline would start an entry of its own in the crontab).
    fn command_text(&mut self, file: &str, run: &S<String>, one_line: bool) {
        if run.value.trim().is_empty() {
            self.err(at(file, run).error("invalid-value", "`run` is empty"));
        } else if one_line && run.value.chars().any(char::is_control) {
            self.err(
                at(file, run)
                    .error(
                        "invalid-value",
                        "a cron command must be one line without control characters",
                    )
                    .with_help("put a longer script in a file and run that, or use `timers:`"),
            );
        }
    }

    /// `handlers:` — each exactly one of restart, reload, run.
    fn role_handlers(&mut self, file: &str, r: &raw::RoleFile) -> Vec<Handler> {
        let mut handlers = Vec::new();
        for h in &r.handlers {
            let actions: Vec<HandlerAction> = [
                h.restart
                    .as_ref()
                    .map(|v| HandlerAction::Restart(v.value.clone())),
                h.reload
                    .as_ref()
                    .map(|v| HandlerAction::Reload(v.value.clone())),
                h.run.as_ref().map(|v| HandlerAction::Run(v.value.clone())),
            ]
            .into_iter()
            .flatten()
            .collect();
            for u in [&h.restart, &h.reload].into_iter().flatten() {
                if let Err(e) = check::unit_name(&u.value) {
                    self.err(at(file, u).error("invalid-name", e));
                }
            }
            if let Err(e) = check::shell_word("handler", &h.name.value) {
                self.err(at(file, &h.name).error("invalid-name", e));
            }
            if actions.len() != 1 {
                self.err(at(file, &h.name).error(
                    "invalid-handler",
                    format!(
                        "handler {:?} needs exactly one of restart, reload, run",
                        h.name.value
                    ),
                ));
                continue;
            }
            handlers.push(Handler {
                name: h.name.value.clone(),
                action: actions.into_iter().next().unwrap(),
                origin: at(file, &h.name),
            });
        }
        handlers
    }

    /// Check that `rel` names a regular file inside `dir/` of the repo.
    pub(super) fn repo_file(
        &mut self,
        file: &str,
        s: &S<String>,
        dir: &str,
        what: &str,
    ) -> Option<String> {
        let o = at(file, s);
        if let Err(e) = check::repo_relative(&s.value) {
            self.err(o.error("path-escape", format!("{what}: {e}")));
            return None;
        }
        let full = format!("{dir}/{}", s.value);
        if let Some((link, target)) = self.tree.symlink_on_path(&full) {
            let (link, target) = (link.to_string(), target.to_string());
            self.err(
                o.error(
                    "symlink",
                    format!("{what} {full} goes through the symlink {link} (to {target:?})"),
                )
                .with_help(
                    "tidekeeper never follows symlinks in the config repo; commit the file itself",
                ),
            );
            return None;
        }
        match self.tree.get(&full) {
            Some(Entry::File { .. }) => Some(full),
            Some(Entry::TooLarge(n)) => {
                let n = *n;
                self.err(o.error(
                    "file-too-large",
                    format!(
                        "{full} is {n} bytes; managed files may be at most {} bytes",
                        crate::source::MAX_FILE_BYTES
                    ),
                ));
                None
            }
            _ => {
                let d = o.error(
                    "not-found",
                    format!("{what} {full} does not exist in the config repo"),
                );
                let d = match self.tree.has_dir(&full) {
                    true => d.with_help(format!("{full} is a directory; name a file")),
                    false => d.with_help(format!(
                        "add the file under {dir}/ and commit it, or fix the path"
                    )),
                };
                self.err(d);
                None
            }
        }
    }
}

/// Five cron fields, as cron itself reads them.
fn cron_schedule(expr: &str) -> Result<(), String> {
    if expr.split_whitespace().count() != 5 || expr.trim_start().starts_with('@') {
        return Err(format!(
            "{expr:?} must be five cron fields (minute hour day-of-month month day-of-week), e.g. \"30 3 * * *\""
        ));
    }
    crate::schedule::parse_cron(expr).map(|_| ())
}
