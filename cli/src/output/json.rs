//! Proto messages rendered as the REST API's JSON shapes (seed §1, DESIGN §7/§9): seed field
//! names, RFC 3339 `Z` timestamps, `null` for unset times.

use myagent_proto::v1 as pb;
use serde_json::{json, Map, Value};

use crate::timeparse::rfc3339;

pub fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(rfc3339)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// A float rounded to two decimals, so `15.200000001` prints as `15.2`.
fn f(v: f64) -> Value {
    let r = (v * 100.0).round() / 100.0;
    serde_json::Number::from_f64(r)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

pub fn service(s: &pb::Service) -> Value {
    json!({
        "service_id": s.service_id,
        "name": s.name,
        "description": s.description,
        "agent_factory_path": if s.agent_factory_path.is_empty() { Value::Null } else { Value::String(s.agent_factory_path.clone()) },
        "host": s.host,
        "port": s.port,
        "endpoint": s.endpoint,
        "status": s.status,
        "tags": s.tags,
        "created_at": ts(&s.created_at),
        "updated_at": ts(&s.updated_at),
        "started_at": ts(&s.started_at),
        "config": s.config.as_ref().map(config).unwrap_or(Value::Null),
        "stats": s.stats.as_ref().map(stats).unwrap_or(Value::Null),
        "health": s.health.as_ref().map(health_summary).unwrap_or(Value::Null),
        "runtime": s.runtime.as_ref().map(runtime).unwrap_or(Value::Null),
        "sync": s.sync.as_ref().map(sync).unwrap_or(Value::Null),
    })
}

pub fn config(c: &pb::ServiceConfig) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("max_sessions", c.max_sessions.map(Value::from));
    put("session_timeout", c.session_timeout.map(Value::from));
    put("auto_restart", c.auto_restart.map(Value::from));
    put(
        "health_check_enabled",
        c.health_check_enabled.map(Value::from),
    );
    put("env", c.env.as_ref().map(|e| json!(e.entries)));
    put("args", c.args.as_ref().map(|a| json!(a.items)));
    put("working_dir", c.working_dir.clone().map(Value::from));
    put("proxy_metadata", c.proxy_metadata.map(Value::from));
    put("weight", c.weight.map(Value::from));
    put("health_check_interval", c.health_check_interval.map(f));
    put("health_check_timeout", c.health_check_timeout.map(f));
    put("healthy_threshold", c.healthy_threshold.map(Value::from));
    put(
        "unhealthy_threshold",
        c.unhealthy_threshold.map(Value::from),
    );
    put("startup_timeout", c.startup_timeout.map(f));
    put("stop_grace_period", c.stop_grace_period.map(f));
    put("max_restarts", c.max_restarts.map(Value::from));
    put("restart_window", c.restart_window.map(f));
    put("drain_timeout", c.drain_timeout.map(f));
    put("flap_stable_checks", c.flap_stable_checks.map(Value::from));
    Value::Object(m)
}

pub fn stats(s: &pb::ServiceStats) -> Value {
    json!({
        "total_connections": s.total_connections,
        "active_connections": s.active_connections,
        "peak_connections": s.peak_connections,
        "total_sessions": s.total_sessions,
        "active_sessions": s.active_sessions,
        "completed_sessions": s.completed_sessions,
        "avg_session_duration": f(s.avg_session_duration),
        "memory_usage_mb": f(s.memory_usage_mb),
        "cpu_usage_percent": f(s.cpu_usage_percent),
        "error_count": s.error_count,
        "error_rate": f(s.error_rate),
        "uptime_seconds": s.uptime_seconds,
        "restart_count": s.restart_count,
        "messages_total": s.messages_total,
    })
}

pub fn health_summary(h: &pb::HealthSummary) -> Value {
    json!({
        "status": h.status,
        "last_check": ts(&h.last_check),
        "response_time_ms": f(h.response_time_ms),
        "consecutive_failures": h.consecutive_failures,
        "message": h.message,
        "flapping": h.flapping,
    })
}

pub fn runtime(r: &pb::RuntimeInfo) -> Value {
    json!({
        "managed": r.managed,
        "pid": if r.pid > 0 { Value::from(r.pid) } else { Value::Null },
        "restart_count": r.restart_count,
        "last_error": r.last_error,
        "command": r.command,
        "last_exit_at": ts(&r.last_exit_at),
        "last_exit_code": r.last_exit_code,
        "next_restart_in_seconds": f(r.next_restart_in_seconds),
        "leader": r.leader,
    })
}

pub fn sync(s: &pb::SyncStatus) -> Value {
    json!({
        "config_version": s.config_version,
        "in_sync": s.in_sync,
        "proxies": s.proxies.iter().map(|p| json!({
            "node_id": p.node_id,
            "applied_version": p.applied_version,
            "in_sync": p.in_sync,
            "nack_error": if p.nack_error.is_empty() { Value::Null } else { Value::String(p.nack_error.clone()) },
        })).collect::<Vec<_>>(),
    })
}

pub fn register(r: &pb::RegisterServiceResponse) -> Value {
    json!({
        "success": true,
        "service_id": r.service_id,
        "message": r.message,
        "endpoint": r.endpoint,
    })
}

pub fn list(r: &pb::ListServicesResponse) -> Value {
    json!({
        "services": r.services.iter().map(service).collect::<Vec<_>>(),
        "total": r.total,
        "page": { "limit": r.limit, "offset": r.offset, "has_next": r.has_next },
    })
}

