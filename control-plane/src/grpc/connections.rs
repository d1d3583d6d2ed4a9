//! `Connections`: cluster-wide connection list, admin disconnect, client notifications.

use tonic::{Request, Response, Status};

use myagent_proto::v1 as pb;
use pb::connections_server::Connections;

use super::health::find_service;
use crate::error::Error;
use crate::stream::config::timestamp;
use crate::stream::connections::{list, ConnectionFilter};
use crate::stream::model::ConnectionRecord;
use crate::stream::{commands, Hub};

pub struct ConnectionsService {
    hub: Hub,
}

impl ConnectionsService {
    pub fn new(hub: Hub) -> Self {
        ConnectionsService { hub }
    }

    pub fn server(hub: Hub) -> pb::connections_server::ConnectionsServer<Self> {
        pb::connections_server::ConnectionsServer::new(Self::new(hub))
    }
}

impl From<ConnectionRecord> for pb::Connection {
    fn from(c: ConnectionRecord) -> Self {
        pb::Connection {
            connection_id: c.connection_id,
            session_id: c.session_id,
            client_ip: c.client_ip,
            target_service_id: c.target_service_id,
            target_service: c.target_service,
            node_id: c.node_id,
            status: c.status.as_str().to_string(),
            connected_at: Some(timestamp(c.connected_at)),
            last_activity: Some(timestamp(c.last_activity)),
            closed_at: c.closed_at.map(timestamp),
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            message_count: c.message_count,
            routing_strategy: c.routing_strategy,
        }
    }
}

const SEVERITIES: &[&str] = &["info", "warning", "error", "critical"];

#[tonic::async_trait]
impl Connections for ConnectionsService {
    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let r = request.into_inner();
        let filter = ConnectionFilter {
            service: r.service,
            status: r.status,
            limit: r.limit,
            node_id: r.node_id,
        };
        let (conns, total) = list(&self.hub, &filter)?;
        // A filter naming no registered service is SERVICE_NOT_FOUND, as for every other
        // `service_id` parameter; a deleted service's id still lists its remaining connections.
        if total == 0 && !filter.service.trim().is_empty() {
            find_service(&self.hub.inner.ctx, &filter.service).await?;
        }
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: conns.into_iter().map(Into::into).collect(),
            total,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        let r = request.into_inner();
        if r.connection_id.is_empty() {
            return Err(Error::invalid("connection_id", "connection_id is required").into());
        }
        let reason = if r.reason.is_empty() {
            "Administrative disconnect".to_string()
        } else {
            r.reason
        };
        commands::disconnect(
            &self.hub,
            &r.connection_id,
            &reason,
            r.notify_client.unwrap_or(true),
        )
        .await?;
        Ok(Response::new(pb::DisconnectResponse {
            message: format!("Connection {} disconnected", r.connection_id),
            connection_id: r.connection_id,
        }))
    }

    async fn send_notification(
        &self,
        request: Request<pb::SendNotificationRequest>,
    ) -> Result<Response<pb::SendNotificationResponse>, Status> {
        let r = request.into_inner();
        if r.message.trim().is_empty() {
            return Err(Error::invalid("message", "message is required").into());
        }
        let kind = if r.r#type.is_empty() {
            "info".to_string()
        } else {
            r.r#type
        };
        let severity = if r.severity.is_empty() {
            "info".to_string()
        } else {
            r.severity
        };
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(Error::invalid(
                "severity",
                "severity must be one of info, warning, error, critical",
            )
            .into());
        }
        let service_id = if r.service.is_empty() {
            String::new()
        } else {
            let m = self.hub.inner.mirror();
            m.service_by_id_or_name(&r.service)
                .map(|s| s.id.clone())
                .ok_or_else(|| Error::ServiceNotFound(r.service.clone()))?
        };
        let delivered = commands::notify(
            &self.hub,
            &service_id,
            &kind,
            &r.message,
            &severity,
            r.countdown_seconds,
        )
        .await?;
        Ok(Response::new(pb::SendNotificationResponse { delivered }))
    }
}
