//! `/api/v1/connections` and `/api/v1/notifications` (seed §1.2, DESIGN §6).

use axum::extract::State;
use axum::Json;
use myagent_proto::v1 as pb;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, JsonBody, OptionalJsonBody, QueryParams};
use crate::model::connections::*;
use crate::upstream::{Auth, Upstream};

type ApiResult<T> = Result<T, ApiError>;

/// Cluster-wide connection view.
#[utoipa::path(get, path = "/api/v1/connections", tag = "connections", operation_id = "list_connections",
    params(ListConnectionsQuery),
    responses((status = 200, body = ConnectionList), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<ListConnectionsQuery>,
) -> ApiResult<Json<ConnectionList>> {
    let req = pb::ListConnectionsRequest {
        service: q.service_id.unwrap_or_default(),
        status: q.status.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        node_id: q.node_id.unwrap_or_default(),
    };
    let r = up
        .connections()
        .list_connections(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Close a client connection, optionally telling the client why first.
#[utoipa::path(post, path = "/api/v1/connections/{id}/disconnect", tag = "connections",
    params(("id" = String, Path, description = "Connection id")),
    request_body(content = Option<DisconnectBody>, description = "Optional"),
    responses((status = 200, body = DisconnectResponse), (status = 404, body = ErrorBody)))]
pub async fn disconnect(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    OptionalJsonBody(body): OptionalJsonBody<DisconnectBody>,
) -> ApiResult<Json<DisconnectResponse>> {
    let body = body.unwrap_or_default();
    let req = pb::DisconnectRequest {
        connection_id: id,
        reason: body
            .reason
            .unwrap_or_else(|| "Administrative disconnect".into()),
        notify_client: body.notify_client,
    };
    let r = up
        .connections()
        .disconnect(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Send a `management_notification` to the clients of one service, or to every client.
#[utoipa::path(post, path = "/api/v1/notifications", tag = "connections",
    request_body = NotificationBody,
    responses((status = 200, body = NotificationResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn notify(
    State(up): State<Upstream>,
    auth: Auth,
    JsonBody(body): JsonBody<NotificationBody>,
) -> ApiResult<Json<NotificationResponse>> {
    let req: pb::SendNotificationRequest = body.into();
    let r = up
        .connections()
        .send_notification(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}
