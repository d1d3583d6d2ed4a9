//! Command-line flags and their MYAGENT_* environment twins.
//!
//! Precedence: flags > environment > defaults. `Cli` is parsed once (by `main`, or by other
//! crates with `Cli::try_parse_from`) and turned into a checked `Settings` by `Cli::settings`;
//! every problem found there is an `INVALID_REQUEST` naming the flag, which `main` maps to exit
//! code 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::auth::Tokens;
use crate::error::{Error, Result};
use crate::store::StoreConfig;

/// Exit code for usage and configuration errors (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A file under --data-dir (one machine, one replica).
    Embedded,
    /// An etcd cluster (several replicas).
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// myagent control plane: service registry, routing rules, supervisor and config stream.
#[derive(Debug, Clone, Parser)]
#[command(name = "myagent-control-plane", version, about)]
pub struct Cli {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(
        long,
        env = "MYAGENT_LISTEN",
        default_value = "127.0.0.1:50051",
        help_heading = "Listeners"
    )]
    pub listen: SocketAddr,

    /// HTTP admin listen address: /healthz, /readyz, /metrics.
    #[arg(
        long,
        env = "MYAGENT_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091",
        help_heading = "Listeners"
    )]
    pub admin_listen: SocketAddr,

    /// State store backend.
    #[arg(
        long,
        env = "MYAGENT_STORE",
        value_enum,
        default_value = "embedded",
        help_heading = "Store"
    )]
    pub store: StoreKind,

    /// Directory for local files (the embedded store, logs).
    #[arg(
        long,
        env = "MYAGENT_DATA_DIR",
        default_value = "./.myagent",
        help_heading = "Store"
    )]
    pub data_dir: PathBuf,

    /// etcd endpoints (comma-separated).
    #[arg(
        long,
        env = "MYAGENT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        help_heading = "Store"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix of every key the control plane writes in etcd.
    #[arg(
        long,
        env = "MYAGENT_ETCD_PREFIX",
        default_value = "/myagent/",
        help_heading = "Store"
    )]
    pub etcd_prefix: String,

    /// Deadline of each etcd request (e.g. 500ms, 2s, 1m), so an unreachable etcd answers
    /// STORE_UNAVAILABLE promptly.
    #[arg(long, env = "MYAGENT_ETCD_TIMEOUT", default_value = "2s", value_parser = parse_duration, help_heading = "Store")]
    pub etcd_timeout: Duration,

    /// File with bearer tokens, one a line (`#` starts a comment). With tokens, every gRPC call
    /// except health and reflection needs `authorization: Bearer <token>`.
    #[arg(long, env = "MYAGENT_AUTH_TOKEN_FILE", help_heading = "Security")]
    pub auth_token_file: Option<PathBuf>,

    /// Bearer tokens, comma- or newline-separated (prefer the environment variable: command
    /// lines are visible to other users).
    #[arg(
        long,
        env = "MYAGENT_AUTH_TOKENS",
        hide_env_values = true,
        help_heading = "Security"
    )]
    pub auth_tokens: Option<String>,

    /// PEM certificate chain for TLS on the gRPC listener.
    #[arg(
        long,
        env = "MYAGENT_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "MYAGENT_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mTLS). Needs --tls-cert.
    #[arg(
        long,
        env = "MYAGENT_TLS_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA bundle that verifies other replicas' certificates when this replica forwards a
    /// call to the leader over https (default: --tls-client-ca, else the --tls-cert chain).
    /// Needs --tls-cert, whose identity is presented to the leader.
    #[arg(
        long,
        env = "MYAGENT_TLS_PEER_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_peer_ca: Option<PathBuf>,

    /// Time between the leader's statistics samples: the finest time-series resolution and the
    /// shortest `interval` a time-series query accepts (e.g. 10s, 1s, 500ms).
    #[arg(long, env = "MYAGENT_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration, help_heading = "Statistics")]
    pub stats_interval: Duration,

    /// Identity of this replica in leader election and logs (default: random).
    #[arg(long, env = "MYAGENT_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// gRPC URL other replicas use to reach this one (published in the leader record; followers
    /// forward Logs calls there). Default: the bound gRPC address (https with --tls-cert); a
    /// wildcard bind (0.0.0.0, ::) advertises this machine's hostname.
    #[arg(long, env = "MYAGENT_ADVERTISE_URL", help_heading = "Listeners")]
    pub advertise_url: Option<String>,

    /// Size at which a service's current log file is rotated (bytes; K, M, G, KiB, MiB, GiB
    /// suffixes accepted).
    #[arg(long, env = "MYAGENT_LOG_MAX_FILE_BYTES", default_value = "10MiB", value_parser = parse_size, help_heading = "Agent logs")]
    pub log_max_file_bytes: u64,

    /// Log files kept per service, the current one included; the oldest is deleted on rotation.
    #[arg(
        long,
        env = "MYAGENT_LOG_MAX_FILES",
        default_value = "5",
        help_heading = "Agent logs"
    )]
    pub log_max_files: usize,

    /// Log format.
    #[arg(long, env = "MYAGENT_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// Check the configuration (flags, token file, TLS files) and exit without serving.
    #[arg(long, env = "MYAGENT_VALIDATE_ONLY")]
    pub validate_only: bool,
}

