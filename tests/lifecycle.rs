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
            // The socket below never authenticates (its CONNECTs are refused on purpose): on a
            // loaded machine the default 5 s for an unauthenticated session could close it
            // before the drain does, which is not what this test is about.
            socket_connect_timeout_ms: Some(600_000),
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

fn settings_for(
    dir: &std::path::Path,
    db: &std::path::Path,
    upstream: std::net::SocketAddr,
) -> invoke_guard::config::Settings {
    config::settings(
        RawConfig::default(),
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream}")),
            db: Some(db.to_owned()),
            routes: Some(dir.join("routes.toml")),
            ledger: Some(dir.join("ledger.db")),
            ..Overrides::default()
        },
    )
    .unwrap()
}

async fn admin_of(state: &std::sync::Arc<AppState>) -> std::net::SocketAddr {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    tokio::spawn(invoke_guard::server::admin::run(
        admin,
        state.clone(),
        std::future::pending(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_broken_routes_file_serves_the_last_good_table_loudly() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), &db.path, upstream);
    std::fs::write(&settings.routes, ROUTES).unwrap();
    let first = AppState::from_settings(&settings).unwrap();
    let rules = first.routes.load().rules().len();
    assert!(first.fallback().is_none());
    first.facts.shutdown();
    drop(first);
    assert!(invoke_guard::state::last_good_path(&settings.ledger).is_file());

    // A bad ConfigMap edit, then a restart (strategy: Recreate): the guard still starts.
    std::fs::write(&settings.routes, "[[rule]]\nid = \"broken\"\n").unwrap();
    let state = AppState::from_settings(&settings).expect("serves the last good table");
    assert_eq!(state.routes.load().rules().len(), rules);
    let f = state.fallback().expect("the fallback is recorded");
    assert!(f.error.contains("missing field"), "{}", f.error);
    // The table enforces as before: the guard answers, the rule needs a user.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            invoke_guard::server::run(listener, state.clone(), None, std::future::pending());
        tokio::spawn(server);
        addr
    };
    let api = format!("http://{addr}/api/v1/x");
    assert_eq!(send("GET", &api, None, None).await.status, 401);
    let t = token_for(&manifest("6.14.2"), "alice");
    assert_eq!(send("GET", &api, Some(&t), None).await.status, 200);
    // Loud: readiness says so, and the gauge is 1.
    let admin = admin_of(&state).await;
    let ready = send("GET", &format!("http://{admin}/readyz"), None, None).await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 200, "{body}");
    assert!(
        body.contains("DEGRADED: serving the last good route table")
            && body.contains("missing field"),
        "{body}"
    );
    let metrics = send("GET", &format!("http://{admin}/metrics"), None, None).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("invoke_guard_routes_fallback 1"),
        "{metrics}"
    );

    // The file is fixed: it loads again and the fallback ends.
    std::fs::write(&settings.routes, ROUTES).unwrap();
    state.reload_routes().unwrap();
    assert!(state.fallback().is_none());
    let ready = send("GET", &format!("http://{admin}/readyz"), None, None).await;
    assert!(!String::from_utf8_lossy(&ready.body).contains("DEGRADED"));
    state.facts.shutdown();
}

#[tokio::test]
async fn a_broken_routes_file_without_a_table_saved_for_it_still_refuses_to_start() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), &db.path, upstream);
    std::fs::write(&settings.routes, "[[rule]]\nid = \"broken\"\n").unwrap();
    let e = AppState::from_settings(&settings)
        .err()
        .expect("nothing to serve");
    assert!(e.to_string().contains("no last good route table"), "{e}");
    // A table saved for another routes file does not stand in for this one.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut elsewhere = settings_for(&other, &db.path, upstream);
    elsewhere.ledger = settings.ledger.clone();
    std::fs::write(&elsewhere.routes, ROUTES).unwrap();
    let ok = AppState::from_settings(&elsewhere).unwrap();
    ok.facts.shutdown();
    let e = AppState::from_settings(&settings)
        .err()
        .expect("not this file's table");
    assert!(e.to_string().contains("was saved for routes"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_get_and_head_only_and_drains_on_shutdown() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), &db.path, upstream);
    std::fs::write(&settings.routes, ROUTES).unwrap();
    let state = AppState::from_settings(&settings).unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(invoke_guard::server::admin::run(
        admin,
        state.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("http://{addr}{path}");
        assert_eq!(send("GET", &url, None, None).await.status, 200, "{path}");
        assert_eq!(send("HEAD", &url, None, None).await.status, 200, "{path}");
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = send(method, &url, None, None).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.headers["allow"], "GET, HEAD");
        }
    }
    // A kept-alive connection (a scraper's) is closed by the drain, and the loop ends.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the admin loop ends after its drain")
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed by the drain");
    assert!(n.is_ok());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    state.facts.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_bounds_its_connections_and_idle_heads() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(dir.path(), &db.path, upstream);
    std::fs::write(&settings.routes, ROUTES).unwrap();
    settings.limits.header_read_timeout = Duration::from_millis(300);
    let state = AppState::from_settings(&settings).unwrap();
    let addr = admin_of(&state).await;
    // Idle connections up to the limit hold their slots; the next one is closed unanswered.
    let mut idle = Vec::new();
    for _ in 0..invoke_guard::server::admin::MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), over.read_to_end(&mut got))
        .await
        .expect("the connection over the limit is closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // An idle connection that never sends its head is closed (header_read_timeout).
    let mut first = idle.remove(0);
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), first.read_to_end(&mut got))
        .await
        .expect("an idle admin connection is closed");
    drop(idle);
    // With the slots free again, the listener answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        if read_head(&mut s).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.facts.shutdown();
}
