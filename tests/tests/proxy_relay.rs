//! Proxy relaying against a fake control plane: events, envelope, headers, frames, close codes,
//! readiness, metrics.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use myagent_tests::agents::echo_agent;
use myagent_tests::proxy::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn relays_with_envelope_events_and_headers() {
    let agent = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;

    // Not ready before a config arrives.
    let (code, _) = proxy.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(proxy.admin_get("/healthz").await.0, 200);

    cp.push(full(
        3,
        vec![service("s1", "weather-agent", agent.addr, &["weather"])],
        vec![],
    ));
    cp.wait_ack(3).await;
    proxy.wait_version(3).await;
    let (code, body) = proxy.admin_get("/readyz").await;
    assert_eq!(code, 200, "{body}");

    let (mut ws, routed) = connect_routed(&proxy.ws_url("service=weather-agent")).await;
    assert_eq!(routed["target_service"], "weather-agent");
    assert_eq!(routed["service_endpoint"], agent.endpoint());
    assert_eq!(routed["routing_strategy"], "direct");
    let session_id = routed["session_id"].as_str().unwrap().to_string();
    let connection_id = routed["connection_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&session_id).is_ok());

    // JSON text: wrapped, original bytes verbatim.
    let raw = r#"{"q":"weather in Paris?","n":1.50}"#;
    send_text(&mut ws, raw).await;
    let echoed = match next_msg(&mut ws).await {
        Message::Text(t) => t.to_string(),
        m => panic!("{m:?}"),
    };
    assert!(
        echoed.starts_with(r#"{"proxy_metadata":{"connection_id":""#),
        "{echoed}"
    );
    assert!(
        echoed.ends_with(&format!(r#""original_message":{raw}}}"#)),
        "{echoed}"
    );
    let v: serde_json::Value = serde_json::from_str(&echoed).unwrap();
    let md = &v["proxy_metadata"];
    assert_eq!(md["connection_id"], connection_id.as_str());
    assert_eq!(md["target_service"], "weather-agent");
    assert_eq!(md["routing_strategy"], "direct");
    assert_eq!(md["session_id"], session_id.as_str());
    assert!(chrono::DateTime::parse_from_rfc3339(md["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(md.as_object().unwrap().len(), 5);

    // Non-JSON text becomes a JSON string.
    send_text(&mut ws, "plain words").await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["original_message"], "plain words");

    // Binary passes untouched.
    let bin: Vec<u8> = (0..=255).collect();
    ws.send(Message::Binary(bin.clone().into())).await.unwrap();
    match next_msg(&mut ws).await {
        Message::Binary(b) => assert_eq!(b.as_ref(), bin.as_slice()),
        m => panic!("{m:?}"),
    }

    // Upstream handshake carried the session and identity.
    let hs = agent.handshakes().pop().unwrap();
    assert_eq!(
        hs.query_param("session_id").as_deref(),
        Some(session_id.as_str())
    );
    assert_eq!(hs.header("x-myagent-session-id"), Some(session_id.as_str()));
    assert_eq!(
        hs.header("x-myagent-connection-id"),
        Some(connection_id.as_str())
    );
    assert_eq!(hs.header("x-forwarded-for"), Some("127.0.0.1"));

    // Client close code and reason reach the agent; the client gets its close answered.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f;
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(end.map(|f| u16::from(f.code)), Some(4000));

    // Reports: OPENED, CLOSED, session CREATED/DETACHED and counters reached the control plane.
    cp.wait_for("connection closed report", Duration::from_secs(10), |ms| {
        let closed = ms.iter().any(|m| match &m.kind {
            Some(myagent_proto::v1::proxy_message::Kind::Report(r)) => {
                r.connections.iter().any(|c| {
                    c.kind == myagent_proto::v1::connection_event::Kind::Closed as i32
                        && c.connection.as_ref().is_some_and(|c| {
                            c.connection_id == connection_id && c.message_count == 6
                        })
                })
            }
            _ => false,
        });
        closed.then_some(())
    })
    .await;
    let reports = cp.reports();
    let kinds: Vec<i32> = reports
        .iter()
        .flat_map(|r| r.sessions.iter().map(|s| s.kind))
        .collect();
    assert!(kinds.contains(&(myagent_proto::v1::session_event::Kind::Created as i32)));
    assert!(kinds.contains(&(myagent_proto::v1::session_event::Kind::Detached as i32)));
    let msgs_in: u64 = reports
        .iter()
        .flat_map(|r| r.counters.iter())
        .filter(|c| c.service_id == "s1")
        .map(|c| c.messages_in)
        .sum();
    assert_eq!(msgs_in, 3);

    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(
        metrics.contains("myagent_proxy_config_version 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("myagent_proxy_connections_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("myagent_proxy_messages_total{direction=\"client_to_agent\"} 3"),
        "{metrics}"
    );
    // The connection's response times reached the shared histogram when it ended.
    let answered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("myagent_proxy_upstream_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(answered >= 1, "{metrics}");
}

#[tokio::test]
async fn envelope_off_and_agent_paths_kept() {
    let agent = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut s = service("s1", "raw", agent.addr, &[]);
    s.proxy_metadata = false;
    s.endpoint = format!("ws://{}/agent/v1?token=abc", agent.addr);
    cp.push(full(1, vec![s], vec![]));
    proxy.wait_version(1).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("service=raw")).await;
    send_text(&mut ws, r#"{"a":1}"#).await;
    match next_msg(&mut ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), r#"{"a":1}"#),
        m => panic!("{m:?}"),
    }
    let hs = agent.handshakes().pop().unwrap();
    assert_eq!(hs.path, "/agent/v1");
    assert_eq!(hs.query_param("token").as_deref(), Some("abc"));
    assert!(hs.query_param("session_id").is_some());
}

#[tokio::test]
async fn agent_normal_close_ends_the_client_connection() {
    let agent = echo_agent().spawn().await;
    let other = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(
        1,
        vec![
            service("s1", "a", agent.addr, &["t"]),
            service("s2", "b", other.addr, &["t"]),
        ],
        vec![],
    ));
    proxy.wait_version(1).await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t")).await;
    send_text(&mut ws, "hi").await;
    let _ = next_msg(&mut ws).await;
    let served_by = if routed["target_service"] == "a" {
        &agent
    } else {
        &other
    };
    served_by.close_connections(1000, "conversation over");
    let (code, reason, _) = read_until_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1000, "conversation over"));
}

/// Connections opened one after another (each woke every event loop; the first to run took
/// it) are spread over the loops by their live connections, as `/metrics` shows per loop.
#[tokio::test]
async fn connections_are_spread_over_the_event_loops() {
    let agent = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |c| c.worker_threads = 2).await;
    cp.push(full(1, vec![service("s1", "a", agent.addr, &[])], vec![]));
    proxy.wait_version(1).await;
    let per_loop = || async {
        let (_, text) = proxy.admin_get("/metrics").await;
        ["0", "1"].map(|w| {
            let prefix = format!("myagent_proxy_worker_connections{{worker=\"{w}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        })
    };
    let mut clients = Vec::new();
    for i in 0..20 {
        let (mut ws, _) = connect_routed(&proxy.ws_url("service=a")).await;
        send_text(&mut ws, &format!("m{i}")).await;
        let _ = next_msg(&mut ws).await;
        clients.push(ws);
    }
    let [a, b] = per_loop().await;
    assert_eq!(a + b, 20);
    assert!((a - b).abs() <= 2, "loop 0 holds {a}, loop 1 {b}");
    // Every message still goes through, whichever loop took the connection over.
    for (i, ws) in clients.iter_mut().enumerate() {
        send_text(ws, &format!("again {i}")).await;
        let v = next_json(ws).await;
        assert_eq!(v["original_message"], format!("again {i}"));
    }
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while per_loop().await != [0, 0] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            per_loop().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn real_binary_prints_addresses_and_serves_health() {
    let dir = tempfile::tempdir().unwrap();
    let p = ProxyProcess::spawn(&[
        "--control-plane",
        "http://127.0.0.1:9",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let (code, body) = http_get(p.admin_addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_get(p.admin_addr, "/readyz").await.0, 503);
    // Garbage on the WebSocket port: an HTTP 400, and the proxy lives on.
    let (code, _) = raw_http(p.ws_addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, 400);
    assert_eq!(http_get(p.admin_addr, "/healthz").await.0, 200);
}

/// Client connections run on the proxy's own event-loop threads; a proxy whose future is
/// dropped mid-run (its runtime gone) still closes its listener and its connections.
#[test]
fn a_dropped_proxy_stops_accepting_and_closes_its_connections() {
    let outer = tokio::runtime::Runtime::new().unwrap();
    let (agent, cp) = outer.block_on(async {
        let agent = echo_agent().spawn().await;
        let cp = FakeControlPlane::spawn().await;
        (agent, cp)
    });
    let inner = tokio::runtime::Runtime::new().unwrap();
    let (proxy_addr, mut ws) = {
        let proxy = inner.block_on(spawn_proxy(&[cp.url()], |_| {}));
        cp.push(full(
            1,
            vec![service("s1", "a", agent.addr, &["t"])],
            vec![],
        ));
        inner.block_on(proxy.wait_version(1));
        let ws_url = proxy.ws_url("tag=t");
        let (ws, _) = outer.block_on(connect_routed(&ws_url));
        let addr = proxy.ws_addr;
        std::mem::forget(proxy); // no graceful stop: only the runtime goes away
        (addr, ws)
    };
    drop(inner);
    outer.block_on(async {
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the client connection outlived the proxy");
        // The worker threads close the listener as they stop, a moment after the connections
        // (bounded: it must not outlive the proxy).
        myagent_tests::assert_eventually!(
            Duration::from_secs(5),
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(proxy_addr)
            )
            .await
            .is_ok_and(|c| c.is_err()),
            "the listener outlived the proxy"
        );
    });
}

/// A client keepalive ping (as python `websockets` sends every 20 s) once the agent has taken
/// every queued frame: it used to underflow the failover-buffer byte count, which panicked the
/// relay in debug builds — the connection died without a CLOSED report, so its record stayed
/// `active` in the store until the node's lease ran out.
#[tokio::test]
async fn a_client_ping_keeps_the_relay_alive_and_the_close_reported() {
    let agent = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(
        1,
        vec![service("s1", "a", agent.addr, &["t"])],
        vec![],
    ));
    proxy.wait_version(1).await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("service=a")).await;
    let connection_id = routed["connection_id"].as_str().unwrap().to_string();
    send_text(&mut ws, "before").await;
    let _ = next_msg(&mut ws).await;
    ws.send(Message::Ping(b"keep".to_vec().into()))
        .await
        .unwrap();
    send_text(&mut ws, "after").await;
    // The ping is relayed and the agent's pong comes back: exactly one, with its payload (the
    // proxy answered it itself as well, a second pong).
    let mut pongs = Vec::new();
    let mut next = async |ws: &mut Client| loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("a valid frame");
        match m {
            Message::Pong(p) => pongs.push(p),
            m => break m,
        }
    };
    let echoed = next(&mut ws).await;
    assert!(echoed.to_text().unwrap().contains("after"), "{echoed:?}");
    send_text(&mut ws, "last").await;
    let last = next(&mut ws).await;
    assert!(last.to_text().unwrap().contains("last"), "{last:?}");
    assert_eq!(pongs.len(), 1, "one pong per ping: {pongs:?}");
    assert_eq!(&pongs[0][..], b"keep");
    ws.close(None).await.unwrap();
    cp.wait_for("connection closed report", Duration::from_secs(10), |ms| {
        ms.iter()
            .any(|m| match &m.kind {
                Some(myagent_proto::v1::proxy_message::Kind::Report(r)) => {
                    r.connections.iter().any(|c| {
                        c.kind == myagent_proto::v1::connection_event::Kind::Closed as i32
                            && c.connection
                                .as_ref()
                                .is_some_and(|c| c.connection_id == connection_id)
                    })
                }
                _ => false,
            })
            .then_some(())
    })
    .await;
}
