//! Starts myagent-gateway on port 0 against a control plane: in-process (`bind` + `run`) or as
//! the real binary, whose first stdout line is `myagent-gateway listening http=127.0.0.1:PORT`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Builder: `gateway().control_plane(url).spawn().await`.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    control_plane: Vec<String>,
    args: Vec<String>,
}

/// A gateway with no reachable control plane until `control_plane` is called (port 1 refuses).
pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        control_plane: Vec::new(),
        args: Vec::new(),
    }
}

impl GatewayBuilder {
    /// Adds a control-plane gRPC URL (call several times for failover).
    pub fn control_plane(mut self, url: impl Into<String>) -> Self {
        self.control_plane.push(url.into());
        self
    }

    /// Any other flag, e.g. `.arg("--max-body-bytes").arg("1024")`.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    fn argv(&self) -> Vec<String> {
        let cps = if self.control_plane.is_empty() {
            "http://127.0.0.1:1".to_string()
        } else {
            self.control_plane.join(",")
        };
        let mut v = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--control-plane".to_string(),
            cps,
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    /// In-process: `myagent_gateway::bind` then `Bound::run` on a task; stops on drop.
    pub async fn spawn(self) -> Gateway {
        let mut argv = vec!["myagent-gateway".to_string()];
        argv.extend(self.argv());
        let cli = myagent_gateway::Cli::try_parse_from(argv).expect("gateway flags");
        let bound = myagent_gateway::bind(cli).await.expect("bind gateway");
        let addr = bound.listen_addr;
        let base = bound.base_url();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Gateway {
            addr,
            base,
            shutdown,
            task: Some(task),
        }
    }

    /// The real binary; the address is read from its `listening` line. Killed on drop.
    pub fn spawn_binary(self) -> GatewayProcess {
        let mut child = Command::new(crate::bins::path(crate::bins::GATEWAY))
            .args(self.argv())
            .env("MYAGENT_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn myagent-gateway");
        let stdout = child.stdout.take().expect("stdout");
        // Blocking read of one line: the binary prints it right after binding, before serving.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = parse_listening_line(&line)
            .unwrap_or_else(|| panic!("unexpected first stdout line from gateway: {line:?}"));
        GatewayProcess {
            addr,
            base: format!("http://{addr}"),
            child,
        }
    }
}

/// Parses `myagent-gateway listening http=127.0.0.1:PORT` (or `https=`).
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("myagent-gateway listening ")?;
    let (_, addr) = rest.split_once('=')?;
    addr.parse().ok()
}

/// In-process gateway; shuts down when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    /// e.g. `http://127.0.0.1:40123`
    pub base: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<myagent_gateway::Result<()>>>,
}

impl Gateway {
    /// `gw.api("/services")` → `http://127.0.0.1:PORT/api/v1/services`.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the gateway and waits until it has drained.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real gateway binary; killed (by its own pid) when dropped.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    pub base: String,
    child: Child,
}

impl GatewayProcess {
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client with a short timeout, for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// Sends a request and returns (status, JSON body); a non-JSON body is a test failure.
pub async fn json(resp: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = resp.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Asserts the seed's error shape and code; returns `error.details`.
pub fn assert_error(
    status: u16,
    body: &serde_json::Value,
    want_status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(status, want_status, "status for {body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let ts = body["error"]["details"]["timestamp"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ts.ends_with('Z'),
        "details.timestamp missing or not UTC: {body}"
    );
    body["error"]["details"].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_parses() {
        assert_eq!(
            parse_listening_line("myagent-gateway listening http=127.0.0.1:8000\n"),
            Some("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(parse_listening_line("hello"), None);
    }
}
