//! Health checker (leader only): WebSocket-handshake probes, thresholds, flap damping, history.
//!
//! One actor task owns the probe schedule of every service; each probe runs in its own task
//! (bounded by a semaphore and its own timeout), so a hung agent never delays other probes or
//! the API. Results go to `health/{id}` by compare-and-swap, so the leader's probes, a manual
//! check on any replica and passive failures reported by proxies never overwrite each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::logs::{Level, LogHub};
use crate::model::{HealthState, HealthStatus, Runtime, ServiceDef, ServiceStatus};
use crate::store::{json, Compare, StoreRef, Txn, TxnOp, WatchEvent};
use crate::supervisor::SupervisorHandle;

pub mod probe;
pub mod state;

pub use state::{Change, CheckResult};

/// Probes in flight at once across all services.
const MAX_CONCURRENT_PROBES: usize = 64;
const TICK: Duration = Duration::from_millis(200);

/// Read-modify-write of `health/{id}` with compare-and-swap; `None` when the service is gone,
/// or when `fence` (a leader-only write's term, `Context::term`) no longer holds.
pub async fn update(
    store: &StoreRef,
    service_id: &str,
    fence: Option<Compare>,
    f: impl Fn(&mut HealthState) -> Change,
) -> Result<Option<(HealthState, Change)>> {
    let key = keys::health(service_id);
    for _ in 0..20 {
        let (mut st, rev) = match json::get::<HealthState>(store, &key).await? {
            Some((s, rev)) => (s, rev),
            None => (HealthState::default(), 0),
        };
        let change = f(&mut st);
        let mut compares = vec![
            Compare::ModRevision(key.clone(), rev),
            Compare::Exists(keys::service(service_id)),
        ];
        compares.extend(fence.clone());
        let txn = Txn {
            compares,
            success: vec![TxnOp::put(key.clone(), json::encode(&st)?)],
            failure: vec![],
        };
        if store.txn(txn).await?.succeeded {
            return Ok(Some((st, change)));
        }
        if store.get(&keys::service(service_id)).await?.is_none() {
            return Ok(None);
        }
        if let Some(Compare::ModRevision(k, term)) = &fence {
            if store.get(k).await?.map(|kv| kv.mod_revision) != Some(*term) {
                return Ok(None);
            }
        }
    }
    Err(Error::internal(format!(
        "health/{service_id}: too much write contention"
    )))
}

/// Records one probe result for `def`.
pub async fn record(
    store: &StoreRef,
    def: &ServiceDef,
    r: CheckResult,
    fence: Option<Compare>,
) -> Result<Option<(HealthState, Change)>> {
    let cfg = def.config.clone();
    update(store, &def.id, fence, move |s| state::apply(s, &cfg, &r)).await
}

/// Sets the status from outside the probe cycle (start-up handshake passed, process gone).
pub async fn force(
    store: &StoreRef,
    service_id: &str,
    status: HealthStatus,
    response_time_ms: f64,
    message: &str,
    flapping: Option<bool>,
    fence: Option<Compare>,
) -> Result<Option<(HealthState, Change)>> {
    let at = Utc::now();
    update(store, service_id, fence, move |s| {
        let mut ch = state::force(s, status, at, response_time_ms, message);
        if let Some(f) = flapping {
            ch.flapping_changed |= s.flapping != f;
            s.flapping = f;
        }
        ch
    })
    .await
}

/// A failure seen by someone else (a proxy's upstream connect failed); counts like a failed probe.
pub async fn report_passive_failure(ctx: &Context, service_id: &str, error: &str) -> Result<()> {
    let Some((def, _)) = json::get::<ServiceDef>(&ctx.store, &keys::service(service_id)).await?
    else {
        return Err(Error::ServiceNotFound(service_id.to_string()));
    };
    if !def.config.health_check_enabled {
        return Ok(());
    }
    let r = CheckResult {
        at: Utc::now(),
        ok: false,
        response_time_ms: 0.0,
        error: format!("passive: {error}"),
    };
    record(&ctx.store, &def, r, None).await.map(|_| ())
}

