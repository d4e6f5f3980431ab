//! Batch scanning: every model reference in an `enqueue_batch` body and the number of queue
//! items InvokeAI will create from it, in one streaming pass over the raw JSON (nothing but the
//! findings is kept, so memory stays near the body size whatever its shape).
//!
//! Invariants:
//! - A model reference is every JSON object with a string member `key`, anywhere in the batch:
//!   node fields of every model-carrying type (`ModelIdentifierField` and the fields nesting it:
//!   LoRA lists, UNet/CLIP/VAE/T5/transformer fields, ControlNet/IP-Adapter/T2I-Adapter fields),
//!   the metadata InvokeAI's `metadata_to_*` nodes resolve keys from, batch data items and the
//!   workflow JSON. InvokeAI loads a model by its key alone; a `key` the guard does not know is a
//!   reference like any other (refused by the caller of this module).
//! - Duplicate object keys: every value is scanned (a superset of what Python's last-wins parse
//!   keeps), so no duplicate can hide a reference; counts follow the last value, as Python does.
//! - The item count is InvokeAI's `calc_session_count` (6.12.0, 6.13.8 and 6.14.x agree for every
//!   batch they accept): `runs` × the product, over `data` groups, of the first datum's number of
//!   items (an empty group gives 0; no `data` gives `runs`), in saturating arithmetic. `runs`
//!   is read as pydantic's lax `int` reads it (integers, integral floats, booleans, integer
//!   strings); a value the guard cannot read that way is an error, never a guess.
//! - A body the scan cannot read completely is an error (the request is refused, never forwarded
//!   unchecked); so is a batch with more than [`MAX_MODEL_REFS`] references.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The most model references (occurrences) one body may carry.
pub const MAX_MODEL_REFS: usize = crate::http::jsonplan::MAX_REFS;

/// One distinct model key a batch references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub key: String,
    /// The `name` written next to the key (a hint for messages only; never trusted).
    pub name: Option<String>,
    /// Where it was first seen (`graph.nodes.lora_1.lora`).
    pub at: String,
    /// How many times it occurs.
    pub count: usize,
}

/// What a scan found in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchScan {
    /// Distinct model keys, in first-seen order.
    pub refs: Vec<ModelRef>,
    /// `(node id, type)` of every node of `graph.nodes`.
    pub node_types: Vec<(String, String)>,
    /// `runs` as InvokeAI reads it (1 when absent).
    pub runs: u64,
    /// Per `data` group: the zipped length (the first datum's number of items).
    pub groups: Vec<u64>,
}

impl BatchScan {
    /// The number of queue items InvokeAI creates from the batch (saturating).
    pub fn sessions(&self) -> u64 {
        self.groups
            .iter()
            .fold(self.runs, |acc, &n| acc.saturating_mul(n))
    }

    /// The arithmetic, for explain: `runs 2 × data 3 × 4 = 24`.
    pub fn arithmetic(&self) -> String {
        let mut s = format!("runs {}", self.runs);
        if !self.groups.is_empty() {
            s.push_str(" × data ");
            s.push_str(
                &self
                    .groups
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" × "),
            );
        }
        format!("{s} = {}", self.sessions())
    }
}

/// Model references collected by a walk.
#[derive(Debug, Default)]
pub struct Refs {
    path: Vec<String>,
    found: Vec<ModelRef>,
    index: HashMap<String, usize>,
    occurrences: usize,
}

impl Refs {
    fn add(&mut self, key: String, name: Option<String>) -> Result<(), String> {
        self.occurrences += 1;
        if self.occurrences > MAX_MODEL_REFS {
            return Err(format!("more than {MAX_MODEL_REFS} model references"));
        }
        match self.index.get(&key) {
            Some(&i) => {
                let r = &mut self.found[i];
                r.count += 1;
                if r.name.is_none() {
                    r.name = name;
                }
            }
            None => {
                self.index.insert(key.clone(), self.found.len());
                self.found.push(ModelRef {
                    key,
                    name,
                    at: self.location(),
                    count: 1,
                });
            }
        }
        Ok(())
    }

