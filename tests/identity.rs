//! Identity through the running guard: tokens signed with the fixture's real secret.

mod common;

use common::*;
use serde_json::{json, Value};

const ROUTES: &str = r#"
[[rule]]
id = "auth.me"
methods = ["GET"]
path = "/api/v1/auth/me"
auth = "user"

[[rule]]
id = "auth.users.list"
methods = ["GET"]
path = "/api/v1/auth/users"
auth = "admin"

[[rule]]
id = "images.full"
methods = ["GET"]
path = "/api/v1/images/i/{image_name}/full"
auth = "media"
"#;

const VERSIONS: [&str; 2] = ["6.12.0", "6.14.2"];

async fn setup(version: &str) -> (DbCopy, Mock, Guard, Value) {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let up = mock(None).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    (db, up, g, manifest(version))
}

fn secret(m: &Value) -> String {
    m["jwt"]["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn valid_token_is_forwarded_with_identity() {
    for v in VERSIONS {
        let (_db, up, g, m) = setup(v).await;
        let r = send(
            "GET",
            &g.url("/api/v1/auth/me"),
            Some(&token_for(&m, "alice")),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{v}");
        let seen = up.last().unwrap();
        assert_eq!(
            forwarded_claims(&seen).unwrap()["user_id"],
            m["users"]["alice"]["user_id"]
        );
    }
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    for v in VERSIONS {
        let (_db, up, g, _m) = setup(v).await;
        let r = send("GET", &g.url("/api/v1/auth/me"), None, None).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(!r.detail().is_empty());
        assert_eq!(up.count(), 0);
    }
}

async fn assert_rejected(v: &str, token: String, why: &str) {
    let (_db, up, g, _m) = setup(v).await;
    let r = send("GET", &g.url("/api/v1/auth/me"), Some(&token), None).await;
    assert_eq!(r.status, 401, "{v}: {why}");
    assert_eq!(up.count(), 0, "{v}: {why} reached the upstream");
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for v in VERSIONS {
        let m = manifest(v);
        let s = secret(&m);
        let mut expired = claims_for(&m, "alice");
        expired["exp"] = json!(now() - 1);
        assert_rejected(v, sign(&expired, &s), "expired").await;
        let mut no_exp = claims_for(&m, "alice");
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_rejected(v, sign(&no_exp, &s), "no exp").await;
        let mut string_exp = claims_for(&m, "alice");
        string_exp["exp"] = json!((now() + 3600).to_string());
        assert_rejected(v, sign(&string_exp, &s), "exp as a string").await;
        assert_rejected(
            v,
            sign(&claims_for(&m, "alice"), "not-the-secret"),
            "wrong key",
        )
        .await;
        // Hex-decoded key bytes are not InvokeAI's key (it uses the string verbatim).
        let alice = claims_for(&m, "alice");
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&alice)
        );
        assert_rejected(v, none, "alg none").await;
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
            &alice,
            &jsonwebtoken::EncodingKey::from_secret(s.as_bytes()),
        )
        .unwrap();
        assert_rejected(v, hs384, "HS384").await;
        let good = sign(&alice, &s);
        let sig = good.rsplit('.').next().unwrap();
        let rs256 = format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": "RS256", "typ": "JWT"})),
            b64(&alice)
        );
        assert_rejected(v, rs256, "RS256 header").await;
        let mut admin = alice.clone();
        admin["is_admin"] = json!(true);
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(&admin), parts[2]);
        assert_rejected(v, tampered, "tampered payload").await;
        assert_rejected(v, "garbage".into(), "not a JWT").await;
        let mut system = alice.clone();
        system["user_id"] = json!("system");
        system["email"] = json!("system@system.invokeai");
        assert_rejected(v, sign(&system, &s), "system user").await;
        assert_rejected(v, token_for(&m, "dave"), "deactivated user").await;
        let mut ghost = alice.clone();
        ghost["user_id"] = json!("no-such-user");
        assert_rejected(v, sign(&ghost, &s), "unknown user").await;
    }
}

