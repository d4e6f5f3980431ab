//! The listener: one accept loop per listener, connections served by hyper through the
//! [`pipeline`] (phases over a [`ctx::RequestCtx`]; [`evaluate`] runs its request phase for
//! `explain` and `test`, [`candidate`] a second table beside it); [`admin`] serves health,
//! readiness and metrics on its own listener.
//!
//! Invariants:
//! - Every connection passes the raw-byte framing scanner before hyper parses it.
//! - At most `limits.max_connections` connections are served; beyond that new ones are closed.
//! - Accept errors (EMFILE) back off instead of spinning.
//! - Shutdown (see [`lifecycle`]) first turns `/readyz` to 503 while still accepting for
//!   `limits.shutdown_delay`; then this loop stops accepting, closes every Socket.IO session (`41`) and drains
//!   in-flight connections for at most `limits.shutdown_grace`.

pub mod admin;
pub mod candidate;
pub mod ctx;
pub mod evaluate;
pub mod lifecycle;
pub mod pipeline;

pub use pipeline::{handle, identity_refusal};

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

/// The next connection, or `None` once `shutdown` resolved. Accept errors (EMFILE and friends)
/// persist until something closes: retrying at once spins a core and floods the log, so they
/// back off (doubling up to [`ACCEPT_BACKOFF_MAX`], reset by the next success).
async fn accept<F: Future<Output = ()> + Unpin>(
    listener: &TcpListener,
    shutdown: &mut F,
    backoff: &mut std::time::Duration,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    *backoff = ACCEPT_BACKOFF_MIN;
                    return Some(pair);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(*backoff) => {}
                        () = &mut *shutdown => return None,
                    }
                    *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
            () = &mut *shutdown => return None,
        }
    }
}

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
    while let Some((stream, peer)) = accept(&listener, &mut shutdown, &mut backoff).await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        tokio::spawn(serve_connection(
            stream,
            peer,
            permit,
            state.clone(),
            builder.clone(),
            tls.clone(),
            watcher,
        ));
    }
    drop(listener);
    // Upgraded connections are invisible to hyper's graceful shutdown: close them now, so the
    // drain below is bounded by in-flight HTTP requests only.
    state.sockets.close_all();
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(state.limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// Serve one accepted connection (TLS handshake, framing scan, hyper) until it ends or the
/// drain closes it; the permit is held for as long.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    state: Arc<AppState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _permit = permit;
    let client = ClientConn::new(peer.ip(), tls.is_some());
    let max_head = state.limits.max_header_bytes;
    let svc_state = state.clone();
    let service = move |framing: Arc<framing::Flag>| {
        let state = svc_state.clone();
        // Shared by the connection's requests (a count, not a copy, per request).
        let conn = Arc::new(ConnInfo {
            client: client.clone(),
            framing,
        });
        service_fn(move |req| {
            let state = state.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handle(req, &state, &conn).await) }
        })
    };
    let result = match tls {
        None => {
            let (io, flag) = framing::Scanned::new(stream, max_head);
            let io = io.first_byte_within(state.limits.header_read_timeout);
            let fut = builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
            watcher.watch(fut.into_owned()).await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(state.limits.header_read_timeout, acceptor.accept(stream))
                    .await;
            let Ok(Ok(tls_stream)) = handshake else {
                tracing::debug!(%peer, "TLS handshake failed or timed out");
                return;
            };
            let (io, flag) = framing::Scanned::new(tls_stream, max_head);
            let io = io.first_byte_within(state.limits.header_read_timeout);
            let fut = builder.serve_connection_with_upgrades(TokioIo::new(io), service(flag));
            watcher.watch(fut.into_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}

/// Build a TLS acceptor (HTTP/2 and HTTP/1.1 via ALPN) from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    Ok(tls_reloading(cert, key)?.0)
}

/// A TLS acceptor whose certificate comes from `cert`/`key` and follows them: call
/// [`CertReloader::reload_if_changed`] (serve polls it) after the files change.
pub fn tls_reloading(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(TlsAcceptor, Arc<CertReloader>)> {
    let reloader = Arc::new(CertReloader::open(cert, key)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(reloader.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
}

/// The serving certificate, swapped whole when its files change (cert-manager renewals, a
/// Secret update). A pair that does not load (half-written, key not matching) is refused and
/// the current certificate kept.
#[derive(Debug)]
pub struct CertReloader {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
    /// The file contents the current certificate was built from.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertReloader {
    fn open(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        let files = read_pair(cert, key)?;
        let certified = certified_key(cert, key, &files)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: arc_swap::ArcSwap::from_pointee(certified),
            loaded: std::sync::Mutex::new(files),
        })
    }

    /// Re-read both files; swap the certificate when they changed and load. `Ok(true)` when a
    /// new certificate is now served; an error leaves the current one in place.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let files = read_pair(&self.cert, &self.key)?;
        let mut loaded = self.loaded.lock().expect("cert reloader lock");
        if *loaded == files {
            return Ok(false);
        }
        let certified = certified_key(&self.cert, &self.key, &files)?;
        self.current.store(Arc::new(certified));
        *loaded = files;
        Ok(true)
    }

    /// Poll the files every `every` and reload on change (errors are logged, the current
    /// certificate is kept).
    pub fn spawn_watcher(self: &Arc<Self>, every: std::time::Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = me.upgrade() else { return };
                match me.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %me.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "TLS certificate reload failed; still serving the previous certificate"
                    ),
                }
            }
        });
    }
}

impl rustls::server::ResolvesServerCert for CertReloader {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| {
            anyhow::anyhow!(
                "{} (tls.cert/tls.key): cannot read the {what}: {e}",
                p.display()
            )
        })
    };
    Ok((read(cert, "certificate")?, read(key, "private key")?))
}

/// Parse a PEM certificate chain and key into what rustls serves; errors name the file.
fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
) -> anyhow::Result<rustls::sign::CertifiedKey> {
    use rustls_pki_types::pem::Error as PemError;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let explain = |file: &std::path::Path, what: &str, e: PemError| match e {
        PemError::NoItemsFound => anyhow::anyhow!(
            "{} (tls.cert/tls.key): no PEM {what} found; expected a -----BEGIN {}----- block",
            file.display(),
            if what == "certificate" {
                "CERTIFICATE"
            } else {
                "PRIVATE KEY"
            }
        ),
        other => anyhow::anyhow!(
            "{} (tls.cert/tls.key): cannot read the {what}: {other}",
            file.display()
        ),
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| explain(cert, "certificate", e))?;
    if certs.is_empty() {
        return Err(explain(cert, "certificate", PemError::NoItemsFound));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| explain(key, "private key", e))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key_der, &provider).map_err(|e| {
        anyhow::anyhow!(
            "{} and {} (tls.cert/tls.key): {e}; is the key the certificate's own?",
            cert.display(),
            key.display()
        )
    })
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
