//! The replay window: client data frames sent to the agent and not yet answered, kept so that
//! a failover can send them again to the next service (at-least-once delivery).
//!
//! The frames are copied into one reused buffer rather than kept as views of the client's read
//! buffer: a view would keep that buffer shared until the answer came, so every read would
//! need a new one (two allocations and two frees per message, more than the copy costs).

use std::collections::VecDeque;

use super::ws::{Message, Utf8Bytes};

/// Beyond this, an emptied buffer is given back rather than kept for the next frames.
const KEEP: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct ReplayWindow {
    /// The frames' bytes, back to back; those before `start` were acknowledged.
    bytes: Vec<u8>,
    start: usize,
    /// Each frame: is it text, and its length.
    frames: VecDeque<(bool, usize)>,
    max_frames: usize,
    max_bytes: usize,
}

impl ReplayWindow {
    /// A window of at most `max_frames` frames and `max_bytes` bytes; past either bound the
    /// oldest frames count as delivered.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        ReplayWindow {
            max_frames,
            max_bytes,
            ..Self::default()
        }
    }

    /// Keeps a copy of a data frame just sent (anything else is not replayed).
    pub fn push(&mut self, m: &Message) {
        let (text, data) = match m {
            Message::Text(t) => (true, t.as_bytes()),
            Message::Binary(b) => (false, &b[..]),
            _ => return,
        };
        if data.len() > self.max_bytes || self.max_frames == 0 {
            // Too big to keep: it and everything before it count as delivered.
            self.clear();
            return;
        }
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
        self.frames.push_back((text, data.len()));
        while self.frames.len() > self.max_frames || self.bytes.len() - self.start > self.max_bytes
        {
            self.ack();
        }
    }

    /// One answer from the agent: the oldest frame counts as delivered.
    pub fn ack(&mut self) {
        if let Some((_, n)) = self.frames.pop_front() {
            self.start += n;
        }
        if self.frames.is_empty() {
            self.clear();
        }
    }

    /// The frames still unanswered, oldest first; the window is empty afterwards.
    pub fn take(&mut self) -> Vec<Message> {
        let mut at = self.start;
        let out = self
            .frames
            .drain(..)
            .filter_map(|(text, n)| {
                let data = self.bytes[at..at + n].to_vec();
                at += n;
                if text {
                    // Checked UTF-8 when it was received.
                    Utf8Bytes::try_from(data).ok().map(Message::Text)
                } else {
                    Some(Message::Binary(data.into()))
                }
            })
            .collect();
        self.clear();
        out
    }

    /// Gives the buffer back while nothing is unanswered (an idle connection holds none).
    pub fn release_idle(&mut self) {
        if self.frames.is_empty() {
            self.bytes = Vec::new();
            self.frames = VecDeque::new();
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes.clear();
        self.start = 0;
        if self.bytes.capacity() > KEEP {
            self.bytes = Vec::new();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(ms: &[Message]) -> Vec<String> {
        ms.iter()
            .map(|m| match m {
                Message::Text(t) => format!("t:{}", t.as_str()),
                Message::Binary(b) => format!("b:{}", String::from_utf8_lossy(b)),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn unanswered_frames_come_back_in_order_with_their_kind() {
        let mut w = ReplayWindow::new(10, 1000);
        w.push(&Message::text("one"));
        w.push(&Message::Binary(b"two".to_vec().into()));
        w.push(&Message::Ping(b"not kept".to_vec().into()));
        w.push(&Message::text("three"));
        w.ack();
        assert_eq!(texts(&w.take()), ["b:two", "t:three"]);
        assert!(w.take().is_empty());
    }

    #[test]
    fn the_bounds_drop_the_oldest_frames() {
        let mut w = ReplayWindow::new(2, 10);
        for s in ["a", "b", "c"] {
            w.push(&Message::text(s));
        }
        assert_eq!(texts(&w.take()), ["t:b", "t:c"]);
        w.push(&Message::text("12345"));
        w.push(&Message::text("6789"));
        w.push(&Message::text("ab"));
        assert_eq!(texts(&w.take()), ["t:6789", "t:ab"]);
        // A frame over the byte bound is not kept, nor is anything before it.
        w.push(&Message::text("x"));
        w.push(&Message::text("01234567890"));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_buffer_is_reused_and_compacted() {
        let mut w = ReplayWindow::new(100, 1 << 20);
        for i in 0..1000 {
            w.push(&Message::text(format!("m{i}")));
            w.push(&Message::text(format!("n{i}")));
            w.ack();
        }
        // One frame stays unanswered per round, up to the bound (the last answer leaves 99);
        // the buffer holds about the unanswered frames only.
        assert_eq!(w.len(), 99);
        assert!(w.bytes.len() - w.start < 1000 && w.bytes.len() < 2500);
        let back = w.take();
        assert_eq!(texts(&back[97..]), ["t:m999", "t:n999"]);
        w.release_idle();
        assert_eq!(w.bytes.capacity(), 0);
    }
}
