//! Model records and generation usage: the `models` table (which keys exist, with the name, base
//! and type a model is judged by), each user's queue from `session_queue`, and the per-user
//! reservation that keeps a user's enqueues from overtaking each other.
//!
//! Invariants:
//! - Read-only SQL naming only `id` and `config` of `models` (a model's attributes are read from
//!   its stored config, as InvokeAI itself reads them) and `user_id`, `status`, `created_at`,
//!   `session`, `workflow` of `session_queue` (present from 6.12 on).
//! - The catalogue is one cached fact (invalidated like every other fact: by the watcher and by
//!   mutations the guard forwards); usage counts are never cached.
//! - A user's quota check and the forwarding of her batch happen under one [`Reservation`] (a
//!   per-user lock held until InvokeAI answered and facts were invalidated): the next check of
//!   the same user reads a queue that already holds the previous batch, so two concurrent
//!   enqueues cannot both fit under a limit only one fits under. Other users are not held up.
//! - What the guard saw enqueued is also remembered in memory ([`QueueLoad::record`]): a window
//!   count is the larger of the database's and the guard's own, so pruning one's finished items
//!   from the database does not reset a rolling window (until the guard restarts).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

/// One model record as the guard judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub key: String,
    pub name: String,
    pub base: String,
    pub kind: String,
    /// Where it was installed from (matches starter-model entries).
    pub source: String,
}

impl ModelRecord {
    /// `'SD 1.5' (sd-1 main)`.
    pub fn label(&self) -> String {
        format!("'{}' ({} {})", self.name, self.base, self.kind)
    }
}

/// Every installed model, by key.
#[derive(Debug, Default)]
pub struct Catalog {
    by_key: HashMap<String, Arc<ModelRecord>>,
}

impl Catalog {
    pub fn from_records(records: impl IntoIterator<Item = ModelRecord>) -> Self {
        Self {
            by_key: records
                .into_iter()
                .map(|r| (r.key.clone(), Arc::new(r)))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&ModelRecord> {
        self.by_key.get(key).map(Arc::as_ref)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ModelRecord> {
        self.by_key.values().map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Read the catalogue.
pub fn catalog(conn: &Connection) -> rusqlite::Result<Catalog> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, json_extract(config, '$.name'), json_extract(config, '$.base'), \
         json_extract(config, '$.type'), json_extract(config, '$.source') FROM models",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ModelRecord {
            key: r.get(0)?,
            name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            base: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            kind: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            source: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
        })
    })?;
    Ok(Catalog::from_records(rows.collect::<Result<Vec<_>, _>>()?))
}

/// The most rows a window count reads (a day's enqueues beyond this still count as this many).
const MAX_WINDOW_ROWS: i64 = 200_000;

/// A user's queue as the database shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbUsage {
    /// Items pending, in progress or waiting (6.14 workflow calls).
    pub queued: u64,
    /// Ages in seconds of the items created within the longest window, oldest first.
    pub ages: Vec<f64>,
}

/// Read a user's queue: what is queued now, and the ages of what was created within `longest`.
pub fn usage(conn: &Connection, user_id: &str, longest: Duration) -> rusqlite::Result<DbUsage> {
    let queued: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM session_queue WHERE user_id = ?1 \
             AND status IN ('pending', 'in_progress', 'waiting')",
        )?
        .query_row([user_id], |r| r.get(0))?;
    let modifier = format!("-{} seconds", longest.as_secs().max(1));
    let ages = conn
        .prepare_cached(
            "SELECT (julianday('now') - julianday(created_at)) * 86400.0 FROM session_queue \
             WHERE user_id = ?1 AND created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', ?2) \
             ORDER BY created_at ASC LIMIT ?3",
        )?
        .query_map(rusqlite::params![user_id, modifier, MAX_WINDOW_ROWS], |r| {
            r.get::<_, f64>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DbUsage {
        queued: queued.max(0) as u64,
        ages,
    })
}

/// A stored queue item as a retry would re-run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub item_id: i64,
    pub owner: String,
    pub status: String,
    /// The session JSON (its graph is what a retry runs) and the workflow JSON.
    pub session: String,
    pub workflow: Option<String>,
}

