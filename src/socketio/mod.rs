//! Socket.IO, terminated in the guard and filtered per user (spec `invokeai-socketio.md` §4).
//!
//! - [`engineio`], [`packet`]: the Engine.IO v4 and Socket.IO v5 codecs.
//! - [`rooms`]: what a client may ask the upstream (pure).
//! - [`events`]: who receives which server event (pure).
//! - [`session`]: one client session: identity at CONNECT, one upstream websocket, the pumps.
//! - [`registry`]: live sessions by sid, and the budget they are admitted under.
//! - [`origin`]: `Origin` checks for cookie-authenticated sessions.
//! - [`correlate`]: 6.12 events without an owner, attributed to the HTTP request behind them.
//! - this module: the HTTP side of both transports (long-polling GET/POST, websocket, upgrade),
//!   and [`Env`], everything the sessions need of the process (not the whole `AppState`).
//!
//! Invariants:
//! - Only Engine.IO v4 is served (`EIO=3` and JSONP polling are refused with 400).
//! - The handshake request itself needs no identity (clients authenticate in CONNECT); its
//!   `Authorization` and `Cookie` are kept for the first CONNECT's fallback, as the server does.
//! - Every transport request of an existing session (polling GET/POST, the upgrade) passes
//!   [`session::Session::admit_request`] with the user of its verified Bearer or session cookie
//!   and the session's proof cookie, before anything reaches the session: refused (403, counted)
//!   when it is not the session's. The polling handshake sets that cookie.
//! - Polling allows one GET and one POST in flight per session; an unknown sid is 400; a polling
//!   response carries at most 16 packets and about `maxPayload` bytes (what clients accept); a
//!   polling POST holding more than one CONNECT is refused whole (400).
//! - Sessions are admitted by the [`registry`]: at most `limits.max_connections` with a known
//!   caller (beyond: 503), the ones without in a separate bounded pool that anonymous clients
//!   cannot grow past it. A session that never answers pings ends after
//!   `pingInterval + pingTimeout`; one without an accepted CONNECT after
//!   `limits.socket_connect_timeout_ms`.
//! - Websockets never negotiate compression (no permessage-deflate), and frames are limited to
//!   `maxPayload`.

pub mod correlate;
pub mod engineio;
pub mod events;
pub mod origin;
pub mod packet;
pub mod registry;
pub mod rooms;
pub mod session;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::decision::{self, Body};
use crate::facts::ledger::Ledger;
use crate::facts::Facts;
use crate::http::canonical::Target;
use correlate::Correlations;
use engineio::Timing;
use registry::Registry;
use session::{Handshake, Inbound, Session};

/// What Socket.IO sessions need of the process: built once from the settings and the shared fact
/// sources, held by every session actor.
pub struct Env {
    pub facts: Facts,
    pub ledger: Ledger,
    /// InvokeAI's `host:port` (each session opens its upstream websocket there).
    pub upstream: String,
    /// Recent HTTP requests that explain owner-less 6.12 events (filled by the pipeline).
    pub correlations: Arc<Correlations>,
    pub registry: Arc<Registry>,
    pub config: Config,
    /// The route table in force, for the groups file's `[models]` it carries (events about a
    /// model the caller may not use are dropped).
    pub routes: Arc<arc_swap::ArcSwap<crate::rules::RouteTable>>,
}

