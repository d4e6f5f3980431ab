//! Live sessions by Engine.IO sid (polling requests find their session here), and the budget
//! they are admitted under.
//!
//! Invariants:
//! - A session is in the registry from its handshake until its actor ends: the actor owns the
//!   [`Registration`], whose drop removes the entry on every exit path (panics included).
//! - Sessions whose caller is known *count*: identified at the handshake by a verified transport
//!   credential, or by an accepted CONNECT. At most `max_sessions` count at once; a handshake
//!   beyond it is 503, a CONNECT beyond it is refused.
//! - Sessions without a known caller (*pending*) never count toward `max_sessions` (session-cap
//!   starvation): they live in a separate pool of at most `max_sessions`, at most
//!   `pending_per_client` per client address, and beyond either bound the oldest pending session
//!   (of the same address first) is closed to make room. Anonymous handshakes therefore never
//!   make another caller's handshake answer 503; the actor also closes a pending session that
//!   has not CONNECTed within `limits.socket_connect_timeout_ms`.
//! - An unknown sid is `None` (answered 400, as python-engineio does).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::session::Session;

/// Every counted slot is taken: the handshake is answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The guard's live Socket.IO sessions.
pub struct Registry {
    inner: Mutex<Inner>,
    max_sessions: usize,
    pending_per_client: usize,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Slot>,
    counted: usize,
    /// Pending sessions in admission order (sequence number → sid).
    pending: BTreeMap<u64, String>,
    pending_by_client: HashMap<IpAddr, BTreeSet<u64>>,
    next_seq: u64,
}

struct Slot {
    session: Arc<Session>,
    client: IpAddr,
    standing: Standing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Counted,
    Pending(u64),
    /// Closed to make room; on its way out.
    Evicted,
}

/// A session's place in the registry; dropping it removes the session.
pub struct Registration {
    registry: Arc<Registry>,
    sid: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.sid);
    }
}

impl Registry {
    pub fn new(max_sessions: usize, pending_per_client: usize) -> Self {
        Registry {
            inner: Mutex::default(),
            max_sessions: max_sessions.max(1),
            pending_per_client: pending_per_client.max(1),
        }
    }

    /// Admit a new session: counted when its caller is already `identified`, else pending
    /// (closing the oldest pending sessions beyond the pending bounds).
    pub fn admit(
        self: &Arc<Self>,
        session: Arc<Session>,
        client: IpAddr,
        identified: bool,
    ) -> Result<Registration, Full> {
        let mut evicted = Vec::new();
        let sid = session.sid.clone();
        {
            let mut inner = self.lock();
            let standing = if identified {
                if inner.counted >= self.max_sessions {
                    return Err(Full);
                }
                inner.counted += 1;
                Standing::Counted
            } else {
                let of_client = inner
                    .pending_by_client
                    .get(&client)
                    .map_or(0, BTreeSet::len);
                if of_client >= self.pending_per_client {
                    let oldest = inner.pending_by_client[&client].first().copied();
                    evicted.extend(oldest.and_then(|seq| inner.evict(seq)));
                }
                if inner.pending.len() >= self.max_sessions {
                    let oldest = inner.pending.keys().next().copied();
                    evicted.extend(oldest.and_then(|seq| inner.evict(seq)));
                }
                inner.next_seq += 1;
                let seq = inner.next_seq;
                inner.pending.insert(seq, sid.clone());
                inner
                    .pending_by_client
                    .entry(client)
                    .or_default()
                    .insert(seq);
                Standing::Pending(seq)
            };
            inner.sessions.insert(
                sid.clone(),
                Slot {
                    session,
                    client,
                    standing,
                },
            );
            crate::metrics::sockets_open(inner.sessions.len());
        }
        for s in evicted {
            crate::metrics::socket_refused("pending session evicted");
            s.evict();
        }
        Ok(Registration {
            registry: self.clone(),
            sid,
        })
    }

