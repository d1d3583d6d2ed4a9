//! gRPC `HealthChecks` service (seed §1.5): current health, a manual check now, history.

use chrono::{DateTime, Utc};
use myagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::health;
use crate::keys;
use crate::logs::LogHub;
use crate::model::{HealthState, ServiceDef};
use crate::store::json;

pub const DEFAULT_HISTORY: usize = 50;
pub const MAX_HISTORY: usize = 1000;

pub struct HealthService {
    ctx: Context,
    logs: LogHub,
}

impl HealthService {
    pub fn new(ctx: Context, logs: LogHub) -> Self {
        HealthService { ctx, logs }
    }

    pub fn into_server(self) -> pb::health_checks_server::HealthChecksServer<Self> {
        pb::health_checks_server::HealthChecksServer::new(self)
    }
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A service named by id or by name.
pub(crate) async fn find_service(ctx: &Context, service: &str) -> Result<ServiceDef> {
    let service = service.trim();
    if service.is_empty() {
        return Err(Error::invalid("service", "service id or name is required"));
    }
    if let Some((def, _)) = json::get::<ServiceDef>(&ctx.store, &keys::service(service)).await? {
        return Ok(def);
    }
    if let Some(kv) = ctx.store.get(&keys::service_name(service)).await? {
        let id = keys::name_index_id(&kv.value);
        if let Some((def, _)) = json::get::<ServiceDef>(&ctx.store, &keys::service(&id)).await? {
            return Ok(def);
        }
    }
    Err(Error::ServiceNotFound(service.to_string()))
}

fn to_pb(id: &str, st: &HealthState) -> pb::HealthStatus {
    pb::HealthStatus {
        service_id: id.to_string(),
        status: st.status.as_str().to_string(),
        last_check: st.last_check.map(timestamp),
        response_time_ms: st.response_time_ms,
        consecutive_failures: st.consecutive_failures,
        message: st.message.clone(),
        flapping: st.flapping,
    }
}

async fn load(ctx: &Context, id: &str) -> Result<HealthState> {
    Ok(json::get::<HealthState>(&ctx.store, &keys::health(id))
        .await?
        .map(|(s, _)| s)
        .unwrap_or_default())
}

#[tonic::async_trait]
impl pb::health_checks_server::HealthChecks for HealthService {
    async fn get_health(
        &self,
        req: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::HealthStatus>, Status> {
        let def = find_service(&self.ctx, &req.into_inner().service).await?;
        let st = load(&self.ctx, &def.id).await?;
        Ok(Response::new(to_pb(&def.id, &st)))
    }

    async fn check_health(
        &self,
        req: Request<pb::CheckHealthRequest>,
    ) -> Result<Response<pb::HealthStatus>, Status> {
        let def = find_service(&self.ctx, &req.into_inner().service).await?;
        // Probed from this replica; the result is recorded like any other check.
        let st = health::check_now(&self.ctx.store, Some(&self.logs), &def).await?;
        Ok(Response::new(to_pb(&def.id, &st)))
    }

    async fn get_health_history(
        &self,
        req: Request<pb::GetHealthHistoryRequest>,
    ) -> Result<Response<pb::HealthHistory>, Status> {
        let req = req.into_inner();
        let limit = match req.limit as usize {
            0 => DEFAULT_HISTORY,
            n if n > MAX_HISTORY => {
                return Err(
                    Error::invalid("limit", format!("limit must be 1-{MAX_HISTORY}")).into(),
                )
            }
            n => n,
        };
        let def = find_service(&self.ctx, &req.service).await?;
        let st = load(&self.ctx, &def.id).await?;
        let total = st.history.len() as u64;
        let history = st
            .history
            .iter()
            .rev()
            .take(limit)
            .map(|h| pb::HealthRecord {
                timestamp: Some(timestamp(h.timestamp)),
                status: h.status.as_str().to_string(),
                response_time_ms: h.response_time_ms,
                error: h.error.clone(),
                transition: h.transition,
            })
            .collect();
        Ok(Response::new(pb::HealthHistory {
            service_id: def.id,
            history,
            total,
        }))
    }
}
