//! A request tried against the real pipeline up to the decision, without an upstream: what
//! `explain` prints and what `test` compares.
//!
//! Invariants:
//! - The same phases as `serve`, in the same order, with the same code: canonicalize, match,
//!   identify (a token minted in-process for a user row of the database, verified like any
//!   other), collect (the rule's own JSON plan and multipart parser), `policy::decide`.
//! - Tokens are minted only inside the process and never printed.

use std::path::Path;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};

use crate::decision::{CheckResult, Decision, DenyReason, Stage, Verdict};
use crate::facts::ledger::Ledger;
use crate::facts::{db, Facts, FactsConfig};
use crate::http::canonical;
use crate::identity;
use crate::policy::{self, FactSource, RequestData};
use crate::rules::{Lookup, RouteTable};

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

/// What the pipeline concluded, with everything `explain` prints.
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
    /// The status the client gets (200 stands for "forwarded": the upstream answers).
    pub status: u16,
    /// The guard's own answer body, for a denial.
    pub answer: Option<String>,
    /// Shadow mode: the checks denied with this status, and the request is forwarded anyway.
    pub would_deny: Option<u16>,
}

/// The routes, database and ledger a trial runs against.
pub struct Engine {
    pub routes: RouteTable,
    routes_text: String,
    facts: Facts,
    ledger: Ledger,
    db_path: std::path::PathBuf,
    /// The global mode `serve` would run with (a rule's own `mode` applies on top).
    pub mode: crate::rules::Mode,
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
            routes: table,
            routes_text,
            facts,
            ledger,
            db_path: db_path.to_owned(),
            mode: crate::rules::Mode::Enforce,
        })
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

    /// Headers carrying a token for `caller`, minted as InvokeAI mints them (from the row).
    async fn credentials(&self, caller: &Caller) -> anyhow::Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        let Caller::User { who, claims } = caller else {
            return Ok(headers);
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
        let token = identity::sign(&minted, &secret);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        Ok(headers)
    }

    /// Run a trial through the pipeline's phases up to the decision.
    pub async fn run(&self, trial: &Trial) -> anyhow::Result<Explanation> {
        let mut out = Explanation {
            method: trial.method.clone(),
            canonical: None,
            rule_id: None,
            rule_line: 0,
            rule_comment: Vec::new(),
            caller: None,
            verdict: Verdict::early(Stage::Route, DenyReason::NoRoute),
            status: 0,
            answer: None,
            would_deny: None,
        };
        let finish = |mut out: Explanation, verdict: Verdict| {
            match &verdict.decision {
                Decision::Allow => out.status = 200,
                Decision::Deny(reason) => {
                    out.status = reason.status().as_u16();
                    out.answer = Some(json!({ "detail": reason.detail() }).to_string());
                }
            }
            out.verdict = verdict;
            Ok(out)
        };
        let method = Method::from_bytes(trial.method.as_bytes())
            .map_err(|_| anyhow::anyhow!("bad method '{}'", trial.method))?;
        let (path, query) = match trial.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (trial.target.as_str(), None),
        };
        // target
        let target = match canonical::canonicalize(path, query) {
            Ok(t) => t,
            Err(e) => {
                let v = Verdict::early(Stage::Target, DenyReason::BadTarget(e.to_string()));
                return finish(out, v);
            }
        };
        out.canonical = Some(target.path_and_query());
        // route
        let matched = match self.routes.lookup(&method, &target.path) {
            Lookup::Found(m) => m,
            Lookup::Redirect(other) => {
                out.status = 307;
                out.answer = Some(format!("307 redirect to {other}"));
                out.verdict = Verdict::early(Stage::Route, DenyReason::NoRoute);
                return Ok(out);
            }
            Lookup::NotFound => {
                return finish(out, Verdict::early(Stage::Route, DenyReason::NoRoute))
            }
        };
        let rule = matched.rule;
        out.rule_id = Some(rule.id.clone());
        out.rule_line = rule.line;
        out.rule_comment = self.comment(rule.line);
        if let Some(status) = rule.block {
            return finish(
                out,
                Verdict::early(Stage::Route, DenyReason::Blocked(status)),
            );
        }
        // identify
        let mut headers = self.credentials(&trial.caller).await?;
        let principal = if rule.auth.needs_identity() {
            let secret = self.facts.jwt_secret().await?;
            match identity::identify_with(
                &headers,
                rule.auth.accepts_cookie(),
                &secret,
                &self.facts,
                &self.ledger,
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    let reason = crate::server::identity_denial(e);
                    return finish(out, Verdict::early(Stage::Identity, reason));
                }
            }
        } else {
            None
        };
        if let Some(p) = &principal {
            let email = p
                .claims
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            out.caller = Some((p.user_id.clone(), email, p.is_admin));
        }
        if let Some(reason) = policy::admin_route_denial(rule, principal.as_ref()) {
            return finish(out, Verdict::early(Stage::Auth, reason));
        }
        // collect
        let mut data = RequestData {
            path: matched
                .params
                .iter()
                .map(|(k, v)| (k.clone(), canonical::decode_param(v)))
                .collect(),
            query: target.params.clone(),
            ..RequestData::default()
        };
        let bytes = match &trial.body {
            None => bytes::Bytes::new(),
            Some(TrialBody::Json(text)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                bytes::Bytes::from(text.clone())
            }
            Some(TrialBody::Form(fields)) => {
                let boundary = "invoke-guard-trial-boundary";
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))?,
                );
                let mut body = String::new();
                for (name, value) in fields {
                    body.push_str(&format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    ));
                }
                body.push_str(&format!("--{boundary}--\r\n"));
                bytes::Bytes::from(body)
            }
        };
        if let Err(reason) = data.fill(rule, &bytes, &headers).await {
            return finish(out, Verdict::early(Stage::Body, reason));
        }
        // decide
        let src = FactSource {
            facts: &self.facts,
            ledger: &self.ledger,
        };
        let verdict = policy::decide(rule, &data, principal.as_ref(), src).await;
        match &verdict.decision {
            // The same rule as the pipeline: a shadowed check denial is forwarded.
            Decision::Deny(reason) if rule.shadowed(self.mode) => {
                out.would_deny = Some(reason.status().as_u16());
                out.status = 200;
                out.verdict = verdict;
                Ok(out)
            }
            Decision::Allow | Decision::Deny(_) => finish(out, verdict),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.facts.shutdown();
    }
}

