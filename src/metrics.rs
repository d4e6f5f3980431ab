//! Prometheus metrics (process-wide), exposed in the format the scraper asks for.
//!
//! Invariants:
//! - Label values are bounded sets (rule ids from routes.toml, fixed decision, reason and error
//!   kind labels, the routes checksum of the one active table); no user id, path or token ever
//!   becomes a label.
//! - The body always matches the advertised `Content-Type`: OpenMetrics 1.0.0 (what
//!   prometheus-client encodes, ending in `# EOF`) only when the `Accept` header prefers it,
//!   otherwise the Prometheus text format 0.0.4 derived from it by [`to_text_004`].
//! - The `authz_decisions` family is never cleared: per-thread counter handles (see
//!   [`decision`]) count into it.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `allow`, `deny`, `would_deny` (shadow: denied by the checks, forwarded anyway), ...
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
struct CandidateLabels {
    rule_id: String,
    /// What the enforced table did: `forward` or the guard's own status class word.
    enforced: &'static str,
    /// What the candidate table would have done.
    candidate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChecksumLabels {
    sha256: String,
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
    socket_refusals: Family<ReasonLabels, Counter>,
    sockets_opened: Counter,
    sockets_open: Gauge,
    decisions: Family<DecisionLabels, Counter>,
    withheld: Family<WithheldLabels, Counter>,
    candidate_differences: Family<CandidateLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    duration: Histogram,
    routes_reloads: Counter,
    routes_reload_failures: Counter,
    routes_fallback: Gauge,
    rules: Gauge,
    shadow_rules: Gauge,
    last_reload_successful: Gauge,
    last_reload_success_time: Gauge<f64, AtomicU64>,
    routes_checksum: Family<ChecksumLabels, Gauge>,
    upstream_errors: Family<KindLabels, Counter>,
    generation_refusals: Family<ReasonLabels, Counter>,
    upgraded: Gauge,
    draining: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("invoke_guard");
    let m = Metrics {
        socket_frames: Family::default(),
        sockets_closed: Family::default(),
        socket_refusals: Family::default(),
        sockets_opened: Counter::default(),
        sockets_open: Gauge::default(),
        decisions: Family::default(),
        withheld: Family::default(),
        candidate_differences: Family::default(),
        cache_hits: Counter::default(),
        cache_misses: Counter::default(),
        duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        routes_reloads: Counter::default(),
        routes_reload_failures: Counter::default(),
        routes_fallback: Gauge::default(),
        rules: Gauge::default(),
        shadow_rules: Gauge::default(),
        last_reload_successful: Gauge::default(),
        last_reload_success_time: Gauge::default(),
        routes_checksum: Family::default(),
        upstream_errors: Family::default(),
        generation_refusals: Family::default(),
        upgraded: Gauge::default(),
        draining: Gauge::default(),
        registry: Registry::default(),
    };
    registry.register(
        "build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register(
        "authz_decisions",
        "Authorization decisions by rule and reason (would_deny: a shadow rule's denial, forwarded)",
        m.decisions.clone(),
    );
    registry.register(
        "responses_withheld",
        "Allowed requests whose upstream answer could not be read, filtered or recorded (fail closed)",
        m.withheld.clone(),
    );
    registry.register(
        "candidate_differences",
        "Requests the candidate route table would have answered differently from the enforced one",
        m.candidate_differences.clone(),
    );
    registry.register("facts_cache_hits", "Fact cache hits", m.cache_hits.clone());
    registry.register(
        "facts_cache_misses",
        "Fact cache misses (database reads)",
        m.cache_misses.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Time from request to response head",
        m.duration.clone(),
    );
    registry.register(
        "routes_reloads",
        "Successful routes.toml reloads (the load at start is not one)",
        m.routes_reloads.clone(),
    );
    registry.register(
        "routes_reload_failures",
        "Rejected routes.toml reloads (last good kept)",
        m.routes_reload_failures.clone(),
    );
    registry.register(
        "routes_fallback",
        "1 while the persisted last good route table is served because the configured routes.toml (or groups file) did not load at start, else 0",
        m.routes_fallback.clone(),
    );
    registry.register(
        "routes_last_reload_successful",
        "Whether the last routes.toml (or groups file) load succeeded (1) or was rejected (0)",
        m.last_reload_successful.clone(),
    );
    registry.register(
        "routes_last_reload_success_timestamp_seconds",
        "Unix time of the last successful routes.toml load",
        m.last_reload_success_time.clone(),
    );
    registry.register(
        "routes_checksum",
        "SHA-256 of the active routes.toml (compare with sha256sum); value always 1",
        m.routes_checksum.clone(),
    );
    registry.register("rules", "Rules in the active route table", m.rules.clone());
    registry.register(
        "shadow_rules",
        "Rules in shadow mode (a resource check's refusal of a read is logged and forwarded; everything else enforced)",
        m.shadow_rules.clone(),
    );
    registry.register(
        "upstream_errors",
        "Requests the upstream did not answer, by kind (connect, timeout, request)",
        m.upstream_errors.clone(),
    );
    registry.register(
        "generation_refusals",
        "Enqueues and model uses refused by the groups file's [models] and [quotas], by reason \
         (model_denied, model_unknown, runtime_model_node, unreadable_batch, quota_queued, \
         quota_minute, quota_hour, quota_day, quota_batch_too_large)",
        m.generation_refusals.clone(),
    );
    registry.register(
        "upgraded_connections",
        "Open client websockets (Socket.IO sessions on the websocket transport)",
        m.upgraded.clone(),
    );
    registry.register(
        "draining",
        "1 once shutdown began (/readyz answers 503), else 0",
        m.draining.clone(),
    );
    registry.register(
        "socket_frames",
        "Socket.IO frames by direction, event and outcome (passed, redacted, dropped, rejected)",
        m.socket_frames.clone(),
    );
    registry.register(
        "sockets_closed",
        "Socket.IO sessions ended, by why",
        m.sockets_closed.clone(),
    );
    registry.register(
        "socket_refusals",
        "Socket.IO transport requests and CONNECTs refused by a session guard, by reason",
        m.socket_refusals.clone(),
    );
    registry.register(
        "sockets_opened",
        "Socket.IO sessions started",
        m.sockets_opened.clone(),
    );
    registry.register(
        "sockets_open",
        "Socket.IO sessions open now",
        m.sockets_open.clone(),
    );
    Metrics { registry, ..m }
});

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

