//! The access sections of the groups file: which models each caller may use (`[models]`) and
//! how many queue items each caller may create (`[quotas]`). Parsed with the groups file and bound
//! into the route table with it, so a reload swaps groups, model rules and quotas together.
//!
//! Invariants:
//! - Unknown keys are errors; every value is validated at load: a `who` entry names a group the
//!   file defines, an email or a user id; bases and types are InvokeAI's own words (a typo in a
//!   deny rule would otherwise deny nothing); limits are positive integers; a rule selects models
//!   by at least one of key, name, base, type.
//! - Without a `[models]` section every model is usable (today's behaviour); with one, its
//!   `default` is explicit. Without a `[quotas]` section nobody is limited.
//! - Rules are read in file order and the first whose `who` admits the caller and whose selectors
//!   all match the model decides (like a firewall); no match is the `default`.
//! - A model is judged by its database record (key, name, base, type), never by what a client
//!   wrote next to a key.
//! - Admins are exempt from both sections unless the section says `admins = "included"`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::groups::Members;
use super::table::did_you_mean;

/// InvokeAI's `BaseModelType` values (union of 6.12.0, 6.13.8 and 6.14.x).
pub const BASES: &[&str] = &[
    "any",
    "sd-1",
    "sd-2",
    "sd-3",
    "sdxl",
    "sdxl-refiner",
    "flux",
    "flux2",
    "cogview4",
    "z-image",
    "external",
    "qwen-image",
    "anima",
    "ernie-image",
    "ideogram-4",
    "krea-2",
    "wan",
    "unknown",
];

/// InvokeAI's `ModelType` values (union of 6.12.0, 6.13.8 and 6.14.x).
pub const TYPES: &[&str] = &[
    "onnx",
    "main",
    "vae",
    "lora",
    "control_lora",
    "controlnet",
    "embedding",
    "ip_adapter",
    "clip_vision",
    "clip_embed",
    "t2i_adapter",
    "t5_encoder",
    "qwen3_encoder",
    "qwen_vl_encoder",
    "qwen3_vl_encoder",
    "mistral_encoder",
    "wan_t5_encoder",
    "gemma2_encoder",
    "spandrel_image_to_image",
    "siglip",
    "flux_redux",
    "llava_onevision",
    "prompt_enhancer",
    "text_llm",
    "external_image_generator",
    "pid_decoder",
    "unknown",
];

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Whether a section applies to admins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admins {
    /// Admins are not judged by the section (the default).
    #[default]
    Exempt,
    /// The section's rules apply to admins like anyone else.
    Included,
}

/// The caller a section judges.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub user_id: &'a str,
    /// The user row's email (any case).
    pub email: &'a str,
    pub is_admin: bool,
}

/// One entry of a `who` list.
#[derive(Debug, Clone)]
pub enum Who {
    /// `"*"`: every caller.
    Everyone,
    /// `"group:NAME"`: the members of a group of this file.
    Group { name: String, members: Arc<Members> },
    /// An email (lower-cased) or a user id.
    Caller(String),
}

impl Who {
    fn admits(&self, c: &Caller<'_>) -> bool {
        match self {
            Who::Everyone => true,
            Who::Group { members, .. } => members.admits(c.user_id, c.email),
            Who::Caller(x) => {
                x == c.user_id || (!c.email.is_empty() && *x == c.email.to_lowercase())
            }
        }
    }

    /// Whom a limit is for, as a message names it.
    pub fn describe(&self) -> String {
        match self {
            Who::Everyone => "everyone".into(),
            Who::Group { name, .. } => format!("your group ({name})"),
            Who::Caller(_) => "you".into(),
        }
    }
}

/// What a model rule judges a model by: its database record.
#[derive(Debug, Clone, Copy)]
pub struct ModelAttrs<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub base: &'a str,
    pub kind: &'a str,
}

/// One `[[models.rule]]`.
#[derive(Debug)]
pub struct ModelRule {
    pub id: String,
    pub line: usize,
    pub who: Vec<Who>,
    pub access: Effect,
    keys: HashSet<String>,
    names: Option<GlobSet>,
    /// The name globs as written, each with its own matcher (for `check`).
    pub name_globs: Vec<(String, globset::GlobMatcher)>,
    bases: HashSet<String>,
    kinds: HashSet<String>,
}

