//! Exponential backoff with jitter for reconnecting to the control plane (STYLE 9).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// Upper bound of the next delay: base·2^attempt, capped at max.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn uniformly from [ceiling/2, ceiling] ("equal jitter": spread out,
    /// never zero), then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceil = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceil / 2;
        let span = (ceil - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rand::random_range(0..=span)
        };
        half + Duration::from_micros(jitter)
    }

    /// After a successful session: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: for random bases, caps and sequences of failures/resets, every delay lies in
    /// [ceiling/2, ceiling], ceilings never decrease between resets, never exceed the cap,
    /// and a reset brings the next delay back under the base.
    #[test]
    fn delays_are_bounded_monotone_and_reset() {
        for _ in 0..500 {
            let base = Duration::from_millis(rand::random_range(1..500));
            let max = base * rand::random_range(1..100);
            let mut b = Backoff::new(base, max);
            let mut prev_ceiling = Duration::ZERO;
            for _ in 0..rand::random_range(1..60) {
                if rand::random_range(0..10) == 0 {
                    b.reset();
                    prev_ceiling = Duration::ZERO;
                    let d = b.clone().next_delay();
                    assert!(
                        d <= base && d >= base / 2,
                        "after reset {d:?} vs base {base:?}"
                    );
                }
                let ceil = b.ceiling();
                assert!(ceil >= prev_ceiling, "ceiling went down");
                assert!(ceil <= max);
                let d = b.next_delay();
                assert!(
                    d >= ceil / 2 && d <= ceil,
                    "{d:?} outside [{:?}, {ceil:?}]",
                    ceil / 2
                );
                prev_ceiling = ceil;
            }
        }
    }

    #[test]
    fn reaches_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(10));
    }
}
