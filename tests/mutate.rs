//! Property: validation of a randomly damaged config never panics and always
//! returns either a fleet or errors located in files that exist.
//!
//! The mutations are seeded and bounded, so a failure reproduces exactly;
//! raise `TIDEKEEPER_MUTATIONS` for a longer run.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tidekeeper::source::{ConfigTree, Entry, template_tree};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: *a",
    "\t",
    "\"",
    "'",
    "{{",
    "}}",
    "{% for %}",
    "#",
    "~",
    "null",
    "../",
    "/",
    "0644",
    "99999",
    "-1",
    "ä",
    "\u{feff}",
    "  ",
    "\n",
    "? ",
    "!!binary ",
    "%YAML 1.2\n---\n",
    "roles: [x]",
    "count: 0",
    "provider: local",
    "port: '0'",
    "from: 1.2.3.4/99",
    "cron: '* *'",
    "source: ../../x",
];

fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..=rng.below(3) {
        let n = lines.len().max(1);
        let i = rng.below(n);
        match rng.below(7) {
            0 if !lines.is_empty() => {
                lines.remove(i.min(lines.len() - 1));
            }
            1 if !lines.is_empty() => {
                let at = i.min(lines.len() - 1);
                let l = lines[at].clone();
                lines.insert(at, l);
            }
            2 if lines.len() > 1 => {
                let (a, b) = (i.min(lines.len() - 1), rng.below(lines.len()));
                lines.swap(a, b);
            }
            3 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                if lines.is_empty() {
                    lines.push(tok.to_string());
                } else {
                    let l = &mut lines[i.min(n - 1)];
                    let mut at = rng.below(l.len() + 1);
                    while !l.is_char_boundary(at) {
                        at -= 1;
                    }
                    l.insert_str(at, tok);
                }
            }
            4 if !lines.is_empty() => {
                let l = &mut lines[i.min(n - 1)];
                let shift = rng.below(5);
                if rng.below(2) == 0 {
                    *l = format!("{}{l}", " ".repeat(shift));
                } else {
                    *l = l.trim_start().to_string();
                }
            }
            5 if !lines.is_empty() => {
                let l = &mut lines[i.min(n - 1)];
                if let Some((k, _)) = l.split_once(": ") {
                    *l = format!("{k}: {}", TOKENS[rng.below(TOKENS.len())]);
                }
            }
            _ if !lines.is_empty() => {
                let l = &mut lines[i.min(n - 1)];
                let cut = rng.below(l.len() + 1);
                let mut at = cut;
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                l.truncate(at);
            }
            _ => lines.push(TOKENS[rng.below(TOKENS.len())].to_string()),
        }
    }
    lines.join("\n") + "\n"
}

fn check_one(seed: u64, base: &ConfigTree, paths: &[String]) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tree = base.clone();
    for _ in 0..=rng.below(2) {
        let path = &paths[rng.below(paths.len())];
        let text = tree.text(path).unwrap_or_default();
        if rng.below(20) == 0 {
            tree.remove(path);
        } else {
            tree.insert_file(path.clone(), mutate_text(&mut rng, &text).into_bytes());
        }
    }
    let result = catch_unwind(AssertUnwindSafe(|| tidekeeper::model::load(&tree)));
    let result = result.unwrap_or_else(|_| panic!("validation panicked for seed {seed}"));
    if let Err(diags) = result {
        assert!(
            !diags.is_empty(),
            "seed {seed}: an error result with no diagnostics"
        );
        for d in diags.iter() {
            assert!(!d.message.is_empty(), "seed {seed}: empty message");
            let known = tree.get(&d.file).is_some()
                || tree.has_dir(&d.file)
                || matches!(d.file.as_str(), "tidekeeper.yaml" | "hosts");
            assert!(
                known,
                "seed {seed}: diagnostic names a file that is not in the repo: {d}"
            );
            if d.line > 0
                && let Some(Entry::File { bytes, .. }) = tree.get(&d.file)
            {
                let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                assert!(
                    d.line <= lines,
                    "seed {seed}: line {} past the end of {} ({lines} lines): {d}",
                    d.line,
                    d.file
                );
            }
        }
    }
}

#[test]
fn random_damage_never_panics_and_errors_are_located() {
    let base = template_tree();
    let paths: Vec<String> = base
        .paths()
        .map(|(p, _)| p.to_string())
        .filter(|p| p.ends_with(".yaml") || p.ends_with(".j2") || p == "known_hosts")
        .collect();
    assert!(paths.len() > 10);
    let runs: u64 = std::env::var("TIDEKEEPER_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    for seed in 0..runs {
        check_one(seed, &base, &paths);
    }
}
