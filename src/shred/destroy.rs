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

use super::ledger::JournalEntry;
use super::{ShredError, Unit};
use crate::crypto::MetaKey;
use crate::ops::restore::{group_keys, GroupKeyProblem};
use crate::policy::Policy;
use crate::repo::cache::PackCache;
use crate::repo::index::Index;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Page;
use crate::vault::{AbsenceReport, DestroyReport, KeyId, Vault, VaultError};
use serde::Serialize;
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
        if let Err(e) = scan_target(policy, t, &fresh, &j.key_ids, &mut cov).await {
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
        {
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
        }
        if let Some(fs) = &snap.files {
            if ids.contains(&fs.key) {
                affected = true;
                cov.groups += 1;
                if vault.key(&fs.key).is_none() {
                    cov.groups_unreadable += 1;
                }
            }
        }
        if affected {
            cov.snapshots_affected.push(snap.id.clone());
        }
    }
    Ok(())
}
