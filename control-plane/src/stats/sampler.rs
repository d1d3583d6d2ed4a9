//! The leader's time-series sampler. Every `interval` (aligned to wall-clock multiples of it, so
//! rows line up across leaders) it reads the counters, the live load and the runtime records,
//! turns cumulative counters into per-sample deltas, appends one row per service and one for
//! all services, refreshes the minute and hour rollups of the current minute and hour, prunes
//! buckets past their retention, and writes it all — plus its own state and the summary —
//! in one transaction (split only when etcd's per-transaction operation limit requires).
//!
//! Everything it needs to continue is in the store (`stats/ts/state`, the buckets, the
//! summary), so a new leader carries on where the old one stopped: the counter deltas of the
//! samples it missed land in its first sample.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::exporter::StatsMetrics;
use super::peaks;
use super::records::{self, Counters, Load};
use super::series::{self, Resolution, Row, ALL_SCOPE};
use super::summary::{day_of, Summary, Totals, SUMMARY_KEY};
use crate::context::Context;
use crate::error::Result;
use crate::store::{json, Revision, Txn, TxnOp};

/// Sampler state key.
pub const STATE_KEY: &str = "stats/ts/state";
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// Peaks that rose between samples are written at most this often.
const PEAK_FLUSH: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Time between samples (the finest time-series resolution).
    pub interval: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: Duration::from_secs(10),
        }
    }
}

impl SamplerConfig {
    /// Shortest interval a time-series query may ask for: one sample, in whole seconds.
    pub fn min_query_interval_secs(&self) -> u64 {
        self.interval.as_millis().div_ceil(1000).max(1) as u64
    }

    fn interval_ms(&self) -> i64 {
        (self.interval.as_millis() as i64).max(1)
    }
}

/// `stats/ts/state`: what the sampler needs to compute the next deltas and to prune.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerState {
    /// Cumulative counters at the last sample, per counter record (`{service_id}/{replica}`).
    pub counters: BTreeMap<String, Counters>,
    /// Per scope, per resolution name: oldest and newest bucket start written.
    pub index: BTreeMap<String, BTreeMap<String, (i64, i64)>>,
    pub last_sample_ms: i64,
}

/// One bucket held in memory while the sampler writes to it.
#[derive(Debug, Clone)]
struct Bucket {
    start: i64,
    rows: Vec<Row>,
    dirty: bool,
}

/// The leader's in-memory view, a mirror of what it wrote.
struct Sampler {
    state: SamplerState,
    summary: Summary,
    buckets: HashMap<(Resolution, String), Bucket>,
}

/// Runs for the life of the control plane; samples only while this replica leads.
pub async fn run(ctx: Context, cfg: SamplerConfig, metrics: Option<StatsMetrics>) {
    let mut leader = ctx.is_leader.clone();
    loop {
        if *leader.borrow_and_update() {
            info!(interval = ?cfg.interval, "stats sampler: leading, sampling");
            lead(&ctx, &cfg, &mut leader, metrics.as_ref()).await;
            info!("stats sampler: stopped sampling");
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = leader.changed() => {
                if r.is_err() {
                    // Leadership is settled for good (no election): wait for shutdown.
                    ctx.shutdown.cancelled().await;
                    return;
                }
            }
        }
    }
}

