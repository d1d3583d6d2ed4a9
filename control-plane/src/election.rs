//! Leader election over the store: a lease-backed `election/leader` key.
//!
//! A replica campaigns by creating the key (compare `Absent`) under a fresh lease of `ttl`; the
//! winner keeps the lease alive every `ttl / 3` and watches the key. Leadership ends at once —
//! the `watch::Receiver<bool>` flips to `false` before anything else happens — when a keepalive
//! fails, or the key disappears or changes owner. Stepping down on the first failed keepalive
//! keeps two leaders from overlapping: the old one gives up no later than its lease could expire
//! on the server. Non-leaders watch the key and campaign as soon as it is deleted or expires.
//! On shutdown the leader revokes its lease, so a successor takes over immediately instead of
//! after the TTL.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::ELECTION_LEADER;
use crate::store::{json, Compare, LeaseId, Revision, StoreRef, Txn, TxnOp, WatchEvent};

/// Default leader lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Pause after a store error before campaigning again.
const RETRY: Duration = Duration::from_millis(500);

/// The value of `election/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub replica_id: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// The leader's advertised gRPC URL (`--advertise-url`): where followers forward calls
    /// that only the leader can answer (its local agent logs). Empty in records written by
    /// replicas that predate the field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

/// The replica id of the current leader, if any.
pub async fn current_leader(store: &StoreRef) -> Result<Option<String>> {
    Ok(current_leader_record(store)
        .await?
        .map(|record| record.replica_id))
}

/// The current leader's record (id, since, advertised URL), if any replica leads.
pub async fn current_leader_record(store: &StoreRef) -> Result<Option<LeaderRecord>> {
    Ok(json::get::<LeaderRecord>(store, ELECTION_LEADER)
        .await?
        .map(|(record, _)| record))
}

/// Starts campaigning for `replica_id` without an advertised URL (see `spawn_advertising`).
pub fn spawn(
    store: StoreRef,
    replica_id: Arc<str>,
    ttl: Duration,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    spawn_advertising(store, replica_id, String::new(), ttl, shutdown)
}

/// Starts campaigning for `replica_id`, publishing `url` in the leader record while it leads.
/// The receiver is `true` while this replica leads; the task ends when `shutdown` is cancelled
/// (revoking the lease if it leads).
pub fn spawn_advertising(
    store: StoreRef,
    replica_id: Arc<str>,
    url: String,
    ttl: Duration,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let elector = Elector {
        store,
        replica_id,
        url,
        ttl,
        shutdown,
        is_leader: tx,
    };
    (rx, tokio::spawn(elector.run()))
}

struct Elector {
    store: StoreRef,
    replica_id: Arc<str>,
    url: String,
    ttl: Duration,
    shutdown: CancellationToken,
    is_leader: watch::Sender<bool>,
}

/// Outcome of one campaign.
enum Campaign {
    Won(LeaseId, Revision),
    /// Someone else leads; watch the key from the revision after this one.
    Lost(Revision),
}

