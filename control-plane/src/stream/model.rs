//! Stored records of the data-plane side (JSON values, timestamps RFC 3339 UTC), read by other
//! modules (stats, supervisor) straight from the store. The exact formats:
//!
//! `nodes/{node_id}` — [`NodeRecord`], attached to the node's lease (TTL `node_ttl`, default
//! 10 s, kept alive by the replica holding the proxy's stream; it vanishes when the proxy is gone):
//! ```json
//! {"node_id":"p1","address":"10.0.0.5:8080","software_version":"0.1.0","replica_id":"cp-a",
//!  "stream_id":"uuid","connected":true,"connected_at":"...","updated_at":"...",
//!  "acked_version":1234,"acked_at":"...","synced_revision":1240,"pushed_version":1234,
//!  "nack":{"version":1230,"nonce":"...","error":"...","at":"..."}}
//! ```
//! `connected` turns false when the stream ends (the key stays until the lease expires, so a
//! proxy that reconnects within the TTL keeps its connections). `nack` is the last rejected
//! push; it is current only while `nack.version > acked_version`.
//!
//! `connections/{node_id}/{connection_id}` — [`ConnectionRecord`] on the node's lease. Active
//! records stay until closed; closed ones are kept bounded (last 1000 per node, at most 1 h).
//! ```json
//! {"connection_id":"..","session_id":"..","client_ip":"1.2.3.4","target_service_id":"..",
//!  "target_service":"weather-agent","node_id":"p1","status":"active|closed",
//!  "connected_at":"..","last_activity":"..","closed_at":null,"bytes_sent":0,
//!  "bytes_received":0,"message_count":0,"routing_strategy":"least_connections"}
//! ```
//!
//! `sessions/{session_id}` — [`SessionRecord`]. `state` is `active` while a connection is
//! attached on some node, `idle` after the last one closed (the key then carries a lease of
//! `session_timeout` + 60 s as a safety net), `completed` once `session_timeout` passed (the
//! leader writes it; completed records are kept 10 min, at most 10 000, then deleted).
//! ```json
//! {"session_id":"..","service_id":"..","state":"active|idle|completed","created_at":"..",
//!  "last_seen":"..","idle_since":null,"completed_at":null,"nodes":{"p1":1},"connections":1,
//!  "session_timeout":1800}
//! ```
//! A session's duration is `completed_at - created_at` (or `last_seen - created_at` while open).
//!
//! `stats/sessions/{service_id}` — [`SessionTotals`], written by the leader when it completes a
//! session: `{"service_id","completed":N,"total_duration_seconds":F,"updated_at"}`.
//! Total sessions of a service = sum of `sessions_created` over its counters records.
//!
//! `stats/counters/{service_id}/{replica_id}` — [`CounterRecord`], cumulative totals of what the
//! proxies connected to that replica reported, flushed at most every second per replica; a
//! service's totals are the sums over all replicas' records:
//! `{"service_id","replica_id","connections_opened","connections_closed","sessions_created",
//!   "messages_in","messages_out","bytes_in","bytes_out","errors","response_time_count",
//!   "response_time_sum_ms","passive_failures","updated_at"}`.
//! Active connections / non-completed sessions per service are the live counts of the records
//! above (`stream::cluster_load` returns them from the replica's watched cache).
//!
//! `commands/{node_id}/{command_id}` — [`CommandRecord`] with a 30 s lease: written by the
//! replica that received the API call, delivered by the replica that holds the node's stream,
//! which writes `result`; the issuer then deletes it.

use std::collections::BTreeMap;

/// Prefix of the per-replica cumulative counters.
pub const COUNTERS: &str = "stats/counters/";
/// Prefix of the per-service completed-session totals.
pub const SESSION_TOTALS: &str = "stats/sessions/";

/// `stats/counters/{service_id}/{replica_id}`.
pub fn counters_key(service_id: &str, replica_id: &str) -> String {
    format!("{COUNTERS}{service_id}/{replica_id}")
}

