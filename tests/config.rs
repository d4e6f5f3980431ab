//! `invoke-guard check` and `serve` refuse bad input with precise messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_invoke-guard"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("INVOKE_GUARD_LOG");
    c
}

fn fixture_db() -> PathBuf {
    common::fixture_path("invokeai-6.14.2-rich.db")
}

fn check(routes: &Path, db: &Path) -> (bool, String, String) {
    let out = bin()
        .args(["check", "--routes"])
        .arg(routes)
        .arg("--db")
        .arg(db)
        .args(["--config", "config/invoke-guard.toml"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn routes_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("routes.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn shipped_config_and_routes_pass_check_on_both_versions() {
    for v in ["6.12.0", "6.14.2"] {
        let db = common::fixture_path(&format!("invokeai-{v}-rich.db"));
        let (ok, out, err) = check(Path::new("routes.toml"), &db);
        assert!(ok, "{err}");
        assert!(out.starts_with("ok: "), "{out}");
        assert!(
            out.contains(if v == "6.12.0" {
                "schema 6.12"
            } else {
                "schema 6.14"
            }),
            "{out}"
        );
    }
}

const GOOD: &str =
    "[[rule]]\nid = \"a\"\nmethods = [\"GET\"]\npath = \"/a/{x}\"\nauth = \"user\"\n";

#[test]
fn broken_routes_are_reported_with_file_line_and_rule() {
    let cases: &[(&str, String, &[&str])] = &[
        ("bad toml", "[[rule]]\nid = \"a\n".into(), &["routes.toml:2"]),
        ("unknown key", format!("{GOOD}colour = \"red\"\n"), &["unknown field", "colour"]),
        (
            "unknown predicate",
            format!("\n\n{GOOD}require = [\"image.reed(path.x)\"]\n"),
            // The line of the offending `require` entry, and the nearest known name.
            &["routes.toml:8", "rule 'a'", "unknown predicate 'image.reed' (did you mean 'image.read'?)"],
        ),
        (
            "unbound path param",
            format!("{GOOD}require = [\"image.read(path.y)\"]\n"),
            &["rule 'a'", "'path.y' is not a parameter"],
        ),
        (
            "wrong arity",
            format!("{GOOD}require = [\"image.read(path.x, path.x)\"]\n"),
            &["takes 1 argument"],
        ),
        (
            "overlap",
            format!("{GOOD}\n[[rule]]\nid = \"b\"\nmethods = [\"GET\", \"POST\"]\npath = \"/a/special\"\nauth = \"admin\"\n"),
            &["rule 'b'", "overlaps rule 'a'"],
        ),
        ("duplicate id", format!("{GOOD}\n{GOOD}"), &["duplicate rule id"]),
        (
            "unknown filter",
            format!("{GOOD}response = [\"shout\"]\n"),
            &["unknown response filter 'shout'"],
        ),
        (
            "misspelt filter",
            format!("{GOOD}response = [\n  \"private_media\",\n  \"privat_media\",\n]\n"),
            &["routes.toml:8", "did you mean 'private_media'?"],
        ),
        (
            "unknown capability",
            format!("{GOOD}require = [\"admin_unless_upstream(\\\"time_travel\\\")\"]\n"),
            &["unknown upstream capability"],
        ),
        (
            "misspelt capability",
            format!("{GOOD}require = [\"admin_unless_upstream(\\\"sanitises_queue\\\")\"]\n"),
            &["did you mean 'sanitizes_queue'?"],
        ),
        ("bad method", GOOD.replace("GET", "BREW"), &["unknown method 'BREW'"]),
        ("bad auth", GOOD.replace("user", "anyone"), &["anyone"]),
        ("partial param", GOOD.replace("{x}", "img-{x}"), &["whole segment"]),
        ("dot segment", GOOD.replace("/a/{x}", "/a/../{x}"), &["not a canonical path"]),
    ];
    for (name, text, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes_file(&dir, text);
        let (ok, _out, err) = check(&routes, &fixture_db());
        assert!(!ok, "{name}: check accepted it");
        for needle in *needles {
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn missing_or_invalid_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = check(Path::new("routes.toml"), &dir.path().join("nope.db"));
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not sqlite").unwrap();
    let (ok, _, err) = check(Path::new("routes.toml"), &junk);
    assert!(!ok);
    assert!(err.contains("database"), "{err}");
}

#[test]
fn broken_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("listen = \"nowhere\"\n", "listen"),
        ("upstream = \"https://x:1\"\n", "upstream"),
        ("lisen = \"127.0.0.1:1\"\n", "unknown field"),
        ("[facts]\npoll_interval_ms = 5000\n", "poll_interval_ms"),
        ("[tls]\ncert = \"a.pem\"\n", "together"),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = bin()
            .args(["check", "--config"])
            .arg(&cfg)
            .arg("--db")
            .arg(fixture_db())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn serve_refuses_to_start_on_bad_routes() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(&dir, "[[rule]]\nid = \"a\"\n");
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--routes",
        ])
        .arg(&routes)
        .arg("--db")
        .arg(fixture_db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field"));
}

#[test]
fn serve_starts_logs_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--routes",
            "routes.toml",
            "--ledger",
        ])
        .arg(dir.path().join("ledger.db"))
        .arg("--db")
        .arg(fixture_db())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let started = lines.find_map(|l| l.ok().filter(|l| l.contains("invoke-guard started")));
    // The first signal starts the readiness delay, the second ends it (see tests/lifecycle.rs).
    send_signal(child.id(), "TERM");
    send_signal(child.id(), "INT");
    let status = child.wait().unwrap();
    let started = started.expect("no start line");
    for field in ["listen=127.0.0.1:", "upstream=", "schema=", "rules="] {
        assert!(started.contains(field), "{started}");
    }
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("invoke-guard stopped")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("shutdown requested")),
        "{rest:?}"
    );
}

