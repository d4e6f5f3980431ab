//! The 6.12 response list filters over generated ownership facts.
//!
//! Facts: a copy of the 6.12 fixture database (written by real InvokeAI) to which this target
//! adds generated images, board placements and queue items with owners drawn from the fixture's
//! users (a fixed layout per process, built once). The oracle reads the same rows into memory and
//! decides ownership itself, independently of the guard's queries.
//!
//! Property: for a non-admin caller, whatever the upstream list body, the filtered answer is
//! either an error (withheld: fail closed) or contains no item the caller may not read:
//! - uncategorized names: only the caller's own images that sit on no board;
//! - queue items: an item not owned by the caller keeps none of main's sanitized fields;
//! - queue status: a running item is named only to its owner;
//! - queue counts: exactly the caller's own items of the batch or destination;
//! - image names (6.12's `get_image_names` recounted): only the caller's own images, each one
//!   the upstream listed, with counts that match the names kept;
//! - image DTOs (`images_by_names`, per item): only images the caller may read (her own, or on
//!   a board 6.12 marks `is_public`; one generated board is), in the upstream's order.
//!
//! Input: byte 0 picks the list and the caller, byte 1 the count scope; the rest is the body.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use invoke_guard::facts::ledger::Ledger;
use invoke_guard::facts::{Facts, FactsConfig};
use invoke_guard::filters::{self, FilterContext, ResponseFilter};
use invoke_guard::rules::vocab::{List, Recompute};
use invoke_guard::identity::{Principal, TokenSource};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const STATUSES: [&str; 5] = ["pending", "in_progress", "completed", "failed", "canceled"];

struct QueueRow {
    owner: String,
    batch: String,
    destination: Option<String>,
    queue: String,
    status: String,
}

