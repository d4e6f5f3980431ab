//! Issue #20, the items outside Socket.IO (those are in `tests/socketio.rs`), each against the
//! real guard in front of a recording mock upstream over the fixtures written by real InvokeAI:
//! a lost ledger (item 7), query values in the decision log (item 5), media that is gone
//! (item 8). JSON nesting (item 6) is `abuse.rs::deeply_nested_json_is_bounded`.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use invoke_guard::facts::ledger::{Adoption, Ledger};
use serde_json::{json, Value};

/// InvokeAI 6.12 as far as workflows go: a create writes its row (no owner column), everything
/// else answers `{"ok": true}`.
fn creating_6_12(db: PathBuf) -> Responder {
    let n = Arc::new(Mutex::new(0u32));
    Arc::new(move |seen: &Seen| {
        if seen.method == http::Method::POST && seen.target == "/api/v1/workflows/" {
            let id = {
                let mut n = n.lock().unwrap();
                *n += 1;
                format!("0aba0000-0000-4000-8000-{:012}", *n)
            };
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute(
                    "INSERT INTO workflow_library (workflow_id, workflow) VALUES (?1, ?2)",
                    [&id, &workflow_json(&id).to_string()],
                )
                .unwrap();
            return ok_json(json!({"workflow_id": id, "name": "x"}));
        }
        ok_json(json!({"ok": true}))
    })
}

