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
//! - **Verified-token cache** (hot path): the result of [`verify`] is a pure function of the
//!   token's bytes and the secret, except for expiry. It is cached per secret (the cache lives in
//!   the secret's [`Keys`], so a rotated secret starts with an empty cache and a token signed with
//!   the old one is verified again and refused), keyed by the exact token text, bounded
//!   ([`VERIFIED_MAX`] entries; cleared whole when full), and holds successes only. `exp` is
//!   checked against the clock on every hit. What the request needs from the claims (user id,
//!   `token_epoch`, the `is_admin` claim) is decoded once with them: it is the token's own bytes.
//!   Nothing about the user is cached here: the user row
//!   (active, admin, `token_epoch`) and the ledger's revocations are read for every request as
//!   before, so a deactivated user, a demoted admin or a password change take effect exactly as
//!   without the cache. Tests: `verified_cache_*` below, and `tests/identity.rs`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
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
    /// The presented token's claims (shared with the verified-token cache).
    pub claims: Arc<Map<String, Value>>,
    /// The token's `is_admin` claim (read once when the token verified).
    pub admin_claim: Option<bool>,
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

/// Signature validation only: `exp` must be present (checked by jsonwebtoken), but whether it has
/// passed is checked by [`verify_shared`] on every call, cached or not, against the clock.
static NO_EXPIRY: LazyLock<Validation> = LazyLock::new(|| {
    // Algorithm pinning: HS256 only (alg:none and RS/HS confusion, jsonwebtoken #41).
    let mut v = Validation::new(Algorithm::HS256);
    // Type-confused `exp` must not count as absent (CVE-2026-25537): require it explicitly.
    v.set_required_spec_claims(&["exp"]);
    v.leeway = 0;
    v.validate_aud = false;
    v.validate_exp = false;
    v
});

/// How many verified tokens one secret's cache holds before it is cleared.
pub const VERIFIED_MAX: usize = 4096;

/// HMAC keys derived from one secret, built once per secret (not per request), and the tokens
/// verified with it.
struct Keys {
    secret: Box<str>,
    decoding: DecodingKey,
    encoding: EncodingKey,
    /// Token text → its claims and `exp`, for tokens that verified under this secret. Hashed
    /// with foldhash (seeded per process), not SipHash: only tokens whose HS256 signature
    /// verified are ever inserted, so a client cannot choose the keys the map holds (a forged
    /// one is refused before insertion; lookups of it just miss).
    verified: Mutex<HashMap<Box<str>, Verified, foldhash::fast::RandomState>>,
}

/// A token as verified: its claims, and the ones every request reads, decoded once.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Arc<Map<String, Value>>,
    pub exp: u64,
    /// `user_id` (a string: checked when the token verified).
    pub user_id: Arc<str>,
    /// `token_epoch`: absent counts as 0; `None` when it is not an integer.
    pub token_epoch: Option<i64>,
    /// `is_admin` (a boolean: checked when the token verified).
    pub admin_claim: Option<bool>,
}

