//! Decisions as data, with their provenance, and the one place they become HTTP responses.
//!
//! Invariants:
//! - Every request ends in exactly one [`Decision`]; only `Allow` reaches the upstream.
//! - A [`Verdict`] records which check decided and the facts behind it; the decision log,
//!   metrics (bounded labels only: rule id, check name, reason), `explain` and `test` all read
//!   the same value. It never holds tokens, secrets, passwords or query values.
//! - Every error body has InvokeAI's (FastAPI's) shape `{"detail": "..."}`; 401s carry
//!   `WWW-Authenticate: Bearer`.
//! - The same values feed the decision log and metrics labels (`reason()` is a fixed label).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::rules::vocab::Capability;

/// The error type of bodies the guard passes on (hyper's, or the guard's own read timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the guard sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The request target is not canonical (400).
    BadTarget(String),
    /// Malformed request framing or headers (400).
    BadRequest(String),
    /// No rule matches (404).
    NoRoute,
    /// Missing or invalid identity (401).
    Unauthenticated(String),
    /// Identified, but the policy says no (403).
    Forbidden(String),
    /// The resource the check needs does not exist (404, as main answers).
    NotFound(String),
    /// A value a check needs is missing or has the wrong type (422, as FastAPI answers).
    Unprocessable(String),
    /// A request body over the configured limit (413).
    TooLarge,
    /// The rule blocks this route outright.
    Blocked(StatusCode),
    /// Facts could not be read: fail closed (503).
    Unavailable(String),
    /// The client did not send its body in time (408).
    Timeout,
    /// An upstream answer the guard must read could not be read or made safe (502).
    BadUpstream(String),
    /// A list the guard must recompute holds more items than `limits.max_list_items` (503).
    ListTooLarge(usize),
    /// A generation quota of the groups file is used up (429 with `Retry-After` seconds).
    TooManyRequests { detail: String, retry_after: u64 },
    /// A model-access or quota refusal (403 or 429 to API clients) of a request the web UI itself
    /// made (Fetch Metadata: same-origin `fetch`): InvokeAI's web UI shows an enqueue error's text
    /// only for a 422 in pydantic's validation-error shape, so it is answered that way (with
    /// `Retry-After` when the refusal has one) and she reads the reason in the UI's error toast.
    /// Presentation only: the request is refused either way.
    ShownInUi {
        /// The status an API client gets for the same refusal (403 or 429).
        status: u16,
        detail: String,
        retry_after: Option<u64>,
    },
}

impl DenyReason {
    /// HTTP status of this denial.
    pub fn status(&self) -> StatusCode {
        match self {
            DenyReason::BadTarget(_) | DenyReason::BadRequest(_) => StatusCode::BAD_REQUEST,
            DenyReason::NoRoute | DenyReason::NotFound(_) => StatusCode::NOT_FOUND,
            DenyReason::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            DenyReason::Forbidden(_) => StatusCode::FORBIDDEN,
            DenyReason::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DenyReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DenyReason::Blocked(s) => *s,
            DenyReason::Unavailable(_) | DenyReason::ListTooLarge(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DenyReason::Timeout => StatusCode::REQUEST_TIMEOUT,
            DenyReason::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            DenyReason::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            DenyReason::ShownInUi { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DenyReason::BadTarget(_) => "bad_target",
            DenyReason::BadRequest(_) => "bad_request",
            DenyReason::NoRoute => "no_route",
            DenyReason::Unauthenticated(_) => "unauthenticated",
            DenyReason::Forbidden(_) => "forbidden",
            DenyReason::NotFound(_) => "not_found",
            DenyReason::Unprocessable(_) => "unprocessable",
            DenyReason::TooLarge => "too_large",
            DenyReason::Blocked(_) => "blocked",
            DenyReason::Unavailable(_) => "unavailable",
            DenyReason::Timeout => "timeout",
            DenyReason::BadUpstream(_) => "bad_upstream",
            DenyReason::ListTooLarge(_) => "list_too_large",
            DenyReason::TooManyRequests { .. } | DenyReason::ShownInUi { status: 429, .. } => {
                "too_many_requests"
            }
            DenyReason::ShownInUi { .. } => "forbidden",
        }
    }

    /// The `detail` text sent to the client.
    pub fn detail(&self) -> String {
        match self {
            DenyReason::BadTarget(d) => format!("Invalid request path: {d}"),
            DenyReason::BadRequest(d)
            | DenyReason::Unauthenticated(d)
            | DenyReason::Forbidden(d)
            | DenyReason::NotFound(d)
            | DenyReason::Unprocessable(d) => d.clone(),
            DenyReason::NoRoute => "Not Found".into(),
            DenyReason::TooLarge => "Request body too large".into(),
            DenyReason::Blocked(s) => s.canonical_reason().unwrap_or("Blocked").into(),
            // The cause is logged, not sent: it may name file paths.
            DenyReason::Unavailable(_) => "Authorization data temporarily unavailable".into(),
            DenyReason::Timeout => "Request body not received in time".into(),
            DenyReason::BadUpstream(_) => "Upstream response could not be processed".into(),
            DenyReason::TooManyRequests { detail, .. } | DenyReason::ShownInUi { detail, .. } => {
                detail.clone()
            }
            DenyReason::ListTooLarge(max) => format!(
                "This list has more than {max} items, too many to filter for this user; narrow it \
                 (board_id, categories, search) or raise limits.max_list_items"
            ),
        }
    }
}

/// The decision for one request, before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward upstream.
    Allow,
    /// Answer locally with an error.
    Deny(DenyReason),
}

/// One argument as a check saw it (values from the query, and passwords, are never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTrace {
    pub selector: String,
    pub value: String,
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Evaluated and true.
    Held,
    /// Not evaluated: resource checks are true for admins.
    AdminExempt,
    /// Not evaluated: `unless upstream.X` and this upstream does X itself.
    UpstreamEnforces(Capability),
    /// Evaluated and false (or its facts could not be read): the request is denied.
    Failed(DenyReason),
}

