//! Limits and malformed input: oversized frames (1009), protocol violations (1002), invalid
//! UTF-8 (1007), idle timeout, and other connections unaffected.

use std::time::Duration;

use futures::SinkExt;
use myagent_tests::agents::echo_agent;
use myagent_tests::proxy::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn setup(
    tweak: impl FnOnce(&mut myagent_data_plane::Cli),
) -> (
    myagent_tests::agents::EchoAgent,
    FakeControlPlane,
    ProxyHarness,
) {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], tweak).await;
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    proxy.wait_version(1).await;
    (a, cp, proxy)
}

#[tokio::test]
async fn oversized_frame_closes_1009_and_others_continue() {
    let (_a, _cp, proxy) = setup(|c| c.max_frame_bytes = 1024).await;
    let (mut good, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    let (mut bad, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    bad.send(Message::Binary(vec![7u8; 4096].into()))
        .await
        .unwrap();
    let (code, _, events) = read_until_close(&mut bad).await;
    assert_eq!(code, 1009);
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["data"]["code"], "INVALID_REQUEST");
    // 1 KiB exactly is fine on the other connection.
    good.send(Message::Binary(vec![1u8; 1024].into()))
        .await
        .unwrap();
    match next_msg(&mut good).await {
        Message::Binary(b) => assert_eq!(b.len(), 1024),
        m => panic!("{m:?}"),
    }
}

/// The client limits are the client's: an agent's answer may be larger than the message it
/// answers (here the envelope makes the echo of an 800-byte message about 1,050 bytes) and is
/// relayed. An agent frame over the agent limits ends the connection once, with an error
/// event, instead of failing over to another agent with the same message again and again.
#[tokio::test]
async fn agent_frames_have_their_own_limit_and_never_loop_failovers() {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |c| c.max_frame_bytes = 1000).await;
    let strict = spawn_proxy(&[cp.url()], |c| {
        c.max_frame_bytes = 1000;
        c.max_agent_frame_bytes = 900;
    })
    .await;
    cp.push(full(
        1,
        vec![
            service("id-a", "a", a.addr, &["t"]),
            service("id-b", "b", b.addr, &["t"]),
        ],
        vec![],
    ));
    proxy.wait_version(1).await;
    strict.wait_version(1).await;
    let text = format!("{{\"d\":\"{}\"}}", "x".repeat(790));
    assert!(text.len() < 1000);

    let (mut ws, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    ws.send(Message::Text(text.clone().into())).await.unwrap();
    let echo = next_msg(&mut ws).await;
    let echo = echo.to_text().unwrap();
    assert!(echo.len() > 1000 && echo.contains(&text), "{echo}");

    let (mut ws, _) = connect_routed(&strict.ws_url("tag=t")).await;
    ws.send(Message::Text(text.into())).await.unwrap();
    let (code, _, events) = read_until_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert_eq!(events.len(), 1, "one error event, no switches: {events:?}");
    assert_eq!(events[0]["event"], "error", "{events:?}");
    assert_eq!(events[0]["data"]["code"], "ROUTING_FAILED", "{events:?}");
    assert_eq!(events[0]["data"]["recoverable"], false, "{events:?}");
}

/// A raw WebSocket client: handshake by hand, then arbitrary bytes.
async fn raw_ws(proxy: &ProxyHarness) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy.ws_addr).await.unwrap();
    let req = "GET /ws?tag=t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 head and the connection_routed frame.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("connection_routed") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Reads frames until a close frame; returns its code.
async fn raw_close_code(s: &mut tokio::net::TcpStream) -> u16 {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            panic!("closed without a close frame: {all:?}");
        }
        all.extend_from_slice(&buf[..n]);
        // Walk unmasked server frames.
        let mut i = 0;
        while i + 2 <= all.len() {
            let op = all[i] & 0x0f;
            let mut len = (all[i + 1] & 0x7f) as usize;
            let mut h = 2;
            if len == 126 {
                if i + 4 > all.len() {
                    break;
                }
                len = u16::from_be_bytes([all[i + 2], all[i + 3]]) as usize;
                h = 4;
            }
            if i + h + len > all.len() {
                break;
            }
            if op == 0x8 {
                return u16::from_be_bytes([all[i + h], all[i + h + 1]]);
            }
            i += h + len;
        }
    }
}

fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op, 0x80 | payload.len() as u8, 1, 2, 3, 4];
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    f
}

