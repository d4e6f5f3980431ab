//! Process lifecycle: what a termination signal does, in order (a rolling update must never
//! send a new connection to a closed port).
//!
//! Invariants:
//! - The first termination request turns `/readyz` to 503 at once, while both listeners keep
//!   accepting for `limits.shutdown_delay` (time for Kubernetes endpoints / load balancers to
//!   drop this instance); only then does the drain start (`server::run` stops accepting, closes
//!   Socket.IO sessions, waits at most `limits.shutdown_grace` for in-flight requests).
//! - A second termination request skips the rest of the delay.
//! - Reload requests (SIGHUP) re-read routes.toml and never stop the process.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::state::AppState;

/// What the process was asked to do (from Unix signals in `serve`, from a channel in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT.
    Terminate(&'static str),
    /// SIGHUP.
    Reload,
}

/// Follow lifecycle requests until the drain starts; then `stop` is set to `true`.
pub async fn run(
    state: Arc<AppState>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    stop: watch::Sender<bool>,
) {
    let first = loop {
        match requests.recv().await {
            Some(Request::Reload) => {
                let _ = state.reload_routes();
            }
            Some(Request::Terminate(name)) => break name,
            // Nobody can ask any more: stop as if terminated.
            None => break "closed",
        }
    };
    state.begin_draining();
    let delay = state.limits.shutdown_delay;
    tracing::warn!(
        signal = first,
        delay_ms = delay.as_millis() as u64,
        grace_ms = state.limits.shutdown_grace.as_millis() as u64,
        "shutdown requested: /readyz now answers 503; still serving until the delay ends, then draining (a second signal drains now)"
    );
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            next = requests.recv() => match next {
                Some(Request::Reload) => { let _ = state.reload_routes(); }
                Some(Request::Terminate(_)) => break,
                // The signal source went away: keep the promised delay.
                None => { (&mut deadline).await; break; }
            },
        }
    }
    let _ = stop.send(true);
}
