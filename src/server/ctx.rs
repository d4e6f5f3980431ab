//! One request's state through the pipeline's phases (Pingora's `CTX`), and the dependencies
//! the request phase reads ([`Env`]).
//!
//! Invariants:
//! - Created once per request, before any phase runs; every phase reads and writes the request's
//!   state here and nowhere else (no phase re-packs it into arguments of its own).
//! - The route table is the one snapshot loaded when the request started ([`RequestCtx::table`]):
//!   a reload in between never mixes two tables in one request.
//! - Holds no token or secret in a form that is logged: the log line is built from the rule id,
//!   the caller's ids, the canonical path, the [`Outcome`] and the verdict's facts only.

use std::sync::Arc;
use std::time::Instant;

use http::Method;

use crate::config::Limits;
use crate::decision::{Outcome, Refusal, Verdict};
use crate::facts::ledger::{Entry, Intent, Ledger};
use crate::facts::Facts;
use crate::filters::{FilterContext, Reshape, ResponseFilter};
use crate::http::canonical::Target;
use crate::identity::{Principal, SESSION_COOKIE};
use crate::policy::RequestData;
use crate::rules::{Mode, RouteTable, Rule};
use crate::socketio::correlate::Ticket;
use crate::upstream::Planned;

/// What the request phase reads besides the request: the same in `serve`, `explain` and `test`.
#[derive(Clone)]
pub struct Env<'a> {
    pub facts: &'a Facts,
    pub ledger: &'a Ledger,
    pub limits: &'a Limits,
    /// The global mode (a rule's own `mode` applies on top).
    pub mode: Mode,
    /// A candidate table evaluated beside the enforced one, never enforced.
    pub candidate: Option<Arc<RouteTable>>,
    /// The guard serves HTTPS (session cookies get `Secure`).
    pub tls: bool,
    /// Keep everything the checks read (`explain` prints it; `serve` logs less).
    pub explain: bool,
}

/// The upstream request(s) the guard sends for one client request, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sent first; it must be answered with a readable 2xx (the two-step board delete).
    pub prelude: Option<Planned>,
    /// The request whose (filtered) answer the client gets; `None`: the client's own request,
    /// as it came (method, canonical target, body).
    pub main: Option<Planned>,
    /// How that answer becomes the client's, for a rewritten request.
    pub reshape: Option<Reshape>,
    /// A filter reads the answer: it is asked for uncompressed.
    pub reads_response: bool,
}

/// One request's state.
pub struct RequestCtx {
    pub started: Instant,
    /// The `X-Request-Id` the request is logged under and forwarded with (`serve`).
    pub request_id: Option<http::HeaderValue>,
    /// The connection's peer address as text (`serve`).
    pub client: Option<http::HeaderValue>,
    pub method: Method,
    /// The route table snapshot this request is evaluated against.
    pub table: Arc<RouteTable>,
    /// The canonical target, once accepted.
    pub target: Option<Target>,
    /// The matched rule (an index into `table`).
    pub rule: Option<usize>,
    /// The request head, once the request phase took the request apart.
    pub head: Option<http::request::Parts>,
    /// The JWT secret, read once for identity, the upstream token and the filters.
    pub secret: Option<Arc<str>>,
    pub principal: Option<Principal>,
    /// Path parameters, query and what the rule reads of the body.
    pub data: RequestData,
    pub verdict: Verdict,
    /// The response filters that run for this request ([`crate::filters::active`]).
    pub filters: Vec<ResponseFilter>,
    pub plan: Option<Plan>,
    /// The owner record a create needs (where InvokeAI keeps none): written as an intent before
    /// the create is forwarded.
    pub record: Option<Entry>,
    pub intent: Option<(Entry, Intent)>,
    /// Socket events this request explains (6.12), noted while it is forwarded.
    pub tickets: Vec<Ticket>,
    pub outcome: Outcome,
    /// The log's path when the target was refused: the raw one (the decision log escapes it).
    pub raw_path: Option<String>,
    /// The buffered request body (kept only when a candidate table may need it).
    pub body: Option<bytes::Bytes>,
    /// The candidate table's answer for this request, when one is configured.
    pub candidate: Option<super::candidate::Candidate>,
    /// The session cookie the request carried, kept when its headers went upstream.
    pub request_session: Option<String>,
}

impl RequestCtx {
    pub fn new(method: Method, table: Arc<RouteTable>) -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: None,
            client: None,
            method,
            table,
            target: None,
            rule: None,
            head: None,
            secret: None,
            principal: None,
            data: RequestData::default(),
            verdict: Verdict::default(),
            filters: Vec::new(),
            plan: None,
            record: None,
            intent: None,
            tickets: Vec::new(),
            outcome: Outcome::Pending,
            raw_path: None,
            body: None,
            candidate: None,
            request_session: None,
        }
    }

    /// The matched rule.
    pub fn rule(&self) -> Option<&Rule> {
        self.rule.map(|i| &self.table.rules()[i])
    }

    /// The rule id for the log (`-` before a rule matched).
    pub fn rule_id(&self) -> &str {
        self.rule().map_or("-", |r| r.id.as_str())
    }

    /// The path the log reports: canonical, or the refused raw one (escaped).
    pub fn log_path(&self) -> &str {
        match (&self.target, &self.raw_path) {
            (Some(t), _) => &t.path,
            (None, Some(raw)) => raw,
            (None, None) => "",
        }
    }

    /// The refusal that ended the request, if one did.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.outcome.refusal()
    }

    /// The view filters read (the request's own state, borrowed).
    pub fn filter_context<'a>(&'a self, env: &Env<'a>) -> Option<FilterContext<'a>> {
        let target = self.target.as_ref()?;
        Some(FilterContext {
            principal: self.principal.as_ref(),
            secret: self.secret.as_deref(),
            target,
            data: &self.data,
            request_session: match &self.head {
                // Its headers went upstream: the cookie was kept before.
                Some(h) if h.headers.is_empty() => self.request_session.clone(),
                Some(h) => crate::identity::cookie(&h.headers, SESSION_COOKIE),
                None => None,
            },
            reshape: self.plan.as_ref().and_then(|p| p.reshape.as_ref()),
            intent: self.intent,
            facts: env.facts,
            ledger: env.ledger,
            tls: env.tls,
            max_list_items: env.limits.max_list_items,
            access: Some(self.table.access()),
        })
    }
}
