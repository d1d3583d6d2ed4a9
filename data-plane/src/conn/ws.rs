//! The relay's WebSocket endpoint (RFC 6455, no extensions), written for the relay path:
//! frames are parsed in place in one read buffer that is never zero-filled, payloads are handed
//! out as views of that buffer (no copy, no allocation per frame), and outgoing frames are
//! encoded straight into one write buffer that a single write flushes. Pings are answered and
//! closes are echoed like any conforming endpoint; what to relay is the caller's choice.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Which end of the WebSocket this is: a server reads masked frames and writes plain ones,
/// a client the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// One whole message. `Text` payloads are checked UTF-8 once, on receipt, and read as `&str`
/// from then on (`Utf8Bytes` is a `Bytes` that carries that proof).
#[derive(Debug, Clone)]
pub enum Message {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<CloseFrame>),
}

impl Message {
    pub fn text(s: impl Into<String>) -> Self {
        Message::Text(Utf8Bytes::from(s.into()))
    }

    pub fn close(code: u16, reason: &str) -> Self {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_string(),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("connection ended without a closing handshake")]
    Reset,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("Message of {size} bytes exceeds the limit of {max} bytes")]
    TooLong { size: u64, max: usize },
    #[error("Text frame is not valid UTF-8")]
    Utf8,
    #[error("{0}")]
    Protocol(&'static str),
}

/// Size limits of one endpoint (`--max-frame-bytes`, `--max-message-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    /// A fragmented message as a whole; never below `max_frame`.
    pub max_message: usize,
}

/// Spare room made before a socket read: it starts small (an idle connection holds little, and
/// the allocator serves small buffers from its fast per-thread caches)
/// and doubles, up to the maximum, whenever a read fills it (a busy one takes many frames per
/// read). Reads never zero-fill it, so a large chunk costs only what a read fills.
const READ_CHUNK_MIN: usize = 1024;
/// The stack buffer of a read made with no read buffer.
const FIRST_READ: usize = 512;
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Pending output beyond which `poll_ready` waits for the socket (backpressure).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// A write buffer grown past this by a burst is given back once it drains.
const WRITE_KEEP: usize = 256 * 1024;

pub struct WsStream<S> {
    io: S,
    role: Role,
    limits: Limits,
    rbuf: BytesMut,
    read_chunk: usize,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    wpos: usize,
    /// A fragmented message being assembled: its opcode and the payload so far.
    frag: Option<(u8, BytesMut)>,
    close_received: bool,
    close_sent: bool,
    /// A pong or close echo waits in `wbuf`.
    reply_queued: bool,
    /// Reading failed (protocol error, reset): nothing more is read.
    failed: bool,
    /// Mask keys of a client endpoint (xorshift64*, seeded at random per connection).
    mask_state: u64,
    /// Pings are answered here; off on a relay, which passes them to the other side.
    auto_pong: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// `read` holds bytes already read past the handshake (the start of the first frames).
    pub fn new(io: S, role: Role, limits: Limits, read: &[u8]) -> Self {
        let mut rbuf = BytesMut::new();
        rbuf.extend_from_slice(read);
        WsStream {
            io,
            role,
            limits: Limits {
                max_frame: limits.max_frame,
                max_message: limits.max_message.max(limits.max_frame),
            },
            rbuf,
            read_chunk: READ_CHUNK_MIN,
            wbuf: Vec::new(),
            wpos: 0,
            frag: None,
            close_received: false,
            close_sent: false,
            reply_queued: false,
            failed: false,
            mask_state: rand::random::<u64>() | 1,
            auto_pong: true,
        }
    }

    /// Whether a ping is answered by this endpoint (the default) or only reported, for the
    /// caller to relay.
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Queues bytes to go out ahead of the next frames (the `101` of the handshake).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    // ------------------------------------------------------------------ reading

