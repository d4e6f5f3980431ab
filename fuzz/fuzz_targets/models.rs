//! Every model reference in an enqueued batch is found (`http::batch::scan`).
//!
//! The input drives a generator that writes the JSON text of a batch itself (so duplicate
//! members, escaped member names and odd member orders occur): graph nodes of random types with
//! fields of random shapes (objects, lists, dicts, scalars), batch data with items, a workflow,
//! and random extra members; model references (`{"key": ..., "name": ..., "base": ..., "type": ...}`,
//! members in any order, sometimes a duplicated `key`) are placed at random depths anywhere.
//!
//! Properties:
//! - every string written as the value of a member named `key` (escaped or not, overwritten by a
//!   later duplicate or not) is among the references the scan reports, and nothing else is;
//! - the scan's item count is InvokeAI's `calc_session_count` of what was written (runs × the
//!   first datum's item count of each data group, saturating);
//! - arbitrary bytes never panic the scan, and a body the scan accepts is JSON serde_json accepts.
#![no_main]

use std::collections::BTreeSet;

use invoke_guard::http::batch;
use libfuzzer_sys::fuzz_target;

struct Gen<'a> {
    data: &'a [u8],
    pos: usize,
    out: String,
    keys: BTreeSet<String>,
    budget: usize,
    next_ref: usize,
}

const NAMES: &[&str] = &[
    "key",
    "name",
    "model",
    "lora",
    "loras",
    "unet",
    "clip",
    "vae",
    "vae_model",
    "metadata",
    "items",
    "value",
    "type",
    "nodes",
    "graph",
    "data",
    "control_model",
    "ip_adapter_model",
    "weight",
    "image_name",
    "board",
    "config",
    "text_encoder",
    "transformer",
    "Key",
    "keys",
];

const TYPES: &[&str] = &[
    "main_model_loader",
    "lora_selector",
    "lora_collection_loader",
    "core_metadata",
    "collect",
    "denoise_latents",
    "vae_loader",
    "metadata_to_model",
    "string",
    "integer",
];

