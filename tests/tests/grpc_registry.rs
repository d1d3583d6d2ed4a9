//! ServiceRegistry over real gRPC against a real control plane, on both stores: registration,
//! every validation error (code + field, nothing written), lookups by id and name, list
//! filters and paging, config merge, delete.

use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, error_code, unique_prefix, ControlPlane};
use myagent_tests::etcd::Etcd;
use pb::service_registry_client::ServiceRegistryClient;
use tonic::transport::Channel;

type Client = ServiceRegistryClient<Channel>;

fn req(name: &str, port: u32) -> pb::RegisterServiceRequest {
    pb::RegisterServiceRequest {
        name: name.into(),
        port,
        ..Default::default()
    }
}

async fn register(c: &mut Client, r: pb::RegisterServiceRequest) -> pb::RegisterServiceResponse {
    c.register_service(r).await.expect("register").into_inner()
}

async fn total(c: &mut Client) -> u64 {
    c.list_services(pb::ListServicesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .total
}

/// Runs `$scenario(&ControlPlane)` once on the embedded store and once on a real etcd.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let cp = super::control_plane().spawn().await;
                    super::$scenario(&cp).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let etcd = super::Etcd::shared();
                    let cp = super::control_plane()
                        .etcd(&etcd, &super::unique_prefix(stringify!($scenario)))
                        .spawn()
                        .await;
                    super::$scenario(&cp).await;
                }
            )*
        }
    };
}

on_both_stores!(
    register_returns_the_seed_shape,
    every_invalid_registration_names_its_field,
    duplicates_and_port_conflicts,
    lookups_by_id_and_name,
    list_filters_and_paging,
    config_updates_merge_and_validate,
    delete_removes_everything,
    concurrent_registrations_of_one_name_create_one,
);

async fn register_returns_the_seed_shape(cp: &ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("weather_agent.py");
    std::fs::write(&agent, "print('hi')\n").unwrap();
    let mut c = cp.registry().await;
    let r = register(
        &mut c,
        pb::RegisterServiceRequest {
            name: "weather-agent".into(),
            description: "Weather information agent".into(),
            agent_factory_path: agent.display().to_string(),
            host: "localhost".into(),
            port: 8081,
            tags: vec!["weather".into(), "information".into(), "weather".into()],
            config: Some(pb::ServiceConfig {
                max_sessions: Some(100),
                session_timeout: Some(1800),
                auto_restart: Some(true),
                health_check_enabled: Some(true),
                ..Default::default()
            }),
            wait_for_sync: 0.0,
        },
    )
    .await;
    assert!(
        uuid::Uuid::parse_str(&r.service_id).is_ok(),
        "{}",
        r.service_id
    );
    assert_eq!(r.message, "Service registered successfully");
    assert_eq!(r.endpoint, "ws://localhost:8081");
    let s = r.service.expect("service view");
    assert_eq!(s.status, "stopped");
    assert_eq!(s.tags, vec!["weather", "information"]);
    assert_eq!(
        s.agent_factory_path,
        std::fs::canonicalize(&agent).unwrap().display().to_string()
    );
    assert!(s.created_at.is_some());
    assert!(s.started_at.is_none());
    let cfg = s.config.expect("config");
    assert_eq!(cfg.max_sessions, Some(100));
    assert_eq!(cfg.weight, Some(1), "defaults are filled in");
    assert_eq!(s.health.expect("health").status, "unknown");
    assert!(s.runtime.expect("runtime").managed);

    // External service: no factory path, default host.
    let ext = register(&mut c, req("external-one", 9001)).await;
    assert_eq!(ext.endpoint, "ws://localhost:9001");
    assert!(!ext.service.unwrap().runtime.unwrap().managed);
}

