//! Incremental backups reuse the tree pages of read windows whose content
//! did not change since the parent snapshot, and never anything else: a
//! changed row (even one of the same size), an insertion or deletion, or a
//! key destroyed since the parent makes its window be stored again, and
//! every restore equals the database it was taken from. Windows whose
//! b-tree pages did not change are not even read (`rows_unread`); a change
//! only in a spilled value's overflow pages, an added column, a change
//! still in the WAL, or rows put where a window was emptied are all read.
//! Rows read with a query rather than from the pages (a UTF-16 database)
//! leave their unchanged stretches unread all the same.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::ops::backup::{backup, BackupOptions, BackupReport};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::vault::KeyKind;
use rusqlite::Connection;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::{assert_different_db, assert_same_db, build_calls_db, write_local_policy};

const CALLS: i64 = 20000;

/// A database of customers and calls (12 months, 40 customers), rows of
/// varying size so windows hold varying row counts.
fn build(path: &Path) {
    build_calls_db(path, 40, CALLS);
}

fn policy(d: &Path, db: &Path) -> Policy {
    Policy::load(&write_local_policy(d, "calls", db, util::CALLS_TABLES)).unwrap()
}

/// Small windows (32 KiB of rows), so the calls table spans many of them.
async fn backup_small(policy: &Policy) -> BackupReport {
    backup_small_telling(policy, Arc::new(NoProgress)).await
}

async fn backup_small_telling(
    policy: &Policy,
    progress: Arc<dyn custos::progress::Progress>,
) -> BackupReport {
    let opts = BackupOptions {
        window_budget: 32 << 10,
        ..Default::default()
    };
    backup(policy, &opts, progress).await.unwrap()
}

