//! Destruction of one journalled unit and its proof.
//!
//! [`destroy_unit`] deletes the unit's keys from every vault location (or
//! finds them already deleted by an interrupted run), purges stale vault
//! objects, then proves the result three ways:
//!
//! * every object at every vault location is listed and every key shard is
//!   unwrapped and searched for the key ids and for any key with one of the
//!   recorded commitments ([`Vault::verify_absent`]);
//! * a vault opened afresh from all locations does not have the keys;
//! * on every target, every snapshot's tree is walked: the groups sealed
//!   under the unit's keys are counted, each must now fail to resolve to a
//!   key through the fresh vault, and a sample of their chunks is fetched to
//!   record what ciphertext remains (unreadable) on the target.
//!
//! Then, on every target where deletion is allowed (not `worm = true`), it
//! deletes the packs that hold only chunks of the unit's groups
//! ([`delete_unit_packs`]): packs are per group family (one time key), so a
//! period or epoch unit usually owns whole packs, while a subject's chunks
//! share packs with other subjects of the same period and stay until the
//! snapshots holding them are forgotten and pruned. The certificate says,
//! per target, what ciphertext remains and why.

use super::ledger::JournalEntry;
use super::{ShredError, Unit};
use crate::crypto::{Id, MetaKey};
use crate::ops::restore::{group_keys, GroupKeyProblem};
use crate::policy::Policy;
use crate::repo::cache::PackCache;
use crate::repo::index::{index_path, Index, IndexFile};
use crate::repo::pack::pack_path;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Page;
use crate::vault::{AbsenceReport, DestroyReport, KeyId, Vault, VaultError};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;

/// How many chunks of the unit are fetched per target as a sample.
pub const SAMPLE_CHUNKS: usize = 3;

/// What one target showed after the destruction.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetCoverage {
    pub name: String,
    /// The target URL, credentials removed.
    pub url: String,
    pub offsite: bool,
    pub snapshots_scanned: u64,
    /// Snapshots holding at least one group of the unit.
    pub snapshots_affected: Vec<String>,
    /// Groups of the unit (over all scanned snapshots; a group kept by
    /// several snapshots counts once per snapshot).
    pub groups: u64,
    /// Rows in those groups.
    pub rows: u64,
    /// Of `groups`, how many no longer resolve to a key: must equal `groups`.
    pub groups_unreadable: u64,
    /// Chunks of the unit fetched as a sample (ciphertext still present).
    pub sampled_chunks: u64,
    pub sampled_bytes: u64,
    /// Why the target could not be verified, if so.
    pub error: Option<String>,
    /// The target is write-once (`worm = true`): nothing is deleted from it.
    pub worm: bool,
    /// Packs that hold only chunks of the unit (deleted unless `worm`).
    pub packs_of_unit: u64,
    /// Of those, the packs deleted by this destruction, and their bytes.
    pub packs_deleted: u64,
    pub bytes_deleted: u64,
    /// Packs holding chunks of the unit and of other units (kept).
    pub packs_shared: u64,
    /// Whether ciphertext of the unit remains on the target, and why.
    pub residual: Residual,
}

/// What ciphertext of a destroyed unit remains on one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Residual {
    /// Unreadable ciphertext of the unit is still stored on the target.
    pub remains: bool,
    /// Why (write-once until lock expiry; shared packs until prune; ...),
    /// or what was removed.
    pub why: String,
}

/// The outcome of destroying one unit.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The vault's own report, absent when an earlier run had already
    /// deleted the keys before it was interrupted.
    pub destroy: Option<DestroyReport>,
    /// Stale vault objects deleted (`url: object`).
    pub purged: Vec<String>,
    /// The search of every vault object.
    pub vault: AbsenceReport,
    /// A vault opened afresh from every location lacks every key.
    pub reopened_without_keys: bool,
    pub targets: Vec<TargetCoverage>,
}

impl Outcome {
    pub fn groups_unreadable(&self) -> u64 {
        self.targets.iter().map(|t| t.groups_unreadable).sum()
    }
    pub fn rows_unreadable(&self) -> u64 {
        self.targets.iter().map(|t| t.rows).sum()
    }
}

fn incomplete(unit: &Unit, why: impl Into<String>) -> ShredError {
    ShredError::Incomplete {
        unit: unit.to_string(),
        why: why.into(),
    }
}

