//! The embedded store's write path: group commit of etcd-style revisions.
//!
//! Every write is a job queued in `Shared::pending`; whichever writer takes the `Core` lock
//! next runs all queued jobs in one redb write transaction — each job at its own revision, as in
//! etcd — and commits them with a single fsync, then answers every job. Callers still return
//! only after their write is durable, but concurrent writers share the fsync instead of queueing
//! behind one each.
//!
//! A job must not fail after changing something (it shares the transaction with the others):
//! validation (unknown lease) happens before the first change. A storage error aborts the whole
//! group and every job in it fails.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc;

use redb::ReadableTable;

use super::{decode, encode, storage, Lease, Shared, KV, META, REVISION};
use crate::error::{Error, Result};
use crate::store::{Compare, KeyValue, LeaseId, Revision, TxnOp, WatchEvent};

/// Called once the group's fate is known: the job's revision, or why the group failed.
pub(super) type Completion = Box<dyn FnOnce(std::result::Result<Revision, String>) + Send>;
/// A queued write: stages its changes and returns how to answer its caller.
pub(super) type Job = Box<dyn FnOnce(&mut Writer<'_, '_>) -> Completion + Send>;

/// The changes of one write, staged against the group's open redb table at `revision`.
pub(super) struct Writer<'a, 't> {
    table: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    pub(super) leases: &'a HashMap<LeaseId, Lease>,
    /// Leases revoked by earlier jobs of this group (still in `leases` until the commit).
    revoked: &'a [LeaseId],
    revision: Revision,
    events: Vec<WatchEvent>,
    /// (key, old lease, new lease), applied to the lease map after the commit succeeds.
    lease_moves: Vec<(String, LeaseId, LeaseId)>,
    /// A lease to forget once the group is committed (under the same lock, so no put can
    /// attach a key to it in between).
    pub(super) revoke: Option<LeaseId>,
    /// Set when redb itself failed: the group's transaction must not be committed.
    broken: &'a Cell<bool>,
}

impl Writer<'_, '_> {
    fn storage<T, E: std::fmt::Display>(&self, r: std::result::Result<T, E>) -> Result<T> {
        r.map_err(|e| {
            self.broken.set(true);
            storage(e)
        })
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let raw = self.table.get(key);
        match self.storage(raw)? {
            Some(raw) => Ok(Some(decode(key, raw.value())?)),
            None => Ok(None),
        }
    }

    pub(super) fn holds(&self, compare: &Compare) -> Result<bool> {
        Ok(match compare {
            Compare::Absent(k) => self.get(k)?.is_none(),
            Compare::Exists(k) => self.get(k)?.is_some(),
            Compare::ModRevision(k, rev) => self.get(k)?.map_or(0, |kv| kv.mod_revision) == *rev,
            Compare::Value(k, v) => self.get(k)?.is_some_and(|kv| &kv.value == v),
        })
    }

    pub(super) fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(id) if id != 0 => {
                if self.leases.contains_key(&id) && !self.revoked.contains(&id) {
                    Ok(())
                } else {
                    Err(Error::Internal(format!("lease {id} not found")))
                }
            }
            _ => Ok(()),
        }
    }

    pub(super) fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        self.check_lease(lease)?;
        let lease = lease.unwrap_or(0);
        let old = self.get(key)?;
        let create = old.as_ref().map_or(self.revision, |kv| kv.create_revision);
        let raw = encode(create, self.revision, lease, &value);
        let inserted = self.table.insert(key, raw.as_slice()).map(|_| ());
        self.storage(inserted)?;
        self.lease_moves
            .push((key.to_string(), old.map_or(0, |kv| kv.lease), lease));
        self.events.push(WatchEvent::Put(KeyValue {
            key: key.to_string(),
            value,
            create_revision: create,
            mod_revision: self.revision,
            lease,
        }));
        Ok(())
    }

    pub(super) fn delete(&mut self, key: &str) -> Result<bool> {
        let removed = self
            .table
            .remove(key)
            .map(|old| old.map(|raw| raw.value().to_vec()));
        let old = match self.storage(removed)? {
            Some(raw) => decode(key, &raw)?,
            None => return Ok(false),
        };
        self.lease_moves.push((key.to_string(), old.lease, 0));
        self.events.push(WatchEvent::Delete {
            key: key.to_string(),
            mod_revision: self.revision,
        });
        Ok(true)
    }

    pub(super) fn delete_prefix(&mut self, prefix: &str) -> Result<u64> {
        let keys = self.keys_with_prefix(prefix);
        let keys = self.storage(keys)?;
        for k in &keys {
            self.delete(k)?;
        }
        Ok(keys.len() as u64)
    }

    fn keys_with_prefix(
        &self,
        prefix: &str,
    ) -> std::result::Result<Vec<String>, redb::StorageError> {
        let mut keys = Vec::new();
        for entry in self.table.range::<&str>(prefix..)? {
            let (k, _) = entry?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            keys.push(k.to_string());
        }
        Ok(keys)
    }

    pub(super) fn apply(&mut self, op: TxnOp) -> Result<()> {
        match op {
            TxnOp::Put { key, value, lease } => self.put(&key, value, lease),
            TxnOp::Delete { key } => self.delete(&key).map(|_| ()),
        }
    }
}

