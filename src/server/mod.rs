//! The listener: one accept loop per listener, connections served by hyper through the
//! [`pipeline`]; [`admin`] serves health, readiness and metrics on its own listener.
//!
//! Invariants:
//! - Every connection passes the raw-byte framing scanner before hyper parses it.
//! - At most `limits.max_connections` connections are served; beyond that new ones are closed.
//! - Accept errors (EMFILE) back off instead of spinning.
//! - Shutdown (see [`lifecycle`]) first turns `/readyz` to 503 while still accepting for
//!   `limits.shutdown_delay`; then this loop stops accepting, closes upgraded tunnels and drains
//!   in-flight connections for at most `limits.shutdown_grace`.

pub mod admin;
pub mod lifecycle;
mod pipeline;

pub use pipeline::{handle, identity_denial};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::http::framing;
use crate::http::headers::ClientConn;
use crate::state::AppState;

const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Accept connections until `shutdown` resolves, then drain (bounded by the configured grace).
pub async fn run<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        .max_buf_size(state.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(state.limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    pair
                }
                Err(e) => {
                    // EMFILE and friends persist until something closes: retrying at once spins
                    // a core and floods the log, so back off (doubling, capped).
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let client = ClientConn {
                peer: peer.ip(),
                tls: tls.is_some(),
            };
            let max_head = state.limits.max_header_bytes;
            let svc_state = state.clone();
            let service = move |framing: Arc<framing::Flag>| {
                let state = svc_state.clone();
                let conn = ConnInfo {
                    client: client.clone(),
                    framing,
                };
                service_fn(move |req| {
                    let state = state.clone();
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state, &conn).await) }
                })
            };
            let result = match tls {
                None => {
                    let (io, flag) = framing::Scanned::new(stream, max_head);
                    let fut =
                        builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
                    watcher.watch(fut.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        state.limits.header_read_timeout,
                        acceptor.accept(stream),
                    )
                    .await;
                    let Ok(Ok(tls_stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let (io, flag) = framing::Scanned::new(tls_stream, max_head);
                    let fut =
                        builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
                    watcher.watch(fut.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    // Upgraded connections are invisible to hyper's graceful shutdown: close them now, so the
    // drain below is bounded by in-flight HTTP requests only.
    state.upstream.close_tunnels();
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(state.limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// Build a TLS acceptor (HTTP/2 and HTTP/1.1 via ALPN) from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::Error as PemError;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let explain =
        |file: &std::path::Path, what: &str, e: PemError| match e {
            PemError::NoItemsFound => {
                anyhow::anyhow!(
            "{} (tls.cert/tls.key): no PEM {what} found; expected a -----BEGIN {}----- block",
            file.display(),
            if what == "certificate" { "CERTIFICATE" } else { "PRIVATE KEY" }
        )
            }
            other => anyhow::anyhow!(
                "{} (tls.cert/tls.key): cannot read the {what}: {other}",
                file.display()
            ),
        };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| explain(cert, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| explain(cert, "certificate", e))?;
    if certs.is_empty() {
        return Err(explain(cert, "certificate", PemError::NoItemsFound));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| explain(key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} and {} (tls.cert/tls.key): {e}; is the key the certificate's own?",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the pipeline knows about the client connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub client: ClientConn,
    pub framing: Arc<framing::Flag>,
}

/// Bind helper for tests and main: the actual local address.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("bound listener has an address")
}
