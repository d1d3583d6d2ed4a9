//! Opens the WebSocket to an agent for one client connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::ws::{Limits, Role, WsStream};
use crate::rt::TcpStream;
use crate::snapshot::Service;

pub type Upstream = WsStream<TcpStream>;

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
    // (The resolver runs on a tokio runtime's blocking pool: the timer thread's.)
    let name = host.to_string();
    let found = crate::timer::background(async move {
        tokio::net::lookup_host((name.as_str(), port))
            .await
            .map(|mut addrs| addrs.next())
    })
    .await
    .map_err(std::io::Error::other)??;
    found.ok_or_else(|| {
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

/// The request target `<path>?session_id=ID` (keeping the agent's own path and query).
fn request_target(svc: &Service, session_id: &str) -> String {
    let sep = if svc.path.contains('?') { '&' } else { '?' };
    format!(
        "{}{sep}session_id={}",
        svc.path,
        encode_query_value(session_id)
    )
}

/// The `Host` header value (`host:port`, IPv6 in brackets).
fn host_header(svc: &Service) -> String {
    if svc.host.contains(':') && !svc.host.starts_with('[') {
        format!("[{}]:{}", svc.host, svc.port)
    } else {
        format!("{}:{}", svc.host, svc.port)
    }
}

/// A header value we put on the wire: printable, no line breaks.
fn header_value(v: &str) -> Result<&str, String> {
    if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(v)
    } else {
        Err(format!(
            "header value {v:?} has characters HTTP does not allow"
        ))
    }
}

/// The longest handshake response accepted from an agent.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// TCP connect + WebSocket handshake, bounded by `timeout`.
pub async fn connect(
    svc: &Service,
    fwd: &Forwarded<'_>,
    limits: Limits,
    timeout: Duration,
) -> Result<Upstream, String> {
    let fut = async {
        let addr = resolve(&svc.host, svc.port)
            .await
            .map_err(|e| format!("resolve {}: {e}", svc.host))?;
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // Small request/response frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let key = generate_key();
        let xff = match fwd.prior_xff {
            Some(p) if !p.is_empty() => format!("{p}, {}", fwd.client_ip),
            _ => fwd.client_ip.to_string(),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
             X-MyAgent-Session-Id: {}\r\nX-MyAgent-Connection-Id: {}\r\nX-Forwarded-For: {}\r\n\r\n",
            request_target(svc, fwd.session_id),
            host_header(svc),
            header_value(fwd.session_id)?,
            header_value(fwd.connection_id)?,
            header_value(&xff)?,
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write handshake to {}: {e}", svc.endpoint))?;
        let mut buf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if tcp
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read handshake from {}: {e}", svc.endpoint))?
                == 0
            {
                return Err(format!("{} closed during the handshake", svc.endpoint));
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    check_response(&resp, &key)
                        .map_err(|e| format!("handshake with {}: {e}", svc.endpoint))?;
                    break n;
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(format!("{} sent an oversized handshake", svc.endpoint))
                }
                Err(e) => return Err(format!("handshake with {}: {e}", svc.endpoint)),
            }
        };
        let mut ws = WsStream::new(tcp, Role::Client, limits, &buf[head_len..]);
        // Only a relay reads it: the agent's pings go to the client, whose pongs come back.
        ws.set_auto_pong(false);
        Ok(ws)
    };
    match crate::timer::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "upstream {} did not answer within {timeout:?}",
            svc.endpoint
        )),
    }
}

fn check_response(resp: &httparse::Response<'_, '_>, key: &str) -> Result<(), String> {
    if resp.code != Some(101) {
        return Err(format!(
            "HTTP error: {} {}",
            resp.code.unwrap_or(0),
            resp.reason.unwrap_or("")
        ));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value))
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err("101 without Upgrade: websocket / Connection: Upgrade".into());
    }
    if header("sec-websocket-accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err("wrong Sec-WebSocket-Accept".into());
    }
    Ok(())
}
