//! Recomputed lists (issue: old upstreams answer every list as main would). Where an older
//! InvokeAI (6.12/6.13) answers a list, count or batch with other users' items, the guard
//! answers what main answers to the caller, instead of refusing the request. Two mechanisms,
//! chosen per endpoint (the rule's comment in routes.toml says which and why):
//! - [`plan`], before forwarding: ask the upstream for something else. The caller's page of own
//!   images is computed from the read-only database and hydrated with `images_by_names`; a
//!   workflow list is asked for as one wide page, filtered and cut here; a batch delete is sent
//!   with only the names the caller may write; a board deleted with its images by its (non-admin)
//!   owner becomes a delete of the owner's own images, then of the board alone.
//! - [`reshape`], after: rewrite the upstream's answer. Unreadable items are dropped; counts,
//!   tags and covers are recomputed from the database with the upstream's own filter semantics.
//!
//! Invariants:
//! - An item stays only when main's list rule shows it to the caller; what the guard cannot
//!   decide (facts unreadable, an unexpected shape, a list over `limits.max_list_items`) is an
//!   error (503/502), never the unfiltered answer.
//! - Admins, and upstreams that scope the list themselves (schema capability), pass through.
//! - Totals and pages describe the filtered list (main's paging), never the upstream's.
//! - An item owned by the caller is decided by immutable facts (image owners never change), so
//!   a list computed while others write cannot gain a foreign item.

use std::collections::HashSet;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Map, Value};

use super::FilterContext;
use crate::decision::Refusal;
use crate::facts::ledger::Entry;
use crate::facts::lists::{self, ImageFilter, WorkflowScope};
use crate::http::canonical::{Query, Target};
use crate::identity::Principal;
use crate::policy::{self, lax_bool, Access};
use crate::rules::vocab::{Recompute, ResponseFilter};
use crate::upstream::Planned;

/// What the guard sends upstream instead of the client's request.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// A request that must succeed first (a readable 2xx; its answer feeds [`Reshape`]).
    pub prelude: Option<Planned>,
    pub request: Planned,
    pub reshape: Reshape,
}

/// How the answer to a rewritten request becomes the answer to the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reshape {
    /// `images_by_names` DTOs become main's `OffsetPaginatedResults`.
    ImagePage { offset: i64, limit: i64, total: i64 },
    /// A wide workflow page is filtered, then the caller's page is cut from it.
    WorkflowPage { page: i64, per_page: Option<i64> },
    /// The upstream's answer is already the caller's (fewer names were sent).
    Unchanged,
    /// main's `DeleteBoardResult` for an owner: the own images the prelude deleted, no
    /// `deleted_board_images` (other users' contributions fall back to uncategorized).
    BoardDelete { deleted_images: Vec<String> },
}

