//! Source: the config repo as it is in one commit.
//!
//! The model never reads a working tree: [`ConfigTree`] holds the files of a
//! commit's tree in memory (read with git2), so what is validated is exactly
//! what was committed. Tests build trees directly with [`ConfigTree::insert_file`].
//!
//! - [`mirror`]: the daemon's bare mirror of the repo: fetch the branch and
//!   proposals; push the status branch and notes with a lease.

pub mod mirror;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file larger than this is not read; the model reports it where it is used.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// A whole config tree larger than this is refused.
pub const MAX_TREE_BYTES: u64 = 512 * 1024 * 1024;
/// A config tree with more entries than this is refused.
pub const MAX_TREE_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "cannot open git repository at {path}: {message}\n  help: pass --repo with the path of a git repository (the config repo)"
    )]
    Open { path: PathBuf, message: String },
    #[error(
        "cannot find {refname} in {path}: {message}\n  help: pass --ref with a branch, tag or commit that exists"
    )]
    Ref {
        path: PathBuf,
        refname: String,
        message: String,
    },
    #[error("cannot read the tree of {refname}: {message}")]
    Read { refname: String, message: String },
    #[error(
        "the config repo at {refname} is too large ({what}); tidekeeper reads at most {MAX_TREE_ENTRIES} entries and {MAX_TREE_BYTES} bytes"
    )]
    TooLarge { refname: String, what: String },
    #[error("cannot create {path}: {message}")]
    Init { path: PathBuf, message: String },
}

/// One entry of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        bytes: Vec<u8>,
        executable: bool,
    },
    /// A symbolic link and the path it points to. Never followed.
    Symlink(String),
    /// A blob over [`MAX_FILE_BYTES`], with its size; its content was not read.
    TooLarge(u64),
    /// A submodule; its content is not part of the config.
    Submodule,
}

/// The files of the config repo at one commit, keyed by `/`-separated path.
#[derive(Debug, Clone, Default)]
pub struct ConfigTree {
    entries: BTreeMap<String, Entry>,
    /// The commit the tree was read from, when it came from git.
    pub commit: Option<String>,
}

