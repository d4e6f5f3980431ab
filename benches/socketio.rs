//! Socket.IO filter throughput: one upstream frame (a QISC-sized `queue_item_status_changed`)
//! decoded and judged per socket, as `session` does for every frame: for its owner (passed byte
//! for byte), for another user (sanitized and re-serialized) and for an admin. Throughput in
//! events/s is criterion's `thrpt` (one element = one event for one socket).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use invoke_guard::socketio::{engineio, events, packet};
use serde_json::json;

fn qisc_frame() -> String {
    let payload = json!({"queue_id": "default", "item_id": 4242, "batch_id": "6f1c8a4e-2a11-4a5e-9d5e-6c2b8f7e1a01",
        "origin": "canvas", "destination": "gallery", "user_id": "f20096cf-9ad3-4a3c-8e50-a2e2634fffe7",
        "status": "completed", "status_sequence": 3, "error_type": null, "error_message": null,
        "error_traceback": null, "created_at": "2026-11-29 10:00:00.000", "updated_at": "2026-11-29 10:00:05.000",
        "started_at": "2026-11-29 10:00:01.000", "completed_at": "2026-11-29 10:00:05.000",
        "session_id": "0b5b2c8e-7f1d-4e3a-9a4b-2d1c3e4f5a6b", "timestamp": 1795000000,
        "batch_status": {"queue_id": "default", "batch_id": "6f1c8a4e-2a11-4a5e-9d5e-6c2b8f7e1a01",
            "origin": "canvas", "destination": "gallery", "pending": 0, "in_progress": 0, "completed": 1,
            "failed": 0, "canceled": 0, "total": 1},
        "queue_status": {"queue_id": "default", "item_id": 4242, "batch_id": "6f1c8a4e-2a11-4a5e-9d5e-6c2b8f7e1a01",
            "session_id": "0b5b2c8e-7f1d-4e3a-9a4b-2d1c3e4f5a6b", "pending": 3, "in_progress": 1,
            "completed": 17, "failed": 0, "canceled": 0, "total": 21, "user_pending": null, "user_in_progress": null}});
    format!("42{}", json!(["queue_item_status_changed", payload]))
}

/// What the session does with one frame for one socket; returns the bytes sent to the client.
fn judge(frame: &str, me: &events::Me) -> usize {
    let engineio::Packet::Message(m) = engineio::decode(frame).unwrap() else {
        unreachable!()
    };
    let sio = packet::decode(m).unwrap();
    let event = events::parse(sio.data).unwrap();
    match events::decide(&event, me, &events::Known::Nothing) {
        events::Action::Pass => frame.len(),
        events::Action::Redact(p) => {
            format!("42{}", serde_json::to_string(&(&event.name, &p)).unwrap()).len()
        }
        events::Action::Drop(_) => 0,
    }
}

fn filter(c: &mut Criterion) {
    let frame = qisc_frame();
    let mut g = c.benchmark_group("socketio_filter");
    g.throughput(Throughput::Elements(1));
    for (label, me) in [
        (
            "qisc_owner_pass",
            events::Me {
                user_id: "f20096cf-9ad3-4a3c-8e50-a2e2634fffe7",
                is_admin: false,
                subscribed: true,
            },
        ),
        (
            "qisc_other_sanitized",
            events::Me {
                user_id: "9470d24f-dedb-4c1c-8ed9-7239f45a4823",
                is_admin: false,
                subscribed: true,
            },
        ),
        (
            "qisc_admin_pass",
            events::Me {
                user_id: "admin",
                is_admin: true,
                subscribed: true,
            },
        ),
    ] {
        assert!(judge(&frame, &me) > 0, "{label}");
        g.bench_function(label, |b| {
            b.iter(|| judge(black_box(&frame), black_box(&me)))
        });
    }
    g.finish();
}

criterion_group!(benches, filter);
criterion_main!(benches);
