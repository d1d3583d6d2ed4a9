//! The binary's command-line contract: help, exit code 64 for usage and configuration errors,
//! `--validate-only`. (Also makes cargo build the binary before other tests of this package.)

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_myagent-control-plane"));
    // Flags under test must not be overridden by the developer's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("MYAGENT_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn help_lists_every_flag_and_exits_zero() {
    let out = bin().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--admin-listen",
        "--store",
        "--data-dir",
        "--etcd-endpoints",
        "--etcd-prefix",
        "--etcd-timeout",
        "--auth-token-file",
        "--replica-id",
        "--log-format",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--validate-only",
        "MYAGENT_LISTEN",
        "127.0.0.1:50051",
        "127.0.0.1:9091",
        "./.myagent",
        "/myagent/",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn unknown_flag_exits_64() {
    let out = bin().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn bad_values_exit_64() {
    for args in [
        &["--listen", "not-an-address"][..],
        &["--store", "mysql"],
        &["--etcd-timeout", "soon"],
        &["--tls-cert", "/nonexistent.pem"],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn validate_only_checks_files() {
    let dir = tempfile::tempdir().unwrap();
    let ok = bin()
        .args(["--validate-only", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let missing = bin()
        .args([
            "--validate-only",
            "--auth-token-file",
            "/nonexistent/tokens",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--auth-token-file"), "{stderr}");

    let prefix = bin()
        .args([
            "--validate-only",
            "--store",
            "etcd",
            "--etcd-prefix",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(prefix.status.code(), Some(64));
}

#[test]
fn tokens_never_reach_the_output() {
    let out = bin()
        .args(["--validate-only", "--log-format", "json"])
        .env("MYAGENT_AUTH_TOKENS", "sup3r-s3cret-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("sup3r-s3cret-token"), "{all}");
}
