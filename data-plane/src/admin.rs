//! Admin HTTP endpoints: `/healthz` (alive), `/readyz` (holds a config), `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let version = s.config.borrow().version;
    let ready = s.ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "config_version": version,
        "node_id": s.settings.node_id,
        "control_plane_connected": s.metrics.control_plane_connected.get() == 1,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    s.metrics
        .connections_active
        .set(s.active.load(Ordering::Relaxed) as i64);
    s.metrics
        .config_version
        .set(s.config.borrow().version as i64);
    s.metrics.sessions_known.set(s.sessions.len() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
