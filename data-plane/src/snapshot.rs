//! The proxy's view of the config: an immutable `Snapshot` built whole from a `ConfigPush`
//! (full, or a delta over the version it holds) and published as `Arc<Snapshot>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use myagent_proto::v1 as pb;

use crate::rules::Rule;

/// What the proxy needs to route to one service.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub endpoint: String,
    /// Path and query of the agent's endpoint (`/` when it has none).
    pub path: String,
    pub routable: bool,
    pub draining: bool,
    pub tags: Vec<String>,
    pub max_sessions: u32,
    pub proxy_metadata: bool,
    pub weight: u32,
    /// None = use the proxy's `--drain-timeout`.
    pub drain_timeout: Option<Duration>,
    pub source: pb::ServiceSnapshot,
}

impl Service {
    fn build(s: &pb::ServiceSnapshot) -> Result<Self, String> {
        let ctx = |e: &str| {
            format!(
                "service {:?}: {e}",
                if s.name.is_empty() {
                    &s.service_id
                } else {
                    &s.name
                }
            )
        };
        if s.service_id.is_empty() {
            return Err(ctx("service_id: empty"));
        }
        if s.name.is_empty() {
            return Err(ctx("name: empty"));
        }
        let port = u16::try_from(s.port).map_err(|_| ctx("port: out of range"))?;
        if s.host.is_empty() || (port == 0 && s.routable) {
            return Err(ctx("host/port: missing"));
        }
        let path = endpoint_path(&s.endpoint);
        let drain_timeout = if s.drain_timeout > 0.0 && s.drain_timeout.is_finite() {
            Some(Duration::from_secs_f64(s.drain_timeout.min(86_400.0)))
        } else {
            None
        };
        Ok(Service {
            id: s.service_id.clone(),
            name: s.name.clone(),
            host: s.host.clone(),
            port,
            endpoint: if s.endpoint.is_empty() {
                format!("ws://{}:{}", s.host, s.port)
            } else {
                s.endpoint.clone()
            },
            path,
            routable: s.routable,
            draining: s.draining,
            tags: s.tags.clone(),
            max_sessions: s.max_sessions,
            proxy_metadata: s.proxy_metadata,
            weight: s.weight,
            drain_timeout,
            source: s.clone(),
        })
    }

    /// A candidate for new connections.
    pub fn is_candidate(&self) -> bool {
        self.routable && !self.draining
    }

    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.iter().any(|x| x == t))
    }
}

/// `ws://h:p/a/b?x=1` → `/a/b?x=1`; no path → `/`.
fn endpoint_path(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map(|(_, r)| r).unwrap_or("");
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest[i..].to_string(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_string(),
    }
}

/// One immutable config version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    /// A config has been applied (from the control plane or the disk cache). Version 0 is a
    /// real config too: the store revision of an empty store.
    pub loaded: bool,
    pub services: HashMap<String, Arc<Service>>,
    pub by_name: HashMap<String, String>,
    /// Enabled rules, highest priority first (then name, for a stable order).
    pub rules: Vec<Arc<Rule>>,
    /// Every rule, enabled or not, by id (deltas replace by id).
    pub all_rules: HashMap<String, Arc<Rule>>,
}