/// PEM material for the gRPC listener.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
    /// Trust roots for other replicas (`--tls-peer-ca`).
    pub peer_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub tokens: Tokens,
    pub tls: Option<TlsSettings>,
    pub replica_id: String,
    /// `--advertise-url` as given (checked); `None`: derived from the bound address.
    pub advertise_url: Option<String>,
    pub stats: crate::stats::SamplerConfig,
    /// Rotation and retention of agent logs.
    pub logs: crate::logs::LogConfig,
}

impl Cli {
    /// Reads the files the flags name and checks everything; errors name the flag.
    pub fn settings(&self) -> Result<Settings> {
        let store = match self.store {
            StoreKind::Embedded => StoreConfig::Embedded {
                data_dir: self.data_dir.clone(),
            },
            StoreKind::Etcd => {
                let endpoints: Vec<String> = self
                    .etcd_endpoints
                    .iter()
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect();
                if endpoints.is_empty() {
                    return Err(Error::invalid(
                        "--etcd-endpoints",
                        "at least one etcd endpoint is required",
                    ));
                }
                if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
                    return Err(Error::invalid(
                        "--etcd-prefix",
                        format!("prefix '{}' must start and end with '/'", self.etcd_prefix),
                    ));
                }
                if self.etcd_timeout.is_zero() {
                    return Err(Error::invalid(
                        "--etcd-timeout",
                        "timeout must be greater than zero",
                    ));
                }
                StoreConfig::Etcd {
                    endpoints,
                    prefix: self.etcd_prefix.clone(),
                    request_timeout: self.etcd_timeout,
                }
            }
        };
        let tokens = Tokens::load(self.auth_token_file.as_deref(), self.auth_tokens.as_deref())?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert: read_pem("--tls-cert", cert)?,
                key: read_pem("--tls-key", key)?,
                client_ca: self
                    .tls_client_ca
                    .as_ref()
                    .map(|ca| read_pem("--tls-client-ca", ca))
                    .transpose()?,
                peer_ca: self
                    .tls_peer_ca
                    .as_ref()
                    .map(|ca| read_pem("--tls-peer-ca", ca))
                    .transpose()?,
            }),
            _ => None,
        };
        let replica_id = match &self.replica_id {
            Some(id) if id.trim().is_empty() => {
                return Err(Error::invalid(
                    "--replica-id",
                    "replica id must not be empty",
                ))
            }
            Some(id) => id.trim().to_string(),
            None => format!("cp-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        if self.stats_interval < Duration::from_millis(100)
            || self.stats_interval > Duration::from_secs(3600)
        {
            return Err(Error::invalid(
                "--stats-interval",
                "stats interval must be between 100ms and 1h",
            ));
        }
        if self.log_max_file_bytes < MIN_LOG_FILE_BYTES {
            return Err(Error::invalid(
                "--log-max-file-bytes",
                format!("log files must be allowed at least {MIN_LOG_FILE_BYTES} bytes"),
            ));
        }
        if !(1..=1000).contains(&self.log_max_files) {
            return Err(Error::invalid(
                "--log-max-files",
                "between 1 and 1000 log files per service",
            ));
        }
        let advertise_url = self
            .advertise_url
            .as_deref()
            .map(|u| check_url("--advertise-url", u))
            .transpose()?;
        Ok(Settings {
            listen: self.listen,
            admin_listen: self.admin_listen,
            store,
            data_dir: self.data_dir.clone(),
            tokens,
            tls,
            replica_id,
            advertise_url,
            stats: crate::stats::SamplerConfig {
                interval: self.stats_interval,
            },
            logs: crate::logs::LogConfig {
                max_file_bytes: self.log_max_file_bytes,
                max_files: self.log_max_files,
            },
        })
    }
}

/// Smallest accepted `--log-max-file-bytes`: one long line (16 KiB) must fit in a file.
pub const MIN_LOG_FILE_BYTES: u64 = 1024;

