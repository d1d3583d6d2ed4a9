//! The routing decision of DESIGN §5, on one config snapshot: session → `service=` → rules by
//! priority → tag (or every service) → error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::HeaderMap;

use crate::load::Load;
use crate::rules::{Field, Rule};
use crate::snapshot::{Service, Snapshot};
use crate::strategy::{self, CandidateInfo, Strategy};

/// What the client asked for, parsed from the upgrade request.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    pub service: Option<String>,
    pub tag: Option<String>,
    pub session_id: Option<String>,
    pub hint: Option<Strategy>,
    pub headers: HeaderMap,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub client_ip: Option<IpAddr>,
    pub path: String,
}

impl RouteRequest {
    fn field(&self, f: &Field) -> Option<String> {
        match f {
            Field::Header(name) => {
                // Several values of one header are compared joined, as HTTP defines them.
                let mut vals = self
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                let first = vals.next()?;
                let rest: Vec<&str> = vals.collect();
                if rest.is_empty() {
                    Some(first.to_string())
                } else {
                    Some(
                        std::iter::once(first)
                            .chain(rest)
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                }
            }
            Field::Query(name) => self
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            Field::ClientIp => self
                .client_ip
                .map(|ip| crate::rules::canonical(ip).to_string()),
            Field::Path => Some(self.path.clone()),
        }
    }

    fn rule_matches(&self, rule: &Rule) -> bool {
        rule.conditions
            .iter()
            .all(|c| c.matches(self.field(&c.field).as_deref()))
    }
}

/// Where a connection goes.
#[derive(Debug, Clone)]
pub struct Decision {
    pub service: Arc<Service>,
    /// `routing_strategy` as reported to the client.
    pub strategy: &'static str,
    /// The claim on the service's capacity while the connection is being made (set by the
    /// caller once the decision is taken; see [`crate::load::Slot`]).
    pub slot: Option<Arc<crate::load::Slot>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// `service=` names no registered service (seed §4.2 `SERVICE_NOT_FOUND`; a known but
    /// stopped or unhealthy one is `ROUTING_FAILED`, DESIGN §9).
    ServiceNotFound(String),
    /// Nothing routable matched.
    RoutingFailed(String),
    /// Candidates exist but all are at `max_sessions`.
    InsufficientResources(String),
}

impl RouteError {
    /// `s` holds its `max_sessions` already.
    pub fn at_capacity(s: &Service) -> Self {
        RouteError::InsufficientResources(format!(
            "Service '{}' is at its max_sessions ({})",
            s.name, s.max_sessions
        ))
    }

    pub fn code(&self) -> &'static str {
        match self {
            RouteError::ServiceNotFound(_) => "SERVICE_NOT_FOUND",
            RouteError::RoutingFailed(_) => "ROUTING_FAILED",
            RouteError::InsufficientResources(_) => "INSUFFICIENT_RESOURCES",
        }
    }
    pub fn message(&self) -> &str {
        match self {
            RouteError::ServiceNotFound(m)
            | RouteError::RoutingFailed(m)
            | RouteError::InsufficientResources(m) => m,
        }
    }
}

/// Routing state that outlives snapshots (round-robin positions).
#[derive(Debug, Default)]
pub struct Router {
    rr: Mutex<HashMap<String, u64>>,
}

