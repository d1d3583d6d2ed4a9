//! The frame relay of one connection: a single task polls both WebSockets without ever
//! blocking one direction on the other (like `copy_bidirectional`, per frame), wraps client
//! text in the envelope, and switches upstreams on failure or drain without losing client
//! frames.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use futures::Stream;
use myagent_proto::v1 as pb;
use prometheus::local::LocalHistogram;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::replay::ReplayWindow;
use super::upstream::Upstream;
use super::ws::{CloseFrame, Message, WsError, WsStream};
use super::{route_and_connect, Accepted};
use crate::envelope::Envelope;
use crate::events;
use crate::routing::{Decision, RouteError};
use crate::snapshot::{Service, Snapshot};
use crate::state::{unix_ms, Commands, ConnCommand, ConnStats, RouteInfo, Shared};

type SwitchFuture = Pin<Box<dyn Future<Output = Result<(Decision, Upstream), RouteError>> + Send>>;

/// How long closing handshakes may take once we decided to end the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a connection whose service restarts waits for it to come back, when no other
/// service can take the session meanwhile (client frames are held, bounded, as in any switch).
const RESTART_WAIT: Duration = Duration::from_secs(30);
/// How long a connection whose agent went away unexpectedly waits for its service to come back
/// (an automatic restart after a crash, a new leader relaunching it), when no other service can
/// take the session meanwhile.
const CRASH_WAIT: Duration = Duration::from_secs(10);
/// Unplanned switches back to the same service without an answer from it in between, beyond
/// which the connection no longer waits for it (an agent that drops every connection at once).
const MAX_SAME_SERVICE_RETRIES: u32 = 3;

enum Phase {
    Relay,
    /// Planned switch: the old upstream got a 1001 close; its remaining frames are still
    /// relayed; client frames are held until its close arrives or the deadline passes.
    Draining {
        deadline: Pin<Box<Sleep>>,
        reason: &'static str,
    },
    /// Connecting to the next service; client frames are held.
    Switching {
        fut: SwitchFuture,
        from: Arc<Service>,
        reason: &'static str,
        last_close: Option<CloseFrame>,
    },
    /// Close frames are queued; waiting (bounded) for both ends to finish.
    Closing {
        deadline: Pin<Box<Sleep>>,
    },
}

enum Ev {
    ClientMsg(Message),
    ClientError(WsError),
    ClientEnd,
    UpMsg(Message),
    UpError(WsError),
    UpEnd,
    Cmd(ConnCommand),
    Config(Arc<Snapshot>),
    Tick,
    Shutdown,
    DrainTimeout,
    Switched(Box<Result<(Decision, Upstream), RouteError>>),
    Done,
}

pub struct Relay<C> {
    shared: Arc<Shared>,
    stats: Arc<ConnStats>,
    client: WsStream<C>,
    up: Option<Upstream>,
    service: Arc<Service>,
    strategy: &'static str,
    session_id: String,
    acc: Accepted,
    envelope: Option<Envelope>,
    /// Client frames (unwrapped) waiting for the upstream.
    to_up: VecDeque<Message>,
    to_up_bytes: usize,
    /// A control frame (close) for the upstream; goes before `to_up`, even while holding.
    up_ctrl: Option<Message>,
    /// Client data frames sent upstream and not yet answered (one agent frame answers the
    /// oldest one): replayed to the next service on failover (at-least-once delivery).
    unacked: ReplayWindow,
    to_client: VecDeque<Message>,
    flush_up: bool,
    flush_client: bool,
    client_done: bool,
    up_done: bool,
    /// The client initiated the close: tungstenite answers it, we must not send another.
    client_closed: bool,
    phase: Phase,
    commands: Arc<Commands>,
    config: WatchStream<Arc<Snapshot>>,
    tick: Interval,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    shutting_down: bool,
    exclude: Vec<String>,
    /// Switches back to the same service since its agent last answered (see `CRASH_WAIT`).
    same_service_retries: u32,
    rt_start: Option<Instant>,
    /// Alternates which side is read first, so a flooding side cannot starve the other.
    flip: bool,
    /// Which sources woke the task. Each socket and the control sources (shutdown, commands,
    /// config, tick) are polled with a waker of their own that notes it fired, and a socket is
    /// read only when it may have something: since its last `Pending` it woke, or the relay
    /// has not read it (a read that must wait on the other side leaves the flag set).
    wakes: Arc<Wakes>,
    wakers: Wakers,
    client_readable: bool,
    up_readable: bool,
    ctl_fired: bool,
    /// Messages and pings seen in either direction, and their number at the last tick: the
    /// tick, not every message, updates the last-activity time.
    activity: u64,
    activity_mark: u64,
    /// Response times, folded into the shared histogram at each tick and at the end (no
    /// atomics shared between threads per message).
    rt_hist: LocalHistogram,
}

