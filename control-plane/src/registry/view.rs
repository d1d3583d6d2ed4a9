//! The `Service` view returned by the API: `services/{id}` joined with what other modules know
//! about it (`runtime/{id}`, `health/{id}`, and — added by their owners — connection/session
//! stats and proxy sync status). Every reader of a service goes through `assemble`, so a new
//! part is added in one place.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::error::Result;
use crate::keys;
use crate::model::{HealthState, Runtime, ServiceDef, ServiceStatus};
use crate::store::json;
use crate::stream::SyncStatus;

/// Per-service statistics (seed §1.1 `stats`). Fields the registry cannot know yet stay 0 until
/// the stats module fills them in `assemble`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    pub total_connections: u64,
    pub active_connections: u64,
    pub peak_connections: u64,
    pub total_sessions: u64,
    pub active_sessions: u64,
    pub completed_sessions: u64,
    pub avg_session_duration: f64,
    pub memory_usage_mb: f64,
    pub cpu_usage_percent: f64,
    pub error_count: u64,
    pub error_rate: f64,
    pub uptime_seconds: u64,
    pub restart_count: u64,
    pub messages_total: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub def: ServiceDef,
    /// `None`: never started (status `stopped`).
    pub runtime: Option<Runtime>,
    /// `None`: never checked (status `unknown`).
    pub health: Option<HealthState>,
    pub stats: ServiceStats,
    /// Which proxies applied the config version with this service's last change (single-service
    /// reads only; lists leave it out).
    pub sync: Option<SyncStatus>,
}

impl ServiceView {
    pub fn status(&self) -> ServiceStatus {
        self.runtime
            .as_ref()
            .map_or(ServiceStatus::Stopped, |r| r.status)
    }

    /// Set only while the process is up (running or on its way).
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        let r = self.runtime.as_ref()?;
        matches!(
            r.status,
            ServiceStatus::Running | ServiceStatus::Starting | ServiceStatus::Stopping
        )
        .then_some(r.started_at)
        .flatten()
    }
}

/// Joins definitions with their runtime and health records (one range read per prefix for
/// lists, point reads for a single service).
pub async fn assemble(ctx: &Context, defs: Vec<ServiceDef>) -> Result<Vec<ServiceView>> {
    let (mut runtimes, mut healths): (HashMap<String, Runtime>, HashMap<String, HealthState>) =
        if defs.len() == 1 {
            let id = &defs[0].id;
            let rt = json::get::<Runtime>(&ctx.store, &keys::runtime(id)).await?;
            let h = json::get::<HealthState>(&ctx.store, &keys::health(id)).await?;
            (
                rt.map(|(r, _)| (id.clone(), r)).into_iter().collect(),
                h.map(|(h, _)| (id.clone(), h)).into_iter().collect(),
            )
        } else if defs.is_empty() {
            (HashMap::new(), HashMap::new())
        } else {
            (
                by_id(ctx, keys::RUNTIME).await?,
                by_id(ctx, keys::HEALTH).await?,
            )
        };
    let now = Utc::now();
    let mut views: Vec<ServiceView> = defs
        .into_iter()
        .map(|def| {
            let runtime = runtimes.remove(&def.id);
            let health = healths.remove(&def.id);
            view(def, runtime, health, now)
        })
        .collect();
    // Extension point: the stats module adds connection/session counters here and the stream
    // module adds proxy sync status, each with one call over `views`.
    crate::stats::view::fill(ctx, &mut views).await?;
    if let [v] = views.as_mut_slice() {
        v.sync = Some(sync_of(ctx, &v.def.id).await?);
    }
    Ok(views)
}

async fn by_id<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    prefix: &str,
) -> Result<HashMap<String, T>> {
    let (kvs, _) = ctx.store.range(prefix).await?;
    let mut out = HashMap::with_capacity(kvs.len());
    for kv in kvs {
        let id = kv.key[prefix.len()..].to_string();
        match json::decode::<T>(&kv) {
            Ok(v) => {
                out.insert(id, v);
            }
            // One corrupt record must not hide every service from the list.
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping undecodable record"),
        }
    }
    Ok(out)
}

/// Sync status of the last change that concerns the service (its definition, runtime or
/// health record, whichever was written last).
async fn sync_of(ctx: &Context, id: &str) -> Result<SyncStatus> {
    let mut revision = 0;
    for key in [keys::service(id), keys::runtime(id), keys::health(id)] {
        if let Some(kv) = ctx.store.get(&key).await? {
            revision = revision.max(kv.mod_revision);
        }
    }
    crate::stream::sync_status(ctx, revision).await
}

/// Pure assembly of one view from its parts.
pub fn view(
    def: ServiceDef,
    runtime: Option<Runtime>,
    health: Option<HealthState>,
    now: DateTime<Utc>,
) -> ServiceView {
    let mut stats = ServiceStats::default();
    if let Some(r) = &runtime {
        stats.restart_count = u64::from(r.restart_count);
        if r.status == ServiceStatus::Running {
            stats.memory_usage_mb = r.memory_mb;
            stats.cpu_usage_percent = r.cpu_percent;
            if let Some(started) = r.started_at {
                stats.uptime_seconds = u64::try_from((now - started).num_seconds()).unwrap_or(0);
            }
        }
    }
    ServiceView {
        def,
        runtime,
        health,
        stats,
        sync: None,
    }
}
