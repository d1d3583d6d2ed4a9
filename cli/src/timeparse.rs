//! Time values on the command line (`--since`) and on output (RFC 3339 UTC with `Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;

/// `--since`: an RFC 3339 time, or an age such as `30s`, `10m`, `2h`, `1d` (before now).
pub fn parse_since(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(to_timestamp(t.with_timezone(&Utc)));
    }
    let age = parse_duration(s).ok_or_else(|| {
        format!("`{s}` is neither an RFC 3339 time (2024-01-01T10:00:00Z) nor an age like 30s, 10m, 2h, 1d")
    })?;
    let since = Utc::now().checked_sub_signed(age).ok_or_else(|| {
        format!("`{s}` reaches back before the earliest time this CLI can express")
    })?;
    Ok(to_timestamp(since))
}

/// `90`, `30s`, `10m`, `2h`, `1d` (seconds when no unit).
pub fn parse_duration(s: &str) -> Option<chrono::TimeDelta> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    chrono::TimeDelta::try_seconds(secs)
}

pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// RFC 3339 UTC with `Z`, fractional seconds only when present (seed style `2024-01-01T10:00:00Z`).
pub fn rfc3339(t: &Timestamp) -> Option<String> {
    from_timestamp(t).map(|d| d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Compact form for tables: `2024-01-01 10:00:00`.
pub fn short(t: &Timestamp) -> String {
    from_timestamp(t)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `3d 4h`, `5m 2s`, `12s`.
pub fn human_duration(total: u64) -> String {
    let (d, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_and_z() {
        let t = parse_since("2024-01-01T10:00:00Z").unwrap();
        assert_eq!(rfc3339(&t).unwrap(), "2024-01-01T10:00:00Z");
        let t = parse_since("2024-01-01T12:00:00+02:00").unwrap();
        assert_eq!(rfc3339(&t).unwrap(), "2024-01-01T10:00:00Z");
    }

    #[test]
    fn ages() {
        let now = Utc::now().timestamp();
        let t = parse_since("10m").unwrap();
        assert!((now - 600 - t.seconds).abs() <= 2);
        assert!(parse_since("10x").is_err());
        assert!(parse_since("").is_err());
        assert_eq!(parse_duration("2h"), chrono::TimeDelta::try_seconds(7200));
    }

    #[test]
    fn human() {
        assert_eq!(human_duration(12), "12s");
        assert_eq!(human_duration(3600 * 25), "1d 1h");
        assert_eq!(human_duration(65), "1m 5s");
    }
}
