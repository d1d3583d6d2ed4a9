//! REST connections, disconnect and notifications end to end (seed §1.2, DESIGN §6/§9 shapes)
//! against the real control plane, with no proxy connected.

use myagent_tests::control_plane::control_plane;
use myagent_tests::gateway::{assert_error, client, gateway, json};
use serde_json::json;

#[tokio::test]
async fn connections_disconnect_and_notifications_shapes() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();

    let (s, b) = json(c.get(gw.api("/connections?status=active&limit=20"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"connections": [], "total": 0}));
    // `all` is both statuses, as the CLI's `connections --status all`.
    let (s, b) = json(c.get(gw.api("/connections?status=all"))).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = json(c.get(gw.api("/connections?status=gone"))).await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "status"
    );
    for bad in ["many", "0"] {
        let (s, b) = json(c.get(gw.api(&format!("/connections?limit={bad}")))).await;
        assert_eq!(
            assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
            "limit",
            "limit={bad}"
        );
    }

    let (s, b) = json(
        c.post(gw.api("/connections/no-such-conn/disconnect"))
            .json(&json!({"reason": "x", "notify_client": true})),
    )
    .await;
    assert_error(s, &b, 404, "CONNECTION_NOT_FOUND");
    let (s, b) = json(
        c.post(gw.api("/connections/c1/disconnect"))
            .json(&json!({"notify_client": "yes"})),
    )
    .await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "notify_client"
    );

    let (s, b) = json(
        c.post(gw.api("/notifications"))
            .json(&json!({"message": "no type"})),
    )
    .await;
    assert_eq!(assert_error(s, &b, 400, "INVALID_REQUEST")["field"], "type");
}

#[tokio::test]
async fn unknown_service_filter_is_404_like_every_service_id_parameter() {
    let cp = control_plane().spawn().await;
    let gw = gateway().control_plane(cp.grpc_url()).spawn().await;
    let c = client();

    let (s, b) = json(c.get(gw.api("/connections?service_id=missing"))).await;
    let d = assert_error(s, &b, 404, "SERVICE_NOT_FOUND");
    assert_eq!(d["service_id"], "missing", "{b}");

    // A registered service without connections, by name and by id: an empty list.
    let (s, b) = json(
        c.post(gw.api("/services"))
            .json(&json!({"name": "quiet", "port": 9011})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["service_id"].as_str().unwrap().to_string();
    for key in ["quiet", id.as_str()] {
        let (s, b) = json(c.get(gw.api(&format!("/connections?service_id={key}")))).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b, json!({"connections": [], "total": 0}));
    }
}
