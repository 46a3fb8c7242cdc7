//! Destruction of journalled units and its proof.
//!
//! [`destroy_keys`] deletes each unit's keys from every vault location (or
//! finds them already deleted by an interrupted run) and purges stale
//! vault objects; then it and [`prove`] prove the result three ways, for
//! all the units of a run together:
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
use crate::repo::index::{index_path, key_of, IndexFile};
use crate::repo::pack::pack_path;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{self, Page};
use crate::vault::{AbsenceReport, DestroyReport, KeyId, Vault, VaultError};
use serde::Serialize;
use std::collections::HashMap;
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
        self.targets.iter().fold(0, |n, t| n.saturating_add(t.rows))
    }
}

fn incomplete(unit: &Unit, why: impl Into<String>) -> ShredError {
    ShredError::Incomplete {
        unit: unit.to_string(),
        why: why.into(),
    }
}

/// What deleting one unit's keys from the vault found (the first half of
/// a destruction; [`prove`] is the second).
pub struct KeysGone {
    /// The vault's own report, absent when an earlier run had already
    /// deleted the keys before it was interrupted.
    pub destroy: Option<DestroyReport>,
    /// Stale vault objects deleted (`url: object`).
    pub purged: Vec<String>,
    /// The search of every vault object.
    pub vault: AbsenceReport,
}

