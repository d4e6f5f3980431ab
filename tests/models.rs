//! Model access and generation quotas (the groups file's `[models]` and `[quotas]`) through the
//! running guard, in front of a recording mock InvokeAI, over a fixture database written by real
//! InvokeAI 6.14.2 with model records and queue items added the way InvokeAI stores them.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

/// Groups, model access and quotas of these tests (also read by the rule tests beside it).
const GROUPS: &str = include_str!("data/models/groups.toml");

/// A model as InvokeAI stores it (`models.config` holds the whole record).
struct Model {
    key: &'static str,
    name: &'static str,
    base: &'static str,
    kind: &'static str,
}

const MODELS: &[Model] = &[
    Model {
        key: "k-main-sd15",
        name: "tiny-main-sd15",
        base: "sd-1",
        kind: "main",
    },
    Model {
        key: "k-vae-sd15",
        name: "tiny-vae-sd15",
        base: "sd-1",
        kind: "vae",
    },
    Model {
        key: "k-lora-style",
        name: "tiny-lora-style",
        base: "sd-1",
        kind: "lora",
    },
    Model {
        key: "k-lora-detail",
        name: "tiny-lora-detail",
        base: "sd-1",
        kind: "lora",
    },
    Model {
        key: "k-flux-dev",
        name: "FLUX dev",
        base: "flux",
        kind: "main",
    },
];

fn record(m: &Model) -> Value {
    json!({
        "key": m.key, "hash": format!("blake3:{}", m.key), "name": m.name, "base": m.base,
        "type": m.kind, "path": format!("/models/{}.safetensors", m.name), "format": "checkpoint",
        "description": null, "source": format!("/models/{}.safetensors", m.name),
        "source_type": "path", "source_api_response": null, "cover_image": null, "file_size": 1800,
        "submodels": null, "usage_info": null
    })
}

fn ident(key: &str) -> Value {
    let m = MODELS.iter().find(|m| m.key == key).expect("a known model");
    json!({"key": m.key, "hash": format!("blake3:{}", m.key), "name": m.name, "base": m.base, "type": m.kind})
}

fn db_with_models() -> DbCopy {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    // As InvokeAI runs it: readers (the guard) never wait for the test's writes.
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    for m in MODELS {
        conn.execute(
            "INSERT INTO models (id, config) VALUES (?1, ?2)",
            rusqlite::params![m.key, record(m).to_string()],
        )
        .unwrap();
    }
    db
}

/// Queue rows of a user, `age_secs` old, as InvokeAI inserts them.
fn add_queue_items(db: &Path, user: &str, status: &str, n: usize, age_secs: u64) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let conn = conn.transaction().unwrap();
    for _ in 0..n {
        let id = format!("s-{}", uuid_like());
        conn.execute(
            "INSERT INTO session_queue (batch_id, queue_id, session_id, session, status, user_id, created_at) \
             VALUES ('b-test', 'default', ?1, '{}', ?2, ?3, strftime('%Y-%m-%d %H:%M:%f', 'now', ?4))",
            rusqlite::params![id, status, user, format!("-{age_secs} seconds")],
        )
        .unwrap();
    }
    conn.commit().unwrap();
}

/// Forget a user's queue items of the fixture (tests count from a known zero).
fn reset_queue(db: &Path, user: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute("DELETE FROM session_queue WHERE user_id = ?1", [user])
        .unwrap();
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn pending(db: &Path, user: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM session_queue WHERE user_id = ?1 AND status = 'pending'",
        [user],
        |r| r.get(0),
    )
    .unwrap()
}

struct Setup {
    db: DbCopy,
    groups: tempfile::NamedTempFile,
    m: Value,
}

impl Setup {
    fn new(groups: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, groups.as_bytes()).unwrap();
        Setup {
            db: db_with_models(),
            groups: file,
            m: manifest("6.14.2"),
        }
    }

    async fn guard(&self, upstream: &str) -> Guard {
        self.guard_with(upstream, "").await
    }

    async fn guard_with(&self, upstream: &str, extra: &str) -> Guard {
        let raw = raw_config(&format!(
            "groups = {:?}\n{extra}",
            self.groups.path().display().to_string()
        ));
        guard_with(&shipped_routes(), &self.db.path, upstream, raw).await
    }

    fn token(&self, who: &str) -> String {
        token_for(&self.m, who)
    }

    /// `who` enqueues `batch` through `g`.
    async fn enqueue(&self, g: &Guard, who: &str, batch: Value) -> Reply {
        send("POST", &g.url(ENQUEUE), Some(&self.token(who)), Some(batch)).await
    }

    /// `who` GETs `path` through `g`.
    async fn get(&self, g: &Guard, path: &str, who: &str) -> Reply {
        send("GET", &g.url(path), Some(&self.token(who)), None).await
    }

    fn uid(&self, who: &str) -> String {
        self.m["users"][who]["user_id"].as_str().unwrap().to_owned()
    }
}

