//! One proxy's stream on this replica: Hello and node registration under a lease, config
//! pushes (shared, cached per base/version), ACK/NACK bookkeeping in the node record, reports,
//! command results, and the periodic load / session-binding fan-out to all local streams.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use myagent_proto::v1 as pb;

use super::model::{ConnectionRecord, NackRecord, NodeRecord};
use super::Hub;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{json, Compare, LeaseId, Revision, Txn, TxnOp};

pub type Outbound = ReceiverStream<Result<pb::ControlMessage, Status>>;

/// Capacity of a stream's outbound queue; periodic updates are dropped when it is full.
const OUTBOUND: usize = 64;
/// Pushes whose ACK we still remember per stream.
const INFLIGHT: usize = 64;

/// A config push built once and shared by every stream that needs the same (base, version).
pub(crate) struct Push {
    pub msg: pb::ControlMessage,
    pub version: Revision,
    pub nonce: String,
    pub full: bool,
}

#[derive(Default)]
pub(crate) struct PushCache {
    version: Revision,
    floor: Revision,
    entries: HashMap<(Revision, bool), Arc<Push>>,
}

pub(crate) struct LocalNode {
    pub node_id: String,
    pub stream_id: String,
    pub out: mpsc::Sender<Result<pb::ControlMessage, Status>>,
    pub state: Mutex<NodeState>,
    pub cancel: CancellationToken,
    /// Serialises record writes of this stream.
    write_lock: tokio::sync::Mutex<()>,
    record_dirty: tokio::sync::Notify,
}

pub(crate) struct NodeState {
    pub record: NodeRecord,
    /// mod revision of our last write of the record (compare-and-swap guard).
    pub record_rev: Revision,
    pub lease: LeaseId,
    /// Version the proxy holds once it applied everything we sent.
    pub sent_version: Revision,
    pub needs_full: bool,
    /// After a rejected full snapshot: push nothing until the config moves past this version.
    hold_until: Option<Revision>,
    inflight: VecDeque<(String, Revision, bool)>,
    /// Active connections the proxy reported (re-written if the lease has to be renewed).
    pub active: HashMap<String, ConnectionRecord>,
    /// Closed connection ids, oldest first, for bounded retention.
    pub closed: VecDeque<(DateTime<Utc>, String)>,
    superseded: bool,
}

impl LocalNode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Best-effort send of a periodic message; false when the queue is full or closed.
    pub fn try_send(&self, msg: pb::ControlMessage) -> bool {
        self.out.try_send(Ok(msg)).is_ok()
    }
}

/// Serves one `ProxyControl::Stream`: waits for Hello, registers the node, and returns the
/// outbound stream while a driver task handles the rest.
pub async fn open_stream(
    hub: Hub,
    mut inbound: Streaming<pb::ProxyMessage>,
) -> Result<Outbound, Status> {
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
    let hello = match first.and_then(|m| m.kind) {
        Some(pb::proxy_message::Kind::Hello(h)) => h,
        _ => {
            return Err(
                Error::invalid("hello", "the first message of a stream must be Hello").into(),
            )
        }
    };
    if !myagent_proto::valid_node_id(&hello.node_id) {
        return Err(Error::invalid(
            "hello.node_id",
            "node_id must be 1-128 characters of A-Z a-z 0-9 - _ . :",
        )
        .into());
    }
    if !hub.wait_ready(Duration::from_secs(10)).await {
        return Err(Error::StoreUnavailable("config view not loaded yet".into()).into());
    }
    let node = register(&hub, &hello).await?;
    let (tx, rx) = mpsc::channel(OUTBOUND);
    let node = Arc::new(LocalNode {
        node_id: hello.node_id.clone(),
        stream_id: node.0.stream_id.clone(),
        out: tx,
        state: Mutex::new(NodeState {
            sent_version: node.2,
            needs_full: node.2 == 0,
            hold_until: None,
            record: node.0,
            record_rev: node.1,
            lease: node.3,
            inflight: VecDeque::new(),
            active: HashMap::new(),
            closed: VecDeque::new(),
            superseded: false,
        }),
        cancel: hub.inner.ctx.shutdown.child_token(),
        write_lock: tokio::sync::Mutex::new(()),
        record_dirty: tokio::sync::Notify::new(),
    });
    adopt_known_connections(&hub, &node);
    let previous = hub
        .inner
        .local
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.node_id.clone(), node.clone());
    if let Some(prev) = previous {
        prev.cancel.cancel();
    }
    info!(node_id = %node.node_id, address = %hello.address, applied_version = hello.applied_version, "proxy connected");
    hub.inner.tracker.spawn(drive(hub.clone(), node, inbound));
    Ok(ReceiverStream::new(rx))
}