impl Reshape {
    /// Take in the answer to the rewrite's prelude.
    pub fn absorb_prelude(&mut self, answer: &Value) -> Result<(), Refusal> {
        if let Reshape::BoardDelete { deleted_images } = self {
            let names = answer
                .get("deleted_images")
                .and_then(Value::as_array)
                .ok_or_else(|| shape("image delete"))?;
            *deleted_images = names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| shape("image delete"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

fn shape(what: &str) -> Refusal {
    Refusal::BadUpstream(format!("unexpected {what} shape"))
}

fn caller(principal: Option<&Principal>) -> &str {
    principal.map_or("", |p| p.user_id.as_str())
}

/// The request the guard forwards instead of the client's, if one of the request's active
/// filters (see [`super::active`]) needs one.
pub async fn plan(
    filters: &[ResponseFilter],
    input: &FilterContext<'_>,
) -> Result<Option<Rewrite>, Refusal> {
    for filter in filters {
        let ResponseFilter::Recompute(r) = filter else {
            continue;
        };
        let rewrite = match r {
            Recompute::OwnImagePage => own_image_page(input).await?,
            Recompute::SkipForeignDeletes => writable_names(input).await?,
            Recompute::VisibleWorkflowPage => wide_workflow_page(input)?,
            Recompute::OwnBoardMediaDelete => board_media_delete(input).await?,
            // Filters that only read the answer.
            Recompute::OwnImageNames
            | Recompute::ReadableImages
            | Recompute::VisibleWorkflowTags
            | Recompute::VisibleWorkflowTagCounts
            | Recompute::VisibleWorkflowCategoryCounts
            | Recompute::VisibleStylePresets
            | Recompute::OwnDateCovers
            | Recompute::OwnIntermediatesCount => None,
        };
        if rewrite.is_some() {
            return Ok(rewrite);
        }
    }
    Ok(None)
}

/// A query parameter the upstream reads as one value (a repeated one is refused: parameter
/// pollution).
fn single<'q>(query: &'q Query, name: &str) -> Result<Option<&'q str>, Refusal> {
    query
        .single(name)
        .map_err(|e| Refusal::Unprocessable(e.to_string()))
}

/// An integer as pydantic reads a query value (optional sign, ASCII digits); else 422.
fn int_param(query: &Query, name: &str) -> Result<Option<i64>, Refusal> {
    single(query, name)?
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                Refusal::Unprocessable(format!(
                    "{name}: Input should be a valid integer, unable to parse string as an integer"
                ))
            })
        })
        .transpose()
}

fn bool_param(query: &Query, name: &str) -> Result<Option<bool>, Refusal> {
    let value = single(query, name)?.map(|v| Value::String(v.to_owned()));
    lax_bool(value.as_ref())
}

/// A value of a closed set (a pydantic enum): anything else is 422, as the upstream answers.
fn enum_value(name: &str, value: &str, allowed: &[&str]) -> Result<String, Refusal> {
    if allowed.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(Refusal::Unprocessable(format!(
            "{name}: Input should be {}",
            allowed.join(", ")
        )))
    }
}

