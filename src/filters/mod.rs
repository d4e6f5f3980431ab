//! Response filters: what the guard changes on the way back. One dispatcher over the
//! vocabulary's filters (every filter matched explicitly in both phases), one module per family:
//! [`session`] (cookies, tokens, revocation), [`lists`] (6.12 queue and uncategorized rewrites),
//! [`recompute`] (lists, counts and batches of 6.12/6.13 answered as main would), [`record`]
//! (owners), [`models`] (model records per the groups file's `[models]`).
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

mod lists;
mod models;
mod recompute;
mod record;
mod session;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::response::Parts;
use serde_json::Value;

use crate::decision::DenyReason;
use crate::facts::ledger::{Entry, Intent, Ledger};
use crate::facts::Facts;
use crate::identity::Principal;
pub use crate::rules::vocab::ResponseFilter;
use lists::List;
pub use recompute::{plan, PlanInput, Prelude, Reshape, Rewrite};
use session::PasswordChange;
pub use session::{refreshed_token, session_cookie};

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
    /// The client's query (as the client sent it, before any rewrite).
    pub query: &'a crate::http::canonical::Query,
    /// How to turn the answer to a rewritten request into the client's (see [`plan`]).
    pub reshape: Option<&'a Reshape>,
    /// The ledger intent written before a create was forwarded (owner to record).
    pub intent: Option<(Entry, Intent)>,
    /// The groups file's model access (and quotas), from the table the request matched.
    pub access: Option<&'a crate::rules::access::Access>,
}

/// Apply header-only filters.
pub async fn apply_headers(filters: &[ResponseFilter], parts: &mut Parts, ctx: &FilterContext<'_>) {
    let ok = parts.status.is_success();
    for filter in filters {
        match filter {
            // Private pixels must not land in shared caches (6.12/6.13 send max-age=31536000).
            ResponseFilter::PrivateMedia => {
                parts
                    .headers
                    .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            }
            ResponseFilter::LogoutSession if ok => {
                if let Some(c) = session_cookie(None, 0, ctx.tls) {
                    parts.headers.append(SET_COOKIE, c);
                }
            }
            ResponseFilter::RevokeOnPasswordChange if ok && !ctx.upstream_revokes => {
                session::revoke_after_password_change(PasswordChange::Own, parts, ctx).await;
            }
            ResponseFilter::RevokeOnPasswordReset if ok && !ctx.upstream_revokes => {
                session::revoke_after_password_change(PasswordChange::Reset, parts, ctx).await;
            }
            ResponseFilter::RefreshSession if ok => session::refresh_session(parts, ctx),
            // Noted before forwarding (server::pipeline), for the socket filter.
            ResponseFilter::CorrelateRecall => {}
            // Not 2xx, or the upstream revokes itself: nothing to do.
            ResponseFilter::LogoutSession
            | ResponseFilter::RevokeOnPasswordChange
            | ResponseFilter::RevokeOnPasswordReset
            | ResponseFilter::RefreshSession => {}
            // Body filters run in `apply_body`.
            ResponseFilter::LoginSession
            | ResponseFilter::RecordWorkflowOwner
            | ResponseFilter::RecordStylePresetOwner
            | ResponseFilter::RecordBulkDownload
            | ResponseFilter::OwnUncategorizedNames
            | ResponseFilter::SanitizeQueueItems
            | ResponseFilter::RedactQueueStatus
            | ResponseFilter::OwnQueueCounts
            | ResponseFilter::OwnImagePage
            | ResponseFilter::OwnImageNames
            | ResponseFilter::ReadableImages
            | ResponseFilter::VisibleWorkflowPage
            | ResponseFilter::VisibleWorkflowTags
            | ResponseFilter::VisibleWorkflowTagCounts
            | ResponseFilter::VisibleWorkflowCategoryCounts
            | ResponseFilter::VisibleStylePresets
            | ResponseFilter::OwnDateCovers
            | ResponseFilter::OwnIntermediatesCount
            | ResponseFilter::OwnBoardMediaDelete
            | ResponseFilter::UsableModels
            | ResponseFilter::UsableModelKeys
            | ResponseFilter::UsableStarterModels => {}
            // Applied to the request before it was forwarded.
            ResponseFilter::SkipForeignDeletes => {}
        }
    }
}

