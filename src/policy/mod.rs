//! Rule evaluation: `decide` is a pure function of the rule, the request data, the caller and a
//! fact source (InvokeAI main's semantics, spec §0). `serve`, `explain` and `test` share it.
//!
//! Invariants:
//! - A rule allows only when every check holds; the first failing check decides the denial and
//!   is the last entry of the verdict's trace.
//! - Any error reading facts is `Deny(Unavailable)` (503), never an allow.
//! - Whether admins skip a check is the predicate's descriptor (`AdminRule`), never the order of
//!   match arms: resource checks are true for admins without touching the database; account
//!   protection and request-shape checks apply to admins too.
//! - Evaluation matches every predicate explicitly (no catch-all arm, no `unreachable!`).
//! - A selector with `[]` makes the check hold for every element; an empty list holds.
//! - Traces never carry query values or passwords (see [`arg_trace`]).

mod accounts;
pub mod models;
mod resources;

use std::collections::HashMap;

use serde_json::Value;

use crate::decision::{ArgTrace, CheckResult, CheckTrace, Decision, DenyReason, Stage, Verdict};
use crate::facts::ledger::Ledger;
use crate::facts::{Facts, FactsError};
use crate::identity::Principal;
use crate::rules::vocab::{AdminRule, Predicate};
use crate::rules::{Arg, Check, Rule, Selector, Source, Step};

pub use accounts::lax_bool;

/// Request data the checks read.
#[derive(Debug, Default)]
pub struct RequestData {
    /// Path parameters, percent-decoded once.
    pub path: HashMap<String, String>,
    /// The parsed query.
    pub query: crate::http::canonical::Query,
    /// The JSON body (only what the rule reads), when the rule reads `body.*`.
    pub body: Option<Value>,
    /// Multipart text fields, when the rule reads `form.*`.
    pub form: HashMap<String, String>,
    /// Batches scanned for model references and item counts, by selector (`body.batch`), for
    /// checks that read the groups file's `[models]`/`[quotas]` (only when those are set).
    pub batches: Vec<(String, crate::http::batch::BatchScan)>,
    /// Quota reservations taken by the checks, held until [`RequestData::settle`] (or drop).
    pub holds: models::Holds,
    /// The request is the web UI's own `fetch` (Fetch Metadata `Sec-Fetch-Site: same-origin`,
    /// `Sec-Fetch-Mode: cors`): model and quota refusals are then worded for its error toast
    /// ([`DenyReason::ShownInUi`]); the decision is the same.
    pub web_ui: bool,
}

impl RequestData {
    /// Fill `body`/`form` from a buffered request body, as the rule reads it.
    pub async fn fill(
        &mut self,
        rule: &Rule,
        bytes: &bytes::Bytes,
        headers: &http::HeaderMap,
    ) -> Result<(), DenyReason> {
        use crate::http::body;
        let fetch = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        self.web_ui = fetch("sec-fetch-site") == Some("same-origin")
            && fetch("sec-fetch-mode") == Some("cors");
        match rule.body {
            crate::rules::BodyNeed::None => {}
            crate::rules::BodyNeed::Json => self.body = body::json(bytes, &rule.json_plan)?,
            crate::rules::BodyNeed::Multipart => self.form = body::form(bytes, headers).await?,
        }
        self.scan_batches(rule, bytes)
    }

    /// Scan the batches the rule's model and quota checks read (a second, streaming pass over
    /// the body; skipped when the groups file sets neither section). A batch that cannot be read
    /// completely is refused (422), never forwarded unchecked.
    fn scan_batches(&mut self, rule: &Rule, bytes: &bytes::Bytes) -> Result<(), DenyReason> {
        for check in &rule.checks {
            let configured = check
                .access
                .as_ref()
                .is_some_and(|a| a.models.is_some() || a.quotas.is_some());
            if check.predicate.info().body != crate::rules::vocab::BodyUse::Batch || !configured {
                continue;
            }
            for arg in &check.args {
                let Arg::Select(sel) = arg else { continue };
                if sel.source != Source::Body || self.batches.iter().any(|(t, _)| *t == sel.text) {
                    continue;
                }
                let path: Vec<&str> = sel
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        Step::Field(f) => Some(f.as_str()),
                        Step::Each => None,
                    })
                    .collect();
                let scan = crate::http::batch::scan(bytes, &path).map_err(|e| {
                    crate::metrics::generation_refused("unreadable_batch");
                    DenyReason::Unprocessable(format!("{}: {e}", sel.text))
                })?;
                if let Some(scan) = scan {
                    self.batches.push((sel.text.clone(), scan));
                }
            }
        }
        Ok(())
    }

    /// The upstream answered (`accepted`: with a 2xx): release the quota reservations the checks
    /// took, remembering accepted items for the rolling windows. Call after facts were
    /// invalidated; dropping the data releases them too, without remembering anything.
    pub fn settle(&self, accepted: bool) {
        self.holds.settle(accepted);
    }

    fn batch(&self, check: &Check) -> Option<&crate::http::batch::BatchScan> {
        check.args.iter().find_map(|a| match a {
            Arg::Select(sel) => self
                .batches
                .iter()
                .find(|(t, _)| *t == sel.text)
                .map(|(_, scan)| scan),
            _ => None,
        })
    }
}

