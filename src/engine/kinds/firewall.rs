//! `firewall:` — ufw. Observed from `ufw show added`, its defaults (the
//! routed one only managed when stated) and its ENABLED setting; rules (on
//! an interface too: `in on IFACE`) added before the defaults are set and
//! the firewall enabled, so SSH is allowed before a default deny. Every firewall change
//! is guarded by the lockout rollback. Rules in forms tidekeeper does not
//! write are left in place and reported.

use super::Need;
use super::{ApplyCx, Change, Kind, PlanCx, ProbeCx, ReadCx, Saves, each, step};
use crate::change::ResourceKind;
use crate::change::{Action, Attr};
use crate::engine::item::Item;
use crate::engine::observed::FirewallState;
use crate::engine::observed::Observed;
use crate::engine::sh::{Tag, Word, cmd};
use crate::model::desired::{Firewall as Rules, FirewallRule, Policy, RuleAction};

/// Probe: when ufw is installed, a [`Tag::Ufw`] record, its rules as
/// [`Tag::UfwRule`] records, its default policies and its ENABLED setting.
pub(crate) fn probe(items: &[Item], root: &str) -> String {
    let Some(fw) = items.iter().find_map(|i| match i {
        Item::Firewall(fw) => Some(fw),
        _ => None,
    }) else {
        return String::new();
    };
    let containers = if fw.docker {
        super::containers::probe()
    } else {
        String::new()
    };
    containers
        + &format!(
        "if command -v ufw >/dev/null; then printf '{ufw}\\tinstalled\\n'; \
         ufw show added | sed '1d;s/^/{rule}\\t/'; \
         sed -n 's/^DEFAULT_\\(INPUT\\|OUTPUT\\|FORWARD\\)_POLICY=\"\\(.*\\)\"/{policy}\\t\\1\\t\\2/p' {defaults}; \
         sed -n 's/^ENABLED=\\(.*\\)/{enabled}\\t\\1/p' {conf}; fi\n",
        defaults = Word::quoted(&format!("{root}/etc/default/ufw")),
        conf = Word::quoted(&format!("{root}/etc/ufw/ufw.conf")),
        ufw = Tag::Ufw,
        rule = Tag::UfwRule,
        policy = Tag::UfwPolicy,
        enabled = Tag::UfwEnabled,
    )
}

/// Reads the ufw records back.
#[derive(Debug, Default)]
pub(crate) struct Ufw {
    seen: bool,
    state: FirewallState,
}

impl Ufw {
    /// One record with its tag. `Err` for a policy record that is garbled.
    pub(crate) fn record(&mut self, tag: Tag, record: &str) -> Result<(), super::Garbled> {
        let fw = &mut self.state;
        match tag {
            Tag::Ufw => self.seen = true,
            Tag::UfwRule if record.trim() == "(None)" => {}
            Tag::UfwRule => match parse_rule(record) {
                Some(r) => fw.rules.push(r),
                None => fw.foreign.push(record.to_string()),
            },
            Tag::UfwPolicy => {
                let (which, policy) = record.split_once('\t').ok_or(super::Garbled)?;
                let word = match policy {
                    "ACCEPT" => "allow",
                    "DROP" => "deny",
                    "REJECT" => "reject",
                    other => other,
                }
                .to_string();
                match which {
                    "INPUT" => fw.incoming = word,
                    "FORWARD" => fw.routed = word,
                    _ => fw.outgoing = word,
                }
            }
            Tag::UfwEnabled => fw.enabled = record.trim() == "yes",
            Tag::ContainerRule => fw.containers.push(record.trim_end().to_string()),
            _ => {}
        }
        Ok(())
    }

    /// The firewall, if ufw is installed.
    pub(crate) fn finish(self) -> Option<FirewallState> {
        self.seen.then_some(self.state)
    }
}