    fn location(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            if !s.is_empty() && !seg.starts_with('[') {
                s.push('.');
            }
            s.push_str(seg);
        }
        s
    }

    /// The distinct references found.
    pub fn into_vec(self) -> Vec<ModelRef> {
        self.found
    }

    /// Walk a parsed value (a socket event, a stored session) the same way.
    pub fn walk_value(&mut self, v: &Value) -> Result<(), String> {
        match v {
            Value::Object(map) => {
                for (k, val) in map {
                    self.path.push(k.clone());
                    let r = self.walk_value(val);
                    self.path.pop();
                    r?;
                }
                if let Some(Value::String(key)) = map.get("key") {
                    let name = map.get("name").and_then(Value::as_str).map(str::to_owned);
                    self.add(key.clone(), name)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.path.push(format!("[{i}]"));
                    let r = self.walk_value(item);
                    self.path.pop();
                    r?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The model references in a JSON text (a stored session or workflow), streamed.
pub fn refs_in_json(text: &str) -> Result<Vec<ModelRef>, String> {
    let mut refs = Refs::default();
    let mut de = serde_json::Deserializer::from_str(text);
    Generic { refs: &mut refs }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(refs.into_vec())
}

/// Scan the batch at `path` (object members from the root, e.g. `["batch"]`) of a JSON body.
/// `Ok(None)`: there is no object at that path.
pub fn scan(bytes: &[u8], path: &[&str]) -> Result<Option<BatchScan>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8: {e}"))?;
    let mut refs = Refs::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let found = AtPath {
        path,
        refs: &mut refs,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(found.map(|mut scan| {
        scan.refs = refs.into_vec();
        scan
    }))
}

type Found = Option<BatchScan>;

/// Navigate to the batch (the last duplicate decides the counts; every duplicate is scanned).
struct AtPath<'p, 'r> {
    path: &'p [&'p str],
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for AtPath<'_, '_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        match self.path.split_first() {
            None => d.deserialize_any(BatchVisitor { refs: self.refs }),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for AtPath<'_, '_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let (first, rest) = self.path.split_first().expect("a non-empty path");
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == *first {
                self.refs.path.push(key);
                let value = map.next_value_seed(AtPath {
                    path: rest,
                    refs: &mut *self.refs,
                });
                self.refs.path.pop();
                found = value?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    scalars_are!(None);
}

/// Walks any value, collecting `key` objects.
struct Generic<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for Generic<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A member that may be a reference's string (`key`, `name`) or any other value.
struct MaybeString<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for MaybeString<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MaybeString<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    non_str_scalars_are!(None);
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Generic { refs: self.refs }.visit_map(map).map(|()| None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Generic { refs: self.refs }.visit_seq(seq).map(|()| None)
    }
}

impl<'de> Visitor<'de> for Generic<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    scalars_are!(());
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.refs.path.push(format!("[{i}]"));
            let next = seq.next_element_seed(Generic {
                refs: &mut *self.refs,
            });
            self.refs.path.pop();
            if next?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        object(self.refs, map, |_, _, _| Ok(None::<()>)).map(|_| ())
    }
}

/// Walk an object: `key`/`name` strings are noted (every duplicate), every other member is
/// walked generically unless `special` takes it (it then reads the value itself and returns
/// `Some`). At the end each `key` string found is one reference.
fn object<'de, A, T>(
    refs: &mut Refs,
    mut map: A,
    mut special: impl FnMut(&str, &mut A, &mut Refs) -> Result<Option<T>, A::Error>,
) -> Result<Vec<(String, T)>, A::Error>
where
    A: MapAccess<'de>,
{
    let mut keys = Vec::new();
    let mut name = None;
    let mut taken = Vec::new();
    while let Some(member) = map.next_key::<String>()? {
        refs.path.push(member.clone());
        let result = member_of(&member, &mut map, refs, &mut special);
        refs.path.pop();
        match result? {
            Member::Taken(t) => taken.push((member, t)),
            Member::Key(Some(k)) => keys.push(k),
            Member::Name(Some(n)) => name = Some(n),
            Member::Key(None) | Member::Name(None) | Member::Walked => {}
        }
    }
    for key in keys {
        refs.add(key, name.clone())
            .map_err(<A::Error as serde::de::Error>::custom)?;
    }
    Ok(taken)
}

enum Member<T> {
    Taken(T),
    Key(Option<String>),
    Name(Option<String>),
    Walked,
}

fn member_of<'de, A, T>(
    member: &str,
    map: &mut A,
    refs: &mut Refs,
    special: &mut impl FnMut(&str, &mut A, &mut Refs) -> Result<Option<T>, A::Error>,
) -> Result<Member<T>, A::Error>
where
    A: MapAccess<'de>,
{
    if let Some(t) = special(member, map, refs)? {
        return Ok(Member::Taken(t));
    }
    Ok(match member {
        // Duplicate-key smuggling: every `key` member counts, not only the one a parser keeps.
        "key" => Member::Key(map.next_value_seed(MaybeString { refs })?),
        "name" => Member::Name(map.next_value_seed(MaybeString { refs })?),
        _ => {
            map.next_value_seed(Generic { refs })?;
            Member::Walked
        }
    })
}

