//! Statistics from known traffic: a fake proxy speaks the real `ProxyControl` stream (generated
//! client, real socket) to an in-process control plane sampling every second, reports N
//! connections, M messages each way, one error and sessions that complete; the overview, the
//! service's stats and the time series must report exactly those numbers.

use std::time::Duration;

use chrono::Utc;
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::control_plane;
use myagent_tests::wait;
use tokio::sync::mpsc;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);
const N: u64 = 5;
const M: u64 = 40;

fn now_ts() -> prost_types::Timestamp {
    let n = Utc::now();
    prost_types::Timestamp {
        seconds: n.timestamp(),
        nanos: n.timestamp_subsec_nanos() as i32,
    }
}

/// A proxy as the control plane sees it: it says Hello, ACKs nothing, and sends reports.
struct FakeProxy {
    tx: mpsc::Sender<pb::ProxyMessage>,
    _drain: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    async fn connect(url: String, node_id: &str) -> FakeProxy {
        let mut client = pb::proxy_control_client::ProxyControlClient::connect(url)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::ProxyMessage {
            kind: Some(pb::proxy_message::Kind::Hello(pb::Hello {
                node_id: node_id.to_string(),
                address: "127.0.0.1:1".into(),
                applied_version: 0,
                software_version: "stats-test".into(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream accepted")
            .into_inner();
        // Keep reading what the control plane sends so its side never blocks.
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        FakeProxy { tx, _drain: drain }
    }

    async fn report(&self, report: pb::Report) {
        self.tx
            .send(pb::ProxyMessage {
                kind: Some(pb::proxy_message::Kind::Report(report)),
            })
            .await
            .unwrap();
    }
}

fn conn_event(kind: pb::connection_event::Kind, i: u64, service_id: &str) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        kind: kind as i32,
        connection: Some(pb::Connection {
            connection_id: format!("conn-{i}"),
            session_id: format!("sess-{i}"),
            client_ip: "192.0.2.1".into(),
            target_service_id: service_id.to_string(),
            target_service: "stats-agent".into(),
            node_id: "p1".into(),
            status: if kind == pb::connection_event::Kind::Closed {
                "closed"
            } else {
                "active"
            }
            .into(),
            connected_at: Some(now_ts()),
            last_activity: Some(now_ts()),
            closed_at: (kind == pb::connection_event::Kind::Closed).then(now_ts),
            routing_strategy: "direct".into(),
            ..Default::default()
        }),
    }
}

fn session_event(kind: pb::session_event::Kind, i: u64, service_id: &str) -> pb::SessionEvent {
    pb::SessionEvent {
        kind: kind as i32,
        session_id: format!("sess-{i}"),
        service_id: service_id.to_string(),
        at: Some(now_ts()),
    }
}

fn reason(s: &tonic::Status) -> (String, String) {
    let info = s.get_details_error_info().expect("error info");
    (
        info.reason,
        info.metadata.get("field").cloned().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counts() {
    let cp = control_plane()
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    let channel = cp.channel().await;
    let mut registry = pb::service_registry_client::ServiceRegistryClient::new(channel.clone());
    let mut stats = pb::stats_client::StatsClient::new(channel);

    let registered = registry
        .register_service(pb::RegisterServiceRequest {
            name: "stats-agent".into(),
            host: "127.0.0.1".into(),
            port: 1,
            config: Some(pb::ServiceConfig {
                session_timeout: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let sid = registered.service_id.clone();

    let proxy = FakeProxy::connect(cp.grpc_url(), "p1").await;
    use pb::connection_event::Kind as C;
    use pb::session_event::Kind as S;
    // N connections, each with its own new session.
    proxy
        .report(pb::Report {
            connections: (0..N).map(|i| conn_event(C::Opened, i, &sid)).collect(),
            sessions: (0..N).map(|i| session_event(S::Created, i, &sid)).collect(),
            counters: vec![],
            ..Default::default()
        })
        .await;
    // M client messages, M agent replies at 5 ms each, one upstream error.
    proxy
        .report(pb::Report {
            counters: vec![pb::ServiceCounters {
                service_id: sid.clone(),
                messages_in: M,
                messages_out: M,
                bytes_in: 100 * M,
                bytes_out: 100 * M,
                errors: 1,
                response_time_count: M,
                response_time_sum_ms: 5.0 * M as f64,
                passive_failures: 0,
                peak_connections: 0,
            }],
            ..Default::default()
        })
        .await;

    // Wait until a sample has seen all of it (throughput comes from the samples).
    let o = wait::until("overview with the reported traffic", WAIT, || {
        let mut stats = stats.clone();
        async move {
            let o = stats
                .get_overview(pb::GetOverviewRequest {})
                .await
                .ok()?
                .into_inner();
            let done = o.connections.as_ref()?.active == N
                && o.performance.as_ref()?.throughput_per_minute == M as f64;
            done.then_some(o)
        }
    })
    .await;
    let services = o.services.unwrap();
    assert_eq!(
        (
            services.total,
            services.running,
            services.stopped,
            services.error
        ),
        (1, 0, 1, 0)
    );
    let c = o.connections.unwrap();
    assert_eq!((c.total, c.active, c.peak_today), (N, N, N));
    let s = o.sessions.unwrap();
    assert_eq!((s.total_today, s.active, s.completed_today), (N, N, 0));
    let p = o.performance.unwrap();
    assert_eq!(p.avg_response_time_ms, 5.0);
    assert_eq!(p.error_rate, 1.0 / N as f64);

    let svc = registry
        .get_service(pb::GetServiceRequest {
            service: "stats-agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let st = svc.stats.unwrap();
    assert_eq!(
        (
            st.total_connections,
            st.active_connections,
            st.peak_connections
        ),
        (N, N, N)
    );
    assert_eq!(
        (st.total_sessions, st.active_sessions, st.completed_sessions),
        (N, N, 0)
    );
    assert_eq!((st.error_count, st.messages_total), (1, 2 * M));
    assert_eq!(st.error_rate, 1.0 / N as f64);

    // Two connections close and their sessions detach; with a 1 s timeout they complete.
    proxy
        .report(pb::Report {
            connections: (0..2).map(|i| conn_event(C::Closed, i, &sid)).collect(),
            sessions: (0..2)
                .map(|i| session_event(S::Detached, i, &sid))
                .collect(),
            counters: vec![],
            ..Default::default()
        })
        .await;
    // The completed count is read from the store and the live counts from the replica's
    // watched view of it, which follows a few milliseconds later: wait for both.
    let o = wait::until("two sessions completed", WAIT, || {
        let mut stats = stats.clone();
        async move {
            let o = stats
                .get_overview(pb::GetOverviewRequest {})
                .await
                .ok()?
                .into_inner();
            let s = o.sessions.as_ref()?;
            let done = s.completed_today == 2
                && s.active == N - 2
                && o.connections.as_ref()?.active == N - 2;
            done.then_some(o)
        }
    })
    .await;
    let c = o.connections.unwrap();
    assert_eq!((c.total, c.active, c.peak_today), (N, N - 2, N));
    let s = o.sessions.unwrap();
    assert_eq!((s.total_today, s.active, s.completed_today), (N, N - 2, 2));
    let st = registry
        .get_service(pb::GetServiceRequest {
            service: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(
        (
            st.active_connections,
            st.peak_connections,
            st.completed_sessions
        ),
        (N - 2, N, 2)
    );
    assert!(
        st.avg_session_duration >= 1.0,
        "sessions lasted at least their timeout"
    );

    // Time series: the counters' deltas add up to the traffic, per service and overall.
    for service in [sid.clone(), "stats-agent".into(), String::new()] {
        let ts = stats
            .get_timeseries(pb::GetTimeseriesRequest {
                metric: "messages".into(),
                period: "5m".into(),
                interval: "1s".into(),
                service: service.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (ts.metric.as_str(), ts.period.as_str(), ts.interval.as_str()),
            ("messages", "5m", "1s")
        );
        let total: f64 = ts.data.iter().map(|p| p.value).sum();
        assert_eq!(
            total,
            (2 * M) as f64,
            "messages of {service:?}: {:?}",
            ts.data
        );
        let errors = stats
            .get_timeseries(pb::GetTimeseriesRequest {
                metric: "errors".into(),
                period: "5m".into(),
                interval: "1m".into(),
                service,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(errors.data.iter().map(|p| p.value).sum::<f64>(), 1.0);
        for p in &errors.data {
            assert_eq!(
                p.timestamp.as_ref().unwrap().seconds % 60,
                0,
                "aligned to the interval"
            );
        }
    }
    // The connections gauge saw N, then N - 2.
    let conns = stats
        .get_timeseries(pb::GetTimeseriesRequest {
            metric: "connections".into(),
            period: "5m".into(),
            interval: "1s".into(),
            service: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<f64> = conns.data.iter().map(|p| p.value).collect();
    assert!(
        values.contains(&(N as f64)) && values.last() == Some(&((N - 2) as f64)),
        "{values:?}"
    );
    let mut ts: Vec<i64> = conns
        .data
        .iter()
        .map(|p| p.timestamp.as_ref().unwrap().seconds)
        .collect();
    let sorted = {
        let mut s = ts.clone();
        s.sort();
        s.dedup();
        s
    };
    assert_eq!(ts, sorted, "oldest first, one point per interval");
    ts.clear();

    // Bad requests name the field; unknown services are SERVICE_NOT_FOUND.
    for (metric, period, interval, field) in [
        ("bogus", "1h", "1m", "metric"),
        ("connections", "1y", "1m", "period"),
        ("connections", "1h", "0m", "interval"),
        ("connections", "1h", "2h", "interval"),
        ("connections", "7d", "1s", "interval"),
    ] {
        let err = stats
            .get_timeseries(pb::GetTimeseriesRequest {
                metric: metric.into(),
                period: period.into(),
                interval: interval.into(),
                service: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            reason(&err),
            ("INVALID_REQUEST".to_string(), field.to_string())
        );
    }
    let err = stats
        .get_timeseries(pb::GetTimeseriesRequest {
            metric: "connections".into(),
            period: "1h".into(),
            interval: "1m".into(),
            service: "no-such-service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "SERVICE_NOT_FOUND");
}
