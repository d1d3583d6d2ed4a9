//! Two control-plane replicas (real binaries) on one real etcd: the leader runs a managed agent;
//! SIGKILL the leader and the agent runs again under the other replica. The killed leader's
//! agent dies with it (PR_SET_PDEATHSIG, see control-plane/src/supervisor/pdeathsig.rs), so
//! there are never two copies. Processes the agent started survive that (PR_SET_PDEATHSIG
//! reaches the agent only) and may hold its port: the new leader finds and kills them before
//! it launches (control-plane/src/supervisor/orphans.rs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use myagent_control_plane::keys;
use myagent_control_plane::model::{Runtime, ServiceStatus};
use myagent_control_plane::store::{json, StoreRef};
use myagent_control_plane::supervisor::orphans;
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{
    control_plane, etcd_store, unique_prefix, wait_leader, ControlPlane,
};
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

/// Two binary replicas on one etcd, a managed echo agent (with `env`) registered and started
/// through the follower.
struct Cluster {
    _etcd: Etcd,
    replicas: Vec<(String, ControlPlane)>,
    store: StoreRef,
    leader: String,
    id: String,
    port: u16,
}

impl Cluster {
    async fn start(name: &str, env: &[(&str, &str)]) -> Cluster {
        let etcd = Etcd::start();
        let prefix = unique_prefix(name);
        let replica = |id: &str| {
            control_plane()
                .etcd(&etcd, &prefix)
                .arg("--replica-id")
                .arg(id)
        };
        let replicas: Vec<(String, ControlPlane)> = vec![
            ("cp-a".to_string(), replica("cp-a").spawn_binary().await),
            ("cp-b".to_string(), replica("cp-b").spawn_binary().await),
        ];
        let store = etcd_store(&etcd, &prefix).await;
        let leader = wait_leader(&store).await.replica_id;

        // Register and start through the replica that does NOT lead: intent goes through the
        // store.
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
        let agent =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/echo_agent.py");
        let reg = registry
            .register_service(pb::RegisterServiceRequest {
                name: name.into(),
                agent_factory_path: agent.canonicalize().unwrap().display().to_string(),
                host: "127.0.0.1".into(),
                port: u32::from(port),
                config: Some(pb::ServiceConfig {
                    startup_timeout: Some(10.0),
                    env: Some(pb::StringMap {
                        entries: env
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();
        let started = registry
            .start_service(pb::StartServiceRequest {
                service: name.into(),
                ..Default::default()
            })
            .await
            .expect("start via the follower")
            .into_inner();
        assert_eq!(started.status, "running");
        Cluster {
            _etcd: etcd,
            replicas,
            store,
            leader,
            id: reg.service_id,
            port,
        }
    }

    /// SIGKILLs the leader (dropping a binary-backed ControlPlane kills it with SIGKILL) and
    /// waits for the agent to run under the other replica with a new pid.
    async fn kill_leader_and_wait(&mut self, old_pid: i32) -> (Runtime, Duration) {
        let killed_at = Instant::now();
        let idx = self
            .replicas
            .iter()
            .position(|(id, _)| *id == self.leader)
            .unwrap();
        let (_, killed) = self.replicas.remove(idx);
        drop(killed);
        let (store, id, leader) = (&self.store, &self.id, &self.leader);
        let after = myagent_tests::wait::until(
            "the agent running under the new leader",
            Duration::from_secs(40),
            || async {
                runtime(store, id).await.filter(|r| {
                    r.status == ServiceStatus::Running
                        && r.leader != *leader
                        && r.pid.is_some_and(|p| p != old_pid)
                })
            },
        )
        .await;
        (after, killed_at.elapsed())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_again_under_the_new_leader_after_sigkill() {
    let mut c = Cluster::start("failover-echo", &[]).await;
    let before = runtime(&c.store, &c.id).await.expect("runtime");
    assert_eq!(before.leader, c.leader, "the leader supervises the agent");
    let old_pid = before.pid.expect("pid");
    assert!(alive(old_pid));

    let (after, took) = c.kill_leader_and_wait(old_pid).await;
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
    let probe = myagent_control_plane::health::probe::handshake(
        "127.0.0.1",
        c.port,
        Duration::from_secs(2),
    )
    .await;
    assert!(probe.ok, "the new copy serves the port: {probe:?}");

    // A graceful stop of the last replica stops its agent too.
    let (_, survivor) = c.replicas.pop().unwrap();
    survivor.shutdown().await;
    myagent_tests::assert_eventually!(
        Duration::from_secs(10),
        !alive(new_pid),
        "agent {new_pid} stopped with its replica"
    );
}

/// Kills, on drop, whatever still runs with the service's id in its environment (so a failed
/// assertion leaves no sleeping grandchild behind).
struct ReapOnDrop(String);

impl Drop for ReapOnDrop {
    fn drop(&mut self) {
        orphans::kill_all(&orphans::find(&self.0));
    }
}

/// The pid printed as `<key>=<pid>` by the agent, from the logs of the replica that ran it
/// (read from its data dir's log files: the replica may be dead by now).
fn printed_pids(data_dir: &std::path::Path, id: &str, key: &str) -> Vec<i32> {
    let dir = data_dir.join("logs").join(id);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(pid) = v["message"]
                .as_str()
                .and_then(|m| m.strip_prefix(&format!("{key}=")))
                .and_then(|p| p.trim().parse().ok())
            {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_grandchild_holding_the_port_is_killed_before_the_new_leader_starts() {
    let mut c = Cluster::start(
        "failover-grandchild",
        &[("ECHO_GRANDCHILD_HOLDS_PORT", "1")],
    )
    .await;
    let _reap = ReapOnDrop(c.id.clone());
    let before = runtime(&c.store, &c.id).await.expect("runtime");
    let old_pid = before.pid.expect("pid");
    let leader_dir = c
        .replicas
        .iter()
        .find(|(id, _)| *id == c.leader)
        .map(|(_, cp)| cp.data_dir.clone())
        .unwrap();
    let grandchild = myagent_tests::wait::until(
        "the agent's grandchild pid in the leader's logs",
        Duration::from_secs(10),
        || async { printed_pids(&leader_dir, &c.id, "grandchild_pid").pop() },
    )
    .await;
    assert!(alive(grandchild));
    let leftovers = orphans::find(&c.id);
    assert_eq!(
        leftovers.iter().map(|l| l.pid).collect::<Vec<_>>(),
        {
            let mut v = vec![old_pid, grandchild];
            v.sort();
            v
        },
        "agent and grandchild carry MYAGENT_SERVICE_ID: {leftovers:?}"
    );

    // The leader dies; PR_SET_PDEATHSIG takes the agent, but the grandchild keeps the port.
    let (after, took) = c.kill_leader_and_wait(old_pid).await;
    println!(
        "failover with a port-holding grandchild: agent running again under {} after {:.2}s",
        after.leader,
        took.as_secs_f64()
    );
    assert!(!alive(old_pid), "agent {old_pid} died with its leader");
    assert!(
        !alive(grandchild),
        "the stale grandchild {grandchild} was killed by the new leader"
    );
    let new_pid = after.pid.unwrap();
    let probe = myagent_control_plane::health::probe::handshake(
        "127.0.0.1",
        c.port,
        Duration::from_secs(2),
    )
    .await;
    assert!(probe.ok, "the new copy serves the port: {probe:?}");

    // The new leader said what it did, in the service's manager log.
    let (_, survivor) = c.replicas.last().unwrap();
    let mut logs = pb::logs_client::LogsClient::new(survivor.channel().await);
    let manager_lines = logs
        .get_logs(pb::GetLogsRequest {
            service: c.id.clone(),
            level: "warn".into(),
            limit: 100,
            since: None,
        })
        .await
        .expect("logs")
        .into_inner()
        .logs;
    let event = manager_lines
        .iter()
        .find(|l| l.source == "manager" && l.message.contains("leftover process"))
        .unwrap_or_else(|| panic!("a leftover event in {manager_lines:?}"));
    assert!(
        event.message.contains(&format!("pid {grandchild}")),
        "{}",
        event.message
    );

    // Graceful stop of the survivor: its agent's whole group (new grandchild included) goes.
    let (_, survivor) = c.replicas.pop().unwrap();
    survivor.shutdown().await;
    myagent_tests::assert_eventually!(
        Duration::from_secs(10),
        orphans::find(&c.id).is_empty(),
        "no process of the service is left: {:?}",
        orphans::find(&c.id)
    );
    assert!(!alive(new_pid));
}
