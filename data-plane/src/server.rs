//! The client-facing listener: HTTP/1.1 upgrade on `/ws`, checked before the upgrade (bad
//! query → 400, connection limit → 503, anything that is not a WebSocket upgrade → 400), then
//! one task per connection, on per-CPU event loops. The `101` goes out once the connection is
//! routed, in one write with `connection_routed` (or with the error event when routing fails).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{header, HeaderMap, Method, StatusCode};
use prometheus::IntGauge;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::ws::{Role, WsStream};
use crate::conn::{self, Accepted};
use crate::error::{Error, Result};
use crate::handshake::{self, Head, HeadError, Reject};
use crate::metrics::Metrics;
use crate::routing::RouteRequest;
use crate::rt::{self, RawStream, TcpStream};
use crate::state::Shared;
use crate::strategy::Strategy;

/// How many more live connections the accepting event loop may hold than the least loaded
/// one before it hands a new connection over.
const BALANCE_SLACK: i64 = 1;

/// Spreads client connections over the event loops by their live connections. Every loop
/// is woken by a new connection and the first to run takes it, so a burst of connections
/// opened one after another could land nearly all on one loop (90 of 100 seen), which then
/// capped the throughput while the other idled. The loop that accepts a connection keeps it
/// unless another holds more than `BALANCE_SLACK` fewer; that one then takes it over and puts
/// the socket on its own event loop.
struct Balance {
    /// Live connections per loop (`myagent_proxy_worker_connections`).
    live: Box<[IntGauge]>,
    inboxes: Box<[mpsc::UnboundedSender<Handover>]>,
}

impl Balance {
    /// The balance of `n` loops, and each loop's inbox of connections handed to it.
    fn new(n: usize, metrics: &Metrics) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handover>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let live = (0..n)
            .map(|i| {
                metrics
                    .worker_connections
                    .with_label_values(&[&i.to_string()])
            })
            .collect();
        let balance = Balance {
            live,
            inboxes: inboxes.into(),
        };
        (Arc::new(balance), receivers)
    }

    /// Counts a connection accepted on loop `me` on the loop that is to serve it.
    fn pick(self: &Arc<Self>, me: usize) -> Live {
        let mine = self.live[me].get();
        let (least, fewest) = self
            .live
            .iter()
            .map(IntGauge::get)
            .enumerate()
            .min_by_key(|&(_, c)| c)
            .unwrap_or((me, mine));
        self.count(if mine > fewest + BALANCE_SLACK {
            least
        } else {
            me
        })
    }

    /// Counts a connection on loop `worker`.
    fn count(self: &Arc<Self>, worker: usize) -> Live {
        self.live[worker].inc();
        Live {
            balance: self.clone(),
            worker,
        }
    }
}

/// A connection accepted by one loop for another to serve.
type Handover = (RawStream, SocketAddr, Live);

/// One live connection of loop `worker`, counted until its task ends.
struct Live {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.balance.live[self.worker].dec();
    }
}