/// What the firewall needs: ufw installed with all rules, or the rules
/// added and removed and the defaults set; plus warnings for rules in
/// forms tidekeeper does not write.
pub(crate) fn plan(fw: &Rules, have: Option<&FirewallState>) -> (Option<Need>, Vec<String>) {
    let want: Vec<String> = fw.rules.iter().map(rule_args).collect();
    let (incoming, outgoing) = (policy_word(fw.incoming), policy_word(fw.outgoing));
    let Some(o) = have else {
        let mut need = Need::new(Action::Create)
            .attr("incoming", None, Some(incoming.into()))
            .attr("outgoing", None, Some(outgoing.into()));
        if let Some(r) = fw.routed {
            need = need.attr("routed", None, Some(policy_word(r).into()));
        }
        for r in &want {
            need = need.attr("rule", None, Some(r.clone()));
        }
        if fw.docker {
            for l in super::containers::lines(fw) {
                need = need.attr(CONTAINER_RULE, None, Some(l));
            }
        }
        return (Some(need.note("installs ufw")), vec![]);
    };
    let mut need = Need::new(Action::Update);
    let have: Vec<String> = o.rules.iter().map(rule_args).collect();
    for r in want.iter().filter(|r| !have.contains(r)) {
        need = need.attr("rule", None, Some(r.clone()));
    }
    for r in have.iter().filter(|r| !want.contains(r)) {
        need = need.attr("rule", Some(r.clone()), None);
    }
    if o.incoming != incoming {
        need = need.attr("incoming", Some(o.incoming.clone()), Some(incoming.into()));
    }
    if o.outgoing != outgoing {
        need = need.attr("outgoing", Some(o.outgoing.clone()), Some(outgoing.into()));
    }
    // Unset: forwarding is not managed, whatever the host has.
    if let Some(r) = fw.routed.map(policy_word)
        && o.routed != r
    {
        need = need.attr("routed", Some(o.routed.clone()), Some(r.into()));
    }
    if !o.enabled {
        need = need.attr("enabled", Some("no".into()), Some("yes".into()));
    }
    if fw.docker {
        need = container_rules(need, &super::containers::lines(fw), &o.containers);
    }
    let warnings = o
        .foreign
        .iter()
        .map(|f| format!("ufw rule not written by tidekeeper left in place: {f}"))
        .collect();
    (need.if_any(), warnings)
}

/// The plan's name for a rule of the chains that filter containers' traffic.
const CONTAINER_RULE: &str = "container rule";

/// What the chains that filter containers' traffic lack or have too much
/// (or, with the same rules, their order).
fn container_rules(mut need: Need, want: &[String], have: &[String]) -> Need {
    if want == have {
        return need;
    }
    let before = need.attrs.len();
    for l in want.iter().filter(|l| !have.contains(l)) {
        need = need.attr(CONTAINER_RULE, None, Some(l.clone()));
    }
    for l in have.iter().filter(|l| !want.contains(l)) {
        need = need.attr(CONTAINER_RULE, Some(l.clone()), None);
    }
    if need.attrs.len() == before {
        need = need.attr(
            "container rules",
            Some("in another order".into()),
            Some("in the config's order".into()),
        );
    }
    need
}

/// Apply: allow rules first (so SSH is in force before a default deny),
/// then removals, the defaults, and enable; then the rules for containers.
pub(crate) fn apply(fw: &Rules, action: Action, attrs: &[Attr]) -> String {
    let ufw = |words: Vec<String>| cmd("ufw").args(words).quiet().step();
    let mut body = String::new();
    for r in &fw.rules {
        let shown = rule_args(r);
        let added = attrs
            .iter()
            .any(|a| a.name == "rule" && a.before.is_none() && a.after.as_deref() == Some(&shown));
        if action == Action::Create || added {
            body.push_str(&ufw(rule_words(r)));
        }
    }
    for a in attrs {
        if a.name == "rule"
            && let (Some(shown), None) = (&a.before, &a.after)
            && let Some(r) = parse_rule(&format!("ufw {shown}"))
        {
            let mut words = vec!["delete".to_string()];
            words.extend(rule_words(&r));
            body.push_str(&ufw(words));
        }
    }
    let routed = fw.routed.map(|r| (r, "routed"));
    for (policy, direction) in [(fw.incoming, "incoming"), (fw.outgoing, "outgoing")]
        .into_iter()
        .chain(routed)
    {
        body.push_str(
            &cmd("ufw")
                .lit("default")
                .lit(policy_word(policy))
                .lit(direction)
                .quiet()
                .step(),
        );
    }
    body.push_str(&cmd("ufw").lit("--force").lit("enable").quiet().step());
    if fw.docker && attrs.iter().any(|a| a.name.starts_with("container rule")) {
        body.push_str(&format!("{} || return\n", super::containers::load()));
    }
    body
}

