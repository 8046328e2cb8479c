//! What the generated shell scripts share: their preludes, the heredoc
//! marker, the tags that open each record the probe prints (one definition
//! used by the script that prints a record and by the parser that reads it
//! back), and commands built from quoted words only.

use crate::transport::shell_quote;

/// One shell word that stands for exactly the text it was made from: the
/// only thing a [`Cmd`] takes, so config values reach a generated script
/// quoted or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word(String);

impl Word {
    /// Any text, quoted where it needs to be.
    pub(crate) fn quoted(text: &str) -> Word {
        Word(shell_quote(text))
    }

    /// A fixed word of the script (a program, a flag). Panics on anything
    /// the shell would interpret: literals are written here, never read.
    pub(crate) fn lit(text: &'static str) -> Word {
        assert!(
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b)),
            "not a plain shell word: {text:?}"
        );
        Word(text.to_string())
    }

    /// A number.
    pub(crate) fn num(n: impl Into<u64>) -> Word {
        Word(n.into().to_string())
    }

    /// A file mode in octal.
    pub(crate) fn mode(m: u32) -> Word {
        Word(format!("{m:04o}"))
    }

    /// A shell variable of the script, expanded as one word.
    pub(crate) fn var(name: &'static str) -> Word {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "not a variable name: {name:?}"
        );
        Word(format!("\"${name}\""))
    }

    /// Staging directory `k` of an apply (see `kinds::file::stage`).
    pub(crate) fn staged_dir(k: usize) -> Word {
        Word(format!("\"$tk_d{k}\""))
    }

    /// A file `name` in staging directory `k`.
    pub(crate) fn staged(k: usize, name: &str) -> Word {
        Word(format!("\"$tk_d{k}\"/{}", shell_quote(name)))
    }

    /// A directory as the target of `mv SOURCES... DIR/`.
    pub(crate) fn dir(path: &str) -> Word {
        Word(format!("{}/", shell_quote(path)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A command line of quoted words. A step's commands end in `|| return`
/// (see [`Cmd::step`]) so the first failure ends the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cmd {
    words: Vec<Word>,
    quiet: bool,
}

/// A command: `program` and then its arguments.
pub(crate) fn cmd(program: &'static str) -> Cmd {
    Cmd {
        words: vec![Word::lit(program)],
        quiet: false,
    }
}

impl Cmd {
    /// A fixed flag or word.
    pub(crate) fn lit(mut self, word: &'static str) -> Cmd {
        self.words.push(Word::lit(word));
        self
    }

    /// A value, quoted.
    pub(crate) fn arg(mut self, value: &str) -> Cmd {
        self.words.push(Word::quoted(value));
        self
    }

    /// A word made elsewhere (a number, a mode, a variable).
    pub(crate) fn word(mut self, word: Word) -> Cmd {
        self.words.push(word);
        self
    }

    /// Values, each quoted.
    pub(crate) fn args<S: AsRef<str>>(mut self, values: impl IntoIterator<Item = S>) -> Cmd {
        self.words
            .extend(values.into_iter().map(|v| Word::quoted(v.as_ref())));
        self
    }

    /// `flag value` when there is a value.
    pub(crate) fn opt(self, flag: &'static str, value: Option<Word>) -> Cmd {
        match value {
            Some(v) => self.lit(flag).word(v),
            None => self,
        }
    }

    /// Standard output goes to /dev/null.
    pub(crate) fn quiet(mut self) -> Cmd {
        self.quiet = true;
        self
    }

    /// The command as a line of a step: it ends the step when it fails.
    pub(crate) fn step(&self) -> String {
        format!("{self} || return\n")
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<&str> = self.words.iter().map(Word::as_str).collect();
        f.write_str(&words.join(" "))?;
        if self.quiet {
            f.write_str(" >/dev/null")?;
        }
        Ok(())
    }
}

/// The apply script's prelude: strict mode, the root `$R` and state
/// directory `$S`, the host's lock, and the helpers every step uses (`run`
/// reports a step, and on a failure removes what was staged but not put in
/// place; `owe`/`paid` keep the handlers owed, `backup` keeps the old copy
/// of a path).
pub(crate) fn apply_prelude(root: &str, state: &str, run_id: &str) -> String {
    format!(
        "set -u\numask 022\nexport DEBIAN_FRONTEND=noninteractive\nR={root}\nTK_ROOT=\"$R\"; export TK_ROOT\nS={state}\n\
         mkdir -p \"$S\" || exit 1\nexec 9>\"$S/lock\"\n\
         if ! flock -n 9; then echo '@@locked'; exit 75; fi\n\
         B=\"$S/backups/{run_id}\"; E=\"$S/step.err\"\n\
         mkdir -p \"$S/backups\" && chmod 0700 \"$S/backups\" && (umask 077; : >\"$E\") && chmod 0600 \"$E\" || exit 1\n\
         if [ -f \"$S/staging\" ]; then while IFS= read -r x; do case \"$x\" in */.tidekeeper.*) rm -rf -- \"$x\";; esac; done <\"$S/staging\"; rm -f \"$S/staging\"; fi\n\
         run() {{ printf '@@begin %s\\n' \"$1\"; if \"$2\" 2>\"$E\"; then printf '@@ok %s\\n' \"$1\"; \
         else printf '@@fail %s\\n' \"$1\"; tk_unstage; cat \"$E\"; printf '\\n@@end\\n'; exit 1; fi; }}\n\
         tk_unstage() {{ :; }}\n\
         owe() {{ grep -qxF \"$1\" \"$S/pending-handlers\" 2>/dev/null || printf '%s\\n' \"$1\" >>\"$S/pending-handlers\"; }}\n\
         paid() {{ [ -f \"$S/pending-handlers\" ] || return 0; grep -vxF \"$1\" \"$S/pending-handlers\" >\"$S/pending.tmp\"; \
         mv -f \"$S/pending.tmp\" \"$S/pending-handlers\"; }}\n\
         backup() {{ p=\"$R$1\"; [ -e \"$p\" ] || [ -L \"$p\" ] || return 0; \
         mkdir -p \"$B$(dirname \"$1\")\" && cp -a \"$p\" \"$B$1\"; }}\n",
        root = shell_quote(root),
    )
}

/// The probe script's prelude: no error output (a missing path is an
/// answer, not a failure), and the local root as `TK_ROOT` for guards.
pub(crate) fn probe_prelude(root: &str) -> String {
    format!(
        "exec 2>/dev/null\nTK_ROOT={}; export TK_ROOT\n",
        shell_quote(root)
    )
}

/// Ends every heredoc in generated scripts (never a line of a config file:
/// text files travel as one quoted word, other files base64-encoded).
pub(crate) const HEREDOC: &str = "TK_EOF_5f1c";

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
    /// A rule of the chains that filter containers' traffic, as `iptables -S` prints it.
    ContainerRule,
    /// A sysctl file and its value.
    Sysctl,
    /// A host setting as the host has it: its name, then what its kind
    /// printed.
    Setting,
    /// A command guard's verdict (`run` or `skip`).
    Guard,
    /// tidekeeper's inventory on the host (base64).
    Inventory,
    /// A handler owed from an earlier run.
    Handler,
    /// A compose container: project, service, state, image.
    Container,
    /// An fstab entry: mount point, device, type, options.
    Fstab,
    /// A managed mount point that is mounted, and what is mounted there.
    Mounted,
    /// Whether the host's record of settled files was used (`hit` and the
    /// number of files it lists) or not (`miss`).
    Settled,
    /// A file the record of settled files lists whose stat moved.
    Moved,
    /// The SHA-256 of the stat cache this probe recorded.
    Recorded,
    /// A step that completed since the inventory was last written whole:
    /// kind (`command`, `stack`), name, checksum.
    Ran,
    /// A command that failed since the inventory was last written whole:
    /// name, when (UTC), exit code.
    Failed,
    /// A fact about the host: its name, then its value (see `facts.rs`).
    Fact,
    /// The end marker: output that lacks it was cut short.
    End,
}

impl Tag {
    pub const ALL: [Tag; 30] = [
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
        Tag::ContainerRule,
        Tag::Sysctl,
        Tag::Setting,
        Tag::Guard,
        Tag::Inventory,
        Tag::Handler,
        Tag::Container,
        Tag::Fstab,
        Tag::Mounted,
        Tag::Settled,
        Tag::Moved,
        Tag::Recorded,
        Tag::Ran,
        Tag::Failed,
        Tag::Fact,
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
            Tag::ContainerRule => "FC",
            Tag::Sysctl => "K",
            Tag::Setting => "ST",
            Tag::Guard => "Q",
            Tag::Inventory => "I",
            Tag::Handler => "H",
            Tag::Container => "D",
            Tag::Fstab => "T",
            Tag::Mounted => "N",
            Tag::Settled => "V",
            Tag::Moved => "M",
            Tag::Recorded => "R",
            Tag::Ran => "RN",
            Tag::Failed => "RF",
            Tag::Fact => "HF",
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
    use super::*;

    #[test]
    fn a_command_takes_only_quoted_words() {
        let line = cmd("useradd")
            .opt("-u", Some(Word::num(1001u32)))
            .opt("-s", None)
            .lit("--")
            .arg("x'; reboot #")
            .quiet()
            .step();
        assert_eq!(
            line,
            "useradd -u 1001 -- 'x'\\''; reboot #' >/dev/null || return\n"
        );
        crate::engine::kinds::sh_n(&format!("f() {{\n{line}}}"));
        assert_eq!(
            cmd("chmod")
                .word(Word::mode(0o640))
                .word(Word::var("t"))
                .to_string(),
            "chmod 0640 \"$t\""
        );
        assert_eq!(
            cmd("x").args(["a b", "$HOME", ""]).to_string(),
            "x 'a b' '$HOME' ''"
        );
    }

    #[test]
    #[should_panic(expected = "not a plain shell word")]
    fn a_literal_with_shell_syntax_is_refused() {
        let _ = cmd("rm").lit("-rf;reboot");
    }

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