/// `check` with extra arguments; (ok, stdout, stderr).
fn check_with(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = bin();
    cmd.args(["check", "--routes", "routes.toml", "--db"])
        .arg(fixture_db())
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_what_serve_would_fail_on_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let ledger_arg = ledger.to_str().unwrap();
    let cfg = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    // A good baseline passes.
    let good = cfg(
        "good.toml",
        "[log]\nlevel = \"info,invoke_guard::decision=warn\"\n",
    );
    let (ok, out, err) = check_with(&["--config", &good, "--ledger", ledger_arg], &[]);
    assert!(ok, "{out}{err}");
    // A log level typo would silence every log line (tracing reads it as a target name).
    let verbose = cfg("verbose.toml", "[log]\nlevel = \"verbose\"\n");
    let (ok, _, err) = check_with(&["--config", &verbose, "--ledger", ledger_arg], &[]);
    assert!(!ok);
    assert!(
        err.contains("log.level") && err.contains("'verbose' is not a log level"),
        "{err}"
    );
    let (ok, _, err) = check_with(
        &["--config", &good, "--ledger", ledger_arg],
        &[("INVOKE_GUARD_LOG", "wran")],
    );
    assert!(!ok);
    assert!(
        err.contains("INVOKE_GUARD_LOG") && err.contains("did you mean 'warn'?"),
        "{err}"
    );
    // A ledger the guard could not create: its directory is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let bad_ledger = file.join("ledger.db");
    let (ok, _, err) = check_with(
        &["--config", &good, "--ledger", bad_ledger.to_str().unwrap()],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("guard ledger")
            && err.contains("not-a-dir")
            && err.contains("INVOKE_GUARD_LEDGER"),
        "{err}"
    );
    assert!(!err.contains("InvokeAI database"), "mislabelled: {err}");
    // TLS files that are not PEM: the file is named.
    let junk = cfg("junk.pem", "not pem\n");
    let (ok, _, err) = check_with(
        &[
            "--config",
            &good,
            "--ledger",
            ledger_arg,
            "--tls-cert",
            &junk,
            "--tls-key",
            &junk,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    // Listener syntax.
    let (ok, _, err) = check_with(&["--config", &good, "--listen", "localhost:80"], &[]);
    assert!(!ok);
    assert!(err.contains("'listen'") && err.contains("IP:PORT"), "{err}");
    assert!(!ledger.exists(), "check must not create the ledger");
}

#[test]
fn serve_names_the_listener_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--routes",
            "routes.toml",
            "--admin-listen",
            &addr,
            "--ledger",
        ])
        .arg(dir.path().join("ledger.db"))
        .arg("--db")
        .arg(fixture_db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (admin_listen)"))
            && err.contains("INVOKE_GUARD_ADMIN_LISTEN"),
        "{err}"
    );
}

