//! Config repos for the test fleet: real git repositories whose hosts are
//! the testbed's hosts, with their host keys pinned in known_hosts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::testbed::Testbed;
use super::{TempDir, git, tidekeeper};

pub struct FleetRepo {
    _tmp: TempDir,
    pub path: PathBuf,
    pub key: PathBuf,
}

impl FleetRepo {
    /// The built-in template with its hosts replaced by the testbed's hosts,
    /// each given `roles`.
    pub fn template(bed: &Testbed, roles: &[&str]) -> FleetRepo {
        let tmp = TempDir::new("fleet");
        let path = tmp.path().join("fleet");
        let out = tidekeeper().arg("init").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_dir_all(path.join("hosts")).unwrap();
        // Jobs name the template's hosts; the test fleet has its own.
        fs::write(path.join("schedules.yaml"), "jobs: []\n").unwrap();
        let repo = FleetRepo {
            _tmp: tmp,
            path,
            key: bed.key.clone(),
        };
        repo.hosts(bed, roles);
        // The template's firewall lets SSH in from anywhere, which the
        // built-in exposure policy allows only for hosts labelled so.
        for h in &bed.hosts {
            let p = repo.path.join("hosts").join(format!("{}.yaml", h.name));
            let text = fs::read_to_string(&p).unwrap();
            fs::write(&p, format!("{text}labels:\n  ssh_public: \"true\"\n")).unwrap();
        }
        repo.commit("test fleet");
        repo
    }

    /// A minimal repo: only tidekeeper.yaml, the given roles and the hosts.
    pub fn minimal(bed: &Testbed, roles: &[(&str, &str)]) -> FleetRepo {
        let tmp = TempDir::new("fleet");
        let path = tmp.path().join("fleet");
        fs::create_dir_all(path.join("roles")).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        fs::write(
            path.join("tidekeeper.yaml"),
            "fleet: test\ndefaults:\n  parallelism: 8\n",
        )
        .unwrap();
        for (name, text) in roles {
            fs::write(path.join("roles").join(format!("{name}.yaml")), text).unwrap();
        }
        let repo = FleetRepo {
            _tmp: tmp,
            path,
            key: bed.key.clone(),
        };
        let names: Vec<&str> = roles.iter().map(|r| r.0).collect();
        repo.hosts(bed, &names);
        repo.commit("test fleet");
        repo
    }

    /// A repo of just `files` (path, text), committed; `key` logs in.
    pub fn with_files(key: PathBuf, files: &[(&str, &str)]) -> FleetRepo {
        let tmp = TempDir::new("fleet");
        let path = tmp.path().join("fleet");
        fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        let repo = FleetRepo {
            _tmp: tmp,
            path,
            key,
        };
        for (rel, text) in files {
            repo.write(rel, text);
        }
        repo.commit("test fleet");
        repo
    }

    fn hosts(&self, bed: &Testbed, roles: &[&str]) {
        fs::create_dir_all(self.path.join("hosts")).unwrap();
        let mut known = String::new();
        for h in &bed.hosts {
            fs::write(
                self.path.join("hosts").join(format!("{}.yaml", h.name)),
                format!(
                    "provider: existing\naddress: {}\nroles: [{}]\n",
                    h.address,
                    roles.join(", ")
                ),
            )
            .unwrap();
            known.push_str(&h.known_hosts_line());
            known.push('\n');
        }
        fs::write(self.path.join("known_hosts"), known).unwrap();
    }

    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path.join(rel)).unwrap()
    }

    pub fn commit(&self, msg: &str) {
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-q", "--allow-empty", "-m", msg]);
    }

    /// Run `tidekeeper <args> --repo <this> --ssh-key <testbed key>`.
    pub fn tk(&self, args: &[&str]) -> Output {
        self.tk_env(args, &[])
    }

    /// [`FleetRepo::tk`] with extra environment variables (cloud credentials).
    pub fn tk_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    /// The command [`FleetRepo::tk_env`] runs, to spawn it.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut c = tidekeeper();
        c.args(args)
            .arg("--repo")
            .arg(&self.path)
            .arg("--ssh-key")
            .arg(&self.key)
            .env_remove("SSH_AUTH_SOCK")
            .envs(env.iter().copied());
        c
    }
}

/// A fresh age identity (the text of an identity file), from age-keygen.
pub fn age_identity() -> String {
    let out = std::process::Command::new("age-keygen")
        .output()
        .expect("age-keygen runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

impl FleetRepo {
    /// `tidekeeper secrets encrypt NAME` with `value` on stdin (not committed).
    pub fn encrypt_secret(&self, identity: &str, name: &str, value: &str) {
        encrypt_secret(&self.path, identity, name, value)
    }
}

/// `tidekeeper secrets encrypt NAME` in the repo at `repo`, with `value` on stdin.
pub fn encrypt_secret(repo: &Path, identity: &str, name: &str, value: &str) {
    encrypt_secret_to(repo, name, value, &[], Some(identity));
}

/// `tidekeeper secrets encrypt NAME --recipient R…` with `value` on stdin,
/// and the identity in the environment if given.
pub fn encrypt_secret_to(
    repo: &Path,
    name: &str,
    value: &str,
    recipients: &[&str],
    identity: Option<&str>,
) {
    use std::io::Write;
    let mut cmd = tidekeeper();
    cmd.args(["secrets", "encrypt", name, "--repo"]).arg(repo);
    for r in recipients {
        cmd.args(["--recipient", r]);
    }
    if let Some(id) = identity {
        cmd.env("TIDEKEEPER_AGE_IDENTITY", id);
    }
    let mut enc = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    enc.stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    assert!(enc.wait().unwrap().success(), "secrets encrypt {name}");
}

/// stdout and stderr of a run, for assertion messages.
/// How a run ended, for a failed assertion: stderr (progress) first and
/// stdout (the result and its errors) last, so that a log cut to its tail
/// still shows what went wrong.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stderr\n{}--- stdout\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
