//! Response filters: what the guard changes on the way back.
//!
//! Invariants:
//! - `X-Refreshed-Token` never leaves the guard carrying stale claims: it is re-minted with the
//!   caller's current `is_admin`, or dropped when it does not verify or names someone else.
//! - A filter that needs the body buffers it only for 2xx responses and only up to the configured
//!   limit, decoded if the upstream compressed it; a body over the limit, undecodable, of a shape
//!   the filter does not recognise, or whose record cannot be written is replaced by an error
//!   (502/503): it is never passed on unfiltered.
//! - An owner record (ledger) is written for every 2xx create that needs one, or the client gets
//!   503 and the entity stays an orphan (admins only; see `ledger`).
//! - Session cookies are `HttpOnly; SameSite=Strict; Path=/` (and `Secure` behind TLS), and never
//!   outlive the token they carry.
//! - Where the upstream has no `token_epoch` (6.12/6.13), every token the guard hands out carries
//!   `iat`, and a password change that succeeded through the guard revokes the user's older
//!   tokens (ledger) and hands the caller a fresh one.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::response::Parts;
use serde_json::Value;

use crate::decision::DenyReason;
use crate::facts::Facts;
use crate::identity::{self, Principal, SESSION_COOKIE};
use crate::ledger::{Entry, Intent, Ledger};

/// A response filter a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFilter {
    PrivateMedia,
    LoginSession,
    RefreshSession,
    LogoutSession,
    RecordWorkflowOwner,
    RecordStylePresetOwner,
    RecordBulkDownload,
    RevokeOnPasswordChange,
    RevokeOnPasswordReset,
    OwnUncategorizedNames,
    SanitizeQueueItems,
    RedactQueueStatus,
    OwnQueueCounts,
}

const FILTERS: &[(&str, ResponseFilter)] = &[
    ("private_media", ResponseFilter::PrivateMedia),
    ("login_session", ResponseFilter::LoginSession),
    ("refresh_session", ResponseFilter::RefreshSession),
    ("logout_session", ResponseFilter::LogoutSession),
    ("record_workflow_owner", ResponseFilter::RecordWorkflowOwner),
    (
        "record_style_preset_owner",
        ResponseFilter::RecordStylePresetOwner,
    ),
    ("record_bulk_download", ResponseFilter::RecordBulkDownload),
    (
        "revoke_on_password_change",
        ResponseFilter::RevokeOnPasswordChange,
    ),
    (
        "revoke_on_password_reset",
        ResponseFilter::RevokeOnPasswordReset,
    ),
    (
        "own_uncategorized_names",
        ResponseFilter::OwnUncategorizedNames,
    ),
    ("sanitize_queue_items", ResponseFilter::SanitizeQueueItems),
    ("redact_queue_status", ResponseFilter::RedactQueueStatus),
    ("own_queue_counts", ResponseFilter::OwnQueueCounts),
];

impl ResponseFilter {
    /// Look a filter up by its routes.toml name.
    pub fn from_name(name: &str) -> Option<Self> {
        FILTERS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The routes.toml name.
    pub fn name(self) -> &'static str {
        FILTERS
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("registered")
    }

    /// Whether the filter reads the JSON request body (the pipeline then buffers it).
    pub fn needs_request_body(self) -> bool {
        !self.request_fields().is_empty()
    }

    /// The top-level request body fields the filter reads.
    pub fn request_fields(self) -> &'static [&'static str] {
        match self {
            ResponseFilter::RevokeOnPasswordChange => &["new_password"],
            ResponseFilter::RevokeOnPasswordReset => &["password"],
            _ => &[],
        }
    }

    /// The ledger entry the filter records from a 2xx answer (an owner InvokeAI does not keep).
    pub fn records(self) -> Option<Entry> {
        match self {
            ResponseFilter::RecordWorkflowOwner => Some(Entry::Workflow),
            ResponseFilter::RecordStylePresetOwner => Some(Entry::StylePreset),
            ResponseFilter::RecordBulkDownload => Some(Entry::BulkDownload),
            _ => None,
        }
    }

    /// Whether the filter reads the response body.
    pub fn needs_body(self) -> bool {
        matches!(
            self,
            ResponseFilter::LoginSession
                | ResponseFilter::RecordWorkflowOwner
                | ResponseFilter::RecordStylePresetOwner
                | ResponseFilter::RecordBulkDownload
                | ResponseFilter::OwnUncategorizedNames
                | ResponseFilter::SanitizeQueueItems
                | ResponseFilter::RedactQueueStatus
                | ResponseFilter::OwnQueueCounts
        )
    }
}

