//! The canonicalizer: any request target is refused or canonical, and canonicalizing the output
//! again is the identity (what is matched is what is forwarded, and a second parse agrees).
#![no_main]

use invoke_guard::http::canonical::{canonical_path, canonicalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let Ok(target) = canonicalize(path, query) else {
        return;
    };
    let canon = &target.path;
    // Idempotent: the canonical path is its own canonical form.
    assert_eq!(canonical_path(canon).as_ref(), Ok(canon), "{text:?}");
    assert!(canon.starts_with('/'), "{text:?} -> {canon:?}");
    // No empty, `.` or `..` segment (a trailing `/` is kept as written).
    let body = canon.strip_suffix('/').unwrap_or(canon);
    if canon != "/" {
        for seg in body.split('/').skip(1) {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{text:?} -> {canon:?}"
            );
        }
    }
    // Only pchars, `/` and uppercase escapes of bytes that are not unreserved, `/`, `\`, `%` or
    // control bytes.
    let bytes = canon.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = &canon[i + 1..i + 3];
            assert_eq!(hex, hex.to_ascii_uppercase(), "{canon:?}");
            let v = u8::from_str_radix(hex, 16).expect("escape");
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~/\\%".contains(&v) || v < 0x20 || v == 0x7f),
                "{text:?} -> {canon:?} keeps %{hex}"
            );
            i += 3;
            continue;
        }
        assert!(
            b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b),
            "{text:?} -> {canon:?} keeps {b:#x}"
        );
        i += 1;
    }
    // Decoding once (what Starlette does) gives valid UTF-8.
    let decoded: Vec<u8> = percent_encoding_decode(canon);
    assert!(std::str::from_utf8(&decoded).is_ok(), "{canon:?}");
    // The query is forwarded as received and re-validates.
    if let Some(q) = &target.query {
        assert_eq!(Some(q.as_str()), query);
        assert!(canonicalize(canon, Some(q)).is_ok());
    }
    assert_eq!(canonicalize(canon, query).as_ref(), Ok(&target));
});

fn percent_encoding_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
