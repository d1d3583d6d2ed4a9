//! The gateway's only dependency: a lazy gRPC channel to the control plane (one URL, or several
//! balanced with failover), the generated clients, and per-call metadata (auth, deadline).

use std::path::Path;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use myagent_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::Cli;
use crate::error::{ApiError, Error, Result};

type Services = pb::service_registry_client::ServiceRegistryClient<Channel>;
type Rules = pb::routing_rules_client::RoutingRulesClient<Channel>;
type Connections = pb::connections_client::ConnectionsClient<Channel>;
type Stats = pb::stats_client::StatsClient<Channel>;
type Health = pb::health_checks_client::HealthChecksClient<Channel>;
type Logs = pb::logs_client::LogsClient<Channel>;

/// Cheap to clone: every clone shares the one channel.
#[derive(Clone)]
pub struct Upstream {
    channel: Channel,
    timeout: Duration,
}

impl Upstream {
    /// Builds the channel without connecting: the gateway starts even while the control plane
    /// is down, and calls made meanwhile answer 503.
    pub fn new(cli: &Cli) -> Result<Self> {
        let tls = client_tls(cli)?;
        let mut endpoints = Vec::with_capacity(cli.control_plane.len());
        for url in cli
            .control_plane
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        {
            let mut ep = Endpoint::from_shared(url.to_string())
                .map_err(|e| Error::Config(format!("--control-plane `{url}`: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                ep = ep
                    .tls_config(tls.clone())
                    .map_err(|e| Error::Tls(format!("control plane `{url}`: {e}")))?;
            }
            endpoints.push(ep);
        }
        let channel = match endpoints.len() {
            0 => {
                return Err(Error::Config(
                    "--control-plane needs at least one URL".into(),
                ))
            }
            1 => endpoints.remove(0).connect_lazy(),
            // p2c balancing over the replicas. A replica that does not take connections is
            // taken out until it does: tonic's balancer keeps sending calls to a dead endpoint,
            // so every other call failed while one replica was down.
            _ => {
                let (channel, tx) = Channel::balance_channel(endpoints.len() * 4);
                for (i, ep) in endpoints.iter().enumerate() {
                    let _ = tx.try_send(Change::Insert(i, ep.clone()));
                }
                tokio::spawn(eject_dead_replicas(endpoints, tx));
                channel
            }
        };
        Ok(Upstream {
            channel,
            timeout: cli.request_timeout(),
        })
    }

    pub fn services(&self) -> Services {
        Services::new(self.channel.clone())
    }
    pub fn rules(&self) -> Rules {
        Rules::new(self.channel.clone())
    }
    pub fn connections(&self) -> Connections {
        Connections::new(self.channel.clone())
    }
    pub fn stats(&self) -> Stats {
        Stats::new(self.channel.clone())
    }
    pub fn health(&self) -> Health {
        Health::new(self.channel.clone())
    }
    pub fn logs(&self) -> Logs {
        Logs::new(self.channel.clone())
    }

    /// Wraps a message with the client's `Authorization` (passed through unchanged) and a
    /// deadline of the request timeout plus any `wait_for_sync`.
    pub fn request<T>(&self, auth: &Auth, msg: T, wait_for_sync: f64) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(v) = &auth.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        req.set_timeout(self.timeout + Duration::from_secs_f64(wait_for_sync.max(0.0)));
        req
    }
}

/// How often the replicas are probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Keeps the balancer to the replicas that answer (always at least one, so calls fail fast
/// rather than wait for a replica). A replica answers when its gRPC health (`grpc.health.v1`,
/// open without a token) says SERVING within the probe timeout: a stopped replica refuses the
/// connection, but a hung one (frozen, overloaded) accepts it and answers nothing, and calls
/// sent to it waited out the request timeout. One that cannot reach the store says NOT_SERVING
/// and leaves too while another replica is live. Ends with the channel.
async fn eject_dead_replicas(
    endpoints: Vec<Endpoint>,
    tx: tokio::sync::mpsc::Sender<Change<usize, Endpoint>>,
) {
    let probes: Vec<HealthClient<Channel>> = endpoints
        .iter()
        .map(|ep| HealthClient::new(ep.clone().timeout(PROBE_TIMEOUT).connect_lazy()))
        .collect();
    let mut live = vec![true; endpoints.len()];
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        for (i, ep) in endpoints.iter().enumerate() {
            let up = serving(probes[i].clone()).await;
            let others_live = live.iter().enumerate().any(|(j, l)| j != i && *l);
            let change = match (live[i], up) {
                (false, true) => Change::Insert(i, ep.clone()),
                (true, false) if others_live => Change::Remove(i),
                _ => continue,
            };
            if up {
                tracing::info!(control_plane = %ep.uri(), "control-plane replica back in the balancer");
            } else {
                tracing::warn!(control_plane = %ep.uri(), "control-plane replica not answering: out of the balancer");
            }
            if tx.send(change).await.is_err() {
                return;
            }
            live[i] = up;
        }
    }
}

async fn serving(mut probe: HealthClient<Channel>) -> bool {
    let check = probe.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

fn client_tls(cli: &Cli) -> Result<Option<ClientTlsConfig>> {
    control_plane_tls(
        cli.control_plane
            .iter()
            .any(|u| u.trim().starts_with("https://")),
        cli.control_plane_ca.as_deref(),
        cli.control_plane_cert
            .as_deref()
            .zip(cli.control_plane_key.as_deref()),
        cli.control_plane_domain.as_deref(),
    )
    .map_err(Error::Tls)
}

/// TLS towards the control plane from the `--control-plane-ca`, `--control-plane-cert` /
/// `--control-plane-key` and `--control-plane-domain` flags (the gateway's and the CLI's):
/// `None` for a plain `http://` control plane given none of them. Errors name the flag whose
/// file cannot be read.
pub fn control_plane_tls(
    https: bool,
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> std::result::Result<Option<ClientTlsConfig>, String> {
    if !https && ca.is_none() && cert_key.is_none() {
        return Ok(None);
    }
    let read = |flag: &str, p: &Path| {
        std::fs::read(p).map_err(|e| format!("--control-plane-{flag} {}: {e}", p.display()))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(read("ca", ca)?));
    }
    if let Some((cert, key)) = cert_key {
        tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    Ok(Some(tls))
}

/// The client's `Authorization` header, forwarded as gRPC metadata without inspection: the
/// control plane alone decides (DESIGN §10). Never logged.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(header::AUTHORIZATION) {
            None => Ok(Auth(None)),
            Some(v) => to_metadata(v).map(|m| Auth(Some(m))).ok_or_else(|| {
                ApiError::new(
                    crate::error::UNAUTHORIZED,
                    "The Authorization header is not valid ASCII",
                )
            }),
        }
    }
}

fn to_metadata(v: &HeaderValue) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let s = v.to_str().ok()?;
    MetadataValue::try_from(s).ok()
}
