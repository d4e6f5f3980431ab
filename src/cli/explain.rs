//! `explain`'s two renderings of an [`Explanation`]: the report a person reads and the JSON a
//! tool reads (field names documented in docs/rules.md, "explain --json"; stable).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::decision::CheckResult;
use crate::server::evaluate::{Explanation, UpstreamCall};

/// A body as shown: JSON when it is JSON, else text (bodies the guard writes are JSON).
fn shown_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn call_json(c: &UpstreamCall) -> Value {
    json!({
        "method": c.method,
        "target": c.target,
        "body": c.body.as_deref().map(shown_body),
    })
}

impl Explanation {
    /// The report a person reads.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let canonical = self.canonical.as_deref().unwrap_or("(refused)");
        let _ = writeln!(s, "target    {} {canonical}", self.method);
        match &self.rule_id {
            Some(id) => {
                let _ = writeln!(s, "rule      {id} (routes.toml line {})", self.rule_line);
                for c in &self.rule_comment {
                    let _ = writeln!(s, "          {c}");
                }
            }
            None => s.push_str("rule      (none: deny by default)\n"),
        }
        match &self.caller {
            Some((id, email, admin)) => {
                let _ = writeln!(s, "caller    {email} (user id {id}, admin={admin})");
            }
            None => s.push_str("caller    anonymous (or not needed by the rule)\n"),
        }
        if self.verdict.checks.is_empty() {
            s.push_str("checks    (none evaluated)\n");
        } else {
            s.push_str("checks\n");
        }
        for (index, c) in self.verdict.checks.iter().enumerate() {
            let mark = match c.result {
                CheckResult::Failed(_) => "x",
                CheckResult::Held | CheckResult::AdminExempt | CheckResult::UpstreamEnforces(_) => {
                    "ok"
                }
            };
            match c.alternative {
                Some((i, of)) => {
                    let _ = writeln!(s, "  [{mark}] {}   (alternative {i} of {of})", c.check);
                }
                None => {
                    let _ = writeln!(s, "  [{mark}] {}", c.check);
                }
            }
            for a in &c.args {
                let _ = writeln!(s, "        {} = {}", a.selector, a.value);
            }
            for f in &c.facts {
                let _ = writeln!(s, "        fact: {f}");
            }
            let result = match (&c.result, c.alternative) {
                // An alternative that failed while another was tried after it.
                (CheckResult::Failed(r), Some(_)) if self.verdict.deciding != Some(index) => {
                    format!(
                        "did not hold ({} {}); next alternative",
                        r.status().as_u16(),
                        r.detail()
                    )
                }
                (result, _) => result.label(),
            };
            let _ = writeln!(s, "        => {result}");
        }
        let _ = writeln!(s, "decided   {}", self.decided_by);
        if let Some(c) = &self.candidate {
            let _ = writeln!(
                s,
                "candidate {} by {} ({}): {}",
                c.rule_id.as_deref().unwrap_or("(no rule)"),
                c.decided_by,
                c.answer.label(),
                if c.differs() {
                    "DIFFERS from the enforced table"
                } else {
                    "the same as the enforced table"
                }
            );
        }
        if let Some(status) = self.would_deny() {
            let _ = writeln!(
                s,
                "shadow    the rule is in shadow mode: would deny with {status}, logged as would_deny"
            );
        }
        match (&self.status, &self.answer) {
            (Some(status), Some(body)) => {
                let _ = writeln!(
                    s,
                    "answer    {status} {body} (by the guard; nothing is forwarded)"
                );
            }
            (Some(status), None) => {
                let _ = writeln!(s, "answer    {status} (by the guard)");
            }
            (None, _) if self.upstream.is_empty() => {
                s.push_str("answer    Socket.IO, terminated by the guard (every frame filtered)\n");
            }
            (None, _) => {
                for (i, c) in self.upstream.iter().enumerate() {
                    let head = if i == 0 { "upstream " } else { "         " };
                    let body = match &c.body {
                        Some(b) => shown_body(b).to_string(),
                        None if self.client_body => "(the client's body)".to_owned(),
                        None => "(no body)".to_owned(),
                    };
                    let _ = writeln!(s, "{head} {} {} {body}", c.method, c.target);
                }
                if self.filters.is_empty() {
                    s.push_str("filters   (none: InvokeAI's answer is passed on)\n");
                } else {
                    let _ = writeln!(s, "filters   {}", self.filters.join(", "));
                }
            }
        }
        s
    }

    /// The same, for tools (docs/rules.md, "explain --json").
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "canonical": self.canonical,
            "rule": self.rule_id.as_ref().map(|id| json!({
                "id": id, "line": self.rule_line, "comment": self.rule_comment,
            })),
            "caller": self.caller.as_ref().map(|(id, email, admin)| json!({
                "user_id": id, "email": email, "is_admin": admin,
            })),
            "checks": self.verdict.checks.iter().map(|c| json!({
                "check": &*c.check,
                "predicate": c.predicate.name(),
                "args": c.args.iter().map(|a| json!({"selector": a.selector, "value": a.value})).collect::<Vec<_>>(),
                "facts": c.facts,
                "result": c.result.label(),
                "alternative": c.alternative.map(|(index, of)| json!({"index": index, "of": of})),
            })).collect::<Vec<_>>(),
            "decision": self.outcome.label(),
            "decided_by": self.decided_by,
            "would_deny": self.would_deny(),
            "status": self.status,
            "answer": self.answer,
            "upstream": self.upstream.iter().map(call_json).collect::<Vec<_>>(),
            "filters": self.filters,
            "candidate": self.candidate.as_ref().map(|c| json!({
                "rule": c.rule_id,
                "answer": c.answer.label(),
                "decided_by": c.decided_by,
                "differs": c.differs(),
            })),
        })
    }
}
