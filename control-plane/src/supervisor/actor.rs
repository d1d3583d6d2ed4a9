//! The supervisor actor: leadership terms, the per-service state it owns, reconciliation of
//! `desired` against what runs, and the orderly stop of everything at the end of a term.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backoff::RestartPolicy;
use super::process::{signal_group, StderrTail};
use super::{procstat, Msg, TimerKind};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys;
use crate::logs::LogHub;
use crate::model::{DesiredState, Runtime, ServiceDef, ServiceStatus};
use crate::store::{json, Compare, Txn, TxnOp, WatchEvent};
use nix::sys::signal::Signal;

/// How often process trees are sampled for memory and CPU.
const STATS_EVERY: Duration = Duration::from_secs(3);
/// Longest wait for processes to exit when a term ends (SIGKILL after that).
const TERM_END_GRACE: Duration = Duration::from_secs(10);
/// Longest time agents are kept running after a term lost to a silent store (see `hold`).
const HOLD_MAX: Duration = Duration::from_secs(120);
/// How often a holding replica looks for another leader.
const HOLD_LOOK_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No process (stopped, error, or held after an exit).
    Idle,
    Starting,
    Running,
    /// A restart's `grace_seconds` after the maintenance notification.
    Grace,
    Draining,
    Stopping,
    /// Waiting out the backoff before an automatic restart.
    Backoff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartReason {
    /// Asked for by the operator: a failed start ends in `error` at once.
    Operator,
    /// An automatic restart: a failure counts against the restart policy.
    Auto,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum AfterStop {
    Idle,
    Start(StartReason),
    Fail { code: &'static str, message: String },
}

pub(super) struct Entry {
    pub def: ServiceDef,
    pub rt: Runtime,
    pub phase: Phase,
    /// Launch number of the current process (events of older launches are ignored).
    pub gen: u64,
    /// Bumped on every phase change; timers of an older epoch are ignored.
    pub epoch: u64,
    pub pid: Option<i32>,
    pub stderr: Option<StderrTail>,
    pub probe_cancel: Option<CancellationToken>,
    pub policy: RestartPolicy,
    pub reason: StartReason,
    pub after_stop: AfterStop,
    /// Restart/start request being executed; recorded as handled when it completes.
    pub active_request: Option<String>,
    /// Do not launch on reconcile (after an unexpected exit without auto_restart).
    pub hold: bool,
    pub deleted: bool,
}

impl Entry {
    fn new(def: ServiceDef, rt: Runtime) -> Self {
        Entry {
            def,
            rt,
            phase: Phase::Idle,
            gen: 0,
            epoch: 0,
            pid: None,
            stderr: None,
            probe_cancel: None,
            policy: RestartPolicy::default(),
            reason: StartReason::Operator,
            after_stop: AfterStop::Idle,
            active_request: None,
            hold: false,
            deleted: false,
        }
    }

    pub fn set_phase(&mut self, p: Phase) {
        self.phase = p;
        self.epoch += 1;
    }
}

pub(super) struct Actor {
    pub ctx: Context,
    pub logs: LogHub,
    pub tx: mpsc::Sender<Msg>,
    pub entries: HashMap<String, Entry>,
    pub next_gen: u64,
    /// Timers that fell due while the agents were held; handled when the next term starts.
    deferred: Vec<Msg>,
}

/// Runs leadership terms until shutdown.
pub(super) async fn run(
    ctx: Context,
    logs: LogHub,
    tx: mpsc::Sender<Msg>,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut leader = ctx.is_leader.clone();
    // Launch numbers keep growing across terms so a late event of an old term never matches.
    let mut next_gen = 1u64;
    // The agents of a term lost while the store was silent, kept for this replica's next term.
    let mut held: Option<Actor> = None;
    loop {
        if !*leader.borrow_and_update() {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                r = leader.changed() => { if r.is_err() { return; } continue; }
                // Not leading: drop requests (they refer to processes this replica does not run).
                Some(msg) = rx.recv() => { reject(msg); continue; }
            }
        }
        let term = ctx.shutdown.child_token();
        let watcher = {
            let term = term.clone();
            let mut leader = leader.clone();
            tokio::spawn(async move {
                while *leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
                term.cancel();
            })
        };
        let mut actor = match held.take() {
            Some(actor) => {
                tracing::info!(replica = %ctx.replica_id, "supervisor running (leader again, with the agents it kept)");
                actor
            }
            None => {
                tracing::info!(replica = %ctx.replica_id, "supervisor running (leader)");
                Actor {
                    ctx: ctx.clone(),
                    logs: logs.clone(),
                    tx: tx.clone(),
                    entries: HashMap::new(),
                    next_gen,
                    deferred: Vec::new(),
                }
            }
        };
        actor.run_term(&mut rx, &term).await;
        watcher.abort();
        if !ctx.shutdown.is_cancelled() && actor.hold(&mut rx, &mut leader).await {
            held = Some(actor);
            continue;
        }
        actor.shutdown_all(&mut rx).await;
        next_gen = actor.next_gen;
        tracing::info!(replica = %ctx.replica_id, "supervisor stopped");
        if ctx.shutdown.is_cancelled() {
            return;
        }
    }
}

fn reject(msg: Msg) {
    if let Msg::Pids(reply) = msg {
        let _ = reply.send(Vec::new());
    }
}

impl Actor {
    async fn run_term(&mut self, rx: &mut mpsc::Receiver<Msg>, term: &CancellationToken) {
        let sampler = tokio::spawn(sample_stats(self.tx.clone(), term.clone()));
        loop {
            let rev = match self.resync().await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "supervisor cannot read services; retrying");
                    if self.idle(rx, term, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            for msg in std::mem::take(&mut self.deferred) {
                self.handle(msg).await;
            }
            let mut watch = match self.ctx.store.watch(keys::SERVICES, rev + 1).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "supervisor cannot watch services; retrying");
                    if self.idle(rx, term, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            let ended = loop {
                tokio::select! {
                    _ = term.cancelled() => break true,
                    Some(msg) = rx.recv() => self.handle(msg).await,
                    batch = watch.next() => match batch {
                        Some(Ok(events)) => {
                            for ev in events {
                                self.on_service_event(ev).await;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "services watch failed; resyncing");
                            break false;
                        }
                        None => break false,
                    },
                }
            };
            if ended {
                break;
            }
        }
        sampler.abort();
    }

    /// Keeps handling messages for `d`; returns true when the term ended meanwhile.
    async fn idle(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        term: &CancellationToken,
        d: Duration,
    ) -> bool {
        let until = tokio::time::sleep(d);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = term.cancelled() => return true,
                _ = &mut until => return false,
                Some(msg) = rx.recv() => self.handle(msg).await,
            }
        }
    }

    /// Reads every service and runtime and reconciles them; returns the read revision.
    async fn resync(&mut self) -> Result<i64> {
        let (kvs, rev) = self.ctx.store.range(keys::SERVICES).await?;
        let mut seen = std::collections::HashSet::new();
        for kv in &kvs {
            let Ok(def) = json::decode::<ServiceDef>(kv) else {
                tracing::warn!(key = %kv.key, "skipping an unreadable service definition");
                continue;
            };
            seen.insert(def.id.clone());
            self.upsert(def).await?;
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.on_deleted(&id);
        }
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            self.reconcile(&id).await;
        }
        Ok(rev)
    }

    async fn upsert(&mut self, def: ServiceDef) -> Result<()> {
        if let Some(e) = self.entries.get_mut(&def.id) {
            e.def = def;
            return Ok(());
        }
        // First sight this term: carry over what the previous leader recorded (restart count,
        // handled requests), but nothing of its processes — they died with it.
        let rt = match json::get::<Runtime>(&self.ctx.store, &keys::runtime(&def.id)).await? {
            Some((mut rt, _)) => {
                rt.pid = None;
                rt.draining = false;
                rt.memory_mb = 0.0;
                rt.cpu_percent = 0.0;
                rt
            }
            None => Runtime::stopped(Utc::now()),
        };
        self.entries.insert(def.id.clone(), Entry::new(def, rt));
        Ok(())
    }

    async fn on_service_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => match json::decode::<ServiceDef>(&kv) {
                Ok(def) => {
                    let id = def.id.clone();
                    if let Err(e) = self.upsert(def).await {
                        tracing::warn!(service_id = %id, error = %e, "cannot load runtime");
                        return;
                    }
                    self.reconcile(&id).await;
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable service definition")
                }
            },
            WatchEvent::Delete { key, .. } => {
                if let Some(id) = key.strip_prefix(keys::SERVICES) {
                    self.on_deleted(id);
                }
            }
        }
    }

    /// The service was deleted: kill what runs (the API stops it first; this is the fallback)
    /// and forget it without writing any runtime key.
    fn on_deleted(&mut self, id: &str) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.deleted = true;
        if let Some(c) = e.probe_cancel.take() {
            c.cancel();
        }
        match e.pid {
            Some(pid) => {
                signal_group(pid, Signal::SIGKILL);
            }
            None => {
                self.entries.remove(id);
            }
        }
    }

    /// Moves one service towards its desired state.
    pub(super) async fn reconcile(&mut self, id: &str) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.deleted {
            return;
        }
        match e.def.desired {
            DesiredState::Running => {
                if let Some(req) = e.def.restart.clone() {
                    let handled = e.rt.handled_restart.as_deref() == Some(req.id.as_str())
                        || e.active_request.as_deref() == Some(req.id.as_str());
                    if !handled {
                        self.begin_request(id, req).await;
                        return;
                    }
                }
                match e.phase {
                    Phase::Idle => {
                        if !e.hold && e.rt.status != ServiceStatus::Error {
                            // It ran under an earlier term (a leader change): launching it
                            // again is the system's doing, so a failure is retried by the
                            // restart policy, as any automatic restart, instead of ending in
                            // `error` (a leftover still holding the port, say).
                            let reason = match e.rt.status {
                                ServiceStatus::Running | ServiceStatus::Starting => {
                                    StartReason::Auto
                                }
                                _ => StartReason::Operator,
                            };
                            self.launch(id, reason).await;
                        }
                    }
                    Phase::Grace | Phase::Draining | Phase::Stopping => {
                        if e.after_stop == AfterStop::Idle {
                            e.after_stop = AfterStop::Start(StartReason::Operator);
                        }
                    }
                    Phase::Starting | Phase::Running | Phase::Backoff => {}
                }
            }
            DesiredState::Stopped => match e.phase {
                Phase::Idle => {
                    if e.rt.status != ServiceStatus::Stopped || e.active_request.is_some() {
                        self.finish_stop(id, "stopped").await;
                    }
                }
                Phase::Backoff => {
                    self.finish_stop(id, "stopped while waiting to restart")
                        .await
                }
                Phase::Starting => {
                    e.after_stop = AfterStop::Idle;
                    self.terminate(id).await;
                }
                Phase::Running | Phase::Grace => self.begin_planned_stop(id, AfterStop::Idle).await,
                Phase::Draining | Phase::Stopping => e.after_stop = AfterStop::Idle,
            },
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Exited { id, gen, status } => self.on_exit(&id, gen, status).await,
            Msg::Ready {
                id,
                gen,
                response_ms,
            } => self.on_ready(&id, gen, response_ms).await,
            Msg::StartTimedOut { id, gen } => self.on_start_timeout(&id, gen).await,
            Msg::ExternalProbe { id, gen, outcome } => {
                self.on_external_probe(&id, gen, outcome).await
            }
            Msg::Timer { id, epoch, kind } => self.on_timer(&id, epoch, kind).await,
            Msg::HealthFailed { id, reason } => self.on_health_failed(&id, reason).await,
            Msg::Pids(reply) => {
                let pids = self
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        matches!(e.phase, Phase::Running | Phase::Grace | Phase::Draining)
                    })
                    .filter_map(|(id, e)| e.pid.map(|p| (id.clone(), p)))
                    .collect();
                let _ = reply.send(pids);
            }
            Msg::Stats(samples) => {
                for (id, mem, cpu) in samples {
                    let Some(e) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    if e.pid.is_none() {
                        continue;
                    }
                    let changed = (e.rt.memory_mb - mem).abs() >= 0.05
                        || (e.rt.cpu_percent - cpu).abs() >= 0.05;
                    e.rt.memory_mb = (mem * 10.0).round() / 10.0;
                    e.rt.cpu_percent = cpu;
                    if changed {
                        self.persist(&id).await;
                    }
                }
            }
        }
    }

    /// Whether this replica still leads, as far as it knows: a replica that resumes after a
    /// freeze (or a long pause) can still be handling an event of its old term. Its runtime and
    /// health writes are skipped once the loss is known here, and fenced in the store
    /// (`Context::term`) before that.
    pub(super) fn leading(&self) -> bool {
        *self.ctx.is_leader.borrow()
    }

    /// Writes `runtime/{id}` unless the service was deleted meanwhile or this replica no longer
    /// leads.
    pub(super) async fn persist(&mut self, id: &str) {
        let leading = self.leading();
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.deleted || !leading {
            return;
        }
        e.rt.updated_at = Utc::now();
        e.rt.leader = self.ctx.replica_id.to_string();
        let value = match json::encode(&e.rt) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(service_id = id, error = %err, "cannot encode runtime");
                return;
            }
        };
        let mut compares = vec![Compare::Exists(keys::service(id))];
        compares.extend(self.ctx.term.fence());
        let txn = Txn {
            compares,
            success: vec![TxnOp::put(keys::runtime(id), value)],
            failure: vec![],
        };
        match self.ctx.store.txn(txn).await {
            Ok(r) if !r.succeeded => {
                tracing::debug!(
                    service_id = id,
                    "runtime not written: deleted, or the term ended"
                )
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(service_id = id, error = %err, "cannot write runtime"),
        }
    }

    /// Schedules a timer for the entry's current epoch.
    pub(super) fn timer(&self, id: &str, after: Duration, kind: TimerKind) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        let (tx, id, epoch) = (self.tx.clone(), id.to_string(), e.epoch);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Msg::Timer { id, epoch, kind }).await;
        });
    }

    /// After a term ended without a shutdown: keeps the agent processes running, rather than
    /// stopping them with the term, while no other replica is seen leading — an etcd restart
    /// or outage longer than the election lease ends the term, and stopping every agent then
    /// dropped every client. Returns true when this replica leads again (the next term goes on
    /// with these processes), false when the agents are to be stopped: another replica leads
    /// (it launches its own), `HOLD_MAX` passed, shutdown, or a process was between phases.
    /// Nothing is written to the store meanwhile; an agent that exits is launched again by the
    /// next term.
    async fn hold(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        leader: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let with_pid = || self.entries.values().filter(|e| e.pid.is_some());
        if with_pid().next().is_none() || with_pid().any(|e| e.phase != Phase::Running) {
            return false;
        }
        tracing::warn!(
            replica = %self.ctx.replica_id,
            count = with_pid().count(),
            "leadership lost; keeping the agent processes running until a leader is known"
        );
        let give_up = tokio::time::sleep(HOLD_MAX);
        tokio::pin!(give_up);
        let mut look = tokio::time::interval(HOLD_LOOK_EVERY);
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return false,
                _ = &mut give_up => {
                    tracing::warn!("no leader within the hold limit; stopping the kept agents");
                    return false;
                }
                r = leader.changed() => {
                    if r.is_err() {
                        return false;
                    }
                    if *leader.borrow_and_update() {
                        return true;
                    }
                }
                _ = look.tick() => {
                    let seen = tokio::time::timeout(
                        HOLD_LOOK_EVERY,
                        crate::election::current_leader(&self.ctx.store),
                    )
                    .await;
                    if let Ok(Ok(Some(other))) = seen {
                        if other != *self.ctx.replica_id {
                            tracing::info!(leader = %other, "another replica leads; stopping the kept agents");
                            return false;
                        }
                    }
                }
                Some(msg) = rx.recv() => match msg {
                    Msg::Exited { id, gen, status } => self.exited_while_held(&id, gen, status),
                    timer @ Msg::Timer { .. } => self.deferred.push(timer),
                    other => reject(other),
                },
            }
        }
    }

    fn exited_while_held(
        &mut self,
        id: &str,
        gen: u64,
        status: std::result::Result<std::process::ExitStatus, String>,
    ) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.gen != gen {
            return;
        }
        let Some(pid) = e.pid.take() else {
            return;
        };
        signal_group(pid, Signal::SIGKILL);
        e.set_phase(Phase::Idle);
        e.rt.pid = None;
        e.rt.last_exit_code = status.as_ref().ok().map(super::process::exit_code);
        e.rt.last_exit_at = Some(Utc::now());
        self.logs.manager(
            id,
            &e.def.name,
            crate::logs::Level::Error,
            "process exited while no replica led; it starts again with the next term",
        );
    }

    /// End of a term (leadership lost or shutdown): SIGTERM every process group this replica
    /// started, SIGKILL what is left after a grace period, and wait for the exits.
    async fn shutdown_all(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        let still_leader = *self.ctx.is_leader.borrow();
        let running: Vec<(String, i32)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| e.pid.map(|p| (id.clone(), p)))
            .collect();
        for e in self.entries.values_mut() {
            if let Some(c) = e.probe_cancel.take() {
                c.cancel();
            }
        }
        if !running.is_empty() {
            tracing::info!(
                count = running.len(),
                "stopping every agent process of this replica"
            );
        }
        for (_, pid) in &running {
            signal_group(*pid, Signal::SIGTERM);
        }
        let grace = self
            .entries
            .values()
            .filter(|e| e.pid.is_some())
            .map(|e| crate::health::secs(e.def.config.stop_grace_period, 10.0))
            .max()
            .unwrap_or_default()
            .min(TERM_END_GRACE);
        let mut killed = false;
        let deadline = Instant::now() + grace;
        let hard_deadline = deadline + Duration::from_secs(3);
        while self.entries.values().any(|e| e.pid.is_some()) {
            let now = Instant::now();
            if !killed && now >= deadline {
                for e in self.entries.values() {
                    if let Some(pid) = e.pid {
                        signal_group(pid, Signal::SIGKILL);
                    }
                }
                killed = true;
            }
            if now >= hard_deadline {
                tracing::error!("agent processes did not exit after SIGKILL");
                break;
            }
            let wait = if killed {
                hard_deadline - now
            } else {
                deadline - now
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(Msg::Exited { id, gen, status })) => {
                    let Some(e) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    if e.gen != gen {
                        continue;
                    }
                    if let Some(pid) = e.pid.take() {
                        signal_group(pid, Signal::SIGKILL);
                    }
                    let code = status.as_ref().ok().map(super::process::exit_code);
                    e.rt.last_exit_code = code;
                    e.rt.last_exit_at = Some(Utc::now());
                    self.logs.manager(
                        &id,
                        &e.def.name,
                        crate::logs::Level::Info,
                        "stopped: control plane is no longer the leader or is shutting down",
                    );
                }
                Ok(Some(other)) => reject(other),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        // Still the leader (plain shutdown): say so in the store; a new leader writes its own.
        if still_leader {
            let ids: Vec<String> = running.into_iter().map(|(id, _)| id).collect();
            for id in ids {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.rt.status = ServiceStatus::Stopped;
                    e.rt.pid = None;
                    e.rt.draining = false;
                    e.rt.last_error = Some("control plane shut down".into());
                }
                self.persist(&id).await;
            }
        }
    }
}

