//! Forge reporting against a local server that checks the requests GitHub's
//! REST API expects and answers with its response shapes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::support::cloud::CloudFleet;
use crate::support::daemon::{Daemon, free_port};
use crate::support::fleet::FleetRepo;
use crate::support::git;
use crate::support::testbed::Testbed;

#[derive(Default)]
pub(crate) struct Fake {
    /// (method, path, body)
    pub(crate) requests: Vec<(String, String, Value)>,
    pub(crate) comments: Vec<(u64, u64, String)>, // (pr, id, body)
    pub(crate) bad_auth: usize,
    /// The Authorization header the forge expects.
    auth: String,
    /// Comment id → its author's login; a comment not here was written by
    /// a person (`octocat`), one posted with the token by its user.
    pub(crate) authors: std::collections::HashMap<u64, String>,
    /// PR number → its head sha, as `GET .../pulls/N` answers; else the
    /// `refs/pull/N/head` of `git_dir`.
    pub(crate) heads: std::collections::HashMap<u64, String>,
    pub(crate) git_dir: Option<std::path::PathBuf>,
    /// PR number → its reviews, as `GET .../pulls/N/reviews` answers.
    pub(crate) reviews: std::collections::HashMap<u64, Vec<Value>>,
    /// Merge commit sha → the PR merged by it, as `GET .../commits/SHA/pulls`
    /// (GitHub) and `GET .../commits/SHA/pull` (Gitea) answer.
    pub(crate) merges: std::collections::HashMap<String, u64>,
    /// PR number → fields its `GET .../pulls/N` answer has besides its head
    /// (`merged`, `merged_by`, `mergeable`).
    pub(crate) pulls: std::collections::HashMap<u64, Value>,
    /// `org/team` → its members' logins.
    pub(crate) teams: std::collections::HashMap<String, Vec<String>>,
}

/// The user the token `t0k` is.
pub(crate) const BOT: &str = "tidekeeper-bot";

impl Fake {
    /// Read PR heads from the `refs/pull/N/head` of the repo at `dir`.
    pub(crate) fn pulls_from(&mut self, dir: &std::path::Path) {
        self.git_dir = Some(dir.to_path_buf());
    }

    /// `GET .../pulls/N` as GitHub and Gitea answer it.
    fn pull_json(&self, pr: u64, head: &str) -> Value {
        let mut v = json!({"number": pr, "state": "open", "merged": false, "mergeable": null,
            "merged_by": null, "user": {"login": "octocat"},
            "head": {"ref": format!("pr-{pr}"), "sha": head}});
        if let Some(Value::Object(extra)) = self.pulls.get(&pr) {
            for (k, x) in extra {
                v[k] = x.clone();
            }
        }
        v
    }

    fn head_of(&self, pr: u64) -> Option<String> {
        if let Some(h) = self.heads.get(&pr) {
            return Some(h.clone());
        }
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(self.git_dir.as_ref()?)
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/pull/{pr}/head"),
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

pub(crate) type Shared = Arc<Mutex<Fake>>;

fn authorized(s: &Shared, h: &HeaderMap) -> bool {
    let want = s.lock().unwrap().auth.clone();
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str());
    if !ok {
        s.lock().unwrap().bad_auth += 1;
    }
    ok
}

/// Run one forge call to its end.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A line added in a ```diff block: `+` at column 0, then the text.
fn added(body: &str, text: &str) -> bool {
    body.lines()
        .any(|l| l.strip_prefix('+').is_some_and(|r| r.trim_start() == text))
}

pub(crate) fn fake_github(port: u16) -> Shared {
    fake_forge(port, "", "Bearer t0k")
}

/// GitHub serves the API at the root with `Bearer` tokens; Gitea under
/// `/api/v1` with `token` (its commit statuses and issue comments have the
/// same paths and bodies).
fn fake_forge(port: u16, prefix: &str, auth: &str) -> Shared {
    let shared: Shared = Arc::new(Mutex::new(Fake {
        auth: auth.to_string(),
        ..Default::default()
    }));
    let api = Router::new()
        .route(
            "/repos/acme/fleet/statuses/{sha}",
            post(|State(s): State<Shared>, Path(sha): Path<String>, h: HeaderMap, Json(b): Json<Value>| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                s.lock().unwrap().requests.push(("POST".into(), format!("statuses/{sha}"), b.clone()));
                (StatusCode::CREATED, Json(json!({"id": 1, "state": b["state"], "context": b["context"], "description": b["description"]})))
            }),
        )
        .route(
            "/repos/acme/fleet/issues/{pr}/comments",
            // Paged as GitHub pages: `per_page` (default 30, at most 100) and `page`.
            get(|State(s): State<Shared>, Path(pr): Path<u64>, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                let per: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30).min(100);
                let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
                let f = s.lock().unwrap();
                let list: Vec<Value> = f.comments.iter().filter(|c| c.0 == pr)
                    .skip((page - 1) * per).take(per)
                    .map(|c| json!({"id": c.1, "body": c.2, "user": {"login": f.authors.get(&c.1).cloned().unwrap_or_else(|| "octocat".into())}})).collect();
                Json(Value::Array(list))
            })
            .post(|State(s): State<Shared>, Path(pr): Path<u64>, h: HeaderMap, Json(b): Json<Value>| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let mut f = s.lock().unwrap();
                let id = 1000 + f.comments.len() as u64;
                f.comments.push((pr, id, b["body"].as_str().unwrap_or("").to_string()));
                f.authors.insert(id, BOT.into());
                f.requests.push(("POST".into(), format!("issues/{pr}/comments"), b.clone()));
                (StatusCode::CREATED, Json(json!({"id": id, "body": b["body"]})))
            }),
        )
        .route(
            "/repos/acme/fleet/issues/comments/{id}",
            patch(|State(s): State<Shared>, Path(id): Path<u64>, h: HeaderMap, Json(b): Json<Value>| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let mut f = s.lock().unwrap();
                for c in f.comments.iter_mut() {
                    if c.1 == id {
                        c.2 = b["body"].as_str().unwrap_or("").to_string();
                    }
                }
                f.requests.push(("PATCH".into(), format!("issues/comments/{id}"), b.clone()));
                (StatusCode::OK, Json(json!({"id": id, "body": b["body"]})))
            })
            .delete(|State(s): State<Shared>, Path(id): Path<u64>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return StatusCode::UNAUTHORIZED;
                }
                let mut f = s.lock().unwrap();
                let before = f.comments.len();
                f.comments.retain(|c| c.1 != id);
                if f.comments.len() == before {
                    return StatusCode::NOT_FOUND;
                }
                f.requests.push(("DELETE".into(), format!("issues/comments/{id}"), Value::Null));
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/user",
            get(|State(s): State<Shared>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                s.lock().unwrap().requests.push(("GET".into(), "user".into(), Value::Null));
                (StatusCode::OK, Json(json!({"login": BOT, "id": 4242, "type": "Bot"})))
            }),
        )
        .route(
            "/repos/acme/fleet/pulls/{pr}",
            get(|State(s): State<Shared>, Path(pr): Path<u64>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let f = s.lock().unwrap();
                match f.head_of(pr) {
                    Some(sha) => (StatusCode::OK, Json(f.pull_json(pr, &sha))),
                    None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))),
                }
            }),
        )
        .route(
            "/repos/acme/fleet/pulls/{pr}/reviews",
            get(|State(s): State<Shared>, Path(pr): Path<u64>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let f = s.lock().unwrap();
                (StatusCode::OK, Json(Value::Array(f.reviews.get(&pr).cloned().unwrap_or_default())))
            }),
        )
        .route(
            "/repos/acme/fleet/commits/{sha}/pulls",
            get(|State(s): State<Shared>, Path(sha): Path<String>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let f = s.lock().unwrap();
                let list: Vec<Value> = f.merges.get(&sha).into_iter()
                    .filter_map(|pr| Some(f.pull_json(*pr, &f.head_of(*pr)?)))
                    .map(|mut p| { p["merge_commit_sha"] = json!(sha); p })
                    .collect();
                (StatusCode::OK, Json(Value::Array(list)))
            }),
        )
        .route(
            "/repos/acme/fleet/commits/{sha}/pull",
            get(|State(s): State<Shared>, Path(sha): Path<String>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let f = s.lock().unwrap();
                match f.merges.get(&sha).and_then(|pr| Some(f.pull_json(*pr, &f.head_of(*pr)?))) {
                    Some(p) => (StatusCode::OK, Json(p)),
                    None => (StatusCode::NOT_FOUND, Json(json!({"message": "pull request does not exist"}))),
                }
            }),
        )
        .route(
            "/orgs/{org}/teams/{team}/members",
            get(|State(s): State<Shared>, Path((org, team)): Path<(String, String)>, h: HeaderMap| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                match s.lock().unwrap().teams.get(&format!("{org}/{team}")) {
                    Some(m) => (StatusCode::OK, Json(Value::Array(m.iter().map(|l| json!({"login": l})).collect()))),
                    None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))),
                }
            }),
        )
        .route(
            "/repos/acme/fleet/commits/{sha}/comments",
            post(|State(s): State<Shared>, Path(sha): Path<String>, h: HeaderMap, Json(b): Json<Value>| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                if b["body"].as_str().is_none_or(str::is_empty) {
                    return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"message": "Validation Failed", "errors": [{"field": "body", "code": "missing_field"}]})));
                }
                s.lock().unwrap().requests.push(("POST".into(), format!("commits/{sha}/comments"), b.clone()));
                (StatusCode::CREATED, Json(json!({"id": 7, "body": b["body"], "commit_id": sha})))
            }),
        )
        .with_state(shared.clone());
    let app = if prefix.is_empty() {
        api
    } else {
        Router::new().nest(prefix, api)
    };
    crate::support::serve_in_thread(
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
        app,
    );
    shared
}

