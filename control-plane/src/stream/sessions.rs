//! Session records: how proxy session events change a record, the batched write of those
//! changes, and the leader's expiry loop (idle past `session_timeout` → completed, sessions
//! left on vanished nodes → idle, completion totals per service, bounded completed records).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use myagent_proto::v1 as pb;

use super::config::timestamp;
use super::model::{session_totals_key, SessionRecord, SessionState, SessionTotals};
use super::Hub;
use crate::keys;
use crate::store::{json, Compare, LeaseId, Revision, Txn, TxnOp};

/// Default session timeout when the service is unknown (its record is gone).
const DEFAULT_TIMEOUT: u32 = 1800;
const IDLE_LEASE_MARGIN: u64 = 60;

#[derive(Debug, Clone)]
pub(crate) struct SessionEventIn {
    pub node_id: String,
    pub kind: pb::session_event::Kind,
    pub session_id: String,
    pub service_id: String,
    pub at: DateTime<Utc>,
}

/// Leader-side work noticed by the watcher.
#[derive(Default)]
pub(crate) struct LeaderWork {
    /// Idle sessions whose lease expired before the leader completed them.
    expired: Vec<SessionRecord>,
}

pub(crate) fn binding(s: &SessionRecord) -> pb::SessionBinding {
    pb::SessionBinding {
        session_id: s.session_id.clone(),
        service_id: s.service_id.clone(),
        state: s.state.as_str().to_string(),
        created_at: Some(timestamp(s.created_at)),
        last_seen: Some(timestamp(s.last_seen)),
    }
}

/// Applies one event; returns the new record (`None` = nothing to write) and whether it
/// created the session.
pub(crate) fn apply_event(
    rec: Option<SessionRecord>,
    ev: &SessionEventIn,
    node_connections: u32,
) -> (Option<SessionRecord>, bool) {
    use pb::session_event::Kind;
    match ev.kind {
        Kind::Unspecified => (rec, false),
        Kind::Created | Kind::Attached | Kind::Moved => {
            let (mut r, created) = match rec {
                Some(r) if r.state != SessionState::Completed => (r, false),
                _ => (
                    SessionRecord {
                        session_id: ev.session_id.clone(),
                        service_id: ev.service_id.clone(),
                        state: SessionState::Active,
                        created_at: ev.at,
                        last_seen: ev.at,
                        idle_since: None,
                        completed_at: None,
                        nodes: BTreeMap::new(),
                        connections: 0,
                        session_timeout: 0,
                    },
                    true,
                ),
            };
            if !ev.service_id.is_empty() {
                r.service_id = ev.service_id.clone();
            }
            r.nodes.insert(ev.node_id.clone(), node_connections.max(1));
            r.state = SessionState::Active;
            r.idle_since = None;
            r.last_seen = r.last_seen.max(ev.at);
            r.connections = r.nodes.values().sum();
            (Some(r), created)
        }
        Kind::Detached => {
            let Some(mut r) = rec else {
                return (None, false);
            };
            if r.state == SessionState::Completed {
                return (None, false);
            }
            r.nodes.remove(&ev.node_id);
            r.last_seen = r.last_seen.max(ev.at);
            if r.nodes.is_empty() && r.state == SessionState::Active {
                r.state = SessionState::Idle;
                r.idle_since = Some(ev.at);
            }
            r.connections = r.nodes.values().sum();
            (Some(r), false)
        }
    }
}

