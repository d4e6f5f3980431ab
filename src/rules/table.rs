//! The route table: `routes.toml` parsed, validated and compiled (words from [`super::vocab`]).
//!
//! Invariants:
//! - A table is built completely or not at all; a caller swaps whole tables (see `state`), so a
//!   request never sees a half-loaded policy.
//! - Matching is one matchit lookup per method, never a scan over rules.
//! - For one method no two rules can match the same path (checked at load), so which rule applies
//!   never depends on declaration order.
//! - Every check names a registered predicate with the right number of arguments, and every
//!   `path.X` selector is bound by the rule's own template.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use http::{Method, StatusCode};
use serde::Deserialize;
use thiserror::Error;

use crate::http::jsonplan::{JsonPlan, Keep, PathStep};
use crate::rules::groups::Groups;
use crate::rules::vocab::{Account, ArgKind, BodyUse, Capability, Predicate, ResponseFilter};

/// A routes.toml problem, with enough context to fix it.
#[derive(Debug, Error)]
#[error("{file}:{line}: {}{message}", rule.as_deref().map(|r| format!("rule '{r}': ")).unwrap_or_default())]
pub struct RouteError {
    pub file: String,
    pub line: usize,
    pub rule: Option<String>,
    pub message: String,
}

/// Who may call a route at all (before the checks run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// No identity; any presented credential is removed before forwarding.
    Public,
    /// A valid Bearer token of an active, non-system user.
    User,
    /// Like `User`, and the token may come from a media/session cookie.
    Media,
    /// The Socket.IO handshake: Bearer or session cookie.
    Socket,
    /// Like `User`, and the user row says admin.
    Admin,
}

impl Auth {
    /// Whether the route needs an identified caller.
    pub fn needs_identity(self) -> bool {
        self != Auth::Public
    }

    /// Whether a cookie may carry the token.
    pub fn accepts_cookie(self) -> bool {
        matches!(self, Auth::Media | Auth::Socket)
    }
}

/// Whether a rule's denials are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A denial is answered by the guard (the default; never implied by anything else).
    #[default]
    Enforce,
    /// Dry run: the checks are evaluated, a denial is logged and counted as `would_deny` with
    /// its full verdict, and the request is forwarded as if allowed. Identity, `auth`, targets,
    /// framing and bodies are still enforced: only the `require` checks are shadowed.
    Shadow,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Where a selector reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(String),
    Query(String),
    Body,
    Form(String),
}

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Each,
}

/// A reference to request data: `path.x`, `query.x?`, `body.a[].b`, `form.data.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub source: Source,
    pub steps: Vec<Step>,
    pub optional: bool,
    pub text: String,
    /// Whether the value is kept out of traces and facts (a query value, or a field whose name
    /// says password), decided once here rather than per request.
    pub hidden: bool,
}

/// A check argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Select(Selector),
    Literal(String),
    /// An upstream capability named where the predicate takes one.
    Capability(Capability),
    /// A group of the groups file, bound when the table was compiled.
    Group {
        name: String,
        members: std::sync::Arc<crate::rules::groups::Members>,
    },
}

/// One compiled check: a predicate applied to arguments.
#[derive(Debug, Clone)]
pub struct Check {
    pub predicate: Predicate,
    pub args: Vec<Arg>,
    /// `… unless upstream.CAPABILITY`: skip the check where the upstream enforces it itself.
    pub unless_upstream: Option<Capability>,
    /// As written (shared with every trace of it: no copy per request).
    pub text: std::sync::Arc<str>,
    /// The groups file's access sections, bound at compile time for predicates that read them
    /// (`PredicateInfo::access`); `None` for every other check.
    pub access: Option<std::sync::Arc<crate::rules::access::Access>>,
}

/// One entry of `require`: checks of which at least one must hold (`A or B`); most entries
/// have one.
#[derive(Debug, Clone)]
pub struct Requirement {
    /// As written in routes.toml.
    pub text: String,
    /// The alternatives, in the order they are tried.
    pub any_of: Vec<Check>,
}

/// What a rule needs from the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeed {
    None,
    Json,
    Multipart,
}

/// What shadow mode forwards, in one sentence for every place that warns about it.
pub const SHADOW_SCOPE: &str = "only a resource check's refusal of a read (GET/HEAD) is logged as \
would_deny and forwarded; writes, identity, auth = \"admin\" and the admin-only, account and group \
checks stay enforced";

