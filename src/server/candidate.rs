//! The candidate route table (Envoy's shadow rules): a second table, evaluated beside the
//! enforced one for every request, whose verdict is only compared. Every request the two tables
//! answer differently is logged (target `invoke_guard::candidate`, both verdicts) and counted
//! (`invoke_guard_candidate_differences_total`). This is how an operator tries a change to any
//! rule, writes and admin-only ones included, without a dry run that forwards anything.
//!
//! Invariants:
//! - The candidate never changes what the client gets or what is sent upstream: it runs after
//!   the enforced request phase and only writes `ctx.candidate`.
//! - It reads what the enforced phase read: the same canonical target, headers, caller and
//!   buffered body. A body the candidate rule needs that the enforced rule streamed is not
//!   read; that request is reported as not compared, never guessed.
//! - What is compared is the decision (forwarded, or the guard's own status), not the
//!   rewritten upstream requests of list filters.

use std::sync::Arc;

use super::ctx::{Env, RequestCtx};
use super::pipeline::{identity_refusal, Step};
use crate::decision::{CheckResult, Refusal};
use crate::identity::{self, Principal};
use crate::policy::{self, FactSource, RequestData};
use crate::rules::{Auth, BodyNeed, Lookup, RouteTable, Rule};

/// What a table does with a request, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Forwarded upstream (every check held, or a shadow dry run).
    Forward,
    /// The guard answers itself with this status.
    Refuse(u16),
    Redirect,
    Socket,
    /// Not compared (why).
    NotCompared(&'static str),
}

impl Answer {
    /// The enforced table's answer, from the request phase's step.
    pub fn of(step: &Step) -> Self {
        match step {
            Step::Forward(_) => Answer::Forward,
            Step::Refuse(r) => Answer::Refuse(r.status().as_u16()),
            Step::Redirect(_) => Answer::Redirect,
            Step::Socket(_) => Answer::Socket,
        }
    }

    /// A bounded word for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Forward => "forward",
            Answer::Redirect => "redirect",
            Answer::Socket => "socket",
            Answer::NotCompared(_) => "not_compared",
            Answer::Refuse(status) => match status {
                400 => "400",
                401 => "401",
                403 => "403",
                404 => "404",
                408 => "408",
                413 => "413",
                422 => "422",
                503 => "503",
                _ => "other",
            },
        }
    }
}

/// The candidate table's verdict on one request.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The candidate's rule, when one matched.
    pub rule_id: Option<String>,
    pub answer: Answer,
    /// The predicate or stage that decided in the candidate (`all` when every check held).
    pub decided_by: &'static str,
    /// What the enforced table did.
    pub enforced: Answer,
}

impl Candidate {
    /// Whether the two tables answered differently (a request not compared is no difference).
    pub fn differs(&self) -> bool {
        !matches!(self.answer, Answer::NotCompared(_)) && self.answer != self.enforced
    }
}

/// Evaluate `table` on the request the enforced phase just decided (`enforced`).
pub async fn evaluate(
    ctx: &RequestCtx,
    enforced: &Step,
    table: &RouteTable,
    env: &Env<'_>,
) -> Candidate {
    let enforced = Answer::of(enforced);
    let (rule_id, answer, decided_by) = match decide(ctx, table, env).await {
        Ok((rule, answer, by)) => (rule.map(|r| r.id.clone()), answer, by),
        Err((rule, refusal, by)) => (
            rule.map(|r| r.id.clone()),
            Answer::Refuse(refusal.status().as_u16()),
            by,
        ),
    };
    Candidate {
        rule_id,
        answer,
        decided_by,
        enforced,
    }
}

type Decided<'t> = (Option<&'t Rule>, Answer, &'static str);
type Refused<'t> = (Option<&'t Rule>, Refusal, &'static str);

