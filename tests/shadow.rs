//! Shadow mode: a shadowed rule's check denials are logged, counted as `would_deny` and
//! forwarded; enforced rules answer exactly as before, and identity is never shadowed.

mod common;

use std::path::Path;

use common::*;
use invoke_guard::cli::ruletest;
use invoke_guard::config::RawConfig;
use invoke_guard::rules::Mode;
use invoke_guard::server::evaluate as trial;
use serde_json::json;

/// The shipped routes with every other rule in shadow mode (blocked routes cannot be).
fn half_shadowed(routes: &str) -> String {
    let mut out = String::new();
    for (i, part) in routes.split("[[rule]]\n").enumerate() {
        if i > 0 {
            out.push_str("[[rule]]\n");
            if i % 2 == 0 && !part.contains("\nblock") {
                out.push_str("mode = \"shadow\"\n");
            }
        }
        out.push_str(part);
    }
    out
}

/// For every case of the policy matrix: a rule that is not shadowed answers exactly as with the
/// shipped table (status, deciding check); a shadowed rule forwards, and what it would have
/// answered is the enforced answer.
async fn shadow_keeps_enforced_answers(version: &str) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/policy/{version}.toml"));
    let loaded = ruletest::load(&path).unwrap();
    let routes = loaded.relative(loaded.file.routes.as_ref().unwrap());
    let db = loaded.relative(loaded.file.db.as_ref().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let shadowed_routes = dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&shadowed_routes, half_shadowed(&text)).unwrap();
    let enforced = trial::Engine::open(&routes, &db, None).unwrap();
    let shadowed = trial::Engine::open(&shadowed_routes, &db, None).unwrap();
    ruletest::seed(&loaded, &enforced).await.unwrap();
    ruletest::seed(&loaded, &shadowed).await.unwrap();
    let shadow_ids: Vec<String> = shadowed
        .routes
        .shadow_rules(Mode::Enforce)
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert!(shadow_ids.len() > 50, "{}", shadow_ids.len());
    let (mut same, mut would_deny) = (0, 0);
    for case in &loaded.file.case {
        let t = case.get_ref().trial().unwrap();
        let a = enforced.run(&t).await.unwrap();
        let b = shadowed.run(&t).await.unwrap();
        assert_eq!(a.rule_id, b.rule_id);
        assert_eq!(a.would_deny(), None);
        let name = &case.get_ref().name;
        let in_shadow = b.rule_id.as_ref().is_some_and(|id| shadow_ids.contains(id));
        let check_denial =
            a.status.is_some() && a.verdict.stage == invoke_guard::decision::Stage::Check;
        // Only a resource check's refusal of a read is a dry run; everything else stays enforced.
        let dry = check_denial
            && matches!(t.method.as_str(), "GET" | "HEAD")
            && a.verdict.deciding().is_some_and(|c| {
                c.predicate.info().shadow == invoke_guard::rules::vocab::Shadow::Dry
            });
        if in_shadow && dry {
            // Forwarded, and the would-be answer is the enforced one, with the same provenance.
            assert_eq!(b.status, None, "{name}");
            assert!(b.forwarded(), "{name}");
            assert_eq!(b.would_deny(), a.status, "{name}");
            assert_eq!(b.verdict, a.verdict, "{name}");
            would_deny += 1;
        } else {
            assert_eq!(
                (b.status, b.would_deny(), b.decided_by),
                (a.status, None, a.decided_by),
                "{name}: the answer changed"
            );
            same += 1;
        }
    }
    assert!(would_deny >= 3 && same > 10, "{would_deny} {same}");
}

#[tokio::test]
async fn shadow_never_changes_an_enforced_rule_answer_6_14() {
    shadow_keeps_enforced_answers("6.14.2").await;
}

#[tokio::test]
async fn shadow_never_changes_an_enforced_rule_answer_6_12() {
    shadow_keeps_enforced_answers("6.12.0").await;
}

const ROUTES: &str = r#"
[[rule]]
id = "images.get"
methods = ["GET"]
path = "/api/v1/images/i/{image_name}"
auth = "user"
require = ["image.read(path.image_name)"]
mode = "shadow"

[[rule]]
id = "boards.get"
methods = ["GET"]
path = "/api/v1/boards/{board_id}"
auth = "user"
require = ["board.read(path.board_id)"]

[[rule]]
id = "users.list"
methods = ["GET"]
path = "/api/v1/auth/users"
auth = "admin"
"#;

