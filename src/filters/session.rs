//! Session filters: the guard's session cookie, re-minted `X-Refreshed-Token`, login token issue
//! times and revocation after password changes (6.12/6.13).

use http::header::{HeaderValue, SET_COOKIE};
use http::response::Parts;
use serde_json::{Map, Value};

use super::FilterContext;
use crate::identity::{self, SESSION_COOKIE};
use crate::rules::vocab::Session;

/// Whose password changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordChange {
    /// The caller's own (`PATCH /auth/me`, body `new_password`).
    Own,
    /// An admin reset another user's (`PATCH /auth/users/{user_id}`, body `password`).
    Reset,
}

/// InvokeAI's refreshed token header (a constant name: no parse per response).
const X_REFRESHED_TOKEN: http::HeaderName = http::HeaderName::from_static("x-refreshed-token");

/// A session filter on a 2xx answer's head (login reads the body: see [`login_session`]).
pub(super) async fn apply_headers(filter: Session, parts: &mut Parts, ctx: &FilterContext<'_>) {
    match filter {
        Session::Logout => {
            if let Some(c) = session_cookie(None, 0, ctx.tls) {
                parts.headers.append(SET_COOKIE, c);
            }
        }
        Session::RevokeOnPasswordChange => {
            revoke_after_password_change(PasswordChange::Own, parts, ctx).await
        }
        Session::RevokeOnPasswordReset => {
            revoke_after_password_change(PasswordChange::Reset, parts, ctx).await
        }
        Session::Refresh => refresh_session(parts, ctx),
        Session::Login => {}
    }
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
    let Some(raw) = parts.headers.remove(X_REFRESHED_TOKEN) else {
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
    parts.headers.insert(X_REFRESHED_TOKEN, value);
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

pub(super) fn stamp_login_token(json: &mut Value, secret: Option<&str>) {
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
    change: PasswordChange,
    parts: &mut Parts,
    ctx: &FilterContext<'_>,
) {
    let (Some(me), Some(secret)) = (ctx.principal, ctx.secret) else {
        return;
    };
    let field = match change {
        PasswordChange::Own => "new_password",
        PasswordChange::Reset => "password",
    };
    let changed = ctx
        .data
        .body
        .as_ref()
        .and_then(|b| b.get(field))
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if !changed {
        return;
    }
    let target = match change {
        PasswordChange::Own => me.user_id.clone(),
        PasswordChange::Reset => match ctx.data.path.get("user_id") {
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
        let mut claims = Map::clone(&me.claims);
        claims.insert("is_admin".into(), Value::Bool(me.is_admin));
        let fresh = identity::with_issue_time(&claims, secret);
        if let Ok(v) = HeaderValue::from_str(&fresh) {
            parts.headers.insert(X_REFRESHED_TOKEN, v);
        }
        if ctx.request_session.is_some() {
            if let Some(c) = session_cookie(Some(&fresh), me.remaining_secs(), ctx.tls) {
                parts.headers.append(SET_COOKIE, c);
            }
        }
    }
}

/// `refresh_session`: a Bearer request of a browser that already holds a session cookie gets the
/// cookie in step with its current token.
fn refresh_session(parts: &mut Parts, ctx: &FilterContext<'_>) {
    let Some(p) = ctx.principal else { return };
    if ctx.request_session.as_deref() == Some(p.token.as_str()) {
        return;
    }
    if let Some(c) = session_cookie(Some(&p.token), p.remaining_secs(), ctx.tls) {
        parts.headers.append(SET_COOKIE, c);
    }
}

/// `login_session`: the login answer's token becomes the session cookie (and, where the upstream
/// keeps no epochs, gets an issue time so a later revocation can tell it apart). Returns whether
/// the body changed.
pub(super) fn login_session(
    json: Option<&mut Value>,
    parts: &mut Parts,
    ctx: &FilterContext<'_>,
) -> bool {
    let Some(json) = json else { return false };
    let changed = !ctx
        .facts
        .schema()
        .has(crate::rules::vocab::Capability::RevokesTokens);
    if changed {
        stamp_login_token(json, ctx.secret);
    }
    let token = json.get("token").and_then(Value::as_str);
    let max_age = json
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(86_400);
    if let Some(c) = token.and_then(|t| session_cookie(Some(t), max_age, ctx.tls)) {
        parts.headers.append(SET_COOKIE, c);
    }
    changed
}