/// The upstream's image list filters from the query (spec §1.3 `GET /api/v1/images/`).
fn image_filter(query: &Query) -> Result<ImageFilter, Refusal> {
    const ORIGINS: &[&str] = &["internal", "external"];
    const CATEGORIES: &[&str] = &["general", "mask", "control", "user", "other"];
    let categories = query.all("categories");
    Ok(ImageFilter {
        image_origin: single(query, "image_origin")?
            .map(|v| enum_value("image_origin", v, ORIGINS))
            .transpose()?,
        categories: (!categories.is_empty())
            .then(|| {
                categories
                    .iter()
                    .map(|c| enum_value("categories", c, CATEGORIES))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
        is_intermediate: bool_param(query, "is_intermediate")?,
        search_term: single(query, "search_term")?.map(str::to_owned),
        starred_first: bool_param(query, "starred_first")?.unwrap_or(true),
        descending: match single(query, "order_dir")? {
            None | Some("DESC") => true,
            Some("ASC") => false,
            Some(_) => {
                return Err(Refusal::Unprocessable(
                    "order_dir: Input should be 'ASC' or 'DESC'".into(),
                ))
            }
        },
    })
}

/// R1: the caller's own page, computed with the upstream's filters plus main's owner condition,
/// then hydrated by the upstream (`images_by_names` keeps the order of the names it is given).
/// A wider page filtered here would make a 10 000-image gallery cost the upstream 10 000 DTOs.
async fn own_image_page(input: &FilterContext<'_>) -> Result<Option<Rewrite>, Refusal> {
    let query = &input.target.params;
    if single(query, "board_id")?.is_some() {
        // An explicit board (or `none`): the upstream scopes it, the checks guard it.
        return Ok(None);
    }
    let filter = image_filter(query)?;
    let offset = int_param(query, "offset")?.unwrap_or(0);
    let limit = int_param(query, "limit")?.unwrap_or(10);
    let me = caller(input.principal).to_owned();
    let (names, total) = input
        .facts
        .list(move |c| lists::own_image_page(c, &me, &filter, offset, limit))
        .await?;
    if names.len() > input.max_list_items {
        return Err(Refusal::ListTooLarge(input.max_list_items));
    }
    let body = serde_json::to_vec(&json!({ "image_names": names }))
        .map_err(|e| Refusal::BadUpstream(e.to_string()))?;
    Ok(Some(Rewrite {
        prelude: None,
        request: Planned {
            method: Method::POST,
            target: Target {
                path: "/api/v1/images/images_by_names".into(),
                query: None,
                params: Query::default(),
            },
            body: Some(Bytes::from(body)),
        },
        reshape: Reshape::ImagePage {
            offset,
            limit,
            total,
        },
    }))
}

/// main's `POST /images/delete`: names the caller may not write are skipped, not refused.
async fn writable_names(input: &FilterContext<'_>) -> Result<Option<Rewrite>, Refusal> {
    let Some(Value::Array(names)) = input.data.body.as_ref().and_then(|b| b.get("image_names"))
    else {
        // Missing or not a list: the upstream answers its own 422.
        return Ok(None);
    };
    let Some(me) = input.principal else {
        return Err(Refusal::Unauthenticated("Not authenticated".into()));
    };
    let listed = names
        .iter()
        .map(|n| n.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| {
            Refusal::Unprocessable("image_names: Input should be a valid string".into())
        })?;
    // One read decides the whole batch.
    let facts = input.facts.images(listed.clone()).await?;
    let keep: Vec<String> = listed
        .into_iter()
        .filter(|n| policy::media_permits(Access::Write, facts.get(n), me))
        .collect();
    if keep.len() == names.len() {
        return Ok(None);
    }
    let body = serde_json::to_vec(&json!({ "image_names": keep }))
        .map_err(|e| Refusal::BadUpstream(e.to_string()))?;
    Ok(Some(Rewrite {
        prelude: None,
        request: Planned {
            method: Method::POST,
            target: input.target.clone(),
            body: Some(Bytes::from(body)),
        },
        reshape: Reshape::Unchanged,
    }))
}

/// 6.12's workflow list, asked for as one wide page (workflows are few; 6.12 has no endpoint
/// that hydrates workflows by id), filtered and cut here.
fn wide_workflow_page(input: &FilterContext<'_>) -> Result<Option<Rewrite>, Refusal> {
    let query = &input.target.params;
    let page = int_param(query, "page")?.unwrap_or(0);
    // `per_page=0` means "no paging" to the upstream (`if per_page:`), as if it were absent.
    let per_page = int_param(query, "per_page")?.filter(|&p| p != 0);
    if page < 0 || per_page.is_some_and(|p| p < 0) {
        return Err(Refusal::Unprocessable(
            "page and per_page must not be negative".into(),
        ));
    }
    let wide = input.max_list_items.to_string();
    Ok(Some(Rewrite {
        prelude: None,
        request: Planned {
            method: Method::GET,
            target: with_params(input.target, &[("page", "0"), ("per_page", &wide)]),
            body: None,
        },
        reshape: Reshape::WorkflowPage { page, per_page },
    }))
}

/// The target with some query parameters set; the client's others are kept byte for byte.
fn with_params(target: &Target, set: &[(&str, &str)]) -> Target {
    let kept: Vec<&str> = target
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            // Parameter pollution: names are compared decoded, as the upstream reads them.
            let raw_name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            let name = crate::http::canonical::decode_query_part(raw_name).unwrap_or_default();
            !pair.is_empty() && !set.iter().any(|(n, _)| *n == name)
        })
        .collect();
    let mut raw = kept.join("&");
    let mut params = target.params.clone();
    for (name, value) in set {
        if !raw.is_empty() {
            raw.push('&');
        }
        // Names and values the guard sets are plain ASCII words and numbers.
        raw.push_str(&format!("{name}={value}"));
        params.replace(name, value);
    }
    Target {
        path: target.path.clone(),
        query: Some(raw),
        params,
    }
}

