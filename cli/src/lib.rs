//! `myagent-manager`: the command-line interface over the control plane's gRPC API
//! (seed §3, DESIGN §8), plus `up`, the whole stack in one process.

pub mod args;
pub mod client;
pub mod commands;
pub mod condition;
pub mod error;
pub mod monitor;
pub mod output;
pub mod timeparse;
pub mod up;

pub use args::{Cli, Command, OutputFormat};
pub use error::{Error, Result};

use client::Clients;
use commands::{connections, observe, routing, services};

/// Parses the process's arguments. Help and version print as clap does; a usage error (unknown
/// flag, missing argument, invalid value) prints `error: INVALID_REQUEST: ...` — the seed's code
/// for invalid input, as every other error names its code — and exits 2.
pub fn parse_args() -> Cli {
    use clap::Parser;
    Cli::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            e.exit();
        }
        eprint!("{}", error::usage_text(&e.render().to_string()));
        std::process::exit(error::EXIT_USAGE);
    })
}

/// Runs one parsed command line to completion.
pub async fn run(cli: Cli) -> Result<()> {
    let format = cli.global.output;
    // `up` serves rather than calls; `monitor` manages its own connection (it must survive the
    // control plane going away and coming back).
    match &cli.command {
        Command::Up(a) => return up::run(a).await,
        Command::Monitor(a) => return monitor::run(&cli.global, a).await,
        _ => {}
    }
    let mut c = Clients::connect(&cli.global).await?;
    let rendered = match &cli.command {
        Command::Register(a) => services::register(&mut c, a).await?,
        Command::Start(a) => services::start(&mut c, &a.service).await?,
        Command::Stop(a) => services::stop(&mut c, &a.service).await?,
        Command::Restart(a) => services::restart(&mut c, a).await?,
        Command::List(a) => services::list(&mut c, a).await?,
        Command::Show(a) => services::show(&mut c, &a.service).await?,
        Command::Remove(a) => services::remove(&mut c, &a.service).await?,
        Command::Config(a) => services::config(&mut c, a).await?,
        Command::Status => observe::status(&mut c).await?,
        Command::Logs(a) if a.follow => return observe::follow(&mut c, a, format).await,
        Command::Logs(a) => observe::logs(&mut c, a).await?,
        Command::HealthCheck(a) => {
            let (rendered, failed) = observe::health_check(&mut c, a).await?;
            rendered.print(format)?;
            return failed.map_or(Ok(()), Err);
        }
        Command::Connections(a) => connections::list(&mut c, a).await?,
        Command::Disconnect(a) => connections::disconnect(&mut c, a).await?,
        Command::Notify(a) => connections::notify(&mut c, a).await?,
        Command::Route(r) => routing::run(&mut c, r).await?,
        Command::Up(a) => return up::run(a).await,
        Command::Monitor(a) => return monitor::run(&cli.global, a).await,
    };
    rendered.print(format)
}

/// Logs go to stderr so they never mix with command output; `up` logs at info, other commands
/// only warnings. `MYAGENT_LOG` (or `RUST_LOG`) overrides.
pub fn init_tracing(cli: &Cli) {
    let default = if matches!(cli.command, Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = std::env::var("MYAGENT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