#[test]
fn pull_request_plans_become_one_updated_comment_and_statuses_even_after_a_forge_outage() {
    let bed = Testbed::start(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-f, content: \"one\\n\"}\n",
        )],
    );
    repo.write(
        "tidekeeper.yaml",
        &format!("fleet: test\nstatus:\n  forge:\n    kind: github\n    url: http://127.0.0.1:{port}\n    repo: acme/fleet\n"),
    );
    repo.commit("forge");
    let server = repo.path.with_extension("git");
    git(
        repo.path.parent().unwrap(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.path.to_str().unwrap(),
            server.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", server.display());
    // The forge is down at first.
    let d = Daemon::start_env(
        std::path::Path::new(&url),
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("GITHUB_TOKEN", "t0k")],
    );
    let main = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&main, Duration::from_secs(30));
    git(&repo.path, &["checkout", "-q", "-b", "pr"]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-f, content: \"two\\n\"}\n",
    );
    repo.commit("pr 5");
    let pr1 = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &[
            "push",
            "-q",
            server.to_str().unwrap(),
            "HEAD:refs/pull/5/head",
        ],
    );
    d.wait_for("the forge outage reported", Duration::from_secs(20), |d| {
        d.status()["stale"]
            .to_string()
            .contains("forge unreachable")
    });
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-f"),
        "one\n",
        "main still reconciled; the PR not applied"
    );

    // The forge comes back: the status and the comment are posted.
    let fake = fake_github(port);
    fake.lock().unwrap().pulls_from(&server);
    d.wait_for("the PR reported", Duration::from_secs(30), |_| {
        fake.lock().unwrap().comments.len() == 1
    });
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.bad_auth, 0);
        let status = f
            .requests
            .iter()
            .find(|r| r.1 == format!("statuses/{pr1}"))
            .expect("status for the PR head");
        assert_eq!(status.2["context"], "tidekeeper/test/plan");
        assert_eq!(status.2["state"], "success");
        let body = &f.comments[0].2;
        assert!(body.starts_with("<!-- tidekeeper:test -->"), "{body}");
        assert!(
            body.contains("Plan: 0 to add, 1 to change, 0 to destroy.") && added(body, "two"),
            "{body}"
        );
    }
    // Another push to the PR updates the same comment.
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-f, content: \"three\\n\"}\n",
    );
    repo.commit("pr 5, again");
    let pr2 = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &[
            "push",
            "-q",
            "-f",
            server.to_str().unwrap(),
            "HEAD:refs/pull/5/head",
        ],
    );
    d.wait_for("the comment updated", Duration::from_secs(30), |_| {
        added(&fake.lock().unwrap().comments[0].2, "three")
    });
    let f = fake.lock().unwrap();
    assert_eq!(f.comments.len(), 1, "one comment, updated in place");
    assert!(
        f.requests.iter().any(|r| r.0 == "PATCH"),
        "{:?}",
        f.requests
    );
    assert!(f.requests.iter().any(|r| r.1 == format!("statuses/{pr2}")));
    drop(f);

    // Merged: the apply on main gets its status and one commit comment.
    git(&repo.path, &["checkout", "-q", "main"]);
    git(
        &repo.path,
        &["merge", "-q", "--no-ff", "-m", "merge pr 5", "pr"],
    );
    let merged = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &["push", "-q", server.to_str().unwrap(), "main"],
    );
    d.wait_applied(&merged, Duration::from_secs(30));
    d.wait_for("the commit comment", Duration::from_secs(30), |_| {
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r.1 == format!("commits/{merged}/comments"))
    });
    let f = fake.lock().unwrap();
    let apply = f
        .requests
        .iter()
        .find(|r| r.1 == format!("statuses/{merged}") && r.2["context"] == "tidekeeper/test/apply")
        .expect("an apply status on the merge");
    assert_eq!(apply.2["state"], "success", "{:?}", apply.2);
    let comments: Vec<&(String, String, Value)> = f
        .requests
        .iter()
        .filter(|r| r.1 == format!("commits/{merged}/comments"))
        .collect();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let body = comments[0].2["body"].as_str().unwrap();
    assert!(
        body.starts_with("```") && body.contains(&merged[..12]),
        "{body}"
    );
    assert!(body.contains("applied: 1 changed"), "{body}");
    assert_eq!(f.bad_auth, 0);
}