/// Count one refusal by a Socket.IO session guard (a fixed reason label).
pub fn socket_refused(reason: &'static str) {
    METRICS
        .socket_refusals
        .get_or_create(&ReasonLabels { reason })
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

/// Count one decision.
pub fn decision(
    decision: &'static str,
    rule_id: &str,
    check: &'static str,
    reason: &'static str,
    seconds: f64,
) {
    DECISION_HANDLES.with_borrow_mut(|handles| {
        let key = [label_key(decision), label_key(check), label_key(reason)];
        let by_rule = handles.entry(key).or_default();
        if let Some(counter) = by_rule.get(rule_id) {
            counter.inc();
            return;
        }
        let counter = METRICS
            .decisions
            .get_or_create(&DecisionLabels {
                decision,
                rule_id: rule_id.to_owned(),
                check,
                reason,
            })
            .clone();
        counter.inc();
        by_rule.insert(rule_id.to_owned(), counter);
    });
    METRICS.duration.observe(seconds);
}

/// Counter handles of `authz_decisions`, resolved once per label set and thread (the family's
/// lock and a label `String` per request were measurable on the allow path). A handle shares
/// its value with the family's counter, and the family is never cleared, so counting through
/// a handle is counting in the family. Bounded like the labels: fixed label sets times the
/// rule ids seen. Hashed with foldhash, not SipHash: the keys are the guard's own label
/// strings and the route table's rule ids, never a client's bytes (no flooding to resist).
///
/// The label triple is keyed by the strings' addresses and lengths (no string hashing or
/// comparison): the labels are `'static` constants, so a (address, length) pair names one text;
/// two equal labels at different addresses only make two handles of the same family counter
/// (`get_or_create` returns one counter per label set).
type DecisionHandles = std::collections::HashMap<
    [(usize, usize); 3],
    std::collections::HashMap<String, Counter, foldhash::fast::RandomState>,
    foldhash::fast::RandomState,
>;

/// A `'static` label's key in [`DecisionHandles`]: its address and length.
fn label_key(label: &'static str) -> (usize, usize) {
    (label.as_ptr() as usize, label.len())
}

thread_local! {
    static DECISION_HANDLES: std::cell::RefCell<DecisionHandles> = Default::default();
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

/// The candidate table would have answered this request differently (`enforced`/`candidate`:
/// `forward`, `redirect`, `socket` or a status such as `403`).
pub fn candidate_difference(rule_id: &str, enforced: &'static str, candidate: &'static str) {
    METRICS
        .candidate_differences
        .get_or_create(&CandidateLabels {
            rule_id: rule_id.to_owned(),
            enforced,
            candidate,
        })
        .inc();
}

pub fn cache_hit() {
    METRICS.cache_hits.inc();
}

pub fn cache_miss() {
    METRICS.cache_misses.inc();
}

/// A route table was loaded (at start, or on a reload when `reload`) and is now active.
pub fn routes_loaded(rules: usize, shadow: usize, sha256: &str, reload: bool) {
    if reload {
        METRICS.routes_reloads.inc();
    }
    METRICS.routes_fallback.set(0);
    METRICS.rules.set(rules as i64);
    METRICS.shadow_rules.set(shadow as i64);
    METRICS.last_reload_successful.set(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    METRICS.last_reload_success_time.set(now);
    // One series: the active table's checksum.
    METRICS.routes_checksum.clear();
    METRICS
        .routes_checksum
        .get_or_create(&ChecksumLabels {
            sha256: sha256.to_owned(),
        })
        .set(1);
}

/// The persisted last good table is served: the configured files did not load at start.
pub fn routes_fallback() {
    METRICS.routes_fallback.set(1);
    METRICS.last_reload_successful.set(0);
}

pub fn routes_reload_failed() {
    METRICS.routes_reload_failures.inc();
    METRICS.last_reload_successful.set(0);
}

/// One enqueue or model use refused by model access or a quota (a fixed reason label).
pub fn generation_refused(reason: &'static str) {
    METRICS
        .generation_refusals
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// An upstream request that got no answer: `connect`, `timeout` or `request`.
pub fn upstream_error(kind: &'static str) {
    METRICS
        .upstream_errors
        .get_or_create(&KindLabels { kind })
        .inc();
}

/// Counts an open client websocket for as long as it lives.
pub struct UpgradedConnection(());

impl UpgradedConnection {
    pub fn open() -> Self {
        METRICS.upgraded.inc();
        UpgradedConnection(())
    }
}

impl Drop for UpgradedConnection {
    fn drop(&mut self) {
        METRICS.upgraded.dec();
    }
}

pub fn draining() {
    METRICS.draining.set(1);
}

/// The exposition formats the admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4` (the Prometheus text format; the default).
    Text004,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Content negotiation as Prometheus does it: the media range with the highest `q` wins;
    /// OpenMetrics only when asked for explicitly (a `*/*` or absent header gets text 0.0.4).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best_om = 0.0f32;
        let mut best_text = 0.0f32;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                match p.split_once('=') {
                    Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                        q = v.trim().parse().unwrap_or(0.0)
                    }
                    Some((k, v)) if k.trim().eq_ignore_ascii_case("version") => {
                        version = Some(v.trim().to_owned())
                    }
                    _ => {}
                }
            }
            match media.as_str() {
                // Only the version we emit; 0.0.1 is a different (older) dialect.
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    best_om = best_om.max(q)
                }
                "text/plain" | "text/*" | "*/*" => best_text = best_text.max(q),
                _ => {}
            }
        }
        if best_om > 0.0 && best_om >= best_text {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }
}