impl Gen<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.byte() as usize % from.len()]
    }

    fn string(&mut self, s: &str) {
        self.out.push_str(&serde_json::to_string(s).unwrap());
    }

    /// A member name; `key` is sometimes written with an escape (it is still `key`).
    fn member(&mut self, name: &str) {
        if name == "key" && self.byte() % 4 == 0 {
            self.out.push_str("\"k\\u0065y\"");
        } else {
            self.string(name);
        }
        self.out.push(':');
    }

    fn reference(&mut self) {
        let key = format!("ref-{}", self.next_ref);
        self.next_ref += 1;
        let mut members: Vec<(&str, String)> = vec![
            ("key", key.clone()),
            ("hash", "blake3:x".into()),
            ("name", format!("model {key}")),
            ("base", "sd-1".into()),
            ("type", "lora".into()),
        ];
        // A decoy key before the real one: both are references (Python keeps the last).
        if self.byte() % 3 == 0 {
            let decoy = format!("decoy-{}", self.next_ref);
            self.next_ref += 1;
            members.insert(0, ("key", decoy));
        }
        let rot = self.byte() as usize % members.len();
        members.rotate_left(rot);
        self.out.push('{');
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.member(name);
            self.string(value);
            if *name == "key" {
                self.keys.insert(value.clone());
            }
        }
        self.out.push('}');
    }

    fn value(&mut self, depth: usize) {
        if self.budget == 0 {
            self.out.push_str("null");
            return;
        }
        self.budget -= 1;
        let choice = if depth >= 6 {
            self.byte() % 4
        } else {
            self.byte() % 9
        };
        match choice {
            0 => {
                let n = self.byte() as i64 - 50;
                self.out.push_str(&n.to_string())
            }
            1 => {
                let s = self.pick(NAMES);
                self.string(s)
            }
            2 => {
                let word = if self.byte() % 2 == 0 { "true" } else { "null" };
                self.out.push_str(word)
            }
            3 | 4 => self.reference(),
            5 | 6 => {
                let n = self.byte() % 5;
                self.out.push('{');
                for i in 0..n {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let name = self.pick(NAMES);
                    self.member(name);
                    match (name, self.byte() % 3) {
                        // A string `key` is a reference wherever it is.
                        ("key", 0) => {
                            let k = format!("loose-{}", self.next_ref);
                            self.next_ref += 1;
                            self.string(&k);
                            self.keys.insert(k);
                        }
                        // Any other `key` value is not (but is walked).
                        ("key", 1) => {
                            let n = self.byte();
                            self.out.push_str(&n.to_string())
                        }
                        ("key", _) => self.reference(),
                        _ => self.value(depth + 1),
                    }
                }
                self.out.push('}');
            }
            _ => {
                let n = self.byte() % 5;
                self.out.push('[');
                for i in 0..n {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(depth + 1);
                }
                self.out.push(']');
            }
        }
    }

    /// The batch, members in an order the input picks; returns InvokeAI's item count.
    fn batch(&mut self) -> u64 {
        let runs = u64::from(self.byte() % 7) + 1;
        let groups: Vec<Vec<u64>> = (0..self.byte() % 3)
            .map(|_| {
                let len = u64::from(self.byte() % 4);
                (0..1 + self.byte() % 2).map(|_| len).collect()
            })
            .collect();
        let mut order = vec![0u8, 1, 2, 3, 4];
        let rot = self.byte() as usize % order.len();
        order.rotate_left(rot);
        self.out.push('{');
        for (i, part) in order.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            match part {
                0 => {
                    self.member("runs");
                    if self.byte() % 3 == 0 {
                        self.string(&format!(" {runs} "));
                    } else {
                        self.out.push_str(&runs.to_string());
                    }
                }
                1 => {
                    self.member("data");
                    self.out.push('[');
                    for (g, datums) in groups.iter().enumerate() {
                        if g > 0 {
                            self.out.push(',');
                        }
                        self.out.push('[');
                        for (d, len) in datums.iter().enumerate() {
                            if d > 0 {
                                self.out.push(',');
                            }
                            self.out
                                .push_str("{\"node_path\":\"n0\",\"field_name\":\"value\",");
                            self.member("items");
                            self.out.push('[');
                            for item in 0..*len {
                                if item > 0 {
                                    self.out.push(',');
                                }
                                self.value(3);
                            }
                            self.out.push_str("]}");
                        }
                        self.out.push(']');
                    }
                    self.out.push(']');
                }
                2 => {
                    self.member("graph");
                    self.out.push_str("{\"id\":\"g\",");
                    self.member("nodes");
                    self.out.push('{');
                    for n in 0..1 + self.byte() % 4 {
                        if n > 0 {
                            self.out.push(',');
                        }
                        self.string(&format!("n{n}"));
                        self.out.push_str(":{");
                        self.member("type");
                        let t = self.pick(TYPES);
                        self.string(t);
                        for _ in 0..self.byte() % 4 {
                            self.out.push(',');
                            let field = self.pick(NAMES);
                            self.member(field);
                            if field == "key" {
                                let k = format!("field-{}", self.next_ref);
                                self.next_ref += 1;
                                self.string(&k);
                                self.keys.insert(k);
                            } else {
                                self.value(1);
                            }
                        }
                        self.out.push('}');
                    }
                    self.out.push_str("},\"edges\":[]}");
                }
                3 => {
                    self.member("workflow");
                    self.value(1);
                }
                _ => {
                    let extra = self.pick(NAMES);
                    let extra = if extra == "key" { "origin" } else { extra };
                    // Not a batch part the scan reads specially: any value.
                    if matches!(extra, "graph" | "data") {
                        self.member("destination");
                    } else {
                        self.member(extra);
                    }
                    self.value(2);
                }
            }
        }
        self.out.push('}');
        groups
            .iter()
            .fold(runs, |acc, datums| acc.saturating_mul(datums[0]))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&0xff) {
        // Arbitrary bytes: no panic; an accepted body is JSON.
        if let Ok(Some(_)) = batch::scan(&data[1..], &["batch"]) {
            assert!(serde_json::from_slice::<serde_json::Value>(&data[1..]).is_ok());
        }
        return;
    }
    let mut g = Gen {
        data,
        pos: 0,
        out: String::from("{\"prepend\":false,"),
        keys: BTreeSet::new(),
        budget: 400,
        next_ref: 0,
    };
    g.member("batch");
    let sessions = g.batch();
    g.out.push('}');
    let scan = batch::scan(g.out.as_bytes(), &["batch"])
        .unwrap_or_else(|e| panic!("a generated batch was not read: {e}\n{}", g.out))
        .expect("the batch is there");
    let found: BTreeSet<String> = scan.refs.iter().map(|r| r.key.clone()).collect();
    assert_eq!(found, g.keys, "references found vs written in\n{}", g.out);
    assert_eq!(scan.sessions(), sessions, "item count of\n{}", g.out);
});
