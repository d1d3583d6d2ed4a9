//! The connection threads' event loop: a single-threaded executor over an edge-triggered
//! `epoll` (through `mio`), in place of a tokio runtime on those threads.
//!
//! A relayed round trip is two socket events. On tokio each cost a trip through its scheduler,
//! its I/O registration (a socket's waker is dropped when it fires, so every wake-up also costs
//! a `Pending` read to register again) and the task harness: about half of the proxy's
//! instructions per round trip. Here a socket keeps its wakers registered, an event wakes them
//! in place, and a woken task is one queue entry.
//!
//! What runs here: accepting, the client handshake, routing, the upstream connect and the
//! relay. Timers come from [`crate::timer`] (kept on a thread of their own), and anything that
//! needs a tokio runtime (name resolution) is handed to that thread's runtime.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The token of the cross-thread wake-up (`eventfd`).
const WAKE: Token = Token(usize::MAX);

/// Socket events handled per `epoll_wait`.
const EVENTS: usize = 256;

/// Queued tasks run before the sockets are looked at again (fairness between the two).
const RUN_BATCH: usize = 256;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

// ------------------------------------------------------------------ reactor

/// One registered socket's readiness and the wakers waiting on it.
#[derive(Default)]
struct Source {
    readable: bool,
    writable: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

struct Reactor {
    poll: mio::Poll,
    sources: Slab<Source>,
}

thread_local! {
    /// The reactor and executor of this thread, while it runs a [`Runtime`].
    static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) };
    static EXECUTOR: RefCell<Option<Arc<Queue>>> = const { RefCell::new(None) };
    /// Tasks spawned on this thread and not finished (dropped with the runtime).
    static TASKS: RefCell<Slab<Arc<Task>>> = const { RefCell::new(Slab::new()) };
}

fn no_runtime() -> io::Error {
    io::Error::other("not on a connection thread (no event loop)")
}

fn with_reactor<R>(f: impl FnOnce(&mut Reactor) -> R) -> io::Result<R> {
    REACTOR
        .try_with(|r| match r.try_borrow_mut() {
            Ok(mut r) => r.as_mut().map(f).ok_or_else(no_runtime),
            Err(_) => Err(no_runtime()),
        })
        .unwrap_or_else(|_| Err(no_runtime()))
}

fn register<S: mio::event::Source>(io: &mut S) -> io::Result<usize> {
    with_reactor(|r| {
        let entry = r.sources.vacant_entry();
        let token = entry.key();
        r.poll
            .registry()
            .register(io, Token(token), Interest::READABLE | Interest::WRITABLE)?;
        // Ready until a read or write says otherwise (edge-triggered: an edge may have passed).
        entry.insert(Source {
            readable: true,
            writable: true,
            ..Source::default()
        });
        Ok(token)
    })?
}

fn deregister<S: mio::event::Source>(io: &mut S, token: usize) {
    let _ = with_reactor(|r| {
        let _ = r.poll.registry().deregister(io);
        r.sources.try_remove(token);
    });
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

impl Source {
    /// The readiness flag and waker slot of one direction.
    fn side(&mut self, dir: Dir) -> (&mut bool, &mut Option<Waker>) {
        match dir {
            Dir::Read => (&mut self.readable, &mut self.reader),
            Dir::Write => (&mut self.writable, &mut self.writer),
        }
    }
}

/// Keeps `cx`'s waker in `slot` (a clone only when it is another one).
fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Ready for `dir`? If not, `cx`'s waker is kept until the socket becomes ready.
fn poll_ready(token: usize, dir: Dir, cx: &Context<'_>) -> Poll<()> {
    let r = with_reactor(|r| {
        let Some(s) = r.sources.get_mut(token) else {
            return Poll::Ready(());
        };
        let (ready, slot) = s.side(dir);
        if *ready {
            return Poll::Ready(());
        }
        keep_waker(slot, cx);
        Poll::Pending
    });
    r.unwrap_or(Poll::Ready(()))
}

/// Runs `op` on a socket ready for `dir`; a "would block" clears the readiness and waits for
/// the next event (`cx` is woken), an interrupted call is made again.
fn poll_io<R>(
    token: usize,
    dir: Dir,
    cx: &Context<'_>,
    mut op: impl FnMut() -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        if poll_ready(token, dir, cx).is_pending() {
            return Poll::Pending;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => clear(token, dir, cx),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return Poll::Ready(r),
        }
    }
}

