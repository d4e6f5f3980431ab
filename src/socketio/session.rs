//! One Engine.IO session: the guard is the Engine.IO server to the client (its own sid and
//! pings, either transport) and a websocket-only Socket.IO client to the upstream, one upstream
//! connection per client session, opened only after the client's CONNECT was authenticated.
//!
//! Invariants:
//! - Nothing reaches the upstream before CONNECT is authenticated exactly like an HTTP request
//!   (token from `auth.token`, else the handshake's Bearer header, else the guard's session cookie;
//!   row, active, not system, epoch, `is_admin` from the row); a refused CONNECT gets
//!   `44{"message":"Connection rejected by server"}` and no upstream connection.
//! - The upstream CONNECT is rewritten to the validated caller's token.
//! - Client packets pass `rooms::client_packet`; upstream events pass `events::decide`; frame
//!   order is kept (one actor, one upstream reader, facts resolved inline).
//! - The caller is re-checked on every facts generation change and at token expiry: a revoked
//!   socket gets `41` and is closed; a demoted admin stops getting admin deliveries at once.
//! - The outbox is bounded: a client that does not read is disconnected (counted), never buffered
//!   without limit.
//! - The sid is not a credential on its own: a session is bound to the user of the first verified
//!   transport credential it sees (normally the handshake's Bearer or session cookie); every later
//!   transport request of a bound session must present that user's credential or the session's
//!   own secret cookie ([`SESSION_PROOF_COOKIE`], set on the polling handshake: python-engineio
//!   sends custom headers on the handshake and the upgrade only, but keeps cookies), and one
//!   presenting another user's credential is refused even on an unbound session whose CONNECT
//!   named someone else ([`Session::admit_request`]).
//! - Only the session's first CONNECT may fall back to the handshake's credentials; a re-CONNECT
//!   after a DISCONNECT authenticates from its own `auth.token` only.
//! - A CONNECT authenticated only by the session cookie is refused when any transport request of
//!   the session carried a foreign `Origin` (see [`super::origin`]).
//! - At most one upstream socket is open per session, and a session opens at most
//!   [`CONNECT_BURST`] of them plus one per [`CONNECT_REFILL`] (CONNECT/DISCONNECT amplification).
//! - A session without an accepted CONNECT (from the start, or since its last DISCONNECT) is
//!   closed after `limits.socket_connect_timeout_ms`.
//! - Logs name a session by [`Session::tag`] (a hash), never by its sid.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::engineio::{self, Timing};
use super::events::{self, Known, Me, Need};
use super::packet::{self, Kind};
use super::registry::{Full, Registration};
use super::{rooms, Env};
use crate::facts::ledger::Entry;
use crate::identity::{self, Principal, TokenSource};

/// Most packets, and bytes, waiting for a client that does not read.
const OUTBOX_PACKETS: usize = 2048;
const OUTBOX_BYTES: usize = 8 * 1024 * 1024;
/// Bound on the upstream handshake (Engine.IO open + Socket.IO CONNECT ack).
const UPSTREAM_HANDSHAKE: Duration = Duration::from_secs(10);

const REJECTED: &str = "44{\"message\":\"Connection rejected by server\"}";

/// CONNECTs a session may make at once, and how often it earns another (each accepted one opens
/// an upstream websocket; legitimate clients CONNECT once per session).
pub const CONNECT_BURST: u32 = 3;
pub const CONNECT_REFILL: Duration = Duration::from_secs(10);

/// What a transport hands the session.
#[derive(Debug)]
pub enum Inbound {
    /// An Engine.IO text packet.
    Packet(String),
    /// A binary frame or `b…` packet (never allowed).
    Binary,
    /// The client's transport went away.
    Closed,
}

