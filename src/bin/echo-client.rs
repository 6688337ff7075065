//! `echo-client`: parse, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use echod::client::{self, ClientArgs, ClientError};

fn main() -> ExitCode {
    match client::run(ClientArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::StdoutClosed) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-client: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