/// The sources that wake a relay (bits of [`Wakes::fired`]).
const CLIENT: u8 = 1;
const UP: u8 = 2;
const CONTROL: u8 = 4;

#[derive(Default)]
struct Wakes {
    fired: AtomicU8,
    task: AtomicWaker,
}

/// The waker one source is polled with: notes the source, then wakes the task.
struct SourceWake {
    bit: u8,
    wakes: Arc<Wakes>,
}

impl Wake for SourceWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fired.fetch_or(self.bit, Ordering::Release);
        self.wakes.task.wake();
    }
}

struct Wakers {
    client: Waker,
    up: Waker,
    control: Waker,
}

impl Wakers {
    fn new(wakes: &Arc<Wakes>) -> Self {
        let waker = |bit| {
            Waker::from(Arc::new(SourceWake {
                bit,
                wakes: wakes.clone(),
            }))
        };
        Wakers {
            client: waker(CLIENT),
            up: waker(UP),
            control: waker(CONTROL),
        }
    }
}

/// A frame's size as it counts in the message statistics and against the failover buffer
/// (`to_up_bytes`): data frames only. Pings and pongs also pass through `to_up` but are never
/// added, so taking one out must not subtract (a client keepalive ping underflowed the count:
/// a panic in debug builds, and in release a huge count that closed the next failover with 1013).
fn data_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// A close frame received from a peer, made safe to send on (reserved codes cannot be sent).
fn relayable(frame: Option<CloseFrame>) -> Message {
    match frame {
        Some(f) => match f.code {
            1005 | 1006 | 1015 => Message::Close(None),
            _ => Message::Close(Some(f)),
        },
        None => Message::Close(None),
    }
}

