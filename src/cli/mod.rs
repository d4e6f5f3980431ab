//! The command line: `serve`, `check`, `explain`, `test`, `health` and `ledger`.
//!
//! Invariants:
//! - `serve` refuses to start on any problem `check` would report (same loading code), with two
//!   announced exceptions: a routes.toml that does not load while a persisted last good table
//!   saved for it stands in (see [`crate::state`]), and, with `db_wait_ms`, a database that does
//!   not exist yet (it waits, `/readyz` 503, then refuses as `check` does).
//! - `explain` and `test` evaluate requests with `serve`'s own request phase
//!   ([`crate::server::evaluate`]) under the same settings (limits, mode, groups, candidate
//!   table); this module only parses arguments and renders results.
//! - Each command takes only the flags it uses ([`Layers`] for all, [`PolicyFiles`] for the
//!   ones that decide, [`Common`] for `serve` and `check`).

mod explain;
pub mod ruletest;

use crate::server::evaluate as trial;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Overrides, Settings};
use crate::facts::ledger::Ledger;
use crate::facts::{db, Schema};
use crate::rules::RouteTable;
use crate::state::AppState;

/// An authorization sidecar for a multiuser InvokeAI server.
#[derive(Debug, Parser)]
#[command(name = "invoke-guard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(Common),
    /// Validate config, routes and database, then exit (non-zero on any problem).
    Check(Common),
    /// Show how the guard would decide one request, and why (no upstream needed).
    Explain(ExplainArgs),
    /// Run rule test files (TOML cases; see docs/rules.md); non-zero on any failure.
    Test(TestArgs),
    /// Exit 0 when the running guard's /readyz answers 200 (for a container HEALTHCHECK).
    Health(HealthArgs),
    /// The guard's ledger: its adoption state, and the operator's adoption of existing items.
    Ledger(LedgerArgs),
}

/// `invoke-guard ledger ...`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub action: LedgerAction,
}

/// What to do with the ledger.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Say whether the ledger has adopted the database's existing workflows and style presets.
    Status(Common),
    /// Accept the database's workflows and style presets that have no owner in this ledger and
    /// were created before it as shared (readable by every user, changeable by admins). Run it
    /// once on a first deployment over an existing InvokeAI 6.12; after a lost ledger, restore
    /// the old ledger instead if you can (their owners are otherwise lost for good).
    AdoptExisting(Common),
}

/// `invoke-guard health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The admin address to ask [default: the configured admin_listen; 0.0.0.0/:: mean loopback].
    #[arg(long)]
    pub admin: Option<String>,
    /// Ask /healthz (alive) instead of /readyz (ready for traffic).
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub common: Layers,
}

/// `invoke-guard explain METHOD PATH --as USER`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// HTTP method, e.g. GET.
    pub method: String,
    /// Request target as a client sends it, e.g. /api/v1/images/i/x.png (may carry ?query).
    pub path: String,
    /// The caller: an email or user id of the database ("anonymous" for none).
    #[arg(long = "as", default_value = "anonymous")]
    pub caller: String,
    /// A query parameter NAME=VALUE (repeatable).
    #[arg(long = "query")]
    pub query: Vec<String>,
    /// JSON body: inline JSON, or @FILE / a path to a file holding it.
    #[arg(long)]
    pub body: Option<String>,
    /// A multipart text field NAME=VALUE (repeatable).
    #[arg(long = "form")]
    pub form: Vec<String>,
    /// Print JSON instead of the report for people.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: PolicyFiles,
}

/// `invoke-guard test FILE...`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files (TOML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the report of passing cases too.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub common: PolicyFiles,
}

