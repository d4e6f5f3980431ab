//! The request pipeline, in named phases over one per-request context (Pingora's `CTX`):
//! framing → target → route → identify → collect → decide → forward → respond → log.
//!
//! Invariants:
//! - The canonical target from `target` is what `route` matches and what `forward` sends.
//! - Nothing reaches `Upstream::send` without an `Allow` verdict from `policy::decide` for the
//!   rule that matched, or a check denial of a rule in shadow mode (logged as `would_deny`).
//! - Every request ends in one decision log line and one metric sample, both read from the
//!   request's [`Verdict`] (deciding check, facts), never from tokens or query values.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    HOST, TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;

use super::ConnInfo;
use crate::decision::{self, Body, Decision, DenyReason, Stage, Verdict};
use crate::facts::ledger::Entry;
use crate::filters::{self, FilterContext, ResponseFilter};
use crate::http::body;
use crate::http::canonical::{self, Target};
use crate::http::headers::{self, ClientConn};
use crate::identity::{self, IdentityError, Principal, MEDIA_COOKIE, SESSION_COOKIE};
use crate::policy::{self, FactSource, RequestData};
use crate::rules::vocab::Correlation;
use crate::rules::{Auth, BodyNeed, Lookup, Rule};
use crate::socketio::correlate;
use crate::state::AppState;

/// One request's state through the phases, and what its log line reports.
struct RequestCtx {
    started: Instant,
    method: Method,
    path: String,
    rule_id: String,
    user_id: Option<String>,
    outcome: &'static str,
    /// What decided (deny verdicts; an allow records `all`).
    decided_by: &'static str,
    reason: &'static str,
    facts: String,
    detail: Option<String>,
}

impl RequestCtx {
    fn new(req: &Request<Incoming>) -> Self {
        RequestCtx {
            started: Instant::now(),
            method: req.method().clone(),
            path: String::new(),
            rule_id: "-".into(),
            user_id: None,
            outcome: "allow",
            decided_by: "-",
            reason: "-",
            facts: String::new(),
            detail: None,
        }
    }

    /// Record a verdict's provenance.
    fn verdict(&mut self, verdict: &Verdict) {
        self.decided_by = verdict.decided_by();
        self.facts = verdict.facts_line();
        if let Decision::Deny(reason) = &verdict.decision {
            self.outcome = "deny";
            self.reason = reason.label();
            if let DenyReason::Unavailable(cause) | DenyReason::BadUpstream(cause) = reason {
                self.detail = Some(cause.clone());
            }
        }
    }

    fn log(&self, status: StatusCode) {
        let elapsed = self.started.elapsed();
        crate::metrics::decision(
            self.outcome,
            &self.rule_id,
            self.decided_by,
            self.reason,
            elapsed.as_secs_f64(),
        );
        tracing::info!(
            target: "invoke_guard::decision",
            rule_id = %self.rule_id,
            user_id = self.user_id.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            outcome = self.outcome,
            reason = self.reason,
            check = self.decided_by,
            facts = %self.facts,
            detail = self.detail.as_deref().unwrap_or(""),
            status = status.as_u16(),
            micros = elapsed.as_micros() as u64,
        );
    }
}

