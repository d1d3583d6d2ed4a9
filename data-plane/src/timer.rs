//! Timers for code that runs on the connection threads.
//!
//! A connection thread's event loop (`crate::rt`) keeps no timers: a timer wheel turned on
//! every wake-up (as tokio's is) cost about 15 % of the proxy's instructions per relayed round
//! trip. The threads' timers (deadlines, timeouts and the relay's tick) are tokio timers kept
//! by a [`Driver`] on a thread of its own, which wakes a connection's task when one fires.
//! Code that may run on a connection thread makes its timers here; elsewhere (and in tests, on
//! an ordinary runtime) these are tokio's own.

use std::cell::OnceCell;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, Sleep, Timeout};

thread_local! {
    /// The runtime whose time driver keeps this thread's timers, when not its own.
    static DRIVER: OnceCell<Handle> = const { OnceCell::new() };
}

/// A time driver on a thread of its own, for the connection threads. It must outlive every
/// timer made through it (a timer polled after its driver ended panics): each connection
/// thread holds it until its own runtime, with every connection on it, is gone.
pub struct Driver(Option<Runtime>);

impl Driver {
    pub fn start() -> std::io::Result<Arc<Driver>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("myagent-timers")
            .enable_time()
            .build()?;
        Ok(Arc::new(Driver(Some(rt))))
    }

    pub fn handle(&self) -> Option<Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Makes `driver` keep the timers made on this thread from now on (called once, at the start
/// of a connection thread).
pub fn keep_timers_on(driver: Handle) {
    DRIVER.with(|d| {
        let _ = d.set(driver);
    });
}

/// Runs `f` (which makes a timer) with the thread's timer runtime as the current one.
fn on_driver<R>(f: impl FnOnce() -> R) -> R {
    DRIVER.with(|d| match d.get() {
        Some(h) => {
            let _guard = h.enter();
            f()
        }
        None => f(),
    })
}

/// Runs `future` on the timer thread's runtime (for what needs a tokio runtime, such as name
/// resolution, when called from a connection thread).
pub fn background<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    DRIVER.with(|d| match d.get() {
        Some(h) => h.spawn(future),
        None => tokio::spawn(future),
    })
}

pub fn sleep(duration: Duration) -> Sleep {
    on_driver(|| tokio::time::sleep(duration))
}

pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    on_driver(|| tokio::time::timeout(duration, future))
}

pub fn interval_at(start: Instant, period: Duration) -> Interval {
    on_driver(|| tokio::time::interval_at(start, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread whose runtime has no time driver still gets working timers, kept by another.
    #[test]
    fn timers_work_on_a_runtime_without_a_time_driver() {
        let driver = Driver::start().expect("timer driver");
        let handle = driver.handle().expect("running");
        let took = std::thread::spawn(move || {
            keep_timers_on(handle);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("thread runtime");
            rt.block_on(async {
                let start = std::time::Instant::now();
                sleep(Duration::from_millis(30)).await;
                let slow = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
                assert!(slow.is_err(), "the timeout fires");
                let mut tick = interval_at(Instant::now(), Duration::from_millis(10));
                tick.tick().await;
                tick.tick().await;
                start.elapsed()
            })
        })
        .join()
        .expect("thread");
        assert!(took >= Duration::from_millis(60), "{took:?}");
    }
}
