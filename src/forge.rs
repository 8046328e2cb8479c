//! Reporting to a forge (GitHub or Gitea REST): commit statuses and one
//! plan comment per pull request, updated in place. Statuses are posted only
//! when their state changes (remembered across restarts when given a file).
//! tidekeeper's comments are found by their author — the user its token is
//! (`GET /user`) — never by their marker alone, so a comment anyone else
//! writes is never taken for the plan; and a plan is written only while its
//! head is still the pull request's head (`GET .../pulls/N`), never ordered
//! by commit metadata a proposal's author chooses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::model::desired::{Forge as ForgeSettings, ForgeKind};

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("no token: set {0}")]
    NoToken(String),
    #[error("{method} {url}: {reason}")]
    Request {
        method: &'static str,
        url: String,
        reason: String,
    },
}

pub struct Forge {
    kind: ForgeKind,
    api: String,
    repo: String,
    token: String,
    http: reqwest::Client,
    /// "commit context" → state last posted.
    posted: Mutex<HashMap<String, String>>,
    /// Where `posted` is kept between runs.
    memory: Option<std::path::PathBuf>,
    /// The login of the user the token is (`GET /user`), asked once.
    login: tokio::sync::OnceCell<String>,
}

/// A pull request as the forge has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    /// The sha of its head.
    pub head: String,
    /// Merged by the forge (through its branch protection and checks).
    pub merged: bool,
    /// The forge's answer for an open pull request (`None`: not computed yet).
    pub mergeable: Option<bool>,
    pub merged_by: Option<String>,
    pub author: Option<String>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: String,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    login: String,
}

impl Forge {
    /// A client with the token from the environment variable the settings name.
    pub fn new(s: &ForgeSettings) -> Result<Forge, ForgeError> {
        let token = std::env::var(&s.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| ForgeError::NoToken(s.token_env.clone()))?;
        Ok(Forge::with_token(s, &token))
    }

    pub fn with_token(s: &ForgeSettings, token: &str) -> Forge {
        Forge {
            kind: s.kind,
            api: s.url.trim_end_matches('/').to_string(),
            repo: s.repo.clone(),
            token: token.trim().to_string(),
            http: crate::http::client(Duration::from_secs(20)),
            posted: Mutex::new(HashMap::new()),
            memory: None,
            login: tokio::sync::OnceCell::new(),
        }
    }

    /// Like [`Forge::new`], remembering the statuses it posted in `file`, so
    /// a restart does not post them again.
    pub fn remembering(s: &ForgeSettings, file: std::path::PathBuf) -> Result<Forge, ForgeError> {
        let mut f = Forge::new(s)?;
        // An unreadable record is set aside (and warned of): statuses are
        // then posted again, which rebuilds it.
        let (known, _): (HashMap<String, String>, _) = crate::state_file::read(&file);
        *f.posted.get_mut().unwrap() = known;
        f.memory = Some(file);
        Ok(f)
    }

    fn remember(&self) {
        let Some(file) = &self.memory else { return };
        let posted = self.posted.lock().unwrap().clone();
        if let Err(e) = crate::state_file::write(file, &posted) {
            tracing::warn!(error = %e, file = %file.display(), "cannot remember the forge's statuses");
        }
    }

