//! The listener and the request pipeline.
//!
//! `handle` runs, in this order and nothing else: framing checks → canonicalize → match →
//! identify → collect arguments → decide → forward → rewrite → record.
//!
//! Invariants:
//! - The canonical target from step 1 is what step 2 matches and what step 6 forwards.
//! - No path through `pipeline` reaches `Upstream::send` without `Decision::Allow` for the rule
//!   that matched.
//! - Shutdown stops accepting at once and drains in-flight connections for a bounded time.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::body;
use crate::canonical::{self, Target};
use crate::decision::{self, Body, Decision, DenyReason};
use crate::framing;
use crate::headers::{self, ClientConn};
use crate::identity::{self, IdentityError, Principal, MEDIA_COOKIE, SESSION_COOKIE};
use crate::ledger::Entry;
use crate::policy::{self, Context, RequestData};
use crate::rewrite::{self, FilterContext};
use crate::routes::{Auth, BodyNeed, Lookup, Rule};
use crate::state::AppState;

const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Accept connections until `shutdown` resolves, then drain (bounded by the configured grace).
pub async fn run<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        .max_buf_size(state.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(state.limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    pair
                }
                Err(e) => {
                    // EMFILE and friends persist until something closes: retrying at once spins
                    // a core and floods the log, so back off (doubling, capped).
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let client = ClientConn {
                peer: peer.ip(),
                tls: tls.is_some(),
            };
            let max_head = state.limits.max_header_bytes;
            let svc_state = state.clone();
            let service = move |framing: Arc<framing::Flag>| {
                let state = svc_state.clone();
                let conn = ConnInfo {
                    client: client.clone(),
                    framing,
                };
                service_fn(move |req| {
                    let state = state.clone();
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state, &conn).await) }
                })
            };
            let result = match tls {
                None => {
                    let (io, flag) = framing::Scanned::new(stream, max_head);
                    let fut =
                        builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
                    watcher.watch(fut.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        state.limits.header_read_timeout,
                        acceptor.accept(stream),
                    )
                    .await;
                    let Ok(Ok(tls_stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let (io, flag) = framing::Scanned::new(tls_stream, max_head);
                    let fut =
                        builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
                    watcher.watch(fut.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(state.limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// Build a TLS acceptor (HTTP/2 and HTTP/1.1 via ALPN) from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the pipeline knows about the client connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub client: ClientConn,
    pub framing: Arc<framing::Flag>,
}

/// What the decision log records about one request.
struct Record {
    rule_id: String,
    user_id: Option<String>,
    path: String,
    outcome: &'static str,
    reason: &'static str,
    detail: Option<String>,
}

/// Handle one request end to end; never fails (errors become responses).
pub async fn handle(req: Request<Incoming>, state: &AppState, conn: &ConnInfo) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let mut record = Record {
        rule_id: "-".into(),
        user_id: None,
        path: String::new(),
        outcome: "allow",
        reason: "-",
        detail: None,
    };
    let response = match pipeline(req, state, conn, &mut record).await {
        Ok(response) => response,
        Err(reason) => {
            record.outcome = "deny";
            record.reason = reason.label();
            if let DenyReason::Unavailable(cause) | DenyReason::BadUpstream(cause) = &reason {
                record.detail = Some(cause.clone());
            }
            let mut res = decision::deny_response(&reason);
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
    let elapsed = started.elapsed();
    crate::metrics::decision(
        record.outcome,
        &record.rule_id,
        record.reason,
        elapsed.as_secs_f64(),
    );
    tracing::info!(
        target: "invoke_guard::decision",
        rule_id = %record.rule_id,
        user_id = record.user_id.as_deref().unwrap_or("-"),
        method = %method,
        path = %record.path,
        outcome = record.outcome,
        reason = record.reason,
        detail = record.detail.as_deref().unwrap_or(""),
        status = response.status().as_u16(),
        micros = elapsed.as_micros() as u64,
    );
    response
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

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn identity_denial(e: IdentityError) -> DenyReason {
    match e {
        IdentityError::Facts(f) => DenyReason::Unavailable(f.to_string()),
        IdentityError::Ambiguous => DenyReason::BadRequest(e.to_string()),
        other => DenyReason::Unauthenticated(other.to_string()),
    }
}

async fn pipeline(
    mut req: Request<Incoming>,
    state: &AppState,
    conn: &ConnInfo,
    record: &mut Record,
) -> Result<Response<Body>, DenyReason> {
    // 0. framing
    if let Some(reason) = framing_error(&req, conn) {
        record.path = format!("{:?}", req.uri().path());
        return Err(reason);
    }
    // 1. canonicalize
    let target = canonical::canonicalize(req.uri().path(), req.uri().query()).map_err(|e| {
        // Escaped for the log: the raw target may hold control bytes.
        record.path = format!("{:?}", req.uri().path());
        DenyReason::BadTarget(e.to_string())
    })?;
    record.path = target.path.clone();
    // 2. match
    let table = state.routes.load_full();
    let matched = match table.lookup(req.method(), &target.path) {
        Lookup::Found(m) => m,
        Lookup::Redirect(other) => {
            record.outcome = "redirect";
            let location = match &target.query {
                Some(q) => format!("{other}?{q}"),
                None => other,
            };
            return Ok(decision::redirect_response(&location));
        }
        Lookup::NotFound => return Err(DenyReason::NoRoute),
    };
    let rule = matched.rule;
    record.rule_id = rule.id.clone();
    if let Some(status) = rule.block {
        return Err(DenyReason::Blocked(status));
    }
    // 3. identify (the secret is read once: identity, upstream token, response filters)
    let secret = match rule.auth.needs_identity() || !rule.response.is_empty() {
        true => Some(
            state
                .facts
                .jwt_secret()
                .await
                .map_err(|e| DenyReason::Unavailable(e.to_string()))?,
        ),
        false => None,
    };
    let principal = if let (true, Some(secret)) = (rule.auth.needs_identity(), &secret) {
        let p = identity::identify_with(
            req.headers(),
            rule.auth.accepts_cookie(),
            secret,
            &state.facts,
            &state.ledger,
        )
        .await
        .map_err(identity_denial)?;
        record.user_id = Some(p.user_id.clone());
        if rule.auth == Auth::Admin && !p.is_admin {
            return Err(DenyReason::Forbidden("Admin privileges required".into()));
        }
        Some(p)
    } else {
        None
    };
    // 4. collect arguments
    let client_upgrade =
        (rule.auth == Auth::Socket && is_upgrade(&req)).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut data = RequestData {
        path: matched
            .params
            .iter()
            .map(|(k, v)| (k.clone(), canonical::decode_param(v)))
            .collect(),
        query: target.params.clone(),
        ..RequestData::default()
    };
    // Anyone may call a public rule: its body is read before any identity, so it gets a small limit.
    let body_limit = match rule.auth {
        Auth::Public => state
            .limits
            .max_public_body_bytes
            .min(state.limits.max_body_bytes),
        _ => state.limits.max_body_bytes,
    };
    let timeout = state.limits.body_read_timeout;
    let upstream_body: Body = match rule.body {
        BodyNeed::None if body.is_end_stream() => body.map_err(Into::into).boxed(),
        // Slow-body defence: a streamed upload may not stall (slowloris on the body).
        BodyNeed::None if rule.auth == Auth::Public => {
            Limited::new(body::IdleTimeout::new(body, timeout), body_limit).boxed()
        }
        BodyNeed::None => body::IdleTimeout::new(body, timeout).boxed(),
        need => {
            body::refuse_encoded(&parts.headers)?;
            let bytes = body::read(body, &parts.headers, body_limit, timeout).await?;
            match need {
                BodyNeed::Json => data.body = body::json(&bytes, &rule.json_plan)?,
                BodyNeed::Multipart => data.form = body::form(&bytes, &parts.headers).await?,
                BodyNeed::None => {}
            }
            decision::full(bytes)
        }
    };
    // 5. decide
    let ctx = Context {
        facts: &state.facts,
        ledger: &state.ledger,
        principal: principal.as_ref(),
    };
    match policy::evaluate(rule, &data, &ctx).await {
        Decision::Allow => {}
        Decision::Deny(reason) => return Err(reason),
    }
    // 6. forward (a create whose owner InvokeAI does not keep is first written down as an intent;
    //    if the ledger cannot take it, the create never happens)
    let intent = match (record_needed(rule, state), principal.as_ref()) {
        (Some(kind), Some(p)) => Some((
            kind,
            state
                .ledger
                .begin(kind, &p.user_id)
                .await
                .map_err(|e| DenyReason::Unavailable(format!("ledger: {e}")))?,
        )),
        _ => None,
    };
    let reads_response = rule.response.iter().any(|f| f.needs_body());
    let upstream_req = upstream_request(
        &parts,
        &target,
        upstream_body,
        principal.as_ref(),
        secret.as_deref(),
        rule.auth == Auth::Socket || reads_response,
        client_upgrade.is_some(),
        state,
        &conn.client,
    );
    let mut res = match state.upstream.send(upstream_req).await {
        Ok(res) => res,
        Err(failure) => {
            record.outcome = "upstream_error";
            return Ok(decision::upstream_failure_response(failure));
        }
    };
    let mutation = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutation && res.status().is_success() {
        // Mutations the guard forwarded invalidate facts at once (before the watcher sees them).
        state.facts.invalidate();
    }
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(upgrade) = client_upgrade {
            crate::proxy::tunnel(upgrade, &mut res);
            return Ok(res.map(|b| b.map_err(Into::into).boxed()));
        }
    }
    // 7. rewrite
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
        intent,
    };
    Ok(respond(res, rule, &filter_ctx, state.limits.max_body_bytes).await)
}

#[allow(clippy::too_many_arguments)]
fn upstream_request(
    parts: &http::request::Parts,
    target: &Target,
    body: Body,
    principal: Option<&Principal>,
    secret: Option<&str>,
    identity_encoding: bool,
    upgrade: bool,
    state: &AppState,
    conn: &ClientConn,
) -> Request<Body> {
    let mut headers = parts.headers.clone();
    let upgrade_value = headers.get(UPGRADE).cloned();
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
        // compressed anyway). InvokeAI 6.14's gzip middleware also answers 500 to compressed
        // Engine.IO polling (it reads a lower-case content-type the socket layer does not send).
        headers.remove(ACCEPT_ENCODING);
    }
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, value);
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
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = state.upstream.uri_for(target);
    *req.headers_mut() = headers;
    req
}

/// The ledger entry a rule's create must record, where InvokeAI keeps no owner of its own.
fn record_needed(rule: &Rule, state: &AppState) -> Option<Entry> {
    let schema = state.facts.schema();
    rule.response
        .iter()
        .filter_map(|f| f.records())
        .find(|kind| match kind {
            Entry::Workflow => !schema.has_workflow_owner,
            Entry::StylePreset => schema.capability("scopes_preset_lists") != Some(true),
            Entry::BulkDownload => true,
        })
}

async fn respond(
    res: Response<Incoming>,
    rule: &Rule,
    ctx: &FilterContext<'_>,
    limit: usize,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    rewrite::refreshed_token(&mut parts, ctx);
    rewrite::apply_headers(&rule.response, &mut parts, ctx).await;
    let wants_body = parts.status.is_success() && rule.response.iter().any(|f| f.needs_body());
    if !wants_body {
        if let Some((_, intent)) = ctx.intent {
            // The upstream refused the create: nothing to record.
            if let Err(e) = ctx.ledger.abandon(intent).await {
                tracing::warn!(rule_id = %rule.id, error = %e, "could not drop a ledger intent");
            }
        }
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    match filtered_body(&rule.response, &mut parts, body, ctx, limit).await {
        Ok(bytes) => Response::from_parts(parts, decision::full(bytes)),
        // Fail closed: a body that could not be read, filtered or recorded is never sent.
        Err(reason) => {
            tracing::error!(rule_id = %rule.id, reason = reason.label(), detail = ?reason, "response withheld");
            crate::metrics::response_withheld(&rule.id, reason.label());
            decision::deny_response(&reason)
        }
    }
}

/// Read (bounded), decode and filter a 2xx body the rule's filters need.
async fn filtered_body(
    filters: &[rewrite::ResponseFilter],
    parts: &mut http::response::Parts,
    body: Incoming,
    ctx: &FilterContext<'_>,
    limit: usize,
) -> Result<Bytes, DenyReason> {
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            DenyReason::BadUpstream(format!(
                "response body over the filter limit or unreadable: {e}"
            ))
        })?
        .to_bytes();
    let mut encodings = parts.headers.get_all(CONTENT_ENCODING).iter();
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
        parts.headers.remove(CONTENT_ENCODING);
        parts.headers.remove(CONTENT_LENGTH);
    }
    let replaced = rewrite::apply_body(filters, parts, &decoded, ctx).await?;
    Ok(replaced.unwrap_or(decoded))
}

/// Bind helper for tests and main: the actual local address.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("bound listener has an address")
}
