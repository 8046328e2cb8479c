//! `apt_repositories:` — an APT source (deb822 `.sources` file) and its
//! signing key, as ordinary files under /etc/apt. Files under /etc/apt are
//! applied before packages, and `apt-get update` runs in that same apply
//! only when one of them changed, so a package from a new repository
//! installs on the first run and an unchanged fleet never updates lists.

use crate::model::desired::AptRepoResource;

/// Where sources and keys go.
pub(crate) const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
pub(crate) const KEYRINGS_DIR: &str = "/etc/apt/keyrings";

/// APT's own configuration: a change to any of it needs `apt-get update`
/// before packages are installed.
pub(crate) fn is_apt_config(path: &str) -> bool {
    path.starts_with("/etc/apt/")
}

/// The key file's path: `.asc` for an ASCII-armored key, `.gpg` for a
/// binary one (APT tells them apart by the name).
pub(crate) fn key_path(r: &AptRepoResource) -> Option<String> {
    let key = r.key.as_ref()?;
    let armored = key
        .bytes
        .starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
    Some(format!(
        "{KEYRINGS_DIR}/{}.{}",
        r.name,
        if armored { "asc" } else { "gpg" }
    ))
}

/// The files of a repository: its key (if any) and its source, (path, content).
pub(crate) fn files(r: &AptRepoResource) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let key = key_path(r);
    if let (Some(path), Some(k)) = (&key, &r.key) {
        out.push((path.clone(), k.bytes.clone()));
    }
    out.push((
        format!("{SOURCES_DIR}/{}.sources", r.name),
        source(r, key.as_deref()).into_bytes(),
    ));
    out
}

/// The deb822 source.
pub(crate) fn source(r: &AptRepoResource, key: Option<&str>) -> String {
    let mut s = format!(
        "# Managed by tidekeeper.\nTypes: deb\nURIs: {}\nSuites: {}\n",
        r.uris.join(" "),
        r.suites.join(" ")
    );
    if !r.components.is_empty() {
        s.push_str(&format!("Components: {}\n", r.components.join(" ")));
    }
    if !r.architectures.is_empty() {
        s.push_str(&format!("Architectures: {}\n", r.architectures.join(" ")));
    }
    if let Some(k) = key {
        s.push_str(&format!("Signed-By: {k}\n"));
    }
    if r.trusted {
        s.push_str("Trusted: yes\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::desired::Content;

    fn repo(key: Option<&[u8]>) -> AptRepoResource {
        AptRepoResource {
            name: "docker".into(),
            uris: vec!["https://download.docker.com/linux/debian".into()],
            suites: vec!["bookworm".into()],
            components: vec!["stable".into()],
            architectures: vec!["amd64".into()],
            key: key.map(|k| Content {
                bytes: k.to_vec(),
                sensitive: false,
            }),
            trusted: false,
            origin: Default::default(),
        }
    }

    #[test]
    fn its_files_are_these() {
        let files = files(&repo(Some(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nxyz\n")));
        assert_eq!(files[0].0, "/etc/apt/keyrings/docker.asc");
        assert_eq!(files[1].0, "/etc/apt/sources.list.d/docker.sources");
        assert_eq!(
            String::from_utf8(files[1].1.clone()).unwrap(),
            "# Managed by tidekeeper.\nTypes: deb\nURIs: https://download.docker.com/linux/debian\n\
             Suites: bookworm\nComponents: stable\nArchitectures: amd64\nSigned-By: /etc/apt/keyrings/docker.asc\n"
        );
        assert_eq!(
            key_path(&repo(Some(b"\x99\x01binary"))).unwrap(),
            "/etc/apt/keyrings/docker.gpg"
        );
        let mut flat = repo(None);
        flat.components.clear();
        flat.architectures.clear();
        flat.suites = vec!["./".into()];
        flat.trusted = true;
        let files = super::files(&flat);
        assert_eq!(files.len(), 1);
        assert!(
            String::from_utf8(files[0].1.clone())
                .unwrap()
                .ends_with("Suites: ./\nTrusted: yes\n")
        );
        assert!(is_apt_config("/etc/apt/apt.conf.d/90proxy"));
        assert!(!is_apt_config("/etc/aptly.conf"));
    }
}
