//! Starts myagent-proxy on port 0 against one or more control planes.
//!
//! - [`spawn_proxy`]: the proxy in-process (`bind` + `run`), stopped on drop.
//! - [`ProxyProcess`]: the real `myagent-proxy` binary, killed on drop.
//! - [`FakeControlPlane`]: a small tonic `ProxyControl` server whose pushes the test chooses
//!   (for proxy-only tests; the real control plane is exercised by the end-to-end tests).
//! - WebSocket client helpers for talking to a proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use myagent_data_plane::{Cli, Handle};
use myagent_proto::v1 as pb;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ------------------------------------------------------------------ fake control plane

#[derive(Default)]
struct FakeState {
    streams: Vec<mpsc::Sender<Result<pb::ControlMessage, Status>>>,
    received: Vec<pb::ProxyMessage>,
    /// Sent to every stream right after it opens (the latest full config).
    initial: Option<pb::ConfigPush>,
    sessions: HashMap<String, pb::SessionBinding>,
    streams_opened: usize,
}

#[derive(Clone, Default)]
struct FakeSvc {
    state: Arc<Mutex<FakeState>>,
    notify: Arc<Notify>,
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::proxy_control_server::ProxyControl for FakeSvc {
    type StreamStream = ControlStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        {
            let mut st = self.state.lock().unwrap();
            if let Some(init) = st.initial.clone() {
                let _ = tx.try_send(Ok(pb::ControlMessage {
                    kind: Some(pb::control_message::Kind::Config(init)),
                }));
            }
            st.streams.push(tx);
            st.streams_opened += 1;
        }
        self.notify.notify_waiters();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                me.state.lock().unwrap().received.push(m);
                me.notify.notify_waiters();
            }
        });
        let out =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn resolve_session(
        &self,
        req: Request<pb::ResolveSessionRequest>,
    ) -> Result<Response<pb::SessionBinding>, Status> {
        let id = req.into_inner().session_id;
        match self.state.lock().unwrap().sessions.get(&id) {
            Some(b) => Ok(Response::new(b.clone())),
            None => Err(Status::not_found(format!("session {id} not found"))),
        }
    }
}

/// A tonic ProxyControl server on 127.0.0.1:0 driven by the test.
pub struct FakeControlPlane {
    pub addr: SocketAddr,
    svc: FakeSvc,
    stop: CancellationToken,
}

