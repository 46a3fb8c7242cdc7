//! A snapshot object names each read window's page lists (FORMAT 3.4, 3.5)
//! instead of listing every tree page, so a backup that reuses a window
//! writes nothing for it, one that reads a window again writes the parts
//! of its list that changed, and a snapshot of an unchanged store is
//! small.
//! These tests check that a loaded snapshot has every page back in order
//! (a restore equals its source), that an unchanged backup stores no pack,
//! that prune keeps the lists a kept snapshot borrowed from a forgotten
//! one, that snapshots without lists still read, that a damaged or
//! hostile list is refused with the snapshot and the list named, and
//! changes nothing, and that so is a page whose group does not match the
//! keys it names.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use custos::ops::backup::{backup, BackupOptions};
use custos::ops::prune::{forget_and_prune, PruneOptions};
use custos::ops::OpenRepo;
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::snapshot::{PageList, Snapshot};
use custos::repo::tree::{store_pages, Page};
use rusqlite::Connection;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::{assert_same_db, backup_small, build_calls_db, try_restore, write_local_policy};

fn setup() -> (tempfile::TempDir, PathBuf, Policy) {
    util::calls_setup(
        |p| build_calls_db(p, 50, 20000),
        |d, db| Policy::load(&write_local_policy(d, "lists", db, util::CALLS_TABLES)).unwrap(),
    )
}

/// The snapshot object as stored, decrypted: its JSON.
async fn stored_json(policy: &Policy, id: &str) -> serde_json::Value {
    let repo = OpenRepo::open(policy, None).await.unwrap();
    let sealed = repo.target.get(&format!("snapshots/{id}")).await.unwrap();
    let z = repo.meta.open("snapshot", id, &sealed).unwrap();
    serde_json::from_slice(&zstd::decode_all(&z[..]).unwrap()).unwrap()
}

/// Writes `json` as snapshot `id`'s object, sealed as a backup would.
async fn store_json(policy: &Policy, id: &str, json: &serde_json::Value) {
    let repo = OpenRepo::open(policy, None).await.unwrap();
    let z = zstd::bulk::compress(&serde_json::to_vec(json).unwrap(), 3).unwrap();
    let sealed = repo.meta.seal("snapshot", id, &z);
    repo.target
        .put(&format!("snapshots/{id}"), sealed.into())
        .await
        .unwrap();
}

async fn load(policy: &Policy, id: &str) -> Result<Snapshot, custos::repo::RepoError> {
    let repo = OpenRepo::open(policy, None).await.unwrap();
    Snapshot::find(&repo.target, &repo.meta, id).await
}

fn lists(s: &Snapshot) -> Vec<PageList> {
    s.page_lists().copied().collect()
}

