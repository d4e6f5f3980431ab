//! Read-only SQL over InvokeAI's database.
//!
//! Invariants:
//! - Every connection is opened with the URI `file:…?mode=ro` (never `immutable=1`: InvokeAI
//!   writes underneath us in WAL mode) and `query_only = ON`; nothing here can write.
//! - Queries run on the blocking pool (`spawn_blocking`), never on an async worker thread.
//! - A connection that returned an error is dropped, not reused; so is one taken from the pool
//!   before a [`Db::reset`] (it may read a replaced or deleted file).
//! - Each query names only columns the detected [`Schema`] has.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::Semaphore;

use super::schema::Schema;
use super::{
    BoardFact, CountScope, FactsError, ImageFact, PresetFact, QueueItemFact, SystemPromptFact,
    UserFact, Visibility, WorkflowFact,
};

/// A small pool of read-only connections.
pub struct Db {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    busy_timeout: Duration,
    /// Bumped by every reset: a connection checked out under an older epoch is not pooled again.
    epoch: AtomicU64,
}

impl Db {
    /// A pool of at most `size` connections. Opens one now so a bad path fails early.
    pub fn open(path: &Path, size: usize, busy_timeout: Duration) -> Result<Self, FactsError> {
        let db = Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            busy_timeout,
            epoch: AtomicU64::new(0),
        };
        let conn = db.connect()?;
        db.idle.lock().expect("pool lock").push(conn);
        Ok(db)
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open one read-only connection.
    pub fn connect(&self) -> Result<Connection, FactsError> {
        open_read_only(&self.path, self.busy_timeout)
    }

    /// Drop every idle connection (the file was replaced).
    pub fn reset(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        idle.clear();
    }

    /// Run `f` with a pooled connection on the blocking pool.
    pub async fn with<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T, FactsError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FactsError::Closed)?;
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let epoch = db.epoch.load(Ordering::Acquire);
            let pooled = db.idle.lock().expect("pool lock").pop();
            let conn = match pooled {
                Some(c) => c,
                None => db.connect()?,
            };
            let result = f(&conn).map_err(FactsError::from);
            let mut idle = db.idle.lock().expect("pool lock");
            // Stale pool: a connection to a replaced file must not serve the next request.
            if result.is_ok() && db.epoch.load(Ordering::Acquire) == epoch {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| FactsError::Closed)?
    }
}

/// Open InvokeAI's database read-only.
pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection, FactsError> {
    if !path.is_file() {
        return Err(FactsError::Missing(path.to_owned()));
    }
    const PATH_CHARS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    let uri = format!(
        "file:{}?mode=ro",
        percent_encoding::utf8_percent_encode(&path.to_string_lossy(), PATH_CHARS)
    );
    let opened = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| {
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "query_only", true)?;
        // Touch the schema now so an unreadable or non-database file fails here, not later.
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    });
    opened
        .map_err(|e| FactsError::Sqlite(format!("{}: {e}{}", path.display(), open_hint(path, &e))))
}

/// What an operator can do about a database that does not open.
fn open_hint(path: &Path, e: &rusqlite::Error) -> &'static str {
    let text = e.to_string();
    let wal = {
        let mut p = path.as_os_str().to_owned();
        p.push("-wal");
        Path::new(&p).exists()
    };
    if text.contains("readonly") || (wal && text.contains("unable to open")) {
        // A WAL database needs its -shm file even to read; SQLite must create it when absent.
        " (a WAL database in a read-only directory needs its -wal and -shm files: start InvokeAI \
         first so they exist, or mount databases/ read-write; the guard still opens it read-only)"
    } else if text.contains("not a database") || text.contains("malformed") {
        " (is this InvokeAI's databases/invokeai.db? set `db` / --db / INVOKE_GUARD_DB)"
    } else if text.contains("unable to open") {
        " (the guard needs read access to the file and its directory)"
    } else {
        ""
    }
}

// === queries ===

fn visibility_column(schema: &Schema) -> &'static str {
    if schema.has_board_visibility {
        "b.board_visibility"
    } else {
        "CASE WHEN b.is_public = 1 THEN 'public' ELSE 'private' END"
    }
}

fn board_from_row(
    id: Option<String>,
    owner: Option<String>,
    visibility: Option<String>,
    archived: Option<bool>,
) -> Option<BoardFact> {
    Some(BoardFact {
        board_id: id?,
        owner: owner.unwrap_or_else(|| "system".into()),
        visibility: Visibility::parse(visibility.as_deref()),
        archived: archived.unwrap_or(false),
    })
}

