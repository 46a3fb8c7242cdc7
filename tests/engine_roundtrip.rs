//! End-to-end tests of the engine as a user sees it: SQLite and file stores
//! backed up and restored exactly, through the library and the binary, on
//! `file://` and on a real S3 server; nothing in clear on any target or
//! vault location; `init` and `restore` never clobber.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::{bytes_under, custos, run, run_fail, stderr, stdout, S3Server};
use custos::ops::backup::{backup, BackupOptions, BackupReport};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::*;

/// A `file://` URL for a folder (created).
fn folder_url(p: &Path) -> String {
    fs::create_dir_all(p).unwrap();
    common::file_url(p)
}

fn load(dir: &Path, text: &str) -> (PathBuf, Policy) {
    let path = dir.join("policy.toml");
    fs::write(&path, text).unwrap();
    let policy = Policy::load(&path).unwrap_or_else(|e| panic!("policy refused: {e}\n{text}"));
    (path, policy)
}

async fn backup_to(policy: &Policy, target: Option<&str>) -> BackupReport {
    let opts = BackupOptions {
        target: target.map(str::to_string),
        ..Default::default()
    };
    backup(policy, &opts, Arc::new(NoProgress))
        .await
        .unwrap_or_else(|e| panic!("backup failed: {e}"))
}

async fn restore_to(policy: &Policy, target: Option<&str>, snapshot: &str, to: &Path) {
    let opts = RestoreOptions {
        target: target.map(str::to_string),
        snapshot: snapshot.to_string(),
        to: to.to_path_buf(),
        force: false,
        only: Default::default(),
    };
    let r = restore(policy, &opts, Arc::new(NoProgress))
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!(r.rows_shredded, 0, "nothing was shredded");
}

async fn check_ok(policy: &Policy, target: Option<&str>) {
    let c = custos::ops::check::check(policy, target, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "check --read-data found problems: {:#?}", c.findings);
    assert!(c.chunks_checked > 0, "check decrypted nothing");
}

/// Row counts the backup report must show for the awkward database.
fn assert_awkward_report(r: &BackupReport, db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut total = 0u64;
    for t in [
        "customers",
        "calls",
        "odd_values",
        "rate_card",
        "attachments",
        "audit",
    ] {
        let n: u64 = c
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        let s = r
            .tables
            .iter()
            .find(|s| s.name == t)
            .unwrap_or_else(|| panic!("table {t} (listed or not) is missing from the backup"));
        assert_eq!(s.rows, n, "rows of {t}");
        total += n;
    }
    assert!(r.items >= total, "items {} < rows {total}", r.items);
    let class = |t: &str| r.tables.iter().find(|s| s.name == t).unwrap().class.clone();
    assert_eq!(class("customers"), "identity");
    assert_eq!(class("calls"), "consumption");
    assert_eq!(class("odd_values"), "business", "unlisted: default class");
    // One group per customer, several per customer for calls (months).
    let groups = |t: &str| r.tables.iter().find(|s| s.name == t).unwrap().groups;
    assert_eq!(groups("customers"), 6);
    assert!(groups("calls") > 6, "calls grouped by subject and month");
    assert!(r.bytes_read as usize > BIG_BLOB);
}

