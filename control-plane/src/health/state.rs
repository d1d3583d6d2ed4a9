//! The health state machine (pure): applies one check result to a service's `HealthState` with
//! healthy/unhealthy thresholds, a bounded history with transitions marked, and flap damping.

use chrono::{DateTime, Utc};

use crate::model::{HealthRecord, HealthState, HealthStatus, ServiceConfig};

/// History records kept per service.
pub const HISTORY_LEN: usize = 100;
/// Flap damping: this many transitions among the last `FLAP_WINDOW` checks mark a service as
/// flapping (held out of routing until it has been stable for `flap_stable_checks` checks).
pub const FLAP_TRANSITIONS: usize = 4;
pub const FLAP_WINDOW: usize = 20;

/// One probe result (active or passive).
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub response_time_ms: f64,
    pub error: String,
}

/// What changed, for logging and restart decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: HealthStatus,
    pub to: HealthStatus,
    pub flapping_changed: bool,
}

impl Change {
    pub fn transitioned(&self) -> bool {
        self.from != self.to
    }
}

pub fn apply(state: &mut HealthState, cfg: &ServiceConfig, r: &CheckResult) -> Change {
    let from = state.status;
    let was_flapping = state.flapping;
    if r.ok {
        state.consecutive_successes = state.consecutive_successes.saturating_add(1);
        state.consecutive_failures = 0;
        if state.consecutive_successes >= cfg.healthy_threshold.max(1) {
            state.status = HealthStatus::Healthy;
        }
        state.message = "WebSocket handshake succeeded".to_string();
    } else {
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.consecutive_successes = 0;
        if state.consecutive_failures >= cfg.unhealthy_threshold.max(1) {
            state.status = HealthStatus::Unhealthy;
        }
        state.message = r.error.clone();
    }
    state.last_check = Some(r.at);
    state.response_time_ms = (r.response_time_ms * 100.0).round() / 100.0;
    let transition = from != state.status;
    push_record(state, r, transition);
    damp_flapping(state, cfg);
    Change {
        from,
        to: state.status,
        flapping_changed: was_flapping != state.flapping,
    }
}

/// A status set from outside the probe cycle (a start-up handshake passed, the process exited).
pub fn force(
    state: &mut HealthState,
    status: HealthStatus,
    at: DateTime<Utc>,
    response_time_ms: f64,
    message: &str,
) -> Change {
    let from = state.status;
    let was_flapping = state.flapping;
    state.status = status;
    state.last_check = Some(at);
    state.response_time_ms = response_time_ms;
    state.message = message.to_string();
    match status {
        HealthStatus::Healthy => {
            state.consecutive_failures = 0;
            state.consecutive_successes = state.consecutive_successes.max(1);
        }
        HealthStatus::Unhealthy => {
            state.consecutive_successes = 0;
            state.consecutive_failures = state.consecutive_failures.max(1);
        }
        HealthStatus::Unknown => {
            state.consecutive_successes = 0;
            state.consecutive_failures = 0;
        }
    }
    let r = CheckResult {
        at,
        ok: status == HealthStatus::Healthy,
        response_time_ms,
        error: if status == HealthStatus::Healthy {
            String::new()
        } else {
            message.to_string()
        },
    };
    push_record(state, &r, from != status);
    Change {
        from,
        to: status,
        flapping_changed: was_flapping != state.flapping,
    }
}

fn push_record(state: &mut HealthState, r: &CheckResult, transition: bool) {
    state.history.push_back(HealthRecord {
        timestamp: r.at,
        status: state.status,
        response_time_ms: (r.response_time_ms * 100.0).round() / 100.0,
        error: r.error.clone(),
        transition,
    });
    while state.history.len() > HISTORY_LEN {
        state.history.pop_front();
    }
}

