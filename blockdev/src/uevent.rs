//! Kernel uevents from a NETLINK_KOBJECT_UEVENT socket.
//!
//! We listen to multicast group 1, the kernel's own announcements: these benches run no udevd,
//! and udevd's re-broadcasts (group 2, `libudev` header) would only arrive after its rules ran
//! anyway. A kernel message is `ACTION@DEVPATH\0KEY=VALUE\0...`. The socket is non-blocking and
//! driven by tokio's `AsyncFd`.
//!
//! When the receive buffer fills up the kernel drops messages and the next `recv` fails with
//! ENOBUFS; we report that as [`UeventError::Overflow`] because those events are gone for good and
//! the caller must re-read sysfs. A large buffer (SO_RCVBUFFORCE as root, which ignores
//! `net.core.rmem_max`) makes that rare.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, setsockopt,
    socket, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The kernel's uevent multicast group (udevd re-broadcasts on group 2).
const KERNEL_GROUP: u32 = 1;

/// Default receive buffer: enough for a burst of thousands of events (a hub full of disks).
pub const DEFAULT_RCVBUF: usize = 16 << 20;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `move`, `online`, `offline`, `bind`, `unbind`.
    pub action: String,
    /// Path below `/sys`, e.g. `/devices/virtual/block/loop3`.
    pub devpath: String,
    /// `SUBSYSTEM`, e.g. `block`.
    pub subsystem: Option<String>,
    /// `DEVNAME` (relative to `/dev`), e.g. `loop3`.
    pub devname: Option<String>,
    /// `DEVTYPE`, e.g. `disk` or `partition`.
    pub devtype: Option<String>,
    /// Every `KEY=VALUE` pair of the message (including the ones above).
    pub env: BTreeMap<String, String>,
}

/// Why [`UeventSocket::recv`] returned no event.
#[derive(Debug, thiserror::Error)]
pub enum UeventError {
    /// ENOBUFS: the receive buffer overflowed and events were lost; re-scan sysfs.
    #[error("uevent socket overflowed (ENOBUFS): events were lost, sysfs must be re-scanned")]
    Overflow,
    /// The socket failed.
    #[error("receiving a uevent: {0}")]
    Io(#[from] io::Error),
    /// A message that is not a kernel uevent.
    #[error("malformed uevent: {0}")]
    Malformed(String),
}

impl Uevent {
    /// Parses one kernel message `ACTION@DEVPATH\0KEY=VALUE\0...`.
    pub fn parse(msg: &[u8]) -> Result<Uevent, UeventError> {
        if msg.starts_with(b"libudev\0") {
            return Err(UeventError::Malformed(
                "udevd's libudev format (group 2), expected a kernel message".into(),
            ));
        }
        let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
        let header = fields
            .next()
            .ok_or_else(|| UeventError::Malformed("empty message".into()))?;
        let header = std::str::from_utf8(header)
            .map_err(|_| UeventError::Malformed("header is not UTF-8".into()))?;
        let quoted = header.escape_debug().to_string();
        let (action, devpath) = header.split_once('@').ok_or_else(|| {
            UeventError::Malformed(format!("header \"{quoted}\" has no ACTION@DEVPATH"))
        })?;
        if action.is_empty() || !devpath.starts_with('/') {
            return Err(UeventError::Malformed(format!(
                "header \"{quoted}\" has no ACTION@DEVPATH"
            )));
        }
        let mut env = BTreeMap::new();
        for field in fields {
            let text = std::str::from_utf8(field).map_err(|_| {
                UeventError::Malformed(format!("a field of \"{quoted}\" is not UTF-8"))
            })?;
            let (k, v) = text.split_once('=').ok_or_else(|| {
                UeventError::Malformed(format!(
                    "field \"{}\" of \"{quoted}\" has no '='",
                    text.escape_debug()
                ))
            })?;
            env.insert(k.to_string(), v.to_string());
        }
        Ok(Uevent {
            action: action.to_string(),
            devpath: devpath.to_string(),
            subsystem: env.get("SUBSYSTEM").cloned(),
            devname: env.get("DEVNAME").cloned(),
            devtype: env.get("DEVTYPE").cloned(),
            env,
        })
    }

    /// The kernel name: the last component of the devpath (`loop3`, `sda1`).
    pub fn kernel_name(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or("")
    }
}

/// A bound NETLINK_KOBJECT_UEVENT socket on the kernel group.
#[derive(Debug)]
pub struct UeventSocket {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl UeventSocket {
    /// Binds to the kernel's uevent group with a [`DEFAULT_RCVBUF`] receive buffer. Must be
    /// called inside a tokio runtime.
    pub fn bind() -> io::Result<Self> {
        Self::bind_with(DEFAULT_RCVBUF)
    }

