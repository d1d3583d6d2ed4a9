//! Process supervisor (leader only): launches, watches and restarts managed agent processes.
//!
//! One actor task per leadership term owns the state of every service (STYLE 10). It reconciles
//! each service's `desired` state (a store watch on `services/`) and writes what it observes to
//! `runtime/{id}`; helper tasks (process waiters, start-up probes, timers, the stats sampler)
//! report back over one bounded channel. The API (`lifecycle`) never talks to the actor
//! directly: it records intent in the store and waits on `runtime/{id}`, so it works from any
//! replica. When this replica stops leading, every process it started is stopped.

use std::process::ExitStatus;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::health::probe::ProbeOutcome;
use crate::logs::LogHub;

mod actor;
pub mod backoff;
mod drain;
pub mod lifecycle;
mod ops;
pub mod orphans;
mod pdeathsig;
pub mod port;
pub mod process;
pub mod procstat;

/// Capacity of the actor's inbox; senders wait (backpressure) when it is full.
const INBOX: usize = 1024;

/// What helper tasks and other modules tell the actor.
pub(crate) enum Msg {
    /// A launched process ended (`gen` names the launch).
    Exited {
        id: String,
        gen: u64,
        status: Result<ExitStatus, String>,
    },
    /// The start-up probe got a WebSocket handshake.
    Ready {
        id: String,
        gen: u64,
        response_ms: f64,
    },
    StartTimedOut {
        id: String,
        gen: u64,
    },
    /// The admission probe of an external service finished.
    ExternalProbe {
        id: String,
        gen: u64,
        outcome: ProbeOutcome,
    },
    Timer {
        id: String,
        epoch: u64,
        kind: TimerKind,
    },
    /// The health checker saw `unhealthy_threshold` consecutive failures.
    HealthFailed {
        id: String,
        reason: String,
    },
    /// The stats sampler asks which process trees to sample.
    Pids(oneshot::Sender<Vec<(String, i32)>>),
    /// (service id, memory MB, CPU %) per sampled tree.
    Stats(Vec<(String, f64, f64)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    BackoffDue,
    GraceOver,
    DrainDone,
    KillDeadline,
    Stable,
}

/// Handle other modules (the health checker) use to reach the supervisor of this replica.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Msg>,
}

impl SupervisorHandle {
    /// Asks for a restart after failed health checks (ignored unless the service runs here and
    /// has `auto_restart`).
    pub async fn health_failed(&self, service_id: &str, reason: String) {
        let _ = self
            .tx
            .send(Msg::HealthFailed {
                id: service_id.to_string(),
                reason,
            })
            .await;
    }
}

/// Starts the supervisor: it runs whenever `ctx.is_leader` is true, until `ctx.shutdown`.
/// Await the returned task during shutdown: it finishes once every process it started is gone.
pub fn spawn(ctx: Context, logs: LogHub) -> (SupervisorHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let handle = SupervisorHandle { tx: tx.clone() };
    let task = tokio::spawn(actor::run(ctx, logs, tx, rx));
    (handle, task)
}
