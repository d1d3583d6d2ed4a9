//! Bind, then run: `bind` opens the listener (port 0 allowed) and builds the lazy upstream
//! channel; `Bound::run` serves until the cancellation token fires, then drains gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use myagent_proto::v1 as pb;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{router, AppState};
use crate::config::Cli;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::upstream::{Auth, Upstream};

/// A gateway whose listener is bound; `listen_addr` is the real address (port 0 resolved).
pub struct Bound {
    pub listen_addr: SocketAddr,
    /// `https` when the listener serves TLS, else `http`.
    pub scheme: &'static str,
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    upstream: Upstream,
}

/// Validates the configuration, builds the (lazy) control-plane channel and binds the listener.
/// Does not contact the control plane.
pub async fn bind(cli: Cli) -> Result<Bound> {
    if cli.max_body_bytes == 0 {
        return Err(Error::Config("--max-body-bytes must be at least 1".into()));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        return Err(Error::Config(format!(
            "--log-level `{}`: {e}",
            cli.log_level
        )));
    }
    let upstream = Upstream::new(&cli)?;
    let metrics = Metrics::new().map_err(|e| Error::Config(format!("metrics: {e}")))?;
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(cli.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cli.listen,
            source,
        })?;
    let listen_addr = listener.local_addr()?;
    let app = router(
        AppState {
            upstream: upstream.clone(),
            metrics,
        },
        cli.max_body_bytes,
    );
    Ok(Bound {
        listen_addr,
        scheme: if tls.is_some() { "https" } else { "http" },
        listener,
        app,
        tls,
        upstream,
    })
}

impl Bound {
    /// Base URL of the listener, e.g. `http://127.0.0.1:8000`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.listen_addr)
    }

    /// Serves until `shutdown` is cancelled; in-flight requests then finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(addr = %self.listen_addr, scheme = self.scheme, "gateway listening");
        if !self.listen_addr.ip().is_loopback() {
            tokio::spawn(warn_if_open(
                self.upstream.clone(),
                self.listen_addr,
                shutdown.clone(),
            ));
        }
        match self.tls {
            None => {
                axum::serve(self.listener, self.app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await?;
            }
            Some(acceptor) => serve_tls(self.listener, acceptor, self.app, shutdown).await,
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Tries of the start-up check below, `OPEN_CHECK_PAUSE` apart (the control plane may still be
/// starting).
const OPEN_CHECK_TRIES: u32 = 5;
const OPEN_CHECK_PAUSE: Duration = Duration::from_secs(2);

/// The gateway holds no tokens: it passes each client's `authorization` on, and the control
/// plane decides. Listening beyond loopback in front of a control plane that needs no token
/// leaves the whole API open, so say so at start-up (DESIGN §10), as the control plane does for
/// its own listener: one call without a token tells.
async fn warn_if_open(upstream: Upstream, listen: SocketAddr, stop: CancellationToken) {
    for _ in 0..OPEN_CHECK_TRIES {
        let req = upstream.request(
            &Auth::default(),
            pb::ListServicesRequest {
                limit: 1,
                ..Default::default()
            },
            0.0,
        );
        let mut services = upstream.services();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = services.list_services(req) => r,
        };
        match answer {
            Ok(_) => {
                tracing::warn!(
                    listen = %listen,
                    "NO AUTHENTICATION: the REST API at {listen} reaches a control plane that \
                     accepts calls without a token; set --auth-token-file or MYAGENT_AUTH_TOKENS \
                     on the control plane"
                );
                return;
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                tracing::info!("the control plane requires a bearer token; clients' are passed on");
                return;
            }
            // Unreachable or failing: try again shortly.
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(OPEN_CHECK_PAUSE) => {}
        }
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::Tls(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "--tls-cert {}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// axum::serve has no TLS; this is the same loop over rustls streams.
async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let builder = ConnBuilder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(app),
            );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