#[test]
fn gitea_gets_the_same_reports_under_its_api_with_its_token_scheme() {
    let bed = Testbed::start(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fake = fake_forge(port, "/api/v1", "token t0k");
    let (repo, main) = forge_repo(
        &bed,
        "/etc/tk-g",
        "gitea",
        &format!("http://127.0.0.1:{port}/api/v1"),
    );
    fake.lock().unwrap().pulls_from(&repo.path);
    let pr = open_pr(&repo, 9, |r| {
        r.write(
            "roles/app.yaml",
            "files:\n  - {path: /etc/tk-g, content: \"two\\n\"}\n",
        );
    });
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("GITEA_TOKEN", "t0k")],
    );
    d.wait_applied(&main, Duration::from_secs(30));
    d.wait_for("the PR comment", Duration::from_secs(30), |_| {
        fake.lock().unwrap().comments.len() == 1
    });
    let f = fake.lock().unwrap();
    assert_eq!(f.bad_auth, 0, "Gitea's `token` scheme");
    assert!(added(&f.comments[0].2, "two"), "{}", f.comments[0].2);
    assert!(
        f.requests.iter().any(|r| r.1 == format!("statuses/{pr}")),
        "a plan status on the PR head"
    );
    let apply = f
        .requests
        .iter()
        .find(|r| r.1 == format!("statuses/{main}"))
        .expect("apply status on main");
    assert_eq!(apply.2["context"], "tidekeeper/test/apply");
    assert_eq!(apply.2["state"], "success");
    assert!(
        !f.requests.iter().any(|r| r.1.starts_with("commits/")),
        "Gitea has no commit comments API"
    );
    drop(f);
    // The dashboard lists the PR's plan and its verdict, linked on the forge.
    let (_, page) = d.get("/");
    let prs = &page[page.find("<table id=\"proposals\">").expect("a PR table")..];
    assert!(
        prs.contains(&format!(
            "<a href=\"http://127.0.0.1:{port}/acme/fleet/pull/9\">#9</a>"
        )),
        "{prs}"
    );
    assert!(
        prs.contains(&format!(
            "/acme/fleet/commit/{pr}\"><code>{}</code>",
            &pr[..12]
        )),
        "{prs}"
    );
    assert!(
        prs.contains("<td class=\"success\">success: Plan: 0 to add, 1 to change"),
        "{prs}"
    );
}

#[test]
fn a_gitea_behind_a_private_ca_is_trusted_once_its_ca_is_in_the_system_roots() {
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_forge(port, "/api/v1", "token t0k");
    let dir = crate::support::TempDir::new("forge-ca");
    let (ca, leaf, key) = crate::support::receivers::tls_files(dir.path());
    let https = crate::support::receivers::https_front(port, &leaf, &key);
    let url = format!("https://127.0.0.1:{https}/api/v1");

    // Without the CA the certificate is refused, and the error says so.
    if std::env::var_os("SSL_CERT_FILE").is_none() {
        let settings = tidekeeper::model::desired::Forge {
            kind: tidekeeper::model::desired::ForgeKind::Gitea,
            url: url.clone(),
            repo: "acme/fleet".into(),
            token_env: "UNUSED".into(),
        };
        let forge = tidekeeper::forge::Forge::with_token(&settings, "t0k");
        let err = block(forge.status("abc", "ctx", "pending", "x"))
            .expect_err("an unknown CA is refused")
            .to_string();
        assert!(err.contains("certificate"), "{err}");
        assert!(fake.lock().unwrap().requests.is_empty());
    }

    // With it (SSL_CERT_FILE, as for curl and git): statuses and the comment arrive.
    let (repo, main) = forge_repo(&bed, "/etc/tk-ca", "gitea", &url);
    fake.lock().unwrap().pulls_from(&repo.path);
    open_pr(&repo, 4, |r| {
        r.write(
            "roles/app.yaml",
            "files:\n  - {path: /etc/tk-ca, content: \"two\\n\"}\n",
        );
    });
    let ca = ca.display().to_string();
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("GITEA_TOKEN", "t0k"), ("SSL_CERT_FILE", &ca)],
    );
    d.wait_applied(&main, Duration::from_secs(30));
    d.wait_for("the PR comment over HTTPS", Duration::from_secs(30), |_| {
        fake.lock().unwrap().comments.len() == 1
    });
    let f = fake.lock().unwrap();
    assert_eq!(f.bad_auth, 0);
    assert!(added(&f.comments[0].2, "two"), "{}", f.comments[0].2);
    assert!(
        f.requests
            .iter()
            .any(|r| r.1 == format!("statuses/{main}") && r.2["state"] == "success"),
        "the apply status on main: {:?}",
        f.requests
    );
}

/// A one-host repo whose role `app` writes `path`, reporting to a forge of
/// `kind` at `url`; the head of main.
fn forge_repo(bed: &Testbed, path: &str, kind: &str, url: &str) -> (FleetRepo, String) {
    let repo = FleetRepo::minimal(
        bed,
        &[(
            "app",
            &format!("files:\n  - {{path: {path}, content: \"one\\n\"}}\n"),
        )],
    );
    repo.write(
        "tidekeeper.yaml",
        &format!("fleet: test\nstatus:\n  forge:\n    kind: {kind}\n    url: {url}\n    repo: acme/fleet\n"),
    );
    repo.commit("forge");
    let main = git(&repo.path, &["rev-parse", "HEAD"]);
    (repo, main)
}

/// Commit `change` on a branch and publish it as pull request `n`
/// (`refs/pull/N/head`), back on main; the PR's head.
pub(crate) fn open_pr(repo: &FleetRepo, n: u64, change: impl FnOnce(&FleetRepo)) -> String {
    git(&repo.path, &["checkout", "-q", "-b", &format!("pr-{n}")]);
    change(repo);
    repo.commit(&format!("pr {n}"));
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &["update-ref", &format!("refs/pull/{n}/head"), &head],
    );
    git(&repo.path, &["checkout", "-q", "main"]);
    head
}

fn settings(port: u16) -> tidekeeper::model::desired::Forge {
    tidekeeper::model::desired::Forge {
        kind: tidekeeper::model::desired::ForgeKind::Github,
        url: format!("http://127.0.0.1:{port}"),
        repo: "acme/fleet".into(),
        token_env: "UNUSED".into(),
    }
}