/// The session's shared half: transports push into `inbox` and drain `outbox`.
pub struct Session {
    pub sid: String,
    pub inbox: mpsc::Sender<Inbound>,
    outbox: Mutex<Outbox>,
    pub notify: Notify,
    closed: AtomicBool,
    /// The client has moved to the websocket (polling GETs get a noop and stop).
    pub upgraded: AtomicBool,
    /// A polling GET or POST is in flight (a second one is a protocol error).
    pub get_active: AtomicBool,
    pub post_active: AtomicBool,
    /// A short hash of the sid: what logs show (the sid is a polling session's credential).
    pub tag: String,
    /// The session's secret: the value of [`SESSION_PROOF_COOKIE`] its client was given.
    pub secret: String,
    /// The user a verified transport credential bound the session to.
    bound: Mutex<Option<String>>,
    /// The user of the accepted CONNECT, while connected.
    caller: Mutex<Option<String>>,
    /// A transport request of the session carried a foreign `Origin`.
    foreign_origin: AtomicBool,
}

/// Why a transport request was refused (a metric label).
pub type Refusal = &'static str;

/// The cookie that carries a session's secret (`Path=/ws/socket.io/`, HttpOnly, SameSite=Strict).
pub const SESSION_PROOF_COOKIE: &str = "invoke_guard_sio";

#[derive(Default)]
struct Outbox {
    packets: VecDeque<String>,
    bytes: usize,
}

impl Session {
    fn new(inbox: mpsc::Sender<Inbound>, bound: Option<String>, foreign_origin: bool) -> Self {
        let sid = new_sid();
        Session {
            tag: tag_of(&sid),
            sid,
            secret: new_sid(),
            inbox,
            outbox: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            get_active: AtomicBool::new(false),
            post_active: AtomicBool::new(false),
            bound: Mutex::new(bound),
            caller: Mutex::new(None),
            foreign_origin: AtomicBool::new(foreign_origin),
        }
    }

    /// A session with no actor behind it (unit tests of the registry and the binding).
    #[cfg(test)]
    pub(crate) fn detached(bound: Option<&str>) -> Arc<Self> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(Session::new(tx, bound.map(str::to_owned), false))
    }

    /// Queue a packet for the client; false when the client is too slow (the session closes).
    fn push(&self, packet: String) -> bool {
        let mut out = self.outbox.lock().expect("outbox lock");
        if out.packets.len() >= OUTBOX_PACKETS || out.bytes + packet.len() > OUTBOX_BYTES {
            return false;
        }
        out.bytes += packet.len();
        out.packets.push_back(packet);
        drop(out);
        self.notify.notify_waiters();
        true
    }

    /// Take everything queued.
    pub fn drain(&self) -> Vec<String> {
        let mut out = self.outbox.lock().expect("outbox lock");
        out.bytes = 0;
        out.packets.drain(..).collect()
    }

    /// Take at most `max` packets (and roughly `max_bytes`) for one polling response; the rest
    /// waits for the next GET. python-engineio clients refuse a payload of more than 16 packets.
    pub fn drain_some(&self, max: usize, max_bytes: usize) -> Vec<String> {
        let mut out = self.outbox.lock().expect("outbox lock");
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < max {
            let Some(next) = out.packets.front() else {
                break;
            };
            if !taken.is_empty() && bytes + next.len() > max_bytes {
                break;
            }
            let p = out.packets.pop_front().expect("front exists");
            bytes += p.len();
            out.bytes = out.bytes.saturating_sub(p.len());
            taken.push(p);
        }
        taken
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Disconnect the client (`41`, then close) and end the session (shutdown).
    pub fn shut_down(&self) {
        self.push("41".into());
        let _ = self.inbox.try_send(Inbound::Closed);
        self.close();
    }

    /// End a session that never CONNECTed (closed to make room for another).
    pub fn evict(&self) {
        let _ = self.inbox.try_send(Inbound::Closed);
        self.close();
    }

    /// Check one transport request (polling GET/POST, websocket upgrade) of this session:
    /// `identity` is the user of the request's verified credential, if it presents one, and
    /// `proof` the value of its [`SESSION_PROOF_COOKIE`].
    pub fn admit_request(
        &self,
        identity: Option<&str>,
        proof: Option<&str>,
        foreign_origin: bool,
    ) -> Result<(), Refusal> {
        if foreign_origin {
            self.foreign_origin.store(true, Ordering::Release);
        }
        let proven = proof.is_some_and(|p| same_secret(p, &self.secret));
        let mut bound = self.bound.lock().expect("session binding lock");
        // Session-id replay: the sid alone does not stand for the caller it was opened by.
        match (bound.as_deref(), identity) {
            (Some(b), Some(u)) if b == u => Ok(()),
            (Some(_), Some(_)) => Err("session of another caller"),
            (Some(_), None) if proven => Ok(()),
            (Some(_), None) => Err("session credential missing"),
            (None, None) => Ok(()),
            (None, Some(u)) => {
                let caller = self.caller.lock().expect("session caller lock");
                if caller.as_deref().is_some_and(|c| c != u) {
                    return Err("session of another caller");
                }
                *bound = Some(u.to_owned());
                Ok(())
            }
        }
    }

    fn set_caller(&self, user_id: Option<&str>) {
        *self.caller.lock().expect("session caller lock") = user_id.map(str::to_owned);
    }
}