/// Hole 4 on 6.12/6.13: the owner's `include_images=true` would delete other users'
/// contributions. main deletes only the owner's own images, then the board (the others fall
/// back to uncategorized): the guard sends exactly that, as two requests.
async fn board_media_delete(input: &FilterContext<'_>) -> Result<Option<Rewrite>, Refusal> {
    if bool_param(&input.target.params, "include_images")? != Some(true) {
        return Ok(None);
    }
    let board = input
        .data
        .path
        .get("board_id")
        .cloned()
        .ok_or_else(|| Refusal::Unprocessable("board_id missing".into()))?;
    let me = caller(input.principal).to_owned();
    let own = input
        .facts
        .list(move |c| lists::own_images_on_board(c, &board, &me))
        .await?;
    if own.len() > input.max_list_items {
        return Err(Refusal::ListTooLarge(input.max_list_items));
    }
    let prelude = if own.is_empty() {
        None
    } else {
        let body = serde_json::to_vec(&json!({ "image_names": own }))
            .map_err(|e| Refusal::BadUpstream(e.to_string()))?;
        Some(Planned {
            method: Method::POST,
            target: Target {
                path: "/api/v1/images/delete".into(),
                query: None,
                params: Query::default(),
            },
            body: Some(Bytes::from(body)),
        })
    };
    Ok(Some(Rewrite {
        prelude,
        request: Planned {
            method: Method::DELETE,
            target: with_params(input.target, &[("include_images", "false")]),
            body: None,
        },
        reshape: Reshape::BoardDelete {
            deleted_images: Vec::new(),
        },
    }))
}

/// Rewrite one list answer for the caller (an active filter); `Ok(true)` when it changed.
pub(super) async fn reshape(
    filter: Recompute,
    json: &mut Value,
    ctx: &FilterContext<'_>,
) -> Result<bool, Refusal> {
    match filter {
        Recompute::OwnImagePage => Ok(image_page(json, ctx.reshape)?),
        Recompute::OwnImageNames => own_image_names(json, ctx).await,
        Recompute::ReadableImages => readable_images(json, ctx).await,
        Recompute::VisibleWorkflowPage => workflow_page(json, ctx).await,
        Recompute::VisibleWorkflowTags => workflow_tags(json, ctx).await,
        Recompute::VisibleWorkflowTagCounts => workflow_counts(json, ctx, true).await,
        Recompute::VisibleWorkflowCategoryCounts => workflow_counts(json, ctx, false).await,
        Recompute::VisibleStylePresets => style_presets(json, ctx).await,
        Recompute::OwnDateCovers => date_covers(json, ctx).await,
        Recompute::OwnIntermediatesCount => intermediates_count(json, ctx).await,
        Recompute::OwnBoardMediaDelete => Ok(board_delete(json, ctx.reshape)?),
        // The batch delete was rewritten before it was sent: its answer is already the caller's.
        Recompute::SkipForeignDeletes => Ok(false),
    }
}

/// `images_by_names` DTOs become main's `OffsetPaginatedResults` (the page planned before).
fn image_page(json: &mut Value, reshape: Option<&Reshape>) -> Result<bool, Refusal> {
    let Some(&Reshape::ImagePage {
        offset,
        limit,
        total,
    }) = reshape
    else {
        // An explicit board_id: nothing was rewritten.
        return Ok(false);
    };
    let Value::Array(items) = json.take() else {
        return Err(shape("images_by_names"));
    };
    *json = json!({"items": items, "offset": offset, "limit": limit, "total": total});
    Ok(true)
}

