//! `monitor` used as a person would: run in a real terminal (tmux) against a live stack, read
//! the screen, make changes, see them appear (a client connecting through the stack's real
//! proxy to a running managed agent included), press `q`, see the terminal restored.

use std::process::Command;
use std::time::{Duration, Instant};

use myagent_tests::{bins, cli};

/// A private tmux server (own socket) running one session; killed on drop.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        assert!(
            Command::new("tmux")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "tmux is required for the monitor test (apt-get install -y tmux; tests/run.sh does)"
        );
        let t = Tmux {
            socket: format!("myagent-test-{}-{name}", std::process::id()),
            session: name.to_string(),
        };
        let st = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                &t.session,
                "-x",
                "180",
                "-y",
                "45",
                command,
            ])
            .status()
            .expect("tmux new-session");
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", &self.session, keys])
            .status()
            .expect("send-keys");
        assert!(st.success());
    }

    /// Waits until `check(screen)` holds, panicking with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if check(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The monitor's table row of `name`, split into cells (borders removed).
fn row(screen: &str, name: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        (cells.first().map(String::as_str) == Some(name)).then_some(cells)
    })
}

fn monitor_command(stack: &cli::Stack, extra: &str) -> String {
    format!(
        "env -i PATH=/usr/bin:/bin TERM=xterm-256color {} --server {} monitor --interval 0.5 {extra}; \
         echo monitor-exit=$?; sleep 60",
        bins::path(bins::CLI).display(),
        stack.grpc
    )
}

#[test]
fn monitor_shows_services_redraws_on_change_and_quits_on_q() {
    let stack = cli::up();
    stack
        .cli(&["register", "mon-agent", "--port", "9", "--tags", "mon"])
        .ok();

    let tmux = Tmux::start("monitor", &monitor_command(&stack, ""));
    let screen = tmux.wait_for(
        "the monitor to show mon-agent",
        Duration::from_secs(20),
        |s| row(s, "mon-agent").is_some(),
    );
    assert!(screen.contains("myagent monitor"), "{screen}");
    for col in [
        "NAME", "STATUS", "HEALTH", "CONNS", "SESSIONS", "MSG/S", "CPU %", "MEM MB",
    ] {
        assert!(screen.contains(col), "column {col} missing:\n{screen}");
    }
    let cells = row(&screen, "mon-agent").unwrap();
    assert_eq!(cells[1], "stopped", "{screen}");
    assert!(screen.contains("services 1 total"), "{screen}");

    // A change made elsewhere shows up without touching the monitor.
    stack.cli(&["register", "mon-second", "--port", "10"]).ok();
    let screen = tmux.wait_for("mon-second to appear", Duration::from_secs(10), |s| {
        row(s, "mon-second").is_some()
    });
    assert!(screen.contains("services 2 total"), "{screen}");
    stack.cli(&["remove", "mon-agent"]).ok();
    tmux.wait_for("mon-agent to disappear", Duration::from_secs(10), |s| {
        row(s, "mon-agent").is_none()
    });

    // q quits, the exit status is 0 and the normal screen is back.
    tmux.keys("q");
    let screen = tmux.wait_for("the monitor to exit", Duration::from_secs(10), |s| {
        s.contains("monitor-exit=")
    });
    assert!(screen.contains("monitor-exit=0"), "{screen}");
    assert!(
        !screen.contains("myagent monitor"),
        "terminal not restored:\n{screen}"
    );
}

fn echo_agent_path() -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/agents/echo_agent.py")
        .canonicalize()
        .expect("examples/agents/echo_agent.py")
        .display()
        .to_string()
}

/// The monitor's CONNS cell (NAME STATUS HEALTH CONNS ...) of `name`.
fn conns(screen: &str, name: &str) -> Option<String> {
    row(screen, name).and_then(|cells| cells.get(3).cloned())
}

