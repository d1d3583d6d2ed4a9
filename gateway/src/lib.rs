//! myagent-gateway: the REST `/api/v1` of the seed over the control plane's gRPC API. Stateless:
//! every call becomes one gRPC call, every failure the seed's error JSON (DESIGN §7).

pub mod api;
pub mod config;
pub mod convert;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use config::Cli;
pub use error::{ApiError, Error, Result};
pub use server::{bind, Bound};