impl ModelRule {
    /// Whether the rule's selectors all match the model (an absent selector matches anything).
    pub fn selects(&self, m: &ModelAttrs<'_>) -> bool {
        (self.keys.is_empty() || self.keys.contains(m.key))
            && self.names.as_ref().is_none_or(|g| g.is_match(m.name))
            && (self.bases.is_empty() || self.bases.contains(m.base))
            && (self.kinds.is_empty() || self.kinds.contains(m.kind))
    }

    fn admits(&self, c: &Caller<'_>) -> bool {
        self.who.iter().any(|w| w.admits(c))
    }

    /// The selector values that match none of `models` (`check` warns about each: a typo'd key
    /// or a model not installed yet).
    pub fn unmatched(&self, models: &[ModelAttrs<'_>]) -> Vec<String> {
        let mut out = Vec::new();
        let mut sorted: Vec<&String> = self.keys.iter().collect();
        sorted.sort();
        for k in sorted {
            if !models.iter().any(|m| m.key == k) {
                out.push(format!("key \"{k}\""));
            }
        }
        for (glob, matcher) in &self.name_globs {
            if !models.iter().any(|m| matcher.is_match(m.name)) {
                out.push(format!("name \"{glob}\""));
            }
        }
        let mut bases: Vec<&String> = self.bases.iter().collect();
        bases.sort();
        for b in bases {
            if !models.iter().any(|m| m.base == b) {
                out.push(format!("base \"{b}\""));
            }
        }
        let mut kinds: Vec<&String> = self.kinds.iter().collect();
        kinds.sort();
        for t in kinds {
            if !models.iter().any(|m| m.kind == t) {
                out.push(format!("type \"{t}\""));
            }
        }
        if out.is_empty() && !models.iter().any(|m| self.selects(m)) {
            out.push("its selectors together".into());
        }
        out
    }
}

/// What decided whether a caller may use a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// The caller is an admin and the section exempts admins.
    AdminExempt,
    /// The first matching rule (its id).
    Rule(String),
    /// No rule matched: the section's `default`.
    Default,
    /// The file has no `[models]` section: every model is usable.
    NoSection,
}

impl Decider {
    pub fn describe(&self) -> String {
        match self {
            Decider::AdminExempt => "admins are exempt".into(),
            Decider::Rule(id) => format!("rule '{id}'"),
            Decider::Default => "the default".into(),
            Decider::NoSection => "no [models] section".into(),
        }
    }
}

/// The `[models]` section.
#[derive(Debug)]
pub struct ModelRules {
    pub default: Effect,
    pub admins: Admins,
    pub rules: Vec<ModelRule>,
}

impl ModelRules {
    /// Whether the caller may use the model, and what decided.
    pub fn decide(&self, c: &Caller<'_>, m: &ModelAttrs<'_>) -> (bool, Decider) {
        if c.is_admin && self.admins == Admins::Exempt {
            return (true, Decider::AdminExempt);
        }
        match self.rules.iter().find(|r| r.admits(c) && r.selects(m)) {
            Some(rule) => (rule.access == Effect::Allow, Decider::Rule(rule.id.clone())),
            None => (self.default == Effect::Allow, Decider::Default),
        }
    }

    /// Whether some model could be refused to the caller (the default denies, or a deny rule
    /// admits them). An unrestricted caller is judged like today: every known model is usable.
    pub fn restricts(&self, c: &Caller<'_>) -> bool {
        if c.is_admin && self.admins == Admins::Exempt {
            return false;
        }
        self.default == Effect::Deny
            || self
                .rules
                .iter()
                .any(|r| r.access == Effect::Deny && r.admits(c))
    }
}

/// Rolling windows of the per-minute/hour/day limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];

    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

/// One `[[quotas.rule]]`.
#[derive(Debug)]
pub struct QuotaRule {
    pub id: String,
    pub line: usize,
    pub who: Vec<Who>,
    /// Most items pending or in progress at once.
    pub max_queued: Option<u64>,
    /// Most items enqueued per rolling window (minute, hour, day).
    pub per: [Option<u64>; 3],
}

impl QuotaRule {
    pub fn per_window(&self, w: Window) -> Option<u64> {
        self.per[w as usize]
    }
}

/// The `[quotas]` section.
#[derive(Debug)]
pub struct QuotaRules {
    pub admins: Admins,
    /// Retry-After of a refusal over `max_queued` (when items finish is unknown).
    pub queued_retry_after: u64,
    /// Window lengths (60 s, 1 h, 1 d unless the file shortens them, e.g. for tests).
    pub windows: [Duration; 3],
    pub rules: Vec<QuotaRule>,
}