impl<C> Relay<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        stats: Arc<ConnStats>,
        mut client: WsStream<C>,
        up: Upstream,
        decision: Decision,
        session_id: String,
        acc: Accepted,
        commands: Arc<Commands>,
        routed_event: String,
    ) -> Self {
        // Pings cross the relay and are answered by the far end (DESIGN §6: relayed); the
        // upstream side is made that way when it connects.
        client.set_auto_pong(false);
        let idle = shared.settings.idle_timeout;
        // The tick checks idleness and publishes this connection's activity and metrics.
        let period = if idle.is_zero() {
            Duration::from_secs(5)
        } else {
            (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(5))
        };
        let mut tick = crate::timer::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let config = WatchStream::from_changes(shared.config.clone());
        let shutdown = Box::pin(shared.shutdown.clone().cancelled_owned());
        let wakes = Arc::new(Wakes::default());
        let mut to_client = VecDeque::new();
        to_client.push_back(Message::text(routed_event));
        let mut r = Relay {
            stats,
            client,
            up: Some(up),
            service: decision.service.clone(),
            strategy: decision.strategy,
            session_id,
            acc,
            envelope: None,
            to_up: VecDeque::new(),
            to_up_bytes: 0,
            up_ctrl: None,
            unacked: ReplayWindow::new(
                shared.settings.client_buffer_frames,
                shared.settings.client_buffer_bytes,
            ),
            to_client,
            flush_up: false,
            flush_client: false,
            client_done: false,
            up_done: false,
            client_closed: false,
            phase: Phase::Relay,
            commands,
            config,
            tick,
            shutdown,
            shutting_down: false,
            exclude: Vec::new(),
            same_service_retries: 0,
            rt_start: None,
            flip: false,
            wakers: Wakers::new(&wakes),
            wakes,
            // The first poll tries every source (and so registers with each).
            client_readable: true,
            up_readable: true,
            ctl_fired: true,
            activity: 0,
            activity_mark: 0,
            rt_hist: shared.metrics.upstream_response_seconds.local(),
            shared,
        };
        r.rebuild_envelope();
        r
    }

    fn rebuild_envelope(&mut self) {
        self.envelope = self.service.proxy_metadata.then(|| {
            Envelope::new(
                &self.acc.connection_id,
                &self.service.name,
                self.strategy,
                &self.session_id,
            )
        });
    }

    /// Runs to the end, then takes the connection out of the proxy's books. A plain `poll_fn`
    /// rather than an `async fn`: the future is the relay itself, not the relay twice (an
    /// `async fn` taking `self` keeps the argument and the moved-in value in separate slots).
    pub fn run(mut self) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            // Once per poll: the sources' wakers wake this task.
            self.wakes.task.register(cx.waker());
            loop {
                let Poll::Ready(ev) = self.poll_event(cx) else {
                    return Poll::Pending;
                };
                if self.handle(ev) {
                    self.finish();
                    return Poll::Ready(());
                }
            }
        })
    }

    /// The connection ended: unregistered, its load released on the service it ended on, and
    /// its close reported.
    fn finish(&mut self) {
        let shared = &self.shared;
        let service = &self.service.id;
        self.commands.close();
        shared.unregister(&self.stats.connection_id);
        shared.load.connection_closed(service);
        shared.push_connection_event(
            pb::connection_event::Kind::Closed,
            self.stats.to_proto(&shared.settings.node_id, "closed"),
        );
        shared.push_session_event(pb::session_event::Kind::Detached, &self.session_id, service);
        shared.push_closed(self.stats.clone());
    }

    fn is_relay(&self) -> bool {
        matches!(self.phase, Phase::Relay)
    }

    fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    // ---------------------------------------------------------------- polling

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Ev> {
        let fired = self.wakes.fired.swap(0, Ordering::AcqRel);
        self.client_readable |= fired & CLIENT != 0;
        self.up_readable |= fired & UP != 0;
        self.ctl_fired |= fired & CONTROL != 0;

        // Phase futures and timers.
        match &mut self.phase {
            Phase::Relay => {}
            Phase::Draining { deadline, .. } => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::DrainTimeout);
                }
            }
            Phase::Switching { fut, .. } => {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Ev::Switched(Box::new(r)));
                }
            }
            Phase::Closing { deadline } => {
                if (self.client_done && (self.up_done || self.up.is_none()))
                    || deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Ev::Done);
                }
            }
        }

        if let Poll::Ready(ev) = self.poll_control() {
            return Poll::Ready(ev);
        }
        let client_cx = &mut Context::from_waker(&self.wakers.client);
        let up_cx = &mut Context::from_waker(&self.wakers.up);

        // Writes towards the agent.
        if let Some(up) = self.up.as_mut().filter(|_| !self.up_done) {
            loop {
                let relay = matches!(self.phase, Phase::Relay);
                if self.up_ctrl.is_none() && (!relay || self.to_up.is_empty()) {
                    break;
                }
                match up.poll_ready(up_cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Ev::UpError(e)),
                    Poll::Pending => break,
                }
                if let Some(m) = self.up_ctrl.take() {
                    up.start_send(m);
                } else {
                    let Some(m) = self.to_up.pop_front() else {
                        break;
                    };
                    self.to_up_bytes -= data_len(&m);
                    self.unacked.push(&m);
                    match (&m, self.envelope.as_mut()) {
                        // The envelope goes straight into the frame.
                        (Message::Text(t), Some(env)) => {
                            up.start_send_text_parts(&env.parts(t.as_str()))
                        }
                        _ => up.start_send(m),
                    }
                }
                self.flush_up = true;
            }
        }

        // Writes towards the client.
        if !self.client_done {
            while !self.to_client.is_empty() {
                match self.client.poll_ready(client_cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Ev::ClientError(e)),
                    Poll::Pending => break,
                }
                let Some(m) = self.to_client.pop_front() else {
                    break;
                };
                self.client.start_send(m);
                self.flush_client = true;
            }
        }

        // Reads, alternating which side goes first.
        self.flip = !self.flip;
        for side in [self.flip, !self.flip] {
            let ev = if side {
                self.poll_client_read()
            } else {
                self.poll_up_read()
            };
            if let Poll::Ready(ev) = ev {
                return Poll::Ready(ev);
            }
        }

        // Nothing more to read right now: push out what was written.
        let client_cx = &mut Context::from_waker(&self.wakers.client);
        let up_cx = &mut Context::from_waker(&self.wakers.up);
        if self.flush_up {
            if let Some(up) = self.up.as_mut() {
                match up.poll_flush(up_cx) {
                    Poll::Ready(Ok(())) => self.flush_up = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Ev::UpError(e)),
                    Poll::Pending => {}
                }
            } else {
                self.flush_up = false;
            }
        }
        if self.flush_client && !self.client_done {
            match self.client.poll_flush(client_cx) {
                Poll::Ready(Ok(())) => self.flush_client = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Ev::ClientError(e)),
                Poll::Pending => {}
            }
        }

        Poll::Pending
    }

    fn poll_client_read(&mut self) -> Poll<Ev> {
        if self.client_done {
            return Poll::Pending;
        }
        // While relaying, read only when the previous frame went out (backpressure); while
        // holding, keep reading into the bounded buffer.
        let relaying = self.is_relay() && self.up.is_some();
        if (relaying && !self.to_up.is_empty()) || !self.client_readable {
            return Poll::Pending;
        }
        let cx = &mut Context::from_waker(&self.wakers.client);
        match self.client.poll_next(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Ev::ClientMsg(m)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Ev::ClientError(e)),
            Poll::Ready(None) => Poll::Ready(Ev::ClientEnd),
            Poll::Pending => {
                self.client_readable = false;
                Poll::Pending
            }
        }
    }

    fn poll_up_read(&mut self) -> Poll<Ev> {
        if self.up_done || !self.to_client.is_empty() || !self.up_readable {
            return Poll::Pending;
        }
        let Some(up) = self.up.as_mut() else {
            return Poll::Pending;
        };
        let cx = &mut Context::from_waker(&self.wakers.up);
        match up.poll_next(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Ev::UpMsg(m)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Ev::UpError(e)),
            Poll::Ready(None) => Poll::Ready(Ev::UpEnd),
            Poll::Pending => {
                self.up_readable = false;
                Poll::Pending
            }
        }
    }

    /// Polls the control sources if one of them fired since the last look.
    fn poll_control(&mut self) -> Poll<Ev> {
        if !std::mem::take(&mut self.ctl_fired) {
            return Poll::Pending;
        }
        let cx = &mut Context::from_waker(&self.wakers.control);
        let ev = if !self.shutting_down && self.shutdown.as_mut().poll(cx).is_ready() {
            Ev::Shutdown
        } else if let Poll::Ready(c) = self.commands.poll_recv(cx) {
            Ev::Cmd(c)
        } else if let Poll::Ready(Some(s)) = Pin::new(&mut self.config).poll_next(cx) {
            Ev::Config(s)
        } else if self.tick.poll_tick(cx).is_ready() {
            Ev::Tick
        } else {
            return Poll::Pending;
        };
        // More may be waiting behind this one: look again next time.
        self.ctl_fired = true;
        Poll::Ready(ev)
    }

    // ---------------------------------------------------------------- events

    /// Handles one event; true when the connection is finished.
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::ClientMsg(m) => self.on_client_msg(m),
            Ev::ClientError(e) => self.on_client_error(e),
            Ev::ClientEnd => {
                self.client_done = true;
                if !self.is_closing() {
                    self.begin_close(None, Some(Message::close(1001, "client went away")));
                }
            }
            Ev::UpMsg(m) => self.on_up_msg(m),
            Ev::UpError(e @ (WsError::TooLong { .. } | WsError::Protocol(_) | WsError::Utf8)) => {
                // The agent broke the protocol or the agent limits: another agent would get
                // the same message and most likely answer the same way, so no failover (it
                // looped between agents, replaying the message); the client is told.
                tracing::warn!(connection_id = %self.acc.connection_id, service = %self.service.name, error = %e, "agent frame refused");
                let ev = events::error(
                    "ROUTING_FAILED",
                    &format!("The agent's answer was refused: {e}"),
                    false,
                );
                if !self.client_closed && !self.client_done {
                    self.to_client.push_back(Message::text(ev));
                }
                let to_agent = match e {
                    WsError::TooLong { .. } => Message::close(1009, "frame over the proxy's limit"),
                    WsError::Utf8 => Message::close(1007, "text frame is not UTF-8"),
                    _ => Message::close(1002, "protocol error"),
                };
                self.begin_close(
                    Some(Message::close(1011, "agent frame refused")),
                    Some(to_agent),
                );
            }
            Ev::UpError(e) => {
                tracing::debug!(connection_id = %self.acc.connection_id, error = %e, "upstream error");
                self.on_up_end(None, true);
            }
            Ev::UpEnd => self.on_up_end(None, true),
            Ev::Cmd(c) => self.on_command(c),
            Ev::Config(s) => self.on_config(&s),
            Ev::Tick => self.on_tick(),
            Ev::Shutdown => {
                self.shutting_down = true;
                if !self.is_closing() {
                    self.begin_close(
                        Some(Message::close(1001, "proxy shutting down")),
                        Some(Message::close(1001, "proxy shutting down")),
                    );
                }
            }
            Ev::DrainTimeout => {
                if let Phase::Draining { reason, .. } = self.phase {
                    tracing::info!(connection_id = %self.acc.connection_id, service = %self.service.name, "drain timeout; switching");
                    self.start_switch(reason, None);
                }
            }
            Ev::Switched(r) => self.on_switched(*r),
            Ev::Done => return true,
        }
        false
    }

    fn on_client_msg(&mut self, m: Message) {
        if self.is_closing() {
            return;
        }
        match m {
            Message::Text(_) | Message::Binary(_) => {
                let n = data_len(&m);
                self.stats.msgs_in.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                self.activity += 1;
                if self.rt_start.is_none() {
                    self.rt_start = Some(Instant::now());
                }
                self.to_up.push_back(m);
                self.to_up_bytes += n;
                if !(self.is_relay() && self.up.is_some()) {
                    self.check_buffer();
                }
            }
            // Pings and pongs are relayed: the agent answers the client's ping. Without a
            // live upstream (switching, draining) the proxy answers it, and drops pongs.
            Message::Ping(_) | Message::Pong(_) => {
                self.activity += 1;
                if self.is_relay() && self.up.is_some() {
                    self.to_up.push_back(m);
                } else if let Message::Ping(data) = m {
                    self.to_client.push_back(Message::Pong(data));
                }
            }
            Message::Close(frame) => {
                self.client_closed = true;
                self.begin_close(None, Some(relayable(frame)));
            }
        }
    }

    /// The failover buffer is bounded; overflowing it ends the connection with 1013.
    fn check_buffer(&mut self) {
        let s = &self.shared.settings;
        if self.to_up.len() > s.client_buffer_frames || self.to_up_bytes > s.client_buffer_bytes {
            tracing::warn!(connection_id = %self.acc.connection_id, frames = self.to_up.len(), bytes = self.to_up_bytes, "failover buffer overflow");
            let msg = format!(
                "Too many client messages while switching services (limit {} frames / {} bytes)",
                s.client_buffer_frames, s.client_buffer_bytes
            );
            self.to_client.push_back(Message::Text(
                events::error("INSUFFICIENT_RESOURCES", &msg, true).into(),
            ));
            self.begin_close(
                Some(Message::close(1013, "failover buffer full")),
                Some(Message::close(1001, "client disconnected")),
            );
        }
    }

    fn on_client_error(&mut self, e: WsError) {
        let (code, text) = match &e {
            // The TCP connection ended without a close frame: the client went away (a crash, a
            // lost network, a dropped socket). Not a protocol violation: nothing can be sent to
            // it, no error is counted, and the connection must not linger in Closing waiting
            // for a client that is gone.
            WsError::Reset | WsError::Io(_) => {
                self.client_lost(&e);
                return;
            }
            WsError::TooLong { .. } => (1009, "message too big"),
            WsError::Utf8 => (1007, "invalid UTF-8"),
            WsError::Protocol(_) => (1002, "protocol error"),
        };
        let what = match &e {
            WsError::Protocol(p) => format!("WebSocket protocol error: {p}"),
            other => other.to_string(),
        };
        tracing::info!(connection_id = %self.acc.connection_id, close_code = code, error = %what, "closing misbehaving client");
        if self.is_closing() {
            self.client_done = true;
            return;
        }
        self.shared.note_error(&self.service.id);
        self.to_client.push_back(Message::Text(
            events::error("INVALID_REQUEST", &what, false).into(),
        ));
        self.begin_close(
            Some(Message::close(code, text)),
            Some(Message::close(1001, "client disconnected")),
        );
    }

    /// The client's connection is gone: close the upstream politely and finish.
    fn client_lost(&mut self, e: &WsError) {
        tracing::debug!(connection_id = %self.acc.connection_id, error = %e, "client connection lost");
        self.client_done = true;
        if !self.is_closing() {
            self.begin_close(None, Some(Message::close(1001, "client went away")));
        }
    }

    fn on_up_msg(&mut self, m: Message) {
        match m {
            Message::Text(_) | Message::Binary(_) => {
                let n = data_len(&m);
                self.stats.msgs_out.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                self.activity += 1;
                if let Some(t) = self.rt_start.take() {
                    let d = t.elapsed();
                    self.stats.rt_count.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .rt_sum_us
                        .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
                    self.rt_hist.observe(d.as_secs_f64());
                }
                // One answer acknowledges one request: exact for request/response agents;
                // agents that answer several frames per request only shorten the replay window.
                self.unacked.ack();
                self.same_service_retries = 0;
                if !self.is_closing() {
                    self.to_client.push_back(m);
                }
            }
            Message::Ping(_) | Message::Pong(_) => {
                if !self.is_closing() {
                    self.to_client.push_back(m);
                }
            }
            Message::Close(frame) => self.on_up_end(frame, false),
        }
    }

    /// The upstream ended: a close frame (`errored` false) or a failure.
    fn on_up_end(&mut self, frame: Option<CloseFrame>, errored: bool) {
        match &self.phase {
            Phase::Closing { .. } => {
                self.up_done = true;
            }
            Phase::Draining { reason, .. } => {
                let reason = *reason;
                self.up_done = true;
                self.start_switch(reason, frame);
            }
            Phase::Switching { .. } => {}
            Phase::Relay => {
                self.up_done = true;
                let normal = !errored && frame.as_ref().is_none_or(|f| f.code == 1000);
                if normal {
                    // The agent ended the conversation: relay its close to the client.
                    self.begin_close(Some(relayable(frame)), None);
                } else {
                    self.shared.note_error(&self.service.id);
                    tracing::info!(
                        connection_id = %self.acc.connection_id,
                        service = %self.service.name,
                        close = ?frame.as_ref().map(|f| f.code),
                        "upstream ended unexpectedly; failing over"
                    );
                    self.start_switch("upstream_closed", frame);
                }
            }
        }
    }

    fn on_command(&mut self, c: ConnCommand) {
        match c {
            ConnCommand::Notify(ev) => {
                if !self.is_closing() {
                    self.to_client.push_back(Message::Text(ev));
                }
            }
            ConnCommand::Disconnect { reason, notify } => {
                if self.is_closing() {
                    return;
                }
                if notify {
                    let ev = events::connection_closed(&self.acc.connection_id, &reason);
                    self.to_client.push_back(Message::Text(ev.into()));
                }
                // (The endpoint cuts reasons to the protocol's 123 bytes.)
                let r = reason.as_str();
                let r = if r.is_empty() {
                    "disconnected by administrator"
                } else {
                    r
                };
                self.begin_close(
                    Some(Message::close(1000, r)),
                    Some(Message::close(1000, "client disconnected by administrator")),
                );
            }
        }
    }

    fn on_config(&mut self, snap: &Snapshot) {
        if !self.is_relay() {
            return;
        }
        let reason = match snap.service(&self.service.id) {
            None => "service_removed",
            Some(s) if s.draining => match s.source.drain_reason.as_str() {
                "stop" => "service_stopped",
                "restart" => "service_restarting",
                "delete" => "service_removed",
                // A control plane that does not say why: the service is merely unavailable
                // (the event's reasons are a closed list; there is no `service_draining`).
                _ => "service_unavailable",
            },
            Some(s) if !s.routable => match (s.source.status.as_str(), s.source.health.as_str()) {
                ("stopped" | "stopping", _) => "service_stopped",
                ("error", _) => "service_error",
                (_, "unhealthy") => "service_unhealthy",
                _ => "service_unavailable",
            },
            Some(s) => {
                // Still fine: pick up changed settings (e.g. proxy_metadata) for new frames.
                if s.proxy_metadata != self.service.proxy_metadata {
                    self.service = s.clone();
                    self.rebuild_envelope();
                } else {
                    self.service = s.clone();
                }
                return;
            }
        };
        let timeout = self
            .service
            .drain_timeout
            .unwrap_or(self.shared.settings.drain_timeout);
        tracing::info!(connection_id = %self.acc.connection_id, service = %self.service.name, reason, "draining upstream");
        self.up_ctrl = Some(Message::close(1001, "service switching"));
        self.phase = Phase::Draining {
            deadline: Box::pin(crate::timer::sleep(timeout)),
            reason,
        };
    }

    fn on_tick(&mut self) {
        self.rt_hist.flush();
        let now = unix_ms();
        if self.activity != self.activity_mark {
            self.activity_mark = self.activity;
            self.stats
                .last_activity_ms
                .fetch_max(now, Ordering::Relaxed);
        } else if !self.flush_client && !self.flush_up {
            // Quiet for a whole tick: an idle connection keeps no buffers.
            self.client.release_idle_buffers();
            self.unacked.release_idle();
            if let Some(up) = self.up.as_mut() {
                up.release_idle_buffers();
            }
        }
        let idle = self.shared.settings.idle_timeout;
        if idle.is_zero() || self.is_closing() {
            return;
        }
        let last = self.stats.last_activity_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= idle.as_millis() as u64 {
            tracing::debug!(connection_id = %self.acc.connection_id, "idle timeout");
            self.begin_close(
                Some(Message::close(1001, "idle timeout")),
                Some(Message::close(1000, "client idle timeout")),
            );
        }
    }

    /// Queues the close frames and enters Closing. `to_client`/`to_up` None = that side is
    /// already closing or gone.
    fn begin_close(&mut self, to_client: Option<Message>, to_up: Option<Message>) {
        if let Some(m) = to_client {
            if !self.client_closed && !self.client_done {
                self.to_client.push_back(m);
            }
        }
        match (to_up, self.up.is_some() && !self.up_done) {
            (Some(m), true) => {
                // Frames still queued for the agent are dropped with the connection; the
                // close goes first.
                self.up_ctrl = Some(m);
                self.to_up.clear();
                self.to_up_bytes = 0;
            }
            _ => self.up_done = true,
        }
        self.phase = Phase::Closing {
            deadline: Box::pin(crate::timer::sleep(CLOSE_GRACE)),
        };
    }

    // ---------------------------------------------------------------- failover

    fn start_switch(&mut self, reason: &'static str, last_close: Option<CloseFrame>) {
        // The old upstream is finished (or abandoned after the drain deadline).
        self.up = None;
        self.up_done = false;
        self.up_ctrl = None;
        self.flush_up = false;
        // Frames the old agent may not have processed go first, in their original order.
        let replay = self.unacked.take();
        self.to_up_bytes += replay.iter().map(data_len).sum::<usize>();
        for m in replay.into_iter().rev() {
            self.to_up.push_front(m);
        }
        self.to_up
            .retain(|m| matches!(m, Message::Text(_) | Message::Binary(_) | Message::Ping(_)));
        // A planned restart brings the same service back: it stays a candidate, and with no
        // other one the switch waits (bounded) for it, so the session goes on with the
        // restarted agent instead of ending. An agent that went away unexpectedly is left out
        // first; with no other service the switch waits (bounded) for the next config that
        // shows it, as after an automatic restart, unless that config says it stopped or failed.
        let restarting = reason == "service_restarting";
        let crashed =
            reason == "upstream_closed" && self.same_service_retries < MAX_SAME_SERVICE_RETRIES;
        if !restarting {
            self.exclude.push(self.service.id.clone());
        }
        let wait = if restarting {
            RESTART_WAIT
        } else if crashed {
            CRASH_WAIT
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + wait;
        let failed = self.service.id.clone();
        let shared = self.shared.clone();
        let req = self.acc.req.clone();
        let session_id = self.session_id.clone();
        let connection_id = self.acc.connection_id.clone();
        let client_ip = self.acc.client_ip;
        let mut exclude = self.exclude.clone();
        let fut: SwitchFuture = Box::pin(async move {
            let mut config = shared.config.clone();
            // Changes from now on (a clone carries the original's idea of what was seen).
            config.borrow_and_update();
            loop {
                let mut tried = exclude.clone();
                let routed = route_and_connect(
                    &shared,
                    &req,
                    None,
                    &session_id,
                    &connection_id,
                    client_ip,
                    &mut tried,
                )
                .await;
                match routed {
                    Err(RouteError::RoutingFailed(_)) if Instant::now() < deadline && crashed => {
                        // Not coming back: the config says it stopped, failed or is gone.
                        let back = shared.snapshot().service(&failed).is_some_and(|s| {
                            !matches!(s.source.status.as_str(), "stopped" | "error")
                        });
                        if !back {
                            return routed;
                        }
                        // One try with each new config: a dead agent is not dialled on a timer
                        // (each refused connect counts as a failed health check).
                        let left = deadline.saturating_duration_since(Instant::now());
                        // (No next config before the deadline, or none ever: shutting down.)
                        if !matches!(
                            crate::timer::timeout(left, config.changed()).await,
                            Ok(Ok(()))
                        ) {
                            return routed;
                        }
                        exclude.retain(|id| *id != failed);
                    }
                    Err(RouteError::RoutingFailed(_)) if Instant::now() < deadline => {
                        // The next config (the service back, or another one), or a look again;
                        // none ever again when the proxy is shutting down.
                        let next =
                            crate::timer::timeout(Duration::from_millis(500), config.changed())
                                .await;
                        if matches!(next, Ok(Err(_))) {
                            return routed;
                        }
                    }
                    other => return other,
                }
            }
        });
        self.phase = Phase::Switching {
            fut,
            from: self.service.clone(),
            reason,
            last_close,
        };
    }

    fn on_switched(&mut self, r: Result<(Decision, Upstream), RouteError>) {
        let Phase::Switching {
            from,
            reason,
            last_close,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Relay)
        else {
            return;
        };
        match r {
            Ok((decision, up)) => {
                let to = decision.service.clone();
                tracing::info!(connection_id = %self.acc.connection_id, from = %from.name, to = %to.name, reason, replay = self.to_up.len(), "service switched");
                self.shared
                    .metrics
                    .failovers
                    .with_label_values(&[reason])
                    .inc();
                self.shared.load.connection_closed(&from.id);
                // The session now counts against the new service's `max_sessions` too, before
                // the control plane's load figures show the move (the old service keeps it
                // until then: capacity errs on the safe side).
                self.shared.load.connection_opened(&to.id, true);
                self.shared.sessions.bind(&self.session_id, &to.id);
                self.shared.push_session_event(
                    pb::session_event::Kind::Moved,
                    &self.session_id,
                    &to.id,
                );
                self.stats.set_route(RouteInfo {
                    service_id: to.id.clone(),
                    service_name: to.name.clone(),
                    session_id: self.session_id.clone(),
                    strategy: decision.strategy.to_string(),
                });
                self.shared.push_connection_event(
                    pb::connection_event::Kind::Updated,
                    self.stats.to_proto(&self.shared.settings.node_id, "active"),
                );
                self.up = Some(up);
                self.up_readable = true;
                self.up_done = false;
                if to.id == from.id {
                    self.same_service_retries += 1;
                } else {
                    self.same_service_retries = 0;
                }
                self.service = to;
                self.strategy = decision.strategy;
                self.rebuild_envelope();
                self.exclude.clear();
                let ev = events::service_switched(
                    &from.name,
                    &self.service.name,
                    reason,
                    &self.session_id,
                );
                self.to_client.push_back(Message::Text(ev.into()));
            }
            Err(e) => {
                tracing::info!(connection_id = %self.acc.connection_id, from = %from.name, error = e.message(), "no service to fail over to");
                self.shared
                    .metrics
                    .routing_failures
                    .with_label_values(&[e.code()])
                    .inc();
                let msg = format!(
                    "Service '{}' is gone and no other service can take over: {}",
                    from.name,
                    e.message()
                );
                self.to_client
                    .push_back(Message::Text(events::error(e.code(), &msg, true).into()));
                let close = match last_close {
                    Some(f) if !matches!(f.code, 1005 | 1006 | 1015) => Message::Close(Some(f)),
                    _ if reason == "upstream_closed" => {
                        Message::close(1011, "upstream connection lost")
                    }
                    _ => Message::close(1001, reason),
                };
                self.up_done = true;
                self.begin_close(Some(close), None);
            }
        }
    }
}
