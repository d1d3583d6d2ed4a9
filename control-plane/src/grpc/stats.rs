//! `myagent.v1.Stats`: the overview and time series (seed §1.4), thin handlers over
//! `crate::stats`.

use chrono::Utc;
use myagent_proto::v1 as pb;
use pb::stats_server::Stats;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::error::Result;
use crate::stats::{self, overview, series, spec, SamplerConfig};

pub struct StatsApi {
    ctx: Context,
    /// Shortest interval a query may ask for (one sample).
    min_interval_secs: u64,
}

impl StatsApi {
    pub fn new(ctx: Context, sampler: &SamplerConfig) -> Self {
        StatsApi {
            ctx,
            min_interval_secs: sampler.min_query_interval_secs(),
        }
    }

    async fn timeseries(&self, r: pb::GetTimeseriesRequest) -> Result<pb::Timeseries> {
        let query = spec::validate(&r.metric, &r.period, &r.interval, self.min_interval_secs)?;
        let scope = if r.service.trim().is_empty() {
            series::ALL_SCOPE.to_string()
        } else {
            crate::registry::resolve(&self.ctx, &r.service).await?.0.id
        };
        let points = stats::query::timeseries(&self.ctx, &query, &scope, Utc::now()).await?;
        Ok(pb::Timeseries {
            metric: query.metric.as_str().to_string(),
            period: query.period,
            interval: query.interval,
            data: points
                .into_iter()
                .map(|p| pb::DataPoint {
                    timestamp: Some(prost_types::Timestamp {
                        seconds: p.timestamp_secs,
                        nanos: 0,
                    }),
                    value: p.value,
                })
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl Stats for StatsApi {
    async fn get_overview(
        &self,
        _: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::Overview>, Status> {
        let o = overview::overview(&self.ctx, Utc::now()).await?;
        Ok(Response::new(o.into()))
    }

    async fn get_timeseries(
        &self,
        req: Request<pb::GetTimeseriesRequest>,
    ) -> Result<Response<pb::Timeseries>, Status> {
        Ok(Response::new(self.timeseries(req.into_inner()).await?))
    }
}

impl From<overview::Overview> for pb::Overview {
    fn from(o: overview::Overview) -> Self {
        pb::Overview {
            services: Some(pb::ServiceCounts {
                total: o.services.total,
                running: o.services.running,
                stopped: o.services.stopped,
                error: o.services.error,
            }),
            connections: Some(pb::ConnectionCounts {
                total: o.connections.total,
                active: o.connections.active,
                peak_today: o.connections.peak_today,
            }),
            sessions: Some(pb::SessionCounts {
                total_today: o.sessions.total_today,
                active: o.sessions.active,
                completed_today: o.sessions.completed_today,
            }),
            performance: Some(pb::Performance {
                avg_response_time_ms: o.performance.avg_response_time_ms,
                throughput_per_minute: o.performance.throughput_per_minute,
                error_rate: o.performance.error_rate,
            }),
            resources: Some(pb::Resources {
                total_memory_mb: o.resources.total_memory_mb,
                total_cpu_percent: o.resources.total_cpu_percent,
            }),
        }
    }
}
