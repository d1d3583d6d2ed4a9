//! Shared pieces of the config-stream tests: a control-plane replica serving `ProxyControl` and
//! `Connections` on 127.0.0.1:0 over a given store, and a fake proxy speaking the stream
//! protocol with the generated tonic client over a real socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use myagent_control_plane::context::Context;
use myagent_control_plane::grpc::connections::ConnectionsService;
use myagent_control_plane::grpc::proxy::ProxyControlService;
use myagent_control_plane::keys;
use myagent_control_plane::model::{
    DesiredState, HealthState, HealthStatus, Rule, Runtime, ServiceConfig, ServiceDef,
    ServiceStatus,
};
use myagent_control_plane::store::{json, Revision, StoreRef};
use myagent_control_plane::stream::{Hub, HubConfig};
use myagent_proto::v1 as pb;

pub const WAIT: Duration = Duration::from_secs(10);

/// Short timings so lease expiry and session completion happen within a test.
pub fn fast_config() -> HubConfig {
    HubConfig {
        node_ttl: Duration::from_secs(2),
        session_tick: Duration::from_millis(200),
        report_flush: Duration::from_millis(100),
        counters_flush: Duration::from_millis(300),
        load_interval: Duration::from_millis(100),
        command_timeout: Duration::from_secs(3),
        ..HubConfig::default()
    }
}

pub async fn embedded_store() -> (StoreRef, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = myagent_control_plane::store::build_store(
        &myagent_control_plane::store::StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        },
    )
    .await
    .unwrap();
    (store, dir)
}

pub async fn etcd_store(etcd: &myagent_tests::etcd::Etcd, prefix: &str) -> StoreRef {
    myagent_control_plane::store::build_store(&myagent_control_plane::store::StoreConfig::Etcd {
        endpoints: vec![etcd.endpoint()],
        prefix: prefix.to_string(),
        request_timeout: Duration::from_secs(3),
    })
    .await
    .unwrap()
}

pub struct Replica {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub ctx: Context,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Replica {
    pub async fn start(store: StoreRef, cfg: HubConfig, leader: bool) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let (leader_tx, leader_rx) = watch::channel(leader);
        let shutdown = CancellationToken::new();
        let ctx = Context {
            store,
            replica_id: Arc::from(format!("cp-{}", &uuid::Uuid::new_v4().to_string()[..8])),
            data_dir: dir.path().to_path_buf(),
            is_leader: leader_rx,
            term: Default::default(),
            shutdown: shutdown.clone(),
            metrics: myagent_control_plane::metrics::Metrics::new().unwrap(),
        };
        let hub = Hub::start(ctx.clone(), cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let router = tonic::transport::Server::builder()
            .add_service(ProxyControlService::server(hub.clone()))
            .add_service(ConnectionsService::server(hub.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
        });
        assert!(
            hub.wait_ready(WAIT).await,
            "hub did not load the store view"
        );
        Replica {
            addr,
            hub,
            ctx,
            leader: leader_tx,
            shutdown,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn connections_client(
        &self,
    ) -> pb::connections_client::ConnectionsClient<tonic::transport::Channel> {
        pb::connections_client::ConnectionsClient::connect(self.url())
            .await
            .unwrap()
    }

    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.hub.join().await;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A proxy as the control plane sees it: Hello, then pushes it ACKs or NACKs, reports it sends.
pub struct FakeProxy {
    pub node_id: String,
    tx: mpsc::Sender<pb::ProxyMessage>,
    rx: tonic::Streaming<pb::ControlMessage>,
    pub loads: Vec<pb::LoadUpdate>,
    pub sessions: Vec<pb::SessionUpdate>,
    pub commands: Vec<pb::ProxyCommand>,
    pub configs: Vec<pb::ConfigPush>,
}

impl FakeProxy {
    pub async fn connect(url: &str, node_id: &str, applied_version: u64) -> FakeProxy {
        let mut client = pb::proxy_control_client::ProxyControlClient::connect(url.to_string())
            .await
            .unwrap()
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::ProxyMessage {
            kind: Some(pb::proxy_message::Kind::Hello(pb::Hello {
                node_id: node_id.to_string(),
                address: "127.0.0.1:0".into(),
                applied_version,
                software_version: "test".into(),
            })),
        })
        .await
        .unwrap();
        let resp = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream accepted");
        FakeProxy {
            node_id: node_id.to_string(),
            tx,
            rx: resp.into_inner(),
            loads: Vec::new(),
            sessions: Vec::new(),
            commands: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// The next message that `pick` accepts; others are recorded on the way.
    async fn next<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&mut Self, pb::control_message::Kind) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.rx.message())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for {what}", self.node_id))
                .expect("stream ok")
                .unwrap_or_else(|| panic!("{}: stream ended waiting for {what}", self.node_id));
            let Some(kind) = msg.kind else { continue };
            if let Some(v) = pick(self, kind) {
                return v;
            }
        }
    }

    fn record(&mut self, kind: pb::control_message::Kind) {
        use pb::control_message::Kind;
        match kind {
            Kind::Load(l) => self.loads.push(l),
            Kind::Sessions(s) => self.sessions.push(s),
            Kind::Command(c) => self.commands.push(c),
            Kind::Config(c) => self.configs.push(c),
        }
    }

    pub async fn next_config(&mut self) -> pb::ConfigPush {
        self.next("a config push", |me, k| match k {
            pb::control_message::Kind::Config(c) => {
                me.configs.push(c.clone());
                Some(c)
            }
            other => {
                me.record(other);
                None
            }
        })
        .await
    }

