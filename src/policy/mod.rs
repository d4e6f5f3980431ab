//! Rule evaluation: [`decide`] is a function of the rule, the request data, the caller and a
//! fact source (InvokeAI main's semantics, spec §0); it reads facts and never writes. The
//! pipeline's request phase calls it, for `serve`, `explain` and `test` alike; the rule's
//! `auth = "admin"` is checked there first ([`admin_route_denial`], before any body is read).
//!
//! Invariants:
//! - A rule allows only when every check holds; the first failing check decides the refusal and
//!   is the last entry of the verdict's trace.
//! - Any error reading facts is a `Refusal::Unavailable` (503; `From<FactsError>`), never an
//!   allow.
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

use crate::decision::{ArgTrace, CheckResult, CheckTrace, Refusal, Stage, Verdict};
use crate::facts::ledger::Ledger;
use crate::facts::Facts;
use crate::identity::Principal;
use crate::rules::vocab::{AdminRule, Batch, Model, Predicate};
use crate::rules::{Arg, Check, Rule, Selector, Source, Step};

pub use crate::rules::PathParams;
pub use accounts::lax_bool;
pub use resources::Access;

/// Request data the checks read.
#[derive(Debug, Default)]
pub struct RequestData {
    /// Path parameters, percent-decoded once.
    pub path: PathParams,
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
    /// ([`Refusal::ShownInUi`]); the decision is the same.
    pub web_ui: bool,
}

