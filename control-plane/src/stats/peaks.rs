//! Peaks of concurrent connections that the connection records cannot show.
//!
//! Proxies report in batches, and the replica writes what they report in batches too, so two
//! connections that open and close between two reports never appear side by side in the store:
//! a peak taken from the records alone would miss them. Each proxy therefore reports, with its
//! counters, the most connections it had open at once since its previous report (per service,
//! and over all services). The replica that receives the report turns that into a cluster-wide
//! candidate — the proxy's peak plus what the *other* proxies have open now — and keeps the
//! highest candidates in `stats/peaks/{replica_id}`:
//! `{"replica_id","day","today","services":{id: peak},"updated_at"}`. Readers take the maximum
//! over every replica's record, the leader's summary (peaks it saw in the records) and the live
//! load, so every replica answers the same. The leader folds the records into its summary at
//! each sample and deletes records of past days.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use myagent_proto::v1 as pb;

use super::summary::day_of;
use crate::error::Result;
use crate::store::{json, Compare, KeyValue, StoreRef, Txn, TxnOp};
use crate::stream::model::ConnectionStatus;
use crate::stream::Hub;

/// Prefix of the per-replica peak records.
pub const PEAKS: &str = "stats/peaks/";

pub fn key(replica_id: &str) -> String {
    format!("{PEAKS}{replica_id}")
}

/// `stats/peaks/{replica_id}`: the highest candidates one replica derived from its proxies'
/// reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeakRecord {
    pub replica_id: String,
    /// UTC day (`YYYY-MM-DD`) `today` belongs to.
    pub day: String,
    /// Most connections open at once cluster-wide during `day`.
    pub today: u64,
    /// Most connections open at once per service id, ever.
    pub services: BTreeMap<String, u64>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Cluster-wide peak candidates derived from one proxy report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Per service id.
    pub services: Vec<(String, u64)>,
    /// All services together (0 = the report carried no figure).
    pub cluster: u64,
}

/// The proxy's own peaks plus what the other proxies have open now (`others`, per service).
/// The other proxies' connections were open when the proxy peaked, as far as the cluster
/// view knows; their own transient peaks arrive with their own reports.
pub fn candidates<'a>(
    proxy_peaks: impl IntoIterator<Item = (&'a str, u64)>,
    node_peak: u64,
    others: &HashMap<String, u64>,
) -> Candidates {
    let services = proxy_peaks
        .into_iter()
        .filter(|(id, peak)| !id.is_empty() && *peak > 0)
        .map(|(id, peak)| (id.to_string(), peak + others.get(id).copied().unwrap_or(0)))
        .collect();
    let cluster = if node_peak > 0 {
        node_peak + others.values().sum::<u64>()
    } else {
        0
    };
    Candidates { services, cluster }
}

impl PeakRecord {
    /// Raises the record with `c` observed on `today`; returns whether anything rose.
    pub fn observe(&mut self, today: &str, c: &Candidates) -> bool {
        let mut rose = false;
        if self.day != today {
            self.day = today.to_string();
            self.today = 0;
        }
        if c.cluster > self.today {
            self.today = c.cluster;
            rose = true;
        }
        for (id, peak) in &c.services {
            let p = self.services.entry(id.clone()).or_insert(0);
            if *peak > *p {
                *p = *peak;
                rose = true;
            }
        }
        rose
    }

    /// Takes the higher of both records' figures (a restarted replica and its stored record).
    pub fn merge(&mut self, other: &PeakRecord) {
        if other.day == self.day {
            self.today = self.today.max(other.today);
        } else if other.day > self.day {
            self.day = other.day.clone();
            self.today = other.today;
        }
        for (id, p) in &other.services {
            let mine = self.services.entry(id.clone()).or_insert(0);
            *mine = (*mine).max(*p);
        }
    }
}

/// Highest per-service peak over the records.
pub fn service_peak(records: &[PeakRecord], service_id: &str) -> u64 {
    records
        .iter()
        .filter_map(|r| r.services.get(service_id).copied())
        .max()
        .unwrap_or(0)
}

