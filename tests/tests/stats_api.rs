//! The Stats gRPC service of a real control plane (in-process, embedded store, sampling every
//! second): overview of registered services, validation of time-series requests, the leader's
//! samples answering queries aligned to the interval, the Prometheus gauges, and time series
//! that survive a control-plane restart.

use std::time::Duration;

use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, error_code, ControlPlane};
use myagent_tests::wait;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

async fn register(cp: &ControlPlane, name: &str, port: u32) -> String {
    cp.registry()
        .await
        .register_service(pb::RegisterServiceRequest {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .service_id
}

async fn stats(cp: &ControlPlane) -> pb::stats_client::StatsClient<Channel> {
    pb::stats_client::StatsClient::new(cp.channel().await)
}

fn ts_request(
    metric: &str,
    period: &str,
    interval: &str,
    service: &str,
) -> pb::GetTimeseriesRequest {
    pb::GetTimeseriesRequest {
        metric: metric.into(),
        period: period.into(),
        interval: interval.into(),
        service: service.into(),
    }
}

/// Points of a query once the sampler has written at least `min` of them.
async fn points_at_least(
    cp: &ControlPlane,
    req: pb::GetTimeseriesRequest,
    min: usize,
) -> pb::Timeseries {
    let client = stats(cp).await;
    wait::until(&format!("{min} samples of {}", req.metric), WAIT, || {
        let (mut client, req) = (client.clone(), req.clone());
        async move {
            let ts = client.get_timeseries(req).await.ok()?.into_inner();
            (ts.data.len() >= min).then_some(ts)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_validation_sampling_metrics_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane()
        .embedded(dir.path())
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    let a = register(&cp, "stats-api-a", 1).await;
    register(&cp, "stats-api-b", 2).await;
    let mut client = stats(&cp).await;

    let o = client
        .get_overview(pb::GetOverviewRequest {})
        .await
        .unwrap()
        .into_inner();
    let s = o.services.unwrap();
    assert_eq!((s.total, s.running, s.stopped, s.error), (2, 0, 2, 0));
    let c = o.connections.unwrap();
    assert_eq!((c.total, c.active, c.peak_today), (0, 0, 0));
    let p = o.performance.unwrap();
    assert_eq!(
        (
            p.throughput_per_minute,
            p.error_rate,
            p.avg_response_time_ms
        ),
        (0.0, 0.0, 0.0)
    );
    let r = o.resources.unwrap();
    assert_eq!((r.total_memory_mb, r.total_cpu_percent), (0.0, 0.0));
    assert!(o.sessions.is_some());

    // Every invalid field is named; the interval may not be finer than the 1 s sampling.
    for (metric, period, interval, field) in [
        ("", "1h", "1m", "metric"),
        ("latency", "1h", "1m", "metric"),
        ("connections", "1 h", "1m", "period"),
        ("connections", "-1h", "1m", "period"),
        ("connections", "1h", "1x", "interval"),
        ("connections", "1m", "5m", "interval"),
        ("connections", "24h", "1s", "interval"),
    ] {
        let err = client
            .get_timeseries(ts_request(metric, period, interval, ""))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{metric} {period} {interval}"
        );
        assert_eq!(
            error_code(&err),
            ("INVALID_REQUEST".to_string(), field.to_string())
        );
    }
    let err = client
        .get_timeseries(ts_request("connections", "1h", "1m", "no-such-service"))
        .await
        .unwrap_err();
    assert_eq!(error_code(&err).0, "SERVICE_NOT_FOUND");

    // The leader samples every second: one aligned point per second, for an id or a name.
    let ts = points_at_least(&cp, ts_request("connections", "1m", "1s", "stats-api-a"), 3).await;
    assert_eq!(
        (ts.metric.as_str(), ts.period.as_str(), ts.interval.as_str()),
        ("connections", "1m", "1s")
    );
    let secs: Vec<i64> = ts
        .data
        .iter()
        .map(|p| p.timestamp.as_ref().unwrap().seconds)
        .collect();
    assert!(
        secs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {secs:?}"
    );
    assert!(ts
        .data
        .iter()
        .all(|p| p.value == 0.0 && p.timestamp.as_ref().unwrap().nanos == 0));
    let by_id = points_at_least(&cp, ts_request("messages", "1m", "1s", &a), 3).await;
    assert!(by_id.data.iter().all(|p| p.value == 0.0));
    let five = client
        .get_timeseries(ts_request("memory_mb", "1m", "5s", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!five.data.is_empty());
    assert!(five
        .data
        .iter()
        .all(|p| p.timestamp.as_ref().unwrap().seconds % 5 == 0));
    // No responses yet, so no response-time points (intervals without data are left out).
    let rt = client
        .get_timeseries(ts_request("response_time_ms", "1m", "1s", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(rt.data.is_empty());
    // Defaults: a missing period is 1h, a missing interval about 12 points (the seed's 5m).
    let d = client
        .get_timeseries(ts_request("sessions", "", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.period.as_str(), d.interval.as_str()), ("1h", "5m"));

    // The service view carries the stats block.
    let svc = cp
        .registry()
        .await
        .get_service(pb::GetServiceRequest { service: a.clone() })
        .await
        .unwrap()
        .into_inner();
    let st = svc.stats.unwrap();
    assert_eq!(
        (st.total_connections, st.active_connections, st.error_rate),
        (0, 0, 0.0)
    );

    // Prometheus gauges on the admin port.
    let url = cp.admin_url("/metrics");
    let text = wait::until("stats gauges on /metrics", WAIT, || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.contains("myagent_services{status=\"stopped\"} 2")
                .then_some(text)
        }
    })
    .await;
    assert!(
        text.contains("myagent_service_active_connections{service=\"stats-api-a\"} 0"),
        "{text}"
    );
    assert!(text.contains("myagent_service_active_sessions{service=\"stats-api-b\"} 0"));
    assert!(text.contains("myagent_stats_samples_total"));

    // The series lives in the store: a restarted control plane still answers with it.
    let before: Vec<i64> = points_at_least(&cp, ts_request("connections", "5m", "1s", ""), 3)
        .await
        .data
        .iter()
        .map(|p| p.timestamp.as_ref().unwrap().seconds)
        .collect();
    cp.shutdown().await;
    let cp = control_plane()
        .embedded(dir.path())
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    let after = stats(&cp)
        .await
        .get_timeseries(ts_request("connections", "5m", "1s", ""))
        .await
        .unwrap()
        .into_inner();
    let after: Vec<i64> = after
        .data
        .iter()
        .map(|p| p.timestamp.as_ref().unwrap().seconds)
        .collect();
    for t in &before {
        assert!(
            after.contains(t),
            "sample at {t} lost across the restart: {after:?}"
        );
    }
}
