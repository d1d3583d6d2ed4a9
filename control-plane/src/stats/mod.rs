//! Statistics: per-service counters, overview, time series sampling and retention.
