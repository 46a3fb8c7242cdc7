//! `check --read-data` opens chunks in batches, sorted by pack, on several
//! threads. Whatever the batch and wave bounds, the outcome is the same:
//! the same chunks counted, every damaged chunk named once, a damaged pack
//! named once however many batches need it; over S3 too, where a batch
//! that comes back to a pack reads only the span its chunks lie in.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::tempdir;
use custos::crypto::Id;
use custos::demo::{generate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::ops::check::{check_with, Batching, CheckReport, Level};
use custos::ops::OpenRepo;
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::cache::PackCache;
use custos::repo::index::{Index, IndexFile};
use custos::repo::pack::{pack_path, read_header};
use custos::repo::snapshot::Snapshot;
use custos::repo::tree::Page;
use std::collections::HashSet;
use std::sync::Arc;
use util::{write_local_policy, write_policy};

/// Bounds from one chunk a batch and one pack a wave up to the defaults.
fn batchings() -> Vec<Batching> {
    let tiny = |chunks, wave_bytes, threads| Batching {
        chunks,
        wave_bytes,
        threads,
    };
    vec![
        Batching::default(),
        tiny(1, 1, 3),
        tiny(2, 1, 2),
        tiny(3, 1 << 30, 1),
        tiny(7, 300 << 10, 4),
        tiny(64, 1, 2),
    ]
}

const TABLES: &str =
    "[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n\n\
     [[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nsubject = \"customer_id\"\n\
     period = { column = \"started_at\", every = \"month\" }\n";

/// A policy over a demo database of about 2 MiB, backed up into packs of
/// 128 KiB (so a batch spans many packs, more than a small cache holds).
async fn backed_up(dir: &std::path::Path) -> Policy {
    let db = dir.join("crm.db");
    generate(&db, DemoSize::Bytes(2 << 20), 11, &NoProgress).unwrap();
    let policy = write_local_policy(dir, "batches", &db, TABLES);
    let policy = Policy::load(&policy).unwrap();
    store_in_small_packs(&policy).await;
    policy
}

async fn store_in_small_packs(policy: &Policy) {
    custos::ops::init::init(policy).await.unwrap();
    let opts = BackupOptions {
        pack_size: 128 << 10,
        ..BackupOptions::default()
    };
    backup(policy, &opts, Arc::new(NoProgress)).await.unwrap();
}

/// The data chunks the snapshots refer to (not tree pages).
async fn data_chunks(policy: &Policy, repo: &OpenRepo, index: &Index) -> HashSet<Id> {
    let target = Arc::new(custos::ops::select_target(policy, None).unwrap());
    let mut cache = PackCache::new(target, 4);
    let (snaps, bad) = Snapshot::list_with_ids(&repo.target, &repo.meta)
        .await
        .unwrap();
    assert!(bad.is_empty());
    let mut out = HashSet::new();
    for s in &snaps {
        for t in s.record_tables() {
            for p in &t.pages {
                match Page::load(&mut cache, index, &repo.meta, p).await.unwrap() {
                    Page::Groups { groups, .. } => {
                        for g in groups {
                            out.extend(g.chunks);
                        }
                    }
                    Page::Files { .. } => unreachable!("a SQLite snapshot"),
                }
            }
        }
    }
    out
}

async fn check_by(policy: &Policy, read_data: bool, batching: Batching) -> CheckReport {
    check_with(policy, None, read_data, batching, Arc::new(NoProgress))
        .await
        .unwrap()
}

/// Checks with every batching; all reports must agree (findings compared
/// as sorted lists). Returns the default batching's report.
async fn check_all_ways(policy: &Policy) -> CheckReport {
    let mut first: Option<(CheckReport, Vec<String>)> = None;
    for b in batchings() {
        let r = check_by(policy, true, b).await;
        let mut f: Vec<String> = r
            .findings
            .iter()
            .map(|f| format!("{:?}|{}|{}|{:?}", f.level, f.object, f.message, f.hint))
            .collect();
        f.sort();
        match &first {
            None => first = Some((r, f)),
            Some((r0, f0)) => {
                assert_eq!(r.chunks_checked, r0.chunks_checked, "{b:?}");
                assert_eq!(r.groups_shredded, r0.groups_shredded, "{b:?}");
                assert_eq!(r.ok, r0.ok, "{b:?}");
                assert_eq!(&f, f0, "{b:?}");
                assert!(r.bytes_read >= r0.bytes_read, "{b:?}");
            }
        }
    }
    first.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_and_packs_are_found_once_whatever_the_batching() {
    let dir = tempdir();
    let policy = backed_up(dir.path()).await;
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let index = Index::load(&repo.target, &repo.meta).await.unwrap();
    let needed = data_chunks(&policy, &repo, &index).await;

    // Undamaged: every needed chunk is opened once, nothing is wrong.
    let clean = check_all_ways(&policy).await;
    assert!(clean.ok, "{:?}", clean.findings);
    assert!(clean.findings.iter().all(|f| f.level != Level::Error));
    assert_eq!(clean.chunks_checked, needed.len() as u64);
    let stored: u64 = index.packs.iter().map(|p| p.1).sum();
    assert!(clean.bytes_read >= stored);

    // Data packs by how many needed chunks they hold, most first. Index
    // entries name a chunk by its id's first 16 bytes.
    let by_key: std::collections::HashMap<[u8; 16], Id> = needed
        .iter()
        .map(|id| (id.0[..16].try_into().unwrap(), *id))
        .collect();
    let mut packs: Vec<(Id, Vec<custos::repo::index::IndexEntry>)> = Vec::new();
    for (pid, _) in &index.packs {
        let bytes = repo.target.get(&pack_path(pid)).await.unwrap();
        let entries: Vec<_> = read_header("pack", &bytes, &repo.meta)
            .unwrap()
            .into_iter()
            .filter(|e| by_key.contains_key(&e.key))
            .collect();
        if !entries.is_empty() {
            packs.push((*pid, entries));
        }
    }
    packs.sort_by_key(|p| std::cmp::Reverse(p.1.len()));
    assert!(
        packs.len() >= 4,
        "want several data packs, got {}",
        packs.len()
    );

    // Forge chunk damage the pack hash cannot see: flip a bit inside the
    // first, a middle and the last chunk of one pack and inside a middle
    // chunk of another, then store each pack under its new hash with an
    // index object naming it (as a hostile or buggy writer could).
    let mut damaged = Vec::new();
    for (n, (pid, entries)) in packs[..2].iter().enumerate() {
        let mut bytes = repo.target.get(&pack_path(pid)).await.unwrap().to_vec();
        let picks: Vec<usize> = if n == 0 {
            vec![0, entries.len() / 2, entries.len() - 1]
        } else {
            vec![entries.len() / 2]
        };
        let mut all = read_header("pack", &bytes, &repo.meta).unwrap();
        all.sort_by_key(|e| e.offset);
        for i in picks {
            let e = entries[i];
            bytes[e.offset as usize + e.len as usize / 2] ^= 0x10;
            damaged.push(by_key[&e.key]);
        }
        let new = Id::hash(&bytes);
        let size = bytes.len() as u64;
        repo.target
            .put(&pack_path(&new), bytes.into())
            .await
            .unwrap();
        IndexFile {
            pack: new,
            pack_size: size,
            entries: all,
        }
        .store(&repo.target, &repo.meta)
        .await
        .unwrap();
        repo.target.delete(&pack_path(pid)).await.unwrap();
        repo.target
            .delete(&custos::repo::index::index_path(pid))
            .await
            .unwrap();
    }
    // And damage a third pack plainly: its hash no longer matches its name.
    let (bad_pack, bad_entries) = &packs[2];
    let path = dir.path().join("target").join(pack_path(bad_pack));
    let mut b = std::fs::read(&path).unwrap();
    let at = bad_entries[bad_entries.len() / 2].offset as usize;
    b[at] ^= 0x10;
    std::fs::write(&path, b).unwrap();

    let r = check_all_ways(&policy).await;
    assert!(!r.ok);
    // Chunks of the pack that fails its hash are not opened; the others
    // are, damaged or not.
    assert_eq!(
        r.chunks_checked,
        clean.chunks_checked - bad_entries.len() as u64
    );
    let errors: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .collect();
    for id in &damaged {
        let named: Vec<_> = errors
            .iter()
            .filter(|f| f.message.starts_with(&format!("chunk {id}:")))
            .collect();
        assert_eq!(named.len(), 1, "chunk {id}: {errors:#?}");
        assert!(named[0].object.contains("data/"), "{:?}", named[0]);
    }
    let bad_name = pack_path(bad_pack);
    let named: Vec<_> = errors
        .iter()
        .filter(|f| f.object.ends_with(&bad_name))
        .collect();
    assert_eq!(named.len(), 1, "{errors:#?}");
    assert!(named[0].message.contains("does not hash to its name"));
    assert_eq!(errors.len(), damaged.len() + 1, "{errors:#?}");
}

/// What walking one snapshot alone finds, computed here from its pages:
/// chunks in no index (count and first, in walk order) and groups whose
/// keys are destroyed.
async fn walk_alone(
    repo: &OpenRepo,
    cache: &mut PackCache,
    index: &Index,
    snap: &Snapshot,
) -> (u64, Option<Id>, u64) {
    let (mut missing, mut first, mut shredded) = (0, None, 0);
    for t in snap.record_tables() {
        for p in &t.pages {
            let Page::Groups { groups, .. } =
                Page::load(cache, index, &repo.meta, p).await.unwrap()
            else {
                unreachable!("a SQLite snapshot")
            };
            for g in groups {
                let gone = repo.vault.key(&g.t).is_none()
                    || g.s.is_some_and(|s| repo.vault.key(&s).is_none());
                if gone {
                    shredded += 1;
                    continue;
                }
                for c in g.chunks {
                    if index.chunks.get(&c).is_none() {
                        missing += 1;
                        first.get_or_insert(c);
                    }
                }
            }
        }
    }
    (missing, first, shredded)
}

/// A child snapshot shares most tree pages with its parent, and the walk
/// takes a page it has seen from what it found the first time. Each
/// snapshot must still be reported as if it were walked alone: its own
/// count of chunks in no index (and the first of them), and every
/// destroyed group counted once per snapshot that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sharing_pages_with_its_parent_is_reported_as_if_walked_alone() {
    let dir = tempdir();
    let policy = backed_up(dir.path()).await;
    let db = dir.path().join("crm.db");
    // A small change: the child rewrites a few pages and reuses the rest.
    let busy: i64 = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "UPDATE customers SET email = 'x' || email WHERE id % 40 = 0",
            [],
        )
        .unwrap();
        c.query_row(
            "SELECT customer_id FROM cdrs GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let opts = BackupOptions {
        pack_size: 128 << 10,
        ..BackupOptions::default()
    };
    backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();

    // Destroy one busy customer's key (their groups are on shared pages)...
    let state = custos::state::StateDir::at(dir.path().join("state")).unwrap();
    let request = custos::shred::Request {
        unit: custos::shred::UnitSpec::Subject(busy.to_string()),
        reason: Some("test".into()),
        request_ref: None,
        requester: "dpo-test".into(),
        role: "operator".into(),
        now: true,
    };
    custos::shred::request(&policy, &state, &request, chrono::Utc::now())
        .await
        .unwrap();
    let run = custos::shred::RunOptions {
        now: chrono::Utc::now(),
        performer: "dpo-test".into(),
        role: "retention".into(),
        only: None,
    };
    let r = custos::shred::run(&policy, &state, &run).await.unwrap();
    assert_eq!(r.destroyed.len(), 1, "{r:?}");

    // ...and lose the index object of the data pack most chunks need.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let index = Index::load(&repo.target, &repo.meta).await.unwrap();
    let needed = data_chunks(&policy, &repo, &index).await;
    let lost = index
        .packs
        .iter()
        .map(|(pid, _)| pid)
        .max_by_key(|pid| {
            needed
                .iter()
                .filter(|c| {
                    index
                        .chunks
                        .get(c)
                        .is_some_and(|l| index.pack_of(l).0 == **pid)
                })
                .count()
        })
        .copied()
        .unwrap();
    repo.target
        .delete(&custos::repo::index::index_path(&lost))
        .await
        .unwrap();
    let index = Index::load(&repo.target, &repo.meta).await.unwrap();

    let (snaps, bad) = Snapshot::list_with_ids(&repo.target, &repo.meta)
        .await
        .unwrap();
    assert!(bad.is_empty());
    assert_eq!(snaps.len(), 2);
    let pages = |s: &Snapshot| -> HashSet<Id> {
        s.record_tables()
            .iter()
            .flat_map(|t| t.pages.iter().copied())
            .collect()
    };
    let shared = pages(&snaps[0]).intersection(&pages(&snaps[1])).count();
    assert!(
        shared > 0 && shared < pages(&snaps[1]).len(),
        "the child must share some pages and rewrite others ({shared} shared)"
    );

    let target = Arc::new(custos::ops::select_target(&policy, None).unwrap());
    let mut cache = PackCache::new(target, 4);
    let mut want_shredded = 0;
    let mut want = Vec::new();
    for s in &snaps {
        let (missing, first, shredded) = walk_alone(&repo, &mut cache, &index, s).await;
        assert!(
            missing > 0 && shredded > 0,
            "the damage must reach every snapshot"
        );
        want_shredded += shredded;
        want.push((
            format!("primary:snapshots/{}", s.id),
            format!(
                "{missing} chunk(s) this snapshot needs are in no index (first: {})",
                first.unwrap()
            ),
        ));
    }
    for read_data in [false, true] {
        let r = check_by(&policy, read_data, Batching::default()).await;
        assert!(!r.ok);
        assert_eq!(r.groups_shredded, want_shredded, "read_data {read_data}");
        for (object, message) in &want {
            let n = r
                .findings
                .iter()
                .filter(|f| &f.object == object && &f.message == message)
                .count();
            assert_eq!(n, 1, "{object}: {message}: {:#?}", r.findings);
        }
    }
}

