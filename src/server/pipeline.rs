//! The request pipeline: phases over one [`RequestCtx`], driven by one loop ([`handle`]), in the
//! shape of Pingora's `ProxyHttp`:
//! - [`request_phase`]: framing → target → route → identify → collect → decide → plan. It never
//!   touches the network; `serve`, `explain` and `test` all run it, with the same [`Env`], so
//!   they cannot disagree about what the guard answers itself or what it would send.
//! - [`upstream_request`]: a planned request as HTTP (credentials re-minted, headers cleaned).
//! - [`response_phase`]: header filters, then body filters over a bounded, decoded 2xx body.
//! - [`logging`]: one decision line and one metric sample.
//!
//! Invariants:
//! - The canonical target from the target step is what the route step matches and what is sent
//!   upstream (or what a planned rewrite derives from it).
//! - Nothing reaches the upstream unless the request phase returned [`Step::Forward`]: every
//!   check held, or a check refused in shadow mode (logged as `would_deny`).
//! - Every request ends in one decision log line ([`crate::decisionlog`]) and one metric
//!   sample, read from the request's [`Outcome`] and [`crate::decision::Verdict`], never from
//!   tokens or query values; the line carries the `X-Request-Id` the upstream gets.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, HOST,
    TRANSFER_ENCODING,
};
use http::{HeaderName, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;

use super::ctx::{Env, Plan, RequestCtx};
use super::ConnInfo;
use crate::decision::{self, Body, CheckResult, Outcome, Refusal, Stage};
use crate::filters;
use crate::http::body;
use crate::http::canonical;
use crate::http::headers;
use crate::identity::{self, IdentityError, MEDIA_COOKIE, SESSION_COOKIE};
use crate::policy::{self, FactSource};
use crate::rules::vocab::Correlation;
use crate::rules::{Auth, BodyNeed, Lookup};
use crate::socketio::correlate;
use crate::state::AppState;

/// Where the request phase leaves a request.
pub enum Step {
    /// Send `ctx.plan` upstream; the body is the client's (bounded as the rule requires).
    Forward(Body),
    /// The guard answers itself.
    Refuse(Refusal),
    /// FastAPI's trailing-slash 307, to this location.
    Redirect(String),
    /// Socket.IO: the request goes, whole, to the socket terminator.
    Socket(Box<Request<Body>>),
}

/// Serve one request end to end; never fails (errors become responses).
pub async fn handle(
    mut req: Request<Incoming>,
    state: &Arc<AppState>,
    conn: &ConnInfo,
) -> Response<Body> {
    let env = state.env();
    let mut ctx = RequestCtx::new(req.method().clone(), state.routes.load_full());
    // Set on the request itself: the upstream gets the id this request is logged under.
    ctx.request_id = Some(crate::http::request_id::assign(
        req.headers_mut(),
        conn.client.peer,
        &state.trusted_proxies,
    ));
    ctx.client = Some(conn.client.peer_value().clone());
    let req = req.map(|body| body.map_err(Into::into).boxed());
    let response = match request_phase(&mut ctx, req, conn.framing.get(), &env).await {
        Step::Forward(body) => forward(&mut ctx, body, state, conn).await,
        Step::Refuse(refusal) => {
            let res = refusal.response();
            ctx.outcome = Outcome::Refused(refusal);
            res
        }
        Step::Redirect(location) => {
            ctx.outcome = Outcome::Redirected;
            decision::redirect_response(&location)
        }
        Step::Socket(req) => {
            ctx.outcome = Outcome::Socket;
            let target = ctx.target.as_ref().expect("a routed request has a target");
            crate::socketio::handle(*req, target, &state.sockets, conn.client.peer).await
        }
    };
    logging(&ctx, response.status());
    response
}

/// The request phase: from the raw request to a [`Step`]. `framing` is what the connection's
/// raw-byte scanner saw (`serve`; `None` elsewhere). With a candidate table configured, it is
/// evaluated last, beside the enforced decision (see [`super::candidate`]).
pub async fn request_phase(
    ctx: &mut RequestCtx,
    req: Request<Body>,
    framing: Option<&'static str>,
    env: &Env<'_>,
) -> Step {
    let (parts, body) = req.into_parts();
    let step = match request_steps(ctx, &parts, body, framing, env).await {
        Ok(Next::Socket(body)) => {
            return Step::Socket(Box::new(Request::from_parts(parts, body)));
        }
        Ok(Next::Forward(body)) => Step::Forward(body),
        Ok(Next::Redirect(location)) => Step::Redirect(location),
        Err(refusal) => Step::Refuse(refusal),
    };
    ctx.head = Some(parts);
    if let Some(table) = &env.candidate {
        ctx.candidate = Some(super::candidate::evaluate(ctx, &step, table, env).await);
    }
    step
}

/// Where the request steps leave a request (the body still to be forwarded or handed over).
enum Next {
    Forward(Body),
    Redirect(String),
    Socket(Body),
}

async fn request_steps(
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    body: Body,
    framing: Option<&'static str>,
    env: &Env<'_>,
) -> Result<Next, Refusal> {
    ctx.verdict.stage = Stage::Target;
    if let Err(refusal) = accept_target(ctx, parts, framing) {
        // As sent: the decision log escapes and caps it.
        ctx.raw_path = Some(parts.uri.path().to_owned());
        return Err(refusal);
    }
    ctx.verdict.stage = Stage::Route;
    if let Some(location) = route(ctx, &parts.method)? {
        return Ok(Next::Redirect(location));
    }
    let table = ctx.table.clone();
    let rule = ctx.rule.map(|i| &table.rules()[i]).expect("routed");
    if let Some(status) = rule.block {
        return Err(Refusal::Blocked(status));
    }
    if rule.auth == Auth::Socket {
        // Socket.IO is terminated by the guard: identity at CONNECT, every frame filtered.
        return Ok(Next::Socket(body));
    }
    ctx.verdict.stage = Stage::Identity;
    identify(ctx, &parts.headers, env).await?;
    ctx.verdict.stage = Stage::Auth;
    if let Some(refusal) = policy::admin_route_denial(rule, ctx.principal.as_ref()) {
        // Before any body is read: a non-admin never makes the guard buffer an admin route's body.
        return Err(refusal);
    }
    ctx.verdict.stage = Stage::Body;
    let body = collect(ctx, parts, body, env).await?;
    let src = FactSource {
        facts: env.facts,
        ledger: env.ledger,
        keep_all: env.explain,
        enforce: !env.explain,
    };
    ctx.verdict = policy::decide(rule, &ctx.data, ctx.principal.as_ref(), src).await;
    ctx.outcome = match ctx.verdict.deciding() {
        None => Outcome::Allowed,
        // Shadow mode: a resource check's refusal of a read is logged and counted (`would_deny`),
        // then forwarded; every other refusal is enforced (see `Rule::forwards_in_shadow`).
        Some(c) => match &c.result {
            CheckResult::Failed(r)
                if rule.forwards_in_shadow(env.mode, &ctx.method, c.predicate) =>
            {
                Outcome::WouldDeny(r.clone())
            }
            CheckResult::Failed(r) => return Err(r.clone()),
            CheckResult::Held | CheckResult::AdminExempt | CheckResult::UpstreamEnforces(_) => {
                Outcome::Allowed
            }
        },
    };
    plan(ctx, env).await.inspect_err(|_| {
        ctx.verdict.stage = Stage::Plan;
    })?;
    Ok(Next::Forward(body))
}

/// Framing and target: the canonical target, or why the request cannot be read safely.
fn accept_target(
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    framing: Option<&'static str>,
) -> Result<(), Refusal> {
    if let Some(why) = framing.or_else(|| framing_error(&parts.headers)) {
        return Err(Refusal::BadRequest(why.into()));
    }
    // Absolute-form or authority-form targets on HTTP/1 (`GET http://x/… HTTP/1.1`, CONNECT).
    if parts.version <= Version::HTTP_11 && parts.uri.authority().is_some() {
        return Err(Refusal::BadTarget("absolute-form request target".into()));
    }
    if parts.method == Method::CONNECT {
        return Err(Refusal::BadTarget("CONNECT is not supported".into()));
    }
    let target = canonical::canonicalize(parts.uri.path(), parts.uri.query())
        .map_err(|e| Refusal::BadTarget(e.to_string()))?;
    ctx.target = Some(target);
    Ok(())
}

/// Framing problems HTTP/1 parsers disagree on (request smuggling), visible in the headers.
fn framing_error(h: &http::HeaderMap) -> Option<&'static str> {
    // CL.TE / TE.CL desync (Kettle 2019; hyper #3860/#4123): refuse both together.
    if h.contains_key(CONTENT_LENGTH) && h.contains_key(TRANSFER_ENCODING) {
        return Some("Content-Length with Transfer-Encoding");
    }
    // Duplicate Content-Length (including a comma list): refuse even when equal.
    let mut lengths = h.get_all(CONTENT_LENGTH).iter();
    let first = lengths.next();
    if lengths.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Some("duplicate Content-Length");
    }
    None
}

