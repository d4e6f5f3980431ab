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
            &["routes.toml:3", "rule 'a'", "unknown predicate 'image.reed'"],
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
            "unknown capability",
            format!("{GOOD}require = [\"admin_unless_upstream(\\\"time_travel\\\")\"]\n"),
            &["unknown upstream capability"],
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
    send_signal(child.id(), "TERM");
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
}

fn send_signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
}