    /// Config pushes until one satisfies `f` (each is ACKed when `ack` is set).
    pub async fn config_until(
        &mut self,
        ack: bool,
        f: impl Fn(&pb::ConfigPush) -> bool,
    ) -> pb::ConfigPush {
        loop {
            let c = self.next_config().await;
            if ack {
                self.ack(&c).await;
            }
            if f(&c) {
                return c;
            }
        }
    }

    pub async fn next_command(&mut self) -> pb::ProxyCommand {
        self.next("a command", |me, k| match k {
            pb::control_message::Kind::Command(c) => Some(c),
            other => {
                me.record(other);
                None
            }
        })
        .await
    }

    pub async fn load_until(&mut self, f: impl Fn(&pb::LoadUpdate) -> bool) -> pb::LoadUpdate {
        self.next("a load update", |me, k| match k {
            pb::control_message::Kind::Load(l) if f(&l) => Some(l),
            other => {
                me.record(other);
                None
            }
        })
        .await
    }

    pub async fn session_update_until(
        &mut self,
        f: impl Fn(&pb::SessionUpdate) -> bool,
    ) -> pb::SessionUpdate {
        self.next("a session update", |me, k| match k {
            pb::control_message::Kind::Sessions(s) if f(&s) => Some(s),
            other => {
                me.record(other);
                None
            }
        })
        .await
    }

    pub async fn send(&self, kind: pb::proxy_message::Kind) {
        self.tx
            .send(pb::ProxyMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    pub async fn ack(&self, c: &pb::ConfigPush) {
        self.send(pb::proxy_message::Kind::Ack(pb::Ack {
            version: c.version,
            nonce: c.nonce.clone(),
        }))
        .await;
    }

    pub async fn nack(&self, c: &pb::ConfigPush, error: &str) {
        self.send(pb::proxy_message::Kind::Nack(pb::Nack {
            version: c.version,
            nonce: c.nonce.clone(),
            error_detail: error.to_string(),
        }))
        .await;
    }

    pub async fn report(&self, report: pb::Report) {
        self.send(pb::proxy_message::Kind::Report(report)).await;
    }

    pub async fn command_result(&self, id: &str, ok: bool, delivered: u64, error: &str) {
        self.send(pb::proxy_message::Kind::CommandResult(pb::CommandResult {
            command_id: id.to_string(),
            ok,
            delivered,
            error: error.to_string(),
        }))
        .await;
    }
}

pub fn now_ts() -> prost_types::Timestamp {
    let n = Utc::now();
    prost_types::Timestamp {
        seconds: n.timestamp(),
        nanos: n.timestamp_subsec_nanos() as i32,
    }
}

pub fn connection(id: &str, session: &str, service_id: &str) -> pb::Connection {
    pb::Connection {
        connection_id: id.to_string(),
        session_id: session.to_string(),
        client_ip: "192.0.2.7".into(),
        target_service_id: service_id.to_string(),
        target_service: format!("name-of-{service_id}"),
        connected_at: Some(now_ts()),
        last_activity: Some(now_ts()),
        routing_strategy: "least_connections".into(),
        ..pb::Connection::default()
    }
}

pub fn conn_event(kind: pb::connection_event::Kind, c: pb::Connection) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        kind: kind as i32,
        connection: Some(c),
    }
}

pub fn session_event(
    kind: pb::session_event::Kind,
    session: &str,
    service_id: &str,
) -> pb::SessionEvent {
    pb::SessionEvent {
        kind: kind as i32,
        session_id: session.to_string(),
        service_id: service_id.to_string(),
        at: Some(now_ts()),
    }
}

pub fn service(id: &str, name: &str, port: u16) -> ServiceDef {
    let now = Utc::now();
    ServiceDef {
        id: id.to_string(),
        name: name.to_string(),
        description: String::new(),
        agent_factory_path: None,
        host: "127.0.0.1".into(),
        port,
        tags: vec!["t".into()],
        config: ServiceConfig::default(),
        desired: DesiredState::Running,
        restart: None,
        deleting: false,
        created_at: now,
        updated_at: now,
    }
}

/// Writes a service as running and healthy (what registry + supervisor + health would do).
pub async fn put_running_service(store: &StoreRef, def: &ServiceDef) -> Revision {
    store
        .put(&keys::service(&def.id), json::encode(def).unwrap(), None)
        .await
        .unwrap();
    let mut rt = Runtime::stopped(Utc::now());
    rt.status = ServiceStatus::Running;
    rt.started_at = Some(Utc::now());
    store
        .put(&keys::runtime(&def.id), json::encode(&rt).unwrap(), None)
        .await
        .unwrap();
    let health = HealthState {
        status: HealthStatus::Healthy,
        last_check: Some(Utc::now()),
        ..HealthState::default()
    };
    store
        .put(&keys::health(&def.id), json::encode(&health).unwrap(), None)
        .await
        .unwrap()
}

pub fn rule(id: &str, name: &str) -> Rule {
    let now = Utc::now();
    Rule {
        id: id.to_string(),
        name: name.to_string(),
        priority: 10,
        conditions: vec![myagent_control_plane::model::Condition {
            field: "header.x-user-tier".into(),
            operator: "equals".into(),
            value: "vip".into(),
            values: Vec::new(),
        }],
        target_strategy: "least_connections".into(),
        target_tags: vec!["t".into()],
        enabled: true,
        description: String::new(),
        hash_key: String::new(),
        created_at: now,
        updated_at: now,
    }
}

pub async fn put_rule(store: &StoreRef, r: &Rule) -> Revision {
    store
        .put(&keys::rule(&r.id), json::encode(r).unwrap(), None)
        .await
        .unwrap()
}
