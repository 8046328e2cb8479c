//! The lockout guard ("commit confirmed"): before a change to what access
//! depends on — sshd, the firewall, network configuration, sudoers,
//! authorized_keys, the login user — the host arms its own rollback (a
//! transient systemd timer), the change is applied, and access is proven with
//! a NEW SSH connection. Proof disarms the timer; no proof (or tidekeeper
//! dying) lets the host restore the previous state by itself. Which changes
//! are risky and what to save for them each kind says; building the save
//! and rollback scripts from that is pure.

use super::kinds::{self, Saves};
use super::plan::{Change, HostPlan};
use crate::transport::shell_quote as q;

/// How systemd timers are asked to fire: at the deadline, not up to a minute
/// after it (systemd's default AccuracySec=1min).
const TIMER: &str = "--timer-property=AccuracySec=1s";

/// ufw's own state, saved and restored as a whole.
pub(crate) const UFW_FILES: [&str; 5] = [
    "/etc/ufw/user.rules",
    "/etc/ufw/user6.rules",
    "/etc/ufw/ufw.conf",
    "/etc/default/ufw",
    "/etc/ufw/before.rules",
];

/// Does this change touch what access depends on? Each kind says.
pub(crate) fn is_risky(c: &Change, login_user: &str) -> bool {
    kinds::of(c.kind, &c.id).is_risky(&c.id, login_user)
}

/// The risky changes of a plan, as `kind id` for reports.
pub(crate) fn risky(plan: &HostPlan, login_user: &str) -> Vec<String> {
    plan.changes
        .iter()
        .filter(|c| is_risky(c, login_user))
        .map(|c| format!("{} {}", c.kind, c.id))
        .collect()
}

/// Shell code (run inside the apply script, after the lock is taken) that
/// saves the current state of every risky path and arms the rollback timer.
/// `$S` is the state directory and `$R` the root prefix.
pub(crate) fn arm(plan: &HostPlan, login_user: &str, run: &str, deadline_secs: u64) -> String {
    let saves = saves(plan, login_user);
    let saved = format!("$S/rollback/{run}");
    let mut s = save_script(&saves, &saved);
    s.push_str(&format!(
        "sed -e \"s|\\$R_VALUE|$R|\" -e \"s|\\$S_VALUE|$S|\" > \"{saved}.sh\" <<'TK_RB_EOF' || return\n{}TK_RB_EOF\n",
        rollback_script(&saves, run)
    ));
    // systemd keeps the timer even if this connection (or tidekeeper) dies.
    s.push_str(&format!(
        "if command -v systemd-run >/dev/null && [ -d /run/systemd/system ]; then \
         systemd-run --quiet --collect --unit={unit} --on-active={deadline_secs} {TIMER} /bin/sh \"{saved}.sh\" || return; \
         else (sleep {deadline_secs}; [ -e \"{saved}.armed\" ] && /bin/sh \"{saved}.sh\") </dev/null >/dev/null 2>&1 & fi\n\
         : > \"{saved}.armed\"\nprintf '@@armed %s\\n' {run}\n",
        unit = unit(run),
    ));
    s
}

/// What the risky changes of a plan need saved, as their kinds say.
fn saves(plan: &HostPlan, login_user: &str) -> Saves {
    let mut saves = Saves::default();
    for c in plan.changes.iter().filter(|c| is_risky(c, login_user)) {
        kinds::of(c.kind, &c.id).save(c, &mut saves);
    }
    if saves.ufw {
        saves.paths.extend(UFW_FILES.iter().map(|s| s.to_string()));
    }
    saves.paths.sort();
    saves.paths.dedup();
    saves
}