#[tokio::test]
async fn a_shadow_rule_forwards_and_counts_would_deny_while_others_enforce() {
    let m = manifest("6.14.2");
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    let bob = token_for(&m, "bob");
    let image = m["images"]["alice_private_1"]["image_name"]
        .as_str()
        .unwrap();
    let board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    // Shadowed: bob may not read alice's private image, but the request is forwarded.
    let before = up.count();
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/images/i/{image}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), before + 1);
    // Enforced: the same caller on a rule without `mode` is refused and nothing is forwarded.
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/boards/{board}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), before + 1);
    // Identity is never shadowed.
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/images/i/{image}")),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), before + 1);
    let metrics = invoke_guard::metrics::render();
    assert!(
        metrics.contains("invoke_guard_authz_decisions_total{decision=\"would_deny\",rule_id=\"images.get\",check=\"image.read\",reason=\"forbidden\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn global_shadow_forwards_check_denials_but_not_auth_or_identity() {
    let m = manifest("6.14.2");
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let raw: RawConfig = toml::from_str("mode = \"shadow\"").unwrap();
    let g = guard_with(ROUTES, &db.path, &up.url(), raw).await;
    assert_eq!(g.state.routes.load().shadow_rules(g.state.mode).len(), 3);
    // Visible in the readiness body.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}/readyz", admin.local_addr().unwrap());
    tokio::spawn(invoke_guard::server::admin::run(
        admin,
        g.state.clone(),
        std::future::pending(),
    ));
    let ready = send("GET", &admin_url, None, None).await;
    assert_eq!(ready.status, 200);
    assert!(
        String::from_utf8_lossy(&ready.body).contains("SHADOW MODE"),
        "{:?}",
        ready.body
    );
    let bob = token_for(&m, "bob");
    let board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/boards/{board}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a check denial is forwarded under global shadow"
    );
    let before = up.count();
    // `auth = "admin"` and identity stay enforced; so does deny-by-default.
    assert_eq!(
        send("GET", &g.url("/api/v1/auth/users"), Some(&bob), None)
            .await
            .status,
        403
    );
    assert_eq!(
        send("GET", &g.url("/api/v1/auth/users"), None, None)
            .await
            .status,
        401
    );
    assert_eq!(
        send("GET", &g.url("/api/v1/nowhere"), Some(&bob), None)
            .await
            .status,
        404
    );
    assert_eq!(up.count(), before);
}

#[test]
fn shadow_mode_is_never_the_default_and_only_takes_known_words() {
    let table = invoke_guard::rules::RouteTable::parse("r.toml", ROUTES).unwrap();
    let modes: Vec<Mode> = table.rules().iter().map(|r| r.mode).collect();
    assert_eq!(modes, [Mode::Shadow, Mode::Enforce, Mode::Enforce]);
    let settings =
        invoke_guard::config::settings(RawConfig::default(), Default::default()).unwrap();
    assert_eq!(settings.mode, Mode::Enforce);
    let bad = ROUTES.replace("mode = \"shadow\"", "mode = \"dry\"");
    let e = invoke_guard::rules::RouteTable::parse("r.toml", &bad).unwrap_err();
    assert!(e.to_string().contains("unknown variant `dry`"), "{e}");
    assert!(toml::from_str::<RawConfig>("mode = \"off\"").is_err());
}

#[test]
fn check_and_rule_tests_show_shadow_rules() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_routes();
    let marked = shipped.replacen(
        "id      = \"images.get\"\n",
        "id      = \"images.get\"\nmode    = \"shadow\"\n",
        1,
    );
    assert_ne!(marked, shipped, "images.get not found");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, marked).unwrap();
    let db = fixture_path("invokeai-6.14.2-rich.db");
    let bin = env!("CARGO_BIN_EXE_invoke-guard");
    let out = std::process::Command::new(bin)
        .args(["check", "--config", "/dev/null", "--routes"])
        .arg(&routes)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: SHADOW: 1 rule(s) in shadow mode")
            && stdout.contains("images.get")
            && stdout.contains("never shadowed: any write")
            && stdout.contains("admin_unless_upstream"),
        "{stdout}"
    );
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "shadowed: forwarded, would deny"
caller = "bob@example.com"
method = "GET"
path = "/api/v1/images/i/fa7a7dec-f502-46f8-96a4-df8191e8b2ad.png"
expect = "would_deny"
check = "image.read"

[[case]]
name = "a 403 expectation fails loudly on a shadowed rule"
caller = "bob@example.com"
method = "GET"
path = "/api/v1/images/i/fa7a7dec-f502-46f8-96a4-df8191e8b2ad.png"
expect = 403
"#,
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["test", "--config", "/dev/null", "--routes"])
        .arg(&routes)
        .arg("--db")
        .arg(&db)
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    assert!(
        stdout.contains("+ got    would_deny 403 (shadow mode)"),
        "{stdout}"
    );
}

