//! A read window read again is stored as an overlay on the parent's window
//! over the same rows (FORMAT 3.4, "Overlay pages"): only its groups that
//! changed, were added or went. Over many backups of spread changes
//! (updates, deletions of whole groups, insertions), every snapshot
//! restores to exactly the database it was taken from, overlays chain up to
//! the writer's limit and then give way to pages of the window's own, and
//! `check --read-data` finds nothing. A snapshot whose overlays do not fit
//! its windows is refused.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::ops::backup::BackupReport;
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::snapshot::Snapshot;
use rusqlite::Connection;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use util::{assert_same_db, backup_small, build_calls_db, try_restore, write_local_policy};

fn build(path: &Path) {
    build_calls_db(path, 40, 20000);
}

fn policy(d: &Path, db: &Path) -> Policy {
    Policy::load(&write_local_policy(d, "calls", db, util::CALLS_TABLES)).unwrap()
}

/// The calls database, its policy, a repository and a first backup.
async fn started() -> (tempfile::TempDir, std::path::PathBuf, Policy, BackupReport) {
    let (tmp, db, policy) = util::calls_setup(build, policy);
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    (tmp, db, policy, first)
}

fn exec(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

async fn check_ok(policy: &Policy) -> custos::ops::check::CheckReport {
    let c = custos::ops::check::check(policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "check --read-data found problems: {:#?}", c.findings);
    c
}

/// How many entries of the snapshot's pages, standing or not, name the
/// subject key `key`.
async fn entries_naming(policy: &Policy, id: &str, key: custos::vault::KeyId) -> usize {
    naming(policy, id, key).await.1
}

/// How many groups of the snapshot, as they stand, name the subject key
/// `key`; and how many entries of its pages, standing or not, do.
async fn naming(policy: &Policy, id: &str, key: custos::vault::KeyId) -> (usize, usize) {
    let repo = custos::ops::OpenRepo::open(policy, None).await.unwrap();
    let index = custos::repo::index::Index::load(&repo.target, &repo.meta)
        .await
        .unwrap();
    let mut cache = custos::repo::cache::PackCache::new(Arc::new(repo.target.clone()), 4);
    let snapshot = Snapshot::load(&repo.target, &repo.meta, id).await.unwrap();
    let (mut standing_named, mut named) = (0, 0);
    for t in snapshot.record_tables() {
        for w in t.page_windows() {
            let (standing, superseded) = custos::repo::tree::load_window(
                &mut cache,
                &index,
                &repo.meta,
                &t.pages[w.range],
                &w.overlays,
            )
            .await
            .unwrap();
            let of_key = |g: &&custos::repo::tree::GroupEntry| g.s == Some(key);
            standing_named += standing.iter().filter(of_key).count();
            named += standing.iter().chain(&superseded).filter(of_key).count();
        }
    }
    (standing_named, named)
}

async fn chains_of(policy: &Policy, id: &str) -> (Vec<usize>, usize) {
    let repo = custos::ops::OpenRepo::open(policy, None).await.unwrap();
    chains(&Snapshot::load(&repo.target, &repo.meta, id).await.unwrap())
}

/// The overlays on each window of the snapshot's customers (changed by
/// every round), and the longest chain on any window.
fn chains(s: &Snapshot) -> (Vec<usize>, usize) {
    let tables = s.record_tables();
    let customers = tables.iter().find(|t| t.name == "customers").unwrap();
    let longest = tables
        .iter()
        .flat_map(|t| t.windows.iter().map(|w| w.overlays.len()))
        .max()
        .unwrap_or(0);
    (
        customers.windows.iter().map(|w| w.overlays.len()).collect(),
        longest,
    )
}

/// Round `r`'s change: a few calls of a few customers updated (spread
/// over the months), one customer renamed, one customer's calls of one
/// month deleted (a whole group gone), and new calls at the end.
fn change(db: &Path, r: i64) {
    let c = Connection::open(db).unwrap();
    c.execute(
        "UPDATE calls SET seconds = seconds + 1, note = note || 'x'
          WHERE id % 997 = ?1",
        [r * 13 % 997],
    )
    .unwrap();
    c.execute(
        "UPDATE customers SET name = name || ' (moved)' WHERE id = ?1",
        [1 + r * 7 % 40],
    )
    .unwrap();
    c.execute(
        "DELETE FROM calls WHERE customer_ref = ?1 AND started_at LIKE ?2",
        rusqlite::params![
            format!("C{:03}", r * 11 % 40),
            format!("2026-{:02}%", 1 + r % 12)
        ],
    )
    .unwrap();
    for i in 0..30 {
        c.execute(
            "INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES (?1, '2026-12-30T10:00:00Z', ?2, 'new')",
            rusqlite::params![format!("C{:03}", (r * 31 + i) % 40), i],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_changes_are_stored_as_overlays_and_every_snapshot_restores_exactly() {
    let (tmp, db, policy, first) = started().await;
    let mut taken: Vec<(BackupReport, std::path::PathBuf)> = Vec::new();
    assert_eq!(first.windows_overlaid, 0, "a first backup has no parent");
    let copy = tmp.path().join("v0.db");
    fs::copy(&db, &copy).unwrap();
    taken.push((first, copy));
    let mut chains = Vec::new();
    for r in 1..=11 {
        change(&db, r);
        let report = backup_small(&policy).await;
        assert!(report.rows_reused < report.items, "round {r}: {report:?}");
        let copy = tmp.path().join(format!("v{r}.db"));
        fs::copy(&db, &copy).unwrap();
        let (customers, longest) = chains_of(&policy, &report.snapshot).await;
        chains.push((report.windows_overlaid, customers, longest));
        taken.push((report, copy));
    }
    // Changed windows went into overlays, chained up to the writer's
    // limit of 8, and the customers' window (one, changed every round) got
    // pages of its own again at the ninth.
    assert!(chains.iter().all(|(n, ..)| *n > 0), "{chains:?}");
    assert!(chains.iter().all(|(.., l)| *l <= 8), "{chains:?}");
    let customers: Vec<Vec<usize>> = chains.iter().map(|(_, c, _)| c.clone()).collect();
    let expected: Vec<Vec<usize>> = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]
        .iter()
        .map(|&n| vec![n])
        .collect();
    assert_eq!(customers, expected);
    // Every snapshot is the database it was taken from, row by row.
    for (i, (report, copy)) in taken.iter().enumerate() {
        let out = tmp.path().join(format!("restored-{i}.db"));
        let r = try_restore(&policy, &report.snapshot, &out).await.unwrap();
        assert_eq!(r.rows_shredded, 0);
        assert_same_db(copy, &out);
    }
    check_ok(&policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deleted_and_put_back_restores_as_it_was_each_time() {
    let (tmp, db, policy, _) = started().await;
    let kept = tmp.path().join("kept.db");
    fs::copy(&db, &kept).unwrap();
    exec(
        &db,
        "CREATE TABLE gone AS SELECT * FROM calls WHERE customer_ref = 'C005' AND started_at LIKE '2026-03%';
         DELETE FROM calls WHERE customer_ref = 'C005' AND started_at LIKE '2026-03%';",
    );
    let without = backup_small(&policy).await;
    assert!(without.windows_overlaid > 0, "{without:?}");
    exec(
        &db,
        "INSERT INTO calls SELECT * FROM gone; DROP TABLE gone;",
    );
    let back = backup_small(&policy).await;
    assert!(back.windows_overlaid > 0, "{back:?}");
    let out = tmp.path().join("back.db");
    try_restore(&policy, &back.snapshot, &out).await.unwrap();
    assert_same_db(&kept, &out);
    // Many more groups than the last window had: as large an overlay as
    // the window, so the window gets pages of its own (its unchanged
    // groups read back from the parent's pages).
    let c = Connection::open(&db).unwrap();
    for i in 0..300 {
        c.execute(
            "INSERT INTO calls (customer_ref, started_at, seconds) VALUES (?1, '2026-12-31T09:00:00Z', 1)",
            [format!("N{i:03}")],
        )
        .unwrap();
    }
    drop(c);
    let many = backup_small(&policy).await;
    let out = tmp.path().join("many.db");
    try_restore(&policy, &many.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
    let out = tmp.path().join("without.db");
    try_restore(&policy, &without.snapshot, &out).await.unwrap();
    let c = Connection::open(&out).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM calls WHERE customer_ref = 'C005' AND started_at LIKE '2026-03%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "the deleted group stays deleted in its snapshot");
    check_ok(&policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overlay_keeps_naming_a_key_destroyed_since() {
    let (tmp, db, policy, first) = started().await;
    // Customer C007 leaves: its rows go, and an overlay says so on pages
    // that still name its key.
    exec(
        &db,
        "DELETE FROM calls WHERE customer_ref = 'C007'; DELETE FROM customers WHERE ref = 'C007';",
    );
    let gone = backup_small(&policy).await;
    assert!(gone.windows_overlaid > 0, "{gone:?}");
    let (pseudo, key) = {
        let v = custos::ops::open_vault(&policy).await.unwrap();
        let pseudo = custos::crypto::subject_pseudonym(v.pseudonym_key(), "C007");
        let key = v
            .lookup(custos::vault::KeyKind::Subject, &pseudo)
            .unwrap()
            .0;
        (pseudo, key)
    };
    util::destroy_key(&policy, custos::vault::KeyKind::Subject, &pseudo).await;
    // Then every window changes a little.
    exec(
        &db,
        "UPDATE customers SET name = name || '.'; UPDATE calls SET seconds = seconds + 1 WHERE id % 50 = 0;",
    );
    let after = backup_small(&policy).await;
    assert!(
        entries_naming(&policy, &gone.snapshot, key).await > 0,
        "the deletions name the key"
    );
    assert_eq!(
        entries_naming(&policy, &after.snapshot, key).await,
        0,
        "the latest snapshot names the destroyed key"
    );
    let out = tmp.path().join("after.db");
    let r = try_restore(&policy, &after.snapshot, &out).await.unwrap();
    assert_eq!(r.rows_shredded, 0);
    assert_same_db(&db, &out);
    // The check counts the groups shredded as they stand: the first
    // snapshot's groups of the customer; not the second's, which its
    // overlay deleted (their entries are on the base and the overlay).
    let mut standing = 0;
    for s in [&first.snapshot, &gone.snapshot, &after.snapshot] {
        standing += naming(&policy, s, key).await.0;
    }
    assert_eq!(naming(&policy, &gone.snapshot, key).await.0, 0);
    assert!(standing > 0);
    assert_eq!(check_ok(&policy).await.groups_shredded, standing as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_end_moved_is_overlaid_on_the_one_that_started_there() {
    let (tmp, db, policy, first) = started().await;
    // The first calls grow by about 12 KB: the first window (32 KiB of
    // rows) ends earlier, the next ones start elsewhere.
    exec(
        &db,
        "UPDATE calls SET note = note || printf('%.60c', 'g') WHERE id <= 200;",
    );
    let second = backup_small(&policy).await;
    let ranges = |s: &Snapshot| -> Vec<(Option<i64>, Option<i64>, usize)> {
        let t = s
            .record_tables()
            .iter()
            .find(|t| t.name == "calls")
            .unwrap();
        t.windows
            .iter()
            .map(|w| (w.from, w.to, w.overlays.len()))
            .collect()
    };
    let repo = custos::ops::OpenRepo::open(&policy, None).await.unwrap();
    let before = ranges(
        &Snapshot::load(&repo.target, &repo.meta, &first.snapshot)
            .await
            .unwrap(),
    );
    let after = ranges(
        &Snapshot::load(&repo.target, &repo.meta, &second.snapshot)
            .await
            .unwrap(),
    );
    let moved: Vec<_> = after
        .iter()
        .filter(|(from, to, _)| !before.iter().any(|(f, t, _)| f == from && t == to))
        .collect();
    assert!(!moved.is_empty(), "no window moved: {before:?} {after:?}");
    assert!(
        moved
            .iter()
            .any(|&&(from, _, n)| n > 0 && before.iter().any(|(f, ..)| *f == from)),
        "a moved window starting where a parent's did was overlaid: {before:?} {after:?}"
    );
    let out = tmp.path().join("moved.db");
    try_restore(&policy, &second.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
    check_ok(&policy).await;
}
