//! A restore killed half-way (SIGKILL: no cleanup ran) is resumed: the re-run takes as its
//! own only the entries its journal proves it made (listed, and the same inode with the same
//! birth time, or status change time and size), and refuses everything else standing where
//! the dataset puts an entry, also at a path the killed run was about to use: a file, a hard
//! link, a symlink or a FIFO someone put there, or another client's verified restore. On ext4
//! (a loop device) and NTFS (ntfs-3g). The restore to kill runs in a child process: this test
//! binary again, told by the environment. Needs root, loop devices and FUSE.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use client_data::{DataError, DatasetInfo};

use crate::common::*;
use crate::restore_safe::{can_run, listing, volumes, write};

const CHILD: &str = "TEK_TEST_RESTORE_CHILD";

/// In the child process: runs the restore the parent asked for, then exits.
pub(crate) fn child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut p = spec.split('\n');
    let (root, id, target) = (
        p.next().unwrap().to_string(),
        p.next().unwrap().to_string(),
        p.next().unwrap().to_string(),
    );
    let c = client_data::Custody::open(paths(Path::new(&root))).unwrap();
    let id: client_data::DatasetId = id.parse().unwrap();
    let _ = c.restore(&id, Path::new(&target), &dest());
    std::process::exit(0);
}

/// Starts restoring `info` into `t` in a child process running `test` and SIGKILLs it once
/// `probe` exists.
fn kill_mid_restore(d: &Depot, info: &DatasetInfo, t: &Path, test: &str, probe: &Path) {
    kill_when(
        d,
        info,
        t,
        test,
        &format!("{} appeared", probe.display()),
        || probe.exists(),
    )
}

