//! One conformance suite for every `Store` backend: each scenario is a function over a
//! `StoreRef`, run against the embedded store (own temp dir) and a real etcd (own key prefix).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use myagent_control_plane::store::etcd::EtcdStore;
use myagent_control_plane::store::{
    Compare, KeyValue, Store, StoreRef, Txn, TxnOp, WatchEvent, WatchStream,
};
use myagent_control_plane::Error;
use myagent_tests::etcd::Etcd;

const STEP: Duration = Duration::from_secs(10);

async fn next_batch(w: &mut WatchStream) -> Vec<WatchEvent> {
    tokio::time::timeout(STEP, w.next())
        .await
        .expect("watch event within 10s")
        .expect("watch stream still open")
        .expect("watch batch, not an error")
}

/// Collects events until `n` have arrived.
async fn next_events(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(next_batch(w).await);
    }
    out
}

fn put_of(e: &WatchEvent) -> &KeyValue {
    match e {
        WatchEvent::Put(kv) => kv,
        other => panic!("expected a put, got {other:?}"),
    }
}

pub async fn get_put_delete(s: StoreRef) {
    assert_eq!(s.get("a").await.unwrap(), None);
    let r1 = s.put("a", b"\"one\"".to_vec(), None).await.unwrap();
    let kv = s.get("a").await.unwrap().expect("a exists");
    assert_eq!(kv.key, "a");
    assert_eq!(kv.value, b"\"one\"");
    assert_eq!(kv.lease, 0);
    assert_eq!(kv.mod_revision, r1);
    assert!(
        s.delete("a").await.unwrap(),
        "delete reports the key existed"
    );
    assert!(
        !s.delete("a").await.unwrap(),
        "second delete reports absence"
    );
    assert_eq!(s.get("a").await.unwrap(), None);
}

pub async fn range_in_key_order(s: StoreRef) {
    for k in ["svc/b", "svc/a", "svc0", "svc/c/x", "sv", "svc/"] {
        s.put(k, k.as_bytes().to_vec(), None).await.unwrap();
    }
    let (kvs, rev) = s.range("svc/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["svc/", "svc/a", "svc/b", "svc/c/x"]);
    assert!(rev >= kvs.iter().map(|kv| kv.mod_revision).max().unwrap());
    assert_eq!(rev, s.revision().await.unwrap());
    let (none, _) = s.range("nothing/").await.unwrap();
    assert!(none.is_empty());
}

pub async fn revisions_monotonic(s: StoreRef) {
    let r0 = s.revision().await.unwrap();
    let r1 = s.put("k", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("k", b"2".to_vec(), None).await.unwrap();
    let r3 = s.put("other", b"x".to_vec(), None).await.unwrap();
    assert!(r0 < r1 && r1 < r2 && r2 < r3, "{r0} < {r1} < {r2} < {r3}");
    let kv = s.get("k").await.unwrap().unwrap();
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r2);
    assert_eq!(s.revision().await.unwrap(), r3);
    // Deleting nothing is not a write.
    assert!(!s.delete("missing").await.unwrap());
    assert_eq!(s.revision().await.unwrap(), r3);
    // Recreating a key starts a new create revision.
    s.delete("k").await.unwrap();
    let r5 = s.put("k", b"3".to_vec(), None).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().unwrap().create_revision, r5);
}

pub async fn delete_prefix(s: StoreRef) {
    for k in ["p/1", "p/2", "p/3/x", "p0", "q"] {
        s.put(k, vec![1], None).await.unwrap();
    }
    assert_eq!(s.delete_prefix("p/").await.unwrap(), 3);
    let (left, _) = s.range("").await.unwrap();
    let keys: Vec<_> = left.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["p0", "q"]);
    assert_eq!(s.delete_prefix("p/").await.unwrap(), 0);
}

