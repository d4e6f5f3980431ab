//! Live sessions by Engine.IO sid (polling requests find their session here).
//!
//! Invariant: a session is in the registry from its handshake until its actor ends; an unknown
//! sid is answered 400, as python-engineio does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::session::Session;

/// The guard's live Socket.IO sessions.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Registry {
    pub fn insert(&self, session: Arc<Session>) {
        self.lock().insert(session.sid.clone(), session);
        crate::metrics::sockets_open(self.len());
    }

    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.lock().get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
        crate::metrics::sockets_open(self.len());
    }

    /// Disconnect every session (shutdown: upgraded connections are not drained by hyper).
    pub fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        for s in sessions {
            s.shut_down();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().expect("socket registry lock")
    }
}
