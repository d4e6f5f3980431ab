//! The admin listener: liveness, readiness, metrics, and the facts generation.
//!
//! Invariants:
//! - It binds its own address (loopback by default) and never proxies anything.
//! - Only GET and HEAD are answered; any other method is 405 with `Allow: GET, HEAD`.
//! - `/readyz` is 200 only while the route table is loaded, InvokeAI's database is readable,
//!   InvokeAI accepts TCP connections and shutdown has not begun; while the persisted last good
//!   table stands in for a routes.toml that does not load, its body says so, and it says when
//!   the ledger has not adopted the database (the guard serves, failing closed on unowned items).
//! - The accept loop is bounded like the main one: accept errors back off, at most
//!   [`MAX_CONNECTIONS`] connections, a connection must send its head within
//!   `limits.header_read_timeout`, and shutdown drains for at most `limits.shutdown_grace`.
//! - Before the guard's state exists ([`run_waiting`]: `serve` waiting for InvokeAI's database),
//!   `/healthz` is 200 and `/readyz` 503 with what it waits for.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::decision::{self, Body};
use crate::state::AppState;

/// Connections the admin listener serves at once (probes and scrapers need a handful).
pub const MAX_CONNECTIONS: usize = 64;
/// Request heads on the admin listener are small.
const MAX_HEAD_BYTES: usize = 16 * 1024;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(decision::full(body));
    *res.status_mut() = status;
    res
}

/// 405 for anything but GET and HEAD (the endpoints only read).
fn method_not_allowed(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut res = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed\n".into(),
    );
    res.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD"),
    );
    Some(res)
}

async fn route(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    if let Some(res) = method_not_allowed(req) {
        return res;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let rules = state.routes.load().rules().len();
            if state.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: shutting down (draining)\n".into(),
                )
            } else if let (true, true, Ok(())) = (
                rules > 0,
                state.facts.is_available(),
                state.upstream.reachable().await,
            ) {
                let shadow = state.routes.load().shadow_rules(state.mode).len();
                let mut note = match (state.mode, shadow) {
                    (crate::rules::Mode::Shadow, _) => {
                        " (SHADOW MODE: every rule; a dry run for reads, writes and account checks enforced)".to_owned()
                    }
                    (_, 0) => String::new(),
                    (_, n) => format!(" (SHADOW: {n} rule(s) in shadow mode: a dry run for reads, writes and account checks enforced)"),
                };
                if let Some(f) = state.fallback() {
                    note.push_str(&format!(
                        " (DEGRADED: serving the last good route table persisted at {} (unix time); {} does not load: {})",
                        f.saved_at,
                        state.routes_path.display(),
                        f.error.replace('\n', " ")
                    ));
                }
                let ledger = match state.ledger.adoption() {
                    crate::facts::ledger::Adoption::Adopted { .. } => String::new(),
                    crate::facts::ledger::Adoption::Pending { .. } => "; LEDGER NOT ADOPTED: unowned user workflows and style presets from before the ledger are admin-only until `invoke-guard ledger adopt-existing`".to_owned(),
                };
                text(
                    StatusCode::OK,
                    format!("ready: {rules} rules{note}{ledger}\n"),
                )
            } else {
                let upstream = match state.upstream.reachable().await {
                    Ok(()) => "reachable".to_owned(),
                    Err(e) => format!("unreachable ({e})"),
                };
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: {rules} rules, database available: {}, upstream {upstream}\n",
                        state.facts.is_available()
                    ),
                )
            }
        }
        "/metrics" => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = crate::metrics::Format::negotiate(accept);
            let mut res = text(StatusCode::OK, crate::metrics::render_as(format));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            res.headers_mut()
                .insert(http::header::VARY, http::HeaderValue::from_static("accept"));
            res
        }
        "/facts/generation" => text(StatusCode::OK, format!("{}\n", state.facts.generation())),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serve the admin endpoints until `shutdown` resolves, then drain (at most
/// `limits.shutdown_grace`).
pub async fn run<F: Future<Output = ()>>(listener: TcpListener, state: Arc<AppState>, shutdown: F) {
    let limits = state.limits.clone();
    serve(&listener, &limits, shutdown, move |req| {
        let state = state.clone();
        async move { route(&req, &state).await }
    })
    .await;
}

/// Before the state exists (`serve` waiting for InvokeAI's database): `/healthz` 200, `/readyz`
/// 503 with `waiting_for`, everything else 404, until `done` resolves. The listener is kept for
/// [`run`].
pub async fn run_waiting<F: Future<Output = ()>>(
    listener: &TcpListener,
    limits: &crate::config::Limits,
    waiting_for: Arc<std::sync::Mutex<String>>,
    done: F,
) {
    serve(listener, limits, done, move |req| {
        let waiting_for = waiting_for.clone();
        async move {
            if let Some(res) = method_not_allowed(&req) {
                return res;
            }
            match req.uri().path() {
                "/healthz" => text(StatusCode::OK, "ok (starting)\n".into()),
                "/readyz" => {
                    let why = waiting_for
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: starting: {why}\n"),
                    )
                }
                "/metrics" => text(
                    StatusCode::OK,
                    crate::metrics::render_as(crate::metrics::Format::Text004),
                ),
                _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
            }
        }
    })
    .await;
}

/// The accept loop: backoff on accept errors, a connection limit, a head deadline, a drain.
async fn serve<F, H, R>(
    listener: &TcpListener,
    limits: &crate::config::Limits,
    shutdown: F,
    handler: H,
) where
    F: Future<Output = ()>,
    H: Fn(Request<Incoming>) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut backoff = super::ACCEPT_BACKOFF_MIN;
    while let Some((stream, peer)) = super::accept(listener, &mut shutdown, &mut backoff).await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin connection limit reached; closing");
            continue;
        };
        let handler = handler.clone();
        let builder = builder.clone();
        let (io, _) = crate::http::framing::Scanned::new(stream, MAX_HEAD_BYTES);
        // An idle connection that never sends a byte would otherwise hold a slot for ever.
        let io = io.first_byte_within(limits.header_read_timeout);
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = conn.await;
        });
    }
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin drain timed out; closing remaining connections");
    }
}
