//! The HTTP/1 framing scanner against hyper's own parser over the same bytes.
//!
//! Property: the guard never serves a request the scanner framed differently from hyper. For
//! every request hyper hands the service while the scanner's flag is clear (the guard would
//! serve it), the scanner must have found that request's head at a boundary where it parses to
//! the same method and target. Refusing (the flag set) is always acceptable.
//!
//! Input: byte 0 picks how the stream is cut into reads; the rest is the client's byte stream.
#![no_main]

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use invoke_guard::http::framing;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 8192;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A client that sends `chunks` one read at a time, then EOF; writes are swallowed.
struct Client {
    chunks: Vec<Vec<u8>>,
    next: usize,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(chunk) = self.chunks.get(self.next) {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n == chunk.len() {
                self.next += 1;
            } else {
                let rest = chunk[n..].to_vec();
                let i = self.next;
                self.chunks[i] = rest;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, d: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(d.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the service saw: method, target, and whether the guard would have refused it.
type Served = Vec<(String, String, bool)>;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    if stream.is_empty() {
        return;
    }
    // Reads of 1..=64 bytes (cut < 192), or the whole stream in one read.
    let size = if cut < 192 {
        1 + usize::from(cut % 64)
    } else {
        stream.len()
    };
    let chunks: Vec<&[u8]> = stream.chunks(size).collect();
    let trace = framing::trace(&chunks, MAX_HEAD);

    let served: Arc<Mutex<Served>> = Arc::default();
    let client = Client {
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        next: 0,
    };
    let (io, flag) = framing::Scanned::new(client, MAX_HEAD);
    let seen = served.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        let flagged = flag.get().is_some();
        async move {
            let (parts, body) = req.into_parts();
            seen.lock()
                .unwrap()
                .push((parts.method.to_string(), parts.uri.to_string(), flagged));
            let _ = Limited::new(body, 1 << 20).collect().await;
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    runtime().block_on(async {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.max_buf_size(MAX_HEAD).half_close(true);
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
    });

    for (i, (method, target, flagged)) in served.lock().unwrap().iter().enumerate() {
        if *flagged {
            // The guard refuses this request and every later one on the connection.
            break;
        }
        let start = *trace.heads.get(i).unwrap_or_else(|| {
            panic!(
                "hyper served request {i} ({method} {target}) the scanner never reached: {trace:?}"
            )
        });
        assert!(
            trace.opaque_at.is_none_or(|o| start < o),
            "hyper served request {i} ({method} {target}) after the scanner stopped: {trace:?}"
        );
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&stream[start..]);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(_))),
            "request {i} ({method} {target}): the scanner's head at {start} does not parse: {trace:?}"
        );
        assert_eq!(req.method, Some(method.as_str()), "request {i}: {trace:?}");
        let path = req.path.unwrap_or_default();
        let same = path == target
            || path
                .parse::<http::Uri>()
                .is_ok_and(|u| u.to_string() == *target);
        assert!(
            same,
            "request {i}: scanner read {path:?}, hyper {target:?}: {trace:?}"
        );
    }
});
