//! The `dormouse` binary: parse the command line, set up logging, run.

use dormouse::commands as cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match cli::run(cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dormouse: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