/// The rollback script: restore what existed, remove what did not, put
/// units and mounts back as they were.
fn rollback_script(saves: &Saves, run: &str) -> String {
    let mut rb = String::from(
        "#!/bin/sh\n# tidekeeper: restore access-critical files after a change that was not confirmed.\n",
    );
    rb.push_str(&format!(
        "R={}\nS={}\nD=\"$S/rollback/{run}\"\n",
        q("$R_VALUE"),
        q("$S_VALUE")
    ));
    if saves.ufw {
        // A firewall that was off before goes off first, while ufw still has
        // its files; one that was on is reloaded after its files are back.
        rb.push_str(
            "if grep -q '^ENABLED=yes' \"$D/files/etc/ufw/ufw.conf\" 2>/dev/null; then UFW_WAS=on; else UFW_WAS=off; fi\n\
             if [ $UFW_WAS = off ] && command -v ufw >/dev/null; then ufw --force disable; fi\n",
        );
    }
    for p in &saves.paths {
        let qp = q(p);
        // ufw's own files that did not exist came with the package: keep them.
        let remove = if UFW_FILES.contains(&p.as_str()) {
            String::new()
        } else {
            format!(" elif [ -e \"$D/absent\"{qp} ]; then rm -f \"$R\"{qp};")
        };
        rb.push_str(&format!(
            "if [ -e \"$D/files\"{qp} ] || [ -L \"$D/files\"{qp} ]; then cp -a \"$D/files\"{qp} \"$R\"{qp}.tk-restore && mv -f \"$R\"{qp}.tk-restore \"$R\"{qp};{remove} fi\n"
        ));
    }
    // SSH units go back to how they were: unmasked, enabled and running as saved.
    for u in &saves.units {
        let qu = q(u);
        let f = q(&format!("units/{u}"));
        rb.push_str(&format!(
            "if [ -e \"$D\"/{f}.masked ]; then :; else systemctl unmask -- {qu} 2>/dev/null; fi\n\
             if [ -e \"$D\"/{f}.enabled ]; then systemctl enable -- {qu} 2>/dev/null; fi\n\
             if [ -e \"$D\"/{f}.active ]; then systemctl start -- {qu} 2>/dev/null; fi\n"
        ));
    }
    for m in &saves.mounts {
        rb.push_str(&kinds::mount::rollback(m));
    }
    if saves.ssh {
        rb.push_str("systemctl reload-or-restart ssh.service 2>/dev/null || systemctl reload-or-restart sshd.service 2>/dev/null\n");
    }
    if saves.ufw {
        rb.push_str("if [ $UFW_WAS = on ]; then ufw reload; fi\n");
    }
    rb.push_str(&format!(
        "mkdir -p \"$S/rolled-back\" && date -u +%FT%TZ > \"$S/rolled-back/{run}\"\n"
    ));
    rb
}

/// Shell code that saves every path (or notes that it is absent) and the
/// state of every unit under `saved`.
fn save_script(saves: &Saves, saved: &str) -> String {
    let mut s = format!("mkdir -p \"{saved}/files\" \"{saved}/absent\" || return\n");
    for p in &saves.paths {
        let qp = q(p);
        s.push_str(&format!(
            "if [ -e \"$R\"{qp} ] || [ -L \"$R\"{qp} ]; then mkdir -p \"$(dirname \"{saved}/files\"{qp})\" && cp -a \"$R\"{qp} \"{saved}/files\"{qp} || return; \
             else mkdir -p \"$(dirname \"{saved}/absent\"{qp})\" && : > \"{saved}/absent\"{qp} || return; fi\n"
        ));
    }
    if !saves.units.is_empty() {
        s.push_str(&format!("mkdir -p \"{saved}/units\" || return\n"));
    }
    for u in &saves.units {
        let qu = q(u);
        let f = q(&format!("units/{u}"));
        s.push_str(&format!(
            "case \"$(systemctl is-enabled -- {qu} 2>/dev/null)\" in enabled|enabled-runtime|static|alias|indirect) : > \"{saved}\"/{f}.enabled;; masked|masked-runtime) : > \"{saved}\"/{f}.masked;; esac\n\
             if systemctl is-active -q -- {qu}; then : > \"{saved}\"/{f}.active; fi\n"
        ));
    }
    s
}

