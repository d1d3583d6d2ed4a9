//! Service registry: validation and CRUD of services/{id} and service-names/{name}.
//!
//! - `service-names/{name}` holds the raw service id (not JSON-quoted); it is created in the
//!   same transaction as `services/{id}` under `Compare::Absent`, so of two concurrent
//!   registrations of one name, on any number of replicas, exactly one wins.
//! - Lookups accept an id or a name: the id is tried first, then the name. Names can never be
//!   UUID-shaped (see `validate::validate_name`), so the two never collide.
//! - A new service is `stopped`: it has no `runtime/{id}` key until the supervisor writes one.

use chrono::Utc;
use tracing::{info, instrument};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{DesiredState, Runtime, ServiceConfig, ServiceDef, ServiceStatus};
use crate::store::{json, Compare, Revision, Txn, TxnOp};
use crate::supervisor::lifecycle;

pub mod validate;
pub mod view;

pub use validate::ConfigPatch;
pub use view::{ServiceStats, ServiceView};

/// Default and maximum page size of `list`.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Longest restart grace period: the same hour that bounds every other wait of the API.
pub const MAX_GRACE_SECONDS: u32 = 3600;
/// Attempts of an optimistic read-modify-write before giving up.
const CAS_ATTEMPTS: usize = 32;

/// A registration as received (unvalidated).
#[derive(Debug, Clone, Default)]
pub struct NewService {
    pub name: String,
    pub description: String,
    /// Empty: an external service.
    pub agent_factory_path: String,
    pub host: String,
    pub port: u32,
    pub tags: Vec<String>,
    pub config: ConfigPatch,
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub tag: Option<String>,
    pub status: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Clone)]
pub struct ServicePage {
    pub services: Vec<ServiceView>,
    /// Matches before paging.
    pub total: u64,
    pub has_next: bool,
    pub limit: u32,
    pub offset: u32,
}

/// Outcome of a write: the resulting view and the store revision that contains the change
/// (what `wait_for_sync` waits for).
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub value: T,
    pub revision: Revision,
}

/// Validates and creates a service (status `stopped`).
#[instrument(skip_all, fields(service = %req.name))]
pub async fn register(ctx: &Context, req: NewService) -> Result<Written<ServiceView>> {
    let def = build_def(req)?;
    // One registration at a time in this replica: the port check and the write are not one
    // transaction (the store cannot compare a whole prefix).
    let _one_at_a_time = REGISTERING.lock().await;
    check_port_free(ctx, &def, None).await?;
    let txn = Txn {
        compares: vec![Compare::Absent(keys::service_name(&def.name))],
        success: vec![
            TxnOp::put(keys::service(&def.id), json::encode(&def)?),
            TxnOp::put(
                keys::service_name(&def.name),
                keys::name_index_value(&def.id),
            ),
        ],
        failure: vec![],
    };
    let resp = ctx.store.txn(txn).await?;
    if !resp.succeeded {
        return Err(Error::ServiceAlreadyExists(def.name));
    }
    // Another replica may have registered the same host:port meanwhile: the earlier write
    // keeps it, a later one takes itself back.
    if let Some(owner) = earlier_port_owner(ctx, &def, resp.revision).await? {
        let undo = Txn {
            compares: vec![Compare::ModRevision(keys::service(&def.id), resp.revision)],
            success: vec![
                TxnOp::delete(keys::service(&def.id)),
                TxnOp::delete(keys::service_name(&def.name)),
            ],
            failure: vec![],
        };
        ctx.store.txn(undo).await?;
        return Err(Error::PortInUse {
            host: def.host.clone(),
            port: def.port,
            owner: Some(owner),
        });
    }
    info!(service_id = %def.id, endpoint = %def.endpoint(), "service registered");
    let value = view::view(def, None, None, Utc::now());
    Ok(Written {
        value,
        revision: resp.revision,
    })
}

fn build_def(req: NewService) -> Result<ServiceDef> {
    validate::validate_name(&req.name)?;
    validate::validate_description(&req.description)?;
    let host = validate::validate_host(&req.host)?;
    let port = validate::validate_port(req.port)?;
    let tags = validate::validate_tags(&req.tags, "tags")?;
    let mut config = ServiceConfig::default();
    req.config.apply(&mut config, "config.")?;
    let agent_factory_path = match req.agent_factory_path.trim() {
        "" => None,
        p => Some(validate::resolve_factory_path(
            p,
            config.working_dir.as_deref(),
        )?),
    };
    let now = Utc::now();
    Ok(ServiceDef {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        description: req.description,
        agent_factory_path,
        host,
        port,
        tags,
        config,
        desired: DesiredState::Stopped,
        restart: None,
        deleting: false,
        created_at: now,
        updated_at: now,
    })
}

