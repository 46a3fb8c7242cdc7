//! `custos check`: verifies a repository on one target.
//!
//! Structure (always): the marker, every index object, every snapshot, every
//! tree page, and that every chunk a snapshot needs is in the index and its
//! pack exists with the indexed size. With `--read-data`: every pack is
//! downloaded and hashed against its name, its header is opened, and every
//! chunk a snapshot refers to is decrypted, decompressed and checked against
//! its id. Findings name the object; any error makes the check fail.

use super::restore::{
    keys_from_parents_many, missing_key_message, parent_keys_many, window_batches, GroupKeyProblem,
};
use super::{OpenRepo, OpsError};
use crate::crypto::{group_key, ChunkKeys, Id};
use crate::policy::{Policy, ResourcesConfig};
use crate::progress::Progress;
use crate::repo::cache::{PackCache, PackProblem};
use crate::repo::index::{
    Index, IndexEntry, IndexFile, IndexObjects, PackSet, PacksIndex, KEPT_INDEX_ENTRIES,
    MAX_WINDOW_PACKS,
};
use crate::repo::pack::{check_header, open_chunks_into, Codec, ToOpen};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{self, Page};
use crate::vault::KeyId;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
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
    /// Whether the whole chunk index was loaded: for snapshots of files,
    /// and for read windows that list no packs or miss one (FORMAT 3.5).
    pub whole_index: bool,
    /// Index objects read for the read windows' packs (besides the first
    /// pass over every index object, which keeps only the packs).
    pub index_objects_read: u64,
    pub findings: Vec<Finding>,
    pub ok: bool,
}

/// What to do about a missing or damaged pack.
const PACK_HINT: &str = "repair it from another target's copy with `custos replicate --verify`; \
without one, `custos check --repair-index` drops its index object so that the next backup stores its chunks again";

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
    /// The batching under the default `[resources]`.
    fn default() -> Self {
        Batching::for_resources(&ResourcesConfig::default())
    }
}

