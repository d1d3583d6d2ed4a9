//! The sampler, the overview and the time-series queries against a real embedded store, with
//! sample times chosen by the test (no wall clock), so every figure is exact.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::context::Context;
use crate::model::{DesiredState, Runtime, ServiceConfig, ServiceDef, ServiceStatus};
use crate::stats::overview::overview;
use crate::stats::query::timeseries;
use crate::stats::service_stats::per_service;
use crate::stats::spec::validate;
use crate::store::{embedded::EmbeddedStore, StoreRef};

struct Fixture {
    ctx: Context,
    _dir: tempfile::TempDir,
    _leader: tokio::sync::watch::Sender<bool>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: StoreRef = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (tx, rx) = tokio::sync::watch::channel(true);
    let ctx = Context {
        store,
        replica_id: Arc::from("cp-test"),
        data_dir: dir.path().to_path_buf(),
        is_leader: rx,
        term: Default::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        metrics: crate::metrics::Metrics::new().unwrap(),
    };
    Fixture {
        ctx,
        _dir: dir,
        _leader: tx,
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn put(ctx: &Context, key: &str, v: serde_json::Value) {
    ctx.store
        .put(key, serde_json::to_vec(&v).unwrap(), None)
        .await
        .unwrap();
}

async fn add_service(ctx: &Context, id: &str, running: Option<(f64, f64)>) {
    let now = Utc::now();
    let def = ServiceDef {
        id: id.into(),
        name: format!("svc-{id}"),
        description: String::new(),
        agent_factory_path: None,
        host: "localhost".into(),
        port: 9000,
        tags: vec![],
        config: ServiceConfig::default(),
        desired: DesiredState::Running,
        restart: None,
        deleting: false,
        created_at: now,
        updated_at: now,
    };
    ctx.store
        .put(
            &crate::keys::service(id),
            serde_json::to_vec(&def).unwrap(),
            None,
        )
        .await
        .unwrap();
    if let Some((mem, cpu)) = running {
        let mut rt = Runtime::stopped(now);
        rt.status = ServiceStatus::Running;
        rt.memory_mb = mem;
        rt.cpu_percent = cpu;
        rt.started_at = Some(now);
        ctx.store
            .put(
                &crate::keys::runtime(id),
                serde_json::to_vec(&rt).unwrap(),
                None,
            )
            .await
            .unwrap();
    }
}

// One positional argument per counter keeps the scenarios above readable as tables.
#[allow(clippy::too_many_arguments)]
async fn counters(
    ctx: &Context,
    svc: &str,
    replica: &str,
    opened: u64,
    m_in: u64,
    m_out: u64,
    errors: u64,
    rt: (u64, f64),
) {
    put(
        ctx,
        &format!("stats/counters/{svc}/{replica}"),
        json!({"service_id": svc, "replica_id": replica, "connections_opened": opened,
               "connections_closed": 0, "sessions_created": opened, "messages_in": m_in,
               "messages_out": m_out, "bytes_in": 1, "bytes_out": 1, "errors": errors,
               "response_time_count": rt.0, "response_time_sum_ms": rt.1, "passive_failures": 0,
               "updated_at": "2024-01-01T10:00:00Z"}),
    )
    .await;
}

async fn connection(ctx: &Context, node: &str, id: &str, svc: &str, active: bool) {
    put(
        ctx,
        &format!("connections/{node}/{id}"),
        json!({"connection_id": id, "session_id": format!("s-{id}"), "client_ip": "127.0.0.1",
               "target_service_id": svc, "target_service": "x", "node_id": node,
               "status": if active { "active" } else { "closed" },
               "connected_at": "2024-01-01T10:00:00Z", "last_activity": "2024-01-01T10:00:00Z",
               "closed_at": null, "bytes_sent": 0, "bytes_received": 0, "message_count": 0,
               "routing_strategy": "direct"}),
    )
    .await;
}

async fn session(ctx: &Context, id: &str, svc: &str, state: &str) {
    put(
        ctx,
        &format!("sessions/{id}"),
        json!({"session_id": id, "service_id": svc, "state": state,
               "created_at": "2024-01-01T10:00:00Z", "last_seen": "2024-01-01T10:00:00Z"}),
    )
    .await;
}

async fn sample_at(ctx: &Context, s: &mut Sampler, t: &str) {
    s.sample(ctx, at(t).timestamp_millis()).await.unwrap();
}

async fn points(
    ctx: &Context,
    metric: &str,
    period: &str,
    interval: &str,
    scope: &str,
    now: &str,
) -> Vec<(String, f64)> {
    let q = validate(metric, period, interval, 1).unwrap();
    timeseries(ctx, &q, scope, at(now))
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            let t = Utc.timestamp_opt(p.timestamp_secs, 0).unwrap();
            (t.format("%H:%M:%S").to_string(), p.value)
        })
        .collect()
}

