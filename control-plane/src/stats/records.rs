//! Reading what the stats are computed from, cluster-wide and from the store (so every replica
//! answers the same): the proxies' cumulative counters, completed-session totals, the live
//! connection/session records, and the supervisor's runtime records. Every read is one range
//! per prefix, never one per service, so a list of many services stays cheap.
//!
//! The record formats are owned by `stream::model` (counters, sessions, connections) and
//! `model::Runtime`; the structs here read only the fields stats need, tolerating the rest.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys;
use crate::model::{Runtime, ServiceDef, ServiceStatus};
use crate::store::{json, KeyValue, StoreRef};

/// Prefix of the per-replica cumulative counters (`stats/counters/{service_id}/{replica_id}`).
pub const COUNTERS: &str = "stats/counters/";
/// Prefix of the per-service completed-session totals (`stats/sessions/{service_id}`).
pub const SESSION_TOTALS: &str = "stats/sessions/";

/// One `stats/counters/{service_id}/{replica_id}` record (cumulative since the replica's first
/// report for that service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub connections_opened: u64,
    pub sessions_created: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub errors: u64,
    pub response_time_count: u64,
    pub response_time_sum_ms: f64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connections_opened += o.connections_opened;
        self.sessions_created += o.sessions_created;
        self.messages_in += o.messages_in;
        self.messages_out += o.messages_out;
        self.errors += o.errors;
        self.response_time_count += o.response_time_count;
        self.response_time_sum_ms += o.response_time_sum_ms;
    }

    /// What happened between `prev` and `self` for one record. A record that went backwards was
    /// reset (its replica restarted with a fresh count), so everything in it is new.
    pub fn since(&self, prev: &Counters) -> Counters {
        let reset = self.connections_opened < prev.connections_opened
            || self.messages_in < prev.messages_in
            || self.messages_out < prev.messages_out
            || self.errors < prev.errors
            || self.response_time_count < prev.response_time_count
            || self.sessions_created < prev.sessions_created;
        if reset {
            return *self;
        }
        Counters {
            connections_opened: self.connections_opened - prev.connections_opened,
            sessions_created: self.sessions_created - prev.sessions_created,
            messages_in: self.messages_in - prev.messages_in,
            messages_out: self.messages_out - prev.messages_out,
            errors: self.errors - prev.errors,
            response_time_count: self.response_time_count - prev.response_time_count,
            response_time_sum_ms: (self.response_time_sum_ms - prev.response_time_sum_ms).max(0.0),
        }
    }
}

/// `stats/sessions/{service_id}`: sessions the leader completed and their summed duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SessionTotals {
    pub completed: u64,
    pub total_duration_seconds: f64,
}

/// Every counter record, keyed by its relative key minus the prefix (`{service_id}/{replica}`).
pub async fn counter_records(store: &StoreRef) -> Result<Vec<(String, String, Counters)>> {
    let (kvs, _) = store.range(COUNTERS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            let rest = &kv.key[COUNTERS.len()..];
            let (service, _replica) = rest.split_once('/')?;
            let c = decode_or_skip::<Counters>(kv)?;
            Some((rest.to_string(), service.to_string(), c))
        })
        .collect())
}

/// Cumulative counters per service (summed over replicas).
pub fn counters_by_service(records: &[(String, String, Counters)]) -> HashMap<String, Counters> {
    let mut out: HashMap<String, Counters> = HashMap::new();
    for (_, service, c) in records {
        out.entry(service.clone()).or_default().add(c);
    }
    out
}

pub async fn session_totals(store: &StoreRef) -> Result<HashMap<String, SessionTotals>> {
    let (kvs, _) = store.range(SESSION_TOTALS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            let id = kv.key[SESSION_TOTALS.len()..].to_string();
            decode_or_skip::<SessionTotals>(kv).map(|t| (id, t))
        })
        .collect())
}

/// Live load of one service across the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub active_connections: u64,
    /// Sessions not yet completed (active or idle within their timeout).
    pub active_sessions: u64,
}

#[derive(Deserialize)]
struct ConnectionDoc {
    #[serde(default)]
    target_service_id: String,
    status: String,
}

#[derive(Deserialize)]
struct SessionDoc {
    service_id: String,
    state: String,
}

/// Live load per service id, cluster-wide: the config-stream hub's watched view of the
/// connection and session records when it runs on this replica (no store read at all), else
/// counted from one range of each prefix.
pub async fn live_load(ctx: &crate::context::Context) -> Result<HashMap<String, Load>> {
    let Some(hub) = crate::stream::Hub::for_context(ctx) else {
        return live_load_from_store(&ctx.store).await;
    };
    Ok(hub
        .cluster_load()
        .into_iter()
        .map(|(id, l)| {
            let load = Load {
                active_connections: l.active_connections,
                active_sessions: l.active_sessions,
            };
            (id, load)
        })
        .collect())
}

/// Counts active connection records and non-completed session records per service.
pub async fn live_load_from_store(store: &StoreRef) -> Result<HashMap<String, Load>> {
    let mut out: HashMap<String, Load> = HashMap::new();
    let (conns, _) = store.range(keys::CONNECTIONS).await?;
    for kv in &conns {
        if let Some(c) = decode_or_skip::<ConnectionDoc>(kv) {
            if c.status == "active" && !c.target_service_id.is_empty() {
                out.entry(c.target_service_id)
                    .or_default()
                    .active_connections += 1;
            }
        }
    }
    let (sessions, _) = store.range(keys::SESSIONS).await?;
    for kv in &sessions {
        if let Some(s) = decode_or_skip::<SessionDoc>(kv) {
            if s.state != "completed" {
                out.entry(s.service_id).or_default().active_sessions += 1;
            }
        }
    }
    Ok(out)
}

/// Registered services and their runtime records (absent runtime = never started = stopped).
pub async fn services(store: &StoreRef) -> Result<Vec<(ServiceDef, Option<Runtime>)>> {
    let (defs, _) = store.range(keys::SERVICES).await?;
    let (rts, _) = store.range(keys::RUNTIME).await?;
    let mut runtimes: HashMap<String, Runtime> = rts
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key[keys::RUNTIME.len()..].to_string(),
                decode_or_skip(kv)?,
            ))
        })
        .collect();
    Ok(defs
        .iter()
        .filter_map(decode_or_skip::<ServiceDef>)
        .map(|d| {
            let rt = runtimes.remove(&d.id);
            (d, rt)
        })
        .collect())
}

pub fn status_of(rt: Option<&Runtime>) -> ServiceStatus {
    rt.map_or(ServiceStatus::Stopped, |r| r.status)
}

/// Memory and CPU count only while the process is up (a stopped service's last reading is
/// stale).
pub fn resources_of(rt: Option<&Runtime>) -> (f64, f64) {
    match rt {
        Some(r) if r.status == ServiceStatus::Running => (r.memory_mb, r.cpu_percent),
        _ => (0.0, 0.0),
    }
}

/// One corrupt record must not take the statistics of every service down with it.
fn decode_or_skip<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match json::decode::<T>(kv) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "stats: skipping undecodable record");
            None
        }
    }
}
