//! `GET /stats/overview` (seed §1.4). Every figure is computed from the store, so every
//! control-plane replica gives the same answer. Definitions (copied to the README):
//!
//! - `services.total`: registered services. `running` / `stopped` / `error`: services in that
//!   status (never started = `stopped`); `starting` and `stopping` count only in `total`.
//! - `connections.total`: client connections ever opened through any proxy (all-time, summed
//!   over the counters of the services currently stored).
//! - `connections.active`: connections open right now, cluster-wide.
//! - `connections.peak_today`: the most connections open at once, cluster-wide, since 00:00 UTC
//!   (tracked by the leader at every change of the connection records; at least `active`).
//! - `sessions.total_today`: sessions created since 00:00 UTC.
//! - `sessions.active`: sessions not completed (a connection attached, or idle within their
//!   `session_timeout`), right now.
//! - `sessions.completed_today`: sessions that completed (timed out after their last
//!   connection closed) since 00:00 UTC.
//! - `performance.avg_response_time_ms`: mean time from a client message to the agent's next
//!   message, over the responses of the last minute (the 60 s ending at the latest sample);
//!   0 when there were none.
//! - `performance.throughput_per_minute`: client→agent messages in that same last minute.
//! - `performance.error_rate`: errors / connections, all-time, cluster-wide (the per-service
//!   `error_rate` summed up); 0 without connections. Errors are what proxies report: upstream
//!   failures and routing errors.
//! - `resources.total_memory_mb` / `total_cpu_percent`: sums over running services of their
//!   process tree's resident memory and CPU (percent of one core).
//!
//! "Today" counts start from the cumulative totals of the last sample before midnight, so
//! nothing that happened is lost or counted twice across the day boundary.

use chrono::{DateTime, Utc};

use super::records::{self, Counters};
use super::series::{self, Resolution, Row, ALL_SCOPE};
use super::summary::{day_of, Summary, Totals, SUMMARY_KEY};
use crate::context::Context;
use crate::error::Result;
use crate::model::ServiceStatus;
use crate::store::json;

const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub services: ServiceCounts,
    pub connections: ConnectionCounts,
    pub sessions: SessionCounts,
    pub performance: Performance,
    pub resources: Resources,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    pub total: u64,
    pub running: u64,
    pub stopped: u64,
    pub error: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub total: u64,
    pub active: u64,
    pub peak_today: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub total_today: u64,
    pub active: u64,
    pub completed_today: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Performance {
    pub avg_response_time_ms: f64,
    pub throughput_per_minute: f64,
    pub error_rate: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub total_memory_mb: f64,
    pub total_cpu_percent: f64,
}

pub async fn overview(ctx: &Context, now: DateTime<Utc>) -> Result<Overview> {
    let store = &ctx.store;
    let (services, counters, sessions, load, summary) = tokio::try_join!(
        records::services(store),
        records::counter_records(store),
        records::session_totals(store),
        records::live_load(ctx),
        json::get::<Summary>(store, SUMMARY_KEY),
    )?;
    let summary = summary.map(|(s, _)| s).unwrap_or_default();
    let last_minute = last_minute_rows(ctx, &summary, now).await?;

    let mut out = Overview::default();
    for (_, rt) in &services {
        out.services.total += 1;
        match records::status_of(rt.as_ref()) {
            ServiceStatus::Running => out.services.running += 1,
            ServiceStatus::Stopped => out.services.stopped += 1,
            ServiceStatus::Error => out.services.error += 1,
            ServiceStatus::Starting | ServiceStatus::Stopping => {}
        }
        let (mem, cpu) = records::resources_of(rt.as_ref());
        out.resources.total_memory_mb += mem;
        out.resources.total_cpu_percent += cpu;
    }

    let mut all = Counters::default();
    for (_, _, c) in &counters {
        all.add(c);
    }
    let totals = Totals::from_records(counters.iter().map(|(_, _, c)| c), sessions.values());
    let today = day_of(now);
    let since_midnight = totals.since(&summary.baseline_for(&today));
    let active_connections: u64 = load.values().map(|l| l.active_connections).sum();

    out.connections = ConnectionCounts {
        total: all.connections_opened,
        active: active_connections,
        peak_today: summary.peak_today_for(&today).max(active_connections),
    };
    out.sessions = SessionCounts {
        total_today: since_midnight.sessions_created,
        active: load.values().map(|l| l.active_sessions).sum(),
        completed_today: since_midnight.sessions_completed,
    };
    out.performance = performance(&all, &last_minute);
    Ok(out)
}

fn performance(all: &Counters, last_minute: &[Row]) -> Performance {
    let mut window = Row::default();
    for r in last_minute {
        window.fold(r);
    }
    Performance {
        avg_response_time_ms: if window.rt_count > 0 {
            window.rt_sum_ms / window.rt_count as f64
        } else {
            0.0
        },
        throughput_per_minute: window.messages_in as f64,
        error_rate: ratio(all.errors, all.connections_opened),
    }
}

pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// The all-services raw rows of the 60 s ending at the latest sample — none if that sample is
/// older than two minutes (the sampler is not running, so there is no recent traffic figure).
async fn last_minute_rows(
    ctx: &Context,
    summary: &Summary,
    now: DateTime<Utc>,
) -> Result<Vec<Row>> {
    let last = summary.last_sample_ms;
    if last <= 0 || now.timestamp_millis() - last > 2 * MINUTE_MS {
        return Ok(Vec::new());
    }
    let from = last - MINUTE_MS;
    let res = Resolution::Raw;
    let mut starts = vec![res.bucket_start(from)];
    if res.bucket_start(last) != starts[0] {
        starts.push(res.bucket_start(last));
    }
    let mut rows = Vec::new();
    for start in starts {
        if let Some((bucket, _)) =
            json::get::<Vec<Row>>(&ctx.store, &series::bucket_key(res, ALL_SCOPE, start)).await?
        {
            rows.extend(bucket.into_iter().filter(|r| r.t > from && r.t <= last));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn performance_over_the_window() {
        let all = Counters {
            connections_opened: 50,
            errors: 1,
            ..Counters::default()
        };
        let row = |mi: u64, rc: u64, rs: f64| Row {
            samples: 1,
            messages_in: mi,
            rt_count: rc,
            rt_sum_ms: rs,
            ..Row::default()
        };
        let p = performance(
            &all,
            &[row(10, 10, 100.0), row(5, 5, 200.0), row(0, 0, 0.0)],
        );
        assert_eq!(p.throughput_per_minute, 15.0);
        assert_eq!(p.avg_response_time_ms, 20.0);
        assert_eq!(p.error_rate, 0.02);
        assert_eq!(
            performance(&Counters::default(), &[]),
            Performance::default()
        );
    }
}