impl Batching {
    /// The batching a policy's `[resources]` sets: its threads, waves of an
    /// eighth of its buffer memory (at most two such waves are held: one
    /// being opened, one being fetched), and a batch of chunks of about a
    /// twentieth of it (the defaults: 32 MiB waves, 128 k chunks).
    pub fn for_resources(r: &ResourcesConfig) -> Self {
        Batching {
            chunks: r.check_batch_chunks(),
            wave_bytes: r.eighth(),
            threads: r.threads(),
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
    let batching = Batching::for_resources(&policy.resources);
    check_with(policy, target, read_data, batching, progress).await
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
    // Every index object is read once for its pack, size and entry count;
    // the chunks are located a read window at a time (below).
    let index = Index::load_packs(&target, &meta).await?;
    for (object, why) in &index.broken {
        findings.push(err(
            object.clone(),
            format!("index object unreadable: {why}"),
            Some("`custos check --repair-index` rebuilds it from its pack; until then the next backup stores its chunks again"),
        ));
    }
    // Key vault locations whose bucket keeps object versions: a shred
    // cannot reach the earlier versions (a bucket's setting can change
    // after `init`, which warns too).
    for v in super::vault_versioning(policy).await {
        if v.versioning.keeps_versions() {
            findings.push(Finding {
                level: Level::Warning,
                object: format!("vault:{}", v.location),
                message: v.risk(),
                hint: Some(super::VERSIONED_VAULT_HINT.into()),
            });
        }
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
                message: "pack not in any index (left by an interrupted backup, or its index object was lost: `check --repair-index` rebuilds it)".into(),
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
    let meta = Arc::new(meta);
    let mut base = Vec::with_capacity(index.packs.len() + 1);
    base.push(0u64);
    for n in &index.entry_counts {
        base.push(base.last().copied().unwrap_or(0) + u64::from(*n));
    }
    let entries = base.last().copied().unwrap_or(0) as usize;
    let batching = Batching {
        chunks: batching.chunks.max(1),
        wave_bytes: batching.wave_bytes.max(1),
        threads: batching.threads.max(1),
    };
    let mut walk = Walk {
        target: target.clone(),
        meta: &meta,
        vault: &vault,
        objects: IndexObjects::new(target.clone(), meta.clone(), KEPT_INDEX_ENTRIES).with_files(),
        whole: None,
        read_data,
        cache: PackCache::new(target.clone(), TREE_PACKS),
        verified: if read_data {
            vec![0u64; entries.div_ceil(64)]
        } else {
            Vec::new()
        },
        verified_whole: Vec::new(),
        base,
        pack_pos: (0u32..)
            .zip(&index.packs)
            .map(|(i, (id, _))| (*id, i))
            .collect(),
        packs: index.packs.clone(),
        entry_pages: Vec::new(),
        queue: Vec::new(),
        batching,
        opener: Some(Opener {
            data: PackCache::new(target.clone(), 1),
            meta: meta.clone(),
            batching,
            headers_checked: HashSet::new(),
            opening: None,
            chunks_checked: 0,
            findings: Vec::new(),
            spare_queue: Vec::new(),
            spare_chunks: Vec::new(),
            header: Vec::new(),
        }),
        opening_batch: None,
        pages_seen: HashMap::new(),
        tallies: Vec::new(),
        tables: Vec::new(),
        pack_lists: Vec::new(),
        windows_seen: HashMap::new(),
        errors: 0,
        groups_shredded: 0,
        findings: Vec::new(),
        ids: Vec::new(),
        found: Vec::new(),
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
    let mut opener = walk.take_opener().await;
    opener.collect().await;
    progress.finish_phase();
    if read_data {
        // Packs no snapshot needed are still hashed and their headers opened.
        let total: u64 = index.packs.iter().map(|p| p.1).sum();
        progress.phase("reading the other packs", Some(total), "bytes");
        for (pid, size) in &index.packs {
            if !opener.headers_checked.contains(pid) {
                opener.fetch_span(*pid, *size, 0..*size).await;
            }
            progress.advance(*size);
        }
        progress.finish_phase();
    }
    walk.findings.append(&mut opener.findings);
    let groups_shredded = walk.groups_shredded;
    let chunks_checked = opener.chunks_checked;
    let whole_index = walk.whole.is_some();
    let index_objects_read = walk.objects.fetched;
    tracing::debug!(
        index_objects_read,
        windows_indexed = walk.objects.built,
        windows_reusing = walk.objects.reused,
        tree_bytes_read = walk.cache.fetched,
        data_bytes_read = opener.data.fetched,
        "read windows' indexes and packs"
    );
    let bytes_read = walk.cache.fetched + opener.data.fetched;
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
        whole_index,
        index_objects_read,
        findings,
        ok,
    })
}

/// Packs of tree pages kept while walking. A snapshot's pages were written
/// in the order they are walked, and the reused pages of a child lie in its
/// parent's packs in the same order, so a few suffice: at 1 GiB, 4 read as
/// many bytes as 16, for about 100 MiB less peak memory.
const TREE_PACKS: usize = 4;

/// Chunks a thread takes from a wave at a time.
const GRAB: usize = 512;

/// Plaintext bytes a chunk-opening thread holds at a time (at least one
/// chunk): the chunks up to it are opened side by side.
const OPEN_BYTES: u64 = 1 << 20;

/// A chunk to open: where it lies and the keys of the group that needs it.
struct Queued {
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
    id: Id,
    keys: ChunkKeys,
}

fn error_finding(object: String, message: String, hint: Option<&str>) -> Finding {
    Finding {
        level: Level::Error,
        object,
        message,
        hint: hint.map(str::to_string),
    }
}

/// A pack that chunks of a batch lie in.
struct BatchPack {
    id: Id,
    /// Its size in the index.
    size: u64,
    /// Where the batch's chunks lie in it.
    span: Range<u64>,
    /// How many of the batch's chunks (sorted by pack) lie in it.
    chunks: usize,
}

/// Fetched packs and the chunks to open in them, for the opening threads.
#[derive(Default)]
struct Wave {
    /// The bytes of each pack its chunks lie in (the whole pack, verified
    /// against its name, or a span of it), their offset in the pack, and
    /// the pack's object name.
    packs: Vec<(Bytes, u64, String)>,
    /// `(position in packs, chunk)`, in pack order.
    chunks: Vec<(u32, Queued)>,
}

/// What the opening threads found in one wave.
#[derive(Default)]
struct Opened {
    checked: u64,
    /// `(position in the wave, finding)`.
    findings: Vec<(usize, Finding)>,
    /// The wave's chunk list, emptied, for the next wave.
    spare: Vec<(u32, Queued)>,
}

/// Opens every chunk of a wave on `threads` threads, each with its own
/// zstd context; findings come back in the wave's order.
fn open_wave(wave: &Wave, threads: usize) -> Opened {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let work = || {
        let mut codec = Codec::new(3);
        let mut out = Opened::default();
        // Reused from grab to grab: the decrypted body, the plaintexts
        // and what became of each chunk.
        let (mut body, mut plain, mut opened) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let from = next.fetch_add(GRAB, Ordering::Relaxed);
            if from >= wave.chunks.len() {
                break;
            }
            let to = (from + GRAB).min(wave.chunks.len());
            // A grab's chunks side by side, up to OPEN_BYTES of plaintext at
            // a time (chunks of files can be megabytes).
            let mut at = from;
            while at < to {
                let mut end = at;
                let mut bytes = 0u64;
                while end < to && (end == at || bytes < OPEN_BYTES) {
                    bytes += u64::from(wave.chunks[end].1.raw_len);
                    end += 1;
                }
                let part = &wave.chunks[at..end];
                let chunks: Vec<ToOpen<'_>> = part
                    .iter()
                    .map(|(p, c)| {
                        let (pack, base, _) = &wave.packs[*p as usize];
                        let s = (u64::from(c.offset) - base) as usize;
                        (&c.keys, &c.id, &pack[s..s + c.len as usize], c.raw_len)
                    })
                    .collect();
                plain.clear();
                open_chunks_into(&mut codec, &chunks, &mut body, &mut plain, &mut opened);
                out.checked += part.len() as u64;
                for (i, ((p, c), r)) in part.iter().zip(&opened).enumerate() {
                    if let Err(e) = r {
                        out.findings.push((
                            at + i,
                            Finding {
                                level: Level::Error,
                                object: wave.packs[*p as usize].2.clone(),
                                message: format!("chunk {}: {e}", c.id),
                                hint: None,
                            },
                        ));
                    }
                }
                at = end;
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

/// Fetches the packs of queued chunks and opens the chunks on every core.
/// The walk hands it one batch at a time and goes on walking meanwhile.
struct Opener {
    /// Fetches the packs whose chunks are opened: a batch fetches each
    /// once, whole and verified against its name the first time, then only
    /// the span its chunks lie in; none is kept after its wave.
    data: PackCache,
    meta: Arc<crate::crypto::MetaKey>,
    batching: Batching,
    headers_checked: HashSet<Id>,
    /// The wave being opened on the blocking threads.
    opening: Option<tokio::task::JoinHandle<Opened>>,
    chunks_checked: u64,
    findings: Vec<Finding>,
    /// Emptied lists kept for the next batch's queue and the next wave's
    /// chunks: grown anew by doubling, each batch's (128 k chunks) and
    /// wave's faulted in some 15 MiB of fresh pages, a sixth of the
    /// check's page faults.
    spare_queue: Vec<Queued>,
    spare_chunks: Vec<(u32, Queued)>,
    /// A pack header's plaintext, kept from pack to pack (a header lists
    /// every chunk of its pack: each opened into fresh memory, they were a
    /// fifth of the check's page faults).
    header: Vec<u8>,
}

impl Opener {
    fn error(&mut self, object: String, message: String, hint: Option<&str>) {
        self.findings.push(error_finding(object, message, hint));
    }

    /// The bytes `span` of a pack, and their offset in it: the whole pack
    /// the first time (verified against its name, its header opened), the
    /// span only after that.
    async fn fetch_span(&mut self, pid: Id, size: u64, span: Range<u64>) -> Option<(Bytes, u64)> {
        let object = self.data.object_name(&pid);
        match self.data.fetch_span(pid, size, span).await {
            Ok((bytes, base)) => {
                if self.headers_checked.insert(pid) {
                    if let Err(e) = check_header(&object, &bytes, &self.meta, &mut self.header) {
                        self.error(object, e.to_string(), None);
                    }
                }
                Some((bytes, base))
            }
            Err(e) => {
                if self.headers_checked.insert(pid) {
                    self.error(object, e.to_string(), Some(PACK_HINT));
                }
                None
            }
        }
    }

    /// Opens a batch of chunks, sorted by pack and offset (`packs`: each
    /// pack they lie in, in that order): fetches each pack (or, after the
    /// first time, the span of it that they lie in) once, in waves of about
    /// `batching.wave_bytes`, each wave opened on every core while the next
    /// is fetched.
    async fn open_batch(&mut self, mut batch: Vec<Queued>, packs: Vec<BatchPack>) {
        let mut queue = batch.drain(..);
        let mut wave = self.wave();
        let mut wave_bytes = 0usize;
        for p in packs {
            if wave_bytes >= self.batching.wave_bytes {
                self.dispatch(std::mem::take(&mut wave)).await;
                wave = self.wave();
                wave_bytes = 0;
            }
            let fetched = self.fetch_span(p.id, p.size, p.span).await;
            let chunks = queue.by_ref().take(p.chunks);
            let Some((bytes, base)) = fetched else {
                chunks.for_each(drop); // reported once for the pack
                continue;
            };
            let (object, have) = (self.data.object_name(&p.id), base + bytes.len() as u64);
            let slot = wave.packs.len() as u32;
            for c in chunks {
                let end = c.offset as u64 + c.len as u64;
                if end > have {
                    let problem = PackProblem::Size {
                        object: object.clone(),
                        got: have,
                        want: end,
                    };
                    self.error(object.clone(), problem.to_string(), None);
                    continue;
                }
                wave.chunks.push((slot, c));
            }
            wave_bytes += bytes.len();
            wave.packs.push((bytes, base, object));
        }
        drop(queue);
        self.spare_queue = batch;
        if !wave.chunks.is_empty() {
            self.dispatch(wave).await;
        }
    }

    /// An empty wave, with the room of one opened before if there is one.
    fn wave(&mut self) -> Wave {
        Wave {
            packs: Vec::new(),
            chunks: std::mem::take(&mut self.spare_chunks),
        }
    }

    /// Hands a wave to the opening threads, after collecting the previous
    /// one (so at most one wave is opened while the next is fetched).
    async fn dispatch(&mut self, wave: Wave) {
        self.collect().await;
        let threads = self.batching.threads;
        self.opening = Some(tokio::task::spawn_blocking(move || {
            let mut opened = open_wave(&wave, threads);
            opened.spare = wave.chunks;
            opened.spare.clear();
            opened
        }));
    }

    /// Waits for the wave being opened and records what it found.
    async fn collect(&mut self) {
        if let Some(h) = self.opening.take() {
            let opened = h.await.expect("the chunk-opening task panicked");
            self.spare_chunks = opened.spare;
            self.chunks_checked += opened.checked;
            self.findings
                .extend(opened.findings.into_iter().map(|(_, f)| f));
        }
    }
}

/// Finds an entry of an index object by its offset in the pack without a
/// binary search over the whole object (a look-up per chunk checked, 4 M
/// at 1 GiB): for each stretch of `1 << bits` bytes of the pack, the first
/// entry that starts in it or later, then a short scan. Entries are in
/// offset order as custos writes them; for an object whose entries are
/// not, a long scan falls back to the binary search, and either way only
/// an entry at exactly the offset is returned (as before).
struct EntryPages {
    bits: u32,
    first: Box<[u32]>,
}

/// Entries scanned before falling back to a binary search.
const ENTRY_SCAN: usize = 64;

impl EntryPages {
    fn of(entries: &[IndexEntry]) -> Self {
        let max = entries.iter().map(|e| e.offset).max().unwrap_or(0);
        // Stretches of at least 4 KiB, and never more of them than entries.
        let n = u32::try_from(entries.len()).unwrap_or(u32::MAX).max(1);
        let mut bits = 12;
        while bits < 31 && (max >> bits) > n {
            bits += 1;
        }
        let stretches = (max >> bits) as usize + 1;
        let mut first = Vec::with_capacity(stretches);
        let mut i = 0;
        for s in 0..stretches {
            let start = (s as u64) << bits;
            while i < entries.len() && u64::from(entries[i].offset) < start {
                i += 1;
            }
            first.push(i as u32);
        }
        EntryPages {
            bits,
            first: first.into(),
        }
    }

    /// The number of the entry at `offset`, if there is one.
    fn entry(&self, entries: &[IndexEntry], offset: u32) -> Option<usize> {
        let mut i = *self.first.get((offset >> self.bits) as usize)? as usize;
        let mut scanned = 0;
        while i < entries.len() && entries[i].offset < offset {
            i += 1;
            scanned += 1;
            if scanned > ENTRY_SCAN {
                i = entries.partition_point(|e| e.offset < offset);
                break;
            }
        }
        entries
            .get(i)
            .is_some_and(|e| e.offset == offset)
            .then_some(i)
    }
}

/// What names a read window for [`Walk::window`]'s memo: its table, its
/// pages in order and the packs it lists. The walk of a window depends on
/// these alone (pages are named by their content, and neither the vault
/// nor the index changes during a check), so a window named again finds
/// what it found.
fn window_key(table: u32, pages: &[Id], packs: Option<&[Id]>, overlays: &[usize]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&table.to_le_bytes());
    // Where its overlays start decides which groups stand.
    h.update(&(overlays.len() as u64).to_le_bytes());
    for &o in overlays {
        h.update(&(o as u64).to_le_bytes());
    }
    h.update(&(pages.len() as u64).to_le_bytes());
    for p in pages {
        h.update(&p.0);
    }
    if let Some(packs) = packs {
        h.update(&(packs.len() as u64).to_le_bytes());
        for p in packs {
            h.update(&p.0);
        }
    } else {
        h.update(b"no list");
    }
    *h.finalize().as_bytes()
}

/// Puts a batch of queued chunks in pack and offset order and gives the
/// span of each pack they need (`packs`: the walk's packs, by position).
fn plan_batch(mut queue: Vec<Queued>, packs: &[(Id, u64)]) -> (Vec<Queued>, Vec<BatchPack>) {
    // The keys are sorted with their positions and the chunks then moved
    // once each: sorting the 88-byte chunks themselves moved each about
    // log2(n) times (2.8% of a 1 GiB check's samples).
    queue.sort_by_cached_key(|c| u64::from(c.pack) << 32 | u64::from(c.offset));
    let spans = queue
        .chunk_by(|a, b| a.pack == b.pack)
        .map(|chunks| {
            let (id, size) = packs[chunks[0].pack as usize];
            let end = chunks
                .iter()
                .map(|c| u64::from(c.offset) + u64::from(c.len));
            // Index objects with an entry past the pack's end are refused
            // when read; should one get here, it is reported chunk by chunk
            // (`open_batch`), never sliced past the bytes.
            let end = end.max().unwrap_or(0).min(size);
            BatchPack {
                id,
                size,
                span: u64::from(chunks[0].offset).min(end)..end,
                chunks: chunks.len(),
            }
        })
        .collect();
    (queue, spans)
}

struct Walk<'a> {
    target: Arc<crate::target::Target>,
    meta: &'a crate::crypto::MetaKey,
    vault: &'a crate::vault::Vault,
    /// Index objects of the read windows' packs (FORMAT 3.5), a few kept
    /// from one window to the next.
    objects: IndexObjects,
    /// The whole chunk index, loaded when first needed: for snapshots of
    /// files and for windows that list no packs or miss one.
    whole: Option<Arc<Index>>,
    read_data: bool,
    /// Packs holding tree pages.
    cache: PackCache,
    /// One bit per index entry of the target (`base` numbers them): chunks
    /// already opened or queued, found through a window's packs.
    verified: Vec<u64>,
    /// One bit per entry of the whole index: chunks opened or queued,
    /// found through it. A chunk found both ways is opened twice.
    verified_whole: Vec<u64>,
    /// The number of the first entry of each pack's index object.
    base: Vec<u64>,
    /// Every pack of the target (its index objects), then any pack met
    /// later: positions are what `Queued::pack`, `pack_pos` and
    /// `page_packs` hold.
    packs: Vec<(Id, u64)>,
    pack_pos: HashMap<Id, u32>,
    /// Per pack (as `packs`), where its index object's entries start,
    /// built when a chunk of it is first checked through a window.
    entry_pages: Vec<Option<EntryPages>>,
    /// Chunks waiting to be opened, at most `batching.chunks`.
    queue: Vec<Queued>,
    batching: Batching,
    /// Opens the queued chunks: here between batches, or in
    /// `opening_batch` while it opens one as the walk goes on.
    opener: Option<Opener>,
    opening_batch: Option<tokio::task::JoinHandle<Opener>>,
    /// Tree pages of groups already walked: under which table, what they
    /// gave and which packs they need (see [`PageMemo`]).
    pages_seen: HashMap<Id, PageMemo>,
    /// The tallies of walked pages that found anything ([`PageMemo::tally`]).
    tallies: Vec<PageTally>,
    /// The table names pages were walked under ([`PageMemo::table`]).
    tables: Vec<String>,
    /// The walked pages' pack positions, end to end ([`PageMemo::packs`]).
    pack_lists: Vec<u32>,
    /// Read windows walked before, by [`window_key`]: what they found and
    /// the first pack their list missed. A later snapshot lists most of
    /// its parent's windows unchanged; their pages are then not looked up
    /// one by one again.
    windows_seen: HashMap<[u8; 32], (PageTally, Option<Id>)>,
    /// Errors reported by the walk itself (not by the opener).
    errors: u64,
    groups_shredded: u64,
    findings: Vec<Finding>,
    /// Reused from page to page: the chunks looked up and where.
    ids: Vec<Id>,
    found: Vec<Option<usize>>,
}

/// An index the walk looks chunks up in.
struct Through<'i> {
    index: &'i Index,
    /// The index objects a window's index was built from (its pack `i` is
    /// `files[i]`'s); none for the whole index.
    files: Option<&'i [Arc<IndexFile>]>,
    /// Each of the index's packs' position in [`Walk::packs`].
    packs: &'i [u32],
}

/// A page or a chunk the index tried does not locate; with the page, read
/// and keyed, if it was a chunk (only its chunks need locating again).
struct NotHere(Option<WalkedPage>);

/// A tree page of groups, read and keyed, its chunks looked up.
struct WalkedPage {
    pid: Id,
    /// The readable groups' keys and chunks.
    keyed: Vec<(ChunkKeys, tree::ChunkIds)>,
    /// Each chunk's position in the index walked, in `keyed`'s order.
    found: Vec<Option<usize>>,
    /// Shredded and mismatched groups (chunks missing are added later).
    tally: PageTally,
}

/// What the walk keeps of a tree page of groups it walked. It is kept for
/// every page of every snapshot checked (about half a million at 4 GiB),
/// so it is small: the table is a number, the tally kept apart only when
/// it found something, and the packs a range of one shared list. (As
/// two maps, one keyed by the page and its table's name, it took about
/// three times the memory.)
#[derive(Clone, Copy)]
struct PageMemo {
    /// The table it was walked under (a position in `Walk::tables`). A
    /// page named under another table is walked again (the table is part
    /// of what the walk checks).
    table: u32,
    /// Its tally's position in `Walk::tallies`, or [`CLEAN`] if it found
    /// nothing.
    tally: u32,
    /// The packs holding it and the chunks of its readable groups
    /// (positions in `Walk::packs`), to check the read windows' pack
    /// lists: `Walk::pack_lists[start..start + len]`.
    packs: (u32, u32),
}

/// [`PageMemo::tally`] of a page that found nothing.
const CLEAN: u32 = u32::MAX;

/// A position in one of the walk's lists, as kept in a [`PageMemo`]. The
/// lists grow by a page or less at a time and hold a few entries a page,
/// so they stay far below 2^32 (that would take 16 GiB of pack lists).
fn position(n: usize) -> u32 {
    u32::try_from(n).expect("a walk list past 2^32 entries")
}

/// What walking a tree page of groups found. A page is named by its
/// content, and the vault does not change during a check, so a later
/// snapshot that names the same page under the same table finds the same:
/// it adds the tally instead of deriving every group's keys again (a child
/// snapshot shares most of its pages with its parent).
#[derive(Clone, Copy, Default, PartialEq)]
struct PageTally {
    missing: u64,
    first_missing: Option<Id>,
    mismatched: u64,
    shredded: u64,
    /// Groups whose keys are neither in the vault nor destroyed, and the
    /// first such key (and whether it is a subject key).
    keys_missing: u64,
    first_key_missing: Option<(KeyId, bool)>,
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
        self.keys_missing += other.keys_missing;
        self.first_key_missing = self.first_key_missing.or(other.first_key_missing);
    }
}

impl Walk<'_> {
    fn error(&mut self, object: String, message: String, hint: Option<&str>) {
        self.errors += 1;
        self.findings.push(error_finding(object, message, hint));
    }

