//! Command-line parsing of every command (seed §3 exactly) and the binary's `--help`/usage exit
//! codes. Pure parsing: no server involved.

use clap::Parser;
use myagent_cli::args::{Cli, Command, OutputFormat, RouteCommand};
use std::process::Command as Proc;

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["myagent-manager"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn fails(args: &[&str]) -> clap::Error {
    let mut v = vec!["myagent-manager"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v) {
        Ok(c) => panic!("{args:?} parsed: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn seed_register_example() {
    let cli = parse(&[
        "register",
        "weather-agent",
        "./agents/weather_agent.py",
        "--port",
        "8081",
        "--tags",
        "weather,info",
        "--max-sessions",
        "100",
    ]);
    let Command::Register(a) = cli.command else {
        panic!("not register")
    };
    assert_eq!(a.name, "weather-agent");
    assert_eq!(a.path.unwrap().to_str(), Some("./agents/weather_agent.py"));
    assert_eq!(a.port, 8081);
    assert_eq!(a.host, "localhost");
    assert_eq!(a.tags, vec!["weather", "info"]);
    assert_eq!(a.config.max_sessions, Some(100));
    assert!(!a.config.no_auto_restart && !a.config.no_health_check);
}

#[test]
fn register_all_flags_and_external() {
    let cli = parse(&[
        "register",
        "ext",
        "--port",
        "9000",
        "--host",
        "10.0.0.2",
        "--tags",
        "a",
        "--tags",
        "b,c",
        "--session-timeout",
        "60",
        "--description",
        "d",
        "--no-auto-restart",
        "--no-health-check",
        "--env",
        "K=V=W",
        "--arg",
        "--verbose",
        "--weight",
        "3",
    ]);
    let Command::Register(a) = cli.command else {
        panic!()
    };
    assert!(a.path.is_none(), "PATH is optional for external services");
    assert_eq!(a.tags, vec!["a", "b", "c"]);
    assert_eq!(a.config.session_timeout, Some(60));
    assert!(a.config.no_auto_restart && a.config.no_health_check);
    assert_eq!(a.config.env, vec![("K".to_string(), "V=W".to_string())]);
    assert_eq!(a.config.args, vec!["--verbose"]);
    let req = myagent_cli::commands::services::register_request(&a).unwrap();
    assert_eq!(req.port, 9000);
    assert_eq!(req.agent_factory_path, "");
    let cfg = req.config.unwrap();
    assert_eq!(cfg.auto_restart, Some(false));
    assert_eq!(cfg.health_check_enabled, Some(false));
    assert_eq!(
        cfg.max_sessions, None,
        "unset fields take the server defaults"
    );
}

#[test]
fn register_makes_the_agent_path_absolute() {
    let cli = parse(&["register", "w", "agents/a.py", "--port", "1"]);
    let Command::Register(a) = cli.command else {
        panic!()
    };
    let req = myagent_cli::commands::services::register_request(&a).unwrap();
    let expected = std::env::current_dir().unwrap().join("agents/a.py");
    assert_eq!(req.agent_factory_path, expected.display().to_string());
}

#[test]
fn register_rejects_bad_ports() {
    for p in ["0x", "70000", "-1"] {
        fails(&["register", "w", "a.py", "--port", p]);
    }
    fails(&["register", "w", "a.py"]); // --port is required
}

#[test]
fn lifecycle_commands() {
    assert!(
        matches!(parse(&["start", "weather-agent"]).command, Command::Start(a) if a.service == "weather-agent")
    );
    assert!(
        matches!(parse(&["stop", "weather-agent"]).command, Command::Stop(a) if a.service == "weather-agent")
    );
    let Command::Restart(r) =
        parse(&["restart", "w", "--grace-seconds", "30", "--message", "bye"]).command
    else {
        panic!()
    };
    assert_eq!((r.grace_seconds, r.message.as_str()), (Some(30), "bye"));
    assert!(
        matches!(parse(&["restart", "w"]).command, Command::Restart(r) if r.grace_seconds.is_none())
    );
    assert!(matches!(parse(&["show", "w"]).command, Command::Show(_)));
    assert!(matches!(
        parse(&["remove", "w"]).command,
        Command::Remove(_)
    ));
    fails(&["start"]);
}

#[test]
fn list_flags() {
    let Command::List(l) = parse(&[
        "list", "--tag", "weather", "--status", "running", "--limit", "10", "--offset", "5",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(
        (l.tag.as_deref(), l.status.as_deref(), l.limit, l.offset),
        (Some("weather"), Some("running"), Some(10), 5)
    );
}

#[test]
fn global_flags_before_or_after_the_subcommand() {
    let a = parse(&[
        "--server",
        "http://h:1",
        "--output",
        "json",
        "--token",
        "t",
        "list",
    ]);
    let b = parse(&[
        "list",
        "--server",
        "http://h:1",
        "--output",
        "json",
        "--token",
        "t",
    ]);
    for c in [a, b] {
        assert_eq!(c.global.server, "http://h:1");
        assert_eq!(c.global.output, OutputFormat::Json);
        assert_eq!(c.global.token.as_deref(), Some("t"));
    }
    let d = parse(&["status"]);
    assert_eq!(d.global.server, "http://127.0.0.1:50051");
    assert_eq!(d.global.output, OutputFormat::Table);
    fails(&["list", "--output", "yaml"]);
}

#[test]
fn monitoring_commands() {
    assert!(matches!(parse(&["status"]).command, Command::Status));
    let Command::Monitor(m) =
        parse(&["monitor", "--service", "weather-agent", "--interval", "5"]).command
    else {
        panic!()
    };
    assert_eq!(
        (m.service.as_deref(), m.interval),
        (Some("weather-agent"), 5.0)
    );
    fails(&["monitor", "--interval", "0"]);
    let Command::Logs(l) =
        parse(&["logs", "weather-agent", "--follow", "--level", "error"]).command
    else {
        panic!()
    };
    assert!(l.follow);
    assert_eq!(l.level.as_deref(), Some("error"));
    let Command::Logs(l) = parse(&[
        "logs",
        "w",
        "--limit",
        "5",
        "--since",
        "2024-01-01T10:00:00Z",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(l.since.unwrap().seconds, 1_704_103_200);
    assert!(matches!(
        parse(&["logs", "w", "--since", "10m"]).command,
        Command::Logs(_)
    ));
    fails(&["logs", "w", "--since", "yesterday"]);
    let Command::HealthCheck(h) = parse(&["health-check", "weather-agent"]).command else {
        panic!()
    };
    assert!(!h.history);
    assert!(
        matches!(parse(&["health-check", "w", "--history", "--limit", "3"]).command, Command::HealthCheck(h) if h.history)
    );
}

#[test]
fn connection_commands() {
    let Command::Connections(c) = parse(&[
        "connections",
        "--service",
        "weather-agent",
        "--status",
        "active",
        "--limit",
        "20",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(c.service.as_deref(), Some("weather-agent"));
    let Command::Disconnect(d) =
        parse(&["disconnect", "conn-1", "--reason", "maintenance"]).command
    else {
        panic!()
    };
    assert_eq!(
        (d.connection_id.as_str(), d.reason.as_str(), d.no_notify),
        ("conn-1", "maintenance", false)
    );
    assert!(
        matches!(parse(&["disconnect", "c", "--no-notify"]).command, Command::Disconnect(d) if d.no_notify)
    );
    let Command::Notify(n) = parse(&[
        "notify",
        "--service",
        "w",
        "--type",
        "maintenance_window",
        "--message",
        "m",
        "--severity",
        "warning",
        "--countdown",
        "300",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(
        (n.kind.as_str(), n.countdown),
        ("maintenance_window", Some(300))
    );
    fails(&["notify", "--message", "m"]); // --type required
}

#[test]
fn route_commands() {
    let Command::Route(RouteCommand::Create(r)) = parse(&[
        "route",
        "create",
        "vip-routing",
        "--condition",
        "header.x-user-tier=vip",
        "--target-tag",
        "high-performance",
        "--strategy",
        "least_connections",
    ])
    .command
    else {
        panic!()
    };
    let req = myagent_cli::commands::routing::create_request(&r);
    assert_eq!(req.name, "vip-routing");
    assert_eq!(req.conditions.len(), 1);
    assert_eq!(
        (
            req.conditions[0].field.as_str(),
            req.conditions[0].operator.as_str(),
            req.conditions[0].value.as_str()
        ),
        ("header.x-user-tier", "equals", "vip")
    );
    assert_eq!(req.target_tags, vec!["high-performance"]);
    assert_eq!(req.target_strategy, "least_connections");
    assert_eq!((req.enabled, req.priority), (Some(true), Some(0)));

    let Command::Route(RouteCommand::Create(r)) = parse(&[
        "route",
        "create",
        "VIP用户路由",
        "--condition",
        "client_ip cidr 10.0.0.0/8",
        "--condition",
        "query.lang in en|de",
        "--target-tag",
        "a,b",
        "--target-tag",
        "c",
        "--strategy",
        "consistent_hash",
        "--priority",
        "-5",
        "--disabled",
    ])
    .command
    else {
        panic!()
    };
    let req = myagent_cli::commands::routing::create_request(&r);
    assert_eq!(req.conditions[1].values, vec!["en", "de"]);
    assert_eq!(req.target_tags, vec!["a", "b", "c"]);
    assert_eq!((req.enabled, req.priority), (Some(false), Some(-5)));

    fails(&["route", "create", "x", "--condition", "nofield=1"]);
    fails(&["route", "create", "x", "--strategy", "fastest"]);

    assert!(
        matches!(parse(&["route", "list"]).command, Command::Route(RouteCommand::List(l)) if l.enabled.is_none())
    );
    assert!(
        matches!(parse(&["route", "list", "--enabled", "true"]).command, Command::Route(RouteCommand::List(l)) if l.enabled == Some(true))
    );
    fails(&["route", "list", "--enabled", "maybe"]);
    assert!(matches!(
        parse(&["route", "show", "vip-routing"]).command,
        Command::Route(RouteCommand::Show(_))
    ));
    assert!(matches!(
        parse(&["route", "delete", "vip-routing"]).command,
        Command::Route(RouteCommand::Delete(_))
    ));

    let Command::Route(RouteCommand::Update(u)) = parse(&[
        "route",
        "update",
        "vip-routing",
        "--priority",
        "20",
        "--disable",
        "--target-tag",
        "x",
    ])
    .command
    else {
        panic!()
    };
    let req = myagent_cli::commands::routing::update_request(&u);
    assert_eq!((req.priority, req.enabled), (Some(20), Some(false)));
    assert!(req.conditions.is_none() && req.name.is_none() && req.target_strategy.is_none());
    assert_eq!(req.target_tags.unwrap().items, vec!["x"]);
    fails(&["route", "update", "r", "--enable", "--disable"]);
}

#[test]
fn up_defaults() {
    let Command::Up(u) = parse(&["up"]).command else {
        panic!()
    };
    assert_eq!(u.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(u.proxy_listen.to_string(), "0.0.0.0:8080");
    assert_eq!(u.gateway_listen.to_string(), "0.0.0.0:8000");
    assert_eq!(u.data_dir.to_str(), Some("./.myagent"));
}

fn bin() -> Proc {
    Proc::new(env!("CARGO_BIN_EXE_myagent-manager"))
}

#[test]
fn help_lists_every_command_and_the_condition_grammar() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "register",
        "start",
        "stop",
        "restart",
        "list",
        "show",
        "remove",
        "status",
        "monitor",
        "logs",
        "health-check",
        "connections",
        "disconnect",
        "notify",
        "route",
        "up",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}:\n{help}"
        );
    }
    let out = bin().args(["route", "create", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for piece in [
        "header.x-user-tier=vip",
        "~=",
        "client_ip cidr",
        "not_in",
        "exists",
    ] {
        assert!(help.contains(piece), "route create --help lacks {piece}");
    }
}

#[test]
fn usage_errors_exit_2_and_unreachable_server_exits_69() {
    let out = bin().args(["register", "w"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Port 1 on loopback: nothing listens there.
    let out = bin()
        .args(["--server", "http://127.0.0.1:1", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: UNAVAILABLE: cannot reach the control plane at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn numbers_a_timer_cannot_hold_are_usage_errors() {
    // Each of these panicked (exit 101) before being bounded.
    for args in [
        &["--timeout", "1e20", "status"][..],
        &["monitor", "--interval", "1e308", "--count", "1"],
        &["logs", "weather-agent", "--since", "99999999d"],
        &["up", "--grpc-listen", "notanaddr"],
    ] {
        let e = fails(args);
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
    }
    let e = fails(&["up", "--grpc-listen", "notanaddr"]);
    assert!(e.to_string().contains("--grpc-listen"), "{e}");
    assert_eq!(
        parse(&["--timeout", "31536000", "status"]).global.timeout,
        31_536_000.0
    );
}
