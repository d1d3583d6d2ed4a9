//! `/api/v1/routing/rules`: create, list, get, update (merge), delete (seed §1.3).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use myagent_proto::v1 as pb;

use crate::convert::wait_for_sync;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::model::routing::*;
use crate::model::services::{DeleteResponse, WriteQuery};
use crate::upstream::{Auth, Upstream};

type ApiResult<T> = Result<T, ApiError>;

/// Create a routing rule.
#[utoipa::path(post, path = "/api/v1/routing/rules", tag = "routing",
    params(WriteQuery), request_body = CreateRuleBody,
    responses((status = 201, body = RuleWriteResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<WriteQuery>,
    JsonBody(body): JsonBody<CreateRuleBody>,
) -> ApiResult<(StatusCode, Json<RuleWriteResponse>)> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = body.into_request(wait);
    let rule = up
        .rules()
        .create_rule(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(RuleWriteResponse::new(
            rule,
            "Routing rule created successfully",
        )),
    ))
}

/// List routing rules, highest priority first.
#[utoipa::path(get, path = "/api/v1/routing/rules", tag = "routing", operation_id = "list_rules", params(ListRulesQuery),
    responses((status = 200, body = RuleList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(up): State<Upstream>,
    auth: Auth,
    QueryParams(q): QueryParams<ListRulesQuery>,
) -> ApiResult<Json<RuleList>> {
    let req = pb::ListRulesRequest { enabled: q.enabled };
    let r = up
        .rules()
        .list_rules(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// One routing rule.
#[utoipa::path(get, path = "/api/v1/routing/rules/{id}", tag = "routing", operation_id = "get_rule",
    params(("id" = String, Path, description = "Rule id or name")),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
) -> ApiResult<Json<RuleView>> {
    let req = pb::GetRuleRequest { rule: id };
    let r = up
        .rules()
        .get_rule(up.request(&auth, req, 0.0))
        .await?
        .into_inner();
    Ok(Json(r.into()))
}

/// Update a rule: the given keys replace, absent keys keep their value.
#[utoipa::path(put, path = "/api/v1/routing/rules/{id}", tag = "routing",
    params(("id" = String, Path, description = "Rule id or name"), WriteQuery),
    request_body = UpdateRuleBody,
    responses((status = 200, body = RuleWriteResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
    JsonBody(body): JsonBody<UpdateRuleBody>,
) -> ApiResult<Json<RuleWriteResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = body.into_request(id, wait);
    let rule = up
        .rules()
        .update_rule(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(RuleWriteResponse::new(
        rule,
        "Routing rule updated successfully",
    )))
}

/// Delete a routing rule.
#[utoipa::path(delete, path = "/api/v1/routing/rules/{id}", tag = "routing", operation_id = "delete_rule",
    params(("id" = String, Path, description = "Rule id or name"), WriteQuery),
    responses((status = 200, body = DeleteResponse), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(up): State<Upstream>,
    auth: Auth,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<WriteQuery>,
) -> ApiResult<Json<DeleteResponse>> {
    let wait = wait_for_sync(q.wait_for_sync)?;
    let req = pb::DeleteRuleRequest {
        rule: id,
        wait_for_sync: wait,
    };
    let r = up
        .rules()
        .delete_rule(up.request(&auth, req, wait))
        .await?
        .into_inner();
    Ok(Json(DeleteResponse::new(
        r.message,
        "Routing rule deleted successfully",
    )))
}
