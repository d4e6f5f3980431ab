//! Socket.IO, terminated in the guard and filtered per user (spec `invokeai-socketio.md` §4).
//!
//! - [`engineio`], [`packet`]: the Engine.IO v4 and Socket.IO v5 codecs.
//! - [`rooms`]: what a client may ask the upstream (pure).
//! - [`events`]: who receives which server event (pure).
//! - [`session`]: one client session: identity at CONNECT, one upstream websocket, the pumps.
//! - [`registry`]: live sessions by sid.
//! - [`correlate`]: 6.12 events without an owner, attributed to the HTTP request behind them.
//! - this module: the HTTP side of both transports (long-polling GET/POST, websocket, upgrade).
//!
//! Invariants:
//! - Only Engine.IO v4 is served (`EIO=3` and JSONP polling are refused with 400).
//! - The handshake request itself needs no identity (clients authenticate in CONNECT); its
//!   `Authorization` and `Cookie` are kept for the CONNECT's fallback, as the server does.
//! - Polling allows one GET and one POST in flight per session; an unknown sid is 400; a polling
//!   response carries at most 16 packets and about `maxPayload` bytes (what clients accept).
//! - At most `limits.max_connections` sessions exist at once (a handshake needs no identity, so
//!   this bounds what anyone can open); beyond that a handshake is 503. A session that never
//!   answers pings ends after `pingInterval + pingTimeout`.
//! - Websockets never negotiate compression (no permessage-deflate), and frames are limited to
//!   `maxPayload`.

pub mod correlate;
pub mod engineio;
pub mod events;
pub mod packet;
pub mod registry;
pub mod rooms;
pub mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;

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
use crate::http::canonical::Target;
use crate::state::AppState;
use engineio::Timing;
use session::{Inbound, Session};

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

/// Serve one request on the Socket.IO mount.
pub async fn handle(
    mut req: Request<Body>,
    target: &Target,
    state: &Arc<AppState>,
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
    let new_session = q.sid.is_none();
    if new_session && state.sockets.len() >= state.limits.max_connections {
        // A handshake needs no identity: cap the sessions anyone can open (each holds a task).
        let mut res = text(StatusCode::SERVICE_UNAVAILABLE, "\"Too many sessions\"");
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        return res;
    }
    match (req.method().clone(), q.transport.as_deref(), q.sid) {
        (Method::GET, Some("websocket"), sid) => {
            let existing = match &sid {
                Some(id) => match state.sockets.get(id) {
                    Some(s) => Some(s),
                    None => return bad("Invalid session"),
                },
                None => None,
            };
            upgrade(&mut req, state, target, existing, timing)
        }
        (Method::GET, Some("polling"), None) => {
            let session = session::start(
                state.clone(),
                handshake_headers(req.headers()),
                target.path.clone(),
                timing.clone(),
            );
            text(
                StatusCode::OK,
                engineio::open_packet(&session.sid, true, &timing),
            )
        }
        (Method::GET, Some("polling"), Some(sid)) => match state.sockets.get(&sid) {
            Some(session) => poll(session, &timing).await,
            None => bad("Invalid session"),
        },
        (Method::POST, Some("polling"), Some(sid)) => match state.sockets.get(&sid) {
            Some(session) => post(req, session, &timing).await,
            None => bad("Invalid session"),
        },
        _ => bad("Bad request"),
    }
}

/// The handshake's credentials, kept for CONNECT (nothing else of it is needed).
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

/// A polling POST: the client's packets into the session.
async fn post(req: Request<Body>, session: Arc<Session>, timing: &Timing) -> Response<Body> {
    if session.post_active.swap(true, Ordering::AcqRel) {
        let _ = session.inbox.try_send(Inbound::Closed);
        return bad("Concurrent post");
    }
    let body = crate::http::body::read_bounded(req.into_body(), timing.max_payload).await;
    let result = match body {
        Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "\"Payload too large\""),
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Err(_) => bad("Payload is not UTF-8"),
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
        },
    };
    session.post_active.store(false, Ordering::Release);
    result
}

/// Answer a websocket upgrade (`101`), then run the socket on the upgraded connection.
fn upgrade(
    req: &mut Request<Body>,
    state: &Arc<AppState>,
    target: &Target,
    existing: Option<Arc<Session>>,
    timing: Timing,
) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return bad("Not a websocket upgrade");
    };
    let upgrading = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrading {
        return bad("Not a websocket upgrade");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let handshake = handshake_headers(req.headers());
    let on_upgrade = hyper::upgrade::on(req);
    let state = state.clone();
    let path = target.path.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "socket upgrade did not complete");
                return;
            }
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(timing.max_payload);
        config.max_frame_size = Some(timing.max_payload);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match existing {
            Some(session) => upgrade_session(ws, session).await,
            None => {
                let session = session::start(state, handshake, path, timing.clone());
                let mut ws = ws;
                let open = engineio::open_packet(&session.sid, false, &timing);
                if ws.send(Message::text(open)).await.is_ok() {
                    pump(ws, session).await;
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