/// The model list InvokeAI answers (every record, as it does for everyone).
fn all_models() -> Value {
    json!({"models": MODELS.iter().map(record).collect::<Vec<_>>()})
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// An SD1 text-to-image batch as the 6.12-6.14 web UI builds it (buildSD1Graph, addLoRAs,
/// prepareLinearUIBatch): the main model loader holds the whole model record, LoRA selectors feed
/// a collector and the LoRA collection loader, a chosen VAE gets a vae_loader, and the metadata
/// repeats every model; seeds and prompts come as batch data.
fn web_ui_batch(main: &str, loras: &[&str], vae: Option<&str>, prompts: usize) -> Value {
    let main_record = record(MODELS.iter().find(|m| m.key == main).unwrap());
    let mut nodes = serde_json::Map::new();
    let mut edges = Vec::new();
    let mut add = |id: &str, v: Value| {
        let mut v = v;
        v["id"] = json!(id);
        v["is_intermediate"] = json!(true);
        v["use_cache"] = json!(true);
        nodes.insert(id.to_owned(), v);
    };
    add("seed:1", json!({"type": "integer"}));
    add("positive_prompt:1", json!({"type": "string"}));
    add(
        "sd1_model_loader:1",
        json!({"type": "main_model_loader", "model": main_record}),
    );
    add(
        "clip_skip:1",
        json!({"type": "clip_skip", "skipped_layers": 0}),
    );
    add("pos_cond:1", json!({"type": "compel"}));
    add("pos_cond_collect:1", json!({"type": "collect"}));
    add("neg_cond:1", json!({"type": "compel", "prompt": ""}));
    add("neg_cond_collect:1", json!({"type": "collect"}));
    add("noise:1", json!({"type": "noise", "use_cpu": true}));
    add(
        "denoise_latents:1",
        json!({"type": "denoise_latents", "cfg_scale": 7.5, "cfg_rescale_multiplier": 0,
        "scheduler": "dpmpp_3m_k", "steps": 30, "denoising_start": 0, "denoising_end": 1}),
    );
    add(
        "canvas_output:1",
        json!({"type": "l2i", "fp32": false, "is_intermediate": false}),
    );
    let mut edge = |from: &str, field: &str, to: &str, to_field: &str| {
        edges.push(json!({"source": {"node_id": from, "field": field},
                          "destination": {"node_id": to, "field": to_field}}));
    };
    edge("sd1_model_loader:1", "clip", "clip_skip:1", "clip");
    edge("positive_prompt:1", "value", "pos_cond:1", "prompt");
    edge("seed:1", "value", "noise:1", "seed");
    edge("noise:1", "noise", "denoise_latents:1", "noise");
    edge("denoise_latents:1", "latents", "canvas_output:1", "latents");
    let mut metadata = json!({"type": "core_metadata", "cfg_scale": 7.5, "model": ident(main),
        "steps": 30, "scheduler": "dpmpp_3m_k", "clip_skip": 0, "generation_mode": "txt2img"});
    if let Some(vae) = vae {
        add(
            "vae:1",
            json!({"type": "vae_loader", "vae_model": ident(vae)}),
        );
        edge("vae:1", "vae", "canvas_output:1", "vae");
        metadata["vae"] = ident(vae);
    } else {
        edge("sd1_model_loader:1", "vae", "canvas_output:1", "vae");
    }
    if loras.is_empty() {
        edge("sd1_model_loader:1", "unet", "denoise_latents:1", "unet");
        edge("clip_skip:1", "clip", "pos_cond:1", "clip");
        edge("clip_skip:1", "clip", "neg_cond:1", "clip");
    } else {
        add("lora_collector:1", json!({"type": "collect"}));
        add(
            "lora_collection_loader:1",
            json!({"type": "lora_collection_loader"}),
        );
        edge(
            "lora_collector:1",
            "collection",
            "lora_collection_loader:1",
            "loras",
        );
        edge(
            "sd1_model_loader:1",
            "unet",
            "lora_collection_loader:1",
            "unet",
        );
        edge("clip_skip:1", "clip", "lora_collection_loader:1", "clip");
        edge(
            "lora_collection_loader:1",
            "unet",
            "denoise_latents:1",
            "unet",
        );
        edge("lora_collection_loader:1", "clip", "pos_cond:1", "clip");
        edge("lora_collection_loader:1", "clip", "neg_cond:1", "clip");
        let mut meta_loras = Vec::new();
        for (i, l) in loras.iter().enumerate() {
            let id = format!("lora_selector:{i}");
            add(
                &id,
                json!({"type": "lora_selector", "lora": ident(l), "weight": 0.75}),
            );
            edge(&id, "lora", "lora_collector:1", "item");
            meta_loras.push(json!({"model": ident(l), "weight": 0.75}));
        }
        metadata["loras"] = json!(meta_loras);
    }
    add("core_metadata:1", metadata);
    json!({"prepend": false, "batch": {
        "graph": {"id": "sd1_graph:1", "nodes": nodes, "edges": edges},
        "runs": 1,
        "data": [[{"node_path": "seed:1", "field_name": "value", "items": (0..prompts).map(|i| 1000 + i).collect::<Vec<_>>()},
                  {"node_path": "positive_prompt:1", "field_name": "value", "items": (0..prompts).map(|i| format!("a cat {i}")).collect::<Vec<_>>()}]],
        "origin": "generation", "destination": "gallery"}})
}

/// An image of bob's in the fixture (batches that name an image must name one he may read).
const BOB_IMAGE: &str = "07d97fc8-ee2c-4888-b61a-aa11b886561b.png";

const ENQUEUE: &str = "/api/v1/queue/default/enqueue_batch";

fn enqueued_answer(_: &Seen) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    ok_json(
        json!({"queue_id": "default", "enqueued": 1, "requested": 1, "batch": {}, "priority": 0, "item_ids": [1]}),
    )
}

#[tokio::test]
async fn model_lists_show_each_user_only_what_she_may_use() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(|seen: &Seen| {
        let path = seen.target.split('?').next().unwrap().to_owned();
        match path.as_str() {
            "/api/v2/models/" | "/api/v2/models/missing" => ok_json(all_models()),
            "/api/v2/models/get_by_attrs" | "/api/v2/models/get_by_hash" => {
                ok_json(record(&MODELS[3]))
            }
            "/api/v1/model_relationships/batch" => ok_json(json!([
                "k-lora-detail",
                "k-lora-style",
                "k-flux-dev",
                "k-gone"
            ])),
            p if p.starts_with("/api/v1/model_relationships/i/") => {
                ok_json(json!(["k-lora-detail", "k-vae-sd15"]))
            }
            _ => ok_json(record(&MODELS[0])),
        }
    })))
    .await;
    let g = s.guard(&up.url()).await;
    let all: Vec<String> = {
        let mut v: Vec<String> = MODELS.iter().map(|m| m.name.to_owned()).collect();
        v.sort();
        v
    };
    for list in ["/api/v2/models/", "/api/v2/models/missing"] {
        let bob = s.get(&g, list, "bob").await;
        assert_eq!(bob.status, 200);
        assert_eq!(
            names(&bob.json()),
            ["tiny-lora-style", "tiny-main-sd15", "tiny-vae-sd15"],
            "bob: no FLUX (everyone but artists), no detail LoRA (interns)"
        );
        let alice = s.get(&g, list, "alice").await;
        assert_eq!(
            names(&alice.json()),
            [
                "FLUX dev",
                "tiny-lora-detail",
                "tiny-lora-style",
                "tiny-main-sd15",
                "tiny-vae-sd15"
            ]
        );
        let erin = s.get(&g, list, "erin").await;
        assert_eq!(
            names(&erin.json()),
            [
                "tiny-lora-detail",
                "tiny-lora-style",
                "tiny-main-sd15",
                "tiny-vae-sd15"
            ]
        );
        let admin = s.get(&g, list, "admin").await;
        assert_eq!(names(&admin.json()), all, "admins are exempt");
    }
    // One record by attributes or hash: one she may not use is InvokeAI's own 404.
    let q = "/api/v2/models/get_by_attrs?name=tiny-lora-detail&type=lora&base=sd-1";
    let bob = s.get(&g, q, "bob").await;
    assert_eq!(
        (bob.status.as_u16(), bob.detail().as_str()),
        (404, "No model found with these attributes")
    );
    let alice = s.get(&g, q, "alice").await;
    assert_eq!(
        (alice.status.as_u16(), alice.json()["key"].as_str()),
        (200, Some("k-lora-detail"))
    );
    let bob = s
        .get(
            &g,
            "/api/v2/models/get_by_hash?hash=blake3:k-lora-detail",
            "bob",
        )
        .await;
    assert_eq!(
        (bob.status.as_u16(), bob.detail().as_str()),
        (404, "No model found with this hash")
    );
    // By key: refused before InvokeAI sees it, exactly like an unknown key.
    let before = up.count();
    let bob = s.get(&g, "/api/v2/models/i/k-flux-dev", "bob").await;
    assert_eq!(
        (bob.status.as_u16(), bob.detail().as_str()),
        (404, "model not found")
    );
    let unknown = s.get(&g, "/api/v2/models/i/k-nothing", "bob").await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.body.clone()),
        (404, bob.body.clone())
    );
    // A cover loads as an <img>: the session cookie is its only credential.
    let cover = |who: &str| {
        let cookie = format!("invoke_guard_session={}", s.token(who));
        let url = g.url("/api/v2/models/i/k-flux-dev/image");
        async move { send_with("GET", &url, None, None, &[("cookie", &cookie)]).await }
    };
    let img = cover("bob").await;
    assert_eq!(img.status, 404, "no cover of a model she may not use");
    assert_eq!(up.count(), before, "none of these reached InvokeAI");
    let img = cover("alice").await;
    assert_eq!(
        img.status, 200,
        "alice's cover loads with her session cookie"
    );
    assert_eq!(
        s.get(&g, "/api/v2/models/i/k-main-sd15", "bob")
            .await
            .status,
        200
    );
    // Related models: only keys of models she may use (an unknown key is dropped too).
    let rel = send(
        "POST",
        &g.url("/api/v1/model_relationships/batch"),
        Some(&s.token("bob")),
        Some(json!({"model_keys": ["k-main-sd15"]})),
    )
    .await;
    assert_eq!(rel.json(), json!(["k-lora-style"]));
    let rel = s
        .get(&g, "/api/v1/model_relationships/i/k-main-sd15", "bob")
        .await;
    assert_eq!(rel.json(), json!(["k-vae-sd15"]));
    let rel = s
        .get(&g, "/api/v1/model_relationships/i/k-lora-detail", "bob")
        .await;
    assert_eq!(rel.status, 404);
}

