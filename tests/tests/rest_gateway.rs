//! The gateway as an operator meets it: the real binary, bearer tokens passed through to a
//! token-protected control plane, a control plane that is down (503) and then up, the etcd
//! store behind it, and the OpenAPI document.

use myagent_tests::control_plane::control_plane;
use myagent_tests::etcd::Etcd;
use myagent_tests::gateway::{assert_error, client, gateway, json};
use serde_json::json;

#[tokio::test]
async fn bearer_token_is_passed_through_and_401_without_it() {
    let cp = control_plane().tokens("s3cret,other").spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();
    let body = json!({"name": "auth-agent", "port": 9100});

    let (s, b) = json(c.post(gw.api("/services")).json(&body)).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = json(
        c.get(gw.api("/services"))
            .header("authorization", "Bearer wrong"),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert!(
        !b.to_string().contains("wrong"),
        "the token must not be echoed: {b}"
    );

    let (s, b) = json(
        c.post(gw.api("/services"))
            .header("authorization", "Bearer s3cret")
            .json(&body),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json(
        c.get(gw.api("/services"))
            .header("authorization", "Bearer other"),
    )
    .await;
    assert_eq!((s, b["total"].clone()), (200, json!(1)), "{b}");
}

#[tokio::test]
async fn binary_gateway_serves_and_answers_503_while_control_plane_is_down() {
    // Nothing listens on port 1: the gateway starts anyway (lazy channel).
    let down = gateway().spawn_binary();
    let c = client();
    let (s, b) = json(c.get(down.api("/services"))).await;
    let d = assert_error(s, &b, 503, "STORE_UNAVAILABLE");
    assert_eq!(d["upstream"], "control_plane");
    let (s, b) = json(c.get(format!("{}/healthz", down.base))).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));

    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn_binary();
    let (s, b) = json(
        c.post(gw.api("/services"))
            .json(&json!({"name": "bin", "port": 9200})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json(c.get(gw.api("/services/bin"))).await;
    assert_eq!((s, b["port"].clone()), (200, json!(9200)), "{b}");
}

#[tokio::test]
async fn rest_over_the_etcd_store() {
    let etcd = Etcd::shared();
    let prefix = myagent_tests::control_plane::unique_prefix("rest");
    let cp = control_plane().etcd(&etcd, &prefix).spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();
    let (s, b) = json(
        c.post(gw.api("/services"))
            .json(&json!({"name": "etcd-agent", "port": 9300, "tags": ["x"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json(
        c.post(gw.api("/services"))
            .json(&json!({"name": "etcd-agent", "port": 9301})),
    )
    .await;
    assert_error(s, &b, 409, "SERVICE_ALREADY_EXISTS");
    let (s, b) = json(c.get(gw.api("/services?tag=x"))).await;
    assert_eq!((s, b["total"].clone()), (200, json!(1)), "{b}");
    let (s, b) = json(
        c.post(gw.api("/routing/rules"))
            .json(&json!({"name": "r1", "target_tags": ["x"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = json(c.delete(gw.api("/services/etcd-agent"))).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn openapi_document_is_valid_json_with_every_path() {
    let gw = gateway().spawn().await;
    let (s, doc) = json(client().get(gw.api("/openapi.json"))).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/services",
        "/api/v1/services/{id}",
        "/api/v1/services/{id}/config",
        "/api/v1/services/{id}/start",
        "/api/v1/services/{id}/stop",
        "/api/v1/services/{id}/restart",
        "/api/v1/connections",
        "/api/v1/connections/{id}/disconnect",
        "/api/v1/notifications",
        "/api/v1/routing/rules",
        "/api/v1/routing/rules/{id}",
        "/api/v1/stats/overview",
        "/api/v1/stats/timeseries",
        "/api/v1/health/services/{id}",
        "/api/v1/health/services/{id}/check",
        "/api/v1/health/services/{id}/history",
        "/api/v1/logs/services/{id}",
        "/api/v1/logs/search",
    ] {
        assert!(paths.contains_key(p), "{p} missing from openapi.json");
    }
}

/// After one replica of two went away: ten calls in a row succeed within `within` (the probe
/// takes it out of the balancer), then every one of thirty more does; returns the failures.
async fn calls_recover(
    gw: &myagent_tests::gateway::Gateway,
    within: std::time::Duration,
) -> Vec<(usize, u16, serde_json::Value)> {
    let c = client();
    let deadline = std::time::Instant::now() + within;
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "calls still fail {within:?} after a replica went away"
        );
        let (s, _) = json(c.get(gw.api("/services"))).await;
        in_a_row = if s == 200 { in_a_row + 1 } else { 0 };
        if s != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let mut failed = Vec::new();
    for i in 0..30 {
        let (s, b) = json(c.get(gw.api("/services"))).await;
        if s != 200 {
            failed.push((i, s, b));
        }
    }
    failed
}

/// Two control-plane replicas behind one gateway: once one dies, calls stop going to it within
/// a couple of seconds (about every other call answered 503 for as long as it was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_leaves_the_balancer() {
    let etcd = Etcd::shared();
    let prefix = myagent_tests::control_plane::unique_prefix("gw-failover");
    let a = control_plane().etcd(&etcd, &prefix).spawn().await;
    let b = control_plane().etcd(&etcd, &prefix).spawn().await;
    let gw = gateway()
        .control_plane(a.grpc_url())
        .control_plane(b.grpc_url())
        .spawn()
        .await;
    let c = client();
    for _ in 0..10 {
        let (s, b) = json(c.get(gw.api("/services"))).await;
        assert_eq!(s, 200, "{b}");
    }
    b.shutdown().await;
    // Out of the balancer within the probe period (1 s) and a little.
    let failed = calls_recover(&gw, std::time::Duration::from_secs(10)).await;
    assert!(
        failed.is_empty(),
        "calls failed with one replica down: {failed:?}"
    );
    a.shutdown().await;
}

/// A replica that hangs (frozen: it accepts connections and answers nothing) leaves the
/// balancer too: the probe is a gRPC health check, not a TCP connect, which a hung replica
/// passes. Calls sent to it waited out the request timeout, then answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_leaves_the_balancer() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let etcd = Etcd::shared();
    let prefix = myagent_tests::control_plane::unique_prefix("gw-hung");
    let a = control_plane().etcd(&etcd, &prefix).spawn().await;
    let b = control_plane().etcd(&etcd, &prefix).spawn_binary().await;
    let gw = gateway()
        .control_plane(a.grpc_url())
        .control_plane(b.grpc_url())
        .arg("--request-timeout")
        .arg("3")
        .spawn()
        .await;
    let c = client();
    for _ in 0..10 {
        let (s, b) = json(c.get(gw.api("/services"))).await;
        assert_eq!(s, 200, "{b}");
    }
    let b_pid = Pid::from_raw(b.pid().expect("binary") as i32);
    kill(b_pid, Signal::SIGSTOP).unwrap();
    let failed = calls_recover(&gw, std::time::Duration::from_secs(15)).await;
    kill(b_pid, Signal::SIGCONT).unwrap();
    assert!(
        failed.is_empty(),
        "calls failed with one replica hung: {failed:?}"
    );
    b.shutdown().await;
    a.shutdown().await;
}
