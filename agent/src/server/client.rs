//! The `tek` commands' side of the control socket: one request, one reply; or a subscription
//! that yields events. Blocking std I/O: the commands are short-lived.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::server::protocol::{ErrorCode, Event, EventLine, Op, PROTOCOL_VERSION, Reply, Request};

/// The agent refused or failed a request: its sentence, and its [`ErrorCode`] when it gave one
/// (`err.downcast_ref::<AgentError>()` to branch on it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// The kind of refusal, if typed.
    pub code: Option<ErrorCode>,
    /// What the agent said.
    pub message: String,
}

/// No agent answers at the socket (none running, a stale socket, or no permission to use it):
/// the one error of [`Client::connect`], so a command can say so apart from the agent's
/// refusals.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the agent at {} (is `tek agent` running, and may you use its socket?)", path.display())]
pub struct AgentUnreachable {
    /// The socket tried.
    pub path: PathBuf,
    /// Why the connection failed.
    #[source]
    pub source: std::io::Error,
}

/// A connection to the agent.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the agent's socket.
    pub fn connect(path: &Path) -> Result<Client> {
        let s = UnixStream::connect(path).map_err(|source| AgentUnreachable {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = s
            .try_clone()
            .with_context(|| format!("cloning the connection to {}", path.display()))?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(s),
            writer,
        })
    }

    fn send(&mut self, op: Op) -> Result<()> {
        let mut line = serde_json::to_vec(&Request {
            v: PROTOCOL_VERSION,
            op,
        })
        .context("serializing a request")?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("sending a request to {}", self.path.display()))
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("reading from {}", self.path.display()))?;
        if n == 0 {
            bail!("the agent at {} closed the connection", self.path.display());
        }
        Ok(line)
    }

    /// Sends one request and returns its result, or the agent's error.
    pub fn request(&mut self, op: Op) -> Result<serde_json::Value> {
        if let Err(e) = self.send(op) {
            // The agent may have refused the connection with a reason (too many connections)
            // and closed it before our request arrived: that reason is the better error.
            return Err(self.refusal().map(anyhow::Error::from).unwrap_or(e));
        }
        let line = self.read_line()?;
        let reply: Reply = serde_json::from_str(&line).context("parsing the agent's reply")?;
        if !reply.ok {
            return Err(AgentError {
                code: reply.code,
                message: reply.error.unwrap_or_else(|| "unknown error".into()),
            }
            .into());
        }
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    }

    /// A refusal the agent already sent on this connection, if any.
    fn refusal(&mut self) -> Option<AgentError> {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(std::time::Duration::from_secs(1)));
        let reply: Reply = serde_json::from_str(&self.read_line().ok()?).ok()?;
        (!reply.ok).then(|| AgentError {
            code: reply.code,
            message: reply.error.unwrap_or_else(|| "unknown error".into()),
        })
    }

    /// Sends a request and decodes its result as `T`.
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, op: Op) -> Result<T> {
        let v = self.request(op)?;
        serde_json::from_value(v).context("decoding the agent's reply")
    }

    /// Subscribes; the connection then only carries events.
    pub fn subscribe(mut self) -> Result<Events> {
        self.request(Op::Subscribe)?;
        Ok(Events { client: self })
    }
}

/// Events from a subscription.
pub struct Events {
    client: Client,
}

impl Iterator for Events {
    type Item = Result<Event>;
    fn next(&mut self) -> Option<Result<Event>> {
        let line = match self.client.read_line() {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(
            serde_json::from_str::<EventLine>(&line)
                .map(|l| l.event)
                .context("parsing an event from the agent"),
        )
    }
}
