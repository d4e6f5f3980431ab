//! HTTPS with ALPN: HTTP/2 and HTTP/1.1 clients both reach the pipeline.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

const ROUTES: &str = r#"
[[rule]]
id = "auth.me"
methods = ["GET"]
path = "/api/v1/auth/me"
auth = "user"
"#;

async fn tls_guard() -> (
    DbCopy,
    Mock,
    Guard,
    tempfile::TempDir,
    CertificateDer<'static>,
) {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = invoke_guard::server::tls_acceptor(&cert_path, &key_path).unwrap();
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let g = guard_tls(ROUTES, &db.path, &up.url(), acceptor).await;
    (db, up, g, dir, cert.cert.der().clone())
}

async fn connect(
    g: &Guard,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn http2_over_tls_with_alpn() {
    let (_db, up, g, _dir, root) = tls_guard().await;
    let m = manifest("6.14.2");
    let stream = connect(&g, &root, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!(
        "https://localhost:{}/api/v1/auth/me",
        g.addr.port()
    ))
    .header(
        "authorization",
        format!("Bearer {}", token_for(&m, "alice")),
    )
    .body(Empty::<Bytes>::new())
    .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.into_body().collect().await;
    let seen = up.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], format!("localhost:{}", g.addr.port()));
    // Anonymous over h2 is still 401.
    let req = Request::get(format!(
        "https://localhost:{}/api/v1/auth/me",
        g.addr.port()
    ))
    .body(Empty::<Bytes>::new())
    .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 401);
}

#[tokio::test]
async fn http1_over_tls_with_alpn() {
    let (_db, _up, g, _dir, root) = tls_guard().await;
    let m = manifest("6.14.2");
    let stream = connect(&g, &root, b"http/1.1").await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/api/v1/auth/me")
        .header("host", "localhost")
        .header(
            "authorization",
            format!("Bearer {}", token_for(&m, "alice")),
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}

#[tokio::test]
async fn certificates_are_reloaded_on_change_and_a_bad_pair_keeps_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert_path, first.cert.pem()).unwrap();
    std::fs::write(&key_path, first.signing_key.serialize_pem()).unwrap();
    let (acceptor, reloader) = invoke_guard::server::tls_reloading(&cert_path, &key_path).unwrap();
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let g = guard_tls(ROUTES, &db.path, &up.url(), acceptor).await;
    let served = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let s = connect(&g, first.cert.der(), b"http/1.1").await;
    assert_eq!(&served(&s), first.cert.der());
    assert!(!reloader.reload_if_changed().unwrap(), "nothing changed");
    // A renewal: new files, and new connections get the new certificate.
    let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert_path, second.cert.pem()).unwrap();
    std::fs::write(&key_path, second.signing_key.serialize_pem()).unwrap();
    assert!(reloader.reload_if_changed().unwrap());
    let s = connect(&g, second.cert.der(), b"http/1.1").await;
    assert_eq!(&served(&s), second.cert.der());
    // Half-way through a rotation (the key of another certificate): refused, second kept.
    let third = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&key_path, third.signing_key.serialize_pem()).unwrap();
    let e = reloader.reload_if_changed().unwrap_err().to_string();
    assert!(e.contains("cert.pem") && e.contains("key.pem"), "{e}");
    let s = connect(&g, second.cert.der(), b"http/1.1").await;
    assert_eq!(&served(&s), second.cert.der());
}
