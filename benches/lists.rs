//! List recomputation benchmarks (filters::recompute): what the guard spends to answer a
//! 1 000-item list of an old InvokeAI as main would. Regression gates, no thresholds asserted
//! (docs/benchmarks.md has the method and figures; compare against a saved baseline).
//!
//! The database is a copy of the real InvokeAI 6.12.0 fixture with 1 000 more images (half the
//! caller's, half another user's), in WAL mode as InvokeAI runs it. Timings are wall time on a
//! one-worker runtime, so they bound the guard CPU from above (SQLite reads run on the blocking
//! pool and are included).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};

use invoke_guard::facts::ledger::{Entry, Ledger};
use invoke_guard::facts::{Facts, FactsConfig};
use invoke_guard::filters::{self, FilterContext, Reshape, ResponseFilter};
use invoke_guard::http::canonical::{self, Target};
use invoke_guard::identity::{Principal, TokenSource};
use invoke_guard::policy::RequestData;
use invoke_guard::rules::vocab::Recompute;

const N: usize = 1_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct World {
    _dir: tempfile::TempDir,
    facts: Facts,
    ledger: Ledger,
    me: Principal,
    names: Vec<String>,
    workflows: Vec<Value>,
}

fn world(rt: &tokio::runtime::Runtime) -> World {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/invokeai-6.12.0-rich.json"))
            .expect("manifest"),
    )
    .expect("manifest json");
    let uid = |who: &str| {
        m["users"][who]["user_id"]
            .as_str()
            .expect("user")
            .to_owned()
    };
    let (bob, carol) = (uid("bob"), uid("carol"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("invokeai.db");
    std::fs::copy(repo().join("tests/fixtures/invokeai-6.12.0-rich.db"), &path).expect("copy");
    let mut perms = std::fs::metadata(&path).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).expect("chmod");
    let names: Vec<String> = (0..N).map(|i| format!("bench-{i:04}.png")).collect();
    {
        let mut c = rusqlite::Connection::open(&path).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        let tx = c.transaction().expect("tx");
        for (i, name) in names.iter().enumerate() {
            let owner = if i % 2 == 0 { &bob } else { &carol };
            tx.execute(
                "INSERT INTO images (image_name, image_origin, image_category, width, height, \
                 is_intermediate, user_id, starred) VALUES (?1, 'internal', 'general', 8, 8, 0, ?2, ?3)",
                rusqlite::params![name, owner, i % 10 == 0],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let facts = rt
        .block_on(async {
            Facts::open(&FactsConfig {
                db_path: path.clone(),
                pool_size: 4,
                busy_timeout: Duration::from_secs(1),
                cache_entries: 100_000,
                cache_ttl: Duration::from_secs(30),
                poll_interval: Duration::from_millis(50),
            })
        })
        .expect("facts");
    let ledger = Ledger::in_memory().expect("ledger");
    let workflows: Vec<Value> = (0..N)
        .map(|i| json!({"workflow_id": format!("wf-{i}"), "category": if i % 10 == 0 { "default" } else { "user" }, "name": format!("w{i}"), "tags": "bench"}))
        .collect();
    rt.block_on(async {
        for i in (0..N).filter(|i| i % 2 == 1) {
            ledger
                .record(Entry::Workflow, &format!("wf-{i}"), &bob)
                .await
                .expect("record");
        }
    });
    let me = Principal {
        user_id: bob,
        email: "bob@example.com".into(),
        is_admin: false,
        token: String::new(),
        claims: std::sync::Arc::new(Map::new()),
        admin_claim: None,
        exp: 0,
        via: TokenSource::Bearer,
    };
    World {
        _dir: dir,
        facts,
        ledger,
        me,
        names,
        workflows,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn target(uri: &str) -> Target {
    let (path, query) = uri
        .split_once('?')
        .map_or((uri, None), |(p, q)| (p, Some(q)));
    canonical::canonicalize(path, query).expect("canonical")
}

/// Time `apply_body` of one filter over one body; `cold` invalidates the fact cache first
/// (outside the timed region), as after a write.
/// One filter over one upstream answer.
struct Case<'a> {
    filter: ResponseFilter,
    body: &'a Bytes,
    target: &'a Target,
    reshape: Option<&'a Reshape>,
}

fn time_filter(
    rt: &tokio::runtime::Runtime,
    w: &World,
    case: &Case<'_>,
    cold: bool,
    iters: u64,
) -> Duration {
    let Case {
        filter,
        body,
        target,
        reshape,
    } = *case;
    let data = RequestData {
        query: target.params.clone(),
        ..RequestData::default()
    };
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if cold {
                w.facts.invalidate();
            }
            let (mut parts, ()) = http::Response::new(()).into_parts();
            let ctx = FilterContext {
                principal: Some(&w.me),
                secret: None,
                target,
                data: &data,
                request_session: None,
                reshape,
                intent: None,
                facts: &w.facts,
                ledger: &w.ledger,
                tls: false,
                max_list_items: 50_000,
                access: None,
            };
            let start = Instant::now();
            let out = filters::apply_body(&[filter], &mut parts, body, &ctx)
                .await
                .expect("filtered");
            total += start.elapsed();
            black_box(out);
        }
        total
    })
}

fn bench_lists(c: &mut Criterion) {
    let rt = runtime();
    let w = world(&rt);
    let mut g = c.benchmark_group("lists_1000");
    g.throughput(Throughput::Elements(N as u64));

    let dtos = Bytes::from(
        serde_json::to_vec(&Value::from(
            w.names
                .iter()
                .map(|n| json!({"image_name": n, "width": 8, "height": 8, "starred": false}))
                .collect::<Vec<_>>(),
        ))
        .expect("json"),
    );
    let by_names = target("/api/v1/images/images_by_names");
    for cold in [false, true] {
        let label = if cold {
            "readable_images_cold"
        } else {
            "readable_images_warm"
        };
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                time_filter(
                    &rt,
                    &w,
                    &Case {
                        filter: ResponseFilter::Recompute(Recompute::ReadableImages),
                        body: &dtos,
                        target: &by_names,
                        reshape: None,
                    },
                    cold,
                    iters,
                )
            })
        });
    }

    let names = Bytes::from(
        serde_json::to_vec(
            &json!({"image_names": w.names, "starred_count": 100, "total_count": N}),
        )
        .expect("json"),
    );
    let names_target = target("/api/v1/images/names");
    g.bench_function("own_image_names", |b| {
        b.iter_custom(|iters| {
            time_filter(
                &rt,
                &w,
                &Case {
                    filter: ResponseFilter::Recompute(Recompute::OwnImageNames),
                    body: &names,
                    target: &names_target,
                    reshape: None,
                },
                false,
                iters,
            )
        })
    });

    let page = Bytes::from(
        serde_json::to_vec(
            &json!({"items": w.workflows, "page": 0, "per_page": N, "pages": 1, "total": N}),
        )
        .expect("json"),
    );
    let wf_target = target("/api/v1/workflows/?page=0&per_page=50");
    let reshape = Reshape::WorkflowPage {
        page: 0,
        per_page: Some(50),
    };
    g.bench_function("visible_workflow_page", |b| {
        b.iter_custom(|iters| {
            time_filter(
                &rt,
                &w,
                &Case {
                    filter: ResponseFilter::Recompute(Recompute::VisibleWorkflowPage),
                    body: &page,
                    target: &wf_target,
                    reshape: Some(&reshape),
                },
                false,
                iters,
            )
        })
    });

    // The own page of GET /images/ without board_id: one read transaction (page + count).
    let list_target = target("/api/v1/images/?limit=50&offset=100");
    g.bench_function("own_image_page_plan", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let data = RequestData {
                    query: list_target.params.clone(),
                    ..RequestData::default()
                };
                let input = FilterContext {
                    principal: Some(&w.me),
                    secret: None,
                    target: &list_target,
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
                let start = Instant::now();
                for _ in 0..iters {
                    let plan = filters::plan(
                        &[ResponseFilter::Recompute(Recompute::OwnImagePage)],
                        &input,
                    )
                    .await
                    .expect("plan");
                    black_box(plan.expect("a rewrite"));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    w.facts.shutdown();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_lists
}
criterion_main!(benches);
