//! `tek completions SHELL` and `tek man`: shell completions and man pages generated from the
//! clap definitions (`clap_complete`, `clap_mangen`), so they never drift from the real options.
//! `packaging/install.sh` and `packaging/gen-assets.sh` (for the .deb) install their output.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

/// `tek completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// `tek man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `tek.1` and one page per subcommand (`tek-image.1`, `tek-image-import.1`...) into
    /// DIR instead of printing `tek.1`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `a.shell`.
pub fn completions(a: &CompletionsArgs) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "tek", &mut out);
    print(&out)
}

/// Prints `tek.1`, or writes every page into `a.dir`.
pub fn man(a: &ManArgs) -> Result<()> {
    let cmd = super::Cli::command();
    match &a.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            print(&out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let n = write_pages(cmd, dir)?;
            eprintln!("wrote {n} man pages into {}", dir.display());
            Ok(())
        }
    }
}

fn print(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)
        .and_then(|()| o.flush())
        .context("writing output")
}

/// Writes the page of `cmd` and of each subcommand, recursively; returns how many.
fn write_pages(cmd: clap::Command, dir: &Path) -> Result<usize> {
    let mut n = 0;
    clap_mangen::generate_to(cmd.clone(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        if e?.path().extension().is_some_and(|x| x == "1") {
            n += 1;
        }
    }
    Ok(n)
}
