//! Waiting for conditions with a deadline, never for a fixed time (STYLE 15).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `check` becomes true within `timeout`.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $check:expr, $($msg:tt)+) => {
        $crate::wait::until(&format!($($msg)+), $timeout, || async { if $check { Some(()) } else { None } }).await
    };
}
