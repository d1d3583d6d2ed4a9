//! Management events the proxy sends to clients (seed §2.3, §4.3).

use serde_json::json;

pub fn connection_routed(
    target_service: &str,
    service_endpoint: &str,
    routing_strategy: &str,
    session_id: &str,
    connection_id: &str,
) -> String {
    json!({
        "event": "connection_routed",
        "data": {
            "target_service": target_service,
            "service_endpoint": service_endpoint,
            "routing_strategy": routing_strategy,
            "session_id": session_id,
            "connection_id": connection_id,
        }
    })
    .to_string()
}

pub fn service_switched(
    from_service: &str,
    to_service: &str,
    reason: &str,
    session_id: &str,
) -> String {
    json!({
        "event": "service_switched",
        "data": {
            "from_service": from_service,
            "to_service": to_service,
            "reason": reason,
            "session_preserved": true,
            "session_id": session_id,
        }
    })
    .to_string()
}

pub fn error(code: &str, message: &str, recoverable: bool) -> String {
    json!({"event": "error", "data": {"code": code, "message": message, "recoverable": recoverable}}).to_string()
}

pub fn connection_closed(connection_id: &str, reason: &str) -> String {
    json!({"event": "connection_closed", "data": {"connection_id": connection_id, "reason": reason}}).to_string()
}

pub fn management_notification(
    kind: &str,
    message: &str,
    severity: &str,
    countdown_seconds: Option<u32>,
) -> String {
    let mut data = json!({"type": kind, "message": message, "severity": severity});
    if let Some(c) = countdown_seconds {
        data["countdown_seconds"] = json!(c);
    }
    json!({"event": "management_notification", "data": data}).to_string()
}
