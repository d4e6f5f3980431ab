//! Deployment artefacts, as far as this machine can check them without a container engine
//! (scripts/deploy/validate.sh checks the Kubernetes and Compose files against their schemas):
//! the Dockerfile's promises, the kustomize base's routes in sync with routes.toml,
//! `invoke-guard health` against a running guard, and a start that waits for the database.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

#[test]
fn dockerfile_pins_bases_by_digest_runs_static_non_root_with_a_healthcheck() {
    let text = repo("Dockerfile");
    let args: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ARG ") && l.contains("_IMAGE="))
        .collect();
    assert_eq!(args.len(), 2, "{args:?}");
    for arg in &args {
        let (_, reference) = arg.split_once('=').unwrap();
        let (tag, digest) = reference
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("not pinned: {arg}"));
        assert!(tag.contains(':'), "keep the tag beside the digest: {arg}");
        assert!(
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{arg}"
        );
    }
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        ["FROM ${BUILD_IMAGE} AS build", "FROM ${RUNTIME_IMAGE}"],
        "every base comes from a pinned ARG"
    );
    assert!(text.contains("distroless/static"), "static runtime");
    assert!(
        text.contains("-unknown-linux-musl"),
        "a static (musl) binary"
    );
    assert!(
        text.contains("not a dynamic executable|statically linked"),
        "the build proves it is static"
    );
    let runtime = &text[text.find("FROM ${RUNTIME_IMAGE}").unwrap()..];
    let user = runtime
        .lines()
        .find(|l| l.starts_with("USER "))
        .expect("a USER in the runtime stage");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    assert!(runtime.contains("HEALTHCHECK"), "a HEALTHCHECK");
    assert!(
        runtime.contains("CMD [\"/usr/local/bin/invoke-guard\", \"health\"]"),
        "the HEALTHCHECK asks `invoke-guard health`"
    );
    assert!(
        runtime.contains("INVOKE_GUARD_ADMIN_LISTEN=127.0.0.1:"),
        "admin on loopback unless configured"
    );
    assert!(!runtime.contains("0.0.0.0:9092"));
    assert!(
        runtime.contains("--chown=65532:65532 /rootfs/var/lib/invoke-guard"),
        "a writable ledger volume"
    );
}

#[test]
fn the_kustomize_base_generates_its_routes_from_a_copy_of_routes_toml() {
    assert!(
        repo("deploy/kubernetes/routes.toml") == repo("routes.toml"),
        "deploy/kubernetes/routes.toml is stale: run deploy/kubernetes/gen-routes.sh"
    );
    let k = repo("deploy/kubernetes/kustomization.yaml");
    for needle in [
        "configMapGenerator:",
        "name: invoke-guard-routes",
        "- routes.toml",
        "name: invoke-guard-groups",
        "- groups.toml",
    ] {
        assert!(k.contains(needle), "kustomization.yaml lacks {needle}");
    }
    // Hash suffixes are on (the default): no generator option turns them off.
    assert!(!k.contains("disableNameSuffixHash"), "{k}");
    // The groups file the base ships loads (no groups).
    invoke_guard::rules::Groups::parse("groups.toml", &repo("deploy/kubernetes/groups.toml"))
        .unwrap();
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_invoke-guard"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("INVOKE_GUARD_LOG")
        .env_remove("INVOKE_GUARD_CONFIG");
    c
}

/// `serve` on 127.0.0.1:0 (admin too) with the shipped routes, its ledger in `dir`; its stderr lines.
fn serve(
    upstream: &str,
    dir: &Path,
    db: &Path,
    extra: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    let mut child = bin()
        .args([
            "serve",
            "--config",
            "/dev/null",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--routes",
            "routes.toml",
        ])
        .args(extra)
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .arg("--db")
        .arg(db)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

fn health(admin: &str) -> (bool, String) {
    health_with(admin, &[])
}

/// `invoke-guard health --admin ADMIN` with `extra` flags: (exit 0, stdout + stderr).
fn health_with(admin: &str, extra: &[&str]) -> (bool, String) {
    let out = bin()
        .args(["health", "--config", "/dev/null", "--admin", admin])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn health_follows_readiness_of_a_running_guard() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there (yet): unhealthy, and the message says where it asked.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (ok, text) = health(&free);
    assert!(!ok && text.contains(&free), "{text}");
    // An upstream that accepts connections (readiness asks for one; the kernel's backlog answers).
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let (mut child, mut lines) = serve(
        &upstream_url,
        dir.path(),
        &common::fixture_path("invokeai-6.14.2-rich.db"),
        &[],
    );
    let started = lines
        .find_map(|l| l.ok().filter(|l| l.contains("invoke-guard started")))
        .expect("a start line");
    let field = |name: &str| {
        let at = started
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{started}"))
            + name.len()
            + 1;
        started[at..].split_whitespace().next().unwrap().to_owned()
    };
    let admin = field("admin");
    let (ok, text) = health(&admin);
    assert!(ok, "{text}");
    assert!(text.contains("ready: "), "{text}");
    // Shutdown begins: not ready any more, while the process still serves.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ok, text) = health(&admin);
        if !ok {
            assert!(
                text.contains("503") && text.contains("shutting down"),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still healthy after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (alive, text) = health_with(&admin, &["--live"]);
    assert!(alive, "alive during the delay: {text}");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_build_image_is_new_enough_for_the_crate() {
    let version = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    let cargo = repo("Cargo.toml");
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("rust-version in Cargo.toml");
    let docker = repo("Dockerfile");
    let tag = docker
        .lines()
        .find_map(|l| l.strip_prefix("ARG BUILD_IMAGE=rust:"))
        .and_then(|r| r.split('-').next())
        .expect("a rust:X.Y-... build image");
    assert!(
        version(tag) >= version(msrv),
        "Dockerfile builds with Rust {tag}, Cargo.toml needs {msrv}"
    );
}

#[test]
fn serve_waits_for_the_database_of_a_first_install_not_ready_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("databases").join("invokeai.db");
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let (mut child, mut lines) = serve(
        &upstream_url,
        dir.path(),
        &db,
        &["--set", "db_wait_ms=120000"],
    );
    let waiting = lines
        .find_map(|l| {
            l.ok()
                .filter(|l| l.contains("waiting for InvokeAI's database"))
        })
        .expect("a waiting line (the guard must not exit)");
    let at = waiting.find("admin=").expect("the admin address") + "admin=".len();
    let admin = waiting[at..].split_whitespace().next().unwrap().to_owned();
    // Alive, not ready, and it says why.
    let (ok, text) = health(&admin);
    assert!(
        !ok && text.contains("503") && text.contains("waiting for InvokeAI's database"),
        "{text}"
    );
    let (alive, text) = health_with(&admin, &["--live"]);
    assert!(alive, "{text}");
    // InvokeAI creates its database: the guard starts for real and becomes ready.
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(common::fixture_path("invokeai-6.14.2-rich.db"), &db).unwrap();
    let started = lines
        .find_map(|l| l.ok().filter(|l| l.contains("invoke-guard started")))
        .expect("started once the database appeared");
    assert!(started.contains(&format!("admin={admin}")), "{started}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, text) = health(&admin);
        if ok {
            assert!(text.contains("ready: "), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for sig in ["-TERM", "-INT"] {
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
}
