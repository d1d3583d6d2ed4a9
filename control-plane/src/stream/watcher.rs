//! The replica's one store watch: loads everything once (one revision), then applies every
//! change in order and tells the rest of the hub (config publish with debouncing, node and
//! session changes, commands). A broken or compacted watch reloads the view; proxies whose
//! version predates the reload get a full snapshot.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::mirror::{Effects, Mirror};
use super::Hub;
use crate::store::WatchStream;

pub(crate) async fn run(hub: Hub) {
    let shutdown = hub.inner.ctx.shutdown.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match load(&hub).await {
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                follow(&hub, stream).await;
            }
            Err(e) => {
                warn!(error = %e, "loading the store view failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn load(hub: &Hub) -> crate::Result<WatchStream> {
    let store = &hub.inner.ctx.store;
    let (kvs, revision) = store.range("").await?;
    let stream = store.watch("", revision + 1).await?;
    let (mirror, fx) = Mirror::load(&kvs, revision);
    let version = mirror.config_version;
    *hub.inner.mirror_mut() = mirror;
    info!(revision, keys = kvs.len(), "data-plane view loaded");
    hub.inner.revision.send_replace(revision);
    hub.inner.version.send_replace(version);
    hub.inner.nodes_changed.send_modify(|n| *n += 1);
    hub.inner.ready.send_replace(true);
    after_apply(hub, fx);
    Ok(stream)
}

async fn follow(hub: &Hub, mut stream: WatchStream) {
    let shutdown = hub.inner.ctx.shutdown.clone();
    let cfg = &hub.inner.cfg;
    // When the next publish is due, and the latest it may be pushed back to.
    let mut due: Option<(Instant, Instant)> = None;
    loop {
        let next = async {
            match due {
                Some((at, _)) => tokio::time::timeout_at(at, stream.next()).await.ok(),
                None => Some(stream.next().await),
            }
        };
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = next => item,
        };
        match item {
            // The debounce elapsed with no further events.
            None => {
                publish(hub);
                due = None;
            }
            Some(Some(Ok(batch))) => {
                let mut fx = Effects::default();
                let revision = {
                    let mut m = hub.inner.mirror_mut();
                    m.apply(&batch, &mut fx);
                    m.revision
                };
                hub.inner.revision.send_replace(revision);
                let now = Instant::now();
                if fx.config_visible {
                    let limit = due.map(|(_, l)| l).unwrap_or(now + cfg.max_debounce);
                    due = Some(((now + cfg.debounce).min(limit), limit));
                } else if fx.config_event && due.is_none() {
                    let at = now + cfg.invisible_delay;
                    due = Some((at, at));
                }
                if let Some((at, _)) = due {
                    if at <= now {
                        publish(hub);
                        due = None;
                    }
                }
                after_apply(hub, fx);
            }
            Some(Some(Err(e))) => {
                warn!(error = %e, "store watch ended; reloading the view");
                publish(hub);
                return;
            }
            Some(None) => {
                warn!("store watch closed; reloading the view");
                publish(hub);
                return;
            }
        }
    }
}

fn publish(hub: &Hub) {
    let version = hub.inner.mirror().config_version;
    debug!(version, "config version published");
    hub.inner.version.send_if_modified(|v| {
        let changed = *v != version;
        *v = version;
        changed
    });
}

/// Reactions outside the mirror lock.
fn after_apply(hub: &Hub, fx: Effects) {
    if fx.nodes_changed {
        hub.inner.nodes_changed.send_modify(|n| *n += 1);
    }
    if !fx.session_upserts.is_empty() || !fx.session_removed.is_empty() {
        let mut out = hub
            .inner
            .session_out
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for s in &fx.session_upserts {
            out.insert(s.session_id.clone(), Some(super::sessions::binding(s)));
        }
        for id in fx.session_removed {
            out.insert(id, None);
        }
    }
    if !fx.sessions_expired.is_empty() {
        super::sessions::note_expired(hub, fx.sessions_expired);
    }
    for cmd in fx.commands {
        super::commands::on_command(hub, cmd);
    }
}
