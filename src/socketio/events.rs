//! Who receives which server event (spec §4.3): a pure function of the event, the socket's
//! caller and at most one fact resolved beforehand ([`need`] says which).
//!
//! Invariants:
//! - Whatever room the upstream used, every frame is judged by its payload (room injection and
//!   spoofed queue ids change nothing).
//! - An event passes unchanged (byte for byte), passes redacted (re-serialized), or is dropped.
//!   Unknown events, unparseable frames and unattributable ones are dropped (fail closed).
//! - Queue-room deliveries (identity-free or sanitized) also need `queue_id == "default"` and a
//!   prior `subscribe_queue`.
//! - Sanitized companions keep only known fields (main's redaction, §3.3); a field the guard does
//!   not know is removed, never passed.

use serde_json::{Map, Value};

/// The socket's caller, as the last re-check saw them.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub user_id: &'a str,
    pub is_admin: bool,
    /// The client sent `subscribe_queue` for `default`.
    pub subscribed: bool,
}

/// A parsed server event `["name", {payload}]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub payload: Map<String, Value>,
}

/// Parse an EVENT packet's data: exactly a name and one object argument (InvokeAI's shape).
pub fn parse(data: &str) -> Option<Event> {
    let Value::Array(mut items) = serde_json::from_str(data).ok()? else {
        return None;
    };
    if items.len() != 2 {
        return None;
    }
    let payload = match items.pop()? {
        Value::Object(map) => map,
        _ => return None,
    };
    let name = items.pop()?.as_str()?.to_owned();
    Some(Event { name, payload })
}

/// The fact an event needs before it can be judged (resolved by the session, from the database
/// or the guard's ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// 6.12 `batch_enqueued` carries no `user_id`: the batch's owner.
    BatchOwner(String),
    /// 6.12/6.13 QISC name another user's running item in `queue_status`: that item's owner.
    ItemOwner(i64),
    /// 6.12/6.13 `model_load_*` carry no `user_id`: the owner(s) of the running item.
    InProgressOwners,
    /// 6.12 `bulk_download_*` carry no `user_id`: the requester the ledger recorded.
    BulkOwner(String),
    /// 6.12 `recall_parameters_updated` carries no `user_id`: the caller of the recall request.
    RecallOwner,
}

/// A resolved fact (`Owner(None)`: no owner known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    Nothing,
    Owner(Option<String>),
    Owners(Vec<String>),
}

/// What happens to an event for one socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Deliver the frame unchanged.
    Pass,
    /// Deliver this payload instead (the frame is re-serialized).
    Redact(Map<String, Value>),
    /// Do not deliver (the reason is a metric label).
    Drop(&'static str),
}

/// The `user_id` of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uid<'a> {
    /// The key is missing (6.12/6.13 events without an owner field).
    Absent,
    Null,
    Redacted,
    /// Legacy rows and system work: admins only in multiuser mode.
    System,
    User(&'a str),
}

fn uid(payload: &Map<String, Value>) -> Uid<'_> {
    match payload.get("user_id") {
        None => Uid::Absent,
        Some(Value::Null) => Uid::Null,
        Some(Value::String(s)) if s == "redacted" => Uid::Redacted,
        Some(Value::String(s)) if s == "system" => Uid::System,
        Some(Value::String(s)) => Uid::User(s),
        // A user_id of another type: unattributable.
        Some(_) => Uid::Null,
    }
}

fn str_field<'a>(payload: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    payload.get(key).and_then(Value::as_str)
}

/// Whether a queue-room delivery may reach this socket.
fn queue_room(ev: &Event, me: &Me) -> bool {
    me.subscribed && str_field(&ev.payload, "queue_id") == Some("default")
}

/// The family an event name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Invocation,
    Progress,
    QueueItemStatus,
    BatchEnqueued,
    QueueCleared,
    QueueItems,
    Recall,
    ModelLoad,
    AdminOnly,
    BulkDownload,
    LlmTask,
    WorkflowChange,
    WorkflowRevoked,
    Unknown,
}

