//! Routing decisions of DESIGN §5 through a real proxy with a fake control plane: every path of
//! the decision order, every operator, every strategy, capacity and bad parameters.

use std::time::Duration;

use futures::SinkExt;
use myagent_proto::v1 as pb;
use myagent_tests::agents::{echo_agent, EchoAgent};
use myagent_tests::proxy::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

struct Setup {
    _agents: Vec<EchoAgent>,
    cp: FakeControlPlane,
    proxy: ProxyHarness,
    services: Vec<pb::ServiceSnapshot>,
}

/// Agents `a`, `b` (tag t, a also fast), `c` (tag other) and `down` (not routable).
async fn setup(rules: Vec<pb::RoutingRule>) -> Setup {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let c = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut down = service("id-down", "down", c.addr, &["t"]);
    down.routable = false;
    down.status = "stopped".into();
    let services = vec![
        service("id-a", "a", a.addr, &["t", "fast"]),
        service("id-b", "b", b.addr, &["t"]),
        service("id-c", "c", c.addr, &["other"]),
        down,
    ];
    cp.push(full(1, services.clone(), rules));
    proxy.wait_version(1).await;
    Setup {
        _agents: vec![a, b, c],
        cp,
        proxy,
        services,
    }
}

/// Connects, returns `connection_routed` data, closes.
async fn route(p: &ProxyHarness, query: &str) -> Value {
    route_h(p, query, &[]).await
}

async fn route_h(p: &ProxyHarness, query: &str, headers: &[(&str, &str)]) -> Value {
    let mut ws = connect_with(&p.ws_url(query), headers).await;
    let ev = next_json(&mut ws).await;
    assert_eq!(ev["event"], "connection_routed", "{query}: {ev}");
    let _ = ws.send(Message::Close(None)).await;
    ev["data"].clone()
}