/// Every firewall change can cut tidekeeper off.
pub(crate) fn is_risky() -> bool {
    true
}

/// ufw shows a single-host network (`/32`, `/128`) as the bare address:
/// write it that way so what is written and what is read back compare equal.
fn ufw_source(from: &str) -> &str {
    match from.rsplit_once('/') {
        Some((addr, "32")) if addr.contains('.') => addr,
        Some((addr, "128")) if addr.contains(':') => addr,
        _ => from,
    }
}

/// A rule as the words of its `ufw` command (minus `ufw`), in the form
/// `ufw show added` prints it back.
pub(crate) fn rule_words(r: &FirewallRule) -> Vec<String> {
    let mut w = rule_core(r);
    if let Some(c) = &r.comment {
        w.extend(["comment".into(), c.replace('\'', "")]);
    }
    w
}

/// A rule as `ufw show added` prints it (minus `ufw `): how rules are
/// compared and shown in plans.
pub(crate) fn rule_args(r: &FirewallRule) -> String {
    let mut s = rule_core(r).join(" ");
    if let Some(c) = &r.comment {
        s.push_str(&format!(" comment '{}'", c.replace('\'', "")));
    }
    s
}

fn rule_core(r: &FirewallRule) -> Vec<String> {
    let action = match r.action {
        RuleAction::Allow => "allow",
        RuleAction::Deny => "deny",
        RuleAction::Reject => "reject",
        RuleAction::Limit => "limit",
    };
    let port = match (r.from_port, r.to_port) {
        (Some(a), Some(b)) if a != b => Some(format!("{a}:{b}")),
        (Some(a), _) => Some(a.to_string()),
        _ => None,
    };
    let mut w: Vec<String> = vec![action.into()];
    if let Some(iface) = &r.interface {
        // ufw shows a rule on an interface in its full form only, and
        // `to any` when nothing else follows the interface.
        w.extend(["in".into(), "on".into(), iface.clone()]);
        if r.from != "any" {
            w.extend(["from".into(), ufw_source(&r.from).to_string()]);
        }
        match port {
            Some(p) => w.extend(["to".into(), "any".into(), "port".into(), p]),
            None if r.from == "any" => w.extend(["to".into(), "any".into()]),
            None => {}
        }
        if r.proto != "any" {
            w.extend(["proto".into(), r.proto.clone()]);
        }
        return w;
    }
    match (port, r.from == "any") {
        (Some(p), true) if r.proto != "any" => w.push(format!("{p}/{}", r.proto)),
        (Some(p), true) => w.push(p),
        (port, _) => {
            w.extend(["from".into(), ufw_source(&r.from).to_string()]);
            if let Some(p) = port {
                w.extend(["to".into(), "any".into(), "port".into(), p]);
            }
            if r.proto != "any" {
                w.extend(["proto".into(), r.proto.clone()]);
            }
        }
    }
    w
}