/// The awkward database really holds the awkward values (so the round
/// trip cannot pass by accident on a database missing them).
fn assert_awkward_source(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let bits: Vec<u64> = {
        let mut st = c
            .prepare("SELECT a, b, c FROM odd_values WHERE rowid = 1")
            .unwrap();
        st.query_row([], |r| {
            Ok(vec![
                r.get::<_, f64>(0)?.to_bits(),
                r.get::<_, f64>(1)?.to_bits(),
                r.get::<_, f64>(2)?.to_bits(),
            ])
        })
        .unwrap()
    };
    assert_eq!(
        bits,
        vec![
            (-0.0f64).to_bits(),
            f64::INFINITY.to_bits(),
            f64::NEG_INFINITY.to_bits()
        ]
    );
    let seq: i64 = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'calls'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let max: i64 = c
        .query_row("SELECT max(id) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert!(seq > max, "sqlite_sequence is ahead of max(id)");
    let len: i64 = c
        .query_row(
            "SELECT length(body) FROM attachments WHERE id = 10",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(len as usize, BIG_BLOB);
    let made: i64 = c
        .query_row("SELECT sum(calls_made) FROM customers", [], |r| r.get(0))
        .unwrap();
    assert!(made > 0, "the trigger ran");
}

/// After a restore: values the comparisons could gloss over, read directly.
fn assert_awkward_restored(db: &Path) {
    assert_awkward_source(db);
    let c = rusqlite::Connection::open(db).unwrap();
    let (uv, app): (i64, i64) = (
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap(),
        c.query_row("PRAGMA application_id", [], |r| r.get(0))
            .unwrap(),
    );
    assert_eq!((uv, app), (20260417, 1129666387));
    let body: Vec<u8> = c
        .query_row("SELECT body FROM attachments WHERE id = 10", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(body == big_blob(), "the multi-MiB BLOB differs");
    let name: Vec<u8> = c
        .query_row(
            "SELECT CAST(name AS BLOB) FROM customers WHERE id = 1000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, b"with\x00embedded\x00NULs\x00");
    // The indexes and the view work in the copy.
    let n: i64 = c
        .query_row("SELECT count(*) FROM long_calls", [], |r| r.get(0))
        .unwrap();
    let m: i64 = c
        .query_row(
            "SELECT count(*) FROM calls INDEXED BY calls_long WHERE seconds > 600",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n > 0 && m >= n);
    // Indexes of reals, DESC columns, NOCASE/RTRIM texts and lower() find
    // what the table holds.
    for (index, cond, want) in [
        ("customers_balance", "balance < 0", None),
        ("customers_balance", "balance = 0", Some(1)),
        (
            "customers_balance",
            "balance = -25 AND ref > 's' COLLATE NOCASE",
            Some(1),
        ),
        ("calls_note", "note = 'no time' COLLATE RTRIM", Some(1)),
        ("calls_note", "note > 'call 9' COLLATE RTRIM", None),
        ("customers_lower_name", "lower(name) > 'm'", None),
    ] {
        let table = index.split('_').next().unwrap();
        let count = |how: &str| -> i64 {
            c.query_row(
                &format!("SELECT count(*) FROM {table} {how} WHERE {cond}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let found = count(&format!("INDEXED BY {index}"));
        assert_eq!(found, count("NOT INDEXED"), "{index}: {cond}");
        assert!(
            found > 0 && want.is_none_or(|w| w == found),
            "{index}: {cond}: {found}"
        );
    }
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // The trigger came back and still works.
    let before: i64 = c
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    c.execute(
        "INSERT INTO calls (customer_ref, started_at, seconds) VALUES ('SUBJ-7f3a9-0001', '2026-04-01', 1)",
        [],
    )
    .unwrap();
    let after: i64 = c
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        after,
        before + 1,
        "the trigger is live in the restored database"
    );
}

/// Keys dir, awkward db, vault folders: the common start of library tests.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let keys = custos::keys::init_keys(&dir.join("keys")).unwrap();
    let db = dir.join("crm.db");
    build_awkward(&db);
    assert_awkward_source(&db);
    (keys.identity_path, db)
}

// 1. SQLite round trip through the library.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_on_file_targets_is_exact() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let (identity, db) = setup(d);
    let vault = [
        folder_url(&d.join("vault/a")),
        folder_url(&d.join("vault/b")),
    ];
    let targets = [
        ("primary", folder_url(&d.join("t/primary")), false),
        ("dr", folder_url(&d.join("t/dr")), true),
    ];
    let (_, policy) = load(
        d,
        &sqlite_policy("crm", &db, &identity, &vault, &targets, ""),
    );
    custos::ops::init::init(&policy).await.unwrap();

    let r = backup_to(&policy, None).await;
    assert_awkward_report(&r, &db);
    let r_dr = backup_to(&policy, Some("dr")).await;
    assert_ne!(r.snapshot, r_dr.snapshot);

    let out = d.join("restored.db");
    restore_to(&policy, None, "latest", &out).await;
    assert_same_db(&db, &out);
    assert_awkward_restored(&out);
    // The comparisons can fail: the restore, changed by the trigger check
    // above, now differs from the source.
    assert_different_db(&db, &out);

    let out_dr = d.join("restored-dr.db");
    restore_to(&policy, Some("dr"), &r_dr.snapshot, &out_dr).await;
    assert_same_db(&db, &out_dr);

    check_ok(&policy, None).await;
    check_ok(&policy, Some("dr")).await;
}

/// An auto-vacuum database (pointer-map pages, which the restore's page
/// writer keeps) comes back exact, its mode kept and its file sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_vacuum_database_round_trips_exactly() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let (identity, db) = setup(d);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA auto_vacuum = FULL; VACUUM;")
        .unwrap();
    let vault = [folder_url(&d.join("vault/a"))];
    let targets = [("primary", folder_url(&d.join("t/primary")), false)];
    let (_, policy) = load(
        d,
        &sqlite_policy("crm", &db, &identity, &vault, &targets, ""),
    );
    custos::ops::init::init(&policy).await.unwrap();
    backup_to(&policy, None).await;
    let out = d.join("restored.db");
    restore_to(&policy, None, "latest", &out).await;
    assert_same_db(&db, &out);
    let mode: i64 = rusqlite::Connection::open(&out)
        .unwrap()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 1, "FULL kept");
    assert_awkward_restored(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_on_s3_targets_is_exact() {
    let s3 = S3Server::start();
    s3.create_bucket("crm-primary");
    s3.create_bucket("crm-dr");
    let tmp = common::tempdir();
    let d = tmp.path();
    let (identity, db) = setup(d);
    let vault = [
        folder_url(&d.join("vault/a")),
        folder_url(&d.join("vault/b")),
    ];
    let targets = [
        ("primary", s3.url("crm-primary", "repo"), false),
        ("dr", s3.url("crm-dr", "east/crm"), true),
    ];
    let s3_section = format!(
        "\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 1\n",
        s3.endpoint()
    );
    let (_, policy) = load(
        d,
        &sqlite_policy("crm", &db, &identity, &vault, &targets, &s3_section),
    );
    custos::ops::init::init(&policy).await.unwrap();
    let r = backup_to(&policy, None).await;
    assert_awkward_report(&r, &db);
    let r_dr = backup_to(&policy, Some("dr")).await;

    // Objects really are in both buckets.
    for b in ["crm-primary", "crm-dr"] {
        let n = all_files(&s3.root().join(b)).len();
        assert!(n >= 3, "bucket {b} holds {n} files");
    }

    let out = d.join("restored.db");
    restore_to(&policy, None, &r.snapshot[..8], &out).await;
    assert_same_db(&db, &out);
    assert_awkward_restored(&out);
    let out_dr = d.join("restored-dr.db");
    restore_to(&policy, Some("dr"), "latest", &out_dr).await;
    assert_same_db(&db, &out_dr);
    assert_eq!(r_dr.items, r.items);
    check_ok(&policy, None).await;
    check_ok(&policy, Some("dr")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_with_the_vault_on_s3_is_exact() {
    let s3 = S3Server::start();
    for b in ["crm-target", "keys-a", "keys-b"] {
        s3.create_bucket(b);
    }
    let tmp = common::tempdir();
    let d = tmp.path();
    let (identity, db) = setup(d);
    let vault = [s3.url("keys-a", "crm"), s3.url("keys-b", "vault/crm")];
    let targets = [
        ("primary", s3.url("crm-target", "crm"), false),
        ("local", folder_url(&d.join("t/local")), true),
    ];
    let s3_section = format!(
        "\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 1\n",
        s3.endpoint()
    );
    let (_, policy) = load(
        d,
        &sqlite_policy("crm", &db, &identity, &vault, &targets, &s3_section),
    );
    custos::ops::init::init(&policy).await.unwrap();
    for b in ["keys-a", "keys-b"] {
        assert!(
            !all_files(&s3.root().join(b)).is_empty(),
            "the vault is in bucket {b}"
        );
    }
    let r = backup_to(&policy, None).await;
    assert_awkward_report(&r, &db);
    backup_to(&policy, Some("local")).await;
    let out = d.join("restored.db");
    restore_to(&policy, None, "latest", &out).await;
    assert_same_db(&db, &out);
    assert_awkward_restored(&out);
    let out2 = d.join("restored-local.db");
    restore_to(&policy, Some("local"), "latest", &out2).await;
    assert_same_db(&db, &out2);
    check_ok(&policy, None).await;

    // Nothing in clear in the buckets (targets and vault) either.
    let (line, secret) = age_secret_bytes(&identity);
    let needles = vec![
        ("name marker".to_string(), NAME_MARKER.as_bytes().to_vec()),
        ("blob marker".to_string(), BLOB_MARKER.to_vec()),
        ("subject id".to_string(), SUBJECT_PREFIX.as_bytes().to_vec()),
        ("identity (text)".to_string(), line.into_bytes()),
        ("identity (raw)".to_string(), secret),
    ];
    let n = assert_absent(&[s3.root(), &d.join("t")], &needles);
    assert!(n > 5);
}

// 2. The CLI end to end on the demo database.

fn json(out: &std::process::Output) -> Value {
    let s = stdout(out);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}):\n{s}"))
}

fn demo_cli_policy(d: &Path, db: &Path) -> String {
    format!(
        r#"[policy]
name = "demo-crm"

[store]
kind = "sqlite"
path = {db}

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = {{ column = "started_at", every = "month" }}
{rest}"#,
        db = toml_str(db),
        rest = keys_and_targets(
            &d.join("keys/service.age"),
            &[
                folder_url(&d.join("vault/a")),
                folder_url(&d.join("vault/b"))
            ],
            &[
                ("primary", folder_url(&d.join("t/primary")), false),
                ("offsite", folder_url(&d.join("t/offsite")), true),
            ],
        )
    )
}

#[test]
fn cli_backup_mutate_backup_restore_both_and_check() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    let p = d.join("policy.toml");
    let out = run(custos().args(["keys", "init", "--out"]).arg(d.join("keys")));
    assert!(stdout(&out).contains("age1"), "prints the recipient");
    run(custos()
        .args([
            "demo-data",
            "generate",
            "--size",
            "small",
            "--seed",
            "7",
            "--out",
        ])
        .arg(&db));
    fs::write(&p, demo_cli_policy(d, &db)).unwrap();
    run(custos().args(["init", "--policy"]).arg(&p));

    let b1 = json(&run(custos()
        .args(["backup", "--json", "--policy"])
        .arg(&p)));
    let id1 = b1["snapshot"].as_str().expect("snapshot id").to_string();
    let items1 = b1["items"].as_u64().unwrap();
    let read1 = b1["bytes_read"].as_u64().unwrap();
    let stored1 = b1["new_bytes_stored"].as_u64().unwrap();
    assert!(items1 > 2000, "a small demo db has thousands of rows");
    assert!(read1 > 0 && stored1 > 0);
    assert_eq!(b1["target"], "primary");
    assert!(b1["tables"].as_array().unwrap().len() >= 4);

    let before = d.join("before.db");
    fs::copy(&db, &before).unwrap();
    let list = json(&run(custos()
        .args(["snapshots", "--json", "--policy"])
        .arg(&p)));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id1.as_str());
    assert_eq!(list[0]["items"].as_u64(), Some(items1));

    run(custos()
        .args([
            "demo-data",
            "mutate",
            "--fraction",
            "0.01",
            "--seed",
            "8",
            "--db",
        ])
        .arg(&db));
    assert_different_db(&before, &db);

    let primary = d.join("t/primary");
    let held = bytes_under(&primary);
    let b2 = json(&run(custos()
        .args(["backup", "--json", "--policy"])
        .arg(&p)));
    let id2 = b2["snapshot"].as_str().unwrap().to_string();
    let stored2 = b2["new_bytes_stored"].as_u64().unwrap();
    // What the report says it stored is what the target grew by: packs,
    // index objects and the snapshot object.
    assert_eq!(bytes_under(&primary) - held, stored2);
    assert_ne!(id1, id2);
    assert!(
        stored2 * 4 < stored1,
        "second backup stored {stored2} bytes, first {stored1}: not < 25%"
    );
    assert!(
        b2["bytes_read"].as_u64().unwrap() * 3 > read1,
        "read it all again"
    );

    let list = json(&run(custos()
        .args(["snapshots", "--json", "--policy"])
        .arg(&p)));
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id1.as_str(), id2.as_str()]);

    let r1 = d.join("r1.db");
    run(custos()
        .args(["restore", "--policy"])
        .arg(&p)
        .args(["--snapshot", &id1[..6], "--to"])
        .arg(&r1));
    assert_same_db(&before, &r1);
    assert_different_db(&db, &r1);
    let r2 = d.join("r2.db");
    run(custos()
        .args(["restore", "--policy"])
        .arg(&p)
        .args(["--snapshot", "latest", "--to"])
        .arg(&r2));
    assert_same_db(&db, &r2);

    let c = json(&run(custos()
        .args(["check", "--read-data", "--json", "--policy"])
        .arg(&p)));
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["snapshots"].as_u64(), Some(2));
    assert!(c["chunks_checked"].as_u64().unwrap() > 0);
    assert_eq!(c["findings"].as_array().map(Vec::len), Some(0), "{c}");
}