impl ConfigTree {
    /// The repo's `policies/*.rego`, as (path, text).
    pub fn policies(&self) -> Vec<(String, String)> {
        self.under("policies")
            .filter(|(p, _)| p.ends_with(".rego"))
            .filter_map(|(p, _)| self.text(p).map(|t| (p.to_string(), t.to_string())))
            .collect()
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert_file(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.entries.insert(
            path.into(),
            Entry::File {
                bytes: bytes.into(),
                executable: false,
            },
        );
    }

    pub fn insert_symlink(&mut self, path: impl Into<String>, target: impl Into<String>) {
        self.entries
            .insert(path.into(), Entry::Symlink(target.into()));
    }

    pub fn insert(&mut self, path: impl Into<String>, entry: Entry) {
        self.entries.insert(path.into(), entry);
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(path)
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The bytes of a regular file, if `path` is one.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.entries.get(path) {
            Some(Entry::File { bytes, .. }) => Some(bytes),
            _ => None,
        }
    }

    /// Text of a file, lossily decoded (for snippets in error output).
    pub fn text(&self, path: &str) -> Option<String> {
        self.file(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn paths(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Entries whose path starts with `dir/`, recursively, in path order.
    pub fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, e)| (p.as_str(), e))
    }

    /// Whether `dir` holds anything.
    pub fn has_dir(&self, dir: &str) -> bool {
        self.under(dir).next().is_some()
    }

    /// The first symlink among `path` and its parent directories, if any.
    pub fn symlink_on_path(&self, path: &str) -> Option<(&str, &str)> {
        let mut end = 0;
        for part in path.split('/') {
            end += part.len();
            let prefix = &path[..end];
            if let Some((p, Entry::Symlink(t))) = self.entries.get_key_value(prefix) {
                return Some((p.as_str(), t.as_str()));
            }
            end += 1;
        }
        None
    }

    /// Read the tree of `refname` (a branch, tag, commit or `HEAD`) in the git repo at `repo`.
    pub fn from_git(repo: &Path, refname: &str) -> Result<ConfigTree, SourceError> {
        let git = git2::Repository::open(repo).map_err(|e| SourceError::Open {
            path: repo.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let object = git.revparse_single(refname).map_err(|e| SourceError::Ref {
            path: repo.to_path_buf(),
            refname: refname.to_string(),
            message: e.message().to_string(),
        })?;
        let commit = object.peel_to_commit().map_err(|e| SourceError::Ref {
            path: repo.to_path_buf(),
            refname: refname.to_string(),
            message: e.message().to_string(),
        })?;
        let tree = commit.tree().map_err(|e| read_err(refname, e))?;
        let odb = git.odb().map_err(|e| read_err(refname, e))?;
        let mut out = ConfigTree {
            entries: BTreeMap::new(),
            commit: Some(commit.id().to_string()),
        };
        let mut total: u64 = 0;
        let mut failure: Option<SourceError> = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            let Ok(name) = entry.name() else {
                return git2::TreeWalkResult::Skip;
            };
            let path = format!("{dir}{name}");
            let item = match entry.filemode() {
                0o040000 => return git2::TreeWalkResult::Ok,
                0o160000 => Entry::Submodule,
                mode => {
                    let (size, _) = match odb.read_header(entry.id()) {
                        Ok(h) => h,
                        Err(e) => {
                            failure = Some(read_err(refname, e));
                            return git2::TreeWalkResult::Abort;
                        }
                    };
                    total += size as u64;
                    if total > MAX_TREE_BYTES || out.entries.len() >= MAX_TREE_ENTRIES {
                        failure = Some(SourceError::TooLarge {
                            refname: refname.to_string(),
                            what: format!("{} entries, {} bytes so far", out.entries.len(), total),
                        });
                        return git2::TreeWalkResult::Abort;
                    }
                    if mode != 0o120000 && size as u64 > MAX_FILE_BYTES {
                        Entry::TooLarge(size as u64)
                    } else {
                        let blob = match git.find_blob(entry.id()) {
                            Ok(b) => b,
                            Err(e) => {
                                failure = Some(read_err(refname, e));
                                return git2::TreeWalkResult::Abort;
                            }
                        };
                        if mode == 0o120000 {
                            Entry::Symlink(String::from_utf8_lossy(blob.content()).into_owned())
                        } else {
                            Entry::File {
                                bytes: blob.content().to_vec(),
                                executable: mode == 0o100755,
                            }
                        }
                    }
                }
            };
            out.entries.insert(path, item);
            git2::TreeWalkResult::Ok
        })
        .map_err(|e| failure.take().unwrap_or_else(|| read_err(refname, e)))?;
        if let Some(f) = failure {
            return Err(f);
        }
        Ok(out)
    }
}

/// The top of the work tree of the git repository `path` is in (a
/// subdirectory of a config repo finds the repo, as git does).
pub fn discover(path: &Path) -> Result<PathBuf, SourceError> {
    let git = git2::Repository::discover(path).map_err(|e| SourceError::Open {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    Ok(git
        .workdir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| git.path().to_path_buf()))
}

/// Config files in the work tree that differ from HEAD (changed, new or
/// deleted; ignored files left out), by path. Empty for a bare repository.
pub fn uncommitted(repo: &Path) -> Vec<String> {
    let Ok(git) = git2::Repository::open(repo) else {
        return vec![];
    };
    if git.is_bare() {
        return vec![];
    }
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    let Ok(statuses) = git.statuses(Some(&mut opts)) else {
        return vec![];
    };
    statuses
        .iter()
        .filter(|s| s.status() != git2::Status::CURRENT)
        .filter_map(|s| s.path().ok().map(String::from))
        .filter(|p| is_config_path(p))
        .collect()
}

/// What the model reads (everything else in a config repo is the user's).
fn is_config_path(p: &str) -> bool {
    matches!(p, "tidekeeper.yaml" | "schedules.yaml" | "known_hosts")
        || [
            "hosts/",
            "roles/",
            "templates/",
            "files/",
            "secrets/",
            "policies/",
            "stacks/",
        ]
        .iter()
        .any(|d| p.starts_with(d))
}

impl ConfigTree {
    /// The files on disk in the work tree of `repo` (not ignored by git,
    /// `.git` left out), with the same limits as a commit's tree.
    pub fn from_worktree(repo: &Path) -> Result<ConfigTree, SourceError> {
        let git = git2::Repository::open(repo).map_err(|e| SourceError::Open {
            path: repo.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let root = git.workdir().ok_or_else(|| SourceError::Read {
            refname: "the work tree".into(),
            message: format!(
                "{} is a bare repository: it has no work tree",
                repo.display()
            ),
        })?;
        let mut out = ConfigTree::default();
        let mut total = 0u64;
        let mut stack = vec![root.to_path_buf()];
        let io = |p: &Path, e: std::io::Error| SourceError::Read {
            refname: "the work tree".into(),
            message: format!("{}: {e}", p.display()),
        };
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
                let e = e.map_err(|e| io(&dir, e))?;
                let path = e.path();
                let rel = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel == ".git" || git.is_path_ignored(Path::new(&rel)).unwrap_or(false) {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
                if out.entries.len() >= MAX_TREE_ENTRIES || total > MAX_TREE_BYTES {
                    return Err(SourceError::TooLarge {
                        refname: "the work tree".into(),
                        what: format!("{} entries, {total} bytes so far", out.entries.len()),
                    });
                }
                let entry = if meta.is_dir() {
                    stack.push(path);
                    continue;
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).map_err(|e| io(&path, e))?;
                    Entry::Symlink(target.to_string_lossy().into_owned())
                } else if meta.len() > MAX_FILE_BYTES {
                    Entry::TooLarge(meta.len())
                } else {
                    use std::os::unix::fs::PermissionsExt;
                    total += meta.len();
                    Entry::File {
                        bytes: std::fs::read(&path).map_err(|e| io(&path, e))?,
                        executable: meta.permissions().mode() & 0o111 != 0,
                    }
                };
                out.entries.insert(rel, entry);
            }
        }
        Ok(out)
    }
}

fn read_err(refname: &str, e: git2::Error) -> SourceError {
    SourceError::Read {
        refname: refname.to_string(),
        message: e.message().to_string(),
    }
}

/// The example fleet shipped in the binary (`repo-template/`).
pub fn template_tree() -> ConfigTree {
    let mut tree = ConfigTree::new();
    for (path, bytes) in TEMPLATE_FILES {
        tree.insert_file(*path, *bytes);
    }
    tree
}

include!(concat!(env!("OUT_DIR"), "/template_files.rs"));

/// Write `tree` into `dir` (which must not exist or be empty) as a new git
/// repository with one commit on `main`.
pub fn init_repo(dir: &Path, tree: &ConfigTree, message: &str) -> Result<String, SourceError> {
    let init_err = |m: String| SourceError::Init {
        path: dir.to_path_buf(),
        message: m,
    };
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| init_err(e.to_string()))?
            .next()
            .is_some()
    {
        return Err(init_err(
            "the directory is not empty; choose a new directory".into(),
        ));
    }
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let git =
        git2::Repository::init_opts(dir, &opts).map_err(|e| init_err(e.message().to_string()))?;
    for (path, entry) in tree.paths() {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| init_err(format!("{}: {e}", parent.display())))?;
        }
        match entry {
            Entry::File { bytes, .. } => std::fs::write(&target, bytes)
                .map_err(|e| init_err(format!("{}: {e}", target.display())))?,
            Entry::Symlink(t) => std::os::unix::fs::symlink(t, &target)
                .map_err(|e| init_err(format!("{}: {e}", target.display())))?,
            _ => {}
        }
    }
    commit_all(&git, message).map_err(|e| init_err(e.message().to_string()))
}

/// Stage everything in the work tree of `git` and commit it on HEAD.
pub fn commit_all(git: &git2::Repository, message: &str) -> Result<String, git2::Error> {
    let mut index = git.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.update_all(["*"], None)?;
    index.write()?;
    let tree_id = index.write_tree()?;
    let tree = git.find_tree(tree_id)?;
    let sig = git
        .signature()
        .or_else(|_| git2::Signature::now("tidekeeper", "tidekeeper@localhost"))?;
    let parent = git.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let id = git.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    Ok(id.to_string())
}
