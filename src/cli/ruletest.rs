//! Rule tests as data: a TOML file of cases (caller, request, expected outcome and, optionally,
//! the deciding check), run against a route table and an InvokeAI database without an upstream.
//! Format: `docs/rules.md` ("Rule tests").
//!
//! Invariants:
//! - Unknown keys are errors (a typo never silently drops an expectation).
//! - A case passes only if the outcome matches and, when given, the deciding check and the
//!   upstream request(s) match (what `explain` reports, which is what `serve` sends).
//! - The same cases run in `cargo test` (tests/policy.rs) and as `invoke-guard test`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::server::evaluate::{Caller, Engine, Explanation, Trial, TrialBody};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// InvokeAI database the cases expect (relative to the file); `--db` overrides it.
    pub db: Option<PathBuf>,
    /// Route table (relative to the file); `--routes` overrides it.
    pub routes: Option<PathBuf>,
    /// The guard's ledger (relative to the file); `--ledger` overrides it; default: empty.
    pub ledger: Option<PathBuf>,
    /// The groups file `caller.in` reads (relative to the file); `--groups` overrides it.
    pub groups: Option<PathBuf>,
    /// Ledger entries the cases assume (6.12 creators, bulk-download requesters).
    #[serde(default)]
    pub record: Vec<Record>,
    #[serde(default)]
    pub case: Vec<toml::Spanned<Case>>,
}

/// A ledger entry: `owner` created (or requested) `id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// workflow, style_preset or bulk_download.
    pub kind: String,
    pub id: String,
    /// An email or user id of the database.
    pub owner: String,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// An email or user id of the database, or "anonymous".
    pub caller: String,
    /// Claims of the caller's token that differ from the row (e.g. a stale `is_admin`).
    #[serde(default)]
    pub claims: Option<toml::Table>,
    pub method: String,
    /// The request target (may carry `?query`).
    pub path: String,
    /// Query parameters added to `path`.
    #[serde(default)]
    pub query: Option<toml::Table>,
    /// A JSON body: JSON text, or a TOML table/array converted to JSON.
    #[serde(default)]
    pub body: Option<toml::Value>,
    /// Multipart text fields.
    #[serde(default)]
    pub form: Option<toml::Table>,
    /// "allow" (forwarded) or the status the guard answers.
    pub expect: Expect,
    /// The deciding check's predicate (e.g. "image.read") or a stage (identity, auth, body,
    /// route, plan).
    #[serde(default)]
    pub check: Option<String>,
    /// The requests the guard sends upstream, in order (when given, they must match).
    #[serde(default)]
    pub upstream: Option<Vec<ExpectedCall>>,
}

/// One expected upstream request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub method: String,
    /// Path and query as sent (canonical).
    pub target: String,
    /// The guard's own JSON body (a TOML table/array or JSON text); absent: not compared;
    /// `"client"`: the client's body is forwarded as it came.
    #[serde(default)]
    pub body: Option<toml::Value>,
}

impl ExpectedCall {
    fn matches(&self, got: &crate::server::evaluate::UpstreamCall) -> bool {
        if !self.method.eq_ignore_ascii_case(&got.method) || self.target != got.target {
            return false;
        }
        match (&self.body, &got.body) {
            (None, _) => true,
            (Some(toml::Value::String(s)), None) => s == "client",
            (Some(toml::Value::String(s)), Some(b)) if s != "client" => {
                serde_json::from_str::<Value>(s).ok() == serde_json::from_slice::<Value>(b).ok()
            }
            (Some(toml::Value::String(_)), Some(_)) => false,
            (Some(v), Some(b)) => serde_json::from_slice::<Value>(b).ok() == Some(to_json(v)),
            (Some(_), None) => false,
        }
    }

    fn text(&self) -> String {
        match &self.body {
            None => format!("{} {}", self.method, self.target),
            Some(toml::Value::String(s)) => format!("{} {} {s}", self.method, self.target),
            Some(v) => format!("{} {} {}", self.method, self.target, to_json(v)),
        }
    }
}

/// The expected outcome.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    Status(u16),
    Word(String),
}

impl Expect {
    /// `status` is the guard's own answer (`None`: forwarded, or Socket.IO terminated by the
    /// guard); `would_deny` the status a shadow rule's checks refused with (forwarded anyway).
    fn matches(&self, status: Option<u16>, would_deny: Option<u16>) -> Result<bool, String> {
        match self {
            Expect::Status(s) => Ok(status == Some(*s)),
            Expect::Word(w) if w == "allow" => Ok(status.is_none() && would_deny.is_none()),
            Expect::Word(w) if w == "would_deny" => Ok(would_deny.is_some()),
            Expect::Word(w) => Err(format!(
                "expect must be \"allow\", \"would_deny\" or a status code, got \"{w}\""
            )),
        }
    }

    fn text(&self) -> String {
        match self {
            Expect::Status(s) => s.to_string(),
            Expect::Word(w) => w.clone(),
        }
    }
}

