//! Process supervisor (leader only): launches, watches and restarts managed agent processes.

pub mod lifecycle;
