//! `myagent-gateway` binary: parse flags, bind, print the bound address, serve until Ctrl-C/SIGTERM.

use std::io::Write;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match myagent_gateway::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors are configuration errors: 64 (EX_USAGE), as for the other servers.
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    myagent_gateway::telemetry::init(cli.log_format, &cli.log_level);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("myagent-gateway: {e}");
            // 64 = EX_USAGE for configuration errors (STYLE 2).
            match e {
                myagent_gateway::Error::Config(_)
                | myagent_gateway::Error::Tls(_)
                | myagent_gateway::Error::Bind { .. } => std::process::ExitCode::from(64),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: myagent_gateway::Cli) -> myagent_gateway::Result<()> {
    let bound = myagent_gateway::bind(cli).await?;
    // Harnesses read this line to learn the port (documented in the README).
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "myagent-gateway listening {}={}",
        bound.scheme, bound.listen_addr
    )?;
    out.flush()?;
    drop(out);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    bound.run(shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
