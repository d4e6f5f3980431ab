//! Properties of the canonicalizer over random targets built from the characters that matter.

use invoke_guard::http::canonical::canonical_path;
use proptest::prelude::*;

fn target() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%00".to_owned()),
        Just("%41".to_owned()),
        Just("%c3%a9".to_owned()),
        Just("%C0%AF".to_owned()),
        Just("%".to_owned()),
        Just("\\\\".to_owned()),
        Just(";".to_owned()),
        Just("%e9".to_owned()),
        Just("%7e".to_owned()),
        Just(" ".to_owned()),
        Just("\u{e9}".to_owned()),
        "[a-zA-Z0-9_~-]{1,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #[test]
    fn canonical_paths_are_idempotent_short_and_clean(raw in target()) {
        if let Ok(canon) = canonical_path(&raw) {
            let again = canonical_path(&canon);
            prop_assert_eq!(again.as_ref(), Ok(&canon));
            prop_assert!(canon.len() <= raw.len(), "{} grew into {}", raw, canon);
            prop_assert!(canon.starts_with('/'));
            let body = canon.trim_end_matches('/');
            for seg in body.split('/').skip(1) {
                prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{} -> {}", raw, canon);
            }
            let lower = canon.to_ascii_lowercase();
            for bad in ["%2f", "%5c", "%25", "%00", "%2e", "\\\\"] {
                prop_assert!(!lower.contains(bad), "{} -> {} keeps {}", raw, canon, bad);
            }
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(&canon).collect();
            prop_assert!(String::from_utf8(decoded).is_ok());
        }
    }

    /// The one-pass canonicalizer refuses and rewrites exactly as the segment-by-segment one it
    /// replaced (kept below as the reference): same output, same error, for every target.
    #[test]
    fn canonical_path_matches_the_segmentwise_reference(raw in target()) {
        prop_assert_eq!(canonical_path(&raw), reference::canonical_path(&raw), "{}", raw);
    }
}

/// The canonicalizer as it was before the one-pass rewrite (a `String` per segment).
mod reference {
    use invoke_guard::http::canonical::TargetError;

    pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
        if !raw.starts_with('/') {
            return Err(TargetError::NotOriginForm);
        }
        let mut out = String::with_capacity(raw.len());
        let body = &raw[1..];
        if body.is_empty() {
            return Ok("/".to_owned());
        }
        let segments: Vec<&str> = body.split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() && i != last {
                return Err(TargetError::EmptySegment);
            }
            let canon = canonical_segment(seg)?;
            if canon == "." || canon == ".." {
                return Err(TargetError::DotSegment);
            }
            out.push('/');
            out.push_str(&canon);
        }
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&out).collect();
        if std::str::from_utf8(&decoded).is_err() {
            return Err(TargetError::InvalidUtf8);
        }
        Ok(out)
    }

    fn canonical_segment(seg: &str) -> Result<String, TargetError> {
        let bytes = seg.as_bytes();
        let mut out = String::with_capacity(seg.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadEscape)?;
                let value = decode_hex_pair(hex).ok_or(TargetError::BadEscape)?;
                match value {
                    b'/' => return Err(TargetError::EncodedSlash),
                    b'\\' => return Err(TargetError::Backslash),
                    b'%' => return Err(TargetError::DoubleEncoding),
                    0x00..=0x1f | 0x7f => return Err(TargetError::ControlByte),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
                continue;
            }
            match b {
                0x00..=0x1f | 0x7f => return Err(TargetError::ControlByte),
                b'\\' => return Err(TargetError::Backslash),
                _ if is_pchar(b) => out.push(b as char),
                _ => return Err(TargetError::BadCharacter),
            }
            i += 1;
        }
        Ok(out)
    }

    fn decode_hex_pair(hex: &[u8]) -> Option<u8> {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        Some(digit(hex[0])? << 4 | digit(hex[1])?)
    }

    fn is_unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }

    fn is_pchar(b: u8) -> bool {
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
}