/// Parse one line of `ufw show added` back into a rule (None for forms
/// tidekeeper does not write; those are reported as unmanaged).
pub(crate) fn parse_rule(line: &str) -> Option<FirewallRule> {
    let line = line.trim().strip_prefix("ufw ")?;
    let (main, comment) = match line.find(" comment '") {
        Some(i) => (
            &line[..i],
            Some(line[i + 10..].trim_end_matches('\'').to_string()),
        ),
        None => (line, None),
    };
    let toks: Vec<&str> = main.split_whitespace().collect();
    let action = match *toks.first()? {
        "allow" => RuleAction::Allow,
        "deny" => RuleAction::Deny,
        "reject" => RuleAction::Reject,
        "limit" => RuleAction::Limit,
        _ => return None,
    };
    let mut rule = FirewallRule {
        action,
        from_port: None,
        to_port: None,
        proto: "any".into(),
        from: "any".into(),
        interface: None,
        comment,
    };
    let parse_port = |p: &str| -> Option<(u16, u16)> {
        match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let a = p.parse().ok()?;
                Some((a, a))
            }
        }
    };
    let mut i = 1;
    if toks.get(1..3) == Some(&["in", "on"]) {
        rule.interface = Some(toks.get(3)?.to_string());
        i = 4;
        if toks.len() == 4 {
            return None;
        }
    }
    if rule.interface.is_some() || toks.get(1) == Some(&"from") {
        // The full form: [from SRC] [to any [port P]] [proto X].
        let mut to = false;
        while i < toks.len() {
            match toks[i] {
                "from" if !to => {
                    rule.from = toks.get(i + 1)?.to_string();
                    i += 2;
                }
                "to" if toks.get(i + 1) == Some(&"any") => {
                    to = true;
                    i += 2;
                }
                "port" if to => {
                    let (a, b) = parse_port(toks.get(i + 1)?)?;
                    (rule.from_port, rule.to_port) = (Some(a), Some(b));
                    i += 2;
                }
                "proto" => {
                    rule.proto = toks.get(i + 1)?.to_string();
                    i += 2;
                }
                _ => return None,
            }
        }
    } else {
        let spec = toks.get(1)?;
        if toks.len() != 2 {
            return None;
        }
        let (port, proto) = match spec.split_once('/') {
            Some((p, q)) => (p, q.to_string()),
            None => (*spec, "any".to_string()),
        };
        let (a, b) = parse_port(port)?;
        (rule.from_port, rule.to_port, rule.proto) = (Some(a), Some(b), proto);
    }
    Some(rule)
}

pub(crate) fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Allow => "allow",
        Policy::Deny => "deny",
        Policy::Reject => "reject",
    }
}

/// `firewall:` as a [`Kind`].
pub(crate) struct Firewall;

