//! Proxy reports → store, batched: connection records, session records and counters collect in
//! memory and are written together every `report_flush` (one transaction per flush, split only
//! when it exceeds `max_txn_ops`), counters at most every `counters_flush`. A connect storm of
//! thousands per second thus costs a few store writes per second per replica.

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use myagent_proto::v1 as pb;

use super::config::from_timestamp;
use super::model::{ConnectionRecord, ConnectionStatus, CounterRecord, SessionRecord};
use super::node::LocalNode;
use super::sessions::SessionEventIn;
use super::Hub;
use crate::keys;
use crate::store::{json, Compare, LeaseId, Revision, Txn, TxnOp};

/// Minimum spacing of flushes made ahead of the tick for new sessions.
const EARLY_FLUSH_GAP: std::time::Duration = std::time::Duration::from_millis(20);

/// etcd's default `--max-txn-ops`; used when the store refuses bigger transactions.
const SAFE_TXN_OPS: usize = 128;

#[derive(Default)]
pub(crate) struct Pending {
    /// Connection records to write, by connection id.
    conns: HashMap<String, ConnectionRecord>,
    /// Connection keys to delete (retention of closed records).
    conn_deletes: HashSet<String>,
    sessions: Vec<SessionEventIn>,
    /// Counter deltas since the last counters flush, by service id.
    counters: HashMap<String, CounterRecord>,
    /// Session records this replica wrote, with their revision: a base newer than the mirror
    /// while the watch has not caught up with our own write.
    written: HashMap<String, (SessionRecord, Revision)>,
    /// Cumulative counters of this replica, by service id (loaded from the store once).
    totals: Option<HashMap<String, CounterRecord>>,
    txn_ops: Option<usize>,
    /// Peak candidates from the proxies' reports (`stats::peaks`).
    pub(crate) peaks: crate::stats::peaks::Tracker,
}

fn key_of(c: &ConnectionRecord) -> String {
    keys::connection(&c.node_id, &c.connection_id)
}

/// The merged record after one connection event: fields the event leaves empty keep their value.
fn merge(
    prev: Option<&ConnectionRecord>,
    c: pb::Connection,
    node_id: &str,
    closed: bool,
    now: DateTime<Utc>,
) -> ConnectionRecord {
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(from_timestamp);
    let pick = |new: String, old: Option<&String>| {
        if new.is_empty() {
            old.cloned().unwrap_or_default()
        } else {
            new
        }
    };
    let connected_at = ts(&c.connected_at)
        .or(prev.map(|p| p.connected_at))
        .unwrap_or(now);
    ConnectionRecord {
        session_id: pick(c.session_id, prev.map(|p| &p.session_id)),
        client_ip: pick(c.client_ip, prev.map(|p| &p.client_ip)),
        target_service_id: pick(c.target_service_id, prev.map(|p| &p.target_service_id)),
        target_service: pick(c.target_service, prev.map(|p| &p.target_service)),
        routing_strategy: pick(c.routing_strategy, prev.map(|p| &p.routing_strategy)),
        node_id: node_id.to_string(),
        status: if closed {
            ConnectionStatus::Closed
        } else {
            ConnectionStatus::Active
        },
        connected_at,
        last_activity: ts(&c.last_activity)
            .or(prev.map(|p| p.last_activity))
            .unwrap_or(now),
        closed_at: if closed {
            Some(ts(&c.closed_at).unwrap_or(now))
        } else {
            None
        },
        bytes_sent: c.bytes_sent.max(prev.map_or(0, |p| p.bytes_sent)),
        bytes_received: c.bytes_received.max(prev.map_or(0, |p| p.bytes_received)),
        message_count: c.message_count.max(prev.map_or(0, |p| p.message_count)),
        connection_id: c.connection_id,
    }
}

