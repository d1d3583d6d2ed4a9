//! `myagent.v1.RoutingRules`: thin handlers over `crate::routing`.

use myagent_proto::v1 as pb;
use pb::routing_rules_server::RoutingRules;
use tonic::{Request, Response, Status};

use super::convert::{self, condition_from_pb, rule_to_pb};
use super::sync;
use crate::context::Context;
use crate::routing::{self, NewRule, RulePatch};

pub struct RulesApi {
    ctx: Context,
}

impl RulesApi {
    pub fn new(ctx: Context) -> Self {
        RulesApi { ctx }
    }
}

impl From<pb::CreateRuleRequest> for NewRule {
    fn from(r: pb::CreateRuleRequest) -> Self {
        NewRule {
            name: r.name,
            priority: r.priority,
            conditions: r.conditions.into_iter().map(condition_from_pb).collect(),
            target_strategy: r.target_strategy,
            target_tags: r.target_tags,
            enabled: r.enabled,
            description: r.description,
            hash_key: r.hash_key,
        }
    }
}

impl From<pb::UpdateRuleRequest> for RulePatch {
    fn from(r: pb::UpdateRuleRequest) -> Self {
        RulePatch {
            name: r.name,
            priority: r.priority,
            conditions: r
                .conditions
                .map(|l| l.items.into_iter().map(condition_from_pb).collect()),
            target_strategy: r.target_strategy,
            target_tags: r.target_tags.map(|l| l.items),
            enabled: r.enabled,
            description: r.description,
            hash_key: r.hash_key,
        }
    }
}

#[tonic::async_trait]
impl RoutingRules for RulesApi {
    async fn create_rule(
        &self,
        request: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::RoutingRule>, Status> {
        let req = request.into_inner();
        let wait = convert::wait_for_sync(req.wait_for_sync)?;
        let out = routing::create(&self.ctx, req.into()).await?;
        sync(&self.ctx, out.revision, wait).await?;
        Ok(Response::new(rule_to_pb(&out.value)))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let rules = routing::list(&self.ctx, request.into_inner().enabled).await?;
        Ok(Response::new(pb::ListRulesResponse {
            total: rules.len() as u64,
            rules: rules.iter().map(rule_to_pb).collect(),
        }))
    }

    async fn get_rule(
        &self,
        request: Request<pb::GetRuleRequest>,
    ) -> Result<Response<pb::RoutingRule>, Status> {
        let rule = routing::get(&self.ctx, &request.into_inner().rule).await?;
        Ok(Response::new(rule_to_pb(&rule)))
    }

    async fn update_rule(
        &self,
        request: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::RoutingRule>, Status> {
        let req = request.into_inner();
        let wait = convert::wait_for_sync(req.wait_for_sync)?;
        let key = req.rule.clone();
        let out = routing::update(&self.ctx, &key, req.into()).await?;
        sync(&self.ctx, out.revision, wait).await?;
        Ok(Response::new(rule_to_pb(&out.value)))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let req = request.into_inner();
        let wait = convert::wait_for_sync(req.wait_for_sync)?;
        let out = routing::delete(&self.ctx, &req.rule).await?;
        sync(&self.ctx, out.revision, wait).await?;
        Ok(Response::new(pb::DeleteRuleResponse {
            rule_id: out.value.id,
            message: "Routing rule deleted successfully".to_string(),
        }))
    }
}
