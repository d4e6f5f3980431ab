//! List queries for recomputing what an older InvokeAI answers beyond main (spec §4 R1, R2, R4,
//! the 6.12 workflow tags/counts and intermediates count). Each reproduces the released
//! upstream's own filter semantics (6.12/6.13, which are frozen) plus main's owner condition.
//!
//! Invariants:
//! - Every query names the caller's user id as a bound parameter; none can widen a list beyond
//!   the caller's own rows (plus the category `default` for workflows).
//! - A page and its total are read in one transaction, so they agree with each other even while
//!   other users write.
//! - Never cached: lists are read for one response and move with every write.

use std::collections::HashMap;

use rusqlite::{types::Value as SqlValue, Connection};

/// The filters of `GET /api/v1/images/` and `GET /api/v1/images/names` (board_id omitted), as
/// the upstream would apply them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    pub image_origin: Option<String>,
    pub categories: Option<Vec<String>>,
    pub is_intermediate: Option<bool>,
    pub search_term: Option<String>,
    pub starred_first: bool,
    pub descending: bool,
}

impl ImageFilter {
    /// `WHERE` conditions (after `images.user_id = ?1`) and their parameters.
    fn conditions(&self, params: &mut Vec<SqlValue>) -> String {
        let mut sql = String::new();
        if let Some(origin) = &self.image_origin {
            params.push(SqlValue::Text(origin.clone()));
            sql.push_str(&format!(" AND images.image_origin = ?{}", params.len()));
        }
        if let Some(categories) = &self.categories {
            let mut unique: Vec<&String> = categories.iter().collect();
            unique.sort();
            unique.dedup();
            let mut marks = Vec::new();
            for c in unique {
                params.push(SqlValue::Text(c.clone()));
                marks.push(format!("?{}", params.len()));
            }
            sql.push_str(&format!(
                " AND images.image_category IN ({})",
                marks.join(",")
            ));
        }
        if let Some(flag) = self.is_intermediate {
            params.push(SqlValue::Integer(i64::from(flag)));
            sql.push_str(&format!(" AND images.is_intermediate = ?{}", params.len()));
        }
        if let Some(term) = self.search_term.as_deref().filter(|t| !t.is_empty()) {
            // The upstream lowercases the term (Python `str.lower`) and matches with LIKE.
            params.push(SqlValue::Text(format!("%{}%", term.to_lowercase())));
            let n = params.len();
            sql.push_str(&format!(
                " AND (images.metadata LIKE ?{n} OR images.created_at LIKE ?{n})"
            ));
        }
        sql
    }

    fn order(&self) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        if self.starred_first {
            format!(" ORDER BY images.starred DESC, images.created_at {dir}")
        } else {
            format!(" ORDER BY images.created_at {dir}")
        }
    }
}

/// One page of the caller's own images (names, in the upstream's order) and the total count.
/// `limit < 0` means no limit, as in SQLite (and the upstream); `max` bounds what is returned.
pub fn own_image_page(
    conn: &Connection,
    user_id: &str,
    filter: &ImageFilter,
    offset: i64,
    limit: i64,
) -> rusqlite::Result<(Vec<String>, i64)> {
    let tx = conn.unchecked_transaction()?;
    let mut params = vec![SqlValue::Text(user_id.to_owned())];
    let conditions = filter.conditions(&mut params);
    let total: i64 = tx.query_row(
        &format!("SELECT COUNT(*) FROM images WHERE images.user_id = ?1{conditions}"),
        rusqlite::params_from_iter(params.iter()),
        |r| r.get(0),
    )?;
    params.push(SqlValue::Integer(limit));
    params.push(SqlValue::Integer(offset));
    let n = params.len();
    let sql = format!(
        "SELECT images.image_name FROM images WHERE images.user_id = ?1{conditions}{} LIMIT ?{} OFFSET ?{n}",
        filter.order(),
        n - 1
    );
    let names = tx
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    tx.finish()?;
    Ok((names, total))
}

/// The caller's own image names, each with its `starred` flag.
pub fn own_images(conn: &Connection, user_id: &str) -> rusqlite::Result<HashMap<String, bool>> {
    conn.prepare_cached("SELECT image_name, starred FROM images WHERE user_id = ?1")?
        .query_map([user_id], |r| {
            Ok((r.get(0)?, r.get::<_, Option<bool>>(1)?.unwrap_or(false)))
        })?
        .collect()
}

/// The caller's own images on a board.
pub fn own_images_on_board(
    conn: &Connection,
    board_id: &str,
    user_id: &str,
) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT images.image_name FROM board_images JOIN images \
         ON images.image_name = board_images.image_name \
         WHERE board_images.board_id = ?1 AND images.user_id = ?2",
    )?
    .query_map([board_id, user_id], |r| r.get(0))?
    .collect()
}

/// How many intermediates the caller owns.
pub fn own_intermediates_count(conn: &Connection, user_id: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COUNT(*) FROM images WHERE user_id = ?1 AND is_intermediate = 1")?
        .query_row([user_id], |r| r.get(0))
}

