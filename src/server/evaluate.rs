//! A request evaluated by the pipeline's own request phase, without a network: what `explain`
//! prints and what `test` compares.
//!
//! Invariants:
//! - A trial is turned into an HTTP request (a token minted in-process for a user row of the
//!   database, verified like any other; the body as a client sends it) and run through
//!   [`pipeline::request_phase`] with an [`Env`] built like `serve`'s (same limits, mode, facts
//!   and ledger kinds): the guard's own answer and the upstream request(s) reported here are the
//!   ones `serve` answers and sends. `tests/differential.rs` holds the two together.
//! - Nothing is sent anywhere; the ledger is read, never written (no intent, no record).
//! - Tokens are minted only inside the process and never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use super::ctx::{Env, RequestCtx};
use super::pipeline::{self, Step};
use crate::config::Limits;
use crate::decision::{Outcome, Verdict};
use crate::facts::ledger::Ledger;
use crate::facts::{db, Facts, FactsConfig};
use crate::identity;
use crate::rules::{Mode, RouteTable};

/// Who makes a tried request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Anonymous,
    /// An email or user id of the database; `claims` override the minted token's claims (a
    /// stale token, e.g. `is_admin = true` after a demotion).
    User {
        who: String,
        claims: Map<String, Value>,
    },
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialBody {
    /// JSON text (sent as `application/json`).
    Json(String),
    /// Multipart text fields.
    Form(Vec<(String, String)>),
}

/// One request to try.
#[derive(Debug, Clone)]
pub struct Trial {
    pub caller: Caller,
    pub method: String,
    /// The request target as a client sends it (may carry `?query`).
    pub target: String,
    pub body: Option<TrialBody>,
}

/// A request the guard would send upstream, as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCall {
    pub method: String,
    /// Path and query, canonical.
    pub target: String,
    /// The guard's own body (a rewrite); `None`: the client's body, as received.
    pub body: Option<Bytes>,
}

/// What the request phase concluded, with everything `explain` prints.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub method: String,
    /// The canonical target (as matched and forwarded), when the target was accepted.
    pub canonical: Option<String>,
    pub rule_id: Option<String>,
    pub rule_line: usize,
    pub rule_comment: Vec<String>,
    /// (user id, email, is_admin from the row) of the identified caller.
    pub caller: Option<(String, String, bool)>,
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// What decided (a predicate, a stage, or `all`), as the decision log says.
    pub decided_by: &'static str,
    /// The guard's own answer (status), or `None` when the request is forwarded.
    pub status: Option<u16>,
    /// The guard's own answer body (or a redirect's location).
    pub answer: Option<String>,
    /// Every request `serve` sends upstream for it, in order.
    pub upstream: Vec<UpstreamCall>,
    /// The response filters that run on the answer.
    pub filters: Vec<&'static str>,
    /// The candidate table's verdict, when one is configured.
    pub candidate: Option<super::candidate::Candidate>,
    /// The request had a body of its own (what an upstream call with no body of the guard's
    /// carries).
    pub client_body: bool,
}

impl Explanation {
    /// The status a shadow rule's checks refused with (the request is forwarded anyway).
    pub fn would_deny(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::WouldDeny(r) => Some(r.status().as_u16()),
            _ => None,
        }
    }

    /// Whether the request is forwarded (every check held, or shadow mode).
    pub fn forwarded(&self) -> bool {
        self.status.is_none() && !self.upstream.is_empty()
    }
}

/// The routes, database, ledger and limits a trial runs against.
pub struct Engine {
    pub routes: Arc<RouteTable>,
    routes_text: String,
    facts: Facts,
    ledger: Ledger,
    db_path: PathBuf,
    /// The global mode `serve` would run with (a rule's own `mode` applies on top).
    pub mode: Mode,
    /// The limits `serve` would run with.
    pub limits: Limits,
    /// Whether `serve` would run with TLS.
    pub tls: bool,
    /// The candidate table `serve` would compare with (see `server::candidate`).
    pub candidate: Option<Arc<RouteTable>>,
}

