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
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agents/echo_agent.py")
        .canonicalize()
        .expect("echo agent")
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
            shutdown: CancellationToken::new(),
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
