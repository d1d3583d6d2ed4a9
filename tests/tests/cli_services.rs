//! The CLI's service commands against a live `myagent-manager up`: the seed's register example,
//! list/show in table and JSON form, names or ids, errors with codes and exit status, remove.

use myagent_tests::cli;

#[test]
fn register_list_show_remove_with_table_and_json_output() {
    let stack = cli::up();
    cli::install_echo_agent(stack.dir(), "weather_agent.py");

    // Seed §3.1, verbatim (the agent path is relative to the working directory).
    let reg = stack
        .cli(&[
            "register",
            "weather-agent",
            "./agents/weather_agent.py",
            "--port",
            "8081",
            "--tags",
            "weather,info",
            "--max-sessions",
            "100",
        ])
        .ok();
    assert!(reg.stdout.contains("service_id"), "{reg}");
    assert!(reg.stdout.contains("ws://localhost:8081"), "{reg}");

    // The same again in JSON: the REST answer's shape, and the name is taken.
    stack
        .cli(&[
            "register",
            "weather-agent",
            "./agents/weather_agent.py",
            "--port",
            "8082",
        ])
        .fails_with("SERVICE_ALREADY_EXISTS");
    let ext = stack
        .cli(&[
            "--output",
            "json",
            "register",
            "ext-agent",
            "--port",
            "9",
            "--tags",
            "info",
            "--description",
            "external",
        ])
        .ok()
        .json();
    assert_eq!(ext["success"], true);
    assert_eq!(ext["endpoint"], "ws://localhost:9");
    let ext_id = ext["service_id"].as_str().expect("service_id").to_string();
    assert!(!ext_id.is_empty());

    // list, table: aligned columns with both services.
    let list = stack.cli(&["list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{list}"
    );
    let status_col = lines[0].find("STATUS").unwrap();
    for name in ["weather-agent", "ext-agent"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{list}"));
        assert_eq!(
            &row[status_col..status_col + 7],
            "stopped",
            "columns misaligned:\n{list}"
        );
    }

    // list, JSON, with the seed's filters.
    let all = stack.cli(&["list", "--output", "json"]).ok().json();
    assert_eq!(all["total"], 2);
    assert_eq!(all["services"].as_array().unwrap().len(), 2);
    assert_eq!(all["page"]["has_next"], false);
    let weather = stack
        .cli(&["--output", "json", "list", "--tag", "weather"])
        .ok()
        .json();
    assert_eq!(weather["total"], 1);
    let s = &weather["services"][0];
    assert_eq!(s["name"], "weather-agent");
    for key in [
        "service_id",
        "description",
        "host",
        "port",
        "endpoint",
        "status",
        "tags",
        "created_at",
        "stats",
    ] {
        assert!(s.get(key).is_some(), "list item lacks {key}: {s}");
    }
    assert_eq!(s["tags"], serde_json::json!(["weather", "info"]));
    assert!(s["created_at"].as_str().unwrap().ends_with('Z'), "{s}");
    let none = stack
        .cli(&["--output", "json", "list", "--status", "running"])
        .ok()
        .json();
    assert_eq!(none["total"], 0);
    let page = stack
        .cli(&["--output", "json", "list", "--limit", "1"])
        .ok()
        .json();
    assert_eq!(page["services"].as_array().unwrap().len(), 1);
    assert_eq!(page["page"]["has_next"], true);
    assert_eq!(page["page"]["limit"], 1);

    // show by name, JSON: the seed's detail shape.
    let show = stack
        .cli(&["show", "weather-agent", "--output", "json"])
        .ok()
        .json();
    assert_eq!(show["name"], "weather-agent");
    assert_eq!(show["port"], 8081);
    assert_eq!(show["status"], "stopped");
    assert_eq!(show["config"]["max_sessions"], 100);
    assert_eq!(show["config"]["auto_restart"], true);
    assert_eq!(show["config"]["health_check_enabled"], true);
    for key in [
        "total_connections",
        "active_connections",
        "peak_connections",
        "total_sessions",
        "active_sessions",
        "completed_sessions",
        "avg_session_duration",
        "memory_usage_mb",
        "cpu_usage_percent",
        "error_count",
        "error_rate",
    ] {
        assert!(
            show["stats"].get(key).is_some(),
            "stats lacks {key}: {show}"
        );
    }
    assert!(show["health"].get("status").is_some(), "{show}");
    let path = show["agent_factory_path"].as_str().unwrap();
    assert!(
        path.starts_with('/') && path.ends_with("agents/weather_agent.py"),
        "{show}"
    );

    // show by id, table: key/value blocks.
    let shown = stack.cli(&["show", &ext_id]).ok();
    assert!(shown.stdout.contains("ext-agent"), "{shown}");
    assert!(shown.stdout.contains("(external service)"), "{shown}");
    for section in ["Config:", "Stats:", "Health:"] {
        assert!(
            shown.stdout.contains(section),
            "show lacks {section}:\n{shown}"
        );
    }

    // A health check nothing answers (port 9): the result, then HEALTH_CHECK_FAILED, exit 1.
    let checked = stack
        .cli(&["--output", "json", "health-check", "ext-agent"])
        .fails_with("HEALTH_CHECK_FAILED");
    assert_eq!(checked.code, Some(1), "{checked}");
    let result = checked.json();
    assert_eq!(result["status"], "unhealthy", "{result}");
    assert_eq!(result["service_id"], ext_id.as_str(), "{result}");

    // Unknown names: the seed's code, exit 1, nothing on stdout.
    let missing = stack
        .cli(&["show", "no-such-agent"])
        .fails_with("SERVICE_NOT_FOUND");
    assert_eq!(missing.code, Some(1));
    assert!(missing.stdout.is_empty());
    stack
        .cli(&["remove", "no-such-agent"])
        .fails_with("SERVICE_NOT_FOUND");
    stack
        .cli(&["--output", "json", "start", "no-such-agent"])
        .fails_with("SERVICE_NOT_FOUND");

    // Invalid input is rejected by the server with the offending field.
    let bad = stack
        .cli(&["register", "bad name!", "--port", "80"])
        .fails_with("INVALID_REQUEST");
    assert!(bad.stderr.contains("name"), "{bad}");
    let zero = stack
        .cli(&["register", "zero", "--port", "0"])
        .fails_with("INVALID_REQUEST");
    assert_eq!(zero.code, Some(2), "port 0 is a usage error:\n{zero}");
    stack
        .cli(&[
            "register",
            "nofile",
            "./agents/missing.py",
            "--port",
            "8090",
        ])
        .fails_with("INVALID_REQUEST");

    // remove by name and by id.
    let removed = stack
        .cli(&["--output", "json", "remove", "weather-agent"])
        .ok()
        .json();
    assert_eq!(removed["success"], true);
    stack.cli(&["remove", &ext_id]).ok();
    let empty = stack.cli(&["list"]).ok();
    assert!(empty.stdout.contains("No services."), "{empty}");
    assert_eq!(
        stack.cli(&["list", "--output", "json"]).ok().json()["total"],
        0
    );
}

#[test]
fn overview_connections_and_token_handling() {
    let stack = cli::up();
    let status = stack.cli(&["status", "--output", "json"]).ok().json();
    for (section, keys) in [
        ("services", &["total", "running", "stopped", "error"][..]),
        ("connections", &["total", "active", "peak_today"][..]),
        (
            "sessions",
            &["total_today", "active", "completed_today"][..],
        ),
        (
            "performance",
            &[
                "avg_response_time_ms",
                "throughput_per_minute",
                "error_rate",
            ][..],
        ),
        ("resources", &["total_memory_mb", "total_cpu_percent"][..]),
    ] {
        for k in keys {
            assert!(
                status[section].get(*k).is_some(),
                "status lacks {section}.{k}: {status}"
            );
        }
    }
    let table = stack.cli(&["status"]).ok();
    assert!(
        table.stdout.contains("services:") && table.stdout.contains("0 total"),
        "{table}"
    );

    let conns = stack.cli(&["connections", "--output", "json"]).ok().json();
    assert_eq!(conns["total"], 0);
    assert!(conns["connections"].as_array().unwrap().is_empty());
    assert!(stack
        .cli(&["connections"])
        .ok()
        .stdout
        .contains("No connections."));
    stack
        .cli(&["disconnect", "no-such-connection"])
        .fails_with("CONNECTION_NOT_FOUND");
    let note = stack
        .cli(&[
            "--output",
            "json",
            "notify",
            "--type",
            "maintenance_window",
            "--message",
            "soon",
            "--severity",
            "warning",
        ])
        .ok()
        .json();
    assert_eq!(note, serde_json::json!({"success": true, "delivered": 0}));
}

#[test]
fn token_is_sent_and_required_when_configured() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "# admins\ns3cret-token\n").unwrap();
    let stack = cli::up_with(&["--auth-token-file", tokens.path().to_str().unwrap()]);
    stack.cli(&["list"]).fails_with("UNAUTHORIZED");
    stack
        .cli(&["list", "--token", "wrong"])
        .fails_with("UNAUTHORIZED");
    let ok = stack
        .cli(&["list", "--token", "s3cret-token", "--output", "json"])
        .ok()
        .json();
    assert_eq!(ok["total"], 0);
    assert!(
        !stack.stderr().contains("s3cret-token"),
        "the token leaked into logs"
    );
}

