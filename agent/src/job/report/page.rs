//! The service report as people read it: the printable page (`templates/report.html`, one A4
//! sheet under the depot's letterhead) and the terminal text (`templates/report.txt`), both
//! laid out from one [`Page`] of labelled rows, so the two say the same things in the same
//! order. Values are prepared here from the journaled records: times in the depot's zone to the
//! second, sizes in units with exact bytes, informational steps in words (a loop device that
//! cannot re-read its partition table is "not supported by this device", not an errno), and
//! nothing internal (no device nodes, loop backing files, flags or raw seconds).

use client_data::Letterhead;
use client_data::document::{count, duration, size};
use serde_json::Value;

use super::{Report, Tone};

mod text;
use text::capped;
pub(crate) use text::{REASON_MAX, fit, fit_to};

/// One labelled value (labels at most 24 characters: the text form aligns them in 25).
pub(crate) struct Row {
    pub label: &'static str,
    pub value: String,
    /// A hash or an id: set in monospace and broken anywhere to fit the page.
    pub mono: bool,
}

/// A titled group of rows, and optionally a list (renamed or skipped entries).
pub(crate) struct Section {
    pub title: &'static str,
    pub rows: Vec<Row>,
    /// Column titles of `list`.
    pub list_head: (&'static str, &'static str),
    pub list: Vec<(String, String)>,
    /// Entries of the list not shown (it is cut at [`LIST_MAX`] to keep the page one page).
    pub list_more: usize,
}

/// Most list lines a report prints; the JSON has them all.
const LIST_MAX: usize = 5;

impl Section {
    fn new(title: &'static str) -> Section {
        Section {
            title,
            rows: Vec::new(),
            list_head: ("", ""),
            list: Vec::new(),
            list_more: 0,
        }
    }
    fn row(&mut self, label: &'static str, value: impl Into<String>) {
        self.rows.push(Row {
            label,
            value: value.into(),
            mono: false,
        });
    }
    fn mono(&mut self, label: &'static str, value: impl Into<String>) {
        self.rows.push(Row {
            label,
            value: value.into(),
            mono: true,
        });
    }
    fn list(&mut self, head: (&'static str, &'static str), items: Vec<(String, String)>) {
        self.list_head = head;
        self.list_more = items.len().saturating_sub(LIST_MAX);
        self.list = items.into_iter().take(LIST_MAX).collect();
    }
}

/// Everything the templates lay out.
#[derive(askama::Template)]
#[template(path = "report.html")]
pub(crate) struct Page<'a> {
    pub lh: &'a Letterhead,
    pub ticket: String,
    pub job: String,
    pub issued: String,
    pub outcome: String,
    pub tone: &'static str,
    pub device: Section,
    pub image: Section,
    pub verification: Section,
    pub data: Section,
    pub sanitization: Section,
    pub timings: Section,
    pub audit: Option<Section>,
}

/// The same page as terminal text.
#[derive(askama::Template)]
#[template(path = "report.txt")]
pub(crate) struct TextPage<'a> {
    pub p: &'a Page<'a>,
}

