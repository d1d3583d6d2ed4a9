//! REST shapes of the service registry (seed §1.1) and their conversions from/to `myagent.v1`.

use std::collections::BTreeMap;

use myagent_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::convert::{opt_str, ts};
use crate::error::ApiError;

/// Per-service configuration in a request; every key is optional (PUT merges).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfigBody {
    /// 1..=1000000, default 100.
    pub max_sessions: Option<u32>,
    /// Seconds, default 1800.
    pub session_timeout: Option<u32>,
    pub auto_restart: Option<bool>,
    pub health_check_enabled: Option<bool>,
    /// Extra environment for managed processes.
    pub env: Option<BTreeMap<String, String>>,
    /// Extra arguments for managed processes.
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// Wrap client frames in the proxy envelope, default true.
    pub proxy_metadata: Option<bool>,
    /// Weight for the `weighted` strategy, default 1.
    pub weight: Option<u32>,
    pub health_check_interval: Option<f64>,
    pub health_check_timeout: Option<f64>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub startup_timeout: Option<f64>,
    pub stop_grace_period: Option<f64>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<f64>,
    pub drain_timeout: Option<f64>,
    pub flap_stable_checks: Option<u32>,
}

impl From<ServiceConfigBody> for pb::ServiceConfig {
    fn from(b: ServiceConfigBody) -> Self {
        pb::ServiceConfig {
            max_sessions: b.max_sessions,
            session_timeout: b.session_timeout,
            auto_restart: b.auto_restart,
            health_check_enabled: b.health_check_enabled,
            env: b.env.map(|m| pb::StringMap {
                entries: m.into_iter().collect(),
            }),
            args: b.args.map(|items| pb::StringList { items }),
            working_dir: b.working_dir,
            proxy_metadata: b.proxy_metadata,
            weight: b.weight,
            health_check_interval: b.health_check_interval,
            health_check_timeout: b.health_check_timeout,
            healthy_threshold: b.healthy_threshold,
            unhealthy_threshold: b.unhealthy_threshold,
            startup_timeout: b.startup_timeout,
            stop_grace_period: b.stop_grace_period,
            max_restarts: b.max_restarts,
            restart_window: b.restart_window,
            drain_timeout: b.drain_timeout,
            flap_stable_checks: b.flap_stable_checks,
        }
    }
}

/// `POST /services` body (seed §1.1).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterServiceBody {
    /// 1–63 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit; unique.
    pub name: String,
    pub description: Option<String>,
    /// Python file or executable; without it the service is external.
    pub agent_factory_path: Option<String>,
    /// Default `localhost`.
    pub host: Option<String>,
    /// 1..=65535.
    pub port: Option<u32>,
    pub tags: Option<Vec<String>>,
    pub config: Option<ServiceConfigBody>,
}

impl RegisterServiceBody {
    pub fn into_request(self, wait_for_sync: f64) -> Result<pb::RegisterServiceRequest, ApiError> {
        let port = match self.port {
            Some(p @ 1..=65535) => p,
            Some(_) => {
                return Err(ApiError::invalid(
                    "port",
                    "port must be between 1 and 65535",
                ))
            }
            None => return Err(ApiError::invalid("port", "port is required (1-65535)")),
        };
        Ok(pb::RegisterServiceRequest {
            name: self.name,
            description: self.description.unwrap_or_default(),
            agent_factory_path: self.agent_factory_path.unwrap_or_default(),
            host: self.host.unwrap_or_default(),
            port,
            tags: self.tags.unwrap_or_default(),
            config: self.config.map(Into::into),
            wait_for_sync,
        })
    }
}

/// `POST /services` answer (seed §1.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterServiceResponse {
    pub success: bool,
    pub service_id: String,
    pub message: String,
    /// `ws://host:port`
    pub endpoint: String,
}