/// Takes one report of a local proxy into the pending batch (no I/O).
pub(crate) fn ingest(hub: &Hub, node: &LocalNode, mut report: pb::Report) {
    use pb::connection_event::Kind;
    let now = Utc::now();
    let cfg = &hub.inner.cfg;
    // Before the locks below: it reads the other nodes' state and the mirror.
    let peaks = crate::stats::peaks::from_report(hub, &node.node_id, &report);
    let mut pending = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = &peaks {
        pending.peaks.observe(now, c);
    }
    let mut st = node.lock();
    if report.live_set {
        // A stream opened and the report lists every live connection of the node: the others
        // held as active closed while no report could say so (the replica that received the
        // close died with it). They are closed as if reported.
        let live: std::collections::HashSet<&str> = report
            .connections
            .iter()
            .filter_map(|e| e.connection.as_ref())
            .map(|c| c.connection_id.as_str())
            .collect();
        let gone: Vec<pb::ConnectionEvent> = st
            .active
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .map(|id| pb::ConnectionEvent {
                kind: Kind::Closed as i32,
                connection: Some(pb::Connection {
                    connection_id: id.clone(),
                    ..Default::default()
                }),
            })
            .collect();
        report.connections.extend(gone);
    }
    for ev in report.connections {
        let Some(c) = ev.connection else { continue };
        if c.connection_id.is_empty() {
            continue;
        }
        let kind = Kind::try_from(ev.kind).unwrap_or(Kind::Unspecified);
        let closed = kind == Kind::Closed;
        let rec = {
            let prev = st
                .active
                .get(&c.connection_id)
                .or_else(|| pending.conns.get(&c.connection_id));
            merge(prev, c, &node.node_id, closed, now)
        };
        let counters = pending
            .counters
            .entry(rec.target_service_id.clone())
            .or_default();
        match kind {
            Kind::Opened => counters.connections_opened += 1,
            Kind::Closed => counters.connections_closed += 1,
            _ => {}
        }
        if closed {
            st.active.remove(&rec.connection_id);
            st.closed
                .push_back((rec.closed_at.unwrap_or(now), rec.connection_id.clone()));
        } else {
            st.active.insert(rec.connection_id.clone(), rec.clone());
        }
        pending.conn_deletes.remove(&key_of(&rec));
        pending.conns.insert(rec.connection_id.clone(), rec);
    }
    // Bounded retention of closed records: by count and by age.
    let max_age =
        chrono::Duration::from_std(cfg.closed_max_age).unwrap_or(chrono::Duration::hours(1));
    while st.closed.len() > cfg.closed_keep
        || st.closed.front().is_some_and(|(at, _)| now - *at > max_age)
    {
        let Some((_, id)) = st.closed.pop_front() else {
            break;
        };
        pending.conns.remove(&id);
        pending
            .conn_deletes
            .insert(keys::connection(&node.node_id, &id));
    }
    let mut new_session = false;
    for ev in report.sessions {
        if ev.session_id.is_empty() {
            continue;
        }
        let kind = pb::session_event::Kind::try_from(ev.kind)
            .unwrap_or(pb::session_event::Kind::Unspecified);
        new_session |= kind == pb::session_event::Kind::Created;
        pending.sessions.push(SessionEventIn {
            node_id: node.node_id.clone(),
            kind,
            session_id: ev.session_id,
            service_id: ev.service_id,
            at: ev.at.as_ref().and_then(from_timestamp).unwrap_or(now),
        });
    }
    for c in report.counters {
        let add = CounterRecord {
            messages_in: c.messages_in,
            messages_out: c.messages_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            errors: c.errors,
            response_time_count: c.response_time_count,
            response_time_sum_ms: c.response_time_sum_ms,
            passive_failures: c.passive_failures,
            ..CounterRecord::default()
        };
        pending.counters.entry(c.service_id).or_default().add(&add);
    }
    drop(st);
    drop(pending);
    if new_session {
        hub.inner.flush_soon.notify_one();
    }
}

