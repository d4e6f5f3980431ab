//! The predicate registry and rule evaluation (InvokeAI main's semantics, spec §0).
//!
//! Invariants:
//! - A rule allows only when every check holds; the first failing check decides the denial.
//! - Any error reading facts is `Deny(Unavailable)` (503), never an allow.
//! - Resource predicates are true for admins (as in main) without touching the database; the
//!   account-protection predicates (`user.*`, `login.*`) apply to admins too.
//! - A selector with `[]` makes the check hold for every element; an empty list holds.

use std::collections::HashMap;

use serde_json::Value;

use crate::decision::{Decision, DenyReason};
use crate::facts::{BoardFact, Facts, FactsError, ImageFact, Visibility};
use crate::identity::Principal;
use crate::ledger::{Entry, Ledger};
use crate::routes::{Arg, Rule, Selector, Source, Step};

/// Every check a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predicate {
    Authenticated,
    Admin,
    ImageRead,
    ImageWrite,
    ImageOwn,
    ImageBoardWrite,
    BoardRead,
    BoardWrite,
    BoardOwn,
    WorkflowRead,
    WorkflowOwn,
    StylePresetRead,
    StylePresetWrite,
    QueueItemOwn,
    QueueItemOwnRoot,
    VideoRead,
    VideoWrite,
    VideoOwn,
    VideoBoardWrite,
    SystemPromptRead,
    SystemPromptOwn,
    BulkDownloadOwn,
    EnqueueAllowed,
    ImagesListScoped,
    UserUpdateAllowed,
    UserNotSystem,
    UserKeepsAnAdmin,
    LoginNotSystem,
    AdminIfEq,
    AdminIfTrue,
    AdminUnlessUpstream,
    CallerOr,
    QueueDefault,
}

/// The registry: name, predicate, minimum and maximum argument counts.
const REGISTRY: &[(&str, Predicate, usize, usize)] = &[
    ("authenticated", Predicate::Authenticated, 0, 0),
    ("admin", Predicate::Admin, 0, 0),
    ("image.read", Predicate::ImageRead, 1, 1),
    ("image.write", Predicate::ImageWrite, 1, 1),
    ("image.own", Predicate::ImageOwn, 1, 1),
    ("image.board_write", Predicate::ImageBoardWrite, 1, 1),
    ("board.read", Predicate::BoardRead, 1, 1),
    ("board.write", Predicate::BoardWrite, 1, 1),
    ("board.own", Predicate::BoardOwn, 1, 1),
    ("workflow.read", Predicate::WorkflowRead, 1, 1),
    ("workflow.own", Predicate::WorkflowOwn, 1, 1),
    ("style_preset.read", Predicate::StylePresetRead, 1, 1),
    ("style_preset.write", Predicate::StylePresetWrite, 1, 1),
    ("queue_item.own", Predicate::QueueItemOwn, 1, 1),
    ("queue_item.own_root", Predicate::QueueItemOwnRoot, 1, 1),
    ("video.read", Predicate::VideoRead, 1, 1),
    ("video.write", Predicate::VideoWrite, 1, 1),
    ("video.own", Predicate::VideoOwn, 1, 1),
    ("video.board_write", Predicate::VideoBoardWrite, 1, 1),
    ("system_prompt.read", Predicate::SystemPromptRead, 1, 1),
    ("system_prompt.own", Predicate::SystemPromptOwn, 1, 1),
    ("bulk_download.own", Predicate::BulkDownloadOwn, 1, 1),
    ("enqueue.allowed", Predicate::EnqueueAllowed, 1, 1),
    ("images.list_scoped", Predicate::ImagesListScoped, 1, 1),
    ("user.update_allowed", Predicate::UserUpdateAllowed, 4, 4),
    ("user.not_system", Predicate::UserNotSystem, 1, 1),
    ("user.keeps_an_admin", Predicate::UserKeepsAnAdmin, 1, 3),
    ("login.not_system", Predicate::LoginNotSystem, 1, 1),
    ("admin_if_eq", Predicate::AdminIfEq, 2, 2),
    ("admin_if_true", Predicate::AdminIfTrue, 1, 2),
    (
        "admin_unless_upstream",
        Predicate::AdminUnlessUpstream,
        1,
        1,
    ),
    ("caller_or", Predicate::CallerOr, 2, 2),
    ("queue.default", Predicate::QueueDefault, 1, 1),
];

