//! The InvokeAI endpoint inventory (`data/invokeai-endpoints.tsv`, compiled in) checked against a
//! route table: every endpoint of the detected version must match a rule.
//!
//! Invariant: an endpoint is covered only if a real lookup of a concrete path built from its
//! template finds a rule (the same `RouteTable::lookup` requests use).

use http::Method;

use crate::facts::Schema;
use crate::rules::{Lookup, RouteTable};

/// The inventory as shipped.
pub const INVENTORY: &str = include_str!("../data/invokeai-endpoints.tsv");

/// One inventory line.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: String,
    pub template: String,
    pub versions: Vec<String>,
}

/// Parse the inventory (header and `#` lines skipped).
pub fn endpoints() -> Vec<Endpoint> {
    INVENTORY
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("method\t") && !l.trim().is_empty())
        .filter_map(|l| {
            let mut cols = l.split('\t');
            Some(Endpoint {
                method: cols.next()?.to_owned(),
                template: cols.next()?.to_owned(),
                versions: cols.next()?.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// A concrete path for a template: `{x}` → `x1`, `{*rest}` → `a/b.js`.
pub fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with("{*") {
                "a/b.js".to_owned()
            } else if seg.starts_with('{') {
                "x1".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The inventory's version column for a detected schema.
pub fn version_of(schema: &Schema) -> &'static str {
    if schema.migration_version >= 33 || schema.has_token_epoch {
        "main"
    } else if schema.has_board_visibility {
        "6.13"
    } else {
        "6.12"
    }
}

/// Which rule each endpoint of `version` hits; `Err` lists the uncovered ones.
pub fn check(table: &RouteTable, version: &str) -> Result<usize, Vec<String>> {
    let mut missing = Vec::new();
    let mut covered = 0;
    for e in endpoints()
        .iter()
        .filter(|e| e.versions.iter().any(|v| v == version))
    {
        let Ok(method) = Method::from_bytes(e.method.as_bytes()) else {
            missing.push(format!("{} {} (bad method)", e.method, e.template));
            continue;
        };
        match table.lookup(&method, &concrete(&e.template)) {
            Lookup::Found(_) => covered += 1,
            _ => missing.push(format!("{} {}", e.method, e.template)),
        }
    }
    if missing.is_empty() {
        Ok(covered)
    } else {
        Err(missing)
    }
}

/// Endpoints (any version) that `old` covers and `new` does not: what a reload would drop.
pub fn lost(old: &RouteTable, new: &RouteTable) -> Vec<String> {
    let covers = |table: &RouteTable, method: &Method, path: &str| {
        matches!(table.lookup(method, path), Lookup::Found(_))
    };
    endpoints()
        .iter()
        .filter_map(|e| {
            let method = Method::from_bytes(e.method.as_bytes()).ok()?;
            let path = concrete(&e.template);
            (covers(old, &method, &path) && !covers(new, &method, &path))
                .then(|| format!("{} {}", e.method, e.template))
        })
        .collect()
}
