//! Routing-rule conditions compiled once per config snapshot and matched per connection.

use std::net::IpAddr;

use ipnet::IpNet;
use myagent_proto::v1 as pb;
use regex::Regex;

use crate::strategy::Strategy;

/// What a rule condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Header name, lower-cased (headers match case-insensitively).
    Header(String),
    Query(String),
    ClientIp,
    Path,
}

impl Field {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(h) = s.strip_prefix("header.") {
            if h.is_empty() {
                return Err("field: empty header name".into());
            }
            return Ok(Field::Header(h.to_ascii_lowercase()));
        }
        if let Some(q) = s.strip_prefix("query.") {
            if q.is_empty() {
                return Err("field: empty query parameter name".into());
            }
            return Ok(Field::Query(q.to_string()));
        }
        match s {
            "client_ip" => Ok(Field::ClientIp),
            "path" => Ok(Field::Path),
            other => Err(format!(
                "field: unknown field {other:?} (header.<name>, query.<name>, client_ip, path)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Regex(Regex),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Cidr(Vec<IpNet>),
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
}

fn list(c: &pb::Condition) -> Vec<String> {
    if !c.values.is_empty() {
        c.values.clone()
    } else {
        c.value
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

impl Condition {
    pub fn compile(c: &pb::Condition) -> Result<Self, String> {
        let field = Field::parse(&c.field)?;
        let op = match c.operator.as_str() {
            "equals" => Op::Equals(c.value.clone()),
            "not_equals" => Op::NotEquals(c.value.clone()),
            "contains" => Op::Contains(c.value.clone()),
            "starts_with" => Op::StartsWith(c.value.clone()),
            "ends_with" => Op::EndsWith(c.value.clone()),
            "regex" => {
                Op::Regex(Regex::new(&c.value).map_err(|e| format!("value: bad regex: {e}"))?)
            }
            "in" => Op::In(list(c)),
            "not_in" => Op::NotIn(list(c)),
            "exists" => Op::Exists,
            "not_exists" => Op::NotExists,
            "cidr" => {
                let nets = list(c)
                    .iter()
                    .map(|v| parse_net(v).ok_or_else(|| format!("value: bad CIDR {v:?}")))
                    .collect::<Result<Vec<_>, _>>()?;
                if nets.is_empty() {
                    return Err("value: cidr needs at least one network".into());
                }
                Op::Cidr(nets)
            }
            other => return Err(format!("operator: unknown operator {other:?}")),
        };
        Ok(Condition { field, op })
    }

    /// Whether the condition holds for `value` (None = the field is absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            // An absent field is "not equal" to anything and "not in" any list.
            (Op::NotEquals(_), None) | (Op::NotIn(_), None) => true,
            (_, None) => false,
            (Op::Equals(x), Some(v)) => v == x,
            (Op::NotEquals(x), Some(v)) => v != x,
            (Op::Contains(x), Some(v)) => v.contains(x.as_str()),
            (Op::StartsWith(x), Some(v)) => v.starts_with(x.as_str()),
            (Op::EndsWith(x), Some(v)) => v.ends_with(x.as_str()),
            (Op::Regex(r), Some(v)) => r.is_match(v),
            (Op::In(xs), Some(v)) => xs.iter().any(|x| x == v),
            (Op::NotIn(xs), Some(v)) => !xs.iter().any(|x| x == v),
            (Op::Cidr(nets), Some(v)) => match v.parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = canonical(ip);
                    nets.iter().any(|n| n.contains(&ip))
                }
                Err(_) => false,
            },
        }
    }
}

/// A bare address counts as a /32 (or /128) network.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4-mapped IPv6 clients (dual-stack listeners) match IPv4 networks.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A compiled routing rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
    pub conditions: Vec<Condition>,
    pub strategy: Strategy,
    pub target_tags: Vec<String>,
    /// Field whose value feeds consistent hashing; None = the session id.
    pub hash_key: Option<Field>,
    /// The rule as received, kept for the on-disk cache.
    pub source: pb::RoutingRule,
}

