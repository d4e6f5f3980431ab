//! The one canonical form of a request target.
//!
//! Invariants:
//! - [`canonicalize`] is the only parser of the request target. Its output path is what the route
//!   table matches **and** what is forwarded upstream, byte for byte (no second parse anywhere).
//! - A canonical path starts with `/`, has no empty, `.` or `..` segment (a trailing `/` is kept
//!   as written), contains only RFC 3986 `pchar`s and `/`, and every remaining `%XX` escape is
//!   uppercase and decodes to a byte that is not unreserved, not `/`, `\`, `%` or a control byte.
//! - Percent-decoding the canonical path once (what Starlette does) yields valid UTF-8.
//! - Canonicalization is idempotent: a canonical path canonicalizes to itself.
//! - The query string is forwarded as received but parsed exactly once here, with the same
//!   rules as Python's `parse_qsl` (`&` separated, `+` is a space, percent-decoded once).

use std::collections::HashMap;

use thiserror::Error;

/// Why a request target was refused (answered 400, never forwarded).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("request target must be a path (origin-form)")]
    NotOriginForm,
    #[error("empty path segment")]
    EmptySegment,
    #[error("dot segment in path")]
    DotSegment,
    #[error("encoded '/' in path")]
    EncodedSlash,
    #[error("backslash in path")]
    Backslash,
    #[error("encoded '%' in path (double encoding)")]
    DoubleEncoding,
    #[error("control byte in request target")]
    ControlByte,
    #[error("malformed percent-escape")]
    BadEscape,
    #[error("path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("character not allowed in request target")]
    BadCharacter,
    #[error("query parameter is not valid UTF-8 once decoded")]
    QueryInvalidUtf8,
}

/// A request target in canonical form plus its parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The canonical path: matched by the route table and forwarded upstream.
    pub path: String,
    /// The raw query (without `?`), validated; forwarded as received.
    pub query: Option<String>,
    /// Query parameters, decoded once; every value of repeated names is kept.
    pub params: Query,
}

impl Target {
    /// Path and query as sent upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Decoded query parameters (name → all values in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(HashMap<String, Vec<String>>);

/// A query parameter a rule reads was sent more than once.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("duplicate query parameter '{0}'")]
pub struct DuplicateParam(pub String);

impl Query {
    /// The single value of `name`; a repeated parameter is an error because the proxy and the
    /// upstream could pick different copies (parameter pollution).
    pub fn single(&self, name: &str) -> Result<Option<&str>, DuplicateParam> {
        match self.0.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(_) => Err(DuplicateParam(name.to_owned())),
        }
    }

    /// Every value of `name`, in order (list parameters such as `categories`).
    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// Set `name` to one value (the guard's own rewrites of a forwarded query).
    pub fn replace(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_owned(), vec![value.to_owned()]);
    }

    fn parse(raw: &str) -> Result<Self, TargetError> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(decode_query_part(name)?)
                .or_default()
                .push(decode_query_part(value)?);
        }
        Ok(Self(map))
    }
}

/// A query name or value decoded as the upstream decodes it (`+` is a space).
pub(crate) fn decode_query_part(part: &str) -> Result<String, TargetError> {
    let spaced = part.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    String::from_utf8(bytes).map_err(|_| TargetError::QueryInvalidUtf8)
}

/// Canonicalize an origin-form request target (`/path?query`).
pub fn canonicalize(path: &str, query: Option<&str>) -> Result<Target, TargetError> {
    let path = canonical_path(path)?;
    let query = match query {
        Some(q) => {
            check_query_bytes(q)?;
            Some(q.to_owned())
        }
        None => None,
    };
    let params = match &query {
        Some(q) => Query::parse(q)?,
        None => Query::default(),
    };
    Ok(Target {
        path,
        query: query.filter(|q| !q.is_empty()),
        params,
    })
}

/// Canonicalize the path part only. See the module invariants.
///
/// One pass over the bytes, written straight into the output (no per-segment `String`): the
/// refusals and their order are those of a segment-by-segment reading (empty segment, then the
/// segment's bytes left to right, then dot segments). Segments are found with `memchr`, and runs
/// of plain `pchar`s are copied whole.
pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
    // Absolute-form and authority tricks (`http://x/…`, `//host/…`): only a rooted path is accepted.
    if !raw.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let body = &raw[1..];
    // A lone "/" is the root; otherwise a trailing `/` leaves a trailing empty segment.
    if body.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    // An escape of a byte >= 0x80 was kept: only then can decoding the result be invalid UTF-8
    // (raw bytes >= 0x80 are refused as non-pchars).
    let mut high_escape = false;
    let mut start = 0;
    loop {
        // `/` is ASCII: every slice below is on a character boundary.
        let end = memchr::memchr(b'/', &body.as_bytes()[start..]).map_or(body.len(), |i| start + i);
        let seg = &body[start..end];
        let last = end == body.len();
        // Double slash (`//admin`) bypasses prefix rules in some matchers: refuse empty segments.
        if seg.is_empty() && !last {
            return Err(TargetError::EmptySegment);
        }
        out.push('/');
        let from = out.len();
        high_escape |= canonical_segment(seg, &mut out)?;
        // Dot segments, plain or encoded (`..`, `%2e%2e`): the upstream would resolve them.
        if matches!(&out[from..], "." | "..") {
            return Err(TargetError::DotSegment);
        }
        if last {
            break;
        }
        start = end + 1;
    }
    // Percent-decoding the result must give valid UTF-8 (overlong `%C0%AF` and friends).
    if high_escape {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&out).collect();
        if std::str::from_utf8(&decoded).is_err() {
            return Err(TargetError::InvalidUtf8);
        }
    }
    Ok(out)
}

