//! The config stream from the proxy's side: hello, ACK/NACK (a bad config never applied, the
//! old one kept), the disk cache (ready at boot with no control plane, restart included),
//! reconnect and catch-up, commands (disconnect, notify) and reports.

use std::time::Duration;

use myagent_proto::v1 as pb;
use myagent_tests::agents::echo_agent;
use myagent_tests::proxy::*;

#[tokio::test]
async fn hello_ack_and_nack_keeps_the_old_config() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |c| c.node_id = Some("node-7".into())).await;
    let hello = cp.wait_hello().await;
    assert_eq!(hello.node_id, "node-7");
    assert_eq!(hello.applied_version, 0);
    assert_eq!(hello.address, proxy.ws_addr.to_string());

    cp.push(full(5, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    cp.wait_ack(5).await;

    // A bad regex anywhere rejects the whole push, including its valid parts.
    let bad = rule(
        "bad",
        1,
        vec![cond("query.x", "regex", "([")],
        "round_robin",
        &[],
    );
    let push = pb::ConfigPush {
        version: 6,
        nonce: "n6".into(),
        base_version: 5,
        services: vec![service("id-b", "b", a.addr, &["t"])],
        rules: vec![bad],
        ..Default::default()
    };
    cp.send(pb::control_message::Kind::Config(push));
    let detail = cp.wait_nack(6).await;
    assert!(
        detail.contains("bad") && detail.contains("regex"),
        "{detail}"
    );
    assert_eq!(proxy.handle.config_version(), 5);
    let (mut ws, _) = connect_routed(&proxy.ws_url("service=a")).await;
    send_text(&mut ws, "{}").await;
    let _ = next_json(&mut ws).await;
    let (code, body) = proxy.admin_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("myagent_proxy_config_nacks_total 1"),
        "{body}"
    );

    // A delta over a version the proxy does not hold is refused too.
    let stale = pb::ConfigPush {
        version: 8,
        nonce: "n8".into(),
        base_version: 7,
        ..Default::default()
    };
    cp.send(pb::control_message::Kind::Config(stale));
    assert!(cp.wait_nack(8).await.contains("base_version"));
    // The nonce comes back with the ACK.
    cp.push(full(9, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    cp.wait_for("ack nonce", Duration::from_secs(5), |ms| {
        ms.iter().any(|m| matches!(&m.kind, Some(pb::proxy_message::Kind::Ack(x)) if x.version == 9 && x.nonce == "n9")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cached_config_serves_after_restart_without_control_plane() {
    let a = echo_agent().spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy_in(&[cp.url()], dir.path(), |c| c.node_id = None).await;
    cp.push(full(11, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    cp.wait_ack(11).await;
    let node_id = proxy.handle.node_id().to_string();
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        dir.path().join("config-cache.pb").exists(),
        "cache written"
    );
    proxy.stop().await;
    drop(cp);

    // Restart with an unreachable control plane: ready at once from the cache, same node id.
    let proxy = spawn_proxy_in(&["http://127.0.0.1:9".to_string()], dir.path(), |c| {
        c.node_id = None
    })
    .await;
    assert_eq!(proxy.handle.config_version(), 11);
    assert_eq!(proxy.handle.node_id(), node_id);
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
    let (mut ws, d) = connect_routed(&proxy.ws_url("tag=t")).await;
    assert_eq!(d["target_service"], "a");
    send_text(&mut ws, r#"{"x":1}"#).await;
    assert_eq!(next_json(&mut ws).await["original_message"]["x"], 1);
}

#[tokio::test]
async fn keeps_routing_while_control_plane_is_down_and_catches_up() {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let cp_addr = cp.addr;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    cp.wait_ack(1).await;
    drop(cp);
    myagent_tests::assert_eventually!(
        Duration::from_secs(10),
        !proxy.handle.control_plane_connected(),
        "stream down"
    );
    let (_ws, d) = connect_routed(&proxy.ws_url("tag=t")).await;
    assert_eq!(d["target_service"], "a");

    // The control plane comes back (same address) with a newer config.
    let cp = FakeControlPlane::spawn_on(cp_addr).await;
    cp.push(full(2, vec![service("id-b", "b", b.addr, &["t"])], vec![]));
    let hello = cp.wait_hello().await;
    assert_eq!(hello.applied_version, 1);
    cp.wait_ack(2).await;
    let (_ws2, d) = connect_routed(&proxy.ws_url("tag=t")).await;
    assert_eq!(d["target_service"], "b");
    // The live connection was announced again on the new stream (resync).
    cp.wait_for("resync OPENED", Duration::from_secs(5), |ms| {
        ms.iter()
            .any(|m| match &m.kind {
                Some(pb::proxy_message::Kind::Report(r)) => r
                    .connections
                    .iter()
                    .any(|c| c.kind == pb::connection_event::Kind::Opened as i32),
                _ => false,
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn tries_each_control_plane_url() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&["http://127.0.0.1:9".to_string(), cp.url()], |_| {}).await;
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    cp.wait_ack(1).await;
    proxy.wait_version(1).await;
}

/// A control plane that stops answering without closing the connection (its host gone) is
/// given up within the config stream's HTTP/2 ping period and timeout (4 + 3 s), inside the
/// 10 s a connection whose agent crashed waits for a new config; the proxy goes on with the
/// next control plane.
#[tokio::test]
async fn a_hung_control_plane_is_given_up_for_the_next() {
    let a = echo_agent().spawn().await;
    let hung = FakeControlPlane::spawn().await;
    let gate = myagent_tests::gate::TcpGate::start(hung.addr).await;
    let next = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[format!("http://{}", gate.addr), next.url()], |_| {}).await;
    hung.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    hung.wait_ack(1).await;
    assert_eq!(next.streams_opened(), 0);

    gate.pause();
    let paused = std::time::Instant::now();
    next.push(full(2, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    next.wait_ack(2).await;
    let took = paused.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    proxy.wait_version(2).await;
}

#[tokio::test]
async fn disconnect_and_notify_commands() {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    cp.push(full(
        1,
        vec![
            service("id-a", "a", a.addr, &[]),
            service("id-b", "b", b.addr, &[]),
        ],
        vec![],
    ));
    proxy.wait_version(1).await;
    let (mut wa, da) = connect_routed(&proxy.ws_url("service=a")).await;
    let (mut wb, _) = connect_routed(&proxy.ws_url("service=b")).await;

    let notify = |id: &str, service_id: &str| pb::ProxyCommand {
        command_id: id.into(),
        kind: Some(pb::proxy_command::Kind::Notify(pb::NotifyCommand {
            service_id: service_id.into(),
            r#type: "maintenance_window".into(),
            message: "Service will be restarted in 5 minutes".into(),
            severity: "warning".into(),
            countdown_seconds: Some(300),
        })),
    };
    cp.send(pb::control_message::Kind::Command(notify("n1", "id-a")));
    assert_eq!(cp.wait_command_result("n1").await.delivered, 1);
    let ev = next_json(&mut wa).await;
    assert_eq!(ev["event"], "management_notification");
    assert_eq!(ev["data"]["type"], "maintenance_window");
    assert_eq!(ev["data"]["severity"], "warning");
    assert_eq!(ev["data"]["countdown_seconds"], 300);
    cp.send(pb::control_message::Kind::Command(notify("n2", "")));
    assert_eq!(cp.wait_command_result("n2").await.delivered, 2);
    assert_eq!(next_json(&mut wa).await["event"], "management_notification");
    assert_eq!(next_json(&mut wb).await["event"], "management_notification");

    let conn_id = da["connection_id"].as_str().unwrap().to_string();
    cp.send(pb::control_message::Kind::Command(pb::ProxyCommand {
        command_id: "d1".into(),
        kind: Some(pb::proxy_command::Kind::Disconnect(pb::DisconnectCommand {
            connection_id: conn_id.clone(),
            reason: "maintenance".into(),
            notify_client: true,
        })),
    }));
    let r = cp.wait_command_result("d1").await;
    assert!(r.ok && r.delivered == 1, "{r:?}");
    let (code, reason, events) = read_until_close(&mut wa).await;
    assert_eq!((code, reason.as_str()), (1000, "maintenance"));
    assert_eq!(events[0]["event"], "connection_closed");
    assert_eq!(events[0]["data"]["reason"], "maintenance");
    assert_eq!(events[0]["data"]["connection_id"], conn_id.as_str());

    // Unknown connection: not delivered, with the reason.
    cp.send(pb::control_message::Kind::Command(pb::ProxyCommand {
        command_id: "d2".into(),
        kind: Some(pb::proxy_command::Kind::Disconnect(pb::DisconnectCommand {
            connection_id: "nope".into(),
            reason: String::new(),
            notify_client: false,
        })),
    }));
    let r = cp.wait_command_result("d2").await;
    assert!(
        !r.ok && r.delivered == 0 && r.error.contains("CONNECTION_NOT_FOUND"),
        "{r:?}"
    );
    // The other connection is untouched.
    send_text(&mut wb, "{}").await;
    assert!(next_json(&mut wb).await["proxy_metadata"].is_object());
}

/// A fresh embedded store has revision 0, so the first config the real control plane streams
/// is version 0: the proxy holds a config then and is ready (`/readyz` 200), and a client gets
/// the upgrade and the seed's `ROUTING_FAILED` error event, not an HTTP 503 "no routing
/// configuration yet".
#[tokio::test]
async fn ready_on_the_empty_config_of_a_fresh_store() {
    let cp = myagent_tests::control_plane::control_plane()
        .spawn_binary()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url = cp.grpc_url();
    let data_dir = dir.path().to_str().unwrap();
    let proxy = ProxyProcess::spawn(&["--control-plane", &url, "--data-dir", data_dir]).await;
    let admin = proxy.admin_addr;
    myagent_tests::wait::until(
        "proxy /readyz 200",
        Duration::from_secs(10),
        move || async move {
            let (code, body) = http_get(admin, "/readyz").await;
            (code == 200).then_some(body)
        },
    )
    .await;
    let (_, body) = http_get(proxy.admin_addr, "/readyz").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready", "{body}");
    assert_eq!(v["config_version"], 0, "{body}");

    let mut ws = connect(&format!("ws://{}/ws?tag=none", proxy.ws_addr)).await;
    let (code, _, events) = read_until_close(&mut ws).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["data"]["code"], "ROUTING_FAILED");
    assert_eq!(events[0]["data"]["recoverable"], false);
    assert_ne!(code, 1000);
}