/// `stats/sessions/{service_id}`.
pub fn session_totals_key(service_id: &str) -> String {
    format!("{SESSION_TOTALS}{service_id}")
}

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub software_version: String,
    /// Control-plane replica that holds the node's stream.
    pub replica_id: String,
    /// Unique per stream, so a replica never overwrites the record of a newer stream.
    pub stream_id: String,
    pub connected: bool,
    pub connected_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Last config version the proxy ACKed (never a NACKed one).
    #[serde(default)]
    pub acked_version: u64,
    #[serde(default)]
    pub acked_at: Option<DateTime<Utc>>,
    /// Store revision through which the ACKed config was known to equal the store's config.
    #[serde(default)]
    pub synced_revision: u64,
    /// Last version pushed to the proxy.
    #[serde(default)]
    pub pushed_version: u64,
    #[serde(default)]
    pub nack: Option<NackRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NackRecord {
    pub version: u64,
    #[serde(default)]
    pub nonce: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

impl NodeRecord {
    /// The NACK reason that still applies (a later ACK supersedes it).
    pub fn current_nack(&self) -> Option<&NackRecord> {
        self.nack
            .as_ref()
            .filter(|n| n.version > self.acked_version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    Active,
    Closed,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub connection_id: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub client_ip: String,
    #[serde(default)]
    pub target_service_id: String,
    #[serde(default)]
    pub target_service: String,
    pub node_id: String,
    pub status: ConnectionStatus,
    pub connected_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    #[serde(default)]
    pub message_count: u64,
    #[serde(default)]
    pub routing_strategy: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Active,
    Idle,
    Completed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Idle => "idle",
            SessionState::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub service_id: String,
    pub state: SessionState,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    #[serde(default)]
    pub idle_since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Attached connections per proxy node.
    #[serde(default)]
    pub nodes: BTreeMap<String, u32>,
    /// Sum of `nodes`.
    #[serde(default)]
    pub connections: u32,
    /// The service's `session_timeout` (seconds) when the record was last written.
    #[serde(default)]
    pub session_timeout: u32,
}

impl SessionRecord {
    pub fn duration_seconds(&self) -> f64 {
        let end = self.completed_at.unwrap_or(self.last_seen);
        (end - self.created_at).num_milliseconds().max(0) as f64 / 1000.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTotals {
    pub service_id: String,
    pub completed: u64,
    pub total_duration_seconds: f64,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CounterRecord {
    pub service_id: String,
    pub replica_id: String,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub sessions_created: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    pub response_time_count: u64,
    pub response_time_sum_ms: f64,
    pub passive_failures: u64,
    pub updated_at: Option<DateTime<Utc>>,
}

impl CounterRecord {
    /// Adds `other`'s counts (not its identity).
    pub fn add(&mut self, other: &CounterRecord) {
        self.connections_opened += other.connections_opened;
        self.connections_closed += other.connections_closed;
        self.sessions_created += other.sessions_created;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.errors += other.errors;
        self.response_time_count += other.response_time_count;
        self.response_time_sum_ms += other.response_time_sum_ms;
        self.passive_failures += other.passive_failures;
    }

    pub fn is_zero(&self) -> bool {
        self.connections_opened == 0
            && self.connections_closed == 0
            && self.sessions_created == 0
            && self.messages_in == 0
            && self.messages_out == 0
            && self.bytes_in == 0
            && self.bytes_out == 0
            && self.errors == 0
            && self.response_time_count == 0
            && self.passive_failures == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub node_id: String,
    pub origin_replica: String,
    pub created_at: DateTime<Utc>,
    pub kind: CommandKind,
    #[serde(default)]
    pub result: Option<CommandOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    Disconnect {
        connection_id: String,
        reason: String,
        notify_client: bool,
    },
    Notify {
        /// Empty = every client.
        service_id: String,
        #[serde(rename = "notification_type")]
        kind: String,
        message: String,
        severity: String,
        countdown_seconds: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub ok: bool,
    pub delivered: u64,
    #[serde(default)]
    pub error: String,
    pub at: DateTime<Utc>,
}

/// Which proxies applied the config version that includes a given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub config_version: u64,
    pub proxies: Vec<ProxySyncState>,
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySyncState {
    pub node_id: String,
    pub applied_version: u64,
    pub in_sync: bool,
    /// Last NACK reason still current; empty when none.
    pub nack_error: String,
}

impl From<SyncStatus> for myagent_proto::v1::SyncStatus {
    fn from(s: SyncStatus) -> Self {
        myagent_proto::v1::SyncStatus {
            config_version: s.config_version,
            in_sync: s.in_sync,
            proxies: s
                .proxies
                .into_iter()
                .map(|p| myagent_proto::v1::ProxySyncState {
                    node_id: p.node_id,
                    applied_version: p.applied_version,
                    in_sync: p.in_sync,
                    nack_error: p.nack_error,
                })
                .collect(),
        }
    }
}

/// Cluster-wide live load of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceLoad {
    pub active_connections: u64,
    /// Non-completed sessions.
    pub active_sessions: u64,
}
