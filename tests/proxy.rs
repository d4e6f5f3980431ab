//! The proxy mechanism through the running guard: canonical paths, smuggling, headers,
//! upstream failures, bodies, upgrades.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

const ROUTES: &str = r#"
# Everything under /api/v1/ for an authenticated user (mechanism tests only).
[[rule]]
id = "api.any"
methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
path = "/api/v1/{*rest}"
auth = "user"

[[rule]]
id = "open.any"
methods = ["GET"]
path = "/open/{*rest}"
auth = "public"

[[rule]]
id = "root"
methods = ["GET"]
path = "/"
auth = "public"

[[rule]]
id = "upper"
methods = ["GET"]
path = "/API/{*rest}"
auth = "public"

[[rule]]
id = "boards.list"
methods = ["GET"]
path = "/x/boards/"
auth = "public"

[[rule]]
id = "board_images.add"
methods = ["POST"]
path = "/x/board_images/"
auth = "user"
require = ["authenticated", "board.write(body.board_id)", "image.own(body.image_name)"]

[[rule]]
id = "download_queue"
methods = ["GET", "POST"]
path = "/x/download_queue/{*rest}"
auth = "public"
block = 404

[[rule]]
id = "socket"
methods = ["GET", "POST"]
path = "/ws/socket.io/"
auth = "socket"
"#;

async fn setup_with(responder: Option<Responder>) -> (DbCopy, Mock, Guard, Value, String) {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(responder).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    let m = manifest("6.14.2");
    let t = token_for(&m, "alice");
    (db, up, g, m, t)
}

async fn setup() -> (DbCopy, Mock, Guard, Value, String) {
    setup_with(None).await
}

#[tokio::test]
async fn canonicalization_corpus() {
    let (_db, up, g, _m, t) = setup().await;
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/canonical.tsv"
    ))
    .unwrap();
    let mut cases = 0;
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (input, expected) = line.split_once('\t').unwrap();
        // Route every input under the public catch-all when it is an API path, keeping the test
        // about canonicalization rather than authentication.
        let before = up.count();
        let req = format!(
            "GET {input} HTTP/1.1\r\nHost: guard.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(g.addr, req.as_bytes()).await;
        let status = raw_status(&reply);
        if expected == "400" {
            assert_eq!(status, 400, "{input:?} should be refused; got {reply:?}");
            assert_eq!(up.count(), before, "{input:?} reached the upstream");
        } else {
            assert_eq!(status, 200, "{input:?} should be forwarded; got {reply:?}");
            assert_eq!(up.last().unwrap().target, expected, "{input:?}");
            // Idempotence: the canonical form canonicalizes to itself.
            assert_eq!(
                invoke_guard::http::canonical::canonical_path(expected).unwrap(),
                expected
            );
        }
        cases += 1;
    }
    assert!(cases > 40);
}

