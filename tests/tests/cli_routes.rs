//! `route create|list|show|update|delete` against a live stack, including the condition
//! grammar's operators and the seed's error codes.

use myagent_tests::cli;

#[test]
fn route_lifecycle_in_table_and_json() {
    let stack = cli::up();

    // Seed §3.4, verbatim.
    let created = stack
        .cli(&[
            "route",
            "create",
            "vip-routing",
            "--condition",
            "header.x-user-tier=vip",
            "--target-tag",
            "high-performance",
            "--strategy",
            "least_connections",
        ])
        .ok();
    assert!(created.stdout.contains("vip-routing"), "{created}");
    assert!(
        created.stdout.contains("header.x-user-tier=vip"),
        "{created}"
    );

    // The seed's REST example (a CJK name), in JSON, with more operators.
    let cjk = stack
        .cli(&[
            "--output",
            "json",
            "route",
            "create",
            "VIP用户路由",
            "--priority",
            "10",
            "--condition",
            "header.x-user-tier=vip",
            "--condition",
            "query.lang in en|de",
            "--condition",
            "client_ip cidr 10.0.0.0/8",
            "--condition",
            "header.authorization exists",
            "--condition",
            "path~=^/ws",
            "--target-tag",
            "high-performance",
            "--strategy",
            "round_robin",
            "--disabled",
        ])
        .ok()
        .json();
    // The REST answer to the same request: success, rule_id, message, the rule.
    assert_eq!(cjk["success"], true);
    assert_eq!(cjk["message"], "Routing rule created successfully");
    let rule_id = cjk["rule_id"].as_str().expect("rule_id").to_string();
    let cjk = &cjk["rule"];
    assert_eq!(cjk["name"], "VIP用户路由");
    assert_eq!(cjk["rule_id"], rule_id.as_str());
    let conds = cjk["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 5);
    assert_eq!(
        conds[0],
        serde_json::json!({"field": "header.x-user-tier", "operator": "equals", "value": "vip"})
    );
    let ops: Vec<&str> = conds
        .iter()
        .map(|c| c["operator"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["equals", "in", "cidr", "exists", "regex"]);
    assert_eq!(cjk["enabled"], false);
    assert_eq!(cjk["priority"], 10);

    // Names are unique.
    stack
        .cli(&["route", "create", "vip-routing", "--target-tag", "x"])
        .fails_with("RULE_ALREADY_EXISTS");

    // list: highest priority first; the enabled filter.
    let list = stack
        .cli(&["route", "list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["rules"][0]["name"], "VIP用户路由");
    let enabled = stack
        .cli(&["route", "list", "--enabled", "true", "--output", "json"])
        .ok()
        .json();
    assert_eq!(enabled["total"], 1);
    assert_eq!(enabled["rules"][0]["name"], "vip-routing");
    let table = stack.cli(&["route", "list"]).ok();
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("PRIORITY") && header.contains("STRATEGY"),
        "{table}"
    );
    assert!(table.stdout.contains("VIP用户路由"), "{table}");

    // show by name and by id.
    let by_name = stack
        .cli(&["route", "show", "VIP用户路由", "--output", "json"])
        .ok()
        .json();
    assert_eq!(by_name["rule_id"], rule_id.as_str());
    let by_id = stack.cli(&["route", "show", &rule_id]).ok();
    assert!(by_id.stdout.contains("query.lang in en|de"), "{by_id}");

    // update merges.
    let updated = stack
        .cli(&[
            "--output",
            "json",
            "route",
            "update",
            "vip-routing",
            "--priority",
            "20",
            "--strategy",
            "random",
        ])
        .ok()
        .json();
    assert_eq!(updated["message"], "Routing rule updated successfully");
    let updated = &updated["rule"];
    assert_eq!(updated["priority"], 20);
    assert_eq!(updated["target_strategy"], "random");
    assert_eq!(
        updated["target_tags"],
        serde_json::json!(["high-performance"])
    );
    assert_eq!(updated["conditions"].as_array().unwrap().len(), 1);
    let list = stack
        .cli(&["route", "list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        list["rules"][0]["name"], "vip-routing",
        "priority 20 now sorts first"
    );

    // Invalid rules are rejected by the server, naming the field.
    let bad = stack
        .cli(&[
            "route",
            "create",
            "bad-regex",
            "--condition",
            "path~=([",
            "--target-tag",
            "x",
        ])
        .fails_with("INVALID_REQUEST");
    assert!(bad.stderr.contains("field"), "{bad}");
    stack
        .cli(&[
            "route",
            "create",
            "bad-cidr",
            "--condition",
            "client_ip cidr 10.0.0.0/99",
            "--target-tag",
            "x",
        ])
        .fails_with("INVALID_REQUEST");
    // Grammar errors never reach the server: usage error, exit 2.
    let usage = stack.cli(&["route", "create", "bad", "--condition", "nonsense"]);
    assert_eq!(usage.code, Some(2), "{usage}");

    // delete by name and id; unknown rules.
    assert_eq!(
        stack
            .cli(&["route", "delete", "vip-routing", "--output", "json"])
            .ok()
            .json()["success"],
        true
    );
    stack.cli(&["route", "delete", &rule_id]).ok();
    stack
        .cli(&["route", "delete", "vip-routing"])
        .fails_with("RULE_NOT_FOUND");
    stack
        .cli(&["route", "show", "nope"])
        .fails_with("RULE_NOT_FOUND");
    assert!(stack
        .cli(&["route", "list"])
        .ok()
        .stdout
        .contains("No routing rules."));
}