/// Where checks read facts: InvokeAI's database (read-only, cached) and the guard's ledger.
#[derive(Clone, Copy)]
pub struct FactSource<'a> {
    pub facts: &'a Facts,
    pub ledger: &'a Ledger,
}

type Outcome = Result<(), DenyReason>;

fn forbidden(detail: impl Into<String>) -> DenyReason {
    DenyReason::Forbidden(detail.into())
}

fn unavailable(e: FactsError) -> DenyReason {
    DenyReason::Unavailable(e.to_string())
}

/// The rule's `auth = "admin"` requirement (checked before any body is read).
pub fn admin_route_denial(rule: &Rule, principal: Option<&Principal>) -> Option<DenyReason> {
    match (rule.auth, principal) {
        (crate::rules::Auth::Admin, Some(p)) if !p.is_admin => {
            Some(forbidden("Admin privileges required"))
        }
        _ => None,
    }
}

/// A media predicate (`image.read`, `image.write`, …) decided on an image fact already read:
/// the same rule as the check, for lists decided from one read. Admins pass (resource checks).
pub fn media_permits(
    predicate: Predicate,
    fact: Option<crate::facts::ImageFact>,
    principal: &Principal,
) -> bool {
    (principal.is_admin && predicate.info().admin == AdminRule::Exempt)
        || resources::media_permits(predicate, fact, &principal.user_id)
}

/// Evaluate a rule's checks in order.
pub async fn decide(
    rule: &Rule,
    data: &RequestData,
    principal: Option<&Principal>,
    src: FactSource<'_>,
) -> Verdict {
    if let Some(reason) = admin_route_denial(rule, principal) {
        return Verdict::early(Stage::Auth, reason);
    }
    let mut checks = Vec::with_capacity(rule.checks.len());
    for check in &rule.checks {
        let trace = evaluate(check, data, principal, src).await;
        let failed = match &trace.result {
            CheckResult::Failed(reason) => Some(reason.clone()),
            _ => None,
        };
        checks.push(trace);
        if let Some(reason) = failed {
            return Verdict {
                decision: Decision::Deny(reason),
                stage: Stage::Check,
                checks,
            };
        }
    }
    Verdict {
        decision: Decision::Allow,
        stage: Stage::Check,
        checks,
    }
}

/// Evaluate one check and record what it read.
async fn evaluate(
    check: &Check,
    data: &RequestData,
    principal: Option<&Principal>,
    src: FactSource<'_>,
) -> CheckTrace {
    let info = check.predicate.info();
    let mut trace = CheckTrace {
        check: check.text.clone(),
        predicate: info.name,
        args: Vec::new(),
        facts: Vec::new(),
        result: CheckResult::Held,
    };
    if let Some(cap) = check.unless_upstream {
        if src.facts.schema().has(cap) {
            trace.result = CheckResult::UpstreamEnforces(cap);
            return trace;
        }
    }
    let mut values = Vec::with_capacity(check.args.len());
    for arg in &check.args {
        match resolve(arg, data) {
            Ok(v) => {
                trace.args.push(arg_trace(arg, &v));
                values.push(v);
            }
            Err(reason) => {
                trace.result = CheckResult::Failed(reason);
                return trace;
            }
        }
    }
    let result = match principal {
        Some(me) if me.is_admin && info.admin == AdminRule::Exempt => {
            trace.facts.push("caller is admin".into());
            trace.result = CheckResult::AdminExempt;
            return trace;
        }
        // Model access and quotas: the groups file's sections, bound into the check.
        Some(me) if info.access => {
            access_check(check, &values, data, me, src, &mut trace.facts).await
        }
        Some(me) => apply(check.predicate, &values, me, src, &mut trace.facts).await,
        None => accounts::anonymous(check.predicate, &values),
    };
    trace.result = match result {
        Ok(()) => CheckResult::Held,
        Err(reason) => CheckResult::Failed(reason),
    };
    trace
}