fn timeout_of(hub: &Hub, service_id: &str) -> u32 {
    hub.inner
        .mirror()
        .service(service_id)
        .map(|s| s.config.session_timeout)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Active connections of `session_id` on a local proxy, as its reports say.
fn node_connections(hub: &Hub, node_id: &str, session_id: &str) -> u32 {
    hub.inner.local_node(node_id).map_or(0, |n| {
        n.lock()
            .active
            .values()
            .filter(|c| c.session_id == session_id)
            .count() as u32
    })
}

/// Leases shared by every session of one flush that needs the same TTL.
struct LeasePool {
    leases: HashMap<u64, LeaseId>,
}

impl LeasePool {
    fn new() -> Self {
        LeasePool {
            leases: HashMap::new(),
        }
    }

    async fn get(&mut self, hub: &Hub, ttl_secs: u64) -> Option<LeaseId> {
        if let Some(l) = self.leases.get(&ttl_secs) {
            return Some(*l);
        }
        match hub
            .inner
            .ctx
            .store
            .grant_lease(std::time::Duration::from_secs(ttl_secs))
            .await
        {
            Ok(l) => {
                self.leases.insert(ttl_secs, l);
                Some(l)
            }
            Err(e) => {
                warn!(error = %e, "granting a session lease failed");
                None
            }
        }
    }
}

/// The put of a session record with the lease its state needs.
async fn put_op(hub: &Hub, pool: &mut LeasePool, r: &SessionRecord) -> Option<TxnOp> {
    let lease = match r.state {
        SessionState::Active => None,
        SessionState::Idle => {
            pool.get(hub, u64::from(r.session_timeout) + IDLE_LEASE_MARGIN)
                .await
        }
        SessionState::Completed => {
            pool.get(hub, hub.inner.cfg.completed_keep.as_secs().max(1))
                .await
        }
    };
    Some(TxnOp::Put {
        key: keys::session(&r.session_id),
        value: json::encode(r).ok()?,
        lease,
    })
}

/// One session's guarded write.
pub(crate) struct Prepared {
    pub compare: Compare,
    pub op: TxnOp,
    pub record: SessionRecord,
    /// The write creates the session (counted in `sessions_created` once written).
    pub created: bool,
}

fn group(events: &[SessionEventIn]) -> Vec<(String, Vec<&SessionEventIn>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<&str, Vec<&SessionEventIn>> = HashMap::new();
    for ev in events {
        let list = by_id.entry(ev.session_id.as_str()).or_default();
        if list.is_empty() {
            order.push(ev.session_id.clone());
        }
        list.push(ev);
    }
    order
        .into_iter()
        .map(|id| {
            let evs = by_id.remove(id.as_str()).unwrap_or_default();
            (id, evs)
        })
        .collect()
}

fn fold(
    hub: &Hub,
    base: Option<SessionRecord>,
    evs: &[&SessionEventIn],
) -> (Option<SessionRecord>, bool) {
    let mut rec = base;
    let mut created = false;
    let mut changed = false;
    for ev in evs {
        let count = node_connections(hub, &ev.node_id, &ev.session_id);
        let (next, c) = apply_event(rec.clone(), ev, count);
        if let Some(n) = next {
            rec = Some(n);
            changed = true;
        }
        created |= c;
    }
    let mut rec = if changed { rec } else { None };
    if let Some(r) = &mut rec {
        r.session_timeout = timeout_of(hub, &r.service_id);
    }
    (rec, created)
}

/// Builds the guarded writes for a batch of session events.
pub(crate) async fn prepare(hub: &Hub, events: &[SessionEventIn]) -> Vec<Prepared> {
    let mut out = Vec::new();
    let mut pool = LeasePool::new();
    for (id, evs) in group(events) {
        let base = super::reports::session_base(hub, &id);
        let base_rev = base.as_ref().map_or(0, |b| b.1);
        let (rec, created) = fold(hub, base.map(|b| b.0), &evs);
        let Some(rec) = rec else { continue };
        let Some(op) = put_op(hub, &mut pool, &rec).await else {
            continue;
        };
        out.push(Prepared {
            compare: Compare::ModRevision(keys::session(&id), base_rev),
            op,
            record: rec,
            created,
        });
    }
    out
}

/// Slow path after a failed guarded batch: each session read fresh and written alone.
pub(crate) async fn write_one_by_one(hub: &Hub, events: &[SessionEventIn]) {
    let store = &hub.inner.ctx.store;
    let mut pool = LeasePool::new();
    for (id, evs) in group(events) {
        let key = keys::session(&id);
        for attempt in 0..3 {
            let base = match json::get::<SessionRecord>(store, &key).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(session_id = %id, error = %e, "reading session failed");
                    break;
                }
            };
            let base_rev = base.as_ref().map_or(0, |b| b.1);
            let (rec, created) = fold(hub, base.map(|b| b.0), &evs);
            let Some(rec) = rec else { break };
            let Some(op) = put_op(hub, &mut pool, &rec).await else {
                break;
            };
            let txn = Txn {
                compares: vec![Compare::ModRevision(key.clone(), base_rev)],
                success: vec![op],
                failure: Vec::new(),
            };
            match store.txn(txn).await {
                Ok(r) if r.succeeded => {
                    if created {
                        super::reports::count_created(hub, &rec.service_id);
                    }
                    break;
                }
                Ok(_) => {
                    debug!(session_id = %id, attempt, "session changed concurrently; retrying")
                }
                Err(e) => {
                    warn!(session_id = %id, error = %e, "writing session failed");
                    break;
                }
            }
        }
    }
}