/// Starts restoring `info` into `t` in a child process running `test` and SIGKILLs it once
/// `ready` (polled every millisecond) says so; `what` names the moment for a failure.
pub(crate) fn kill_when(
    d: &Depot,
    info: &DatasetInfo,
    t: &Path,
    test: &str,
    what: &str,
    ready: impl Fn() -> bool,
) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(
            CHILD,
            format!("{}\n{}\n{}", d.dir.path().display(), info.id, t.display()),
        )
        .spawn()
        .unwrap();
    while !ready() {
        if child.try_wait().unwrap().is_some() {
            panic!("the child restore ended before {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success(), "the restore finished before it was killed");
}

/// The source's files in its listing order (entry 0 is `f`, entry i its (i-1)th file).
fn names(src: &Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(src.join("f"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

fn source(d: &Depot, n: usize) -> (PathBuf, DatasetInfo) {
    let src = d.dir.path().join("src");
    for i in 0..n {
        write(
            &src.join(format!("f/{i:05}.txt")),
            format!("file {i}").as_bytes(),
        );
    }
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    (src, info)
}

pub(crate) fn journal_of(d: &Depot, info: &DatasetInfo) -> serde_json::Value {
    let p = d
        .dir
        .path()
        .join("staging")
        .join(info.id.as_str())
        .join("restore-journal.json");
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// 1d: after a killed run, a file, a hard link, a symlink and a FIFO put at later paths the
/// killed run meant to create (below its K) are refused as conflicts and left untouched; once
/// they are gone, the re-run resumes its own entries, and a re-run of the verified restore
/// finds only its own.
#[test]
fn a_resumed_restore_refuses_what_others_put_at_paths_it_meant_to_create() {
    const TEST: &str =
        "restore_resume::a_resumed_restore_refuses_what_others_put_at_paths_it_meant_to_create";
    child();
    if !can_run(TEST) {
        return;
    }
    let d = depot();
    let (src, info) = source(&d, 3000);
    let names = names(&src);
    for (kind, vol) in volumes(d.dir.path(), 64 << 20) {
        let t = vol.root().join("Recovered");
        fs::create_dir_all(&t).unwrap();
        kill_mid_restore(&d, &info, &t, TEST, &t.join("f").join(&names[50]));
        let j = journal_of(&d, &info);
        let rec = j["targets"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(rec["intents_below"], 3001, "{kind}: {j}");
        // Later paths below K, not reached by the killed run.
        let at = |i: usize| t.join("f").join(&names[i]);
        for i in 2990..2994 {
            assert!(!at(i).exists(), "{kind}: the killed run got to entry {i}");
        }
        let outside = vol.root().join("outside.txt");
        fs::write(&outside, b"someone's file elsewhere").unwrap();
        fs::write(at(2990), b"a person's file").unwrap();
        fs::hard_link(&outside, at(2991)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", at(2992)).unwrap();
        let fifo = nix::unistd::mkfifo(&at(2993), nix::sys::stat::Mode::from_bits_truncate(0o600));
        let planted = if fifo.is_ok() { 4 } else { 3 };
        let before = listing(&t);
        let e = d.custody.restore(&info.id, &t, &dest()).unwrap_err();
        let msg = e.to_string();
        // Plus, on a filesystem without birth times, the entry the killed run was writing.
        let in_flight = match &e {
            DataError::TargetNotEmpty(c) => {
                let extra = c.count - planted;
                assert!(extra <= 1, "{kind}: {msg}");
                assert_eq!(c.unproven, c.count, "{kind}: {msg}");
                if extra == 1 {
                    assert!(msg.contains("most likely writing it"), "{kind}: {msg}");
                }
                extra
            }
            e => panic!("{kind}: {e}"),
        };
        eprintln!("{kind}: {in_flight} entry in flight unproven");
        for name in &names[2990..2990 + planted as usize] {
            assert!(msg.contains(&*name.to_string_lossy()), "{kind}: {msg}");
        }
        assert!(msg.contains("does not prove"), "{kind}: {msg}");
        assert!(msg.contains("nothing was written"), "{kind}: {msg}");
        assert_eq!(
            listing(&t),
            before,
            "{kind}: the refused resume changed the target"
        );
        assert_eq!(fs::read(at(2990)).unwrap(), b"a person's file");
        assert_eq!(
            fs::metadata(at(2991)).unwrap().ino(),
            fs::metadata(&outside).unwrap().ino()
        );
        assert_eq!(fs::read(&outside).unwrap(), b"someone's file elsewhere");
        assert_eq!(fs::read_link(at(2992)).unwrap(), Path::new("/etc/passwd"));
        if fifo.is_ok() {
            assert!(
                fs::symlink_metadata(at(2993))
                    .unwrap()
                    .file_type()
                    .is_fifo()
            );
        } else {
            eprintln!("{kind}: mkfifo refused ({fifo:?}): FIFO not planted");
        }

        // Gone again: the entries the killed run made are its own, except the one it was
        // writing when killed when the filesystem has no birth time (its line was not yet
        // written: tek cannot prove it made it).
        for i in 2990..2990 + planted as usize {
            fs::remove_file(at(i)).unwrap();
        }
        let res = match d.custody.restore(&info.id, &t, &dest()) {
            Ok(res) => res,
            Err(DataError::TargetNotEmpty(c)) if c.count == 1 && c.unproven == 1 => {
                let p = c.first[0].split(" (entry").next().unwrap().to_string();
                eprintln!("{kind}: the entry in flight when killed is unproven: {p}");
                fs::remove_file(t.join(&p)).unwrap();
                d.custody.restore(&info.id, &t, &dest()).unwrap()
            }
            Err(e) => panic!("{kind}: {e}"),
        };
        assert!(res.ok(), "{kind}: {res:?}");
        assert!(res.replaced.is_empty(), "{:?}", res.replaced);
        assert!(
            (50..3001).contains(&res.resumed.len()),
            "{kind}: {}",
            res.resumed.len()
        );
        assert_same_files(&src, &t);
        // A crash before the agent journals the verification redoes the restore: it finds
        // only its own entries, every one proved.
        let again = d.custody.restore(&info.id, &t, &dest()).unwrap();
        assert!(
            again.ok() && again.resumed.len() == 3001,
            "{kind}: {}",
            again.resumed.len()
        );
    }
    // The wipe takes the journal and its identity logs with the data.
    let proof = d.custody.verified_restore(&info.id).unwrap();
    let opts = client_data::WipeOptions {
        operator: "op-1".into(),
        ..Default::default()
    };
    d.custody.wipe(&proof, &opts).unwrap();
    let left: Vec<_> = fs::read_dir(d.dir.path().join("staging").join(info.id.as_str()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restore-journal"))
        .collect();
    assert!(left.is_empty(), "the wipe left {left:?}");
}

/// 1e: run X is killed; another client's restore Y into the same folder puts a file at a path
/// X would have created; X resumed is refused naming it, and Y's verified file is intact.
#[test]
fn a_resumed_restore_never_replaces_another_restores_file() {
    const TEST: &str = "restore_resume::a_resumed_restore_never_replaces_another_restores_file";
    child();
    if !can_run(TEST) {
        return;
    }
    let d = depot();
    let (src, x) = source(&d, 3000);
    let names = names(&src);
    let late = &names[2000];
    let ysrc = d.dir.path().join("ysrc");
    write(&ysrc.join("f").join(late), b"client 2's verified file");
    let y = d.custody.ingest("C-2", "T-2", &ysrc).unwrap();
    for (kind, vol) in volumes(d.dir.path(), 64 << 20) {
        let t = vol.root().join("Recovered");
        fs::create_dir_all(&t).unwrap();
        kill_mid_restore(&d, &x, &t, TEST, &t.join("f").join(&names[50]));
        let path = t.join("f").join(late);
        assert!(
            !path.exists(),
            "{kind}: the killed run got to {}",
            path.display()
        );
        let yres = d.custody.restore(&y.id, &t, &dest()).unwrap();
        assert!(
            yres.ok() && yres.merged_directories == 1,
            "{kind}: {yres:?}"
        );
        let hash = blake3::hash(&fs::read(&path).unwrap());
        let e = d.custody.restore(&x.id, &t, &dest()).unwrap_err();
        let msg = e.to_string();
        // Y's file, and on a filesystem without birth times possibly the entry X was writing.
        assert!(
            matches!(&e, DataError::TargetNotEmpty(c) if (1..=2).contains(&c.count)),
            "{kind}: {msg}"
        );
        assert!(msg.contains(&*late.to_string_lossy()), "{kind}: {msg}");
        assert_eq!(blake3::hash(&fs::read(&path).unwrap()), hash, "{kind}");
    }
}

/// A journal of format 1 (K only) proves nothing: its target's entries are conflicts, and
/// the message says why.
#[test]
fn a_format_1_journal_makes_its_entries_conflicts() {
    let d = depot();
    let src = d.dir.path().join("src");
    write(&src.join("a.txt"), b"a");
    let info = d.custody.ingest("C-1", "T-1", &src).unwrap();
    let t = d.dir.path().join("target");
    fs::create_dir_all(&t).unwrap();
    // Restored once (verified: its format-2 record covers everything), then the journal
    // replaced by a format-1 one for the same target.
    d.custody.restore(&info.id, &t, &dest()).unwrap();
    let p = d
        .dir
        .path()
        .join("staging")
        .join(info.id.as_str())
        .join("restore-journal.json");
    let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    let rec = &mut j["targets"][0];
    rec["entries_below"] = rec["intents_below"].take();
    rec["merged_dirs"] = serde_json::json!([]);
    let o = rec.as_object_mut().unwrap();
    o.remove("intents_below");
    o.remove("log");
    j["format"] = 1.into();
    fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    let e = d.custody.restore(&info.id, &t, &dest()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, DataError::TargetNotEmpty(c) if c.count == 1 && c.format1),
        "{msg}"
    );
    assert!(msg.contains("format-1 journal"), "{msg}");
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"a");
}
