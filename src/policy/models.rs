//! Model access and generation quotas (the groups file's `[models]` and `[quotas]`): the checks
//! `enqueue.models_allowed`, `enqueue.within_quota`, `retry.models_allowed`,
//! `retry.within_quota`, `model.usable`, `model.visible`, and the per-caller model judgement the
//! response filters and the socket share.
//!
//! Invariants:
//! - A model is judged by its database record, looked up by key; the name, base or type a client
//!   writes next to a key are never trusted. A key the catalogue does not know is refused (it may
//!   be a model the guard does not see yet).
//! - Without a `[models]` section every model check holds without reading anything; without a
//!   `[quotas]` section every quota check does; admins are exempt unless the section includes them.
//! - Nodes that choose their model at run time from data the batch does not contain (image
//!   metadata, a saved workflow: [`RUNTIME_MODEL_NODES`]) are refused for a caller whose model
//!   access is restricted.
//! - A quota check counts the batch as InvokeAI will expand it (`http::batch`), the user's queue
//!   from the database, and holds the user's [`Reservation`] in the request until the upstream
//!   answered: one check at a time per user. Over a limit: 429 with `Retry-After`; a batch larger
//!   than a limit can never fit: 403. Nothing is partially forwarded.
//! - Every refusal is counted by reason (`invoke_guard_generation_refusals_total`), and every
//!   decision leaves its arithmetic and deciding rule in the trace (explain, the decision log).

use std::sync::Mutex;

use serde_json::Value;

use super::{Outcome, RequestData, Selected};
use crate::decision::Refusal;
use crate::facts::models::{Catalog, ModelRecord, Reservation};
use crate::facts::Facts;
use crate::http::batch::{BatchScan, ModelRef};
use crate::identity::Principal;
use crate::rules::access::{Access, Admins, Caller, ModelAttrs, ModelRules, Window};
use crate::rules::vocab::Model;

/// Node types that pick a model at run time from data the guard does not see in the batch
/// (derived from each version's invocations: `extract_model_key` / `search_by_attrs` over
/// metadata, and the saved-workflow call of 6.14; see docs/models.md).
pub const RUNTIME_MODEL_NODES: &[&str] = &[
    "metadata_to_model",
    "metadata_to_sdxl_model",
    "metadata_to_vae",
    "metadata_to_lora_collection",
    "metadata_to_loras",
    "metadata_to_sdlx_loras",
    "metadata_to_controlnets",
    "metadata_to_ip_adapters",
    "metadata_to_t2i_adapters",
    "call_saved_workflow",
];

/// Quota reservations a request holds until the upstream answered (see [`RequestData::settle`]).
#[derive(Debug, Default)]
pub struct Holds(Mutex<Vec<Reservation>>);

impl Holds {
    fn push(&self, r: Reservation) {
        self.0.lock().expect("holds lock").push(r);
    }

    /// Release every reservation; `accepted`: the upstream took the request (its items are
    /// remembered for the rolling windows).
    pub fn settle(&self, accepted: bool) {
        for r in self.0.lock().expect("holds lock").drain(..) {
            r.settle(accepted);
        }
    }
}

/// The caller as the access sections judge them.
pub fn caller(p: &Principal) -> Caller<'_> {
    Caller {
        user_id: &p.user_id,
        email: &p.email,
        is_admin: p.is_admin,
    }
}

fn attrs(r: &ModelRecord) -> ModelAttrs<'_> {
    ModelAttrs {
        key: &r.key,
        name: &r.name,
        base: &r.base,
        kind: &r.kind,
    }
}

/// Whether the caller may use a model record (what filters and the socket ask).
pub fn may_use(rules: &ModelRules, c: &Caller<'_>, r: &ModelRecord) -> bool {
    rules.decide(c, &attrs(r)).0
}

/// A refusal, counted by reason when the check enforces (not when `explain` or the candidate
/// table evaluates it).
fn refuse(enforce: bool, reason: &'static str, deny: Refusal) -> Refusal {
    if enforce {
        crate::metrics::generation_refused(reason);
    }
    deny
}

fn described(r: &ModelRef) -> String {
    match &r.name {
        Some(n) => format!("'{n}' (key {})", r.key),
        None => format!("key {}", r.key),
    }
}

