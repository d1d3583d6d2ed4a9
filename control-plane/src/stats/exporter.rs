//! Prometheus gauges of the cluster's state on the control plane's `/metrics`: services by
//! status, live connections and sessions per service (labelled by service name, so bounded by
//! the registered services), the config version proxies are sent, and the sampler's own work.
//! Every replica refreshes them from the store (they describe the cluster, not the replica).

use std::collections::HashSet;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::records;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::ServiceStatus;

/// How often the gauges are refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);

const STATUSES: [ServiceStatus; 5] = [
    ServiceStatus::Stopped,
    ServiceStatus::Starting,
    ServiceStatus::Running,
    ServiceStatus::Stopping,
    ServiceStatus::Error,
];

#[derive(Clone)]
pub struct StatsMetrics {
    services: IntGaugeVec,
    active_connections: IntGaugeVec,
    active_sessions: IntGaugeVec,
    config_version: IntGauge,
    /// Samples the leader wrote.
    pub samples: IntCounter,
    /// Samples that failed (store errors).
    pub sample_failures: IntCounter,
    /// Time to take and write one sample.
    pub sample_duration: Histogram,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> Result<T> {
    r.register(Box::new(m.clone())).map_err(Error::internal)?;
    Ok(m)
}

impl StatsMetrics {
    pub fn register(r: &Registry) -> Result<StatsMetrics> {
        let gauge_vec = |name: &str, help: &str, label: &str| {
            IntGaugeVec::new(Opts::new(name, help), &[label]).map_err(Error::internal)
        };
        Ok(StatsMetrics {
            services: reg(
                r,
                gauge_vec(
                    "myagent_services",
                    "Registered services by status",
                    "status",
                )?,
            )?,
            active_connections: reg(
                r,
                gauge_vec(
                    "myagent_service_active_connections",
                    "Client connections open now, cluster-wide, by service name",
                    "service",
                )?,
            )?,
            active_sessions: reg(
                r,
                gauge_vec(
                    "myagent_service_active_sessions",
                    "Sessions not completed, cluster-wide, by service name",
                    "service",
                )?,
            )?,
            config_version: reg(
                r,
                IntGauge::new(
                    "myagent_config_version",
                    "Config version (store revision) currently published to proxies",
                )
                .map_err(Error::internal)?,
            )?,
            samples: reg(
                r,
                IntCounter::new(
                    "myagent_stats_samples_total",
                    "Time-series samples written by the leader",
                )
                .map_err(Error::internal)?,
            )?,
            sample_failures: reg(
                r,
                IntCounter::new(
                    "myagent_stats_sample_failures_total",
                    "Time-series samples that failed to write",
                )
                .map_err(Error::internal)?,
            )?,
            sample_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "myagent_stats_sample_duration_seconds",
                        "Time to read, compute and write one time-series sample",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )
                .map_err(Error::internal)?,
            )?,
        })
    }

    /// Refreshes the gauges until shutdown.
    pub async fn run(self, ctx: Context) {
        let mut names: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh(&ctx, &mut names).await {
                        tracing::debug!(error = %e, "stats metrics: refresh failed");
                    }
                }
            }
        }
    }

    async fn refresh(&self, ctx: &Context, names: &mut HashSet<String>) -> Result<()> {
        let (services, load) =
            tokio::try_join!(records::services(&ctx.store), records::live_load(ctx))?;
        for st in STATUSES {
            let n = services
                .iter()
                .filter(|(_, rt)| records::status_of(rt.as_ref()) == st)
                .count();
            self.services
                .with_label_values(&[st.as_str()])
                .set(n as i64);
        }
        let mut seen = HashSet::with_capacity(services.len());
        for (def, _) in &services {
            let l = load.get(&def.id).copied().unwrap_or_default();
            self.active_connections
                .with_label_values(&[def.name.as_str()])
                .set(l.active_connections as i64);
            self.active_sessions
                .with_label_values(&[def.name.as_str()])
                .set(l.active_sessions as i64);
            seen.insert(def.name.clone());
        }
        // Deleted services leave the exposition (labels stay bounded by registered services).
        for gone in names.difference(&seen) {
            let _ = self
                .active_connections
                .remove_label_values(&[gone.as_str()]);
            let _ = self.active_sessions.remove_label_values(&[gone.as_str()]);
        }
        *names = seen;
        if let Some(hub) = crate::stream::Hub::for_context(ctx) {
            self.config_version.set(hub.config_version() as i64);
        }
        Ok(())
    }
}
