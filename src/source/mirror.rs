//! The daemon's own bare mirror of the config repo: fetch the watched branch,
//! the status branch and the notes; push status and notes back with a lease
//! (a non-forced push of a commit built on the tip just fetched, so an update
//! someone else made in between is never overwritten; on conflict, fetch and
//! rebuild on top).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature};

/// The notes ref when `status.notes_ref` does not say otherwise.
pub const NOTES_REF: &str = "refs/notes/tidekeeper";
/// Attempts at a push that keeps losing races before giving up for now.
const PUSH_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("branch {branch} not found in {url}")]
    NoBranch { branch: String, url: String },
    #[error("push of {what} to {url} kept losing races ({attempts} attempts)")]
    PushRace {
        what: String,
        url: String,
        attempts: usize,
    },
    #[error("push of {what} to {url} failed: {message}")]
    Push {
        what: String,
        url: String,
        message: String,
    },
}

pub struct Mirror {
    pub path: PathBuf,
    pub url: String,
    pub branch: String,
    pub status_branch: String,
    /// Where notes go (`status.notes_ref`), and where the remote's are fetched to.
    notes_ref: String,
    remote_notes: String,
    pub access: Access,
    repo: Repository,
    /// Why the last host key check refused (libgit2 reports it generically).
    refused: std::cell::RefCell<Option<String>>,
}

/// How to reach a remote over the network.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Private key for ssh:// (else the ssh-agent).
    pub ssh_key: Option<PathBuf>,
    /// known_hosts entries pinning the git server's host key for ssh://:
    /// (host patterns, key type, key blob).
    pub known_hosts: Vec<(Vec<String>, String, Vec<u8>)>,
    /// Token for https:// (sent as the password of `x-access-token`).
    pub token: Option<String>,
}

impl Access {
    /// Parse known_hosts text: `host[,host…] type base64`.
    pub fn parse_known_hosts(text: &str) -> Vec<(Vec<String>, String, Vec<u8>)> {
        use base64::Engine;
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let hosts = f.next()?.split(',').map(String::from).collect();
                let kind = f.next()?.to_string();
                let key = base64::engine::general_purpose::STANDARD
                    .decode(f.next()?)
                    .ok()?;
                Some((hosts, kind, key))
            })
            .collect()
    }
}

/// The host (and non-default port) of an ssh:// URL, as known_hosts names it.
fn known_hosts_names(url: &str) -> Vec<String> {
    let rest = url.strip_prefix("ssh://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    match hostport.rsplit_once(':') {
        Some((h, p)) if p != "22" => vec![format!("[{h}]:{p}")],
        Some((h, _)) => vec![h.to_string(), format!("[{h}]:22")],
        None => vec![hostport.to_string()],
    }
}

/// Where the remote's notes ref is fetched to: `refs/notes/x` → `refs/remotes/origin-notes/x`.
fn remote_notes(notes_ref: &str) -> String {
    format!(
        "refs/remotes/origin-notes/{}",
        notes_ref.strip_prefix("refs/notes/").unwrap_or(notes_ref)
    )
}

/// A local ref update that another writer got in the way of.
fn lost_race(e: &git2::Error) -> bool {
    matches!(
        e.code(),
        git2::ErrorCode::Locked | git2::ErrorCode::Modified | git2::ErrorCode::Exists
    )
}

/// A short, growing, jittered pause before retrying a locked ref, so two
/// writers that collided do not collide again.
fn lock_backoff(attempt: usize) {
    use std::time::Duration;
    let b = crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
    std::thread::sleep(b.after(attempt as u32));
}

fn sig() -> Signature<'static> {
    Signature::now("tidekeeper", "tidekeeper@localhost").expect("valid signature")
}

