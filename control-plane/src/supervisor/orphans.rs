//! Leftovers of an earlier run of a service on this host, found and killed before a launch.
//!
//! `PR_SET_PDEATHSIG` (see `pdeathsig`) kills an agent when the replica that launched it dies,
//! but only the agent itself: processes the agent started survive a SIGKILLed leader, keep its
//! process group, and may hold the service's port, so the next leader's start would fail with
//! `PORT_IN_USE`. Every process the supervisor launches — and, through inheritance, everything
//! those processes start — carries `MYAGENT_SERVICE_ID=<id>` in its environment; before a
//! launch the supervisor looks for live processes with that entry (`/proc/<pid>/environ`) and
//! SIGKILLs their process groups. No two copies of a service run on one host at once, so any
//! such process is stale when the supervisor is about to launch.
//! Limits: only processes of this host and readable by this user are seen; a process that
//! scrubbed its environment is not recognised.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// One stale process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub pgid: i32,
    /// Its command line, for the manager's log event.
    pub command: String,
}

/// Live (not zombie) processes whose environment holds `MYAGENT_SERVICE_ID=<service_id>`,
/// this process excluded.
pub fn find(service_id: &str) -> Vec<Leftover> {
    let needle = format!("MYAGENT_SERVICE_ID={service_id}");
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Unreadable (another user's process, or already gone): not ours to judge.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        let Some((state, pgid)) = stat(pid) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let command = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Leftover { pid, pgid, command });
    }
    out.sort_by_key(|l| l.pid);
    out
}

/// (state, process group) from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, pgid))
}

/// Whether `pid` still runs. A killed multi-threaded process shows its main thread as a zombie
/// while its other threads are still exiting, and those hold its files (a listening port
/// included) until they are gone: it counts as gone once the zombie is alone.
pub fn alive(pid: i32) -> bool {
    match stat(pid) {
        None => false,
        Some((s, _)) if s != 'Z' && s != 'X' => true,
        Some(_) => std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1),
    }
}

/// SIGKILLs each leftover's process group (the rest of the group goes too: it is the same
/// stale run) and the process itself. Never this process's own group, init, or "every process".
pub fn kill_all(found: &[Leftover]) {
    let own_group = nix::unistd::getpgrp().as_raw();
    let mut groups: Vec<i32> = found.iter().map(|l| l.pgid).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        if g > 1 && g != own_group {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
    }
    for l in found {
        if l.pid > 1 {
            let _ = kill(Pid::from_raw(l.pid), Signal::SIGKILL);
        }
    }
}

/// Waits (polling, bounded by `timeout`) until none of `found` runs; true when all are gone.
pub async fn wait_gone(found: &[Leftover], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !found.iter().any(|l| alive(l.pid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A SIGKILLed process whose other threads outlive its main thread for a moment, holding a
    /// listening socket: it is gone for `alive` only once the port is free. Its main thread
    /// became a zombie first and the port was found still taken (python agents have threads).
    #[tokio::test]
    async fn a_killed_process_is_gone_only_when_its_port_is_free() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "import socket, threading, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port})); s.listen()\n\
             for _ in range(8): threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n\
             print('ready', flush=True)\n\
             time.sleep(300)\n"
        );
        for _ in 0..10 {
            let mut child = Command::new("python3")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line.trim(), "ready");
            let pid = child.id() as i32;
            kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            // Not reaped (as for a leftover of another parent): the main thread stays a zombie.
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) {
                assert!(Instant::now() < deadline, "pid {pid} still alive");
                std::thread::sleep(Duration::from_micros(200));
            }
            assert!(
                !super::super::port::listening("127.0.0.1", port),
                "gone, yet the port is still taken"
            );
            let _ = child.wait();
        }
    }

    #[tokio::test]
    async fn finds_and_kills_processes_of_the_service_only() {
        let id = format!("svc-orphan-{}", std::process::id());
        let spawn = |sid: &str| {
            Command::new("sleep")
                .arg("300")
                .env("MYAGENT_SERVICE_ID", sid)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut mine = spawn(&id);
        let mut other = spawn(&format!("{id}-other"));
        let found = find(&id);
        assert_eq!(
            found.iter().map(|l| l.pid).collect::<Vec<_>>(),
            vec![mine.id() as i32]
        );
        assert!(found[0].command.contains("sleep 300"), "{found:?}");
        // `sleep` shares this test's process group: only the process itself may be killed.
        kill_all(&found);
        let _ = mine.wait();
        assert!(wait_gone(&found, Duration::from_secs(5)).await);
        assert!(find(&id).is_empty());
        assert!(
            alive(other.id() as i32),
            "another service's process is left alone"
        );
        let _ = other.kill();
        let _ = other.wait();
    }
}
