//! Saved plans on the terminal: `plan --out FILE` writes one, `show FILE`
//! prints one, and `apply FILE` reads one (the file's format and the
//! comparison with a fresh plan are [`crate::saved_plan`]'s).

use std::io::Read;

use super::*;
use crate::saved_plan::{self, Parts, SavedPlan};

/// The saved plan of `fp`, as `plan --out` and `apply FILE` make it.
pub(super) fn of(
    fp: &reconcile::FleetPlan,
    gate: &reconcile::Gate,
    args: &HostArgs,
    opts: &engine::Options,
) -> SavedPlan {
    SavedPlan::new(
        fp,
        &Parts {
            selected: &args.hosts,
            allow_destroy: args.allow_destroy,
            allow_mass_delete: args.allow_mass_delete,
            gate,
            redact: &|s| opts.redact(s),
        },
    )
}

/// Write `saved` to `path`, whole or not at all.
pub(super) fn write(saved: &SavedPlan, path: &Path) -> Result<(), CliError> {
    // A bare file name: its directory is this one (synced after the rename).
    let path = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new(".").join(path),
        _ => path.to_path_buf(),
    };
    crate::state_file::write_bytes(&path, saved.to_json().as_bytes())
        .map_err(|e| CliError::new(format!("cannot write the plan to {}: {e}", path.display())))
}

/// Read the saved plan at `path`: refused when it is not one, of another
/// format version, or edited since it was written.
pub(super) fn read(path: &Path) -> Result<SavedPlan, CliError> {
    let fail = |e: &dyn std::fmt::Display| {
        CliError::new(format!(
            "cannot read the saved plan {}: {e}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let mut bytes = Vec::new();
    file.take(saved_plan::MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&e))?;
    if bytes.len() as u64 > saved_plan::MAX_BYTES {
        return Err(fail(&format!(
            "larger than {} MiB",
            saved_plan::MAX_BYTES >> 20
        )));
    }
    SavedPlan::from_json(&bytes).map_err(|e| {
        CliError::new(format!("{}: {e}", path.display()))
            .help("make a new one with `tidekeeper plan --out FILE`")
    })
}

/// Does `name` (the argument of `show`) name a saved plan rather than a
/// host? A file holding a JSON object does; any other file of a host's
/// name in this directory does not stand in the host's way.
pub(super) fn names_a_file(name: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(name) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 64];
    let n = f.read(&mut head).unwrap_or(0);
    head[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// `tidekeeper show FILE`: a saved plan as text, markdown or JSON.
pub(super) fn show(path: &Path, format: ShowFormat) -> CliResult {
    let saved = read(path)?;
    let safe = saved_plan::terminal_safe;
    match format {
        ShowFormat::Text => {
            println!(
                "Saved plan of {} at {} (format {}, digest {}):\n",
                safe(&saved.plan.fleet),
                safe(&saved.plan.commit),
                saved.format_version,
                saved.digest.get(..16).unwrap_or_default()
            );
            print!("{}", safe(&saved.shown.text));
        }
        ShowFormat::Markdown => print!("{}", safe(&saved.shown.markdown)),
        // JSON escapes every control character.
        ShowFormat::Json => print!("{}", saved.to_json()),
    }
    Ok(Outcome::Done)
}

/// Refuse a saved plan of another commit before anything is probed.
pub(super) fn same_commit(saved: &SavedPlan, tree: &ConfigTree) -> Result<(), CliError> {
    let now = tree.commit.as_deref().unwrap_or_default();
    if now == saved.plan.commit {
        return Ok(());
    }
    Err(stale(&[format!(
        "the commit differs: the plan is of {}, the config repo is at {now}",
        saved.plan.commit
    )]))
}

/// The saved plan no longer holds; `moved` says what moved.
pub(super) fn stale(moved: &[String]) -> CliError {
    let mut what = String::from("the saved plan is stale; nothing was applied. What moved:");
    for m in moved {
        what.push_str("\n  ");
        what.push_str(&saved_plan::terminal_safe(m));
    }
    CliError::new(what).help("plan again (`tidekeeper plan --out FILE`), review, and apply that")
}
