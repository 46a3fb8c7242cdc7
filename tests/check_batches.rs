//! `check --read-data` opens chunks in batches, sorted by pack, on several
//! threads. Whatever the batch and wave bounds, the outcome is the same:
//! the same chunks counted, every damaged chunk named once, a damaged pack
//! named once however many batches need it.

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
use util::write_local_policy;

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

/// A policy over a demo database of about 2 MiB, backed up into packs of
/// 128 KiB (so a batch spans many packs, more than a small cache holds).
async fn backed_up(dir: &std::path::Path) -> Policy {
    let db = dir.join("crm.db");
    generate(&db, DemoSize::Bytes(2 << 20), 11, &NoProgress).unwrap();
    let tables =
        "[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n\n\
         [[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nsubject = \"customer_id\"\n\
         period = { column = \"started_at\", every = \"month\" }\n";
    let policy = write_local_policy(dir, "batches", &db, tables);
    let policy = Policy::load(&policy).unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    let opts = BackupOptions {
        pack_size: 128 << 10,
        ..BackupOptions::default()
    };
    backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    policy
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

/// Checks with every batching; all reports must agree (findings compared
/// as sorted lists). Returns the default batching's report.
async fn check_all_ways(policy: &Policy) -> CheckReport {
    let mut first: Option<(CheckReport, Vec<String>)> = None;
    for b in batchings() {
        let r = check_with(policy, None, true, b, Arc::new(NoProgress))
            .await
            .unwrap();
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

    // Data packs by how many needed chunks they hold, most first.
    let mut packs: Vec<(Id, Vec<custos::repo::index::IndexEntry>)> = Vec::new();
    for (pid, _) in &index.packs {
        let bytes = repo.target.get(&pack_path(pid)).await.unwrap();
        let entries: Vec<_> = read_header("pack", &bytes, &repo.meta)
            .unwrap()
            .into_iter()
            .filter(|e| needed.contains(&e.id))
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
            damaged.push(e.id);
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