#[tokio::test]
async fn web_ui_batches_are_refused_naming_the_model_or_forwarded_unchanged() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    // Allowed for bob: the main model, the style LoRA and the VAE.
    let body = web_ui_batch("k-main-sd15", &["k-lora-style"], Some("k-vae-sd15"), 1);
    let r = s.enqueue(&g, "bob", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.detail());
    let seen = up.last().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        body,
        "forwarded unchanged"
    );
    // The detail LoRA is not bob's: refused, named by name, nothing forwarded.
    let n = up.count();
    let body = web_ui_batch(
        "k-main-sd15",
        &["k-lora-style", "k-lora-detail"],
        Some("k-vae-sd15"),
        1,
    );
    let r = s.enqueue(&g, "bob", body.clone()).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.detail(),
        "You may not use the model 'tiny-lora-detail' (sd-1 lora): the server's model access rules do not allow it for you"
    );
    assert_eq!(up.count(), n);
    // Alice may.
    let r = s.enqueue(&g, "alice", body).await;
    assert_eq!(r.status, 200);
    // A FLUX main model: alice (artists) yes, erin (everyone else) no.
    let flux = web_ui_batch("k-flux-dev", &[], None, 1);
    assert_eq!(s.enqueue(&g, "alice", flux.clone()).await.status, 200);
    let r = s.enqueue(&g, "erin", flux.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().contains("'FLUX dev'")),
        (403, true)
    );
    // Admins are exempt.
    assert_eq!(s.enqueue(&g, "admin", flux).await.status, 200);
}

/// Put `reference` at `path` (the model-fields TSV's notation: `[]x` a list, `.x`/`x` a member,
/// `{}` a dict value) inside a field value.
fn value_at(path: &str, reference: Value) -> Value {
    if path.is_empty() {
        return reference;
    }
    if let Some(rest) = path.strip_prefix("[]") {
        return json!([json!({"other": 1}), value_at(rest, reference)]);
    }
    if let Some(rest) = path.strip_prefix("{}") {
        return json!({"some_key": value_at(rest, reference)});
    }
    let path = path.strip_prefix('.').unwrap_or(path);
    let end = path.find(['.', '[', '{']).unwrap_or(path.len());
    let (member, rest) = path.split_at(end);
    json!({ member: value_at(rest, reference), "weight": 0.5 })
}

#[tokio::test]
async fn every_model_field_of_every_version_is_found() {
    // Model access only: bob's quota would stop a thousand enqueues.
    let s = Setup::new(GROUPS.split("[quotas]").next().unwrap());
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let mut rows = 0;
    for version in ["6.12.0", "6.13.8", "6.14.2"] {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "tests/data/openapi/invokeai-{version}.model-fields.tsv"
        ));
        let text = std::fs::read_to_string(&file).unwrap();
        let mut version_rows = 0;
        for line in text.lines() {
            let mut cols = line.split('\t');
            let (node, field, path) = (
                cols.next().unwrap(),
                cols.next().unwrap(),
                cols.next().unwrap_or(""),
            );
            let batch = |key: &str| {
                json!({"batch": {"graph": {"id": "g", "nodes": {"n1": {
                    "id": "n1", "type": node, field: value_at(path, ident(key))}}, "edges": []}, "runs": 1}})
            };
            let n = up.count();
            let r = s.enqueue(&g, "bob", batch("k-lora-detail")).await;
            assert_eq!(
                (r.status.as_u16(), r.detail().contains("tiny-lora-detail")),
                (403, true),
                "{version} {node}.{field} at {path:?}: {}",
                r.detail()
            );
            assert_eq!(up.count(), n, "{version} {node}.{field}: forwarded");
            let r = s.enqueue(&g, "bob", batch("k-lora-style")).await;
            if invoke_guard::policy::models::RUNTIME_MODEL_NODES.contains(&node) {
                // Its model is chosen at run time: refused to bob whatever it names.
                assert_eq!(r.status, 403, "{version} {node}");
                assert!(r.detail().contains(&format!("'{node}'")), "{}", r.detail());
            } else {
                assert_eq!(
                    r.status,
                    200,
                    "{version} {node}.{field} at {path:?}: {}",
                    r.detail()
                );
            }
            version_rows += 1;
        }
        assert!(
            version_rows > 250,
            "{version}: only {version_rows} model fields listed"
        );
        rows += version_rows;
    }
    assert!(rows > 1000, "{rows}");
}