/// Samples until leadership is lost or shutdown; returns then.
async fn lead(
    ctx: &Context,
    cfg: &SamplerConfig,
    leader: &mut watch::Receiver<bool>,
    metrics: Option<&StatsMetrics>,
) {
    let mut sampler: Option<Sampler> = None;
    let step = cfg.interval_ms();
    let mut next = next_tick(Utc::now().timestamp_millis(), step);
    // Every change of the store the config-stream hub applies may move the live load; peaks
    // are taken there too, so a burst shorter than the sampling interval is not missed.
    let hub = crate::stream::Hub::for_context(ctx);
    let mut changes = hub.as_ref().map(|h| h.inner.revision.subscribe());
    let mut flush_peaks_at: Option<tokio::time::Instant> = None;
    // Without an election (one replica on the embedded store) the sender is gone and the
    // replica leads for good.
    let mut election_open = true;
    loop {
        let wait = Duration::from_millis((next - Utc::now().timestamp_millis()).max(0) as u64);
        let flush_at = flush_peaks_at.unwrap_or_else(|| tokio::time::Instant::now() + wait);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = leader.changed(), if election_open => match r {
                Err(_) => election_open = false,
                Ok(()) => {
                    if !*leader.borrow_and_update() {
                        return;
                    }
                }
            },
            _ = store_changed(&mut changes) => {
                if let (Some(s), Some(h)) = (sampler.as_mut(), hub.as_ref()) {
                    let load = h.cluster_load();
                    let rose = s.summary.observe(
                        &day_of(Utc::now()),
                        load.iter().map(|(id, l)| (id.as_str(), l.active_connections)),
                    );
                    if rose && flush_peaks_at.is_none() {
                        flush_peaks_at = Some(tokio::time::Instant::now() + PEAK_FLUSH);
                    }
                }
            }
            _ = tokio::time::sleep_until(flush_at), if flush_peaks_at.is_some() => {
                flush_peaks_at = None;
                if let Some(s) = sampler.as_ref() {
                    let written = match json::encode(&s.summary) {
                        Ok(v) => ctx.store.put(SUMMARY_KEY, v, None).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        warn!(error = %e, "stats sampler: cannot write peaks; reloading state");
                        sampler = None;
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                let s = match sampler.take() {
                    Some(s) => s,
                    None => match Sampler::load(ctx).await {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "stats sampler: cannot load state; retrying next tick");
                            next = next_tick(Utc::now().timestamp_millis(), step);
                            continue;
                        }
                    },
                };
                let mut s = s;
                let started = std::time::Instant::now();
                match s.sample(ctx, next).await {
                    Ok(ops) => {
                        debug!(at = next, ops, took_ms = started.elapsed().as_millis() as u64, "stats sample written");
                        if let Some(m) = metrics {
                            m.samples.inc();
                            m.sample_duration.observe(started.elapsed().as_secs_f64());
                        }
                        // The sample wrote the summary, peaks included.
                        flush_peaks_at = None;
                        sampler = Some(s);
                    }
                    // The in-memory view may now differ from the store: reload it next tick.
                    Err(e) => {
                        warn!(error = %e, "stats sampler: sample failed; reloading state");
                        if let Some(m) = metrics {
                            m.sample_failures.inc();
                        }
                    }
                }
                next = next_tick(Utc::now().timestamp_millis().max(next), step);
            }
        }
    }
}

/// Resolves when the hub applied another store revision; never, without a hub.
async fn store_changed(rx: &mut Option<watch::Receiver<Revision>>) {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return;
        }
        // The hub stopped: nothing more will change.
        *rx = None;
    }
    std::future::pending::<()>().await
}

/// The first multiple of `step` strictly after `now`.
pub fn next_tick(now_ms: i64, step: i64) -> i64 {
    (now_ms.div_euclid(step) + 1) * step
}

impl Sampler {
    async fn load(ctx: &Context) -> Result<Sampler> {
        let state = json::get::<SamplerState>(&ctx.store, STATE_KEY)
            .await?
            .map(|(s, _)| s);
        let summary = json::get::<Summary>(&ctx.store, SUMMARY_KEY)
            .await?
            .map(|(s, _)| s);
        Ok(Sampler {
            state: state.unwrap_or_default(),
            summary: summary.unwrap_or_default(),
            buckets: HashMap::new(),
        })
    }

