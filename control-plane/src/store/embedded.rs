//! Embedded backend: one redb file (`<data_dir>/store.redb`) with etcd's semantics — a global
//! revision bumped by every write, per-key create/mod revisions, prefix ranges in key order,
//! compare-and-swap transactions, watch from a revision and TTL leases — for a single process.
//!
//! Every write runs in one redb write transaction committed with `Durability::Immediate`
//! (fsync'd before the call returns) while holding the `Core` lock, so revisions, lease
//! bookkeeping and watch events are published in exactly the commit order.
//!
//! Leases live in memory only. They exist to make keys vanish when their owner dies; the only
//! process that could own them is this one, so on open every key still attached to a lease
//! from a previous run is deleted (its owner is certainly gone).

mod commit;
mod hub;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::hub::Hub;
use super::{KeyValue, LeaseId, Revision, Store, Txn, TxnOp, TxnResponse, WatchStream};
use crate::error::{Error, Result};

/// key -> encoded `KeyValue` (see `encode`).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store-wide counters; `revision` survives restarts.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// How often the expiry task looks for expired leases (bounds how late a lease dies).
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// The file name under the data dir.
pub const FILE_NAME: &str = "store.redb";

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Internal(format!("embedded store: {e}"))
}

/// Value layout: create_revision, mod_revision, lease (i64 little-endian each), then the value.
fn encode(create: Revision, modified: Revision, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let field = |i: usize| -> Result<i64> {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| storage(format!("corrupt record for key {key}")))
    };
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        lease: field(2)?,
        value: raw[24..].to_vec(),
    })
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Core {
    revision: Revision,
    hub: Hub,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

struct Shared {
    db: Database,
    core: Mutex<Core>,
    /// Writes waiting for the next group commit (see `commit.rs`).
    pending: Mutex<Vec<commit::Job>>,
    /// Declared after `db` so it drops after the file is closed.
    _closing: ClosingGuard,
}

/// Data dirs whose `EmbeddedStore` was dropped while a background task (lease expiry, an
/// in-flight blocking call) still holds the file open for a moment. Reopening such a path waits
/// for the close instead of failing as "already open"; a path held by a live store still fails
/// at once.
static CLOSING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn closing() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    CLOSING.lock().unwrap_or_else(|e| e.into_inner())
}

struct ClosingGuard(PathBuf);

impl Drop for ClosingGuard {
    fn drop(&mut self) {
        closing().remove(&self.0);
    }
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Core>> {
        self.core
            .lock()
            .map_err(|_| Error::internal("embedded store: core lock poisoned"))
    }

    /// Deletes the lease and its keys at one revision; false if the lease is unknown.
    fn drop_lease(&self, id: LeaseId) -> Result<bool> {
        self.write(move |w| {
            let Some(lease) = w.leases.get(&id) else {
                return Ok(false);
            };
            let keys: Vec<String> = lease.keys.iter().cloned().collect();
            for k in &keys {
                w.delete(k)?;
            }
            w.revoke = Some(id);
            Ok(true)
        })
        .map(|(found, _)| found)
    }

    fn expired_leases(&self) -> Result<Vec<LeaseId>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect())
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>, Revision) -> Result<R>,
    ) -> Result<R> {
        let txn = self.db.begin_read().map_err(storage)?;
        let revision = match txn.open_table(META) {
            Ok(t) => t.get(REVISION).map_err(storage)?.map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(storage(e)),
        };
        let table = txn.open_table(KV).map_err(storage)?;
        f(&table, revision)
    }
}

/// The embedded store; cheap to share behind a `StoreRef`. Dropping it stops the lease expiry
/// task and closes the file once in-flight calls finish.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    path: PathBuf,
    _expiry: DropGuard,
}

