//! The shipped routes.toml against the endpoint inventory and the route lists dumped from real
//! InvokeAI servers' /openapi.json: every endpoint matches exactly one rule, no rule is dead.

use std::collections::BTreeSet;

use http::Method;
use invoke_guard::coverage::{concrete, endpoints};
use invoke_guard::rules::{Lookup, RouteTable};

fn table() -> RouteTable {
    RouteTable::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/routes.toml"
    )))
    .unwrap()
}

fn rule_for<'t>(t: &'t RouteTable, method: &str, template: &str) -> Option<&'t str> {
    match t.lookup(
        &Method::from_bytes(method.as_bytes()).unwrap(),
        &concrete(template),
    ) {
        Lookup::Found(m) => Some(m.rule.id.as_str()),
        _ => None,
    }
}

#[test]
fn every_inventory_endpoint_matches_one_rule_and_no_rule_is_dead() {
    let t = table();
    let mut hit = BTreeSet::new();
    let mut missing = Vec::new();
    for e in endpoints() {
        match rule_for(&t, &e.method, &e.template) {
            Some(id) => {
                hit.insert(id.to_owned());
            }
            None => missing.push(format!("{} {}", e.method, e.template)),
        }
    }
    assert!(missing.is_empty(), "endpoints without a rule: {missing:#?}");
    // Exactly one: the loader rejects overlapping templates per method, so a hit is unique.
    let dead: Vec<&str> = t
        .rules()
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !hit.contains(*id))
        .collect();
    assert!(dead.is_empty(), "rules no endpoint uses: {dead:?}");
    let counts = |v: &str| {
        endpoints()
            .iter()
            .filter(|e| e.versions.iter().any(|x| x == v) && e.template.starts_with("/api/"))
            .count()
    };
    assert_eq!(counts("6.12"), 145);
    assert_eq!(counts("6.13"), 162);
    assert!(counts("main") >= 189);
}

/// The route lists dumped from real servers agree with the inventory and are all covered.
#[test]
fn real_server_route_lists_are_covered() {
    let t = table();
    let inventory: BTreeSet<(String, String, String)> = endpoints()
        .into_iter()
        .flat_map(|e| {
            let plain = e.template.replace("{*", "{");
            e.versions
                .into_iter()
                .map(move |v| (v, e.method.clone(), plain.clone()))
        })
        .collect();
    for (file, column) in [
        ("invokeai-6.12.0.paths.tsv", "6.12"),
        ("invokeai-6.13.8.paths.tsv", "6.13"),
        ("invokeai-6.14.2.paths.tsv", "main"),
    ] {
        let text = std::fs::read_to_string(format!(
            "{}/tests/data/openapi/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (method, path) = line.split_once('\t').unwrap();
            assert!(
                rule_for(&t, method, path).is_some(),
                "{file}: {method} {path} has no rule"
            );
            assert!(
                inventory.contains(&(column.to_owned(), method.to_owned(), path.to_owned())),
                "{file}: {method} {path} is missing from data/invokeai-endpoints.tsv ({column})"
            );
            n += 1;
        }
        assert!(n >= 145, "{file}: only {n} routes");
    }
}

#[test]
fn docs_name_every_word_of_the_vocabulary() {
    use invoke_guard::rules::vocab::{Capability, Predicate, ResponseFilter};
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rules.md")).unwrap();
    let words = Predicate::names()
        .chain(ResponseFilter::names())
        .chain(Capability::names());
    let missing: Vec<&str> = words.filter(|w| !doc.contains(&format!("`{w}"))).collect();
    assert!(
        missing.is_empty(),
        "docs/rules.md does not document: {missing:?}"
    );
}
