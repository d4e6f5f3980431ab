//! The guard's own ledger: facts InvokeAI's database does not keep.
//!
//! Invariants:
//! - The ledger is a separate SQLite file owned by the guard (WAL); InvokeAI's database is never
//!   opened for writing.
//! - Entries are only recorded from upstream responses the guard itself forwarded (a 2xx to an
//!   authenticated request), so an entry names the real creator.
//! - A first recording wins: a later response cannot re-assign an existing owner.
//! - Revocations (password changes seen on schemas without `token_epoch`) only move forward and
//!   are mirrored in memory, so the per-request check never touches the disk.
//! - A create whose owner must be recorded is written as an *intent* before it is forwarded; when
//!   the intent cannot be written the create is refused (503) and never reaches InvokeAI.
//! - `legacy_before` (kept in `meta`) splits unowned entities in two: created before it, they
//!   predate the guard (readable by all, as main's `system` items); created after it, their owner
//!   was lost (an orphan: admins only).
//! - **A new ledger never adopts on its own what it cannot tell from a lost one** (lost-ledger
//!   class): a ledger file is born without `legacy_before` ([`Adoption::Pending`]); while pending,
//!   no unowned entity is legacy, so every unowned user workflow and style preset is admin-only.
//!   It becomes [`Adoption::Adopted`] with `legacy_before` = its birth only when the database
//!   holds no such entity from before its birth ([`Ledger::settle`], at start), or when an
//!   operator runs `invoke-guard ledger adopt-existing` ([`Ledger::adopt_existing`], logged and
//!   recorded in `meta`). A running guard picks an adoption up within seconds
//!   ([`Ledger::refresh_adoption`]). Ledgers from before this rule (with `legacy_before`, or
//!   with records but no `meta`) are adopted already.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OptionalExtension};

use crate::facts::{FactsError, Schema};
use crate::rules::vocab::Capability;

/// What the ledger records, one table each (the vocabulary's record kinds).
pub use crate::rules::vocab::RecordKind as Entry;

impl Entry {
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Entry::Workflow => ("workflow_owner", "workflow_id"),
            Entry::StylePreset => ("style_preset_owner", "preset_id"),
            Entry::BulkDownload => ("bulk_download", "item_name"),
        }
    }
}

/// The ledger file.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    /// user id → tokens issued before this second (Unix time) are revoked.
    revoked: Arc<RwLock<HashMap<String, u64>>>,
    /// Unowned entities created before this instant predate the guard (InvokeAI's
    /// `YYYY-MM-DD HH:MM:SS.fff` UTC format, so strings compare in time order); `None` while the
    /// ledger has not adopted the database's existing entities.
    legacy_before: Arc<RwLock<Option<Arc<str>>>>,
    /// When this ledger file was created (the line an adoption draws), same format.
    born: Arc<str>,
}

/// Whether the ledger has taken the database's existing unowned entities over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Unowned entities created before `legacy_before` predate the guard (shared, as main's
    /// `system` items; writable by admins).
    Adopted { legacy_before: String },
    /// A new ledger that has not adopted anything: every unowned user workflow and style preset
    /// is admin-only until `invoke-guard ledger adopt-existing`.
    Pending { born: String },
}

/// User workflows and style presets whose owner only the ledger could know, created before the
/// ledger's birth and not recorded in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unowned {
    pub workflows: usize,
    pub presets: usize,
}

impl Unowned {
    pub fn total(self) -> usize {
        self.workflows + self.presets
    }
}

impl std::fmt::Display for Unowned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} workflow(s) and {} style preset(s)",
            self.workflows, self.presets
        )
    }
}

/// InvokeAI's timestamp format, for comparisons with `created_at`.
fn timestamp(t: &str) -> String {
    t.trim().replace('T', " ").trim_end_matches('Z').to_owned()
}

