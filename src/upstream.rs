//! Forwarding to InvokeAI: pooled keep-alive HTTP/1.1, streamed bodies, bounded waits. (Socket.IO
//! is not forwarded here: `socketio` terminates it and opens its own upstream websockets.)
//!
//! Invariants:
//! - The request target sent upstream is built only from the canonical [`Target`] (never the
//!   raw client target), on the configured upstream authority; it goes out in origin-form, with
//!   the `Host` the request carries (the upstream authority when it has none).
//! - No upgrade is ever forwarded: an upgrade request on an ordinary route is forwarded as plain
//!   HTTP without its `Upgrade` (WebSocket smuggling).
//! - Upstream failures are refusals of source `Upstream` (`UpstreamUnreachable` 502,
//!   `UpstreamTimeout` 504), mapped to HTTP by `decision` like every other refusal.
//! - What the guard sends is planned first ([`Planned`]: method, canonical target, the guard's own
//!   body where it rewrote one): `serve` sends exactly the plans `explain` prints.
//! - **Connection pool** (hot path; replaces hyper-util's legacy client, whose pool keyed every
//!   request by scheme and authority through SipHash and spawned a task per request to return the
//!   connection). There is one upstream, so one pool: a connection is handed out only when hyper
//!   says it can take a request (`SendRequest::is_ready`: the previous response was read to its
//!   end and the connection is open). A connection whose response body was dropped unread, or
//!   that failed, is closed by hyper and never handed out again (`is_closed`). What invalidates a
//!   pooled connection: the upstream closing it, an error, or `idle_timeout` without use (never
//!   handed out after that, and closed by a reaper; the default 4 s is below uvicorn's 5 s
//!   keep-alive). Idle time is counted conservatively (never less than real). A request hyper
//!   could not start on a reused connection (closed under it while idle) is retried once on a new
//!   connection, as hyper-util does; nothing written is ever retried. Connections handed a
//!   request wait in a busy list; it is looked at only when no idle connection is left, so its
//!   cost follows the requests in flight. Tests: `pool_*` below (reuse, idle timeout and reaping,
//!   a connection the upstream closed while idle, an unread body), `tests/faults.rs` (refused,
//!   reset mid-body, garbage), `tests/proxy.rs` (502, 504), the soak (idle connections reaped).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

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

/// The most connections kept (idle and in use) for reuse; more are opened when needed and
/// closed after their response.
const MAX_POOLED: usize = 256;

/// The upstream InvokeAI server.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    authority: http::uri::Authority,
    /// `authority` as a `Host` value, for a request that has none.
    host: HeaderValue,
    response_timeout: Duration,
    connect_timeout: Duration,
}

/// Connections to the upstream: `idle` ones can take a request now (the most recently used
/// last); `busy` ones were handed a request whose response may still be streaming.
struct Pool {
    conns: Mutex<Conns>,
    idle_timeout: Duration,
    reaper: std::sync::Once,
}

struct Conns {
    /// Each with the time it must not be handed out after: `idle_timeout` after it became idle,
    /// or earlier (never later). A deadline, so a checkout is one comparison with the clock.
    idle: Vec<(http1::SendRequest<Body>, Instant)>,
    /// Each with the time it was handed its last request, and whether a sweep already found it
    /// still busy.
    busy: Vec<(http1::SendRequest<Body>, Instant, bool)>,
    /// When `busy` was last looked at: a connection found still busy then became idle after it.
    swept: Instant,
}

impl Conns {
    /// Move the busy connections that can take a request again to `idle`; drop the closed ones.
    /// Their idle time is counted from the last sweep when that sweep found them busy, else from
    /// their last request: never less than they have really been idle, so a connection idle for
    /// `idle_timeout` is never handed out.
    fn sweep(&mut self, now: Instant, idle_timeout: Duration) {
        let mut i = 0;
        while i < self.busy.len() {
            let (tx, sent, seen_busy) = &mut self.busy[i];
            if tx.is_ready() {
                let since = if *seen_busy { self.swept } else { *sent };
                let (tx, _, _) = self.busy.swap_remove(i);
                self.idle
                    .push((tx, since.checked_add(idle_timeout).unwrap_or(since)));
            } else if tx.is_closed() {
                self.busy.swap_remove(i);
            } else {
                *seen_busy = true;
                i += 1;
            }
        }
        self.swept = now;
    }
}

