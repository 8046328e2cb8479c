//! `commands:` — commands run on the host. A guarded one (`creates`,
//! `unless`, `onlyif`) runs when its guards, asked by the probe, say so; an
//! unguarded one when it is new or its command changed (its checksum is
//! kept in the host's inventory).

use super::{ApplyCx, Change, Kind, Observe, PlanCx, ProbeCx, ReadCx, each, step};
use super::{Garbled, Need};
use crate::change::Action;
use crate::change::ResourceKind;
use crate::digest::sha256_hex;
use crate::engine::item::Item;
use crate::engine::observed::{Inventory, Observed};
use crate::engine::sh::{Tag, Word, cmd};
use crate::model::desired::CommandResource;
use crate::model::desired::Confinement;

/// Probe: for each guarded command, a [`Tag::Guard`] record with its name
/// and `run` or `skip`. Guards run with a 60 s limit and no input; `creates`
/// is looked for under `root`.
pub(crate) fn probe(items: &[Item], root: &str) -> String {
    let mut s = String::new();
    for i in items {
        let Item::Command(c) = i else { continue };
        let sh = |check: &str| {
            cmd("timeout")
                .lit("60")
                .lit("sh")
                .lit("-c")
                .arg(check)
                .to_string()
        };
        let mut checks = Vec::new();
        if let Some(path) = &c.creates {
            checks.push(format!(
                "if [ -e {} ]; then echo skip; return; fi",
                Word::quoted(&format!("{root}{path}"))
            ));
        }
        if let Some(u) = &c.unless {
            checks.push(format!(
                "if {} </dev/null >/dev/null; then echo skip; return; fi",
                sh(u)
            ));
        }
        if let Some(o) = &c.onlyif {
            checks.push(format!(
                "if ! {} </dev/null >/dev/null; then echo skip; return; fi",
                sh(o)
            ));
        }
        if checks.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "g() {{ {}; echo run; }}; printf '{}\\t%s\\t%s\\n' {} \"$(g)\"\n",
            checks.join("; "),
            Tag::Guard,
            Word::quoted(&c.name)
        ));
    }
    s
}

/// Read a [`Tag::Guard`] record: the command's name and why it would run
/// (None: its guards say skip).
pub(crate) fn parse(record: &str) -> Result<(&str, Option<String>), Garbled> {
    let (name, verdict) = record.split_once('\t').ok_or(Garbled)?;
    if verdict.contains('\t') {
        return Err(Garbled);
    }
    Ok((
        name,
        (verdict == "run").then(|| "guards say it is needed".to_string()),
    ))
}

/// Whether a command runs, and why (in the change's note).
pub(crate) fn plan(c: &CommandResource, obs: &Observed) -> Option<Need> {
    let guarded = c.creates.is_some() || c.unless.is_some() || c.onlyif.is_some();
    let reason = if guarded {
        obs.commands.get(&c.name).cloned().flatten()
    } else {
        match obs.inventory.commands.get(&c.name) {
            None => Some("first run".to_string()),
            Some(h) if *h != hash(c) => Some("its command changed".to_string()),
            Some(_) => None,
        }
    };
    // A run that failed is not a run: say so beside why it runs.
    let reason = reason.map(|r| match obs.failed.get(&c.name) {
        Some(failed) => format!("{r}; {failed}"),
        None => r,
    });
    reason.map(|r| Need::new(Action::Run).note(r))
}

/// Apply: run it with its time limit and no input; its output goes to the
/// step's error log.
/// Only a run that exited 0 is recorded as run (in `$S/ran`, right after
/// it); a failed one is recorded as failed, with when and its exit code.
pub(crate) fn apply(c: &CommandResource) -> String {
    let name = Word::quoted(&c.name);
    format!(
        "{} </dev/null >&2; rc=$?\n\
         if [ \"$rc\" -ne 0 ]; then printf '%s\\t%s\\t%s\\n' {name} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"$rc\" >>\"$S/{failed}\"; return \"$rc\"; fi\n\
         printf 'command\\t%s\\t%s\\n' {name} {sum} >>\"$S/{ran}\" || return\n",
        cmd("timeout")
            .word(Word::num(c.timeout_secs))
            .lit("sh")
            .lit("-c")
            .arg(&c.run),
        sum = hash(c),
        ran = crate::engine::observed::RAN,
        failed = crate::engine::observed::FAILED,
    )
}

/// The checksum of a command's definition kept in the inventory.
pub(crate) fn hash(c: &CommandResource) -> String {
    sha256_hex(c.run.as_bytes())[..16].to_string()
}

/// `commands:` as a [`Kind`].
pub(crate) struct Command;

