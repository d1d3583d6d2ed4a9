//! Watch fan-out for the embedded store: a bounded history of recent event batches (so a
//! watcher can start from a past revision) and one bounded channel per watcher.
//!
//! Nothing here is unbounded: the history keeps at most `MAX_HISTORY_EVENTS` events, and a
//! watcher that falls `WATCH_BUFFER` batches behind is cut off with `Error::Compacted`, the
//! same answer etcd gives for a revision it no longer has, so callers resync with one code path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::store::{Revision, WatchEvent, WatchStream};

/// Events kept for watchers that start from a past revision.
pub(crate) const MAX_HISTORY_EVENTS: usize = 10_000;
/// Batches a live watcher may have pending before it is cut off.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// Set when a watcher was dropped for lagging: (revision it missed, oldest revision kept).
type LagSlot = Arc<Mutex<Option<(Revision, Revision)>>>;

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Vec<WatchEvent>>,
    lagged: LagSlot,
}

pub(crate) struct Hub {
    history: VecDeque<(Revision, Arc<Vec<WatchEvent>>)>,
    history_events: usize,
    /// Every write with a revision >= `oldest` is in `history`.
    oldest: Revision,
    watchers: Vec<Watcher>,
}

fn matching(events: &[WatchEvent], prefix: &str) -> Vec<WatchEvent> {
    events
        .iter()
        .filter(|e| e.key().starts_with(prefix))
        .cloned()
        .collect()
}

impl Hub {
    /// A hub whose history starts after `revision` (the store's revision when it was opened).
    pub(crate) fn new(revision: Revision) -> Self {
        Hub {
            history: VecDeque::new(),
            history_events: 0,
            oldest: revision + 1,
            watchers: Vec::new(),
        }
    }

    /// Records the events of the write at `revision` and hands them to every matching watcher.
    pub(crate) fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) {
        let events = Arc::new(events);
        self.history_events += events.len();
        self.history.push_back((revision, events.clone()));
        while self.history_events > MAX_HISTORY_EVENTS && self.history.len() > 1 {
            if let Some((rev, dropped)) = self.history.pop_front() {
                self.history_events -= dropped.len();
                self.oldest = rev + 1;
            }
        }
        let oldest = self.oldest;
        self.watchers.retain(|w| {
            let batch = matching(&events, &w.prefix);
            if batch.is_empty() {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(batch) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(prefix = %w.prefix, revision, "watcher lagged behind; cutting it off so it resyncs");
                    if let Ok(mut slot) = w.lagged.lock() {
                        *slot = Some((revision, oldest));
                    }
                    false
                }
            }
        });
    }

    /// Drops history before `revision` (etcd's compaction, for callers and tests).
    pub(crate) fn compact(&mut self, revision: Revision) {
        while self.history.front().is_some_and(|(rev, _)| *rev < revision) {
            if let Some((_, dropped)) = self.history.pop_front() {
                self.history_events -= dropped.len();
            }
        }
        self.oldest = self.oldest.max(revision);
    }

    /// A stream of the batches under `prefix` from `from` (0 = the next write), replaying the
    /// history first. `current` is the store's revision now.
    pub(crate) fn subscribe(
        &mut self,
        prefix: &str,
        from: Revision,
        current: Revision,
    ) -> Result<WatchStream, Error> {
        let start = if from <= 0 { current + 1 } else { from };
        if start < self.oldest {
            return Err(Error::Compacted {
                requested: from,
                oldest: self.oldest,
            });
        }
        let replay: Vec<_> = self
            .history
            .iter()
            .filter(|(rev, _)| *rev >= start)
            .map(|(_, events)| matching(events, prefix))
            .filter(|b| !b.is_empty())
            .map(Ok)
            .collect();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged: LagSlot = Arc::default();
        self.watchers.push(Watcher {
            prefix: prefix.to_string(),
            tx,
            lagged: lagged.clone(),
        });
        let live = futures::stream::unfold(Some((rx, lagged)), |state| async move {
            let (mut rx, lagged) = state?;
            match rx.recv().await {
                Some(batch) => Some((Ok(batch), Some((rx, lagged)))),
                None => {
                    let lag = lagged.lock().ok().and_then(|mut s| s.take());
                    let err = match lag {
                        Some((requested, oldest)) => Error::Compacted { requested, oldest },
                        None => Error::StoreUnavailable("embedded store closed".into()),
                    };
                    Some((Err(err), None))
                }
            }
        });
        Ok(futures::stream::iter(replay).chain(live).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, rev: Revision) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        })
    }

    #[tokio::test]
    async fn history_is_bounded_and_old_starts_are_compacted() {
        let mut hub = Hub::new(0);
        let per_batch = 1000;
        for rev in 1..=12 {
            hub.publish(
                rev,
                (0..per_batch).map(|i| put(&format!("k{i}"), rev)).collect(),
            );
        }
        assert!(hub.history_events <= MAX_HISTORY_EVENTS);
        assert!(matches!(
            hub.subscribe("", 1, 12),
            Err(Error::Compacted { requested: 1, .. })
        ));
        let oldest = hub.oldest;
        let mut w = hub.subscribe("k1", oldest, 12).unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert!(first
            .iter()
            .all(|e| e.key().starts_with("k1") && e.revision() == oldest));
    }

    #[tokio::test]
    async fn closed_watchers_are_dropped() {
        let mut hub = Hub::new(0);
        let w = hub.subscribe("", 0, 0).unwrap();
        drop(w);
        hub.publish(1, vec![put("a", 1)]);
        assert!(hub.watchers.is_empty());
    }
}