/// The predicates shadow mode never forwards a refusal of (for `check`'s warning).
pub fn never_shadowed() -> Vec<&'static str> {
    Predicate::all()
        .filter(|p| p.info().shadow == crate::rules::vocab::Shadow::Never)
        .map(Predicate::name)
        .collect()
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub methods: Vec<Method>,
    pub path: String,
    pub auth: Auth,
    /// `require`: every requirement must hold (each by at least one of its alternatives).
    pub checks: Vec<Requirement>,
    pub response: Vec<ResponseFilter>,
    pub block: Option<StatusCode>,
    /// `mode = "shadow"`: the checks' denials are logged and forwarded (see [`Mode`]).
    pub mode: Mode,
    pub body: BodyNeed,
    /// What a JSON body parse keeps (the `body.*` selectors and what filters read).
    pub json_plan: JsonPlan,
    pub line: usize,
}

impl Rule {
    /// Every check of every requirement (all alternatives).
    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().flat_map(|r| r.any_of.iter())
    }

    /// Whether this rule is in shadow mode (its own `mode`, or the global one). What that
    /// forwards is narrower: see [`Rule::forwards_in_shadow`].
    pub fn shadowed(&self, global: Mode) -> bool {
        self.mode == Mode::Shadow || global == Mode::Shadow
    }

    /// Whether a refusal by `predicate` of a `method` request is forwarded (as `would_deny`)
    /// under `global`: only on a shadowed rule, only for reads (GET, HEAD), only for resource
    /// checks. Writes, admin-only, account, identity and group checks stay enforced: a dry run
    /// never deletes, escalates or logs in what enforcement refuses.
    pub fn forwards_in_shadow(&self, global: Mode, method: &Method, predicate: Predicate) -> bool {
        self.shadowed(global)
            && matches!(*method, Method::GET | Method::HEAD)
            && predicate.info().shadow == crate::rules::vocab::Shadow::Dry
    }
}

/// Path parameters of the matched rule, decoded once. A rule binds a handful: a list searched by
/// name costs less than hashing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathParams(Vec<(String, String)>);

impl PathParams {
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Set `name` (replacing a value it had).
    pub fn insert(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for PathParams {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut params = PathParams::default();
        for (k, v) in iter {
            params.insert(k, v);
        }
        params
    }
}

/// A successful lookup.
#[derive(Debug)]
pub struct RouteMatch<'t> {
    pub rule: &'t Rule,
    /// The rule's index in [`RouteTable::rules`].
    pub index: usize,
    /// Path parameters, percent-decoded once (canonical paths keep only escapes that mean
    /// something: `%2F`-style separators are refused before matching).
    pub params: PathParams,
}

/// The result of looking a request up.
#[derive(Debug)]
pub enum Lookup<'t> {
    Found(RouteMatch<'t>),
    /// No rule for this path, but one for the other trailing-slash form (FastAPI answers 307).
    Redirect(String),
    NotFound,
}