/// Probes `def` now (from this replica) and records the result: the manual check. Its verdict
/// counts at once: the healthy/unhealthy thresholds smooth the periodic checker's noise, and an
/// operator who asks for a check wants its answer (a failed probe reads `unhealthy`, not
/// `unknown` with one failure of three).
pub async fn check_now(
    store: &StoreRef,
    logs: Option<&LogHub>,
    def: &ServiceDef,
) -> Result<HealthState> {
    let timeout = secs(def.config.health_check_timeout, 5.0);
    let out = probe::handshake(&def.host, def.port, timeout).await;
    let r = CheckResult {
        at: Utc::now(),
        ok: out.ok,
        response_time_ms: out.response_time_ms,
        error: out.error,
    };
    let mut cfg = def.config.clone();
    cfg.healthy_threshold = 1;
    cfg.unhealthy_threshold = 1;
    match update(store, &def.id, None, move |s| state::apply(s, &cfg, &r)).await? {
        Some((st, change)) => {
            if let Some(l) = logs {
                log_change(l, def, &st, change);
            }
            Ok(st)
        }
        None => Err(Error::ServiceNotFound(def.id.clone())),
    }
}

/// Logs a status or flapping change (tracing and the service's manager log).
pub fn log_change(logs: &LogHub, def: &ServiceDef, st: &HealthState, change: Change) {
    if change.transitioned() {
        let level = if change.to == HealthStatus::Healthy {
            Level::Info
        } else {
            Level::Warn
        };
        let msg = format!(
            "health changed: {} -> {}{}",
            change.from.as_str(),
            change.to.as_str(),
            if st.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", st.message)
            }
        );
        tracing::info!(service = %def.name, service_id = %def.id, from = change.from.as_str(), to = change.to.as_str(), "{msg}");
        logs.manager(&def.id, &def.name, level, &msg);
    }
    if change.flapping_changed {
        let msg = if st.flapping {
            "health is flapping: held out of routing until stable".to_string()
        } else {
            "health is stable again: back in routing".to_string()
        };
        tracing::info!(service = %def.name, service_id = %def.id, flapping = st.flapping, "{msg}");
        logs.manager(&def.id, &def.name, Level::Warn, &msg);
    }
}

pub(crate) fn secs(v: f64, default: f64) -> Duration {
    let v = if v.is_finite() && v > 0.0 { v } else { default };
    Duration::from_secs_f64(v.min(86_400.0))
}

/// Runs the checker whenever this replica leads, until shutdown.
pub fn spawn(
    ctx: Context,
    logs: LogHub,
    supervisor: SupervisorHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut leader = ctx.is_leader.clone();
        loop {
            if !*leader.borrow_and_update() {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    r = leader.changed() => { if r.is_err() { return; } continue; }
                }
            }
            let term = ctx.shutdown.child_token();
            let watcher = {
                let term = term.clone();
                let mut leader = leader.clone();
                tokio::spawn(async move {
                    while *leader.borrow_and_update() {
                        if leader.changed().await.is_err() {
                            break;
                        }
                    }
                    term.cancel();
                })
            };
            tracing::info!("health checker running (leader)");
            if let Err(e) = run_term(&ctx, &logs, &supervisor, &term).await {
                tracing::warn!(error = %e, "health checker term ended with an error; resyncing");
                tokio::select! {
                    _ = term.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            watcher.abort();
            if ctx.shutdown.is_cancelled() {
                return;
            }
        }
    })
}

struct Tracked {
    def: ServiceDef,
    running: bool,
    next_due: Instant,
    in_flight: bool,
}

impl Tracked {
    fn eligible(&self) -> bool {
        self.running && self.def.config.health_check_enabled
    }
}