    fn auth(&self) -> String {
        match self.kind {
            ForgeKind::Github => format!("Bearer {}", self.token),
            ForgeKind::Gitea => format!("token {}", self.token),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ForgeError> {
        let url = format!("{}{path}", self.api);
        let err = |reason: String| ForgeError::Request {
            method: method_name(&method),
            url: url.clone(),
            reason,
        };
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", self.auth())
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| err(crate::http::reason(e)))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Set a commit status unless it already has that state.
    /// `state`: pending, success, failure or error.
    pub async fn status(
        &self,
        sha: &str,
        context: &str,
        state: &str,
        description: &str,
    ) -> Result<bool, ForgeError> {
        self.status_linked(sha, context, state, description, None)
            .await
    }

    /// [`Forge::status`] with a link (`target_url`) to say more, e.g. the
    /// daemon's status page.
    pub async fn status_linked(
        &self,
        sha: &str,
        context: &str,
        state: &str,
        description: &str,
        link: Option<&str>,
    ) -> Result<bool, ForgeError> {
        let key = format!("{sha} {context}");
        if self.posted.lock().unwrap().get(&key).map(String::as_str) == Some(state) {
            return Ok(false);
        }
        // Plain text of at most 140 characters: a proposal's words cannot
        // add lines or control characters to it.
        let description = crate::report::status_text(description);
        self.send(
            Method::POST,
            &format!("/repos/{}/statuses/{sha}", self.repo),
            Some(match link {
                Some(url) => {
                    json!({"state": state, "context": context, "description": description, "target_url": url})
                }
                None => json!({"state": state, "context": context, "description": description}),
            }),
        )
        .await?;
        self.posted.lock().unwrap().insert(key, state.to_string());
        self.remember();
        Ok(true)
    }

    /// Create, or update in place, the one comment carrying `marker`, for
    /// the plan of `head`. Whether the comment was written.
    pub async fn upsert_comment(
        &self,
        pr: u64,
        marker: &str,
        body: &str,
        head: &str,
    ) -> Result<bool, ForgeError> {
        self.upsert_comments(pr, marker, &[body.to_string()], head)
            .await
    }

    /// The login of the user the token is: tidekeeper's comments are the
    /// ones this user wrote (asked once; GitHub and Gitea both answer
    /// `GET /user` with `{"login": ...}`).
    pub async fn login(&self) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                let v = self.send(Method::GET, "/user", None).await?;
                match v["login"].as_str().filter(|l| !l.trim().is_empty()) {
                    Some(l) => Ok(l.to_string()),
                    None => Err(ForgeError::Request {
                        method: "GET",
                        url: format!("{}/user", self.api),
                        reason: "the answer names no login".into(),
                    }),
                }
            })
            .await
            .cloned()
    }

    /// Who approved pull request `pr` at exactly `head`: the first of
    /// [`Forge::approvals`], if any.
    pub async fn approved_by(&self, pr: u64, head: &str) -> Result<Option<String>, ForgeError> {
        Ok(self.approvals(pr, head).await?.into_iter().next())
    }

    /// Everyone whose review of pull request `pr` stands approved at exactly
    /// `head` (GitHub and Gitea both answer `GET .../pulls/N/reviews` with
    /// `state`, `commit_id` and `user.login`), in the order they approved.
    /// A reviewer's latest approving or change-requesting review counts (a
    /// later "changes requested" takes an approval back); a review of an
    /// older head, dismissed or stale, never counts, nor tidekeeper's own.
    pub async fn approvals(&self, pr: u64, head: &str) -> Result<Vec<String>, ForgeError> {
        let me = self.login().await?;
        let v = self
            .send(
                Method::GET,
                &format!("/repos/{}/pulls/{pr}/reviews?per_page=100", self.repo),
                None,
            )
            .await?;
        let mut last: Vec<(String, bool)> = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            let Some(login) = r["user"]["login"].as_str().filter(|l| *l != me) else {
                continue;
            };
            let approves = match r["state"].as_str() {
                Some("APPROVED") => {
                    r["commit_id"] == head && r["dismissed"] != true && r["stale"] != true
                }
                Some("CHANGES_REQUESTED" | "REQUEST_CHANGES" | "DISMISSED") => false,
                _ => continue, // a comment neither approves nor takes back
            };
            last.retain(|(l, _)| l != login);
            last.push((login.to_string(), approves));
        }
        Ok(last
            .into_iter()
            .filter(|(_, a)| *a)
            .map(|(l, _)| l)
            .collect())
    }

    /// The pull request `commit` was merged from, if the forge knows one
    /// (GitHub: `GET .../commits/SHA/pulls`, preferring the one whose merge
    /// commit it is; Gitea: `GET .../commits/SHA/pull`).
    pub async fn pull_of_commit(&self, commit: &str) -> Result<Option<u64>, ForgeError> {
        let path = match self.kind {
            ForgeKind::Github => format!("/repos/{}/commits/{commit}/pulls", self.repo),
            ForgeKind::Gitea => format!("/repos/{}/commits/{commit}/pull", self.repo),
        };
        let v = match self.send(Method::GET, &path, None).await {
            Err(ForgeError::Request { reason, .. }) if reason.starts_with("HTTP 404") => {
                return Ok(None);
            }
            other => other?,
        };
        let list = match v {
            serde_json::Value::Array(a) => a,
            one => vec![one],
        };
        let pick = list
            .iter()
            .find(|p| p["merge_commit_sha"] == commit)
            .or_else(|| {
                list.iter()
                    .find(|p| p["merged"] == true || !p["merged_at"].is_null())
            })
            .or(list.first());
        Ok(pick.and_then(|p| p["number"].as_u64()))
    }

    /// Pull request `pr` as the forge has it now (its head: the sha the
    /// forge has now, which a late plan of an older head must not overwrite).
    pub async fn pull(&self, pr: u64) -> Result<Pull, ForgeError> {
        let v = self
            .send(
                Method::GET,
                &format!("/repos/{}/pulls/{pr}", self.repo),
                None,
            )
            .await?;
        let login = |u: &serde_json::Value| u["login"].as_str().map(str::to_string);
        let Some(head) = v["head"]["sha"].as_str() else {
            return Err(ForgeError::Request {
                method: "GET",
                url: format!("{}/repos/{}/pulls/{pr}", self.api, self.repo),
                reason: "the answer names no head sha".into(),
            });
        };
        Ok(Pull {
            number: pr,
            head: head.to_string(),
            merged: v["merged"] == true || !v["merged_at"].is_null(),
            mergeable: v["mergeable"].as_bool(),
            merged_by: login(&v["merged_by"]),
            author: login(&v["user"]),
        })
    }

    /// The logins of team `org/team` (GitHub: `GET /orgs/O/teams/T/members`).
    /// Gitea names teams by id, not slug: owners there are written as users.
    pub async fn team_members(&self, org: &str, team: &str) -> Result<Vec<String>, ForgeError> {
        if self.kind == ForgeKind::Gitea {
            return Err(ForgeError::Request {
                method: "GET",
                url: format!("{}/orgs/{org}/teams", self.api),
                reason: format!(
                    "team owner @{org}/{team}: Gitea teams are not read; name its members as @login"
                ),
            });
        }
        let v = self
            .send(
                Method::GET,
                &format!("/orgs/{org}/teams/{team}/members?per_page=100"),
                None,
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["login"].as_str().map(str::to_string))
            .collect())
    }

    /// Every comment on `pr`, page by page (100 a page; a forge that does
    /// not page answers the same list again, which ends it too).
    async fn comments(&self, pr: u64) -> Result<Vec<Comment>, ForgeError> {
        let mut all: Vec<Comment> = Vec::new();
        for page in 1..=100 {
            let v = self
                .send(
                    Method::GET,
                    &format!(
                        "/repos/{}/issues/{pr}/comments?per_page=100&limit=100&page={page}",
                        self.repo
                    ),
                    None,
                )
                .await?;
            let batch: Vec<Comment> = serde_json::from_value(v).unwrap_or_default();
            let full = batch.len() >= 100;
            let repeated = batch
                .first()
                .is_some_and(|c| all.iter().any(|a| a.id == c.id));
            if repeated {
                break;
            }
            all.extend(batch);
            if !full {
                break;
            }
        }
        Ok(all)
    }

    /// A plan of `head` as several comments (see [`crate::report::comments`]):
    /// part k — a comment tidekeeper's user wrote, carrying part k's marker —
    /// updated in place; parts an earlier, longer plan left are deleted.
    /// Comments by anyone else are never read as a plan nor touched, whatever
    /// they carry. Nothing is written unless `head` is still the pull
    /// request's head (a plan of an older head finishing late, or a forge
    /// outage's leftover): false then, and when nothing needed changing.
    pub async fn upsert_comments(
        &self,
        pr: u64,
        marker: &str,
        parts: &[String],
        head: &str,
    ) -> Result<bool, ForgeError> {
        let current = self.pull(pr).await?.head;
        if !current.eq_ignore_ascii_case(head) {
            tracing::debug!(pr, planned = head, current = %current, "a plan of an older head is not shown");
            return Ok(false);
        }
        let me = self.login().await?;
        let existing: Vec<Comment> = self
            .comments(pr)
            .await?
            .into_iter()
            .filter(|c| {
                c.user
                    .as_ref()
                    .is_some_and(|u| u.login.eq_ignore_ascii_case(&me))
            })
            .collect();
        // Each part's marker sits on its first line: a quote of it further
        // down (a reply quoting the bot) is not the part.
        let find = |k: usize| {
            let m = crate::report::part_marker(marker, k);
            existing
                .iter()
                .find(move |c| c.body.lines().next().is_some_and(|l| l.trim() == m))
        };
        let mut changed = false;
        for (i, part) in parts.iter().enumerate() {
            let body = part.to_string();
            match find(i + 1) {
                Some(c) if c.body == body => {}
                Some(c) => {
                    self.send(
                        Method::PATCH,
                        &format!("/repos/{}/issues/comments/{}", self.repo, c.id),
                        Some(json!({"body": body})),
                    )
                    .await?;
                    changed = true;
                }
                None => {
                    self.send(
                        Method::POST,
                        &format!("/repos/{}/issues/{pr}/comments", self.repo),
                        Some(json!({"body": body})),
                    )
                    .await?;
                    changed = true;
                }
            }
        }
        let mut k = parts.len() + 1;
        while let Some(c) = find(k) {
            self.send(
                Method::DELETE,
                &format!("/repos/{}/issues/comments/{}", self.repo, c.id),
                None,
            )
            .await?;
            changed = true;
            k += 1;
        }
        Ok(changed)
    }

    /// A comment on a commit (GitHub; Gitea has no such API: nothing happens).
    pub async fn commit_comment(&self, sha: &str, body: &str) -> Result<(), ForgeError> {
        if self.kind == ForgeKind::Gitea {
            return Ok(());
        }
        self.send(
            Method::POST,
            &format!("/repos/{}/commits/{sha}/comments", self.repo),
            Some(json!({"body": body})),
        )
        .await
        .map(|_| ())
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

/// The repository's address in a browser: `https://github.com/owner/name`
/// for GitHub's API, the API URL without `/api/v1` for Gitea.
pub fn web_url(s: &ForgeSettings) -> String {
    let base = s.url.trim_end_matches('/');
    let base = match s.kind {
        ForgeKind::Github if base == "https://api.github.com" => "https://github.com".to_string(),
        ForgeKind::Github => base.trim_end_matches("/api/v3").to_string(),
        ForgeKind::Gitea => base.trim_end_matches("/api/v1").to_string(),
    };
    format!("{base}/{}", s.repo)
}

/// The pull request number of `refs/pull/N/head`.
pub fn pr_number(refname: &str) -> Option<u64> {
    refname
        .strip_prefix("refs/pull/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}