/// The compiled table.
pub struct RouteTable {
    rules: Vec<Rule>,
    /// One router per method (at most seven: a list compares methods faster than it hashes them).
    routers: Vec<(Method, matchit::Router<usize>)>,
    /// The file says a reload may cover fewer endpoints than the table it replaces.
    allow_coverage_loss: bool,
    /// SHA-256 of the file's text, lower-case hex (what `sha256sum` prints).
    checksum: String,
    /// The groups file's model access and quotas the table was compiled with.
    access: std::sync::Arc<crate::rules::access::Access>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("rules", &self.rules.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// A reload that drops endpoints the running table covers is refused unless this is set.
    #[serde(default)]
    allow_coverage_loss: bool,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    methods: Vec<String>,
    path: String,
    auth: Auth,
    #[serde(default)]
    require: Vec<toml::Spanned<String>>,
    #[serde(default)]
    response: Vec<toml::Spanned<String>>,
    #[serde(default)]
    block: Option<u16>,
    #[serde(default)]
    mode: Mode,
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl RouteTable {
    /// Read and compile a routes file that names no groups.
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        Self::load_with_groups(path, &Groups::default())
    }

    /// Compile a routes file from text that names no groups.
    pub fn parse(file: &str, text: &str) -> Result<Self, RouteError> {
        Self::parse_with_groups(file, text, &Groups::default())
    }

    /// Read and compile a routes file, binding `caller.in` groups from `groups`.
    pub fn load_with_groups(path: &Path, groups: &Groups) -> Result<Self, RouteError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RouteError {
            file: file.clone(),
            line: 0,
            rule: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with_groups(&file, &text, groups)
    }

    /// Compile a routes file from text (`file` names it in errors).
    pub fn parse_with_groups(file: &str, text: &str, groups: &Groups) -> Result<Self, RouteError> {
        let err = |line: usize, rule: Option<&str>, message: String| RouteError {
            file: file.to_owned(),
            line,
            rule: rule.map(str::to_owned),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
            err(line, None, e.message().to_owned())
        })?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut ids = HashSet::new();
        for spanned in raw.rule {
            let line = line_of(text, spanned.span().start);
            let raw_rule = spanned.into_inner();
            let id = raw_rule.id.clone();
            // A bad check or filter is reported at its own line (the rule's line otherwise).
            if let Ok(params) = template_params(&raw_rule.path) {
                for c in &raw_rule.require {
                    if let Err(m) = parse_requirement(c.get_ref(), &params, groups) {
                        let at = line_of(text, c.span().start);
                        return Err(err(at, Some(&id), format!("check '{}': {m}", c.get_ref())));
                    }
                }
            }
            for f in &raw_rule.response {
                if let Err(m) = response_filter(f.get_ref()) {
                    return Err(err(line_of(text, f.span().start), Some(&id), m));
                }
            }
            let rule = compile_rule(raw_rule, line, groups).map_err(|m| err(line, Some(&id), m))?;
            if !ids.insert(rule.id.clone()) {
                return Err(err(line, Some(&id), "duplicate rule id".into()));
            }
            rules.push(rule);
        }
        check_overlaps(&rules).map_err(|(i, m)| err(rules[i].line, Some(&rules[i].id), m))?;
        let mut routers: Vec<(Method, matchit::Router<usize>)> = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            for method in &rule.methods {
                let at = match routers.iter().position(|(m, _)| m == method) {
                    Some(at) => at,
                    None => {
                        routers.push((method.clone(), matchit::Router::new()));
                        routers.len() - 1
                    }
                };
                routers[at]
                    .1
                    .insert(rule.path.clone(), index)
                    .map_err(|e| err(rule.line, Some(&rule.id), format!("path: {e}")))?;
            }
        }
        Ok(Self {
            rules,
            routers,
            allow_coverage_loss: raw.allow_coverage_loss,
            checksum: sha256_hex(text.as_bytes()),
            access: groups.access().clone(),
        })
    }

    /// SHA-256 of the source text (lower-case hex, as `sha256sum` prints it).
    pub fn checksum(&self) -> &str {
        &self.checksum
    }

    /// The model access and quota sections the table was compiled with (response filters and
    /// the socket read them from here; checks have them bound).
    pub fn access(&self) -> &std::sync::Arc<crate::rules::access::Access> {
        &self.access
    }

    /// Whether the file allows a reload to cover fewer endpoints than the running table.
    pub fn allows_coverage_loss(&self) -> bool {
        self.allow_coverage_loss
    }

    /// Rules in shadow mode under the global `mode` (what that forwards: [`SHADOW_SCOPE`]).
    pub fn shadow_rules(&self, global: Mode) -> Vec<&Rule> {
        self.rules.iter().filter(|r| r.shadowed(global)).collect()
    }

    /// All rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Look up a canonical path.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Some((_, router)) = self.routers.iter().find(|(m, _)| m == method) else {
            return Lookup::NotFound;
        };
        if let Ok(found) = router.at(path) {
            let params = found
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), crate::http::canonical::decode_param(v)))
                .collect();
            return Lookup::Found(RouteMatch {
                rule: &self.rules[*found.value],
                index: *found.value,
                params,
            });
        }
        match crate::http::canonical::toggle_trailing_slash(path) {
            Some(other) if router.at(&other).is_ok() => Lookup::Redirect(other),
            _ => Lookup::NotFound,
        }
    }
}