fn guard_bin(args: &[&str]) -> (bool, String) {
    let out = guard_command().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `GET` as `role`: the status, and whether the request reached the upstream.
async fn get_as(g: &Guard, up: &Mock, m: &Value, role: &str, path: &str) -> (u16, bool) {
    let before = up.count();
    let r = send("GET", &g.url(path), Some(&token_for(m, role)), None).await;
    (r.status.as_u16(), up.count() > before)
}

async fn readyz(g: &Guard) -> (u16, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(invoke_guard::server::admin::run(
        listener,
        g.state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let r = send("GET", &format!("http://{addr}/readyz"), None, None).await;
    let _ = stop.send(());
    (
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

/// Issue #20 item 7: restarting the guard with an empty ledger (a lost volume, a wrong
/// `--ledger`) made alice's private 6.12 workflow, created through the guard, readable by bob.
#[tokio::test]
async fn a_lost_ledger_fails_closed_until_an_operator_adopts_the_database() {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let up = mock(Some(creating_6_12(db.path.clone()))).await;
    let dir = tempfile::tempdir().unwrap();
    // The deployment: its operator adopted the fixture's workflows (they predate the guard).
    let first = dir.path().join("ledger.db");
    Ledger::open(&first)
        .unwrap()
        .adopt_existing(Default::default())
        .unwrap();
    let g = guard_with_ledger(&shipped_routes(), &db.path, &up.url(), &first).await;
    let r = send(
        "POST",
        &g.url("/api/v1/workflows/"),
        Some(&token_for(&m, "alice")),
        Some(json!({"workflow": workflow_json("ignored")})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.detail());
    let private = format!(
        "/api/v1/workflows/i/{}",
        r.json()["workflow_id"].as_str().unwrap()
    );
    assert_eq!(get_as(&g, &up, &m, "bob", &private).await, (403, false));
    assert_eq!(get_as(&g, &up, &m, "alice", &private).await, (200, true));
    drop(g);

    // The ledger volume is lost: a new guard, an empty ledger, the same database.
    let lost = dir.path().join("new-ledger.db");
    let g = guard_with_ledger(&shipped_routes(), &db.path, &up.url(), &lost).await;
    assert!(matches!(
        g.state.ledger.adoption(),
        Adoption::Pending { .. }
    ));
    assert_eq!(
        get_as(&g, &up, &m, "bob", &private).await,
        (403, false),
        "a lost ledger made alice's private workflow readable"
    );
    // Every unowned user workflow is admin-only now (its owner cannot be told from a stranger),
    // the fixture's older ones included; the shipped default workflows stay readable.
    assert_eq!(get_as(&g, &up, &m, "alice", &private).await, (403, false));
    let older = format!(
        "/api/v1/workflows/i/{}",
        m["workflows"]["wf_alice_private"]["workflow_id"]
            .as_str()
            .unwrap()
    );
    assert_eq!(get_as(&g, &up, &m, "bob", &older).await, (403, false));
    assert_eq!(get_as(&g, &up, &m, "admin", &private).await, (200, true));
    let default_wf: String = rusqlite::Connection::open(&db.path)
        .unwrap()
        .query_row(
            "SELECT workflow_id FROM workflow_library WHERE category = 'default' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        get_as(
            &g,
            &up,
            &m,
            "bob",
            &format!("/api/v1/workflows/i/{default_wf}")
        )
        .await,
        (200, true)
    );
    // `check` and `/readyz` say which state the guard is in.
    let (db_arg, ledger_arg) = (db.path.to_str().unwrap(), lost.to_str().unwrap());
    let (ok, out) = guard_bin(&["check", "--db", db_arg, "--ledger", ledger_arg]);
    assert!(ok, "{out}");
    assert!(out.contains("LEDGER NOT ADOPTED"), "{out}");
    let (status, body) = readyz(&g).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("LEDGER NOT ADOPTED"), "{body}");

    // The operator accepts the database's existing workflows as shared, the guard running.
    g.state.spawn_routes_watcher(Duration::from_millis(50));
    let (ok, out) = guard_bin(&[
        "ledger",
        "adopt-existing",
        "--db",
        db_arg,
        "--ledger",
        ledger_arg,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("adopted: "), "{out}");
    for _ in 0..200 {
        if matches!(g.state.ledger.adoption(), Adoption::Adopted { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(matches!(
        g.state.ledger.adoption(),
        Adoption::Adopted { .. }
    ));
    assert_eq!(get_as(&g, &up, &m, "bob", &older).await, (200, true));
    let (_, out) = guard_bin(&["check", "--db", db_arg, "--ledger", ledger_arg]);
    assert!(out.contains("ledger adopted"), "{out}");
    assert!(!out.contains("NOT ADOPTED"), "{out}");
    let (_, body) = readyz(&g).await;
    assert!(!body.contains("NOT ADOPTED"), "{body}");
}

/// A new ledger beside a database with nothing it could be mistaken about adopts by itself.
#[tokio::test]
async fn a_new_ledger_with_nothing_to_adopt_is_adopted_at_start() {
    for fixture in ["invokeai-6.12.0.db", "invokeai-6.14.2-rich.db"] {
        let db = copy_fixture(fixture);
        // A fresh 6.12 install: only the shipped workflows and presets (6.14 keeps owners).
        rusqlite::Connection::open(&db.path)
            .unwrap()
            .execute_batch(
                "DELETE FROM workflow_library WHERE category != 'default';
                 DELETE FROM style_presets WHERE type != 'default';",
            )
            .unwrap();
        let up = mock(None).await;
        let dir = tempfile::tempdir().unwrap();
        let g = guard_with_ledger(
            &shipped_routes(),
            &db.path,
            &up.url(),
            &dir.path().join("ledger.db"),
        )
        .await;
        assert!(
            matches!(g.state.ledger.adoption(), Adoption::Adopted { .. }),
            "{fixture}"
        );
    }
}

/// Every JSON log line captured so far.
fn decision_lines(logs: &Logs) -> Vec<Value> {
    logs.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Issue #20 item 5: a query value read by a check was logged inside `facts`
/// (`board QUERYVALUE: not found`); the README promises query values are never logged.
#[tokio::test]
async fn query_values_never_reach_the_decision_log() {
    let logs = capture_logs("invoke_guard::decision=info", true);
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let up = mock(None).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    let bob = token_for(&m, "bob");
    let secret = "QUERYVALUE-a1b2c3";
    let alice_board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    let unknown = send(
        "GET",
        &g.url(&format!("/api/v1/images/?board_id={secret}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404);
    let foreign = send(
        "GET",
        &g.url(&format!("/api/v1/images/?board_id={alice_board}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(foreign.status, 403);
    let mut found = Vec::new();
    for _ in 0..100 {
        found = decision_lines(&logs)
            .into_iter()
            .filter(|l| l["fields"]["rule_id"] == "images.list" && l["fields"]["outcome"] == "deny")
            .collect();
        if found.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found.len() >= 2, "{found:?}");
    let text = serde_json::to_string(&found).unwrap();
    assert!(!text.contains(secret), "a query value was logged: {text}");
    assert!(
        !text.contains(alice_board),
        "a query value was logged: {text}"
    );
    assert!(text.contains("board (query value): not found"), "{text}");
    assert!(text.contains("board (query value): owner="), "{text}");
}

/// Issue #20 item 8: a deleted image answered 403 `Not authorized to access image …` to its
/// owner, so the 6.14.2 web UI kept stale references (it drops one on 404).
#[tokio::test]
async fn media_that_is_gone_is_404_on_reads_and_403_on_mutations() {
    for version in ["6.12.0", "6.14.2"] {
        let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
        let m = manifest(version);
        let up = mock(None).await;
        let g = guard(&shipped_routes(), &db.path, &up.url()).await;
        let image = m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap();
        // alice deletes her image (InvokeAI removes the row).
        rusqlite::Connection::open(&db.path)
            .unwrap()
            .execute("DELETE FROM images WHERE image_name = ?1", [image])
            .unwrap();
        g.state.facts.invalidate();
        let alice = token_for(&m, "alice");
        for suffix in ["", "/full", "/thumbnail", "/metadata", "/urls", "/workflow"] {
            let r = send(
                "GET",
                &g.url(&format!("/api/v1/images/i/{image}{suffix}")),
                Some(&alice),
                None,
            )
            .await;
            assert_eq!(r.status, 404, "{version} GET {suffix}: {:?}", r.body);
            assert_eq!(r.json(), json!({"detail": "Image not found"}), "{version}");
        }
        let r = send(
            "GET",
            &g.url("/api/v1/videos/i/no-such-video.mp4"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{version}");
        assert_eq!(r.json(), json!({"detail": "Video not found"}));
        // A mutation of it keeps 403; a foreign image stays 403.
        let r = send(
            "DELETE",
            &g.url(&format!("/api/v1/images/i/{image}")),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 403, "{version}");
        let foreign = m["images"]["bob_uncat_1"]["image_name"].as_str().unwrap();
        let r = send(
            "GET",
            &g.url(&format!("/api/v1/images/i/{foreign}")),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 403, "{version}");
        assert_eq!(up.count(), 0, "{version}: nothing was forwarded");
    }
}

/// A storage error is never read as "gone": 503, not 404.
#[tokio::test]
async fn an_unreadable_database_is_503_not_404() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let up = mock(None).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    let image = m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap();
    rusqlite::Connection::open(&db.path)
        .unwrap()
        .execute_batch("DROP TABLE board_images;")
        .unwrap();
    g.state.facts.invalidate();
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/images/i/{image}")),
        Some(&token_for(&m, "alice")),
        None,
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(up.count(), 0);
}