    /// The whole chunk index, loaded once. If it cannot be loaded, that is
    /// an error and an empty index stands in (every lookup fails).
    async fn whole(&mut self) -> Arc<Index> {
        if let Some(w) = &self.whole {
            return w.clone();
        }
        let w = match Index::load(&self.target, self.meta).await {
            Ok(w) => w,
            Err(e) => {
                self.error(
                    format!("{}:index/", self.target.name),
                    format!("the chunk index could not be loaded: {e}"),
                    None,
                );
                let mut empty = Index::default();
                empty.seal();
                empty
            }
        };
        if self.read_data {
            self.verified_whole = vec![0u64; w.chunks.len().div_ceil(64)];
        }
        let w = Arc::new(w);
        self.whole = Some(w.clone());
        w
    }

    /// A pack's position in `packs`, added if it was not listed.
    fn pack_position(&mut self, id: Id, size: u64) -> u32 {
        if let Some(p) = self.pack_pos.get(&id) {
            return *p;
        }
        let p = self.packs.len() as u32;
        self.packs.push((id, size));
        self.pack_pos.insert(id, p);
        p
    }

    /// Checks one chunk at `pos` of `at`'s index (false if it is in none),
    /// and with read_data queues it to be opened once, by the first group
    /// that needs it.
    fn chunk_at(&mut self, at: &Through, pos: Option<usize>, id: &Id, keys: &ChunkKeys) -> bool {
        let Some(pos) = pos else {
            return false;
        };
        if !self.read_data {
            return true;
        }
        let loc = *at.index.chunks.loc_at(pos);
        let pack = at.packs[loc.pack as usize];
        // The chunk's bit: its entry's number among the target's entries
        // (found by its offset in its pack's index object), or its position
        // in the whole index. An entry not found so is opened every time.
        let (bits, bit) = match at.files {
            Some(files) => {
                let p = pack as usize;
                let entries = &files[loc.pack as usize].entries;
                if self.entry_pages.len() <= p {
                    self.entry_pages.resize_with(p + 1, || None);
                }
                let pages = self.entry_pages[p].get_or_insert_with(|| EntryPages::of(entries));
                let known = pages.entry(entries, loc.offset).filter(|&i| {
                    p + 1 < self.base.len() && (i as u64) < self.base[p + 1] - self.base[p]
                });
                (&mut self.verified, known.map(|i| self.base[p] as usize + i))
            }
            None => (&mut self.verified_whole, Some(pos)),
        };
        if let Some(bit) = bit {
            let (word, mask) = (bit / 64, 1u64 << (bit % 64));
            if bits[word] & mask != 0 {
                return true;
            }
            bits[word] |= mask;
        }
        self.queue.push(Queued {
            pack,
            offset: loc.offset,
            len: loc.len,
            raw_len: loc.raw_len,
            id: *id,
            keys: keys.clone(),
        });
        true
    }

