//! Outcomes as data, with their provenance, and the one place they become HTTP responses.
//!
//! Invariants:
//! - A refusal is a [`Refusal`]: its cause, who caused it ([`Source`]: the client, the policy,
//!   InvokeAI's database, InvokeAI itself), its status, a fixed label and the `detail` sent.
//!   Nothing else in the crate maps a refusal to a status.
//! - A [`Verdict`] is what the checks concluded: every check evaluated, in order; it refuses
//!   exactly when its last check failed. An allow is a verdict with no failed check, never an
//!   error value, so no code path can mistake one for the other.
//! - How a request ended is one [`Outcome`] (what the decision log, metrics and `explain` report);
//!   its label is a fixed word.
//! - Nothing here holds tokens, secrets, passwords or query values.
//! - Every error body has InvokeAI's (FastAPI's) shape `{"detail": "..."}`; 401s carry
//!   `WWW-Authenticate: Bearer`.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::rules::vocab::{Capability, Predicate};

/// The error type of bodies the guard passes on (hyper's, or the guard's own read timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the guard sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Who caused a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request itself: its target, framing, body or credentials.
    Client,
    /// The route table and its checks.
    Policy,
    /// InvokeAI's database or the guard's ledger could not answer (fail closed).
    Facts,
    /// InvokeAI: unreachable, too slow, or an answer the guard cannot make safe.
    Upstream,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Policy => "policy",
            Source::Facts => "facts",
            Source::Upstream => "upstream",
        }
    }
}

/// Why the guard answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
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
    /// A list the guard must recompute holds more items than `limits.max_list_items` (503).
    ListTooLarge(usize),
    /// An upstream answer the guard must read could not be read or made safe (502).
    BadUpstream(String),
    /// InvokeAI refused the connection, reset it or broke the protocol (502).
    UpstreamUnreachable,
    /// InvokeAI did not answer within `limits.upstream_response_timeout_ms` (504).
    UpstreamTimeout,
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

impl Refusal {
    /// Who caused it.
    pub fn source(&self) -> Source {
        match self {
            Refusal::BadTarget(_)
            | Refusal::BadRequest(_)
            | Refusal::Unauthenticated(_)
            | Refusal::Unprocessable(_)
            | Refusal::TooLarge
            | Refusal::Timeout => Source::Client,
            Refusal::NoRoute
            | Refusal::Forbidden(_)
            | Refusal::NotFound(_)
            | Refusal::Blocked(_)
            | Refusal::TooManyRequests { .. }
            | Refusal::ShownInUi { .. } => Source::Policy,
            Refusal::Unavailable(_) | Refusal::ListTooLarge(_) => Source::Facts,
            Refusal::BadUpstream(_) | Refusal::UpstreamUnreachable | Refusal::UpstreamTimeout => {
                Source::Upstream
            }
        }
    }

    /// HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadTarget(_) | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NoRoute | Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Blocked(s) => *s,
            Refusal::Unavailable(_) | Refusal::ListTooLarge(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BadUpstream(_) | Refusal::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::ShownInUi { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadTarget(_) => "bad_target",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotFound(_) => "not_found",
            Refusal::Unprocessable(_) => "unprocessable",
            Refusal::TooLarge => "too_large",
            Refusal::Blocked(_) => "blocked",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Timeout => "timeout",
            Refusal::ListTooLarge(_) => "list_too_large",
            Refusal::BadUpstream(_) => "bad_upstream",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::TooManyRequests { .. } | Refusal::ShownInUi { status: 429, .. } => {
                "too_many_requests"
            }
            Refusal::ShownInUi { .. } => "forbidden",
        }
    }

    /// The `detail` text sent to the client.
    pub fn detail(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Refusal::BadTarget(d) => format!("Invalid request path: {d}").into(),
            Refusal::BadRequest(d)
            | Refusal::Unauthenticated(d)
            | Refusal::Forbidden(d)
            | Refusal::NotFound(d)
            | Refusal::Unprocessable(d) => d.as_str().into(),
            Refusal::NoRoute => "Not Found".into(),
            Refusal::TooLarge => "Request body too large".into(),
            Refusal::Blocked(s) => s.canonical_reason().unwrap_or("Blocked").into(),
            // The cause is logged, not sent: it may name file paths.
            Refusal::Unavailable(_) => "Authorization data temporarily unavailable".into(),
            Refusal::Timeout => "Request body not received in time".into(),
            Refusal::BadUpstream(_) => "Upstream response could not be processed".into(),
            Refusal::UpstreamUnreachable => "Upstream InvokeAI server unreachable".into(),
            Refusal::UpstreamTimeout => "Upstream InvokeAI server timed out".into(),
            Refusal::TooManyRequests { detail, .. } | Refusal::ShownInUi { detail, .. } => {
                detail.as_str().into()
            }
            Refusal::ListTooLarge(max) => format!(
                "This list has more than {max} items, too many to filter for this user; narrow it \
                 (board_id, categories, search) or raise limits.max_list_items"
            )
            .into(),
        }
    }

    /// The cause the log keeps and the client never sees (file paths, upstream messages).
    pub fn cause(&self) -> Option<&str> {
        match self {
            Refusal::Unavailable(c) | Refusal::BadUpstream(c) => Some(c),
            _ => None,
        }
    }

    /// After a framing, target or body-read error the connection state is suspect: close it.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::BadRequest(_) | Refusal::BadTarget(_) | Refusal::Timeout
        )
    }

    /// The response sent for it.
    pub fn response(&self) -> Response<Body> {
        let (mut res, retry_after) = match self {
            Refusal::TooManyRequests { retry_after, .. } => (
                error_response(self.status(), &self.detail()),
                Some(*retry_after),
            ),
            Refusal::ShownInUi {
                detail,
                retry_after,
                ..
            } => {
                // Pydantic's validation-error shape: the only enqueue error whose text the web
                // UI shows.
                let body = serde_json::json!({ "detail": [
                    { "loc": ["body", "batch"], "msg": detail, "type": "invoke_guard" }
                ] });
                let mut res = error_response(self.status(), "");
                *res.body_mut() = full(body.to_string());
                (res, *retry_after)
            }
            _ => (error_response(self.status(), &self.detail()), None),
        };
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        if self.closes_connection() {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        res
    }
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
    /// Evaluated and false (or its facts could not be read): the request is refused.
    Failed(Refusal),
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
    pub check: std::sync::Arc<str>,
    pub predicate: Predicate,
    pub args: Vec<ArgTrace>,
    /// The facts that decided it (owners, visibility, admin flag, ledger entries).
    pub facts: Vec<String>,
    pub result: CheckResult,
    /// Within an `A or B` requirement: (1-based position, number of alternatives).
    pub alternative: Option<(usize, usize)>,
}

