//! `invoke-guard test` and `invoke-guard explain` as an operator runs them (the real binary), and
//! the agreement between `explain` and the decision log line of the running guard.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use invoke_guard::cli::ruletest;
use invoke_guard::server::evaluate as trial;
use serde_json::Value;

fn bin() -> Command {
    guard_command()
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn shipped_rule_tests_pass_for_both_fixtures() {
    let out = bin()
        .args([
            "test",
            "tests/data/policy/6.12.0.toml",
            "tests/data/policy/6.14.2.toml",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("invoke-guard test: 278 passed, 0 failed"),
        "{stdout}"
    );
}

/// A rule test can expect the upstream request(s) serve sends; a wrong one fails with a diff.
#[test]
fn rule_tests_assert_the_upstream_requests() {
    let m = manifest("6.12.0");
    let alice_image = m["images"]["alice_private_1"]["image_name"]
        .as_str()
        .unwrap();
    let bob_image = m["images"]["bob_private_1"]["image_name"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream.toml");
    let write = |upstream_target: &str, body: &str| {
        std::fs::write(
            &file,
            format!(
                r#"db = "{db}"
routes = "{routes}"

[[case]]
name = "bob's gallery page is hydrated by images_by_names"
caller = "bob@example.com"
method = "GET"
path = "/api/v1/images/?offset=0&limit=10"
expect = "allow"
upstream = [{{ method = "POST", target = "{upstream_target}" }}]

[[case]]
name = "a batch delete keeps only the writable names"
caller = "alice@example.com"
method = "POST"
path = "/api/v1/images/delete"
body = {{ image_names = ["{alice_image}", "{bob_image}"] }}
expect = "allow"
upstream = [{{ method = "POST", target = "/api/v1/images/delete", body = {body} }}]

[[case]]
name = "a public body over the limit is the guard's 413"
caller = "anonymous"
method = "POST"
path = "/api/v1/auth/login"
body = '{{"email": "{long}", "password": "x"}}'
expect = 413
check = "body"
"#,
                db = repo("tests/fixtures/invokeai-6.12.0-rich.db").display(),
                routes = repo("routes.toml").display(),
                long = "a".repeat(70_000),
            ),
        )
        .unwrap();
    };
    write(
        "/api/v1/images/images_by_names",
        &format!(r#"{{ image_names = ["{alice_image}"] }}"#),
    );
    let out = bin().arg("test").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    // The same file expecting what serve does not send fails, naming both.
    write(
        "/api/v1/images/",
        &format!(r#"{{ image_names = ["{bob_image}"] }}"#),
    );
    let out = bin().arg("test").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");
    assert!(
        stdout.contains("- upstream POST /api/v1/images/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ upstream POST /api/v1/images/images_by_names"),
        "{stdout}"
    );
}

/// `explain --json` on the cases issue #18 named: what serve sends, in its stable fields.
#[test]
fn explain_json_shows_the_upstream_requests_serve_sends() {
    let m = manifest("6.12.0");
    let db = repo("tests/fixtures/invokeai-6.12.0-rich.db");
    let explain = |args: &[&str]| -> Value {
        let out = bin()
            .arg("explain")
            .args(args)
            .arg("--json")
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let page = explain(&[
        "GET",
        "/api/v1/images/?offset=0&limit=10",
        "--as",
        "bob@example.com",
    ]);
    assert_eq!(page["status"], Value::Null, "{page}");
    assert_eq!(page["decision"], "allow");
    assert_eq!(page["upstream"][0]["method"], "POST");
    assert_eq!(
        page["upstream"][0]["target"],
        "/api/v1/images/images_by_names"
    );
    assert!(
        page["upstream"][0]["body"]["image_names"].is_array(),
        "{page}"
    );
    assert_eq!(page["filters"], serde_json::json!(["own_image_page"]));
    let bad = explain(&["GET", "/api/v1/images/?offset=x", "--as", "bob@example.com"]);
    assert_eq!(bad["status"], 422, "{bad}");
    assert_eq!(bad["upstream"], serde_json::json!([]));
    assert_eq!(bad["decided_by"], "plan");
    let wide = explain(&[
        "GET",
        "/api/v1/workflows/?page=0&per_page=5",
        "--as",
        "bob@example.com",
    ]);
    assert_eq!(
        wide["upstream"][0]["target"], "/api/v1/workflows/?page=0&per_page=50000",
        "{wide}"
    );
    let board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    let target = format!("/api/v1/boards/{board}?include_images=true");
    let delete = explain(&["DELETE", &target, "--as", "alice@example.com"]);
    let calls: Vec<(String, String)> = delete["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap().into(),
                c["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("POST".to_owned(), "/api/v1/images/delete".to_owned()),
            (
                "DELETE".to_owned(),
                format!("/api/v1/boards/{board}?include_images=false")
            ),
        ],
        "{delete}"
    );
}

#[test]
fn weakening_a_rule_fails_the_rule_tests_loudly() {
    // An admin "simplifies" image reads: the private-image cases must catch it.
    let routes = std::fs::read_to_string(repo("routes.toml")).unwrap();
    let weakened = routes.replacen(
        "path    = \"/api/v1/images/i/{image_name}\"\nauth    = \"user\"\nrequire = [\"image.read(path.image_name)\"]",
        "path    = \"/api/v1/images/i/{image_name}\"\nauth    = \"user\"\nrequire = []",
        1,
    );
    assert_ne!(
        weakened, routes,
        "the images.get rule was not found to weaken"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, weakened).unwrap();
    let out = bin()
        .args(["test", "tests/data/policy/6.14.2.toml", "--routes"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("\"private image: other user\""), "{stdout}");
    assert!(stdout.contains("- expect 403"), "{stdout}");
    assert!(stdout.contains("+ got    allow"), "{stdout}");
    assert!(!stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn a_broken_test_file_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[[case]]\nname = \"x\"\ncaller = \"anonymous\"\nmethod = \"GET\"\npath = \"/\"\nexpect = \"allow\"\nexpext = 1\n",
    )
    .unwrap();
    let out = bin()
        .arg("test")
        .arg(&path)
        .args(["--db", "tests/fixtures/invokeai-6.14.2-rich.db"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":7:") && stderr.contains("expext"),
        "{stderr}"
    );
}

#[test]
fn the_example_rule_tests_pass() {
    let out = bin()
        .args([
            "test",
            "config/rule-tests.example.toml",
            "--db",
            "tests/fixtures/invokeai-6.14.2-rich.db",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn explain_prints_rule_checks_facts_and_answer() {
    let m = manifest("6.14.2");
    let img = m["images"]["alice_private_1"]["image_name"]
        .as_str()
        .unwrap();
    let out = bin()
        .args([
            "explain",
            "GET",
            &format!("/api/v1/images/i/{img}"),
            "--as",
            "bob@example.com",
        ])
        .args(["--db", "tests/fixtures/invokeai-6.14.2-rich.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "a denial exits 3: {text}");
    for want in [
        "rule      images.get",
        "# Read an ImageDTO",
        "caller    bob@example.com",
        "[x] image.read(path.image_name)",
        &format!(
            "fact: image {img}: owner={}",
            m["users"]["alice"]["user_id"].as_str().unwrap()
        ),
        "decided   image.read",
        "answer    403 {\"detail\":\"Not authorized to access image",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // JSON for tools; the owner's own read is an allow (exit 0).
    let out = bin()
        .args([
            "explain",
            "GET",
            &format!("/api/v1/images/i/{img}"),
            "--as",
            "alice@example.com",
            "--json",
        ])
        .args(["--db", "tests/fixtures/invokeai-6.14.2-rich.db"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["checks"][0]["result"], "held");
    // No token ever appears.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("eyJ"));
}

/// Captured decision log lines (JSON) of the guard running in this test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

#[tokio::test]
async fn explain_agrees_with_the_decision_log_for_a_sample_of_the_matrix() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The filter decides which lines are written; the decision log writes them itself.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter("invoke_guard::decision=info")
        .init();
    invoke_guard::decisionlog::install(invoke_guard::decisionlog::Format::Json, move |line| {
        writer.0.lock().unwrap().extend_from_slice(line)
    });
    for version in ["6.12.0", "6.14.2"] {
        let file = repo(&format!("tests/data/policy/{version}.toml"));
        let loaded = ruletest::load(&file).unwrap();
        let engine = trial::Engine::open(
            &repo("routes.toml"),
            &fixture_path(&format!("invokeai-{version}-rich.db")),
            None,
        )
        .unwrap();
        ruletest::seed(&loaded, &engine).await.unwrap();
        let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
        // Where the guard recomputes a 6.12 list, the mock answers as the old server would.
        let up = mock(Some(std::sync::Arc::new(|seen: &Seen| {
            if seen.target == "/api/v1/images/images_by_names" {
                ok_json(serde_json::json!([]))
            } else {
                ok_json(serde_json::json!({"ok": true}))
            }
        })))
        .await;
        let g = guard(&shipped_routes(), &db.path, &up.url()).await;
        let m = manifest(version);
        let mut compared = 0;
        // Every third case that is neither a body case nor one needing the ledger: a spread sample.
        for case in loaded.file.case.iter().map(|c| c.get_ref()).step_by(3) {
            if case.body.is_some() || case.form.is_some() || case.path.contains("download") {
                continue;
            }
            let ex = engine.run(&case.trial().unwrap()).await.unwrap();
            let token = match case.caller.as_str() {
                "anonymous" => None,
                email => {
                    let role = m["users"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .find(|(_, u)| u["email"] == email)
                        .map(|(r, _)| r.clone())
                        .unwrap();
                    let mut c = claims_for(&m, &role);
                    for (k, v) in case.claims.iter().flatten() {
                        c[k] = serde_json::to_value(v).unwrap();
                    }
                    Some(sign(&c, m["jwt"]["secret"].as_str().unwrap()))
                }
            };
            captured.0.lock().unwrap().clear();
            let r = send(
                &case.method,
                &g.url(&case.trial().unwrap().target),
                token.as_deref(),
                None,
            )
            .await;
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let line: Value = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| {
                    l["target"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("invoke_guard::decision::"))
                })
                .unwrap_or_else(|| panic!("no decision line for {}: {text}", case.name));
            let f = &line["fields"];
            let what = format!(
                "{version} \"{}\": explain {} / log {f}",
                case.name,
                ex.human()
            );
            assert_eq!(f["check"], ex.decided_by, "{what}");
            assert_eq!(f["rule_id"], ex.rule_id.as_deref().unwrap_or("-"), "{what}");
            let logged_status = f["status"].as_u64().unwrap() as u16;
            match ex.status {
                None => assert_eq!(f["outcome"], "allow", "{what}"),
                Some(status) => {
                    assert_eq!(logged_status, status, "{what}");
                    assert_eq!(r.status.as_u16(), status, "{what}");
                }
            }
            if let Some(deciding) = ex.verdict.deciding() {
                assert_eq!(f["facts"], deciding.facts.join("; "), "{what}");
            }
            compared += 1;
        }
        assert!(compared >= 25, "{version}: only {compared} cases compared");
    }
}
