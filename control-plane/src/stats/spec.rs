//! What a time-series query may ask for: the metrics, the `Ns|Nm|Nh|Nd` spans of `period` and
//! `interval`, and the validation that turns raw request strings into a [`SeriesQuery`].

use crate::error::{Error, Result};

/// Most points one query may return (`period / interval`).
pub const MAX_POINTS: u64 = 10_000;
/// Longest accepted period. Data older than the coarse retention is simply absent.
pub const MAX_PERIOD_SECS: u64 = 366 * 86_400;
/// Period used when the request leaves it empty.
pub const DEFAULT_PERIOD: &str = "1h";
/// Points aimed at when the request leaves the interval empty: 12 makes the default `1h`
/// period come out at the seed's `5m` interval, and a short period still gets a valid interval.
const DEFAULT_POINTS: u64 = 12;

/// The time-series metrics (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Active connections (gauge, averaged over the interval).
    Connections,
    /// Active (non-completed) sessions (gauge).
    Sessions,
    /// Messages relayed in both directions (counter, summed over the interval).
    Messages,
    /// Errors seen by the proxies (counter).
    Errors,
    /// Mean time from a client message to the agent's next message, weighted by the number of
    /// responses in the interval; intervals without responses are left out.
    ResponseTimeMs,
    /// Process-tree resident memory (gauge; all-services = sum over services).
    MemoryMb,
    /// Process-tree CPU, percent of one core (gauge; all-services = sum over services).
    CpuPercent,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Connections,
        Metric::Sessions,
        Metric::Messages,
        Metric::Errors,
        Metric::ResponseTimeMs,
        Metric::MemoryMb,
        Metric::CpuPercent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Connections => "connections",
            Metric::Sessions => "sessions",
            Metric::Messages => "messages",
            Metric::Errors => "errors",
            Metric::ResponseTimeMs => "response_time_ms",
            Metric::MemoryMb => "memory_mb",
            Metric::CpuPercent => "cpu_percent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Parses `N` followed by one unit of `s`, `m`, `h`, `d` (N a positive integer) into seconds.
pub fn parse_span(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(mult)?;
    (secs > 0).then_some(secs)
}

/// Renders seconds in the largest unit that divides them (`300` → `5m`).
pub fn format_span(secs: u64) -> String {
    for (unit, mult) in [('d', 86_400), ('h', 3_600), ('m', 60)] {
        if secs >= mult && secs.is_multiple_of(mult) {
            return format!("{}{unit}", secs / mult);
        }
    }
    format!("{secs}s")
}

/// A validated time-series request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    pub metric: Metric,
    pub period_secs: u64,
    pub interval_secs: u64,
    /// As the client spelled them (or the defaults), echoed in the response.
    pub period: String,
    pub interval: String,
}

/// Validates `metric`, `period` and `interval` (field names as in the REST query string).
///
/// Rules: `metric` is required and one of [`Metric::ALL`]; `period` defaults to 1h; `interval`
/// defaults to about 12 points rounded up to a readable span (1h → 5m; never shorter than
/// `min_interval_secs` nor longer than the period); the interval
/// must be at least the sampling interval, at most the period, and give at most
/// [`MAX_POINTS`] points.
pub fn validate(
    metric: &str,
    period: &str,
    interval: &str,
    min_interval_secs: u64,
) -> Result<SeriesQuery> {
    let min_interval_secs = min_interval_secs.max(1);
    let metric = Metric::parse(metric).ok_or_else(|| {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        Error::invalid(
            "metric",
            if metric.is_empty() {
                format!("metric is required; one of {}", names.join(", "))
            } else {
                format!(
                    "unknown metric '{metric}'; expected one of {}",
                    names.join(", ")
                )
            },
        )
    })?;
    let period = if period.is_empty() {
        DEFAULT_PERIOD
    } else {
        period
    };
    let period_secs = parse_span(period).ok_or_else(|| {
        Error::invalid(
            "period",
            format!("invalid period '{period}'; expected a positive number with unit s, m, h or d (e.g. 15m, 1h, 7d)"),
        )
    })?;
    if period_secs > MAX_PERIOD_SECS {
        return Err(Error::invalid(
            "period",
            format!("period '{period}' is longer than 366d"),
        ));
    }
    let (interval, interval_secs) = if interval.is_empty() {
        let secs = default_interval(period_secs, min_interval_secs);
        (format_span(secs), secs)
    } else {
        let secs = parse_span(interval).ok_or_else(|| {
            Error::invalid(
                "interval",
                format!("invalid interval '{interval}'; expected a positive number with unit s, m, h or d (e.g. 10s, 5m, 1h)"),
            )
        })?;
        (interval.to_string(), secs)
    };
    if interval_secs < min_interval_secs {
        return Err(Error::invalid(
            "interval",
            format!(
                "interval '{interval}' is shorter than the sampling interval ({})",
                format_span(min_interval_secs)
            ),
        ));
    }
    if interval_secs > period_secs {
        return Err(Error::invalid(
            "interval",
            format!("interval '{interval}' is longer than the period '{period}'"),
        ));
    }
    if period_secs / interval_secs > MAX_POINTS {
        return Err(Error::invalid(
            "interval",
            format!("period '{period}' / interval '{interval}' exceeds {MAX_POINTS} points; use a longer interval"),
        ));
    }
    Ok(SeriesQuery {
        metric,
        period_secs,
        interval_secs,
        period: period.to_string(),
        interval,
    })
}

