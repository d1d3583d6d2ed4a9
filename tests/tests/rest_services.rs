//! REST `/api/v1/services` end to end: the real control plane (embedded store) behind the real
//! gateway, over real sockets. Shapes and codes per seed §1.1/§4 and DESIGN §7/§9.

use myagent_tests::control_plane::control_plane;
use myagent_tests::gateway::{assert_error, client, gateway, json};
use serde_json::{json, Value};

fn seed_register() -> Value {
    json!({
        "name": "weather-agent",
        "description": "Weather information agent",
        "host": "localhost",
        "port": 8081,
        "tags": ["weather", "information"],
        "config": {
            "max_sessions": 100,
            "session_timeout": 1800,
            "auto_restart": true,
            "health_check_enabled": true
        }
    })
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn register_list_get_update_delete_with_seed_shapes() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();

    let (s, b) = json(c.post(gw.api("/services")).json(&seed_register())).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        keys(&b),
        sorted(&["success", "service_id", "message", "endpoint"])
    );
    assert_eq!(b["success"], true);
    assert_eq!(b["message"], "Service registered successfully");
    assert_eq!(b["endpoint"], "ws://localhost:8081");
    let id = b["service_id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());

    // Same name again (another port) → 409 SERVICE_ALREADY_EXISTS; another name on the same
    // host:port → 409 PORT_IN_USE naming the port.
    let mut again = seed_register();
    again["port"] = json!(8082);
    let (s, b) = json(c.post(gw.api("/services")).json(&again)).await;
    assert_error(s, &b, 409, "SERVICE_ALREADY_EXISTS");
    let mut clash = seed_register();
    clash["name"] = json!("other-agent");
    let (s, b) = json(c.post(gw.api("/services")).json(&clash)).await;
    assert_eq!(assert_error(s, &b, 409, "PORT_IN_USE")["port"], 8081);

    let (s, b) = json(c.get(gw.api("/services?tag=weather&limit=10&offset=0"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(keys(&b), sorted(&["services", "total", "page"]));
    assert_eq!(b["total"], 1);
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
            "stats",
        ])
    );
    assert_eq!(item["service_id"], id.as_str());
    assert_eq!(item["status"], "stopped");
    assert_eq!(item["port"], 8081);
    assert_eq!(item["tags"], json!(["weather", "information"]));
    assert!(
        item["started_at"].is_null(),
        "a stopped service has no started_at: {item}"
    );
    let created = item["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert_eq!(
        keys(&item["stats"]),
        sorted(&["total_connections", "active_sessions", "uptime_seconds"])
    );

    let (s, b) = json(c.get(gw.api("/services?status=running"))).await;
    assert_eq!((s, b["total"].clone()), (200, json!(0)), "{b}");

    // Detail by id and by name.
    for key in [id.as_str(), "weather-agent"] {
        let (s, b) = json(c.get(gw.api(&format!("/services/{key}")))).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["service_id"], id.as_str());
        for k in [
            "name",
            "description",
            "host",
            "port",
            "endpoint",
            "status",
            "tags",
            "config",
            "stats",
            "health",
        ] {
            assert!(b.get(k).is_some(), "{k} missing: {b}");
        }
        assert_eq!(b["config"]["max_sessions"], 100);
        assert_eq!(b["config"]["session_timeout"], 1800);
        assert_eq!(b["config"]["auto_restart"], true);
        assert_eq!(b["config"]["health_check_enabled"], true);
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
            assert!(b["stats"][k].is_number(), "stats.{k}: {b}");
        }
        for k in ["status", "last_check", "response_time_ms"] {
            assert!(b["health"].get(k).is_some(), "health.{k}: {b}");
        }
    }

    // PUT config merges.
    let (s, b) = json(
        c.put(gw.api("/services/weather-agent/config"))
            .json(&json!({"max_sessions": 200, "auto_restart": false, "env": {"A": "1"}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["success"], true);
    let (_, b) = json(c.get(gw.api(&format!("/services/{id}")))).await;
    assert_eq!(b["config"]["max_sessions"], 200);
    assert_eq!(b["config"]["auto_restart"], false);
    assert_eq!(
        b["config"]["session_timeout"], 1800,
        "untouched keys keep their value"
    );
    assert_eq!(b["config"]["env"], json!({"A": "1"}));

    let (s, b) = json(c.delete(gw.api("/services/weather-agent"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(keys(&b), sorted(&["success", "message"]));
    assert_eq!(b["success"], true);
    let (s, b) = json(c.get(gw.api(&format!("/services/{id}")))).await;
    assert_error(s, &b, 404, "SERVICE_NOT_FOUND");
}

#[tokio::test]
async fn malformed_input_is_400_with_the_field_and_writes_nothing() {
    let cp = control_plane().spawn().await;
    let gw = gateway()
        .control_plane(cp.grpc_url())
        .arg("--max-body-bytes")
        .arg("65536")
        .spawn()
        .await;
    let c = client();
    let cases: Vec<(String, &str)> = vec![
        (r#"{"name": "a", "port": 8080"#.into(), "body"),
        (r#"{"name": ["a"], "port": 8080}"#.into(), "name"),
        (
            r#"{"name": "a", "port": 8080, "colour": "red"}"#.into(),
            "colour",
        ),
        (r#"{"port": 8080}"#.into(), "name"),
        (r#"{"name": "a", "port": 8080, "name": "b"}"#.into(), "name"),
        (r#"{"name": "", "port": 8080}"#.into(), "name"),
        (r#"{"name": "bad name!", "port": 8080}"#.into(), "name"),
        (r#"{"name": "a", "port": 0}"#.into(), "port"),
        (r#"{"name": "a", "port": 70000}"#.into(), "port"),
        (r#"{"name": "a", "port": -1}"#.into(), "port"),
        (
            r#"{"name": "a", "port": 80, "config": {"max_sessions": 0}}"#.into(),
            "config.max_sessions",
        ),
        (
            r#"{"name": "a", "port": 80, "config": {"max_sessions": "many"}}"#.into(),
            "config.max_sessions",
        ),
        (
            r#"{"name": "a", "port": 80, "config": {"nope": 1}}"#.into(),
            "config.nope",
        ),
        (
            r#"{"name": "a", "port": 80, "tags": [1]}"#.into(),
            "tags[0]",
        ),
    ];
    for (body, field) in &cases {
        let (s, b) = json(
            c.post(gw.api("/services"))
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        let d = assert_error(s, &b, 400, "INVALID_REQUEST");
        assert_eq!(d["field"], *field, "body {body}: {b}");
    }
    let big = format!(
        r#"{{"name": "a", "port": 80, "description": "{}"}}"#,
        "x".repeat(70_000)
    );
    let (s, b) = json(c.post(gw.api("/services")).body(big)).await;
    assert_error(s, &b, 413, "INVALID_REQUEST");

    let (s, b) = json(c.get(gw.api("/services"))).await;
    assert_eq!(s, 200);
    assert_eq!(b["total"], 0, "a rejected request wrote something: {b}");

    // Config updates are validated the same way.
    let (s, _) = json(
        c.post(gw.api("/services"))
            .json(&json!({"name": "ok", "port": 9001})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = json(
        c.put(gw.api("/services/ok/config"))
            .json(&json!({"max_sessions": -5})),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "max_sessions"
    );
    let (s, b) = json(
        c.put(gw.api("/services/ok/config"))
            .json(&json!({"bogus": 1})),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "bogus"
    );
    for bad in ["lots", "0", "-1", "1001"] {
        let (s, b) = json(c.get(gw.api(&format!("/services?limit={bad}")))).await;
        assert_eq!(
            assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
            "limit",
            "limit={bad}"
        );
    }
    // An out-of-range restart grace is refused at once (it used to be accepted and held the
    // request, and the service's lifecycle, for that many seconds).
    let (s, b) = json(
        c.post(gw.api("/services/ok/restart"))
            .json(&json!({"grace_seconds": 100_000})),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "grace_seconds"
    );
    let (s, b) = json(c.get(gw.api("/services/ok"))).await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "stopped", "a rejected restart started it: {b}");
}

#[tokio::test]
async fn unknown_ids_are_404_with_the_right_code() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();
    for req in [
        c.get(gw.api("/services/missing")),
        c.delete(gw.api("/services/missing")),
        c.put(gw.api("/services/missing/config"))
            .json(&json!({"max_sessions": 5})),
        c.post(gw.api("/services/missing/start")),
        c.post(gw.api("/services/missing/stop")),
        c.post(gw.api("/services/missing/restart")),
    ] {
        let (s, b) = json(req).await;
        let d = assert_error(s, &b, 404, "SERVICE_NOT_FOUND");
        assert!(d.get("service_id").is_some(), "{b}");
    }
    let (s, b) = json(c.get(gw.api("/routing/rules/missing"))).await;
    assert_error(s, &b, 404, "RULE_NOT_FOUND");
    let (s, b) = json(c.delete(gw.api("/routing/rules/missing"))).await;
    assert_error(s, &b, 404, "RULE_NOT_FOUND");
    let (s, b) = json(c.get(gw.api("/nothing"))).await;
    assert_error(s, &b, 404, "INVALID_REQUEST");
    // Ids far longer than any real one are still a 404: the echoed id is cut short (echoed
    // whole, the answer outgrew HTTP/2's header limit and came back as a 500).
    let long = "a".repeat(20_000);
    for req in [
        c.get(gw.api(&format!("/services/{long}"))),
        c.get(gw.api(&format!("/connections?service_id={long}"))),
    ] {
        let (s, b) = json(req).await;
        let d = assert_error(s, &b, 404, "SERVICE_NOT_FOUND");
        let echoed = d["service_id"].as_str().unwrap_or_default();
        assert!(echoed.len() < 2048 && echoed.ends_with('…'), "{b}");
    }
    let (s, b) = json(c.get(gw.api(&format!("/routing/rules/{long}")))).await;
    assert_error(s, &b, 404, "RULE_NOT_FOUND");
}