fn family(name: &str) -> Family {
    match name {
        "invocation_started" | "invocation_complete" | "invocation_error" => Family::Invocation,
        "invocation_progress" => Family::Progress,
        "queue_item_status_changed" => Family::QueueItemStatus,
        "batch_enqueued" => Family::BatchEnqueued,
        "queue_cleared" => Family::QueueCleared,
        "queue_items_retried" | "queue_items_canceled" => Family::QueueItems,
        "recall_parameters_updated" => Family::Recall,
        "model_load_started" | "model_load_complete" => Family::ModelLoad,
        "bulk_download_started" | "bulk_download_complete" | "bulk_download_error" => {
            Family::BulkDownload
        }
        "llm_task_progress" | "llm_task_complete" | "llm_task_error" => Family::LlmTask,
        "workflow_created" | "workflow_updated" | "workflow_deleted" => Family::WorkflowChange,
        "workflow_access_revoked" => Family::WorkflowRevoked,
        // Server paths, URLs and the HuggingFace token: admins only (main parity).
        n if n.starts_with("download_") || n.starts_with("model_install_") => Family::AdminOnly,
        _ => Family::Unknown,
    }
}

/// The fact `decide` will need for this event and caller.
pub fn need(ev: &Event, me: &Me) -> Need {
    let p = &ev.payload;
    match (family(&ev.name), uid(p)) {
        (Family::BatchEnqueued, Uid::Absent) if !me.is_admin => match str_field(p, "batch_id") {
            Some(b) => Need::BatchOwner(b.to_owned()),
            None => Need::Nothing,
        },
        (Family::QueueItemStatus, Uid::User(u)) if u == me.user_id && !me.is_admin => {
            match (
                foreign_current_item(p),
                p.get("item_id").and_then(Value::as_i64),
            ) {
                (Some(current), Some(item)) if current != item => Need::ItemOwner(current),
                _ => Need::Nothing,
            }
        }
        (Family::ModelLoad, Uid::Absent) => Need::InProgressOwners,
        (Family::Recall, Uid::Absent) => Need::RecallOwner,
        (Family::BulkDownload, Uid::Absent) if !me.is_admin => {
            match str_field(p, "bulk_download_item_name") {
                Some(name) => Need::BulkOwner(name.to_owned()),
                None => Need::Nothing,
            }
        }
        _ => Need::Nothing,
    }
}

fn foreign_current_item(p: &Map<String, Value>) -> Option<i64> {
    p.get("queue_status")?.get("item_id")?.as_i64()
}

fn owned_or_admin(u: Uid<'_>, me: &Me) -> bool {
    match u {
        Uid::User(u) => u == me.user_id || me.is_admin,
        Uid::System => me.is_admin,
        Uid::Absent | Uid::Null | Uid::Redacted => false,
    }
}