/// One leadership term: returns `Ok` when the term ends, `Err` to resync after a store error.
async fn run_term(
    ctx: &Context,
    logs: &LogHub,
    sup: &SupervisorHandle,
    term: &CancellationToken,
) -> Result<()> {
    let (svc_kvs, rev) = ctx.store.range(keys::SERVICES).await?;
    let (rt_kvs, _) = ctx.store.range(keys::RUNTIME).await?;
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let now = Instant::now();
    for kv in &svc_kvs {
        if let Ok(def) = json::decode::<ServiceDef>(kv) {
            let interval = secs(def.config.health_check_interval, 10.0);
            tracked.insert(
                def.id.clone(),
                Tracked {
                    def,
                    running: false,
                    next_due: now + interval,
                    in_flight: false,
                },
            );
        }
    }
    for kv in &rt_kvs {
        if let (Some(id), Ok(rt)) = (
            kv.key.strip_prefix(keys::RUNTIME),
            json::decode::<Runtime>(kv),
        ) {
            if let Some(t) = tracked.get_mut(id) {
                t.running = rt.status == ServiceStatus::Running;
            }
        }
    }
    let mut svc_watch = ctx.store.watch(keys::SERVICES, rev + 1).await?;
    let mut rt_watch = ctx.store.watch(keys::RUNTIME, rev + 1).await?;
    let (done_tx, mut done_rx) = mpsc::channel::<String>(256);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.cancelled() => return Ok(()),
            batch = svc_watch.next() => {
                for ev in batch.ok_or_else(|| Error::StoreUnavailable("services watch ended".into()))?? {
                    match ev {
                        WatchEvent::Put(kv) => {
                            let Ok(def) = json::decode::<ServiceDef>(&kv) else { continue };
                            match tracked.get_mut(&def.id) {
                                Some(t) => t.def = def,
                                None => {
                                    let interval = secs(def.config.health_check_interval, 10.0);
                                    tracked.insert(def.id.clone(), Tracked { def, running: false, next_due: Instant::now() + interval, in_flight: false });
                                }
                            }
                        }
                        WatchEvent::Delete { key, .. } => {
                            if let Some(id) = key.strip_prefix(keys::SERVICES) {
                                tracked.remove(id);
                            }
                        }
                    }
                }
            }
            batch = rt_watch.next() => {
                for ev in batch.ok_or_else(|| Error::StoreUnavailable("runtime watch ended".into()))?? {
                    let WatchEvent::Put(kv) = ev else { continue };
                    let (Some(id), Ok(rt)) = (kv.key.strip_prefix(keys::RUNTIME), json::decode::<Runtime>(&kv)) else { continue };
                    if let Some(t) = tracked.get_mut(id) {
                        let running = rt.status == ServiceStatus::Running;
                        if running && !t.running {
                            // Just admitted: the start-up handshake counted as the first check.
                            t.next_due = Instant::now() + secs(t.def.config.health_check_interval, 10.0);
                        }
                        t.running = running;
                    }
                }
            }
            Some(id) = done_rx.recv() => {
                if let Some(t) = tracked.get_mut(&id) {
                    t.in_flight = false;
                    t.next_due = Instant::now() + secs(t.def.config.health_check_interval, 10.0);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for (id, t) in tracked.iter_mut() {
                    if !t.eligible() || t.in_flight || t.next_due > now {
                        continue;
                    }
                    t.in_flight = true;
                    let (def, store, logs, sup, done, permits) =
                        (t.def.clone(), ctx.store.clone(), logs.clone(), sup.clone(), done_tx.clone(), permits.clone());
                    let leader = (ctx.is_leader.clone(), ctx.term.fence());
                    let id = id.clone();
                    let term = term.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = term.cancelled() => {}
                            _ = probe_and_record(&store, &logs, &sup, &def, &permits, leader) => {}
                        }
                        let _ = done.send(id).await;
                    });
                }
            }
        }
    }
}

async fn probe_and_record(
    store: &StoreRef,
    logs: &LogHub,
    sup: &SupervisorHandle,
    def: &ServiceDef,
    permits: &Semaphore,
    (leading, fence): (tokio::sync::watch::Receiver<bool>, Option<Compare>),
) {
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    let timeout = secs(def.config.health_check_timeout, 5.0);
    let out = probe::handshake(&def.host, def.port, timeout).await;
    let r = CheckResult {
        at: Utc::now(),
        ok: out.ok,
        response_time_ms: out.response_time_ms,
        error: out.error,
    };
    // A term lost during the probe (a freeze, a pause) may not have reached this task: the
    // result is not written over the new leader's (checked here, and fenced in the store).
    if !*leading.borrow() {
        return;
    }
    match record(store, def, r, fence).await {
        Ok(Some((st, change))) => {
            log_change(logs, def, &st, change);
            if change.transitioned()
                && change.to == HealthStatus::Unhealthy
                && def.is_managed()
                && def.config.auto_restart
            {
                let reason = format!(
                    "{} consecutive failed health checks",
                    st.consecutive_failures
                );
                sup.health_failed(&def.id, reason).await;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(service = %def.name, error = %e, "cannot record health check"),
    }
}