impl From<pb::RegisterServiceResponse> for RegisterServiceResponse {
    fn from(r: pb::RegisterServiceResponse) -> Self {
        RegisterServiceResponse {
            success: true,
            service_id: r.service_id,
            // The seed's exact wording, whatever the control plane says.
            message: "Service registered successfully".into(),
            endpoint: r.endpoint,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListServicesQuery {
    pub tag: Option<String>,
    /// stopped | starting | running | stopping | error
    pub status: Option<String>,
    /// Page size (default 100, max 1000).
    #[serde(default, deserialize_with = "super::page_limit")]
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// Stats shown in the service list (exactly the seed's three keys).
#[derive(Debug, Serialize, ToSchema)]
pub struct ListStats {
    pub total_connections: u64,
    pub active_sessions: u64,
    pub uptime_seconds: u64,
}

/// One entry of `GET /services` (exactly the seed's keys).
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceListItem {
    pub service_id: String,
    pub name: String,
    pub description: String,
    pub host: String,
    pub port: u32,
    pub endpoint: String,
    pub status: String,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub stats: ListStats,
}

impl From<&pb::Service> for ServiceListItem {
    fn from(s: &pb::Service) -> Self {
        let st = s.stats.unwrap_or_default();
        ServiceListItem {
            service_id: s.service_id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            host: s.host.clone(),
            port: s.port,
            endpoint: s.endpoint.clone(),
            status: s.status.clone(),
            tags: s.tags.clone(),
            created_at: ts(s.created_at.as_ref()),
            started_at: ts(s.started_at.as_ref()),
            stats: ListStats {
                total_connections: st.total_connections,
                active_sessions: st.active_sessions,
                uptime_seconds: st.uptime_seconds,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
    pub has_next: bool,
}

/// `GET /services` answer (seed §1.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceListItem>,
    pub total: u64,
    pub page: Page,
}

impl From<pb::ListServicesResponse> for ServiceList {
    fn from(r: pb::ListServicesResponse) -> Self {
        ServiceList {
            services: r.services.iter().map(Into::into).collect(),
            total: r.total,
            page: Page {
                limit: r.limit,
                offset: r.offset,
                has_next: r.has_next,
            },
        }
    }
}

/// Effective configuration of a service: the seed's four keys first, then the others.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceConfigView {
    pub max_sessions: Option<u32>,
    pub session_timeout: Option<u32>,
    pub auto_restart: Option<bool>,
    pub health_check_enabled: Option<bool>,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub proxy_metadata: Option<bool>,
    pub weight: Option<u32>,
    pub health_check_interval: Option<f64>,
    pub health_check_timeout: Option<f64>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub startup_timeout: Option<f64>,
    pub stop_grace_period: Option<f64>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<f64>,
    pub drain_timeout: Option<f64>,
    pub flap_stable_checks: Option<u32>,
}

impl From<pb::ServiceConfig> for ServiceConfigView {
    fn from(c: pb::ServiceConfig) -> Self {
        ServiceConfigView {
            max_sessions: c.max_sessions,
            session_timeout: c.session_timeout,
            auto_restart: c.auto_restart,
            health_check_enabled: c.health_check_enabled,
            env: c
                .env
                .map(|m| m.entries.into_iter().collect())
                .unwrap_or_default(),
            args: c.args.map(|l| l.items).unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
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

/// Every stats key of the seed's detail view, plus uptime, restarts and message count.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatsView {
    pub total_connections: u64,
    pub active_connections: u64,
    pub peak_connections: u64,
    pub total_sessions: u64,
    pub active_sessions: u64,
    pub completed_sessions: u64,
    pub avg_session_duration: f64,
    pub memory_usage_mb: f64,
    pub cpu_usage_percent: f64,
    pub error_count: u64,
    pub error_rate: f64,
    pub uptime_seconds: u64,
    pub restart_count: u64,
    pub messages_total: u64,
}

impl From<pb::ServiceStats> for ServiceStatsView {
    fn from(s: pb::ServiceStats) -> Self {
        ServiceStatsView {
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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthSummaryView {
    /// healthy | unhealthy | unknown
    pub status: String,
    pub last_check: Option<String>,
    pub response_time_ms: f64,
    pub consecutive_failures: u32,
    pub message: Option<String>,
    pub flapping: bool,
}

impl From<pb::HealthSummary> for HealthSummaryView {
    fn from(h: pb::HealthSummary) -> Self {
        HealthSummaryView {
            status: if h.status.is_empty() {
                "unknown".into()
            } else {
                h.status
            },
            last_check: ts(h.last_check.as_ref()),
            response_time_ms: h.response_time_ms,
            consecutive_failures: h.consecutive_failures,
            message: opt_str(&h.message),
            flapping: h.flapping,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeView {
    pub managed: bool,
    pub pid: Option<i32>,
    pub restart_count: u32,
    pub last_error: Option<String>,
    pub command: Vec<String>,
    pub last_exit_at: Option<String>,
    pub last_exit_code: Option<i32>,
    pub next_restart_in_seconds: f64,
    pub leader: Option<String>,
}

impl From<pb::RuntimeInfo> for RuntimeView {
    fn from(r: pb::RuntimeInfo) -> Self {
        let exited = r.last_exit_at.is_some();
        RuntimeView {
            managed: r.managed,
            pid: (r.pid != 0).then_some(r.pid),
            restart_count: r.restart_count,
            last_error: opt_str(&r.last_error),
            command: r.command,
            last_exit_at: ts(r.last_exit_at.as_ref()),
            last_exit_code: exited.then_some(r.last_exit_code),
            next_restart_in_seconds: r.next_restart_in_seconds,
            leader: opt_str(&r.leader),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProxySyncView {
    pub node_id: String,
    pub applied_version: u64,
    pub in_sync: bool,
    pub nack_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncView {
    pub config_version: u64,
    pub in_sync: bool,
    pub proxies: Vec<ProxySyncView>,
}

impl From<pb::SyncStatus> for SyncView {
    fn from(s: pb::SyncStatus) -> Self {
        SyncView {
            config_version: s.config_version,
            in_sync: s.in_sync,
            proxies: s
                .proxies
                .into_iter()
                .map(|p| ProxySyncView {
                    node_id: p.node_id,
                    applied_version: p.applied_version,
                    in_sync: p.in_sync,
                    nack_error: opt_str(&p.nack_error),
                })
                .collect(),
        }
    }
}

/// `GET /services/{id}` answer: the seed's keys plus runtime and proxy sync information.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceDetail {
    pub service_id: String,
    pub name: String,
    pub description: String,
    pub host: String,
    pub port: u32,
    pub endpoint: String,
    pub status: String,
    pub tags: Vec<String>,
    pub config: ServiceConfigView,
    pub stats: ServiceStatsView,
    pub health: HealthSummaryView,
    pub agent_factory_path: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub updated_at: Option<String>,
    pub runtime: RuntimeView,
    pub sync: SyncView,
}

impl From<pb::Service> for ServiceDetail {
    fn from(s: pb::Service) -> Self {
        ServiceDetail {
            created_at: ts(s.created_at.as_ref()),
            started_at: ts(s.started_at.as_ref()),
            updated_at: ts(s.updated_at.as_ref()),
            agent_factory_path: opt_str(&s.agent_factory_path),
            service_id: s.service_id,
            name: s.name,
            description: s.description,
            host: s.host,
            port: s.port,
            endpoint: s.endpoint,
            status: s.status,
            tags: s.tags,
            config: s.config.unwrap_or_default().into(),
            stats: s.stats.unwrap_or_default().into(),
            health: s.health.unwrap_or_default().into(),
            runtime: s.runtime.unwrap_or_default().into(),
            sync: s.sync.unwrap_or_default().into(),
        }
    }
}

/// Optional body of `POST /services/{id}/restart`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    /// Notify connected clients, wait this long, then restart.
    pub grace_seconds: Option<u32>,
    /// Text of the maintenance notification.
    pub message: Option<String>,
}

/// start / stop / restart answer (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct LifecycleResponse {
    pub success: bool,
    pub service_id: String,
    pub status: String,
    pub message: String,
}

impl From<pb::LifecycleResponse> for LifecycleResponse {
    fn from(r: pb::LifecycleResponse) -> Self {
        LifecycleResponse {
            success: true,
            service_id: r.service_id,
            status: r.status,
            message: r.message,
        }
    }
}

/// `PUT /services/{id}/config` answer: the merged effective configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpdateConfigResponse {
    pub success: bool,
    pub service_id: String,
    pub message: String,
    pub config: ServiceConfigView,
}

impl From<pb::Service> for UpdateConfigResponse {
    fn from(s: pb::Service) -> Self {
        UpdateConfigResponse {
            success: true,
            service_id: s.service_id,
            message: "Service configuration updated".into(),
            config: s.config.unwrap_or_default().into(),
        }
    }
}

/// `DELETE` answer (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    pub success: bool,
    pub message: String,
}

impl DeleteResponse {
    /// The control plane's message, or `fallback` when it gave none.
    pub fn new(message: String, fallback: &str) -> Self {
        DeleteResponse {
            success: true,
            message: if message.is_empty() {
                fallback.to_string()
            } else {
                message
            },
        }
    }
}

/// `?wait_for_sync=SECONDS` on every write: wait until every proxy has applied the change.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Seconds, 0..=3600 (0 = do not wait).
    #[serde(default, deserialize_with = "wait_seconds")]
    pub wait_for_sync: Option<f64>,
}

/// Checked while the query string is parsed, so a bad value is reported before the body is read.
fn wait_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Option::<f64>::deserialize(d)?;
    match v {
        Some(s) if !(s.is_finite() && (0.0..=3600.0).contains(&s)) => Err(
            serde::de::Error::custom("must be a number of seconds between 0 and 3600"),
        ),
        other => Ok(other),
    }
}
