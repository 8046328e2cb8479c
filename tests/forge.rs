//! Forge reporting against a local server that checks the requests GitHub's
//! REST API expects and answers with its response shapes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::fleet::FleetRepo;
use crate::support::git;
use crate::support::testbed::Testbed;

#[derive(Default)]
struct Fake {
    /// (method, path, body)
    requests: Vec<(String, String, Value)>,
    comments: Vec<(u64, u64, String)>, // (pr, id, body)
    bad_auth: usize,
    /// The Authorization header the forge expects.
    auth: String,
}

type Shared = Arc<Mutex<Fake>>;

fn authorized(s: &Shared, h: &HeaderMap) -> bool {
    let want = s.lock().unwrap().auth.clone();
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str());
    if !ok {
        s.lock().unwrap().bad_auth += 1;
    }
    ok
}

fn fake_github(port: u16) -> Shared {
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
            get(|State(s): State<Shared>, Path(pr): Path<u64>| async move {
                let list: Vec<Value> = s.lock().unwrap().comments.iter().filter(|c| c.0 == pr)
                    .map(|c| json!({"id": c.1, "body": c.2, "user": {"login": "tidekeeper-bot"}})).collect();
                Json(Value::Array(list))
            })
            .post(|State(s): State<Shared>, Path(pr): Path<u64>, h: HeaderMap, Json(b): Json<Value>| async move {
                if !authorized(&s, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"})));
                }
                let mut f = s.lock().unwrap();
                let id = 1000 + f.comments.len() as u64;
                f.comments.push((pr, id, b["body"].as_str().unwrap_or("").to_string()));
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
            }),
        )
        .route(
            "/repos/acme/fleet/commits/{sha}/comments",
            post(|State(s): State<Shared>, Path(sha): Path<String>, Json(b): Json<Value>| async move {
                s.lock().unwrap().requests.push(("POST".into(), format!("commits/{sha}/comments"), b.clone()));
                (StatusCode::CREATED, Json(json!({"id": 7, "body": b["body"]})))
            }),
        )
        .with_state(shared.clone());
    let app = if prefix.is_empty() {
        api
    } else {
        Router::new().nest(prefix, api)
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
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
            body.contains("Plan: 0 to add, 1 to change, 0 to destroy.") && body.contains("+two"),
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
        fake.lock().unwrap().comments[0].2.contains("+three")
    });
    let f = fake.lock().unwrap();
    assert_eq!(f.comments.len(), 1, "one comment, updated in place");
    assert!(
        f.requests.iter().any(|r| r.0 == "PATCH"),
        "{:?}",
        f.requests
    );
    assert!(f.requests.iter().any(|r| r.1 == format!("statuses/{pr2}")));
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
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-g, content: \"one\\n\"}\n",
        )],
    );
    repo.write(
        "tidekeeper.yaml",
        &format!("fleet: test\nstatus:\n  forge:\n    kind: gitea\n    url: http://127.0.0.1:{port}/api/v1\n    repo: acme/fleet\n"),
    );
    repo.commit("forge");
    let main = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["checkout", "-q", "-b", "pr"]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-g, content: \"two\\n\"}\n",
    );
    repo.commit("pr 9");
    let pr = git(&repo.path, &["rev-parse", "HEAD"]);
    git(&repo.path, &["update-ref", "refs/pull/9/head", &pr]);
    git(&repo.path, &["checkout", "-q", "main"]);
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
    assert!(f.comments[0].2.contains("+two"));
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
}
