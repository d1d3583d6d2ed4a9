//! Config propagation benchmark (a program, not a test): one control plane holding `--services`
//! services and `--proxies` real `myagent-proxy` processes. Each change is a service config
//! update written with `wait_for_sync`; its time is from the write call to the answer, which
//! comes once every proxy has ACKed the config version holding the change (the answer's sync
//! status is checked). Prints the time to the first full sync and the change latencies.
//!
//! ```sh
//! cargo build --release --bins --examples -p myagent-tests
//! target/release/examples/syncbench [--services 10000] [--proxies 3] [--changes 200] [--store embedded|etcd]
//! ```
//! `--store etcd` starts its own `etcd` (it must be on PATH). Loopback only; every process it
//! starts ends with it.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt, TryStreamExt};
use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, unique_prefix};
use myagent_tests::etcd::Etcd;
use myagent_tests::proxy::ProxyProcess;

/// Registrations in flight while the services are created.
const REGISTER_CONCURRENCY: usize = 32;
/// How long a write may wait for the proxies (seconds).
const WAIT_FOR_SYNC: f64 = 10.0;

struct Args {
    services: usize,
    proxies: usize,
    changes: usize,
    etcd: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        services: 10_000,
        proxies: 3,
        changes: 200,
        etcd: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--services" => a.services = value()?.parse()?,
            "--proxies" => a.proxies = value()?.parse()?,
            "--changes" => a.changes = value()?.parse()?,
            "--store" => {
                a.etcd = match value()?.as_str() {
                    "embedded" => false,
                    "etcd" => true,
                    other => bail!("--store: embedded or etcd, not {other}"),
                }
            }
            other => bail!("unknown flag {other} (see the file's header)"),
        }
    }
    ensure!(
        a.services > 0 && a.proxies > 0 && a.changes > 0,
        "counts must be positive"
    );
    Ok(a)
}

/// A config change: the service's weight (changes are visible to the proxies only when the
/// weight differs from the current one).
fn set_weight(service: &str, weight: u32, wait_for_sync: f64) -> pb::UpdateServiceConfigRequest {
    pb::UpdateServiceConfigRequest {
        service: service.to_string(),
        config: Some(pb::ServiceConfig {
            weight: Some(weight),
            ..Default::default()
        }),
        wait_for_sync,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let etcd = args.etcd.then(Etcd::start);
    let builder = match &etcd {
        Some(e) => control_plane().etcd(e, &unique_prefix("syncbench")),
        None => control_plane(),
    };
    let cp = builder.spawn_binary().await;
    let mut registry = cp.registry().await;

    // The services: external (no process), health checks off, so the control plane does
    // nothing but hold them and push them.
    let started = Instant::now();
    let names: Vec<String> = (0..args.services).map(|i| format!("svc-{i:05}")).collect();
    stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let mut registry = registry.clone();
            async move {
                let req = pb::RegisterServiceRequest {
                    name: name.clone(),
                    host: "127.0.0.1".into(),
                    port: 20_000 + (i % 40_000) as u32,
                    tags: vec![format!("group-{}", i % 10)],
                    config: Some(pb::ServiceConfig {
                        health_check_enabled: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                registry.register_service(req).await.map(|_| ())
            }
        })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .try_collect::<()>()
        .await
        .context("registering the services")?;
    let registered = started.elapsed();

    // The proxies, each with its own node id and config cache.
    let dirs: Vec<tempfile::TempDir> = (0..args.proxies)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut proxies = Vec::new();
    for dir in &dirs {
        let data_dir = dir.path().display().to_string();
        proxies.push(
            ProxyProcess::spawn(&["--control-plane", &cp.grpc_url(), "--data-dir", &data_dir])
                .await,
        );
    }
    // First full sync: a change written with wait_for_sync, until every proxy is counted.
    // (Every change sets a weight other than the default and the previous one: a write that
    // changes nothing the proxies see is published after a batching delay, 500 ms.)
    let mut attempt = 0;
    let first = loop {
        attempt += 1;
        let svc = registry
            .update_service_config(set_weight(&names[0], 1000 - attempt, WAIT_FOR_SYNC))
            .await?
            .into_inner();
        let sync = svc.sync.unwrap_or_default();
        if sync.in_sync && sync.proxies.len() == args.proxies {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the proxies did not sync within 120 s: {sync:?}"
        );
    };

    let mut times = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let name = &names[(i * 7919) % names.len()];
        let t = Instant::now();
        let svc = registry
            .update_service_config(set_weight(name, 2 + (i % 900) as u32, WAIT_FOR_SYNC))
            .await?
            .into_inner();
        let took = t.elapsed();
        let sync = svc.sync.unwrap_or_default();
        ensure!(
            sync.in_sync
                && sync.proxies.len() == args.proxies
                && sync
                    .proxies
                    .iter()
                    .all(|p| p.applied_version >= sync.config_version),
            "change {i} answered before every proxy ACKed: {sync:?}"
        );
        times.push(took);
    }
    times.sort();
    // The same writes without waiting: what the store's commit alone takes.
    let mut writes = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let t = Instant::now();
        registry
            .update_service_config(set_weight(
                &names[(i * 7919) % names.len()],
                2 + ((i + 450) % 900) as u32,
                0.0,
            ))
            .await?;
        writes.push(t.elapsed());
    }
    writes.sort();

    println!(
        "# syncbench {} vCPU, store {}, {} services, {} proxies, {} changes",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.etcd { "etcd" } else { "embedded" },
        args.services,
        args.proxies,
        args.changes
    );
    println!(
        "registered {} services in {:.1} s ({:.0}/s)",
        args.services,
        registered.as_secs_f64(),
        args.services as f64 / registered.as_secs_f64()
    );
    println!(
        "proxies started -> all {} ACKed the full config: {:.0} ms",
        args.proxies,
        first.as_secs_f64() * 1000.0
    );
    println!(
        "config change -> every proxy ACKed (write with wait_for_sync): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    println!(
        "the same writes without waiting: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&writes, 0.5),
        percentile(&writes, 0.99)
    );

    for p in &mut proxies {
        let _ = p.child.start_kill();
        let _ = p.child.wait().await;
    }
    cp.shutdown().await;
    if let Some(e) = etcd {
        e.stop();
    }
    Ok(())
}
