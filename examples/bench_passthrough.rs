//! The floor for any hyper-based proxy: a plain pooled passthrough (scenario B of
//! scripts/bench/run.sh; the anchors' appendix harness).
//!
//! `cargo run --release --example bench_passthrough -- 127.0.0.1:9001 127.0.0.1:9000`
//!
//! Each request's URI is rewritten to `http://UPSTREAM{path_and_query}` and sent through
//! hyper-util's pooled legacy client, keep-alive on both legs, no header work at all. The
//! runtime honours `TOKIO_WORKER_THREADS` like the guard's, so both get the same threads.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

fn parse(arg: Option<String>, default: &str, what: &str) -> std::io::Result<SocketAddr> {
    arg.unwrap_or_else(|| default.into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}")))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = parse(args.next(), "127.0.0.1:9001", "listen address")?;
    let upstream = parse(args.next(), "127.0.0.1:9000", "upstream address")?;
    // Builder::new_multi_thread reads TOKIO_WORKER_THREADS when it is set.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "bench_passthrough listening on {} -> {upstream}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(forward(&client, upstream, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("http://{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(res) => res.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *res.status_mut() = code;
    res
}
