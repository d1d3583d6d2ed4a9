//! The command line: every command and flag of seed §3 plus DESIGN §8–§10 additions (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::condition::{self, CONDITION_HELP};
use crate::timeparse;

/// Default control-plane address (DESIGN §2).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Routing strategies the control plane accepts (DESIGN §5).
pub const STRATEGIES: [&str; 5] = [
    "least_connections",
    "round_robin",
    "random",
    "weighted",
    "consistent_hash",
];

/// Service statuses `list --status` filters on (the control plane's, DESIGN §4).
pub const SERVICE_STATUSES: [&str; 5] = ["stopped", "starting", "running", "stopping", "error"];

/// `connections --status`: a connection's status, or `all`.
pub const CONNECTION_STATUSES: [&str; 3] = ["active", "closed", "all"];

/// Notification severities the control plane accepts.
pub const SEVERITIES: [&str; 4] = ["info", "warning", "error", "critical"];

/// Log levels for `logs --level`, with the spellings the control plane also reads (any case),
/// so a typo is a usage error (exit 2) rather than a round trip.
fn log_levels() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("debug").aliases(["trace", "dbg"]),
        PossibleValue::new("info").aliases(["information", "notice"]),
        PossibleValue::new("warn").alias("warning"),
        PossibleValue::new("error").aliases([
            "err", "critical", "crit", "fatal", "panic", "alert", "emerg",
        ]),
    ])
}

#[derive(Debug, Parser)]
#[command(
    name = "myagent-manager",
    version,
    about = "Manage agent services, routing rules and connections of a myagent cluster",
    long_about = "Manage agent services, routing rules and connections of a myagent cluster.\n\n\
        Talks gRPC to a control plane (--server). Every service or rule argument accepts its \
        name or its id. `myagent-manager up` starts a whole local stack in one process.\n\n\
        Exit status: 0 success, 1 API error (the code is printed), 2 usage error, \
        64 invalid configuration, 69 control plane unreachable."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Control-plane gRPC address.
    #[arg(long, global = true, env = "MYAGENT_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format of every command.
    #[arg(long, global = true, env = "MYAGENT_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Admin bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "MYAGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds to wait for the control plane to answer a request.
    #[arg(long, global = true, env = "MYAGENT_TIMEOUT", default_value_t = 60.0, value_parser = positive_seconds)]
    pub timeout: f64,
    /// PEM CA bundle to verify the control plane's certificate (`https://` servers).
    #[arg(
        long,
        global = true,
        env = "MYAGENT_CONTROL_PLANE_CA",
        help_heading = "TLS"
    )]
    pub control_plane_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS to the control plane (requires --control-plane-key).
    #[arg(
        long,
        global = true,
        env = "MYAGENT_CONTROL_PLANE_CERT",
        requires = "control_plane_key",
        help_heading = "TLS"
    )]
    pub control_plane_cert: Option<PathBuf>,
    /// PEM client key for mTLS to the control plane (requires --control-plane-cert).
    #[arg(
        long,
        global = true,
        env = "MYAGENT_CONTROL_PLANE_KEY",
        requires = "control_plane_cert",
        help_heading = "TLS"
    )]
    pub control_plane_key: Option<PathBuf>,
    /// Server name expected in the control plane's certificate (default: the --server host).
    #[arg(
        long,
        global = true,
        env = "MYAGENT_CONTROL_PLANE_DOMAIN",
        help_heading = "TLS"
    )]
    pub control_plane_domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned human-readable tables.
    Table,
    /// JSON shaped like the REST API's responses.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register an agent service (status `stopped` until started).
    Register(RegisterArgs),
    /// Start a service (managed: launch its process; external: admit it to routing).
    Start(ServiceArg),
    /// Stop a service (managed: SIGTERM, then SIGKILL after the grace period).
    Stop(ServiceArg),
    /// Restart a service, optionally warning connected clients first.
    Restart(RestartArgs),
    /// List services.
    List(ListArgs),
    /// Show everything about one service: config, stats, health, runtime, proxy sync.
    Show(ServiceArg),
    /// Remove a service (stops it first when running).
    Remove(ServiceArg),
    /// Update a service's configuration (only the given fields change).
    Config(ConfigArgs),
    /// Overall statistics of the cluster.
    Status,
    /// Live view of services: full screen (q, Esc or Ctrl-C quits), or a snapshot per interval when stdout is not a terminal.
    Monitor(MonitorArgs),
    /// Show a service's logs, or follow them as they are written.
    Logs(LogsArgs),
    /// Run a health check now (or show the history with --history).
    HealthCheck(HealthCheckArgs),
    /// List client connections across all proxies.
    Connections(ConnectionsArgs),
    /// Disconnect a client connection (the client is notified unless --no-notify).
    Disconnect(DisconnectArgs),
    /// Send a management notification to connected clients.
    Notify(NotifyArgs),
    /// Manage routing rules.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Run the whole stack locally in one process: control plane (embedded store), proxy, gateway.
    Up(UpArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArg {
    /// Service name or id.
    pub service: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Without PATH the service is external: an already running endpoint at \
    HOST:PORT that is only health-checked and proxied; start/stop admit or withdraw it from routing.\n\n\
    Example:\n  myagent-manager register weather-agent ./agents/weather_agent.py \\\n      \
    --port 8081 --tags weather,info --max-sessions 100"
)]
pub struct RegisterArgs {
    /// Service name (1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit).
    pub name: String,
    /// Agent program (`.py` runs with python3, else executed directly); omit for an external service.
    pub path: Option<PathBuf>,
    /// Port the agent listens on (1-65535).
    #[arg(long, env = "MYAGENT_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Host the agent listens on.
    #[arg(long, env = "MYAGENT_HOST", default_value = "localhost")]
    pub host: String,
    /// Tags, comma separated (repeatable).
    #[arg(long, env = "MYAGENT_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Free-text description.
    #[arg(long, env = "MYAGENT_DESCRIPTION", default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Seconds to wait until every proxy has applied the change.
    #[arg(long, env = "MYAGENT_WAIT_FOR_SYNC", default_value_t = 0.0)]
    pub wait_for_sync: f64,
}