/// The batch object: graph (node types), data (counts), runs; everything walked for keys.
struct BatchVisitor<'r> {
    refs: &'r mut Refs,
}

enum BatchPart {
    Nodes(Vec<(String, String)>),
    Data(Option<Vec<u64>>),
    Runs(u64),
}

impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Found, A::Error> {
        let parts = object(self.refs, map, |member, map, refs| {
            Ok(match member {
                "graph" => Some(BatchPart::Nodes(map.next_value_seed(GraphSeed { refs })?)),
                "data" => Some(BatchPart::Data(map.next_value_seed(DataSeed { refs })?)),
                "runs" => Some(BatchPart::Runs(map.next_value_seed(RunsSeed)?)),
                _ => None,
            })
        })?;
        let mut scan = BatchScan {
            runs: 1,
            ..BatchScan::default()
        };
        for (_, part) in parts {
            match part {
                // Every graph's nodes count (a superset); the last data and runs decide.
                BatchPart::Nodes(nodes) => scan.node_types.extend(nodes),
                BatchPart::Data(groups) => scan.groups = groups.unwrap_or_default(),
                BatchPart::Runs(runs) => scan.runs = runs,
            }
        }
        Ok(Some(scan))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        Generic { refs: self.refs }.visit_seq(seq).map(|()| None)
    }
    scalars_are!(None);
}

/// `graph`: its `nodes` give the node types; everything is walked for keys.
struct GraphSeed<'r> {
    refs: &'r mut Refs,
}

type Nodes = Vec<(String, String)>;

impl<'de> DeserializeSeed<'de> for GraphSeed<'_> {
    type Value = Nodes;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Nodes, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GraphSeed<'_> {
    type Value = Nodes;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a graph")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nodes, A::Error> {
        let taken = object(self.refs, map, |member, map, refs| {
            Ok(match member {
                "nodes" => Some(map.next_value_seed(NodesSeed { refs })?),
                _ => None,
            })
        })?;
        Ok(taken.into_iter().flat_map(|(_, nodes)| nodes).collect())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Nodes, A::Error> {
        Generic { refs: self.refs }
            .visit_seq(seq)
            .map(|()| Vec::new())
    }
    scalars_are!(Vec::new());
}

