//! wsbench: the data-plane benchmark (not a test). Driven by `tests/bench.sh`.
//!
//! - `wsbench agent --listen ADDR`: a lean tokio-tungstenite echo agent; prints `agent ADDR`.
//! - `wsbench control --listen ADDR --agent HOST:PORT`: a static ProxyControl server that gives
//!   a proxy two services on that agent, `echo` (envelope on) and `echo-raw` (envelope off);
//!   prints `control ADDR`.
//! - `wsbench run --target NAME=URL[@PID,...] ...`: runs every scenario against every target in
//!   one run and prints absolute figures and ratios to the first target (direct) and to the
//!   target named `nginx`. Every echoed byte is checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, Stream, StreamExt};
use myagent_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("agent") => rt.block_on(agent(flag(&args, "--listen").unwrap_or("127.0.0.1:0"))),
        Some("control") => rt.block_on(control(
            flag(&args, "--listen").unwrap_or("127.0.0.1:0"),
            flag(&args, "--agent").ok_or_else(|| anyhow::anyhow!("--agent HOST:PORT"))?,
        )),
        Some("run") => rt.block_on(run(&args)),
        _ => {
            eprintln!("usage: wsbench agent|control|run ... (see tests/bench.sh)");
            std::process::exit(64);
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn flags<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].as_str())
        .collect()
}

// ------------------------------------------------------------------ agent

#[allow(clippy::print_stdout)]
async fn agent(listen: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    println!("agent {}", l.local_addr()?);
    loop {
        let (tcp, _) = l.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            // Echo with batching: feed while more frames are ready, flush when idle.
            loop {
                let m = match ws.next().await {
                    Some(Ok(m)) => m,
                    _ => return,
                };
                if !matches!(m, Message::Text(_) | Message::Binary(_)) {
                    continue;
                }
                if ws.feed(m).await.is_err() {
                    return;
                }
                // Drain whatever else is already buffered before flushing.
                while let Some(Some(Ok(m))) = futures::FutureExt::now_or_never(ws.next()) {
                    if matches!(m, Message::Text(_) | Message::Binary(_))
                        && ws.feed(m).await.is_err()
                    {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

// ------------------------------------------------------------------ static control plane

#[derive(Clone)]
struct StaticControl {
    push: pb::ConfigPush,
}

type CtlStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::proxy_control_server::ProxyControl for StaticControl {
    type StreamStream = CtlStream;

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<pb::ProxyMessage>>,
    ) -> Result<tonic::Response<CtlStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        // Drain the proxy's messages (hello, acks, reports).
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let first = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Config(self.push.clone())),
        };
        let s = futures::stream::iter(vec![Ok(first)]).chain(futures::stream::pending());
        Ok(tonic::Response::new(Box::pin(s)))
    }

    async fn resolve_session(
        &self,
        _: tonic::Request<pb::ResolveSessionRequest>,
    ) -> Result<tonic::Response<pb::SessionBinding>, tonic::Status> {
        Err(tonic::Status::not_found("no sessions"))
    }
}

#[allow(clippy::print_stdout)]
async fn control(listen: &str, agent: &str) -> anyhow::Result<()> {
    let agent: SocketAddr = agent.parse()?;
    let svc = |id: &str, name: &str, metadata: bool| pb::ServiceSnapshot {
        service_id: id.into(),
        name: name.into(),
        host: agent.ip().to_string(),
        port: agent.port().into(),
        endpoint: format!("ws://{agent}"),
        status: "running".into(),
        health: "healthy".into(),
        routable: true,
        proxy_metadata: metadata,
        weight: 1,
        ..Default::default()
    };
    let push = pb::ConfigPush {
        version: 1,
        nonce: "bench".into(),
        full: true,
        services: vec![
            svc("bench-echo", "echo", true),
            svc("bench-echo-raw", "echo-raw", false),
        ],
        ..Default::default()
    };
    let l = TcpListener::bind(listen).await?;
    println!("control {}", l.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(pb::proxy_control_server::ProxyControlServer::new(
            StaticControl { push },
        ))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
        .await?;
    Ok(())
}

// ------------------------------------------------------------------ load generator

#[derive(Clone, Debug)]
struct Target {
    name: String,
    url: String,
    pids: Vec<u32>,
    /// Through myagent-proxy: the first frame is `connection_routed`.
    skip_first: bool,
    /// Echoes come back wrapped in the envelope.
    envelope: bool,
}

fn parse_target(s: &str) -> anyhow::Result<Target> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("target NAME=URL[@PID,..]"))?;
    let (url, pids) = match rest.rsplit_once('@') {
        Some((u, p)) => (u, p.split(',').filter_map(|x| x.parse().ok()).collect()),
        None => (rest, vec![]),
    };
    Ok(Target {
        name: name.into(),
        url: url.into(),
        pids,
        skip_first: url.contains("/ws?"),
        envelope: url.contains("service=echo") && !url.contains("service=echo-raw"),
    })
}

