//! Starts myagent-control-plane (binary or in-process) on port 0 against a chosen store.
//!
//! ```text
//! let cp = control_plane().spawn().await;                       // in-process, embedded store
//! let cp = control_plane().etcd(&etcd, "/t1/").spawn_binary().await; // the real binary
//! let mut registry = cp.registry().await;
//! ```
//!
//! The binary announces its addresses with one stdout line,
//! `myagent-control-plane listening grpc=<addr> admin=<addr>`, which `spawn_binary` reads.
//! Handles stop their control plane on `Drop` (`shutdown()` does it gracefully and waits).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use myagent_proto::v1::routing_rules_client::RoutingRulesClient;
use myagent_proto::v1::service_registry_client::ServiceRegistryClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::bins;
use crate::etcd::Etcd;

/// How long a control plane may take to bind and announce itself.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum StoreChoice {
    /// `None`: a fresh temp dir owned by the builder.
    Embedded(Option<PathBuf>),
    Etcd {
        endpoint: String,
        prefix: String,
    },
}

/// Builder of a control plane under test.
pub struct ControlPlaneBuilder {
    store: StoreChoice,
    tokens: Option<String>,
    extra: Vec<String>,
    /// gRPC listen address; `None` = 127.0.0.1:0.
    listen: Option<SocketAddr>,
}

/// A control plane with the embedded store in a fresh temp dir, on 127.0.0.1:0.
pub fn control_plane() -> ControlPlaneBuilder {
    ControlPlaneBuilder {
        store: StoreChoice::Embedded(None),
        tokens: None,
        extra: Vec::new(),
        listen: None,
    }
}

/// A key prefix no other test uses, for tests sharing one etcd.
pub fn unique_prefix(name: &str) -> String {
    format!("/test-{name}-{}/", uuid::Uuid::new_v4().simple())
}

impl ControlPlaneBuilder {
    /// The embedded store in `dir` (kept across restarts by reusing the same dir).
    pub fn embedded(mut self, dir: &Path) -> Self {
        self.store = StoreChoice::Embedded(Some(dir.to_path_buf()));
        self
    }

    /// etcd under `prefix` (use `unique_prefix`).
    pub fn etcd(mut self, etcd: &Etcd, prefix: &str) -> Self {
        self.store = StoreChoice::Etcd {
            endpoint: etcd.endpoint(),
            prefix: prefix.to_string(),
        };
        self
    }

    /// Bearer tokens (comma list), passed as `--auth-tokens`.
    pub fn tokens(mut self, tokens: &str) -> Self {
        self.tokens = Some(tokens.to_string());
        self
    }

    /// A fixed gRPC listen address instead of port 0 (to restart a replica where its clients,
    /// e.g. proxies, already point).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Any further flag.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    fn args(&self, data_dir: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "myagent-control-plane".into(),
            "--listen".into(),
            self.listen
                .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string()),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if let StoreChoice::Etcd { endpoint, prefix } = &self.store {
            a.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoint.clone(),
                "--etcd-prefix".into(),
                prefix.clone(),
                "--etcd-timeout".into(),
                "1s".into(),
            ]);
        }
        if let Some(t) = &self.tokens {
            a.extend(["--auth-tokens".into(), t.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn data_dir(&self) -> (PathBuf, Option<tempfile::TempDir>) {
        match &self.store {
            StoreChoice::Embedded(Some(dir)) => (dir.clone(), None),
            _ => {
                let tmp = tempfile::tempdir().expect("temp data dir");
                (tmp.path().to_path_buf(), Some(tmp))
            }
        }
    }

    /// Runs the control plane inside this test process (`bind` + `run`).
    pub async fn spawn(self) -> ControlPlane {
        let (dir, tmp) = self.data_dir();
        let cli = myagent_control_plane::Cli::try_parse_from(self.args(&dir)).expect("valid flags");
        let bound = tokio::time::timeout(START_TIMEOUT, myagent_control_plane::bind(cli))
            .await
            .expect("bind in time")
            .expect("control plane binds");
        let token = CancellationToken::new();
        let (grpc_addr, admin_addr) = (bound.grpc_addr, bound.admin_addr);
        let task = tokio::spawn(bound.run(token.clone()));
        ControlPlane {
            grpc_addr,
            admin_addr,
            data_dir: dir,
            _tmp: tmp,
            runner: Runner::InProcess {
                token,
                task: Some(task),
            },
        }
    }

    /// Runs the real `myagent-control-plane` binary and reads its announced addresses.
    pub async fn spawn_binary(self) -> ControlPlane {
        let (dir, tmp) = self.data_dir();
        let args = self.args(&dir);
        let mut cmd = Command::new(bins::path(bins::CONTROL_PLANE));
        cmd.args(&args[1..])
            .env("RUST_LOG", "info")
            .env("MYAGENT_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("MYAGENT_") && k != "MYAGENT_LOG_FORMAT" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn myagent-control-plane");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let announce = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addrs) = parse_listening_line(&line) {
                    return Some(addrs);
                }
            }
            None
        })
        .await;
        let Ok(Some((grpc_addr, admin_addr))) = announce else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let log = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
            panic!("myagent-control-plane did not announce its addresses; stderr:\n{log}");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ControlPlane {
            grpc_addr,
            admin_addr,
            data_dir: dir,
            _tmp: tmp,
            runner: Runner::Binary { child, logs },
        }
    }
}

