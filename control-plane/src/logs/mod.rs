//! Agent and manager logs: capture, on-disk storage with rotation, query, search, follow.
//!
//! Logs are written where the processes run — the leader — under `<data_dir>/logs/<service_id>/`.
//! The leader answers queries from its disk; any other replica forwards Logs calls to it
//! (`forward`), so every replica answers the same. After a failover the new leader's disk holds
//! the logs from its own term only: lines captured under an earlier leader stay on that
//! replica's disk (readable there, or by asking it while it leads again).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

mod files;
pub mod forward;
pub mod level;

pub use level::{Level, Source};

/// Longest line kept; longer output is cut (agents sometimes dump whole payloads).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// One captured line or manager event, as stored (one JSON object per line on disk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub level: Level,
    pub source: Source,
    pub message: String,
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    /// Capture order within this process's lifetime (de-duplicates tail and live follow).
    #[serde(default)]
    pub seq: u64,
}

/// Rotation and retention: each service keeps at most `max_files` files of `max_file_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub max_file_bytes: u64,
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// What `query` returns: matching entries and how many matched before `limit`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub min_level: Option<Level>,
    pub since: Option<DateTime<Utc>>,
    /// Newest `limit` matches are kept (returned oldest first).
    pub limit: usize,
}

/// Shared handle to the log store of this replica.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cfg: LogConfig,
    // Held only for a synchronous file append, never across an await.
    writers: Mutex<HashMap<String, files::Writer>>,
    seq: AtomicU64,
    live: broadcast::Sender<Arc<LogEntry>>,
}

/// Service ids become directory names: refuse anything that could leave the log directory.
fn check_id(service_id: &str) -> Result<()> {
    let ok = !service_id.is_empty()
        && service_id.len() <= 128
        && service_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && service_id != "."
        && service_id != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("service_id", "invalid service id"))
    }
}

