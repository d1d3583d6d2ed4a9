//! The replica's watched copy of the cluster state the data plane depends on: config (services,
//! runtime, health, rules → pushed snapshots with the revision of their last visible change),
//! nodes, connections, sessions and commands, plus live load counts per service. Fed by the one
//! store watch of the replica (`watcher`), read by everything else.

use std::collections::{BTreeMap, HashMap, VecDeque};

use myagent_proto::v1 as pb;

use super::config::{rule_to_pb, service_snapshot};
use super::model::{
    CommandRecord, ConnectionRecord, ConnectionStatus, NodeRecord, ServiceLoad, SessionRecord,
    SessionState,
};
use crate::keys;
use crate::model::{HealthState, Rule, Runtime, ServiceDef};
use crate::store::{KeyValue, LeaseId, Revision, WatchEvent};

/// How many config events / tombstones are remembered; older versions need a full resync.
const HISTORY: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Versioned<T> {
    pub value: T,
    /// Revision of the last visible change (0 = before this replica loaded the store).
    pub changed: Revision,
}

#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub record: SessionRecord,
    pub mod_revision: Revision,
    pub lease: LeaseId,
}

#[derive(Debug, Clone)]
pub(crate) struct CommandEntry {
    pub key: String,
    pub record: CommandRecord,
    pub lease: LeaseId,
}

/// What applying a batch of events means for the rest of the hub.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// A proxy-visible config change happened.
    pub config_visible: bool,
    /// Some config key changed (visible or not): the version moves on.
    pub config_event: bool,
    pub nodes_changed: bool,
    pub session_upserts: Vec<SessionRecord>,
    pub session_removed: Vec<String>,
    /// Idle sessions whose key vanished (lease expiry): completed without the leader's write.
    pub sessions_expired: Vec<SessionRecord>,
    /// Commands written or answered.
    pub commands: Vec<CommandEntry>,
}

#[derive(Default)]
pub(crate) struct Mirror {
    /// Last store revision applied.
    pub revision: Revision,
    /// Versions below this cannot be served as a delta (history unknown or trimmed).
    pub floor: Revision,
    /// Config version: revision of the last config event (or of the load).
    pub config_version: Revision,
    /// Revisions of config events since the load, ascending, bounded.
    config_events: VecDeque<Revision>,
    services: HashMap<String, ServiceDef>,
    runtime: HashMap<String, Runtime>,
    health: HashMap<String, HealthState>,
    pub snapshots: HashMap<String, Versioned<pb::ServiceSnapshot>>,
    pub rules: HashMap<String, Versioned<pb::RoutingRule>>,
    removed_services: VecDeque<(Revision, String)>,
    removed_rules: VecDeque<(Revision, String)>,
    pub nodes: BTreeMap<String, (NodeRecord, LeaseId)>,
    pub connections: HashMap<String, ConnectionRecord>,
    pub sessions: HashMap<String, SessionEntry>,
    pub commands: HashMap<String, CommandEntry>,
    pub load: HashMap<String, ServiceLoad>,
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable stored value");
            None
        }
    }
}

impl Mirror {
    /// A mirror of `kvs`, read at `revision`.
    pub fn load(kvs: &[KeyValue], revision: Revision) -> (Mirror, Effects) {
        let mut m = Mirror {
            revision,
            floor: revision,
            config_version: revision,
            ..Mirror::default()
        };
        let mut fx = Effects::default();
        for kv in kvs {
            m.apply_put(kv, 0, &mut fx);
        }
        (m, fx)
    }

    pub fn apply(&mut self, events: &[WatchEvent], fx: &mut Effects) {
        for ev in events {
            let rev = ev.revision();
            match ev {
                WatchEvent::Put(kv) => self.apply_put(kv, rev, fx),
                WatchEvent::Delete { key, .. } => self.apply_delete(key, rev, fx),
            }
        }
        if let Some(last) = events.last() {
            self.revision = self.revision.max(last.revision());
        }
    }

    fn config_event(&mut self, rev: Revision, fx: &mut Effects) {
        if rev == 0 {
            return;
        }
        fx.config_event = true;
        self.config_version = self.config_version.max(rev);
        if self.config_events.back() != Some(&rev) {
            self.config_events.push_back(rev);
        }
        while self.config_events.len() > HISTORY {
            if let Some(old) = self.config_events.pop_front() {
                self.floor = self.floor.max(old);
            }
        }
    }

