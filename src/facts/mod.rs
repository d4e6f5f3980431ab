//! Ownership and identity facts from InvokeAI's database, cached.
//!
//! Invariants:
//! - Facts come from a read-only connection (see `db`); the guard never writes InvokeAI's DB.
//! - **Freshness**: every cached entry carries the generation under which its read *started*.
//!   The watcher bumps the generation whenever another connection commits (`PRAGMA
//!   data_version`), and the proxy bumps it after every mutating request it forwards. An entry
//!   whose generation is older than the current one is never served: a commit racing a cache
//!   fill can only make the entry look stale, never fresh.
//! - **Complete keys**: a key is the fact kind plus the full resource id ([`FactKey`]); nothing
//!   else about the request is part of a fact, so one resource's fact cannot answer for another.
//! - **Fail closed**: any database error, a missing file or a replaced file is a [`FactsError`];
//!   callers turn it into 503, never into an allow.
//! - The JWT secret and the user rows, read on every request, are kept beside the cache (one slot,
//!   and a bounded map of rows by user id, cleared whole when full) under the same rules: tagged
//!   with the generation their read started under and the cache's time to live, never served
//!   while the database is unavailable. A rotated secret, a deactivated, demoted or re-epoched
//!   user are seen at the next generation (`tests/faults.rs`
//!   `jwt_secret_rotated_refuses_old_tokens_at_once`; `tests/identity.rs`
//!   `verified_cache_a_deactivated_user_is_refused_on_the_next_request`,
//!   `verified_cache_a_demoted_admin_loses_admin_routes_with_the_same_token`).

pub mod db;
pub mod ledger;
pub mod lists;
pub mod models;
pub mod schema;
mod watcher;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::future::Cache;
use thiserror::Error;

pub use schema::Schema;

use db::Db;

/// Why a fact could not be read. Always mapped to 503 (fail closed).
#[derive(Debug, Clone, Error)]
pub enum FactsError {
    #[error("InvokeAI database not found at {0}")]
    Missing(PathBuf),
    #[error("InvokeAI database error: {0}")]
    Sqlite(String),
    #[error("InvokeAI database is unavailable: {0}")]
    Unavailable(String),
    #[error("fact source closed")]
    Closed,
    #[error("InvokeAI database has no jwt_secret (not a multiuser-capable InvokeAI)")]
    NoSecret,
    /// The guard's own ledger (not InvokeAI's database).
    #[error("guard ledger: {0}")]
    Ledger(String),
}

/// The one mapping of a facts error: the request is refused with 503 (fail closed), the cause
/// goes to the log only.
impl From<FactsError> for crate::decision::Refusal {
    fn from(e: FactsError) -> Self {
        crate::decision::Refusal::Unavailable(e.to_string())
    }
}

impl From<rusqlite::Error> for FactsError {
    fn from(e: rusqlite::Error) -> Self {
        FactsError::Sqlite(e.to_string())
    }
}

/// Board visibility (6.12 boards are `private` unless `is_public`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Private,
    Shared,
    Public,
    /// A value InvokeAI does not know; main treats the board as not found.
    Unknown,
}

impl Visibility {
    fn parse(v: Option<&str>) -> Self {
        match v {
            Some("private") => Visibility::Private,
            Some("shared") => Visibility::Shared,
            Some("public") => Visibility::Public,
            _ => Visibility::Unknown,
        }
    }
}

/// A board's owner and visibility.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardFact {
    pub board_id: String,
    pub owner: String,
    pub visibility: Visibility,
    pub archived: bool,
}

/// An image's (or video's) owner and the board it sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFact {
    pub owner: String,
    pub board: Option<BoardFact>,
}

/// A workflow's owner (None on 6.12: see the ledger), visibility and category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowFact {
    pub owner: Option<String>,
    pub is_public: bool,
    pub category: String,
    /// As InvokeAI stores it (`YYYY-MM-DD HH:MM:SS.fff`, UTC); decides legacy vs orphan.
    pub created_at: String,
}

/// A queue item's owner and the owner of its workflow-call root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItemFact {
    pub owner: String,
    pub root_owner: String,
    pub queue_id: String,
}

