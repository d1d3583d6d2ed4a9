//! Runs the myagent-manager binary against a live stack and captures its output.
//!
//! [`up`] starts `myagent-manager up` on port 0 everywhere with its own data dir, reads the
//! printed addresses back, and stops the stack with SIGTERM on `Drop`. [`Stack::cli`] runs one
//! CLI command against it with a clean environment (no `MYAGENT_*` leaking in from the host).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bins;

/// A running `myagent-manager up`.
pub struct Stack {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the control plane's gRPC API.
    pub grpc: String,
    /// `ws://127.0.0.1:PORT/ws`.
    pub proxy: String,
    /// `http://127.0.0.1:PORT/api/v1`.
    pub gateway: String,
    pub control_plane_admin: String,
    pub proxy_admin: String,
    /// Everything `up` printed on stdout before it was ready.
    pub banner: String,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

/// Starts `myagent-manager up` with every listener on 127.0.0.1:0 and waits (up to 60 s) for
/// its ready line.
pub fn up() -> Stack {
    up_with(&[])
}

/// As [`up`], with extra arguments for `up`.
pub fn up_with(extra: &[&str]) -> Stack {
    up_in(None, extra)
}

/// As [`up_with`], keeping state in `data_dir` (default: a fresh scratch directory).
pub fn up_in(data_dir: Option<&Path>, extra: &[&str]) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("data"));
    let mut cmd = clean_command();
    cmd.args([
        "up",
        "--grpc-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        "--gateway-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(&data_dir)
    .args(extra)
    .current_dir(dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn myagent-manager up");
    let stderr = Arc::new(Mutex::new(String::new()));
    collect(child.stderr.take().expect("stderr"), stderr.clone());

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with("myagent-manager up ready ") {
                    break line;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "myagent-manager up did not print its ready line within 60 s (exit {status:?})\n\
                     stdout:\n{banner}\nstderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let field = |k: &str| -> String {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ready line lacks {k}=: {ready}"))
            .to_string()
    };
    Stack {
        grpc: field("grpc"),
        proxy: field("proxy"),
        gateway: field("gateway"),
        control_plane_admin: field("control_plane_admin"),
        proxy_admin: field("proxy_admin"),
        banner,
        child: Some(child),
        stderr,
        dir,
    }
}

impl Stack {
    /// Runs `myagent-manager --server <grpc> ARGS...` in the stack's scratch directory.
    pub fn cli(&self, args: &[&str]) -> Run {
        run_in(self.dir.path(), &self.grpc, args)
    }

    /// Scratch directory (the CLI's working directory; holds `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What the stack wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.child.take().expect("stack still running");
        let started = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status.code(), started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "myagent-manager up did not exit within 30 s of SIGTERM\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- myagent-manager up stderr ---\n{}", self.stderr());
        }
        let mut child = self.child.take().expect("child");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit status 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "`myagent-manager {}` failed:\n{self}",
            self.args.join(" ")
        );
        self
    }

    /// Asserts a non-zero exit with `error: CODE:` on stderr and returns self.
    #[track_caller]
    pub fn fails_with(self, code: &str) -> Self {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "`myagent-manager {}` should fail:\n{self}",
            self.args.join(" ")
        );
        assert!(
            self.stderr.starts_with(&format!("error: {code}: ")),
            "`myagent-manager {}` should print `error: {code}: ...`:\n{self}",
            self.args.join(" ")
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `{}` is not JSON ({e}):\n{self}",
                self.args.join(" ")
            )
        })
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The CLI binary with an environment free of the host's `MYAGENT_*` settings.
pub fn clean_command() -> Command {
    let mut cmd = Command::new(bins::path(bins::CLI));
    cmd.env_clear();
    for keep in ["PATH", "HOME", "TERM", "LANG", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("MYAGENT_LOG", "warn");
    cmd
}

/// Runs `myagent-manager --server SERVER ARGS...` in `dir` (60 s limit).
pub fn run_in(dir: &Path, server: &str, args: &[&str]) -> Run {
    let mut cmd = clean_command();
    cmd.arg("--server").arg(server).args(args).current_dir(dir);
    run_command(cmd, args)
}

fn run_command(mut cmd: Command, args: &[&str]) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn myagent-manager");
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let t1 = collect(child.stdout.take().expect("stdout"), out.clone());
    let t2 = collect(child.stderr.take().expect("stderr"), err.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`myagent-manager {}` did not finish within 60 s",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = t1.join();
    let _ = t2.join();
    let stdout = out.lock().unwrap().clone();
    let stderr = err.lock().unwrap().clone();
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code(),
        stdout,
        stderr,
    }
}

fn collect<R: Read + Send + 'static>(
    mut r: R,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

/// Copies the dependency-free example agent to `dir/agents/NAME` (the seed's layout).
pub fn install_echo_agent(dir: &Path, name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/echo_agent.py");
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).expect("mkdir agents");
    let dst = agents.join(name);
    std::fs::copy(&src, &dst)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
    dst
}

/// A loopback port nothing listens on right now, for agents the supervisor launches (they
/// are told their port; they cannot bind port 0 and report back).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
