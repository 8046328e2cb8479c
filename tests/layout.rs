//! The shape of the source tree: no import cycles between modules (stages
//! at the top, and the parts of each stage), and no function anywhere in
//! src/ too long to read in one go.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/engine/kinds/file.rs` → ["engine", "kinds", "file"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code outside the file's unit tests: every `#[cfg(test)]` item (a
/// test module or helper, wherever it sits in the file) blanked out, so
/// line numbers stay those of the file.
fn code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]" && i + 1 < lines.len() {
            let item = lines[i + 1];
            let indent = &item[..item.len() - item.trim_start().len()];
            let end = if item.trim_end().ends_with(';') {
                i + 1
            } else {
                lines[i + 1..]
                    .iter()
                    .position(|l| *l == format!("{indent}}}"))
                    .map_or(lines.len() - 1, |n| i + 1 + n)
            };
            out.extend(std::iter::repeat_n("", end + 1 - i));
            i = end + 1;
            continue;
        }
        out.push(lines[i]);
        i += 1;
    }
    out.join("\n")
}

/// Functions longer than `max` lines in `text`: (first line, length).
fn long_functions(text: &str, max: usize) -> Vec<(usize, usize)> {
    let code = code(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let mut head = t;
        for prefix in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            head = head.strip_prefix(prefix).unwrap_or(head);
        }
        if !head.starts_with("fn ") || t.ends_with(';') {
            continue;
        }
        let Some(end) = lines[i..].iter().position(|x| *x == format!("{indent}}}")) else {
            continue;
        };
        if end + 1 > max {
            long.push((i + 1, end + 1));
        }
    }
    long
}

/// Edges between modules cut to `depth` path segments (1: stages such as
/// `engine`, `model`; 2: their parts such as `engine::kinds`).
fn edges(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let cut = |m: &[String]| m[..m.len().min(depth)].join("::");
    for f in files {
        let m = module_of(&src, &f);
        if m.is_empty() || m == ["lib"] || m == ["main"] || m.len() < depth {
            continue;
        }
        let from = cut(&m);
        let text = std::fs::read_to_string(&f).unwrap();
        // Doc links such as [`crate::x`] are not imports.
        let body: String = code(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let body = body.as_str();
        let mut targets = Vec::new();
        for (i, _) in body.match_indices("crate::") {
            let path: Vec<String> = body[i + 7..]
                .split("::")
                .take(depth)
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect()
                })
                .collect();
            targets.push(path);
        }
        // `super::x` in a file of module a::b::c names a::b::x (a::b for mod.rs).
        let parent: Vec<String> = m[..m.len() - 1].to_vec();
        for (i, _) in body.match_indices("super::") {
            if i > 0 && body.as_bytes()[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let name: String = body[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let mut path = parent.clone();
            path.push(name);
            targets.push(path);
        }
        for t in targets {
            if t.len() < depth || t.iter().any(|s| s.is_empty()) {
                continue;
            }
            let to = cut(&t);
            if to != from && (depth == 1 || t[0] == m[0]) {
                g.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    g
}

/// A cycle in the graph, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, m, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let stages = edges(1);
    assert!(
        stages.contains_key("engine") && stages["engine"].contains("model"),
        "{stages:?}"
    );
    assert_eq!(cycle(&stages), None, "between stages");
    let parts = edges(2);
    assert!(parts["engine::plan"].contains("engine::kinds"), "{parts:?}");
    assert_eq!(cycle(&parts), None, "between the parts of a stage");
    // The check finds a cycle when there is one.
    let mut bad = parts.clone();
    bad.entry("engine::kinds".into())
        .or_default()
        .insert("engine::plan".into());
    assert!(cycle(&bad).is_some());
}

/// The longest a function may be, anywhere in src/.
const MAX_FUNCTION_LINES: usize = 100;

#[test]
fn no_function_anywhere_in_src_runs_over_100_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(&src).unwrap().display().to_string();
        for (line, len) in long_functions(&text, MAX_FUNCTION_LINES) {
            let head = text.lines().nth(line - 1).unwrap_or("");
            let name = head.split("fn ").nth(1).unwrap_or("");
            let name = name.split(['(', '<']).next().unwrap_or(name);
            long.push(format!("src/{rel}:{line}: fn {name} is {len} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines; split them into named steps:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_reads_past_test_modules_and_skips_only_them() {
    let body = |n: usize| "    let x = 1;\n".repeat(n);
    let text = format!(
        "fn short() {{\n{}}}\n\n#[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{}    }}\n}}\n\n\
         pub(crate) async fn after_the_tests() {{\n{}}}\n\n#[cfg(test)]\nfn helper() {{\n{}}}\n",
        body(10),
        body(200),
        body(120),
        body(300)
    );
    let long = long_functions(&text, MAX_FUNCTION_LINES);
    assert_eq!(long.len(), 1, "{long:?}");
    let line = text
        .lines()
        .position(|l| l.contains("after_the_tests"))
        .unwrap()
        + 1;
    assert_eq!(long[0], (line, 122));
    // Blanking keeps line numbers.
    assert!(
        code(&text)
            .lines()
            .nth(line - 1)
            .unwrap()
            .contains("after_the_tests")
    );
}

/// Adding a kind is its file and one line in the registry: the time zone
/// (a host setting) is named nowhere else in src/ — not in the probe, the
/// planner, the applier, the guard, the confinement of proposals, the
/// resource kinds, the items or the model.
#[test]
fn a_kind_is_its_own_file_and_one_line_of_the_registry() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let own = src.join("engine/kinds/timezone.rs");
    let registry = src.join("engine/kinds/mod.rs");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The kind's type and its module; "timezone" alone is also the word of
    // maintenance schedules, which are not this kind.
    let names = |line: &str| {
        let t = line.trim_start();
        let type_name = line.match_indices("Timezone").any(|(i, _)| {
            !line[i + 8..].starts_with(|c: char| c.is_alphanumeric())
                && (i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric())
        });
        type_name
            || line.contains("timezone::")
            || t.starts_with("mod timezone")
            || t.starts_with("pub mod timezone")
    };
    let mut found: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| **f != own) {
        let text = std::fs::read_to_string(f).unwrap();
        for line in code(&text).lines().filter(|l| names(l)) {
            found
                .entry(f.clone())
                .or_default()
                .push(line.trim().to_string());
        }
    }
    let lines: Vec<String> = found.values().flatten().cloned().collect();
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        [&registry],
        "the time zone kind is named outside its file and the registry: {found:#?}"
    );
    assert_eq!(lines, ["timezone::Timezone,"], "one line of the registry");
    assert!(own.exists());
}

/// What other stages, the binary, tests and benches do not use is
/// `pub(crate)`: the compiler's `unreachable_pub` lint says so of every
/// item, and CI's `clippy -D warnings` makes it an error.
#[test]
fn items_no_one_outside_uses_stay_inside_the_crate() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    assert!(
        lib.lines().any(|l| l.trim() == "#![warn(unreachable_pub)]"),
        "src/lib.rs keeps #![warn(unreachable_pub)]"
    );
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test"))
        .unwrap();
    assert!(ci.contains("clippy --locked --workspace --all-targets -- -D warnings"));
}
