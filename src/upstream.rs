//! Forwarding to InvokeAI: pooled keep-alive HTTP/1.1, streamed bodies, bounded waits. (Socket.IO
//! is not forwarded here: `socketio` terminates it and opens its own upstream websockets.)
//!
//! Invariants:
//! - The request target sent upstream is built only from the canonical [`Target`] (never the
//!   raw client target), on the configured upstream authority.
//! - No upgrade is ever forwarded: an upgrade request on an ordinary route is forwarded as plain
//!   HTTP without its `Upgrade` (WebSocket smuggling).
//! - Upstream failures are refusals of source `Upstream` (`UpstreamUnreachable` 502,
//!   `UpstreamTimeout` 504), mapped to HTTP by `decision` like every other refusal.
//! - What the guard sends is planned first ([`Planned`]: method, canonical target, the guard's own
//!   body where it rewrote one): `serve` sends exactly the plans `explain` prints.

use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use bytes::Bytes;
use http::Method;

use crate::decision::{Body, Refusal};
use crate::http::canonical::Target;

/// One request the guard will send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub method: Method,
    /// Canonical; the client's own unless a rewrite chose another.
    pub target: Target,
    /// The guard's own JSON body (a rewrite); `None`: the client's body, as received.
    pub body: Option<Bytes>,
}

/// The upstream InvokeAI server.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: http::uri::Authority,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Upstream {
    /// A pooled client for `base` (`http://host:port`).
    pub fn new(
        base: &Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            // Without a timer hyper-util never reaps idle connections: they stay open until the
            // upstream closes them (the soak found them still open 30 s after the traffic).
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            authority: base
                .authority()
                .expect("validated upstream has an authority")
                .clone(),
            response_timeout,
            connect_timeout,
        }
    }

    /// Whether InvokeAI accepts a TCP connection now (readiness; bounded by the connect timeout,
    /// at most one second). The error names the address and the cause.
    pub async fn reachable(&self) -> Result<(), String> {
        let addr = (
            self.authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            self.authority.port_u16().unwrap_or(80),
        );
        let wait = self.connect_timeout.min(Duration::from_secs(1));
        match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{}: {e}", self.authority)),
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                self.authority,
                wait.as_millis()
            )),
        }
    }

    /// The upstream URI for a canonical target.
    pub fn uri_for(&self, target: &Target) -> Uri {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(target.path_and_query())
            .build()
            .expect("canonical targets are valid URIs")
    }

    /// The upstream's `host:port`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// Send a request and wait (bounded) for the response head.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, Refusal> {
        *req.version_mut() = Version::HTTP_11;
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => {
                crate::metrics::upstream_error("timeout");
                tracing::warn!(
                    upstream = %self.authority,
                    timeout_ms = self.response_timeout.as_millis() as u64,
                    "upstream did not answer in time (504); raise limits.upstream_response_timeout_ms if InvokeAI is just slow"
                );
                Err(Refusal::UpstreamTimeout)
            }
            Ok(Err(e)) => {
                let kind = if e.is_connect() { "connect" } else { "request" };
                crate::metrics::upstream_error(kind);
                // The whole source chain: hyper's top-level message alone hides the cause.
                let mut cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    cause.push_str(": ");
                    cause.push_str(&s.to_string());
                    source = s.source();
                }
                tracing::warn!(
                    upstream = %self.authority,
                    kind,
                    error = %cause,
                    "upstream request failed (502); is InvokeAI running and listening there?"
                );
                Err(Refusal::UpstreamUnreachable)
            }
            Ok(Ok(res)) => Ok(res),
        }
    }
}
