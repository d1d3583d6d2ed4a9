//! Management events the proxy sends to clients (seed §2.3, §4.3), serialised straight from
//! borrowed fields (no JSON tree per event: `connection_routed` goes out on every connect).

use serde::Serialize;

#[derive(Serialize)]
struct Event<'a, T> {
    event: &'a str,
    data: T,
}

fn render<T: Serialize>(event: &str, data: T) -> String {
    // Serialising string, bool and integer fields into memory cannot fail.
    serde_json::to_string(&Event { event, data }).unwrap_or_default()
}

#[derive(Serialize)]
struct Routed<'a> {
    target_service: &'a str,
    service_endpoint: &'a str,
    routing_strategy: &'a str,
    session_id: &'a str,
    connection_id: &'a str,
}

pub fn connection_routed(
    target_service: &str,
    service_endpoint: &str,
    routing_strategy: &str,
    session_id: &str,
    connection_id: &str,
) -> String {
    render(
        "connection_routed",
        Routed {
            target_service,
            service_endpoint,
            routing_strategy,
            session_id,
            connection_id,
        },
    )
}

#[derive(Serialize)]
struct Switched<'a> {
    from_service: &'a str,
    to_service: &'a str,
    reason: &'a str,
    session_preserved: bool,
    session_id: &'a str,
}

pub fn service_switched(
    from_service: &str,
    to_service: &str,
    reason: &str,
    session_id: &str,
) -> String {
    render(
        "service_switched",
        Switched {
            from_service,
            to_service,
            reason,
            session_preserved: true,
            session_id,
        },
    )
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: &'a str,
    message: &'a str,
    recoverable: bool,
}

pub fn error(code: &str, message: &str, recoverable: bool) -> String {
    render(
        "error",
        ErrorData {
            code,
            message,
            recoverable,
        },
    )
}

#[derive(Serialize)]
struct Closed<'a> {
    connection_id: &'a str,
    reason: &'a str,
}

pub fn connection_closed(connection_id: &str, reason: &str) -> String {
    render(
        "connection_closed",
        Closed {
            connection_id,
            reason,
        },
    )
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    severity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    countdown_seconds: Option<u32>,
}

pub fn management_notification(
    kind: &str,
    message: &str,
    severity: &str,
    countdown_seconds: Option<u32>,
) -> String {
    render(
        "management_notification",
        Notification {
            kind,
            message,
            severity,
            countdown_seconds,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn events_have_the_seed_shapes() {
        assert_eq!(
            parse(&connection_routed(
                "svc",
                "ws://a:1/ws",
                "direct",
                "s\"1",
                "c1"
            )),
            json!({"event": "connection_routed", "data": {"target_service": "svc",
                "service_endpoint": "ws://a:1/ws", "routing_strategy": "direct",
                "session_id": "s\"1", "connection_id": "c1"}})
        );
        assert_eq!(
            parse(&service_switched("a", "b", "upstream closed", "s1")),
            json!({"event": "service_switched", "data": {"from_service": "a", "to_service": "b",
                "reason": "upstream closed", "session_preserved": true, "session_id": "s1"}})
        );
        assert_eq!(
            parse(&error("SERVICE_UNAVAILABLE", "no", true)),
            json!({"event": "error", "data": {"code": "SERVICE_UNAVAILABLE", "message": "no",
                "recoverable": true}})
        );
        assert_eq!(
            parse(&connection_closed("c1", "admin")),
            json!({"event": "connection_closed", "data": {"connection_id": "c1", "reason": "admin"}})
        );
        assert_eq!(
            parse(&management_notification(
                "maintenance",
                "m",
                "warning",
                Some(30)
            )),
            json!({"event": "management_notification", "data": {"type": "maintenance",
                "message": "m", "severity": "warning", "countdown_seconds": 30}})
        );
        assert_eq!(
            parse(&management_notification("info", "m", "info", None)),
            json!({"event": "management_notification", "data": {"type": "info", "message": "m",
                "severity": "info"}})
        );
    }
}
