//! `tek`: parse the command line, set up logging, hand the subcommand to the library.

#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches};

mod cli;

fn main() -> std::process::ExitCode {
    let matches = match cli::Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return std::process::ExitCode::from(cli::failure::usage(e)),
    };
    // With --json a failure is the JSON error object on stdout (README "Output for scripts").
    let json = cli::wants_json(&matches);
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
        Err(e) => std::process::ExitCode::from(cli::failure::report(&e, json)),
    }
}
