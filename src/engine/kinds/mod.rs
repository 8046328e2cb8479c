//! One module per resource kind: what the probe asks about it, how its
//! record is read back, when it needs a change, what the apply runs, and
//! whether a change to it risks tidekeeper's own access. The shared stages
//! (probe, plan, apply, guard) call into these, so a kind's rules live in
//! one file. Moved here so far: `group`, `sysctl`.

pub mod group;
pub mod sysctl;

/// A probe record that does not read as its tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbled;

/// `sh -n` over a generated fragment: it must at least parse.
#[cfg(test)]
pub(crate) fn sh_n(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