    /// The positions in `packs` of `index`'s packs.
    fn positions(&mut self, index: &Index) -> Vec<u32> {
        index
            .packs
            .iter()
            .map(|(id, size)| self.pack_position(*id, *size))
            .collect()
    }

    /// Opens the queued chunks if there are enough of them.
    async fn maybe_flush(&mut self) {
        if self.queue.len() >= self.batching.chunks {
            self.flush().await;
        }
    }

    /// Hands the queued chunks to the opener, which fetches their packs
    /// and opens them in the background while the walk goes on; first
    /// waits for the batch before (so one batch is opened at a time).
    async fn flush(&mut self) {
        let mut opener = self.take_opener().await;
        if self.queue.is_empty() {
            self.opener = Some(opener);
            return;
        }
        let spare = std::mem::take(&mut opener.spare_queue);
        let queue = std::mem::replace(&mut self.queue, spare);
        // Its findings so far, in the order they were found.
        self.findings.append(&mut opener.findings);
        // The batch is put in pack order off the walk (sorting some 100 k
        // queued chunks was a few percent of the walk's time).
        let packs = self.packs.clone();
        self.opening_batch = Some(tokio::spawn(async move {
            let planned = tokio::task::spawn_blocking(move || plan_batch(queue, &packs)).await;
            let (queue, packs) = planned.expect("planning a batch panicked");
            opener.open_batch(queue, packs).await;
            opener
        }));
    }

