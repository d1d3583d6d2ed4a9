//! `myagent-control-plane`: parse flags, set up logging, serve until SIGINT/SIGTERM.
//! Exit codes: 0 ok, 64 usage or configuration error, 1 runtime failure.

use clap::Parser;
use myagent_control_plane::config::EXIT_USAGE;
use myagent_control_plane::{telemetry, Cli, Error};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(myagent_control_plane::server::cancel_on_signal(
            shutdown.clone(),
        ));
        myagent_control_plane::run(cli, shutdown).await
    });
    match result {
        Ok(()) => {}
        Err(Error::InvalidRequest { field, message }) => {
            tracing::error!(flag = %field, "invalid configuration: {message}");
            eprintln!("myagent-control-plane: invalid configuration: {field}: {message}");
            std::process::exit(EXIT_USAGE);
        }
        Err(e) => {
            tracing::error!(error = %e, "control plane failed");
            std::process::exit(1);
        }
    }
}