impl Predicate {
    /// Look a predicate up by its routes.toml name.
    pub fn from_name(name: &str) -> Option<Self> {
        REGISTRY
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, p, ..)| *p)
    }

    /// The routes.toml name.
    pub fn name(self) -> &'static str {
        REGISTRY
            .iter()
            .find(|(_, p, ..)| *p == self)
            .map(|(n, ..)| *n)
            .expect("every predicate is registered")
    }

    /// All registered names (for `check` and docs).
    pub fn names() -> impl Iterator<Item = &'static str> {
        REGISTRY.iter().map(|(n, ..)| *n)
    }

    /// Validate the arguments at load time.
    pub fn check_args(self, args: &[Arg]) -> Result<(), String> {
        let (_, _, min, max) = REGISTRY
            .iter()
            .find(|(_, p, ..)| *p == self)
            .expect("registered");
        if args.len() < *min || args.len() > *max {
            let want = if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            };
            return Err(format!(
                "'{}' takes {want} argument(s), got {}",
                self.name(),
                args.len()
            ));
        }
        let literal_positions: &[usize] = match self {
            Predicate::AdminIfEq | Predicate::AdminIfTrue | Predicate::CallerOr => &[1],
            Predicate::AdminUnlessUpstream => &[0],
            _ => &[],
        };
        let capability_position = match self {
            Predicate::AdminIfTrue => Some(1),
            Predicate::AdminUnlessUpstream => Some(0),
            _ => None,
        };
        if let Some(Arg::Literal(cap)) = capability_position.and_then(|i| args.get(i)) {
            if !crate::facts::Schema::CAPABILITIES.contains(&cap.as_str()) {
                return Err(format!(
                    "unknown upstream capability \"{cap}\" (one of {})",
                    crate::facts::Schema::CAPABILITIES.join(", ")
                ));
            }
        }
        for (i, arg) in args.iter().enumerate() {
            let is_literal = matches!(arg, Arg::Literal(_));
            if is_literal != literal_positions.contains(&i) {
                return Err(format!(
                    "argument {} of '{}' must be {}",
                    i + 1,
                    self.name(),
                    if is_literal {
                        "a selector"
                    } else {
                        "a \"literal\""
                    }
                ));
            }
        }
        Ok(())
    }
}

/// Request data the checks read.
#[derive(Debug, Default)]
pub struct RequestData {
    /// Path parameters, percent-decoded once.
    pub path: HashMap<String, String>,
    /// The parsed query.
    pub query: crate::canonical::Query,
    /// The JSON body, when the rule reads `body.*`.
    pub body: Option<Value>,
    /// Multipart text fields, when the rule reads `form.*`.
    pub form: HashMap<String, String>,
}

/// Everything evaluation needs besides the request.
pub struct Context<'a> {
    pub facts: &'a Facts,
    pub ledger: &'a Ledger,
    pub principal: Option<&'a Principal>,
}

type Outcome = Result<(), DenyReason>;

fn forbidden(detail: impl Into<String>) -> DenyReason {
    DenyReason::Forbidden(detail.into())
}

fn unavailable(e: FactsError) -> DenyReason {
    DenyReason::Unavailable(e.to_string())
}

/// Evaluate all of a rule's checks.
pub async fn evaluate(rule: &Rule, data: &RequestData, ctx: &Context<'_>) -> Decision {
    for check in &rule.checks {
        if let Some(cap) = &check.unless_upstream {
            if ctx.facts.schema().capability(cap) == Some(true) {
                continue;
            }
        }
        let mut values = Vec::with_capacity(check.args.len());
        for arg in &check.args {
            match resolve(arg, data) {
                Ok(v) => values.push(v),
                Err(reason) => return Decision::Deny(reason),
            }
        }
        if let Err(reason) = apply(check.predicate, &values, ctx).await {
            return Decision::Deny(reason);
        }
    }
    Decision::Allow
}

/// The values an argument selects: `None` when an optional value is absent.
#[derive(Debug, Clone)]
pub enum Selected {
    Absent,
    One(Value),
    Each(Vec<Value>),
}

impl Selected {
    fn items(&self) -> Vec<&Value> {
        match self {
            Selected::Absent => Vec::new(),
            Selected::One(v) => vec![v],
            Selected::Each(vs) => vs.iter().collect(),
        }
    }

    fn single(&self) -> Option<&Value> {
        match self {
            Selected::One(v) => Some(v),
            _ => None,
        }
    }
}

