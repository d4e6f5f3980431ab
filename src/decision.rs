//! Decisions as data, and the one place they become HTTP responses.
//!
//! Invariants:
//! - Every request ends in exactly one [`Outcome`]; only `Forward` reaches the upstream.
//! - Every error body has InvokeAI's (FastAPI's) shape `{"detail": "..."}`; 401s carry
//!   `WWW-Authenticate: Bearer`.
//! - The same values feed the decision log and metrics labels (`reason()` is a fixed label).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

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
            DenyReason::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            DenyReason::Timeout => StatusCode::REQUEST_TIMEOUT,
            DenyReason::BadUpstream(_) => StatusCode::BAD_GATEWAY,
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
    error_response(reason.status(), &reason.detail())
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
