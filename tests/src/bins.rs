//! Locates the workspace's binaries (`target/<profile>/myagent-*`), which cargo builds before it
//! runs any test of a package that has integration tests (and `tests/run.sh` builds explicitly).

use std::path::PathBuf;

pub const CONTROL_PLANE: &str = "myagent-control-plane";
pub const PROXY: &str = "myagent-proxy";
pub const GATEWAY: &str = "myagent-gateway";
pub const CLI: &str = "myagent-manager";

/// Path of a workspace binary next to the running test executable.
///
/// Panics with a clear message when it has not been built: run `cargo build --workspace --bins`
/// (tests/run.sh does) before `cargo test -p myagent-tests`.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let candidate = dir.join(name);
    assert!(
        candidate.is_file(),
        "binary {} not found at {}: run `cargo build --workspace --bins` first (tests/run.sh does)",
        name,
        candidate.display()
    );
    candidate
}
