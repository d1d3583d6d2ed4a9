//! tonic handlers: convert protobuf <-> domain at the edge, call the domain layer, convert back.

pub mod connections;
pub mod convert;
pub mod health;
pub mod logs;
pub mod proxy;
pub mod registry;
pub mod rules;
pub mod stats;

use crate::context::Context;
use crate::error::Result;
use crate::store::Revision;

/// Waits until every proxy applied a config that includes `revision` (when the request asked
/// for it with `wait_for_sync > 0`).
async fn sync(ctx: &Context, revision: Revision, seconds: f64) -> Result<()> {
    if seconds > 0.0 && seconds.is_finite() {
        let timeout = std::time::Duration::from_secs_f64(seconds.min(3600.0));
        crate::stream::wait_for_sync(ctx, revision, timeout).await?;
    }
    Ok(())
}