pub(crate) fn note_expired(hub: &Hub, records: Vec<SessionRecord>) {
    if !*hub.inner.ctx.is_leader.borrow() {
        return;
    }
    let mut w = hub
        .inner
        .session_work
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    w.expired.extend(records);
}

/// Leader only: completes sessions idle past their timeout, idles sessions whose nodes are gone,
/// keeps per-service completion totals and bounds the completed records.
pub(crate) async fn run_leader_loop(hub: Hub) {
    let mut tick = tokio::time::interval(hub.inner.cfg.session_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = hub.inner.ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !*hub.inner.ctx.is_leader.borrow() || !*hub.inner.ready.borrow() {
            continue;
        }
        if let Err(e) = expire_once(&hub, Utc::now()).await {
            warn!(error = %e, "session expiry pass failed; will retry");
        }
    }
}

/// One expiry pass at `now`.
pub async fn expire_once(hub: &Hub, now: DateTime<Utc>) -> crate::Result<()> {
    let limit = (hub.inner.cfg.max_txn_ops / 3).max(1);
    let (changes, completed_excess) = {
        let m = hub.inner.mirror();
        let live: HashSet<&str> = m.nodes.keys().map(String::as_str).collect();
        let mut changes: Vec<(SessionRecord, Revision)> = Vec::new();
        let mut completed: Vec<(DateTime<Utc>, &str)> = Vec::new();
        for e in m.sessions.values() {
            if e.record.state == SessionState::Completed {
                let r = &e.record;
                completed.push((r.completed_at.unwrap_or(r.last_seen), &r.session_id));
                continue;
            }
            let mut r = e.record.clone();
            let before = r.clone();
            r.nodes.retain(|n, _| live.contains(n.as_str()));
            r.connections = r.nodes.values().sum();
            if r.state == SessionState::Active && r.nodes.is_empty() {
                r.state = SessionState::Idle;
                r.idle_since = Some(now);
            }
            if r.state == SessionState::Idle {
                let timeout = m
                    .service(&r.service_id)
                    .map(|s| s.config.session_timeout)
                    .unwrap_or(r.session_timeout);
                let since = r.idle_since.unwrap_or(r.last_seen);
                if since + chrono::Duration::seconds(i64::from(timeout)) <= now {
                    r.state = SessionState::Completed;
                    r.completed_at = Some(now);
                }
            }
            if r != before && changes.len() < limit {
                changes.push((r, e.mod_revision));
            }
        }
        completed.sort();
        let excess = completed.len().saturating_sub(hub.inner.cfg.completed_max);
        let excess: Vec<String> = completed
            .iter()
            .take(excess.min(limit))
            .map(|(_, id)| id.to_string())
            .collect();
        (changes, excess)
    };
    let expired = std::mem::take(
        &mut hub
            .inner
            .session_work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expired,
    );
    if changes.is_empty() && completed_excess.is_empty() && expired.is_empty() {
        return Ok(());
    }
    let mut totals: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for r in changes.iter().map(|(r, _)| r).chain(expired.iter()) {
        let done = r.state == SessionState::Completed
            || expired.iter().any(|e| e.session_id == r.session_id);
        if done && !r.service_id.is_empty() {
            let t = totals.entry(r.service_id.clone()).or_default();
            t.0 += 1;
            let mut ended = r.clone();
            if ended.completed_at.is_none() {
                ended.completed_at = Some(ended.idle_since.unwrap_or(ended.last_seen));
            }
            t.1 += ended.duration_seconds();
        }
    }
    let mut pool = LeasePool::new();
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for (r, rev) in &changes {
        if let Some(op) = put_op(hub, &mut pool, r).await {
            compares.push(Compare::ModRevision(keys::session(&r.session_id), *rev));
            ops.push(op);
        }
    }
    for id in &completed_excess {
        ops.push(TxnOp::delete(keys::session(id)));
    }
    let store = &hub.inner.ctx.store;
    for (service_id, (count, duration)) in &totals {
        let key = session_totals_key(service_id);
        let (mut t, rev) = json::get::<SessionTotals>(store, &key)
            .await?
            .unwrap_or_default();
        t.service_id = service_id.clone();
        t.completed += count;
        t.total_duration_seconds += duration;
        t.updated_at = Some(now);
        compares.push(Compare::ModRevision(key.clone(), rev));
        ops.push(TxnOp::put(key, json::encode(&t)?));
    }
    let resp = store
        .txn(Txn {
            compares,
            success: ops,
            failure: Vec::new(),
        })
        .await?;
    if !resp.succeeded {
        // Something changed meanwhile; the next pass recomputes (expired ones are retried).
        hub.inner
            .session_work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expired
            .extend(expired);
        debug!("session expiry pass raced a concurrent write");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::session_event::Kind;

    fn ev(kind: Kind, node: &str, at: i64) -> SessionEventIn {
        SessionEventIn {
            node_id: node.into(),
            kind,
            session_id: "s1".into(),
            service_id: "svc".into(),
            at: DateTime::from_timestamp(at, 0).unwrap(),
        }
    }

    #[test]
    fn lifecycle_active_idle_and_resume_on_another_node() {
        let (r, created) = apply_event(None, &ev(Kind::Created, "p1", 100), 1);
        let r = r.unwrap();
        assert!(created);
        assert_eq!(r.state, SessionState::Active);
        assert_eq!(r.connections, 1);
        let (r, _) = apply_event(Some(r), &ev(Kind::Attached, "p2", 110), 2);
        let r = r.unwrap();
        assert_eq!(r.connections, 3);
        let (r, _) = apply_event(Some(r), &ev(Kind::Detached, "p1", 120), 0);
        let r = r.unwrap();
        assert_eq!(r.state, SessionState::Active);
        let (r, _) = apply_event(Some(r), &ev(Kind::Detached, "p2", 130), 0);
        let r = r.unwrap();
        assert_eq!(r.state, SessionState::Idle);
        assert_eq!(r.idle_since.unwrap().timestamp(), 130);
        let (r, created) = apply_event(Some(r), &ev(Kind::Attached, "p1", 140), 1);
        let r = r.unwrap();
        assert!(!created, "a resumed session is not a new one");
        assert_eq!(r.state, SessionState::Active);
        assert_eq!(r.created_at.timestamp(), 100);
        assert!(r.idle_since.is_none());
    }

    #[test]
    fn detach_of_unknown_session_writes_nothing() {
        let (r, created) = apply_event(None, &ev(Kind::Detached, "p1", 100), 0);
        assert!(r.is_none() && !created);
    }
}
