//! `up`: the whole stack in one process on the embedded store — control plane, one proxy and
//! the gateway — bound first (port 0 allowed), addresses printed, then served until Ctrl-C or
//! SIGTERM, then shut down in order: gateway and proxy first (they depend on the control
//! plane), the control plane last.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::args::UpArgs;
use crate::error::{Error, Result};

/// How long each tier may take to stop before `up` gives up on it.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// The addresses `up` bound, as printed.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub grpc: String,
    pub proxy: String,
    pub gateway: String,
    pub control_plane_admin: String,
    pub proxy_admin: String,
}

impl Addresses {
    /// Human lines followed by one machine-readable line (`myagent-manager up ready k=v ...`).
    pub fn render(&self, data_dir: &Path) -> String {
        format!(
            "grpc     {}\nproxy    {}\ngateway  {}\nadmin    control-plane {}  proxy {}\ndata     {}\n\
             myagent-manager up ready grpc={} proxy={} gateway={} control_plane_admin={} proxy_admin={}\n",
            self.grpc,
            self.proxy,
            self.gateway,
            self.control_plane_admin,
            self.proxy_admin,
            data_dir.display(),
            self.grpc,
            self.proxy,
            self.gateway,
            self.control_plane_admin,
            self.proxy_admin,
        )
    }
}

/// A wildcard bind address is reached through loopback by the co-located components.
fn dial(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The token the proxy presents when the control plane requires one: the first configured.
fn first_token(cp: &myagent_control_plane::Cli) -> Result<Option<String>> {
    let mut text = String::new();
    if let Some(path) = &cp.auth_token_file {
        text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--auth-token-file {}: {e}", path.display())))?;
    }
    if let Some(t) = &cp.auth_tokens {
        text.push('\n');
        text.push_str(t);
    }
    Ok(text
        .split(['\n', ','])
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from))
}

fn parse<C: Parser>(what: &str, args: Vec<String>) -> Result<C> {
    C::try_parse_from(args).map_err(|e| Error::Usage(format!("{what}: {}", e.to_string().trim())))
}

