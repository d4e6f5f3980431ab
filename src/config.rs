//! Configuration: layered by figment (the TOML file, then `INVOKE_GUARD_*` environment
//! variables with `__` for nesting, then `--set key=value` and the dedicated flags) into raw
//! serde structs, validated into [`Settings`].
//!
//! Invariants:
//! - Unknown keys are errors (`deny_unknown_fields`) in every layer, so a typo in a file key, an
//!   environment variable or a `--set` never silently means a default. The one exception is
//!   Kubernetes service-link variables (`INVOKE_GUARD_PORT=tcp://…` for a Service named
//!   `invoke-guard`), recognised by name *and* value shape ([`is_service_link`]) and ignored.
//! - An error names where the value came from as the operator wrote it: the file and line, the
//!   environment variable (`INVOKE_GUARD_LIMITS__MAX_BODY_BYTE`), or the `--set KEY=VALUE`.
//! - Precedence: dedicated flags > `--set` > environment > config file > built-in default.
//! - Every setting is listed once in [`SETTINGS`] (key, default, meaning); a test checks that
//!   list against these structs and the README's table against the list.
//! - A `Settings` value is fully validated: addresses parse, the upstream is an `http://` URL
//!   with a host, TLS cert and key come together, limits are non-zero.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("invalid setting '{key}': {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub db: Option<PathBuf>,
    pub routes: Option<PathBuf>,
    pub ledger: Option<PathBuf>,
    /// How long `serve` waits for InvokeAI's database to appear (first install); 0: not at all.
    pub db_wait_ms: Option<u64>,
    /// Caller groups for `caller.in` (reloaded with routes.toml); none by default.
    pub groups: Option<PathBuf>,
    /// `enforce` (default) or `shadow`: every rule in shadow mode (see `rules::SHADOW_SCOPE`).
    pub mode: Option<crate::rules::Mode>,
    /// A candidate route table evaluated beside the enforced one (differences logged).
    pub candidate_routes: Option<PathBuf>,
    /// IP addresses or CIDR ranges; a list, or one comma-separated string (environment).
    #[serde(default, deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// Origins (`scheme://host[:port]`) besides the request's own host that may open
    /// cookie-authenticated Socket.IO sessions; a list, or one comma-separated string.
    #[serde(default, deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub facts: RawFacts,
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_response_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub shutdown_delay_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_public_body_bytes: Option<usize>,
    pub body_read_timeout_ms: Option<u64>,
    pub max_list_items: Option<usize>,
    pub socket_connect_timeout_ms: Option<u64>,
    pub socket_pending_per_client: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFacts {
    pub pool_size: Option<usize>,
    pub cache_entries: Option<u64>,
    pub cache_ttl_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub busy_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// Command-line / environment overrides (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub db: Option<PathBuf>,
    pub routes: Option<PathBuf>,
    pub ledger: Option<PathBuf>,
    pub groups: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Timeouts and sizes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the listeners keep serving while `/readyz` answers 503 (so load
    /// balancers stop sending new connections) before the drain starts.
    pub shutdown_delay: Duration,
    pub max_connections: usize,
    /// Body limit for rules anyone may call (`auth = "public"`): read before any identity.
    pub max_public_body_bytes: usize,
    /// A buffered body must arrive within this; a streamed one may not stall longer than this.
    pub body_read_timeout: Duration,
    /// The most items the guard recomputes one list over (older upstreams): a larger list is
    /// refused (503), never passed on unfiltered.
    pub max_list_items: usize,
    /// A Socket.IO session without an authenticated CONNECT is closed after this.
    pub socket_connect_timeout: Duration,
    /// Socket.IO sessions without an authenticated CONNECT per client address (the oldest is
    /// closed beyond it); they never count toward `max_connections`.
    pub socket_pending_per_client: usize,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: http::Uri,
    pub db: PathBuf,
    pub routes: PathBuf,
    pub ledger: PathBuf,
    /// How long `serve` waits for a usable database before giving up (zero: fail at once).
    pub db_wait: Duration,
    /// The groups file for `caller.in`, when configured.
    pub groups: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins (lower-case `scheme://host:port`) allowed for cookie-authenticated sockets,
    /// besides the request's own host.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub facts: crate::facts::FactsConfig,
    pub log_json: bool,
    pub log_level: String,
    /// The global mode (`shadow`: no rule's checks are enforced).
    pub mode: crate::rules::Mode,
    /// A candidate route table evaluated beside `routes` (never enforced).
    pub candidate_routes: Option<PathBuf>,
}

/// The default InvokeAI database path: `$INVOKEAI_ROOT/databases/invokeai.db`, else
/// `~/invokeai/databases/invokeai.db`.
pub fn default_db_path() -> PathBuf {
    let root = std::env::var_os("INVOKEAI_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join("invokeai")))
        .unwrap_or_else(|| PathBuf::from("invokeai"));
    root.join("databases").join("invokeai.db")
}

/// Default connection cap from the process's file-descriptor limit: each client connection can
/// hold two descriptors (client and pooled upstream), and some are kept for the databases, the
/// admin listener and logs; at most 4096.
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let budget = soft.saturating_sub(64) / 2;
    (budget as usize).clamp(1, 4096)
}

fn default_ledger_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("invoke-guard").join("ledger.db")
}