impl EmbeddedStore {
    /// Opens (creating if needed) `<data_dir>/store.redb`, exclusively: a second process (or a
    /// second open in this one) on the same data dir fails. Must be called inside a tokio
    /// runtime (it starts the lease expiry task).
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("embedded store must be opened inside a tokio runtime"))?;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            storage(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Self::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => storage(format!(
                "{} is already open by another process (or another store in this one); \
                 each control plane needs its own --data-dir",
                path.display()
            )),
            e => storage(format!("cannot open {}: {e}", path.display())),
        })?;
        let revision = Self::init(&db)?;
        let shared = Arc::new(Shared {
            db,
            pending: Mutex::new(Vec::new()),
            _closing: ClosingGuard(path.clone()),
            core: Mutex::new(Core {
                revision,
                hub: Hub::new(revision),
                leases: HashMap::new(),
                // Lease ids only need to be unique within this process's life.
                next_lease: 1,
            }),
        });
        let stop = CancellationToken::new();
        runtime.spawn(expiry_loop(Arc::downgrade(&shared), stop.clone()));
        tracing::info!(path = %path.display(), revision, "embedded store opened");
        Ok(EmbeddedStore {
            shared,
            path,
            _expiry: stop.drop_guard(),
        })
    }

    fn create(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if closing().contains(path) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// The redb file backing this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables, drops keys leased by a previous process, and returns the revision.
    fn init(db: &Database) -> Result<Revision> {
        let txn = db.begin_write().map_err(storage)?;
        let revision = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let mut kv = txn.open_table(KV).map_err(storage)?;
            let mut revision = meta
                .get(REVISION)
                .map_err(storage)?
                .map_or(0, |v| v.value());
            let mut orphaned = Vec::new();
            for entry in kv.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let kv = decode(k.value(), v.value())?;
                if kv.lease != 0 {
                    orphaned.push(kv.key);
                }
            }
            if !orphaned.is_empty() {
                revision += 1;
                for k in &orphaned {
                    kv.remove(k.as_str()).map_err(storage)?;
                }
                meta.insert(REVISION, revision).map_err(storage)?;
                tracing::info!(
                    keys = orphaned.len(),
                    revision,
                    "deleted keys leased by a previous process"
                );
            }
            revision
        };
        txn.commit().map_err(storage)?;
        Ok(revision)
    }

    /// Runs blocking redb work off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Error::internal(format!("embedded store task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        closing().insert(self.path.clone());
        // If nothing else holds the file, it closes right here, after this body.
    }
}

async fn expiry_loop(shared: Weak<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        // Checking deadlines is a cheap in-memory scan; only expiries need the blocking pool.
        let expired = match strong.expired_leases() {
            Ok(ids) if ids.is_empty() => continue,
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "lease expiry check failed");
                continue;
            }
        };
        let result = tokio::task::spawn_blocking(move || -> Result<()> {
            for id in expired {
                if strong.drop_lease(id)? {
                    tracing::debug!(lease = id, "lease expired");
                }
            }
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease expiry failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "lease expiry task failed; will retry"),
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |s| {
            s.read(|t, _| match t.get(key.as_str()).map_err(storage)? {
                Some(raw) => Ok(Some(decode(&key, raw.value())?)),
                None => Ok(None),
            })
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            s.read(|t, revision| {
                let mut out = Vec::new();
                for entry in t.range::<&str>(prefix.as_str()..).map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    out.push(decode(k.value(), v.value())?);
                }
                Ok((out, revision))
            })
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let key = key.to_string();
        self.blocking(move |s| {
            s.write(move |w| w.put(&key, value, lease))
                .map(|(_, rev)| rev)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.blocking(move |s| s.write(move |w| w.delete(&key)).map(|(existed, _)| existed))
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.write(move |w| w.delete_prefix(&prefix)).map(|(n, _)| n))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.blocking(move |s| {
            let (succeeded, revision) = s.write(move |w| {
                let mut succeeded = true;
                for c in &txn.compares {
                    if !w.holds(c)? {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded { txn.success } else { txn.failure };
                // Validate before the first change: a failed write must leave nothing behind,
                // since it shares its redb transaction with other writers (group commit).
                for op in &ops {
                    if let TxnOp::Put { lease, .. } = op {
                        w.check_lease(*lease)?;
                    }
                }
                for op in ops {
                    w.apply(op)?;
                }
                Ok(succeeded)
            })?;
            Ok(TxnResponse {
                succeeded,
                revision,
            })
        })
        .await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            let mut core = s.lock()?;
            let current = core.revision;
            core.hub.subscribe(&prefix, from_revision, current)
        })
        .await
    }

    async fn revision(&self) -> Result<Revision> {
        self.blocking(|s| s.read(|_, revision| Ok(revision))).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.blocking(move |s| {
            let mut core = s.lock()?;
            if revision > core.revision {
                return Err(Error::Internal(format!(
                    "cannot compact to future revision {revision} (current {})",
                    core.revision
                )));
            }
            core.hub.compact(revision);
            Ok(())
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut core = self.shared.lock()?;
        let id = core.next_lease;
        core.next_lease += 1;
        core.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut core = self.shared.lock()?;
        match core.leases.get_mut(&lease) {
            // An expired lease the expiry task has not swept yet is already dead.
            Some(l) if l.deadline > Instant::now() => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            _ => Err(Error::Internal(format!(
                "lease {lease} not found or expired"
            ))),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let found = self.blocking(move |s| s.drop_lease(lease)).await?;
        if found {
            Ok(())
        } else {
            Err(Error::Internal(format!("lease {lease} not found")))
        }
    }
}