/// Deletes the keys of journalled units from every vault location, one
/// unit after the other (or finds them deleted by an interrupted run),
/// purges stale vault objects, then searches every vault object once for
/// the keys of all of them (each unit again alone only if a key is found,
/// to name the unit whose it is). One result per unit, in order; a failure
/// leaves the unit's journal entry in place for the next run.
pub async fn destroy_keys(
    vault: &mut Vault,
    journal: &[&JournalEntry],
) -> Vec<Result<KeysGone, ShredError>> {
    if journal.is_empty() {
        return Vec::new();
    }
    // Per unit: the vault's report and the decoded commitments.
    type Deleted = (Option<DestroyReport>, Vec<[u8; 32]>);
    let mut done: Vec<Result<Deleted, ShredError>> = Vec::new();
    for j in journal {
        let unit = &j.request.unit;
        let destroy = match vault.destroy(unit.kind, &unit.name).await {
            Ok(r) => Some(r),
            Err(VaultError::UnknownKey { .. }) => None, // an earlier run got this far
            Err(e) => {
                done.push(Err(incomplete(unit, format!("deleting the key: {e}"))));
                continue;
            }
        };
        let mut commitments = Vec::with_capacity(j.commitments.len());
        let mut bad = false;
        for c in &j.commitments {
            let mut b = [0u8; 32];
            bad |= hex::decode_to_slice(c, &mut b).is_err();
            commitments.push(b);
        }
        done.push(if bad {
            Err(incomplete(
                unit,
                "a journalled commitment is not 64 hex digits",
            ))
        } else {
            Ok((destroy, commitments))
        });
    }
    let searched = async {
        let purged = vault.purge_stale().await?;
        let mut ids = Vec::new();
        let mut commitments = Vec::new();
        for (j, d) in journal.iter().zip(&done) {
            if let Ok((_, c)) = d {
                ids.extend(j.key_ids.iter().copied());
                commitments.extend(c.iter().copied());
            }
        }
        let all = vault.verify_absent(&ids, &commitments).await?;
        Ok::<_, ShredError>((purged, all))
    }
    .await;
    let (purged, all) = match searched {
        Ok(x) => x,
        Err(e) => {
            let why = e.to_string();
            return journal
                .iter()
                .zip(done)
                .map(|(j, d)| {
                    d.and_then(|_| {
                        Err(incomplete(
                            &j.request.unit,
                            format!("searching the vault: {why}"),
                        ))
                    })
                })
                .collect();
        }
    };
    let mut out = Vec::with_capacity(journal.len());
    for (j, d) in journal.iter().zip(done) {
        let (destroy, commitments) = match d {
            Ok(x) => x,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        let abs = if all.holders.is_empty() {
            all.clone()
        } else {
            match vault.verify_absent(&j.key_ids, &commitments).await {
                Ok(a) => a,
                Err(e) => {
                    out.push(Err(e.into()));
                    continue;
                }
            }
        };
        if !abs.holders.is_empty() {
            out.push(Err(incomplete(
                &j.request.unit,
                format!("the key is still held by {}", abs.holders.join(", ")),
            )));
            continue;
        }
        out.push(Ok(KeysGone {
            destroy,
            purged: purged.clone(),
            vault: abs,
        }));
    }
    out
}

/// Proves the destruction of units whose keys [`destroy_keys`] deleted
/// (see the module docs), all of them together: the vault is opened afresh
/// once, and each target's snapshots are walked and its index objects read
/// once for every unit, not once a unit (a retention run may destroy
/// hundreds). `targets` are the policy's targets, opened, in the policy's
/// order. One result per unit, in order; a unit that fails keeps its
/// journal entry, and no pack is deleted for it on a later target. The
/// vault opened afresh is given back (`None` if it could not be opened,
/// when every unit failed), for the caller to go on with.
pub async fn prove(
    policy: &Policy,
    targets: &[crate::target::Target],
    units: Vec<(&JournalEntry, KeysGone)>,
) -> (Vec<Result<Outcome, ShredError>>, Option<Vault>) {
    if units.is_empty() {
        return (Vec::new(), None);
    }
    let fresh = match crate::ops::open_vault(policy).await {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            let failed = units
                .iter()
                .map(|(j, _)| {
                    Err(incomplete(
                        &j.request.unit,
                        format!("opening the vault afresh: {why}"),
                    ))
                })
                .collect();
            return (failed, None);
        }
    };
    // The units' keys the fresh vault holds, fenced or not, by id and by
    // name, in one pass.
    let named = fresh.key_ids_of(
        units
            .iter()
            .map(|(j, _)| (j.request.unit.kind, j.request.unit.name.as_str())),
    );
    let mut failed: Vec<Option<ShredError>> = units
        .iter()
        .map(|(j, _)| {
            let unit = &j.request.unit;
            let still = j.key_ids.iter().any(|k| fresh.entry(k).is_some())
                || named.contains_key(&(unit.kind, unit.name.clone()));
            still.then(|| {
                incomplete(
                    unit,
                    "a vault opened afresh from every location still has a key of the unit",
                )
            })
        })
        .collect();
    let ids: Vec<&[KeyId]> = units.iter().map(|(j, _)| &j.key_ids[..]).collect();
    let mut covs: Vec<Vec<TargetCoverage>> = units.iter().map(|_| Vec::new()).collect();
    for (t, target) in policy.targets.iter().zip(targets) {
        let mut scan = Scan::new(t, &ids);
        if let Err(e) = scan_target(target, &fresh, &mut scan).await {
            for c in &mut scan.covs {
                c.error = Some(e.to_string());
            }
        }
        let Scan {
            covs: mut these,
            chunks,
            ..
        } = scan;
        for (u, cov) in these.iter().enumerate() {
            if failed[u].is_none() && cov.groups_unreadable != cov.groups {
                failed[u] = Some(incomplete(
                    &units[u].0.request.unit,
                    format!(
                        "on target `{}`, {} of {} groups of the unit still resolve to a key",
                        t.name,
                        cov.groups - cov.groups_unreadable,
                        cov.groups
                    ),
                ));
            }
        }
        let scanned = these.iter().all(|c| c.error.is_none());
        if scanned {
            // Units that failed keep their packs (the next run retries).
            let live: Vec<usize> = (0..units.len()).filter(|u| failed[*u].is_none()).collect();
            if let Err(e) = delete_unit_packs(t, target, &fresh, &chunks, &live, &mut these).await {
                for u in &live {
                    these[*u].residual = Residual {
                        remains: true,
                        why: format!(
                            "deleting the unit's packs failed ({e}); they stay, unreadable, until the snapshots holding them are forgotten and pruned"
                        ),
                    };
                }
            }
        } else {
            for c in &mut these {
                c.residual = Residual {
                    remains: true,
                    why: "the target could not be fully read, so no pack was deleted; its ciphertext of the unit stays, unreadable, until the snapshots holding it are forgotten and pruned".into(),
                };
            }
        }
        for (u, cov) in these.into_iter().enumerate() {
            covs[u].push(cov);
        }
    }
    let outcomes = units
        .into_iter()
        .zip(covs)
        .zip(failed)
        .map(|(((_, gone), targets), failed)| match failed {
            Some(e) => Err(e),
            None => Ok(Outcome {
                destroy: gone.destroy,
                purged: gone.purged,
                vault: gone.vault,
                reopened_without_keys: true,
                targets,
            }),
        })
        .collect();
    (outcomes, Some(fresh))
}