/// Over S3: a batch that comes back to a pack reads the span its chunks
/// lie in (a range request); the outcome is the same whatever the batching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_read_again_by_later_batches_are_read_in_spans_over_s3() {
    let dir = tempdir();
    let s3 = common::S3Server::start();
    s3.create_bucket("checks");
    let db = dir.path().join("crm.db");
    generate(&db, DemoSize::Bytes(1 << 20), 12, &NoProgress).unwrap();
    let path = write_policy(
        dir.path(),
        "spans",
        &db,
        TABLES,
        s3.url("checks", "repo"),
        &common::s3::policy_section(&s3.endpoint()),
    );
    let policy = Policy::load(&path).unwrap();
    store_in_small_packs(&policy).await;

    let stored: u64 = {
        let repo = OpenRepo::open(&policy, None).await.unwrap();
        let index = Index::load(&repo.target, &repo.meta).await.unwrap();
        index.packs.iter().map(|p| p.1).sum()
    };
    let whole = check_by(&policy, true, Batching::default()).await;
    assert!(whole.ok, "{:?}", whole.findings);
    // A few chunks a batch: most packs are needed by several batches, and
    // each is fetched whole once, then in spans.
    let tiny = Batching {
        chunks: 5,
        wave_bytes: 1,
        threads: 2,
    };
    let r = check_by(&policy, true, tiny).await;
    assert!(r.ok, "{:?}", r.findings);
    assert_eq!(r.chunks_checked, whole.chunks_checked);
    assert!(r.chunks_checked > 1000, "{}", r.chunks_checked);
    // Whole packs again for every batch read 3.4 times what is stored
    // here; with spans, 1.7 times (each pack whole once, then its spans,
    // and the tree pages).
    assert!(
        2 * r.bytes_read < 5 * stored,
        "read {} for {stored} stored",
        r.bytes_read
    );
}