/// The metrics in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &METRICS.registry).expect("writing to a String cannot fail");
    drop_empty_families(&out)
}

/// Omit families that have no sample yet (a labelled family before its first use), as
/// client_golang does: their bare `# HELP`/`# TYPE` lines carry nothing, and some parsers
/// mis-read a descriptor block with no samples.
fn drop_empty_families(exposition: &str) -> String {
    let mut out = String::with_capacity(exposition.len());
    let mut pending = String::new();
    let mut pending_name = "";
    for line in exposition.lines() {
        let descriptor = ["# HELP ", "# TYPE ", "# UNIT "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .map(|rest| rest.split(' ').next().unwrap_or(""));
        match descriptor {
            Some(name) => {
                if name != pending_name {
                    pending.clear();
                    pending_name = name;
                }
                pending.push_str(line);
                pending.push('\n');
            }
            None if line.starts_with('#') => {
                pending.clear();
                out.push_str(line);
                out.push('\n');
            }
            None => {
                out.push_str(&pending);
                pending.clear();
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The metrics in `format`.
pub fn render_as(format: Format) -> String {
    match format {
        Format::OpenMetrics => render(),
        Format::Text004 => to_text_004(&render()),
    }
}

/// Rewrite prometheus-client's OpenMetrics output as the Prometheus text format 0.0.4: counter
/// and info families are named by their sample (`x_total`, `x_info`; info becomes a gauge),
/// `# UNIT` and `# EOF` lines and `_created` samples (not part of 0.0.4) are dropped.
pub fn to_text_004(openmetrics: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((word, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let (renamed, tail) = match (types.get(name).copied(), word) {
                (Some("counter"), _) => (format!("{name}_total"), tail),
                (Some("info"), "TYPE") => (format!("{name}_info"), "gauge"),
                (Some("info"), _) => (format!("{name}_info"), tail),
                _ => (name.to_owned(), tail),
            };
            out.push_str(&format!("# {word} {renamed} {tail}\n"));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(family) = sample_name.strip_suffix("_created") {
            if types.get(family) == Some(&"counter") {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_accept_and_q_values() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Text004);
        assert_eq!(Format::negotiate(Some("*/*")), Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Text004);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            OpenMetrics
        );
        // Prometheus 3's default scrape header.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                 application/openmetrics-text;version=0.0.1;q=0.4,\
                 text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
                 text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
            )),
            OpenMetrics
        );
        // Preferred lower, or only the old dialect: text.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;q=0.1,text/plain;version=0.0.4;q=0.9"
            )),
            Text004
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=0.0.1")),
            Text004
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Text004
        );
    }

    #[test]
    fn families_without_samples_are_omitted() {
        let om = "# HELP a A.\n# TYPE a counter\n# HELP b B.\n# TYPE b gauge\nb 1\n# HELP c C.\n# TYPE c gauge\n# EOF\n";
        assert_eq!(
            drop_empty_families(om),
            "# HELP b B.\n# TYPE b gauge\nb 1\n# EOF\n"
        );
    }

    #[test]
    fn text_004_names_counters_and_info_by_their_samples() {
        let om = "# HELP g_x Some.\n# TYPE g_x counter\ng_x_total{a=\"b\"} 1\ng_x_created 17\n\
                  # HELP g_build Build.\n# TYPE g_build info\ng_build_info{version=\"1\"} 1\n\
                  # HELP g_up Up.\n# TYPE g_up gauge\n# UNIT g_up seconds\ng_up 2\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP g_x_total Some.\n# TYPE g_x_total counter\ng_x_total{a=\"b\"} 1\n\
             # HELP g_build_info Build.\n# TYPE g_build_info gauge\ng_build_info{version=\"1\"} 1\n\
             # HELP g_up Up.\n# TYPE g_up gauge\ng_up 2\n"
        );
    }
}
