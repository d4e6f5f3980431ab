//! Engine.IO v4 packets (spec §5.1): one type character and its data, on a websocket frame or
//! joined by the record separator `\x1e` in a long-polling body.
//!
//! Invariants:
//! - Decoding never panics and never allocates more than its input; anything malformed is an
//!   error (the session closes), never a guess.
//! - Binary packets (`b<base64>` on polling, binary frames on websockets) are decoded so they can
//!   be refused: InvokeAI never sends binary, and clients have nothing binary to send to it.

use base64::Engine as _;

/// The record separator between packets of a polling body.
pub const SEPARATOR: char = '\u{1e}';

/// An Engine.IO packet (text data borrowed from the frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Open(&'a str),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    /// A Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
    /// Binary data (refused by the filter).
    Binary(Vec<u8>),
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty Engine.IO packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    UnknownType(char),
    #[error("invalid base64 in a binary packet")]
    Base64,
}

/// Decode one text packet (`<type><data>`).
pub fn decode(text: &str) -> Result<Packet<'_>, DecodeError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(DecodeError::Empty)?;
    let data = &text[kind.len_utf8()..];
    Ok(match kind {
        '0' => Packet::Open(data),
        '1' => Packet::Close,
        '2' => Packet::Ping(data),
        '3' => Packet::Pong(data),
        '4' => Packet::Message(data),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| DecodeError::Base64)?,
        ),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Split a polling body into its packets (each decoded).
pub fn decode_payload(body: &str) -> Result<Vec<Packet<'_>>, DecodeError> {
    body.split(SEPARATOR).map(decode).collect()
}

/// Join encoded packets into a polling body.
pub fn encode_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let mut out = String::with_capacity(packets.iter().map(|p| p.as_ref().len() + 1).sum());
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.push_str(p.as_ref());
    }
    out
}

/// The handshake's open packet, as python-engineio sends it.
pub fn open_packet(sid: &str, upgrades: bool, config: &Timing) -> String {
    // Field order as python-engineio writes it (sid first); the sid is URL-safe base64.
    format!(
        "0{{\"sid\":{},\"upgrades\":[{}],\"pingTimeout\":{},\"pingInterval\":{},\"maxPayload\":{}}}",
        serde_json::Value::from(sid),
        if upgrades { "\"websocket\"" } else { "" },
        config.ping_timeout.as_millis(),
        config.ping_interval.as_millis(),
        config.max_payload,
    )
}

/// Engine.IO timing and size parameters (python-engineio's defaults, as InvokeAI uses them).
#[derive(Debug, Clone)]
pub struct Timing {
    pub ping_interval: std::time::Duration,
    pub ping_timeout: std::time::Duration,
    /// Largest client→server message (and polling POST body), bytes.
    pub max_payload: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval: std::time::Duration::from_secs(25),
            ping_timeout: std::time::Duration::from_secs(20),
            max_payload: 1_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_type_and_refuses_garbage() {
        assert_eq!(decode("0{}").unwrap(), Packet::Open("{}"));
        assert_eq!(decode("1").unwrap(), Packet::Close);
        assert_eq!(decode("2probe").unwrap(), Packet::Ping("probe"));
        assert_eq!(decode("3").unwrap(), Packet::Pong(""));
        assert_eq!(decode("42[\"a\"]").unwrap(), Packet::Message("2[\"a\"]"));
        assert_eq!(decode("5").unwrap(), Packet::Upgrade);
        assert_eq!(decode("6").unwrap(), Packet::Noop);
        assert_eq!(decode("bAQID").unwrap(), Packet::Binary(vec![1, 2, 3]));
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("9"), Err(DecodeError::UnknownType('9')));
        assert_eq!(decode("é"), Err(DecodeError::UnknownType('é')));
        assert_eq!(decode("b!!"), Err(DecodeError::Base64));
    }

    #[test]
    fn payloads_split_and_join_on_the_record_separator() {
        let body = "42[\"a\"]\u{1e}2\u{1e}bAQID";
        let packets = decode_payload(body).unwrap();
        assert_eq!(packets.len(), 3);
        assert_eq!(packets[1], Packet::Ping(""));
        assert_eq!(encode_payload(&["42[\"a\"]", "2"]), "42[\"a\"]\u{1e}2");
        assert!(
            decode_payload("42[]\u{1e}").is_err(),
            "an empty trailing packet is malformed"
        );
    }
}
