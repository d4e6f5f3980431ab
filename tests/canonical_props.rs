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
}