/// `PORT_IN_USE` when another registered service owns the same host:port (every spelling of
/// the local machine counts as one host). Whether something unregistered listens there is
/// checked when the service starts.
async fn check_port_free(ctx: &Context, def: &ServiceDef, except_id: Option<&str>) -> Result<()> {
    for other in all_defs(ctx).await? {
        if Some(other.id.as_str()) != except_id && same_host_port(&other, def) {
            return Err(Error::PortInUse {
                host: def.host.clone(),
                port: def.port,
                owner: Some(other.name),
            });
        }
    }
    Ok(())
}

/// Registrations in this replica, one at a time.
static REGISTERING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The name of a service on `def`'s host:port written before `def` (at `revision`), if any.
async fn earlier_port_owner(
    ctx: &Context,
    def: &ServiceDef,
    revision: Revision,
) -> Result<Option<String>> {
    let (kvs, _) = ctx.store.range(keys::SERVICES).await?;
    Ok(kvs
        .iter()
        .filter(|kv| kv.create_revision < revision)
        .filter_map(|kv| json::decode::<ServiceDef>(kv).ok())
        .find(|o| o.id != def.id && same_host_port(o, def))
        .map(|o| o.name))
}

/// Every spelling of the local machine counts as one host.
fn same_host_port(a: &ServiceDef, b: &ServiceDef) -> bool {
    a.port == b.port && validate::normalize_host(&a.host) == validate::normalize_host(&b.host)
}

async fn all_defs(ctx: &Context) -> Result<Vec<ServiceDef>> {
    let (kvs, _) = ctx.store.range(keys::SERVICES).await?;
    let mut defs = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match json::decode::<ServiceDef>(&kv) {
            Ok(d) => defs.push(d),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping undecodable service"),
        }
    }
    Ok(defs)
}

/// Finds a service by id, then by name. Returns the definition and its mod revision.
pub async fn resolve(ctx: &Context, key: &str) -> Result<(ServiceDef, Revision)> {
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::invalid("service", "service id or name is required"));
    }
    // Neither ids nor names contain '/', so such a key cannot name anything (and must not
    // reach into another key space).
    if key.contains('/') {
        return Err(Error::ServiceNotFound(key.to_string()));
    }
    if let Some(found) = json::get::<ServiceDef>(&ctx.store, &keys::service(key)).await? {
        return Ok(found);
    }
    if let Some(kv) = ctx.store.get(&keys::service_name(key)).await? {
        let id = keys::name_index_id(&kv.value);
        if let Some(found) = json::get::<ServiceDef>(&ctx.store, &keys::service(&id)).await? {
            return Ok(found);
        }
    }
    Err(Error::ServiceNotFound(key.to_string()))
}

pub async fn get(ctx: &Context, key: &str) -> Result<ServiceView> {
    let (def, _) = resolve(ctx, key).await?;
    one(ctx, def).await
}

async fn one(ctx: &Context, def: ServiceDef) -> Result<ServiceView> {
    view::assemble(ctx, vec![def])
        .await?
        .pop()
        .ok_or_else(|| Error::internal("assemble returned no view"))
}

pub async fn list(ctx: &Context, q: ListQuery) -> Result<ServicePage> {
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        l if l > MAX_LIMIT => {
            return Err(Error::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ))
        }
        l => l,
    };
    let status = match q.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(ServiceStatus::parse(s).ok_or_else(|| {
            Error::invalid(
                "status",
                format!("unknown status '{s}' (stopped, starting, running, stopping, error)"),
            )
        })?),
    };
    let tag = q.tag.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let mut defs: Vec<ServiceDef> = all_defs(ctx)
        .await?
        .into_iter()
        .filter(|d| tag.is_none_or(|t| d.tags.iter().any(|x| x == t)))
        .collect();
    defs.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut views = view::assemble(ctx, defs).await?;
    if let Some(s) = status {
        views.retain(|v| v.status() == s);
    }
    let total = views.len() as u64;
    let offset = q.offset as usize;
    let services: Vec<ServiceView> = views
        .into_iter()
        .skip(offset)
        .take(limit as usize)
        .collect();
    let has_next = (offset as u64).saturating_add(services.len() as u64) < total;
    Ok(ServicePage {
        services,
        total,
        has_next,
        limit,
        offset: q.offset,
    })
}

