use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sockgate::cli::Cli::parse();
    if matches!(cli.command, Some(sockgate::cli::Command::Conformance(_))) {
        sockgate::telemetry::init_to_stderr(cli.config.log_format);
    } else {
        sockgate::telemetry::init(cli.config.log_format);
    }
    match sockgate::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sockgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}
