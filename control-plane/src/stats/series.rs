//! Time-series storage model: sample rows, the three resolutions with their buckets and
//! retention, folding (downsampling) and answering a query from stored rows.
//!
//! Layout: `stats/ts/{resolution}/{scope}/{bucket_start_ms}` holds a JSON array of [`Row`]s
//! (oldest first), where `scope` is a service id or [`ALL_SCOPE`]. One key per scope per
//! resolution per bucket keeps the key count bounded (about 37 raw + 49 minute + 17 hour keys
//! per scope) while a query reads one prefix per resolution.

use serde::{Deserialize, Serialize};

use super::spec::{Metric, SeriesQuery};
use crate::keys;

/// Scope of the all-services series (service ids are UUIDs, so this cannot collide).
pub const ALL_SCOPE: &str = "_all";

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// Every sample as taken (default every 10 s), kept about 6 h.
    Raw,
    /// One row per minute, kept about 48 h.
    Minute,
    /// One row per hour, kept 8 days (so a `7d` period is always covered).
    Hour,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [Resolution::Raw, Resolution::Minute, Resolution::Hour];

    pub fn name(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    /// Span of one stored key. Raw buckets hold whole minutes and minute buckets whole hours,
    /// so a rollup row can always be recomputed from the one bucket below it.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Raw => 10 * MINUTE_MS,
            Resolution::Minute => HOUR_MS,
            Resolution::Hour => 12 * HOUR_MS,
        }
    }

    pub fn retention_ms(self) -> i64 {
        match self {
            Resolution::Raw => 6 * HOUR_MS,
            Resolution::Minute => 48 * HOUR_MS,
            Resolution::Hour => 8 * 24 * HOUR_MS,
        }
    }

    /// Row alignment of a rollup (`None` for raw rows, which sit at the sample time).
    pub fn step_ms(self) -> Option<i64> {
        match self {
            Resolution::Raw => None,
            Resolution::Minute => Some(MINUTE_MS),
            Resolution::Hour => Some(HOUR_MS),
        }
    }

    pub fn bucket_start(self, t_ms: i64) -> i64 {
        floor_to(t_ms, self.bucket_ms())
    }

    /// Oldest bucket start still inside the retention at `now_ms`.
    pub fn oldest_kept_bucket(self, now_ms: i64) -> i64 {
        self.bucket_start(now_ms - self.retention_ms())
    }
}

pub fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ceil_to(t: i64, step: i64) -> i64 {
    -floor_to(-t, step)
}

pub fn prefix(res: Resolution, scope: &str) -> String {
    format!("{}ts/{}/{scope}/", keys::STATS, res.name())
}

pub fn bucket_key(res: Resolution, scope: &str, bucket_start_ms: i64) -> String {
    // Zero-padded so key order is time order.
    format!("{}{bucket_start_ms:015}", prefix(res, scope))
}

/// One sample, or several folded into one (a rollup). Gauges are averages over `samples`;
/// counters are sums. Short field names, and zeros left out, keep stored buckets small (an
/// idle service's row is `{"t":..,"n":1}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Start of the row's span (raw: sample time), ms since the epoch.
    pub t: i64,
    /// Raw samples folded into this row (the weight of its gauges).
    #[serde(rename = "n")]
    pub samples: u32,
    #[serde(rename = "c", default, skip_serializing_if = "is_zero_f")]
    pub connections: f64,
    #[serde(rename = "s", default, skip_serializing_if = "is_zero_f")]
    pub sessions: f64,
    /// Messages relayed in both directions.
    #[serde(rename = "m", default, skip_serializing_if = "is_zero_u")]
    pub messages: u64,
    /// Client→agent messages only (the overview's throughput).
    #[serde(rename = "mi", default, skip_serializing_if = "is_zero_u")]
    pub messages_in: u64,
    #[serde(rename = "e", default, skip_serializing_if = "is_zero_u")]
    pub errors: u64,
    #[serde(rename = "rs", default, skip_serializing_if = "is_zero_f")]
    pub rt_sum_ms: f64,
    #[serde(rename = "rc", default, skip_serializing_if = "is_zero_u")]
    pub rt_count: u64,
    #[serde(rename = "mem", default, skip_serializing_if = "is_zero_f")]
    pub memory_mb: f64,
    #[serde(rename = "cpu", default, skip_serializing_if = "is_zero_f")]
    pub cpu_percent: f64,
}

fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u(v: &u64) -> bool {
    *v == 0
}

impl Row {
    /// Adds `other` to `self`: gauges become the sample-weighted mean, counters add up.
    pub fn fold(&mut self, other: &Row) {
        let (a, b) = (f64::from(self.samples), f64::from(other.samples));
        let total = a + b;
        if total > 0.0 {
            let mean = |x: f64, y: f64| (x * a + y * b) / total;
            self.connections = mean(self.connections, other.connections);
            self.sessions = mean(self.sessions, other.sessions);
            self.memory_mb = mean(self.memory_mb, other.memory_mb);
            self.cpu_percent = mean(self.cpu_percent, other.cpu_percent);
        }
        self.samples += other.samples;
        self.messages += other.messages;
        self.messages_in += other.messages_in;
        self.errors += other.errors;
        self.rt_sum_ms += other.rt_sum_ms;
        self.rt_count += other.rt_count;
    }

