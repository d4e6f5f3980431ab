//! Abuse limits: what one hostile client can cost, each bounded by a documented limit with a
//! clear answer, and the guard still serving others afterwards.
//!
//! Limits already proven elsewhere (listed in docs/reliability.md): slow bodies
//! (`defects.rs::stalled_*`), connection slots and accept errors under a flood
//! (`defects.rs::stalled_bodies_do_not_hold_connection_slots`, `accept_errors_back_off_*`,
//! `default_connection_limit_fits_the_fd_limit`), oversized heads and smuggling
//! (`proxy.rs::smuggling_attempts_are_refused_and_not_forwarded`), oversized bodies
//! (`proxy.rs::body_checks_read_json_and_oversize_is_413`,
//! `defects.rs::public_body_over_the_public_limit_is_413_before_forwarding`), body memory
//! (`memory.rs`), decompression bombs (`defects.rs`), Socket.IO sessions without identity
//! (`socketio.rs::sessions_are_capped_without_identity`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct World {
    _db: DbCopy,
    up: Mock,
    g: Guard,
    m: Value,
}

async fn world(config: &str) -> World {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let up = mock(None).await;
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw_config(config)).await;
    World { _db: db, up, g, m }
}

impl World {
    fn token(&self, role: &str) -> String {
        token_for(&self.m, role)
    }

