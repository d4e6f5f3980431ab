//! Load and soak on loopback: the real `invoke-guard` binary in front of a mock InvokeAI
//! 6.12 (REST and Socket.IO on one port) over the rich 6.12 fixture, driven by several users
//! at once with mixed traffic, checking every response for foreign items.
//!
//! ```sh
//! SOAK_SECONDS=60 cargo test --test soak -- --ignored --nocapture          # the test command's run
//! SOAK_SECONDS=600 SOAK_GUARD_BIN=target/release/invoke-guard \
//!     cargo test --release --test soak -- --ignored --nocapture          # the documented long run
//! ```
//!
//! Traffic per user (alice, bob, carol, admin), in a loop: read an own image (200, its bytes),
//! read another user's private image (403), the uncategorized-names list and the queue list
//! (6.12 returns everyone's; the guard filters), a 64 KiB multipart upload (streamed; the mock
//! checks every byte arrived), an unknown route (404); plus a Socket.IO client per user that
//! connects, subscribes, receives the mock's events for a few seconds and disconnects.
//!
//! Checked on every response: no foreign item (another user's image bytes, image name, or user
//! id in a list or socket frame for a non-admin), no 5xx, no upload byte lost. Sampled over time
//! from /proc/<guard pid>: RSS, open fds, open sockets. Pass: zero leaks, zero 5xx, RSS in the
//! last third no more than 10 % + 4 MiB over the middle third, and once the traffic stops the
//! guard's fds and sockets back (within 30 s) to within 4 of where they were before it started
//! (the fact pool opens its 4 connections lazily).
//!
//! Loopback only, bounded: every loop stops at the deadline; the guard is killed at the end.
//! `SOAK_OUT=FILE` also writes the samples as CSV.

// tungstenite's handshake callback returns its large error type by design.
#![allow(clippy::result_large_err)]

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

const ROLES: [&str; 4] = ["alice", "bob", "carol", "admin"];

/// Idle fds the guard may keep beyond its pre-traffic baseline: the fact pool opens its read-only
/// connections (`facts.pool_size`, 4) lazily.
const SLACK: usize = 4;

/// Counters shared by every client.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    frames: AtomicU64,
    leaks: AtomicU64,
    server_errors: AtomicU64,
    unexpected: AtomicU64,
    lost_bytes: AtomicU64,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if counter.load(Ordering::Relaxed) <= 5 {
            eprintln!("soak: {what}");
        }
    }
}

/// The fixture as the clients and the mock see it.
struct Fixture {
    m: Value,
    /// (role, user_id)
    users: Vec<(String, String)>,
    /// (image_name, owner role, board owner role)
    images: Vec<(String, String, Option<String>)>,
}

impl Fixture {
    fn load() -> Self {
        let m = manifest("6.12.0");
        let users = m["users"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(r, u)| (r.clone(), u["user_id"].as_str().unwrap().to_owned()))
            .collect();
        let boards = &m["boards"];
        let images = m["images"]
            .as_object()
            .unwrap()
            .values()
            .map(|i| {
                let board_owner = i["board"]
                    .as_str()
                    .map(|b| boards[b]["owner"].as_str().unwrap_or("?").to_owned());
                (
                    i["image_name"].as_str().unwrap().to_owned(),
                    i["owner"].as_str().unwrap().to_owned(),
                    board_owner,
                )
            })
            .collect();
        Fixture { m, users, images }
    }

    fn uid(&self, role: &str) -> &str {
        &self.users.iter().find(|(r, _)| r == role).unwrap().1
    }

