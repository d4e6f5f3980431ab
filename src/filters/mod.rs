//! Response filters: what the guard changes on the way back (and, for lists recomputed on older
//! upstreams, what it asks for instead: [`plan`]). One dispatcher over the vocabulary's families
//! (every family matched explicitly in both phases), one module per family, each taking only its
//! own words: [`session`] (cookies, tokens, revocation), [`record`] (owners), [`lists`] (6.12
//! queue and uncategorized rewrites), [`recompute`] (lists, counts and batches of 6.12/6.13
//! answered as main would), [`models`] (model records per the groups file's `[models]`); the
//! header family is applied here.
//!
//! Invariants:
//! - Which filters run for a request is decided once, before forwarding, by [`active`] (the
//!   one applicability rule: `serve` runs exactly the filters it names, `explain` lists them).
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

mod lists;
mod models;
mod recompute;
mod record;
mod session;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::response::Parts;
use serde_json::Value;

use crate::decision::Refusal;
use crate::facts::ledger::{Entry, Intent, Ledger};
use crate::facts::{Facts, Schema};
use crate::http::canonical::Target;
use crate::identity::Principal;
use crate::policy::RequestData;
pub use crate::rules::vocab::ResponseFilter;
use crate::rules::vocab::{AdminRule, Header, List, Models, Session};
pub use recompute::{plan, Reshape, Rewrite};
pub use session::{refreshed_token, session_cookie};

/// What filters read: a borrowed view of the request's state (the pipeline's `RequestCtx`)
/// and of the guard's sources.
pub struct FilterContext<'a> {
    pub principal: Option<&'a Principal>,
    pub secret: Option<&'a str>,
    /// The client's canonical target, as matched (the query as the client sent it).
    pub target: &'a Target,
    /// Decoded path parameters, the query and what the rule read of the body.
    pub data: &'a RequestData,
    /// The session cookie the request carried, if any.
    pub request_session: Option<String>,
    /// How to turn the answer to a rewritten request into the client's (see [`plan`]).
    pub reshape: Option<&'a Reshape>,
    /// The ledger intent written before a create was forwarded (owner to record).
    pub intent: Option<(Entry, Intent)>,
    pub facts: &'a Facts,
    pub ledger: &'a Ledger,
    pub tls: bool,
    /// `limits.max_list_items`: the longest list the guard recomputes.
    pub max_list_items: usize,
    /// The groups file's model access (and quotas), from the table the request matched.
    pub access: Option<&'a crate::rules::access::Access>,
}

/// Whether `filter` has work to do for this request: the upstream does not do it itself
/// (schema capability), the caller is not an admin where admins see everything, and (for
/// uncategorized names) the rule listed the `none` board; model lists, where the groups file's
/// `[models]` restricts the caller. No caller counts as a caller who owns nothing (fail closed).
pub fn active(
    filter: ResponseFilter,
    principal: Option<&Principal>,
    schema: &Schema,
    path: &crate::policy::PathParams,
    access: Option<&crate::rules::access::Access>,
) -> bool {
    let info = filter.info();
    if info.upstream_does_it.is_some_and(|c| schema.has(c)) {
        return false;
    }
    if info.admin == AdminRule::Exempt && principal.is_some_and(|p| p.is_admin) {
        return false;
    }
    match filter {
        ResponseFilter::List(List::OwnUncategorizedNames) => {
            path.get("board_id").map(String::as_str) == Some("none")
        }
        ResponseFilter::Models(_) => models::restricts(access, principal),
        ResponseFilter::Header(_)
        | ResponseFilter::Session(_)
        | ResponseFilter::Record(_)
        | ResponseFilter::List(_)
        | ResponseFilter::Recompute(_) => true,
    }
}

/// Apply header-only filters.
pub async fn apply_headers(filters: &[ResponseFilter], parts: &mut Parts, ctx: &FilterContext<'_>) {
    let ok = parts.status.is_success();
    for filter in filters {
        match filter {
            // Private pixels must not land in shared caches (6.12/6.13 send max-age=31536000).
            ResponseFilter::Header(Header::PrivateMedia) => {
                parts
                    .headers
                    .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            }
            // Noted before forwarding (server::pipeline), for the socket filter.
            ResponseFilter::Header(Header::CorrelateRecall) => {}
            ResponseFilter::Session(s) if ok => session::apply_headers(*s, parts, ctx).await,
            // Not 2xx: no session changes.
            ResponseFilter::Session(_) => {}
            // Body filters run in `apply_body`.
            ResponseFilter::Record(_)
            | ResponseFilter::List(_)
            | ResponseFilter::Recompute(_)
            | ResponseFilter::Models(_) => {}
        }
    }
}

/// Apply body-reading filters to a buffered, decoded 2xx body; returns a replacement body when
/// one was rewritten. An error means the body could not be made safe: the caller answers it
/// instead (fail closed), never the unfiltered body. The body is parsed once and serialized at
/// most once.
pub async fn apply_body(
    filters: &[ResponseFilter],
    parts: &mut Parts,
    body: &Bytes,
    ctx: &FilterContext<'_>,
) -> Result<Option<Bytes>, Refusal> {
    let mut json: Option<Value> = serde_json::from_slice(body).ok();
    if json.is_none() && ctx.intent.is_some() {
        return Err(Refusal::BadUpstream(
            "a create's answer is not JSON: its owner cannot be recorded".into(),
        ));
    }
    let unreadable = || Refusal::BadUpstream("unreadable upstream list".into());
    let mut changed = false;
    for filter in filters {
        match filter {
            ResponseFilter::Session(Session::Login) => {
                changed |= session::login_session(json.as_mut(), parts, ctx);
            }
            ResponseFilter::Record(r) => record::record(ctx, *r, json.as_ref()).await?,
            ResponseFilter::List(l) => {
                let j = json.as_mut().ok_or_else(unreadable)?;
                changed |= lists::filter_list(*l, j, ctx).await?;
            }
            ResponseFilter::Recompute(r) => {
                let j = json.as_mut().ok_or_else(unreadable)?;
                changed |= recompute::reshape(*r, j, ctx).await?;
            }
            // Model records per the groups file's [models] (filters::models).
            ResponseFilter::Models(m) => {
                let j = json.as_mut().ok_or_else(unreadable)?;
                changed |= match m {
                    Models::Usable => models::usable_models(j, parts, ctx)?,
                    Models::UsableKeys => models::usable_model_keys(j, ctx).await?,
                    Models::UsableStarters => models::usable_starter_models(j, ctx).await?,
                };
            }
            // Header filters ran in `apply_headers`, as did the sessions that read no body.
            ResponseFilter::Header(_)
            | ResponseFilter::Session(
                Session::Refresh
                | Session::Logout
                | Session::RevokeOnPasswordChange
                | Session::RevokeOnPasswordReset,
            ) => {}
        }
    }
    if !changed {
        return Ok(None);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(&json).map_err(|e| Refusal::BadUpstream(e.to_string()))?;
    Ok(Some(Bytes::from(bytes)))
}