impl Router {
    fn next_rr(&self, key: &str) -> u64 {
        let mut m = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key.to_string()).or_insert(0);
        let v = *c;
        *c = c.wrapping_add(1);
        v
    }

    /// The decision for `req`. `bound_service` is the service the requested session is bound
    /// to (resolved by the caller); `session_id` feeds consistent hashing; `exclude` holds
    /// services that just failed this connection.
    pub fn decide(
        &self,
        snap: &Snapshot,
        load: &Load,
        req: &RouteRequest,
        bound_service: Option<&str>,
        session_id: &str,
        exclude: &[String],
    ) -> Result<Decision, RouteError> {
        let excluded = |s: &Service| exclude.contains(&s.id);
        let full = |s: &Service| {
            s.max_sessions > 0 && load.get(&s.id).sessions >= u64::from(s.max_sessions)
        };

        // 1. A live session whose service is routable keeps its service.
        if let Some(sid) = bound_service {
            if let Some(s) = snap.service(sid) {
                if s.is_candidate() && !excluded(s) {
                    return Ok(Decision {
                        service: s.clone(),
                        strategy: "session_affinity",
                        slot: None,
                    });
                }
            }
        }

        // 2. An explicit service.
        if let Some(name) = req.service.as_deref() {
            let s = snap
                .service_by_name(name)
                .or_else(|| snap.service(name))
                .ok_or_else(|| {
                    RouteError::ServiceNotFound(format!("Service '{name}' not found"))
                })?;
            if excluded(s) {
                return Err(RouteError::RoutingFailed(format!(
                    "Service '{name}' failed this connection"
                )));
            }
            if !s.is_candidate() {
                return Err(RouteError::RoutingFailed(format!(
                    "Service '{name}' {}",
                    s.unroutable_reason()
                )));
            }
            if full(s) {
                return Err(RouteError::at_capacity(s));
            }
            return Ok(Decision {
                service: s.clone(),
                strategy: "direct",
                slot: None,
            });
        }

        let tag = req.tag.as_deref();
        let mut saw_full = false;
        let mut candidates = |target_tags: &[String]| -> Vec<Arc<Service>> {
            // In name order, so round-robin and ties behave the same on every proxy; only the
            // services of one wanted tag are looked at.
            let from = tag.or(target_tags.first().map(String::as_str));
            snap.order
                .ids(from)
                .filter_map(|id| snap.services.get(id))
                .filter(|s| s.is_candidate() && !excluded(s) && s.has_tags(target_tags))
                .filter(|s| tag.is_none_or(|t| s.tags.iter().any(|x| x == t)))
                .filter(|s| {
                    let f = full(s);
                    saw_full |= f;
                    !f
                })
                .cloned()
                .collect()
        };

        // 3. Enabled rules by priority; the first that matches and has a candidate wins.
        for rule in &snap.rules {
            if !req.rule_matches(rule) {
                continue;
            }
            let cands = candidates(&rule.target_tags);
            if cands.is_empty() {
                continue;
            }
            let key = match &rule.hash_key {
                Some(f) => req.field(f).unwrap_or_default(),
                None => session_id.to_string(),
            };
            let s = self.pick(
                rule.strategy,
                &cands,
                load,
                &format!("rule:{}", rule.id),
                &key,
            );
            return Ok(Decision {
                service: s,
                strategy: rule.strategy.as_str(),
                slot: None,
            });
        }

        // 4. Candidates by tag (every routable service when no tag is given).
        let cands = candidates(&[]);
        if !cands.is_empty() {
            let strat = req.hint.unwrap_or(Strategy::LeastConnections);
            let s = self.pick(
                strat,
                &cands,
                load,
                &format!("tag:{}", tag.unwrap_or("")),
                session_id,
            );
            return Ok(Decision {
                service: s,
                strategy: strat.as_str(),
                slot: None,
            });
        }

        // 5. Nothing.
        let what = match tag {
            Some(t) => format!(" with tag '{t}'"),
            None => String::new(),
        };
        if saw_full {
            Err(RouteError::InsufficientResources(format!(
                "All services{what} are at their max_sessions"
            )))
        } else {
            Err(RouteError::RoutingFailed(format!(
                "No healthy service available for routing{what}"
            )))
        }
    }

    fn pick(
        &self,
        strat: Strategy,
        cands: &[Arc<Service>],
        load: &Load,
        rr_key: &str,
        hash_key: &str,
    ) -> Arc<Service> {
        let infos: Vec<CandidateInfo<'_>> = cands
            .iter()
            .map(|s| CandidateInfo {
                id: &s.id,
                connections: if strat == Strategy::LeastConnections {
                    load.get(&s.id).connections
                } else {
                    0
                },
                weight: s.weight,
            })
            .collect();
        let rr = match strat {
            Strategy::RoundRobin | Strategy::LeastConnections => self.next_rr(rr_key),
            _ => 0,
        };
        cands[strategy::pick(strat, &infos, rr, hash_key)].clone()
    }
}
