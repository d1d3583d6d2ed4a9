//! The config-stream client (STYLE 8, 9): one task owns the gRPC stream to a control plane,
//! validates and publishes config snapshots, ACKs/NACKs them, applies load and session updates,
//! runs commands, and sends batched reports. It reconnects with backoff, trying each URL in turn.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::ws::Utf8Bytes;
use myagent_proto::v1 as pb;
use pb::proxy_control_client::ProxyControlClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::events;
use crate::snapshot::Snapshot;
use crate::state::{unix_ms, ConnCommand, Shared};

/// Minimum spacing of reports sent ahead of the tick for new sessions: a connect storm costs at
/// most one extra report per gap.
const EARLY_REPORT_GAP: Duration = Duration::from_millis(20);
/// HTTP/2 pings on the config stream's connection, and how long an answer may take.
const CONTROL_PING_EVERY: Duration = Duration::from_secs(4);
const CONTROL_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = ProxyControlClient<InterceptedService<Channel, Auth>>;

pub fn client(channel: Channel, token: Option<String>) -> Client {
    let value = token.and_then(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>().ok());
    ProxyControlClient::with_interceptor(channel, Auth(value))
}

/// TLS towards the control plane (https:// URLs).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn build(&self) -> Result<Option<ClientTlsConfig>> {
        if self.ca.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| Error::Tls(format!("{}: {e}", p.display())));
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        Ok(Some(tls))
    }
}

pub struct ControlClient {
    pub shared: Arc<Shared>,
    pub urls: Vec<String>,
    pub tls: Option<ClientTlsConfig>,
    pub config_tx: watch::Sender<Arc<Snapshot>>,
    pub cache_path: PathBuf,
    pub address: String,
}

enum End {
    /// Stop: shutdown requested.
    Shutdown,
    /// The session worked (config received) and then ended: reconnect soon.
    Ended(String),
    /// Could not get a working session.
    Failed { detail: String, fatal: bool },
}

