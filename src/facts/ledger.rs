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
//! - `legacy_before` (the ledger's birth, kept in `meta`) splits unowned entities in two: created
//!   before it, they predate the guard (readable by all, as main's `system` items); created after
//!   it, their owner was lost (an orphan: admins only). Losing the ledger file moves this line
//!   forward, so older guard-created items become legacy again: keep the ledger on a volume.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OptionalExtension};

use crate::facts::FactsError;

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
    /// `YYYY-MM-DD HH:MM:SS.fff` UTC format, so strings compare in time order).
    legacy_before: Arc<str>,
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
        // guard (everything unowned after it lost its owner to a bug, not to history).
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('legacy_before', \
             COALESCE((SELECT replace(replace(MIN(t), 'T', ' '), 'Z', '') FROM ( \
                 SELECT MIN(recorded_at) AS t FROM workflow_owner \
                 UNION ALL SELECT MIN(recorded_at) FROM style_preset_owner \
                 UNION ALL SELECT MIN(recorded_at) FROM bulk_download)), \
               strftime('%Y-%m-%d %H:%M:%f', 'now')))",
            [],
        )?;
        let legacy_before: String = conn.query_row(
            "SELECT value FROM meta WHERE key = 'legacy_before'",
            [],
            |r| r.get(0),
        )?;
        let revoked = conn
            .prepare("SELECT user_id, revoked_before FROM revocation")?
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            revoked: Arc::new(RwLock::new(revoked)),
            legacy_before: legacy_before.into(),
        })
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

    /// An in-memory ledger (tests, `check`).
    pub fn in_memory() -> Result<Self, FactsError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Self::with_connection(conn)
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
        let t = created_at.trim().replace('T', " ");
        let t = t.trim_end_matches('Z');
        t.len() >= 19 && t < &*self.legacy_before
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
