//! `custos check`: verifies a repository on one target.
//!
//! Structure (always): the marker, every index object, every snapshot, every
//! tree page, and that every chunk a snapshot needs is in the index and its
//! pack exists with the indexed size. With `--read-data`: every pack is
//! downloaded and hashed against its name, its header is opened, and every
//! chunk a snapshot refers to is decrypted, decompressed and checked against
//! its id. Findings name the object; any error makes the check fail.

use super::restore::{keys_from_parents, parent_keys, GroupKeyProblem};
use super::{OpenRepo, OpsError};
use crate::crypto::{group_key, ChunkKeys, Id};
use crate::policy::Policy;
use crate::progress::Progress;
use crate::repo::cache::{PackCache, PackProblem};
use crate::repo::index::{Index, PackSet};
use crate::repo::pack::{open_chunk_into, read_header, Codec};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Page;
use bytes::Bytes;
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

/// How `--read-data` batches its work. The defaults suit any repository;
/// tests use tiny bounds to cross every batch and wave boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Chunks queued while walking the trees before they are opened.
    pub chunks: usize,
    /// Bytes of packs handed to the opening threads at once.
    pub wave_bytes: usize,
    /// Threads that open chunks.
    pub threads: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            chunks: BATCH_CHUNKS,
            wave_bytes: WAVE_BYTES,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Checks the repository on `target` (the primary if `None`); with
/// `read_data`, reads and authenticates every pack and chunk.
pub async fn check(
    policy: &Policy,
    target: Option<&str>,
    read_data: bool,
    progress: Arc<dyn Progress>,
) -> Result<CheckReport, OpsError> {
    check_with(policy, target, read_data, Batching::default(), progress).await
}

/// [`check`] with the given batching.
pub async fn check_with(
    policy: &Policy,
    target: Option<&str>,
    read_data: bool,
    batching: Batching,
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
    // Snapshots are read one at a time as they are walked (a target may
    // hold hundreds, each listing tens of thousands of pages); their heads
    // first, to walk them oldest first.
    let (heads, bad) = Snapshot::heads_with_ids(&target, &meta).await?;
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
        cache: PackCache::new(target.clone(), TREE_PACKS),
        data: PackCache::new(target.clone(), 1),
        verified: if read_data {
            vec![0u64; index.chunks.len().div_ceil(64)]
        } else {
            Vec::new()
        },
        queue: Vec::new(),
        opening: None,
        batching: Batching {
            chunks: batching.chunks.max(1),
            wave_bytes: batching.wave_bytes.max(1),
            threads: batching.threads.max(1),
        },
        headers_checked: HashSet::new(),
        pages_seen: HashMap::new(),
        page_packs: HashMap::new(),
        pack_pos: (0u32..)
            .zip(&index.packs)
            .map(|(i, (id, _))| (*id, i))
            .collect(),
        groups_shredded: 0,
        chunks_checked: 0,
        findings: Vec::new(),
    };
    progress.phase("checking snapshots", Some(heads.len() as u64), "snapshots");
    let mut snapshots = 0u64;
    for h in &heads {
        match Snapshot::load(&target, &meta, &h.id).await {
            Ok(s) => {
                walk.snapshot(&s).await;
                snapshots += 1;
            }
            Err(e) => walk.findings.push(err(
                format!(
                    "{}:{}",
                    target.name,
                    crate::repo::snapshot::snapshot_path(&h.id)
                ),
                e.to_string(),
                None,
            )),
        }
        progress.advance(1);
    }
    walk.flush().await;
    walk.collect().await;
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
    let bytes_read = walk.cache.fetched + walk.data.fetched;
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
        snapshots,
        packs: index.packs.len() as u64,
        chunks_checked,
        bytes_read,
        groups_shredded,
        findings,
        ok,
    })
}

/// Packs of tree pages kept while walking. A snapshot's pages were written
/// in the order they are walked, and the reused pages of a child lie in its
/// parent's packs in the same order, so a few suffice: at 1 GiB, 4 read as
/// many bytes as 16, for about 100 MiB less peak memory.
const TREE_PACKS: usize = 4;

/// Chunks queued while walking the trees before they are opened: the queue
/// is sorted by pack, so each pack of a batch is fetched once. About 100
/// bytes a chunk (its id, location and a share of its group's keys).
const BATCH_CHUNKS: usize = 1 << 17;

/// Bytes of packs handed to the opening threads at once. At most two such
/// waves are held (one being opened, one being fetched).
const WAVE_BYTES: usize = 64 << 20;

/// Chunks a thread takes from a wave at a time.
const GRAB: usize = 512;

/// A chunk to open: where it lies and the keys of the group that needs it.
struct Queued {
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
    id: Id,
    keys: Arc<ChunkKeys>,
}

