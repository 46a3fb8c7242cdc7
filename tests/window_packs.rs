//! Each read window of a snapshot lists the packs holding its tree pages and
//! every chunk they name (FORMAT 3.5), so a restore reads those packs'
//! index objects, not the whole index: memory follows the window, not the
//! repository. These tests check the lists against the whole index after a
//! first backup, an incremental with windows read again, reused and left
//! unread, and a backup of an unchanged database; restore each snapshot
//! through its lists and compare it with its source; and show that a
//! window listing no packs, or a list missing a pack, is read through the
//! whole index instead, with the same result.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::crypto::Id;
use custos::ops::check::CheckReport;
use custos::ops::restore::{restore, RestoreOptions, RestoreReport};
use custos::ops::OpenRepo;
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::cache::PackCache;
use custos::repo::index::Index;
use custos::repo::snapshot::Snapshot;
use custos::repo::tree::Page;
use rusqlite::Connection;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::{assert_same_db, backup_small, build_calls_db, write_local_policy};

fn build(path: &Path) {
    build_calls_db(path, 50, 20000);
}

fn policy(d: &Path, db: &Path) -> Policy {
    Policy::load(&write_local_policy(d, "packs", db, util::CALLS_TABLES)).unwrap()
}

async fn restore_to(policy: &Policy, snapshot: &str, to: &Path) -> RestoreReport {
    util::try_restore(policy, snapshot, to).await.unwrap()
}

/// Checks every window of `snapshot` against the whole index: it lists its
/// packs, and each of its tree pages and each chunk they name is in one of
/// them. Returns how many windows and how many distinct packs were listed;
/// adds the chunks its groups name to `chunks`.
async fn assert_lists_complete(
    policy: &Policy,
    snapshot: &str,
    chunks: &mut BTreeSet<Id>,
) -> (usize, usize) {
    let repo = OpenRepo::open(policy, None).await.unwrap();
    let index = Index::load(&repo.target, &repo.meta).await.unwrap();
    let snap = Snapshot::find(&repo.target, &repo.meta, snapshot)
        .await
        .unwrap();
    let target = Arc::new(repo.target);
    let mut cache = PackCache::new(target, 4);
    let pack_id = |id: &Id| index.packs[index.chunks.pack(id).expect("indexed") as usize].0;
    let (mut windows, mut all) = (0, BTreeSet::new());
    for t in snap.record_tables() {
        assert!(!t.windows.is_empty(), "table {} has window marks", t.name);
        let mut at = 0usize;
        for (wi, w) in t.windows.iter().enumerate() {
            let packs = w
                .packs
                .as_ref()
                .unwrap_or_else(|| panic!("table {} window {wi} lists no packs", t.name));
            let mut sorted = packs.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(&sorted, packs, "a window's list is sorted, each pack once");
            for l in &w.lists {
                assert!(packs.contains(&l.pack), "a page list's pack is listed");
            }
            let pages = &t.pages[at..at + w.pages as usize];
            at += w.pages as usize;
            for pid in pages {
                assert!(
                    packs.contains(&pack_id(pid)),
                    "table {} window {wi}: the pack of tree page {pid} is not listed",
                    t.name
                );
                let Page::Groups { groups, .. } = Page::load(&mut cache, &index, &repo.meta, pid)
                    .await
                    .unwrap()
                else {
                    panic!("not a group page")
                };
                for g in &groups {
                    for c in &g.chunks {
                        chunks.insert(*c);
                        assert!(
                            packs.contains(&pack_id(c)),
                            "table {} window {wi}: the pack of chunk {c} is not listed",
                            t.name
                        );
                    }
                }
            }
            windows += 1;
            all.extend(packs.iter().copied());
        }
        assert_eq!(at, t.pages.len(), "the windows' pages add up");
    }
    (windows, all.len())
}

/// Rewrites a snapshot object with `edit` applied to its record tables.
async fn rewrite(policy: &Policy, snapshot: &str, edit: impl Fn(&mut Snapshot)) {
    let repo = OpenRepo::open(policy, None).await.unwrap();
    let mut snap = Snapshot::find(&repo.target, &repo.meta, snapshot)
        .await
        .unwrap();
    edit(&mut snap);
    snap.store(&repo.target, &repo.meta).await.unwrap();
}

