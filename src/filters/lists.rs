//! 6.12 list rewrites (spec §4 R3, R5–R8): what an older upstream returns beyond main is
//! removed or recomputed for the caller; a shape the filter does not recognise is withheld.

use serde_json::Value;

use super::FilterContext;
use crate::decision::Refusal;
use crate::rules::vocab::List;

/// Rewrite a JSON list response in place (spec §4 R3, R5–R7); `Ok(true)` when it changed.
/// Called only for filters that are [`super::active`] for the request.
pub(super) async fn filter_list(
    list: List,
    json: &mut Value,
    ctx: &FilterContext<'_>,
) -> Result<bool, Refusal> {
    let me = ctx
        .principal
        .map(|p| p.user_id.as_str())
        .unwrap_or_default();
    match list {
        // R3: 6.12 lists every user's uncategorized image names under boards/none.
        List::OwnUncategorizedNames => {
            let own = ctx.facts.own_uncategorized_images(me).await?;
            let Value::Array(names) = json else {
                return Err(Refusal::BadUpstream("unexpected image_names shape".into()));
            };
            names.retain(|n| n.as_str().is_some_and(|n| own.contains(n)));
            Ok(true)
        }
        // R5/R6: 6.12 sanitizes other users' queue items weakly (or not at all).
        List::SanitizeQueueItems => {
            // Only shapes known to be queue items are rewritten; anything else is withheld.
            let known = |v: &Value| v.get("item_id").is_some_and(Value::is_i64);
            match json {
                Value::Array(items) if items.iter().all(known) => {
                    items.iter_mut().for_each(|i| sanitize_queue_item(i, me))
                }
                Value::Object(_) if known(json) => sanitize_queue_item(json, me),
                // `current`/`next` with nothing queued.
                Value::Null => {}
                _ => return Err(Refusal::BadUpstream("unexpected queue item shape".into())),
            }
            Ok(true)
        }
        // R8: 6.12 counts every user's items of a batch or destination.
        List::OwnQueueCounts => own_queue_counts(json, ctx, me).await,
        // R7: 6.12 shows the running item's ids to everyone.
        List::RedactQueueStatus => {
            let shape = || Refusal::BadUpstream("unexpected queue status shape".into());
            let queue = json
                .get_mut("queue")
                .and_then(Value::as_object_mut)
                .ok_or_else(shape)?;
            let item_id = match queue.get("item_id") {
                None | Some(Value::Null) => return Ok(false),
                Some(v) => v.as_i64().ok_or_else(shape)?,
            };
            let owner = ctx.facts.queue_item(item_id).await?;
            if owner.is_some_and(|o| o.owner == me) {
                return Ok(false);
            }
            for field in ["item_id", "batch_id", "session_id"] {
                queue.insert(field.into(), Value::Null);
            }
            Ok(true)
        }
    }
}

/// R8: the queue counts of a batch or destination, of the caller's own items only.
async fn own_queue_counts(
    json: &mut Value,
    ctx: &FilterContext<'_>,
    me: &str,
) -> Result<bool, Refusal> {
    let Some(counts) = json.as_object_mut() else {
        return Err(Refusal::BadUpstream("unexpected queue counts shape".into()));
    };
    let scope = match (
        ctx.data.path.get("batch_id"),
        counts.get("destination").and_then(Value::as_str),
    ) {
        (Some(batch), _) => crate::facts::CountScope::Batch(batch.clone()),
        (None, Some(dest)) => crate::facts::CountScope::Destination(dest.to_owned()),
        (None, None) => return Err(Refusal::BadUpstream("queue counts without a scope".into())),
    };
    let queue_id = ctx.data.path.get("queue_id").cloned().unwrap_or_default();
    let own = ctx.facts.own_queue_counts(me, &queue_id, scope).await?;
    let mut total = 0;
    for status in ["pending", "in_progress", "completed", "failed", "canceled"] {
        let n = own.get(status).copied().unwrap_or(0);
        total += n;
        counts.insert(status.into(), Value::from(n));
    }
    counts.insert("total".into(), Value::from(total));
    if total == 0 && ctx.data.path.contains_key("batch_id") {
        // R8: origin/destination come from the caller's own rows (a batch has one owner).
        for field in ["origin", "destination"] {
            if counts.contains_key(field) {
                counts.insert(field.into(), Value::Null);
            }
        }
    }
    Ok(true)
}

/// main's `sanitize_queue_item_for_user` redaction, applied to an item the caller does not own.
fn sanitize_queue_item(item: &mut Value, me: &str) {
    let Some(map) = item.as_object_mut() else {
        return;
    };
    if map.get("user_id").and_then(Value::as_str) == Some(me) {
        return;
    }
    let redacted = || Value::String("redacted".into());
    for (field, value) in [
        ("user_id", redacted()),
        ("batch_id", redacted()),
        ("session_id", redacted()),
        ("priority", Value::from(0)),
    ] {
        if map.contains_key(field) {
            map.insert(field.into(), value);
        }
    }
    for field in [
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
    ] {
        if map.contains_key(field) {
            map.insert(field.into(), Value::Null);
        }
    }
    if map.contains_key("session") {
        map.insert(
            "session".into(),
            serde_json::json!({"id": "redacted", "graph": {"id": "redacted", "nodes": {}, "edges": []}}),
        );
    }
}