/// The parsed answer a model filter reads: unreadable while the filter has work is withheld.
fn model_answer<'j>(
    json: Option<&'j mut Value>,
    ctx: &FilterContext<'_>,
) -> Result<Option<&'j mut Value>, DenyReason> {
    match json {
        Some(j) => Ok(Some(j)),
        None if models::active(ctx) => {
            Err(DenyReason::BadUpstream("unreadable model answer".into()))
        }
        None => Ok(None),
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
) -> Result<Option<Bytes>, DenyReason> {
    let mut json: Option<Value> = serde_json::from_slice(body).ok();
    if json.is_none() && ctx.intent.is_some() {
        return Err(DenyReason::BadUpstream(
            "a create's answer is not JSON: its owner cannot be recorded".into(),
        ));
    }
    let mut changed = false;
    for filter in filters {
        let list = match filter {
            ResponseFilter::OwnUncategorizedNames => Some(List::UncategorizedNames),
            ResponseFilter::SanitizeQueueItems => Some(List::QueueItems),
            ResponseFilter::RedactQueueStatus => Some(List::QueueStatus),
            ResponseFilter::OwnQueueCounts => Some(List::QueueCounts),
            ResponseFilter::LoginSession => {
                changed |= session::login_session(json.as_mut(), parts, ctx);
                None
            }
            ResponseFilter::RecordWorkflowOwner => {
                record::record(ctx, Entry::Workflow, json.as_ref(), "workflow_id").await?;
                None
            }
            ResponseFilter::RecordStylePresetOwner => {
                record::record(ctx, Entry::StylePreset, json.as_ref(), "id").await?;
                None
            }
            ResponseFilter::RecordBulkDownload => {
                let field = "bulk_download_item_name";
                record::record(ctx, Entry::BulkDownload, json.as_ref(), field).await?;
                None
            }
            ResponseFilter::OwnImagePage
            | ResponseFilter::OwnImageNames
            | ResponseFilter::ReadableImages
            | ResponseFilter::VisibleWorkflowPage
            | ResponseFilter::VisibleWorkflowTags
            | ResponseFilter::VisibleWorkflowTagCounts
            | ResponseFilter::VisibleWorkflowCategoryCounts
            | ResponseFilter::VisibleStylePresets
            | ResponseFilter::OwnDateCovers
            | ResponseFilter::OwnIntermediatesCount
            | ResponseFilter::OwnBoardMediaDelete => {
                match json.as_mut() {
                    Some(j) => changed |= recompute::reshape(*filter, j, ctx).await?,
                    None if recompute::active(*filter, ctx.principal, ctx.facts) => {
                        return Err(DenyReason::BadUpstream("unreadable upstream list".into()))
                    }
                    None => {}
                }
                None
            }
            // Model records per the groups file's [models] (filters::models).
            ResponseFilter::UsableModels => {
                if let Some(j) = model_answer(json.as_mut(), ctx)? {
                    changed |= models::usable_models(j, parts, ctx)?;
                }
                None
            }
            ResponseFilter::UsableModelKeys => {
                if let Some(j) = model_answer(json.as_mut(), ctx)? {
                    changed |= models::usable_model_keys(j, ctx).await?;
                }
                None
            }
            ResponseFilter::UsableStarterModels => {
                if let Some(j) = model_answer(json.as_mut(), ctx)? {
                    changed |= models::usable_starter_models(j, ctx).await?;
                }
                None
            }
            // Header filters ran in `apply_headers`; the batch delete was rewritten before it
            // was forwarded.
            ResponseFilter::SkipForeignDeletes
            | ResponseFilter::CorrelateRecall
            | ResponseFilter::PrivateMedia
            | ResponseFilter::RefreshSession
            | ResponseFilter::LogoutSession
            | ResponseFilter::RevokeOnPasswordChange
            | ResponseFilter::RevokeOnPasswordReset => None,
        };
        if let Some(list) = list {
            match json.as_mut() {
                Some(j) => changed |= lists::filter_list(list, j, ctx).await?,
                None if lists::needs_filtering(list, ctx) => {
                    return Err(DenyReason::BadUpstream("unreadable upstream list".into()))
                }
                None => {}
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(&json).map_err(|e| DenyReason::BadUpstream(e.to_string()))?;
    Ok(Some(Bytes::from(bytes)))
}