fn default_interval(period_secs: u64, min_interval_secs: u64) -> u64 {
    // Round up to a value people read easily on a chart axis.
    const NICE: [u64; 16] = [
        1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600, 86_400,
    ];
    let raw = (period_secs / DEFAULT_POINTS).max(min_interval_secs);
    let nice = NICE.into_iter().find(|&n| n >= raw).unwrap_or(raw);
    nice.min(period_secs).max(min_interval_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_in_every_unit() {
        assert_eq!(parse_span("10s"), Some(10));
        assert_eq!(parse_span("15m"), Some(900));
        assert_eq!(parse_span("1h"), Some(3_600));
        assert_eq!(parse_span("24h"), Some(86_400));
        assert_eq!(parse_span("7d"), Some(604_800));
    }

    #[test]
    fn malformed_spans_are_rejected() {
        for bad in [
            "",
            "h",
            "0m",
            "-1h",
            "+1h",
            "1.5h",
            "1w",
            "1 h",
            "1H",
            "ms",
            "10ms",
            "٣h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_span(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in [1, 10, 59, 60, 90, 300, 3_600, 5_400, 86_400, 604_800] {
            assert_eq!(parse_span(&format_span(s)), Some(s));
        }
        assert_eq!(format_span(300), "5m");
        assert_eq!(format_span(90), "90s");
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidRequest { field, .. } => field,
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        assert_eq!(
            field_of(validate("cpu", "1h", "5m", 10).unwrap_err()),
            "metric"
        );
        assert_eq!(
            field_of(validate("", "1h", "5m", 10).unwrap_err()),
            "metric"
        );
        assert_eq!(
            field_of(validate("connections", "1y", "5m", 10).unwrap_err()),
            "period"
        );
        assert_eq!(
            field_of(validate("connections", "1h", "5", 10).unwrap_err()),
            "interval"
        );
        // Shorter than sampling, longer than the period, too many points.
        assert_eq!(
            field_of(validate("connections", "1h", "5s", 10).unwrap_err()),
            "interval"
        );
        assert_eq!(
            field_of(validate("connections", "1h", "2h", 10).unwrap_err()),
            "interval"
        );
        assert_eq!(
            field_of(validate("connections", "7d", "1m", 10).unwrap_err()),
            "interval"
        );
        assert_eq!(
            field_of(validate("connections", "400d", "1d", 10).unwrap_err()),
            "period"
        );
    }

    #[test]
    fn valid_queries_and_defaults() {
        let q = validate("messages", "1h", "5m", 10).unwrap();
        assert_eq!(
            (q.metric, q.period_secs, q.interval_secs),
            (Metric::Messages, 3_600, 300)
        );
        assert_eq!((q.period.as_str(), q.interval.as_str()), ("1h", "5m"));
        let q = validate("cpu_percent", "", "", 10).unwrap();
        assert_eq!((q.period.as_str(), q.interval.as_str()), ("1h", "5m"));
        let q = validate("errors", "15m", "", 10).unwrap();
        assert_eq!(q.interval, "2m");
        let q = validate("errors", "7d", "", 10).unwrap();
        assert_eq!(q.interval, "1d");
        // A period shorter than 5m still gets a default interval that fits it.
        let q = validate("errors", "1m", "", 10).unwrap();
        assert_eq!(q.interval, "10s");
        let q = validate("errors", "20s", "", 10).unwrap();
        assert_eq!(q.interval, "10s");
        assert!(validate("sessions", "7d", "2m", 10).is_ok());
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.as_str()), Some(m));
        }
    }
}