/// Per date (`YYYY-MM-DD`), the caller's newest non-intermediate image: the cover main would
/// show on a date-grouped virtual board.
pub fn own_date_covers(
    conn: &Connection,
    user_id: &str,
) -> rusqlite::Result<HashMap<String, String>> {
    let mut covers = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT DATE(created_at), image_name FROM images \
         WHERE user_id = ?1 AND is_intermediate = 0 ORDER BY created_at DESC",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in rows {
        if let (Some(date), name) = row? {
            covers.entry(date).or_insert(name);
        }
    }
    Ok(covers)
}

/// Which workflows a non-admin may see in 6.12's workflow lists (6.12 keeps no owner: the
/// caller's own ids come from the guard's ledger), plus the list's own filters.
#[derive(Debug, Clone, Default)]
pub struct WorkflowScope {
    /// Workflow ids the ledger records as the caller's.
    pub own_ids: Vec<String>,
    /// `is_public=true`: no 6.12 workflow is shared, only the shipped defaults qualify.
    pub defaults_only: bool,
    pub categories: Option<Vec<String>>,
    pub has_been_opened: Option<bool>,
}

impl WorkflowScope {
    fn conditions(&self, params: &mut Vec<SqlValue>) -> Vec<String> {
        let mut conds = Vec::new();
        if self.defaults_only {
            conds.push("category = 'default'".to_owned());
        } else {
            let ids = serde_json::Value::from(self.own_ids.clone()).to_string();
            params.push(SqlValue::Text(ids));
            conds.push(format!(
                "(category = 'default' OR workflow_id IN (SELECT value FROM json_each(?{})))",
                params.len()
            ));
        }
        if let Some(categories) = self.categories.as_ref().filter(|c| !c.is_empty()) {
            let mut marks = Vec::new();
            for c in categories {
                params.push(SqlValue::Text(c.clone()));
                marks.push(format!("?{}", params.len()));
            }
            conds.push(format!("category IN ({})", marks.join(", ")));
        }
        match self.has_been_opened {
            Some(true) => conds.push("opened_at IS NOT NULL".into()),
            Some(false) => conds.push("opened_at IS NULL".into()),
            None => {}
        }
        conds
    }

    fn count(&self, conn: &Connection, extra: Option<(&str, SqlValue)>) -> rusqlite::Result<i64> {
        let mut params = Vec::new();
        let mut conds = self.conditions(&mut params);
        if let Some((cond, value)) = extra {
            params.push(value);
            conds.push(format!("{cond} ?{}", params.len()));
        }
        conn.query_row(
            &format!(
                "SELECT COUNT(*) FROM workflow_library WHERE {}",
                conds.join(" AND ")
            ),
            rusqlite::params_from_iter(params.iter()),
            |r| r.get(0),
        )
    }
}

/// Every tag of the visible workflows: comma-separated in the database, trimmed, unique, sorted
/// (6.12's `GET /workflows/tags`).
pub fn visible_workflow_tags(
    conn: &Connection,
    scope: &WorkflowScope,
) -> rusqlite::Result<Vec<String>> {
    let mut params = Vec::new();
    let mut conds = scope.conditions(&mut params);
    conds.insert(0, "tags IS NOT NULL AND tags != ''".into());
    let sql = format!(
        "SELECT DISTINCT tags FROM workflow_library WHERE {}",
        conds.join(" AND ")
    );
    let mut tags = std::collections::BTreeSet::new();
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
        r.get::<_, Option<String>>(0)
    })?;
    for row in rows {
        for tag in row?.unwrap_or_default().split(',') {
            let tag = tag.trim();
            if !tag.is_empty() {
                tags.insert(tag.to_owned());
            }
        }
    }
    Ok(tags.into_iter().collect())
}

/// Visible workflows per tag (6.12's `counts_by_tag`: `tags LIKE %tag%`, one count per tag).
pub fn visible_workflow_tag_counts(
    conn: &Connection,
    scope: &WorkflowScope,
    tags: &[String],
) -> rusqlite::Result<Vec<(String, i64)>> {
    let tx = conn.unchecked_transaction()?;
    let counts = tags
        .iter()
        .map(|tag| {
            let pattern = SqlValue::Text(format!("%{}%", tag.trim()));
            Ok((tag.clone(), scope.count(&tx, Some(("tags LIKE", pattern)))?))
        })
        .collect::<rusqlite::Result<_>>()?;
    tx.finish()?;
    Ok(counts)
}

/// Visible workflows per category (6.12's `counts_by_category`).
pub fn visible_workflow_category_counts(
    conn: &Connection,
    scope: &WorkflowScope,
    categories: &[String],
) -> rusqlite::Result<Vec<(String, i64)>> {
    let tx = conn.unchecked_transaction()?;
    let counts = categories
        .iter()
        .map(|c| {
            let value = SqlValue::Text(c.clone());
            Ok((c.clone(), scope.count(&tx, Some(("category =", value)))?))
        })
        .collect::<rusqlite::Result<_>>()?;
    tx.finish()?;
    Ok(counts)
}
