//! Forwarding to InvokeAI: pooled keep-alive HTTP/1.1, streamed bodies, bounded waits. (Socket.IO
//! is not forwarded here: `socketio` terminates it and opens its own upstream websockets.)
//!
//! Invariants:
//! - The request target sent upstream is built only from the canonical [`Target`] (never the
//!   raw client target), on the configured upstream authority.
//! - No upgrade is ever forwarded: an upgrade request on an ordinary route is forwarded as plain
//!   HTTP without its `Upgrade` (WebSocket smuggling).
//! - Upstream failures are data ([`UpstreamFailure`]) mapped to 502/504 by `decision`.

use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::decision::{Body, UpstreamFailure};
use crate::http::canonical::Target;

/// The upstream InvokeAI server.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: http::uri::Authority,
    response_timeout: Duration,
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
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            authority: base
                .authority()
                .expect("validated upstream has an authority")
                .clone(),
            response_timeout,
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
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        *req.version_mut() = Version::HTTP_11;
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                Err(UpstreamFailure::Unreachable)
            }
            Ok(Ok(res)) => Ok(res),
        }
    }
}