impl Kind for Command {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Command
    }

    fn probe(&self, items: &[Item], cx: &ProbeCx) -> String {
        probe(items, cx.root)
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Guard]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            let (name, why) = parse(record)?;
            o.commands.insert(name.to_string(), why);
            Ok(())
        })
    }

    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Command(cmd) = item else {
            return Ok(None);
        };
        Ok(plan(cmd, cx.obs))
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Command(cmd) = item else {
            return vec![];
        };
        step(c, format!("{}{}", cx.owes, apply(cmd)))
    }

    fn record(&self, item: &Item, inv: &mut Inventory) {
        if let Item::Command(cmd) = item {
            inv.commands.insert(cmd.name.clone(), hash(cmd));
        }
    }

    /// Its guards run for a proposal only as the base has them: not even
    /// its `creates:` path is looked at otherwise (it would tell whether a
    /// path the base does not show exists).
    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        let Item::Command(cmd) = item else {
            return Observe::NotManaged;
        };
        let guard = (
            cmd.name.clone(),
            cmd.creates.clone(),
            cmd.unless.clone(),
            cmd.onlyif.clone(),
        );
        let guarded = cmd.creates.is_some() || cmd.unless.is_some() || cmd.onlyif.is_some();
        if guarded && !base.guards.contains(&guard) {
            let mut unguarded = cmd.clone();
            unguarded.creates = None;
            unguarded.unless = None;
            unguarded.onlyif = None;
            Observe::Unguarded(Item::Command(unguarded))
        } else {
            Observe::Yes
        }
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        if let Item::Command(cmd) = item {
            base.guards.insert((
                cmd.name.clone(),
                cmd.creates.clone(),
                cmd.unless.clone(),
                cmd.onlyif.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    fn command(run: &str) -> CommandResource {
        CommandResource {
            name: "migrate db".into(),
            run: run.into(),
            creates: Some("/srv/.done".into()),
            unless: Some("test -f /x".into()),
            onlyif: None,
            timeout_secs: 300,
            notify: vec![],
            origin: Default::default(),
        }
    }

    #[test]
    fn its_script_fragments_are_these_and_parse_as_sh() {
        let c = command("echo it's done");
        let s = probe(&[Item::Command(c.clone())], "/r");
        assert_eq!(
            s,
            "g() { if [ -e /r/srv/.done ]; then echo skip; return; fi; \
             if timeout 60 sh -c 'test -f /x' </dev/null >/dev/null; then echo skip; return; fi; echo run; }; \
             printf 'Q\\t%s\\t%s\\n' 'migrate db' \"$(g)\"\n"
        );
        sh_n(&s);
        let mut bare = c.clone();
        (bare.creates, bare.unless) = (None, None);
        assert_eq!(
            probe(&[Item::Command(bare)], ""),
            "",
            "unguarded: nothing to ask"
        );
        let body = apply(&c);
        assert!(
            body.starts_with("timeout 300 sh -c 'echo it'\\''s done' </dev/null >&2; rc=$?\n"),
            "{body}"
        );
        // Recorded as run only after it exited 0, as failed otherwise.
        let (failed, ran) = body.split_once("fi\n").unwrap();
        assert!(failed.contains("\"$S/failed\"; return \"$rc\""), "{body}");
        assert!(
            ran.starts_with(&format!(
                "printf 'command\\t%s\\t%s\\n' 'migrate db' {} >>\"$S/ran\"",
                hash(&c)
            )),
            "{body}"
        );
        sh_n_step(&body);
    }

    #[test]
    fn a_guard_record_reads_back_and_a_command_runs_only_when_needed() {
        assert_eq!(
            parse("migrate db\trun").unwrap(),
            ("migrate db", Some("guards say it is needed".to_string()))
        );
        assert_eq!(parse("migrate db\tskip").unwrap(), ("migrate db", None));
        assert_eq!(parse("no verdict").unwrap_err(), Garbled);

        let mut obs = Observed::default();
        let mut c = command("true");
        assert_eq!(plan(&c, &obs), None, "guards not asked: nothing to run");
        obs.commands
            .insert(c.name.clone(), Some("guards say it is needed".into()));
        assert_eq!(plan(&c, &obs).unwrap().action, Action::Run);
        (c.creates, c.unless) = (None, None);
        assert_eq!(plan(&c, &obs).unwrap().note.as_deref(), Some("first run"));
        obs.inventory.commands.insert(c.name.clone(), hash(&c));
        assert_eq!(plan(&c, &obs), None);
        c.run = "false".into();
        assert_eq!(
            plan(&c, &obs).unwrap().note.as_deref(),
            Some("its command changed")
        );
        // Issue 33: a failed run says so, and runs again.
        obs.failed.insert(
            c.name.clone(),
            "failed at 2026-12-06T10:00:00Z: exit 3".into(),
        );
        assert_eq!(
            plan(&c, &obs).unwrap().note.as_deref(),
            Some("its command changed; failed at 2026-12-06T10:00:00Z: exit 3")
        );
    }
}
