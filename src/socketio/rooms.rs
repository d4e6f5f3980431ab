//! What a client may ask the upstream (spec §4.2): only joining or leaving the `default` queue
//! and bulk-download rooms. Everything else is answered locally or dropped.
//!
//! Invariants:
//! - Room names are never taken from the client: an allowed message is re-written in its
//!   canonical form (`"default"`), so `admin` or `user:<id>` can never be joined (room injection).
//! - Acks are answered by the guard (`43<id>[]`) and never forwarded (the upstream would answer
//!   them with its own view).
//! - Binary packets, other namespaces and unknown events never reach the upstream.

use serde_json::Value;

use super::packet::{Kind, Packet};

/// What to do with a client's Socket.IO packet (other than CONNECT/DISCONNECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAction {
    /// A Socket.IO packet to send upstream.
    pub upstream: Option<String>,
    /// A Socket.IO packet to answer the client with (an ack).
    pub reply: Option<String>,
    /// The socket's queue subscription changes to this.
    pub subscribed: Option<bool>,
    /// Why nothing was forwarded (a metric label).
    pub dropped: Option<&'static str>,
}

impl ClientAction {
    fn drop(why: &'static str, ack: Option<u64>) -> Self {
        ClientAction {
            upstream: None,
            reply: ack.map(|id| format!("3{id}[]")),
            subscribed: None,
            dropped: Some(why),
        }
    }
}

/// The room messages the UI sends (and their field), by event name.
fn room_field(name: &str) -> Option<(&'static str, bool)> {
    match name {
        "subscribe_queue" => Some(("queue_id", true)),
        "unsubscribe_queue" => Some(("queue_id", false)),
        "subscribe_bulk_download" => Some(("bulk_download_id", true)),
        "unsubscribe_bulk_download" => Some(("bulk_download_id", false)),
        _ => None,
    }
}

/// Judge a client EVENT (or any other non-connect packet) of the default namespace.
pub fn client_packet(packet: &Packet<'_>) -> ClientAction {
    if packet.nsp != "/" {
        return ClientAction::drop("other namespace", None);
    }
    match packet.kind {
        Kind::Event => {}
        Kind::BinaryEvent | Kind::BinaryAck => return ClientAction::drop("binary", None),
        // The server never asks the client for acks; CONNECT/DISCONNECT are the session's.
        Kind::Ack | Kind::Connect | Kind::Disconnect | Kind::ConnectError => {
            return ClientAction::drop("unexpected packet", None)
        }
    }
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(packet.data) else {
        return ClientAction::drop("malformed event", packet.ack);
    };
    let Some(name) = items.first().and_then(Value::as_str) else {
        return ClientAction::drop("malformed event", packet.ack);
    };
    let Some((field, subscribe)) = room_field(name) else {
        return ClientAction::drop("event not allowed", packet.ack);
    };
    let room = items
        .get(1)
        .and_then(|arg| arg.get(field))
        .and_then(Value::as_str);
    if room != Some("default") {
        return ClientAction::drop("room not allowed", packet.ack);
    }
    ClientAction {
        upstream: Some(format!(
            "2{}",
            serde_json::json!([name, { field: "default" }])
        )),
        reply: packet.ack.map(|id| format!("3{id}[]")),
        subscribed: (field == "queue_id").then_some(subscribe),
        dropped: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socketio::packet::decode;

    fn judge(text: &str) -> ClientAction {
        client_packet(&decode(text).unwrap())
    }

    #[test]
    fn only_default_rooms_pass_in_canonical_form() {
        let a = judge("2[\"subscribe_queue\",{\"queue_id\":\"default\",\"extra\":1}]");
        assert_eq!(
            a.upstream.as_deref(),
            Some("2[\"subscribe_queue\",{\"queue_id\":\"default\"}]")
        );
        assert_eq!(a.subscribed, Some(true));
        let a = judge("21[\"subscribe_bulk_download\",{\"bulk_download_id\":\"default\"}]");
        assert_eq!(
            a.upstream.as_deref(),
            Some("2[\"subscribe_bulk_download\",{\"bulk_download_id\":\"default\"}]")
        );
        assert_eq!(a.reply.as_deref(), Some("31[]"));
        assert_eq!(
            judge("2[\"unsubscribe_queue\",{\"queue_id\":\"default\"}]").subscribed,
            Some(false)
        );
    }

    #[test]
    fn room_injection_and_everything_else_is_dropped() {
        for text in [
            "2[\"subscribe_queue\",{\"queue_id\":\"admin\"}]",
            "2[\"subscribe_queue\",{\"queue_id\":\"user:abc\"}]",
            "2[\"subscribe_bulk_download\",{\"bulk_download_id\":\"admin\"}]",
            "2[\"subscribe_queue\",{}]",
            "2[\"subscribe_queue\"]",
            "2[\"enqueue\",{}]",
            "2/admin,[\"subscribe_queue\",{\"queue_id\":\"default\"}]",
            "51-[\"subscribe_queue\",{\"_placeholder\":true,\"num\":0}]",
            "3[]",
            "2{}",
        ] {
            let a = judge(text);
            assert_eq!(a.upstream, None, "{text}");
            assert!(a.dropped.is_some(), "{text}");
        }
        assert_eq!(
            judge("27[\"subscribe_queue\",{\"queue_id\":\"admin\"}]")
                .reply
                .as_deref(),
            Some("37[]")
        );
    }
}
