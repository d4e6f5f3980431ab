//! Cookies read the way Starlette reads them (InvokeAI's parser), so the guard and the upstream
//! never disagree on which cookie a request carries.
//!
//! Invariants:
//! - Every `Cookie` header is split on `;`, each chunk on its first `=`, and name and value are
//!   trimmed (`invokeai_media_token =x` is the cookie `invokeai_media_token`); a value in double
//!   quotes is unquoted.
//! - A cookie the guard acts on that appears twice with different values is ambiguous (the
//!   browser's order and Starlette's last-wins could pick different ones): refused.
//! - Removing cookies drops every chunk whose trimmed name matches, and forwards the rest as one
//!   header (Starlette reads only the first `Cookie` header).

use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;

/// Every cookie of a request, in order, as `(name, value)`.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|chunk| {
            let (name, value) = chunk.split_once('=').unwrap_or(("", chunk));
            (name.trim(), unquote(value.trim()))
        })
}

fn unquote(value: &str) -> &str {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner,
        None => value,
    }
}

/// A cookie appears twice with different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The value of cookie `name` (empty values count as absent).
pub fn get(headers: &HeaderMap, name: &str) -> Result<Option<String>, Ambiguous> {
    let mut found: Option<&str> = None;
    for (_, value) in pairs(headers).filter(|(n, v)| *n == name && !v.is_empty()) {
        match found {
            Some(prev) if prev != value => return Err(Ambiguous),
            _ => found = Some(value),
        }
    }
    Ok(found.map(str::to_owned))
}

/// Remove cookies by (trimmed) name; the remaining ones travel as one `Cookie` header.
pub fn remove(headers: &mut HeaderMap, names: &[&str]) {
    if !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|chunk| {
            let name = chunk.split_once('=').map_or("", |(n, _)| n).trim();
            !names.contains(&name) && !chunk.trim().is_empty()
        })
        .map(|chunk| chunk.trim().to_owned())
        .collect();
    headers.remove(COOKIE);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn names_and_values_are_trimmed_and_unquoted() {
        let h = headers(&["a=1; invokeai_media_token =tok ; b=\"q\""]);
        assert_eq!(
            get(&h, "invokeai_media_token").unwrap().as_deref(),
            Some("tok")
        );
        assert_eq!(get(&h, "b").unwrap().as_deref(), Some("q"));
        assert_eq!(get(&h, "c").unwrap(), None);
    }

    #[test]
    fn conflicting_duplicates_are_ambiguous() {
        let h = headers(&["t=1", "t=2"]);
        assert_eq!(get(&h, "t"), Err(Ambiguous));
        let h = headers(&["t=1; t=1"]);
        assert_eq!(get(&h, "t").unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn remove_matches_trimmed_names_and_joins() {
        let mut h = headers(&[
            "invokeai_media_token =x; keep=1",
            " other=2 ;invokeai_media_token=y",
        ]);
        remove(&mut h, &["invokeai_media_token"]);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "keep=1; other=2");
        let mut h = headers(&["invokeai_media_token=x"]);
        remove(&mut h, &["invokeai_media_token"]);
        assert!(h.get(COOKIE).is_none());
    }
}