impl CheckResult {
    pub fn label(&self) -> String {
        match self {
            CheckResult::Held => "held".into(),
            CheckResult::AdminExempt => "held (admin)".into(),
            CheckResult::UpstreamEnforces(c) => format!("skipped (upstream.{})", c.name()),
            CheckResult::Failed(r) => format!("FAILED: {} {}", r.status().as_u16(), r.detail()),
        }
    }
}

/// What one check read and concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTrace {
    /// The check as written in routes.toml.
    pub check: String,
    pub predicate: &'static str,
    pub args: Vec<ArgTrace>,
    /// The facts that decided it (owners, visibility, admin flag, ledger entries).
    pub facts: Vec<String>,
    pub result: CheckResult,
}

/// Which step decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The request target or framing was refused.
    Target,
    /// No rule matches (or the rule blocks the route).
    Route,
    /// The caller could not be identified.
    Identity,
    /// The rule's `auth = "admin"` and the caller is not.
    Auth,
    /// The request body was refused (size, time, shape).
    Body,
    /// A check (the last one in [`Verdict::checks`]), or, for an allow, all of them.
    Check,
}

/// A decision with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The step that denied (for an allow: `Check`, every check held).
    pub stage: Stage,
    /// Every check evaluated, in order; a denial's deciding check is the last one.
    pub checks: Vec<CheckTrace>,
}

impl Verdict {
    /// A denial before any check ran.
    pub fn early(stage: Stage, reason: DenyReason) -> Self {
        Verdict {
            decision: Decision::Deny(reason),
            stage,
            checks: Vec::new(),
        }
    }

    /// The check that denied, if a check did.
    pub fn deciding(&self) -> Option<&CheckTrace> {
        match (&self.decision, self.stage) {
            (Decision::Deny(_), Stage::Check) => self.checks.last(),
            _ => None,
        }
    }

    /// A bounded label naming what decided: a predicate, a stage, or `all` (every check held).
    pub fn decided_by(&self) -> &'static str {
        match (&self.decision, self.stage) {
            (Decision::Allow, _) => "all",
            (Decision::Deny(_), Stage::Check) => self.deciding().map_or("-", |c| c.predicate),
            (Decision::Deny(_), Stage::Target) => "target",
            (Decision::Deny(_), Stage::Route) => "route",
            (Decision::Deny(_), Stage::Identity) => "identity",
            (Decision::Deny(_), Stage::Auth) => "auth",
            (Decision::Deny(_), Stage::Body) => "body",
        }
    }

    /// The deciding check's facts, joined for a log line (empty when none).
    pub fn facts_line(&self) -> String {
        self.deciding()
            .map(|c| c.facts.join("; "))
            .unwrap_or_default()
    }
}

/// Upstream failures (who caused it: the upstream, not the client or the guard's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused, reset, or protocol error: 502.
    Unreachable,
    /// No response within the configured time: 504.
    Timeout,
}

/// A JSON `{"detail": …}` response.
pub fn error_response(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    h.insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
    }
    res
}

/// The response for a denial.
pub fn deny_response(reason: &DenyReason) -> Response<Body> {
    let (mut res, retry_after) = match reason {
        DenyReason::TooManyRequests { retry_after, .. } => (
            error_response(reason.status(), &reason.detail()),
            Some(*retry_after),
        ),
        DenyReason::ShownInUi {
            detail,
            retry_after,
            ..
        } => {
            // Pydantic's validation-error shape: the only enqueue error whose text the web UI shows.
            let body = serde_json::json!({ "detail": [
                { "loc": ["body", "batch"], "msg": detail, "type": "invoke_guard" }
            ] });
            let mut res = error_response(reason.status(), "");
            *res.body_mut() = full(body.to_string());
            (res, *retry_after)
        }
        _ => (error_response(reason.status(), &reason.detail()), None),
    };
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, secs.into());
    }
    res
}

/// The response for an upstream failure.
pub fn upstream_failure_response(failure: UpstreamFailure) -> Response<Body> {
    match failure {
        UpstreamFailure::Unreachable => error_response(
            StatusCode::BAD_GATEWAY,
            "Upstream InvokeAI server unreachable",
        ),
        UpstreamFailure::Timeout => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "Upstream InvokeAI server timed out",
        ),
    }
}

/// FastAPI-style trailing-slash redirect (307 keeps the method and body).
pub fn redirect_response(location: &str) -> Response<Body> {
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = location.parse() {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
