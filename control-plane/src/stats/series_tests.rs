use rand::{RngExt, SeedableRng};

use super::*;
use crate::stats::spec::validate;

fn sample(t: i64, conns: f64, msgs: u64) -> Row {
    Row {
        t,
        samples: 1,
        connections: conns,
        sessions: conns / 2.0,
        messages: msgs,
        messages_in: msgs / 2,
        errors: msgs / 10,
        rt_sum_ms: msgs as f64 * 5.0,
        rt_count: msgs,
        memory_mb: 100.0,
        cpu_percent: 10.0,
    }
}

#[test]
fn keys_sort_by_time_and_buckets_align() {
    let a = bucket_key(Resolution::Raw, "svc", 999_999_000);
    let b = bucket_key(Resolution::Raw, "svc", 1_000_000_000_000);
    assert!(a < b);
    assert!(a.starts_with("stats/ts/raw/svc/"));
    for res in Resolution::ALL {
        let t = 1_700_000_123_456;
        let s = res.bucket_start(t);
        assert!(s <= t && t < s + res.bucket_ms());
        assert_eq!(s % res.bucket_ms(), 0);
        // Buckets hold whole rollup steps of the next resolution.
        if let Some(step) = res.step_ms() {
            assert_eq!(res.bucket_ms() % step, 0);
        }
    }
    assert_eq!(Resolution::Raw.bucket_ms() % 60_000, 0);
    assert_eq!(Resolution::Minute.bucket_ms() % 3_600_000, 0);
}

#[test]
fn fold_weights_gauges_and_sums_counters() {
    let mut a = sample(0, 2.0, 10);
    a.fold(&sample(10_000, 4.0, 20));
    a.fold(&sample(20_000, 6.0, 0));
    assert_eq!(a.samples, 3);
    assert_eq!(a.connections, 4.0);
    assert_eq!(a.messages, 30);
    assert_eq!(a.errors, 3);
    assert_eq!(a.value(Metric::ResponseTimeMs), Some(5.0));
    // Folding rollups gives the same as folding the raw samples (weights carried by `samples`).
    let mut left = sample(0, 1.0, 1);
    left.fold(&sample(1, 2.0, 1));
    let mut right = sample(2, 9.0, 1);
    right.fold(&left);
    assert!((right.connections - 4.0).abs() < 1e-9);
}

#[test]
fn response_time_absent_without_responses() {
    let r = sample(0, 1.0, 0);
    assert_eq!(r.value(Metric::ResponseTimeMs), None);
    assert_eq!(r.value(Metric::Messages), Some(0.0));
    assert_eq!(Row::default().value(Metric::Connections), None);
}

#[test]
fn upsert_keeps_order_and_replaces() {
    let mut rows = vec![];
    upsert(&mut rows, sample(20, 1.0, 1));
    upsert(&mut rows, sample(10, 1.0, 1));
    upsert(&mut rows, sample(30, 1.0, 1));
    upsert(&mut rows, sample(20, 7.0, 1));
    let ts: Vec<i64> = rows.iter().map(|r| r.t).collect();
    assert_eq!(ts, [10, 20, 30]);
    assert_eq!(rows[1].connections, 7.0);
}

#[test]
fn answer_aligns_points_and_leaves_gaps_out() {
    // 10 s samples from 10:00:00 to 10:59:50, with a gap 10:20–10:30.
    let base = 1_704_103_200_000; // 2024-01-01T10:00:00Z
    let rows: Vec<Row> = (0..360)
        .map(|i| sample(base + i * 10_000, i as f64, 1))
        .filter(|r| !(base + 1_200_000..base + 1_800_000).contains(&r.t))
        .collect();
    let now = base + 3_600_000 - 1; // 10:59:59.999
    let q = validate("messages", "1h", "5m", 10).unwrap();
    let pts = answer(&q, &rows, now);
    // Boundaries 10:00 .. 10:55 (10:00 >= now - 1h = 09:59:59.999), minus 10:20 and 10:25.
    let ts: Vec<i64> = pts.iter().map(|p| p.timestamp_secs).collect();
    let expect: Vec<i64> = (0..12)
        .filter(|k| *k != 4 && *k != 5)
        .map(|k| base / 1000 + k * 300)
        .collect();
    assert_eq!(ts, expect);
    assert!(pts
        .iter()
        .all(|p| p.value == 30.0 && p.timestamp_secs % 300 == 0));
    let g = answer(
        &validate("connections", "1h", "5m", 10).unwrap(),
        &rows,
        now,
    );
    // Interval 10:05 holds samples 30..=59: mean 44.5.
    assert_eq!(g[1].value, 44.5);
}

