//! Bind every listener, then run: the control plane process composed from its modules.
//!
//! `bind` opens the store and both listeners (port 0 allowed) and returns `Bound` with the real
//! addresses; `Bound::run` serves until the shutdown token fires, then shuts down in order:
//! health turns NOT_SERVING → the gRPC listener stops accepting and in-flight calls finish
//! (bounded by `GRPC_DRAIN`) → background loops stop (bounded by `BACKGROUND_DRAIN`) → the
//! admin port closes last, so probes see the drain. While serving, gRPC health follows the
//! store as `/readyz` does.
//!
//! Other modules plug in at two marked places: `add_grpc_services` (one `add_service` line and
//! its health name per gRPC service) and `spawn_background` (leader-only loops and watchers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use myagent_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::auth::AuthLayer;
use crate::config::{Cli, Settings};
use crate::context::Context;
use crate::election;
use crate::error::{Error, Result};
use crate::grpc;
use crate::health;
use crate::logs::LogHub;
use crate::metrics::{GrpcMetricsLayer, MeteredStore, Metrics};
use crate::store::{build_store, StoreConfig, StoreRef};
use crate::supervisor;

/// How long in-flight gRPC calls and streams may take to finish after shutdown begins.
pub const GRPC_DRAIN: Duration = Duration::from_secs(10);
/// How long background loops may take to stop.
pub const BACKGROUND_DRAIN: Duration = Duration::from_secs(10);

/// A control plane whose listeners are bound and whose store is open, not yet serving.
pub struct Bound {
    /// The gRPC address actually bound (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The admin HTTP address actually bound.
    pub admin_addr: SocketAddr,
    pub ctx: Context,
    settings: Settings,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    /// Leadership signal behind `ctx.is_leader`.
    leader_tx: watch::Sender<bool>,
    /// Whether to run leader election (etcd) or lead unconditionally (embedded).
    elect: bool,
}

/// Opens the store and binds both listeners. Configuration problems are `INVALID_REQUEST`
/// naming the flag (exit code 64 in `main`).
pub async fn bind(cli: Cli) -> Result<Bound> {
    let settings = cli.settings()?;
    // Logs live there with either store: a path that cannot be a directory is a flag error.
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
        Error::invalid(
            "--data-dir",
            format!("cannot create {}: {e}", settings.data_dir.display()),
        )
    })?;
    let metrics = Metrics::new()?;
    let store = MeteredStore::wrap(build_store(&settings.store).await?, metrics.clone());
    let grpc_listener = TcpListener::bind(settings.listen).await.map_err(|e| {
        Error::invalid(
            "--listen",
            format!("cannot listen on {}: {e}", settings.listen),
        )
    })?;
    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|e| {
            Error::invalid(
                "--admin-listen",
                format!("cannot listen on {}: {e}", settings.admin_listen),
            )
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(Error::internal)?;
    let admin_addr = admin_listener.local_addr().map_err(Error::internal)?;
    // Embedded: the one process that owns the file leads. etcd: `run` starts the election and
    // forwards its verdict into this channel.
    let elect = matches!(settings.store, StoreConfig::Etcd { .. });
    let (leader_tx, is_leader) = watch::channel(!elect);
    let ctx = Context {
        store,
        replica_id: Arc::from(settings.replica_id.as_str()),
        data_dir: settings.data_dir.clone(),
        is_leader,
        term: Default::default(),
        shutdown: CancellationToken::new(),
        metrics,
    };
    if settings.tokens.is_empty() && !grpc_addr.ip().is_loopback() {
        warn!(
            listen = %grpc_addr,
            "NO AUTHENTICATION: the gRPC API is open to anyone who can reach {grpc_addr}; \
             set --auth-token-file or MYAGENT_AUTH_TOKENS"
        );
    }
    Ok(Bound {
        grpc_addr,
        admin_addr,
        ctx,
        settings,
        grpc_listener,
        admin_listener,
        leader_tx,
        elect,
    })
}

impl Bound {
    /// The machine-readable line the binary prints on stdout once bound:
    /// `myagent-control-plane listening grpc=<addr> admin=<addr>`.
    pub fn listening_line(&self) -> String {
        format!(
            "myagent-control-plane listening grpc={} admin={}",
            self.grpc_addr, self.admin_addr
        )
    }