fn resolve(arg: &Arg, data: &RequestData) -> Result<Selected, DenyReason> {
    let sel = match arg {
        Arg::Literal(s) => return Ok(Selected::One(Value::String(s.clone()))),
        Arg::Select(sel) => sel,
    };
    let missing = |sel: &Selector| DenyReason::Unprocessable(format!("Missing {}", sel.text));
    // Only a form field holding JSON needs an owned root; everything else is walked by reference.
    let parsed_form: Option<Value>;
    let scalar: Option<Value>;
    let root: Option<&Value> = match &sel.source {
        Source::Path(name) => {
            scalar = data.path.get(name).cloned().map(Value::String);
            scalar.as_ref()
        }
        Source::Query(name) => {
            scalar = data
                .query
                .single(name)
                .map_err(|e| DenyReason::BadRequest(e.to_string()))?
                .map(|v| Value::String(v.to_owned()));
            scalar.as_ref()
        }
        Source::Body => data.body.as_ref(),
        Source::Form(name) => match data.form.get(name) {
            None => None,
            Some(text) if sel.steps.is_empty() => {
                scalar = Some(Value::String(text.clone()));
                scalar.as_ref()
            }
            Some(text) => {
                // Only the selected path is kept (no amplification of a large JSON field).
                let mut plan = crate::jsonplan::JsonPlan::default();
                plan.add(
                    sel.steps.iter().map(|s| match s {
                        Step::Field(f) => crate::jsonplan::PathStep::Field(f),
                        Step::Each => crate::jsonplan::PathStep::Each,
                    }),
                    crate::jsonplan::Keep::Whole,
                );
                parsed_form = Some(crate::jsonplan::parse(text.as_bytes(), &plan).map_err(|_| {
                    DenyReason::Unprocessable(format!("form field '{name}' is not JSON"))
                })?);
                parsed_form.as_ref()
            }
        },
    };
    let Some(root) = root.filter(|v| !v.is_null()) else {
        return if sel.optional {
            Ok(Selected::Absent)
        } else {
            Err(missing(sel))
        };
    };
    let each = sel.steps.contains(&Step::Each);
    let mut current = vec![root];
    for step in &sel.steps {
        let mut next = Vec::with_capacity(current.len());
        for value in current {
            match (step, value) {
                (Step::Field(f), Value::Object(map)) => match map.get(f) {
                    Some(v) if !v.is_null() => next.push(v),
                    _ if sel.optional => {}
                    _ => return Err(missing(sel)),
                },
                (Step::Each, Value::Array(items)) => next.extend(items.iter()),
                _ if sel.optional => {}
                (_, _) => {
                    return Err(DenyReason::Unprocessable(format!(
                        "{} has the wrong type",
                        sel.text
                    )));
                }
            }
        }
        current = next;
    }
    Ok(match (each, current.first()) {
        (true, _) => Selected::Each(current.into_iter().cloned().collect()),
        (false, None) => Selected::Absent,
        (false, Some(v)) => Selected::One((*v).clone()),
    })
}

fn as_id(v: &Value) -> Result<String, DenyReason> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(DenyReason::Unprocessable(
            "identifier has the wrong type".into(),
        )),
    }
}

