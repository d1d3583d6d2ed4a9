//! REST shapes of the connection view, admin disconnect (seed §1.2) and notifications (DESIGN §6).

use myagent_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::convert::ts;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConnectionsQuery {
    /// Service id or name.
    pub service_id: Option<String>,
    /// active | closed | all (the default: both)
    pub status: Option<String>,
    /// Default 100, max 10000.
    #[serde(default, deserialize_with = "super::page_limit")]
    pub limit: Option<u32>,
    /// Only connections held by this proxy node.
    pub node_id: Option<String>,
}

/// One connection (exactly the seed's keys).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub connection_id: String,
    pub session_id: String,
    pub client_ip: String,
    pub target_service_id: String,
    pub status: String,
    pub connected_at: Option<String>,
    pub last_activity: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub message_count: u64,
}

impl From<pb::Connection> for ConnectionView {
    fn from(c: pb::Connection) -> Self {
        ConnectionView {
            connected_at: ts(c.connected_at.as_ref()),
            last_activity: ts(c.last_activity.as_ref()),
            connection_id: c.connection_id,
            session_id: c.session_id,
            client_ip: c.client_ip,
            target_service_id: c.target_service_id,
            status: c.status,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            message_count: c.message_count,
        }
    }
}

/// `GET /connections` answer; `total` counts the matches before `limit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
    pub total: u64,
}

impl From<pb::ListConnectionsResponse> for ConnectionList {
    fn from(r: pb::ListConnectionsResponse) -> Self {
        ConnectionList {
            total: r.total,
            connections: r.connections.into_iter().map(Into::into).collect(),
        }
    }
}

/// `POST /connections/{id}/disconnect` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    pub reason: Option<String>,
    /// Send the client a `connection_closed` event first (default true).
    pub notify_client: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DisconnectResponse {
    pub success: bool,
    pub connection_id: String,
    pub message: String,
}

impl From<pb::DisconnectResponse> for DisconnectResponse {
    fn from(r: pb::DisconnectResponse) -> Self {
        DisconnectResponse {
            success: true,
            connection_id: r.connection_id,
            message: if r.message.is_empty() {
                "Connection disconnected".into()
            } else {
                r.message
            },
        }
    }
}

/// `POST /notifications` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationBody {
    /// Service id or name; absent = every connected client.
    pub service_id: Option<String>,
    /// e.g. `maintenance_window`
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// info | warning | error | critical (default info)
    pub severity: Option<String>,
    pub countdown_seconds: Option<u32>,
}

impl From<NotificationBody> for pb::SendNotificationRequest {
    fn from(b: NotificationBody) -> Self {
        pb::SendNotificationRequest {
            service: b.service_id.unwrap_or_default(),
            r#type: b.kind,
            message: b.message,
            severity: b.severity.unwrap_or_else(|| "info".into()),
            countdown_seconds: b.countdown_seconds,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationResponse {
    pub success: bool,
    /// Client connections that received it.
    pub delivered: u64,
}

impl From<pb::SendNotificationResponse> for NotificationResponse {
    fn from(r: pb::SendNotificationResponse) -> Self {
        NotificationResponse {
            success: true,
            delivered: r.delivered,
        }
    }
}