    /// The opener, once the batch it is opening (if any) is fetched and
    /// handed to the opening threads.
    async fn take_opener(&mut self) -> Opener {
        match self.opening_batch.take() {
            Some(h) => h.await.expect("the batch-opening task panicked"),
            None => self
                .opener
                .take()
                .expect("the opener is here between batches"),
        }
    }

    /// Reads tree page `pid` (of groups of `table`) through `index`,
    /// derives its groups' keys and looks their chunks up. `strict`: an
    /// `Err` if the page or a readable group's chunk is not in `index`, or
    /// the page cannot be read (the caller tries the whole index);
    /// otherwise an unreadable page is an error, and `Ok(None)`.
    async fn walk_page(
        &mut self,
        index: &Index,
        table: &str,
        pid: &Id,
        strict: bool,
        object: &str,
    ) -> Result<Option<WalkedPage>, NotHere> {
        if strict && !index.chunks.contains_key(pid) {
            return Err(NotHere(None));
        }
        let page = match Page::load(&mut self.cache, index, self.meta, pid).await {
            Ok(p) => p,
            Err(_) if strict => return Err(NotHere(None)),
            Err(e) => {
                self.error(object.to_string(), e.to_string(), None);
                return Ok(None);
            }
        };
        // A files page under a table has nothing to open here.
        let Page::Groups { groups, .. } = page else {
            return Ok(None);
        };
        let mut tally = PageTally::default();
        let mut keyed = Vec::with_capacity(groups.len());
        // Every parent key first (their look-ups overlap, the subject keys'
        // bytes prefetched); then the derivations.
        let parents = parent_keys_many(self.vault, groups.iter());
        let keys = keys_from_parents_many(parents, &groups, table);
        for (g, k) in groups.into_iter().zip(keys) {
            match k {
                Ok(k) => keyed.push((k, g.chunks)),
                Err(GroupKeyProblem::Shredded) => tally.shredded += 1,
                Err(GroupKeyProblem::Missing { key, subject }) => {
                    tally.keys_missing += 1;
                    tally.first_key_missing.get_or_insert((key, subject));
                }
                Err(GroupKeyProblem::Mismatch) => tally.mismatched += 1,
            }
        }
        let mut w = WalkedPage {
            pid: *pid,
            keyed,
            found: std::mem::take(&mut self.found),
            tally,
        };
        self.locate(index, &mut w);
        if strict && w.found.iter().any(Option::is_none) {
            return Err(NotHere(Some(w)));
        }
        Ok(Some(w))
    }

