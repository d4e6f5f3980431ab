//! A fixed-response HTTP/1.1 origin for the loopback benchmark (scripts/bench/run.sh).
//!
//! `cargo run --release --example bench_origin -- 127.0.0.1:9000`
//!
//! Answers every method and path with `200 OK` and the same 1 KiB JSON body, so what the
//! benchmark measures is the proxy in front of it, not InvokeAI. One runtime thread by
//! default (`TOKIO_WORKER_THREADS` is not read: the origin must not compete for both cores).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
    eprintln!("bench_origin listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let mut res = Response::new(Full::new(body.clone()));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(res) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
