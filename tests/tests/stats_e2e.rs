//! Statistics from known traffic with nothing faked: the real control plane (in-process on the
//! embedded store, and the real binary on a real etcd), two real proxies, a managed Python echo
//! agent (`examples/agents/echo_agent.py`) and real WebSocket clients. The overview, the
//! service's stats and the time series must report exactly what the clients did:
//!
//! 1. `c1` connects through proxy 1 and exchanges M messages (it stays open).
//! 2. A burst of B connections through proxy 2 (which reports only every second) resumes
//!    c1's session, exchanges M messages each and closes again before proxy 2 reports (a
//!    resumed session is not reported ahead of the tick, as a new one is): the control plane
//!    never sees them open side by side in its records, yet the peak must be 1 + B.
//! 3. `c2`, `c3` connect through proxy 1 and exchange M messages each (3 open at once).
//! 4. The agent is SIGKILLed with c1..c3 attached. `error_count` counts what the proxies
//!    report as errors: an upstream that ends without a normal close counts once per client
//!    connection attached to it (plus upstream connect failures and client protocol errors,
//!    none here) — so exactly 3. Without `auto_restart` the service ends in `error`.
//!
//! Sessions (c1's, c2's, c3's) time out 1 s after their last connection, so all 3 complete.

use std::time::{Duration, Instant};

use futures::StreamExt;
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, unique_prefix, ControlPlane};
use myagent_tests::etcd::Etcd;
use myagent_tests::gateway::{client, gateway, json, Gateway};
use myagent_tests::proxy::{
    connect_routed, next_json, read_until_close, send_text, spawn_proxy, Client, ProxyHarness,
};
use myagent_tests::wait;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
/// Messages each client sends (each one echoed back).
const M: u64 = 5;
/// Connections of the short burst through proxy 2.
const B: u64 = 3;
/// All connections: c1, the burst, c2 and c3.
const TOTAL: u64 = 1 + B + 2;
/// Connections attached to the agent when it is killed.
const CRASHED: u64 = 3;
/// Sessions: c1's (shared by the burst), c2's and c3's.
const SESSIONS: u64 = 3;
const NAME: &str = "stats-e2e";