async fn apply(predicate: Predicate, args: &[Selected], ctx: &Context<'_>) -> Outcome {
    use Predicate as P;
    let Some(me) = ctx.principal else {
        // Checks that need a caller on a public rule: refuse rather than guess.
        return match predicate {
            P::LoginNotSystem => login_not_system(&args[0]),
            _ => Err(DenyReason::Unauthenticated(
                "Authentication required".into(),
            )),
        };
    };
    match predicate {
        P::Authenticated => Ok(()),
        P::Admin => admin_only(me),
        // Queue ids are Socket.IO room names upstream: any other id lets a caller emit events into
        // rooms such as `admin` or `user:<id>` (room injection). Applies to admins too.
        P::QueueDefault => match args[0].single().map(as_id).transpose()? {
            Some(q) if q != "default" => Err(forbidden(format!(
                "Queue '{q}' is not available (only 'default')"
            ))),
            _ => Ok(()),
        },
        P::UserUpdateAllowed => user_update_allowed(args),
        P::UserNotSystem => match args[0].single().map(as_id).transpose()? {
            Some(id) if id == "system" => Err(DenyReason::BadRequest(SYSTEM_PROTECTED.into())),
            _ => Ok(()),
        },
        P::UserKeepsAnAdmin => keeps_an_admin(args, ctx).await,
        P::LoginNotSystem => login_not_system(&args[0]),
        P::AdminIfEq => match (args[0].single(), args[1].single()) {
            (Some(v), Some(lit)) if v == lit => admin_only(me),
            _ => Ok(()),
        },
        P::AdminIfTrue => {
            let upstream_handles = args
                .get(1)
                .and_then(Selected::single)
                .and_then(Value::as_str)
                .is_some_and(|cap| ctx.facts.schema().capability(cap) == Some(true));
            if lax_bool(args[0].single())? == Some(true) && !upstream_handles {
                admin_only(me)
            } else {
                Ok(())
            }
        }
        // The value names the caller (or is the literal); applies to admins too: it guards whose
        // data a request writes, not who may call.
        P::CallerOr => {
            let value = args[0].single().map(as_id).transpose()?;
            let literal = args[1].single().and_then(Value::as_str);
            match value {
                Some(v) if v == me.user_id || Some(v.as_str()) == literal => Ok(()),
                None => Ok(()),
                Some(_) => Err(forbidden("Not authorized to write another user's data")),
            }
        }
        P::AdminUnlessUpstream => {
            let cap = args[0].single().and_then(Value::as_str).unwrap_or_default();
            if ctx.facts.schema().capability(cap) == Some(true) {
                Ok(())
            } else {
                admin_only(me)
            }
        }
        _ if me.is_admin => Ok(()),
        P::ImagesListScoped => {
            if matches!(args[0], Selected::Absent)
                && !ctx.facts.schema().upstream_scopes_image_lists()
            {
                Err(forbidden(
                    "Listing images without board_id is not allowed on this InvokeAI version (use board_id=none)",
                ))
            } else {
                Ok(())
            }
        }
        P::EnqueueAllowed => {
            for root in args[0].items() {
                enqueue_allowed(root, me, ctx).await?;
            }
            Ok(())
        }
        resource => {
            for value in args[0].items() {
                let id = as_id(value)?;
                resource_check(resource, &id, me, ctx).await?;
            }
            Ok(())
        }
    }
}