/// Judge one event for one socket.
pub fn decide(ev: &Event, me: &Me, known: &Known) -> Action {
    let p = &ev.payload;
    let id = uid(p);
    match family(&ev.name) {
        Family::Invocation => keep_if(owned_or_admin(id, me), "not owner"),
        // Progress (with preview images) to its owner only: admins included (main).
        Family::Progress => keep_if(matches!(id, Uid::User(u) if u == me.user_id), "not owner"),
        Family::QueueItemStatus => queue_item_status(ev, me, known),
        Family::BatchEnqueued => batch_enqueued(ev, me, known),
        Family::QueueCleared => queue_cleared(ev, me),
        Family::QueueItems => queue_items(ev, me),
        // Every frontend applies recall parameters: the owner only, admins included; 6.12's
        // carry no owner: the caller of the recall request, or nobody when it is ambiguous.
        Family::Recall => match (id, known) {
            (Uid::Absent, Known::Owner(owner)) => {
                keep_if(owner.as_deref() == Some(me.user_id), "not owner")
            }
            (u, _) => keep_if(matches!(u, Uid::User(u) if u == me.user_id), "not owner"),
        },
        Family::ModelLoad => match (id, known) {
            (Uid::User(u), _) => keep_if(u == me.user_id, "not owner"),
            (Uid::Absent, Known::Owners(owners)) => {
                keep_if(owners.len() == 1 && owners[0] == me.user_id, "not owner")
            }
            _ => Action::Drop("unattributable"),
        },
        Family::AdminOnly => keep_if(me.is_admin, "admins only"),
        Family::BulkDownload => match (id, known) {
            (Uid::Absent, Known::Owner(owner)) => {
                keep_if(owner.as_deref() == Some(me.user_id), "not owner")
            }
            // Unknown requester: admins only.
            (Uid::Absent, _) => keep_if(me.is_admin, "unattributable"),
            (u, _) => keep_if(owned_or_admin(u, me), "not owner"),
        },
        Family::LlmTask => keep_if(owned_or_admin(id, me), "not owner"),
        Family::WorkflowChange => {
            let public_key = if ev.name == "workflow_updated" {
                "new_is_public"
            } else {
                "is_public"
            };
            let public = p.get(public_key).and_then(Value::as_bool) == Some(true);
            keep_if(public || owned_or_admin(id, me), "not owner")
        }
        Family::WorkflowRevoked => Action::Pass,
        Family::Unknown => Action::Drop("unknown event"),
    }
}

/// A queue item's status: to its owner (6.12/6.13: without another user's running item) and
/// admins whole; sanitized to the queue room's other subscribers.
fn queue_item_status(ev: &Event, me: &Me, known: &Known) -> Action {
    let p = &ev.payload;
    match uid(p) {
        Uid::Redacted => keep_if(queue_room(ev, me), "not subscribed"),
        u if owned_or_admin(u, me) => {
            if let (Known::Owner(owner), false) = (known, me.is_admin) {
                if owner.as_deref() != Some(me.user_id) {
                    // 6.12/6.13 name another user's running item: main nulls it.
                    return Action::Redact(without_current_item(p));
                }
            }
            Action::Pass
        }
        Uid::User(_) | Uid::System if queue_room(ev, me) => {
            Action::Redact(sanitized_item_status(p))
        }
        _ => Action::Drop("not owner"),
    }
}

/// A batch enqueued: to its owner and admins whole; sanitized to the queue room.
fn batch_enqueued(ev: &Event, me: &Me, known: &Known) -> Action {
    let (p, id) = (&ev.payload, uid(&ev.payload));
    let owned = match (id, known) {
        (Uid::Absent, Known::Owner(owner)) => owner.as_deref() == Some(me.user_id),
        (Uid::Absent, _) => me.is_admin,
        (u, _) => owned_or_admin(u, me),
    };
    match (owned, id) {
        (true, _) => Action::Pass,
        (false, Uid::Redacted) => keep_if(queue_room(ev, me), "not subscribed"),
        (false, _) if queue_room(ev, me) => Action::Redact(sanitized_batch(p)),
        (false, _) => Action::Drop("not owner"),
    }
}

/// A queue cleared: to whoever cleared it and admins; the room learns it, without the who.
fn queue_cleared(ev: &Event, me: &Me) -> Action {
    let p = &ev.payload;
    match uid(p) {
        Uid::Absent | Uid::Null | Uid::Redacted => keep_if(queue_room(ev, me), "not subscribed"),
        u if owned_or_admin(u, me) => Action::Pass,
        _ if queue_room(ev, me) => {
            let mut out = p.clone();
            out.insert("user_id".into(), Value::from("redacted"));
            Action::Redact(out)
        }
        _ => Action::Drop("not owner"),
    }
}

fn keep_if(keep: bool, why: &'static str) -> Action {
    if keep {
        Action::Pass
    } else {
        Action::Drop(why)
    }
}

