//! Two control-plane replicas (real binaries) on one real etcd: the leader runs a managed agent;
//! SIGKILL the leader and the agent runs again under the other replica. The killed leader's
//! agent dies with it (PR_SET_PDEATHSIG, see control-plane/src/supervisor/pdeathsig.rs), so
//! there are never two copies.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use myagent_control_plane::keys;
use myagent_control_plane::model::{Runtime, ServiceStatus};
use myagent_control_plane::store::{build_store, json, StoreConfig, StoreRef};
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, unique_prefix, ControlPlane};
use myagent_tests::etcd::Etcd;

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn runtime(store: &StoreRef, id: &str) -> Option<Runtime> {
    json::get::<Runtime>(store, &keys::runtime(id))
        .await
        .ok()
        .flatten()
        .map(|(r, _)| r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_again_under_the_new_leader_after_sigkill() {
    let etcd = Etcd::start();
    let prefix = unique_prefix("failover");
    let replica = |id: &str| {
        control_plane()
            .etcd(&etcd, &prefix)
            .arg("--replica-id")
            .arg(id)
    };
    let mut replicas: Vec<(String, ControlPlane)> = vec![
        ("cp-a".to_string(), replica("cp-a").spawn_binary().await),
        ("cp-b".to_string(), replica("cp-b").spawn_binary().await),
    ];
    let store = build_store(&StoreConfig::Etcd {
        endpoints: vec![etcd.endpoint()],
        prefix: prefix.clone(),
        request_timeout: Duration::from_secs(2),
    })
    .await
    .expect("etcd store");
    let leader = myagent_tests::wait::until("a leader", Duration::from_secs(20), || async {
        myagent_control_plane::election::current_leader(&store)
            .await
            .ok()
            .flatten()
    })
    .await;

    // Register and start through the replica that does NOT lead: intent goes through the store.
    let follower = replicas
        .iter()
        .find(|(id, _)| *id != leader)
        .map(|(_, cp)| cp)
        .unwrap();
    let mut registry = follower.registry().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/echo_agent.py");
    let reg = registry
        .register_service(pb::RegisterServiceRequest {
            name: "failover-echo".into(),
            agent_factory_path: agent.canonicalize().unwrap().display().to_string(),
            host: "127.0.0.1".into(),
            port: u32::from(port),
            config: Some(pb::ServiceConfig {
                startup_timeout: Some(10.0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let id = reg.service_id.clone();
    let started = registry
        .start_service(pb::StartServiceRequest {
            service: "failover-echo".into(),
            ..Default::default()
        })
        .await
        .expect("start via the follower")
        .into_inner();
    assert_eq!(started.status, "running");
    let before = runtime(&store, &id).await.expect("runtime");
    assert_eq!(before.leader, leader, "the leader supervises the agent");
    let old_pid = before.pid.expect("pid");
    assert!(alive(old_pid));

    // SIGKILL the leader (dropping a binary-backed ControlPlane kills it with SIGKILL).
    let killed_at = Instant::now();
    let idx = replicas.iter().position(|(id, _)| *id == leader).unwrap();
    let (_, killed) = replicas.remove(idx);
    drop(killed);

    let after = myagent_tests::wait::until(
        "the agent running under the new leader",
        Duration::from_secs(40),
        || async {
            runtime(&store, &id).await.filter(|r| {
                r.status == ServiceStatus::Running
                    && r.leader != leader
                    && r.pid.is_some_and(|p| p != old_pid)
            })
        },
    )
    .await;
    let took = killed_at.elapsed();
    println!(
        "failover: agent running again under {} after {:.2}s",
        after.leader,
        took.as_secs_f64()
    );
    let new_pid = after.pid.unwrap();
    assert!(alive(new_pid));
    assert!(
        !alive(old_pid),
        "the killed leader's agent (pid {old_pid}) must not survive as a duplicate"
    );
    let probe =
        myagent_control_plane::health::probe::handshake("127.0.0.1", port, Duration::from_secs(2))
            .await;
    assert!(probe.ok, "the new copy serves the port: {probe:?}");

    // A graceful stop of the last replica stops its agent too.
    let (_, survivor) = replicas.pop().unwrap();
    survivor.shutdown().await;
    myagent_tests::assert_eventually!(
        Duration::from_secs(10),
        !alive(new_pid),
        "agent {new_pid} stopped with its replica"
    );
}