/// Fetched packs and the chunks to open in them, for the opening threads.
struct Wave {
    /// Each pack's bytes (verified against its name) and its object name.
    packs: Vec<(Bytes, String)>,
    /// `(position in packs, chunk)`, in pack order.
    chunks: Vec<(u32, Queued)>,
}

/// What the opening threads found in one wave.
#[derive(Default)]
struct Opened {
    checked: u64,
    /// `(position in the wave, finding)`.
    findings: Vec<(usize, Finding)>,
}

/// Opens every chunk of a wave on `threads` threads, each with its own
/// zstd context; findings come back in the wave's order.
fn open_wave(wave: &Wave, threads: usize) -> Opened {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let work = || {
        let mut codec = Codec::new(3);
        let mut out = Opened::default();
        // Reused from chunk to chunk: the decrypted body and the plaintext.
        let (mut body, mut plain) = (Vec::new(), Vec::new());
        loop {
            let from = next.fetch_add(GRAB, Ordering::Relaxed);
            if from >= wave.chunks.len() {
                break;
            }
            let to = (from + GRAB).min(wave.chunks.len());
            for (i, (p, c)) in wave.chunks[from..to].iter().enumerate() {
                let (pack, object) = &wave.packs[*p as usize];
                let (s, e) = (c.offset as usize, c.offset as usize + c.len as usize);
                out.checked += 1;
                plain.clear();
                let sealed = &pack[s..e];
                if let Err(e) = open_chunk_into(
                    &mut codec, &c.keys, &c.id, sealed, c.raw_len, &mut body, &mut plain,
                ) {
                    out.findings.push((
                        from + i,
                        Finding {
                            level: Level::Error,
                            object: object.clone(),
                            message: format!("chunk {}: {e}", c.id),
                            hint: None,
                        },
                    ));
                }
            }
        }
        out
    };
    let threads = threads.clamp(1, wave.chunks.len().div_ceil(GRAB).max(1));
    let mut all = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for h in handles {
            let o = h.join().expect("a chunk-opening thread panicked");
            all.checked += o.checked;
            all.findings.extend(o.findings);
        }
        all
    });
    all.findings.sort_by_key(|f| f.0);
    all
}

struct Walk<'a> {
    target: Arc<crate::target::Target>,
    meta: &'a crate::crypto::MetaKey,
    vault: &'a crate::vault::Vault,
    index: &'a Index,
    read_data: bool,
    /// Packs holding tree pages.
    cache: PackCache,
    /// Fetches the packs whose chunks are opened (a batch fetches each
    /// once, and none is kept after its wave).
    data: PackCache,
    /// One bit per index entry: chunks already opened or queued.
    verified: Vec<u64>,
    /// Chunks waiting to be opened, at most `batching.chunks`.
    queue: Vec<Queued>,
    /// The wave being opened in the background.
    opening: Option<tokio::task::JoinHandle<Opened>>,
    batching: Batching,
    headers_checked: HashSet<Id>,
    /// Tree pages of groups already walked, under a table name, and what
    /// they gave (see [`PageTally`]).
    pages_seen: HashMap<(Id, String), PageTally>,
    /// Of each tree page of groups walked: the packs holding it and the
    /// chunks of its readable groups (positions in the index's packs),
    /// to check the read windows' pack lists (FORMAT 3.5).
    page_packs: HashMap<Id, Vec<u32>>,
    /// Each pack's position in the index's packs.
    pack_pos: HashMap<Id, u32>,
    groups_shredded: u64,
    chunks_checked: u64,
    findings: Vec<Finding>,
}

/// What walking a tree page of groups found. A page is named by its
/// content, and the vault does not change during a check, so a later
/// snapshot that names the same page under the same table finds the same:
/// it adds the tally instead of deriving every group's keys again (a child
/// snapshot shares most of its pages with its parent).
#[derive(Clone, Copy, Default)]
struct PageTally {
    missing: u64,
    first_missing: Option<Id>,
    mismatched: u64,
    shredded: u64,
}

impl PageTally {
    /// A chunk in no index.
    fn miss(&mut self, chunk: Id) {
        self.missing += 1;
        self.first_missing.get_or_insert(chunk);
    }

    /// Adds what a later page found (its first missing chunk comes after
    /// ours).
    fn add(&mut self, other: &PageTally) {
        self.missing += other.missing;
        self.first_missing = self.first_missing.or(other.first_missing);
        self.mismatched += other.mismatched;
        self.shredded += other.shredded;
    }
}