impl QuotaRules {
    /// The rule that limits the caller (first match), with the `who` entry that admitted them;
    /// `None`: the caller is not limited.
    pub fn rule_for(&self, c: &Caller<'_>) -> Option<(&QuotaRule, &Who)> {
        if c.is_admin && self.admins == Admins::Exempt {
            return None;
        }
        self.rules
            .iter()
            .find_map(|r| r.who.iter().find(|w| w.admits(c)).map(|w| (r, w)))
    }

    pub fn window(&self, w: Window) -> Duration {
        self.windows[w as usize]
    }
}

/// The access sections of one groups file (both absent: everything as today).
#[derive(Debug, Default)]
pub struct Access {
    pub models: Option<ModelRules>,
    pub quotas: Option<QuotaRules>,
}

// ------------------------------------------------------------------------------------ parsing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModels {
    default: Effect,
    #[serde(default)]
    admins: Admins,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawModelRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelRule {
    id: String,
    who: Vec<String>,
    access: Effect,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    name: Vec<String>,
    #[serde(default)]
    base: Vec<String>,
    #[serde(default, rename = "type")]
    kind: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuotas {
    #[serde(default)]
    admins: Admins,
    #[serde(default)]
    queued_retry_after: Option<i64>,
    #[serde(default)]
    windows: Option<RawWindows>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawQuotaRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindows {
    minute: Option<i64>,
    hour: Option<i64>,
    day: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotaRule {
    id: String,
    who: Vec<String>,
    max_queued: Option<i64>,
    per_minute: Option<i64>,
    per_hour: Option<i64>,
    per_day: Option<i64>,
}

/// A problem with a line (0: the section) and a message.
pub(super) type Problem = (usize, String);

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn check_id(id: &str, seen: &mut HashSet<String>, what: &str) -> Result<(), String> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return Err(format!("{what} id '{id}': ids use only [a-z0-9_.-]"));
    }
    if !seen.insert(id.to_owned()) {
        return Err(format!("{what} id '{id}' is used twice"));
    }
    Ok(())
}

fn parse_who(
    entries: &[String],
    groups: &BTreeMap<String, Arc<Members>>,
) -> Result<Vec<Who>, String> {
    if entries.is_empty() {
        return Err(
            "who is empty: name \"*\" (everyone), \"group:NAME\", emails or user ids".into(),
        );
    }
    entries
        .iter()
        .map(|e| {
            let e = e.trim();
            if e == "*" {
                return Ok(Who::Everyone);
            }
            if let Some(name) = e.strip_prefix("group:") {
                return match groups.get(name) {
                    Some(members) => Ok(Who::Group {
                        name: name.to_owned(),
                        members: members.clone(),
                    }),
                    None => Err(format!(
                        "who: unknown group \"{name}\"{} (the [groups] section defines: {})",
                        did_you_mean(name, groups.keys().map(String::as_str)),
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                };
            }
            if e.is_empty() || e.contains(char::is_whitespace) {
                return Err(format!(
                    "who: '{e}' is not \"*\", \"group:NAME\", an email or a user id"
                ));
            }
            if groups.contains_key(e) && !e.contains('@') {
                // A bare group name is an easy slip: it would name a user id nobody has.
                return Err(format!("who: '{e}' is a group; write \"group:{e}\""));
            }
            Ok(Who::Caller(e.to_lowercase()))
        })
        .collect()
}

fn check_words(values: &[String], known: &[&str], what: &str) -> Result<HashSet<String>, String> {
    values
        .iter()
        .map(|v| {
            if known.contains(&v.as_str()) {
                Ok(v.clone())
            } else {
                Err(format!(
                    "unknown {what} '{v}'{} (InvokeAI's {what}s: {})",
                    did_you_mean(v, known.iter().copied()),
                    known.join(", ")
                ))
            }
        })
        .collect()
}

pub(super) fn compile_models(
    text: &str,
    raw: RawModels,
    groups: &BTreeMap<String, Arc<Members>>,
) -> Result<ModelRules, Problem> {
    let mut ids = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rule.len());
    for spanned in raw.rule {
        let line = line_of(text, spanned.span().start);
        let r = spanned.into_inner();
        let at = |m: String| (line, format!("models rule '{}': {m}", r.id));
        check_id(&r.id, &mut ids, "models rule").map_err(|m| (line, m))?;
        let who = parse_who(&r.who, groups).map_err(at)?;
        if r.key.is_empty() && r.name.is_empty() && r.base.is_empty() && r.kind.is_empty() {
            return Err(at(
                "a rule selects models by key, name, base or type (name = [\"*\"] selects every model)"
                    .into(),
            ));
        }
        let mut name_globs = Vec::with_capacity(r.name.len());
        let names = if r.name.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for g in &r.name {
                let glob = GlobBuilder::new(g)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| at(format!("name glob '{g}': {e}")))?;
                name_globs.push((g.clone(), glob.compile_matcher()));
                set.add(glob);
            }
            Some(set.build().map_err(|e| at(e.to_string()))?)
        };
        if r.key.iter().any(|k| k.trim().is_empty()) {
            return Err(at("an empty key".into()));
        }
        rules.push(ModelRule {
            id: r.id.clone(),
            line,
            who,
            access: r.access,
            keys: r.key.iter().cloned().collect(),
            names,
            name_globs,
            bases: check_words(&r.base, BASES, "base").map_err(at)?,
            kinds: check_words(&r.kind, TYPES, "type").map_err(at)?,
        });
    }
    Ok(ModelRules {
        default: raw.default,
        admins: raw.admins,
        rules,
    })
}