/// What a transport request that opens a session brings to it.
pub struct Handshake {
    /// `Authorization` and `Cookie` of the request (the first CONNECT's fallback).
    pub headers: HeaderMap,
    pub upstream_path: String,
    pub client: IpAddr,
    /// The user of its verified transport credential, if any (binds the session).
    pub identity: Option<String>,
    pub foreign_origin: bool,
}

/// Start a session; returns its shared half (the actor runs until the session ends), or
/// [`Full`] when its caller is known and every counted slot is taken.
pub fn start(env: Arc<Env>, handshake: Handshake, timing: Timing) -> Result<Arc<Session>, Full> {
    let (tx, rx) = mpsc::channel(64);
    let session = Arc::new(Session::new(
        tx,
        handshake.identity.clone(),
        handshake.foreign_origin,
    ));
    let registration = env.registry.admit(
        session.clone(),
        handshake.client,
        handshake.identity.is_some(),
    )?;
    crate::metrics::socket_opened();
    let actor = Actor {
        session: session.clone(),
        connect_deadline: tokio::time::Instant::now() + env.config.connect_timeout,
        env,
        _registration: registration,
        handshake: Some(handshake.headers),
        upstream_path: handshake.upstream_path,
        timing,
        caller: None,
        upstream: None,
        subscribed: false,
        running: None,
        connects: ConnectBudget::new(Instant::now()),
    };
    tokio::spawn(actor.run(rx));
    Ok(session)
}