/// Queue items by id (missing ids are left out).
pub fn stored_items(conn: &Connection, ids: &[i64]) -> rusqlite::Result<Vec<StoredItem>> {
    let mut stmt = conn.prepare_cached(
        "SELECT item_id, COALESCE(user_id, 'system'), status, session, workflow \
         FROM session_queue WHERE item_id = ?1",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row([id], |r| {
                Ok(StoredItem {
                    item_id: r.get(0)?,
                    owner: r.get(1)?,
                    status: r.get(2)?,
                    session: r.get(3)?,
                    workflow: r.get(4)?,
                })
            })
            .optional()?;
        out.extend(row);
    }
    Ok(out)
}

/// Per-user reservations and the guard's own record of recent enqueues.
#[derive(Debug, Default)]
pub struct QueueLoad {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    history: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

/// A user's reservation: held from the quota check until the upstream answered (then
/// [`Reservation::settle`]); dropping it unsettled releases it without recording anything.
#[derive(Debug)]
pub struct Reservation {
    load: Arc<QueueLoad>,
    user: String,
    items: u64,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl Reservation {
    /// The upstream answered: record the items when it accepted them, then release.
    pub fn settle(self, accepted: bool) {
        if accepted {
            self.load.record(&self.user, self.items);
        }
    }

    /// Make this reservation cover `items` (set once the check passed).
    pub fn set_items(&mut self, items: u64) {
        self.items = items;
    }
}

impl QueueLoad {
    /// Wait for the user's reservation (enqueues of one user are checked and forwarded one at a
    /// time; other users never wait).
    pub async fn reserve(self: &Arc<Self>, user: &str) -> Reservation {
        let lock = {
            let mut locks = self.locks.lock().expect("queue load lock");
            // Forget locks nobody holds (bounded by the users enqueueing concurrently).
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(user.to_owned()).or_default().clone()
        };
        Reservation {
            load: self.clone(),
            user: user.to_owned(),
            items: 0,
            _lock: lock.lock_owned().await,
        }
    }

    /// Note `items` accepted for `user` now.
    pub fn record(&self, user: &str, items: u64) {
        if items == 0 {
            return;
        }
        let mut h = self.history.lock().expect("queue history lock");
        h.entry(user.to_owned())
            .or_default()
            .push_back((Instant::now(), items));
    }

    /// Ages (seconds) and sizes of what the guard saw accepted for `user` within `longest`,
    /// oldest first (older entries are forgotten).
    pub fn recent(&self, user: &str, longest: Duration) -> Vec<(f64, u64)> {
        let mut h = self.history.lock().expect("queue history lock");
        let Some(entries) = h.get_mut(user) else {
            return Vec::new();
        };
        while entries.front().is_some_and(|(t, _)| t.elapsed() > longest) {
            entries.pop_front();
        }
        let out = entries
            .iter()
            .map(|(t, n)| (t.elapsed().as_secs_f64(), *n))
            .collect();
        if entries.is_empty() {
            h.remove(user);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_reservation_per_user_at_a_time() {
        let load = Arc::new(QueueLoad::default());
        let first = load.reserve("alice").await;
        // Another user is not held up.
        let bob = tokio::time::timeout(Duration::from_secs(5), load.reserve("bob")).await;
        assert!(bob.is_ok());
        // Alice's second waits until the first settles.
        let waiting = {
            let load = load.clone();
            tokio::spawn(async move { load.reserve("alice").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        first.settle(true);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .unwrap();
        drop(second);
        assert!(
            load.recent("alice", Duration::from_secs(60)).is_empty(),
            "0 items are not recorded"
        );
        let mut r = load.reserve("alice").await;
        r.set_items(4);
        r.settle(true);
        let recent = load.recent("alice", Duration::from_secs(60));
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].1, 4);
        let mut r = load.reserve("alice").await;
        r.set_items(9);
        drop(r);
        assert_eq!(
            load.recent("alice", Duration::from_secs(60)).len(),
            1,
            "unsettled: nothing recorded"
        );
    }
}
