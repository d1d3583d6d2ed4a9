//! Config stream on one replica (embedded store): full snapshot on Hello, deltas on change,
//! ACK/NACK in the node record and sync status, wait_for_sync, reports batched into the store,
//! session lifecycle, node lease expiry, connection list and disconnect.

mod stream_support;

use std::time::{Duration, Instant};

use myagent_control_plane::keys;
use myagent_control_plane::store::json;
use myagent_control_plane::stream::model::{
    CounterRecord, NodeRecord, SessionRecord, SessionState, SessionTotals,
};
use myagent_control_plane::stream::{self, HubConfig};
use myagent_proto::v1 as pb;
use myagent_tests::wait::until;
use pb::connection_event::Kind as ConnKind;
use pb::session_event::Kind as SessKind;
use stream_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_gets_full_snapshot_then_deltas_and_acks_land_in_node_record() {
    let (store, _dir) = embedded_store().await;
    let svc = service("svc-a", "alpha", 9001);
    put_running_service(&store, &svc).await;
    let last_config = put_rule(&store, &rule("r1", "VIP用户路由")).await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;

    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let full = p.next_config().await;
    assert!(full.full, "first push to a fresh proxy is a full snapshot");
    assert!(!full.nonce.is_empty());
    assert!(
        full.version >= last_config as u64,
        "version {} includes the last change {last_config}",
        full.version
    );
    assert!(full.version <= store.revision().await.unwrap() as u64);
    assert_eq!(full.services.len(), 1);
    let s = &full.services[0];
    assert_eq!(
        (s.name.as_str(), s.status.as_str(), s.health.as_str()),
        ("alpha", "running", "healthy")
    );
    assert!(s.routable && !s.draining);
    assert_eq!(s.endpoint, "ws://127.0.0.1:9001");
    assert_eq!(full.rules.len(), 1);
    assert_eq!(full.rules[0].name, "VIP用户路由");
    p.ack(&full).await;
    until("node record shows the ACKed version", WAIT, || async {
        let (n, _) = json::get::<NodeRecord>(&store, &keys::node("p1"))
            .await
            .unwrap()?;
        (n.acked_version == full.version && n.connected).then_some(())
    })
    .await;

    // A change → a delta on top of what the proxy holds, versioned by the change's revision.
    let started = Instant::now();
    let rev = put_running_service(&store, &service("svc-b", "beta", 9002)).await;
    // The three writes may arrive as one delta or a chain of them, each on top of the last.
    let mut base = full.version;
    let mut names = Vec::new();
    let delta = loop {
        let d = p.next_config().await;
        assert!(!d.full);
        assert_eq!(
            d.base_version, base,
            "each delta applies on top of the previous push"
        );
        base = d.version;
        names.extend(d.services.iter().map(|s| s.name.clone()));
        if d.version >= rev as u64 {
            break d;
        }
    };
    let push_latency = started.elapsed();
    assert_eq!(
        delta.version, rev as u64,
        "version = store revision of the last change included"
    );
    assert!(names.iter().any(|n| n == "beta"));
    assert!(
        names.iter().all(|n| n != "alpha"),
        "unchanged services are not resent"
    );
    p.ack(&delta).await;
    let status = stream::wait_for_sync(&cp.ctx, rev, WAIT).await.unwrap();
    let acked_latency = started.elapsed();
    assert!(status.in_sync, "{status:?}");
    assert_eq!(status.proxies.len(), 1);
    assert_eq!(status.proxies[0].applied_version, rev as u64);
    println!(
        "config change -> push received: {:.2} ms; -> ACK seen by wait_for_sync: {:.2} ms",
        push_latency.as_secs_f64() * 1000.0,
        acked_latency.as_secs_f64() * 1000.0
    );

    // Removal travels as a delta too.
    store.delete(&keys::service("svc-a")).await.unwrap();
    let removal = p
        .config_until(true, |c| c.removed_services.contains(&"svc-a".to_string()))
        .await;
    assert!(!removal.full);
    cp.stop().await;
}

