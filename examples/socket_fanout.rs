//! Socket.IO fan-out on loopback: N websocket clients through the guard, a mock Socket.IO upstream
//! emitting E queue events (QISC-sized, owned by alice) to every upstream connection; measures
//! how long until every client got its copy (alice and admins whole, everyone else sanitized) and
//! the guard's CPU per delivered event.
//!
//! `cargo run --release --example socket_fanout -- [SOCKETS] [EVENTS]`   (default 200 × 200)
//!
//! Everything runs in one process on one runtime thread per part: the guard on its own runtime
//! (one worker: the per-core figure), the mock upstream and the clients on another. The guard's
//! CPU is read from its runtime thread's /proc stat, so load generation is not counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

fn repo(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// CPU seconds (user + system) of one thread of this process.
fn thread_cpu(tid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn gettid() -> i32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sockets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/invokeai-6.14.2-rich.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile_dir();
    let db = dir.join("invokeai.db");
    std::fs::copy(repo("tests/fixtures/invokeai-6.14.2-rich.db"), &db).unwrap();

    // The mock upstream and the clients.
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (emit, _) = broadcast::channel::<String>(events * 2 + 16);
    let upstream = load.block_on(mock_upstream(emit.clone()));

    // The guard, on its own one-thread runtime.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let guard_tid = Arc::new(AtomicUsize::new(0));
    let tid2 = guard_tid.clone();
    let routes = repo("routes.toml");
    let ledger = dir.join("ledger.db");
    std::thread::spawn(move || {
        tid2.store(gettid() as usize, Ordering::Release);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let settings = invoke_guard::config::settings(
                invoke_guard::config::RawConfig::default(),
                invoke_guard::config::Overrides {
                    listen: Some("127.0.0.1:0".into()),
                    admin_listen: Some("off".into()),
                    upstream: Some(format!("http://{upstream}")),
                    db: Some(db),
                    routes: Some(routes),
                    ledger: Some(ledger),
                    ..Default::default()
                },
            )
            .unwrap();
            let state = invoke_guard::state::AppState::from_settings(&settings).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            invoke_guard::server::run(listener, state, None, std::future::pending())
                .await
                .unwrap();
        });
    });
    let guard = addr_rx.recv().unwrap();
    let secret = manifest["jwt"]["secret"].as_str().unwrap().to_owned();
    let alice = manifest["users"]["alice"]["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    load.block_on(async move {
        let roles = ["alice", "bob", "carol", "admin"];
        let received = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for i in 0..sockets {
            let role = roles[i % roles.len()];
            let u = &manifest["users"][role];
            let mut claims = serde_json::Map::new();
            claims.insert("user_id".into(), u["user_id"].clone());
            claims.insert("email".into(), u["email"].clone());
            claims.insert("is_admin".into(), u["is_admin"].clone());
            claims.insert("exp".into(), json!(4_000_000_000u64));
            if u.get("token_epoch").is_some_and(|e| !e.is_null()) {
                claims.insert("token_epoch".into(), u["token_epoch"].clone());
                claims.insert("remember_me".into(), json!(false));
            }
            let token = invoke_guard::identity::sign(&claims, &secret);
            let url = format!("ws://{guard}/ws/socket.io/?EIO=4&transport=websocket");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            ws.next().await.unwrap().unwrap();
            ws.send(Message::text(format!("40{}", json!({"token": token}))))
                .await
                .unwrap();
            let ack = ws.next().await.unwrap().unwrap();
            assert!(ack.to_string().starts_with("40{"), "{ack}");
            ws.send(Message::text(r#"42["subscribe_queue",{"queue_id":"default"}]"#))
                .await
                .unwrap();
            let received = received.clone();
            clients.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if t.starts_with("42") {
                            received.fetch_add(1, Ordering::Relaxed);
                        } else if t.as_str() == "2" {
                            let _ = ws.send(Message::text("3")).await;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tid = guard_tid.load(Ordering::Acquire) as i32;
        let cpu0 = thread_cpu(tid);
        let started = Instant::now();
        for i in 0..events {
            let payload = json!({"queue_id": "default", "item_id": i, "batch_id": "6f1c8a4e-2a11-4a5e-9d5e-6c2b8f7e1a01",
                "origin": "canvas", "destination": "gallery", "user_id": alice, "status": "completed",
                "status_sequence": 3, "error_type": null, "error_message": null, "error_traceback": null,
                "created_at": "2026-11-29 10:00:00.000", "updated_at": "2026-11-29 10:00:05.000",
                "started_at": "2026-11-29 10:00:01.000", "completed_at": "2026-11-29 10:00:05.000",
                "session_id": "0b5b2c8e-7f1d-4e3a-9a4b-2d1c3e4f5a6b", "timestamp": 1795000000,
                "batch_status": {"queue_id": "default", "batch_id": "6f1c8a4e", "origin": "canvas",
                    "destination": "gallery", "pending": 0, "in_progress": 0, "completed": 1, "failed": 0,
                    "canceled": 0, "total": 1},
                "queue_status": {"queue_id": "default", "item_id": i, "batch_id": "6f1c8a4e",
                    "session_id": "0b5b2c8e", "pending": 3, "in_progress": 1, "completed": 17, "failed": 0,
                    "canceled": 0, "total": 21, "user_pending": null, "user_in_progress": null}});
            let _ = emit.send(format!("42{}", json!(["queue_item_status_changed", payload])));
        }
        let want = sockets * events;
        let deadline = Instant::now() + Duration::from_secs(120);
        while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = started.elapsed();
        let cpu = thread_cpu(tid) - cpu0;
        let got = received.load(Ordering::Relaxed);
        println!("sockets {sockets}, events {events}, deliveries {got}/{want}");
        println!(
            "wall {:.3} s: {:.0} deliveries/s; guard CPU {:.3} s: {:.2} µs per delivery, {:.0} deliveries per CPU-second",
            wall.as_secs_f64(),
            got as f64 / wall.as_secs_f64(),
            cpu,
            cpu * 1e6 / got.max(1) as f64,
            got as f64 / cpu.max(1e-9),
        );
        for c in clients {
            c.abort();
        }
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("invoke-guard-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Socket.IO upstream that accepts every CONNECT and relays `emit` to every connection.
async fn mock_upstream(emit: broadcast::Sender<String>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut rx = emit.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let open = r#"0{"sid":"up","upgrades":[],"pingTimeout":20000,"pingInterval":25000,"maxPayload":1000000}"#;
                if ws.send(Message::text(open)).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Text(t))) if t.starts_with("40") => {
                                let _ = ws.send(Message::text(r#"40{"sid":"s"}"#)).await;
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        frame = rx.recv() => match frame {
                            Ok(f) => { if ws.send(Message::text(f)).await.is_err() { return; } }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => return,
                        },
                    }
                }
            });
        }
    });
    addr
}
