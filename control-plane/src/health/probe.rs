//! The WebSocket-handshake probe shared by start-up readiness and health checks.

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub response_time_ms: f64,
    /// Empty when `ok`.
    pub error: String,
}

pub fn ws_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("ws://[{host}]:{port}/")
    } else {
        format!("ws://{host}:{port}/")
    }
}

/// Opens a WebSocket to `host:port` and closes it again, all within `timeout`.
pub async fn handshake(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, async {
        let mut request = ws_url(host, port)
            .into_client_request()
            .map_err(|e| format!("bad endpoint: {e}"))?;
        request.headers_mut().insert(
            "user-agent",
            http::HeaderValue::from_static("myagent-health-check"),
        );
        let (ws, _resp) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(ws)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(Ok(mut ws)) => {
            // Closing politely is best effort and not part of the measured time.
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
            ProbeOutcome {
                ok: true,
                response_time_ms: elapsed,
                error: String::new(),
            }
        }
        Ok(Err(e)) => ProbeOutcome {
            ok: false,
            response_time_ms: elapsed,
            error: e,
        },
        Err(_) => ProbeOutcome {
            ok: false,
            response_time_ms: elapsed,
            error: format!(
                "no WebSocket handshake within {:.1}s",
                timeout.as_secs_f64()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_succeeds_against_a_websocket_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                        use futures::StreamExt;
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                });
            }
        });
        let out = handshake("127.0.0.1", port, Duration::from_secs(2)).await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn hung_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts TCP but never answers the upgrade.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let out = handshake("127.0.0.1", port, Duration::from_millis(300)).await;
        assert!(!out.ok);
        assert!(
            out.error.contains("no WebSocket handshake"),
            "{}",
            out.error
        );
        assert!(out.response_time_ms < 1_000.0);
    }

    #[tokio::test]
    async fn refused_port_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let out = handshake("127.0.0.1", port, Duration::from_secs(2)).await;
        assert!(!out.ok);
        assert!(out.response_time_ms < 1_000.0);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(ws_url("::1", 80), "ws://[::1]:80/");
        assert_eq!(ws_url("localhost", 81), "ws://localhost:81/");
    }
}
