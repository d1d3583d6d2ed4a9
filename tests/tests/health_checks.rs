//! Health checks against real endpoints: detection of an unhealthy external endpoint, history
//! with transitions, manual checks over gRPC, flap damping, restarts after failed checks, and
//! hung probes that stall nothing.

mod supervisor_support;

use std::time::{Duration, Instant};

use myagent_control_plane::model::ServiceStatus;
use myagent_control_plane::supervisor::lifecycle;
use myagent_proto::v1 as pb;
use supervisor_support::{agent_port, echo_agent, env, Fixture, TestEndpoint};

fn fast_checks(c: &mut myagent_control_plane::model::ServiceConfig) {
    c.health_check_interval = 0.2;
    c.health_check_timeout = 1.0;
    c.unhealthy_threshold = 2;
    c.healthy_threshold = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_external_endpoint_is_detected_with_history() {
    let fx = Fixture::start().await;
    let (mut health, _) = fx.grpc().await;
    let ep = TestEndpoint::start(0).await;
    let def = fx.register("ext", None, ep.port, fast_checks).await;

    let rt = lifecycle::start(&fx.ctx, &def).await.expect("admit");
    assert_eq!(rt.status, ServiceStatus::Running);
    assert_eq!(rt.pid, None, "external: no process");
    supervisor_support::wait_health(&mut health, "ext", "healthy").await;

    ep.set(1);
    let st = supervisor_support::wait_health(&mut health, "ext", "unhealthy").await;
    assert!(st.consecutive_failures >= 2);
    assert!(!st.message.is_empty());

    let hist = health
        .get_health_history(pb::GetHealthHistoryRequest {
            service: "ext".into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hist.service_id, def.id);
    // Newest first; the healthy -> unhealthy transition is marked.
    let newest = hist.history[0].timestamp.unwrap();
    let oldest = hist.history.last().unwrap().timestamp.unwrap();
    assert!((newest.seconds, newest.nanos) >= (oldest.seconds, oldest.nanos));
    let to_unhealthy = hist
        .history
        .iter()
        .find(|h| h.transition && h.status == "unhealthy")
        .expect("transition record");
    assert!(!to_unhealthy.error.is_empty());
    let limited = health
        .get_health_history(pb::GetHealthHistoryRequest {
            service: def.id.clone(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(limited.history.len(), 2);

    // The change is a manager log line too.
    let (lines, _) = fx
        .logs
        .query(
            &def.id,
            myagent_control_plane::logs::LogQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.message.contains("healthy -> unhealthy")),
        "{lines:?}"
    );

    // Recovery.
    ep.set(0);
    supervisor_support::wait_health(&mut health, "ext", "healthy").await;
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_check_probes_now() {
    let fx = Fixture::start().await;
    let (mut health, _) = fx.grpc().await;
    let def = fx
        .register("manual", Some(echo_agent()), agent_port(), |c| {
            c.health_check_interval = 3600.0
        })
        .await;
    lifecycle::start(&fx.ctx, &def).await.unwrap();
    let before = health
        .get_health(pb::GetHealthRequest {
            service: "manual".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before.status, "healthy",
        "a service that passed its start-up handshake is healthy"
    );
    let st = health
        .check_health(pb::CheckHealthRequest {
            service: def.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status, "healthy");
    assert!(st.response_time_ms > 0.0);
    let (l0, l1) = (before.last_check.unwrap(), st.last_check.unwrap());
    assert!((l1.seconds, l1.nanos) > (l0.seconds, l0.nanos));
    // Unknown service and bad limit use the seed's codes.
    let err = health
        .get_health(pb::GetHealthRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = health
        .get_health_history(pb::GetHealthHistoryRequest {
            service: "manual".into(),
            limit: 5000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    lifecycle::stop(&fx.ctx, &def).await.unwrap();
    let st = health
        .get_health(pb::GetHealthRequest {
            service: "manual".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status, "unknown", "a stopped service is not checked");
    // A manual check's verdict counts at once (thresholds are for the periodic checker): the
    // stopped service's probe fails, and it reads unhealthy after one failure, not three.
    let st = health
        .check_health(pb::CheckHealthRequest {
            service: "manual".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (st.status.as_str(), st.consecutive_failures),
        ("unhealthy", 1),
        "{st:?}"
    );
    assert!(!st.message.is_empty(), "the failure says why: {st:?}");
    let got = health
        .get_health(pb::GetHealthRequest {
            service: "manual".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "unhealthy");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_is_held_out_until_stable() {
    let fx = Fixture::start().await;
    let (mut health, _) = fx.grpc().await;
    let ep = TestEndpoint::start(3).await; // alternates ok / refused
    let def = fx
        .register("flappy", None, ep.port, |c| {
            fast_checks(c);
            c.unhealthy_threshold = 1;
            c.flap_stable_checks = 3;
        })
        .await;
    lifecycle::start(&fx.ctx, &def).await.unwrap();
    myagent_tests::wait::until("flapping", Duration::from_secs(10), || {
        let mut h = health.clone();
        async move {
            let st = h
                .get_health(pb::GetHealthRequest {
                    service: "flappy".into(),
                })
                .await
                .ok()?
                .into_inner();
            st.flapping.then_some(())
        }
    })
    .await;
    ep.set(0);
    let st = myagent_tests::wait::until("stable again", Duration::from_secs(10), || {
        let mut h = health.clone();
        async move {
            let st = h
                .get_health(pb::GetHealthRequest {
                    service: "flappy".into(),
                })
                .await
                .ok()?
                .into_inner();
            (!st.flapping).then_some(st)
        }
    })
    .await;
    assert_eq!(st.status, "healthy");
    let hist = health
        .get_health_history(pb::GetHealthHistoryRequest {
            service: "flappy".into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let transitions = hist.history.iter().filter(|h| h.transition).count();
    assert!(
        transitions >= 4,
        "every transition is in the history ({transitions})"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_checks_restart_a_managed_agent() {
    let fx = Fixture::start().await;
    let def = fx
        .register("goes-deaf", Some(echo_agent()), agent_port(), |c| {
            fast_checks(c);
            c.health_check_timeout = 0.5;
            c.env = env(&[("ECHO_HANG_AFTER", "1")]);
        })
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    let rt = myagent_tests::wait::until(
        "restart after failed checks",
        Duration::from_secs(20),
        || async {
            fx.runtime(&def.id)
                .await
                .filter(|r| r.restart_count >= 1 && r.pid.is_some_and(|p| p != pid))
        },
    )
    .await;
    assert!(rt.restart_count >= 1);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_probes_stall_nothing() {
    let fx = Fixture::start().await;
    let (mut health, mut logs) = fx.grpc().await;
    let hung = TestEndpoint::start(2).await;
    let good = TestEndpoint::start(0).await;
    let slow = fx
        .register("hung", None, hung.port, |c| {
            fast_checks(c);
            c.health_check_timeout = 3.0;
        })
        .await;
    let fine = fx.register("fine", None, good.port, fast_checks).await;
    // Admission of the hung endpoint returns without waiting for its probe.
    let t = Instant::now();
    lifecycle::start(&fx.ctx, &slow).await.unwrap();
    lifecycle::start(&fx.ctx, &fine).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "start waited for a hung probe: {:?}",
        t.elapsed()
    );
    let first = supervisor_support::wait_health(&mut health, "fine", "healthy").await;
    // While the hung probes wait for their timeout, the API answers at once and the other
    // service keeps being checked.
    for _ in 0..10 {
        let t = Instant::now();
        health
            .get_health(pb::GetHealthRequest {
                service: "hung".into(),
            })
            .await
            .unwrap();
        logs.get_logs(pb::GetLogsRequest {
            service: "hung".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "API stalled: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = health
        .get_health(pb::GetHealthRequest {
            service: "fine".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (first.last_check.unwrap(), later.last_check.unwrap());
    assert!(
        (b.seconds, b.nanos) > (a.seconds, a.nanos),
        "the healthy service kept being probed"
    );
    assert_eq!(later.status, "healthy");
    fx.shutdown().await;
}