/// What filters may use.
pub struct FilterContext<'a> {
    pub principal: Option<&'a Principal>,
    pub facts: &'a Facts,
    pub secret: Option<&'a str>,
    pub ledger: &'a Ledger,
    pub tls: bool,
    /// The session cookie the request carried, if any.
    pub request_session: Option<String>,
    /// Whether the upstream revokes tokens itself (`token_epoch`, 6.14/main).
    pub upstream_revokes: bool,
    /// The JSON request body, when a check or filter read it.
    pub request_body: Option<&'a Value>,
    /// Decoded path parameters of the matched rule.
    pub path: &'a std::collections::HashMap<String, String>,
    /// The ledger intent written before a create was forwarded (owner to record).
    pub intent: Option<(Entry, Intent)>,
}

/// A `Set-Cookie` value for the session cookie (`token = None` deletes it).
pub fn session_cookie(token: Option<&str>, max_age: u64, tls: bool) -> Option<HeaderValue> {
    let secure = if tls { "; Secure" } else { "" };
    let value = match token {
        Some(t) => format!(
            "{SESSION_COOKIE}={t}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ),
        None => format!("{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{secure}"),
    };
    HeaderValue::from_str(&value).ok()
}

/// Re-mint or drop `X-Refreshed-Token`; keep the session cookie in step with it.
pub fn refreshed_token(parts: &mut Parts, ctx: &FilterContext<'_>) {
    let Some(raw) = parts.headers.remove("x-refreshed-token") else {
        return;
    };
    let (Some(principal), Some(secret)) = (ctx.principal, ctx.secret) else {
        return;
    };
    let Some(token) = raw
        .to_str()
        .ok()
        .and_then(|t| identity::remint_refreshed(t, secret, principal))
    else {
        tracing::warn!(user_id = %principal.user_id, "dropped an X-Refreshed-Token that did not verify");
        return;
    };
    let Ok(value) = HeaderValue::from_str(&token) else {
        return;
    };
    parts.headers.insert("x-refreshed-token", value);
    if ctx.request_session.is_some() {
        let max_age = identity::verify(&token, secret)
            .map(|(_, exp)| exp)
            .unwrap_or(0);
        let remaining = max_age.saturating_sub(now_secs());
        if let Some(cookie) = session_cookie(Some(&token), remaining, ctx.tls) {
            parts.headers.append(SET_COOKIE, cookie);
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Apply header-only filters.
pub async fn apply_headers(filters: &[ResponseFilter], parts: &mut Parts, ctx: &FilterContext<'_>) {
    for filter in filters {
        match filter {
            // Private pixels must not land in shared caches (6.12/6.13 send max-age=31536000).
            ResponseFilter::PrivateMedia => {
                parts
                    .headers
                    .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            }
            ResponseFilter::LogoutSession if parts.status.is_success() => {
                if let Some(c) = session_cookie(None, 0, ctx.tls) {
                    parts.headers.append(SET_COOKIE, c);
                }
            }
            ResponseFilter::RevokeOnPasswordChange | ResponseFilter::RevokeOnPasswordReset
                if parts.status.is_success() && !ctx.upstream_revokes =>
            {
                revoke_after_password_change(*filter, parts, ctx).await;
            }
            ResponseFilter::RefreshSession if parts.status.is_success() => {
                if let Some(p) = ctx.principal {
                    if ctx.request_session.as_deref() != Some(p.token.as_str()) {
                        if let Some(c) = session_cookie(Some(&p.token), p.remaining_secs(), ctx.tls)
                        {
                            parts.headers.append(SET_COOKIE, c);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Apply body-reading filters to a buffered 2xx body; returns a replacement body when one
/// was rewritten. An error means the body could not be made safe: the caller answers it
/// instead (fail closed), never the unfiltered body.
pub async fn apply_body(
    filters: &[ResponseFilter],
    parts: &mut Parts,
    body: &Bytes,
    ctx: &FilterContext<'_>,
) -> Result<Option<Bytes>, DenyReason> {
    let mut json: Option<Value> = serde_json::from_slice(body).ok();
    if json.is_none() && filters.iter().any(|f| f.records().is_some()) && ctx.intent.is_some() {
        return Err(DenyReason::BadUpstream(
            "a create's answer is not JSON: its owner cannot be recorded".into(),
        ));
    }
    let mut replaced = None;
    for filter in filters {
        match filter {
            ResponseFilter::OwnUncategorizedNames
            | ResponseFilter::SanitizeQueueItems
            | ResponseFilter::RedactQueueStatus
            | ResponseFilter::OwnQueueCounts => {
                if let Some(j) = json.as_mut() {
                    if filter_list(*filter, j, ctx).await? {
                        replaced = serde_json::to_vec(j).ok().map(Bytes::from);
                    }
                } else if needs_filtering(*filter, ctx) {
                    return Err(DenyReason::BadUpstream("unreadable upstream list".into()));
                }
            }
            ResponseFilter::LoginSession => {
                if !ctx.upstream_revokes {
                    // Give the login token an issue time so a later revocation can tell it apart.
                    if let Some(j) = json.as_mut() {
                        stamp_login_token(j, ctx.secret);
                        replaced = serde_json::to_vec(j).ok().map(Bytes::from);
                    }
                }
                let token = json
                    .as_ref()
                    .and_then(|j| j.get("token"))
                    .and_then(Value::as_str);
                let max_age = json
                    .as_ref()
                    .and_then(|j| j.get("expires_in"))
                    .and_then(Value::as_u64)
                    .unwrap_or(86_400);
                if let Some(c) = token.and_then(|t| session_cookie(Some(t), max_age, ctx.tls)) {
                    parts.headers.append(SET_COOKIE, c);
                }
            }
            ResponseFilter::RecordWorkflowOwner => {
                record(ctx, Entry::Workflow, json.as_ref(), "workflow_id").await?
            }
            ResponseFilter::RecordStylePresetOwner => {
                record(ctx, Entry::StylePreset, json.as_ref(), "id").await?
            }
            ResponseFilter::RecordBulkDownload => {
                let field = "bulk_download_item_name";
                record(ctx, Entry::BulkDownload, json.as_ref(), field).await?
            }
            _ => {}
        }
    }
    if replaced.is_some() {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    Ok(replaced)
}

/// Whether a list filter applies: the caller is no admin and the upstream does not do it itself.
fn needs_filtering(filter: ResponseFilter, ctx: &FilterContext<'_>) -> bool {
    let capability = match filter {
        ResponseFilter::OwnUncategorizedNames => "scopes_uncategorized_names",
        _ => "sanitizes_queue",
    };
    let is_admin = ctx.principal.is_none_or(|p| p.is_admin);
    let applies = match filter {
        ResponseFilter::OwnUncategorizedNames => {
            ctx.path.get("board_id").map(String::as_str) == Some("none")
        }
        _ => true,
    };
    applies && !is_admin && ctx.facts.schema().capability(capability) != Some(true)
}

/// Rewrite a JSON list response in place (spec §4 R3, R5–R7); `Ok(true)` when it changed.
async fn filter_list(
    filter: ResponseFilter,
    json: &mut Value,
    ctx: &FilterContext<'_>,
) -> Result<bool, DenyReason> {
    if !needs_filtering(filter, ctx) {
        return Ok(false);
    }
    let me = ctx
        .principal
        .map(|p| p.user_id.as_str())
        .unwrap_or_default();
    let unavailable = |e: crate::facts::FactsError| DenyReason::Unavailable(e.to_string());
    match filter {
        // R3: 6.12 lists every user's uncategorized image names under boards/none.
        ResponseFilter::OwnUncategorizedNames => {
            let own = ctx
                .facts
                .own_uncategorized_images(me)
                .await
                .map_err(unavailable)?;
            let Value::Array(names) = json else {
                return Err(DenyReason::BadUpstream(
                    "unexpected image_names shape".into(),
                ));
            };
            names.retain(|n| n.as_str().is_some_and(|n| own.contains(n)));
            Ok(true)
        }
        // R5/R6: 6.12 sanitizes other users' queue items weakly (or not at all).
        ResponseFilter::SanitizeQueueItems => {
            // Only shapes known to be queue items are rewritten; anything else is withheld.
            let known = |v: &Value| v.get("item_id").is_some_and(Value::is_i64);
            match json {
                Value::Array(items) if items.iter().all(known) => {
                    items.iter_mut().for_each(|i| sanitize_queue_item(i, me))
                }
                Value::Object(_) if known(json) => sanitize_queue_item(json, me),
                // `current`/`next` with nothing queued.
                Value::Null => {}
                _ => {
                    return Err(DenyReason::BadUpstream(
                        "unexpected queue item shape".into(),
                    ))
                }
            }
            Ok(true)
        }
        // R8: 6.12 counts every user's items of a batch or destination.
        ResponseFilter::OwnQueueCounts => {
            let Some(counts) = json.as_object_mut() else {
                return Err(DenyReason::BadUpstream(
                    "unexpected queue counts shape".into(),
                ));
            };
            let scope = match (
                ctx.path.get("batch_id"),
                counts.get("destination").and_then(Value::as_str),
            ) {
                (Some(batch), _) => crate::facts::CountScope::Batch(batch.clone()),
                (None, Some(dest)) => crate::facts::CountScope::Destination(dest.to_owned()),
                (None, None) => {
                    return Err(DenyReason::BadUpstream(
                        "queue counts without a scope".into(),
                    ))
                }
            };
            let queue_id = ctx.path.get("queue_id").cloned().unwrap_or_default();
            let own = ctx
                .facts
                .own_queue_counts(me, &queue_id, scope)
                .await
                .map_err(unavailable)?;
            let mut total = 0;
            for status in ["pending", "in_progress", "completed", "failed", "canceled"] {
                let n = own.get(status).copied().unwrap_or(0);
                total += n;
                counts.insert(status.into(), Value::from(n));
            }
            counts.insert("total".into(), Value::from(total));
            if total == 0 && ctx.path.contains_key("batch_id") {
                // R8: origin/destination come from the caller's own rows (a batch has one owner).
                for field in ["origin", "destination"] {
                    if counts.contains_key(field) {
                        counts.insert(field.into(), Value::Null);
                    }
                }
            }
            Ok(true)
        }
        // R7: 6.12 shows the running item's ids to everyone.
        _ => {
            let shape = || DenyReason::BadUpstream("unexpected queue status shape".into());
            let queue = json
                .get_mut("queue")
                .and_then(Value::as_object_mut)
                .ok_or_else(shape)?;
            let item_id = match queue.get("item_id") {
                None | Some(Value::Null) => return Ok(false),
                Some(v) => v.as_i64().ok_or_else(shape)?,
            };
            let owner = ctx.facts.queue_item(item_id).await.map_err(unavailable)?;
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

fn stamp_login_token(json: &mut Value, secret: Option<&str>) {
    let (Some(secret), Some(token)) = (secret, json.get("token").and_then(Value::as_str)) else {
        return;
    };
    if let Ok((claims, _)) = identity::verify(token, secret) {
        json["token"] = Value::String(identity::with_issue_time(&claims, secret));
    }
}

/// A password changed through the guard on an upstream without epochs: revoke older tokens
/// (hole 7) and hand the caller a fresh token when it was their own password.
async fn revoke_after_password_change(
    filter: ResponseFilter,
    parts: &mut Parts,
    ctx: &FilterContext<'_>,
) {
    let (Some(me), Some(secret)) = (ctx.principal, ctx.secret) else {
        return;
    };
    let field = match filter {
        ResponseFilter::RevokeOnPasswordChange => "new_password",
        _ => "password",
    };
    let changed = ctx
        .request_body
        .and_then(|b| b.get(field))
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if !changed {
        return;
    }
    let target = match filter {
        ResponseFilter::RevokeOnPasswordChange => me.user_id.clone(),
        _ => match ctx.path.get("user_id") {
            Some(id) => id.clone(),
            None => return,
        },
    };
    let now = now_secs();
    if let Err(e) = ctx.ledger.revoke(&target, now).await {
        tracing::error!(error = %e, user_id = %target, "could not record a revocation");
        return;
    }
    tracing::info!(user_id = %target, "password changed: older tokens revoked");
    if target == me.user_id {
        let mut claims = me.claims.clone();
        claims.insert("is_admin".into(), Value::Bool(me.is_admin));
        let fresh = identity::with_issue_time(&claims, secret);
        if let Ok(v) = HeaderValue::from_str(&fresh) {
            parts.headers.insert("x-refreshed-token", v);
        }
        if ctx.request_session.is_some() {
            if let Some(c) = session_cookie(Some(&fresh), me.remaining_secs(), ctx.tls) {
                parts.headers.append(SET_COOKIE, c);
            }
        }
    }
}

/// Record `json[field] → caller` for the intent written before the create was forwarded. A
/// create that went through but cannot be recorded is answered 503 (its entity stays an orphan:
/// admins only), never passed on as if it were owned.
async fn record(
    ctx: &FilterContext<'_>,
    kind: Entry,
    json: Option<&Value>,
    field: &str,
) -> Result<(), DenyReason> {
    let (Some((intended, intent)), Some(p)) = (ctx.intent, ctx.principal) else {
        // This upstream keeps the owner itself: nothing to record.
        return Ok(());
    };
    if intended != kind {
        return Ok(());
    }
    let Some(id) = json.and_then(|j| j.get(field)).and_then(Value::as_str) else {
        return Err(DenyReason::BadUpstream(format!(
            "the create's answer has no '{field}': its owner cannot be recorded"
        )));
    };
    ctx.ledger
        .complete(intent, kind, id, &p.user_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, ?kind, id, "created upstream, but the owner could not be recorded");
            DenyReason::Unavailable(format!("ledger: {e}"))
        })
}