/// Writes the node record under the node's lease (reusing a live lease, so a proxy that
/// reconnects within the TTL keeps its connection records). Returns record, its revision,
/// the version the proxy holds that we can build on (0 = needs a full snapshot), lease.
async fn register(
    hub: &Hub,
    hello: &pb::Hello,
) -> Result<(NodeRecord, Revision, Revision, LeaseId)> {
    let store = &hub.inner.ctx.store;
    let key = keys::node(&hello.node_id);
    let existing = store.get(&key).await?;
    let mut lease = 0;
    if let Some(kv) = &existing {
        if kv.lease != 0 && store.keep_alive(kv.lease).await.is_ok() {
            lease = kv.lease;
        }
    }
    if lease == 0 {
        lease = store.grant_lease(hub.inner.cfg.node_ttl).await?;
    }
    let store_rev = store.revision().await?;
    let applied = hello.applied_version as Revision;
    // A cached version from the future (another cluster, a wiped store) is worthless.
    let base = if applied > 0 && applied <= store_rev {
        applied
    } else {
        0
    };
    let now = Utc::now();
    let record = NodeRecord {
        node_id: hello.node_id.clone(),
        address: hello.address.clone(),
        software_version: hello.software_version.clone(),
        replica_id: hub.inner.ctx.replica_id.to_string(),
        stream_id: uuid::Uuid::new_v4().to_string(),
        connected: true,
        connected_at: now,
        updated_at: now,
        acked_version: base as u64,
        acked_at: (base > 0).then_some(now),
        synced_revision: 0,
        pushed_version: 0,
        nack: None,
    };
    let rev = store.put(&key, json::encode(&record)?, Some(lease)).await?;
    Ok((record, rev, base, lease))
}

/// Seeds the stream's view of its proxy's connections from the store (a reconnect within the
/// lease TTL), so retention and lease renewal cover them too.
fn adopt_known_connections(hub: &Hub, node: &LocalNode) {
    let known: Vec<ConnectionRecord> = hub
        .inner
        .mirror()
        .connections
        .values()
        .filter(|c| c.node_id == node.node_id)
        .cloned()
        .collect();
    let mut st = node.lock();
    let mut closed: Vec<(DateTime<Utc>, String)> = Vec::new();
    for c in known {
        match c.status {
            super::model::ConnectionStatus::Active => {
                st.active.insert(c.connection_id.clone(), c.clone());
            }
            super::model::ConnectionStatus::Closed => {
                closed.push((
                    c.closed_at.unwrap_or(c.last_activity),
                    c.connection_id.clone(),
                ));
            }
        }
    }
    closed.sort();
    st.closed = closed.into();
}

async fn drive(hub: Hub, node: Arc<LocalNode>, mut inbound: Streaming<pb::ProxyMessage>) {
    let writer = hub
        .inner
        .tracker
        .spawn(record_writer(hub.clone(), node.clone()));
    let mut version_rx = hub.inner.version.subscribe();
    let mut keepalive = tokio::time::interval(hub.inner.cfg.node_ttl / 3);
    keepalive.tick().await;
    // The first push: a delta on top of what the proxy holds, or a full snapshot.
    wait_for_base(&hub, &node).await;
    let mut alive = push_config(&hub, &node, true).await;
    if alive {
        send_sessions_snapshot(&hub, &node).await;
        // The cluster's load at once: capacity checks must not wait for the next change.
        node.try_send(load_message(current_load(&hub)));
    }
    while alive {
        tokio::select! {
            _ = node.cancel.cancelled() => break,
            msg = inbound.message() => match msg {
                Ok(Some(m)) => alive = handle(&hub, &node, m).await,
                Ok(None) => break,
                Err(e) => {
                    debug!(node_id = %node.node_id, error = %e, "proxy stream error");
                    break;
                }
            },
            changed = version_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                alive = push_config(&hub, &node, false).await;
            }
            _ = keepalive.tick() => keep_alive(&hub, &node).await,
        }
    }
    node.cancel.cancel();
    writer.abort();
    let _ = writer.await;
    {
        let mut local = hub.inner.local.lock().unwrap_or_else(|e| e.into_inner());
        if local
            .get(&node.node_id)
            .is_some_and(|n| n.stream_id == node.stream_id)
        {
            local.remove(&node.node_id);
        }
    }
    {
        let mut st = node.lock();
        st.record.connected = false;
        st.record.updated_at = Utc::now();
    }
    // The key stays until the lease expires: a proxy that reconnects in time keeps its
    // connections; a dead one's node and connections vanish with the lease.
    write_record(&hub, &node).await;
    hub.inner.nodes_changed.send_modify(|n| *n += 1);
    info!(node_id = %node.node_id, "proxy disconnected");
}