    /// The metric's value for this row; `None` when it has nothing to say (no samples, or no
    /// responses for the response time).
    pub fn value(&self, metric: Metric) -> Option<f64> {
        if self.samples == 0 {
            return None;
        }
        Some(match metric {
            Metric::Connections => self.connections,
            Metric::Sessions => self.sessions,
            Metric::Messages => self.messages as f64,
            Metric::Errors => self.errors as f64,
            Metric::ResponseTimeMs => {
                if self.rt_count == 0 {
                    return None;
                }
                self.rt_sum_ms / self.rt_count as f64
            }
            Metric::MemoryMb => self.memory_mb,
            Metric::CpuPercent => self.cpu_percent,
        })
    }
}

/// Folds the rows whose time falls in `[start, start + span)` into one row at `start`.
pub fn rollup<'a>(rows: impl IntoIterator<Item = &'a Row>, start: i64, span: i64) -> Option<Row> {
    let mut acc: Option<Row> = None;
    for r in rows
        .into_iter()
        .filter(|r| r.t >= start && r.t < start + span)
    {
        match &mut acc {
            Some(a) => a.fold(r),
            None => {
                let mut first = r.clone();
                first.t = start;
                acc = Some(first);
            }
        }
    }
    acc
}

/// Inserts or replaces the row with the same `t`, keeping `rows` sorted by time.
pub fn upsert(rows: &mut Vec<Row>, row: Row) {
    match rows.last() {
        Some(last) if last.t < row.t => rows.push(row),
        None => rows.push(row),
        _ => match rows.binary_search_by_key(&row.t, |r| r.t) {
            Ok(i) => rows[i] = row,
            Err(i) => rows.insert(i, row),
        },
    }
}

/// Merges the rows of the three resolutions (each sorted by time) into one timeline, using
/// each coarser resolution only for the time before the finer one begins, so no span is
/// counted twice.
pub fn merge(raw: Vec<Row>, minute: Vec<Row>, hour: Vec<Row>) -> Vec<Row> {
    let raw_start = raw.first().map(|r| floor_to(r.t, MINUTE_MS));
    let mut out: Vec<Row> = Vec::with_capacity(raw.len() + minute.len() + hour.len());
    let minute: Vec<Row> = match raw_start {
        Some(s) => minute.into_iter().filter(|r| r.t < s).collect(),
        None => minute,
    };
    let finer_start = minute
        .first()
        .map(|r| r.t)
        .or(raw_start)
        .map(|s| floor_to(s, HOUR_MS));
    match finer_start {
        Some(s) => out.extend(hour.into_iter().filter(|r| r.t < s)),
        None => out.extend(hour),
    }
    out.extend(minute);
    out.extend(raw);
    out
}

/// Which resolutions a query starting at `from_ms` needs (finest first).
pub fn resolutions_for(from_ms: i64, now_ms: i64) -> Vec<Resolution> {
    Resolution::ALL
        .into_iter()
        .scan(true, |needed, res| {
            let this = *needed;
            // A coarser resolution is needed only if the finer one's retention misses `from`.
            *needed = from_ms < now_ms - res.retention_ms() + res.bucket_ms();
            Some((res, this))
        })
        .filter_map(|(res, needed)| needed.then_some(res))
        .collect()
}

/// One output point: the interval's start (seconds since the epoch) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub timestamp_secs: i64,
    pub value: f64,
}

/// Answers `query` at `now_ms` from a merged timeline: one point per interval boundary `T`
/// (a multiple of the interval) with `now - period <= T <= now`, oldest first, folding the rows
/// with `T <= t < T + interval` and `t >= now - period`; intervals without rows (or, for the
/// response time, without responses) are left out.
pub fn answer(query: &SeriesQuery, rows: &[Row], now_ms: i64) -> Vec<Point> {
    let interval = (query.interval_secs as i64).saturating_mul(1_000);
    let from = now_ms - (query.period_secs as i64).saturating_mul(1_000);
    let first = ceil_to(from, interval);
    let last = floor_to(now_ms, interval);
    let mut points = Vec::new();
    let mut current: Option<Row> = None;
    for r in rows.iter().filter(|r| r.t >= first && r.t <= now_ms) {
        let t = floor_to(r.t, interval);
        if t > last {
            break;
        }
        match &mut current {
            Some(acc) if acc.t == t => acc.fold(r),
            _ => {
                if let Some(done) = current.take() {
                    push_point(&mut points, &done, query.metric);
                }
                let mut acc = r.clone();
                acc.t = t;
                current = Some(acc);
            }
        }
    }
    if let Some(done) = current {
        push_point(&mut points, &done, query.metric);
    }
    points
}

fn push_point(points: &mut Vec<Point>, acc: &Row, metric: Metric) {
    if let Some(value) = acc.value(metric) {
        points.push(Point {
            timestamp_secs: acc.t / 1_000,
            value,
        });
    }
}

#[cfg(test)]
#[path = "series_tests.rs"]
mod tests;
