//! The words of a plan that every stage shares: what happens to a resource
//! ([`Action`]) and which attribute goes from what to what ([`Attr`]). The
//! engine (hosts) and the cloud stage (servers) both speak them; neither
//! imports the other for them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
    /// A command whose guards say it is needed.
    Run,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
            Action::Run => ">",
        }
    }
}

/// One attribute of a resource, before and after.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attr {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The kinds of resource tidekeeper manages on a host. Serialized as the
/// lowercase word (plans, policy input, the on-host inventory).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    File,
    Directory,
    Symlink,
    /// A path that must not exist.
    Absent,
    Package,
    Group,
    User,
    Service,
    Firewall,
    Sysctl,
    Command,
    Stack,
    /// A scheduled command as a systemd timer (two unit files and the timer).
    Timer,
    /// A scheduled command as a file in /etc/cron.d.
    Cron,
    /// A filesystem in /etc/fstab.
    Mount,
    /// An APT repository (its source and key files).
    #[serde(rename = "apt_repository")]
    AptRepo,
    /// A host setting (one value per host) under `settings:`; its id is
    /// the setting's name, and the engine's kind of that name owns it.
    Setting,
    /// A kind a newer tidekeeper recorded in a host's inventory: left alone.
    #[serde(other)]
    Unknown,
}

impl ResourceKind {
    pub fn word(self) -> &'static str {
        match self {
            ResourceKind::File => "file",
            ResourceKind::Directory => "directory",
            ResourceKind::Symlink => "symlink",
            ResourceKind::Absent => "absent",
            ResourceKind::Package => "package",
            ResourceKind::Group => "group",
            ResourceKind::User => "user",
            ResourceKind::Service => "service",
            ResourceKind::Firewall => "firewall",
            ResourceKind::Sysctl => "sysctl",
            ResourceKind::Command => "command",
            ResourceKind::Stack => "stack",
            ResourceKind::Timer => "timer",
            ResourceKind::Cron => "cron",
            ResourceKind::Mount => "mount",
            ResourceKind::AptRepo => "apt_repository",
            ResourceKind::Setting => "setting",
            ResourceKind::Unknown => "unknown",
        }
    }

    /// A path on the host (file, directory or symlink).
    pub fn is_path(self) -> bool {
        matches!(
            self,
            ResourceKind::File | ResourceKind::Directory | ResourceKind::Symlink
        )
    }
}

impl std::str::FromStr for ResourceKind {
    type Err = String;

    /// The kind named by its word (`file`, `package`, …).
    fn from_str(word: &str) -> Result<Self, String> {
        match serde_json::from_value(serde_json::Value::String(word.to_string())) {
            Ok(ResourceKind::Unknown) | Err(_) => Err(format!("{word:?} is not a resource kind")),
            Ok(k) => Ok(k),
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::ResourceKind;

    #[test]
    fn a_kind_reads_and_writes_as_its_word_and_an_unknown_one_is_kept_apart() {
        for k in [
            ResourceKind::File,
            ResourceKind::Directory,
            ResourceKind::Stack,
        ] {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(serde_json::from_str::<ResourceKind>(&json).unwrap(), k);
        }
        assert_eq!(
            serde_json::from_str::<ResourceKind>("\"vault\"").unwrap(),
            ResourceKind::Unknown,
            "an inventory written by a newer version still reads"
        );
        assert_eq!("symlink".parse(), Ok(ResourceKind::Symlink));
        assert!("unknown".parse::<ResourceKind>().is_err());
        assert_eq!(format!("{:<8}|", ResourceKind::User), "user    |");
    }
}