/// A proxy that says it holds a version this replica has not seen yet (it came from a replica
/// ahead of us) waits briefly for our watch to catch up; otherwise it gets a full snapshot.
async fn wait_for_base(hub: &Hub, node: &LocalNode) {
    let base = node.lock().sent_version;
    if base == 0 {
        return;
    }
    let mut rx = hub.inner.revision.subscribe();
    let caught_up = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|r| *r >= base)).await;
    if !matches!(caught_up, Ok(Ok(_))) {
        node.lock().needs_full = true;
    }
}

/// Sends the push this proxy needs, if any; false when the stream is gone.
async fn push_config(hub: &Hub, node: &LocalNode, first: bool) -> bool {
    // Lock order: never take the mirror while holding a node's state.
    let current = hub.inner.mirror().config_version;
    let (base, full) = {
        let mut st = node.lock();
        if let Some(hold) = st.hold_until {
            if !first && current <= hold {
                return true;
            }
            st.hold_until = None;
        }
        (st.sent_version, st.needs_full)
    };
    let Some(push) = build_push(hub, base, full, first) else {
        return true;
    };
    {
        let mut st = node.lock();
        st.sent_version = push.version;
        st.needs_full = false;
        st.inflight
            .push_back((push.nonce.clone(), push.version, push.full));
        while st.inflight.len() > INFLIGHT {
            st.inflight.pop_front();
        }
        st.record.pushed_version = push.version as u64;
    }
    debug!(node_id = %node.node_id, version = push.version, full = push.full, "config push");
    node.out.send(Ok(push.msg.clone())).await.is_ok()
}

/// The shared push from `base` to the current version (`None` when the proxy is current).
pub(crate) fn build_push(hub: &Hub, base: Revision, full: bool, force: bool) -> Option<Arc<Push>> {
    let m = hub.inner.mirror();
    let mut cache = hub
        .inner
        .push_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if cache.version != m.config_version || cache.floor != m.floor {
        cache.entries.clear();
        cache.version = m.config_version;
        cache.floor = m.floor;
    }
    if !full && !force && base >= m.config_version {
        return None;
    }
    let delta = if full { None } else { m.delta_since(base) };
    let cache_key = if delta.is_some() {
        (base, false)
    } else {
        (0, true)
    };
    if let Some(p) = cache.entries.get(&cache_key) {
        return Some(p.clone());
    }
    let mut cfg = delta.unwrap_or_else(|| m.full_push());
    let nonce = hub.next_nonce();
    cfg.nonce = nonce.clone();
    let push = Arc::new(Push {
        version: cfg.version as Revision,
        full: cfg.full,
        nonce,
        msg: pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Config(cfg)),
        },
    });
    cache.entries.insert(cache_key, push.clone());
    Some(push)
}

async fn handle(hub: &Hub, node: &Arc<LocalNode>, msg: pb::ProxyMessage) -> bool {
    use pb::proxy_message::Kind;
    match msg.kind {
        Some(Kind::Ack(ack)) => {
            on_ack(hub, node, ack);
            true
        }
        Some(Kind::Nack(nack)) => on_nack(hub, node, nack).await,
        Some(Kind::Report(report)) => {
            super::reports::ingest(hub, node, report);
            true
        }
        Some(Kind::CommandResult(res)) => {
            let waiter = hub
                .inner
                .result_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&res.command_id);
            if let Some(w) = waiter {
                let _ = w.send(res);
            }
            true
        }
        Some(Kind::Hello(_)) => {
            warn!(node_id = %node.node_id, "ignoring a second Hello on one stream");
            true
        }
        None => true,
    }
}