pub fn jwt_secret(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM app_settings WHERE key = 'jwt_secret'")?
        .query_row([], |r| r.get(0))
        .optional()
}

pub fn user(
    conn: &Connection,
    schema: &Schema,
    user_id: &str,
) -> rusqlite::Result<Option<UserFact>> {
    let sql = if schema.has_token_epoch {
        "SELECT is_active, is_admin, token_epoch, email FROM users WHERE user_id = ?1"
    } else {
        "SELECT is_active, is_admin, 0, email FROM users WHERE user_id = ?1"
    };
    conn.prepare_cached(sql)?
        .query_row([user_id], |r| {
            Ok(UserFact {
                is_active: r.get(0)?,
                is_admin: r.get(1)?,
                token_epoch: r.get(2)?,
                email: r.get(3)?,
            })
        })
        .optional()
}

pub fn active_admin_count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COUNT(*) FROM users WHERE is_admin = 1 AND is_active = 1")?
        .query_row([], |r| r.get(0))
}

pub fn image(
    conn: &Connection,
    schema: &Schema,
    name: &str,
) -> rusqlite::Result<Option<ImageFact>> {
    media(conn, schema, name, "images", "image_name", "board_images")
}

pub fn video(
    conn: &Connection,
    schema: &Schema,
    name: &str,
) -> rusqlite::Result<Option<ImageFact>> {
    media(conn, schema, name, "videos", "video_name", "board_videos")
}

/// The owner and board of media rows: `SELECT <key>, owner, board…` with a `WHERE` on `m.<key>`.
fn media_sql(schema: &Schema, table: &str, key: &str, link: &str, filter: &str) -> String {
    format!(
        "SELECT m.{key}, m.user_id, b.board_id, b.user_id, {vis}, b.archived \
         FROM {table} m LEFT JOIN {link} l ON l.{key} = m.{key} \
         LEFT JOIN boards b ON b.board_id = l.board_id WHERE m.{key} {filter}",
        vis = visibility_column(schema)
    )
}