/// Match the canonical path: the rule (into `ctx.rule`), or a redirect location.
fn route(ctx: &mut RequestCtx, method: &Method) -> Result<Option<String>, Refusal> {
    let target = ctx.target.as_ref().expect("accepted target");
    match ctx.table.lookup(method, &target.path) {
        Lookup::Found(m) => {
            ctx.data.path = m.params;
            ctx.data.query = target.params.clone();
            ctx.rule = Some(m.index);
            Ok(None)
        }
        Lookup::Redirect(other) => Ok(Some(match &target.query {
            Some(q) => format!("{other}?{q}"),
            None => other,
        })),
        Lookup::NotFound => Err(Refusal::NoRoute),
    }
}

/// The identify step: the JWT secret (when the rule needs identity or filters) and the caller.
async fn identify(
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
    env: &Env<'_>,
) -> Result<(), Refusal> {
    let rule = ctx.rule().expect("routed");
    let (needs_identity, accepts_cookie) = (rule.auth.needs_identity(), rule.auth.accepts_cookie());
    if !needs_identity && rule.response.is_empty() {
        return Ok(());
    }
    let secret = env.facts.jwt_secret().await?;
    if needs_identity {
        let principal =
            identity::identify_with(headers, accepts_cookie, &secret, env.facts, env.ledger)
                .await
                .map_err(identity_refusal)?;
        ctx.principal = Some(principal);
    }
    ctx.secret = Some(secret);
    Ok(())
}