/// Highest cluster-wide peak of `today` over the records.
pub fn today_peak(records: &[PeakRecord], today: &str) -> u64 {
    records
        .iter()
        .filter(|r| r.day == today)
        .map(|r| r.today)
        .max()
        .unwrap_or(0)
}

/// Every replica's peak record, with its key and mod revision.
pub async fn stored(store: &StoreRef) -> Result<Vec<(PeakRecord, String, i64)>> {
    let (kvs, _) = store.range(PEAKS).await?;
    Ok(kvs.iter().filter_map(decode).collect())
}

/// Every replica's peak record.
pub async fn records(store: &StoreRef) -> Result<Vec<PeakRecord>> {
    Ok(stored(store)
        .await?
        .into_iter()
        .map(|(r, _, _)| r)
        .collect())
}

fn decode(kv: &KeyValue) -> Option<(PeakRecord, String, i64)> {
    match json::decode::<PeakRecord>(kv) {
        Ok(r) => Some((r, kv.key.clone(), kv.mod_revision)),
        Err(e) => {
            warn!(key = %kv.key, error = %e, "stats: skipping undecodable peak record");
            None
        }
    }
}

/// Deletes records of days before `today` unless they changed since they were read (the leader
/// has folded them into its summary first).
pub async fn delete_stale(store: &StoreRef, stale: &[(String, i64)]) {
    for (key, rev) in stale {
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), *rev)],
            success: vec![TxnOp::delete(key.clone())],
            failure: vec![],
        };
        if let Err(e) = store.txn(txn).await {
            warn!(key = %key, error = %e, "stats: cannot delete a stale peak record");
        }
    }
}

// ---------------------------------------------------------------- replica side

/// The replica's in-memory record, written when it rose.
#[derive(Debug, Default)]
pub struct Tracker {
    record: PeakRecord,
    /// Bumped at every rise; a write clears `dirty` only if nothing rose meanwhile.
    generation: u64,
    written: u64,
    /// The stored record was merged in (once, so a restarted replica never lowers it).
    loaded: bool,
}

impl Tracker {
    pub fn observe(&mut self, now: DateTime<Utc>, c: &Candidates) {
        if self.record.observe(&day_of(now), c) {
            self.generation += 1;
        }
    }

    fn dirty(&self) -> bool {
        self.generation != self.written
    }
}

/// Connections open now on proxies other than `node_id`, per service: from the streams of
/// this replica's own proxies (fresher than the store) and from the watched store view for
/// proxies on other replicas.
fn others(hub: &Hub, node_id: &str) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    let mut local: HashSet<String> = HashSet::new();
    for n in hub.inner.local_nodes() {
        local.insert(n.node_id.clone());
        if n.node_id == node_id {
            continue;
        }
        let st = n.lock();
        for c in st.active.values() {
            if !c.target_service_id.is_empty() {
                *out.entry(c.target_service_id.clone()).or_default() += 1;
            }
        }
    }
    let mirror = hub.inner.mirror();
    for c in mirror.connections.values() {
        if c.status == ConnectionStatus::Active
            && !c.target_service_id.is_empty()
            && c.node_id != node_id
            && !local.contains(&c.node_id)
        {
            *out.entry(c.target_service_id.clone()).or_default() += 1;
        }
    }
    out
}

/// The candidates of one report (`None` when it carries no peak figures). Call it before
/// taking the hub's report lock.
pub(crate) fn from_report(hub: &Hub, node_id: &str, report: &pb::Report) -> Option<Candidates> {
    let any = report.peak_connections > 0 || report.counters.iter().any(|c| c.peak_connections > 0);
    if !any {
        return None;
    }
    let others = others(hub, node_id);
    Some(candidates(
        report
            .counters
            .iter()
            .map(|c| (c.service_id.as_str(), c.peak_connections)),
        report.peak_connections,
        &others,
    ))
}

