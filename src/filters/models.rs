//! Model lists per caller (the groups file's `[models]`): a caller never sees a model record, a
//! related-model key or an installed starter model she may not use.
//!
//! Invariants:
//! - A record is judged by its own key, name, base and type as InvokeAI answered them (the
//!   database record); a key alone (relationships) is judged by the catalogue, and a key the
//!   catalogue does not know is dropped.
//! - Nothing changes without a `[models]` section, for admins the section exempts, or for a
//!   caller no rule restricts.
//! - A shape the filter does not recognise is withheld (502), never passed on unfiltered; a single
//!   record she may not use becomes InvokeAI's own 404 for a record that does not exist.

use http::response::Parts;
use http::StatusCode;
use serde_json::{json, Value};

use super::FilterContext;
use crate::decision::Refusal;
use crate::policy::models::{caller, may_use};
use crate::rules::access::{Caller, ModelRules};

fn shape(what: &str) -> Refusal {
    Refusal::BadUpstream(format!("unexpected {what} shape"))
}

/// The rules that restrict this caller, if any.
fn restricting<'a>(ctx: &'a FilterContext<'_>) -> Option<(&'a ModelRules, Caller<'a>)> {
    let rules = ctx.access?.models.as_ref()?;
    let c = caller(ctx.principal?);
    rules.restricts(&c).then_some((rules, c))
}

/// Whether the model filters have work for this caller (`filters::active`): the groups file's
/// `[models]` restricts her.
pub(super) fn restricts(
    access: Option<&crate::rules::access::Access>,
    principal: Option<&crate::identity::Principal>,
) -> bool {
    match (access.and_then(|a| a.models.as_ref()), principal) {
        (Some(rules), Some(p)) => rules.restricts(&caller(p)),
        _ => false,
    }
}

/// A record as InvokeAI answers it, judged by its own fields.
fn record_usable(rules: &ModelRules, c: &Caller<'_>, v: &Value) -> Result<bool, Refusal> {
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    match (field("key"), field("name"), field("base"), field("type")) {
        (Some(key), Some(name), Some(base), Some(kind)) => Ok(rules
            .decide(
                c,
                &crate::rules::access::ModelAttrs {
                    key,
                    name,
                    base,
                    kind,
                },
            )
            .0),
        _ => Err(shape("model record")),
    }
}

/// `usable_models`: model record lists and single records; `Ok(true)` when the body changed.
pub(super) fn usable_models(
    json: &mut Value,
    parts: &mut Parts,
    ctx: &FilterContext<'_>,
) -> Result<bool, Refusal> {
    let Some((rules, c)) = restricting(ctx) else {
        return Ok(false);
    };
    match json {
        // GET /api/v2/models/ and /missing: {"models": [...]}.
        Value::Object(map) if map.contains_key("models") => {
            let Some(Value::Array(models)) = map.get_mut("models") else {
                return Err(shape("model list"));
            };
            let mut kept = Vec::with_capacity(models.len());
            for m in models.drain(..) {
                if record_usable(rules, &c, &m)? {
                    kept.push(m);
                }
            }
            *models = kept;
            Ok(true)
        }
        // get_by_attrs / get_by_hash: one record, or InvokeAI's 404 as if it did not exist
        // (no existence oracle for a model she may not use).
        Value::Object(_) => {
            if record_usable(rules, &c, json)? {
                return Ok(false);
            }
            let detail = if ctx.data.query.single("hash").ok().flatten().is_some() {
                "No model found with this hash"
            } else {
                "No model found with these attributes"
            };
            parts.status = StatusCode::NOT_FOUND;
            *json = json!({ "detail": detail });
            Ok(true)
        }
        _ => Err(shape("model answer")),
    }
}

/// `usable_model_keys`: related model keys, only those of models she may use.
pub(super) async fn usable_model_keys(
    json: &mut Value,
    ctx: &FilterContext<'_>,
) -> Result<bool, Refusal> {
    let Some((rules, c)) = restricting(ctx) else {
        return Ok(false);
    };
    let Value::Array(keys) = json else {
        return Err(shape("model key list"));
    };
    let catalog = ctx.facts.models().await?;
    keys.retain(|k| {
        k.as_str()
            .and_then(|k| catalog.get(k))
            .is_some_and(|r| may_use(rules, &c, r))
    });
    Ok(true)
}

/// `usable_starter_models`: an entry that names an installed model (`is_installed`) stays only
/// when an installed model it matches (InvokeAI's own matching: source, or name/previous names
/// with base and type) is one she may use.
pub(super) async fn usable_starter_models(
    json: &mut Value,
    ctx: &FilterContext<'_>,
) -> Result<bool, Refusal> {
    let Some((rules, c)) = restricting(ctx) else {
        return Ok(false);
    };
    let catalog = ctx.facts.models().await?;
    let keep = |entry: &Value| -> bool {
        if entry.get("is_installed").and_then(Value::as_bool) != Some(true) {
            return true;
        }
        let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
        let previous: Vec<&str> = entry
            .get("previous_names")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        catalog.iter().any(|r| {
            let matches = (!r.source.is_empty() && r.source == field("source"))
                || ((r.name == field("name") || previous.contains(&r.name.as_str()))
                    && r.base == field("base")
                    && r.kind == field("type"));
            matches && may_use(rules, &c, r)
        })
    };
    let Some(Value::Array(models)) = json.get_mut("starter_models") else {
        return Err(shape("starter model list"));
    };
    models.retain(&keep);
    if let Some(Value::Object(bundles)) = json.get_mut("starter_bundles") {
        for bundle in bundles.values_mut() {
            if let Some(Value::Array(models)) = bundle.get_mut("models") {
                models.retain(&keep);
            }
        }
    }
    Ok(true)
}
