//! Account protection and request-shape checks: evaluated for admins too (they guard what a
//! request does, not who may read what).

use serde_json::Value;

use super::{as_id, forbidden, FactSource, Outcome, Selected};
use crate::decision::Refusal;
use crate::identity::Principal;
use crate::rules::vocab::{Account, Capability, Predicate};

const SYSTEM_PROTECTED: &str = "The system user is protected and cannot be modified";

/// A boolean as pydantic's lax mode reads it (JSON booleans, `0`/`1` and `0.0`/`1.0`, and the
/// strings `0 off f false n no` / `1 on t true y yes` in any case); `None` when absent or null.
/// Anything else is refused (422), as pydantic refuses it: never guessed.
pub fn lax_bool(v: Option<&Value>) -> Result<Option<bool>, Refusal> {
    let bad = || Refusal::Unprocessable("Input should be a valid boolean".into());
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Ok(Some(false)),
            Some(1.0) => Ok(Some(true)),
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

fn admin_only(me: &Principal, facts: &mut Vec<String>) -> Outcome {
    facts.push(format!("caller is_admin={}", me.is_admin));
    if me.is_admin {
        Ok(())
    } else {
        Err(forbidden("Admin privileges required"))
    }
}

/// Checks that hold without a caller (public rules).
pub(super) fn anonymous(predicate: Predicate, args: &[Selected]) -> Outcome {
    let needs_caller = || Err(Refusal::Unauthenticated("Authentication required".into()));
    match predicate {
        Predicate::Account(Account::LoginNotSystem) => login_not_system(&args[0]),
        // Every other check needs a caller: refuse rather than guess.
        Predicate::Resource(_) | Predicate::Batch(_) | Predicate::Model(_) => needs_caller(),
        Predicate::Account(
            Account::Authenticated
            | Account::Admin
            | Account::ImagesListScoped
            | Account::UserUpdateAllowed
            | Account::UserNotSystem
            | Account::UserKeepsAnAdmin
            | Account::AdminIfEq
            | Account::AdminIfTrue
            | Account::AdminUnlessUpstream
            | Account::CallerOr
            | Account::CallerIn
            | Account::QueueDefault,
        ) => needs_caller(),
    }
}

/// One account check, for an identified caller.
pub(super) async fn check(
    account: Account,
    args: &[Selected],
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    match account {
        Account::Authenticated => Ok(()),
        Account::Admin => admin_only(me, facts),
        Account::QueueDefault => queue_default(args),
        Account::UserUpdateAllowed => user_update_allowed(args),
        Account::UserNotSystem => user_not_system(args),
        Account::UserKeepsAnAdmin => keeps_an_admin(args, src, facts).await,
        Account::LoginNotSystem => login_not_system(&args[0]),
        Account::AdminIfEq => admin_if_eq(args, me, facts),
        Account::AdminIfTrue => admin_if_true(args, me, src, facts),
        Account::AdminUnlessUpstream => admin_unless_upstream(args, me, src, facts),
        Account::CallerOr => caller_or(args, me),
        Account::CallerIn => caller_in(args, me, facts),
        Account::ImagesListScoped => images_list_scoped(args, src, facts),
    }
}

/// `queue.default`: queue ids are Socket.IO room names upstream, so any other id lets a caller
/// emit events into rooms such as `admin` or `user:<id>` (room injection). Applies to admins too.
fn queue_default(args: &[Selected]) -> Outcome {
    match args[0].single().map(as_id).transpose()? {
        Some(q) if q != "default" => Err(forbidden(format!(
            "Queue '{q}' is not available (only 'default')"
        ))),
        _ => Ok(()),
    }
}

fn user_not_system(args: &[Selected]) -> Outcome {
    match args[0].single().map(as_id).transpose()? {
        Some(id) if id == "system" => Err(Refusal::BadRequest(SYSTEM_PROTECTED.into())),
        _ => Ok(()),
    }
}

fn admin_if_eq(args: &[Selected], me: &Principal, facts: &mut Vec<String>) -> Outcome {
    match (args[0].single(), args[1].single()) {
        (Some(v), Some(lit)) if v == lit => admin_only(me, facts),
        _ => Ok(()),
    }
}

fn admin_if_true(
    args: &[Selected],
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let upstream_handles = match args.get(1) {
        Some(Selected::Capability(cap)) => {
            let has = src.facts.schema().has(*cap);
            facts.push(format!("upstream.{}={has}", cap.name()));
            has
        }
        _ => false,
    };
    if lax_bool(args[0].single())? == Some(true) && !upstream_handles {
        admin_only(me, facts)
    } else {
        Ok(())
    }
}

/// `caller_or`: the value names the caller (or is the literal). Applies to admins too: it guards
/// whose data a request writes, not who may call.
fn caller_or(args: &[Selected], me: &Principal) -> Outcome {
    let value = args[0].single().map(as_id).transpose()?;
    let literal = args[1].single().and_then(Value::as_str);
    match value {
        Some(v) if v == me.user_id || Some(v.as_str()) == literal => Ok(()),
        None => Ok(()),
        Some(_) => Err(forbidden("Not authorized to write another user's data")),
    }
}

/// `caller.in("group")`: the caller is a member of the group (by user id or email).
fn caller_in(args: &[Selected], me: &Principal, facts: &mut Vec<String>) -> Outcome {
    let admitted = match args.first() {
        Some(Selected::Group(members)) => members.admits(&me.user_id, &me.email),
        // Not bound (cannot happen for a compiled table): deny, never allow.
        _ => false,
    };
    facts.push(format!("caller in group: {admitted}"));
    if admitted {
        Ok(())
    } else {
        Err(forbidden(
            "Not authorized for this operation (not in the required group)",
        ))
    }
}

fn admin_unless_upstream(
    args: &[Selected],
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    match args.first() {
        Some(Selected::Capability(cap)) if src.facts.schema().has(*cap) => {
            facts.push(format!("upstream.{}=true", cap.name()));
            Ok(())
        }
        _ => admin_only(me, facts),
    }
}

fn images_list_scoped(args: &[Selected], src: FactSource<'_>, facts: &mut Vec<String>) -> Outcome {
    let scoped = src.facts.schema().has(Capability::ScopesImageLists);
    facts.push(format!("upstream.scopes_image_lists={scoped}"));
    if matches!(args[0], Selected::Absent) && !scoped {
        Err(forbidden(
            "Listing images without board_id is not allowed on this InvokeAI version (use board_id=none)",
        ))
    } else {
        Ok(())
    }
}

fn login_not_system(email: &Selected) -> Outcome {
    match email.single() {
        Some(Value::String(e)) if e.trim().eq_ignore_ascii_case("system@system.invokeai") => Err(
            Refusal::Unauthenticated("Incorrect email or password".into()),
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
        Err(Refusal::BadRequest(SYSTEM_PROTECTED.into()))
    } else {
        Ok(())
    }
}

async fn keeps_an_admin(
    args: &[Selected],
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
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
    let row = src.facts.user(&target).await?;
    let active_admin = row.is_some_and(|r| r.is_admin && r.is_active);
    facts.push(format!("user {target}: active admin={active_admin}"));
    if !active_admin {
        return Ok(());
    }
    let admins = src.facts.active_admin_count().await?;
    facts.push(format!("active admins={admins}"));
    if admins <= 1 {
        Err(Refusal::BadRequest(
            "Cannot remove the last administrator".into(),
        ))
    } else {
        Ok(())
    }
}