impl Elector {
    async fn run(self) {
        tracing::info!(replica = %self.replica_id, url = %self.url, ttl = ?self.ttl, "election started");
        while !self.shutdown.is_cancelled() {
            match self.campaign().await {
                Ok(Campaign::Won(lease, revision)) => {
                    tracing::info!(replica = %self.replica_id, lease, "became leader");
                    self.is_leader.send_replace(true);
                    self.lead(lease, revision).await;
                    self.is_leader.send_replace(false);
                }
                Ok(Campaign::Lost(revision)) => self.follow(revision).await,
                Err(e) => {
                    tracing::warn!(replica = %self.replica_id, error = %e, "campaign failed; retrying");
                    self.pause(RETRY).await;
                }
            }
        }
        self.is_leader.send_replace(false);
        tracing::info!(replica = %self.replica_id, "election stopped");
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    async fn campaign(&self) -> Result<Campaign> {
        let lease = self.store.grant_lease(self.ttl).await?;
        let record = json::encode(&LeaderRecord {
            replica_id: self.replica_id.to_string(),
            since: chrono::Utc::now(),
            url: self.url.clone(),
        })?;
        let txn = Txn {
            compares: vec![Compare::Absent(ELECTION_LEADER.into())],
            success: vec![TxnOp::Put {
                key: ELECTION_LEADER.into(),
                value: record,
                lease: Some(lease),
            }],
            failure: vec![],
        };
        match self.store.txn(txn).await {
            Ok(t) if t.succeeded => Ok(Campaign::Won(lease, t.revision)),
            Ok(t) => {
                self.revoke(lease).await;
                Ok(Campaign::Lost(t.revision))
            }
            Err(e) => {
                self.revoke(lease).await;
                Err(e)
            }
        }
    }

    async fn revoke(&self, lease: LeaseId) {
        if let Err(e) = self.store.revoke_lease(lease).await {
            tracing::debug!(lease, error = %e, "lease revoke failed (it will expire)");
        }
    }

    /// Whether the key still exists and is held under `lease`.
    async fn still_mine(&self, lease: LeaseId) -> Result<bool> {
        Ok(self
            .store
            .get(ELECTION_LEADER)
            .await?
            .is_some_and(|kv| kv.lease == lease))
    }

    /// Holds leadership until it is lost or shutdown; always gives the lease up on the way out.
    async fn lead(&self, lease: LeaseId, won_at: Revision) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut changes = self.store.watch(ELECTION_LEADER, won_at + 1).await.ok();
        let reason = loop {
            let next_change = async {
                match changes.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => break "shutdown",
                _ = tick.tick() => {
                    // Bounded by a third of the TTL, so a slow store cannot keep a stale leader.
                    let alive = tokio::time::timeout(self.ttl / 3, self.store.keep_alive(lease)).await;
                    match alive {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(replica = %self.replica_id, error = %e, "leader keepalive failed");
                            break "keepalive failed";
                        }
                        Err(_) => break "keepalive timed out",
                    }
                    if changes.is_none() {
                        // The key watch broke earlier: re-check by reading, then re-watch.
                        match self.still_mine(lease).await {
                            Ok(true) => {
                                changes = self.store.watch(ELECTION_LEADER, 0).await.ok();
                            }
                            Ok(false) => break "leader key lost",
                            Err(_) => break "store unavailable",
                        }
                    }
                }
                change = next_change => match change {
                    Some(Ok(events)) => {
                        let lost = events.iter().any(|e| match e {
                            WatchEvent::Delete { .. } => true,
                            WatchEvent::Put(kv) => kv.lease != lease,
                        });
                        if lost {
                            break "leader key deleted or taken";
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "leader key watch ended; re-checking on the next tick");
                        changes = None;
                    }
                    None => changes = None,
                },
            }
        };
        // Flip first: singleton loops must stop before anything else can go wrong.
        self.is_leader.send_replace(false);
        tracing::info!(replica = %self.replica_id, reason, "leadership ended");
        self.revoke(lease).await;
    }

    /// Waits until the leader key is gone (or the watch breaks), then returns to campaign.
    async fn follow(&self, after: Revision) {
        let mut w = match self.store.watch(ELECTION_LEADER, after + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the leader key; retrying");
                self.pause(RETRY).await;
                return;
            }
        };
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                // A safety net: campaign again once per TTL even if no event arrived.
                _ = tokio::time::sleep(self.ttl) => return,
                next = w.next() => match next {
                    Some(Ok(events)) => {
                        if events.iter().any(|e| matches!(e, WatchEvent::Delete { .. })) {
                            return;
                        }
                    }
                    Some(Err(Error::Compacted { .. })) | None => return,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "leader key watch failed; retrying");
                        self.pause(RETRY).await;
                        return;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_url_still_parse() {
        let old = r#"{"replica_id":"cp-a","since":"2026-01-01T00:00:00Z"}"#;
        let r: LeaderRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.replica_id.as_str(), r.url.as_str()), ("cp-a", ""));
        let new = LeaderRecord {
            url: "http://10.0.0.1:50051".into(),
            ..r
        };
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains("\"url\":\"http://10.0.0.1:50051\""), "{text}");
        assert_eq!(serde_json::from_str::<LeaderRecord>(&text).unwrap(), new);
    }
}