/// How an identity error is answered.
pub fn identity_refusal(e: IdentityError) -> Refusal {
    match e {
        IdentityError::Facts(f) => Refusal::from(f),
        IdentityError::Ambiguous => Refusal::BadRequest(e.to_string()),
        other => Refusal::Unauthenticated(other.to_string()),
    }
}

/// The collect step: what the checks read of the body (into `ctx.data`), and the body to
/// forward (the buffered one when it was read, else the client's stream, bounded).
async fn collect(
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    body: Body,
    env: &Env<'_>,
) -> Result<Body, Refusal> {
    let rule = ctx.rule().expect("routed");
    let limits = env.limits;
    // Anyone may call a public rule: its body is read before any identity, so it gets a small limit.
    let limit = match rule.auth {
        Auth::Public => limits.max_public_body_bytes.min(limits.max_body_bytes),
        Auth::User | Auth::Media | Auth::Socket | Auth::Admin => limits.max_body_bytes,
    };
    let timeout = limits.body_read_timeout;
    let (public, need) = (rule.auth == Auth::Public, rule.body);
    let declared = body.size_hint().exact();
    Ok(match need {
        BodyNeed::None if body.is_end_stream() => body,
        // A declared length over the limit is refused before anything is forwarded.
        BodyNeed::None if public && declared.is_some_and(|n| n > limit as u64) => {
            return Err(Refusal::TooLarge)
        }
        // Slow-body defence: a streamed upload may not stall (slowloris on the body).
        BodyNeed::None if public => {
            Limited::new(body::IdleTimeout::new(body, timeout), limit).boxed()
        }
        BodyNeed::None => body::IdleTimeout::new(body, timeout).boxed(),
        BodyNeed::Json | BodyNeed::Multipart => {
            body::refuse_encoded(&parts.headers)?;
            let bytes = body::read(body, &parts.headers, limit, timeout).await?;
            if env.candidate.is_some() {
                ctx.body = Some(bytes.clone());
            }
            let table = ctx.table.clone();
            let rule = ctx.rule.map(|i| &table.rules()[i]).expect("routed");
            ctx.data.fill(rule, &bytes, &parts.headers).await?;
            decision::full(bytes)
        }
    })
}

