//! `check --repair-index`: the index made to match the packs that are
//! whole.
//!
//! A pack's header holds, sealed under the metadata key, the same entry
//! table its index object holds (docs/FORMAT.md, "Packs" and "Index
//! objects"). So an index object that is missing or unreadable, while its
//! pack is whole, can be written again from the pack alone: the pack is
//! read, hashed against its name, its header opened and checked, and the
//! index object stored.
//!
//! The other way round, the index object of a pack that is missing, or
//! damaged (its size or its hash is not what its name says, read twice),
//! is deleted: its chunks are then in no index, so the next backup stores
//! the rows they held again, in new packs, and its snapshot restores. The
//! damaged pack itself is left where it is (`check` names it as a pack in
//! no index, prune deletes it later), and a pack whose index object was
//! dropped by mistake gets it back from this same repair as long as the
//! pack is there. Snapshots taken before keep naming the lost chunks and
//! still fail to restore those rows; `replicate --verify` repairs the pack
//! from a good copy where there is one (and copies its index object back).
//!
//! The repair holds the target's backup lock, so that it never races a
//! backup that is writing the index object of a pack it just uploaded.

use super::lock::BackupLock;
use super::{MetaRepo, OpsError};
use crate::crypto::Id;
use crate::policy::Policy;
use crate::repo::index::{index_path, Index, IndexFile};
use crate::repo::marker::FormatRaise;
use crate::repo::pack::read_header;
use crate::target::Target;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What `repair_index` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    pub target: String,
    /// Index objects written again (`index/<pack id>`).
    pub rebuilt: Vec<String>,
    /// Index objects deleted because their pack is missing or damaged
    /// (`index/<pack id>`), with why.
    pub dropped: Vec<ObjectWhy>,
    /// Packs whose index object could not be rebuilt (`<target>:data/…`),
    /// and unreadable index objects whose pack is gone, with why.
    pub unrepairable: Vec<ObjectWhy>,
}

/// An object and what became of it, or why not.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectWhy {
    pub object: String,
    pub why: String,
}

/// On one target: rebuilds every index object that is missing or
/// unreadable from its pack's header, and drops the index object of every
/// pack that is missing or damaged (see the module docs).
pub async fn repair_index(policy: &Policy, target: Option<&str>) -> Result<RepairReport, OpsError> {
    let repo = MetaRepo::open(policy, target).await?;
    let lock = BackupLock::acquire(&repo.target).await?;
    let r = run(&repo, &lock).await;
    let released = lock.release(&repo.target).await;
    let report = r?;
    released?;
    Ok(report)
}

/// Why the pack at `path` is not whole (`None` if it is): missing, of
/// another size than indexed, or not hashing to its name. `listed` is its
/// size in the target's listing. Damage is confirmed by a second look (a
/// read that fails in passing is not damage).
async fn damage_of(
    target: &crate::target::Target,
    path: &str,
    id: &Id,
    size: u64,
    listed: Option<u64>,
) -> Result<Option<String>, OpsError> {
    if judge(target, path, id, size, listed).await?.is_none() {
        return Ok(None);
    }
    judge(target, path, id, size, target.head(path).await?).await
}

/// One look at a pack seen with size `seen` (`None`: not there).
async fn judge(
    target: &crate::target::Target,
    path: &str,
    id: &Id,
    size: u64,
    seen: Option<u64>,
) -> Result<Option<String>, OpsError> {
    Ok(match seen {
        None => Some("the pack is missing".to_string()),
        Some(n) if n != size => Some(format!("the pack holds {n} bytes, not the indexed {size}")),
        Some(_) => {
            let bytes = target.get(path).await?;
            (Id::hash(&bytes) != *id)
                .then(|| "the pack does not hash to its name (damaged)".to_string())
        }
    })
}

/// Stops the repair before it writes or deletes an object if its backup
/// lock was taken over (a lock left for 6 hours may be, FORMAT.md 5).
async fn still_held(lock: &BackupLock, target: &Target) -> Result<(), OpsError> {
    if lock.held(target).await? {
        return Ok(());
    }
    Err(OpsError::Integrity(format!(
        "target `{}`: the repair lost the backup lock (taken over by another process) and stopped; run it again",
        target.name
    )))
}