impl Verified {
    fn new(claims: Map<String, Value>, exp: u64) -> Self {
        Verified {
            user_id: claims
                .get("user_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            token_epoch: claims.get("token_epoch").map_or(Some(0), Value::as_i64),
            admin_claim: claims.get("is_admin").and_then(Value::as_bool),
            claims: Arc::new(claims),
            exp,
        }
    }
}

static KEYS: ArcSwapOption<Keys> = ArcSwapOption::const_empty();

fn keys_for(secret: &str) -> Arc<Keys> {
    if let Some(k) = KEYS.load_full().filter(|k| &*k.secret == secret) {
        return k;
    }
    let keys = Arc::new(Keys::new(secret));
    KEYS.store(Some(keys.clone()));
    keys
}

impl Keys {
    fn new(secret: &str) -> Self {
        Keys {
            secret: secret.into(),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            verified: Mutex::new(HashMap::default()),
        }
    }
}

/// Verify a token's signature and expiry; returns its claims.
pub fn verify(token: &str, secret: &str) -> Result<(Map<String, Value>, u64), IdentityError> {
    verify_shared(token, secret).map(|v| (Arc::unwrap_or_clone(v.claims), v.exp))
}

/// [`verify`], answered from the secret's verified-token cache when the exact token verified
/// before (expiry is still checked against the clock).
pub fn verify_shared(token: &str, secret: &str) -> Result<Verified, IdentityError> {
    verify_with(token, &keys_for(secret))
}

fn verify_with(token: &str, keys: &Keys) -> Result<Verified, IdentityError> {
    let cached = keys
        .verified
        .lock()
        .expect("verified-token cache lock")
        .get(token)
        .cloned();
    let verified = match cached {
        Some(hit) => hit,
        None => {
            let (claims, exp) = verify_uncached(token, keys)?;
            let verified = Verified::new(claims, exp);
            let mut cache = keys.verified.lock().expect("verified-token cache lock");
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
            cache.insert(token.into(), verified.clone());
            verified
        }
    };
    // InvokeAI treats `now >= exp` as expired.
    if now() >= verified.exp {
        return Err(IdentityError::Invalid);
    }
    Ok(verified)
}

/// Signature, algorithm and claim types (everything but the clock).
fn verify_uncached(token: &str, keys: &Keys) -> Result<(Map<String, Value>, u64), IdentityError> {
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &keys.decoding, &NO_EXPIRY)
        .map_err(|_| IdentityError::Invalid)?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(IdentityError::Invalid)?;
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
    let verified = verify_shared(&token, secret)?;
    let user_id = &*verified.user_id;
    // The `system` account owns legacy content and must never act as a caller.
    if user_id == "system" || user_id.is_empty() {
        return Err(IdentityError::Invalid);
    }
    let row = facts.user(user_id).await?.ok_or(IdentityError::Inactive)?;
    if !row.is_active {
        return Err(IdentityError::Inactive);
    }
    // Revocation: a password change bumps the row's epoch and kills older tokens (main).
    if facts.schema().has_token_epoch {
        if verified.token_epoch != Some(row.token_epoch) {
            return Err(IdentityError::Invalid);
        }
    } else if let Some(revoked_before) = ledger.revoked_before(user_id) {
        // No epochs upstream (6.12/6.13, hole 7): the guard's own revocation record.
        if issued_at(&verified.claims, verified.exp) < revoked_before {
            return Err(IdentityError::Invalid);
        }
    }
    Ok(Principal {
        user_id: user_id.to_owned(),
        email: row.email,
        is_admin: row.is_admin,
        token,
        admin_claim: verified.admin_claim,
        claims: verified.claims,
        exp: verified.exp,
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
    /// Whether the token's `is_admin` claim differs from the user row (6.12/6.13 trust the
    /// claim: the token sent upstream is then re-minted).
    pub fn is_admin_claim_stale(&self) -> bool {
        self.admin_claim != Some(self.is_admin)
    }

    /// The token to send upstream: the presented one when its `is_admin` claim is current,
    /// otherwise the same claims and expiry re-signed with the row's `is_admin`.
    pub fn upstream_token(&self, secret: &str) -> String {
        if !self.is_admin_claim_stale() {
            return self.token.clone();
        }
        let mut claims = Map::clone(&self.claims);
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
    fn verified_cache_checks_expiry_on_every_hit() {
        let keys = Keys::new("cache-expiry-secret");
        let token = sign(&claims(now() + 600), "cache-expiry-secret");
        assert!(verify_with(&token, &keys).is_ok());
        // The cached entry says the token has expired: the hit is refused, not served.
        keys.verified
            .lock()
            .unwrap()
            .get_mut(token.as_str())
            .expect("cached after a success")
            .exp = now();
        assert!(matches!(
            verify_with(&token, &keys),
            Err(IdentityError::Invalid)
        ));
    }

    #[test]
    fn verified_cache_is_per_secret_and_holds_successes_only() {
        let (a, b) = (Keys::new("secret-a"), Keys::new("secret-b"));
        let token = sign(&claims(now() + 600), "secret-a");
        assert!(verify_with(&token, &a).is_ok());
        // Another secret: its own cache; the signature is checked and fails, nothing is kept.
        assert!(verify_with(&token, &b).is_err());
        assert!(b.verified.lock().unwrap().is_empty());
        assert!(verify_with(&token, &a).is_ok());
        // One byte off: not a hit, and not valid.
        let mut tampered = token.clone();
        tampered.push('A');
        assert!(verify_with(&tampered, &a).is_err());
        assert_eq!(a.verified.lock().unwrap().len(), 1);
        // The global path keys its cache by the secret too.
        assert!(verify(&token, "secret-a").is_ok());
        assert!(verify(&token, "secret-b").is_err());
    }

    #[test]
    fn verified_cache_is_bounded() {
        let keys = Keys::new("cache-bound-secret");
        for i in 0..VERIFIED_MAX + 10 {
            let token = sign(&claims(now() + 600 + i as u64), "cache-bound-secret");
            assert!(verify_with(&token, &keys).is_ok());
            assert!(keys.verified.lock().unwrap().len() <= VERIFIED_MAX);
        }
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
