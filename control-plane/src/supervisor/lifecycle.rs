//! Lifecycle requests from the API (start/stop/restart/delete). They record the operator's
//! intent in the store (`services/{id}.desired`, `.restart`) and wait for the leader's
//! supervisor to converge `runtime/{id}`, so they work whichever replica received the call.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use super::actor::runtime_error;
use super::port;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::health::secs;
use crate::keys;
use crate::model::{DesiredState, RestartRequest, Runtime, ServiceDef, ServiceStatus};
use crate::store::{json, Compare, Txn, TxnOp};

/// Slack on top of the service's own timeouts for the leader to notice and report.
const MARGIN: Duration = Duration::from_secs(10);

/// Start (managed: launch; external: admit to routing). Returns the converged runtime, or
/// `SERVICE_START_FAILED` / `PORT_IN_USE`.
pub async fn start(ctx: &Context, service: &ServiceDef) -> Result<Runtime> {
    let others: Vec<ServiceDef> = json::list(&ctx.store, keys::SERVICES).await?;
    // Holders: services meant to run whose process is up or on its way (a failed one holds nothing).
    let (rts, _) = ctx.store.range(keys::RUNTIME).await?;
    let active: std::collections::HashSet<&str> = rts
        .iter()
        .filter(|kv| {
            json::decode::<Runtime>(kv).is_ok_and(|r| {
                matches!(
                    r.status,
                    ServiceStatus::Starting | ServiceStatus::Running | ServiceStatus::Stopping
                )
            })
        })
        .filter_map(|kv| kv.key.strip_prefix(keys::RUNTIME))
        .collect();
    let holders: Vec<&ServiceDef> = others
        .iter()
        .filter(|o| port::wants_port(o) && active.contains(o.id.as_str()))
        .collect();
    if let Some(owner) = port::owner(service, holders) {
        return Err(Error::PortInUse {
            host: service.host.clone(),
            port: service.port,
            owner: Some(owner.name.clone()),
        });
    }
    let req_id = uuid::Uuid::new_v4().to_string();
    let mut before = None;
    let outcome = update_intent(ctx, &service.id, |def, rt| {
        if def.desired == DesiredState::Running
            && rt.is_some_and(|r| r.status == ServiceStatus::Running)
        {
            return None; // already running: nothing to do
        }
        before = rt.and_then(|r| r.handled_restart.clone());
        def.desired = DesiredState::Running;
        def.deleting = false;
        def.restart = Some(RestartRequest {
            id: req_id.clone(),
            requested_at: Utc::now(),
            grace_seconds: 0,
            message: String::new(),
            start_only: true,
        });
        Some(())
    })
    .await?;
    let (def, rev) = match outcome {
        Intent::Unchanged(rt) => return Ok(rt),
        Intent::Written { def, rev } => (def, rev),
    };
    let timeout = secs(def.config.startup_timeout, 30.0) + MARGIN;
    let rt = wait_handled(ctx, &def, rev, &req_id, before.as_deref(), timeout).await?;
    match rt.status {
        ServiceStatus::Running => Ok(rt),
        ServiceStatus::Error => Err(runtime_error(&def, &rt)),
        _ => Err(Error::ServiceStartFailed {
            service_id: def.id.clone(),
            message: format!("service was {} before it became ready", rt.status.as_str()),
            stderr: rt.last_stderr.clone(),
        }),
    }
}

/// Stop (managed: SIGTERM then SIGKILL of the process group; external: withdraw from routing).
/// Returns the runtime once stopped; if the leader has not confirmed within the service's drain
/// and grace periods, returns the runtime as it is (the intent stays recorded).
pub async fn stop(ctx: &Context, service: &ServiceDef) -> Result<Runtime> {
    stop_as(ctx, service, false).await
}

/// The stop that precedes a delete: the same, and the proxies say `service_removed`.
pub async fn stop_for_delete(ctx: &Context, service: &ServiceDef) -> Result<Runtime> {
    stop_as(ctx, service, true).await
}

async fn stop_as(ctx: &Context, service: &ServiceDef, deleting: bool) -> Result<Runtime> {
    let outcome = update_intent(ctx, &service.id, |def, rt| {
        let stopped = rt.is_none_or(|r| r.status == ServiceStatus::Stopped);
        if def.desired == DesiredState::Stopped && stopped && (def.deleting || !deleting) {
            return None;
        }
        def.desired = DesiredState::Stopped;
        def.deleting |= deleting;
        Some(())
    })
    .await?;
    let (def, rev) = match outcome {
        Intent::Unchanged(rt) => return Ok(rt),
        Intent::Written { def, rev } => (def, rev),
    };
    let timeout =
        secs(def.config.drain_timeout, 10.0) + secs(def.config.stop_grace_period, 10.0) + MARGIN;
    match wait_runtime(ctx, &def.id, rev, timeout, |rt| {
        rt.status == ServiceStatus::Stopped
    })
    .await?
    {
        Some(rt) => Ok(rt),
        None => current_runtime(ctx, &def.id).await,
    }
}