impl RequestData {
    /// Fill `body`/`form` from a buffered request body, as the rule reads it.
    pub async fn fill(
        &mut self,
        rule: &Rule,
        bytes: &bytes::Bytes,
        headers: &http::HeaderMap,
    ) -> Result<(), Refusal> {
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
    fn scan_batches(&mut self, rule: &Rule, bytes: &bytes::Bytes) -> Result<(), Refusal> {
        for check in rule.all_checks() {
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
                    Refusal::Unprocessable(format!("{}: {e}", sel.text))
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

/// Where checks read facts: InvokeAI's database (read-only, cached) and the guard's ledger;
/// and how much of what they read the verdict keeps.
#[derive(Clone, Copy)]
pub struct FactSource<'a> {
    pub facts: &'a Facts,
    pub ledger: &'a Ledger,
    /// Keep everything every check read (`explain`: arguments, and the facts of checks that
    /// held). `serve` logs only the deciding check's facts, so it formats nothing else.
    pub keep_all: bool,
    /// The enforced decision of `serve`: only it takes quota reservations and counts refusals
    /// (`explain` and the candidate table compute the same verdict without either).
    pub enforce: bool,
}

type Outcome = Result<(), Refusal>;

fn forbidden(detail: impl Into<String>) -> Refusal {
    Refusal::Forbidden(detail.into())
}

/// The rule's `auth = "admin"` requirement (checked before any body is read).
pub fn admin_route_denial(rule: &Rule, principal: Option<&Principal>) -> Option<Refusal> {
    match (rule.auth, principal) {
        (crate::rules::Auth::Admin, Some(p)) if !p.is_admin => {
            Some(forbidden("Admin privileges required"))
        }
        _ => None,
    }
}

/// A media check (`image.read` is `Access::Read`, `image.write` is `Access::Write`, …) decided
/// on an image fact already read: the same rule as the check, for lists decided from one read.
/// Admins pass (resource checks).
pub fn media_permits(
    access: Access,
    fact: Option<&crate::facts::ImageFact>,
    principal: &Principal,
) -> bool {
    principal.is_admin || resources::media_permits(access, fact, &principal.user_id)
}

/// Evaluate a rule's requirements in order; within an `A or B` requirement, alternatives are
/// tried in order until one holds.
pub async fn decide(
    rule: &Rule,
    data: &RequestData,
    principal: Option<&Principal>,
    src: FactSource<'_>,
) -> Verdict {
    let mut verdict = Verdict {
        stage: Stage::Check,
        checks: Vec::with_capacity(rule.checks.len()),
        deciding: None,
    };
    for requirement in &rule.checks {
        let first = verdict.checks.len();
        let of = requirement.any_of.len();
        let mut held = false;
        for (i, check) in requirement.any_of.iter().enumerate() {
            let mut trace = evaluate(check, data, principal, src).await;
            trace.alternative = (of > 1).then_some((i + 1, of));
            held = !matches!(trace.result, CheckResult::Failed(_));
            verdict.checks.push(trace);
            if held {
                break;
            }
        }
        if !held {
            // None held: the first alternative's refusal answers (the resource check's 403/404
            // says more than a group's).
            verdict.deciding = Some(first);
            break;
        }
    }
    verdict
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
        predicate: check.predicate,
        args: Vec::new(),
        facts: Vec::new(),
        result: CheckResult::Held,
        alternative: None,
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
                if src.keep_all {
                    trace.args.push(arg_trace(arg, &v));
                }
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
        Some(me) => {
            let hide_id = check.args.first().is_some_and(hides_value);
            apply(check, &values, hide_id, data, me, src, &mut trace.facts).await
        }
        None => accounts::anonymous(check.predicate, &values),
    };
    trace.result = match result {
        Ok(()) => CheckResult::Held,
        Err(reason) => CheckResult::Failed(reason),
    };
    trace
}

/// Every predicate, for an identified caller. `hide_id`: the first argument's value must not
/// appear in the facts (a query value).
async fn apply(
    check: &Check,
    args: &[Selected],
    hide_id: bool,
    data: &RequestData,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    match check.predicate {
        Predicate::Model(model) => access_check(model, check, args, data, me, src, facts).await,
        Predicate::Account(account) => accounts::check(account, args, me, src, facts).await,
        Predicate::Batch(batch) => {
            // `_owner`: node boards must be the caller's own, a public board is not enough.
            let public_writable = batch == Batch::Allowed;
            for value in args[0].items() {
                resources::enqueue_allowed(value, public_writable, me, src, facts).await?;
            }
            Ok(())
        }
        Predicate::Resource(resource) => {
            for value in args[0].items() {
                let id = as_id(value)?;
                // The README's promise: query values are never logged (facts go to the log).
                let shown = if hide_id { QUERY_VALUE } else { id.as_str() };
                resources::check(resource, &id, shown, me, src, facts).await?;
            }
            Ok(())
        }
    }
}

/// The checks that read the groups file's `[models]` and `[quotas]` (see [`models`]).
async fn access_check(
    model: Model,
    check: &Check,
    args: &[Selected],
    data: &RequestData,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let Some(access) = check.access.as_deref() else {
        // Not bound (cannot happen for a compiled table): deny, never allow.
        return Err(Refusal::Unavailable(format!(
            "{} has no access sections bound",
            model.name()
        )));
    };
    let (f, enforce) = (src.facts, src.enforce);
    let outcome = match model {
        Model::EnqueueModelsAllowed => {
            models::enqueue_models_allowed(access, data.batch(check), me, f, facts, enforce).await
        }
        Model::EnqueueWithinQuota => {
            let demand = data.batch(check).map(models::Demand::of_batch);
            models::within_quota(access, demand, me, data, f, facts, enforce).await
        }
        Model::RetryModelsAllowed => {
            models::retry_models_allowed(access, &args[0], me, f, facts, enforce).await
        }
        Model::RetryWithinQuota => {
            let demand = if access.quotas.is_some() {
                Some(models::retry_demand(&args[0], f).await?)
            } else {
                None
            };
            models::within_quota(access, demand, me, data, f, facts, enforce).await
        }
        Model::Usable | Model::Visible => {
            models::model_check(model, access, &args[0], me, f, facts, enforce).await
        }
        Model::UsableByName => {
            models::usable_by_name(access, &args[0], me, f, facts, enforce).await
        }
    };
    // The web UI shows an enqueue error's text only in one shape (see Refusal::ShownInUi); the
    // shape is presentation only, chosen from headers a client may forge without gaining anything.
    let queues = matches!(
        model,
        Model::EnqueueModelsAllowed
            | Model::EnqueueWithinQuota
            | Model::RetryModelsAllowed
            | Model::RetryWithinQuota
    );
    outcome.map_err(|reason| match reason {
        Refusal::Forbidden(detail) if queues && data.web_ui => Refusal::ShownInUi {
            status: 403,
            detail,
            retry_after: None,
        },
        Refusal::TooManyRequests {
            detail,
            retry_after,
        } if data.web_ui => Refusal::ShownInUi {
            status: 429,
            detail,
            retry_after: Some(retry_after),
        },
        other => other,
    })
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

/// What the facts of a check say instead of an id that came from the query.
pub const QUERY_VALUE: &str = "(query value)";

/// Whether an argument's value is kept out of traces and facts: query values and passwords.
fn hides_value(arg: &Arg) -> bool {
    match arg {
        Arg::Select(sel) => sel.hidden,
        Arg::Literal(_) | Arg::Capability(_) | Arg::Group { .. } => false,
    }
}

/// How an argument appears in a trace: query values and passwords are never shown.
fn arg_trace(arg: &Arg, value: &Selected) -> ArgTrace {
    let hidden = hides_value(arg);
    let selector = match arg {
        Arg::Select(sel) => sel.text.clone(),
        Arg::Literal(l) => format!("\"{l}\""),
        Arg::Capability(c) => format!("\"{}\"", c.name()),
        Arg::Group { name, .. } => format!("\"{name}\""),
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

fn resolve(arg: &Arg, data: &RequestData) -> Result<Selected, Refusal> {
    let sel = match arg {
        Arg::Literal(s) => return Ok(Selected::One(Value::String(s.clone()))),
        Arg::Capability(c) => return Ok(Selected::Capability(*c)),
        Arg::Group { members, .. } => return Ok(Selected::Group(members.clone())),
        Arg::Select(sel) => sel,
    };
    let missing = |sel: &Selector| Refusal::Unprocessable(format!("Missing {}", sel.text));
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
                .map_err(|e| Refusal::BadRequest(e.to_string()))?
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
                parsed_form = Some(form_json(sel, name, text)?);
                parsed_form.as_ref()
            }
        },
    };
    match root.filter(|v| !v.is_null()) {
        Some(root) => walk(sel, root),
        None if sel.optional => Ok(Selected::Absent),
        None => Err(missing(sel)),
    }
}

/// A form field holding JSON, parsed keeping only the selected path (no amplification of a
/// large JSON field).
fn form_json(sel: &Selector, name: &str, text: &str) -> Result<Value, Refusal> {
    use crate::http::jsonplan::{self, JsonPlan, Keep, PathStep};
    let mut plan = JsonPlan::default();
    plan.add(
        sel.steps.iter().map(|s| match s {
            Step::Field(f) => PathStep::Field(f),
            Step::Each => PathStep::Each,
        }),
        Keep::Whole,
    );
    jsonplan::parse(text.as_bytes(), &plan)
        .map_err(|_| Refusal::Unprocessable(format!("form field '{name}' is not JSON")))
}

/// Follow a selector's steps from its root value.
fn walk(sel: &Selector, root: &Value) -> Result<Selected, Refusal> {
    let missing = |sel: &Selector| Refusal::Unprocessable(format!("Missing {}", sel.text));
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
                    return Err(Refusal::Unprocessable(format!(
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

fn as_id(v: &Value) -> Result<String, Refusal> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(Refusal::Unprocessable(
            "identifier has the wrong type".into(),
        )),
    }
}