/// The checks that read the groups file's `[models]` and `[quotas]` (see [`models`]).
async fn access_check(
    check: &Check,
    args: &[Selected],
    data: &RequestData,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    use Predicate as P;
    let Some(access) = check.access.as_deref() else {
        // Not bound (cannot happen for a compiled table): deny, never allow.
        return Err(DenyReason::Unavailable(format!(
            "{} has no access sections bound",
            check.predicate.name()
        )));
    };
    let f = src.facts;
    let outcome = match check.predicate {
        P::EnqueueModelsAllowed => {
            models::enqueue_models_allowed(access, data.batch(check), me, f, facts).await
        }
        P::EnqueueWithinQuota => {
            let demand = data.batch(check).map(models::Demand::of_batch);
            models::within_quota(access, demand, me, data, f, facts).await
        }
        P::RetryModelsAllowed => models::retry_models_allowed(access, &args[0], me, f, facts).await,
        P::RetryWithinQuota => {
            let demand = if access.quotas.is_some() {
                Some(models::retry_demand(&args[0], f).await?)
            } else {
                None
            };
            models::within_quota(access, demand, me, data, f, facts).await
        }
        P::ModelUsable | P::ModelVisible => {
            models::model_check(check.predicate, access, &args[0], me, f, facts).await
        }
        P::ModelUsableByName => models::usable_by_name(access, &args[0], me, f, facts).await,
        // Not access checks (see `apply`): a denial, never an allow, if they ever came here.
        P::Authenticated
        | P::Admin
        | P::ImageRead
        | P::ImageWrite
        | P::ImageOwn
        | P::ImageBoardWrite
        | P::ImageWriteOwner
        | P::ImageBoardWriteOwner
        | P::BoardRead
        | P::BoardWrite
        | P::BoardOwn
        | P::WorkflowRead
        | P::WorkflowOwn
        | P::StylePresetRead
        | P::StylePresetWrite
        | P::QueueItemOwn
        | P::QueueItemOwnRoot
        | P::VideoRead
        | P::VideoWrite
        | P::VideoOwn
        | P::VideoBoardWrite
        | P::VideoWriteOwner
        | P::VideoBoardWriteOwner
        | P::SystemPromptRead
        | P::SystemPromptOwn
        | P::BulkDownloadOwn
        | P::EnqueueAllowed
        | P::EnqueueAllowedOwner
        | P::ImagesListScoped
        | P::UserUpdateAllowed
        | P::UserNotSystem
        | P::UserKeepsAnAdmin
        | P::LoginNotSystem
        | P::AdminIfEq
        | P::AdminIfTrue
        | P::AdminUnlessUpstream
        | P::CallerOr
        | P::CallerIn
        | P::QueueDefault => Err(DenyReason::Unavailable(format!(
            "{} does not read the access sections",
            check.predicate.name()
        ))),
    };
    // The web UI shows an enqueue error's text only in one shape (see DenyReason::ShownInUi); the
    // shape is presentation only, chosen from headers a client may forge without gaining anything.
    let queues = matches!(
        check.predicate,
        P::EnqueueModelsAllowed
            | P::EnqueueWithinQuota
            | P::RetryModelsAllowed
            | P::RetryWithinQuota
    );
    outcome.map_err(|reason| match reason {
        DenyReason::Forbidden(detail) if queues && data.web_ui => DenyReason::ShownInUi {
            status: 403,
            detail,
            retry_after: None,
        },
        DenyReason::TooManyRequests {
            detail,
            retry_after,
        } if data.web_ui => DenyReason::ShownInUi {
            status: 429,
            detail,
            retry_after: Some(retry_after),
        },
        other => other,
    })
}