/// Judge every reference against the catalogue (each one's decision is traced); the first
/// unusable one, in the order they appear, refuses.
fn judge_refs(
    rules: &ModelRules,
    me: &Caller<'_>,
    catalog: &Catalog,
    refs: &[ModelRef],
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let mut refusal = None;
    for r in refs {
        let more = if r.count > 1 {
            format!(" (+{} more)", r.count - 1)
        } else {
            String::new()
        };
        // Stale catalogue / not-yet-visible model (TOCTOU): an unknown key is refused, never passed.
        let Some(record) = catalog.get(&r.key) else {
            facts.push(format!(
                "model {} at {}{more}: unknown key",
                described(r),
                r.at
            ));
            refusal.get_or_insert_with(|| {
                (
                    "model_unknown",
                    Refusal::Forbidden(format!(
                        "Unknown model {} in this request (at {}): it is not installed on this server, or not yet visible",
                        described(r),
                        r.at
                    )),
                )
            });
            continue;
        };
        // Identifier spoofing: judged by the record the key names, not the name/type written beside it.
        let (allowed, by) = rules.decide(me, &attrs(record));
        facts.push(format!(
            "model {} key {} at {}{more}: {} by {}",
            record.label(),
            record.key,
            r.at,
            if allowed { "allowed" } else { "REFUSED" },
            by.describe()
        ));
        if !allowed {
            refusal.get_or_insert_with(|| {
                (
                    "model_denied",
                    Refusal::Forbidden(format!(
                        "You may not use the model '{}' ({} {}): the server's model access rules do not allow it for you",
                        record.name, record.base, record.kind
                    )),
                )
            });
        }
    }
    match refusal {
        Some((reason, deny)) => Err(refuse(enforce, reason, deny)),
        None => Ok(()),
    }
}

/// `enqueue.models_allowed(body.batch)`.
pub(super) async fn enqueue_models_allowed(
    access: &Access,
    scan: Option<&BatchScan>,
    me: &Principal,
    facts_src: &Facts,
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let Some(rules) = judging(access, me, facts) else {
        return Ok(());
    };
    let c = caller(me);
    let Some(scan) = scan else {
        // The batch was selected but not scanned: never forward it unchecked.
        return Err(refuse(
            enforce,
            "unreadable_batch",
            Refusal::Unprocessable("the batch could not be read for model references".into()),
        ));
    };
    facts.push(format!(
        "batch: {} distinct model reference(s), {} node(s)",
        scan.refs.len(),
        scan.node_types.len()
    ));
    let catalog = facts_src.models().await?;
    judge_refs(rules, &c, &catalog, &scan.refs, facts, enforce)?;
    // Indirect model resolution (metadata, saved workflows): what the batch cannot show is refused.
    if rules.restricts(&c) {
        if let Some((id, kind)) = scan
            .node_types
            .iter()
            .find(|(_, t)| RUNTIME_MODEL_NODES.contains(&t.as_str()))
        {
            facts.push(format!(
                "node {id} ({kind}) picks its model at run time; caller's model access is restricted"
            ));
            return Err(refuse(
                enforce,
                "runtime_model_node",
                Refusal::Forbidden(format!(
                    "The node '{kind}' (id {id}) picks its model at run time from image metadata or a saved workflow, which the server cannot check against your model access; it is not available to you"
                )),
            ));
        }
    }
    Ok(())
}

/// The `[models]` rules that judge this caller: `None` (and the reason traced) without the
/// section, or for an admin the section exempts.
fn judging<'a>(
    access: &'a Access,
    me: &Principal,
    facts: &mut Vec<String>,
) -> Option<&'a ModelRules> {
    let Some(rules) = access.models.as_ref() else {
        facts.push("no [models] section: every model is usable".into());
        return None;
    };
    if me.is_admin && rules.admins == Admins::Exempt {
        facts.push("caller is admin: exempt from [models]".into());
        return None;
    }
    Some(rules)
}