/// The socket said "would block" (or drained its buffer) for `dir`: not ready until its next
/// event, which wakes `cx`.
fn clear(token: usize, dir: Dir, cx: &Context<'_>) {
    let _ = with_reactor(|r| {
        if let Some(s) = r.sources.get_mut(token) {
            let (ready, slot) = s.side(dir);
            *ready = false;
            keep_waker(slot, cx);
        }
    });
}

impl Reactor {
    /// Waits for socket events (blocking only if `block`) and wakes whoever waits on them.
    /// `sleeping` is cleared as soon as the wait is over (on every path): wakes from here on are
    /// seen without the `eventfd`.
    fn turn(
        cell: &RefCell<Option<Reactor>>,
        events: &mut Events,
        block: bool,
        sleeping: &AtomicBool,
    ) -> io::Result<()> {
        let mut r = cell.borrow_mut();
        let Some(r) = r.as_mut() else {
            sleeping.store(false, Ordering::SeqCst);
            return Err(no_runtime());
        };
        let timeout = (!block).then_some(std::time::Duration::ZERO);
        let polled = r.poll.poll(events, timeout);
        sleeping.store(false, Ordering::SeqCst);
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // (Wakers only queue tasks here; none runs, so no socket is made or dropped meanwhile.)
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let Some(s) = r.sources.get_mut(ev.token().0) else {
                continue;
            };
            let closed = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            if ev.is_readable() || closed {
                s.readable = true;
                if let Some(w) = &s.reader {
                    w.wake_by_ref();
                }
            }
            if ev.is_writable() || closed {
                s.writable = true;
                if let Some(w) = &s.writer {
                    w.wake_by_ref();
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ executor

/// Tasks woken and waiting to run, shared with the threads that may wake them.
struct Queue {
    tasks: Mutex<VecDeque<Arc<Task>>>,
    /// The loop is (about to be) blocked in `epoll_wait`: a wake must write the `eventfd`.
    sleeping: AtomicBool,
    /// The main future of `block_on` was woken.
    main_woken: AtomicBool,
    waker: mio::Waker,
}

impl Queue {
    fn push(&self, task: Arc<Task>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(task);
        self.notify();
    }

    fn notify(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    fn pop(&self) -> Option<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    fn is_empty(&self) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

struct Task {
    future: Mutex<Option<BoxFuture>>,
    queued: AtomicBool,
    /// The task's key in this thread's `TASKS` (set once, after it is stored).
    key: AtomicUsize,
    queue: Arc<Queue>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let queue = self.queue.clone();
            queue.push(self);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.clone());
        }
    }
}

struct MainWake(Arc<Queue>);

impl Wake for MainWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.main_woken.store(true, Ordering::SeqCst);
        self.0.notify();
    }
}

/// Runs `future` on this thread's event loop (called on a connection thread, inside
/// [`Runtime::block_on`]; anywhere else the future is dropped, with an error logged).
pub fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
    let queue = EXECUTOR.with(|e| e.borrow().clone());
    let Some(queue) = queue else {
        tracing::error!("spawn outside a connection thread; task dropped");
        return;
    };
    let task = Arc::new(Task {
        future: Mutex::new(Some(Box::pin(future))),
        queued: AtomicBool::new(true),
        key: AtomicUsize::new(usize::MAX),
        queue: queue.clone(),
    });
    let key = TASKS.with(|t| t.borrow_mut().insert(task.clone()));
    task.key.store(key, Ordering::Relaxed);
    queue.push(task);
}

fn run(task: Arc<Task>) {
    task.queued.store(false, Ordering::Release);
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    let done = {
        let mut slot = task.future.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = slot.as_mut() else { return };
        // A panicking task ends alone (as on tokio), not the thread and its connections.
        let done = match std::panic::catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(&mut cx))) {
            Ok(poll) => poll.is_ready(),
            Err(_) => {
                tracing::error!("a connection task panicked; it was dropped");
                true
            }
        };
        if done {
            *slot = None;
        }
        done
    };
    if done {
        let key = task.key.load(Ordering::Relaxed);
        let _ = TASKS.with(|t| t.borrow_mut().try_remove(key));
    }
}

