//! Process state shared by every connection, and route-table reloads.
//!
//! Invariants:
//! - The route table is swapped whole (`ArcSwap`); a request evaluates against the one snapshot
//!   it loaded at its start.
//! - A reload that fails validation keeps the last good table (and is counted and logged).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Limits, Settings};
use crate::facts::ledger::Ledger;
use crate::facts::Facts;
use crate::rules::{RouteError, RouteTable};
use crate::upstream::Upstream;

/// Everything a request needs.
pub struct AppState {
    pub routes: ArcSwap<RouteTable>,
    pub routes_path: PathBuf,
    /// The groups file `caller.in` reads; the table is compiled against it (reloaded together).
    pub groups_path: Option<PathBuf>,
    pub facts: Facts,
    pub ledger: Ledger,
    pub upstream: Upstream,
    pub limits: Limits,
    /// Peers (addresses or ranges) whose `X-Forwarded-*` headers are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls: bool,
    /// Socket.IO: its live sessions and the narrow environment they run in.
    pub sockets: Arc<crate::socketio::Env>,
    /// Recent requests that explain owner-less socket events (6.12; shared with `sockets`).
    pub correlations: Arc<crate::socketio::correlate::Correlations>,
    /// The global mode (see [`crate::rules::Mode`]).
    pub mode: crate::rules::Mode,
    /// Set once shutdown began: `/readyz` answers 503 while the listeners still serve.
    draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Build the state from validated settings (opens the database and the ledger).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let groups = load_groups(settings.groups.as_deref())?;
        let routes = RouteTable::load_with_groups(&settings.routes, &groups)?;
        let facts = Facts::open(&settings.facts)?;
        let ledger = Ledger::open(&settings.ledger)?;
        // A new ledger beside a database with user content it cannot tell from a lost ledger's
        // stays pending (that content admin-only) until an operator adopts it.
        let db = crate::facts::db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
        ledger.settle(&db, &facts.schema())?;
        drop(db);
        let upstream = Upstream::new(
            &settings.upstream,
            settings.limits.upstream_connect_timeout,
            settings.limits.upstream_idle_timeout,
            settings.limits.upstream_response_timeout,
        );
        let correlations = Arc::new(crate::socketio::correlate::Correlations::default());
        let sockets = Arc::new(crate::socketio::Env::new(
            facts.clone(),
            ledger.clone(),
            upstream.authority().to_string(),
            correlations.clone(),
            &settings.limits,
            crate::socketio::Config {
                connect_timeout: settings.limits.socket_connect_timeout,
                allowed_origins: settings.allowed_origins.clone(),
                trusted_proxies: settings.trusted_proxies.clone(),
                secure_cookies: settings.tls.is_some(),
            },
        ));
        crate::metrics::routes_loaded(
            routes.rules().len(),
            routes.shadow_rules(settings.mode).len(),
            routes.checksum(),
        );
        Ok(Arc::new(Self {
            routes: ArcSwap::from_pointee(routes),
            routes_path: settings.routes.clone(),
            groups_path: settings.groups.clone(),
            facts,
            ledger,
            upstream,
            limits: settings.limits.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            tls: settings.tls.is_some(),
            sockets,
            correlations,
            mode: settings.mode,
            draining: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Shutdown began: readiness turns 503 (requests are still served until the drain).
    pub fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        crate::metrics::draining();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Re-read routes.toml; on error keep the current table. A table that would stop covering
    /// endpoints the running one covers (a half-written or emptied file) is refused unless the
    /// file sets `allow_coverage_loss = true`.
    pub fn reload_routes(&self) -> Result<usize, RouteError> {
        let loaded = load_groups(self.groups_path.as_deref())
            .and_then(|groups| RouteTable::load_with_groups(&self.routes_path, &groups))
            .and_then(|table| {
                let lost = crate::coverage::lost(&self.routes.load(), &table);
                if lost.is_empty() || table.allows_coverage_loss() {
                    return Ok(table);
                }
                let shown: Vec<&str> = lost.iter().take(5).map(String::as_str).collect();
                Err(RouteError {
                    file: self.routes_path.display().to_string(),
                    line: 0,
                    rule: None,
                    message: format!(
                    "the new table would stop covering {} endpoint(s) the running table covers \
                     ({}{}); if intended, set `allow_coverage_loss = true` at the top of the file",
                    lost.len(),
                    shown.join(", "),
                    if lost.len() > shown.len() { ", ..." } else { "" }
                ),
                })
            });
        match loaded {
            Ok(table) => {
                let n = table.rules().len();
                let shadow = table.shadow_rules(self.mode);
                crate::metrics::routes_loaded(n, shadow.len(), table.checksum());
                if !shadow.is_empty() {
                    tracing::warn!(
                        shadow_rules = shadow.len(),
                        rules = %shadow.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(","),
                        "SHADOW MODE: these rules' denials are logged as would_deny and forwarded, not enforced"
                    );
                }
                self.routes.store(Arc::new(table));
                tracing::info!(rules = n, "routes reloaded");
                Ok(n)
            }
            Err(e) => {
                crate::metrics::routes_reload_failed();
                tracing::error!(error = %e, "routes reload rejected; keeping the last good table");
                Err(e)
            }
        }
    }

    /// Poll routes.toml and the groups file for content changes (ConfigMap symlink swaps
    /// included) and reload both together; while the ledger is pending adoption, poll it too.
    pub fn spawn_routes_watcher(self: &Arc<Self>, every: std::time::Duration) {
        let state = Arc::downgrade(self);
        let paths: Vec<PathBuf> = std::iter::once(self.routes_path.clone())
            .chain(self.groups_path.clone())
            .collect();
        let read = move || -> Option<Vec<Vec<u8>>> {
            paths.iter().map(|p| std::fs::read(p).ok()).collect()
        };
        tokio::spawn(async move {
            let mut last = read();
            loop {
                tokio::time::sleep(every).await;
                let Some(state) = state.upgrade() else { return };
                // `invoke-guard ledger adopt-existing` run beside this guard takes effect here.
                if let crate::facts::ledger::Adoption::Pending { .. } = state.ledger.adoption() {
                    if let Err(e) = state.ledger.refresh_adoption().await {
                        tracing::warn!(error = %e, "could not re-read the ledger's adoption state");
                    }
                }
                let now = read();
                if now.is_some() && now != last {
                    let _ = state.reload_routes();
                    last = now;
                }
            }
        });
    }
}

/// The groups file (empty groups when none is configured).
pub fn load_groups(path: Option<&std::path::Path>) -> Result<crate::rules::Groups, RouteError> {
    match path {
        Some(p) => crate::rules::Groups::load(p),
        None => Ok(crate::rules::Groups::default()),
    }
}
