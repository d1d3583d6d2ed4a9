//! Failover (DESIGN §6, §9): unexpected upstream ends, services turning non-routable or
//! draining, buffers, and the cases with no candidate left.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use myagent_proto::v1 as pb;
use myagent_tests::agents::{echo_agent, EchoAgent};
use myagent_tests::proxy::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn two_agents() -> (
    EchoAgent,
    EchoAgent,
    FakeControlPlane,
    ProxyHarness,
    Vec<pb::ServiceSnapshot>,
) {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let services = vec![
        service("id-a", "a", a.addr, &["t"]),
        service("id-b", "b", b.addr, &["t"]),
    ];
    cp.push(full(1, services.clone(), vec![]));
    proxy.wait_version(1).await;
    (a, b, cp, proxy, services)
}

/// Sequence numbers found in agent-received envelopes.
fn seqs_received(agent: &EchoAgent) -> BTreeSet<u64> {
    agent
        .received_texts()
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter_map(|v| v["original_message"]["seq"].as_u64())
        .collect()
}

/// Reads frames until `n` distinct echoed seqs were seen; returns them and the events.
async fn collect_echoes(ws: &mut Client, n: usize) -> (BTreeSet<u64>, Vec<Value>) {
    let mut seen = BTreeSet::new();
    let mut events = Vec::new();
    while seen.len() < n {
        let v = next_json(ws).await;
        if let Some(s) = v["original_message"]["seq"].as_u64() {
            seen.insert(s);
        } else {
            events.push(v);
        }
    }
    (seen, events)
}

#[tokio::test]
async fn upstream_crash_fails_over_with_zero_lost_messages() {
    let (a, b, _cp, proxy, _) = two_agents().await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t&routing_hint=round_robin")).await;
    let session_id = routed["session_id"].as_str().unwrap().to_string();
    let (first, other) = if routed["target_service"] == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let total = 300u64;
    let crash_at = 100u64;
    for seq in 0..total {
        send_text(&mut ws, &format!(r#"{{"seq":{seq}}}"#)).await;
        if seq == crash_at {
            first.drop_connections();
        }
    }
    let (seen, events) = collect_echoes(&mut ws, total as usize).await;
    assert_eq!(seen.len() as u64, total);
    let switched: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "service_switched")
        .collect();
    assert_eq!(switched.len(), 1, "{events:?}");
    let d = &switched[0]["data"];
    assert_eq!(d["from_service"], routed["target_service"]);
    assert_ne!(d["to_service"], routed["target_service"]);
    assert_eq!(d["reason"], "upstream_closed");
    assert_eq!(d["session_preserved"], true);
    // Every client message reached an agent (at-least-once), the new agent got the same session.
    let all: BTreeSet<u64> = seqs_received(first)
        .union(&seqs_received(other))
        .copied()
        .collect();
    assert_eq!(all.len() as u64, total);
    let hs = other.handshakes().pop().unwrap();
    assert_eq!(
        hs.query_param("session_id").as_deref(),
        Some(session_id.as_str())
    );
    // Envelopes after the switch name the new service.
    let last = other.received_texts().pop().unwrap();
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["proxy_metadata"]["target_service"], d["to_service"]);
    assert_eq!(v["proxy_metadata"]["session_id"], session_id.as_str());
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(
        metrics.contains("myagent_proxy_failovers_total{reason=\"upstream_closed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn agent_going_away_1001_fails_over() {
    let (a, b, _cp, proxy, _) = two_agents().await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t")).await;
    let first = if routed["target_service"] == "a" {
        &a
    } else {
        &b
    };
    first.close_connections(1001, "restarting");
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["event"], "service_switched", "{ev}");
    assert_eq!(ev["data"]["reason"], "upstream_closed");
    send_text(&mut ws, r#"{"seq":1}"#).await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["original_message"]["seq"], 1);
}

#[tokio::test]
async fn unhealthy_service_drains_then_switches_without_loss() {
    let (a, b, cp, proxy, mut services) = two_agents().await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t")).await;
    let from = routed["target_service"].as_str().unwrap().to_string();
    let (first, other) = if from == "a" { (&a, &b) } else { (&b, &a) };
    for seq in 0..20 {
        send_text(&mut ws, &format!(r#"{{"seq":{seq}}}"#)).await;
    }
    // The serving service turns unhealthy while frames are in flight.
    let idx = services.iter().position(|s| s.name == from).unwrap();
    services[idx].routable = false;
    services[idx].health = "unhealthy".into();
    cp.push(full(2, services, vec![]));
    for seq in 20..40 {
        send_text(&mut ws, &format!(r#"{{"seq":{seq}}}"#)).await;
    }
    let (seen, mut events) = collect_echoes(&mut ws, 40).await;
    assert_eq!(seen.len(), 40);
    // The first agent may have answered all 40 before the proxy saw the change: the drain and
    // switch then happen on the idle connection.
    while !events.iter().any(|e| e["event"] == "service_switched") {
        let v = next_json(&mut ws).await;
        assert!(v["original_message"].is_null(), "an echo after all 40: {v}");
        events.push(v);
    }
    let sw = events
        .iter()
        .find(|e| e["event"] == "service_switched")
        .expect("service_switched");
    assert_eq!(sw["data"]["reason"], "service_unhealthy");
    assert_eq!(sw["data"]["from_service"], from.as_str());
    // The old agent was closed with 1001 (drain), not cut.
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        first.closes().contains(&Some(1001)),
        "1001 close at the old agent"
    );
    let all: BTreeSet<u64> = seqs_received(first)
        .union(&seqs_received(other))
        .copied()
        .collect();
    assert_eq!(all.len(), 40);
}

#[tokio::test]
async fn draining_and_stopped_reasons() {
    let (_a, _b, cp, proxy, mut services) = two_agents().await;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t")).await;
    let from = routed["target_service"].as_str().unwrap().to_string();
    let idx = services.iter().position(|s| s.name == from).unwrap();
    // A drain without a reason (an older control plane): `service_unavailable`, one of the
    // event's closed list of reasons (there is no `service_draining`).
    services[idx].draining = true;
    cp.push(full(2, services.clone(), vec![]));
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["event"].as_str(), ev["data"]["reason"].as_str()),
        (Some("service_switched"), Some("service_unavailable")),
        "{ev}"
    );
    // Back to the first service, then a planned restart: the reason says so.
    let other = ev["data"]["to_service"].as_str().unwrap().to_string();
    services[idx].draining = false;
    let k = services.iter().position(|s| s.name == other).unwrap();
    services[k].draining = true;
    services[k].drain_reason = "restart".into();
    cp.push(full(3, services.clone(), vec![]));
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["data"]["reason"], "service_restarting", "{ev}");
    assert_eq!(ev["data"]["to_service"], from.as_str());
    services[k].draining = false;
    services[k].drain_reason.clear();
    services[idx].draining = true;
    services[idx].drain_reason = "restart".into();
    cp.push(full(4, services.clone(), vec![]));
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["event"].as_str(), ev["data"]["reason"].as_str()),
        (Some("service_switched"), Some("service_restarting"))
    );
    // Now stop the one it moved to (the first is back).
    let now = ev["data"]["to_service"].as_str().unwrap().to_string();
    services[idx].draining = false;
    services[idx].drain_reason.clear();
    let j = services.iter().position(|s| s.name == now).unwrap();
    services[j].routable = false;
    services[j].status = "stopped".into();
    cp.push(full(5, services.clone(), vec![]));
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["data"]["reason"], "service_stopped", "{ev}");
    assert_eq!(ev["data"]["to_service"], from.as_str());
    // A requested stop drains first (still running): the reason is the stop, not the drain.
    services[j].routable = true;
    services[j].status = "running".into();
    services[idx].draining = true;
    services[idx].drain_reason = "stop".into();
    cp.push(full(6, services, vec![]));
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["data"]["reason"], "service_stopped", "{ev}");
    assert_eq!(ev["data"]["to_service"], now.as_str());
}

