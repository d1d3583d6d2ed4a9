//! Per-service statistics (seed §1.1 `stats`) for `GET /services` and `GET /services/{id}`:
//! the traffic figures from the proxies' counters, the completed-session totals, the live load
//! and the peaks (the leader's summary and the replicas' peak records, `stats::peaks`). (Memory, CPU, uptime and restarts come from `runtime/{id}` in the
//! registry's view.) A list costs one range per prefix whatever the number of services; a
//! single service reads only its own keys.

use std::collections::HashMap;

use super::overview::ratio;
use super::peaks;
use super::records::{self, Counters, Load, SessionTotals, COUNTERS, SESSION_TOTALS};
use super::summary::{Summary, SUMMARY_KEY};
use crate::context::Context;
use crate::error::Result;
use crate::store::json;

/// Traffic figures of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Connections ever opened to the service.
    pub total_connections: u64,
    pub active_connections: u64,
    /// Most connections open at once, ever (at least `active_connections`).
    pub peak_connections: u64,
    /// Sessions ever created on the service.
    pub total_sessions: u64,
    /// Sessions not completed (attached, or idle within their timeout).
    pub active_sessions: u64,
    pub completed_sessions: u64,
    /// Mean duration (seconds, creation to completion) of the completed sessions.
    pub avg_session_duration: f64,
    /// Errors the proxies reported for the service: upstream connect failures, agent
    /// connections that ended without a normal close (once per attached client connection),
    /// client frames the proxy rejected.
    pub error_count: u64,
    /// `error_count / total_connections` (0 without connections).
    pub error_rate: f64,
    /// Messages relayed in both directions.
    pub messages_total: u64,
}

impl Figures {
    pub fn compute(
        counters: &Counters,
        sessions: &SessionTotals,
        load: &Load,
        peak: u64,
    ) -> Figures {
        Figures {
            total_connections: counters.connections_opened,
            active_connections: load.active_connections,
            peak_connections: peak.max(load.active_connections),
            total_sessions: counters.sessions_created,
            active_sessions: load.active_sessions,
            completed_sessions: sessions.completed,
            avg_session_duration: if sessions.completed > 0 {
                sessions.total_duration_seconds / sessions.completed as f64
            } else {
                0.0
            },
            error_count: counters.errors,
            error_rate: ratio(counters.errors, counters.connections_opened),
            messages_total: counters.messages_in + counters.messages_out,
        }
    }
}

/// Figures for the given service ids (ids without any traffic get zeros).
pub async fn per_service(ctx: &Context, ids: &[&str]) -> Result<HashMap<String, Figures>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let store = &ctx.store;
    let (counters, sessions) = if let [id] = ids {
        // One service: its own keys only.
        let (kvs, _) = store.range(&format!("{COUNTERS}{id}/")).await?;
        let mut sum = Counters::default();
        for kv in &kvs {
            match json::decode::<Counters>(kv) {
                Ok(c) => sum.add(&c),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "stats: skipping undecodable record")
                }
            }
        }
        let totals = json::get::<SessionTotals>(store, &format!("{SESSION_TOTALS}{id}"))
            .await?
            .map(|(t, _)| t)
            .unwrap_or_default();
        (
            HashMap::from([(id.to_string(), sum)]),
            HashMap::from([(id.to_string(), totals)]),
        )
    } else {
        let (c, s) = tokio::try_join!(
            records::counter_records(store),
            records::session_totals(store)
        )?;
        (records::counters_by_service(&c), s)
    };
    let (load, summary, peak_records) = tokio::try_join!(
        records::live_load(ctx),
        json::get::<Summary>(store, SUMMARY_KEY),
        peaks::records(store),
    )?;
    let summary = summary.map(|(s, _)| s).unwrap_or_default();
    Ok(ids
        .iter()
        .map(|id| {
            let f = Figures::compute(
                &counters.get(*id).copied().unwrap_or_default(),
                &sessions.get(*id).copied().unwrap_or_default(),
                &load.get(*id).copied().unwrap_or_default(),
                summary
                    .peaks
                    .get(*id)
                    .copied()
                    .unwrap_or(0)
                    .max(peaks::service_peak(&peak_records, id)),
            );
            (id.to_string(), f)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_seed_definitions() {
        let c = Counters {
            connections_opened: 50,
            sessions_created: 45,
            messages_in: 30,
            messages_out: 28,
            errors: 2,
            ..Counters::default()
        };
        let s = SessionTotals {
            completed: 4,
            total_duration_seconds: 1202.0,
        };
        let l = Load {
            active_connections: 12,
            active_sessions: 8,
        };
        let f = Figures::compute(&c, &s, &l, 25);
        assert_eq!(f.total_connections, 50);
        assert_eq!(f.peak_connections, 25);
        assert_eq!(f.avg_session_duration, 300.5);
        assert_eq!(f.error_rate, 0.04);
        assert_eq!(f.messages_total, 58);
        // A peak the leader has not recorded yet is still at least the current load.
        assert_eq!(Figures::compute(&c, &s, &l, 3).peak_connections, 12);
        assert_eq!(
            Figures::compute(&Counters::default(), &s, &l, 0).error_rate,
            0.0
        );
    }
}