#[test]
fn a_late_plan_of_an_older_head_never_overwrites_the_comment() {
    let port = free_port();
    let fake = fake_github(port);
    let forge = tidekeeper::forge::Forge::with_token(&settings(port), "t0k");
    let marker = "<!-- tidekeeper:acme -->";
    let (older, newer, newest) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    fake.lock().unwrap().heads.insert(3, newer.clone());
    // The plan of the PR's head is posted first…
    assert!(block(forge.upsert_comment(3, marker, &format!("{marker}\nnewer"), &newer)).unwrap());
    // …then a slow plan of an older head finishes: it is dropped, whatever
    // its commit says its date is.
    assert!(!block(forge.upsert_comment(3, marker, &format!("{marker}\nolder"), &older)).unwrap());
    // The same plan again is not sent again either.
    assert!(!block(forge.upsert_comment(3, marker, &format!("{marker}\nnewer"), &newer)).unwrap());
    // The next head's plan replaces it.
    fake.lock().unwrap().heads.insert(3, newest.clone());
    assert!(block(forge.upsert_comment(3, marker, &format!("{marker}\nnewest"), &newest)).unwrap());
    let f = fake.lock().unwrap();
    assert_eq!(f.comments.len(), 1);
    assert!(f.comments[0].2.contains("newest"), "{}", f.comments[0].2);
    let writes = f
        .requests
        .iter()
        .filter(|r| r.0 == "PATCH" || r.0 == "POST" && r.1.contains("comments"))
        .count();
    assert_eq!(writes, 2, "one POST, one PATCH: {:?}", f.requests);
    let whoami = f.requests.iter().filter(|r| r.1 == "user").count();
    assert_eq!(
        whoami, 1,
        "who the token is is asked once: {:?}",
        f.requests
    );
}

#[test]
fn a_comment_carrying_the_marker_by_anyone_else_is_never_taken_for_the_plan() {
    let port = free_port();
    let fake = fake_github(port);
    let forge = tidekeeper::forge::Forge::with_token(&settings(port), "t0k");
    let marker = tidekeeper::report::marker("acme");
    let head = "d".repeat(40);
    let forged = format!(
        "{marker}\n### tidekeeper plan for `acme`\n\n**Plan: no changes.** Policies: all passed.\n"
    );
    {
        let mut f = fake.lock().unwrap();
        f.heads.insert(8, head.clone());
        // The PR's author comments first, with tidekeeper's marker (and the
        // markers of later parts).
        f.comments.push((8, 1, forged.clone()));
        f.authors.insert(1, "mallory".into());
        f.comments.push((
            8,
            2,
            format!("{}\nspare", tidekeeper::report::part_marker(&marker, 2)),
        ));
        f.authors.insert(2, "mallory".into());
    }
    let plan = format!("{marker}\nthe real plan: 1 to change");
    assert!(block(forge.upsert_comments(8, &marker, std::slice::from_ref(&plan), &head)).unwrap());
    let f = fake.lock().unwrap();
    assert_eq!(
        f.comments.len(),
        3,
        "tidekeeper posts its own: {:?}",
        f.comments
    );
    assert_eq!(
        f.comments[0].2, forged,
        "the author's comment is not edited"
    );
    assert!(
        f.comments[1].2.contains("spare"),
        "nor deleted as a leftover part"
    );
    assert_eq!(f.comments[2].2, plan);
    assert_eq!(f.authors[&f.comments[2].1], BOT);
    assert!(
        !f.requests.iter().any(|r| r.0 == "PATCH" || r.0 == "DELETE"),
        "{:?}",
        f.requests
    );
    drop(f);
    // The next plan edits tidekeeper's comment, still not the author's.
    let again = format!("{marker}\nthe real plan: 2 to change");
    assert!(block(forge.upsert_comments(8, &marker, std::slice::from_ref(&again), &head)).unwrap());
    let f = fake.lock().unwrap();
    assert_eq!(f.comments[0].2, forged);
    assert_eq!(f.comments[2].2, again);
    assert_eq!(f.comments.len(), 3);
}

#[test]
fn a_status_description_is_one_line_of_plain_text_capped_at_140() {
    let port = free_port();
    let fake = fake_github(port);
    let forge = tidekeeper::forge::Forge::with_token(&settings(port), "t0k");
    let evil = format!("denied by x: <!-- a\nb\r\x1b[2J {}", "z".repeat(400));
    assert!(block(forge.status(&"e".repeat(40), "ctx", "failure", &evil)).unwrap());
    let f = fake.lock().unwrap();
    let d = f.requests[0].2["description"].as_str().unwrap().to_string();
    assert_eq!(d.chars().count(), 140, "{d}");
    assert!(d.starts_with("denied by x: <!-- a b [2J z"), "{d}");
    assert!(!d.contains(['\n', '\r', '\x1b']), "{d:?}");
}

#[test]
fn a_restarted_daemon_does_not_post_the_same_statuses_or_comment_again() {
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_github(port);
    let (repo, main) = forge_repo(
        &bed,
        "/etc/tk-r",
        "github",
        &format!("http://127.0.0.1:{port}"),
    );
    fake.lock().unwrap().pulls_from(&repo.path);
    let pr = open_pr(&repo, 4, |r| {
        r.write(
            "roles/app.yaml",
            "files:\n  - {path: /etc/tk-r, content: \"two\\n\"}\n",
        );
    });
    let args = ["--poll", "1s", "--drift", "600s"];
    let env = [("GITHUB_TOKEN", "t0k")];
    let state = crate::support::TempDir::new("daemon-restart");
    let keep = state.path().to_path_buf();
    let d = Daemon::start_full(&repo.path, &repo.key, &args, state, &env);
    d.wait_applied(&main, Duration::from_secs(30));
    d.wait_for("the PR comment", Duration::from_secs(30), |_| {
        fake.lock().unwrap().comments.len() == 1
    });
    let before = fake.lock().unwrap().requests.len();
    let state = d.stop_keep_state();
    assert_eq!(state.path(), keep);
    let d = Daemon::start_full(&repo.path, &repo.key, &args, state, &env);
    // The head was planned before the restart: the record in the state
    // directory says so, so it is not planned (nor reported) again.
    d.wait_fetches(3, Duration::from_secs(30));
    assert!(!d.log().contains("proposal planned"), "{}", d.log());
    let f = fake.lock().unwrap();
    assert_eq!(
        f.requests.len(),
        before,
        "nothing new sent after the restart: {:?}",
        &f.requests[before..]
    );
    let statuses = f
        .requests
        .iter()
        .filter(|r| r.1 == format!("statuses/{pr}"))
        .count();
    assert_eq!(statuses, 1);
    drop(f);
    // The dashboard after the restart: the applied commit read back from the
    // status branch's history, the PR's plan from the history kept in the
    // state directory.
    let (_, page) = d.get("/");
    let timeline = &page[page.find("<table id=\"timeline\">").expect("a timeline")..];
    assert!(timeline.contains(&main[..12]), "{timeline}");
    let prs = &page[page.find("<table id=\"proposals\">").expect("the PR")..];
    assert!(prs.contains(&pr[..12]), "{prs}");
}

