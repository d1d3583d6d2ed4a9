//! The CLI's error type, how it is printed (`error: CODE: message`) and its exit status.

use std::collections::BTreeMap;

use std::io::Write;

use tonic_types::StatusExt;

use crate::args::OutputFormat;

/// Exit status for an error the API returned (the code is printed).
pub const EXIT_API: i32 = 1;
/// Exit status for usage errors (clap's own).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for invalid configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;
/// Exit status when the control plane cannot be reached (sysexits EX_UNAVAILABLE).
pub const EXIT_UNREACHABLE: i32 = 69;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error; `code` is the seed's code from `ErrorInfo`.
    #[error("{code}: {message}")]
    Api {
        code: String,
        message: String,
        details: BTreeMap<String, String>,
        /// The gateway's reading of the same status, for `--output json` (the REST error body).
        rest: Option<Box<myagent_gateway::ApiError>>,
    },
    #[error("UNAVAILABLE: cannot reach the control plane at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// Bad flags or configuration detected after parsing.
    #[error("INVALID_REQUEST: {0}")]
    Usage(String),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("output: {0}")]
    Output(#[from] serde_json::Error),
    /// A server of the local stack (`up`) failed.
    #[error("{0}")]
    Stack(String),
    /// `health-check` ran and the service failed it (the result is printed as well).
    #[error("HEALTH_CHECK_FAILED: {service} is unhealthy: {message}")]
    HealthCheckFailed { service: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Api { .. }
            | Error::Terminal(_)
            | Error::Output(_)
            | Error::Stack(_)
            | Error::HealthCheckFailed { .. } => EXIT_API,
            Error::Unreachable { .. } => EXIT_UNREACHABLE,
            Error::Usage(_) => EXIT_CONFIG,
        }
    }

    /// The seed error code, when the error has one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::Unreachable { .. } => Some("UNAVAILABLE"),
            Error::Usage(_) => Some("INVALID_REQUEST"),
            Error::HealthCheckFailed { .. } => Some("HEALTH_CHECK_FAILED"),
            _ => None,
        }
    }

    /// Text printed on stderr: `error: CODE: message` then one indented line per detail.
    pub fn render(&self) -> String {
        let mut out = format!("error: {self}");
        match self {
            Error::Api { details, .. } => {
                for (k, v) in details {
                    if v.contains('\n') {
                        out.push_str(&format!("\n  {k}:"));
                        for line in v.lines() {
                            out.push_str(&format!("\n    {line}"));
                        }
                    } else {
                        out.push_str(&format!("\n  {k}: {v}"));
                    }
                }
            }
            Error::Unreachable { .. } => {
                out.push_str(
                    "\n  hint: is the control plane running? Set --server / MYAGENT_SERVER, \
                     or start a local stack with `myagent-manager up`",
                );
            }
            _ => {}
        }
        out
    }

    /// `--output json` prints the REST body of the same request, which for a failure is the
    /// seed's error envelope (§4.1): the gateway's own for an API error, the same shape with the
    /// CLI's code otherwise. `None` for failures without a code (terminal, output).
    pub fn json_body(&self) -> Option<serde_json::Value> {
        let api = match self {
            Error::Api {
                rest: Some(rest), ..
            } => (**rest).clone(),
            Error::Api {
                code,
                message,
                details,
                ..
            } => {
                let mut e = myagent_gateway::ApiError::new(code.clone(), message.clone());
                for (k, v) in details {
                    e = e.with_detail(k, v.clone());
                }
                e
            }
            // The check's result is the output already; a second JSON document would break it.
            Error::HealthCheckFailed { .. } => return None,
            other => {
                let code = other.code()?;
                let text = other.to_string();
                let message = text
                    .strip_prefix(&format!("{code}: "))
                    .unwrap_or(&text)
                    .to_string();
                myagent_gateway::ApiError::new(code, message)
            }
        };
        serde_json::to_value(api.body()).ok()
    }

    /// Prints the error: `error: CODE: message` on stderr, and with `--output json` also the
    /// error body on stdout, so scripts reading stdout get JSON either way.
    pub fn report(&self, format: OutputFormat) {
        eprintln!("{}", self.render());
        if format == OutputFormat::Json {
            if let Some(body) = self.json_body() {
                if let Ok(text) = serde_json::to_string_pretty(&body) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{text}");
                }
            }
        }
    }

    /// Converts a gRPC status; `server` is named when the failure is about reaching it.
    pub fn from_status(status: tonic::Status, server: &str) -> Self {
        if let Some(info) = status.get_details_error_info() {
            return Error::Api {
                rest: Some(Box::new(myagent_gateway::ApiError::from_status(&status))),
                code: info.reason,
                message: status.message().to_string(),
                details: info.metadata.into_iter().collect(),
            };
        }
        // No ErrorInfo: the request never reached our service (transport failure, timeout) or
        // the server is something else; name the gRPC code instead.
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown
                if status.message().contains("connect")
                    || status.message().contains("transport")
                    || status.message().contains("connection") =>
            {
                Error::Unreachable {
                    server: server.to_string(),
                    reason: status.message().to_string(),
                }
            }
            // Connected, but no answer within --timeout: not "unreachable", the call may still
            // complete on the server.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                if status.message().to_ascii_lowercase().contains("timeout")
                    || status.message().to_ascii_lowercase().contains("deadline") =>
            {
                Error::Api {
                    code: "DEADLINE_EXCEEDED".into(),
                    message: format!(
                        "no answer from the control plane at {server} in time; it may still complete \
                         (raise --timeout / MYAGENT_TIMEOUT)"
                    ),
                    details: BTreeMap::new(),
                    rest: None,
                }
            }
            code => Error::Api {
                code: grpc_code_name(code).to_string(),
                message: match (code, status.message()) {
                    (tonic::Code::Unimplemented, "") => {
                        format!("the control plane at {server} does not implement this call")
                    }
                    (_, "") => format!("the control plane at {server} answered {code:?}"),
                    (_, m) => m.to_string(),
                },
                details: BTreeMap::new(),
                rest: None,
            },
        }
    }
}

