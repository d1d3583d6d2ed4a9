//! Routing rules: validation (fields, operators, strategies, regex, CIDR) and CRUD of rules/.
//!
//! `rule-names/{name}` holds the raw rule id and is written in the same transaction as
//! `rules/{id}` (create and rename), so names stay unique across replicas. Lookups take the id
//! first, then the name (rule names are never UUID-shaped).

use chrono::Utc;
use tracing::{info, instrument};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{Condition, Rule};
use crate::registry::validate::validate_tags;
use crate::registry::Written;
use crate::store::{json, Compare, Revision, Txn, TxnOp};

pub mod validate;

const CAS_ATTEMPTS: usize = 32;

/// A rule as received (unvalidated).
#[derive(Debug, Clone, Default)]
pub struct NewRule {
    pub name: String,
    pub priority: Option<i32>,
    pub conditions: Vec<Condition>,
    pub target_strategy: String,
    pub target_tags: Vec<String>,
    pub enabled: Option<bool>,
    pub description: String,
    pub hash_key: String,
}

/// A partial update: `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RulePatch {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub conditions: Option<Vec<Condition>>,
    pub target_strategy: Option<String>,
    pub target_tags: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
    pub hash_key: Option<String>,
}

const MAX_DESCRIPTION: usize = 1024;