#[tokio::test]
async fn no_rule_is_404_json_and_not_forwarded() {
    let (_db, up, g, _m, t) = setup().await;
    for (method, path) in [
        ("GET", "/nothing/here"),
        ("DELETE", "/"),
        ("GET", "/api"),
        ("PUT", "/open/x"),
    ] {
        let r = send(method, &g.url(path), Some(&t), None).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.json(), json!({"detail": "Not Found"}));
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn trailing_slash_gets_fastapi_redirect_not_a_forward() {
    let (_db, up, g, _m, _t) = setup().await;
    let r = send("GET", &g.url("/x/boards?all=true"), None, None).await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers["location"], "/x/boards/?all=true");
    assert_eq!(up.count(), 0);
    let r = send("GET", &g.url("/x/boards/"), None, None).await;
    assert_eq!(r.status, 200);
    // A case variant is a different path (Starlette is case-sensitive): no rule, 404.
    let r = send("GET", &g.url("/X/boards/"), None, None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn blocked_rule_answers_locally() {
    let (_db, up, g, _m, _t) = setup().await;
    let r = send("GET", &g.url("/x/download_queue/i/1"), None, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn spoofable_and_hop_by_hop_headers_are_stripped_and_forwarding_set() {
    let (_db, up, g, _m, t) = setup().await;
    let r = send_with(
        "GET",
        &g.url("/api/v1/x"),
        Some(&t),
        None,
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-user-id", "admin"),
            ("x.user.id", "admin"),
            ("x-remote-user", "admin"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("x-keep-me", "1"),
            (
                "cookie",
                "a=1; invoke_guard_session=zzz; invokeai_media_token=yyy",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = up.last().unwrap().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-forwarded-host").is_some());
    for gone in [
        "x_forwarded_for",
        "forwarded",
        "x-real-ip",
        "x-user-id",
        "x.user.id",
        "x-remote-user",
        "x-drop-me",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(h["x-keep-me"], "1");
    assert_eq!(h["cookie"], "a=1");
}

#[tokio::test]
async fn public_routes_drop_credentials() {
    let (_db, up, g, _m, t) = setup().await;
    let r = send("GET", &g.url("/open/thing"), Some(&t), None).await;
    assert_eq!(r.status, 200);
    assert!(up.last().unwrap().headers.get("authorization").is_none());
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = guard(ROUTES, &db.path, &format!("http://{dead}")).await;
    let r = send("GET", &g.url("/open/x"), None, None).await;
    assert_eq!(r.status, 502);
    assert!(!r.detail().is_empty());
}

#[tokio::test]
async fn upstream_timeout_is_504_json() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    // An upstream that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let raw_cfg: invoke_guard::config::RawConfig =
        toml::from_str("[limits]\nupstream_response_timeout_ms = 300\n").unwrap();
    let g = guard_with(ROUTES, &db.path, &format!("http://{addr}"), raw_cfg).await;
    let r = send("GET", &g.url("/open/x"), None, None).await;
    assert_eq!(r.status, 504);
    assert!(!r.detail().is_empty());
}

#[tokio::test]
async fn body_checks_read_json_and_oversize_is_413() {
    let (_db, up, g, m, t) = setup().await;
    let alice_public = m["boards"]["alice_public"]["board_id"].as_str().unwrap();
    let alice_img = m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap();
    let bob_img = m["images"]["bob_uncat_1"]["image_name"].as_str().unwrap();
    let ok = send(
        "POST",
        &g.url("/x/board_images/"),
        Some(&t),
        Some(json!({"board_id": alice_public, "image_name": alice_img})),
    )
    .await;
    assert_eq!(ok.status, 200);
    let seen = up.last().unwrap();
    let forwarded: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        forwarded["image_name"], alice_img,
        "the buffered body is forwarded intact"
    );
    let n = up.count();
    let denied = send(
        "POST",
        &g.url("/x/board_images/"),
        Some(&t),
        Some(json!({"board_id": alice_public, "image_name": bob_img})),
    )
    .await;
    assert_eq!(denied.status, 403);
    let missing = send(
        "POST",
        &g.url("/x/board_images/"),
        Some(&t),
        Some(json!({"image_name": alice_img})),
    )
    .await;
    assert_eq!(missing.status, 422);
    let bad_json = send_with(
        "POST",
        &g.url("/x/board_images/"),
        Some(&t),
        None,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(bad_json.status, 422);
    assert_eq!(up.count(), n, "denied requests must not reach the upstream");
    // Over the limit: 413, declared or streamed.
    let raw_cfg: invoke_guard::config::RawConfig =
        toml::from_str("[limits]\nmax_body_bytes = 64\n").unwrap();
    let db2 = copy_fixture("invokeai-6.14.2-rich.db");
    let g2 = guard_with(ROUTES, &db2.path, &up.url(), raw_cfg).await;
    let big = json!({"board_id": alice_public, "image_name": "x".repeat(200)});
    let r = send("POST", &g2.url("/x/board_images/"), Some(&t), Some(big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), n);
}

#[tokio::test]
async fn refreshed_tokens_are_reminted_with_current_role() {
    let m = manifest("6.14.2");
    let secret = m["jwt"]["secret"].as_str().unwrap().to_owned();
    // The upstream (like 6.13) refreshes from the stale claims it was given.
    let mut stale = claims_for(&m, "erin");
    stale["is_admin"] = json!(true);
    let stale_token = sign(&stale, &secret);
    let st = stale_token.clone();
    let responder: Responder = Arc::new(move |_| {
        let mut r = ok_json(json!({"ok": true}));
        r.headers_mut()
            .insert("x-refreshed-token", st.parse().unwrap());
        r
    });
    let (_db, _up, g, _m, _t) = setup_with(Some(responder)).await;
    let r = send(
        "POST",
        &g.url("/api/v1/anything"),
        Some(&stale_token),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    let refreshed = r.headers["x-refreshed-token"].to_str().unwrap();
    let (claims, _) = invoke_guard::identity::verify(refreshed, &secret).unwrap();
    assert_eq!(claims["is_admin"], json!(false));
}

#[tokio::test]
async fn forged_refreshed_token_is_dropped() {
    let responder: Responder = Arc::new(|_| {
        let mut r = ok_json(json!({"ok": true}));
        r.headers_mut()
            .insert("x-refreshed-token", "not.a.token".parse().unwrap());
        r
    });
    let (_db, _up, g, _m, t) = setup_with(Some(responder)).await;
    let r = send(
        "POST",
        &g.url("/api/v1/anything"),
        Some(&t),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-refreshed-token").is_none());
}

fn switching() -> Responder {
    Arc::new(|seen| {
        if seen.headers.get("upgrade").is_some() {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r
        } else {
            ok_json(json!({"upgrade": false}))
        }
    })
}

const WS_REQUEST: &str = "GET /ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn the_socket_mount_is_terminated_by_the_guard_never_tunneled() {
    let (_db, up, g, _m, _t) = setup_with(Some(switching())).await;
    // The guard answers the upgrade itself (identity comes with CONNECT: tests/socketio.rs); no
    // byte of it reaches the HTTP upstream, whatever the upstream would have answered.
    let anonymous = raw(g.addr, format!("{WS_REQUEST}\r\n").as_bytes()).await;
    assert_eq!(raw_status(&anonymous), 101, "{anonymous}");
    assert!(!anonymous
        .to_ascii_lowercase()
        .contains("permessage-deflate"));
    let polling = send_with(
        "GET",
        &g.url("/ws/socket.io/?EIO=4&transport=polling"),
        None,
        None,
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!(polling.status, 200);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upgrade_headers_are_not_forwarded_on_ordinary_routes() {
    let (_db, up, g, _m, t) = setup_with(Some(switching())).await;
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    let reply = raw(g.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&reply), 200);
    assert!(up.last().unwrap().headers.get("upgrade").is_none());
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_not_forwarded() {
    let (_db, up, g, _m, t) = setup().await;
    let auth = format!("Authorization: Bearer {t}\r\n");
    let cases = [
        ("CL+TE", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE+CL", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n")),
        ("duplicate CL", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}")),
        ("conflicting CL", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}")),
        ("CL list", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 2, 2\r\n\r\n{{}}")),
        ("TE not chunked", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Transfer-Encoding: gzip\r\n\r\n{{}}")),
        ("TE obfuscated", format!("POST /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n")),
        ("oversized headers", format!("GET /api/v1/x HTTP/1.1\r\nHost: g\r\n{auth}X-Big: {}\r\n\r\n", "a".repeat(200_000))),
    ];
    for (name, req) in cases {
        let reply = raw(g.addr, req.as_bytes()).await;
        let status = raw_status(&reply);
        assert!(
            status == 400 || status == 431 || status == 0,
            "{name}: got {reply:?}"
        );
        assert_eq!(up.count(), 0, "{name} reached the upstream");
    }
    // The guard is still healthy afterwards.
    let r = send("GET", &g.url("/api/v1/x"), Some(&t), None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn requests_pipelined_behind_a_desync_are_never_forwarded() {
    // Each stream is one write: a first request whose framing a scanner could misread, then a
    // request with duplicate equal Content-Lengths (which hyper merges silently, so only the raw
    // byte scanner sees it). The second one must never reach InvokeAI.
    let (_db, up, g, _m, t) = setup().await;
    let auth = format!("Authorization: Bearer {t}\r\n");
    let smuggled = format!(
        "POST /api/v1/second HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let cases = [
        // Reliability item 10: trailer lines end at CRLF only (`X-T:\n` is one line with ` 1`).
        ("bare-LF trailer", format!("POST /api/v1/first HTTP/1.1\r\nHost: g\r\n{auth}Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\nX-T:\n\r\n 1\r\n\r\n{smuggled}")),
        // A refused CONNECT closes the connection.
        ("after CONNECT", format!("CONNECT g:443 HTTP/1.1\r\nHost: g:443\r\n{auth}\r\n{smuggled}")),
        // A head the scanner cannot parse refuses the connection instead of ending the scan.
        ("after junk", format!("GET /api/v1/first HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 1\r\n\r\nx\x01junk\r\n\r\n{smuggled}")),
    ];
    for (name, req) in cases {
        let reply = raw(g.addr, req.as_bytes()).await;
        assert!(raw_status(&reply) >= 400, "{name}: {reply:?}");
        let forwarded: Vec<String> = up.requests().into_iter().map(|s| s.target).collect();
        assert!(
            !forwarded.iter().any(|t| t.contains("/second")),
            "{name}: the pipelined request reached the upstream: {forwarded:?}"
        );
    }
    let r = send("GET", &g.url("/api/v1/x"), Some(&t), None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn database_gone_means_503_never_forward() {
    let (db, up, g, m, t) = setup().await;
    let bob = token_for(&m, "bob");
    // Warm the cache with a request that needs facts.
    assert_eq!(
        send("GET", &g.url("/api/v1/x"), Some(&t), None)
            .await
            .status,
        200
    );
    std::fs::remove_file(&db.path).unwrap();
    // Wait (bounded) for the guard's own signal that the database is unavailable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never noticed the missing database"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let n = up.count();
    for token in [&t, &bob] {
        let r = send("GET", &g.url("/api/v1/x"), Some(token), None).await;
        assert_eq!(r.status, 503);
        assert!(
            !r.detail().contains(db.path.to_str().unwrap()),
            "503 must not leak paths"
        );
    }
    assert_eq!(up.count(), n);
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended_untrusted_is_replaced() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let raw_cfg: invoke_guard::config::RawConfig =
        toml::from_str("trusted_proxies = [\"127.0.0.1\"]\n").unwrap();
    let g = guard_with(ROUTES, &db.path, &up.url(), raw_cfg).await;
    let hdrs = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "invoke.example"),
    ];
    assert_eq!(
        send_with("GET", &g.url("/open/x"), None, None, &hdrs)
            .await
            .status,
        200
    );
    let h = up.last().unwrap().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "invoke.example");
    // The same request from an untrusted peer (default config) loses the client's values.
    let (_db2, up2, g2, _m, _t) = setup().await;
    assert_eq!(
        send_with("GET", &g2.url("/open/x"), None, None, &hdrs)
            .await
            .status,
        200
    );
    let h = up2.last().unwrap().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_ne!(h["x-forwarded-host"], "invoke.example");
}

#[tokio::test]
async fn trusted_proxies_take_cidr_ranges() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let hdrs = [("x-forwarded-for", "203.0.113.7")];
    for (ranges, kept) in [
        ("[\"127.0.0.0/8\"]", true),
        ("[\"10.0.0.0/8\", \"::1/128\"]", false),
    ] {
        let up = mock(None).await;
        let raw_cfg: invoke_guard::config::RawConfig =
            toml::from_str(&format!("trusted_proxies = {ranges}\n")).unwrap();
        let g = guard_with(ROUTES, &db.path, &up.url(), raw_cfg).await;
        send_with("GET", &g.url("/open/x"), None, None, &hdrs).await;
        let h = up.last().unwrap().headers;
        let want = if kept {
            "203.0.113.7, 127.0.0.1"
        } else {
            "127.0.0.1"
        };
        assert_eq!(h["x-forwarded-for"], want, "{ranges}");
    }
}

#[tokio::test]
async fn reload_swaps_whole_tables_and_keeps_the_last_good_one() {
    let (_db, _up, g, _m, t) = setup().await;
    assert_eq!(send("GET", &g.url("/open/x"), None, None).await.status, 200);
    let path = g.state.routes_path.clone();
    // A broken file is refused: the running table stays.
    std::fs::write(&path, "[[rule]]\nid = \"broken\"\n").unwrap();
    assert!(g.state.reload_routes().is_err());
    assert_eq!(send("GET", &g.url("/open/x"), None, None).await.status, 200);
    // A valid file that covers fewer endpoints is refused unless it says so; then it replaces the
    // table as a whole.
    let only = "[[rule]]\nid = \"only\"\nmethods = [\"GET\"]\npath = \"/api/v1/{*rest}\"\nauth = \"user\"\n";
    std::fs::write(&path, only).unwrap();
    assert!(g.state.reload_routes().is_err());
    assert_eq!(send("GET", &g.url("/open/x"), None, None).await.status, 200);
    std::fs::write(&path, format!("allow_coverage_loss = true\n{only}")).unwrap();
    assert_eq!(g.state.reload_routes().unwrap(), 1);
    assert_eq!(send("GET", &g.url("/open/x"), None, None).await.status, 404);
    assert_eq!(
        send("GET", &g.url("/api/v1/x"), Some(&t), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn admin_endpoints_report_readiness_and_metrics() {
    let (db, _up, g, _m, t) = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(invoke_guard::server::admin::run(
        listener,
        g.state.clone(),
        std::future::pending(),
    ));
    let url = |p: &str| format!("http://{admin}{p}");
    assert_eq!(send("GET", &url("/healthz"), None, None).await.status, 200);
    assert_eq!(send("GET", &url("/readyz"), None, None).await.status, 200);
    assert_eq!(
        send("GET", &g.url("/api/v1/x"), Some(&t), None)
            .await
            .status,
        200
    );
    let metrics = send("GET", &url("/metrics"), None, None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("invoke_guard_authz_decisions_total{decision=\"allow\",rule_id=\"api.any\",check=\"all\",reason=\"-\"}"), "{text}");
    assert!(!text.contains(&t), "metrics must never carry tokens");
    // InvokeAI gone: not ready, and the body says which address failed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = guard(ROUTES, &db.path, &format!("http://{closed}")).await;
    let dead_admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/readyz", dead_admin.local_addr().unwrap());
    tokio::spawn(invoke_guard::server::admin::run(
        dead_admin,
        dead.state.clone(),
        std::future::pending(),
    ));
    let r = send("GET", &dead_url, None, None).await;
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains(&format!("upstream unreachable ({closed}")),
        "{body}"
    );
    std::fs::remove_file(&db.path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while send("GET", &url("/readyz"), None, None).await.status == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed 200 without a database"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