#[tokio::test]
async fn references_hidden_anywhere_in_the_batch_are_found() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let allowed = web_ui_batch("k-main-sd15", &["k-lora-style"], None, 2);
    let refused = |mut body: Value, place: &str, f: &dyn Fn(&mut Value)| {
        f(&mut body);
        (body, place.to_owned())
    };
    let cases = [
        refused(allowed.clone(), "a LoRA in a batch data item", &|b| {
            b["batch"]["data"][0][1]["items"][1] =
                json!({"image_name": BOB_IMAGE, "key": "k-lora-detail"});
        }),
        refused(allowed.clone(), "a LoRA in the workflow JSON", &|b| {
            b["batch"]["workflow"] = json!({"name": "w", "nodes": [{"id": "a", "type": "invocation", "data": {
                "id": "a", "type": "lora_selector", "inputs": {"lora": {"name": "lora", "value": ident("k-lora-detail")}}}}],
                "edges": [], "exposedFields": [], "meta": {"version": "3.0.0", "category": "user"}});
        }),
        refused(
            allowed.clone(),
            "a LoRA in the metadata a metadata_to_* node would read",
            &|b| {
                b["batch"]["graph"]["nodes"]["core_metadata:1"]["loras"][0]["model"] =
                    json!({"key": "k-lora-detail"});
            },
        ),
        refused(
            allowed.clone(),
            "a UNet field given as a literal with a LoRA",
            &|b| {
                b["batch"]["graph"]["nodes"]["lora_collection_loader:1"]["unet"] = json!({
                "unet": ident("k-main-sd15"), "scheduler": ident("k-main-sd15"),
                "loras": [{"lora": ident("k-lora-detail"), "weight": 1}]});
            },
        ),
        refused(
            allowed.clone(),
            "a key whose name and type claim to be the allowed LoRA",
            &|b| {
                b["batch"]["graph"]["nodes"]["lora_selector:0"]["lora"] = json!({
                "key": "k-lora-detail", "hash": "x", "name": "tiny-lora-style", "base": "sd-1", "type": "lora"});
            },
        ),
    ];
    for (body, place) in cases {
        let n = up.count();
        let r = s.enqueue(&g, "bob", body).await;
        assert_eq!(r.status, 403, "{place}: {}", r.detail());
        assert!(
            r.detail().contains("'tiny-lora-detail'"),
            "{place}: {}",
            r.detail()
        );
        assert_eq!(up.count(), n, "{place}: forwarded");
    }
    // A duplicate key hides nothing (Python keeps the last one).
    let text = allowed.to_string().replace(
        "\"key\":\"k-lora-style\",",
        "\"key\":\"k-lora-style\",\"key\":\"k-lora-detail\",",
    );
    let r = send_bytes(
        "POST",
        &g.url(ENQUEUE),
        Some(&s.token("bob")),
        bytes::Bytes::from(text),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, 403);
    // An unknown key is refused the same way (it may be a model the guard does not see yet).
    let mut body = allowed.clone();
    body["batch"]["graph"]["nodes"]["lora_selector:0"]["lora"] =
        json!({"key": "k-new", "hash": "x", "name": "brand new", "base": "sd-1", "type": "lora"});
    let r = s.enqueue(&g, "erin", body).await;
    assert_eq!(r.status, 403);
    assert!(
        r.detail()
            .starts_with("Unknown model 'brand new' (key k-new)"),
        "{}",
        r.detail()
    );
    // The allowed batch itself passes.
    assert_eq!(s.enqueue(&g, "bob", allowed).await.status, 200);
}

#[tokio::test]
async fn nodes_that_pick_models_at_run_time_are_refused_to_restricted_callers() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let batch = |node: &str| {
        json!({"batch": {"graph": {"id": "g", "nodes": {
            "from_image": {"id": "from_image", "type": "metadata_from_image", "image": {"image_name": BOB_IMAGE}},
            "m": {"id": "m", "type": node, "label": "model", "default_value": ident("k-main-sd15")}},
            "edges": [{"source": {"node_id": "from_image", "field": "metadata"}, "destination": {"node_id": "m", "field": "metadata"}}]}}})
    };
    let listed: std::collections::BTreeSet<String> = ["6.12.0", "6.13.8", "6.14.2"]
        .iter()
        .flat_map(|v| {
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "tests/data/openapi/invokeai-{v}.runtime-model-nodes.txt"
            )))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
        })
        .collect();
    let known: std::collections::BTreeSet<String> =
        invoke_guard::policy::models::RUNTIME_MODEL_NODES
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(
        known, listed,
        "the guard's list is what the versions' sources say"
    );
    for node in &listed {
        let r = s.enqueue(&g, "bob", batch(node)).await;
        assert_eq!(r.status, 403, "{node}");
        assert!(r.detail().contains(&format!("'{node}'")), "{}", r.detail());
    }
    let r = s.enqueue(&g, "admin", batch("metadata_to_model")).await;
    assert_eq!(r.status, 200, "admins are exempt: {}", r.detail());
}

#[tokio::test]
async fn queued_items_are_counted_as_invokeai_expands_the_batch() {
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    add_queue_items(&s.db.path, &bob, "pending", 3, 5);
    add_queue_items(&s.db.path, &bob, "completed", 20, 7200);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    // 3 queued + 2 (1 run × 2 prompts) = 5: fits max_queued 5.
    let two = web_ui_batch("k-main-sd15", &[], None, 2);
    assert_eq!(s.enqueue(&g, "bob", two.clone()).await.status, 200);
    add_queue_items(&s.db.path, &bob, "pending", 2, 0);
    let n = up.count();
    let r = s.enqueue(&g, "bob", two.clone()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "17");
    assert_eq!(
        r.detail(),
        "You have 5 generations queued and this request would add 2; the limit for your group (interns) is 5"
    );
    assert_eq!(
        up.count(),
        n,
        "the whole batch is refused, nothing is forwarded"
    );
    // runs × data: 2 runs × 3 prompts = 6 > 5 can never fit: 403, not 429.
    let mut six = web_ui_batch("k-main-sd15", &[], None, 3);
    six["batch"]["runs"] = json!(2);
    let r = s.enqueue(&g, "bob", six).await;
    assert_eq!(r.status, 403);
    assert!(r.detail().starts_with("This request would create 6 generations; the limit for your group (interns) is 5 queued at once"), "{}", r.detail());
    // Saturating arithmetic: an absurd batch is refused, not wrapped around to a small count.
    let mut huge = web_ui_batch("k-main-sd15", &[], None, 2);
    huge["batch"]["runs"] = json!(u64::MAX);
    let r = s.enqueue(&g, "bob", huge).await;
    assert_eq!(r.status, 403);
    assert!(
        r.detail()
            .contains(&format!("create {} generations", u64::MAX)),
        "{}",
        r.detail()
    );
    // Alice has no quota rule; admins are exempt.
    assert_eq!(s.enqueue(&g, "alice", two.clone()).await.status, 200);
    add_queue_items(&s.db.path, &s.uid("admin"), "pending", 50, 0);
    assert_eq!(s.enqueue(&g, "admin", two).await.status, 200);
}

