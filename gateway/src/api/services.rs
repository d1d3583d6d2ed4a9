//! `/api/v1/services`: register, list, get, config, delete, start/stop/restart (seed §1.1).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use myagent_proto::v1 as pb;

use crate::convert::wait_for_sync;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, JsonBody, OptionalJsonBody, QueryParams};
use crate::model::services::*;
use crate::upstream::{Auth, Upstream};

type ApiResult<T> = Result<T, ApiError>;

/// Register a service (stopped until started).
#[utoipa::path(post, path = "/api/v1/services", tag = "services",
    params(WriteQuery), request_body = RegisterServiceBody,
    responses((status = 201, body = RegisterServiceResponse),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<WriteQuery>,
    JsonBody(body): JsonBody<RegisterServiceBody>,
) -> ApiResult<(StatusCode, Json<RegisterServiceResponse>)> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = body.into_request(wait)?;
    let r = up
        .services()
        .register_service(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// List services, filtered by tag and status, paged.
#[utoipa::path(get, path = "/api/v1/services", tag = "services", operation_id = "list_services", params(ListServicesQuery),
    responses((status = 200, body = ServiceList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<ListServicesQuery>,
) -> ApiResult<Json<ServiceList>> {
    let req = pb::ListServicesRequest {
        tag: q.tag.unwrap_or_default(),
        status: q.status.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        offset: q.offset.unwrap_or(0),
    };
    let r = up
        .services()
        .list_services(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// One service with config, stats, health, runtime and proxy sync state.
#[utoipa::path(get, path = "/api/v1/services/{id}", tag = "services", operation_id = "get_service",
    params(("id" = String, Path, description = "Service id or name")),
    responses((status = 200, body = ServiceDetail), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
) -> ApiResult<Json<ServiceDetail>> {
    let req = pb::GetServiceRequest { service: id };
    let s = up
        .services()
        .get_service(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Merge the given config keys into the service's configuration.
#[utoipa::path(put, path = "/api/v1/services/{id}/config", tag = "services",
    params(("id" = String, Path, description = "Service id or name"), WriteQuery),
    request_body = ServiceConfigBody,
    responses((status = 200, body = UpdateConfigResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update_config(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
    JsonBody(body): JsonBody<ServiceConfigBody>,
) -> ApiResult<Json<UpdateConfigResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = pb::UpdateServiceConfigRequest {
        service: id,
        config: Some(body.into()),
        wait_for_sync: wait,
    };
    let s = up
        .services()
        .update_service_config(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(s.into()))
}

/// Delete a service (stops it first when running).
#[utoipa::path(delete, path = "/api/v1/services/{id}", tag = "services", operation_id = "delete_service",
    params(("id" = String, Path, description = "Service id or name"), WriteQuery),
    responses((status = 200, body = DeleteResponse), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
) -> ApiResult<Json<DeleteResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = pb::DeleteServiceRequest {
        service: id,
        wait_for_sync: wait,
    };
    let r = up
        .services()
        .delete_service(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(DeleteResponse::new(
        r.message,
        "Service deleted successfully",
    )))
}

/// Start a service (managed: launch; external: admit to routing).
#[utoipa::path(post, path = "/api/v1/services/{id}/start", tag = "services",
    params(("id" = String, Path, description = "Service id or name"), WriteQuery),
    responses((status = 200, body = LifecycleResponse), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn start(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
) -> ApiResult<Json<LifecycleResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = pb::StartServiceRequest {
        service: id,
        wait_for_sync: wait,
    };
    let r = up
        .services()
        .start_service(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Stop a service (drain, SIGTERM, then SIGKILL after the grace period).
#[utoipa::path(post, path = "/api/v1/services/{id}/stop", tag = "services",
    params(("id" = String, Path, description = "Service id or name"), WriteQuery),
    responses((status = 200, body = LifecycleResponse), (status = 404, body = ErrorBody)))]
pub async fn stop(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
) -> ApiResult<Json<LifecycleResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = pb::StopServiceRequest {
        service: id,
        wait_for_sync: wait,
    };
    let r = up
        .services()
        .stop_service(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Restart a service; with `grace_seconds`, connected clients are notified first.
#[utoipa::path(post, path = "/api/v1/services/{id}/restart", tag = "services",
    params(("id" = String, Path, description = "Service id or name"), WriteQuery),
    request_body(content = Option<RestartBody>, description = "Optional"),
    responses((status = 200, body = LifecycleResponse), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn restart(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
    OptionalJsonBody(body): OptionalJsonBody<RestartBody>,
) -> ApiResult<Json<LifecycleResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let body = body.unwrap_or_default();
    // The deadline also covers the grace period the control plane waits before restarting.
    let grace = f64::from(body.grace_seconds.unwrap_or(0));
    let req = pb::RestartServiceRequest {
        service: id,
        grace_seconds: body.grace_seconds,
        message: body.message.unwrap_or_default(),
        wait_for_sync: wait,
    };
    let r = up
        .services()
        .restart_service(up.request(&auth, req, wait + grace))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}