/// The next event on `ws`, pushing the service's config as a new version (from `*version` on)
/// every 300 ms meanwhile: a switch that waits for its service tries again with each config that
/// comes after it saw the agent go, and a single push could land before that.
async fn next_event_pushing(
    cp: &FakeControlPlane,
    ws: &mut Client,
    version: &mut u64,
    svc: &pb::ServiceSnapshot,
) -> Value {
    for _ in 0..30 {
        cp.push(full(*version, vec![svc.clone()], vec![]));
        *version += 1;
        if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), next_json(ws)).await {
            return ev;
        }
    }
    panic!("no event within 9 s of config pushes");
}

/// The only service's agent goes away unexpectedly. The switch waits (bounded) for the config
/// to show the service again — an automatic restart, a new leader relaunching it — and the
/// session goes on with it; it ends at once when the config says the service failed or
/// stopped; and an agent that drops every connection without answering is given up on.
#[tokio::test]
async fn no_candidate_waits_for_the_service_or_relays_the_end() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    proxy.wait_version(1).await;

    // The agent is back (the next config shows it running): same service, same session.
    let running = service("id-a", "a", a.addr, &["t"]);
    let mut version = 2;
    let (mut ws, routed) = connect_routed(&proxy.ws_url("tag=t")).await;
    a.drop_connections();
    myagent_tests::assert_eventually!(Duration::from_secs(5), a.active() == 0, "dropped");
    send_text(&mut ws, r#"{"seq":1}"#).await;
    let switched = next_event_pushing(&cp, &mut ws, &mut version, &running).await;
    assert_eq!(switched["event"], "service_switched", "{switched}");
    let (seen, _) = collect_echoes(&mut ws, 1).await;
    assert!(seen.contains(&1));
    assert_eq!(switched["data"]["from_service"], "a");
    assert_eq!(switched["data"]["to_service"], "a");
    assert_eq!(switched["data"]["reason"], "upstream_closed");
    assert_eq!(switched["data"]["session_id"], routed["session_id"]);

    // The config says the service failed: the end is relayed at once.
    let (mut ws, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    a.close_connections(1001, "going away");
    let mut failed = service("id-a", "a", a.addr, &["t"]);
    failed.status = "error".into();
    failed.health = "unhealthy".into();
    failed.routable = false;
    cp.push(full(version, vec![failed], vec![]));
    version += 1;
    let (code, reason, events) = read_until_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "going away"));
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["data"]["recoverable"], true);

    // Nothing comes back within the wait: the end, 1011.
    cp.push(full(version, vec![running.clone()], vec![]));
    proxy.wait_version(version).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("service=a")).await;
    a.drop_connections();
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed within 20 s");
    assert_eq!(code, Some(1011));
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "waited for the service"
    );
}

