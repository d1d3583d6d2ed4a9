//! `myagent-manager up`: one process serving control plane, proxy and gateway on the ports it
//! prints; stops cleanly on SIGTERM; keeps its state in --data-dir across restarts.

use std::time::Duration;

use myagent_tests::cli;

#[tokio::test(flavor = "multi_thread")]
async fn up_prints_addresses_serves_all_three_and_stops_on_sigterm() {
    let mut stack = tokio::task::spawn_blocking(cli::up).await.unwrap();
    for prefix in [
        "grpc     http://127.0.0.1:",
        "proxy    ws://127.0.0.1:",
        "gateway  http://127.0.0.1:",
    ] {
        assert!(
            stack.banner.contains(prefix),
            "banner lacks {prefix}:\n{}",
            stack.banner
        );
    }
    assert!(stack.proxy.ends_with("/ws"), "{}", stack.proxy);
    assert!(stack.gateway.ends_with("/api/v1"), "{}", stack.gateway);

    // Registered through the CLI (gRPC), visible through the gateway (REST).
    let reg = {
        let s = stack.grpc.clone();
        let dir = stack.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            cli::run_in(
                &dir,
                &s,
                &[
                    "--output", "json", "register", "ext", "--port", "9", "--tags", "t",
                ],
            )
            .ok()
            .json()
        })
        .await
        .unwrap()
    };
    let http = reqwest::Client::new();
    let rest_get = |path: &str| {
        let req = http.get(format!("{}{path}", stack.gateway)).send();
        async move {
            let body: serde_json::Value = req
                .await
                .expect("gateway reachable")
                .json()
                .await
                .expect("json");
            body
        }
    };
    let body = rest_get("/services").await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["services"][0]["service_id"], reg["service_id"]);

    // `--output json` prints the REST answer to the same request, field for field.
    let cli_json = |args: &'static [&'static str]| {
        let (s, dir) = (stack.grpc.clone(), stack.dir().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--output", "json"];
            all.extend_from_slice(args);
            cli::run_in(&dir, &s, &all).ok().json()
        })
    };
    cli_json(&["route", "create", "r1", "--target-tag", "t"])
        .await
        .unwrap();
    for (args, path) in [
        (&["list"][..], "/services"),
        (&["show", "ext"][..], "/services/ext"),
        (&["route", "list"][..], "/routing/rules"),
        (&["route", "show", "r1"][..], "/routing/rules/r1"),
        (&["connections", "--status", "all"][..], "/connections"),
        (&["status"][..], "/stats/overview"),
    ] {
        let from_cli = cli_json(args).await.unwrap();
        let from_rest = rest_get(path).await;
        assert_eq!(from_cli, from_rest, "CLI {args:?} vs GET {path}");
    }

    // A failure is the same: `--output json` prints the REST error body (seed §4.1) on stdout,
    // the `error: CODE: message` line on stderr, and exits 1.
    for (args, path) in [
        (&["show", "no-such-agent"][..], "/services/no-such-agent"),
        (
            &["route", "show", "no-such-rule"][..],
            "/routing/rules/no-such-rule",
        ),
        (
            &["logs", "no-such-agent"][..],
            "/logs/services/no-such-agent",
        ),
    ] {
        let (s, dir) = (stack.grpc.clone(), stack.dir().to_path_buf());
        let run = tokio::task::spawn_blocking(move || {
            let mut all = vec!["--output", "json"];
            all.extend_from_slice(args);
            cli::run_in(&dir, &s, &all)
        })
        .await
        .unwrap();
        assert_eq!(run.code, Some(1), "{run}");
        let mut from_cli = run.json();
        let mut from_rest = rest_get(path).await;
        let code = from_rest["error"]["code"]
            .as_str()
            .expect("error code")
            .to_string();
        assert!(run.stderr.starts_with(&format!("error: {code}: ")), "{run}");
        for body in [&mut from_cli, &mut from_rest] {
            let ts = body["error"]["details"]["timestamp"].take();
            assert!(ts.as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
        }
        assert_eq!(from_cli, from_rest, "CLI {args:?} vs GET {path}");
    }

    // The proxy and control-plane admin ports answer.
    for admin in [&stack.proxy_admin, &stack.control_plane_admin] {
        let r = http
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .expect("admin reachable");
        assert!(r.status().is_success(), "{admin}/healthz: {}", r.status());
    }
    myagent_tests::wait::until(
        "proxy ready (holds a config)",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            let url = format!("{}/readyz", stack.proxy_admin);
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;

    let (code, took) = tokio::task::spawn_blocking(move || stack.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "up should exit 0 after SIGTERM");
    println!("up stopped {took:?} after SIGTERM");
}

#[test]
fn state_survives_a_restart_of_up() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut stack = cli::up_in(Some(data.path()), &[]);
        stack.cli(&["register", "keeper", "--port", "9"]).ok();
        stack
            .cli(&["route", "create", "keep-rule", "--target-tag", "t"])
            .ok();
        assert_eq!(stack.terminate().0, Some(0));
    }
    let stack = cli::up_in(Some(data.path()), &[]);
    let show = stack
        .cli(&["show", "keeper", "--output", "json"])
        .ok()
        .json();
    assert_eq!(show["name"], "keeper");
    stack.cli(&["route", "show", "keep-rule"]).ok();
}

#[test]
fn up_reports_a_port_in_use_and_exits_non_zero() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = cli::clean_command();
    cmd.args([
        "up",
        "--grpc-listen",
        &format!("127.0.0.1:{port}"),
        "--proxy-listen",
        "127.0.0.1:0",
    ])
    .args(["--gateway-listen", "127.0.0.1:0", "--data-dir"])
    .arg(dir.path());
    let out = cmd.output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error:") && err.contains(&port.to_string()),
        "{err}"
    );
}
