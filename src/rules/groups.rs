//! Caller groups: who `caller.in("NAME")` admits, from a TOML file the operator maintains
//! (reloaded with routes.toml). The same file may hold the access sections (`[models]`,
//! `[quotas]`: see [`super::access`]), which name its groups.
//!
//! Invariants:
//! - Unknown keys are errors; group names use `[a-z0-9_.-]+`; a member is an email
//!   (compared case-insensitively) or a user id, never empty.
//! - Groups are bound into the route table when it is compiled: a rule naming a group the file
//!   does not define is a load error (the last good table is kept on reload), so a request never
//!   meets an unknown group; an unbound group at request time is a denial, never an allow.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::access::{self, Access};
use super::RouteError;

/// The members of one group: lower-cased emails and user ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Members(HashSet<String>);

impl Members {
    /// Whether the caller (by user id or email) is a member.
    pub fn admits(&self, user_id: &str, email: &str) -> bool {
        self.0.contains(user_id) || (!email.is_empty() && self.0.contains(&email.to_lowercase()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The members as stored (lower-cased).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every group of the groups file (empty when none is configured), and its access sections.
#[derive(Debug, Default)]
pub struct Groups {
    by_name: BTreeMap<String, Arc<Members>>,
    /// Model access and quotas (both absent without the sections: everything as today).
    access: Arc<Access>,
    /// SHA-256 of the file (empty without a file), for reload detection and logs.
    pub source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroups {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    models: Option<access::RawModels>,
    #[serde(default)]
    quotas: Option<access::RawQuotas>,
}

impl Groups {
    /// Read a groups file.
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RouteError {
            file: file.clone(),
            line: 0,
            rule: None,
            message: format!(
                "cannot read the groups file: {e} (set `groups` / --groups / INVOKE_GUARD_GROUPS)"
            ),
        })?;
        Self::parse(&file, &text)
    }

    /// Parse a groups file from text (`file` names it in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, RouteError> {
        let err = |line: usize, message: String| RouteError {
            file: file.to_owned(),
            line,
            rule: None,
            message,
        };
        let raw: RawGroups = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or_default();
            err(line, e.message().to_owned())
        })?;
        let mut by_name = BTreeMap::new();
        for (name, members) in raw.groups {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
            {
                return Err(err(
                    0,
                    format!("group '{name}': names use only [a-z0-9_.-]"),
                ));
            }
            let mut set = HashSet::new();
            for m in members {
                let m = m.trim();
                if m.is_empty() {
                    return Err(err(0, format!("group '{name}': an empty member")));
                }
                // Emails compare case-insensitively (InvokeAI lower-cases them); ids are UUIDs.
                set.insert(m.to_lowercase());
            }
            by_name.insert(name, Arc::new(Members(set)));
        }
        let models = raw
            .models
            .map(|m| access::compile_models(text, m, &by_name))
            .transpose()
            .map_err(|(line, m)| err(line, m))?;
        let quotas = raw
            .quotas
            .map(|q| access::compile_quotas(text, q, &by_name))
            .transpose()
            .map_err(|(line, m)| err(line, m))?;
        use sha2::Digest;
        let sum = sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            by_name,
            access: Arc::new(Access { models, quotas }),
            source: Some(sum),
        })
    }

    /// The members of a group, if the file defines it.
    pub fn get(&self, name: &str) -> Option<Arc<Members>> {
        self.by_name.get(name).cloned()
    }

    /// Every group with its members, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Members)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// The access sections (model access, quotas).
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// Group names, for error messages.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_match_by_id_or_email_case_insensitively() {
        let g = Groups::parse(
            "g.toml",
            "[groups]\nmodel-installers = [\"Alice@Example.com\", \"u-2\"]\n",
        )
        .unwrap();
        let m = g.get("model-installers").unwrap();
        assert!(m.admits("u-1", "alice@example.com"));
        assert!(m.admits("u-2", ""));
        assert!(!m.admits("u-3", "bob@example.com"));
        assert!(g.get("admins").is_none());
        assert!(Groups::parse("g.toml", "[groups]\nBad = []\n").is_err());
        assert!(Groups::parse("g.toml", "[groups]\nx = [\"\"]\n").is_err());
        assert!(Groups::parse("g.toml", "[group]\nx = []\n").is_err());
    }
}
