//! `--output json`: each command prints the REST API's answer to the same request (seed §1,
//! DESIGN §7/§9), built by the gateway's own conversions, so the CLI and REST cannot drift.

use myagent_gateway::model::{connections, monitoring, routing, services};
use myagent_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

fn value(v: impl Serialize) -> Value {
    // The models are plain data: serialising them into a `Value` cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn service(s: &pb::Service) -> Value {
    value(services::ServiceDetail::from(s.clone()))
}

pub fn config_updated(s: &pb::Service) -> Value {
    value(services::UpdateConfigResponse::from(s.clone()))
}

pub fn register(r: &pb::RegisterServiceResponse) -> Value {
    value(services::RegisterServiceResponse::from(r.clone()))
}

pub fn list(r: &pb::ListServicesResponse) -> Value {
    value(services::ServiceList::from(r.clone()))
}

pub fn lifecycle(r: &pb::LifecycleResponse) -> Value {
    value(services::LifecycleResponse::from(r.clone()))
}

/// A `DELETE` answer: the control plane's message, or `fallback`.
pub fn deleted(message: &str, fallback: &str) -> Value {
    value(services::DeleteResponse::new(message.to_string(), fallback))
}

pub fn overview(o: &pb::Overview) -> Value {
    value(monitoring::Overview::from(*o))
}

pub fn logs(r: &pb::GetLogsResponse) -> Value {
    value(monitoring::LogsView::from(r.clone()))
}

/// One followed line (NDJSON): a `GET /logs/search` result, i.e. the entry and its service.
pub fn followed_entry(e: &pb::LogEntry) -> Value {
    value(monitoring::LogMatch::from(e.clone()))
}

pub fn health_status(h: &pb::HealthStatus) -> Value {
    value(monitoring::HealthView::from(h.clone()))
}

pub fn health_history(h: &pb::HealthHistory) -> Value {
    value(monitoring::HealthHistoryView::from(h.clone()))
}

pub fn connections(r: &pb::ListConnectionsResponse) -> Value {
    value(connections::ConnectionList::from(r.clone()))
}

pub fn disconnect(r: &pb::DisconnectResponse) -> Value {
    value(connections::DisconnectResponse::from(r.clone()))
}

pub fn notification(r: &pb::SendNotificationResponse) -> Value {
    value(connections::NotificationResponse::from(*r))
}

pub fn rule(r: &pb::RoutingRule) -> Value {
    value(routing::RuleView::from(r.clone()))
}

pub fn rule_written(r: &pb::RoutingRule, message: &str) -> Value {
    value(routing::RuleWriteResponse::new(r.clone(), message))
}

pub fn rules(r: &pb::ListRulesResponse) -> Value {
    value(routing::RuleList::from(r.clone()))
}