/// A connection thread's event loop.
pub struct Runtime {
    queue: Arc<Queue>,
}

impl Runtime {
    /// Sets up this thread's reactor and executor.
    pub fn new() -> io::Result<Runtime> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let queue = Arc::new(Queue {
            tasks: Mutex::new(VecDeque::new()),
            sleeping: AtomicBool::new(false),
            main_woken: AtomicBool::new(true),
            waker,
        });
        REACTOR.with(|r| {
            *r.borrow_mut() = Some(Reactor {
                poll,
                sources: Slab::new(),
            })
        });
        EXECUTOR.with(|e| *e.borrow_mut() = Some(queue.clone()));
        Ok(Runtime { queue })
    }

    /// Runs the loop until `main` is done; tasks still running are dropped with the runtime.
    pub fn block_on<F: Future>(&self, main: F) -> F::Output {
        let mut main = std::pin::pin!(main);
        let main_waker = Waker::from(Arc::new(MainWake(self.queue.clone())));
        let mut events = Events::with_capacity(EVENTS);
        let mut poll_failed = false;
        loop {
            if self.queue.main_woken.swap(false, Ordering::SeqCst) {
                let mut cx = Context::from_waker(&main_waker);
                if let Poll::Ready(v) = main.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            for _ in 0..RUN_BATCH {
                let Some(task) = self.queue.pop() else { break };
                run(task);
            }
            // Block only when nothing is left to run; the flag is set before the last look at
            // the queue, so a wake from another thread either is seen or writes the eventfd.
            self.queue.sleeping.store(true, Ordering::SeqCst);
            let block = self.queue.is_empty() && !self.queue.main_woken.load(Ordering::SeqCst);
            if !block {
                self.queue.sleeping.store(false, Ordering::SeqCst);
            }
            let turned =
                REACTOR.with(|cell| Reactor::turn(cell, &mut events, block, &self.queue.sleeping));
            if let Err(e) = turned {
                // `epoll_wait` does not fail on a valid instance. Should it, say so once and
                // keep looking at the main future and the queue (woken from other threads, such
                // as by the shutdown) every 10 ms instead of spinning.
                if !poll_failed {
                    tracing::error!(error = %e, "event loop cannot poll its sockets");
                    poll_failed = true;
                }
                self.queue.main_woken.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Drop every unfinished task's future (closing its sockets) while the reactor is here.
        let tasks: Vec<Arc<Task>> = TASKS.with(|t| t.borrow_mut().drain().collect());
        for task in tasks {
            let f = task.future.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(f);
        }
        while self.queue.pop().is_some() {}
        EXECUTOR.with(|e| *e.borrow_mut() = None);
        REACTOR.with(|r| *r.borrow_mut() = None);
    }
}

// ------------------------------------------------------------------ sockets

/// A TCP stream on this thread's event loop.
pub struct TcpStream {
    io: mio::net::TcpStream,
    token: usize,
}

impl TcpStream {
    fn new(mut io: mio::net::TcpStream) -> io::Result<TcpStream> {
        let token = register(&mut io)?;
        Ok(TcpStream { io, token })
    }

    /// Connects (non-blocking) to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::new(mio::net::TcpStream::connect(addr)?)?;
        std::future::poll_fn(|cx| loop {
            if poll_ready(stream.token, Dir::Write, cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(e) = stream.io.take_error()? {
                return Poll::Ready(Err(e));
            }
            match stream.io.peer_addr() {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    clear(stream.token, Dir::Write, cx);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await?;
        Ok(stream)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        deregister(&mut self.io, self.token);
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let len = buf.remaining();
        let n = ready!(poll_io(this.token, Dir::Read, cx, || {
            (&this.io).read(read_target(buf))
        }))?;
        // (Written by the read: as tokio's own `TcpStream` does.)
        mark_filled(buf, n);
        if n > 0 && n < len {
            // The socket is drained: the next bytes come with a new edge.
            clear(this.token, Dir::Read, cx);
        }
        Poll::Ready(Ok(()))
    }
}

/// The unfilled part of `buf` as a byte slice to read into, without zeroing it first.
#[allow(unsafe_code)]
fn read_target<'a>(buf: &'a mut ReadBuf<'_>) -> &'a mut [u8] {
    // SAFETY: the slice is only written to by `read(2)` (never read before it is written), and
    // only the `n` bytes the read reports are marked initialised (`mark_filled`). This is what
    // tokio's and mio's own streams do.
    unsafe { &mut *(buf.unfilled_mut() as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) }
}

#[allow(unsafe_code)]
fn mark_filled(buf: &mut ReadBuf<'_>, n: usize) {
    // SAFETY: `read(2)` wrote `n` bytes at the start of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(poll_io(this.token, Dir::Write, cx, || (&this.io).write(data)))?;
        if n > 0 && n < data.len() {
            clear(this.token, Dir::Write, cx);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.io.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

/// A listening socket on this thread's event loop.
pub struct TcpListener {
    io: mio::net::TcpListener,
    token: usize,
}

impl TcpListener {
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        let mut io = mio::net::TcpListener::from_std(l);
        let token = register(&mut io)?;
        Ok(TcpListener { io, token })
    }

    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, peer) = self.accept_raw().await?;
        Ok((s.register()?, peer))
    }

    /// Accepts a connection without putting it on this thread's event loop, so that another
    /// connection thread can take it.
    pub async fn accept_raw(&self) -> io::Result<(RawStream, SocketAddr)> {
        let (s, peer) =
            std::future::poll_fn(|cx| poll_io(self.token, Dir::Read, cx, || self.io.accept()))
                .await?;
        Ok((RawStream(s), peer))
    }
}

/// An accepted TCP stream on no event loop yet.
pub struct RawStream(mio::net::TcpStream);

impl RawStream {
    /// Puts the stream on the event loop of the calling thread.
    pub fn register(self) -> io::Result<TcpStream> {
        TcpStream::new(self.0)
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        deregister(&mut self.io, self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accept, connect, echo both ways and end of stream, all on one connection thread.
    #[test]
    fn sockets_and_tasks_on_the_event_loop() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rt = Runtime::new().expect("runtime");
        let got = rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            let (tx, rx) = tokio::sync::oneshot::channel();
            spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 100_000];
                let mut total = 0;
                loop {
                    let n = s.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.expect("echo");
                    total += n;
                }
                s.shutdown().await.expect("shutdown");
                let _ = tx.send(total);
            });
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let (mut back, mut off) = (Vec::new(), 0);
            let mut buf = vec![0u8; 8192];
            while back.len() < data.len() {
                if off < data.len() {
                    let end = (off + 4096).min(data.len());
                    c.write_all(&data[off..end]).await.expect("write");
                    off = end;
                }
                let n = c.read(&mut buf).await.expect("read back");
                back.extend_from_slice(&buf[..n]);
            }
            assert_eq!(back, data);
            c.shutdown().await.expect("half close");
            assert_eq!(c.read(&mut buf).await.expect("eof"), 0);
            rx.await.expect("server task")
        });
        assert_eq!(got, 300_000);
        drop(rt);
    }

    /// A task woken from another thread runs (the loop was asleep in `epoll_wait`).
    #[test]
    fn a_wake_from_another_thread_reaches_a_sleeping_loop() {
        let rt = Runtime::new().expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let sender = std::thread::spawn(move || {
            // Late enough that the loop is most likely asleep in `epoll_wait` (the test holds
            // either way; this is the case it is for).
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = tx.send(7);
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let v = rt.block_on(async move {
            spawn(async move {
                let v = rx.await.expect("value");
                let _ = done_tx.send(v);
            });
            done_rx.await.expect("task ran")
        });
        assert_eq!(v, 7);
        sender.join().expect("sender");
    }

    /// A task that panics is dropped; the loop and the other tasks go on.
    #[test]
    fn a_panicking_task_ends_alone() {
        let rt = Runtime::new().expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let v = rt.block_on(async move {
            spawn(async { panic!("boom") });
            spawn(async move {
                let _ = tx.send(5);
            });
            rx.await.expect("second task ran")
        });
        assert_eq!(v, 5);
    }

    /// Connecting to a closed port fails instead of hanging.
    #[test]
    fn a_refused_connect_is_an_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let rt = Runtime::new().expect("runtime");
        let r = rt.block_on(TcpStream::connect(port));
        assert!(r.is_err());
    }
}
