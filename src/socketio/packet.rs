//! Socket.IO v5 packets (spec §5.2): `<type>[<attachments>-][<nsp>,][<ack id>][<JSON>]`, carried
//! in an Engine.IO message.
//!
//! Invariants:
//! - Decoding follows the spec's parse order exactly and never panics; the JSON part is kept as
//!   the raw text it was (so an unchanged packet is forwarded byte for byte) and parsed only by
//!   those who need it.
//! - Attachment counts and ack ids are bounded (no integer overflow, no huge allocations).

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A decoded packet; `data` is the raw JSON text (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: Kind,
    pub attachments: u32,
    /// `/` unless the packet names another namespace.
    pub nsp: &'a str,
    pub ack: Option<u64>,
    pub data: &'a str,
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty Socket.IO packet")]
    Empty,
    #[error("unknown Socket.IO packet type {0:?}")]
    UnknownType(char),
    #[error("malformed attachment count")]
    Attachments,
    #[error("unterminated namespace")]
    Namespace,
    #[error("ack id too long")]
    Ack,
}

/// Decode a Socket.IO packet.
pub fn decode(text: &str) -> Result<Packet<'_>, DecodeError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first().ok_or(DecodeError::Empty)? {
        b'0' => Kind::Connect,
        b'1' => Kind::Disconnect,
        b'2' => Kind::Event,
        b'3' => Kind::Ack,
        b'4' => Kind::ConnectError,
        b'5' => Kind::BinaryEvent,
        b'6' => Kind::BinaryAck,
        _ => return Err(DecodeError::UnknownType(text.chars().next().unwrap_or('?'))),
    };
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 6 || bytes.get(i) != Some(&b'-') {
            return Err(DecodeError::Attachments);
        }
        attachments = text[start..i]
            .parse()
            .map_err(|_| DecodeError::Attachments)?;
        i += 1;
    }
    let mut nsp = "/";
    if bytes.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map(|e| i + e);
        match end {
            Some(end) => {
                nsp = &text[i..end];
                i = end + 1;
            }
            // A namespace alone (`40/admin`) ends the packet.
            None => {
                nsp = &text[i..];
                i = text.len();
            }
        }
    }
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let ack = if i > start {
        if i - start > 18 {
            return Err(DecodeError::Ack);
        }
        Some(text[start..i].parse().map_err(|_| DecodeError::Ack)?)
    } else {
        None
    };
    Ok(Packet {
        kind,
        attachments,
        nsp,
        ack,
        data: &text[i..],
    })
}

/// The event name of an EVENT packet's data (`["name", ...]`), without parsing the rest.
pub fn event_name(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    value.get(0)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_examples() {
        let p = decode("0").unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.ack, p.data),
            (Kind::Connect, "/", None, "")
        );
        let p = decode("0{\"token\":\"x\"}").unwrap();
        assert_eq!(p.data, "{\"token\":\"x\"}");
        let p = decode("4{\"message\":\"Not authorized\"}").unwrap();
        assert_eq!(p.kind, Kind::ConnectError);
        let p = decode("2[\"foo\"]").unwrap();
        assert_eq!((p.kind, p.data), (Kind::Event, "[\"foo\"]"));
        let p = decode("2/admin,[\"bar\"]").unwrap();
        assert_eq!((p.nsp, p.data), ("/admin", "[\"bar\"]"));
        let p = decode("212[\"foo\"]").unwrap();
        assert_eq!((p.ack, p.data), (Some(12), "[\"foo\"]"));
        let p = decode("312[]").unwrap();
        assert_eq!((p.kind, p.ack), (Kind::Ack, Some(12)));
        let p = decode("51-[\"baz\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = decode("0/admin,").unwrap();
        assert_eq!((p.nsp, p.data), ("/admin", ""));
        let p = decode("0/admin").unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(decode("1").unwrap().kind, Kind::Disconnect);
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("9"), Err(DecodeError::UnknownType('9')));
        assert_eq!(decode("5[\"x\"]"), Err(DecodeError::Attachments));
        assert_eq!(decode("5-[\"x\"]"), Err(DecodeError::Attachments));
        assert_eq!(decode("59999999-[]"), Err(DecodeError::Attachments));
        assert_eq!(decode("21234567890123456789[]"), Err(DecodeError::Ack));
        assert_eq!(
            event_name("[\"subscribe_queue\",{}]").as_deref(),
            Some("subscribe_queue")
        );
        assert_eq!(event_name("[1]"), None);
        assert_eq!(event_name("{}"), None);
    }
}
