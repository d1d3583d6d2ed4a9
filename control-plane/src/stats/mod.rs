//! Statistics: per-service figures, the overview, and the leader-sampled time series with
//! their downsampling and retention (DESIGN §4, §7, §9; seed §1.1, §1.4).
//!
//! Stored under `stats/`: the proxies' counters and completed-session totals (written by the
//! config stream), `stats/summary` (peaks, day baselines) and `stats/ts/...` (time series),
//! both written by the leader's sampler.

pub mod exporter;
pub mod overview;
pub mod peaks;
pub mod query;
pub mod records;
pub mod sampler;
pub mod series;
pub mod service_stats;
pub mod spec;
pub mod summary;
pub mod view;

pub use overview::{overview, Overview};
pub use sampler::SamplerConfig;
pub use service_stats::{per_service, Figures};

/// Starts the leader's sampler and the Prometheus gauges on `tracker` (both end on
/// `ctx.shutdown`).
pub fn spawn(
    ctx: &crate::context::Context,
    cfg: &SamplerConfig,
    tracker: &tokio_util::task::TaskTracker,
) {
    let metrics = match exporter::StatsMetrics::register(&ctx.metrics.registry) {
        Ok(m) => {
            tracker.spawn(m.clone().run(ctx.clone()));
            Some(m)
        }
        Err(e) => {
            tracing::warn!(error = %e, "stats metrics not registered");
            None
        }
    };
    tracker.spawn(sampler::run(ctx.clone(), cfg.clone(), metrics));
}
