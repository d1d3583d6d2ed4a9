//! Logs from any replica: two control-plane replicas (real binaries, bearer tokens on) on one
//! real etcd, a managed echo agent run by the leader, and every Logs call — query, search,
//! follow (gRPC) and `GET /logs/...` (REST through a gateway) — asked of the FOLLOWER, which
//! forwards it to the leader with the caller's credentials. When the leader dies the follower
//! answers `STORE_UNAVAILABLE` until it leads itself, then serves its own capture.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{
    control_plane, error_code, etcd_store, unique_prefix, wait_leader, with_token,
};
use myagent_tests::etcd::Etcd;
use tonic::transport::Channel;

const TOKEN: &str = "logs-cluster-token";

type Logs = pb::logs_client::LogsClient<Channel>;

async fn get_logs(
    logs: &mut Logs,
    service: &str,
    level: &str,
) -> Result<pb::GetLogsResponse, tonic::Status> {
    logs.get_logs(with_token(
        pb::GetLogsRequest {
            service: service.into(),
            level: level.into(),
            limit: 1000,
            since: None,
        },
        TOKEN,
    ))
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_answers_logs_search_and_follow_from_the_leader() {
    let etcd = Etcd::start();
    let prefix = unique_prefix("logs-cluster");
    let replica = |id: &str| {
        control_plane()
            .etcd(&etcd, &prefix)
            .tokens(TOKEN)
            .arg("--replica-id")
            .arg(id)
    };
    let mut replicas = vec![
        ("cp-a".to_string(), replica("cp-a").spawn_binary().await),
        ("cp-b".to_string(), replica("cp-b").spawn_binary().await),
    ];
    let store = etcd_store(&etcd, &prefix).await;
    let record = wait_leader(&store).await;
    let leader_idx = replicas
        .iter()
        .position(|(id, _)| *id == record.replica_id)
        .unwrap();
    assert_eq!(
        record.url,
        replicas[leader_idx].1.grpc_url(),
        "the leader record advertises the leader's bound gRPC address"
    );
    let follower = &replicas[1 - leader_idx].1;

    // A managed echo agent, registered and started through the follower.
    let mut registry = follower.registry().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/echo_agent.py");
    let reg = registry
        .register_service(with_token(
            pb::RegisterServiceRequest {
                name: "cluster-talker".into(),
                agent_factory_path: agent.canonicalize().unwrap().display().to_string(),
                host: "127.0.0.1".into(),
                port: u32::from(port),
                config: Some(pb::ServiceConfig {
                    startup_timeout: Some(10.0),
                    ..Default::default()
                }),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .expect("register")
        .into_inner();
    let id = reg.service_id.clone();
    let started = registry
        .start_service(with_token(
            pb::StartServiceRequest {
                service: "cluster-talker".into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.status, "running");

    // Query through the follower: the agent's lines and the manager's events, with levels.
    let mut logs = Logs::new(follower.channel().await);
    let all = myagent_tests::wait::until(
        "the agent's lines through the follower",
        Duration::from_secs(15),
        || {
            let mut logs = logs.clone();
            async move {
                let r = get_logs(&mut logs, "cluster-talker", "").await.ok()?;
                (r.logs
                    .iter()
                    .any(|l| l.message.contains("an error line in JSON"))
                    && r.logs.iter().any(|l| l.message.contains("running (pid")))
                .then_some(r)
            }
        },
    )
    .await;
    assert_eq!(all.service_id, id);
    let listening = all
        .logs
        .iter()
        .find(|l| l.message.contains("listening on ws://"))
        .expect("the agent's listening line");
    assert_eq!(
        (listening.level.as_str(), listening.source.as_str()),
        ("info", "stdout")
    );
    assert!(all.logs.iter().any(|l| l.source == "manager"));
    let errors = get_logs(&mut logs, &id, "error")
        .await
        .expect("error level");
    assert!(!errors.logs.is_empty() && errors.logs.iter().all(|l| l.level == "error"));

    // Without credentials the follower refuses by itself; with them the leader accepted the
    // forwarded call above, so the token travelled.
    let denied = logs
        .get_logs(pb::GetLogsRequest {
            service: id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(error_code(&denied).0, "UNAUTHORIZED");
    // The leader's own errors come back unchanged.
    let missing = get_logs(&mut logs, "no-such-service", "")
        .await
        .expect_err("unknown");
    assert_eq!(error_code(&missing).0, "SERVICE_NOT_FOUND");

    // Search through the follower.
    let found = logs
        .search_logs(with_token(
            pb::SearchLogsRequest {
                query: "AN ERROR LINE".into(),
                service: String::new(),
                limit: 10,
                level: String::new(),
            },
            TOKEN,
        ))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.query, "AN ERROR LINE");
    assert!(
        found
            .results
            .iter()
            .any(|r| r.service_id == id && r.service_name == "cluster-talker"),
        "{:?}",
        found.results
    );

    // REST through a gateway that talks to the follower only.
    let gw = myagent_tests::gateway::gateway()
        .control_plane(follower.grpc_url())
        .spawn()
        .await;
    let http = myagent_tests::gateway::client();
    let (status, body) = myagent_tests::gateway::json(
        http.get(gw.api(&format!("/logs/services/{id}?level=warn&limit=50")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rest_logs = body["logs"].as_array().expect("logs array");
    assert!(
        rest_logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("WARNING this is a warning line")),
        "{body}"
    );
    let (status, body) = myagent_tests::gateway::json(
        http.get(gw.api(&format!("/logs/search?query=listening&service_id={id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["total"].as_u64().unwrap_or(0) >= 1, "{body}");

    // Follow through the follower: a line the agent prints now arrives on the stream.
    let mut follow = logs
        .follow_logs(with_token(
            pb::FollowLogsRequest {
                service: "cluster-talker".into(),
                level: String::new(),
                tail: 2,
            },
            TOKEN,
        ))
        .await
        .expect("follow")
        .into_inner();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .expect("connect to the agent");
    let marker = format!("cluster-follow-{}", uuid::Uuid::new_v4().simple());
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        format!("log:{marker}").into(),
    ))
    .await
    .unwrap();
    let sent = std::time::Instant::now();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = follow.next().await {
            let entry = item.expect("stream item");
            if entry.message == marker {
                return entry;
            }
        }
        panic!("follow stream ended before the line arrived");
    })
    .await
    .expect("the new line arrives on the follower's stream within 10 s");
    println!(
        "follow via the follower: new line after {} ms",
        sent.elapsed().as_millis()
    );
    assert_eq!(
        (line.source.as_str(), line.service_id.as_str()),
        ("stdout", id.as_str())
    );
    drop(ws);

    // The leader dies (SIGKILL): until the follower leads, it says the logs are unreachable;
    // then it answers from its own disk (logs of the old term stayed on the old leader's).
    let (_, killed) = replicas.remove(leader_idx);
    drop(killed);
    drop(follow);
    let saw_unavailable = AtomicBool::new(false);
    let after = myagent_tests::wait::until(
        "the follower to lead and serve the new term's logs",
        Duration::from_secs(40),
        || {
            let mut logs = logs.clone();
            let saw = &saw_unavailable;
            let id = id.clone();
            async move {
                match get_logs(&mut logs, &id, "").await {
                    Err(s) => {
                        let (code, _) = error_code(&s);
                        assert_eq!(code, "STORE_UNAVAILABLE", "{s:?}");
                        assert_eq!(s.code(), tonic::Code::Unavailable);
                        saw.store(true, Ordering::Relaxed);
                        None
                    }
                    Ok(r) => r
                        .logs
                        .iter()
                        .any(|l| l.message.contains("running (pid"))
                        .then_some(r),
                }
            }
        },
    )
    .await;
    assert!(
        saw_unavailable.load(Ordering::Relaxed),
        "asked right after the leader died, the follower reports STORE_UNAVAILABLE"
    );
    assert!(
        !after.logs.iter().any(|l| l.message == marker),
        "lines of the old term are not on the new leader's disk"
    );
    let (_, survivor) = replicas.pop().unwrap();
    survivor.shutdown().await;
}

/// Replicas serving TLS: the follower forwards to the leader's `https` URL, verifying it with
/// `--tls-peer-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_works_between_tls_replicas() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let certs = tempfile::tempdir().unwrap();
    myagent_tests::tls::make_certs(certs.path());
    let pem = |name: &str| certs.path().join(name).display().to_string();
    let etcd = Etcd::start();
    let prefix = unique_prefix("logs-cluster-tls");
    let replica = |id: &str| {
        control_plane()
            .etcd(&etcd, &prefix)
            .arg("--replica-id")
            .arg(id)
            .arg("--tls-cert")
            .arg(pem("server.pem"))
            .arg("--tls-key")
            .arg(pem("server.key"))
            .arg("--tls-peer-ca")
            .arg(pem("ca.pem"))
    };
    let replicas = [
        ("cp-a", replica("cp-a").spawn_binary().await),
        ("cp-b", replica("cp-b").spawn_binary().await),
    ];
    let store = etcd_store(&etcd, &prefix).await;
    let record = wait_leader(&store).await;
    assert!(record.url.starts_with("https://"), "{record:?}");
    let (_, follower) = replicas
        .iter()
        .find(|(id, _)| *id != record.replica_id)
        .unwrap();
    let channel = Channel::from_shared(format!("https://{}", follower.grpc_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(
                    std::fs::read(certs.path().join("ca.pem")).unwrap(),
                ))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to the follower");
    let mut registry = pb::service_registry_client::ServiceRegistryClient::new(channel.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/echo_agent.py");
    registry
        .register_service(pb::RegisterServiceRequest {
            name: "tls-talker".into(),
            agent_factory_path: agent.canonicalize().unwrap().display().to_string(),
            host: "127.0.0.1".into(),
            port: u32::from(port),
            ..Default::default()
        })
        .await
        .expect("register");
    registry
        .start_service(pb::StartServiceRequest {
            service: "tls-talker".into(),
            ..Default::default()
        })
        .await
        .expect("start");
    let logs = Logs::new(channel);
    myagent_tests::wait::until(
        "the agent's lines through the TLS follower",
        Duration::from_secs(15),
        || {
            let mut logs = logs.clone();
            async move {
                let r = logs
                    .get_logs(pb::GetLogsRequest {
                        service: "tls-talker".into(),
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| println!("not yet: {s:?}"))
                    .ok()?
                    .into_inner();
                r.logs
                    .iter()
                    .any(|l| l.message.contains("listening on ws://"))
                    .then_some(())
            }
        },
    )
    .await;
    for (_, cp) in replicas {
        cp.shutdown().await;
    }
}
