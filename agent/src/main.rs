//! `tek`: parse the command line, set up logging, hand the subcommand to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = agent::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match agent::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tek: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