    fn apply_put(&mut self, kv: &KeyValue, rev: Revision, fx: &mut Effects) {
        let key = kv.key.as_str();
        if let Some(id) = key.strip_prefix(keys::SERVICES) {
            if let Some(def) = decode::<ServiceDef>(kv) {
                self.services.insert(id.to_string(), def);
                self.recompute(id, rev, fx);
            }
        } else if let Some(id) = key.strip_prefix(keys::RUNTIME) {
            if let Some(r) = decode::<Runtime>(kv) {
                self.runtime.insert(id.to_string(), r);
                self.recompute(id, rev, fx);
            }
        } else if let Some(id) = key.strip_prefix(keys::HEALTH) {
            if let Some(h) = decode::<HealthState>(kv) {
                self.health.insert(id.to_string(), h);
                self.recompute(id, rev, fx);
            }
        } else if let Some(id) = key.strip_prefix(keys::RULES) {
            if let Some(rule) = decode::<Rule>(kv) {
                self.config_event(rev, fx);
                let value = rule_to_pb(&rule);
                let changed = self.rules.get(id).is_none_or(|old| old.value != value);
                if changed {
                    self.rules.insert(
                        id.to_string(),
                        Versioned {
                            value,
                            changed: rev,
                        },
                    );
                    fx.config_visible = true;
                }
            }
        } else if let Some(id) = key.strip_prefix(keys::NODES) {
            if let Some(n) = decode::<NodeRecord>(kv) {
                self.nodes.insert(id.to_string(), (n, kv.lease));
                fx.nodes_changed = true;
            }
        } else if let Some(rest) = key.strip_prefix(keys::CONNECTIONS) {
            if let (Some(_), Some(c)) = (rest.split_once('/'), decode::<ConnectionRecord>(kv)) {
                self.put_connection(c);
            }
        } else if let Some(id) = key.strip_prefix(keys::SESSIONS) {
            if let Some(s) = decode::<SessionRecord>(kv) {
                self.put_session(id, s, kv, fx);
            }
        } else if let Some(rest) = key.strip_prefix(keys::COMMANDS) {
            if let (Some(_), Some(c)) = (rest.split_once('/'), decode::<CommandRecord>(kv)) {
                let entry = CommandEntry {
                    key: key.to_string(),
                    record: c,
                    lease: kv.lease,
                };
                self.commands.insert(key.to_string(), entry.clone());
                fx.commands.push(entry);
            }
        }
    }

    fn apply_delete(&mut self, key: &str, rev: Revision, fx: &mut Effects) {
        if let Some(id) = key.strip_prefix(keys::SERVICES) {
            self.services.remove(id);
            self.recompute(id, rev, fx);
        } else if let Some(id) = key.strip_prefix(keys::RUNTIME) {
            self.runtime.remove(id);
            self.recompute(id, rev, fx);
        } else if let Some(id) = key.strip_prefix(keys::HEALTH) {
            self.health.remove(id);
            self.recompute(id, rev, fx);
        } else if let Some(id) = key.strip_prefix(keys::RULES) {
            self.config_event(rev, fx);
            if self.rules.remove(id).is_some() {
                self.removed_rules.push_back((rev, id.to_string()));
                self.trim_tombstones();
                fx.config_visible = true;
            }
        } else if let Some(id) = key.strip_prefix(keys::NODES) {
            if self.nodes.remove(id).is_some() {
                fx.nodes_changed = true;
            }
        } else if let Some(rest) = key.strip_prefix(keys::CONNECTIONS) {
            if let Some((_, conn_id)) = rest.split_once('/') {
                if let Some(old) = self.connections.remove(conn_id) {
                    self.count_connection(&old, -1);
                }
            }
        } else if let Some(id) = key.strip_prefix(keys::SESSIONS) {
            if let Some(old) = self.sessions.remove(id) {
                self.count_session(&old.record, -1);
                if old.record.state != SessionState::Completed {
                    fx.session_removed.push(id.to_string());
                    if old.record.state == SessionState::Idle {
                        fx.sessions_expired.push(old.record);
                    }
                }
            }
        } else if key.starts_with(keys::COMMANDS) {
            self.commands.remove(key);
        }
    }

    fn recompute(&mut self, id: &str, rev: Revision, fx: &mut Effects) {
        self.config_event(rev, fx);
        let new = self
            .services
            .get(id)
            .map(|def| service_snapshot(def, self.runtime.get(id), self.health.get(id)));
        match new {
            None => {
                if self.snapshots.remove(id).is_some() {
                    if rev != 0 {
                        self.removed_services.push_back((rev, id.to_string()));
                        self.trim_tombstones();
                    }
                    fx.config_visible = true;
                }
            }
            Some(snap) => {
                if self.snapshots.get(id).is_none_or(|old| old.value != snap) {
                    self.snapshots.insert(
                        id.to_string(),
                        Versioned {
                            value: snap,
                            changed: rev,
                        },
                    );
                    fx.config_visible = true;
                }
            }
        }
    }

