//! Leader election over the store: a lease-backed `election/leader` key.
//!
//! A replica campaigns by creating the key (compare `Absent`) under a fresh lease of `ttl`; the
//! winner keeps the lease alive every `ttl / 5` and watches the key. Leadership ends at once —
//! the `watch::Receiver<bool>` flips to `false` before anything else happens — when a keepalive
//! is refused (the lease is gone), the key disappears or changes owner, or the store has not
//! answered for almost the lease's lifetime. The old leader gives up before its lease could
//! expire on the server, so two leaders never overlap, and a store that is briefly away (an
//! etcd restart or leader election) does not end the term. Non-leaders watch the key and
//! campaign as soon as it is deleted or expires.
//! On shutdown the leader revokes its lease, so a successor takes over immediately instead of
//! after the TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Term;
use crate::error::{Error, Result};
use crate::keys::ELECTION_LEADER;
use crate::store::{json, Compare, LeaseId, Revision, StoreRef, Txn, TxnOp, WatchEvent};

/// Default leader lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Keepalive retries while the store does not answer.
const STORE_RETRY: Duration = Duration::from_millis(250);

/// How long before the lease could expire on the server a leader that cannot reach the store
/// steps down: a fifth of the TTL (clock rate differences, the flip reaching the loops).
fn expiry_margin(ttl: Duration) -> Duration {
    ttl / 5
}
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
    let task = spawn_into(store, replica_id, url, ttl, shutdown, tx, Term::default());
    (rx, task)
}

/// As `spawn_advertising`, driving an existing `is_leader` sender. The sender is flipped by the
/// elector itself, with no relay in between: a singleton loop that checks it before writing
/// sees a lost term at once.
pub fn spawn_into(
    store: StoreRef,
    replica_id: Arc<str>,
    url: String,
    ttl: Duration,
    shutdown: CancellationToken,
    is_leader: watch::Sender<bool>,
    term: Term,
) -> JoinHandle<()> {
    let elector = Elector {
        store,
        replica_id,
        url,
        ttl,
        shutdown,
        is_leader,
        term,
    };
    tokio::spawn(elector.run())
}

struct Elector {
    store: StoreRef,
    replica_id: Arc<str>,
    url: String,
    ttl: Duration,
    shutdown: CancellationToken,
    is_leader: watch::Sender<bool>,
    term: Term,
}

/// Outcome of one campaign.
enum Campaign {
    /// The lease, the revision of the win, and when the lease was asked for (it cannot expire
    /// on the server before that plus the TTL).
    Won(LeaseId, Revision, Instant),
    /// Someone else leads; watch the key from the revision after this one.
    Lost(Revision),
}

impl Elector {
    async fn run(self) {
        tracing::info!(replica = %self.replica_id, url = %self.url, ttl = ?self.ttl, "election started");
        while !self.shutdown.is_cancelled() {
            match self.campaign().await {
                Ok(Campaign::Won(lease, revision, granted)) => {
                    tracing::info!(replica = %self.replica_id, lease, "became leader");
                    self.term.won_at(revision);
                    self.is_leader.send_replace(true);
                    self.lead(lease, revision, granted).await;
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
        let asked = Instant::now();
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
            Ok(t) if t.succeeded => Ok(Campaign::Won(lease, t.revision, asked)),
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
    ///
    /// A store that does not answer (an etcd restart, an etcd leader election) is not a lost
    /// lease: the lease cannot expire on the server before its last successful keepalive was
    /// sent plus the TTL, so leadership holds, retrying every [`STORE_RETRY`], until shortly
    /// before that ([`expiry_margin`]). Stepping down then still keeps two leaders from
    /// overlapping; a short outage no longer ends the term and its agent processes.
    async fn lead(&self, lease: LeaseId, won_at: Revision, granted: Instant) {
        // Kept alive five times per TTL: the more recent the last keepalive, the longer an
        // outage the lease outlives.
        let mut tick = tokio::time::interval(self.ttl / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut changes = self.store.watch(ELECTION_LEADER, won_at + 1).await.ok();
        let mut last_ok = granted;
        let step_down_at = |last_ok: Instant| last_ok + self.ttl - expiry_margin(self.ttl);
        let mut troubled = false;
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
                    let sent = Instant::now();
                    // Bounded so that an answer, or its absence, comes before the step-down time.
                    let room = step_down_at(last_ok).saturating_duration_since(sent);
                    let alive =
                        tokio::time::timeout((self.ttl / 5).min(room), self.store.keep_alive(lease)).await;
                    let unanswered = match alive {
                        Ok(Ok(())) => {
                            if troubled {
                                tracing::info!(replica = %self.replica_id, "the store answers again; still leading");
                                troubled = false;
                            }
                            last_ok = sent;
                            false
                        }
                        Ok(Err(Error::StoreUnavailable(e))) => {
                            if !troubled {
                                tracing::warn!(replica = %self.replica_id, error = %e, "leader keepalive failed; retrying while the lease holds");
                            }
                            true
                        }
                        Err(_) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(replica = %self.replica_id, error = %e, "leader keepalive refused");
                            break "keepalive refused";
                        }
                    };
                    if !unanswered && changes.is_none() {
                        // The key watch broke earlier: re-check by reading, then re-watch.
                        match self.still_mine(lease).await {
                            Ok(true) => {
                                changes = self.store.watch(ELECTION_LEADER, 0).await.ok();
                            }
                            Ok(false) => break "leader key lost",
                            Err(_) => {}
                        }
                    }
                    if unanswered {
                        if Instant::now() + STORE_RETRY >= step_down_at(last_ok) {
                            break "store unavailable for the lease's lifetime";
                        }
                        troubled = true;
                        tick.reset_after(STORE_RETRY);
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