#[tokio::test]
async fn stale_epoch_is_rejected_where_the_schema_has_epochs() {
    let m = manifest("6.14.2");
    let mut c = claims_for(&m, "alice");
    c["token_epoch"] = json!(1);
    assert_rejected("6.14.2", sign(&c, &secret(&m)), "stale epoch").await;
    // 6.12 has no epoch column: an epoch claim is ignored, as InvokeAI 6.12 ignores it.
    let m = manifest("6.12.0");
    let mut c = claims_for(&m, "alice");
    c["token_epoch"] = json!(1);
    let (_db, _up, g, _) = setup("6.12.0").await;
    let r = send(
        "GET",
        &g.url("/api/v1/auth/me"),
        Some(&sign(&c, &secret(&m))),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn demoted_admin_is_not_admin_and_the_forwarded_token_says_so() {
    for v in VERSIONS {
        let (_db, up, g, m) = setup(v).await;
        let mut stale = claims_for(&m, "erin");
        stale["is_admin"] = json!(true); // her token from before the demotion
        let token = sign(&stale, &secret(&m));
        let r = send("GET", &g.url("/api/v1/auth/users"), Some(&token), None).await;
        assert_eq!(r.status, 403, "{v}");
        assert_eq!(r.detail(), "Admin privileges required");
        assert_eq!(up.count(), 0);
        let r = send("GET", &g.url("/api/v1/auth/me"), Some(&token), None).await;
        assert_eq!(r.status, 200);
        let seen = up.last().unwrap();
        let fwd = forwarded_claims(&seen).unwrap();
        assert_eq!(
            fwd["is_admin"],
            json!(false),
            "{v}: forwarded token must carry the row's role"
        );
        assert_eq!(fwd["exp"], stale["exp"], "same expiry");
        assert_eq!(fwd["email"], stale["email"], "same claim set");
        // The re-minted token verifies with InvokeAI's secret.
        let auth = seen.headers["authorization"]
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned();
        assert!(invoke_guard::identity::verify(&auth, &secret(&m)).is_ok());
    }
}

#[tokio::test]
async fn real_admin_passes_admin_route() {
    for v in VERSIONS {
        let (_db, up, g, m) = setup(v).await;
        let r = send(
            "GET",
            &g.url("/api/v1/auth/users"),
            Some(&token_for(&m, "admin")),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{v}");
        assert_eq!(up.count(), 1);
    }
}

#[tokio::test]
async fn media_cookie_only_on_media_routes() {
    let (_db, up, g, m) = setup("6.14.2").await;
    let t = token_for(&m, "alice");
    let cookie = format!("invokeai_media_token={t}");
    let img = m["images"]["alice_private_1"]["image_name"]
        .as_str()
        .unwrap();
    let r = send_with(
        "GET",
        &g.url(&format!("/api/v1/images/i/{img}/full")),
        None,
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    // The cookie is converted to a Bearer header and not passed on.
    assert!(seen.headers.get("cookie").is_none());
    assert!(forwarded_claims(&seen).is_some());
    let r = send_with(
        "GET",
        &g.url("/api/v1/auth/me"),
        None,
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        r.status, 401,
        "the media cookie is not a credential for API routes"
    );
}

#[tokio::test]
async fn duplicate_authorization_headers_are_refused() {
    let (_db, up, g, m) = setup("6.14.2").await;
    let t = format!("Bearer {}", token_for(&m, "alice"));
    let r = send_with(
        "GET",
        &g.url("/api/v1/auth/me"),
        None,
        None,
        &[("authorization", &t), ("authorization", &t)],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(up.count(), 0);
}

/// InvokeAI (another connection) commits `sql`; wait (bounded) until the guard's facts
/// generation moves, as it does for any commit it sees.
async fn commit_and_wait(g: &Guard, db: &std::path::Path, sql: &str, params: &[&str]) {
    let generation = g.state.facts.generation();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(sql, rusqlite::params_from_iter(params))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while g.state.facts.generation() == generation {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never saw the commit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

// The verified-token cache (identity.rs) must not let a token outlive what would revoke it
// without the cache: each test first makes the token verify (and so be cached), then changes
// the database under the running guard and sends the very same token bytes again.

#[tokio::test]
async fn verified_cache_a_deactivated_user_is_refused_on_the_next_request() {
    let (db, _up, g, m) = setup("6.14.2").await;
    let token = token_for(&m, "alice");
    let me = g.url("/api/v1/auth/me");
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 200);
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 200);
    let uid = m["users"]["alice"]["user_id"].as_str().unwrap();
    commit_and_wait(
        &g,
        &db.path,
        "UPDATE users SET is_active = 0 WHERE user_id = ?1",
        &[uid],
    )
    .await;
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 401);
}

#[tokio::test]
async fn verified_cache_a_password_change_epoch_revokes_the_cached_token() {
    let (db, _up, g, m) = setup("6.14.2").await;
    let token = token_for(&m, "alice");
    let me = g.url("/api/v1/auth/me");
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 200);
    let uid = m["users"]["alice"]["user_id"].as_str().unwrap();
    commit_and_wait(
        &g,
        &db.path,
        "UPDATE users SET token_epoch = token_epoch + 1 WHERE user_id = ?1",
        &[uid],
    )
    .await;
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 401);
}

#[tokio::test]
async fn verified_cache_a_demoted_admin_loses_admin_routes_with_the_same_token() {
    let (db, up, g, m) = setup("6.14.2").await;
    let token = token_for(&m, "admin");
    let users = g.url("/api/v1/auth/users");
    assert_eq!(send("GET", &users, Some(&token), None).await.status, 200);
    let uid = m["users"]["admin"]["user_id"].as_str().unwrap();
    commit_and_wait(
        &g,
        &db.path,
        "UPDATE users SET is_admin = 0 WHERE user_id = ?1",
        &[uid],
    )
    .await;
    let before = up.count();
    let r = send("GET", &users, Some(&token), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.detail(), "Admin privileges required");
    assert_eq!(up.count(), before, "nothing forwarded");
    // And the token forwarded for an ordinary route now says is_admin: false.
    assert_eq!(
        send("GET", &g.url("/api/v1/auth/me"), Some(&token), None)
            .await
            .status,
        200
    );
    assert_eq!(
        forwarded_claims(&up.last().unwrap()).unwrap()["is_admin"],
        json!(false)
    );
}

#[tokio::test]
async fn verified_cache_a_rotated_secret_refuses_tokens_signed_with_the_old_one() {
    let (db, _up, g, m) = setup("6.14.2").await;
    let old = token_for(&m, "alice");
    let me = g.url("/api/v1/auth/me");
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
    let rotated = "a-new-secret-after-rotation-0123456789abcdef";
    commit_and_wait(
        &g,
        &db.path,
        "UPDATE app_settings SET value = ?1 WHERE key = 'jwt_secret'",
        &[rotated],
    )
    .await;
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 401);
    let new = sign(&claims_for(&m, "alice"), rotated);
    assert_eq!(send("GET", &me, Some(&new), None).await.status, 200);
    // Rotating back does not resurrect anything signed with the interim secret.
    commit_and_wait(
        &g,
        &db.path,
        "UPDATE app_settings SET value = ?1 WHERE key = 'jwt_secret'",
        &[&secret(&m)],
    )
    .await;
    assert_eq!(send("GET", &me, Some(&new), None).await.status, 401);
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
}