/// A session created by a report this replica holds but has not written yet.
pub(crate) fn pending_binding(hub: &Hub, session_id: &str) -> Option<pb::SessionBinding> {
    let p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    p.sessions
        .iter()
        .find(|e| e.session_id == session_id && e.kind == pb::session_event::Kind::Created)
        .map(|e| pb::SessionBinding {
            session_id: e.session_id.clone(),
            service_id: e.service_id.clone(),
            state: "active".into(),
            created_at: Some(super::config::timestamp(e.at)),
            last_seen: Some(super::config::timestamp(e.at)),
        })
}

/// Writes pending reports every `report_flush` and counters every `counters_flush`; flushes
/// once more at shutdown. A new session is written ahead of the tick (at most one early write
/// per `EARLY_FLUSH_GAP`), so a client can resume it through another proxy at once.
pub(crate) async fn run_flusher(hub: Hub) {
    let cfg = hub.inner.cfg.clone();
    let shutdown = hub.inner.ctx.shutdown.clone();
    let mut tick = tokio::time::interval(cfg.report_flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_counters = Instant::now();
    let mut last_flush = Instant::now();
    let mut early: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = hub.inner.flush_soon.notified(), if early.is_none() => {
                early = Some(last_flush + EARLY_FLUSH_GAP);
                continue;
            }
            _ = tokio::time::sleep_until(early.unwrap_or(last_flush)), if early.is_some() => false,
            _ = tick.tick() => false,
        };
        early = None;
        last_flush = Instant::now();
        flush_reports(&hub).await;
        if stopping || last_counters.elapsed() >= cfg.counters_flush {
            flush_counters(&hub).await;
            last_counters = Instant::now();
        }
        if stopping {
            return;
        }
    }
}

fn txn_ops(hub: &Hub) -> usize {
    let p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    p.txn_ops.unwrap_or(hub.inner.cfg.max_txn_ops).max(1)
}

