//! Every daemon job run once through the binary (`custos run-once`), as an
//! external scheduler would: a backup that replicates to the off-site
//! target, a drill of the latest and a random older snapshot, a verifying
//! replication, and a retention run that forgets what `[snapshots]` does
//! not keep on every target. Each leaves its outcome in the audit trail.

mod common;
#[path = "common/faults_util.rs"]
mod util;

use common::{custos, file_url, run, stdout, tempdir};
use custos::demo::{generate, DemoSize};
use custos::progress::NoProgress;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use util::sqlite_policy;

fn cli(state: &Path, args: &[&str]) -> Command {
    let mut c = custos();
    c.arg("--state-dir").arg(state).args(args);
    c
}

fn run_once(state: &Path, policy: &str, job: &str) -> Value {
    // One tick per second: never claim the tick a previous run finished.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run(cli(
        state,
        &["run-once", "--policy", policy, "--job", job, "--json"],
    ));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["outcome"], "ok", "{job}: {v}");
    v
}

fn snapshot_count(state: &Path, policy: &str, target: &str) -> usize {
    let out = run(cli(
        state,
        &[
            "snapshots",
            "--policy",
            policy,
            "--target",
            target,
            "--json",
        ],
    ));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    v.as_array()
        .or_else(|| v["snapshots"].as_array())
        .map(Vec::len)
        .unwrap_or_else(|| panic!("no snapshot list: {v}"))
}

#[test]
fn every_job_runs_once_end_to_end() {
    let dir = tempdir();
    let db = dir.path().join("crm.db");
    generate(&db, DemoSize::Bytes(1 << 20), 21, &NoProgress).unwrap();
    let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
    let (primary, dr) = (dir.path().join("primary"), dir.path().join("dr"));
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        sqlite_policy(
            &db,
            &keys.identity_path,
            &file_url(&dir.path().join("vault")),
            &file_url(&primary),
            &format!(
                "[[targets]]\nname = \"dr\"\nurl = \"{}\"\noffsite = true\n\n[snapshots]\nkeep_last = 1\n",
                file_url(&dr)
            ),
        ),
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let state = dir.path().join("state");
    run(cli(&state, &["init", "--policy", p]));

    // A backup replicates at once to the off-site target.
    let b = run_once(&state, p, "backup");
    assert!(b["detail"].as_str().unwrap().contains("replicated"), "{b}");
    assert_eq!(snapshot_count(&state, p, "dr"), 1);
    run_once(&state, p, "backup");
    assert_eq!(snapshot_count(&state, p, "primary"), 2);
    assert_eq!(snapshot_count(&state, p, "dr"), 2);

    // A drill job: the latest and a random older snapshot, two signed reports.
    run_once(&state, p, "drill");
    let reports = run(cli(&state, &["reports", "list", "--json"]));
    let reports: Value = serde_json::from_str(&stdout(&reports)).unwrap();
    let reports = reports
        .as_array()
        .or_else(|| reports["reports"].as_array())
        .unwrap()
        .clone();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let pubkey = keys.public_key_path.to_str().unwrap().to_string();
    for r in &reports {
        assert_eq!(r["verdict"], "PASS", "{r}");
        let id = r["id"].as_str().unwrap();
        run(cli(
            &state,
            &["reports", "verify", id, "--public-key", &pubkey],
        ));
    }

    run_once(&state, p, "replicate");

    // Retention: keep_last = 1 on every target.
    run_once(&state, p, "retention");
    assert_eq!(snapshot_count(&state, p, "primary"), 1);
    assert_eq!(snapshot_count(&state, p, "dr"), 1);
    run(cli(
        &state,
        &["check", "--policy", p, "--target", "dr", "--read-data"],
    ));

    // Every job's outcome is in the audit trail, whose chain holds.
    let log = custos::audit::AuditLog::open(&state.join("audit")).unwrap();
    assert!(log.verify(None).unwrap().ok());
    let actors: Vec<String> = log
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.actor)
        .collect();
    for job in ["backup", "drill", "replicate", "retention"] {
        let want = format!("job:faults/{job}");
        assert!(actors.contains(&want), "no entry by {want}: {actors:?}");
    }
}
