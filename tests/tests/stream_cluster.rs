//! Two control-plane replicas on one real etcd, fake proxies on different replicas: config
//! changes, sync status, disconnects and cluster-wide load cross replicas through the store.

mod stream_support;

use std::time::Instant;

use myagent_control_plane::keys;
use myagent_control_plane::stream;
use myagent_proto::v1 as pb;
use myagent_tests::etcd::Etcd;
use myagent_tests::wait::until;
use pb::connection_event::Kind as ConnKind;
use pb::session_event::Kind as SessKind;
use stream_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_config_sync_disconnects_and_load() {
    let etcd = Etcd::shared();
    let prefix = format!("/stream-cluster-{}/", uuid::Uuid::new_v4());
    let store_a = etcd_store(&etcd, &prefix).await;
    let store_b = etcd_store(&etcd, &prefix).await;
    let a = Replica::start(store_a.clone(), fast_config(), true).await;
    let b = Replica::start(store_b.clone(), fast_config(), false).await;

    let mut pa = FakeProxy::connect(&a.url(), "pa", 0).await;
    let mut pb_ = FakeProxy::connect(&b.url(), "pb", 0).await;
    for p in [&mut pa, &mut pb_] {
        let c = p.next_config().await;
        assert!(c.full);
        p.ack(&c).await;
    }

    // A change written through replica A reaches the proxy on replica B; A's wait_for_sync
    // sees B's proxy ACK through the node records in etcd.
    let started = Instant::now();
    let rev = put_running_service(&store_a, &service("svc-x", "x", 9400)).await;
    let ctx = a.ctx.clone();
    let waiter = tokio::spawn(async move { stream::wait_for_sync(&ctx, rev, WAIT).await.unwrap() });
    let cb = pb_.config_until(true, |c| c.version >= rev as u64).await;
    assert!(!cb.full);
    let ca = pa.config_until(true, |c| c.version >= rev as u64).await;
    assert_eq!(
        ca.version, cb.version,
        "both replicas label the change with its store revision"
    );
    let status = waiter.await.unwrap();
    println!(
        "etcd, 2 replicas: config change -> both proxies ACKed (seen by wait_for_sync on A): {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert!(status.in_sync, "{status:?}");
    assert_eq!(status.proxies.len(), 2);

    // The proxy on B reports a connection; A lists it, and a disconnect via A reaches B's proxy.
    pb_.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Opened,
            connection("cb1", "sb1", "svc-x"),
        )],
        sessions: vec![session_event(SessKind::Created, "sb1", "svc-x")],
        counters: vec![],
        ..Default::default()
    })
    .await;
    let mut api_a = a.connections_client().await;
    until("connection visible on replica A", WAIT, || async {
        let list = api_a
            .clone()
            .list_connections(pb::ListConnectionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        (list.total == 1 && list.connections[0].node_id == "pb").then_some(())
    })
    .await;
    // Cluster-wide load reaches the proxy on the other replica.
    pa.load_until(|l| {
        l.services
            .iter()
            .any(|s| s.service_id == "svc-x" && s.active_connections == 1 && s.active_sessions == 1)
    })
    .await;
    let call = tokio::spawn(async move {
        api_a
            .disconnect(pb::DisconnectRequest {
                connection_id: "cb1".into(),
                reason: "maintenance".into(),
                notify_client: Some(false),
            })
            .await
    });
    let cmd = pb_.next_command().await;
    match cmd.kind.clone().unwrap() {
        pb::proxy_command::Kind::Disconnect(d) => {
            assert_eq!(d.connection_id, "cb1");
            assert!(!d.notify_client);
        }
        other => panic!("unexpected command {other:?}"),
    }
    pb_.command_result(&cmd.command_id, true, 1, "").await;
    let resp = call.await.unwrap().unwrap().into_inner();
    assert_eq!(resp.connection_id, "cb1");

    // Notifications through A count deliveries on both replicas' proxies.
    let mut api_a = a.connections_client().await;
    let call = tokio::spawn(async move {
        api_a
            .send_notification(pb::SendNotificationRequest {
                message: "hello all".into(),
                r#type: "announcement".into(),
                ..Default::default()
            })
            .await
    });
    for (p, n) in [(&mut pa, 2u64), (&mut pb_, 3u64)] {
        let cmd = p.next_command().await;
        p.command_result(&cmd.command_id, true, n, "").await;
    }
    assert_eq!(call.await.unwrap().unwrap().into_inner().delivered, 5);

    // A proxy on B that dies leaves A's view once its lease expires.
    drop(pb_);
    until("dead proxy gone from A's sync view", WAIT, || async {
        let s = stream::sync_status(&a.ctx, rev).await.unwrap();
        (s.proxies.len() == 1 && s.proxies[0].node_id == "pa").then_some(())
    })
    .await;
    until("its connections gone", WAIT, || async {
        let (kvs, _) = store_a.range(&keys::connections_of("pb")).await.unwrap();
        kvs.is_empty().then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}