async fn every_invalid_registration_names_its_field(cp: &ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("data.bin");
    std::fs::write(&not_exec, "x").unwrap();
    let mut c = cp.registry().await;
    let cfg = |f: fn(&mut pb::ServiceConfig)| {
        let mut c = pb::ServiceConfig::default();
        f(&mut c);
        Some(c)
    };
    let cases: Vec<(pb::RegisterServiceRequest, &str)> = vec![
        (req("", 8081), "name"),
        (req("-leading-dash", 8081), "name"),
        (req("has space", 8081), "name"),
        (req(&"x".repeat(64), 8081), "name"),
        (req("6f1c2a0e-8d2b-4a51-9d7e-0a1b2c3d4e5f", 8081), "name"),
        (req("ok", 0), "port"),
        (req("ok", 70000), "port"),
        (
            pb::RegisterServiceRequest {
                host: "bad host".into(),
                ..req("ok", 8081)
            },
            "host",
        ),
        (
            pb::RegisterServiceRequest {
                tags: vec!["".into()],
                ..req("ok", 8081)
            },
            "tags[0]",
        ),
        (
            pb::RegisterServiceRequest {
                tags: vec!["a".into(), "x".repeat(65)],
                ..req("ok", 8081)
            },
            "tags[1]",
        ),
        (
            pb::RegisterServiceRequest {
                tags: (0..33).map(|i| format!("t{i}")).collect(),
                ..req("ok", 8081)
            },
            "tags",
        ),
        (
            pb::RegisterServiceRequest {
                description: "d".repeat(1025),
                ..req("ok", 8081)
            },
            "description",
        ),
        (
            pb::RegisterServiceRequest {
                agent_factory_path: "/no/such/agent.py".into(),
                ..req("ok", 8081)
            },
            "agent_factory_path",
        ),
        (
            pb::RegisterServiceRequest {
                agent_factory_path: not_exec.display().to_string(),
                ..req("ok", 8081)
            },
            "agent_factory_path",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.max_sessions = Some(0)),
                ..req("ok", 8081)
            },
            "config.max_sessions",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.max_sessions = Some(1_000_001)),
                ..req("ok", 8081)
            },
            "config.max_sessions",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.session_timeout = Some(0)),
                ..req("ok", 8081)
            },
            "config.session_timeout",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.weight = Some(0)),
                ..req("ok", 8081)
            },
            "config.weight",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.health_check_interval = Some(-1.0)),
                ..req("ok", 8081)
            },
            "config.health_check_interval",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| {
                    c.health_check_interval = Some(1.0);
                    c.health_check_timeout = Some(2.0);
                }),
                ..req("ok", 8081)
            },
            "config.health_check_timeout",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| c.working_dir = Some("/no/such/dir".into())),
                ..req("ok", 8081)
            },
            "config.working_dir",
        ),
        (
            pb::RegisterServiceRequest {
                config: cfg(|c| {
                    c.env = Some(pb::StringMap {
                        entries: [("BAD=NAME".to_string(), "v".to_string())].into(),
                    })
                }),
                ..req("ok", 8081)
            },
            "config.env.BAD=NAME",
        ),
        (
            pb::RegisterServiceRequest {
                wait_for_sync: -1.0,
                ..req("ok", 8081)
            },
            "wait_for_sync",
        ),
    ];
    for (r, field) in cases {
        let name = r.name.clone();
        let status = c
            .register_service(r)
            .await
            .expect_err(&format!("{name}: {field} must fail"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert_eq!(
            error_code(&status),
            ("INVALID_REQUEST".to_string(), field.to_string()),
            "{status:?}"
        );
    }
    assert_eq!(
        total(&mut c).await,
        0,
        "no invalid registration may write anything"
    );
}

async fn duplicates_and_port_conflicts(cp: &ControlPlane) {
    let mut c = cp.registry().await;
    register(&mut c, req("alpha", 8081)).await;
    let dup = c.register_service(req("alpha", 8082)).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        error_code(&dup),
        ("SERVICE_ALREADY_EXISTS".into(), "name".into())
    );

    let port = c
        .register_service(pb::RegisterServiceRequest {
            host: "127.0.0.1".into(),
            ..req("beta", 8081)
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&port),
        ("PORT_IN_USE".into(), "port".into()),
        "localhost and 127.0.0.1 are one host"
    );
    // Registrations of one port arriving together: exactly one gets it.
    let racers = (0..8).map(|i| {
        let mut c = c.clone();
        tokio::spawn(async move { c.register_service(req(&format!("racer-{i}"), 8090)).await })
    });
    let mut oks = 0;
    for r in racers.collect::<Vec<_>>() {
        match r.await.unwrap() {
            Ok(_) => oks += 1,
            Err(e) => assert_eq!(error_code(&e).0, "PORT_IN_USE"),
        }
    }
    assert_eq!(oks, 1, "one of the concurrent registrations of port 8090");
    // Another host may use the same port.
    register(
        &mut c,
        pb::RegisterServiceRequest {
            host: "10.1.2.3".into(),
            ..req("gamma", 8081)
        },
    )
    .await;
    assert_eq!(total(&mut c).await, 3);
}

