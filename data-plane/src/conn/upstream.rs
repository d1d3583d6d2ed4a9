//! Opens the WebSocket to an agent for one client connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::snapshot::Service;

pub type Upstream = WebSocketStream<TcpStream>;

/// Identity of the client connection, forwarded to the agent.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    pub session_id: &'a str,
    pub connection_id: &'a str,
    pub client_ip: IpAddr,
    /// The client's own `X-Forwarded-For`, if it came through other proxies.
    pub prior_xff: Option<&'a str>,
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, port));
    }
    // Agents run next to the manager; skip the resolver for the common name.
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} does not resolve"),
            )
        })
}

fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ws://host:port<path>?session_id=ID` (keeping the agent's own path and query).
pub fn upstream_url(svc: &Service, session_id: &str) -> String {
    let sep = if svc.path.contains('?') { '&' } else { '?' };
    let host = if svc.host.contains(':') && !svc.host.starts_with('[') {
        format!("[{}]", svc.host)
    } else {
        svc.host.clone()
    };
    format!(
        "ws://{host}:{}{}{sep}session_id={}",
        svc.port,
        svc.path,
        encode_query_value(session_id)
    )
}

/// TCP connect + WebSocket handshake, bounded by `timeout`.
pub async fn connect(
    svc: &Service,
    fwd: &Forwarded<'_>,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<Upstream, String> {
    let fut = async {
        let addr = resolve(&svc.host, svc.port)
            .await
            .map_err(|e| format!("resolve {}: {e}", svc.host))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // Small request/response frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let mut req = upstream_url(svc, fwd.session_id)
            .into_client_request()
            .map_err(|e| format!("upstream request: {e}"))?;
        let h = req.headers_mut();
        let hv = |s: &str| HeaderValue::from_str(s).map_err(|e| format!("header value: {e}"));
        h.insert("x-myagent-session-id", hv(fwd.session_id)?);
        h.insert("x-myagent-connection-id", hv(fwd.connection_id)?);
        let xff = match fwd.prior_xff {
            Some(p) if !p.is_empty() => format!("{p}, {}", fwd.client_ip),
            _ => fwd.client_ip.to_string(),
        };
        h.insert("x-forwarded-for", hv(&xff)?);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
            .await
            .map_err(|e| format!("handshake with {}: {e}", svc.endpoint))?;
        Ok(ws)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "upstream {} did not answer within {timeout:?}",
            svc.endpoint
        )),
    }
}