fn positive(v: Option<i64>, what: &str) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(format!(
            "{what} = {n}: limits are positive integers (leave it out for no limit)"
        )),
    }
}

pub(super) fn compile_quotas(
    text: &str,
    raw: RawQuotas,
    groups: &BTreeMap<String, Arc<Members>>,
) -> Result<QuotaRules, Problem> {
    let section = |m: String| (0, format!("[quotas]: {m}"));
    let queued_retry_after = positive(raw.queued_retry_after, "queued_retry_after")
        .map_err(section)?
        .unwrap_or(30);
    let mut windows = [
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
    ];
    if let Some(w) = raw.windows {
        for (i, (value, what)) in [
            (w.minute, "windows.minute"),
            (w.hour, "windows.hour"),
            (w.day, "windows.day"),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(secs) = positive(value, what).map_err(section)? {
                windows[i] = Duration::from_secs(secs);
            }
        }
    }
    let mut ids = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rule.len());
    for spanned in raw.rule {
        let line = line_of(text, spanned.span().start);
        let r = spanned.into_inner();
        let at = |m: String| (line, format!("quotas rule '{}': {m}", r.id));
        check_id(&r.id, &mut ids, "quotas rule").map_err(|m| (line, m))?;
        let who = parse_who(&r.who, groups).map_err(at)?;
        let max_queued = positive(r.max_queued, "max_queued").map_err(at)?;
        let per = [
            positive(r.per_minute, "per_minute").map_err(at)?,
            positive(r.per_hour, "per_hour").map_err(at)?,
            positive(r.per_day, "per_day").map_err(at)?,
        ];
        if max_queued.is_none() && per.iter().all(Option::is_none) {
            return Err(at(
                "a rule sets at least one of max_queued, per_minute, per_hour, per_day".into(),
            ));
        }
        rules.push(QuotaRule {
            id: r.id.clone(),
            line,
            who,
            max_queued,
            per,
        });
    }
    Ok(QuotaRules {
        admins: raw.admins,
        queued_retry_after,
        windows,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Groups;

    const FILE: &str = r#"
[groups]
artists = ["alice@example.com"]
interns = ["Bob@Example.com", "u-carol"]

[models]
default = "allow"

[[models.rule]]
id = "artists-flux"
who = ["group:artists"]
access = "allow"
base = ["flux"]

[[models.rule]]
id = "no-flux"
who = ["*"]
access = "deny"
base = ["flux"]

[[models.rule]]
id = "interns-no-nsfw-loras"
who = ["group:interns"]
access = "deny"
type = ["lora"]
name = ["*NSFW*"]

[quotas]
windows = { minute = 2 }

[[quotas.rule]]
id = "interns"
who = ["group:interns"]
max_queued = 5
per_minute = 10

[[quotas.rule]]
id = "everyone"
who = ["*"]
max_queued = 20
"#;

    fn caller<'a>(id: &'a str, email: &'a str) -> Caller<'a> {
        Caller {
            user_id: id,
            email,
            is_admin: false,
        }
    }

    fn model<'a>(name: &'a str, base: &'a str, kind: &'a str) -> ModelAttrs<'a> {
        ModelAttrs {
            key: "k",
            name,
            base,
            kind,
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let g = Groups::parse("g.toml", FILE).unwrap();
        let m = g.access().models.as_ref().unwrap();
        let alice = caller("u-alice", "alice@example.com");
        let bob = caller("u-bob", "bob@example.com");
        let flux = model("FLUX dev", "flux", "main");
        assert_eq!(
            m.decide(&alice, &flux),
            (true, Decider::Rule("artists-flux".into()))
        );
        assert_eq!(
            m.decide(&bob, &flux),
            (false, Decider::Rule("no-flux".into()))
        );
        let lora = model("my nsfw style", "sd-1", "lora");
        assert!(!m.decide(&bob, &lora).0, "glob is case-insensitive");
        assert_eq!(m.decide(&alice, &lora), (true, Decider::Default));
        let carol = caller("u-carol", "");
        assert!(!m.decide(&carol, &lora).0, "members by user id");
        let admin = Caller {
            is_admin: true,
            ..bob
        };
        assert_eq!(m.decide(&admin, &flux), (true, Decider::AdminExempt));
        assert!(m.restricts(&bob) && m.restricts(&alice) && !m.restricts(&admin));
    }

    #[test]
    fn quota_rule_is_the_first_that_admits() {
        let g = Groups::parse("g.toml", FILE).unwrap();
        let q = g.access().quotas.as_ref().unwrap();
        let (rule, who) = q.rule_for(&caller("u-bob", "BOB@example.com")).unwrap();
        assert_eq!(
            (rule.id.as_str(), who.describe()),
            ("interns", "your group (interns)".into())
        );
        let (rule, who) = q.rule_for(&caller("u-x", "x@example.com")).unwrap();
        assert_eq!(
            (rule.id.as_str(), who.describe()),
            ("everyone", "everyone".into())
        );
        assert_eq!(q.window(Window::Minute), Duration::from_secs(2));
        assert_eq!(q.window(Window::Hour), Duration::from_secs(3600));
        assert_eq!(q.queued_retry_after, 30);
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        let bad = |extra: &str, want: &str| {
            let text = format!("[groups]\nartists = [\"a@x\"]\n{extra}");
            let e = Groups::parse("g.toml", &text).unwrap_err();
            assert!(e.message.contains(want), "{extra}: {e}");
        };
        bad("[models]\n", "default");
        bad("[models]\ndefault = \"maybe\"\n", "allow");
        bad(
            "[models]\ndefault = \"allow\"\n[[models.rule]]\nid = \"r\"\nwho = [\"*\"]\naccess = \"deny\"\nbase = [\"fluxx\"]\n",
            "did you mean 'flux'",
        );
        bad(
            "[models]\ndefault = \"allow\"\n[[models.rule]]\nid = \"r\"\nwho = [\"group:artist\"]\naccess = \"deny\"\nbase = [\"flux\"]\n",
            "did you mean 'artists'",
        );
        bad(
            "[models]\ndefault = \"allow\"\n[[models.rule]]\nid = \"r\"\nwho = [\"artists\"]\naccess = \"deny\"\nbase = [\"flux\"]\n",
            "group:artists",
        );
        bad(
            "[models]\ndefault = \"allow\"\n[[models.rule]]\nid = \"r\"\nwho = [\"*\"]\naccess = \"deny\"\n",
            "selects models",
        );
        bad(
            "[models]\ndefault = \"allow\"\n[[models.rule]]\nid = \"r\"\nwho = [\"*\"]\naccess = \"deny\"\nbases = [\"flux\"]\n",
            "unknown field",
        );
        bad(
            "[quotas]\n[[quotas.rule]]\nid = \"q\"\nwho = [\"*\"]\nmax_queued = 0\n",
            "positive",
        );
        bad(
            "[quotas]\n[[quotas.rule]]\nid = \"q\"\nwho = [\"*\"]\nper_hour = -3\n",
            "positive",
        );
        bad(
            "[quotas]\n[[quotas.rule]]\nid = \"q\"\nwho = [\"*\"]\n",
            "at least one",
        );
        bad("[quotas]\nwindows = { minute = 0 }\n", "positive");
        let e = Groups::parse(
            "g.toml",
            "[groups]\n\n[quotas]\n\n[[quotas.rule]]\nid = \"q\"\nwho = [\"*\"]\nmax_queued = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
    }
}