/// ` (did you mean 'x'?)` for the known name nearest to `word`, when one is close enough.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn compile_rule(raw: RawRule, line: usize, groups: &Groups) -> Result<Rule, String> {
    if raw.id.is_empty()
        || !raw
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return Err("id must be non-empty and use only [a-z0-9_.-]".into());
    }
    if raw.methods.is_empty() {
        return Err("methods must not be empty".into());
    }
    let mut methods = Vec::new();
    for m in &raw.methods {
        if !METHODS.contains(&m.as_str()) {
            return Err(format!(
                "unknown method '{m}' (one of {})",
                METHODS.join(", ")
            ));
        }
        let method = Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?;
        if methods.contains(&method) {
            return Err(format!("method '{m}' listed twice"));
        }
        methods.push(method);
    }
    let params = template_params(&raw.path)?;
    let mut checks = Vec::new();
    for text in raw.require.iter().map(|s| s.get_ref()) {
        checks.push(
            parse_requirement(text, &params, groups).map_err(|m| format!("check '{text}': {m}"))?,
        );
    }
    let response = raw
        .response
        .iter()
        .map(|name| response_filter(name.get_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let block = raw
        .block
        .map(|code| {
            StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| format!("block must be a 4xx or 5xx status, got {code}"))
        })
        .transpose()?;
    if raw.mode == Mode::Shadow && block.is_some() {
        return Err("a blocked route cannot be in shadow mode (block is not a check)".into());
    }
    let all: Vec<Check> = checks.iter().flat_map(|r| r.any_of.clone()).collect();
    if raw.auth == Auth::Admin
        && all
            .iter()
            .any(|c| c.predicate == Predicate::Account(Account::Admin))
    {
        return Err("auth = \"admin\" already implies the 'admin' check".into());
    }
    let mut body = body_need(&all)?;
    if response.iter().any(|f| f.needs_request_body()) {
        body = match body {
            BodyNeed::None | BodyNeed::Json => BodyNeed::Json,
            BodyNeed::Multipart => {
                return Err("a filter reading the JSON body cannot go with form.* checks".into())
            }
        };
    }
    let json_plan = json_plan(&all, &response);
    Ok(Rule {
        id: raw.id,
        methods,
        path: raw.path,
        auth: raw.auth,
        checks,
        response,
        block,
        mode: raw.mode,
        body,
        json_plan,
        line,
    })
}

fn response_filter(name: &str) -> Result<ResponseFilter, String> {
    ResponseFilter::from_name(name).ok_or_else(|| {
        format!(
            "unknown response filter '{name}'{}",
            did_you_mean(name, ResponseFilter::names())
        )
    })
}

/// The parts of a JSON body the rule reads: each `body.*` selector (the whole value there, or
/// only its references for `enqueue.allowed`) and the fields response filters read.
fn json_plan(checks: &[Check], filters: &[ResponseFilter]) -> JsonPlan {
    let mut plan = JsonPlan::default();
    for check in checks {
        for arg in &check.args {
            let Arg::Select(sel) = arg else { continue };
            if sel.source != Source::Body {
                continue;
            }
            let keep = match check.predicate.info().body {
                // A batch is scanned from the raw body (http::batch); the plan keeps only what
                // proves it is there (its references, cheap).
                BodyUse::Refs | BodyUse::Batch => Keep::Refs,
                BodyUse::Value => Keep::Whole,
            };
            let steps = sel.steps.iter().map(|s| match s {
                Step::Field(f) => PathStep::Field(f),
                Step::Each => PathStep::Each,
            });
            plan.add(steps, keep);
        }
    }
    for filter in filters {
        for field in filter.info().request_fields {
            plan.add([PathStep::Field(field)], Keep::Whole);
        }
    }
    plan
}

fn body_need(checks: &[Check]) -> Result<BodyNeed, String> {
    let sources = checks.iter().flat_map(|c| &c.args).filter_map(|a| match a {
        Arg::Select(s) => Some(&s.source),
        Arg::Literal(_) | Arg::Capability(_) | Arg::Group { .. } => None,
    });
    let (mut json, mut form) = (false, false);
    for source in sources {
        json |= *source == Source::Body;
        form |= matches!(source, Source::Form(_));
    }
    match (json, form) {
        (true, true) => Err("a rule cannot read both body.* and form.*".into()),
        (true, false) => Ok(BodyNeed::Json),
        (false, true) => Ok(BodyNeed::Multipart),
        (false, false) => Ok(BodyNeed::None),
    }
}

/// Template segments for overlap analysis.
#[derive(Debug, PartialEq)]
enum Seg<'a> {
    Static(&'a str),
    Param,
    CatchAll,
}

