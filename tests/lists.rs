//! Lists, counts and batches of older upstreams answered as main answers them (filters::recompute),
//! through the real guard over fixture databases written by InvokeAI 6.12.0 and 6.14.2, in front
//! of a mock upstream that answers the way the old server does: with every user's items.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::*;
use invoke_guard::facts::ledger::Entry;
use serde_json::{json, Value};

/// Every image of the database: name → (owner id, starred, is_intermediate, date).
fn images(db: &std::path::Path) -> HashMap<String, (String, bool, bool, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT image_name, user_id, starred, is_intermediate, DATE(created_at) FROM images",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn uid(m: &Value, who: &str) -> String {
    m["users"][who]["user_id"].as_str().unwrap().to_owned()
}

/// A mock 6.12: lists answer with every user's items, as the old server does.
fn old_server(db: std::path::PathBuf) -> Responder {
    Arc::new(move |seen: &Seen| {
        let path = seen.target.split('?').next().unwrap_or_default().to_owned();
        let all = images(&db);
        let mut names: Vec<&String> = all.keys().collect();
        names.sort();
        match (seen.method.as_str(), path.as_str()) {
            ("POST", "/api/v1/images/images_by_names") => {
                let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
                let dtos: Vec<Value> = body["image_names"]
                    .as_array()
                    .map(|a| a.to_vec())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| all.contains_key(n.as_str().unwrap_or_default()))
                    .map(|n| json!({"image_name": n, "width": 8}))
                    .collect();
                ok_json(Value::from(dtos))
            }
            ("GET", "/api/v1/images/names") => ok_json(json!({
                "image_names": names, "starred_count": 1, "total_count": names.len()
            })),
            ("GET", "/api/v1/images/") => ok_json(json!({
                "items": names.iter().map(|n| json!({"image_name": n})).collect::<Vec<_>>(),
                "offset": 0, "limit": 100, "total": names.len()
            })),
            ("GET", "/api/v1/images/intermediates") => ok_json(json!(999)),
            ("POST", "/api/v1/images/delete") => {
                let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
                ok_json(json!({"deleted_images": body["image_names"], "affected_boards": []}))
            }
            ("DELETE", p) if p.starts_with("/api/v1/boards/") => ok_json(json!({
                "board_id": p.trim_start_matches("/api/v1/boards/"),
                "deleted_board_images": ["someone-elses.png"], "deleted_images": []
            })),
            ("GET", "/api/v1/virtual_boards/by_date") => {
                let dates: HashSet<&String> = all.values().map(|v| &v.3).collect();
                let alice = all.iter().find(|(_, v)| v.0.starts_with("0e4f")).unwrap().0;
                ok_json(Value::from(
                    dates
                        .into_iter()
                        .map(|d| json!({"date": d, "cover_image_name": alice, "image_count": 9}))
                        .collect::<Vec<_>>(),
                ))
            }
            _ => ok_json(json!({"unexpected": seen.target})),
        }
    })
}

/// One request as a manifest user.
async fn call(
    g: &Guard,
    m: &Value,
    who: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    send(method, &g.url(path), Some(&token_for(m, who)), body).await
}

async fn setup_612() -> (DbCopy, Value, Mock, Guard) {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    // As InvokeAI runs it (the fixture files are checkpointed into rollback-journal mode).
    rusqlite::Connection::open(&db.path)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    let m = manifest("6.12.0");
    let up = mock(Some(old_server(db.path.clone()))).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    (db, m, up, g)
}

