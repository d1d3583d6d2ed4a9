//! Data-plane config stream: versioned pushes to proxies, ACK/NACK, reports, commands, load.

use crate::context::Context;
use crate::error::Result;
use crate::store::Revision;

/// Waits up to `seconds` until every connected proxy has applied a config version that includes
/// store `revision` (the `wait_for_sync` of write requests).
///
/// Placeholder created by the registry/rules API (helper `core`): returns at once. The stream
/// module replaces the body.
pub async fn wait_for_sync(_ctx: &Context, _revision: Revision, _seconds: f64) -> Result<()> {
    Ok(())
}
