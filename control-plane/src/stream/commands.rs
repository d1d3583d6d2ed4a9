//! Commands to proxies across replicas: the replica that gets the API call writes
//! `commands/{node}/{id}` (30 s lease); the replica holding that node's stream sees it in its
//! watch, forwards a `ProxyCommand`, waits for the `CommandResult` (bounded) and writes it into
//! the record; the issuer sees the result, deletes the command and answers the caller.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use myagent_proto::v1 as pb;

use super::mirror::CommandEntry;
use super::model::{CommandKind, CommandOutcome, CommandRecord, ConnectionStatus};
use super::Hub;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{json, Compare, Txn, TxnOp};

const COMMAND_TTL: Duration = Duration::from_secs(30);
const DELIVERED_MEMORY: usize = 4096;

/// Ids of commands this replica already forwarded (a reloaded watch replays them).
#[derive(Default)]
pub(crate) struct Delivered {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Delivered {
    fn first_time(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > DELIVERED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Writes a command for `node_id` and waits for its outcome (`None` on timeout).
async fn issue(hub: &Hub, node_id: &str, kind: CommandKind) -> Result<Option<CommandOutcome>> {
    let store = &hub.inner.ctx.store;
    let id = uuid::Uuid::new_v4().to_string();
    let key = keys::command(node_id, &id);
    let record = CommandRecord {
        command_id: id.clone(),
        node_id: node_id.to_string(),
        origin_replica: hub.inner.ctx.replica_id.to_string(),
        created_at: Utc::now(),
        kind,
        result: None,
    };
    let (tx, rx) = oneshot::channel();
    hub.inner
        .command_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), tx);
    let lease = store.grant_lease(COMMAND_TTL).await?;
    let written = store.put(&key, json::encode(&record)?, Some(lease)).await;
    if let Err(e) = written {
        hub.inner
            .command_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        return Err(e);
    }
    // The deliverer waits `command_timeout` for the proxy; allow for the store round trips.
    let wait = hub.inner.cfg.command_timeout + Duration::from_secs(2);
    let outcome = tokio::time::timeout(wait, rx)
        .await
        .ok()
        .and_then(|r| r.ok());
    hub.inner
        .command_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if let Err(e) = store.revoke_lease(lease).await {
        debug!(error = %e, "revoking a command lease failed; it expires on its own");
    }
    Ok(outcome)
}

/// Reacts to a command record seen in the watch: outcome for an issuer here, or delivery by
/// the replica that holds the node's stream.
pub(crate) fn on_command(hub: &Hub, entry: CommandEntry) {
    let rec = entry.record;
    if let Some(outcome) = rec.result {
        if rec.origin_replica == *hub.inner.ctx.replica_id {
            let waiter = hub
                .inner
                .command_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&rec.command_id);
            if let Some(w) = waiter {
                let _ = w.send(outcome);
            }
        }
        return;
    }
    let Some(node) = hub.inner.local_node(&rec.node_id) else {
        return;
    };
    if !hub
        .inner
        .delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first_time(&rec.command_id)
    {
        return;
    }
    let hub2 = hub.clone();
    hub.inner.tracker.spawn(async move {
        let outcome = deliver(&hub2, &node, &rec).await;
        let mut answered = rec.clone();
        answered.result = Some(outcome);
        let Ok(value) = json::encode(&answered) else {
            return;
        };
        let txn = Txn {
            compares: vec![Compare::Exists(entry.key.clone())],
            success: vec![TxnOp::Put {
                key: entry.key.clone(),
                value,
                lease: (entry.lease != 0).then_some(entry.lease),
            }],
            failure: Vec::new(),
        };
        if let Err(e) = hub2.inner.ctx.store.txn(txn).await {
            warn!(command_id = %rec.command_id, error = %e, "writing command result failed");
        }
    });
}

