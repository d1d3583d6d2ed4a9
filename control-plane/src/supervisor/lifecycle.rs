//! Lifecycle requests from the API (start/stop/restart/delete). They record the operator's
//! intent in the store (`services/{id}.desired`, `.restart`) and wait for the leader's
//! supervisor to converge `runtime/{id}`, so they work whichever replica received the call.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{Runtime, ServiceDef};

/// Start (managed: launch; external: admit to routing). Returns the converged runtime, or
/// `SERVICE_START_FAILED` / `PORT_IN_USE`.
pub async fn start(_ctx: &Context, service: &ServiceDef) -> Result<Runtime> {
    Err(Error::internal(format!(
        "start {}: supervisor not built yet",
        service.id
    )))
}

/// Stop (managed: SIGTERM then SIGKILL of the process group; external: withdraw from routing).
pub async fn stop(_ctx: &Context, service: &ServiceDef) -> Result<Runtime> {
    Err(Error::internal(format!(
        "stop {}: supervisor not built yet",
        service.id
    )))
}

/// Restart, optionally after notifying connected clients and waiting `grace_seconds`.
pub async fn restart(
    _ctx: &Context,
    service: &ServiceDef,
    _grace_seconds: Option<u32>,
    _message: String,
) -> Result<Runtime> {
    Err(Error::internal(format!(
        "restart {}: supervisor not built yet",
        service.id
    )))
}
