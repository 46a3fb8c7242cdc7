//! `[resources]`: a policy's threads and buffer memory reach its jobs. The
//! same database is backed up, checked and restored through the command
//! line under the least buffer memory on one thread and under the
//! defaults; both restores equal the source, and the small read windows
//! show in the snapshot.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::policy::Policy;
use custos::repo::snapshot::Snapshot;
use rusqlite::{params, Connection};
use std::path::Path;
use util::{assert_same_db, write_local_policy, CALLS_TABLES};

/// Customers and about 14 MB of calls, interleaved across customers and
/// months: several read windows of 4 MiB, one of the default 32 MiB.
fn build(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, ref TEXT NOT NULL, name TEXT);
         CREATE TABLE calls (id INTEGER PRIMARY KEY, customer_ref TEXT NOT NULL,
                             started_at TEXT NOT NULL, seconds INTEGER, note TEXT);
         CREATE INDEX calls_by_customer ON calls(customer_ref, started_at);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..500 {
        tx.execute(
            "INSERT INTO customers (ref, name) VALUES (?1, ?2)",
            params![format!("C{i:03}"), format!("Customer number {i}")],
        )
        .unwrap();
    }
    let calls = 100_000i64;
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES (?1, ?2, ?3, ?4)",
            )
            .unwrap();
        for i in 0..calls {
            let month = 1 + i * 12 / calls;
            ins.execute(params![
                format!("C{:03}", (i * 7919) % 500),
                format!("2026-{month:02}-{:02}T10:{:02}:00Z", 1 + i % 28, i % 60),
                (i * 37) % 3600,
                format!("{i:08x}").repeat(12)
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The number of read windows of each table of the latest snapshot.
async fn windows(policy: &Policy) -> Vec<(String, usize)> {
    let repo = custos::ops::MetaRepo::open(policy, None).await.unwrap();
    let s = Snapshot::find(&repo.target, &repo.meta, "latest")
        .await
        .unwrap();
    s.record_tables()
        .iter()
        .map(|t| (t.name.clone(), t.windows.len()))
        .collect()
}

/// Backs up, checks and restores `db` through the command line under a
/// policy in `dir` with `resources` appended; returns the policy.
fn round_trip(dir: &Path, db: &Path, resources: &str) -> Policy {
    let path = write_local_policy(dir, "calls", db, &format!("{CALLS_TABLES}\n{resources}"));
    let policy = Policy::load(&path).unwrap();
    common::run(common::custos().args(["init", "--policy"]).arg(&path));
    let out = common::run(
        common::custos()
            .args(["backup", "--json", "--policy"])
            .arg(&path),
    );
    let b: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(b["items"], 100_500, "{b}");
    let out = common::run(
        common::custos()
            .args(["check", "--read-data", "--json", "--policy"])
            .arg(&path),
    );
    let c: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    assert!(c["chunks_checked"].as_u64().unwrap() > 6000, "{c}");
    let restored = dir.join("restored.db");
    common::run(
        common::custos()
            .args(["restore", "--policy"])
            .arg(&path)
            .arg("--to")
            .arg(&restored),
    );
    assert_same_db(db, &restored);
    policy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_buffer_memory_on_one_thread_restores_the_same_database() {
    let tmp = common::tempdir();
    let db = tmp.path().join("calls.db");
    build(&db);

    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let policy = round_trip(
        &small,
        &db,
        "\n[resources]\nthreads = 1\nbuffer_memory = \"32MiB\"\n",
    );
    assert_eq!(policy.resources.threads(), 1);
    let small_windows = windows(&policy).await;

    let default = tmp.path().join("default");
    std::fs::create_dir_all(&default).unwrap();
    let policy = round_trip(&default, &db, "");
    let default_windows = windows(&policy).await;

    // Read windows of 4 MiB of rows, not 32: the calls table is read in
    // several under the small budget and in one under the default.
    let calls = |w: &[(String, usize)]| w.iter().find(|(n, _)| n == "calls").unwrap().1;
    assert_eq!(calls(&default_windows), 1, "{default_windows:?}");
    assert!(calls(&small_windows) >= 3, "{small_windows:?}");

    // One run's flags over the policy's: the default policy's snapshot
    // restored and checked under the least budget on one thread.
    let path = default.join("policy.toml");
    let again = default.join("again.db");
    common::run(
        common::custos()
            .args([
                "restore",
                "--threads",
                "1",
                "--buffer-memory",
                "32MiB",
                "--policy",
            ])
            .arg(&path)
            .arg("--to")
            .arg(&again),
    );
    assert_same_db(&db, &again);
    let out = common::run(
        common::custos()
            .args(["check", "--read-data", "--json", "--threads", "1"])
            .args(["--buffer-memory", "32MiB", "--policy"])
            .arg(&path),
    );
    let c: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    // A value out of range is refused before anything is made.
    let never = default.join("never.db");
    let out = common::run_fail(
        common::custos()
            .args(["restore", "--buffer-memory", "16MiB", "--policy"])
            .arg(&path)
            .arg("--to")
            .arg(&never),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("from 32MiB to 16GiB"),
        "{}",
        common::stderr(&out)
    );
    assert!(!never.exists());
}
