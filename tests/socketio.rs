//! Socket.IO through the guard, against a mock Socket.IO upstream (websocket, Engine.IO v4) that
//! records what it receives and emits scripted events to every connection, over the rich 6.14.2
//! fixture. Clients speak the wire protocol as socket.io-client and python-socketio do: polling
//! first with an upgrade, websocket-only, `auth.token`, a Bearer handshake header, the cookie.

// tungstenite's handshake callback returns its large error type by design.
#![allow(clippy::result_large_err)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// What the mock upstream saw from one connection.
#[derive(Debug, Clone, Default)]
struct UpConn {
    authorization: Option<String>,
    connect: Option<String>,
    messages: Vec<String>,
}

struct MockSio {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<UpConn>>>,
    emit: broadcast::Sender<String>,
}

impl MockSio {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn conns(&self) -> Vec<UpConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Send an Engine.IO text frame to every connected upstream socket.
    fn emit(&self, event: &str, payload: Value) {
        let _ = self.emit.send(format!("42{}", json!([event, payload])));
    }
}

/// A Socket.IO server that accepts any CONNECT (the guard decides who gets here).
async fn mock_sio() -> MockSio {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns: Arc<Mutex<Vec<UpConn>>> = Arc::default();
    let (emit, _) = broadcast::channel::<String>(256);
    let (c2, e2) = (conns.clone(), emit.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // The same port answers plain HTTP (the guard's REST calls) like InvokeAI would.
            let mut head = [0u8; 4096];
            let n = tcp.peek(&mut head).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
            if !text.contains("upgrade: websocket") {
                tokio::spawn(answer_http(tcp));
                continue;
            }
            let conns = c2.clone();
            let mut rx = e2.subscribe();
            tokio::spawn(async move {
                let auth: Arc<Mutex<Option<String>>> = Arc::default();
                let auth2 = auth.clone();
                let callback =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, res| {
                        *auth2.lock().unwrap() = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned());
                        Ok(res)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                let index = {
                    let mut c = conns.lock().unwrap();
                    c.push(UpConn {
                        authorization: auth.lock().unwrap().clone(),
                        ..UpConn::default()
                    });
                    c.len() - 1
                };
                let open = r#"0{"sid":"up","upgrades":[],"pingTimeout":20000,"pingInterval":25000,"maxPayload":1000000}"#;
                if ws.send(Message::text(open)).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        msg = ws.next() => {
                            let Some(Ok(Message::Text(t))) = msg else { return };
                            let t = t.to_string();
                            if let Some(rest) = t.strip_prefix("40") {
                                conns.lock().unwrap()[index].connect = Some(rest.to_owned());
                                let _ = ws.send(Message::text(r#"40{"sid":"sio-sid"}"#)).await;
                            } else {
                                conns.lock().unwrap()[index].messages.push(t);
                            }
                        }
                        frame = rx.recv() => {
                            let Ok(frame) = frame else { return };
                            if ws.send(Message::text(frame)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    MockSio { addr, conns, emit }
}

/// A minimal InvokeAI REST answer: `{}`, or the bulk-download item name for a zip request.
async fn answer_http(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let first = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let body = if first.starts_with("POST /api/v1/images/download ") {
        r#"{"response":"ok","bulk_download_item_name":"zip-1.zip"}"#
    } else {
        "{}"
    };
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
}

struct World {
    db: DbCopy,
    up: MockSio,
    g: Guard,
    m: Value,
}

async fn world() -> World {
    world_of("6.14.2").await
}

async fn world_of(version: &str) -> World {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let up = mock_sio().await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    World {
        db,
        up,
        g,
        m: manifest(version),
    }
}

impl World {
    fn token(&self, role: &str) -> String {
        token_for(&self.m, role)
    }
    fn uid(&self, role: &str) -> String {
        self.m["users"][role]["user_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket-only client (python-socketio with `transports=["websocket"]`).
struct WsClient {
    ws: Ws,
}

impl WsClient {
    async fn open(g: &Guard, headers: &[(&str, &str)]) -> Self {
        let mut ws = ws_request(g, "/ws/socket.io/?EIO=4&transport=websocket", headers)
            .await
            .unwrap_or_else(|status| panic!("websocket handshake answered {status}"));
        let open = next_text(&mut ws).await.unwrap();
        assert!(open.starts_with("0{\"sid\""), "{open}");
        assert!(open.contains("\"upgrades\":[]"), "{open}");
        WsClient { ws }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next packet that is not a ping (answered), within `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let t = tokio::time::timeout(left, next_text(&mut self.ws))
                .await
                .ok()??;
            if t == "2" {
                self.send("3").await;
                continue;
            }
            return Some(t);
        }
    }

    /// Every packet within `wait`.
    async fn collect(&mut self, wait: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left).await {
                Some(t) => out.push(t),
                None => break,
            }
        }
        out
    }
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Connect as `role` with `auth.token` and subscribe to the default queue.
async fn connected(w: &World, role: &str) -> WsClient {
    let mut c = WsClient::open(&w.g, &[]).await;
    c.send(&format!("40{}", json!({"token": w.token(role)})))
        .await;
    let ack = c.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack, r#"40{"sid":"sio-sid"}"#, "{role}");
    c.send(r#"42["subscribe_queue",{"queue_id":"default"}]"#)
        .await;
    c
}

async fn wait_for_upstream(w: &World, n: usize) {
    for _ in 0..100 {
        if w.up.conns().iter().filter(|c| c.connect.is_some()).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("upstream saw {} connections", w.up.conns().len());
}

fn events(frames: &[String]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter_map(|f| f.strip_prefix("42"))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .map(|v| (v[0].as_str().unwrap().to_owned(), v[1].clone()))
        .collect()
}

#[tokio::test]
async fn connect_with_auth_token_rewrites_the_upstream_connect() {
    let w = world().await;
    let _c = connected(&w, "alice").await;
    wait_for_upstream(&w, 1).await;
    let up = &w.up.conns()[0];
    let connect: Value = serde_json::from_str(up.connect.as_deref().unwrap()).unwrap();
    let token = connect["token"].as_str().unwrap();
    // The upstream is told who the guard validated, in the CONNECT and the handshake header.
    let claims = invoke_guard::identity::verify(token, w.m["jwt"]["secret"].as_str().unwrap())
        .unwrap()
        .0;
    assert_eq!(claims["user_id"], w.uid("alice"));
    assert_eq!(
        up.authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
}

#[tokio::test]
async fn bad_identities_are_rejected_and_never_reach_the_upstream() {
    let w = world().await;
    let secret = w.m["jwt"]["secret"].as_str().unwrap();
    let mut forged = claims_for(&w.m, "alice");
    forged["user_id"] = json!("system");
    let system = sign(&forged, secret);
    let cases = [
        ("no credential", "40".to_owned()),
        ("empty auth", "40{}".to_owned()),
        ("garbage token", r#"40{"token":"x.y.z"}"#.to_owned()),
        (
            "deactivated user",
            format!("40{}", json!({"token": w.token("dave")})),
        ),
        ("system user", format!("40{}", json!({"token": system}))),
        (
            "other signature",
            format!(
                "40{}",
                json!({"token": sign(&claims_for(&w.m, "alice"), "nope")})
            ),
        ),
    ];
    for (what, connect) in cases {
        let mut c = WsClient::open(&w.g, &[]).await;
        c.send(&connect).await;
        let reply = c.recv(Duration::from_secs(5)).await;
        assert_eq!(
            reply.as_deref(),
            Some(r#"44{"message":"Connection rejected by server"}"#),
            "{what}"
        );
    }
    // An invalid auth.token does not fall back to a valid Bearer header (the server's precedence).
    let bearer = format!("Bearer {}", w.token("alice"));
    let mut c = WsClient::open(&w.g, &[("authorization", &bearer)]).await;
    c.send(r#"40{"token":"x.y.z"}"#).await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"44{"message":"Connection rejected by server"}"#)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(w.up.conns().is_empty(), "{:?}", w.up.conns());
}

#[tokio::test]
async fn bearer_header_and_session_cookie_are_the_connect_fallbacks() {
    let w = world().await;
    let bearer = format!("Bearer {}", w.token("alice"));
    let mut c = WsClient::open(&w.g, &[("authorization", &bearer)]).await;
    c.send("40").await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#)
    );
    let cookie = format!(
        "{}={}",
        invoke_guard::identity::SESSION_COOKIE,
        w.token("bob")
    );
    let mut c = WsClient::open(&w.g, &[("cookie", &cookie)]).await;
    c.send("40").await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#)
    );
    wait_for_upstream(&w, 2).await;
}

#[tokio::test]
async fn only_default_rooms_reach_the_upstream() {
    let w = world().await;
    let mut c = connected(&w, "bob").await;
    c.send(r#"421["subscribe_queue",{"queue_id":"admin"}]"#)
        .await;
    c.send(&format!(
        r#"42["subscribe_queue",{{"queue_id":"user:{}"}}]"#,
        w.uid("alice")
    ))
    .await;
    c.send(r#"42["subscribe_bulk_download",{"bulk_download_id":"admin"}]"#)
        .await;
    c.send(r#"42["something_else",{}]"#).await;
    c.send(r#"42/admin,["subscribe_queue",{"queue_id":"default"}]"#)
        .await;
    c.send(r#"42["subscribe_bulk_download",{"bulk_download_id":"default"}]"#)
        .await;
    // The injected ack is answered by the guard.
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some("431[]")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let up = &w.up.conns()[0];
    assert_eq!(
        up.messages,
        vec![
            r#"42["subscribe_queue",{"queue_id":"default"}]"#.to_owned(),
            r#"42["subscribe_bulk_download",{"bulk_download_id":"default"}]"#.to_owned(),
        ]
    );
}

#[tokio::test]
async fn each_user_receives_only_what_main_would_send_them() {
    let w = world().await;
    let mut alice = connected(&w, "alice").await;
    let mut bob = connected(&w, "bob").await;
    let mut admin = connected(&w, "admin").await;
    wait_for_upstream(&w, 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = w.uid("alice");
    let qisc = json!({"queue_id": "default", "item_id": 1, "batch_id": "b1", "origin": "canvas",
        "destination": "gallery", "user_id": a, "status": "failed", "error_message": "alice's prompt",
        "error_type": "E", "error_traceback": "tb", "session_id": "s1", "timestamp": 1,
        "batch_status": {"queue_id": "default", "batch_id": "b1", "origin": "canvas", "destination": "gallery",
            "pending": 0, "in_progress": 0, "completed": 0, "failed": 1, "canceled": 0, "total": 1},
        "queue_status": {"queue_id": "default", "item_id": 1, "batch_id": "b1", "session_id": "s1",
            "pending": 0, "in_progress": 0, "completed": 0, "failed": 1, "canceled": 0, "total": 1}});
    w.up.emit("queue_item_status_changed", qisc.clone());
    w.up.emit(
        "invocation_progress",
        json!({"user_id": a, "queue_id": "default", "image": {"dataURL": "x"}}),
    );
    w.up.emit(
        "model_install_download_progress",
        json!({"source": {"access_token": "hf_secret"}, "local_path": "/srv"}),
    );
    w.up.emit(
        "recall_parameters_updated",
        json!({"user_id": a, "queue_id": "default", "parameters": {"positive_prompt": "p"}}),
    );
    w.up.emit(
        "bulk_download_complete",
        json!({"user_id": a, "bulk_download_id": "default", "bulk_download_item_name": "z.zip"}),
    );
    w.up.emit("no_such_event", json!({"user_id": a}));
    let wait = Duration::from_millis(800);
    let (ea, eb, ec) = (
        events(&alice.collect(wait).await),
        events(&bob.collect(wait).await),
        events(&admin.collect(wait).await),
    );
    let names = |e: &[(String, Value)]| {
        e.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        names(&ea),
        "queue_item_status_changed,invocation_progress,recall_parameters_updated,bulk_download_complete"
    );
    assert_eq!(ea[0].1, qisc, "the owner gets her event byte for byte");
    assert_eq!(
        names(&eb),
        "queue_item_status_changed",
        "bob: only the sanitized companion"
    );
    assert_eq!(eb[0].1["user_id"], "redacted");
    assert_eq!(eb[0].1["error_message"], Value::Null);
    assert_eq!(eb[0].1["batch_status"]["batch_id"], "redacted");
    assert_eq!(eb[0].1["status"], "failed");
    assert!(!eb.iter().any(|(_, p)| p.to_string().contains("hf_secret")));
    assert_eq!(
        names(&ec),
        "queue_item_status_changed,model_install_download_progress,bulk_download_complete",
        "admin: full status, installs, downloads; never others' progress or recall"
    );
}

#[tokio::test]
async fn revocation_closes_the_socket_and_demotion_stops_admin_deliveries() {
    let w = world().await;
    let mut bob = connected(&w, "bob").await;
    let mut admin = connected(&w, "admin").await;
    wait_for_upstream(&w, 2).await;
    // A second admin, so the real one can be demoted without locking the installation.
    let conn = rusqlite::Connection::open(&w.db.path).unwrap();
    let started = Instant::now();
    conn.execute(
        "UPDATE users SET is_active = 0 WHERE user_id = ?1",
        [w.uid("bob")],
    )
    .unwrap();
    let mut closed = None;
    while let Some(f) = bob.recv(Duration::from_secs(3)).await {
        if f == "41" {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("bob's socket was not closed after deactivation");
    println!("deactivation → 41 in {} ms", closed.as_millis());
    conn.execute(
        "UPDATE users SET is_admin = 0 WHERE user_id = ?1",
        [w.uid("admin")],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    w.up.emit(
        "download_progress",
        json!({"source": "https://x", "download_path": "/srv"}),
    );
    let frames = admin.collect(Duration::from_millis(600)).await;
    assert!(
        events(&frames).is_empty(),
        "a demoted admin still got {frames:?}"
    );
}

/// Polling as socket.io-client starts: handshake, CONNECT by POST, then the websocket upgrade;
/// every transport request carries the client's header, as python-socketio sends it.
#[tokio::test]
async fn polling_then_upgrade_carries_the_same_session() {
    let w = world().await;
    let bearer = format!("Bearer {}", w.token("alice"));
    let alice = [("authorization", bearer.as_str())];
    let sid = open_polling(&w, &alice).await;
    let posted = poll_post(
        &w,
        &sid,
        &format!(
            "40{}\u{1e}42[\"subscribe_queue\",{{\"queue_id\":\"default\"}}]",
            json!({"token": w.token("alice")})
        ),
        &alice,
    )
    .await;
    assert_eq!(posted.status, 200);
    let got = poll_get(&w, &sid, &alice).await;
    assert_eq!(String::from_utf8_lossy(&got.body), r#"40{"sid":"sio-sid"}"#);
    // Unknown sids are refused.
    assert_eq!(
        send(
            "GET",
            &w.g.url("/ws/socket.io/?EIO=4&transport=polling&sid=nope"),
            None,
            None
        )
        .await
        .status,
        400
    );
    // Upgrade.
    let mut ws = ws_upgrade(&w, &sid, &alice).await.unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("3probe"));
    ws.send(Message::text("5")).await.unwrap();
    wait_for_upstream(&w, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.up.emit(
        "invocation_started",
        json!({"user_id": w.uid("alice"), "queue_id": "default"}),
    );
    let mut c = WsClient { ws };
    let frames = c.collect(Duration::from_millis(800)).await;
    assert_eq!(events(&frames).len(), 1, "{frames:?}");
    assert_eq!(
        w.up.conns()[0].messages,
        vec![r#"42["subscribe_queue",{"queue_id":"default"}]"#.to_owned()]
    );
}

const POLLING: &str = "/ws/socket.io/?EIO=4&transport=polling";

/// A polling handshake with `headers`; the new session's sid.
async fn open_polling(w: &World, headers: &[(&str, &str)]) -> String {
    open_polling_with_cookie(w, headers).await.0
}

/// A polling handshake with `headers`; the sid, and the `Cookie` a cookie jar would send next.
async fn open_polling_with_cookie(w: &World, headers: &[(&str, &str)]) -> (String, String) {
    let open = send_with("GET", &w.g.url(POLLING), None, None, headers).await;
    assert_eq!(open.status, 200, "{:?}", open.body);
    let text = String::from_utf8(open.body.to_vec()).unwrap();
    let handshake: Value = serde_json::from_str(&text[1..]).unwrap();
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    let set_cookie = open.headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/ws/socket.io/"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (handshake["sid"].as_str().unwrap().to_owned(), cookie)
}

/// CONNECT a polling session by POST (`auth.token` of `role`, or none) and read the reply by GET,
/// both with `headers`.
async fn connect_by_post(
    w: &World,
    sid: &str,
    role: Option<&str>,
    headers: &[(&str, &str)],
) -> String {
    let connect = match role {
        Some(r) => format!("40{}", json!({"token": w.token(r)})),
        None => "40".to_owned(),
    };
    assert_eq!(poll_post(w, sid, &connect, headers).await.status, 200);
    String::from_utf8_lossy(&poll_get(w, sid, headers).await.body).into_owned()
}

async fn poll_get(w: &World, sid: &str, headers: &[(&str, &str)]) -> Reply {
    send_with(
        "GET",
        &w.g.url(&format!("{POLLING}&sid={sid}")),
        None,
        None,
        headers,
    )
    .await
}

async fn poll_post(w: &World, sid: &str, payload: &str, headers: &[(&str, &str)]) -> Reply {
    send_bytes(
        "POST",
        &w.g.url(&format!("{POLLING}&sid={sid}")),
        None,
        bytes::Bytes::from(payload.to_owned()),
        &[headers, &[("content-type", "text/plain;charset=UTF-8")]].concat(),
    )
    .await
}

/// A websocket upgrade of the polling session `sid` with `headers`; the HTTP status on refusal.
async fn ws_upgrade(w: &World, sid: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    ws_request(
        &w.g,
        &format!("/ws/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        headers,
    )
    .await
}

async fn ws_request(g: &Guard, target: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let url = format!("ws://{}{target}", g.addr);
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// The current value of `invoke_guard_socket_refusals_total{reason}` (process-wide).
fn refusals(reason: &str) -> u64 {
    let text = invoke_guard::metrics::render_as(invoke_guard::metrics::Format::Text004);
    let prefix = format!("invoke_guard_socket_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn old_protocols_and_jsonp_are_refused() {
    let w = world().await;
    for target in [
        "/ws/socket.io/?EIO=3&transport=polling",
        "/ws/socket.io/?transport=polling",
        "/ws/socket.io/?EIO=4&transport=polling&j=0",
        "/ws/socket.io/?EIO=4&transport=carrier-pigeon",
    ] {
        assert_eq!(
            send("GET", &w.g.url(target), None, None).await.status,
            400,
            "{target}"
        );
    }
}

/// 6.12 recall and bulk-download events name no owner: the guard attributes them to the caller of
/// the HTTP request that caused them (spec §4.4), and to nobody else.
#[tokio::test]
async fn owner_less_6_12_events_go_to_the_caller_of_the_request_behind_them() {
    let w = world_of("6.12.0").await;
    let mut alice = connected(&w, "alice").await;
    let mut bob = connected(&w, "bob").await;
    wait_for_upstream(&w, 2).await;
    // Nothing in flight: an owner-less recall is unattributable, dropped for everyone.
    w.up.emit(
        "recall_parameters_updated",
        json!({"queue_id": "default", "parameters": {"seed": 1}}),
    );
    assert!(events(&alice.collect(Duration::from_millis(400)).await).is_empty());
    let r = send(
        "POST",
        &w.g.url("/api/v1/recall/default"),
        Some(&w.token("alice")),
        Some(json!({"positive_prompt": "p"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.detail());
    w.up.emit(
        "recall_parameters_updated",
        json!({"queue_id": "default", "parameters": {"seed": 2}}),
    );
    let r = send(
        "POST",
        &w.g.url("/api/v1/images/download"),
        Some(&w.token("alice")),
        Some(json!({"image_names": [w.m["images"]["alice_uncat_1"]["image_name"]]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.detail());
    w.up.emit(
        "bulk_download_complete",
        json!({"bulk_download_id": "default", "bulk_download_item_id": "zip-1", "bulk_download_item_name": "zip-1.zip"}),
    );
    let wait = Duration::from_millis(800);
    let (ea, eb) = (
        events(&alice.collect(wait).await),
        events(&bob.collect(wait).await),
    );
    let names: Vec<&str> = ea.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["recall_parameters_updated", "bulk_download_complete"]
    );
    assert_eq!(ea[0].1["parameters"]["seed"], 2);
    assert!(eb.is_empty(), "bob got {eb:?}");
}

/// A guard whose session cap is `cap`, and whose sessions must CONNECT within `connect_ms`.
async fn capped_world(cap: usize, connect_ms: u64) -> World {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock_sio().await;
    let raw = raw_config(&format!(
        "[limits]\nmax_connections = {cap}\nsocket_connect_timeout_ms = {connect_ms}\n"
    ));
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw).await;
    World {
        db,
        up,
        g,
        m: manifest("6.14.2"),
    }
}

/// Identified callers are capped (503 beyond); anonymous handshakes never take their slots.
#[tokio::test]
async fn sessions_of_known_callers_are_capped() {
    let w = capped_world(3, 60_000).await;
    let bearer = format!("Bearer {}", w.token("alice"));
    let url = w.g.url(POLLING);
    for _ in 0..3 {
        let r = send_with("GET", &url, None, None, &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200);
    }
    let refused = send_with("GET", &url, None, None, &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        ws_request(
            &w.g,
            "/ws/socket.io/?EIO=4&transport=websocket",
            &[("authorization", &bearer)]
        )
        .await
        .err(),
        Some(503)
    );
    // An anonymous handshake is still answered: its session is pending, not counted ...
    let sid = open_polling(&w, &[]).await;
    // ... and its CONNECT finds every counted slot taken.
    let r = poll_post(
        &w,
        &sid,
        &format!("40{}", json!({"token": w.token("bob")})),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &[]).await.body),
        r#"44{"message":"Connection rejected by server"}"#
    );
}

/// Issue #20 item 2: thirty anonymous handshakes at a cap of 24 used to make alice's own
/// handshake answer 503 on both transports.
#[tokio::test]
async fn anonymous_handshakes_cannot_starve_the_session_cap() {
    let w = capped_world(24, 60_000).await;
    let mut anonymous = Vec::new();
    for i in 0..30 {
        if i % 2 == 0 {
            anonymous.push(open_polling(&w, &[]).await);
        } else {
            let ws = ws_request(&w.g, "/ws/socket.io/?EIO=4&transport=websocket", &[])
                .await
                .expect("anonymous websocket handshake");
            std::mem::forget(ws);
        }
    }
    let (counted, pending) = w.g.state.sockets.registry.counts();
    assert_eq!(counted, 0, "anonymous sessions count toward nothing");
    assert!(
        pending <= 24,
        "{pending} pending sessions (bounded by the cap)"
    );
    // Alice, by Bearer on polling and on a websocket, and anonymously with auth.token.
    let bearer = format!("Bearer {}", w.token("alice"));
    let alice = [("authorization", bearer.as_str())];
    let sid = open_polling(&w, &alice).await;
    let r = poll_post(&w, &sid, "40", &alice).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &alice).await.body),
        r#"40{"sid":"sio-sid"}"#
    );
    let mut ws = WsClient::open(&w.g, &alice).await;
    ws.send("40").await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#)
    );
    let anon_alice = open_polling(&w, &[]).await;
    assert_eq!(
        connect_by_post(&w, &anon_alice, Some("alice"), &[]).await,
        r#"40{"sid":"sio-sid"}"#
    );
    assert_eq!(w.g.state.sockets.registry.counts().0, 3);
}

/// A session nobody authenticates is closed after `limits.socket_connect_timeout_ms`, and so is
/// one whose caller DISCONNECTed and never came back.
#[tokio::test]
async fn sessions_without_an_authenticated_connect_are_closed() {
    let w = capped_world(24, 300).await;
    let sid = open_polling(&w, &[]).await;
    // The long poll ends with the close packet (before the connect timeout it would wait for the
    // next ping, 25 s on).
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &[]).await.body),
        "1"
    );
    assert_eq!(poll_get(&w, &sid, &[]).await.status, 400, "the sid is gone");
    // A refused CONNECT does not keep it open either.
    let sid = open_polling(&w, &[]).await;
    poll_post(&w, &sid, r#"40{"token":"x.y.z"}"#, &[]).await;
    let first = String::from_utf8_lossy(&poll_get(&w, &sid, &[]).await.body).to_string();
    assert_eq!(first, r#"44{"message":"Connection rejected by server"}"#);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &[]).await.body),
        "1"
    );
    // Connected, then DISCONNECTed: closed unless it CONNECTs again.
    let mut c = WsClient::open(&w.g, &[]).await;
    c.send(&format!("40{}", json!({"token": w.token("alice")})))
        .await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#)
    );
    c.send("41").await;
    let mut rest = Vec::new();
    while let Some(f) = c.recv(Duration::from_secs(30)).await {
        rest.push(f);
    }
    assert_eq!(rest, ["1"], "closed after the DISCONNECT");
}

/// Issue #20 item 1: whoever held alice's sid could read her stream (anonymously, as bob by
/// polling or by upgrading her session).
#[tokio::test]
async fn a_session_id_is_not_a_credential() {
    let w = world().await;
    let alice_bearer = format!("Bearer {}", w.token("alice"));
    let bob_bearer = format!("Bearer {}", w.token("bob"));
    let alice = [("authorization", alice_bearer.as_str())];
    let bob = [("authorization", bob_bearer.as_str())];
    let sid = open_polling(&w, &alice).await;
    poll_post(
        &w,
        &sid,
        "40\u{1e}42[\"subscribe_queue\",{\"queue_id\":\"default\"}]",
        &alice,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &alice).await.body),
        r#"40{"sid":"sio-sid"}"#
    );
    wait_for_upstream(&w, 1).await;
    let before = (
        refusals("session credential missing"),
        refusals("session of another caller"),
    );
    assert_eq!(poll_get(&w, &sid, &[]).await.status, 403, "anonymous GET");
    assert_eq!(poll_get(&w, &sid, &bob).await.status, 403, "bob's GET");
    assert_eq!(
        poll_post(&w, &sid, "41", &bob).await.status,
        403,
        "bob's POST"
    );
    assert_eq!(
        ws_upgrade(&w, &sid, &bob).await.err(),
        Some(403),
        "bob's upgrade"
    );
    assert_eq!(
        ws_upgrade(&w, &sid, &[]).await.err(),
        Some(403),
        "anonymous upgrade"
    );
    assert_eq!(refusals("session credential missing") - before.0, 2);
    assert!(refusals("session of another caller") - before.1 >= 3);
    // Alice's own requests still work, and her stream reached nobody else.
    w.up.emit(
        "invocation_started",
        json!({"user_id": w.uid("alice"), "queue_id": "default"}),
    );
    let body = String::from_utf8(poll_get(&w, &sid, &alice).await.body.to_vec()).unwrap();
    assert!(body.contains("invocation_started"), "{body}");

    // python-engineio sends its headers on the handshake (and the upgrade) only, then the cookies
    // it was given: the session's own cookie stands for the bound caller, nothing else does.
    let (sid, jar) = open_polling_with_cookie(&w, &alice).await;
    let python = [("cookie", jar.as_str())];
    assert_eq!(
        connect_by_post(&w, &sid, Some("alice"), &python).await,
        r#"40{"sid":"sio-sid"}"#
    );
    assert_eq!(poll_get(&w, &sid, &[]).await.status, 403, "no cookie");
    let forged = format!(
        "{}=AAAAAAAAAAAAAAAAAAAAAAAA",
        invoke_guard::socketio::session::SESSION_PROOF_COOKIE
    );
    assert_eq!(poll_get(&w, &sid, &[("cookie", &forged)]).await.status, 403);
    let bob_and_jar = [
        ("cookie", jar.as_str()),
        ("authorization", bob_bearer.as_str()),
    ];
    assert_eq!(
        poll_get(&w, &sid, &bob_and_jar).await.status,
        403,
        "bob with her cookie"
    );
    assert!(ws_upgrade(
        &w,
        &sid,
        &[("cookie", &jar), ("authorization", &alice_bearer)]
    )
    .await
    .is_ok());

    // A cookie-bound session (a browser) refuses a request without the cookie.
    let cookie = format!(
        "{}={}",
        invoke_guard::identity::SESSION_COOKIE,
        w.token("alice")
    );
    let browser = [("cookie", cookie.as_str())];
    let sid = open_polling(&w, &browser).await;
    assert_eq!(poll_post(&w, &sid, "40", &browser).await.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &browser).await.body),
        r#"40{"sid":"sio-sid"}"#
    );
    assert_eq!(poll_get(&w, &sid, &[]).await.status, 403);
    // The web UI: Bearer on polling, the cookie alone on the upgrade (same user): accepted.
    let ui = [
        ("authorization", alice_bearer.as_str()),
        ("cookie", cookie.as_str()),
    ];
    let sid = open_polling(&w, &ui).await;
    assert!(ws_upgrade(&w, &sid, &browser).await.is_ok());

    // A session that authenticated only in CONNECT (no transport credential): another user's
    // credential on its transport is refused; the sid alone is all python-engineio asks too.
    let sid = open_polling(&w, &[]).await;
    assert_eq!(
        connect_by_post(&w, &sid, Some("alice"), &[]).await,
        r#"40{"sid":"sio-sid"}"#
    );
    assert_eq!(poll_get(&w, &sid, &bob).await.status, 403);
    assert_eq!(ws_upgrade(&w, &sid, &bob).await.err(), Some(403));
}

/// Issue #20 item 1: `41` then `40` without auth used to fall back to the handshake's Bearer.
#[tokio::test]
async fn a_reconnect_authenticates_from_its_own_packet() {
    let w = world().await;
    let bearer = format!("Bearer {}", w.token("alice"));
    let mut c = WsClient::open(&w.g, &[("authorization", &bearer)]).await;
    c.send("40").await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#),
        "the first CONNECT falls back to the handshake's Bearer"
    );
    c.send("41").await;
    c.send("40").await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"44{"message":"Connection rejected by server"}"#),
        "a re-CONNECT without auth.token"
    );
    c.send(&format!("40{}", json!({"token": w.token("alice")})))
        .await;
    assert_eq!(
        c.recv(Duration::from_secs(5)).await.as_deref(),
        Some(r#"40{"sid":"sio-sid"}"#),
        "a re-CONNECT with its own auth.token"
    );
    wait_for_upstream(&w, 2).await;
}

/// Issue #20 item 3: one polling POST of 60 CONNECT/DISCONNECT pairs opened 60 upstream sockets.
#[tokio::test]
async fn connect_disconnect_amplification_is_bounded() {
    let w = world().await;
    let connect = format!("40{}", json!({"token": w.token("alice")}));
    let sid = open_polling(&w, &[]).await;
    let pairs = (0..60)
        .map(|_| format!("{connect}\u{1e}41"))
        .collect::<Vec<_>>()
        .join("\u{1e}");
    let before = refusals("connect payload");
    let r = poll_post(&w, &sid, &pairs, &[]).await;
    assert_eq!(r.status, 400, "a payload asking for 60 upstream sockets");
    assert_eq!(refusals("connect payload") - before, 1);
    // Nothing of it was delivered; an ordinary CONNECT still works.
    assert_eq!(poll_post(&w, &sid, &connect, &[]).await.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &[]).await.body),
        r#"40{"sid":"sio-sid"}"#
    );
    wait_for_upstream(&w, 1).await;
    assert_eq!(w.up.conns().len(), 1);
    // The same over a websocket, frame by frame: a burst, then one CONNECT per refill period.
    let started = Instant::now();
    let mut c = WsClient::open(&w.g, &[]).await;
    for _ in 0..60 {
        c.send(&connect).await;
        c.send("41").await;
    }
    let replies = c.collect(Duration::from_millis(1500)).await;
    let accepted = replies.iter().filter(|f| f.starts_with("40")).count() as u32;
    let rejected = replies.iter().filter(|f| f.starts_with("44")).count() as u32;
    let allowed = invoke_guard::socketio::session::CONNECT_BURST
        + (started.elapsed().as_nanos()
            / invoke_guard::socketio::session::CONNECT_REFILL.as_nanos()) as u32;
    assert!(
        accepted >= 1 && accepted <= allowed,
        "{accepted} accepted, {allowed} allowed"
    );
    assert_eq!(accepted + rejected, 60, "{replies:?}");
    assert!(w.up.conns().len() as u32 <= 1 + allowed);
}

/// Issue #20 item 4: a CONNECT authenticated only by the session cookie was accepted from a
/// foreign `Origin` (cross-site websocket hijacking).
#[tokio::test]
async fn a_cookie_connect_from_a_foreign_origin_is_refused() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock_sio().await;
    let raw = raw_config("allowed_origins = [\"https://invoke.example.com\"]\n");
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw).await;
    let w = World {
        db,
        up,
        g,
        m: manifest("6.14.2"),
    };
    let cookie = format!(
        "{}={}",
        invoke_guard::identity::SESSION_COOKIE,
        w.token("alice")
    );
    let own = format!("http://{}", w.g.addr);
    let attempt = |origin: String, connect: String| {
        let cookie = cookie.clone();
        let g = &w.g;
        async move {
            let mut c = WsClient::open(g, &[("cookie", &cookie), ("origin", &origin)]).await;
            c.send(&connect).await;
            c.recv(Duration::from_secs(5)).await.unwrap()
        }
    };
    let before = refusals("foreign origin");
    let rejected = r#"44{"message":"Connection rejected by server"}"#;
    let accepted = r#"40{"sid":"sio-sid"}"#;
    assert_eq!(
        attempt("http://evil.example".into(), "40".into()).await,
        rejected
    );
    assert_eq!(attempt("null".into(), "40".into()).await, rejected);
    assert_eq!(refusals("foreign origin") - before, 2);
    assert!(w.up.conns().is_empty());
    assert_eq!(attempt(own, "40".into()).await, accepted);
    assert_eq!(
        attempt("https://invoke.example.com".into(), "40".into()).await,
        accepted,
        "a configured origin"
    );
    // With its own auth.token the CONNECT does not rest on the cookie.
    let token = format!("40{}", json!({"token": w.token("alice")}));
    assert_eq!(attempt("http://evil.example".into(), token).await, accepted);
    // Polling: a foreign Origin on any request of the session counts.
    let sid = open_polling(&w, &[("cookie", &cookie)]).await;
    let r = poll_post(
        &w,
        &sid,
        "40",
        &[("cookie", &cookie), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&poll_get(&w, &sid, &[("cookie", &cookie)]).await.body),
        rejected
    );
}

/// Issue #20 item 5: the `socket connected` line logged the live sid (a polling session's
/// credential).
#[tokio::test]
async fn logs_name_sessions_by_a_hash_never_by_sid() {
    let logs = capture_logs("invoke_guard=info", false);
    let w = world().await;
    let sid = open_polling(&w, &[]).await;
    poll_post(
        &w,
        &sid,
        &format!("40{}", json!({"token": w.token("alice")})),
        &[],
    )
    .await;
    poll_get(&w, &sid, &[]).await;
    poll_post(&w, &sid, "1", &[]).await;
    let tag = invoke_guard::socketio::session::tag_of(&sid);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = logs.text();
        if seen.contains(&tag) && seen.contains("socket closed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(&format!("session={tag}")), "{seen}");
    assert!(!seen.contains(&sid), "the sid was logged: {seen}");
}

/// python-engineio clients refuse a polling payload of more than 16 packets: the guard spreads a
/// burst over several responses, in order.
#[tokio::test]
async fn polling_responses_carry_at_most_16_packets_in_order() {
    let w = world().await;
    let base = "/ws/socket.io/?EIO=4&transport=polling";
    let open = send("GET", &w.g.url(base), None, None).await;
    let text = String::from_utf8(open.body.to_vec()).unwrap();
    let sid = serde_json::from_str::<Value>(&text[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let with_sid = format!("{base}&sid={sid}");
    let connect = format!(
        "40{}\u{1e}42[\"subscribe_queue\",{{\"queue_id\":\"default\"}}]",
        json!({"token": w.token("alice")})
    );
    let posted = send_bytes(
        "POST",
        &w.g.url(&with_sid),
        None,
        bytes::Bytes::from(connect),
        &[],
    )
    .await;
    assert_eq!(posted.status, 200);
    let ack = send("GET", &w.g.url(&with_sid), None, None).await;
    assert_eq!(String::from_utf8_lossy(&ack.body), r#"40{"sid":"sio-sid"}"#);
    wait_for_upstream(&w, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..40 {
        w.up.emit(
            "invocation_started",
            json!({"user_id": w.uid("alice"), "queue_id": "default", "n": i}),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let got = send("GET", &w.g.url(&with_sid), None, None).await;
        let body = String::from_utf8(got.body.to_vec()).unwrap();
        let packets: Vec<&str> = body.split('\u{1e}').collect();
        assert!(
            packets.len() <= 16,
            "{} packets in one response",
            packets.len()
        );
        seen.extend(events(
            &packets.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ));
    }
    let order: Vec<i64> = seen.iter().map(|(_, p)| p["n"].as_i64().unwrap()).collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>());
}

/// 6.12/6.13 model-load events name no owner: they belong to the item the stream reported in
/// progress (both `started` and `complete`, however late a socket processes them).
#[tokio::test]
async fn model_loads_follow_the_running_item_of_the_stream() {
    let w = world_of("6.12.0").await;
    let mut alice = connected(&w, "alice").await;
    let mut bob = connected(&w, "bob").await;
    let mut admin = connected(&w, "admin").await;
    wait_for_upstream(&w, 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let qisc = |status: &str| {
        json!({"queue_id": "default", "item_id": 77, "batch_id": "b", "user_id": w.uid("alice"),
            "status": status, "origin": null, "destination": null, "session_id": "s", "timestamp": 1})
    };
    w.up.emit("queue_item_status_changed", qisc("in_progress"));
    w.up.emit(
        "model_load_started",
        json!({"config": {"key": "k"}, "submodel_type": null}),
    );
    w.up.emit(
        "model_load_complete",
        json!({"config": {"key": "k"}, "submodel_type": null}),
    );
    w.up.emit("queue_item_status_changed", qisc("completed"));
    // After the item ended, an owner-less load can no longer be attributed from the stream.
    w.up.emit(
        "model_load_started",
        json!({"config": {"key": "late"}, "submodel_type": null}),
    );
    let wait = Duration::from_millis(800);
    let loads = |e: Vec<(String, Value)>| {
        e.into_iter()
            .filter(|(n, _)| n.starts_with("model_load"))
            .map(|(n, p)| format!("{n}:{}", p["config"]["key"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        loads(events(&alice.collect(wait).await)),
        ["model_load_started:k", "model_load_complete:k"]
    );
    assert!(loads(events(&bob.collect(wait).await)).is_empty());
    assert!(loads(events(&admin.collect(wait).await)).is_empty());
}