/// How settings are layered, for every command: config file < `INVOKE_GUARD_*` environment
/// (`__` nests: `INVOKE_GUARD_LIMITS__MAX_BODY_BYTES`) < `--set` < the dedicated flags.
#[derive(Debug, Args)]
pub struct Layers {
    /// Any setting as KEY=VALUE, e.g. --set limits.max_body_bytes=1048576 (repeatable; see the
    /// README's settings table).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Config file (default: config/invoke-guard.toml when present).
    #[arg(long, env = "INVOKE_GUARD_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Layers {
    fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let default = Path::new("config/invoke-guard.toml");
            default.is_file().then(|| default.to_owned())
        })
    }

    /// Load and validate settings with `overrides` on top (and `INVOKE_GUARD_LOG`, which
    /// overrides `log.level`).
    fn settings_with(&self, overrides: Overrides) -> anyhow::Result<Settings> {
        let raw = config::load(self.config_path().as_deref(), &self.set)?;
        let settings = config::settings(raw, overrides)?;
        if let Ok(filter) = std::env::var("INVOKE_GUARD_LOG") {
            config::log_filter(&filter).map_err(|e| anyhow::anyhow!("INVOKE_GUARD_LOG: {e}"))?;
        }
        Ok(settings)
    }

    /// Load and validate settings (no flag overrides).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.settings_with(Overrides::default())
    }
}

/// The files a decision reads: `serve`, `check`, `explain` and `test`.
#[derive(Debug, Args)]
pub struct PolicyFiles {
    #[command(flatten)]
    pub layers: Layers,
    /// InvokeAI database [default: $INVOKEAI_ROOT/databases/invokeai.db, else ~/invokeai/databases/invokeai.db].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Route table [default: routes.toml].
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// The guard's own ledger database [default: $XDG_STATE_HOME/invoke-guard/ledger.db].
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Caller groups for `caller.in("NAME")`, and the model access and quotas of its `[models]` and
    /// `[quotas]` sections (TOML; reloaded with the routes) [default: none].
    #[arg(long)]
    pub groups: Option<PathBuf>,
}

impl PolicyFiles {
    fn overrides(&self) -> Overrides {
        Overrides {
            db: self.db.clone(),
            routes: self.routes.clone(),
            ledger: self.ledger.clone(),
            groups: self.groups.clone(),
            ..Overrides::default()
        }
    }

    /// Load and validate settings, these flags on top.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.layers.settings_with(self.overrides())
    }
}

/// Everything `serve` opens (and `check` validates): the policy files, the listeners and the
/// upstream.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    pub files: PolicyFiles,
    /// Address to listen on [default: 127.0.0.1:9091].
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin address for /healthz, /readyz, /metrics ("off" disables) [default: 127.0.0.1:9092].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// InvokeAI base URL [default: http://127.0.0.1:9090].
    #[arg(long)]
    pub upstream: Option<String>,
    /// TLS certificate chain (PEM); serve HTTPS (HTTP/2 + HTTP/1.1).
    #[arg(long, env = "INVOKE_GUARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "INVOKE_GUARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl Common {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            upstream: self.upstream.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            ..self.files.overrides()
        }
    }

    /// Load and validate settings, every flag on top.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.files.layers.settings_with(self.overrides())
    }
}

