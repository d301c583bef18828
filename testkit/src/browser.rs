//! Printing an HTML document in a real browser, as the depot would: headless Chromium prints it
//! to PDF (A4, no header or footer) and poppler's `pdfinfo` counts the pages; Chromium also takes
//! a screenshot of the sheet (kept as a test artifact) and, for the width check, loads the page
//! with a script appended that measures every element's `getBoundingClientRect()` against the
//! printable width of an A4 page and writes its verdict into the DOM, read back with
//! `--dump-dom`. A page the printer would clip or shrink fails here.
//!
//! [`print_check`] returns `Err` when a tool is missing or fails; callers [`require`] the tools
//! first with [`have_browser`] so a machine without them skips (and CI, where a skip fails,
//! fails).
//!
//! [`require`]: crate::require

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Printable width of an A4 page with the documents' 15 mm side margins: 180 mm at 96 px per
/// inch, rounded up.
pub const A4_PRINTABLE_WIDTH_PX: u32 = 681;
/// An A4 sheet at 96 px per inch, for screenshots.
const A4_PX: (u32, u32) = (794, 1123);

/// What printing a document found.
#[derive(Debug)]
pub struct Printed {
    /// Pages of the PDF.
    pub pages: u32,
    /// The viewport width the width check ran at (must be [`A4_PRINTABLE_WIDTH_PX`]).
    pub viewport: u32,
    /// Elements reaching past the page's edge: `tag.class "text..." left..right`.
    pub too_wide: Vec<String>,
    /// The page's own scroll width (wider than `viewport`: something overflows).
    pub scroll_width: u32,
    /// The PDF.
    pub pdf: PathBuf,
    /// The screenshot of the sheet on screen.
    pub screenshot: PathBuf,
}

/// The browser on PATH: `chromium` (Debian's package), else `chromium-browser`.
pub fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| crate::have(b))
}

/// True when a browser and `pdfinfo` (poppler-utils) are both here.
pub fn have_browser() -> bool {
    browser().is_some() && crate::have("pdfinfo")
}

/// The script appended to the page for the width check (runs after layout, at `load`).
const MEASURE: &str = r#"<script>
window.addEventListener('load', function () {
  var w = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll('body *').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return;
    if (r.right > w + 0.5 || r.left < -0.5) {
      var t = (e.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 40);
      bad.push(e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') +
               ' "' + t + '" ' + Math.round(r.left) + '..' + Math.round(r.right));
    }
  });
  var out = document.createElement('pre');
  out.id = 'tek-print-check';
  out.textContent = 'viewport ' + w + '\nscroll ' + document.documentElement.scrollWidth +
                    '\n' + bad.join('\n');
  document.body.appendChild(out);
});
</script>
<style>html { background: none !important; } body { margin: 0 !important; }</style>
"#;

/// Prints `html` (saved as `<dir>/<name>.html`) to `<dir>/<name>.pdf`, screenshots it to
/// `<dir>/<name>.png`, and measures it at the A4 printable width.
pub fn print_check(html: &str, dir: &Path, name: &str) -> Result<Printed, String> {
    let browser = browser().ok_or("no chromium on PATH")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let page = dir.join(format!("{name}.html"));
    let probe = dir.join(format!("{name}.measure.html"));
    let pdf = dir.join(format!("{name}.pdf"));
    let screenshot = dir.join(format!("{name}.png"));
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write(&page, html)?;
    let measured = match html.rfind("</body>") {
        Some(i) => format!("{}{MEASURE}{}", &html[..i], &html[i..]),
        None => format!("{html}{MEASURE}"),
    };
    write(&probe, &measured)?;
    let profile = dir.join(format!("{name}.chromium-profile"));
    let chromium = |args: &[String], url: &Path| -> Result<String, String> {
        let mut c = Command::new(browser);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", url.display()));
        run_for(&mut c, Duration::from_secs(60))
    };
    chromium(
        &[
            format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer".into(),
        ],
        &page,
    )?;
    chromium(
        &[
            format!("--screenshot={}", screenshot.display()),
            format!("--window-size={},{}", A4_PX.0, A4_PX.1),
        ],
        &page,
    )?;
    let dom = chromium(
        &[
            "--dump-dom".into(),
            "--virtual-time-budget=2000".into(),
            format!("--window-size={},{}", A4_PRINTABLE_WIDTH_PX, A4_PX.1),
        ],
        &probe,
    )?;
    let _ = std::fs::remove_dir_all(&profile);
    let verdict = between(&dom, "<pre id=\"tek-print-check\">", "</pre>")
        .ok_or_else(|| format!("the width check wrote no verdict; DOM:\n{dom}"))?;
    let verdict = verdict
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    let mut lines = verdict.lines();
    let num = |l: Option<&str>, key: &str| -> Result<u32, String> {
        l.and_then(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("bad verdict {verdict:?}"))
    };
    let viewport = num(lines.next(), "viewport ")?;
    let scroll_width = num(lines.next(), "scroll ")?;
    let too_wide = lines.filter(|l| !l.is_empty()).map(String::from).collect();
    let info = run_for(Command::new("pdfinfo").arg(&pdf), Duration::from_secs(30))?;
    let pages = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("pdfinfo printed no page count:\n{info}"))?;
    Ok(Printed {
        pages,
        viewport,
        too_wide,
        scroll_width,
        pdf,
        screenshot,
    })
}

/// The text a reader sees of an HTML page: the body without its tags (each tag a space).
pub fn visible_text(html: &str) -> String {
    let body = html.find("<body").map_or(html, |i| &html[i..]);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

/// Runs `c` to its end (killed after `limit`); its stdout, or an error with both streams.
fn run_for(c: &mut Command, limit: Duration) -> Result<String, String> {
    let what = format!("{c:?}");
    // Its own process group, so a browser that hangs goes with its helper processes.
    let mut child = std::os::unix::process::CommandExt::process_group(c, 0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    // Read both pipes on threads so a chatty browser never blocks on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > limit => {
                let pg = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!("{what} ran longer than {limit:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let out = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(format!("{what} failed ({status}):\n{out}\n{err}"));
    }
    Ok(out)
}
