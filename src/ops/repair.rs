//! `check --repair-index`: index objects rebuilt from their packs.
//!
//! A pack's header holds, sealed under the metadata key, the same entry
//! table its index object holds (docs/FORMAT.md, "Packs" and "Index
//! objects"). So an index object that is missing or unreadable, while its
//! pack is whole, can be written again from the pack alone: the pack is
//! read, hashed against its name, its header opened and checked, and the
//! index object stored. Nothing is deleted and no pack is written; a pack
//! that is itself damaged is reported and left as it is.
//!
//! The repair holds the target's backup lock, so that it never races a
//! backup that is writing the index object of a pack it just uploaded.

use super::lock::BackupLock;
use super::{MetaRepo, OpsError};
use crate::crypto::Id;
use crate::policy::Policy;
use crate::repo::index::{index_path, Index, IndexFile};
use crate::repo::pack::read_header;
use serde::Serialize;
use std::collections::HashSet;

/// What `repair_index` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    pub target: String,
    /// Index objects written again (`index/<pack id>`).
    pub rebuilt: Vec<String>,
    /// Packs whose index object could not be rebuilt, and why.
    pub unrepairable: Vec<Unrepairable>,
}

/// A pack whose index object could not be rebuilt.
#[derive(Clone, Debug, Serialize)]
pub struct Unrepairable {
    pub object: String,
    pub why: String,
}

/// Rebuilds, on one target, every index object that is missing or
/// unreadable from its pack's header.
pub async fn repair_index(policy: &Policy, target: Option<&str>) -> Result<RepairReport, OpsError> {
    let repo = MetaRepo::open(policy, target).await?;
    let lock = BackupLock::acquire(&repo.target).await?;
    let r = run(&repo).await;
    let released = lock.release(&repo.target).await;
    let report = r?;
    released?;
    Ok(report)
}

async fn run(repo: &MetaRepo) -> Result<RepairReport, OpsError> {
    let (target, meta) = (&repo.target, &repo.meta);
    let index = Index::load_packs(target, meta).await?;
    let indexed: HashSet<Id> = index.packs.iter().map(|(id, _)| *id).collect();
    let mut report = RepairReport {
        target: target.name.clone(),
        ..RepairReport::default()
    };
    let mut unindexed: Vec<(String, Id)> = target
        .list("data/")
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let id = Id::from_hex(path.rsplit('/').next()?)?;
            (!indexed.contains(&id)).then_some((path, id))
        })
        .collect();
    unindexed.sort();
    let whole: HashSet<Id> = unindexed.iter().map(|(_, id)| *id).collect();
    for (path, id) in unindexed {
        let object = format!("{}:{path}", target.name);
        let bytes = target.get(&path).await?;
        let unrepairable = |why: String| Unrepairable {
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
        file.store(target, meta).await?;
        tracing::warn!(target = %target.name, object = %index_path(&id), "index object rebuilt from its pack");
        report.rebuilt.push(index_path(&id));
    }
    // An unreadable index object whose pack is gone names nothing that
    // can be rebuilt.
    for (object, why) in &index.broken {
        let name = object.rsplit('/').next().unwrap_or("");
        if Id::from_hex(name).is_some_and(|id| !whole.contains(&id)) {
            report.unrepairable.push(Unrepairable {
                object: object.clone(),
                why: format!("unreadable ({why}) and its pack is missing"),
            });
        }
    }
    Ok(report)
}
