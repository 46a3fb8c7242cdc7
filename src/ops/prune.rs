//! `forget` + `prune`: applies the policy's `[snapshots] keep_*` rules to
//! one target, deletes the snapshot objects they do not keep, then deletes
//! the packs (and their index objects) that no remaining snapshot refers to.
//!
//! Safety with a concurrent backup (docs/FORMAT.md section 5.1): the whole
//! operation holds the target's backup lock (`locks/backup.json`, the same
//! object a backup holds from before it loads the index until after it
//! writes its snapshot). So no backup can have loaded an index naming a pack
//! that prune deletes, and no backup's packs are half-written while prune
//! looks. Prune waits up to [`PruneOptions::lock_wait`] for a running backup;
//! a backup that starts while prune runs is refused with the lock's message
//! and runs at its next schedule. Before each batch of deletions prune
//! checks that the lock is still its own, and stops if it is not.
//!
//! A pack is deleted only when none of its blobs (chunks or tree pages) is
//! referred to by a kept snapshot: packs hold one group family, so packs of
//! forgotten data go and packs shared with kept snapshots stay whole (no
//! repacking). Prune refuses to delete anything when a snapshot, an index
//! object or a tree page cannot be read, since it could not tell what they
//! refer to.

use super::lock::BackupLock;
use super::{MetaRepo, OpsError};
use crate::crypto::Id;
use crate::policy::Policy;
use crate::repo::cache::PackCache;
use crate::repo::index::{index_path, Index, PackSet};
use crate::repo::pack::pack_path;
use crate::repo::snapshot::{snapshot_path, Snapshot};
use crate::repo::tree::{self, Page, WindowIndex};
use crate::retention::{keep_decisions, SnapshotDecision};
use crate::target::Target;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How to run forget + prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Target (default: the policy's primary).
    pub target: Option<String>,
    /// Compute and report only: delete nothing, take no lock.
    pub dry_run: bool,
    /// How long to wait for a running backup to release the lock.
    pub lock_wait: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            target: None,
            dry_run: false,
            lock_wait: Duration::from_secs(600),
        }
    }
}

/// What forget + prune did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub target: String,
    pub dry_run: bool,
    /// Every snapshot, newest first, with the rules that keep it.
    pub snapshots: Vec<SnapshotDecision>,
    /// Ids of the snapshots forgotten (deleted).
    pub forgotten: Vec<String>,
    /// Packs deleted (no kept snapshot refers to them), with their index.
    pub packs_deleted: u64,
    /// Packs deleted that were in no index (left by interrupted backups).
    pub unindexed_packs_deleted: u64,
    /// Bytes of packs, index and snapshot objects deleted.
    pub bytes_deleted: u64,
    /// Packs kept because a kept snapshot refers to them.
    pub packs_kept: u64,
    pub bytes_kept: u64,
}

/// Deletions between two checks that the lock is still ours.
const LOCK_CHECK_EVERY: usize = 32;

/// Forgets the snapshots the policy's `[snapshots]` rules do not keep and
/// prunes the data no kept snapshot needs, on one target.
pub async fn forget_and_prune(
    policy: &Policy,
    opts: &PruneOptions,
) -> Result<PruneReport, OpsError> {
    let repo = MetaRepo::open(policy, opts.target.as_deref()).await?;
    if opts.dry_run {
        return run(policy, opts, &repo, None).await;
    }
    let lock = acquire_waiting(&repo.target, opts.lock_wait).await?;
    let r = run(policy, opts, &repo, Some(&lock)).await;
    let released = lock.release(&repo.target).await;
    let report = r?;
    released?;
    Ok(report)
}

