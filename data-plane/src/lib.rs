//! myagent-proxy: the data plane. A WebSocket proxy on `/ws` that routes clients to agent
//! services by the config streamed from the control plane (DESIGN §2, §5, §6).
//!
//! Entry points: [`bind`] the listeners, then [`Bound::run`] until the token is cancelled.

pub mod admin;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod conn;
pub mod control;
pub mod envelope;
pub mod error;
pub mod events;
pub mod handshake;
pub mod json;
pub mod load;
pub mod metrics;
pub mod routing;
pub mod rt;
pub mod rules;
pub mod server;
pub mod sessions;
pub mod snapshot;
pub mod state;
pub mod strategy;
pub mod timer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cli::Cli;
pub use error::{Error, Result};
use snapshot::Snapshot;
use state::{Settings, Shared};

/// Listeners bound, state built; not serving yet.
pub struct Bound {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    listener: TcpListener,
    /// TLS for client connections (`--tls-cert`/`--tls-key`).
    client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// Event-loop threads for client connections (resolved: at least 1).
    worker_threads: usize,
    admin: TcpListener,
    shared: Arc<Shared>,
    control: control::ControlClient,
    shutdown: CancellationToken,
}

/// A cheap handle on a running proxy (tests, `up`).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }
    pub fn config_version(&self) -> u64 {
        self.shared.config.borrow().version
    }
    /// Waits until the proxy holds at least config `version`.
    pub async fn wait_config_version(&self, version: u64) {
        let mut rx = self.shared.config.clone();
        let _ = rx.wait_for(|s| s.version >= version).await;
    }
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }
    pub fn control_plane_connected(&self) -> bool {
        self.shared.metrics.control_plane_connected.get() == 1
    }
}

/// Most event loops `--worker-threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// The flags whose values the parser alone cannot check.
fn validate(cli: &Cli) -> Result<()> {
    for url in cli
        .control_plane
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return Err(Error::InvalidConfig(format!(
                "--control-plane `{url}`: not an http:// or https:// URL"
            )));
        }
    }
    if let Some(id) = cli.node_id.as_deref().filter(|s| !s.is_empty()) {
        if !myagent_proto::valid_node_id(id) {
            return Err(Error::InvalidConfig(format!(
                "--node-id `{id}`: at most 128 of A-Z a-z 0-9 - _ . :"
            )));
        }
    }
    let positive = [
        ("--max-frame-bytes", cli.max_frame_bytes),
        ("--max-message-bytes", cli.max_message_bytes),
        ("--max-agent-frame-bytes", cli.max_agent_frame_bytes),
        ("--max-agent-message-bytes", cli.max_agent_message_bytes),
        ("--max-connections", cli.max_connections),
        ("--client-buffer-frames", cli.client_buffer_frames),
        ("--client-buffer-bytes", cli.client_buffer_bytes),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(Error::InvalidConfig(format!("{flag}: must be above 0")));
    }
    // A message is one frame or more: a frame limit above the message limit would raise the
    // message limit with it, unsaid.
    for (frame_flag, frame, message_flag, message) in [
        (
            "--max-frame-bytes",
            cli.max_frame_bytes,
            "--max-message-bytes",
            cli.max_message_bytes,
        ),
        (
            "--max-agent-frame-bytes",
            cli.max_agent_frame_bytes,
            "--max-agent-message-bytes",
            cli.max_agent_message_bytes,
        ),
    ] {
        if frame > message {
            return Err(Error::InvalidConfig(format!(
                "{frame_flag} ({frame}) is above {message_flag} ({message}): raise {message_flag} too"
            )));
        }
    }
    if cli.worker_threads > MAX_WORKER_THREADS {
        return Err(Error::InvalidConfig(format!(
            "--worker-threads: at most {MAX_WORKER_THREADS} (0 = one per CPU)"
        )));
    }
    if cli.connect_timeout.is_zero() {
        return Err(Error::InvalidConfig(
            "--connect-timeout: must be above 0".into(),
        ));
    }
    Ok(())
}

/// Raises the soft open-file limit towards the hard one when `--max-connections` needs it (two
/// sockets a connection, and some to spare), and warns when even that cannot hold them: the
/// configured limit would not be the effective one.
fn check_open_files(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if soft < want && hard > soft {
        let raised = want.min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
            soft = raised;
        }
    }
    if soft < want {
        tracing::warn!(
            max_connections,
            open_files = soft,
            "the open-file limit holds about {} connections, fewer than --max-connections; \
             raise it (ulimit -n, systemd LimitNOFILE=)",
            soft.saturating_sub(256) / 2
        );
    }
}

