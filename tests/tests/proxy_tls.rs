//! The proxy's client listener over TLS (`--tls-cert`/`--tls-key`): a `wss://` client verifying
//! the certificate is routed and relayed; a plain-text client and a bad handshake get nothing
//! and leave the listener serving.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use myagent_tests::agents::echo_agent;
use myagent_tests::proxy::*;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

/// A TLS client trusting only the test CA.
fn connector(ca_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn wss_clients_are_routed_and_plain_clients_refused() {
    let dir = tempfile::tempdir().unwrap();
    myagent_tests::tls::make_certs(dir.path());
    let agent = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let proxy = spawn_proxy(&[cp.url()], |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    cp.push(full(
        1,
        vec![service("id-a", "a", agent.addr, &["t"])],
        vec![],
    ));
    proxy.wait_version(1).await;

    // Plain text on the TLS port: the handshake fails, no upgrade happens.
    let plain = tokio_tungstenite::connect_async(proxy.ws_url("tag=t")).await;
    assert!(
        plain.is_err(),
        "plain ws:// must not be served on a TLS listener"
    );

    let tls = connector(&dir.path().join("ca.pem"));
    let tcp = tokio::net::TcpStream::connect(proxy.ws_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws?tag=t", proxy.ws_addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(resp.status(), 101);
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("connection_routed in time")
        .expect("a frame")
        .expect("a valid frame");
    let ev: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(ev["event"], "connection_routed", "{ev}");
    assert_eq!(ev["data"]["target_service"], "a", "{ev}");
    ws.send(Message::Text(r#"{"over":"tls"}"#.into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("reply in time")
        .expect("a frame")
        .expect("a valid frame");
    let echoed: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(echoed["original_message"]["over"], "tls", "{echoed}");
}

#[tokio::test]
async fn unreadable_tls_files_fail_at_bind_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cli = myagent_data_plane::Cli::for_addrs(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &["http://127.0.0.1:1".to_string()],
        dir.path().to_path_buf(),
    );
    cli.tls_cert = Some(dir.path().join("missing.pem"));
    cli.tls_key = Some(dir.path().join("missing.key"));
    let err = match myagent_data_plane::bind(cli).await {
        Ok(_) => panic!("bind must fail without the certificate file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--tls-cert"), "{err}");
}
