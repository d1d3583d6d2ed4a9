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
use crate::stream::SyncStatus;

/// Waits until every proxy applied a config that includes `revision` (when the request asked
/// for it with `wait_for_sync > 0`): the sync status the wait ended with, for answers that
/// show one (it supersedes the status read when the change was written).
async fn sync(ctx: &Context, revision: Revision, seconds: f64) -> Result<Option<SyncStatus>> {
    if seconds > 0.0 && seconds.is_finite() {
        let timeout = std::time::Duration::from_secs_f64(seconds.min(3600.0));
        return Ok(Some(
            crate::stream::wait_for_sync(ctx, revision, timeout).await?,
        ));
    }
    Ok(None)
}
