//! Starts a real etcd process on free loopback ports with its own data dir; fails clearly when
//! etcd is missing.
//!
//! etcd cannot report the port it bound for `:0`, so ports are picked by binding
//! `127.0.0.1:0`, reading the port and releasing it; if etcd then fails to bind (another
//! process took the port in between) the start is retried with fresh ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running etcd; killed (and its data dir removed) on `Drop`.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    data_dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to pick a free port")
}

/// The `etcd` binary: `$ETCD_BIN` if set, else `etcd` from PATH, else /usr/bin/etcd.
fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        bin.is_file(),
        "etcd binary not found (looked on PATH and at /usr/bin/etcd): these tests need a real \
         etcd; install it (e.g. `apt-get install etcd-server`) or set ETCD_BIN"
    );
    bin
}

/// One GET /health; true when etcd reports itself healthy.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if conn.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Etcd {
    /// Starts a fresh single-member etcd; panics with a clear message when it cannot.
    pub fn start() -> Etcd {
        let bin = etcd_binary();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let etcd = Etcd {
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: tempfile::tempdir().expect("temp dir for etcd"),
                child: Mutex::new(None),
            };
            match etcd.spawn(&bin) {
                Ok(()) => return etcd,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start etcd after {START_ATTEMPTS} attempts: {last_err}");
    }

    /// One etcd shared by every test of this test binary that holds the returned `Arc`; it is
    /// killed when the last holder drops it (a later caller starts a new one). Tests sharing
    /// it must isolate themselves with a unique key prefix.
    pub fn shared() -> Arc<Etcd> {
        static SHARED: OnceLock<Mutex<Weak<Etcd>>> = OnceLock::new();
        let slot = SHARED.get_or_init(|| Mutex::new(Weak::new()));
        let mut weak = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(etcd) = weak.upgrade() {
            return etcd;
        }
        let etcd = Arc::new(Etcd::start());
        *weak = Arc::downgrade(&etcd);
        etcd
    }

    fn spawn(&self, bin: &PathBuf) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new(bin)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.data_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if healthy(self.client_port) {
                // Drain stderr in the background so etcd never blocks on a full pipe.
                if let Some(mut err) = child.stderr.take() {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut err, &mut std::io::sink());
                    });
                }
                *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(format!("etcd exited with {status}: {stderr}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("etcd not healthy within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; the data dir and ports are kept.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers, like a hung node.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Undoes `pause` (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_ref().expect("etcd is running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, sig).expect("signal etcd");
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn restart(&self) {
        self.stop();
        let bin = etcd_binary();
        let deadline = Instant::now() + READY_TIMEOUT;
        // The old listener's port may linger briefly; retry the same ports until the deadline.
        loop {
            match self.spawn(&bin) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("etcd restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) etcd.
        self.stop();
    }
}