fn s<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}
fn n(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl<'a> Page<'a> {
    /// Lays out `r` under `lh`.
    pub fn of(r: &Report, lh: &'a Letterhead) -> Page<'a> {
        let issued = match &r.timings.finished {
            Some(t) => lh.time(t),
            None => format!("in progress ({})", r.state.words()),
        };
        let (tone, outcome) = r.sentence(lh);
        Page {
            lh,
            ticket: r.ticket.clone(),
            job: r.job.clone(),
            issued,
            outcome,
            tone: match tone {
                Tone::Good => "",
                Tone::Bad => "bad",
                Tone::Open => "open",
            },
            device: device(r),
            image: image(r),
            verification: verification(r),
            data: data(r),
            sanitization: sanitization(r, lh),
            timings: timings(r, lh),
            audit: audit(r, lh),
        }
    }
}

fn device(r: &Report) -> Section {
    let mut sec = Section::new("Device");
    let Some(d) = &r.device else {
        sec.row("Disk", "none claimed yet");
        return sec;
    };
    // A disk that names no vendor or model is journaled as "unknown model".
    let model = match (&d.bus, d.model.as_str()) {
        (blockdev::Bus::Virtual, "unknown model") => "virtual disk".to_string(),
        (_, "unknown model") => "not reported by the disk".into(),
        (_, m) => m.to_string(),
    };
    sec.row("Model", model);
    match &d.serial {
        Some(s) => sec.mono("Serial number", s.clone()),
        None => sec.row("Serial number", "not reported by the disk"),
    }
    sec.row("Capacity", size(d.size_bytes));
    let bus = match &d.bus {
        blockdev::Bus::Usb => "USB".to_string(),
        blockdev::Bus::Ata => "SATA".into(),
        blockdev::Bus::Nvme => "NVMe".into(),
        blockdev::Bus::Scsi => "SCSI/SAS".into(),
        blockdev::Bus::Virtual => "virtual (test bay)".into(),
        blockdev::Bus::Other(o) => o.clone(),
    };
    sec.row("Connection", bus);
    sec.row("Bay", d.bay.clone().unwrap_or_else(|| "none".into()));
    sec
}

fn image(r: &Report) -> Section {
    let mut sec = Section::new("Image");
    sec.row("Image", r.image.clone());
    let Some(i) = &r.image_details else {
        return sec;
    };
    if let Some(sig) = i.get("signature") {
        let key = s(sig, "key_id").unwrap_or("?");
        let words = match s(sig, "status") {
            Some("valid") => format!("valid, by trusted key {key}"),
            Some("unsigned") => "unsigned".into(),
            Some("unknown_key") => format!("signed by key {key}, which is not trusted"),
            Some("invalid") => format!("INVALID: {}", s(sig, "reason").unwrap_or("?")),
            _ => sig.to_string(),
        };
        sec.row("Signature", words);
    }
    if let Some(b) = n(i, "size") {
        sec.row("Size", size(b));
    }
    // Source: the local store, or fetched from the library (`library/ondemand.rs`).
    for (label, key) in [("Privacy audit", "privacy_audit"), ("Source", "source")] {
        if let Some(a) = s(i, key) {
            sec.row(label, a);
        }
    }
    // The manifest hash pins the exact image (the signature and the audit log name it too);
    // the other hashes are in the JSON.
    if let Some(h) = s(i, "manifest_hash") {
        sec.mono("Manifest", h);
    }
    sec
}

fn verification(r: &Report) -> Section {
    let mut sec = Section::new("Verification of the disk");
    let Some(w) = &r.verification else {
        sec.row("Result", "not written yet");
        return sec;
    };
    let res = w.get("result").cloned().unwrap_or(Value::Null);
    let result = match s(&res, "status") {
        Some("ok") => "written and verified: every byte read back and compared with the \
                       image's hashes"
            .to_string(),
        Some("failed") => format!(
            "FAILED while {}: {}",
            s(&res, "phase").unwrap_or("writing"),
            s(&res, "error").unwrap_or("unknown error")
        ),
        Some("refused") => format!(
            "refused: {}",
            res.get("refusal")
                .and_then(|r| s(r, "message").or(s(r, "reason")))
                .unwrap_or("see the job record")
        ),
        _ => "unknown".into(),
    };
    sec.row("Result", result);
    let mut written = size(n(w, "bytes_written").unwrap_or(0));
    if let Some(z) = n(w, "bytes_zeroed").filter(|z| *z > 0) {
        written += &format!(", and {} zeroed", blockdev::sysfs::human_size(z));
    }
    if let Some(k) = n(w, "bytes_skipped").filter(|k| *k > 0) {
        written += &format!(", {} already in place", blockdev::sysfs::human_size(k));
    }
    sec.row("Written", written);
    sec.row(
        "Read back and compared",
        size(n(w, "bytes_verified").unwrap_or(0)),
    );
    let bad = w
        .get("mismatch_offsets")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    sec.row(
        "Mismatches",
        if bad == 0 {
            "none".to_string()
        } else {
            format!("{} differed", count(bad as u64, "extent", "extents"))
        },
    );
    if let Some(g) = w.get("gpt").filter(|g| !g.is_null()) {
        sec.row("Partition table", gpt_words(g, w));
    }
    if let Some(f) = w.get("filesystem").filter(|f| !f.is_null()) {
        sec.row("Filesystem", fs_words(f));
        // Whether the grown volume's own system checks it at first boot (NTFS: chkdsk).
        if let Some(boot) = s(f, "first_boot") {
            sec.row("First boot", boot);
        }
    }
    if let Some(b) = w.get("beyond").and_then(beyond_words) {
        sec.row("Past the image's end", b);
    }
    if let Some(rr) = s(w, "reread_partitions") {
        sec.row("Partitions re-read", reread_words(rr));
    }
    if w.get("unfinished_write").is_some_and(|u| !u.is_null()) {
        sec.row(
            "Earlier write",
            "an interrupted earlier write was found on the disk and written over",
        );
    }
    sec
}

/// Sector size of the written disk (LBAs in the GPT changes are in its sectors).
fn sector(w: &Value) -> u64 {
    w.get("identity")
        .and_then(|i| n(i, "logical_block_size").or(n(i, "logical_sector_size")))
        .filter(|s| *s > 0)
        .unwrap_or(512)
}

fn gpt_words(g: &Value, w: &Value) -> String {
    let mut parts = vec!["fitted to the disk: backup table at the disk's end".to_string()];
    if let Some([name, old, new]) = g.get("grown").and_then(Value::as_array).map(Vec::as_slice) {
        let b = sector(w);
        let grown = new
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(old.as_u64().unwrap_or(0))
            * b;
        parts.push(format!(
            "partition {} grown by {}",
            name.as_str().unwrap_or("?"),
            blockdev::sysfs::human_size(grown)
        ));
    }
    if let Some(m) = g
        .get("moved")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    {
        let names: Vec<_> = m.iter().filter_map(|p| s(p, "name")).collect();
        parts.push(format!("{} moved to the end", names.join(", ")));
    }
    if g.get("guids_randomized").and_then(Value::as_bool) == Some(true) {
        parts.push("new disk and partition identifiers".into());
    }
    parts.join("; ")
}

fn fs_words(f: &Value) -> String {
    let kind = s(f, "filesystem").unwrap_or("filesystem");
    let part = n(f, "partition").unwrap_or(0);
    let checks = f
        .get("checks")
        .and_then(Value::as_array)
        .map(|c| {
            let clean = c
                .iter()
                .all(|c| c.get("clean").and_then(Value::as_bool) == Some(true));
            match (c.len(), clean) {
                (0, _) => String::new(),
                (_, true) => "; its check found no problem".into(),
                (_, false) => "; its check reported problems".into(),
            }
        })
        .unwrap_or_default();
    match (
        f.get("grown").and_then(Value::as_bool),
        n(f, "old_bytes"),
        n(f, "new_bytes"),
    ) {
        (Some(true), Some(a), Some(b)) => format!(
            "{kind} on partition {part} grown from {} to {}{checks}",
            blockdev::sysfs::human_size(a),
            blockdev::sysfs::human_size(b)
        ),
        _ => format!(
            "{kind} on partition {part} kept its size{}",
            s(f, "note").map(|n| format!(" ({n})")).unwrap_or_default()
        ),
    }
}

fn beyond_words(b: &Value) -> Option<String> {
    let bytes = n(b, "bytes").unwrap_or(0);
    Some(match s(b, "action")? {
        "zeroed" => format!("{} zeroed", blockdev::sysfs::human_size(bytes)),
        "discarded" => format!(
            "{} discarded (reads back as zeros)",
            blockdev::sysfs::human_size(bytes)
        ),
        "punched" => format!("{} cleared", blockdev::sysfs::human_size(bytes)),
        "skipped" => format!(
            "{} left as it was: {}",
            blockdev::sysfs::human_size(bytes),
            s(b, "reason").unwrap_or("policy")
        ),
        _ => return None,
    })
}

/// What the kernel answered when asked to re-read the new partition table (BLKRRPART), in
/// words. It is informational: the table itself was written and read back.
fn reread_words(rr: &str) -> String {
    // The imager records the answer as text: "ok" or the OS error's message.
    let errno = rr
        .rsplit_once("os error ")
        .and_then(|(_, e)| e.trim_end_matches(')').parse::<i32>().ok());
    match (rr, errno) {
        ("ok", _) => "yes: the new partitions are visible".into(),
        (_, Some(libc::EINVAL)) => {
            "no: this device does not scan partitions (normal for a virtual disk)".into()
        }
        (_, Some(libc::EBUSY)) => {
            "not yet (device busy): the partitions appear when the disk is next plugged in".into()
        }
        _ => "no: the partitions appear when the disk is next plugged in".into(),
    }
}

fn data(r: &Report) -> Section {
    let mut sec = Section::new("Client data");
    let Some(ds) = &r.dataset else {
        sec.row("Client data", "none: this job carried no client data");
        return sec;
    };
    let client = r
        .data_custody
        .as_ref()
        .and_then(|f| f.client.clone())
        .or_else(|| {
            r.sanitization
                .as_ref()
                .and_then(|s| s.get("subject"))
                .and_then(|x| x.get("client"))
                .and_then(Value::as_str)
                .map(String::from)
        });
    if let Some(c) = client {
        sec.row("Client", c);
    }
    sec.mono("Data set", ds.clone());
    let Some(m) = &r.data_migration else {
        sec.row("Restored", "not yet");
        return sec;
    };
    let amount = |e: &str, b: &str| {
        format!(
            "{}, {}",
            count(n(m, e).unwrap_or(0), "entry", "entries"),
            size(n(m, b).unwrap_or(0))
        )
    };
    sec.row("Restored", amount("entries_restored", "bytes_restored"));
    sec.row(
        "Read back and equal",
        amount("entries_verified", "bytes_verified"),
    );
    let strings = |key: &str| -> Vec<String> {
        m.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mismatches = strings("mismatches");
    sec.row("Mismatches", capped(&mismatches));
    if let Some(fs) = s(m, "target_filesystem") {
        sec.row("Restored onto", fs);
    }
    if let Some(o) = n(m, "owners_not_restored").filter(|o| *o > 0) {
        sec.row(
            "Owners",
            format!(
                "{} kept the restoring user as owner ({})",
                count(o, "entry", "entries"),
                s(m, "ownership_note").unwrap_or("refused")
            ),
        );
    }
    let setid = strings("setid_dropped");
    if !setid.is_empty() {
        sec.row("Setuid/setgid removed", capped(&setid));
    }
    if let Some(nr) = m.get("metadata_not_restored").and_then(Value::as_array) {
        let lines: Vec<_> = nr
            .iter()
            .map(|x| {
                format!(
                    "{} on {}: {}",
                    s(x, "what").unwrap_or("?"),
                    count(n(x, "entries").unwrap_or(0), "entry", "entries"),
                    s(x, "reason").unwrap_or("?")
                )
            })
            .collect();
        if !lines.is_empty() {
            sec.row("Not kept", capped(&lines));
        }
    }
    let renamed: Vec<(String, String)> = m
        .get("name_mappings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    let to = s(x, "to_escaped").or(s(x, "to")).unwrap_or("?");
                    (fit(s(x, "from").unwrap_or("?")), fit(to))
                })
                .collect()
        })
        .unwrap_or_default();
    let skipped = strings("skipped");
    sec.row(
        "Renamed",
        if renamed.is_empty() {
            "none".into()
        } else {
            format!(
                "{}: the target cannot hold their names (listed below)",
                count(renamed.len() as u64, "entry", "entries")
            )
        },
    );
    sec.row("Not restored", capped(&skipped));
    let replaced = strings("replaced");
    if !replaced.is_empty() {
        sec.row("Replaced, as asked", capped(&replaced));
    }
    if let Some(k) = m.get("resumed").and_then(Value::as_array).map(Vec::len) {
        if k > 0 {
            let what = count(k as u64, "entry", "entries");
            sec.row(
                "Resumed",
                format!("{what} of an interrupted restore replaced"),
            );
        }
    }
    if let Some(k) = m.get("unjournaled").and_then(Value::as_array).map(Vec::len) {
        if k > 0 {
            let what = count(k as u64, "entry", "entries");
            sec.row(
                "Resumed, not journaled",
                format!(
                    "{what} the interrupted run had not journaled matched the staged data and \
                     {} replaced",
                    if k == 1 { "was" } else { "were" }
                ),
            );
        }
    }
    if let Some(k) = n(m, "merged_directories").filter(|k| *k > 0) {
        let what = count(k, "folder", "folders");
        sec.row(
            "Merged",
            format!("{what} already in the target, written into"),
        );
    }
    if !renamed.is_empty() {
        sec.list(("Path in the data set", "Restored as"), renamed);
    }
    sec
}

