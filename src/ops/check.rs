//! `custos check`: verifies a repository on one target.
//!
//! Structure (always): the marker, every index object, every snapshot, every
//! tree page, and that every chunk a snapshot needs is in the index and its
//! pack exists with the indexed size. With `--read-data`: every pack is
//! downloaded and hashed against its name, its header is opened, and every
//! chunk a snapshot refers to is decrypted, decompressed and checked against
//! its id. Findings name the object; any error makes the check fail.

use super::fetch::PackCache;
use super::restore::{group_keys, GroupKeyProblem};
use super::{OpenRepo, OpsError};
use crate::crypto::{group_key, ChunkKeys, Id};
use crate::policy::Policy;
use crate::progress::Progress;
use crate::repo::index::Index;
use crate::repo::pack::{open_chunk, read_header};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Page;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Info,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The object concerned (`target:path`), or what part of the repository.
    pub object: String,
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub target: String,
    pub read_data: bool,
    pub snapshots: u64,
    pub packs: u64,
    pub chunks_checked: u64,
    pub bytes_read: u64,
    pub groups_shredded: u64,
    pub findings: Vec<Finding>,
    pub ok: bool,
}

pub async fn check(
    policy: &Policy,
    target: Option<&str>,
    read_data: bool,
    progress: Arc<dyn Progress>,
) -> Result<CheckReport, OpsError> {
    let repo = OpenRepo::open(policy, target).await?;
    let OpenRepo {
        target,
        vault,
        meta,
        ..
    } = repo;
    let target = Arc::new(target);
    let mut findings = Vec::new();
    let err = |object: String, message: String, hint: Option<&str>| Finding {
        level: Level::Error,
        object,
        message,
        hint: hint.map(str::to_string),
    };
    let index = Index::load(&target, &meta).await?;
    for (object, why) in &index.broken {
        findings.push(err(
            object.clone(),
            format!("index object unreadable: {why}"),
            Some("the chunks it lists will be stored again by the next backup"),
        ));
    }
    // Packs present on the target.
    let listed: HashMap<String, u64> = target.list("data/").await?.into_iter().collect();
    let mut indexed_packs = HashSet::new();
    for (id, size) in &index.packs {
        let path = crate::repo::pack::pack_path(id);
        indexed_packs.insert(path.clone());
        match listed.get(&path) {
            None => findings.push(err(
                format!("{}:{}", target.name, path),
                "pack missing (listed in the index)".into(),
                Some("restore it from another target (custos replicate) or run a new backup"),
            )),
            Some(s) if s != size => findings.push(err(
                format!("{}:{}", target.name, path),
                format!("pack size {s} differs from the indexed {size} (truncated or replaced)"),
                None,
            )),
            _ => {}
        }
    }
    for path in listed.keys() {
        if !indexed_packs.contains(path) {
            findings.push(Finding {
                level: Level::Info,
                object: format!("{}:{}", target.name, path),
                message: "pack not in any index (left by an interrupted backup); unused".into(),
                hint: None,
            });
        }
    }
    let (snaps, bad) = crate::repo::snapshot::Snapshot::list(&target, &meta).await?;
    for e in bad {
        findings.push(err("snapshot".into(), e.to_string(), None));
    }
    // Which chunks each snapshot needs, with the keys to open them.
    let mut need: HashMap<Id, Arc<ChunkKeys>> = HashMap::new();
    let mut groups_shredded = 0u64;
    progress.phase("checking snapshots", Some(snaps.len() as u64), "snapshots");
    for s in &snaps {
        check_snapshot(
            s,
            &target,
            &meta,
            &vault,
            &index,
            &mut need,
            &mut groups_shredded,
            &mut findings,
        )
        .await;
        progress.advance(1);
    }
    progress.finish_phase();
    let mut chunks_checked = 0u64;
    let mut bytes_read = 0u64;
    if read_data {
        // Group the needed chunks by pack, then read each pack once.
        let mut by_pack: HashMap<u32, Vec<(Id, Arc<ChunkKeys>)>> = HashMap::new();
        for (id, keys) in need {
            if let Some(loc) = index.chunks.get(&id) {
                by_pack.entry(loc.pack).or_default().push((id, keys));
            }
        }
        let mut cache = PackCache::new(target.clone(), 1);
        let total: u64 = index.packs.iter().map(|p| p.1).sum();
        progress.phase("reading packs", Some(total), "bytes");
        for (p, (pid, size)) in index.packs.iter().enumerate() {
            let object = cache.object_name(pid);
            let pack = match cache.pack(*pid, *size).await {
                Ok(b) => b,
                Err(e) => {
                    findings.push(err(object, e.to_string(), Some("repair it from another target (custos replicate --verify) or run a new backup")));
                    continue;
                }
            };
            progress.advance(*size);
            if let Err(e) = read_header(&object, &pack, &meta) {
                findings.push(err(object.clone(), e.to_string(), None));
            }
            for (id, keys) in by_pack.remove(&(p as u32)).unwrap_or_default() {
                let loc = index.chunks[&id];
                let sealed = &pack[loc.offset as usize..(loc.offset + loc.len) as usize];
                chunks_checked += 1;
                if let Err(e) = open_chunk(&keys, &id, sealed, loc.raw_len) {
                    findings.push(err(object.clone(), format!("chunk {id}: {e}"), None));
                }
            }
        }
        bytes_read = cache.fetched;
        progress.finish_phase();
    }
    if groups_shredded > 0 {
        findings.push(Finding {
            level: Level::Info,
            object: "groups".into(),
            message: format!(
                "{groups_shredded} group(s) are unreadable by design: their keys were destroyed (crypto-shredded)"
            ),
            hint: None,
        });
    }
    let ok = !findings.iter().any(|f| f.level == Level::Error);
    Ok(CheckReport {
        target: target.name.clone(),
        read_data,
        snapshots: snaps.len() as u64,
        packs: index.packs.len() as u64,
        chunks_checked,
        bytes_read,
        groups_shredded,
        findings,
        ok,
    })
}

