//! The cluster-wide connection list (seed §1.2): the watched store view plus reports this
//! replica has not flushed yet, filtered, newest first, `total` counted before the limit.

use std::collections::HashMap;

use super::model::{ConnectionRecord, ConnectionStatus};
use super::Hub;
use crate::error::{Error, Result};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Service id or name; empty = all.
    pub service: String,
    /// `active` | `closed` | `all` or empty = both.
    pub status: String,
    /// 0 = default (100).
    pub limit: u32,
    pub node_id: String,
}

pub fn list(hub: &Hub, filter: &ConnectionFilter) -> Result<(Vec<ConnectionRecord>, u64)> {
    let status = match filter.status.as_str() {
        "" | "all" => None,
        "active" => Some(ConnectionStatus::Active),
        "closed" => Some(ConnectionStatus::Closed),
        other => {
            return Err(Error::invalid(
                "status",
                format!("status must be 'active', 'closed' or 'all', got '{other}'"),
            ))
        }
    };
    let limit = match filter.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Error::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        n => n,
    };
    let mut all: HashMap<String, ConnectionRecord> = HashMap::new();
    let (service_id, service_name) = {
        let m = hub.inner.mirror();
        for c in m.connections.values() {
            all.insert(c.connection_id.clone(), c.clone());
        }
        match m.service_by_id_or_name(&filter.service) {
            Some(s) => (s.id.clone(), s.name.clone()),
            None => (filter.service.clone(), filter.service.clone()),
        }
    };
    // Reports not flushed yet are newer than the store view.
    for node in hub.inner.local_nodes() {
        for c in node.lock().active.values() {
            all.insert(c.connection_id.clone(), c.clone());
        }
    }
    let mut matching: Vec<ConnectionRecord> = all
        .into_values()
        .filter(|c| status.is_none_or(|s| c.status == s))
        .filter(|c| filter.node_id.is_empty() || c.node_id == filter.node_id)
        .filter(|c| {
            filter.service.is_empty()
                || c.target_service_id == service_id
                || c.target_service == service_name
        })
        .collect();
    let total = matching.len() as u64;
    matching.sort_by(|a, b| {
        b.connected_at
            .cmp(&a.connected_at)
            .then_with(|| a.connection_id.cmp(&b.connection_id))
    });
    matching.truncate(limit as usize);
    Ok((matching, total))
}