/// A boolean as pydantic's lax mode reads it (JSON booleans, `0`/`1` and `0.0`/`1.0`, and the
/// strings `0 off f false n no` / `1 on t true y yes` in any case); `None` when absent or null.
/// Anything else is refused (422), as pydantic refuses it: never guessed.
pub fn lax_bool(v: Option<&Value>) -> Result<Option<bool>, DenyReason> {
    let bad = || DenyReason::Unprocessable("Input should be a valid boolean".into());
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f == 0.0 => Ok(Some(false)),
            Some(f) if f == 1.0 => Ok(Some(true)),
            _ => Err(bad()),
        },
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(Some(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Some(true)),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

const SYSTEM_PROTECTED: &str = "The system user is protected and cannot be modified";

fn admin_only(me: &Principal) -> Outcome {
    if me.is_admin {
        Ok(())
    } else {
        Err(forbidden("Admin privileges required"))
    }
}

fn login_not_system(email: &Selected) -> Outcome {
    match email.single() {
        Some(Value::String(e)) if e.trim().eq_ignore_ascii_case("system@system.invokeai") => Err(
            DenyReason::Unauthenticated("Incorrect email or password".into()),
        ),
        _ => Ok(()),
    }
}

fn user_update_allowed(args: &[Selected]) -> Outcome {
    let target = args[0].single().map(as_id).transpose()?;
    if target.as_deref() != Some("system") {
        return Ok(());
    }
    let sets_password = matches!(args[1].single(), Some(Value::String(p)) if !p.is_empty());
    let promotes = lax_bool(args[2].single())? == Some(true);
    let deactivates = lax_bool(args[3].single())? == Some(false);
    if sets_password || promotes || deactivates {
        Err(DenyReason::BadRequest(SYSTEM_PROTECTED.into()))
    } else {
        Ok(())
    }
}

async fn keeps_an_admin(args: &[Selected], ctx: &Context<'_>) -> Outcome {
    let Some(target) = args[0].single().map(as_id).transpose()? else {
        return Ok(());
    };
    // Without body arguments the rule is a delete; otherwise only a demotion or deactivation.
    let removes = args.len() == 1
        || lax_bool(args.get(1).and_then(Selected::single))? == Some(false)
        || lax_bool(args.get(2).and_then(Selected::single))? == Some(false);
    if !removes {
        return Ok(());
    }
    let row = ctx.facts.user(&target).await.map_err(unavailable)?;
    if !row.is_some_and(|r| r.is_admin && r.is_active) {
        return Ok(());
    }
    let admins = ctx.facts.active_admin_count().await.map_err(unavailable)?;
    if admins <= 1 {
        Err(DenyReason::BadRequest(
            "Cannot remove the last administrator".into(),
        ))
    } else {
        Ok(())
    }
}

// === resource predicates (spec §0) ===

fn board_readable(board: &BoardFact, me: &str) -> bool {
    board.owner == me || matches!(board.visibility, Visibility::Shared | Visibility::Public)
}

fn board_writable(board: &BoardFact, me: &str) -> bool {
    board.owner == me || board.visibility == Visibility::Public
}

fn image_readable(img: &ImageFact, me: &str) -> bool {
    img.owner == me
        || img
            .board
            .as_ref()
            .is_some_and(|b| matches!(b.visibility, Visibility::Shared | Visibility::Public))
}

fn image_writable(img: &ImageFact, me: &str) -> bool {
    img.owner == me || img.board.as_ref().is_some_and(|b| board_writable(b, me))
}

/// A board the predicate needs: unknown (or of unknown visibility) is 404, as main answers.
async fn known_board(id: &str, ctx: &Context<'_>) -> Result<BoardFact, DenyReason> {
    match ctx.facts.board(id).await.map_err(unavailable)? {
        Some(b) if b.visibility != Visibility::Unknown => Ok(b),
        _ => Err(DenyReason::NotFound(format!("Board {id} not found"))),
    }
}

async fn resource_check(
    predicate: Predicate,
    id: &str,
    me: &Principal,
    ctx: &Context<'_>,
) -> Outcome {
    use Predicate as P;
    let uid = me.user_id.as_str();
    let facts = ctx.facts;
    match predicate {
        P::ImageRead | P::ImageWrite | P::ImageOwn | P::ImageBoardWrite => {
            let img = facts.image(id).await.map_err(unavailable)?;
            media_check(predicate, img, uid, "image", id)
        }
        P::VideoRead | P::VideoWrite | P::VideoOwn | P::VideoBoardWrite => {
            let vid = facts.video(id).await.map_err(unavailable)?;
            let as_image = match predicate {
                P::VideoRead => P::ImageRead,
                P::VideoWrite => P::ImageWrite,
                P::VideoOwn => P::ImageOwn,
                _ => P::ImageBoardWrite,
            };
            media_check(as_image, vid, uid, "video", id)
        }
        P::BoardRead => {
            // `none` is the uncategorized pseudo-board: listing it is scoped by InvokeAI.
            if id == "none" {
                return Ok(());
            }
            let b = known_board(id, ctx).await?;
            ok_or_forbidden(
                board_readable(&b, uid),
                "Not authorized to access this board",
            )
        }
        P::BoardWrite => {
            let b = known_board(id, ctx).await?;
            ok_or_forbidden(
                board_writable(&b, uid),
                "Not authorized to modify this board",
            )
        }
        P::BoardOwn => {
            let b = known_board(id, ctx).await?;
            ok_or_forbidden(b.owner == uid, "Not authorized to modify this board")
        }
        P::WorkflowRead | P::WorkflowOwn => {
            let wf = facts
                .workflow(id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| DenyReason::NotFound(format!("Workflow {id} not found")))?;
            let owner = match wf.owner {
                Some(o) => Some(o),
                // 6.12 keeps no workflow owner: the guard's ledger may know the creator.
                None => ctx
                    .ledger
                    .owner(Entry::Workflow, id)
                    .await
                    .map_err(unavailable)?,
            };
            let allowed = match (predicate, owner.as_deref()) {
                (P::WorkflowRead, Some(o)) => o == uid || wf.is_public || wf.category == "default",
                // Unknown owner (6.12): created before the guard, like main's `system` workflows;
                // created since, its owner was lost (an orphan): admins only.
                (P::WorkflowRead, None) => ctx.ledger.is_legacy(&wf.created_at),
                (_, Some(o)) => o == uid,
                (_, None) => false,
            };
            ok_or_forbidden(allowed, "Not authorized to access this workflow")
        }
        P::StylePresetRead | P::StylePresetWrite => {
            let sp = facts
                .preset(id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| DenyReason::NotFound(format!("Style preset {id} not found")))?;
            // 6.12 stores every preset as `system`: the guard's ledger may know the creator.
            let owner = if facts.schema().capability("scopes_preset_lists") == Some(true) {
                Some(sp.owner.clone())
            } else {
                ctx.ledger
                    .owner(Entry::StylePreset, id)
                    .await
                    .map_err(unavailable)?
            };
            let allowed = match (predicate, owner.as_deref()) {
                (P::StylePresetRead, Some(o)) => sp.kind == "default" || sp.is_public || o == uid,
                // Unknown creator (6.12): from before the guard, readable by all and writable by
                // admins; created since (an orphan), admins only.
                (P::StylePresetRead, None) => {
                    sp.kind == "default" || ctx.ledger.is_legacy(&sp.created_at)
                }
                (_, Some(o)) => sp.kind != "default" && o == uid,
                (_, None) => false,
            };
            ok_or_forbidden(allowed, "Not authorized to access this style preset")
        }
        P::QueueItemOwn | P::QueueItemOwnRoot => {
            let item_id: i64 = id.parse().map_err(|_| {
                DenyReason::Unprocessable(format!("queue item id '{id}' is not an integer"))
            })?;
            let item = facts
                .queue_item(item_id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    DenyReason::NotFound(format!("Queue item with id {item_id} not found"))
                })?;
            let owner = if predicate == P::QueueItemOwn {
                &item.owner
            } else {
                &item.root_owner
            };
            ok_or_forbidden(owner == uid, "Not authorized to modify this queue item")
        }
        P::SystemPromptRead | P::SystemPromptOwn => {
            let sp = facts
                .system_prompt(id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| DenyReason::NotFound(format!("System prompt {id} not found")))?;
            let allowed = sp.owner == uid || (predicate == P::SystemPromptRead && sp.is_public);
            ok_or_forbidden(allowed, "Not authorized to access this system prompt")
        }
        P::BulkDownloadOwn => {
            let owner = ctx
                .ledger
                .owner(Entry::BulkDownload, id)
                .await
                .map_err(unavailable)?;
            ok_or_forbidden(
                owner.as_deref() == Some(uid),
                "Not authorized to access this download",
            )
        }
        other => unreachable!("{} is not a resource predicate", other.name()),
    }
}

