//! Engine.IO: any text (a websocket frame or a polling body) decodes or is refused, never
//! panics; a decoded payload re-encodes to the same body.
#![no_main]

use invoke_guard::socketio::engineio;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = engineio::decode(text);
    if let Ok(packets) = engineio::decode_payload(text) {
        let parts: Vec<&str> = text.split(engineio::SEPARATOR).collect();
        assert_eq!(packets.len(), parts.len());
        assert_eq!(engineio::encode_payload(&parts), text);
    }
});