/// `check --read-data`, which must pass, and its findings about read
/// windows' pack lists.
async fn pack_list_findings(policy: &Policy) -> (CheckReport, Vec<String>) {
    let c = custos::ops::check::check(policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "check --read-data found problems: {:#?}", c.findings);
    let found = c
        .findings
        .iter()
        .filter(|f| f.message.contains("do not list every pack"))
        .map(|f| f.message.clone())
        .collect();
    (c, found)
}

fn tables_mut(snap: &mut Snapshot) -> &mut Vec<custos::repo::snapshot::TableEntry> {
    &mut snap.sqlite.as_mut().expect("a SQLite snapshot").tables
}

fn setup() -> (tempfile::TempDir, PathBuf, Policy) {
    util::calls_setup(build, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_lists_its_packs_and_a_restore_reads_only_those() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let first_db = tmp.path().join("first.db");
    fs::copy(&db, &first_db).unwrap();
    let mut chunks = BTreeSet::new();
    let (windows, packs) = assert_lists_complete(&policy, &first.snapshot, &mut chunks).await;
    assert!(windows > 20, "many windows: {windows}");
    assert!(packs > 10, "many packs: {packs}");

    // Updates spread over customers and calls, new calls, deletions: some
    // windows are read again (their unchanged groups' chunks are stored
    // already, in the first backup's packs), others are left unread.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE customers SET name = name || ' (moved)' WHERE rowid % 7 = 0;
             UPDATE calls SET seconds = seconds + 1 WHERE id % 1500 = 0;
             DELETE FROM calls WHERE id % 2900 = 0;
             INSERT INTO calls (customer_ref, started_at, seconds, note)
               SELECT customer_ref, started_at, seconds + 3, note FROM calls WHERE id % 400 = 0;",
        )
        .unwrap();
    let second = backup_small(&policy).await;
    assert!(first.whole_index, "a first backup has no lists to go by");
    // Stored against the index objects its parent's windows list, not the
    // whole index: the unchanged groups of the windows read again are
    // found there, and only the changed ones are stored.
    assert!(!second.whole_index, "stored against its parent's lists");
    assert!(
        second.new_chunks * 10 < second.chunks,
        "the unchanged groups are not stored again: {second:?}"
    );
    assert!(second.rows_unread > 0, "some windows unread: {second:?}");
    assert!(
        second.rows_reused < second.items,
        "some read again: {second:?}"
    );
    assert!(second.new_chunks > 0);
    assert_lists_complete(&policy, &second.snapshot, &mut chunks).await;
    let second_db = tmp.path().join("second.db");
    fs::copy(&db, &second_db).unwrap();

    // Nothing changed: every window is taken unread from the parent.
    let third = backup_small(&policy).await;
    assert_eq!(third.rows_unread, third.items, "{third:?}");
    assert!(!third.whole_index, "{third:?}");
    assert_lists_complete(&policy, &third.snapshot, &mut chunks).await;

    for (snap, source) in [
        (&first.snapshot, &first_db),
        (&second.snapshot, &second_db),
        (&third.snapshot, &second_db),
    ] {
        let out = tmp.path().join(format!("restored-{snap}.db"));
        let r = restore_to(&policy, snap, &out).await;
        assert!(!r.whole_index, "{snap}: read through its windows' packs");
        assert!(r.index_objects_read > 0, "{snap}: {r:?}");
        assert_same_db(source, &out);
    }
    // The check also reads each window through its packs, and opens each
    // chunk the three snapshots name once.
    let (c, found) = pack_list_findings(&policy).await;
    assert_eq!(found, Vec::<String>::new());
    assert!(!c.whole_index, "{c:?}");
    assert!(c.index_objects_read > 0, "{c:?}");
    assert_eq!(c.chunks_checked, chunks.len() as u64, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_without_its_list_or_with_a_pack_missing_is_read_through_the_whole_index() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;

    // As written before the lists existed: no window lists its packs.
    rewrite(&policy, &first.snapshot, |s| {
        for t in tables_mut(s) {
            for w in &mut t.windows {
                w.packs = None;
            }
        }
    })
    .await;
    let out = tmp.path().join("without-lists.db");
    let r = restore_to(&policy, &first.snapshot, &out).await;
    assert!(r.whole_index, "{r:?}");
    assert_same_db(&db, &out);
    let (c, found) = pack_list_findings(&policy).await;
    assert!(c.whole_index, "{c:?}");
    assert!(
        found.is_empty(),
        "no list, nothing to warn about: {found:?}"
    );

    // The lists miss a pack (damaged or hostile): the blobs of the windows
    // that need it are found through the whole index, and the restore is
    // the same. (The pack is taken out of every list: a window's index may
    // be the one built for an earlier window whose list held all of its.)
    let second = backup_small(&policy).await;
    assert!(second.whole_index, "its parent lists no packs: {second:?}");
    rewrite(&policy, &second.snapshot, |s| {
        // Packs other tables' windows list: a metadata pack may hold the
        // pages of several tables, and which one sorts first depends on
        // the run's random keys.
        let others: Vec<Id> = tables_mut(s)
            .iter()
            .filter(|t| t.name != "calls")
            .flat_map(|t| t.windows.iter())
            .flat_map(|w| w.packs.iter().flatten().copied())
            .collect();
        let calls = tables_mut(s)
            .iter_mut()
            .find(|t| t.name == "calls")
            .unwrap();
        let mid = calls.windows.len() / 2;
        let w = &calls.windows[mid];
        let list = w.packs.as_ref().expect("listed");
        assert!(list.len() > 2, "the window spans several packs");
        // A pack of its pages or chunks, not of its page list (read by
        // place, not through the index), and of no other table's.
        let own: Vec<Id> = w.lists.iter().map(|l| l.pack).collect();
        let gone = *list
            .iter()
            .find(|p| !own.contains(p) && !others.contains(p))
            .expect("a pack of the calls alone");
        for t in tables_mut(s) {
            for w in &mut t.windows {
                w.packs.as_mut().expect("listed").retain(|p| *p != gone);
            }
        }
    })
    .await;
    let (_, found) = pack_list_findings(&policy).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("table calls"), "{found:?}");
    // A second snapshot naming the same windows (the check walks a window
    // once and remembers what it found) is warned about as well.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let mut twin = Snapshot::find(&repo.target, &repo.meta, &second.snapshot)
        .await
        .unwrap();
    twin.id = Snapshot::new_id();
    twin.store(&repo.target, &repo.meta).await.unwrap();
    let (c, found) = pack_list_findings(&policy).await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], found[1]);
    for id in [&second.snapshot, &twin.id] {
        let object = format!("primary:snapshots/{id}");
        assert!(
            c.findings.iter().any(|f| f.object == object),
            "{object}: {:#?}",
            c.findings
        );
    }
    repo.target
        .delete(&custos::repo::snapshot::snapshot_path(&twin.id))
        .await
        .unwrap();
    let out = tmp.path().join("one-pack-missing.db");
    let r = restore_to(&policy, &second.snapshot, &out).await;
    assert!(r.whole_index, "{r:?}");
    assert_same_db(&db, &out);

    // A list naming a pack that does not exist is no worse than a short one.
    rewrite(&policy, &second.snapshot, |s| {
        for t in tables_mut(s) {
            for w in &mut t.windows {
                w.packs = Some(vec![Id([7; 32])]);
            }
        }
    })
    .await;
    let out = tmp.path().join("unknown-pack.db");
    let r = restore_to(&policy, &second.snapshot, &out).await;
    assert!(r.whole_index, "{r:?}");
    assert_same_db(&db, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_page_in_no_index_is_named_with_its_snapshot() {
    let (tmp, _db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let snap = Snapshot::find(&repo.target, &repo.meta, &first.snapshot)
        .await
        .unwrap();
    let page = snap.record_tables()[0].pages[0];
    let index = Index::load(&repo.target, &repo.meta).await.unwrap();
    let pack = index.packs[index.chunks.pack(&page).expect("indexed") as usize].0;
    repo.target
        .delete(&custos::repo::index::index_path(&pack))
        .await
        .unwrap();

    let opts = RestoreOptions {
        target: None,
        snapshot: first.snapshot.clone(),
        to: tmp.path().join("never.db"),
        force: false,
        only: Default::default(),
    };
    match restore(&policy, &opts, Arc::new(NoProgress)).await {
        Err(custos::ops::OpsError::Integrity(m)) => {
            assert!(m.contains(&first.snapshot), "names the snapshot: {m}");
            assert!(m.contains(&page.to_string()), "names the page: {m}");
        }
        other => panic!("want an integrity error, got {other:?}"),
    }
    assert!(!tmp.path().join("never.db").exists());
}
