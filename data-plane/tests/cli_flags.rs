//! The real binary's exit codes: usage and configuration errors are 64 (EX_USAGE), as for the
//! control plane and the gateway; `--help` is 0.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_myagent-proxy"))
}

#[test]
fn help_exits_zero() {
    let out = bin().arg("--help").output().expect("run --help");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-frame-bytes"));
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["--no-such-flag"][..],
        &["--max-frame-bytes", "abc"],
        &["--listen", "not-an-address"],
    ] {
        let out = bin().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
    }
}

#[test]
fn a_listen_address_in_use_is_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .args(["--control-plane", "http://127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}
