//! Prometheus metrics (process-wide).
//!
//! Invariant: label values are bounded sets (rule ids from routes.toml, fixed decision and
//! reason labels); no user id, path or token ever becomes a label.

use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    rule_id: String,
    /// The predicate or stage that decided (`all` for an allow).
    check: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithheldLabels {
    rule_id: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    direction: &'static str,
    event: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndingLabels {
    ending: &'static str,
}

struct Metrics {
    registry: Registry,
    socket_frames: Family<FrameLabels, Counter>,
    sockets_closed: Family<EndingLabels, Counter>,
    sockets_opened: Counter,
    sockets_open: Gauge,
    decisions: Family<DecisionLabels, Counter>,
    withheld: Family<WithheldLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    duration: Histogram,
    routes_reloads: Counter,
    routes_reload_failures: Counter,
    rules: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("invoke_guard");
    let decisions = Family::<DecisionLabels, Counter>::default();
    let withheld = Family::<WithheldLabels, Counter>::default();
    let socket_frames = Family::<FrameLabels, Counter>::default();
    let sockets_closed = Family::<EndingLabels, Counter>::default();
    let sockets_opened = Counter::default();
    let sockets_open = Gauge::default();
    registry.register(
        "socket_frames",
        "Socket.IO frames by direction, event and outcome (passed, redacted, dropped, rejected)",
        socket_frames.clone(),
    );
    registry.register(
        "sockets_closed",
        "Socket.IO sessions ended, by why",
        sockets_closed.clone(),
    );
    registry.register(
        "sockets_opened",
        "Socket.IO sessions started",
        sockets_opened.clone(),
    );
    registry.register(
        "sockets_open",
        "Socket.IO sessions open now",
        sockets_open.clone(),
    );
    let cache_hits = Counter::default();
    let cache_misses = Counter::default();
    let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
    let routes_reloads = Counter::default();
    let routes_reload_failures = Counter::default();
    let rules = Gauge::default();
    registry.register(
        "authz_decisions",
        "Authorization decisions by rule and reason",
        decisions.clone(),
    );
    registry.register(
        "responses_withheld",
        "Allowed requests whose upstream answer could not be read, filtered or recorded (fail closed)",
        withheld.clone(),
    );
    registry.register("facts_cache_hits", "Fact cache hits", cache_hits.clone());
    registry.register(
        "facts_cache_misses",
        "Fact cache misses (database reads)",
        cache_misses.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Time from request to response head",
        duration.clone(),
    );
    registry.register(
        "routes_reloads",
        "Successful routes.toml reloads",
        routes_reloads.clone(),
    );
    registry.register(
        "routes_reload_failures",
        "Rejected routes.toml reloads (last good kept)",
        routes_reload_failures.clone(),
    );
    registry.register("rules", "Rules in the active route table", rules.clone());
    Metrics {
        registry,
        socket_frames,
        sockets_closed,
        sockets_opened,
        sockets_open,
        decisions,
        withheld,
        cache_hits,
        cache_misses,
        duration,
        routes_reloads,
        routes_reload_failures,
        rules,
    }
});

/// Count one decision.
pub fn decision(
    decision: &'static str,
    rule_id: &str,
    check: &'static str,
    reason: &'static str,
    seconds: f64,
) {
    METRICS
        .decisions
        .get_or_create(&DecisionLabels {
            decision,
            rule_id: rule_id.to_owned(),
            check,
            reason,
        })
        .inc();
    METRICS.duration.observe(seconds);
}

/// Count an upstream answer replaced by an error because it could not be made safe.
pub fn response_withheld(rule_id: &str, reason: &'static str) {
    METRICS
        .withheld
        .get_or_create(&WithheldLabels {
            rule_id: rule_id.to_owned(),
            reason,
        })
        .inc();
}

/// Count one Socket.IO frame (labels are bounded: fixed directions, known event names, outcomes).
pub fn socket_frame(direction: &'static str, event: &'static str, outcome: &'static str) {
    METRICS
        .socket_frames
        .get_or_create(&FrameLabels {
            direction,
            event,
            outcome,
        })
        .inc();
}

pub fn socket_opened() {
    METRICS.sockets_opened.inc();
}

pub fn socket_closed(ending: &'static str) {
    METRICS
        .sockets_closed
        .get_or_create(&EndingLabels { ending })
        .inc();
}

pub fn sockets_open(n: usize) {
    METRICS.sockets_open.set(n as i64);
}

pub fn cache_hit() {
    METRICS.cache_hits.inc();
}

pub fn cache_miss() {
    METRICS.cache_misses.inc();
}

pub fn routes_reloaded(rules: usize) {
    METRICS.routes_reloads.inc();
    METRICS.rules.set(rules as i64);
}

pub fn routes_reload_failed() {
    METRICS.routes_reload_failures.inc();
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &METRICS.registry).expect("writing to a String cannot fail");
    out
}