/// Merges `patch` into the service's config (optimistic compare-and-swap, retried on conflict)
/// and validates the merged result.
#[instrument(skip_all, fields(service = %key))]
pub async fn update_config(
    ctx: &Context,
    key: &str,
    patch: ConfigPatch,
) -> Result<Written<ServiceView>> {
    let (mut def, mut rev) = resolve(ctx, key).await?;
    for _ in 0..CAS_ATTEMPTS {
        let mut config = def.config.clone();
        patch.apply(&mut config, "")?;
        def.config = config;
        def.updated_at = Utc::now();
        let id = def.id.clone();
        let txn = Txn {
            compares: vec![Compare::ModRevision(keys::service(&id), rev)],
            success: vec![TxnOp::put(keys::service(&id), json::encode(&def)?)],
            failure: vec![],
        };
        let resp = ctx.store.txn(txn).await?;
        if resp.succeeded {
            info!(service_id = %id, "service config updated");
            let value = one(ctx, def).await?;
            return Ok(Written {
                value,
                revision: resp.revision,
            });
        }
        // Someone else wrote in between: re-read and merge again on top of their change.
        (def, rev) = json::get::<ServiceDef>(&ctx.store, &keys::service(&id))
            .await?
            .ok_or_else(|| Error::ServiceNotFound(key.to_string()))?;
    }
    Err(Error::internal(
        "too many concurrent updates of one service",
    ))
}

/// Stops the service if it runs, then deletes it and everything keyed by its id.
#[instrument(skip_all, fields(service = %key))]
pub async fn delete(ctx: &Context, key: &str) -> Result<Written<ServiceDef>> {
    let (def, _) = resolve(ctx, key).await?;
    let runtime = json::get::<Runtime>(&ctx.store, &keys::runtime(&def.id)).await?;
    let active = runtime.as_ref().is_some_and(|(r, _)| {
        matches!(
            r.status,
            ServiceStatus::Running | ServiceStatus::Starting | ServiceStatus::Stopping
        )
    });
    if active {
        lifecycle::stop_for_delete(ctx, &def).await?;
    }
    let txn = Txn {
        compares: vec![],
        success: vec![
            TxnOp::delete(keys::service(&def.id)),
            TxnOp::delete(keys::service_name(&def.name)),
            TxnOp::delete(keys::runtime(&def.id)),
            TxnOp::delete(keys::health(&def.id)),
        ],
        failure: vec![],
    };
    let resp = ctx.store.txn(txn).await?;
    info!(service_id = %def.id, "service deleted");
    Ok(Written {
        value: def,
        revision: resp.revision,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOp {
    Start,
    Stop,
    Restart,
}

/// Result of start/stop/restart.
#[derive(Debug, Clone)]
pub struct LifecycleOutcome {
    pub service_id: String,
    pub status: ServiceStatus,
    pub message: String,
}

/// Start, stop or restart through the supervisor's entry points.
#[instrument(skip_all, fields(service = %key, op = ?op))]
pub async fn lifecycle(
    ctx: &Context,
    key: &str,
    op: LifecycleOp,
    grace_seconds: Option<u32>,
    message: String,
) -> Result<Written<LifecycleOutcome>> {
    // Checked before anything is written: an unbounded grace would hold the restart (and every
    // lifecycle call queued behind it) for up to 136 years.
    if let Some(g) = grace_seconds.filter(|g| *g > MAX_GRACE_SECONDS) {
        return Err(Error::invalid(
            "grace_seconds",
            format!("grace_seconds must be between 0 and {MAX_GRACE_SECONDS} (got {g})"),
        ));
    }
    let (def, _) = resolve(ctx, key).await?;
    let (runtime, verb) = match op {
        LifecycleOp::Start => (lifecycle::start(ctx, &def).await?, "started"),
        LifecycleOp::Stop => (lifecycle::stop(ctx, &def).await?, "stopped"),
        LifecycleOp::Restart => (
            lifecycle::restart(ctx, &def, grace_seconds, message).await?,
            "restarted",
        ),
    };
    let revision = ctx.store.revision().await?;
    Ok(Written {
        value: LifecycleOutcome {
            service_id: def.id,
            status: runtime.status,
            message: format!("Service {verb} successfully"),
        },
        revision,
    })
}
