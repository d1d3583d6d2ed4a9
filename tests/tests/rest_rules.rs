//! REST `/api/v1/routing/rules` end to end (seed §1.3, DESIGN §5/§7): CRUD with merge, enabled
//! filter, names or ids, and every kind of invalid rule rejected with the field.

use myagent_tests::control_plane::control_plane;
use myagent_tests::gateway::{assert_error, client, gateway, json};
use serde_json::json;

#[tokio::test]
async fn rules_crud_with_seed_example() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();

    let seed = json!({
        "name": "VIP用户路由",
        "priority": 10,
        "conditions": [{"field": "header.x-user-tier", "operator": "equals", "value": "vip"}],
        "target_strategy": "least_connections",
        "target_tags": ["high-performance"],
        "enabled": true
    });
    let (s, b) = json(c.post(gw.api("/routing/rules")).json(&seed)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["success"], true);
    let id = b["rule_id"].as_str().unwrap().to_string();
    let rule = &b["rule"];
    assert_eq!(rule["rule_id"], id.as_str());
    assert_eq!(rule["name"], "VIP用户路由");
    assert_eq!(rule["priority"], 10);
    assert_eq!(rule["conditions"], seed["conditions"]);
    assert_eq!(rule["target_strategy"], "least_connections");
    assert_eq!(rule["target_tags"], json!(["high-performance"]));
    assert_eq!(rule["enabled"], true);

    let (s, b) = json(c.post(gw.api("/routing/rules")).json(&seed)).await;
    assert_error(s, &b, 409, "RULE_ALREADY_EXISTS");

    let list_in = json!({
        "name": "eu",
        "conditions": [{"field": "query.region", "operator": "in", "value": ["eu", "uk"]}],
        "target_tags": ["eu"],
        "enabled": false
    });
    let (s, b) = json(c.post(gw.api("/routing/rules")).json(&list_in)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["rule"]["conditions"][0]["value"], json!(["eu", "uk"]));
    assert_eq!(b["rule"]["priority"], 0);

    let (s, b) = json(c.get(gw.api("/routing/rules"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["total"], 2);
    assert_eq!(
        b["rules"][0]["name"], "VIP用户路由",
        "highest priority first: {b}"
    );
    let (_, b) = json(c.get(gw.api("/routing/rules?enabled=true"))).await;
    assert_eq!(b["total"], 1, "{b}");
    let (_, b) = json(c.get(gw.api("/routing/rules?enabled=false"))).await;
    assert_eq!(b["rules"][0]["name"], "eu", "{b}");
    // Python's requests sends `params={"enabled": True}` as `enabled=True`.
    let (s, b) = json(c.get(gw.api("/routing/rules?enabled=True"))).await;
    assert_eq!((s, &b["total"]), (200, &json!(1)), "{b}");
    let (s, b) = json(c.get(gw.api("/routing/rules?enabled=0"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rules"][0]["name"], "eu", "{b}");
    let (s, b) = json(c.get(gw.api("/routing/rules?enabled=perhaps"))).await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "enabled"
    );

    // By id and by name.
    let (s, b) = json(c.get(gw.api(&format!("/routing/rules/{id}")))).await;
    assert_eq!((s, b["name"].clone()), (200, json!("VIP用户路由")));
    let (s, b) = json(c.get(gw.api("/routing/rules/eu"))).await;
    assert_eq!((s, b["enabled"].clone()), (200, json!(false)));

    // PUT merges: only priority changes.
    let (s, b) = json(
        c.put(gw.api(&format!("/routing/rules/{id}")))
            .json(&json!({"priority": 3})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["success"], true);
    assert_eq!(b["rule"]["priority"], 3);
    assert_eq!(b["rule"]["target_tags"], json!(["high-performance"]));
    assert_eq!(b["rule"]["conditions"], seed["conditions"]);
    let (_, b) = json(c.get(gw.api("/routing/rules"))).await;
    assert_eq!(b["rules"][0]["name"], "VIP用户路由", "{b}");

    let (s, b) = json(c.delete(gw.api("/routing/rules/eu"))).await;
    assert_eq!((s, b["success"].clone()), (200, json!(true)), "{b}");
    let (s, b) = json(c.get(gw.api("/routing/rules/eu"))).await;
    assert_error(s, &b, 404, "RULE_NOT_FOUND");
    let (_, b) = json(c.get(gw.api("/routing/rules"))).await;
    assert_eq!(b["total"], 1);
}

#[tokio::test]
async fn invalid_rules_are_rejected_with_the_field_and_write_nothing() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();
    let cond = |op: &str, value: serde_json::Value| json!({"name": "r", "conditions": [{"field": "header.x", "operator": op, "value": value}]});
    let cases = vec![
        (
            json!({"name": "r", "target_strategy": "fastest"}),
            "target_strategy",
        ),
        (cond("resembles", json!("a")), "conditions[0].operator"),
        (cond("regex", json!("(unclosed")), "conditions[0].value"),
        (
            json!({"name": "r", "conditions": [{"field": "cookie.x", "operator": "equals", "value": "a"}]}),
            "conditions[0].field",
        ),
        (
            json!({"name": "r", "conditions": [{"field": "client_ip", "operator": "cidr", "value": "10.0.0.0/99"}]}),
            "conditions[0].value",
        ),
        (json!({"name": "r", "priority": "high"}), "priority"),
        (
            json!({"name": "r", "conditions": [{"field": "path", "operator": "equals", "value": "/", "extra": 1}]}),
            "conditions[0].extra",
        ),
        (json!({"name": "r", "unknown": true}), "unknown"),
        (json!({"priority": 1}), "name"),
    ];
    for (body, field) in cases {
        let (s, b) = json(c.post(gw.api("/routing/rules")).json(&body)).await;
        let d = assert_error(s, &b, 400, "INVALID_REQUEST");
        assert_eq!(d["field"], field, "body {body}: {b}");
    }
    let (_, b) = json(c.get(gw.api("/routing/rules"))).await;
    assert_eq!(b["total"], 0, "{b}");

    // Updates are validated too, and a failed update changes nothing.
    let (s, _) = json(
        c.post(gw.api("/routing/rules"))
            .json(&json!({"name": "ok", "priority": 1})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = json(
        c.put(gw.api("/routing/rules/ok"))
            .json(&json!({"priority": 9, "target_strategy": "nope"})),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "target_strategy"
    );
    let (_, b) = json(c.get(gw.api("/routing/rules/ok"))).await;
    assert_eq!(b["priority"], 1);
}
