//! How a failed command says so: a sentence on stderr (`tek: error: ...`), or with `--json`
//! the one error object of the JSON convention on stdout,
//! `{"error": {"code": "not_found", "message": "..."}}`, and in both cases a non-zero exit.
//! With `--json`, stdout always holds exactly one JSON document: the result, or this object.
//!
//! The code is for programs to branch on (the message is for people and may change). It comes
//! from the typed errors in the chain, never from the sentence: the agent's own
//! [`ErrorCode`](agent::server::protocol::ErrorCode), a missing state root, an unreachable
//! agent, else the kind of the first OS error.

use std::io::ErrorKind;

use agent::depot::StateRootMissing;
use agent::server::client::{AgentError, AgentUnreachable};

/// Exit status of a command that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a command line that does not parse (as clap's own).
pub const EXIT_USAGE: u8 = 2;

/// The stable code of a failure, for `{"error": {"code": ...}}`.
pub fn code(e: &anyhow::Error) -> String {
    // anyhow finds a context value by downcasting the error itself, not in its chain.
    if e.downcast_ref::<StateRootMissing>().is_some() {
        return "state_root_missing".into();
    }
    for cause in e.chain() {
        if let Some(a) = cause.downcast_ref::<AgentError>() {
            if let Some(c) = a.code
                && let Ok(serde_json::Value::String(s)) = serde_json::to_value(c)
            {
                return s;
            }
            return "agent_error".into();
        }
        if cause.is::<StateRootMissing>() {
            return "state_root_missing".into();
        }
        if cause.is::<AgentUnreachable>() {
            return "agent_unreachable".into();
        }
        // A restore refused (or stopped) by what stands in its target.
        if cause
            .downcast_ref::<client_data::DataError>()
            .is_some_and(|d| d.is_conflict())
        {
            return "conflict".into();
        }
        // Another restore, wipe or withdrawal holds the dataset: try again once it is done.
        if matches!(
            cause.downcast_ref::<client_data::DataError>(),
            Some(client_data::DataError::Locked(_))
        ) {
            return "locked".into();
        }
    }
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::NotFound => "not_found",
                ErrorKind::PermissionDenied => "permission_denied",
                ErrorKind::AlreadyExists => "already_exists",
                ErrorKind::InvalidInput | ErrorKind::InvalidData => "invalid_input",
                _ => "io_error",
            }
            .into();
        }
    }
    "failed".into()
}

/// The JSON error object for `message` with `code`, as one line.
pub fn json(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

/// Reports a failed command: the JSON error object on stdout when `json`, else
/// `tek: error: ...` on stderr. A command that already printed its JSON result (a failed
/// check: verify, audit, write) keeps that as its one JSON document, and the sentence goes to
/// stderr. Returns the exit status.
pub fn report(e: &anyhow::Error, json_output: bool) -> u8 {
    let message = agent::errors::text(e);
    if json_output && !super::render::json_printed() {
        println!("{}", json(&code(e), &message));
    } else {
        eprintln!("tek: error: {message}");
    }
    EXIT_FAILED
}

/// Reports a command line that does not parse: as clap does (help and version included), or
/// with `--json` among the arguments as the JSON error object with code `usage`. Returns the
/// exit status (or exits, for help and version).
pub fn usage(e: clap::Error) -> u8 {
    use clap::error::ErrorKind as K;
    let informational = matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !std::env::args_os().any(|a| a == "--json") {
        e.exit();
    }
    // clap's first line, without its "error: " (the rest is usage and a --help hint).
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    println!("{}", json("usage", message));
    EXIT_USAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_come_from_typed_errors_in_the_chain() {
        let e = Err::<(), _>(std::io::Error::from(ErrorKind::NotFound))
            .context("reading x")
            .unwrap_err();
        assert_eq!(code(&e), "not_found");
        let e = anyhow::Error::new(AgentError {
            code: Some(agent::server::protocol::ErrorCode::Conflict),
            message: "running".into(),
        })
        .context("cancelling j-1");
        assert_eq!(code(&e), "conflict");
        assert_eq!(code(&anyhow::anyhow!("no")), "failed");
        let e = anyhow::Error::new(client_data::DataError::TargetNotEmpty(Box::default()))
            .context("restoring d to /t");
        assert_eq!(code(&e), "conflict");
        let e = anyhow::Error::new(client_data::DataError::Locked("ds-1".into()))
            .context("restoring d to /t");
        assert_eq!(code(&e), "locked");
    }

    #[test]
    fn the_error_object() {
        let v: serde_json::Value = serde_json::from_str(&json("not_found", "no \"x\"")).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no \"x\"");
    }
}