fn on_ack(hub: &Hub, node: &LocalNode, ack: pb::Ack) {
    let version = ack.version as Revision;
    let (processed, current) = {
        let m = hub.inner.mirror();
        (m.revision as u64, m.config_version as u64)
    };
    {
        let mut st = node.lock();
        let known = st
            .inflight
            .iter()
            .any(|(n, v, _)| *n == ack.nonce || (ack.nonce.is_empty() && *v == version));
        if !known {
            debug!(node_id = %node.node_id, version, nonce = %ack.nonce, "ACK of an unknown push ignored");
            return;
        }
        st.inflight.retain(|(_, v, _)| *v > version);
        if ack.version >= st.record.acked_version {
            st.record.acked_version = ack.version;
            st.record.acked_at = Some(Utc::now());
            // Current with everything we have seen: the config is the store's as of `processed`.
            st.record.synced_revision = if ack.version >= current {
                ack.version.max(processed)
            } else {
                ack.version
            };
            st.record.updated_at = Utc::now();
        }
    }
    node.record_dirty.notify_one();
    hub.inner.nodes_changed.send_modify(|n| *n += 1);
}

async fn on_nack(hub: &Hub, node: &LocalNode, nack: pb::Nack) -> bool {
    let version = nack.version as Revision;
    warn!(node_id = %node.node_id, version, error = %nack.error_detail, "proxy rejected config");
    let resend_full = {
        let mut st = node.lock();
        let pushed = st
            .inflight
            .iter()
            .find(|(n, v, _)| *n == nack.nonce || (nack.nonce.is_empty() && *v == version))
            .cloned();
        st.record.nack = Some(NackRecord {
            version: nack.version,
            nonce: nack.nonce.clone(),
            error: nack.error_detail.clone(),
            at: Utc::now(),
        });
        st.record.updated_at = Utc::now();
        // The proxy still holds its last ACKed version; build on that from now on. A rejected
        // delta of the latest push earns one full resync; a rejected full snapshot waits for
        // the next change (resending the same content would only be rejected again).
        st.sent_version = st.record.acked_version as Revision;
        st.needs_full = true;
        let latest = st.inflight.back().map(|(n, _, _)| n.clone());
        st.inflight.retain(|(n, _, _)| *n != nack.nonce);
        matches!(pushed, Some((n, _, false)) if Some(&n) == latest.as_ref())
    };
    node.record_dirty.notify_one();
    hub.inner.nodes_changed.send_modify(|n| *n += 1);
    if resend_full {
        return push_config(hub, node, true).await;
    }
    // Do not resend until the config changes.
    let current = hub.inner.mirror().config_version;
    node.lock().hold_until = Some(current);
    true
}

async fn keep_alive(hub: &Hub, node: &LocalNode) {
    let lease = node.lock().lease;
    let store = &hub.inner.ctx.store;
    if store.keep_alive(lease).await.is_ok() {
        return;
    }
    // The lease is gone (the store was unreachable longer than the TTL): take a new one and
    // write back the node and its live connections.
    warn!(node_id = %node.node_id, "node lease lost; renewing");
    let Ok(new_lease) = store.grant_lease(hub.inner.cfg.node_ttl).await else {
        return;
    };
    let conns: Vec<ConnectionRecord> = {
        let mut st = node.lock();
        st.lease = new_lease;
        st.record_rev = 0;
        st.active.values().cloned().collect()
    };
    write_record(hub, node).await;
    let ops: Vec<TxnOp> = conns
        .iter()
        .filter_map(|c| {
            json::encode(c).ok().map(|value| TxnOp::Put {
                key: keys::connection(&node.node_id, &c.connection_id),
                value,
                lease: Some(new_lease),
            })
        })
        .collect();
    for chunk in ops.chunks(hub.inner.cfg.max_txn_ops.max(1)) {
        let txn = Txn {
            compares: Vec::new(),
            success: chunk.to_vec(),
            failure: Vec::new(),
        };
        if let Err(e) = hub.inner.ctx.store.txn(txn).await {
            warn!(node_id = %node.node_id, error = %e, "re-writing connections after lease loss failed");
        }
    }
}

async fn record_writer(hub: Hub, node: Arc<LocalNode>) {
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = node.record_dirty.notified() => write_record(&hub, &node).await,
        }
    }
}