/// Run the CLI; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check(common) => match check(&common) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invoke-guard check: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => match explain(&args) {
            Ok((text, allowed)) => {
                print!("{text}");
                // Like `curl --fail`: a script can tell an allow from a deny.
                if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }
            Err(e) => {
                eprintln!("invoke-guard explain: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Test(args) => match rule_tests(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("invoke-guard test: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Health(args) => match health(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invoke-guard health: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ledger(args) => match ledger(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invoke-guard ledger: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(common) => match serve(&common) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("invoke-guard serve: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The ledger `explain`/`test` read: the configured one only if it exists (never created here).
fn existing_ledger(path: &Path) -> Option<&Path> {
    path.is_file().then_some(path)
}

/// `explain`: the report (or JSON) and whether the request would be forwarded.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<(String, bool)> {
    let settings = args.common.settings()?;
    let mut target = args.path.clone();
    for q in &args.query {
        let (k, v) = q
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--query wants NAME=VALUE, got '{q}'"))?;
        let pair = form_urlencoded::Serializer::new(String::new())
            .append_pair(k, v)
            .finish();
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&pair);
    }
    let body = match (&args.body, args.form.is_empty()) {
        (Some(_), false) => anyhow::bail!("--body and --form exclude each other"),
        (Some(b), true) => {
            let text = match b.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)?,
                None if Path::new(b).is_file() => std::fs::read_to_string(b)?,
                None => b.clone(),
            };
            Some(trial::TrialBody::Json(text))
        }
        (None, false) => Some(trial::TrialBody::Form(
            args.form
                .iter()
                .map(|f| {
                    f.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--form wants NAME=VALUE, got '{f}'"))
                })
                .collect::<anyhow::Result<_>>()?,
        )),
        (None, true) => None,
    };
    let caller = match args.caller.as_str() {
        "anonymous" | "anon" => trial::Caller::Anonymous,
        who => trial::Caller::User {
            who: who.to_owned(),
            claims: serde_json::Map::new(),
        },
    };
    let request = trial::Trial {
        caller,
        method: args.method.to_ascii_uppercase(),
        target,
        body,
    };
    runtime()?.block_on(async {
        let mut engine = trial::Engine::open_with_groups(
            &settings.routes,
            &settings.db,
            existing_ledger(&settings.ledger),
            settings.groups.as_deref(),
        )?;
        engine.mode = settings.mode;
        engine.limits = settings.limits.clone();
        engine.tls = settings.tls.is_some();
        if let Some(path) = &settings.candidate_routes {
            let groups = crate::state::load_groups(settings.groups.as_deref())?;
            engine.candidate = Some(std::sync::Arc::new(RouteTable::load_with_groups(
                path, &groups,
            )?));
        }
        let ex = engine.run(&request).await?;
        let allowed = ex.forwarded();
        let text = if args.json {
            format!("{}\n", serde_json::to_string_pretty(&ex.to_json())?)
        } else {
            ex.human()
        };
        Ok((text, allowed))
    })
}

/// `test`: run every file; prints failures (diff-style) and a summary; true when all passed.
pub fn rule_tests(args: &TestArgs) -> anyhow::Result<bool> {
    let settings = args.common.settings()?;
    let rt = runtime()?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in &args.files {
        let loaded = ruletest::load(path)?;
        // Flags beat the file; the file beats the defaults.
        let pick = |flag: &Option<PathBuf>, in_file: &Option<PathBuf>, default: &Path| match (
            flag, in_file,
        ) {
            (Some(f), _) => f.clone(),
            (None, Some(p)) => loaded.relative(p),
            (None, None) => default.to_owned(),
        };
        let db = pick(&args.common.db, &loaded.file.db, &settings.db);
        let routes = pick(&args.common.routes, &loaded.file.routes, &settings.routes);
        let ledger = match (&args.common.ledger, &loaded.file.ledger) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(p)) => Some(loaded.relative(p)),
            (None, None) => None,
        };
        let groups = match (&args.common.groups, &loaded.file.groups) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(p)) => Some(loaded.relative(p)),
            (None, None) => settings.groups.clone(),
        };
        let results = rt.block_on(async {
            let mut engine = trial::Engine::open_with_groups(
                &routes,
                &db,
                ledger.as_deref(),
                groups.as_deref(),
            )?;
            engine.mode = settings.mode;
            engine.limits = settings.limits.clone();
            engine.tls = settings.tls.is_some();
            ruletest::run(&loaded, &engine).await
        })?;
        let (p, f) = results.iter().fold(
            (0, 0),
            |(p, f), r| {
                if r.passed {
                    (p + 1, f)
                } else {
                    (p, f + 1)
                }
            },
        );
        for r in results.iter().filter(|r| !r.passed) {
            print!("{}", r.report);
        }
        if args.verbose {
            for r in results.iter().filter(|r| r.passed) {
                println!("ok   {}:{} \"{}\"", path.display(), r.line, r.name);
            }
        }
        println!(
            "{}: {} cases, {p} passed, {f} failed (routes {}, db {})",
            path.display(),
            results.len(),
            routes.display(),
            db.display()
        );
        passed += p;
        failed += f;
    }
    println!("invoke-guard test: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `health`: one blocking HTTP/1.1 request to the admin listener (no runtime, no TLS: the
/// admin listener is plain HTTP); Ok only for a 200.
pub fn health(args: &HealthArgs) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let mut addr: SocketAddr = match &args.admin {
        Some(a) => a
            .parse()
            .map_err(|e| anyhow::anyhow!("--admin '{a}': {e} (expected IP:PORT)"))?,
        None => args.common.settings()?.admin_listen.ok_or_else(|| {
            anyhow::anyhow!("the admin listener is off (admin_listen = \"off\"); nothing to ask")
        })?,
    };
    // A wildcard bind is reachable on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let path = if args.live { "/healthz" } else { "/readyz" };
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        anyhow::anyhow!("{addr}: {e} (is the guard running with this admin_listen?)")
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    // Bounded: a status line and a short body are all we need.
    stream.take(4096).read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply);
    let status = text.split(' ').nth(1).unwrap_or("");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status == "200" {
        Ok(format!("{addr}{path}: {body}"))
    } else {
        anyhow::bail!("{addr}{path} answered {status}: {body}")
    }
}

