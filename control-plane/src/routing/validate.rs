//! Validation and normalisation of routing rules (DESIGN §5). Errors are `INVALID_REQUEST`
//! naming the field as a dotted path, e.g. `conditions[0].operator`.
//!
//! Normalisation (so the proxies match on one canonical form):
//! - `header.<Name>` becomes `header.<name>` (headers are case-insensitive);
//! - `in` / `not_in` take `values`; a comma list in `value` is accepted and split into `values`;
//! - `cidr` (only on `client_ip`) takes one CIDR or bare IP, or a comma list, in `value` (or
//!   `values`); every entry must parse;
//! - `regex` must compile within a size limit;
//! - `exists` / `not_exists` ignore `value` (cleared).

use crate::error::{Error, Result};
use crate::model::{Condition, CONDITION_OPERATORS, STRATEGIES};

pub const MAX_RULE_NAME: usize = 128;
pub const MAX_CONDITIONS: usize = 64;
pub const MAX_VALUE_LEN: usize = 4096;
pub const MAX_VALUES: usize = 1024;
/// Compiled-size limit of a condition regex (the regex crate's default is 10 MiB; a rule runs
/// on every connection, so keep it far smaller).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
pub const DEFAULT_STRATEGY: &str = "least_connections";
pub const DEFAULT_HASH_KEY: &str = "session_id";

/// Rule names: 1–128 printable Unicode characters (DESIGN §9), no leading/trailing spaces.
pub fn validate_rule_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name", "name is required"));
    }
    if name.chars().count() > MAX_RULE_NAME {
        return Err(Error::invalid(
            "name",
            format!("name must be at most {MAX_RULE_NAME} characters"),
        ));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(Error::invalid(
            "name",
            "name must be printable, without control characters or surrounding spaces",
        ));
    }
    if name.contains('/') {
        // Names are part of a store key (`rule-names/{name}`); lookups treat '/' as not found.
        return Err(Error::invalid("name", "name must not contain '/'"));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err(Error::invalid(
            "name",
            "name must not be a UUID (UUIDs are rule ids)",
        ));
    }
    Ok(())
}

pub fn validate_strategy(strategy: &str) -> Result<String> {
    let s = strategy.trim();
    if s.is_empty() {
        return Ok(DEFAULT_STRATEGY.to_string());
    }
    if !STRATEGIES.contains(&s) {
        return Err(Error::invalid(
            "target_strategy",
            format!("unknown strategy '{s}' (one of: {})", STRATEGIES.join(", ")),
        ));
    }
    Ok(s.to_string())
}

/// A condition field in canonical form, or an error naming `path`.
pub fn normalize_field(field: &str, path: &str) -> Result<String> {
    let f = field.trim();
    if f == "client_ip" || f == "path" {
        return Ok(f.to_string());
    }
    if let Some(name) = f.strip_prefix("header.") {
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Error::invalid(
                path,
                format!("invalid header name in '{f}'"),
            ));
        }
        return Ok(format!("header.{}", name.to_ascii_lowercase()));
    }
    if let Some(name) = f.strip_prefix("query.") {
        if name.is_empty()
            || name.len() > 256
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::invalid(
                path,
                format!("invalid query parameter name in '{f}'"),
            ));
        }
        return Ok(f.to_string());
    }
    Err(Error::invalid(
        path,
        format!("unknown field '{f}' (header.<name>, query.<name>, client_ip or path)"),
    ))
}