    fn trim_tombstones(&mut self) {
        for list in [&mut self.removed_services, &mut self.removed_rules] {
            while list.len() > HISTORY {
                if let Some((old, _)) = list.pop_front() {
                    self.floor = self.floor.max(old);
                }
            }
        }
    }

    fn count_connection(&mut self, c: &ConnectionRecord, delta: i64) {
        if c.status != ConnectionStatus::Active || c.target_service_id.is_empty() {
            return;
        }
        let load = self.load.entry(c.target_service_id.clone()).or_default();
        load.active_connections = load.active_connections.saturating_add_signed(delta);
    }

    fn count_session(&mut self, s: &SessionRecord, delta: i64) {
        if s.state == SessionState::Completed || s.service_id.is_empty() {
            return;
        }
        let load = self.load.entry(s.service_id.clone()).or_default();
        load.active_sessions = load.active_sessions.saturating_add_signed(delta);
    }

    fn put_connection(&mut self, c: ConnectionRecord) {
        if let Some(old) = self.connections.remove(&c.connection_id) {
            self.count_connection(&old, -1);
        }
        self.count_connection(&c, 1);
        self.connections.insert(c.connection_id.clone(), c);
    }

    fn put_session(&mut self, id: &str, s: SessionRecord, kv: &KeyValue, fx: &mut Effects) {
        if let Some(old) = self.sessions.remove(id) {
            self.count_session(&old.record, -1);
        }
        self.count_session(&s, 1);
        if s.state == SessionState::Completed {
            fx.session_removed.push(id.to_string());
        } else {
            fx.session_upserts.push(s.clone());
        }
        self.sessions.insert(
            id.to_string(),
            SessionEntry {
                record: s,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            },
        );
    }

    /// Services by id, for name resolution.
    pub fn service_by_id_or_name(&self, key: &str) -> Option<&ServiceDef> {
        self.services
            .get(key)
            .or_else(|| self.services.values().find(|s| s.name == key))
    }

    pub fn service(&self, id: &str) -> Option<&ServiceDef> {
        self.services.get(id)
    }

    /// The config version that includes every change up to `revision`: the last config event at
    /// or before it. `None` when this replica's history does not reach back that far.
    pub fn version_covering(&self, revision: Revision) -> Option<Revision> {
        if revision < self.floor {
            return None;
        }
        let idx = self.config_events.partition_point(|&r| r <= revision);
        Some(if idx == 0 {
            // No config event since the load: the loaded state, whose version is the floor.
            self.floor.min(revision)
        } else {
            self.config_events[idx - 1]
        })
    }

    /// Every service and rule (a full snapshot) at the current version.
    pub fn full_push(&self) -> pb::ConfigPush {
        let mut services: Vec<_> = self.snapshots.values().map(|v| v.value.clone()).collect();
        services.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        let mut rules: Vec<_> = self.rules.values().map(|v| v.value.clone()).collect();
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        pb::ConfigPush {
            version: self.config_version as u64,
            nonce: String::new(),
            full: true,
            base_version: 0,
            services,
            removed_services: Vec::new(),
            rules,
            removed_rules: Vec::new(),
        }
    }

    /// The changes since `base` as a delta, or `None` when `base` is older than the history.
    pub fn delta_since(&self, base: Revision) -> Option<pb::ConfigPush> {
        // A base newer than our last config event is fine once we have seen that revision:
        // nothing config-related changed in between (it came from another replica's labels).
        if base < self.floor || base > self.revision.max(self.config_version) {
            return None;
        }
        let services: Vec<_> = self
            .snapshots
            .values()
            .filter(|v| v.changed > base)
            .map(|v| v.value.clone())
            .collect();
        let rules: Vec<_> = self
            .rules
            .values()
            .filter(|v| v.changed > base)
            .map(|v| v.value.clone())
            .collect();
        let removed_services = removed_since(&self.removed_services, base, |id| {
            self.snapshots.contains_key(id)
        });
        let removed_rules =
            removed_since(&self.removed_rules, base, |id| self.rules.contains_key(id));
        Some(pb::ConfigPush {
            version: self.config_version.max(base) as u64,
            nonce: String::new(),
            full: false,
            base_version: base as u64,
            services,
            removed_services,
            rules,
            removed_rules,
        })
    }
}

fn removed_since(
    list: &VecDeque<(Revision, String)>,
    base: Revision,
    alive: impl Fn(&str) -> bool,
) -> Vec<String> {
    let start = list.partition_point(|(r, _)| *r <= base);
    let mut out: Vec<String> = list
        .iter()
        .skip(start)
        .filter(|(_, id)| !alive(id))
        .map(|(_, id)| id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}