#[tokio::test]
async fn malformed_frames_get_protocol_close_codes() {
    let (_a, _cp, proxy) = setup(|_| {}).await;
    let (mut good, _) = connect_routed(&proxy.ws_url("tag=t")).await;

    // Reserved opcode 0x3 → 1002.
    let mut s = raw_ws(&proxy).await;
    s.write_all(&masked(0x3, b"x")).await.unwrap();
    assert_eq!(raw_close_code(&mut s).await, 1002);

    // Unmasked client frame → 1002.
    let mut s = raw_ws(&proxy).await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw_close_code(&mut s).await, 1002);

    // Invalid UTF-8 in a text frame → 1007.
    let mut s = raw_ws(&proxy).await;
    s.write_all(&masked(0x1, &[0xff, 0xfe, 0xfd]))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut s).await, 1007);

    // Garbage bytes after the upgrade: closed, no panic.
    let mut s = raw_ws(&proxy).await;
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01])
        .await
        .unwrap();
    let _ = raw_close_code_or_eof(&mut s).await;

    // The well-behaved connection still works.
    send_text(&mut good, r#"{"still":"here"}"#).await;
    assert_eq!(
        next_json(&mut good).await["original_message"]["still"],
        "here"
    );
}

async fn raw_close_code_or_eof(s: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n >= 4 && buf[0] & 0x0f == 0x8).then(|| u16::from_be_bytes([buf[2], buf[3]]))
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (_a, _cp, proxy) = setup(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    let started = std::time::Instant::now();
    let (code, reason, _) = read_until_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn traffic_keeps_a_connection_from_idling_out() {
    let (_a, _cp, proxy) = setup(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    // A message every 100 ms for four idle timeouts: the connection stays open.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        ws.send(Message::Binary(vec![1u8; 8].into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut ws))
            .await
            .expect("no echo within 2 s");
        assert!(matches!(reply, Some(Ok(Message::Binary(_)))), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then quiet: closed for idleness.
    let (code, reason, _) = read_until_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let (_a, _cp, proxy) = setup(|_| {}).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    let stopper = tokio::spawn(proxy.stop());
    let (code, _, _) = read_until_close(&mut ws).await;
    assert_eq!(code, 1001);
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), stopper)
        .await
        .unwrap()
        .unwrap();
}

/// Flag values the parser cannot check are refused at start-up, naming the flag (they were
/// accepted, and failed later: a bad control-plane URL retried forever, a huge worker count ran
/// out of file descriptors, a `/` in the node id split its etcd keys).
#[tokio::test]
async fn bad_flag_values_fail_at_bind_with_the_flag_named() {
    type Tweak = Box<dyn Fn(&mut myagent_data_plane::Cli)>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "--control-plane",
            Box::new(|c| c.control_plane = vec!["bad url".into()]),
        ),
        (
            "--control-plane",
            Box::new(|c| c.control_plane = vec!["ftp://127.0.0.1:1".into()]),
        ),
        ("--node-id", Box::new(|c| c.node_id = Some("a/b".into()))),
        ("--worker-threads", Box::new(|c| c.worker_threads = 100_000)),
        (
            "--connect-timeout",
            Box::new(|c| c.connect_timeout = Duration::ZERO),
        ),
        (
            "--max-agent-frame-bytes",
            Box::new(|c| c.max_agent_frame_bytes = 0),
        ),
        (
            "--client-buffer-frames",
            Box::new(|c| c.client_buffer_frames = 0),
        ),
        ("--max-connections", Box::new(|c| c.max_connections = 0)),
        // A frame limit above the message limit used to raise the message limit silently.
        (
            "--max-frame-bytes (8388608) is above --max-message-bytes (4194304)",
            Box::new(|c| c.max_frame_bytes = 8 << 20),
        ),
        (
            "--max-agent-frame-bytes (2048) is above --max-agent-message-bytes (1024)",
            Box::new(|c| {
                c.max_agent_frame_bytes = 2048;
                c.max_agent_message_bytes = 1024;
            }),
        ),
    ];
    for (flag, tweak) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cli = myagent_data_plane::Cli::for_addrs(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            &["http://127.0.0.1:1".to_string()],
            dir.path().to_path_buf(),
        );
        tweak(&mut cli);
        let err = match myagent_data_plane::bind(cli).await {
            Ok(_) => panic!("{flag}: bind must fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(flag), "{flag}: {err}");
    }
}
