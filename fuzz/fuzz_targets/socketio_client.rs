//! Client packets: the allow-list never panics and never forwards a room other than "default".
#![no_main]

use invoke_guard::socketio::{packet, rooms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = packet::decode(text) else {
        return;
    };
    let action = rooms::client_packet(&p);
    if let Some(up) = action.upstream {
        let value: serde_json::Value = serde_json::from_str(&up[1..]).expect("forwarded JSON");
        let arg = &value[1];
        let room = arg.get("queue_id").or_else(|| arg.get("bulk_download_id"));
        assert_eq!(room.and_then(|r| r.as_str()), Some("default"), "{up}");
        assert_eq!(arg.as_object().map(|o| o.len()), Some(1), "{up}");
    }
});
