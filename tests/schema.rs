//! The config files' JSON Schemas, checked by python-jsonschema (not the
//! code that wrote them): every example and template file passes, typos and
//! wrong types fail, and `init` points each file's modeline at its schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{TempDir, tidekeeper};

fn write_schemas(dir: &Path) {
    let out = tidekeeper()
        .args(["schema", "--out-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (kind, file) of every config file under `root`.
fn config_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for (file, kind) in [
        ("tidekeeper.yaml", "fleet"),
        ("schedules.yaml", "schedules"),
    ] {
        if root.join(file).exists() {
            out.push((kind.to_string(), root.join(file)));
        }
    }
    for (dir, kind) in [("hosts", "host"), ("roles", "role")] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                out.push((kind.to_string(), e.path()));
            }
        }
    }
    out
}

/// python-jsonschema's verdict: (passed, what it printed).
fn check(schemas: &Path, files: &[(String, PathBuf)]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/schema_check.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(schemas)
        .args(files.iter().map(|(k, p)| format!("{k}={}", p.display())))
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_example_and_template_file_passes_its_schema_and_typos_do_not() {
    let tmp = TempDir::new("schema");
    let schemas = tmp.path().join("schema");
    write_schemas(&schemas);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = config_files(&root.join("repo-template"));
    for e in std::fs::read_dir(root.join("examples")).unwrap().flatten() {
        files.extend(config_files(&e.path()));
    }
    assert!(files.len() > 40, "{} files", files.len());
    let (ok, text) = check(&schemas, &files);
    assert!(ok, "{text}");

    // What tidekeeper refuses, the schema refuses too, naming the key.
    let bad = [
        (
            "role",
            "fiels:\n  - {path: /etc/motd, content: hi}\n",
            "'fiels'",
        ),
        (
            "host",
            "provider: existing\naddress: 10.0.0.1\nssh: {port: twenty-two}\n",
            "twenty-two",
        ),
        ("fleet", "fleet: acme\ndrift: sometimes\n", "sometimes"),
        (
            "schedules",
            "jobs:\n  - name: x\n    schedul: daily\n",
            "'schedul'",
        ),
    ];
    for (kind, text, needle) in bad {
        let path = tmp.path().join(format!("bad-{kind}.yaml"));
        std::fs::write(&path, text).unwrap();
        let (ok, said) = check(&schemas, &[(kind.to_string(), path)]);
        assert!(!ok, "{kind}: {text} passed");
        assert!(said.contains(needle), "{kind}: {said}");
    }
}

#[test]
fn init_writes_the_schemas_and_a_modeline_in_every_config_file() {
    let tmp = TempDir::new("schema-init");
    let repo = tmp.path().join("fleet");
    let out = tidekeeper().arg("init").arg(&repo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = config_files(&repo);
    assert!(files.len() > 10);
    for (kind, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap();
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{}: no modeline: {first}", path.display()));
        assert!(target.ends_with(&format!("/{kind}.json")), "{first}");
        let schema = path.parent().unwrap().join(target);
        assert!(
            schema.is_file(),
            "{} points at {}",
            path.display(),
            schema.display()
        );
    }
    // The schemas init wrote are the ones the binary gives, and they pass the files.
    let (ok, text) = check(&repo.join(".tidekeeper/schema"), &files);
    assert!(ok, "{text}");
    let validate = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );
}

/// Every property of a role's schema says what it is: editors show it on
/// hover and completion.
#[test]
fn every_role_schema_property_has_a_description() {
    fn walk(node: &serde_json::Value, path: &str, total: &mut usize, missing: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    for (k, v) in props {
                        *total += 1;
                        let described = v
                            .get("description")
                            .and_then(|d| d.as_str())
                            .is_some_and(|d| !d.trim().is_empty());
                        if !described {
                            missing.push(format!("{path}.{k}"));
                        }
                    }
                }
                for (k, v) in map {
                    let here = if k == "properties" {
                        path.to_string()
                    } else {
                        format!("{path}/{k}")
                    };
                    walk(v, &here, total, missing);
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, path, total, missing);
                }
            }
            _ => {}
        }
    }
    let out = tidekeeper().args(["schema", "role"]).output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (mut total, mut missing) = (0, vec![]);
    walk(&schema, "", &mut total, &mut missing);
    assert!(total > 100, "{total} properties");
    assert!(
        missing.is_empty(),
        "{} of {total} without a description: {missing:#?}",
        missing.len()
    );
}