/// A list of strings, or one string of comma-separated items (how an environment variable or
/// `--set` spells a list).
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Environment variables that are not settings: the config file path, the tracing filter
/// (`INVOKE_GUARD_LOG`; `log.level` is `INVOKE_GUARD_LOG__LEVEL`) and the flat TLS aliases the
/// `--tls-cert`/`--tls-key` flags read.
const NOT_SETTINGS: [&str; 4] = ["config", "log", "tls_cert", "tls_key"];

const ENV_PREFIX: &str = "INVOKE_GUARD_";

/// Whether an environment variable is one Kubernetes injects for a Service (service links:
/// `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT[_{PORT_NAME}]`, `{SVC}_PORT`,
/// `{SVC}_PORT_{N}_{PROTO}[_PROTO|_PORT|_ADDR]`), judged by name and value together, so a
/// setting spelt like one (`INVOKE_GUARD_PORT=9091`) is still refused as unknown.
pub fn is_service_link(name: &str, value: &str) -> bool {
    let is_ip = |v: &str| v.parse::<IpAddr>().is_ok();
    let is_port = |v: &str| v.parse::<u16>().is_ok_and(|p| p > 0);
    let proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    // `tcp://10.96.0.13:9091` (an IPv6 address comes bracketed).
    let is_url = |v: &str, want_port: Option<&str>| {
        let Some((scheme, rest)) = v.split_once("://") else {
            return false;
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        proto(&scheme.to_ascii_uppercase())
            && is_ip(host)
            && is_port(port)
            && want_port.is_none_or(|w| w == port)
    };
    if name.ends_with("_SERVICE_HOST") {
        return is_ip(value);
    }
    if name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return is_port(value);
    }
    // `…_PORT_{N}_{PROTO}` and its `_PROTO`, `_PORT`, `_ADDR` companions.
    if let Some(at) = name.rfind("_PORT_") {
        let mut parts = name[at + "_PORT_".len()..].split('_');
        if let (Some(n), Some(p)) = (parts.next(), parts.next()) {
            if is_port(n) && proto(p) {
                return match (parts.next(), parts.next()) {
                    (None, _) => is_url(value, Some(n)),
                    (Some("PROTO"), None) => value.eq_ignore_ascii_case(p),
                    (Some("PORT"), None) => value == n,
                    (Some("ADDR"), None) => is_ip(value),
                    _ => false,
                };
            }
        }
    }
    name.ends_with("_PORT") && is_url(value, None)
}

/// The `INVOKE_GUARD_*` variables of this process that are Kubernetes service links (ignored;
/// `serve` logs them at debug level).
pub fn service_link_variables() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, v)| k.starts_with(ENV_PREFIX) && is_service_link(k, v))
        .map(|(k, _)| k)
        .collect()
}

/// One `--set KEY=VALUE`, as a figment provider named after what the operator typed.
struct SetFlag {
    typed: String,
    line: String,
}

impl figment::Provider for SetFlag {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("--set {}", self.typed))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::providers::Format;
        figment::providers::Toml::string(&self.line).data()
    }
}

