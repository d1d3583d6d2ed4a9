//! REST health, logs and stats end to end: the real control plane (embedded store, in-process
//! through `bind`/`run`, so the supervisor runs exactly as under `myagent-manager up`) behind
//! the real gateway, managing a real agent process. Shapes per DESIGN §9 and seed §1.4.

use std::path::PathBuf;
use std::time::Duration;

use myagent_tests::control_plane::control_plane;
use myagent_tests::gateway::{assert_error, client, gateway, json};
use myagent_tests::wait;
use serde_json::{json, Value};

fn echo_agent() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agents/echo_agent.py")
        .canonicalize()
        .expect("examples/agents/echo_agent.py")
        .display()
        .to_string()
}

/// A port for the agent: bound on 0 and released; the agent binds it moments later.
fn agent_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn sorted_keys(v: &Value) -> Vec<String> {
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
async fn health_logs_and_stats_of_a_managed_agent() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();

    let body = json!({
        "name": "weather-agent",
        "agent_factory_path": echo_agent(),
        "host": "127.0.0.1",
        "port": agent_port(),
        "tags": ["weather"],
        "config": {"max_sessions": 10, "health_check_interval": 0.2, "health_check_timeout": 0.15}
    });
    let (s, b) = json(c.post(gw.api("/services")).json(&body)).await;
    assert_eq!(s, 201, "{b}");

    // Start converges through the leader's supervisor (the embedded store leads by itself).
    let (s, b) = json(c.post(gw.api("/services/weather-agent/start"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        sorted_keys(&b),
        sorted(&["success", "service_id", "status", "message"])
    );
    assert_eq!(b["status"], "running", "{b}");

    // Health: current, manual check, history (DESIGN §9 shapes).
    let (s, h) = json(c.get(gw.api("/health/services/weather-agent"))).await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(
        sorted_keys(&h),
        sorted(&[
            "service_id",
            "status",
            "last_check",
            "response_time_ms",
            "consecutive_failures",
            "message"
        ])
    );
    assert_eq!(h["status"], "healthy", "{h}");
    let (s, h) = json(c.post(gw.api("/health/services/weather-agent/check"))).await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["status"], "healthy", "{h}");
    let history = wait::until("two health records", Duration::from_secs(10), || {
        let c = c.clone();
        let url = gw.api("/health/services/weather-agent/history?limit=2");
        async move {
            let (s, h) = json(c.get(url)).await;
            (s == 200 && h["history"].as_array().is_some_and(|a| a.len() == 2)).then_some(h)
        }
    })
    .await;
    assert_eq!(
        sorted_keys(&history),
        sorted(&["service_id", "history", "total"])
    );
    let record = &history["history"][0];
    for k in ["timestamp", "status", "response_time_ms", "error"] {
        assert!(
            record.get(k).is_some(),
            "history record lacks {k}: {record}"
        );
    }

    // Logs: the agent's own lines with parsed levels, the level filter, search.
    let logs = wait::until(
        "the agent's start-up lines",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let url = gw.api("/logs/services/weather-agent?level=debug&limit=100");
            async move {
                let (s, l) = json(c.get(url)).await;
                let text = l.to_string();
                (s == 200
                    && text.contains("a debug line")
                    && text.contains("an error line in JSON"))
                .then_some(l)
            }
        },
    )
    .await;
    assert_eq!(sorted_keys(&logs), sorted(&["service_id", "logs", "total"]));
    let line = &logs["logs"][0];
    assert_eq!(
        sorted_keys(line),
        sorted(&["timestamp", "level", "source", "message"])
    );
    let (s, errors) = json(c.get(gw.api("/logs/services/weather-agent?level=error"))).await;
    assert_eq!(s, 200, "{errors}");
    let levels: Vec<&str> = errors["logs"]
        .as_array()
        .expect("logs array")
        .iter()
        .filter_map(|l| l["level"].as_str())
        .collect();
    assert!(
        !levels.is_empty() && levels.iter().all(|l| *l == "error"),
        "{errors}"
    );
    let (s, found) = json(c.get(gw.api("/logs/search?query=DEBUG%20LINE&limit=5"))).await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(sorted_keys(&found), sorted(&["query", "results", "total"]));
    assert_eq!(
        found["results"][0]["service_name"], "weather-agent",
        "{found}"
    );
    let (s, b) = json(c.get(gw.api("/logs/services/weather-agent?since=yesterday"))).await;
    let details = assert_error(s, &b, 400, "INVALID_REQUEST");
    assert_eq!(details["field"], "since", "{b}");

    // Stats: the overview counts the running service; time series validate their input.
    let (s, o) = json(c.get(gw.api("/stats/overview"))).await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(
        sorted_keys(&o),
        sorted(&[
            "services",
            "connections",
            "sessions",
            "performance",
            "resources"
        ])
    );
    assert_eq!(o["services"]["total"], 1, "{o}");
    assert_eq!(o["services"]["running"], 1, "{o}");
    let (s, t) = json(c.get(gw.api(
        "/stats/timeseries?metric=connections&period=1h&interval=5m&service_id=weather-agent",
    )))
    .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        sorted_keys(&t),
        sorted(&["metric", "period", "interval", "data"])
    );
    // Without an interval the control plane picks one that fits the period: the seed's 5m for
    // 1h, and something shorter for a period under 5m (was a 400 for a `5m` nobody asked for).
    let (s, t) = json(c.get(gw.api("/stats/timeseries?metric=connections"))).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (&t["period"], &t["interval"]),
        (&json!("1h"), &json!("5m")),
        "{t}"
    );
    let (s, t) = json(c.get(gw.api("/stats/timeseries?metric=connections&period=1m"))).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["period"], "1m", "{t}");
    let interval = t["interval"].as_str().unwrap_or_default();
    // In seconds: anything of a minute or more would render as `Nm` and not fit.
    assert!(interval.ends_with('s'), "an interval inside 1m: {t}");
    let (s, b) = json(c.get(gw.api("/stats/timeseries?metric=bogus&period=1h&interval=5m"))).await;
    let details = assert_error(s, &b, 400, "INVALID_REQUEST");
    assert_eq!(details["field"], "metric", "{b}");

    let (s, b) = json(c.post(gw.api("/services/weather-agent/stop"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "stopped", "{b}");
    let (s, b) = json(c.get(gw.api("/health/services/no-such-service"))).await;
    assert_error(s, &b, 404, "SERVICE_NOT_FOUND");
}