/// An `http://` or `https://` URL with a host (trailing `/` removed).
fn check_url(flag: &str, url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            Error::invalid(flag, format!("'{url}' must start with http:// or https://"))
        })?;
    if rest.is_empty() || rest.contains('/') || url.parse::<http::Uri>().is_err() {
        return Err(Error::invalid(
            flag,
            format!("'{url}' is not a URL of the form http(s)://host:port"),
        ));
    }
    Ok(url.to_string())
}

/// The URL other replicas reach this one at: `advertised`, else `listen` as bound (a wildcard
/// address becomes this machine's hostname, which peers on other hosts can resolve; loopback
/// stays loopback).
pub fn advertise_url(advertised: Option<&str>, bound: SocketAddr, tls: bool) -> String {
    if let Some(u) = advertised {
        return u.to_string();
    }
    let scheme = if tls { "https" } else { "http" };
    let host = if bound.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_string())
    } else {
        match bound.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// `1048576`, `512K`, `10M`, `1G`, `64KiB`, `10MiB`, `1GiB` (K/M/G are powers of 1024 too:
/// log sizes are file sizes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}' (examples: 1048576, 512KiB, 10MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in '{s}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid(flag, format!("cannot read {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(Error::invalid(
            flag,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(bytes)
}

/// `500ms`, `2s`, `1m`, or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (examples: 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let cli = Cli::try_parse_from(["myagent-control-plane"]).unwrap();
        assert_eq!(cli.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(cli.admin_listen.to_string(), "127.0.0.1:9091");
        assert_eq!(cli.store, StoreKind::Embedded);
        assert_eq!(cli.data_dir, PathBuf::from("./.myagent"));
        assert_eq!(
            cli.etcd_endpoints,
            vec!["http://127.0.0.1:2379".to_string()]
        );
        assert_eq!(cli.etcd_prefix, "/myagent/");
        assert_eq!(cli.etcd_timeout, Duration::from_secs(2));
    }

    #[test]
    fn etcd_endpoints_are_a_comma_list() {
        let cli = Cli::try_parse_from([
            "x",
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--etcd-timeout",
            "500ms",
        ])
        .unwrap();
        let s = cli.settings().unwrap();
        match s.store {
            StoreConfig::Etcd {
                endpoints,
                request_timeout,
                ..
            } => {
                assert_eq!(endpoints, vec!["http://a:1", "http://b:2"]);
                assert_eq!(request_timeout, Duration::from_millis(500));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_prefix_names_the_flag() {
        let cli = Cli::try_parse_from(["x", "--store", "etcd", "--etcd-prefix", "nope"]).unwrap();
        match cli.settings() {
            Err(Error::InvalidRequest { field, .. }) => assert_eq!(field, "--etcd-prefix"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn log_rotation_flags() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let s = cli.settings().unwrap();
        assert_eq!(s.logs.max_file_bytes, 10 * 1024 * 1024);
        assert_eq!(s.logs.max_files, 5);
        let cli =
            Cli::try_parse_from(["x", "--log-max-file-bytes", "64KiB", "--log-max-files", "2"])
                .unwrap();
        let s = cli.settings().unwrap();
        assert_eq!((s.logs.max_file_bytes, s.logs.max_files), (65536, 2));
        for (flag, v) in [("--log-max-file-bytes", "10"), ("--log-max-files", "0")] {
            let cli = Cli::try_parse_from(["x", flag, v]).unwrap();
            match cli.settings() {
                Err(Error::InvalidRequest { field, .. }) => assert_eq!(field, flag),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["x", "--log-max-file-bytes", "5 parsecs"]).is_err());
        assert_eq!(parse_size("2000").unwrap(), 2000);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
    }

    #[test]
    fn advertise_url_defaults_and_checks() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(advertise_url(None, a, false), "http://127.0.0.1:7000");
        assert_eq!(advertise_url(None, a, true), "https://127.0.0.1:7000");
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let u = advertise_url(None, any, false);
        assert!(
            u.starts_with("http://") && u.ends_with(":7000") && !u.contains("0.0.0.0"),
            "{u}"
        );
        let cli =
            Cli::try_parse_from(["x", "--advertise-url", "http://cp-1.internal:50051/"]).unwrap();
        assert_eq!(
            cli.settings().unwrap().advertise_url.as_deref(),
            Some("http://cp-1.internal:50051")
        );
        let cli = Cli::try_parse_from(["x", "--advertise-url", "cp-1:50051"]).unwrap();
        match cli.settings() {
            Err(Error::InvalidRequest { field, .. }) => assert_eq!(field, "--advertise-url"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("3y").is_err());
    }
}