// 3. The demo.

#[test]
fn demo_runs_and_says_the_restore_is_identical() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("demo");
    // A 2 MB database instead of the default few MB keeps the suite quick;
    // the story told is the same.
    let out = run(custos().args(["demo", "--size", "2m", "--dir"]).arg(&dir));
    let s = stdout(&out);
    assert!(s.contains("identical to the source"), "{s}");
    assert!(s.contains("no errors"), "{s}");
    assert!(s.contains(": PASS"), "{s}");
    assert!(s.contains("every other row identical"), "{s}");
    assert!(s.contains("chain intact"), "{s}");
    // Checked independently of what the demo says about itself.
    assert_same_db(&dir.join("crm.db"), &dir.join("restored.db"));
    // The erased customer's rows are gone from the restore after erasure,
    // and nothing else is: its row counts are the source's minus theirs.
    let src = rusqlite::Connection::open(dir.join("crm.db")).unwrap();
    let after = rusqlite::Connection::open(dir.join("restored-after-erasure.db")).unwrap();
    let count = |c: &rusqlite::Connection, t: &str| -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&after, "customers"), count(&src, "customers") - 1);
    assert_eq!(
        count(&after, "ticket_history"),
        count(&src, "ticket_history")
    );
    // Signed documents the demo made verify with the public key alone.
    let state = dir.join("state");
    for (kind, cmd) in [("reports", "reports"), ("certificates", "certificates")] {
        let docs: Vec<_> = std::fs::read_dir(state.join(kind).join("demo-crm"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(docs.len(), 1, "{kind}: {docs:?}");
        run(custos()
            .args([cmd, "verify"])
            .arg(&docs[0])
            .arg("--public-key")
            .arg(dir.join("keys/signing.pub")));
    }
    // A second run into the same folder refuses.
    let again = run_fail(custos().args(["demo", "--size", "2m", "--dir"]).arg(&dir));
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
}

// 4. File mode.

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    fs::File::open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn put(p: &Path, data: &[u8], mode: u32, secs: u64) {
    fs::write(p, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(p, secs, 123_456_789);
}

fn build_file_tree(root: &Path) {
    fs::create_dir_all(root.join("accounts/2026/03")).unwrap();
    fs::create_dir_all(root.join("exports/empty")).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    put(
        &root.join("accounts/2026/03/big.bin"),
        &noise(3 * 1024 * 1024, 0xF11E),
        0o640,
        1_770_000_001,
    );
    put(
        &root.join("accounts/2026/03/contract.txt"),
        b"v1 of the contract\n",
        0o644,
        1_770_000_002,
    );
    put(
        &root.join("accounts/run.sh"),
        b"#!/bin/sh\nexit 0\n",
        0o755,
        1_770_000_003,
    );
    put(
        &root.join("private/secret.txt"),
        b"only me\n",
        0o600,
        1_770_000_004,
    );
    put(&root.join("readme ünï.txt"), b"", 0o444, 1_770_000_005);
    symlink(
        "accounts/2026/03/contract.txt",
        root.join("current-contract"),
    )
    .unwrap();
    for (dir, mode, secs) in [
        ("accounts/2026/03", 0o750, 1_770_000_100),
        ("accounts/2026", 0o755, 1_770_000_101),
        ("accounts", 0o711, 1_770_000_102),
        ("exports/empty", 0o700, 1_770_000_103),
        ("exports", 0o755, 1_770_000_104),
        ("private", 0o700, 1_770_000_105),
    ] {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&root.join(dir), secs, 987_654_321);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_keeps_contents_modes_and_mtimes_of_both_snapshots() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let keys = custos::keys::init_keys(&d.join("keys")).unwrap();
    let root = d.join("records");
    build_file_tree(&root);
    let text = format!(
        "[policy]\nname = \"docs\"\n\n[store]\nkind = \"files\"\nroot = {}\nclass = \"business\"\n{}",
        toml_str(&root),
        keys_and_targets(
            &keys.identity_path,
            &[folder_url(&d.join("vault/a")), folder_url(&d.join("vault/b"))],
            &[("primary", folder_url(&d.join("t/primary")), false)],
        )
    );
    let (_, policy) = load(d, &text);
    custos::ops::init::init(&policy).await.unwrap();

    let state1 = tree_state(&root);
    assert_eq!(state1.len(), 12, "{state1:#?}");
    let b1 = backup_to(&policy, None).await;
    assert_eq!(b1.store_kind, "files");

    // Change one file (contents, size and mtime); its directory keeps its time.
    let contract = root.join("accounts/2026/03/contract.txt");
    put(
        &contract,
        b"v2 of the contract, amended\n",
        0o600,
        1_770_000_500,
    );
    set_mtime(&root.join("accounts/2026/03"), 1_770_000_100, 987_654_321);
    let state2 = tree_state(&root);
    assert_ne!(state1, state2);
    let b2 = backup_to(&policy, None).await;
    assert!(
        b2.new_bytes_stored < b1.new_bytes_stored,
        "the unchanged 3 MiB file is not stored again"
    );

    let out1 = d.join("out1");
    restore_to(&policy, None, &b1.snapshot, &out1).await;
    let out2 = d.join("out2");
    restore_to(&policy, None, "latest", &out2).await;
    assert_eq!(tree_state(&out1), state1, "first snapshot");
    assert_eq!(tree_state(&out2), state2, "second snapshot");
    check_ok(&policy, None).await;

    // A file snapshot has no tables or subjects to select.
    let out3 = d.join("out3");
    let opts = custos::ops::restore::RestoreOptions {
        target: None,
        snapshot: "latest".into(),
        to: out3.clone(),
        force: false,
        only: custos::ops::restore::Selection {
            tables: vec!["accounts".into()],
            subject: None,
        },
    };
    let e = custos::ops::restore::restore(&policy, &opts, Arc::new(NoProgress))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds files"), "{e}");
    assert!(!out3.exists());
}

// 5. Nothing leaks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_customer_value_subject_id_or_key_in_clear_anywhere() {
    let s3 = S3Server::start();
    s3.create_bucket("leak-dr");
    let tmp = common::tempdir();
    let d = tmp.path();
    let (identity, db) = setup(d);
    let vault = [
        folder_url(&d.join("vault/a")),
        folder_url(&d.join("vault/b")),
    ];
    let targets = [
        ("primary", folder_url(&d.join("t/primary")), false),
        ("dr", folder_url(&d.join("t/dr")), true),
        ("s3dr", s3.url("leak-dr", "crm"), true),
    ];
    let s3_section = format!(
        "\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 1\n",
        s3.endpoint()
    );
    let (p, policy) = load(
        d,
        &sqlite_policy("crm", &db, &identity, &vault, &targets, &s3_section),
    );
    custos::ops::init::init(&policy).await.unwrap();
    backup_to(&policy, None).await;
    backup_to(&policy, Some("dr")).await;

    // The CLI at debug and trace level (an S3 target, so the HTTP stack
    // logs too): nothing sensitive on stdout or stderr.
    let out = run(custos()
        .envs(s3.env())
        .args(["--log", "debug", "backup", "--policy"])
        .arg(&p));
    let out_json = run(custos()
        .envs(s3.env())
        .args([
            "--log", "trace", "backup", "--json", "--target", "s3dr", "--policy",
        ])
        .arg(&p));
    assert!(
        !out_json.stderr.is_empty(),
        "trace logging printed nothing: this check would be vacuous"
    );
    let (line, secret) = age_secret_bytes(&identity);
    let mut needles = vec![
        ("name marker".to_string(), NAME_MARKER.as_bytes().to_vec()),
        ("blob marker".to_string(), BLOB_MARKER.to_vec()),
        ("subject id".to_string(), SUBJECT_PREFIX.as_bytes().to_vec()),
        ("identity (text)".to_string(), line.clone().into_bytes()),
        ("identity (raw)".to_string(), secret.clone()),
        (
            "identity (hex)".to_string(),
            hex::encode(&secret).into_bytes(),
        ),
        (
            "S3 secret".to_string(),
            common::s3::SECRET_KEY.as_bytes().to_vec(),
        ),
    ];
    for o in [&out, &out_json] {
        for (what, n) in &needles {
            for (stream, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                assert!(!contains(bytes, n), "{what} printed on {stream}");
            }
        }
    }

    // Every key of the vault, raw and in hex: on no target, and not in
    // clear in the vault either.
    let v = custos::ops::open_vault(&policy).await.unwrap();
    let entries = v.entries();
    assert!(
        entries.len() > 6,
        "subject, period and epoch keys exist ({})",
        entries.len()
    );
    let mut keys = vec![
        ("meta key".to_string(), v.meta_key().expose().to_vec()),
        (
            "pseudonym key".to_string(),
            v.pseudonym_key().expose().to_vec(),
        ),
    ];
    for e in &entries {
        assert!(
            !e.name.contains(SUBJECT_PREFIX),
            "the vault names a subject in clear: {}",
            e.name
        );
        let k = v.key(&e.key_id).unwrap().expose().to_vec();
        keys.push((format!("{} key {}", e.kind.as_str(), e.name), k));
    }
    for (what, k) in keys {
        needles.push((format!("{what} (hex)"), hex::encode(&k).into_bytes()));
        needles.push((what, k));
    }
    let searched = assert_absent(&[&d.join("t"), &d.join("vault"), s3.root()], &needles);
    assert!(searched > 10, "only {searched} objects searched");

    // The search itself finds what is there: the source database holds the
    // markers and subject ids in clear.
    let src = fs::read(&db).unwrap();
    for n in [
        NAME_MARKER.as_bytes(),
        BLOB_MARKER,
        SUBJECT_PREFIX.as_bytes(),
    ] {
        assert!(contains(&src, n));
    }
    assert!(contains(&fs::read(&identity).unwrap(), line.as_bytes()));
}

// 6. init never clobbers.

#[test]
fn second_init_fails_and_changes_nothing() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    build_awkward(&db);
    run(custos().args(["keys", "init", "--out"]).arg(d.join("keys")));
    let p = d.join("policy.toml");
    let vault = [
        folder_url(&d.join("vault/a")),
        folder_url(&d.join("vault/b")),
    ];
    let targets = [
        ("primary", folder_url(&d.join("t/primary")), false),
        ("dr", folder_url(&d.join("t/dr")), true),
    ];
    fs::write(
        &p,
        sqlite_policy(
            "crm",
            &db,
            &d.join("keys/service.age"),
            &vault,
            &targets,
            "",
        ),
    )
    .unwrap();
    run(custos().args(["init", "--policy"]).arg(&p));
    run(custos().args(["backup", "--policy"]).arg(&p));
    let before = hash_tree(d);
    assert!(before.len() > 8);

    let out = run_fail(custos().args(["init", "--policy"]).arg(&p));
    assert_ne!(out.status.code(), Some(0));
    assert!(out.status.code().is_some(), "exited, not killed");
    assert!(!stderr(&out).is_empty(), "says why");
    assert_eq!(hash_tree(d), before, "a refused init changed files");

    // Also the keys: a second `keys init` refuses and keeps the identity.
    run_fail(custos().args(["keys", "init", "--out"]).arg(d.join("keys")));
    assert_eq!(hash_tree(d), before);

    // The repository still restores.
    let r = d.join("r.db");
    run(custos()
        .args(["restore", "--policy"])
        .arg(&p)
        .arg("--to")
        .arg(&r));
    assert_same_db(&db, &r);
}