/// Service configuration flags shared by `register` and `config`.
#[derive(Debug, Default, Args)]
pub struct ConfigFlags {
    /// Maximum concurrent (non-completed) sessions.
    #[arg(long, env = "MYAGENT_MAX_SESSIONS")]
    pub max_sessions: Option<u32>,
    /// Seconds a session stays resumable after its last connection closed.
    #[arg(long, env = "MYAGENT_SESSION_TIMEOUT")]
    pub session_timeout: Option<u32>,
    /// Do not restart the process when it exits unexpectedly.
    #[arg(long, env = "MYAGENT_NO_AUTO_RESTART")]
    pub no_auto_restart: bool,
    /// Disable periodic health checks.
    #[arg(long, env = "MYAGENT_NO_HEALTH_CHECK")]
    pub no_health_check: bool,
    /// Weight for the `weighted` strategy (1-1000).
    #[arg(long, env = "MYAGENT_WEIGHT")]
    pub weight: Option<u32>,
    /// Extra environment for the process, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Extra argument for the process (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Working directory of the process.
    #[arg(long, env = "MYAGENT_WORKING_DIR")]
    pub working_dir: Option<String>,
    /// Seconds between health checks.
    #[arg(long, env = "MYAGENT_HEALTH_CHECK_INTERVAL")]
    pub health_check_interval: Option<f64>,
    /// Do not wrap client messages in the proxy_metadata envelope.
    #[arg(long, env = "MYAGENT_NO_PROXY_METADATA")]
    pub no_proxy_metadata: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Service name or id.
    pub service: String,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Turn automatic restarts back on.
    #[arg(long, conflicts_with = "no_auto_restart")]
    pub auto_restart: bool,
    /// Turn health checks back on.
    #[arg(long, conflicts_with = "no_health_check")]
    pub health_check: bool,
    /// Seconds to wait until every proxy has applied the change.
    #[arg(long, env = "MYAGENT_WAIT_FOR_SYNC", default_value_t = 0.0)]
    pub wait_for_sync: f64,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Service name or id.
    pub service: String,
    /// Notify connected clients and wait this many seconds before restarting.
    #[arg(long, env = "MYAGENT_GRACE_SECONDS")]
    pub grace_seconds: Option<u32>,
    /// Text of the maintenance notification sent to clients.
    #[arg(long, env = "MYAGENT_MESSAGE", default_value = "")]
    pub message: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only services carrying this tag.
    #[arg(long, env = "MYAGENT_TAG")]
    pub tag: Option<String>,
    /// Only services in this status.
    #[arg(long, env = "MYAGENT_STATUS", value_parser = SERVICE_STATUSES)]
    pub status: Option<String>,
    /// Page size (server default 100, max 1000).
    #[arg(long, env = "MYAGENT_LIMIT")]
    pub limit: Option<u32>,
    /// Services to skip.
    #[arg(long, env = "MYAGENT_OFFSET", default_value_t = 0)]
    pub offset: u32,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Show only this service (name or id), with its details.
    #[arg(long, env = "MYAGENT_SERVICE")]
    pub service: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, env = "MYAGENT_INTERVAL", default_value_t = 2.0, value_parser = positive_seconds)]
    pub interval: f64,
    /// Stop after this many refreshes (default: until q / Ctrl-C). Without a terminal the
    /// monitor prints each refresh as text, or as one JSON object per line with `--output json`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service name or id.
    pub service: String,
    /// Keep printing new lines as they are written (Ctrl-C stops).
    #[arg(long, short = 'f', env = "MYAGENT_FOLLOW")]
    pub follow: bool,
    /// Minimum level.
    #[arg(long, env = "MYAGENT_LEVEL", ignore_case = true, value_parser = log_levels())]
    pub level: Option<String>,
    /// Number of (newest) lines to show.
    #[arg(long, env = "MYAGENT_LIMIT")]
    pub limit: Option<u32>,
    /// Only lines since this time: RFC 3339 (2024-01-01T10:00:00Z) or an age like 30s, 10m, 2h, 1d.
    #[arg(long, env = "MYAGENT_SINCE", value_parser = timeparse::parse_since)]
    pub since: Option<prost_types::Timestamp>,
}

