//! HTTP correlation for 6.12 events that name no owner (spec §4.4): a recall push and a bulk
//! download are attributed to the caller of the HTTP request that caused them.
//!
//! Invariants:
//! - A recall event is attributed only when every recall request in flight or finished within
//!   [`RECALL_WINDOW`] came from the same user; otherwise it is unattributable (dropped).
//! - Entries older than the window are forgotten (memory is bounded by the request rate, and
//!   by [`MAX_ENTRIES`]).
//! - Reading never consumes: every socket judging the same event sees the same answer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after its response a request may still explain an event.
pub const RECALL_WINDOW: Duration = Duration::from_secs(5);
/// How long a bulk-download event waits for its requester to be recorded.
pub const BULK_HOLD: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 1024;

/// What is being correlated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Recall,
    BulkDownload,
}

struct Entry {
    id: u64,
    kind: Kind,
    user_id: String,
    started: Instant,
    finished: Option<Instant>,
}

/// Recent requests whose events carry no owner.
#[derive(Default)]
pub struct Correlations {
    entries: Mutex<(u64, VecDeque<Entry>)>,
}

/// A request in flight (pass it back to [`Correlations::end`]).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Correlations {
    /// A request of `kind` by `user_id` is about to be forwarded.
    pub fn begin(&self, kind: Kind, user_id: &str) -> Ticket {
        let mut guard = self.entries.lock().expect("correlations lock");
        let (next, entries) = &mut *guard;
        *next += 1;
        prune(entries);
        if entries.len() >= MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(Entry {
            id: *next,
            kind,
            user_id: user_id.to_owned(),
            started: Instant::now(),
            finished: None,
        });
        Ticket(*next)
    }

    /// The request was answered.
    pub fn end(&self, ticket: Ticket) {
        let mut guard = self.entries.lock().expect("correlations lock");
        if let Some(e) = guard.1.iter_mut().find(|e| e.id == ticket.0) {
            e.finished = Some(Instant::now());
        }
    }

    /// The one user whose recent recall request can explain a recall event now.
    pub fn recall_owner(&self) -> Option<String> {
        let guard = self.entries.lock().expect("correlations lock");
        let now = Instant::now();
        let mut owner: Option<&str> = None;
        for e in guard.1.iter().filter(|e| e.kind == Kind::Recall) {
            let live = e.finished.is_none_or(|f| now <= f + RECALL_WINDOW);
            if !live {
                continue;
            }
            match owner {
                Some(o) if o != e.user_id => return None,
                _ => owner = Some(&e.user_id),
            }
        }
        owner.map(str::to_owned)
    }

    /// Whether a bulk-download request is in flight or just answered (its record may be coming).
    pub fn bulk_pending(&self) -> bool {
        let guard = self.entries.lock().expect("correlations lock");
        let now = Instant::now();
        guard.1.iter().any(|e| {
            e.kind == Kind::BulkDownload && e.finished.is_none_or(|f| now <= f + BULK_HOLD)
        })
    }
}

fn prune(entries: &mut VecDeque<Entry>) {
    let now = Instant::now();
    entries.retain(|e| {
        e.finished.is_none_or(|f| now <= f + RECALL_WINDOW)
            && now.duration_since(e.started) < Duration::from_secs(300)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recall_is_attributed_only_when_unambiguous() {
        let c = Correlations::default();
        assert_eq!(c.recall_owner(), None);
        let t = c.begin(Kind::Recall, "alice");
        assert_eq!(c.recall_owner().as_deref(), Some("alice"), "in flight");
        c.end(t);
        assert_eq!(c.recall_owner().as_deref(), Some("alice"), "just answered");
        let t2 = c.begin(Kind::Recall, "bob");
        assert_eq!(c.recall_owner(), None, "two users: ambiguous");
        c.end(t2);
        let _ = c.begin(Kind::BulkDownload, "carol");
        assert!(c.bulk_pending());
    }
}