async fn lookups_by_id_and_name(cp: &ControlPlane) {
    let mut c = cp.registry().await;
    let id = register(&mut c, req("lookup-me", 8100)).await.service_id;
    for key in [id.as_str(), "lookup-me"] {
        let s = c
            .get_service(pb::GetServiceRequest {
                service: key.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.service_id, id);
        assert_eq!(s.name, "lookup-me");
    }
    for unknown in ["nope", "6f1c2a0e-8d2b-4a51-9d7e-0a1b2c3d4e5f", "a/b"] {
        let e = c
            .get_service(pb::GetServiceRequest {
                service: unknown.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(error_code(&e).0, "SERVICE_NOT_FOUND");
    }
    let e = c
        .get_service(pb::GetServiceRequest { service: "".into() })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), ("INVALID_REQUEST".into(), "service".into()));
    for call in ["start", "stop", "restart", "delete", "update"] {
        let key = "missing-service".to_string();
        let e = match call {
            "start" => c
                .start_service(pb::StartServiceRequest {
                    service: key,
                    wait_for_sync: 0.0,
                })
                .await
                .err(),
            "stop" => c
                .stop_service(pb::StopServiceRequest {
                    service: key,
                    wait_for_sync: 0.0,
                })
                .await
                .err(),
            "restart" => c
                .restart_service(pb::RestartServiceRequest {
                    service: key,
                    ..Default::default()
                })
                .await
                .err(),
            "delete" => c
                .delete_service(pb::DeleteServiceRequest {
                    service: key,
                    wait_for_sync: 0.0,
                })
                .await
                .err(),
            _ => c
                .update_service_config(pb::UpdateServiceConfigRequest {
                    service: key,
                    ..Default::default()
                })
                .await
                .err(),
        }
        .expect("unknown service fails");
        assert_eq!(error_code(&e).0, "SERVICE_NOT_FOUND", "{call}");
    }
}

async fn list_filters_and_paging(cp: &ControlPlane) {
    let mut c = cp.registry().await;
    for i in 0..5u32 {
        let tags = if i % 2 == 0 {
            vec!["even".to_string()]
        } else {
            vec!["odd".to_string()]
        };
        register(
            &mut c,
            pb::RegisterServiceRequest {
                tags,
                ..req(&format!("svc-{i}"), 9000 + i)
            },
        )
        .await;
    }
    let list = |tag: &str, status: &str, limit: u32, offset: u32| pb::ListServicesRequest {
        tag: tag.into(),
        status: status.into(),
        limit,
        offset,
    };
    let all = c
        .list_services(list("", "", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (all.total, all.services.len(), all.has_next, all.limit),
        (5, 5, false, 100)
    );
    let names: Vec<_> = all.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"],
        "registration order"
    );

    let even = c
        .list_services(list("even", "", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.total, 3);
    assert!(even.services.iter().all(|s| s.tags == ["even"]));

    let page = c
        .list_services(list("", "", 2, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page.total, page.services.len(), page.has_next),
        (5, 2, true)
    );
    assert_eq!(page.services[0].name, "svc-2");
    let last = c
        .list_services(list("", "", 2, 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (last.total, last.services.len(), last.has_next),
        (5, 1, false)
    );
    let beyond = c
        .list_services(list("", "", 2, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (beyond.total, beyond.services.len(), beyond.has_next),
        (5, 0, false)
    );

    let stopped = c
        .list_services(list("", "stopped", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.total, 5);
    let running = c
        .list_services(list("", "running", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(running.total, 0);

    let bad = c
        .list_services(list("", "sleeping", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&bad),
        ("INVALID_REQUEST".into(), "status".into())
    );
    let bad = c.list_services(list("", "", 1001, 0)).await.unwrap_err();
    assert_eq!(error_code(&bad), ("INVALID_REQUEST".into(), "limit".into()));
}

async fn config_updates_merge_and_validate(cp: &ControlPlane) {
    let mut c = cp.registry().await;
    register(&mut c, req("tunable", 8200)).await;
    let updated = c
        .update_service_config(pb::UpdateServiceConfigRequest {
            service: "tunable".into(),
            config: Some(pb::ServiceConfig {
                max_sessions: Some(200),
                auto_restart: Some(false),
                ..Default::default()
            }),
            wait_for_sync: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    let cfg = updated.config.unwrap();
    assert_eq!(cfg.max_sessions, Some(200));
    assert_eq!(cfg.auto_restart, Some(false));
    assert_eq!(
        cfg.session_timeout,
        Some(1800),
        "untouched fields keep their value"
    );
    assert_eq!(cfg.health_check_enabled, Some(true));

    let bad = c
        .update_service_config(pb::UpdateServiceConfigRequest {
            service: "tunable".into(),
            config: Some(pb::ServiceConfig {
                max_sessions: Some(0),
                ..Default::default()
            }),
            wait_for_sync: 0.0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&bad),
        ("INVALID_REQUEST".into(), "max_sessions".into())
    );
    let now = c
        .get_service(pb::GetServiceRequest {
            service: "tunable".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        now.config.unwrap().max_sessions,
        Some(200),
        "a rejected update writes nothing"
    );
}

async fn delete_removes_everything(cp: &ControlPlane) {
    let mut c = cp.registry().await;
    let id = register(&mut c, req("doomed", 8300)).await.service_id;
    let d = c
        .delete_service(pb::DeleteServiceRequest {
            service: "doomed".into(),
            wait_for_sync: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.service_id, id);
    let e = c
        .get_service(pb::GetServiceRequest {
            service: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e).0, "SERVICE_NOT_FOUND");
    // Name and port are free again.
    register(&mut c, req("doomed", 8300)).await;
}

async fn concurrent_registrations_of_one_name_create_one(cp: &ControlPlane) {
    let c = cp.registry().await;
    let attempts = (0..8u32).map(|i| {
        let mut c = c.clone();
        async move { c.register_service(req("contested", 8400 + i)).await }
    });
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one registration wins");
    for r in results.into_iter().filter_map(Result::err) {
        assert_eq!(error_code(&r).0, "SERVICE_ALREADY_EXISTS");
    }
}