/// QISC for its owner, with another user's running item removed from `queue_status`.
fn without_current_item(p: &Map<String, Value>) -> Map<String, Value> {
    let mut out = p.clone();
    if let Some(Value::Object(qs)) = out.get_mut("queue_status") {
        for key in ["item_id", "session_id", "batch_id"] {
            if qs.contains_key(key) {
                qs.insert(key.into(), Value::Null);
            }
        }
    }
    out
}

/// Keep the listed fields, set the others listed to a value, drop everything else.
fn allow_list(p: &Map<String, Value>, keep: &[&str], set: &[(&str, Value)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in p {
        if keep.contains(&key.as_str()) {
            out.insert(key.clone(), value.clone());
        } else if let Some((_, v)) = set.iter().find(|(k, _)| k == key) {
            out.insert(key.clone(), v.clone());
        }
    }
    out
}

const COUNTS: &[&str] = &[
    "pending",
    "in_progress",
    "waiting",
    "completed",
    "failed",
    "canceled",
    "total",
];

/// main's sanitized QISC companion (§3.3).
fn sanitized_item_status(p: &Map<String, Value>) -> Map<String, Value> {
    let r = || Value::from("redacted");
    let mut out = allow_list(
        p,
        &[
            "queue_id",
            "item_id",
            "status",
            "status_sequence",
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
            "timestamp",
        ],
        &[
            ("user_id", r()),
            ("batch_id", r()),
            ("session_id", r()),
            ("origin", Value::Null),
            ("destination", Value::Null),
            ("error_type", Value::Null),
            ("error_message", Value::Null),
            ("error_traceback", Value::Null),
        ],
    );
    if let Some(Value::Object(bs)) = p.get("batch_status") {
        let mut keep = vec!["queue_id"];
        keep.extend_from_slice(COUNTS);
        let bs = allow_list(
            bs,
            &keep,
            &[
                ("batch_id", r()),
                ("origin", Value::Null),
                ("destination", Value::Null),
            ],
        );
        out.insert("batch_status".into(), Value::Object(bs));
    }
    if let Some(Value::Object(qs)) = p.get("queue_status") {
        let mut keep = vec!["queue_id"];
        keep.extend_from_slice(COUNTS);
        let qs = allow_list(
            qs,
            &keep,
            &[
                ("item_id", Value::Null),
                ("session_id", Value::Null),
                ("batch_id", Value::Null),
                ("user_pending", Value::Null),
                ("user_in_progress", Value::Null),
            ],
        );
        out.insert("queue_status".into(), Value::Object(qs));
    }
    out
}

/// main's sanitized `batch_enqueued` (§3.3); 6.12's gets the `user_id` sentinel added.
fn sanitized_batch(p: &Map<String, Value>) -> Map<String, Value> {
    let mut out = allow_list(
        p,
        &["queue_id", "enqueued", "requested", "priority", "timestamp"],
        &[
            ("batch_id", Value::from("redacted")),
            ("origin", Value::Null),
        ],
    );
    out.insert("user_id".into(), Value::from("redacted"));
    out
}

/// `queue_items_retried` / `queue_items_canceled` (main): scoped to the caller's ids.
fn queue_items(ev: &Event, me: &Me) -> Action {
    let p = &ev.payload;
    if me.is_admin {
        return Action::Pass;
    }
    let prefix = if ev.name == "queue_items_retried" {
        "retried_item_ids"
    } else {
        "canceled_item_ids"
    };
    let by_user_key = format!("{prefix}_by_user");
    let users: Vec<&str> = p
        .get("user_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if users.is_empty() || users == [me.user_id] {
        return keep_if(
            users == [me.user_id] || queue_room(ev, me),
            "not subscribed",
        );
    }
    let mut out = allow_list(p, &["queue_id", "timestamp"], &[]);
    let mine = p
        .get(&by_user_key)
        .and_then(|m| m.get(me.user_id))
        .cloned()
        .filter(|_| users.contains(&me.user_id));
    match mine {
        Some(ids) => {
            out.insert(prefix.into(), ids.clone());
            out.insert("user_ids".into(), Value::from(vec![me.user_id]));
            let mut by_user = Map::new();
            by_user.insert(me.user_id.into(), ids);
            out.insert(by_user_key, Value::Object(by_user));
        }
        None if queue_room(ev, me) => {
            out.insert(prefix.into(), Value::Array(Vec::new()));
            out.insert("user_ids".into(), Value::Array(Vec::new()));
            out.insert(by_user_key, Value::Object(Map::new()));
        }
        None => return Action::Drop("not owner"),
    }
    Action::Redact(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALICE: &str = "alice-id";
    const BOB: &str = "bob-id";

    fn ev(name: &str, payload: Value) -> Event {
        Event {
            name: name.into(),
            payload: payload.as_object().unwrap().clone(),
        }
    }

    fn me(user_id: &str, is_admin: bool) -> Me<'_> {
        Me {
            user_id,
            is_admin,
            subscribed: true,
        }
    }

    fn qisc(owner: &str) -> Event {
        ev(
            "queue_item_status_changed",
            json!({"queue_id": "default", "item_id": 7, "batch_id": "b", "origin": "canvas",
                "destination": "gallery", "user_id": owner, "status": "failed", "status_sequence": 3,
                "error_type": "E", "error_message": "secret prompt", "error_traceback": "tb",
                "created_at": "t", "updated_at": "t", "started_at": "t", "completed_at": "t",
                "session_id": "s", "timestamp": 1, "new_field": "x",
                "batch_status": {"queue_id": "default", "batch_id": "b", "origin": "canvas",
                    "destination": "gallery", "pending": 0, "in_progress": 0, "completed": 0,
                    "failed": 1, "canceled": 0, "total": 1},
                "queue_status": {"queue_id": "default", "item_id": 7, "batch_id": "b",
                    "session_id": "s", "pending": 0, "in_progress": 1, "completed": 0, "failed": 0,
                    "canceled": 0, "total": 1, "user_pending": null, "user_in_progress": null}}),
        )
    }

    #[test]
    fn parse_takes_exactly_a_name_and_an_object() {
        assert!(parse("[\"x\",{}]").is_some());
        assert!(parse("[\"x\"]").is_none());
        assert!(parse("[\"x\",{},{}]").is_none());
        assert!(parse("[\"x\",1]").is_none());
        assert!(
            parse("[\"x\",{\"a\":NaN}]").is_none(),
            "Python's NaN is not JSON: dropped"
        );
    }

    #[test]
    fn invocation_events_reach_owner_and_admins_progress_only_the_owner() {
        let started = ev(
            "invocation_started",
            json!({"user_id": ALICE, "queue_id": "default"}),
        );
        assert_eq!(
            decide(&started, &me(ALICE, false), &Known::Nothing),
            Action::Pass
        );
        assert_eq!(
            decide(&started, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
        assert!(matches!(
            decide(&started, &me(BOB, false), &Known::Nothing),
            Action::Drop(_)
        ));
        let progress = ev(
            "invocation_progress",
            json!({"user_id": ALICE, "image": null}),
        );
        assert_eq!(
            decide(&progress, &me(ALICE, false), &Known::Nothing),
            Action::Pass
        );
        assert!(matches!(
            decide(&progress, &me("admin", true), &Known::Nothing),
            Action::Drop(_)
        ));
        let system = ev("invocation_started", json!({"user_id": "system"}));
        assert!(matches!(
            decide(&system, &me(BOB, false), &Known::Nothing),
            Action::Drop(_)
        ));
        assert_eq!(
            decide(&system, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
    }

    #[test]
    fn foreign_item_status_is_main_sanitized_and_unknown_fields_dropped() {
        let e = qisc(ALICE);
        let Action::Redact(out) = decide(&e, &me(BOB, false), &Known::Nothing) else {
            panic!("expected a sanitized companion");
        };
        assert_eq!(out["user_id"], "redacted");
        assert_eq!(out["batch_id"], "redacted");
        assert_eq!(out["session_id"], "redacted");
        assert_eq!(out["error_message"], Value::Null);
        assert_eq!(out["origin"], Value::Null);
        assert_eq!(out["status"], "failed");
        assert_eq!(out["item_id"], 7);
        assert!(!out.contains_key("new_field"));
        assert_eq!(out["batch_status"]["batch_id"], "redacted");
        assert_eq!(out["batch_status"]["failed"], 1);
        assert_eq!(out["queue_status"]["item_id"], Value::Null);
        assert_eq!(out["queue_status"]["in_progress"], 1);
        // Not subscribed to the queue: nothing.
        let unsubscribed = Me {
            subscribed: false,
            ..me(BOB, false)
        };
        assert!(matches!(
            decide(&e, &unsubscribed, &Known::Nothing),
            Action::Drop(_)
        ));
        // The owner and admins get it whole.
        assert_eq!(decide(&e, &me(ALICE, false), &Known::Nothing), Action::Pass);
        assert_eq!(
            decide(&e, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
    }

    #[test]
    fn owner_does_not_learn_another_users_running_item() {
        let mut e = qisc(ALICE);
        e.payload["queue_status"]["item_id"] = json!(9);
        assert_eq!(need(&e, &me(ALICE, false)), Need::ItemOwner(9));
        let Action::Redact(out) = decide(&e, &me(ALICE, false), &Known::Owner(Some(BOB.into())))
        else {
            panic!("expected redaction");
        };
        assert_eq!(out["queue_status"]["item_id"], Value::Null);
        assert_eq!(
            out["error_message"], "secret prompt",
            "the owner keeps her own error"
        );
        assert_eq!(
            decide(&e, &me(ALICE, false), &Known::Owner(Some(ALICE.into()))),
            Action::Pass
        );
    }

    #[test]
    fn batch_enqueued_without_owner_field_uses_the_database() {
        let e = ev(
            "batch_enqueued",
            json!({"queue_id": "default", "batch_id": "b1", "enqueued": 1, "requested": 1,
                "priority": 0, "origin": "canvas", "timestamp": 1}),
        );
        assert_eq!(need(&e, &me(BOB, false)), Need::BatchOwner("b1".into()));
        assert_eq!(
            decide(&e, &me(ALICE, false), &Known::Owner(Some(ALICE.into()))),
            Action::Pass
        );
        let Action::Redact(out) = decide(&e, &me(BOB, false), &Known::Owner(Some(ALICE.into())))
        else {
            panic!("expected sanitized");
        };
        assert_eq!(out["user_id"], "redacted");
        assert_eq!(out["batch_id"], "redacted");
        assert_eq!(out["origin"], Value::Null);
        assert_eq!(out["enqueued"], 1);
        assert_eq!(need(&e, &me("admin", true)), Need::Nothing);
        assert_eq!(
            decide(&e, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
    }

    #[test]
    fn admin_only_and_owner_only_families() {
        let install = ev(
            "model_install_download_progress",
            json!({"source": {"access_token": "hf_x"}}),
        );
        assert!(matches!(
            decide(&install, &me(BOB, false), &Known::Nothing),
            Action::Drop(_)
        ));
        assert_eq!(
            decide(&install, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
        let recall = ev(
            "recall_parameters_updated",
            json!({"user_id": ALICE, "parameters": {}}),
        );
        assert_eq!(
            decide(&recall, &me(ALICE, false), &Known::Nothing),
            Action::Pass
        );
        assert!(matches!(
            decide(&recall, &me("admin", true), &Known::Nothing),
            Action::Drop(_)
        ));
        let old_recall = ev("recall_parameters_updated", json!({"parameters": {}}));
        assert!(matches!(
            decide(&old_recall, &me(ALICE, false), &Known::Nothing),
            Action::Drop(_)
        ));
        let unknown = ev("something_new", json!({}));
        assert_eq!(
            decide(&unknown, &me("admin", true), &Known::Nothing),
            Action::Drop("unknown event")
        );
    }

    #[test]
    fn model_loads_and_bulk_downloads_on_old_upstreams() {
        let load = ev(
            "model_load_started",
            json!({"config": {"path": "/models/x"}}),
        );
        assert_eq!(need(&load, &me(ALICE, false)), Need::InProgressOwners);
        let one = Known::Owners(vec![ALICE.into()]);
        assert_eq!(decide(&load, &me(ALICE, false), &one), Action::Pass);
        assert!(matches!(
            decide(&load, &me(BOB, false), &one),
            Action::Drop(_)
        ));
        assert!(matches!(
            decide(&load, &me("admin", true), &one),
            Action::Drop(_)
        ));
        let none = Known::Owners(vec![]);
        assert!(matches!(
            decide(&load, &me(ALICE, false), &none),
            Action::Drop(_)
        ));
        let bulk = ev(
            "bulk_download_complete",
            json!({"bulk_download_id": "default", "bulk_download_item_name": "z.zip"}),
        );
        assert_eq!(
            need(&bulk, &me(BOB, false)),
            Need::BulkOwner("z.zip".into())
        );
        let alice = Known::Owner(Some(ALICE.into()));
        assert_eq!(decide(&bulk, &me(ALICE, false), &alice), Action::Pass);
        assert!(matches!(
            decide(&bulk, &me(BOB, false), &alice),
            Action::Drop(_)
        ));
        assert!(matches!(
            decide(&bulk, &me(BOB, false), &Known::Owner(None)),
            Action::Drop(_)
        ));
        assert_eq!(
            decide(&bulk, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
    }

    #[test]
    fn queue_items_are_scoped_to_the_caller() {
        let e = ev(
            "queue_items_canceled",
            json!({"queue_id": "default", "canceled_item_ids": [1, 2, 3], "user_ids": [ALICE, BOB],
                "canceled_item_ids_by_user": {ALICE: [1, 2], BOB: [3]}, "timestamp": 1}),
        );
        let Action::Redact(out) = decide(&e, &me(BOB, false), &Known::Nothing) else {
            panic!()
        };
        assert_eq!(out["canceled_item_ids"], json!([3]));
        assert_eq!(out["user_ids"], json!([BOB]));
        let Action::Redact(out) = decide(&e, &me("carol", false), &Known::Nothing) else {
            panic!()
        };
        assert_eq!(out["canceled_item_ids"], json!([]));
        assert_eq!(out["canceled_item_ids_by_user"], json!({}));
        assert_eq!(
            decide(&e, &me("admin", true), &Known::Nothing),
            Action::Pass
        );
    }

    #[test]
    fn workflow_events_follow_visibility() {
        let private = ev(
            "workflow_created",
            json!({"workflow_id": "w", "user_id": ALICE, "is_public": false}),
        );
        assert!(matches!(
            decide(&private, &me(BOB, false), &Known::Nothing),
            Action::Drop(_)
        ));
        let public = ev(
            "workflow_updated",
            json!({"workflow_id": "w", "user_id": ALICE, "new_is_public": true}),
        );
        assert_eq!(
            decide(&public, &me(BOB, false), &Known::Nothing),
            Action::Pass
        );
        let cleared = ev("queue_cleared", json!({"queue_id": "default"}));
        assert_eq!(
            decide(&cleared, &me(BOB, false), &Known::Nothing),
            Action::Pass
        );
        let scoped = ev(
            "queue_cleared",
            json!({"queue_id": "default", "user_id": ALICE}),
        );
        let Action::Redact(out) = decide(&scoped, &me(BOB, false), &Known::Nothing) else {
            panic!()
        };
        assert_eq!(out["user_id"], "redacted");
        let injected = ev("queue_cleared", json!({"queue_id": "admin"}));
        assert!(matches!(
            decide(&injected, &me(BOB, false), &Known::Nothing),
            Action::Drop(_)
        ));
    }
}
