//! `echo-server`: parse, configure, serve; map errors to exit codes.

use std::process::ExitCode;

use echod::{config, server, Config, EXIT_USAGE};

fn main() -> ExitCode {
    let args = config::ServerArgs::parse();
    let (config, warnings) = match config::environment().and_then(|env| Config::load(&args, env)) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("echo-server: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    echod::logging::init(config.log_format, &config.log_level);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let source = args.config_file().map(ToOwned::to_owned);
    let reload = Box::new(move || config::environment().and_then(|env| Config::load(&args, env)));
    match server::run_until_signalled(config, source, reload) {
        Ok(_report) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-server: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
