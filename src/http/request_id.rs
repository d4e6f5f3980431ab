//! The request id: the `X-Request-Id` a request is logged with and forwarded with.
//!
//! Invariants:
//! - A client's `X-Request-Id` is kept only when the peer is a configured trusted proxy and the
//!   header is single, 1 to [`MAX_LEN`] bytes of visible ASCII; otherwise the guard makes one
//!   (a client outside the trusted proxies cannot choose the id its lines are filed under).
//! - The id is set on the request before anything else reads it, so the decision line and the
//!   upstream (which gets the request's headers) see the same value.
//! - A made id is unique within the process (a counter) and across restarts (a random prefix);
//!   it is a correlation handle, not a secret.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest id kept from a trusted proxy.
pub const MAX_LEN: usize = 128;

static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    let mut bytes = [0u8; 8];
    // Without randomness the ids are still unique in this process.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new id: 16 hex digits of process prefix, `-`, 16 of counter.
pub fn make() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 33];
    hex(&mut buf[..16], *PREFIX);
    buf[16] = b'-';
    hex(&mut buf[17..], n);
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

fn hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Decide the request's id and set it on `headers` (replacing what the client sent unless the
/// peer is trusted and sent a usable one); returns it.
pub fn assign(headers: &mut HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> HeaderValue {
    // Log correlation spoofing: only a trusted proxy chooses the id its lines are filed under
    // (an untrusted peer's is not even looked at).
    if !trusted.iter().any(|net| net.contains(&peer)) {
        let id = make();
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        return id;
    }
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    let kept = match (sent.next(), sent.next()) {
        (Some(v), None)
            if !v.is_empty()
                && v.len() <= MAX_LEN
                && v.as_bytes().iter().all(u8::is_ascii_graphic)
                && trusted.iter().any(|net| net.contains(&peer)) =>
        {
            Some(v.clone())
        }
        _ => None,
    };
    let id = kept.unwrap_or_else(make);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_proxys_single_plain_id_is_kept() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let mut h = headers(&["abc-123"]);
        assert_eq!(assign(&mut h, proxy, &trusted), "abc-123");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        // Untrusted peer, two ids, a space, too long: replaced by a made one.
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        let long = "a".repeat(MAX_LEN + 1);
        for (peer, sent) in [
            (stranger, vec!["abc-123"]),
            (proxy, vec!["a", "b"]),
            (proxy, vec!["a b"]),
            (proxy, vec![long.as_str()]),
        ] {
            let mut h = headers(&sent);
            let id = assign(&mut h, peer, &trusted);
            assert_eq!(id.len(), 33, "{sent:?}");
            assert!(!sent.iter().any(|s| id == *s), "{sent:?}");
            assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
        }
    }

    #[test]
    fn made_ids_differ() {
        assert_ne!(make(), make());
    }
}