/// Every object under the repository folder with its bytes.
fn repo_files(tmp: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    util::all_files(&tmp.join("target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_name_their_page_lists_and_an_unchanged_backup_stores_no_pack() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;

    // The object lists no page: every window of pages names its list.
    let json = stored_json(&policy, &first.snapshot).await;
    let tables = json["sqlite"]["tables"].as_array().unwrap();
    assert!(tables.len() >= 2, "{json}");
    for t in tables {
        assert_eq!(t["pages"], serde_json::json!([]), "table {}", t["name"]);
        for w in t["windows"].as_array().unwrap() {
            assert!(w["pages"].as_u64().unwrap() > 0);
            let lists = w["lists"].as_array().expect("a window names its lists");
            assert!(!lists.is_empty(), "{w}");
        }
    }
    // Loaded, every table's pages are back, the windows' in order, and
    // each list's pack is in its window's pack list.
    let snap = load(&policy, &first.snapshot).await.unwrap();
    let mut pages = 0;
    for t in snap.record_tables() {
        let n: u64 = t.windows.iter().map(|w| w.pages).sum();
        assert_eq!(t.pages.len() as u64, n, "table {}", t.name);
        for w in &t.windows {
            assert!(!w.lists.is_empty());
            for l in &w.lists {
                assert!(w.packs.as_ref().unwrap().contains(&l.pack));
            }
        }
        pages += t.pages.len();
    }
    let calls = snap.record_tables().iter().find(|t| t.name == "calls");
    assert!(calls.unwrap().windows.len() > 3, "several windows of calls");
    let first_lists = lists(&snap);
    let out = tmp.path().join("first.db");
    try_restore(&policy, &first.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);

    // Nothing changed: the next backup reuses every window and its list,
    // and writes its snapshot object alone, which lists no page.
    let data_before: Vec<_> = repo_files(tmp.path())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(tmp.path().join("target/snapshots")))
        .map(|(p, _)| p)
        .collect();
    let second = backup_small(&policy).await;
    assert_eq!(second.new_chunks, 0, "{second:?}");
    let data_after: Vec<_> = repo_files(tmp.path())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(tmp.path().join("target/snapshots")))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(data_before, data_after, "no pack or index object written");
    let object = fs::metadata(
        tmp.path()
            .join(format!("target/snapshots/{}", second.snapshot)),
    )
    .unwrap()
    .len();
    assert_eq!(second.new_bytes_stored, object, "{second:?}");
    let json = stored_json(&policy, &second.snapshot).await;
    for t in json["sqlite"]["tables"].as_array().unwrap() {
        assert_eq!(t["pages"], serde_json::json!([]), "table {}", t["name"]);
    }
    assert!(pages > 20, "{pages} pages");
    let again = load(&policy, &second.snapshot).await.unwrap();
    assert_eq!(lists(&again), first_lists, "the parent's lists, reused");
    for (a, b) in snap.record_tables().iter().zip(again.record_tables()) {
        assert_eq!(a.pages, b.pages, "table {}", a.name);
    }
    let out = tmp.path().join("second.db");
    try_restore(&policy, &second.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_lists_a_kept_snapshot_shares_with_a_forgotten_one() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE customers SET name = name || ' (moved)' WHERE rowid % 9 = 0;
             INSERT INTO calls (customer_ref, started_at, seconds, note)
               SELECT customer_ref, started_at, seconds + 3, note FROM calls WHERE id % 400 = 0;",
        )
        .unwrap();
    let second = backup_small(&policy).await;
    let (a, b) = (
        lists(&load(&policy, &first.snapshot).await.unwrap()),
        lists(&load(&policy, &second.snapshot).await.unwrap()),
    );
    let shared = b.iter().filter(|l| a.contains(l)).count();
    let packs: BTreeSet<_> = b.iter().map(|l| l.pack).collect();
    assert!(
        packs.len() > 1,
        "the second's lists lie in two packs at least"
    );
    assert!(shared > 0, "some windows reused with their lists");
    assert!(shared < b.len(), "some windows written again");

    // Forget the first snapshot (its object gone), then prune: the packs
    // of the lists the second borrowed stay.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    repo.target
        .delete(&format!("snapshots/{}", first.snapshot))
        .await
        .unwrap();
    let r = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap();
    // Each list pack of the second holds lists alone, so only the lists
    // keep it.
    assert_eq!(r.forgotten, Vec::<String>::new(), "{r:?}");
    let snap = load(&policy, &second.snapshot).await.unwrap();
    assert_eq!(lists(&snap), b);
    let out = tmp.path().join("second.db");
    try_restore(&policy, &second.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
    let c = custos::ops::check::check(&policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "{:#?}", c.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_listing_every_page_itself_still_reads() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    // As written before lists existed: the pages in the object, no lists.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let mut snap = load(&policy, &first.snapshot).await.unwrap();
    let pages: Vec<_> = snap
        .record_tables()
        .iter()
        .map(|t| t.pages.clone())
        .collect();
    for t in snap.record_tables_mut() {
        for w in &mut t.windows {
            w.lists.clear();
        }
    }
    snap.store(&repo.target, &repo.meta).await.unwrap();
    let json = stored_json(&policy, &first.snapshot).await;
    for t in json["sqlite"]["tables"].as_array().unwrap() {
        for w in t["windows"].as_array().unwrap() {
            assert!(w.get("lists").is_none(), "{w}");
        }
        assert_ne!(t["pages"], serde_json::json!([]));
    }
    let again = load(&policy, &first.snapshot).await.unwrap();
    let back: Vec<_> = again
        .record_tables()
        .iter()
        .map(|t| t.pages.clone())
        .collect();
    assert_eq!(back, pages);
    let out = tmp.path().join("restored.db");
    try_restore(&policy, &first.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
    // Its child writes lists for the windows it reuses.
    let second = backup_small(&policy).await;
    let child = load(&policy, &second.snapshot).await.unwrap();
    assert!(child
        .record_tables()
        .iter()
        .all(|t| t.windows.iter().all(|w| !w.lists.is_empty())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_hostile_list_is_refused_naming_it_and_changes_nothing() {
    let (tmp, _db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let id = first.snapshot.clone();
    let snap = load(&policy, &id).await.unwrap();
    let l = lists(&snap)[3];

    // One byte of one list flipped in its pack.
    let pack = tmp.path().join(format!(
        "target/data/{}/{}",
        &l.pack.to_string()[..2],
        l.pack
    ));
    let good = fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[l.offset as usize + l.len as usize / 2] ^= 0x40;
    fs::write(&pack, &bad).unwrap();
    let before = repo_files(tmp.path());
    let e = load(&policy, &id).await.unwrap_err().to_string();
    assert!(e.contains(&id), "names the snapshot: {e}");
    assert!(e.contains(&l.id.to_string()), "names the list: {e}");
    let object = format!("primary:data/{}/{}", &l.pack.to_string()[..2], l.pack);
    assert!(e.contains(&object), "names the pack as target:path: {e}");
    let e = try_restore(&policy, &id, &tmp.path().join("never.db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&l.id.to_string()), "{e}");
    assert!(!tmp.path().join("never.db").exists());
    let e = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unreadable") && e.contains(&id), "{e}");
    let c = custos::ops::check::check(&policy, None, false, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(!c.ok);
    assert!(
        c.findings
            .iter()
            .any(|f| f.object.contains(&id) && f.message.contains(&l.id.to_string())),
        "{:#?}",
        c.findings
    );
    assert_eq!(repo_files(tmp.path()), before, "nothing changed");
    fs::write(&pack, &good).unwrap();
    load(&policy, &id).await.unwrap();

    // Hostile objects: a window claiming another page count, a list past
    // its pack's end, an absurd list length.
    let json = stored_json(&policy, &id).await;
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 3] = [
        ("its read window", |w| {
            let n = w["pages"].as_u64().unwrap();
            w["pages"] = (n + 1).into();
        }),
        ("past the end", |w| {
            w["lists"][0]["offset"] = (u32::MAX - 100).into();
        }),
        ("absurd", |w| {
            w["lists"][0]["len"] = u32::MAX.into();
        }),
    ];
    for (want, edit) in edits {
        let mut forged = json.clone();
        let tables = forged["sqlite"]["tables"].as_array_mut().unwrap();
        let calls = tables.iter_mut().find(|t| t["name"] == "calls").unwrap();
        edit(&mut calls["windows"][1]);
        store_json(&policy, &id, &forged).await;
        let e = load(&policy, &id).await.unwrap_err().to_string();
        assert!(e.contains(&id), "{want}: names the snapshot: {e}");
        assert!(
            e.contains(want) || e.contains("cannot be read"),
            "{want}: {e}"
        );
    }
    store_json(&policy, &id, &json).await;
    let out = tmp.path().join("restored.db");
    try_restore(&policy, &id, &out).await.unwrap();

    // A writer whose counts do not add up is refused before it writes:
    // the object would lose pages.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let before = repo_files(tmp.path());
    for more in [true, false] {
        let mut s = load(&policy, &id).await.unwrap();
        let calls = s
            .record_tables_mut()
            .iter_mut()
            .find(|t| t.name == "calls")
            .unwrap();
        if more {
            calls.windows[0].pages += 1;
        } else {
            calls.pages.push(calls.pages[0]);
        }
        let e = s
            .store(&repo.target, &repo.meta)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not written") && e.contains("calls"), "{e}");
    }
    assert_eq!(repo_files(tmp.path()), before, "nothing written");
}

/// A tree page that names keys its group was not sealed under (a hostile
/// writer holding the repository keys, or a page damaged before it was
/// sealed): the keys derived do not give the group id the page names. The
/// restore refuses, naming the page, and writes no database; the check
/// reports the group; nothing in the repository changes but the forged
/// objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_does_not_match_its_keys_is_refused_by_restore_and_check() {
    let (tmp, _db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let id = backup_small(&policy).await.snapshot;
    let json = stored_json(&policy, &id).await;
    let snap = load(&policy, &id).await.unwrap();
    let calls = snap
        .record_tables()
        .iter()
        .find(|t| t.name == "calls")
        .unwrap();
    // The first call-record page again, one group id byte changed, stored
    // as a new page that the calls table lists in place of the first.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let index = custos::repo::index::Index::load(&repo.target, &repo.meta)
        .await
        .unwrap();
    let mut cache = custos::repo::cache::PackCache::new(Arc::new(repo.target.clone()), 1);
    let mut page = Page::load(&mut cache, &index, &repo.meta, &calls.pages[0])
        .await
        .unwrap();
    let Page::Groups { groups, .. } = &mut page else {
        panic!("a record table's page lists groups")
    };
    groups[0].g[0] ^= 1;
    let forged_id = store_pages(&repo.target, &repo.meta, &[page])
        .await
        .unwrap()[0];
    let mut pages: Vec<String> = calls.pages.iter().map(|p| p.to_string()).collect();
    pages[0] = forged_id.to_string();
    let mut forged = json.clone();
    let tables = forged["sqlite"]["tables"].as_array_mut().unwrap();
    let t = tables.iter_mut().find(|t| t["name"] == "calls").unwrap();
    t.as_object_mut().unwrap().remove("windows");
    t["pages"] = pages.into();
    store_json(&policy, &id, &forged).await;
    let before = repo_files(tmp.path());

    let to = tmp.path().join("never.db");
    let e = try_restore(&policy, &id, &to)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the keys it names"), "{e}");
    assert!(e.contains(&forged_id.to_string()), "names the page: {e}");
    assert!(!to.exists(), "a refused restore left {}", to.display());

    let c = custos::ops::check::check(&policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(!c.ok);
    assert!(
        c.findings.iter().any(|f| f
            .message
            .starts_with("1 group(s) do not match the keys they name")),
        "{:#?}",
        c.findings
    );
    assert_eq!(repo_files(tmp.path()), before, "nothing changed");

    // The object as the backup wrote it restores again.
    store_json(&policy, &id, &json).await;
    try_restore(&policy, &id, &to).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_a_large_window_rewrites_the_part_of_its_list_around_it() {
    let tmp = common::tempdir();
    let db = tmp.path().join("calls.db");
    // 20,000 customers: one read window of some 2,500 pages.
    build_calls_db(&db, 20000, 2000);
    let policy = Policy::load(&write_local_policy(
        tmp.path(),
        "parts",
        &db,
        util::CALLS_TABLES,
    ))
    .unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    let opts = BackupOptions::default();
    let first = backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let customers = |s: &Snapshot| {
        let t = s
            .record_tables()
            .iter()
            .find(|t| t.name == "customers")
            .unwrap();
        assert_eq!(t.windows.len(), 1, "one window");
        (t.pages.clone(), t.windows[0].lists.clone())
    };
    let (pages, parts) = customers(&load(&policy, &first.snapshot).await.unwrap());
    assert!(
        parts.len() > 5,
        "{} parts for {} pages",
        parts.len(),
        pages.len()
    );

    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE customers SET name = name || '!' WHERE rowid = 7777",
            [],
        )
        .unwrap();
    let second = backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let (pages2, parts2) = customers(&load(&policy, &second.snapshot).await.unwrap());
    let changed_pages = pages2.iter().filter(|p| !pages.contains(p)).count();
    assert_eq!(changed_pages, 1, "one page rewritten");
    let new_parts = parts2.iter().filter(|l| !parts.contains(l)).count();
    assert!(
        (1..=2).contains(&new_parts),
        "{new_parts} of {} parts written again",
        parts2.len()
    );
    // One more or one fewer if the changed page's id was a part's end or
    // now is one.
    assert!(
        parts2.len().abs_diff(parts.len()) <= 1,
        "{} and {}",
        parts.len(),
        parts2.len()
    );
    let out = tmp.path().join("restored.db");
    try_restore(&policy, &second.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_pack_no_index_object_lists_is_found_by_check_and_stops_prune() {
    let (tmp, db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let first = backup_small(&policy).await;
    let snap = load(&policy, &first.snapshot).await.unwrap();
    let l = lists(&snap)[0];
    let in_pack = lists(&snap).iter().filter(|x| x.pack == l.pack).count();

    // The list pack's index object is lost (a copy that missed it, a hand
    // that deleted it). The lists are read by place, so the snapshot still
    // loads and restores; prune would delete the pack as unreferenced.
    let index = tmp
        .path()
        .join("target")
        .join(custos::repo::index::index_path(&l.pack));
    let kept = fs::read(&index).unwrap();
    fs::remove_file(&index).unwrap();
    let out = tmp.path().join("restored.db");
    try_restore(&policy, &first.snapshot, &out).await.unwrap();
    assert_same_db(&db, &out);

    let c = custos::ops::check::check(&policy, None, false, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(!c.ok, "{:#?}", c.findings);
    let about_lists: Vec<_> = c
        .findings
        .iter()
        .filter(|f| f.message.contains("which no index object lists"))
        .collect();
    assert_eq!(about_lists.len(), in_pack, "{:#?}", c.findings);
    assert!(
        about_lists
            .iter()
            .all(|f| f.object.contains(&first.snapshot) && f.message.contains(&l.pack.to_string())),
        "{about_lists:#?}"
    );
    assert!(
        about_lists
            .iter()
            .any(|f| f.message.contains(&l.id.to_string())),
        "{about_lists:#?}"
    );

    let before = repo_files(tmp.path());
    let e = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap_err()
        .to_string();
    for part in [first.snapshot.as_str(), &l.pack.to_string(), "custos check"] {
        assert!(e.contains(part), "names {part}: {e}");
    }
    assert_eq!(repo_files(tmp.path()), before, "prune changed nothing");

    // The index object back, both pass.
    fs::write(&index, kept).unwrap();
    let r = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap();
    assert_eq!(r.forgotten, Vec::<String>::new(), "{r:?}");
    let c = custos::ops::check::check(&policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "{:#?}", c.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counts_a_hostile_parent_declares_are_summed_without_overflow() {
    let (tmp, _db, policy) = setup();
    custos::ops::init::init(&policy).await.unwrap();
    let id = backup_small(&policy).await.snapshot;
    // A writer holding the metadata key declares absurd row counts for
    // the windows of an unchanged table.
    let mut json = stored_json(&policy, &id).await;
    let tables = json["sqlite"]["tables"].as_array_mut().unwrap();
    let calls = tables.iter_mut().find(|t| t["name"] == "calls").unwrap();
    let windows = calls["windows"].as_array_mut().unwrap();
    assert!(windows.len() > 1);
    for w in windows {
        w["rows"] = u64::MAX.into();
    }
    store_json(&policy, &id, &json).await;

    // The next backup leaves those windows unread and sums the parent's
    // counts: saturating (a debug build used to panic here), and the
    // restore of what it wrote is refused as not adding up, naming the
    // table.
    let b = backup_small(&policy).await;
    assert_eq!(b.items, u64::MAX);
    let e = try_restore(&policy, &b.snapshot, &tmp.path().join("restored.db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("table calls") && e.contains("snapshot recorded"),
        "{e}"
    );
    // A check reads both snapshots to the end.
    let c = custos::ops::check::check(&policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.snapshots >= 2, "{c:?}");
}
