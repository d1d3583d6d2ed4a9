//! Which proxies hold the config that includes a store revision, and waiting for all of them.
//! Node records are watched (cluster-wide), so this works whichever replica the proxies use.

use std::time::Duration;

use tokio::time::Instant;

use super::model::{NodeRecord, ProxySyncState, SyncStatus};
use super::Hub;
use crate::context::Context;
use crate::error::Result;
use crate::keys;
use crate::store::{json, Revision};

/// Sync state of every connected proxy for the change at `revision`.
pub async fn sync_status(ctx: &Context, revision: Revision) -> Result<SyncStatus> {
    match Hub::for_context(ctx) {
        Some(hub) => Ok(hub.sync_status(revision)),
        None => {
            // No hub on this replica (a tool or test without the data plane): read the nodes.
            let nodes: Vec<NodeRecord> = json::list(&ctx.store, keys::NODES).await?;
            Ok(status_of(
                nodes.iter().filter(|n| n.connected),
                revision as u64,
                revision,
            ))
        }
    }
}

/// Waits until every connected proxy has ACKed a config that includes `revision`, or
/// `timeout` passes; returns the state either way (`in_sync` tells which).
pub async fn wait_for_sync(
    ctx: &Context,
    revision: Revision,
    timeout: Duration,
) -> Result<SyncStatus> {
    let Some(hub) = Hub::for_context(ctx) else {
        return sync_status(ctx, revision).await;
    };
    Ok(hub.wait_for_sync(revision, timeout).await)
}

fn status_of<'a>(
    nodes: impl Iterator<Item = &'a NodeRecord>,
    target: u64,
    _revision: Revision,
) -> SyncStatus {
    let mut proxies: Vec<ProxySyncState> = nodes
        .map(|n| ProxySyncState {
            node_id: n.node_id.clone(),
            applied_version: n.acked_version,
            in_sync: n.acked_version >= target || n.synced_revision >= target,
            nack_error: n
                .current_nack()
                .map(|x| x.error.clone())
                .unwrap_or_default(),
        })
        .collect();
    proxies.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    SyncStatus {
        config_version: target,
        in_sync: proxies.iter().all(|p| p.in_sync),
        proxies,
    }
}

impl Hub {
    /// Sync state for the change at `revision`, from this replica's view.
    pub fn sync_status(&self, revision: Revision) -> SyncStatus {
        let m = self.inner.mirror();
        // The version that includes the change: the last config event at or before it.
        let target = m.version_covering(revision).unwrap_or(revision).max(0) as u64;
        let mut nodes: Vec<NodeRecord> = m
            .nodes
            .values()
            .map(|(n, _)| n.clone())
            .filter(|n| n.connected)
            .collect();
        drop(m);
        // Streams held here know their ACKs before the record write comes back.
        for n in &mut nodes {
            if let Some(local) = self.inner.local_node(&n.node_id) {
                let st = local.lock();
                if st.record.stream_id == n.stream_id {
                    *n = st.record.clone();
                }
            }
        }
        status_of(nodes.iter(), target, revision)
    }

    /// See [`wait_for_sync`].
    pub async fn wait_for_sync(&self, revision: Revision, timeout: Duration) -> SyncStatus {
        let deadline = Instant::now() + timeout;
        let mut nodes_rx = self.inner.nodes_changed.subscribe();
        let mut rev_rx = self.inner.revision.subscribe();
        // First our own view must have seen the change, else we cannot tell what includes it.
        let _ = tokio::time::timeout_at(deadline, rev_rx.wait_for(|r| *r >= revision)).await;
        loop {
            nodes_rx.borrow_and_update();
            let status = self.sync_status(revision);
            if status.in_sync || Instant::now() >= deadline {
                return status;
            }
            if tokio::time::timeout_at(deadline, nodes_rx.changed())
                .await
                .is_err()
            {
                return self.sync_status(revision);
            }
        }
    }
}
