//! `tidekeeper validate`: check the config repo and say what it defines.

use super::*;

pub(super) fn validate(repo: &RepoArgs, worktree: bool, format: Format) -> CliResult {
    let tree = if worktree {
        source::discover(&repo.repo)
            .and_then(|p| ConfigTree::from_worktree(&p))
            .map_err(CliError::new)?
    } else {
        read_tree(repo)?
    };
    if !worktree {
        // A user about to commit should not be told "valid" about files
        // that are not what they are committing.
        warn_uncommitted(
            repo,
            "this checks HEAD, not them; `tidekeeper validate --worktree` checks the files on disk",
        );
    }
    let fleet = load(&tree, format)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "format_version": JSON_FORMAT_VERSION,
                "valid": true,
                "fleet": fleet.name,
                "commit": fleet.commit,
                "hosts": fleet.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
                "jobs": fleet.jobs.iter().map(|j| &j.name).collect::<Vec<_>>(),
                "warnings": fleet.warnings,
            })
        ),
        _ => println!("{}", summary(&fleet, &tree)),
    }
    Ok(Outcome::Done)
}

pub(super) fn summary(fleet: &Fleet, tree: &ConfigTree) -> String {
    let resources: usize = fleet.hosts.iter().map(|h| h.resources.len()).sum();
    let mut s = format!(
        "valid: fleet {:?}{}: {} host{}, {} resource{}, {} maintenance job{}\n",
        fleet.name,
        at_commit(tree),
        fleet.hosts.len(),
        plural(fleet.hosts.len()),
        resources,
        plural(resources),
        fleet.jobs.len(),
        plural(fleet.jobs.len()),
    );
    for h in &fleet.hosts {
        s.push_str(&format!(
            "  {:<16} {:<10} {:>3} resources  roles: {}\n",
            h.name,
            format!("{:?}", h.provider).to_lowercase(),
            h.resources.len(),
            h.roles.join(", ")
        ));
    }
    s.pop();
    s
}

pub(super) fn at_commit(tree: &ConfigTree) -> String {
    tree.commit
        .as_deref()
        .map(|c| format!(" at {}", &c[..c.len().min(12)]))
        .unwrap_or_else(|| " in the work tree".into())
}
