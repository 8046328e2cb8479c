//! Shell completion of the names a config repo defines — hosts, groups,
//! labels, jobs and notification sinks — computed by tidekeeper itself when
//! the shell asks (clap's dynamic completion: `COMPLETE=bash tidekeeper`).
//! The repo is TIDEKEEPER_REPO, else the one around the working directory,
//! read at its HEAD commit as every command reads it. A repo that does not
//! load completes nothing rather than printing errors into the shell.

use clap_complete::engine::CompletionCandidate;
use std::ffi::OsStr;

use crate::model::{self, Fleet};
use crate::source::{self, ConfigTree};

fn fleet() -> Option<Fleet> {
    let repo = std::env::var_os("TIDEKEEPER_REPO").unwrap_or_else(|| ".".into());
    let path = source::discover(std::path::Path::new(&repo)).ok()?;
    let tree = ConfigTree::from_git(&path, "HEAD").ok()?;
    model::load(&tree).ok()
}

fn matching(
    current: &OsStr,
    names: impl IntoIterator<Item = (String, String)>,
) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    let mut seen = std::collections::BTreeSet::new();
    names
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix.as_ref()) && seen.insert(n.clone()))
        .map(|(n, help)| CompletionCandidate::new(n).help(Some(help.into())))
        .collect()
}

/// `--host`: each host, and each `count: N` group by its name.
pub(super) fn hosts(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(fleet) = fleet() else {
        return Vec::new();
    };
    let groups = fleet.hosts.iter().filter_map(|h| {
        let g = h.group.clone()?;
        let n = fleet
            .hosts
            .iter()
            .filter(|o| o.group.as_deref() == Some(&g))
            .count();
        Some((g, format!("group of {n} hosts")))
    });
    let hosts = fleet.hosts.iter().map(|h| {
        (
            h.name.clone(),
            format!("{:?} host", h.provider).to_lowercase(),
        )
    });
    matching(current, groups.chain(hosts).collect::<Vec<_>>())
}

/// `show`: a host, or a saved plan's file.
pub(super) fn hosts_or_files(current: &OsStr) -> Vec<CompletionCandidate> {
    use clap_complete::engine::ValueCompleter;
    let mut all = hosts(current);
    all.extend(clap_complete::engine::PathCompleter::file().complete(current));
    all
}

/// `-l`: every `key=value` a host carries.
pub(super) fn labels(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(fleet) = fleet() else {
        return Vec::new();
    };
    let mut pairs = std::collections::BTreeMap::<String, usize>::new();
    for h in &fleet.hosts {
        for (k, v) in &h.labels {
            *pairs.entry(format!("{k}={v}")).or_default() += 1;
        }
    }
    matching(
        current,
        pairs.into_iter().map(|(p, n)| (p, format!("{n} host(s)"))),
    )
}

/// A maintenance job's name (schedules.yaml).
pub(super) fn jobs(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(fleet) = fleet() else {
        return Vec::new();
    };
    let jobs = fleet
        .jobs
        .iter()
        .map(|j| (j.name.clone(), format!("cron {}", j.cron)));
    matching(current, jobs.collect::<Vec<_>>())
}

/// A notification sink's name (tidekeeper.yaml `notify.sinks`).
pub(super) fn sinks(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(fleet) = fleet() else {
        return Vec::new();
    };
    let sinks = fleet
        .settings
        .notify
        .sinks
        .keys()
        .map(|s| (s.clone(), "sink".to_string()));
    matching(current, sinks.collect::<Vec<_>>())
}