/// CPU time (user+system) of the given processes, all threads, in microseconds: the
/// scheduler's exact run time of each thread (`/proc/PID/task/TID/schedstat`, nanoseconds),
/// not `/proc/PID/stat`'s 10 ms ticks, which swing by several per cent over a 3 s run.
fn cpu_us(pids: &[u32]) -> u64 {
    let thread_ns = |path: std::path::PathBuf| -> Option<u64> {
        std::fs::read_to_string(path.join("schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let ns: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|threads| threads.filter_map(|t| thread_ns(t.ok()?.path())))
        .sum();
    ns / 1000
}

async fn open(t: &Target) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(t.url.as_str()).await?;
    if t.skip_first {
        match ws.next().await {
            Some(Ok(Message::Text(s))) if s.contains("connection_routed") => {}
            other => anyhow::bail!("expected connection_routed, got {other:?}"),
        }
    }
    Ok(ws)
}

fn payload(size: usize, conn: usize) -> String {
    // JSON so the envelope applies; exactly `size` bytes.
    let head = format!("{{\"c\":{conn},\"d\":\"");
    let fill = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(fill))
}

fn check_echo(t: &Target, sent: &str, got: &Message) -> bool {
    match got {
        Message::Text(g) => {
            if t.envelope {
                g.starts_with("{\"proxy_metadata\":")
                    && g.as_str()
                        .strip_suffix('}')
                        .is_some_and(|x| x.ends_with(sent))
                    && g.contains("\"original_message\":")
            } else {
                g.as_str() == sent
            }
        }
        _ => false,
    }
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
}

#[derive(Default)]
struct Outcome {
    msgs: u64,
    bytes: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_msg: Option<f64>,
    errors: u64,
    /// Resident memory the targets' processes grew by per open idle connection.
    rss_per_conn: Option<f64>,
}

/// `conns` connections each ping-pong `size`-byte messages for `dur` after `warm`.
async fn pingpong(
    t: &Target,
    conns: usize,
    size: usize,
    warm: Duration,
    dur: Duration,
) -> anyhow::Result<Outcome> {
    let mut wss = Vec::with_capacity(conns);
    for _ in 0..conns {
        wss.push(open(t).await?);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut ws) in wss.into_iter().enumerate() {
        let (t, measuring, stop, count, errors) = (
            t.clone(),
            measuring.clone(),
            stop.clone(),
            count.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let msg = payload(size, i);
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if ws.send(Message::Text(msg.clone().into())).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                match ws.next().await {
                    Some(Ok(m)) if check_echo(&t, &msg, &m) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                if measuring.load(Ordering::Relaxed) {
                    let _ = hist.record(start.elapsed().as_micros().max(1) as u64);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = ws.close(None).await;
            hist
        }));
    }
    tokio::time::sleep(warm).await;
    let cpu0 = cpu_us(&t.pids);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(dur).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_us(&t.pids);
    let msgs = count.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(10), task).await {
            hist.add(&h)?;
        }
    }
    Ok(Outcome {
        msgs,
        bytes: msgs * size as u64,
        secs,
        p50_us: hist.value_at_quantile(0.5) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
        cpu_us_per_msg: (!t.pids.is_empty() && msgs > 0)
            .then(|| cpu1.saturating_sub(cpu0) as f64 / msgs as f64),
        errors: errors.load(Ordering::Relaxed),
        ..Default::default()
    })
}