fn send_signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn every_setting_is_listed_once_and_in_the_readme_table() {
    use invoke_guard::config::{settings_table, RawConfig, SETTINGS};
    fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    keys(&format!("{prefix}{k}."), v, out);
                }
            }
            _ => out.push(prefix.trim_end_matches('.').to_owned()),
        }
    }
    let mut in_code = Vec::new();
    keys(
        "",
        &serde_json::to_value(RawConfig::default()).unwrap(),
        &mut in_code,
    );
    let mut listed: Vec<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
    in_code.sort();
    listed.sort();
    assert_eq!(in_code, listed, "config::SETTINGS and RawConfig disagree");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table = settings_table();
    assert!(
        readme.contains(&table),
        "README.md's settings table is stale; replace it with:\n{table}"
    );
}

/// `check` with a config file text, extra environment and arguments.
fn check_layered(file: &str, envs: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("guard.toml");
    std::fs::write(&cfg, file).unwrap();
    let mut cmd = bin();
    cmd.args(["check", "--routes", "routes.toml", "--config"])
        .arg(&cfg)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .arg("--db")
        .arg(fixture_db())
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn settings_layer_file_then_environment_then_set_then_flags() {
    let small = "[limits]\nmax_header_bytes = 100\n";
    // The file alone: refused (a limit below 8192).
    let (ok, err) = check_layered(small, &[], &[]);
    assert!(!ok && err.contains("max_header_bytes"), "{err}");
    // A nested environment variable beats the file.
    let env = [("INVOKE_GUARD_LIMITS__MAX_HEADER_BYTES", "9000")];
    let (ok, err) = check_layered(small, &env, &[]);
    assert!(ok, "{err}");
    // --set beats the environment.
    let (ok, err) = check_layered(small, &env, &["--set", "limits.max_header_bytes=100"]);
    assert!(!ok && err.contains("max_header_bytes"), "{err}");
    // A dedicated flag beats --set.
    let (ok, err) = check_layered(
        "",
        &[],
        &["--set", "listen=nowhere", "--listen", "127.0.0.1:1"],
    );
    assert!(ok, "{err}");
    let (ok, err) = check_layered("", &[], &["--set", "listen=nowhere"]);
    assert!(!ok && err.contains("'nowhere'"), "{err}");
    // Lists from the environment, with CIDR ranges.
    let (ok, err) = check_layered(
        "",
        &[("INVOKE_GUARD_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_TRUSTED_PROXIES", "10.0.0.0/33")], &[]);
    assert!(
        !ok && err.contains("trusted_proxies") && err.contains("10.0.0.0/33"),
        "{err}"
    );
    // Top-level keys keep their historical names; the mode too.
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_LISTEN", "nowhere")], &[]);
    assert!(!ok && err.contains("'listen'"), "{err}");
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_LOG__LEVEL", "verbose")], &[]);
    assert!(!ok && err.contains("log.level"), "{err}");
    // A typo in an environment variable or a --set key is an error, naming where it came from.
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_LIMITS__MAX_BODY_BYTE", "1")], &[]);
    assert!(
        !ok && err.contains("max_body_byte") && err.contains("INVOKE_GUARD_"),
        "{err}"
    );
    let (ok, err) = check_layered("", &[], &["--set", "limits.max_body_byte=1"]);
    assert!(!ok && err.contains("max_body_byte"), "{err}");
}

#[test]
fn readme_check_example_is_what_check_prints() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "check",
            "--config",
            "/dev/null",
            "--routes",
            "routes.toml",
            "--db",
            "tests/fixtures/invokeai-6.12.0-rich.db",
            "--ledger",
        ])
        .arg(dir.path().join("ledger.db"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!(
            "$ invoke-guard check --db tests/fixtures/invokeai-6.12.0-rich.db\n{line}\n"
        )),
        "README's check example (rule and endpoint counts) is stale; it should show:\n{line}"
    );
}