/// `graph.nodes`: node id → node; each node's `type` (every duplicate) is recorded.
struct NodesSeed<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = Nodes;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Nodes, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = Nodes;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("graph nodes")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nodes, A::Error> {
        let taken = object(self.refs, map, |member, map, refs| {
            let node_id = member.to_owned();
            Ok(Some(map.next_value_seed(NodeSeed { refs, node_id })?))
        })?;
        Ok(taken.into_iter().flat_map(|(_, types)| types).collect())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Nodes, A::Error> {
        Generic { refs: self.refs }
            .visit_seq(seq)
            .map(|()| Vec::new())
    }
    scalars_are!(Vec::new());
}

/// One node: its `type` strings, and every field walked for keys.
struct NodeSeed<'r> {
    refs: &'r mut Refs,
    node_id: String,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Nodes;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Nodes, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Nodes;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nodes, A::Error> {
        let taken = object(self.refs, map, |member, map, refs| {
            Ok(match member {
                "type" => Some(map.next_value_seed(MaybeString { refs })?),
                _ => None,
            })
        })?;
        Ok(taken
            .into_iter()
            .filter_map(|(_, t)| t.map(|t| (self.node_id.clone(), t)))
            .collect())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Nodes, A::Error> {
        Generic { refs: self.refs }
            .visit_seq(seq)
            .map(|()| Vec::new())
    }
    scalars_are!(Vec::new());
}

fn shape<E: serde::de::Error>(what: &str) -> E {
    E::custom(format!(
        "batch.data: {what} (InvokeAI expects a list of lists of {{node_path, field_name, items}})"
    ))
}

/// `data`: `null` (no data) or a list of groups; each group's zipped length.
struct DataSeed<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Option<Vec<u64>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Option<Vec<u64>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null or a list of batch datum lists")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut groups = Vec::new();
        loop {
            self.refs.path.push(format!("[{}]", groups.len()));
            let next = seq.next_element_seed(GroupSeed {
                refs: &mut *self.refs,
            });
            self.refs.path.pop();
            match next? {
                Some(n) => groups.push(n),
                None => return Ok(Some(groups)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(shape("an object instead of a list"))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(shape("not a list"))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(shape("not a list"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(shape("not a list"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(shape("not a list"))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(shape("not a list"))
    }
}

/// One group (a list of datums zipped together): its length is the first datum's item count.
struct GroupSeed<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for GroupSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for GroupSeed<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of batch datums")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut first = None;
        let mut i = 0usize;
        loop {
            self.refs.path.push(format!("[{i}]"));
            let next = seq.next_element_seed(DatumSeed {
                refs: &mut *self.refs,
            });
            self.refs.path.pop();
            match next? {
                Some(n) => {
                    first.get_or_insert(n);
                }
                None => return Ok(first.unwrap_or(0)),
            }
            i += 1;
        }
    }
}

/// One datum: `items` (the last duplicate counts; every item is walked for keys).
struct DatumSeed<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for DatumSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DatumSeed<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch datum object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
        let taken = object(self.refs, map, |member, map, refs| {
            Ok(match member {
                "items" => Some(map.next_value_seed(ItemsSeed { refs })?),
                _ => None,
            })
        })?;
        // `items` defaults to an empty list.
        Ok(taken.last().map_or(0, |(_, n)| *n))
    }
}

struct ItemsSeed<'r> {
    refs: &'r mut Refs,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of items")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        loop {
            self.refs.path.push(format!("[{n}]"));
            let next = seq.next_element_seed(Generic {
                refs: &mut *self.refs,
            });
            self.refs.path.pop();
            if next?.is_none() {
                return Ok(n);
            }
            n += 1;
        }
    }
}

/// `runs`, read like pydantic's lax `int`.
struct RunsSeed;

impl<'de> DeserializeSeed<'de> for RunsSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

fn runs_error<E: serde::de::Error>(what: impl fmt::Display) -> E {
    E::custom(format!("batch.runs: {what} is not an integer"))
}