/// `conns` connections × `inflight` outstanding `size`-byte messages; one-way throughput.
async fn stream(
    t: &Target,
    conns: usize,
    inflight: usize,
    size: usize,
    warm: Duration,
    dur: Duration,
) -> anyhow::Result<Outcome> {
    let mut wss = Vec::with_capacity(conns);
    for _ in 0..conns {
        wss.push(open(t).await?);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, ws) in wss.into_iter().enumerate() {
        let (t, measuring, stop, count, errors) = (
            t.clone(),
            measuring.clone(),
            stop.clone(),
            count.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let msg = payload(size, i);
            let (mut tx, mut rx) = ws.split();
            let credits = Arc::new(tokio::sync::Semaphore::new(inflight));
            let c2 = credits.clone();
            let stop2 = stop.clone();
            let m2 = msg.clone();
            let sender = tokio::spawn(async move {
                while !stop2.load(Ordering::Relaxed) {
                    let Ok(p) = c2.acquire().await else { break };
                    p.forget();
                    if tx.send(Message::Text(m2.clone().into())).await.is_err() {
                        break;
                    }
                }
                let _ = tx.close().await;
            });
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                    Ok(Some(Ok(m))) if check_echo(&t, &msg, &m) => {
                        credits.add_permits(1);
                        if measuring.load(Ordering::Relaxed) {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if !stop.load(Ordering::Relaxed) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                }
            }
            credits.close();
            sender.abort();
        }));
    }
    tokio::time::sleep(warm).await;
    let cpu0 = cpu_us(&t.pids);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(dur).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_us(&t.pids);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let msgs = count.load(Ordering::Relaxed);
    Ok(Outcome {
        msgs,
        bytes: msgs * size as u64,
        secs,
        cpu_us_per_msg: (!t.pids.is_empty() && msgs > 0)
            .then(|| cpu1.saturating_sub(cpu0) as f64 / msgs as f64),
        errors: errors.load(Ordering::Relaxed),
        ..Default::default()
    })
}

