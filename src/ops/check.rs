//! `custos check`: verifies a repository on one target.
//!
//! Structure (always): the marker, every index object, every snapshot, every
//! tree page, and that every chunk a snapshot needs is in the index and its
//! pack exists with the indexed size. With `--read-data`: every pack is
//! downloaded and hashed against its name, its header is opened, and every
//! chunk a snapshot refers to is decrypted, decompressed and checked against
//! its id. Findings name the object; any error makes the check fail.

use super::restore::{group_keys, GroupKeyProblem};
use super::{OpenRepo, OpsError};
use crate::crypto::{group_key, ChunkKeys, Id};
use crate::policy::Policy;
use crate::progress::Progress;
use crate::repo::cache::PackCache;
use crate::repo::index::Index;
use crate::repo::pack::{open_chunk, read_header, Codec};
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

/// What to do about a missing or damaged pack.
const PACK_HINT: &str = "copy the pack from another target's copy of this repository, \
or delete its index object (index/<pack id>) so that the next backup stores its chunks again";

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
                Some(PACK_HINT),
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
    let (snaps, bad) = crate::repo::snapshot::Snapshot::list_with_ids(&target, &meta).await?;
    for (id, e) in bad {
        findings.push(err(
            format!(
                "{}:{}",
                target.name,
                crate::repo::snapshot::snapshot_path(&id)
            ),
            e.to_string(),
            None,
        ));
    }
    // Walk every snapshot's groups; with --read-data, open each chunk once
    // through a small cache of whole packs (a pack is hashed against its
    // name and its header opened the first time it is fetched).
    let mut walk = Walk {
        target: target.clone(),
        meta: &meta,
        vault: &vault,
        index: &index,
        read_data,
        cache: PackCache::new(target.clone(), 16),
        codec: Codec::new(3),
        verified: vec![0u64; index.chunks.len().div_ceil(64)],
        headers_checked: HashSet::new(),
        groups_shredded: 0,
        chunks_checked: 0,
        findings: Vec::new(),
    };
    progress.phase("checking snapshots", Some(snaps.len() as u64), "snapshots");
    for s in &snaps {
        walk.snapshot(s).await;
        progress.advance(1);
    }
    progress.finish_phase();
    if read_data {
        // Packs no snapshot needed are still hashed and their headers opened.
        let total: u64 = index.packs.iter().map(|p| p.1).sum();
        progress.phase("reading the other packs", Some(total), "bytes");
        for (pid, size) in &index.packs {
            if !walk.headers_checked.contains(pid) {
                walk.fetch_pack(*pid, *size).await;
            }
            progress.advance(*size);
        }
        progress.finish_phase();
    }
    let groups_shredded = walk.groups_shredded;
    let chunks_checked = walk.chunks_checked;
    let bytes_read = walk.cache.fetched;
    findings.append(&mut walk.findings);
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

struct Walk<'a> {
    target: Arc<crate::target::Target>,
    meta: &'a crate::crypto::MetaKey,
    vault: &'a crate::vault::Vault,
    index: &'a Index,
    read_data: bool,
    cache: PackCache,
    codec: Codec,
    /// One bit per index entry: chunks already opened.
    verified: Vec<u64>,
    headers_checked: HashSet<Id>,
    groups_shredded: u64,
    chunks_checked: u64,
    findings: Vec<Finding>,
}