/// Layer the config file (if any), `INVOKE_GUARD_*` environment variables and `--set key=value`
/// pairs, later layers winning.
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<RawConfig, ConfigError> {
    use figment::providers::Env;
    use figment::Figment;
    // The file is read (and its TOML errors reported with their line) by `read_file`; figment
    // gets it back as data so its keys and the other layers merge key by key.
    let file = read_file(path)?;
    // Service links are judged by value too, so they are picked here, where values are seen.
    let links: Vec<String> = service_link_variables()
        .into_iter()
        .map(|k| k[ENV_PREFIX.len()..].to_owned())
        .collect();
    let mut figment = Figment::from(figment::providers::Serialized::defaults(file)).merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&NOT_SETTINGS)
            .filter(move |key| !links.iter().any(|l| key == l.as_str()))
            .split("__"),
    );
    for set in sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::File {
            path: "--set".into(),
            message: format!("'{set}': expected KEY=VALUE, e.g. limits.max_body_bytes=1048576"),
        })?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        {
            return Err(ConfigError::File {
                path: "--set".into(),
                message: format!("'{key}' is not a setting name (see the README's table)"),
            });
        }
        // A TOML value (number, boolean, array, quoted string) as written, else a plain string.
        let line = format!("{key} = {value}");
        let line = if toml::from_str::<toml::Table>(&line).is_ok() {
            line
        } else {
            format!("{key} = {}", toml::Value::String(value.to_owned()))
        };
        figment = figment.merge(SetFlag {
            typed: set.clone(),
            line,
        });
    }
    figment.extract().map_err(layer_error)
}

/// A figment error, naming the layer as the operator wrote it: the environment variable, the
/// `--set`, or the file; an unknown key gets the nearest known one.
fn layer_error(e: figment::Error) -> ConfigError {
    let mut key: Vec<String> = e.path.clone();
    let mut hint = String::new();
    if let figment::error::Kind::UnknownField(found, expected) = &e.kind {
        // The key as written, whether or not the path already ends in it.
        if key.last() != Some(found) {
            key.push(found.clone());
        }
        hint = crate::rules::did_you_mean(found, expected.iter().copied());
    }
    let key = key.join(".");
    let name = e.metadata.as_ref().map(|m| m.name.to_string());
    let from = match name {
        Some(n) if n.contains("environment variable") && !key.is_empty() => env_name(&key),
        Some(n) => n,
        None => "configuration".into(),
    };
    let shown = if key.is_empty() || from.starts_with(ENV_PREFIX) {
        String::new()
    } else {
        format!(" (key '{key}')")
    };
    ConfigError::File {
        path: from,
        message: format!("{}{shown}{hint}", e.kind),
    }
}

/// Read the config file (`None`: no file).
pub fn read_file(path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(RawConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or_default();
        ConfigError::File {
            path: format!("{}:{line}", path.display()),
            message: e.message().to_owned(),
        }
    })
}

fn ms(v: Option<u64>, default: u64, key: &'static str) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if v == 0 {
        return Err(ConfigError::Invalid {
            key,
            message: "must be greater than 0".into(),
        });
    }
    Ok(Duration::from_millis(v))
}

fn addr(v: &str, key: &'static str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|e| ConfigError::Invalid {
        key,
        message: format!(
            "'{v}': {e}; expected IP:PORT, e.g. 127.0.0.1:9091 or [::1]:9091 (no host names)"
        ),
    })
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A log filter: a level (`info`), or tracing directives (`info,invoke_guard::decision=warn`).
/// A bare word that is not a level is refused: tracing would read `verbose` as a target name
/// and silence everything else, decision log included.
pub fn log_filter(text: &str) -> Result<String, String> {
    let is_level = |w: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w.trim()));
    if text.trim().is_empty() {
        return Err(format!("empty; expected one of {}", LEVELS.join(", ")));
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !is_level(level) {
            let hint = crate::rules::did_you_mean(level, LEVELS.iter().copied());
            return Err(format!(
                "'{level}' is not a log level (one of {}){hint}",
                LEVELS.join(", ")
            ));
        }
        directive
            .parse::<tracing_subscriber::filter::Directive>()
            .map_err(|e| format!("'{directive}': {e}"))?;
    }
    Ok(text.trim().to_owned())
}