#[tokio::test]
async fn samples_become_exact_series_overview_and_figures() {
    let f = fixture();
    let ctx = &f.ctx;
    add_service(ctx, "a", Some((100.0, 10.0))).await;
    add_service(ctx, "b", None).await;
    // Service a: 3 connections opened (2 still open), 20 messages, 1 error, 10 responses.
    counters(ctx, "a", "cp1", 3, 10, 10, 1, (10, 50.0)).await;
    connection(ctx, "n1", "c1", "a", true).await;
    connection(ctx, "n1", "c2", "a", true).await;
    connection(ctx, "n2", "c3", "a", false).await;
    session(ctx, "s1", "a", "active").await;
    session(ctx, "s2", "a", "idle").await;
    session(ctx, "s3", "a", "completed").await;
    put(
        ctx,
        "stats/sessions/a",
        json!({"service_id": "a", "completed": 1, "total_duration_seconds": 42.5}),
    )
    .await;

    let mut s = Sampler::load(ctx).await.unwrap();
    sample_at(ctx, &mut s, "2024-01-01T10:00:00Z").await;
    // Another replica's proxies add traffic; one more connection on a, one on b.
    counters(ctx, "a", "cp2", 1, 5, 4, 0, (5, 100.0)).await;
    counters(ctx, "b", "cp2", 1, 2, 2, 0, (0, 0.0)).await;
    connection(ctx, "n2", "c4", "b", true).await;
    sample_at(ctx, &mut s, "2024-01-01T10:00:10Z").await;

    let now = "2024-01-01T10:00:15Z";
    assert_eq!(
        points(ctx, "messages", "1m", "10s", "a", now).await,
        [("10:00:00".into(), 20.0), ("10:00:10".into(), 9.0)]
    );
    assert_eq!(
        points(ctx, "messages", "1m", "10s", series::ALL_SCOPE, now).await,
        [("10:00:00".into(), 20.0), ("10:00:10".into(), 13.0)]
    );
    assert_eq!(
        points(ctx, "messages", "1m", "1m", "a", now).await,
        [("10:00:00".into(), 29.0)]
    );
    assert_eq!(
        points(ctx, "errors", "1m", "1m", "a", now).await,
        [("10:00:00".into(), 1.0)]
    );
    assert_eq!(
        points(ctx, "connections", "1m", "10s", "a", now)
            .await
            .len(),
        2
    );
    assert_eq!(
        points(ctx, "connections", "1m", "1m", series::ALL_SCOPE, now).await,
        [("10:00:00".into(), 2.5)]
    );
    assert_eq!(
        points(ctx, "sessions", "1m", "1m", "a", now).await,
        [("10:00:00".into(), 2.0)]
    );
    // (50 + 100) ms over 15 responses.
    assert_eq!(
        points(ctx, "response_time_ms", "1m", "1m", "a", now).await,
        [("10:00:00".into(), 10.0)]
    );
    assert_eq!(
        points(ctx, "memory_mb", "1m", "1m", series::ALL_SCOPE, now).await,
        [("10:00:00".into(), 100.0)]
    );
    assert_eq!(
        points(ctx, "cpu_percent", "1m", "10s", "b", now)
            .await
            .iter()
            .map(|p| p.1)
            .sum::<f64>(),
        0.0
    );

    let o = overview(ctx, at(now)).await.unwrap();
    assert_eq!(
        (
            o.services.total,
            o.services.running,
            o.services.stopped,
            o.services.error
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(
        (
            o.connections.total,
            o.connections.active,
            o.connections.peak_today
        ),
        (5, 3, 3)
    );
    assert_eq!(
        (
            o.sessions.total_today,
            o.sessions.active,
            o.sessions.completed_today
        ),
        (5, 2, 1)
    );
    assert_eq!(o.performance.throughput_per_minute, 17.0);
    assert_eq!(o.performance.avg_response_time_ms, 10.0);
    assert_eq!(o.performance.error_rate, 0.2);
    assert_eq!(
        (o.resources.total_memory_mb, o.resources.total_cpu_percent),
        (100.0, 10.0)
    );

    let figs = per_service(ctx, &["a", "b"]).await.unwrap();
    let a = figs["a"];
    assert_eq!(
        (
            a.total_connections,
            a.active_connections,
            a.peak_connections
        ),
        (4, 2, 2)
    );
    assert_eq!(
        (a.total_sessions, a.active_sessions, a.completed_sessions),
        (4, 2, 1)
    );
    assert_eq!(
        (
            a.avg_session_duration,
            a.error_count,
            a.error_rate,
            a.messages_total
        ),
        (42.5, 1, 0.25, 29)
    );
    assert_eq!(per_service(ctx, &["a"]).await.unwrap()["a"], a);
    assert_eq!(figs["b"].total_connections, 1);

    // The connections close: peaks stay, active drops.
    connection(ctx, "n1", "c1", "a", false).await;
    connection(ctx, "n1", "c2", "a", false).await;
    sample_at(ctx, &mut s, "2024-01-01T10:00:20Z").await;
    let a = per_service(ctx, &["a"]).await.unwrap()["a"];
    assert_eq!((a.active_connections, a.peak_connections), (0, 2));
    let o = overview(ctx, at("2024-01-01T10:00:21Z")).await.unwrap();
    assert_eq!((o.connections.active, o.connections.peak_today), (1, 3));

    // A new leader carries on from the stored state: no double counting, rows appended.
    let mut s2 = Sampler::load(ctx).await.unwrap();
    counters(ctx, "a", "cp1", 3, 12, 10, 1, (10, 50.0)).await;
    sample_at(ctx, &mut s2, "2024-01-01T10:00:30Z").await;
    assert_eq!(
        points(ctx, "messages", "1m", "10s", "a", "2024-01-01T10:00:35Z").await,
        [
            ("10:00:00".into(), 20.0),
            ("10:00:10".into(), 9.0),
            ("10:00:20".into(), 0.0),
            ("10:00:30".into(), 2.0)
        ]
    );
}

#[tokio::test]
async fn day_boundary_resets_today_counts() {
    let f = fixture();
    let ctx = &f.ctx;
    add_service(ctx, "a", None).await;
    counters(ctx, "a", "cp1", 4, 0, 0, 0, (0, 0.0)).await;
    connection(ctx, "n1", "c1", "a", true).await;
    connection(ctx, "n1", "c2", "a", true).await;
    let mut s = Sampler::load(ctx).await.unwrap();
    sample_at(ctx, &mut s, "2024-01-01T23:59:50Z").await;
    connection(ctx, "n1", "c2", "a", false).await;
    counters(ctx, "a", "cp1", 6, 0, 0, 0, (0, 0.0)).await;
    // Before the leader's first sample of the day, readers already count from the last one.
    let o = overview(ctx, at("2024-01-02T00:00:01Z")).await.unwrap();
    assert_eq!(
        (
            o.sessions.total_today,
            o.connections.peak_today,
            o.connections.total
        ),
        (2, 1, 6)
    );
    sample_at(ctx, &mut s, "2024-01-02T00:00:00Z").await;
    let o = overview(ctx, at("2024-01-02T00:00:05Z")).await.unwrap();
    assert_eq!((o.sessions.total_today, o.connections.peak_today), (2, 1));
    // The all-time peak of the service survives the day.
    assert_eq!(
        per_service(ctx, &["a"]).await.unwrap()["a"].peak_connections,
        2
    );
}

#[tokio::test]
async fn retention_downsamples_and_prunes() {
    let f = fixture();
    let ctx = &f.ctx;
    add_service(ctx, "a", None).await;
    let mut s = Sampler::load(ctx).await.unwrap();
    let start = at("2024-01-01T00:00:00Z").timestamp_millis();
    // One sample every 3 minutes for 7 hours, 1 message each.
    for i in 0..140 {
        counters(ctx, "a", "cp1", 0, i + 1, 0, 0, (0, 0.0)).await;
        s.sample(ctx, start + i as i64 * 180_000).await.unwrap();
    }
    // Raw buckets older than 6 h are gone; minute and hour rollups remain.
    let (raw, _) = ctx
        .store
        .range(&series::prefix(Resolution::Raw, "a"))
        .await
        .unwrap();
    assert!(raw.len() <= 37, "{} raw buckets", raw.len());
    let first_raw = raw
        .first()
        .unwrap()
        .key
        .rsplit('/')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert_eq!(first_raw, start + 50 * 60_000);
    let (minute, _) = ctx
        .store
        .range(&series::prefix(Resolution::Minute, "a"))
        .await
        .unwrap();
    assert_eq!(minute.len(), 7);
    let now = "2024-01-01T07:00:00Z";
    // Every message is counted exactly once whichever resolution answers.
    let hourly = points(ctx, "messages", "24h", "1h", "a", now).await;
    assert_eq!(hourly.len(), 7);
    assert!(hourly.iter().all(|p| p.1 == 20.0), "{hourly:?}");
    let per_minute = points(ctx, "messages", "7h", "1m", "a", now).await;
    assert_eq!(per_minute.len(), 140);
    assert!(per_minute.iter().all(|p| p.1 == 1.0));
    assert_eq!(per_minute[1].0, "00:03:00");
    // A deleted service's history goes with it.
    ctx.store.delete(&crate::keys::service("a")).await.unwrap();
    s.sample(ctx, start + 140 * 180_000).await.unwrap();
    for res in Resolution::ALL {
        assert!(ctx
            .store
            .range(&series::prefix(res, "a"))
            .await
            .unwrap()
            .0
            .is_empty());
    }
}

#[tokio::test]
async fn replicas_peak_records_count_and_past_days_fold_into_the_summary() {
    let f = fixture();
    let ctx = &f.ctx;
    add_service(ctx, "a", None).await;
    connection(ctx, "n1", "c1", "a", true).await;
    // Peaks two replicas derived from their proxies' reports (`stats::peaks`).
    put(
        ctx,
        "stats/peaks/cp1",
        json!({"replica_id": "cp1", "day": "2024-01-01", "today": 7, "services": {"a": 5}}),
    )
    .await;
    put(
        ctx,
        "stats/peaks/cp2",
        json!({"replica_id": "cp2", "day": "2024-01-02", "today": 3, "services": {"a": 6}}),
    )
    .await;
    let mut s = Sampler::load(ctx).await.unwrap();
    sample_at(ctx, &mut s, "2024-01-01T10:00:00Z").await;
    let o = overview(ctx, at("2024-01-01T10:00:01Z")).await.unwrap();
    assert_eq!((o.connections.active, o.connections.peak_today), (1, 7));
    assert_eq!(
        per_service(ctx, &["a"]).await.unwrap()["a"].peak_connections,
        6
    );

    // The next day's first sample folds yesterday's record into the summary and deletes it.
    sample_at(ctx, &mut s, "2024-01-02T00:00:00Z").await;
    assert!(ctx.store.get("stats/peaks/cp1").await.unwrap().is_none());
    assert!(ctx.store.get("stats/peaks/cp2").await.unwrap().is_some());
    let summary = json::get::<Summary>(&ctx.store, SUMMARY_KEY)
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!((summary.peaks["a"], summary.peak_today), (6, 3));
    let o = overview(ctx, at("2024-01-02T00:00:01Z")).await.unwrap();
    assert_eq!(o.connections.peak_today, 3);
    // With no record left, the summary still holds the all-time peak.
    ctx.store.delete("stats/peaks/cp2").await.unwrap();
    assert_eq!(
        per_service(ctx, &["a"]).await.unwrap()["a"].peak_connections,
        6
    );
}
