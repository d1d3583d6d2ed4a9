//! Domain types as stored (JSON values under the keys of `keys`). These are not protobuf types:
//! `grpc/` converts at the edge (validation fails there with `INVALID_REQUEST`).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `services/{id}`: what the operator registered and what they want.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Absolute path; `None` for an external service.
    pub agent_factory_path: Option<String>,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    pub config: ServiceConfig,
    /// The operator's intent; the leader's supervisor reconciles `runtime/{id}` towards it.
    pub desired: DesiredState,
    /// A pending restart (with optional grace period); the supervisor clears it when done.
    #[serde(default)]
    pub restart: Option<RestartRequest>,
    /// A delete is under way: the stop before it drains connections with reason
    /// `service_removed`. Stored only while set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ServiceDef {
    pub fn endpoint(&self) -> String {
        format!("ws://{}:{}", self.host, self.port)
    }

    pub fn is_managed(&self) -> bool {
        self.agent_factory_path.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartRequest {
    /// Unique per request, so a supervisor can tell a new request from one it handled.
    pub id: String,
    pub requested_at: DateTime<Utc>,
    pub grace_seconds: u32,
    #[serde(default)]
    pub message: String,
    /// A start request: launch when not running, never restart a running process.
    #[serde(default)]
    pub start_only: bool,
}

/// Effective per-service configuration (every field has a value; defaults in `Default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    pub max_sessions: u32,
    pub session_timeout: u32,
    pub auto_restart: bool,
    pub health_check_enabled: bool,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub proxy_metadata: bool,
    pub weight: u32,
    pub health_check_interval: f64,
    pub health_check_timeout: f64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub startup_timeout: f64,
    pub stop_grace_period: f64,
    pub max_restarts: u32,
    pub restart_window: f64,
    pub drain_timeout: f64,
    pub flap_stable_checks: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_sessions: 100,
            session_timeout: 1800,
            auto_restart: true,
            health_check_enabled: true,
            env: BTreeMap::new(),
            args: Vec::new(),
            working_dir: None,
            proxy_metadata: true,
            weight: 1,
            health_check_interval: 10.0,
            health_check_timeout: 5.0,
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            startup_timeout: 30.0,
            stop_grace_period: 10.0,
            max_restarts: 10,
            restart_window: 300.0,
            drain_timeout: 10.0,
            flap_stable_checks: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Stopped,
    Starting,
    Running,
    Stopping,
    Error,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Stopped => "stopped",
            ServiceStatus::Starting => "starting",
            ServiceStatus::Running => "running",
            ServiceStatus::Stopping => "stopping",
            ServiceStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stopped" => ServiceStatus::Stopped,
            "starting" => ServiceStatus::Starting,
            "running" => ServiceStatus::Running,
            "stopping" => ServiceStatus::Stopping,
            "error" => ServiceStatus::Error,
            _ => return None,
        })
    }
}

/// `runtime/{id}`: what the leader's supervisor observed. Absent = stopped, never started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub status: ServiceStatus,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Last stderr lines when a start failed.
    #[serde(default)]
    pub last_stderr: Vec<String>,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub last_exit_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// Backoff currently applied before the next automatic restart.
    #[serde(default)]
    pub next_restart_in_seconds: f64,
    #[serde(default)]
    pub command: Vec<String>,
    /// Replica that supervises the process.
    #[serde(default)]
    pub leader: String,
    #[serde(default)]
    pub memory_mb: f64,
    #[serde(default)]
    pub cpu_percent: f64,
    /// Id of the last restart request handled.
    #[serde(default)]
    pub handled_restart: Option<String>,
    /// A planned stop/restart is draining connections (proxies move them before SIGTERM).
    #[serde(default)]
    pub draining: bool,
    /// Error code of the last failure (`SERVICE_START_FAILED`, `PORT_IN_USE`), when status is `error`.
    #[serde(default)]
    pub error_code: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl Runtime {
    pub fn stopped(now: DateTime<Utc>) -> Self {
        Runtime {
            status: ServiceStatus::Stopped,
            pid: None,
            started_at: None,
            last_error: None,
            last_stderr: Vec::new(),
            restart_count: 0,
            last_exit_at: None,
            last_exit_code: None,
            next_restart_in_seconds: 0.0,
            command: Vec::new(),
            leader: String::new(),
            memory_mb: 0.0,
            cpu_percent: 0.0,
            handled_restart: None,
            draining: false,
            error_code: None,
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// `health/{id}`: latest result plus bounded history (newest last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthState {
    pub status: HealthStatus,
    #[serde(default)]
    pub last_check: Option<DateTime<Utc>>,
    #[serde(default)]
    pub response_time_ms: f64,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub consecutive_successes: u32,
    #[serde(default)]
    pub message: String,
    /// Held out of routing until stable for `flap_stable_checks` checks.
    #[serde(default)]
    pub flapping: bool,
    #[serde(default)]
    pub history: VecDeque<HealthRecord>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            status: HealthStatus::Unknown,
            last_check: None,
            response_time_ms: 0.0,
            consecutive_failures: 0,
            consecutive_successes: 0,
            message: String::new(),
            flapping: false,
            history: VecDeque::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub timestamp: DateTime<Utc>,
    pub status: HealthStatus,
    pub response_time_ms: f64,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub transition: bool,
}

/// `rules/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub priority: i32,
    pub conditions: Vec<Condition>,
    pub target_strategy: String,
    pub target_tags: Vec<String>,
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub hash_key: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub field: String,
    pub operator: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub values: Vec<String>,
}

pub const CONDITION_OPERATORS: &[&str] = &[
    "equals",
    "not_equals",
    "contains",
    "starts_with",
    "ends_with",
    "regex",
    "in",
    "not_in",
    "exists",
    "not_exists",
    "cidr",
];

pub const STRATEGIES: &[&str] = &[
    "least_connections",
    "round_robin",
    "random",
    "weighted",
    "consistent_hash",
];