/// The plan step: which filters run for this request, and what is sent upstream. Lists an older
/// upstream would answer with other users' items are asked for differently (the caller's own
/// page, a wide page, only the writable names, a two-step delete): see `filters::recompute`.
async fn plan(ctx: &mut RequestCtx, env: &Env<'_>) -> Result<(), Refusal> {
    let rule = ctx.rule().expect("routed");
    if !rule.response.is_empty() {
        let schema = env.facts.schema();
        let principal = ctx.principal.as_ref();
        let access = Some(&**ctx.table.access());
        ctx.filters = rule
            .response
            .iter()
            .copied()
            .filter(|&f| filters::active(f, principal, &schema, &ctx.data.path, access))
            .collect();
        ctx.record = ctx.filters.iter().find_map(|f| f.info().records);
    }
    let rewrite = if ctx.filters.iter().any(|f| f.info().rewrites_request) {
        let fctx = ctx.filter_context(env).expect("accepted target");
        filters::plan(&ctx.filters, &fctx).await?
    } else {
        None
    };
    let reads_response = ctx.filters.iter().any(|f| f.needs_body());
    ctx.plan = Some(match rewrite {
        Some(r) => Plan {
            prelude: r.prelude,
            main: Some(r.request),
            reshape: Some(r.reshape),
            reads_response,
        },
        None => Plan {
            prelude: None,
            main: None,
            reshape: None,
            reads_response,
        },
    });
    Ok(())
}

/// The upstream phase (`serve` only): the owner intent, the plan's requests in order, the
/// response phase.
async fn forward(
    ctx: &mut RequestCtx,
    body: Body,
    state: &AppState,
    conn: &ConnInfo,
) -> Response<Body> {
    // A create whose owner InvokeAI does not keep is first written down as an intent; if the
    // ledger cannot take it, the create never happens.
    if let (Some(kind), Some(p)) = (ctx.record, ctx.principal.as_ref()) {
        match state.ledger.begin(kind, &p.user_id).await {
            Ok(intent) => ctx.intent = Some((kind, intent)),
            Err(e) => return refuse_late(ctx, Refusal::from(e), Outcome::Refused),
        }
    }
    if ctx.plan.as_ref().is_some_and(|p| p.prelude.is_some()) {
        if let Err(response) = run_prelude(ctx, state, conn).await {
            return response;
        }
    }
    // Socket events that name no owner (6.12) are attributed to the request that caused them.
    if let Some(p) = ctx.principal.as_ref() {
        ctx.tickets = ctx
            .filters
            .iter()
            .filter_map(|f| f.info().correlates)
            .map(|kind| {
                let kind = match kind {
                    Correlation::Recall => correlate::Kind::Recall,
                    Correlation::BulkDownload => correlate::Kind::BulkDownload,
                };
                state.correlations.begin(kind, &p.user_id)
            })
            .collect();
    }
    // The client's headers go upstream in place (the response phase reads none but the session
    // cookie, kept before).
    ctx.request_session = ctx
        .head
        .as_ref()
        .and_then(|h| identity::cookie(&h.headers, SESSION_COOKIE));
    let client_headers = ctx
        .head
        .as_mut()
        .map(|h| std::mem::take(&mut h.headers))
        .unwrap_or_default();
    let req = upstream_request(ctx, Leg::Main, body, client_headers, state, conn);
    let sent = state.upstream.send(req).await;
    for ticket in ctx.tickets.drain(..) {
        state.correlations.end(ticket);
    }
    let res = match sent {
        Ok(res) => res,
        Err(refusal) => return refuse_late(ctx, refusal, Outcome::UpstreamFailed),
    };
    let mutation = !matches!(ctx.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutation && res.status().is_success() {
        // Mutations the guard forwarded invalidate facts at once (before the watcher sees them).
        state.facts.invalidate();
    }
    // The upstream answered and facts are fresh: release the caller's quota reservation
    // (policy::models), remembering accepted items for the rolling windows.
    ctx.data.settle(res.status().is_success());
    response_phase(ctx, res, &state.env()).await
}

/// A refusal after the request phase allowed: recorded as `outcome`, answered.
fn refuse_late(
    ctx: &mut RequestCtx,
    refusal: Refusal,
    outcome: fn(Refusal) -> Outcome,
) -> Response<Body> {
    let res = refusal.response();
    ctx.outcome = outcome(refusal);
    res
}

/// Which of the plan's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The plan's first request (its answer is read by the guard).
    Prelude,
    /// The request whose answer the client gets.
    Main,
}

