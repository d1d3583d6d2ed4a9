//! The gateway's errors: start-up failures (`Error`) and the one mapping of every request failure
//! to the seed's error JSON (`ApiError`, seed §4.1, DESIGN §7 table).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tonic_types::StatusExt;
use utoipa::ToSchema;

use crate::convert::now_rfc3339;

/// Failures while building or binding the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
pub const INTERNAL: &str = "INTERNAL";

/// The one table from error code to HTTP status (DESIGN §7). Unknown codes answer 500.
pub fn status_for_code(code: &str) -> StatusCode {
    match code {
        "INVALID_REQUEST" => StatusCode::BAD_REQUEST,
        "UNAUTHORIZED" => StatusCode::UNAUTHORIZED,
        "SERVICE_NOT_FOUND" | "CONNECTION_NOT_FOUND" | "RULE_NOT_FOUND" => StatusCode::NOT_FOUND,
        "SERVICE_ALREADY_EXISTS" | "RULE_ALREADY_EXISTS" | "PORT_IN_USE" => StatusCode::CONFLICT,
        "SERVICE_START_FAILED" | "INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
        "INSUFFICIENT_RESOURCES"
        | "ROUTING_FAILED"
        | "HEALTH_CHECK_FAILED"
        | "STORE_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A request failure rendered as `{"success": false, "error": {code, message, details}}`.
///
/// `status` overrides the table only for failures that happen before any API semantics apply:
/// unknown route (404), wrong method (405) and oversized body (413), all with `INVALID_REQUEST`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub details: Map<String, Value>,
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code: code.into(),
            message: message.into(),
            details: Map::new(),
            status: None,
        }
    }

    /// 400 `INVALID_REQUEST` naming the offending field (empty field = none applies).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let e = ApiError::new(INVALID_REQUEST, message);
        if field.is_empty() {
            e
        } else {
            e.with_detail("field", field)
        }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn http_status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| status_for_code(&self.code))
    }

    /// Maps a gRPC failure from the control plane. The seed code travels as the status's
    /// `google.rpc.ErrorInfo` reason and its metadata becomes `details`; a status without one
    /// (transport failures, foreign servers) is classified by its gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Some(info) = status.get_details_error_info() {
            if !info.reason.is_empty() {
                let mut e = ApiError::new(info.reason.clone(), status.message());
                for (k, v) in &info.metadata {
                    e.details.insert(k.clone(), detail_value(k, v));
                }
                if e.message.is_empty() {
                    e.message = default_message(&e.code).to_string();
                }
                return e;
            }
        }
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ApiError::invalid("", status.message()),
            Code::Unauthenticated | Code::PermissionDenied => ApiError::new(
                UNAUTHORIZED,
                non_empty(status.message(), "Missing or invalid bearer token"),
            ),
            // The control plane itself cannot be reached or did not answer in time: the API's
            // state is unavailable to us, which is what STORE_UNAVAILABLE (503) tells clients.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                tracing::warn!(grpc_code = ?status.code(), error = %status.message(), "control plane unavailable");
                ApiError::new(
                    STORE_UNAVAILABLE,
                    if status.code() == Code::DeadlineExceeded {
                        "The control plane did not answer in time; retry shortly (a write \
                         may still apply: read before retrying it)"
                    } else {
                        "The control plane is unreachable; retry shortly"
                    },
                )
                .with_detail("upstream", "control_plane")
            }
            Code::Unimplemented => {
                tracing::error!(error = %status.message(), "control plane does not implement the call");
                ApiError::new(
                    INTERNAL,
                    "The control plane does not support this call (version mismatch?)",
                )
            }
            other => {
                tracing::error!(grpc_code = ?other, error = %status.message(), "unexpected control-plane error");
                ApiError::new(INTERNAL, "internal error")
            }
        }
    }

    /// The JSON body (with `details.timestamp` added).
    pub fn body(&self) -> ErrorBody {
        let mut details = self.details.clone();
        details.insert("timestamp".into(), Value::String(now_rfc3339()));
        ErrorBody {
            success: false,
            error: ErrorObject {
                code: self.code.clone(),
                message: self.message.clone(),
                details,
            },
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError::from_status(&s)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(code = %self.code, message = %self.message, "request rejected");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

/// Seed §4.1 error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// One of the seed's codes, e.g. `SERVICE_NOT_FOUND`.
    pub code: String,
    pub message: String,
    /// Context: `timestamp` always, `field` for invalid input, ids for missing resources.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

fn default_message(code: &str) -> &'static str {
    match code {
        "UNAUTHORIZED" => "Missing or invalid bearer token",
        "STORE_UNAVAILABLE" => "The state store is unavailable; retry shortly",
        "INVALID_REQUEST" => "Invalid request",
        _ => "Request failed",
    }
}

fn non_empty(s: &str, fallback: &str) -> String {
    if s.is_empty() {
        fallback.to_string()
    } else {
        s.to_string()
    }
}

/// ErrorInfo metadata is string-valued; numeric details the seed shows as numbers go back to
/// numbers.
fn detail_value(key: &str, value: &str) -> Value {
    if matches!(key, "port" | "max_sessions" | "limit") {
        if let Ok(n) = value.parse::<u64>() {
            return Value::from(n);
        }
    }
    Value::String(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    fn status_with(code: tonic::Code, reason: &str, meta: &[(&str, &str)]) -> tonic::Status {
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let details = ErrorDetails::with_error_info(reason, "myagent.v1", meta);
        tonic::Status::with_error_details(code, "boom", details)
    }

    #[test]
    fn table_matches_design() {
        let cases = [
            ("INVALID_REQUEST", 400),
            ("SERVICE_NOT_FOUND", 404),
            ("CONNECTION_NOT_FOUND", 404),
            ("RULE_NOT_FOUND", 404),
            ("SERVICE_ALREADY_EXISTS", 409),
            ("RULE_ALREADY_EXISTS", 409),
            ("PORT_IN_USE", 409),
            ("SERVICE_START_FAILED", 500),
            ("INSUFFICIENT_RESOURCES", 503),
            ("ROUTING_FAILED", 503),
            ("HEALTH_CHECK_FAILED", 503),
            ("STORE_UNAVAILABLE", 503),
            ("UNAUTHORIZED", 401),
            ("INTERNAL", 500),
            ("SOMETHING_NEW", 500),
        ];
        for (code, want) in cases {
            assert_eq!(status_for_code(code).as_u16(), want, "{code}");
        }
    }

    #[test]
    fn error_info_reason_and_metadata_become_code_and_details() {
        let s = status_with(
            tonic::Code::NotFound,
            "SERVICE_NOT_FOUND",
            &[("service_id", "abc")],
        );
        let e = ApiError::from_status(&s);
        assert_eq!(e.code, "SERVICE_NOT_FOUND");
        assert_eq!(e.message, "boom");
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["details"]["service_id"], "abc");
        let ts = body["error"]["details"]["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
    }

    #[test]
    fn port_detail_is_numeric() {
        let s = status_with(
            tonic::Code::AlreadyExists,
            "PORT_IN_USE",
            &[("port", "8081")],
        );
        let e = ApiError::from_status(&s);
        assert_eq!(e.details["port"], 8081);
        assert_eq!(e.http_status(), StatusCode::CONFLICT);
    }

    #[test]
    fn bare_statuses_are_classified() {
        let e = ApiError::from_status(&tonic::Status::unavailable("tcp connect error"));
        assert_eq!(e.code, STORE_UNAVAILABLE);
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from_status(&tonic::Status::unauthenticated(""));
        assert_eq!(e.code, UNAUTHORIZED);
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
        let e = ApiError::from_status(&tonic::Status::invalid_argument("bad"));
        assert_eq!(e.code, INVALID_REQUEST);
        let e = ApiError::from_status(&tonic::Status::data_loss("x"));
        assert_eq!(e.code, INTERNAL);
        assert_eq!(e.message, "internal error");
    }

    #[test]
    fn status_override_keeps_code() {
        let e = ApiError::invalid("", "too big").with_status(StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.http_status().as_u16(), 413);
        assert_eq!(e.code, INVALID_REQUEST);
    }
}