/// A style preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetFact {
    pub owner: String,
    pub is_public: bool,
    pub kind: String,
    /// As InvokeAI stores it (`YYYY-MM-DD HH:MM:SS.fff`, UTC); decides legacy vs orphan.
    pub created_at: String,
}

/// A system prompt (main).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPromptFact {
    pub owner: String,
    pub is_public: bool,
}

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFact {
    pub is_active: bool,
    pub is_admin: bool,
    pub token_epoch: i64,
    pub email: String,
}

/// Which queue items a count covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountScope {
    Batch(String),
    Destination(String),
}

/// Cache key: the fact kind and the complete resource id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FactKey {
    JwtSecret,
    User(String),
    Image(String),
    Video(String),
    Board(String),
    Workflow(String),
    QueueItem(i64),
    Preset(String),
    SystemPrompt(String),
    /// Every model record (one fact: the table is small and read whole).
    Models,
}

#[derive(Debug, Clone)]
enum Fact {
    Secret(Option<Arc<str>>),
    User(Option<UserFact>),
    /// Shared: a hit hands out the cached fact, not a copy of its strings.
    Image(Option<Arc<ImageFact>>),
    Board(Option<BoardFact>),
    Workflow(Option<WorkflowFact>),
    QueueItem(Option<QueueItemFact>),
    Preset(Option<PresetFact>),
    SystemPrompt(Option<SystemPromptFact>),
    Models(Arc<models::Catalog>),
}

/// Run the one query a key names.
fn read(key: &FactKey, c: &rusqlite::Connection, s: &Schema) -> rusqlite::Result<Fact> {
    Ok(match key {
        FactKey::JwtSecret => Fact::Secret(db::jwt_secret(c)?.map(Arc::from)),
        FactKey::User(id) => Fact::User(db::user(c, s, id)?),
        FactKey::Image(name) => Fact::Image(db::image(c, s, name)?.map(Arc::new)),
        FactKey::Video(name) => Fact::Image(db::video(c, s, name)?.map(Arc::new)),
        FactKey::Board(id) => Fact::Board(db::board(c, s, id)?),
        FactKey::Workflow(id) => Fact::Workflow(db::workflow(c, s, id)?),
        FactKey::QueueItem(id) => Fact::QueueItem(db::queue_item(c, s, *id)?),
        FactKey::Preset(id) => Fact::Preset(db::preset(c, id)?),
        FactKey::SystemPrompt(id) => Fact::SystemPrompt(db::system_prompt(c, id)?),
        FactKey::Models => Fact::Models(Arc::new(models::catalog(c)?)),
    })
}

/// Typed extraction of a cached [`Fact`].
trait FromFact: Sized {
    fn from_fact(fact: Fact) -> Option<Self>;
}

macro_rules! from_fact {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(impl FromFact for $ty {
            fn from_fact(fact: Fact) -> Option<Self> {
                match fact {
                    Fact::$variant(v) => Some(v),
                    _ => None,
                }
            }
        })*
    };
}

from_fact! {
    Secret => Option<Arc<str>>,
    User => Option<UserFact>,
    Image => Option<Arc<ImageFact>>,
    Board => Option<BoardFact>,
    Workflow => Option<WorkflowFact>,
    QueueItem => Option<QueueItemFact>,
    Preset => Option<PresetFact>,
    SystemPrompt => Option<SystemPromptFact>,
    Models => Arc<models::Catalog>,
}

#[derive(Debug, Clone)]
struct Tagged {
    generation: u64,
    fact: Fact,
}

/// Tuning for the fact source.
#[derive(Debug, Clone)]
pub struct FactsConfig {
    pub db_path: PathBuf,
    pub pool_size: usize,
    pub busy_timeout: Duration,
    pub cache_entries: u64,
    pub cache_ttl: Duration,
    pub poll_interval: Duration,
}