async fn restore_to(policy: &Policy, snapshot: &str, to: &Path) {
    let opts = RestoreOptions {
        target: None,
        snapshot: snapshot.to_string(),
        to: to.to_path_buf(),
        force: false,
        only: Default::default(),
    };
    let r = restore(policy, &opts, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(r.rows_shredded, 0);
}

async fn check_ok(policy: &Policy) {
    let c = custos::ops::check::check(policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "check --read-data found problems: {:#?}", c.findings);
    assert!(c.chunks_checked > 0, "check decrypted nothing");
}

fn setup() -> (tempfile::TempDir, PathBuf, Policy) {
    util::calls_setup(build, policy)
}

fn exec(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_database_reuses_every_window() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    assert_eq!(first.rows_reused, 0, "nothing to reuse in a first backup");
    let second = backup_small(&policy).await;
    assert_eq!(second.items, CALLS as u64 + 40);
    assert_eq!(second.rows_reused, second.items, "{second:?}");
    assert_eq!(
        second.rows_unread, second.items,
        "no page changed: {second:?}"
    );
    assert_eq!(second.new_chunks, 0, "nothing new to store: {second:?}");
    assert_eq!(second.chunks, first.chunks, "same blobs referenced");
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    check_ok(&policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_row_of_the_same_size_is_backed_up() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let before = tmp.path().join("before.db");
    fs::copy(&db, &before).unwrap();
    // One value of one row in the middle of the table, same encoded size.
    exec(
        &db,
        "UPDATE calls SET seconds = seconds + 1 WHERE id = 3001",
    );
    let second = backup_small(&policy).await;
    assert!(second.rows_reused > 0, "other windows reused: {second:?}");
    assert!(second.rows_unread > 0, "and not read: {second:?}");
    assert!(
        second.rows_reused < second.items,
        "the changed row's window must not be reused: {second:?}"
    );
    assert!(second.new_chunks > 0, "the changed group is stored");
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    // The comparison can fail: the old snapshot holds the old value.
    let old = tmp.path().join("restored-old.db");
    restore_to(&policy, &first.snapshot, &old).await;
    assert_same_db(&before, &old);
    assert_different_db(&out, &old);
    check_ok(&policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_after_an_insertion_and_a_deletion_line_up_again() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    // Early rows change size; rows after them are the same.
    exec(
        &db,
        "UPDATE calls SET note = note || 'longer note' WHERE id BETWEEN 100 AND 110;
         DELETE FROM calls WHERE id BETWEEN 200 AND 240;",
    );
    let second = backup_small(&policy).await;
    let rows = second.items;
    assert!(
        second.rows_reused * 10 > rows * 7,
        "most windows after the change line up with the parent's: {second:?}"
    );
    assert!(second.rows_reused < rows);
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    // Appended rows: the tail window changes, the rest is reused.
    exec(
        &db,
        "INSERT INTO calls (customer_ref, started_at, seconds, note)
         SELECT customer_ref, '2026-12-30T10:00:00Z', seconds, note FROM calls WHERE id < 50;",
    );
    let third = backup_small(&policy).await;
    assert!(third.rows_reused * 10 > third.items * 8, "{third:?}");
    let out3 = tmp.path().join("restored3.db");
    restore_to(&policy, &third.snapshot, &out3).await;
    assert_same_db(&db, &out3);
    check_ok(&policy).await;
}

/// Progress that keeps each phase's name and announced total.
#[derive(Default)]
struct Totals(std::sync::Mutex<Vec<(String, Option<u64>)>>);

impl custos::progress::Progress for Totals {
    fn phase(&self, name: &str, total: Option<u64>, _unit: &'static str) {
        self.0.lock().unwrap().push((name.to_string(), total));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_announces_each_tables_rows_as_they_are_now() {
    // The walk that finds the unchanged stretches counts the rows too, in
    // place of a `count(*)`: its total is the table's, not the parent's.
    let (_tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    exec(
        &db,
        "DELETE FROM calls WHERE id BETWEEN 200 AND 260;
         INSERT INTO calls (customer_ref, started_at, seconds, note)
         SELECT customer_ref, '2026-12-30T10:00:00Z', seconds, note FROM calls WHERE id < 20;",
    );
    let totals = Arc::new(Totals::default());
    let second = backup_small_telling(&policy, totals.clone()).await;
    assert!(second.rows_unread > 0, "the walk ran: {second:?}");
    let conn = Connection::open(&db).unwrap();
    let rows = |table: &str| -> u64 {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        n as u64
    };
    assert_eq!(rows("calls"), (CALLS - 61 + 19) as u64, "the change took");
    let phases = totals.0.lock().unwrap().clone();
    for table in ["customers", "calls"] {
        let name = format!("reading {table}");
        let announced: Vec<_> = phases.iter().filter(|(n, _)| *n == name).collect();
        assert_eq!(announced.len(), 1, "{phases:?}");
        assert_eq!(announced[0].1, Some(rows(table)), "{table}: {phases:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_under_a_destroyed_key_is_stored_again() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    // The March key is destroyed while March's calls are still in the
    // database: the parent's pages for them are unreadable now, so the next
    // backup must store those rows again under a new key.
    util::destroy_key(&policy, KeyKind::Period, "consumption:2026-03").await;
    let second = backup_small(&policy).await;
    assert!(second.rows_reused > 0, "{second:?}");
    assert!(second.rows_reused < second.items, "{second:?}");
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    check_ok(&policy).await;
}

/// Backs up, changes the database with `change` (which may keep a
/// connection open), backs up again, and checks that some rows were left
/// unread but the restore of the second snapshot equals the database and
/// differs from the first's.
async fn changed_and_restored(before: &str, change: impl FnOnce(&Path) -> Option<Connection>) {
    changed_and_restored_in(build, before, change).await;
}

/// [`changed_and_restored`] on the database `build` makes.
async fn changed_and_restored_in(
    build: fn(&Path),
    before: &str,
    change: impl FnOnce(&Path) -> Option<Connection>,
) {
    let (tmp, db, policy) = util::calls_setup(build, policy);
    exec(&db, before);
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let held = change(&db);
    let second = backup_small(&policy).await;
    assert!(second.rows_unread > 0, "{second:?}");
    assert!(second.rows_unread < second.items, "{second:?}");
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    let old = tmp.path().join("restored-old.db");
    restore_to(&policy, &first.snapshot, &old).await;
    assert_different_db(&out, &old);
    drop(held);
    check_ok(&policy).await;
}

/// The same database in UTF-16: the page reader decodes UTF-8 records
/// only, so its rows are read with a query.
fn build_utf16(path: &Path) {
    let c = Connection::open(path).unwrap();
    // The encoding is fixed when the first table is written.
    c.execute_batch("PRAGMA encoding = 'UTF-16le'; CREATE TABLE t0 (x); DROP TABLE t0;")
        .unwrap();
    drop(c);
    build(path);
    let c = Connection::open(path).unwrap();
    let enc: String = c.query_row("PRAGMA encoding", [], |r| r.get(0)).unwrap();
    assert_eq!(enc, "UTF-16le");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_with_a_query_still_leave_unchanged_stretches_unread() {
    // The stretch digests come from the b-tree's leaves however the rows
    // are read.
    changed_and_restored_in(build_utf16, "", |db| {
        exec(db, "UPDATE calls SET seconds = seconds + 1 WHERE id = 3001");
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_only_in_a_spilled_value_is_read() {
    // A 20 kB note spills into overflow pages; its last byte changes, so
    // the row's leaf page stays the same and only an overflow page differs.
    let long = "a".repeat(20_000);
    let before = format!("UPDATE calls SET note = '{long}' WHERE id = 9001");
    changed_and_restored(&before, |db| {
        exec(
            db,
            "UPDATE calls SET note = substr(note, 1, 19999) || 'b' WHERE id = 9001",
        );
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_is_read_although_no_page_changed() {
    changed_and_restored("", |db| {
        exec(db, "ALTER TABLE calls ADD COLUMN rated INTEGER DEFAULT 7");
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_still_in_the_wal_is_read() {
    changed_and_restored("PRAGMA journal_mode = WAL", |db| {
        // This connection stays open until the restores are compared, so
        // the change is never checkpointed into the database file.
        let c = Connection::open(db).unwrap();
        c.execute_batch(
            "PRAGMA wal_autocheckpoint = 0;
             UPDATE calls SET seconds = seconds + 1 WHERE id = 12001;",
        )
        .unwrap();
        assert!(db.with_extension("db-wal").metadata().unwrap().len() > 0);
        Some(c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_put_where_a_window_was_emptied_are_read() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    // Empty a stretch longer than a window: the next snapshot has no
    // window for those rowids at all.
    exec(&db, "DELETE FROM calls WHERE id BETWEEN 8000 AND 10000");
    let second = backup_small(&policy).await;
    assert!(second.rows_unread > 0, "{second:?}");
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
    // Rows come back into the gap, between two windows left unread.
    exec(
        &db,
        "INSERT INTO calls (id, customer_ref, started_at, seconds, note)
         VALUES (9000, 'C001', '2026-06-01T10:00:00Z', 5, 'back');",
    );
    let third = backup_small(&policy).await;
    assert!(third.rows_unread > 0, "{third:?}");
    let out3 = tmp.path().join("restored3.db");
    restore_to(&policy, &third.snapshot, &out3).await;
    assert_same_db(&db, &out3);
    assert_different_db(&out, &out3);
    check_ok(&policy).await;
}

/// A window of many subjects (more than 1024 groups, so a backup looks
/// their keys up on several threads and creates the missing ones after):
/// a second backup, after new customers joined, finds every key it made
/// before and makes one per new customer only; and each group is sealed
/// under its own subject's key, so destroying one old and one new
/// customer's key takes exactly their rows out of the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_many_subjects_finds_their_keys_and_makes_only_the_new_ones() {
    let tmp = common::tempdir();
    let db = tmp.path().join("calls.db");
    build_calls_db(&db, 3000, 6000);
    let policy = policy(tmp.path(), &db);
    custos::ops::init::init(&policy).await.unwrap();
    // One window per table, two threads.
    let opts = BackupOptions {
        workers: 2,
        ..Default::default()
    };
    let subject_keys = || async {
        let v = custos::ops::open_vault(&policy).await.unwrap();
        let mut ids: Vec<_> = v
            .entries()
            .into_iter()
            .filter(|e| e.kind == KeyKind::Subject)
            .map(|e| e.key_id)
            .collect();
        ids.sort();
        ids
    };
    backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let before = subject_keys().await;
    assert_eq!(before.len(), 3000, "one key per customer");

    // 500 new customers with calls, and one old row changed, so that both
    // tables' windows are stored again (not reused).
    let c = Connection::open(&db).unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..500 {
        tx.execute(
            "INSERT INTO customers (ref, name) VALUES (?1, 'new')",
            [format!("N{i:03}")],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO calls (customer_ref, started_at, seconds, note) \
             VALUES (?1, '2026-06-15T10:00:00Z', ?2, 'n')",
            rusqlite::params![format!("N{i:03}"), i],
        )
        .unwrap();
    }
    tx.execute(
        "UPDATE customers SET name = 'changed' WHERE ref = 'C001'",
        [],
    )
    .unwrap();
    tx.execute("UPDATE calls SET seconds = 1 WHERE id = 1", [])
        .unwrap();
    tx.commit().unwrap();
    drop(c);
    let second = backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(
        second.rows_reused, 0,
        "every window stored again: {second:?}"
    );
    let after = subject_keys().await;
    assert_eq!(after.len(), 3500, "one new key per new customer");
    assert!(
        before.iter().all(|id| after.binary_search(id).is_ok()),
        "every old customer's key was found, not made again"
    );
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);

    // An old customer found by the look-ups and a new one created after.
    let gone = ["C1234", "N321"];
    let v = custos::ops::open_vault(&policy).await.unwrap();
    let pseudos: Vec<String> = gone
        .iter()
        .map(|s| custos::crypto::subject_pseudonym(v.pseudonym_key(), s))
        .collect();
    drop(v);
    for p in &pseudos {
        util::destroy_key(&policy, KeyKind::Subject, p).await;
    }
    let shredded = tmp.path().join("shredded.db");
    let opts = RestoreOptions {
        target: None,
        snapshot: second.snapshot.clone(),
        to: shredded.clone(),
        force: false,
        only: Default::default(),
    };
    let r = restore(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let rows = |path: &Path, sql: &str| -> Vec<String> {
        let c = Connection::open(path).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let out = st
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out
    };
    let list = "SELECT ref || '|' || coalesce(name, '') FROM customers ORDER BY id";
    let calls = "SELECT id || '|' || customer_ref || '|' || started_at || '|' || seconds FROM calls ORDER BY id";
    let is_gone = |row: &String| gone.iter().any(|g| row.split('|').any(|f| f == *g));
    for sql in [list, calls] {
        let all = rows(&db, sql);
        let want: Vec<String> = all.iter().filter(|r| !is_gone(r)).cloned().collect();
        assert!(
            want.len() < all.len(),
            "the two customers have rows in {sql}"
        );
        let got = rows(&shredded, sql);
        let have: std::collections::HashSet<&String> = got.iter().collect();
        let lost: Vec<_> = want.iter().filter(|r| !have.contains(r)).take(3).collect();
        let kept: Vec<_> = got.iter().filter(|r| is_gone(r)).take(3).collect();
        assert!(
            lost.is_empty() && kept.is_empty() && got.len() == want.len(),
            "{sql}: rows of other customers lost {lost:?}, of the two kept {kept:?}, {} rows for {}",
            got.len(),
            want.len()
        );
    }
    assert!(r.rows_shredded > 2, "{r:?}");
}

/// A window of many groups (20,000 customers with a call each: ten batches
/// of groups per table, more than the grouping threads may run ahead of the
/// paging) is paged in the same order on any number of threads. Backed up
/// on one thread, then again on three once the first snapshot is gone (so
/// nothing is reused and every window is read and stored again), the
/// second backup stores no new blob: every chunk and every tree page is
/// the first one's. Its restore equals the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_many_groups_is_paged_alike_on_one_thread_or_three() {
    let tmp = common::tempdir();
    let db = tmp.path().join("calls.db");
    build_calls_db(&db, 20000, 20000);
    let policy = policy(tmp.path(), &db);
    custos::ops::init::init(&policy).await.unwrap();
    let on = |workers| BackupOptions {
        workers,
        ..Default::default()
    };
    let first = backup(&policy, &on(1), Arc::new(NoProgress)).await.unwrap();
    assert!(first.new_chunks > 20000, "{first:?}");
    fs::remove_file(tmp.path().join("target/snapshots").join(&first.snapshot)).unwrap();
    let second = backup(&policy, &on(3), Arc::new(NoProgress)).await.unwrap();
    assert_eq!(second.rows_reused, 0, "nothing to reuse: {second:?}");
    assert_eq!(second.items, first.items);
    assert_eq!(
        second.new_chunks, 0,
        "the same chunks and pages as on one thread: {second:?}"
    );
    let out = tmp.path().join("restored.db");
    restore_to(&policy, &second.snapshot, &out).await;
    assert_same_db(&db, &out);
}