impl Pool {
    /// A connection that can take a request now, if one is pooled.
    fn checkout(&self, now: Instant) -> Option<http1::SendRequest<Body>> {
        let mut conns = self.conns.lock().expect("upstream pool lock");
        for pass in 0..2 {
            while let Some((tx, until)) = conns.idle.pop() {
                if tx.is_ready() && now < until {
                    return Some(tx);
                }
                // Closed, or idle too long (the upstream may be closing it): dropped.
            }
            // Only when no idle one is left: look at the busy ones (amortized, each busy
            // connection is looked at once per use when the pool runs dry).
            if pass == 0 {
                conns.sweep(now, self.idle_timeout);
            }
        }
        None
    }

    /// Keep a connection that was just handed a request, for reuse once its response is read.
    fn checkin(&self, tx: http1::SendRequest<Body>, sent: Instant) {
        let mut conns = self.conns.lock().expect("upstream pool lock");
        if conns.idle.len() + conns.busy.len() < MAX_POOLED {
            conns.busy.push((tx, sent, false));
        }
    }

    /// Close the connections idle for `idle_timeout` and forget the closed ones.
    fn reap(&self) {
        let mut conns = self.conns.lock().expect("upstream pool lock");
        let now = Instant::now();
        conns.sweep(now, self.idle_timeout);
        conns
            .idle
            .retain(|(tx, until)| !tx.is_closed() && now < *until);
    }

    /// Start the reaper (once, on the first request: it needs the runtime). It holds the pool
    /// weakly and ends with it.
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool: Weak<Pool> = Arc::downgrade(self);
            let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.reap();
                }
            });
        });
    }
}

/// Why a request got no response head.
enum SendError {
    /// No connection could be made (refused, unresolvable, connect timeout).
    Connect(String),
    /// The connection failed while sending or before the response head.
    Request(hyper::Error),
}

impl Upstream {
    /// A pooled client for `base` (`http://host:port`).
    pub fn new(
        base: &Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let authority = base
            .authority()
            .expect("validated upstream has an authority")
            .clone();
        let host = HeaderValue::from_str(authority.as_str()).expect("an authority is a valid Host");
        Self {
            pool: Arc::new(Pool {
                conns: Mutex::new(Conns {
                    idle: Vec::new(),
                    busy: Vec::new(),
                    swept: Instant::now(),
                }),
                idle_timeout,
                reaper: std::sync::Once::new(),
            }),
            authority,
            host,
            response_timeout,
            connect_timeout,
        }
    }

    /// The upstream's host and port, as a socket address to resolve.
    fn addr(&self) -> (&str, u16) {
        (
            self.authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            self.authority.port_u16().unwrap_or(80),
        )
    }

