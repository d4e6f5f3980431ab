//! Test harness: the real guard on 127.0.0.1:0 in front of a recording mock upstream, over
//! fixture databases written by real InvokeAI.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use invoke_guard::config::{self, Overrides, RawConfig};
use invoke_guard::state::AppState;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A writable copy of a fixture database in a temp dir (kept alive by the returned guard).
pub struct DbCopy {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn copy_fixture(name: &str) -> DbCopy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invokeai.db");
    std::fs::copy(fixture_path(name), &path).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    DbCopy { dir, path }
}

/// The JSON manifest of a rich fixture.
pub fn manifest(version: &str) -> Value {
    let text =
        std::fs::read_to_string(fixture_path(&format!("invokeai-{version}-rich.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sign(claims: &Value, secret: &str) -> String {
    invoke_guard::identity::sign(claims.as_object().unwrap(), secret)
}

/// Claims as InvokeAI mints them for a manifest user.
pub fn claims_for(m: &Value, role: &str) -> Value {
    let u = &m["users"][role];
    let mut c = json!({
        "user_id": u["user_id"],
        "email": u["email"],
        "is_admin": u["is_admin"],
        "exp": now() + 3600,
    });
    if u.get("token_epoch").is_some_and(|e| !e.is_null()) {
        c["token_epoch"] = u["token_epoch"].clone();
        c["remember_me"] = json!(false);
    }
    c
}

pub fn token_for(m: &Value, role: &str) -> String {
    sign(&claims_for(m, role), m["jwt"]["secret"].as_str().unwrap())
}

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Responder = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A recording mock InvokeAI.
pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub fn ok_json(v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// Start a mock upstream answering with `responder` (default: 200 `{"ok":true}`).
pub async fn mock(responder: Option<Responder>) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let responder = responder.unwrap_or_else(|| Arc::new(|_| ok_json(json!({"ok": true}))));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let responder = responder.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let responder = responder.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            target: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers,
                            body,
                        };
                        let res = responder(&s);
                        seen.lock().unwrap().push(s);
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Mock { addr, seen }
}

/// A running guard.
pub struct Guard {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub ledger_dir: tempfile::TempDir,
}

impl Guard {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.state.facts.shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Start the guard with `routes` (a TOML text) over `db`, in front of `upstream`.
pub async fn guard(routes: &str, db: &Path, upstream: &str) -> Guard {
    guard_with(routes, db, upstream, RawConfig::default()).await
}

pub async fn guard_with(routes: &str, db: &Path, upstream: &str, raw: RawConfig) -> Guard {
    start_guard(routes, db, upstream, raw, None, None).await
}

/// Start the guard with its ledger at `ledger` (e.g. on a filesystem a test fills up).
pub async fn guard_with_ledger(routes: &str, db: &Path, upstream: &str, ledger: &Path) -> Guard {
    start_guard(
        routes,
        db,
        upstream,
        RawConfig::default(),
        None,
        Some(ledger),
    )
    .await
}

/// Start the guard serving HTTPS.
pub async fn guard_tls(
    routes: &str,
    db: &Path,
    upstream: &str,
    tls: tokio_rustls::TlsAcceptor,
) -> Guard {
    start_guard(routes, db, upstream, RawConfig::default(), Some(tls), None).await
}

async fn start_guard(
    routes: &str,
    db: &Path,
    upstream: &str,
    raw: RawConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ledger: Option<&Path>,
) -> Guard {
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = match ledger {
        Some(path) => path.to_owned(),
        None => {
            // The default test ledger was adopted by its operator when the guard was deployed
            // over the fixture (items from before it are legacy); `guard_with_ledger` starts
            // with whatever ledger it is given.
            let path = ledger_dir.path().join("ledger.db");
            let l = invoke_guard::facts::ledger::Ledger::open(&path).unwrap();
            l.adopt_existing(Default::default()).unwrap();
            path
        }
    };
    let routes_path = ledger_dir.path().join("routes.toml");
    std::fs::write(&routes_path, routes).unwrap();
    let settings = config::settings(
        raw,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("off".into()),
            upstream: Some(upstream.into()),
            db: Some(db.to_owned()),
            routes: Some(routes_path),
            ledger: Some(ledger),
            ..Overrides::default()
        },
    )
    .unwrap();
    let state = AppState::from_settings(&settings).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        let _ = invoke_guard::server::run(listener, st, tls, async {
            let _ = rx.await;
        })
        .await;
    });
    Guard {
        addr,
        state,
        stop: Some(tx),
        ledger_dir,
    }
}

/// The shipped routes.toml.
pub fn shipped_routes() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml")).unwrap()
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Send one request.
pub async fn send(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    send_with(method, url, token, body, &[]).await
}