/// clap's rendering of a usage error with the seed's code after `error: `.
pub fn usage_text(clap_text: &str) -> String {
    let rest = clap_text.strip_prefix("error: ").unwrap_or(clap_text);
    format!("error: INVALID_REQUEST: {rest}")
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_REQUEST",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHORIZED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    #[test]
    fn error_info_reason_becomes_the_code() {
        let details = ErrorDetails::with_error_info(
            "SERVICE_NOT_FOUND",
            "myagent.v1",
            HashMap::from([("service_id".to_string(), "nope".to_string())]),
        );
        let status = tonic::Status::with_error_details(
            tonic::Code::NotFound,
            "Service with ID 'nope' not found",
            details,
        );
        let e = Error::from_status(status, "http://x");
        assert_eq!(e.code(), Some("SERVICE_NOT_FOUND"));
        assert_eq!(e.exit_code(), EXIT_API);
        assert_eq!(
            e.render(),
            "error: SERVICE_NOT_FOUND: Service with ID 'nope' not found\n  service_id: nope"
        );
    }

    #[test]
    fn transport_failure_is_unreachable() {
        let status = tonic::Status::unavailable("tcp connect error: Connection refused");
        let e = Error::from_status(status, "http://127.0.0.1:1");
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        assert!(e.render().starts_with(
            "error: UNAVAILABLE: cannot reach the control plane at http://127.0.0.1:1"
        ));
    }

    #[test]
    fn timeout_is_not_unreachable() {
        let e = Error::from_status(
            tonic::Status::deadline_exceeded("Timeout expired"),
            "http://h:1",
        );
        assert_eq!(e.code(), Some("DEADLINE_EXCEEDED"));
        assert_eq!(e.exit_code(), EXIT_API);
    }
}