    /// Serves until `shutdown` is cancelled, then shuts down in order (module docs).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Bound {
            grpc_addr,
            admin_addr,
            ctx,
            settings,
            grpc_listener,
            admin_listener,
            leader_tx,
            elect,
        } = self;
        // Background work watches the context's token; it fires when the caller's does, but
        // only after the gRPC listener has drained (ordered shutdown).
        let background_stop = ctx.shutdown.clone();

        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        // Agent and manager logs of this replica, shared by the supervisor and the Logs API.
        let logs = LogHub::open(ctx.data_dir.join("logs"), settings.logs)?;
        let names = add_grpc_services(&ctx, &settings, &logs, &mut routes);
        set_health(&health, &names, ServingStatus::Serving).await;
        routes.add_service(health_service);
        add_reflection(&mut routes)?;

        // The election outlives the background loops: a leader steps down (revoking its lease,
        // so a successor takes over at once) only after its singleton loops have stopped.
        let election_stop = CancellationToken::new();
        // Embedded: no election; the sender lives as long as `run`, so the leader-only loops see a
        // steady `true` (a dropped sender would end their leadership watch at once).
        let (election, _embedded_leader) = if elect {
            let url = crate::config::advertise_url(
                settings.advertise_url.as_deref(),
                grpc_addr,
                settings.tls.is_some(),
            );
            let task = start_election(&ctx, url, leader_tx, election_stop.clone());
            (Some(task), None)
        } else {
            (None, Some(leader_tx))
        };

        let tracker = TaskTracker::new();
        spawn_background(&ctx, &settings, &logs, &tracker);

        let mut builder = Server::builder();
        if let Some(tls) = &settings.tls {
            let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                cfg = cfg.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder.tls_config(cfg).map_err(|e| {
                Error::invalid("--tls-cert", format!("invalid TLS configuration: {e}"))
            })?;
        }
        let grpc_stop = CancellationToken::new();
        let grpc_server = builder
            .layer(GrpcMetricsLayer::new(ctx.metrics.clone()))
            .layer(AuthLayer::new(settings.tokens.clone()))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it
                // binds itself): without it Nagle holds each answer's second write until the
                // client's delayed ACK, ~40 ms on every call and every config push.
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                grpc_stop.clone().cancelled_owned(),
            );
        let mut grpc_task = tokio::spawn(grpc_server);

        let admin_stop = CancellationToken::new();
        let admin_router = admin::router(AdminState {
            store: ctx.store.clone(),
            metrics: ctx.metrics.clone(),
        });
        let admin_serve = axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned());
        let admin_task = tokio::spawn(async move { admin_serve.await });
        info!(
            grpc = %grpc_addr,
            admin = %admin_addr,
            store = ctx.store.backend(),
            replica = %ctx.replica_id,
            auth = !settings.tokens.is_empty(),
            tls = settings.tls.is_some(),
            "control plane serving"
        );

        let health_stop = CancellationToken::new();
        let health_task = tokio::spawn(follow_store(
            ctx.store.clone(),
            health.clone(),
            names.clone(),
            health_stop.clone(),
        ));

        let mut result = Ok(());
        tokio::select! {
            _ = shutdown.cancelled() => info!("shutdown requested"),
            r = &mut grpc_task => {
                result = Err(Error::internal(format!("gRPC server stopped unexpectedly: {}", join_msg(r))));
            }
        }

        // 1. Tell probes and load balancers first.
        health_stop.cancel();
        let _ = health_task.await;
        set_health(&health, &names, ServingStatus::NotServing).await;
        // 2. Stop accepting; let in-flight calls finish. Long-lived streams end when they see
        //    the context token, so fire it if the drain takes too long.
        grpc_stop.cancel();
        // (A task that already ended in the select above must not be polled again.)
        if !grpc_task.is_finished()
            && tokio::time::timeout(GRPC_DRAIN, &mut grpc_task)
                .await
                .is_err()
        {
            warn!("gRPC drain timed out; ending streams");
            background_stop.cancel();
            if tokio::time::timeout(Duration::from_secs(2), &mut grpc_task)
                .await
                .is_err()
            {
                grpc_task.abort();
            }
        }
        // 3. Background loops.
        background_stop.cancel();
        tracker.close();
        if tokio::time::timeout(BACKGROUND_DRAIN, tracker.wait())
            .await
            .is_err()
        {
            warn!("background tasks did not stop within {BACKGROUND_DRAIN:?}");
        }
        // 4. Leadership.
        election_stop.cancel();
        if let Some(task) = election {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        // 5. Admin port last.
        admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
        info!("control plane stopped");
        result
    }
}

/// How often the gRPC health status is brought in line with the store.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Sets the whole server's status (`""`) and every service's.
async fn set_health(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    for name in names.iter().chain(std::iter::once(&"")) {
        health.set_service_status(*name, status).await;
    }
}

/// Keeps `grpc.health.v1` in step with `/readyz`: NOT_SERVING while the store does not answer
/// a ping within `admin::READY_TIMEOUT`, SERVING again once it does. Until `stop`.
async fn follow_store(
    store: StoreRef,
    health: HealthReporter,
    names: Vec<&'static str>,
    stop: CancellationToken,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let up = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                tick.tick().await;
                tokio::time::timeout(admin::READY_TIMEOUT, store.ping()).await
            } => matches!(r, Ok(Ok(()))),
        };
        if up != serving {
            serving = up;
            if up {
                info!("store reachable again: gRPC health SERVING");
                set_health(&health, &names, ServingStatus::Serving).await;
            } else {
                warn!("store unreachable: gRPC health NOT_SERVING");
                set_health(&health, &names, ServingStatus::NotServing).await;
            }
        }
    }
}

