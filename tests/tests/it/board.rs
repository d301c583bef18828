//! `tek board` under a real terminal: tmux runs it against a real agent with virtual bays;
//! the test types keys with `send-keys` and reads the screen with `capture-pane`, as a
//! technician would look at it. A disk plugged in appears in its bay's tile, the tile follows the
//! job to "safe to remove", a disk too small for the image shows why it was refused, and the
//! report opens on Enter. Screens are kept in the bench's directory on failure.

use tek_e2e::*;

/// Keeps a screen as a test artifact: `target/tmp/board-screens/NAME.txt` (`done.ansi.txt`
/// with its colours, rendered to `docs/screenshots/board.png` by `docs/screenshots/board.sh`).
fn keep(name: &str, screen: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("board-screens");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), screen);
}

/// The tile of `bay` on the screen: the lines of the box whose title names it (tiles are laid
/// out side by side, so the box's columns are cut out).
fn tile(screen: &str, bay: &str) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some(col) = l.find(&format!(" {bay} ")) {
            // The box starts at the border character before the title.
            let start = l[..col].rfind(['┌', '┏']).unwrap_or(0);
            let chars_before = l[..start].chars().count();
            return lines[i..(i + 7).min(lines.len())]
                .iter()
                .map(|l| l.chars().skip(chars_before).take(34).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    String::new()
}

#[test]
fn board_follows_a_disk_from_plug_to_safe_to_remove_and_shows_refusals() {
    if !need_root("board_follows_a_disk_from_plug_to_safe_to_remove_and_shows_refusals")
        || !tek_testkit::require_tool("tmux")
    {
        return;
    }
    let mut b = Bench::new("board", &["bay1", "bay2"], "share_write_window_ms = 0");
    b.start_agent();
    let cmd = format!(
        "env TEK_CONFIG={} TERM=xterm-256color {} --state {} board",
        b.config.display(),
        tek_bin().display(),
        b.state.display()
    );
    let session = format!("tek-board-{}", std::process::id());
    let t = Tmux::start(&session, &cmd);
    let s = t.wait("both bays empty", 20, |s| {
        tile(s, "bay1").contains("EMPTY") && tile(s, "bay2").contains("EMPTY")
    });
    assert!(s.contains("2 bays"), "{s}");

    // bay2: a disk far too small for the 64 MiB sample image; its job is refused, nothing
    // written, and the tile says why.
    let j2 = b.add_job("T-202", "bay2", None);
    let (_small, _lo2) = b.plug("bay2", 1, 8 << 20);
    let s = t.wait("bay2 refused with its reason", 30, |s| {
        let t2 = tile(s, "bay2");
        t2.contains("REFUSED") && t2.contains("small")
    });
    assert!(s.contains("T-202") || s.contains(&j2), "{s}");
    keep("refused", &s);

    // bay1: a disk that fits; the tile goes to done, safe to remove.
    let j1 = b.add_job("T-201", "bay1", None);
    let (_disk, _lo1) = b.plug("bay1", 1, 128 << 20);
    let s = t.wait("bay1 done", 60, |s| {
        let t1 = tile(s, "bay1");
        t1.contains("DONE") && t1.contains("safe to remove")
    });
    keep("done", &s);
    keep("done.ansi", &t.screen_with_colours());
    let t1 = tile(&s, "bay1");
    assert!(t1.contains("T-201") && t1.contains("sample@1"), "{t1}");
    assert!(s.contains("arrived in bay bay1"), "events pane: {s}");
    b.wait_state(&j1, "done", 10);

    // Enter on the selected bay (bay1, the first) opens its report; any key closes it.
    t.keys(&["Enter"]);
    let s = t.wait("the report", 10, |s| s.contains(&format!("report of {j1}")));
    assert!(s.contains("T-201"), "{s}");
    keep("report", &s);
    t.keys(&["x"]);
    t.wait("the report closed", 10, |s| !s.contains("report of"));

    // The agent restarts: the board says it is unreachable, then shows the bays again.
    assert!(b.stop());
    let s = t.wait("agent unreachable", 20, |s| s.contains("agent unreachable"));
    keep("unreachable", &s);
    b.start_agent();
    t.wait("agent back", 20, |s| {
        s.contains("agent reachable again") && tile(s, "bay1").contains("bay1")
    });
    t.keys(&["q"]);
    t.wait("board closed", 10, |s| !s.contains("tek board"));
}