/// Shared state between the fact source and its watcher.
struct Shared {
    generation: AtomicU64,
    available: AtomicBool,
    unavailable_reason: ArcSwap<String>,
    schema: ArcSwap<Schema>,
    stop: AtomicBool,
    /// The generation, published for long-lived connections to select on (no polling loops).
    changes: tokio::sync::watch::Sender<u64>,
    /// The JWT secret as last read: (generation, valid until (read + ttl), secret).
    secret: arc_swap::ArcSwapOption<(u64, std::time::Instant, Arc<str>)>,
    /// User rows as last read: user id → (generation, valid until (read + ttl), row). SipHash (the default): an
    /// admin's request may name any user id.
    users: std::sync::Mutex<std::collections::HashMap<String, RowSlot>>,
    /// The cache's time to live (the secret slot's too).
    ttl: Duration,
}

/// A user row as last read: (generation, valid until, row). A deadline, not the read time: the
/// check per request is then one comparison with the clock (no subtraction).
type RowSlot = (u64, std::time::Instant, Option<UserFact>);

/// The fact source: cached, fresh, read-only.
#[derive(Clone)]
pub struct Facts {
    db: Arc<Db>,
    cache: Cache<FactKey, Tagged>,
    shared: Arc<Shared>,
    /// Per-user enqueue reservations and the guard's record of recent enqueues.
    load: Arc<models::QueueLoad>,
}

