//! Leader election over both store backends: one leader at a time, takeover after a crash
//! within the TTL, immediate handover on graceful shutdown, and stepping down when the key is
//! taken away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use myagent_control_plane::election::{self, current_leader};
use myagent_control_plane::keys::ELECTION_LEADER;
use myagent_control_plane::store::embedded::EmbeddedStore;
use myagent_control_plane::store::etcd::EtcdStore;
use myagent_control_plane::store::StoreRef;
use myagent_tests::etcd::Etcd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

/// Hands out stores that all see the same data (two replicas of one cluster).
enum Cluster {
    Embedded(StoreRef, #[allow(dead_code)] tempfile::TempDir),
    Etcd(Arc<Etcd>, String),
}

impl Cluster {
    fn embedded() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store: StoreRef = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        Cluster::Embedded(store, dir)
    }

    fn etcd() -> Cluster {
        Cluster::Etcd(
            Etcd::shared(),
            format!("/election-{}/", uuid::Uuid::new_v4()),
        )
    }

    /// A store for one replica: a separate etcd client each, or the one embedded store.
    async fn store(&self) -> StoreRef {
        match self {
            Cluster::Embedded(s, _) => s.clone(),
            Cluster::Etcd(etcd, prefix) => Arc::new(
                EtcdStore::connect(&[etcd.endpoint()], prefix, Duration::from_secs(2))
                    .await
                    .unwrap(),
            ),
        }
    }
}

struct Replica {
    id: &'static str,
    store: StoreRef,
    is_leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn replica(cluster: &Cluster, id: &'static str) -> Replica {
    let store = cluster.store().await;
    let shutdown = CancellationToken::new();
    let (is_leader, task) = election::spawn(store.clone(), id.into(), TTL, shutdown.clone());
    Replica {
        id,
        store,
        is_leader,
        shutdown,
        task,
    }
}

async fn wait_leader(r: &mut Replica, within: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, r.is_leader.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("{} did not become leader within {within:?}", r.id))
        .unwrap();
    started.elapsed()
}

/// Waits until exactly one replica leads and returns (leader, follower).
async fn elect(a: Replica, b: Replica) -> (Replica, Replica) {
    myagent_tests::wait::until(
        "a leader to be elected",
        Duration::from_secs(10),
        || async { (*a.is_leader.borrow() || *b.is_leader.borrow()).then_some(()) },
    )
    .await;
    let (leader, follower) = if *a.is_leader.borrow() {
        (a, b)
    } else {
        (b, a)
    };
    // Stays that way: the follower never claims leadership while the leader holds it.
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        assert!(*leader.is_leader.borrow(), "leader kept its lease");
        assert!(!*follower.is_leader.borrow(), "exactly one leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        current_leader(&leader.store).await.unwrap().as_deref(),
        Some(leader.id)
    );
    (leader, follower)
}

async fn exactly_one_leader(cluster: Cluster) {
    let a = replica(&cluster, "replica-a").await;
    let b = replica(&cluster, "replica-b").await;
    let (leader, follower) = elect(a, b).await;
    leader.shutdown.cancel();
    follower.shutdown.cancel();
    leader.task.await.unwrap();
    follower.task.await.unwrap();
    assert_eq!(current_leader(&leader.store).await.unwrap(), None);
}

async fn crashed_leader_is_replaced_within_ttl(cluster: Cluster, backend: &str) {
    let a = replica(&cluster, "replica-a").await;
    let b = replica(&cluster, "replica-b").await;
    let (leader, mut follower) = elect(a, b).await;
    // A crash: the task dies without revoking; only the lease TTL frees the key.
    leader.task.abort();
    let _ = leader.task.await;
    let took = wait_leader(&mut follower, TTL + Duration::from_secs(3)).await;
    println!("[{backend}] takeover after leader crash: {took:?} (ttl {TTL:?})");
    assert!(took <= TTL + Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        current_leader(&follower.store).await.unwrap().as_deref(),
        Some(follower.id)
    );
    follower.shutdown.cancel();
    follower.task.await.unwrap();
}

async fn graceful_shutdown_hands_over_at_once(cluster: Cluster, backend: &str) {
    let a = replica(&cluster, "replica-a").await;
    let b = replica(&cluster, "replica-b").await;
    let (leader, mut follower) = elect(a, b).await;
    let started = Instant::now();
    leader.shutdown.cancel();
    leader.task.await.unwrap();
    assert!(
        !*leader.is_leader.borrow(),
        "a stopped replica does not lead"
    );
    wait_leader(&mut follower, TTL).await;
    let took = started.elapsed();
    println!("[{backend}] handover after graceful shutdown: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    follower.shutdown.cancel();
    follower.task.await.unwrap();
}

async fn leader_steps_down_when_key_is_taken(cluster: Cluster) {
    let a = replica(&cluster, "replica-a").await;
    let b = replica(&cluster, "replica-b").await;
    let (mut leader, follower) = elect(a, b).await;
    let started = Instant::now();
    leader.store.delete(ELECTION_LEADER).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), leader.is_leader.wait_for(|l| !*l))
        .await
        .expect("leader steps down at once when its key is deleted")
        .unwrap();
    println!(
        "stepped down {:?} after the key was deleted",
        started.elapsed()
    );
    // Someone (either replica) leads again soon after.
    myagent_tests::wait::until("a new leader", Duration::from_secs(5), || async {
        (*leader.is_leader.borrow() || *follower.is_leader.borrow()).then_some(())
    })
    .await;
    assert!(!(*leader.is_leader.borrow() && *follower.is_leader.borrow()));
    for r in [leader, follower] {
        r.shutdown.cancel();
        r.task.await.unwrap();
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Cluster::embedded()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Cluster::etcd()).await;
                }
            )*
        }
    };
}

on_both!(exactly_one_leader, leader_steps_down_when_key_is_taken);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_crashed_leader_is_replaced_within_ttl() {
    crashed_leader_is_replaced_within_ttl(Cluster::embedded(), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_crashed_leader_is_replaced_within_ttl() {
    crashed_leader_is_replaced_within_ttl(Cluster::etcd(), "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_graceful_shutdown_hands_over_at_once() {
    graceful_shutdown_hands_over_at_once(Cluster::embedded(), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_graceful_shutdown_hands_over_at_once() {
    graceful_shutdown_hands_over_at_once(Cluster::etcd(), "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_makes_the_leader_step_down_before_its_lease_could_expire() {
    let cluster = Cluster::Etcd(
        Arc::new(Etcd::start()),
        format!("/election-{}/", uuid::Uuid::new_v4()),
    );
    let mut a = replica(&cluster, "replica-a").await;
    wait_leader(&mut a, Duration::from_secs(10)).await;
    let Cluster::Etcd(etcd, _) = &cluster else {
        unreachable!()
    };
    let started = Instant::now();
    etcd.stop();
    tokio::time::timeout(TTL, a.is_leader.wait_for(|l| !*l))
        .await
        .expect("leader steps down within the TTL when the store is gone")
        .unwrap();
    println!(
        "stepped down {:?} after etcd died (ttl {TTL:?})",
        started.elapsed()
    );
    // Back online: it leads again.
    etcd.restart();
    wait_leader(&mut a, Duration::from_secs(15)).await;
    a.shutdown.cancel();
    a.task.await.unwrap();
}