/// Seed §3.3: `connections --service NAME` is "view active connections": closed connections are
/// listed only with `--status closed` or `--status all`.
#[test]
fn connections_lists_active_ones_unless_asked_for_more() {
    use futures::StreamExt;

    let stack = cli::up();
    cli::install_echo_agent(stack.dir(), "echo_agent.py");
    let port = cli::free_port().to_string();
    stack
        .cli(&[
            "register",
            "weather-agent",
            "./agents/echo_agent.py",
            "--port",
            &port,
        ])
        .ok();
    stack.cli(&["start", "weather-agent"]).ok();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{}?service=weather-agent", stack.proxy);
    let routed_id = |frame: Option<Result<tokio_tungstenite::tungstenite::Message, _>>| {
        let text = frame
            .expect("a frame")
            .expect("a message")
            .into_text()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], "connection_routed", "{v}");
        v["data"]["connection_id"].as_str().unwrap().to_string()
    };
    let (closed_id, kept_id, _kept) = rt.block_on(async {
        let (mut gone, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let closed_id = routed_id(gone.next().await);
        gone.close(None).await.expect("close");
        while gone.next().await.is_some() {}
        let (mut kept, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let kept_id = routed_id(kept.next().await);
        (closed_id, kept_id, kept)
    });

    // Reports are batched: wait until the control plane knows both connections.
    rt.block_on(myagent_tests::wait::until(
        "both connections, one of them closed, in `connections --status all`",
        std::time::Duration::from_secs(20),
        || async {
            let all = stack
                .cli(&["--output", "json", "connections", "--status", "all"])
                .ok()
                .json();
            let closed = all["connections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["connection_id"] == closed_id.as_str() && c["status"] == "closed");
            (all["total"] == 2 && closed).then_some(())
        },
    ));

    let active = stack
        .cli(&[
            "--output",
            "json",
            "connections",
            "--service",
            "weather-agent",
        ])
        .ok()
        .json();
    assert_eq!(active["total"], 1, "{active}");
    assert_eq!(active["connections"][0]["connection_id"], kept_id.as_str());
    assert_eq!(active["connections"][0]["status"], "active");
    let table = stack
        .cli(&["connections", "--service", "weather-agent"])
        .ok();
    assert!(table.stdout.contains(&kept_id), "{table}");
    assert!(!table.stdout.contains(&closed_id), "{table}");

    let closed = stack
        .cli(&["--output", "json", "connections", "--status", "closed"])
        .ok()
        .json();
    assert_eq!(closed["total"], 1, "{closed}");
    assert_eq!(
        closed["connections"][0]["connection_id"],
        closed_id.as_str()
    );
    let bogus = stack
        .cli(&["connections", "--status", "bogus"])
        .fails_with("INVALID_REQUEST");
    assert_eq!(bogus.code, Some(2), "{bogus}");

    // A closed connection cannot be disconnected again.
    stack
        .cli(&["disconnect", &closed_id])
        .fails_with("CONNECTION_NOT_FOUND");

    // `disconnect` says what it did, naming the connection once.
    let out = stack.cli(&["disconnect", &kept_id]).ok();
    assert_eq!(
        out.stdout,
        format!("Connection {kept_id} disconnected\n"),
        "{out}"
    );
}

/// Invalid flag values are usage errors: exit 2 before any request, with the seed's code
/// `INVALID_REQUEST` and clap's explanation; accepted spellings still reach the server (here an
/// unreachable one, exit 69).
#[test]
fn invalid_flag_values_are_usage_errors_with_the_seed_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = "http://127.0.0.1:1";
    for args in [
        &["register", "a", "--port", "0"][..],
        &["register", "a", "--port", "abc"],
        &["register", "a", "--port", "70000"],
        &["list", "--status", "bogus"],
        &["logs", "a", "--level", "bogus"],
        &["logs", "a", "--follow", "--level", "bogus"],
        &["connections", "--status", "bogus"],
        &[
            "notify",
            "--type",
            "t",
            "--message",
            "m",
            "--severity",
            "bogus",
        ],
        &["monitor", "--interval", "0"],
        &["route", "create", "r", "--strategy", "bogus"],
        &["--output", "yaml", "status"],
        &["status", "--output", "yaml"],
        &["status", "--no-such-flag"],
    ] {
        let run = cli::run_in(dir.path(), nowhere, args).fails_with("INVALID_REQUEST");
        assert_eq!(run.code, Some(2), "{run}");
        assert!(run.stdout.is_empty(), "{run}");
    }
    for args in [
        &["list", "--status", "running"][..],
        &["logs", "a", "--level", "WARNING"],
        &["logs", "a", "--level", "err"],
        &["connections", "--status", "all"],
        &[
            "notify",
            "--type",
            "t",
            "--message",
            "m",
            "--severity",
            "critical",
        ],
    ] {
        let run = cli::run_in(dir.path(), nowhere, args).fails_with("UNAVAILABLE");
        assert_eq!(run.code, Some(69), "{run}");
    }
    let help = cli::run_in(dir.path(), nowhere, &["list", "--help"]).ok();
    assert!(help.stdout.contains("--status"), "{help}");
}
