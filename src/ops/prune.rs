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
use crate::repo::index::{index_path, Index};
use crate::repo::pack::pack_path;
use crate::repo::snapshot::{snapshot_path, Snapshot};
use crate::repo::tree::Page;
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
    let (snaps, bad) = Snapshot::list_with_ids(target, meta).await?;
    if !bad.is_empty() {
        let names: Vec<String> = bad.iter().map(|(_, e)| e.to_string()).collect();
        return Err(OpsError::Integrity(format!(
            "target `{}`: {} snapshot object(s) are unreadable, so prune cannot tell what they need: {}; \
             run `custos check` and repair or delete them first",
            target.name,
            bad.len(),
            names.join("; ")
        )));
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
    let kept = || snaps.iter().filter(|s| keep.contains(s.id.as_str()));
    let pages_of = |s: &Snapshot| -> Vec<Id> {
        let mut pages: Vec<Id> = s
            .record_tables()
            .iter()
            .flat_map(|t| t.pages.iter().copied())
            .collect();
        if let Some(f) = &s.files {
            pages.extend(f.pages.iter().copied());
        }
        pages
    };
    // A membership index: the pack of every chunk (20 bytes each, not the
    // 32 of a full index: at 4 GiB of records, 27 M chunks), and where the
    // kept snapshots' tree pages lie, which are read.
    let index = Index::load_membership(target, meta, kept().flat_map(pages_of)).await?;
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
    let mut cache = PackCache::new(Arc::new(target.clone()), 8);
    let mut used = vec![false; index.packs.len()];
    let mut seen_pages: HashSet<Id> = HashSet::new();
    let mark = |id: &Id, used: &mut [bool]| {
        if let Some(pack) = index.chunks.pack(id) {
            used[pack as usize] = true;
        }
    };
    let pack_at: HashMap<Id, usize> = index
        .packs
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    for s in kept() {
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
        for pid in pages_of(s) {
            if !seen_pages.insert(pid) {
                continue;
            }
            mark(&pid, &mut used);
            let page = Page::load(&mut cache, &index, meta, &pid).await.map_err(|e| {
                OpsError::Integrity(format!(
                    "snapshot {} on target `{}`: {e}; prune deletes nothing until `custos check` passes",
                    s.id, target.name
                ))
            })?;
            match page {
                Page::Groups { groups, .. } => {
                    for g in &groups {
                        g.chunks.iter().for_each(|c| mark(c, &mut used));
                    }
                }
                Page::Files { files, .. } => {
                    for f in &files {
                        f.chunks.iter().for_each(|c| mark(c, &mut used));
                    }
                }
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