/// Parses `myagent-control-plane listening grpc=<addr> admin=<addr>`.
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line
        .trim()
        .strip_prefix("myagent-control-plane listening ")?;
    let mut grpc = None;
    let mut admin = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("grpc=") {
            grpc = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("admin=") {
            admin = v.parse().ok();
        }
    }
    Some((grpc?, admin?))
}

enum Runner {
    InProcess {
        token: CancellationToken,
        task: Option<JoinHandle<myagent_control_plane::Result<()>>>,
    },
    Binary {
        child: Child,
        logs: Arc<Mutex<String>>,
    },
}

/// A running control plane; stopped on `Drop`.
pub struct ControlPlane {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    runner: Runner,
}

impl ControlPlane {
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_url())
            .expect("valid url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the control plane")
    }

    pub async fn registry(&self) -> ServiceRegistryClient<Channel> {
        ServiceRegistryClient::new(self.channel().await)
    }

    pub async fn rules(&self) -> RoutingRulesClient<Channel> {
        RoutingRulesClient::new(self.channel().await)
    }

    /// The binary's process id (`None` in-process).
    pub fn pid(&self) -> Option<u32> {
        match &self.runner {
            Runner::Binary { child, .. } => child.id(),
            Runner::InProcess { .. } => None,
        }
    }

    /// What the binary wrote to stderr so far (empty for in-process control planes).
    pub fn logs(&self) -> String {
        match &self.runner {
            Runner::Binary { logs, .. } => logs.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Runner::InProcess { .. } => String::new(),
        }
    }

    /// Graceful stop (cancel / SIGTERM) and wait until the process or task has ended, so the
    /// data dir can be reopened by a new control plane.
    pub async fn shutdown(mut self) {
        match &mut self.runner {
            Runner::InProcess { token, task } => {
                token.cancel();
                if let Some(task) = task.take() {
                    let r = tokio::time::timeout(Duration::from_secs(30), task)
                        .await
                        .expect("control plane stops within 30s")
                        .expect("control plane task did not panic");
                    r.expect("control plane ran without error");
                }
            }
            Runner::Binary { child, .. } => {
                if let Some(pid) = child.id() {
                    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .expect("control plane exits within 30s after SIGTERM")
                    .expect("wait for control plane");
                assert!(status.success(), "control plane exited with {status}");
            }
        }
    }
}

impl ControlPlane {
    /// Kills the control plane without a graceful stop (SIGKILL for the binary, an aborted task
    /// in-process), like a crashed replica, and waits until it is gone.
    pub async fn kill(mut self) {
        match &mut self.runner {
            Runner::InProcess { token, task } => {
                token.cancel();
                if let Some(task) = task.take() {
                    task.abort();
                    let _ = task.await;
                }
            }
            Runner::Binary { child, .. } => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .expect("control plane exits after SIGKILL");
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::InProcess { token, .. } => token.cancel(),
            Runner::Binary { child, .. } => {
                let _ = child.start_kill();
            }
        }
    }
}

/// Registers `name` as a managed service running the example echo agent on a free port, starts
/// it (it must come up running) and returns the agent's pid.
pub async fn start_example_agent(registry: &mut ServiceRegistryClient<Channel>, name: &str) -> i32 {
    use myagent_proto::v1 as pb;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    registry
        .register_service(pb::RegisterServiceRequest {
            name: name.into(),
            agent_factory_path: crate::agents::example_agent_path().display().to_string(),
            host: "127.0.0.1".into(),
            port: u32::from(port),
            ..Default::default()
        })
        .await
        .expect("register");
    let started = registry
        .start_service(pb::StartServiceRequest {
            service: name.into(),
            wait_for_sync: 0.0,
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.status, "running", "{started:?}");
    let pid = registry
        .get_service(pb::GetServiceRequest {
            service: name.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .runtime
        .map(|r| r.pid)
        .unwrap_or_default();
    assert!(pid > 0, "{name} has a pid");
    pid
}

/// Wraps `msg` in a request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// The seed error code (`ErrorInfo.reason`) and the `field` detail of a failed call.
pub fn error_code(status: &tonic::Status) -> (String, String) {
    use tonic_types::StatusExt;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("status without ErrorInfo: {status:?}"));
    let field = info.metadata.get("field").cloned().unwrap_or_default();
    (info.reason, field)
}

/// A client of the store the replicas under `prefix` share, for reading their records.
pub async fn etcd_store(etcd: &Etcd, prefix: &str) -> myagent_control_plane::store::StoreRef {
    myagent_control_plane::store::build_store(&myagent_control_plane::store::StoreConfig::Etcd {
        endpoints: vec![etcd.endpoint()],
        prefix: prefix.to_string(),
        request_timeout: Duration::from_secs(2),
    })
    .await
    .expect("etcd store")
}

/// Waits (bounded) until a replica leads; returns its leader record.
pub async fn wait_leader(
    store: &myagent_control_plane::store::StoreRef,
) -> myagent_control_plane::election::LeaderRecord {
    crate::wait::until("a leader", Duration::from_secs(20), || async {
        myagent_control_plane::election::current_leader_record(store)
            .await
            .ok()
            .flatten()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_announcement() {
        let (g, a) = parse_listening_line(
            "myagent-control-plane listening grpc=127.0.0.1:5 admin=127.0.0.1:6",
        )
        .unwrap();
        assert_eq!(g.port(), 5);
        assert_eq!(a.port(), 6);
        assert!(parse_listening_line("something else").is_none());
    }
}
