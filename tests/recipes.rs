//! The recipes of docs/rules.md ("Recipes"): each transform in config/recipes/ applied to the
//! shipped routes.toml still passes `check` (every endpoint covered) and passes its rule tests,
//! which the shipped table fails (so the cases test the recipe); and caller groups reload with
//! the routes, refusing a table that names an unknown group.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use invoke_guard::config::{self, Overrides, RawConfig};
use invoke_guard::state::AppState;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bin() -> Command {
    let mut c = common::guard_command();
    c.env_remove("INVOKE_GUARD_GROUPS");
    c
}

/// Apply a recipe as docs/rules.md says to, into `out`.
fn apply(recipe: &str, out: &Path) {
    let script = repo(&format!("config/recipes/{recipe}"));
    let mut cmd = if recipe.ends_with(".sed") {
        let mut c = Command::new("sed");
        c.arg("-E").arg("-f").arg(&script);
        c
    } else {
        let mut c = Command::new("awk");
        c.arg("-f").arg(&script);
        c
    };
    let result = cmd.arg(repo("routes.toml")).output().unwrap();
    assert!(
        result.status.success(),
        "{recipe}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::write(out, &result.stdout).unwrap();
}

fn run_tests(cases: &str, routes: &Path) -> (Option<i32>, String) {
    let out = bin()
        .args(["test", "--config", "/dev/null", "--routes"])
        .arg(routes)
        .arg(repo(cases))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_recipe_keeps_coverage_and_passes_its_rule_tests_which_the_shipped_table_fails() {
    let dir = tempfile::tempdir().unwrap();
    for (recipe, groups) in [
        ("public-boards-read-only.sed", None),
        ("model-installers.awk", Some("config/groups.example.toml")),
        ("viewer-only.awk", None),
        ("auditors.sed", Some("config/groups.example.toml")),
    ] {
        let name = recipe.split('.').next().unwrap();
        let routes = dir.path().join(format!("{name}.toml"));
        apply(recipe, &routes);
        let mut check = bin();
        check
            .args(["check", "--config", "/dev/null", "--routes"])
            .arg(&routes)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .arg("--db")
            .arg(fixture_path("invokeai-6.14.2-rich.db"));
        if let Some(g) = groups {
            check.arg("--groups").arg(repo(g));
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "{recipe}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cases = format!("config/recipes/{name}.tests.toml");
        let (code, text) = run_tests(&cases, &routes);
        assert_eq!(code, Some(0), "{recipe}: {text}");
        assert!(text.contains(" 0 failed"), "{text}");
        let (code, text) = run_tests(&cases, &repo("routes.toml"));
        assert_eq!(
            code,
            Some(1),
            "{recipe}: the shipped table passes its cases: {text}"
        );
    }
}

const ROUTES: &str = r#"
[[rule]]
id = "models.install"
methods = ["POST"]
path = "/api/v2/models/install"
auth = "user"
require = ['caller.in("model-installers")']
"#;

#[tokio::test]
async fn groups_reload_with_routes_and_a_missing_group_keeps_the_last_good_table() {
    let m = manifest("6.14.2");
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let groups = dir.path().join("groups.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    std::fs::write(
        &groups,
        "[groups]\nmodel-installers = [\"ALICE@example.com\"]\n",
    )
    .unwrap();
    let settings = config::settings(
        RawConfig::default(),
        Overrides {
            upstream: Some(up.url()),
            db: Some(db.path.clone()),
            routes: Some(routes.clone()),
            groups: Some(groups.clone()),
            ledger: Some(dir.path().join("ledger.db")),
            ..Overrides::default()
        },
    )
    .unwrap();
    let state = AppState::from_settings(&settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(invoke_guard::server::run(
        listener,
        state.clone(),
        None,
        std::future::pending(),
    ));
    let url = format!("http://{addr}/api/v2/models/install");
    let (alice, bob) = (token_for(&m, "alice"), token_for(&m, "bob"));
    assert_eq!(send("POST", &url, Some(&alice), None).await.status, 200);
    assert_eq!(send("POST", &url, Some(&bob), None).await.status, 403);
    // Membership changes with the file.
    std::fs::write(
        &groups,
        "[groups]\nmodel-installers = [\"bob@example.com\"]\n",
    )
    .unwrap();
    state.reload_routes().unwrap();
    assert_eq!(send("POST", &url, Some(&alice), None).await.status, 403);
    assert_eq!(send("POST", &url, Some(&bob), None).await.status, 200);
    // A groups file that drops a group the routes use is refused; the last good table stays.
    std::fs::write(
        &groups,
        "[groups]\nmodel-installer = [\"alice@example.com\"]\n",
    )
    .unwrap();
    let e = state.reload_routes().unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown group \"model-installers\" (did you mean 'model-installer'?)"),
        "{e}"
    );
    assert_eq!(send("POST", &url, Some(&bob), None).await.status, 200);
    // Without a groups file, a table naming a group does not load at all.
    let e = invoke_guard::rules::RouteTable::parse("r.toml", ROUTES).unwrap_err();
    assert!(
        e.to_string().contains("no groups file is configured"),
        "{e}"
    );
}
