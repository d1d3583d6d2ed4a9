//! `stats/summary`: the leader's record of what cannot be recomputed from the current records —
//! peaks (all-time per service, and today's cluster-wide) and the cumulative totals at the start
//! of the UTC day, from which the overview's `*_today` figures are derived on any replica.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::records::{Counters, SessionTotals};

pub const SUMMARY_KEY: &str = "stats/summary";

/// Cluster-wide cumulative totals (sums over every service's records).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub connections_opened: u64,
    pub sessions_created: u64,
    pub sessions_completed: u64,
}

impl Totals {
    pub fn from_records<'a>(
        counters: impl IntoIterator<Item = &'a Counters>,
        sessions: impl IntoIterator<Item = &'a SessionTotals>,
    ) -> Totals {
        let mut t = Totals::default();
        for c in counters {
            t.connections_opened += c.connections_opened;
            t.sessions_created += c.sessions_created;
        }
        for s in sessions {
            t.sessions_completed += s.completed;
        }
        t
    }

    /// `self - base`, never below zero (records of a deleted service may have vanished).
    pub fn since(&self, base: &Totals) -> Totals {
        Totals {
            connections_opened: self
                .connections_opened
                .saturating_sub(base.connections_opened),
            sessions_created: self.sessions_created.saturating_sub(base.sessions_created),
            sessions_completed: self
                .sessions_completed
                .saturating_sub(base.sessions_completed),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// UTC day (`YYYY-MM-DD`) that `baseline` and `peak_today` belong to.
    pub day: String,
    /// Cumulative totals at the start of `day` (as of the last sample before it).
    pub baseline: Totals,
    /// Cumulative totals at the last sample.
    pub last_totals: Totals,
    pub last_sample_ms: i64,
    /// Most concurrent connections cluster-wide during `day`.
    pub peak_today: u64,
    /// Most concurrent connections ever, per service id.
    pub peaks: BTreeMap<String, u64>,
}

pub fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

impl Summary {
    /// Totals at the start of `today`: if the leader has not rolled the record over yet, the
    /// last sample (taken before midnight) is exactly what it will use.
    pub fn baseline_for(&self, today: &str) -> Totals {
        if self.day == today {
            self.baseline
        } else {
            self.last_totals
        }
    }

    pub fn peak_today_for(&self, today: &str) -> u64 {
        if self.day == today {
            self.peak_today
        } else {
            0
        }
    }

    /// Starts a new day: today's counts begin at the last sample's totals.
    pub fn roll_to(&mut self, today: &str) -> bool {
        if self.day == today {
            return false;
        }
        self.baseline = self.last_totals;
        self.peak_today = 0;
        self.day = today.to_string();
        true
    }

    /// Records a load observation; returns whether a peak rose.
    pub fn observe<'a>(
        &mut self,
        today: &str,
        per_service: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> bool {
        let mut changed = self.roll_to(today);
        let mut total = 0;
        for (id, active) in per_service {
            total += active;
            let peak = self.peaks.entry(id.to_string()).or_insert(0);
            if active > *peak {
                *peak = active;
                changed = true;
            }
        }
        if total > self.peak_today {
            self.peak_today = total;
            changed = true;
        }
        changed
    }

    /// Takes in the replicas' peak records (see `stats::peaks`); returns whether a peak rose.
    pub fn fold_peaks(&mut self, today: &str, records: &[super::peaks::PeakRecord]) -> bool {
        let mut changed = self.roll_to(today);
        for r in records {
            if r.day == today && r.today > self.peak_today {
                self.peak_today = r.today;
                changed = true;
            }
            for (id, p) in &r.services {
                let peak = self.peaks.entry(id.clone()).or_insert(0);
                if *p > *peak {
                    *peak = *p;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Drops the peaks of services that no longer exist.
    pub fn retain_services(&mut self, exists: impl Fn(&str) -> bool) -> bool {
        let before = self.peaks.len();
        self.peaks.retain(|id, _| exists(id));
        before != self.peaks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_rollover_starts_counts_from_last_sample() {
        let mut s = Summary::default();
        assert!(s.observe("2024-01-01", [("a", 3), ("b", 2)]));
        assert_eq!((s.peak_today, s.peaks["a"], s.peaks["b"]), (5, 3, 2));
        assert!(!s.observe("2024-01-01", [("a", 1), ("b", 1)]));
        s.last_totals = Totals {
            connections_opened: 10,
            sessions_created: 4,
            sessions_completed: 3,
        };
        // Before the leader rolls over, readers already see today's counts from the last sample.
        assert_eq!(s.baseline_for("2024-01-02").connections_opened, 10);
        assert_eq!(s.peak_today_for("2024-01-02"), 0);
        assert!(s.observe("2024-01-02", [("a", 1)]));
        assert_eq!(
            (s.day.as_str(), s.peak_today, s.peaks["a"]),
            ("2024-01-02", 1, 3)
        );
        assert_eq!(s.baseline_for("2024-01-02").sessions_created, 4);
        assert!(s.retain_services(|id| id == "a"));
        assert!(!s.peaks.contains_key("b"));
    }

    #[test]
    fn totals_never_go_negative() {
        let a = Totals {
            connections_opened: 1,
            ..Totals::default()
        };
        let b = Totals {
            connections_opened: 5,
            sessions_created: 2,
            sessions_completed: 0,
        };
        assert_eq!(a.since(&b), Totals::default());
        assert_eq!(b.since(&a).connections_opened, 4);
    }
}
