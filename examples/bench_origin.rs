//! A fixed-response HTTP/1.1 origin for the loopback benchmark (scripts/bench/run.sh).
//!
//! `cargo run --release --example bench_origin -- 127.0.0.1:9000`
//!
//! Answers every method and path with `200 OK` and the same 1 KiB JSON body, so what the
//! benchmark measures is the proxy in front of it, not InvokeAI. A path ending in `/full` (the
//! streaming scenario) gets a 20 MiB `image/png` body instead (`?mib=N` asks for N MiB, 1 to 1024),
//! sent in 64 KiB chunks. One runtime thread by
//! default (`TOKIO_WORKER_THREADS` is not read: the origin must not compete for both cores).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The streamed image: 20 MiB unless the query asks for another size.
const BIG_MIB: usize = 20;
const CHUNK: usize = 64 * 1024;

/// The streamed body's size in MiB: `mib=N` in the query, else [`BIG_MIB`].
fn streamed_mib(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("mib=")?.parse().ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or(BIG_MIB)
}

/// 1 KiB of JSON, the size the anchors' harness used.
fn body() -> Bytes {
    let filler = "x".repeat(1024 - r#"{"ok":true,"pad":""}"#.len());
    Bytes::from(format!(r#"{{"ok":true,"pad":"{filler}"}}"#))
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("listen address: {e}"),
            )
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let body = body();
    assert_eq!(body.len(), 1024);
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    eprintln!("bench_origin listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let res = if req.uri().path().ends_with("/full") {
                    // Chunks share the one buffer: the origin itself does not copy.
                    let size = streamed_mib(req.uri().query()) * 1024 * 1024;
                    let chunk = chunk.clone();
                    let chunks = (0..size / CHUNK)
                        .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
                    let mut res =
                        Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed());
                    res.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
                    res.headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from(size));
                    res
                } else {
                    let mut res = Response::new(Full::new(body.clone()).boxed());
                    res.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    res
                };
                async move { Ok::<_, Infallible>(res) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