/// Validate everything `serve` would load; a one-line summary on success.
pub fn check(common: &Common) -> anyhow::Result<String> {
    let settings = common.settings()?;
    let groups = crate::state::load_groups(settings.groups.as_deref())?;
    let table = RouteTable::load_with_groups(&settings.routes, &groups)?;
    let schema = probe_db(&settings)?;
    if let Some((cert, key)) = &settings.tls {
        crate::server::tls_acceptor(cert, key)?;
    }
    crate::facts::ledger::Ledger::probe_writable(&settings.ledger)?;
    let version = crate::coverage::version_of(&schema);
    let covered = crate::coverage::check(&table, version).map_err(|missing| {
        anyhow::anyhow!(
            "{}: {} InvokeAI {version} endpoint(s) match no rule (denied by default):\n  {}",
            settings.routes.display(),
            missing.len(),
            missing.join("\n  ")
        )
    })?;
    let ledger_note = ledger_state(&settings, &schema)?;
    let shadow_note = shadow_warning(&table, settings.mode);
    let access_note = access_warnings(&settings, &groups)?;
    let groups_note: String = unknown_members(&groups, &settings)?
        .iter()
        .map(|(group, member)| {
            format!(
                "\nwarning: groups file {}: member '{member}' of group '{group}' matches no user of {} (a typo? it admits nobody)",
                settings.groups.as_deref().unwrap_or(Path::new("-")).display(),
                settings.db.display()
            )
        })
        .collect();
    Ok(format!(
        "ok: {} rules in {}; database {} schema {} (migration {}); all {covered} InvokeAI {version} endpoints covered{ledger_note}{shadow_note}{access_note}{groups_note}",
        table.rules().len(),
        settings.routes.display(),
        settings.db.display(),
        schema.label(),
        schema.migration_version
    ))
}