impl Shared {
    /// Runs `f` as one write at the next revision and waits until it is durable. A write that
    /// changes nothing does not bump the revision (as in etcd). Returns `f`'s result and the
    /// store revision right after it.
    pub(super) fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer<'_, '_>) -> Result<R> + Send + 'static,
    ) -> Result<(R, Revision)> {
        let (tx, rx) = mpsc::sync_channel::<Result<(R, Revision)>>(1);
        let job: Job = Box::new(move |w| match f(w) {
            Err(e) => {
                let _ = tx.send(Err(e));
                Box::new(|_| {})
            }
            Ok(out) => Box::new(move |outcome| {
                let _ = tx.send(
                    outcome
                        .map(|rev| (out, rev))
                        .map_err(|e| Error::Internal(format!("embedded store: {e}"))),
                );
            }),
        });
        self.pending
            .lock()
            .map_err(|_| Error::internal("embedded store: queue lock poisoned"))?
            .push(job);
        self.commit_pending()?;
        // Our job ran in this group or an earlier one; either way its answer is sent.
        rx.recv()
            .map_err(|_| Error::internal("embedded store: write was dropped by a failed commit"))?
    }

    /// Commits every queued job in one redb transaction (a no-op if another writer already
    /// took them).
    fn commit_pending(&self) -> Result<()> {
        let mut core = self.lock()?;
        let jobs = std::mem::take(
            &mut *self
                .pending
                .lock()
                .map_err(|_| Error::internal("embedded store: queue lock poisoned"))?,
        );
        if jobs.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        let broken = Cell::new(false);
        let mut revision = core.revision;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut batches = Vec::new();
        let mut lease_moves = Vec::new();
        let mut revoked: Vec<LeaseId> = Vec::new();
        {
            let mut table = txn.open_table(KV).map_err(storage)?;
            for job in jobs {
                let mut w = Writer {
                    table: &mut table,
                    leases: &core.leases,
                    revoked: &revoked,
                    revision: revision + 1,
                    events: Vec::new(),
                    lease_moves: Vec::new(),
                    revoke: None,
                    broken: &broken,
                };
                let answer = job(&mut w);
                let (events, moves, revoke) = (w.events, w.lease_moves, w.revoke);
                if !events.is_empty() {
                    revision += 1;
                    batches.push((revision, events));
                }
                lease_moves.extend(moves);
                revoked.extend(revoke);
                answers.push((answer, revision));
            }
        }
        let committed = if broken.get() {
            Err("a storage error aborted this group of writes".to_string())
        } else if batches.is_empty() {
            txn.abort().map_err(|e| e.to_string())
        } else {
            finish(txn, revision)
        };
        if let Err(e) = committed {
            tracing::error!(error = %e, "embedded store commit failed");
            for (answer, _) in answers {
                answer(Err(e.clone()));
            }
            return Ok(());
        }
        core.revision = revision;
        for (key, old, new) in lease_moves {
            if let Some(l) = core.leases.get_mut(&old) {
                l.keys.remove(&key);
            }
            if let Some(l) = core.leases.get_mut(&new) {
                l.keys.insert(key);
            }
        }
        for id in revoked {
            core.leases.remove(&id);
        }
        for (rev, events) in batches {
            core.hub.publish(rev, events);
        }
        drop(core);
        for (answer, rev) in answers {
            answer(Ok(rev));
        }
        Ok(())
    }
}

/// Records the new revision and commits durably (`Durability::Immediate`, redb's default).
fn finish(txn: redb::WriteTransaction, revision: Revision) -> std::result::Result<(), String> {
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        meta.insert(REVISION, revision).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}
