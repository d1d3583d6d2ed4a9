//! Conversions between protobuf messages and domain types, shared by every handler.

use chrono::{DateTime, Utc};
use myagent_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::model::{self, HealthState, Rule, ServiceConfig};
use crate::registry::{ConfigPatch, ServiceStats, ServiceView};

/// Longest accepted `wait_for_sync`, seconds.
pub const MAX_WAIT_FOR_SYNC: f64 = 300.0;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// `None` for an unset or out-of-range timestamp.
pub fn from_timestamp(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// Checks a request's `wait_for_sync` (seconds, 0 = do not wait).
pub fn wait_for_sync(seconds: f64) -> Result<f64> {
    if !seconds.is_finite() || !(0.0..=MAX_WAIT_FOR_SYNC).contains(&seconds) {
        return Err(Error::invalid(
            "wait_for_sync",
            format!("wait_for_sync must be between 0 and {MAX_WAIT_FOR_SYNC} seconds"),
        ));
    }
    Ok(seconds)
}

impl From<pb::ServiceConfig> for ConfigPatch {
    fn from(c: pb::ServiceConfig) -> Self {
        ConfigPatch {
            max_sessions: c.max_sessions,
            session_timeout: c.session_timeout,
            auto_restart: c.auto_restart,
            health_check_enabled: c.health_check_enabled,
            env: c.env.map(|m| m.entries.into_iter().collect()),
            args: c.args.map(|l| l.items),
            working_dir: c.working_dir,
            proxy_metadata: c.proxy_metadata,
            weight: c.weight,
            health_check_interval: c.health_check_interval,
            health_check_timeout: c.health_check_timeout,
            healthy_threshold: c.healthy_threshold,
            unhealthy_threshold: c.unhealthy_threshold,
            startup_timeout: c.startup_timeout,
            stop_grace_period: c.stop_grace_period,
            max_restarts: c.max_restarts,
            restart_window: c.restart_window,
            drain_timeout: c.drain_timeout,
            flap_stable_checks: c.flap_stable_checks,
        }
    }
}

/// Responses carry every field with its effective value.
pub fn config_to_pb(c: &ServiceConfig) -> pb::ServiceConfig {
    pb::ServiceConfig {
        max_sessions: Some(c.max_sessions),
        session_timeout: Some(c.session_timeout),
        auto_restart: Some(c.auto_restart),
        health_check_enabled: Some(c.health_check_enabled),
        env: Some(pb::StringMap {
            entries: c.env.clone().into_iter().collect(),
        }),
        args: Some(pb::StringList {
            items: c.args.clone(),
        }),
        working_dir: Some(c.working_dir.clone().unwrap_or_default()),
        proxy_metadata: Some(c.proxy_metadata),
        weight: Some(c.weight),
        health_check_interval: Some(c.health_check_interval),
        health_check_timeout: Some(c.health_check_timeout),
        healthy_threshold: Some(c.healthy_threshold),
        unhealthy_threshold: Some(c.unhealthy_threshold),
        startup_timeout: Some(c.startup_timeout),
        stop_grace_period: Some(c.stop_grace_period),
        max_restarts: Some(c.max_restarts),
        restart_window: Some(c.restart_window),
        drain_timeout: Some(c.drain_timeout),
        flap_stable_checks: Some(c.flap_stable_checks),
    }
}

fn stats_to_pb(s: &ServiceStats) -> pb::ServiceStats {
    pb::ServiceStats {
        total_connections: s.total_connections,
        active_connections: s.active_connections,
        peak_connections: s.peak_connections,
        total_sessions: s.total_sessions,
        active_sessions: s.active_sessions,
        completed_sessions: s.completed_sessions,
        avg_session_duration: s.avg_session_duration,
        memory_usage_mb: s.memory_usage_mb,
        cpu_usage_percent: s.cpu_usage_percent,
        error_count: s.error_count,
        error_rate: s.error_rate,
        uptime_seconds: s.uptime_seconds,
        restart_count: s.restart_count,
        messages_total: s.messages_total,
    }
}

pub fn health_to_pb(h: Option<&HealthState>) -> pb::HealthSummary {
    match h {
        None => pb::HealthSummary {
            status: model::HealthStatus::Unknown.as_str().to_string(),
            ..Default::default()
        },
        Some(h) => pb::HealthSummary {
            status: h.status.as_str().to_string(),
            last_check: opt_timestamp(h.last_check),
            response_time_ms: h.response_time_ms,
            consecutive_failures: h.consecutive_failures,
            message: h.message.clone(),
            flapping: h.flapping,
        },
    }
}

pub fn service_to_pb(v: &ServiceView) -> pb::Service {
    let d = &v.def;
    let runtime = v.runtime.as_ref();
    pb::Service {
        service_id: d.id.clone(),
        name: d.name.clone(),
        description: d.description.clone(),
        agent_factory_path: d.agent_factory_path.clone().unwrap_or_default(),
        host: d.host.clone(),
        port: u32::from(d.port),
        endpoint: d.endpoint(),
        status: v.status().as_str().to_string(),
        tags: d.tags.clone(),
        created_at: Some(timestamp(d.created_at)),
        started_at: opt_timestamp(v.started_at()),
        config: Some(config_to_pb(&d.config)),
        stats: Some(stats_to_pb(&v.stats)),
        health: Some(health_to_pb(v.health.as_ref())),
        runtime: Some(pb::RuntimeInfo {
            managed: d.is_managed(),
            pid: runtime.and_then(|r| r.pid).unwrap_or(0),
            restart_count: runtime.map_or(0, |r| r.restart_count),
            last_error: runtime
                .and_then(|r| r.last_error.clone())
                .unwrap_or_default(),
            command: runtime.map(|r| r.command.clone()).unwrap_or_default(),
            last_exit_at: runtime.and_then(|r| opt_timestamp(r.last_exit_at)),
            last_exit_code: runtime.and_then(|r| r.last_exit_code).unwrap_or(0),
            next_restart_in_seconds: runtime.map_or(0.0, |r| r.next_restart_in_seconds),
            leader: runtime.map(|r| r.leader.clone()).unwrap_or_default(),
        }),
        sync: v.sync.clone().map(Into::into),
        updated_at: Some(timestamp(d.updated_at)),
    }
}

pub fn condition_from_pb(c: pb::Condition) -> model::Condition {
    model::Condition {
        field: c.field,
        operator: c.operator,
        value: c.value,
        values: c.values,
    }
}

pub fn condition_to_pb(c: &model::Condition) -> pb::Condition {
    pb::Condition {
        field: c.field.clone(),
        operator: c.operator.clone(),
        value: c.value.clone(),
        values: c.values.clone(),
    }
}

pub fn rule_to_pb(r: &Rule) -> pb::RoutingRule {
    pb::RoutingRule {
        rule_id: r.id.clone(),
        name: r.name.clone(),
        priority: r.priority,
        conditions: r.conditions.iter().map(condition_to_pb).collect(),
        target_strategy: r.target_strategy.clone(),
        target_tags: r.target_tags.clone(),
        enabled: r.enabled,
        description: r.description.clone(),
        hash_key: r.hash_key.clone(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let now = Utc::now();
        assert_eq!(from_timestamp(Some(&timestamp(now))), Some(now));
    }

    #[test]
    fn wait_for_sync_bounds() {
        assert!(wait_for_sync(0.0).is_ok());
        assert!(wait_for_sync(-1.0).is_err());
        assert!(wait_for_sync(f64::NAN).is_err());
        assert!(wait_for_sync(301.0).is_err());
    }
}