/// An agent that drops every connection before answering is not waited for forever: after three
/// switches back to it without an answer in between, the next loss ends the connection at once.
#[tokio::test]
async fn an_agent_dropping_every_connection_is_given_up_on() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    proxy.wait_version(1).await;
    let (mut ws, _) = connect_routed(&proxy.ws_url("service=a")).await;
    let running = service("id-a", "a", a.addr, &["t"]);
    let mut version = 2;
    for _ in 0..3 {
        a.drop_connections();
        myagent_tests::assert_eventually!(Duration::from_secs(5), a.active() == 0, "dropped");
        let ev = next_event_pushing(&cp, &mut ws, &mut version, &running).await;
        assert_eq!(ev["event"], "service_switched", "{ev}");
        myagent_tests::assert_eventually!(Duration::from_secs(5), a.active() == 1, "back");
    }
    a.drop_connections();
    let started = std::time::Instant::now();
    let (code, _, events) = read_until_close(&mut ws).await;
    assert_eq!(code, 1011, "{events:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not waited for a fourth time"
    );
}

#[tokio::test]
async fn failover_buffer_overflow_closes_1013() {
    let a = echo_agent().spawn().await;
    // A "service" that accepts TCP but never answers the handshake: switching to it hangs.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = blackhole.local_addr().unwrap();
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |c| {
        c.client_buffer_frames = 5;
        c.connect_timeout = Duration::from_secs(5);
    })
    .await;
    cp.push(full(
        1,
        vec![
            service("id-a", "a", a.addr, &["t"]),
            service("id-h", "hole", hole_addr, &["t"]),
        ],
        vec![],
    ));
    proxy.wait_version(1).await;
    let mut ws = loop {
        let (ws, d) = connect_routed(&proxy.ws_url("tag=t&routing_hint=round_robin")).await;
        if d["target_service"] == "a" {
            break ws;
        }
    };
    a.drop_connections();
    // Wait for the switch to start (the agent connection is gone), then flood.
    myagent_tests::assert_eventually!(Duration::from_secs(5), a.active() == 0, "agent dropped");
    for seq in 0..20 {
        if futures::SinkExt::send(&mut ws, Message::Text(format!(r#"{{"seq":{seq}}}"#).into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, _, events) = read_until_close(&mut ws).await;
    assert_eq!(code, 1013);
    let err = events
        .iter()
        .find(|e| e["event"] == "error")
        .expect("error event");
    assert_eq!(err["data"]["code"], "INSUFFICIENT_RESOURCES");
    drop(blackhole);
    let _ = ws.next().await;
}

/// A session moved by failover counts against its new service's `max_sessions` at once, not
/// only once the control plane's load figures catch up (this fake control plane sends none).
#[tokio::test]
async fn a_moved_session_counts_against_the_new_services_capacity() {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut svc_b = service("id-b", "b", b.addr, &["t"]);
    svc_b.max_sessions = 2;
    cp.push(full(
        1,
        vec![service("id-a", "a", a.addr, &["t"]), svc_b],
        vec![],
    ));
    proxy.wait_version(1).await;
    // One session on b, then one on a (the least-loaded of the two).
    let (_on_b, d) = connect_routed(&proxy.ws_url("service=b")).await;
    assert_eq!(d["target_service"], "b", "{d}");
    let (mut moved, d) =
        connect_routed(&proxy.ws_url("tag=t&routing_hint=least_connections")).await;
    assert_eq!(d["target_service"], "a", "{d}");
    // a goes away: the session moves to b, which now holds its two sessions.
    a.drop_connections();
    let switched = next_json(&mut moved).await;
    assert_eq!(switched["event"], "service_switched", "{switched}");
    assert_eq!(switched["data"]["to_service"], "b", "{switched}");
    let mut third = connect(&proxy.ws_url("service=b")).await;
    let (close, _, events) = read_until_close(&mut third).await;
    let ev = events.first().expect("an error event");
    assert_eq!(ev["event"], "error", "{ev}");
    assert_eq!(ev["data"]["code"], "INSUFFICIENT_RESOURCES", "{ev}");
    assert_eq!(close, 1013);
}