fn node_id(cli: &Cli) -> Result<String> {
    if let Some(id) = cli.node_id.as_ref().filter(|s| !s.is_empty()) {
        return Ok(id.clone());
    }
    let path = cli.data_dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "proxy".into());
    let id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::write(&path, &id).map_err(|e| Error::DataDir {
        path: path.display().to_string(),
        source: e,
    })?;
    Ok(id)
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Validates the config, creates the data dir, loads the cached config and binds both
/// listeners (port 0 allowed; read the addresses back from [`Bound`]).
pub async fn bind(cli: Cli) -> Result<Bound> {
    if cli.control_plane.iter().all(|u| u.trim().is_empty()) {
        return Err(Error::InvalidConfig(
            "--control-plane: at least one URL is required".into(),
        ));
    }
    if cli.report_interval < Duration::from_millis(10) {
        return Err(Error::InvalidConfig(
            "--report-interval: at least 10ms".into(),
        ));
    }
    validate(&cli)?;
    check_open_files(cli.max_connections);
    std::fs::create_dir_all(&cli.data_dir).map_err(|e| Error::DataDir {
        path: cli.data_dir.display().to_string(),
        source: e,
    })?;
    let node_id = node_id(&cli)?;
    let cache_path = cache::path(&cli.data_dir);
    let initial = match cache::load(&cache_path) {
        Ok(Some(s)) => {
            tracing::info!(
                version = s.version,
                services = s.services.len(),
                "loaded cached config; ready before the control plane answers"
            );
            s
        }
        Ok(None) => Snapshot::default(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable config cache");
            Snapshot::default()
        }
    };
    let tls = control::TlsFiles {
        ca: cli.control_plane_ca.clone(),
        client_cert: cli.control_plane_client_cert.clone(),
        client_key: cli.control_plane_client_key.clone(),
    }
    .build()?;
    let client_tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = bind_tcp("ws listener", cli.listen).await?;
    let admin = bind_tcp("admin listener", cli.admin_listen).await?;
    let listen_addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let shutdown = CancellationToken::new();
    let settings = Settings {
        node_id,
        max_frame_bytes: cli.max_frame_bytes,
        max_message_bytes: cli.max_message_bytes,
        max_agent_frame_bytes: cli.max_agent_frame_bytes,
        max_agent_message_bytes: cli.max_agent_message_bytes,
        client_buffer_frames: cli.client_buffer_frames,
        client_buffer_bytes: cli.client_buffer_bytes,
        max_connections: cli.max_connections,
        idle_timeout: cli.idle_timeout,
        connect_timeout: cli.connect_timeout,
        drain_timeout: cli.drain_timeout,
        report_interval: cli.report_interval,
        shutdown_grace: cli.shutdown_grace,
    };
    let shared = Arc::new(Shared {
        settings,
        config: config_rx,
        load: Default::default(),
        sessions: Default::default(),
        router: Default::default(),
        metrics: metrics::Metrics::new(),
        conns: Mutex::new(Default::default()),
        pending: Mutex::new(Default::default()),
        service_errors: Mutex::new(Default::default()),
        active: AtomicUsize::new(0),
        control_channel: RwLock::new(None),
        token: cli.token.clone().filter(|t| !t.is_empty()),
        report_soon: tokio::sync::Notify::new(),
        shutdown: shutdown.clone(),
    });
    shared
        .metrics
        .config_version
        .set(shared.config.borrow().version as i64);
    let address = cli
        .advertise_address
        .clone()
        .unwrap_or_else(|| listen_addr.to_string());
    let control = control::ControlClient {
        shared: shared.clone(),
        urls: cli
            .control_plane
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect(),
        tls,
        config_tx,
        cache_path,
        address,
    };
    Ok(Bound {
        listen_addr,
        admin_addr,
        listener,
        client_tls,
        worker_threads: match cli.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        admin,
        shared,
        control,
        shutdown,
    })
}

impl Bound {
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `stop` is cancelled, then shuts down in order: stop accepting, stop the
    /// config client, close every WebSocket (1001) and wait for them up to the grace period.
    pub async fn run(self, stop: CancellationToken) -> Result<()> {
        let Bound {
            listener,
            client_tls,
            worker_threads,
            admin,
            shared,
            control,
            shutdown,
            listen_addr,
            admin_addr,
        } = self;
        tracing::info!(ws = %listen_addr, admin = %admin_addr, node_id = %shared.settings.node_id, "myagent-proxy serving");
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();

        let control_task = tokio::spawn(control.run(background.clone()));
        let admin_task = {
            let app = admin::router(shared.clone());
            let bg = background.clone();
            tokio::spawn(async move {
                let _ = axum::serve(admin, app)
                    .with_graceful_shutdown(bg.cancelled_owned())
                    .await;
            })
        };
        let accept_stop = CancellationToken::new();
        let workers = server::spawn_workers(
            worker_threads,
            listener,
            client_tls,
            shared.clone(),
            tracker.clone(),
            accept_stop.clone(),
        );
        let workers = match workers {
            Ok(w) => w,
            Err(e) => {
                background.cancel();
                return Err(e);
            }
        };

        stop.cancelled().await;
        tracing::info!("shutting down: no new connections");
        accept_stop.cancel();
        shutdown.cancel(); // every connection sends 1001 and finishes its close handshake
        tracker.close();
        if tokio::time::timeout(shared.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
        workers.finish().await;
        background.cancel();
        let _ = control_task.await;
        let _ = admin_task.await;
        Ok(())
    }
}

/// Binds and runs until SIGINT/SIGTERM; prints the bound addresses for harnesses.
pub async fn run(cli: Cli) -> Result<()> {
    let bound = bind(cli).await?;
    #[allow(clippy::print_stdout)]
    {
        // The one line harnesses (and `up`) read to learn the ports.
        println!(
            "myagent-proxy listening ws={} admin={}",
            bound.listen_addr, bound.admin_addr
        );
    }
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        wait_signal().await;
        s2.cancel();
    });
    bound.run(stop).await
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Path helper for callers that want the cache file of a data dir.
pub fn cache_file(data_dir: &Path) -> std::path::PathBuf {
    cache::path(data_dir)
}
