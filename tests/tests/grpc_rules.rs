//! RoutingRules over real gRPC on both stores: create (defaults, normalisation), every
//! validation error (code + dotted field, nothing written), uniqueness, ordering, enabled
//! filter, get/update/delete by id or name, rename.

use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, error_code, unique_prefix, ControlPlane};
use myagent_tests::etcd::Etcd;

fn cond(field: &str, op: &str, value: &str) -> pb::Condition {
    pb::Condition {
        field: field.into(),
        operator: op.into(),
        value: value.into(),
        values: vec![],
    }
}

fn rule(name: &str, priority: i32) -> pb::CreateRuleRequest {
    pb::CreateRuleRequest {
        name: name.into(),
        priority: Some(priority),
        ..Default::default()
    }
}

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
    create_with_seed_example,
    invalid_rules_name_their_field,
    names_are_unique,
    list_is_ordered_and_filtered,
    update_merges_and_renames,
    delete_by_id_or_name,
);

async fn create_with_seed_example(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    let r = c
        .create_rule(pb::CreateRuleRequest {
            name: "VIP用户路由".into(),
            priority: Some(10),
            conditions: vec![cond("header.X-User-Tier", "equals", "vip")],
            target_strategy: "least_connections".into(),
            target_tags: vec!["high-performance".into()],
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(uuid::Uuid::parse_str(&r.rule_id).is_ok());
    assert_eq!(r.name, "VIP用户路由");
    assert_eq!(r.priority, 10);
    assert_eq!(
        r.conditions[0].field, "header.x-user-tier",
        "header names are lowercased"
    );
    assert_eq!(r.target_tags, vec!["high-performance"]);
    assert!(r.enabled);
    assert!(r.created_at.is_some());

    let d = c
        .create_rule(rule("defaults", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.target_strategy, "least_connections");
    assert!(d.enabled, "enabled defaults to true");
    let h = c
        .create_rule(pb::CreateRuleRequest {
            target_strategy: "consistent_hash".into(),
            ..rule("hashing", 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.hash_key, "session_id");
    let list = c
        .create_rule(pb::CreateRuleRequest {
            conditions: vec![cond("query.region", "in", "eu,us")],
            ..rule("list-in-value", 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conditions[0].values, vec!["eu", "us"]);
}

async fn invalid_rules_name_their_field(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    let with = |conditions: Vec<pb::Condition>| pb::CreateRuleRequest {
        conditions,
        ..rule("r", 0)
    };
    let cases: Vec<(pb::CreateRuleRequest, &str)> = vec![
        (rule("", 0), "name"),
        (rule(&"名".repeat(129), 0), "name"),
        (rule("bell\u{7}", 0), "name"),
        (
            pb::CreateRuleRequest {
                target_strategy: "fastest".into(),
                ..rule("r", 0)
            },
            "target_strategy",
        ),
        (
            pb::CreateRuleRequest {
                target_tags: vec!["".into()],
                ..rule("r", 0)
            },
            "target_tags[0]",
        ),
        (
            pb::CreateRuleRequest {
                hash_key: "body".into(),
                ..rule("r", 0)
            },
            "hash_key",
        ),
        (
            with(vec![cond("cookie.session", "equals", "x")]),
            "conditions[0].field",
        ),
        (
            with(vec![cond("header.x", "like", "x")]),
            "conditions[0].operator",
        ),
        (
            with(vec![cond("header.x", "equals", "")]),
            "conditions[0].value",
        ),
        (
            with(vec![cond("path", "regex", "([unclosed")]),
            "conditions[0].value",
        ),
        (
            with(vec![cond("path", "cidr", "10.0.0.0/8")]),
            "conditions[0].operator",
        ),
        (
            with(vec![cond("client_ip", "cidr", "10.0.0.0/99")]),
            "conditions[0].value",
        ),
        (
            with(vec![cond("query.a", "in", "")]),
            "conditions[0].values",
        ),
        (
            with(vec![cond("path", "equals", "/"), cond("path", "nope", "/")]),
            "conditions[1].operator",
        ),
        (
            pb::CreateRuleRequest {
                wait_for_sync: f64::INFINITY,
                ..rule("r", 0)
            },
            "wait_for_sync",
        ),
    ];
    for (r, field) in cases {
        let status = c.create_rule(r).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            error_code(&status),
            ("INVALID_REQUEST".to_string(), field.to_string()),
            "{status:?}"
        );
    }
    let all = c
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.total, 0, "nothing was written");
}

async fn names_are_unique(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    c.create_rule(rule("vip-routing", 1)).await.unwrap();
    let e = c.create_rule(rule("vip-routing", 2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        error_code(&e),
        ("RULE_ALREADY_EXISTS".into(), "name".into())
    );

    let attempts = (0..6).map(|_| {
        let mut c = c.clone();
        async move { c.create_rule(rule("contested-rule", 0)).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

async fn list_is_ordered_and_filtered(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    for (name, prio, enabled) in [
        ("b", 5, true),
        ("a", 5, false),
        ("low", -3, true),
        ("top", 100, true),
    ] {
        c.create_rule(pb::CreateRuleRequest {
            enabled: Some(enabled),
            ..rule(name, prio)
        })
        .await
        .unwrap();
    }
    let all = c
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = all.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["top", "a", "b", "low"], "priority desc, then name");
    assert_eq!(all.total, 4);
    let enabled = c
        .list_rules(pb::ListRulesRequest {
            enabled: Some(true),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.total, 3);
    let disabled = c
        .list_rules(pb::ListRulesRequest {
            enabled: Some(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.rules[0].name, "a");
}

async fn update_merges_and_renames(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    let r = c
        .create_rule(pb::CreateRuleRequest {
            conditions: vec![cond("header.x-user-tier", "equals", "vip")],
            target_tags: vec!["fast".into()],
            ..rule("vip", 10)
        })
        .await
        .unwrap()
        .into_inner();
    c.create_rule(rule("other", 0)).await.unwrap();
    let u = c
        .update_rule(pb::UpdateRuleRequest {
            rule: "vip".into(),
            priority: Some(20),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((u.priority, u.enabled), (20, false));
    assert_eq!(u.conditions.len(), 1, "conditions kept");
    assert_eq!(u.target_tags, vec!["fast"]);

    let bad = c
        .update_rule(pb::UpdateRuleRequest {
            rule: r.rule_id.clone(),
            conditions: Some(pb::ConditionList {
                items: vec![cond("header.x", "regex", "(")],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&bad),
        ("INVALID_REQUEST".into(), "conditions[0].value".into())
    );

    let taken = c
        .update_rule(pb::UpdateRuleRequest {
            rule: "vip".into(),
            name: Some("other".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&taken).0, "RULE_ALREADY_EXISTS");

    let renamed = c
        .update_rule(pb::UpdateRuleRequest {
            rule: "vip".into(),
            name: Some("vip-renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.rule_id, r.rule_id);
    let by_new = c
        .get_rule(pb::GetRuleRequest {
            rule: "vip-renamed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_new.rule_id, r.rule_id);
    let old = c
        .get_rule(pb::GetRuleRequest { rule: "vip".into() })
        .await
        .unwrap_err();
    assert_eq!(error_code(&old).0, "RULE_NOT_FOUND");
    // The old name is free again.
    c.create_rule(rule("vip", 0)).await.unwrap();
}

async fn delete_by_id_or_name(cp: &ControlPlane) {
    let mut c = cp.rules().await;
    let a = c.create_rule(rule("by-id", 0)).await.unwrap().into_inner();
    c.create_rule(rule("by-name", 0)).await.unwrap();
    let d = c
        .delete_rule(pb::DeleteRuleRequest {
            rule: a.rule_id.clone(),
            wait_for_sync: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.rule_id, a.rule_id);
    c.delete_rule(pb::DeleteRuleRequest {
        rule: "by-name".into(),
        wait_for_sync: 0.0,
    })
    .await
    .unwrap();
    for key in [a.rule_id.as_str(), "by-name", "never-existed"] {
        let e = c
            .delete_rule(pb::DeleteRuleRequest {
                rule: key.into(),
                wait_for_sync: 0.0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(error_code(&e).0, "RULE_NOT_FOUND");
    }
    let all = c
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.total, 0);
}
