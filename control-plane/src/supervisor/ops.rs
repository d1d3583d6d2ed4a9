//! The supervisor's transitions: launch, readiness, exits, automatic restarts with backoff,
//! planned stops (grace → drain → SIGTERM → SIGKILL) and restart requests.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::actor::{Actor, AfterStop, Phase, StartReason};
use super::backoff::{Decision, STABLE_AFTER};
use super::process::{self, signal_group};
use super::{drain, orphans, port, Msg, TimerKind};
use crate::health::{self, probe::ProbeOutcome, secs};
use crate::logs::Level;
use crate::model::{HealthStatus, RestartRequest, ServiceStatus};

const START_PROBE_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for killed leftovers of an earlier run to exit before launching.
const LEFTOVER_KILL_WAIT: Duration = Duration::from_secs(3);

impl Actor {
    fn log(&self, id: &str, level: Level, msg: &str) {
        if let Some(e) = self.entries.get(id) {
            tracing::info!(service = %e.def.name, service_id = id, "{msg}");
            self.logs.manager(id, &e.def.name, level, msg);
        }
    }

    /// A new start or restart request from the API.
    pub(super) async fn begin_request(&mut self, id: &str, req: RestartRequest) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.active_request = Some(req.id.clone());
        e.hold = false;
        e.policy.on_stable();
        match e.phase {
            Phase::Idle | Phase::Backoff => self.launch(id, StartReason::Operator).await,
            Phase::Starting => {
                e.reason = StartReason::Operator;
                if !req.start_only {
                    e.after_stop = AfterStop::Start(StartReason::Operator);
                    self.terminate(id).await;
                }
            }
            Phase::Running => {
                if req.start_only {
                    self.complete_request(id);
                    self.persist(id).await;
                } else if req.grace_seconds > 0 {
                    e.set_phase(Phase::Grace);
                    e.after_stop = AfterStop::Start(StartReason::Operator);
                    let grace = Duration::from_secs(u64::from(req.grace_seconds));
                    notify_maintenance(
                        &self.ctx,
                        &self.logs,
                        &e.def,
                        &req.message,
                        req.grace_seconds,
                    )
                    .await;
                    self.timer(id, grace, TimerKind::GraceOver);
                } else {
                    self.begin_planned_stop(id, AfterStop::Start(StartReason::Operator))
                        .await;
                }
            }
            Phase::Grace | Phase::Draining | Phase::Stopping => {
                e.after_stop = AfterStop::Start(StartReason::Operator);
            }
        }
    }

    fn complete_request(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            if let Some(r) = e.active_request.take() {
                e.rt.handled_restart = Some(r);
            }
        }
    }

    /// Launches a managed process, or admits an external service.
    pub(super) async fn launch(&mut self, id: &str, reason: StartReason) {
        if self.entries.get(id).is_some_and(|e| e.def.is_managed()) {
            self.kill_leftovers(id).await;
        }
        let others: Vec<_> = self
            .entries
            .values()
            .filter(|o| o.phase != Phase::Idle && !o.deleted)
            .map(|o| o.def.clone())
            .collect();
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.reason = reason;
        e.hold = false;
        e.after_stop = AfterStop::Idle;
        if let Some(owner) = port::owner(&e.def, others.iter()) {
            let msg = format!(
                "Port {} on {} is already in use by service '{}'",
                e.def.port, e.def.host, owner.name
            );
            return self.fail_start(id, "PORT_IN_USE", msg, Vec::new()).await;
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        e.gen = gen;
        e.rt.draining = false;
        e.rt.error_code = None;
        e.rt.last_stderr.clear();
        e.rt.memory_mb = 0.0;
        e.rt.cpu_percent = 0.0;
        if !e.def.is_managed() {
            // External: admitted to routing at once; the admission probe sets its health.
            e.set_phase(Phase::Running);
            e.rt.status = ServiceStatus::Running;
            e.rt.started_at = Some(Utc::now());
            e.rt.pid = None;
            e.rt.command.clear();
            e.rt.last_error = None;
            e.rt.next_restart_in_seconds = 0.0;
            let (host, port, timeout) = (
                e.def.host.clone(),
                e.def.port,
                secs(e.def.config.health_check_timeout, 5.0),
            );
            self.complete_request(id);
            self.persist(id).await;
            self.log(
                id,
                Level::Info,
                &format!(
                    "external endpoint {} admitted to routing",
                    probe_url(&host, port)
                ),
            );
            let (tx, id2) = (self.tx.clone(), id.to_string());
            tokio::spawn(async move {
                let outcome = health::probe::handshake(&host, port, timeout).await;
                let _ = tx
                    .send(Msg::ExternalProbe {
                        id: id2,
                        gen,
                        outcome,
                    })
                    .await;
            });
            return;
        }
        if port::listening(&e.def.host, e.def.port) {
            let msg = format!("Port {} on {} is already in use", e.def.port, e.def.host);
            return self.fail_start(id, "PORT_IN_USE", msg, Vec::new()).await;
        }
        let spec = match process::launch_spec(&e.def) {
            Ok(s) => s,
            Err(msg) => {
                return self
                    .fail_start(id, "SERVICE_START_FAILED", msg, Vec::new())
                    .await
            }
        };
        let launched = match process::spawn(&spec, &e.def, &self.logs) {
            Ok(l) => l,
            Err(err) => {
                let msg = format!("cannot launch {}: {err}", spec.command_line().join(" "));
                return self
                    .fail_start(id, "SERVICE_START_FAILED", msg, Vec::new())
                    .await;
            }
        };
        let pid = launched.pid;
        e.pid = Some(pid);
        e.stderr = Some(launched.stderr.clone());
        e.set_phase(Phase::Starting);
        e.rt.status = ServiceStatus::Starting;
        e.rt.pid = Some(pid);
        // Set when this process passes its start-up check; not the previous run's.
        e.rt.started_at = None;
        e.rt.command = spec.command_line();
        e.rt.next_restart_in_seconds = 0.0;
        let cancel = CancellationToken::new();
        e.probe_cancel = Some(cancel.clone());
        let (host, port) = (e.def.host.clone(), e.def.port);
        let startup = secs(e.def.config.startup_timeout, 30.0);
        let probe_timeout =
            secs(e.def.config.health_check_timeout, 5.0).min(Duration::from_secs(2));
        let cmd = spec.command_line().join(" ");
        self.persist(id).await;
        self.log(id, Level::Info, &format!("starting (pid {pid}): {cmd}"));
        // Waiter: owns the child; reports the exit once the output has drained.
        let (tx, id2) = (self.tx.clone(), id.to_string());
        tokio::spawn(async move {
            let status = process::wait_exit(launched.child, launched.readers)
                .await
                .map_err(|e| e.to_string());
            let _ = tx
                .send(Msg::Exited {
                    id: id2,
                    gen,
                    status,
                })
                .await;
        });
        // Start-up probe: handshake attempts until one succeeds or the startup timeout passes.
        let (tx, id2) = (self.tx.clone(), id.to_string());
        tokio::spawn(async move {
            let deadline = Instant::now() + startup;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = tx.send(Msg::StartTimedOut { id: id2, gen }).await;
                    return;
                }
                let attempt = health::probe::handshake(&host, port, probe_timeout.min(left));
                let out = tokio::select! {
                    _ = cancel.cancelled() => return,
                    out = attempt => out,
                };
                if out.ok {
                    let _ = tx
                        .send(Msg::Ready {
                            id: id2,
                            gen,
                            response_ms: out.response_time_ms,
                        })
                        .await;
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(START_PROBE_EVERY.min(left)) => {}
                }
            }
        });
    }

    /// Kills what is left of an earlier run of this service on this host (processes the agent
    /// started that outlived a SIGKILLed leader, see `orphans`), so they cannot hold its port.
    async fn kill_leftovers(&mut self, id: &str) {
        let sid = id.to_string();
        let found = tokio::task::spawn_blocking(move || orphans::find(&sid))
            .await
            .unwrap_or_default();
        if found.is_empty() {
            return;
        }
        orphans::kill_all(&found);
        let gone = orphans::wait_gone(&found, LEFTOVER_KILL_WAIT).await;
        let list = found
            .iter()
            .map(|l| format!("pid {} (group {}): {}", l.pid, l.pgid, l.command))
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!(
            "killed {} leftover process(es) of an earlier run of this service before starting{}: {list}",
            found.len(),
            if gone { "" } else { " (some still exiting)" }
        );
        tracing::warn!(service_id = id, leftovers = found.len(), "{msg}");
        if let Some(e) = self.entries.get(id) {
            self.logs.manager(id, &e.def.name, Level::Warn, &msg);
        }
    }

    /// A start did not succeed (no process is left running).
    async fn fail_start(
        &mut self,
        id: &str,
        code: &'static str,
        message: String,
        stderr: Vec<String>,
    ) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.reason == StartReason::Auto {
            return self.schedule_restart(id, message).await;
        }
        e.set_phase(Phase::Idle);
        e.pid = None;
        e.rt.status = ServiceStatus::Error;
        e.rt.pid = None;
        e.rt.error_code = Some(code.to_string());
        e.rt.last_error = Some(message.clone());
        e.rt.last_stderr = stderr;
        e.rt.next_restart_in_seconds = 0.0;
        self.complete_request(id);
        self.persist(id).await;
        self.log(
            id,
            Level::Error,
            &format!("start failed ({code}): {message}"),
        );
    }

    pub(super) async fn on_ready(&mut self, id: &str, gen: u64, response_ms: f64) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.gen != gen || e.phase != Phase::Starting {
            return;
        }
        e.probe_cancel = None;
        e.set_phase(Phase::Running);
        e.rt.status = ServiceStatus::Running;
        e.rt.started_at = Some(Utc::now());
        e.rt.next_restart_in_seconds = 0.0;
        e.rt.error_code = None;
        e.rt.last_error = None;
        // In a restart loop the service stays out of routing until it has been up for a while.
        let unstable = e.policy.unstable();
        let pid = e.pid.unwrap_or_default();
        self.complete_request(id);
        // Health first: whoever sees `running` (routing, the API caller) also sees `healthy`.
        self.set_health(
            id,
            HealthStatus::Healthy,
            response_ms,
            "start-up handshake passed",
            Some(unstable),
        )
        .await;
        self.persist(id).await;
        self.log(
            id,
            Level::Info,
            &format!("running (pid {pid}): WebSocket handshake passed in {response_ms:.1} ms"),
        );
        self.timer(id, STABLE_AFTER, TimerKind::Stable);
    }

    pub(super) async fn on_start_timeout(&mut self, id: &str, gen: u64) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.gen != gen || e.phase != Phase::Starting {
            return;
        }
        let message = format!(
            "no WebSocket handshake on {} within {:.0}s",
            probe_url(&e.def.host, e.def.port),
            secs(e.def.config.startup_timeout, 30.0).as_secs_f64()
        );
        e.after_stop = AfterStop::Fail {
            code: "SERVICE_START_FAILED",
            message,
        };
        e.set_phase(Phase::Stopping);
        if let Some(pid) = e.pid {
            signal_group(pid, Signal::SIGKILL);
        }
    }

    pub(super) async fn on_external_probe(&mut self, id: &str, gen: u64, out: ProbeOutcome) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        if e.gen != gen || e.phase != Phase::Running || e.def.is_managed() {
            return;
        }
        if out.ok {
            self.set_health(
                id,
                HealthStatus::Healthy,
                out.response_time_ms,
                "admission handshake passed",
                Some(false),
            )
            .await;
        } else {
            let msg = format!("admission handshake failed: {}", out.error);
            self.set_health(
                id,
                HealthStatus::Unhealthy,
                out.response_time_ms,
                &msg,
                None,
            )
            .await;
        }
    }

    async fn set_health(
        &mut self,
        id: &str,
        status: HealthStatus,
        ms: f64,
        msg: &str,
        flapping: Option<bool>,
    ) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        if e.deleted || !self.leading() {
            return;
        }
        let def = e.def.clone();
        let fence = self.ctx.term.fence();
        match health::force(&self.ctx.store, id, status, ms, msg, flapping, fence).await {
            Ok(Some((st, change))) => health::log_change(&self.logs, &def, &st, change),
            Ok(None) => {}
            Err(err) => tracing::warn!(service_id = id, error = %err, "cannot write health"),
        }
    }

    pub(super) async fn on_exit(&mut self, id: &str, gen: u64, status: Result<ExitStatus, String>) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.gen != gen || e.pid.is_none() {
            return;
        }
        let pid = e.pid.take().unwrap_or_default();
        // Whatever is left of the group (children of the agent) goes with it.
        signal_group(pid, Signal::SIGKILL);
        if let Some(c) = e.probe_cancel.take() {
            c.cancel();
        }
        if e.deleted {
            self.entries.remove(id);
            return;
        }
        let (code, what) = match &status {
            Ok(s) => (Some(process::exit_code(s)), process::describe_exit(s)),
            Err(err) => (None, format!("lost track of the process: {err}")),
        };
        e.rt.pid = None;
        e.rt.last_exit_code = code;
        e.rt.last_exit_at = Some(Utc::now());
        e.rt.memory_mb = 0.0;
        e.rt.cpu_percent = 0.0;
        let stderr = e.stderr.as_ref().map(|t| t.lines()).unwrap_or_default();
        match e.phase {
            Phase::Starting => {
                let msg = format!("process {what} during startup");
                self.fail_start(id, "SERVICE_START_FAILED", msg, stderr)
                    .await;
            }
            Phase::Stopping => match std::mem::replace(&mut e.after_stop, AfterStop::Idle) {
                AfterStop::Idle => {
                    self.finish_stop(id, &format!("stopped (process {what})"))
                        .await
                }
                AfterStop::Start(reason) => {
                    self.log(id, Level::Info, &format!("process {what}; starting again"));
                    self.launch(id, reason).await
                }
                AfterStop::Fail { code, message } => {
                    self.fail_start(id, code, message, stderr).await
                }
            },
            Phase::Running | Phase::Grace | Phase::Draining => {
                let planned = std::mem::replace(&mut e.after_stop, AfterStop::Idle);
                self.log(id, Level::Error, &format!("process {what} unexpectedly"));
                self.set_health(
                    id,
                    HealthStatus::Unhealthy,
                    0.0,
                    &format!("process {what}"),
                    None,
                )
                .await;
                let Some(e) = self.entries.get_mut(id) else {
                    return;
                };
                match planned {
                    AfterStop::Start(reason) => self.launch(id, reason).await,
                    AfterStop::Fail { .. } | AfterStop::Idle if e.phase != Phase::Running => {
                        self.finish_stop(id, &format!("stopped (process {what})"))
                            .await
                    }
                    _ => {
                        if e.def.config.auto_restart {
                            self.schedule_restart(id, format!("process {what}")).await;
                        } else {
                            e.set_phase(Phase::Idle);
                            e.hold = true;
                            e.rt.status = if code == Some(0) {
                                ServiceStatus::Stopped
                            } else {
                                ServiceStatus::Error
                            };
                            e.rt.last_error = Some(format!("process {what}"));
                            e.rt.error_code =
                                (code != Some(0)).then(|| "SERVICE_START_FAILED".to_string());
                            e.rt.last_stderr = stderr;
                            self.persist(id).await;
                        }
                    }
                }
            }
            Phase::Idle | Phase::Backoff => {}
        }
    }

    /// An unexpected exit (or a failed automatic start): back off and restart, or give up.
    async fn schedule_restart(&mut self, id: &str, why: String) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let window = secs(e.def.config.restart_window, 300.0);
        match e
            .policy
            .on_failure(Instant::now(), e.def.config.max_restarts, window)
        {
            Decision::RestartIn(delay) => {
                e.set_phase(Phase::Backoff);
                e.rt.status = ServiceStatus::Starting;
                e.rt.pid = None;
                e.rt.last_error = Some(why.clone());
                e.rt.next_restart_in_seconds = (delay.as_secs_f64() * 1000.0).round() / 1000.0;
                self.persist(id).await;
                self.log(
                    id,
                    Level::Warn,
                    &format!("{why}; restarting in {:.2}s", delay.as_secs_f64()),
                );
                self.timer(id, delay, TimerKind::BackoffDue);
            }
            Decision::GiveUp { restarts } => {
                let msg = format!(
                    "{why}; gave up after {restarts} restarts within {:.0}s (max_restarts {})",
                    window.as_secs_f64(),
                    e.def.config.max_restarts
                );
                e.set_phase(Phase::Idle);
                e.hold = true;
                e.rt.status = ServiceStatus::Error;
                e.rt.pid = None;
                e.rt.error_code = Some("SERVICE_START_FAILED".into());
                e.rt.last_error = Some(msg.clone());
                e.rt.next_restart_in_seconds = 0.0;
                self.complete_request(id);
                self.persist(id).await;
                self.log(id, Level::Error, &msg);
            }
        }
    }

    /// Planned stop of a running service: drain connections first, then terminate.
    pub(super) async fn begin_planned_stop(&mut self, id: &str, after: AfterStop) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.after_stop = after;
        let drain = secs(e.def.config.drain_timeout, 10.0);
        if !matches!(e.phase, Phase::Running | Phase::Grace) || e.def.config.drain_timeout <= 0.0 {
            return self.terminate(id).await;
        }
        e.set_phase(Phase::Draining);
        e.rt.draining = true;
        self.persist(id).await;
        let Some(e) = self.entries.get(id) else {
            return;
        };
        let (tx, store, id2, epoch) = (
            self.tx.clone(),
            self.ctx.store.clone(),
            id.to_string(),
            e.epoch,
        );
        tokio::spawn(async move {
            drain::wait_drained(store, id2.clone(), drain).await;
            let _ = tx
                .send(Msg::Timer {
                    id: id2,
                    epoch,
                    kind: TimerKind::DrainDone,
                })
                .await;
        });
    }

    /// SIGTERM to the process group (SIGKILL after `stop_grace_period`); external services
    /// are withdrawn at once.
    pub(super) async fn terminate(&mut self, id: &str) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if let Some(c) = e.probe_cancel.take() {
            c.cancel();
        }
        let Some(pid) = e.pid else {
            return match std::mem::replace(&mut e.after_stop, AfterStop::Idle) {
                AfterStop::Start(reason) => self.launch(id, reason).await,
                AfterStop::Idle | AfterStop::Fail { .. } => {
                    self.finish_stop(id, "withdrawn from routing").await
                }
            };
        };
        e.set_phase(Phase::Stopping);
        e.rt.status = ServiceStatus::Stopping;
        let grace = secs(e.def.config.stop_grace_period, 10.0);
        signal_group(pid, Signal::SIGTERM);
        self.persist(id).await;
        self.log(
            id,
            Level::Info,
            &format!("stopping (SIGTERM to process group {pid})"),
        );
        self.timer(id, grace, TimerKind::KillDeadline);
    }

    pub(super) async fn finish_stop(&mut self, id: &str, msg: &str) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.set_phase(Phase::Idle);
        e.pid = None;
        e.after_stop = AfterStop::Idle;
        e.rt.status = ServiceStatus::Stopped;
        e.rt.pid = None;
        e.rt.draining = false;
        e.rt.next_restart_in_seconds = 0.0;
        e.rt.memory_mb = 0.0;
        e.rt.cpu_percent = 0.0;
        e.rt.error_code = None;
        self.complete_request(id);
        // Health first, so whoever sees `stopped` also sees `unknown`.
        self.set_health(
            id,
            HealthStatus::Unknown,
            0.0,
            "service stopped",
            Some(false),
        )
        .await;
        self.persist(id).await;
        self.log(id, Level::Info, msg);
    }

    pub(super) async fn on_timer(&mut self, id: &str, epoch: u64, kind: TimerKind) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.epoch != epoch {
            return;
        }
        match (kind, e.phase) {
            (TimerKind::BackoffDue, Phase::Backoff) => {
                e.rt.restart_count = e.rt.restart_count.saturating_add(1);
                self.launch(id, StartReason::Auto).await;
            }
            (TimerKind::GraceOver, Phase::Grace) => {
                let after = std::mem::replace(&mut e.after_stop, AfterStop::Idle);
                self.begin_planned_stop(id, after).await;
            }
            (TimerKind::DrainDone, Phase::Draining) => self.terminate(id).await,
            (TimerKind::KillDeadline, Phase::Stopping) => {
                if let Some(pid) = e.pid {
                    signal_group(pid, Signal::SIGKILL);
                    self.log(
                        id,
                        Level::Warn,
                        "did not exit within stop_grace_period: SIGKILL",
                    );
                }
            }
            (TimerKind::Stable, Phase::Running) => {
                let was_unstable = e.policy.unstable();
                e.policy.on_stable();
                if was_unstable {
                    self.log(id, Level::Info, "stable again: back in routing");
                    self.set_health(
                        id,
                        HealthStatus::Healthy,
                        0.0,
                        "stable after restarts",
                        Some(false),
                    )
                    .await;
                }
            }
            _ => {}
        }
    }

    pub(super) async fn on_health_failed(&mut self, id: &str, reason: String) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.phase != Phase::Running || !e.def.is_managed() || !e.def.config.auto_restart {
            return;
        }
        match e.policy.on_failure(
            Instant::now(),
            e.def.config.max_restarts,
            secs(e.def.config.restart_window, 300.0),
        ) {
            Decision::RestartIn(_) => {
                e.rt.restart_count = e.rt.restart_count.saturating_add(1);
                e.after_stop = AfterStop::Start(StartReason::Auto);
                self.log(id, Level::Warn, &format!("restarting: {reason}"));
            }
            Decision::GiveUp { restarts } => {
                let message = format!("{reason}; gave up after {restarts} restarts");
                e.after_stop = AfterStop::Fail {
                    code: "SERVICE_START_FAILED",
                    message,
                };
                e.reason = StartReason::Operator;
            }
        }
        self.terminate(id).await;
    }
}