/// Validates every field of a complete rule and puts it in canonical form.
fn normalize(mut rule: Rule) -> Result<Rule> {
    validate::validate_rule_name(&rule.name)?;
    if rule.description.chars().count() > MAX_DESCRIPTION {
        return Err(Error::invalid(
            "description",
            format!("description must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    rule.conditions = validate::validate_conditions(std::mem::take(&mut rule.conditions))?;
    rule.target_strategy = validate::validate_strategy(&rule.target_strategy)?;
    rule.target_tags = validate_tags(&rule.target_tags, "target_tags")?;
    rule.hash_key = validate::validate_hash_key(&rule.hash_key, &rule.target_strategy)?;
    Ok(rule)
}

#[instrument(skip_all, fields(rule = %req.name))]
pub async fn create(ctx: &Context, req: NewRule) -> Result<Written<Rule>> {
    let now = Utc::now();
    let rule = normalize(Rule {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        priority: req.priority.unwrap_or(0),
        conditions: req.conditions,
        target_strategy: req.target_strategy,
        target_tags: req.target_tags,
        enabled: req.enabled.unwrap_or(true),
        description: req.description,
        hash_key: req.hash_key,
        created_at: now,
        updated_at: now,
    })?;
    let txn = Txn {
        compares: vec![Compare::Absent(keys::rule_name(&rule.name))],
        success: vec![
            TxnOp::put(keys::rule(&rule.id), json::encode(&rule)?),
            TxnOp::put(
                keys::rule_name(&rule.name),
                keys::name_index_value(&rule.id),
            ),
        ],
        failure: vec![],
    };
    let resp = ctx.store.txn(txn).await?;
    if !resp.succeeded {
        return Err(Error::RuleAlreadyExists(rule.name));
    }
    info!(rule_id = %rule.id, "routing rule created");
    Ok(Written {
        value: rule,
        revision: resp.revision,
    })
}

/// Finds a rule by id, then by name.
pub async fn resolve(ctx: &Context, key: &str) -> Result<(Rule, Revision)> {
    if key.is_empty() {
        return Err(Error::invalid("rule", "rule id or name is required"));
    }
    if key.contains('/') {
        return Err(Error::RuleNotFound(key.to_string()));
    }
    if let Some(found) = json::get::<Rule>(&ctx.store, &keys::rule(key)).await? {
        return Ok(found);
    }
    if let Some(kv) = ctx.store.get(&keys::rule_name(key)).await? {
        let id = keys::name_index_id(&kv.value);
        if let Some(found) = json::get::<Rule>(&ctx.store, &keys::rule(&id)).await? {
            return Ok(found);
        }
    }
    Err(Error::RuleNotFound(key.to_string()))
}

pub async fn get(ctx: &Context, key: &str) -> Result<Rule> {
    Ok(resolve(ctx, key).await?.0)
}

/// Every rule (optionally only enabled or disabled ones), priority descending, then name.
pub async fn list(ctx: &Context, enabled: Option<bool>) -> Result<Vec<Rule>> {
    let (kvs, _) = ctx.store.range(keys::RULES).await?;
    let mut rules = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match json::decode::<Rule>(&kv) {
            Ok(r) if enabled.is_none_or(|e| r.enabled == e) => rules.push(r),
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping undecodable rule"),
        }
    }
    sort_rules(&mut rules);
    Ok(rules)
}

/// The evaluation order of rules (DESIGN §5): highest priority first; ties by name, then id.
pub fn sort_rules(rules: &mut [Rule]) {
    rules.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// Merges `patch`, re-validates, and writes in one transaction (a rename moves the name key
/// under `Compare::Absent`, so the new name stays unique).
#[instrument(skip_all, fields(rule = %key))]
pub async fn update(ctx: &Context, key: &str, patch: RulePatch) -> Result<Written<Rule>> {
    let (mut current, mut rev) = resolve(ctx, key).await?;
    for _ in 0..CAS_ATTEMPTS {
        let old_name = current.name.clone();
        let mut rule = current.clone();
        if let Some(v) = &patch.name {
            rule.name = v.clone();
        }
        if let Some(v) = patch.priority {
            rule.priority = v;
        }
        if let Some(v) = &patch.conditions {
            rule.conditions = v.clone();
        }
        if let Some(v) = &patch.target_strategy {
            rule.target_strategy = v.clone();
        }
        if let Some(v) = &patch.target_tags {
            rule.target_tags = v.clone();
        }
        if let Some(v) = patch.enabled {
            rule.enabled = v;
        }
        if let Some(v) = &patch.description {
            rule.description = v.clone();
        }
        if let Some(v) = &patch.hash_key {
            rule.hash_key = v.clone();
        }
        rule.updated_at = Utc::now();
        let rule = normalize(rule)?;
        let mut txn = Txn {
            compares: vec![Compare::ModRevision(keys::rule(&rule.id), rev)],
            success: vec![TxnOp::put(keys::rule(&rule.id), json::encode(&rule)?)],
            failure: vec![],
        };
        let renamed = rule.name != old_name;
        if renamed {
            txn.compares
                .push(Compare::Absent(keys::rule_name(&rule.name)));
            txn.success.push(TxnOp::delete(keys::rule_name(&old_name)));
            txn.success.push(TxnOp::put(
                keys::rule_name(&rule.name),
                keys::name_index_value(&rule.id),
            ));
        }
        let resp = ctx.store.txn(txn).await?;
        if resp.succeeded {
            info!(rule_id = %rule.id, "routing rule updated");
            return Ok(Written {
                value: rule,
                revision: resp.revision,
            });
        }
        if renamed && ctx.store.get(&keys::rule_name(&rule.name)).await?.is_some() {
            return Err(Error::RuleAlreadyExists(rule.name));
        }
        (current, rev) = json::get::<Rule>(&ctx.store, &keys::rule(&rule.id))
            .await?
            .ok_or_else(|| Error::RuleNotFound(key.to_string()))?;
    }
    Err(Error::internal("too many concurrent updates of one rule"))
}

#[instrument(skip_all, fields(rule = %key))]
pub async fn delete(ctx: &Context, key: &str) -> Result<Written<Rule>> {
    let (rule, rev) = resolve(ctx, key).await?;
    let txn = Txn {
        compares: vec![Compare::ModRevision(keys::rule(&rule.id), rev)],
        success: vec![
            TxnOp::delete(keys::rule(&rule.id)),
            TxnOp::delete(keys::rule_name(&rule.name)),
        ],
        failure: vec![],
    };
    let resp = ctx.store.txn(txn).await?;
    if !resp.succeeded {
        // Changed (or renamed) under us: delete by id whatever its current name is.
        let (rule, _) = resolve(ctx, &rule.id).await?;
        let resp = ctx
            .store
            .txn(Txn {
                compares: vec![],
                success: vec![
                    TxnOp::delete(keys::rule(&rule.id)),
                    TxnOp::delete(keys::rule_name(&rule.name)),
                ],
                failure: vec![],
            })
            .await?;
        return Ok(Written {
            value: rule,
            revision: resp.revision,
        });
    }
    info!(rule_id = %rule.id, "routing rule deleted");
    Ok(Written {
        value: rule,
        revision: resp.revision,
    })
}