/// Every predicate, for an identified caller.
async fn apply(
    predicate: Predicate,
    args: &[Selected],
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    use Predicate as P;
    match predicate {
        P::Authenticated => Ok(()),
        P::Admin => accounts::admin(me, facts),
        P::QueueDefault => accounts::queue_default(args),
        P::UserUpdateAllowed => accounts::user_update_allowed(args),
        P::UserNotSystem => accounts::user_not_system(args),
        P::UserKeepsAnAdmin => accounts::keeps_an_admin(args, src, facts).await,
        P::LoginNotSystem => accounts::login_not_system(&args[0]),
        P::AdminIfEq => accounts::admin_if_eq(args, me, facts),
        P::AdminIfTrue => accounts::admin_if_true(args, me, src, facts),
        P::AdminUnlessUpstream => accounts::admin_unless_upstream(args, me, src, facts),
        P::CallerOr => accounts::caller_or(args, me),
        P::CallerIn => accounts::caller_in(args, me, facts),
        // Dispatched by `access_check` (their descriptor reads the access sections): a denial,
        // never an allow, if they ever reached here.
        P::EnqueueModelsAllowed
        | P::EnqueueWithinQuota
        | P::RetryModelsAllowed
        | P::RetryWithinQuota
        | P::ModelUsable
        | P::ModelVisible
        | P::ModelUsableByName => Err(DenyReason::Unavailable(format!(
            "{} is evaluated with the access sections",
            predicate.name()
        ))),
        P::ImagesListScoped => accounts::images_list_scoped(args, src, facts),
        P::EnqueueAllowed | P::EnqueueAllowedOwner => {
            // `_owner`: node boards must be the caller's own, a public board is not enough.
            let public_writable = predicate == P::EnqueueAllowed;
            for batch in args[0].items() {
                resources::enqueue_allowed(batch, public_writable, me, src, facts).await?;
            }
            Ok(())
        }
        P::ImageRead
        | P::ImageWrite
        | P::ImageOwn
        | P::ImageBoardWrite
        | P::ImageWriteOwner
        | P::ImageBoardWriteOwner
        | P::VideoRead
        | P::VideoWrite
        | P::VideoOwn
        | P::VideoBoardWrite
        | P::VideoWriteOwner
        | P::VideoBoardWriteOwner
        | P::BoardRead
        | P::BoardWrite
        | P::BoardOwn
        | P::WorkflowRead
        | P::WorkflowOwn
        | P::StylePresetRead
        | P::StylePresetWrite
        | P::QueueItemOwn
        | P::QueueItemOwnRoot
        | P::SystemPromptRead
        | P::SystemPromptOwn
        | P::BulkDownloadOwn => {
            for value in args[0].items() {
                let id = as_id(value)?;
                resources::check(predicate, &id, me, src, facts).await?;
            }
            Ok(())
        }
    }
}

/// The values an argument selects.
#[derive(Debug, Clone)]
pub enum Selected {
    /// An optional value that is absent.
    Absent,
    One(Value),
    Each(Vec<Value>),
    /// A capability argument.
    Capability(crate::rules::vocab::Capability),
    /// A group argument (bound from the groups file).
    Group(std::sync::Arc<crate::rules::groups::Members>),
}

impl Selected {
    fn items(&self) -> Vec<&Value> {
        match self {
            Selected::Absent | Selected::Capability(_) | Selected::Group(_) => Vec::new(),
            Selected::One(v) => vec![v],
            Selected::Each(vs) => vs.iter().collect(),
        }
    }

    fn single(&self) -> Option<&Value> {
        match self {
            Selected::One(v) => Some(v),
            Selected::Absent | Selected::Each(_) | Selected::Capability(_) | Selected::Group(_) => {
                None
            }
        }
    }
}

/// How an argument appears in a trace: query values and passwords are never shown.
fn arg_trace(arg: &Arg, value: &Selected) -> ArgTrace {
    let (selector, hidden) = match arg {
        Arg::Select(sel) => (
            sel.text.clone(),
            matches!(sel.source, Source::Query(_)) || sel.text.contains("password"),
        ),
        Arg::Literal(l) => (format!("\"{l}\""), false),
        Arg::Capability(c) => (format!("\"{}\"", c.name()), false),
        Arg::Group { name, .. } => (format!("\"{name}\""), false),
    };
    let shown = |v: &Value| {
        let mut text = v.to_string();
        if text.len() > 120 {
            text.truncate(117);
            text.push_str("...");
        }
        text
    };
    let value = match value {
        Selected::Absent => "(absent)".into(),
        _ if hidden => "(hidden)".into(),
        Selected::One(v) => shown(v),
        Selected::Each(vs) => format!("[{} item(s)]", vs.len()),
        Selected::Capability(c) => c.name().into(),
        Selected::Group(members) => format!("group of {} member(s)", members.len()),
    };
    ArgTrace { selector, value }
}

fn resolve(arg: &Arg, data: &RequestData) -> Result<Selected, DenyReason> {
    let sel = match arg {
        Arg::Literal(s) => return Ok(Selected::One(Value::String(s.clone()))),
        Arg::Capability(c) => return Ok(Selected::Capability(*c)),
        Arg::Group { members, .. } => return Ok(Selected::Group(members.clone())),
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
                use crate::http::jsonplan::{self, JsonPlan, Keep, PathStep};
                let mut plan = JsonPlan::default();
                plan.add(
                    sel.steps.iter().map(|s| match s {
                        Step::Field(f) => PathStep::Field(f),
                        Step::Each => PathStep::Each,
                    }),
                    Keep::Whole,
                );
                parsed_form = Some(jsonplan::parse(text.as_bytes(), &plan).map_err(|_| {
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
