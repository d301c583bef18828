//! The only `unsafe` in the imager: block-device ioctls and `flock`.
//!
//! Every function takes a borrowed file descriptor and returns `io::Result`, so callers never see
//! raw pointers. Request numbers are those of `<linux/fs.h>` (all in the 0x12 "block" group).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BLK: u8 = 0x12;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Size of a block device in bytes (BLKGETSIZE64).
pub fn get_size64(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    let req = nix::request_code_read!(BLK, 114, std::mem::size_of::<usize>());
    // SAFETY: BLKGETSIZE64 writes one u64 into the pointer we pass, which lives for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut size as *mut u64) })?;
    Ok(size)
}

/// The disk's sequence number (BLKGETDISKSEQ, Linux 5.15+): unique per disk attachment and
/// media change since boot, so two descriptors on one device node tell whether they reach the
/// same disk (a re-plugged disk or re-attached loop device gets a new one).
pub fn diskseq(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut seq: u64 = 0;
    let req = nix::request_code_read!(BLK, 128, std::mem::size_of::<u64>());
    // SAFETY: BLKGETDISKSEQ writes one u64 into the pointer we pass, which lives for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut seq as *mut u64) })?;
    Ok(seq)
}

fn get_int(fd: BorrowedFd<'_>, nr: u8) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    let req = nix::request_code_none!(BLK, nr);
    // SAFETY: these "none" requests write one int through the pointer, valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut libc::c_int) })?;
    Ok(v as u32)
}

/// Logical sector size (BLKSSZGET).
pub fn logical_sector_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    get_int(fd, 104).map(u64::from)
}

/// Physical sector size (BLKPBSZGET).
pub fn physical_sector_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    get_int(fd, 123).map(u64::from)
}

/// True when the device is read-only (BLKROGET).
pub fn read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, 94).map(|v| v != 0)
}

fn range_op(fd: BorrowedFd<'_>, nr: u8, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    let req = nix::request_code_none!(BLK, nr);
    // SAFETY: BLKZEROOUT / BLKDISCARD read a uint64_t[2] {start, len} from the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, range.as_ptr()) })
}

/// Zeroes `[offset, offset+len)` (BLKZEROOUT). The kernel offloads to WRITE ZEROES where the
/// device has it and otherwise writes zero pages itself; it also drops the page-cache range.
/// Offset and length must be multiples of the logical sector size.
pub fn zero_out(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    range_op(fd, 127, offset, len)
}

/// Discards `[offset, offset+len)` (BLKDISCARD).
pub fn discard(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    range_op(fd, 119, offset, len)
}

/// Asks the kernel to re-read the partition table (BLKRRPART). Needs CAP_SYS_ADMIN; loop devices
/// without partition scanning answer EINVAL.
pub fn reread_partitions(fd: BorrowedFd<'_>) -> io::Result<()> {
    let req = nix::request_code_none!(BLK, 95);
    // SAFETY: BLKRRPART takes no argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, 0) })
}

/// Writes back and drops the device's buffer cache (BLKFLSBUF), so the next reads hit the disk.
pub fn flush_buffers(fd: BorrowedFd<'_>) -> io::Result<()> {
    let req = nix::request_code_none!(BLK, 97);
    // SAFETY: BLKFLSBUF takes no argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, 0) })
}

/// Takes an exclusive, non-blocking `flock` on the descriptor (kept until it is closed). Holding
/// it on a whole disk also keeps udev from probing the disk while we write.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock only takes an fd and flags.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ioctls_on_a_regular_file_fail_cleanly() {
        let f = tempfile::tempfile().unwrap();
        assert!(get_size64(f.as_fd()).is_err());
        assert!(logical_sector_size(f.as_fd()).is_err());
        assert!(zero_out(f.as_fd(), 0, 4096).is_err());
        assert!(diskseq(f.as_fd()).is_err());
    }

    #[test]
    fn flock_is_exclusive_between_open_file_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let a = std::fs::File::open(&p).unwrap();
        let b = std::fs::File::open(&p).unwrap();
        lock_exclusive(a.as_fd()).unwrap();
        let e = lock_exclusive(b.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
    }
}