/// Handle one request end to end; never fails (errors become responses).
pub async fn handle(
    req: Request<Incoming>,
    state: &Arc<AppState>,
    conn: &ConnInfo,
) -> Response<Body> {
    let mut ctx = RequestCtx::new(&req);
    let response = match pipeline(req, state, conn, &mut ctx).await {
        Ok(response) => response,
        Err(verdict) => {
            ctx.verdict(&verdict);
            let Decision::Deny(reason) = &verdict.decision else {
                unreachable_allow()
            };
            let mut res = decision::deny_response(reason);
            if matches!(
                reason,
                DenyReason::BadRequest(_) | DenyReason::BadTarget(_) | DenyReason::Timeout
            ) {
                // After a framing, target or body-read error the connection state is suspect.
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
    };
    ctx.log(response.status());
    response
}

/// `pipeline` only returns `Err` with a denial; an allow there would be a wiring error.
#[cold]
fn unreachable_allow() -> ! {
    panic!("pipeline returned an allow verdict as an error")
}

fn deny(stage: Stage, reason: DenyReason) -> Verdict {
    Verdict::early(stage, reason)
}

async fn pipeline(
    req: Request<Incoming>,
    state: &Arc<AppState>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<Body>, Verdict> {
    // framing
    if let Some(reason) = framing_error(&req, conn) {
        // Escaped for the log: the raw target may hold control bytes.
        ctx.path = format!("{:?}", req.uri().path());
        return Err(deny(Stage::Target, reason));
    }
    // target
    let target = canonical::canonicalize(req.uri().path(), req.uri().query()).map_err(|e| {
        ctx.path = format!("{:?}", req.uri().path());
        deny(Stage::Target, DenyReason::BadTarget(e.to_string()))
    })?;
    ctx.path.clone_from(&target.path);
    // route
    let table = state.routes.load_full();
    let matched = match table.lookup(req.method(), &target.path) {
        Lookup::Found(m) => m,
        Lookup::Redirect(other) => {
            ctx.outcome = "redirect";
            let location = match &target.query {
                Some(q) => format!("{other}?{q}"),
                None => other,
            };
            return Ok(decision::redirect_response(&location));
        }
        Lookup::NotFound => return Err(deny(Stage::Route, DenyReason::NoRoute)),
    };
    let rule = matched.rule;
    ctx.rule_id.clone_from(&rule.id);
    if let Some(status) = rule.block {
        return Err(deny(Stage::Route, DenyReason::Blocked(status)));
    }
    if rule.auth == Auth::Socket {
        // Socket.IO is terminated here: identity is checked at CONNECT, every frame is filtered.
        ctx.outcome = "socket";
        return Ok(crate::socketio::handle(req, &target, state).await);
    }
    // identify (the secret is read once: identity, upstream token, response filters)
    let (secret, principal) = identify(rule, req.headers(), state).await?;
    ctx.user_id = principal.as_ref().map(|p| p.user_id.clone());
    if let Some(reason) = policy::admin_route_denial(rule, principal.as_ref()) {
        // Before any body is read: a non-admin never makes the guard buffer an admin route's body.
        return Err(deny(Stage::Auth, reason));
    }
    // collect
    let (parts, body) = req.into_parts();
    let params = matched
        .params
        .iter()
        .map(|(k, v)| (k.clone(), canonical::decode_param(v)))
        .collect();
    let (data, upstream_body) = collect(rule, &parts, body, params, &target, state)
        .await
        .map_err(|reason| deny(Stage::Body, reason))?;
    // decide
    let src = FactSource {
        facts: &state.facts,
        ledger: &state.ledger,
    };
    let verdict = policy::decide(rule, &data, principal.as_ref(), src).await;
    // Shadow mode: a denial by the checks is logged and counted (`would_deny`), then forwarded.
    let shadowed = verdict.decision != Decision::Allow && rule.shadowed(state.mode);
    if verdict.decision != Decision::Allow && !shadowed {
        return Err(verdict);
    }
    ctx.verdict(&verdict);
    if shadowed {
        ctx.outcome = "would_deny";
    }
    // Lists an older upstream would answer with other users' items are asked for differently
    // (the caller's own page, a wide page, only the writable names): see filters::recompute.
    let mut rewrite = if rule.response.iter().any(|f| f.info().rewrites_request) {
        let input = filters::PlanInput {
            principal: principal.as_ref(),
            facts: &state.facts,
            ledger: &state.ledger,
            target: &target,
            path: &data.path,
            request_body: data.body.as_ref(),
            max_items: state.limits.max_list_items,
        };
        filters::plan(&rule.response, &input)
            .await
            .map_err(|reason| deny(Stage::Check, reason))?
    } else {
        None
    };
    if let Some(r) = rewrite.as_mut() {
        if let Some(prelude) = r.before.take() {
            let forward = Forward {
                method: prelude.method.clone(),
                principal: principal.as_ref(),
                secret: secret.as_deref(),
                identity_encoding: true,
                json_body: true,
            };
            let answer = match run_prelude(prelude, &parts, forward, state, conn).await {
                Ok(answer) => answer,
                Err(response) => {
                    ctx.outcome = "prelude_refused";
                    return Ok(response);
                }
            };
            // The prelude changed data (deleted the caller's images).
            state.facts.invalidate();
            if let Err(reason) = r.reshape.absorb_prelude(&answer) {
                ctx.outcome = "withheld";
                return Ok(decision::deny_response(&reason));
            }
        }
    }
    // forward (a create whose owner InvokeAI does not keep is first written down as an intent;
    // if the ledger cannot take it, the create never happens)
    let intent = match (record_needed(rule, state), principal.as_ref()) {
        (Some(kind), Some(p)) => Some((
            kind,
            state.ledger.begin(kind, &p.user_id).await.map_err(|e| {
                deny(
                    Stage::Check,
                    DenyReason::Unavailable(format!("ledger: {e}")),
                )
            })?,
        )),
        _ => None,
    };
    // Socket events that name no owner (6.12) are attributed to the request that caused them.
    let tickets: Vec<_> = match principal.as_ref() {
        // Most rules have no response filter: nothing to look at on the hot path.
        Some(p) if !rule.response.is_empty() => {
            let schema = state.facts.schema();
            rule.response
                .iter()
                .map(|f| f.info())
                .filter(|info| !info.upstream_does_it.is_some_and(|c| schema.has(c)))
                .filter_map(|info| info.correlates)
                .map(|kind| {
                    let kind = match kind {
                        Correlation::Recall => correlate::Kind::Recall,
                        Correlation::BulkDownload => correlate::Kind::BulkDownload,
                    };
                    state.correlations.begin(kind, &p.user_id)
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let reads_response = rule.response.iter().any(|f| f.needs_body());
    let (method, forward_target, upstream_body) = match &rewrite {
        Some(r) => (
            r.method.clone(),
            &r.target,
            r.body.clone().map_or(upstream_body, decision::full),
        ),
        None => (parts.method.clone(), &target, upstream_body),
    };
    let upstream_req = upstream_request(
        &parts,
        forward_target,
        upstream_body,
        Forward {
            method,
            principal: principal.as_ref(),
            secret: secret.as_deref(),
            identity_encoding: reads_response,
            json_body: rewrite.as_ref().is_some_and(|r| r.body.is_some()),
        },
        state,
        &conn.client,
    );
    let sent = state.upstream.send(upstream_req).await;
    for ticket in tickets {
        state.correlations.end(ticket);
    }
    let res = match sent {
        Ok(res) => res,
        Err(failure) => {
            ctx.outcome = "upstream_error";
            return Ok(decision::upstream_failure_response(failure));
        }
    };
    let mutation = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutation && res.status().is_success() {
        // Mutations the guard forwarded invalidate facts at once (before the watcher sees them).
        state.facts.invalidate();
    }
    // [models/quotas] The upstream answered and facts are fresh: release the caller's quota
    // reservation (policy::models), remembering accepted items for the rolling windows.
    data.settle(res.status().is_success());
    // respond
    let filter_ctx = FilterContext {
        principal: principal.as_ref(),
        facts: &state.facts,
        secret: secret.as_deref(),
        ledger: &state.ledger,
        tls: state.tls,
        request_session: identity::cookie(&parts.headers, SESSION_COOKIE),
        upstream_revokes: state.facts.schema().has_token_epoch,
        request_body: data.body.as_ref(),
        path: &data.path,
        query: &data.query,
        reshape: rewrite.as_ref().map(|r| &r.reshape),
        intent,
        // [models/quotas] the groups file's model access, for the model list filters.
        access: Some(table.access()),
    };
    let (limit, timeout) = (
        state.limits.max_body_bytes,
        state.limits.upstream_response_timeout,
    );
    Ok(respond(res, rule, &filter_ctx, limit, timeout, ctx).await)
}

/// Framing problems HTTP/1 parsers disagree on (request smuggling).
fn framing_error(req: &Request<Incoming>, conn: &ConnInfo) -> Option<DenyReason> {
    // Ambiguous framing seen on the raw bytes (hyper hides it; see `framing`).
    if let Some(why) = conn.framing.get() {
        return Some(DenyReason::BadRequest(why.into()));
    }
    let h = req.headers();
    // CL.TE / TE.CL desync (Kettle 2019; hyper #3860/#4123): refuse both together.
    if h.contains_key(CONTENT_LENGTH) && h.contains_key(TRANSFER_ENCODING) {
        return Some(DenyReason::BadRequest(
            "Content-Length with Transfer-Encoding".into(),
        ));
    }
    // Duplicate Content-Length (including a comma list): refuse even when equal.
    let lengths: Vec<&HeaderValue> = h.get_all(CONTENT_LENGTH).iter().collect();
    if lengths.len() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        return Some(DenyReason::BadRequest("duplicate Content-Length".into()));
    }
    // Absolute-form or authority-form targets on HTTP/1 (`GET http://x/… HTTP/1.1`, CONNECT).
    if req.version() <= Version::HTTP_11 && req.uri().authority().is_some() {
        return Some(DenyReason::BadTarget("absolute-form request target".into()));
    }
    if req.method() == Method::CONNECT {
        return Some(DenyReason::BadTarget("CONNECT is not supported".into()));
    }
    None
}

/// The identify phase: the JWT secret (when the rule needs identity or filters) and the caller.
async fn identify(
    rule: &Rule,
    headers: &http::HeaderMap,
    state: &AppState,
) -> Result<(Option<std::sync::Arc<str>>, Option<Principal>), Verdict> {
    if !rule.auth.needs_identity() && rule.response.is_empty() {
        return Ok((None, None));
    }
    let secret = state
        .facts
        .jwt_secret()
        .await
        .map_err(|e| deny(Stage::Identity, DenyReason::Unavailable(e.to_string())))?;
    if !rule.auth.needs_identity() {
        return Ok((Some(secret), None));
    }
    let principal = identity::identify_with(
        headers,
        rule.auth.accepts_cookie(),
        &secret,
        &state.facts,
        &state.ledger,
    )
    .await
    .map_err(|e| deny(Stage::Identity, identity_denial(e)))?;
    Ok((Some(secret), Some(principal)))
}

/// How an identity error is answered.
pub fn identity_denial(e: IdentityError) -> DenyReason {
    match e {
        IdentityError::Facts(f) => DenyReason::Unavailable(f.to_string()),
        IdentityError::Ambiguous => DenyReason::BadRequest(e.to_string()),
        other => DenyReason::Unauthenticated(other.to_string()),
    }
}

/// The collect phase: the request data checks read, and the body to forward.
async fn collect(
    rule: &Rule,
    parts: &http::request::Parts,
    body: Incoming,
    path: std::collections::HashMap<String, String>,
    target: &Target,
    state: &AppState,
) -> Result<(RequestData, Body), DenyReason> {
    let mut data = RequestData {
        path,
        query: target.params.clone(),
        ..RequestData::default()
    };
    // Anyone may call a public rule: its body is read before any identity, so it gets a small limit.
    let limit = match rule.auth {
        Auth::Public => state
            .limits
            .max_public_body_bytes
            .min(state.limits.max_body_bytes),
        Auth::User | Auth::Media | Auth::Socket | Auth::Admin => state.limits.max_body_bytes,
    };
    let timeout = state.limits.body_read_timeout;
    let upstream_body: Body = match rule.body {
        BodyNeed::None if body.is_end_stream() => body.map_err(Into::into).boxed(),
        // Slow-body defence: a streamed upload may not stall (slowloris on the body).
        BodyNeed::None if rule.auth == Auth::Public => {
            Limited::new(body::IdleTimeout::new(body, timeout), limit).boxed()
        }
        BodyNeed::None => body::IdleTimeout::new(body, timeout).boxed(),
        BodyNeed::Json | BodyNeed::Multipart => {
            body::refuse_encoded(&parts.headers)?;
            let bytes = body::read(body, &parts.headers, limit, timeout).await?;
            data.fill(rule, &bytes, &parts.headers).await?;
            decision::full(bytes)
        }
    };
    Ok((data, upstream_body))
}

/// The ledger entry a rule's create must record, where InvokeAI keeps no owner of its own.
fn record_needed(rule: &Rule, state: &AppState) -> Option<Entry> {
    if rule.response.is_empty() {
        return None;
    }
    let schema = state.facts.schema();
    rule.response.iter().find_map(|f| {
        let info = f.info();
        let upstream_keeps_it = info.upstream_does_it.is_some_and(|c| schema.has(c));
        info.records.filter(|_| !upstream_keeps_it)
    })
}

/// What the forwarded request carries besides the client's own: the caller's credentials
/// (re-minted, never as presented) and how the upstream should answer.
struct Forward<'a> {
    /// The client's method, or the rewrite's.
    method: Method,
    principal: Option<&'a Principal>,
    secret: Option<&'a str>,
    /// Ask for an uncompressed answer (the guard reads it).
    identity_encoding: bool,
    /// The body is the guard's own JSON (a rewrite), not the client's.
    json_body: bool,
}

fn upstream_request(
    parts: &http::request::Parts,
    target: &Target,
    body: Body,
    forward: Forward<'_>,
    state: &AppState,
    conn: &ClientConn,
) -> Request<Body> {
    let Forward {
        method,
        principal,
        secret,
        identity_encoding,
        json_body,
    } = forward;
    let mut headers = parts.headers.clone();
    headers::strip_hop_by_hop(&mut headers);
    headers::strip_spoofable(&mut headers);
    // Credentials are re-derived: the presented ones never pass through as sent.
    headers.remove(AUTHORIZATION);
    headers::remove_cookies(&mut headers, &[MEDIA_COOKIE, SESSION_COOKIE]);
    if let (Some(p), Some(secret)) = (principal, secret) {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", p.upstream_token(secret))) {
            headers.insert(AUTHORIZATION, v);
        }
    }
    if identity_encoding {
        // A response the guard must read is asked for uncompressed (it is decoded if it comes
        // compressed anyway).
        headers.remove(ACCEPT_ENCODING);
    }
    if json_body {
        // Its length is the new body's (hyper sets it); its type is JSON.
        headers.remove(CONTENT_LENGTH);
        headers.remove(CONTENT_ENCODING);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let host = headers::client_host(&parts.headers, &parts.uri);
    headers::set_forwarded(
        &mut headers,
        &parts.headers,
        conn,
        &state.trusted_proxies,
        host.as_deref(),
    );
    if !headers.contains_key(HOST) {
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            headers.insert(HOST, v);
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = state.upstream.uri_for(target);
    *req.headers_mut() = headers;
    req
}

/// Send a rewrite's prelude and read its JSON answer (bounded, decoded). Anything but a readable
/// 2xx answer ends the request: the upstream's own refusal is passed on, the rest is 502.
async fn run_prelude(
    prelude: filters::Prelude,
    parts: &http::request::Parts,
    forward: Forward<'_>,
    state: &AppState,
    conn: &ConnInfo,
) -> Result<serde_json::Value, Response<Body>> {
    let req = upstream_request(
        parts,
        &prelude.target,
        decision::full(prelude.body),
        forward,
        state,
        &conn.client,
    );
    let res = state
        .upstream
        .send(req)
        .await
        .map_err(decision::upstream_failure_response)?;
    let (mut head, body) = res.into_parts();
    if !head.status.is_success() {
        headers::strip_hop_by_hop(&mut head.headers);
        return Err(Response::from_parts(head, body.map_err(Into::into).boxed()));
    }
    let bad = |reason: DenyReason| decision::deny_response(&reason);
    let limits = &state.limits;
    let decoded = read_upstream_body(
        &mut head.headers,
        body,
        limits.max_body_bytes,
        limits.upstream_response_timeout,
    )
    .await
    .map_err(bad)?;
    serde_json::from_slice(&decoded).map_err(|e| {
        bad(DenyReason::BadUpstream(format!(
            "prelude answer is not JSON: {e}"
        )))
    })
}

/// The respond phase: header filters, then (for 2xx bodies a filter reads) read, decode, filter.
async fn respond(
    res: Response<Incoming>,
    rule: &Rule,
    fctx: &FilterContext<'_>,
    limit: usize,
    timeout: std::time::Duration,
    ctx: &mut RequestCtx,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    filters::refreshed_token(&mut parts, fctx);
    filters::apply_headers(&rule.response, &mut parts, fctx).await;
    let wants_body = parts.status.is_success() && rule.response.iter().any(|f| f.needs_body());
    if !wants_body {
        if let Some((_, intent)) = fctx.intent {
            // The upstream refused the create: nothing to record.
            if let Err(e) = fctx.ledger.abandon(intent).await {
                tracing::warn!(rule_id = %rule.id, error = %e, "could not drop a ledger intent");
            }
        }
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    match filtered_body(&rule.response, &mut parts, body, fctx, limit, timeout).await {
        Ok(bytes) => Response::from_parts(parts, decision::full(bytes)),
        // Fail closed: a body that could not be read, filtered or recorded is never sent.
        Err(reason) => {
            ctx.outcome = "withheld";
            ctx.reason = reason.label();
            ctx.detail = Some(format!("{reason:?}"));
            crate::metrics::response_withheld(&rule.id, reason.label());
            decision::deny_response(&reason)
        }
    }
}

/// Read an upstream body the guard must look at: bounded in size and in time, decoded (at most
/// one Content-Encoding); when it decoded, the encoding headers go (what goes out is decoded).
async fn read_upstream_body(
    headers: &mut http::HeaderMap,
    body: Incoming,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, DenyReason> {
    // Slow-drip upstream body (headers at once, the rest never): bounded like the head.
    let raw = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            DenyReason::BadUpstream(
                "response body not received within limits.upstream_response_timeout_ms".into(),
            )
        })?
        .map_err(|e| {
            DenyReason::BadUpstream(format!(
                "response body over the filter limit or unreadable: {e}"
            ))
        })?
        .to_bytes();
    let mut encodings = headers.get_all(CONTENT_ENCODING).iter();
    let encoding = match (encodings.next(), encodings.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| DenyReason::BadUpstream("unreadable Content-Encoding".into()))?,
        ),
        (Some(_), Some(_)) => {
            return Err(DenyReason::BadUpstream("stacked Content-Encoding".into()))
        }
    };
    let decoded = body::decode(encoding, raw, limit)?;
    if encoding.is_some() {
        // What goes out is the decoded body.
        headers.remove(CONTENT_ENCODING);
        headers.remove(CONTENT_LENGTH);
    }
    Ok(decoded)
}

/// Read (bounded), decode and filter a 2xx body the rule's filters need.
async fn filtered_body(
    filters: &[ResponseFilter],
    parts: &mut http::response::Parts,
    body: Incoming,
    ctx: &FilterContext<'_>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, DenyReason> {
    let decoded = read_upstream_body(&mut parts.headers, body, limit, timeout).await?;
    let replaced = filters::apply_body(filters, parts, &decoded, ctx).await?;
    Ok(replaced.unwrap_or(decoded))
}