fn ok_or_forbidden(allowed: bool, detail: &str) -> Outcome {
    if allowed {
        Ok(())
    } else {
        Err(forbidden(detail))
    }
}

fn media_check(
    predicate: Predicate,
    fact: Option<ImageFact>,
    me: &str,
    kind: &str,
    id: &str,
) -> Outcome {
    let denied = || forbidden(format!("Not authorized to access {kind} {id}"));
    let Some(img) = fact else {
        // Main answers 403 (not 404) for unknown images to non-admins: no existence oracle.
        return Err(denied());
    };
    let allowed = match predicate {
        Predicate::ImageRead => image_readable(&img, me),
        Predicate::ImageWrite => image_writable(&img, me),
        Predicate::ImageOwn => img.owner == me,
        // Moving an image off a board needs write access to that board; no board, nothing to guard.
        _ => img.board.as_ref().is_none_or(|b| board_writable(b, me)),
    };
    if allowed {
        Ok(())
    } else {
        Err(denied())
    }
}

/// Walk an enqueue_batch `batch`: every `image_name` must be readable, every node `board`
/// writable (closes hole 5: queue-time authorization absent before main).
async fn enqueue_allowed(batch: &Value, me: &Principal, ctx: &Context<'_>) -> Outcome {
    let mut media = Vec::new();
    let mut boards = Vec::new();
    for part in ["graph", "data"] {
        if let Some(v) = batch.get(part) {
            collect_refs(v, &mut media, &mut boards);
        }
    }
    for (predicate, name) in media {
        resource_check(predicate, &name, me, ctx).await?;
    }
    for board in boards {
        if board != "none" {
            resource_check(Predicate::BoardWrite, &board, me, ctx).await?;
        }
    }
    Ok(())
}

fn collect_refs(v: &Value, media: &mut Vec<(Predicate, String)>, boards: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("image_name", Value::String(s)) => {
                        media.push((Predicate::ImageRead, s.clone()))
                    }
                    ("video_name", Value::String(s)) => {
                        media.push((Predicate::VideoRead, s.clone()))
                    }
                    ("board", Value::Object(b)) => {
                        if let Some(Value::String(id)) = b.get("board_id") {
                            boards.push(id.clone());
                        }
                    }
                    _ => collect_refs(value, media, boards),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, media, boards)),
        _ => {}
    }
}
