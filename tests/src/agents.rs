//! Test agents: small WebSocket agent servers (in-process echo agents and the example Python agents).
//!
//! `echo_agent().spawn().await` starts a tokio-tungstenite server on 127.0.0.1:0 that echoes
//! every text/binary frame, records what it received and each handshake (path, query,
//! headers), and can be told to drop or close its connections — to play a crashing or
//! restarting agent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// One upgrade request the agent accepted.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub path: String,
    pub query: String,
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A frame the agent received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Index of the connection (order of handshakes).
    pub conn: usize,
    pub message: Message,
}

impl Received {
    pub fn text(&self) -> Option<&str> {
        match &self.message {
            Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Command {
    /// Drop every TCP connection without a close frame (a crash).
    Drop,
    /// Send a close frame with this code and reason.
    Close(u16, String),
}

#[derive(Default)]
struct Recorded {
    handshakes: Vec<Handshake>,
    received: Vec<Received>,
    /// Close codes received from the proxy (None = close without a code).
    closes: Vec<Option<u16>>,
    active: usize,
}

/// Builder for an echo agent.
#[derive(Debug, Clone, Default)]
pub struct EchoAgentBuilder {
    reply_prefix: Option<String>,
}

pub fn echo_agent() -> EchoAgentBuilder {
    EchoAgentBuilder::default()
}

impl EchoAgentBuilder {
    /// Reply to text frames with `<prefix><text>` instead of the bare text.
    pub fn reply_prefix(mut self, p: &str) -> Self {
        self.reply_prefix = Some(p.to_string());
        self
    }

    pub async fn spawn(self) -> EchoAgent {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo agent");
        let addr = listener.local_addr().expect("agent addr");
        let rec = Arc::new(Mutex::new(Recorded::default()));
        let (cmd_tx, _) = broadcast::channel::<Command>(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = {
            let rec = rec.clone();
            let cmd_tx = cmd_tx.clone();
            let builder = self.clone();
            tokio::spawn(async move {
                let mut stop_rx = stop_rx;
                loop {
                    let tcp = tokio::select! {
                        _ = stop_rx.changed() => break,
                        r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                    };
                    let _ = tcp.set_nodelay(true);
                    let rec = rec.clone();
                    let mut cmds = cmd_tx.subscribe();
                    let mut stop = stop_rx.clone();
                    let b = builder.clone();
                    tokio::spawn(async move {
                        let hs: Arc<Mutex<Option<Handshake>>> = Arc::default();
                        let hs2 = hs.clone();
                        #[allow(clippy::result_large_err)]
                        // the callback signature is tungstenite's
                        let cb = move |req: &Request, resp: Response| {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_ascii_lowercase(),
                                        v.to_str().unwrap_or("").to_string(),
                                    )
                                })
                                .collect();
                            *hs2.lock().unwrap() = Some(Handshake {
                                path: req.uri().path().to_string(),
                                query: req.uri().query().unwrap_or("").to_string(),
                                headers,
                            });
                            Ok(resp)
                        };
                        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                            return;
                        };
                        let conn = {
                            let mut r = rec.lock().unwrap();
                            r.handshakes
                                .push(hs.lock().unwrap().take().expect("handshake recorded"));
                            r.active += 1;
                            r.handshakes.len() - 1
                        };
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                c = cmds.recv() => match c {
                                    Ok(Command::Drop) => break,
                                    Ok(Command::Close(code, reason)) => {
                                        let _ = ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))).await;
                                    }
                                    Err(_) => {}
                                },
                                m = ws.next() => match m {
                                    Some(Ok(m)) => {
                                        if matches!(m, Message::Text(_) | Message::Binary(_)) {
                                            rec.lock().unwrap().received.push(Received { conn, message: m.clone() });
                                        }
                                        if let Message::Close(f) = &m {
                                            rec.lock().unwrap().closes.push(f.as_ref().map(|f| u16::from(f.code)));
                                        }
                                        match m {
                                            Message::Text(t) => {
                                                let out = match &b.reply_prefix {
                                                    Some(p) => format!("{p}{t}"),
                                                    None => t.to_string(),
                                                };
                                                if ws.send(Message::Text(out.into())).await.is_err() { break; }
                                            }
                                            Message::Binary(bin) if ws.send(Message::Binary(bin.clone())).await.is_err() => break,
                                            _ => {}
                                        }
                                    }
                                    _ => break,
                                },
                            }
                        }
                        rec.lock().unwrap().active -= 1;
                    });
                }
            })
        };
        EchoAgent {
            addr,
            rec,
            cmd_tx,
            stop_tx,
            task: Some(task),
        }
    }
}

/// A running echo agent; stops (closing every connection abruptly) on drop.
pub struct EchoAgent {
    pub addr: SocketAddr,
    rec: Arc<Mutex<Recorded>>,
    cmd_tx: broadcast::Sender<Command>,
    stop_tx: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EchoAgent {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn endpoint(&self) -> String {
        format!("ws://{}", self.addr)
    }
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.rec.lock().unwrap().handshakes.clone()
    }
    pub fn received(&self) -> Vec<Received> {
        self.rec.lock().unwrap().received.clone()
    }
    pub fn received_texts(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r.text().map(str::to_string))
            .collect()
    }
    /// Close codes the agent received, in order.
    pub fn closes(&self) -> Vec<Option<u16>> {
        self.rec.lock().unwrap().closes.clone()
    }
    pub fn active(&self) -> usize {
        self.rec.lock().unwrap().active
    }
    /// Drops every connection without a close frame (as if the agent crashed).
    pub fn drop_connections(&self) {
        let _ = self.cmd_tx.send(Command::Drop);
    }
    /// Sends a close frame on every connection.
    pub fn close_connections(&self, code: u16, reason: &str) {
        let _ = self.cmd_tx.send(Command::Close(code, reason.to_string()));
    }
    /// Stops listening and drops every connection.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for EchoAgent {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

/// The example agent the control plane launches in tests (`examples/agents/echo_agent.py`), as
/// an absolute path.
pub fn example_agent_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agents/echo_agent.py")
        .canonicalize()
        .expect("examples/agents/echo_agent.py")
}
