//! The whole data path with nothing faked: the real control plane (embedded store) streaming
//! config to two real proxies, real WebSocket agents behind them, clients over real sockets.
//! Routing, the envelope, session resume through the other proxy, admin disconnect and failover.

use std::time::{Duration, Instant};

use myagent_proto::v1 as pb;
use myagent_tests::agents::{echo_agent, EchoAgent};
use myagent_tests::control_plane::{control_plane, ControlPlane};
use myagent_tests::proxy::{
    next_json, read_until_close, routed_eventually, send_text, spawn_proxy,
};
use myagent_tests::wait;

/// Registers an external service for `agent` and admits it to routing.
async fn add_agent(cp: &ControlPlane, name: &str, agent: &EchoAgent, tags: &[&str]) -> String {
    let mut registry = cp.registry().await;
    let created = registry
        .register_service(pb::RegisterServiceRequest {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: u32::from(agent.port()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let started = registry
        .start_service(pb::StartServiceRequest {
            service: name.into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.status, "running");
    created.service_id
}

#[tokio::test]
async fn route_envelope_resume_disconnect_and_failover_through_real_proxies() {
    let cp = control_plane().spawn().await;
    let p1 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let p2 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let agent_a = echo_agent().spawn().await;
    let agent_b = echo_agent().spawn().await;
    let id_a = add_agent(&cp, "agent-a", &agent_a, &["weather"]).await;
    add_agent(&cp, "agent-b", &agent_b, &["weather"]).await;

    // Direct routing through proxy 1, with the seed §2.2 envelope around the client's JSON.
    let t0 = Instant::now();
    let (mut ws, data) = routed_eventually(p1.ws_url("service=agent-a")).await;
    println!("config reached the proxy and routed in {:?}", t0.elapsed());
    assert_eq!(data["target_service"], "agent-a", "{data}");
    assert_eq!(data["routing_strategy"], "direct", "{data}");
    let session = data["session_id"].as_str().expect("session_id").to_string();
    let conn_id = data["connection_id"]
        .as_str()
        .expect("connection_id")
        .to_string();
    send_text(&mut ws, r#"{"q":"weather?"}"#).await;
    let echoed = next_json(&mut ws).await;
    assert_eq!(echoed["original_message"]["q"], "weather?", "{echoed}");
    assert_eq!(echoed["proxy_metadata"]["connection_id"], conn_id.as_str());
    assert_eq!(echoed["proxy_metadata"]["target_service"], "agent-a");
    let hs = agent_a.handshakes();
    let last = hs.last().expect("agent saw a handshake");
    assert_eq!(last.header("x-myagent-session-id"), Some(session.as_str()));
    assert_eq!(
        last.query_param("session_id").as_deref(),
        Some(session.as_str())
    );

    // The connection shows up in the cluster-wide view, and an admin disconnect reaches it.
    let mut conns = pb::connections_client::ConnectionsClient::new(cp.channel().await);
    wait::until(
        "the connection in the cluster view",
        Duration::from_secs(10),
        || {
            let mut conns = conns.clone();
            let (conn_id, id_a) = (conn_id.clone(), id_a.clone());
            async move {
                let list = conns
                    .list_connections(pb::ListConnectionsRequest {
                        status: "active".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                list.connections
                    .iter()
                    .any(|c| c.connection_id == conn_id && c.target_service_id == id_a)
                    .then_some(())
            }
        },
    )
    .await;
    conns
        .disconnect(pb::DisconnectRequest {
            connection_id: conn_id.clone(),
            reason: "maintenance".into(),
            notify_client: Some(true),
        })
        .await
        .expect("disconnect");
    let (_code, reason, events) = read_until_close(&mut ws).await;
    assert!(reason.contains("maintenance"), "close reason {reason:?}");
    assert!(
        events.iter().any(|e| e["event"] == "connection_closed"),
        "events before close: {events:?}"
    );

    // The session resumes through the OTHER proxy, on the same service.
    let (mut ws2, data) = routed_eventually(p2.ws_url(&format!("session_id={session}"))).await;
    assert_eq!(data["session_id"], session.as_str(), "{data}");
    assert_eq!(data["target_service"], "agent-a", "{data}");
    assert_eq!(data["routing_strategy"], "session_affinity", "{data}");
    send_text(&mut ws2, r#"{"again":true}"#).await;
    assert_eq!(next_json(&mut ws2).await["original_message"]["again"], true);

    // Failover: agent A's connections drop; the client is switched to B with its session and
    // the next message is answered by B.
    agent_a.drop_connections();
    let switched = next_json(&mut ws2).await;
    assert_eq!(switched["event"], "service_switched", "{switched}");
    assert_eq!(switched["data"]["from_service"], "agent-a", "{switched}");
    assert_eq!(switched["data"]["to_service"], "agent-b", "{switched}");
    assert_eq!(switched["data"]["session_preserved"], true, "{switched}");
    send_text(&mut ws2, r#"{"after":"failover"}"#).await;
    assert_eq!(
        next_json(&mut ws2).await["original_message"]["after"],
        "failover"
    );
    assert!(
        agent_b
            .received_texts()
            .iter()
            .any(|t| t.contains("failover")),
        "agent B did not receive the message"
    );
}

/// A client that drops its first connection and resumes through the other proxy at once keeps
/// its session: new sessions are reported and written ahead of the batching ticks.
#[tokio::test]
async fn immediate_resume_through_the_other_proxy_keeps_the_session() {
    let cp = control_plane().spawn().await;
    let p1 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let p2 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let agent_a = echo_agent().spawn().await;
    let agent_b = echo_agent().spawn().await;
    add_agent(&cp, "agent-a", &agent_a, &["weather"]).await;
    add_agent(&cp, "agent-b", &agent_b, &["weather"]).await;
    // Both proxies route before the measured part starts.
    routed_eventually(p2.ws_url("tag=weather")).await;
    for round in 0..5 {
        let (mut ws, data) = routed_eventually(p1.ws_url("tag=weather")).await;
        let session = data["session_id"].as_str().expect("session_id").to_string();
        let service = data["target_service"].clone();
        ws.close(None).await.expect("close");
        let t0 = Instant::now();
        let (_ws2, data2) = routed_eventually(p2.ws_url(&format!("session_id={session}"))).await;
        println!(
            "round {round}: resumed through proxy 2 in {:?}",
            t0.elapsed()
        );
        assert_eq!(
            data2["session_id"],
            session.as_str(),
            "round {round}: {data2}"
        );
        assert_eq!(data2["target_service"], service, "round {round}: {data2}");
        assert_eq!(data2["routing_strategy"], "session_affinity", "{data2}");
    }
}

/// A write with `wait_for_sync` answers with the sync status the wait ended with: every proxy
/// holding the change, not the status read when the change was written (before any proxy
/// could have it).
#[tokio::test]
async fn writes_that_wait_for_sync_answer_with_the_synced_status() {
    let cp = control_plane().spawn().await;
    let _p1 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let _p2 = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let mut registry = cp.registry().await;
    let check = |what: &str, sync: Option<pb::SyncStatus>| {
        let sync = sync.unwrap_or_else(|| panic!("{what}: no sync status"));
        assert!(sync.in_sync, "{what}: {sync:?}");
        assert_eq!(sync.proxies.len(), 2, "{what}: {sync:?}");
        assert!(
            sync.proxies
                .iter()
                .all(|p| p.in_sync && p.applied_version >= sync.config_version),
            "{what}: {sync:?}"
        );
    };
    // Both proxies connected before the writes (until then a write waits for those it knows).
    async fn register(
        registry: &mut pb::service_registry_client::ServiceRegistryClient<
            tonic::transport::Channel,
        >,
        name: &str,
        port: u32,
    ) -> pb::RegisterServiceResponse {
        registry
            .register_service(pb::RegisterServiceRequest {
                name: name.into(),
                host: "127.0.0.1".into(),
                port,
                wait_for_sync: 10.0,
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner()
    }
    let first = register(&mut registry, "synced", 9).await;
    wait::until(
        "both proxies in the sync view",
        Duration::from_secs(10),
        || {
            let mut registry = registry.clone();
            async move {
                let s = registry
                    .get_service(pb::GetServiceRequest {
                        service: "synced".into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (s.sync?.proxies.len() == 2).then_some(())
            }
        },
    )
    .await;
    assert!(first.service.is_some());

    let registered = register(&mut registry, "synced-2", 10).await;
    check("register", registered.service.and_then(|s| s.sync));
    for (what, weight) in [
        ("config change", Some(7)),
        ("write that changes nothing", None),
    ] {
        let updated = registry
            .update_service_config(pb::UpdateServiceConfigRequest {
                service: "synced-2".into(),
                config: Some(pb::ServiceConfig {
                    weight,
                    ..Default::default()
                }),
                wait_for_sync: 10.0,
            })
            .await
            .expect("update")
            .into_inner();
        check(what, updated.sync);
    }
}

/// The only instance of a managed service crashes (SIGKILL) and its supervisor restarts it: the
/// client's connection waits for it and goes on with the restarted agent, same session, the
/// message sent meanwhile answered. It used to end with `ROUTING_FAILED` and a 1011 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_only_agent_restarted_by_its_supervisor_keeps_the_connection() {
    let cp = control_plane().spawn().await;
    let proxy = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let mut registry = cp.registry().await;
    let pid = myagent_tests::control_plane::start_example_agent(&mut registry, "only-one").await;

    let (mut ws, data) = routed_eventually(proxy.ws_url("service=only-one")).await;
    let session = data["session_id"].as_str().unwrap().to_string();
    send_text(&mut ws, r#"{"n":1}"#).await;
    let echo = next_json(&mut ws).await;
    assert_eq!(echo["original_message"]["n"], 1, "{echo}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    send_text(&mut ws, r#"{"n":2}"#).await;
    let switched = next_json(&mut ws).await;
    assert_eq!(switched["event"], "service_switched", "{switched}");
    assert_eq!(switched["data"]["from_service"], "only-one");
    assert_eq!(switched["data"]["to_service"], "only-one");
    assert_eq!(switched["data"]["session_id"], session.as_str());
    let echo = next_json(&mut ws).await;
    assert_eq!(echo["original_message"]["n"], 2, "{echo}");
    assert_eq!(echo["proxy_metadata"]["session_id"], session.as_str());
    let now = registry
        .get_service(pb::GetServiceRequest {
            service: "only-one".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(now.runtime.map(|r| r.pid), Some(pid), "a new process");
}
