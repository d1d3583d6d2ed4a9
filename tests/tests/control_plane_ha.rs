//! State survives a control-plane restart (real binary, both stores); two replicas on one etcd
//! see the same state, and a name registered on both at once is created once.

use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, error_code, unique_prefix, ControlPlaneBuilder};
use myagent_tests::etcd::Etcd;

fn req(name: &str, port: u32) -> pb::RegisterServiceRequest {
    pb::RegisterServiceRequest {
        name: name.into(),
        port,
        tags: vec!["persist".into()],
        ..Default::default()
    }
}

async fn survives_restart(make: impl Fn() -> ControlPlaneBuilder) {
    let cp = make().spawn_binary().await;
    let mut registry = cp.registry().await;
    let id = registry
        .register_service(req("durable", 8081))
        .await
        .unwrap()
        .into_inner()
        .service_id;
    let mut rules = cp.rules().await;
    rules
        .create_rule(pb::CreateRuleRequest {
            name: "durable-rule".into(),
            priority: Some(7),
            ..Default::default()
        })
        .await
        .unwrap();
    cp.shutdown().await;

    let cp = make().spawn_binary().await;
    let s = cp
        .registry()
        .await
        .get_service(pb::GetServiceRequest {
            service: "durable".into(),
        })
        .await
        .expect("service survives the restart")
        .into_inner();
    assert_eq!(s.service_id, id);
    assert_eq!(s.tags, vec!["persist"]);
    let r = cp
        .rules()
        .await
        .get_rule(pb::GetRuleRequest {
            rule: "durable-rule".into(),
        })
        .await
        .expect("rule survives the restart")
        .into_inner();
    assert_eq!(r.priority, 7);
    // Uniqueness survives too.
    let e = cp
        .registry()
        .await
        .register_service(req("durable", 9000))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e).0, "SERVICE_ALREADY_EXISTS");
    cp.shutdown().await;
}

#[tokio::test]
async fn embedded_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    survives_restart(|| control_plane().embedded(&path)).await;
}

#[tokio::test]
async fn etcd_state_survives_restart() {
    let etcd = Etcd::shared();
    let prefix = unique_prefix("restart");
    survives_restart(|| control_plane().etcd(&etcd, &prefix)).await;
}

#[tokio::test]
async fn two_replicas_share_state_and_uniqueness() {
    let etcd = Etcd::shared();
    let prefix = unique_prefix("replicas");
    let a = control_plane().etcd(&etcd, &prefix).spawn().await;
    let b = control_plane().etcd(&etcd, &prefix).spawn_binary().await;
    let mut ra = a.registry().await;
    let mut rb = b.registry().await;

    let id = ra
        .register_service(req("shared", 8081))
        .await
        .unwrap()
        .into_inner()
        .service_id;
    let seen = rb
        .get_service(pb::GetServiceRequest {
            service: "shared".into(),
        })
        .await
        .expect("replica B sees A's service")
        .into_inner();
    assert_eq!(seen.service_id, id);
    b.rules()
        .await
        .create_rule(pb::CreateRuleRequest {
            name: "from-b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rules = a
        .rules()
        .await
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.rules[0].name, "from-b");

    for round in 0..5 {
        let name = format!("race-{round}");
        let (x, y) = tokio::join!(
            ra.register_service(req(&name, 9100 + round)),
            rb.register_service(req(&name, 9200 + round)),
        );
        let oks = [x.is_ok(), y.is_ok()].iter().filter(|o| **o).count();
        assert_eq!(oks, 1, "round {round}: exactly one replica creates {name}");
        let loser = x.err().or(y.err()).unwrap();
        assert_eq!(error_code(&loser).0, "SERVICE_ALREADY_EXISTS");
    }
    // The same port under different names, through both replicas at once: one keeps it.
    for round in 0..5 {
        let port = 9300 + round;
        let (x, y) = tokio::join!(
            ra.register_service(req(&format!("port-a-{round}"), port)),
            rb.register_service(req(&format!("port-b-{round}"), port)),
        );
        let oks = [x.is_ok(), y.is_ok()].iter().filter(|o| **o).count();
        assert_eq!(
            oks, 1,
            "round {round}: exactly one service gets port {port}"
        );
        let loser = x.err().or(y.err()).unwrap();
        assert_eq!(error_code(&loser).0, "PORT_IN_USE");
    }
    let all = ra
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.total, 11);
    // DESIGN §3: every value is JSON, so `etcdctl get --prefix` is readable (the name indexes
    // held bare ids).
    let store = myagent_tests::control_plane::etcd_store(&etcd, &prefix).await;
    let (kvs, _) = store.range("").await.unwrap();
    assert!(kvs.iter().any(|kv| kv.key.starts_with("service-names/")));
    assert!(kvs.iter().any(|kv| kv.key.starts_with("rule-names/")));
    for kv in &kvs {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&kv.value).is_ok(),
            "{} is not JSON: {}",
            kv.key,
            String::from_utf8_lossy(&kv.value)
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}
