//! Data-plane config stream: versioned pushes to proxies, ACK/NACK, reports, commands, load.
//!
//! One [`Hub`] per replica owns: one store watch (`watcher`) feeding a cluster view (`mirror`),
//! the proxies' streams held here (`node`), batched report writes (`reports`), the leader's
//! session expiry (`sessions`), commands across replicas (`commands`) and sync status (`sync`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use myagent_proto::v1 as pb;

use crate::context::Context;
use crate::error::Result;
use crate::store::Revision;

pub mod commands;
pub mod config;
pub mod connections;
pub(crate) mod mirror;
pub mod model;
pub mod node;
pub mod reports;
pub mod sessions;
pub mod sync;
pub mod watcher;

pub use model::{ServiceLoad, SyncStatus};
pub use sync::{sync_status, wait_for_sync};

/// Timings and bounds of the hub. Defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// TTL of a node's lease (node liveness); kept alive every third of it.
    pub node_ttl: Duration,
    /// Quiet time after a visible config change before pushing (coalesces bursts).
    pub debounce: Duration,
    /// Longest a visible change waits for a burst to end.
    pub max_debounce: Duration,
    /// How long config events that change nothing a proxy sees wait before a version bump.
    pub invisible_delay: Duration,
    /// Connection and session records are written at most this often.
    pub report_flush: Duration,
    /// Counter totals are written at most this often.
    pub counters_flush: Duration,
    /// Load updates to proxies.
    pub load_interval: Duration,
    /// Session bindings to proxies are batched this long.
    pub session_batch: Duration,
    /// Leader's session expiry check.
    pub session_tick: Duration,
    /// Closed connection records kept per node.
    pub closed_keep: usize,
    /// Closed connection records older than this are deleted.
    pub closed_max_age: Duration,
    /// Completed session records are kept this long (lease).
    pub completed_keep: Duration,
    /// Completed session records kept at most.
    pub completed_max: usize,
    /// How long a command waits for the proxy's result.
    pub command_timeout: Duration,
    /// Operations per store transaction (etcd's `--max-txn-ops`, default 128, bounds it; we
    /// fall back to 128 when the store refuses a bigger one).
    pub max_txn_ops: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            node_ttl: Duration::from_secs(10),
            debounce: Duration::from_millis(2),
            max_debounce: Duration::from_millis(10),
            invisible_delay: Duration::from_millis(500),
            report_flush: Duration::from_millis(250),
            counters_flush: Duration::from_secs(1),
            load_interval: Duration::from_millis(300),
            session_batch: Duration::from_millis(50),
            session_tick: Duration::from_secs(1),
            closed_keep: 1000,
            closed_max_age: Duration::from_secs(3600),
            completed_keep: Duration::from_secs(600),
            completed_max: 10_000,
            command_timeout: Duration::from_secs(5),
            max_txn_ops: 1024,
        }
    }
}

/// The replica's data-plane hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub ctx: Context,
    pub cfg: HubConfig,
    pub mirror: RwLock<mirror::Mirror>,
    /// True once the mirror holds a loaded store view.
    pub ready: watch::Sender<bool>,
    /// Published config version (after debouncing).
    pub version: watch::Sender<Revision>,
    /// Last store revision applied to the mirror.
    pub revision: watch::Sender<Revision>,
    /// Bumped when a node record changes or a local proxy ACKs.
    pub nodes_changed: watch::Sender<u64>,
    pub local: Mutex<HashMap<String, Arc<node::LocalNode>>>,
    pub reports: Mutex<reports::Pending>,
    /// Woken when a report brings a new session: the flusher writes it ahead of its tick.
    pub flush_soon: tokio::sync::Notify,
    /// Issuer side: command id → waiter for its outcome.
    pub command_waiters: Mutex<HashMap<String, oneshot::Sender<model::CommandOutcome>>>,
    /// Deliverer side: command id → waiter for the proxy's result.
    pub result_waiters: Mutex<HashMap<String, oneshot::Sender<pb::CommandResult>>>,
    pub delivered: Mutex<commands::Delivered>,
    pub push_cache: Mutex<node::PushCache>,
    /// Session bindings to push: `Some` = upserted, `None` = removed.
    pub session_out: Mutex<HashMap<String, Option<pb::SessionBinding>>>,
    pub session_work: Mutex<sessions::LeaderWork>,
    pub nonce: AtomicU64,
    pub tracker: TaskTracker,
}