impl Explanation {
    /// The report a person reads.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let canonical = self.canonical.as_deref().unwrap_or("(refused)");
        s.push_str(&format!("target    {} {canonical}\n", self.method));
        match &self.rule_id {
            Some(id) => {
                s.push_str(&format!(
                    "rule      {id} (routes.toml line {})\n",
                    self.rule_line
                ));
                for c in &self.rule_comment {
                    s.push_str(&format!("          {c}\n"));
                }
            }
            None => s.push_str("rule      (none: deny by default)\n"),
        }
        match &self.caller {
            Some((id, email, admin)) => s.push_str(&format!(
                "caller    {email} (user id {id}, admin={admin})\n"
            )),
            None => s.push_str("caller    anonymous (or not needed by the rule)\n"),
        }
        if self.verdict.checks.is_empty() {
            s.push_str("checks    (none evaluated)\n");
        } else {
            s.push_str("checks\n");
        }
        for c in &self.verdict.checks {
            let mark = match c.result {
                CheckResult::Failed(_) => "x",
                CheckResult::Held | CheckResult::AdminExempt | CheckResult::UpstreamEnforces(_) => {
                    "ok"
                }
            };
            s.push_str(&format!("  [{mark}] {}\n", c.check));
            for a in &c.args {
                s.push_str(&format!("        {} = {}\n", a.selector, a.value));
            }
            for f in &c.facts {
                s.push_str(&format!("        fact: {f}\n"));
            }
            s.push_str(&format!("        => {}\n", c.result.label()));
        }
        s.push_str(&format!("decided   {}\n", self.verdict.decided_by()));
        if let Some(status) = self.would_deny {
            s.push_str(&format!(
                "shadow    the rule is in shadow mode: would deny with {status}, logged as would_deny\n"
            ));
        }
        match &self.answer {
            Some(body) => s.push_str(&format!("answer    {} {body}\n", self.status)),
            None => s.push_str(&format!(
                "answer    forwarded to InvokeAI as {} {canonical}\n",
                self.method
            )),
        }
        s
    }

    /// The same, for tools.
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "canonical": self.canonical,
            "rule": self.rule_id.as_ref().map(|id| json!({
                "id": id, "line": self.rule_line, "comment": self.rule_comment,
            })),
            "caller": self.caller.as_ref().map(|(id, email, admin)| json!({
                "user_id": id, "email": email, "is_admin": admin,
            })),
            "checks": self.verdict.checks.iter().map(|c| json!({
                "check": c.check,
                "predicate": c.predicate,
                "args": c.args.iter().map(|a| json!({"selector": a.selector, "value": a.value})).collect::<Vec<_>>(),
                "facts": c.facts,
                "result": c.result.label(),
            })).collect::<Vec<_>>(),
            "decision": match (&self.verdict.decision, self.would_deny) {
                (Decision::Allow, _) => "allow",
                (Decision::Deny(_), Some(_)) => "would_deny",
                (Decision::Deny(_), None) => "deny",
            },
            "decided_by": self.verdict.decided_by(),
            "status": self.status,
            "answer": self.answer,
        })
    }
}