/// A proxy gets the cluster's load right after its first config: capacity checks must not
/// wait for the next change (unchanged load is re-sent only every ten load intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_proxy_gets_the_load_with_its_first_config() {
    let (store, _dir) = embedded_store().await;
    put_running_service(&store, &service("svc-a", "alpha", 9001)).await;
    let cfg = HubConfig {
        load_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let cp = Replica::start(store.clone(), cfg, true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let full = p.next_config().await;
    p.ack(&full).await;
    // Within the helper's wait (10 s), far less than the 60 s load interval.
    p.load_until(|_| true).await;
    cp.stop().await;
}

/// A stream opens with the proxy's live connections (`live_set`): a connection the store still
/// holds as active for the node and the list leaves out is closed. Its close report had gone to
/// a replica that died with it, and it stayed active in the cluster view for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_set_closes_what_a_lost_report_left_active() {
    use myagent_control_plane::stream::model::ConnectionRecord;
    let (store, _dir) = embedded_store().await;
    put_running_service(&store, &service("svc-a", "alpha", 9001)).await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let full = p.next_config().await;
    p.ack(&full).await;
    p.report(pb::Report {
        connections: vec![
            conn_event(ConnKind::Opened, connection("c1", "s1", "svc-a")),
            conn_event(ConnKind::Opened, connection("c2", "s2", "svc-a")),
        ],
        ..Default::default()
    })
    .await;
    let status = |id: &'static str| {
        let store = store.clone();
        async move {
            json::get::<ConnectionRecord>(&store, &keys::connection("p1", id))
                .await
                .unwrap()
                .map(|(r, _)| r.status.as_str().to_string())
        }
    };
    until("both connections recorded", WAIT, || async {
        (status("c1").await.as_deref() == Some("active")
            && status("c2").await.as_deref() == Some("active"))
        .then_some(())
    })
    .await;

    // The stream ends without c2's close, and the proxy opens a new one with its live set.
    drop(p);
    let mut p = FakeProxy::connect(&cp.url(), "p1", full.version).await;
    let again = p.next_config().await;
    p.ack(&again).await;
    p.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Opened,
            connection("c1", "s1", "svc-a"),
        )],
        live_set: true,
        ..Default::default()
    })
    .await;
    until("c2 closed", WAIT, || async {
        (status("c2").await.as_deref() == Some("closed")).then_some(())
    })
    .await;
    assert_eq!(status("c1").await.as_deref(), Some("active"));
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_never_applied_and_shows_in_sync_status() {
    let (store, _dir) = embedded_store().await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let full = p.next_config().await;
    p.ack(&full).await;

    let rev = put_rule(&store, &rule("r1", "bad")).await;
    let delta = p.config_until(false, |c| c.version >= rev as u64).await;
    p.nack(&delta, "rule r1: regex does not compile").await;
    let status = until("NACK visible in sync status", WAIT, || async {
        let s = stream::sync_status(&cp.ctx, rev).await.unwrap();
        s.proxies
            .first()
            .filter(|p| !p.nack_error.is_empty())
            .map(|_| s.clone())
    })
    .await;
    assert!(
        !status.in_sync,
        "a NACKed version is not applied: {status:?}"
    );
    assert_eq!(status.proxies[0].applied_version, full.version);
    assert_eq!(
        status.proxies[0].nack_error,
        "rule r1: regex does not compile"
    );
    let timed_out = stream::wait_for_sync(&cp.ctx, rev, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(!timed_out.in_sync);

    // A rejected delta earns one full resync; ACKing it brings the proxy in sync.
    let resync = p.next_config().await;
    assert!(
        resync.full,
        "after a NACKed delta the proxy gets a full snapshot"
    );
    p.ack(&resync).await;
    let status = stream::wait_for_sync(&cp.ctx, rev, WAIT).await.unwrap();
    assert!(status.in_sync, "{status:?}");
    assert!(
        status.proxies[0].nack_error.is_empty(),
        "a later ACK supersedes the NACK"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_sync_returns_once_every_proxy_acked() {
    let (store, _dir) = embedded_store().await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p1 = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let mut p2 = FakeProxy::connect(&cp.url(), "p2", 0).await;
    for p in [&mut p1, &mut p2] {
        let c = p.next_config().await;
        p.ack(&c).await;
    }
    let rev = put_running_service(&store, &service("s1", "one", 9100)).await;
    let ctx = cp.ctx.clone();
    let waiter = tokio::spawn(async move { stream::wait_for_sync(&ctx, rev, WAIT).await.unwrap() });
    let c1 = p1.config_until(false, |c| c.version >= rev as u64).await;
    p1.ack(&c1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "one proxy has not ACKed yet");
    let c2 = p2.config_until(false, |c| c.version >= rev as u64).await;
    p2.ack(&c2).await;
    let status = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(status.in_sync);
    assert_eq!(status.proxies.len(), 2);
    // A write no proxy can see (a connection flush, say) is covered by the current version.
    let later = store
        .put("stats/unrelated", b"{}".to_vec(), None)
        .await
        .unwrap();
    assert!(
        stream::wait_for_sync(&cp.ctx, later, WAIT)
            .await
            .unwrap()
            .in_sync
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_become_records_sessions_complete_after_timeout() {
    let (store, _dir) = embedded_store().await;
    let mut svc = service("svc-s", "sessions", 9200);
    svc.config.session_timeout = 1;
    put_running_service(&store, &svc).await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let c = p.next_config().await;
    p.ack(&c).await;

    p.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Opened,
            connection("c1", "sess-1", "svc-s"),
        )],
        sessions: vec![session_event(SessKind::Created, "sess-1", "svc-s")],
        counters: vec![pb::ServiceCounters {
            service_id: "svc-s".into(),
            messages_in: 3,
            messages_out: 4,
            errors: 1,
            response_time_count: 2,
            response_time_sum_ms: 10.0,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    let conn_key = keys::connection("p1", "c1");
    until("connection record", WAIT, || async {
        store.get(&conn_key).await.unwrap()
    })
    .await;
    let (s, _) = until("active session record", WAIT, || async {
        json::get::<SessionRecord>(&store, &keys::session("sess-1"))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(s.state, SessionState::Active);
    assert_eq!(s.service_id, "svc-s");
    assert_eq!(s.connections, 1);
    // Bindings go to proxies.
    p.session_update_until(|u| {
        u.upserted
            .iter()
            .any(|b| b.session_id == "sess-1" && b.state == "active")
    })
    .await;

    // The list API (seed fields), newest first, filter by service name.
    let mut api = cp.connections_client().await;
    let list = api
        .list_connections(pb::ListConnectionsRequest {
            service: "sessions".into(),
            status: "active".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 1);
    let conn = &list.connections[0];
    assert_eq!(
        (
            conn.connection_id.as_str(),
            conn.node_id.as_str(),
            conn.status.as_str()
        ),
        ("c1", "p1", "active")
    );
    assert_eq!(conn.client_ip, "192.0.2.7");
    let bad = api
        .list_connections(pb::ListConnectionsRequest {
            status: "sleeping".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Close → idle → completed after session_timeout (1 s), with totals.
    p.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Closed,
            connection("c1", "sess-1", "svc-s"),
        )],
        sessions: vec![session_event(SessKind::Detached, "sess-1", "svc-s")],
        counters: vec![],
        ..Default::default()
    })
    .await;
    until("session idle", WAIT, || async {
        let (s, _) = json::get::<SessionRecord>(&store, &keys::session("sess-1"))
            .await
            .unwrap()?;
        (s.state == SessionState::Idle).then_some(())
    })
    .await;
    let (done, _) = until("session completed", WAIT, || async {
        let (s, _) = json::get::<SessionRecord>(&store, &keys::session("sess-1"))
            .await
            .unwrap()?;
        (s.state == SessionState::Completed).then_some((s, ()))
    })
    .await;
    assert!(done.completed_at.is_some());
    p.session_update_until(|u| u.removed.contains(&"sess-1".to_string()))
        .await;
    let (totals, _) = until("session totals", WAIT, || async {
        json::get::<SessionTotals>(&store, "stats/sessions/svc-s")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(totals.completed, 1);
    assert!(totals.total_duration_seconds >= 1.0);
    let (closed, _) =
        json::get::<myagent_control_plane::stream::model::ConnectionRecord>(&store, &conn_key)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(closed.status.as_str(), "closed");
    assert!(closed.closed_at.is_some());
    let counters = until("counters flushed", WAIT, || async {
        let (kvs, _) = store.range("stats/counters/svc-s/").await.unwrap();
        let c: CounterRecord = json::decode(kvs.first()?).unwrap();
        (c.connections_closed == 1).then_some(c)
    })
    .await;
    assert_eq!(
        (counters.connections_opened, counters.sessions_created),
        (1, 1)
    );
    assert_eq!(
        (counters.messages_in, counters.messages_out, counters.errors),
        (3, 4, 1)
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_is_batched_into_few_store_writes() {
    let (store, _dir) = embedded_store().await;
    let cfg = HubConfig {
        report_flush: Duration::from_millis(250),
        counters_flush: Duration::from_secs(1),
        // As with etcd started with --max-txn-ops=4096: one transaction per flush.
        max_txn_ops: 4096,
        ..HubConfig::default()
    };
    let cp = Replica::start(store.clone(), cfg, true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let c = p.next_config().await;
    p.ack(&c).await;
    until("ack recorded", WAIT, || async {
        let (n, _) = json::get::<NodeRecord>(&store, &keys::node("p1"))
            .await
            .unwrap()?;
        n.acked_at.is_some().then_some(())
    })
    .await;
    let before = store.revision().await.unwrap();
    // 2000 connections (each a new session) within one second, reported every 100 ms.
    let started = Instant::now();
    for batch in 0..10 {
        let mut report = pb::Report::default();
        for i in 0..200 {
            let id = format!("c{batch}-{i}");
            report.connections.push(conn_event(
                ConnKind::Opened,
                connection(&id, &format!("s-{id}"), "svc"),
            ));
            report
                .sessions
                .push(session_event(SessKind::Created, &format!("s-{id}"), "svc"));
        }
        p.report(report).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(
        "2000 connection records",
        Duration::from_secs(20),
        || async {
            let (kvs, _) = store.range(&keys::connections_of("p1")).await.unwrap();
            (kvs.len() == 2000).then_some(())
        },
    )
    .await;
    until("2000 session records", Duration::from_secs(20), || async {
        let (kvs, _) = store.range(keys::SESSIONS).await.unwrap();
        (kvs.len() == 2000).then_some(())
    })
    .await;
    let after = store.revision().await.unwrap();
    let writes = after - before;
    println!(
        "2000 connection + 2000 session events in {:.2} s -> {writes} store writes",
        started.elapsed().as_secs_f64()
    );
    assert!(writes <= 12, "{writes} store writes for 4000 events");
    let load = cp.hub.cluster_load();
    assert_eq!(
        load.get("svc")
            .map(|l| (l.active_connections, l.active_sessions)),
        Some((2000, 2000))
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_leaves_the_cluster_view_after_lease_expiry() {
    let (store, _dir) = embedded_store().await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p-dead", 0).await;
    let c = p.next_config().await;
    p.ack(&c).await;
    p.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Opened,
            connection("c-dead", "s-dead", "svc"),
        )],
        sessions: vec![session_event(SessKind::Created, "s-dead", "svc")],
        counters: vec![],
        ..Default::default()
    })
    .await;
    until("connection record", WAIT, || async {
        store
            .get(&keys::connection("p-dead", "c-dead"))
            .await
            .unwrap()
    })
    .await;
    drop(p);
    let gone_at = Instant::now();
    until("node marked disconnected", WAIT, || async {
        let (n, _) = json::get::<NodeRecord>(&store, &keys::node("p-dead"))
            .await
            .unwrap()?;
        (!n.connected).then_some(())
    })
    .await;
    until("node and its connections gone", WAIT, || async {
        let node = store.get(&keys::node("p-dead")).await.unwrap();
        let (conns, _) = store.range(&keys::connections_of("p-dead")).await.unwrap();
        (node.is_none() && conns.is_empty()).then_some(())
    })
    .await;
    println!(
        "node lease expired {:.2} s after the stream died",
        gone_at.elapsed().as_secs_f64()
    );
    // Its session loses the dead node: idle, then (default timeout 1800 s) still resumable.
    let (s, _) = until("session idle after node loss", WAIT, || async {
        let (s, r) = json::get::<SessionRecord>(&store, &keys::session("s-dead"))
            .await
            .unwrap()?;
        (s.state == SessionState::Idle).then_some((s, r))
    })
    .await;
    assert!(s.nodes.is_empty());
    let mut api = cp.connections_client().await;
    let list = api
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_notifications_reach_the_proxy() {
    let (store, _dir) = embedded_store().await;
    put_running_service(&store, &service("svc-n", "notified", 9300)).await;
    let cp = Replica::start(store.clone(), fast_config(), true).await;
    let mut p = FakeProxy::connect(&cp.url(), "p1", 0).await;
    let c = p.next_config().await;
    p.ack(&c).await;
    p.report(pb::Report {
        connections: vec![conn_event(
            ConnKind::Opened,
            connection("c9", "s9", "svc-n"),
        )],
        ..Default::default()
    })
    .await;
    until("connection record", WAIT, || async {
        store.get(&keys::connection("p1", "c9")).await.unwrap()
    })
    .await;
    let mut api = cp.connections_client().await;

    let unknown = api
        .disconnect(pb::DisconnectRequest {
            connection_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let call = tokio::spawn(async move {
        let r = api
            .disconnect(pb::DisconnectRequest {
                connection_id: "c9".into(),
                reason: "maintenance".into(),
                notify_client: None,
            })
            .await;
        (api, r)
    });
    let cmd = p.next_command().await;
    match cmd.kind.clone().unwrap() {
        pb::proxy_command::Kind::Disconnect(d) => {
            assert_eq!(
                (d.connection_id.as_str(), d.reason.as_str(), d.notify_client),
                ("c9", "maintenance", true)
            );
        }
        other => panic!("unexpected command {other:?}"),
    }
    p.command_result(&cmd.command_id, true, 1, "").await;
    let (mut api, r) = call.await.unwrap();
    assert_eq!(r.unwrap().into_inner().connection_id, "c9");
    until("command consumed", WAIT, || async {
        let (kvs, _) = store.range(&keys::commands_of("p1")).await.unwrap();
        kvs.is_empty().then_some(())
    })
    .await;

    let call = tokio::spawn(async move {
        api.send_notification(pb::SendNotificationRequest {
            service: "notified".into(),
            r#type: "maintenance_window".into(),
            message: "restart in 5 minutes".into(),
            severity: "warning".into(),
            countdown_seconds: Some(300),
        })
        .await
    });
    let cmd = p.next_command().await;
    match cmd.kind.clone().unwrap() {
        pb::proxy_command::Kind::Notify(n) => {
            assert_eq!(n.service_id, "svc-n");
            assert_eq!(n.countdown_seconds, Some(300));
        }
        other => panic!("unexpected command {other:?}"),
    }
    p.command_result(&cmd.command_id, true, 7, "").await;
    assert_eq!(call.await.unwrap().unwrap().into_inner().delivered, 7);

    // The supervisor's entry point before a graceful restart.
    let ctx = cp.ctx.clone();
    let call = tokio::spawn(async move {
        stream::notify_service_clients(
            &ctx,
            "svc-n",
            "maintenance_window",
            "bye",
            "warning",
            Some(5),
        )
        .await
    });
    let cmd = p.next_command().await;
    p.command_result(&cmd.command_id, true, 2, "").await;
    assert_eq!(call.await.unwrap().unwrap(), 2);
    cp.stop().await;
}