impl ControlClient {
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::spawn(save_cache(
            self.config_tx.subscribe(),
            self.cache_path.clone(),
            shutdown.clone(),
        ));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut i = 0usize;
        loop {
            let url = self.urls[i % self.urls.len()].clone();
            i += 1;
            let end = self.session(&url, &shutdown).await;
            self.shared.metrics.control_plane_connected.set(0);
            *self
                .shared
                .control_channel
                .write()
                .unwrap_or_else(|p| p.into_inner()) = None;
            let delay = match end {
                End::Shutdown => return,
                End::Ended(why) => {
                    tracing::warn!(url, reason = %why, "config stream ended; reconnecting");
                    backoff.reset();
                    backoff.next_delay()
                }
                End::Failed { detail, fatal } => {
                    let d = if fatal {
                        // Rejected credentials or arguments will not fix themselves quickly.
                        Duration::from_secs(10)
                    } else {
                        backoff.next_delay()
                    };
                    tracing::warn!(url, error = %detail, retry_in_ms = d.as_millis() as u64, "control plane unavailable; serving from the last good config");
                    d
                }
            };
            // Keep metrics flowing while disconnected (events are dropped; a reconnect resyncs).
            let deadline = tokio::time::Instant::now() + delay;
            loop {
                let step = self
                    .shared
                    .settings
                    .report_interval
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(step) => {}
                }
                let _ = collect_report(&self.shared);
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    async fn session(&self, url: &str, shutdown: &CancellationToken) -> End {
        let fail = |detail: String| End::Failed {
            detail,
            fatal: false,
        };
        // A replica that stops answering (its host gone, no FIN or RST) is given up within
        // `CONTROL_PING_EVERY + CONTROL_PING_TIMEOUT`, inside the crash wait (10 s) of connections
        // whose agent that replica's death took along: the new leader's config reaches them.
        let mut ep = match Endpoint::from_shared(url.to_string()) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(CONTROL_PING_EVERY)
                .keep_alive_timeout(CONTROL_PING_TIMEOUT),
            Err(e) => {
                return End::Failed {
                    detail: format!("bad control-plane URL {url}: {e}"),
                    fatal: true,
                }
            }
        };
        if let Some(tls) = &self.tls {
            ep = match ep.tls_config(tls.clone()) {
                Ok(e) => e,
                Err(e) => {
                    return End::Failed {
                        detail: format!("TLS: {e}"),
                        fatal: true,
                    }
                }
            };
        }
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            r = ep.connect() => match r { Ok(c) => c, Err(e) => return fail(format!("connect: {e}")) },
        };
        let mut grpc = client(channel.clone(), self.shared.token.clone());
        let (tx, rx) = mpsc::channel::<pb::ProxyMessage>(1024);
        let hello = pb::Hello {
            node_id: self.shared.settings.node_id.clone(),
            address: self.address.clone(),
            applied_version: self.config_tx.borrow().version,
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let _ = tx.try_send(pb::ProxyMessage {
            kind: Some(pb::proxy_message::Kind::Hello(hello)),
        });
        // Resync: the control plane learns every live connection of this node again, and
        // that any other it holds as active has closed.
        let _ = tx.try_send(pb::ProxyMessage {
            kind: Some(pb::proxy_message::Kind::Report(resync_report(&self.shared))),
        });
        let mut inbound = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            r = grpc.stream(ReceiverStream::new(rx)) => match r {
                Ok(resp) => resp.into_inner(),
                Err(status) => return End::Failed { fatal: is_fatal(&status), detail: status_text(&status) },
            },
        };
        tracing::info!(url, node_id = %self.shared.settings.node_id, "config stream open");
        self.shared.metrics.control_plane_connected.set(1);
        *self
            .shared
            .control_channel
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(channel);
        let mut got_message = false;
        let mut tick = tokio::time::interval(self.shared.settings.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_report = tokio::time::Instant::now();
        // Set when a new session waits to be reported ahead of the tick.
        let mut early: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Last report, so the cluster view loses our connections promptly.
                    if let Some(r) = collect_report(&self.shared) {
                        let _ = tx.try_send(pb::ProxyMessage { kind: Some(pb::proxy_message::Kind::Report(r)) });
                    }
                    return End::Shutdown;
                }
                m = inbound.message() => match m {
                    Ok(Some(msg)) => {
                        got_message = true;
                        self.on_message(msg, &tx).await;
                    }
                    Ok(None) => return if got_message { End::Ended("end of stream".into()) } else { fail("stream closed before any message".into()) },
                    Err(status) => {
                        let detail = status_text(&status);
                        return if got_message && !is_fatal(&status) { End::Ended(detail) } else { End::Failed { fatal: is_fatal(&status), detail } };
                    }
                },
                _ = self.shared.report_soon.notified(), if early.is_none() => {
                    early = Some(last_report + EARLY_REPORT_GAP);
                }
                _ = tokio::time::sleep_until(early.unwrap_or(last_report)), if early.is_some() => {
                    early = None;
                    last_report = tokio::time::Instant::now();
                    self.send_report(&tx);
                }
                _ = tick.tick() => {
                    early = None;
                    last_report = tokio::time::Instant::now();
                    self.send_report(&tx);
                }
            }
        }
    }

    fn send_report(&self, tx: &mpsc::Sender<pb::ProxyMessage>) {
        if let Some(r) = collect_report(&self.shared) {
            match tx.try_send(pb::ProxyMessage {
                kind: Some(pb::proxy_message::Kind::Report(r)),
            }) {
                Ok(()) => self.shared.load.reported(),
                Err(_) => tracing::warn!("report dropped: config stream is backed up"),
            }
        }
    }

    async fn on_message(&self, msg: pb::ControlMessage, tx: &mpsc::Sender<pb::ProxyMessage>) {
        use pb::control_message::Kind;
        let Some(kind) = msg.kind else { return };
        match kind {
            Kind::Config(push) => self.on_config(push, tx).await,
            Kind::Load(l) => self.shared.load.apply_update(&l),
            Kind::Sessions(s) => self.shared.sessions.apply(&s),
            Kind::Command(c) => {
                let result = run_command(&self.shared, c);
                let _ = tx
                    .send(pb::ProxyMessage {
                        kind: Some(pb::proxy_message::Kind::CommandResult(result)),
                    })
                    .await;
            }
        }
    }

    async fn on_config(&self, push: pb::ConfigPush, tx: &mpsc::Sender<pb::ProxyMessage>) {
        let current = self.config_tx.borrow().clone();
        let reply = match current.apply(&push) {
            Ok(next) => {
                let next = Arc::new(next);
                self.config_tx.send_replace(next.clone());
                self.shared.metrics.config_version.set(next.version as i64);
                tracing::info!(
                    version = next.version,
                    full = push.full,
                    services = next.services.len(),
                    rules = next.all_rules.len(),
                    "config applied"
                );
                pb::proxy_message::Kind::Ack(pb::Ack {
                    version: push.version,
                    nonce: push.nonce,
                })
            }
            Err(detail) => {
                self.shared.metrics.config_nacks.inc();
                tracing::warn!(version = push.version, error = %detail, "config rejected; keeping version {}", current.version);
                pb::proxy_message::Kind::Nack(pb::Nack {
                    version: push.version,
                    nonce: push.nonce,
                    error_detail: detail,
                })
            }
        };
        let _ = tx.send(pb::ProxyMessage { kind: Some(reply) }).await;
    }
}