impl LogHub {
    pub fn open(dir: impl Into<PathBuf>, cfg: LogConfig) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("create log dir {}: {e}", dir.display())))?;
        let (live, _) = broadcast::channel(4096);
        Ok(LogHub {
            inner: Arc::new(Inner {
                dir,
                cfg,
                writers: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
                live,
            }),
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    /// Records one output line of a managed process; the level is parsed from the line.
    pub fn capture(&self, service_id: &str, service_name: &str, source: Source, line: &str) {
        let level = level::detect(line, source);
        self.write(service_id, service_name, level, source, line);
    }

    /// Records an event of the manager about a service (source `manager`).
    pub fn manager(&self, service_id: &str, service_name: &str, level: Level, message: &str) {
        self.write(service_id, service_name, level, Source::Manager, message);
    }

    fn write(
        &self,
        service_id: &str,
        service_name: &str,
        level: Level,
        source: Source,
        line: &str,
    ) {
        if check_id(service_id).is_err() {
            return;
        }
        let mut message = line.trim_end_matches(['\r', '\n']).to_string();
        if message.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …[truncated]");
        }
        // Stamped under the writers' lock: the stdout and stderr readers and the manager write
        // concurrently, and a file (and the live feed) must be in timestamp order.
        let mut writers = self
            .inner
            .writers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = LogEntry {
            timestamp: Utc::now(),
            level,
            source,
            message,
            service_id: service_id.to_string(),
            service_name: service_name.to_string(),
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        match serde_json::to_vec(&entry) {
            Ok(bytes) => {
                if let Err(e) = self.append(&mut writers, service_id, &bytes) {
                    tracing::warn!(service = service_id, error = %e, "cannot write log line");
                }
            }
            Err(e) => tracing::warn!(service = service_id, error = %e, "cannot encode log line"),
        }
        // No subscribers is the normal case; the error only says so.
        let _ = self.inner.live.send(Arc::new(entry));
    }

    fn append(
        &self,
        writers: &mut HashMap<String, files::Writer>,
        service_id: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if !writers.contains_key(service_id) {
            let w = files::Writer::open(self.inner.dir.join(service_id))?;
            writers.insert(service_id.to_string(), w);
        }
        let cfg = self.inner.cfg;
        match writers.get_mut(service_id) {
            Some(w) => w.append(bytes, cfg.max_file_bytes, cfg.max_files),
            None => Ok(()),
        }
    }

    /// Live entries of every service (filter on the receiving side).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogEntry>> {
        self.inner.live.subscribe()
    }

    /// A service's entries at `min_level` and above, newer than `since`; the newest `limit`
    /// oldest first, plus the number of matches before the limit.
    pub async fn query(&self, service_id: &str, q: LogQuery) -> Result<(Vec<LogEntry>, u64)> {
        check_id(service_id)?;
        let dir = self.inner.dir.join(service_id);
        run_blocking(move || {
            let mut kept = VecDeque::with_capacity(q.limit.min(10_000));
            let mut total = 0u64;
            files::for_each_entry(&dir, |e| {
                if q.min_level.is_some_and(|l| e.level < l)
                    || q.since.is_some_and(|s| e.timestamp < s)
                {
                    return;
                }
                total += 1;
                if q.limit == 0 {
                    return;
                }
                if kept.len() == q.limit {
                    kept.pop_front();
                }
                kept.push_back(e);
            });
            (kept.into_iter().collect(), total)
        })
        .await
    }

    /// Case-insensitive substring search in one service (`service_id`) or all of them; the
    /// newest `limit` matches, oldest first, plus the number of matches before the limit.
    pub async fn search(
        &self,
        query: &str,
        service_id: Option<&str>,
        min_level: Option<Level>,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64)> {
        let dirs: Vec<PathBuf> = match service_id {
            Some(id) => {
                check_id(id)?;
                vec![self.inner.dir.join(id)]
            }
            None => match std::fs::read_dir(&self.inner.dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        let needle = query.to_lowercase();
        run_blocking(move || {
            let mut all = Vec::new();
            for dir in dirs {
                files::for_each_entry(&dir, |e| {
                    if min_level.is_some_and(|l| e.level < l) {
                        return;
                    }
                    if e.message.to_lowercase().contains(&needle) {
                        all.push(e);
                    }
                });
            }
            let total = all.len() as u64;
            all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then(a.seq.cmp(&b.seq)));
            let skip = all.len().saturating_sub(limit);
            (all.split_off(skip), total)
        })
        .await
    }
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("log reader task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(dir: &std::path::Path, cfg: LogConfig) -> LogHub {
        LogHub::open(dir.join("logs"), cfg).unwrap()
    }

    /// The newest `limit` lines of a service, any level, oldest first; and the total.
    async fn newest(h: &LogHub, service_id: &str, limit: usize) -> (Vec<LogEntry>, u64) {
        let q = LogQuery {
            limit,
            ..Default::default()
        };
        h.query(service_id, q).await.unwrap()
    }

    #[tokio::test]
    async fn concurrent_writers_keep_a_file_in_time_order() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path(), LogConfig::default());
        // The stdout and stderr readers and the manager write at the same time.
        std::thread::scope(|s| {
            for source in [Source::Stdout, Source::Stderr, Source::Stdout] {
                let h = &h;
                s.spawn(move || {
                    for i in 0..300 {
                        h.capture("svc1", "one", source, &format!("line {i}"));
                    }
                });
            }
        });
        let (all, total) = newest(&h, "svc1", 1000).await;
        assert_eq!((total, all.len()), (900, 900));
        assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    }

    #[tokio::test]
    async fn query_filters_by_level_and_keeps_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path(), LogConfig::default());
        for i in 0..10 {
            h.capture("svc1", "one", Source::Stdout, &format!("INFO line {i}"));
        }
        h.capture("svc1", "one", Source::Stderr, "ERROR boom");
        h.manager("svc1", "one", Level::Warn, "restarting");
        let (all, total) = newest(&h, "svc1", 100).await;
        assert_eq!(total, 12);
        assert_eq!(all.len(), 12);
        let (warn_up, _) = h
            .query(
                "svc1",
                LogQuery {
                    min_level: Some(Level::Warn),
                    limit: 100,
                    since: None,
                },
            )
            .await
            .unwrap();
        let msgs: Vec<_> = warn_up.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, vec!["ERROR boom", "restarting"]);
        assert_eq!(warn_up[1].source, Source::Manager);
        let (last3, total) = newest(&h, "svc1", 3).await;
        assert_eq!(total, 12);
        assert_eq!(last3[0].message, "INFO line 9");
        assert_eq!(last3[2].message, "restarting");
    }

    #[tokio::test]
    async fn rotation_bounds_files_and_keeps_recent_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(
            tmp.path(),
            LogConfig {
                max_file_bytes: 2_000,
                max_files: 3,
            },
        );
        for i in 0..200 {
            h.capture(
                "svc2",
                "two",
                Source::Stdout,
                &format!("message number {i:04}"),
            );
        }
        let files = files::files_oldest_first(&h.dir().join("svc2"));
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 2_000);
        }
        let (entries, _) = newest(&h, "svc2", 1000).await;
        assert!(entries.len() < 200, "old files were dropped");
        assert_eq!(entries.last().unwrap().message, "message number 0199");
        // Oldest first, contiguous.
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }

    #[tokio::test]
    async fn search_is_case_insensitive_across_services() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path(), LogConfig::default());
        h.capture("a", "alpha", Source::Stdout, "Connection TIMEOUT to db");
        h.capture("b", "beta", Source::Stdout, "timeout again");
        h.capture("b", "beta", Source::Stdout, "all good");
        let (hits, total) = h.search("timeout", None, None, 50).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].service_name, "alpha");
        let (hits, _) = h.search("TIMEOUT", Some("b"), None, 50).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message, "timeout again");
        let (hits, total) = h.search("timeout", None, None, 1).await.unwrap();
        assert_eq!((hits.len(), total), (1, 2));
        assert_eq!(hits[0].service_id, "b", "newest kept");
    }

    #[tokio::test]
    async fn ids_cannot_escape_the_log_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path(), LogConfig::default());
        assert!(h.query("../etc", LogQuery::default()).await.is_err());
        h.capture("../x", "x", Source::Stdout, "nope");
        assert!(!tmp.path().join("x").exists());
    }

    #[tokio::test]
    async fn subscribers_see_new_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path(), LogConfig::default());
        let mut rx = h.subscribe();
        h.capture("s", "s", Source::Stderr, "level=error oops");
        let e = rx.recv().await.unwrap();
        assert_eq!(e.level, Level::Error);
        assert_eq!(e.source, Source::Stderr);
    }
}