/// Count the entities of InvokeAI's database `db` (schema `schema`) whose owner only the ledger
/// can know (6.12 workflows, pre-6.13 presets), other than the shipped `default` ones, created
/// before `before`, that `ledger` (None: an empty one) records no owner for.
pub fn unowned_before(
    db: &Connection,
    schema: &Schema,
    before: &str,
    ledger: Option<&Connection>,
) -> Result<Unowned, FactsError> {
    let before = timestamp(before);
    let count = |sql: &str, kind: Entry| -> Result<usize, FactsError> {
        let rows: Vec<(String, String)> = db
            .prepare(sql)?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for (id, created_at) in rows {
            // An unreadable time counts: it is never legacy, so adopting cannot change it, but
            // the operator should still hear about it.
            let created = timestamp(&created_at);
            if created.len() >= 19 && created >= before {
                continue;
            }
            let owned = match ledger {
                Some(l) => {
                    let (table, key) = kind.table();
                    l.prepare_cached(&format!("SELECT 1 FROM {table} WHERE {key} = ?1"))?
                        .query_row([&id], |_| Ok(()))
                        .optional()?
                        .is_some()
                }
                None => false,
            };
            if !owned {
                n += 1;
            }
        }
        Ok(n)
    };
    let workflows = if schema.has_workflow_owner {
        0
    } else {
        count(
            "SELECT workflow_id, created_at FROM workflow_library WHERE category != 'default'",
            Entry::Workflow,
        )?
    };
    let presets = if schema.has(Capability::ScopesPresetLists) {
        0
    } else {
        count(
            "SELECT id, created_at FROM style_presets WHERE type != 'default'",
            Entry::StylePreset,
        )?
    };
    Ok(Unowned { workflows, presets })
}

