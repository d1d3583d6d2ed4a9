//! Draining before a planned stop: wait until the proxies report no open connection to the
//! service (connection records under `connections/`), at most `drain_timeout`.

use std::time::{Duration, Instant};

use crate::keys;
use crate::store::StoreRef;

/// Open connections of `service_id` according to the connection records the proxies keep in
/// the store. Records are JSON objects with a `service_id`; closed ones carry `closed_at` or a
/// `status`/`state` of `closed`.
pub async fn active_connections(store: &StoreRef, service_id: &str) -> usize {
    let Ok((kvs, _)) = store.range(keys::CONNECTIONS).await else {
        return 0;
    };
    kvs.iter()
        .filter_map(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
        .filter(|v| {
            let svc = v.get("service_id").and_then(|s| s.as_str()) == Some(service_id);
            let closed = v.get("closed_at").is_some_and(|c| !c.is_null())
                || ["status", "state"]
                    .iter()
                    .any(|k| v.get(*k).and_then(|s| s.as_str()) == Some("closed"));
            svc && !closed
        })
        .count()
}

/// Returns once the service has no open connection or `timeout` passed.
pub async fn wait_drained(store: StoreRef, service_id: String, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if active_connections(&store, &service_id).await == 0 || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}