/// Applies `ops` (plus `compares`, all or nothing) in as few transactions as the store takes.
/// Returns `Ok(Some(revision))` on success, `Ok(None)` when a compare failed.
async fn write_ops(
    hub: &Hub,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> crate::Result<Option<Revision>> {
    if ops.is_empty() {
        return Ok(Some(0));
    }
    let limit = txn_ops(hub);
    if !compares.is_empty() && ops.len() + compares.len() > limit {
        // Guarded writes cannot be split; the caller falls back to smaller ones.
        return Ok(None);
    }
    let mut last = 0;
    for chunk in ops.chunks(limit) {
        let txn = Txn {
            compares: compares.clone(),
            success: chunk.to_vec(),
            failure: Vec::new(),
        };
        match hub.inner.ctx.store.txn(txn).await {
            Ok(r) if r.succeeded => last = r.revision,
            Ok(_) => return Ok(None),
            Err(e) if limit > SAFE_TXN_OPS && e.to_string().contains("too many operations") => {
                warn!(
                    limit,
                    "store refused a transaction this large; using {SAFE_TXN_OPS} operations"
                );
                hub.inner
                    .reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .txn_ops = Some(SAFE_TXN_OPS);
                return Box::pin(write_ops(hub, compares, ops)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(last))
}

/// The lease connection records of `node_id` live on (its node lease), if the node is known.
fn node_lease(hub: &Hub, node_id: &str) -> Option<LeaseId> {
    if let Some(n) = hub.inner.local_node(node_id) {
        return Some(n.lock().lease);
    }
    hub.inner
        .mirror()
        .nodes
        .get(node_id)
        .map(|(_, lease)| *lease)
        .filter(|l| *l != 0)
}

pub(crate) async fn flush_reports(hub: &Hub) {
    let (conns, deletes, events) = {
        let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut p.conns),
            std::mem::take(&mut p.conn_deletes),
            std::mem::take(&mut p.sessions),
        )
    };
    if conns.is_empty() && deletes.is_empty() && events.is_empty() {
        return;
    }
    let mut leases: HashMap<String, Option<LeaseId>> = HashMap::new();
    let mut conn_ops = Vec::with_capacity(conns.len() + deletes.len());
    for c in conns.values() {
        let lease = *leases
            .entry(c.node_id.clone())
            .or_insert_with(|| node_lease(hub, &c.node_id));
        // A node without a lease is gone; its records went with it.
        let (Some(lease), Ok(value)) = (lease, json::encode(c)) else {
            continue;
        };
        conn_ops.push(TxnOp::Put {
            key: key_of(c),
            value,
            lease: Some(lease),
        });
    }
    conn_ops.extend(deletes.iter().map(|k| TxnOp::delete(k.clone())));
    let sessions = super::sessions::prepare(hub, &events).await;
    let limit = txn_ops(hub);
    let started = Instant::now();
    let all_fit = conn_ops.len() + 2 * sessions.len() <= limit;
    if all_fit {
        // The common case: everything in one transaction.
        let mut ops = conn_ops.clone();
        ops.extend(sessions.iter().map(|p| p.op.clone()));
        let compares = sessions.iter().map(|p| p.compare.clone()).collect();
        match write_ops(hub, compares, ops).await {
            Ok(Some(rev)) => sessions_written(hub, sessions, rev),
            Ok(None) => {
                // A session changed under us (another replica): connections alone, then each
                // session with a fresh read.
                if let Err(e) = write_ops(hub, Vec::new(), conn_ops).await {
                    warn!(error = %e, "writing connection records failed; will retry");
                    requeue(hub, conns, deletes, Vec::new());
                }
                super::sessions::write_one_by_one(hub, &events).await;
            }
            Err(e) => {
                warn!(error = %e, "writing reports failed; will retry");
                requeue(hub, conns, deletes, events);
                return;
            }
        }
    } else {
        if let Err(e) = write_ops(hub, Vec::new(), conn_ops).await {
            warn!(error = %e, "writing connection records failed; will retry");
            requeue(hub, conns, deletes, events);
            return;
        }
        let mut rest = sessions;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min((limit / 2).max(1)));
            let chunk = std::mem::replace(&mut rest, tail);
            let ids: HashSet<String> = chunk.iter().map(|p| p.record.session_id.clone()).collect();
            let compares = chunk.iter().map(|p| p.compare.clone()).collect();
            let ops = chunk.iter().map(|p| p.op.clone()).collect();
            match write_ops(hub, compares, ops).await {
                Ok(Some(rev)) => sessions_written(hub, chunk, rev),
                Ok(None) => {
                    let evs: Vec<SessionEventIn> = events
                        .iter()
                        .filter(|e| ids.contains(&e.session_id))
                        .cloned()
                        .collect();
                    super::sessions::write_one_by_one(hub, &evs).await;
                }
                Err(e) => {
                    warn!(error = %e, "writing session records failed; will retry");
                    let evs: Vec<SessionEventIn> = events
                        .iter()
                        .filter(|e| ids.contains(&e.session_id))
                        .cloned()
                        .collect();
                    requeue(hub, HashMap::new(), HashSet::new(), evs);
                }
            }
        }
    }
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reports flushed"
    );
}

fn sessions_written(hub: &Hub, written: Vec<super::sessions::Prepared>, rev: Revision) {
    let mut records = Vec::with_capacity(written.len());
    for p in written {
        if p.created {
            count_created(hub, &p.record.service_id);
        }
        records.push(p.record);
    }
    remember_sessions(hub, records, rev);
}

fn remember_sessions(hub: &Hub, records: Vec<SessionRecord>, rev: Revision) {
    let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    for r in records {
        p.written.insert(r.session_id.clone(), (r, rev));
    }
    // Only recent writes matter (until the watch delivers them); keep the cache small.
    if p.written.len() > 50_000 {
        let mut revs: Vec<Revision> = p.written.values().map(|(_, r)| *r).collect();
        revs.sort_unstable();
        let cut = revs[revs.len() / 2];
        p.written.retain(|_, (_, r)| *r >= cut);
    }
}