/// A mock InvokeAI that stores the items of every batch it accepts (as InvokeAI does before it
/// answers): `runs` × the first data group's length, for the caller the forwarded token names.
fn storing_upstream(db: std::path::PathBuf) -> Responder {
    Arc::new(move |seen: &Seen| {
        if seen.target.ends_with("/enqueue_batch") {
            let body: Value = serde_json::from_slice(&seen.body).unwrap();
            let runs = body["batch"]["runs"].as_u64().unwrap_or(1);
            let per = body["batch"]["data"][0][0]["items"]
                .as_array()
                .map_or(1, |a| a.len() as u64);
            let user = forwarded_claims(seen).unwrap()["user_id"]
                .as_str()
                .unwrap()
                .to_owned();
            add_queue_items(&db, &user, "pending", (runs * per) as usize, 0);
        }
        enqueued_answer(seen)
    })
}

#[tokio::test]
async fn a_rolling_window_counts_what_was_enqueued_within_it() {
    // Carol's own rule comes first: per hour 8, no max_queued.
    let groups = GROUPS.replace(
        "[[quotas.rule]]\nid = \"interns\"",
        "[[quotas.rule]]\nid = \"carol\"\nwho = [\"carol@example.com\"]\nper_hour = 8\n\n[[quotas.rule]]\nid = \"interns\"",
    );
    let s = Setup::new(&groups);
    let carol = s.uid("carol");
    // 5 finished items 600 s ago count for the hour; 30 from two hours ago do not.
    add_queue_items(&s.db.path, &carol, "completed", 5, 600);
    add_queue_items(&s.db.path, &carol, "completed", 30, 7200);
    let up = mock(Some(storing_upstream(s.db.path.clone()))).await;
    let g = s.guard(&up.url()).await;
    let three = web_ui_batch("k-main-sd15", &[], None, 3);
    assert_eq!(s.enqueue(&g, "carol", three).await.status, 200);
    let one = web_ui_batch("k-main-sd15", &[], None, 1);
    let r = s.enqueue(&g, "carol", one).await;
    assert_eq!(r.status, 429, "{}", r.detail());
    assert!(
        r.detail().starts_with("You enqueued 8 generations in the last hour and this request would add 1; the limit for you is 8 per hour. Try again in "),
        "{}",
        r.detail()
    );
    // The first of the 600 s old rows leaves the hour in about 3000 s (the test's own run time
    // only makes that a little less).
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((2900..=3000).contains(&retry), "{retry}");
    assert!(r.detail().ends_with(&format!("Try again in {retry} s")));
    // Pruning her items from the database does not reset the window: the guard remembers the 3
    // it forwarded (3 + 6 > 8).
    rusqlite::Connection::open(&s.db.path)
        .unwrap()
        .execute("DELETE FROM session_queue WHERE user_id = ?1", [&carol])
        .unwrap();
    let six = web_ui_batch("k-main-sd15", &[], None, 6);
    let r = s.enqueue(&g, "carol", six).await;
    assert_eq!(r.status, 429, "{}", r.detail());
    assert!(
        r.detail()
            .starts_with("You enqueued 3 generations in the last hour"),
        "{}",
        r.detail()
    );
    let five = web_ui_batch("k-main-sd15", &[], None, 5);
    assert_eq!(s.enqueue(&g, "carol", five).await.status, 200);
}

#[tokio::test]
async fn a_short_window_expires() {
    // Windows are configurable (seconds) so that expiry can be shown without waiting an hour: rows
    // older than the window no longer count. The database's clock places them, nothing sleeps.
    let groups = GROUPS
        .replace(
            "queued_retry_after = 17",
            "queued_retry_after = 17\nwindows = { minute = 2 }",
        )
        .replace("max_queued = 5\nper_hour = 8", "per_minute = 2");
    let s = Setup::new(&groups);
    let bob = s.uid("bob");
    add_queue_items(&s.db.path, &bob, "completed", 2, 1);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let one = web_ui_batch("k-main-sd15", &[], None, 1);
    let r = s.enqueue(&g, "bob", one.clone()).await;
    assert_eq!(
        r.status,
        429,
        "two items 1 s ago fill a 2 s window: {}",
        r.detail()
    );
    assert!(r.detail().contains("in the last minute"), "{}", r.detail());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    rusqlite::Connection::open(&s.db.path)
        .unwrap()
        .execute(
            "UPDATE session_queue SET created_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-3 seconds') WHERE user_id = ?1",
            [&bob],
        )
        .unwrap();
    assert_eq!(s.enqueue(&g, "bob", one).await.status, 200);
}

#[tokio::test]
async fn concurrent_enqueues_never_overshoot_the_limit() {
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    let up = mock(Some(storing_upstream(s.db.path.clone()))).await;
    let g = Arc::new(s.guard(&up.url()).await);
    let token = s.token("bob");
    // Eight clients each enqueue 2 items at once; max_queued is 5: exactly two fit.
    let two = web_ui_batch("k-main-sd15", &["k-lora-style"], None, 2);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (g, token, body) = (g.clone(), token.clone(), two.clone());
            tokio::spawn(
                async move { send("POST", &g.url(ENQUEUE), Some(&token), Some(body)).await },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429, 429, 429]);
    assert_eq!(up.count(), 2, "only what fits was forwarded");
    assert_eq!(pending(&s.db.path, &bob), 4);
    // Another user is not held up by bob's reservations.
    let carol = s.enqueue(&g, "carol", two).await;
    assert_eq!(carol.status, 200);
}

#[tokio::test]
async fn the_groups_file_is_reloaded_with_the_routes() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let detail = web_ui_batch("k-main-sd15", &["k-lora-detail"], None, 1);
    let (url, bob_token) = (g.url(ENQUEUE), s.token("bob"));
    let send_bob = || send("POST", &url, Some(&bob_token), Some(detail.clone()));
    assert_eq!(send_bob().await.status, 403);
    // The operator drops the interns' LoRA rule and includes admins: SIGHUP (reload_routes).
    let edited = GROUPS
        .replace(
            "[[models.rule]]\nid = \"interns-no-detail-loras\"",
            "[[models.rule]]\nid = \"no-detail-loras-for-admins\"",
        )
        .replace(
            "who = [\"group:interns\"]\naccess = \"deny\"\ntype = [\"lora\"]",
            "who = [\"admin@example.com\"]\naccess = \"deny\"\ntype = [\"lora\"]",
        )
        .replace(
            "default = \"allow\"",
            "default = \"allow\"\nadmins = \"included\"",
        );
    std::fs::write(s.groups.path(), &edited).unwrap();
    g.state.reload_routes().unwrap();
    assert_eq!(send_bob().await.status, 200);
    let admin = s.enqueue(&g, "admin", detail.clone()).await;
    assert_eq!(
        admin.status,
        403,
        "admins = \"included\": {}",
        admin.detail()
    );
    // A broken file is refused and the last good one kept.
    std::fs::write(
        s.groups.path(),
        edited.replace("access = \"deny\"", "access = \"denied\""),
    )
    .unwrap();
    assert!(g.state.reload_routes().is_err());
    assert_eq!(send_bob().await.status, 200);
    assert_eq!(s.enqueue(&g, "admin", detail.clone()).await.status, 403);
    // The content watcher picks a change up by itself (serve runs it every 2 s). Its first read
    // happens whenever its task first runs, so each round writes a new revision of the file.
    g.state
        .spawn_routes_watcher(std::time::Duration::from_millis(50));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for revision in 0.. {
        std::fs::write(
            s.groups.path(),
            format!("{GROUPS}\n# revision {revision}\n"),
        )
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if send_bob().await.status == 403 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never reloaded the groups file"
        );
    }
}