impl Facts {
    /// Open the database, detect its schema and start the change watcher.
    pub fn open(config: &FactsConfig) -> Result<Self, FactsError> {
        let db = Arc::new(Db::open(
            &config.db_path,
            config.pool_size,
            config.busy_timeout,
        )?);
        let schema = {
            let conn = db.connect()?;
            Schema::detect(&conn)?
        };
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(1),
            available: AtomicBool::new(true),
            unavailable_reason: ArcSwap::from_pointee(String::new()),
            schema: ArcSwap::from_pointee(schema),
            stop: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(1),
            secret: arc_swap::ArcSwapOption::const_empty(),
            users: std::sync::Mutex::default(),
            ttl: config.cache_ttl,
        });
        let cache = Cache::builder()
            .max_capacity(config.cache_entries)
            .time_to_live(config.cache_ttl)
            .build();
        let facts = Self {
            db,
            cache,
            shared,
            load: Arc::default(),
        };
        watcher::spawn(facts.clone(), config.poll_interval);
        Ok(facts)
    }

    /// The detected schema.
    pub fn schema(&self) -> Arc<Schema> {
        self.shared.schema.load_full()
    }

    /// The current generation (bumps on every observed change).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Whether the database is currently readable (readiness).
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    /// Forget everything cached (a change was observed or made through the guard).
    pub fn invalidate(&self) {
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.cache.invalidate_all();
        self.shared.changes.send_replace(generation);
    }

    /// A receiver that wakes on every generation change (open sockets re-check their caller).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stop the watcher thread.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    fn mark_unavailable(&self, reason: String) {
        self.shared.unavailable_reason.store(Arc::new(reason));
        if self.shared.available.swap(false, Ordering::AcqRel) {
            tracing::error!(reason = %self.shared.unavailable_reason.load(), "InvokeAI database unavailable; failing closed");
        }
        self.invalidate();
    }

    fn mark_available(&self) {
        if !self.shared.available.swap(true, Ordering::AcqRel) {
            tracing::info!("InvokeAI database readable again");
            self.invalidate();
        }
    }

    /// Read a fact through the cache.
    async fn get(&self, key: FactKey) -> Result<Fact, FactsError> {
        if !self.is_available() {
            return Err(FactsError::Unavailable(
                self.shared.unavailable_reason.load().to_string(),
            ));
        }
        let current = self.generation();
        if let Some(hit) = self.cache.get(&key).await {
            if hit.generation == current {
                crate::metrics::cache_hit();
                return Ok(hit.fact);
            }
            self.cache.invalidate(&key).await;
        }
        crate::metrics::cache_miss();
        let db = self.db.clone();
        let schema = self.schema();
        let query_key = key.clone();
        // The loader coalesces concurrent misses for one key into one query.
        let loaded = self
            .cache
            .try_get_with(key.clone(), async move {
                let fact = db.with(move |conn| read(&query_key, conn, &schema)).await?;
                Ok::<_, FactsError>(Tagged {
                    generation: current,
                    fact,
                })
            })
            .await
            .map_err(|e: Arc<FactsError>| (*e).clone())?;
        if loaded.generation != self.generation() {
            // The database changed while we read: use the value for this request only.
            self.cache.invalidate(&key).await;
        }
        Ok(loaded.fact)
    }

    async fn fetch<T: FromFact>(&self, key: FactKey) -> Result<T, FactsError> {
        let fact = self.get(key).await?;
        Ok(T::from_fact(fact).expect("a key kind always reads its own fact kind"))
    }

    /// The HS256 secret InvokeAI signs its tokens with.
    pub async fn jwt_secret(&self) -> Result<Arc<str>, FactsError> {
        let current = self.generation();
        if self.is_available() {
            if let Some(slot) = &*self.shared.secret.load() {
                let (generation, until, secret) = &**slot;
                if *generation == current && std::time::Instant::now() < *until {
                    return Ok(secret.clone());
                }
            }
        }
        let secret = match self.fetch::<Option<Arc<str>>>(FactKey::JwtSecret).await? {
            Some(s) if !s.is_empty() => s,
            _ => return Err(FactsError::NoSecret),
        };
        // Tagged with the generation read before the fetch: a change racing it only makes the
        // slot look stale.
        let slot = (current, self.valid_until(), secret.clone());
        self.shared.secret.store(Some(Arc::new(slot)));
        Ok(secret)
    }

    /// Until when a value read now may be answered without reading it again (the generation
    /// permitting).
    fn valid_until(&self) -> std::time::Instant {
        let now = std::time::Instant::now();
        now.checked_add(self.shared.ttl).unwrap_or(now)
    }

    /// A user row.
    pub async fn user(&self, user_id: &str) -> Result<Option<UserFact>, FactsError> {
        const MAX_ROWS: usize = 4096;
        let current = self.generation();
        if self.is_available() {
            let users = self.shared.users.lock().expect("user rows lock");
            if let Some((generation, until, row)) = users.get(user_id) {
                if *generation == current && std::time::Instant::now() < *until {
                    return Ok(row.clone());
                }
            }
        }
        let row: Option<UserFact> = self.fetch(FactKey::User(user_id.to_owned())).await?;
        let mut users = self.shared.users.lock().expect("user rows lock");
        if users.len() >= MAX_ROWS {
            users.clear();
        }
        // Tagged with the generation read before the fetch: a change racing it only makes the
        // row look stale.
        users.insert(
            user_id.to_owned(),
            (current, self.valid_until(), row.clone()),
        );
        Ok(row)
    }

    /// An image with its board.
    pub async fn image(&self, name: &str) -> Result<Option<Arc<ImageFact>>, FactsError> {
        self.fetch(FactKey::Image(name.to_owned())).await
    }

    /// The facts of many images, read in one statement and not cached (per-item list filters
    /// decide a whole list from one consistent read).
    pub async fn images(
        &self,
        names: Vec<String>,
    ) -> Result<std::collections::HashMap<String, ImageFact>, FactsError> {
        self.ensure_available()?;
        let schema = self.schema();
        self.db.with(move |c| db::images(c, &schema, &names)).await
    }

    /// A video with its board (absent before main).
    pub async fn video(&self, name: &str) -> Result<Option<Arc<ImageFact>>, FactsError> {
        if !self.schema().has_videos {
            return Ok(None);
        }
        self.fetch(FactKey::Video(name.to_owned())).await
    }

    /// A board.
    pub async fn board(&self, board_id: &str) -> Result<Option<BoardFact>, FactsError> {
        self.fetch(FactKey::Board(board_id.to_owned())).await
    }

    /// A workflow.
    pub async fn workflow(&self, workflow_id: &str) -> Result<Option<WorkflowFact>, FactsError> {
        self.fetch(FactKey::Workflow(workflow_id.to_owned())).await
    }

    /// A queue item.
    pub async fn queue_item(&self, item_id: i64) -> Result<Option<QueueItemFact>, FactsError> {
        self.fetch(FactKey::QueueItem(item_id)).await
    }

    /// A style preset.
    pub async fn preset(&self, id: &str) -> Result<Option<PresetFact>, FactsError> {
        self.fetch(FactKey::Preset(id.to_owned())).await
    }

    /// A system prompt (absent before main).
    pub async fn system_prompt(&self, id: &str) -> Result<Option<SystemPromptFact>, FactsError> {
        if !self.schema().has_system_prompts {
            return Ok(None);
        }
        self.fetch(FactKey::SystemPrompt(id.to_owned())).await
    }

    /// Names of the caller's own uncategorized images (never cached: a list, read for one
    /// response filter).
    pub async fn own_uncategorized_images(
        &self,
        user_id: &str,
    ) -> Result<std::collections::HashSet<String>, FactsError> {
        if !self.is_available() {
            return Err(FactsError::Unavailable(
                self.shared.unavailable_reason.load().to_string(),
            ));
        }
        let user = user_id.to_owned();
        self.db
            .with(move |c| db::own_uncategorized_images(c, &user))
            .await
    }

    /// The caller's own queue items of a batch or destination, counted by status (never cached).
    pub async fn own_queue_counts(
        &self,
        user_id: &str,
        queue_id: &str,
        scope: CountScope,
    ) -> Result<std::collections::HashMap<String, i64>, FactsError> {
        if !self.is_available() {
            return Err(FactsError::Unavailable(
                self.shared.unavailable_reason.load().to_string(),
            ));
        }
        let (user, queue) = (user_id.to_owned(), queue_id.to_owned());
        self.db
            .with(move |c| db::own_queue_counts(c, &user, &queue, &scope))
            .await
    }

    /// The owner of a batch (never cached: rows are committed just before the event).
    pub async fn batch_owner(&self, batch_id: &str) -> Result<Option<String>, FactsError> {
        self.ensure_available()?;
        let batch = batch_id.to_owned();
        self.db.with(move |c| db::batch_owner(c, &batch)).await
    }

    /// Owners of the in-progress items of a queue (never cached: it moves every second).
    pub async fn in_progress_owners(&self, queue_id: &str) -> Result<Vec<String>, FactsError> {
        self.ensure_available()?;
        let queue = queue_id.to_owned();
        self.db
            .with(move |c| db::in_progress_owners(c, &queue))
            .await
    }

    /// Run one of the [`lists`] queries (never cached: a list is read for one response).
    pub async fn list<T, F>(&self, query: F) -> Result<T, FactsError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.ensure_available()?;
        self.db.with(query).await
    }

    fn ensure_available(&self) -> Result<(), FactsError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(FactsError::Unavailable(
                self.shared.unavailable_reason.load().to_string(),
            ))
        }
    }

    /// Every installed model (cached; one read of the `models` table).
    pub async fn models(&self) -> Result<Arc<models::Catalog>, FactsError> {
        self.fetch(FactKey::Models).await
    }

    /// A user's queue and recent enqueues as the database shows them (never cached).
    pub async fn usage(
        &self,
        user_id: &str,
        longest: Duration,
    ) -> Result<models::DbUsage, FactsError> {
        self.ensure_available()?;
        let user = user_id.to_owned();
        self.db
            .with(move |c| models::usage(c, &user, longest))
            .await
    }

    /// Stored queue items by id (never cached).
    pub async fn stored_items(&self, ids: Vec<i64>) -> Result<Vec<models::StoredItem>, FactsError> {
        self.ensure_available()?;
        self.db.with(move |c| models::stored_items(c, &ids)).await
    }

    /// Enqueue reservations and the guard's own enqueue history.
    pub fn queue_load(&self) -> &Arc<models::QueueLoad> {
        &self.load
    }

    /// How many active admins exist (never cached: the last-admin guard needs the truth).
    pub async fn active_admin_count(&self) -> Result<i64, FactsError> {
        if !self.is_available() {
            return Err(FactsError::Unavailable(
                self.shared.unavailable_reason.load().to_string(),
            ));
        }
        self.db.with(db::active_admin_count).await
    }
}