/// One of the plan's requests as HTTP: the caller's credentials re-minted, never as presented;
/// hop-by-hop and spoofable headers removed; `X-Forwarded-*` set from the connection.
pub fn upstream_request(
    ctx: &RequestCtx,
    leg: Leg,
    body: Body,
    client_headers: http::HeaderMap,
    state: &AppState,
    conn: &ConnInfo,
) -> Request<Body> {
    let parts = ctx.head.as_ref().expect("collected");
    let plan = ctx.plan.as_ref().expect("planned");
    let planned = match leg {
        Leg::Prelude => plan.prelude.as_ref(),
        Leg::Main => plan.main.as_ref(),
    };
    let (method, target, guard_body) = match planned {
        Some(p) => (p.method.clone(), &p.target, p.body.clone()),
        None => (
            ctx.method.clone(),
            ctx.target.as_ref().expect("accepted"),
            None,
        ),
    };
    // Credentials are re-derived: the presented ones never pass through as sent. An answer the
    // guard must read is asked for uncompressed (it is decoded if it comes compressed anyway).
    // The guard's own JSON body has its own length (hyper sets it) and no encoding.
    let reads = plan.reads_response || leg == Leg::Prelude;
    let drop: &[HeaderName] = match (reads, guard_body.is_some()) {
        (false, false) => &[],
        (true, false) => &[ACCEPT_ENCODING],
        (false, true) => &[CONTENT_LENGTH, CONTENT_ENCODING],
        (true, true) => &[ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_ENCODING],
    };
    // Read from the client's headers before they are stripped: its Host, a trusted proxy's
    // forwarding values, its own Authorization (reused when it is exactly what is sent).
    let host = headers::client_host(&client_headers, &parts.uri);
    let forwarded = headers::forwarded(
        &client_headers,
        &conn.client,
        &state.trusted_proxies,
        host.as_deref(),
    );
    let authorization = match (ctx.principal.as_ref(), ctx.secret.as_deref()) {
        (Some(p), Some(secret)) => upstream_authorization(p, secret, &client_headers),
        _ => Credential::None,
    };
    let mut headers = headers::into_forwardable(client_headers, drop);
    if headers.contains_key(http::header::COOKIE) {
        headers::remove_cookies(&mut headers, &[MEDIA_COOKIE, SESSION_COOKIE]);
    }
    match authorization {
        // The presented value is exactly the one to send: it stays where it is.
        Credential::Presented => {}
        Credential::Minted(v) => {
            headers.insert(AUTHORIZATION, v);
        }
        Credential::None => {
            headers.remove(AUTHORIZATION);
        }
    }
    let body = match guard_body {
        Some(bytes) => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            decision::full(bytes)
        }
        None => body,
    };
    forwarded.set(&mut headers);
    if !headers.contains_key(HOST) {
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            headers.insert(HOST, v);
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    // The canonical target goes upstream. When the client's own origin-form target is it byte
    // for byte (the common case), its already parsed URI is reused.
    let same = planned.is_none()
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path() == target.path
        && parts.uri.query() == target.query.as_deref();
    *req.uri_mut() = if same {
        parts.uri.clone()
    } else {
        state.upstream.uri_for(target)
    };
    *req.headers_mut() = headers;
    req
}

/// The `Authorization` a request is sent upstream with.
enum Credential {
    /// The client's own value, exactly `Bearer <token>` with a current `is_admin` claim.
    Presented,
    /// The token re-minted (a stale `is_admin` claim), or the caller's token from a cookie.
    Minted(HeaderValue),
    /// No caller: whatever the client sent is removed.
    None,
}

