//! `connections`, `disconnect`, `notify`.

use myagent_proto::v1 as pb;

use crate::args::{ConnectionsArgs, DisconnectArgs, NotifyArgs};
use crate::client::Clients;
use crate::error::Result;
use crate::output::{json, text, Rendered};

/// The request of `connections`: active ones unless `--status` says otherwise (`all` = no
/// status filter).
pub fn list_request(a: &ConnectionsArgs) -> pb::ListConnectionsRequest {
    let status = match a.status.trim() {
        "all" => String::new(),
        s => s.to_string(),
    };
    pb::ListConnectionsRequest {
        service: a.service.clone().unwrap_or_default(),
        status,
        limit: a.limit.unwrap_or(0),
        node_id: String::new(),
    }
}

pub async fn list(c: &mut Clients, a: &ConnectionsArgs) -> Result<Rendered> {
    let req = list_request(a);
    let r = c
        .connections
        .list_connections(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::connections(&r), text::connections(&r)))
}

pub async fn disconnect(c: &mut Clients, a: &DisconnectArgs) -> Result<Rendered> {
    let req = pb::DisconnectRequest {
        connection_id: a.connection_id.clone(),
        reason: a.reason.clone(),
        notify_client: Some(!a.no_notify),
    };
    let r = c
        .connections
        .disconnect(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::disconnect(&r), text::disconnect(&r)))
}

pub async fn notify(c: &mut Clients, a: &NotifyArgs) -> Result<Rendered> {
    let req = pb::SendNotificationRequest {
        service: a.service.clone().unwrap_or_default(),
        r#type: a.kind.clone(),
        message: a.message.clone(),
        severity: a.severity.clone(),
        countdown_seconds: a.countdown,
    };
    let r = c
        .connections
        .send_notification(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(
        json::notification(&r),
        text::notification(&r),
    ))
}