    /// The guard still answers an ordinary allowed request.
    async fn still_serving(&self) {
        let r = send(
            "GET",
            &self.g.url("/api/v1/auth/me"),
            Some(&self.token("alice")),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "the guard stopped serving");
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_timeout() {
    // limits.header_read_timeout_ms: a head trickling in (slowloris) is closed, never served.
    let w = world("[limits]\nheader_read_timeout_ms = 500\n").await;
    let mut s = connect(w.g.addr).await;
    s.write_all(b"GET /api/v1/auth/me HTTP/1.1\r\nHost: g\r\nX-Slow: ")
        .await
        .unwrap();
    let reply = closed_within(&mut s, Duration::from_secs(15))
        .await
        .expect("a trickling head kept its connection open");
    let status = raw_status(&reply);
    assert!(status == 0 || status == 408, "answered {status}");
    assert_eq!(w.up.count(), 0);
    w.still_serving().await;
}

#[tokio::test]
async fn idle_connections_are_bounded_and_closed() {
    // limits.max_connections: connections beyond it are closed at once; idle ones (no request
    // ever sent) are closed at the header timeout, so they cannot hold the slots for long.
    let w = world("[limits]\nmax_connections = 8\nheader_read_timeout_ms = 500\n").await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect(w.g.addr).await);
    }
    // Give the accept loop time to take all eight (a bounded wait for its state, not a
    // threshold on how fast it is).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = connect(w.g.addr).await;
    let _ = extra
        .write_all(b"GET /api/v1/auth/me HTTP/1.1\r\nHost: g\r\n\r\n")
        .await;
    let reply = closed_within(&mut extra, Duration::from_secs(15))
        .await
        .expect("a connection over the limit was kept open");
    assert!(
        reply.is_empty() || raw_status(&reply) >= 400,
        "a connection over the limit was served"
    );
    for s in &mut idle {
        closed_within(s, Duration::from_secs(15))
            .await
            .expect("an idle connection was never closed");
    }
    drop(idle);
    // Idle after one request (keep-alive): closed at the header timeout as well.
    let mut kept = connect(w.g.addr).await;
    let head = format!(
        "GET /api/v1/auth/me HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {}\r\n\r\n",
        w.token("alice")
    );
    kept.write_all(head.as_bytes()).await.unwrap();
    let reply = closed_within(&mut kept, Duration::from_secs(15))
        .await
        .expect("an idle keep-alive connection was never closed");
    assert_eq!(raw_status(&reply), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(
            "GET",
            &w.g.url("/api/v1/auth/me"),
            Some(&w.token("alice")),
            None,
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn huge_heads_are_431_and_never_forwarded() {
    // limits.max_header_bytes (64 KiB) and hyper's 100-header cap.
    let w = world("").await;
    let t = w.token("alice");
    let big = format!(
        "GET /api/v1/auth/me HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many = format!(
        "GET /api/v1/auth/me HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for (name, head) in [("70 KiB header", big), ("150 headers", many)] {
        let reply = raw(w.g.addr, head.as_bytes()).await;
        let status = raw_status(&reply);
        assert!(status == 431 || status == 400, "{name}: {status}");
    }
    assert_eq!(w.up.count(), 0);
    w.still_serving().await;
}

#[tokio::test]
async fn huge_body_is_413_before_it_is_read_whole() {
    // limits.max_body_bytes: a declared length over the limit is refused before reading.
    let w = world("[limits]\nmax_body_bytes = 65536\n").await;
    let body = vec![b' '; 70 * 1024];
    let r = send_bytes(
        "POST",
        &w.g.url("/api/v1/board_images/"),
        Some(&w.token("alice")),
        body,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.detail(), "Request body too large");
    assert_eq!(w.up.count(), 0);
}

#[tokio::test]
async fn deeply_nested_json_is_bounded() {
    // serde_json's recursion limit (128 levels) applies to the whole body: to what a rule reads,
    // and to members it skips (checked by a scan before parsing; serde_json's own skipper is
    // iterative and unlimited, so 100 000 levels cost no stack either way). Deeper is 422.
    let w = world("").await;
    let t = w.token("alice");
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let board = w.m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    let image = w.m["images"]["alice_uncat_1"]["image_name"]
        .as_str()
        .unwrap();
    let post = |body: String| {
        let url = w.g.url("/api/v1/board_images/");
        let t = t.clone();
        async move {
            send_bytes(
                "POST",
                &url,
                Some(&t),
                body,
                &[("content-type", "application/json")],
            )
            .await
        }
    };
    for n in [129, 100_000] {
        let r = post(format!(
            r#"{{"board_id": {}, "image_name": "{image}"}}"#,
            deep(n)
        ))
        .await;
        assert_eq!(r.status, 422, "{n} levels in a read member");
        assert!(r.detail().contains("recursion limit"), "{}", r.detail());
    }
    // Issue #20 item 6: a skipped member nested this deep used to be forwarded.
    for n in [200, 100_000] {
        let r = post(format!(
            r#"{{"skipped": {}, "board_id": "{board}", "image_name": "{image}"}}"#,
            deep(n)
        ))
        .await;
        assert_eq!(r.status, 422, "{n} levels in a skipped member");
        assert!(r.detail().contains("recursion limit"), "{}", r.detail());
    }
    assert_eq!(w.up.count(), 0);
    let r = post(format!(
        r#"{{"skipped": {}, "board_id": "{board}", "image_name": "{image}"}}"#,
        deep(100)
    ))
    .await;
    assert_eq!(
        r.status, 200,
        "100 levels in a skipped member: {:?}",
        r.body
    );
    assert_eq!(w.up.count(), 1);
    w.still_serving().await;
}

fn form_with(boundary: &str, fields: usize, files: usize) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{}\r\n",
        json!({"name": "p", "type": "user", "preset_data": {"positive_prompt": "a", "negative_prompt": ""}})
    ));
    for i in 1..fields {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"
        ));
    }
    for i in 0..files {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"a{i}.png\"\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out.into_bytes()
}

#[tokio::test]
async fn many_multipart_parts_are_refused_at_starlettes_limits() {
    // 1000 fields and 1000 files, as Starlette's request.form(): more is 400, never forwarded.
    let w = world("").await;
    let t = w.token("alice");
    let ct = "multipart/form-data; boundary=flood";
    let url = w.g.url("/api/v1/style_presets/");
    for (fields, files, refused) in [
        (1000, 1, false),
        (1001, 1, true),
        (1, 1000, false),
        (1, 1001, true),
        (20_000, 0, true),
    ] {
        let before = w.up.count();
        let r = send_bytes(
            "POST",
            &url,
            Some(&t),
            form_with("flood", fields, files),
            &[("content-type", ct)],
        )
        .await;
        if refused {
            assert_eq!(r.status, 400, "{fields} fields, {files} files");
            assert!(r.detail().contains("more than 1000"), "{}", r.detail());
            assert_eq!(w.up.count(), before, "a part flood was forwarded");
        } else {
            assert_eq!(
                r.status, 200,
                "{fields} fields, {files} files: {:?}",
                r.body
            );
            assert_eq!(w.up.count(), before + 1);
        }
    }
}