/// Merge file and overrides into validated settings.
pub fn settings(raw: RawConfig, cli: Overrides) -> Result<Settings, ConfigError> {
    let listen = addr(
        cli.listen
            .as_deref()
            .or(raw.listen.as_deref())
            .unwrap_or("127.0.0.1:9091"),
        "listen",
    )?;
    let admin_listen = match cli.admin_listen.as_deref().or(raw.admin_listen.as_deref()) {
        Some("") | Some("off") => None,
        Some(v) => Some(addr(v, "admin_listen")?),
        None => Some(addr("127.0.0.1:9092", "admin_listen")?),
    };
    let upstream_text = cli
        .upstream
        .or(raw.upstream)
        .unwrap_or_else(|| "http://127.0.0.1:9090".into());
    let upstream: http::Uri = upstream_text.parse().map_err(|e| ConfigError::Invalid {
        key: "upstream",
        message: format!("'{upstream_text}': {e}"),
    })?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(ConfigError::Invalid {
            key: "upstream",
            message: format!("'{upstream_text}' must be http://host:port (InvokeAI speaks plain HTTP on loopback)"),
        });
    }
    if upstream.path() != "/" && !upstream.path().is_empty() {
        return Err(ConfigError::Invalid {
            key: "upstream",
            message: "must not have a path".into(),
        });
    }
    let tls = match (cli.tls_cert.or(raw.tls.cert), cli.tls_key.or(raw.tls.key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid {
                key: "tls",
                message: "tls cert and key must be given together".into(),
            })
        }
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .map(|s| {
            // A bare address is a one-address range.
            let parsed = if s.contains('/') {
                s.parse::<ipnet::IpNet>().map_err(|e| e.to_string())
            } else {
                s.parse::<IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|e| e.to_string())
            };
            parsed.map_err(|e| ConfigError::Invalid {
                key: "trusted_proxies",
                message: format!("'{s}': {e} (an IP address or a CIDR range such as 10.0.0.0/8)"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allowed_origins = raw
        .allowed_origins
        .iter()
        .map(|o| {
            crate::socketio::origin::normalize(o).ok_or_else(|| ConfigError::Invalid {
                key: "allowed_origins",
                message: format!(
                    "'{o}': expected an origin such as https://invoke.example.com or http://10.0.0.5:9091 (scheme, host, optional port; no path)"
                ),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let l = raw.limits;
    let limits = Limits {
        max_body_bytes: l.max_body_bytes.unwrap_or(16 * 1024 * 1024),
        max_header_bytes: l.max_header_bytes.unwrap_or(64 * 1024),
        header_read_timeout: ms(
            l.header_read_timeout_ms,
            30_000,
            "limits.header_read_timeout_ms",
        )?,
        upstream_connect_timeout: ms(
            l.upstream_connect_timeout_ms,
            5_000,
            "limits.upstream_connect_timeout_ms",
        )?,
        upstream_response_timeout: ms(
            l.upstream_response_timeout_ms,
            300_000,
            "limits.upstream_response_timeout_ms",
        )?,
        // Below uvicorn's 5 s keep-alive: a pooled connection the server is closing must not be
        // picked for the next request (a spurious 502).
        upstream_idle_timeout: ms(
            l.upstream_idle_timeout_ms,
            4_000,
            "limits.upstream_idle_timeout_ms",
        )?,
        shutdown_grace: ms(l.shutdown_grace_ms, 10_000, "limits.shutdown_grace_ms")?,
        // 0 is allowed: drain at once (no load balancer in front).
        shutdown_delay: Duration::from_millis(l.shutdown_delay_ms.unwrap_or(5_000)),
        max_connections: l.max_connections.unwrap_or_else(default_max_connections),
        max_public_body_bytes: l.max_public_body_bytes.unwrap_or(64 * 1024),
        body_read_timeout: ms(
            l.body_read_timeout_ms,
            30_000,
            "limits.body_read_timeout_ms",
        )?,
        max_list_items: l.max_list_items.unwrap_or(50_000),
        socket_connect_timeout: ms(
            l.socket_connect_timeout_ms,
            5_000,
            "limits.socket_connect_timeout_ms",
        )?,
        socket_pending_per_client: l.socket_pending_per_client.unwrap_or(8),
    };
    if limits.max_body_bytes == 0
        || limits.max_header_bytes < 8192
        || limits.max_connections == 0
        || limits.max_public_body_bytes == 0
        || limits.max_list_items == 0
        || limits.socket_pending_per_client == 0
    {
        return Err(ConfigError::Invalid {
            key: "limits",
            message: "max_body_bytes, max_public_body_bytes, max_connections, max_list_items and socket_pending_per_client must be > 0, max_header_bytes >= 8192"
                .into(),
        });
    }
    let f = raw.facts;
    let db = cli.db.or(raw.db).unwrap_or_else(default_db_path);
    let facts = crate::facts::FactsConfig {
        db_path: db.clone(),
        pool_size: f.pool_size.unwrap_or(4).max(1),
        busy_timeout: ms(f.busy_timeout_ms, 1_000, "facts.busy_timeout_ms")?,
        cache_entries: f.cache_entries.unwrap_or(100_000),
        cache_ttl: ms(f.cache_ttl_ms, 30_000, "facts.cache_ttl_ms")?,
        poll_interval: ms(f.poll_interval_ms, 50, "facts.poll_interval_ms")?,
    };
    if facts.poll_interval > Duration::from_millis(100) {
        return Err(ConfigError::Invalid {
            key: "facts.poll_interval_ms",
            message: "must be at most 100 (freshness bound)".into(),
        });
    }
    let log_json = match raw.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "log.format",
                message: format!("'{other}': expected text or json"),
            })
        }
    };
    Ok(Settings {
        listen,
        admin_listen,
        upstream,
        db,
        routes: cli
            .routes
            .or(raw.routes)
            .unwrap_or_else(|| PathBuf::from("routes.toml")),
        ledger: cli
            .ledger
            .or(raw.ledger)
            .unwrap_or_else(default_ledger_path),
        db_wait: Duration::from_millis(raw.db_wait_ms.unwrap_or(0)),
        groups: cli.groups.or(raw.groups),
        tls,
        trusted_proxies,
        allowed_origins,
        limits,
        facts,
        log_json,
        log_level: log_filter(raw.log.level.as_deref().unwrap_or("info")).map_err(|message| {
            ConfigError::Invalid {
                key: "log.level",
                message,
            }
        })?,
        mode: raw.mode.unwrap_or_default(),
        candidate_routes: raw.candidate_routes,
    })
}

// === the settings table ===

/// One setting, as the README documents it.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    /// The file key (`limits.max_body_bytes`); also `--set KEY=VALUE`.
    pub key: &'static str,
    /// A dedicated flag, where there is one.
    pub flag: Option<&'static str>,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every setting, once (checked against [`RawConfig`] by a test; the README's table is
/// [`settings_table`]'s output, checked by another).
pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        key: "listen",
        flag: Some("--listen"),
        default: "`127.0.0.1:9091`",
        meaning: "where clients connect (IP:PORT)",
    },
    SettingDoc {
        key: "admin_listen",
        flag: Some("--admin-listen"),
        default: "`127.0.0.1:9092`",
        meaning: "/healthz, /readyz, /metrics; `off` disables",
    },
    SettingDoc {
        key: "upstream",
        flag: Some("--upstream"),
        default: "`http://127.0.0.1:9090`",
        meaning: "InvokeAI's base URL (plain HTTP, no path)",
    },
    SettingDoc {
        key: "db",
        flag: Some("--db"),
        default: "`$INVOKEAI_ROOT/databases/invokeai.db`, else `~/invokeai/databases/invokeai.db`",
        meaning: "InvokeAI's database, opened read-only",
    },
    SettingDoc {
        key: "routes",
        flag: Some("--routes"),
        default: "`routes.toml`",
        meaning: "the policy (reloaded on change and SIGHUP)",
    },
    SettingDoc {
        key: "ledger",
        flag: Some("--ledger"),
        default: "`$XDG_STATE_HOME/invoke-guard/ledger.db`",
        meaning: "the guard's own database (must be writable and persistent)",
    },
    SettingDoc {
        key: "db_wait_ms",
        flag: None,
        default: "0",
        meaning: "`serve` waits this long for InvokeAI's database to appear (first install), `/readyz` 503 meanwhile; 0: fail at once",
    },
    SettingDoc {
        key: "groups",
        flag: Some("--groups"),
        default: "none",
        meaning: "caller groups for `caller.in` (reloaded with the routes)",
    },
    SettingDoc {
        key: "mode",
        flag: None,
        default: "`enforce`",
        meaning: "`shadow`: a dry run: a resource check's refusal of a read (GET/HEAD) is logged as would_deny and forwarded; writes, admin-only, account, identity and group checks stay enforced",
    },
    SettingDoc {
        key: "candidate_routes",
        flag: None,
        default: "none",
        meaning: "a candidate route table evaluated beside `routes` for every request, never enforced; each request the two answer differently is logged (`invoke_guard::candidate`) and counted",
    },
    SettingDoc {
        key: "trusted_proxies",
        flag: None,
        default: "none",
        meaning: "IPs or CIDR ranges whose X-Forwarded-* are kept (list, or comma-separated)",
    },
    SettingDoc {
        key: "allowed_origins",
        flag: None,
        default: "none",
        meaning: "origins besides the guard's own host that may open cookie-authenticated Socket.IO sessions (list, or comma-separated)",
    },
    SettingDoc {
        key: "tls.cert",
        flag: Some("--tls-cert"),
        default: "none",
        meaning: "PEM certificate chain: serve HTTPS (reloaded on change)",
    },
    SettingDoc {
        key: "tls.key",
        flag: Some("--tls-key"),
        default: "none",
        meaning: "PEM private key (with `tls.cert`)",
    },
    SettingDoc {
        key: "limits.max_body_bytes",
        flag: None,
        default: "16777216",
        meaning: "bodies a rule reads; 413 beyond",
    },
    SettingDoc {
        key: "limits.max_public_body_bytes",
        flag: None,
        default: "65536",
        meaning: "bodies of `auth = \"public\"` rules; 413 beyond",
    },
    SettingDoc {
        key: "limits.max_list_items",
        flag: None,
        default: "50000",
        meaning: "items a list is recomputed over (6.12/6.13); 503 beyond, never unfiltered",
    },
    SettingDoc {
        key: "limits.max_header_bytes",
        flag: None,
        default: "65536",
        meaning: "request head size (at least 8192)",
    },
    SettingDoc {
        key: "limits.header_read_timeout_ms",
        flag: None,
        default: "30000",
        meaning: "slow headers: connection closed",
    },
    SettingDoc {
        key: "limits.body_read_timeout_ms",
        flag: None,
        default: "30000",
        meaning: "a read body must arrive within this (408); a streamed one may not stall longer",
    },
    SettingDoc {
        key: "limits.upstream_connect_timeout_ms",
        flag: None,
        default: "5000",
        meaning: "502 beyond",
    },
    SettingDoc {
        key: "limits.upstream_response_timeout_ms",
        flag: None,
        default: "300000",
        meaning: "504 beyond",
    },
    SettingDoc {
        key: "limits.upstream_idle_timeout_ms",
        flag: None,
        default: "4000",
        meaning: "pooled keep-alive connections (below uvicorn's 5 s keep-alive)",
    },
    SettingDoc {
        key: "limits.shutdown_delay_ms",
        flag: None,
        default: "5000",
        meaning: "after SIGTERM: /readyz 503 but still serving (0: drain at once)",
    },
    SettingDoc {
        key: "limits.shutdown_grace_ms",
        flag: None,
        default: "10000",
        meaning: "then: the drain bound",
    },
    SettingDoc {
        key: "limits.max_connections",
        flag: None,
        default: "(fd soft limit − 64) / 2, at most 4096",
        meaning: "new connections beyond it are closed",
    },
    SettingDoc {
        key: "limits.socket_connect_timeout_ms",
        flag: None,
        default: "5000",
        meaning: "a Socket.IO session with no authenticated CONNECT by then is closed",
    },
    SettingDoc {
        key: "limits.socket_pending_per_client",
        flag: None,
        default: "8",
        meaning: "Socket.IO sessions per client address not yet CONNECTed (outside `max_connections`; the oldest is closed beyond it)",
    },
    SettingDoc {
        key: "facts.pool_size",
        flag: None,
        default: "4",
        meaning: "read-only SQLite connections",
    },
    SettingDoc {
        key: "facts.cache_entries",
        flag: None,
        default: "100000",
        meaning: "fact cache size",
    },
    SettingDoc {
        key: "facts.cache_ttl_ms",
        flag: None,
        default: "30000",
        meaning: "cache backstop (changes are seen by the watcher first)",
    },
    SettingDoc {
        key: "facts.poll_interval_ms",
        flag: None,
        default: "50",
        meaning: "database change polling (at most 100)",
    },
    SettingDoc {
        key: "facts.busy_timeout_ms",
        flag: None,
        default: "1000",
        meaning: "a locked database beyond this is 503",
    },
    SettingDoc {
        key: "log.format",
        flag: None,
        default: "`text`",
        meaning: "`text` or `json`",
    },
    SettingDoc {
        key: "log.level",
        flag: None,
        default: "`info`",
        meaning: "a level or tracing directives; `INVOKE_GUARD_LOG` overrides",
    },
];

/// The environment variable of a setting: `INVOKE_GUARD_` + key, `.` → `__`, upper case.
pub fn env_name(key: &str) -> String {
    format!(
        "INVOKE_GUARD_{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The README's settings table (Markdown), generated from [`SETTINGS`].
pub fn settings_table() -> String {
    let mut out = String::from(
        "| file key (`--set KEY=VALUE`) | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} |\n",
            s.key,
            s.flag.map_or("—".to_owned(), |f| format!("`{f}`")),
            env_name(s.key),
            s.default,
            s.meaning
        ));
    }
    out
}
