//! REST shapes of stats (seed §1.4), health checks (§1.5) and logs (§1.6), per DESIGN §7/§9.

use myagent_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::convert::{number, opt_str, ts};

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceCounts {
    pub total: u64,
    pub running: u64,
    pub stopped: u64,
    pub error: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionCounts {
    pub total: u64,
    pub active: u64,
    pub peak_today: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCounts {
    pub total_today: u64,
    pub active: u64,
    pub completed_today: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Performance {
    pub avg_response_time_ms: f64,
    pub throughput_per_minute: f64,
    pub error_rate: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Resources {
    pub total_memory_mb: f64,
    pub total_cpu_percent: f64,
}

/// `GET /stats/overview` answer (seed §1.4, exactly).
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub services: ServiceCounts,
    pub connections: ConnectionCounts,
    pub sessions: SessionCounts,
    pub performance: Performance,
    pub resources: Resources,
}

impl From<pb::Overview> for Overview {
    fn from(o: pb::Overview) -> Self {
        let s = o.services.unwrap_or_default();
        let c = o.connections.unwrap_or_default();
        let x = o.sessions.unwrap_or_default();
        let p = o.performance.unwrap_or_default();
        let r = o.resources.unwrap_or_default();
        Overview {
            services: ServiceCounts {
                total: s.total,
                running: s.running,
                stopped: s.stopped,
                error: s.error,
            },
            connections: ConnectionCounts {
                total: c.total,
                active: c.active,
                peak_today: c.peak_today,
            },
            sessions: SessionCounts {
                total_today: x.total_today,
                active: x.active,
                completed_today: x.completed_today,
            },
            performance: Performance {
                avg_response_time_ms: p.avg_response_time_ms,
                throughput_per_minute: p.throughput_per_minute,
                error_rate: p.error_rate,
            },
            resources: Resources {
                total_memory_mb: r.total_memory_mb,
                total_cpu_percent: r.total_cpu_percent,
            },
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeseriesQuery {
    /// connections | sessions | messages | errors | response_time_ms | memory_mb | cpu_percent
    #[param(required = true)]
    pub metric: Option<String>,
    /// e.g. 15m, 1h (default), 24h, 7d
    pub period: Option<String>,
    /// e.g. 10s, 1m, 5m, 1h; default about 12 points of the period (5m for 1h)
    pub interval: Option<String>,
    /// Service id or name; absent = all services.
    pub service_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DataPoint {
    pub timestamp: Option<String>,
    #[serde(serialize_with = "number")]
    pub value: f64,
}

/// `GET /stats/timeseries` answer (seed §1.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeseries {
    pub metric: String,
    pub period: String,
    pub interval: String,
    pub data: Vec<DataPoint>,
}

impl From<pb::Timeseries> for Timeseries {
    fn from(t: pb::Timeseries) -> Self {
        Timeseries {
            metric: t.metric,
            period: t.period,
            interval: t.interval,
            data: t
                .data
                .into_iter()
                .map(|d| DataPoint {
                    timestamp: ts(d.timestamp.as_ref()),
                    value: d.value,
                })
                .collect(),
        }
    }
}

/// `GET /health/services/{id}` and `POST .../check` answer (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    pub service_id: String,
    /// healthy | unhealthy | unknown
    pub status: String,
    pub last_check: Option<String>,
    pub response_time_ms: f64,
    pub consecutive_failures: u32,
    pub message: Option<String>,
}

impl From<pb::HealthStatus> for HealthView {
    fn from(h: pb::HealthStatus) -> Self {
        HealthView {
            last_check: ts(h.last_check.as_ref()),
            message: opt_str(&h.message),
            service_id: h.service_id,
            status: if h.status.is_empty() {
                "unknown".into()
            } else {
                h.status
            },
            response_time_ms: h.response_time_ms,
            consecutive_failures: h.consecutive_failures,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthRecordView {
    pub timestamp: Option<String>,
    pub status: String,
    pub response_time_ms: f64,
    /// Null when the check passed.
    pub error: Option<String>,
}

/// `GET /health/services/{id}/history` answer, newest first (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthHistoryView {
    pub service_id: String,
    pub history: Vec<HealthRecordView>,
    pub total: u64,
}

impl From<pb::HealthHistory> for HealthHistoryView {
    fn from(h: pb::HealthHistory) -> Self {
        HealthHistoryView {
            service_id: h.service_id,
            history: h
                .history
                .into_iter()
                .map(|r| HealthRecordView {
                    timestamp: ts(r.timestamp.as_ref()),
                    error: opt_str(&r.error),
                    status: r.status,
                    response_time_ms: r.response_time_ms,
                })
                .collect(),
            total: h.total,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    #[serde(default, deserialize_with = "super::page_limit")]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// debug | info | warn | error: this level and above.
    pub level: Option<String>,
    /// Default 100, max 10000 (newest kept, oldest first).
    #[serde(default, deserialize_with = "super::page_limit")]
    pub limit: Option<u32>,
    /// RFC 3339 timestamp, e.g. 2024-01-01T10:00:00Z.
    pub since: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogSearchQuery {
    /// Text to find (required).
    #[param(required = true)]
    pub query: Option<String>,
    /// Service id or name.
    pub service_id: Option<String>,
    #[serde(default, deserialize_with = "super::page_limit")]
    pub limit: Option<u32>,
    pub level: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLine {
    pub timestamp: Option<String>,
    pub level: String,
    /// stdout | stderr | manager
    pub source: String,
    pub message: String,
}

/// `GET /logs/services/{id}` answer (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogsView {
    pub service_id: String,
    pub logs: Vec<LogLine>,
    pub total: u64,
}

impl From<pb::GetLogsResponse> for LogsView {
    fn from(r: pb::GetLogsResponse) -> Self {
        LogsView {
            service_id: r.service_id,
            logs: r
                .logs
                .into_iter()
                .map(|l| LogLine {
                    timestamp: ts(l.timestamp.as_ref()),
                    level: l.level,
                    source: l.source,
                    message: l.message,
                })
                .collect(),
            total: r.total,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogMatch {
    pub service_id: String,
    pub service_name: String,
    pub timestamp: Option<String>,
    pub level: String,
    pub source: String,
    pub message: String,
}

impl From<pb::LogEntry> for LogMatch {
    fn from(l: pb::LogEntry) -> Self {
        LogMatch {
            timestamp: ts(l.timestamp.as_ref()),
            service_id: l.service_id,
            service_name: l.service_name,
            level: l.level,
            source: l.source,
            message: l.message,
        }
    }
}

/// `GET /logs/search` answer (DESIGN §9).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogSearchView {
    pub query: String,
    pub results: Vec<LogMatch>,
    pub total: u64,
}

impl From<pb::SearchLogsResponse> for LogSearchView {
    fn from(r: pb::SearchLogsResponse) -> Self {
        LogSearchView {
            query: r.query,
            results: r.results.into_iter().map(Into::into).collect(),
            total: r.total,
        }
    }
}
