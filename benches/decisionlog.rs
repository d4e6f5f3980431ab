//! The decision line: the fixed-shape writer (`invoke_guard::decisionlog`, text and JSON) against
//! the `tracing::info!` event it replaced, formatted by tracing-subscriber's fmt layer the way
//! `serve` configured it. A denial with three facts, as `image.read` produces them. No
//! thresholds: compare the three rows of one run.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use invoke_guard::decisionlog::{format_line, DecisionLine, Format};

fn facts() -> Vec<String> {
    vec![
        "image 3f0c1a52-8e55-4a5d-9f0e-0d4c2f7b1a9e.png: owner f20096cf-9ad3-4a3c-8e50-a2e2634fffe7, board none".into(),
        "caller 5b4c6f0e-1f3a-4c43-a0f4-8d7a9b2c1d0e (not admin)".into(),
        "board none: uncategorized".into(),
    ]
}

fn bench(c: &mut Criterion) {
    let facts = facts();
    let line = DecisionLine {
        request_id: "5f3a9c1e2b7d4a60-000000000000001a",
        client: "10.244.1.7",
        rule_id: "images.get",
        user_id: Some("5b4c6f0e-1f3a-4c43-a0f4-8d7a9b2c1d0e"),
        email: Some("bob@example.com"),
        method: "GET",
        path: "/api/v1/images/i/3f0c1a52-8e55-4a5d-9f0e-0d4c2f7b1a9e.png",
        outcome: "deny",
        reason: "forbidden",
        check: "image.read",
        facts: &facts,
        detail: "",
        status: 403,
        micros: 187,
    };
    let mut group = c.benchmark_group("decision_line");
    let mut buf = Vec::with_capacity(1024);
    group.bench_function("writer_text", |b| {
        b.iter(|| {
            buf.clear();
            format_line(&mut buf, Format::Text, black_box(&line), SystemTime::now());
            black_box(buf.len())
        })
    });
    group.bench_function("writer_json", |b| {
        b.iter(|| {
            buf.clear();
            format_line(&mut buf, Format::Json, black_box(&line), SystemTime::now());
            black_box(buf.len())
        })
    });
    // What the pipeline did before: one tracing event, the facts joined into a String first.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .with_env_filter("info")
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("tracing_event_text", |b| {
            b.iter(|| {
                let l = black_box(&line);
                let joined = l.facts.join("; ");
                tracing::info!(
                    target: "invoke_guard::decision",
                    rule_id = %l.rule_id,
                    user_id = l.user_id.unwrap_or("-"),
                    method = %l.method,
                    path = %l.path,
                    outcome = l.outcome,
                    reason = l.reason,
                    check = l.check,
                    facts = %joined,
                    detail = l.detail,
                    status = l.status,
                    micros = l.micros,
                );
            })
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