    /// Images `role` owns on no board or on its own board (always readable by it).
    fn own(&self, role: &str) -> Vec<&str> {
        self.images
            .iter()
            .filter(|(_, o, b)| o == role && b.as_deref().is_none_or(|b| b == role))
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    /// Images neither owned by `role` nor on its board (never readable by a non-admin on 6.12).
    fn foreign(&self, role: &str) -> Vec<&str> {
        self.images
            .iter()
            .filter(|(_, o, b)| o != role && b.as_deref() != Some(role))
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    fn uncategorized(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter(|(_, _, b)| b.is_none())
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    /// User ids of everyone but `role` (what a non-admin must never see).
    fn others(&self, role: &str) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(r, _)| r != role && r != "system")
            .map(|(_, u)| u.as_str())
            .collect()
    }
}

// === the mock InvokeAI 6.12 ===

fn json_response(status: u16, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// REST answers as 6.12 gives them: lists carry every user's items.
async fn rest(
    req: Request<Incoming>,
    fx: Arc<Fixture>,
    tally: Arc<Tally>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let declared = req
        .headers()
        .get("x-soak-bytes")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if method == "POST" && path == "/api/v1/images/upload" {
        if declared != Some(body.len()) {
            tally.fail(
                &tally.lost_bytes,
                format!("upload: {:?} declared, {} arrived", declared, body.len()),
            );
        }
        return json_response(
            201,
            json!({"image_name": "uploaded.png", "bytes": body.len()}),
        );
    }
    if let Some(name) = path
        .strip_prefix("/api/v1/images/i/")
        .and_then(|p| p.strip_suffix("/full"))
    {
        let mut r = Response::new(Full::new(Bytes::from(format!("IMG:{name}"))));
        r.headers_mut()
            .insert("content-type", "image/png".parse().unwrap());
        return r;
    }
    match path.as_str() {
        "/api/v1/boards/none/image_names" => json_response(200, json!(fx.uncategorized())),
        "/api/v1/queue/default/list_all" => {
            let items: Vec<Value> = fx.m["queue_items"]
                .as_object()
                .unwrap()
                .values()
                .map(|q| {
                    json!({"item_id": q["item_id"], "user_id": q["user_id"], "batch_id": q["batch_id"],
                        "session_id": q["session_id"], "queue_id": "default", "status": q["status"],
                        "priority": 0, "origin": "canvas", "destination": "gallery",
                        "field_values": null, "error_type": null, "error_message": null,
                        "error_traceback": null, "workflow": null,
                        "session": {"id": q["session_id"], "graph": {"id": "g", "nodes": {}, "edges": []}}})
                })
                .collect();
            json_response(200, json!(items))
        }
        _ => json_response(200, json!({"ok": true})),
    }
}

/// Socket.IO upstream: accepts any CONNECT (the guard decides who gets here) and forwards the
/// broadcast events to every connection.
async fn sio(ws: hyper::upgrade::Upgraded, events: broadcast::Sender<String>) {
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(ws),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    let open = r#"0{"sid":"up","upgrades":[],"pingTimeout":20000,"pingInterval":25000,"maxPayload":1000000}"#;
    if ws.send(Message::text(open)).await.is_err() {
        return;
    }
    let mut rx = events.subscribe();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Message::Text(t))) = msg else { return };
                if t.starts_with("40") && ws.send(Message::text(r#"40{"sid":"sio-sid"}"#)).await.is_err() {
                    return;
                }
            }
            frame = rx.recv() => {
                match frame {
                    Ok(frame) => if ws.send(Message::text(frame)).await.is_err() { return },
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

async fn mock_invokeai(
    fx: Arc<Fixture>,
    tally: Arc<Tally>,
) -> (SocketAddr, broadcast::Sender<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, _) = broadcast::channel::<String>(1024);
    let ev = events.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (fx, tally, ev) = (fx.clone(), tally.clone(), ev.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let (fx, tally, ev) = (fx.clone(), tally.clone(), ev.clone());
                    async move {
                        if req.uri().path().starts_with("/ws/socket.io") {
                            let key = req
                                .headers()
                                .get("sec-websocket-key")
                                .map(|k| k.as_bytes().to_vec())
                                .unwrap_or_default();
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = upgrade.await {
                                    sio(up, ev).await;
                                }
                            });
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut()
                                .insert("upgrade", "websocket".parse().unwrap());
                            r.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            r.headers_mut()
                                .insert("sec-websocket-accept", accept.parse().unwrap());
                            return Ok::<_, Infallible>(r);
                        }
                        Ok(rest(req, fx, tally).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, events)
}

/// The mock's event stream: owner-only and sanitized events for every user in turn.
async fn emit_events(fx: Arc<Fixture>, events: broadcast::Sender<String>, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        for role in ROLES {
            let uid = fx.uid(role);
            n += 1;
            let base = json!({"queue_id": "default", "item_id": 900_000 + n, "batch_id": format!("batch-{n}"),
                "session_id": format!("session-{n}"), "user_id": uid, "origin": "canvas",
                "destination": "gallery", "status": "in_progress", "error_type": null,
                "error_message": null, "error_traceback": null, "created_at": "", "updated_at": "",
                "started_at": null, "completed_at": null, "queue_status": null, "batch_status": null,
                "priority": 0, "session": null});
            let mut started = base.clone();
            started["invocation_source_id"] = json!("src");
            started["invocation"] = json!({"id": "node", "type": "add"});
            let _ = events.send(format!("42{}", json!(["invocation_started", started])));
            let _ = events.send(format!("42{}", json!(["queue_item_status_changed", base])));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === the clients ===

/// One user's REST loop.
async fn user_loop(
    role: &'static str,
    guard: SocketAddr,
    fx: Arc<Fixture>,
    tally: Arc<Tally>,
    until: Instant,
) {
    let token = token_for(&fx.m, role);
    let admin = role == "admin";
    let own = fx.own(role);
    let foreign = fx.foreign(role);
    let others: Vec<String> = fx.others(role).iter().map(|s| s.to_string()).collect();
    let own_set: HashSet<&str> = own.iter().copied().collect();
    let upload = vec![b'u'; 64 * 1024];
    let mut i = 0usize;
    let url = |p: &str| format!("http://{guard}{p}");
    while Instant::now() < until {
        i += 1;
        let (what, reply) = match i % 6 {
            0 => {
                let name = own[i % own.len()];
                let r = send(
                    "GET",
                    &url(&format!("/api/v1/images/i/{name}/full")),
                    Some(&token),
                    None,
                )
                .await;
                if r.status == 200 && r.body != format!("IMG:{name}").as_bytes() {
                    tally.fail(&tally.unexpected, format!("{role}: wrong bytes for {name}"));
                }
                ("own image", r)
            }
            1 => {
                let name = foreign[i % foreign.len()];
                let r = send(
                    "GET",
                    &url(&format!("/api/v1/images/i/{name}/full")),
                    Some(&token),
                    None,
                )
                .await;
                if !admin && (r.status.is_success() || r.body.starts_with(b"IMG:")) {
                    tally.fail(&tally.leaks, format!("{role} read {name}: {}", r.status));
                }
                if !admin && r.status != 403 && r.status.as_u16() < 500 {
                    tally.fail(
                        &tally.unexpected,
                        format!("{role} foreign image: {}", r.status),
                    );
                }
                ("foreign image", r)
            }
            2 => {
                let r = send(
                    "GET",
                    &url("/api/v1/boards/none/image_names"),
                    Some(&token),
                    None,
                )
                .await;
                if !admin && r.status == 200 {
                    for n in r.decoded_json().as_array().into_iter().flatten() {
                        let n = n.as_str().unwrap_or_default();
                        if !own_set.contains(n) {
                            tally.fail(&tally.leaks, format!("{role} listed {n}"));
                        }
                    }
                }
                ("uncategorized names", r)
            }
            3 => {
                let r = send(
                    "GET",
                    &url("/api/v1/queue/default/list_all"),
                    Some(&token),
                    None,
                )
                .await;
                if !admin && r.status == 200 {
                    let text = String::from_utf8_lossy(&r.decoded()).into_owned();
                    if let Some(u) = others.iter().find(|u| text.contains(u.as_str())) {
                        tally.fail(&tally.leaks, format!("{role}'s queue list names {u}"));
                    }
                }
                ("queue list", r)
            }
            4 => {
                let boundary = "soakboundary";
                let mut body = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .into_bytes();
                body.extend_from_slice(&upload);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let len = body.len().to_string();
                let ct = format!("multipart/form-data; boundary={boundary}");
                let r = send_bytes(
                    "POST",
                    &url("/api/v1/images/upload?image_category=user&is_intermediate=false"),
                    Some(&token),
                    body,
                    &[
                        ("content-type", ct.as_str()),
                        ("x-soak-bytes", len.as_str()),
                    ],
                )
                .await;
                ("upload", r)
            }
            _ => {
                let r = send("GET", &url("/api/v1/no-such-route"), Some(&token), None).await;
                if r.status != 404 && r.status.as_u16() < 500 {
                    tally.fail(
                        &tally.unexpected,
                        format!("{role} unknown route: {}", r.status),
                    );
                }
                ("unknown route", r)
            }
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        if reply.status.is_server_error() {
            tally.fail(
                &tally.server_errors,
                format!("{role} {what}: {}", reply.status),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One user's Socket.IO loop: connect, subscribe, receive for 3 s, disconnect, again.
async fn socket_loop(
    role: &'static str,
    guard: SocketAddr,
    fx: Arc<Fixture>,
    tally: Arc<Tally>,
    until: Instant,
) {
    let token = token_for(&fx.m, role);
    let others: Vec<String> = fx.others(role).iter().map(|s| s.to_string()).collect();
    let admin = role == "admin";
    while Instant::now() < until {
        let url = format!("ws://{guard}/ws/socket.io/?EIO=4&transport=websocket");
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        else {
            tally.fail(&tally.unexpected, format!("{role}: socket connect failed"));
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let _ = ws
            .send(Message::text(format!("40{}", json!({"token": token}))))
            .await;
        let _ = ws
            .send(Message::text(format!(
                "42{}",
                json!(["subscribe_queue", {"queue_id": "default"}])
            )))
            .await;
        let stop = (Instant::now() + Duration::from_secs(3)).min(until);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(stop.into(), ws.next()).await {
            let Message::Text(t) = msg else { continue };
            if t.as_str() == "2" {
                let _ = ws.send(Message::text("3")).await;
                continue;
            }
            tally.frames.fetch_add(1, Ordering::Relaxed);
            if !admin {
                if let Some(u) = others.iter().find(|u| t.contains(u.as_str())) {
                    tally.fail(
                        &tally.leaks,
                        format!("{role}'s socket got a frame naming {u}"),
                    );
                }
            }
        }
        let _ = ws.close(None).await;
    }
}

// === sampling ===

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: usize,
    sockets: usize,
    requests: u64,
}

fn sample(pid: u32, t0: Instant, tally: &Tally) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let mut fds = 0;
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        sockets,
        requests: tally.requests.load(Ordering::Relaxed),
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timed soak: run it with SOAK_SECONDS (scripts/test.sh runs 60 s)"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let every = Duration::from_secs((seconds / 30).clamp(2, 20));
    let bin = std::env::var("SOAK_GUARD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_invoke-guard").into());
    let fx = Arc::new(Fixture::load());
    let tally = Arc::new(Tally::default());
    let (upstream, events) = mock_invokeai(fx.clone(), tally.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let free = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr, admin) = (free(()), free(()));
    let log = std::fs::File::create(dir.path().join("guard.log")).unwrap();
    let child = Child(
        std::process::Command::new(&bin)
            .arg("serve")
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--upstream", &format!("http://{upstream}")])
            .arg("--db")
            .arg(&db.path)
            .arg("--routes")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"))
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .current_dir(dir.path())
            .env("INVOKE_GUARD_LOG", "warn")
            // As the container image runs it (Dockerfile): memory committed as it is used, so the
            // RSS curve follows live data rather than the allocator's up-front arena commits.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    );
    let pid = child.0.id();
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await;
        if matches!(r, Ok(Ok(_))) {
            break;
        }
        assert!(Instant::now() < ready, "the guard did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    let baseline = sample(pid, t0, &tally);
    let until = t0 + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(emit_events(fx.clone(), events, until)));
    for role in ROLES {
        tasks.push(tokio::spawn(user_loop(
            role,
            addr,
            fx.clone(),
            tally.clone(),
            until,
        )));
        tasks.push(tokio::spawn(socket_loop(
            role,
            addr,
            fx.clone(),
            tally.clone(),
            until,
        )));
    }
    let mut samples = vec![baseline];
    println!(
        "soak: {seconds} s against {bin} (pid {pid}), sampling every {} s",
        every.as_secs()
    );
    println!("  t_s  rss_kib  fds  sockets  requests");
    while Instant::now() < until {
        tokio::time::sleep(every.min(until.saturating_duration_since(Instant::now()))).await;
        let s = sample(pid, t0, &tally);
        println!(
            "{:5.0}  {:7}  {:3}  {:7}  {:8}",
            s.t, s.rss_kib, s.fds, s.sockets, s.requests
        );
        samples.push(s);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    // Idle: pooled upstream connections expire (4 s), closed sockets end their sessions. Wait
    // (bounded) for the guard to come back to its baseline; what stays open is a leak.
    let settled = Instant::now() + Duration::from_secs(30);
    let after = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = sample(pid, t0, &tally);
        println!(
            "idle  {:7}  {:3}  {:7}  {:8}",
            s.rss_kib, s.fds, s.sockets, s.requests
        );
        let back = s.fds <= baseline.fds + SLACK && s.sockets <= baseline.sockets + SLACK;
        if back || Instant::now() > settled {
            if !back || std::env::var_os("SOAK_DEBUG").is_some() {
                let ss = std::process::Command::new("ss").args(["-tanp"]).output();
                for line in ss
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
                    .lines()
                {
                    if line.contains(&format!("pid={pid},")) {
                        println!("  {line}");
                    }
                }
                for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    println!(
                        "  fd {:?} -> {:?}",
                        e.file_name(),
                        std::fs::read_link(e.path())
                    );
                }
            }
            break s;
        }
    };
    if let Ok(out) = std::env::var("SOAK_OUT") {
        let mut csv = String::from("t_s,rss_kib,fds,sockets,requests\n");
        for s in samples.iter().chain([&after]) {
            csv.push_str(&format!(
                "{:.1},{},{},{},{}\n",
                s.t, s.rss_kib, s.fds, s.sockets, s.requests
            ));
        }
        std::fs::write(out, csv).unwrap();
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let third = samples.len() / 3;
    let max_rss = |s: &[Sample]| s.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let middle = max_rss(&samples[third..2 * third]);
    let last = max_rss(&samples[2 * third..]);
    println!(
        "soak: {} requests, {} socket frames, {} leaks, {} 5xx, {} unexpected, {} uploads short; \
         RSS max middle third {middle} KiB, last third {last} KiB; fds {} -> {}, sockets {} -> {} (idle)",
        get(&tally.requests),
        get(&tally.frames),
        get(&tally.leaks),
        get(&tally.server_errors),
        get(&tally.unexpected),
        get(&tally.lost_bytes),
        baseline.fds,
        after.fds,
        baseline.sockets,
        after.sockets,
    );
    assert!(
        get(&tally.requests) > 0 && get(&tally.frames) > 0,
        "no traffic"
    );
    assert_eq!(get(&tally.leaks), 0, "foreign items leaked");
    assert_eq!(get(&tally.server_errors), 0, "5xx answers");
    assert_eq!(get(&tally.unexpected), 0, "unexpected answers");
    assert_eq!(get(&tally.lost_bytes), 0, "upload bytes lost");
    assert!(
        last <= middle + middle / 10 + 4096,
        "RSS still growing: {middle} KiB -> {last} KiB"
    );
    assert!(
        after.fds <= baseline.fds + SLACK,
        "fds leaked: {} -> {}",
        baseline.fds,
        after.fds
    );
    assert!(
        after.sockets <= baseline.sockets + SLACK,
        "sockets leaked: {} -> {}",
        baseline.sockets,
        after.sockets
    );
    drop(child);
}