struct World {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    facts: Facts,
    ledger: Ledger,
    /// (user_id, is_admin)
    users: Vec<(String, bool)>,
    image_owner: HashMap<String, String>,
    on_board: HashSet<String>,
    on_public_board: HashSet<String>,
    queue: HashMap<i64, QueueRow>,
    batches: Vec<String>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/invokeai-6.12.0-rich.db")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("invokeai.db");
        std::fs::copy(fixture(), &path).expect("copy fixture");
        let mut perms = std::fs::metadata(&path).expect("stat").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).expect("chmod");
        let conn = rusqlite::Connection::open(&path).expect("open copy");
        let users: Vec<(String, bool)> = conn
            .prepare("SELECT user_id, is_admin FROM users ORDER BY user_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let board: String = conn
            .query_row("SELECT board_id FROM boards ORDER BY board_id LIMIT 1", [], |r| r.get(0))
            .unwrap();
        // A second board made public (6.12's `is_public`): its images are readable by everyone.
        let public_board: String = conn
            .query_row("SELECT board_id FROM boards ORDER BY board_id DESC LIMIT 1", [], |r| r.get(0))
            .unwrap();
        conn.execute("UPDATE boards SET is_public = 1 WHERE board_id = ?1", [&public_board])
            .unwrap();
        // Generated facts: 96 images and 60 queue items spread over every user (a fixed layout).
        let tx = conn.unchecked_transaction().unwrap();
        for k in 0..96usize {
            let owner = &users[(k * 7 + k / 5) % users.len()].0;
            tx.execute(
                "INSERT INTO images (image_name, image_origin, image_category, width, height, user_id) \
                 VALUES (?1, 'internal', 'general', 8, 8, ?2)",
                rusqlite::params![format!("g-{k}.png"), owner],
            )
            .unwrap();
            if k % 3 != 2 {
                let on = if k % 3 == 0 { &board } else { &public_board };
                tx.execute(
                    "INSERT INTO board_images (board_id, image_name) VALUES (?1, ?2)",
                    rusqlite::params![on, format!("g-{k}.png")],
                )
                .unwrap();
            }
        }
        for k in 0..60usize {
            let owner = &users[(k * 5 + k / 7) % users.len()].0;
            tx.execute(
                "INSERT INTO session_queue (item_id, batch_id, queue_id, session_id, session, status, user_id, destination) \
                 VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?6, ?7)",
                rusqlite::params![
                    5000 + k as i64,
                    format!("gb-{}", k % 4),
                    if k % 11 == 0 { "other" } else { "default" },
                    format!("gs-{k}"),
                    STATUSES[k % 5],
                    owner,
                    (k % 3 != 0).then(|| format!("gd-{}", k % 2)),
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let image_owner = conn
            .prepare("SELECT image_name, COALESCE(user_id, 'system') FROM images")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let on_board = conn
            .prepare("SELECT image_name FROM board_images")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let on_public_board = conn
            .prepare(
                "SELECT bi.image_name FROM board_images bi JOIN boards b ON b.board_id = bi.board_id \
                 WHERE b.is_public = 1",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let queue: HashMap<i64, QueueRow> = conn
            .prepare("SELECT item_id, COALESCE(user_id, 'system'), batch_id, destination, queue_id, status FROM session_queue")
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    QueueRow {
                        owner: r.get(1)?,
                        batch: r.get(2)?,
                        destination: r.get(3)?,
                        queue: r.get(4)?,
                        status: r.get(5)?,
                    },
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        drop(conn);
        let mut batches: Vec<String> = queue.values().map(|q| q.batch.clone()).collect();
        batches.sort();
        batches.dedup();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let facts = rt
            .block_on(async {
                Facts::open(&FactsConfig {
                    db_path: path.clone(),
                    pool_size: 1,
                    busy_timeout: Duration::from_secs(1),
                    cache_entries: 10_000,
                    cache_ttl: Duration::from_secs(3600),
                    poll_interval: Duration::from_millis(100),
                })
            })
            .expect("facts");
        World {
            _dir: dir,
            rt,
            facts,
            ledger: Ledger::in_memory().expect("ledger"),
            users,
            image_owner,
            on_board,
            on_public_board,
            queue,
            batches,
        }
    })
}

/// main's `sanitize_queue_item_for_user` nulled fields, restated on purpose: the oracle must not
/// take the list from the code it checks.
const SANITIZED_NULL: [&str; 15] = [
    "user_display_name",
    "user_email",
    "origin",
    "destination",
    "field_values",
    "retried_from_item_id",
    "workflow_call_id",
    "parent_item_id",
    "parent_session_id",
    "root_item_id",
    "workflow_call_depth",
    "workflow",
    "error_type",
    "error_message",
    "error_traceback",
];

fn assert_sanitized(item: &Map<String, Value>, me: &str) {
    for f in SANITIZED_NULL {
        assert!(
            item.get(f).is_none_or(Value::is_null),
            "foreign item keeps {f}: {item:?} (me {me})"
        );
    }
    for f in ["user_id", "batch_id", "session_id"] {
        assert!(
            item.get(f).is_none_or(|v| v == "redacted"),
            "foreign item keeps {f}: {item:?} (me {me})"
        );
    }
    if let Some(s) = item.get("session") {
        assert_eq!(s["id"], "redacted", "foreign item keeps its session");
        assert_eq!(s["graph"]["nodes"], serde_json::json!({}));
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, scope, body @ ..] = data else {
        return;
    };
    let w = world();
    let (me, is_admin) = &w.users[usize::from(sel / 6) % w.users.len()];
    let principal = Principal {
        user_id: me.clone(),
        email: String::new(),
        is_admin: *is_admin,
        token: String::new(),
        claims: std::sync::Arc::new(Map::new()),
        admin_claim: None,
        exp: u64::MAX,
        via: TokenSource::Bearer,
    };
    let filter = [
        ResponseFilter::List(List::OwnUncategorizedNames),
        ResponseFilter::List(List::SanitizeQueueItems),
        ResponseFilter::List(List::RedactQueueStatus),
        ResponseFilter::List(List::OwnQueueCounts),
        ResponseFilter::Recompute(Recompute::OwnImageNames),
        ResponseFilter::Recompute(Recompute::ReadableImages),
    ][usize::from(sel % 6)];
    let mut path = HashMap::new();
    path.insert("board_id".to_owned(), "none".to_owned());
    path.insert("queue_id".to_owned(), "default".to_owned());
    let batch =
        (scope % 2 == 0).then(|| w.batches[usize::from(scope / 2) % w.batches.len()].clone());
    if let Some(b) = &batch {
        path.insert("batch_id".to_owned(), b.clone());
    }
    let target = invoke_guard::http::canonical::canonicalize("/api/v1/fuzz", None).unwrap();
    let data = invoke_guard::policy::RequestData {
        path: path.into_iter().collect(),
        ..Default::default()
    };
    let ctx = FilterContext {
        principal: Some(&principal),
        secret: None,
        target: &target,
        data: &data,
        request_session: None,
        reshape: None,
        intent: None,
        facts: &w.facts,
        ledger: &w.ledger,
        tls: false,
        max_list_items: 50_000,
        access: None,
    };
    // The filters that run for this request, by the pipeline's own rule.
    let active: Vec<ResponseFilter> = [filter]
        .into_iter()
        .filter(|&f| filters::active(f, Some(&principal), &w.facts.schema(), &data.path, None))
        .collect();
    let input = Bytes::copy_from_slice(body);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    let result =
        w.rt.block_on(filters::apply_body(&active, &mut parts, &input, &ctx));
    // An error is the body withheld (502/503): always safe.
    let Ok(rewritten) = result else {
        return;
    };
    if *is_admin {
        assert!(rewritten.is_none(), "an admin's list was rewritten");
        return;
    }
    let out_bytes = rewritten.unwrap_or_else(|| input.clone());
    let Ok(out) = serde_json::from_slice::<Value>(&out_bytes) else {
        panic!("{filter:?} passed an unreadable body on");
    };
    let before: Value = serde_json::from_slice(&input).expect("the input was JSON");
    match filter {
        ResponseFilter::List(List::OwnUncategorizedNames) => {
            let names = out.as_array().expect("names stay a list");
            for n in names {
                let n = n.as_str().expect("only names");
                assert_eq!(w.image_owner.get(n), Some(me), "{n} is not the caller's");
                assert!(!w.on_board.contains(n), "{n} is on a board");
            }
        }
        ResponseFilter::List(List::SanitizeQueueItems) => {
            let items: Vec<&Value> = match &out {
                Value::Array(items) => items.iter().collect(),
                Value::Null => Vec::new(),
                one => vec![one],
            };
            let originals: Vec<&Value> = match &before {
                Value::Array(items) => items.iter().collect(),
                Value::Null => Vec::new(),
                one => vec![one],
            };
            assert_eq!(items.len(), originals.len());
            for (item, original) in items.iter().zip(originals) {
                let map = item.as_object().expect("items stay objects");
                if original.get("user_id").and_then(Value::as_str) != Some(me) {
                    assert_sanitized(map, me);
                }
            }
        }
        ResponseFilter::List(List::RedactQueueStatus) => {
            let queue = &out["queue"];
            if let Some(id) = queue.get("item_id").filter(|v| !v.is_null()) {
                let id = id.as_i64().expect("an item id");
                assert_eq!(
                    w.queue.get(&id).map(|q| &q.owner),
                    Some(me),
                    "running item {id} named to {me}"
                );
            }
            let named = before["queue"].get("item_id").and_then(Value::as_i64);
            if named.is_some_and(|id| w.queue.get(&id).is_none_or(|q| &q.owner != me)) {
                for f in ["item_id", "batch_id", "session_id"] {
                    assert!(queue[f].is_null(), "foreign running item keeps {f}");
                }
            }
        }
        ResponseFilter::List(List::OwnQueueCounts) => {
            let dest = before.get("destination").and_then(Value::as_str);
            let mut expected: HashMap<&str, i64> = HashMap::new();
            for q in w.queue.values() {
                let in_scope = match (&batch, dest) {
                    (Some(b), _) => &q.batch == b,
                    (None, Some(d)) => q.destination.as_deref() == Some(d),
                    (None, None) => unreachable!("counts without a scope are withheld"),
                };
                if in_scope && q.queue == "default" && &q.owner == me {
                    *expected.entry(q.status.as_str()).or_default() += 1;
                }
            }
            let mut total = 0;
            for s in STATUSES {
                let n = expected.get(s).copied().unwrap_or(0);
                total += n;
                assert_eq!(out[s], Value::from(n), "{s} count for {me}");
            }
            assert_eq!(out["total"], Value::from(total));
        }
        ResponseFilter::Recompute(Recompute::OwnImageNames) => {
            let names = out["image_names"].as_array().expect("names stay a list");
            let listed: HashSet<&Value> = before["image_names"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            for n in names {
                assert!(listed.contains(n), "{n} was not listed by the upstream");
                let n = n.as_str().expect("only names");
                assert_eq!(w.image_owner.get(n), Some(me), "{n} is not the caller's");
            }
            assert_eq!(out["total_count"], Value::from(names.len()));
            let starred = out["starred_count"].as_u64().expect("a starred count");
            assert!(starred as usize <= names.len(), "more starred than listed");
        }
        ResponseFilter::Recompute(Recompute::ReadableImages) => {
            let items = out.as_array().expect("items stay a list");
            let originals = before.as_array().expect("the input was a list");
            // Kept items are the readable ones, in the upstream's order.
            let mut rest = originals.iter();
            for item in items {
                assert!(rest.any(|o| o == item), "{item} reordered or invented");
                let n = item["image_name"].as_str().expect("an image name");
                let readable = w.image_owner.get(n) == Some(me) || w.on_public_board.contains(n);
                assert!(readable, "{n} is not readable by {me}");
            }
        }
        _ => unreachable!(),
    }
});
