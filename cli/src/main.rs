fn main() {
    let cli = myagent_cli::parse_args();
    myagent_cli::init_tracing(&cli);
    let format = cli.global.output;
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => match rt.block_on(myagent_cli::run(cli)) {
            Ok(()) => 0,
            Err(e) => {
                e.report(format);
                e.exit_code()
            }
        },
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}
