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

    /// Why a service that is not a candidate takes no new connections, for error messages.
    pub fn unroutable_reason(&self) -> String {
        let (status, health) = (self.source.status.as_str(), self.source.health.as_str());
        if self.draining {
            "is draining".into()
        } else if status != "running" {
            format!("is {status}, not running")
        } else if health == "unhealthy" {
            "is unhealthy".into()
        } else {
            // Running and healthy, but its health keeps changing: damped until stable.
            "is running but flapping: held out of routing until its health checks are stable".into()
        }
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

/// One service's place in [`Order`]: its name, then its id.
type Entry = (Arc<str>, Arc<str>);

/// Service ids in name order: every service, and the services of each tag. Routing takes its
/// candidates from here, in the stable order it needs, instead of scanning and sorting every
/// service for each connection.
#[derive(Debug, Default, Clone)]
pub struct Order {
    all: Vec<Entry>,
    by_tag: HashMap<String, Vec<Entry>>,
}

impl Order {
    /// The ids of the services with `tag` (all services for `None`), in name order.
    pub fn ids(&self, tag: Option<&str>) -> impl Iterator<Item = &Arc<str>> {
        let list = match tag {
            None => &self.all[..],
            Some(t) => self.by_tag.get(t).map_or(&[][..], |v| &v[..]),
        };
        list.iter().map(|(_, id)| id)
    }

    fn insert(&mut self, name: &Arc<str>, id: &Arc<str>, tags: &[String]) {
        let entry = (name.clone(), id.clone());
        place(&mut self.all, entry.clone());
        for t in dedup(tags) {
            place(self.by_tag.entry(t.clone()).or_default(), entry.clone());
        }
    }

    fn remove(&mut self, name: &str, tags: &[String]) {
        unplace(&mut self.all, name);
        for t in dedup(tags) {
            if let Some(list) = self.by_tag.get_mut(t.as_str()) {
                unplace(list, name);
                if list.is_empty() {
                    self.by_tag.remove(t.as_str());
                }
            }
        }
    }

    fn build(
        services: &HashMap<Arc<str>, Arc<Service>>,
        names: &HashMap<Arc<str>, Arc<str>>,
    ) -> Self {
        let mut o = Order::default();
        for (name, id) in names {
            if let Some(s) = services.get(id) {
                o.all.push((name.clone(), id.clone()));
                for t in dedup(&s.tags) {
                    o.by_tag
                        .entry(t.clone())
                        .or_default()
                        .push((name.clone(), id.clone()));
                }
            }
        }
        o.all.sort_unstable();
        for list in o.by_tag.values_mut() {
            list.sort_unstable();
        }
        o
    }
}

/// A service's tags, each once.
fn dedup(tags: &[String]) -> impl Iterator<Item = &String> {
    tags.iter()
        .enumerate()
        .filter(|(i, t)| !tags[..*i].contains(t))
        .map(|(_, t)| t)
}

fn place(list: &mut Vec<Entry>, e: Entry) {
    let at = list.partition_point(|(n, _)| n < &e.0);
    list.insert(at, e);
}

fn unplace(list: &mut Vec<Entry>, name: &str) {
    if let Ok(at) = list.binary_search_by(|(n, _)| (**n).cmp(name)) {
        list.remove(at);
    }
}

/// One immutable config version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    /// A config has been applied (from the control plane or the disk cache). Version 0 is a
    /// real config too: the store revision of an empty store.
    pub loaded: bool,
    /// Keys are shared strings: a delta copies the maps of the snapshot it applies to, which
    /// costs a reference count per service instead of an allocation.
    pub services: HashMap<Arc<str>, Arc<Service>>,
    /// Service name → id.
    pub by_name: HashMap<Arc<str>, Arc<str>>,
    /// Service ids in name order, all and by tag (shared with the previous version when a
    /// delta changes no name and no tags).
    pub order: Arc<Order>,
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
        // A delta edits the order in place when it changes names or tags (a copy of it: this
        // snapshot stays as it is); a full push builds it once at the end.
        let mut order: Option<Order> = None;
        let (mut services, mut by_name, mut all_rules) = if push.full {
            (HashMap::new(), HashMap::new(), HashMap::new())
        } else {
            if push.base_version != self.version {
                return Err(format!(
                    "base_version: delta over version {} but this proxy holds version {}",
                    push.base_version, self.version
                ));
            }
            (
                self.services.clone(),
                self.by_name.clone(),
                self.all_rules.clone(),
            )
        };
        // The names of removed and replaced services go first (a delta may swap two names),
        // then the new ones come in, each checked against the names that stay.
        let mut edit = |f: &mut dyn FnMut(&mut Order)| {
            if !push.full {
                f(order.get_or_insert_with(|| (*self.order).clone()));
            }
        };
        for id in &push.removed_services {
            if let Some(old) = services.remove(id.as_str()) {
                by_name.remove(old.name.as_str());
                edit(&mut |o| o.remove(&old.name, &old.tags));
            }
        }
        for id in &push.removed_rules {
            all_rules.remove(id);
        }
        let mut built = Vec::with_capacity(push.services.len());
        let mut seen = std::collections::HashSet::with_capacity(push.services.len());
        for s in &push.services {
            if !seen.insert(s.service_id.as_str()) {
                return Err(format!("service {:?}: twice in one push", s.service_id));
            }
            let svc = Service::build(s)?;
            // Whether its place in the order changes.
            let mut moved = true;
            if let Some(old) = services.get(svc.id.as_str()) {
                by_name.remove(old.name.as_str());
                moved = old.name != svc.name || old.tags != svc.tags;
                if moved {
                    edit(&mut |o| o.remove(&old.name, &old.tags));
                }
            }
            built.push((svc, moved));
        }
        for (svc, moved) in built {
            let id: Arc<str> = Arc::from(svc.id.as_str());
            let name: Arc<str> = Arc::from(svc.name.as_str());
            if moved {
                edit(&mut |o| o.insert(&name, &id, &svc.tags));
            }
            if let Some(other) = by_name.insert(name, id.clone()) {
                if other != id {
                    return Err(format!(
                        "service {:?}: name used by two services ({other}, {id})",
                        svc.name
                    ));
                }
            }
            services.insert(id, Arc::new(svc));
        }
        for r in &push.rules {
            let rule = Rule::compile(r)?;
            all_rules.insert(rule.id.clone(), Arc::new(rule));
        }
        let mut rules: Vec<Arc<Rule>> = all_rules.values().filter(|r| r.enabled).cloned().collect();
        rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.id.cmp(&b.id))
        });
        let order = match order {
            _ if push.full => Arc::new(Order::build(&services, &by_name)),
            Some(edited) => Arc::new(edited),
            None => self.order.clone(),
        };
        Ok(Snapshot {
            version: push.version,
            loaded: true,
            services,
            by_name,
            order,
            rules,
            all_rules,
        })
    }

    /// The snapshot as one full `ConfigPush`, encoded for the on-disk cache straight from the
    /// pushed messages it holds (in id order), without copying them: the same bytes as
    /// encoding the equivalent `ConfigPush`.
    pub fn encode_full_push(&self) -> Vec<u8> {
        use prost::encoding::{bool as boolean, message, uint64};
        let mut services: Vec<&pb::ServiceSnapshot> =
            self.services.values().map(|s| &s.source).collect();
        services.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        let mut rules: Vec<&pb::RoutingRule> = self.all_rules.values().map(|r| &r.source).collect();
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        let mut buf = Vec::new();
        // `ConfigPush` fields: 1 version, 3 full, 5 services, 7 rules (proto/.../proxy.proto).
        if self.version != 0 {
            uint64::encode(1, &self.version, &mut buf);
        }
        boolean::encode(3, &true, &mut buf);
        for s in services {
            message::encode(5, s, &mut buf);
        }
        for r in rules {
            message::encode(7, r, &mut buf);
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

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

    fn order_of(s: &Snapshot, tag: Option<&str>) -> Vec<String> {
        s.order.ids(tag).map(|id| id.to_string()).collect()
    }

    /// Random deltas (new services, renames, tag changes, status changes, removals): the
    /// order kept by editing is always the one built from scratch, and a delta that moves
    /// nothing shares the previous one.
    #[test]
    fn the_order_follows_every_delta() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let tagged = |id: u64, name: u64, tags: &[u64]| {
            let mut s = svc(&format!("id{id}"), &format!("n{name}"));
            s.tags = tags.iter().map(|t| format!("t{t}")).collect();
            s
        };
        let mut snap = Snapshot::default();
        let mut held: HashMap<u64, pb::ServiceSnapshot> = HashMap::new();
        for version in 1..400u64 {
            let mut push = pb::ConfigPush {
                version,
                base_version: version - 1,
                full: version == 1 || next(50) == 0,
                ..Default::default()
            };
            for _ in 0..1 + next(3) {
                let id = next(30);
                if push
                    .services
                    .iter()
                    .any(|s| s.service_id == format!("id{id}"))
                {
                    continue;
                }
                match next(4) {
                    0 if held.contains_key(&id) => {
                        held.remove(&id);
                        push.removed_services.push(format!("id{id}"));
                    }
                    1 if held.contains_key(&id) => {
                        // Status only: its place does not change.
                        let s = held.get_mut(&id).unwrap();
                        s.routable = !s.routable;
                        push.services.push(s.clone());
                    }
                    _ => {
                        // New, renamed or re-tagged, with a name no other service holds.
                        let name = (0..).map(|_| next(60)).find(|n| {
                            held.iter()
                                .all(|(i, s)| *i == id || s.name != format!("n{n}"))
                        });
                        let tags: Vec<u64> = (0..next(4)).map(|_| next(5)).collect();
                        let s = tagged(id, name.unwrap(), &tags);
                        held.insert(id, s.clone());
                        push.services.push(s);
                    }
                }
            }
            if push.full {
                push.services = held.values().cloned().collect();
                push.removed_services.clear();
            }
            let before = snap.order.clone();
            let next_snap = snap.apply(&push).unwrap();
            let rebuilt = Order::build(&next_snap.services, &next_snap.by_name);
            assert_eq!(next_snap.order.all, rebuilt.all, "version {version}");
            assert_eq!(next_snap.order.by_tag, rebuilt.by_tag, "version {version}");
            let moves = push.full
                || !push.removed_services.is_empty()
                || push.services.iter().any(|s| {
                    snap.service(&s.service_id)
                        .is_none_or(|old| old.name != s.name || old.tags != s.tags)
                });
            assert_eq!(
                !moves,
                Arc::ptr_eq(&before, &next_snap.order),
                "version {version}"
            );
            snap = next_snap;
        }
        assert!(snap.order.all.len() > 5, "the run kept some services");
    }

    #[test]
    fn the_order_is_by_name_and_lists_a_tag_once() {
        let mut a = svc("1", "zeta");
        a.tags = vec!["x".into(), "x".into(), "y".into()];
        let mut b = svc("2", "alpha");
        b.tags = vec!["x".into()];
        let s = Snapshot::default()
            .apply(&pb::ConfigPush {
                version: 1,
                full: true,
                services: vec![a, b],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(order_of(&s, None), ["2", "1"]);
        // A push naming one service twice is refused.
        let twice = pb::ConfigPush {
            version: 2,
            base_version: 1,
            services: vec![svc("3", "c"), svc("3", "d")],
            ..Default::default()
        };
        assert!(s.apply(&twice).unwrap_err().contains("twice"));
        assert_eq!(order_of(&s, Some("x")), ["2", "1"]);
        assert_eq!(order_of(&s, Some("y")), ["1"]);
        assert!(order_of(&s, Some("nope")).is_empty());
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
    fn deltas_move_names_and_refuse_a_name_in_use() {
        let base = Snapshot::default()
            .apply(&pb::ConfigPush {
                version: 1,
                full: true,
                services: vec![svc("1", "a"), svc("2", "b"), svc("3", "c")],
                ..Default::default()
            })
            .unwrap();
        // Two services swap names in one delta.
        let swapped = base
            .apply(&pb::ConfigPush {
                version: 2,
                base_version: 1,
                services: vec![svc("1", "b"), svc("2", "a")],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(swapped.service_by_name("a").unwrap().id, "2");
        assert_eq!(swapped.service_by_name("b").unwrap().id, "1");
        assert_eq!(swapped.service_by_name("c").unwrap().id, "3");
        assert_eq!(swapped.by_name.len(), 3);
        // A removed service's name is free for another one.
        let moved = swapped
            .apply(&pb::ConfigPush {
                version: 3,
                base_version: 2,
                removed_services: vec!["3".into()],
                services: vec![svc("4", "c")],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(moved.service_by_name("c").unwrap().id, "4");
        // A name another service keeps is refused, and nothing of the delta is applied.
        let err = moved
            .apply(&pb::ConfigPush {
                version: 4,
                base_version: 3,
                services: vec![svc("5", "a")],
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.contains("name used by two services"), "{err}");
        assert!(moved.service("5").is_none());
        assert_eq!(moved.service_by_name("a").unwrap().id, "2");
    }

    #[test]
    fn the_cache_encoding_is_the_full_push_encoding() {
        let mut rule = pb::RoutingRule {
            rule_id: "r2".into(),
            name: "r2".into(),
            priority: 3,
            enabled: true,
            ..Default::default()
        };
        let rules = vec![rule.clone(), {
            rule.rule_id = "r1".into();
            rule.name = "r1".into();
            rule
        }];
        let services = vec![svc("2", "b"), svc("1", "a"), svc("3", "c")];
        let snap = Snapshot::default()
            .apply(&pb::ConfigPush {
                version: 9,
                full: true,
                services: services.clone(),
                rules: rules.clone(),
                ..Default::default()
            })
            .unwrap();
        let mut sorted = services;
        sorted.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        let mut sorted_rules = rules;
        sorted_rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        let expected = pb::ConfigPush {
            version: 9,
            full: true,
            services: sorted,
            rules: sorted_rules,
            ..Default::default()
        };
        assert_eq!(snap.encode_full_push(), expected.encode_to_vec());
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
        let round = Snapshot::default()
            .apply(&pb::ConfigPush::decode(s.encode_full_push().as_slice()).unwrap())
            .unwrap();
        assert_eq!(round.all_rules.len(), 3);
    }
}