/// Writes each applied config to the disk cache, one write at a time and always the latest: a
/// burst of pushes costs one or two writes, not one each.
async fn save_cache(
    mut applied: watch::Receiver<Arc<Snapshot>>,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() {
                return;
            },
        }
        let snap = applied.borrow_and_update().clone();
        let path = path.clone();
        match tokio::task::spawn_blocking(move || crate::cache::save(&path, &snap)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write config cache"),
            Err(e) => tracing::warn!(error = %e, "config cache writer failed"),
        }
    }
}

fn is_fatal(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::Unimplemented
    )
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Executes a ProxyCommand against the live connections of this proxy.
pub fn run_command(shared: &Shared, c: pb::ProxyCommand) -> pb::CommandResult {
    use pb::proxy_command::Kind;
    let mut res = pb::CommandResult {
        command_id: c.command_id.clone(),
        ok: true,
        delivered: 0,
        error: String::new(),
    };
    let conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
    match c.kind {
        Some(Kind::Disconnect(d)) => match conns.get(&d.connection_id) {
            Some(entry) => {
                let cmd = ConnCommand::Disconnect {
                    reason: d.reason,
                    notify: d.notify_client,
                };
                if entry.cmd.send(cmd) {
                    res.delivered = 1;
                } else {
                    res.ok = false;
                    res.error = "connection is busy or closing".into();
                }
            }
            None => {
                res.ok = false;
                res.error = format!(
                    "CONNECTION_NOT_FOUND: connection '{}' is not on this proxy",
                    d.connection_id
                );
            }
        },
        Some(Kind::Notify(n)) => {
            let ev = Utf8Bytes::from(events::management_notification(
                &n.r#type,
                &n.message,
                &n.severity,
                n.countdown_seconds,
            ));
            for entry in conns.values() {
                if !n.service_id.is_empty() && entry.stats.route().service_id != n.service_id {
                    continue;
                }
                if entry.cmd.send(ConnCommand::Notify(ev.clone())) {
                    res.delivered += 1;
                }
            }
        }
        None => {
            res.ok = false;
            res.error = "empty command".into();
        }
    }
    res
}

// Reports: per-connection atomics turned into events and per-service counter deltas.

