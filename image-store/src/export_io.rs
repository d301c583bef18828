//! The writers an export goes through besides a plain file: [`Watched`] reports the position
//! for a progress bar, [`ZeroFill`] turns a pipe into something `export_to` can write (a forward
//! seek over a hole writes zeros; `set_len` pads the end).

use std::io::{Seek, SeekFrom, Write};

use crate::export::SetLen;

/// Passes everything through to `inner` and calls `progress(position, size)` after each write
/// and seek.
pub struct Watched<W, F> {
    inner: W,
    pos: u64,
    size: u64,
    progress: F,
}

impl<W, F: FnMut(u64, u64)> Watched<W, F> {
    /// Wraps `inner`, at offset 0, for an image of `size` bytes.
    pub fn new(inner: W, size: u64, progress: F) -> Self {
        Watched {
            inner,
            pos: 0,
            size,
            progress,
        }
    }
}

impl<W: Write, F: FnMut(u64, u64)> Write for Watched<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        (self.progress)(self.pos, self.size);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Seek, F: FnMut(u64, u64)> Seek for Watched<W, F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        (self.progress)(self.pos, self.size);
        Ok(self.pos)
    }
}

impl<W: SetLen, F> SetLen for Watched<W, F> {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

/// A pipe as an export target: seeking forward writes zeros, seeking back is refused (the
/// export never does it), `set_len` pads with zeros up to the length.
pub struct ZeroFill<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> ZeroFill<W> {
    /// Wraps `inner`, at offset 0.
    pub fn new(inner: W) -> Self {
        ZeroFill { inner, pos: 0 }
    }

    fn zeros(&mut self, mut n: u64) -> std::io::Result<()> {
        static Z: [u8; 64 << 10] = [0; 64 << 10];
        while n > 0 {
            let k = n.min(Z.len() as u64) as usize;
            self.inner.write_all(&Z[..k])?;
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("a pipe cannot {what}"),
    )
}

impl<W: Write> Write for ZeroFill<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Seek for ZeroFill<W> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        };
        match target {
            Some(t) if t >= self.pos => {
                self.zeros(t - self.pos)?;
                Ok(self.pos)
            }
            _ => Err(unsupported("seek back")),
        }
    }
}

impl<W: Write> SetLen for ZeroFill<W> {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if len < self.pos {
            return Err(unsupported("be truncated"));
        }
        self.zeros(len - self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_become_zeros_in_a_pipe() {
        let mut z = ZeroFill::new(Vec::new());
        z.write_all(b"ab").unwrap();
        z.seek(SeekFrom::Current(3)).unwrap();
        z.write_all(b"c").unwrap();
        z.set_len(8).unwrap();
        assert!(z.seek(SeekFrom::Start(1)).is_err(), "no seeking back");
        assert!(z.set_len(2).is_err(), "no truncating");
        assert_eq!(z.inner, b"ab\0\0\0c\0\0");
    }

    #[test]
    fn watched_reports_positions() {
        let mut seen = Vec::new();
        let mut w = Watched::new(ZeroFill::new(Vec::new()), 10, |p, s| seen.push((p, s)));
        w.write_all(b"abc").unwrap();
        w.seek(SeekFrom::Current(4)).unwrap();
        drop(w);
        assert_eq!(seen, [(3, 10), (7, 10)]);
    }
}
