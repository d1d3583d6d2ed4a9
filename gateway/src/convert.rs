//! Small conversions shared by every endpoint: timestamps (RFC 3339 UTC, seconds, `Z`) and
//! numbers rendered the way the seed shows them.

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;
use serde::Serializer;

use crate::error::ApiError;

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2024-01-01T10:00:00Z`; an unset (or out-of-range) timestamp is `None` → JSON `null`.
pub fn ts(t: Option<&Timestamp>) -> Option<String> {
    let t = t?;
    if t.seconds == 0 && t.nanos == 0 {
        return None;
    }
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(t.seconds, nanos)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Parses an RFC 3339 query value into a protobuf timestamp; `field` names it in the error.
pub fn parse_ts(field: &str, value: &str) -> Result<Timestamp, ApiError> {
    let d = DateTime::parse_from_rfc3339(value).map_err(|e| {
        ApiError::invalid(
            field,
            format!("`{field}` must be an RFC 3339 timestamp such as 2024-01-01T10:00:00Z: {e}"),
        )
    })?;
    let d = d.with_timezone(&Utc);
    Ok(Timestamp {
        seconds: d.timestamp(),
        nanos: i32::try_from(d.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

/// Validates `?wait_for_sync=SECONDS` (0 = no wait).
pub fn wait_for_sync(v: Option<f64>) -> Result<f64, ApiError> {
    match v {
        None => Ok(0.0),
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(s),
        Some(_) => Err(ApiError::invalid(
            "wait_for_sync",
            "`wait_for_sync` must be a number of seconds between 0 and 3600",
        )),
    }
}

/// Serializes a float that holds a whole number as an integer (`45`, not `45.0`), as the seed's
/// time-series examples show counts.
pub fn number<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        s.serialize_i64(*v as i64)
    } else if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

/// Empty string → `None` (JSON `null`).
pub fn opt_str(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_seconds_with_z() {
        let t = Timestamp {
            seconds: 1_704_103_200,
            nanos: 123_000_000,
        };
        assert_eq!(ts(Some(&t)).as_deref(), Some("2024-01-01T10:00:00Z"));
        assert_eq!(ts(None), None);
        assert_eq!(ts(Some(&Timestamp::default())), None);
    }

    #[test]
    fn parse_ts_round_trips_and_names_field() {
        let t = parse_ts("since", "2024-01-01T10:00:00Z").unwrap();
        assert_eq!(t.seconds, 1_704_103_200);
        let t = parse_ts("since", "2024-01-01T12:00:00+02:00").unwrap();
        assert_eq!(t.seconds, 1_704_103_200);
        let e = parse_ts("since", "yesterday").unwrap_err();
        assert_eq!(e.details["field"], "since");
    }

    #[test]
    fn wait_for_sync_bounds() {
        assert_eq!(wait_for_sync(None).unwrap(), 0.0);
        assert_eq!(wait_for_sync(Some(2.5)).unwrap(), 2.5);
        assert!(wait_for_sync(Some(-1.0)).is_err());
        assert!(wait_for_sync(Some(f64::NAN)).is_err());
    }

    #[test]
    fn whole_numbers_serialize_as_integers() {
        #[derive(serde::Serialize)]
        struct P {
            #[serde(serialize_with = "number")]
            v: f64,
        }
        assert_eq!(
            serde_json::to_string(&P { v: 45.0 }).unwrap(),
            r#"{"v":45}"#
        );
        assert_eq!(
            serde_json::to_string(&P { v: 4.5 }).unwrap(),
            r#"{"v":4.5}"#
        );
    }
}