/// [`is_pchar`] for every byte, as a table (one load per byte on the common path).
static PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_pchar(b as u8);
        b += 1;
    }
    table
};

/// Append the canonical form of one segment to `out`; `true` when it kept an escape of a byte
/// >= 0x80.
fn canonical_segment(seg: &str, out: &mut String) -> Result<bool, TargetError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = seg.as_bytes();
    let mut high_escape = false;
    // Start of the run of plain pchars not yet copied (they are ASCII: slicing there is safe).
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if PCHAR[usize::from(b)] {
            i += 1;
            continue;
        }
        out.push_str(&seg[run..i]);
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadEscape)?;
            let value = decode_hex_pair(hex).ok_or(TargetError::BadEscape)?;
            match value {
                // Encoded slash (`%2F`, Envoy CVE-2021-29492): would split a segment upstream.
                b'/' => return Err(TargetError::EncodedSlash),
                // Encoded backslash (`%5C`): some stacks treat it as a separator.
                b'\\' => return Err(TargetError::Backslash),
                // Double encoding (`%252F`): a second decode upstream would differ from ours.
                b'%' => return Err(TargetError::DoubleEncoding),
                // NUL and control bytes (`%00`, `%0A`): truncation and header-injection class.
                0x00..=0x1f | 0x7f => return Err(TargetError::ControlByte),
                // Unreserved characters have one canonical spelling: the decoded one.
                v if is_unreserved(v) => out.push(v as char),
                v => {
                    high_escape |= v >= 0x80;
                    out.push('%');
                    out.push(HEX[usize::from(v >> 4)] as char);
                    out.push(HEX[usize::from(v & 0xf)] as char);
                }
            }
            i += 3;
            run = i;
            continue;
        }
        return Err(match b {
            0x00..=0x1f | 0x7f => TargetError::ControlByte,
            b'\\' => TargetError::Backslash,
            _ => TargetError::BadCharacter,
        });
    }
    out.push_str(&seg[run..]);
    Ok(high_escape)
}

fn check_query_bytes(q: &str) -> Result<(), TargetError> {
    for &b in q.as_bytes() {
        match b {
            0x00..=0x1f | 0x7f => return Err(TargetError::ControlByte),
            // A fragment or raw space in the target is never valid (query/fragment confusion).
            b'#' | b' ' => return Err(TargetError::BadCharacter),
            _ if b >= 0x80 => return Err(TargetError::BadCharacter),
            _ => {}
        }
    }
    // Malformed escapes in the query would be decoded differently by different parsers.
    let bytes = q.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadEscape)?;
            decode_hex_pair(hex).ok_or(TargetError::BadEscape)?;
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn decode_hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(digit(hex[0])? << 4 | digit(hex[1])?)
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled separately).
const fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Percent-decode a matched path parameter once, as Starlette does before routing.
pub fn decode_param(raw: &str) -> String {
    // Nothing to decode (most names and ids): the same text.
    if memchr::memchr(b'%', raw.as_bytes()).is_none() {
        return raw.to_owned();
    }
    // Canonical paths always decode to valid UTF-8 (checked in `canonical_path`).
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// The same path with the trailing slash toggled (`/a/` ↔ `/a`); `None` for the root.
pub fn toggle_trailing_slash(path: &str) -> Option<String> {
    if path == "/" {
        return None;
    }
    Some(match path.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => format!("{path}/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_on_canonical_output() {
        for raw in ["/api/v1/images/i/a%20b.png", "/a/%7Euser/", "/x/%C3%A9"] {
            let once = canonical_path(raw).unwrap();
            assert_eq!(canonical_path(&once).unwrap(), once);
        }
    }

    #[test]
    fn query_parsing_matches_parse_qsl() {
        let t = canonicalize("/a", Some("board_id=a%20b&x=1+2&flag&x=3")).unwrap();
        assert_eq!(t.params.single("board_id").unwrap(), Some("a b"));
        assert_eq!(t.params.single("flag").unwrap(), Some(""));
        assert!(t.params.single("x").is_err());
        assert_eq!(t.params.single("missing").unwrap(), None);
    }

    #[test]
    fn encoded_query_names_are_decoded_like_python() {
        let t = canonicalize("/a", Some("board%5Fid=x")).unwrap();
        assert_eq!(t.params.single("board_id").unwrap(), Some("x"));
    }

    #[test]
    fn decode_param_decodes_once() {
        assert_eq!(decode_param("a%20b%25"), "a b%");
        assert_eq!(decode_param("plain-name.png"), "plain-name.png");
        assert_eq!(decode_param("%C3%A9"), "é");
    }

    #[test]
    fn toggles_slash() {
        assert_eq!(toggle_trailing_slash("/a/").as_deref(), Some("/a"));
        assert_eq!(toggle_trailing_slash("/a").as_deref(), Some("/a/"));
        assert_eq!(toggle_trailing_slash("/"), None);
    }
}