impl Snapshot {
    pub fn service(&self, id: &str) -> Option<&Arc<Service>> {
        self.services.get(id)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).and_then(|id| self.services.get(id))
    }

    /// Builds the next snapshot from `push` on top of `self`; all or nothing.
    pub fn apply(&self, push: &pb::ConfigPush) -> Result<Snapshot, String> {
        let (mut services, mut all_rules) = if push.full {
            (HashMap::new(), HashMap::new())
        } else {
            if push.base_version != self.version {
                return Err(format!(
                    "base_version: delta over version {} but this proxy holds version {}",
                    push.base_version, self.version
                ));
            }
            (self.services.clone(), self.all_rules.clone())
        };
        for id in &push.removed_services {
            services.remove(id);
        }
        for id in &push.removed_rules {
            all_rules.remove(id);
        }
        for s in &push.services {
            let svc = Service::build(s)?;
            services.insert(svc.id.clone(), Arc::new(svc));
        }
        for r in &push.rules {
            let rule = Rule::compile(r)?;
            all_rules.insert(rule.id.clone(), Arc::new(rule));
        }
        let mut by_name = HashMap::with_capacity(services.len());
        for s in services.values() {
            if let Some(other) = by_name.insert(s.name.clone(), s.id.clone()) {
                return Err(format!(
                    "service {:?}: name used by two services ({other}, {})",
                    s.name, s.id
                ));
            }
        }
        let mut rules: Vec<Arc<Rule>> = all_rules.values().filter(|r| r.enabled).cloned().collect();
        rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(Snapshot {
            version: push.version,
            loaded: true,
            services,
            by_name,
            rules,
            all_rules,
        })
    }

    /// The snapshot as one full push, for the on-disk cache.
    pub fn to_full_push(&self) -> pb::ConfigPush {
        let mut services: Vec<_> = self.services.values().map(|s| s.source.clone()).collect();
        services.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        let mut rules: Vec<_> = self.all_rules.values().map(|r| r.source.clone()).collect();
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        pb::ConfigPush {
            version: self.version,
            nonce: String::new(),
            full: true,
            base_version: 0,
            services,
            removed_services: vec![],
            rules,
            removed_rules: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn svc(id: &str, name: &str) -> pb::ServiceSnapshot {
        pb::ServiceSnapshot {
            service_id: id.into(),
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 9000,
            endpoint: "ws://127.0.0.1:9000/agent".into(),
            status: "running".into(),
            health: "healthy".into(),
            routable: true,
            proxy_metadata: true,
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_paths() {
        assert_eq!(endpoint_path("ws://a:1"), "/");
        assert_eq!(endpoint_path("ws://a:1/x/y"), "/x/y");
        assert_eq!(endpoint_path("ws://a:1?k=v"), "/?k=v");
        assert_eq!(endpoint_path(""), "/");
    }

    #[test]
    fn full_then_delta_then_bad_delta() {
        let base = Snapshot::default();
        let full = pb::ConfigPush {
            version: 5,
            full: true,
            services: vec![svc("1", "a"), svc("2", "b")],
            ..Default::default()
        };
        let s5 = base.apply(&full).unwrap();
        assert_eq!(s5.version, 5);
        assert_eq!(s5.service_by_name("b").unwrap().id, "2");
        assert_eq!(s5.service("2").unwrap().path, "/agent");

        let delta = pb::ConfigPush {
            version: 7,
            base_version: 5,
            removed_services: vec!["1".into()],
            services: vec![svc("3", "c")],
            ..Default::default()
        };
        let s7 = s5.apply(&delta).unwrap();
        assert!(s7.service("1").is_none());
        assert!(s7.service_by_name("c").is_some());

        // A delta over a version we do not hold is refused.
        let stale = pb::ConfigPush {
            version: 9,
            base_version: 6,
            ..Default::default()
        };
        assert!(s7.apply(&stale).unwrap_err().starts_with("base_version"));

        // A bad rule rejects the whole push; the base snapshot is untouched.
        let bad = pb::ConfigPush {
            version: 8,
            base_version: 7,
            services: vec![svc("4", "d")],
            rules: vec![pb::RoutingRule {
                rule_id: "r".into(),
                name: "r".into(),
                conditions: vec![pb::Condition {
                    field: "path".into(),
                    operator: "regex".into(),
                    value: "(".into(),
                    values: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(s7.apply(&bad).is_err());
        assert!(s7.service("4").is_none());
    }

    #[test]
    fn rules_sorted_by_priority_and_only_enabled() {
        let rule = |id: &str, p: i32, enabled: bool| pb::RoutingRule {
            rule_id: id.into(),
            name: id.into(),
            priority: p,
            enabled,
            ..Default::default()
        };
        let push = pb::ConfigPush {
            version: 1,
            full: true,
            rules: vec![
                rule("low", 1, true),
                rule("high", 10, true),
                rule("off", 50, false),
            ],
            ..Default::default()
        };
        let s = Snapshot::default().apply(&push).unwrap();
        let ids: Vec<_> = s.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["high", "low"]);
        let round = Snapshot::default().apply(&s.to_full_push()).unwrap();
        assert_eq!(round.all_rules.len(), 3);
    }
}
