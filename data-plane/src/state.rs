//! State shared by the listeners, the connection tasks and the control-plane client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::task::AtomicWaker;
use myagent_proto::v1 as pb;
use tokio::sync::watch;

use crate::conn::ws::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::load::Load;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::sessions::Sessions;
use crate::snapshot::Snapshot;

/// Limits and timings every connection uses (from the CLI).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_agent_frame_bytes: usize,
    pub max_agent_message_bytes: usize,
    pub client_buffer_frames: usize,
    pub client_buffer_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub report_interval: Duration,
    pub shutdown_grace: Duration,
}

/// A connection's mailbox for control-plane commands: a short queue and the waker of the
/// connection's task. It allocates nothing until a command arrives (a channel per connection
/// would hold a block of slots for the connection's whole life).
#[derive(Debug, Default)]
pub struct Commands {
    queue: Mutex<VecDeque<ConnCommand>>,
    waker: AtomicWaker,
    closed: AtomicBool,
}

/// Commands a connection may have waiting; beyond them it counts as busy.
const MAX_QUEUED_COMMANDS: usize = 16;

impl Commands {
    /// Queues a command for the connection; false when it is closing or has too many waiting.
    pub fn send(&self, c: ConnCommand) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) || q.len() >= MAX_QUEUED_COMMANDS {
            return false;
        }
        q.push_back(c);
        drop(q);
        self.waker.wake();
        true
    }

    /// The next command, or Pending (the task is woken when one arrives).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<ConnCommand> {
        self.waker.register(cx.waker());
        match self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
        {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }

    /// The connection ended: later commands are refused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Something the control plane asks a connection to do.
#[derive(Debug)]
pub enum ConnCommand {
    Disconnect {
        reason: String,
        notify: bool,
    },
    /// A ready-made `management_notification` event.
    Notify(Utf8Bytes),
}

/// Counters of one connection. The relay bumps them with relaxed atomics (uncontended: one
/// writer); the reporter reads them every report interval.
#[derive(Debug)]
pub struct ConnStats {
    pub connection_id: String,
    pub client_ip: String,
    pub connected_at: SystemTime,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    pub last_activity_ms: AtomicU64,
    pub rt_count: AtomicU64,
    pub rt_sum_us: AtomicU64,
    pub route: Mutex<RouteInfo>,
    /// The counters as of the last report (see [`ConnStats::take_delta`]).
    reported: [AtomicU64; 6],
}

/// Where a connection currently goes (changes on failover).
#[derive(Debug, Clone, Default)]
pub struct RouteInfo {
    pub service_id: String,
    pub service_name: String,
    pub session_id: String,
    pub strategy: String,
}

impl ConnStats {
    pub fn new(connection_id: String, client_ip: String, now_ms: u64, route: RouteInfo) -> Self {
        ConnStats {
            connection_id,
            client_ip,
            connected_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(now_ms),
            rt_count: AtomicU64::new(0),
            rt_sum_us: AtomicU64::new(0),
            route: Mutex::new(route),
            reported: Default::default(),
        }
    }

    /// Messages in/out, bytes in/out, response count and response time sum (µs), as of now.
    pub fn counters(&self) -> [u64; 6] {
        [
            self.msgs_in.load(Ordering::Relaxed),
            self.msgs_out.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.rt_count.load(Ordering::Relaxed),
            self.rt_sum_us.load(Ordering::Relaxed),
        ]
    }

    /// How much each counter grew since the previous call (the reporter is its one caller).
    pub fn take_delta(&self) -> [u64; 6] {
        let now = self.counters();
        let mut d = [0; 6];
        for ((d, now), prev) in d.iter_mut().zip(now).zip(&self.reported) {
            *d = now.saturating_sub(prev.swap(now, Ordering::Relaxed));
        }
        d
    }

