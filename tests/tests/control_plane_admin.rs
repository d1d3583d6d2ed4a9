//! The admin port: /healthz, /readyz following the store (503 while etcd is down, 200 again
//! when it returns), /metrics; gRPC health following it the same way (NOT_SERVING, then
//! SERVING); and gRPC answering STORE_UNAVAILABLE promptly during an outage.

use std::time::{Duration, Instant};

use myagent_proto::v1 as pb;
use myagent_tests::assert_eventually;
use myagent_tests::control_plane::{control_plane, error_code, start_example_agent, unique_prefix};
use myagent_tests::etcd::Etcd;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC health status of `service` (`""`: the whole server).
async fn grpc_health(mut health: HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    match health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        Err(e) => panic!("health check failed: {e}"),
    }
}

async fn status(url: &str) -> u16 {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn health_ready_and_metrics_on_embedded() {
    let cp = control_plane().spawn().await;
    assert_eq!(status(&cp.admin_url("/healthz")).await, 200);
    assert_eq!(status(&cp.admin_url("/readyz")).await, 200);
    let mut registry = cp.registry().await;
    registry
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap();
    let _ = registry
        .get_service(pb::GetServiceRequest {
            service: "missing".into(),
        })
        .await;
    let body = reqwest::get(cp.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains(r#"myagent_grpc_requests_total{code="Ok",method="/myagent.v1.ServiceRegistry/ListServices"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"myagent_grpc_requests_total{code="NotFound",method="/myagent.v1.ServiceRegistry/GetService"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("myagent_grpc_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("myagent_store_operation_duration_seconds_bucket"),
        "{body}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn readyz_and_errors_follow_etcd_outages() {
    // Its own etcd: this test stops it.
    let etcd = Etcd::start();
    let cp = control_plane()
        .etcd(&etcd, &unique_prefix("outage"))
        .spawn()
        .await;
    let mut registry = cp.registry().await;
    registry
        .register_service(pb::RegisterServiceRequest {
            name: "before-outage".into(),
            port: 8081,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status(&cp.admin_url("/readyz")).await, 200);
    let health = HealthClient::new(cp.channel().await);
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    for service in ["", "myagent.v1.ServiceRegistry"] {
        assert_eq!(grpc_health(health.clone(), service).await, serving);
    }

    etcd.stop();
    assert_eventually!(
        Duration::from_secs(10),
        status(&cp.admin_url("/readyz")).await == 503,
        "readyz 503"
    );
    assert_eventually!(
        Duration::from_secs(10),
        grpc_health(health.clone(), "").await == not_serving,
        "gRPC health NOT_SERVING"
    );
    assert_eq!(
        grpc_health(health.clone(), "myagent.v1.ServiceRegistry").await,
        not_serving
    );
    assert_eq!(
        status(&cp.admin_url("/healthz")).await,
        200,
        "liveness does not depend on the store"
    );
    let started = Instant::now();
    let e = registry
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(error_code(&e).0, "STORE_UNAVAILABLE");
    assert!(
        took < Duration::from_secs(5),
        "STORE_UNAVAILABLE took {took:?}"
    );

    etcd.restart();
    assert_eventually!(
        Duration::from_secs(20),
        status(&cp.admin_url("/readyz")).await == 200,
        "readyz 200"
    );
    assert_eventually!(
        Duration::from_secs(10),
        grpc_health(health.clone(), "").await == serving,
        "gRPC health SERVING again"
    );
    let list = myagent_tests::wait::until("list after recovery", Duration::from_secs(20), || {
        let mut r = registry.clone();
        async move {
            r.list_services(pb::ListServicesRequest::default())
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    assert_eq!(list.services[0].name, "before-outage");
    cp.shutdown().await;
}

/// A short etcd outage (a restart, an etcd leader election) does not end the leader's term: its agent processes keep
/// running. The leader used to step down at the first failed keepalive and stop every agent,
/// dropping every client on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_etcd_outage_keeps_the_leader_and_its_agents() {
    let etcd = Etcd::start();
    let cp = control_plane()
        .etcd(&etcd, &unique_prefix("blip"))
        .spawn()
        .await;
    let mut registry = cp.registry().await;
    let pid = start_example_agent(&mut registry, "through-the-blip").await;
    let service = || pb::GetServiceRequest {
        service: "through-the-blip".into(),
    };

    // etcd does not answer for 2 s (longer than a keepalive period), then does again.
    etcd.pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.resume();

    // Answers again, the same process still runs, and it was never stopped.
    let back = Instant::now();
    while registry.get_service(service()).await.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the control plane answers after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a term that ended to show: a new leader would have restarted the agent by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = registry.get_service(service()).await.unwrap().into_inner();
    assert_eq!(after.status, "running", "{after:?}");
    assert_eq!(
        after.runtime.as_ref().map(|r| r.pid),
        Some(pid),
        "the agent was not restarted: {after:?}"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "process {pid} still alive"
    );
    cp.shutdown().await;
}

/// An etcd outage longer than the election lease ends the leader's term, but its agent processes
/// keep running while no other replica leads, and the next term of the same replica goes on with
/// them. They used to be stopped with the term, dropping every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_etcd_outage_keeps_the_agents_for_the_next_term() {
    let etcd = Etcd::start();
    let cp = control_plane()
        .etcd(&etcd, &unique_prefix("outage-hold"))
        .spawn_binary()
        .await;
    let mut registry = cp.registry().await;
    let pid = start_example_agent(&mut registry, "through-the-outage").await;
    let service = || pb::GetServiceRequest {
        service: "through-the-outage".into(),
    };

    // 8 s without etcd: past the 5 s lease, so the term ends.
    etcd.pause();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "the agent runs through the outage"
    );
    etcd.resume();

    let back = Instant::now();
    while registry.get_service(service()).await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(15), "answers again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The term ended (the control plane says so) and a new one began with the same process.
    assert_eventually!(
        Duration::from_secs(15),
        cp.logs().contains("leader again, with the agents it kept"),
        "a new term with the kept agents: {}",
        cp.logs()
    );
    assert!(
        cp.logs().contains("keeping the agent processes running"),
        "{}",
        cp.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = registry.get_service(service()).await.unwrap().into_inner();
    assert_eq!(after.status, "running", "{after:?}");
    assert_eq!(
        after.runtime.as_ref().map(|r| r.pid),
        Some(pid),
        "{after:?}"
    );
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());

    // The new term manages the kept process: a stop ends it.
    let stopped = registry
        .stop_service(pb::StopServiceRequest {
            service: "through-the-outage".into(),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.status, "stopped", "{stopped:?}");
    assert_eventually!(
        Duration::from_secs(10),
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "the kept process is stopped"
    );
    cp.shutdown().await;
}

/// A replica frozen past its lease (a long pause, a stopped VM) loses its term to the other
/// replica, which runs the agent; once it runs again it must not write over the new leader's
/// state. It used to handle its agent's exit (killed by the new leader's sweep) as the leader
/// and write the service unhealthy, which took it out of routing until the next health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_term_leaves_the_new_leaders_state_alone() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let etcd = Etcd::start();
    let prefix = unique_prefix("outage-yield");
    let a = control_plane().etcd(&etcd, &prefix).spawn_binary().await;
    let store = myagent_tests::control_plane::etcd_store(&etcd, &prefix).await;
    myagent_tests::control_plane::wait_leader(&store).await;
    let b = control_plane().etcd(&etcd, &prefix).spawn_binary().await;
    let mut registry = a.registry().await;
    start_example_agent(&mut registry, "changing-hands").await;
    let get = || pb::GetServiceRequest {
        service: "changing-hands".into(),
    };
    let b_registry = b.registry().await;
    let state = || {
        let mut r = b_registry.clone();
        async move {
            let s = r.get_service(get()).await.ok()?.into_inner();
            let pid = s.runtime.as_ref().map(|r| r.pid).unwrap_or_default();
            let health = s.health.map(|h| h.status).unwrap_or_default();
            Some((s.status, pid, health))
        }
    };
    let (_, first, _) = state().await.expect("service");
    assert!(first > 0);

    // Freeze the leader past its lease: the other replica leads and runs the agent, healthy.
    let a_pid = Pid::from_raw(a.pid().expect("binary") as i32);
    kill(a_pid, Signal::SIGSTOP).unwrap();
    let second = myagent_tests::wait::until(
        "the new leader runs the agent",
        Duration::from_secs(30),
        || async {
            match state().await {
                Some((status, pid, health))
                    if status == "running" && pid > 0 && pid != first && health == "healthy" =>
                {
                    Some(pid)
                }
                _ => None,
            }
        },
    )
    .await;
    kill(a_pid, Signal::SIGCONT).unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        a.logs().contains("leadership ended"),
        "the old leader notices: {}",
        a.logs()
    );
    // For a while after, the service stays as the new leader has it.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let now = state().await.expect("service");
        assert_eq!(
            now,
            ("running".to_string(), second, "healthy".to_string()),
            "after the old leader resumed: {}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kill(Pid::from_raw(second), None).is_ok());
    assert!(kill(Pid::from_raw(first), None).is_err());
    b.shutdown().await;
    a.shutdown().await;
}

/// A `--data-dir` that cannot be a directory is a configuration error naming the flag (it was
/// reported as an internal error of the embedded store).
#[tokio::test]
async fn an_impossible_data_dir_names_the_flag() {
    use clap::Parser;
    let file = tempfile::NamedTempFile::new().unwrap();
    let cli = myagent_control_plane::Cli::try_parse_from([
        "myagent-control-plane",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        &file.path().join("sub").display().to_string(),
    ])
    .unwrap();
    match myagent_control_plane::bind(cli).await {
        Err(myagent_control_plane::Error::InvalidRequest { field, .. }) => {
            assert_eq!(field, "--data-dir")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("bind must fail"),
    }
}
