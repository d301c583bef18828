//! A real terminal for the tests of full-screen and interactive commands (`tek board`, `tek
//! write`'s prompt and bars, `tek status --watch`): tmux runs one command in a detached session;
//! the test types with `send-keys` and reads the screen with `capture-pane`, as a technician
//! would look at it.

use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one command, killed on drop.
pub struct Tmux {
    name: String,
}

impl Tmux {
    /// Starts `cmd` (a shell command line) in a new 140x40 session named `name`.
    pub fn start(name: &str, cmd: &str) -> Tmux {
        let t = Tmux {
            name: name.to_string(),
        };
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "140",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session failed");
        t
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with its colours, as terminal escape sequences (`capture-pane -e`): what
    /// `docs/screenshots/board.sh` renders to a picture.
    pub fn screen_with_colours(&self) -> String {
        self.capture(&["-e"])
    }

    fn capture(&self, extra: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: `Enter`, `q`, `C-c`).
    pub fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The process id of the command the pane runs.
    pub fn pane_pid(&self) -> u32 {
        let out = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.name, "#{pane_pid}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("tmux pane pid")
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen after `secs`.
    pub fn wait(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "{}: {what} not shown within {secs} s; screen:\n{s}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}