/// Destroys the keys of a journalled unit and proves it (see the module
/// docs). Any failure leaves the journal entry in place for the next run.
pub async fn destroy_unit(
    policy: &Policy,
    vault: &mut Vault,
    j: &JournalEntry,
) -> Result<Outcome, ShredError> {
    let unit = &j.request.unit;
    let destroy = match vault.destroy(unit.kind, &unit.name).await {
        Ok(r) => Some(r),
        Err(VaultError::UnknownKey { .. }) => None, // an earlier run got this far
        Err(e) => return Err(incomplete(unit, format!("deleting the key: {e}"))),
    };
    let purged = vault.purge_stale().await?;
    let mut commitments = Vec::with_capacity(j.commitments.len());
    for c in &j.commitments {
        let mut b = [0u8; 32];
        hex::decode_to_slice(c, &mut b)
            .map_err(|_| incomplete(unit, "a journalled commitment is not 64 hex digits"))?;
        commitments.push(b);
    }
    let abs = vault.verify_absent(&j.key_ids, &commitments).await?;
    if !abs.holders.is_empty() {
        return Err(incomplete(
            unit,
            format!("the key is still held by {}", abs.holders.join(", ")),
        ));
    }

    let fresh = crate::ops::open_vault(policy).await?;
    let still = fresh
        .entries()
        .into_iter()
        .any(|e| j.key_ids.contains(&e.key_id) || (e.kind == unit.kind && e.name == unit.name));
    if still {
        return Err(incomplete(
            unit,
            "a vault opened afresh from every location still has a key of the unit",
        ));
    }

    let mut targets = Vec::new();
    for t in &policy.targets {
        let mut cov = TargetCoverage {
            name: t.name.clone(),
            url: crate::target::redact_url(&t.url),
            offsite: t.offsite,
            ..Default::default()
        };
        let mut chunks = HashSet::new();
        if let Err(e) = scan_target(policy, t, &fresh, &j.key_ids, &mut cov, &mut chunks).await {
            cov.error = Some(e.to_string());
        }
        if cov.groups_unreadable != cov.groups {
            return Err(incomplete(
                unit,
                format!(
                    "on target `{}`, {} of {} groups of the unit still resolve to a key",
                    t.name,
                    cov.groups - cov.groups_unreadable,
                    cov.groups
                ),
            ));
        }
        if cov.error.is_none() {
            if let Err(e) = delete_unit_packs(policy, t, &fresh, &chunks, &mut cov).await {
                cov.residual = Residual {
                    remains: true,
                    why: format!(
                        "deleting the unit's packs failed ({e}); they stay, unreadable, until the snapshots holding them are forgotten and pruned"
                    ),
                };
            }
        } else {
            cov.residual = Residual {
                remains: true,
                why: "the target could not be fully read, so no pack was deleted; its ciphertext of the unit stays, unreadable, until the snapshots holding it are forgotten and pruned".into(),
            };
        }
        targets.push(cov);
    }
    Ok(Outcome {
        destroy,
        purged,
        vault: abs,
        reopened_without_keys: true,
        targets,
    })
}

/// Walks every snapshot of one target and counts the unit's groups.
async fn scan_target(
    policy: &Policy,
    t: &crate::policy::TargetConfig,
    vault: &Vault,
    ids: &[KeyId],
    cov: &mut TargetCoverage,
    chunks: &mut HashSet<Id>,
) -> Result<(), ShredError> {
    let target = crate::ops::open_target(policy, t, false)?;
    let meta = MetaKey::new(vault.meta_key());
    let (snaps, bad) = Snapshot::list(&target, &meta)
        .await
        .map_err(crate::ops::OpsError::from)?;
    if let Some(e) = bad.first() {
        cov.error = Some(format!(
            "{} snapshot object(s) unreadable (first: {e})",
            bad.len()
        ));
    }
    let index = Index::load(&target, &meta)
        .await
        .map_err(crate::ops::OpsError::from)?;
    let mut cache = PackCache::new(Arc::new(target), 8);
    let mut sampled = 0usize;
    for snap in &snaps {
        cov.snapshots_scanned += 1;
        let mut affected = false;
        for table in snap.record_tables() {
            for pid in &table.pages {
                let page = Page::load(&mut cache, &index, &meta, pid)
                    .await
                    .map_err(crate::ops::OpsError::from)?;
                let Page::Groups { groups, .. } = page else {
                    continue;
                };
                for g in &groups {
                    let of_unit =
                        ids.contains(&g.t) || g.s.as_ref().is_some_and(|s| ids.contains(s));
                    if !of_unit {
                        continue;
                    }
                    affected = true;
                    cov.groups += 1;
                    cov.rows += g.rows;
                    chunks.extend(g.chunks.iter().copied());
                    if matches!(
                        group_keys(vault, g, &table.name),
                        Err(GroupKeyProblem::Shredded)
                    ) {
                        cov.groups_unreadable += 1;
                    }
                    if sampled < SAMPLE_CHUNKS {
                        if let Some(loc) = g.chunks.first().and_then(|c| index.chunks.get(c)) {
                            let blob = cache.blob(&index, loc).await.map_err(|e| {
                                ShredError::Certificate(format!(
                                    "target `{}`: fetching a sample chunk: {e}",
                                    t.name
                                ))
                            })?;
                            sampled += 1;
                            cov.sampled_chunks += 1;
                            cov.sampled_bytes += blob.len() as u64;
                        }
                    }
                }
            }
        }
        if let Some(fs) = &snap.files {
            if ids.contains(&fs.key) {
                affected = true;
                cov.groups += 1;
                if vault.key(&fs.key).is_none() {
                    cov.groups_unreadable += 1;
                }
                for pid in &fs.pages {
                    let page = Page::load(&mut cache, &index, &meta, pid)
                        .await
                        .map_err(crate::ops::OpsError::from)?;
                    if let Page::Files { files, .. } = page {
                        for f in &files {
                            chunks.extend(f.chunks.iter().copied());
                        }
                    }
                }
            }
        }
        if affected {
            cov.snapshots_affected.push(snap.id.clone());
        }
    }
    Ok(())
}

