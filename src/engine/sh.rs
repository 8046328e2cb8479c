//! What the generated shell scripts share: the heredoc marker, and the tags
//! that open each record the probe prints — one definition used by the
//! script that prints a record and by the parser that reads it back.

/// Ends every heredoc in generated scripts (never a line of a config file:
/// files travel base64-encoded).
pub const HEREDOC: &str = "TK_EOF_5f1c";

/// The first field of a probe record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `stat` of a managed path: type, mode, owner, group, size, path.
    Stat,
    /// An ancestor of a managed path that is a symbolic link, and its owner.
    Ancestor,
    /// A symlink's target.
    Link,
    /// A file whose content differs from the desired one.
    Differs,
    /// The current content (base64) of a small file that differs.
    Content,
    /// `dpkg-query`: package, status, version.
    Package,
    /// The candidate version of a `latest` package.
    Candidate,
    /// A line of `systemctl show`.
    Unit,
    /// A line of `getent passwd`.
    Passwd,
    /// A line of `getent group`.
    GroupLine,
    /// ufw is installed.
    Ufw,
    /// A ufw rule as `ufw show added` prints it.
    UfwRule,
    /// A ufw default policy.
    UfwPolicy,
    /// ufw's ENABLED setting.
    UfwEnabled,
    /// A sysctl file and its value.
    Sysctl,
    /// A command guard's verdict (`run` or `skip`).
    Guard,
    /// tidekeeper's inventory on the host (base64).
    Inventory,
    /// A handler owed from an earlier run.
    Handler,
    /// A compose container: project, service, state, image.
    Container,
    /// The end marker: output that lacks it was cut short.
    End,
}

impl Tag {
    pub const ALL: [Tag; 20] = [
        Tag::Stat,
        Tag::Ancestor,
        Tag::Link,
        Tag::Differs,
        Tag::Content,
        Tag::Package,
        Tag::Candidate,
        Tag::Unit,
        Tag::Passwd,
        Tag::GroupLine,
        Tag::Ufw,
        Tag::UfwRule,
        Tag::UfwPolicy,
        Tag::UfwEnabled,
        Tag::Sysctl,
        Tag::Guard,
        Tag::Inventory,
        Tag::Handler,
        Tag::Container,
        Tag::End,
    ];

    /// The tag as printed: short, and never containing a tab or a quote.
    pub fn code(self) -> &'static str {
        match self {
            Tag::Stat => "S",
            Tag::Ancestor => "Y",
            Tag::Link => "L",
            Tag::Differs => "X",
            Tag::Content => "C",
            Tag::Package => "P",
            Tag::Candidate => "A",
            Tag::Unit => "U",
            Tag::Passwd => "W",
            Tag::GroupLine => "G",
            Tag::Ufw => "F",
            Tag::UfwRule => "FR",
            Tag::UfwPolicy => "FP",
            Tag::UfwEnabled => "FE",
            Tag::Sysctl => "K",
            Tag::Guard => "Q",
            Tag::Inventory => "I",
            Tag::Handler => "H",
            Tag::Container => "D",
            Tag::End => "E",
        }
    }

    pub fn parse(code: &str) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| t.code() == code)
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Tag;

    #[test]
    fn every_tag_is_distinct_and_reads_back() {
        for t in Tag::ALL {
            assert_eq!(Tag::parse(t.code()), Some(t), "{t:?}");
            assert!(t.code().chars().all(|c| c.is_ascii_uppercase()), "{t:?}");
        }
        let mut codes: Vec<&str> = Tag::ALL.iter().map(|t| t.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Tag::ALL.len());
        assert_eq!(Tag::parse("Z"), None);
    }
}
