//! What a proxy is told about a service or rule: conversion of stored records to the pushed
//! `ServiceSnapshot` / `RoutingRule`, including the `routable` decision.

use chrono::{DateTime, Utc};
use myagent_proto::v1 as pb;

use crate::model::{
    DesiredState, HealthState, HealthStatus, Rule, Runtime, ServiceDef, ServiceStatus,
};

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
}

/// The health a proxy should act on: a result older than the current run (taken before the
/// process was last started) says nothing about the new process, so it counts as unknown.
fn effective_health(
    runtime: Option<&Runtime>,
    health: Option<&HealthState>,
) -> (HealthStatus, bool) {
    let Some(h) = health else {
        return (HealthStatus::Unknown, false);
    };
    let stale = match (runtime.and_then(|r| r.started_at), h.last_check) {
        (Some(started), Some(checked)) => checked < started,
        _ => false,
    };
    if stale {
        (HealthStatus::Unknown, false)
    } else {
        (h.status, h.flapping)
    }
}

/// The snapshot of one service as pushed to proxies.
pub(crate) fn service_snapshot(
    def: &ServiceDef,
    runtime: Option<&Runtime>,
    health: Option<&HealthState>,
) -> pb::ServiceSnapshot {
    let status = runtime.map(|r| r.status).unwrap_or(ServiceStatus::Stopped);
    let (health_status, flapping) = effective_health(runtime, health);
    // A planned stop drains: the supervisor marks `stopping`, and an operator's stop request
    // (desired = stopped) already moves new traffic away before the supervisor acts. A planned
    // restart keeps desired = running: the supervisor's drain mark (before its SIGTERM, which
    // waits for the proxies to move the connections) is what tells the proxies.
    let draining = status == ServiceStatus::Stopping
        || (status == ServiceStatus::Running
            && (def.desired == DesiredState::Stopped || runtime.is_some_and(|r| r.draining)));
    let healthy_enough = match health_status {
        HealthStatus::Healthy | HealthStatus::Unknown => true,
        HealthStatus::Unhealthy => false,
    };
    let routable = status == ServiceStatus::Running && healthy_enough && !flapping && !draining;
    pb::ServiceSnapshot {
        service_id: def.id.clone(),
        name: def.name.clone(),
        host: def.host.clone(),
        port: u32::from(def.port),
        endpoint: def.endpoint(),
        status: status.as_str().to_string(),
        health: health_status.as_str().to_string(),
        routable,
        draining,
        drain_reason: match (draining, def.desired) {
            (false, _) => "",
            (true, _) if def.deleting => "delete",
            (true, DesiredState::Stopped) => "stop",
            (true, _) => "restart",
        }
        .to_string(),
        tags: def.tags.clone(),
        max_sessions: def.config.max_sessions,
        session_timeout: def.config.session_timeout,
        proxy_metadata: def.config.proxy_metadata,
        weight: def.config.weight,
        drain_timeout: def.config.drain_timeout,
    }
}

pub(crate) fn rule_to_pb(r: &Rule) -> pb::RoutingRule {
    pb::RoutingRule {
        rule_id: r.id.clone(),
        name: r.name.clone(),
        priority: r.priority,
        conditions: r
            .conditions
            .iter()
            .map(|c| pb::Condition {
                field: c.field.clone(),
                operator: c.operator.clone(),
                value: c.value.clone(),
                values: c.values.clone(),
            })
            .collect(),
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
    use crate::model::ServiceConfig;

    fn def() -> ServiceDef {
        let now = Utc::now();
        ServiceDef {
            id: "s1".into(),
            name: "weather".into(),
            description: String::new(),
            agent_factory_path: None,
            host: "127.0.0.1".into(),
            port: 9000,
            tags: vec!["weather".into()],
            config: ServiceConfig::default(),
            desired: DesiredState::Running,
            restart: None,
            deleting: false,
            created_at: now,
            updated_at: now,
        }
    }

    fn runtime(status: ServiceStatus) -> Runtime {
        let mut r = Runtime::stopped(Utc::now());
        r.status = status;
        r.started_at = Some(Utc::now());
        r
    }

    fn health(status: HealthStatus, flapping: bool) -> HealthState {
        HealthState {
            status,
            last_check: Some(Utc::now() + chrono::Duration::seconds(1)),
            flapping,
            ..HealthState::default()
        }
    }

    #[test]
    fn routable_only_when_running_healthy_stable_and_not_draining() {
        let d = def();
        assert!(
            !service_snapshot(&d, None, None).routable,
            "no runtime = stopped"
        );
        let running = runtime(ServiceStatus::Running);
        assert!(
            service_snapshot(&d, Some(&running), None).routable,
            "unknown after start"
        );
        assert!(
            service_snapshot(
                &d,
                Some(&running),
                Some(&health(HealthStatus::Healthy, false))
            )
            .routable
        );
        assert!(
            !service_snapshot(
                &d,
                Some(&running),
                Some(&health(HealthStatus::Unhealthy, false))
            )
            .routable
        );
        assert!(
            !service_snapshot(
                &d,
                Some(&running),
                Some(&health(HealthStatus::Healthy, true))
            )
            .routable
        );
        let stopping = runtime(ServiceStatus::Stopping);
        let s = service_snapshot(&d, Some(&stopping), None);
        assert!(s.draining && !s.routable);
        assert_eq!(s.drain_reason, "restart", "stopping while desired running");
        let mut stop_requested = def();
        stop_requested.desired = DesiredState::Stopped;
        let s = service_snapshot(&stop_requested, Some(&running), None);
        assert!(s.draining && !s.routable);
        assert_eq!(s.drain_reason, "stop");
        let mut deleting = stop_requested.clone();
        deleting.deleting = true;
        let s = service_snapshot(&deleting, Some(&running), None);
        assert_eq!((s.draining, s.drain_reason.as_str()), (true, "delete"));
        let s = service_snapshot(&stop_requested, Some(&stopping), None);
        assert_eq!((s.draining, s.drain_reason.as_str()), (true, "stop"));
        // A planned restart (desired stays running) drains while the supervisor says so.
        let mut restarting = runtime(ServiceStatus::Running);
        restarting.draining = true;
        let s = service_snapshot(&d, Some(&restarting), None);
        assert!(s.draining && !s.routable);
        assert_eq!(s.drain_reason, "restart");
        assert_eq!(service_snapshot(&d, Some(&running), None).drain_reason, "");
    }

    #[test]
    fn health_from_a_previous_run_counts_as_unknown() {
        let d = def();
        let running = runtime(ServiceStatus::Running);
        let mut old = health(HealthStatus::Unhealthy, false);
        old.last_check = Some(Utc::now() - chrono::Duration::seconds(60));
        let s = service_snapshot(&d, Some(&running), Some(&old));
        assert_eq!(s.health, "unknown");
        assert!(s.routable);
    }
}
