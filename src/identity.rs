//! Who is calling: InvokeAI's own JWT, checked against the user's current row.
//!
//! Invariants:
//! - Only HS256 is accepted (`alg: none`, HS384/HS512 and RS/ES algorithm confusion are refused);
//!   `exp` is required, must be a number, and `now >= exp` is expired (no leeway, as InvokeAI).
//! - The key is `app_settings.jwt_secret` as UTF-8 bytes, read from the database.
//! - A verified token is not enough: the user row must exist, be active, not be `system`, and
//!   match `token_epoch` where the column exists. `is_admin` comes from the row, never the claim.
//! - The token forwarded upstream carries the row's `is_admin` (re-minted when the claim differs),
//!   so InvokeAI versions that trust the claim (6.12/6.13) see the truth.
//! - Where the schema has no `token_epoch` (6.12/6.13), a password change seen by the guard
//!   revokes the user's older tokens (ledger): a token's issue time is its `iat` (the guard adds
//!   one to every token it hands out there), or, lacking one, the earliest time it could have
//!   been issued (`exp` minus the longest lifetime InvokeAI mints).
//! - Tokens and secrets are never logged.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::facts::ledger::Ledger;
use crate::facts::{Facts, FactsError};

/// InvokeAI's longest token lifetime (remember-me: 7 days).
const LONGEST_LIFETIME: u64 = 7 * 24 * 3600;
const SHORT_LIFETIME: u64 = 24 * 3600;

/// The cookie InvokeAI main sets for media routes.
pub const MEDIA_COOKIE: &str = "invokeai_media_token";
/// The guard's own session cookie (media routes and the Socket.IO handshake).
pub const SESSION_COOKIE: &str = "invoke_guard_session";

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    /// From the user row, never from the token (group membership may name emails).
    pub email: String,
    /// From the user row, never from the token.
    pub is_admin: bool,
    /// The presented token (forwarded as is when its claims are current).
    pub token: String,
    /// The presented token's claims.
    pub claims: Map<String, Value>,
    /// Seconds since the epoch at which the token expires.
    pub exp: u64,
    /// Where the token came from.
    pub via: TokenSource,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, Error)]
pub enum IdentityError {
    #[error("Missing authentication credentials")]
    Missing,
    #[error("Invalid or expired authentication token")]
    Invalid,
    #[error("User account is inactive or does not exist")]
    Inactive,
    #[error("ambiguous credentials (a repeated Authorization header or session cookie)")]
    Ambiguous,
    #[error(transparent)]
    Facts(#[from] FactsError),
}

/// The token a request presents, if any.
pub fn presented_token(
    headers: &HeaderMap,
    accept_cookie: bool,
) -> Result<Option<(String, TokenSource)>, IdentityError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        // Duplicate credentials: the proxy and the upstream could read different ones.
        if values.next().is_some() {
            return Err(IdentityError::Ambiguous);
        }
        let value = value.to_str().map_err(|_| IdentityError::Invalid)?;
        let (scheme, token) = value.split_once(' ').ok_or(IdentityError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(IdentityError::Invalid);
        }
        return Ok(Some((token.trim().to_owned(), TokenSource::Bearer)));
    }
    if accept_cookie {
        for name in [MEDIA_COOKIE, SESSION_COOKIE] {
            let token =
                crate::http::cookies::get(headers, name).map_err(|_| IdentityError::Ambiguous)?;
            if let Some(token) = token {
                return Ok(Some((token, TokenSource::Cookie)));
            }
        }
    }
    Ok(None)
}

/// The value of a cookie as Starlette reads it (an ambiguous one counts as absent here; the
/// identity step refuses it).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::http::cookies::get(headers, name).ok().flatten()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static VALIDATION: LazyLock<Validation> = LazyLock::new(|| {
    // Algorithm pinning: HS256 only (alg:none and RS/HS confusion, jsonwebtoken #41).
    let mut v = Validation::new(Algorithm::HS256);
    // Type-confused `exp` must not count as absent (CVE-2026-25537): require it explicitly.
    v.set_required_spec_claims(&["exp"]);
    v.leeway = 0;
    v.validate_aud = false;
    v
});

/// HMAC keys derived from one secret, built once per secret (not per request).
struct Keys {
    secret: Box<str>,
    decoding: DecodingKey,
    encoding: EncodingKey,
}

static KEYS: ArcSwapOption<Keys> = ArcSwapOption::const_empty();

fn keys_for(secret: &str) -> Arc<Keys> {
    if let Some(k) = KEYS.load_full().filter(|k| &*k.secret == secret) {
        return k;
    }
    let keys = Arc::new(Keys {
        secret: secret.into(),
        decoding: DecodingKey::from_secret(secret.as_bytes()),
        encoding: EncodingKey::from_secret(secret.as_bytes()),
    });
    KEYS.store(Some(keys.clone()));
    keys
}

