//! The `proxy_metadata` envelope around client→agent text frames (seed §2.2), written around
//! the client's raw JSON bytes: the message's syntax is checked ([`crate::json`]), never parsed
//! into a tree and re-serialised. Buffers are reused across messages.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Per-connection envelope writer: the constant parts are rendered once.
#[derive(Debug)]
pub struct Envelope {
    /// `{"proxy_metadata":{"connection_id":..,"target_service":..,"routing_strategy":..,"timestamp":"`
    head: Vec<u8>,
    /// `","session_id":".."},"original_message":`
    mid: Vec<u8>,
    buf: BytesMut,
}

fn json_str(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

impl Envelope {
    pub fn new(
        connection_id: &str,
        target_service: &str,
        routing_strategy: &str,
        session_id: &str,
    ) -> Self {
        let head = format!(
            "{{\"proxy_metadata\":{{\"connection_id\":{},\"target_service\":{},\"routing_strategy\":{},\"timestamp\":\"",
            json_str(connection_id),
            json_str(target_service),
            json_str(routing_strategy)
        )
        .into_bytes();
        let mid = format!(
            "\",\"session_id\":{}}},\"original_message\":",
            json_str(session_id)
        )
        .into_bytes();
        Envelope {
            head,
            mid,
            buf: BytesMut::new(),
        }
    }

    /// The envelope of one client text message as three pieces to write one after the other
    /// (straight into the outgoing frame, no copy of the message): JSON goes in as-is, anything
    /// else as a JSON string.
    pub fn parts<'a>(&'a mut self, text: &'a str) -> [&'a [u8]; 3] {
        self.buf.clear();
        self.buf.put_slice(&self.head);
        write_timestamp(&mut self.buf);
        self.buf.put_slice(&self.mid);
        match crate::json::value_span(text) {
            Some((start, end)) => [&self.buf[..], &text.as_bytes()[start..end], b"}"],
            None => {
                write_json_string(&mut self.buf, text);
                [&self.buf[..], b"}", b""]
            }
        }
    }

    /// The whole envelope of one message, in one buffer.
    pub fn wrap(&mut self, text: &str) -> Bytes {
        Bytes::from(self.parts(text).concat())
    }
}

fn write_json_string(buf: &mut BytesMut, s: &str) {
    let mut w = buf.writer();
    // Writing into memory cannot fail.
    let _ = serde_json::to_writer(&mut w, s);
}

thread_local! {
    /// (unix second, "YYYY-MM-DDTHH:MM:SSZ") — formatting a date costs more than relaying a
    /// small frame, so it happens once per second per thread.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// Appends the current time as RFC 3339 UTC in whole seconds, the seed's format
/// (`2024-01-01T10:30:00Z`, as every other timestamp the system writes).
pub fn write_timestamp(buf: &mut BytesMut) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let dt = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            let s = dt.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mut arr = [0u8; 20];
            let n = s.len().min(20);
            arr[..n].copy_from_slice(&s.as_bytes()[..n]);
            *c = (secs, arr);
        }
        buf.put_slice(&c.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn wraps_raw_json_exactly() {
        let mut e = Envelope::new("c1", "svc", "direct", "s1");
        let raw = r#"{"b":1,"a":[1.50,"x\u00e9"]}"#;
        let out = e.wrap(raw);
        let text = std::str::from_utf8(&out).unwrap();
        // The original bytes appear verbatim (no re-serialisation: 1.50 and \u00e9 kept).
        assert!(
            text.ends_with(&format!("\"original_message\":{raw}}}")),
            "{text}"
        );
        let v = parse(&out);
        assert_eq!(v["proxy_metadata"]["connection_id"], "c1");
        assert_eq!(v["proxy_metadata"]["target_service"], "svc");
        assert_eq!(v["proxy_metadata"]["routing_strategy"], "direct");
        assert_eq!(v["proxy_metadata"]["session_id"], "s1");
        let ts = v["proxy_metadata"]["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        // The seed's format exactly: `2024-01-01T10:30:00Z`.
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && !ts.contains('.'), "{ts}");
    }

    #[test]
    fn non_json_becomes_a_string_and_scalars_stay_json() {
        let mut e = Envelope::new("c\"1", "s", "round_robin", "x");
        let v = parse(&e.wrap("hello \"world\"\n"));
        assert_eq!(v["original_message"], "hello \"world\"\n");
        assert_eq!(v["proxy_metadata"]["connection_id"], "c\"1");
        assert_eq!(parse(&e.wrap("42"))["original_message"], 42);
        assert_eq!(
            parse(&e.wrap(" [1, 2] "))["original_message"],
            serde_json::json!([1, 2])
        );
        assert_eq!(
            parse(&e.wrap(r#"{"a":1} trailing"#))["original_message"],
            r#"{"a":1} trailing"#
        );
        assert_eq!(parse(&e.wrap(""))["original_message"], "");
    }

    #[test]
    fn many_messages_stay_well_formed() {
        let mut e = Envelope::new("c", "s", "direct", "x");
        let held: Vec<Bytes> = (0..1000)
            .map(|i| e.wrap(&format!("{{\"i\":{i}}}")))
            .collect();
        for (i, b) in held.iter().enumerate() {
            assert_eq!(parse(b)["original_message"]["i"], i);
        }
    }
}