impl Case {
    /// The trial this case describes.
    pub fn trial(&self) -> Result<Trial, String> {
        let caller = match self.caller.as_str() {
            "anonymous" | "anon" | "" => Caller::Anonymous,
            who => Caller::User {
                who: who.to_owned(),
                claims: match &self.claims {
                    Some(t) => to_json(&toml::Value::Table(t.clone()))
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    None => Map::new(),
                },
            },
        };
        let mut target = self.path.clone();
        if let Some(q) = &self.query {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in q {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                ser.append_pair(k, &v);
            }
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&ser.finish());
        }
        let body = match (&self.body, &self.form) {
            (Some(_), Some(_)) => return Err("a case has either body or form, not both".into()),
            (Some(toml::Value::String(text)), None) => Some(TrialBody::Json(text.clone())),
            (Some(v), None) => Some(TrialBody::Json(to_json(v).to_string())),
            (None, Some(form)) => Some(TrialBody::Form(
                form.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            toml::Value::String(s) => s.clone(),
                            other => to_json(other).to_string(),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            )),
            (None, None) => None,
        };
        Ok(Trial {
            caller,
            method: self.method.clone(),
            target,
            body,
        })
    }
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A parsed file with each case's line.
pub struct Loaded {
    pub path: PathBuf,
    pub file: TestFile,
    pub lines: Vec<usize>,
}

/// Read and parse a test file (unknown keys are errors, with their line).
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
    })?;
    let lines = file
        .case
        .iter()
        .map(|c| text[..c.span().start.min(text.len())].matches('\n').count() + 1)
        .collect();
    Ok(Loaded {
        path: path.to_owned(),
        file,
        lines,
    })
}

impl Loaded {
    /// A path named in the file, relative to the file.
    pub fn relative(&self, p: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_owned(),
        }
    }
}

/// The result of one case.
pub struct CaseResult {
    pub name: String,
    pub line: usize,
    pub passed: bool,
    /// The diff-style report of a failure.
    pub report: String,
}

/// Seed the file's ledger entries into `engine`.
pub async fn seed(loaded: &Loaded, engine: &Engine) -> anyhow::Result<()> {
    for r in &loaded.file.record {
        let kind = crate::rules::vocab::RecordKind::from_name(&r.kind).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: record kind '{}' (one of workflow, style_preset, bulk_download)",
                loaded.path.display(),
                r.kind
            )
        })?;
        engine.record(kind, &r.id, &r.owner).await?;
    }
    Ok(())
}

/// Run every case of a loaded file against `engine` (seeded with the file's records).
pub async fn run(loaded: &Loaded, engine: &Engine) -> anyhow::Result<Vec<CaseResult>> {
    seed(loaded, engine).await?;
    let mut results = Vec::with_capacity(loaded.file.case.len());
    for (case, line) in loaded.file.case.iter().zip(&loaded.lines) {
        let case = case.get_ref();
        let outcome = match case.trial() {
            Ok(trial) => engine.run(&trial).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        results.push(judge(case, *line, &loaded.path, outcome));
    }
    Ok(results)
}

fn judge(
    case: &Case,
    line: usize,
    file: &Path,
    outcome: Result<Explanation, String>,
) -> CaseResult {
    let head = format!(
        "FAIL {}:{line} \"{}\" ({} {} {})",
        file.display(),
        case.name,
        case.caller,
        case.method,
        case.path
    );
    let fail = |report: String| CaseResult {
        name: case.name.clone(),
        line,
        passed: false,
        report,
    };
    let ex = match outcome {
        Ok(ex) => ex,
        Err(e) => return fail(format!("{head}\n  error: {e}\n")),
    };
    let got_check = ex.decided_by;
    let status_ok = match case.expect.matches(ex.status, ex.would_deny()) {
        Ok(ok) => ok,
        Err(e) => return fail(format!("{head}\n  error: {e}\n")),
    };
    let check_ok = case.check.as_deref().is_none_or(|want| want == got_check);
    let upstream_ok = case.upstream.as_ref().is_none_or(|want| {
        want.len() == ex.upstream.len() && want.iter().zip(&ex.upstream).all(|(w, g)| w.matches(g))
    });
    if status_ok && check_ok && upstream_ok {
        return CaseResult {
            name: case.name.clone(),
            line,
            passed: true,
            report: String::new(),
        };
    }
    let want = match &case.check {
        Some(c) => format!("{} ({c})", case.expect.text()),
        None => case.expect.text(),
    };
    let got = match (ex.would_deny(), ex.status) {
        (Some(status), _) => format!("would_deny {status} (shadow mode)"),
        (None, None) => "allow".to_owned(),
        (None, Some(status)) => status.to_string(),
    };
    let upstream = match &case.upstream {
        Some(want) if !upstream_ok => {
            let want: Vec<String> = want.iter().map(ExpectedCall::text).collect();
            let got: Vec<String> = ex
                .upstream
                .iter()
                .map(|c| {
                    let body = c
                        .body
                        .as_deref()
                        .map_or("client".into(), |b| String::from_utf8_lossy(b).into_owned());
                    format!("{} {} {body}", c.method, c.target)
                })
                .collect();
            format!(
                "\n  - upstream {}\n  + upstream {}",
                want.join(" ; "),
                got.join(" ; ")
            )
        }
        _ => String::new(),
    };
    let facts = ex
        .verdict
        .checks
        .iter()
        .flat_map(|c| c.facts.iter())
        .map(|f| format!("\n      fact: {f}"))
        .collect::<String>();
    fail(format!(
        "{head}\n  - expect {want}\n  + got    {got} ({got_check}) rule={}{}{facts}{upstream}\n",
        ex.rule_id.as_deref().unwrap_or("-"),
        ex.answer
            .as_deref()
            .map(|a| format!(" answer={a}"))
            .unwrap_or_default(),
    ))
}
