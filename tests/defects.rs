//! Regression tests for reported defects, through the running guard with the shipped routes:
//! compressed bodies (1), the ledger failing closed (2), denial of service (3), parser
//! differentials against Starlette/pydantic (4), and smaller ones (5). Each test fails without
//! its fix. Config keys newer than the harness are parsed from TOML at run time.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use invoke_guard::identity::{MEDIA_COOKIE, SESSION_COOKIE};

/// What a browser offers on every request.
const BROWSER: (&str, &str) = ("accept-encoding", "gzip, deflate, br");

/// A guard with the shipped routes over a copy of a rich fixture.
struct World {
    db: DbCopy,
    up: Mock,
    g: Guard,
    m: Value,
}

async fn world(version: &str, responder: Responder) -> World {
    world_with(version, responder, "").await
}

async fn world_with(version: &str, responder: Responder, config: &str) -> World {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let m = manifest(version);
    let up = mock(Some(responder)).await;
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw_config(config)).await;
    World { db, up, g, m }
}

impl World {
    fn token(&self, role: &str) -> String {
        token_for(&self.m, role)
    }

    fn id(&self, kind: &str, role: &str, field: &str) -> String {
        self.m[kind][role][field]
            .as_str()
            .unwrap_or_else(|| panic!("{kind}.{role}.{field} missing in the manifest"))
            .to_owned()
    }

    fn user(&self, role: &str) -> String {
        self.id("users", role, "user_id")
    }

    fn img(&self, role: &str) -> String {
        self.id("images", role, "image_name")
    }

    /// Send as `role` (`anon`: no token); the reply and whether the mock saw the request.
    async fn call(
        &self,
        method: &str,
        path: &str,
        role: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (Reply, bool) {
        let token = (role != "anon").then(|| self.token(role));
        let before = self.up.count();
        let r = send_with(method, &self.g.url(path), token.as_deref(), body, headers).await;
        (r, self.up.count() > before)
    }

    /// Like `call` with a raw body.
    async fn call_bytes(
        &self,
        method: &str,
        path: &str,
        role: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> (Reply, bool) {
        let token = (role != "anon").then(|| self.token(role));
        let before = self.up.count();
        let r = send_bytes(method, &self.g.url(path), token.as_deref(), body, headers).await;
        (r, self.up.count() > before)
    }

    fn ledger_path(&self) -> PathBuf {
        self.g.ledger_dir.path().join("ledger.db")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db.path).unwrap()
    }

    /// A workflow row as InvokeAI 6.12 writes it on create, created now (after the guard, and so
    /// its ledger, started: the short sleep keeps the millisecond timestamps apart).
    async fn insert_workflow(&self, id: &str) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.db()
            .execute(
                "INSERT INTO workflow_library (workflow_id, workflow) VALUES (?1, ?2)",
                [id, &workflow_json(id).to_string()],
            )
            .unwrap();
    }

    /// A 6.12 style preset row created now (6.12 stores every preset as `system`).
    async fn insert_preset(&self, id: &str) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.db()
            .execute(
                "INSERT INTO style_presets (id, name, preset_data, type) VALUES (?1, 'sp new', ?2, 'user')",
                [id, r#"{"positive_prompt": "p", "negative_prompt": ""}"#],
            )
            .unwrap();
    }
}

fn workflow_json(id: &str) -> Value {
    json!({"name": format!("wf {id}"), "author": "", "description": "", "version": "1.0.0",
        "contact": "", "tags": "", "notes": "", "exposedFields": [],
        "meta": {"version": "3.0.0", "category": "user"}, "nodes": [], "edges": [], "form": null, "id": id})
}

fn default_responder() -> Responder {
    Arc::new(|_| ok_json(json!({"ok": true})))
}

/// The request path without its query.
fn path_of(seen: &Seen) -> &str {
    seen.target.split('?').next().unwrap_or_default()
}