pub fn validate_conditions(conditions: Vec<Condition>) -> Result<Vec<Condition>> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(Error::invalid(
            "conditions",
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    conditions
        .into_iter()
        .enumerate()
        .map(|(i, c)| validate_condition(c, &format!("conditions[{i}]")))
        .collect()
}

fn validate_condition(c: Condition, at: &str) -> Result<Condition> {
    let field = normalize_field(&c.field, &format!("{at}.field"))?;
    let operator = c.operator.trim().to_string();
    if !CONDITION_OPERATORS.contains(&operator.as_str()) {
        return Err(Error::invalid(
            format!("{at}.operator"),
            format!(
                "unknown operator '{operator}' (one of: {})",
                CONDITION_OPERATORS.join(", ")
            ),
        ));
    }
    let value_path = format!("{at}.value");
    let values_path = format!("{at}.values");
    if c.value.len() > MAX_VALUE_LEN {
        return Err(Error::invalid(
            &value_path,
            format!("value must be at most {MAX_VALUE_LEN} bytes"),
        ));
    }
    if c.values.len() > MAX_VALUES || c.values.iter().any(|v| v.len() > MAX_VALUE_LEN) {
        return Err(Error::invalid(
            &values_path,
            format!("at most {MAX_VALUES} values of at most {MAX_VALUE_LEN} bytes"),
        ));
    }
    let (value, values) = match operator.as_str() {
        "exists" | "not_exists" => (String::new(), Vec::new()),
        "in" | "not_in" => {
            let values = if c.values.is_empty() {
                split_list(&c.value)
            } else {
                c.values
            };
            if values.is_empty() {
                return Err(Error::invalid(
                    &values_path,
                    format!("operator '{operator}' needs values"),
                ));
            }
            (String::new(), values)
        }
        "cidr" => {
            if field != "client_ip" {
                return Err(Error::invalid(
                    format!("{at}.operator"),
                    "operator 'cidr' applies only to field 'client_ip'",
                ));
            }
            let (list, path) = if c.values.is_empty() {
                (split_list(&c.value), value_path.clone())
            } else {
                (c.values.clone(), values_path.clone())
            };
            if list.is_empty() {
                return Err(Error::invalid(
                    &path,
                    "operator 'cidr' needs a CIDR such as 10.0.0.0/8",
                ));
            }
            for net in &list {
                if parse_net(net).is_none() {
                    return Err(Error::invalid(&path, format!("invalid CIDR '{net}'")));
                }
            }
            (c.value, c.values)
        }
        "regex" => {
            if c.value.is_empty() {
                return Err(Error::invalid(
                    &value_path,
                    "operator 'regex' needs a pattern in value",
                ));
            }
            regex::RegexBuilder::new(&c.value)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| Error::invalid(&value_path, format!("invalid regex: {e}")))?;
            (c.value, Vec::new())
        }
        _ => {
            if c.value.is_empty() {
                return Err(Error::invalid(
                    &value_path,
                    format!("operator '{operator}' needs a value"),
                ));
            }
            (c.value, Vec::new())
        }
    };
    Ok(Condition {
        field,
        operator,
        value,
        values,
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// A network or a bare address (taken as a host network).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `consistent_hash` hashes on `session_id` (default), `client_ip`, `path`, or a header/query
/// field in condition-field form. Stored for every strategy (so switching strategy back keeps
/// it), filled with the default for `consistent_hash`.
pub fn validate_hash_key(hash_key: &str, strategy: &str) -> Result<String> {
    let k = hash_key.trim();
    if k.is_empty() {
        return Ok(if strategy == "consistent_hash" {
            DEFAULT_HASH_KEY.to_string()
        } else {
            String::new()
        });
    }
    if k == DEFAULT_HASH_KEY {
        return Ok(k.to_string());
    }
    normalize_field(k, "hash_key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(field: &str, op: &str, value: &str) -> Condition {
        Condition {
            field: field.into(),
            operator: op.into(),
            value: value.into(),
            values: vec![],
        }
    }

    fn field_of(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn good_conditions_normalize() {
        let out = validate_conditions(vec![
            cond("header.X-User-Tier", "equals", "vip"),
            cond("query.region", "in", "eu, us"),
            cond("client_ip", "cidr", "10.0.0.0/8,192.168.1.1"),
            cond("path", "regex", "^/chat/[0-9]+$"),
            cond("header.x-debug", "exists", "ignored"),
        ])
        .unwrap();
        assert_eq!(out[0].field, "header.x-user-tier");
        assert_eq!(out[1].values, vec!["eu", "us"]);
        assert_eq!(out[4].value, "");
    }

    #[test]
    fn bad_conditions_name_the_field() {
        let cases = [
            (cond("cookie.x", "equals", "a"), "conditions[0].field"),
            (cond("header.", "equals", "a"), "conditions[0].field"),
            (cond("header.x", "like", "a"), "conditions[0].operator"),
            (cond("header.x", "equals", ""), "conditions[0].value"),
            (cond("path", "regex", "(unclosed"), "conditions[0].value"),
            (cond("path", "cidr", "10.0.0.0/8"), "conditions[0].operator"),
            (
                cond("client_ip", "cidr", "10.0.0.0/33"),
                "conditions[0].value",
            ),
            (cond("client_ip", "in", ""), "conditions[0].values"),
        ];
        for (c, field) in cases {
            assert_eq!(
                field_of(validate_conditions(vec![c.clone()])),
                field,
                "{c:?}"
            );
        }
        let second = vec![cond("path", "equals", "/"), cond("path", "bogus", "/")];
        assert_eq!(
            field_of(validate_conditions(second)),
            "conditions[1].operator"
        );
    }

    #[test]
    fn huge_regexes_are_rejected() {
        let c = cond("path", "regex", "(a{1000}){1000}");
        assert_eq!(
            field_of(validate_conditions(vec![c])),
            "conditions[0].value"
        );
    }

    #[test]
    fn names_and_strategies() {
        validate_rule_name("VIP用户路由").unwrap();
        assert_eq!(field_of(validate_rule_name("")), "name");
        assert_eq!(field_of(validate_rule_name(&"x".repeat(129))), "name");
        assert_eq!(field_of(validate_rule_name("a\u{7}b")), "name");
        assert_eq!(validate_strategy("").unwrap(), "least_connections");
        assert_eq!(field_of(validate_strategy("fastest")), "target_strategy");
        assert_eq!(
            validate_hash_key("", "consistent_hash").unwrap(),
            "session_id"
        );
        assert_eq!(
            validate_hash_key("header.X-User", "consistent_hash").unwrap(),
            "header.x-user"
        );
        assert_eq!(
            field_of(validate_hash_key("body", "consistent_hash")),
            "hash_key"
        );
    }
}
