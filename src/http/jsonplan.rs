//! Pruned JSON parsing: keep only what a rule's checks read.
//!
//! A rule that reads `body.a.b` or `body.items[].id` needs those values, not the whole body.
//! Parsing a hostile 15 MiB body into a `serde_json::Value` costs ~16× its size (a `Value` per
//! `0,`); parsing it against a [`JsonPlan`] validates every byte but allocates only the selected
//! subtrees, so memory stays proportional to what the checks use.
//!
//! Invariants:
//! - The whole input is validated as JSON (skipped parts too): a body the guard accepts is a body
//!   Python's `json.loads` accepts (serde_json is stricter: no NaN, no BOM; those are refused).
//! - Duplicate object keys: the last one wins, as in `json.loads` (and `serde_json::Value`).
//! - Selected values are exactly what a full parse would give at those paths, so checks read the
//!   same data either way (a unit test compares both).
//! - [`Keep::Refs`] keeps only what `enqueue.allowed` scans (`image_name`, `video_name`,
//!   `board.board_id` at any depth), capped at [`MAX_REFS`] values.
//! - Nesting is limited to serde_json's recursion limit for the whole document, skipped members
//!   included ([`MAX_DEPTH`]; serde_json's own skipper is iterative and has no limit): a body a
//!   full parse would refuse is refused, whatever the rule reads.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The most media/board references one body may carry (a batch over this many images is refused).
pub const MAX_REFS: usize = 100_000;

/// Arrays and objects open at once that make serde_json refuse a document (its recursion limit:
/// 127 levels parse, 128 do not).
pub const MAX_DEPTH: usize = 128;

/// What to keep at one position of the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPlan {
    pub keep: Keep,
    /// Object members to descend into.
    pub fields: BTreeMap<String, JsonPlan>,
    /// Array elements to descend into.
    pub each: Option<Box<JsonPlan>>,
}

/// How much of the value at a position is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Keep {
    /// Only what `fields`/`each` select.
    #[default]
    Selected,
    /// The whole value.
    Whole,
    /// Only media and board references (what `enqueue.allowed` reads).
    Refs,
}

/// One step of a selector path.
pub enum PathStep<'a> {
    Field(&'a str),
    Each,
}

impl JsonPlan {
    /// Add a selector path ending in `keep`.
    pub fn add<'a>(&mut self, steps: impl IntoIterator<Item = PathStep<'a>>, keep: Keep) {
        let mut node = self;
        for step in steps {
            node = match step {
                PathStep::Field(f) => node.fields.entry(f.to_owned()).or_default(),
                PathStep::Each => node.each.get_or_insert_with(Default::default),
            };
        }
        node.keep = match (node.keep, keep) {
            (Keep::Whole, _) | (_, Keep::Whole) => Keep::Whole,
            (Keep::Refs, _) | (_, Keep::Refs) => Keep::Refs,
            _ => Keep::Selected,
        };
    }

    /// Whether the plan keeps anything at all.
    pub fn is_empty(&self) -> bool {
        self.keep == Keep::Selected && self.fields.is_empty() && self.each.is_none()
    }
}

/// Parse `bytes` keeping only what `plan` selects (skipped members become absent).
pub fn parse(bytes: &[u8], plan: &JsonPlan) -> Result<Value, serde_json::Error> {
    // serde_json skips ignored strings without checking their UTF-8, and Python's json.loads
    // refuses the whole body: validate it whole first (skipped parts are JSON text too).
    let text = std::str::from_utf8(bytes).map_err(|e| {
        <serde_json::Error as serde::de::Error>::custom(format!("invalid UTF-8: {e}"))
    })?;
    // Deep nesting in a member no check reads: refused as a full parse would refuse it.
    within_depth(text)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut refs = 0usize;
    let value = Pruned {
        plan,
        refs: &mut refs,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value.unwrap_or(Value::Null))
}

/// Refuse a document with [`MAX_DEPTH`] arrays/objects open at once (brackets inside strings do
/// not count). One pass over the bytes, no allocation.
fn within_depth(text: &str) -> Result<(), serde_json::Error> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth >= MAX_DEPTH {
                    return Err(<serde_json::Error as serde::de::Error>::custom(
                        "recursion limit exceeded",
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A seed that returns `None` for a value that keeps nothing.
struct Pruned<'p, 'r> {
    plan: &'p JsonPlan,
    refs: &'r mut usize,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_, '_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.plan.keep {
            Keep::Whole => Value::deserialize(d).map(Some),
            Keep::Refs => d.deserialize_any(RefsVisitor {
                refs: self.refs,
                top: true,
            }),
            Keep::Selected if self.plan.fields.is_empty() && self.plan.each.is_none() => {
                IgnoredAny::deserialize(d).map(|_| None)
            }
            Keep::Selected => d.deserialize_any(SelectedVisitor {
                plan: self.plan,
                refs: self.refs,
            }),
        }
    }
}

use serde::Deserialize;

struct SelectedVisitor<'p, 'r> {
    plan: &'p JsonPlan,
    refs: &'r mut usize,
}

/// Scalars are kept as they are (a check may need to see the wrong type to refuse it).
macro_rules! keep_scalars {
    () => {
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(
                serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
            ))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Value::String(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Value::String(v)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Some(Value::Null))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Some(Value::Null))
        }
    };
}

