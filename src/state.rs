//! Process state shared by every connection, and route-table reloads.
//!
//! Invariants:
//! - The route table is swapped whole (`ArcSwap`); a request evaluates against the one snapshot
//!   it loaded at its start.
//! - A reload that fails validation keeps the last good table (and is counted and logged).
//! - Every table that loads is persisted beside the ledger (`routes.last-good.json`: the exact
//!   routes and groups texts it was compiled from, written atomically). A start whose configured
//!   files do not load serves that table instead of exiting, provided it was saved for the same
//!   file paths; it is re-validated like any file, and the fallback is loud until the files load
//!   again: `/readyz` says so (still 200: with `strategy: Recreate` the old pod is gone, so a
//!   failing readiness would stop nothing and be an outage), the `routes_fallback` gauge is 1,
//!   and an error line is logged on every poll of the files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Limits, Settings};
use crate::facts::ledger::Ledger;
use crate::facts::Facts;
use crate::rules::{RouteError, RouteTable};
use crate::upstream::Upstream;

/// Everything a request needs.
pub struct AppState {
    /// Shared with the Socket.IO sessions (the groups file's `[models]` it carries).
    pub routes: Arc<ArcSwap<RouteTable>>,
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
    /// The candidate table compared with the enforced one (`candidate_routes`), if configured.
    pub candidate: arc_swap::ArcSwapOption<RouteTable>,
    pub candidate_path: Option<PathBuf>,
    /// Set once shutdown began: `/readyz` answers 503 while the listeners still serve.
    draining: std::sync::atomic::AtomicBool,
    /// Where every table that loads is persisted (beside the ledger).
    last_good: PathBuf,
    /// Set while the persisted table is served because the configured files did not load.
    fallback: Mutex<Option<Fallback>>,
}

/// Why the persisted last good table is served.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// The load error of the configured files.
    pub error: String,
    /// When the served table was persisted (seconds since the epoch).
    pub saved_at: u64,
}

/// The texts a table is compiled from, and where they were read (what is persisted).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Sources {
    routes_path: PathBuf,
    routes: String,
    groups_path: Option<PathBuf>,
    groups: Option<String>,
    /// Seconds since the epoch (set when persisted).
    #[serde(default)]
    saved_at: u64,
}

impl Sources {
    fn read(routes_path: &Path, groups_path: Option<&Path>) -> Result<Self, RouteError> {
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p).map_err(|e| RouteError {
                file: p.display().to_string(),
                line: 0,
                rule: None,
                message: format!("cannot read the {what}: {e}"),
            })
        };
        Ok(Sources {
            routes: read(routes_path, "route table")?,
            groups: groups_path.map(|g| read(g, "groups file")).transpose()?,
            routes_path: routes_path.to_owned(),
            groups_path: groups_path.map(Path::to_owned),
            saved_at: 0,
        })
    }

    fn compile(&self) -> Result<RouteTable, RouteError> {
        let groups = match (&self.groups_path, &self.groups) {
            (Some(p), Some(text)) => crate::rules::Groups::parse(&p.display().to_string(), text)?,
            _ => crate::rules::Groups::default(),
        };
        RouteTable::parse_with_groups(
            &self.routes_path.display().to_string(),
            &self.routes,
            &groups,
        )
    }
}

/// Where the last good table is persisted: beside the ledger.
pub fn last_good_path(ledger: &Path) -> PathBuf {
    ledger.with_file_name("routes.last-good.json")
}

/// Persist `sources` atomically (a temporary file renamed over the old one).
fn persist(path: &Path, sources: &mut Sources) -> std::io::Result<()> {
    use std::io::Write;
    sources.saved_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The ledger's directory: on a first start it may not exist yet.
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(sources).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The persisted table, if one was saved for these file paths and still compiles.
fn restore(
    path: &Path,
    routes_path: &Path,
    groups_path: Option<&Path>,
) -> Result<(RouteTable, u64), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let saved: Sources =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    // Only the table saved for this very configuration stands in for it.
    if saved.routes_path != routes_path || saved.groups_path.as_deref() != groups_path {
        return Err(format!(
            "{} was saved for routes {} and groups {}, not these",
            path.display(),
            saved.routes_path.display(),
            saved
                .groups_path
                .as_deref()
                .map_or("none".into(), |g| g.display().to_string())
        ));
    }
    let table = saved
        .compile()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((table, saved.saved_at))
}