    /// A new connection (bounded by the connect timeout), its driver spawned.
    async fn connect(&self) -> Result<http1::SendRequest<Body>, SendError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.addr()),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "tcp connect error: no connection within {} ms",
                    self.connect_timeout.as_millis()
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Send on a pooled connection (or a new one); keep the connection for reuse.
    async fn round_trip(&self, req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        self.pool.start_reaper();
        // One clock read: the checkout's "now" and the request's start (earlier than the end of
        // a connect, so the idle bound stays conservative).
        let sent = Instant::now();
        let (mut tx, reused) = match self.pool.checkout(sent) {
            Some(tx) => (tx, true),
            None => (self.connect().await?, false),
        };
        let res = match tx.try_send_request(req).await {
            Ok(res) => res,
            Err(mut e) => match e.take_message() {
                // Not started: the pooled connection closed under us. Once, on a new one.
                Some(req) if reused => {
                    tx = self.connect().await?;
                    tx.send_request(req).await.map_err(SendError::Request)?
                }
                _ => return Err(SendError::Request(e.into_error())),
            },
        };
        self.pool.checkin(tx, sent);
        Ok(res)
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

    /// The upstream URI for a canonical target: origin-form (`/path?query`), as it goes on the
    /// wire; every request goes to this upstream's authority.
    pub fn uri_for(&self, target: &Target) -> Uri {
        Uri::from(
            http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target.path_and_query()))
                .expect("canonical targets are valid URIs"),
        )
    }

    /// The upstream's `host:port`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// Send a request and wait (bounded) for the response head.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, Refusal> {
        *req.version_mut() = Version::HTTP_11;
        // Origin-form on the wire (`uri_for` makes it so already); `Host` as the request
        // carries it, else the upstream's.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let origin_form = match req.uri().path_and_query() {
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::default(),
            };
            *req.uri_mut() = origin_form;
        }
        req.headers_mut()
            .entry(HOST)
            .or_insert_with(|| self.host.clone());
        match tokio::time::timeout(self.response_timeout, self.round_trip(req)).await {
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
                let (kind, cause) = match e {
                    SendError::Connect(cause) => ("connect", cause),
                    SendError::Request(e) => {
                        // The whole source chain: hyper's top-level message alone hides the cause.
                        let mut cause = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            cause.push_str(": ");
                            cause.push_str(&s.to_string());
                            source = s.source();
                        }
                        ("request", cause)
                    }
                };
                crate::metrics::upstream_error(kind);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    /// An origin answering `200 ok` on keep-alive connections; counts the connections it accepted.
    /// With `close_idle`, it closes each connection 30 ms after answering (an upstream's
    /// keep-alive timeout).
    async fn origin(close_idle: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let res = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(res).await.is_err() {
                            return;
                        }
                        if close_idle {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            return;
                        }
                    }
                });
            }
        });
        (uri, accepted)
    }

    async fn get(up: &Upstream, base: &Uri) -> Vec<u8> {
        let mut req = Request::new(crate::decision::full(bytes::Bytes::new()));
        *req.uri_mut() = format!("{base}x").parse().unwrap();
        let res = up.send(req).await.expect("an answer");
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    fn upstream(base: &Uri, idle: Duration) -> Upstream {
        Upstream::new(base, Duration::from_secs(2), idle, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn pool_reuses_one_connection_for_sequential_requests() {
        let (base, accepted) = origin(false).await;
        let up = upstream(&base, Duration::from_secs(4));
        for _ in 0..5 {
            assert_eq!(get(&up, &base).await, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn pool_never_hands_out_a_connection_idle_for_idle_timeout() {
        let (base, accepted) = origin(false).await;
        let up = upstream(&base, Duration::from_millis(100));
        assert_eq!(get(&up, &base).await, b"ok");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(get(&up, &base).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // And the reaper closed the stale one: nothing idle but the one just used.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let conns = up.pool.conns.lock().unwrap();
        assert!(conns.idle.iter().all(|(tx, _)| !tx.is_closed()));
        assert!(conns.idle.len() + conns.busy.len() <= 1);
    }

    #[tokio::test]
    async fn pool_skips_a_connection_the_upstream_closed_while_idle() {
        let (base, accepted) = origin(true).await;
        let up = upstream(&base, Duration::from_secs(4));
        assert_eq!(get(&up, &base).await, b"ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(get(&up, &base).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn pool_drops_a_connection_whose_body_was_not_read() {
        let (base, accepted) = origin(false).await;
        let up = upstream(&base, Duration::from_secs(4));
        let mut req = Request::new(crate::decision::full(bytes::Bytes::new()));
        *req.uri_mut() = format!("{base}x").parse().unwrap();
        drop(up.send(req).await.expect("an answer"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&up, &base).await, b"ok");
        assert!(accepted.load(Ordering::SeqCst) <= 2);
    }
}