async fn target(p: &ProxyHarness, query: &str) -> String {
    route(p, query).await["target_service"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Connects expecting an error event then a close: (code, recoverable, close code).
async fn route_err(p: &ProxyHarness, query: &str) -> (String, bool, u16) {
    let mut ws = connect(&p.ws_url(query)).await;
    let (close, _, events) = read_until_close(&mut ws).await;
    let ev = events
        .first()
        .unwrap_or_else(|| panic!("{query}: no error event"));
    assert_eq!(ev["event"], "error", "{ev}");
    assert!(ev["data"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    (
        ev["data"]["code"].as_str().unwrap().to_string(),
        ev["data"]["recoverable"].as_bool().unwrap(),
        close,
    )
}

#[tokio::test]
async fn decision_order_service_rules_tag_and_errors() {
    let vip = rule(
        "vip",
        10,
        vec![cond("header.X-User-Tier", "equals", "vip")],
        "least_connections",
        &["fast"],
    );
    // Matches everything but has no candidate: must be skipped.
    let empty = rule("empty", 100, vec![], "round_robin", &["nonexistent"]);
    let mut off = rule("off", 1000, vec![], "round_robin", &["other"]);
    off.enabled = false;
    let s = setup(vec![vip, empty, off]).await;
    let p = &s.proxy;

    let d = route(p, "service=b").await;
    assert_eq!(
        (d["target_service"].as_str(), d["routing_strategy"].as_str()),
        (Some("b"), Some("direct"))
    );
    // Service ids work as well as names.
    assert_eq!(target(p, "service=id-c").await, "c");

    let d = route_h(p, "tag=t", &[("x-user-tier", "vip")]).await;
    assert_eq!(
        (d["target_service"].as_str(), d["routing_strategy"].as_str()),
        (Some("a"), Some("least_connections"))
    );

    // No rule matches → tag candidates (a, b), default least_connections.
    for _ in 0..4 {
        let d = route(p, "tag=t").await;
        assert!(
            ["a", "b"].contains(&d["target_service"].as_str().unwrap()),
            "{d}"
        );
        assert_eq!(d["routing_strategy"], "least_connections");
    }
    assert_eq!(target(p, "tag=other").await, "c");

    // An unknown service is the seed's SERVICE_NOT_FOUND; a known one that cannot take the
    // connection (stopped) is ROUTING_FAILED (DESIGN §9).
    assert_eq!(
        route_err(p, "service=missing").await,
        ("SERVICE_NOT_FOUND".into(), false, 1013)
    );
    assert_eq!(
        route_err(p, "service=down").await,
        ("ROUTING_FAILED".into(), false, 1013)
    );
    assert_eq!(route_err(p, "tag=nothing").await.0, "ROUTING_FAILED");

    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("myagent_proxy_routing_failures_total{code=\"ROUTING_FAILED\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("myagent_proxy_routing_failures_total{code=\"SERVICE_NOT_FOUND\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rule_priority_and_rule_changes_apply_live() {
    let low = rule(
        "low",
        1,
        vec![cond("query.plan", "equals", "pro")],
        "round_robin",
        &["other"],
    );
    let high = rule(
        "high",
        5,
        vec![cond("query.plan", "equals", "pro")],
        "round_robin",
        &["fast"],
    );
    let s = setup(vec![low.clone(), high.clone()]).await;
    assert_eq!(target(&s.proxy, "plan=pro").await, "a");
    // Swap priorities with a delta: applied without restarting the proxy.
    let mut high2 = high.clone();
    high2.priority = 0;
    s.cp.push(pb::ConfigPush {
        version: 2,
        nonce: "d2".into(),
        base_version: 1,
        rules: vec![high2],
        ..Default::default()
    });
    s.cp.wait_ack(2).await;
    assert_eq!(target(&s.proxy, "plan=pro").await, "c");
    // Remove the winning rule.
    s.cp.push(pb::ConfigPush {
        version: 3,
        nonce: "d3".into(),
        base_version: 2,
        removed_rules: vec!["low".into()],
        ..Default::default()
    });
    s.cp.wait_ack(3).await;
    assert_eq!(target(&s.proxy, "plan=pro").await, "a");
}

/// (condition, query, headers, whether the rule must match)
type Case<'a> = (pb::Condition, &'a str, Vec<(&'a str, &'a str)>, bool);

#[tokio::test]
async fn every_operator_and_field() {
    let cases: Vec<Case<'_>> = vec![
        (
            cond("header.X-Tier", "equals", "vip"),
            "",
            vec![("x-tier", "vip")],
            true,
        ),
        (
            cond("header.x-tier", "equals", "vip"),
            "",
            vec![("X-TIER", "basic")],
            false,
        ),
        (
            cond("header.x-tier", "not_equals", "vip"),
            "",
            vec![("x-tier", "basic")],
            true,
        ),
        (
            cond("header.x-tier", "not_equals", "vip"),
            "",
            vec![("x-tier", "vip")],
            false,
        ),
        (
            cond("query.region", "contains", "eu"),
            "region=west-eu-1",
            vec![],
            true,
        ),
        (
            cond("query.region", "contains", "eu"),
            "region=us",
            vec![],
            false,
        ),
        (
            cond("query.region", "starts_with", "eu-"),
            "region=eu-west",
            vec![],
            true,
        ),
        (
            cond("query.region", "ends_with", "-west"),
            "region=eu-west",
            vec![],
            true,
        ),
        (
            cond("query.region", "ends_with", "-east"),
            "region=eu-west",
            vec![],
            false,
        ),
        (cond("query.v", "regex", "^v[0-9]+$"), "v=v42", vec![], true),
        (
            cond("query.v", "regex", "^v[0-9]+$"),
            "v=x42",
            vec![],
            false,
        ),
        (cond("query.lang", "in", "fr,de"), "lang=de", vec![], true),
        (cond("query.lang", "in", "fr,de"), "lang=en", vec![], false),
        (
            cond("query.lang", "not_in", "fr,de"),
            "lang=en",
            vec![],
            true,
        ),
        (
            cond("query.lang", "not_in", "fr,de"),
            "lang=fr",
            vec![],
            false,
        ),
        (
            cond("header.x-debug", "exists", ""),
            "",
            vec![("x-debug", "1")],
            true,
        ),
        (cond("header.x-debug", "exists", ""), "", vec![], false),
        (cond("query.debug", "not_exists", ""), "", vec![], true),
        (
            cond("query.debug", "not_exists", ""),
            "debug=1",
            vec![],
            false,
        ),
        (cond("client_ip", "cidr", "127.0.0.0/8"), "", vec![], true),
        (
            cond("client_ip", "cidr", "10.0.0.0/8,192.168.0.0/16"),
            "",
            vec![],
            false,
        ),
        (cond("client_ip", "equals", "127.0.0.1"), "", vec![], true),
        (cond("path", "equals", "/ws"), "", vec![], true),
        (cond("path", "starts_with", "/other"), "", vec![], false),
    ];
    let rules: Vec<pb::RoutingRule> = cases
        .iter()
        .enumerate()
        .map(|(i, (c, ..))| {
            let mut r = rule(
                &format!("r{i}"),
                0,
                vec![c.clone(), cond("query.case", "equals", &i.to_string())],
                "round_robin",
                &["other"],
            );
            r.priority = i as i32;
            r
        })
        .collect();
    let s = setup(rules).await;
    for (i, (c, q, headers, expect)) in cases.iter().enumerate() {
        let query = if q.is_empty() {
            format!("case={i}")
        } else {
            format!("case={i}&{q}")
        };
        let d = route_h(&s.proxy, &query, headers).await;
        // The rules use round_robin; the fallback (no rule matched) uses least_connections.
        let matched = d["routing_strategy"] == "round_robin";
        if matched {
            assert_eq!(d["target_service"], "c");
        }
        assert_eq!(
            matched, *expect,
            "case {i}: {} {} {:?} with query {q:?} headers {headers:?}: {d}",
            c.field, c.operator, c.value
        );
    }
}

#[tokio::test]
async fn strategies_round_robin_weighted_random_hash_least_connections() {
    let a = echo_agent().spawn().await;
    let b = echo_agent().spawn().await;
    let c = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut sa = service("id-a", "a", a.addr, &["pool"]);
    let mut sb = service("id-b", "b", b.addr, &["pool"]);
    let sc = service("id-c", "c", c.addr, &["pool"]);
    sa.weight = 1;
    sb.weight = 20;
    let mut hash = rule(
        "hash",
        5,
        vec![cond("header.x-user", "exists", "")],
        "consistent_hash",
        &["pool"],
    );
    hash.hash_key = "header.x-user".into();
    let weighted = rule(
        "weighted",
        4,
        vec![cond("query.w", "exists", "")],
        "weighted",
        &[],
    );
    cp.push(full(1, vec![sa, sb, sc], vec![hash, weighted]));
    proxy.wait_version(1).await;

    // round_robin via routing_hint: cycles through the sorted candidates.
    let mut seq = Vec::new();
    for _ in 0..6 {
        let d = route(&proxy, "tag=pool&routing_hint=round_robin").await;
        assert_eq!(d["routing_strategy"], "round_robin");
        seq.push(d["target_service"].as_str().unwrap().to_string());
    }
    assert_eq!(seq[..3], seq[3..], "{seq:?}");
    let mut uniq = seq[..3].to_vec();
    uniq.sort();
    assert_eq!(uniq, vec!["a", "b", "c"]);

    // random: every candidate shows up.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(target(&proxy, "tag=pool&routing_hint=random").await);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // weighted (rule): b has 20 of 22 weight units.
    let mut bs = 0;
    for _ in 0..40 {
        if target(&proxy, "w=1").await == "b" {
            bs += 1;
        }
    }
    assert!(bs >= 28, "b got {bs}/40");

    // consistent_hash on a header: a user always lands on the same service.
    for user in ["alice", "bob", "carol", "dave"] {
        let first = route_h(&proxy, "tag=pool", &[("x-user", user)]).await;
        assert_eq!(first["routing_strategy"], "consistent_hash");
        for _ in 0..3 {
            let again = route_h(&proxy, "tag=pool", &[("x-user", user)]).await;
            assert_eq!(again["target_service"], first["target_service"], "{user}");
        }
    }

    // least_connections counts this proxy's open connections…
    let (_held_a, d1) = connect_routed(&proxy.ws_url("service=a")).await;
    let (_held_b, d2) = connect_routed(&proxy.ws_url("service=b")).await;
    assert_eq!(
        (d1["target_service"].as_str(), d2["target_service"].as_str()),
        (Some("a"), Some("b"))
    );
    for _ in 0..3 {
        myagent_tests::assert_eventually!(
            Duration::from_secs(5),
            proxy.handle.active_connections() == 2,
            "closed ones gone"
        );
        assert_eq!(
            target(&proxy, "tag=pool&routing_hint=least_connections").await,
            "c"
        );
    }
    // …and the cluster-wide counts from LoadUpdate.
    cp.send(pb::control_message::Kind::Load(pb::LoadUpdate {
        services: vec![
            pb::ServiceLoad {
                service_id: "id-a".into(),
                active_connections: 50,
                active_sessions: 0,
            },
            pb::ServiceLoad {
                service_id: "id-b".into(),
                active_connections: 2,
                active_sessions: 0,
            },
            pb::ServiceLoad {
                service_id: "id-c".into(),
                active_connections: 90,
                active_sessions: 0,
            },
        ],
    }));
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        target(&proxy, "tag=pool").await == "b",
        "load update applied"
    );
}

#[tokio::test]
async fn capacity_gives_insufficient_resources() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut s = service("id-a", "a", a.addr, &["t"]);
    s.max_sessions = 1;
    cp.push(full(1, vec![s], vec![]));
    proxy.wait_version(1).await;
    let (_held, _) = connect_routed(&proxy.ws_url("service=a")).await;
    assert_eq!(
        route_err(&proxy, "service=a").await,
        ("INSUFFICIENT_RESOURCES".into(), true, 1013)
    );
    assert_eq!(route_err(&proxy, "tag=t").await.0, "INSUFFICIENT_RESOURCES");
}

/// Connections arriving together: each routing decision claims its slot before connecting, so
/// exactly `max_sessions` get through and the rest get INSUFFICIENT_RESOURCES (all of them
/// used to pass the check while none was counted yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_holds_for_connections_arriving_together() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |_| {}).await;
    let mut s = service("id-a", "a", a.addr, &["t"]);
    s.max_sessions = 3;
    cp.push(full(1, vec![s], vec![]));
    proxy.wait_version(1).await;
    let url = proxy.ws_url("service=a");
    let attempts = (0..12).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut ws = connect(&url).await;
            let ev = next_json(&mut ws).await;
            (ev, ws)
        })
    });
    let mut routed = 0;
    let mut refused = 0;
    let mut held = Vec::new();
    for t in attempts.collect::<Vec<_>>() {
        let (ev, ws) = t.await.unwrap();
        match (ev["event"].as_str(), ev["data"]["code"].as_str()) {
            (Some("connection_routed"), _) => routed += 1,
            (Some("error"), Some("INSUFFICIENT_RESOURCES")) => refused += 1,
            other => panic!("unexpected first frame {other:?}: {ev}"),
        }
        held.push(ws);
    }
    assert_eq!((routed, refused), (3, 9));
}