#[test]
fn documented_defaults_are_the_defaults() {
    use invoke_guard::config::{settings, Overrides, RawConfig, SETTINGS};
    let s = settings(RawConfig::default(), Overrides::default()).unwrap();
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let actual = |key: &str| -> Option<String> {
        let l = &s.limits;
        let f = &s.facts;
        Some(match key {
            "listen" => format!("`{}`", s.listen),
            "admin_listen" => format!("`{}`", s.admin_listen.unwrap()),
            "upstream" => format!("`{}`", s.upstream.to_string().trim_end_matches('/')),
            "routes" => format!("`{}`", s.routes.display()),
            "mode" => format!("`{}`", s.mode.name()),
            "limits.max_body_bytes" => l.max_body_bytes.to_string(),
            "limits.max_public_body_bytes" => l.max_public_body_bytes.to_string(),
            "limits.max_header_bytes" => l.max_header_bytes.to_string(),
            "limits.header_read_timeout_ms" => ms(l.header_read_timeout),
            "limits.body_read_timeout_ms" => ms(l.body_read_timeout),
            "limits.upstream_connect_timeout_ms" => ms(l.upstream_connect_timeout),
            "limits.upstream_response_timeout_ms" => ms(l.upstream_response_timeout),
            "limits.upstream_idle_timeout_ms" => ms(l.upstream_idle_timeout),
            "limits.shutdown_delay_ms" => ms(l.shutdown_delay),
            "limits.shutdown_grace_ms" => ms(l.shutdown_grace),
            "facts.pool_size" => f.pool_size.to_string(),
            "facts.cache_entries" => f.cache_entries.to_string(),
            "facts.cache_ttl_ms" => ms(f.cache_ttl),
            "facts.poll_interval_ms" => ms(f.poll_interval),
            "facts.busy_timeout_ms" => ms(f.busy_timeout),
            "db_wait_ms" => ms(s.db_wait),
            "log.format" => if s.log_json { "`json`" } else { "`text`" }.to_owned(),
            "log.level" => format!("`{}`", s.log_level),
            "trusted_proxies" | "groups" | "tls.cert" | "tls.key" => {
                assert!(s.trusted_proxies.is_empty() && s.groups.is_none() && s.tls.is_none());
                "none".to_owned()
            }
            // Environment-derived or computed defaults, described in words.
            _ => return None,
        })
    };
    let mut compared = 0;
    for doc in SETTINGS {
        if let Some(value) = actual(doc.key) {
            assert_eq!(doc.default, value, "documented default of {}", doc.key);
            compared += 1;
        }
    }
    assert!(compared >= 25, "{compared}");
}

#[test]
fn kubernetes_service_link_variables_are_ignored_and_typos_still_refused() {
    // What a pod gets for Services named `invoke-guard` and `invoke-guard-metrics`.
    let links = [
        ("INVOKE_GUARD_PORT", "tcp://10.96.0.13:9091"),
        ("INVOKE_GUARD_PORT_9091_TCP", "tcp://10.96.0.13:9091"),
        ("INVOKE_GUARD_PORT_9091_TCP_PROTO", "tcp"),
        ("INVOKE_GUARD_PORT_9091_TCP_PORT", "9091"),
        ("INVOKE_GUARD_PORT_9091_TCP_ADDR", "10.96.0.13"),
        ("INVOKE_GUARD_SERVICE_HOST", "10.96.0.13"),
        ("INVOKE_GUARD_SERVICE_PORT", "9091"),
        ("INVOKE_GUARD_SERVICE_PORT_HTTP", "9091"),
        ("INVOKE_GUARD_METRICS_PORT", "tcp://[fd00::1]:9092"),
        ("INVOKE_GUARD_METRICS_SERVICE_HOST", "fd00::1"),
        ("INVOKE_GUARD_METRICS_SERVICE_PORT", "9092"),
    ];
    let (ok, err) = check_layered("", &links, &[]);
    assert!(ok, "{err}");
    // A setting spelt like a link but without a link's value is not one.
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_PORT", "9091")], &[]);
    assert!(!ok && err.contains("INVOKE_GUARD_PORT:"), "{err}");
    // A misspelt setting beside the links: refused, named, with the nearest key.
    let mut env = links.to_vec();
    env.push(("INVOKE_GUARD_LISTN", "127.0.0.1:1"));
    let (ok, err) = check_layered("", &env, &[]);
    assert!(
        !ok && err.contains("INVOKE_GUARD_LISTN") && err.contains("did you mean 'listen'?"),
        "{err}"
    );
}

