//! Page-aligned byte buffers for O_DIRECT I/O, without `unsafe`: a `Vec` over-allocated by one
//! alignment unit, of which we hand out the aligned window.

/// Alignment of every buffer: 4096 satisfies O_DIRECT for 512- and 4096-byte logical sectors.
pub const ALIGN: usize = 4096;

/// A zero-initialised buffer whose usable window starts on an [`ALIGN`] boundary.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.cap)
    }
}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`ALIGN`]).
    pub fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, cap }
    }

    /// Capacity in bytes (a multiple of [`ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The whole aligned window.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.cap]
    }

    /// The whole aligned window, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.cap]
    }
}

/// True when every byte of `data` is zero. Folds with OR over fixed blocks so the compiler can
/// vectorise it (an early-exit `all()` cannot be).
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(4096);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &b| a | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_aligned_and_sized() {
        for cap in [1, 4096, 5000, 1 << 20] {
            let mut b = AlignedBuf::new(cap);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert!(b.capacity() >= cap && b.capacity() % ALIGN == 0);
            b.as_mut_slice()[0] = 1;
            assert_eq!(b.as_slice()[0], 1);
        }
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 10_000];
        assert!(is_zero(&v));
        v[9_999] = 1;
        assert!(!is_zero(&v));
        v[9_999] = 0;
        v[10] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