pub async fn txn_compares(s: StoreRef) {
    let put = |k: &str, v: &str| TxnOp::put(k, v.as_bytes().to_vec());
    // Absent: holds for a new key.
    let t = s
        .txn(Txn {
            compares: vec![Compare::Absent("n".into())],
            success: vec![put("n", "1"), put("m", "1")],
            failure: vec![put("failed", "1")],
        })
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, s.revision().await.unwrap());
    let n = s.get("n").await.unwrap().unwrap();
    let m = s.get("m").await.unwrap().unwrap();
    assert_eq!(
        n.mod_revision, t.revision,
        "all ops of a txn share one revision"
    );
    assert_eq!(m.mod_revision, t.revision);
    // Absent fails now, and the failure branch runs.
    let t = s
        .txn(Txn {
            compares: vec![Compare::Absent("n".into())],
            success: vec![put("n", "2")],
            failure: vec![put("failed", "1")],
        })
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(s.get("n").await.unwrap().unwrap().value, b"1");
    assert!(s.get("failed").await.unwrap().is_some());
    // Exists.
    for (key, want) in [("n", true), ("zzz", false)] {
        let t = s
            .txn(Txn {
                compares: vec![Compare::Exists(key.into())],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(t.succeeded, want, "Exists({key})");
    }
    // ModRevision: stale revision fails, current succeeds, 0 means absent.
    let cur = s.get("n").await.unwrap().unwrap().mod_revision;
    let cas = |rev| Txn {
        compares: vec![Compare::ModRevision("n".into(), rev)],
        success: vec![put("n", "cas")],
        failure: vec![],
    };
    assert!(!s.txn(cas(cur - 1)).await.unwrap().succeeded);
    assert!(s.txn(cas(cur)).await.unwrap().succeeded);
    assert!(
        !s.txn(cas(cur)).await.unwrap().succeeded,
        "revision moved on"
    );
    let absent = s
        .txn(Txn {
            compares: vec![Compare::ModRevision("never".into(), 0)],
            success: vec![put("never", "x")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(absent.succeeded, "ModRevision 0 holds for an absent key");
    // Value.
    let by_value = |v: &str| Txn {
        compares: vec![Compare::Value("n".into(), v.as_bytes().to_vec())],
        success: vec![TxnOp::delete("n")],
        failure: vec![],
    };
    assert!(!s.txn(by_value("nope")).await.unwrap().succeeded);
    assert!(s.get("n").await.unwrap().is_some());
    assert!(s.txn(by_value("cas")).await.unwrap().succeeded);
    assert!(s.get("n").await.unwrap().is_none());
    assert!(
        !s.txn(by_value("cas")).await.unwrap().succeeded,
        "Value fails on an absent key"
    );
    // Several compares: all must hold.
    let t = s
        .txn(Txn {
            compares: vec![Compare::Exists("m".into()), Compare::Exists("n".into())],
            success: vec![put("both", "1")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert!(s.get("both").await.unwrap().is_none());
}

pub async fn txn_name_uniqueness_race(s: StoreRef) {
    const N: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let t = s
                .txn(Txn {
                    compares: vec![Compare::Absent("names/web".into())],
                    success: vec![
                        TxnOp::put("names/web", format!("\"svc-{i}\"").into_bytes()),
                        TxnOp::put(format!("services/svc-{i}"), b"{}".to_vec()),
                    ],
                    failure: vec![],
                })
                .await
                .unwrap();
            (i, t.succeeded)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator wins: {winners:?}");
    let owner = s.get("names/web").await.unwrap().unwrap();
    assert_eq!(owner.value, format!("\"svc-{}\"", winners[0]).into_bytes());
    let (services, _) = s.range("services/").await.unwrap();
    assert_eq!(services.len(), 1, "losers wrote nothing");
}

pub async fn watch_replay_and_live(s: StoreRef) {
    let r1 = s.put("w/a", b"1".to_vec(), None).await.unwrap();
    s.put("other/x", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("w/b", b"2".to_vec(), None).await.unwrap();
    let mut w = s.watch("w/", r1).await.unwrap();
    // Replay from r1 includes both earlier writes under the prefix, in order.
    let replay = next_events(&mut w, 2).await;
    assert_eq!(put_of(&replay[0]).key, "w/a");
    assert_eq!(replay[0].revision(), r1);
    assert_eq!(put_of(&replay[1]).key, "w/b");
    assert_eq!(replay[1].revision(), r2);
    // Live: a put, a write outside the prefix (not seen), a txn, a delete.
    let r3 = s.put("w/c", b"3".to_vec(), None).await.unwrap();
    s.put("other/y", b"1".to_vec(), None).await.unwrap();
    let t = s
        .txn(Txn {
            compares: vec![],
            success: vec![TxnOp::put("w/d", b"4".to_vec()), TxnOp::delete("w/a")],
            failure: vec![],
        })
        .await
        .unwrap();
    let live = next_batch(&mut w).await;
    assert_eq!(live.len(), 1);
    assert_eq!(put_of(&live[0]).key, "w/c");
    assert_eq!(live[0].revision(), r3);
    let batch = next_batch(&mut w).await;
    assert_eq!(batch.len(), 2, "one txn = one batch: {batch:?}");
    assert!(batch.iter().all(|e| e.revision() == t.revision));
    assert_eq!(put_of(&batch[0]).key, "w/d");
    assert_eq!(
        batch[1],
        WatchEvent::Delete {
            key: "w/a".into(),
            mod_revision: t.revision
        }
    );
    // From 0 = only new writes.
    let mut fresh = s.watch("w/", 0).await.unwrap();
    let r = s.put("w/e", b"5".to_vec(), None).await.unwrap();
    let e = next_batch(&mut fresh).await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].revision(), r);
}

pub async fn watch_compacted(s: StoreRef) {
    let r1 = s.put("c/a", b"1".to_vec(), None).await.unwrap();
    s.put("c/a", b"2".to_vec(), None).await.unwrap();
    let r3 = s.put("c/a", b"3".to_vec(), None).await.unwrap();
    s.compact(r3).await.unwrap();
    match s.watch("c/", r1).await {
        Err(Error::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(STEP, w.next()).await.unwrap() {
            Some(Err(Error::Compacted { .. })) => {}
            other => panic!("expected Compacted, got {other:?}"),
        },
        Err(e) => panic!("expected Compacted, got {e:?}"),
    }
    // The compaction point itself is still watchable.
    let mut w = s.watch("c/", r3).await.unwrap();
    assert_eq!(next_batch(&mut w).await[0].revision(), r3);
}

pub async fn lease_expiry_deletes_keys(s: StoreRef) {
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    s.put("l/a", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("l/b", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("l/keep", b"1".to_vec(), None).await.unwrap();
    assert_eq!(s.get("l/a").await.unwrap().unwrap().lease, lease);
    let mut w = s.watch("l/", 0).await.unwrap();
    let started = Instant::now();
    let events = next_events(&mut w, 2).await;
    let elapsed = started.elapsed();
    let mut deleted: Vec<_> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Delete { key, .. } => key.clone(),
            other => panic!("expected deletes, got {other:?}"),
        })
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["l/a", "l/b"]);
    println!("lease (ttl 2s) expired after {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(1000),
        "not before the TTL: {elapsed:?}"
    );
    assert!(s.get("l/a").await.unwrap().is_none());
    assert!(s.get("l/keep").await.unwrap().is_some());
    assert!(
        s.keep_alive(lease).await.is_err(),
        "expired lease cannot be kept alive"
    );
    assert!(
        s.put("l/c", b"1".to_vec(), Some(lease)).await.is_err(),
        "put on an expired lease fails"
    );
}

pub async fn keep_alive_extends(s: StoreRef) {
    let ttl = Duration::from_secs(2);
    let lease = s.grant_lease(ttl).await.unwrap();
    s.put("ka/a", b"1".to_vec(), Some(lease)).await.unwrap();
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        s.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        s.get("ka/a").await.unwrap().is_some(),
        "kept-alive lease outlives twice its TTL"
    );
    s.revoke_lease(lease).await.unwrap();
}

pub async fn revoke_deletes_keys(s: StoreRef) {
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("r/a", b"1".to_vec(), Some(lease)).await.unwrap();
    let mut w = s.watch("r/", 0).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    // Revocation is immediate: the key is gone when the call returns.
    assert!(s.get("r/a").await.unwrap().is_none());
    let events = next_batch(&mut w).await;
    assert!(matches!(&events[0], WatchEvent::Delete { key, .. } if key == "r/a"));
    assert!(s.keep_alive(lease).await.is_err());
    // Re-putting a key without a lease detaches it.
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("r/b", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("r/b", b"2".to_vec(), None).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("r/b").await.unwrap().unwrap().value, b"2");
}

pub async fn concurrent_writes_get_distinct_revisions(s: StoreRef) {
    const N: usize = 64;
    let mut w = s.watch("cw/", 0).await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("cw/{i:02}");
            let rev = s.put(&key, vec![1], None).await.unwrap();
            (key, rev)
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.push(t.await.unwrap());
    }
    println!(
        "[{}] {N} concurrent puts: {:?}",
        s.backend(),
        started.elapsed()
    );
    let mut revs: Vec<_> = written.iter().map(|(_, r)| *r).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), N, "every write has its own revision");
    for (key, rev) in &written {
        assert_eq!(s.get(key).await.unwrap().unwrap().mod_revision, *rev);
    }
    // The watcher sees each write once, as its own batch, in revision order.
    let events = next_events(&mut w, N).await;
    let seen: Vec<_> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(seen, revs);
}

pub async fn failed_writes_leave_nothing_behind(s: StoreRef) {
    let bogus = 0x7fff_0000_1234_i64;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("fw/{i:02}");
            if i % 2 == 0 {
                let ok = s.put(&key, vec![1], None).await.is_ok();
                (key, true, ok)
            } else {
                // A txn whose second op names an unknown lease: the whole txn must fail.
                let r = s
                    .txn(Txn {
                        compares: vec![],
                        success: vec![
                            TxnOp::put(key.clone(), vec![1]),
                            TxnOp::Put {
                                key: format!("{key}-leased"),
                                value: vec![1],
                                lease: Some(bogus),
                            },
                        ],
                        failure: vec![],
                    })
                    .await;
                (key, false, r.is_ok())
            }
        }));
    }
    for t in tasks {
        let (key, valid, ok) = t.await.unwrap();
        assert_eq!(ok, valid, "{key}");
        assert_eq!(s.get(&key).await.unwrap().is_some(), valid, "{key}");
    }
    let (kvs, _) = s.range("fw/").await.unwrap();
    assert_eq!(kvs.len(), 16, "only the valid writes exist");
}