async fn acquire_waiting(target: &Target, wait: Duration) -> Result<BackupLock, OpsError> {
    let start = std::time::Instant::now();
    loop {
        match BackupLock::acquire(target).await {
            Ok(l) => return Ok(l),
            Err(OpsError::Invalid(why)) if start.elapsed() < wait => {
                tracing::info!(target = %target.name, %why, "prune waits for the backup lock");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(OpsError::Invalid(why)) => {
                return Err(OpsError::Invalid(format!(
                    "prune waited {}s for the lock and gave up: {why}",
                    wait.as_secs()
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

async fn still_ours(target: &Target, lock: Option<&BackupLock>) -> Result<(), OpsError> {
    if let Some(l) = lock {
        if !l.held(target).await? {
            return Err(OpsError::Integrity(format!(
                "target `{}`: prune lost the lock {} (taken over by another process); \
                 it stopped deleting; run retention again",
                target.name,
                super::lock::LOCK_PATH
            )));
        }
    }
    Ok(())
}

async fn run(
    policy: &Policy,
    opts: &PruneOptions,
    repo: &MetaRepo,
    lock: Option<&BackupLock>,
) -> Result<PruneReport, OpsError> {
    let target = &repo.target;
    let meta = &repo.meta;
    // The snapshots' heads; each snapshot is loaded (its page ids) when
    // its windows are walked below, one at a time.
    let (snaps, bad) = Snapshot::heads_with_ids(target, meta).await?;
    let unreadable = |bad: &[String]| {
        OpsError::Integrity(format!(
            "target `{}`: {} snapshot object(s) are unreadable, so prune cannot tell what they need: {}; \
             run `custos check` and repair or delete them first",
            target.name,
            bad.len(),
            bad.join("; ")
        ))
    };
    if !bad.is_empty() {
        let names: Vec<String> = bad.iter().map(|(_, e)| e.to_string()).collect();
        return Err(unreadable(&names));
    }
    let times: Vec<(String, String)> = snaps
        .iter()
        .map(|s| (s.id.clone(), s.time.clone()))
        .collect();
    let decisions = keep_decisions(&policy.snapshots, &times);
    let keep: HashSet<&str> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .collect();
    // Every index object is read, but only its pack is kept (and its
    // size): which packs a kept snapshot needs is found window by window,
    // below, so memory follows a window, not the repository (the whole
    // index, 32 bytes a chunk, was over 1 GiB at 4 GiB of records).
    let index = Index::load_packs(target, meta).await?;
    if !index.broken.is_empty() {
        let names: Vec<String> = index
            .broken
            .iter()
            .map(|(o, w)| format!("{o}: {w}"))
            .collect();
        return Err(OpsError::Integrity(format!(
            "target `{}`: {} index object(s) are unreadable, so prune cannot tell which packs are in use: {}; \
             run `custos check` first",
            target.name,
            names.len(),
            names.join("; ")
        )));
    }

    // Packs the kept snapshots refer to.
    let shared = Arc::new(target.clone());
    let mut cache = PackCache::new(shared.clone(), 8);
    let mut locate = WindowIndex::new(shared, Arc::new(meta.clone()));
    let mut used = vec![false; index.packs.len()];
    let mut seen_pages: HashSet<Id> = HashSet::new();
    let pack_at: HashMap<Id, usize> = index
        .packs
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    for head in &snaps {
        // Every snapshot is read (one whose page lists cannot be read
        // stops prune, as one whose object cannot be read does); the kept
        // ones are walked.
        let s = Snapshot::load(target, meta, &head.id)
            .await
            .map_err(|e| unreadable(&[e.to_string()]))?;
        if !keep.contains(s.id.as_str()) {
            continue;
        }
        let damaged = |e: &dyn std::fmt::Display| {
            OpsError::Integrity(format!(
                "snapshot {} on target `{}`: {e}; prune deletes nothing until `custos check` passes",
                s.id, target.name
            ))
        };
        // Its page lists are read by place, not through the index: their
        // packs are kept by name.
        for l in s.page_lists() {
            let Some(&i) = pack_at.get(&l.pack) else {
                return Err(OpsError::Integrity(format!(
                    "snapshot {} on target `{}`: its page list {} lies in pack {}, which no index object lists; \
                     prune deletes nothing until `custos check` passes",
                    s.id, target.name, l.id, l.pack
                )));
            };
            used[i] = true;
        }
        // A read window's pages and chunks are found through the index
        // objects of the packs it lists (FORMAT 3.5), where a restore
        // finds them; a window that lists none, or whose list misses one
        // of them, through the whole index, as are a files snapshot's.
        let mut windows: Vec<(Option<&[Id]>, &[Id])> = Vec::new();
        for t in s.record_tables() {
            for w in t.page_windows() {
                let listed = w.mark.and_then(|i| t.windows[i].packs.as_deref());
                windows.push((listed, &t.pages[w.range]));
            }
        }
        if let Some(f) = &s.files {
            windows.push((None, &f.pages));
        }
        for (listed, pages) in windows {
            // A page an earlier window named was walked with it (windows
            // of later snapshots share their base pages): the packs of its
            // blobs are marked. (A restore whose window's packs then miss
            // one reads that window through the whole index.)
            let fresh: Vec<Id> = pages
                .iter()
                .filter(|pid| seen_pages.insert(**pid))
                .copied()
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let packs = window_packs(&mut locate, &mut cache, meta, listed, &fresh)
                .await
                .map_err(|e| damaged(&e))?;
            for p in packs {
                // Not among the packs listed when prune started: an index
                // object written since, which nothing may do under the lock.
                let Some(&i) = pack_at.get(&p) else {
                    return Err(damaged(&format!(
                        "pack {p} holds what it refers to but was not listed when prune started"
                    )));
                };
                used[i] = true;
            }
        }
    }

    let listed: HashMap<String, u64> = target.list("data/").await?.into_iter().collect();
    let index_sizes: HashMap<String, u64> = target.list("index/").await?.into_iter().collect();
    let snap_sizes: HashMap<String, u64> = target.list("snapshots/").await?.into_iter().collect();
    let mut report = PruneReport {
        target: target.name.clone(),
        dry_run: opts.dry_run,
        snapshots: decisions.clone(),
        forgotten: Vec::new(),
        packs_deleted: 0,
        unindexed_packs_deleted: 0,
        bytes_deleted: 0,
        packs_kept: 0,
        bytes_kept: 0,
    };
    // Deletions, in an order that leaves a valid repository at every step:
    // snapshot objects first (then nothing listed refers to the packs), then
    // per pack its index object before the pack (never an index without its
    // pack; a pack without index is removed by the next prune).
    let mut deletions: Vec<(String, u64)> = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        let p = snapshot_path(&d.id);
        deletions.push((p.clone(), snap_sizes.get(&p).copied().unwrap_or(0)));
        report.forgotten.push(d.id.clone());
    }
    let mut indexed = HashSet::new();
    for (i, (pid, size)) in index.packs.iter().enumerate() {
        let pp = pack_path(pid);
        indexed.insert(pp.clone());
        if used[i] {
            report.packs_kept += 1;
            report.bytes_kept += size;
            continue;
        }
        let ip = index_path(pid);
        deletions.push((ip.clone(), index_sizes.get(&ip).copied().unwrap_or(0)));
        if let Some(s) = listed.get(&pp) {
            deletions.push((pp, *s));
        }
        report.packs_deleted += 1;
    }
    let mut unindexed: Vec<(&String, &u64)> = listed
        .iter()
        .filter(|(p, _)| !indexed.contains(*p))
        .collect();
    unindexed.sort();
    for (p, s) in unindexed {
        deletions.push((p.clone(), *s));
        report.unindexed_packs_deleted += 1;
    }
    report.bytes_deleted = deletions.iter().map(|d| d.1).sum();
    if opts.dry_run {
        return Ok(report);
    }
    for (n, (path, _)) in deletions.iter().enumerate() {
        if n % LOCK_CHECK_EVERY == 0 {
            still_ours(target, lock).await?;
        }
        target.delete(path).await?;
    }
    tracing::info!(
        target = %target.name,
        forgotten = report.forgotten.len(),
        packs = report.packs_deleted,
        bytes = report.bytes_deleted,
        "pruned"
    );
    Ok(report)
}

/// The packs holding a read window's tree pages (`pages`, those not
/// walked before) and the chunks their entries name: through the index
/// objects of the packs the window lists (`listed`) if they hold all of
/// them, else through the target's whole index, as
/// [`WindowIndex::first`] and [`WindowIndex::again`] choose.
async fn window_packs(
    locate: &mut WindowIndex,
    cache: &mut PackCache,
    meta: &crate::crypto::MetaKey,
    listed: Option<&[Id]>,
    pages: &[Id],
) -> Result<Vec<Id>, crate::repo::RepoError> {
    let mut at = locate.first(listed).await?;
    loop {
        match packs_through(cache, &at.index, meta, pages, !at.whole).await {
            Ok(packs) => return Ok(packs),
            Err(e) => at = locate.again(&at, e).await?,
        }
    }
}

/// The packs holding `pages` and the chunks their entries name, found
/// through `index`. A page that cannot be found or read is an error. A
/// chunk no index object names is too if `strict` (an index of some
/// packs: it may be in another), else it is left out (it is in no pack;
/// check reports it).
async fn packs_through(
    cache: &mut PackCache,
    index: &Index,
    meta: &crate::crypto::MetaKey,
    pages: &[Id],
    strict: bool,
) -> Result<Vec<Id>, crate::repo::RepoError> {
    let mut packs = PackSet::default();
    for part in pages.chunks(tree::PAGES_AT_ONCE) {
        for pid in part {
            let Some(loc) = index.chunks.get(pid) else {
                return Err(crate::repo::RepoError::malformed(
                    format!("tree page {pid}"),
                    "no index object names it",
                ));
            };
            packs.add(loc.pack);
        }
        // Read together: nearby pages in one read.
        let read = tree::load_pages(cache, index, meta, part).await?;
        for page in &read {
            let mut missing = false;
            let mut add = |c: &Id| match index.chunks.pack(c) {
                Some(pack) => packs.add(pack),
                None => missing = true,
            };
            match page {
                Page::Groups { groups, .. } => {
                    groups.iter().flat_map(|g| &g.chunks).for_each(&mut add)
                }
                Page::Files { files, .. } => {
                    files.iter().flat_map(|f| &f.chunks).for_each(&mut add)
                }
            }
            if missing && strict {
                return Err(crate::repo::RepoError::malformed(
                    "a read window's pack list",
                    "misses a pack holding one of its chunks",
                ));
            }
        }
    }
    Ok(index.pack_ids(&packs))
}