#[allow(clippy::too_many_arguments)]
async fn check_snapshot(
    s: &Snapshot,
    target: &crate::target::Target,
    meta: &crate::crypto::MetaKey,
    vault: &crate::vault::Vault,
    index: &Index,
    need: &mut HashMap<Id, Arc<ChunkKeys>>,
    groups_shredded: &mut u64,
    findings: &mut Vec<Finding>,
) {
    let mut missing = 0u64;
    let mut mismatched = 0u64;
    let mut first_missing = None;
    let mut pages: Vec<(Option<String>, Id)> = Vec::new();
    if let Some(sq) = &s.sqlite {
        for t in &sq.tables {
            for p in &t.pages {
                pages.push((Some(t.name.clone()), *p));
            }
        }
    }
    let files_keys = s.files.as_ref().and_then(|f| {
        vault
            .key(&f.key)
            .map(|k| Arc::new(ChunkKeys::new(&group_key(None, k, "files"))))
    });
    if let Some(f) = &s.files {
        if files_keys.is_none() {
            *groups_shredded += 1;
        }
        for p in &f.pages {
            pages.push((None, *p));
        }
    }
    for (table, pid) in pages {
        let page = match Page::load(target, meta, &pid).await {
            Ok(p) => p,
            Err(e) => {
                findings.push(Finding {
                    level: Level::Error,
                    object: format!("{}:{}", target.name, crate::repo::tree::tree_path(&pid)),
                    message: format!("snapshot {}: {e}", s.id),
                    hint: None,
                });
                continue;
            }
        };
        let mut note = |id: &Id, keys: &Arc<ChunkKeys>| {
            if !index.chunks.contains_key(id) {
                missing += 1;
                first_missing.get_or_insert(*id);
            } else {
                need.entry(*id).or_insert_with(|| keys.clone());
            }
        };
        match page {
            Page::Groups { groups, .. } => {
                let table = table.unwrap_or_default();
                for g in &groups {
                    match group_keys(vault, g, &table) {
                        Ok(k) => {
                            let k = Arc::new(k);
                            for c in &g.chunks {
                                note(c, &k);
                            }
                        }
                        Err(GroupKeyProblem::Shredded) => *groups_shredded += 1,
                        Err(GroupKeyProblem::Mismatch) => mismatched += 1,
                    }
                }
            }
            Page::Files { files, .. } => {
                if let Some(k) = &files_keys {
                    for f in &files {
                        for c in &f.chunks {
                            note(c, k);
                        }
                    }
                }
            }
        }
    }
    if mismatched > 0 {
        findings.push(Finding {
            level: Level::Error,
            object: format!("{}:snapshots/{}", target.name, s.id),
            message: format!("{mismatched} group(s) do not match the keys they name (damaged or hostile manifest)"),
            hint: None,
        });
    }
    if missing > 0 {
        findings.push(Finding {
            level: Level::Error,
            object: format!("{}:snapshots/{}", target.name, s.id),
            message: format!(
                "{missing} chunk(s) this snapshot needs are in no index (first: {})",
                first_missing.unwrap()
            ),
            hint: Some("repair from another target (custos replicate --verify)".into()),
        });
    }
}
