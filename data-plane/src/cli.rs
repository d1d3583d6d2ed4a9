//! Command-line and environment configuration of `myagent-proxy` (every flag has a `MYAGENT_*` twin).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// WebSocket proxy of myagent-manager: routes `/ws` clients to agent services using the config
/// streamed from the control plane.
#[derive(Parser, Debug, Clone)]
#[command(name = "myagent-proxy", version, about)]
pub struct Cli {
    /// Client-facing WebSocket listener (path `/ws`).
    #[arg(
        long,
        env = "MYAGENT_LISTEN",
        default_value = "0.0.0.0:8080",
        help_heading = "Listeners"
    )]
    pub listen: SocketAddr,

    /// Admin HTTP listener: `/healthz`, `/readyz`, `/metrics`.
    #[arg(
        long,
        env = "MYAGENT_ADMIN_LISTEN",
        default_value = "127.0.0.1:9092",
        help_heading = "Listeners"
    )]
    pub admin_listen: SocketAddr,

    /// Address this proxy advertises to the control plane (defaults to the bound listen address).
    #[arg(long, env = "MYAGENT_ADVERTISE_ADDRESS", help_heading = "Listeners")]
    pub advertise_address: Option<String>,

    /// Control-plane gRPC URLs (comma list); tried in turn.
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051",
        help_heading = "Control plane"
    )]
    pub control_plane: Vec<String>,

    /// Node id of this proxy (default: `<hostname>-<random>`, stored in the data dir so it
    /// survives restarts).
    #[arg(long, env = "MYAGENT_NODE_ID", help_heading = "Control plane")]
    pub node_id: Option<String>,

    /// Directory for the node id and the last good config (`config-cache.pb`).
    #[arg(
        long,
        env = "MYAGENT_DATA_DIR",
        default_value = "./.myagent/proxy",
        help_heading = "Control plane"
    )]
    pub data_dir: PathBuf,

    /// Bearer token presented on the config stream.
    #[arg(
        long,
        env = "MYAGENT_TOKEN",
        hide_env_values = true,
        help_heading = "Control plane"
    )]
    pub token: Option<String>,

    /// How often batched connection/session reports are sent.
    #[arg(long, env = "MYAGENT_REPORT_INTERVAL", default_value = "500ms", value_parser = parse_duration, help_heading = "Control plane")]
    pub report_interval: Duration,

    /// PEM certificate chain: serve clients over TLS (`wss://`) on --listen (requires --tls-key).
    #[arg(
        long,
        env = "MYAGENT_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "MYAGENT_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA used to verify the control plane's TLS certificate (https:// URLs).
    #[arg(long, env = "MYAGENT_CONTROL_PLANE_CA", help_heading = "TLS")]
    pub control_plane_ca: Option<PathBuf>,

    /// PEM client certificate for mTLS to the control plane.
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE_CLIENT_CERT",
        requires = "control_plane_client_key",
        help_heading = "TLS"
    )]
    pub control_plane_client_cert: Option<PathBuf>,

    /// PEM private key for mTLS to the control plane.
    #[arg(
        long,
        env = "MYAGENT_CONTROL_PLANE_CLIENT_KEY",
        requires = "control_plane_client_cert",
        help_heading = "TLS"
    )]
    pub control_plane_client_key: Option<PathBuf>,

    /// Largest accepted WebSocket frame payload (bytes); larger → close 1009.
    #[arg(long, env = "MYAGENT_MAX_FRAME_BYTES", default_value_t = 1 << 20, help_heading = "Limits")]
    pub max_frame_bytes: usize,

    /// Largest accepted (reassembled) WebSocket message (bytes); larger → close 1009.
    #[arg(long, env = "MYAGENT_MAX_MESSAGE_BYTES", default_value_t = 4 << 20, help_heading = "Limits")]
    pub max_message_bytes: usize,

    /// Largest frame payload accepted from an agent (bytes). Agents' frames are relayed as they
    /// are and may be larger than the client messages they answer (the envelope alone adds
    /// some 250 bytes); larger → the connection ends with close 1011, without failover.
    #[arg(long, env = "MYAGENT_MAX_AGENT_FRAME_BYTES", default_value_t = 16 << 20, help_heading = "Limits")]
    pub max_agent_frame_bytes: usize,

    /// Largest (reassembled) message accepted from an agent (bytes).
    #[arg(long, env = "MYAGENT_MAX_AGENT_MESSAGE_BYTES", default_value_t = 16 << 20, help_heading = "Limits")]
    pub max_agent_message_bytes: usize,

    /// Client frames held per connection while an upstream switch is under way.
    #[arg(
        long,
        env = "MYAGENT_CLIENT_BUFFER_FRAMES",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub client_buffer_frames: usize,

    /// Client bytes held per connection while an upstream switch is under way.
    #[arg(long, env = "MYAGENT_CLIENT_BUFFER_BYTES", default_value_t = 8 << 20, help_heading = "Limits")]
    pub client_buffer_bytes: usize,

    /// Concurrent client connections on this proxy; beyond it the upgrade gets HTTP 503.
    #[arg(
        long,
        env = "MYAGENT_MAX_CONNECTIONS",
        default_value_t = 100_000,
        help_heading = "Limits"
    )]
    pub max_connections: usize,

    /// A connection with no message in either direction for this long is closed (0 = never).
    #[arg(long, env = "MYAGENT_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration, help_heading = "Limits")]
    pub idle_timeout: Duration,

    /// Upstream connect (TCP + WebSocket handshake) timeout.
    #[arg(long, env = "MYAGENT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, help_heading = "Limits")]
    pub connect_timeout: Duration,

    /// Longest wait for an agent's close during a planned switch when the service sets none.
    #[arg(long, env = "MYAGENT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Limits")]
    pub drain_timeout: Duration,

    /// Event-loop threads serving client connections: each a single-threaded event loop accepting
    /// on the shared listener, its connections and their upstreams staying on it (like nginx
    /// workers; no cross-thread wake-ups on the relay path). 0 = one per CPU.
    #[arg(
        long,
        env = "MYAGENT_WORKER_THREADS",
        default_value_t = 0,
        help_heading = "Limits"
    )]
    pub worker_threads: usize,

    /// Grace period for open connections at shutdown before they are cut.
    #[arg(long, env = "MYAGENT_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration, help_heading = "Limits")]
    pub shutdown_grace: Duration,
}

impl Cli {
    /// The same defaults as the binary, with the given addresses; for embedding (`up`, tests).
    pub fn for_addrs(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        control_plane: &[String],
        data_dir: PathBuf,
    ) -> Self {
        let mut args = vec![
            "myagent-proxy".to_string(),
            format!("--listen={listen}"),
            format!("--admin-listen={admin_listen}"),
            format!("--data-dir={}", data_dir.display()),
        ];
        if !control_plane.is_empty() {
            args.push(format!("--control-plane={}", control_plane.join(",")));
        }
        // Only flags we built ourselves: parsing cannot fail. Environment variables of the host
        // still apply, as for the binary.
        Self::parse_from(args)
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let cli = Cli::try_parse_from(["myagent-proxy"]).unwrap();
        assert_eq!(cli.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.admin_listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            cli.control_plane,
            vec!["http://127.0.0.1:50051".to_string()]
        );
        assert_eq!(cli.max_frame_bytes, 1 << 20);
        assert_eq!(cli.report_interval, Duration::from_millis(500));
    }

    #[test]
    fn control_plane_is_a_comma_list() {
        let cli = Cli::try_parse_from(["p", "--control-plane", "http://a:1,http://b:2"]).unwrap();
        assert_eq!(cli.control_plane, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
