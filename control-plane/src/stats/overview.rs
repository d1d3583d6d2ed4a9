//! `GET /stats/overview` (seed §1.4). Every figure is computed from the store, so every
//! control-plane replica gives the same answer. Definitions (copied to the README):
//!
//! - `services.total`: registered services. `running` / `stopped` / `error`: services in that
//!   status (never started = `stopped`); `starting` and `stopping` count only in `total`.
//! - `connections.total`: client connections ever opened through any proxy (all-time, summed
//!   over the counters of the services currently stored).
//! - `connections.active`: connections open right now, cluster-wide.
//! - `connections.peak_today`: the most connections open at once, cluster-wide, since 00:00 UTC
//!   (tracked by the leader at every change of the connection records, and from the peaks the
//!   proxies report — see `stats::peaks` — so connections that open and close between two
//!   reports count; at least `active`).
//! - `sessions.total_today`: sessions created since 00:00 UTC.
//! - `sessions.active`: sessions not completed (a connection attached, or idle within their
//!   `session_timeout`), right now.
//! - `sessions.completed_today`: sessions that completed (timed out after their last
//!   connection closed) since 00:00 UTC.
//! - `performance.avg_response_time_ms`: mean time from a client message to the agent's next
//!   message, over the responses of the last minute (the samples of the last 60 s plus what the
//!   proxies' counters gained since the latest sample); 0 when there were none.
//! - `performance.throughput_per_minute`: client→agent messages in that same last minute.
//! - `performance.error_rate`: errors / connections, all-time, cluster-wide (the per-service
//!   `error_rate` summed up); 0 without connections. Errors are what proxies count against a
//!   service: upstream connect failures, agent connections that end without a normal close
//!   (once per client connection attached), and client frames the proxy rejects.
//! - `resources.total_memory_mb` / `total_cpu_percent`: sums over running services of their
//!   process tree's resident memory and CPU (percent of one core).
//!
//! "Today" counts start from the cumulative totals of the last sample before midnight, so
//! nothing that happened is lost or counted twice across the day boundary.

use chrono::{DateTime, Utc};

use super::peaks;
use super::records::{self, Counters};
use super::sampler::{SamplerState, STATE_KEY};
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
    let (services, counters, sessions, load, summary, peak_records) = tokio::try_join!(
        records::services(store),
        records::counter_records(store),
        records::session_totals(store),
        records::live_load(ctx),
        json::get::<Summary>(store, SUMMARY_KEY),
        peaks::records(store),
    )?;
    let summary = summary.map(|(s, _)| s).unwrap_or_default();
    let mut last_minute = last_minute_rows(ctx, &summary, now).await?;
    if sampler_recent(&summary, now) {
        // What the proxies reported since the latest sample, so the figures do not lag one
        // sampling interval behind the counters.
        last_minute.push(unsampled_tail(ctx, &counters).await?);
    }

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
        peak_today: summary
            .peak_today_for(&today)
            .max(peaks::today_peak(&peak_records, &today))
            .max(active_connections),
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

fn sampler_recent(summary: &Summary, now: DateTime<Utc>) -> bool {
    let last = summary.last_sample_ms;
    last > 0 && now.timestamp_millis() - last <= 2 * MINUTE_MS
}

/// The counters' growth since the latest sample, as one row (the sampler's state holds the
/// counters it last saw).
async fn unsampled_tail(ctx: &Context, counters: &[(String, String, Counters)]) -> Result<Row> {
    let state = json::get::<SamplerState>(&ctx.store, STATE_KEY)
        .await?
        .map(|(s, _)| s)
        .unwrap_or_default();
    Ok(tail_row(&state, counters))
}

fn tail_row(state: &SamplerState, counters: &[(String, String, Counters)]) -> Row {
    // Saturating, not `Counters::since`: a sample taken between reading the counters and the
    // state leaves the state ahead of the counters, which is no reset (nothing to add).
    let mut d = Counters::default();
    for (key, _, cur) in counters {
        let prev = state.counters.get(key).copied().unwrap_or_default();
        d.add(&Counters {
            messages_in: cur.messages_in.saturating_sub(prev.messages_in),
            messages_out: cur.messages_out.saturating_sub(prev.messages_out),
            errors: cur.errors.saturating_sub(prev.errors),
            response_time_count: cur
                .response_time_count
                .saturating_sub(prev.response_time_count),
            response_time_sum_ms: if cur.response_time_count > prev.response_time_count {
                (cur.response_time_sum_ms - prev.response_time_sum_ms).max(0.0)
            } else {
                0.0
            },
            ..Counters::default()
        });
    }
    Row {
        t: state.last_sample_ms,
        messages: d.messages_in + d.messages_out,
        messages_in: d.messages_in,
        errors: d.errors,
        rt_sum_ms: d.response_time_sum_ms,
        rt_count: d.response_time_count,
        ..Row::default()
    }
}

/// The all-services raw rows of the 60 s ending now — none if the latest sample is older than
/// two minutes (the sampler is not running, so there is no recent traffic figure).
async fn last_minute_rows(
    ctx: &Context,
    summary: &Summary,
    now: DateTime<Utc>,
) -> Result<Vec<Row>> {
    let last = summary.last_sample_ms;
    if !sampler_recent(summary, now) {
        return Ok(Vec::new());
    }
    // A raw row at `t` holds what happened in the interval before `t`.
    let from = now.timestamp_millis() - MINUTE_MS;
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
    fn the_tail_is_what_the_counters_gained_since_the_sample() {
        let c = |mi: u64, mo: u64, rc: u64, rs: f64| Counters {
            messages_in: mi,
            messages_out: mo,
            response_time_count: rc,
            response_time_sum_ms: rs,
            ..Counters::default()
        };
        let state = SamplerState {
            counters: [("a/r1".to_string(), c(10, 10, 10, 50.0))].into(),
            last_sample_ms: 1_000,
            ..SamplerState::default()
        };
        let now = vec![
            ("a/r1".to_string(), "a".to_string(), c(13, 12, 12, 70.0)),
            // A record the sampler has not seen yet counts whole.
            ("b/r2".to_string(), "b".to_string(), c(1, 1, 1, 4.0)),
        ];
        let t = tail_row(&state, &now);
        assert_eq!(
            (t.t, t.messages_in, t.messages, t.rt_count, t.rt_sum_ms),
            (1_000, 4, 7, 3, 24.0)
        );
        let p = performance(&Counters::default(), &[t]);
        assert_eq!(
            (p.throughput_per_minute, p.avg_response_time_ms),
            (4.0, 8.0)
        );
        // The state read after a newer sample than the counters: nothing to add.
        let behind = vec![("a/r1".to_string(), "a".to_string(), c(9, 10, 9, 45.0))];
        let t = tail_row(&state, &behind);
        assert_eq!(
            (t.messages_in, t.messages, t.rt_count, t.rt_sum_ms),
            (0, 0, 0, 0.0)
        );
    }

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
