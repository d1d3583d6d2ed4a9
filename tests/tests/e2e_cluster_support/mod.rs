//! Harness of `e2e_cluster.rs`: a real etcd, two control-plane replicas under one prefix,
//! two real proxy binaries each bound to one replica, a gateway per replica, and helpers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use myagent_tests::control_plane::{control_plane, unique_prefix, ControlPlane};
use myagent_tests::etcd::Etcd;
use myagent_tests::gateway::{client, gateway, json, Gateway};
use myagent_tests::proxy::{
    connect_with, http_get, next_json, read_until_close, send_text, Client, ProxyProcess,
};
use myagent_tests::wait;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound of one scenario (each test is bounded in time).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// Upper bound of one awaited condition.
pub const WAIT: Duration = Duration::from_secs(20);
/// `?wait_for_sync=` on REST writes, seconds.
pub const SYNC_SECS: u32 = 10;
/// The control plane's node lease TTL (stream::HubConfig::default().node_ttl).
pub const NODE_TTL: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------ harness

/// A real `myagent-proxy` binary bound to one control-plane replica.
pub struct Proxy {
    pub node_id: String,
    pub control_plane: String,
    pub dir: tempfile::TempDir,
    pub process: ProxyProcess,
}

impl Proxy {
    pub async fn spawn(node_id: &str, control_plane: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("proxy data dir");
        let process = spawn_proxy_process(node_id, control_plane, dir.path()).await;
        Proxy {
            node_id: node_id.to_string(),
            control_plane: control_plane.to_string(),
            dir,
            process,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.process.ws_addr)
    }

