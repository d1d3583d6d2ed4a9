//! REST shapes of routing rules (seed §1.3, DESIGN §5/§7) and their conversions.

use myagent_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::convert::{opt_str, ts};

/// A condition value: a string, or a list of strings for `in` / `not_in`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ConditionValue {
    One(String),
    Many(Vec<String>),
}

/// One rule condition; every condition of a rule must match.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionBody {
    /// `header.<name>` | `query.<name>` | `client_ip` | `path`
    pub field: String,
    /// equals | not_equals | contains | starts_with | ends_with | regex | in | not_in | exists |
    /// not_exists | cidr
    pub operator: String,
    pub value: Option<ConditionValue>,
    /// Alternative spelling of a list value for `in` / `not_in`.
    pub values: Option<Vec<String>>,
}

impl From<ConditionBody> for pb::Condition {
    fn from(c: ConditionBody) -> Self {
        let (value, mut values) = match c.value {
            None => (String::new(), Vec::new()),
            Some(ConditionValue::One(v)) => (v, Vec::new()),
            Some(ConditionValue::Many(v)) => (String::new(), v),
        };
        if let Some(more) = c.values {
            values.extend(more);
        }
        pb::Condition {
            field: c.field,
            operator: c.operator,
            value,
            values,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConditionView {
    pub field: String,
    pub operator: String,
    /// A string, a list (`in` / `not_in`), or null (`exists` / `not_exists`).
    pub value: Option<ConditionValue>,
}

impl From<pb::Condition> for ConditionView {
    fn from(c: pb::Condition) -> Self {
        let value = if !c.values.is_empty() {
            Some(ConditionValue::Many(c.values))
        } else if !c.value.is_empty() {
            Some(ConditionValue::One(c.value))
        } else {
            None
        };
        ConditionView {
            field: c.field,
            operator: c.operator,
            value,
        }
    }
}

/// `POST /routing/rules` body (seed §1.3).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRuleBody {
    /// 1–128 printable characters, unique.
    pub name: String,
    /// Higher first; default 0.
    pub priority: Option<i32>,
    pub conditions: Option<Vec<ConditionBody>>,
    /// least_connections (default) | round_robin | random | weighted | consistent_hash
    pub target_strategy: Option<String>,
    pub target_tags: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
    pub description: Option<String>,
    /// consistent_hash key: `session_id` (default) or a condition field.
    pub hash_key: Option<String>,
}

impl CreateRuleBody {
    pub fn into_request(self, wait_for_sync: f64) -> pb::CreateRuleRequest {
        pb::CreateRuleRequest {
            name: self.name,
            priority: self.priority,
            conditions: self
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
            target_strategy: self.target_strategy.unwrap_or_default(),
            target_tags: self.target_tags.unwrap_or_default(),
            enabled: self.enabled,
            description: self.description.unwrap_or_default(),
            hash_key: self.hash_key.unwrap_or_default(),
            wait_for_sync,
        }
    }
}

/// `PUT /routing/rules/{id}` body: given keys replace, absent keys keep.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRuleBody {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub conditions: Option<Vec<ConditionBody>>,
    pub target_strategy: Option<String>,
    pub target_tags: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
    pub hash_key: Option<String>,
}

impl UpdateRuleBody {
    pub fn into_request(self, rule: String, wait_for_sync: f64) -> pb::UpdateRuleRequest {
        pb::UpdateRuleRequest {
            rule,
            name: self.name,
            priority: self.priority,
            conditions: self.conditions.map(|c| pb::ConditionList {
                items: c.into_iter().map(Into::into).collect(),
            }),
            target_strategy: self.target_strategy,
            target_tags: self.target_tags.map(|items| pb::StringList { items }),
            enabled: self.enabled,
            description: self.description,
            hash_key: self.hash_key,
            wait_for_sync,
        }
    }
}

/// A routing rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub rule_id: String,
    pub name: String,
    pub priority: i32,
    pub conditions: Vec<ConditionView>,
    pub target_strategy: String,
    pub target_tags: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub hash_key: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<pb::RoutingRule> for RuleView {
    fn from(r: pb::RoutingRule) -> Self {
        RuleView {
            created_at: ts(r.created_at.as_ref()),
            updated_at: ts(r.updated_at.as_ref()),
            hash_key: opt_str(&r.hash_key),
            rule_id: r.rule_id,
            name: r.name,
            priority: r.priority,
            conditions: r.conditions.into_iter().map(Into::into).collect(),
            target_strategy: r.target_strategy,
            target_tags: r.target_tags,
            enabled: r.enabled,
            description: r.description,
        }
    }
}

/// `POST` (201) and `PUT` answer for a rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleWriteResponse {
    pub success: bool,
    pub rule_id: String,
    pub message: String,
    pub rule: RuleView,
}

impl RuleWriteResponse {
    pub fn new(rule: pb::RoutingRule, message: &str) -> Self {
        RuleWriteResponse {
            success: true,
            rule_id: rule.rule_id.clone(),
            message: message.into(),
            rule: rule.into(),
        }
    }
}

/// `GET /routing/rules` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
    pub total: u64,
}

impl From<pb::ListRulesResponse> for RuleList {
    fn from(r: pb::ListRulesResponse) -> Self {
        RuleList {
            total: r.total,
            rules: r.rules.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRulesQuery {
    /// Only enabled (`true`) or disabled (`false`) rules; `True`/`FALSE` and `1`/`0` also read.
    #[serde(default, deserialize_with = "query_bool")]
    #[param(value_type = Option<bool>)]
    pub enabled: Option<bool>,
}

/// A boolean query value in any case, or `1`/`0`: clients spell booleans their language's way
/// (Python's `requests` sends `params={"enabled": True}` as `enabled=True`).
fn query_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let Some(v) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(Some(true)),
        "false" | "0" => Ok(Some(false)),
        _ => Err(serde::de::Error::custom(format!(
            "expected `true` or `false`, got `{v}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    #[test]
    fn list_values_round_trip() {
        let c: ConditionBody =
            parse_json(br#"{"field": "header.x-tier", "operator": "in", "value": ["a", "b"]}"#)
                .unwrap();
        let pb: pb::Condition = c.into();
        assert_eq!(pb.values, vec!["a", "b"]);
        assert!(pb.value.is_empty());
        let view = serde_json::to_value(ConditionView::from(pb)).unwrap();
        assert_eq!(view["value"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn string_value_round_trips() {
        let c: ConditionBody =
            parse_json(br#"{"field": "path", "operator": "equals", "value": "/x"}"#).unwrap();
        let view = serde_json::to_value(ConditionView::from(pb::Condition::from(c))).unwrap();
        assert_eq!(view["value"], "/x");
    }

    #[test]
    fn enabled_reads_common_boolean_spellings() {
        use crate::extract::parse_query;
        for (q, want) in [
            ("enabled=true", Some(true)),
            ("enabled=True", Some(true)),
            ("enabled=1", Some(true)),
            ("enabled=FALSE", Some(false)),
            ("enabled=0", Some(false)),
            ("", None),
        ] {
            let got: ListRulesQuery = parse_query(q).unwrap();
            assert_eq!(got.enabled, want, "{q}");
        }
        let e = parse_query::<ListRulesQuery>("enabled=maybe").unwrap_err();
        assert_eq!(e.details["field"], "enabled");
    }

    #[test]
    fn wrong_value_type_names_the_field() {
        let e = parse_json::<CreateRuleBody>(
            br#"{"name": "r", "conditions": [{"field": "path", "operator": "equals", "value": 5}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.details["field"], "conditions[0].value");
    }
}
