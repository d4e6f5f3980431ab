//! The shipped routes.toml over the rich fixtures written by real InvokeAI 6.12.0 and 6.14.2.
//! The matrix (every predicate per role and resource state, every seed-PR finding as a named
//! case) is data: tests/data/policy/VERSION.toml, the rule-test format `invoke-guard test` runs;
//! here it runs both decision-only and through the guard. The other tests cover what a case
//! file cannot say (freshness, fail-closed, ledger, cookies, list filters).

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use invoke_guard::cli::ruletest;
use invoke_guard::server::evaluate as trial;
use serde_json::{json, Value};

struct World {
    _db: DbCopy,
    up: Mock,
    g: Guard,
    m: Value,
    version: &'static str,
}

impl World {
    async fn new(version: &'static str) -> Self {
        let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
        let m = manifest(version);
        // The mock answers like InvokeAI where a response filter reads the body.
        let wf = m["workflows"]["wf_alice_private"]["workflow_id"].clone();
        let sp = m["style_presets"]["sp_alice"]["id"].clone();
        let responder: Responder = Arc::new(move |seen| match seen.target.as_str() {
            "/api/v1/workflows/" => ok_json(json!({"workflow_id": wf, "name": "x"})),
            "/api/v1/style_presets/" => ok_json(json!({"id": sp, "name": "x"})),
            "/api/v1/images/download" => {
                ok_json(json!({"response": "ok", "bulk_download_item_name": "zip-of-alice.zip"}))
            }
            // Lists the guard recomputes (6.12): what the old server would answer, empty.
            "/api/v1/images/images_by_names" => ok_json(json!([])),
            "/api/v1/images/delete" => {
                ok_json(json!({"deleted_images": [], "affected_boards": []}))
            }
            _ => ok_json(json!({"ok": true})),
        });
        let up = mock(Some(responder)).await;
        let g = guard(&shipped_routes(), &db.path, &up.url()).await;
        World {
            _db: db,
            up,
            g,
            m,
            version,
        }
    }

    fn id(&self, kind: &str, role: &str, field: &str) -> String {
        self.m[kind][role][field]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{kind}.{role}.{field} missing in the {} manifest",
                    self.version
                )
            })
            .to_owned()
    }
    fn img(&self, role: &str) -> String {
        self.id("images", role, "image_name")
    }
    fn board(&self, role: &str) -> String {
        self.id("boards", role, "board_id")
    }
    fn wf(&self, role: &str) -> String {
        self.id("workflows", role, "workflow_id")
    }

    /// The status of a body-less request as `token`.
    async fn call(&self, method: &str, path: &str, token: &str) -> http::StatusCode {
        send(method, &self.g.url(path), Some(token), None)
            .await
            .status
    }

    fn token(&self, role: &str) -> Option<String> {
        let secret = self.m["jwt"]["secret"].as_str().unwrap();
        match role {
            "anon" => None,
            // erin's token from before her demotion still claims admin.
            "erin_stale" => {
                let mut c = claims_for(&self.m, "erin");
                c["is_admin"] = json!(true);
                Some(sign(&c, secret))
            }
            r => Some(token_for(&self.m, r)),
        }
    }
}

/// The caller of a rule-test case as a token minted like InvokeAI mints it (manifest users).
fn case_token(w: &World, case: &ruletest::Case) -> Option<String> {
    if case.caller == "anonymous" {
        return None;
    }
    let users = w.m["users"].as_object().unwrap();
    let role = users
        .iter()
        .find(|(_, u)| u["email"] == case.caller.as_str() || u["user_id"] == case.caller.as_str())
        .map(|(r, _)| r.clone())
        .unwrap_or_else(|| panic!("{}: unknown caller {}", case.name, case.caller));
    let mut claims = claims_for(&w.m, &role);
    for (k, v) in case.claims.iter().flatten() {
        claims[k] = serde_json::to_value(v).unwrap();
    }
    Some(sign(&claims, w.m["jwt"]["secret"].as_str().unwrap()))
}