impl<'de> Visitor<'de> for RunsSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_u64<E>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E>(self, v: i64) -> Result<u64, E> {
        // InvokeAI refuses runs < 1; nothing is created.
        Ok(v.max(0) as u64)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
        if v.is_finite() && v.fract() == 0.0 {
            // `as` saturates: a float beyond u64 counts as u64::MAX items.
            Ok(v.max(0.0) as u64)
        } else {
            Err(runs_error(v))
        }
    }
    fn visit_bool<E>(self, v: bool) -> Result<u64, E> {
        Ok(u64::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        // Type-coercion differential: pydantic's lax int reads "3" as 3 runs; so does the count.
        let t = v.trim();
        if let Ok(n) = t.parse::<i128>() {
            return Ok(n.clamp(0, i128::from(u64::MAX)) as u64);
        }
        match t.parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 => Ok(f.max(0.0) as u64),
            _ => Err(runs_error(format!("{v:?}"))),
        }
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<u64, E> {
        Err(runs_error("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(runs_error("a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(runs_error("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ident(key: &str, name: &str, base: &str, kind: &str) -> Value {
        json!({"key": key, "hash": "blake3:x", "name": name, "base": base, "type": kind})
    }

    fn keys(scan: &BatchScan) -> Vec<&str> {
        scan.refs.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn finds_references_in_graph_data_and_workflow() {
        let body = json!({"prepend": false, "batch": {
            "graph": {"id": "g", "nodes": {
                "model_loader": {"id": "model_loader", "type": "main_model_loader",
                    "model": ident("main-1", "SD 1.5", "sd-1", "main")},
                "lora_sel": {"id": "lora_sel", "type": "lora_selector",
                    "lora": ident("lora-1", "Style", "sd-1", "lora"), "weight": 0.75},
                "unet_in": {"id": "unet_in", "type": "lora_loader",
                    "unet": {"unet": ident("main-2", "x", "sd-1", "main"), "scheduler": ident("main-2", "x", "sd-1", "main"),
                             "loras": [{"lora": ident("lora-2", "y", "sd-1", "lora"), "weight": 1}]}},
                "meta": {"id": "meta", "type": "core_metadata", "vae": ident("vae-1", "vae", "sd-1", "vae")}},
                "edges": []},
            "data": [[{"node_path": "x", "field_name": "y", "items": [{"image_name": "a.png", "key": "lora-3"}]}]],
            "workflow": {"nodes": [{"data": {"inputs": {"model": {"value": ident("main-3", "z", "sd-1", "main")}}}}]},
            "runs": 2}});
        let scan = scan(body.to_string().as_bytes(), &["batch"])
            .unwrap()
            .unwrap();
        let mut found = keys(&scan);
        found.sort_unstable();
        assert_eq!(
            found,
            ["lora-1", "lora-2", "lora-3", "main-1", "main-2", "main-3", "vae-1"]
        );
        let r = |k: &str| scan.refs.iter().find(|r| r.key == k).unwrap();
        assert_eq!(r("main-1").at, "batch.graph.nodes.model_loader.model");
        assert_eq!(
            r("lora-2").at,
            "batch.graph.nodes.unet_in.unet.loras[0].lora"
        );
        assert_eq!(r("lora-3").at, "batch.data[0][0].items[0]");
        assert_eq!(
            r("main-3").at,
            "batch.workflow.nodes[0].data.inputs.model.value"
        );
        assert_eq!(r("main-2").count, 2);
        assert_eq!(r("lora-1").name.as_deref(), Some("Style"));
        assert_eq!(scan.node_types.len(), 4);
        assert!(scan
            .node_types
            .contains(&("lora_sel".to_owned(), "lora_selector".to_owned())));
        assert_eq!(
            (scan.runs, scan.groups.clone(), scan.sessions()),
            (2, vec![1], 2)
        );
    }

    #[test]
    fn duplicates_hide_nothing_and_counts_follow_the_last() {
        let text = r#"{"batch":{"graph":{"nodes":{"n":{"type":"a","type":"metadata_to_model",
            "model":{"key":"allowed","key":"hidden"}}}},"runs":1,"runs":3,
            "data":[[{"items":[1,2,3,4,5]}]],"data":[[{"items":[1,2],"items":[1,2,3,4]},{"items":[9,9,9,9]}],[]]}}"#;
        let scan = scan(text.as_bytes(), &["batch"]).unwrap().unwrap();
        assert_eq!(keys(&scan), ["allowed", "hidden"]);
        assert_eq!(scan.node_types.len(), 2);
        assert_eq!((scan.runs, scan.groups.clone()), (3, vec![4, 0]));
        assert_eq!(scan.sessions(), 0, "an empty group creates nothing");
    }

    #[test]
    fn session_count_matches_calc_session_count() {
        let count = |batch: Value| {
            scan(json!({ "batch": batch }).to_string().as_bytes(), &["batch"])
                .unwrap()
                .unwrap()
                .sessions()
        };
        assert_eq!(count(json!({"graph": {}})), 1);
        assert_eq!(count(json!({"graph": {}, "runs": 5, "data": null})), 5);
        assert_eq!(count(json!({"graph": {}, "runs": 5, "data": []})), 5);
        let d = |n: usize| json!({"node_path": "a", "field_name": "b", "items": vec![0; n]});
        assert_eq!(
            count(json!({"graph": {}, "runs": 3, "data": [[d(4), d(4)], [d(5)]]})),
            60
        );
        assert_eq!(
            count(json!({"graph": {}, "runs": "7", "data": [[d(2)]]})),
            14
        );
        assert_eq!(count(json!({"graph": {}, "runs": 2.0})), 2);
        assert_eq!(count(json!({"graph": {}, "runs": true})), 1);
        assert_eq!(
            count(json!({"graph": {}, "runs": u64::MAX, "data": [[d(3)]]})),
            u64::MAX,
            "saturating"
        );
        assert_eq!(
            count(json!({"graph": {}, "runs": "99999999999999999999999", "data": [[d(2)]]})),
            u64::MAX
        );
    }

    #[test]
    fn unreadable_batches_are_errors() {
        for bad in [
            json!({"batch": {"runs": 1.5}}),
            json!({"batch": {"runs": "many"}}),
            json!({"batch": {"runs": null}}),
            json!({"batch": {"data": {"a": 1}}}),
            json!({"batch": {"data": [{"items": []}]}}),
            json!({"batch": {"data": [[{"items": 3}]]}}),
            json!({"batch": {"data": [["x"]]}}),
        ] {
            assert!(
                scan(bad.to_string().as_bytes(), &["batch"]).is_err(),
                "{bad}"
            );
        }
        assert!(scan(b"{\"batch\": {}} x", &["batch"]).is_err());
        assert_eq!(scan(b"{\"other\": {}}", &["batch"]).unwrap(), None);
        assert_eq!(scan(b"{\"batch\": 3}", &["batch"]).unwrap(), None);
    }

    #[test]
    fn references_are_capped() {
        let items: Vec<Value> = (0..MAX_MODEL_REFS + 1)
            .map(|i| json!({"key": i.to_string()}))
            .collect();
        let body = json!({"batch": {"graph": {"nodes": {}}, "workflow": items}});
        let e = scan(body.to_string().as_bytes(), &["batch"]).unwrap_err();
        assert!(e.contains("model references"), "{e}");
    }

    #[test]
    fn walking_a_value_finds_the_same_references() {
        let v = json!({"a": [{"lora": ident("k1", "n", "sd-1", "lora")}], "b": {"key": "k2"}});
        let mut refs = Refs::default();
        refs.walk_value(&v).unwrap();
        let found = refs.into_vec();
        assert_eq!(
            found.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(found[0].at, "a[0].lora");
        assert_eq!(refs_in_json(&v.to_string()).unwrap(), found);
    }
}
