//! `Origin` checks for cookie-authenticated sockets (cross-site websocket hijacking): a page on
//! another site can make a browser open a websocket to the guard with the guard's session cookie
//! attached, so a CONNECT authenticated by that cookie alone is refused when any transport
//! request of its session came from a foreign `Origin`.
//!
//! Invariants:
//! - An origin is compared as `scheme://host:port` (lower case, the scheme's default port made
//!   explicit); anything that is not such an origin (`null`, a path, a user part) is foreign.
//! - Own host: the request's `Host` (or HTTP/2 `:authority`), and `X-Forwarded-Host` only from a
//!   trusted proxy; a `Host` without a port matches the origin scheme's default port.
//! - A request without `Origin` is not foreign (non-browser clients, same-origin `GET`s): the
//!   check is about what a browser does on another site's behalf, and browsers always send
//!   `Origin` on websocket upgrades and cross-origin requests.

use http::header::{HOST, ORIGIN};
use http::HeaderMap;

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `scheme://host:port`, lower case with the port explicit; `None` when `text` is not an origin.
pub fn normalize(text: &str) -> Option<String> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = default_port(&scheme)?;
    // An origin has no path, query, fragment or user part (a trailing `/` is tolerated in
    // configuration).
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority: http::uri::Authority = authority.parse().ok()?;
    let port = match authority.port_u16() {
        Some(p) => p,
        None if authority.as_str().ends_with(':') => return None,
        None => default,
    };
    Some(format!(
        "{scheme}://{}:{port}",
        authority.host().to_ascii_lowercase()
    ))
}

/// Whether the normalized `origin` names `host` (a `Host` header value; without a port it is
/// the origin scheme's default port).
fn names_host(origin: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let Some(default) = default_port(scheme) else {
        return false;
    };
    let host = host.trim();
    if host.ends_with(':') {
        return false;
    }
    let Ok(host) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let port = host.port_u16().unwrap_or(default);
    rest == format!("{}:{port}", host.host().to_ascii_lowercase())
}

/// Whether a transport request carries an `Origin` that is neither the guard's own host nor in
/// `allowed` (normalized origins). `authority` is the HTTP/2 `:authority`, if any.
pub fn is_foreign(
    headers: &HeaderMap,
    authority: Option<&str>,
    allowed: &[String],
    peer_is_trusted_proxy: bool,
) -> bool {
    let mut values = headers.get_all(ORIGIN).iter();
    let Some(value) = values.next() else {
        return false;
    };
    // Two Origin headers: no browser sends that.
    if values.next().is_some() {
        return true;
    }
    let Some(origin) = value.to_str().ok().and_then(normalize) else {
        return true;
    };
    if allowed.contains(&origin) {
        return false;
    }
    let forwarded = headers
        .get("x-forwarded-host")
        .filter(|_| peer_is_trusted_proxy)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next());
    let hosts = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .into_iter()
        .chain(authority)
        .chain(forwarded);
    let own = hosts.into_iter().any(|h| names_host(&origin, h));
    !own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn origins_normalize_with_explicit_ports() {
        assert_eq!(
            normalize("HTTP://Example.com").as_deref(),
            Some("http://example.com:80")
        );
        assert_eq!(
            normalize("https://example.com:8443/").as_deref(),
            Some("https://example.com:8443")
        );
        assert_eq!(
            normalize("http://[::1]:9091").as_deref(),
            Some("http://[::1]:9091")
        );
        for bad in [
            "null",
            "example.com",
            "ftp://x",
            "http://a/b",
            "http://u@a",
            "http://",
            "http://a:",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn own_host_and_allowed_origins_are_not_foreign() {
        let allowed = vec!["https://invoke.example.com:443".to_owned()];
        let own = |pairs: &[(&str, &str)]| !is_foreign(&headers(pairs), None, &allowed, false);
        assert!(own(&[("host", "127.0.0.1:9091")]), "no Origin");
        assert!(own(&[
            ("host", "127.0.0.1:9091"),
            ("origin", "http://127.0.0.1:9091")
        ]));
        assert!(own(&[
            ("host", "Guard.Local"),
            ("origin", "http://guard.local")
        ]));
        assert!(own(&[
            ("host", "guard.local"),
            ("origin", "https://guard.local")
        ]));
        assert!(own(&[
            ("host", "10.0.0.1:9091"),
            ("origin", "https://invoke.example.com")
        ]));
        assert!(!own(&[
            ("host", "127.0.0.1:9091"),
            ("origin", "http://evil.example")
        ]));
        assert!(!own(&[
            ("host", "127.0.0.1:9091"),
            ("origin", "http://127.0.0.1:9092")
        ]));
        assert!(!own(&[("host", "guard.local"), ("origin", "null")]));
        assert!(!own(&[
            ("host", "guard.local:8080"),
            ("origin", "http://guard.local")
        ]));
        assert!(!own(&[
            ("host", "guard.local"),
            ("origin", "http://guard.local"),
            ("origin", "http://guard.local")
        ]));
    }

    #[test]
    fn forwarded_host_counts_only_from_a_trusted_proxy() {
        let h = headers(&[
            ("host", "10.0.0.1:9091"),
            ("x-forwarded-host", "invoke.example.com"),
            ("origin", "https://invoke.example.com"),
        ]);
        assert!(!is_foreign(&h, None, &[], true));
        assert!(is_foreign(&h, None, &[], false));
        let h2 = headers(&[("origin", "https://guard.example")]);
        assert!(!is_foreign(&h2, Some("guard.example"), &[], false));
    }
}