pub async fn send_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    // A JSON body gets its content type, as every JSON client sends it.
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    let bytes = match body {
        Some(v) => {
            all.push(("content-type", "application/json"));
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    send_bytes(method, url, token, bytes, &all).await
}

/// Claims of the token the upstream received (no signature check: the test checks it separately).
pub fn forwarded_claims(seen: &Seen) -> Option<Map<String, Value>> {
    use base64::Engine;
    let auth = seen.headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Send raw bytes on a fresh TCP connection; return everything read until close or timeout.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read until the peer closes (the text read); `None` when still open after `limit`.
pub async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the first response in a raw reply (0 when there is none).
pub fn raw_status(reply: &str) -> u16 {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Send one request with a raw body (no content-type is added; pass it in `headers`).
pub async fn send_bytes(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(req.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

impl Reply {
    /// The body with any gzip `Content-Encoding` undone (the guard may re-encode for the client).
    pub fn decoded(&self) -> Bytes {
        match self.headers.get("content-encoding").map(|v| v.as_bytes()) {
            None => self.body.clone(),
            Some(b"gzip") => Bytes::from(gunzip(&self.body)),
            Some(other) => panic!(
                "unexpected content-encoding {:?}",
                String::from_utf8_lossy(other)
            ),
        }
    }

    pub fn decoded_json(&self) -> Value {
        serde_json::from_slice(&self.decoded()).unwrap_or(Value::Null)
    }
}

/// A `RawConfig` parsed from TOML at run time (keys newer than this file fail the test, not the
/// build).
pub fn raw_config(text: &str) -> RawConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("config {text:?} refused: {e}"))
}

/// CRC-32 (IEEE) as gzip's trailer needs it.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !crc;
    for b in data {
        c = table[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// gzip `data` with stored (uncompressed) deflate blocks: a valid stream any decoder reads, with
/// no compression library needed in the tests.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = GZIP_HEADER.to_vec();
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A gzip stream of `1 + 258 * runs` zero bytes in about `runs * 13 / 8` bytes (fixed Huffman
/// back-references): a decompression bomb with a correct trailer.
pub fn gzip_zeros(runs: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        // Huffman codes go out most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = code.reverse_bits() >> (32 - len);
            self.put(reversed, len);
        }
    }
    let mut bits = Bits {
        out: GZIP_HEADER.to_vec(),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = fixed Huffman
    bits.code(0x30, 8); // literal 0
    for _ in 0..runs {
        bits.code(0xC5, 8); // length 258 (code 285)
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    if bits.n > 0 {
        bits.put(0, 8 - bits.n);
    }
    let total = 1 + 258 * runs;
    let zeros = [0u8; 65_536];
    let mut crc = 0;
    let mut left = total;
    while left > 0 {
        let n = left.min(zeros.len());
        crc = crc32_update(crc, &zeros[..n]);
        left -= n;
    }
    let mut out = bits.out;
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out
}

/// Decompress gzip with the system's `gzip` (tests only decode what the guard sends them).
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "gzip -dc failed");
    out.stdout
}

/// Whether the request the mock received offers gzip.
pub fn offers_gzip(seen: &Seen) -> bool {
    seen.headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("gzip"))
}

/// A JSON response with `body` gzip-compressed, as InvokeAI's GZipMiddleware sends it.
pub fn gzip_json(v: &Value) -> Response<Full<Bytes>> {
    encoded_json(gzip(v.to_string().as_bytes()), "gzip")
}

/// A JSON response whose body is `bytes` labelled with `Content-Encoding: encoding`.
pub fn encoded_json(bytes: impl Into<Bytes>, encoding: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(bytes.into()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("content-encoding", encoding.parse().unwrap());
    r.headers_mut()
        .insert("vary", "Accept-Encoding".parse().unwrap());
    r
}

/// Log lines of this test process, through a global subscriber installed by the first caller of
/// [`capture_logs`] in a test binary (its filter and format stay for the whole binary).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs(filter: &str, json: bool) -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_env_filter(filter);
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
        // Decision lines are written by the guard's own writer, into the same buffer.
        let lines = logs.clone();
        let format = if json {
            invoke_guard::decisionlog::Format::Json
        } else {
            invoke_guard::decisionlog::Format::Text
        };
        invoke_guard::decisionlog::install(format, move |line| {
            lines.0.lock().unwrap().extend_from_slice(line)
        });
        logs
    })
    .clone()
}

/// A user workflow as the 6.12 web UI saves it.
pub fn workflow_json(id: &str) -> Value {
    json!({"name": format!("wf {id}"), "author": "", "description": "", "version": "1.0.0",
        "contact": "", "tags": "", "notes": "", "exposedFields": [],
        "meta": {"version": "3.0.0", "category": "user"}, "nodes": [], "edges": [], "form": null, "id": id})
}

/// The built `invoke-guard` binary, run from the repository root without the environment's config.
pub fn guard_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_invoke-guard"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("INVOKE_GUARD_CONFIG")
        .env("INVOKE_GUARD_LOG", "warn");
    c
}