    /// Looks a walked page's chunks up in `index`, together (their index
    /// reads overlap).
    fn locate(&mut self, index: &Index, w: &mut WalkedPage) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        for (_, c) in &w.keyed {
            ids.extend_from_slice(c);
        }
        index.chunks.positions(&ids, &mut w.found);
        self.ids = ids;
    }

    /// Takes what [`Walk::walk_page`] found through `at`: queues the
    /// chunks, counts the missing ones, remembers the page. Returns the
    /// packs it needs ([`PageMemo::packs`]).
    async fn take_page(
        &mut self,
        at: &Through<'_>,
        table: u32,
        w: WalkedPage,
        found_here: &mut PageTally,
    ) -> (u32, u32) {
        let index = at.index;
        let mut tally = w.tally;
        // A page walked before (under another table) keeps its packs.
        let packs = match self.pages_seen.get(&w.pid) {
            Some(m) => m.packs,
            None => {
                let mut packs = PackSet::default();
                let page = index.chunks.position(&w.pid);
                for pos in page.iter().chain(w.found.iter().flatten()) {
                    packs.add(at.packs[index.chunks.pack_at(*pos) as usize]);
                }
                let start = self.pack_lists.len();
                self.pack_lists.extend_from_slice(&packs.0);
                (position(start), position(packs.0.len()))
            }
        };
        let mut found = w.found.iter();
        for (k, chunks) in &w.keyed {
            for c in chunks {
                let pos = found.next().copied().flatten();
                if !self.chunk_at(at, pos, c, k) {
                    tally.miss(*c);
                }
            }
        }
        self.found = w.found;
        found_here.add(&tally);
        let tally = if tally == PageTally::default() {
            CLEAN
        } else {
            self.tallies.push(tally);
            position(self.tallies.len() - 1)
        };
        let memo = PageMemo {
            table,
            tally,
            packs,
        };
        self.pages_seen.insert(w.pid, memo);
        self.maybe_flush().await;
        packs
    }

    /// The number of a table's name in `tables`.
    fn table_number(&mut self, table: &str) -> u32 {
        match self.tables.iter().position(|t| t == table) {
            Some(n) => position(n),
            None => {
                self.tables.push(table.to_string());
                position(self.tables.len() - 1)
            }
        }
    }

    /// What a page gave when walked before under the same table, and the
    /// packs it needs ([`PageMemo::packs`]).
    fn seen(&self, pid: &Id, table: u32) -> Option<(PageTally, (u32, u32))> {
        let m = self.pages_seen.get(pid).filter(|m| m.table == table)?;
        let tally = match m.tally {
            CLEAN => PageTally::default(),
            n => self.tallies[n as usize],
        };
        Some((tally, m.packs))
    }

    /// The packs a walked page needs.
    fn page_packs(&self, pid: &Id) -> &[u32] {
        match self.pages_seen.get(pid) {
            Some(m) => self.pack_list(m.packs),
            None => &[],
        }
    }

    /// The packs a [`PageMemo::packs`] range names.
    fn pack_list(&self, (start, len): (u32, u32)) -> &[u32] {
        &self.pack_lists[start as usize..][..len as usize]
    }

    /// Walks one read window of `table`: its pages not walked before,
    /// through the index objects of the packs it lists; from the first page
    /// they do not locate (or all, if it lists none), through the whole
    /// index. Returns the first pack holding one of its blobs that its
    /// list misses, if any. A window named again (by [`window_key`]) gives
    /// what it gave the first time, without its pages being looked up.
    async fn window(
        &mut self,
        table: &str,
        pages: &[Id],
        packs: Option<&[Id]>,
        overlays: &[usize],
        found_here: &mut PageTally,
        object: &str,
    ) -> Option<Id> {
        let table_no = self.table_number(table);
        // A window of one page (as every page of a snapshot that records
        // no windows is) has its page's memo already.
        let key = (pages.len() > 1).then(|| window_key(table_no, pages, packs, overlays));
        if let Some((tally, missing)) = key.and_then(|k| self.windows_seen.get(&k)) {
            found_here.add(tally);
            return *missing;
        }
        let errors = self.errors;
        let mut here = PageTally::default();
        let missing = self
            .walk_window(table, table_no, pages, packs, &mut here, object)
            .await;
        // Every entry walked counts; the groups shredded count as they
        // stand (FORMAT 3.4): a group named on the base and on an overlay,
        // or deleted by one, is not two groups, nor one.
        if !overlays.is_empty() && here.shredded > 0 {
            if let Some(n) = self.standing_shredded(table, pages, packs, overlays).await {
                here.shredded = n;
            }
        }
        found_here.add(&here);
        // A window whose walk reported an error is walked again where it is
        // named again, so each snapshot's report names the error.
        if let Some(key) = key.filter(|_| self.errors == errors) {
            self.windows_seen.insert(key, (here, missing));
        }
        missing
    }

    /// How many groups of a read window with overlays, as they stand,
    /// have keys destroyed. `None` if its pages cannot be read again (the
    /// walk has reported why); the entries walked are counted then.
    async fn standing_shredded(
        &mut self,
        table: &str,
        pages: &[Id],
        packs: Option<&[Id]>,
        overlays: &[usize],
    ) -> Option<u64> {
        let listed = match packs.filter(|p| p.len() <= MAX_WINDOW_PACKS) {
            Some(list) => self.objects.index_of(list).await.ok(),
            None => None,
        };
        let index = match &listed {
            Some(packs) => packs.index.clone(),
            None => self.whole().await,
        };
        let read = tree::load_window(&mut self.cache, &index, self.meta, pages, overlays).await;
        let (standing, _) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(table, error = %e, "a read window with overlays could not be read again; its groups shredded are counted by entry");
                return None;
            }
        };
        let parents = parent_keys_many(self.vault, standing.iter());
        Some(
            parents
                .iter()
                .filter(|p| matches!(p, Err(GroupKeyProblem::Shredded)))
                .count() as u64,
        )
    }

    /// [`Walk::window`], page by page.
    async fn walk_window(
        &mut self,
        table: &str,
        table_no: u32,
        pages: &[Id],
        packs: Option<&[Id]>,
        found_here: &mut PageTally,
        object: &str,
    ) -> Option<Id> {
        let mut listed = packs.filter(|p| p.len() <= MAX_WINDOW_PACKS);
        // The window's index and its packs' positions, once it is needed.
        let mut through_list: Option<(Arc<PacksIndex>, Vec<u32>)> = None;
        let mut through_whole: Option<(Arc<Index>, Vec<u32>)> = None;
        // A page the list located but not all of whose chunks it did.
        let mut half_walked = None;
        // Each page's packs (a range of `pack_lists`), as walked.
        let mut ranges: Vec<Option<(u32, u32)>> = Vec::with_capacity(pages.len());
        // Pages in order, so that the first missing chunk named is the
        // snapshot's first.
        for pid in pages {
            if let Some((tally, packs)) = self.seen(pid, table_no) {
                found_here.add(&tally);
                ranges.push(Some(packs));
                continue;
            }
            if through_list.is_none() {
                if let Some(list) = listed.take() {
                    match self.objects.index_of(list).await {
                        Ok(packs) => {
                            let at = self.positions(&packs.index);
                            through_list = Some((packs, at));
                        }
                        Err(e) => tracing::warn!(
                            table,
                            error = %e,
                            "the index objects a read window lists could not be read; walking it through the whole index"
                        ),
                    }
                }
            }
            if let Some((packs, positions)) = &through_list {
                match self.walk_page(&packs.index, table, pid, true, object).await {
                    Ok(w) => {
                        if let Some(w) = w {
                            let at = Through {
                                index: &packs.index,
                                files: Some(&packs.files),
                                packs: positions,
                            };
                            let packs = self.take_page(&at, table_no, w, found_here).await;
                            ranges.push(Some(packs));
                        } else {
                            ranges.push(None);
                        }
                        continue;
                    }
                    Err(NotHere(w)) => half_walked = w,
                }
                // From here on, the whole index.
                through_list = None;
            }
            if through_whole.is_none() {
                let whole = self.whole().await;
                let at = self.positions(&whole);
                through_whole = Some((whole, at));
            }
            let Some((whole, positions)) = &through_whole else {
                unreachable!("set above")
            };
            let walked = match half_walked.take() {
                Some(mut w) => {
                    self.locate(whole, &mut w);
                    Some(w)
                }
                None => self
                    .walk_page(whole, table, pid, false, object)
                    .await
                    .ok()
                    .flatten(),
            };
            if let Some(w) = walked {
                let at = Through {
                    index: whole,
                    files: None,
                    packs: positions,
                };
                let packs = self.take_page(&at, table_no, w, found_here).await;
                ranges.push(Some(packs));
            } else {
                ranges.push(None);
            }
        }
        // Whether the list holds every pack of the window's pages (walked
        // now or before): each page's packs as its memo gave them above,
        // or, for a page not walked now, as any memo of it has them.
        let list = packs?;
        let listed: HashSet<u32> = list
            .iter()
            .filter_map(|p| self.pack_pos.get(p).copied())
            .collect();
        let missing = pages
            .iter()
            .zip(ranges)
            .flat_map(|(pid, r)| match r {
                Some(range) => self.pack_list(range),
                None => self.page_packs(pid),
            })
            .find(|p| !listed.contains(p));
        missing.map(|p| self.packs[*p as usize].0)
    }

    async fn snapshot(&mut self, s: &Snapshot) {
        let object = format!("{}:snapshots/{}", self.target.name, s.id);
        // What this snapshot's pages found, each page's tally added in turn.
        let mut found_here = PageTally::default();
        let (mut short, mut first_short) = (0u64, None);
        // Its page lists were read by place when it was loaded; a prune
        // keeps their packs only while an index object lists them.
        for l in s.page_lists() {
            if !self.pack_pos.contains_key(&l.pack) {
                self.error(
                    object.clone(),
                    format!(
                        "page list {} lies in pack {}, which no index object lists",
                        l.id, l.pack
                    ),
                    Some("copy the index object from another target's copy of this repository (`custos replicate` repairs it); until then prune refuses to run"),
                );
            }
        }
        for t in s.record_tables() {
            // An overlay's pages are checked like any (FORMAT 3.4): the
            // base entries it stands in for are still stored and named.
            for (wi, w) in window_batches(t).into_iter().enumerate() {
                let pages = &t.pages[w.range];
                if let Some(pack) = self
                    .window(
                        &t.name,
                        pages,
                        w.packs,
                        &w.overlays,
                        &mut found_here,
                        &object,
                    )
                    .await
                {
                    short += 1;
                    first_short.get_or_insert((t.name.clone(), wi, pack));
                }
            }
        }
        if let Some(f) = &s.files {
            let keys = self
                .vault
                .key(&f.key)
                .map(|k| ChunkKeys::new(group_key(None, k, "files")));
            if keys.is_none() {
                if self.vault.destroyed(&f.key) {
                    self.groups_shredded += 1;
                } else {
                    found_here.keys_missing += 1;
                    found_here.first_key_missing.get_or_insert((f.key, false));
                }
            }
            let index = self.whole().await;
            let positions = self.positions(&index);
            let at = Through {
                index: &index,
                files: None,
                packs: &positions,
            };
            for pid in &f.pages {
                let page = match Page::load(&mut self.cache, &index, self.meta, pid).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.error(object.clone(), e.to_string(), None);
                        continue;
                    }
                };
                if let (Page::Files { files, .. }, Some(k)) = (page, &keys) {
                    for f in &files {
                        for c in &f.chunks {
                            let pos = index.chunks.position(c);
                            if !self.chunk_at(&at, pos, c, k) {
                                found_here.miss(*c);
                            }
                        }
                    }
                }
                self.maybe_flush().await;
            }
        }
        let PageTally {
            missing,
            first_missing,
            mismatched,
            shredded,
            keys_missing,
            first_key_missing,
        } = found_here;
        self.groups_shredded += shredded;
        if let Some((table, wi, pack)) = first_short {
            self.findings.push(Finding {
                level: Level::Warning,
                object: object.clone(),
                message: format!(
                    "{short} read window(s) do not list every pack holding their blobs (first: table {table}, window {wi}, pack {pack}); a restore reads them through the whole index"
                ),
                hint: None,
            });
        }
        if mismatched > 0 {
            self.error(
                object.clone(),
                format!("{mismatched} group(s) do not match the keys they name (damaged or hostile manifest)"),
                None,
            );
        }
        if let Some((key, subject)) = first_key_missing {
            self.error(
                object.clone(),
                format!(
                    "{keys_missing} group(s) cannot be read; the first: {}",
                    missing_key_message(&key, subject)
                ),
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
                Some("if their packs are here, `custos check --repair-index` rebuilds their index objects; else copy the packs from another target (`custos replicate --verify`), and until then restore from that target (--target)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(offsets: &[u32]) -> Vec<IndexEntry> {
        offsets
            .iter()
            .map(|&offset| IndexEntry::new(&Id::hash(&offset.to_le_bytes()), offset, 1, 1))
            .collect()
    }

    #[test]
    fn an_entry_is_found_by_its_offset_as_a_binary_search_finds_it() {
        // Small and large blobs, as in a pack: many to a 4 KiB stretch, and
        // stretches with none.
        let mut offsets = Vec::new();
        let mut at = 9u32;
        for i in 0..5000u32 {
            offsets.push(at);
            at += match i % 97 {
                0 => 70_000,
                n => 40 + n * 3,
            };
        }
        let e = entries(&offsets);
        let pages = EntryPages::of(&e);
        for (i, &o) in offsets.iter().enumerate() {
            assert_eq!(pages.entry(&e, o), Some(i), "offset {o}");
            // Between two entries, and past the last: none.
            assert_eq!(pages.entry(&e, o + 1), None);
        }
        assert_eq!(pages.entry(&e, 0), None);
        assert_eq!(pages.entry(&e, u32::MAX), None);
        // Never more stretches than entries, whatever the offsets.
        let far = entries(&[0, u32::MAX - 1]);
        let pages = EntryPages::of(&far);
        assert!(pages.first.len() <= 3, "{} stretches", pages.first.len());
        assert_eq!(pages.entry(&far, u32::MAX - 1), Some(1));
        assert_eq!(pages.entry(&far, 0), Some(0));
    }

    #[test]
    fn entries_out_of_order_give_only_entries_at_the_offset_asked() {
        // Not what custos writes: a look-up may miss an entry (its chunk is
        // then opened each time it is met) but never names another one.
        let offsets: Vec<u32> = (0..3000u32).map(|i| (i * 7919) % 3001 * 100).collect();
        let e = entries(&offsets);
        let pages = EntryPages::of(&e);
        let mut found = 0;
        for &o in &offsets {
            if let Some(i) = pages.entry(&e, o) {
                assert_eq!(e[i].offset, o);
                found += 1;
            }
            assert_eq!(pages.entry(&e, o + 1), None);
        }
        assert!(found > 0);
    }
}