impl<'de> Visitor<'de> for SelectedVisitor<'_, '_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    keep_scalars!();

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some(each) = self.plan.each.as_deref() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            // The shape still matters to a check (`body.x` being an array is a type error).
            return Ok(Some(Value::Array(Vec::new())));
        };
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(Pruned {
            plan: each,
            refs: self.refs,
        })? {
            // Positions are not significant to checks; a skipped element holds nothing.
            out.push(item.unwrap_or(Value::Null));
        }
        Ok(Some(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.plan.fields.get(&key) {
                Some(sub) => {
                    let value = map.next_value_seed(Pruned {
                        plan: sub,
                        refs: self.refs,
                    })?;
                    // Last key wins: a later duplicate replaces (or removes) an earlier one.
                    match value {
                        Some(v) => out.insert(key, v),
                        None => out.remove(&key),
                    };
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(Value::Object(out)))
    }
}

/// Keeps `image_name` / `video_name` strings and `board` objects' `board_id`, at any depth,
/// mirroring how `enqueue.allowed` walks a batch.
struct RefsVisitor<'r> {
    refs: &'r mut usize,
    /// The selected value itself: kept even when it holds no reference (a check reads it).
    top: bool,
}

struct RefsSeed<'r> {
    refs: &'r mut usize,
}

impl<'de> DeserializeSeed<'de> for RefsSeed<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(RefsVisitor {
            refs: self.refs,
            top: false,
        })
    }
}

/// A scalar kept only where a reference may be (a string `image_name`, a `board_id`).
struct RefScalar;

impl<'de> DeserializeSeed<'de> for RefScalar {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(RefScalar)
    }
}

impl<'de> Visitor<'de> for RefScalar {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }
}

fn count_ref<E: serde::de::Error>(refs: &mut usize) -> Result<(), E> {
    *refs += 1;
    if *refs > MAX_REFS {
        return Err(E::custom(format!(
            "more than {MAX_REFS} image/board references"
        )));
    }
    Ok(())
}

impl<'de> Visitor<'de> for RefsVisitor<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.top.then_some(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.top.then(|| Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.top.then(|| Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.top.then(|| Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.top.then(|| Value::String(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.top.then_some(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let top = self.top;
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(RefsSeed { refs: self.refs })? {
            if let Some(v) = item {
                out.push(v);
            }
        }
        Ok((top || !out.is_empty()).then_some(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Full-parse semantics: the last duplicate key decides, so keep per key the last value.
        let top = self.top;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let kept = match key.as_str() {
                "image_name" | "video_name" => {
                    map.next_value_seed(RefOrNested { refs: self.refs })?
                }
                "board" => map.next_value_seed(BoardSeed { refs: self.refs })?,
                _ => map.next_value_seed(RefsSeed { refs: self.refs })?,
            };
            match kept {
                Some(v) => {
                    out.insert(key, v);
                }
                None => {
                    out.remove(&key);
                }
            }
        }
        Ok((top || !out.is_empty()).then_some(Value::Object(out)))
    }
}

/// `image_name`: a string is a reference; anything else is walked like any other value.
struct RefOrNested<'r> {
    refs: &'r mut usize,
}

impl<'de> DeserializeSeed<'de> for RefOrNested<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(RefOrNestedVisitor { refs: self.refs })
    }
}

struct RefOrNestedVisitor<'r> {
    refs: &'r mut usize,
}

impl<'de> Visitor<'de> for RefOrNestedVisitor<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        count_ref(self.refs)?;
        Ok(Some(Value::String(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        count_ref(self.refs)?;
        Ok(Some(Value::String(v)))
    }
    non_str_scalars_are!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        RefsVisitor {
            refs: self.refs,
            top: false,
        }
        .visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        RefsVisitor {
            refs: self.refs,
            top: false,
        }
        .visit_map(map)
    }
}

/// `board`: an object contributes its `board_id` (and is not walked further); anything else is
/// walked like any other value.
struct BoardSeed<'r> {
    refs: &'r mut usize,
}

impl<'de> DeserializeSeed<'de> for BoardSeed<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(BoardVisitor { refs: self.refs })
    }
}

struct BoardVisitor<'r> {
    refs: &'r mut usize,
}