fn item_ids(arg: &Selected) -> Result<Vec<i64>, Refusal> {
    arg.items()
        .into_iter()
        .map(|v| match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .map(|id| id.ok_or_else(|| Refusal::Unprocessable("item ids must be integers".into())))
        .collect()
}

/// Re-run of stored graphs (a model restricted after enqueue): checked like a new batch.
/// `retry.models_allowed(body[])`: a retry re-runs the stored graphs of the caller's failed or
/// canceled items; a model restricted since they were enqueued is refused like in a batch.
pub(super) async fn retry_models_allowed(
    access: &Access,
    arg: &Selected,
    me: &Principal,
    facts_src: &Facts,
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let Some(rules) = judging(access, me, facts) else {
        return Ok(());
    };
    let c = caller(me);
    let ids = item_ids(arg)?;
    let items = facts_src.stored_items(ids).await?;
    let catalog = facts_src.models().await?;
    for item in items
        .iter()
        .filter(|i| matches!(i.status.as_str(), "failed" | "canceled"))
    {
        let unreadable = |e: String| {
            refuse(
                enforce,
                "unreadable_batch",
                Refusal::Unavailable(format!("stored session of item {}: {e}", item.item_id)),
            )
        };
        let session: Value =
            serde_json::from_str(&item.session).map_err(|e| unreadable(e.to_string()))?;
        let mut walk = crate::http::batch::Refs::default();
        walk.walk_value(&session).map_err(unreadable)?;
        let mut refs = walk.into_vec();
        if let Some(w) = &item.workflow {
            refs.extend(crate::http::batch::refs_in_json(w).map_err(unreadable)?);
        }
        let runtime = session
            .pointer("/graph/nodes")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .filter_map(|n| n.get("type").and_then(Value::as_str))
            .find(|t| RUNTIME_MODEL_NODES.contains(t));
        if let (true, Some(kind)) = (rules.restricts(&c), runtime) {
            facts.push(format!(
                "item {}: node {kind} picks its model at run time",
                item.item_id
            ));
            return Err(refuse(
                enforce,
                "runtime_model_node",
                Refusal::Forbidden(format!(
                    "Queue item {} holds a '{kind}' node, which picks its model at run time; the server cannot check it against your model access",
                    item.item_id
                )),
            ));
        }
        facts.push(format!(
            "item {}: {} model reference(s)",
            item.item_id,
            refs.len()
        ));
        judge_refs(rules, &c, &catalog, &refs, facts, enforce)?;
    }
    Ok(())
}

/// `model.usable(S)` (403 naming the model) and `model.visible(S)` (404, as for a key that does
/// not exist: a caller never learns of a model she may not use).
pub(super) async fn model_check(
    predicate: Model,
    access: &Access,
    arg: &Selected,
    me: &Principal,
    facts_src: &Facts,
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let Some(rules) = judging(access, me, facts) else {
        return Ok(());
    };
    let visible_only = predicate == Model::Visible;
    let catalog = facts_src.models().await?;
    let c = caller(me);
    for v in arg.items() {
        let Value::String(key) = v else {
            return Err(Refusal::Unprocessable(
                "a model key must be a string".into(),
            ));
        };
        let judged = catalog.get(key).map(|r| (r, rules.decide(&c, &attrs(r))));
        let (allowed, detail) = match &judged {
            Some((r, (allowed, by))) => {
                facts.push(format!(
                    "model {} key {key}: {} by {}",
                    r.label(),
                    if *allowed { "allowed" } else { "REFUSED" },
                    by.describe()
                ));
                (
                    *allowed,
                    format!(
                        "You may not use the model '{}' ({} {})",
                        r.name, r.base, r.kind
                    ),
                )
            }
            None => {
                facts.push(format!("model key {key}: unknown"));
                (false, format!("Unknown model key {key}"))
            }
        };
        if allowed {
            continue;
        }
        return Err(if visible_only {
            // InvokeAI's own answer for a key it does not have.
            Refusal::NotFound("model not found".into())
        } else {
            refuse(
                enforce,
                if judged.is_some() {
                    "model_denied"
                } else {
                    "model_unknown"
                },
                Refusal::Forbidden(detail),
            )
        });
    }
    Ok(())
}

/// What a quota check counts for one request.
pub(super) struct Demand {
    pub items: u64,
    /// How the count was made (explain).
    pub arithmetic: String,
}

impl Demand {
    pub fn of_batch(scan: &BatchScan) -> Self {
        Demand {
            items: scan.sessions(),
            arithmetic: scan.arithmetic(),
        }
    }
}

/// The quota arithmetic of one source (database or the guard's record): entries within the
/// window, and the seconds until enough of them leave it for `room` to be free.
fn wait_for(entries: &[(f64, u64)], window: f64, must_leave: u64) -> f64 {
    let mut left = 0u64;
    for (age, n) in entries {
        left = left.saturating_add(*n);
        if left >= must_leave {
            return (window - age).max(0.0);
        }
    }
    window
}

/// `enqueue.within_quota` / `retry.within_quota`: the caller's limits against her queue plus
/// this request; on success the reservation stays in the request until the upstream answered.
pub(super) async fn within_quota(
    access: &Access,
    demand: Option<Demand>,
    me: &Principal,
    data: &RequestData,
    facts_src: &Facts,
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let Some(q) = access.quotas.as_ref() else {
        facts.push("no [quotas] section: nobody is limited".into());
        return Ok(());
    };
    let c = caller(me);
    let Some((rule, who)) = q.rule_for(&c) else {
        facts.push(if me.is_admin {
            "caller is admin: exempt from [quotas]".into()
        } else {
            "no quota rule applies to the caller".into()
        });
        return Ok(());
    };
    let Some(demand) = demand else {
        return Err(refuse(
            enforce,
            "unreadable_batch",
            Refusal::Unprocessable("the batch could not be read for its size".into()),
        ));
    };
    let whom = who.describe();
    facts.push(format!(
        "quota rule '{}' applies ({whom}); this request: {}",
        rule.id, demand.arithmetic
    ));
    let n = demand.items;
    // Check-then-act race (two concurrent enqueues both fitting): the reservation first, so the
    // count below sees every earlier batch of this user.
    // Only the enforced decision reserves: `explain` and the candidate table count the same,
    // without holding the caller's lock (the enforced check of the same request holds it).
    let reservation = match enforce {
        true => Some(facts_src.queue_load().reserve(&me.user_id).await),
        false => None,
    };
    let longest = Window::ALL
        .iter()
        .filter(|w| rule.per_window(**w).is_some())
        .map(|w| q.window(*w))
        .max()
        .unwrap_or_default();
    let db = facts_src.usage(&me.user_id, longest).await?;
    if let Some(max) = rule.max_queued {
        facts.push(format!(
            "queued: {} (database) + {n} (this request) = {} against max_queued {max}",
            db.queued,
            db.queued.saturating_add(n)
        ));
        too_large(
            enforce,
            n,
            max,
            &whom,
            "queued at once",
            "quota_batch_too_large",
        )?;
        if db.queued.saturating_add(n) > max {
            return Err(refuse(
                enforce,
                "quota_queued",
                Refusal::TooManyRequests {
                    detail: format!(
                        "You have {} generation{} queued{}; the limit for {whom} is {max}",
                        db.queued,
                        if db.queued == 1 { "" } else { "s" },
                        if n > 0 {
                            format!(" and this request would add {n}")
                        } else {
                            String::new()
                        }
                    ),
                    retry_after: q.queued_retry_after,
                },
            ));
        }
    }
    let db_entries: Vec<(f64, u64)> = db.ages.iter().map(|a| (*a, 1)).collect();
    // Window reset by pruning one's own finished rows: the guard's own record counts too.
    let mine = facts_src.queue_load().recent(&me.user_id, longest);
    for w in Window::ALL {
        let Some(limit) = rule.per_window(w) else {
            continue;
        };
        let secs = q.window(w).as_secs_f64();
        let in_window = |entries: &[(f64, u64)]| -> Vec<(f64, u64)> {
            entries.iter().filter(|(a, _)| *a < secs).copied().collect()
        };
        let (from_db, from_guard) = (in_window(&db_entries), in_window(&mine));
        let count = |e: &[(f64, u64)]| e.iter().fold(0u64, |s, (_, n)| s.saturating_add(*n));
        let used = count(&from_db).max(count(&from_guard));
        facts.push(format!(
            "per {} ({} s): {used} enqueued (database {}, guard {}) + {n} = {} against {limit}",
            w.name(),
            secs,
            count(&from_db),
            count(&from_guard),
            used.saturating_add(n)
        ));
        too_large(
            enforce,
            n,
            limit,
            &whom,
            &format!("per {}", w.name()),
            "quota_batch_too_large",
        )?;
        if used.saturating_add(n) > limit {
            // Each source must shed what puts it over the limit with this request.
            let wait = [&from_db, &from_guard]
                .into_iter()
                .map(|e| {
                    let over = count(e).saturating_add(n).saturating_sub(limit);
                    if over == 0 {
                        0.0
                    } else {
                        wait_for(e, secs, over)
                    }
                })
                .fold(0.0, f64::max);
            let retry_after = (wait.ceil() as u64).max(1);
            return Err(refuse(
                enforce,
                match w {
                    Window::Minute => "quota_minute",
                    Window::Hour => "quota_hour",
                    Window::Day => "quota_day",
                },
                Refusal::TooManyRequests {
                    detail: format!(
                        "You enqueued {used} generation{} in the last {}{}; the limit for {whom} is {limit} per {}. Try again in {retry_after} s",
                        if used == 1 { "" } else { "s" },
                        w.name(),
                        if n > 0 { format!(" and this request would add {n}") } else { String::new() },
                        w.name()
                    ),
                    retry_after,
                },
            ));
        }
    }
    if let Some(mut reservation) = reservation {
        reservation.set_items(n);
        data.holds.push(reservation);
    }
    Ok(())
}

fn too_large(
    enforce: bool,
    n: u64,
    limit: u64,
    whom: &str,
    what: &str,
    reason: &'static str,
) -> Outcome {
    if n > limit {
        return Err(refuse(
            enforce,
            reason,
            Refusal::Forbidden(format!(
                "This request would create {n} generations; the limit for {whom} is {limit} {what}, so it can never be queued whole (make the batch smaller)"
            )),
        ));
    }
    Ok(())
}

/// `retry.within_quota(body[])`: a retry creates one item per listed id whose item failed or
/// was canceled (a repeated id is retried again).
pub(super) async fn retry_demand(arg: &Selected, facts_src: &Facts) -> Result<Demand, Refusal> {
    let ids = item_ids(arg)?;
    let listed = ids.len();
    let items = facts_src.stored_items(ids.clone()).await?;
    let retried: u64 = ids
        .iter()
        .filter(|id| {
            items
                .iter()
                .any(|i| i.item_id == **id && matches!(i.status.as_str(), "failed" | "canceled"))
        })
        .count() as u64;
    Ok(Demand {
        items: retried,
        arithmetic: format!("{retried} of {listed} listed item(s) failed or canceled = {retried}"),
    })
}

/// `model.usable_by_name(S)`: a model named by its name (recall parameters): every installed
/// model of that name must be one the caller may use (InvokeAI resolves a name to the first
/// record of the name and a type it tries); a name no model has is refused like an unknown key.
pub(super) async fn usable_by_name(
    access: &Access,
    arg: &Selected,
    me: &Principal,
    facts_src: &Facts,
    facts: &mut Vec<String>,
    enforce: bool,
) -> Outcome {
    let Some(rules) = judging(access, me, facts) else {
        return Ok(());
    };
    let catalog = facts_src.models().await?;
    let c = caller(me);
    for v in arg.items() {
        let Value::String(name) = v else {
            return Err(Refusal::Unprocessable(
                "a model name must be a string".into(),
            ));
        };
        let named: Vec<&ModelRecord> = catalog.iter().filter(|r| r.name == *name).collect();
        if named.is_empty() {
            facts.push(format!("model name '{name}': no such model"));
            return Err(refuse(
                enforce,
                "model_unknown",
                Refusal::Forbidden(format!("Unknown model '{name}'")),
            ));
        }
        for r in named {
            let (allowed, by) = rules.decide(&c, &attrs(r));
            facts.push(format!(
                "model {} key {}: {} by {}",
                r.label(),
                r.key,
                if allowed { "allowed" } else { "REFUSED" },
                by.describe()
            ));
            if !allowed {
                return Err(refuse(
                    enforce,
                    "model_denied",
                    Refusal::Forbidden(format!(
                        "You may not use the model '{}' ({} {})",
                        r.name, r.base, r.kind
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a socket event may reach this caller as far as models go: nothing about a model she
/// may not use (a model load's record, an invocation's model fields) reaches her. Unrestricted
/// callers are not looked at; an unknown key, an unreadable catalogue: not delivered.
pub async fn event_allowed(
    payload: &serde_json::Map<String, Value>,
    me: &Principal,
    access: &Access,
    facts_src: &Facts,
) -> bool {
    let Some(rules) = access.models.as_ref() else {
        return true;
    };
    let c = caller(me);
    if !rules.restricts(&c) {
        return true;
    }
    let mut walk = crate::http::batch::Refs::default();
    for v in payload.values() {
        if walk.walk_value(v).is_err() {
            return false;
        }
    }
    let refs = walk.into_vec();
    if refs.is_empty() {
        return true;
    }
    let Ok(catalog) = facts_src.models().await else {
        return false;
    };
    refs.iter().all(|r| {
        catalog
            .get(&r.key)
            .is_some_and(|record| may_use(rules, &c, record))
    })
}