#[test]
fn a_pr_that_changes_files_on_two_hosts_and_resizes_a_server_shows_diffs_and_the_cost_delta() {
    use crate::cloud::{APP, BASE, HELLO, WEB};
    let port = free_port();
    let fake = fake_github(port);
    let forge = format!(
        "status:\n  forge:\n    kind: github\n    url: http://127.0.0.1:{port}\n    repo: acme/fleet\n"
    );
    let f = CloudFleet::start(
        &[
            ("roles/base.yaml", BASE),
            ("templates/hello.j2", HELLO),
            ("hosts/web.yaml", WEB),
            ("hosts/app.yaml", APP),
        ],
        &forge,
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::support::fleet::text(&out)
    );
    let main = git(&f.repo.path, &["rev-parse", "HEAD"]);
    fake.lock().unwrap().pulls_from(&f.repo.path);
    let mut env = vec![("GITHUB_TOKEN", "t0k")];
    env.extend(crate::support::cloud::CREDENTIALS);
    let d = Daemon::start_env(
        &f.repo.path,
        &f.repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &env,
    );
    d.wait_applied(&main, Duration::from_secs(60));

    git(&f.repo.path, &["checkout", "-q", "-b", "pr"]);
    f.repo
        .write("templates/hello.j2", "hello v2 {{ host.name }}\n");
    f.repo
        .write("hosts/web.yaml", &WEB.replace("type: cpx21", "type: cpx31"));
    f.repo.commit("pr 7: v2 and a bigger web");
    let pr1 = git(&f.repo.path, &["rev-parse", "HEAD"]);
    git(&f.repo.path, &["update-ref", "refs/pull/7/head", &pr1]);
    git(&f.repo.path, &["checkout", "-q", "main"]);
    d.wait_for("the PR comment", Duration::from_secs(60), |_| {
        fake.lock().unwrap().comments.len() == 1
    });
    {
        let fk = fake.lock().unwrap();
        let body = &fk.comments[0].2;
        for want in [
            "**Plan: 0 to add, 3 to change, 0 to destroy.**",
            "Monthly cost: 11.90 → 17.95 EUR (+6.05)",
            // The cost per server and provider, as a table.
            "| web | Hetzner | 7.55 EUR | 13.60 EUR | +6.05 EUR |",
            "| **fleet** | | 11.90 EUR | 17.95 EUR | **+6.05 EUR** |",
            // Markers at column 0, so GitHub colours the lines; `~` shown as `!`.
            "\n!     web server (Hetzner, resize)  7.55 → 13.60 EUR/month (+6.05)",
            "\n+        hello v2 web",
            "\n+        hello v2 app",
            "Policies: all passed.",
        ] {
            assert!(body.contains(want), "missing {want:?} in:\n{body}");
        }
        // Summary and cost come before the per-host details.
        assert!(body.find("Monthly cost").unwrap() < body.find("<details>").unwrap());
        let status = fk
            .requests
            .iter()
            .find(|r| r.1 == format!("statuses/{pr1}"))
            .expect("a status on the PR head");
        assert_eq!(status.2["context"], "tidekeeper/acme/plan");
        assert_eq!(status.2["state"], "success");
    }
    // Read-only: nothing of the PR was applied.
    assert_eq!(f.hetzner.server("web").unwrap().server_type, "cpx21");
    assert_eq!(f.ssh("web", "cat /etc/tk-cloud"), "hello web\n");

    git(&f.repo.path, &["checkout", "-q", "pr"]);
    f.repo
        .write("templates/hello.j2", "hello v3 {{ host.name }}\n");
    f.repo.commit("pr 7: v3");
    let pr2 = git(&f.repo.path, &["rev-parse", "HEAD"]);
    git(&f.repo.path, &["update-ref", "refs/pull/7/head", &pr2]);
    git(&f.repo.path, &["checkout", "-q", "main"]);
    d.wait_for("the comment updated", Duration::from_secs(60), |_| {
        added(&fake.lock().unwrap().comments[0].2, "hello v3 web")
    });
    let fk = fake.lock().unwrap();
    assert_eq!(fk.comments.len(), 1, "one comment, updated in place");
    assert!(fk.requests.iter().any(|r| r.1 == format!("statuses/{pr2}")));
}

#[test]
fn a_pr_that_opens_ssh_to_the_world_fails_its_status_naming_the_policy() {
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_github(port);
    let (repo, main) = forge_repo(
        &bed,
        "/etc/tk-d",
        "github",
        &format!("http://127.0.0.1:{port}"),
    );
    fake.lock().unwrap().pulls_from(&repo.path);
    let pr = open_pr(&repo, 11, |r| {
        r.write("roles/fw.yaml", crate::policy::OPEN_SSH);
        let hf = format!("hosts/{}.yaml", bed.host(0).name);
        let t = r.read(&hf).replace("roles: [app]", "roles: [app, fw]");
        r.write(&hf, &t);
    });
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("GITHUB_TOKEN", "t0k")],
    );
    d.wait_applied(&main, Duration::from_secs(30));
    // The status is posted first, then the comment.
    d.wait_for("the PR status and comment", Duration::from_secs(30), |_| {
        let f = fake.lock().unwrap();
        f.requests.iter().any(|r| r.1 == format!("statuses/{pr}")) && !f.comments.is_empty()
    });
    let f = fake.lock().unwrap();
    let status = f
        .requests
        .iter()
        .find(|r| r.1 == format!("statuses/{pr}"))
        .unwrap();
    assert_eq!(status.2["state"], "failure", "{:?}", status.2);
    let desc = status.2["description"].as_str().unwrap();
    assert!(
        desc.starts_with("denied by tidekeeper.builtin.exposure: "),
        "{desc}"
    );
    assert!(desc.contains("opens port 22"), "{desc}");
    let body = &f.comments[0].2;
    assert!(
        body.contains(":x: **deny**") && body.contains("(policy tidekeeper.builtin.exposure)"),
        "{body}"
    );
}

#[test]
fn a_plan_in_several_comments_is_updated_in_place_across_pages_and_leftover_parts_are_deleted() {
    let port = free_port();
    let fake = fake_github(port);
    // 150 comments by people come first: tidekeeper's are on the second page.
    for i in 0..150u64 {
        fake.lock()
            .unwrap()
            .comments
            .push((5, i, format!("LGTM {i}")));
    }
    let settings = tidekeeper::model::desired::Forge {
        kind: tidekeeper::model::raw::ForgeKind::Github,
        url: format!("http://127.0.0.1:{port}"),
        repo: "acme/fleet".into(),
        token_env: "UNUSED".into(),
    };
    let forge = tidekeeper::forge::Forge::with_token(&settings, "t0k");
    let (h9, h10, h11) = ("9".repeat(40), "a".repeat(40), "b".repeat(40));
    fake.lock().unwrap().heads.insert(5, h10.clone());
    let marker = tidekeeper::report::marker("acme");
    let parts = |tag: &str, n: usize| -> Vec<String> {
        (1..=n)
            .map(|k| {
                format!(
                    "{}\nplan {tag} part {k}",
                    tidekeeper::report::part_marker(&marker, k)
                )
            })
            .collect()
    };
    let ours = |f: &Shared| -> Vec<String> {
        f.lock()
            .unwrap()
            .comments
            .iter()
            .filter(|c| c.2.contains("<!-- tidekeeper:acme"))
            .map(|c| c.2.clone())
            .collect()
    };
    assert!(block(forge.upsert_comments(5, &marker, &parts("a", 3), &h10)).unwrap());
    assert_eq!(ours(&fake).len(), 3);
    let posts = fake.lock().unwrap().requests.len();
    // The same plan again: found on page 2, nothing posted.
    assert!(!block(forge.upsert_comments(5, &marker, &parts("a", 3), &h10)).unwrap());
    assert_eq!(
        fake.lock().unwrap().requests.len(),
        posts,
        "{:?}",
        fake.lock().unwrap().requests
    );
    // A newer, shorter plan: part 1 edited, parts 2 and 3 deleted.
    fake.lock().unwrap().heads.insert(5, h11.clone());
    assert!(block(forge.upsert_comments(5, &marker, &parts("b", 1), &h11)).unwrap());
    let now = ours(&fake);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(now[0].contains("plan b part 1"));
    let reqs: Vec<String> = fake.lock().unwrap().requests[posts..]
        .iter()
        .filter(|r| r.0 != "GET")
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(reqs, ["PATCH", "DELETE", "DELETE"]);
    // An older plan arriving late changes nothing.
    assert!(!block(forge.upsert_comments(5, &marker, &parts("old", 2), &h9)).unwrap());
    assert_eq!(ours(&fake).len(), 1);
    assert_eq!(
        fake.lock().unwrap().comments.len(),
        151,
        "the people's comments are untouched"
    );
}