/// The newest base we know for a session: our own last write or the watched store view.
pub(crate) fn session_base(hub: &Hub, id: &str) -> Option<(SessionRecord, Revision, LeaseId)> {
    let mirrored = hub
        .inner
        .mirror()
        .sessions
        .get(id)
        .map(|e| (e.record.clone(), e.mod_revision, e.lease));
    let written = hub
        .inner
        .reports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .written
        .get(id)
        .cloned();
    match (mirrored, written) {
        (Some(m), Some((w, wr))) if wr > m.1 => Some((w, wr, 0)),
        (None, Some((w, wr))) if wr > hub.inner.mirror().revision => Some((w, wr, 0)),
        (m, _) => m,
    }
}

pub(crate) fn count_created(hub: &Hub, service_id: &str) {
    let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    p.counters
        .entry(service_id.to_string())
        .or_default()
        .sessions_created += 1;
}

fn requeue(
    hub: &Hub,
    conns: HashMap<String, ConnectionRecord>,
    deletes: HashSet<String>,
    events: Vec<SessionEventIn>,
) {
    let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
    for (id, c) in conns {
        p.conns.entry(id).or_insert(c);
    }
    p.conn_deletes.extend(deletes);
    let newer = std::mem::take(&mut p.sessions);
    p.sessions = events;
    p.sessions.extend(newer);
}

async fn flush_counters(hub: &Hub) {
    crate::stats::peaks::flush(hub).await;
    let store = &hub.inner.ctx.store;
    let replica = hub.inner.ctx.replica_id.to_string();
    let needs_load = hub
        .inner
        .reports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .totals
        .is_none();
    if needs_load {
        // Our cumulative totals survive a restart of this replica (same replica id).
        let loaded: HashMap<String, CounterRecord> = match store.range(super::model::COUNTERS).await
        {
            Ok((kvs, _)) => kvs
                .iter()
                .filter_map(|kv| json::decode::<CounterRecord>(kv).ok())
                .filter(|c| c.replica_id == replica)
                .map(|c| (c.service_id.clone(), c))
                .collect(),
            Err(e) => {
                warn!(error = %e, "loading counter totals failed; will retry");
                return;
            }
        };
        hub.inner
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .totals = Some(loaded);
    }
    let (deltas, mut totals) = {
        let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        let deltas = std::mem::take(&mut p.counters);
        (deltas, p.totals.clone().unwrap_or_default())
    };
    let now = Utc::now();
    let mut ops = Vec::new();
    let mut touched: BTreeMap<String, CounterRecord> = BTreeMap::new();
    for (service_id, delta) in &deltas {
        if service_id.is_empty() || delta.is_zero() {
            continue;
        }
        let total = totals
            .entry(service_id.clone())
            .or_insert_with(|| CounterRecord {
                service_id: service_id.clone(),
                replica_id: replica.clone(),
                ..CounterRecord::default()
            });
        total.add(delta);
        total.updated_at = Some(now);
        touched.insert(service_id.clone(), total.clone());
        if let Ok(value) = json::encode(total) {
            ops.push(TxnOp::put(
                super::model::counters_key(service_id, &replica),
                value,
            ));
        }
    }
    if ops.is_empty() {
        return;
    }
    match write_ops(hub, Vec::new(), ops).await {
        Ok(_) => {
            let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
            let t = p.totals.get_or_insert_with(HashMap::new);
            t.extend(touched);
        }
        Err(e) => {
            warn!(error = %e, "writing counters failed; will retry");
            let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
            for (id, d) in deltas {
                p.counters.entry(id).or_default().add(&d);
            }
        }
    }
}

/// Writes everything pending now (tests and shutdown).
pub async fn flush_now(hub: &Hub) {
    flush_reports(hub).await;
    flush_counters(hub).await;
}