/// 6.12's image names without a board: only the caller's, recounted.
async fn own_image_names(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    let query = &ctx.data.query;
    if single(query, "board_id")?.is_some() {
        return Ok(false);
    }
    let starred_first = bool_param(query, "starred_first")?.unwrap_or(true);
    let me = caller(ctx.principal).to_owned();
    let own = ctx.facts.list(move |c| lists::own_images(c, &me)).await?;
    let Some(Value::Array(names)) = json.get_mut("image_names") else {
        return Err(shape("image names"));
    };
    names.retain(|n| n.as_str().is_some_and(|n| own.contains_key(n)));
    let starred = names
        .iter()
        .filter(|n| n.as_str().and_then(|n| own.get(n)) == Some(&true))
        .count();
    let total = names.len();
    json["starred_count"] = Value::from(if starred_first { starred } else { 0 });
    json["total_count"] = Value::from(total);
    Ok(true)
}

/// `images_by_names`: only the DTOs the caller may read, decided by one read.
async fn readable_images(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    let Value::Array(items) = json else {
        return Err(shape("images_by_names"));
    };
    let Some(principal) = ctx.principal else {
        items.clear();
        return Ok(true);
    };
    let listed = items
        .iter()
        .map(|i| {
            i.get("image_name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| shape("image DTO"))?;
    // One read decides the whole list (not one cache lookup per item).
    let facts = ctx.facts.images(listed).await?;
    items.retain(|i| {
        let name = i
            .get("image_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        policy::media_permits(Access::Read, facts.get(name), principal)
    });
    Ok(true)
}

/// The wide workflow page, filtered to what main lists, then cut into the caller's page.
async fn workflow_page(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    let Some(&Reshape::WorkflowPage { page, per_page }) = ctx.reshape else {
        return Err(shape("workflow page (not rewritten)"));
    };
    let scope = workflow_scope(ctx).await?;
    let obj = json.as_object_mut().ok_or_else(|| shape("workflow page"))?;
    let upstream_total = obj.get("total").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let Some(Value::Array(items)) = obj.get_mut("items") else {
        return Err(shape("workflow page"));
    };
    if upstream_total > items.len() as u64 {
        // The wide page did not hold every workflow: filtering it would lose some.
        return Err(Refusal::ListTooLarge(items.len()));
    }
    let own: HashSet<&str> = scope.own_ids.iter().map(String::as_str).collect();
    let mut visible = Vec::new();
    for item in items.drain(..) {
        let id = item.get("workflow_id").and_then(Value::as_str);
        let category = item.get("category").and_then(Value::as_str);
        let (Some(id), Some(category)) = (id, category) else {
            return Err(shape("workflow list item"));
        };
        if category == "default" || (!scope.defaults_only && own.contains(id)) {
            visible.push(item);
        }
    }
    let total = visible.len() as i64;
    let (items, per_page_out, pages) = match per_page {
        Some(n) => {
            let start = page.saturating_mul(n).clamp(0, total) as usize;
            let end = (start as i64).saturating_add(n).clamp(0, total) as usize;
            let pages = total / n + i64::from(total % n > 0);
            (visible[start..end].to_vec(), n, pages)
        }
        None => (visible, total, 1),
    };
    let mut out = Map::new();
    out.insert("page".into(), Value::from(page));
    out.insert("pages".into(), Value::from(pages));
    out.insert("per_page".into(), Value::from(per_page_out));
    out.insert("total".into(), Value::from(total));
    out.insert("items".into(), Value::Array(items));
    *json = Value::Object(out);
    Ok(true)
}

/// The tags of the workflows main lists to the caller, recomputed in SQL.
async fn workflow_tags(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    if !json.is_array() {
        return Err(shape("workflow tags"));
    }
    let scope = workflow_scope(ctx).await?;
    let tags = ctx
        .facts
        .list(move |c| lists::visible_workflow_tags(c, &scope))
        .await?;
    *json = Value::from(tags);
    Ok(true)
}

/// Workflow counts by tag (`by_tag`) or by category, over what main lists to the caller.
async fn workflow_counts(
    json: &mut Value,
    ctx: &FilterContext<'_>,
    by_tag: bool,
) -> Result<bool, Refusal> {
    if !json.is_object() {
        return Err(shape("workflow counts"));
    }
    let scope = workflow_scope(ctx).await?;
    let query = &ctx.data.query;
    let keys: Vec<String> = query
        .all(if by_tag { "tags" } else { "categories" })
        .to_vec();
    let counts = ctx
        .facts
        .list(move |c| {
            if by_tag {
                lists::visible_workflow_tag_counts(c, &scope, &keys)
            } else {
                lists::visible_workflow_category_counts(c, &scope, &keys)
            }
        })
        .await?;
    *json = Value::Object(
        counts
            .into_iter()
            .map(|(k, n)| (k, Value::from(n)))
            .collect(),
    );
    Ok(true)
}

/// 6.12's style presets: defaults and the caller's own (ledger).
async fn style_presets(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    let Value::Array(items) = json else {
        return Err(shape("style preset list"));
    };
    let me = caller(ctx.principal);
    let own: HashSet<String> = ctx
        .ledger
        .owned(Entry::StylePreset, me)
        .await?
        .into_iter()
        .collect();
    let mut keep = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        let id = item.get("id").and_then(Value::as_str);
        let kind = item.get("type").and_then(Value::as_str);
        let (Some(id), Some(kind)) = (id, kind) else {
            return Err(shape("style preset"));
        };
        // main's list rule: default presets, public ones (none on 6.12) and the caller's.
        if kind == "default" || own.contains(id) {
            keep.push(item);
        }
    }
    *items = keep;
    Ok(true)
}

/// The date boards' covers, picked among the caller's own images.
async fn date_covers(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    let Value::Array(boards) = json else {
        return Err(shape("virtual boards"));
    };
    let me = caller(ctx.principal).to_owned();
    let covers = ctx
        .facts
        .list(move |c| lists::own_date_covers(c, &me))
        .await?;
    for board in boards.iter_mut() {
        let date = board
            .get("date")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("virtual board"))?
            .to_owned();
        let cover = covers.get(&date).cloned().map_or(Value::Null, Value::from);
        board["cover_image_name"] = cover;
    }
    Ok(true)
}

/// The caller's own intermediates, counted.
async fn intermediates_count(json: &mut Value, ctx: &FilterContext<'_>) -> Result<bool, Refusal> {
    if !json.is_i64() && !json.is_u64() {
        return Err(shape("intermediates count"));
    }
    let me = caller(ctx.principal).to_owned();
    let n = ctx
        .facts
        .list(move |c| lists::own_intermediates_count(c, &me))
        .await?;
    *json = Value::from(n);
    Ok(true)
}

/// main's `DeleteBoardResult` for an owner: the own images the prelude deleted.
fn board_delete(json: &mut Value, reshape: Option<&Reshape>) -> Result<bool, Refusal> {
    let Some(Reshape::BoardDelete { deleted_images }) = reshape else {
        // Without include_images nothing was rewritten.
        return Ok(false);
    };
    let obj = json.as_object_mut().ok_or_else(|| shape("board delete"))?;
    obj.insert("deleted_images".into(), Value::from(deleted_images.clone()));
    obj.insert("deleted_board_images".into(), Value::Array(Vec::new()));
    Ok(true)
}

/// The caller's view of 6.12's workflows: own (ledger) and shipped defaults; `is_public=true`
/// (no 6.12 workflow is shared) keeps the defaults only.
async fn workflow_scope(ctx: &FilterContext<'_>) -> Result<WorkflowScope, Refusal> {
    let query = &ctx.data.query;
    let me = caller(ctx.principal);
    let categories = query.all("categories");
    Ok(WorkflowScope {
        own_ids: ctx.ledger.owned(Entry::Workflow, me).await?,
        defaults_only: bool_param(query, "is_public")? == Some(true),
        categories: (!categories.is_empty()).then(|| categories.to_vec()),
        has_been_opened: bool_param(query, "has_been_opened")?,
    })
}