/// Restart, optionally after notifying connected clients and waiting `grace_seconds`.
pub async fn restart(
    ctx: &Context,
    service: &ServiceDef,
    grace_seconds: Option<u32>,
    message: String,
) -> Result<Runtime> {
    let req_id = uuid::Uuid::new_v4().to_string();
    let grace = grace_seconds.unwrap_or(0);
    let mut before = None;
    let outcome = update_intent(ctx, &service.id, |def, rt| {
        before = rt.and_then(|r| r.handled_restart.clone());
        def.desired = DesiredState::Running;
        def.deleting = false;
        def.restart = Some(RestartRequest {
            id: req_id.clone(),
            requested_at: Utc::now(),
            grace_seconds: grace,
            message: message.clone(),
            start_only: false,
        });
        Some(())
    })
    .await?;
    let Intent::Written { def, rev } = outcome else {
        return current_runtime(ctx, &service.id).await;
    };
    let c = &def.config;
    let timeout = Duration::from_secs(u64::from(grace))
        + secs(c.drain_timeout, 10.0)
        + secs(c.stop_grace_period, 10.0)
        + secs(c.startup_timeout, 30.0)
        + MARGIN;
    let rt = wait_handled(ctx, &def, rev, &req_id, before.as_deref(), timeout).await?;
    match rt.status {
        ServiceStatus::Error => Err(runtime_error(&def, &rt)),
        _ => Ok(rt),
    }
}

enum Intent {
    /// Nothing to change; the current runtime.
    Unchanged(Runtime),
    /// Written at revision `rev`.
    Written { def: ServiceDef, rev: i64 },
}

/// Compare-and-swap on `services/{id}`: `f` edits the definition (or returns `None` when the
/// current state already satisfies the request).
async fn update_intent(
    ctx: &Context,
    id: &str,
    mut f: impl FnMut(&mut ServiceDef, Option<&Runtime>) -> Option<()>,
) -> Result<Intent> {
    let key = keys::service(id);
    for _ in 0..20 {
        let Some((mut def, rev)) = json::get::<ServiceDef>(&ctx.store, &key).await? else {
            return Err(Error::ServiceNotFound(id.to_string()));
        };
        let rt = json::get::<Runtime>(&ctx.store, &keys::runtime(id))
            .await?
            .map(|(r, _)| r);
        if f(&mut def, rt.as_ref()).is_none() {
            return Ok(Intent::Unchanged(
                rt.unwrap_or_else(|| Runtime::stopped(Utc::now())),
            ));
        }
        def.updated_at = Utc::now();
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), rev)],
            success: vec![TxnOp::put(key.clone(), json::encode(&def)?)],
            failure: vec![],
        };
        let resp = ctx.store.txn(txn).await?;
        if resp.succeeded {
            return Ok(Intent::Written {
                def,
                rev: resp.revision,
            });
        }
    }
    Err(Error::internal(format!(
        "services/{id}: too much write contention"
    )))
}

async fn current_runtime(ctx: &Context, id: &str) -> Result<Runtime> {
    Ok(json::get::<Runtime>(&ctx.store, &keys::runtime(id))
        .await?
        .map(|(r, _)| r)
        .unwrap_or_else(|| Runtime::stopped(Utc::now())))
}

/// Waits until the supervisor records request `req_id` as handled, or a request that replaced
/// it (`services/{id}` holds one request: a concurrent start or restart overwrites ours, and the
/// supervisor then handles that one instead). `before` is the last request handled when ours
/// was written; one handled after it that left the service running, or failed, settles ours.
async fn wait_handled(
    ctx: &Context,
    def: &ServiceDef,
    rev: i64,
    req_id: &str,
    before: Option<&str>,
    timeout: Duration,
) -> Result<Runtime> {
    let found = wait_runtime(ctx, &def.id, rev, timeout, |rt| {
        let handled = rt.handled_restart.as_deref();
        handled == Some(req_id)
            || (handled.is_some()
                && handled != before
                && matches!(rt.status, ServiceStatus::Running | ServiceStatus::Error))
    })
    .await?;
    found.ok_or_else(|| Error::ServiceStartFailed {
        service_id: def.id.clone(),
        message: format!(
            "no control-plane leader confirmed the request within {:.0}s (is a leader elected?)",
            timeout.as_secs_f64()
        ),
        stderr: Vec::new(),
    })
}

/// Watches `runtime/{id}` from `rev` until `done` holds (`Some`) or `timeout` (`None`).
async fn wait_runtime(
    ctx: &Context,
    id: &str,
    rev: i64,
    timeout: Duration,
    done: impl Fn(&Runtime) -> bool,
) -> Result<Option<Runtime>> {
    let key = keys::runtime(id);
    let mut watch = ctx.store.watch(&key, rev).await?;
    // The state may already hold (written before the watch started).
    if let Some((rt, _)) = json::get::<Runtime>(&ctx.store, &key).await? {
        if done(&rt) {
            return Ok(Some(rt));
        }
    }
    let wait = async {
        while let Some(batch) = watch.next().await {
            for ev in batch? {
                if let crate::store::WatchEvent::Put(kv) = ev {
                    if kv.key != key {
                        continue;
                    }
                    let rt: Runtime = json::decode(&kv)?;
                    if done(&rt) {
                        return Ok(Some(rt));
                    }
                }
            }
        }
        Err(Error::StoreUnavailable("runtime watch ended".into()))
    };
    tokio::select! {
        r = wait => r,
        _ = tokio::time::sleep(timeout) => Ok(None),
        _ = ctx.shutdown.cancelled() => Err(Error::StoreUnavailable("control plane shutting down".into())),
    }
}