/// Start the rollback countdown again at the end of the apply.
pub(crate) fn rearm(run: &str, deadline_secs: u64) -> String {
    format!(
        "systemctl stop {unit}.timer 2>/dev/null\n\
         if command -v systemd-run >/dev/null && [ -d /run/systemd/system ]; then \
         systemd-run --quiet --collect --unit={unit}-final --on-active={deadline_secs} {TIMER} /bin/sh \"$S/rollback/{run}.sh\" || return; fi\n",
        unit = unit(run)
    )
}

/// The transient unit that rolls back `run`.
pub(crate) fn unit(run: &str) -> String {
    format!("tidekeeper-rollback-{run}")
}

/// Roll back at once, over the connection the change was applied through
/// (still open while the proving connection failed); the timer stays armed
/// as the fallback if this does not get through.
pub(crate) fn rollback_now_script(run: &str) -> String {
    format!(
        "S=/var/lib/tidekeeper; [ -e \"$S/rolled-back/{run}\" ] && {{ echo rolled-back; exit 0; }}; \
         [ -e \"$S/rollback/{run}.sh\" ] || exit 3; /bin/sh \"$S/rollback/{run}.sh\" || exit 1; \
         systemctl stop {unit}.timer {unit}-final.timer 2>/dev/null; rm -f \"$S/rollback/{run}.armed\"; echo rolled-back\n",
        unit = unit(run)
    )
}

/// Disarm the rollback after access was proven (run over the new connection).
pub(crate) fn disarm_script(run: &str) -> String {
    format!(
        "S=/var/lib/tidekeeper; systemctl stop {unit}.timer {unit}-final.timer 2>/dev/null; rm -f \"$S/rollback/{run}.armed\"; \
         if [ -e \"$S/rolled-back/{run}\" ]; then echo rolled-back; exit 3; fi; \
         rm -rf \"$S/rollback/{run}\" \"$S/rollback/{run}.sh\"; echo disarmed\n",
        unit = unit(run)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::Action;

    fn change(kind: &str, id: &str) -> Change {
        Change::bare(kind.parse().unwrap(), id, Action::Update)
    }

    fn plan(changes: Vec<Change>) -> HostPlan {
        HostPlan::new("h", changes)
    }

    #[test]
    fn tcp_wrappers_access_conf_and_the_ssh_units_are_risky() {
        for (kind, id) in [
            ("file", "/etc/hosts.allow"),
            ("file", "/etc/hosts.deny"),
            ("absent", "/etc/security/access.conf"),
            ("service", "ssh"),
            ("service", "sshd.service"),
            ("service", "ssh.socket"),
        ] {
            assert!(is_risky(&change(kind, id), "root"), "{kind} {id}");
        }
        assert!(!is_risky(&change("service", "nginx"), "root"));
        assert!(!is_risky(&change("file", "/etc/hosts"), "root"));
    }

    #[test]
    fn a_mount_over_home_saves_fstab_and_its_rollback_unmounts_it() {
        assert!(!is_risky(&change("mount", "/srv/data"), "root"));
        let p = plan(vec![change("mount", "/home")]);
        assert!(is_risky(&p.changes[0], "root"));
        let s = arm(&p, "root", "r1", 20);
        assert!(
            s.contains("cp -a \"$R\"/etc/fstab \"$S/rollback/r1/files\"/etc/fstab"),
            "{s}"
        );
        assert!(
            s.contains("umount -l /home 2>/dev/null; mount /home 2>/dev/null"),
            "{s}"
        );
        crate::engine::kinds::sh_n_step(&s);
    }

    #[test]
    fn the_rollback_timer_fires_at_its_deadline_and_restores_ssh_units() {
        let p = plan(vec![change("service", "ssh")]);
        let s = arm(&p, "root", "r1", 20);
        assert!(
            s.contains("--on-active=20 --timer-property=AccuracySec=1s"),
            "{s}"
        );
        assert!(s.contains("systemctl is-enabled -- ssh.service"), "{s}");
        assert!(s.contains("systemctl start -- ssh.service"), "{s}");
        assert!(rearm("r1", 20).contains("AccuracySec=1s"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &format!("f() {{\n{s}\n}}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