/// The caller's credential for the upstream: the token re-minted when its `is_admin` claim is
/// stale, else the caller's own; the presented `Authorization` value stays when it is exactly
/// `Bearer <that token>` (nothing to format, validate or move).
fn upstream_authorization(
    p: &crate::identity::Principal,
    secret: &str,
    presented: &http::HeaderMap,
) -> Credential {
    if p.via == crate::identity::TokenSource::Bearer && !p.is_admin_claim_stale() {
        if let Some(v) = presented.get(AUTHORIZATION) {
            let bytes = v.as_bytes();
            if bytes.len() == 7 + p.token.len()
                && bytes.starts_with(b"Bearer ")
                && &bytes[7..] == p.token.as_bytes()
            {
                return Credential::Presented;
            }
        }
    }
    match HeaderValue::from_str(&format!("Bearer {}", p.upstream_token(secret))) {
        Ok(v) => Credential::Minted(v),
        // Never forward what the client presented instead.
        Err(_) => Credential::None,
    }
}

/// Send the plan's prelude and take its JSON answer into the plan's reshape. Anything but a
/// readable 2xx answer ends the request: the upstream's own refusal is passed on, the rest is 502.
async fn run_prelude(
    ctx: &mut RequestCtx,
    state: &AppState,
    conn: &ConnInfo,
) -> Result<(), Response<Body>> {
    let client_headers = ctx
        .head
        .as_ref()
        .map(|h| h.headers.clone())
        .unwrap_or_default();
    let req = upstream_request(
        ctx,
        Leg::Prelude,
        decision::empty(),
        client_headers,
        state,
        conn,
    );
    let res = match state.upstream.send(req).await {
        Ok(res) => res,
        Err(refusal) => return Err(refuse_late(ctx, refusal, Outcome::UpstreamFailed)),
    };
    let (mut head, body) = res.into_parts();
    if !head.status.is_success() {
        ctx.outcome = Outcome::PreludeRefused;
        headers::strip_hop_by_hop(&mut head.headers);
        return Err(Response::from_parts(head, body.map_err(Into::into).boxed()));
    }
    // The prelude changed data (deleted the caller's images).
    state.facts.invalidate();
    let limits = &state.limits;
    let absorbed = read_upstream_body(
        &mut head.headers,
        body,
        limits.max_body_bytes,
        limits.upstream_response_timeout,
    )
    .await
    .and_then(|bytes| {
        serde_json::from_slice(&bytes)
            .map_err(|e| Refusal::BadUpstream(format!("prelude answer is not JSON: {e}")))
    })
    .and_then(
        |answer| match ctx.plan.as_mut().and_then(|p| p.reshape.as_mut()) {
            Some(reshape) => reshape.absorb_prelude(&answer),
            None => Ok(()),
        },
    );
    absorbed.map_err(|refusal| refuse_late(ctx, refusal, Outcome::Withheld))
}

