//! Reporting to a forge (GitHub or Gitea REST): commit statuses and one
//! plan comment per pull request, updated in place. Statuses are posted only
//! when their state changes (remembered across restarts when given a file),
//! and a comment is never rewritten with the same text or by the plan of an
//! older commit than the one it shows.

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
}

/// The line in a plan comment that orders it: the commit time of the plan's head.
const ORDER: &str = "<!-- tidekeeper-order: ";

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: String,
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
        let key = format!("{sha} {context}");
        if self.posted.lock().unwrap().get(&key).map(String::as_str) == Some(state) {
            return Ok(false);
        }
        let description: String = description.chars().take(140).collect();
        self.send(
            Method::POST,
            &format!("/repos/{}/statuses/{sha}", self.repo),
            Some(json!({"state": state, "context": context, "description": description})),
        )
        .await?;
        self.posted.lock().unwrap().insert(key, state.to_string());
        self.remember();
        Ok(true)
    }

    /// Create, or update in place, the one comment carrying `marker`. `order`
    /// (the commit time of the planned head) keeps a late plan of an older
    /// commit from overwriting a newer one. Whether the comment was written.
    pub async fn upsert_comment(
        &self,
        pr: u64,
        marker: &str,
        body: &str,
        order: i64,
    ) -> Result<bool, ForgeError> {
        self.upsert_comments(pr, marker, &[body.to_string()], order)
            .await
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

    /// A plan as several comments (see [`crate::report::comments`]): part k
    /// found again by its marker and updated in place; parts an earlier,
    /// longer plan left are deleted. Nothing changes when the comments show
    /// a newer commit's plan; false when nothing needed changing.
    pub async fn upsert_comments(
        &self,
        pr: u64,
        marker: &str,
        parts: &[String],
        order: i64,
    ) -> Result<bool, ForgeError> {
        let existing = self.comments(pr).await?;
        let order_of = |c: &Comment| {
            c.body
                .split(ORDER)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<i64>().ok())
        };
        let find = |k: usize| {
            let m = crate::report::part_marker(marker, k);
            existing.iter().find(move |c| c.body.contains(&m))
        };
        if find(1)
            .and_then(order_of)
            .is_some_and(|theirs| theirs > order)
        {
            return Ok(false);
        }
        let mut changed = false;
        for (i, part) in parts.iter().enumerate() {
            let body = format!("{part}\n{ORDER}{order} -->\n");
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