#[tokio::test]
async fn image_list_without_board_is_the_callers_own_page_in_upstream_order() {
    let (db, m, up, g) = setup_612().await;
    let all = images(&db.path);
    let bob = uid(&m, "bob");
    let own: Vec<&String> = all.keys().filter(|n| all[*n].0 == bob).collect();
    assert!(own.len() >= 3, "fixture: bob owns several images");
    let tok = token_for(&m, "bob");
    let mut seen_pages = Vec::new();
    for offset in 0..own.len() {
        let r = send(
            "GET",
            &g.url(&format!(
                "/api/v1/images/?limit=1&offset={offset}&starred_first=false&order_dir=ASC"
            )),
            Some(&tok),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let j = r.json();
        assert_eq!(
            j["total"],
            own.len(),
            "total counts the caller's images only"
        );
        assert_eq!(
            (j["offset"].clone(), j["limit"].clone()),
            (json!(offset), json!(1))
        );
        let items = j["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        let name = items[0]["image_name"].as_str().unwrap().to_owned();
        assert_eq!(all[&name].0, bob, "a foreign image on bob's page");
        seen_pages.push(name);
    }
    // Paging walks every own image exactly once.
    let unique: HashSet<&String> = seen_pages.iter().collect();
    assert_eq!(unique.len(), own.len());
    // Upstream saw only images_by_names with bob's names, never the unscoped list.
    for s in up.requests() {
        assert_eq!(s.target, "/api/v1/images/images_by_names");
        assert_eq!(s.method, "POST");
        let names: Value = serde_json::from_slice(&s.body).unwrap();
        for n in names["image_names"].as_array().unwrap() {
            assert_eq!(all[n.as_str().unwrap()].0, bob);
        }
    }
    // A filter the upstream applies is applied to the page too.
    let r = send(
        "GET",
        &g.url("/api/v1/images/?is_intermediate=true&limit=50"),
        Some(&tok),
        None,
    )
    .await;
    let want = own.iter().filter(|n| all[**n].2).count();
    assert_eq!(r.json()["total"], want);
    // A value the upstream would refuse is refused (422), not guessed.
    let r = send(
        "GET",
        &g.url("/api/v1/images/?order_dir=sideways"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn admins_and_explicit_boards_pass_through() {
    let (_db, m, up, g) = setup_612().await;
    let r = call(&g, &m, "admin", "GET", "/api/v1/images/?limit=5", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().target, "/api/v1/images/?limit=5");
    let r = call(
        &g,
        &m,
        "bob",
        "GET",
        "/api/v1/images/?board_id=none&limit=5",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().unwrap().target,
        "/api/v1/images/?board_id=none&limit=5"
    );
}

#[tokio::test]
async fn newer_upstreams_scope_lists_themselves() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let up = mock(Some(old_server(db.path.clone()))).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    let r = call(&g, &m, "bob", "GET", "/api/v1/images/?limit=5", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().target, "/api/v1/images/?limit=5");
}

#[tokio::test]
async fn image_names_without_board_keep_own_names_and_recount() {
    let (db, m, _up, g) = setup_612().await;
    let all = images(&db.path);
    let alice = uid(&m, "alice");
    let r = call(&g, &m, "alice", "GET", "/api/v1/images/names", None).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let names: Vec<&str> = j["image_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let own: Vec<&String> = all.keys().filter(|n| all[*n].0 == alice).collect();
    assert_eq!(names.len(), own.len());
    assert!(names.iter().all(|n| all[*n].0 == alice));
    // Upstream order kept (the mock answers sorted names).
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(j["total_count"], own.len());
    let starred = own.iter().filter(|n| all[**n].1).count();
    assert_eq!(j["starred_count"], starred);
    let r = call(
        &g,
        &m,
        "alice",
        "GET",
        "/api/v1/images/names?starred_first=false",
        None,
    )
    .await;
    assert_eq!(r.json()["starred_count"], 0);
}

#[tokio::test]
async fn images_by_names_drops_what_the_caller_may_not_read() {
    let (_db, m, up, g) = setup_612().await;
    let img = |r: &str| m["images"][r]["image_name"].as_str().unwrap().to_owned();
    let ask = [
        img("alice_private_1"),
        img("bob_uncat_1"),
        "no-such-image.png".into(),
    ];
    let r = call(
        &g,
        &m,
        "bob",
        "POST",
        "/api/v1/images/images_by_names",
        Some(json!({"image_names": ask})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let got: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["image_name"].clone())
        .collect();
    assert_eq!(got, vec![json!(img("bob_uncat_1"))]);
    // The upstream was asked for all of them (the answer is filtered, not the question).
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn batch_delete_forwards_only_the_writable_names() {
    let (_db, m, up, g) = setup_612().await;
    let img = |r: &str| m["images"][r]["image_name"].as_str().unwrap().to_owned();
    let r = call(
        &g,
        &m,
        "bob",
        "POST",
        "/api/v1/images/delete",
        Some(json!({"image_names": [img("alice_private_1"), img("bob_uncat_1")]})),
    )
    .await;
    assert_eq!(r.status, 200);
    let sent: Value = serde_json::from_slice(&up.last().unwrap().body).unwrap();
    assert_eq!(sent, json!({"image_names": [img("bob_uncat_1")]}));
    // Only foreign names: nothing of alice's is ever sent.
    call(
        &g,
        &m,
        "bob",
        "POST",
        "/api/v1/images/delete",
        Some(json!({"image_names": [img("alice_private_1")]})),
    )
    .await;
    let sent: Value = serde_json::from_slice(&up.last().unwrap().body).unwrap();
    assert_eq!(sent, json!({"image_names": []}));
    // A malformed element is refused before anything is forwarded.
    let before = up.count();
    let r = call(
        &g,
        &m,
        "bob",
        "POST",
        "/api/v1/images/delete",
        Some(json!({"image_names": [img("bob_uncat_1"), 7]})),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn intermediates_count_and_date_covers_are_the_callers_own() {
    let (db, m, _up, g) = setup_612().await;
    let all = images(&db.path);
    let bob = uid(&m, "bob");
    let tok = token_for(&m, "bob");
    let r = send(
        "GET",
        &g.url("/api/v1/images/intermediates"),
        Some(&tok),
        None,
    )
    .await;
    let own_intermediates = all.values().filter(|v| v.0 == bob && v.2).count();
    assert_eq!(r.json(), json!(own_intermediates));
    let r = send(
        "GET",
        &g.url("/api/v1/virtual_boards/by_date"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    for board in r.json().as_array().unwrap() {
        match board["cover_image_name"].as_str() {
            Some(cover) => {
                assert_eq!(all[cover].0, bob, "a foreign cover");
                assert_eq!(board["date"].as_str(), Some(all[cover].3.as_str()));
            }
            None => assert!(!all
                .values()
                .any(|v| v.0 == bob && !v.2 && v.3 == board["date"])),
        }
    }
}

/// 6.12 workflows: owners come from the guard's ledger.
async fn workflows_612() -> (DbCopy, Value, Mock, Guard) {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let c = rusqlite::Connection::open(&db.path).unwrap();
    // Tags that would leak: alice's private workflow carries one only she may see.
    let wf = |k: &str| {
        m["workflows"][k]["workflow_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    c.execute(
        "UPDATE workflow_library SET workflow = json_set(workflow, '$.tags', 'alice-secret, fixture') WHERE workflow_id = ?1",
        [wf("wf_alice_private")],
    )
    .unwrap();
    c.execute(
        "UPDATE workflow_library SET workflow = json_set(workflow, '$.tags', 'bob-tag') WHERE workflow_id = ?1",
        [wf("wf_bob_private")],
    )
    .unwrap();
    let rows: Vec<Value> = c
        .prepare("SELECT workflow_id, category, name FROM workflow_library ORDER BY name")
        .unwrap()
        .query_map([], |r| {
            Ok(json!({"workflow_id": r.get::<_, String>(0)?, "category": r.get::<_, String>(1)?, "name": r.get::<_, String>(2)?}))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(c);
    let up = mock(Some(Arc::new(move |s: &Seen| {
        let path = s.target.split('?').next().unwrap_or_default();
        match path {
            "/api/v1/workflows/" => ok_json(json!({
                "items": rows, "page": 0, "per_page": rows.len(), "pages": 1, "total": rows.len()
            })),
            "/api/v1/workflows/tags" => ok_json(json!(["alice-secret", "bob-tag", "fixture"])),
            _ => ok_json(json!({"leaky": 99})),
        }
    })))
    .await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    for (k, who) in [
        ("wf_alice_private", "alice"),
        ("wf_alice_shared", "alice"),
        ("wf_bob_private", "bob"),
    ] {
        g.state
            .ledger
            .record(Entry::Workflow, &wf(k), &uid(&m, who))
            .await
            .unwrap();
    }
    (db, m, up, g)
}

#[tokio::test]
async fn workflow_list_shows_own_and_default_with_main_paging() {
    let (_db, m, up, g) = workflows_612().await;
    let wf = |k: &str| {
        m["workflows"][k]["workflow_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let tok = token_for(&m, "bob");
    let r = send(
        "GET",
        &g.url("/api/v1/workflows/?categories=user&page=0&per_page=50"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    let ids: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflow_id"].as_str().unwrap())
        .collect();
    // The mock ignores categories: the guard's own rule keeps bob's and the defaults.
    assert!(ids.len() > 1, "{j}");
    assert!(ids.contains(&wf("wf_bob_private").as_str()));
    assert!(!ids.contains(&wf("wf_alice_private").as_str()));
    assert!(
        !ids.contains(&wf("wf_dave_private").as_str()),
        "unowned (legacy) workflows are not listed"
    );
    let total = j["total"].as_i64().unwrap();
    assert_eq!(total as usize, ids.len());
    // The guard asked for one wide page, with the client's other parameters kept.
    let asked = up.last().unwrap().target;
    assert!(
        asked.starts_with("/api/v1/workflows/?categories=user&page=0&per_page="),
        "{asked}"
    );
    // Paging: per_page 2 over the visible list.
    let r = send(
        "GET",
        &g.url("/api/v1/workflows/?page=1&per_page=2"),
        Some(&tok),
        None,
    )
    .await;
    let j = r.json();
    assert_eq!(j["page"], 1);
    assert_eq!(j["per_page"], 2);
    assert_eq!(j["total"].as_i64().unwrap(), total);
    assert_eq!(j["pages"].as_i64().unwrap(), (total + 1) / 2);
    assert!(j["items"].as_array().unwrap().len() <= 2);
    // Parameter pollution: an encoded `page` is not left for the upstream to pick.
    send(
        "GET",
        &g.url("/api/v1/workflows/?pag%65=3"),
        Some(&tok),
        None,
    )
    .await;
    assert!(!up.last().unwrap().target.contains("pag%65"));
}

#[tokio::test]
async fn workflow_tags_and_counts_are_recomputed_over_visible_workflows() {
    let (_db, m, _up, g) = workflows_612().await;
    let tok = token_for(&m, "bob");
    let r = send("GET", &g.url("/api/v1/workflows/tags"), Some(&tok), None).await;
    let tags: Vec<String> = serde_json::from_value(r.json()).unwrap();
    assert!(tags.contains(&"bob-tag".to_owned()), "{tags:?}");
    assert!(!tags.contains(&"alice-secret".to_owned()), "{tags:?}");
    let r = send(
        "GET",
        &g.url("/api/v1/workflows/counts_by_tag?tags=alice-secret&tags=bob-tag"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.json(), json!({"alice-secret": 0, "bob-tag": 1}));
    let r = send(
        "GET",
        &g.url("/api/v1/workflows/counts_by_category?categories=user"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.json(), json!({"user": 1}));
    let r = call(
        &g,
        &m,
        "alice",
        "GET",
        "/api/v1/workflows/counts_by_category?categories=user",
        None,
    )
    .await;
    assert_eq!(r.json(), json!({"user": 2}));
}

#[tokio::test]
async fn style_preset_list_keeps_defaults_and_own() {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let presets: Vec<Value> = m["style_presets"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| json!({"id": p["id"], "type": p["type"], "name": p["name"]}))
        .chain([json!({"id": "shipped-1", "type": "default", "name": "Shipped"})])
        .collect();
    let up = mock(Some(Arc::new(move |_: &Seen| {
        ok_json(Value::from(presets.clone()))
    })))
    .await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    let sp = |k: &str| m["style_presets"][k]["id"].as_str().unwrap().to_owned();
    g.state
        .ledger
        .record(Entry::StylePreset, &sp("sp_bob"), &uid(&m, "bob"))
        .await
        .unwrap();
    g.state
        .ledger
        .record(Entry::StylePreset, &sp("sp_alice"), &uid(&m, "alice"))
        .await
        .unwrap();
    let r = call(&g, &m, "bob", "GET", "/api/v1/style_presets/", None).await;
    let mut ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = m["style_presets"]
        .as_object()
        .unwrap()
        .values()
        .filter(|p| p["type"] == "default")
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .chain([sp("sp_bob"), "shipped-1".to_owned()])
        .collect();
    want.sort();
    assert_eq!(ids, want);
    // Admins see every preset.
    let r = call(&g, &m, "admin", "GET", "/api/v1/style_presets/", None).await;
    assert_eq!(
        r.json().as_array().unwrap().len(),
        m["style_presets"].as_object().unwrap().len() + 1
    );
}

#[tokio::test]
async fn a_list_too_large_to_recompute_fails_closed() {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let up = mock(Some(old_server(db.path.clone()))).await;
    let raw = raw_config("[limits]\nmax_list_items = 1\n");
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw).await;
    let r = call(&g, &m, "bob", "GET", "/api/v1/images/?limit=10", None).await;
    assert_eq!(r.status, 503);
    assert!(r.detail().contains("max_list_items"), "{}", r.detail());
    assert_eq!(up.count(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn an_unexpected_upstream_shape_is_withheld() {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let up = mock(Some(Arc::new(|_: &Seen| {
        ok_json(json!({"surprise": ["x"]}))
    })))
    .await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    for (method, path) in [
        ("POST", "/api/v1/images/images_by_names"),
        ("GET", "/api/v1/images/names"),
        ("GET", "/api/v1/style_presets/"),
        ("GET", "/api/v1/virtual_boards/by_date"),
    ] {
        let body = (method == "POST").then(|| json!({"image_names": []}));
        let r = send(method, &g.url(path), Some(&token_for(&m, "bob")), body).await;
        assert_eq!(r.status, 502, "{method} {path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("surprise"));
    }
}

/// Lists stay correct under change: while other users create and delete images, every page and
/// every name list the caller gets holds only the caller's images, without duplicates, and its
/// count agrees with what it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_stay_correct_while_other_users_write() {
    let (db, m, _up, g) = setup_612().await;
    let bob = uid(&m, "bob");
    let carol = uid(&m, "carol");
    let path = db.path.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writes done so far: the reader keeps reading until the writer has really run beside it
    // (on a loaded machine the writer thread may start late).
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, carol, bob) = (stop.clone(), carol.clone(), bob.clone());
        let written = written.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let name = format!("writer-{n}.png");
                // Another user's images appear and vanish; bob's own set grows too.
                let owner = if n.is_multiple_of(3) { &bob } else { &carol };
                c.execute(
                    "INSERT INTO images (image_name, image_origin, image_category, width, height, is_intermediate, user_id) \
                     VALUES (?1, 'internal', 'general', 8, 8, 0, ?2)",
                    rusqlite::params![name, owner],
                )
                .unwrap();
                if n.is_multiple_of(2) {
                    c.execute(
                        "DELETE FROM images WHERE image_name = ?1 AND user_id = ?2",
                        rusqlite::params![format!("writer-{}.png", n - 1), carol],
                    )
                    .unwrap();
                }
                written.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    let tok = token_for(&m, "bob");
    let concurrent = |round: u64| {
        round >= 40 && written.load(std::sync::atomic::Ordering::Relaxed) > 10 || round >= 4000
    };
    let mut round = 0u64;
    while !concurrent(round) {
        round += 1;
        let r = send(
            "GET",
            &g.url(&format!("/api/v1/images/?limit=5&offset={}", round % 4)),
            Some(&tok),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        let j = r.json();
        let items: Vec<String> = j["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["image_name"].as_str().unwrap().to_owned())
            .collect();
        let owners = images(&db.path);
        for name in &items {
            if let Some(o) = owners.get(name) {
                assert_eq!(o.0, bob, "foreign image {name} on bob's page");
            }
        }
        assert_eq!(
            items.iter().collect::<HashSet<_>>().len(),
            items.len(),
            "duplicate on a page"
        );
        assert!(j["total"].as_u64().unwrap() >= items.len() as u64);
        let r = send("GET", &g.url("/api/v1/images/names"), Some(&tok), None).await;
        let j = r.json();
        let names: Vec<&str> = j["image_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(
            j["total_count"],
            names.len(),
            "count disagrees with the list"
        );
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        let owners = images(&db.path);
        assert!(names
            .iter()
            .all(|n| owners.get(*n).is_none_or(|o| o.0 == bob)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 10, "the writer ran concurrently ({writes} writes)");
}

#[tokio::test]
async fn board_delete_with_images_by_its_owner_deletes_only_her_images() {
    let (db, m, up, g) = setup_612().await;
    let alice = uid(&m, "alice");
    let board = m["boards"]["alice_public"]["board_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_board: Vec<(String, String)> = {
        let c = rusqlite::Connection::open(&db.path).unwrap();
        let mut stmt = c
            .prepare("SELECT i.image_name, i.user_id FROM board_images b JOIN images i ON i.image_name = b.image_name WHERE b.board_id = ?1")
            .unwrap();
        let rows = stmt
            .query_map([&board], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    let mut own: Vec<&String> = on_board
        .iter()
        .filter(|(_, o)| *o == alice)
        .map(|(n, _)| n)
        .collect();
    own.sort();
    assert!(
        !own.is_empty() && own.len() < on_board.len(),
        "fixture: a board with others' images too"
    );
    let r = call(
        &g,
        &m,
        "alice",
        "DELETE",
        &format!("/api/v1/boards/{board}?include_images=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/api/v1/images/delete")
    );
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    let mut sent: Vec<String> = serde_json::from_value(sent["image_names"].clone()).unwrap();
    sent.sort();
    assert_eq!(
        sent.iter().collect::<Vec<_>>(),
        own,
        "only her own images are deleted"
    );
    assert_eq!(seen[1].method, "DELETE");
    assert_eq!(
        seen[1].target,
        format!("/api/v1/boards/{board}?include_images=false")
    );
    let j = r.json();
    assert_eq!(j["deleted_board_images"], json!([]));
    let mut answered: Vec<String> = serde_json::from_value(j["deleted_images"].clone()).unwrap();
    answered.sort();
    assert_eq!(answered, sent);
    // Admins delete everything: passed through as sent.
    let r = call(
        &g,
        &m,
        "admin",
        "DELETE",
        &format!("/api/v1/boards/{board}?include_images=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().unwrap().target,
        format!("/api/v1/boards/{board}?include_images=true")
    );
}

#[tokio::test]
async fn a_refused_prelude_stops_the_board_delete() {
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let m = manifest("6.12.0");
    let up = mock(Some(Arc::new(|s: &Seen| {
        let mut r = ok_json(json!({"detail": "nope"}));
        if s.target == "/api/v1/images/delete" {
            *r.status_mut() = http::StatusCode::FORBIDDEN;
        }
        r
    })))
    .await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    let board = m["boards"]["alice_public"]["board_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &g,
        &m,
        "alice",
        "DELETE",
        &format!("/api/v1/boards/{board}?include_images=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        up.count(),
        1,
        "the board delete was not sent after a refused image delete"
    );
}
