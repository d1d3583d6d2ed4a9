//! tonic handlers: convert protobuf <-> domain at the edge, call the domain layer, convert back.

pub mod convert;
pub mod health;
pub mod logs;
pub mod registry;
pub mod rules;
pub mod stats;

use crate::context::Context;
use crate::error::Result;
use crate::store::Revision;

/// Waits until every proxy applied a config that includes `revision` (when the request asked
/// for it with `wait_for_sync > 0`).
async fn sync(ctx: &Context, revision: Revision, seconds: f64) -> Result<()> {
    if seconds > 0.0 {
        crate::stream::wait_for_sync(ctx, revision, seconds).await?;
    }
    Ok(())
}