/// A create the guard is about to forward, written before it goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent(i64);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workflow_owner (
    workflow_id TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS style_preset_owner (
    preset_id   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS revocation (
    user_id        TEXT PRIMARY KEY,
    revoked_before INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_create (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS workflow_owner_user ON workflow_owner (user_id);
CREATE INDEX IF NOT EXISTS style_preset_owner_user ON style_preset_owner (user_id);
CREATE TABLE IF NOT EXISTS bulk_download (
    item_name   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

impl Ledger {
    /// Open (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, FactsError> {
        let named = |e: &dyn std::fmt::Display| {
            FactsError::Ledger(format!(
                "{}: {e}; the guard must be able to create and write its ledger there (a \
                 persistent writable volume), or set `ledger` / --ledger / INVOKE_GUARD_LEDGER",
                path.display()
            ))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| named(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| named(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| named(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.execute_batch(SCHEMA).map_err(|e| named(&e))?;
        Self::with_connection(conn)
    }

    /// What `check` verifies without creating anything: the ledger file (if it exists) can be
    /// written, else its directory (or the nearest existing ancestor `open` would create it
    /// under) is writable.
    pub fn probe_writable(path: &Path) -> Result<(), FactsError> {
        let named = |what: String| {
            FactsError::Ledger(format!(
                "{}: {what}; give the guard a writable directory for its ledger (a persistent \
                 volume), or set `ledger` / --ledger / INVOKE_GUARD_LEDGER",
                path.display()
            ))
        };
        if path.exists() {
            let conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
                    .map_err(|e| named(e.to_string()))?;
            conn.busy_timeout(std::time::Duration::from_secs(2))?;
            // A write lock proves the file (and its -wal/-shm directory) is writable.
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                .map_err(|e| named(format!("cannot be written: {e}")))?;
            return Ok(());
        }
        let mut dir = path.parent().unwrap_or(Path::new("."));
        if dir.as_os_str().is_empty() {
            dir = Path::new(".");
        }
        while !dir.exists() {
            dir = dir.parent().unwrap_or(Path::new("/"));
        }
        let probe = dir.join(format!(".invoke-guard-check.{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| named(format!("directory {} is not writable: {e}", dir.display())))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    fn with_connection(conn: Connection) -> Result<Self, FactsError> {
        // A ledger from before `meta` existed: its first record is the best known start of the
        // guard (everything unowned after it lost its owner to a bug, not to history). A ledger
        // without records is new: it is born, and adopts nothing by itself.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) \
             SELECT 'legacy_before', replace(replace(MIN(t), 'T', ' '), 'Z', '') FROM ( \
                 SELECT MIN(recorded_at) AS t FROM workflow_owner \
                 UNION ALL SELECT MIN(recorded_at) FROM style_preset_owner \
                 UNION ALL SELECT MIN(recorded_at) FROM bulk_download) \
             WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key IN ('legacy_before', 'born')) \
             HAVING MIN(t) IS NOT NULL",
            [],
        )?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('born', \
             COALESCE((SELECT value FROM meta WHERE key = 'legacy_before'), \
                      strftime('%Y-%m-%d %H:%M:%f', 'now')))",
            [],
        )?;
        let meta = |key: &str| -> rusqlite::Result<Option<String>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        let legacy_before = meta("legacy_before")?;
        let born = meta("born")?.unwrap_or_default();
        let revoked = conn
            .prepare("SELECT user_id, revoked_before FROM revocation")?
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            revoked: Arc::new(RwLock::new(revoked)),
            legacy_before: Arc::new(RwLock::new(legacy_before.map(Into::into))),
            born: born.into(),
        })
    }

    /// The ledger's adoption state.
    pub fn adoption(&self) -> Adoption {
        match &*self.legacy_before.read().expect("legacy line lock") {
            Some(line) => Adoption::Adopted {
                legacy_before: line.to_string(),
            },
            None => Adoption::Pending {
                born: self.born.to_string(),
            },
        }
    }

    /// The database's unowned entities this ledger would (or does) treat as legacy.
    pub fn unowned(&self, db: &Connection, schema: &Schema) -> Result<Unowned, FactsError> {
        let conn = self.conn.lock().expect("ledger lock");
        unowned_before(db, schema, &self.born, Some(&conn))
    }

    /// At start: a pending ledger beside a database with nothing to adopt adopts at once (it
    /// cannot be hiding a lost ledger's items); otherwise it stays pending and says so.
    pub fn settle(&self, db: &Connection, schema: &Schema) -> Result<Adoption, FactsError> {
        if let Adoption::Adopted { .. } = self.adoption() {
            return Ok(self.adoption());
        }
        let unowned = self.unowned(db, schema)?;
        if unowned.total() == 0 {
            self.write_adoption("start: nothing to adopt", unowned)?;
            tracing::info!(
                born = %self.born,
                "new ledger adopted at start: the database holds no user workflow or style preset without a recorded owner"
            );
        } else {
            tracing::warn!(
                born = %self.born,
                workflows = unowned.workflows,
                presets = unowned.presets,
                "LEDGER NOT ADOPTED: {unowned} in the database have no owner in this new ledger (a first deployment, or a lost ledger): they are served to admins only until an operator runs `invoke-guard ledger adopt-existing` (restore the old ledger instead if it was lost)"
            );
        }
        Ok(self.adoption())
    }

    /// The operator's decision (`invoke-guard ledger adopt-existing`): unowned entities created
    /// before this ledger's birth become legacy (shared). Recorded in `meta`; a no-op when
    /// adopted already.
    pub fn adopt_existing(&self, unowned: Unowned) -> Result<Adoption, FactsError> {
        if let Adoption::Adopted { .. } = self.adoption() {
            return Ok(self.adoption());
        }
        self.write_adoption("invoke-guard ledger adopt-existing", unowned)?;
        Ok(self.adoption())
    }

    fn write_adoption(&self, by: &str, unowned: Unowned) -> Result<(), FactsError> {
        let conn = self.conn.lock().expect("ledger lock");
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('legacy_before', ?1)",
            [&*self.born],
        )?;
        for (key, value) in [
            ("adopted_by", by.to_owned()),
            ("adopted_unowned", unowned.to_string()),
        ] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                [key, value.as_str()],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('adopted_at', strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            [],
        )?;
        let line: String = tx.query_row(
            "SELECT value FROM meta WHERE key = 'legacy_before'",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        *self.legacy_before.write().expect("legacy line lock") = Some(line.into());
        Ok(())
    }

    /// Pick up an adoption another process (the `adopt-existing` command) wrote; true when the
    /// ledger just became adopted.
    pub async fn refresh_adoption(&self) -> Result<bool, FactsError> {
        if let Adoption::Adopted { .. } = self.adoption() {
            return Ok(false);
        }
        let line: Option<String> = self
            .run(|c| {
                c.query_row(
                    "SELECT value FROM meta WHERE key = 'legacy_before'",
                    [],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        let Some(line) = line else {
            return Ok(false);
        };
        tracing::warn!(legacy_before = %line, "ledger adopted by `invoke-guard ledger adopt-existing`: unowned workflows and style presets created before this line are now shared");
        *self.legacy_before.write().expect("legacy line lock") = Some(line.into());
        Ok(true)
    }

    /// The adoption state of the ledger file at `path` without creating or changing anything
    /// (`check`): `None` when the file does not exist yet (it would be born pending).
    pub fn peek(path: &Path) -> Result<Option<Adoption>, FactsError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let has = |table: &str| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        };
        let meta = |key: &str| -> rusqlite::Result<Option<String>> {
            if !has("meta")? {
                return Ok(None);
            }
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        if let Some(line) = meta("legacy_before")? {
            return Ok(Some(Adoption::Adopted {
                legacy_before: line,
            }));
        }
        if let Some(born) = meta("born")? {
            return Ok(Some(Adoption::Pending { born }));
        }
        // A ledger from before `meta`: `open` adopts it at its first record (see `with_connection`).
        let mut first: Option<String> = None;
        for table in ["workflow_owner", "style_preset_owner", "bulk_download"] {
            if has(table)? {
                let t: Option<String> =
                    conn.query_row(&format!("SELECT MIN(recorded_at) FROM {table}"), [], |r| {
                        r.get(0)
                    })?;
                first = match (first, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(first.map(|t| Adoption::Adopted {
            legacy_before: timestamp(&t),
        }))
    }

    /// Tokens of `user_id` issued before this Unix second are revoked (None: nothing revoked).
    pub fn revoked_before(&self, user_id: &str) -> Option<u64> {
        self.revoked
            .read()
            .expect("revocation lock")
            .get(user_id)
            .copied()
    }

    /// Revoke every token of `user_id` issued before `at` (Unix seconds); never moves backwards.
    pub async fn revoke(&self, user_id: &str, at: u64) -> Result<(), FactsError> {
        let user = user_id.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT INTO revocation (user_id, revoked_before) VALUES (?1, ?2) \
                 ON CONFLICT(user_id) DO UPDATE SET revoked_before = MAX(revoked_before, excluded.revoked_before)",
                rusqlite::params![user, at as i64],
            )
            .map(|_| ())
        })
        .await?;
        let mut map = self.revoked.write().expect("revocation lock");
        let entry = map.entry(user_id.to_owned()).or_insert(at);
        *entry = (*entry).max(at);
        Ok(())
    }

    /// An in-memory ledger (`explain`/`test` without a ledger file, unit tests): a guard whose
    /// operator adopted the database when it started (unowned entities from before are legacy).
    pub fn in_memory() -> Result<Self, FactsError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        let ledger = Self::with_connection(conn)?;
        ledger.write_adoption("in-memory ledger", Unowned::default())?;
        Ok(ledger)
    }

    async fn run<T, F>(&self, f: F) -> Result<T, FactsError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            f(&conn.lock().expect("ledger lock")).map_err(FactsError::from)
        })
        .await
        .map_err(|_| FactsError::Closed)?
    }

    /// Who created (requested) an entity, if the guard saw it.
    pub async fn owner(&self, kind: Entry, id: &str) -> Result<Option<String>, FactsError> {
        let id = id.to_owned();
        self.run(move |c| {
            let (table, key) = kind.table();
            c.prepare_cached(&format!("SELECT user_id FROM {table} WHERE {key} = ?1"))?
                .query_row([id], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Every entity of a kind the guard saw `user_id` create.
    pub async fn owned(&self, kind: Entry, user_id: &str) -> Result<Vec<String>, FactsError> {
        let user = user_id.to_owned();
        self.run(move |c| {
            let (table, key) = kind.table();
            c.prepare_cached(&format!("SELECT {key} FROM {table} WHERE user_id = ?1"))?
                .query_map([user], |r| r.get(0))?
                .collect()
        })
        .await
    }

    /// Whether an entity without a recorded owner, created at `created_at` (InvokeAI's format),
    /// predates the guard. An unreadable time is never legacy.
    pub fn is_legacy(&self, created_at: &str) -> bool {
        let guard = self.legacy_before.read().expect("legacy line lock");
        // Pending adoption: nothing is legacy (a lost ledger must not make items shared).
        let Some(line) = guard.as_deref() else {
            return false;
        };
        let t = timestamp(created_at);
        t.len() >= 19 && t.as_str() < line
    }

    /// Write the intent to create an entity of `kind` for `user_id` (before forwarding it).
    pub async fn begin(&self, kind: Entry, user_id: &str) -> Result<Intent, FactsError> {
        let user = user_id.to_owned();
        self.run(move |c| {
            c.prepare_cached("INSERT INTO pending_create (kind, user_id) VALUES (?1, ?2)")?
                .execute([kind.table().0, user.as_str()])?;
            Ok(Intent(c.last_insert_rowid()))
        })
        .await
    }

    /// The create went through: record its owner and drop the intent, in one transaction.
    pub async fn complete(
        &self,
        intent: Intent,
        kind: Entry,
        id: &str,
        user_id: &str,
    ) -> Result<(), FactsError> {
        let (id, user) = (id.to_owned(), user_id.to_owned());
        self.run(move |c| {
            let (table, key) = kind.table();
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} ({key}, user_id) VALUES (?1, ?2)"
            ))?
            .execute([id, user])?;
            tx.prepare_cached("DELETE FROM pending_create WHERE id = ?1")?
                .execute([intent.0])?;
            tx.commit()
        })
        .await
    }

    /// The create did not happen (upstream refused it): drop the intent.
    pub async fn abandon(&self, intent: Intent) -> Result<(), FactsError> {
        self.run(move |c| {
            c.prepare_cached("DELETE FROM pending_create WHERE id = ?1")?
                .execute([intent.0])
                .map(|_| ())
        })
        .await
    }

    /// Record an entity's creator (first recording wins).
    pub async fn record(&self, kind: Entry, id: &str, user_id: &str) -> Result<(), FactsError> {
        let (id, user) = (id.to_owned(), user_id.to_owned());
        self.run(move |c| {
            let (table, key) = kind.table();
            c.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} ({key}, user_id) VALUES (?1, ?2)"
            ))?
            .execute([id, user])
            .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_ledger(setup: &str) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(setup).unwrap();
        drop(conn);
        let ledger = Ledger::open(&path).unwrap();
        (dir, ledger)
    }

    #[test]
    fn a_new_ledger_is_pending_and_treats_nothing_as_legacy() {
        let (_dir, l) = file_ledger("");
        assert!(matches!(l.adoption(), Adoption::Pending { .. }));
        assert!(!l.is_legacy("2000-01-01 00:00:00.000"));
        l.adopt_existing(Unowned::default()).unwrap();
        assert!(l.is_legacy("2000-01-01 00:00:00.000"));
        assert!(!l.is_legacy("2999-01-01 00:00:00.000"));
    }

    #[test]
    fn peek_reports_the_state_open_would_find() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        assert_eq!(Ledger::peek(&path).unwrap(), None, "no file yet");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO bulk_download (item_name, user_id, recorded_at) \
             VALUES ('z', 'u', '2026-02-03T04:05:06.789Z');",
        )
        .unwrap();
        drop(conn);
        let peeked = Ledger::peek(&path).unwrap();
        assert_eq!(peeked, Some(Ledger::open(&path).unwrap().adoption()));
        let fresh = dir.path().join("fresh.db");
        let born = Ledger::open(&fresh).unwrap().adoption();
        assert!(matches!(born, Adoption::Pending { .. }));
        assert_eq!(Ledger::peek(&fresh).unwrap(), Some(born));
    }

    #[test]
    fn ledgers_from_before_adoption_existed_stay_adopted() {
        // Written by the previous version: `legacy_before` at its birth.
        let (_d1, l) = file_ledger(
            "INSERT INTO meta (key, value) VALUES ('legacy_before', '2026-01-01 00:00:00.000');",
        );
        assert_eq!(
            l.adoption(),
            Adoption::Adopted {
                legacy_before: "2026-01-01 00:00:00.000".into()
            }
        );
        // From before `meta`: its first record is the line.
        let (_d2, l) = file_ledger(
            "INSERT INTO workflow_owner (workflow_id, user_id, recorded_at) \
             VALUES ('w', 'u', '2026-02-03T04:05:06.789Z');",
        );
        assert_eq!(
            l.adoption(),
            Adoption::Adopted {
                legacy_before: "2026-02-03 04:05:06.789".into()
            }
        );
    }
}