impl Kind for Firewall {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Firewall
    }

    fn probe(&self, items: &[Item], cx: &ProbeCx) -> String {
        probe(items, cx.root)
    }

    fn tags(&self) -> &'static [Tag] {
        &[
            Tag::Ufw,
            Tag::UfwRule,
            Tag::UfwPolicy,
            Tag::UfwEnabled,
            Tag::ContainerRule,
        ]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        let mut ufw = Ufw::default();
        each(records, |tag, record| ufw.record(tag, record))?;
        o.firewall = ufw.finish();
        Ok(())
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Firewall(fw) = item else {
            return Ok(None);
        };
        let (need, foreign) = plan(fw, cx.obs.firewall.as_ref());
        cx.warnings.extend(foreign);
        Ok(need)
    }

    fn apply(&self, c: &Change, item: &Item, _cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Firewall(fw) = item else {
            return vec![];
        };
        step(c, apply(fw, c.action, &c.attrs))
    }

    fn is_risky(&self, _id: &str, _login_user: &str) -> bool {
        is_risky()
    }

    fn save(&self, _c: &Change, s: &mut Saves) {
        s.ufw = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn rule(from: &str, port: Option<u16>, comment: Option<&str>) -> FirewallRule {
        FirewallRule {
            action: RuleAction::Allow,
            from_port: port,
            to_port: port,
            proto: "tcp".into(),
            from: from.into(),
            interface: None,
            comment: comment.map(String::from),
        }
    }

    fn firewall(rules: Vec<FirewallRule>) -> Rules {
        Rules {
            incoming: Policy::Deny,
            outgoing: Policy::Allow,
            routed: None,
            metadata_from_containers: None,
            docker: false,
            rules,
            sites: vec![],
            origin: Default::default(),
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let fw = firewall(vec![
            rule("any", Some(22), Some("ssh")),
            rule("10.0.0.0/8", Some(80), None),
        ]);
        let s = probe(&[Item::Firewall(fw.clone())], "/r");
        assert!(s.starts_with("if command -v ufw >/dev/null; then printf 'F\\tinstalled\\n'; "));
        assert!(s.contains(" /r/etc/default/ufw; "));
        sh_n(&s);
        assert_eq!(probe(&[], ""), "");
        let body = apply(&fw, Action::Create, &[]);
        assert_eq!(
            body,
            "ufw allow 22/tcp comment ssh >/dev/null || return\n\
             ufw allow from 10.0.0.0/8 to any port 80 proto tcp >/dev/null || return\n\
             ufw default deny incoming >/dev/null || return\n\
             ufw default allow outgoing >/dev/null || return\n\
             ufw --force enable >/dev/null || return\n"
        );
        sh_n_step(&body);
        let (need, _) = plan(
            &fw,
            Some(&FirewallState {
                enabled: true,
                incoming: "deny".into(),
                outgoing: "allow".into(),
                routed: "deny".into(),
                rules: vec![
                    rule("any", Some(22), Some("ssh")),
                    rule("any", Some(23), None),
                ],
                foreign: vec![],
                containers: vec![],
            }),
        );
        let need = need.unwrap();
        let body = apply(&fw, need.action, &need.attrs);
        assert_eq!(
            body.lines().take(2).collect::<Vec<_>>(),
            [
                "ufw allow from 10.0.0.0/8 to any port 80 proto tcp >/dev/null || return",
                "ufw delete allow 23/tcp >/dev/null || return"
            ]
        );
    }

    #[test]
    fn a_hostile_comment_or_source_stays_one_word() {
        let fw = firewall(vec![rule("any", Some(22), Some("x; reboot $(id)"))]);
        let body = apply(&fw, Action::Create, &[]);
        assert!(
            body.starts_with("ufw allow 22/tcp comment 'x; reboot $(id)' >/dev/null"),
            "{body}"
        );
        sh_n_step(&body);
        let fw = firewall(vec![rule("1.2.3.4;reboot", None, None)]);
        let body = apply(&fw, Action::Create, &[]);
        assert!(
            body.starts_with("ufw allow from '1.2.3.4;reboot' proto tcp"),
            "{body}"
        );
        sh_n_step(&body);
    }

    #[test]
    fn ufw_records_read_back() {
        let mut ufw = Ufw::default();
        assert!(Ufw::default().finish().is_none(), "no ufw, no firewall");
        for (tag, rec) in [
            (Tag::Ufw, "installed"),
            (Tag::UfwRule, "ufw allow 22/tcp comment 'ssh'"),
            (Tag::UfwRule, "ufw route allow in on eth0"),
            (Tag::UfwPolicy, "INPUT\tDROP"),
            (Tag::UfwPolicy, "OUTPUT\tACCEPT"),
            (Tag::UfwEnabled, "yes"),
        ] {
            ufw.record(tag, rec).unwrap();
        }
        assert!(ufw.record(Tag::UfwPolicy, "INPUT").is_err());
        let fw = ufw.finish().unwrap();
        assert_eq!(
            (fw.incoming.as_str(), fw.outgoing.as_str(), fw.enabled),
            ("deny", "allow", true)
        );
        assert_eq!(fw.rules.len(), 1);
        assert_eq!(fw.foreign, ["ufw route allow in on eth0"]);
    }

    #[test]
    fn ufw_rules_round_trip_through_their_printed_form() {
        // Lines as `ufw show added` printed them on a test host.
        for line in [
            "ufw allow 22/tcp comment 'ssh'",
            "ufw allow from 10.0.0.0/8 to any port 80 proto tcp",
            "ufw allow 53/udp",
            "ufw deny 23",
            "ufw allow 1000:2000/tcp",
            "ufw allow from 192.168.1.0/24",
        ] {
            let rule = parse_rule(line).unwrap_or_else(|| panic!("parse {line}"));
            assert_eq!(format!("ufw {}", rule_args(&rule)), line);
        }
        assert!(parse_rule("ufw route allow in on eth0").is_none());
    }

    /// Regression: a rule `from: 198.51.100.7/32` was written as such, read
    /// back from ufw as the bare address, and planned again on every run.
    #[test]
    fn a_single_host_network_compares_equal_to_the_address_ufw_shows() {
        for (config, shown) in [
            (
                "198.51.100.7/32",
                "ufw allow from 198.51.100.7 to any port 22 proto tcp",
            ),
            (
                "2001:db8::1/128",
                "ufw allow from 2001:db8::1 to any port 22 proto tcp",
            ),
        ] {
            let want = FirewallRule {
                action: RuleAction::Allow,
                from_port: Some(22),
                to_port: Some(22),
                proto: "tcp".into(),
                from: config.into(),
                interface: None,
                comment: None,
            };
            let have = parse_rule(shown).unwrap();
            assert_eq!(rule_args(&want), rule_args(&have));
        }
    }

    /// A rule on an interface is written in ufw's full form and read back
    /// the same, so it is not planned again on every run.
    #[test]
    fn a_rule_on_an_interface_round_trips_through_ufws_own_form() {
        let on = |from: &str, port: Option<u16>, proto: &str| FirewallRule {
            interface: Some("tailscale0".into()),
            proto: proto.into(),
            ..rule(from, port, None)
        };
        for (r, shown) in [
            (
                on("any", Some(22), "tcp"),
                "allow in on tailscale0 to any port 22 proto tcp",
            ),
            (
                on("100.64.0.0/10", Some(22), "tcp"),
                "allow in on tailscale0 from 100.64.0.0/10 to any port 22 proto tcp",
            ),
            (on("any", None, "any"), "allow in on tailscale0 to any"),
            (
                on("10.0.0.2/32", None, "any"),
                "allow in on tailscale0 from 10.0.0.2",
            ),
        ] {
            assert_eq!(rule_args(&r), shown);
            let back = parse_rule(&format!("ufw {shown}")).unwrap();
            assert_eq!(rule_args(&back), shown, "{shown}");
            assert_eq!(back.interface.as_deref(), Some("tailscale0"));
        }
        // A source port is not a form tidekeeper writes.
        assert!(parse_rule("ufw allow from 10.0.0.2 port 22").is_none());
        assert!(parse_rule("ufw allow in on wg0").is_none());
    }

    /// `routed:` is ufw's forward policy: read from DEFAULT_FORWARD_POLICY,
    /// set with `ufw default … routed`, and left alone when unset.
    #[test]
    fn the_routed_policy_is_managed_only_when_stated() {
        let mut ufw = Ufw::default();
        for (tag, rec) in [
            (Tag::Ufw, "installed"),
            (Tag::UfwPolicy, "INPUT\tDROP"),
            (Tag::UfwPolicy, "OUTPUT\tACCEPT"),
            (Tag::UfwPolicy, "FORWARD\tDROP"),
            (Tag::UfwEnabled, "yes"),
        ] {
            ufw.record(tag, rec).unwrap();
        }
        let have = ufw.finish().unwrap();
        assert_eq!(
            (have.incoming.as_str(), have.outgoing.as_str(), have.routed.as_str()),
            ("deny", "allow", "deny")
        );
        assert!(probe(&[Item::Firewall(firewall(vec![]))], "").contains("FORWARD"));
        let unset = firewall(vec![]);
        assert!(plan(&unset, Some(&have)).0.is_none(), "not stated, not managed");
        let routing = Rules {
            routed: Some(Policy::Allow),
            ..firewall(vec![])
        };
        let need = plan(&routing, Some(&have)).0.unwrap();
        let attr = need.attrs.iter().find(|a| a.name == "routed").unwrap();
        assert_eq!(
            (attr.before.as_deref(), attr.after.as_deref()),
            (Some("deny"), Some("allow"))
        );
        let body = apply(&routing, need.action, &need.attrs);
        assert!(
            body.contains("ufw default allow routed >/dev/null || return\n"),
            "{body}"
        );
        sh_n_step(&body);
        assert!(!apply(&unset, Action::Create, &[]).contains("routed"));
    }
}
