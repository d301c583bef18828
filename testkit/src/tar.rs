//! Tar archives built byte by byte, so tests can make hostile headers a tar library never
//! would (client-data's ingest tests and its bomb tests).

/// One 512-byte ustar header: `size` and `link` are the raw field bytes, so a test can write
/// hostile values (non-octal sizes, overflowing numbers) that a tar library would refuse to make.
pub fn header(name: &[u8], typeflag: u8, size: &[u8], link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0001750");
    h[116..123].copy_from_slice(b"0001750");
    h[124..124 + size.len()].copy_from_slice(size);
    h[136..147].copy_from_slice(b"14000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A regular-file entry: header, data, padding to 512 bytes.
pub fn file_entry(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = header(name, b'0', format!("{:011o}", data.len()).as_bytes(), b"").to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// An archive of `parts` with the two zero blocks that end it.
pub fn tar_of(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = parts.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}