impl<'de> Visitor<'de> for BoardVisitor<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    scalars_are!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        RefsVisitor {
            refs: self.refs,
            top: false,
        }
        .visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut board_id = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "board_id" {
                let v = map.next_value_seed(RefScalar)?;
                if v.is_string() {
                    count_ref(self.refs)?;
                }
                board_id = Some(v);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        let mut out = Map::new();
        if let Some(v) = board_id {
            out.insert("board_id".into(), v);
        }
        // An object stays an object (even empty): the scan treats `board: {}` as a board.
        Ok(Some(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(paths: &[(&[&str], Keep)]) -> JsonPlan {
        let mut p = JsonPlan::default();
        for (steps, keep) in paths {
            p.add(
                steps.iter().map(|s| match *s {
                    "[]" => PathStep::Each,
                    f => PathStep::Field(f),
                }),
                *keep,
            );
        }
        p
    }

    #[test]
    fn keeps_selected_fields_only() {
        let p = plan(&[
            (&["a", "b"], Keep::Whole),
            (&["items", "[]", "id"], Keep::Whole),
        ]);
        let v = parse(
            br#"{"pad":[0,0,0],"a":{"b":{"x":1},"c":2},"items":[{"id":"1","n":[1]},{"id":2}]}"#,
            &p,
        )
        .unwrap();
        assert_eq!(v, json!({"a":{"b":{"x":1}},"items":[{"id":"1"},{"id":2}]}));
    }

    #[test]
    fn last_duplicate_key_wins() {
        let p = plan(&[(&["is_admin"], Keep::Whole)]);
        let v = parse(br#"{"is_admin":true,"is_admin":"no"}"#, &p).unwrap();
        assert_eq!(v, json!({"is_admin":"no"}));
        let full: Value = serde_json::from_slice(br#"{"is_admin":true,"is_admin":"no"}"#).unwrap();
        assert_eq!(full["is_admin"], v["is_admin"]);
    }

    #[test]
    fn skipped_parts_are_still_validated() {
        let p = plan(&[(&["a"], Keep::Whole)]);
        assert!(parse(br#"{"a":1,"b":[1,2,}"#, &p).is_err());
        assert!(parse(br#"{"a":1,"b":NaN}"#, &p).is_err());
        // Invalid UTF-8 in a skipped string (found by fuzz/fuzz_targets/args.rs).
        assert!(parse(b"{\"a\":1,\"b\":\"x\xad\"}", &p).is_err());
        assert!(parse(br#"{"a":1} x"#, &p).is_err());
    }

    #[test]
    fn nesting_is_limited_in_skipped_members_exactly_as_in_read_ones() {
        let read = plan(&[(&["a"], Keep::Whole)]);
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        for n in [1, 100, 125, 126, 127, 128, 129, 200, 100_000] {
            // Inside one object: the member is at depth n + 1.
            let in_read = format!(r#"{{"a":{}}}"#, deep(n));
            let in_skipped = format!(r#"{{"skipped":{},"a":1}}"#, deep(n));
            let full = serde_json::from_str::<Value>(&in_read).is_ok();
            assert_eq!(parse(in_read.as_bytes(), &read).is_ok(), full, "read, {n}");
            assert_eq!(
                parse(in_skipped.as_bytes(), &read).is_ok(),
                full,
                "skipped, {n}"
            );
            let err = parse(in_skipped.as_bytes(), &read).err();
            if let Some(e) = err {
                assert!(e.to_string().contains("recursion limit"), "{e}");
            }
        }
        // Brackets inside strings are text, escaped quotes included.
        let texty = format!(r#"{{"a":1,"s":"\"{}"}}"#, "[".repeat(1000));
        assert!(parse(texty.as_bytes(), &read).is_ok());
    }

    #[test]
    fn refs_mode_finds_what_a_full_walk_finds() {
        let p = plan(&[(&["batch"], Keep::Refs)]);
        let body = json!({"batch":{"graph":{"nodes":{"n1":{"image":{"image_name":"a.png"},
            "board":{"board_id":"b1","x":[1,2]},"w":[0.5,1]},
            "n2":{"image_name":{"image_name":"nested.png"}}}},
            "data":[[{"items":[{"image_name":"c.png"},{"image_name":7}]}]]},"pad":[0,0]});
        let v = parse(body.to_string().as_bytes(), &p).unwrap();
        assert_eq!(
            v,
            json!({"batch":{"graph":{"nodes":{"n1":{"image":{"image_name":"a.png"},
                "board":{"board_id":"b1"}},"n2":{"image_name":{"image_name":"nested.png"}}}},
                "data":[[{"items":[{"image_name":"c.png"}]}]]}})
        );
    }

    #[test]
    fn refs_mode_last_duplicate_wins() {
        let p = plan(&[(&["batch"], Keep::Refs)]);
        let v = parse(
            br#"{"batch":{"image_name":"mine.png","image_name":"yours.png","board":{"board_id":"a","board_id":5}}}"#,
            &p,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"batch":{"image_name":"yours.png","board":{"board_id":null}}})
        );
    }

    #[test]
    fn refs_are_capped() {
        let p = plan(&[(&["batch"], Keep::Refs)]);
        let items: Vec<Value> = (0..MAX_REFS + 1)
            .map(|i| json!({"image_name": i.to_string()}))
            .collect();
        let body = json!({"batch": items}).to_string();
        assert!(parse(body.as_bytes(), &p).is_err());
    }
}