/// Compare a presented secret with the session's in constant time (length aside).
fn same_secret(presented: &str, secret: &str) -> bool {
    presented.len() == secret.len()
        && presented
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A short, stable name for a session in logs: the first 12 hex digits of SHA-256(sid).
pub fn tag_of(sid: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sid.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A session's CONNECT allowance: [`CONNECT_BURST`] at once, one more per [`CONNECT_REFILL`].
#[derive(Debug, Clone, Copy)]
struct ConnectBudget {
    tokens: u32,
    since: Instant,
}

impl ConnectBudget {
    fn new(now: Instant) -> Self {
        ConnectBudget {
            tokens: CONNECT_BURST,
            since: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let periods = now.duration_since(self.since).as_nanos() / CONNECT_REFILL.as_nanos();
        if periods > 0 {
            let earned = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(CONNECT_BURST);
            self.since = if self.tokens == CONNECT_BURST {
                now
            } else {
                self.since + CONNECT_REFILL * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A random session id: a polling session's only credential, so it must be unguessable.
fn new_sid() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

type UpstreamWs = WebSocketStream<TcpStream>;

/// The identified caller of a connected socket.
struct Caller {
    principal: Principal,
    /// The token the client authenticated with (re-checked on every change).
    token: String,
}

struct Actor {
    session: Arc<Session>,
    env: Arc<Env>,
    /// Removes the session from the registry when the actor ends.
    _registration: Registration,
    /// Authorization and Cookie of the Engine.IO handshake request, until the first CONNECT.
    handshake: Option<HeaderMap>,
    upstream_path: String,
    timing: Timing,
    caller: Option<Caller>,
    upstream: Option<UpstreamWs>,
    subscribed: bool,
    /// The item this session's upstream stream last reported in progress, and its owner
    /// (6.12/6.13 run one item at a time; model loads in between belong to it).
    running: Option<(i64, String)>,
    connects: ConnectBudget,
    /// While no caller is connected: when the session is closed for want of a CONNECT.
    connect_deadline: tokio::time::Instant,
}

/// Why a session ended (a metric label).
type Ending = &'static str;

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>) {
        let mut changes = self.env.facts.changes();
        let mut ping = tokio::time::interval(self.timing.ping_interval);
        ping.tick().await;
        let mut last_pong = Instant::now();
        let ending: Ending = loop {
            let expiry = self
                .caller
                .as_ref()
                .map(|c| c.principal.remaining_secs())
                .unwrap_or(u64::MAX / 4);
            tokio::select! {
                inbound = inbox.recv() => match inbound {
                    None | Some(Inbound::Closed) => break "client closed",
                    Some(Inbound::Binary) => {
                        crate::metrics::socket_frame("client", "binary", "dropped");
                    }
                    Some(Inbound::Packet(text)) => {
                        if text.starts_with('3') {
                            last_pong = Instant::now();
                            continue;
                        }
                        if let Err(why) = self.on_client_packet(&text).await {
                            break why;
                        }
                    }
                },
                frame = next_frame(&mut self.upstream) => {
                    if let Err(why) = self.on_upstream_frame(frame).await {
                        break why;
                    }
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > self.timing.ping_interval + self.timing.ping_timeout {
                        break "ping timeout";
                    }
                    if !self.session.push("2".into()) {
                        break "slow client";
                    }
                }
                changed = changes.changed(), if self.caller.is_some() => {
                    if changed.is_err() {
                        break "shutdown";
                    }
                    if let Err(why) = self.recheck().await {
                        break why;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(expiry)), if self.caller.is_some() => {
                    self.revoke("token expired");
                    break "token expired";
                }
                // Session-cap starvation: a session nobody authenticates does not linger.
                () = tokio::time::sleep_until(self.connect_deadline), if self.caller.is_none() => {
                    break "no CONNECT";
                }
            }
            if self.session.is_closed() {
                break "closed";
            }
        };
        tracing::info!(
            target: "invoke_guard::socket",
            session = %self.session.tag,
            user_id = self.caller.as_ref().map(|c| c.principal.user_id.as_str()).unwrap_or("-"),
            ending,
            "socket closed"
        );
        if let Some(mut up) = self.upstream.take() {
            let _ = up.close(None).await;
        }
        crate::metrics::socket_closed(ending);
        self.session.push("1".into());
        self.session.close();
        // (dropping the actor drops its registration: the sid is then unknown)
    }

    /// One Engine.IO packet from the client.
    async fn on_client_packet(&mut self, text: &str) -> Result<(), Ending> {
        let packet = engineio::decode(text).map_err(|_| "malformed client packet")?;
        let message = match packet {
            engineio::Packet::Message(m) => m,
            engineio::Packet::Close => return Err("client closed"),
            // Pings are the server's; upgrades and noops belong to the transports.
            engineio::Packet::Ping(_)
            | engineio::Packet::Pong(_)
            | engineio::Packet::Upgrade
            | engineio::Packet::Noop => return Ok(()),
            engineio::Packet::Open(_) => return Err("malformed client packet"),
            engineio::Packet::Binary(_) => {
                crate::metrics::socket_frame("client", "binary", "dropped");
                return Ok(());
            }
        };
        let sio = packet::decode(message).map_err(|_| "malformed client packet")?;
        match sio.kind {
            Kind::Connect if sio.nsp != "/" => {
                self.reply(format!("44{},\"Unable to connect\"", sio.nsp))
            }
            // One CONNECT per session (re-authenticate after a DISCONNECT).
            Kind::Connect if self.caller.is_some() => {
                crate::metrics::socket_frame("client", "connect", "dropped");
                Ok(())
            }
            Kind::Connect => self.connect(sio.data).await,
            Kind::Disconnect if sio.nsp == "/" => {
                self.send_upstream("41").await;
                self.disconnect_upstream().await;
                Ok(())
            }
            _ => {
                let action = rooms::client_packet(&sio);
                if let Some(why) = action.dropped {
                    crate::metrics::socket_frame("client", why, "dropped");
                }
                if let Some(reply) = action.reply {
                    self.reply(format!("4{reply}"))?;
                }
                if self.caller.is_none() {
                    return Ok(());
                }
                if let Some(s) = action.subscribed {
                    self.subscribed = s;
                }
                if let Some(up) = action.upstream {
                    self.send_upstream(&format!("4{up}")).await;
                }
                Ok(())
            }
        }
    }

    fn reply(&self, packet: String) -> Result<(), Ending> {
        if self.session.push(packet) {
            Ok(())
        } else {
            Err("slow client")
        }
    }

    /// Authenticate a CONNECT and open the upstream socket as that caller.
    async fn connect(&mut self, data: &str) -> Result<(), Ending> {
        // CONNECT/DISCONNECT amplification: each accepted CONNECT opens an upstream websocket.
        if !self.connects.take(Instant::now()) {
            crate::metrics::socket_refused("connect budget");
            return self.reject("too many CONNECTs");
        }
        let auth_token = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
            .filter(|t| !t.is_empty());
        // Stored-credential replay: only the first CONNECT may fall back to the handshake's
        // credentials; after a DISCONNECT the packet must carry its own `auth.token`.
        let mut headers = self.handshake.take().unwrap_or_default();
        if let Some(token) = &auth_token {
            // The server's precedence: `auth.token` first; an invalid one never falls back.
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(v) => {
                    headers.insert(AUTHORIZATION, v);
                }
                Err(_) => return self.reject("malformed token"),
            }
        }
        let principal = match self.identify(&headers).await {
            Ok(p) => p,
            Err(why) => return self.reject(why),
        };
        // Cross-site websocket hijacking: a browser attaches the cookie for any site's page.
        if principal.via == TokenSource::Cookie
            && self.session.foreign_origin.load(Ordering::Acquire)
        {
            crate::metrics::socket_refused("foreign origin");
            return self.reject("cookie CONNECT from a foreign Origin");
        }
        if !self.env.registry.promote(&self.session.sid) {
            crate::metrics::socket_refused("session cap");
            return self.reject("too many sessions");
        }
        let token = principal.token.clone();
        match self.open_upstream(&principal).await {
            Ok((mut ws, ack)) if ack.starts_with("44") => {
                // The upstream refused the caller the guard accepted: pass the refusal on.
                let _ = ws.close(None).await;
                self.reply(ack)
            }
            Ok((ws, ack)) => {
                self.upstream = Some(ws);
                tracing::info!(
                    target: "invoke_guard::socket",
                    session = %self.session.tag,
                    user_id = %principal.user_id,
                    is_admin = principal.is_admin,
                    "socket connected"
                );
                self.session.set_caller(Some(&principal.user_id));
                self.caller = Some(Caller { principal, token });
                self.reply(ack)
            }
            Err(e) => {
                tracing::warn!(session = %self.session.tag, error = %e, "upstream socket failed");
                self.reply(REJECTED.into())
            }
        }
    }

    fn reject(&self, why: &'static str) -> Result<(), Ending> {
        tracing::info!(target: "invoke_guard::socket", session = %self.session.tag, why, "socket CONNECT rejected");
        crate::metrics::socket_frame("client", "connect", "rejected");
        self.reply(REJECTED.into())
    }

    async fn identify(&self, headers: &HeaderMap) -> Result<Principal, &'static str> {
        let secret = self
            .env
            .facts
            .jwt_secret()
            .await
            .map_err(|_| "facts unavailable")?;
        identity::identify_with(headers, true, &secret, &self.env.facts, &self.env.ledger)
            .await
            .map_err(|_| "identity refused")
    }

    /// Re-check the caller after a database change: revoked → `41` and close; demoted → at once.
    async fn recheck(&mut self) -> Result<(), Ending> {
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", caller.token)) {
            headers.insert(AUTHORIZATION, v);
        }
        let secret = match self.env.facts.jwt_secret().await {
            Ok(s) => s,
            // Facts unreadable: fail closed.
            Err(_) => {
                self.revoke("facts unavailable");
                return Err("facts unavailable");
            }
        };
        match identity::identify_with(&headers, false, &secret, &self.env.facts, &self.env.ledger)
            .await
        {
            Ok(p) => {
                if let Some(c) = self.caller.as_mut() {
                    if c.principal.is_admin != p.is_admin {
                        tracing::info!(target: "invoke_guard::socket", session = %self.session.tag, user_id = %p.user_id, is_admin = p.is_admin, "socket caller's role changed");
                    }
                    c.principal.is_admin = p.is_admin;
                }
                Ok(())
            }
            Err(_) => {
                self.revoke("revoked");
                Err("revoked")
            }
        }
    }

    fn revoke(&self, why: &'static str) {
        tracing::info!(target: "invoke_guard::socket", session = %self.session.tag, why, "socket revoked");
        self.session.push("41".into());
    }

    async fn open_upstream(&self, principal: &Principal) -> anyhow::Result<(UpstreamWs, String)> {
        let secret = self.env.facts.jwt_secret().await?;
        let token = principal.upstream_token(&secret);
        let authority = self.env.upstream.clone();
        let uri = format!(
            "ws://{authority}{}?EIO=4&transport=websocket",
            self.upstream_path
        );
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(uri)?;
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(&authority)?);
        let handshake = async {
            let tcp = TcpStream::connect(&authority).await?;
            let _ = tcp.set_nodelay(true);
            let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
            // Engine.IO open, then our CONNECT with the validated token, then the ack.
            let connect = format!("40{}", serde_json::json!({ "token": token }));
            let mut sent = false;
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                match text.as_bytes().first() {
                    Some(b'0') if !sent => {
                        ws.send(Message::text(connect.clone())).await?;
                        sent = true;
                    }
                    Some(b'2') => ws.send(Message::text("3")).await?,
                    Some(b'4') if sent && (text.starts_with("40") || text.starts_with("44")) => {
                        return anyhow::Ok((ws, text.to_string()));
                    }
                    _ => {}
                }
            }
            anyhow::bail!("upstream closed during the handshake")
        };
        tokio::time::timeout(UPSTREAM_HANDSHAKE, handshake)
            .await
            .map_err(|_| anyhow::anyhow!("upstream socket handshake timed out"))?
    }

    async fn send_upstream(&mut self, text: &str) {
        if let Some(up) = self.upstream.as_mut() {
            if up.send(Message::text(text.to_owned())).await.is_err() {
                self.upstream = None;
            }
        }
    }

    async fn disconnect_upstream(&mut self) {
        if let Some(mut up) = self.upstream.take() {
            let _ = up.close(None).await;
        }
        self.lose_caller();
    }

    /// The socket is no longer connected: a new CONNECT is due within the connect timeout.
    /// True when a caller was connected.
    fn lose_caller(&mut self) -> bool {
        let had = self.caller.take().is_some();
        self.subscribed = false;
        self.session.set_caller(None);
        self.connect_deadline = tokio::time::Instant::now() + self.env.config.connect_timeout;
        had
    }

    /// One upstream frame (`None`: the upstream socket ended).
    async fn on_upstream_frame(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), Ending> {
        let text = match frame {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(_))) => {
                crate::metrics::socket_frame("upstream", "binary", "dropped");
                return Ok(());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                // The upstream socket is gone: the client's socket is disconnected.
                self.upstream = None;
                if self.lose_caller() {
                    self.reply("41".into())?;
                }
                return Ok(());
            }
        };
        match engineio::decode(&text) {
            Ok(engineio::Packet::Ping(_)) => {
                self.send_upstream("3").await;
                Ok(())
            }
            Ok(engineio::Packet::Message(m)) => self.upstream_message(&text, m).await,
            Ok(engineio::Packet::Close) => {
                self.upstream = None;
                if self.lose_caller() {
                    self.reply("41".into())?;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => {
                crate::metrics::socket_frame("upstream", "malformed", "dropped");
                Ok(())
            }
        }
    }

    async fn upstream_message(&mut self, frame: &str, message: &str) -> Result<(), Ending> {
        let Ok(sio) = packet::decode(message) else {
            crate::metrics::socket_frame("upstream", "malformed", "dropped");
            return Ok(());
        };
        if sio.nsp != "/" {
            crate::metrics::socket_frame("upstream", "other namespace", "dropped");
            return Ok(());
        }
        match sio.kind {
            Kind::Event => {}
            Kind::Disconnect => {
                // The upstream dropped the socket (main's own revocation): pass it on.
                self.disconnect_upstream().await;
                return self.reply("41".into());
            }
            Kind::ConnectError | Kind::Connect => return self.reply(frame.to_owned()),
            Kind::Ack | Kind::BinaryEvent | Kind::BinaryAck => {
                crate::metrics::socket_frame("upstream", "ack or binary", "dropped");
                return Ok(());
            }
        }
        let Some(event) = events::parse(sio.data) else {
            tracing::warn!(target: "invoke_guard::socket", "unparseable upstream event dropped");
            crate::metrics::socket_frame("upstream", "unparseable", "dropped");
            return Ok(());
        };
        if event.name == "queue_item_status_changed" {
            self.track_running(&event);
        }
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        let me = Me {
            user_id: &caller.principal.user_id,
            is_admin: caller.principal.is_admin,
            subscribed: self.subscribed,
        };
        let known = match self.resolve(events::need(&event, &me)).await {
            Ok(k) => k,
            Err(()) => {
                crate::metrics::socket_frame("upstream", metric_name(&event.name), "dropped");
                return Ok(());
            }
        };
        let action = events::decide(&event, &me, &known);
        // [models] Nothing about a model the caller may not use reaches her (policy::models).
        let action = match action {
            events::Action::Pass | events::Action::Redact(_)
                if !self.models_allowed(&event, &caller.principal).await =>
            {
                events::Action::Drop("restricted model")
            }
            other => other,
        };
        let name = metric_name(&event.name);
        match action {
            events::Action::Pass => {
                crate::metrics::socket_frame("upstream", name, "passed");
                self.reply(frame.to_owned())
            }
            events::Action::Redact(payload) => {
                crate::metrics::socket_frame("upstream", name, "redacted");
                // Serialized straight from the map (no detour through a new `Value`).
                let data = serde_json::to_string(&(&event.name, &payload))
                    .map_err(|_| "unserializable event")?;
                self.reply(format!("42{data}"))
            }
            events::Action::Drop(why) => {
                if why == "unknown event" {
                    tracing::warn!(target: "invoke_guard::socket", event = %event.name, "unknown upstream event dropped");
                }
                crate::metrics::socket_frame("upstream", name, "dropped");
                Ok(())
            }
        }
    }

    /// [models] Whether the event names only models the caller may use (groups file `[models]`).
    async fn models_allowed(&self, event: &events::Event, me: &crate::identity::Principal) -> bool {
        let table = self.env.routes.load();
        crate::policy::models::event_allowed(&event.payload, me, table.access(), &self.env.facts)
            .await
    }

    /// Follow the running item from the upstream's status events (before any filtering).
    fn track_running(&mut self, event: &events::Event) {
        let p = &event.payload;
        let (Some(item), Some(status)) = (
            p.get("item_id").and_then(Value::as_i64),
            p.get("status").and_then(Value::as_str),
        ) else {
            return;
        };
        match (status, p.get("user_id").and_then(Value::as_str)) {
            ("in_progress", Some(owner)) if owner != "redacted" => {
                self.running = Some((item, owner.to_owned()));
            }
            ("in_progress", _) => self.running = None,
            _ if self.running.as_ref().is_some_and(|(i, _)| *i == item) => self.running = None,
            _ => {}
        }
    }

    /// Resolve what an event needs; an unreadable fact drops the event (fail closed).
    async fn resolve(&self, need: Need) -> Result<Known, ()> {
        let facts = &self.env.facts;
        Ok(match need {
            Need::Nothing => Known::Nothing,
            Need::BatchOwner(b) => Known::Owner(facts.batch_owner(&b).await.map_err(|_| ())?),
            Need::ItemOwner(id) => {
                Known::Owner(facts.queue_item(id).await.map_err(|_| ())?.map(|i| i.owner))
            }
            // The stream itself says whose item is running (its status events come before and
            // after the model loads); the database is the fallback when this session saw none.
            Need::InProgressOwners => match &self.running {
                Some((_, owner)) => Known::Owners(vec![owner.clone()]),
                None => Known::Owners(facts.in_progress_owners("default").await.map_err(|_| ())?),
            },
            Need::RecallOwner => Known::Owner(self.env.correlations.recall_owner()),
            Need::BulkOwner(name) => {
                // The event can overtake the ledger record of the response that announced it:
                // wait for it (bounded) while such a request is pending (spec §4.4).
                let deadline = Instant::now() + super::correlate::BULK_HOLD;
                loop {
                    let owner = self
                        .env
                        .ledger
                        .owner(Entry::BulkDownload, &name)
                        .await
                        .map_err(|_| ())?;
                    if owner.is_some()
                        || Instant::now() >= deadline
                        || !self.env.correlations.bulk_pending()
                    {
                        break Known::Owner(owner);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    }
}

/// The next upstream frame, or never when there is no upstream socket.
async fn next_frame(
    upstream: &mut Option<UpstreamWs>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match upstream {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

/// A bounded label for an event name (known names, else "other").
fn metric_name(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "invocation_started",
        "invocation_progress",
        "invocation_complete",
        "invocation_error",
        "queue_item_status_changed",
        "batch_enqueued",
        "queue_cleared",
        "queue_items_retried",
        "queue_items_canceled",
        "recall_parameters_updated",
        "model_load_started",
        "model_load_complete",
        "bulk_download_started",
        "bulk_download_complete",
        "bulk_download_error",
        "llm_task_progress",
        "llm_task_complete",
        "llm_task_error",
        "workflow_created",
        "workflow_updated",
        "workflow_deleted",
        "workflow_access_revoked",
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == name) {
        return k;
    }
    if name.starts_with("download_") {
        "download_*"
    } else if name.starts_with("model_install_") {
        "model_install_*"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_budget_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = ConnectBudget::new(t0);
        for _ in 0..CONNECT_BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        assert!(!b.take(t0 + CONNECT_REFILL / 2));
        assert!(b.take(t0 + CONNECT_REFILL), "one earned");
        assert!(!b.take(t0 + CONNECT_REFILL));
        // A long pause refills to the burst, never beyond it.
        let later = t0 + CONNECT_REFILL * 100;
        for _ in 0..CONNECT_BURST {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }

    #[test]
    fn transport_requests_must_stand_for_the_bound_caller() {
        let s = Session::detached(Some("alice"));
        let secret = s.secret.clone();
        assert_eq!(s.admit_request(Some("alice"), None, false), Ok(()));
        assert_eq!(
            s.admit_request(None, Some(&secret), false),
            Ok(()),
            "its cookie"
        );
        assert_eq!(
            s.admit_request(None, None, false),
            Err("session credential missing")
        );
        assert_eq!(
            s.admit_request(None, Some("not-the-secret"), false),
            Err("session credential missing")
        );
        assert_eq!(
            s.admit_request(Some("bob"), Some(&secret), false),
            Err("session of another caller")
        );
        // Unbound: the first verified credential binds; a connected caller must match it.
        let s = Session::detached(None);
        s.set_caller(Some("alice"));
        assert_eq!(s.admit_request(None, None, false), Ok(()));
        assert_eq!(
            s.admit_request(Some("bob"), None, false),
            Err("session of another caller")
        );
        assert_eq!(s.admit_request(Some("alice"), None, true), Ok(()));
        assert_eq!(
            s.admit_request(None, None, false),
            Err("session credential missing")
        );
        assert!(s.foreign_origin.load(Ordering::Acquire));
    }

    #[test]
    fn tags_are_short_stable_and_do_not_contain_the_sid() {
        let sid = new_sid();
        let tag = tag_of(&sid);
        assert_eq!(tag.len(), 12);
        assert_eq!(tag, tag_of(&sid));
        assert!(!sid.contains(&tag) && !tag.contains(&sid));
        assert_ne!(tag, tag_of(&new_sid()));
    }
}