async fn deliver(hub: &Hub, node: &super::node::LocalNode, rec: &CommandRecord) -> CommandOutcome {
    let kind = match &rec.kind {
        CommandKind::Disconnect {
            connection_id,
            reason,
            notify_client,
        } => pb::proxy_command::Kind::Disconnect(pb::DisconnectCommand {
            connection_id: connection_id.clone(),
            reason: reason.clone(),
            notify_client: *notify_client,
        }),
        CommandKind::Notify {
            service_id,
            kind,
            message,
            severity,
            countdown_seconds,
        } => pb::proxy_command::Kind::Notify(pb::NotifyCommand {
            service_id: service_id.clone(),
            r#type: kind.clone(),
            message: message.clone(),
            severity: severity.clone(),
            countdown_seconds: *countdown_seconds,
        }),
    };
    let (tx, rx) = oneshot::channel();
    hub.inner
        .result_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rec.command_id.clone(), tx);
    let msg = pb::ControlMessage {
        kind: Some(pb::control_message::Kind::Command(pb::ProxyCommand {
            command_id: rec.command_id.clone(),
            kind: Some(kind),
        })),
    };
    let timeout = hub.inner.cfg.command_timeout;
    let sent = tokio::time::timeout(timeout, node.out.send(Ok(msg))).await;
    let result = if matches!(sent, Ok(Ok(()))) {
        tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(|r| r.ok())
    } else {
        None
    };
    hub.inner
        .result_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&rec.command_id);
    match result {
        Some(r) => CommandOutcome {
            ok: r.ok,
            delivered: r.delivered,
            error: r.error,
            at: Utc::now(),
        },
        None => CommandOutcome {
            ok: false,
            delivered: 0,
            error: format!(
                "proxy '{}' did not answer within {}s",
                node.node_id,
                timeout.as_secs()
            ),
            at: Utc::now(),
        },
    }
}

/// Admin disconnect of a connection held by any proxy of the cluster.
pub async fn disconnect(
    hub: &Hub,
    connection_id: &str,
    reason: &str,
    notify_client: bool,
) -> Result<()> {
    let node_id = find_active_connection(hub, connection_id)
        .ok_or_else(|| Error::ConnectionNotFound(connection_id.to_string()))?;
    let kind = CommandKind::Disconnect {
        connection_id: connection_id.to_string(),
        reason: reason.to_string(),
        notify_client,
    };
    match issue(hub, &node_id, kind).await? {
        Some(o) if o.ok => Ok(()),
        Some(o) if o.error.to_ascii_lowercase().contains("not found") => {
            Err(Error::ConnectionNotFound(connection_id.to_string()))
        }
        Some(o) => Err(Error::RoutingFailed(format!(
            "proxy '{node_id}' could not disconnect '{connection_id}': {}",
            o.error
        ))),
        None => Err(Error::RoutingFailed(format!(
            "proxy '{node_id}' holding connection '{connection_id}' did not confirm the disconnect in time"
        ))),
    }
}

/// The node holding an active connection: the store view, or a report this replica has not
/// flushed yet.
fn find_active_connection(hub: &Hub, connection_id: &str) -> Option<String> {
    if let Some(c) = hub.inner.mirror().connections.get(connection_id) {
        if c.status == ConnectionStatus::Active {
            return Some(c.node_id.clone());
        }
        return None;
    }
    hub.inner
        .local_nodes()
        .into_iter()
        .find(|n| n.lock().active.contains_key(connection_id))
        .map(|n| n.node_id.clone())
}

/// Sends a management notification through every connected proxy; returns the number of client
/// connections that received it.
pub async fn notify(
    hub: &Hub,
    service_id: &str,
    kind: &str,
    message: &str,
    severity: &str,
    countdown_seconds: Option<u32>,
) -> Result<u64> {
    let nodes: Vec<String> = hub
        .inner
        .mirror()
        .nodes
        .values()
        .filter(|(n, _)| n.connected)
        .map(|(n, _)| n.node_id.clone())
        .collect();
    let calls = nodes.iter().map(|node_id| {
        let kind = CommandKind::Notify {
            service_id: service_id.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
            severity: severity.to_string(),
            countdown_seconds,
        };
        issue(hub, node_id, kind)
    });
    let results = futures::future::join_all(calls).await;
    let mut delivered = 0;
    for (node_id, r) in nodes.iter().zip(results) {
        match r {
            Ok(Some(o)) if o.ok => delivered += o.delivered,
            Ok(Some(o)) => {
                warn!(node_id = %node_id, error = %o.error, "notification failed on a proxy")
            }
            Ok(None) => warn!(node_id = %node_id, "notification not confirmed by a proxy in time"),
            Err(e) => return Err(e),
        }
    }
    Ok(delivered)
}
