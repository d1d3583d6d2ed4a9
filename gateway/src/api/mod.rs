//! The HTTP surface: `/api/v1` routes, the OpenAPI document, `/healthz`, `/metrics`, and JSON
//! errors for unknown routes, wrong methods, oversized bodies and panics.

pub mod connections;
pub mod monitoring;
pub mod routing;
pub mod services;

use std::any::Any;

use axum::extract::{DefaultBodyLimit, FromRef, OriginalUri, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody, INTERNAL, INVALID_REQUEST};
use crate::metrics::{self, Metrics};
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct AppState {
    pub upstream: Upstream,
    pub metrics: Metrics,
}

impl FromRef<AppState> for Upstream {
    fn from_ref(s: &AppState) -> Self {
        s.upstream.clone()
    }
}

impl FromRef<AppState> for Metrics {
    fn from_ref(s: &AppState) -> Self {
        s.metrics.clone()
    }
}

/// Every route of the gateway.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/services", post(services::register).get(services::list))
        .route(
            "/services/{id}",
            get(services::get).delete(services::delete),
        )
        .route("/services/{id}/config", put(services::update_config))
        .route("/services/{id}/start", post(services::start))
        .route("/services/{id}/stop", post(services::stop))
        .route("/services/{id}/restart", post(services::restart))
        .route("/connections", get(connections::list))
        .route(
            "/connections/{id}/disconnect",
            post(connections::disconnect),
        )
        .route("/notifications", post(connections::notify))
        .route("/routing/rules", post(routing::create).get(routing::list))
        .route(
            "/routing/rules/{id}",
            get(routing::get)
                .put(routing::update)
                .delete(routing::delete),
        )
        .route("/stats/overview", get(monitoring::overview))
        .route("/stats/timeseries", get(monitoring::timeseries))
        .route("/health/services/{id}", get(monitoring::health))
        .route("/health/services/{id}/check", post(monitoring::check))
        .route("/health/services/{id}/history", get(monitoring::history))
        .route("/logs/services/{id}", get(monitoring::logs))
        .route("/logs/search", get(monitoring::search))
        .route("/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(method_not_allowed);

    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path only: query strings may carry user data.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn not_found(req: Request) -> ApiError {
    let path = req.uri().path().to_string();
    ApiError::new(
        INVALID_REQUEST,
        format!("No such endpoint: {} {}", req.method(), path),
    )
    .with_detail("path", path)
    .with_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed(OriginalUri(uri): OriginalUri, req: Request) -> ApiError {
    // Inside the nested `/api/v1` router `req.uri()` has the prefix stripped; name the path
    // the client sent, as the 404 fallback does.
    let path = uri.path().to_string();
    ApiError::new(
        INVALID_REQUEST,
        format!("Method {} is not allowed on {}", req.method(), path),
    )
    .with_detail("path", path)
    .with_detail("method", req.method().as_str())
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::new(INTERNAL, "internal error").into_response()
}

/// The OpenAPI 3 document of `/api/v1`, generated from the handler and wire types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "myagent-manager REST API",
        description = "Agent service registry, lifecycle, routing, connections, stats, health and logs."
    ),
    paths(
        services::register, services::list, services::get, services::update_config,
        services::delete, services::start, services::stop, services::restart,
        connections::list, connections::disconnect, connections::notify,
        routing::create, routing::list, routing::get, routing::update, routing::delete,
        monitoring::overview, monitoring::timeseries, monitoring::health, monitoring::check,
        monitoring::history, monitoring::logs, monitoring::search,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonErrors),
    tags(
        (name = "services", description = "Service registry and lifecycle (seed §1.1)"),
        (name = "connections", description = "Connections and notifications (seed §1.2)"),
        (name = "routing", description = "Routing rules (seed §1.3)"),
        (name = "stats", description = "Statistics (seed §1.4)"),
        (name = "health", description = "Health checks (seed §1.5)"),
        (name = "logs", description = "Logs (seed §1.6)"),
    )
)]
pub struct ApiDoc;

/// The error answers every operation can give besides its own (DESIGN §7), so a client
/// checking statuses against the document finds each: 400 (a bad query, body or
/// `wait_for_sync`), 401 (tokens required), 404 (an id or `service_id` that names nothing),
/// 413 (a body over the limit), 500 and 503 (store or control plane unavailable).
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let names_something = path.contains("{id}")
                    || op
                        .parameters
                        .iter()
                        .flatten()
                        .any(|p| p.name == "service_id");
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                add(
                    "400",
                    "INVALID_REQUEST: a bad parameter or body (`details.field` names it)",
                );
                add(
                    "401",
                    "UNAUTHORIZED: the control plane requires a bearer token",
                );
                if names_something {
                    add(
                        "404",
                        "The named service, rule or connection does not exist",
                    );
                }
                if op.request_body.is_some() {
                    add("413", "INVALID_REQUEST: the body is over the size limit");
                }
                add("500", "INTERNAL or SERVICE_START_FAILED");
                add(
                    "503",
                    "STORE_UNAVAILABLE (or the operation's own 503 codes)",
                );
            }
        }
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