fn probe_url(host: &str, port: u16) -> String {
    health::probe::ws_url(host, port)
        .trim_end_matches('/')
        .to_string()
}

/// Tells the service's connected clients about a restart with a grace period.
async fn notify_maintenance(
    ctx: &crate::context::Context,
    logs: &crate::logs::LogHub,
    def: &crate::model::ServiceDef,
    message: &str,
    grace_seconds: u32,
) {
    let text = if message.is_empty() {
        format!("Service {} restarts in {grace_seconds} seconds", def.name)
    } else {
        message.to_string()
    };
    tracing::info!(service = %def.name, service_id = %def.id, grace_seconds, "maintenance_window: {text}");
    logs.manager(
        &def.id,
        &def.name,
        Level::Warn,
        &format!("restart in {grace_seconds}s: {text}"),
    );
    // Delivery waits for the proxies' answers; the actor must not wait with it.
    let (ctx, id, name) = (ctx.clone(), def.id.clone(), def.name.clone());
    tokio::spawn(async move {
        let sent = crate::stream::notify_service_clients(
            &ctx,
            &id,
            "maintenance_window",
            &text,
            "warning",
            Some(grace_seconds),
        )
        .await;
        match sent {
            Ok(delivered) => {
                tracing::info!(service = %name, delivered, "maintenance notification sent")
            }
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "maintenance notification failed")
            }
        }
    });
}
