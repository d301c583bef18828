//! `tek`: parse the command line, set up logging, hand the subcommand to the library.

#![forbid(unsafe_code)]

use clap::Parser;

mod cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if cli.command.only_reads() {
        // `tek image list | head -1`: end quietly when the reader is gone, instead of panicking
        // with "failed printing to stdout: Broken pipe" (exit 101).
        sigpipe::reset();
    }
    // The daemon logs its work (disks, jobs, refusals) for journald; commands stay quiet.
    let default_level = match &cli.command {
        cli::Command::Agent { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // No colour escapes in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tek: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
