use clap::Parser;
use std::io::IsTerminal;

fn main() -> std::process::ExitCode {
    let cli = match myagent_data_plane::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors are configuration errors: 64 (EX_USAGE), as for the other servers.
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        sub.init();
    } else {
        sub.json().init();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("myagent-proxy: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(myagent_data_plane::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "myagent-proxy failed");
            let code = match e {
                // The configuration cannot be used: flags, TLS files, a listen address taken
                // or not ours, a data dir that cannot be made.
                myagent_data_plane::Error::InvalidConfig(_)
                | myagent_data_plane::Error::Tls(_)
                | myagent_data_plane::Error::Bind { .. }
                | myagent_data_plane::Error::DataDir { .. } => 64,
                _ => 1,
            };
            std::process::ExitCode::from(code)
        }
    }
}
