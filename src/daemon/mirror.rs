//! The daemon's own bare mirror of the config repo: fetch the watched branch,
//! the status branch and the notes; push status and notes back with a lease
//! (a non-forced push of a commit built on the tip just fetched, so an update
//! someone else made in between is never overwritten; on conflict, fetch and
//! rebuild on top).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature};

pub const NOTES_REF: &str = "refs/notes/tidekeeper";
const REMOTE_NOTES: &str = "refs/remotes/origin-notes/tidekeeper";
/// Attempts at a push that keeps losing races before giving up for now.
const PUSH_ATTEMPTS: usize = 5;

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
    repo: Repository,
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
            path,
            url: url.to_string(),
            branch: branch.to_string(),
            status_branch: status_branch.to_string(),
            repo,
        })
    }

    /// Fetch the branch, the status branch and the notes; the branch's head.
    pub fn fetch(&self) -> Result<Oid, MirrorError> {
        let mut remote = self.repo.find_remote("origin")?;
        let specs = [
            format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch),
            format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                self.status_branch
            ),
            format!("+{NOTES_REF}:{REMOTE_NOTES}"),
        ];
        // A missing status branch or notes ref is normal on first run; fetch
        // the watched branch alone first so its absence is the only error.
        remote
            .fetch(&specs[..1], None, None)
            .map_err(|e| MirrorError::Fetch {
                url: self.url.clone(),
                message: e.message().to_string(),
            })?;
        for spec in &specs[1..] {
            let _ = remote.fetch(&[spec.as_str()], None, None);
        }
        self.head()
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

    /// The note on `commit`, as last fetched.
    pub fn note(&self, commit: Oid) -> Option<String> {
        let n = self.repo.find_note(Some(REMOTE_NOTES), commit).ok()?;
        n.message().ok().map(String::from)
    }

    fn push(&self, refspec: &str, what: &str) -> Result<bool, MirrorError> {
        let mut remote = self.repo.find_remote("origin")?;
        let mut rejected: Option<String> = None;
        let mut cb = git2::RemoteCallbacks::new();
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
                Err(e)
                    if matches!(
                        e.code(),
                        git2::ErrorCode::Modified | git2::ErrorCode::Exists
                    ) =>
                {
                    continue;
                }
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
            let mut remote = self.repo.find_remote("origin")?;
            let spec = format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                self.status_branch
            );
            let _ = remote.fetch(&[spec.as_str()], None, None);
            return Ok(n);
        }
        let local = format!("refs/tidekeeper/status-out/{}", self.status_branch);
        for attempt in 1..=PUSH_ATTEMPTS {
            if attempt > 1 {
                let mut remote = self.repo.find_remote("origin")?;
                let spec = format!(
                    "+refs/heads/{0}:refs/remotes/origin/{0}",
                    self.status_branch
                );
                let _ = remote.fetch(&[spec.as_str()], None, None);
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

    /// Add (or replace) the note on `commit` and push the notes ref without force.
    pub fn push_note(&self, commit: Oid, text: &str) -> Result<usize, MirrorError> {
        if let Some(target) = self.local_target() {
            target.note(&sig(), &sig(), Some(NOTES_REF), commit, text, true)?;
            return Ok(1);
        }
        for attempt in 1..=PUSH_ATTEMPTS {
            let mut remote = self.repo.find_remote("origin")?;
            let spec = format!("+{NOTES_REF}:{REMOTE_NOTES}");
            let _ = remote.fetch(&[spec.as_str()], None, None);
            // Start from the remote's notes so nobody's note is lost.
            match self.repo.refname_to_id(REMOTE_NOTES) {
                Ok(id) => {
                    self.repo.reference(NOTES_REF, id, true, "sync notes")?;
                }
                Err(_) => {
                    if let Ok(mut r) = self.repo.find_reference(NOTES_REF) {
                        r.delete()?;
                    }
                }
            }
            self.repo
                .note(&sig(), &sig(), Some(NOTES_REF), commit, text, true)?;
            if self.push(&format!("{NOTES_REF}:{NOTES_REF}"), "the notes")? {
                let id = self.repo.refname_to_id(NOTES_REF)?;
                self.repo.reference(REMOTE_NOTES, id, true, "pushed")?;
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