/// The walk of one target for several units at once.
struct Scan<'a> {
    target: &'a crate::policy::TargetConfig,
    /// Each key id's unit (a key belongs to one unit).
    of_key: HashMap<KeyId, u32>,
    covs: Vec<TargetCoverage>,
    /// Every chunk of the units' groups in any snapshot of the target, with
    /// its units: a group has a time key and may have a subject key, so it
    /// can be of two units (the second `NO_UNIT` when it is of one).
    /// Keyed as index entries name chunks (the id's first 16 bytes,
    /// [`key_of`]).
    chunks: HashMap<u128, [u32; 2]>,
}

/// The empty place of [`Scan::chunks`]'s second unit.
const NO_UNIT: u32 = u32::MAX;

impl<'a> Scan<'a> {
    fn new(t: &'a crate::policy::TargetConfig, ids: &[&[KeyId]]) -> Scan<'a> {
        let mut of_key = HashMap::new();
        for (u, keys) in ids.iter().enumerate() {
            for k in keys.iter() {
                of_key.insert(*k, u as u32);
            }
        }
        let cov = TargetCoverage {
            name: t.name.clone(),
            url: crate::target::redact_url(&t.url),
            offsite: t.offsite,
            worm: t.worm,
            ..Default::default()
        };
        Scan {
            target: t,
            of_key,
            covs: vec![cov; ids.len()],
            chunks: HashMap::new(),
        }
    }

    /// The units a group sealed under time key `t` and subject key `s` is
    /// of: one or two (`NO_UNIT` in the second place when one), or none.
    fn units_of(&self, t: &KeyId, s: Option<&KeyId>) -> Option<[u32; 2]> {
        let a = self.of_key.get(t).copied();
        let b = s.and_then(|s| self.of_key.get(s)).copied();
        match (a, b) {
            (Some(a), Some(b)) if a != b => Some([a, b]),
            (Some(u), _) | (None, Some(u)) => Some([u, NO_UNIT]),
            (None, None) => None,
        }
    }

    /// Counts a chunk as of `units`.
    fn add_chunks(&mut self, chunks: &[Id], units: [u32; 2]) {
        for c in chunks {
            self.chunks.insert(key_of(c), units);
        }
    }
}

/// The units in `units` (one or two).
fn each(units: [u32; 2]) -> impl Iterator<Item = usize> {
    units
        .into_iter()
        .filter(|u| *u != NO_UNIT)
        .map(|u| u as usize)
}

/// What one read window adds to a unit's coverage ([`scan_target`]).
#[derive(Clone, Copy, Default)]
struct WindowShare {
    unit: u32,
    groups: u64,
    rows: u64,
    unreadable: u64,
}

/// Names a read window by what decides its groups as they stand: its
/// table, its pages and where its overlays start.
fn window_key(table: &str, pages: &[Id], overlays: &[usize]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(table.len() as u64).to_le_bytes());
    h.update(table.as_bytes());
    h.update(&(pages.len() as u64).to_le_bytes());
    for p in pages {
        h.update(&p.0);
    }
    h.update(&(overlays.len() as u64).to_le_bytes());
    for &o in overlays {
        h.update(&(o as u64).to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// Walks every snapshot of one target and counts each unit's groups.
async fn scan_target(
    target: &crate::target::Target,
    vault: &Vault,
    scan: &mut Scan<'_>,
) -> Result<(), ShredError> {
    let meta = MetaKey::new(vault.meta_key());
    // The snapshots' heads, then one snapshot at a time: a snapshot's page
    // ids are held while it is walked, not every snapshot's at once.
    let (heads, bad) = Snapshot::heads_with_ids(target, &meta)
        .await
        .map_err(crate::ops::OpsError::from)?;
    let mut unreadable: Vec<crate::repo::RepoError> = bad.into_iter().map(|(_, e)| e).collect();
    // The index objects of the packs each window lists, not the target's
    // whole index (about 0.9 GiB in memory at 4 GiB), which is loaded only
    // for a window that lists none or whose list misses a page, and for
    // snapshots of files.
    let mut locate = tree::WindowIndex::new(Arc::new(target.clone()), Arc::new(meta.clone()));
    let mut cache = PackCache::new(Arc::new(target.clone()), 8);
    let name = &scan.target.name;
    // What each read window added, per unit: a child snapshot names most
    // of its parent's windows again (the same pages and overlays, so the
    // same groups, keys and chunks), and is not read again for them.
    let mut seen: HashMap<[u8; 32], Vec<WindowShare>> = HashMap::new();
    for head in &heads {
        let snap = match Snapshot::load(target, &meta, &head.id).await {
            Ok(snap) => snap,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let mut affected = vec![false; scan.covs.len()];
        for c in &mut scan.covs {
            c.snapshots_scanned += 1;
        }
        for table in snap.record_tables() {
            // Window by window: a group an overlay superseded (FORMAT 3.4)
            // is counted once, and its chunks are still the unit's.
            for w in table.page_windows() {
                let pages = &table.pages[w.range];
                let key = window_key(&table.name, pages, &w.overlays);
                if let Some(shares) = seen.get(&key) {
                    for share in shares {
                        let u = share.unit as usize;
                        affected[u] = true;
                        let cov = &mut scan.covs[u];
                        cov.groups += share.groups;
                        cov.rows = cov.rows.saturating_add(share.rows);
                        cov.groups_unreadable += share.unreadable;
                    }
                    continue;
                }
                let mut shares: Vec<WindowShare> = Vec::new();
                let listed = w.mark.and_then(|i| table.windows[i].packs.as_deref());
                let (groups, gone) = locate
                    .load_window(&mut cache, listed, pages, &w.overlays)
                    .await
                    .map_err(crate::ops::OpsError::from)?;
                // The index of the window's packs, built only if a chunk
                // is sampled from it: finding the pages needs only theirs.
                let mut index: Option<Arc<crate::repo::index::Index>> = None;
                for g in &gone {
                    if let Some(us) = scan.units_of(&g.t, g.s.as_ref()) {
                        scan.add_chunks(&g.chunks, us);
                    }
                }
                for g in &groups {
                    let Some(us) = scan.units_of(&g.t, g.s.as_ref()) else {
                        continue;
                    };
                    let shredded = matches!(
                        group_keys(vault, g, &table.name),
                        Err(GroupKeyProblem::Shredded)
                    );
                    scan.add_chunks(&g.chunks, us);
                    for u in each(us) {
                        affected[u] = true;
                        let share = match shares.iter().position(|x| x.unit as usize == u) {
                            Some(k) => &mut shares[k],
                            None => {
                                shares.push(WindowShare {
                                    unit: u as u32,
                                    ..WindowShare::default()
                                });
                                shares.last_mut().expect("just pushed")
                            }
                        };
                        share.groups += 1;
                        share.rows = share.rows.saturating_add(g.rows);
                        share.unreadable += u64::from(shredded);
                        let cov = &mut scan.covs[u];
                        cov.groups += 1;
                        cov.rows = cov.rows.saturating_add(g.rows);
                        if shredded {
                            cov.groups_unreadable += 1;
                        }
                        if cov.sampled_chunks < SAMPLE_CHUNKS as u64 {
                            let index = match &index {
                                Some(index) => index.clone(),
                                None => {
                                    let through = locate
                                        .first(listed)
                                        .await
                                        .map_err(crate::ops::OpsError::from)?;
                                    index.insert(through.index).clone()
                                }
                            };
                            if let Some(loc) = g.chunks.first().and_then(|c| index.chunks.get(c)) {
                                let blob = cache.blob(&index, loc).await.map_err(|e| {
                                    ShredError::Certificate(format!(
                                        "target `{name}`: fetching a sample chunk: {e}"
                                    ))
                                })?;
                                cov.sampled_chunks += 1;
                                cov.sampled_bytes += blob.len() as u64;
                            }
                        }
                    }
                }
                seen.insert(key, shares);
            }
        }
        if let Some(fs) = &snap.files {
            if let Some(us) = scan.units_of(&fs.key, None) {
                let unreadable = vault.key(&fs.key).is_none();
                // Pages of files are in no read window: the whole index.
                let whole = locate.whole().await.map_err(crate::ops::OpsError::from)?;
                for part in fs.pages.chunks(tree::PAGES_AT_ONCE) {
                    let loaded = tree::load_pages(&mut cache, &whole, &meta, part)
                        .await
                        .map_err(crate::ops::OpsError::from)?;
                    for page in &loaded {
                        if let Page::Files { files, .. } = page {
                            for f in files {
                                scan.add_chunks(&f.chunks, us);
                            }
                        }
                    }
                }
                for u in each(us) {
                    affected[u] = true;
                    scan.covs[u].groups += 1;
                    if unreadable {
                        scan.covs[u].groups_unreadable += 1;
                    }
                }
            }
        }
        for (u, a) in affected.into_iter().enumerate() {
            if a {
                scan.covs[u].snapshots_affected.push(snap.id.clone());
            }
        }
    }
    if let Some(e) = unreadable.first() {
        for c in &mut scan.covs {
            c.error = Some(format!(
                "{} snapshot object(s) unreadable (first: {e})",
                unreadable.len()
            ));
        }
    }
    Ok(())
}

/// Deletes, on one target, the packs that hold only chunks of one unit
/// (`chunks`: every chunk of the units' groups in any snapshot of the
/// target, with its units, as [`Scan::chunks`]; `live`: the units to do
/// this for), and records what remains in each `covs[u].residual`.
///
/// Every index object is read afresh, once for all the units, and its
/// entry table compared with each unit's chunks: a pack all of whose
/// chunks belong to a unit is that unit's alone; a pack with some is
/// shared and kept. Should a pack be wholly of two units (a subject's
/// groups of a period, both destroyed), it is counted and deleted for the
/// first, as if the units had been destroyed one after the other. The
/// caller holds the backup lock of the target, so no backup adds to or
/// relies on these packs meanwhile. Each pack goes as prune deletes one:
/// its index object first, then the pack, so an interruption leaves at
/// most a pack in no index (deleted by the next prune). Nothing is deleted
/// from a `worm` target.
async fn delete_unit_packs(
    t: &crate::policy::TargetConfig,
    target: &crate::target::Target,
    vault: &Vault,
    chunks: &HashMap<u128, [u32; 2]>,
    live: &[usize],
    covs: &mut [TargetCoverage],
) -> Result<(), ShredError> {
    let mut is_live = vec![false; covs.len()];
    let mut has_chunks = vec![false; covs.len()];
    for &u in live {
        is_live[u] = true;
    }
    for us in chunks.values() {
        for u in each(*us) {
            has_chunks[u] = true;
        }
    }
    let with_chunks: Vec<usize> = live.iter().copied().filter(|u| has_chunks[*u]).collect();
    for &u in live.iter().filter(|u| !has_chunks[**u]) {
        covs[u].residual = Residual {
            remains: false,
            why: "no chunk of the unit is stored on this target".into(),
        };
    }
    if with_chunks.is_empty() {
        return Ok(());
    }
    let meta = MetaKey::new(vault.meta_key());
    // Per unit: packs it owns (id, size), packs it shares.
    let mut own: Vec<Vec<(Id, u64)>> = vec![Vec::new(); covs.len()];
    let mut shared = vec![0u64; covs.len()];
    let mut tally: Vec<(u32, usize)> = Vec::new();
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
        tally.clear();
        for e in &f.entries {
            let Some(us) = chunks.get(&e.key()) else {
                continue;
            };
            for u in each(*us).filter(|u| is_live[*u]) {
                let u = u as u32;
                match tally.iter_mut().find(|(v, _)| *v == u) {
                    Some((_, n)) => *n += 1,
                    None => tally.push((u, 1)),
                }
            }
        }
        if tally.is_empty() {
            continue;
        }
        tally.sort_unstable();
        let whole = |n: usize| n == f.entries.len();
        let owner = tally.iter().find(|(_, n)| whole(*n)).map(|(u, _)| *u);
        for &(u, n) in &tally {
            let u = u as usize;
            if whole(n) && (t.worm || owner == Some(u as u32)) {
                own[u].push((f.pack, f.pack_size));
            } else if t.worm || owner.is_none_or(|o| (u as u32) < o) {
                shared[u] += 1;
            }
            // Otherwise an earlier unit owns the pack and deletes it: the
            // units after it would not find it.
        }
    }
    for &u in &with_chunks {
        covs[u].packs_of_unit = own[u].len() as u64;
        covs[u].packs_shared = shared[u];
    }
    if !t.worm {
        for &u in &with_chunks {
            for (pack, size) in &own[u] {
                target.delete(&index_path(pack)).await?;
                target.delete(&pack_path(pack)).await?;
                if target.head(&pack_path(pack)).await?.is_some() {
                    return Err(ShredError::Certificate(format!(
                        "pack {} is still listed on target `{}` after its deletion",
                        pack_path(pack),
                        t.name
                    )));
                }
                covs[u].packs_deleted += 1;
                covs[u].bytes_deleted += size;
            }
        }
    }
    for &u in &with_chunks {
        covs[u].residual = residual(t.worm, covs[u].packs_of_unit, covs[u].packs_shared);
    }
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
