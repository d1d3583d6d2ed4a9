//! The control plane's one error type and its one mapping to the wire: a `tonic::Status` whose
//! `google.rpc.ErrorInfo` reason is the seed's error code (DESIGN §7).

use std::collections::HashMap;

use tonic_types::{ErrorDetails, StatusExt};

/// Domain in every `ErrorInfo` we emit.
pub const ERROR_DOMAIN: &str = "myagent.v1";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; `field` names the offending field (dotted path), empty when none applies.
    #[error("{message}")]
    InvalidRequest { field: String, message: String },
    #[error("Service with ID '{0}' not found")]
    ServiceNotFound(String),
    #[error("Service with name '{0}' already exists")]
    ServiceAlreadyExists(String),
    #[error("{message}")]
    ServiceStartFailed {
        service_id: String,
        message: String,
        /// Last lines the process wrote to stderr.
        stderr: Vec<String>,
    },
    #[error("Port {port} on {host} is already in use{}", owner.as_ref().map(|o| format!(" by service '{o}'")).unwrap_or_default())]
    PortInUse {
        host: String,
        port: u16,
        owner: Option<String>,
    },
    #[error("{0}")]
    InsufficientResources(String),
    #[error("{0}")]
    RoutingFailed(String),
    #[error("Connection with ID '{0}' not found")]
    ConnectionNotFound(String),
    #[error("{message}")]
    HealthCheckFailed { service_id: String, message: String },
    #[error("Routing rule '{0}' not found")]
    RuleNotFound(String),
    #[error("Routing rule with name '{0}' already exists")]
    RuleAlreadyExists(String),
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// A watch asked for a revision the store no longer keeps; the caller must resync.
    #[error("revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted { requested: i64, oldest: i64 },
    #[error("{0}")]
    Unauthorized(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    /// The seed's error code (seed §4.2 plus DESIGN §7 additions).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. } => "INVALID_REQUEST",
            Error::ServiceNotFound(_) => "SERVICE_NOT_FOUND",
            Error::ServiceAlreadyExists(_) => "SERVICE_ALREADY_EXISTS",
            Error::ServiceStartFailed { .. } => "SERVICE_START_FAILED",
            Error::PortInUse { .. } => "PORT_IN_USE",
            Error::InsufficientResources(_) => "INSUFFICIENT_RESOURCES",
            Error::RoutingFailed(_) => "ROUTING_FAILED",
            Error::ConnectionNotFound(_) => "CONNECTION_NOT_FOUND",
            Error::HealthCheckFailed { .. } => "HEALTH_CHECK_FAILED",
            Error::RuleNotFound(_) => "RULE_NOT_FOUND",
            Error::RuleAlreadyExists(_) => "RULE_ALREADY_EXISTS",
            Error::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Compacted { .. } | Error::Internal(_) => "INTERNAL",
        }
    }

    fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidRequest { .. } => Code::InvalidArgument,
            Error::ServiceNotFound(_) | Error::ConnectionNotFound(_) | Error::RuleNotFound(_) => {
                Code::NotFound
            }
            Error::ServiceAlreadyExists(_)
            | Error::RuleAlreadyExists(_)
            | Error::PortInUse { .. } => Code::AlreadyExists,
            Error::ServiceStartFailed { .. } => Code::FailedPrecondition,
            Error::InsufficientResources(_) => Code::ResourceExhausted,
            Error::RoutingFailed(_)
            | Error::HealthCheckFailed { .. }
            | Error::StoreUnavailable(_) => Code::Unavailable,
            Error::Unauthorized(_) => Code::Unauthenticated,
            Error::Compacted { .. } | Error::Internal(_) => Code::Internal,
        }
    }

    /// Key/value details that travel as `ErrorInfo.metadata` (and become REST `error.details`).
    pub fn details(&self) -> HashMap<String, String> {
        let mut d = HashMap::new();
        match self {
            Error::InvalidRequest { field, .. } if !field.is_empty() => {
                d.insert("field".into(), field.clone());
            }
            Error::ServiceNotFound(id) => {
                d.insert("service_id".into(), id.clone());
            }
            Error::ServiceAlreadyExists(name) => {
                d.insert("field".into(), "name".into());
                d.insert("name".into(), name.clone());
            }
            Error::ServiceStartFailed {
                service_id, stderr, ..
            } => {
                d.insert("service_id".into(), service_id.clone());
                d.insert("stderr".into(), stderr.join("\n"));
            }
            Error::PortInUse { host, port, owner } => {
                d.insert("field".into(), "port".into());
                d.insert("host".into(), host.clone());
                d.insert("port".into(), port.to_string());
                if let Some(o) = owner {
                    d.insert("owner".into(), o.clone());
                }
            }
            Error::ConnectionNotFound(id) => {
                d.insert("connection_id".into(), id.clone());
            }
            Error::HealthCheckFailed { service_id, .. } => {
                d.insert("service_id".into(), service_id.clone());
            }
            Error::RuleNotFound(id) => {
                d.insert("rule_id".into(), id.clone());
            }
            Error::RuleAlreadyExists(name) => {
                d.insert("field".into(), "name".into());
                d.insert("name".into(), name.clone());
            }
            _ => {}
        }
        d
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        // Internal details are logged once here and never shown to clients.
        let message = match &e {
            Error::Internal(_) | Error::Compacted { .. } => {
                tracing::error!(error = %e, "internal error");
                "internal error".to_string()
            }
            Error::StoreUnavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                "The state store is unavailable; retry shortly (a write that timed out may \
                 still apply once the store answers: read before retrying it)"
                    .to_string()
            }
            other => clip(other.to_string(), MAX_ECHO),
        };
        let details: HashMap<String, String> = e
            .details()
            .into_iter()
            .map(|(k, v)| {
                let max = if k == "stderr" { MAX_STDERR } else { MAX_ECHO };
                (k, clip(v, max))
            })
            .collect();
        let details = ErrorDetails::with_error_info(e.code(), ERROR_DOMAIN, details);
        tonic::Status::with_error_details(e.grpc_code(), message, details)
    }
}

/// Longest message or detail value an error carries back: ids and names from a request are
/// echoed, and a status's headers must stay well inside HTTP/2's header list limit (16 KiB),
/// or the answer itself fails with a protocol error (a 500 instead of a 404).
const MAX_ECHO: usize = 1024;
/// A failed start's stderr lines get more room.
const MAX_STDERR: usize = 6 * 1024;

/// `s` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::StoreUnavailable(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("corrupt stored value: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_seed_code_in_error_info() {
        let status: tonic::Status = Error::invalid("port", "port must be 1-65535").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_REQUEST");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("port"));
        assert_eq!(status.message(), "port must be 1-65535");
    }

    #[test]
    fn internal_errors_hide_their_details() {
        let status: tonic::Status = Error::internal("disk on fire at /secret/path").into();
        assert_eq!(status.message(), "internal error");
        assert_eq!(status.get_details_error_info().unwrap().reason, "INTERNAL");
    }
}