#[test]
fn set_and_environment_errors_name_what_the_operator_wrote() {
    let (ok, err) = check_layered("", &[], &["--set", "limits.max_body_byte=1"]);
    assert!(!ok);
    assert!(
        err.contains("--set limits.max_body_byte=1") && !err.contains("TOML source string"),
        "{err}"
    );
    assert!(err.contains("did you mean 'max_body_bytes'?"), "{err}");
    let (ok, err) = check_layered("", &[], &["--set", "limits.max_body_bytes=lots"]);
    assert!(
        !ok && err.contains("--set limits.max_body_bytes=lots") && !err.contains("TOML source"),
        "{err}"
    );
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_LIMITS__MAX_BODY_BYTE", "1")], &[]);
    assert!(
        !ok && err.contains("INVOKE_GUARD_LIMITS__MAX_BODY_BYTE:"),
        "names the variable: {err}"
    );
    let (ok, err) = check_layered("", &[("INVOKE_GUARD_LIMITS__MAX_BODY_BYTES", "lots")], &[]);
    assert!(
        !ok && err.contains("INVOKE_GUARD_LIMITS__MAX_BODY_BYTES:"),
        "names the variable: {err}"
    );
}

#[test]
fn commands_list_only_the_flags_they_use() {
    let help = |cmd: &str| {
        let out = bin().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let serve = help("serve");
    for flag in [
        "--listen",
        "--admin-listen",
        "--upstream",
        "--tls-cert",
        "--db",
        "--routes",
        "--set",
    ] {
        assert!(serve.contains(flag), "serve lacks {flag}:\n{serve}");
    }
    for cmd in ["explain", "test"] {
        let text = help(cmd);
        for unused in [
            "--listen",
            "--admin-listen",
            "--upstream",
            "--tls-cert",
            "--tls-key",
        ] {
            assert!(!text.contains(unused), "{cmd} lists {unused}:\n{text}");
        }
        for used in [
            "--db", "--routes", "--ledger", "--groups", "--config", "--set",
        ] {
            assert!(text.contains(used), "{cmd} lacks {used}:\n{text}");
        }
    }
    let health = help("health");
    for unused in [
        "--db",
        "--routes",
        "--ledger",
        "--groups",
        "--listen",
        "--upstream",
        "--tls-cert",
    ] {
        assert!(!health.contains(unused), "health lists {unused}:\n{health}");
    }
}

#[test]
fn check_warns_about_group_members_that_match_no_user() {
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("groups.toml");
    std::fs::write(
        &groups,
        "[groups]\nauditors = [\"Alice@Example.com\", \"alise@example.com\"]\n",
    )
    .unwrap();
    let (ok, out, err) = check_with(
        &[
            "--config",
            "/dev/null",
            "--ledger",
            dir.path().join("ledger.db").to_str().unwrap(),
            "--groups",
            groups.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("'alise@example.com'") && warnings[0].contains("'auditors'"),
        "{out}"
    );
}

#[test]
fn check_does_not_call_a_shadowed_admin_rule_unenforced() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string("routes.toml").unwrap();
    let marked = shipped.replacen(
        "id      = \"auth.users_list\"\n",
        "id      = \"auth.users_list\"\nmode    = \"shadow\"\n",
        1,
    );
    assert_ne!(marked, shipped);
    let routes = routes_file(&dir, &marked);
    let out = bin()
        .args(["check", "--config", "/dev/null", "--routes"])
        .arg(&routes)
        .arg("--db")
        .arg(fixture_db())
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("auth.users_list"))
        .unwrap_or_else(|| panic!("no warning names it: {stdout}"));
    assert!(!line.contains("not enforced"), "{line}");
    assert!(line.contains("still admin-only"), "{line}");
}