fn media_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, ImageFact)> {
    Ok((
        r.get(0)?,
        ImageFact {
            owner: r
                .get::<_, Option<String>>(1)?
                .unwrap_or_else(|| "system".into()),
            board: board_from_row(r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
        },
    ))
}

fn media(
    conn: &Connection,
    schema: &Schema,
    name: &str,
    table: &str,
    key: &str,
    link: &str,
) -> rusqlite::Result<Option<ImageFact>> {
    conn.prepare_cached(&media_sql(schema, table, key, link, "= ?1"))?
        .query_row([name], media_row)
        .map(|(_, fact)| fact)
        .optional()
}

/// The facts of many images in one statement (per-item list filters); unknown names are absent.
pub fn images(
    conn: &Connection,
    schema: &Schema,
    names: &[String],
) -> rusqlite::Result<std::collections::HashMap<String, ImageFact>> {
    let list = serde_json::Value::from(names.to_vec()).to_string();
    let filter = "IN (SELECT value FROM json_each(?1))";
    conn.prepare_cached(&media_sql(
        schema,
        "images",
        "image_name",
        "board_images",
        filter,
    ))?
    .query_map([list], media_row)?
    .collect()
}

pub fn board(conn: &Connection, schema: &Schema, id: &str) -> rusqlite::Result<Option<BoardFact>> {
    let sql = format!(
        "SELECT b.board_id, b.user_id, {vis}, b.archived FROM boards b WHERE b.board_id = ?1",
        vis = visibility_column(schema)
    );
    conn.prepare_cached(&sql)?
        .query_row([id], |r| {
            Ok(board_from_row(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map(Option::flatten)
}

pub fn workflow(
    conn: &Connection,
    schema: &Schema,
    id: &str,
) -> rusqlite::Result<Option<WorkflowFact>> {
    let sql = if schema.has_workflow_owner {
        "SELECT user_id, is_public, category, created_at FROM workflow_library WHERE workflow_id = ?1"
    } else {
        "SELECT NULL, 0, category, created_at FROM workflow_library WHERE workflow_id = ?1"
    };
    conn.prepare_cached(sql)?
        .query_row([id], |r| {
            Ok(WorkflowFact {
                owner: r.get(0)?,
                is_public: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                category: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                created_at: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        })
        .optional()
}

pub fn queue_item(
    conn: &Connection,
    schema: &Schema,
    id: i64,
) -> rusqlite::Result<Option<QueueItemFact>> {
    let sql = if schema.has_queue_root {
        "SELECT c.user_id, c.queue_id, r.user_id FROM session_queue c \
         LEFT JOIN session_queue r ON r.item_id = COALESCE(c.root_item_id, c.item_id) WHERE c.item_id = ?1"
    } else {
        "SELECT user_id, queue_id, user_id FROM session_queue WHERE item_id = ?1"
    };
    conn.prepare_cached(sql)?
        .query_row([id], |r| {
            let owner: String = r
                .get::<_, Option<String>>(0)?
                .unwrap_or_else(|| "system".into());
            Ok(QueueItemFact {
                root_owner: r
                    .get::<_, Option<String>>(2)?
                    .unwrap_or_else(|| owner.clone()),
                owner,
                queue_id: r.get(1)?,
            })
        })
        .optional()
}

pub fn preset(conn: &Connection, id: &str) -> rusqlite::Result<Option<PresetFact>> {
    conn.prepare_cached(
        "SELECT user_id, is_public, type, created_at FROM style_presets WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(PresetFact {
            owner: r
                .get::<_, Option<String>>(0)?
                .unwrap_or_else(|| "system".into()),
            is_public: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
            kind: r
                .get::<_, Option<String>>(2)?
                .unwrap_or_else(|| "user".into()),
            created_at: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        })
    })
    .optional()
}

pub fn system_prompt(conn: &Connection, id: &str) -> rusqlite::Result<Option<SystemPromptFact>> {
    conn.prepare_cached("SELECT user_id, is_public FROM system_prompts WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(SystemPromptFact {
                owner: r
                    .get::<_, Option<String>>(0)?
                    .unwrap_or_else(|| "system".into()),
                is_public: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
            })
        })
        .optional()
}

pub fn own_uncategorized_images(
    conn: &Connection,
    user_id: &str,
) -> rusqlite::Result<std::collections::HashSet<String>> {
    conn.prepare_cached(
        "SELECT i.image_name FROM images i WHERE i.user_id = ?1 \
         AND NOT EXISTS (SELECT 1 FROM board_images bi WHERE bi.image_name = i.image_name)",
    )?
    .query_map([user_id], |r| r.get(0))?
    .collect()
}

pub fn own_queue_counts(
    conn: &Connection,
    user_id: &str,
    queue_id: &str,
    scope: &CountScope,
) -> rusqlite::Result<std::collections::HashMap<String, i64>> {
    let (column, value) = match scope {
        CountScope::Batch(b) => ("batch_id", b.as_str()),
        CountScope::Destination(d) => ("destination", d.as_str()),
    };
    conn.prepare_cached(&format!(
        "SELECT status, COUNT(*) FROM session_queue \
         WHERE queue_id = ?1 AND {column} = ?2 AND user_id = ?3 GROUP BY status"
    ))?
    .query_map(rusqlite::params![queue_id, value, user_id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?
    .collect()
}

/// The owner of a batch (its first row; a batch has one owner).
pub fn batch_owner(conn: &Connection, batch_id: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT user_id FROM session_queue WHERE batch_id = ?1 LIMIT 1")?
        .query_row([batch_id], |r| r.get::<_, Option<String>>(0))
        .optional()
        .map(Option::flatten)
}

/// The owners of the items in progress in a queue (6.12/6.13 run one at a time).
pub fn in_progress_owners(conn: &Connection, queue_id: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT COALESCE(user_id, 'system') FROM session_queue \
         WHERE queue_id = ?1 AND status = 'in_progress'",
    )?
    .query_map([queue_id], |r| r.get(0))?
    .collect()
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn a_read_only_wal_mount_gets_an_actionable_hint() {
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(8),
            Some("attempt to write a readonly database".into()),
        );
        let hint = open_hint(Path::new("/nonexistent/invokeai.db"), &e);
        assert!(
            hint.contains("-shm") && hint.contains("start InvokeAI"),
            "{hint}"
        );
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(26),
            Some("file is not a database".into()),
        );
        assert!(open_hint(Path::new("x.db"), &e).contains("INVOKE_GUARD_DB"));
    }
}