// 7. restore never clobbers without --force.

#[test]
fn restore_refuses_an_existing_file_unless_forced() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    build_awkward(&db);
    run(custos().args(["keys", "init", "--out"]).arg(d.join("keys")));
    let p = d.join("policy.toml");
    fs::write(
        &p,
        sqlite_policy(
            "crm",
            &db,
            &d.join("keys/service.age"),
            &[folder_url(&d.join("vault/a"))],
            &[("primary", folder_url(&d.join("t/primary")), false)],
            "",
        ),
    )
    .unwrap();
    run(custos().args(["init", "--policy"]).arg(&p));
    run(custos().args(["backup", "--policy"]).arg(&p));

    let to = d.join("precious.db");
    fs::write(&to, b"precious bytes, not a database").unwrap();
    let out = run_fail(
        custos()
            .args(["restore", "--policy"])
            .arg(&p)
            .args(["--snapshot", "latest", "--to"])
            .arg(&to),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("force"),
        "tells about --force: {}",
        stderr(&out)
    );
    assert_eq!(fs::read(&to).unwrap(), b"precious bytes, not a database");
    let leftovers: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("precious") && n != "precious.db")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    run(custos()
        .args(["restore", "--policy"])
        .arg(&p)
        .args(["--snapshot", "latest", "--force", "--to"])
        .arg(&to));
    assert_same_db(&db, &to);
}