    /// `/readyz` of the admin port: (status, body).
    pub async fn readyz(&self) -> (u16, Value) {
        let (status, body) = http_get(self.process.admin_addr, "/readyz").await;
        let v = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, v)
    }

    /// The config version the proxy holds and whether its control-plane stream is up.
    pub async fn state(&self) -> (u64, bool) {
        let (_, v) = self.readyz().await;
        (
            v["config_version"].as_u64().unwrap_or(0),
            v["control_plane_connected"] == true,
        )
    }

    /// `myagent_proxy_connections_active` from the admin `/metrics`.
    pub async fn active_connections(&self) -> u64 {
        let (_, m) = http_get(self.process.admin_addr, "/metrics").await;
        m.lines()
            .find(|l| l.starts_with("myagent_proxy_connections_active "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(u64::MAX, |v| v as u64)
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        self.process.child.start_kill().expect("SIGKILL the proxy");
        let _ = tokio::time::timeout(WAIT, self.process.child.wait())
            .await
            .expect("proxy exits after SIGKILL");
    }

    /// Starts the binary again on the same node id and data dir (its config cache).
    pub async fn restart(&mut self) {
        self.process =
            spawn_proxy_process(&self.node_id, &self.control_plane, self.dir.path()).await;
    }
}

pub async fn spawn_proxy_process(
    node_id: &str,
    control_plane: &str,
    dir: &std::path::Path,
) -> ProxyProcess {
    let dir = dir.display().to_string();
    ProxyProcess::spawn(&[
        "--control-plane",
        control_plane,
        "--node-id",
        node_id,
        "--data-dir",
        &dir,
    ])
    .await
}

/// The whole cluster of one scenario.
pub struct Cluster {
    pub etcd: Arc<Etcd>,
    pub prefix: String,
    pub a: Option<ControlPlane>,
    pub b: Option<ControlPlane>,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
    /// REST through replica A / replica B.
    pub gw_a: Gateway,
    pub gw_b: Gateway,
    /// On replica A only / on replica B only.
    pub p1: Proxy,
    pub p2: Proxy,
    pub http: reqwest::Client,
}

impl Cluster {
    /// Replicas in-process, or the real binaries when a scenario kills and restarts them.
    pub async fn start(binary_replicas: bool) -> Cluster {
        let etcd = Etcd::shared();
        let prefix = unique_prefix("e2e-cluster");
        let (a, b) = if binary_replicas {
            (
                control_plane().etcd(&etcd, &prefix).spawn_binary().await,
                control_plane().etcd(&etcd, &prefix).spawn_binary().await,
            )
        } else {
            (
                control_plane().etcd(&etcd, &prefix).spawn().await,
                control_plane().etcd(&etcd, &prefix).spawn().await,
            )
        };
        let gw_a = gateway().control_plane(a.grpc_url()).spawn().await;
        let gw_b = gateway().control_plane(b.grpc_url()).spawn().await;
        let p1 = Proxy::spawn("proxy-1", &a.grpc_url()).await;
        let p2 = Proxy::spawn("proxy-2", &b.grpc_url()).await;
        let c = Cluster {
            etcd,
            prefix,
            a_addr: a.grpc_addr,
            b_addr: b.grpc_addr,
            a: Some(a),
            b: Some(b),
            gw_a,
            gw_b,
            p1,
            p2,
            http: client(),
        };
        for p in [&c.p1, &c.p2] {
            wait::until(
                &format!("{} connected and holding a config", p.node_id),
                WAIT,
                || async {
                    let (v, connected) = p.state().await;
                    (v > 0 && connected).then_some(())
                },
            )
            .await;
        }
        c
    }

    /// Registers an external service on 127.0.0.1:`port` through replica A's REST, starts it with
    /// `?wait_for_sync=`, and checks that both proxies ACKed the change; returns its id.
    pub async fn add_agent(&self, name: &str, port: u16, tags: &[&str]) -> String {
        self.add_agent_via(&self.gw_a, name, port, tags, &["proxy-1", "proxy-2"])
            .await
    }

    /// Like `add_agent` through `gw`, expecting exactly the connected proxies `nodes`.
    pub async fn add_agent_via(
        &self,
        gw: &Gateway,
        name: &str,
        port: u16,
        tags: &[&str],
        nodes: &[&str],
    ) -> String {
        let (s, b) = json(self.http.post(gw.api("/services")).json(&json!({
            "name": name,
            "host": "127.0.0.1",
            "port": port,
            "tags": tags,
        })))
        .await;
        assert_eq!(s, 201, "register {name}: {b}");
        let id = b["service_id"].as_str().expect("service_id").to_string();
        let (s, b) = json(
            self.http
                .post(gw.api(&format!("/services/{id}/start?wait_for_sync={SYNC_SECS}"))),
        )
        .await;
        assert_eq!(s, 200, "start {name}: {b}");
        // wait_for_sync returned: every listed proxy routes to the service right now.
        for p in [&self.p1, &self.p2] {
            if nodes.contains(&p.node_id.as_str()) {
                let (_ws, d) = routed(&p.ws_url(&format!("service={name}")), &[]).await;
                assert_eq!(d["target_service"], name, "{d}");
            }
        }
        // The sync view agrees eventually. It can lag the write by a few ms: a later change to
        // the service (e.g. the leader's health result) is a newer version still being ACKed,
        // and a proxy on the other replica is seen through its node record in etcd.
        wait::until(&format!("{name} in sync on {nodes:?}"), WAIT, || async {
            let sync = self.sync_via(gw, &id).await;
            (sync["in_sync"] == true && nodes_of(&sync) == nodes).then_some(())
        })
        .await;
        id
    }

    /// `GET /services/{id}` → its `sync` object (through replica A).
    pub async fn sync_of(&self, id: &str) -> Value {
        self.sync_via(&self.gw_a, id).await
    }

    pub async fn sync_via(&self, gw: &Gateway, id: &str) -> Value {
        let (s, b) = json(self.http.get(gw.api(&format!("/services/{id}")))).await;
        assert_eq!(s, 200, "{b}");
        b["sync"].clone()
    }

    /// `GET /services/{id}` → `stats.active_connections` (cluster-wide).
    pub async fn active_connections(&self, gw: &Gateway, id: &str) -> u64 {
        let (s, b) = json(self.http.get(gw.api(&format!("/services/{id}")))).await;
        assert_eq!(s, 200, "{b}");
        b["stats"]["active_connections"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    /// Active connections in the cluster-wide view (through `gw`).
    pub async fn connections(&self, gw: &Gateway, query: &str) -> Vec<Value> {
        let (s, b) = json(self.http.get(gw.api(&format!("/connections?{query}")))).await;
        assert_eq!(s, 200, "{b}");
        b["connections"].as_array().cloned().unwrap_or_default()
    }
}

/// Sorted node ids in a `sync` object.
pub fn nodes_of(sync: &Value) -> Vec<String> {
    let mut v: Vec<String> = sync["proxies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `applied_version` of `node` in a `sync` object.
pub fn applied(sync: &Value, node: &str) -> u64 {
    sync["proxies"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node_id"] == node))
        .and_then(|p| p["applied_version"].as_u64())
        .unwrap_or(0)
}

/// Connects (with headers) and reads the first event; panics unless it is `connection_routed`.
pub async fn routed(url: &str, headers: &[(&str, &str)]) -> (Client, Value) {
    let mut ws = connect_with(url, headers).await;
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["event"], "connection_routed", "{url}: first frame {ev}");
    (ws, ev["data"].clone())
}

/// Connects and expects the routing error `code`, then a close 1013 carrying the code.
pub async fn route_fails(url: &str, code: &str) {
    let mut ws = connect_with(url, &[]).await;
    let (close, reason, events) = read_until_close(&mut ws).await;
    let err = events
        .iter()
        .find(|e| e["event"] == "error")
        .unwrap_or_else(|| panic!("{url}: no error event before close: {events:?}"));
    assert_eq!(err["data"]["code"], code, "{err}");
    assert!(err["data"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(err["data"]["recoverable"].is_boolean(), "{err}");
    assert_eq!(close, 1013, "{url}: close code (reason {reason:?})");
    assert!(reason.contains(code), "close reason {reason:?}");
}

/// Sends a JSON message and checks the echo (inside the envelope) names `service`.
pub async fn echo_via(ws: &mut Client, service: &str, tag: &str) {
    send_text(ws, &json!({ "probe": tag }).to_string()).await;
    let v = next_json(ws).await;
    assert_eq!(v["original_message"]["probe"], tag, "{v}");
    assert_eq!(v["proxy_metadata"]["target_service"], service, "{v}");
}

pub async fn bounded<F: std::future::Future<Output = ()>>(name: &str, f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("scenario {name} did not finish within {TEST_TIMEOUT:?}"));
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Streams `n` numbered JSON messages (`{"n": i}`, 1 ms apart) through `ws`, calling `fail`
/// right after message `n / 2`; reads concurrently until `n` answers arrived. Returns the
/// answered numbers in arrival order, the management events (with arrival time) and when
/// `fail` ran.
pub async fn stream_numbers(
    ws: Client,
    n: u64,
    fail: impl FnOnce(),
) -> (Vec<u64>, Vec<(Instant, Value)>, Instant) {
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut numbers = Vec::new();
        let mut events = Vec::new();
        while (numbers.len() as u64) < n {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("stalled after {} answers: {numbers:?}", numbers.len()))
                .expect("stream ended")
                .expect("websocket error");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if v.get("event").is_some() {
                events.push((Instant::now(), v));
            } else {
                numbers.push(v["original_message"]["n"].as_u64().expect("numbered"));
            }
        }
        (numbers, events)
    });
    let mut fail = Some(fail);
    let mut failed_at = Instant::now();
    for i in 0..n {
        sink.send(Message::Text(json!({ "n": i }).to_string().into()))
            .await
            .expect("send");
        if i == n / 2 {
            if let Some(f) = fail.take() {
                f();
            }
            failed_at = Instant::now();
        }
        // Pace the stream so the failure lands in the middle of it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (numbers, events) = reader.await.expect("reader");
    (numbers, events, failed_at)
}

/// A real agent process: `examples/agents/echo_agent.py` on a free port, killed on drop.
pub struct PyAgent {
    pub port: u16,
    pub child: tokio::process::Child,
}

impl PyAgent {
    pub async fn spawn(name: &str) -> PyAgent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/agents/echo_agent.py");
        let child = tokio::process::Command::new("python3")
            .arg(script)
            .env("MYAGENT_HOST", "127.0.0.1")
            .env("MYAGENT_PORT", port.to_string())
            .env("MYAGENT_SERVICE_NAME", name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the example echo agent");
        wait::until(&format!("{name} listening on {port}"), WAIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        PyAgent { port, child }
    }
}

/// Connects, reads the first event, and closes (cleanly, waiting for the close to finish).
pub async fn probe(url: &str) -> Value {
    let mut ws = connect_with(url, &[]).await;
    let ev = next_json(&mut ws).await;
    let _ = ws.close(None).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    ev
}
