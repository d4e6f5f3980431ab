//! Request argument extraction, as the pipeline reads it for the shipped rules:
//! - JSON (`body.*`): the pruned parse accepts exactly what a full parse accepts (beyond the
//!   reference cap; nesting is limited in skipped members as in read ones) and keeps, at every
//!   selected path, exactly what the full parse holds there
//!   (duplicate keys: last wins, as Python's `json.loads`).
//! - multipart (`form.*`): never panics; an accepted body has unique field names and no field
//!   value spans a boundary delimiter (the parts were split where InvokeAI splits them).
//! - query (`query.*`): an accepted query decodes to what `form_urlencoded` (WHATWG, the same
//!   rules as Python's `parse_qsl`) reads, value for value.
//!
//! Input: byte 0 picks the parser (and the rule whose plan is used); for multipart the first
//! line is the Content-Type header value.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use invoke_guard::http::body;
use invoke_guard::http::canonical::canonicalize;
use invoke_guard::http::jsonplan::{JsonPlan, Keep};
use invoke_guard::rules::{BodyNeed, RouteTable};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn json_plans() -> &'static [JsonPlan] {
    static PLANS: OnceLock<Vec<JsonPlan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let table = RouteTable::parse("routes.toml", include_str!("../../routes.toml"))
            .expect("shipped routes compile");
        let mut plans: Vec<JsonPlan> = table
            .rules()
            .iter()
            .filter(|r| r.body == BodyNeed::Json)
            .map(|r| r.json_plan.clone())
            .collect();
        plans.dedup();
        plans
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn has_refs(plan: &JsonPlan) -> bool {
    plan.keep == Keep::Refs
        || plan.fields.values().any(has_refs)
        || plan.each.as_deref().is_some_and(has_refs)
}

/// What the pruned parse must keep of a fully parsed value (jsonplan's documented semantics).
fn project(v: &Value, plan: &JsonPlan) -> Option<Value> {
    if plan.keep == Keep::Whole {
        return Some(v.clone());
    }
    if plan.fields.is_empty() && plan.each.is_none() {
        return None;
    }
    Some(match v {
        Value::Array(items) => match plan.each.as_deref() {
            None => Value::Array(Vec::new()),
            Some(each) => Value::Array(
                items
                    .iter()
                    .map(|i| project(i, each).unwrap_or(Value::Null))
                    .collect(),
            ),
        },
        Value::Object(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), project(v, plan.fields.get(k)?)?)))
                .collect(),
        ),
        scalar => scalar.clone(),
    })
}

fn check_json(plan: &JsonPlan, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let pruned = body::json(bytes, plan);
    let full = serde_json::from_slice::<Value>(bytes);
    match (&pruned, &full) {
        // Skipped members included: nesting is limited before parsing (jsonplan::MAX_DEPTH).
        (Ok(_), Err(e)) => panic!("pruned parse accepted what a full parse refuses: {e}"),
        (Err(e), Ok(_)) => assert!(has_refs(plan), "pruned parse refused valid JSON: {e:?}"),
        _ => {}
    }
    if let (Ok(Some(kept)), Ok(full)) = (pruned, full) {
        // Where both accept, the kept values are the full parse's values at those paths.
        if !has_refs(plan) {
            assert_eq!(Some(kept), project(&full, plan).or(Some(Value::Null)));
        }
    }
}

fn check_form(data: &[u8]) {
    let (ct, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(ct) = http::HeaderValue::from_bytes(ct) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, ct.clone());
    let bytes = Bytes::copy_from_slice(rest);
    let Ok(fields) = runtime().block_on(body::form(&bytes, &headers)) else {
        return;
    };
    let boundary = ct
        .to_str()
        .ok()
        .and_then(|c| {
            c.to_ascii_lowercase()
                .find("boundary=")
                .map(|i| c[i + 9..].to_owned())
        })
        .map(|b| {
            b.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_owned()
        });
    // Only a plain boundary (a quoted one may hold `;`, which this simple reading would cut).
    let plain = !ct.as_bytes().contains(&b'"');
    if let Some(b) = boundary.filter(|b| plain && !b.is_empty()) {
        let delimiter = format!("\r\n--{b}");
        for (name, value) in &fields {
            assert!(
                !value.contains(&delimiter),
                "field {name:?} spans a delimiter"
            );
        }
    }
}

fn check_query(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = canonicalize("/q", Some(q)) else {
        return;
    };
    let mut reference: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        reference
            .entry(k.into_owned())
            .or_default()
            .push(v.into_owned());
    }
    for (k, values) in &reference {
        match values.as_slice() {
            [one] => assert_eq!(target.params.single(k), Ok(Some(one.as_str())), "{q:?}"),
            _ => assert!(target.params.single(k).is_err(), "{q:?}: {k:?} repeated"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 | 1 => {
            let plans = json_plans();
            check_json(&plans[usize::from(which / 4) % plans.len()], rest);
        }
        2 => check_form(rest),
        _ => check_query(rest),
    }
});
