//! `tek demo`: the whole journey on a built-in sample, in a temporary depot.

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("tek demo: not built yet")
}