/// Generates one `#[tokio::test]` per scenario for a backend, given an async constructor.
macro_rules! suite {
    ($backend:ident, $make:path, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = $make().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($name:ident),* $(,)?) => {
        suite!(embedded, crate::embedded_store, [$($name),*]);
        suite!(etcd, crate::etcd_store, [$($name),*]);
    };
}

all_backends!(
    get_put_delete,
    range_in_key_order,
    revisions_monotonic,
    delete_prefix,
    txn_compares,
    txn_name_uniqueness_race,
    watch_replay_and_live,
    lease_expiry_deletes_keys,
    keep_alive_extends,
    revoke_deletes_keys,
    concurrent_writes_get_distinct_revisions,
    failed_writes_leave_nothing_behind,
);

// Compaction is cluster-wide in etcd, so this scenario gets an etcd of its own rather than
// pulling history from under the tests sharing one.
suite!(
    embedded_compaction,
    crate::embedded_store,
    [watch_compacted]
);
suite!(
    etcd_compaction,
    crate::dedicated_etcd_store,
    [watch_compacted]
);

async fn embedded_store() -> (StoreRef, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = myagent_control_plane::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    (Arc::new(store), dir)
}

async fn etcd_store() -> (StoreRef, Arc<Etcd>) {
    let etcd = Etcd::shared();
    let store = etcd_store_on(&etcd).await;
    (store, etcd)
}

async fn dedicated_etcd_store() -> (StoreRef, Arc<Etcd>) {
    let etcd = Arc::new(Etcd::start());
    let store = etcd_store_on(&etcd).await;
    (store, etcd)
}

pub async fn etcd_store_on(etcd: &Etcd) -> StoreRef {
    let prefix = format!("/conformance-{}/", uuid::Uuid::new_v4());
    let store = EtcdStore::connect(&[etcd.endpoint()], &prefix, Duration::from_secs(2))
        .await
        .unwrap();
    Arc::new(store)
}

#[path = "store_conformance/backend_specific.rs"]
mod backend_specific;

// Silences "unused" for helpers only some generated tests use.
#[allow(dead_code)]
fn _assert_object_safe(_: &dyn Store) {}