    /// Takes one sample at `t_ms` and writes it; returns the number of store operations.
    async fn sample(&mut self, ctx: &Context, t_ms: i64) -> Result<usize> {
        let store = &ctx.store;
        let (services, counters, sessions, load, peak_records) = tokio::try_join!(
            records::services(store),
            records::counter_records(store),
            records::session_totals(store),
            records::live_load(ctx),
            peaks::stored(store),
        )?;

        // Counter deltas per service since the last sample.
        let mut deltas: HashMap<String, Counters> = HashMap::new();
        for (key, service, cur) in &counters {
            let prev = self.state.counters.get(key).copied().unwrap_or_default();
            deltas
                .entry(service.clone())
                .or_default()
                .add(&cur.since(&prev));
        }
        self.state.counters = counters.iter().map(|(k, _, c)| (k.clone(), *c)).collect();

        let mut rows: Vec<(String, Row)> = Vec::with_capacity(services.len() + 1);
        let mut all = Row {
            t: t_ms,
            samples: 1,
            ..Row::default()
        };
        for d in deltas.values() {
            add_counters(&mut all, d);
        }
        for l in load.values() {
            all.connections += l.active_connections as f64;
            all.sessions += l.active_sessions as f64;
        }
        for (def, rt) in &services {
            let (mem, cpu) = records::resources_of(rt.as_ref());
            let l = load.get(&def.id).copied().unwrap_or_default();
            let mut row = gauge_row(t_ms, &l, mem, cpu);
            if let Some(d) = deltas.get(&def.id) {
                add_counters(&mut row, d);
            }
            all.memory_mb += mem;
            all.cpu_percent += cpu;
            rows.push((def.id.clone(), row));
        }
        rows.push((ALL_SCOPE.to_string(), all));

        self.load_buckets(ctx, &rows, t_ms).await?;
        let mut ops: Vec<TxnOp> = Vec::new();
        for (scope, row) in rows {
            self.record(&scope, row, t_ms, &mut ops);
        }

        // History of deleted services goes with them.
        let live: HashSet<&str> = services
            .iter()
            .map(|(d, _)| d.id.as_str())
            .chain([ALL_SCOPE])
            .collect();
        let gone: Vec<String> = self
            .state
            .index
            .keys()
            .filter(|s| !live.contains(s.as_str()))
            .cloned()
            .collect();
        for scope in &gone {
            for res in Resolution::ALL {
                store.delete_prefix(&series::prefix(res, scope)).await?;
            }
            self.state.index.remove(scope);
            self.buckets.retain(|(_, s), _| s != scope);
        }

        let now = Utc
            .timestamp_millis_opt(t_ms)
            .single()
            .unwrap_or_else(Utc::now);
        self.summary.observe(
            &day_of(now),
            load.iter()
                .map(|(id, l)| (id.as_str(), l.active_connections)),
        );
        let today = day_of(now);
        let folded: Vec<peaks::PeakRecord> =
            peak_records.iter().map(|(r, _, _)| r.clone()).collect();
        self.summary.fold_peaks(&today, &folded);
        // Past days' records are in the summary now; they go once it is written.
        let stale: Vec<(String, i64)> = peak_records
            .into_iter()
            .filter(|(r, _, _)| r.day < today)
            .map(|(_, k, rev)| (k, rev))
            .collect();
        self.summary.retain_services(|id| live.contains(id));
        self.summary.last_totals =
            Totals::from_records(counters.iter().map(|(_, _, c)| c), sessions.values());
        self.summary.last_sample_ms = t_ms;
        self.state.last_sample_ms = t_ms;
        ops.push(TxnOp::put(STATE_KEY, json::encode(&self.state)?));
        ops.push(TxnOp::put(SUMMARY_KEY, json::encode(&self.summary)?));

        let n = ops.len();
        // The state and summary go last, so a failed write leaves the old state in place.
        for chunk in ops.chunks(MAX_TXN_OPS) {
            store
                .txn(Txn {
                    compares: vec![],
                    success: chunk.to_vec(),
                    failure: vec![],
                })
                .await?;
        }
        for b in self.buckets.values_mut() {
            b.dirty = false;
        }
        peaks::delete_stale(store, &stale).await;
        Ok(n)
    }