async fn run(repo: &MetaRepo, lock: &BackupLock) -> Result<RepairReport, OpsError> {
    let (target, meta) = (&repo.target, &repo.meta);
    // Rebuilt index objects are of this build's format.
    let format = FormatRaise::new(repo.marker.clone());
    let index = Index::load_packs(target, meta).await?;
    let indexed: HashSet<Id> = index.packs.iter().map(|(id, _)| *id).collect();
    let listed: HashMap<String, u64> = target.list("data/").await?.into_iter().collect();
    let mut report = RepairReport {
        target: target.name.clone(),
        ..RepairReport::default()
    };
    // Index objects of packs that are missing or damaged: dropped.
    let mut dropped = HashSet::new();
    for (id, size) in &index.packs {
        let path = crate::repo::pack::pack_path(id);
        let seen = listed.get(&path).copied();
        let Some(why) = damage_of(target, &path, id, *size, seen).await? else {
            continue;
        };
        let object = index_path(id);
        still_held(lock, target).await?;
        target.delete(&object).await?;
        tracing::warn!(target = %target.name, %object, %why, "index object dropped: its pack is not whole");
        report.dropped.push(ObjectWhy { object, why });
        dropped.insert(*id);
    }
    // Packs in no index (their index object missing or unreadable):
    // rebuilt from their headers.
    let mut unindexed: Vec<(String, Id)> = listed
        .into_keys()
        .filter_map(|path| {
            let id = Id::from_hex(path.rsplit('/').next()?)?;
            (!indexed.contains(&id) && !dropped.contains(&id)).then_some((path, id))
        })
        .collect();
    unindexed.sort();
    let present: HashSet<Id> = unindexed.iter().map(|(_, id)| *id).collect();
    for (path, id) in unindexed {
        let object = format!("{}:{path}", target.name);
        let bytes = target.get(&path).await?;
        let unrepairable = |why: String| ObjectWhy {
            object: object.clone(),
            why,
        };
        if Id::hash(&bytes) != id {
            report.unrepairable.push(unrepairable(
                "the pack does not hash to its name (damaged): repair it from another target with `custos replicate --verify`".into(),
            ));
            continue;
        }
        let entries = match read_header(&object, &bytes, meta) {
            Ok(e) => e,
            Err(e) => {
                report.unrepairable.push(unrepairable(e.to_string()));
                continue;
            }
        };
        let file = IndexFile {
            pack: id,
            pack_size: bytes.len() as u64,
            entries,
        };
        still_held(lock, target).await?;
        format.before_write(target).await?;
        file.store(target, meta).await?;
        tracing::warn!(target = %target.name, object = %index_path(&id), "index object rebuilt from its pack");
        report.rebuilt.push(index_path(&id));
    }
    // An unreadable index object whose pack is gone names nothing that
    // can be rebuilt.
    for (object, why) in &index.broken {
        let name = object.rsplit('/').next().unwrap_or("");
        if Id::from_hex(name).is_some_and(|id| !present.contains(&id)) {
            report.unrepairable.push(ObjectWhy {
                object: object.clone(),
                why: format!("unreadable ({why}) and its pack is missing"),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::S3Settings;

    #[tokio::test]
    async fn a_repair_whose_lock_was_taken_over_stops_before_writing() {
        let url = "memory://repair-lock-taken-over";
        let target = Target::open("t", url, false, &S3Settings::default(), true).unwrap();
        let lock = BackupLock::acquire(&target).await.unwrap();
        still_held(&lock, &target).await.unwrap();
        // Another process takes the lock over as stale.
        let other = super::super::lock::LockInfo {
            token: "another process".into(),
            ..lock.info().clone()
        };
        target
            .put(
                super::super::lock::LOCK_PATH,
                serde_json::to_vec(&other).unwrap().into(),
            )
            .await
            .unwrap();
        let e = still_held(&lock, &target).await.unwrap_err();
        assert!(matches!(e, OpsError::Integrity(_)), "{e}");
        assert!(e.to_string().contains("lost the backup lock"), "{e}");
    }
}
