//! The admin listener: liveness, readiness, metrics, and the facts generation.
//!
//! Invariants:
//! - It binds its own address (loopback by default) and never proxies anything.
//! - `/readyz` is 200 only while the route table is loaded, InvokeAI's database is readable,
//!   InvokeAI accepts TCP connections and shutdown has not begun; its body says when the
//!   ledger has not adopted the database (the guard serves, failing closed on unowned items).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::decision::{self, Body};
use crate::state::AppState;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(decision::full(body));
    *res.status_mut() = status;
    res
}

async fn route(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
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
                let note = match (state.mode, shadow) {
                    (crate::rules::Mode::Shadow, _) => {
                        " (SHADOW MODE: no rule is enforced, denials are only logged)".to_owned()
                    }
                    (_, 0) => String::new(),
                    (_, n) => format!(" (SHADOW: {n} rule(s) not enforced, denials only logged)"),
                };
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

/// Serve the admin endpoints until `shutdown` resolves.
pub async fn run<F: Future<Output = ()>>(listener: TcpListener, state: Arc<AppState>, shutdown: F) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            () = &mut shutdown => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
