//! Socket.IO: any packet text decodes or is refused, never panics; what decodes keeps its data
//! as a suffix of the input (forwarded byte for byte).
#![no_main]

use invoke_guard::socketio::packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = packet::decode(text) {
        assert!(text.ends_with(p.data));
        assert!(p.nsp.starts_with('/'));
    }
    let _ = packet::event_name(text);
});
