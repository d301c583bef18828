//! Custody settings come from one place for the commands and the daemon (agent.toml's
//! `[custody]`, the environment overriding it): a depot whose KEK is at a non-default path.

use serde_json::Value;
use tek_e2e::*;

#[test]
fn kek_at_a_configured_path_is_used_by_ingest_and_by_the_daemons_job() {
    if !need_root("kek_at_a_configured_path_is_used_by_ingest_and_by_the_daemons_job") {
        return;
    }
    let mut b = Bench::new("custody-kek", &["bay1"], "");
    let kek = b.root().join("secrets/kek");
    std::fs::create_dir_all(kek.parent().unwrap()).unwrap();
    let mut cfg = std::fs::read_to_string(&b.config).unwrap();
    cfg += &format!(
        "[custody]\nkek = {:?}\nmax_staging_age_days = 9\n",
        kek.display().to_string()
    );
    std::fs::write(&b.config, cfg).unwrap();

    // The command (TEK_CONFIG is the bench's agent.toml) makes and uses the configured KEK.
    let src = agent::sample::build_client_data(&b.root().join("work")).unwrap();
    let out = b.tek_ok(&[
        "data",
        "ingest",
        "--client",
        "client-e2e",
        "--ticket",
        "T-E2E",
        &src.display().to_string(),
    ]);
    let dataset = out.trim().to_string();
    assert!(
        kek.is_file(),
        "the configured KEK {} was not made",
        kek.display()
    );
    assert!(
        !b.state.join("keys/kek").exists(),
        "ingest made a KEK at the default path instead"
    );

    // The daemon's job opens custody with the same KEK: the migration decrypts and verifies.
    b.start_agent();
    let job = b.add_job("T-E2E", "bay1", Some(&dataset));
    let (disk, _lo) = b.plug("bay1", 1, 128 * MIB);
    b.wait_job(&job, "done (or failed)", 90, |v| {
        v["state"] == "done" || v["state"] == "failed"
    });
    check_done_with_data(&b, &job, &disk, &dataset, &src);
    assert!(b.stop(), "agent did not stop cleanly:\n{}", b.agent_log());

    // The file's value applies to the commands; the environment wins over it.
    let list = |env: Option<&str>| -> Value {
        let mut cmd = std::process::Command::new(tek_bin());
        cmd.arg("--state")
            .arg(&b.state)
            .args(["data", "list", "--json"])
            .env("TEK_CONFIG", &b.config);
        match env {
            Some(v) => cmd.env("TEK_MAX_STAGING_AGE_DAYS", v),
            None => cmd.env_remove("TEK_MAX_STAGING_AGE_DAYS"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(list(None)[0]["max_staging_age_days"], 9);
    assert_eq!(list(Some("4"))[0]["max_staging_age_days"], 4);

    // A misspelt key in the table stops the commands, naming it and its line.
    let mut cfg = std::fs::read_to_string(&b.config).unwrap();
    cfg += "kek_file = \"/x\"\n";
    std::fs::write(&b.config, &cfg).unwrap();
    let out = b.tek(&["data", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = cfg.lines().count();
    assert!(
        err.contains("kek_file") && err.contains(&format!("line {line}")),
        "{err}"
    );
}
