//! Forwarding audit entries and checkpoints to the systemd journal, so the depot's log shipping
//! (systemd-journal-remote, rsyslog) holds a copy off the machine.
//!
//! Native journal protocol: one datagram per entry to `/run/systemd/journal/socket`, each field
//! `KEY=value\n` (a value holding a newline would be `KEY\n`, its length as u64 LE, the bytes,
//! `\n`). Fields: `MESSAGE`, `MESSAGE_ID` ([`ENTRY_MESSAGE_ID`] for every audit entry,
//! [`CHECKPOINT_MESSAGE_ID`] for every signed checkpoint), `PRIORITY=6`,
//! `SYSLOG_IDENTIFIER=tek-audit`, `TEK_AUDIT_SEQ`, `TEK_AUDIT_HASH`, `TEK_AUDIT_EVENT` (entries),
//! and `TEK_AUDIT_LINE` (the exact line, or the checkpoint's JSON). Select them with
//! `journalctl MESSAGE_ID=9a58adb5c68348b3ab56f85d8108cb6c`.
//!
//! Sending never fails an append and waits at most [`SEND_TIMEOUT`] for a full journal socket
//! (the append holds the log's lock): without a journal socket (no systemd, a test machine) it
//! does nothing; a batch stops forwarding at its first failure; errors are logged once. The log
//! file stays the record.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// `MESSAGE_ID` of every audit entry (fixed; never change it, journal queries depend on it).
pub const ENTRY_MESSAGE_ID: &str = "9a58adb5c68348b3ab56f85d8108cb6c";
/// `MESSAGE_ID` of every signed checkpoint.
pub const CHECKPOINT_MESSAGE_ID: &str = "b234744288d5465fa6f0905fa1e88cb5";
/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Longest wait for room on journald's socket, per datagram.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

static WARNED: AtomicBool = AtomicBool::new(false);

/// Encodes fields in the native protocol.
pub(crate) fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Sends one journal entry to `socket` (best effort, see the module docs); false when it failed.
pub(crate) fn send(socket: &Path, fields: &[(&str, &str)]) -> bool {
    let result = UnixDatagram::unbound().and_then(|s| {
        s.set_write_timeout(Some(SEND_TIMEOUT))?;
        s.send_to(&encode(fields), socket)
    });
    match result {
        Ok(_) => true,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            true
        }
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    socket = %socket.display(),
                    "forwarding audit entries to the journal failed ({e}); the audit log file \
                     still holds them (logged once)"
                );
            }
            false
        }
    }
}

/// Where entries go: the journal socket, or nowhere.
#[derive(Debug, Clone)]
pub(crate) struct JournalSink(pub(crate) Option<PathBuf>);

impl Default for JournalSink {
    /// journald's socket when it exists (checked once, when the log is opened), else nowhere.
    fn default() -> Self {
        let p = PathBuf::from(JOURNAL_SOCKET);
        JournalSink(p.exists().then_some(p))
    }
}

impl JournalSink {
    /// Forwards one audit line; false when sending failed.
    pub(crate) fn entry(&self, seq: u64, event: &str, hash: &str, line: &str) -> bool {
        let Some(sock) = &self.0 else { return true };
        let msg = format!("tek audit #{seq} {event}");
        let seq = seq.to_string();
        send(
            sock,
            &[
                ("MESSAGE", &msg),
                ("MESSAGE_ID", ENTRY_MESSAGE_ID),
                ("PRIORITY", "6"),
                ("SYSLOG_IDENTIFIER", "tek-audit"),
                ("TEK_AUDIT_SEQ", &seq),
                ("TEK_AUDIT_HASH", hash),
                ("TEK_AUDIT_EVENT", event),
                ("TEK_AUDIT_LINE", line),
            ],
        )
    }

    /// Forwards one signed checkpoint.
    pub(crate) fn checkpoint(&self, cp: &super::Checkpoint) {
        let Some(sock) = &self.0 else { return };
        let msg = format!("tek audit checkpoint #{} {}", cp.seq, cp.hash);
        let seq = cp.seq.to_string();
        let json = serde_json::to_string(cp).expect("serialize checkpoint");
        send(
            sock,
            &[
                ("MESSAGE", &msg),
                ("MESSAGE_ID", CHECKPOINT_MESSAGE_ID),
                ("PRIORITY", "6"),
                ("SYSLOG_IDENTIFIER", "tek-audit"),
                ("TEK_AUDIT_SEQ", &seq),
                ("TEK_AUDIT_HASH", &cp.hash),
                ("TEK_AUDIT_LINE", &json),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_encoding() {
        assert_eq!(encode(&[("A", "b"), ("C", "")]), b"A=b\nC=\n");
        let mut want = b"M\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"x\ny\n");
        assert_eq!(encode(&[("M", "x\ny")]), want);
    }

    #[test]
    fn no_socket_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        assert!(JournalSink(Some(d.path().join("absent"))).entry(0, "x", "h", "{}"));
        assert!(JournalSink(None).entry(0, "x", "h", "{}"));
    }
}
