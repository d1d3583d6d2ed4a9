//! The real binary's flag handling: `--help` lists every flag, bad flags exit non-zero.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_myagent-gateway"))
}

#[test]
fn help_lists_every_flag_and_env_twin() {
    let out = bin().arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--control-plane",
        "--request-timeout",
        "--max-body-bytes",
        "--tls-cert",
        "--tls-key",
        "--control-plane-ca",
        "--log-format",
        "MYAGENT_LISTEN",
        "MYAGENT_CONTROL_PLANE",
        "0.0.0.0:8000",
        "http://127.0.0.1:50051",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = bin().arg("--no-such-flag").output().expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let out = bin()
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn a_listen_address_in_use_is_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin().args(["--listen", &addr]).output().expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn every_flag_reads_its_env_twin() {
    let out = bin()
        .args(["--listen", "127.0.0.1:0"])
        .env("MYAGENT_LOG_LEVEL", "garbage[[[")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn bad_control_plane_url_is_a_usage_error() {
    let out = bin()
        .args(["--listen", "127.0.0.1:0", "--control-plane", "not a url"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn bad_log_filter_is_a_usage_error() {
    let out = bin()
        .args(["--listen", "127.0.0.1:0", "--log-level", "garbage[[["])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--log-level"),
        "{out:?}"
    );
}
