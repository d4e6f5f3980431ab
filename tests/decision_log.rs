//! The decision log as an operator reads it (issue #19, item 3): a request value cannot forge a
//! line or a field, every value is capped, each line carries the request id the upstream got,
//! the client address and the caller's email, and denials can be kept while allows are dropped.

mod common;

use std::io::BufRead;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use invoke_guard::config::RawConfig;
use serde_json::json;

const ROUTES: &str = r#"
[[rule]]
id = "probe.forge"
methods = ["POST"]
path = "/api/v1/probe"
auth = "user"
require = ["board.write(body.board_id)"]

[[rule]]
id = "api.any"
methods = ["GET"]
path = "/api/v1/{*rest}"
auth = "user"
"#;

/// The text decision lines this test process wrote (one sink per process).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_env_filter("invoke_guard::decision=info")
            .init();
        invoke_guard::decisionlog::install(invoke_guard::decisionlog::Format::Text, move |l| {
            sink.lock().unwrap().extend_from_slice(l)
        });
        buf
    })
}

/// The captured lines that contain `needle`.
fn lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8(captured().lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The bare or quoted (still escaped) value of `key` in a text line.
fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 2..];
    match rest.strip_prefix('"') {
        Some(q) => {
            let bytes = q.as_bytes();
            let mut end = 0;
            while bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            q[..end].to_owned()
        }
        None => rest.split(' ').next().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn a_body_value_cannot_forge_a_decision_line_and_every_value_is_capped() {
    captured();
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    let bob = token_for(&manifest("6.14.2"), "bob");
    let forged = "x\n2026-11-29T20:26:05.123456Z  INFO invoke_guard::decision: rule_id=images.get \
                  user_id=\"admin\" outcome=\"allow\"";
    let r = send(
        "POST",
        &g.url("/api/v1/probe"),
        Some(&bob),
        Some(json!({ "board_id": forged })),
    )
    .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let all = String::from_utf8(captured().lock().unwrap().clone()).unwrap();
    // Every line is one of the guard's: none starts with the forged timestamp.
    assert!(
        all.lines()
            .all(|l| l.contains("  INFO invoke_guard::decision::")),
        "{all}"
    );
    assert!(!all.contains("\n2026-11-29T20:26:05.123456Z"), "{all}");
    let lines = lines_with("rule_id=probe.forge");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(field(line, "outcome"), "deny", "{line}");
    assert!(
        field(line, "facts").contains(r#"x\n2026-11-29T20:26:05.123456Z  INFO"#),
        "{line}"
    );

    // A 2 MB body value and a 50 KB unauthenticated path: lines of a few KiB, marked.
    let huge = "b".repeat(2 * 1024 * 1024);
    let r = send(
        "POST",
        &g.url("/api/v1/probe"),
        Some(&bob),
        Some(json!({ "board_id": huge })),
    )
    .await;
    assert_eq!(r.status, 404);
    let long_path = format!("/api/v1/{}", "p".repeat(50_000));
    let r = send("GET", &g.url(&long_path), None, None).await;
    assert_eq!(r.status, 401);
    let huge_line = lines_with("rule_id=probe.forge")
        .into_iter()
        .find(|l| l.contains("bbbb"))
        .expect("a line for the 2 MB value");
    let path_line = lines_with("pppppppp")
        .into_iter()
        .next()
        .expect("a line for the long path");
    for line in [&huge_line, &path_line] {
        assert!(line.len() < 4096, "{} bytes", line.len());
        assert!(line.contains("...[truncated "), "{line}");
    }
    assert_eq!(field(&path_line, "outcome"), "deny");
}

#[tokio::test]
async fn lines_carry_the_forwarded_request_id_the_client_and_the_email() {
    captured();
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let alice = token_for(&m, "alice");
    let up = mock(None).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    // A client that is no trusted proxy cannot choose its id.
    let r = send_with(
        "GET",
        &g.url("/api/v1/rid-untrusted"),
        Some(&alice),
        None,
        &[("x-request-id", "chosen-by-client")],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = lines_with("path=/api/v1/rid-untrusted")
        .pop()
        .expect("a line");
    let id = field(&line, "request_id");
    assert_ne!(id, "chosen-by-client");
    assert_eq!(up.last().unwrap().headers["x-request-id"], id.as_str());
    assert_eq!(field(&line, "client"), "127.0.0.1");
    assert_eq!(field(&line, "email"), "alice@example.com");
    assert_eq!(
        field(&line, "user_id"),
        m["users"]["alice"]["user_id"].as_str().unwrap()
    );
    assert_eq!(field(&line, "outcome"), "allow");

    // Behind a trusted proxy, its id is kept, logged and forwarded.
    let raw = RawConfig {
        trusted_proxies: vec!["127.0.0.1".into()],
        ..RawConfig::default()
    };
    let proxied = guard_with(ROUTES, &db.path, &up.url(), raw).await;
    let r = send_with(
        "GET",
        &proxied.url("/api/v1/rid-trusted"),
        Some(&alice),
        None,
        &[("x-request-id", "lb-7f3a")],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = lines_with("path=/api/v1/rid-trusted")
        .pop()
        .expect("a line");
    assert_eq!(field(&line, "request_id"), "lb-7f3a");
    assert_eq!(up.last().unwrap().headers["x-request-id"], "lb-7f3a");
    // A denial has the id too.
    let r = send("GET", &proxied.url("/api/v1/rid-denied"), None, None).await;
    assert_eq!(r.status, 401);
    let line = lines_with("path=/api/v1/rid-denied").pop().expect("a line");
    assert_eq!(field(&line, "request_id").len(), 33, "{line}");
    assert_eq!(field(&line, "email"), "-");
}

#[tokio::test]
async fn an_operator_keeps_denials_and_drops_allows() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let mut child = guard_command()
        .args([
            "serve",
            "--config",
            "/dev/null",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--upstream",
            &up.url(),
            "--routes",
        ])
        .arg(&routes)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .arg("--db")
        .arg(&db.path)
        .env("INVOKE_GUARD_LOG", "info,invoke_guard::decision::allow=off")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let started = rx
        .iter()
        .find(|l| l.contains("invoke-guard started"))
        .expect("a start line");
    let at = started.find("listen=").unwrap() + "listen=".len();
    let addr = started[at..].split_whitespace().next().unwrap().to_owned();
    let alice = token_for(&manifest("6.14.2"), "alice");
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(
        send("GET", &url("/api/v1/kept-allow"), Some(&alice), None)
            .await
            .status,
        200
    );
    assert_eq!(
        send("GET", &url("/api/v1/kept-deny"), None, None)
            .await
            .status,
        401
    );
    for sig in ["-TERM", "-INT"] {
        std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("invoke_guard::decision::deny:") && l.contains("/api/v1/kept-deny")),
        "{rest:#?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("/api/v1/kept-allow")),
        "{rest:#?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("invoke-guard stopped")),
        "other lines are kept: {rest:#?}"
    );
}