fn join_msg<T, E: std::fmt::Display>(
    r: std::result::Result<std::result::Result<T, E>, tokio::task::JoinError>,
) -> String {
    match r {
        Ok(Ok(_)) => "exited".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Campaigns for leadership; the elector flips `leader_tx` (`ctx.is_leader`) itself.
fn start_election(
    ctx: &Context,
    advertise_url: String,
    leader_tx: watch::Sender<bool>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    election::spawn_into(
        ctx.store.clone(),
        ctx.replica_id.clone(),
        advertise_url,
        election::DEFAULT_TTL,
        stop,
        leader_tx,
        ctx.term.clone(),
    )
}

/// EXTENSION POINT — every gRPC service of the control plane, one `add_service` each. Returns
/// the fully-qualified names, which `grpc.health.v1` reports as SERVING.
/// (To add: HealthChecks, Logs, Connections, ProxyControl, Stats.)
fn add_grpc_services(
    ctx: &Context,
    settings: &Settings,
    logs: &LogHub,
    routes: &mut RoutesBuilder,
) -> Vec<&'static str> {
    use pb::health_checks_server::HealthChecksServer;
    use pb::logs_server::LogsServer;
    use pb::routing_rules_server::RoutingRulesServer;
    use pb::service_registry_server::ServiceRegistryServer;
    use pb::stats_server::StatsServer;

    type Registry = ServiceRegistryServer<grpc::registry::RegistryApi>;
    type Rules = RoutingRulesServer<grpc::rules::RulesApi>;
    type StatsApi = StatsServer<grpc::stats::StatsApi>;
    type Health = HealthChecksServer<grpc::health::HealthService>;
    type Logs = LogsServer<grpc::logs::LogsService>;
    routes.add_service(Registry::new(grpc::registry::RegistryApi::new(ctx.clone())));
    routes.add_service(Rules::new(grpc::rules::RulesApi::new(ctx.clone())));
    routes.add_service(grpc::health::HealthService::new(ctx.clone(), logs.clone()).into_server());
    routes.add_service(
        grpc::logs::LogsService::new(ctx.clone(), logs.clone())
            .with_peer_tls(settings.tls.clone())
            .into_server(),
    );
    routes.add_service(StatsApi::new(grpc::stats::StatsApi::new(
        ctx.clone(),
        &settings.stats,
    )));
    // The data-plane hub (config stream, reports, connections API); its loops end with
    // `ctx.shutdown` and `spawn_background` waits for them.
    let hub = crate::stream::Hub::start(ctx.clone(), crate::stream::HubConfig::default());
    type Proxy = pb::proxy_control_server::ProxyControlServer<grpc::proxy::ProxyControlService>;
    type Conns = pb::connections_server::ConnectionsServer<grpc::connections::ConnectionsService>;
    routes.add_service(grpc::proxy::ProxyControlService::server(hub.clone()));
    routes.add_service(grpc::connections::ConnectionsService::server(hub));
    vec![
        Registry::NAME,
        Rules::NAME,
        StatsApi::NAME,
        Health::NAME,
        Logs::NAME,
        Proxy::NAME,
        Conns::NAME,
    ]
}

/// EXTENSION POINT — background loops (leader-only loops watch `ctx.is_leader`; every loop ends
/// when `ctx.shutdown` fires). Spawn on `tracker` so shutdown waits for them.
fn spawn_background(ctx: &Context, settings: &Settings, logs: &LogHub, tracker: &TaskTracker) {
    if let Some(hub) = crate::stream::Hub::for_context(ctx) {
        tracker.spawn(async move { hub.join().await });
    }
    // Supervisor: on shutdown or loss of leadership it stops every agent it started; the
    // tracker makes shutdown wait for that.
    let (supervisor, task) = supervisor::spawn(ctx.clone(), logs.clone());
    tracker.spawn(async move {
        let _ = task.await;
    });
    let checker = health::spawn(ctx.clone(), logs.clone(), supervisor);
    tracker.spawn(async move {
        let _ = checker.await;
    });
    crate::stats::spawn(ctx, &settings.stats, tracker);
}

/// Server reflection (v1 and v1alpha) over our descriptors, grpc.health.v1's, and the
/// `google.rpc` error details our errors carry (`ErrorInfo`, `BadRequest`, ...), so a client
/// that decodes a status's details by reflection finds their types.
fn add_reflection(routes: &mut RoutesBuilder) -> Result<()> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(Error::internal)?;
    let v1alpha = builder().build_v1alpha().map_err(Error::internal)?;
    routes.add_service(v1);
    routes.add_service(v1alpha);
    Ok(())
}

/// What `main` runs: `--validate-only` checks the configuration; otherwise bind, announce the
/// bound addresses on stdout (the line of `Bound::listening_line`), serve until `shutdown`.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<()> {
    if cli.validate_only {
        let s = cli.settings()?;
        info!(store = ?s.store, tokens = s.tokens.len(), tls = s.tls.is_some(), "configuration is valid");
        return Ok(());
    }
    let bound = bind(cli).await?;
    announce(&bound.listening_line());
    bound.run(shutdown).await
}

/// The one line the binary writes to stdout: a machine-readable contract for supervisors and
/// tests, not a log line.
#[allow(clippy::print_stdout)]
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}