    pub fn route(&self) -> RouteInfo {
        self.route.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_route(&self, r: RouteInfo) {
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    pub fn to_proto(&self, node_id: &str, status: &str) -> pb::Connection {
        let r = self.route();
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        pb::Connection {
            connection_id: self.connection_id.clone(),
            session_id: r.session_id,
            client_ip: self.client_ip.clone(),
            target_service_id: r.service_id,
            target_service: r.service_name,
            node_id: node_id.to_string(),
            status: status.to_string(),
            connected_at: Some(ts(self.connected_at)),
            last_activity: Some(ts(UNIX_EPOCH + Duration::from_millis(last))),
            closed_at: if status == "closed" {
                Some(ts(SystemTime::now()))
            } else {
                None
            },
            bytes_sent: self.bytes_out.load(Ordering::Relaxed),
            bytes_received: self.bytes_in.load(Ordering::Relaxed),
            message_count: self.msgs_in.load(Ordering::Relaxed)
                + self.msgs_out.load(Ordering::Relaxed),
            routing_strategy: r.strategy,
        }
    }
}

pub fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[derive(Debug)]
pub struct ConnEntry {
    pub cmd: Arc<Commands>,
    pub stats: Arc<ConnStats>,
}

/// Events waiting for the next report. Bounded: beyond `MAX_PENDING` events are dropped and
/// counted (the periodic UPDATED sweep and the resync on reconnect repair the view).
#[derive(Debug, Default)]
pub struct Pending {
    pub connections: Vec<pb::ConnectionEvent>,
    pub sessions: Vec<pb::SessionEvent>,
    /// Closed connections whose last counter deltas still have to be folded in.
    pub closed: Vec<Arc<ConnStats>>,
    pub dropped: u64,
}

const MAX_PENDING: usize = 200_000;

/// Everything shared; one per proxy.
pub struct Shared {
    pub settings: Settings,
    pub config: watch::Receiver<Arc<Snapshot>>,
    pub load: Load,
    pub sessions: Sessions,
    pub router: Router,
    pub metrics: Metrics,
    pub conns: Mutex<HashMap<String, ConnEntry>>,
    pub pending: Mutex<Pending>,
    /// Per-service (errors, passive upstream failures) since the last report.
    pub service_errors: Mutex<HashMap<String, (u64, u64)>>,
    pub active: AtomicUsize,
    /// A channel to the control plane, when connected (for `ResolveSession`).
    pub control_channel: RwLock<Option<tonic::transport::Channel>>,
    pub token: Option<String>,
    /// Woken when a session is created: the report carrying it goes out at once (rate-limited
    /// by the control task) so another proxy can resume the session within milliseconds.
    pub report_soon: tokio::sync::Notify,
    pub shutdown: CancellationToken,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.borrow().clone()
    }

    pub fn ready(&self) -> bool {
        self.config.borrow().loaded
    }

    pub fn push_connection_event(&self, kind: pb::connection_event::Kind, conn: pb::Connection) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.connections.len() >= MAX_PENDING {
            p.dropped += 1;
            return;
        }
        p.connections.push(pb::ConnectionEvent {
            kind: kind as i32,
            connection: Some(conn),
        });
    }

    pub fn push_session_event(
        &self,
        kind: pb::session_event::Kind,
        session_id: &str,
        service_id: &str,
    ) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.sessions.len() >= MAX_PENDING {
            p.dropped += 1;
            return;
        }
        p.sessions.push(pb::SessionEvent {
            kind: kind as i32,
            session_id: session_id.to_string(),
            service_id: service_id.to_string(),
            at: Some(ts(SystemTime::now())),
        });
        drop(p);
        if kind == pb::session_event::Kind::Created {
            self.report_soon.notify_one();
        }
    }

    pub fn note_passive_failure(&self, service_id: &str) {
        let mut m = self
            .service_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let e = m.entry(service_id.to_string()).or_default();
        e.0 += 1;
        e.1 += 1;
    }

    pub fn note_error(&self, service_id: &str) {
        let mut m = self
            .service_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.entry(service_id.to_string()).or_default().0 += 1;
    }

    pub fn push_closed(&self, stats: Arc<ConnStats>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
            .push(stats);
    }

    pub fn register(&self, stats: Arc<ConnStats>, cmd: Arc<Commands>) {
        let id = stats.connection_id.clone();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, ConnEntry { cmd, stats });
    }

    pub fn unregister(&self, connection_id: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(connection_id);
    }

    /// Calls `f` with each live connection's stats (under the registry lock: keep it short).
    pub fn for_each_live(&self, mut f: impl FnMut(&ConnStats)) {
        for e in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            f(&e.stats);
        }
    }
}

#[cfg(test)]
mod commands_tests {
    use super::*;

    fn notify(n: u8) -> ConnCommand {
        ConnCommand::Notify(Utf8Bytes::from(format!("{n}")))
    }

    #[test]
    fn commands_queue_in_order_bounded_and_stop_at_close() {
        let c = Commands::default();
        for i in 0..16 {
            assert!(c.send(notify(i)));
        }
        assert!(!c.send(notify(16)), "a 17th waiting command is refused");
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for i in 0..16u8 {
            match c.poll_recv(&mut cx) {
                Poll::Ready(ConnCommand::Notify(t)) => assert_eq!(t.as_str(), i.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert!(c.poll_recv(&mut cx).is_pending());
        c.close();
        assert!(!c.send(notify(0)), "refused once the connection ended");
    }
}