/// The test's chosen upstream behaviour, passed through the guard as a plain header.
fn case_of(seen: &Seen) -> &str {
    seen.headers
        .get("x-test-case")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list of names, got {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

fn uncategorized(m: &Value, owner: Option<&str>) -> BTreeSet<String> {
    m["images"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["board_id"].is_null() && owner.is_none_or(|o| i["owner"] == o))
        .map(|i| i["image_name"].as_str().unwrap().to_owned())
        .collect()
}

/// A multipart/form-data body; each part is (header lines, content).
fn form(boundary: &str, parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (headers, content) in parts {
        body.push_str(&format!("--{boundary}\r\n{headers}\r\n\r\n{content}\r\n"));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body
}

const DATA_PART: &str = "Content-Disposition: form-data; name=\"data\"";
const IMAGE_PART: &str =
    "Content-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png";

fn preset_data(kind: &str) -> String {
    json!({"name": "x", "positive_prompt": "p", "negative_prompt": "", "type": kind}).to_string()
}

#[test]
fn harness_gzip_helpers_round_trip() {
    let text = b"{\"workflow_id\": \"x\"}".repeat(5000);
    assert_eq!(gunzip(&gzip(&text)), text);
    assert_eq!(gunzip(&gzip(b"")), b"");
    let zeros = gunzip(&gzip_zeros(1000));
    assert_eq!(zeros.len(), 1 + 258 * 1000);
    assert!(zeros.iter().all(|b| *b == 0));
}

// === 1. compressed responses ===

async fn compressed_workflow_create(always_gzip: bool) {
    let id = "c0de0000-1111-4222-8333-444455556666";
    let responder: Responder = Arc::new(move |seen| match path_of(seen) {
        "/api/v1/workflows/" => {
            let body = json!({"workflow_id": id, "workflow": workflow_json(id)});
            if always_gzip || offers_gzip(seen) {
                gzip_json(&body)
            } else {
                ok_json(body)
            }
        }
        _ => ok_json(json!({"ok": true})),
    });
    let w = world("6.12.0", responder).await;
    w.insert_workflow(id).await;
    let create = json!({"workflow": workflow_json(id)});
    let (r, forwarded) = w
        .call(
            "POST",
            "/api/v1/workflows/",
            "alice",
            Some(create),
            &[BROWSER],
        )
        .await;
    assert!(forwarded);
    assert_eq!(r.status, 200, "{}", r.detail());
    if !always_gzip {
        // The guard must read this body: it offers no compression upstream.
        assert!(
            !offers_gzip(&w.up.last().unwrap()),
            "Accept-Encoding went upstream"
        );
    }
    let path = format!("/api/v1/workflows/i/{id}");
    let (r, forwarded) = w.call("GET", &path, "bob", None, &[]).await;
    assert!(
        !forwarded && r.status == 403,
        "bob read alice's new workflow: {}",
        r.status
    );
    // The owner was recorded (an unrecorded new workflow would be admin-only).
    let (r, forwarded) = w.call("GET", &path, "alice", None, &[]).await;
    assert!(forwarded, "alice denied her own workflow: {}", r.status);
}

#[tokio::test]
async fn compressed_workflow_create_records_owner() {
    compressed_workflow_create(false).await;
}

#[tokio::test]
async fn compressed_workflow_create_records_owner_when_upstream_always_gzips() {
    compressed_workflow_create(true).await;
}

#[tokio::test]
async fn undecodable_filtered_body_is_502_and_never_passed_on() {
    const SECRET: &[u8] = b"UPSTREAM-RAW-BYTES";
    // 1 + 258 * 260_000 zero bytes (about 64 MiB) in about 420 KiB.
    let bomb = Bytes::from(gzip_zeros(260_000));
    let responder: Responder = Arc::new(move |seen| {
        let with_secret = |prefix: &[u8]| [prefix, SECRET].concat();
        match case_of(seen) {
            "br" => encoded_json(with_secret(b"\x1b\x03\x00\xff"), "br"),
            "x-custom" => encoded_json(with_secret(b""), "x-custom"),
            "bad-gzip" => encoded_json(
                with_secret(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]),
                "gzip",
            ),
            "bad-deflate" => encoded_json(with_secret(&[0x78, 0x9c, 0xff]), "deflate"),
            "bomb" => encoded_json(bomb.clone(), "gzip"),
            _ => ok_json(json!({"ok": true})),
        }
    });
    let w = world("6.12.0", responder).await;
    let create = json!({"workflow": workflow_json("x")});
    for case in ["br", "x-custom", "bad-gzip", "bad-deflate", "bomb"] {
        let headers = [BROWSER, ("x-test-case", case)];
        let requests = [
            ("POST", "/api/v1/workflows/", "alice", Some(create.clone())),
            ("GET", "/api/v1/boards/none/image_names", "bob", None),
        ];
        for (method, path, role, body) in requests {
            let (r, forwarded) = w.call(method, path, role, body, &headers).await;
            assert!(forwarded, "{case} {path}");
            assert_eq!(r.status, 502, "{case} {path}: {}", r.detail());
            assert!(
                !r.body.windows(SECRET.len()).any(|b| b == SECRET),
                "{case} {path}: the upstream body was passed on"
            );
        }
    }
}

#[tokio::test]
async fn compressed_login_still_sets_the_session_cookie() {
    let m = manifest("6.12.0");
    let alice = m["users"]["alice"].clone();
    let token = token_for(&m, "alice");
    let answer = json!({"token": token, "expires_in": 3600, "user": {"user_id": alice["user_id"],
        "email": alice["email"], "display_name": "Alice", "is_admin": false, "is_active": true}});
    let responder: Responder = Arc::new(move |seen| match path_of(seen) {
        "/api/v1/auth/login" => gzip_json(&answer),
        _ => ok_json(json!({"ok": true})),
    });
    let w = world("6.12.0", responder).await;
    let login = json!({"email": "alice@example.com", "password": "AlicePass123"});
    let (r, forwarded) = w
        .call(
            "POST",
            "/api/v1/auth/login",
            "anon",
            Some(login),
            &[BROWSER],
        )
        .await;
    assert!(forwarded);
    assert_eq!(r.status, 200);
    let prefix = format!("{SESSION_COOKIE}=");
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie: {:?}", r.headers));
    let value = cookie[prefix.len()..].split(';').next().unwrap();
    let secret = m["jwt"]["secret"].as_str().unwrap();
    let (claims, _) = invoke_guard::identity::verify(value, secret).expect("cookie is a token");
    assert_eq!(claims["user_id"], alice["user_id"]);
    assert!(r.decoded_json()["token"].is_string(), "login body lost");
}

#[tokio::test]
async fn compressed_uncategorized_names_are_still_filtered() {
    let m = manifest("6.12.0");
    let all: Vec<String> = uncategorized(&m, None).into_iter().collect();
    let responder: Responder = Arc::new(move |seen| match path_of(seen) {
        "/api/v1/boards/none/image_names" => gzip_json(&json!(all)),
        _ => ok_json(json!({"ok": true})),
    });
    let w = world("6.12.0", responder).await;
    let (r, forwarded) = w
        .call(
            "GET",
            "/api/v1/boards/none/image_names",
            "bob",
            None,
            &[BROWSER],
        )
        .await;
    assert!(forwarded);
    assert_eq!(r.status, 200, "{}", r.detail());
    let own = uncategorized(&m, Some("bob"));
    assert!(!own.is_empty());
    assert_eq!(names(&r.decoded_json()), own);
}

#[tokio::test]
async fn compressed_bulk_download_records_requester() {
    let responder: Responder = Arc::new(|seen| match path_of(seen) {
        "/api/v1/images/download" => gzip_json(
            &json!({"response": "Your images are preparing to be downloaded", "bulk_download_item_name": "alice-gz.zip"}),
        ),
        _ => ok_json(json!({"ok": true})),
    });
    let w = world("6.12.0", responder).await;
    let body = json!({"image_names": [w.img("alice_uncat_1")]});
    let (r, forwarded) = w
        .call(
            "POST",
            "/api/v1/images/download",
            "alice",
            Some(body),
            &[BROWSER],
        )
        .await;
    assert!(forwarded);
    assert_eq!(r.status, 200, "{}", r.detail());
    let zip = "/api/v1/images/download/alice-gz.zip";
    let (r, forwarded) = w.call("GET", zip, "alice", None, &[]).await;
    assert!(forwarded, "the requester was not recorded: {}", r.status);
    let (r, forwarded) = w.call("GET", zip, "bob", None, &[]).await;
    assert!(!forwarded && r.status == 403, "bob got {}", r.status);
}

#[tokio::test]
async fn compressed_request_body_is_refused_where_the_guard_reads_it() {
    let w = world("6.12.0", default_responder()).await;
    let gz = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let login = gzip(
        json!({"email": "alice@example.com", "password": "AlicePass123"})
            .to_string()
            .as_bytes(),
    );
    let (r, forwarded) = w
        .call_bytes("POST", "/api/v1/auth/login", "anon", login, &gz)
        .await;
    assert!(!forwarded && r.status == 400, "login: {}", r.status);
    let reset = gzip(json!({"password": "NewPass123!"}).to_string().as_bytes());
    let path = format!("/api/v1/auth/users/{}", w.user("bob"));
    let (r, forwarded) = w.call_bytes("PATCH", &path, "admin", reset, &gz).await;
    assert!(!forwarded && r.status == 400, "user update: {}", r.status);
}

// === 2. the ledger fails closed ===

/// Upstream answers for the three creates whose owner the guard records.
fn create_responder() -> Responder {
    Arc::new(|seen| match path_of(seen) {
        "/api/v1/workflows/" => ok_json(json!({"workflow_id": "wf-locked", "name": "x"})),
        "/api/v1/style_presets/" => ok_json(json!({"id": "sp-locked", "name": "x"})),
        "/api/v1/images/download" => ok_json(json!({"bulk_download_item_name": "locked.zip"})),
        _ => ok_json(json!({"ok": true})),
    })
}

async fn create_workflow(w: &World, role: &str) -> (Reply, bool) {
    let body = json!({"workflow": workflow_json("wf-locked")});
    w.call("POST", "/api/v1/workflows/", role, Some(body), &[])
        .await
}

#[tokio::test]
async fn ledger_locked_refuses_creates_without_forwarding() {
    let w = world("6.12.0", create_responder()).await;
    let lock = rusqlite::Connection::open(w.ledger_path()).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let (r, forwarded) = create_workflow(&w, "alice").await;
    assert!(!forwarded, "workflow create forwarded without an intent");
    assert_eq!(r.status, 503);
    let boundary = "----guardtest";
    let preset = form(
        boundary,
        &[(DATA_PART, &preset_data("user")), (IMAGE_PART, "PNGDATA")],
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (r, forwarded) = w
        .call_bytes(
            "POST",
            "/api/v1/style_presets/",
            "bob",
            preset,
            &[("content-type", &ct)],
        )
        .await;
    assert!(
        !forwarded,
        "style preset create forwarded without an intent"
    );
    assert_eq!(r.status, 503);
    let body = json!({"image_names": [w.img("alice_uncat_1")]});
    let (r, forwarded) = w
        .call("POST", "/api/v1/images/download", "alice", Some(body), &[])
        .await;
    assert!(!forwarded, "bulk download forwarded without an intent");
    assert_eq!(r.status, 503);
    // Once the ledger is writable again, creates go through.
    lock.execute_batch("COMMIT;").unwrap();
    drop(lock);
    let (r, forwarded) = create_workflow(&w, "alice").await;
    assert!(forwarded && r.status == 200, "{}", r.status);
}

#[tokio::test]
async fn ledger_failing_after_the_upstream_answered_is_503() {
    // The mock takes the ledger's write lock while it answers: the intent is already written,
    // recording the owner afterwards fails.
    let ledger: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let held: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let (ledger2, held2) = (ledger.clone(), held.clone());
    let responder: Responder = Arc::new(move |seen| {
        if path_of(seen) == "/api/v1/workflows/" {
            let path = ledger2.lock().unwrap().clone().unwrap();
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE;").unwrap();
            *held2.lock().unwrap() = Some(conn);
        }
        ok_json(json!({"workflow_id": "wf-unrecorded", "name": "x"}))
    });
    let w = world("6.12.0", responder).await;
    *ledger.lock().unwrap() = Some(w.ledger_path());
    let (r, forwarded) = create_workflow(&w, "alice").await;
    assert!(forwarded);
    assert_eq!(
        r.status, 503,
        "an unrecorded create must not look successful"
    );
    let conn = held.lock().unwrap().take().unwrap();
    conn.execute_batch("COMMIT;").unwrap();
}

#[tokio::test]
async fn orphans_are_admin_only_and_legacy_items_stay_readable() {
    let w = world("6.12.0", default_responder()).await;
    // Created after the ledger was born, owner never recorded.
    let wf = "0aba0000-1111-4222-8333-444455556666";
    let sp = "0aba0000-1111-4222-8333-777788889999";
    w.insert_workflow(wf).await;
    w.insert_preset(sp).await;
    let wf_path = format!("/api/v1/workflows/i/{wf}");
    let sp_path = format!("/api/v1/style_presets/i/{sp}");
    for (method, path) in [
        ("GET", &wf_path),
        ("DELETE", &wf_path),
        ("GET", &sp_path),
        ("DELETE", &sp_path),
    ] {
        for role in ["alice", "bob"] {
            let (r, forwarded) = w.call(method, path, role, None, &[]).await;
            assert!(
                !forwarded && r.status == 403,
                "{role} {method} {path}: {}",
                r.status
            );
        }
    }
    for path in [&wf_path, &sp_path] {
        let (r, forwarded) = w.call("GET", path, "admin", None, &[]).await;
        assert!(forwarded, "admin GET {path}: {}", r.status);
    }
    // Fixture items predate the ledger: readable by everyone, as before.
    let legacy_wf = format!(
        "/api/v1/workflows/i/{}",
        w.id("workflows", "wf_alice_private", "workflow_id")
    );
    let legacy_sp = format!(
        "/api/v1/style_presets/i/{}",
        w.id("style_presets", "sp_alice", "id")
    );
    for path in [&legacy_wf, &legacy_sp] {
        let (r, forwarded) = w.call("GET", path, "bob", None, &[]).await;
        assert!(forwarded, "bob GET legacy {path}: {}", r.status);
    }
}

// === 3. denial of service ===

/// Write `head` then `body` on a fresh connection while reading the reply (the guard may answer
/// and close before the body is written; write errors are expected then).
async fn raw_exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn public_body_over_the_public_limit_is_413_before_forwarding() {
    let w = world("6.12.0", default_responder()).await;
    let big = json!({"email": "alice@example.com", "password": "x".repeat(1 << 20)}).to_string();
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nConnection: close\r\n";
    let declared = raw_exchange(
        w.g.addr,
        format!("{head}Content-Length: {}\r\n\r\n", big.len()),
        big.clone().into_bytes(),
    )
    .await;
    assert_eq!(raw_status(&declared), 413, "{declared:.200}");
    let streamed = raw_exchange(
        w.g.addr,
        format!("{head}Transfer-Encoding: chunked\r\n\r\n"),
        chunked(big.as_bytes()),
    )
    .await;
    assert_eq!(raw_status(&streamed), 413, "{streamed:.200}");
    assert_eq!(w.up.count(), 0);
    // An ordinary login still passes.
    let login = json!({"email": "alice@example.com", "password": "AlicePass123"});
    let (_, forwarded) = w
        .call("POST", "/api/v1/auth/login", "anon", Some(login), &[])
        .await;
    assert!(forwarded);
}

const SLOW_BODY: &str = "[limits]\nbody_read_timeout_ms = 500\n";

/// Open a connection and send `head` (a request whose body never completes).
async fn stall(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

const STALLED_LOGIN: &str = "POST /api/v1/auth/login HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"ema";

#[tokio::test]
async fn stalled_body_is_cut_off() {
    let w = world_with("6.12.0", default_responder(), SLOW_BODY).await;
    let mut s = stall(w.g.addr, STALLED_LOGIN).await;
    let reply = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a stalled login body kept the connection open");
    assert!(
        reply.is_empty() || raw_status(&reply) == 408,
        "{reply:.200}"
    );
    assert_eq!(w.up.count(), 0);
}

#[tokio::test]
async fn stalled_streamed_body_is_cut_off() {
    let w = world_with("6.12.0", default_responder(), SLOW_BODY).await;
    // images.upload checks only the query, so its body streams upstream as it arrives.
    let head = format!(
        "POST /api/v1/images/upload?image_category=user&is_intermediate=false HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n",
        w.token("alice")
    );
    let mut s = stall(w.g.addr, &head).await;
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a stalled streamed body kept the connection open");
}

/// The status of a GET, or `None` when the connection fails.
async fn try_status(url: &str, token: Option<&str>) -> Option<StatusCode> {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .ok()?
    .ok()?;
    let status = res.status();
    let _ = res.into_body().collect().await;
    Some(status)
}

/// Retry a GET until it answers 200 (bounded).
async fn eventually_ok(url: &str, token: Option<&str>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if try_status(url, token).await == Some(StatusCode::OK) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn stalled_bodies_do_not_hold_connection_slots() {
    let config = format!("{SLOW_BODY}max_connections = 4\n");
    let w = world_with("6.12.0", default_responder(), &config).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stall(w.g.addr, STALLED_LOGIN).await);
    }
    for s in &mut stalled {
        closed_within(s, Duration::from_secs(10))
            .await
            .expect("a stalled connection was never closed");
    }
    let alice = w.token("alice");
    assert!(
        eventually_ok(
            &w.g.url("/api/v1/boards/"),
            Some(&alice),
            Duration::from_secs(5)
        )
        .await,
        "no connection slot came back"
    );
}

/// The real binary under `ulimit -n 64`, logging into a file.
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _db: DbCopy,
}

impl Served {
    fn start(config: &str, upstream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = copy_fixture("invokeai-6.12.0-rich.db");
        let cfg = dir.path().join("guard.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("guard.log");
        let out = std::fs::File::create(&log).unwrap();
        // A port that was free a moment ago (the guard binds it itself).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_invoke-guard"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", &addr.to_string(), "--admin-listen", "off"])
            .args(["--upstream", upstream])
            .arg("--db")
            .arg(&db.path)
            .arg("--routes")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"))
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .current_dir(dir.path())
            .env_remove("INVOKE_GUARD_LOG")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Served {
            child,
            addr,
            log,
            _dir: dir,
            _db: db,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn log_lines_with(&self, needle: &str) -> usize {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Open `n` connections and hold them for `hold`, then release them.
    async fn flood(&self, n: usize, hold: Duration) {
        let mut held = Vec::new();
        for _ in 0..n {
            if let Ok(s) = TcpStream::connect(self.addr).await {
                held.push(s);
            }
        }
        tokio::time::sleep(hold).await;
        drop(held);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let up = mock(None).await;
    let s = Served::start("[limits]\nmax_connections = 1000\n", &up.url());
    assert!(
        eventually_ok(&s.url(), None, Duration::from_secs(20)).await,
        "guard did not start"
    );
    s.flood(150, Duration::from_secs(2)).await;
    let failures = s.log_lines_with("accept failed");
    assert!(
        failures < 100,
        "{failures} 'accept failed' lines in ~2 s: a tight loop"
    );
    assert!(
        eventually_ok(&s.url(), None, Duration::from_secs(15)).await,
        "not serving after the flood"
    );
}

#[tokio::test]
async fn default_connection_limit_fits_the_fd_limit() {
    let up = mock(None).await;
    let s = Served::start("", &up.url());
    assert!(
        eventually_ok(&s.url(), None, Duration::from_secs(20)).await,
        "guard did not start"
    );
    s.flood(150, Duration::from_secs(2)).await;
    assert_eq!(s.log_lines_with("Too many open files"), 0);
    assert!(
        eventually_ok(&s.url(), None, Duration::from_secs(15)).await,
        "not serving after the flood"
    );
}

// === 4. parser differentials ===

#[tokio::test]
async fn multipart_read_as_starlette_reads_it() {
    let w = world("6.12.0", create_responder()).await;
    let post = |content_type: String, body: String| {
        let w = &w;
        async move {
            w.call_bytes(
                "POST",
                "/api/v1/style_presets/",
                "bob",
                body,
                &[("content-type", &content_type)],
            )
            .await
        }
    };
    let ct = |b: &str| format!("multipart/form-data; boundary={b}");
    let default = preset_data("default");
    // Control: an ordinary user preset goes through.
    let (r, forwarded) = post(
        ct("AAA"),
        form(
            "AAA",
            &[(DATA_PART, &preset_data("user")), (IMAGE_PART, "PNG")],
        ),
    )
    .await;
    assert!(forwarded && r.status == 200, "control: {}", r.status);
    // Two boundaries: Starlette takes the last, other parsers the first.
    let (r, forwarded) = post(
        "multipart/form-data; boundary=AAA; boundary=BBB".into(),
        form("BBB", &[(DATA_PART, &default)]),
    )
    .await;
    assert!(
        !forwarded && r.status == 400,
        "two boundaries: {}",
        r.status
    );
    // Two names in one part: Starlette takes the last.
    let (r, forwarded) = post(
        ct("AAA"),
        form(
            "AAA",
            &[(
                "Content-Disposition: form-data; name=\"zzz\"; name=\"data\"",
                &default,
            )],
        ),
    )
    .await;
    assert!(!forwarded && r.status == 400, "two names: {}", r.status);
    // Header and parameter names are case-insensitive to Starlette: this is the `data` field.
    let (r, forwarded) = post(
        ct("AAA"),
        form(
            "AAA",
            &[("content-disposition: FORM-DATA; NAME=\"data\"", &default)],
        ),
    )
    .await;
    assert!(
        !forwarded && r.status == 403,
        "upper-case name: {}",
        r.status
    );
    // Two `data` fields.
    let (r, forwarded) = post(
        ct("AAA"),
        form(
            "AAA",
            &[(DATA_PART, &preset_data("user")), (DATA_PART, &default)],
        ),
    )
    .await;
    assert!(
        !forwarded && r.status == 400,
        "two data parts: {}",
        r.status
    );
}

#[tokio::test]
async fn booleans_read_as_pydantic_lax_mode() {
    let w = world("6.12.0", default_responder()).await;
    // The rich 6.12 fixture has exactly one active admin.
    let active_admins: i64 = w
        .db()
        .query_row(
            "SELECT COUNT(*) FROM users WHERE is_admin = 1 AND is_active = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(active_admins, 1);
    let system = "/api/v1/auth/users/system";
    for body in [
        json!({"is_admin": "true"}),
        json!({"is_admin": 1}),
        json!({"is_admin": "on"}),
        json!({"is_admin": "yes"}),
        json!({"is_active": "off"}),
        json!({"is_active": 0}),
    ] {
        let (r, forwarded) = w
            .call("PATCH", system, "admin", Some(body.clone()), &[])
            .await;
        assert!(!forwarded && r.status == 400, "system {body}: {}", r.status);
        assert!(r.detail().contains("protected"), "{}", r.detail());
    }
    let me = format!("/api/v1/auth/users/{}", w.user("admin"));
    for body in [
        json!({"is_active": "off"}),
        json!({"is_active": 0}),
        json!({"is_active": "no"}),
        json!({"is_active": "false"}),
        json!({"is_active": 0.0}),
        json!({"is_admin": "false"}),
        json!({"is_admin": 0}),
    ] {
        let (r, forwarded) = w.call("PATCH", &me, "admin", Some(body.clone()), &[]).await;
        assert!(
            !forwarded && r.status == 400,
            "last admin {body}: {}",
            r.status
        );
        assert_eq!(r.detail(), "Cannot remove the last administrator");
    }
    let bob = format!("/api/v1/auth/users/{}", w.user("bob"));
    let (r, forwarded) = w
        .call(
            "PATCH",
            &bob,
            "admin",
            Some(json!({"is_active": "maybe"})),
            &[],
        )
        .await;
    assert!(!forwarded && r.status == 422, "maybe: {}", r.status);
    // Control: a harmless update passes.
    let (_, forwarded) = w
        .call(
            "PATCH",
            &me,
            "admin",
            Some(json!({"display_name": "A"})),
            &[],
        )
        .await;
    assert!(forwarded);
}

/// Cookie names (trimmed, as Starlette reads them) of the request the mock saw.
fn forwarded_cookies(seen: &Seen) -> Vec<(String, String)> {
    seen.headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn cookies_read_as_starlette_reads_them() {
    let w = world("6.12.0", default_responder()).await;
    for credential in [MEDIA_COOKIE, SESSION_COOKIE] {
        let cookie = format!("{credential} =abc; keep=1");
        let (r, forwarded) = w
            .call(
                "GET",
                "/api/v1/workflows/",
                "bob",
                None,
                &[("cookie", &cookie)],
            )
            .await;
        assert!(forwarded, "{}", r.status);
        let cookies = forwarded_cookies(&w.up.last().unwrap());
        assert!(
            cookies
                .iter()
                .all(|(k, _)| k != MEDIA_COOKIE && k != SESSION_COOKIE),
            "{credential} reached the upstream: {cookies:?}"
        );
        assert!(
            cookies.contains(&("keep".into(), "1".into())),
            "{cookies:?}"
        );
    }
    let alice = w.token("alice");
    let media = format!("/api/v1/images/i/{}/full", w.img("alice_uncat_1"));
    for cookie in [
        format!("{SESSION_COOKIE} ={alice}"),
        format!("{MEDIA_COOKIE} = {alice}"),
    ] {
        let (r, forwarded) = w
            .call("GET", &media, "anon", None, &[("cookie", &cookie)])
            .await;
        assert!(forwarded, "{cookie:.40}: {}", r.status);
        let claims = forwarded_claims(&w.up.last().unwrap()).expect("a forwarded token");
        assert_eq!(claims["user_id"].as_str(), Some(w.user("alice").as_str()));
    }
    // A repeated cookie: Starlette keeps the last one. The guard reads it the same way or refuses
    // the ambiguity, but never acts on the first.
    let cookie = format!(
        "{SESSION_COOKIE}={}; {SESSION_COOKIE}={alice}",
        w.token("bob")
    );
    let (r, forwarded) = w
        .call("GET", &media, "anon", None, &[("cookie", &cookie)])
        .await;
    if forwarded {
        let claims = forwarded_claims(&w.up.last().unwrap()).expect("a forwarded token");
        assert_eq!(claims["user_id"].as_str(), Some(w.user("alice").as_str()));
    } else {
        assert_eq!(r.status, 400, "repeated cookie: {}", r.detail());
    }
}

// === 5. smaller defects ===

/// The shipped routes cut off before rule `n` (at a rule boundary, so it still parses).
fn routes_cut_before_rule(n: usize) -> String {
    let text = shipped_routes();
    let start = text
        .match_indices("[[rule]]")
        .nth(n)
        .map(|(i, _)| i)
        .unwrap();
    text[..start].to_owned()
}

#[tokio::test]
async fn reload_refuses_a_truncated_or_empty_routes_file() {
    let w = world("6.12.0", default_responder()).await;
    let routes = w.g.ledger_dir.path().join("routes.toml");
    // workflows.list is far beyond the first 35 rules.
    let beyond = "/api/v1/workflows/";
    let (_, forwarded) = w.call("GET", beyond, "alice", None, &[]).await;
    assert!(forwarded);
    let partial = routes_cut_before_rule(35);
    assert!(!partial.contains("\"workflows.list\""));
    std::fs::write(&routes, &partial).unwrap();
    assert!(
        w.g.state.reload_routes().is_err(),
        "a truncated file was accepted"
    );
    let (r, forwarded) = w.call("GET", beyond, "alice", None, &[]).await;
    assert!(forwarded, "the last good table was dropped: {}", r.status);
    std::fs::write(&routes, "").unwrap();
    assert!(
        w.g.state.reload_routes().is_err(),
        "an empty file was accepted"
    );
    // Deliberate: the operator says so at the top of the file.
    std::fs::write(&routes, format!("allow_coverage_loss = true\n\n{partial}")).unwrap();
    assert!(w.g.state.reload_routes().is_ok());
    let (r, forwarded) = w.call("GET", beyond, "alice", None, &[]).await;
    assert!(!forwarded && r.status == 404, "{}", r.status);
}

#[tokio::test]
async fn batch_status_hides_foreign_origin_and_destination() {
    let m = manifest("6.12.0");
    let batch = m["queue_items"]["q_alice_add_1"]["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = json!({"queue_id": "default", "batch_id": batch, "origin": "canvas",
        "destination": "gallery", "pending": 3, "in_progress": 1, "completed": 9, "failed": 2,
        "canceled": 1, "total": 16});
    let responder: Responder = Arc::new(move |_| ok_json(answer.clone()));
    let w = world("6.12.0", responder).await;
    // alice's own rows carry the same origin/destination as the upstream reports.
    w.db()
        .execute(
            "UPDATE session_queue SET origin = 'canvas', destination = 'gallery' WHERE batch_id = ?1",
            [&batch],
        )
        .unwrap();
    let path = format!("/api/v1/queue/default/b/{batch}/status");
    let (r, forwarded) = w.call("GET", &path, "bob", None, &[]).await;
    assert!(forwarded && r.status == 200, "{}", r.status);
    let bob = r.json();
    assert!(
        bob["origin"].is_null() && bob["destination"].is_null(),
        "{bob}"
    );
    assert_eq!((&bob["total"], &bob["completed"]), (&json!(0), &json!(0)));
    let (r, _) = w.call("GET", &path, "alice", None, &[]).await;
    let alice = r.json();
    assert_eq!(
        (&alice["origin"], &alice["destination"]),
        (&json!("canvas"), &json!("gallery"))
    );
    assert_eq!(
        (&alice["total"], &alice["completed"]),
        (&json!(2), &json!(2))
    );
}

#[tokio::test]
async fn queue_id_other_than_default_is_refused() {
    let w = world("6.12.0", default_responder()).await;
    let batch = json!({"batch": {"graph": {"id": "g", "nodes": {}, "edges": []}, "runs": 1}});
    let bob_queue = format!("/api/v1/queue/{}/list_all", w.user("bob"));
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/api/v1/queue/admin/enqueue_batch".into(),
            Some(batch.clone()),
        ),
        ("GET", "/api/v1/queue/user:abc/status".into(), None),
        ("GET", bob_queue, None),
        (
            "GET",
            "/api/v1/client_state/other/get_by_key?key=k".into(),
            None,
        ),
        ("POST", "/api/v1/client_state/other/delete".into(), None),
    ];
    for (method, path, body) in cases {
        let (r, forwarded) = w.call(method, &path, "alice", body, &[]).await;
        assert!(
            !forwarded && r.status == 403,
            "{method} {path}: {}",
            r.status
        );
    }
    // Control: the default queue works.
    let (r, forwarded) = w
        .call(
            "POST",
            "/api/v1/queue/default/enqueue_batch",
            "alice",
            Some(batch),
            &[],
        )
        .await;
    assert!(forwarded, "{}", r.status);
}

#[tokio::test]
async fn queue_sanitizer_fails_closed_on_unexpected_shapes() {
    let m = manifest("6.12.0");
    let alice_id = m["users"]["alice"]["user_id"].clone();
    let item = move |item_id: Value| {
        json!({"item_id": item_id, "status": "completed", "priority": 0, "batch_id": "alice-batch",
            "session_id": "alice-session", "queue_id": "default", "user_id": alice_id,
            "user_email": "alice-secret@example.com", "user_display_name": "Alice",
            "origin": null, "destination": null, "field_values": null, "workflow": null,
            "session": {"id": "alice-session", "graph": {"nodes": {}, "edges": []}}})
    };
    let responder: Responder = Arc::new(move |seen| match case_of(seen) {
        "wrapped" => ok_json(json!({"items": [item(json!(1))]})),
        "string-id" => ok_json(json!([item(json!("1"))])),
        _ if path_of(seen) == "/api/v1/queue/default/i/1" => ok_json(item(json!(1))),
        _ => ok_json(json!([item(json!(1))])),
    });
    let w = world("6.12.0", responder).await;
    const SECRET: &[u8] = b"alice-secret";
    let list = "/api/v1/queue/default/list_all";
    for case in ["wrapped", "string-id"] {
        let (r, forwarded) = w
            .call("GET", list, "bob", None, &[("x-test-case", case)])
            .await;
        assert!(forwarded);
        assert!(r.status.is_server_error(), "{case}: {}", r.status);
        assert!(
            !r.body.windows(SECRET.len()).any(|b| b == SECRET),
            "{case}: the foreign item leaked"
        );
    }
    // The shapes InvokeAI sends are still redacted, not refused.
    for path in [list, "/api/v1/queue/default/i/1"] {
        let (r, _) = w.call("GET", path, "bob", None, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            !r.body.windows(SECRET.len()).any(|b| b == SECRET),
            "{path}: not redacted"
        );
    }
}
