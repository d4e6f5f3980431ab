//! The guard's own ledger: facts InvokeAI's database does not keep.
//!
//! Invariants:
//! - The ledger is a separate SQLite file owned by the guard (WAL); InvokeAI's database is never
//!   opened for writing.
//! - Entries are only recorded from upstream responses the guard itself forwarded (a 2xx to an
//!   authenticated request), so an entry names the real creator.
//! - A first recording wins: a later response cannot re-assign an existing owner.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

use crate::facts::FactsError;

/// The ledger file.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
}

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
CREATE TABLE IF NOT EXISTS bulk_download (
    item_name   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

impl Ledger {
    /// Open (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, FactsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                FactsError::Unavailable(format!("ledger dir {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// An in-memory ledger (tests, `check`).
    pub fn in_memory() -> Result<Self, FactsError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
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

    async fn owner(
        &self,
        table: &'static str,
        key: &'static str,
        id: &str,
    ) -> Result<Option<String>, FactsError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.prepare_cached(&format!("SELECT user_id FROM {table} WHERE {key} = ?1"))?
                .query_row([id], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn record(
        &self,
        table: &'static str,
        key: &'static str,
        id: &str,
        user_id: &str,
    ) -> Result<(), FactsError> {
        let (id, user) = (id.to_owned(), user_id.to_owned());
        self.run(move |c| {
            c.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} ({key}, user_id) VALUES (?1, ?2)"
            ))?
            .execute([id, user])
            .map(|_| ())
        })
        .await
    }

    /// Who created a style preset (6.12 stores every preset as `system`), if the guard saw it.
    pub async fn style_preset_owner(&self, preset_id: &str) -> Result<Option<String>, FactsError> {
        self.owner("style_preset_owner", "preset_id", preset_id)
            .await
    }

    /// Record a style preset's creator (first recording wins).
    pub async fn record_style_preset_owner(
        &self,
        preset_id: &str,
        user_id: &str,
    ) -> Result<(), FactsError> {
        self.record("style_preset_owner", "preset_id", preset_id, user_id)
            .await
    }

    /// Who created a workflow (6.12), if the guard saw it.
    pub async fn workflow_owner(&self, workflow_id: &str) -> Result<Option<String>, FactsError> {
        self.owner("workflow_owner", "workflow_id", workflow_id)
            .await
    }

    /// Record a workflow's creator (first recording wins).
    pub async fn record_workflow_owner(
        &self,
        workflow_id: &str,
        user_id: &str,
    ) -> Result<(), FactsError> {
        self.record("workflow_owner", "workflow_id", workflow_id, user_id)
            .await
    }

    /// Who requested a bulk download, if the guard saw it.
    pub async fn bulk_download_owner(&self, item_name: &str) -> Result<Option<String>, FactsError> {
        self.owner("bulk_download", "item_name", item_name).await
    }

    /// Record a bulk download's requester (first recording wins).
    pub async fn record_bulk_download(
        &self,
        item_name: &str,
        user_id: &str,
    ) -> Result<(), FactsError> {
        self.record("bulk_download", "item_name", item_name, user_id)
            .await
    }
}
