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
            std::fs::create_dir_all(dir).map_err(|e| FactsError::Unavailable(format!("ledger dir {}: {e}", dir.display())))?;
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
        tokio::task::spawn_blocking(move || f(&conn.lock().expect("ledger lock")).map_err(FactsError::from))
            .await
            .map_err(|_| FactsError::Closed)?
    }

    /// Who created a workflow (6.12), if the guard saw it.
    pub async fn workflow_owner(&self, workflow_id: &str) -> Result<Option<String>, FactsError> {
        let id = workflow_id.to_owned();
        self.run(move |c| {
            c.prepare_cached("SELECT user_id FROM workflow_owner WHERE workflow_id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Record a workflow's creator (first recording wins).
    pub async fn record_workflow_owner(&self, workflow_id: &str, user_id: &str) -> Result<(), FactsError> {
        let (w, u) = (workflow_id.to_owned(), user_id.to_owned());
        self.run(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO workflow_owner (workflow_id, user_id) VALUES (?1, ?2)",
                [w, u],
            )
            .map(|_| ())
        })
        .await
    }

    /// Who requested a bulk download, if the guard saw it.
    pub async fn bulk_download_owner(&self, item_name: &str) -> Result<Option<String>, FactsError> {
        let id = item_name.to_owned();
        self.run(move |c| {
            c.prepare_cached("SELECT user_id FROM bulk_download WHERE item_name = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Record a bulk download's requester (first recording wins).
    pub async fn record_bulk_download(&self, item_name: &str, user_id: &str) -> Result<(), FactsError> {
        let (i, u) = (item_name.to_owned(), user_id.to_owned());
        self.run(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO bulk_download (item_name, user_id) VALUES (?1, ?2)",
                [i, u],
            )
            .map(|_| ())
        })
        .await
    }
}
