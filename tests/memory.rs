//! Memory use of body-reading rules: a large JSON body must not be amplified by parsing it into a
//! `serde_json::Value` (~16× its size, one `Value` per `0,`). A counting global allocator
//! measures the peak heap growth while the in-process guard handles one request.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Old and new block may both be live during the copy.
            grow(new_size);
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Start measuring: the peak restarts at the current use, which is returned.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// The measurements share one process-wide counter: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An upstream that drains request bodies without keeping them (so only the guard is measured).
async fn draining_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut body = req.into_body();
                    while let Some(Ok(_frame)) = body.frame().await {}
                    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// `prefix` (a JSON object's members, ending with a comma) plus a `pad` of zeros, about
/// `size` bytes in all.
fn padded_body(prefix: &str, size: usize) -> Bytes {
    let mut body = String::with_capacity(size + 64);
    body.push('{');
    body.push_str(prefix);
    body.push_str("\"pad\":[0");
    while body.len() + 4 < size {
        body.push_str(",0");
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// POST `body` to `path` as `role` and return the peak heap growth while it was handled.
async fn peak_growth(path: &str, role: &str, body: Bytes, m: &Value, g: &Guard) -> usize {
    let token = token_for(m, role);
    let url = g.url(path);
    let baseline = reset_peak();
    let r = send_bytes(
        "POST",
        &url,
        Some(&token),
        body,
        &[("content-type", "application/json")],
    )
    .await;
    let peak = PEAK.load(Ordering::Relaxed);
    assert_eq!(r.status, 200, "{path}: {}", r.detail());
    peak.saturating_sub(baseline)
}

const BODY_BYTES: usize = 15 * 1024 * 1024;

/// `prefix` gives the members the rule's checks read (from the manifest).
async fn assert_not_amplified(path: &str, role: &str, prefix: fn(&Value) -> String) {
    let _serial = SERIAL.lock().await;
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let m = manifest("6.14.2");
    let prefix = prefix(&m);
    let up = draining_upstream().await;
    let g = guard(&shipped_routes(), &db.path, &up).await;
    let body = padded_body(&prefix, BODY_BYTES);
    let len = body.len();
    let growth = peak_growth(path, role, body, &m, &g).await;
    eprintln!(
        "{path}: peak growth {:.2}× the body",
        growth as f64 / len as f64
    );
    assert!(
        growth < 4 * len,
        "{path}: peak heap growth {growth} bytes for a {len}-byte body ({:.1}×)",
        growth as f64 / len as f64
    );
}

#[tokio::test]
async fn large_enqueue_batch_body_is_not_amplified() {
    assert_not_amplified("/api/v1/queue/default/enqueue_batch", "alice", |_| {
        r#""batch":{"graph":{"id":"g","nodes":{},"edges":[]},"runs":1},"#.to_owned()
    })
    .await;
}

#[tokio::test]
async fn large_board_image_body_is_not_amplified() {
    assert_not_amplified("/api/v1/board_images/", "alice", |m| {
        let board = m["boards"]["alice_private"]["board_id"].as_str().unwrap();
        let image = m["images"]["alice_uncat_1"]["image_name"].as_str().unwrap();
        format!(r#""board_id":"{board}","image_name":"{image}","#)
    })
    .await;
}