/// Samples the process trees every few seconds (off the actor: /proc reads are blocking).
async fn sample_stats(tx: mpsc::Sender<Msg>, term: CancellationToken) {
    let mut cpu = procstat::CpuMeter::default();
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (reply, rx) = oneshot::channel();
        if tx.send(Msg::Pids(reply)).await.is_err() {
            return;
        }
        let Ok(pids) = rx.await else { return };
        if pids.is_empty() {
            continue;
        }
        let roots: Vec<i32> = pids.iter().map(|(_, p)| *p).collect();
        let Ok(usage) = tokio::task::spawn_blocking(move || procstat::sample(&roots)).await else {
            continue;
        };
        let now = Instant::now();
        let samples: Vec<(String, f64, f64)> = pids
            .iter()
            .filter_map(|(id, pid)| {
                let u = usage.get(pid)?;
                let key = format!("{id}/{pid}");
                Some((id.clone(), u.memory_mb, cpu.percent(&key, u.cpu_ticks, now)))
            })
            .collect();
        let keys: std::collections::HashSet<String> =
            pids.iter().map(|(id, pid)| format!("{id}/{pid}")).collect();
        cpu.retain(|k| keys.contains(k));
        if !samples.is_empty() && tx.send(Msg::Stats(samples)).await.is_err() {
            return;
        }
    }
}

/// Maps a runtime in `error` to the API error it stands for.
pub fn runtime_error(def: &ServiceDef, rt: &Runtime) -> Error {
    match rt.error_code.as_deref() {
        Some("PORT_IN_USE") => Error::PortInUse {
            host: def.host.clone(),
            port: def.port,
            owner: None,
        },
        _ => Error::ServiceStartFailed {
            service_id: def.id.clone(),
            message: rt
                .last_error
                .clone()
                .unwrap_or_else(|| "service failed to start".into()),
            stderr: rt.last_stderr.clone(),
        },
    }
}