/// Which step decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// The request target or framing was refused.
    Target,
    /// No rule matches (or the rule blocks the route).
    #[default]
    Route,
    /// The caller could not be identified.
    Identity,
    /// The rule's `auth = "admin"` and the caller is not.
    Auth,
    /// The request body was refused (size, time, shape).
    Body,
    /// A check (the last one in [`Verdict::checks`]), or, for an allow, all of them.
    Check,
    /// Planning the upstream request(s) for this caller (list recomputation).
    Plan,
}

/// What the checks concluded, with provenance: the decision log, metrics, `explain` and `test`
/// all read this one value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The step that decided (for an allow: `Check`, every requirement held).
    pub stage: Stage,
    /// Every check evaluated, in order (the alternatives of an `or` that were tried included).
    pub checks: Vec<CheckTrace>,
    /// The check whose failure refuses the request (an index into `checks`): the failed check
    /// of a one-check requirement, or the first alternative of an `or` none of which held.
    pub deciding: Option<usize>,
}

impl Verdict {
    /// The refusal of the deciding check, if a requirement failed.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self.deciding().map(|c| &c.result) {
            Some(CheckResult::Failed(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether every requirement held.
    pub fn allows(&self) -> bool {
        self.stage == Stage::Check && self.refusal().is_none()
    }

    /// The check that refused, if a requirement failed.
    pub fn deciding(&self) -> Option<&CheckTrace> {
        match self.stage {
            Stage::Check => self.deciding.and_then(|i| self.checks.get(i)),
            _ => None,
        }
    }

    /// The deciding check's facts (empty when none).
    pub fn facts(&self) -> &[String] {
        self.deciding().map_or(&[], |c| c.facts.as_slice())
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Not decided yet (a request is never logged in this state).
    #[default]
    Pending,
    /// Every check held: forwarded, the (filtered) answer passed on.
    Allowed,
    /// Shadow mode: a check refused; logged, counted and forwarded anyway.
    WouldDeny(Refusal),
    /// FastAPI's trailing-slash 307, answered by the guard.
    Redirected,
    /// Socket.IO, terminated by the guard (its frames are filtered per event).
    Socket,
    /// The guard answered itself, nothing was forwarded.
    Refused(Refusal),
    /// Forwarded, but InvokeAI's answer could not be read, filtered or recorded: withheld.
    Withheld(Refusal),
    /// Forwarded, and InvokeAI could not be reached or was too slow.
    UpstreamFailed(Refusal),
    /// InvokeAI refused the guard's first request of a two-step plan: its answer passed on.
    PreludeRefused,
}

impl Outcome {
    /// The fixed word the log and the `decision` metric label carry.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Allowed => "allow",
            Outcome::WouldDeny(_) => "would_deny",
            Outcome::Redirected => "redirect",
            Outcome::Socket => "socket",
            Outcome::Refused(_) => "deny",
            Outcome::Withheld(_) => "withheld",
            Outcome::UpstreamFailed(_) => "upstream_error",
            Outcome::PreludeRefused => "prelude_refused",
        }
    }

    /// The refusal behind it, if any.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::WouldDeny(r)
            | Outcome::Refused(r)
            | Outcome::Withheld(r)
            | Outcome::UpstreamFailed(r) => Some(r),
            Outcome::Pending
            | Outcome::Allowed
            | Outcome::Redirected
            | Outcome::Socket
            | Outcome::PreludeRefused => None,
        }
    }
}

/// FastAPI's error body.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    detail: &'a str,
}

/// A JSON `{"detail": …}` response.
pub fn error_response(status: StatusCode, detail: &str) -> Response<Body> {
    // One serializer call into a sized buffer (no JSON value is built).
    let mut body = Vec::with_capacity(detail.len() + 16);
    let _ = serde_json::to_writer(&mut body, &ErrorBody { detail });
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    res
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

/// A complete body given as one (a request built in-process).
pub fn full_body(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
