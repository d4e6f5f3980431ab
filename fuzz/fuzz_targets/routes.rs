//! The routes.toml compiler: any text compiles or is refused with an error, never a panic; an
//! accepted file round-trips through what `check` does (read again from a file it compiles to
//! the same table, the coverage check runs) and every rule answers its own paths (no two rules
//! can match one request, so the rule found is the rule itself).
#![no_main]

use std::sync::OnceLock;

use http::Method;
use invoke_guard::coverage;
use invoke_guard::rules::{Lookup, RouteTable};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Segments `coverage::concrete` turns into a path this template matches.
fn simple_template(path: &str) -> bool {
    !path.contains("{{")
        && !path.contains("}}")
        && path.split('/').all(|seg| {
            let braces = seg.contains('{') || seg.contains('}');
            !braces
                || (seg.starts_with('{')
                    && seg.ends_with('}')
                    && seg[1..seg.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*'))
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = RouteTable::parse("fuzz.toml", text) else {
        return;
    };
    // Round trip: `check` and `serve` read the file from disk.
    let file = scratch().join("routes.toml");
    std::fs::write(&file, text).expect("write");
    let again = RouteTable::load(&file).expect("an accepted text is accepted from its file");
    assert_eq!(again.checksum(), table.checksum());
    assert_eq!(
        format!("{:?}", table.rules()),
        format!("{:?}", again.rules())
    );
    for version in ["6.12", "6.13", "main"] {
        let _ = coverage::check(&table, version);
    }
    assert!(coverage::lost(&table, &again).is_empty());
    let _ = table.shadow_rules(invoke_guard::rules::Mode::Enforce);
    for rule in table.rules() {
        if !simple_template(&rule.path) {
            continue;
        }
        let path = coverage::concrete(&rule.path);
        for method in &rule.methods {
            match table.lookup(method, &path) {
                Lookup::Found(m) => assert_eq!(m.rule.id, rule.id, "{method} {path}"),
                other => panic!("{method} {path} of rule {} found {other:?}", rule.id),
            }
        }
        let _ = table.lookup(&Method::GET, &format!("{path}/"));
    }
});
