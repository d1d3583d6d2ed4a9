//! `myagent.v1.ServiceRegistry`: thin handlers over `crate::registry`.

use myagent_proto::v1 as pb;
use pb::service_registry_server::ServiceRegistry;
use tonic::{Request, Response, Status};

use super::convert::{self, service_to_pb};
use super::sync;
use crate::context::Context;
use crate::registry::{self, LifecycleOp, ListQuery, NewService};

pub struct RegistryApi {
    ctx: Context,
}

impl RegistryApi {
    pub fn new(ctx: Context) -> Self {
        RegistryApi { ctx }
    }

    async fn lifecycle(
        &self,
        service: &str,
        op: LifecycleOp,
        grace: Option<u32>,
        message: String,
        wait: f64,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        let wait = convert::wait_for_sync(wait)?;
        let out = registry::lifecycle(&self.ctx, service, op, grace, message).await?;
        sync(&self.ctx, out.revision, wait).await?;
        Ok(Response::new(pb::LifecycleResponse {
            service_id: out.value.service_id,
            status: out.value.status.as_str().to_string(),
            message: out.value.message,
        }))
    }
}

impl From<pb::RegisterServiceRequest> for NewService {
    fn from(r: pb::RegisterServiceRequest) -> Self {
        NewService {
            name: r.name,
            description: r.description,
            agent_factory_path: r.agent_factory_path,
            host: r.host,
            port: r.port,
            tags: r.tags,
            config: r.config.map(Into::into).unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl ServiceRegistry for RegistryApi {
    async fn register_service(
        &self,
        request: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::RegisterServiceResponse>, Status> {
        let req = request.into_inner();
        let wait = convert::wait_for_sync(req.wait_for_sync)?;
        let mut out = registry::register(&self.ctx, req.into()).await?;
        if let Some(status) = sync(&self.ctx, out.revision, wait).await? {
            out.value.sync = Some(status);
        }
        Ok(Response::new(pb::RegisterServiceResponse {
            service_id: out.value.def.id.clone(),
            message: "Service registered successfully".to_string(),
            endpoint: out.value.def.endpoint(),
            service: Some(service_to_pb(&out.value)),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let r = request.into_inner();
        let query = ListQuery {
            tag: Some(r.tag),
            status: Some(r.status),
            limit: r.limit,
            offset: r.offset,
        };
        let page = registry::list(&self.ctx, query).await?;
        Ok(Response::new(pb::ListServicesResponse {
            services: page.services.iter().map(service_to_pb).collect(),
            total: page.total,
            has_next: page.has_next,
            limit: page.limit,
            offset: page.offset,
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let view = registry::get(&self.ctx, &request.into_inner().service).await?;
        Ok(Response::new(service_to_pb(&view)))
    }

    async fn update_service_config(
        &self,
        request: Request<pb::UpdateServiceConfigRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = request.into_inner();
        let wait = convert::wait_for_sync(r.wait_for_sync)?;
        let patch = r.config.map(Into::into).unwrap_or_default();
        let mut out = registry::update_config(&self.ctx, &r.service, patch).await?;
        if let Some(status) = sync(&self.ctx, out.revision, wait).await? {
            out.value.sync = Some(status);
        }
        Ok(Response::new(service_to_pb(&out.value)))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let r = request.into_inner();
        let wait = convert::wait_for_sync(r.wait_for_sync)?;
        let out = registry::delete(&self.ctx, &r.service).await?;
        sync(&self.ctx, out.revision, wait).await?;
        Ok(Response::new(pb::DeleteServiceResponse {
            service_id: out.value.id,
            message: "Service deleted successfully".to_string(),
        }))
    }

    async fn start_service(
        &self,
        request: Request<pb::StartServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        let r = request.into_inner();
        self.lifecycle(
            &r.service,
            LifecycleOp::Start,
            None,
            String::new(),
            r.wait_for_sync,
        )
        .await
    }

    async fn stop_service(
        &self,
        request: Request<pb::StopServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        let r = request.into_inner();
        self.lifecycle(
            &r.service,
            LifecycleOp::Stop,
            None,
            String::new(),
            r.wait_for_sync,
        )
        .await
    }

    async fn restart_service(
        &self,
        request: Request<pb::RestartServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        let r = request.into_inner();
        self.lifecycle(
            &r.service,
            LifecycleOp::Restart,
            r.grace_seconds,
            r.message,
            r.wait_for_sync,
        )
        .await
    }
}
