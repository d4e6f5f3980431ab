//! Owner records: the ledger entry a 2xx create needs (where InvokeAI keeps no owner).

use serde_json::Value;

use super::FilterContext;
use crate::decision::Refusal;
use crate::rules::vocab::Record;

/// Record `json[field] → caller` for the intent written before the create was forwarded. A
/// create that went through but cannot be recorded is answered 503 (its entity stays an orphan:
/// admins only), never passed on as if it were owned.
pub(super) async fn record(
    ctx: &FilterContext<'_>,
    filter: Record,
    json: Option<&Value>,
) -> Result<(), Refusal> {
    let (kind, field) = (filter.kind(), filter.id_field());
    let (Some((intended, intent)), Some(p)) = (ctx.intent, ctx.principal) else {
        // This upstream keeps the owner itself: nothing to record.
        return Ok(());
    };
    if intended != kind {
        return Ok(());
    }
    let Some(id) = json.and_then(|j| j.get(field)).and_then(Value::as_str) else {
        return Err(Refusal::BadUpstream(format!(
            "the create's answer has no '{field}': its owner cannot be recorded"
        )));
    };
    ctx.ledger
        .complete(intent, kind, id, &p.user_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, ?kind, id, "created upstream, but the owner could not be recorded");
            Refusal::from(e)
        })
}