impl Engine {
    /// Open `routes` and the InvokeAI database at `db` (read-only); `ledger` is the guard's
    /// ledger when given (6.12 ownership), else an empty in-memory one.
    pub fn open(routes: &Path, db_path: &Path, ledger: Option<&Path>) -> anyhow::Result<Self> {
        Self::open_with_groups(routes, db_path, ledger, None)
    }

    /// The same, with the groups file `caller.in` reads (as `serve` would load it).
    pub fn open_with_groups(
        routes: &Path,
        db_path: &Path,
        ledger: Option<&Path>,
        groups: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let routes_text = std::fs::read_to_string(routes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", routes.display()))?;
        let groups = crate::state::load_groups(groups)?;
        let table =
            RouteTable::parse_with_groups(&routes.display().to_string(), &routes_text, &groups)?;
        let facts = Facts::open(&FactsConfig {
            db_path: db_path.to_owned(),
            pool_size: 1,
            busy_timeout: Duration::from_secs(1),
            cache_entries: 10_000,
            cache_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
        })?;
        let ledger = match ledger {
            Some(path) => Ledger::open(path)?,
            None => Ledger::in_memory()?,
        };
        Ok(Engine {
            routes: Arc::new(table),
            routes_text,
            facts,
            ledger,
            db_path: db_path.to_owned(),
            mode: Mode::Enforce,
            limits: crate::config::settings(Default::default(), Default::default())?.limits,
            tls: false,
            candidate: None,
        })
    }

    fn env(&self) -> Env<'_> {
        Env {
            facts: &self.facts,
            ledger: &self.ledger,
            limits: &self.limits,
            mode: self.mode,
            tls: self.tls,
            candidate: self.candidate.clone(),
            explain: true,
        }
    }

    /// The comment lines right above a rule (and between `[[rule]]` and its keys).
    fn comment(&self, line: usize) -> Vec<String> {
        let lines: Vec<&str> = self.routes_text.lines().collect();
        let mut out = Vec::new();
        let mut i = line.saturating_sub(1);
        while i > 0 && lines[i - 1].trim_start().starts_with('#') {
            out.push(lines[i - 1].trim().to_owned());
            i -= 1;
        }
        out.reverse();
        for l in lines.iter().skip(line) {
            if l.trim_start().starts_with('#') {
                out.push(l.trim().to_owned());
            } else {
                break;
            }
        }
        out
    }

