//! Hot-path microbenchmarks: the regression gates for the per-request work the guard does
//! before it forwards (docs/benchmarks.md). No thresholds are asserted here: compare a run
//! against a saved baseline (`cargo bench --bench hot_path -- --save-baseline main`, then
//! `--baseline main`), on the same machine, in the same session.
//!
//! Everything reads the shipped `routes.toml` and a copy of the real InvokeAI 6.14.2 fixture
//! database; identifiers come from the fixture's manifest, never hard-coded.
//!
//! Measurement times are short on purpose (the development machine has 2 cores); the whole
//! file runs in well under a minute.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::{HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Method};
use serde_json::{json, Value};

use invoke_guard::facts::ledger::Ledger;
use invoke_guard::facts::{Facts, FactsConfig};
use invoke_guard::http::canonical;
use invoke_guard::http::headers;
use invoke_guard::identity;
use invoke_guard::policy::{self, FactSource, RequestData};
use invoke_guard::rules::{Lookup, RouteTable};

const FIXTURE: &str = "invokeai-6.14.2-rich";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest() -> Value {
    let path = repo().join(format!("tests/fixtures/{FIXTURE}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("read manifest"))
        .expect("parse manifest")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A token shaped like the ones InvokeAI 6.14.2 mints (claims and key as in tests/common).
fn token_for(m: &Value, role: &str) -> String {
    let u = &m["users"][role];
    let claims = json!({
        "user_id": u["user_id"],
        "email": u["email"],
        "is_admin": u["is_admin"],
        "token_epoch": u["token_epoch"],
        "remember_me": false,
        "exp": now() + 3600,
    });
    identity::sign(claims.as_object().expect("object"), secret(m))
}

fn secret(m: &Value) -> &str {
    m["jwt"]["secret"].as_str().expect("jwt secret in manifest")
}

fn image_name(m: &Value, role: &str) -> String {
    m["images"][role]["image_name"]
        .as_str()
        .expect("image in manifest")
        .to_owned()
}

/// A writable copy of the fixture database (read-only open still needs its directory).
struct DbCopy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn copy_db() -> DbCopy {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("invokeai.db");
    std::fs::copy(repo().join(format!("tests/fixtures/{FIXTURE}.db")), &path)
        .expect("copy fixture");
    let mut perms = std::fs::metadata(&path).expect("stat copy").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).expect("chmod copy");
    DbCopy { _dir: dir, path }
}

/// The production defaults (config.rs) except the path.
fn facts_config(path: &Path) -> FactsConfig {
    FactsConfig {
        db_path: path.to_owned(),
        pool_size: 4,
        busy_timeout: Duration::from_secs(1),
        cache_entries: 100_000,
        cache_ttl: Duration::from_secs(30),
        poll_interval: Duration::from_millis(50),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// === canonicalize ===

fn bench_canonicalize(c: &mut Criterion) {
    let m = manifest();
    let path = format!(
        "/api/v1/images/i/{}/metadata",
        image_name(&m, "alice_private_1")
    );
    let list_query = "board_id=none&categories=general&categories=user&is_intermediate=false&offset=0&limit=100&order_dir=DESC&starred_first=true&search_term=a%20cat";
    let mut g = c.benchmark_group("canonicalize");
    g.bench_function("image_path", |b| {
        b.iter(|| canonical::canonicalize(black_box(&path), None).expect("canonical"))
    });
    g.bench_function("list_path_and_query", |b| {
        b.iter(|| {
            canonical::canonicalize(black_box("/api/v1/images/"), Some(black_box(list_query)))
                .expect("canonical")
        })
    });
    g.finish();
}

// === route lookup ===

fn bench_route_lookup(c: &mut Criterion) {
    let table = RouteTable::load(&repo().join("routes.toml")).expect("shipped routes.toml loads");
    let m = manifest();
    let img = image_name(&m, "alice_private_1");
    let board = m["boards"]["alice_private"]["board_id"]
        .as_str()
        .expect("board")
        .to_owned();
    let wf = m["workflows"]["wf_alice_private"]["workflow_id"]
        .as_str()
        .expect("workflow")
        .to_owned();
    // Representative InvokeAI UI traffic: gallery, boards, queue, workflows, static assets, socket.
    let requests: Vec<(Method, String)> = vec![
        (Method::GET, format!("/api/v1/images/i/{img}")),
        (Method::GET, format!("/api/v1/images/i/{img}/thumbnail")),
        (Method::GET, format!("/api/v1/images/i/{img}/full")),
        (Method::GET, "/api/v1/images/names".into()),
        (Method::GET, "/api/v1/boards/".into()),
        (Method::PATCH, format!("/api/v1/boards/{board}")),
        (Method::POST, "/api/v1/queue/default/enqueue_batch".into()),
        (Method::GET, "/api/v1/queue/default/i/3".into()),
        (Method::GET, format!("/api/v1/workflows/i/{wf}")),
        (Method::GET, "/assets/index-abc123.js".into()),
    ];
    for (method, path) in &requests {
        assert!(
            matches!(table.lookup(method, path), Lookup::Found(_)),
            "routes.toml has no rule for {method} {path}"
        );
    }
    let mut g = c.benchmark_group("route_lookup");
    g.throughput(Throughput::Elements(requests.len() as u64));
    g.bench_function("ten_invokeai_paths", |b| {
        b.iter(|| {
            for (method, path) in &requests {
                black_box(table.lookup(black_box(method), black_box(path)));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("miss_then_slash_probe", |b| {
        // No rule: the lookup also probes the other trailing-slash form.
        b.iter(|| black_box(table.lookup(&Method::GET, black_box("/api/v1/no/such/route"))))
    });
    g.finish();
}

// === identity ===

fn bench_identity(c: &mut Criterion) {
    let m = manifest();
    let token = token_for(&m, "alice");
    let secret = secret(&m).to_owned();
    identity::verify(&token, &secret).expect("fixture token verifies");
    let mut g = c.benchmark_group("identity");
    g.bench_function("hs256_verify", |b| {
        b.iter(|| identity::verify(black_box(&token), black_box(&secret)).expect("valid"))
    });

    // identify = header parse + secret (cached) + verify + user row (cached) + epoch check.
    let db = copy_db();
    let rt = runtime();
    let facts = rt
        .block_on(async { Facts::open(&facts_config(&db.path)) })
        .expect("open facts");
    let ledger = Ledger::in_memory().expect("ledger");
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    rt.block_on(identity::identify(&headers, false, &facts, &ledger))
        .expect("alice is identified");
    g.bench_function("identify_warm", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(
                        identity::identify(black_box(&headers), false, &facts, &ledger)
                            .await
                            .expect("identified"),
                    );
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    facts.shutdown();
}

// === facts cache ===

fn bench_facts(c: &mut Criterion) {
    let m = manifest();
    let name = image_name(&m, "alice_private_1");
    let db = copy_db();
    let rt = runtime();
    let facts = rt
        .block_on(async { Facts::open(&facts_config(&db.path)) })
        .expect("open facts");
    let fact = rt
        .block_on(facts.image(&name))
        .expect("read")
        .expect("image exists");
    assert_eq!(
        Some(fact.owner.as_str()),
        m["users"]["alice"]["user_id"].as_str()
    );

    let mut g = c.benchmark_group("facts");
    g.bench_function("image_warm_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(facts.image(black_box(&name)).await.expect("read"));
                }
                start.elapsed()
            })
        })
    });
    // A cold miss: the cache is invalidated (as after a mutation) outside the timed region, then
    // one read goes through moka's loader, the blocking pool and one SQLite join.
    g.bench_function("image_cold_miss", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    facts.invalidate();
                    let start = Instant::now();
                    black_box(facts.image(black_box(&name)).await.expect("read"));
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
    facts.shutdown();
}

// === policy ===

fn bench_policy(c: &mut Criterion) {
    let m = manifest();
    let name = image_name(&m, "alice_private_1");
    let table = RouteTable::load(&repo().join("routes.toml")).expect("routes.toml");
    let path = format!("/api/v1/images/i/{name}");
    let Lookup::Found(found) = table.lookup(&Method::GET, &path) else {
        panic!("no rule for GET {path}");
    };
    let rule = found.rule;
    assert!(
        rule.checks
            .iter()
            .any(|c| c.text == "image.read(path.image_name)"),
        "rule {} no longer checks image.read(path.image_name)",
        rule.id
    );
    let data = RequestData {
        path: found.params,
        ..RequestData::default()
    };
    let db = copy_db();
    let rt = runtime();
    let facts = rt
        .block_on(async { Facts::open(&facts_config(&db.path)) })
        .expect("open facts");
    let ledger = Ledger::in_memory().expect("ledger");
    let mut headers = HeaderMap::new();
    let mut principal_of = |role: &str| {
        let token = token_for(&m, role);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        rt.block_on(identity::identify(&headers, false, &facts, &ledger))
            .expect("identified")
    };
    let alice = principal_of("alice");
    let bob = principal_of("bob");

    let mut g = c.benchmark_group("policy");
    for (label, who, allowed) in [
        ("evaluate_allow_warm", &alice, true),
        ("evaluate_deny_warm", &bob, false),
    ] {
        let src = FactSource {
            facts: &facts,
            ledger: &ledger,
            keep_all: false,
            enforce: true,
        };
        let first = rt.block_on(policy::decide(rule, &data, Some(who), src));
        assert_eq!(
            first.allows(),
            allowed,
            "{label}: unexpected decision {first:?}"
        );
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(policy::decide(rule, black_box(&data), Some(who), src).await);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    facts.shutdown();
}

// === header hygiene ===

fn bench_headers(c: &mut Criterion) {
    // What a browser sends to InvokeAI's API (Chromium, same-origin fetch).
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "invoke.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("authorization", "Bearer x.y.z"),
        ("referer", "https://invoke.example.com/"),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        ("cookie", "invokeai_media_token=abc; theme=dark"),
        ("connection", "keep-alive"),
    ] {
        template.insert(k, HeaderValue::from_static(v));
    }
    let mut g = c.benchmark_group("headers");
    g.bench_function("strip_hop_by_hop_and_spoofable", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                headers::strip_hop_by_hop(h);
                headers::strip_spoofable(h);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_canonicalize, bench_route_lookup, bench_identity, bench_facts, bench_policy, bench_headers
}
criterion_main!(benches);