#[tokio::test]
async fn sessions_resume_locally_via_updates_and_via_resolve() {
    let s = setup(vec![]).await;
    let p = &s.proxy;
    let d = route(p, "tag=t").await;
    let sid = d["session_id"].as_str().unwrap().to_string();
    let first = d["target_service"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let again = route(p, &format!("tag=t&session_id={sid}")).await;
        assert_eq!(again["session_id"], sid.as_str());
        assert_eq!(again["target_service"], first.as_str());
        assert_eq!(again["routing_strategy"], "session_affinity");
    }
    // A binding streamed by the control plane (session created on another proxy).
    s.cp.send(pb::control_message::Kind::Sessions(pb::SessionUpdate {
        upserted: vec![pb::SessionBinding {
            session_id: "from-elsewhere".into(),
            service_id: "id-c".into(),
            state: "idle".into(),
            ..Default::default()
        }],
        removed: vec![],
    }));
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        route(p, "session_id=from-elsewhere").await["target_service"] == "c",
        "session update applied"
    );
    // Unknown locally: resolved with the ResolveSession call.
    s.cp.set_session("resolved-one", "id-b");
    let d = route(p, "session_id=resolved-one").await;
    assert_eq!(
        (d["target_service"].as_str(), d["session_id"].as_str()),
        (Some("b"), Some("resolved-one"))
    );
    // Unknown everywhere: a fresh session.
    let d = route(p, "tag=t&session_id=never-heard-of").await;
    assert_ne!(d["session_id"], "never-heard-of");
    // Completed sessions are forgotten.
    s.cp.send(pb::control_message::Kind::Sessions(pb::SessionUpdate {
        upserted: vec![],
        removed: vec!["from-elsewhere".into()],
    }));
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        route(p, "tag=t&session_id=from-elsewhere").await["session_id"] != "from-elsewhere",
        "session removal applied"
    );
    let _ = &s.services;
}

