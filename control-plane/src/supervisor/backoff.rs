//! Restart policy of `auto_restart`: exponential backoff (100 ms × 1.5, capped at 15 s, reset
//! after 30 s of stable uptime) and a give-up rule (more than `max_restarts` unstable restarts
//! within `restart_window` → `error`), as process managers such as systemd and supervisord do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const INITIAL: Duration = Duration::from_millis(100);
pub const FACTOR: f64 = 1.5;
pub const CAP: Duration = Duration::from_secs(15);
/// Uptime after which a process counts as stable and the backoff starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct RestartPolicy {
    /// Consecutive unstable restarts since the last reset.
    attempt: u32,
    /// When each unstable restart happened (pruned to the window).
    recent: VecDeque<Instant>,
}

/// What to do after an unexpected exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    RestartIn(Duration),
    GiveUp { restarts: usize },
}

impl RestartPolicy {
    /// Delay of the `attempt`-th consecutive restart (0-based).
    pub fn delay(attempt: u32) -> Duration {
        let secs = INITIAL.as_secs_f64() * FACTOR.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(secs.min(CAP.as_secs_f64()))
    }

    pub fn on_failure(&mut self, now: Instant, max_restarts: u32, window: Duration) -> Decision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= max_restarts as usize {
            return Decision::GiveUp {
                restarts: self.recent.len(),
            };
        }
        self.recent.push_back(now);
        let d = Self::delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Decision::RestartIn(d)
    }

    /// The process stayed up for `STABLE_AFTER`: start the backoff over.
    pub fn on_stable(&mut self) {
        self.attempt = 0;
        self.recent.clear();
    }

    /// Whether the service is in a restart loop right now (held out of routing until stable).
    pub fn unstable(&self) -> bool {
        self.attempt >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_half_and_cap() {
        assert_eq!(RestartPolicy::delay(0), Duration::from_millis(100));
        assert_eq!(RestartPolicy::delay(1), Duration::from_millis(150));
        assert_eq!(RestartPolicy::delay(2), Duration::from_millis(225));
        assert_eq!(RestartPolicy::delay(30), CAP);
        // Monotone and never above the cap, for every attempt.
        let mut prev = Duration::ZERO;
        for a in 0..200 {
            let d = RestartPolicy::delay(a);
            assert!(d >= prev && d <= CAP, "attempt {a}: {d:?}");
            prev = d;
        }
    }

    #[test]
    fn gives_up_after_max_restarts_in_window() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        for i in 0..3 {
            assert!(matches!(
                p.on_failure(t0 + Duration::from_secs(i), 3, w),
                Decision::RestartIn(_)
            ));
        }
        assert_eq!(
            p.on_failure(t0 + Duration::from_secs(4), 3, w),
            Decision::GiveUp { restarts: 3 }
        );
        // Outside the window the old restarts no longer count.
        assert!(matches!(
            p.on_failure(t0 + Duration::from_secs(120), 3, w),
            Decision::RestartIn(_)
        ));
    }

    #[test]
    fn stable_uptime_resets() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            p.on_failure(t0, 100, Duration::from_secs(60));
        }
        assert!(p.unstable());
        p.on_stable();
        assert!(!p.unstable());
        assert_eq!(
            p.on_failure(t0, 100, Duration::from_secs(60)),
            Decision::RestartIn(INITIAL)
        );
    }
}
