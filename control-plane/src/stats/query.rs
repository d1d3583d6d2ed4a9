//! Answering `GetTimeseries` from the stored buckets: one range per resolution the period
//! needs (finest first), merged into one timeline and folded per interval.

use chrono::{DateTime, Utc};

use super::series::{self, Point, Row};
use super::spec::SeriesQuery;
use crate::context::Context;
use crate::error::Result;
use crate::store::json;

/// Points of `query` for `scope` (a service id or [`series::ALL_SCOPE`]) as of `now`.
pub async fn timeseries(
    ctx: &Context,
    query: &SeriesQuery,
    scope: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Point>> {
    let now_ms = now.timestamp_millis();
    let from_ms = now_ms - (query.period_secs as i64).saturating_mul(1_000);
    let mut per_res: [Vec<Row>; 3] = Default::default();
    for res in series::resolutions_for(from_ms, now_ms) {
        let (kvs, _) = ctx.store.range(&series::prefix(res, scope)).await?;
        let rows = &mut per_res[res as usize];
        for kv in &kvs {
            // Keys are zero-padded bucket starts, so key order is time order; skip whole
            // buckets that end before the period.
            let Some(start) = kv
                .key
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                continue;
            };
            if start + res.bucket_ms() <= from_ms {
                continue;
            }
            match json::decode::<Vec<Row>>(kv) {
                Ok(bucket) => rows.extend(bucket),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "stats: skipping undecodable bucket")
                }
            }
        }
    }
    let [raw, minute, hour] = per_res;
    Ok(series::answer(
        query,
        &series::merge(raw, minute, hour),
        now_ms,
    ))
}