/// Socket settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// A session without an accepted CONNECT is closed after this.
    pub connect_timeout: Duration,
    /// Normalized origins allowed besides the guard's own host (cookie-authenticated sessions).
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For`/`-Host` are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The guard serves HTTPS: cookies it sets are `Secure`.
    pub secure_cookies: bool,
}

impl Env {
    pub fn new(
        facts: Facts,
        ledger: Ledger,
        upstream: String,
        correlations: Arc<Correlations>,
        limits: &crate::config::Limits,
        config: Config,
        routes: Arc<arc_swap::ArcSwap<crate::rules::RouteTable>>,
    ) -> Self {
        Env {
            facts,
            ledger,
            upstream,
            correlations,
            registry: Arc::new(Registry::new(
                limits.max_connections,
                limits.socket_pending_per_client,
            )),
            config,
            routes,
        }
    }

    /// Disconnect every session (shutdown).
    pub fn close_all(&self) {
        self.registry.close_all();
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer))
    }

    /// The client's address: the peer, or behind trusted proxies the last address they did not
    /// add themselves (per-address budgets must not lump every client of a proxy together, nor
    /// believe an address a client wrote).
    fn client_of(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let chain: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in chain.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// Packets per polling response: python-engineio clients refuse more (`max_decode_packets`).
const POLL_MAX_PACKETS: usize = 16;

/// What a transport request asks for.
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    jsonp: bool,
}

fn query(target: &Target) -> Query {
    let get = |k: &str| target.params.single(k).ok().flatten().map(str::to_owned);
    Query {
        eio: get("EIO"),
        transport: get("transport"),
        sid: get("sid"),
        jsonp: target.params.single("j").ok().flatten().is_some(),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(decision::full(body.into()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn bad(why: &'static str) -> Response<Body> {
    text(StatusCode::BAD_REQUEST, format!("\"{why}\""))
}

/// Serve one request on the Socket.IO mount (`peer`: the connection's remote address).
pub async fn handle(
    mut req: Request<Body>,
    target: &Target,
    env: &Arc<Env>,
    peer: IpAddr,
) -> Response<Body> {
    let q = query(target);
    if q.eio.as_deref() != Some("4") {
        return bad(
            "The client is using an unsupported version of the Socket.IO or Engine.IO protocols",
        );
    }
    if q.jsonp {
        // JSONP polling lets a third-party page read the stream (refused).
        return bad("JSONP polling is not supported");
    }
    let timing = Timing::default();
    let foreign_origin = origin::is_foreign(
        req.headers(),
        req.uri().authority().map(|a| a.as_str()),
        &env.config.allowed_origins,
        env.trusts(peer),
    );
    let identity = match transport_identity(req.headers(), &env.facts).await {
        Ok(identity) => identity,
        // A credential that cannot be checked binds nothing and admits nothing (fail closed).
        Err(_) => return unavailable(),
    };
    let proof = crate::http::cookies::get(req.headers(), session::SESSION_PROOF_COOKIE)
        .ok()
        .flatten();
    let existing = match q.sid.as_deref() {
        None => None,
        Some(sid) => match env.registry.get(sid) {
            None => return bad("Invalid session"),
            Some(session) => {
                if let Err(why) =
                    session.admit_request(identity.as_deref(), proof.as_deref(), foreign_origin)
                {
                    crate::metrics::socket_refused(why);
                    tracing::info!(target: "invoke_guard::socket", session = %session.tag, why, "socket transport request refused");
                    return text(StatusCode::FORBIDDEN, "\"Not authorized for this session\"");
                }
                Some(session)
            }
        },
    };
    let new_session = |req: &Request<Body>| {
        session::start(
            env.clone(),
            Handshake {
                headers: handshake_headers(req.headers()),
                upstream_path: target.path.clone(),
                client: env.client_of(req.headers(), peer),
                identity: identity.clone(),
                foreign_origin,
            },
            timing.clone(),
        )
    };
    match (req.method().clone(), q.transport.as_deref(), existing) {
        (Method::GET, Some("websocket"), existing) => {
            let Some(key) = websocket_key(&req) else {
                return bad("Not a websocket upgrade");
            };
            let socket = match existing {
                Some(session) => Socket::Upgrading(session),
                None => match new_session(&req) {
                    Ok(session) => Socket::New(session),
                    Err(registry::Full) => return too_many_sessions(),
                },
            };
            upgrade(&mut req, key, socket, timing)
        }
        (Method::GET, Some("polling"), None) => match new_session(&req) {
            Ok(session) => polling_open(&session, target, env, &timing),
            Err(registry::Full) => too_many_sessions(),
        },
        (Method::GET, Some("polling"), Some(session)) => poll(session, &timing).await,
        (Method::POST, Some("polling"), Some(session)) => post(req, session, &timing).await,
        _ => bad("Bad request"),
    }
}

/// Every slot for identified callers is taken (anonymous handshakes never get here).
fn too_many_sessions() -> Response<Body> {
    let mut res = text(StatusCode::SERVICE_UNAVAILABLE, "\"Too many sessions\"");
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    res
}

fn unavailable() -> Response<Body> {
    let mut res = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "\"Authorization data temporarily unavailable\"",
    );
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    res
}

/// The user of a transport request's credential (Bearer, else the session cookie) when it
/// verifies; `None` when it presents none, or one that does not verify (such a request counts as
/// presenting none: it cannot stand for anyone).
async fn transport_identity(
    headers: &HeaderMap,
    facts: &Facts,
) -> Result<Option<String>, crate::facts::FactsError> {
    let Ok(Some((token, _))) = crate::identity::presented_token(headers, true) else {
        return Ok(None);
    };
    let secret = facts.jwt_secret().await?;
    Ok(crate::identity::verify_shared(&token, &secret)
        .ok()
        .and_then(|v| (!v.user_id.is_empty()).then(|| v.user_id.to_string())))
}

/// The handshake's credentials, kept for the first CONNECT (nothing else of it is needed).
fn handshake_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [AUTHORIZATION, COOKIE] {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// A long-polling GET: everything queued, waiting until something is.
async fn poll(session: Arc<Session>, timing: &Timing) -> Response<Body> {
    if session.get_active.swap(true, Ordering::AcqRel) {
        // Two GETs at once: python-engineio closes the session.
        let _ = session.inbox.try_send(Inbound::Closed);
        return bad("Concurrent poll");
    }
    let deadline = tokio::time::Instant::now() + timing.ping_interval + timing.ping_timeout;
    let body = loop {
        let notified = session.notify.notified();
        let packets = session.drain_some(POLL_MAX_PACKETS, timing.max_payload);
        if !packets.is_empty() {
            break engineio::encode_payload(&packets);
        }
        if session.upgraded.load(Ordering::Acquire) {
            break "6".to_owned();
        }
        if session.is_closed() {
            break "1".to_owned();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break "6".to_owned();
        }
    };
    session.get_active.store(false, Ordering::Release);
    text(StatusCode::OK, body)
}

/// The polling handshake's answer: the Engine.IO open packet, and the session's proof cookie for
/// clients that send their credential on the handshake only (python-engineio keeps cookies,
/// browsers too); scoped to the socket's path.
fn polling_open(session: &Session, target: &Target, env: &Env, timing: &Timing) -> Response<Body> {
    let mut res = text(
        StatusCode::OK,
        engineio::open_packet(&session.sid, true, timing),
    );
    let cookie = format!(
        "{}={}; Path={}/; HttpOnly; SameSite=Strict{}",
        session::SESSION_PROOF_COOKIE,
        session.secret,
        target.path.trim_end_matches('/'),
        if env.config.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    res
}

/// A polling POST: the client's packets into the session.
async fn post(req: Request<Body>, session: Arc<Session>, timing: &Timing) -> Response<Body> {
    if session.post_active.swap(true, Ordering::AcqRel) {
        let _ = session.inbox.try_send(Inbound::Closed);
        return bad("Concurrent post");
    }
    let body = crate::http::body::read_bounded(req.into_body(), timing.max_payload).await;
    let result = match body {
        Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "\"Payload too large\""),
        Ok(bytes) => {
            match std::str::from_utf8(&bytes) {
                Err(_) => bad("Payload is not UTF-8"),
                Ok(body) if connects_in(body) > 1 => {
                    // CONNECT/DISCONNECT amplification: one payload, many upstream sockets.
                    crate::metrics::socket_refused("connect payload");
                    bad("More than one CONNECT in a payload")
                }
                Ok(body) => {
                    for packet in body.split(engineio::SEPARATOR) {
                        let inbound = if packet.starts_with('b') {
                            Inbound::Binary
                        } else {
                            Inbound::Packet(packet.to_owned())
                        };
                        if session.inbox.send(inbound).await.is_err() {
                            break;
                        }
                    }
                    text(StatusCode::OK, "ok")
                }
            }
        }
    };
    session.post_active.store(false, Ordering::Release);
    result
}

/// Socket.IO CONNECT packets (any namespace) in a polling payload.
fn connects_in(body: &str) -> usize {
    body.split(engineio::SEPARATOR)
        .filter(|p| p.starts_with("40"))
        .count()
}

/// The `Sec-WebSocket-Key` of a websocket upgrade request (`None`: not one).
fn websocket_key(req: &Request<Body>) -> Option<HeaderValue> {
    let upgrading = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrading
        .then(|| req.headers().get(SEC_WEBSOCKET_KEY).cloned())
        .flatten()
}

/// What an upgraded connection carries.
enum Socket {
    /// A session opened by this upgrade (websocket-only clients).
    New(Arc<Session>),
    /// A polling session moving to the websocket.
    Upgrading(Arc<Session>),
}

/// Answer a websocket upgrade (`101`), then run the socket on the upgraded connection.
fn upgrade(
    req: &mut Request<Body>,
    key: HeaderValue,
    socket: Socket,
    timing: Timing,
) -> Response<Body> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "socket upgrade did not complete");
                if let Socket::New(session) = socket {
                    session.evict();
                }
                return;
            }
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(timing.max_payload);
        config.max_frame_size = Some(timing.max_payload);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match socket {
            Socket::Upgrading(session) => upgrade_session(ws, session).await,
            Socket::New(session) => {
                let mut ws = ws;
                let open = engineio::open_packet(&session.sid, false, &timing);
                if ws.send(Message::text(open)).await.is_ok() {
                    pump(ws, session).await;
                } else {
                    session.evict();
                }
            }
        }
    });
    let mut res = Response::new(decision::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Polling → websocket: `2probe`/`3probe`, then `5`; pending GETs get a noop.
async fn upgrade_session(
    mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    session: Arc<Session>,
) {
    let probe = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            match t.as_str() {
                "2probe" => {
                    ws.send(Message::text("3probe")).await.ok()?;
                    session.upgraded.store(true, Ordering::Release);
                    session.notify.notify_waiters();
                }
                "5" => return Some(()),
                _ => return None,
            }
        }
        None
    })
    .await;
    if !matches!(probe, Ok(Some(()))) {
        session.upgraded.store(false, Ordering::Release);
        return;
    }
    pump(ws, session).await;
}

/// The websocket transport: client frames into the session, the session's outbox out.
async fn pump<S>(ws: WebSocketStream<S>, session: Arc<Session>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _open = crate::metrics::UpgradedConnection::open();
    let (mut sink, mut stream) = ws.split();
    loop {
        let notified = session.notify.notified();
        for packet in session.drain() {
            if sink.send(Message::text(packet)).await.is_err() {
                let _ = session.inbox.send(Inbound::Closed).await;
                return;
            }
        }
        if session.is_closed() {
            let _ = sink.close().await;
            return;
        }
        tokio::select! {
            () = notified => {}
            frame = stream.next() => {
                let inbound = match frame {
                    Some(Ok(Message::Text(t))) => Inbound::Packet(t.to_string()),
                    Some(Ok(Message::Binary(_))) => Inbound::Binary,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Inbound::Closed,
                };
                let closed = matches!(inbound, Inbound::Closed);
                if session.inbox.send(inbound).await.is_err() || closed {
                    return;
                }
            }
        }
    }
}
