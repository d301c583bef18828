//! agent.toml's `[restore]` stall limits reach `tek data restore`: a bad value stops the
//! command with the key named, before anything is opened.

use std::process::Command;

#[test]
fn data_restore_refuses_a_bad_restore_table_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(d.path().join("state")).unwrap();
    for (table, want) in [
        (
            "stall_warn_secs = 30\nstall_abort_secs = 30\n",
            "restore.stall_abort_secs = 30: must be more than restore.stall_warn_secs (30)",
        ),
        ("stall_abort_secs = 1.5\n", "stall_abort_secs"),
    ] {
        let cfg = d.path().join("agent.toml");
        std::fs::write(&cfg, format!("[restore]\n{table}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tek"))
            .arg("--state")
            .arg(d.path().join("state"))
            .args(["data", "restore", "ds-0000000000000000"])
            .arg(&target)
            .env("TEK_CONFIG", &cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: {err}");
        assert!(err.contains(want), "{table}: {err}");
        assert!(err.contains(&cfg.display().to_string()), "{table}: {err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    }
}