fn echo_agent_path() -> String {
    myagent_tests::agents::example_agent_path()
        .display()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Stack {
    gw: Gateway,
    http: reqwest::Client,
}

impl Stack {
    async fn get(&self, path: &str) -> Value {
        let (status, body) = json(self.http.get(self.gw.api(path))).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn overview(&self) -> Value {
        self.get("/stats/overview").await
    }

    async fn service_stats(&self) -> Value {
        self.get(&format!("/services/{NAME}")).await["stats"].clone()
    }

    /// The points of a time series of the service (`Some(id)`) or of all services.
    async fn series(&self, metric: &str, interval: &str, service_id: Option<&str>) -> Vec<f64> {
        let mut path = format!("/stats/timeseries?metric={metric}&period=5m&interval={interval}");
        if let Some(id) = service_id {
            path.push_str(&format!("&service_id={id}"));
        }
        let body = self.get(&path).await;
        assert_eq!(body["metric"], metric, "{body}");
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("no data array: {body}"))
            .iter()
            .map(|p| p["value"].as_f64().expect("numeric value"))
            .collect()
    }

    /// Polls the overview until `check` holds; returns it.
    async fn overview_until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.overview().await;
            if check(&o) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last overview: {o}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Connects through `proxy` with `query` and exchanges M messages; returns the client and its
/// session id.
async fn open_and_talk(proxy: &ProxyHarness, query: &str, label: &str) -> (Client, String) {
    let (mut ws, routed) = connect_routed(&proxy.ws_url(query)).await;
    assert_eq!(routed["target_service"], NAME, "{routed}");
    let session = routed["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    for i in 0..M {
        send_text(&mut ws, &json!({"from": label, "n": i}).to_string()).await;
        let echoed = next_json(&mut ws).await;
        assert_eq!(echoed["original_message"]["n"], i, "{echoed}");
    }
    (ws, session)
}

/// A normal close by the client, read through to the end of the stream.
async fn close(mut ws: Client) {
    ws.close(None).await.expect("send close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn scenario(cp: &ControlPlane) {
    let stack = Stack {
        gw: gateway().control_plane(cp.grpc_url()).spawn().await,
        http: client(),
    };
    let p1 = spawn_proxy(&[cp.grpc_url()], |c| c.node_id = Some("stats-p1".into())).await;
    // Reports only every second: the whole burst happens between two of its reports.
    let p2 = spawn_proxy(&[cp.grpc_url()], |c| {
        c.node_id = Some("stats-p2".into());
        c.report_interval = Duration::from_secs(1);
    })
    .await;

    let (status, created) = json(stack.http.post(stack.gw.api("/services")).json(&json!({
        "name": NAME,
        "agent_factory_path": echo_agent_path(),
        "host": "127.0.0.1",
        "port": free_port(),
        "config": {"session_timeout": 1, "auto_restart": false}
    })))
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["service_id"]
        .as_str()
        .expect("service_id")
        .to_string();
    let (status, started) = json(
        stack
            .http
            .post(stack.gw.api(&format!("/services/{NAME}/start"))),
    )
    .await;
    assert_eq!(
        (status, &started["status"]),
        (200, &json!("running")),
        "{started}"
    );

    // Both proxies hold the config that routes to the running service.
    let registry = cp.registry().await;
    let svc = wait::until("both proxies in sync", WAIT, || {
        let mut registry = registry.clone();
        async move {
            let s = registry
                .get_service(pb::GetServiceRequest {
                    service: NAME.into(),
                })
                .await
                .ok()?
                .into_inner();
            let sync = s.sync.as_ref()?;
            (sync.in_sync && sync.proxies.len() == 2).then_some(s)
        }
    })
    .await;
    let pid = svc.runtime.as_ref().expect("runtime").pid;
    assert!(pid > 0, "{svc:?}");

    // Nothing yet.
    let st = stack.service_stats().await;
    assert_eq!(
        (u(&st["total_connections"]), u(&st["peak_connections"])),
        (0, 0),
        "{st}"
    );

    // 1. c1 stays open through proxy 1; wait until the cluster view has it.
    let by_name = format!("service={NAME}");
    let (c1, s1) = open_and_talk(&p1, &by_name, "c1").await;
    stack
        .overview_until("c1 active", |o| u(&o["connections"]["active"]) == 1)
        .await;

    // 2. The burst through proxy 2: open B at once, talk, close them all.
    let mut burst = Vec::new();
    for i in 0..B {
        let (ws, session) = open_and_talk(&p2, &format!("session_id={s1}"), &format!("b{i}")).await;
        assert_eq!(session, s1, "the burst resumes c1's session");
        burst.push(ws);
    }
    for ws in burst {
        close(ws).await;
    }
    let o = stack
        .overview_until("the burst counted", |o| {
            u(&o["connections"]["total"]) == 1 + B
                && u(&o["connections"]["active"]) == 1
                && u(&o["connections"]["peak_today"]) == 1 + B
        })
        .await;
    assert_eq!(u(&o["sessions"]["total_today"]), 1, "{o}");
    let st = stack.service_stats().await;
    assert_eq!(
        (
            u(&st["total_connections"]),
            u(&st["active_connections"]),
            u(&st["peak_connections"])
        ),
        (1 + B, 1, 1 + B),
        "the burst on proxy 2 plus c1 on proxy 1 were open at once: {st}"
    );

    // 3. c2 and c3: three open at once (below the burst's peak).
    let (c2, _) = open_and_talk(&p1, &by_name, "c2").await;
    let (c3, _) = open_and_talk(&p1, &by_name, "c3").await;
    let traffic_started = Instant::now();
    // A sample has seen the three, and the counters have every message.
    wait::until("a sample with 3 connections", WAIT, || {
        let stack = &stack;
        let id = id.clone();
        async move {
            let points = stack.series("connections", "1s", Some(&id)).await;
            points.contains(&(CRASHED as f64)).then_some(())
        }
    })
    .await;
    let o = stack
        .overview_until("every message counted", |o| {
            f(&o["performance"]["throughput_per_minute"]) == (TOTAL * M) as f64
        })
        .await;
    assert_eq!(
        (
            u(&o["connections"]["total"]),
            u(&o["connections"]["active"]),
            u(&o["connections"]["peak_today"])
        ),
        (TOTAL, CRASHED, 1 + B),
        "{o}"
    );
    assert_eq!(
        (u(&o["services"]["total"]), u(&o["services"]["running"])),
        (1, 1),
        "{o}"
    );
    assert_eq!(
        o["sessions"],
        json!({"total_today": SESSIONS, "active": SESSIONS, "completed_today": 0}),
        "{o}"
    );
    let rt = f(&o["performance"]["avg_response_time_ms"]);
    assert!(rt > 0.0 && rt < 5000.0, "response time {rt}: {o}");
    assert_eq!(f(&o["performance"]["error_rate"]), 0.0, "{o}");
    // The supervisor measures the process tree every few seconds; wait for a sample of it.
    stack
        .overview_until("the agent's memory measured", |o| {
            f(&o["resources"]["total_memory_mb"]) > 1.0
        })
        .await;
    wait::until("a sample of the agent's memory", WAIT, || {
        let stack = &stack;
        let id = id.clone();
        async move {
            let mem = stack.series("memory_mb", "1s", Some(&id)).await;
            mem.iter().any(|m| *m > 1.0).then_some(())
        }
    })
    .await;

    // 4. The agent dies with c1..c3 attached: each client is told and closed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the agent");
    for mut ws in [c1, c2, c3] {
        let (code, _reason, events) = read_until_close(&mut ws).await;
        assert_eq!(code, 1011, "{events:?}");
        assert!(
            events.iter().any(|e| e["event"] == "error"),
            "an error event before the close: {events:?}"
        );
    }

    let o = stack
        .overview_until("the crash counted and every session completed", |o| {
            u(&o["sessions"]["completed_today"]) == SESSIONS
                && u(&o["services"]["error"]) == 1
                && f(&o["performance"]["error_rate"]) == CRASHED as f64 / TOTAL as f64
                && u(&o["connections"]["active"]) == 0
                // Live counts come from the replica's mirror of the store, a watch event
                // behind the totals read from the store itself.
                && u(&o["sessions"]["active"]) == 0
        })
        .await;
    assert_eq!(
        o["services"],
        json!({"total": 1, "running": 0, "stopped": 0, "error": 1}),
        "{o}"
    );
    assert_eq!(
        o["connections"],
        json!({"total": TOTAL, "active": 0, "peak_today": 1 + B}),
        "{o}"
    );
    assert_eq!(
        o["sessions"],
        json!({"total_today": SESSIONS, "active": 0, "completed_today": SESSIONS}),
        "{o}"
    );
    assert_eq!(
        f(&o["performance"]["error_rate"]),
        CRASHED as f64 / TOTAL as f64,
        "{o}"
    );
    if traffic_started.elapsed() < Duration::from_secs(50) {
        // Every message was sent less than a minute ago.
        assert_eq!(
            f(&o["performance"]["throughput_per_minute"]),
            (TOTAL * M) as f64,
            "{o}"
        );
    }
    assert_eq!(
        o["resources"],
        json!({"total_memory_mb": 0.0, "total_cpu_percent": 0.0}),
        "a dead process uses nothing: {o}"
    );

    let svc = stack.get(&format!("/services/{id}")).await;
    assert_eq!(svc["status"], "error", "{svc}");
    let st = &svc["stats"];
    assert_eq!(
        (
            u(&st["total_connections"]),
            u(&st["active_connections"]),
            u(&st["peak_connections"])
        ),
        (TOTAL, 0, 1 + B),
        "{st}"
    );
    assert_eq!(
        (
            u(&st["total_sessions"]),
            u(&st["active_sessions"]),
            u(&st["completed_sessions"])
        ),
        (SESSIONS, 0, SESSIONS),
        "{st}"
    );
    assert_eq!(u(&st["error_count"]), CRASHED, "{st}");
    assert_eq!(f(&st["error_rate"]), CRASHED as f64 / TOTAL as f64, "{st}");
    assert!(
        f(&st["avg_session_duration"]) >= 1.0,
        "sessions last at least their timeout: {st}"
    );
    assert_eq!(
        (f(&st["memory_usage_mb"]), f(&st["cpu_usage_percent"])),
        (0.0, 0.0),
        "{st}"
    );

    // Time series: counters summed per interval, for the service and for all services.
    let sample_sees_all = || async {
        let msgs: f64 = stack.series("messages", "1s", None).await.iter().sum();
        let errs: f64 = stack.series("errors", "1m", None).await.iter().sum();
        let conns = stack.series("connections", "1s", Some(&id)).await;
        (msgs == (2 * TOTAL * M) as f64 && errs == CRASHED as f64 && conns.last() == Some(&0.0))
            .then_some(())
    };
    wait::until(
        "samples with all the traffic and the crash",
        WAIT,
        sample_sees_all,
    )
    .await;
    for scope in [Some(id.as_str()), None] {
        let msgs = stack.series("messages", "1s", scope).await;
        assert_eq!(
            msgs.iter().sum::<f64>(),
            (2 * TOTAL * M) as f64,
            "messages both ways of {scope:?}: {msgs:?}"
        );
        let per_minute = stack.series("messages", "1m", scope).await;
        assert_eq!(
            per_minute.iter().sum::<f64>(),
            (2 * TOTAL * M) as f64,
            "{per_minute:?}"
        );
        let errors = stack.series("errors", "1s", scope).await;
        assert_eq!(
            errors.iter().sum::<f64>(),
            CRASHED as f64,
            "errors of {scope:?}: {errors:?}"
        );
        let conns = stack.series("connections", "1s", scope).await;
        assert!(
            conns.contains(&(CRASHED as f64)) && conns.last() == Some(&0.0),
            "connections of {scope:?}: {conns:?}"
        );
        // (The burst is normally never sampled as open; if proxy 2's report tick fell inside
        // it, a sample may have seen it, never more than the peak.)
        assert!(
            conns.iter().all(|c| *c <= (1 + B) as f64),
            "never above the peak: {conns:?}"
        );
        let rt = stack.series("response_time_ms", "1m", scope).await;
        assert!(
            !rt.is_empty() && rt.iter().all(|v| *v > 0.0),
            "response times of {scope:?}: {rt:?}"
        );
    }
    let mem = stack.series("memory_mb", "1s", Some(&id)).await;
    assert!(
        mem.iter().any(|m| *m > 1.0) && mem.last() == Some(&0.0),
        "memory while running, none after the crash: {mem:?}"
    );

    p1.stop().await;
    p2.stop().await;
    stack.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_from_real_traffic_on_the_embedded_store() {
    let cp = control_plane()
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    scenario(&cp).await;
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_from_real_traffic_on_etcd_with_the_binary() {
    let etcd = Etcd::shared();
    let cp = control_plane()
        .etcd(&etcd, &unique_prefix("stats-e2e"))
        .arg("--stats-interval")
        .arg("1s")
        .spawn_binary()
        .await;
    scenario(&cp).await;
    cp.shutdown().await;
}

/// Two replicas on one etcd, proxy 1 on replica A only, proxy 2 (reporting every second) on
/// replica B only: a burst on proxy 2 while c1 is open on proxy 1 is a peak of 1 + B, and both
/// replicas say so — replica B adds what it sees open on proxy 1 (through etcd) to proxy 2's
/// own peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peaks_across_proxies_on_two_replicas() {
    let etcd = Etcd::shared();
    let prefix = unique_prefix("stats-peaks");
    let cp_a = control_plane()
        .etcd(&etcd, &prefix)
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    let cp_b = control_plane()
        .etcd(&etcd, &prefix)
        .arg("--stats-interval")
        .arg("1s")
        .spawn()
        .await;
    let agent = myagent_tests::agents::echo_agent().spawn().await;
    let mut registry = cp_a.registry().await;
    registry
        .register_service(pb::RegisterServiceRequest {
            name: NAME.into(),
            host: "127.0.0.1".into(),
            port: u32::from(agent.port()),
            ..Default::default()
        })
        .await
        .expect("register");
    let started = registry
        .start_service(pb::StartServiceRequest {
            service: NAME.into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.status, "running");
    let p1 = spawn_proxy(&[cp_a.grpc_url()], |c| c.node_id = Some("peaks-p1".into())).await;
    let p2 = spawn_proxy(&[cp_b.grpc_url()], |c| {
        c.node_id = Some("peaks-p2".into());
        c.report_interval = Duration::from_secs(1);
    })
    .await;
    wait::until("both proxies in sync", WAIT, || {
        let mut registry = registry.clone();
        async move {
            let s = registry
                .get_service(pb::GetServiceRequest {
                    service: NAME.into(),
                })
                .await
                .ok()?
                .into_inner();
            let sync = s.sync?;
            (sync.in_sync && sync.proxies.len() == 2).then_some(())
        }
    })
    .await;

    let replicas = [
        pb::stats_client::StatsClient::new(cp_a.channel().await),
        pb::stats_client::StatsClient::new(cp_b.channel().await),
    ];
    let overview_until = |what: &'static str, check: fn(&pb::ConnectionCounts) -> bool| {
        let replicas = replicas.clone();
        async move {
            for (i, stats) in replicas.into_iter().enumerate() {
                wait::until(&format!("{what} on replica {i}"), WAIT, || {
                    let mut stats = stats.clone();
                    async move {
                        let o = stats
                            .get_overview(pb::GetOverviewRequest {})
                            .await
                            .ok()?
                            .into_inner();
                        let c = o.connections?;
                        check(&c).then_some(c)
                    }
                })
                .await;
            }
        }
    };

    let (c1, s1) = open_and_talk(&p1, &format!("service={NAME}"), "c1").await;
    // Replica B sees c1 (written by replica A) before the burst.
    overview_until("c1 active", |c| c.active == 1).await;
    let mut burst = Vec::new();
    for i in 0..B {
        let (ws, _) = open_and_talk(&p2, &format!("session_id={s1}"), &format!("b{i}")).await;
        burst.push(ws);
    }
    for ws in burst {
        close(ws).await;
    }
    overview_until("the burst's peak", |c| {
        (c.total, c.active, c.peak_today) == (1 + B, 1, 1 + B)
    })
    .await;
    for cp in [&cp_a, &cp_b] {
        let st = cp
            .registry()
            .await
            .get_service(pb::GetServiceRequest {
                service: NAME.into(),
            })
            .await
            .expect("get service")
            .into_inner()
            .stats
            .expect("stats");
        assert_eq!(
            (
                st.total_connections,
                st.active_connections,
                st.peak_connections
            ),
            (1 + B, 1, 1 + B),
            "{st:?}"
        );
    }
    close(c1).await;
    overview_until("c1 closed", |c| c.active == 0 && c.peak_today == 1 + B).await;

    p1.stop().await;
    p2.stop().await;
    cp_b.shutdown().await;
    cp_a.shutdown().await;
}
