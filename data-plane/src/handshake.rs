//! The HTTP/1.1 side of the client listener: one request head read (bounded in size and time),
//! parsed with `httparse`, answered either with an error (and the connection closed) or, once
//! the connection is routed, with `101 Switching Protocols` written together with the first
//! WebSocket frames.

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most request headers accepted.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// Bytes of the read buffer the head took (the rest already belongs to the connection).
    pub len: usize,
}

/// Why no request head could be had.
#[derive(Debug)]
pub enum HeadError {
    /// The peer went away or the read failed: nothing to answer.
    Gone,
    /// Not HTTP, or too large: answered with this status and message.
    Bad(StatusCode, String),
}

/// Reads until one whole request head is in `buf`.
pub async fn read_head<S>(io: &mut S, buf: &mut BytesMut) -> Result<Head, HeadError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(head) = parse(buf)? {
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("Request head is larger than {MAX_HEAD_BYTES} bytes"),
            ));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(_) => {}
        }
    }
}

fn bad(msg: impl Into<String>) -> HeadError {
    HeadError::Bad(StatusCode::BAD_REQUEST, msg.into())
}

fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("More than {MAX_HEADERS} request headers"),
            ))
        }
        Err(e) => return Err(bad(format!("Malformed HTTP request: {e}"))),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("Malformed HTTP method"))?;
    let uri: Uri = req
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("Malformed request target"))?;
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("Malformed header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| bad(format!("Malformed value of header {:?}", h.name)))?;
        map.append(name, value);
    }
    Ok(Some(Head {
        method,
        uri,
        headers: map,
        len,
    }))
}

/// An error answered before the upgrade, in the seed's error shape.
#[derive(Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// An extra response header line (`Name: value`).
    pub header: Option<&'static str>,
}

impl Reject {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Reject {
            status,
            code,
            message: message.into(),
            field: None,
            header: None,
        }
    }

    pub fn header(mut self, line: &'static str) -> Self {
        self.header = Some(line);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The whole HTTP response.
    fn to_bytes(&self) -> Vec<u8> {
        let mut details = json!({ "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true) });
        if let Some(f) = &self.field {
            details["field"] = json!(f);
        }
        let body = json!({"success": false, "error": {"code": self.code, "message": self.message, "details": details}})
            .to_string();
        let extra = self.header.map(|h| format!("{h}\r\n")).unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

/// Answers `reject` and closes: the write side first, then what the client still sends is
/// read away (bounded) so that closing does not reset the connection under the answer.
pub async fn reject<S>(io: &mut S, reject: &Reject)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.write_all(&reject.to_bytes()).await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = crate::timer::timeout(Duration::from_secs(1), async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The `101 Switching Protocols` response for `accept` (the derived Sec-WebSocket-Accept).
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_partially_then_whole() {
        let req = b"GET /ws?tag=a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nrest";
        assert!(parse(&req[..20]).unwrap().is_none());
        let h = parse(req).unwrap().unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/ws");
        assert_eq!(h.uri.query(), Some("tag=a"));
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&req[h.len..], b"rest");
    }

    #[test]
    fn garbage_is_a_400() {
        match parse(b"\x16\x03\x01\x00garbage\r\n\r\n") {
            Err(HeadError::Bad(s, _)) => assert_eq!(s, StatusCode::BAD_REQUEST),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_carry_the_seed_error_shape() {
        let r = Reject::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "bad").field("tag");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "INVALID_REQUEST");
        assert_eq!(v["error"]["details"]["field"], "tag");
        assert_eq!(v["success"], false);
        let r = Reject::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "v")
            .header("Sec-WebSocket-Version: 13");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(
            text.contains("\r\nSec-WebSocket-Version: 13\r\n\r\n{"),
            "{text}"
        );
    }
}
