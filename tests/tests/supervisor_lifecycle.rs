//! Supervisor with real agent processes on the embedded store: start/stop/restart, start
//! failures with stderr, PORT_IN_USE, no orphans, automatic restarts with backoff.

mod supervisor_support;

use std::time::Duration;

use myagent_control_plane::error::Error;
use myagent_control_plane::model::ServiceStatus;
use myagent_control_plane::supervisor::lifecycle;
use supervisor_support::{agent_port, alive, echo_agent, env, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_a_managed_agent() {
    let fx = Fixture::start().await;
    let port = agent_port();
    let def = fx.register("echo", Some(echo_agent()), port, |_| {}).await;

    let rt = lifecycle::start(&fx.ctx, &def).await.expect("start");
    assert_eq!(rt.status, ServiceStatus::Running);
    let pid = rt.pid.expect("pid");
    assert!(alive(pid));
    assert_eq!(rt.command[0], "python3");
    assert_eq!(rt.leader, "replica-test");
    assert!(rt.started_at.is_some());
    // The port now speaks WebSocket.
    let probe =
        myagent_control_plane::health::probe::handshake("127.0.0.1", port, Duration::from_secs(2))
            .await;
    assert!(probe.ok, "{probe:?}");
    // Start again: already running, same process.
    assert_eq!(
        lifecycle::start(&fx.ctx, &def).await.unwrap().pid,
        Some(pid)
    );

    let rt = lifecycle::restart(&fx.ctx, &def, None, String::new())
        .await
        .expect("restart");
    assert_eq!(rt.status, ServiceStatus::Running);
    let pid2 = rt.pid.unwrap();
    assert_ne!(pid, pid2);
    assert!(!alive(pid), "old process gone after restart");

    let rt = lifecycle::stop(&fx.ctx, &def).await.expect("stop");
    assert_eq!(rt.status, ServiceStatus::Stopped);
    assert_eq!(rt.pid, None);
    assert!(!alive(pid2));
    fx.shutdown().await;
}

/// Two starts while the agent is still starting: `services/{id}` holds one request, so the
/// second replaces the first. Both calls answer once the agent runs (the first used to wait
/// for its own, replaced request until its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_both_answer_when_running() {
    let fx = Fixture::start().await;
    let port = agent_port();
    let def = fx
        .register("slow", Some(echo_agent()), port, |c| {
            c.env = env(&[("ECHO_STARTUP_DELAY", "2")]);
        })
        .await;
    let t0 = std::time::Instant::now();
    let first = tokio::spawn({
        let (ctx, def) = (fx.ctx.clone(), def.clone());
        async move { lifecycle::start(&ctx, &def).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = lifecycle::start(&fx.ctx, &def).await.expect("second start");
    let first = first.await.unwrap().expect("first start");
    assert_eq!(first.status, ServiceStatus::Running);
    assert_eq!(second.status, ServiceStatus::Running);
    assert_eq!(first.pid, second.pid, "one process");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "both answered once running, not at a timeout: {:?}",
        t0.elapsed()
    );
    fx.shutdown().await;
}

/// A start while a restart is under way does not cancel it: the restart still happens, and
/// both calls answer with a running service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_during_a_restart_leaves_it_be() {
    let fx = Fixture::start().await;
    let port = agent_port();
    let def = fx
        .register("restarted", Some(echo_agent()), port, |c| {
            c.env = env(&[("ECHO_STARTUP_DELAY", "1")]);
        })
        .await;
    let old = lifecycle::start(&fx.ctx, &def).await.expect("start").pid;
    let restart = tokio::spawn({
        let (ctx, def) = (fx.ctx.clone(), def.clone());
        async move { lifecycle::restart(&ctx, &def, None, String::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(2)).await;
    let started = lifecycle::start(&fx.ctx, &def)
        .await
        .expect("start during restart");
    let restarted = restart.await.unwrap().expect("restart");
    assert_eq!(started.status, ServiceStatus::Running);
    assert_eq!(restarted.status, ServiceStatus::Running);
    assert_ne!(restarted.pid, old, "the restart happened");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_at_once_is_service_start_failed_with_stderr() {
    let fx = Fixture::start().await;
    let def = fx
        .register("broken", Some(echo_agent()), agent_port(), |c| {
            c.env = env(&[("ECHO_EXIT_AT_ONCE", "2")])
        })
        .await;
    let started = std::time::Instant::now();
    let err = lifecycle::start(&fx.ctx, &def)
        .await
        .expect_err("must fail");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "reported at once, not after the startup timeout"
    );
    match &err {
        Error::ServiceStartFailed {
            stderr, message, ..
        } => {
            assert!(message.contains("exited with code 2"), "{message}");
            assert!(
                stderr
                    .iter()
                    .any(|l| l.contains("simulated configuration error")),
                "{stderr:?}"
            );
        }
        other => panic!("expected SERVICE_START_FAILED, got {other:?}"),
    }
    assert_eq!(err.code(), "SERVICE_START_FAILED");
    let rt = fx.runtime(&def.id).await.unwrap();
    assert_eq!(rt.status, ServiceStatus::Error);
    assert_eq!(rt.last_exit_code, Some(2));
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_handshake_times_out_and_is_killed() {
    let fx = Fixture::start().await;
    let def = fx
        .register("hung", Some(echo_agent()), agent_port(), |c| {
            c.env = env(&[("ECHO_HANG_HANDSHAKE", "1")]);
            c.startup_timeout = 1.5;
        })
        .await;
    let err = lifecycle::start(&fx.ctx, &def)
        .await
        .expect_err("must fail");
    assert_eq!(err.code(), "SERVICE_START_FAILED");
    assert!(err.to_string().contains("no WebSocket handshake"), "{err}");
    let rt = fx.runtime(&def.id).await.unwrap();
    assert_eq!(rt.pid, None);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_held_by_another_listener_is_port_in_use() {
    let fx = Fixture::start().await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let def = fx.register("clash", Some(echo_agent()), port, |_| {}).await;
    let err = lifecycle::start(&fx.ctx, &def)
        .await
        .expect_err("must fail");
    assert_eq!(err.code(), "PORT_IN_USE", "{err:?}");

    // Another registered, running service on the same port names its owner.
    drop(holder);
    let first = fx.register("first", Some(echo_agent()), port, |_| {}).await;
    lifecycle::start(&fx.ctx, &first)
        .await
        .expect("first starts");
    let second = fx
        .register("second", Some(echo_agent()), port, |_| {})
        .await;
    match lifecycle::start(&fx.ctx, &second).await {
        Err(Error::PortInUse { owner, .. }) => assert_eq!(owner.as_deref(), Some("first")),
        other => panic!("expected PORT_IN_USE, got {other:?}"),
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_agents_children_too() {
    let fx = Fixture::start().await;
    let def = fx
        .register("parent", Some(echo_agent()), agent_port(), |c| {
            c.env = env(&[("ECHO_SPAWN_CHILD", "1"), ("ECHO_IGNORE_SIGTERM", "1")]);
            c.stop_grace_period = 1.0;
        })
        .await;
    let rt = lifecycle::start(&fx.ctx, &def).await.expect("start");
    let pid = rt.pid.unwrap();
    let child =
        myagent_tests::wait::until("child pid in the logs", Duration::from_secs(5), || async {
            let q = myagent_control_plane::logs::LogQuery {
                limit: 100,
                ..Default::default()
            };
            let (lines, _) = fx.logs.query(&def.id, q).await.unwrap();
            lines.iter().find_map(|e| {
                e.message
                    .strip_prefix("child_pid=")
                    .and_then(|p| p.trim().parse::<i32>().ok())
            })
        })
        .await;
    assert!(alive(child));
    let started = std::time::Instant::now();
    let rt = lifecycle::stop(&fx.ctx, &def).await.expect("stop");
    assert_eq!(rt.status, ServiceStatus::Stopped);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGTERM was ignored, so SIGKILL came after the grace"
    );
    myagent_tests::assert_eventually!(
        Duration::from_secs(5),
        !alive(pid) && !alive(child),
        "agent {pid} and child {child} gone"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_restarted_with_backoff_then_gives_up() {
    let fx = Fixture::start().await;
    let def = fx
        .register("crashy", Some(echo_agent()), agent_port(), |c| {
            c.env = env(&[("ECHO_CRASH_AFTER", "0.3")]);
            c.max_restarts = 3;
            c.restart_window = 60.0;
        })
        .await;
    let first = lifecycle::start(&fx.ctx, &def).await.expect("start");
    let first_pid = first.pid.unwrap();
    // It crashes, comes back under a new pid, with the numbers in the runtime.
    let rt =
        myagent_tests::wait::until("an automatic restart", Duration::from_secs(10), || async {
            fx.runtime(&def.id).await.filter(|r| {
                r.restart_count >= 1
                    && r.status == ServiceStatus::Running
                    && r.pid != Some(first_pid)
            })
        })
        .await;
    assert_eq!(rt.last_exit_code, Some(3));
    // Then it keeps crashing and the policy gives up.
    let rt = fx
        .wait_status(&def.id, ServiceStatus::Error, Duration::from_secs(20))
        .await;
    assert_eq!(rt.restart_count, 3, "{rt:?}");
    assert!(
        rt.last_error.as_deref().unwrap_or("").contains("gave up"),
        "{rt:?}"
    );
    assert_eq!(rt.next_restart_in_seconds, 0.0);
    // A later operator start tries again.
    let again = lifecycle::start(&fx.ctx, &def)
        .await
        .expect("start after give-up");
    assert_eq!(again.status, ServiceStatus::Running);
    fx.shutdown().await;
}

/// Writes `election/leader` for `replica` (as its elector would); returns the revision.
async fn lead_as(fx: &Fixture, replica: &str) -> i64 {
    let record = myagent_control_plane::election::LeaderRecord {
        replica_id: replica.into(),
        since: chrono::Utc::now(),
        url: String::new(),
    };
    fx.ctx
        .store
        .put(
            "election/leader",
            myagent_control_plane::store::json::encode(&record).unwrap(),
            None,
        )
        .await
        .unwrap()
}

/// A lost term (the store silent past the election lease) keeps the agents running while no
/// other replica leads, and the same replica's next term goes on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_term_keeps_the_processes_until_another_replica_leads() {
    let fx = Fixture::start().await;
    let def = fx
        .register("lead", Some(echo_agent()), agent_port(), |_| {})
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    fx.leader.send(false).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(pid), "kept while no replica leads");
    fx.leader.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rt = fx.runtime(&def.id).await.expect("runtime");
    assert_eq!(rt.status, ServiceStatus::Running, "{rt:?}");
    assert_eq!(
        rt.pid,
        Some(pid),
        "the next term goes on with the same process"
    );
    assert!(alive(pid));
    // Still managed by the new term: a stop ends it.
    let stopped = lifecycle::stop(&fx.ctx, &def).await.expect("stop");
    assert_eq!(stopped.status, ServiceStatus::Stopped);
    assert!(!alive(pid));
    fx.shutdown().await;
}

/// A replica that still believes it leads, after another replica has won the election key,
/// writes no runtime or health: its writes are fenced by the revision of its term in the store
/// (a frozen leader resuming handled its agent's death before it learned its term had ended,
/// and wrote the service unhealthy over the new leader's state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_an_ended_term_are_fenced_in_the_store() {
    use myagent_control_plane::keys;
    use myagent_control_plane::model::HealthState;
    use myagent_control_plane::store::json;
    let fx = Fixture::start().await;
    let won = lead_as(&fx, "this-replica").await;
    fx.ctx.term.won_at(won);
    let def = fx
        .register("fenced", Some(echo_agent()), agent_port(), |_| {})
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    let health = || async {
        json::get::<HealthState>(&fx.ctx.store, &keys::health(&def.id))
            .await
            .unwrap()
            .map(|(h, _)| h.status)
    };
    let before = health().await;
    assert_eq!(
        before,
        Some(myagent_control_plane::model::HealthStatus::Healthy)
    );

    // Another replica wins; this one has not heard yet, and its agent dies.
    lead_as(&fx, "another-replica").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rt = fx.runtime(&def.id).await.expect("runtime");
    assert_eq!(rt.pid, Some(pid), "runtime untouched: {rt:?}");
    assert_eq!(rt.status, ServiceStatus::Running, "{rt:?}");
    assert_eq!(health().await, before, "health untouched");
    fx.shutdown().await;
}

/// Once another replica is seen leading, the kept agents are stopped (it launches its own), and
/// leading again later starts a new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_leadership_to_another_replica_stops_the_processes() {
    let fx = Fixture::start().await;
    let def = fx
        .register("lead", Some(echo_agent()), agent_port(), |_| {})
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    lead_as(&fx, "another-replica").await;
    fx.leader.send(false).unwrap();
    myagent_tests::assert_eventually!(
        Duration::from_secs(10),
        !alive(pid),
        "agent stopped once another replica leads"
    );
    fx.ctx.store.delete("election/leader").await.unwrap();
    // Leading again: desired=running is reconciled, a new process starts.
    fx.leader.send(true).unwrap();
    let rt = fx
        .wait_relaunched(&def.id, pid, Duration::from_secs(10))
        .await;
    assert!(alive(rt.pid.unwrap()));
    fx.shutdown().await;
}

/// A new term relaunches what ran under the previous one as an automatic restart: a launch that
/// fails (here the port is still held for a moment, as by a leftover that is still exiting) is
/// retried by the restart policy. It used to end in `error` with nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_launch_that_fails_is_retried() {
    let fx = Fixture::start().await;
    let port = agent_port();
    let def = fx
        .register("taken-over", Some(echo_agent()), port, |_| {})
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    lead_as(&fx, "another-replica").await;
    fx.leader.send(false).unwrap();
    myagent_tests::assert_eventually!(Duration::from_secs(10), !alive(pid), "stopped");
    // The term this replica takes over next finds the port taken for a moment.
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    fx.ctx.store.delete("election/leader").await.unwrap();
    fx.leader.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(holder);
    let rt = fx
        .wait_relaunched(&def.id, pid, Duration::from_secs(15))
        .await;
    assert!(alive(rt.pid.unwrap()));
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_honours_grace_and_process_stats_are_sampled() {
    let fx = Fixture::start().await;
    let def = fx
        .register("graceful", Some(echo_agent()), agent_port(), |_| {})
        .await;
    let pid = lifecycle::start(&fx.ctx, &def).await.unwrap().pid.unwrap();
    // Memory and CPU of the process tree reach the runtime within a few seconds.
    let rt = myagent_tests::wait::until("process stats", Duration::from_secs(10), || async {
        fx.runtime(&def.id).await.filter(|r| r.memory_mb > 0.0)
    })
    .await;
    assert!(
        rt.memory_mb > 1.0 && rt.memory_mb < 1024.0,
        "python agent RSS {} MB",
        rt.memory_mb
    );
    assert!(rt.cpu_percent >= 0.0);

    let t = std::time::Instant::now();
    let rt = lifecycle::restart(&fx.ctx, &def, Some(1), "upgrading".into())
        .await
        .expect("restart");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "grace period honoured"
    );
    assert_eq!(rt.status, ServiceStatus::Running);
    assert_ne!(rt.pid, Some(pid));
    let q = myagent_control_plane::logs::LogQuery {
        limit: 200,
        ..Default::default()
    };
    let (lines, _) = fx.logs.query(&def.id, q).await.unwrap();
    assert!(lines
        .iter()
        .any(|l| l.source == myagent_control_plane::logs::Source::Manager
            && l.message.contains("upgrading")));
    fx.shutdown().await;
}