impl FakeControlPlane {
    pub async fn spawn() -> Self {
        Self::spawn_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds a given address (to restart a "control plane" on the port a proxy already uses).
    pub async fn spawn_on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind fake control plane");
        let addr = listener.local_addr().unwrap();
        let svc = FakeSvc::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(pb::proxy_control_server::ProxyControlServer::new(
                svc.clone(),
            ))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        FakeControlPlane { addr, svc, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a message to every open stream.
    pub fn send(&self, m: pb::control_message::Kind) {
        let st = self.svc.state.lock().unwrap();
        for s in &st.streams {
            let _ = s.try_send(Ok(pb::ControlMessage {
                kind: Some(m.clone()),
            }));
        }
    }

    /// Pushes a config to every stream, and remembers it (if full) for later streams.
    pub fn push(&self, push: pb::ConfigPush) {
        if push.full {
            self.svc.state.lock().unwrap().initial = Some(push.clone());
        }
        self.send(pb::control_message::Kind::Config(push));
    }

    pub fn set_session(&self, session_id: &str, service_id: &str) {
        self.svc.state.lock().unwrap().sessions.insert(
            session_id.to_string(),
            pb::SessionBinding {
                session_id: session_id.into(),
                service_id: service_id.into(),
                state: "active".into(),
                ..Default::default()
            },
        );
    }

    pub fn received(&self) -> Vec<pb::ProxyMessage> {
        self.svc.state.lock().unwrap().received.clone()
    }

    pub fn streams_opened(&self) -> usize {
        self.svc.state.lock().unwrap().streams_opened
    }

    /// Waits until `f` finds something in the received messages.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&[pb::ProxyMessage]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.svc.notify.notified();
            if let Some(v) = f(&self.svc.state.lock().unwrap().received) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // One last look, then fail.
                if let Some(v) = f(&self.svc.state.lock().unwrap().received) {
                    return v;
                }
                panic!("timed out after {timeout:?} waiting for {what}");
            }
        }
    }

    pub async fn wait_ack(&self, version: u64) {
        self.wait_for(&format!("ACK of version {version}"), Duration::from_secs(10), |ms| {
            ms.iter().any(|m| matches!(&m.kind, Some(pb::proxy_message::Kind::Ack(a)) if a.version == version)).then_some(())
        })
        .await
    }

    pub async fn wait_nack(&self, version: u64) -> String {
        self.wait_for(
            &format!("NACK of version {version}"),
            Duration::from_secs(10),
            |ms| {
                ms.iter().find_map(|m| match &m.kind {
                    Some(pb::proxy_message::Kind::Nack(n)) if n.version == version => {
                        Some(n.error_detail.clone())
                    }
                    _ => None,
                })
            },
        )
        .await
    }

    pub async fn wait_hello(&self) -> pb::Hello {
        self.wait_for("Hello", Duration::from_secs(10), |ms| {
            ms.iter().rev().find_map(|m| match &m.kind {
                Some(pb::proxy_message::Kind::Hello(h)) => Some(h.clone()),
                _ => None,
            })
        })
        .await
    }

    /// Every report received so far, flattened.
    pub fn reports(&self) -> Vec<pb::Report> {
        self.received()
            .into_iter()
            .filter_map(|m| match m.kind {
                Some(pb::proxy_message::Kind::Report(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub async fn wait_command_result(&self, command_id: &str) -> pb::CommandResult {
        self.wait_for(
            &format!("result of command {command_id}"),
            Duration::from_secs(10),
            |ms| {
                ms.iter().find_map(|m| match &m.kind {
                    Some(pb::proxy_message::Kind::CommandResult(r))
                        if r.command_id == command_id =>
                    {
                        Some(r.clone())
                    }
                    _ => None,
                })
            },
        )
        .await
    }

    /// Stops serving and drops every open stream.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.svc.state.lock().unwrap().streams.clear();
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ------------------------------------------------------------------ config builders

/// A routable service snapshot pointing at `addr`.
pub fn service(id: &str, name: &str, addr: SocketAddr, tags: &[&str]) -> pb::ServiceSnapshot {
    pb::ServiceSnapshot {
        service_id: id.into(),
        name: name.into(),
        host: addr.ip().to_string(),
        port: addr.port().into(),
        endpoint: format!("ws://{addr}"),
        status: "running".into(),
        health: "healthy".into(),
        routable: true,
        draining: false,
        drain_reason: String::new(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        max_sessions: 0,
        session_timeout: 1800,
        proxy_metadata: true,
        weight: 1,
        drain_timeout: 0.0,
    }
}

pub fn full(
    version: u64,
    services: Vec<pb::ServiceSnapshot>,
    rules: Vec<pb::RoutingRule>,
) -> pb::ConfigPush {
    pb::ConfigPush {
        version,
        nonce: format!("n{version}"),
        full: true,
        base_version: 0,
        services,
        removed_services: vec![],
        rules,
        removed_rules: vec![],
    }
}

pub fn rule(
    id: &str,
    priority: i32,
    conditions: Vec<pb::Condition>,
    strategy: &str,
    target_tags: &[&str],
) -> pb::RoutingRule {
    pb::RoutingRule {
        rule_id: id.into(),
        name: id.into(),
        priority,
        conditions,
        target_strategy: strategy.into(),
        target_tags: target_tags.iter().map(|t| t.to_string()).collect(),
        enabled: true,
        ..Default::default()
    }
}

pub fn cond(field: &str, operator: &str, value: &str) -> pb::Condition {
    pb::Condition {
        field: field.into(),
        operator: operator.into(),
        value: value.into(),
        values: vec![],
    }
}

// ------------------------------------------------------------------ in-process proxy

/// A proxy running in this process; stops on drop.
pub struct ProxyHarness {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub handle: Handle,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Starts a proxy on 127.0.0.1:0 against `control_planes`; `tweak` adjusts the CLI.
pub async fn spawn_proxy(control_planes: &[String], tweak: impl FnOnce(&mut Cli)) -> ProxyHarness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut h = spawn_proxy_in(control_planes, &dir, tweak).await;
    h._tmp = Some(tmp);
    h
}

/// Like [`spawn_proxy`] with a given data dir (to restart a proxy on its cache).
pub async fn spawn_proxy_in(
    control_planes: &[String],
    data_dir: &Path,
    tweak: impl FnOnce(&mut Cli),
) -> ProxyHarness {
    let mut cli = Cli::for_addrs(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        control_planes,
        data_dir.to_path_buf(),
    );
    cli.report_interval = Duration::from_millis(50);
    tweak(&mut cli);
    let bound = myagent_data_plane::bind(cli).await.expect("bind proxy");
    let stop = CancellationToken::new();
    let ws_addr = bound.listen_addr;
    let admin_addr = bound.admin_addr;
    let handle = bound.handle();
    let s2 = stop.clone();
    let task = tokio::spawn(async move {
        bound.run(s2).await.expect("proxy run");
    });
    ProxyHarness {
        ws_addr,
        admin_addr,
        handle,
        data_dir: data_dir.to_path_buf(),
        stop,
        task: Some(task),
        _tmp: None,
    }
}

impl ProxyHarness {
    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            format!("ws://{}/ws", self.ws_addr)
        } else {
            format!("ws://{}/ws?{query}", self.ws_addr)
        }
    }

    pub async fn wait_version(&self, v: u64) {
        tokio::time::timeout(Duration::from_secs(10), self.handle.wait_config_version(v))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "proxy did not reach config version {v} (has {})",
                    self.handle.config_version()
                )
            });
    }

    /// GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path).await
    }

    /// Stops the proxy and waits for its shutdown.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ProxyHarness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends raw bytes as an HTTP request and reads one answer: (status, body). Stops at the end
/// of the body (Content-Length) or when the server closes.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|l| body.len() >= l) || head.starts_with("HTTP/1.1 101") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ------------------------------------------------------------------ real binary

/// The real `myagent-proxy` binary, killed on drop.
pub struct ProxyProcess {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub child: tokio::process::Child,
}

impl ProxyProcess {
    /// Starts the binary with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0` plus `args`,
    /// and reads the bound addresses from its first stdout line.
    pub async fn spawn(args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(crate::bins::path(crate::bins::PROXY))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn myagent-proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("proxy printed no address line in time")
            .expect("read stdout")
            .expect("proxy exited before printing its addresses");
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        ProxyProcess {
            ws_addr: field("ws="),
            admin_addr: field("admin="),
            child,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

// ------------------------------------------------------------------ clients

/// Connects a WebSocket client; panics on handshake failure.
pub async fn connect(url: &str) -> Client {
    connect_with(url, &[]).await
}

pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = url.into_client_request().expect("client request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect timed out")
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Next message (pings/pongs skipped), with a deadline.
pub async fn next_msg(ws: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10s")
            .expect("stream ended")
            .expect("websocket error");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// Next text message as JSON.
pub async fn next_json(ws: &mut Client) -> Value {
    match next_msg(ws).await {
        Message::Text(t) => {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
        }
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Connects and returns the client with its `connection_routed` event data.
pub async fn connect_routed(url: &str) -> (Client, Value) {
    let mut ws = connect(url).await;
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["event"], "connection_routed", "first frame: {ev}");
    (ws, ev["data"].clone())
}

/// Connects until the proxy routes (its config arrives asynchronously); returns the client and
/// the `connection_routed` data.
pub async fn routed_eventually(url: String) -> (Client, Value) {
    crate::wait::until(
        &format!("a routed connection to {url}"),
        Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
                let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .ok()??
                    .ok()?;
                let ev: Value = serde_json::from_str(first.to_text().ok()?).ok()?;
                (ev["event"] == "connection_routed").then(|| (ws, ev["data"].clone()))
            }
        },
    )
    .await
}

/// Sends a text frame.
pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// Reads until the close frame: (code, reason); collects events seen on the way.
pub async fn read_until_close(ws: &mut Client) -> (u16, String, Vec<Value>) {
    let mut events = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10s");
        match m {
            Some(Ok(Message::Close(f))) => {
                let (c, r) = f
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return (c, r, events);
            }
            Some(Ok(Message::Text(t))) => {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    events.push(v);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}