fn segments(template: &str) -> Vec<Seg<'_>> {
    template[1..]
        .split('/')
        .map(|s| {
            if s.starts_with("{*") {
                Seg::CatchAll
            } else if s.starts_with('{') {
                Seg::Param
            } else {
                Seg::Static(s)
            }
        })
        .collect()
}

fn template_params(template: &str) -> Result<Vec<String>, String> {
    if !template.starts_with('/') {
        return Err("path must start with '/'".into());
    }
    if crate::http::canonical::canonical_path(template.replace(['{', '}', '*'], "x").as_str())
        .is_err()
    {
        return Err(
            "path template is not a canonical path (empty or dot segment, bad character)".into(),
        );
    }
    let segs: Vec<&str> = template[1..].split('/').collect();
    let mut names = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let is_param = seg.starts_with('{') && seg.ends_with('}');
        if seg.contains(['{', '}']) && !is_param {
            return Err(format!(
                "segment '{seg}': a parameter must be a whole segment"
            ));
        }
        if !is_param {
            continue;
        }
        let inner = &seg[1..seg.len() - 1];
        let name = inner.strip_prefix('*').unwrap_or(inner);
        if inner.starts_with('*') && i != segs.len() - 1 {
            return Err("a catch-all {*name} must be the last segment".into());
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad parameter name '{name}'"));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("parameter '{name}' appears twice"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Whether some path matches both templates.
fn templates_overlap(a: &str, b: &str) -> bool {
    let (sa, sb) = (segments(a), segments(b));
    let mut i = 0;
    loop {
        match (sa.get(i), sb.get(i)) {
            (None, None) => return true,
            (Some(Seg::CatchAll), Some(_)) | (Some(_), Some(Seg::CatchAll)) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Seg::Static(x)), Some(Seg::Static(y))) if x != y => return false,
            // A parameter never matches an empty segment (the trailing-slash position).
            (Some(Seg::Param), Some(Seg::Static("")))
            | (Some(Seg::Static("")), Some(Seg::Param)) => return false,
            _ => {}
        }
        i += 1;
    }
}