/// Deletes, on one target, the packs that hold only chunks of the unit
/// (`chunks`: every chunk of the unit's groups in any snapshot of the
/// target), and records what remains in `cov.residual`.
///
/// Every index object is read afresh and its entry table compared with
/// `chunks`: a pack all of whose chunks belong to the unit is the unit's
/// alone; a pack with some is shared and kept. The caller holds the backup
/// lock of the target, so no backup adds to or relies on these packs
/// meanwhile. Each pack goes as prune deletes one: its index object first,
/// then the pack, so an interruption leaves at most a pack in no index
/// (deleted by the next prune). Nothing is deleted from a `worm` target.
pub async fn delete_unit_packs(
    policy: &Policy,
    t: &crate::policy::TargetConfig,
    vault: &Vault,
    chunks: &HashSet<Id>,
    cov: &mut TargetCoverage,
) -> Result<(), ShredError> {
    cov.worm = t.worm;
    if chunks.is_empty() {
        cov.residual = Residual {
            remains: false,
            why: "no chunk of the unit is stored on this target".into(),
        };
        return Ok(());
    }
    let target = crate::ops::open_target(policy, t, false)?;
    let meta = MetaKey::new(vault.meta_key());
    let mut own: Vec<(Id, u64)> = Vec::new();
    for (path, _) in target.list("index/").await? {
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        let bytes = target.get(&path).await?;
        let object = format!("{}:{}", t.name, path);
        let f = meta
            .open("index", &name, &bytes)
            .map_err(|e| e.to_string())
            .and_then(|b| IndexFile::decode(&object, &b).map_err(|e| e.to_string()))
            .map_err(|why| {
                ShredError::Certificate(format!(
                    "index object {object} is unreadable ({why}); no pack of the target was deleted"
                ))
            })?;
        let of_unit = f.entries.iter().filter(|e| chunks.contains(&e.id)).count();
        if of_unit == 0 {
            continue;
        }
        if of_unit == f.entries.len() {
            own.push((f.pack, f.pack_size));
        } else {
            cov.packs_shared += 1;
        }
    }
    cov.packs_of_unit = own.len() as u64;
    if !t.worm {
        for (pack, size) in &own {
            target.delete(&index_path(pack)).await?;
            target.delete(&pack_path(pack)).await?;
            if target.head(&pack_path(pack)).await?.is_some() {
                return Err(ShredError::Certificate(format!(
                    "pack {} is still listed on target `{}` after its deletion",
                    pack_path(pack),
                    t.name
                )));
            }
            cov.packs_deleted += 1;
            cov.bytes_deleted += size;
        }
    }
    cov.residual = residual(t.worm, cov.packs_of_unit, cov.packs_shared);
    Ok(())
}

/// The residual statement of one target.
fn residual(worm: bool, own: u64, shared: u64) -> Residual {
    let mut why = Vec::new();
    if worm && own > 0 {
        why.push(format!(
            "write-once target: {own} pack(s) holding only the unit's ciphertext are kept, unreadable, until their object lock expires (custos deletes nothing from a `worm` target)"
        ));
    } else if own > 0 {
        why.push(format!(
            "{own} pack(s) holding only the unit's ciphertext were deleted"
        ));
    }
    if shared > 0 {
        why.push(format!(
            "{shared} pack(s) also hold other units' data: the unit's ciphertext in them stays, unreadable, until the snapshots holding it are forgotten and pruned"
        ));
    }
    if own == 0 && shared == 0 {
        why.push("no indexed pack holds the unit's chunks".into());
    }
    Residual {
        remains: shared > 0 || (worm && own > 0),
        why: why.join("; "),
    }
}