#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    /// Service name or id.
    pub service: String,
    /// Show the check history (newest first) instead of running a check.
    #[arg(long, env = "MYAGENT_HISTORY")]
    pub history: bool,
    /// Number of history entries.
    #[arg(long, env = "MYAGENT_LIMIT")]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    /// Only connections to this service (name or id).
    #[arg(long, env = "MYAGENT_SERVICE")]
    pub service: Option<String>,
    /// Connections in this status: active (the default, seed §3.3 "view active connections"),
    /// closed, or all.
    #[arg(long, env = "MYAGENT_STATUS", default_value = "active", value_parser = CONNECTION_STATUSES)]
    pub status: String,
    /// Maximum number of connections shown.
    #[arg(long, env = "MYAGENT_LIMIT")]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Connection id.
    pub connection_id: String,
    /// Reason given to the client.
    #[arg(
        long,
        env = "MYAGENT_REASON",
        default_value = "Administrative disconnect"
    )]
    pub reason: String,
    /// Close without sending the client a `connection_closed` event first.
    #[arg(long, env = "MYAGENT_NO_NOTIFY")]
    pub no_notify: bool,
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Only clients of this service (name or id); default every connected client.
    #[arg(long, env = "MYAGENT_SERVICE")]
    pub service: Option<String>,
    /// Notification type, e.g. maintenance_window.
    #[arg(long = "type", env = "MYAGENT_TYPE")]
    pub kind: String,
    /// Notification text.
    #[arg(long, env = "MYAGENT_MESSAGE")]
    pub message: String,
    /// Severity.
    #[arg(long, env = "MYAGENT_SEVERITY", default_value = "info", value_parser = SEVERITIES)]
    pub severity: String,
    /// Seconds until the announced event.
    #[arg(long, env = "MYAGENT_COUNTDOWN")]
    pub countdown: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Create a routing rule.
    Create(RouteCreateArgs),
    /// List routing rules (highest priority first).
    List(RouteListArgs),
    /// Show one routing rule.
    Show(RuleArg),
    /// Update a routing rule (only the given fields change).
    Update(RouteUpdateArgs),
    /// Delete a routing rule.
    Delete(RuleArg),
}