#[tokio::test]
async fn bad_requests_get_http_errors_before_the_upgrade() {
    let s = setup(vec![]).await;
    let addr = s.proxy.ws_addr;
    let upgrade = |q: &str| {
        format!(
            "GET /ws{q} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let (code, body) = raw_http(addr, &upgrade("?tag=t&routing_hint=fastest")).await;
    assert_eq!(code, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_REQUEST");
    assert_eq!(v["error"]["details"]["field"], "routing_hint");
    let (code, body) = raw_http(addr, &upgrade("?service=")).await;
    assert_eq!(code, 400);
    assert!(body.contains("\"field\":\"service\""), "{body}");
    assert_eq!(raw_http(addr, &upgrade("?session_id=%ff%fe")).await.0, 400);
    // A valid upgrade still works on the same listener.
    assert_eq!(raw_http(addr, &upgrade("?tag=t")).await.0, 101);
    // Not an upgrade, wrong path, wrong version, missing key, pure garbage.
    assert_eq!(
        raw_http(
            addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await
        .0,
        400
    );
    assert_eq!(
        raw_http(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await
        .0,
        404
    );
    let v12 = upgrade("").replace("Version: 13", "Version: 12");
    assert_eq!(raw_http(addr, &v12).await.0, 400);
    let nokey = upgrade("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_eq!(raw_http(addr, &nokey).await.0, 400);
    let (code, _) = raw_http(addr, "\x16\x03\x01\x00garbage\r\n\r\n").await;
    assert!(code == 400 || code == 0, "garbage got {code}");
    // The proxy is unharmed.
    assert_eq!(target(&s.proxy, "service=a").await, "a");
}

#[tokio::test]
async fn not_ready_and_connection_limit_are_503() {
    let a = echo_agent().spawn().await;
    let cp = FakeControlPlane::spawn().await;
    let proxy = spawn_proxy(&[cp.url()], |c| c.max_connections = 2).await;
    let req = "GET /ws?tag=t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (code, body) = raw_http(proxy.ws_addr, req).await;
    assert_eq!(code, 503, "{body}");
    cp.push(full(1, vec![service("id-a", "a", a.addr, &["t"])], vec![]));
    proxy.wait_version(1).await;
    let (_c1, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    let (_c2, _) = connect_routed(&proxy.ws_url("tag=t")).await;
    let (code, body) = raw_http(proxy.ws_addr, req).await;
    assert_eq!(code, 503);
    assert!(body.contains("INSUFFICIENT_RESOURCES"), "{body}");
    drop(_c1);
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        proxy.handle.active_connections() < 2,
        "slot released"
    );
    let (_c3, _) = connect_routed(&proxy.ws_url("tag=t")).await;
}
