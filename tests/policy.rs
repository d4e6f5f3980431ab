//! The shipped routes.toml over the rich fixtures written by real InvokeAI 6.12.0 and 6.14.2:
//! every predicate per role and resource state, and every seed-PR finding as a named case.
//! "F" means forwarded to the (mock) upstream; a number is the status the guard answered itself.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use serde_json::{json, Value};

/// One expectation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Forward,
    Status(u16),
}
use Want::{Forward as F, Status as S};

struct Case {
    name: String,
    role: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    want: Want,
}

struct World {
    _db: DbCopy,
    up: Mock,
    g: Guard,
    m: Value,
    version: &'static str,
}

impl World {
    async fn new(version: &'static str) -> Self {
        let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
        let m = manifest(version);
        // The mock answers like InvokeAI where a response filter reads the body.
        let wf = m["workflows"]["wf_alice_private"]["workflow_id"].clone();
        let sp = m["style_presets"]["sp_alice"]["id"].clone();
        let responder: Responder = Arc::new(move |seen| match seen.target.as_str() {
            "/api/v1/workflows/" => ok_json(json!({"workflow_id": wf, "name": "x"})),
            "/api/v1/style_presets/" => ok_json(json!({"id": sp, "name": "x"})),
            "/api/v1/images/download" => {
                ok_json(json!({"response": "ok", "bulk_download_item_name": "zip-of-alice.zip"}))
            }
            _ => ok_json(json!({"ok": true})),
        });
        let up = mock(Some(responder)).await;
        let g = guard(&shipped_routes(), &db.path, &up.url()).await;
        World {
            _db: db,
            up,
            g,
            m,
            version,
        }
    }

