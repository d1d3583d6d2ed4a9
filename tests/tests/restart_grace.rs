//! Restart with a grace period, end to end: the real control plane, a real proxy, a managed
//! echo agent (examples/agents/echo_agent.py) and a client connected through the proxy.
//! `restart` with `grace_seconds` and `message` first sends the client a
//! `management_notification` (seed §2.3: type `maintenance_window`, message, severity,
//! `countdown_seconds`) while the agent still runs, restarts it once the grace is over, and the
//! service is running again (a new process) afterwards.

use std::time::{Duration, Instant};

use futures::StreamExt;
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::control_plane;
use myagent_tests::proxy::{routed_eventually, send_text, spawn_proxy, Client};
use pb::service_registry_client::ServiceRegistryClient;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

const GRACE: u32 = 2;
const NOTICE: &str = "Planned maintenance: grace-echo restarts in 2 seconds";

/// The next JSON text frame whose `event` is `name`; other frames are skipped.
async fn next_event(ws: &mut Client, name: &str, within: Duration) -> Value {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if v["event"] == name {
                            return v;
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => panic!("closed before {name}: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error before {name}: {e}"),
                None => panic!("socket ended before {name}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} event within {within:?}"))
}

/// Registers a managed echo agent (examples/agents/echo_agent.py) on a free port as `name` and
/// starts it.
/// A message sent now is answered by `service` (its envelope names it).
async fn assert_goes_on_with(ws: &mut Client, service: &str) {
    send_text(ws, r#"{"hello":"after"}"#).await;
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    let text = echo.to_text().unwrap().to_string();
    assert!(text.contains("after") && text.contains(service), "{text}");
}

async fn start_echo_agent(
    registry: &mut ServiceRegistryClient<Channel>,
    name: &str,
    tags: &[&str],
    config: pb::ServiceConfig,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = myagent_tests::agents::example_agent_path();
    registry
        .register_service(pb::RegisterServiceRequest {
            name: name.into(),
            agent_factory_path: agent.display().to_string(),
            host: "127.0.0.1".into(),
            port: u32::from(port),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            config: Some(pb::ServiceConfig {
                startup_timeout: Some(10.0),
                ..config
            }),
            ..Default::default()
        })
        .await
        .expect("register");
    let started = registry
        .start_service(pb::StartServiceRequest {
            service: name.into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.status, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_grace_notifies_clients_then_restarts() {
    let cp = control_plane().spawn().await;
    let proxy = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let mut registry = cp.registry().await;
    start_echo_agent(
        &mut registry,
        "grace-echo",
        &[],
        pb::ServiceConfig {
            // Keep the drain short: the client stays connected through the restart.
            drain_timeout: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let pid_of = |svc: pb::Service| svc.runtime.map(|r| r.pid).unwrap_or_default();
    let old_pid = pid_of(
        registry
            .get_service(pb::GetServiceRequest {
                service: "grace-echo".into(),
            })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(old_pid > 0);

    // A client through the proxy, talking to the agent.
    let (mut ws, routed_data) = routed_eventually(proxy.ws_url("service=grace-echo")).await;
    assert_eq!(routed_data["target_service"], "grace-echo", "{routed_data}");
    send_text(&mut ws, r#"{"hello":"before"}"#).await;
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert!(echo.to_text().unwrap().contains("before"), "{echo:?}");

    // Restart with a grace period, from another task: the call returns once it has restarted.
    let asked = Instant::now();
    let mut restarter = cp.registry().await;
    let restart = tokio::spawn(async move {
        let r = restarter
            .restart_service(pb::RestartServiceRequest {
                service: "grace-echo".into(),
                grace_seconds: Some(GRACE),
                message: NOTICE.into(),
                wait_for_sync: 0.0,
            })
            .await;
        (r, asked.elapsed())
    });

    let notice = next_event(&mut ws, "management_notification", Duration::from_secs(5)).await;
    let notified_after = asked.elapsed();
    println!(
        "management_notification after {} ms: {notice}",
        notified_after.as_millis()
    );
    let data = &notice["data"];
    assert_eq!(data["type"], "maintenance_window", "{notice}");
    assert_eq!(data["message"], NOTICE, "{notice}");
    assert_eq!(data["severity"], "warning", "{notice}");
    assert_eq!(data["countdown_seconds"], u64::from(GRACE), "{notice}");
    // The notice comes before the restart: the same process still runs.
    assert!(
        notified_after < Duration::from_secs(u64::from(GRACE)),
        "notified after {notified_after:?}, not within the grace period"
    );
    let during = registry
        .get_service(pb::GetServiceRequest {
            service: "grace-echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(during.status, "running", "still serving during the grace");
    assert_eq!(
        pid_of(during),
        old_pid,
        "not restarted before the grace is over"
    );

    let (result, took) = tokio::time::timeout(Duration::from_secs(40), restart)
        .await
        .expect("restart returns")
        .unwrap();
    let done = result.expect("restart succeeds").into_inner();
    println!(
        "restart with {GRACE}s grace returned after {:.2}s",
        took.as_secs_f64()
    );
    assert_eq!(done.status, "running", "{done:?}");
    assert!(
        took >= Duration::from_secs(u64::from(GRACE)),
        "the grace was honoured ({took:?})"
    );
    let after = registry
        .get_service(pb::GetServiceRequest {
            service: "grace-echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.status, "running");
    let new_pid = pid_of(after);
    assert!(
        new_pid > 0 && new_pid != old_pid,
        "a new process: {old_pid} → {new_pid}"
    );

    // The client connected through the restart stays connected: its session moves to the
    // restarted agent (the service had no other instance to switch to), and it talks on.
    let switched = next_event(&mut ws, "service_switched", Duration::from_secs(20)).await;
    assert_eq!(switched["data"]["from_service"], "grace-echo", "{switched}");
    assert_eq!(switched["data"]["to_service"], "grace-echo", "{switched}");
    assert_eq!(
        switched["data"]["reason"], "service_restarting",
        "{switched}"
    );
    assert_eq!(switched["data"]["session_preserved"], true, "{switched}");
    send_text(&mut ws, r#"{"hello":"through the restart"}"#).await;
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert!(
        echo.to_text().unwrap().contains("through the restart"),
        "{echo:?}"
    );

    // And new clients reach the restarted agent through the proxy.
    let (mut again, _) = routed_eventually(proxy.ws_url("service=grace-echo")).await;
    send_text(&mut again, r#"{"hello":"after"}"#).await;
    let echo = tokio::time::timeout(Duration::from_secs(5), again.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert!(echo.to_text().unwrap().contains("after"), "{echo:?}");
    drop((ws, again));
    proxy.stop().await;
    cp.shutdown().await;
}

/// A planned restart drains instead of cutting (DESIGN §6): once the grace is over, the proxy
/// moves the client to another candidate with `service_switched` (reason `service_restarting`)
/// before the control plane sends SIGTERM, so the restart does not wait out the drain timeout
/// (10 s by default here) and the client is not cut by the agent's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_grace_drains_clients_to_another_service_first() {
    let cp = control_plane().spawn().await;
    let proxy = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let mut registry = cp.registry().await;
    for name in ["drain-a", "drain-b"] {
        start_echo_agent(
            &mut registry,
            name,
            &["drain"],
            pb::ServiceConfig::default(),
        )
        .await;
    }

    let (mut ws, routed) = routed_eventually(proxy.ws_url("tag=drain")).await;
    let first = routed["target_service"].as_str().unwrap().to_string();
    let other = if first == "drain-a" {
        "drain-b"
    } else {
        "drain-a"
    };

    let asked = Instant::now();
    let mut restarter = cp.registry().await;
    let svc = first.clone();
    let restart = tokio::spawn(async move {
        let r = restarter
            .restart_service(pb::RestartServiceRequest {
                service: svc,
                grace_seconds: Some(1),
                message: "restarting".into(),
                wait_for_sync: 0.0,
            })
            .await;
        (r, asked.elapsed())
    });
    let notice = next_event(&mut ws, "management_notification", Duration::from_secs(5)).await;
    assert_eq!(notice["data"]["type"], "maintenance_window", "{notice}");

    let switched = next_event(&mut ws, "service_switched", Duration::from_secs(6)).await;
    let switched_after = asked.elapsed();
    println!(
        "service_switched after {} ms: {switched}",
        switched_after.as_millis()
    );
    assert_eq!(
        switched["data"]["from_service"],
        first.as_str(),
        "{switched}"
    );
    assert_eq!(switched["data"]["to_service"], other, "{switched}");
    assert_eq!(
        switched["data"]["reason"], "service_restarting",
        "{switched}"
    );
    assert_eq!(switched["data"]["session_preserved"], true, "{switched}");

    let (result, took) = tokio::time::timeout(Duration::from_secs(40), restart)
        .await
        .expect("restart returns")
        .unwrap();
    assert_eq!(
        result.expect("restart succeeds").into_inner().status,
        "running"
    );
    println!("restart returned after {:.2}s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(7),
        "restart waited out the 10 s drain timeout instead of draining: {took:?}"
    );

    // The client goes on with the other service.
    assert_goes_on_with(&mut ws, other).await;
    drop(ws);
    proxy.stop().await;
    cp.shutdown().await;
}

/// A stop or a delete drains the same way, and the client is told why: `service_switched`
/// with reason `service_stopped` or `service_removed` (a restart says `service_restarting`),
/// then it goes on with the other service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_moves_clients_with_reason_service_stopped() {
    planned_switch("stop", "service_stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_moves_clients_with_reason_service_removed() {
    planned_switch("delete", "service_removed").await;
}

async fn planned_switch(op: &'static str, reason: &str) {
    let cp = control_plane().spawn().await;
    let proxy = spawn_proxy(&[cp.grpc_url()], |_| {}).await;
    let mut registry = cp.registry().await;
    let (a, b) = (format!("{op}-a"), format!("{op}-b"));
    for name in [&a, &b] {
        start_echo_agent(&mut registry, name, &[op], pb::ServiceConfig::default()).await;
    }
    let (mut ws, routed) = routed_eventually(proxy.ws_url(&format!("tag={op}"))).await;
    let first = routed["target_service"].as_str().unwrap().to_string();
    let other = if first == a { b } else { a };

    let mut client = cp.registry().await;
    let service = first.clone();
    let call = tokio::spawn(async move {
        match op {
            "stop" => client
                .stop_service(pb::StopServiceRequest {
                    service,
                    wait_for_sync: 0.0,
                })
                .await
                .map(|r| r.into_inner().status),
            _ => client
                .delete_service(pb::DeleteServiceRequest {
                    service,
                    wait_for_sync: 0.0,
                })
                .await
                .map(|_| "deleted".to_string()),
        }
    });
    let switched = next_event(&mut ws, "service_switched", Duration::from_secs(10)).await;
    assert_eq!(switched["data"]["reason"], reason, "{switched}");
    assert_eq!(
        switched["data"]["from_service"],
        first.as_str(),
        "{switched}"
    );
    assert_eq!(switched["data"]["to_service"], other.as_str(), "{switched}");
    assert_eq!(switched["data"]["session_preserved"], true, "{switched}");
    let done = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call returns")
        .unwrap()
        .expect("the call succeeds");
    assert_eq!(done, if op == "stop" { "stopped" } else { "deleted" });

    assert_goes_on_with(&mut ws, &other).await;
    drop(ws);
    proxy.stop().await;
    cp.shutdown().await;
}