/// Hubs by replica id, so entry points that only get a `Context` (`wait_for_sync`, ...) find
/// their replica's hub without every caller threading a handle through. Weak: the registry
/// never keeps a stopped hub alive.
static REGISTRY: Mutex<Vec<(Arc<str>, Weak<Inner>)>> = Mutex::new(Vec::new());

impl Hub {
    /// Starts the hub's background loops under `ctx.shutdown`.
    pub fn start(ctx: Context, cfg: HubConfig) -> Hub {
        let inner = Arc::new(Inner {
            ctx: ctx.clone(),
            cfg,
            mirror: RwLock::new(mirror::Mirror::default()),
            ready: watch::Sender::new(false),
            version: watch::Sender::new(0),
            revision: watch::Sender::new(0),
            nodes_changed: watch::Sender::new(0),
            local: Mutex::new(HashMap::new()),
            reports: Mutex::new(reports::Pending::default()),
            flush_soon: tokio::sync::Notify::new(),
            command_waiters: Mutex::new(HashMap::new()),
            result_waiters: Mutex::new(HashMap::new()),
            delivered: Mutex::new(commands::Delivered::default()),
            push_cache: Mutex::new(node::PushCache::default()),
            session_out: Mutex::new(HashMap::new()),
            session_work: Mutex::new(sessions::LeaderWork::default()),
            nonce: AtomicU64::new(0),
            tracker: TaskTracker::new(),
        });
        let hub = Hub { inner };
        {
            let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            reg.retain(|(id, w)| w.strong_count() > 0 && **id != *ctx.replica_id);
            reg.push((ctx.replica_id.clone(), Arc::downgrade(&hub.inner)));
        }
        let t = &hub.inner.tracker;
        t.spawn(watcher::run(hub.clone()));
        t.spawn(reports::run_flusher(hub.clone()));
        t.spawn(node::run_load_updates(hub.clone()));
        t.spawn(node::run_session_updates(hub.clone()));
        t.spawn(sessions::run_leader_loop(hub.clone()));
        hub
    }

    /// The hub started for this context's replica, if any.
    pub fn for_context(ctx: &Context) -> Option<Hub> {
        let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.iter()
            .find(|(id, _)| **id == *ctx.replica_id)
            .and_then(|(_, w)| w.upgrade())
            .map(|inner| Hub { inner })
    }

    /// Waits until background tasks have ended (after `ctx.shutdown` was cancelled).
    pub async fn join(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Waits until the hub has loaded the store view (or `timeout` passes).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Cluster-wide live load per service id (active connections, non-completed sessions).
    pub fn cluster_load(&self) -> HashMap<String, ServiceLoad> {
        self.inner.mirror().load.clone()
    }

    /// The config version currently published to proxies.
    pub fn config_version(&self) -> u64 {
        *self.inner.version.borrow() as u64
    }

    pub(crate) fn next_nonce(&self) -> String {
        let n = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.ctx.replica_id)
    }
}

impl Inner {
    pub fn mirror(&self) -> std::sync::RwLockReadGuard<'_, mirror::Mirror> {
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mirror_mut(&self) -> std::sync::RwLockWriteGuard<'_, mirror::Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn local_node(&self, node_id: &str) -> Option<Arc<node::LocalNode>> {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    pub fn local_nodes(&self) -> Vec<Arc<node::LocalNode>> {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Cluster-wide live load per service id, from the replica's hub (empty when none runs).
pub fn cluster_load(ctx: &Context) -> HashMap<String, ServiceLoad> {
    Hub::for_context(ctx)
        .map(|h| h.cluster_load())
        .unwrap_or_default()
}

/// Sends a `management_notification` to the clients of `service_id` on every proxy (before a
/// graceful restart, for instance); returns how many client connections received it.
pub async fn notify_service_clients(
    ctx: &Context,
    service_id: &str,
    kind: &str,
    message: &str,
    severity: &str,
    countdown_seconds: Option<u32>,
) -> Result<u64> {
    let hub = Hub::for_context(ctx).ok_or_else(|| {
        crate::Error::internal("config stream hub is not running on this replica")
    })?;
    commands::notify(&hub, service_id, kind, message, severity, countdown_seconds).await
}
