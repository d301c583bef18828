//! Bounds on control connections, so no client (hostile, stuck or buggy) can exhaust the agent:
//! a request line is at most [`Limits::max_line`] bytes and is never buffered beyond that; a
//! connection with no request for [`Limits::idle`] is closed, and so is one whose request line
//! takes longer than [`Limits::line`] to arrive (slow-loris); a reply a client does not read
//! within [`Limits::write`] closes it; each uid holds at most [`Limits::per_uid`] connections
//! and everyone together [`Limits::total`] ([`Slots`]). A subscription streams events and is
//! never idle. When `accept` fails (EMFILE, ENFILE, ENOMEM...), [`AcceptErrors`] backs off
//! exponentially up to a second and logs a repeated error once, then its count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::time::Instant;

/// The bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line, in bytes, newline excluded.
    pub max_line: usize,
    /// Longest wait for the next request.
    pub idle: Duration,
    /// Longest time from a request line's first byte to its newline.
    pub line: Duration,
    /// Longest time a reply or event may take to be written (the client reads too slowly).
    pub write: Duration,
    /// Most connections one uid may hold.
    pub per_uid: usize,
    /// Most connections in all.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            idle: Duration::from_secs(60),
            line: Duration::from_secs(10),
            write: Duration::from_secs(10),
            per_uid: 16,
            total: 64,
        }
    }
}

/// Connection slots per uid and in total.
#[derive(Debug)]
pub struct Slots {
    per_uid: usize,
    total: usize,
    held: Mutex<(HashMap<u32, usize>, usize)>,
}

/// A held slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

/// Why no slot was free: the sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full(pub String);

impl Slots {
    /// Slots bounded by `limits`.
    pub fn new(limits: &Limits) -> Arc<Slots> {
        Arc::new(Slots {
            per_uid: limits.per_uid,
            total: limits.total,
            held: Mutex::new((HashMap::new(), 0)),
        })
    }

    /// Takes a slot for `uid` (`None`: credentials unknown, counted as one shared uid).
    pub fn take(self: &Arc<Self>, uid: Option<u32>) -> Result<Slot, Full> {
        let uid = uid.unwrap_or(u32::MAX);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (per, total) = &mut *held;
        let mine = per.entry(uid).or_insert(0);
        if *mine >= self.per_uid {
            return Err(Full(format!(
                "uid {uid} already holds {} connections to the agent (the most allowed); \
                 closing this one",
                self.per_uid
            )));
        }
        if *total >= self.total {
            return Err(Full(format!(
                "the agent already serves {} connections (the most allowed); closing this one",
                self.total
            )));
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        let (per, total) = &mut *held;
        if let Some(n) = per.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.uid);
            }
        }
        *total -= 1;
    }
}

/// Why reading a request line stopped.
#[derive(Debug)]
pub enum LineError {
    /// More than the maximum without a newline.
    TooLong,
    /// Nothing arrived before the idle deadline.
    Idle,
    /// A line was started but not finished in time.
    Slow,
    /// The connection failed.
    Io(std::io::Error),
}

/// Reads one line (without its newline), waiting for its first byte until `idle_until` and
/// for the rest at most `line_time` after that, and holding at most `max` bytes. `Ok(None)`
/// at end of stream; a last line without a newline is returned as a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    rd: &mut R,
    max: usize,
    idle_until: Instant,
    line_time: Duration,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    let mut line_until: Option<Instant> = None;
    loop {
        let deadline = line_until.unwrap_or(idle_until);
        let avail = match tokio::time::timeout_at(deadline, rd.fill_buf()).await {
            Err(_) if line_until.is_some() => return Err(LineError::Slow),
            Err(_) => return Err(LineError::Idle),
            Ok(r) => r.map_err(LineError::Io)?,
        };
        if avail.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        line_until.get_or_insert_with(|| Instant::now() + line_time);
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if line.len() + take > max {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(&avail[..take]);
        rd.consume(take + usize::from(done));
        if done {
            return Ok(Some(line));
        }
    }
}