    /// The caller of `sid` is now known (an accepted CONNECT): count it. False when every
    /// counted slot is taken (the CONNECT is refused) or the session was closed to make room.
    pub fn promote(&self, sid: &str) -> bool {
        let mut inner = self.lock();
        let Some(standing) = inner.sessions.get(sid).map(|s| s.standing) else {
            return false;
        };
        match standing {
            Standing::Counted => true,
            Standing::Evicted => false,
            Standing::Pending(_) if inner.counted >= self.max_sessions => false,
            Standing::Pending(seq) => {
                inner.unpend(seq);
                inner.counted += 1;
                if let Some(slot) = inner.sessions.get_mut(sid) {
                    slot.standing = Standing::Counted;
                }
                true
            }
        }
    }

    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.lock().sessions.get(sid).map(|s| s.session.clone())
    }

    fn remove(&self, sid: &str) {
        let mut inner = self.lock();
        if let Some(slot) = inner.sessions.remove(sid) {
            match slot.standing {
                Standing::Counted => inner.counted -= 1,
                Standing::Pending(seq) => inner.unpend(seq),
                Standing::Evicted => {}
            }
        }
        crate::metrics::sockets_open(inner.sessions.len());
    }

    /// Disconnect every session (shutdown: upgraded connections are not drained by hyper).
    pub fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = self
            .lock()
            .sessions
            .values()
            .map(|s| s.session.clone())
            .collect();
        for s in sessions {
            s.shut_down();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions counted toward `max_sessions`, and pending ones.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.counted, inner.pending.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("socket registry lock")
    }
}

impl Inner {
    /// Take a pending session out of the pending pool (its slot stays until its actor ends).
    fn unpend(&mut self, seq: u64) {
        if let Some(sid) = self.pending.remove(&seq) {
            if let Some(slot) = self.sessions.get(&sid) {
                let client = slot.client;
                if let Some(set) = self.pending_by_client.get_mut(&client) {
                    set.remove(&seq);
                    if set.is_empty() {
                        self.pending_by_client.remove(&client);
                    }
                }
            }
        }
    }

    /// Close the pending session `seq` to make room; returns it (closed outside the lock).
    fn evict(&mut self, seq: u64) -> Option<Arc<Session>> {
        let sid = self.pending.get(&seq)?.clone();
        self.unpend(seq);
        let slot = self.sessions.get_mut(&sid)?;
        slot.standing = Standing::Evicted;
        Some(slot.session.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn known_callers_are_capped_and_pending_ones_make_room() {
        let r = Arc::new(Registry::new(2, 2));
        let a = r.admit(Session::detached(Some("a")), ip(1), true).unwrap();
        let _b = r.admit(Session::detached(Some("b")), ip(1), true).unwrap();
        assert!(r.admit(Session::detached(Some("c")), ip(1), true).is_err());
        // Pending: two per address; a third from the same address closes its oldest.
        let p1 = Session::detached(None);
        let _r1 = r.admit(p1.clone(), ip(2), false).unwrap();
        let _r2 = r.admit(Session::detached(None), ip(2), false).unwrap();
        let _r3 = r.admit(Session::detached(None), ip(2), false).unwrap();
        assert!(p1.is_closed(), "the oldest pending session of that address");
        assert_eq!(r.counts(), (2, 2));
        assert!(!r.promote(&p1.sid), "an evicted session is never counted");
        // The global pending pool (the cap, 2) is full: another address closes the oldest.
        let p4 = Session::detached(None);
        let _r4 = r.admit(p4.clone(), ip(3), false).unwrap();
        assert_eq!(r.counts(), (2, 2));
        // Counted slots free up when a registration drops; a pending session can then CONNECT.
        assert!(!r.promote(&p4.sid), "no counted slot free");
        drop(a);
        assert!(r.promote(&p4.sid));
        assert_eq!(r.counts(), (2, 1));
        assert!(r.promote(&p4.sid), "promoting twice is harmless");
        assert_eq!(r.len(), 5, "evicted sessions stay until their actor ends");
    }
}
