//! Human and machine output of the `tek` commands, in one place: the one size formatter and
//! [`emit`], which prints a result as pretty JSON (`--json`) or as the
//! command's text. Everything goes to stdout through a locked writer, so a reader that closes
//! the pipe early (`| head`, `| grep -q`) gives an error, never a panic.

use std::io::Write;

use anyhow::{Context, Result};

/// A byte count in binary units with one decimal: `512 B`, `64.0 MiB`, `931.5 GiB` (the same
/// words the service report uses: both come from [`blockdev::sysfs::human_size`]).
pub fn size(bytes: u64) -> String {
    blockdev::sysfs::human_size(bytes)
}

/// Prints `value` as pretty JSON when `json`, else the text `human` makes of it (printed as is:
/// it ends with a newline when it should).
pub fn emit<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        print(&human(value))
    }
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serializing output")?;
    text.push('\n');
    print(&text)
}

/// Prints `text` as is.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(size(1_000_204_886_016), "931.5 GiB");
    }
}
