//! Draining before a planned stop: wait until the proxies report no open connection to the
//! service (connection records under `connections/`), at most `drain_timeout`.

use std::time::{Duration, Instant};

use crate::keys;
use crate::store::StoreRef;
use crate::stream::model::{ConnectionRecord, ConnectionStatus};

/// Open connections of `service_id` according to the connection records the proxies report
/// (`connections/{node}/{conn}`, see `stream::model::ConnectionRecord`).
pub async fn active_connections(store: &StoreRef, service_id: &str) -> usize {
    let Ok((kvs, _)) = store.range(keys::CONNECTIONS).await else {
        return 0;
    };
    kvs.iter()
        .filter_map(|kv| serde_json::from_slice::<ConnectionRecord>(&kv.value).ok())
        .filter(|c| c.target_service_id == service_id && c.status == ConnectionStatus::Active)
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
