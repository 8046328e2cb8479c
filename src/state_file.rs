//! Files in the daemon's state directory (`proposals.json`, `history.json`,
//! `notify.json`, `forge-statuses.json`): each written atomically (a
//! temporary file, synced, renamed over the old one, the directory synced),
//! and never dropped without a word: one that cannot be read is set aside as
//! `NAME.unreadable` and named in a warning (the three read at start —
//! proposals, history, notify — in `/status` too), and the daemon starts
//! from what it can rebuild.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A state file that could not be read at start, and where it was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unreadable {
    pub file: String,
    pub kept_as: String,
    pub reason: String,
}

/// Read `path` as JSON. Missing: the default, silently (a first start).
/// Unreadable: the default, the file renamed to `NAME.unreadable` (an older
/// one there is replaced) and a warning naming both.
pub fn read<T: DeserializeOwned + Default>(path: &Path) -> (T, Option<Unreadable>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (T::default(), None),
        Err(e) => return (T::default(), Some(set_aside(path, e.to_string()))),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => (v, None),
        Err(e) => (T::default(), Some(set_aside(path, e.to_string()))),
    }
}

fn set_aside(path: &Path, reason: String) -> Unreadable {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".unreadable");
    let aside = PathBuf::from(aside);
    let kept = std::fs::rename(path, &aside).is_ok();
    let u = Unreadable {
        file: path.display().to_string(),
        kept_as: if kept {
            aside.display().to_string()
        } else {
            String::new()
        },
        reason,
    };
    tracing::warn!(
        file = %u.file,
        kept_as = %u.kept_as,
        reason = %u.reason,
        "a state file is unreadable: it was set aside and the daemon starts without what it held"
    );
    u
}

/// Write `value` as JSON to `path` atomically: readers and a crash see the
/// old file or the new one, whole.
pub fn write<T: Serialize + ?Sized>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_bytes(path, &bytes)
}

/// [`write`] for bytes already encoded.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a power cut only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tk-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_written_file_reads_back_and_a_missing_one_is_the_default_without_a_word() {
        let d = dir("roundtrip");
        let f = d.join("proposals.json");
        let (v, u): (BTreeMap<String, u32>, _) = read(&f);
        assert!(v.is_empty() && u.is_none());
        let mut m = BTreeMap::new();
        m.insert("refs/pull/1/head".to_string(), 7u32);
        write(&f, &m).unwrap();
        let (back, u): (BTreeMap<String, u32>, _) = read(&f);
        assert_eq!((back, u), (m, None));
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["proposals.json"], "no temporary file is left");
    }

    #[test]
    fn an_unreadable_file_is_set_aside_named_and_never_overwritten_unseen() {
        let d = dir("aside");
        let f = d.join("history.json");
        std::fs::write(&f, b"{not json").unwrap();
        let (v, u): (BTreeMap<String, u32>, _) = read(&f);
        assert!(v.is_empty());
        let u = u.expect("reported");
        assert_eq!(u.file, f.display().to_string());
        assert!(u.kept_as.ends_with("history.json.unreadable"), "{u:?}");
        assert!(u.reason.contains("key must be a string"), "{u:?}");
        assert_eq!(
            std::fs::read(d.join("history.json.unreadable")).unwrap(),
            b"{not json"
        );
        assert!(!f.exists());
    }
}
