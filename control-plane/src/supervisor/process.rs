//! Launching one agent process: command line and environment (DESIGN §4), its own process group,
//! output capture into the log hub, and signals to the whole group.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::logs::{LogHub, Source, MAX_LINE_BYTES};
use crate::model::ServiceDef;

/// How many stderr lines a failed start reports.
pub const STDERR_TAIL_LINES: usize = 20;

/// The resolved command line of a managed service.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

impl LaunchSpec {
    /// `program args...`, as shown in `runtime.command`.
    pub fn command_line(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// `.py` runs as `python3 <path>`, anything else runs directly; cwd is `config.working_dir`
/// or the file's directory.
pub fn launch_spec(def: &ServiceDef) -> Result<LaunchSpec, String> {
    let path = def
        .agent_factory_path
        .as_deref()
        .ok_or_else(|| "service has no agent_factory_path".to_string())?;
    let file = Path::new(path);
    if !file.is_file() {
        return Err(format!(
            "agent_factory_path {path} does not exist or is not a file"
        ));
    }
    let (program, mut args) = if file.extension().is_some_and(|e| e == "py") {
        ("python3".to_string(), vec![path.to_string()])
    } else {
        (path.to_string(), Vec::new())
    };
    args.extend(def.config.args.iter().cloned());
    let cwd = match &def.config.working_dir {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    let mut env = vec![
        ("MYAGENT_HOST".to_string(), def.host.clone()),
        ("MYAGENT_PORT".to_string(), def.port.to_string()),
        ("MYAGENT_SERVICE_ID".to_string(), def.id.clone()),
        ("MYAGENT_SERVICE_NAME".to_string(), def.name.clone()),
        (
            "MYAGENT_MAX_SESSIONS".to_string(),
            def.config.max_sessions.to_string(),
        ),
        (
            "MYAGENT_SESSION_TIMEOUT".to_string(),
            def.config.session_timeout.to_string(),
        ),
        // Python buffers stdout when it is a pipe; agents' lines should arrive as printed.
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    env.extend(def.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(LaunchSpec {
        program,
        args,
        cwd,
        env,
    })
}

/// The last stderr lines of a process, shared between its reader task and the supervisor.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: &str) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == STDERR_TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line.to_string());
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// A launched process: its pid (= process group id) and the parts the supervisor keeps.
pub struct Launched {
    pub pid: i32,
    pub child: Child,
    pub stderr: StderrTail,
    /// Readers finish when the pipes close; waited for (bounded) before reporting an exit, so
    /// the last stderr lines are captured.
    pub readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Spawns the process in its own process group with piped output captured into `logs`.
pub fn spawn(spec: &LaunchSpec, def: &ServiceDef, logs: &LogHub) -> std::io::Result<Launched> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own group: stop signals reach the agent's children too, and a Ctrl-C aimed at the
        // control plane's terminal does not hit the agents directly.
        .process_group(0)
        .kill_on_drop(false);
    super::pdeathsig::kill_when_parent_dies(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| std::io::Error::other("spawned process has no pid"))?;
    let stderr = StderrTail::default();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            out,
            logs.clone(),
            def.id.clone(),
            def.name.clone(),
            Source::Stdout,
            None,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            err,
            logs.clone(),
            def.id.clone(),
            def.name.clone(),
            Source::Stderr,
            Some(stderr.clone()),
        )));
    }
    Ok(Launched {
        pid,
        child,
        stderr,
        readers,
    })
}

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    logs: LogHub,
    service_id: String,
    service_name: String,
    source: Source,
    tail: Option<StderrTail>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        // Bounded read: a line without a newline cannot grow without limit.
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(t) = &tail {
                    t.push(line);
                }
                logs.capture(&service_id, &service_name, source, line);
            }
        }
    }
}

/// Waits for the process to exit, then (briefly) for its output to drain.
pub async fn wait_exit(
    mut child: Child,
    readers: Vec<tokio::task::JoinHandle<()>>,
) -> std::io::Result<ExitStatus> {
    let status = child.wait().await?;
    // A grandchild may keep the pipes open; do not wait for it forever.
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        futures::future::join_all(readers),
    )
    .await;
    Ok(status)
}

/// Sends `signal` to every process of the group led by `pgid`. Returns false when the group
/// has no member left.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    if pgid <= 1 {
        return false; // never signal init or "every process"
    }
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

/// Exit code, or 128+signal for a signalled exit (shell convention).
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {}",
            Signal::try_from(s)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| s.to_string())
        ),
        _ => "exited".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredState, ServiceConfig};

    fn def(path: &str) -> ServiceDef {
        let now = chrono::Utc::now();
        ServiceDef {
            id: "svc-test".into(),
            name: "t".into(),
            description: String::new(),
            agent_factory_path: Some(path.into()),
            host: "127.0.0.1".into(),
            port: 4321,
            tags: vec![],
            config: ServiceConfig::default(),
            desired: DesiredState::Running,
            restart: None,
            deleting: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn python_files_run_with_python3_in_their_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.py");
        std::fs::write(&f, "print('x')").unwrap();
        let mut d = def(f.to_str().unwrap());
        d.config.args = vec!["--x".into()];
        d.config.env.insert("EXTRA".into(), "1".into());
        let spec = launch_spec(&d).unwrap();
        assert_eq!(spec.program, "python3");
        assert_eq!(
            spec.args,
            vec![f.to_str().unwrap().to_string(), "--x".into()]
        );
        assert_eq!(spec.cwd, tmp.path());
        assert!(spec.env.contains(&("MYAGENT_PORT".into(), "4321".into())));
        assert!(spec
            .env
            .contains(&("MYAGENT_SERVICE_ID".into(), "svc-test".into())));
        assert!(spec.env.contains(&("EXTRA".into(), "1".into())));
        assert!(launch_spec(&def("/nonexistent/x.py")).is_err());
    }

    #[tokio::test]
    async fn captures_output_and_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("a.sh");
        // Prints, starts a grandchild in the same group, then waits.
        std::fs::write(
            &script,
            "#!/bin/sh\necho hello-out\necho ERROR bad-thing >&2\nsleep 300 &\necho child=$! \nwait\n",
        )
        .unwrap();
        let mut perms = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms).unwrap();
        let logs = LogHub::open(tmp.path().join("logs"), Default::default()).unwrap();
        let d = def(script.to_str().unwrap());
        let spec = launch_spec(&d).unwrap();
        let launched = spawn(&spec, &d, &logs).unwrap();
        let pgid = launched.pid;
        // Wait until the grandchild's pid is printed.
        let mut grandchild = None;
        for _ in 0..200 {
            let (lines, _) = logs
                .query(
                    "svc-test",
                    crate::logs::LogQuery {
                        limit: 100,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            if let Some(l) = lines.iter().find_map(|e| e.message.strip_prefix("child=")) {
                grandchild = Some(l.trim().parse::<i32>().unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grandchild = grandchild.expect("grandchild pid printed");
        assert!(signal_group(pgid, Signal::SIGKILL));
        let status = wait_exit(launched.child, launched.readers).await.unwrap();
        assert_eq!(exit_code(&status), 137);
        assert_eq!(launched.stderr.lines(), vec!["ERROR bad-thing".to_string()]);
        // The grandchild was in the group, so it is gone too (a zombie until init reaps it).
        for _ in 0..200 {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("grandchild {grandchild} survived the group kill");
    }
}
