//! Load per service as routing sees it: cluster-wide counts pushed by the control plane
//! (LoadUpdate, separate from config versions) plus this proxy's own changes the control plane
//! has not reflected yet.

use std::collections::HashMap;
use std::sync::Mutex;

use myagent_proto::v1 as pb;

#[derive(Debug, Default, Clone, Copy)]
struct Local {
    /// Live connections on this proxy.
    active: i64,
    /// Sessions created on this proxy since start (monotonic).
    sessions_created: i64,
    /// Values when the last report was handed to the stream.
    reported_active: i64,
    reported_sessions: i64,
    /// Values already counted in the cluster figures (the last report before the latest
    /// LoadUpdate).
    base_active: i64,
    base_sessions: i64,
}

#[derive(Debug, Default)]
struct Table {
    cluster: HashMap<String, (u64, u64)>,
    local: HashMap<String, Local>,
}

/// Thread-safe load table; every operation is a short critical section (never across `.await`).
#[derive(Debug, Default)]
pub struct Load {
    inner: Mutex<Table>,
}

/// Effective load of one service.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLoad {
    pub connections: u64,
    pub sessions: u64,
}

impl Load {
    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the numbers are still usable for routing.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn get(&self, service_id: &str) -> ServiceLoad {
        self.with(|t| {
            let (cc, cs) = t.cluster.get(service_id).copied().unwrap_or((0, 0));
            let l = t.local.get(service_id).copied().unwrap_or_default();
            let conns = cc as i64 + (l.active - l.base_active);
            let sess = cs as i64 + (l.sessions_created - l.base_sessions);
            ServiceLoad {
                connections: conns.max(0) as u64,
                sessions: sess.max(0) as u64,
            }
        })
    }

    pub fn connection_opened(&self, service_id: &str, new_session: bool) {
        self.with(|t| {
            let l = t.local.entry(service_id.to_string()).or_default();
            l.active += 1;
            if new_session {
                l.sessions_created += 1;
            }
        })
    }

    pub fn connection_closed(&self, service_id: &str) {
        self.with(|t| {
            if let Some(l) = t.local.get_mut(service_id) {
                l.active -= 1;
            }
        })
    }

    /// Live connections on this proxy for a service.
    pub fn local_active(&self, service_id: &str) -> i64 {
        self.with(|t| t.local.get(service_id).map(|l| l.active).unwrap_or(0))
    }

    /// Called when a report is handed to the stream.
    pub fn reported(&self) {
        self.with(|t| {
            for l in t.local.values_mut() {
                l.reported_active = l.active;
                l.reported_sessions = l.sessions_created;
            }
        })
    }

    /// A LoadUpdate replaces the cluster figures; it covers what we reported before it.
    pub fn apply_update(&self, update: &pb::LoadUpdate) {
        self.with(|t| {
            t.cluster = update
                .services
                .iter()
                .map(|s| {
                    (
                        s.service_id.clone(),
                        (s.active_connections, s.active_sessions),
                    )
                })
                .collect();
            for l in t.local.values_mut() {
                l.base_active = l.reported_active;
                l.base_sessions = l.reported_sessions;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_changes_count_until_the_cluster_reflects_them() {
        let load = Load::default();
        load.connection_opened("a", true);
        load.connection_opened("a", false);
        assert_eq!(
            load.get("a"),
            ServiceLoad {
                connections: 2,
                sessions: 1
            }
        );
        load.reported();
        // Cluster now says 5 connections (ours included) and 3 sessions.
        load.apply_update(&pb::LoadUpdate {
            services: vec![pb::ServiceLoad {
                service_id: "a".into(),
                active_connections: 5,
                active_sessions: 3,
            }],
        });
        assert_eq!(
            load.get("a"),
            ServiceLoad {
                connections: 5,
                sessions: 3
            }
        );
        load.connection_closed("a");
        assert_eq!(load.get("a").connections, 4);
        assert_eq!(load.get("b"), ServiceLoad::default());
    }
}
