//! `/api/v1/stats`, `/api/v1/health` and `/api/v1/logs` (seed §1.4–§1.6, DESIGN §9).

use axum::extract::State;
use axum::Json;
use myagent_proto::v1 as pb;

use crate::convert::parse_ts;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, QueryParams};
use crate::model::monitoring::*;
use crate::upstream::{Auth, Upstream};

type ApiResult<T> = Result<T, ApiError>;

/// Cluster overview (seed §1.4).
#[utoipa::path(get, path = "/api/v1/stats/overview", tag = "stats",
    responses((status = 200, body = Overview)))]
pub async fn overview(State(up): State<Upstream>, auth: Auth) -> ApiResult<Json<Overview>> {
    let r = up
        .stats()
        .get_overview(up.request(&auth, pb::GetOverviewRequest {}, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// A metric over a period, one point per interval, oldest first.
#[utoipa::path(get, path = "/api/v1/stats/timeseries", tag = "stats", params(TimeseriesQuery),
    responses((status = 200, body = Timeseries), (status = 400, body = ErrorBody)))]
pub async fn timeseries(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<TimeseriesQuery>,
) -> ApiResult<Json<Timeseries>> {
    let metric = q
        .metric
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("metric", "`metric` is required, e.g. connections"))?;
    // Absent = empty: the control plane owns the defaults (1h, and an interval that fits the
    // period), so `?period=1m` without an interval is not refused for a `5m` nobody asked for.
    let req = pb::GetTimeseriesRequest {
        metric,
        period: q.period.unwrap_or_default(),
        interval: q.interval.unwrap_or_default(),
        service: q.service_id.unwrap_or_default(),
    };
    let r = up
        .stats()
        .get_timeseries(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Latest health of a service.
#[utoipa::path(get, path = "/api/v1/health/services/{id}", tag = "health",
    params(("id" = String, Path, description = "Service id or name")),
    responses((status = 200, body = HealthView), (status = 404, body = ErrorBody)))]
pub async fn health(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
) -> ApiResult<Json<HealthView>> {
    let req = pb::GetHealthRequest { service: id };
    let r = up
        .health()
        .get_health(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Run a health check now and return its result.
#[utoipa::path(post, path = "/api/v1/health/services/{id}/check", tag = "health",
    params(("id" = String, Path, description = "Service id or name")),
    responses((status = 200, body = HealthView), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn check(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
) -> ApiResult<Json<HealthView>> {
    let req = pb::CheckHealthRequest { service: id };
    let r = up
        .health()
        .check_health(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Health-check history, newest first.
#[utoipa::path(get, path = "/api/v1/health/services/{id}/history", tag = "health",
    params(("id" = String, Path, description = "Service id or name"), LimitQuery),
    responses((status = 200, body = HealthHistoryView), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<LimitQuery>,
) -> ApiResult<Json<HealthHistoryView>> {
    let req = pb::GetHealthHistoryRequest {
        service: id,
        limit: q.limit.unwrap_or(0),
    };
    let r = up
        .health()
        .get_health_history(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// A service's logs: that level and above, since a time, newest `limit` lines oldest first.
#[utoipa::path(get, path = "/api/v1/logs/services/{id}", tag = "logs",
    params(("id" = String, Path, description = "Service id or name"), LogsQuery),
    responses((status = 200, body = LogsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Json<LogsView>> {
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_ts("since", s)?),
        None => None,
    };
    let req = pb::GetLogsRequest {
        service: id,
        level: q.level.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        since,
    };
    let r = up
        .logs()
        .get_logs(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Full-text search across services' logs.
#[utoipa::path(get, path = "/api/v1/logs/search", tag = "logs", params(LogSearchQuery),
    responses((status = 200, body = LogSearchView), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<LogSearchQuery>,
) -> ApiResult<Json<LogSearchView>> {
    let req = pb::SearchLogsRequest {
        query: q.query.unwrap_or_default(),
        service: q.service_id.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        level: q.level.unwrap_or_default(),
    };
    let r = up
        .logs()
        .search_logs(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}