    fn id(&self, kind: &str, role: &str, field: &str) -> String {
        self.m[kind][role][field]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{kind}.{role}.{field} missing in the {} manifest",
                    self.version
                )
            })
            .to_owned()
    }
    fn img(&self, role: &str) -> String {
        self.id("images", role, "image_name")
    }
    fn board(&self, role: &str) -> String {
        self.id("boards", role, "board_id")
    }
    fn wf(&self, role: &str) -> String {
        self.id("workflows", role, "workflow_id")
    }
    fn sp(&self, role: &str) -> String {
        self.id("style_presets", role, "id")
    }
    fn new14(&self) -> bool {
        self.version == "6.14.2"
    }

    /// The status of a body-less request as `token`.
    async fn call(&self, method: &str, path: &str, token: &str) -> http::StatusCode {
        send(method, &self.g.url(path), Some(token), None)
            .await
            .status
    }

    fn token(&self, role: &str) -> Option<String> {
        let secret = self.m["jwt"]["secret"].as_str().unwrap();
        match role {
            "anon" => None,
            // erin's token from before her demotion still claims admin.
            "erin_stale" => {
                let mut c = claims_for(&self.m, "erin");
                c["is_admin"] = json!(true);
                Some(sign(&c, secret))
            }
            r => Some(token_for(&self.m, r)),
        }
    }

    async fn run(&self, cases: Vec<Case>) {
        let mut failures = Vec::new();
        for c in &cases {
            let before = self.up.count();
            let token = self.token(c.role);
            let r = send(
                c.method,
                &self.g.url(&c.path),
                token.as_deref(),
                c.body.clone(),
            )
            .await;
            let forwarded = self.up.count() > before;
            let got = if forwarded { F } else { S(r.status.as_u16()) };
            if forwarded && r.status != 200 {
                failures.push(format!("{}: forwarded but answered {}", c.name, r.status));
            } else if got != c.want {
                failures.push(format!(
                    "{} [{} as {} {} {}]: want {:?}, got {:?} {}",
                    c.name,
                    self.version,
                    c.role,
                    c.method,
                    c.path,
                    c.want,
                    got,
                    r.detail()
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

fn case(
    name: &str,
    role: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    want: Want,
) -> Case {
    Case {
        name: name.into(),
        role,
        method,
        path: path.into(),
        body,
        want,
    }
}

/// On 6.14.2 `a`, on 6.12.0 (no visibility: every board private) `b`.
fn by(w: &World, new: Want, old: Want) -> Want {
    if w.new14() {
        new
    } else {
        old
    }
}

fn identity_cases(w: &World) -> Vec<Case> {
    let alice_img = format!("/api/v1/images/i/{}", w.img("alice_private_1"));
    vec![
        case("owner reads own image", "alice", "GET", &alice_img, None, F),
        case("admin reads any image", "admin", "GET", &alice_img, None, F),
        case("anonymous is 401", "anon", "GET", &alice_img, None, S(401)),
        case(
            "deactivated user is 401",
            "dave",
            "GET",
            &alice_img,
            None,
            S(401),
        ),
        case(
            "deactivated user cannot read own image",
            "dave",
            "GET",
            format!("/api/v1/images/i/{}", w.img("dave_uncat_1")),
            None,
            S(401),
        ),
        case(
            "demoted admin loses admin routes",
            "erin_stale",
            "GET",
            "/api/v1/auth/users",
            None,
            S(403),
        ),
        case(
            "demoted admin loses admin bypass",
            "erin_stale",
            "GET",
            &alice_img,
            None,
            S(403),
        ),
        case(
            "demoted admin keeps her own",
            "erin_stale",
            "GET",
            format!("/api/v1/images/i/{}", w.img("erin_uncat_1")),
            None,
            F,
        ),
        case(
            "admin lists users",
            "admin",
            "GET",
            "/api/v1/auth/users",
            None,
            F,
        ),
        case(
            "user cannot list users",
            "bob",
            "GET",
            "/api/v1/auth/users",
            None,
            S(403),
        ),
        case(
            "system account cannot log in",
            "anon",
            "POST",
            "/api/v1/auth/login",
            Some(json!({"email": "System@System.InvokeAI", "password": "x"})),
            S(401),
        ),
        case(
            "login is public",
            "anon",
            "POST",
            "/api/v1/auth/login",
            Some(json!({"email": "alice@example.com", "password": "x"})),
            F,
        ),
        case(
            "system user cannot get a password",
            "admin",
            "PATCH",
            "/api/v1/auth/users/system",
            Some(json!({"password": "hunter22hunter22"})),
            S(400),
        ),
        case(
            "system user cannot be promoted",
            "admin",
            "PATCH",
            "/api/v1/auth/users/system",
            Some(json!({"is_admin": true})),
            S(400),
        ),
        case(
            "system user cannot be deleted",
            "admin",
            "DELETE",
            "/api/v1/auth/users/system",
            None,
            S(400),
        ),
        case(
            "system user display name may change",
            "admin",
            "PATCH",
            "/api/v1/auth/users/system",
            Some(json!({"display_name": "Legacy"})),
            F,
        ),
        case(
            "last admin cannot demote themself",
            "admin",
            "PATCH",
            format!("/api/v1/auth/users/{}", w.id("users", "admin", "user_id")),
            Some(json!({"is_admin": false})),
            S(400),
        ),
        case(
            "last admin cannot be deleted",
            "admin",
            "DELETE",
            format!("/api/v1/auth/users/{}", w.id("users", "admin", "user_id")),
            None,
            S(400),
        ),
        case(
            "demoting a non-admin is fine",
            "admin",
            "PATCH",
            format!("/api/v1/auth/users/{}", w.id("users", "bob", "user_id")),
            Some(json!({"is_admin": false})),
            F,
        ),
    ]
}

fn image_cases(w: &World) -> Vec<Case> {
    let get = |role: &str| format!("/api/v1/images/i/{}", w.img(role));
    let full = |role: &str| format!("/api/v1/images/i/{}/full", w.img(role));
    vec![
        // R_IMG
        case(
            "private image: other user",
            "bob",
            "GET",
            get("alice_private_1"),
            None,
            S(403),
        ),
        case(
            "private image metadata: other user",
            "bob",
            "GET",
            format!("{}/metadata", get("alice_private_1")),
            None,
            S(403),
        ),
        case(
            "private image pixels: other user (hole 1/14)",
            "bob",
            "GET",
            full("alice_private_1"),
            None,
            S(403),
        ),
        case(
            "private image pixels: anonymous (hole 1)",
            "anon",
            "GET",
            full("alice_private_1"),
            None,
            S(401),
        ),
        case(
            "private image thumbnail: other user",
            "bob",
            "GET",
            format!("/api/v1/images/i/{}/thumbnail", w.img("alice_private_1")),
            None,
            S(403),
        ),
        case(
            "shared board image: other user reads",
            "bob",
            "GET",
            get("alice_shared_1"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "public board image: other user reads",
            "carol",
            "GET",
            get("alice_public_1"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "foreign image on public board: board owner reads",
            "alice",
            "GET",
            get("bob_on_alice_public"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "foreign image on private board: board owner may not read (main quirk)",
            "bob",
            "GET",
            get("erin_on_bob_private"),
            None,
            S(403),
        ),
        case(
            "foreign image on private board: its owner reads",
            "erin",
            "GET",
            get("erin_on_bob_private"),
            None,
            F,
        ),
        case(
            "uncategorized image: other user",
            "bob",
            "GET",
            get("alice_uncat_1"),
            None,
            S(403),
        ),
        case(
            "intermediate image: other user",
            "bob",
            "GET",
            get("alice_intermediate"),
            None,
            S(403),
        ),
        case(
            "intermediate image: owner",
            "alice",
            "GET",
            get("alice_intermediate"),
            None,
            F,
        ),
        case(
            "unknown image: 403 not 404 (no existence oracle)",
            "bob",
            "GET",
            "/api/v1/images/i/no-such-image.png",
            None,
            S(403),
        ),
        case(
            "unknown image: admin forwarded",
            "admin",
            "GET",
            "/api/v1/images/i/no-such-image.png",
            None,
            F,
        ),
        // W_IMG
        case(
            "shared-board write bypass: DELETE foreign image on shared board",
            "bob",
            "DELETE",
            get("alice_shared_1"),
            None,
            S(403),
        ),
        case(
            "shared-board write bypass: PATCH foreign image on shared board",
            "bob",
            "PATCH",
            get("alice_shared_1"),
            Some(json!({"starred": true})),
            S(403),
        ),
        case(
            "public board: anyone may delete its images (main quirk)",
            "carol",
            "DELETE",
            get("alice_public_1"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "board owner deletes foreign image on own board",
            "bob",
            "DELETE",
            get("erin_on_bob_private"),
            None,
            F,
        ),
        case(
            "stranger deletes image on private board",
            "carol",
            "DELETE",
            get("erin_on_bob_private"),
            None,
            S(403),
        ),
        case(
            "delete own uncategorized",
            "alice",
            "DELETE",
            get("alice_uncat_2"),
            None,
            F,
        ),
        case(
            "batch delete with a foreign name (6.14 skips it upstream; 6.12 would delete it)",
            "alice",
            "POST",
            "/api/v1/images/delete",
            Some(json!({"image_names": [w.img("alice_uncat_2"), w.img("bob_uncat_1")]})),
            by(w, F, S(403)),
        ),
        case(
            "star foreign images",
            "bob",
            "POST",
            "/api/v1/images/star",
            Some(json!({"image_names": [w.img("alice_uncat_1")]})),
            S(403),
        ),
        case(
            "star own images",
            "alice",
            "POST",
            "/api/v1/images/star",
            Some(json!({"image_names": [w.img("alice_uncat_1")]})),
            F,
        ),
        case(
            "images_by_names with a foreign private name (6.14 filters it upstream like main)",
            "bob",
            "POST",
            "/api/v1/images/images_by_names",
            Some(json!({"image_names": [w.img("alice_private_1")]})),
            by(w, F, S(403)),
        ),
        // Lists
        case(
            "private board listing via images?board_id=",
            "bob",
            "GET",
            format!("/api/v1/images/?board_id={}", w.board("alice_private")),
            None,
            S(403),
        ),
        case(
            "private board names via images/names?board_id=",
            "bob",
            "GET",
            format!("/api/v1/images/names?board_id={}", w.board("alice_private")),
            None,
            S(403),
        ),
        case(
            "own board listing",
            "alice",
            "GET",
            format!("/api/v1/images/?board_id={}", w.board("alice_private")),
            None,
            F,
        ),
        case(
            "uncategorized listing is scoped upstream",
            "bob",
            "GET",
            "/api/v1/images/?board_id=none",
            None,
            F,
        ),
        case(
            "listing without board_id (hole 2)",
            "bob",
            "GET",
            "/api/v1/images/",
            None,
            by(w, F, S(403)),
        ),
        case(
            "admin lists without board_id",
            "admin",
            "GET",
            "/api/v1/images/",
            None,
            F,
        ),
        case(
            "duplicate board_id is parameter pollution",
            "bob",
            "GET",
            format!(
                "/api/v1/images/?board_id=none&board_id={}",
                w.board("alice_private")
            ),
            None,
            S(400),
        ),
        case(
            "delete all intermediates is admin only",
            "bob",
            "DELETE",
            "/api/v1/images/intermediates",
            None,
            S(403),
        ),
        case(
            "delete uncategorized",
            "bob",
            "DELETE",
            "/api/v1/images/uncategorized",
            None,
            by(w, F, S(403)),
        ),
        // Bulk download
        case(
            "bulk download of a foreign image",
            "bob",
            "POST",
            "/api/v1/images/download",
            Some(json!({"image_names": [w.img("alice_private_1")]})),
            S(403),
        ),
        case(
            "bulk download of a private board",
            "bob",
            "POST",
            "/api/v1/images/download",
            Some(json!({"board_id": w.board("alice_private")})),
            S(403),
        ),
        case(
            "bulk download of everyone's uncategorized",
            "bob",
            "POST",
            "/api/v1/images/download",
            Some(json!({"board_id": "none"})),
            S(403),
        ),
        case(
            "bulk download of own images",
            "alice",
            "POST",
            "/api/v1/images/download",
            Some(json!({"image_names": [w.img("alice_uncat_1")]})),
            F,
        ),
        case(
            "someone else's zip",
            "bob",
            "GET",
            "/api/v1/images/download/zip-of-alice.zip",
            None,
            S(403),
        ),
        case(
            "own zip (recorded by the guard)",
            "alice",
            "GET",
            "/api/v1/images/download/zip-of-alice.zip",
            None,
            F,
        ),
        case(
            "a zip the guard never saw",
            "alice",
            "GET",
            "/api/v1/images/download/unknown.zip",
            None,
            S(403),
        ),
    ]
}

fn board_cases(w: &World) -> Vec<Case> {
    let b = |role: &str| format!("/api/v1/boards/{}", w.board(role));
    let move_to =
        |board: &str, img: &str| json!({"board_id": w.board(board), "image_name": w.img(img)});
    vec![
        case(
            "private board: other user",
            "bob",
            "GET",
            b("alice_private"),
            None,
            S(403),
        ),
        case(
            "private board: owner",
            "alice",
            "GET",
            b("alice_private"),
            None,
            F,
        ),
        case(
            "private board: admin",
            "admin",
            "GET",
            b("alice_private"),
            None,
            F,
        ),
        case(
            "shared board: other user reads",
            "bob",
            "GET",
            b("alice_shared"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "unknown board is 404",
            "bob",
            "GET",
            "/api/v1/boards/no-such-board",
            None,
            S(404),
        ),
        case(
            "private board image names",
            "bob",
            "GET",
            format!("{}/image_names", b("alice_private")),
            None,
            S(403),
        ),
        case(
            "visibility change by non-owner",
            "bob",
            "PATCH",
            b("alice_shared"),
            Some(json!({"board_visibility": "public"})),
            S(403),
        ),
        case(
            "visibility change by owner",
            "alice",
            "PATCH",
            b("alice_shared"),
            Some(json!({"board_visibility": "public"})),
            F,
        ),
        case(
            "delete foreign public board",
            "bob",
            "DELETE",
            b("alice_public"),
            None,
            S(403),
        ),
        case(
            "owner deletes board keeping images",
            "alice",
            "DELETE",
            b("alice_public"),
            None,
            F,
        ),
        case(
            "owner deletes public board with contributions' images (hole 4)",
            "alice",
            "DELETE",
            format!("{}?include_images=true", b("alice_public")),
            None,
            by(w, F, S(403)),
        ),
        case(
            "include_images spelled 1",
            "alice",
            "DELETE",
            format!("{}?include_images=1", b("alice_public")),
            None,
            by(w, F, S(403)),
        ),
        // board_images
        case(
            "shared-board write bypass: POST /board_images/ onto shared board",
            "bob",
            "POST",
            "/api/v1/board_images/",
            Some(move_to("alice_shared", "bob_uncat_1")),
            S(403),
        ),
        case(
            "contribute own image to public board",
            "bob",
            "POST",
            "/api/v1/board_images/",
            Some(move_to("alice_public", "bob_uncat_1")),
            by(w, F, S(403)),
        ),
        case(
            "reassignment escalation: board owner pulls a foreign image",
            "alice",
            "POST",
            "/api/v1/board_images/",
            Some(move_to("alice_public", "bob_uncat_1")),
            S(403),
        ),
        case(
            "move onto a private foreign board",
            "bob",
            "POST",
            "/api/v1/board_images/",
            Some(move_to("alice_private", "bob_uncat_1")),
            S(403),
        ),
        case(
            "move onto unknown board",
            "bob",
            "POST",
            "/api/v1/board_images/",
            Some(json!({"board_id": "nope", "image_name": w.img("bob_uncat_1")})),
            S(404),
        ),
        case(
            "batch move with a foreign image",
            "alice",
            "POST",
            "/api/v1/board_images/batch",
            Some(
                json!({"board_id": w.board("alice_private"), "image_names": [w.img("alice_uncat_1"), w.img("bob_uncat_1")]}),
            ),
            S(403),
        ),
        case(
            "remove image from shared board by stranger",
            "bob",
            "DELETE",
            "/api/v1/board_images/",
            Some(json!({"image_name": w.img("alice_shared_1")})),
            S(403),
        ),
        case(
            "remove image from own board",
            "alice",
            "DELETE",
            "/api/v1/board_images/",
            Some(json!({"image_name": w.img("alice_shared_1")})),
            F,
        ),
        case(
            "batch remove from foreign private board",
            "carol",
            "POST",
            "/api/v1/board_images/batch/delete",
            Some(json!({"image_names": [w.img("bob_private_1")]})),
            S(403),
        ),
        // Uploads
        case(
            "public-board upload by another user",
            "bob",
            "POST",
            format!("/api/v1/images/upload?board_id={}", w.board("alice_public")),
            None,
            by(w, F, S(403)),
        ),
        case(
            "upload into a shared board",
            "bob",
            "POST",
            format!("/api/v1/images/upload?board_id={}", w.board("alice_shared")),
            None,
            S(403),
        ),
        case(
            "upload into a private foreign board (hole 16)",
            "bob",
            "POST",
            format!(
                "/api/v1/images/upload?board_id={}",
                w.board("alice_private")
            ),
            None,
            S(403),
        ),
        case(
            "upload uncategorized",
            "bob",
            "POST",
            "/api/v1/images/upload",
            None,
            F,
        ),
    ]
}

fn workflow_cases(w: &World) -> Vec<Case> {
    let wf = |role: &str| format!("/api/v1/workflows/i/{}", w.wf(role));
    // 6.12 has no owners: unknown-owner workflows are readable by all, writable by admins only.
    vec![
        case(
            "private workflow: other user",
            "bob",
            "GET",
            wf("wf_alice_private"),
            None,
            by(w, S(403), F),
        ),
        case(
            "private workflow thumbnail (reviewer finding)",
            "bob",
            "GET",
            format!("{}/thumbnail", wf("wf_alice_private")),
            None,
            by(w, S(403), F),
        ),
        case(
            "private workflow: owner",
            "alice",
            "GET",
            wf("wf_alice_private"),
            None,
            F,
        ),
        case(
            "shared workflow: other user reads",
            "bob",
            "GET",
            wf("wf_alice_shared"),
            None,
            F,
        ),
        case(
            "default workflow: anyone reads",
            "carol",
            "GET",
            wf("wf_default_example"),
            None,
            F,
        ),
        case(
            "unknown workflow is 404",
            "bob",
            "GET",
            "/api/v1/workflows/i/no-such-workflow",
            None,
            S(404),
        ),
        case(
            "shared workflow: other user may not delete",
            "bob",
            "DELETE",
            wf("wf_alice_shared"),
            None,
            S(403),
        ),
        case(
            "owner deletes own workflow",
            "alice",
            "DELETE",
            wf("wf_alice_private"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "admin deletes any workflow",
            "admin",
            "DELETE",
            wf("wf_alice_private"),
            None,
            F,
        ),
        case(
            "PATCH authorizes the body id, not the path id",
            "bob",
            "PATCH",
            wf("wf_bob_private"),
            Some(json!({"workflow": {"id": w.wf("wf_alice_private")}})),
            S(403),
        ),
        case(
            "opened_at by a non-owner",
            "bob",
            "PUT",
            format!("{}/opened_at", wf("wf_alice_shared")),
            None,
            S(403),
        ),
        case(
            "workflow listing needs a login (hole 19)",
            "anon",
            "GET",
            "/api/v1/workflows/",
            None,
            S(401),
        ),
    ]
}

fn queue_cases(w: &World) -> Vec<Case> {
    let own_graph = json!({"batch": {"graph": {"id": "g", "nodes": {"n": {"id": "n", "type": "img_blur", "image": {"image_name": w.img("alice_uncat_1")}}}, "edges": []}, "runs": 1}});
    let foreign_graph = json!({"batch": {"graph": {"id": "g", "nodes": {"n": {"id": "n", "type": "img_blur", "image": {"image_name": w.img("bob_private_1")}}}, "edges": []}, "runs": 1}});
    let foreign_data = json!({"batch": {"graph": {"id": "g", "nodes": {}, "edges": []}, "data": [[{"node_path": "n", "field_name": "image", "items": [{"image_name": w.img("bob_uncat_1")}]}]], "runs": 1}});
    let into_foreign_board = json!({"batch": {"graph": {"id": "g", "nodes": {"n": {"id": "n", "type": "blank_image", "board": {"board_id": w.board("bob_private")}}}, "edges": []}, "runs": 1}});
    vec![
        case(
            "enqueue reading own image",
            "alice",
            "POST",
            "/api/v1/queue/default/enqueue_batch",
            Some(own_graph),
            F,
        ),
        case(
            "enqueue reading a foreign private image (hole 5)",
            "alice",
            "POST",
            "/api/v1/queue/default/enqueue_batch",
            Some(foreign_graph),
            S(403),
        ),
        case(
            "enqueue with a foreign image in batch data",
            "alice",
            "POST",
            "/api/v1/queue/default/enqueue_batch",
            Some(foreign_data),
            S(403),
        ),
        case(
            "enqueue saving into a foreign board",
            "alice",
            "POST",
            "/api/v1/queue/default/enqueue_batch",
            Some(into_foreign_board),
            S(403),
        ),
        case(
            "cancel a foreign queue item",
            "alice",
            "PUT",
            "/api/v1/queue/default/i/4/cancel",
            None,
            S(403),
        ),
        case(
            "cancel own queue item",
            "bob",
            "PUT",
            "/api/v1/queue/default/i/4/cancel",
            None,
            F,
        ),
        case(
            "delete a foreign queue item",
            "alice",
            "DELETE",
            "/api/v1/queue/default/i/4",
            None,
            S(403),
        ),
        case(
            "unknown queue item is 404",
            "alice",
            "DELETE",
            "/api/v1/queue/default/i/999",
            None,
            S(404),
        ),
        case(
            "retry foreign items",
            "alice",
            "PUT",
            "/api/v1/queue/default/retry_items_by_id",
            Some(json!([4, 1])),
            S(403),
        ),
        case(
            "retry own items",
            "alice",
            "PUT",
            "/api/v1/queue/default/retry_items_by_id",
            Some(json!([1, 2])),
            F,
        ),
        case(
            "queue current needs a login (hole 25)",
            "anon",
            "GET",
            "/api/v1/queue/default/current",
            None,
            S(401),
        ),
        case(
            "pause processor is admin only",
            "bob",
            "PUT",
            "/api/v1/queue/default/processor/pause",
            None,
            S(403),
        ),
    ]
}

fn misc_cases(w: &World) -> Vec<Case> {
    let sp = |role: &str| format!("/api/v1/style_presets/i/{}", w.sp(role));
    let recall_foreign = json!({"control_layers": [{"image_name": w.img("bob_private_1")}]});
    let recall_own = json!({"positive_prompt": "x", "reference_images": [{"image_name": w.img("alice_uncat_1")}]});
    vec![
        case(
            "recall with a foreign image (hole 21)",
            "alice",
            "POST",
            "/api/v1/recall/default",
            Some(recall_foreign),
            S(403),
        ),
        case(
            "recall with own image",
            "alice",
            "POST",
            "/api/v1/recall/default",
            Some(recall_own),
            F,
        ),
        case(
            "recall into another user's rows via queue_id (6.12 stores under it)",
            "alice",
            "POST",
            format!("/api/v1/recall/{}", w.id("users", "bob", "user_id")),
            Some(json!({"positive_prompt": "x"})),
            S(403),
        ),
        case(
            "recall with the caller's own id as queue_id",
            "alice",
            "POST",
            format!("/api/v1/recall/{}", w.id("users", "alice", "user_id")),
            Some(json!({"positive_prompt": "x"})),
            F,
        ),
        case(
            "recall needs a login",
            "anon",
            "POST",
            "/api/v1/recall/default",
            Some(json!({})),
            S(401),
        ),
        case(
            "model install jobs are admin only",
            "bob",
            "GET",
            "/api/v2/models/install",
            None,
            S(403),
        ),
        case(
            "one model install job is admin only",
            "bob",
            "GET",
            "/api/v2/models/install/1",
            None,
            S(403),
        ),
        case(
            "admin sees model install jobs",
            "admin",
            "GET",
            "/api/v2/models/install",
            None,
            F,
        ),
        case(
            "sync/orphaned models listing is admin only",
            "bob",
            "GET",
            "/api/v2/models/sync/orphaned",
            None,
            S(403),
        ),
        case(
            "sync/orphaned models deletion is admin only",
            "bob",
            "DELETE",
            "/api/v2/models/sync/orphaned",
            Some(json!({"paths": ["/"]})),
            S(403),
        ),
        case(
            "model list needs a login (hole 11)",
            "anon",
            "GET",
            "/api/v2/models/",
            None,
            S(401),
        ),
        case(
            "model list for users",
            "bob",
            "GET",
            "/api/v2/models/",
            None,
            F,
        ),
        case(
            "scan_folder is admin only (hole 11)",
            "bob",
            "GET",
            "/api/v2/models/scan_folder?scan_path=/",
            None,
            S(403),
        ),
        case(
            "runtime config needs a login (hole 10)",
            "anon",
            "GET",
            "/api/v1/app/runtime_config",
            None,
            S(401),
        ),
        case(
            "logging level is admin only",
            "bob",
            "POST",
            "/api/v1/app/logging",
            Some(json!(10)),
            S(403),
        ),
        case(
            "app version is public",
            "anon",
            "GET",
            "/api/v1/app/version",
            None,
            F,
        ),
        case(
            "download_queue is blocked (hole 12/24)",
            "admin",
            "GET",
            "/api/v1/download_queue/",
            None,
            S(404),
        ),
        case(
            "download_queue job is blocked",
            "bob",
            "POST",
            "/api/v1/download_queue/i/",
            Some(json!({"source": "http://x", "dest": "/tmp"})),
            S(404),
        ),
        case(
            "model relationship changes are admin only (hole 22)",
            "bob",
            "POST",
            "/api/v1/model_relationships/",
            Some(json!({"model_key_1": "a", "model_key_2": "b"})),
            S(403),
        ),
        case(
            "dynamicprompts needs a login",
            "anon",
            "POST",
            "/api/v1/utilities/dynamicprompts",
            Some(json!({"prompt": "x"})),
            S(401),
        ),
        case(
            "public style preset: other user reads",
            "bob",
            "GET",
            sp("sp_alice"),
            None,
            F,
        ),
        case(
            "private style preset: other user",
            "alice",
            "GET",
            sp("sp_bob"),
            None,
            by(w, S(403), F),
        ),
        case(
            "style preset: other user may not delete",
            "bob",
            "DELETE",
            sp("sp_alice"),
            None,
            S(403),
        ),
        case(
            "style preset: owner deletes",
            "carol",
            "DELETE",
            sp("sp_carol"),
            None,
            by(w, F, S(403)),
        ),
        case(
            "default style preset is immutable for users",
            "bob",
            "DELETE",
            sp("sp_default_example"),
            None,
            S(403),
        ),
        case(
            "style preset export is admin only",
            "bob",
            "GET",
            "/api/v1/style_presets/export",
            None,
            S(403),
        ),
        case(
            "unknown route is 404",
            "admin",
            "GET",
            "/api/v1/nothing",
            None,
            S(404),
        ),
    ]
}

async fn run_all(version: &'static str) {
    let w = World::new(version).await;
    let mut cases = identity_cases(&w);
    cases.extend(image_cases(&w));
    cases.extend(board_cases(&w));
    cases.extend(workflow_cases(&w));
    cases.extend(queue_cases(&w));
    cases.extend(misc_cases(&w));
    // The zip cases need the guard to have recorded alice's request first.
    let t = w.token("alice").unwrap();
    let r = send(
        "POST",
        &w.g.url("/api/v1/images/download"),
        Some(&t),
        Some(json!({"image_names": [w.img("alice_uncat_1")]})),
    )
    .await;
    assert_eq!(r.status, 200);
    w.run(cases).await;
}

#[tokio::test]
async fn policy_matrix_6_14_2() {
    run_all("6.14.2").await;
}

#[tokio::test]
async fn policy_matrix_6_12_0() {
    run_all("6.12.0").await;
}

#[tokio::test]
async fn ledger_gives_6_12_workflows_and_presets_their_creator() {
    let w = World::new("6.12.0").await;
    let alice = w.token("alice").unwrap();
    let bob = w.token("bob").unwrap();
    let wf = format!("/api/v1/workflows/i/{}", w.wf("wf_alice_private"));
    // Before the guard saw its creation: unknown owner, readable by all, writable by admins.
    assert_eq!(w.call("GET", &wf, &bob).await, 200);
    // alice creates it through the guard (the mock answers with that workflow id).
    let r = send(
        "POST",
        &w.g.url("/api/v1/workflows/"),
        Some(&alice),
        Some(json!({"workflow": {"name": "x"}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.call("GET", &wf, &bob).await, 403);
    assert_eq!(w.call("DELETE", &wf, &alice).await, 200);
    // A later creation response cannot re-assign it.
    let r = send(
        "POST",
        &w.g.url("/api/v1/workflows/"),
        Some(&bob),
        Some(json!({"workflow": {"name": "y"}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.call("GET", &wf, &bob).await, 403);
    // The ledger survives a restart: a new guard on the same ledger file still knows.
    let ledger =
        invoke_guard::facts::ledger::Ledger::open(&w.g.ledger_dir.path().join("ledger.db"))
            .unwrap();
    let owner = ledger
        .owner(
            invoke_guard::facts::ledger::Entry::Workflow,
            &w.wf("wf_alice_private"),
        )
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), w.m["users"]["alice"]["user_id"].as_str());
}

#[tokio::test]
async fn visibility_change_is_seen_by_the_next_request() {
    let w = World::new("6.14.2").await;
    let bob = w.token("bob").unwrap();
    let path = format!("/api/v1/boards/{}", w.board("alice_private"));
    assert_eq!(w.call("GET", &path, &bob).await, 403);
    let generation = w.g.state.facts.generation();
    // InvokeAI (another connection) commits a visibility change.
    let conn = rusqlite::Connection::open(&w._db.path).unwrap();
    conn.execute(
        "UPDATE boards SET board_visibility = 'shared' WHERE board_id = ?1",
        [w.board("alice_private")],
    )
    .unwrap();
    // Wait (bounded) for the guard's own signal: its facts generation moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while w.g.state.facts.generation() == generation {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never saw the commit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(w.call("GET", &path, &bob).await, 200);
}

#[tokio::test]
async fn mutation_through_the_guard_invalidates_at_once() {
    let w = World::new("6.14.2").await;
    let bob = w.token("bob").unwrap();
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/boards/{}", w.board("alice_private"));
    assert_eq!(w.call("GET", &path, &bob).await, 403);
    let generation = w.g.state.facts.generation();
    let r = send(
        "PATCH",
        &w.g.url(&path),
        Some(&alice),
        Some(json!({"board_visibility": "shared"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        w.g.state.facts.generation() > generation,
        "a forwarded mutation must bump the generation before it answers"
    );
}

#[tokio::test]
async fn locked_database_fails_closed() {
    let w = World::new("6.14.2").await;
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/images/i/{}", w.img("alice_private_1"));
    assert_eq!(w.call("GET", &path, &alice).await, 200);
    let conn = rusqlite::Connection::open(&w._db.path).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE users SET display_name = display_name;")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never noticed the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = w.up.count();
    let r = send("GET", &w.g.url(&path), Some(&alice), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(w.up.count(), before);
    conn.execute_batch("COMMIT; PRAGMA locking_mode = NORMAL; SELECT 1 FROM users LIMIT 1;")
        .unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered after the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.call("GET", &path, &alice).await, 200);
}

/// A guard (shipped routes) whose mock upstream answers logins with `role`'s token.
async fn login_world(
    version: &str,
    role: &str,
    expires_in: u64,
) -> (DbCopy, Mock, Guard, Value, String) {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let m = manifest(version);
    let token = token_for(&m, role);
    let answer = token.clone();
    let responder: Responder = Arc::new(move |seen| match seen.target.as_str() {
        "/api/v1/auth/login" => {
            ok_json(json!({"token": answer, "user": {}, "expires_in": expires_in}))
        }
        _ => ok_json(json!({"ok": true})),
    });
    let up = mock(Some(responder)).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    (db, up, g, m, token)
}

async fn login(g: &Guard, email: &str) -> Reply {
    send(
        "POST",
        &g.url("/api/v1/auth/login"),
        None,
        Some(json!({"email": email, "password": "x"})),
    )
    .await
}

#[tokio::test]
async fn session_cookie_lifecycle_for_media_and_socket() {
    let (_db, _up, g, m, token) = login_world("6.14.2", "alice", 86400).await;
    let login = login(&g, "alice@example.com").await;
    assert_eq!(login.status, 200);
    let cookie = login.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("invoke_guard_session={token};")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=86400"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    // A Bearer-authenticated /auth/me (the UI's hydration call) sets the cookie when it is missing...
    let me = send("GET", &g.url("/api/v1/auth/me"), Some(&token), None).await;
    assert!(me.headers.get("set-cookie").is_some());
    // ...and not when the request already carries it.
    let session = format!("invoke_guard_session={token}");
    let me = send_with(
        "GET",
        &g.url("/api/v1/auth/me"),
        Some(&token),
        None,
        &[("cookie", &session)],
    )
    .await;
    assert!(me.headers.get("set-cookie").is_none());
    // The cookie opens the socket handshake and media, but is not a credential for the API.
    let sock = send_with(
        "GET",
        &g.url("/ws/socket.io/?EIO=4&transport=polling"),
        None,
        None,
        &[("cookie", &session)],
    )
    .await;
    assert_eq!(sock.status, 200);
    assert_eq!(
        send(
            "GET",
            &g.url("/ws/socket.io/?EIO=4&transport=polling"),
            None,
            None
        )
        .await
        .status,
        401
    );
    let img = format!(
        "/api/v1/images/i/{}/full",
        m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap()
    );
    let media = send_with("GET", &g.url(&img), None, None, &[("cookie", &session)]).await;
    assert_eq!(media.status, 200);
    assert_eq!(media.headers["cache-control"], "private, no-store");
    let api = send_with(
        "GET",
        &g.url("/api/v1/boards/?all=true"),
        None,
        None,
        &[("cookie", &session)],
    )
    .await;
    assert_eq!(api.status, 401);
    // Logout deletes it.
    let out = send("POST", &g.url("/api/v1/auth/logout"), Some(&token), None).await;
    let del = out.headers["set-cookie"].to_str().unwrap();
    assert!(
        del.starts_with("invoke_guard_session=;") && del.contains("Max-Age=0"),
        "{del}"
    );
}

async fn send_multipart(url: &str, token: &str, data: &str) -> u16 {
    let boundary = "----guardtestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{data}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", ct)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    client.request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn multipart_style_preset_type_default_is_admin_only() {
    for version in ["6.12.0", "6.14.2"] {
        let w = World::new(version).await;
        let url = w.g.url("/api/v1/style_presets/");
        let bob = w.token("bob").unwrap();
        let admin = w.token("admin").unwrap();
        let before = w.up.count();
        let default =
            r#"{"name": "x", "positive_prompt": "p", "negative_prompt": "", "type": "default"}"#;
        assert_eq!(send_multipart(&url, &bob, default).await, 403, "{version}");
        assert_eq!(w.up.count(), before);
        let user =
            r#"{"name": "x", "positive_prompt": "p", "negative_prompt": "", "type": "user"}"#;
        assert_eq!(send_multipart(&url, &bob, user).await, 200, "{version}");
        assert_eq!(
            send_multipart(&url, &admin, default).await,
            200,
            "{version}"
        );
        // The file part reached the upstream intact.
        assert!(w.up.last().unwrap().body.windows(4).any(|b| b == b"PNGD"));
    }
}

#[tokio::test]
async fn corrupted_database_fails_closed() {
    let w = World::new("6.14.2").await;
    let alice = w.token("alice").unwrap();
    let path = format!("/api/v1/images/i/{}", w.img("alice_private_1"));
    assert_eq!(w.call("GET", &path, &alice).await, 200);
    // Same inode, garbage content: every read fails.
    std::fs::write(&w._db.path, vec![0x5a; 8192]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.g.state.facts.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never noticed the corruption"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = w.up.count();
    assert_eq!(w.call("GET", &path, &alice).await, 503);
    assert_eq!(w.up.count(), before);
}

#[tokio::test]
async fn password_change_revokes_older_tokens_without_epochs() {
    let (_db, _up, g, m, carol_login) = login_world("6.12.0", "carol", 3600).await;
    let secret = m["jwt"]["secret"].as_str().unwrap().to_owned();
    let old = token_for(&m, "carol"); // a session from before the change (no iat)
    let me = g.url("/api/v1/auth/me");
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
    // A profile change without a new password revokes nothing.
    let r = send("PATCH", &me, Some(&old), Some(json!({"display_name": "C"}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(send("GET", &me, Some(&old), None).await.status, 200);
    let change = json!({"current_password": "CarolPass123", "new_password": "CarolPass456!"});
    let r = send("PATCH", &me, Some(&old), Some(change)).await;
    assert_eq!(r.status, 200);
    let fresh = r.headers["x-refreshed-token"].to_str().unwrap().to_owned();
    assert_eq!(
        send("GET", &me, Some(&old), None).await.status,
        401,
        "the old session must die"
    );
    assert_eq!(
        send("GET", &me, Some(&fresh), None).await.status,
        200,
        "the fresh token works"
    );
    // A new login through the guard is stamped with its issue time and accepted.
    let login = login(&g, "carol@example.com").await;
    let token = login.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(token, carol_login, "the login token is re-signed with iat");
    assert!(invoke_guard::identity::verify(&token, &secret)
        .unwrap()
        .0
        .contains_key("iat"));
    assert_eq!(send("GET", &me, Some(&token), None).await.status, 200);
    // An admin's password reset revokes the target's sessions, not the admin's.
    let bob = token_for(&m, "bob");
    let admin = token_for(&m, "admin");
    let bob_id = m["users"]["bob"]["user_id"].as_str().unwrap();
    let r = send(
        "PATCH",
        &g.url(&format!("/api/v1/auth/users/{bob_id}")),
        Some(&admin),
        Some(json!({"password": "BobPass999!"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(send("GET", &me, Some(&bob), None).await.status, 401);
    assert_eq!(send("GET", &me, Some(&admin), None).await.status, 200);
    // The revocations survive a restart (ledger).
    let ledger =
        invoke_guard::facts::ledger::Ledger::open(&g.ledger_dir.path().join("ledger.db")).unwrap();
    assert!(ledger.revoked_before(bob_id).is_some());
}

#[tokio::test]
async fn with_epochs_the_upstream_revokes_and_the_guard_does_not_rewrite_logins() {
    let (_db, _up, g, _m, t) = login_world("6.14.2", "carol", 3600).await;
    let login = login(&g, "carol@example.com").await;
    assert_eq!(login.json()["token"], json!(t));
    let r = send(
        "PATCH",
        &g.url("/api/v1/auth/me"),
        Some(&t),
        Some(json!({"current_password": "a", "new_password": "b"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-refreshed-token").is_none());
}

/// A guard whose mock upstream answers the list endpoints like an unfiltering 6.12 would.
async fn list_world(version: &'static str) -> (DbCopy, Mock, Guard, Value) {
    let db = copy_fixture(&format!("invokeai-{version}-rich.db"));
    let m = manifest(version);
    let all_uncategorized: Vec<Value> = m["images"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["board_id"].is_null())
        .map(|i| i["image_name"].clone())
        .collect();
    let alice_item = json!({"item_id": 1, "user_id": m["users"]["alice"]["user_id"], "user_email": "alice@example.com",
        "batch_id": "alice-batch", "session_id": "alice-session", "priority": 5, "field_values": [{"x": 1}],
        "workflow": {"w": 1}, "error_traceback": "secret", "session": {"id": "alice-session", "graph": {"nodes": {"n": {}}}}});
    let bob_item = json!({"item_id": 4, "user_id": m["users"]["bob"]["user_id"], "batch_id": "bob-batch",
        "session_id": "bob-session", "session": {"id": "bob-session", "graph": {"nodes": {"n": {}}}}});
    let responder: Responder = Arc::new(move |seen| {
        let path = seen.target.split('?').next().unwrap_or_default();
        match path {
            "/api/v1/boards/none/image_names" => ok_json(json!(all_uncategorized)),
            "/api/v1/queue/default/list_all" => ok_json(json!([alice_item, bob_item])),
            "/api/v1/queue/default/current" | "/api/v1/queue/default/i/1" => {
                ok_json(alice_item.clone())
            }
            "/api/v1/queue/default/next" => ok_json(Value::Null),
            "/api/v1/queue/default/status" => {
                ok_json(json!({"queue": {"item_id": 1, "batch_id": "alice-batch",
                "session_id": "alice-session", "pending": 0}, "processor": {"is_started": true}}))
            }
            p if p.starts_with("/api/v1/queue/default/b/") => {
                ok_json(json!({"queue_id": "default",
                "batch_id": "x", "pending": 3, "in_progress": 1, "completed": 9, "failed": 2, "canceled": 1, "total": 16}))
            }
            "/api/v1/boards/broken/image_names" => {
                let mut r = ok_json(json!(null));
                *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"<html>oops"));
                r
            }
            _ => ok_json(json!({"ok": true})),
        }
    });
    let up = mock(Some(responder)).await;
    let g = guard(&shipped_routes(), &db.path, &up.url()).await;
    (db, up, g, m)
}

fn name_set(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn uncategorized_names_are_filtered_where_the_upstream_does_not() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let own = |role: &str| -> std::collections::BTreeSet<String> {
        m["images"]
            .as_object()
            .unwrap()
            .values()
            .filter(|i| i["board_id"].is_null() && i["owner"] == role)
            .map(|i| i["image_name"].as_str().unwrap().to_owned())
            .collect()
    };
    let url = g.url("/api/v1/boards/none/image_names");
    let bob = send("GET", &url, Some(&token_for(&m, "bob")), None).await;
    assert_eq!(bob.status, 200);
    assert_eq!(name_set(&bob.json()), own("bob"));
    assert!(!own("bob").is_empty());
    let admin = send("GET", &url, Some(&token_for(&m, "admin")), None).await;
    assert!(name_set(&admin.json()).len() > own("bob").len() + own("alice").len() - 1);
    // 6.14.2 scopes it itself: the guard leaves the body alone.
    let (_db2, _up2, g2, m2) = list_world("6.14.2").await;
    let bob = send(
        "GET",
        &g2.url("/api/v1/boards/none/image_names"),
        Some(&token_for(&m2, "bob")),
        None,
    )
    .await;
    let all = m2["images"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["board_id"].is_null())
        .count();
    assert_eq!(bob.json().as_array().unwrap().len(), all);
}

#[tokio::test]
async fn queue_items_and_status_are_sanitized_where_the_upstream_does_not() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let bob = token_for(&m, "bob");
    let alice = token_for(&m, "alice");
    let list = send(
        "GET",
        &g.url("/api/v1/queue/default/list_all"),
        Some(&bob),
        None,
    )
    .await
    .json();
    let (a, b) = (&list[0], &list[1]);
    assert_eq!(a["user_id"], "redacted");
    assert_eq!(a["batch_id"], "redacted");
    assert_eq!(a["priority"], 0);
    for gone in ["user_email", "field_values", "workflow", "error_traceback"] {
        assert!(a[gone].is_null(), "{gone} survived: {a}");
    }
    assert_eq!(a["session"]["id"], "redacted");
    assert_eq!(a["session"]["graph"]["nodes"], json!({}));
    assert_eq!(a["item_id"], 1, "ids and statuses survive");
    assert_eq!(b["batch_id"], "bob-batch", "his own item is untouched");
    let current = send(
        "GET",
        &g.url("/api/v1/queue/default/current"),
        Some(&bob),
        None,
    )
    .await
    .json();
    assert_eq!(current["session_id"], "redacted");
    let own = send(
        "GET",
        &g.url("/api/v1/queue/default/i/1"),
        Some(&alice),
        None,
    )
    .await
    .json();
    assert_eq!(own["batch_id"], "alice-batch");
    let next = send(
        "GET",
        &g.url("/api/v1/queue/default/next"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!((next.status, next.json()), (StatusCode::OK, Value::Null));
    let status = send(
        "GET",
        &g.url("/api/v1/queue/default/status"),
        Some(&bob),
        None,
    )
    .await
    .json();
    assert!(status["queue"]["item_id"].is_null() && status["queue"]["session_id"].is_null());
    assert_eq!(status["queue"]["pending"], 0);
    let status = send(
        "GET",
        &g.url("/api/v1/queue/default/status"),
        Some(&alice),
        None,
    )
    .await
    .json();
    assert_eq!(
        status["queue"]["item_id"], 1,
        "the owner of the running item sees it"
    );
    let admin = send(
        "GET",
        &g.url("/api/v1/queue/default/list_all"),
        Some(&token_for(&m, "admin")),
        None,
    )
    .await
    .json();
    assert_eq!(admin[0]["batch_id"], "alice-batch");
    // 6.14.2 sanitizes itself: bodies pass through.
    let (_db2, _up2, g2, m2) = list_world("6.14.2").await;
    let list = send(
        "GET",
        &g2.url("/api/v1/queue/default/list_all"),
        Some(&token_for(&m2, "bob")),
        None,
    )
    .await
    .json();
    assert_eq!(list[0]["batch_id"], "alice-batch");
}

#[tokio::test]
async fn an_unfilterable_list_fails_closed() {
    let (db, _up, g, m) = list_world("6.12.0").await;
    // A board the upstream answers with garbage: the guard cannot filter, so it answers 503 … but only
    // for lists it must filter; here "broken" is not "none", so nothing needs filtering.
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    conn.execute(
        "INSERT INTO boards (board_id, board_name, user_id) VALUES ('broken', 'b', ?1)",
        [m["users"]["bob"]["user_id"].as_str().unwrap()],
    )
    .unwrap();
    let r = send(
        "GET",
        &g.url("/api/v1/boards/broken/image_names"),
        Some(&token_for(&m, "bob")),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    // When the facts for a needed filter are unreadable, the list is not sent.
    std::fs::remove_file(&db.path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while g.state.facts.is_available() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = send(
        "GET",
        &g.url("/api/v1/boards/none/image_names"),
        Some(&token_for(&m, "bob")),
        None,
    )
    .await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn batch_counts_cover_only_the_callers_items_where_the_upstream_counts_all() {
    let (_db, _up, g, m) = list_world("6.12.0").await;
    let batch = m["queue_items"]["q_alice_add_1"]["batch_id"]
        .as_str()
        .unwrap();
    let url = g.url(&format!("/api/v1/queue/default/b/{batch}/status"));
    let bob = send("GET", &url, Some(&token_for(&m, "bob")), None)
        .await
        .json();
    assert_eq!(
        (bob["total"].clone(), bob["completed"].clone()),
        (json!(0), json!(0))
    );
    let alice = send("GET", &url, Some(&token_for(&m, "alice")), None)
        .await
        .json();
    assert_eq!(
        (alice["completed"].clone(), alice["total"].clone()),
        (json!(2), json!(2))
    );
    let admin = send("GET", &url, Some(&token_for(&m, "admin")), None)
        .await
        .json();
    assert_eq!(admin["total"], 16, "admins see the upstream's counts");
}