/// A dry run must not do what enforcement exists to prevent (issue #19 item 2): with every rule in
/// shadow mode on 6.12, bob's delete of every user's uncategorized images, a login as `system`, an
/// admin-only write, a demotion of the last admin and a write to someone else's board are refused
/// and never reach InvokeAI, while a read another user may not make is a logged dry run.
#[tokio::test]
async fn global_shadow_never_forwards_destructive_account_or_admin_refusals() {
    let m = manifest("6.12.0");
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let up = mock(None).await;
    let raw: RawConfig = toml::from_str("mode = \"shadow\"").unwrap();
    let g = guard_with(&shipped_routes(), &db.path, &up.url(), raw).await;
    let bob = token_for(&m, "bob");
    let admin = token_for(&m, "admin");
    let alice_board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
    let admin_id = m["users"]["admin"]["user_id"].as_str().unwrap();
    let refused = [
        (
            "DELETE",
            "/api/v1/images/uncategorized".to_owned(),
            Some(&bob),
            None,
            403,
        ),
        (
            "POST",
            "/api/v1/auth/login".to_owned(),
            None,
            Some(json!({"email": "system@system.invokeai", "password": "x"})),
            401,
        ),
        (
            "PATCH",
            format!("/api/v1/auth/users/{admin_id}"),
            Some(&admin),
            Some(json!({"is_admin": false})),
            400,
        ),
        (
            "PATCH",
            format!("/api/v1/boards/{alice_board}"),
            Some(&bob),
            Some(json!({"board_name": "mine now"})),
            403,
        ),
        (
            "DELETE",
            format!("/api/v1/boards/{alice_board}?include_images=true"),
            Some(&bob),
            None,
            403,
        ),
    ];
    for (method, path, token, body, status) in refused {
        let before = up.count();
        let r = send(method, &g.url(&path), token.map(String::as_str), body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.detail());
        assert_eq!(
            up.count(),
            before,
            "{method} {path} reached InvokeAI in shadow mode"
        );
    }
    // A read is the dry run shadow mode is for: logged as would_deny, forwarded.
    let before = up.count();
    let r = send(
        "GET",
        &g.url(&format!("/api/v1/boards/{alice_board}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), before + 1);
}

/// The candidate table (issue #19 item 2, Envoy's shadow rules): enforcement is unchanged, and
/// each request the candidate answers differently is logged and counted with both verdicts; a
/// candidate that fails to reload keeps the last good one.
#[tokio::test]
async fn a_candidate_table_is_compared_never_enforced() {
    let m = manifest("6.12.0");
    let db = copy_fixture("invokeai-6.12.0-rich.db");
    let up = mock(None).await;
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_routes();
    // The candidate opens image reads to everyone and makes board deletes admin-only.
    let candidate = shipped
        .replacen(
            "path    = \"/api/v1/images/i/{image_name}\"\nauth    = \"user\"\nrequire = [\"image.read(path.image_name)\"]",
            "path    = \"/api/v1/images/i/{image_name}\"\nauth    = \"user\"\nrequire = []",
            1,
        );
    assert_ne!(candidate, shipped);
    let candidate_path = dir.path().join("candidate.toml");
    std::fs::write(&candidate_path, &candidate).unwrap();
    let raw = raw_config(&format!(
        "candidate_routes = {:?}",
        candidate_path.display().to_string()
    ));
    let g = guard_with(&shipped, &db.path, &up.url(), raw).await;
    let bob = token_for(&m, "bob");
    let alice = token_for(&m, "alice");
    let image = m["images"]["alice_private_1"]["image_name"]
        .as_str()
        .unwrap();
    let url = g.url(&format!("/api/v1/images/i/{image}"));
    let before = up.count();
    let r = send("GET", &url, Some(&bob), None).await;
    assert_eq!(r.status, 403, "the enforced table still decides");
    assert_eq!(up.count(), before, "the candidate forwards nothing");
    // The owner's read: both tables forward; no difference.
    assert_eq!(send("GET", &url, Some(&alice), None).await.status, 200);
    let metrics = invoke_guard::metrics::render();
    let line = "invoke_guard_candidate_differences_total{rule_id=\"images.get\",enforced=\"403\",candidate=\"forward\"} 1";
    assert!(metrics.contains(line), "{metrics}");
    assert!(
        !metrics.contains("enforced=\"forward\",candidate=\"forward\""),
        "{metrics}"
    );
    // A broken candidate keeps the last good one (and the enforced table is untouched).
    std::fs::write(&candidate_path, "[[rule]]\nid = \"broken\"").unwrap();
    let _ = g.state.reload_routes();
    assert_eq!(send("GET", &url, Some(&bob), None).await.status, 403);
    let metrics = invoke_guard::metrics::render();
    let line2 = "invoke_guard_candidate_differences_total{rule_id=\"images.get\",enforced=\"403\",candidate=\"forward\"} 2";
    assert!(metrics.contains(line2), "{metrics}");
    // explain shows both verdicts.
    let good = dir.path().join("good.toml");
    let explain = || {
        let target = format!("/api/v1/images/i/{image}");
        guard_command()
            .args([
                "explain",
                "GET",
                &target,
                "--as",
                "bob@example.com",
                "--json",
                "--db",
            ])
            .arg(&db.path)
            .arg("--set")
            .arg(format!("candidate_routes={}", good.display()))
            .output()
            .unwrap()
    };
    // (good.toml does not exist yet: explain names the file it cannot read)
    assert!(!explain().status.success());
    std::fs::write(&good, &candidate).unwrap();
    let out = explain();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["status"], 403);
    assert_eq!(v["candidate"]["answer"], "forward", "{v}");
    assert_eq!(v["candidate"]["differs"], true);
}