    /// Binds with a given receive buffer size in bytes (the kernel doubles it and enforces a
    /// minimum of about 2 KiB; tests use a tiny one to provoke overflows).
    pub fn bind_with(rcvbuf: usize) -> io::Result<Self> {
        let ctx = |what: &str, e: Errno| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{what} the uevent netlink socket: {e}"),
            )
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(|e| ctx("creating", e))?;
        // RCVBUFFORCE needs CAP_NET_ADMIN; without it fall back to RCVBUF, capped by rmem_max.
        if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &rcvbuf).map_err(|e| ctx("sizing", e))?;
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).map_err(|e| ctx("binding", e))?;
        // SAFETY: `register` needs the fd to stay open and the same for the AsyncFd's lifetime;
        // an OwnedFd moved into it guarantees both (nothing else can close or swap it). This is
        // the agent's only `unsafe`.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                let e = e.into_parts().1;
                io::Error::new(e.kind(), format!("registering the uevent socket: {e}"))
            })?;
        Ok(UeventSocket {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The receive buffer size the kernel actually granted.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        Ok(nix::sys::socket::getsockopt(
            self.fd.get_ref(),
            sockopt::RcvBuf,
        )?)
    }

    /// Waits for the next kernel uevent. Cancel-safe: a message is only consumed inside the
    /// synchronous read.
    pub async fn recv(&mut self) -> Result<Uevent, UeventError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            let res = guard.try_io(|fd| {
                recvfrom::<NetlinkAddr>(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            });
            match res {
                Err(_would_block) => continue,
                Ok(Ok((n, addr))) => {
                    // Only the kernel (port id 0) speaks on group 1; anything else is spoofed.
                    if addr.is_some_and(|a| a.pid() != 0) {
                        continue;
                    }
                    if n >= self.buf.len() {
                        return Err(UeventError::Malformed(format!(
                            "message truncated at {n} bytes"
                        )));
                    }
                    return Uevent::parse(&self.buf[..n]);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(UeventError::Overflow);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(UeventError::Io(e)),
            }
        }
    }

    /// Throws away every message already queued (after an overflow: a sysfs re-scan supersedes
    /// them). Returns how many were dropped.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        loop {
            match recvfrom::<NetlinkAddr>(self.fd.get_ref().as_raw_fd(), &mut self.buf) {
                Ok(_) => n += 1,
                Err(Errno::ENOBUFS) | Err(Errno::EINTR) => {}
                Err(_) => return n,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_loop_attach() {
        let msg = b"change@/devices/virtual/block/loop0\0ACTION=change\0\
DEVPATH=/devices/virtual/block/loop0\0SUBSYSTEM=block\0MAJOR=7\0MINOR=0\0DEVNAME=loop0\0\
DEVTYPE=disk\0DISKSEQ=19\0SEQNUM=827\0";
        let ev = Uevent::parse(msg).unwrap();
        assert_eq!(ev.action, "change");
        assert_eq!(ev.devpath, "/devices/virtual/block/loop0");
        assert_eq!(ev.subsystem.as_deref(), Some("block"));
        assert_eq!(ev.devname.as_deref(), Some("loop0"));
        assert_eq!(ev.devtype.as_deref(), Some("disk"));
        assert_eq!(ev.env["DISKSEQ"], "19");
        assert_eq!(ev.kernel_name(), "loop0");
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let ev = Uevent::parse(b"add@/devices/x\0MODALIAS=a=b\0").unwrap();
        assert_eq!(ev.env["MODALIAS"], "a=b");
        assert_eq!(ev.subsystem, None);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b"libudev\0\xfe\xed\xca\xfe", "libudev"),
            (b"no-at-sign\0A=B\0", "ACTION@DEVPATH"),
            (b"add@relative\0", "ACTION@DEVPATH"),
            (b"add@/devices/x\0NOEQUALS\0", "NOEQUALS"),
            (b"add@/devices/x\0A=\xff\0", "not UTF-8"),
        ];
        for (msg, want) in cases {
            match Uevent::parse(msg) {
                Err(UeventError::Malformed(why)) => assert!(why.contains(want), "{why}"),
                other => panic!("{msg:?}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn binds_without_root_and_grants_a_buffer() {
        // Receiving kernel uevents needs no privilege (NL_CFG_F_NONROOT_RECV).
        let sock = UeventSocket::bind_with(1 << 20).unwrap();
        assert!(sock.rcvbuf().unwrap() > 0);
    }
}