    /// The next message. Pings are answered and a close is echoed (the answers go out with the
    /// next write or read). `None` once the closing handshake is complete.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        loop {
            // A pong or close echo queued by a read goes out even if the caller writes
            // nothing; relayed frames wait for the caller's flush, to be written in batches.
            if self.reply_queued {
                match self.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => self.reply_queued = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => {}
                }
            }
            if self.close_received || self.failed {
                if !self.close_sent {
                    // Failed: the caller queues its close next (its own poll wakes us).
                    return Poll::Pending;
                }
                // Done once our close (the echo, or our own) is out.
                return match self.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(None),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
            match self.parse() {
                Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                Ok(None) => {}
                Err(e) => return self.fail(e),
            }
            let read = if self.rbuf.capacity() == 0 {
                self.poll_read_first(cx)
            } else {
                // Room for a good read: compacts the buffer, or replaces it while earlier
                // payloads still point into it. Reads go on into the tail of the current buffer
                // as long as it has half a chunk left, so small messages do not cost an
                // allocation each.
                if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
                    self.rbuf.reserve(self.read_chunk);
                }
                let room = self.rbuf.capacity() - self.rbuf.len();
                let read =
                    tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf);
                if matches!(read, Poll::Ready(Ok(n)) if n == room) {
                    self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                }
                read
            };
            match read {
                Poll::Ready(Ok(0)) if self.close_sent => return Poll::Ready(None),
                Poll::Ready(Ok(0)) => return self.fail(WsError::Reset),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return self.fail(e.into()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// A read with no read buffer (a new connection, or one idle long enough to give its
    /// buffers back): into the stack first, so a connection holds no read buffer while it
    /// waits; the buffer is made when bytes arrive.
    fn poll_read_first(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut rb = ReadBuf::uninit(&mut first);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                if !got.is_empty() {
                    self.rbuf.reserve(self.read_chunk.max(got.len()));
                    self.rbuf.extend_from_slice(got);
                }
                Poll::Ready(Ok(got.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives back the read and write buffers if nothing is in them (called when the connection
    /// has been idle for a while): an idle connection then costs no buffer memory.
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
            self.read_chunk = READ_CHUNK_MIN;
        }
        if self.wpos == self.wbuf.len() && self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
    }

    /// Reports a read error once; afterwards the stream only finishes sending its close.
    fn fail(&mut self, e: WsError) -> Poll<Option<Result<Message, WsError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(e)))
    }

    /// Takes complete frames off the read buffer until one finishes a message.
    fn parse(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let buf = &self.rbuf[..];
            if buf.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (buf[0], buf[1]);
            if b0 & 0x70 != 0 {
                return Err(WsError::Protocol(
                    "Reserved bits are set (no extension agreed)",
                ));
            }
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0f;
            let masked = b1 & 0x80 != 0;
            match (self.role, masked) {
                (Role::Server, false) => {
                    return Err(WsError::Protocol("Client frames must be masked"))
                }
                (Role::Client, true) => {
                    return Err(WsError::Protocol("Server frames must not be masked"))
                }
                _ => {}
            }
            let (len, mut at) = match b1 & 0x7f {
                126 => match buf.get(2..4) {
                    Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                    None => return Ok(None),
                },
                127 => match buf.get(2..10) {
                    Some(b) => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        (u64::from_be_bytes(a), 10)
                    }
                    None => return Ok(None),
                },
                n => (u64::from(n), 2),
            };
            if op >= 8 {
                if !fin {
                    return Err(WsError::Protocol("Control frames must not be fragmented"));
                }
                if len > 125 {
                    return Err(WsError::Protocol("Control frame payload over 125 bytes"));
                }
            }
            if len > self.limits.max_frame as u64 {
                return Err(WsError::TooLong {
                    size: len,
                    max: self.limits.max_frame,
                });
            }
            let len = len as usize;
            let mask = if masked {
                let Some(k) = buf.get(at..at + 4) else {
                    return Ok(None);
                };
                at += 4;
                Some([k[0], k[1], k[2], k[3]])
            } else {
                None
            };
            if buf.len() < at + len {
                // Room for the rest of the frame, so one more read can complete it.
                self.rbuf.reserve(at + len - buf.len());
                return Ok(None);
            }
            self.rbuf.advance(at);
            let mut payload = self.rbuf.split_to(len);
            if let Some(k) = mask {
                apply_mask(&mut payload, k);
            }
            match op {
                0x1 | 0x2 if self.frag.is_some() => {
                    return Err(WsError::Protocol(
                        "New data frame while a fragmented message is unfinished",
                    ))
                }
                0x1 | 0x2 if fin => return whole(op, payload).map(Some),
                0x1 | 0x2 => self.frag = Some((op, payload)),
                0x0 => {
                    let Some((first, mut acc)) = self.frag.take() else {
                        return Err(WsError::Protocol("Continuation frame without a message"));
                    };
                    let size = (acc.len() + payload.len()) as u64;
                    if size > self.limits.max_message as u64 {
                        return Err(WsError::TooLong {
                            size,
                            max: self.limits.max_message,
                        });
                    }
                    acc.extend_from_slice(&payload);
                    if fin {
                        return whole(first, acc).map(Some);
                    }
                    self.frag = Some((first, acc));
                }
                0x8 => {
                    let frame = parse_close(&payload)?;
                    self.close_received = true;
                    if !self.close_sent {
                        let echo = match &frame {
                            Some(f) => Message::close(f.code, ""),
                            None => Message::Close(None),
                        };
                        self.encode(&echo);
                        self.reply_queued = true;
                    }
                    return Ok(Some(Message::Close(frame)));
                }
                0x9 => {
                    let data = payload.freeze();
                    if !self.close_sent && self.auto_pong {
                        self.encode(&Message::Pong(data.clone()));
                        self.reply_queued = true;
                    }
                    return Ok(Some(Message::Ping(data)));
                }
                0xA => return Ok(Some(Message::Pong(payload.freeze()))),
                _ => return Err(WsError::Protocol("Unknown opcode")),
            }
        }
    }

    // ------------------------------------------------------------------ writing

    /// Ready to take a message unless too much output is pending.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.wbuf.len() - self.wpos < WRITE_HIGH_WATER {
            return Poll::Ready(Ok(()));
        }
        match self.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.wbuf.len() - self.wpos < WRITE_HIGH_WATER => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Queues one message (errors surface when it is written). Anything after our close frame
    /// is dropped (the protocol forbids it).
    pub fn start_send(&mut self, msg: Message) {
        if !self.close_sent {
            self.encode(&msg);
        }
    }

    /// Queues one text message given as pieces written one after the other (the envelope
    /// around a client's bytes), without joining them first.
    pub fn start_send_text_parts(&mut self, parts: &[&[u8]]) {
        if !self.close_sent {
            self.encode_frame(0x1, parts);
        }
    }

    /// Writes everything queued.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_flush(cx).map_err(WsError::from),
            other => other,
        }
    }

    /// Queues and writes one message.
    pub async fn send(&mut self, msg: Message) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await?;
        self.start_send(msg);
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Reads until the closing handshake completes or the connection ends.
    pub async fn finish(&mut self) {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| self.poll_next(cx)).await {}
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()))
                }
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > WRITE_KEEP {
            self.wbuf.shrink_to(READ_CHUNK_MAX);
        }
        Poll::Ready(Ok(()))
    }

    fn encode(&mut self, msg: &Message) {
        match msg {
            Message::Text(t) => self.encode_frame(0x1, &[t.as_bytes()]),
            Message::Binary(b) => self.encode_frame(0x2, &[b]),
            Message::Ping(b) => self.encode_frame(0x9, &[b]),
            Message::Pong(b) => self.encode_frame(0xA, &[b]),
            Message::Close(frame) => {
                self.close_sent = true;
                match frame {
                    Some(f) => {
                        let mut reason = f.reason.as_str();
                        // A close payload is at most 125 bytes: 2 for the code, 123 of reason.
                        while reason.len() > 123 {
                            let mut cut = 123;
                            while !reason.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            reason = &reason[..cut];
                        }
                        self.encode_frame(0x8, &[&f.code.to_be_bytes(), reason.as_bytes()])
                    }
                    None => self.encode_frame(0x8, &[]),
                }
            }
        }
    }

    /// One final frame of `parts` concatenated, masked when this is a client.
    fn encode_frame(&mut self, op: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mask_bit = if self.role == Role::Client { 0x80 } else { 0 };
        self.wbuf.reserve(14 + len);
        self.wbuf.push(0x80 | op);
        if len < 126 {
            self.wbuf.push(mask_bit | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.wbuf.push(mask_bit | 126);
            self.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.wbuf.push(mask_bit | 127);
            self.wbuf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let start = self.wbuf.len();
        if self.role == Role::Client {
            let key = self.next_mask();
            self.wbuf.extend_from_slice(&key);
            let start = start + 4;
            for p in parts {
                self.wbuf.extend_from_slice(p);
            }
            apply_mask(&mut self.wbuf[start..], key);
        } else {
            for p in parts {
                self.wbuf.extend_from_slice(p);
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_state = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 32) as u32).to_ne_bytes()
    }
}

fn whole(op: u8, payload: BytesMut) -> Result<Message, WsError> {
    let data = payload.freeze();
    if op == 0x1 {
        Ok(Message::Text(checked_text(data)?))
    } else {
        Ok(Message::Binary(data))
    }
}

fn parse_close(p: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("Close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(WsError::Protocol("Close frame with an invalid code"));
            }
            let reason = std::str::from_utf8(&p[2..]).map_err(|_| WsError::Utf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_string(),
            }))
        }
    }
}

