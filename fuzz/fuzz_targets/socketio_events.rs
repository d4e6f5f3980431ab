//! Server events: parse + decide never panic, and what another (non-admin) user receives never
//! carries the owner's id (the owner here is "owner-id"; the caller "me-id").
#![no_main]

use invoke_guard::socketio::events::{self, Action, Known, Me};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(event) = events::parse(text) else {
        return;
    };
    for (me, known) in [
        (
            Me {
                user_id: "me-id",
                is_admin: false,
                subscribed: true,
            },
            Known::Nothing,
        ),
        (
            Me {
                user_id: "me-id",
                is_admin: false,
                subscribed: true,
            },
            Known::Owner(Some("owner-id".into())),
        ),
        (
            Me {
                user_id: "me-id",
                is_admin: true,
                subscribed: false,
            },
            Known::Owners(vec!["owner-id".into()]),
        ),
    ] {
        let _ = events::need(&event, &me);
        let action = events::decide(&event, &me, &known);
        if me.is_admin {
            continue;
        }
        // Families whose `user_id` names the owner: another user never gets them whole, and a
        // sanitized copy never names the owner.
        let owner_field = matches!(
            event.name.as_str(),
            "invocation_started"
                | "invocation_progress"
                | "invocation_complete"
                | "invocation_error"
                | "queue_item_status_changed"
                | "batch_enqueued"
                | "recall_parameters_updated"
                | "model_load_started"
                | "model_load_complete"
                | "bulk_download_started"
                | "bulk_download_complete"
                | "bulk_download_error"
                | "llm_task_progress"
                | "llm_task_complete"
                | "llm_task_error"
        );
        let owned_by_other = owner_field
            && event.payload.get("user_id").and_then(|v| v.as_str()) == Some("owner-id");
        match action {
            Action::Redact(p) if owned_by_other => {
                assert_ne!(
                    p.get("user_id").and_then(|v| v.as_str()),
                    Some("owner-id"),
                    "{} named the owner",
                    event.name
                );
            }
            Action::Pass if owned_by_other => {
                panic!("{} passed another user's event whole", event.name);
            }
            _ => {}
        }
    }
});