impl Rule {
    pub fn compile(r: &pb::RoutingRule) -> Result<Self, String> {
        let ctx = |e: String| {
            format!(
                "rule {:?}: {e}",
                if r.name.is_empty() {
                    &r.rule_id
                } else {
                    &r.name
                }
            )
        };
        if r.rule_id.is_empty() {
            return Err(ctx("rule_id: empty".into()));
        }
        let conditions = r
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| Condition::compile(c).map_err(|e| ctx(format!("conditions[{i}].{e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let strategy = if r.target_strategy.is_empty() {
            Strategy::LeastConnections
        } else {
            Strategy::parse(&r.target_strategy).map_err(|e| ctx(format!("target_strategy: {e}")))?
        };
        let hash_key = match r.hash_key.as_str() {
            "" | "session_id" => None,
            k => Some(Field::parse(k).map_err(|e| ctx(format!("hash_key: {e}")))?),
        };
        Ok(Rule {
            id: r.rule_id.clone(),
            name: r.name.clone(),
            priority: r.priority,
            enabled: r.enabled,
            conditions,
            strategy,
            target_tags: r.target_tags.clone(),
            hash_key,
            source: r.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(field: &str, op: &str, value: &str) -> Condition {
        Condition::compile(&pb::Condition {
            field: field.into(),
            operator: op.into(),
            value: value.into(),
            values: vec![],
        })
        .unwrap()
    }

    #[test]
    fn every_operator() {
        assert!(cond("path", "equals", "/ws").matches(Some("/ws")));
        assert!(!cond("path", "equals", "/ws").matches(None));
        assert!(cond("path", "not_equals", "/x").matches(Some("/ws")));
        assert!(cond("path", "not_equals", "/x").matches(None));
        assert!(cond("path", "contains", "w").matches(Some("/ws")));
        assert!(cond("path", "starts_with", "/w").matches(Some("/ws")));
        assert!(cond("path", "ends_with", "s").matches(Some("/ws")));
        assert!(!cond("path", "ends_with", "x").matches(Some("/ws")));
        assert!(cond("query.a", "regex", "^v[0-9]+$").matches(Some("v12")));
        assert!(!cond("query.a", "regex", "^v[0-9]+$").matches(Some("x12")));
        assert!(cond("query.a", "in", "a, b").matches(Some("b")));
        assert!(!cond("query.a", "in", "a,b").matches(Some("c")));
        assert!(cond("query.a", "not_in", "a,b").matches(Some("c")));
        assert!(cond("query.a", "not_in", "a,b").matches(None));
        assert!(cond("header.X-A", "exists", "").matches(Some("")));
        assert!(!cond("header.X-A", "exists", "").matches(None));
        assert!(cond("header.X-A", "not_exists", "").matches(None));
        assert!(cond("client_ip", "cidr", "10.0.0.0/8,192.168.1.1").matches(Some("10.2.3.4")));
        assert!(cond("client_ip", "cidr", "10.0.0.0/8,192.168.1.1").matches(Some("192.168.1.1")));
        assert!(!cond("client_ip", "cidr", "10.0.0.0/8").matches(Some("11.0.0.1")));
        assert!(cond("client_ip", "cidr", "127.0.0.0/8").matches(Some("::ffff:127.0.0.1")));
        assert!(!cond("client_ip", "cidr", "10.0.0.0/8").matches(Some("garbage")));
    }

    #[test]
    fn in_uses_values_when_given() {
        let c = Condition::compile(&pb::Condition {
            field: "query.x".into(),
            operator: "in".into(),
            value: String::new(),
            values: vec!["a,b".into(), "c".into()],
        })
        .unwrap();
        assert!(c.matches(Some("a,b")));
        assert!(c.matches(Some("c")));
        assert!(!c.matches(Some("a")));
    }

    #[test]
    fn header_names_are_lowercased() {
        assert_eq!(
            Field::parse("header.X-User-Tier").unwrap(),
            Field::Header("x-user-tier".into())
        );
    }

    #[test]
    fn invalid_conditions_name_the_field() {
        let bad = |f: &str, o: &str, v: &str| {
            Condition::compile(&pb::Condition {
                field: f.into(),
                operator: o.into(),
                value: v.into(),
                values: vec![],
            })
            .unwrap_err()
        };
        assert!(bad("body", "equals", "x").starts_with("field"));
        assert!(bad("path", "like", "x").starts_with("operator"));
        assert!(bad("path", "regex", "(").starts_with("value"));
        assert!(bad("client_ip", "cidr", "10.0.0.0/33").starts_with("value"));
    }
}
