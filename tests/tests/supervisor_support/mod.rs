//! In-process fixture for the supervisor/health/logs tests: a real embedded store, the real
//! supervisor and health checker of the control-plane library, and real agent processes
//! (examples/agents/echo_agent.py).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use myagent_control_plane::context::Context;
use myagent_control_plane::keys;
use myagent_control_plane::logs::{LogConfig, LogHub};
use myagent_control_plane::model::{
    DesiredState, Runtime, ServiceConfig, ServiceDef, ServiceStatus,
};
use myagent_control_plane::store::{build_store, json, StoreConfig};
use myagent_control_plane::supervisor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub ctx: Context,
    pub logs: LogHub,
    pub leader: watch::Sender<bool>,
    pub supervisor: Option<tokio::task::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

pub fn echo_agent() -> PathBuf {
    myagent_tests::agents::example_agent_path()
}

/// A port for an agent to listen on. Agents are registered with a fixed port, so one is picked
/// by binding port 0 and releasing it (the agent binds it moments later).
pub fn agent_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Fixture {
    pub async fn start() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = build_store(&StoreConfig::Embedded {
            data_dir: tmp.path().to_path_buf(),
        })
        .await
        .unwrap();
        let (leader, is_leader) = watch::channel(true);
        let ctx = Context {
            store,
            replica_id: Arc::from("replica-test"),
            data_dir: tmp.path().to_path_buf(),
            is_leader,
            term: Default::default(),
            shutdown: CancellationToken::new(),
            metrics: myagent_control_plane::metrics::Metrics::new().unwrap(),
        };
        let logs = LogHub::open(tmp.path().join("logs"), LogConfig::default()).unwrap();
        let (handle, task) = supervisor::spawn(ctx.clone(), logs.clone());
        myagent_control_plane::health::spawn(ctx.clone(), logs.clone(), handle);
        Fixture {
            ctx,
            logs,
            leader,
            supervisor: Some(task),
            _tmp: tmp,
        }
    }

    /// Registers a service (as the registry would: definition + name index).
    pub async fn register(
        &self,
        name: &str,
        path: Option<PathBuf>,
        port: u16,
        tweak: impl FnOnce(&mut ServiceConfig),
    ) -> ServiceDef {
        let mut config = ServiceConfig {
            startup_timeout: 10.0,
            stop_grace_period: 3.0,
            drain_timeout: 0.0,
            ..Default::default()
        };
        tweak(&mut config);
        let now = Utc::now();
        let def = ServiceDef {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            description: String::new(),
            agent_factory_path: path.map(|p| p.to_string_lossy().into_owned()),
            host: "127.0.0.1".into(),
            port,
            tags: vec![],
            config,
            desired: DesiredState::Stopped,
            restart: None,
            deleting: false,
            created_at: now,
            updated_at: now,
        };
        self.ctx
            .store
            .put(&keys::service(&def.id), json::encode(&def).unwrap(), None)
            .await
            .unwrap();
        self.ctx
            .store
            .put(
                &keys::service_name(name),
                serde_json::to_vec(&def.id).unwrap(),
                None,
            )
            .await
            .unwrap();
        def
    }

    pub async fn runtime(&self, id: &str) -> Option<Runtime> {
        json::get::<Runtime>(&self.ctx.store, &keys::runtime(id))
            .await
            .unwrap()
            .map(|(r, _)| r)
    }

    pub async fn wait_status(&self, id: &str, status: ServiceStatus, within: Duration) -> Runtime {
        myagent_tests::wait::until(
            &format!("service {id} to be {}", status.as_str()),
            within,
            || async { self.runtime(id).await.filter(|r| r.status == status) },
        )
        .await
    }

    /// Waits until the service runs again in a process other than `old_pid`.
    pub async fn wait_relaunched(&self, id: &str, old_pid: i32, within: Duration) -> Runtime {
        myagent_tests::wait::until(
            &format!("service {id} running again, not as pid {old_pid}"),
            within,
            || async {
                self.runtime(id).await.filter(|r| {
                    r.status == ServiceStatus::Running && r.pid.is_some_and(|p| p != old_pid)
                })
            },
        )
        .await
    }

    /// Stops everything (as a shutdown would) and waits for the supervisor to finish.
    pub async fn shutdown(mut self) {
        self.ctx.shutdown.cancel();
        if let Some(t) = self.supervisor.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Processes die with the supervisor's term (or by PDEATHSIG with the test process).
        self.ctx.shutdown.cancel();
    }
}

pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub type HealthClient =
    myagent_proto::v1::health_checks_client::HealthChecksClient<tonic::transport::Channel>;
pub type LogsClient = myagent_proto::v1::logs_client::LogsClient<tonic::transport::Channel>;

impl Fixture {
    /// Serves the `HealthChecks` and `Logs` gRPC services of this fixture on 127.0.0.1:0.
    pub async fn grpc(&self) -> (HealthClient, LogsClient) {
        use myagent_control_plane::grpc::{health::HealthService, logs::LogsService};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(HealthService::new(self.ctx.clone(), self.logs.clone()).into_server())
            .add_service(LogsService::new(self.ctx.clone(), self.logs.clone()).into_server());
        let shutdown = self.ctx.shutdown.clone();
        tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (HealthClient::new(channel.clone()), LogsClient::new(channel))
    }
}

/// A WebSocket server in the test process whose behaviour the test switches at run time.
pub struct TestEndpoint {
    pub port: u16,
    /// 0 = answer handshakes, 1 = refuse (close at once), 2 = hang, 3 = alternate ok/refuse.
    pub mode: Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl TestEndpoint {
    pub async fn start(mode: u8) -> TestEndpoint {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(mode));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((s, _)) = listener.accept().await {
                n += 1;
                let ok = match m.load(Ordering::SeqCst) {
                    0 => true,
                    1 => false,
                    2 => {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(s);
                        });
                        continue;
                    }
                    _ => n % 2 == 1,
                };
                if ok {
                    tokio::spawn(async move {
                        if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                            use futures::StreamExt;
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                    });
                }
            }
        });
        TestEndpoint { port, mode, task }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TestEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls GetHealth until the status is `status`.
pub async fn wait_health(
    client: &mut HealthClient,
    service: &str,
    status: &str,
) -> myagent_proto::v1::HealthStatus {
    myagent_tests::wait::until(
        &format!("{service} to be {status}"),
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            let service = service.to_string();
            let status = status.to_string();
            async move {
                let st = c
                    .get_health(myagent_proto::v1::GetHealthRequest { service })
                    .await
                    .ok()?
                    .into_inner();
                (st.status == status).then_some(st)
            }
        },
    )
    .await
}