impl Walk<'_> {
    fn error(&mut self, object: String, message: String, hint: Option<&str>) {
        self.findings.push(Finding {
            level: Level::Error,
            object,
            message,
            hint: hint.map(str::to_string),
        });
    }

    /// Fetches a pack (verified against its name) and opens its header.
    async fn fetch_pack(&mut self, pid: Id, size: u64) -> bool {
        let object = self.cache.object_name(&pid);
        match self.cache.pack(pid, size).await {
            Ok(pack) => {
                if self.headers_checked.insert(pid) {
                    if let Err(e) = read_header(&object, &pack, self.meta) {
                        self.error(object, e.to_string(), None);
                    }
                }
                true
            }
            Err(e) => {
                if self.headers_checked.insert(pid) {
                    self.error(object, e.to_string(), Some(PACK_HINT));
                }
                false
            }
        }
    }

    /// Checks one chunk: indexed, and with read_data, authentic.
    async fn chunk(&mut self, id: &Id, keys: &ChunkKeys) -> bool {
        let Some(pos) = self.index.chunks.position(id) else {
            return false;
        };
        let loc = self.index.chunks[id];
        let (word, bit) = (pos / 64, 1u64 << (pos % 64));
        if !self.read_data || self.verified[word] & bit != 0 {
            return true;
        }
        let (pid, size) = self.index.pack_of(&loc);
        if !self.fetch_pack(pid, size).await {
            return true; // reported once for the pack
        }
        let object = self.cache.object_name(&pid);
        match self.cache.blob(self.index, &loc).await {
            Ok(sealed) => {
                self.chunks_checked += 1;
                if let Err(e) = open_chunk(&mut self.codec, keys, id, &sealed, loc.raw_len) {
                    self.error(object, format!("chunk {id}: {e}"), None);
                }
            }
            Err(e) => self.error(object, e.to_string(), None),
        }
        self.verified[word] |= bit;
        true
    }

    async fn snapshot(&mut self, s: &Snapshot) {
        let mut missing = 0u64;
        let mut mismatched = 0u64;
        let mut first_missing = None;
        let mut pages: Vec<(Option<String>, Id)> = Vec::new();
        for t in s.record_tables() {
            for p in &t.pages {
                pages.push((Some(t.name.clone()), *p));
            }
        }
        let files_keys = s.files.as_ref().and_then(|f| {
            self.vault
                .key(&f.key)
                .map(|k| ChunkKeys::new(&group_key(None, k, "files")))
        });
        if let Some(f) = &s.files {
            if files_keys.is_none() {
                self.groups_shredded += 1;
            }
            for p in &f.pages {
                pages.push((None, *p));
            }
        }
        for (table, pid) in pages {
            let page = match Page::load(&mut self.cache, self.index, self.meta, &pid).await {
                Ok(p) => p,
                Err(e) => {
                    let object = format!("{}:snapshots/{}", self.target.name, s.id);
                    self.error(object, e.to_string(), None);
                    continue;
                }
            };
            match page {
                Page::Groups { groups, .. } => {
                    let table = table.unwrap_or_default();
                    for g in &groups {
                        match group_keys(self.vault, g, &table) {
                            Ok(k) => {
                                for c in &g.chunks {
                                    if !self.chunk(c, &k).await {
                                        missing += 1;
                                        first_missing.get_or_insert(*c);
                                    }
                                }
                            }
                            Err(GroupKeyProblem::Shredded) => self.groups_shredded += 1,
                            Err(GroupKeyProblem::Mismatch) => mismatched += 1,
                        }
                    }
                }
                Page::Files { files, .. } => {
                    if let Some(k) = &files_keys {
                        for f in &files {
                            for c in &f.chunks {
                                if !self.chunk(c, k).await {
                                    missing += 1;
                                    first_missing.get_or_insert(*c);
                                }
                            }
                        }
                    }
                }
            }
        }
        let object = format!("{}:snapshots/{}", self.target.name, s.id);
        if mismatched > 0 {
            self.error(
                object.clone(),
                format!("{mismatched} group(s) do not match the keys they name (damaged or hostile manifest)"),
                None,
            );
        }
        if missing > 0 {
            self.error(
                object,
                format!(
                    "{missing} chunk(s) this snapshot needs are in no index (first: {})",
                    first_missing.unwrap()
                ),
                Some("copy the packs from another target's copy of this repository; until then restore from that target (--target)"),
            );
        }
    }
}