#[test]
fn merge_uses_coarse_rows_only_before_fine_ones() {
    let h = 3_600_000;
    let hour = vec![
        sample(0, 1.0, 100),
        sample(h, 1.0, 100),
        sample(2 * h, 1.0, 100),
    ];
    let minute = vec![
        sample(h + 60_000, 1.0, 7),
        sample(2 * h, 1.0, 7),
        sample(2 * h + 60_000, 1.0, 7),
    ];
    let raw = vec![
        sample(2 * h + 60_000, 1.0, 1),
        sample(2 * h + 70_000, 1.0, 1),
    ];
    let m = merge(raw, minute, hour);
    let ts: Vec<i64> = m.iter().map(|r| r.t).collect();
    // Hour rows before the minute data's hour; minute rows before the raw data's minute.
    assert_eq!(ts, [0, h + 60_000, 2 * h, 2 * h + 60_000, 2 * h + 70_000]);
    assert_eq!(m.iter().map(|r| r.messages).sum::<u64>(), 100 + 7 + 7 + 2);
}

#[test]
fn resolution_choice_follows_retention() {
    let now = 1_704_103_200_000;
    assert_eq!(resolutions_for(now - 3_600_000, now), [Resolution::Raw]);
    assert_eq!(
        resolutions_for(now - 24 * 3_600_000, now),
        [Resolution::Raw, Resolution::Minute]
    );
    assert_eq!(
        resolutions_for(now - 7 * 86_400_000, now),
        Resolution::ALL.to_vec()
    );
}

/// Property: rolling raw samples up to minutes then hours and answering from the rollups gives
/// the same counter sums and sample-weighted gauge means as answering from the raw samples,
/// whenever the interval is a multiple of the rollup step.
#[test]
fn downsampling_preserves_answers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let base = 1_704_067_200_000; // midnight
        let step = [1_000, 5_000, 10_000][rng.random_range(0..3)];
        let n = rng.random_range(1..3_000);
        let mut rows: Vec<Row> = Vec::new();
        for i in 0..n {
            if rng.random_bool(0.8) {
                let c: u32 = rng.random_range(0..50);
                rows.push(sample(
                    base + i * step,
                    f64::from(c),
                    rng.random_range(0..20),
                ));
            }
        }
        let now = base + n * step;
        let mut minutes: Vec<Row> = Vec::new();
        // Recompute the rollup after every sample, as the sampler does (upsert in place).
        for (i, r) in rows.iter().enumerate() {
            let m = floor_to(r.t, 60_000);
            let from = rows[..=i].partition_point(|x| x.t < m);
            upsert(&mut minutes, rollup(&rows[from..=i], m, 60_000).unwrap());
        }
        let mut hours: Vec<Row> = Vec::new();
        for r in &minutes {
            let h = floor_to(r.t, 3_600_000);
            upsert(&mut hours, rollup(&minutes, h, 3_600_000).unwrap());
        }
        for (interval, coarse) in [("1m", &minutes), ("1h", &hours)] {
            for metric in ["messages", "errors", "connections", "response_time_ms"] {
                let q = validate(metric, "1d", interval, 1).unwrap();
                let a = answer(&q, &rows, now);
                let b = answer(&q, coarse, now);
                assert_eq!(a.len(), b.len(), "{metric} at {interval}");
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.timestamp_secs, y.timestamp_secs);
                    assert!(
                        (x.value - y.value).abs() < 1e-6,
                        "{metric} {interval}: {x:?} vs {y:?}"
                    );
                }
            }
        }
        let total: u64 = rows.iter().map(|r| r.messages).sum();
        assert_eq!(hours.iter().map(|r| r.messages).sum::<u64>(), total);
    }
}

/// Property: every answered point is aligned, inside the period, strictly increasing, and at
/// most period/interval + 1 of them.
#[test]
fn answers_are_aligned_and_bounded() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..200 {
        let now: i64 = 1_704_067_200_000 + rng.random_range(0..86_400_000);
        let period: u64 = [60, 300, 900, 3_600, 21_600][rng.random_range(0..5)];
        let interval: u64 = [1, 10, 30, 60, 300][rng.random_range(0..5)].min(period);
        let rows: Vec<Row> = (0..500)
            .map(|i| {
                sample(
                    now - 8 * 3_600_000 + i * 60_000 + rng.random_range(0..59_000),
                    1.0,
                    1,
                )
            })
            .collect();
        let Ok(q) = validate(
            "messages",
            &format!("{period}s"),
            &format!("{interval}s"),
            1,
        ) else {
            assert!(period / interval > 10_000);
            continue;
        };
        let pts = answer(&q, &rows, now);
        assert!(pts.len() as u64 <= period / interval + 1);
        for w in pts.windows(2) {
            assert!(w[0].timestamp_secs < w[1].timestamp_secs);
        }
        for p in &pts {
            assert_eq!(p.timestamp_secs % interval as i64, 0);
            assert!(p.timestamp_secs * 1000 >= now - period as i64 * 1000);
            assert!(p.timestamp_secs * 1000 <= now);
        }
    }
}

#[test]
fn idle_rows_are_stored_small_and_round_trip() {
    let idle = Row {
        t: 1_704_103_200_000,
        samples: 1,
        ..Row::default()
    };
    let text = serde_json::to_string(&idle).unwrap();
    assert_eq!(text, r#"{"t":1704103200000,"n":1}"#);
    assert_eq!(serde_json::from_str::<Row>(&text).unwrap(), idle);
    let busy = sample(5, 3.0, 7);
    let back: Row = serde_json::from_str(&serde_json::to_string(&busy).unwrap()).unwrap();
    assert_eq!(back, busy);
}
