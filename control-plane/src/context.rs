//! Shared handles given to every module of the control plane.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::keys::ELECTION_LEADER;
use crate::metrics::MetricsRef;
use crate::store::{Compare, StoreRef};

#[derive(Clone)]
pub struct Context {
    pub store: StoreRef,
    /// Unique id of this control-plane replica (used in election and logs).
    pub replica_id: Arc<str>,
    /// Local directory for this replica's files (embedded store, logs).
    pub data_dir: PathBuf,
    /// `true` while this replica is the leader; singleton loops run only then.
    pub is_leader: watch::Receiver<bool>,
    /// The term this replica last won: fences the leader-only writes.
    pub term: Term,
    /// Root shutdown token.
    pub shutdown: CancellationToken,
    /// Prometheus metrics served on the admin port; modules register theirs here.
    pub metrics: MetricsRef,
}

/// The store revision at which this replica's current or last leadership term began (the
/// election key's mod revision; 0 before any, and always with the embedded store, whose one
/// process leads). A replica learns that its term ended only when its elector next runs — a
/// frozen or paused process can resume and handle an event of its old term first — so the
/// leader-only writes (runtime, health) also compare the election key in the store: once
/// another replica has won, or nobody holds the key, they do not apply.
#[derive(Debug, Clone, Default)]
pub struct Term(Arc<AtomicI64>);

impl Term {
    /// Called by the elector when it wins, before it says so.
    pub fn won_at(&self, revision: i64) {
        self.0.store(revision, Ordering::SeqCst);
    }

    /// The compare a leader-only write adds (none before any term).
    pub fn fence(&self) -> Option<Compare> {
        let r = self.0.load(Ordering::SeqCst);
        (r > 0).then(|| Compare::ModRevision(ELECTION_LEADER.into(), r))
    }
}