fn damp_flapping(state: &mut HealthState, cfg: &ServiceConfig) {
    // Stable = the last `flap_stable_checks` checks agree with each other and none changed
    // the status.
    let need = cfg.flap_stable_checks.max(1) as usize;
    let tail: Vec<&HealthRecord> = state.history.iter().rev().take(need).collect();
    let stable = tail.len() == need
        && tail
            .iter()
            .all(|h| !h.transition && h.status == state.status);
    if !state.flapping {
        // Only a service that is not stable now starts flapping: once it has been stable long
        // enough to be let back, the transitions still inside the window do not hold it out
        // again (a new transition does).
        let recent_transitions = state
            .history
            .iter()
            .rev()
            .take(FLAP_WINDOW)
            .filter(|h| h.transition)
            .count();
        if recent_transitions >= FLAP_TRANSITIONS && !stable {
            state.flapping = true;
        }
        return;
    }
    if stable {
        state.flapping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ok: bool) -> CheckResult {
        CheckResult {
            at: Utc::now(),
            ok,
            response_time_ms: 1.5,
            error: if ok { String::new() } else { "refused".into() },
        }
    }

    fn cfg() -> ServiceConfig {
        ServiceConfig {
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            flap_stable_checks: 3,
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_gate_transitions() {
        let mut s = HealthState::default();
        let c = cfg();
        assert_eq!(apply(&mut s, &c, &r(true)).to, HealthStatus::Healthy);
        assert_eq!(apply(&mut s, &c, &r(false)).to, HealthStatus::Healthy);
        assert_eq!(apply(&mut s, &c, &r(false)).to, HealthStatus::Healthy);
        let ch = apply(&mut s, &c, &r(false));
        assert!(ch.transitioned());
        assert_eq!(ch.to, HealthStatus::Unhealthy);
        assert_eq!(s.consecutive_failures, 3);
        assert_eq!(s.message, "refused");
        let transitions: Vec<bool> = s.history.iter().map(|h| h.transition).collect();
        assert_eq!(transitions, vec![true, false, false, true]);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = HealthState::default();
        for _ in 0..(HISTORY_LEN + 50) {
            apply(&mut s, &cfg(), &r(true));
        }
        assert_eq!(s.history.len(), HISTORY_LEN);
    }

    #[test]
    fn flapping_is_damped_until_stable() {
        let mut s = HealthState::default();
        let c = ServiceConfig {
            unhealthy_threshold: 1,
            ..cfg()
        };
        for i in 0..4 {
            apply(&mut s, &c, &r(i % 2 == 0));
        }
        assert!(s.flapping, "4 transitions in a row");
        apply(&mut s, &c, &r(true)); // transition back to healthy
        apply(&mut s, &c, &r(true));
        assert!(s.flapping);
        apply(&mut s, &c, &r(true));
        assert!(s.flapping, "only 2 stable checks after the last transition");
        let ch = apply(&mut s, &c, &r(true));
        assert!(!s.flapping && ch.flapping_changed);
        assert_eq!(s.status, HealthStatus::Healthy);
        // Stable from here on: the old transitions still in the window do not hold it out again.
        for i in 0..FLAP_WINDOW {
            let ch = apply(&mut s, &c, &r(true));
            assert!(
                !s.flapping && !ch.flapping_changed,
                "re-flagged at stable check {i}"
            );
        }
        // A new run of transitions flags it again.
        for i in 0..4 {
            apply(&mut s, &c, &r(i % 2 == 1));
        }
        assert!(s.flapping, "4 new transitions");
    }

    #[test]
    fn stays_let_back_while_old_transitions_are_in_the_window() {
        // Two crash/restart cycles (forced statuses), then the checks of a stable service.
        let mut s = HealthState::default();
        let c = cfg();
        for st in [
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Healthy,
        ] {
            force(&mut s, st, Utc::now(), 1.0, "forced");
        }
        let mut held = Vec::new();
        for _ in 0..FLAP_WINDOW {
            apply(&mut s, &c, &r(true));
            held.push(s.flapping);
        }
        // Held out for the first checks, then let back for good.
        assert!(held[0], "{held:?}");
        let first_free = held.iter().position(|f| !f).expect("let back");
        assert!(
            held[first_free..].iter().all(|f| !f),
            "held out again after being let back: {held:?}"
        );
    }

    #[test]
    fn forced_status_records_a_transition() {
        let mut s = HealthState::default();
        let ch = force(
            &mut s,
            HealthStatus::Healthy,
            Utc::now(),
            3.0,
            "start-up handshake passed",
        );
        assert!(ch.transitioned());
        assert!(s.history.back().unwrap().transition);
    }
}
