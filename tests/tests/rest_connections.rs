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
    let (s, b) = json(c.get(gw.api("/connections?limit=many"))).await;
    assert_eq!(
        assert_error(s, &b, 400, "INVALID_REQUEST")["field"],
        "limit"
    );

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
