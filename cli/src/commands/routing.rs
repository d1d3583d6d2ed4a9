//! `route create|list|show|update|delete`.

use myagent_proto::v1 as pb;

use crate::args::{RouteCommand, RouteCreateArgs, RouteUpdateArgs};
use crate::client::Clients;
use crate::error::Result;
use crate::output::{json, text, Rendered};

pub async fn run(c: &mut Clients, cmd: &RouteCommand) -> Result<Rendered> {
    match cmd {
        RouteCommand::Create(a) => create(c, a).await,
        RouteCommand::List(a) => {
            let r = c
                .rules
                .list_rules(pb::ListRulesRequest { enabled: a.enabled })
                .await
                .map_err(|s| c.err(s))?
                .into_inner();
            Ok(Rendered::new(json::rules(&r), text::rules(&r)))
        }
        RouteCommand::Show(a) => {
            let r = c
                .rules
                .get_rule(pb::GetRuleRequest {
                    rule: a.rule.clone(),
                })
                .await
                .map_err(|s| c.err(s))?
                .into_inner();
            Ok(Rendered::new(json::rule(&r), text::rule(&r)))
        }
        RouteCommand::Update(a) => update(c, a).await,
        RouteCommand::Delete(a) => {
            let r = c
                .rules
                .delete_rule(pb::DeleteRuleRequest {
                    rule: a.rule.clone(),
                    wait_for_sync: 0.0,
                })
                .await
                .map_err(|s| c.err(s))?
                .into_inner();
            let fallback = "Routing rule deleted successfully";
            let message = if r.message.is_empty() {
                fallback
            } else {
                &r.message
            };
            Ok(Rendered::new(
                json::deleted(message, fallback),
                format!("{message} ({})\n", r.rule_id),
            ))
        }
    }
}

pub fn create_request(a: &RouteCreateArgs) -> pb::CreateRuleRequest {
    pb::CreateRuleRequest {
        name: a.name.clone(),
        priority: Some(a.priority),
        conditions: a.conditions.clone(),
        target_strategy: a.strategy.clone(),
        target_tags: clean(&a.target_tags),
        enabled: Some(!a.disabled),
        description: a.description.clone(),
        hash_key: a.hash_key.clone(),
        wait_for_sync: a.wait_for_sync,
    }
}

async fn create(c: &mut Clients, a: &RouteCreateArgs) -> Result<Rendered> {
    let r = c
        .rules
        .create_rule(create_request(a))
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(
        json::rule_written(&r, "Routing rule created successfully"),
        format!("Routing rule created successfully\n\n{}", text::rule(&r)),
    ))
}

pub fn update_request(a: &RouteUpdateArgs) -> pb::UpdateRuleRequest {
    let conditions = if a.clear_conditions {
        Some(pb::ConditionList { items: vec![] })
    } else if !a.conditions.is_empty() {
        Some(pb::ConditionList {
            items: a.conditions.clone(),
        })
    } else {
        None
    };
    let tags = clean(&a.target_tags);
    pb::UpdateRuleRequest {
        rule: a.rule.clone(),
        name: a.new_name.clone(),
        priority: a.priority,
        conditions,
        target_strategy: a.strategy.clone(),
        target_tags: (!tags.is_empty()).then_some(pb::StringList { items: tags }),
        enabled: if a.enable {
            Some(true)
        } else if a.disable {
            Some(false)
        } else {
            None
        },
        description: a.description.clone(),
        hash_key: a.hash_key.clone(),
        wait_for_sync: a.wait_for_sync,
    }
}

async fn update(c: &mut Clients, a: &RouteUpdateArgs) -> Result<Rendered> {
    let r = c
        .rules
        .update_rule(update_request(a))
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(
        json::rule_written(&r, "Routing rule updated successfully"),
        format!("Routing rule updated\n\n{}", text::rule(&r)),
    ))
}

fn clean(tags: &[String]) -> Vec<String> {
    tags.iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}