fn sanitization(r: &Report, lh: &Letterhead) -> Section {
    let mut sec = Section::new("Staging copy");
    if r.dataset.is_none() {
        sec.row("Staging copy", "none held for this job");
        return sec;
    }
    sec.row("Status", r.custody_words(lh));
    if let Some(x) = &r.sanitization {
        if let Some(c) = s(x, "category") {
            sec.row("Method", c);
        }
        if let Some(v) = s(x, "verification_result") {
            sec.row("Verification", v);
        }
        if let Some(id) = s(x, "record") {
            sec.mono("Record", id);
        }
    }
    sec
}

fn timings(r: &Report, lh: &Letterhead) -> Section {
    let t = &r.timings;
    let mut sec = Section::new("Timings");
    let at = |v: &Option<String>| v.as_deref().map_or_else(|| "-".into(), |t| lh.time(t));
    sec.row("Queued", at(&t.queued));
    sec.row("Started", at(&t.started));
    sec.row("Finished", at(&t.finished));
    let d = |v: Option<f64>| v.map(duration).unwrap_or_else(|| "-".into());
    sec.row("Writing the image", d(t.image_secs));
    if r.dataset.is_some() {
        sec.row("Restoring the data", d(t.data_secs));
        sec.row("Wiping staging", d(t.wipe_secs));
    }
    sec.row("Total", d(t.total_secs));
    sec
}

fn audit(r: &Report, lh: &Letterhead) -> Option<Section> {
    let a = r.audit.as_ref()?;
    let c = &a.checkpoint;
    let mut sec = Section::new("Audit log");
    sec.row(
        "Checkpoint",
        format!(
            "entry {} of {}, signed {}",
            c.seq + 1,
            a.entries,
            lh.time(&c.time)
        ),
    );
    sec.mono("Entry hash", c.hash.clone());
    sec.mono("Audit key", c.public_key.clone());
    sec.mono("Signature", c.signature.clone());
    Some(sec)
}