#[tokio::test]
async fn bad_batches_keep_their_answers_and_are_never_forwarded() {
    let s = Setup::new(GROUPS);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s
        .guard_with(&up.url(), "[limits]\nmax_body_bytes = 65536\n")
        .await;
    let token = s.token("bob");
    let url = g.url(ENQUEUE);
    let post = |bytes: Vec<u8>| {
        send_bytes(
            "POST",
            &url,
            Some(&token),
            bytes::Bytes::from(bytes),
            &[("content-type", "application/json")],
        )
    };
    let r = post(b"{\"batch\": {\"graph\": ".to_vec()).await;
    assert_eq!(r.status, 422, "malformed JSON");
    let mut big = web_ui_batch("k-main-sd15", &[], None, 1);
    big["batch"]["graph"]["nodes"]["positive_prompt:1"]["value"] = json!("x".repeat(70_000));
    let r = post(big.to_string().into_bytes()).await;
    assert_eq!(r.status, 413, "over limits.max_body_bytes");
    for (bad, why) in [
        (json!("many"), "runs not an integer"),
        (json!(1.5), "runs with a fraction"),
    ] {
        let mut b = web_ui_batch("k-main-sd15", &[], None, 1);
        b["batch"]["runs"] = bad;
        let r = post(b.to_string().into_bytes()).await;
        assert_eq!(r.status, 422, "{why}: {}", r.detail());
    }
    let mut b = web_ui_batch("k-main-sd15", &[], None, 1);
    b["batch"]["data"] = json!({"not": "a list"});
    assert_eq!(post(b.to_string().into_bytes()).await.status, 422);
    assert_eq!(
        up.count(),
        0,
        "nothing the guard could not read reached InvokeAI"
    );
    // Pydantic's lax int: "2" is 2 runs (2 × 3 = 6 > 5: refused as too large, not guessed).
    let mut b = web_ui_batch("k-main-sd15", &[], None, 3);
    b["batch"]["runs"] = json!("2");
    let r = post(b.to_string().into_bytes()).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.detail().contains("create 6 generations")
        ),
        (403, true)
    );
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    add_queue_items(&s.db.path, &bob, "pending", 5, 0);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let count = |reason: &str| -> f64 {
        let text = invoke_guard::metrics::render();
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "invoke_guard_generation_refusals_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (denied, queued) = (count("model_denied"), count("quota_queued"));
    let r = s
        .enqueue(
            &g,
            "bob",
            web_ui_batch("k-main-sd15", &["k-lora-detail"], None, 1),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .enqueue(&g, "bob", web_ui_batch("k-main-sd15", &[], None, 1))
        .await;
    assert_eq!(r.status, 429);
    // Other tests of this binary count too: at least one more of each.
    assert!(count("model_denied") > denied);
    assert!(count("quota_queued") > queued);
}

#[tokio::test]
async fn a_retry_is_checked_like_an_enqueue() {
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    // Two of bob's failed items: one ran the detail LoRA (enqueued before it was restricted).
    let conn = rusqlite::Connection::open(&s.db.path).unwrap();
    let graph = |lora: &str| {
        json!({"id": "sess", "graph": {"id": "g", "nodes": {"l": {"id": "l", "type": "lora_selector",
            "lora": ident(lora), "weight": 1}}, "edges": []}, "execution_graph": {"nodes": {}, "edges": []}})
    };
    for (i, lora) in ["k-lora-style", "k-lora-detail"].iter().enumerate() {
        conn.execute(
            "INSERT INTO session_queue (item_id, batch_id, queue_id, session_id, session, status, user_id) \
             VALUES (?1, 'b-retry', 'default', ?2, ?3, 'failed', ?4)",
            rusqlite::params![900 + i as i64, format!("s-retry-{i}"), graph(lora).to_string(), bob],
        )
        .unwrap();
    }
    let up = mock(Some(Arc::new(|_: &Seen| {
        ok_json(json!({"queue_id": "default", "retried_item_ids": [900]}))
    })))
    .await;
    let g = s.guard(&up.url()).await;
    let retry = "/api/v1/queue/default/retry_items_by_id";
    let r = send(
        "PUT",
        &g.url(retry),
        Some(&s.token("bob")),
        Some(json!([900, 901])),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.detail().contains("'tiny-lora-detail'")),
        (403, true),
        "{}",
        r.detail()
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        send(
            "PUT",
            &g.url(retry),
            Some(&s.token("bob")),
            Some(json!([900]))
        )
        .await
        .status,
        200
    );
    // A retry creates items: 4 queued + 2 retried (the same id twice) > 5.
    add_queue_items(&s.db.path, &bob, "pending", 4, 0);
    let r = send(
        "PUT",
        &g.url(retry),
        Some(&s.token("bob")),
        Some(json!([900, 900])),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.detail());
    assert!(
        r.detail()
            .contains("You have 4 generations queued and this request would add 2"),
        "{}",
        r.detail()
    );
}

