//! myagent control plane: owns service and routing state in the store, supervises agent
//! processes on the elected leader, and streams config to data-plane proxies (DESIGN §2).
//!
//! Entry points: `bind(Cli)` → `Bound { grpc_addr, admin_addr, .. }` → `Bound::run(shutdown)`
//! (STYLE 3); `run(Cli, shutdown)` is what the binary does.

pub mod admin;
pub mod auth;
pub mod config;
pub mod context;
pub mod election;
pub mod error;
pub mod grpc;
pub mod health;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod routing;
pub mod server;
pub mod stats;
pub mod store;
pub mod stream;
pub mod supervisor;
pub mod telemetry;

pub use config::Cli;
pub use error::{Error, Result};
pub use server::{bind, run, Bound};
