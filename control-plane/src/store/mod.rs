//! Durable state: one `Store` trait (etcd semantics: revisions, prefix range, compare-and-swap
//! transactions, watch from a revision, TTL leases) with two backends, chosen in `build_store`.
//!
//! Keys passed to a store are relative (`services/{id}`); each backend prepends its own prefix
//! (`--etcd-prefix`, default `/myagent/`), so tests can isolate themselves with a unique prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;

pub mod embedded;
pub mod etcd;

/// Store revisions are etcd's: a cluster-wide counter bumped by every write.
pub type Revision = i64;
/// A lease id; keys attached to a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Relative key (the backend's prefix removed).
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// Relative key and the revision of the deletion.
    Delete {
        key: String,
        mod_revision: Revision,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A stream of event batches; all events of one batch share one revision (one transaction).
/// It ends with `Err(Error::Compacted)` if the start revision is gone, or
/// `Err(Error::StoreUnavailable)` if the backend connection is lost.
pub type WatchStream = BoxStream<'static, Result<Vec<WatchEvent>>>;

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key's mod revision equals the given one (0 = absent).
    ModRevision(String, Revision),
    /// The key's value equals the given bytes.
    Value(String, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }
}

/// If every compare holds, apply `success`, else `failure` — atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: Revision,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Human-readable backend name (`embedded` / `etcd`).
    fn backend(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, in key order, and the revision it was read at.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Returns how many keys were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Events for keys under `prefix` with revision >= `from_revision` (0 = from now on).
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Current store revision.
    async fn revision(&self) -> Result<Revision>;

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refreshes the lease's TTL once; `Err` if it has expired or is unknown.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Deletes the lease and every key attached to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Forgets history before `revision`: a later watch from an older revision fails with
    /// `Error::Compacted`. Used by tests and maintenance; backends without history may no-op.
    async fn compact(&self, revision: Revision) -> Result<()> {
        let _ = revision;
        Ok(())
    }

    /// Whether the backend answers now (used by `/readyz`).
    async fn ping(&self) -> Result<()> {
        self.revision().await.map(|_| ())
    }
}

pub type StoreRef = Arc<dyn Store>;

/// Typed helpers over the raw byte API: values are JSON so `etcdctl get --prefix` is readable.
pub mod json {
    use serde::{de::DeserializeOwned, Serialize};

    use super::{KeyValue, StoreRef};
    use crate::error::Result;

    pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(value)?)
    }

    pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
        Ok(serde_json::from_slice(&kv.value)?)
    }

    pub async fn get<T: DeserializeOwned>(store: &StoreRef, key: &str) -> Result<Option<(T, i64)>> {
        match store.get(key).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn list<T: DeserializeOwned>(store: &StoreRef, prefix: &str) -> Result<Vec<T>> {
        let (kvs, _) = store.range(prefix).await?;
        kvs.iter().map(decode).collect()
    }
}

/// Which backend to run on (`--store`), with its settings.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A redb file under `data_dir`.
    Embedded { data_dir: std::path::PathBuf },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        /// Per-request deadline, so an unreachable etcd answers `STORE_UNAVAILABLE` promptly.
        request_timeout: Duration,
    },
}

/// The only place that matches on the backend.
pub async fn build_store(config: &StoreConfig) -> Result<StoreRef> {
    match config {
        StoreConfig::Embedded { data_dir } => {
            Ok(Arc::new(embedded::EmbeddedStore::open(data_dir)?))
        }
        StoreConfig::Etcd {
            endpoints,
            prefix,
            request_timeout,
        } => Ok(Arc::new(
            etcd::EtcdStore::connect(endpoints, prefix, *request_timeout).await?,
        )),
    }
}
