//! The gateway alone over real sockets: a stub `ServiceRegistry` gRPC server (on 127.0.0.1:0)
//! stands in for the control plane so that error mapping, auth pass-through and the JSON shapes
//! are checked independently of the real control plane (tests/tests/rest_*.rs cover that).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use myagent_proto::v1 as pb;
use pb::service_registry_server::{ServiceRegistry, ServiceRegistryServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

const TOKEN: &str = "Bearer secret";

fn coded(code: tonic::Code, reason: &str, msg: &str, meta: &[(&str, &str)]) -> Status {
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Status::with_error_details(
        code,
        msg,
        ErrorDetails::with_error_info(reason, "myagent.v1", meta),
    )
}

fn check_auth<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(TOKEN) => Ok(()),
        _ => Err(coded(
            tonic::Code::Unauthenticated,
            "UNAUTHORIZED",
            "missing or invalid bearer token",
            &[],
        )),
    }
}

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

fn sample() -> pb::Service {
    pb::Service {
        service_id: "svc-1".into(),
        name: "weather-agent".into(),
        description: "Weather information agent".into(),
        host: "localhost".into(),
        port: 8081,
        endpoint: "ws://localhost:8081".into(),
        status: "running".into(),
        tags: vec!["weather".into(), "information".into()],
        created_at: ts(1_704_103_200),
        started_at: ts(1_704_103_260),
        config: Some(pb::ServiceConfig {
            max_sessions: Some(100),
            session_timeout: Some(1800),
            auto_restart: Some(true),
            health_check_enabled: Some(true),
            args: Some(pb::StringList {
                items: vec!["--v".into()],
            }),
            ..Default::default()
        }),
        stats: Some(pb::ServiceStats {
            total_connections: 15,
            active_sessions: 8,
            uptime_seconds: 3600,
            avg_session_duration: 300.5,
            ..Default::default()
        }),
        health: Some(pb::HealthSummary {
            status: "healthy".into(),
            last_check: ts(1_704_105_000),
            response_time_ms: 5.2,
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Stub;

#[tonic::async_trait]
impl ServiceRegistry for Stub {
    async fn register_service(
        &self,
        req: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::RegisterServiceResponse>, Status> {
        check_auth(&req)?;
        let r = req.into_inner();
        if r.name == "taken" {
            return Err(coded(
                tonic::Code::AlreadyExists,
                "SERVICE_ALREADY_EXISTS",
                "Service with name 'taken' already exists",
                &[("name", "taken")],
            ));
        }
        // Echo what arrived so the test can check the REST → gRPC conversion.
        let cfg = r.config.unwrap_or_default();
        Ok(Response::new(pb::RegisterServiceResponse {
            service_id: format!(
                "id:{}:{}:{}:{}",
                r.name,
                r.port,
                cfg.max_sessions.unwrap_or(0),
                r.wait_for_sync
            ),
            message: "ok".into(),
            endpoint: format!("ws://{}:{}", r.host, r.port),
            service: None,
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        check_auth(&req)?;
        let r = req.into_inner();
        Ok(Response::new(pb::ListServicesResponse {
            services: vec![sample()],
            total: 1,
            has_next: false,
            limit: if r.limit == 0 { 100 } else { r.limit },
            offset: r.offset,
        }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        check_auth(&req)?;
        let r = req.into_inner();
        if r.service == "weather-agent" || r.service == "svc-1" {
            return Ok(Response::new(sample()));
        }
        Err(coded(
            tonic::Code::NotFound,
            "SERVICE_NOT_FOUND",
            &format!("Service with ID '{}' not found", r.service),
            &[("service_id", &r.service)],
        ))
    }

    async fn update_service_config(
        &self,
        _req: Request<pb::UpdateServiceConfigRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn delete_service(
        &self,
        _req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn start_service(
        &self,
        req: Request<pb::StartServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        check_auth(&req)?;
        Err(coded(
            tonic::Code::FailedPrecondition,
            "SERVICE_START_FAILED",
            "agent exited at once",
            &[("service_id", "svc-1"), ("stderr", "Traceback...")],
        ))
    }

    async fn stop_service(
        &self,
        req: Request<pb::StopServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        check_auth(&req)?;
        Ok(Response::new(pb::LifecycleResponse {
            service_id: "svc-1".into(),
            status: "stopped".into(),
            message: "Service stopped".into(),
        }))
    }

    async fn restart_service(
        &self,
        req: Request<pb::RestartServiceRequest>,
    ) -> Result<Response<pb::LifecycleResponse>, Status> {
        check_auth(&req)?;
        let r = req.into_inner();
        Ok(Response::new(pb::LifecycleResponse {
            service_id: "svc-1".into(),
            status: "running".into(),
            message: format!("grace={:?} message={}", r.grace_seconds, r.message),
        }))
    }
}

struct Stack {
    base: String,
    shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_stub(shutdown: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ServiceRegistryServer::new(Stub))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            ),
    );
    addr
}

async fn start(control_plane: Option<SocketAddr>, extra: &[&str]) -> Stack {
    let shutdown = CancellationToken::new();
    let cp = match control_plane {
        Some(a) => format!("http://{a}"),
        None => "http://127.0.0.1:1".to_string(),
    };
    let mut argv = vec![
        "myagent-gateway",
        "--listen",
        "127.0.0.1:0",
        "--control-plane",
        &cp,
        "--request-timeout",
        "5",
    ];
    argv.extend_from_slice(extra);
    let bound = myagent_gateway::bind(myagent_gateway::Cli::try_parse_from(argv).unwrap())
        .await
        .unwrap();
    let base = bound.base_url();
    tokio::spawn(bound.run(shutdown.clone()));
    Stack { base, shutdown }
}

async fn with_stub(extra: &[&str]) -> Stack {
    let stub_stop = CancellationToken::new();
    let addr = start_stub(stub_stop.clone()).await;
    let stack = start(Some(addr), extra).await;
    // The stub lives as long as the gateway does.
    let gw_stop = stack.shutdown.clone();
    tokio::spawn(async move {
        gw_stop.cancelled().await;
        stub_stop.cancel();
    });
    stack
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} non-JSON {e}: {text}"));
    (status, v)
}

fn error(status: u16, body: &Value, want: u16, code: &str) -> Value {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(
        body["error"]["details"]["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    body["error"]["details"].clone()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn register_list_get_shapes_and_auth_pass_through() {
    let gw = with_stub(&[]).await;
    let c = client();
    let body = json!({
        "name": "weather-agent",
        "description": "Weather information agent",
        "agent_factory_path": "./agents/weather_agent.py",
        "host": "localhost",
        "port": 8081,
        "tags": ["weather", "information"],
        "config": {"max_sessions": 100, "session_timeout": 1800, "auto_restart": true,
                   "health_check_enabled": true}
    });
    // Without the token the control plane refuses: 401 UNAUTHORIZED.
    let (s, b) = send(c.post(format!("{}/api/v1/services", gw.base)).json(&body)).await;
    error(s, &b, 401, "UNAUTHORIZED");

    let (s, b) = send(
        c.post(format!("{}/api/v1/services?wait_for_sync=1.5", gw.base))
            .header("authorization", TOKEN)
            .json(&body),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        keys(&b),
        sorted(&["success", "service_id", "message", "endpoint"])
    );
    assert_eq!(b["success"], true);
    assert_eq!(b["service_id"], "id:weather-agent:8081:100:1.5");
    assert_eq!(b["message"], "Service registered successfully");
    assert_eq!(b["endpoint"], "ws://localhost:8081");

    let (s, b) = send(
        c.get(format!("{}/api/v1/services?tag=weather&limit=10", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(keys(&b), sorted(&["services", "total", "page"]));
    assert_eq!(
        b["page"],
        json!({"limit": 10, "offset": 0, "has_next": false})
    );
    let item = &b["services"][0];
    assert_eq!(
        keys(item),
        sorted(&[
            "service_id",
            "name",
            "description",
            "host",
            "port",
            "endpoint",
            "status",
            "tags",
            "created_at",
            "started_at",
            "stats"
        ])
    );
    assert_eq!(item["created_at"], "2024-01-01T10:00:00Z");
    assert_eq!(item["started_at"], "2024-01-01T10:01:00Z");
    assert_eq!(
        item["stats"],
        json!({"total_connections": 15, "active_sessions": 8, "uptime_seconds": 3600})
    );

    let (s, b) = send(
        c.get(format!("{}/api/v1/services/weather-agent", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    for k in [
        "max_sessions",
        "session_timeout",
        "auto_restart",
        "health_check_enabled",
    ] {
        assert!(b["config"].get(k).is_some(), "config.{k} missing: {b}");
    }
    assert_eq!(b["config"]["args"], json!(["--v"]));
    assert_eq!(b["config"]["env"], json!({}));
    for k in [
        "total_connections",
        "active_connections",
        "peak_connections",
        "total_sessions",
        "active_sessions",
        "completed_sessions",
        "avg_session_duration",
        "memory_usage_mb",
        "cpu_usage_percent",
        "error_count",
        "error_rate",
    ] {
        assert!(b["stats"].get(k).is_some(), "stats.{k} missing: {b}");
    }
    assert_eq!(b["health"]["status"], "healthy");
    assert_eq!(b["health"]["last_check"], "2024-01-01T10:30:00Z");
    assert_eq!(b["health"]["response_time_ms"], 5.2);
}

#[tokio::test]
async fn control_plane_errors_keep_code_and_details() {
    let gw = with_stub(&[]).await;
    let c = client();
    let (s, b) = send(
        c.get(format!("{}/api/v1/services/nope", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    let d = error(s, &b, 404, "SERVICE_NOT_FOUND");
    assert_eq!(d["service_id"], "nope");
    assert_eq!(b["error"]["message"], "Service with ID 'nope' not found");

    let (s, b) = send(
        c.post(format!("{}/api/v1/services", gw.base))
            .header("authorization", TOKEN)
            .json(&json!({"name": "taken", "port": 9000})),
    )
    .await;
    error(s, &b, 409, "SERVICE_ALREADY_EXISTS");

    let (s, b) = send(
        c.post(format!("{}/api/v1/services/svc-1/start", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    let d = error(s, &b, 500, "SERVICE_START_FAILED");
    assert_eq!(d["stderr"], "Traceback...");

    let (s, b) = send(
        c.post(format!("{}/api/v1/services/svc-1/stop", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"success": true, "service_id": "svc-1", "status": "stopped", "message": "Service stopped"})
    );

    let (s, b) = send(
        c.post(format!("{}/api/v1/services/svc-1/restart", gw.base))
            .header("authorization", TOKEN)
            .json(&json!({"grace_seconds": 0, "message": "bye"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["message"], "grace=Some(0) message=bye");

    // An upstream that does not implement a call is an internal error, never a panic.
    let (s, b) = send(
        c.delete(format!("{}/api/v1/services/svc-1", gw.base))
            .header("authorization", TOKEN),
    )
    .await;
    error(s, &b, 500, "INTERNAL");
}

#[tokio::test]
async fn malformed_input_is_rejected_with_the_field_before_any_call() {
    let gw = with_stub(&["--max-body-bytes", "4096"]).await;
    let c = client();
    let url = format!("{}/api/v1/services", gw.base);
    let cases: Vec<(&str, &str)> = vec![
        (r#"{"name": "a", "port": 8080"#, "body"),
        (r#"{"name": 5, "port": 8080}"#, "name"),
        (r#"{"port": 8080}"#, "name"),
        (r#"{"name": "a", "port": 8080, "bogus": true}"#, "bogus"),
        (r#"{"name": "a", "port": 0}"#, "port"),
        (r#"{"name": "a", "port": 70000}"#, "port"),
        (r#"{"name": "a", "port": "80"}"#, "port"),
        (
            r#"{"name": "a", "port": 80, "config": {"max_sessions": -3}}"#,
            "config.max_sessions",
        ),
        (
            r#"{"name": "a", "port": 80, "config": {"colour": 1}}"#,
            "config.colour",
        ),
        (r#"{"name": "a", "port": 80, "tags": "x"}"#, "tags"),
        (r#"[]"#, "body"),
        ("", "body"),
    ];
    for (body, field) in cases {
        let (s, b) = send(
            c.post(&url)
                .header("authorization", TOKEN)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        let d = error(s, &b, 400, "INVALID_REQUEST");
        assert_eq!(d["field"], field, "body {body}: {b}");
    }
    let big = format!(
        r#"{{"name": "a", "port": 80, "description": "{}"}}"#,
        "x".repeat(8192)
    );
    let (s, b) = send(c.post(&url).header("authorization", TOKEN).body(big)).await;
    error(s, &b, 413, "INVALID_REQUEST");

    let (s, b) = send(c.get(format!("{url}?limit=-1"))).await;
    assert_eq!(error(s, &b, 400, "INVALID_REQUEST")["field"], "limit");
    let (s, b) = send(c.post(format!("{url}?wait_for_sync=-2")).body("{}")).await;
    assert_eq!(
        error(s, &b, 400, "INVALID_REQUEST")["field"],
        "wait_for_sync"
    );
    let (s, b) = send(
        c.post(format!("{}/api/v1/services/x/restart", gw.base))
            .body(r#"{"grace_seconds": "soon"}"#),
    )
    .await;
    assert_eq!(
        error(s, &b, 400, "INVALID_REQUEST")["field"],
        "grace_seconds"
    );
}

#[tokio::test]
async fn unknown_routes_methods_and_unreachable_control_plane_answer_json() {
    let gw = start(None, &[]).await;
    let c = client();
    let (s, b) = send(c.get(format!("{}/api/v1/nothing-here", gw.base))).await;
    error(s, &b, 404, "INVALID_REQUEST");
    let (s, b) = send(c.get(format!("{}/nowhere", gw.base))).await;
    error(s, &b, 404, "INVALID_REQUEST");
    let (s, b) = send(c.patch(format!("{}/api/v1/services", gw.base))).await;
    let d = error(s, &b, 405, "INVALID_REQUEST");
    // The path the client sent, with the `/api/v1` prefix (not the nested router's view).
    assert_eq!(d["path"], "/api/v1/services", "{b}");
    assert_eq!(d["method"], "PATCH", "{b}");
    assert_eq!(
        b["error"]["message"],
        "Method PATCH is not allowed on /api/v1/services"
    );
    let (s, b) = send(c.get(format!("{}/api/v1/services/x/start", gw.base))).await;
    assert_eq!(
        error(s, &b, 405, "INVALID_REQUEST")["path"],
        "/api/v1/services/x/start"
    );

    // The control plane is down: the gateway still serves and answers 503 promptly.
    let started = std::time::Instant::now();
    let (s, b) = send(c.get(format!("{}/api/v1/services", gw.base))).await;
    let d = error(s, &b, 503, "STORE_UNAVAILABLE");
    assert_eq!(d["upstream"], "control_plane");
    assert!(started.elapsed() < Duration::from_secs(6));

    let (s, b) = send(c.get(format!("{}/healthz", gw.base))).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));

    let metrics = c
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("myagent_gateway_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/api/v1/services""#) && metrics.contains(r#"status="503""#),
        "{metrics}"
    );
    assert!(metrics.contains("myagent_gateway_http_request_duration_seconds"));
}

#[tokio::test]
async fn openapi_lists_every_path() {
    let gw = start(None, &[]).await;
    let (s, doc) = send(client().get(format!("{}/api/v1/openapi.json", gw.base))).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let want = [
        ("/api/v1/services", &["get", "post"][..]),
        ("/api/v1/services/{id}", &["get", "delete"]),
        ("/api/v1/services/{id}/config", &["put"]),
        ("/api/v1/services/{id}/start", &["post"]),
        ("/api/v1/services/{id}/stop", &["post"]),
        ("/api/v1/services/{id}/restart", &["post"]),
        ("/api/v1/connections", &["get"]),
        ("/api/v1/connections/{id}/disconnect", &["post"]),
        ("/api/v1/notifications", &["post"]),
        ("/api/v1/routing/rules", &["get", "post"]),
        ("/api/v1/routing/rules/{id}", &["get", "put", "delete"]),
        ("/api/v1/stats/overview", &["get"]),
        ("/api/v1/stats/timeseries", &["get"]),
        ("/api/v1/health/services/{id}", &["get"]),
        ("/api/v1/health/services/{id}/check", &["post"]),
        ("/api/v1/health/services/{id}/history", &["get"]),
        ("/api/v1/logs/services/{id}", &["get"]),
        ("/api/v1/logs/search", &["get"]),
    ];
    for (path, methods) in want {
        let p = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
        for m in methods {
            assert!(p.get(*m).is_some(), "{m} {path} missing");
        }
    }
    assert_eq!(
        paths.len(),
        want.len(),
        "unexpected extra paths: {:?}",
        paths.keys()
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "ErrorBody",
        "RegisterServiceBody",
        "ServiceDetail",
        "RuleView",
        "Overview",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }

    // OpenAPI requires unique operation ids (validators and code generators reject the
    // document otherwise), and every operation lists the errors the gateway can answer.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_string()),
                "{method} {path}: operationId {id} repeated"
            );
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "401", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
            if path.contains("{id}") {
                assert!(responses.contains_key("404"), "{method} {path} lacks 404");
            }
        }
    }
    for (path, name) in [
        ("/api/v1/stats/timeseries", "metric"),
        ("/api/v1/logs/search", "query"),
    ] {
        let params = paths[path]["get"]["parameters"].as_array().unwrap();
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(p["required"], true, "{path} {name}");
    }
    for path in ["/api/v1/stats/timeseries", "/api/v1/logs/search"] {
        let responses = paths[path]["get"]["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("404"),
            "{path}: an unknown service_id is 404"
        );
    }
}
