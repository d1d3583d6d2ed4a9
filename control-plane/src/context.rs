//! Shared handles given to every module of the control plane.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsRef;
use crate::store::StoreRef;

#[derive(Clone)]
pub struct Context {
    pub store: StoreRef,
    /// Unique id of this control-plane replica (used in election and logs).
    pub replica_id: Arc<str>,
    /// Local directory for this replica's files (embedded store, logs).
    pub data_dir: PathBuf,
    /// `true` while this replica is the leader; singleton loops run only then.
    pub is_leader: watch::Receiver<bool>,
    /// Root shutdown token.
    pub shutdown: CancellationToken,
    /// Prometheus metrics served on the admin port; modules register theirs here.
    pub metrics: MetricsRef,
}
