// Embeds repo-template/ into the binary for `tidekeeper init` and `demo`,
// and the git revision for `tidekeeper_build_info`.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read repo-template")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The commit being built: `TIDEKEEPER_REVISION` if set (a container build
/// has no .git), else `git rev-parse HEAD`, else "unknown".
fn revision(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=TIDEKEEPER_REVISION");
    if let Ok(r) = std::env::var("TIDEKEEPER_REVISION")
        && !r.trim().is_empty()
    {
        return r.trim().to_string();
    }
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !s.trim().is_empty()).then(|| s.trim().to_string())
    };
    // Rebuilt when HEAD moves: HEAD itself, the branch it names, packed refs.
    for f in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", f]) {
            println!("cargo:rerun-if-changed={}", root.join(p).display());
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    println!(
        "cargo:rustc-env=TIDEKEEPER_REVISION={}",
        revision(&manifest)
    );
    // Read at run time: a compiled build script is reused when the checkout
    // moves (the target dir cache), and `env!` would keep the old path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("repo-template");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut code = String::from(
        "/// Files of `repo-template/`, embedded at build time.\npub static TEMPLATE_FILES: &[(&str, &[u8])] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?})),",
            f.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("template_files.rs");
    std::fs::write(out, code).unwrap();
}
