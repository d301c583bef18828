//! Sizes on the command line (`--max-image-size 64T`).

/// `123`, `64T`, `512M`: bytes, binary multiples.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => {
                    return Err(format!(
                        "unknown size suffix '{}' (use K, M, G, T or P)",
                        c.escape_debug()
                    ));
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "\"{}\" is not a size (bytes, or a number with K, M, G, T or P)",
            s.escape_debug()
        )
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("\"{}\" is too large", s.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_and_without_suffix() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64T"), Ok(64 << 40));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("T").is_err());
        assert!(parse_size("20000P").is_err());
    }
}