/// Opens `total` connections, `parallel` at a time (each ready to relay: for myagent-proxy
/// that includes the upstream connect and `connection_routed`). Returns them, the time it
/// took and the failures.
async fn open_many(t: &Target, total: usize, parallel: usize) -> (Vec<Ws>, f64, u64) {
    let t0 = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let held = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(total)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (t, errors, held, next) = (t.clone(), errors.clone(), held.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < total {
                match open(&t).await {
                    Ok(ws) => held.lock().await.push(ws),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let all = std::mem::take(&mut *held.lock().await);
    (all, secs, errors.load(Ordering::Relaxed))
}

async fn close_all(mut all: Vec<Ws>) {
    for ws in all.iter_mut() {
        let _ = ws.close(None).await;
    }
}

/// A connect storm: `total` connections opened, `parallel` at a time, then closed.
async fn connect_storm(t: &Target, total: usize, parallel: usize) -> anyhow::Result<Outcome> {
    let cpu0 = cpu_us(&t.pids);
    let (all, secs, errors) = open_many(t, total, parallel).await;
    let cpu1 = cpu_us(&t.pids);
    let n = all.len() as u64;
    close_all(all).await;
    Ok(Outcome {
        msgs: n,
        secs,
        cpu_us_per_msg: (!t.pids.is_empty() && n > 0)
            .then(|| cpu1.saturating_sub(cpu0) as f64 / n as f64),
        errors,
        ..Default::default()
    })
}

/// Resident memory of the given processes, in bytes (`VmRSS` of /proc/PID/status).
fn rss_bytes(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for p in pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        total += line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024;
    }
    Some(total)
}

/// `total` idle connections held open: how much the targets' resident memory grew per
/// connection (read after a settling second, before they close).
async fn idle_memory(t: &Target, total: usize, parallel: usize) -> anyhow::Result<Outcome> {
    let before = rss_bytes(&t.pids);
    let (all, secs, errors) = open_many(t, total, parallel).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(&t.pids);
    let n = all.len() as u64;
    close_all(all).await;
    Ok(Outcome {
        msgs: n,
        secs,
        errors,
        rss_per_conn: before
            .zip(after)
            .filter(|_| n > 0 && !t.pids.is_empty())
            .map(|(b, a)| a.saturating_sub(b) as f64 / n as f64),
        ..Default::default()
    })
}

#[allow(clippy::print_stdout)]
async fn run(args: &[String]) -> anyhow::Result<()> {
    let targets: Vec<Target> = flags(args, "--target")
        .into_iter()
        .map(parse_target)
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!targets.is_empty(), "at least one --target");
    let secs: f64 = flag(args, "--seconds").unwrap_or("3").parse()?;
    let dur = Duration::from_secs_f64(secs);
    let warm = Duration::from_secs_f64((secs / 3.0).max(0.5));
    let scenarios: Vec<&str> = flag(args, "--scenarios")
        .unwrap_or("pp1-64,pp100-64,pp100-4k,pp1000-64,stream100x16-4k,connect2000,idle2000")
        .split(',')
        .collect();
    // Each scenario runs `rounds` times, the targets in a rotated order each round (so no
    // target always runs first or last); the table shows each target's median round by rate.
    let rounds: usize = flag(args, "--rounds").unwrap_or("1").parse()?;
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let mut table: Vec<(String, Vec<(String, Outcome)>)> = Vec::new();
    for sc in &scenarios {
        let mut runs: Vec<Vec<Outcome>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let o = run_one(sc, &targets[i], warm, dur).await?;
                eprintln!(
                    "  {sc:<16} {:<10} round {} done ({} msgs, {} errors)",
                    targets[i].name,
                    round + 1,
                    o.msgs,
                    o.errors
                );
                runs[i].push(o);
                // Let sockets in TIME_WAIT and closing tasks settle between runs.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let row = targets
            .iter()
            .zip(runs)
            .map(|(t, mut v)| {
                v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                let median = v.swap_remove(v.len() / 2);
                (t.name.clone(), median)
            })
            .collect();
        table.push((sc.to_string(), row));
    }
    print_table(&table);
    Ok(())
}

async fn run_one(sc: &str, t: &Target, warm: Duration, dur: Duration) -> anyhow::Result<Outcome> {
    match sc {
        "pp1-64" => pingpong(t, 1, 64, warm, dur).await,
        "pp1-4k" => pingpong(t, 1, 4096, warm, dur).await,
        "pp100-64" => pingpong(t, 100, 64, warm, dur).await,
        "pp100-4k" => pingpong(t, 100, 4096, warm, dur).await,
        "pp1000-64" => pingpong(t, 1000, 64, warm, dur).await,
        "pp1000-4k" => pingpong(t, 1000, 4096, warm, dur).await,
        "stream100x16-4k" => stream(t, 100, 16, 4096, warm, dur).await,
        "connect2000" => connect_storm(t, 2000, 100).await,
        "idle2000" => idle_memory(t, 2000, 100).await,
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

#[allow(clippy::print_stdout)]
fn print_table(table: &[(String, Vec<(String, Outcome)>)]) {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    for (sc, row) in table {
        println!("\n## {sc}");
        let base = &row[0].1;
        let nginx: HashMap<&str, &Outcome> = row.iter().map(|(n, o)| (n.as_str(), o)).collect();
        let ng = nginx.get("nginx");
        println!(
            "| target | msgs/s (or conn/s) | MB/s | p50 µs | p99 µs | CPU µs/msg | idle RSS B/conn | errors | rate ÷ {} | rate ÷ nginx |",
            row[0].0
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (name, o) in row {
            let rate = o.msgs as f64 / o.secs;
            let mbs = o.bytes as f64 / o.secs / 1e6;
            let base_rate = base.msgs as f64 / base.secs;
            let ng_rate = ng.map(|n| n.msgs as f64 / n.secs).unwrap_or(0.0);
            println!(
                "| {name} | {rate:.0} | {mbs:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                o.p50_us,
                o.p99_us,
                o.cpu_us_per_msg
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into()),
                o.rss_per_conn
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "-".into()),
                o.errors,
                ratio(rate, base_rate),
                ratio(rate, ng_rate),
            );
        }
    }
}
