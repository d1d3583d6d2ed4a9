//! Load per service as routing sees it: cluster-wide counts pushed by the control plane
//! (LoadUpdate, separate from config versions) plus this proxy's own changes the control plane
//! has not reflected yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use myagent_proto::v1 as pb;

#[derive(Debug, Default, Clone, Copy)]
struct Local {
    /// Live connections on this proxy.
    active: i64,
    /// Sessions created on this proxy, or moved here by failover, since start (monotonic).
    sessions_created: i64,
    /// Values when the last report was handed to the stream.
    reported_active: i64,
    reported_sessions: i64,
    /// Values already counted in the cluster figures (the last report before the latest
    /// LoadUpdate).
    base_active: i64,
    base_sessions: i64,
    /// Most live connections at once since the peaks were last taken (for the report).
    peak: i64,
    /// Connections (and, of them, sessions) routed here and still connecting: held by
    /// [`Slot`]s until the connection is counted or given up.
    pending_active: i64,
    pending_sessions: i64,
}

#[derive(Debug, Default)]
struct Table {
    cluster: HashMap<String, (u64, u64)>,
    local: HashMap<String, Local>,
    /// Live connections on this proxy, all services, and their most at once since the peaks
    /// were last taken.
    node_active: i64,
    node_peak: i64,
}

/// Most connections open at once on this proxy since the previous [`Load::take_peaks`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Peaks {
    /// Per service id: (peak, live now). Only services that had a connection in the window.
    pub services: HashMap<String, (u64, u64)>,
    /// All services together.
    pub node: u64,
}

/// Thread-safe load table; every operation is a short critical section (never across `.await`).
#[derive(Debug, Default)]
pub struct Load {
    inner: Arc<Mutex<Table>>,
}

/// A routing decision's claim on its service's capacity, from the decision until the
/// connection is counted ([`Load::connection_opened`]) or given up (dropped): connections
/// routed at the same moment see each other, so a burst cannot overshoot `max_sessions`.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Mutex<Table>>,
    service_id: String,
    session: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        if let Some(l) = t.local.get_mut(&self.service_id) {
            l.pending_active -= 1;
            l.pending_sessions -= i64::from(self.session);
        }
    }
}

// A poisoned lock only means another thread panicked mid-update of plain counters; the
// numbers are still usable for routing.
fn lock(m: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn effective(&self, service_id: &str) -> ServiceLoad {
        let (cc, cs) = self.cluster.get(service_id).copied().unwrap_or((0, 0));
        let l = self.local.get(service_id).copied().unwrap_or_default();
        let conns = cc as i64 + (l.active - l.base_active) + l.pending_active;
        let sess = cs as i64 + (l.sessions_created - l.base_sessions) + l.pending_sessions;
        ServiceLoad {
            connections: conns.max(0) as u64,
            sessions: sess.max(0) as u64,
        }
    }
}

/// Effective load of one service.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLoad {
    pub connections: u64,
    pub sessions: u64,
}

impl Load {
    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut lock(&self.inner))
    }

    pub fn get(&self, service_id: &str) -> ServiceLoad {
        self.with(|t| t.effective(service_id))
    }

    /// Claims a connection to `service_id`, and a session when the connection brings one the
    /// service does not hold (`session`): `None` when that session would go over
    /// `max_sessions` (0 = unbounded). Checked and claimed under one lock.
    pub fn try_reserve(&self, service_id: &str, max_sessions: u32, session: bool) -> Option<Slot> {
        self.with(|t| {
            if session
                && max_sessions > 0
                && t.effective(service_id).sessions >= u64::from(max_sessions)
            {
                return None;
            }
            let l = t.local.entry(service_id.to_string()).or_default();
            l.pending_active += 1;
            l.pending_sessions += i64::from(session);
            Some(Slot {
                table: self.inner.clone(),
                service_id: service_id.to_string(),
                session,
            })
        })
    }

    /// A connection to `service_id` opened; `session_arrives` when it brings a session the
    /// service did not hold (a new one, or one moved here by failover).
    pub fn connection_opened(&self, service_id: &str, session_arrives: bool) {
        self.with(|t| {
            let l = t.local.entry(service_id.to_string()).or_default();
            l.active += 1;
            l.peak = l.peak.max(l.active);
            if session_arrives {
                l.sessions_created += 1;
            }
            t.node_active += 1;
            t.node_peak = t.node_peak.max(t.node_active);
        })
    }

    pub fn connection_closed(&self, service_id: &str) {
        self.with(|t| {
            if let Some(l) = t.local.get_mut(service_id) {
                l.active -= 1;
                t.node_active -= 1;
            }
        })
    }

    /// The peaks since the previous call; the next window starts at the current counts (a
    /// connection open across reports counts in both windows).
    pub fn take_peaks(&self) -> Peaks {
        self.with(|t| {
            let mut out = Peaks {
                node: t.node_peak.max(0) as u64,
                ..Peaks::default()
            };
            t.node_peak = t.node_active;
            for (id, l) in t.local.iter_mut() {
                if l.peak > 0 {
                    out.services
                        .insert(id.clone(), (l.peak as u64, l.active.max(0) as u64));
                }
                l.peak = l.active;
            }
            out
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

    #[test]
    fn slots_count_until_dropped_and_bound_sessions() {
        let load = Load::default();
        let a = load.try_reserve("a", 2, true).expect("room");
        let b = load.try_reserve("a", 2, true).expect("room");
        assert_eq!(
            load.get("a"),
            ServiceLoad {
                connections: 2,
                sessions: 2
            }
        );
        assert!(
            load.try_reserve("a", 2, true).is_none(),
            "full while both connect"
        );
        // A resumed session brings none: not refused, counted as a connection.
        let resumed = load.try_reserve("a", 2, false).expect("no new session");
        assert_eq!(load.get("a").connections, 3);
        drop(resumed);
        // One connects (counted for good), one gives up: room for one more.
        load.connection_opened("a", true);
        drop(a);
        drop(b);
        assert_eq!(
            load.get("a"),
            ServiceLoad {
                connections: 1,
                sessions: 1
            }
        );
        assert!(load.try_reserve("a", 2, true).is_some());
        assert!(load.try_reserve("a", 0, true).is_some(), "0 = unbounded");
    }

    #[test]
    fn peaks_catch_connections_that_open_and_close_between_reports() {
        let load = Load::default();
        load.connection_opened("a", true);
        load.connection_opened("a", true);
        load.connection_opened("b", true);
        load.connection_closed("a");
        load.connection_closed("a");
        let p = load.take_peaks();
        assert_eq!(p.services["a"], (2, 0));
        assert_eq!(p.services["b"], (1, 1));
        assert_eq!(p.node, 3);
        // The next window starts from what is still open.
        let p = load.take_peaks();
        assert_eq!(p.services.get("a"), None);
        assert_eq!(p.services["b"], (1, 1));
        assert_eq!(p.node, 1);
        // A failover moves a connection without raising the node's peak.
        load.connection_closed("b");
        load.connection_opened("a", false);
        let p = load.take_peaks();
        assert_eq!(
            (p.services["a"], p.services["b"], p.node),
            ((1, 1), (1, 0), 1)
        );
    }
}