    /// The user row named by an email or user id: (user id, email).
    fn find_user(&self, who: &str) -> anyhow::Result<(String, String)> {
        let conn = db::open_read_only(&self.db_path, Duration::from_secs(1))?;
        let row: Option<(String, String)> = conn
            .query_row(
                "SELECT user_id, email FROM users WHERE user_id = ?1 OR lower(email) = lower(?1)",
                [who],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        row.ok_or_else(|| anyhow::anyhow!("no user '{who}' in {}", self.db_path.display()))
    }

    /// Seed the (in-memory or given) ledger: `who` created or requested `id`.
    pub async fn record(
        &self,
        kind: crate::facts::ledger::Entry,
        id: &str,
        who: &str,
    ) -> anyhow::Result<()> {
        let (user_id, _) = self.find_user(who)?;
        self.ledger.record(kind, id, &user_id).await?;
        Ok(())
    }

    /// A bearer token for `caller`, minted as InvokeAI mints them (from the row).
    async fn token(&self, caller: &Caller) -> anyhow::Result<Option<String>> {
        let Caller::User { who, claims } = caller else {
            return Ok(None);
        };
        let (user_id, email) = self.find_user(who)?;
        let row = self
            .facts
            .user(&user_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no user row for {user_id}"))?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let mut minted = Map::new();
        minted.insert("user_id".into(), json!(user_id));
        minted.insert("email".into(), json!(email));
        minted.insert("is_admin".into(), json!(row.is_admin));
        minted.insert("exp".into(), json!(exp));
        if self.facts.schema().has_token_epoch {
            minted.insert("token_epoch".into(), json!(row.token_epoch));
            minted.insert("remember_me".into(), json!(false));
        }
        for (k, v) in claims {
            minted.insert(k.clone(), v.clone());
        }
        let secret = self.facts.jwt_secret().await?;
        Ok(Some(identity::sign(&minted, &secret)))
    }

    /// The trial as the HTTP request a client would send.
    async fn request(&self, trial: &Trial) -> anyhow::Result<Request<Full<Bytes>>> {
        let method = Method::from_bytes(trial.method.as_bytes())
            .map_err(|_| anyhow::anyhow!("bad method '{}'", trial.method))?;
        let mut builder = Request::builder().method(method).uri(trial.target.as_str());
        if let Some(token) = self.token(&trial.caller).await? {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match &trial.body {
            None => Bytes::new(),
            Some(TrialBody::Json(text)) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(text.clone())
            }
            Some(TrialBody::Form(fields)) => {
                let boundary = "invoke-guard-trial-boundary";
                builder = builder.header(
                    CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                );
                let mut body = String::new();
                for (name, value) in fields {
                    body.push_str(&format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    ));
                }
                body.push_str(&format!("--{boundary}--\r\n"));
                Bytes::from(body)
            }
        };
        if !body.is_empty() {
            builder = builder.header(http::header::CONTENT_LENGTH, body.len());
        }
        builder
            .body(Full::new(body))
            .map_err(|e| anyhow::anyhow!("request target '{}': {e}", trial.target))
    }

    /// Run a trial through the request phase.
    pub async fn run(&self, trial: &Trial) -> anyhow::Result<Explanation> {
        let req = self.request(trial).await?.map(crate::decision::full_body);
        let mut ctx = RequestCtx::new(req.method().clone(), self.routes.clone());
        let step = pipeline::request_phase(&mut ctx, req, None, &self.env()).await;
        let mut out = Explanation {
            method: trial.method.clone(),
            canonical: ctx.target.as_ref().map(|t| t.path_and_query()),
            rule_id: ctx.rule().map(|r| r.id.clone()),
            rule_line: ctx.rule().map_or(0, |r| r.line),
            rule_comment: ctx.rule().map_or_else(Vec::new, |r| self.comment(r.line)),
            caller: ctx
                .principal
                .as_ref()
                .map(|p| (p.user_id.clone(), p.email.clone(), p.is_admin)),
            verdict: ctx.verdict.clone(),
            outcome: Outcome::Pending,
            decided_by: "-",
            status: None,
            answer: None,
            upstream: Vec::new(),
            filters: ctx.filters.iter().map(|f| f.name()).collect(),
            client_body: trial.body.is_some(),
            candidate: ctx.candidate.clone(),
        };
        match step {
            Step::Forward(_) => {
                out.upstream = upstream_calls(&ctx);
            }
            Step::Refuse(refusal) => {
                out.status = Some(refusal.status().as_u16());
                out.answer = Some(json!({ "detail": refusal.detail() }).to_string());
                ctx.outcome = Outcome::Refused(refusal);
            }
            Step::Redirect(location) => {
                out.status = Some(307);
                out.answer = Some(location);
                ctx.outcome = Outcome::Redirected;
            }
            Step::Socket(_) => ctx.outcome = Outcome::Socket,
        }
        out.decided_by = pipeline::decided_by(&ctx);
        out.outcome = ctx.outcome;
        Ok(out)
    }
}

/// The plan's requests in the order `serve` sends them.
fn upstream_calls(ctx: &RequestCtx) -> Vec<UpstreamCall> {
    let Some(plan) = ctx.plan.as_ref() else {
        return Vec::new();
    };
    let call = |p: &crate::upstream::Planned| UpstreamCall {
        method: p.method.to_string(),
        target: p.target.path_and_query(),
        body: p.body.clone(),
    };
    let main = match plan.main.as_ref() {
        Some(p) => call(p),
        None => UpstreamCall {
            method: ctx.method.to_string(),
            target: ctx
                .target
                .as_ref()
                .map(|t| t.path_and_query())
                .unwrap_or_default(),
            body: None,
        },
    };
    plan.prelude.iter().map(call).chain([main]).collect()
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.facts.shutdown();
    }
}
