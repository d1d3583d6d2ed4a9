//! Scenarios that only make sense for one backend: embedded durability and exclusivity, etcd
//! outages.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use myagent_control_plane::store::embedded::EmbeddedStore;
use myagent_control_plane::store::etcd::EtcdStore;
use myagent_control_plane::store::{StoreRef, WatchEvent};
use myagent_control_plane::Error;

fn open(dir: &std::path::Path) -> StoreRef {
    Arc::new(EmbeddedStore::open(dir).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_persists_revision_and_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, create) = {
        let s = open(dir.path());
        s.put("a", b"1".to_vec(), None).await.unwrap();
        let rev = s.put("a", b"2".to_vec(), None).await.unwrap();
        s.put("b", b"3".to_vec(), None).await.unwrap();
        s.delete("b").await.unwrap();
        let create = s.get("a").await.unwrap().unwrap().create_revision;
        (s.revision().await.unwrap().max(rev), create)
    };
    let s = open(dir.path());
    assert_eq!(
        s.revision().await.unwrap(),
        rev,
        "revision survives restart"
    );
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!(a.value, b"2");
    assert_eq!(a.create_revision, create);
    assert!(s.get("b").await.unwrap().is_none());
    let next = s.put("c", vec![], None).await.unwrap();
    assert_eq!(next, rev + 1, "revisions continue after restart");
    // History before the restart is gone: watching it asks the caller to resync.
    assert!(matches!(s.watch("", 1).await, Err(Error::Compacted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_drops_leased_keys_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = open(dir.path());
        let lease = s.grant_lease(Duration::from_secs(3600)).await.unwrap();
        s.put("node/1", b"1".to_vec(), Some(lease)).await.unwrap();
        s.put("durable", b"1".to_vec(), None).await.unwrap()
    };
    let s = open(dir.path());
    assert!(
        s.get("node/1").await.unwrap().is_none(),
        "leased key dropped"
    );
    assert!(s.get("durable").await.unwrap().is_some());
    assert!(
        s.revision().await.unwrap() > before,
        "the drop is a write at a new revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_second_open_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = match EmbeddedStore::open(dir.path()) {
        Ok(_) => panic!("second open of one data dir must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("already open"), "{err}");
    assert!(err.contains("store.redb"), "names the file: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_second_process_cannot_open() {
    // A child process (this test binary, re-run in "holder" mode) holds the store open while we
    // try; redb's file lock is per process, so this is the real multi-process case.
    if let Ok(dir) = std::env::var("MYAGENT_TEST_HOLD_STORE") {
        let _s = EmbeddedStore::open(std::path::Path::new(&dir)).unwrap();
        println!("HOLDING");
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "backend_specific::embedded_second_process_cannot_open",
            "--nocapture",
        ])
        .env("MYAGENT_TEST_HOLD_STORE", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "holder process exited early");
        if line.contains("HOLDING") {
            break;
        }
    }
    let result = EmbeddedStore::open(dir.path());
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(_) => panic!("a second process opened a held data dir"),
        Err(e) => assert!(e.to_string().contains("already open"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lagging_watcher_ends_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut w = s.watch("x/", 0).await.unwrap();
    // Never read while writing more batches than a watcher may buffer.
    let started = std::time::Instant::now();
    for i in 0..1100 {
        s.put(&format!("x/{i}"), vec![], None).await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "1100 durable embedded puts: {took:?} ({:?} each)",
        took / 1100
    );
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
        {
            Some(Ok(batch)) => {
                assert!(batch.iter().all(|e| matches!(e, WatchEvent::Put(_))));
                seen += batch.len();
            }
            Some(Err(Error::Compacted { .. })) => break,
            other => panic!("expected Compacted after lagging, got {other:?}"),
        }
    }
    assert!(seen < 1100, "the lagging watcher was cut off ({seen} seen)");
    assert!(w.next().await.is_none(), "the stream ends after the error");
}

/// Every call on a store whose etcd is down answers `StoreUnavailable` within about the
/// request timeout.
async fn assert_unavailable_promptly(s: &StoreRef, timeout: Duration) {
    let started = std::time::Instant::now();
    let err = s.put("probe", b"1".to_vec(), None).await.unwrap_err();
    let put_took = started.elapsed();
    assert!(matches!(err, Error::StoreUnavailable(_)), "{err:?}");
    let started = std::time::Instant::now();
    let err = s.range("").await.unwrap_err();
    assert!(matches!(err, Error::StoreUnavailable(_)), "{err:?}");
    let took = put_took.max(started.elapsed());
    println!("etcd down: StoreUnavailable after {took:?} (request timeout {timeout:?})");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_answers_unavailable_then_recovers() {
    let etcd = myagent_tests::etcd::Etcd::start();
    let timeout = Duration::from_secs(2);
    let prefix = format!("/outage-{}/", uuid::Uuid::new_v4());
    let s: StoreRef = Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], &prefix, timeout)
            .await
            .unwrap(),
    );
    let before = s.put("a", b"1".to_vec(), None).await.unwrap();
    let mut w = s.watch("", 0).await.unwrap();

    etcd.stop();
    assert_unavailable_promptly(&s, timeout).await;
    // The watch ends with StoreUnavailable rather than going silent.
    match tokio::time::timeout(Duration::from_secs(15), w.next()).await {
        Ok(Some(Err(Error::StoreUnavailable(_)))) => {}
        other => panic!("expected the watch to end with StoreUnavailable, got {other:?}"),
    }

    etcd.restart();
    let started = std::time::Instant::now();
    let rev = myagent_tests::wait::until(
        "store to answer after etcd restart",
        Duration::from_secs(20),
        || {
            let s = s.clone();
            async move { s.put("b", b"2".to_vec(), None).await.ok() }
        },
    )
    .await;
    println!(
        "etcd back: store answered again after {:?}",
        started.elapsed()
    );
    assert!(rev > before);
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1", "data kept");
    // Re-watching from the last seen revision replays what was missed.
    let mut w = s.watch("", before + 1).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(batch[0].key(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connect_while_down_does_not_block() {
    let etcd = myagent_tests::etcd::Etcd::start();
    etcd.stop();
    let timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let s: StoreRef = Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], "/down/", timeout)
            .await
            .expect("connect does not need etcd to be up"),
    );
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    assert_unavailable_promptly(&s, timeout).await;
    etcd.restart();
    myagent_tests::wait::until(
        "store to answer once etcd is up",
        Duration::from_secs(20),
        || {
            let s = s.clone();
            async move { s.revision().await.ok() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_hung_answers_unavailable_within_timeout() {
    let etcd = myagent_tests::etcd::Etcd::start();
    let timeout = Duration::from_secs(1);
    let s: StoreRef = Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], "/hung/", timeout)
            .await
            .unwrap(),
    );
    s.put("a", b"1".to_vec(), None).await.unwrap();
    etcd.pause();
    let started = std::time::Instant::now();
    let err = s.get("a").await.unwrap_err();
    let took = started.elapsed();
    etcd.resume();
    println!("etcd hung: StoreUnavailable after {took:?} (request timeout {timeout:?})");
    assert!(matches!(err, Error::StoreUnavailable(_)), "{err:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(500),
        "took {took:?}"
    );
    myagent_tests::wait::until(
        "store to answer after etcd resumes",
        Duration::from_secs(10),
        || {
            let s = s.clone();
            async move { s.get("a").await.ok().flatten() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_store_constructs_both_backends() {
    use myagent_control_plane::store::{build_store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let embedded = build_store(&StoreConfig::Embedded {
        data_dir: dir.path().join("nested/data"),
    })
    .await
    .unwrap();
    assert_eq!(embedded.backend(), "embedded");
    embedded.put("k", b"1".to_vec(), None).await.unwrap();
    assert!(dir.path().join("nested/data/store.redb").is_file());

    let etcd = myagent_tests::etcd::Etcd::shared();
    let store = build_store(&StoreConfig::Etcd {
        endpoints: vec![etcd.endpoint()],
        prefix: format!("/build-{}/", uuid::Uuid::new_v4()),
        request_timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    assert_eq!(store.backend(), "etcd");
    store.ping().await.unwrap();

    let err = build_store(&StoreConfig::Etcd {
        endpoints: vec![],
        prefix: "/x/".into(),
        request_timeout: Duration::from_secs(1),
    })
    .await
    .err()
    .expect("no endpoints is a config error");
    assert_eq!(err.code(), "INVALID_REQUEST");
}