// The comparisons used above can fail.

/// A copy of the awkward database with one change applied.
fn changed_copy(dir: &Path, src: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    fs::copy(src, &p).unwrap();
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    p
}

#[test]
fn same_db_check_catches_the_changes_a_restore_could_make() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    build_awkward(&db);
    let same = changed_copy(d, &db, "same.db", "SELECT 1");
    assert_same_db(&db, &same);
    for (i, sql) in [
        "UPDATE odd_values SET a = 0.0 WHERE rowid = 1", // -0.0 lost
        "UPDATE sqlite_sequence SET seq = seq + 1",
        "UPDATE customers SET calls_made = calls_made * 2", // trigger fired twice
        "DELETE FROM audit WHERE seq = 1",
        "PRAGMA user_version = 1",
        "DROP INDEX calls_long",
        "UPDATE attachments SET body = zeroblob(length(body)) WHERE id = 10",
        "UPDATE odd_values SET b = 1.0 WHERE rowid = 7", // integer became real
        "UPDATE customers SET name = CAST(name AS BLOB) WHERE id = 2", // text became blob
    ]
    .iter()
    .enumerate()
    {
        let other = changed_copy(d, &db, &format!("changed-{i}.db"), sql);
        let r = std::panic::catch_unwind(|| assert_same_db(&db, &other));
        assert!(r.is_err(), "`{sql}` went unnoticed");
    }
}

/// `compare` cannot tell `-0.0` from `0.0` (f64 `==`); the exact dump of
/// this file catches it, so the round trips above are not weakened, but the
/// demo and other users of `compare` would miss a lost sign.
#[test]
fn compare_tells_negative_zero_from_zero() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    build_awkward(&db);
    let other = changed_copy(
        d,
        &db,
        "zero.db",
        "UPDATE odd_values SET a = 0.0 WHERE rowid = 1",
    );
    let cmp = custos::store::compare::compare(&db, &other).unwrap();
    assert!(!cmp.differences.is_empty(), "-0.0 vs 0.0 not reported");
}
