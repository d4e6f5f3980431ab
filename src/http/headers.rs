//! Header hygiene for both legs.
//!
//! Invariants:
//! - Hop-by-hop headers (RFC 9110 §7.6.1), including every name listed in `Connection`, never
//!   cross the proxy in either direction.
//! - No client-supplied forwarding or identity header reaches the upstream, whatever its
//!   spelling: names are compared after lowercasing and folding `_` and `.` to `-`.
//! - `X-Forwarded-For/Proto/Host` are set by the guard from the real connection; a client's
//!   values are only kept when the peer is a configured trusted proxy.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::HeaderMap;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names a client may never send upstream (compared lowercase; `_`/`.` spellings are dropped).
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "remote-user",
    "x-remote-user",
    "x-remote-addr",
    "x-user",
    "x-user-id",
    "x-user-email",
    "x-email",
    "x-auth-user",
    "x-authenticated-user",
    "x-invokeai-user",
    "x-refreshed-token",
];

/// Prefixes a client may never send upstream.
const SPOOFABLE_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-auth-",
    "x-invoke-guard-",
    "x-envoy-",
    "x-remote-",
];

/// Whether `name` (lowercase, as every `HeaderName` is) is in [`HOP_BY_HOP`]: one `match`
/// (a length switch, then one comparison) instead of nine string comparisons per header.
fn is_hop_by_hop(name: &str) -> bool {
    let hop = matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    );
    debug_assert_eq!(hop, HOP_BY_HOP.contains(&name));
    hop
}

/// Remove hop-by-hop headers and any header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    // Most messages carry none of these: one pass over the names present, instead of a name
    // parse and a map probe for every listed name.
    let doomed = |name: &HeaderName| {
        is_hop_by_hop(name.as_str()) || listed.iter().any(|l| l == name.as_str())
    };
    if !headers.keys().any(doomed) {
        return;
    }
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// Whether a client may send `name` upstream: not spoofable (forwarding and identity headers in
/// any spelling).
fn is_spoofable(name: &HeaderName) -> bool {
    // `HeaderName`s are lowercase already; a name with `_` or `.` is dropped outright, so the
    // remaining names need no folding before the comparisons.
    let raw = name.as_str();
    // Underscore/dot aliases (Traefik CVE-2026-39858, GHSA-rf44-j88r-hh8c): WSGI/ASGI stacks
    // fold them onto real names, so no legitimate client header needs them.
    raw.bytes().any(|b| b == b'_' || b == b'.') || is_spoofable_name(raw)
}

/// Whether `raw` is in [`SPOOFABLE`] or starts with one of [`SPOOFABLE_PREFIXES`]: one `match`
/// (a length switch, then one comparison) instead of thirty string comparisons per header.
fn is_spoofable_name(raw: &str) -> bool {
    let hit = matches!(
        raw,
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "x-cluster-client-ip"
            | "x-original-url"
            | "x-original-uri"
            | "x-rewrite-url"
            | "x-original-method"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "remote-user"
            | "x-remote-user"
            | "x-remote-addr"
            | "x-user"
            | "x-user-id"
            | "x-user-email"
            | "x-email"
            | "x-auth-user"
            | "x-authenticated-user"
            | "x-invokeai-user"
            | "x-refreshed-token"
    ) || (raw.starts_with("x-") && SPOOFABLE_PREFIXES.iter().any(|p| raw.starts_with(p)));
    debug_assert_eq!(
        hit,
        SPOOFABLE.contains(&raw) || SPOOFABLE_PREFIXES.iter().any(|p| raw.starts_with(p))
    );
    hit
}

/// The client's own headers made fit to send upstream, in place: [`strip_hop_by_hop`],
/// [`strip_spoofable`] and `drop` removed.
pub fn into_forwardable(mut headers: HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    strip_spoofable(&mut headers);
    for name in drop {
        headers.remove(name);
    }
    headers
}