pub fn lifecycle(r: &pb::LifecycleResponse) -> Value {
    json!({ "success": true, "service_id": r.service_id, "status": r.status, "message": r.message })
}

pub fn deleted(message: &str) -> Value {
    json!({ "success": true, "message": message })
}

pub fn overview(o: &pb::Overview) -> Value {
    let s = o.services.unwrap_or_default();
    let c = o.connections.unwrap_or_default();
    let se = o.sessions.unwrap_or_default();
    let p = o.performance.unwrap_or_default();
    let r = o.resources.unwrap_or_default();
    json!({
        "services": { "total": s.total, "running": s.running, "stopped": s.stopped, "error": s.error },
        "connections": { "total": c.total, "active": c.active, "peak_today": c.peak_today },
        "sessions": { "total_today": se.total_today, "active": se.active, "completed_today": se.completed_today },
        "performance": {
            "avg_response_time_ms": f(p.avg_response_time_ms),
            "throughput_per_minute": f(p.throughput_per_minute),
            "error_rate": f(p.error_rate),
        },
        "resources": { "total_memory_mb": f(r.total_memory_mb), "total_cpu_percent": f(r.total_cpu_percent) },
    })
}

pub fn log_entry(e: &pb::LogEntry) -> Value {
    json!({ "timestamp": ts(&e.timestamp), "level": e.level, "source": e.source, "message": e.message })
}

pub fn logs(r: &pb::GetLogsResponse) -> Value {
    json!({
        "service_id": r.service_id,
        "logs": r.logs.iter().map(log_entry).collect::<Vec<_>>(),
        "total": r.total,
    })
}

/// One followed line (NDJSON): the entry plus the service it belongs to.
pub fn followed_entry(e: &pb::LogEntry) -> Value {
    json!({
        "service_id": e.service_id,
        "service_name": e.service_name,
        "timestamp": ts(&e.timestamp),
        "level": e.level,
        "source": e.source,
        "message": e.message,
    })
}

pub fn health_status(h: &pb::HealthStatus) -> Value {
    json!({
        "service_id": h.service_id,
        "status": h.status,
        "last_check": ts(&h.last_check),
        "response_time_ms": f(h.response_time_ms),
        "consecutive_failures": h.consecutive_failures,
        "message": h.message,
    })
}

pub fn health_history(h: &pb::HealthHistory) -> Value {
    json!({
        "service_id": h.service_id,
        "history": h.history.iter().map(|r| json!({
            "timestamp": ts(&r.timestamp),
            "status": r.status,
            "response_time_ms": f(r.response_time_ms),
            "error": if r.error.is_empty() { Value::Null } else { Value::String(r.error.clone()) },
        })).collect::<Vec<_>>(),
        "total": h.total,
    })
}

pub fn connection(c: &pb::Connection) -> Value {
    json!({
        "connection_id": c.connection_id,
        "session_id": c.session_id,
        "client_ip": c.client_ip,
        "target_service_id": c.target_service_id,
        "target_service": c.target_service,
        "node_id": c.node_id,
        "status": c.status,
        "connected_at": ts(&c.connected_at),
        "last_activity": ts(&c.last_activity),
        "closed_at": ts(&c.closed_at),
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
        "message_count": c.message_count,
        "routing_strategy": c.routing_strategy,
    })
}

pub fn connections(r: &pb::ListConnectionsResponse) -> Value {
    json!({
        "connections": r.connections.iter().map(connection).collect::<Vec<_>>(),
        "total": r.total,
    })
}

pub fn disconnect(r: &pb::DisconnectResponse) -> Value {
    json!({ "success": true, "connection_id": r.connection_id, "message": r.message })
}

pub fn notification(r: &pb::SendNotificationResponse) -> Value {
    json!({ "success": true, "delivered": r.delivered })
}

pub fn condition(c: &pb::Condition) -> Value {
    let mut v = json!({ "field": c.field, "operator": c.operator });
    if !c.values.is_empty() {
        v["value"] = json!(c.values);
    } else if !matches!(c.operator.as_str(), "exists" | "not_exists") || !c.value.is_empty() {
        v["value"] = json!(c.value);
    }
    v
}

pub fn rule(r: &pb::RoutingRule) -> Value {
    json!({
        "rule_id": r.rule_id,
        "name": r.name,
        "description": r.description,
        "priority": r.priority,
        "conditions": r.conditions.iter().map(condition).collect::<Vec<_>>(),
        "target_strategy": r.target_strategy,
        "target_tags": r.target_tags,
        "hash_key": r.hash_key,
        "enabled": r.enabled,
        "created_at": ts(&r.created_at),
        "updated_at": ts(&r.updated_at),
    })
}

/// `POST /routing/rules` answer: `{"success": true, "rule_id": ..., <rule fields>}`.
pub fn rule_created(r: &pb::RoutingRule) -> Value {
    let mut v = rule(r);
    if let Value::Object(m) = &mut v {
        m.insert("success".into(), Value::Bool(true));
        m.insert(
            "message".into(),
            Value::from("Routing rule created successfully"),
        );
    }
    v
}

pub fn rules(r: &pb::ListRulesResponse) -> Value {
    json!({ "rules": r.rules.iter().map(rule).collect::<Vec<_>>(), "total": r.total })
}
