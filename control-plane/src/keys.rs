//! The key layout under the store prefix (DESIGN §3). Every key the control plane writes is
//! built here, so the layout is visible in one place.

pub const SERVICES: &str = "services/";
pub const SERVICE_NAMES: &str = "service-names/";
pub const RUNTIME: &str = "runtime/";
pub const HEALTH: &str = "health/";
pub const RULES: &str = "rules/";
pub const RULE_NAMES: &str = "rule-names/";
pub const NODES: &str = "nodes/";
pub const CONNECTIONS: &str = "connections/";
pub const SESSIONS: &str = "sessions/";
pub const COMMANDS: &str = "commands/";
pub const STATS: &str = "stats/";
pub const ELECTION_LEADER: &str = "election/leader";

pub fn service(id: &str) -> String {
    format!("{SERVICES}{id}")
}

pub fn service_name(name: &str) -> String {
    format!("{SERVICE_NAMES}{name}")
}

pub fn runtime(id: &str) -> String {
    format!("{RUNTIME}{id}")
}

pub fn health(id: &str) -> String {
    format!("{HEALTH}{id}")
}

pub fn rule(id: &str) -> String {
    format!("{RULES}{id}")
}

pub fn rule_name(name: &str) -> String {
    format!("{RULE_NAMES}{name}")
}

/// The value of a name index key (`service-names/`, `rule-names/`): the id as a JSON string,
/// like every value in the store.
pub fn name_index_value(id: &str) -> Vec<u8> {
    serde_json::to_vec(id).unwrap_or_else(|_| id.as_bytes().to_vec())
}

/// The id a name index key holds: a JSON string, or the bare id earlier versions wrote.
pub fn name_index_id(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    serde_json::from_str::<String>(&text).unwrap_or_else(|_| text.trim().to_string())
}

pub fn node(node_id: &str) -> String {
    format!("{NODES}{node_id}")
}

pub fn connections_of(node_id: &str) -> String {
    format!("{CONNECTIONS}{node_id}/")
}

pub fn connection(node_id: &str, conn_id: &str) -> String {
    format!("{CONNECTIONS}{node_id}/{conn_id}")
}

pub fn session(session_id: &str) -> String {
    format!("{SESSIONS}{session_id}")
}

pub fn commands_of(node_id: &str) -> String {
    format!("{COMMANDS}{node_id}/")
}

pub fn command(node_id: &str, id: &str) -> String {
    format!("{COMMANDS}{node_id}/{id}")
}
