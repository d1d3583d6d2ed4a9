//! Logs of real agent processes over the gRPC `Logs` service: levels, filters, search, follow.

mod supervisor_support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use myagent_control_plane::supervisor::lifecycle;
use myagent_proto::v1 as pb;
use supervisor_support::{agent_port, echo_agent, Fixture};

async fn wait_for_line(
    logs: &mut supervisor_support::LogsClient,
    service: &str,
    needle: &str,
) -> Vec<pb::LogEntry> {
    myagent_tests::wait::until(
        &format!("log line {needle:?}"),
        Duration::from_secs(10),
        || {
            let mut c = logs.clone();
            let (service, needle) = (service.to_string(), needle.to_string());
            async move {
                let r = c
                    .get_logs(pb::GetLogsRequest {
                        service,
                        level: String::new(),
                        limit: 1000,
                        since: None,
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.logs
                    .iter()
                    .any(|l| l.message.contains(&needle))
                    .then_some(r.logs)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_filter_and_search_find_agent_lines() {
    let fx = Fixture::start().await;
    let (_, mut logs) = fx.grpc().await;
    let def = fx
        .register("talker", Some(echo_agent()), agent_port(), |_| {})
        .await;
    lifecycle::start(&fx.ctx, &def).await.unwrap();
    wait_for_line(&mut logs, "talker", "an error line in JSON").await;
    // The manager's "running" line is the last one of a start.
    let all = wait_for_line(&mut logs, "talker", "running (pid").await;

    let find = |needle: &str| {
        all.iter()
            .find(|l| l.message.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {all:?}"))
    };
    let listening = find("listening on ws://");
    assert_eq!(
        (listening.level.as_str(), listening.source.as_str()),
        ("info", "stdout")
    );
    let warning = find("WARNING this is a warning line");
    assert_eq!(
        (warning.level.as_str(), warning.source.as_str()),
        ("warn", "stderr")
    );
    assert_eq!(find("a debug line").level, "debug");
    assert_eq!(find("an error line in JSON").level, "error");
    let started = find("starting (pid");
    assert_eq!(started.source, "manager");
    assert_eq!(listening.service_id, def.id);
    assert_eq!(listening.service_name, "talker");
    // Oldest first.
    let ts: Vec<_> = all
        .iter()
        .map(|l| l.timestamp.unwrap())
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));

    // level = that level and above.
    let errors = logs
        .get_logs(pb::GetLogsRequest {
            service: "talker".into(),
            level: "error".into(),
            limit: 100,
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!errors.logs.is_empty());
    assert!(
        errors.logs.iter().all(|l| l.level == "error"),
        "{:?}",
        errors.logs
    );
    let warn_up = logs
        .get_logs(pb::GetLogsRequest {
            service: def.id.clone(),
            level: "warn".into(),
            limit: 100,
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        warn_up.logs.iter().any(|l| l.level == "warn")
            && warn_up.logs.iter().any(|l| l.level == "error")
    );
    assert!(warn_up
        .logs
        .iter()
        .all(|l| l.level == "warn" || l.level == "error"));
    // limit keeps the newest.
    let two = logs
        .get_logs(pb::GetLogsRequest {
            service: "talker".into(),
            level: String::new(),
            limit: 2,
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.logs.len(), 2);
    assert_eq!(two.logs[1].message, all.last().unwrap().message);
    // since excludes older lines.
    let last_ts = all.last().unwrap().timestamp;
    let since = logs
        .get_logs(pb::GetLogsRequest {
            service: "talker".into(),
            level: String::new(),
            limit: 100,
            since: last_ts,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(since.logs.len() < all.len());

    // Search: case-insensitive, across services or in one.
    let hits = logs
        .search_logs(pb::SearchLogsRequest {
            query: "warning LINE".into(),
            service: String::new(),
            limit: 50,
            level: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.query, "warning LINE");
    assert!(
        hits.results
            .iter()
            .any(|r| r.service_name == "talker" && r.message.contains("warning line")),
        "{hits:?}"
    );
    let none = logs
        .search_logs(pb::SearchLogsRequest {
            query: "no such text anywhere".into(),
            service: "talker".into(),
            limit: 50,
            level: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total, 0);

    // Bad input is INVALID_REQUEST naming the field.
    let err = logs
        .get_logs(pb::GetLogsRequest {
            service: "talker".into(),
            level: "loud".into(),
            limit: 0,
            since: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = logs
        .search_logs(pb::SearchLogsRequest {
            query: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_delivers_new_lines_within_seconds() {
    let fx = Fixture::start().await;
    let (_, mut logs) = fx.grpc().await;
    let port = agent_port();
    let def = fx
        .register("followed", Some(echo_agent()), port, |_| {})
        .await;
    lifecycle::start(&fx.ctx, &def).await.unwrap();
    wait_for_line(&mut logs, "followed", "an error line in JSON").await;

    let mut stream = logs
        .follow_logs(pb::FollowLogsRequest {
            service: "followed".into(),
            level: "info".into(),
            tail: 2,
        })
        .await
        .unwrap()
        .into_inner();
    // The tail comes first.
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_ne!(e.level, "debug");
    }
    // Make the agent print a line: a `log:` frame over its WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap();
    let marker = format!("follow-marker-{}", uuid::Uuid::new_v4());
    let sent = std::time::Instant::now();
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
        "log:{marker}"
    )))
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            if e.message.contains(&marker) {
                return e;
            }
        }
        panic!("follow stream ended");
    })
    .await
    .expect("line delivered within 5 s");
    assert_eq!(got.source, "stdout");
    assert_eq!(got.service_id, def.id);
    println!("follow delivered a new line in {:?}", sent.elapsed());

    // The service is deleted: the follow ends with SERVICE_NOT_FOUND instead of hanging.
    fx.ctx
        .store
        .delete(&myagent_control_plane::keys::service(&def.id))
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => return Some(s),
                None => return None,
            }
        }
    })
    .await
    .expect("the follow ends within 10 s of the deletion")
    .expect("the follow ends with an error, not silently");
    assert_eq!(end.code(), tonic::Code::NotFound, "{end:?}");
    assert_eq!(
        myagent_tests::control_plane::error_code(&end).0,
        "SERVICE_NOT_FOUND"
    );
    fx.shutdown().await;
}

/// `--log-max-file-bytes` / `--log-max-files`: a service's log rotates at the configured size
/// and keeps that many files, the oldest deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_follows_the_flags() {
    const MAX_BYTES: u64 = 2048;
    let cp = myagent_tests::control_plane::control_plane()
        .arg("--log-max-file-bytes")
        .arg("2KiB")
        .arg("--log-max-files")
        .arg("3")
        .spawn()
        .await;
    let mut registry = cp.registry().await;
    let port = agent_port();
    let id = registry
        .register_service(pb::RegisterServiceRequest {
            name: "rotating".into(),
            agent_factory_path: echo_agent().display().to_string(),
            host: "127.0.0.1".into(),
            port: u32::from(port),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .service_id;
    registry
        .start_service(pb::StartServiceRequest {
            service: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = cp.data_dir.join("logs").join(&id);
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(), vec!["current.log"], "nothing rotated yet");

    // 200 lines of ~200 bytes each (as stored JSON): ~40 KB, far beyond 3 × 2 KiB.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap();
    for i in 0..200 {
        let text = format!("log:rotation-line-{i:04} {}", "x".repeat(40));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        ws.next().await.unwrap().unwrap(); // the echo: the line has been printed
    }
    let logs = pb::logs_client::LogsClient::new(cp.channel().await);
    let kept =
        myagent_tests::wait::until("the last line captured", Duration::from_secs(10), || {
            let mut logs = logs.clone();
            let id = id.clone();
            async move {
                let r = logs
                    .get_logs(pb::GetLogsRequest {
                        service: id,
                        limit: 10_000,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.logs
                    .iter()
                    .any(|l| l.message.starts_with("rotation-line-0199"))
                    .then_some(r.logs)
            }
        })
        .await;

    // Exactly `--log-max-files` files: the current one and two rotated; 3.log never exists
    // because the oldest is deleted when the next rotation would create it.
    assert_eq!(files(), vec!["1.log", "2.log", "current.log"]);
    for name in ["1.log", "2.log", "current.log"] {
        let len = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(len <= MAX_BYTES, "{name} is {len} bytes > {MAX_BYTES}");
        if name != "current.log" {
            // Rotated when the next line would not fit: full to within one line.
            assert!(len > MAX_BYTES - 400, "{name} rotated early at {len} bytes");
        }
    }
    // The oldest lines went with the deleted files; the newest are all there, in order.
    assert!(
        !kept.iter().any(|l| l.message.starts_with("starting (pid")
            || l.message.starts_with("rotation-line-0000")),
        "the oldest lines were deleted"
    );
    let numbers: Vec<u32> = kept
        .iter()
        .filter_map(|l| l.message.strip_prefix("rotation-line-"))
        .map(|rest| rest[..4].parse().unwrap())
        .collect();
    assert!(
        numbers.len() >= 20 && numbers.len() < 100,
        "{}",
        numbers.len()
    );
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(*numbers.last().unwrap(), 199);
    cp.shutdown().await;
}
