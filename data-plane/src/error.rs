//! The data plane's error type.

use std::net::SocketAddr;

/// Errors of the proxy library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("config cache {path}: {detail}")]
    Cache { path: String, detail: String },
    #[error("control plane: {0}")]
    ControlPlane(String),
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
