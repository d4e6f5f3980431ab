//! Response filters: what the guard changes on the way back.
//!
//! Invariants:
//! - `X-Refreshed-Token` never leaves the guard carrying stale claims: it is re-minted with the
//!   caller's current `is_admin`, or dropped when it does not verify or names someone else.
//! - A filter that needs the body buffers it only for 2xx responses and only up to the configured
//!   limit; beyond that the body streams through unfiltered and the filter is skipped (logged).
//! - Session cookies are `HttpOnly; SameSite=Strict; Path=/` (and `Secure` behind TLS), and never
//!   outlive the token they carry.
//! - Where the upstream has no `token_epoch` (6.12/6.13), every token the guard hands out carries
//!   `iat`, and a password change that succeeded through the guard revokes the user's older
//!   tokens (ledger) and hands the caller a fresh one.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::response::Parts;
use serde_json::Value;

use crate::identity::{self, Principal, SESSION_COOKIE};
use crate::ledger::{Entry, Ledger};

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
        matches!(
            self,
            ResponseFilter::RevokeOnPasswordChange | ResponseFilter::RevokeOnPasswordReset
        )
    }

    /// Whether the filter reads the response body.
    pub fn needs_body(self) -> bool {
        matches!(
            self,
            ResponseFilter::LoginSession
                | ResponseFilter::RecordWorkflowOwner
                | ResponseFilter::RecordStylePresetOwner
                | ResponseFilter::RecordBulkDownload
        )
    }
}

/// What filters may use.
pub struct FilterContext<'a> {
    pub principal: Option<&'a Principal>,
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
/// was rewritten.
pub async fn apply_body(
    filters: &[ResponseFilter],
    parts: &mut Parts,
    body: &Bytes,
    ctx: &FilterContext<'_>,
) -> Option<Bytes> {
    let mut json: Option<Value> = serde_json::from_slice(body).ok();
    let mut replaced = None;
    for filter in filters {
        match filter {
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
                record(ctx, Entry::Workflow, json.as_ref(), "workflow_id").await
            }
            ResponseFilter::RecordStylePresetOwner => {
                record(ctx, Entry::StylePreset, json.as_ref(), "id").await
            }
            ResponseFilter::RecordBulkDownload => {
                let field = "bulk_download_item_name";
                record(ctx, Entry::BulkDownload, json.as_ref(), field).await
            }
            _ => {}
        }
    }
    if replaced.is_some() {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    replaced
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

/// Record `json[field] → caller` in the ledger (errors are logged: the response still goes out).
async fn record(ctx: &FilterContext<'_>, kind: Entry, json: Option<&Value>, field: &str) {
    let id = json.and_then(|j| j.get(field)).and_then(Value::as_str);
    if let (Some(id), Some(p)) = (id, ctx.principal) {
        if let Err(e) = ctx.ledger.record(kind, id, &p.user_id).await {
            tracing::error!(error = %e, ?kind, id, "could not record in the ledger");
        }
    }
}