/// Writes the replica's record if it rose since the last write (with the flusher's counters).
pub(crate) async fn flush(hub: &Hub) {
    let store = &hub.inner.ctx.store;
    let replica = hub.inner.ctx.replica_id.to_string();
    let needs_load = {
        let p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        if !p.peaks.dirty() {
            return;
        }
        !p.peaks.loaded
    };
    if needs_load {
        // The same replica id after a restart: never write lower figures than it stored.
        match json::get::<PeakRecord>(store, &key(&replica)).await {
            Ok(stored) => {
                let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((r, _)) = stored {
                    p.peaks.record.merge(&r);
                }
                p.peaks.loaded = true;
            }
            Err(e) => {
                warn!(error = %e, "stats: cannot read the peak record; will retry");
                return;
            }
        }
    }
    let (mut record, generation) = {
        let p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        (p.peaks.record.clone(), p.peaks.generation)
    };
    record.replica_id = replica.clone();
    record.updated_at = Some(Utc::now());
    let value = match json::encode(&record) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "stats: cannot encode the peak record");
            return;
        }
    };
    match store.put(&key(&replica), value, None).await {
        Ok(_) => {
            let mut p = hub.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
            p.peaks.written = p.peaks.written.max(generation);
        }
        Err(e) => warn!(error = %e, "stats: cannot write the peak record; will retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_add_the_other_proxies_open_connections() {
        let others = HashMap::from([("a".to_string(), 3), ("b".to_string(), 1)]);
        // Two connections opened and closed on this proxy between two reports, while three
        // stayed open elsewhere: five were open at once.
        let c = candidates([("a", 2), ("c", 1), ("d", 0), ("", 4)], 3, &others);
        assert_eq!(c.services, vec![("a".into(), 5), ("c".into(), 1)]);
        assert_eq!(c.cluster, 3 + 4);
        // No node figure (an older proxy): no cluster candidate.
        assert_eq!(candidates([("a", 1)], 0, &others).cluster, 0);
        assert_eq!(
            candidates([], 2, &HashMap::new()),
            Candidates {
                services: vec![],
                cluster: 2
            }
        );
    }

    #[test]
    fn records_keep_the_highest_and_roll_over_the_day() {
        let mut r = PeakRecord::default();
        let c = |a: u64, cluster: u64| Candidates {
            services: vec![("a".into(), a)],
            cluster,
        };
        assert!(r.observe("2026-11-26", &c(2, 2)));
        assert!(!r.observe("2026-11-26", &c(1, 1)));
        assert!(r.observe("2026-11-26", &c(3, 2)));
        assert_eq!((r.today, r.services["a"]), (2, 3));
        // A new day starts today's peak afresh; the all-time service peak stays.
        assert!(r.observe("2026-11-27", &c(1, 1)));
        assert_eq!(
            (r.day.as_str(), r.today, r.services["a"]),
            ("2026-11-27", 1, 3)
        );

        let mut older = PeakRecord {
            day: "2026-11-26".into(),
            today: 9,
            services: BTreeMap::from([("a".into(), 7), ("b".into(), 1)]),
            ..PeakRecord::default()
        };
        r.merge(&older);
        assert_eq!((r.day.as_str(), r.today), ("2026-11-27", 1));
        assert_eq!((r.services["a"], r.services["b"]), (7, 1));
        older.merge(&r);
        assert_eq!((older.day.as_str(), older.today), ("2026-11-27", 1));

        let recs = vec![r.clone(), older, PeakRecord::default()];
        assert_eq!(service_peak(&recs, "a"), 7);
        assert_eq!(service_peak(&recs, "zz"), 0);
        assert_eq!(today_peak(&recs, "2026-11-27"), 1);
        assert_eq!(today_peak(&recs, "2026-11-28"), 0);
    }

    #[test]
    fn tracker_is_dirty_until_written() {
        let mut t = Tracker::default();
        assert!(!t.dirty());
        let now = Utc::now();
        t.observe(
            now,
            &Candidates {
                services: vec![("a".into(), 1)],
                cluster: 1,
            },
        );
        assert!(t.dirty());
        t.written = t.generation;
        assert!(!t.dirty());
        t.observe(
            now,
            &Candidates {
                services: vec![("a".into(), 1)],
                cluster: 1,
            },
        );
        assert!(!t.dirty(), "nothing rose");
    }
}