#[tokio::test]
async fn model_uses_outside_the_queue_and_recall_by_name_are_checked() {
    let s = Setup::new(GROUPS);
    let up = mock(None).await;
    let g = s.guard(&up.url()).await;
    let r = send(
        "POST",
        &g.url("/api/v1/utilities/expand-prompt"),
        Some(&s.token("bob")),
        Some(json!({"prompt": "a cat", "model_key": "k-flux-dev"})),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.detail().as_str()),
        (403, "You may not use the model 'FLUX dev' (flux main)")
    );
    let r = send(
        "POST",
        &g.url("/api/v1/utilities/expand-prompt"),
        Some(&s.token("alice")),
        Some(json!({"prompt": "a cat", "model_key": "k-flux-dev"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send("POST", &g.url("/api/v1/recall/default"), Some(&s.token("bob")),
        Some(json!({"model": "tiny-main-sd15", "loras": [{"model_name": "tiny-lora-detail", "weight": 0.5}]}))).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().contains("tiny-lora-detail")),
        (403, true),
        "{}",
        r.detail()
    );
    let r = send("POST", &g.url("/api/v1/recall/default"), Some(&s.token("bob")),
        Some(json!({"model": "tiny-main-sd15", "loras": [{"model_name": "tiny-lora-style", "weight": 0.5}]}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn socket_events_about_a_restricted_model_do_not_reach_its_user() {
    let s = Setup::new(GROUPS);
    let up = mock(None).await;
    let g = s.guard(&up.url()).await;
    let facts = &g.state.facts;
    let table = g.state.routes.load();
    let principal = |who: &str| invoke_guard::identity::Principal {
        user_id: s.uid(who),
        email: s.m["users"][who]["email"].as_str().unwrap().to_owned(),
        is_admin: s.m["users"][who]["is_admin"].as_bool().unwrap(),
        token: String::new(),
        claims: Arc::default(),
        admin_claim: None,
        exp: 0,
        via: invoke_guard::identity::TokenSource::Bearer,
    };
    let load = |key: &str| {
        json!({"queue_id": "default", "item_id": 1, "config": record(MODELS.iter().find(|m| m.key == key).unwrap()),
               "submodel_type": null}).as_object().unwrap().clone()
    };
    let started = json!({"queue_id": "default", "item_id": 1, "invocation": {"id": "l", "type": "lora_selector",
        "lora": ident("k-lora-detail"), "weight": 1}}).as_object().unwrap().clone();
    use invoke_guard::policy::models::event_allowed;
    assert!(
        !event_allowed(
            &load("k-lora-detail"),
            &principal("bob"),
            table.access(),
            facts
        )
        .await
    );
    assert!(!event_allowed(&started, &principal("bob"), table.access(), facts).await);
    assert!(
        event_allowed(
            &load("k-lora-style"),
            &principal("bob"),
            table.access(),
            facts
        )
        .await
    );
    assert!(
        event_allowed(
            &load("k-lora-detail"),
            &principal("alice"),
            table.access(),
            facts
        )
        .await
    );
    assert!(event_allowed(&started, &principal("admin"), table.access(), facts).await);
}

fn bin() -> std::process::Command {
    guard_command()
}

#[test]
fn rule_tests_express_model_access_and_quotas() {
    let s = Setup::new(GROUPS);
    reset_queue(&s.db.path, &s.uid("carol"));
    add_queue_items(&s.db.path, &s.uid("carol"), "pending", 4, 0);
    let out = bin()
        .args(["test", "tests/data/models/rule-tests.toml", "--db"])
        .arg(&s.db.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("invoke-guard test: 10 passed, 0 failed"),
        "{stdout}"
    );
    // Without the groups file's sections the same cases fail loudly (they test something).
    let plain = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        plain.path(),
        "[groups]\nartists = [\"alice@example.com\"]\n",
    )
    .unwrap();
    let out = bin()
        .args(["test", "tests/data/models/rule-tests.toml", "--db"])
        .arg(&s.db.path)
        .arg("--groups")
        .arg(plain.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("the detail LoRA is refused"),
        "{stdout}"
    );
}

#[test]
fn explain_shows_the_models_the_rules_and_the_quota_arithmetic() {
    let s = Setup::new(GROUPS);
    reset_queue(&s.db.path, &s.uid("bob"));
    add_queue_items(&s.db.path, &s.uid("bob"), "pending", 3, 0);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("batch.json");
    std::fs::write(
        &body,
        web_ui_batch("k-main-sd15", &["k-lora-style", "k-lora-detail"], None, 2).to_string(),
    )
    .unwrap();
    let explain = |who: &str| {
        bin()
            .args(["explain", "POST", ENQUEUE, "--as", who])
            .arg("--body")
            .arg(format!("@{}", body.display()))
            .arg("--db")
            .arg(&s.db.path)
            .arg("--groups")
            .arg(s.groups.path())
            .output()
            .unwrap()
    };
    let out = explain("bob@example.com");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    for want in [
        "[x] enqueue.models_allowed(body.batch)",
        // Each reference once, where it first appears, with how often it occurs.
        "model 'tiny-main-sd15' (sd-1 main) key k-main-sd15 at batch.graph.nodes.core_metadata:1.model (+1 more): allowed by the default",
        "model 'tiny-lora-style' (sd-1 lora) key k-lora-style at batch.graph.nodes.core_metadata:1.loras[0].model (+1 more): allowed by the default",
        "model 'tiny-lora-detail' (sd-1 lora) key k-lora-detail at batch.graph.nodes.core_metadata:1.loras[1].model (+1 more): REFUSED by rule 'interns-no-detail-loras'",
        "answer    403 {\"detail\":\"You may not use the model 'tiny-lora-detail' (sd-1 lora)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Alice passes the model check; her quota: none. Carol's arithmetic with the same batch.
    std::fs::write(
        &body,
        web_ui_batch("k-main-sd15", &["k-lora-style"], None, 2).to_string(),
    )
    .unwrap();
    let out = explain("bob@example.com");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "quota rule 'interns' applies (your group (interns)); this request: runs 1 × data 2 = 2",
        "queued: 3 (database) + 2 (this request) = 5 against max_queued 5",
        "per hour (3600 s): 3 enqueued (database 3, guard 0) + 2 = 5 against 8",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn check_validates_the_file_and_warns_about_selectors_matching_no_model() {
    let s = Setup::new(GROUPS);
    let groups = tempfile::NamedTempFile::new().unwrap();
    let check = |text: &str| {
        std::fs::write(groups.path(), text).unwrap();
        bin()
            .args(["check", "--db"])
            .arg(&s.db.path)
            .arg("--groups")
            .arg(groups.path())
            .arg("--ledger")
            .arg(s.db.dir.path().join("ledger.db"))
            .output()
            .unwrap()
    };
    let out = check(GROUPS);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("warning"), "{text}");
    let typo = GROUPS.replace(
        "name = [\"*detail*\"]",
        "name = [\"*detial*\"]\nkey = [\"k-nope\"]",
    );
    let out = check(&typo);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("models rule 'interns-no-detail-loras': key \"k-nope\", name \"*detial*\" match(es) no installed model (5 installed)"),
        "{text}"
    );
    for (bad, want) in [
        (
            GROUPS.replace("max_queued = 5", "max_queued = 0"),
            "max_queued = 0: limits are positive integers",
        ),
        (
            GROUPS.replace("type = [\"lora\"]", "type = [\"loras\"]"),
            "unknown type 'loras' (did you mean 'lora'?)",
        ),
        (
            GROUPS.replace("access = \"allow\"", "acess = \"allow\""),
            "unknown field `acess`",
        ),
    ] {
        let out = check(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn the_docs_list_every_model_field_of_every_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/models.md")).unwrap();
    for (column, version) in ["6.12.0", "6.13.8", "6.14.2"].iter().enumerate() {
        let text = std::fs::read_to_string(root.join(format!(
            "tests/data/openapi/invokeai-{version}.model-fields.tsv"
        )))
        .unwrap();
        for line in text.lines() {
            let mut cols = line.split('\t');
            let (node, field, path) = (
                cols.next().unwrap(),
                cols.next().unwrap(),
                cols.next().unwrap_or(""),
            );
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{node}` | `{field}` |")))
                .unwrap_or_else(|| panic!("docs/models.md lacks {node}.{field} (regenerate: python3 scripts/invokeai/model-fields-doc.py)"));
            let at = if path.is_empty() {
                "the field itself".to_owned()
            } else {
                format!("`{path}`")
            };
            assert!(row.contains(&at), "{version} {node}.{field} at {at}: {row}");
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[4 + column], "✓", "{version} {node}.{field}: {row}");
        }
    }
}

#[tokio::test]
async fn the_web_ui_gets_refusals_in_the_shape_its_error_toast_shows() {
    // InvokeAI's web UI (6.12 to 6.14, batchEnqueued listener) shows an enqueue error's text only for
    // a 422 in pydantic's shape; a 429 or 403 toasts "Unknown error" or nothing. Its own fetches carry
    // Fetch Metadata; the decision is the same, only the wording differs.
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    add_queue_items(&s.db.path, &bob, "pending", 5, 0);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let g = s.guard(&up.url()).await;
    let ui = [
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ];
    let body = web_ui_batch("k-main-sd15", &[], None, 1);
    let r = send_with(
        "POST",
        &g.url(ENQUEUE),
        Some(&s.token("bob")),
        Some(body.clone()),
        &ui,
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.headers["retry-after"], "17");
    assert_eq!(
        r.json(),
        json!({"detail": [{"loc": ["body", "batch"], "type": "invoke_guard",
            "msg": "You have 5 generations queued and this request would add 1; the limit for your group (interns) is 5"}]})
    );
    let detail = web_ui_batch("k-main-sd15", &["k-lora-detail"], None, 1);
    let r = send_with(
        "POST",
        &g.url(ENQUEUE),
        Some(&s.token("bob")),
        Some(detail),
        &ui,
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.json()["detail"][0]["msg"]
        .as_str()
        .unwrap()
        .starts_with("You may not use the model 'tiny-lora-detail'"));
    // A cross-site request is no UI fetch: the API answer.
    let r = send_with(
        "POST",
        &g.url(ENQUEUE),
        Some(&s.token("bob")),
        Some(body),
        &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "cors")],
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(up.count(), 0);
}

/// `(key, name, base, type)` of every model identifier in a JSON value.
fn identifiers(v: &Value, out: &mut Vec<(String, String, String, String)>) {
    match v {
        Value::Object(map) => {
            if let (Some(k), Some(n), Some(b), Some(t)) = (
                map.get("key").and_then(Value::as_str),
                map.get("name").and_then(Value::as_str),
                map.get("base").and_then(Value::as_str),
                map.get("type").and_then(Value::as_str),
            ) {
                if !out.iter().any(|(key, ..)| key == k) {
                    out.push((k.into(), n.into(), b.into(), t.into()));
                }
            }
            map.values().for_each(|x| identifiers(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| identifiers(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn batches_captured_from_each_versions_web_ui_are_judged_by_their_models() {
    // tests/data/models/webui-enqueue-VERSION.json: the enqueue body the real web UI sent in the
    // browser test (tests/e2e/browser/models.mjs: SD 1.5 main model plus a LoRA, through the Generate
    // tab), keys as that server's install gave them.
    for version in ["6.12.0", "6.13.8", "6.14.2"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/models/webui-enqueue-{version}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        let mut ids = Vec::new();
        identifiers(&body, &mut ids);
        let lora = ids
            .iter()
            .find(|i| i.3 == "lora")
            .expect("the UI's batch holds a LoRA")
            .clone();
        assert!(
            ids.iter().any(|i| i.3 == "main"),
            "{version}: and a main model"
        );
        // Those models, recorded the way InvokeAI stores them, in a fixture copy; bob may not use the LoRA.
        let groups = format!(
            "[groups]\ninterns = [\"bob@example.com\"]\n\n[models]\ndefault = \"allow\"\n\n[[models.rule]]\n\
             id = \"no-such-lora\"\nwho = [\"group:interns\"]\naccess = \"deny\"\nname = [{:?}]\n",
            lora.1
        );
        let s = Setup::new(&groups);
        let conn = rusqlite::Connection::open(&s.db.path).unwrap();
        for (key, name, base, kind) in &ids {
            let record = json!({"key": key, "hash": "blake3:x", "name": name, "base": base, "type": kind,
                "path": format!("/m/{key}"), "format": "checkpoint", "source": format!("/m/{key}"),
                "source_type": "path", "file_size": 1});
            conn.execute(
                "INSERT OR REPLACE INTO models (id, config) VALUES (?1, ?2)",
                rusqlite::params![key, record.to_string()],
            )
            .unwrap();
        }
        drop(conn);
        let up = mock(Some(Arc::new(enqueued_answer))).await;
        let g = s.guard(&up.url()).await;
        let r = send_bytes(
            "POST",
            &g.url(ENQUEUE),
            Some(&s.token("bob")),
            bytes::Bytes::from(text.clone()),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(r.status, 403, "{version}: {}", r.detail());
        assert!(
            r.detail().contains(&format!("'{}'", lora.1)),
            "{version}: {}",
            r.detail()
        );
        let r = send_bytes(
            "POST",
            &g.url(ENQUEUE),
            Some(&s.token("alice")),
            bytes::Bytes::from(text.clone()),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(r.status, 200, "{version}: {}", r.detail());
        assert_eq!(
            up.last().unwrap().body,
            text.as_bytes(),
            "{version}: forwarded byte for byte"
        );
    }
}

/// A candidate route table evaluated beside the enforced one runs the same quota check without
/// the caller's reservation: an enqueue is answered (never waits on its own request's lock), and
/// the candidate's verdict is compared, while the enforced quota still counts.
#[tokio::test]
async fn a_candidate_table_never_waits_on_the_enforced_quota_reservation() {
    let s = Setup::new(GROUPS);
    let bob = s.uid("bob");
    add_queue_items(&s.db.path, &bob, "pending", 3, 5);
    let up = mock(Some(Arc::new(enqueued_answer))).await;
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, shipped_routes()).unwrap();
    let g = s
        .guard_with(
            &up.url(),
            &format!("candidate_routes = {:?}", candidate.display().to_string()),
        )
        .await;
    let two = web_ui_batch("k-main-sd15", &[], None, 2);
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        send(
            "POST",
            &g.url(ENQUEUE),
            Some(&s.token("bob")),
            Some(two.clone()),
        ),
    )
    .await
    .expect("the enqueue was answered (no deadlock between the two tables' quota checks)");
    assert_eq!(answered.status, 200);
    add_queue_items(&s.db.path, &bob, "pending", 2, 0);
    let r = s.enqueue(&g, "bob", two).await;
    assert_eq!(r.status, 429, "the enforced quota still refuses");
    let metrics = invoke_guard::metrics::render();
    assert!(
        !metrics.contains("invoke_guard_candidate_differences_total{"),
        "the same table answers the same: {metrics}"
    );
}