/// Verify a token's signature and expiry; returns its claims.
pub fn verify(token: &str, secret: &str) -> Result<(Map<String, Value>, u64), IdentityError> {
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &keys_for(secret).decoding, &VALIDATION)
            .map_err(|_| IdentityError::Invalid)?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(IdentityError::Invalid)?;
    // InvokeAI treats `now >= exp` as expired.
    if now() >= exp {
        return Err(IdentityError::Invalid);
    }
    // The claims InvokeAI requires, with the right types.
    let typed = claims.get("user_id").is_some_and(Value::is_string)
        && claims.get("email").is_some_and(Value::is_string)
        && claims.get("is_admin").is_some_and(Value::is_boolean);
    if !typed {
        return Err(IdentityError::Invalid);
    }
    Ok((claims, exp))
}

/// Sign claims with InvokeAI's secret (HS256, `{"alg":"HS256","typ":"JWT"}`).
pub fn sign(claims: &Map<String, Value>, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &keys_for(secret).encoding,
    )
    .expect("HS256 signing of a JSON map cannot fail")
}

/// Identify the caller of a request.
pub async fn identify(
    headers: &HeaderMap,
    accept_cookie: bool,
    facts: &Facts,
    ledger: &Ledger,
) -> Result<Principal, IdentityError> {
    let secret = facts.jwt_secret().await?;
    identify_with(headers, accept_cookie, &secret, facts, ledger).await
}

/// Identify the caller with an already loaded secret (the pipeline reads it once per request).
pub async fn identify_with(
    headers: &HeaderMap,
    accept_cookie: bool,
    secret: &str,
    facts: &Facts,
    ledger: &Ledger,
) -> Result<Principal, IdentityError> {
    let (token, via) = presented_token(headers, accept_cookie)?.ok_or(IdentityError::Missing)?;
    let (claims, exp) = verify(&token, secret)?;
    let user_id = claims["user_id"].as_str().unwrap_or_default().to_owned();
    // The `system` account owns legacy content and must never act as a caller.
    if user_id == "system" || user_id.is_empty() {
        return Err(IdentityError::Invalid);
    }
    let row = facts.user(&user_id).await?.ok_or(IdentityError::Inactive)?;
    if !row.is_active {
        return Err(IdentityError::Inactive);
    }
    // Revocation: a password change bumps the row's epoch and kills older tokens (main).
    if facts.schema().has_token_epoch {
        let claimed = claims.get("token_epoch").map_or(Some(0), Value::as_i64);
        if claimed != Some(row.token_epoch) {
            return Err(IdentityError::Invalid);
        }
    } else if let Some(revoked_before) = ledger.revoked_before(&user_id) {
        // No epochs upstream (6.12/6.13, hole 7): the guard's own revocation record.
        if issued_at(&claims, exp) < revoked_before {
            return Err(IdentityError::Invalid);
        }
    }
    Ok(Principal {
        user_id,
        email: row.email,
        is_admin: row.is_admin,
        token,
        claims,
        exp,
        via,
    })
}

/// When a token was issued: its `iat`, else the earliest possible time given its lifetime.
pub fn issued_at(claims: &Map<String, Value>, exp: u64) -> u64 {
    if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
        return iat;
    }
    let lifetime = match claims.get("remember_me").and_then(Value::as_bool) {
        Some(false) => SHORT_LIFETIME,
        _ => LONGEST_LIFETIME,
    };
    exp.saturating_sub(lifetime)
}

/// The same claims with `iat` set to now, signed (tokens the guard hands out on 6.12/6.13 carry
/// their issue time so a later revocation can tell them apart; InvokeAI ignores the claim).
pub fn with_issue_time(claims: &Map<String, Value>, secret: &str) -> String {
    let mut claims = claims.clone();
    claims.insert("iat".into(), Value::from(now()));
    sign(&claims, secret)
}

impl Principal {
    /// The token to send upstream: the presented one when its `is_admin` claim is current,
    /// otherwise the same claims and expiry re-signed with the row's `is_admin`.
    pub fn upstream_token(&self, secret: &str) -> String {
        if self.claims.get("is_admin").and_then(Value::as_bool) == Some(self.is_admin) {
            return self.token.clone();
        }
        let mut claims = self.claims.clone();
        claims.insert("is_admin".into(), Value::Bool(self.is_admin));
        sign(&claims, secret)
    }

    /// Seconds until the token expires.
    pub fn remaining_secs(&self) -> u64 {
        self.exp.saturating_sub(now())
    }
}

/// Re-mint a token InvokeAI issued in a response (`X-Refreshed-Token`) with the caller's current
/// `is_admin`; `None` when it does not verify or names someone else.
pub fn remint_refreshed(token: &str, secret: &str, principal: &Principal) -> Option<String> {
    let (mut claims, _) = verify(token, secret).ok()?;
    if claims.get("user_id").and_then(Value::as_str) != Some(principal.user_id.as_str()) {
        return None;
    }
    claims.insert("is_admin".into(), Value::Bool(principal.is_admin));
    Some(with_issue_time(&claims, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

    fn claims(exp: u64) -> Map<String, Value> {
        serde_json::json!({"user_id": "u1", "email": "a@b", "is_admin": false, "exp": exp})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn round_trip_and_expiry() {
        let good = sign(&claims(now() + 60), "s3cret");
        assert!(verify(&good, "s3cret").is_ok());
        assert!(verify(&good, "other").is_err());
        let expired = sign(&claims(now()), "s3cret");
        assert!(verify(&expired, "s3cret").is_err());
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            "a=1; invokeai_media_token=tok; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, MEDIA_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }
}