/// What a connection thread serves connections with.
#[derive(Clone)]
struct Serve {
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Serve {
    /// Puts an accepted socket on this thread's event loop and runs its connection.
    fn spawn(&self, raw: RawStream, peer: SocketAddr, live: Live) {
        let tcp = match raw.register() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register an accepted connection");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (shared, tls) = (self.shared.clone(), self.tls.clone());
        // The task holds what an open connection needs for its whole life: the relay. Every
        // step before it (TLS handshake, request head, routing, upstream handshake) runs in a
        // box of its own that is freed when the step ends; a TLS connection's relay, larger by
        // the TLS state, is boxed too, so plain connections do not carry room for it.
        rt::spawn(self.tracker.track_future(async move {
            let _live = live;
            match tls {
                None => serve_client(tcp, peer, shared).await,
                Some(acceptor) => {
                    // (Boxed in statements of their own: a future built inside an awaited
                    // expression would keep its room in this one until the statement ends.)
                    let handshake = Box::pin(tls_handshake(acceptor, tcp, peer));
                    let Some(stream) = handshake.await else {
                        return;
                    };
                    let conn = Box::pin(serve_client(stream, peer, shared));
                    conn.await;
                }
            }
        }));
    }
}

/// Loop `me`'s accepting until `stop` fires: connections it accepts (or another loop hands
/// it, see [`Balance`]) run on this thread.
async fn serve(
    me: usize,
    listener: rt::TcpListener,
    mut inbox: mpsc::UnboundedReceiver<Handover>,
    balance: Arc<Balance>,
    serve: Serve,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some((raw, peer, live)) = inbox.recv() => serve.spawn(raw, peer, live),
            r = listener.accept_raw() => match r {
                Ok((raw, peer)) => {
                    let live = balance.pick(me);
                    let here = if live.worker == me {
                        Some((raw, peer, live))
                    } else {
                        let to = live.worker;
                        balance.inboxes[to].send((raw, peer, live)).err().map(|e| e.0)
                    };
                    if let Some((raw, peer, live)) = here {
                        // (Also when the loop it was meant for stopped accepting: shutting down.)
                        let live = if live.worker == me { live } else { balance.count(me) };
                        serve.spawn(raw, peer, live);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    crate::timer::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// The event-loop threads of the client listener (see `--worker-threads`). Dropped without
/// [`Workers::finish`] (the proxy's future dropped mid-run), it still stops accepting and ends
/// the threads.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Stops accepting.
    stop: CancellationToken,
    /// Ends the threads' runtimes (and any connection still open on them).
    done: CancellationToken,
}

/// Starts `n` threads, each a single-threaded runtime accepting on `listener` until `stop`,
/// then driving its connections until they are all finished (tracked by `tracker`) or
/// [`Workers::finish`] is called.
pub fn spawn_workers(
    n: usize,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) -> Result<Workers> {
    let std_listener = listener.into_std()?;
    let done = CancellationToken::new();
    // Keeps the threads' timers; their runtimes need no time driver.
    let timers = crate::timer::Driver::start()?;
    let mut threads = Vec::with_capacity(n);
    let (balance, mut receivers) = Balance::new(n, &shared.metrics);
    let serving = Serve {
        tls,
        shared,
        tracker: tracker.clone(),
    };
    // Each thread reports whether its event loop started (it must be made on the thread).
    let (started_tx, started) = std::sync::mpsc::channel::<std::io::Result<()>>();
    for (i, inbox) in receivers.drain(..).enumerate() {
        let started_tx = started_tx.clone();
        let listener = std_listener.try_clone()?;
        let timers = timers.clone();
        let (balance, serving, tracker) = (balance.clone(), serving.clone(), tracker.clone());
        let (stop, done) = (stop.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name(format!("myagent-ws-{i}"))
            .spawn(move || {
                if let Some(driver) = timers.handle() {
                    crate::timer::keep_timers_on(driver);
                }
                // The thread's own event loop (`crate::rt`); its timers are kept by `timers`.
                let rt = match rt::Runtime::new() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                rt.block_on(async move {
                    match rt::TcpListener::from_std(listener) {
                        Ok(l) => serve(i, l, inbox, balance, serving, stop).await,
                        Err(e) => tracing::error!(error = %e, "worker cannot use the listener"),
                    }
                    tokio::select! {
                        _ = tracker.wait() => {}
                        _ = done.cancelled() => {}
                    }
                });
                // Every connection (and timer) goes with the runtime, before the timer driver.
                drop(rt);
                drop(timers);
            })?;
        threads.push(thread);
    }
    let workers = Workers {
        threads,
        stop,
        done,
    };
    drop(started_tx);
    for _ in 0..n {
        match started.recv() {
            Ok(Ok(())) => {}
            // (Dropping `workers` stops the threads that did start.)
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(std::io::Error::other("a worker thread ended at start").into()),
        }
    }
    Ok(workers)
}

impl Workers {
    /// Ends every worker (open connections are dropped) and waits for the threads.
    pub async fn finish(mut self) {
        self.done.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        self.done.cancel();
    }
}

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

async fn tls_handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match crate::timer::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// One accepted client stream: its request head, the checks, then the relay. The `101` is
/// written once the connection is routed, together with its first frame. Not an `async fn`:
/// the upgrade runs in its own box, so the connection's future keeps neither its buffers nor
/// a second copy of the stream.
fn serve_client<S>(io: S, peer: SocketAddr, shared: Arc<Shared>) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = Box::pin(upgrade(io, peer, shared.clone()));
    async move {
        // (A match, so the stream and the request are out of scope, not kept a second time,
        // while the connection runs.)
        let (conn, _active) = match upgrade.await {
            Some((ws, acc, active)) => (conn::handle(shared, ws, acc), active),
            None => return,
        };
        conn.await;
    }
}

/// Reads and checks the request head and takes a connection slot: the upgraded stream (its
/// `101` queued), what the connection asked for, and the slot's guard.
async fn upgrade<S>(
    mut io: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Option<(WsStream<S>, Accepted, ActiveGuard)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1024);
    let head =
        match crate::timer::timeout(HEAD_TIMEOUT, handshake::read_head(&mut io, &mut buf)).await {
            Ok(Ok(h)) => h,
            Ok(Err(HeadError::Bad(status, msg))) => {
                let r = Reject::new(status, "INVALID_REQUEST", msg);
                handshake::reject(&mut io, &r).await;
                return None;
            }
            Ok(Err(HeadError::Gone)) => return None,
            Err(_) => {
                tracing::debug!(%peer, "no request head in time");
                return None;
            }
        };
    let (req, accept) = match check_upgrade(&head, peer, &shared) {
        Ok(x) => x,
        Err(r) => {
            handshake::reject(&mut io, &r).await;
            return None;
        }
    };
    // Reserve a slot; the guard releases it when the connection ends.
    let prev = shared.active.fetch_add(1, Ordering::AcqRel);
    let guard = ActiveGuard(shared.clone());
    if prev >= shared.settings.max_connections {
        shared
            .metrics
            .connections_rejected
            .with_label_values(&["max_connections"])
            .inc();
        let r = Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "INSUFFICIENT_RESOURCES",
            format!(
                "Proxy is at its connection limit ({})",
                shared.settings.max_connections
            ),
        );
        handshake::reject(&mut io, &r).await;
        return None;
    }
    shared.metrics.connections_total.inc();
    let mut ws = WsStream::new(io, Role::Server, conn::limits(&shared), &buf[head.len..]);
    ws.queue_raw(&handshake::switching_protocols(&accept));
    let acc = Accepted {
        req,
        client_ip: peer.ip(),
        connection_id: conn::fresh_id(),
    };
    Some((ws, acc, guard))
}

/// The TLS acceptor for client connections, from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::Tls(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "--tls-cert {}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    // WebSocket upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) else {
                    return Err(());
                };
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Parses the routing parameters (query string first, then `X-MyAgent-*` headers, as seed §2.1
/// allows both). Errors name the offending field.
pub fn parse_route_request(
    query: Option<&str>,
    headers: &HeaderMap,
    path: &str,
    client_ip: IpAddr,
) -> Result<RouteRequest, (String, String)> {
    let mut pairs = Vec::new();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k).map_err(|_| {
            (
                "query".to_string(),
                "Query string is not valid percent-encoded UTF-8".to_string(),
            )
        })?;
        let v = percent_decode(v).map_err(|_| {
            (
                k.clone(),
                format!("Query parameter '{k}' is not valid percent-encoded UTF-8"),
            )
        })?;
        pairs.push((k, v));
    }
    let param = |name: &str, header_name: &str| -> Result<Option<String>, (String, String)> {
        let v = match pairs.iter().find(|(k, _)| k == name) {
            Some((_, v)) => Some(v.clone()),
            None => headers
                .get(header_name)
                .map(|h| h.to_str().map(str::to_string))
                .transpose()
                .map_err(|_| {
                    (
                        name.to_string(),
                        format!("Header '{header_name}' is not valid text"),
                    )
                })?,
        };
        match v {
            Some(v) if v.trim().is_empty() => Err((
                name.to_string(),
                format!("Parameter '{name}' must not be empty"),
            )),
            Some(v) if v.len() > 256 => Err((
                name.to_string(),
                format!("Parameter '{name}' is longer than 256 bytes"),
            )),
            other => Ok(other),
        }
    };
    let service = param("service", "x-myagent-service")?;
    let tag = param("tag", "x-myagent-tag")?;
    let session_id = param("session_id", "x-myagent-session-id")?;
    let hint = match param("routing_hint", "x-myagent-routing-hint")? {
        Some(h) => Some(Strategy::parse(&h).map_err(|e| {
            (
                "routing_hint".to_string(),
                format!("Invalid routing_hint: {e}"),
            )
        })?),
        None => None,
    };
    Ok(RouteRequest {
        service,
        tag,
        session_id,
        hint,
        headers: headers.clone(),
        query: pairs,
        client_ip: Some(client_ip),
        path: path.to_string(),
    })
}