    /// Makes sure the current bucket of every resolution of every scope is in memory, reading
    /// the ones this leader has not seen yet (concurrently).
    async fn load_buckets(
        &mut self,
        ctx: &Context,
        rows: &[(String, Row)],
        t_ms: i64,
    ) -> Result<()> {
        let mut missing = Vec::new();
        for (scope, _) in rows {
            for res in Resolution::ALL {
                let start = res.bucket_start(t_ms);
                let known = self
                    .buckets
                    .get(&(res, scope.clone()))
                    .is_some_and(|b| b.start == start);
                let written = self
                    .state
                    .index
                    .get(scope)
                    .and_then(|m| m.get(res.name()))
                    .is_some_and(|&(_, newest)| newest >= start);
                if !known && written {
                    missing.push((res, scope.clone(), start));
                }
            }
        }
        let store = ctx.store.clone();
        let loaded: Vec<Result<((Resolution, String), Bucket)>> = futures::stream::iter(missing)
            .map(|(res, scope, start)| {
                let store = store.clone();
                async move {
                    let rows =
                        json::get::<Vec<Row>>(&store, &series::bucket_key(res, &scope, start))
                            .await?
                            .map(|(r, _)| r)
                            .unwrap_or_default();
                    Ok((
                        (res, scope),
                        Bucket {
                            start,
                            rows,
                            dirty: false,
                        },
                    ))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in loaded {
            let (k, b) = r?;
            self.buckets.insert(k, b);
        }
        Ok(())
    }

    /// Appends `row` to the scope's raw bucket, refreshes its minute and hour rollups, prunes,
    /// and queues the writes.
    fn record(&mut self, scope: &str, row: Row, t_ms: i64, ops: &mut Vec<TxnOp>) {
        let raw = self.bucket(Resolution::Raw, scope, t_ms);
        series::upsert(&mut raw.rows, row);
        let minute_start = series::floor_to(t_ms, MINUTE_MS);
        let minute = series::rollup(&raw.rows, minute_start, MINUTE_MS);
        if let Some(m) = minute {
            let mb = self.bucket(Resolution::Minute, scope, t_ms);
            series::upsert(&mut mb.rows, m);
            let hour_start = series::floor_to(t_ms, HOUR_MS);
            if let Some(h) = series::rollup(&mb.rows, hour_start, HOUR_MS) {
                let hb = self.bucket(Resolution::Hour, scope, t_ms);
                series::upsert(&mut hb.rows, h);
            }
        }
        for res in Resolution::ALL {
            if let Some(b) = self.buckets.get(&(res, scope.to_string())) {
                if b.dirty {
                    match json::encode(&b.rows) {
                        Ok(v) => ops.push(TxnOp::put(series::bucket_key(res, scope, b.start), v)),
                        Err(e) => warn!(error = %e, "stats sampler: cannot encode bucket"),
                    }
                }
            }
            self.prune(res, scope, t_ms, ops);
        }
    }

    /// The scope's in-memory bucket of `res` containing `t_ms`, marked dirty (a new one when the
    /// previous bucket ended).
    fn bucket(&mut self, res: Resolution, scope: &str, t_ms: i64) -> &mut Bucket {
        let start = res.bucket_start(t_ms);
        let entry = self.state.index.entry(scope.to_string()).or_default();
        let span = entry
            .entry(res.name().to_string())
            .or_insert((start, start));
        span.0 = span.0.min(start);
        span.1 = span.1.max(start);
        let b = self
            .buckets
            .entry((res, scope.to_string()))
            .or_insert_with(|| Bucket {
                start,
                rows: Vec::new(),
                dirty: false,
            });
        if b.start != start {
            *b = Bucket {
                start,
                rows: Vec::new(),
                dirty: false,
            };
        }
        b.dirty = true;
        b
    }

    /// Deletes the scope's buckets of `res` that fell out of the retention.
    fn prune(&mut self, res: Resolution, scope: &str, t_ms: i64, ops: &mut Vec<TxnOp>) {
        let kept = res.oldest_kept_bucket(t_ms);
        let Some(span) = self
            .state
            .index
            .get_mut(scope)
            .and_then(|m| m.get_mut(res.name()))
        else {
            return;
        };
        let (oldest, newest) = *span;
        if oldest >= kept {
            return;
        }
        let mut b = oldest;
        while b < kept && b <= newest {
            ops.push(TxnOp::delete(series::bucket_key(res, scope, b)));
            b += res.bucket_ms();
        }
        span.0 = kept;
        if newest < kept {
            if let Some(m) = self.state.index.get_mut(scope) {
                m.remove(res.name());
            }
        }
    }
}

fn gauge_row(t: i64, load: &Load, memory_mb: f64, cpu_percent: f64) -> Row {
    Row {
        t,
        samples: 1,
        connections: load.active_connections as f64,
        sessions: load.active_sessions as f64,
        memory_mb,
        cpu_percent,
        ..Row::default()
    }
}

fn add_counters(row: &mut Row, d: &Counters) {
    row.messages += d.messages_in + d.messages_out;
    row.messages_in += d.messages_in;
    row.errors += d.errors;
    row.rt_sum_ms += d.response_time_sum_ms;
    row.rt_count += d.response_time_count;
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod store_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_aligned_and_strictly_later() {
        assert_eq!(next_tick(0, 10_000), 10_000);
        assert_eq!(next_tick(9_999, 10_000), 10_000);
        assert_eq!(next_tick(10_000, 10_000), 20_000);
        assert_eq!(next_tick(1_700_000_000_123, 1_000), 1_700_000_001_000);
    }

    #[test]
    fn min_query_interval_rounds_up() {
        let c = |ms| SamplerConfig {
            interval: Duration::from_millis(ms),
        };
        assert_eq!(c(10_000).min_query_interval_secs(), 10);
        assert_eq!(c(200).min_query_interval_secs(), 1);
        assert_eq!(c(1_500).min_query_interval_secs(), 2);
    }
}