pub async fn run(a: &UpArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .map_err(|e| Error::Usage(format!("--data-dir {}: {e}", a.data_dir.display())))?;
    let data_dir = a
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| a.data_dir.clone());

    // Control plane on the embedded store.
    let mut cp_args = vec![
        "myagent-control-plane".to_string(),
        format!("--listen={}", a.grpc_listen),
        format!("--admin-listen={}", a.control_plane_admin_listen),
        "--store=embedded".to_string(),
        format!("--data-dir={}", data_dir.display()),
    ];
    if let Some(f) = &a.auth_token_file {
        cp_args.push(format!("--auth-token-file={}", f.display()));
    }
    let cp_cli: myagent_control_plane::Cli = parse("control plane", cp_args)?;
    let token = first_token(&cp_cli)?;
    let cp = myagent_control_plane::bind(cp_cli)
        .await
        .map_err(|e| match e.code() {
            "INVALID_REQUEST" => Error::Usage(format!("control plane: {e}")),
            _ => Error::Stack(format!("control plane: {e}")),
        })?;
    let grpc_url = format!("http://{}", dial(cp.grpc_addr));

    // Proxy, fed by the control plane above.
    let mut proxy_args = vec![
        "myagent-proxy".to_string(),
        format!("--listen={}", a.proxy_listen),
        format!("--admin-listen={}", a.proxy_admin_listen),
        format!("--control-plane={grpc_url}"),
        format!("--data-dir={}", data_dir.join("proxy").display()),
    ];
    if let Some(t) = &token {
        proxy_args.push(format!("--token={t}"));
    }
    let proxy_cli: myagent_data_plane::Cli = parse("proxy", proxy_args)?;
    std::fs::create_dir_all(&proxy_cli.data_dir)
        .map_err(|e| Error::Usage(format!("--data-dir {}: {e}", proxy_cli.data_dir.display())))?;
    let proxy = myagent_data_plane::bind(proxy_cli)
        .await
        .map_err(|e| Error::Stack(format!("proxy: {e}")))?;

    // Gateway; it passes each client's own bearer token through.
    let gw_cli: myagent_gateway::Cli = parse(
        "gateway",
        vec![
            "myagent-gateway".to_string(),
            format!("--listen={}", a.gateway_listen),
            format!("--control-plane={grpc_url}"),
        ],
    )?;
    let gateway = myagent_gateway::bind(gw_cli)
        .await
        .map_err(|e| Error::Stack(format!("gateway: {e}")))?;

    let addrs = Addresses {
        grpc: grpc_url.clone(),
        proxy: format!("ws://{}/ws", proxy.listen_addr),
        gateway: format!("{}/api/v1", gateway.base_url()),
        control_plane_admin: format!("http://{}", cp.admin_addr),
        proxy_admin: format!("http://{}", proxy.admin_addr),
    };
    if token.is_none()
        && [proxy.listen_addr, gateway.listen_addr]
            .iter()
            .any(|a| !a.ip().is_loopback())
    {
        tracing::warn!(
            "NO AUTHENTICATION: the stack listens beyond loopback without tokens; \
             set --auth-token-file to require `authorization: Bearer`"
        );
    }

    // Tiered shutdown: the edge (proxy, gateway) stops first, the control plane last.
    let edge_stop = CancellationToken::new();
    let core_stop = CancellationToken::new();
    let mut edge = JoinSet::new();
    {
        let t = edge_stop.clone();
        edge.spawn(async move { proxy.run(t).await.map_err(|e| format!("proxy: {e}")) });
        let t = edge_stop.clone();
        edge.spawn(async move { gateway.run(t).await.map_err(|e| format!("gateway: {e}")) });
    }
    let core_token = core_stop.clone();
    let mut core = tokio::spawn(async move {
        cp.run(core_token)
            .await
            .map_err(|e| format!("control plane: {e}"))
    });

    // Printed only once every listener is bound: harnesses may connect as soon as they read it.
    {
        let mut out = std::io::stdout().lock();
        out.write_all(addrs.render(&data_dir).as_bytes())?;
        out.flush()?;
    }
    tracing::info!(grpc = %addrs.grpc, proxy = %addrs.proxy, gateway = %addrs.gateway, "myagent stack up");

    let mut failure: Option<String> = None;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        Some(done) = edge.join_next() => failure = Some(component_end(done)),
        done = &mut core => failure = Some(match done {
            Ok(Ok(())) => "control plane stopped unexpectedly".into(),
            Ok(Err(e)) => e,
            Err(e) => format!("control plane task: {e}"),
        }),
    }
    if let Some(f) = &failure {
        tracing::error!(error = %f, "a component stopped; shutting the stack down");
    }

    edge_stop.cancel();
    let edge_done = tokio::time::timeout(STOP_DEADLINE, async {
        while let Some(done) = edge.join_next().await {
            if let Err(e) = done.map_err(|e| e.to_string()).and_then(|r| r) {
                tracing::warn!(error = %e, "component stopped with an error");
            }
        }
    })
    .await;
    if edge_done.is_err() {
        tracing::warn!("proxy/gateway did not stop in time");
        edge.abort_all();
    }
    core_stop.cancel();
    if !core.is_finished() {
        match tokio::time::timeout(STOP_DEADLINE, &mut core).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("control plane did not stop in time");
                core.abort();
            }
        }
    }
    tracing::info!("myagent stack stopped");
    match failure {
        Some(f) => Err(Error::Stack(f)),
        None => Ok(()),
    }
}

fn component_end(
    done: std::result::Result<std::result::Result<(), String>, tokio::task::JoinError>,
) -> String {
    match done {
        Ok(Ok(())) => "a component stopped unexpectedly".into(),
        Ok(Err(e)) => e,
        Err(e) => format!("component task: {e}"),
    }
}