/// Run the version's rule-test file twice: decision-only (as `invoke-guard test` does) and
/// through the real guard in front of a recording mock upstream ("allow" = forwarded).
async fn matrix(version: &'static str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/policy/{version}.toml"));
    let loaded = ruletest::load(&path).unwrap();
    assert!(loaded.file.case.len() > 100, "the matrix lost its cases");
    // 1. decision-only
    let engine = trial::Engine::open(
        &loaded.relative(loaded.file.routes.as_ref().unwrap()),
        &loaded.relative(loaded.file.db.as_ref().unwrap()),
        None,
    )
    .unwrap();
    let results = ruletest::run(&loaded, &engine).await.unwrap();
    let failures: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.report.as_str())
        .collect();
    assert!(failures.is_empty(), "{}", failures.concat());
    // 2. through the guard
    let w = World::new(version).await;
    for r in &loaded.file.record {
        let kind = invoke_guard::rules::vocab::RecordKind::from_name(&r.kind).unwrap();
        let owner = w.m["users"]
            .as_object()
            .unwrap()
            .values()
            .find(|u| u["email"] == r.owner.as_str())
            .map(|u| u["user_id"].as_str().unwrap().to_owned())
            .unwrap();
        w.g.state.ledger.record(kind, &r.id, &owner).await.unwrap();
    }
    let mut failures = Vec::new();
    for (case, line) in loaded.file.case.iter().zip(&loaded.lines) {
        let case = case.get_ref();
        let trial = case.trial().unwrap();
        let token = case_token(&w, case);
        let body = match &trial.body {
            Some(trial::TrialBody::Json(text)) => Some(serde_json::from_str(text).unwrap()),
            Some(trial::TrialBody::Form(_)) => {
                panic!("{}: form cases run in their own tests", case.name)
            }
            None => None,
        };
        let before = w.up.count();
        let r = send(
            &case.method,
            &w.g.url(&trial.target),
            token.as_deref(),
            body,
        )
        .await;
        let forwarded = w.up.count() > before;
        let want_allow = matches!(&case.expect, ruletest::Expect::Word(x) if x == "allow");
        let ok = match (&case.expect, forwarded) {
            (_, true) => want_allow && r.status == 200,
            (ruletest::Expect::Status(s), false) => r.status.as_u16() == *s,
            (ruletest::Expect::Word(_), false) => false,
        };
        if !ok {
            failures.push(format!(
                "{version} line {line} \"{}\": want {:?}, got {} (forwarded={forwarded}) {}",
                case.name,
                case.expect,
                r.status,
                r.detail()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed through the guard:\n{}",
        failures.len(),
        loaded.file.case.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn policy_matrix_6_14_2() {
    matrix("6.14.2").await;
}

#[tokio::test]
async fn policy_matrix_6_12_0() {
    matrix("6.12.0").await;
}

#[tokio::test]
async fn ledger_gives_6_12_workflows_and_presets_their_creator() {
    let w = World::new("6.12.0").await;
    let alice = w.token("alice").unwrap();
    let bob = w.token("bob").unwrap();
    let wf = format!("/api/v1/workflows/i/{}", w.wf("wf_alice_private"));
    // Before the guard saw its creation: unknown owner, readable by all, writable by admins.
    assert_eq!(w.call("GET", &wf, &bob).await, 200);
    // alice creates it through the guard (the mock answers with that workflow id).
    let r = send(
        "POST",
        &w.g.url("/api/v1/workflows/"),
        Some(&alice),
        Some(json!({"workflow": {"name": "x"}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.call("GET", &wf, &bob).await, 403);
    assert_eq!(w.call("DELETE", &wf, &alice).await, 200);
    // A later creation response cannot re-assign it.
    let r = send(
        "POST",
        &w.g.url("/api/v1/workflows/"),
        Some(&bob),
        Some(json!({"workflow": {"name": "y"}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.call("GET", &wf, &bob).await, 403);
    // The ledger survives a restart: a new guard on the same ledger file still knows.
    let ledger =
        invoke_guard::facts::ledger::Ledger::open(&w.g.ledger_dir.path().join("ledger.db"))
            .unwrap();
    let owner = ledger
        .owner(
            invoke_guard::facts::ledger::Entry::Workflow,
            &w.wf("wf_alice_private"),
        )
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), w.m["users"]["alice"]["user_id"].as_str());
}

#[tokio::test]
async fn visibility_change_is_seen_by_the_next_request() {
    let w = World::new("6.14.2").await;
    let bob = w.token("bob").unwrap();
    let path = format!("/api/v1/boards/{}", w.board("alice_private"));
    assert_eq!(w.call("GET", &path, &bob).await, 403);
    let generation = w.g.state.facts.generation();
    // InvokeAI (another connection) commits a visibility change.
    let conn = rusqlite::Connection::open(&w._db.path).unwrap();
    conn.execute(
        "UPDATE boards SET board_visibility = 'shared' WHERE board_id = ?1",
        [w.board("alice_private")],
    )
    .unwrap();
    // Wait (bounded) for the guard's own signal: its facts generation moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while w.g.state.facts.generation() == generation {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never saw the commit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(w.call("GET", &path, &bob).await, 200);
}

#[tokio::test]
async fn mutation_through_the_guard_invalidates_at_once() {
    let w = World::new("6.14.2").await;
    let bob = w.token("bob").unwrap();
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/boards/{}", w.board("alice_private"));
    assert_eq!(w.call("GET", &path, &bob).await, 403);
    let generation = w.g.state.facts.generation();
    let r = send(
        "PATCH",
        &w.g.url(&path),
        Some(&alice),
        Some(json!({"board_visibility": "shared"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        w.g.state.facts.generation() > generation,
        "a forwarded mutation must bump the generation before it answers"
    );
}

#[tokio::test]
async fn locked_database_fails_closed() {
    let w = World::new("6.14.2").await;
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/images/i/{}", w.img("alice_private_1"));
    assert_eq!(w.call("GET", &path, &alice).await, 200);
    let conn = rusqlite::Connection::open(&w._db.path).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE users SET display_name = display_name;")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never noticed the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = w.up.count();
    let r = send("GET", &w.g.url(&path), Some(&alice), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(w.up.count(), before);
    conn.execute_batch("COMMIT; PRAGMA locking_mode = NORMAL; SELECT 1 FROM users LIMIT 1;")
        .unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered after the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.call("GET", &path, &alice).await, 200);
}

/// A guard (shipped routes) whose mock upstream answers logins with `role`'s token.
async fn login_world(
    version: &str,
    role: &str,
    expires_in: u64,
) -> (DbCopy, Mock, Guard, Value, String) {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let m = manifest(version);
    let token = token_for(&m, role);
    let answer = token.clone();
    let responder: Responder = Arc::new(move |seen| match seen.target.as_str() {
        "/api/v1/auth/login" => {
            ok_json(json!({"token": answer, "user": {}, "expires_in": expires_in}))
        }
        _ => ok_json(json!({"ok": true})),
    });
    let up = mock(Some(responder)).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    (db, up, g, m, token)
}

async fn login(g: &Guard, email: &str) -> Reply {
    send(
        "POST",
        &g.url("/api/v1/auth/login"),
        None,
        Some(json!({"email": email, "password": "x"})),
    )
    .await
}

#[tokio::test]
async fn session_cookie_lifecycle_for_media_and_socket() {
    let (_db, _up, g, m, token) = login_world("6.14.2", "alice", 86400).await;
    let login = login(&g, "alice@example.com").await;
    assert_eq!(login.status, 200);
    let cookie = login.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("invoke_guard_session={token};")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=86400"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    // A Bearer-authenticated /auth/me (the UI's hydration call) sets the cookie when it is missing...
    let me = send("GET", &g.url("/api/v1/auth/me"), Some(&token), None).await;
    assert!(me.headers.get("set-cookie").is_some());
    // ...and not when the request already carries it.
    let session = format!("invoke_guard_session={token}");
    let me = send_with(
        "GET",
        &g.url("/api/v1/auth/me"),
        Some(&token),
        None,
        &[("cookie", &session)],
    )
    .await;
    assert!(me.headers.get("set-cookie").is_none());
    // The Engine.IO handshake needs no credential (clients authenticate in CONNECT, where the
    // cookie is the last fallback: tests/socketio.rs); media accept the cookie, the API does not.
    let sock = send(
        "GET",
        &g.url("/ws/socket.io/?EIO=4&transport=polling"),
        None,
        None,
    )
    .await;
    assert_eq!(sock.status, 200);
    assert!(sock.body.starts_with(b"0{\"sid\""), "{:?}", sock.body);
    let img = format!(
        "/api/v1/images/i/{}/full",
        m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap()
    );
    let media = send_with("GET", &g.url(&img), None, None, &[("cookie", &session)]).await;
    assert_eq!(media.status, 200);
    assert_eq!(media.headers["cache-control"], "private, no-store");
    let api = send_with(
        "GET",
        &g.url("/api/v1/boards/?all=true"),
        None,
        None,
        &[("cookie", &session)],
    )
    .await;
    assert_eq!(api.status, 401);
    // Logout deletes it.
    let out = send("POST", &g.url("/api/v1/auth/logout"), Some(&token), None).await;
    let del = out.headers["set-cookie"].to_str().unwrap();
    assert!(
        del.starts_with("invoke_guard_session=;") && del.contains("Max-Age=0"),
        "{del}"
    );
}

async fn send_multipart(url: &str, token: &str, data: &str) -> u16 {
    let boundary = "----guardtestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{data}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", ct)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    client.request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn multipart_style_preset_type_default_is_admin_only() {
    for version in ["6.12.0", "6.14.2"] {
        let w = World::new(version).await;
        let url = w.g.url("/api/v1/style_presets/");
        let bob = w.token("bob").unwrap();
        let admin = w.token("admin").unwrap();
        let before = w.up.count();
        let default =
            r#"{"name": "x", "positive_prompt": "p", "negative_prompt": "", "type": "default"}"#;
        assert_eq!(send_multipart(&url, &bob, default).await, 403, "{version}");
        assert_eq!(w.up.count(), before);
        let user =
            r#"{"name": "x", "positive_prompt": "p", "negative_prompt": "", "type": "user"}"#;
        assert_eq!(send_multipart(&url, &bob, user).await, 200, "{version}");
        assert_eq!(
            send_multipart(&url, &admin, default).await,
            200,
            "{version}"
        );
        // The file part reached the upstream intact.
        assert!(w.up.last().unwrap().body.windows(4).any(|b| b == b"PNGD"));
    }
}

#[tokio::test]
async fn corrupted_database_fails_closed() {
    let w = World::new("6.14.2").await;
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/images/i/{}", w.img("alice_private_1"));
    assert_eq!(w.call("GET", &path, &alice).await, 200);
    // Same inode, garbage content: every read fails.
    std::fs::write(&w._db.path, vec![0x5a; 8192]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never noticed the corruption"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = w.up.count();
    assert_eq!(w.call("GET", &path, &alice).await, 503);
    assert_eq!(w.up.count(), before);
}

#[tokio::test]
async fn password_change_revokes_older_tokens_without_epochs() {
    let (_db, _up, g, m, carol_login) = login_world("6.12.0", "carol", 3600).await;
    let secret = m["jwt"]["secret"].as_str().unwrap().to_owned();
    let old = token_for(&m, "carol"); // a session from before the change (no iat)
    let me = g.url("/api/v1/auth/me");
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
    // A profile change without a new password revokes nothing.
    let r = send("PATCH", &me, Some(&old), Some(json!({"display_name": "C"}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
    let change = json!({"current_password": "CarolPass123", "new_password": "CarolPass456!"});
    let r = send("PATCH", &me, Some(&old), Some(change)).await;
    assert_eq!(r.status, 200);
    let fresh = r.headers["x-refreshed-token"].to_str().unwrap().to_owned();
    assert_eq!(
        send("GET", &me, Some(&old), None).await.status,
        401,
        "the old session must die"
    );
    assert_eq!(
        send("GET", &me, Some(&fresh), None).await.status,
        200,
        "the fresh token works"
    );
    // A new login through the guard is stamped with its issue time and accepted.
    let login = login(&g, "carol@example.com").await;
    let token = login.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(token, carol_login, "the login token is re-signed with iat");
    assert!(invoke_guard::identity::verify(&token, &secret)
        .unwrap()
        .0
        .contains_key("iat"));
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 200);
    // An admin's password reset revokes the target's sessions, not the admin's.
    let bob = token_for(&m, "bob");
    let admin = token_for(&m, "admin");
    let bob_id = m["users"]["bob"]["user_id"].as_str().unwrap();
    let r = send(
        "PATCH",
        &g.url(&format!("/api/v1/auth/users/{bob_id}")),
        Some(&admin),
        Some(json!({"password": "BobPass999!"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(send("GET", &me, Some(&bob), None).await.status, 401);
    assert_eq!(send("GET", &me, Some(&admin), None).await.status, 200);
    // The revocations survive a restart (ledger).
    let ledger =
        invoke_guard::facts::ledger::Ledger::open(&g.ledger_dir.path().join("ledger.db")).unwrap();
    assert!(ledger.revoked_before(bob_id).is_some());
}

#[tokio::test]
async fn with_epochs_the_upstream_revokes_and_the_guard_does_not_rewrite_logins() {
    let (_db, _up, g, _m, t) = login_world("6.14.2", "carol", 3600).await;
    let login = login(&g, "carol@example.com").await;
    assert_eq!(login.json()["token"], json!(t));
    let r = send(
        "PATCH",
        &g.url("/api/v1/auth/me"),
        Some(&t),
        Some(json!({"current_password": "a", "new_password": "b"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-refreshed-token").is_none());
}

/// A guard whose mock upstream answers the list endpoints like an unfiltering 6.12 would.
async fn list_world(version: &'static str) -> (DbCopy, Mock, Guard, Value) {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let m = manifest(version);
    let all_uncategorized: Vec<Value> = m["images"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["board_id"].is_null())
        .map(|i| i["image_name"].clone())
        .collect();
    let alice_item = json!({"item_id": 1, "user_id": m["users"]["alice"]["user_id"], "user_email": "alice@example.com",
        "batch_id": "alice-batch", "session_id": "alice-session", "priority": 5, "field_values": [{"x": 1}],
        "workflow": {"w": 1}, "error_traceback": "secret", "session": {"id": "alice-session", "graph": {"nodes": {"n": {}}}}});
    let bob_item = json!({"item_id": 4, "user_id": m["users"]["bob"]["user_id"], "batch_id": "bob-batch",
        "session_id": "bob-session", "session": {"id": "bob-session", "graph": {"nodes": {"n": {}}}}});
    let responder: Responder = Arc::new(move |seen| {
        let path = seen.target.split('?').next().unwrap_or_default();
        match path {
            "/api/v1/boards/none/image_names" => ok_json(json!(all_uncategorized)),
            "/api/v1/queue/default/list_all" => ok_json(json!([alice_item, bob_item])),
            "/api/v1/queue/default/current" | "/api/v1/queue/default/i/1" => {
                ok_json(alice_item.clone())
            }
            "/api/v1/queue/default/next" => ok_json(Value::Null),
            "/api/v1/queue/default/status" => {
                ok_json(json!({"queue": {"item_id": 1, "batch_id": "alice-batch",
                "session_id": "alice-session", "pending": 0}, "processor": {"is_started": true}}))
            }
            p if p.starts_with("/api/v1/queue/default/b/") => {
                ok_json(json!({"queue_id": "default",
                "batch_id": "x", "pending": 3, "in_progress": 1, "completed": 9, "failed": 2, "canceled": 1, "total": 16}))
            }
            "/api/v1/boards/broken/image_names" => {
                let mut r = ok_json(json!(null));
                *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"<html>oops"));
                r
            }
            _ => ok_json(json!({"ok": true})),
        }
    });
    let up = mock(Some(responder)).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    (db, up, g, m)
}

fn name_set(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn uncategorized_names_are_filtered_where_the_upstream_does_not() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let own = |role: &str| -> std::collections::BTreeSet<String> {
        m["images"]
            .as_object()
            .unwrap()
            .values()
            .filter(|i| i["board_id"].is_null() && i["owner"] == role)
            .map(|i| i["image_name"].as_str().unwrap().to_owned())
            .collect()
    };
    let url = g.url("/api/v1/boards/none/image_names");
    let bob = send("GET", &url, Some(&token_for(&m, "bob")), None).await;
    assert_eq!(bob.status, 200);
    assert_eq!(name_set(&bob.json()), own("bob"));
    assert!(!own("bob").is_empty());
    let admin = send("GET", &url, Some(&token_for(&m, "admin")), None).await;
    assert!(name_set(&admin.json()).len() > own("bob").len() + own("alice").len() - 1);
    // 6.14.2 scopes it itself: the guard leaves the body alone.
    let (_db2, _up2, g2, m2) = list_world("6.14.2").await;
    let bob = send(
        "GET",
        &g2.url("/api/v1/boards/none/image_names"),
        Some(&token_for(&m2, "bob")),
        None,
    )
    .await;
    let all = m2["images"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["board_id"].is_null())
        .count();
    assert_eq!(bob.json().as_array().unwrap().len(), all);
}

#[tokio::test]
async fn queue_items_and_status_are_sanitized_where_the_upstream_does_not() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let bob = token_for(&m, "bob");
    let alice = token_for(&m, "alice");
    let list = send(
        "GET",
        &g.url("/api/v1/queue/default/list_all"),
        Some(&bob),
        None,
    )
    .await
    .json();
    let (a, b) = (&list[0], &list[1]);
    assert_eq!(a["user_id"], "redacted");
    assert_eq!(a["batch_id"], "redacted");
    assert_eq!(a["priority"], 0);
    for gone in ["user_email", "field_values", "workflow", "error_traceback"] {
        assert!(a[gone].is_null(), "{gone} survived: {a}");
    }
    assert_eq!(a["session"]["id"], "redacted");
    assert_eq!(a["session"]["graph"]["nodes"], json!({}));
    assert_eq!(a["item_id"], 1, "ids and statuses survive");
    assert_eq!(b["batch_id"], "bob-batch", "his own item is untouched");
    let current = send(
        "GET",
        &g.url("/api/v1/queue/default/current"),
        Some(&bob),
        None,
    )
    .await
    .json();
    assert_eq!(current["session_id"], "redacted");
    let own = send(
        "GET",
        &g.url("/api/v1/queue/default/i/1"),
        Some(&alice),
        None,
    )
    .await
    .json();
    assert_eq!(own["batch_id"], "alice-batch");
    let next = send(
        "GET",
        &g.url("/api/v1/queue/default/next"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!((next.status, next.json()), (StatusCode::OK, Value::Null));
    let status = send(
        "GET",
        &g.url("/api/v1/queue/default/status"),
        Some(&bob),
        None,
    )
    .await
    .json();
    assert!(status["queue"]["item_id"].is_null() && status["queue"]["session_id"].is_null());
    assert_eq!(status["queue"]["pending"], 0);
    let status = send(
        "GET",
        &g.url("/api/v1/queue/default/status"),
        Some(&alice),
        None,
    )
    .await
    .json();
    assert_eq!(
        status["queue"]["item_id"], 1,
        "the owner of the running item sees it"
    );
    let admin = send(
        "GET",
        &g.url("/api/v1/queue/default/list_all"),
        Some(&token_for(&m, "admin")),
        None,
    )
    .await
    .json();
    assert_eq!(admin[0]["batch_id"], "alice-batch");
    // 6.14.2 sanitizes itself: bodies pass through.
    let (_db2, _up2, g2, m2) = list_world("6.14.2").await;
    let list = send(
        "GET",
        &g2.url("/api/v1/queue/default/list_all"),
        Some(&token_for(&m2, "bob")),
        None,
    )
    .await
    .json();
    assert_eq!(list[0]["batch_id"], "alice-batch");
}

#[tokio::test]
async fn an_unfilterable_list_fails_closed() {
    let (db, _up, g, m) = list_world("6.12.0").await;
    // A board the upstream answers with garbage: the guard cannot filter, so it answers 503 … but only
    // for lists it must filter; here "broken" is not "none", so nothing needs filtering.
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    conn.execute(
        "INSERT INTO boards (board_id, board_name, user_id) VALUES ('broken', 'b', ?1)",
        [m["users"]["bob"]["user_id"].as_str().unwrap()],
    )
    .unwrap();
    let r = send(
        "GET",
        &g.url("/api/v1/boards/broken/image_names"),
        Some(&token_for(&m, "bob")),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    // When the facts for a needed filter are unreadable, the list is not sent.
    std::fs::remove_file(&db.path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while g.state.facts.is_available() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = send(
        "GET",
        &g.url("/api/v1/boards/none/image_names"),
        Some(&token_for(&m, "bob")),
        None,
    )
    .await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn batch_counts_cover_only_the_callers_items_where_the_upstream_counts_all() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let batch = m["queue_items"]["q_alice_add_1"]["batch_id"]
        .as_str()
        .unwrap();
    let url = g.url(&format!("/api/v1/queue/default/b/{batch}/status"));
    let bob = send("GET", &url, Some(&token_for(&m, "bob")), None)
        .await
        .json();
    assert_eq!(
        (bob["total"].clone(), bob["completed"].clone()),
        (json!(0), json!(0))
    );
    let alice = send("GET", &url, Some(&token_for(&m, "alice")), None)
        .await
        .json();
    assert_eq!(
        (alice["completed"].clone(), alice["total"].clone()),
        (json!(2), json!(2))
    );
    let admin = send("GET", &url, Some(&token_for(&m, "admin")), None)
        .await
        .json();
    assert_eq!(admin["total"], 16, "admins see the upstream's counts");
}
