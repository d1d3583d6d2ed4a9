//! gRPC clients to the control plane: one channel, the bearer token on every call.

use std::time::Duration;

use myagent_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::args::GlobalArgs;
use crate::error::{Error, Result};

/// Adds `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// Every client of the `myagent.v1` API over one connection.
#[derive(Clone)]
pub struct Clients {
    pub server: String,
    pub services: pb::service_registry_client::ServiceRegistryClient<Svc>,
    pub rules: pb::routing_rules_client::RoutingRulesClient<Svc>,
    pub connections: pb::connections_client::ConnectionsClient<Svc>,
    pub health: pb::health_checks_client::HealthChecksClient<Svc>,
    pub logs: pb::logs_client::LogsClient<Svc>,
    pub stats: pb::stats_client::StatsClient<Svc>,
}

impl Clients {
    /// Connects eagerly so an unreachable server is reported as such, with its address.
    pub async fn connect(global: &GlobalArgs) -> Result<Self> {
        let server = normalize_server(&global.server);
        let mut endpoint = Endpoint::from_shared(server.clone())
            .map_err(|e| Error::Usage(format!("invalid --server `{}`: {e}", global.server)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs_f64(global.timeout))
            .tcp_nodelay(true);
        let tls = myagent_gateway::upstream::control_plane_tls(
            server.starts_with("https://"),
            global.control_plane_ca.as_deref(),
            global
                .control_plane_cert
                .as_deref()
                .zip(global.control_plane_key.as_deref()),
            global.control_plane_domain.as_deref(),
        )
        .map_err(Error::Usage)?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Usage(format!("TLS towards {server}: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| Error::Unreachable {
            server: server.clone(),
            reason: transport_reason(&e),
        })?;
        let header = match &global.token {
            Some(t) if !t.is_empty() => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Error::Usage("--token contains characters not allowed in a header".into())
                    })?,
            ),
            _ => None,
        };
        let svc = |c: Channel| {
            InterceptedService::new(
                c,
                Auth {
                    header: header.clone(),
                },
            )
        };
        Ok(Clients {
            server,
            services: pb::service_registry_client::ServiceRegistryClient::new(svc(channel.clone())),
            rules: pb::routing_rules_client::RoutingRulesClient::new(svc(channel.clone())),
            connections: pb::connections_client::ConnectionsClient::new(svc(channel.clone())),
            health: pb::health_checks_client::HealthChecksClient::new(svc(channel.clone())),
            logs: pb::logs_client::LogsClient::new(svc(channel.clone())),
            stats: pb::stats_client::StatsClient::new(svc(channel)),
        })
    }

    /// Maps a failed call's status to the CLI error.
    pub fn err(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.server)
    }
}

/// Accepts `host:port` as well as a URL.
pub fn normalize_server(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// The innermost cause is the useful part (`Connection refused (os error 111)`).
fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        assert_eq!(
            normalize_server("127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalize_server("http://a:1/"), "http://a:1");
        assert_eq!(normalize_server("https://a:1"), "https://a:1");
    }
}