/// Remove forwarding and identity headers a client could spoof.
pub fn strip_spoofable(headers: &mut HeaderMap) {
    // The common case, nothing to remove, allocates nothing.
    if !headers.keys().any(is_spoofable) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Facts about the client connection used for forwarding headers.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: IpAddr,
    pub tls: bool,
    /// `peer` as a header value, formatted once per connection (the `X-Forwarded-For` of every
    /// request on it from an untrusted peer). Derived from `peer` only: build with [`Self::new`].
    peer_value: HeaderValue,
}

impl ClientConn {
    /// The peer address as text (formatted once per connection).
    pub fn peer_value(&self) -> &HeaderValue {
        &self.peer_value
    }

    /// The connection's facts; formats the peer address once.
    pub fn new(peer: IpAddr, tls: bool) -> Self {
        let peer_value =
            HeaderValue::try_from(peer.to_string()).expect("an IP address is a valid header value");
        Self {
            peer,
            tls,
            peer_value,
        }
    }
}

/// Set `X-Forwarded-For/Proto/Host`. `incoming` are the client's original headers (read before
/// stripping) so a trusted proxy's chain can be extended.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    incoming: &HeaderMap,
    conn: &ClientConn,
    trusted: &[ipnet::IpNet],
    host: Option<&str>,
) {
    forwarded(incoming, conn, trusted, host).set(headers);
}

/// The `X-Forwarded-For/Proto/Host` values a request is sent upstream with (read from the
/// client's headers before they are stripped; see [`set_forwarded`]).
pub struct Forwarded {
    xff: Option<HeaderValue>,
    proto: HeaderValue,
    host: Option<HeaderValue>,
}

impl Forwarded {
    /// Set them on the headers going upstream.
    pub fn set(self, headers: &mut HeaderMap) {
        if let Some(v) = self.xff {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, self.proto);
        if let Some(v) = self.host {
            headers.insert(X_FORWARDED_HOST, v);
        }
    }
}

/// The forwarding values for a request with `incoming` headers on `conn`.
pub fn forwarded(
    incoming: &HeaderMap,
    conn: &ClientConn,
    trusted: &[ipnet::IpNet],
    host: Option<&str>,
) -> Forwarded {
    let peer_trusted = trusted.iter().any(|net| net.contains(&conn.peer));
    // A client's own values count only from a trusted proxy (untrusted: not even looked up).
    let prior = |name: &HeaderName| {
        peer_trusted
            .then(|| incoming.get(name))
            .flatten()
            .filter(|v| v.to_str().is_ok())
    };
    let xff = match prior(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", conn.peer)).ok(),
        None => Some(conn.peer_value.clone()),
    };
    let own_proto = if conn.tls { "https" } else { "http" };
    let proto = prior(&X_FORWARDED_PROTO)
        .filter(|p| matches!(p.as_bytes(), b"http" | b"https"))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(own_proto));
    let fwd_host = prior(&X_FORWARDED_HOST).cloned().or_else(|| {
        let host = host?;
        // Usually the client's own Host header: share its value instead of copying it.
        match incoming.get(HOST) {
            Some(v) if v.as_bytes() == host.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(host).ok(),
        }
    });
    Forwarded {
        xff,
        proto,
        host: fwd_host,
    }
}

/// The Host the client addressed (Host header, or the HTTP/2 `:authority`).
pub fn client_host(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
}

/// Remove cookies by name (Starlette's reading: names are trimmed; see `cookies`).
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) {
    crate::http::cookies::remove(headers, names);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_aliases_and_forwarding() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-user.id", "admin"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("accept", "application/json"),
        ] {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        strip_spoofable(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn strips_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn removes_named_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; invokeai_media_token=t; b=2".parse().unwrap(),
        );
        remove_cookies(&mut h, &["invokeai_media_token"]);
        assert_eq!(h.get(http::header::COOKIE).unwrap(), "a=1; b=2");
    }
}
