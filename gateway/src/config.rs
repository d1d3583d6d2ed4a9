//! Command-line and environment configuration of the gateway (flags > env > defaults).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default request body limit: 1 MiB (DESIGN §9).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    Auto,
    Text,
    Json,
}

/// myagent REST gateway: serves `/api/v1` and translates each call into a gRPC call to the
/// control plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "myagent-gateway", version, about, long_about = None)]
pub struct Cli {
    /// Address the HTTP listener binds to (port 0 picks a free port).
    #[arg(long, env = "MYAGENT_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Control-plane gRPC URL(s); several (comma-separated) are balanced with failover.
    #[arg(
        long = "control-plane",
        env = "MYAGENT_CONTROL_PLANE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: Vec<String>,

    /// Deadline of one upstream gRPC call, in seconds (a `wait_for_sync` is added on top).
    #[arg(long, env = "MYAGENT_REQUEST_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub request_timeout: f64,

    /// Largest accepted request body in bytes; larger bodies get 413 INVALID_REQUEST.
    #[arg(long, env = "MYAGENT_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// PEM certificate chain for serving HTTPS (requires --tls-key).
    #[arg(
        long,
        env = "MYAGENT_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for serving HTTPS (requires --tls-cert).
    #[arg(
        long,
        env = "MYAGENT_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle to verify the control plane's certificate (enables TLS upstream).
    #[arg(long, env = "MYAGENT_CONTROL_PLANE_CA", help_heading = "TLS")]
    pub control_plane_ca: Option<PathBuf>,

    /// PEM client certificate for mTLS to the control plane (requires --control-plane-key).
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE_CERT",
        requires = "control_plane_key",
        help_heading = "TLS"
    )]
    pub control_plane_cert: Option<PathBuf>,

    /// PEM client key for mTLS to the control plane (requires --control-plane-cert).
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE_KEY",
        requires = "control_plane_cert",
        help_heading = "TLS"
    )]
    pub control_plane_key: Option<PathBuf>,

    /// Server name expected in the control plane's certificate (default: the URL's host).
    #[arg(long, env = "MYAGENT_CONTROL_PLANE_DOMAIN", help_heading = "TLS")]
    pub control_plane_domain: Option<String>,

    /// Log output format.
    #[arg(long, env = "MYAGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `myagent_gateway=debug`.
    #[arg(long, env = "MYAGENT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Cli {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!("`{s}` must be in (0, 86400] seconds"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let cli = Cli::try_parse_from(["myagent-gateway"]).unwrap();
        assert_eq!(cli.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(
            cli.control_plane,
            vec!["http://127.0.0.1:50051".to_string()]
        );
        assert_eq!(cli.max_body_bytes, 1024 * 1024);
        assert_eq!(cli.request_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn several_control_planes_are_comma_separated() {
        let cli = Cli::try_parse_from([
            "myagent-gateway",
            "--control-plane",
            "http://a:1,http://b:2",
        ])
        .unwrap();
        assert_eq!(cli.control_plane, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["g", "--request-timeout", "-1"]).is_err());
        assert!(Cli::try_parse_from(["g", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["g", "--tls-cert", "/x"]).is_err());
    }
}