#[test]
fn a_held_commit_gets_a_pending_status_linking_the_daemon_and_goes_through_on_release_or_approval()
{
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_github(port);
    let (repo, main) = forge_repo(
        &bed,
        "/etc/tk-h",
        "github",
        &format!("http://127.0.0.1:{port}"),
    );
    let config = format!(
        "fleet: test\nstatus:\n  forge:\n    kind: github\n    url: http://127.0.0.1:{port}\n    repo: acme/fleet\napply:\n  require_reviewed_plan: true\n"
    );
    repo.write("tidekeeper.yaml", &config);
    repo.commit("reviewed plans only");
    let first = git(&repo.path, &["rev-parse", "HEAD"]);
    assert_ne!(first, main);
    let args = ["--poll", "1s", "--drift", "600s"];
    let env = [("GITHUB_TOKEN", "t0k"), ("TIDEKEEPER_API_TOKEN", "tok-h")];
    let state = crate::support::TempDir::new("daemon-held-forge");
    let d = Daemon::start_full(&repo.path, &repo.key, &args, state, &env);
    d.wait_applied(&first, Duration::from_secs(30));
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-h, content: \"two\\n\"}\n",
    );
    repo.commit("pushed directly");
    let pushed = git(&repo.path, &["rev-parse", "HEAD"]);
    let status_of = |sha: &str, state: &str| {
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .find(|r| r.1 == format!("statuses/{sha}") && r.2["state"] == state)
            .map(|r| r.2.clone())
    };
    d.wait_for("the held status", Duration::from_secs(30), |_| {
        status_of(&pushed, "pending").is_some()
    });
    let s = status_of(&pushed, "pending").unwrap();
    assert_eq!(
        s["description"], "held: no reviewed plan of this tree",
        "{s}"
    );
    assert_eq!(s["context"], "tidekeeper/test/apply", "{s}");
    assert_eq!(
        s["target_url"],
        format!("http://127.0.0.1:{}/", d.port),
        "{s}"
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-h"), "one\n");
    let out = release(&d, "tok-h", &pushed, "bob", &[]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::fleet::text(&out)
    );
    d.wait_applied(&pushed, Duration::from_secs(30));
    d.wait_for("the success status", Duration::from_secs(30), |_| {
        status_of(&pushed, "success").is_some()
    });
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-h"), "two\n");

    // Another push, held; a PR of exactly its tree, planned: still held
    // until someone other than tidekeeper approves that head.
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-h, content: \"three\\n\"}\n",
    );
    repo.commit("pushed again");
    let again = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_for("held", Duration::from_secs(30), |d| {
        d.status()["held"]["commit"].as_str() == Some(again.as_str())
    });
    fake.lock().unwrap().pulls_from(&repo.path);
    git(&repo.path, &["update-ref", "refs/pull/9/head", &again]);
    let review = |by: &str, sha: &str| json!({"id": 1, "state": "APPROVED", "commit_id": sha, "user": {"login": by}});
    // The bot's own approval, or one of an older head, does not count.
    fake.lock()
        .unwrap()
        .reviews
        .insert(9, vec![review(BOT, &again), review("carol", &pushed)]);
    d.wait_for("the PR planned", Duration::from_secs(30), |_| {
        status_of(&again, "success").is_some() || !fake.lock().unwrap().comments.is_empty()
    });
    d.wait_fetches(
        d.get("/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("tidekeeper_git_fetches_total "))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 2,
        Duration::from_secs(30),
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-h"), "two\n", "not approved yet");
    fake.lock()
        .unwrap()
        .reviews
        .get_mut(&9)
        .unwrap()
        .push(review("carol", &again));
    d.wait_applied(&again, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-h"), "three\n");

    // The audit trail in the notes, as `tidekeeper log` reads it.
    let log = |format: &str| {
        let out = crate::support::tidekeeper()
            .args(["log", "-n", "5", "--format", format, "--repo"])
            .arg(&repo.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            crate::support::fleet::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let entry = |doc: &Value, sha: &str| {
        doc["commits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["commit"] == sha)
            .cloned()
            .unwrap_or(Value::Null)
    };
    d.wait_for(
        "the applied note on the approved commit",
        Duration::from_secs(30),
        |_| {
            let doc: Value = serde_json::from_str(&log("json")).unwrap();
            entry(&doc, &again)["verdict"] == "applied"
        },
    );
    let doc: Value = serde_json::from_str(&log("json")).unwrap();
    assert_eq!(doc["format_version"], 1, "{doc}");
    let released = entry(&doc, &pushed);
    assert_eq!(released["verdict"], "applied", "{doc}");
    assert_eq!(released["released"]["by"], "bob", "{doc}");
    assert_eq!(
        released["released"]["now"], false,
        "a plain release, not --now: {doc}"
    );
    assert!(
        released["released"]["at"]
            .as_str()
            .is_some_and(|t| t.len() == 20),
        "{doc}"
    );
    assert_eq!(released["approved_by"], json!([]), "{doc}");
    assert_eq!(
        released["reviewed_plan"],
        Value::Null,
        "no proposal had its tree: {doc}"
    );
    let approved = entry(&doc, &again);
    assert_eq!(approved["approved_by"], json!(["carol"]), "{doc}");
    assert_eq!(approved["released"], Value::Null, "{doc}");
    assert_eq!(
        approved["reviewed_plan"]["proposal"], "refs/pull/9/head",
        "{doc}"
    );
    assert!(
        approved["reviewed_plan"]["digest"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{doc}"
    );
    assert_eq!(entry(&doc, &first)["verdict"], "applied", "{doc}");
    assert_eq!(
        entry(&doc, &main)["reconciled"],
        false,
        "before the daemon: {doc}"
    );
    let table = log("text");
    let row = |sha: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&sha[..12]))
            .unwrap_or_else(|| panic!("no row for {sha} in\n{table}"))
            .to_string()
    };
    assert!(
        row(&pushed).contains(" applied ") && row(&pushed).contains("bob at "),
        "{table}"
    );
    assert!(
        row(&again).contains("carol") && row(&again).contains("refs/pull/9/head"),
        "{table}"
    );
}

/// A merge of `branch` into main, with a merge commit, made as a forge makes
/// it: the forge knows the merge (`known` runs with its sha) before main
/// moves, so a daemon polling main never sees a merge its forge cannot name.
fn merge(repo: &FleetRepo, branch: &str, message: &str, known: impl FnOnce(&str)) -> String {
    git(&repo.path, &["checkout", "-q", "--detach", "main"]);
    git(
        &repo.path,
        &["merge", "-q", "--no-ff", branch, "-m", message],
    );
    let sha = git(&repo.path, &["rev-parse", "HEAD"]);
    known(&sha);
    git(&repo.path, &["checkout", "-q", "main"]);
    git(&repo.path, &["merge", "-q", "--ff-only", &sha]);
    sha
}

#[test]
fn a_merge_is_applied_only_once_its_pull_request_meets_the_apply_requirements() {
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_github(port);
    let url = format!("http://127.0.0.1:{port}");
    let (repo, _) = forge_repo(&bed, "/etc/tk-r", "github", &url);
    repo.write(
        "tidekeeper.yaml",
        &format!(
            "fleet: test\nstatus:\n  forge:\n    kind: github\n    url: {url}\n    repo: acme/fleet\napply:\n  apply_requirements:\n    approved: 2\n    owners: [\"tidekeeper.yaml @acme/leads\"]\n    mergeable: true\n    undiverged: true\n"
        ),
    );
    // The base's CODEOWNERS: roles are erin's.
    repo.write(".github/CODEOWNERS", "# owners\nroles/ @erin\n");
    repo.commit("apply requirements");
    let base = git(&repo.path, &["rev-parse", "HEAD"]);
    let env = [("GITHUB_TOKEN", "t0k"), ("TIDEKEEPER_API_TOKEN", "tok-r")];
    let state = crate::support::TempDir::new("daemon-requirements");
    let args = ["--poll", "1s", "--drift", "600s"];
    let d = Daemon::start_full(&repo.path, &repo.key, &args, state, &env);
    d.wait_applied(&base, Duration::from_secs(30));
    fake.lock().unwrap().pulls_from(&repo.path);
    let review = |by: &str, sha: &str| json!({"id": 1, "state": "APPROVED", "commit_id": sha, "user": {"login": by}});
    let held_for = |d: &Daemon, commit: &str| {
        let s = d.status();
        (s["held"]["commit"].as_str() == Some(commit))
            .then(|| s["held"]["reason"].as_str().unwrap_or("").to_string())
    };

    // Pull request 5, merged by the forge with one approval (carol's), and
    // none by the owner of roles/: held, with both reasons.
    let head5 = open_pr(&repo, 5, |r| {
        r.write(
            "roles/app.yaml",
            "files:\n  - {path: /etc/tk-r, content: \"two\\n\"}\n",
        );
    });
    {
        let mut f = fake.lock().unwrap();
        f.pulls
            .insert(5, json!({"merged": true, "merged_by": {"login": "alice"}}));
        f.reviews.insert(5, vec![review("carol", &head5)]);
    }
    let merge5 = merge(&repo, "pr-5", "Merge pull request #5", |sha| {
        fake.lock().unwrap().merges.insert(sha.to_string(), 5);
    });
    d.wait_for("held for its approvals", Duration::from_secs(30), |d| {
        held_for(d, &merge5).is_some()
    });
    let why = held_for(&d, &merge5).unwrap();
    assert!(
        why.contains("2 approval(s) asked, 1 at its head") && why.contains("(carol)"),
        "{why}"
    );
    assert!(
        why.contains("roles/app.yaml need(s) an approval by @erin"),
        "{why}"
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-r"), "one\n");
    // The daemon shows the hold, then posts its status.
    let status_of_merge5 = || {
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .rev()
            .find(|r| r.1 == format!("statuses/{merge5}"))
            .map(|r| r.2.clone())
    };
    d.wait_for(
        "a status on the held merge",
        Duration::from_secs(30),
        |_| status_of_merge5().is_some(),
    );
    let pending = status_of_merge5().unwrap();
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(
        pending["description"], "held: apply requirements not met",
        "{pending}"
    );
    // A second approval, but carol takes hers back: still short.
    fake.lock().unwrap().reviews.get_mut(&5).unwrap().extend([
        review("dave", &head5),
        json!({"id": 2, "state": "CHANGES_REQUESTED", "commit_id": head5, "user": {"login": "carol"}}),
    ]);
    d.wait_fetches(fetches(&d) + 2, Duration::from_secs(30));
    assert!(held_for(&d, &merge5).is_some_and(|w| w.contains("1 at its head")));
    // erin (the owner) approves too: judged again on the next poll, applied.
    fake.lock()
        .unwrap()
        .reviews
        .get_mut(&5)
        .unwrap()
        .push(review("erin", &head5));
    d.wait_applied(&merge5, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-r"), "two\n");
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &merge5]);
    assert!(
        note.contains("approval: pull request #5, merged by alice, approved by dave, erin"),
        "{note}"
    );
    // `tidekeeper log` reads who merged and approved back from the note.
    let out = crate::support::tidekeeper()
        .args(["log", "-n", "3", "--format", "json", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = doc["commits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["commit"] == merge5.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(e["merged_by"], "alice", "{doc}");
    assert_eq!(e["approved_by"], json!(["dave", "erin"]), "{doc}");
    assert_eq!(e["verdict"], "applied", "{doc}");

    // A direct push: no pull request merged it.
    repo.write("README.md", "pushed around review\n");
    repo.commit("direct push");
    let pushed = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_for("the push held", Duration::from_secs(30), |d| {
        held_for(d, &pushed).is_some()
    });
    assert!(
        held_for(&d, &pushed)
            .unwrap()
            .contains("no pull request merged"),
        "{}",
        d.status()
    );

    // Pull request 6 was opened before that push; its merge brings the push
    // in (diverged), the forge did not merge it, and tidekeeper.yaml is the
    // leads' team's, whom nobody of it approved.
    git(&repo.path, &["checkout", "-q", "-b", "pr-6", &merge5]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-r, content: \"three\\n\"}\n",
    );
    repo.write(
        "tidekeeper.yaml",
        &format!(
            "fleet: test\nstatus:\n  forge:\n    kind: github\n    url: {url}\n    repo: acme/fleet\napply:\n  apply_requirements:\n    approved: 1\n"
        ),
    );
    repo.commit("pr 6: lower the bar");
    let head6 = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["update-ref", "refs/pull/6/head", &head6]);
    git(&repo.path, &["checkout", "-q", "main"]);
    {
        let mut f = fake.lock().unwrap();
        f.teams.insert("acme/leads".into(), vec!["lena".into()]);
        f.pulls
            .insert(6, json!({"merged": false, "mergeable": false}));
        f.reviews
            .insert(6, vec![review("erin", &head6), review("dave", &head6)]);
    }
    let merge6 = merge(&repo, "pr-6", "Merge pull request #6", |sha| {
        fake.lock().unwrap().merges.insert(sha.to_string(), 6);
    });
    d.wait_for("held as diverged", Duration::from_secs(30), |d| {
        held_for(d, &merge6).is_some()
    });
    let why = held_for(&d, &merge6).unwrap();
    for part in [
        "pull request #6",
        "not merged by the forge",
        "it diverged",
        "tidekeeper.yaml need(s) an approval by @acme/leads",
    ] {
        assert!(why.contains(part), "{part:?} in {why}");
    }
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-r"), "two\n", "nothing applied");
    // An operator's release is the break-glass, and the note says who.
    let out = release(&d, "tok-r", &merge6, "olga", &[]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::fleet::text(&out)
    );
    d.wait_applied(&merge6, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-r"), "three\n");
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &merge6]);
    assert!(note.contains("released by olga"), "{note}");
}

/// `tidekeeper release COMMIT --by BY [extra…]` sent to the daemon `d`.
fn release(
    d: &Daemon,
    token: &str,
    commit: &str,
    by: &str,
    extra: &[&str],
) -> std::process::Output {
    crate::support::tidekeeper()
        .args(["release", commit, "--by", by])
        .args(extra)
        .args(["--daemon", &format!("127.0.0.1:{}", d.port)])
        .env("TIDEKEEPER_API_TOKEN", token)
        .output()
        .unwrap()
}

/// Fetches the daemon has made so far.
fn fetches(d: &Daemon) -> u32 {
    d.get("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("tidekeeper_git_fetches_total "))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

#[test]
fn approvals_pull_requests_and_teams_read_alike_from_github_and_gitea() {
    for (prefix, auth, kind) in [
        (
            "",
            "Bearer t0k",
            tidekeeper::model::desired::ForgeKind::Github,
        ),
        (
            "/api/v1",
            "token t0k",
            tidekeeper::model::desired::ForgeKind::Gitea,
        ),
    ] {
        let port = free_port();
        let fake = fake_forge(port, prefix, auth);
        let head = "a".repeat(40);
        {
            let mut f = fake.lock().unwrap();
            f.heads.insert(3, head.clone());
            f.merges.insert("m".repeat(40), 3);
            f.pulls
                .insert(3, json!({"merged": true, "merged_by": {"login": "alice"}}));
            f.teams.insert("acme/ops".into(), vec!["bob".into()]);
            f.reviews.insert(
                3,
                vec![
                    json!({"state": "APPROVED", "commit_id": head, "user": {"login": "bob"}}),
                    json!({"state": "APPROVED", "commit_id": "old", "user": {"login": "carol"}}),
                    json!({"state": "APPROVED", "commit_id": head, "user": {"login": BOT}}),
                    json!({"state": "APPROVED", "commit_id": head, "user": {"login": "dave"}}),
                    json!({"state": "COMMENTED", "commit_id": head, "user": {"login": "dave"}}),
                    json!({"state": "APPROVED", "commit_id": head, "dismissed": true, "user": {"login": "erin"}}),
                ],
            );
        }
        let s = tidekeeper::model::desired::Forge {
            kind,
            url: format!("http://127.0.0.1:{port}{prefix}"),
            repo: "acme/fleet".into(),
            token_env: "UNUSED".into(),
        };
        let forge = tidekeeper::forge::Forge::with_token(&s, "t0k");
        assert_eq!(
            block(forge.approvals(3, &head)).unwrap(),
            ["bob", "dave"],
            "{kind:?}: a comment keeps an approval; old heads, dismissals and the bot do not count"
        );
        assert_eq!(
            block(forge.pull_of_commit(&"m".repeat(40))).unwrap(),
            Some(3)
        );
        assert_eq!(block(forge.pull_of_commit(&"n".repeat(40))).unwrap(), None);
        let pull = block(forge.pull(3)).unwrap();
        assert!(pull.merged, "{kind:?}");
        assert_eq!(pull.merged_by.as_deref(), Some("alice"));
        assert_eq!(pull.head, head);
        let team = block(forge.team_members("acme", "ops"));
        match kind {
            tidekeeper::model::desired::ForgeKind::Github => assert_eq!(team.unwrap(), ["bob"]),
            _ => assert!(team.unwrap_err().to_string().contains("name its members")),
        }
    }
}

#[test]
fn a_commit_outside_the_apply_windows_gets_a_pending_status_until_released_now() {
    let bed = Testbed::start(1);
    let port = free_port();
    let fake = fake_github(port);
    let (repo, _) = forge_repo(
        &bed,
        "/etc/tk-w",
        "github",
        &format!("http://127.0.0.1:{port}"),
    );
    repo.write(
        "tidekeeper.yaml",
        &format!(
            "fleet: test\nstatus:\n  forge:\n    kind: github\n    url: http://127.0.0.1:{port}\n    repo: acme/fleet\napply:\n  apply_windows:\n    - {{kind: deny, window: 'daily 02:00-06:00 UTC'}}\n"
        ),
    );
    repo.commit("no applies at night");
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    let args = ["--poll", "1s", "--drift", "600s"];
    let env = [
        ("GITHUB_TOKEN", "t0k"),
        ("TIDEKEEPER_API_TOKEN", "tok-w"),
        // Three in the morning, inside the deny window, whatever today is.
        ("TIDEKEEPER_NOW", "2026-06-02T03:00:00Z"),
    ];
    let state = crate::support::TempDir::new("daemon-windows-forge");
    let d = Daemon::start_full(&repo.path, &repo.key, &args, state, &env);
    let status_of = |state: &str| {
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .find(|r| r.1 == format!("statuses/{head}") && r.2["state"] == state)
            .map(|r| r.2.clone())
    };
    d.wait_for("the held status", Duration::from_secs(30), |_| {
        status_of("pending").is_some()
    });
    let s = status_of("pending").unwrap();
    assert_eq!(
        s["description"], "held: outside the apply windows; applies at 2026-06-02T06:00:00Z",
        "{s}"
    );
    assert_eq!(d.status()["held"]["until"], "2026-06-02T06:00:00Z");
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-w 2>/dev/null || echo absent"),
        "absent\n"
    );
    let out = release(&d, "tok-w", &head, "bob", &[]);
    let text = crate::support::fleet::text(&out);
    assert!(!out.status.success() && text.contains("--now"), "{text}");
    let out = release(&d, "tok-w", &head, "bob", &["--now"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::fleet::text(&out)
    );
    d.wait_applied(&head, Duration::from_secs(30));
    d.wait_for("the success status", Duration::from_secs(30), |_| {
        status_of("success").is_some()
    });
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-w"), "one\n");
}