/// Backoff and log deduplication for a failing `accept`.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    delay: Duration,
    last: Option<String>,
    repeats: u64,
    reported_at: Option<std::time::Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// While an error keeps repeating, its count is logged at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl AcceptErrors {
    /// Records a failed accept; returns how long to wait before accepting again. The first
    /// occurrence of an error is logged at once; repeats are counted and logged as one line
    /// when the error changes, accepting works again, or every minute while it lasts.
    pub fn failed(&mut self, e: &std::io::Error) -> Duration {
        let msg = e.to_string();
        if self.last.as_deref() == Some(msg.as_str()) {
            self.repeats += 1;
            if self
                .reported_at
                .is_some_and(|t| t.elapsed() >= REPORT_EVERY)
            {
                self.report_repeats();
                self.reported_at = Some(std::time::Instant::now());
            }
        } else {
            self.report_repeats();
            tracing::warn!("accepting a control connection: {msg} (backing off up to 1 s)");
            self.last = Some(msg);
            self.reported_at = Some(std::time::Instant::now());
        }
        self.delay = (self.delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
        self.delay
    }

    /// Records a successful accept: logs the count of an error that had been repeating.
    pub fn succeeded(&mut self) {
        if self.last.is_some() {
            self.report_repeats();
            tracing::info!("accepting control connections again");
            *self = AcceptErrors::default();
        }
    }

    fn report_repeats(&mut self) {
        if self.repeats > 0
            && let Some(last) = &self.last
        {
            tracing::warn!(
                "accepting a control connection: {last} (repeated {} times)",
                self.repeats
            );
        }
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8], max: usize) -> Result<Option<Vec<u8>>, LineError> {
        let mut rd = tokio::io::BufReader::with_capacity(4, input);
        read_line(
            &mut rd,
            max,
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        assert_eq!(read(b"abc\ndef", 8).await.unwrap().unwrap(), b"abc");
        assert_eq!(read(b"12345678\n", 8).await.unwrap().unwrap(), b"12345678");
        assert!(matches!(
            read(b"123456789\n", 8).await,
            Err(LineError::TooLong)
        ));
        assert!(matches!(
            read(&[b'x'; 100], 8).await,
            Err(LineError::TooLong)
        ));
        assert_eq!(read(b"tail", 8).await.unwrap().unwrap(), b"tail");
        assert!(read(b"", 8).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn idle_and_slow_lines_time_out() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut rd = tokio::io::BufReader::new(server);
        let t = Duration::from_millis(100);
        let r = read_line(&mut rd, 64, Instant::now() + t, t).await;
        assert!(matches!(r, Err(LineError::Idle)), "{r:?}");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"{\"v\":")
            .await
            .unwrap();
        let r = read_line(&mut rd, 64, Instant::now() + t, t).await;
        assert!(matches!(r, Err(LineError::Slow)), "{r:?}");
    }

    #[test]
    fn slots_per_uid_and_total() {
        let s = Slots::new(&Limits {
            per_uid: 2,
            total: 3,
            ..Limits::default()
        });
        let a1 = s.take(Some(1)).unwrap();
        let _a2 = s.take(Some(1)).unwrap();
        assert!(s.take(Some(1)).unwrap_err().0.contains("uid 1"));
        let _b1 = s.take(Some(2)).unwrap();
        assert!(s.take(Some(3)).unwrap_err().0.contains("3 connections"));
        drop(a1);
        s.take(Some(3)).unwrap();
    }

    #[test]
    fn accept_backoff_grows_to_a_second_and_resets() {
        let mut a = AcceptErrors::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let delays: Vec<_> = (0..10).map(|_| a.failed(&e)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(a.repeats, 9);
        a.succeeded();
        assert_eq!(a.failed(&e), FIRST_DELAY);
    }
}