async fn decide<'t>(
    ctx: &RequestCtx,
    table: &'t RouteTable,
    env: &Env<'_>,
) -> Result<Decided<'t>, Refused<'t>> {
    let (Some(target), Some(head)) = (&ctx.target, &ctx.head) else {
        // The target or framing was refused: the same for every table.
        let status = ctx.refusal().map_or(400, |r| r.status().as_u16());
        return Ok((None, Answer::Refuse(status), "target"));
    };
    let found = match table.lookup(&ctx.method, &target.path) {
        Lookup::Found(m) => m,
        Lookup::Redirect(_) => return Ok((None, Answer::Redirect, "route")),
        Lookup::NotFound => return Err((None, Refusal::NoRoute, "route")),
    };
    let rule = found.rule;
    if let Some(status) = rule.block {
        return Err((Some(rule), Refusal::Blocked(status), "route"));
    }
    if rule.auth == Auth::Socket {
        return Ok((Some(rule), Answer::Socket, "route"));
    }
    let principal = caller(ctx, rule, &head.headers, env)
        .await
        .map_err(|r| (Some(rule), r, "identity"))?;
    if let Some(refusal) = policy::admin_route_denial(rule, principal.as_deref()) {
        return Err((Some(rule), refusal, "auth"));
    }
    let mut data = RequestData {
        path: found.params,
        query: ctx.data.query.clone(),
        ..RequestData::default()
    };
    if rule.body != BodyNeed::None {
        let bytes = match (&ctx.body, has_body(head)) {
            (Some(bytes), _) => bytes.clone(),
            (None, false) => bytes::Bytes::new(),
            (None, true) => {
                return Ok((
                    Some(rule),
                    Answer::NotCompared(
                        "the candidate rule reads a body the enforced rule streamed",
                    ),
                    "body",
                ))
            }
        };
        data.fill(rule, &bytes, &head.headers)
            .await
            .map_err(|r| (Some(rule), r, "body"))?;
    }
    let src = FactSource {
        facts: env.facts,
        ledger: env.ledger,
        keep_all: env.explain,
        enforce: false,
    };
    let verdict = policy::decide(rule, &data, principal.as_deref(), src).await;
    match verdict.deciding() {
        None => Ok((Some(rule), Answer::Forward, "all")),
        Some(c) => match &c.result {
            CheckResult::Failed(_)
                if rule.forwards_in_shadow(env.mode, &ctx.method, c.predicate) =>
            {
                Ok((Some(rule), Answer::Forward, c.predicate.name()))
            }
            CheckResult::Failed(r) => Err((Some(rule), r.clone(), c.predicate.name())),
            CheckResult::Held | CheckResult::AdminExempt | CheckResult::UpstreamEnforces(_) => {
                Ok((Some(rule), Answer::Forward, "all"))
            }
        },
    }
}

/// The caller as the candidate rule identifies it: the enforced phase's principal when the two
/// rules read credentials alike, else identified afresh (the same token rules).
async fn caller(
    ctx: &RequestCtx,
    rule: &Rule,
    headers: &http::HeaderMap,
    env: &Env<'_>,
) -> Result<Option<Arc<Principal>>, Refusal> {
    if !rule.auth.needs_identity() {
        return Ok(None);
    }
    let same_credentials = ctx
        .rule()
        .is_some_and(|r| r.auth.accepts_cookie() == rule.auth.accepts_cookie());
    if let (Some(p), true) = (&ctx.principal, same_credentials) {
        return Ok(Some(Arc::new(p.clone())));
    }
    let secret = match &ctx.secret {
        Some(s) => s.clone(),
        None => env.facts.jwt_secret().await?,
    };
    identity::identify_with(
        headers,
        rule.auth.accepts_cookie(),
        &secret,
        env.facts,
        env.ledger,
    )
    .await
    .map(|p| Some(Arc::new(p)))
    .map_err(identity_refusal)
}

/// Whether the request declared a body.
fn has_body(head: &http::request::Parts) -> bool {
    head.headers.contains_key(http::header::TRANSFER_ENCODING)
        || head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0")
}