#[test]
fn monitor_shows_a_client_connecting_through_the_proxy() {
    let stack = cli::up();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let agent = echo_agent_path();
    stack
        .cli(&[
            "register",
            "live-agent",
            &agent,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .ok();
    stack.cli(&["start", "live-agent"]).ok();

    let tmux = Tmux::start("live", &monitor_command(&stack, ""));
    let screen = tmux.wait_for(
        "live-agent running with no connections",
        Duration::from_secs(20),
        |s| {
            row(s, "live-agent").is_some_and(|c| c[1] == "running")
                && conns(s, "live-agent").as_deref() == Some("0")
        },
    );
    assert!(screen.contains("CONNS"), "{screen}");

    // A WebSocket client connects through the stack's real proxy to the running agent.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = format!("{}?service=live-agent", stack.proxy);
    let mut ws = rt.block_on(async {
        let (mut ws, routed) = myagent_tests::proxy::connect_routed(&url).await;
        assert_eq!(routed["target_service"], "live-agent", "{routed}");
        myagent_tests::proxy::send_text(&mut ws, "hello").await;
        let echoed = myagent_tests::proxy::next_json(&mut ws).await;
        assert_eq!(echoed["original_message"], "hello", "{echoed}");
        ws
    });
    let screen = tmux.wait_for(
        "the connection on the monitor",
        Duration::from_secs(15),
        |s| conns(s, "live-agent").as_deref() == Some("1"),
    );
    let cells = row(&screen, "live-agent").expect("row");
    assert_eq!(cells[1], "running", "{screen}");

    // It disconnects: back to 0.
    rt.block_on(async {
        use futures::StreamExt;
        ws.close(None).await.expect("close");
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        }
    });
    tmux.wait_for(
        "the connection gone from the monitor",
        Duration::from_secs(15),
        |s| conns(s, "live-agent").as_deref() == Some("0"),
    );

    tmux.keys("q");
    let screen = tmux.wait_for("the monitor to exit", Duration::from_secs(10), |s| {
        s.contains("monitor-exit=")
    });
    assert!(screen.contains("monitor-exit=0"), "{screen}");
}

#[test]
fn monitor_for_one_service_survives_the_server_going_away_and_quits_on_ctrl_c() {
    let mut stack = cli::up();
    stack
        .cli(&[
            "register",
            "solo",
            "--port",
            "9",
            "--description",
            "one service",
        ])
        .ok();
    let tmux = Tmux::start("solo", &monitor_command(&stack, "--service solo"));
    let screen = tmux.wait_for("details of solo", Duration::from_secs(20), |s| {
        row(s, "solo").is_some() && s.contains("Details")
    });
    assert!(screen.contains("health"), "{screen}");

    // The control plane goes away: the monitor stays up and says why.
    stack.terminate();
    tmux.wait_for("an error line", Duration::from_secs(20), |s| {
        s.contains("error:")
    });
    tmux.keys("C-c");
    let screen = tmux.wait_for("the monitor to exit", Duration::from_secs(10), |s| {
        s.contains("monitor-exit=")
    });
    assert!(screen.contains("monitor-exit=0"), "{screen}");
}

/// Without a terminal (a pipe, a script) the monitor prints one snapshot per interval: a
/// time-stamped overview and the services table, or one JSON object per line; `--count` ends it,
/// and a count run against a server it cannot reach fails with UNAVAILABLE's status.
#[test]
fn monitor_without_a_terminal_prints_a_snapshot_per_interval() {
    let stack = cli::up();
    stack
        .cli(&["register", "plain-agent", "--port", "9", "--tags", "mon"])
        .ok();

    let run = stack
        .cli(&["monitor", "--interval", "0.2", "--count", "3"])
        .ok();
    let blocks: Vec<&str> = run
        .stdout
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), 3, "{run}");
    for block in &blocks {
        let lines: Vec<&str> = block.lines().collect();
        assert!(
            lines[0].contains("Z  services 1 total, 0 running, 1 stopped"),
            "{block}"
        );
        assert!(
            lines[1].starts_with("NAME") && lines[1].contains("MSG/S"),
            "{block}"
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &cells[..3],
            ["plain-agent", "stopped", "unknown"],
            "{block}"
        );
    }

    let run = stack
        .cli(&[
            "--output",
            "json",
            "monitor",
            "--interval",
            "0.2",
            "--count",
            "2",
        ])
        .ok();
    let snaps: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(snaps.len(), 2, "{run}");
    for s in &snaps {
        assert!(s["timestamp"].as_str().unwrap().ends_with('Z'), "{s}");
        assert_eq!(s["overview"]["services"]["total"], 1, "{s}");
        assert_eq!(s["services"][0]["name"], "plain-agent", "{s}");
        assert_eq!(s["services"][0]["status"], "stopped", "{s}");
    }
    // The rate needs two snapshots.
    assert!(snaps[0]["services"][0]["messages_per_second"].is_null());
    assert_eq!(snaps[1]["services"][0]["messages_per_second"], 0.0);

    // One service: its details follow the table.
    let run = stack
        .cli(&["monitor", "--service", "plain-agent", "--count", "1"])
        .ok();
    let id = stack
        .cli(&["show", "plain-agent", "--output", "json"])
        .ok()
        .json()["service_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        run.stdout.contains(&format!("id {id}  pid -  tags mon")),
        "{run}"
    );
    assert!(run.stdout.contains("health unknown (last check -"), "{run}");
    let run = stack
        .cli(&[
            "--output",
            "json",
            "monitor",
            "--service",
            "plain-agent",
            "--count",
            "1",
        ])
        .ok();
    let snap: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(snap["services"][0]["service_id"], id.as_str(), "{snap}");
    assert!(snap["logs"].is_array(), "{snap}");

    let gone = cli::run_in(
        stack.dir(),
        "http://127.0.0.1:1",
        &["monitor", "--interval", "0.2", "--count", "1"],
    );
    assert_eq!(gone.code, Some(69), "{gone}");
    assert!(gone.stdout.contains("error: UNAVAILABLE"), "{gone}");
}