fn check_overlaps(rules: &[Rule]) -> Result<(), (usize, String)> {
    let mut by_method: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        for m in &rule.methods {
            by_method.entry(m.as_str()).or_default().push(i);
        }
    }
    for (method, indexes) in by_method {
        for (n, &i) in indexes.iter().enumerate() {
            for &j in &indexes[n + 1..] {
                if templates_overlap(&rules[i].path, &rules[j].path) {
                    return Err((
                        j,
                        format!(
                            "{method} {} overlaps rule '{}' ({method} {}): a request could match both",
                            rules[j].path, rules[i].id, rules[i].path
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parse one `require` entry: `CHECK`, or `CHECK or CHECK or …` (any one holding is enough).
fn parse_requirement(
    full: &str,
    params: &[String],
    groups: &Groups,
) -> Result<Requirement, String> {
    let any_of = split_top_level(full, " or ")?
        .into_iter()
        .map(|alt| parse_check(alt, params, groups))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Requirement {
        text: full.trim().to_owned(),
        any_of,
    })
}

/// Split on `sep` outside parentheses and string literals.
fn split_top_level<'a>(text: &'a str, sep: &str) -> Result<Vec<&'a str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut start) = (0usize, false, 0usize);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str => depth = depth.saturating_sub(1),
            _ if !in_str && depth == 0 && text[i..].starts_with(sep) => {
                out.push(text[start..i].trim());
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(text[start..].trim());
    if out.iter().any(|alt| alt.is_empty()) {
        return Err("an 'or' needs a check on each side".into());
    }
    Ok(out)
}

/// Parse `name`, `name(arg, arg)`, optionally followed by `unless upstream.CAPABILITY`.
fn parse_check(full: &str, params: &[String], groups: &Groups) -> Result<Check, String> {
    let full = full.trim();
    let (text, unless_upstream) = match full.rsplit_once(" unless ") {
        Some((check, cond)) if cond.trim().starts_with("upstream.") => {
            let name = cond.trim().trim_start_matches("upstream.");
            let cap = Capability::from_name(name).ok_or_else(|| {
                format!(
                    "unknown upstream capability '{name}'{} (one of {})",
                    did_you_mean(name, Capability::names()),
                    Capability::names().join(", ")
                )
            })?;
            (check.trim(), Some(cap))
        }
        _ => (full, None),
    };
    let (name, args_text) = match text.find('(') {
        Some(open) => {
            let inner = text[open + 1..]
                .strip_suffix(')')
                .ok_or("missing closing ')'")?;
            (&text[..open], Some(inner))
        }
        None => (text, None),
    };
    let predicate = Predicate::from_name(name.trim()).ok_or_else(|| {
        format!(
            "unknown predicate '{}'{}",
            name.trim(),
            did_you_mean(name.trim(), Predicate::names())
        )
    })?;
    let args = match args_text {
        None => Vec::new(),
        Some(inner) if inner.trim().is_empty() => Vec::new(),
        Some(inner) => split_args(inner)?
            .into_iter()
            .map(|a| parse_arg(a, params))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let args = check_args(predicate, args, groups)?;
    if predicate.info().body == BodyUse::Batch
        && !args.iter().any(|a| {
            matches!(a, Arg::Select(s) if s.source == Source::Body
                && s.steps.iter().all(|st| matches!(st, Step::Field(_))))
        })
    {
        return Err(format!(
            "'{}' reads a batch at a body path of fields (e.g. body.batch)",
            predicate.name()
        ));
    }
    Ok(Check {
        predicate,
        args,
        unless_upstream,
        text: full.into(),
        access: predicate.info().access.then(|| groups.access().clone()),
    })
}

/// Validate the arguments against the predicate's descriptor; capability literals become
/// [`Arg::Capability`].
fn check_args(predicate: Predicate, args: Vec<Arg>, groups: &Groups) -> Result<Vec<Arg>, String> {
    let info = predicate.info();
    let (min, max) = (info.required, info.args.len());
    if args.len() < min || args.len() > max {
        let want = if min == max {
            min.to_string()
        } else {
            format!("{min} to {max}")
        };
        return Err(format!(
            "'{}' takes {want} argument(s), got {}",
            predicate.name(),
            args.len()
        ));
    }
    args.into_iter()
        .zip(info.args)
        .enumerate()
        .map(|(i, (arg, kind))| match (kind, arg) {
            (ArgKind::Selector, arg @ Arg::Select(_))
            | (ArgKind::Literal, arg @ Arg::Literal(_)) => Ok(arg),
            (ArgKind::Capability, Arg::Literal(name)) => Capability::from_name(&name)
                .map(Arg::Capability)
                .ok_or_else(|| {
                    format!(
                        "unknown upstream capability \"{name}\"{} (one of {})",
                        did_you_mean(&name, Capability::names()),
                        Capability::names().join(", ")
                    )
                }),
            (ArgKind::Group, Arg::Literal(name)) => match groups.get(&name) {
                Some(members) => Ok(Arg::Group { name, members }),
                None if groups.source.is_none() => Err(format!(
                    "group \"{name}\": no groups file is configured (set `groups` / --groups / \
                     INVOKE_GUARD_GROUPS)"
                )),
                None => Err(format!(
                    "unknown group \"{name}\"{} (the groups file defines: {})",
                    did_you_mean(&name, groups.names()),
                    groups.names().collect::<Vec<_>>().join(", ")
                )),
            },
            (kind, _) => Err(format!(
                "argument {} of '{}' must be {}",
                i + 1,
                predicate.name(),
                match kind {
                    ArgKind::Selector => "a selector",
                    ArgKind::Literal => "a \"literal\"",
                    ArgKind::Capability => "a \"capability\" name",
                    ArgKind::Group => "a \"group\" name",
                }
            )),
        })
        .collect()
}

fn split_args(inner: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_str = false;
    for (i, c) in inner.char_indices() {
        match c {
            '"' => in_str = !in_str,
            ',' if !in_str => {
                out.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_str {
        return Err("unterminated string literal".into());
    }
    out.push(inner[start..].trim());
    Ok(out)
}

fn parse_arg(text: &str, params: &[String]) -> Result<Arg, String> {
    if let Some(lit) = text.strip_prefix('"') {
        let lit = lit.strip_suffix('"').ok_or("unterminated string literal")?;
        return Ok(Arg::Literal(lit.to_owned()));
    }
    let (body, optional) = match text.strip_suffix('?') {
        Some(b) => (b, true),
        None => (text, false),
    };
    let (root, rest) = body.split_once('.').unwrap_or((body, ""));
    let (root, root_each) = match root.strip_suffix("[]") {
        Some(r) => (r, true),
        None => (root, false),
    };
    let mut steps = Vec::new();
    if root_each {
        steps.push(Step::Each);
    }
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (field, each) = match part.strip_suffix("[]") {
            Some(f) => (f, true),
            None => (part, false),
        };
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("bad field '{part}' in selector '{text}'"));
        }
        steps.push(Step::Field(field.to_owned()));
        if each {
            steps.push(Step::Each);
        }
    }
    let first_field = |steps: &mut Vec<Step>| match steps.first() {
        Some(Step::Field(_)) => match steps.remove(0) {
            Step::Field(f) => Ok(f),
            Step::Each => unreachable!(),
        },
        _ => Err(format!("selector '{text}' needs a name after '{root}.'")),
    };
    let source = match root {
        "path" | "query" if root_each => return Err(format!("'{root}[]' is not a selector")),
        "path" => {
            let name = first_field(&mut steps)?;
            if !params.contains(&name) {
                return Err(format!(
                    "'path.{name}' is not a parameter of this rule's path"
                ));
            }
            Source::Path(name)
        }
        "query" => Source::Query(first_field(&mut steps)?),
        "form" => Source::Form(first_field(&mut steps)?),
        "body" => Source::Body,
        other => {
            return Err(format!(
                "unknown selector root '{other}'{} (path, query, body, form or \"literal\")",
                did_you_mean(other, ["path", "query", "body", "form"])
            ))
        }
    };
    if matches!(source, Source::Path(_) | Source::Query(_)) && !steps.is_empty() {
        return Err(format!("'{text}': path and query values have no fields"));
    }
    let hidden = matches!(source, Source::Query(_)) || text.contains("password");
    Ok(Arg::Select(Selector {
        source,
        steps,
        optional,
        text: text.to_owned(),
        hidden,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_splits_only_at_the_top_level() {
        let params = vec!["board_id".to_owned()];
        let groups = Groups::parse("g.toml", "[groups]\na = [\"x@y\"]\n").unwrap();
        let r = parse_requirement(
            r#"board.read(path.board_id) or caller.in("a") or caller_or(path.board_id, "b or c")"#,
            &params,
            &groups,
        )
        .unwrap();
        let names: Vec<&str> = r.any_of.iter().map(|c| &*c.text).collect();
        assert_eq!(
            names,
            [
                "board.read(path.board_id)",
                r#"caller.in("a")"#,
                r#"caller_or(path.board_id, "b or c")"#
            ]
        );
        let one = parse_requirement("board.read(path.board_id)", &params, &groups).unwrap();
        assert_eq!(one.any_of.len(), 1);
        for bad in [
            "board.read(path.board_id) or",
            " or authenticated",
            "admin or  or admin",
        ] {
            assert!(parse_requirement(bad, &params, &groups).is_err(), "{bad}");
        }
        // Each alternative is a whole check, with its own `unless upstream.X`.
        let r = parse_requirement(
            "admin_unless_upstream(\"scopes_image_lists\") or caller.in(\"a\")",
            &params,
            &groups,
        )
        .unwrap();
        assert_eq!(
            r.any_of[0].predicate,
            Predicate::Account(Account::AdminUnlessUpstream)
        );
    }

    #[test]
    fn overlap_semantics() {
        assert!(templates_overlap("/a/{x}", "/a/b"));
        assert!(templates_overlap("/a/{x}", "/a/{y}"));
        assert!(!templates_overlap("/a/{x}", "/a/"));
        assert!(!templates_overlap("/a/{x}/c", "/a/{x}"));
        assert!(templates_overlap("/a/{*rest}", "/a/b/c"));
        assert!(!templates_overlap("/a/b", "/a/c"));
    }

    #[test]
    fn selectors_parse() {
        let params = vec!["image_name".to_owned()];
        let Arg::Select(s) = parse_arg("body.control_layers[].image_name?", &params).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.source, Source::Body);
        assert!(s.optional);
        assert_eq!(
            s.steps,
            vec![
                Step::Field("control_layers".into()),
                Step::Each,
                Step::Field("image_name".into())
            ]
        );
        let Arg::Select(s) = parse_arg("body[]", &params).unwrap() else {
            panic!()
        };
        assert_eq!(s.steps, vec![Step::Each]);
        assert!(parse_arg("path.other", &params).is_err());
        assert!(parse_arg("cookie.x", &params).is_err());
    }
}