impl Mirror {
    /// Open (or create) the bare mirror under `dir` for `url`.
    pub fn open(
        dir: &Path,
        url: &str,
        branch: &str,
        status_branch: &str,
        access: Access,
    ) -> Result<Mirror, MirrorError> {
        let path = dir.join("mirror.git");
        let repo = match Repository::open_bare(&path) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&path)
                    .map_err(|e| git2::Error::from_str(&e.to_string()))?;
                Repository::init_bare(&path)?
            }
        };
        match repo.find_remote("origin") {
            Ok(r) if r.url().ok() == Some(url) => {}
            Ok(_) => repo.remote_set_url("origin", url)?,
            Err(_) => {
                repo.remote("origin", url)?;
            }
        }
        Ok(Mirror {
            refused: Default::default(),
            access,
            path,
            url: url.to_string(),
            branch: branch.to_string(),
            status_branch: status_branch.to_string(),
            notes_ref: NOTES_REF.into(),
            remote_notes: remote_notes(NOTES_REF),
            repo,
        })
    }

    /// Write status to `branch` and notes to `notes_ref` (from the followed
    /// branch's `status:` settings); true when they changed.
    pub fn set_status_refs(&mut self, branch: &str, notes_ref: &str) -> bool {
        if self.status_branch == branch && self.notes_ref == notes_ref {
            return false;
        }
        self.status_branch = branch.to_string();
        self.notes_ref = notes_ref.to_string();
        self.remote_notes = remote_notes(notes_ref);
        true
    }

    /// Fetch the branch, the status branch and the notes; the branch's head.
    pub fn fetch(&self) -> Result<Oid, MirrorError> {
        let specs = [
            format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch),
            format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                self.status_branch
            ),
            format!("+{}:{}", self.notes_ref, self.remote_notes),
        ];
        // A missing status branch or notes ref is normal on first run; fetch
        // the watched branch alone first so its absence is the only error.
        self.refused.borrow_mut().take();
        self.fetch_refs(&[specs[0].as_str()])
            .map_err(|e| MirrorError::Fetch {
                url: self.url.clone(),
                message: self
                    .refused
                    .borrow_mut()
                    .take()
                    .unwrap_or_else(|| e.message().to_string()),
            })?;
        for spec in &specs[1..] {
            let _ = self.fetch_refs(&[spec.as_str()]);
        }
        self.head()
    }

    /// Credentials and host verification for network remotes: ssh:// host
    /// keys must match the pinned known_hosts (no trust on first use);
    /// https:// uses the system's certificate authorities.
    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut cb = git2::RemoteCallbacks::new();
        let names = known_hosts_names(&self.url);
        cb.certificate_check(move |cert, _host| {
            let Some(hk) = cert.as_hostkey() else {
                return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
            };
            let offered = hk.hostkey().unwrap_or_default();
            let pinned: Vec<_> = self
                .access
                .known_hosts
                .iter()
                .filter(|(hosts, _, _)| hosts.iter().any(|h| names.contains(h)))
                .collect();
            if pinned.iter().any(|(_, _, key)| key.as_slice() == offered) {
                return Ok(git2::CertificateCheckStatus::CertificateOk);
            }
            let msg = if pinned.is_empty() {
                format!(
                    "the host key of the git server {} is not pinned; add it to --git-known-hosts",
                    names.join(", ")
                )
            } else {
                format!(
                    "HOST KEY MISMATCH for the git server {}: refusing to connect",
                    names.join(", ")
                )
            };
            *self.refused.borrow_mut() = Some(msg.clone());
            Err(git2::Error::from_str(&msg))
        });
        let mut tried = false;
        cb.credentials(move |_url, user, allowed| {
            // libgit2 asks again after a refusal; offer each credential once.
            if std::mem::replace(&mut tried, true) {
                return Err(git2::Error::from_str(
                    "the git server refused tidekeeper's credentials",
                ));
            }
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                let user = user.unwrap_or("git");
                return match &self.access.ssh_key {
                    Some(key) => git2::Cred::ssh_key(user, None, key, None),
                    None => git2::Cred::ssh_key_from_agent(user),
                };
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(t) = &self.access.token
            {
                return git2::Cred::userpass_plaintext("x-access-token", t);
            }
            Err(git2::Error::from_str(
                "no credentials for the config repo (set --git-ssh-key or TIDEKEEPER_GIT_TOKEN)",
            ))
        });
        cb
    }

    fn fetch_refs(&self, specs: &[&str]) -> Result<(), git2::Error> {
        let mut remote = self.repo.find_remote("origin")?;
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(self.callbacks());
        remote.fetch(specs, Some(&mut opts), None)
    }

    /// Fetch proposed changes (e.g. `refs/pull/*/head`) and list their heads
    /// with their commit times. Refs deleted on the remote are gone from the
    /// list (their objects stay, so the next fetch is cheap).
    pub fn fetch_proposals(
        &self,
        patterns: &[String],
    ) -> Result<Vec<(String, Oid, i64)>, MirrorError> {
        let mut out = Vec::new();
        if let Ok(refs) = self.repo.references_glob("refs/remotes/origin-proposed/*") {
            let names: Vec<String> = refs
                .flatten()
                .filter_map(|r| r.name().ok().map(String::from))
                .collect();
            for n in names {
                if let Ok(mut r) = self.repo.find_reference(&n) {
                    let _ = r.delete();
                }
            }
        }
        for pat in patterns {
            let spec = format!(
                "+{pat}:refs/remotes/origin-proposed/{}",
                pat.trim_start_matches("refs/")
            );
            self.fetch_refs(&[spec.as_str()])
                .map_err(|e| MirrorError::Fetch {
                    url: self.url.clone(),
                    message: e.message().to_string(),
                })?;
        }
        if let Ok(refs) = self.repo.references_glob("refs/remotes/origin-proposed/*") {
            for r in refs.flatten() {
                if let (Ok(name), Some(id)) = (r.name(), r.target()) {
                    let name = format!(
                        "refs/{}",
                        name.trim_start_matches("refs/remotes/origin-proposed/")
                    );
                    let time = self
                        .repo
                        .find_commit(id)
                        .map(|c| c.time().seconds())
                        .unwrap_or(0);
                    out.push((name, id, time));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The tree of `commit` (a merge whose tree equals a PR head's tree
    /// applies exactly what was reviewed there).
    pub fn tree_of(&self, commit: &str) -> Option<String> {
        let oid = Oid::from_str(commit).ok()?;
        Some(self.repo.find_commit(oid).ok()?.tree_id().to_string())
    }

    /// The first line of `commit`'s message and its author's name, as the
    /// dashboard lists them.
    pub fn commit_info(&self, commit: &str) -> Option<(String, String)> {
        let oid = Oid::from_str(commit).ok()?;
        let c = self.repo.find_commit(oid).ok()?;
        let subject = c.summary().ok().flatten().unwrap_or_default().to_string();
        let author = c.author().name().unwrap_or_default().to_string();
        Some((subject, author))
    }

    /// The parents of `commit` (a merge's second parent is the head merged).
    pub fn parents_of(&self, commit: &str) -> Vec<String> {
        let Some(c) = Oid::from_str(commit)
            .ok()
            .and_then(|oid| self.repo.find_commit(oid).ok())
        else {
            return Vec::new();
        };
        c.parent_ids().map(|p| p.to_string()).collect()
    }

    pub fn head(&self) -> Result<Oid, MirrorError> {
        self.repo
            .refname_to_id(&format!("refs/remotes/origin/{}", self.branch))
            .map_err(|_| MirrorError::NoBranch {
                branch: self.branch.clone(),
                url: self.url.clone(),
            })
    }

    /// A file from the status branch as last fetched.
    pub fn status_file(&self, path: &str) -> Option<Vec<u8>> {
        let id = self
            .repo
            .refname_to_id(&format!("refs/remotes/origin/{}", self.status_branch))
            .ok()?;
        let tree = self.repo.find_commit(id).ok()?.tree().ok()?;
        let entry = tree.get_path(Path::new(path)).ok()?;
        let blob = self.repo.find_blob(entry.id()).ok()?;
        Some(blob.content().to_vec())
    }

    /// The commits applied to the whole fleet, newest first, as the status
    /// branch's history records them: (time of the status commit that first
    /// showed it, commit), at most `limit`, looking back at most 500 status
    /// commits (read once, at start).
    pub fn status_timeline(&self, limit: usize) -> Vec<(i64, String)> {
        let Ok(id) = self
            .repo
            .refname_to_id(&format!("refs/remotes/origin/{}", self.status_branch))
        else {
            return vec![];
        };
        let applied_in = |c: &git2::Commit| -> Option<String> {
            let tree = c.tree().ok()?;
            let entry = tree.get_path(Path::new("status/fleet.json")).ok()?;
            let blob = self.repo.find_blob(entry.id()).ok()?;
            let v: serde_json::Value = serde_json::from_slice(blob.content()).ok()?;
            v["applied_commit"].as_str().map(str::to_string)
        };
        // Newest first; an entry is where the applied commit changed.
        let mut out: Vec<(i64, String)> = Vec::new();
        let mut newer: Option<(i64, String)> = None;
        let mut commit = self.repo.find_commit(id).ok();
        for _ in 0..500 {
            let Some(c) = commit else { break };
            let applied = applied_in(&c);
            if let Some((t, a)) = newer.take()
                && applied.as_deref() != Some(a.as_str())
            {
                out.push((t, a));
                if out.len() >= limit {
                    return out;
                }
            }
            newer = applied.map(|a| (c.time().seconds(), a));
            commit = c.parent(0).ok();
        }
        out.extend(newer);
        out.truncate(limit);
        out
    }

    /// The note on `commit`, fetched fresh.
    pub fn note(&self, commit: Oid) -> Option<String> {
        let _ = self.fetch_refs(&[format!("+{}:{}", self.notes_ref, self.remote_notes).as_str()]);
        let n = self
            .repo
            .find_note(Some(self.remote_notes.as_str()), commit)
            .ok()?;
        n.message().ok().map(String::from)
    }

    fn push(&self, refspec: &str, what: &str) -> Result<bool, MirrorError> {
        let mut remote = self.repo.find_remote("origin")?;
        let mut rejected: Option<String> = None;
        let mut cb = self.callbacks();
        cb.push_update_reference(|_, status| {
            if let Some(s) = status {
                rejected = Some(s.to_string());
            }
            Ok(())
        });
        let mut opts = git2::PushOptions::new();
        opts.remote_callbacks(cb);
        match remote.push(&[refspec], Some(&mut opts)) {
            Ok(()) => {}
            Err(e) if e.code() == git2::ErrorCode::NotFastForward => return Ok(false),
            Err(e)
                if e.message().contains("fast-forward") || e.message().contains("fastforward") =>
            {
                return Ok(false);
            }
            Err(e) => {
                return Err(MirrorError::Push {
                    what: what.into(),
                    url: self.url.clone(),
                    message: e.message().to_string(),
                });
            }
        }
        drop(opts);
        Ok(rejected.is_none())
    }

    /// The config repo itself when it is a non-bare repository on this
    /// machine: git cannot push into those, so refs are updated there
    /// directly, with a compare-and-swap as the lease.
    fn local_target(&self) -> Option<Repository> {
        let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
        if self.url.contains("://") && !self.url.starts_with("file://") {
            return None;
        }
        let repo = Repository::open(path).ok()?;
        (!repo.is_bare()).then_some(repo)
    }

    fn push_status_local(
        &self,
        target: &Repository,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<usize, MirrorError> {
        let name = format!("refs/heads/{}", self.status_branch);
        for attempt in 1..=PUSH_ATTEMPTS {
            let parent = target
                .refname_to_id(&name)
                .ok()
                .and_then(|id| target.find_commit(id).ok());
            let base = parent.as_ref().and_then(|c| c.tree().ok());
            let tree = build_tree(target, base.as_ref(), files)?;
            if base.as_ref().is_some_and(|b| b.id() == tree) {
                return Ok(attempt);
            }
            let tree = target.find_tree(tree)?;
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            let id = target.commit(None, &sig(), &sig(), message, &tree, &parents)?;
            let updated = match &parent {
                Some(p) => target.reference_matching(&name, id, true, p.id(), message),
                None => target.reference(&name, id, false, message),
            };
            match updated {
                Ok(_) => return Ok(attempt),
                // Another writer (a second daemon, a user's git) moved the
                // ref or holds its lock file for a moment: build on its tip.
                Err(e) if lost_race(&e) => lock_backoff(attempt),
                Err(e) => return Err(e.into()),
            }
        }
        Err(MirrorError::PushRace {
            what: "the status branch".into(),
            url: self.url.clone(),
            attempts: PUSH_ATTEMPTS,
        })
    }

    /// Write `files` (path → content) onto the status branch, keeping every
    /// other file there, and push without force. Retries on a lost race.
    pub fn push_status(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<usize, MirrorError> {
        if let Some(target) = self.local_target() {
            let n = self.push_status_local(&target, files, message)?;
            let spec = format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                self.status_branch
            );
            let _ = self.fetch_refs(&[spec.as_str()]);
            return Ok(n);
        }
        let local = format!("refs/tidekeeper/status-out/{}", self.status_branch);
        for attempt in 1..=PUSH_ATTEMPTS {
            if attempt > 1 {
                let spec = format!(
                    "+refs/heads/{0}:refs/remotes/origin/{0}",
                    self.status_branch
                );
                let _ = self.fetch_refs(&[spec.as_str()]);
            }
            let parent = self
                .repo
                .refname_to_id(&format!("refs/remotes/origin/{}", self.status_branch))
                .ok()
                .and_then(|id| self.repo.find_commit(id).ok());
            let base = parent.as_ref().and_then(|c| c.tree().ok());
            let tree = build_tree(&self.repo, base.as_ref(), files)?;
            if let (Some(_), Some(b)) = (&parent, &base)
                && b.id() == tree
            {
                return Ok(attempt); // nothing new to say
            }
            let tree = self.repo.find_tree(tree)?;
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            let id = self
                .repo
                .commit(None, &sig(), &sig(), message, &tree, &parents)?;
            self.repo.reference(&local, id, true, "status")?;
            if self.push(
                &format!("{local}:refs/heads/{}", self.status_branch),
                "the status branch",
            )? {
                self.repo.reference(
                    &format!("refs/remotes/origin/{}", self.status_branch),
                    id,
                    true,
                    "pushed",
                )?;
                return Ok(attempt);
            }
        }
        Err(MirrorError::PushRace {
            what: "the status branch".into(),
            url: self.url.clone(),
            attempts: PUSH_ATTEMPTS,
        })
    }

    /// Add (or replace) the note on `commit` in `repo`'s notes ref.
    fn write_note(&self, repo: &Repository, commit: Oid, text: &str) -> Result<Oid, git2::Error> {
        repo.note(
            &sig(),
            &sig(),
            Some(self.notes_ref.as_str()),
            commit,
            text,
            true,
        )
    }

    /// Add (or replace) the note on `commit` and push the notes ref without force.
    pub fn push_note(&self, commit: Oid, text: &str) -> Result<usize, MirrorError> {
        if let Some(target) = self.local_target() {
            for attempt in 1..=PUSH_ATTEMPTS {
                match self.write_note(&target, commit, text) {
                    Ok(_) => {
                        let _ = self.fetch_refs(&[format!(
                            "+{}:{}",
                            self.notes_ref, self.remote_notes
                        )
                        .as_str()]);
                        return Ok(attempt);
                    }
                    // libgit2 updates the notes ref with a compare-and-swap.
                    Err(e) if lost_race(&e) => lock_backoff(attempt),
                    Err(e) => return Err(e.into()),
                }
            }
            return Err(MirrorError::PushRace {
                what: "the notes".into(),
                url: self.url.clone(),
                attempts: PUSH_ATTEMPTS,
            });
        }
        for attempt in 1..=PUSH_ATTEMPTS {
            let spec = format!("+{}:{}", self.notes_ref, self.remote_notes);
            let _ = self.fetch_refs(&[spec.as_str()]);
            // Start from the remote's notes so nobody's note is lost.
            match self.repo.refname_to_id(&self.remote_notes) {
                Ok(id) => {
                    self.repo
                        .reference(&self.notes_ref, id, true, "sync notes")?;
                }
                Err(_) => {
                    if let Ok(mut r) = self.repo.find_reference(&self.notes_ref) {
                        r.delete()?;
                    }
                }
            }
            self.write_note(&self.repo, commit, text)?;
            if self.push(&format!("{0}:{0}", self.notes_ref), "the notes")? {
                let id = self.repo.refname_to_id(&self.notes_ref)?;
                self.repo
                    .reference(&self.remote_notes, id, true, "pushed")?;
                return Ok(attempt);
            }
        }
        Err(MirrorError::PushRace {
            what: "the notes".into(),
            url: self.url.clone(),
            attempts: PUSH_ATTEMPTS,
        })
    }
}

/// A tree like `base` with `files` written in (nested paths supported).
fn build_tree(
    repo: &Repository,
    base: Option<&git2::Tree>,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Oid, MirrorError> {
    // Group by first path component and recurse.
    let mut here: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut below: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (p, data) in files {
        match p.split_once('/') {
            Some((dir, rest)) => {
                below
                    .entry(dir.to_string())
                    .or_default()
                    .insert(rest.to_string(), data.clone());
            }
            None => {
                here.insert(p, data);
            }
        }
    }
    let mut tb = repo.treebuilder(base)?;
    for (name, data) in here {
        let blob = repo.blob(data)?;
        tb.insert(name, blob, 0o100644)?;
    }
    for (dir, sub) in below {
        let sub_base = base
            .and_then(|b| b.get_name(&dir).map(|e| e.id()))
            .and_then(|id| repo.find_tree(id).ok());
        let id = build_tree(repo, sub_base.as_ref(), &sub)?;
        tb.insert(&dir, id, 0o040000)?;
    }
    Ok(tb.write()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_ref_locked_for_a_moment_is_written_once_the_lock_is_gone() {
        let dir = std::env::temp_dir().join(format!("tk-mirror-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let work = dir.join("fleet");
        let repo = Repository::init(&work).unwrap();
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let tree = repo.find_tree(tree).unwrap();
        repo.commit(Some("HEAD"), &sig(), &sig(), "init", &tree, &[])
            .unwrap();
        let m = Mirror::open(
            &dir.join("state"),
            work.to_str().unwrap(),
            "master",
            "tidekeeper/status",
            Access::default(),
        )
        .unwrap();
        let lock = work.join(".git/refs/heads/tidekeeper/status.lock");
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, "").unwrap();
        let held = lock.clone();
        let other = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(40));
            std::fs::remove_file(held).unwrap();
        });
        let files = BTreeMap::from([("status/fleet.json".to_string(), b"{}".to_vec())]);
        let attempts = m.push_status(&files, "status").unwrap();
        other.join().unwrap();
        assert!(attempts > 1, "the lock was there at first");
        let id = repo.refname_to_id("refs/heads/tidekeeper/status").unwrap();
        let tree = repo.find_commit(id).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("status/fleet.json")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