#[derive(Debug, Args)]
pub struct RuleArg {
    /// Rule name or id.
    pub rule: String,
}

#[derive(Debug, Args)]
#[command(after_help = CONDITION_HELP)]
pub struct RouteCreateArgs {
    /// Rule name (unique).
    pub name: String,
    /// Condition, all must match (repeatable); see the grammar below.
    #[arg(long = "condition", value_name = "CONDITION", value_parser = condition::parse_arg)]
    pub conditions: Vec<myagent_proto::v1::Condition>,
    /// Tag the target services must carry (repeatable or comma separated).
    #[arg(long = "target-tag", value_name = "TAG", value_delimiter = ',')]
    pub target_tags: Vec<String>,
    /// Load-balancing strategy among the candidates.
    #[arg(long, env = "MYAGENT_STRATEGY", default_value = "least_connections", value_parser = STRATEGIES)]
    pub strategy: String,
    /// Higher priority rules are tried first.
    #[arg(
        long,
        env = "MYAGENT_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i32,
    /// Create the rule disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Free-text description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// consistent_hash key: `session_id` (default) or a condition field such as header.x-user-id.
    #[arg(long, default_value = "")]
    pub hash_key: String,
    /// Seconds to wait until every proxy has applied the change.
    #[arg(long, env = "MYAGENT_WAIT_FOR_SYNC", default_value_t = 0.0)]
    pub wait_for_sync: f64,
}

#[derive(Debug, Args)]
pub struct RouteListArgs {
    /// Only enabled (true) or disabled (false) rules.
    #[arg(long, env = "MYAGENT_ENABLED")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Args)]
#[command(after_help = CONDITION_HELP)]
pub struct RouteUpdateArgs {
    /// Rule name or id.
    pub rule: String,
    /// New name.
    #[arg(long = "name")]
    pub new_name: Option<String>,
    /// Replace the conditions (repeatable); see the grammar below.
    #[arg(long = "condition", value_name = "CONDITION", value_parser = condition::parse_arg)]
    pub conditions: Vec<myagent_proto::v1::Condition>,
    /// Remove every condition (the rule then matches every connection).
    #[arg(long, conflicts_with = "conditions")]
    pub clear_conditions: bool,
    /// Replace the target tags (repeatable or comma separated).
    #[arg(long = "target-tag", value_name = "TAG", value_delimiter = ',')]
    pub target_tags: Vec<String>,
    /// New strategy.
    #[arg(long, value_parser = STRATEGIES)]
    pub strategy: Option<String>,
    /// New priority.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Enable the rule.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the rule.
    #[arg(long)]
    pub disable: bool,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// New consistent_hash key.
    #[arg(long)]
    pub hash_key: Option<String>,
    /// Seconds to wait until every proxy has applied the change.
    #[arg(long, env = "MYAGENT_WAIT_FOR_SYNC", default_value_t = 0.0)]
    pub wait_for_sync: f64,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Control-plane gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "MYAGENT_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// WebSocket proxy listen address (clients connect to ws://ADDR/ws).
    #[arg(long, env = "MYAGENT_PROXY_LISTEN", default_value = "0.0.0.0:8080")]
    pub proxy_listen: SocketAddr,
    /// REST gateway listen address (/api/v1).
    #[arg(long, env = "MYAGENT_GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub gateway_listen: SocketAddr,
    /// Directory of the embedded store, logs and the proxy's config cache.
    #[arg(long, env = "MYAGENT_DATA_DIR", default_value = "./.myagent")]
    pub data_dir: PathBuf,
    /// Control-plane admin listen address (/healthz, /readyz, /metrics); default a free loopback port.
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE_ADMIN_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub control_plane_admin_listen: SocketAddr,
    /// Proxy admin listen address (/healthz, /readyz, /metrics); default a free loopback port.
    #[arg(
        long,
        env = "MYAGENT_PROXY_ADMIN_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub proxy_admin_listen: SocketAddr,
    /// File with admin bearer tokens, one a line (default: open access).
    #[arg(long, env = "MYAGENT_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

/// Longest `--timeout` / `--interval`: a year (longer ones cannot be a timer).
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds above 0 and at most {MAX_SECONDS}"
        )),
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}