/// A report listing every live connection as OPENED (sent first on each new stream).
pub fn resync_report(shared: &Shared) -> pb::Report {
    let mut r = pb::Report {
        live_set: true,
        ..Default::default()
    };
    shared.for_each_live(|s| {
        let conn = s.to_proto(&shared.settings.node_id, "active");
        r.sessions.push(pb::SessionEvent {
            kind: pb::session_event::Kind::Attached as i32,
            session_id: conn.session_id.clone(),
            service_id: conn.target_service_id.clone(),
            at: conn.connected_at,
        });
        r.connections.push(pb::ConnectionEvent {
            kind: pb::connection_event::Kind::Opened as i32,
            connection: Some(conn),
        });
    });
    r
}

/// Events and counter deltas since the previous report.
pub fn collect_report(shared: &Shared) -> Option<pb::Report> {
    let pending = std::mem::take(&mut *shared.pending.lock().unwrap_or_else(|p| p.into_inner()));
    let mut per_service: HashMap<String, pb::ServiceCounters> = HashMap::new();
    let mut totals = [0u64; 6];
    let mut fold = |service_id: String, d: [u64; 6], totals: &mut [u64; 6]| {
        for (t, x) in totals.iter_mut().zip(d) {
            *t += x;
        }
        let c = per_service
            .entry(service_id.clone())
            .or_insert_with(|| pb::ServiceCounters {
                service_id,
                ..Default::default()
            });
        c.messages_in += d[0];
        c.messages_out += d[1];
        c.bytes_in += d[2];
        c.bytes_out += d[3];
        c.response_time_count += d[4];
        c.response_time_sum_ms += d[5] as f64 / 1000.0;
    };
    for s in &pending.closed {
        fold(s.route().service_id, s.take_delta(), &mut totals);
    }
    let mut updated = Vec::new();
    let now_ms = unix_ms();
    shared.for_each_live(|s| {
        let d = s.take_delta();
        if d.iter().any(|x| *x > 0) {
            // Traffic since the last report: active as of now (the relay itself records
            // activity only at its idle-check ticks).
            s.last_activity_ms
                .fetch_max(now_ms, std::sync::atomic::Ordering::Relaxed);
            fold(s.route().service_id, d, &mut totals);
            updated.push(pb::ConnectionEvent {
                kind: pb::connection_event::Kind::Updated as i32,
                connection: Some(s.to_proto(&shared.settings.node_id, "active")),
            });
        }
    });
    let errors = std::mem::take(
        &mut *shared
            .service_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    for (id, (errs, passive)) in errors {
        let c = per_service
            .entry(id.clone())
            .or_insert_with(|| pb::ServiceCounters {
                service_id: id,
                ..Default::default()
            });
        c.errors += errs;
        c.passive_failures += passive;
    }
    let m = &shared.metrics;
    m.messages
        .with_label_values(&["client_to_agent"])
        .inc_by(totals[0]);
    m.messages
        .with_label_values(&["agent_to_client"])
        .inc_by(totals[1]);
    m.bytes
        .with_label_values(&["client_to_agent"])
        .inc_by(totals[2]);
    m.bytes
        .with_label_values(&["agent_to_client"])
        .inc_by(totals[3]);
    if pending.dropped > 0 {
        tracing::warn!(
            dropped = pending.dropped,
            "report events dropped (buffer full)"
        );
    }
    // Peaks since the last report: the control plane cannot see connections that opened
    // and closed in between side by side. Sent for services with traffic in this report
    // or whose peak exceeds what is open now (a plain open connection needs no figure).
    let peaks = shared.load.take_peaks();
    for (id, (peak, live)) in peaks.services {
        if let Some(c) = per_service.get_mut(&id) {
            c.peak_connections = peak;
        } else if peak > live {
            per_service.insert(
                id.clone(),
                pb::ServiceCounters {
                    service_id: id,
                    peak_connections: peak,
                    ..Default::default()
                },
            );
        }
    }
    let mut report = pb::Report {
        connections: pending.connections,
        sessions: pending.sessions,
        counters: per_service.into_values().collect(),
        peak_connections: peaks.node,
        live_set: false,
    };
    report.connections.extend(updated);
    if report.connections.is_empty() && report.sessions.is_empty() && report.counters.is_empty() {
        None
    } else {
        Some(report)
    }
}
