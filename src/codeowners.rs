//! Who owns which files, in CODEOWNERS syntax: one `pattern owner…` per
//! line, `#` comments, the last matching line wins, a line without owners
//! leaves its files unowned. Patterns follow gitignore as GitHub reads
//! them: `*.yaml` anywhere, `/hosts/` anchored at the root, `hosts/` any
//! directory of that name, `hosts/*` its files only, `**` across
//! directories. Pure: the daemon reads the file, this answers.

/// Where GitHub looks for the CODEOWNERS file, in its order.
pub(crate) const FILES: [&str; 3] = [".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS"];

/// One CODEOWNERS line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub pattern: String,
    /// Logins without the `@` (`org/team` for a team).
    pub owners: Vec<String>,
}

/// Every rule of `text`, or the first line that is not one, with its
/// number (1-based) and why.
pub(crate) fn parse(text: &str) -> Result<Vec<Rule>, (usize, String)> {
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rule) = parse_line(line).map_err(|why| (i + 1, why))? {
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// One line: `None` for a blank line or a comment.
pub(crate) fn parse_line(line: &str) -> Result<Option<Rule>, String> {
    let line = line.split_once(" #").map_or(line, |(a, _)| a).trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let pattern = words.next().unwrap_or_default().to_string();
    if pattern.starts_with('!') || pattern.contains('[') {
        return Err(format!(
            "{pattern:?}: CODEOWNERS has no negation or character ranges; write the paths out"
        ));
    }
    let mut owners = Vec::new();
    for w in words {
        match w.strip_prefix('@') {
            Some(login) if is_login(login) => owners.push(login.to_string()),
            _ => {
                return Err(format!(
                    "owner {w:?} of {pattern:?} is not an @login or @org/team (e-mail owners are not read)"
                ));
            }
        }
    }
    Ok(Some(Rule { pattern, owners }))
}

fn is_login(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((org, team)) => ok(org) && ok(team),
        None => ok(s),
    }
}

/// The owners of `path` (relative to the repo root, `/`-separated): those
/// of the last rule matching it; `None` when no rule does.
pub(crate) fn owners_of<'a>(rules: &'a [Rule], path: &str) -> Option<&'a [String]> {
    rules
        .iter()
        .rev()
        .find(|r| matches(&r.pattern, path))
        .map(|r| r.owners.as_slice())
}

/// Does `pattern` match `path` or a directory above it?
pub(crate) fn matches(pattern: &str, path: &str) -> bool {
    let dir_only = pattern.ends_with('/');
    let p = pattern.trim_end_matches('/');
    let anchored = p.starts_with('/') || p.contains('/');
    let p = p.trim_start_matches('/');
    let pat: Vec<&str> = p.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    // A pattern names a file or a directory: it matches the path itself or
    // any directory above it (a directory-only pattern only the latter).
    // A wildcard in its last segment never reaches deeper: `docs/*` owns
    // the files in docs/, not those in docs/sub/ (as GitHub reads it).
    let wild_end = pat.last().is_some_and(|l| l.contains('*'));
    let prefixes = (1..=parts.len())
        .filter(|n| !dir_only || *n < parts.len())
        .filter(|n| !wild_end || *n == parts.len());
    let starts: Vec<usize> = if anchored {
        vec![0]
    } else {
        (0..parts.len()).collect()
    };
    for n in prefixes {
        for &s in starts.iter().filter(|s| **s < n) {
            if segments(&pat, &parts[s..n]) {
                return true;
            }
        }
    }
    false
}

/// Do the pattern's segments match the path's, `**` spanning any number?
fn segments(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|i| segments(rest, &parts[i..])),
        Some((p, rest)) => parts.split_first().is_some_and(|(first, more)| {
            glob(p.as_bytes(), first.as_bytes()) && segments(rest, more)
        }),
    }
}

/// `*` and `?` within one segment.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_github_reads_codeowners() {
        let yes = [
            ("*", "hosts/web.yaml"),
            ("*.yaml", "hosts/web.yaml"),
            ("/hosts/", "hosts/web.yaml"),
            ("hosts/", "fleet/hosts/web.yaml"),
            ("hosts/*", "hosts/web.yaml"),
            ("/roles/base.yaml", "roles/base.yaml"),
            ("docs/**/x.md", "docs/a/b/x.md"),
            ("**/policies", "a/policies/p.rego"),
            ("hosts/prod-*", "hosts/prod-web.yaml"),
            ("tidekeeper.yaml", "tidekeeper.yaml"),
            ("policies", "policies/budget.rego"),
        ];
        for (p, path) in yes {
            assert!(matches(p, path), "{p} should match {path}");
        }
        let no = [
            ("/hosts/", "fleet/hosts/web.yaml"),
            ("hosts/*", "hosts/sub/web.yaml"),
            ("hosts/", "hosts"),
            ("*.yml", "hosts/web.yaml"),
            ("hosts/prod-*", "hosts/dev-web.yaml"),
            ("/roles/base.yaml", "x/roles/base.yaml"),
            ("roles/base.yaml", "x/roles/base.yaml"),
        ];
        for (p, path) in no {
            assert!(!matches(p, path), "{p} should not match {path}");
        }
    }

    #[test]
    fn the_last_matching_line_wins_and_a_line_without_owners_unowns() {
        let rules = parse(
            "# fleet owners\n* @ops\nhosts/prod-* @alice @bob  # prod\npolicies/ @acme/security\nhosts/prod-scratch.yaml\n",
        )
        .unwrap();
        assert_eq!(owners_of(&rules, "roles/base.yaml").unwrap(), ["ops"]);
        assert_eq!(
            owners_of(&rules, "hosts/prod-web.yaml").unwrap(),
            ["alice", "bob"]
        );
        assert_eq!(
            owners_of(&rules, "policies/budget.rego").unwrap(),
            ["acme/security"]
        );
        assert!(
            owners_of(&rules, "hosts/prod-scratch.yaml")
                .unwrap()
                .is_empty()
        );
        assert!(owners_of(&parse("/docs/ @x").unwrap(), "roles/a.yaml").is_none());
    }

    #[test]
    fn lines_codeowners_cannot_mean_are_refused_with_their_number() {
        assert_eq!(parse("* @ops\n!hosts/ @x\n").unwrap_err().0, 2);
        let (line, why) = parse("\n\nhosts/ alice@example.com\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(why.contains("e-mail"), "{why}");
        assert!(parse("hosts/[ab]* @x").is_err());
    }
}