/// `check`'s shadow warning: which rules, and what shadow mode forwards (never writes, never the
/// checks [`crate::rules::never_shadowed`] names; `auth = "admin"` is enforced whatever the mode).
fn shadow_warning(table: &RouteTable, mode: crate::rules::Mode) -> String {
    use crate::rules::Auth;
    let scope = format!(
        "{}: never shadowed: any write, {}",
        crate::rules::SHADOW_SCOPE,
        crate::rules::never_shadowed().join(", ")
    );
    if mode == crate::rules::Mode::Shadow {
        return format!("\nwarning: SHADOW MODE (mode = \"shadow\"), every rule: {scope}");
    }
    let shadow = table.shadow_rules(mode);
    let (admin, other): (Vec<_>, Vec<_>) = shadow.iter().partition(|r| r.auth == Auth::Admin);
    let ids = |rules: &[&&crate::rules::Rule]| {
        rules
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    if !other.is_empty() {
        out.push_str(&format!(
            "\nwarning: SHADOW: {} rule(s) in shadow mode ({scope}): {}",
            other.len(),
            ids(&other)
        ));
    }
    if !admin.is_empty() {
        out.push_str(&format!(
            "\nwarning: SHADOW: {} `auth = \"admin\"` rule(s) in shadow mode: still admin-only (auth is enforced; {scope}): {}",
            admin.len(),
            ids(&admin)
        ));
    }
    out
}

/// Group members (emails or user ids) that match no user of the database: (group, member).
fn unknown_members(
    groups: &crate::rules::Groups,
    settings: &Settings,
) -> anyhow::Result<Vec<(String, String)>> {
    if settings.groups.is_none() {
        return Ok(Vec::new());
    }
    let conn = db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
    let mut known = std::collections::HashSet::new();
    let mut stmt = conn.prepare("SELECT user_id, email FROM users")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for row in rows {
        let (id, email) = row?;
        known.insert(id.to_lowercase());
        if let Some(e) = email {
            known.insert(e.to_lowercase());
        }
    }
    let mut unknown: Vec<(String, String)> = groups
        .iter()
        .flat_map(|(name, members)| {
            members
                .iter()
                .filter(|m| !known.contains(*m))
                .map(move |m| (name.to_owned(), m.to_owned()))
        })
        .collect();
    unknown.sort();
    Ok(unknown)
}

/// The ledger's adoption state as `check` and `ledger status` report it, appended to their line
/// (nothing is created or changed).
fn ledger_state(settings: &Settings, schema: &Schema) -> anyhow::Result<String> {
    use crate::facts::ledger::{self, Adoption};
    let (born, file) = match Ledger::peek(&settings.ledger)? {
        Some(Adoption::Adopted { legacy_before }) => {
            return Ok(format!(
                "; ledger adopted (unowned items created before {legacy_before} are shared)"
            ));
        }
        Some(Adoption::Pending { born }) => (born, "pending adoption"),
        // A ledger `serve` would create now.
        None => (sqlite_now()?, "not created yet"),
    };
    let conn = db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
    let ledger_conn = match settings.ledger.exists() {
        true => Some(rusqlite::Connection::open_with_flags(
            &settings.ledger,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?),
        false => None,
    };
    let unowned = ledger::unowned_before(&conn, schema, &born, ledger_conn.as_ref())?;
    if unowned.total() == 0 {
        return Ok(format!(
            "; ledger {file}, nothing to adopt (serve adopts it at start)"
        ));
    }
    Ok(format!(
        "\nwarning: LEDGER NOT ADOPTED ({file}): {unowned} in the database have no recorded \
         owner; they are served to admins only until `invoke-guard ledger adopt-existing` (after a \
         lost ledger, restore the old one instead if you can)"
    ))
}

/// Now, as SQLite (and InvokeAI) write timestamps (UTC, `YYYY-MM-DD HH:MM:SS.fff`).
fn sqlite_now() -> anyhow::Result<String> {
    Ok(rusqlite::Connection::open_in_memory()?.query_row(
        "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
        [],
        |r| r.get(0),
    )?)
}

/// `ledger status` / `ledger adopt-existing`.
pub fn ledger(args: &LedgerArgs) -> anyhow::Result<String> {
    let common = match &args.action {
        LedgerAction::Status(c) | LedgerAction::AdoptExisting(c) => c,
    };
    let settings = common.settings()?;
    let schema = probe_db(&settings)?;
    match args.action {
        LedgerAction::Status(_) => {
            let note = ledger_state(&settings, &schema)?;
            Ok(format!(
                "{}: {}",
                settings.ledger.display(),
                note.trim_start_matches(['\n', ';', ' '])
            ))
        }
        LedgerAction::AdoptExisting(_) => {
            let _log = init_tracing(&settings);
            let ledger = Ledger::open(&settings.ledger)?;
            if let crate::facts::ledger::Adoption::Adopted { legacy_before } = ledger.adoption() {
                return Ok(format!(
                    "ledger {}: adopted already (unowned items created before {legacy_before} are shared); nothing changed",
                    settings.ledger.display()
                ));
            }
            let conn = db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
            let unowned = ledger.unowned(&conn, &schema)?;
            let adopted = ledger.adopt_existing(unowned)?;
            let crate::facts::ledger::Adoption::Adopted { legacy_before } = adopted else {
                anyhow::bail!("the ledger did not record the adoption");
            };
            tracing::warn!(
                ledger = %settings.ledger.display(),
                db = %settings.db.display(),
                workflows = unowned.workflows,
                presets = unowned.presets,
                legacy_before = %legacy_before,
                "ledger adopt-existing: unowned workflows and style presets created before the ledger are now shared"
            );
            Ok(format!(
                "ledger {}: adopted: {unowned} created before {legacy_before} without a recorded owner are now shared \
                 (readable by every user, changeable by admins); a running guard applies this within seconds",
                settings.ledger.display()
            ))
        }
    }
}

/// Warnings about the groups file's `[models]` rules against the installed models: a selector
/// value that matches no installed model (a typo, or a model not installed yet).
fn access_warnings(settings: &Settings, groups: &crate::rules::Groups) -> anyhow::Result<String> {
    let Some(models) = groups.access().models.as_ref() else {
        return Ok(String::new());
    };
    let conn = db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
    let catalog = crate::facts::models::catalog(&conn)
        .map_err(|e| anyhow::anyhow!("{}: reading the models table: {e}", settings.db.display()))?;
    let attrs: Vec<crate::rules::access::ModelAttrs<'_>> = catalog
        .iter()
        .map(|r| crate::rules::access::ModelAttrs {
            key: &r.key,
            name: &r.name,
            base: &r.base,
            kind: &r.kind,
        })
        .collect();
    let file = settings
        .groups
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut out = String::new();
    for rule in &models.rules {
        let unmatched = rule.unmatched(&attrs);
        if !unmatched.is_empty() {
            out.push_str(&format!(
                "\nwarning: {file}:{}: models rule '{}': {} match(es) no installed model ({} installed)",
                rule.line,
                rule.id,
                unmatched.join(", "),
                catalog.len()
            ));
        }
    }
    Ok(out)
}

fn probe_db(settings: &Settings) -> anyhow::Result<Schema> {
    let conn = db::open_read_only(&settings.db, settings.facts.busy_timeout)?;
    let schema = Schema::detect(&conn)?;
    if !schema.has_users {
        anyhow::bail!("{}: {}", settings.db.display(), schema.label());
    }
    if db::jwt_secret(&conn)?.is_none() {
        anyhow::bail!("{}: no jwt_secret in app_settings", settings.db.display());
    }
    Ok(schema)
}

/// Install the log subscriber; its lines go to stderr through the writer thread of
/// [`crate::logwriter`] (off the request path). Keep the guard: dropping it drains the queue.
fn init_tracing(settings: &Settings) -> crate::logwriter::FlushGuard {
    // Both were validated by `settings()` (a bare unknown word would silence the log).
    let filter = tracing_subscriber::EnvFilter::try_from_env("INVOKE_GUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = crate::logwriter::spawn(std::io::stderr());
    // Decision lines bypass tracing's formatter (crate::decisionlog) but not its filter.
    let lines = writer.clone();
    crate::decisionlog::install(
        if settings.log_json {
            crate::decisionlog::Format::Json
        } else {
            crate::decisionlog::Format::Text
        },
        move |line| lines.write_line(line),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if settings.log_json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
    guard
}

fn serve(common: &Common) -> anyhow::Result<()> {
    let settings = common.settings()?;
    // Declared first, dropped last: every line logged until `serve` returns is written.
    let _log = init_tracing(&settings);
    for variable in config::service_link_variables() {
        tracing::debug!(%variable, "ignored: a Kubernetes service-link variable, not a setting");
    }
    if settings.db_wait.is_zero() {
        probe_db(&settings)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let admin = match settings.admin_listen {
            Some(addr) => Some(
                bind(
                    addr,
                    "admin_listen",
                    "--admin-listen / INVOKE_GUARD_ADMIN_LISTEN (\"off\" disables it)",
                )
                .await?,
            ),
            None => None,
        };
        if !settings.db_wait.is_zero() {
            // A broken routes.toml is reported now, not after the database appeared.
            crate::state::preflight_routes(&settings)?;
            wait_for_db(&settings, admin.as_ref()).await?;
        }
        let state = AppState::from_settings(&settings)?;
        let tls = match &settings.tls {
            Some((cert, key)) => {
                let (acceptor, reloader) = crate::server::tls_reloading(cert, key)?;
                reloader.spawn_watcher(std::time::Duration::from_secs(2));
                Some(acceptor)
            }
            None => None,
        };
        let listener = bind(settings.listen, "listen", "--listen / INVOKE_GUARD_LISTEN").await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut admin_addr = None;
        if let Some(admin) = admin {
            admin_addr = Some(crate::server::local_addr(&admin));
            let mut rx = stop_rx.clone();
            tokio::spawn(crate::server::admin::run(
                admin,
                state.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ));
        }
        state.spawn_routes_watcher(std::time::Duration::from_secs(2));
        let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        spawn_signal_handlers(requests_tx)?;
        tokio::spawn(crate::server::lifecycle::run(
            state.clone(),
            requests_rx,
            stop_tx,
        ));
        tracing::info!(
            listen = %crate::server::local_addr(&listener),
            tls = tls.is_some(),
            upstream = %settings.upstream,
            db = %settings.db.display(),
            schema = state.facts.schema().label(),
            rules = state.routes.load().rules().len(),
            admin = %admin_addr.map_or("off".to_owned(), |a| a.to_string()),
            "invoke-guard started"
        );
        let shadow = state.routes.load().shadow_rules(settings.mode).len();
        if settings.mode == crate::rules::Mode::Shadow {
            tracing::warn!(
                scope = crate::rules::SHADOW_SCOPE,
                "SHADOW MODE (mode = \"shadow\") for every rule"
            );
        } else if shadow > 0 {
            tracing::warn!(
                shadow_rules = shadow,
                scope = crate::rules::SHADOW_SCOPE,
                "SHADOW: {shadow} rule(s) have mode = \"shadow\""
            );
        }
        let mut rx = stop_rx;
        let facts = state.facts.clone();
        crate::server::run(listener, state, tls, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await?;
        facts.shutdown();
        tracing::info!("invoke-guard stopped");
        Ok(())
    })
}

/// `db_wait_ms`: wait until InvokeAI's database is usable (it appears on InvokeAI's first start),
/// the admin listener answering `/readyz` 503 meanwhile; an error once the wait is over.
async fn wait_for_db(
    settings: &Settings,
    admin: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    let waiting_for = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let deadline = std::time::Instant::now() + settings.db_wait;
    let status = waiting_for.clone();
    let admin_addr = admin.map_or("off".to_owned(), |l| {
        crate::server::local_addr(l).to_string()
    });
    let wait = async move {
        let mut last = String::new();
        let result = loop {
            let error = match probe_db(settings) {
                Ok(_) => break Ok(()),
                Err(e) => format!("{e:#}"),
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(anyhow::anyhow!(
                    "{error} (waited db_wait_ms = {} ms for InvokeAI's database)",
                    settings.db_wait.as_millis()
                ));
            }
            *status.lock().unwrap_or_else(|p| p.into_inner()) = format!(
                "waiting for InvokeAI's database ({error}); {} s left of db_wait_ms",
                left.as_secs()
            );
            if error != last {
                tracing::info!(%error, left_s = left.as_secs(), admin = %admin_addr, "waiting for InvokeAI's database (db_wait_ms; /readyz answers 503 meanwhile)");
                last = error;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500).min(left)).await;
        };
        let _ = done_tx.send(());
        result
    };
    match admin {
        Some(listener) => {
            let serving = crate::server::admin::run_waiting(
                listener,
                &settings.limits,
                waiting_for,
                async move {
                    let _ = done_rx.await;
                },
            );
            tokio::join!(wait, serving).0
        }
        None => wait.await,
    }
}

/// Bind a listener; the error names the setting and what to do.
async fn bind(
    addr: std::net::SocketAddr,
    key: &str,
    set_with: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => "another process (or another guard) holds this port",
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; use a higher port"
            }
            std::io::ErrorKind::AddrNotAvailable => "this machine has no such address",
            _ => "check the address",
        };
        anyhow::anyhow!(
            "cannot listen on {addr} ({key}): {e}; {hint}; set another with `{key}` / {set_with}"
        )
    })
}

fn spawn_signal_handlers(
    requests: tokio::sync::mpsc::UnboundedSender<crate::server::lifecycle::Request>,
) -> anyhow::Result<()> {
    use crate::server::lifecycle::Request;
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before `serve` reports it started, so an early SIGTERM is never the default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = term.recv() => Request::Terminate("SIGTERM"),
                _ = int.recv() => Request::Terminate("SIGINT"),
                _ = hup.recv() => Request::Reload,
            };
            if requests.send(request).is_err() {
                return;
            }
        }
    });
    Ok(())
}