/// The checks before the upgrade: path, method, WebSocket headers, routing parameters,
/// readiness. Gives the route request and the `Sec-WebSocket-Accept` value.
fn check_upgrade(
    head: &Head,
    peer: SocketAddr,
    shared: &Shared,
) -> std::result::Result<(RouteRequest, String), Reject> {
    let path = head.uri.path();
    if path != "/ws" {
        return Err(Reject::new(
            StatusCode::NOT_FOUND,
            "INVALID_REQUEST",
            "Not found: WebSocket clients connect to /ws",
        )
        .field("path"));
    }
    let h = &head.headers;
    if head.method != Method::GET
        || !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Expected a WebSocket upgrade (GET with Connection: Upgrade, Upgrade: websocket)",
        )
        .field("upgrade"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Unsupported Sec-WebSocket-Version (13 required)",
        )
        .field("sec-websocket-version")
        // The client learns the version we speak (RFC 6455 §4.4).
        .header("Sec-WebSocket-Version: 13"));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24) else {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Missing or malformed Sec-WebSocket-Key",
        )
        .field("sec-websocket-key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let req =
        parse_route_request(head.uri.query(), h, path, peer.ip()).map_err(|(field, msg)| {
            Reject::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", msg).field(field)
        })?;
    if !shared.ready() {
        shared
            .metrics
            .connections_rejected
            .with_label_values(&["not_ready"])
            .inc();
        return Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ROUTING_FAILED",
            "Proxy has no routing configuration yet",
        ));
    }
    Ok((req, accept))
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// One loop winning every accept still spreads the connections evenly, and closed ones
    /// make room where they closed.
    #[test]
    fn connections_go_to_the_least_loaded_loop() {
        let metrics = crate::metrics::Metrics::new();
        let (b, _inboxes) = Balance::new(3, &metrics);
        let mut held: Vec<Live> = (0..30).map(|_| b.pick(0)).collect();
        let counts = || b.live.iter().map(IntGauge::get).collect::<Vec<_>>();
        let c = counts();
        assert_eq!(c.iter().sum::<i64>(), 30);
        assert!(c.iter().all(|&n| (9..=11).contains(&n)), "{c:?}");
        // Close every connection of loop 2: the next ones go there.
        held.retain(|l| l.worker != 2);
        assert_eq!(counts()[2], 0);
        let next: Vec<Live> = (0..5).map(|_| b.pick(1)).collect();
        assert!(next.iter().all(|l| l.worker == 2));
        drop(held);
        assert_eq!(counts(), vec![0, 0, 5]);
        drop(next);
        assert_eq!(counts(), vec![0, 0, 0]);
        // One loop alone keeps everything.
        let (one, _inbox) = Balance::new(1, &metrics);
        assert!((0..5).all(|_| one.pick(0).worker == 0));
    }

    /// A connection's future beyond its relay holds only the slot guard and the shared state
    /// (see `conn::tests::an_open_connection_is_its_relay`).
    #[test]
    fn a_served_connection_is_its_relay() {
        fn output_size<A, B, C, R>(_: &impl FnOnce(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let handle = output_size(&conn::handle::<TcpStream>);
        let served = output_size(&serve_client::<TcpStream>);
        assert!(
            served <= handle + 64,
            "serve_client {served} B, handle {handle} B"
        );
    }

    fn parse(q: &str) -> Result<RouteRequest, (String, String)> {
        parse_route_request(
            Some(q),
            &HeaderMap::new(),
            "/ws",
            "127.0.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn query_parameters() {
        let r = parse("service=weather%2Dagent&routing_hint=round_robin&x=a+b").unwrap();
        assert_eq!(r.service.as_deref(), Some("weather-agent"));
        assert_eq!(r.hint, Some(Strategy::RoundRobin));
        assert!(r.query.contains(&("x".to_string(), "a b".to_string())));
        assert_eq!(parse("routing_hint=fastest").unwrap_err().0, "routing_hint");
        assert_eq!(parse("service=").unwrap_err().0, "service");
        assert_eq!(parse("tag=%20").unwrap_err().0, "tag");
        assert_eq!(parse("session_id=%zz").unwrap_err().0, "session_id");
    }

    #[test]
    fn headers_are_a_fallback() {
        let mut h = HeaderMap::new();
        h.insert("x-myagent-tag", HeaderValue::from_static("weather"));
        h.insert("x-myagent-service", HeaderValue::from_static("from-header"));
        let r = parse_route_request(
            Some("service=from-query"),
            &h,
            "/ws",
            "::1".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(r.service.as_deref(), Some("from-query"));
        assert_eq!(r.tag.as_deref(), Some("weather"));
    }
}