impl Walk<'_> {
    /// Checks that each read window listing its packs lists every pack
    /// holding its tree pages and the chunks of their readable groups. A
    /// short list is a warning, not an error: a restore reads such a
    /// window through the whole index, with the same result.
    fn window_packs(&mut self, s: &Snapshot, object: &str) {
        let (mut short, mut first) = (0u64, None);
        for t in s.record_tables() {
            let mut at = 0usize;
            for (wi, w) in t.windows.iter().enumerate() {
                let pages = t.pages.get(at..at.saturating_add(w.pages as usize));
                at = at.saturating_add(w.pages as usize);
                let (Some(list), Some(pages)) = (&w.packs, pages) else {
                    continue;
                };
                let listed: HashSet<u32> = list
                    .iter()
                    .filter_map(|p| self.pack_pos.get(p).copied())
                    .collect();
                let missing = pages
                    .iter()
                    .filter_map(|p| self.page_packs.get(p))
                    .flatten()
                    .find(|p| !listed.contains(p));
                if let Some(&p) = missing {
                    short += 1;
                    first.get_or_insert((t.name.clone(), wi, self.index.packs[p as usize].0));
                }
            }
        }
        if let Some((table, wi, pack)) = first {
            self.findings.push(Finding {
                level: Level::Warning,
                object: object.to_string(),
                message: format!(
                    "{short} read window(s) do not list every pack holding their blobs (first: table {table}, window {wi}, pack {pack}); a restore reads them through the whole index"
                ),
                hint: None,
            });
        }
    }

    fn error(&mut self, object: String, message: String, hint: Option<&str>) {
        self.findings.push(Finding {
            level: Level::Error,
            object,
            message,
            hint: hint.map(str::to_string),
        });
    }

    /// Fetches a pack (verified against its name) and opens its header.
    async fn fetch_pack(&mut self, pid: Id, size: u64) -> Option<Bytes> {
        let object = self.data.object_name(&pid);
        match self.data.fetch(pid, size).await {
            Ok(pack) => {
                if self.headers_checked.insert(pid) {
                    if let Err(e) = read_header(&object, &pack, self.meta) {
                        self.error(object, e.to_string(), None);
                    }
                }
                Some(pack)
            }
            Err(e) => {
                if self.headers_checked.insert(pid) {
                    self.error(object, e.to_string(), Some(PACK_HINT));
                }
                None
            }
        }
    }

    /// Checks one chunk: indexed, and with read_data, queued to be opened
    /// once (by the first group that needs it).
    fn chunk(&mut self, id: &Id, keys: &Arc<ChunkKeys>) -> bool {
        self.chunk_at(self.index.chunks.position(id), id, keys)
    }

    /// [`Walk::chunk`] with the id's index position already looked up.
    fn chunk_at(&mut self, pos: Option<usize>, id: &Id, keys: &Arc<ChunkKeys>) -> bool {
        let Some(pos) = pos else {
            return false;
        };
        let (word, bit) = (pos / 64, 1u64 << (pos % 64));
        if !self.read_data || self.verified[word] & bit != 0 {
            return true;
        }
        self.verified[word] |= bit;
        let loc = self.index.chunks.loc_at(pos);
        self.queue.push(Queued {
            pack: loc.pack,
            offset: loc.offset,
            len: loc.len,
            raw_len: loc.raw_len,
            id: *id,
            keys: keys.clone(),
        });
        true
    }

    /// Opens the queued chunks if there are enough of them.
    async fn maybe_flush(&mut self) {
        if self.queue.len() >= self.batching.chunks {
            self.flush().await;
        }
    }

    /// Opens every queued chunk: fetches each pack the batch needs once, in
    /// waves of about `batching.wave_bytes`, each wave opened on every core while
    /// the next is fetched.
    async fn flush(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.sort_unstable_by_key(|c| (c.pack, c.offset));
        let mut wave = Wave {
            packs: Vec::new(),
            chunks: Vec::new(),
        };
        let mut wave_bytes = 0usize;
        let mut current: Option<(u32, Option<u32>)> = None;
        for c in queue {
            let slot = match current {
                Some((p, slot)) if p == c.pack => slot,
                _ => {
                    if wave_bytes >= self.batching.wave_bytes {
                        let full = std::mem::replace(
                            &mut wave,
                            Wave {
                                packs: Vec::new(),
                                chunks: Vec::new(),
                            },
                        );
                        self.dispatch(full).await;
                        wave_bytes = 0;
                    }
                    let (pid, size) = self.index.packs[c.pack as usize];
                    let slot = match self.fetch_pack(pid, size).await {
                        Some(pack) => {
                            wave_bytes += pack.len();
                            wave.packs.push((pack, self.data.object_name(&pid)));
                            Some(wave.packs.len() as u32 - 1)
                        }
                        None => None, // reported once for the pack
                    };
                    current = Some((c.pack, slot));
                    slot
                }
            };
            let Some(slot) = slot else { continue };
            let (pack, object) = &wave.packs[slot as usize];
            let end = c.offset as u64 + c.len as u64;
            if end > pack.len() as u64 {
                let problem = PackProblem::Size {
                    object: object.clone(),
                    got: pack.len() as u64,
                    want: end,
                };
                self.error(object.clone(), problem.to_string(), None);
                continue;
            }
            wave.chunks.push((slot, c));
        }
        if !wave.chunks.is_empty() {
            self.dispatch(wave).await;
        }
    }

    /// Hands a wave to the opening threads, after collecting the previous
    /// one (so at most one wave is opened while the next is fetched).
    async fn dispatch(&mut self, wave: Wave) {
        self.collect().await;
        let threads = self.batching.threads;
        self.opening = Some(tokio::task::spawn_blocking(move || {
            open_wave(&wave, threads)
        }));
    }

    /// Waits for the wave being opened and records what it found.
    async fn collect(&mut self) {
        if let Some(h) = self.opening.take() {
            let opened = h.await.expect("the chunk-opening task panicked");
            self.chunks_checked += opened.checked;
            self.findings
                .extend(opened.findings.into_iter().map(|(_, f)| f));
        }
    }

    async fn snapshot(&mut self, s: &Snapshot) {
        // What this snapshot's pages found, each page's tally added in turn.
        let mut found_here = PageTally::default();
        let mut pages: Vec<(Option<String>, Id)> = Vec::new();
        for t in s.record_tables() {
            for p in &t.pages {
                pages.push((Some(t.name.clone()), *p));
            }
        }
        let files_keys = s.files.as_ref().and_then(|f| {
            self.vault
                .key(&f.key)
                .map(|k| Arc::new(ChunkKeys::new(group_key(None, k, "files"))))
        });
        if let Some(f) = &s.files {
            if files_keys.is_none() {
                self.groups_shredded += 1;
            }
            for p in &f.pages {
                pages.push((None, *p));
            }
        }
        let (mut ids, mut found) = (Vec::new(), Vec::new());
        for (table, pid) in pages {
            let seen_key = table.as_ref().map(|t| (pid, t.clone()));
            if let Some(tally) = seen_key.as_ref().and_then(|k| self.pages_seen.get(k)) {
                found_here.add(tally);
                continue;
            }
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
                    let mut tally = PageTally::default();
                    let mut keyed = Vec::with_capacity(groups.len());
                    // Every parent key first (their look-ups overlap), the
                    // subject keys' bytes prefetched; then the derivations.
                    let parents: Vec<_> = groups
                        .iter()
                        .map(|g| {
                            let p = parent_keys(self.vault, g);
                            if let Ok((Some(s), _)) = &p {
                                crate::prefetch::line(s.expose());
                            }
                            p
                        })
                        .collect();
                    for (g, p) in groups.iter().zip(parents) {
                        match p.and_then(|p| keys_from_parents(p, g, &table)) {
                            Ok(k) => keyed.push((Arc::new(k), &g.chunks)),
                            Err(GroupKeyProblem::Shredded) => tally.shredded += 1,
                            Err(GroupKeyProblem::Mismatch) => tally.mismatched += 1,
                        }
                    }
                    // The page's chunks are looked up together (their index
                    // reads overlap), then taken in order.
                    ids.clear();
                    for (_, chunks) in &keyed {
                        ids.extend_from_slice(chunks);
                    }
                    self.index.chunks.positions(&ids, &mut found);
                    if !self.page_packs.contains_key(&pid) {
                        let mut packs = PackSet(self.index.chunks.pack(&pid).into_iter().collect());
                        for pos in found.iter().flatten() {
                            packs.add(self.index.chunks.pack_at(*pos));
                        }
                        self.page_packs.insert(pid, packs.0);
                    }
                    let mut at = found.iter();
                    for (k, chunks) in &keyed {
                        for c in chunks.iter() {
                            let pos = at.next().copied().flatten();
                            if !self.chunk_at(pos, c, k) {
                                tally.miss(*c);
                            }
                        }
                    }
                    found_here.add(&tally);
                    if let Some(k) = seen_key {
                        self.pages_seen.insert(k, tally);
                    }
                }
                Page::Files { files, .. } => {
                    if let Some(k) = &files_keys {
                        for f in &files {
                            for c in &f.chunks {
                                if !self.chunk(c, k) {
                                    found_here.miss(*c);
                                }
                            }
                        }
                    }
                }
            }
            self.maybe_flush().await;
        }
        let PageTally {
            missing,
            first_missing,
            mismatched,
            shredded,
        } = found_here;
        self.groups_shredded += shredded;
        let object = format!("{}:snapshots/{}", self.target.name, s.id);
        self.window_packs(s, &object);
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