/// The response phase: header filters, then (for 2xx bodies a filter reads) read, decode, filter.
pub async fn response_phase(
    ctx: &mut RequestCtx,
    res: Response<Incoming>,
    env: &Env<'_>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let limits = env.limits;
    let result = {
        let fctx = ctx.filter_context(env).expect("accepted target");
        filters::refreshed_token(&mut parts, &fctx);
        filters::apply_headers(&ctx.filters, &mut parts, &fctx).await;
        let reads = ctx.plan.as_ref().is_some_and(|p| p.reads_response);
        if !(parts.status.is_success() && reads) {
            if let Some((_, intent)) = fctx.intent {
                // The upstream refused the create: nothing to record.
                if let Err(e) = env.ledger.abandon(intent).await {
                    tracing::warn!(rule_id = %ctx.rule_id(), error = %e, "could not drop a ledger intent");
                }
            }
            return Response::from_parts(parts, body.map_err(Into::into).boxed());
        }
        match read_upstream_body(
            &mut parts.headers,
            body,
            limits.max_body_bytes,
            limits.upstream_response_timeout,
        )
        .await
        {
            Ok(decoded) => filters::apply_body(&ctx.filters, &mut parts, &decoded, &fctx)
                .await
                .map(|replaced| replaced.unwrap_or(decoded)),
            Err(refusal) => Err(refusal),
        }
    };
    match result {
        Ok(bytes) => Response::from_parts(parts, decision::full(bytes)),
        // Fail closed: a body that could not be read, filtered or recorded is never sent.
        Err(refusal) => {
            crate::metrics::response_withheld(ctx.rule_id(), refusal.label());
            refuse_late(ctx, refusal, Outcome::Withheld)
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
) -> Result<Bytes, Refusal> {
    // Slow-drip upstream body (headers at once, the rest never): bounded like the head.
    let raw = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            Refusal::BadUpstream(
                "response body not received within limits.upstream_response_timeout_ms".into(),
            )
        })?
        .map_err(|e| {
            Refusal::BadUpstream(format!(
                "response body over the filter limit or unreadable: {e}"
            ))
        })?
        .to_bytes();
    let mut encodings = headers.get_all(CONTENT_ENCODING).iter();
    let encoding = match (encodings.next(), encodings.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| Refusal::BadUpstream("unreadable Content-Encoding".into()))?,
        ),
        (Some(_), Some(_)) => return Err(Refusal::BadUpstream("stacked Content-Encoding".into())),
    };
    let decoded = body::decode(encoding, raw, limit)?;
    if encoding.is_some() {
        // What goes out is the decoded body.
        headers.remove(CONTENT_ENCODING);
        headers.remove(CONTENT_LENGTH);
    }
    Ok(decoded)
}

/// What decided, as a bounded label: a predicate, a stage, or `all` (every check held).
pub fn decided_by(ctx: &RequestCtx) -> &'static str {
    let verdict = &ctx.verdict;
    match (&ctx.outcome, verdict.stage) {
        (Outcome::Refused(_) | Outcome::WouldDeny(_), Stage::Check) => {
            verdict.deciding().map_or("-", |c| c.predicate.name())
        }
        (Outcome::Refused(_), Stage::Target) => "target",
        (Outcome::Refused(_), Stage::Route) => "route",
        (Outcome::Refused(_), Stage::Identity) => "identity",
        (Outcome::Refused(_), Stage::Auth) => "auth",
        (Outcome::Refused(_), Stage::Body) => "body",
        (Outcome::Refused(_), Stage::Plan) => "plan",
        (_, Stage::Check) => "all",
        _ => "-",
    }
}

/// The logging phase: one decision line and one metric sample per request (and, where a
/// candidate table answers differently, one candidate line and its count).
pub fn logging(ctx: &RequestCtx, status: StatusCode) {
    if let Some(c) = ctx.candidate.as_ref().filter(|c| c.differs()) {
        crate::metrics::candidate_difference(ctx.rule_id(), c.enforced.label(), c.answer.label());
        tracing::info!(
            target: "invoke_guard::candidate",
            rule_id = %ctx.rule_id(),
            candidate_rule_id = c.rule_id.as_deref().unwrap_or("-"),
            user_id = ctx.principal.as_ref().map_or("-", |p| p.user_id.as_str()),
            method = %ctx.method,
            path = %ctx.log_path(),
            enforced = c.enforced.label(),
            enforced_check = decided_by(ctx),
            candidate = c.answer.label(),
            candidate_check = c.decided_by,
        );
    }
    let elapsed = ctx.started.elapsed();
    let decided_by = decided_by(ctx);
    let reason = ctx.refusal().map_or("-", Refusal::label);
    let outcome = ctx.outcome.label();
    crate::metrics::decision(
        outcome,
        ctx.rule_id(),
        decided_by,
        reason,
        elapsed.as_secs_f64(),
    );
    crate::decisionlog::emit(&crate::decisionlog::DecisionLine {
        request_id: ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        client: ctx
            .client
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        rule_id: ctx.rule_id(),
        user_id: ctx.principal.as_ref().map(|p| p.user_id.as_str()),
        email: ctx.principal.as_ref().map(|p| p.email.as_str()),
        method: ctx.method.as_str(),
        path: ctx.log_path(),
        outcome,
        reason,
        check: decided_by,
        facts: ctx.verdict.facts(),
        detail: ctx.refusal().and_then(Refusal::cause).unwrap_or(""),
        status: status.as_u16(),
        micros: elapsed.as_micros() as u64,
    });
}
