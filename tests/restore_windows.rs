//! A SQLite restore reads a snapshot read window by read window: the
//! window's groups are opened on every core, part by part (as many groups as
//! fit in a bounded number of packs), and the window's rows are inserted in
//! rowid order. These tests make windows that span many packs (many parts)
//! and windows with hundreds of groups (several threads), with shredded
//! groups between readable ones, and compare every restore with its source.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::ops::backup::{backup, BackupOptions, BackupReport};
use custos::ops::restore::{restore, RestoreOptions, RestoreReport};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::vault::KeyKind;
use rusqlite::{params, Connection};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::{assert_same_db, build_calls_db, write_local_policy};

const CUSTOMERS: i64 = 60;
const CALLS: i64 = 24000;

/// Customers, calls interleaved across customers and months (so a window
/// holds hundreds of groups whose rows alternate), an index, gaps in the
/// rowids, and a WITHOUT ROWID table (inserted in key order, not rowid
/// order).
fn build(path: &Path) {
    build_calls_db(path, CUSTOMERS, CALLS);
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE INDEX calls_by_customer ON calls(customer_ref, started_at);
         CREATE TABLE tags (customer_ref TEXT NOT NULL, tag TEXT NOT NULL, since TEXT,
                            PRIMARY KEY (customer_ref, tag)) WITHOUT ROWID;
         DELETE FROM calls WHERE id % 97 = 0;",
    )
    .unwrap();
    for i in 0..CUSTOMERS {
        for t in ["roaming", "business", "prepaid"]
            .iter()
            .take(1 + (i % 3) as usize)
        {
            c.execute(
                "INSERT INTO tags (customer_ref, tag, since) VALUES (?1, ?2, ?3)",
                params![format!("C{i:03}"), t, "2026-01-01"],
            )
            .unwrap();
        }
    }
}

fn policy(d: &Path, db: &Path) -> Policy {
    let tables =
        "[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"ref\"\n\n\
         [[store.tables]]\nname = \"tags\"\nclass = \"identity\"\nsubject = \"customer_ref\"\n\n\
         [[store.tables]]\nname = \"calls\"\nclass = \"consumption\"\nsubject = \"customer_ref\"\n\
         period = { column = \"started_at\", every = \"month\" }\n";
    Policy::load(&write_local_policy(d, "windows", db, tables)).unwrap()
}

async fn backup_with(policy: &Policy, pack_size: usize) -> BackupReport {
    let opts = BackupOptions {
        pack_size,
        // The whole calls table is one window.
        window_budget: 16 << 20,
        ..Default::default()
    };
    backup(policy, &opts, Arc::new(NoProgress)).await.unwrap()
}

async fn restore_to(policy: &Policy, to: &Path) -> RestoreReport {
    let opts = RestoreOptions {
        target: None,
        snapshot: "latest".into(),
        to: to.to_path_buf(),
        force: false,
        only: Default::default(),
    };
    restore(policy, &opts, Arc::new(NoProgress)).await.unwrap()
}

fn packs(target: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), n);
            } else {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&target.join("data"), &mut n);
    n
}

fn setup() -> (tempfile::TempDir, PathBuf, Policy) {
    util::calls_setup(build, policy)
}

/// Restores, then destroys the March key and restores again: the second
/// restore must equal the source without March's calls, the shredded
/// groups being scattered through the one window of the calls table.
async fn restore_whole_then_without_march(pack_size: usize, min_packs: usize) {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let b = backup_with(&policy, pack_size).await;
    let stored = packs(&tmp.path().join("target"));
    assert!(
        stored >= min_packs,
        "{stored} packs; the test needs at least {min_packs}: {b:?}"
    );

    let out = tmp.path().join("restored.db");
    let r = restore_to(&policy, &out).await;
    assert_eq!(r.rows_shredded, 0);
    // Every table's pages were written directly, every row of them,
    // though each window's rows came in pieces; the WITHOUT ROWID table's
    // sorted by its primary key.
    for t in &r.tables {
        assert_eq!(t.rows_by_pages, t.rows_restored, "{t:?}");
    }
    assert!(r
        .tables
        .iter()
        .any(|t| t.name == "tags" && t.rows_restored > 0));
    assert_same_db(&db, &out);
    let c = Connection::open(&out).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    util::destroy_key(&policy, KeyKind::Period, "consumption:2026-03").await;
    let expected = tmp.path().join("expected.db");
    fs::copy(&db, &expected).unwrap();
    let march: u64 = {
        let c = Connection::open(&expected).unwrap();
        let n = c
            .execute("DELETE FROM calls WHERE started_at LIKE '2026-03-%'", [])
            .unwrap();
        n as u64
    };
    assert!(march > 1000, "March holds {march} calls");
    let out2 = tmp.path().join("without-march.db");
    let r = restore_to(&policy, &out2).await;
    assert_eq!(r.rows_shredded, march, "{r:?}");
    let calls = r.tables.iter().find(|t| t.name == "calls").unwrap();
    assert_eq!(calls.groups_shredded, CUSTOMERS as u64, "{r:?}");
    assert_same_db(&expected, &out2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_over_many_packs_restores_part_by_part() {
    // 4 KiB packs: the calls window spans far more packs than a part holds.
    restore_whole_then_without_march(4 << 10, 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_many_groups_is_opened_on_several_threads() {
    // Default packs: the window is one part of 720 groups, split over the
    // cores.
    restore_whole_then_without_march(8 << 20, 1).await;
}