impl AppState {
    /// Build the state from validated settings (opens the database and the ledger).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let last_good = last_good_path(&settings.ledger);
        let groups_path = settings.groups.as_deref();
        let loaded = Sources::read(&settings.routes, groups_path)
            .and_then(|sources| sources.compile().map(|table| (table, sources)));
        let (routes, fallback) = match loaded {
            Ok((table, mut sources)) => {
                if let Err(e) = persist(&last_good, &mut sources) {
                    tracing::warn!(path = %last_good.display(), error = %e, "could not persist the route table (a restart with a broken routes.toml would have nothing to serve)");
                }
                (table, None)
            }
            Err(e) => match restore(&last_good, &settings.routes, groups_path) {
                Ok((table, saved_at)) => {
                    tracing::error!(
                        error = %e,
                        last_good = %last_good.display(),
                        saved_at,
                        "routes.toml does not load: SERVING THE LAST GOOD ROUTE TABLE persisted at the last successful load; fix the file"
                    );
                    (
                        table,
                        Some(Fallback {
                            error: e.to_string(),
                            saved_at,
                        }),
                    )
                }
                Err(why) => {
                    return Err(anyhow::anyhow!(
                        "{e} (and no last good route table to serve instead: {why})"
                    ))
                }
            },
        };
        let candidate = settings
            .candidate_routes
            .as_deref()
            .map(|p| RouteTable::load_with_groups(p, &load_groups(groups_path)?))
            .transpose()?;
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
        crate::metrics::routes_loaded(
            routes.rules().len(),
            routes.shadow_rules(settings.mode).len(),
            routes.checksum(),
            false,
        );
        let routes = Arc::new(ArcSwap::from_pointee(routes));
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
            routes.clone(),
        ));
        if fallback.is_some() {
            crate::metrics::routes_fallback();
        }
        Ok(Arc::new(Self {
            routes,
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
            candidate: arc_swap::ArcSwapOption::from(candidate.map(Arc::new)),
            candidate_path: settings.candidate_routes.clone(),
            draining: std::sync::atomic::AtomicBool::new(false),
            last_good,
            fallback: Mutex::new(fallback),
        }))
    }

    /// What the request phase reads (see [`crate::server::ctx::Env`]).
    pub fn env(&self) -> crate::server::ctx::Env<'_> {
        crate::server::ctx::Env {
            facts: &self.facts,
            ledger: &self.ledger,
            limits: &self.limits,
            mode: self.mode,
            tls: self.tls,
            candidate: self.candidate.load_full(),
            explain: false,
        }
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

    /// Why the persisted last good table is served, while it is.
    pub fn fallback(&self) -> Option<Fallback> {
        self.fallback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read routes.toml; on error keep the current table. A table that would stop covering
    /// endpoints the running one covers (a half-written or emptied file) is refused unless the
    /// file sets `allow_coverage_loss = true`.
    pub fn reload_routes(&self) -> Result<usize, RouteError> {
        self.reload_candidate();
        let loaded = Sources::read(&self.routes_path, self.groups_path.as_deref())
            .and_then(|sources| sources.compile().map(|table| (table, sources)))
            .and_then(|(table, sources)| {
                let lost = crate::coverage::lost(&self.routes.load(), &table);
                if lost.is_empty() || table.allows_coverage_loss() {
                    return Ok((table, sources));
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
            Ok((table, mut sources)) => {
                let n = table.rules().len();
                let shadow = table.shadow_rules(self.mode);
                crate::metrics::routes_loaded(n, shadow.len(), table.checksum(), true);
                if self
                    .fallback
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .is_some()
                {
                    tracing::warn!("routes.toml loads again: the persisted last good table is no longer served");
                }
                if let Err(e) = persist(&self.last_good, &mut sources) {
                    tracing::warn!(path = %self.last_good.display(), error = %e, "could not persist the route table");
                }
                if !shadow.is_empty() {
                    tracing::warn!(
                        shadow_rules = shadow.len(),
                        rules = %shadow.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(","),
                        scope = crate::rules::SHADOW_SCOPE,
                        "SHADOW MODE for these rules"
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

    /// Re-read the candidate table, if one is configured; on error keep the last good one (it
    /// is never enforced, so its errors never touch the enforced table).
    fn reload_candidate(&self) {
        let Some(path) = &self.candidate_path else {
            return;
        };
        let loaded = load_groups(self.groups_path.as_deref())
            .and_then(|groups| RouteTable::load_with_groups(path, &groups));
        match loaded {
            Ok(table) => {
                tracing::info!(rules = table.rules().len(), "candidate routes reloaded");
                self.candidate.store(Some(Arc::new(table)));
            }
            Err(e) => tracing::error!(
                error = %e,
                "candidate routes reload rejected; keeping the last good candidate table"
            ),
        }
    }

    /// Poll routes.toml and the groups file for content changes (ConfigMap symlink swaps
    /// included) and reload both together; while the ledger is pending adoption, poll it too.
    pub fn spawn_routes_watcher(self: &Arc<Self>, every: std::time::Duration) {
        let state = Arc::downgrade(self);
        let paths: Vec<PathBuf> = std::iter::once(self.routes_path.clone())
            .chain(self.groups_path.clone())
            .chain(self.candidate_path.clone())
            .collect();
        let read = move || -> Option<Vec<Vec<u8>>> {
            paths.iter().map(|p| std::fs::read(p).ok()).collect()
        };
        tokio::spawn(async move {
            let mut last = read();
            loop {
                tokio::time::sleep(every).await;
                let Some(state) = state.upgrade() else { return };
                if let Some(f) = state.fallback() {
                    tracing::error!(
                        error = %f.error,
                        saved_at = f.saved_at,
                        "routes.toml does not load: still serving the last good route table persisted at the last successful load; fix the file"
                    );
                }
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

/// Whether `serve` will have a route table: the configured files load, or a persisted last
/// good table stands in for them (nothing is persisted or logged here).
pub fn preflight_routes(settings: &Settings) -> anyhow::Result<()> {
    let groups = settings.groups.as_deref();
    if let Err(e) = Sources::read(&settings.routes, groups).and_then(|s| s.compile()) {
        restore(&last_good_path(&settings.ledger), &settings.routes, groups).map_err(|why| {
            anyhow::anyhow!("{e} (and no last good route table to serve instead: {why})")
        })?;
    }
    Ok(())
}

/// The groups file (empty groups when none is configured).
pub fn load_groups(path: Option<&std::path::Path>) -> Result<crate::rules::Groups, RouteError> {
    match path {
        Some(p) => crate::rules::Groups::load(p),
        None => Ok(crate::rules::Groups::default()),
    }
}