/// Writes the node record if this stream still owns it (compare-and-swap on our last write).
pub(crate) async fn write_record(hub: &Hub, node: &LocalNode) {
    let _guard = node.write_lock.lock().await;
    let key = keys::node(&node.node_id);
    let store = &hub.inner.ctx.store;
    for _ in 0..3 {
        let (record, rev, lease) = {
            let st = node.lock();
            if st.superseded {
                return;
            }
            (st.record.clone(), st.record_rev, st.lease)
        };
        let Ok(value) = json::encode(&record) else {
            return;
        };
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), rev)],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value,
                lease: Some(lease),
            }],
            failure: Vec::new(),
        };
        match store.txn(txn).await {
            Ok(r) if r.succeeded => {
                node.lock().record_rev = r.revision;
                return;
            }
            Ok(_) => match json::get::<NodeRecord>(store, &key).await {
                Ok(Some((current, current_rev))) if current.stream_id == record.stream_id => {
                    node.lock().record_rev = current_rev;
                }
                Ok(Some(_)) => {
                    info!(node_id = %node.node_id, "node record taken over by a newer stream");
                    node.lock().superseded = true;
                    return;
                }
                Ok(None) => node.lock().record_rev = 0,
                Err(e) => {
                    warn!(node_id = %node.node_id, error = %e, "reading node record failed");
                    return;
                }
            },
            Err(e) => {
                warn!(node_id = %node.node_id, error = %e, "writing node record failed");
                return;
            }
        }
    }
}

/// All live session bindings, sent once after the first config push.
async fn send_sessions_snapshot(hub: &Hub, node: &LocalNode) {
    let bindings: Vec<pb::SessionBinding> = {
        let m = hub.inner.mirror();
        m.sessions
            .values()
            .filter(|s| s.record.state != super::model::SessionState::Completed)
            .map(|s| super::sessions::binding(&s.record))
            .collect()
    };
    for chunk in bindings.chunks(5000) {
        let msg = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Sessions(pb::SessionUpdate {
                upserted: chunk.to_vec(),
                removed: Vec::new(),
            })),
        };
        if node.out.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

/// Every `load_interval`: cluster-wide active connections and sessions per service, the same
/// message for every local stream. The list is complete (absent = no load).
pub(crate) async fn run_load_updates(hub: Hub) {
    let mut tick = tokio::time::interval(hub.inner.cfg.load_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = hub.inner.ctx.shutdown.clone();
    let mut last: Option<(pb::LoadUpdate, u32)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let update = current_load(&hub);
        // Unchanged load is re-sent only every ~10 ticks, as a refresher.
        let skip = matches!(&last, Some((prev, n)) if *prev == update && *n < 10);
        if skip {
            if let Some((_, n)) = &mut last {
                *n += 1;
            }
            continue;
        }
        let msg = load_message(update.clone());
        for node in hub.inner.local_nodes() {
            node.try_send(msg.clone());
        }
        last = Some((update, 0));
    }
}

/// Cluster-wide active connections and sessions per service (absent = no load).
fn current_load(hub: &Hub) -> pb::LoadUpdate {
    let mut services: Vec<pb::ServiceLoad> = hub
        .inner
        .mirror()
        .load
        .iter()
        .filter(|(_, l)| l.active_connections > 0 || l.active_sessions > 0)
        .map(|(id, l)| pb::ServiceLoad {
            service_id: id.clone(),
            active_connections: l.active_connections,
            active_sessions: l.active_sessions,
        })
        .collect();
    services.sort_by(|a, b| a.service_id.cmp(&b.service_id));
    pb::LoadUpdate { services }
}

fn load_message(update: pb::LoadUpdate) -> pb::ControlMessage {
    pb::ControlMessage {
        kind: Some(pb::control_message::Kind::Load(update)),
    }
}

/// Session bindings that changed in the store, batched every `session_batch` to every stream.
pub(crate) async fn run_session_updates(hub: Hub) {
    let mut tick = tokio::time::interval(hub.inner.cfg.session_batch);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = hub.inner.ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pending = std::mem::take(
            &mut *hub
                .inner
                .session_out
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if pending.is_empty() {
            continue;
        }
        let mut update = pb::SessionUpdate::default();
        for (id, binding) in pending {
            match binding {
                Some(b) => update.upserted.push(b),
                None => update.removed.push(id),
            }
        }
        let msg = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Sessions(update)),
        };
        for node in hub.inner.local_nodes() {
            if !node.try_send(msg.clone()) {
                debug!(node_id = %node.node_id, "session update dropped: stream queue full");
            }
        }
    }
}
