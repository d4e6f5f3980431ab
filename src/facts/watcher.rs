//! The change watcher: one thread, one read-only connection, polling.
//!
//! Invariants:
//! - When another connection commits, `PRAGMA data_version` changes and the next poll bumps the
//!   generation (so no cached fact read before the commit is served after the poll).
//! - When the schema changes, capabilities are re-detected before the generation bumps.
//! - When the file disappears, is replaced (new inode) or cannot be read, the fact source is
//!   marked unavailable (every fact read fails: 503) until a poll reads it again.
//! - The inode the pooled connections read is remembered across failed polls: a file deleted
//!   and then restored (or recreated) is a replacement, so the pool is emptied before the fact
//!   source is available again (no fact is read from the deleted file).

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::{Facts, Schema};

struct Observed {
    inode: u64,
    data_version: i64,
    schema_version: i64,
}

pub(super) fn spawn(facts: Facts, interval: Duration) {
    std::thread::Builder::new()
        .name("facts-watcher".into())
        .spawn(move || run(facts, interval))
        .expect("spawn facts watcher thread");
}

fn run(facts: Facts, interval: Duration) {
    let mut conn: Option<Connection> = None;
    let mut last: Option<Observed> = None;
    // The file the pool reads; survives failed polls (a delete-then-restore is a replacement).
    let mut pool_inode: Option<u64> = None;
    while !facts.shared.stop.load(Ordering::Acquire) {
        match poll(&facts, &mut conn) {
            Ok(now) => {
                if pool_inode
                    .replace(now.inode)
                    .is_some_and(|i| i != now.inode)
                {
                    // The file was replaced: every connection still reads the old inode.
                    tracing::warn!("InvokeAI database file replaced; reconnecting");
                    facts.db.reset();
                    facts.invalidate();
                    conn = None;
                    last = None;
                    continue;
                }
                let schema_moved = last
                    .as_ref()
                    .is_none_or(|l| l.schema_version != now.schema_version);
                if schema_moved {
                    if let Some(c) = conn.as_ref() {
                        match Schema::detect(c) {
                            Ok(schema) if *facts.shared.schema.load_full() != schema => {
                                tracing::info!(schema = schema.label(), "InvokeAI schema changed");
                                facts.shared.schema.store(Arc::new(schema));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                facts.mark_unavailable(format!("schema probe failed: {e}"));
                                conn = None;
                                last = None;
                                std::thread::sleep(interval);
                                continue;
                            }
                        }
                    }
                }
                let changed = last
                    .as_ref()
                    .is_some_and(|l| l.data_version != now.data_version || schema_moved);
                facts.mark_available();
                if changed {
                    facts.invalidate();
                }
                last = Some(now);
            }
            Err(reason) => {
                conn = None;
                last = None;
                facts.mark_unavailable(reason);
            }
        }
        std::thread::sleep(interval);
    }
}

fn poll(facts: &Facts, conn: &mut Option<Connection>) -> Result<Observed, String> {
    let path = facts.db.path();
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Readable by us right now (permissions can change under a running process).
    std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if conn.is_none() {
        *conn = Some(facts.db.connect().map_err(|e| e.to_string())?);
    }
    let c = conn.as_ref().expect("connection just opened");
    let read = || -> rusqlite::Result<(i64, i64)> {
        // A real read, so a lock that would block fact queries is noticed here too.
        c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        let data_version = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let schema_version = c.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        Ok((data_version, schema_version))
    };
    let (data_version, schema_version) = read().map_err(|e| e.to_string())?;
    Ok(Observed {
        inode: meta.ino(),
        data_version,
        schema_version,
    })
}