/// A text payload checked to be UTF-8, with SIMD where the CPU has it (`simdutf8`: the
/// standard library's check was a quarter of the relay's instructions at 4 KiB messages).
#[allow(unsafe_code)]
fn checked_text(data: Bytes) -> Result<Utf8Bytes, WsError> {
    simdutf8::basic::from_utf8(&data).map_err(|_| WsError::Utf8)?;
    // SAFETY: `data` was checked to be UTF-8 on the line above, and `Bytes` is immutable.
    Ok(unsafe { Utf8Bytes::from_bytes_unchecked(data) })
}

/// XORs `buf` with the repeating 4-byte `key` (masking and unmasking are the same), 32 bytes
/// at a time: a fixed-size block XOR that the compiler turns into vector instructions.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    const BLOCK: usize = 32;
    let wide: [u8; BLOCK] = std::array::from_fn(|i| key[i & 3]);
    let (blocks, tail) = buf.as_chunks_mut::<BLOCK>();
    for block in blocks {
        for (b, k) in block.iter_mut().zip(wide) {
            *b ^= k;
        }
    }
    // The tail starts at a multiple of 4, so key index = position mod 4 still holds.
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_frame: 1 << 17,
        max_message: 1 << 18,
    };

    fn masked(op: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&key);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key);
        f.extend_from_slice(&p);
        f
    }

    async fn next<S: AsyncRead + AsyncWrite + Unpin>(
        ws: &mut WsStream<S>,
    ) -> Option<Result<Message, WsError>> {
        std::future::poll_fn(|cx| ws.poll_next(cx)).await
    }

    #[test]
    fn mask_roundtrip_any_length() {
        for n in 0..140 {
            let orig: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut b = orig.clone();
            apply_mask(&mut b, [1, 2, 3, 4]);
            for (i, (x, y)) in b.iter().zip(&orig).enumerate() {
                assert_eq!(*x, y ^ [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut b, [1, 2, 3, 4]);
            assert_eq!(b, orig);
        }
    }

    #[test]
    fn text_is_checked_utf8_at_every_position() {
        let good = "añ€😀".repeat(40);
        assert_eq!(
            checked_text(Bytes::from(good.clone())).unwrap(),
            good.as_str()
        );
        for at in [0, 31, 64, 150, good.len() - 1] {
            let mut bad = good.clone().into_bytes();
            bad[at] = 0xff;
            assert!(
                matches!(checked_text(Bytes::from(bad)), Err(WsError::Utf8)),
                "{at}"
            );
        }
        // A character cut at the end of the payload.
        let cut = &good.as_bytes()[..good.len() - 1];
        assert!(checked_text(Bytes::copy_from_slice(cut)).is_err());
    }

    #[tokio::test]
    async fn server_reads_split_and_fragmented_frames_and_answers_ping() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        let mut bytes = masked(0x1, true, "héllo".as_bytes(), [9, 8, 7, 6]);
        bytes.extend(masked(0x2, false, &[1, 2], [1, 1, 1, 1]));
        bytes.extend(masked(0x9, true, b"p", [2, 2, 2, 2]));
        bytes.extend(masked(0x0, true, &[3], [3, 3, 3, 3]));
        // Written a byte at a time: every split point of a header must be handled.
        for byte in bytes {
            b.write_all(&[byte]).await.unwrap();
        }
        match next(&mut ws).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "héllo"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut ws).await, Some(Ok(Message::Ping(p))) if &p[..] == b"p"));
        match next(&mut ws).await {
            Some(Ok(Message::Binary(t))) => assert_eq!(&t[..], &[1, 2, 3]),
            other => panic!("{other:?}"),
        }
        // The pong went out unmasked.
        let mut pong = [0u8; 3];
        b.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8A, 1, b'p']);
    }

    /// An idle endpoint holds no buffers: none before the first bytes arrive, and none after
    /// it gives them back; reading resumes through the stack read, frames larger than it
    /// included.
    #[tokio::test]
    async fn idle_endpoints_hold_no_buffers() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(ws.poll_next(&mut cx).is_pending());
        assert_eq!((ws.rbuf.capacity(), ws.wbuf.capacity()), (0, 0));

        let big = vec![b'x'; 3 * FIRST_READ];
        for round in 0..2 {
            b.write_all(&masked(0x1, true, b"hi", [1, 2, 3, 4]))
                .await
                .unwrap();
            b.write_all(&masked(0x2, true, &big, [5, 6, 7, 8]))
                .await
                .unwrap();
            assert!(
                matches!(next(&mut ws).await, Some(Ok(Message::Text(t))) if t.as_str() == "hi")
            );
            assert!(
                matches!(next(&mut ws).await, Some(Ok(Message::Binary(d))) if d[..] == big[..])
            );
            ws.send(Message::text("answer")).await.unwrap();
            assert!(
                ws.rbuf.capacity() > 0 && ws.wbuf.capacity() > 0,
                "round {round}"
            );
            ws.release_idle_buffers();
            assert_eq!((ws.rbuf.capacity(), ws.wbuf.capacity()), (0, 0));
            let mut out = [0u8; 8];
            b.read_exact(&mut out).await.unwrap();
            assert_eq!(&out[2..], b"answer");
        }

        // Bytes waiting in the buffer are kept.
        b.write_all(&masked(0x1, true, b"half", [1, 2, 3, 4])[..4])
            .await
            .unwrap();
        assert!(ws.poll_next(&mut cx).is_pending());
        ws.release_idle_buffers();
        assert_eq!(ws.rbuf.len(), 4);

        // The end of the stream met by the stack read is a reset, as by any read.
        let (a, b) = tokio::io::duplex(64);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        drop(b);
        assert!(matches!(next(&mut ws).await, Some(Err(WsError::Reset))));
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81, 0x01, b'x'], "unmasked"),
            (masked(0x1, true, &[0xff, 0xfe], [1, 2, 3, 4]), "utf8"),
            (masked(0x3, true, b"", [1, 2, 3, 4]), "opcode"),
            (masked(0x9, false, b"", [1, 2, 3, 4]), "fragmented control"),
            (masked(0x0, true, b"x", [1, 2, 3, 4]), "continuation"),
            (vec![0xC1, 0x80, 0, 0, 0, 0], "rsv"),
            (
                masked(0x8, true, &[0x03, 0xEC], [1, 2, 3, 4]),
                "close code 1004",
            ),
        ];
        for (bytes, what) in cases {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
            b.write_all(&bytes).await.unwrap();
            assert!(matches!(next(&mut ws).await, Some(Err(_))), "{what}");
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_from_the_header() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        let mut ws = WsStream::new(a, Role::Server, limits, b"");
        b.write_all(&[0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        match next(&mut ws).await {
            Some(Err(WsError::TooLong { size, max })) => {
                assert_eq!((size, max), (1 << 32, 100));
            }
            other => panic!("{other:?}"),
        }
        // A fragmented message over the message limit.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, limits, b"");
        b.write_all(&masked(0x2, false, &[0; 100], [1, 2, 3, 4]))
            .await
            .unwrap();
        b.write_all(&masked(0x0, true, &[0; 100], [1, 2, 3, 4]))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut ws).await,
            Some(Err(WsError::TooLong { size: 200, .. }))
        ));
    }

    #[tokio::test]
    async fn client_and_server_talk_and_close() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut server = WsStream::new(a, Role::Server, LIMITS, b"");
        let mut client = WsStream::new(b, Role::Client, LIMITS, b"");
        let big = Bytes::from(vec![7u8; 70_000]);
        client.send(Message::Binary(big.clone())).await.unwrap();
        client.send(Message::text("hi")).await.unwrap();
        assert!(matches!(next(&mut server).await, Some(Ok(Message::Binary(b))) if b == big));
        assert!(
            matches!(next(&mut server).await, Some(Ok(Message::Text(t))) if t.as_str() == "hi")
        );
        client.send(Message::close(1000, "bye")).await.unwrap();
        match next(&mut server).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!((f.code, f.reason.as_str()), (1000, "bye"))
            }
            other => panic!("{other:?}"),
        }
        // The server echoed the close; both ends finish.
        assert!(next(&mut server).await.is_none());
        assert!(matches!(
            next(&mut client).await,
            Some(Ok(Message::Close(Some(CloseFrame { code: 1000, .. }))))
        ));
        assert!(next(&mut client).await.is_none());
    }

    #[tokio::test]
    async fn after_a_read_error_the_close_goes_out_and_the_stream_ends() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        b.write_all(&[0x81, 0x01, b'x']).await.unwrap();
        assert!(matches!(
            next(&mut ws).await,
            Some(Err(WsError::Protocol(_)))
        ));
        ws.start_send(Message::close(1002, "protocol error"));
        assert!(next(&mut ws).await.is_none());
        let mut head = [0u8; 4];
        b.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x88, 16, 0x03, 0xEA]);
    }

    #[tokio::test]
    async fn long_close_reasons_are_cut_at_a_character() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        ws.send(Message::close(1000, &"é".repeat(100)))
            .await
            .unwrap();
        let mut head = [0u8; 2];
        b.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88);
        let len = usize::from(head[1]);
        assert!(len <= 125, "{len}");
        let mut payload = vec![0u8; len];
        b.read_exact(&mut payload).await.unwrap();
        let reason = std::str::from_utf8(&payload[2..]).unwrap();
        assert_eq!(reason, "é".repeat(61));
    }

    #[tokio::test]
    async fn eof_without_close_is_a_reset() {
        let (a, b) = tokio::io::duplex(64);
        let mut ws = WsStream::new(a, Role::Server, LIMITS, b"");
        drop(b);
        assert!(matches!(next(&mut ws).await, Some(Err(WsError::Reset))));
    }
}
