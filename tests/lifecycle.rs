//! Rolling updates: on a termination request `/readyz` turns 503 while the listeners keep
//! serving for the configured delay; then the drain starts and upgraded tunnels are closed.

mod common;

use std::time::Duration;

use common::*;
use invoke_guard::config::{self, Overrides, RawConfig, RawLimits};
use invoke_guard::server::lifecycle::{self, Request};
use invoke_guard::state::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUTES: &str = r#"
[[rule]]
id = "api.any"
methods = ["GET"]
path = "/api/v1/{*rest}"
auth = "user"

[[rule]]
id = "socket"
methods = ["GET"]
path = "/ws/socket.io/"
auth = "socket"
"#;

/// An upstream that answers upgrades with 101 and then echoes, and anything else with 200.
async fn echo_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if head.to_ascii_lowercase().contains("upgrade: websocket") {
                    s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}").await;
                }
            });
        }
    });
    addr
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_turns_readiness_first_then_drains_and_closes_sockets() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let raw = RawConfig {
        limits: RawLimits {
            // Far longer than the test: only the second request may end the delay.
            shutdown_delay_ms: Some(600_000),
            ..RawLimits::default()
        },
        ..RawConfig::default()
    };
    let settings = config::settings(
        raw,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream}")),
            db: Some(db.path.clone()),
            routes: Some(routes),
            ledger: Some(dir.path().join("ledger.db")),
            ..Overrides::default()
        },
    )
    .unwrap();
    let state = AppState::from_settings(&settings).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    tokio::spawn(invoke_guard::server::admin::run(
        admin,
        state.clone(),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    let mut run_stop = stop_rx;
    let server = tokio::spawn(invoke_guard::server::run(
        listener,
        state.clone(),
        None,
        async move {
            let _ = run_stop.wait_for(|s| *s).await;
        },
    ));
    let (requests, requests_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(lifecycle::run(state.clone(), requests_rx, stop_tx));

    let t = token_for(&manifest("6.14.2"), "alice");
    let readyz = format!("http://{admin_addr}/readyz");
    let api = format!("http://{addr}/api/v1/x");
    assert_eq!(send("GET", &readyz, None, None).await.status, 200);

    // An open Socket.IO websocket (terminated by the guard). A rejected CONNECT proves it is
    // served: the guard answers it itself.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/ws/socket.io/?EIO=4&transport=websocket"
    ))
    .await
    .unwrap();
    let open = ws.next().await.unwrap().unwrap().to_string();
    assert!(open.starts_with("0{"), "{open}");
    let alive = |mut ws: tokio_tungstenite::WebSocketStream<_>| async move {
        ws.send(Message::text(r#"40{"token":"x.y.z"}"#))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap().to_string();
        assert!(reply.starts_with("44"), "{reply}");
        ws
    };
    let ws = alive(ws).await;

    requests.send(Request::Terminate("SIGTERM")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send("GET", &readyz, None, None).await;
        if r.status == 503 {
            assert!(String::from_utf8_lossy(&r.body).contains("shutting down"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving during the delay: new connections, and the open socket.
    assert_eq!(send("GET", &api, Some(&t), None).await.status, 200);
    let mut ws = alive(ws).await;
    assert!(!server.is_finished());

    // The second request ends the delay: the drain starts, the socket gets `41` and is closed.
    requests.send(Request::Terminate("SIGTERM")).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the drain ends within the grace")
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the socket is closed by shutdown")
        {
            Some(Ok(Message::Text(t))) => seen.push(t.to_string()),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(seen.iter().any(|t| t == "41"), "{seen:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after the drain"
    );
}
