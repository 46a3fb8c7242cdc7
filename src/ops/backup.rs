//! `custos backup`: one snapshot of the policy's store to a target.
//!
//! The pipeline (all stages bounded, so memory does not grow with the store):
//!
//! ```text
//! reader thread: consistent read → rows in group order → group keys →
//!   FastCDC → chunk id → already stored? skip : send
//! worker threads (one per core): zstd → seal under the group key
//! packer thread: one open pack per group family; full packs → vault barrier
//!   (new keys persisted at every vault location) → upload pack → index
//! finally: tree pages, vault persisted, snapshot object written last
//! ```

use super::lock::BackupLock;
use super::{OpenRepo, OpsError, SharedVault};
use crate::chunk::{ChunkParams, Chunker};
use crate::crypto::{
    group_key, subject_pseudonyms_hex, ChunkKeys, Id, Key32, KeyBytes, MetaKey, PseudonymHex,
};
use crate::policy::{ExtensionConfig, NotBackedUp, Policy, ResourcesConfig, StoreKind};
use crate::progress::Progress;
use crate::repo::cache::PackCache;
use crate::repo::index::{find_in_bucket, Buckets, Index, IndexObjects, PackSet};
use crate::repo::marker::FormatRaise;
use crate::repo::pack::{pack_path, seal_chunks_into, Codec, PackWriter};
use crate::repo::snapshot::{
    FilesSnapshot, PageList, PostgresSnapshot, Snapshot, SnapshotStats, SqliteSnapshot, StoreInfo,
    TableEntry, WindowMark,
};
use crate::repo::tree::{
    self, ChunkIds, FilePager, FileRecord, GroupEntry, GroupPager, Page, META_FAMILY, PAGE_VERSION,
};
use crate::store::btree::StretchLeaves;
use crate::store::files::{self, FileKind};
use crate::store::postgres::{PgConn, PgError, PgSource, PgTools, RowBatch};
use crate::store::sqlite::{RowidRange, ScanError, SqliteSource, TableSchema};
use crate::store::{GroupCoords, TablePlan};
use crate::target::Target;
use crate::vault::{KeyId, KeyKind, Vault};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Tunables of a backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Target to write to (default: the policy's primary).
    pub target: Option<String>,
    pub zstd_level: i32,
    /// Pack size at which a pack is closed.
    pub pack_size: usize,
    /// Total bytes that open packs may buffer before the largest is closed.
    pub open_pack_budget: usize,
    /// Compression/encryption threads (default: number of cores).
    pub workers: usize,
    /// Pack uploads in flight.
    pub uploads: usize,
    /// Bytes of rows gathered before a window's groups are stored.
    pub window_budget: usize,
}

impl Default for BackupOptions {
    /// The options under the default `[resources]`.
    fn default() -> Self {
        BackupOptions::for_resources(&ResourcesConfig::default())
    }
}

impl BackupOptions {
    /// The options a policy's `[resources]` sets: its threads, read windows
    /// and open packs of an eighth of its buffer memory each (32 MiB by
    /// default); the primary target, zstd level 3.
    pub fn for_policy(policy: &Policy) -> Self {
        BackupOptions::for_resources(&policy.resources)
    }

    fn for_resources(r: &ResourcesConfig) -> Self {
        BackupOptions {
            target: None,
            zstd_level: 3,
            pack_size: 8 << 20,
            open_pack_budget: r.eighth(),
            workers: r.threads(),
            uploads: 3,
            window_budget: r.eighth(),
        }
    }
}

/// What a backup did (printed by the CLI, `--json` as is).
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    pub policy: String,
    pub target: String,
    pub store_kind: String,
    /// Rows (record mode) or files (file mode) in the snapshot, including
    /// rows taken unread from the parent (`rows_unread`).
    pub items: u64,
    /// Bytes of those rows' canonical encoding (or of the files).
    pub bytes_read: u64,
    /// Blobs referenced: chunks and tree pages.
    pub chunks: u64,
    /// Blobs stored by this backup (the others were already stored).
    pub new_chunks: u64,
    /// Bytes added to the target: packs (chunks and tree pages), index
    /// objects and the snapshot object. (The snapshot's own `stats` count
    /// all but the snapshot object.)
    pub new_bytes_stored: u64,
    /// bytes_read / new_bytes_stored.
    pub dedup_ratio: f64,
    /// Rows in read windows whose content matched a window of the parent
    /// snapshot, whose tree pages were reused without chunking them again.
    pub rows_reused: u64,
    /// Of those, rows in stretches of a table whose b-tree pages matched the
    /// parent's: reused without being read at all.
    pub rows_unread: u64,
    /// Read windows read again and stored as an overlay on the parent's
    /// window over the same rows (FORMAT 3.4, "Overlay pages"): only the
    /// groups that changed, not every page of the window.
    pub windows_overlaid: u64,
    /// Snapshots of this policy newer than the parent whose bodies could
    /// not be read, so an older one served as parent (`check` says why).
    pub parents_unreadable: Vec<String>,
    /// Large objects of a postgres store left out of the snapshot, as the
    /// policy's `large_objects = "skip"` allows (0 otherwise).
    pub large_objects_skipped: u64,
    /// Rows of extension configuration tables of a postgres store left
    /// out, as the policy's `extension_config = "skip"` allows (0
    /// otherwise).
    pub extension_config_skipped: u64,
    /// Whether the whole repository's chunk index was loaded (a first
    /// backup, files, or a parent whose windows do not list their packs);
    /// otherwise each read window was stored against the index objects of
    /// the packs its parent's windows list.
    pub whole_index: bool,
    pub duration_s: f64,
    pub tables: Vec<TableSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableSummary {
    pub name: String,
    pub class: String,
    pub rows: u64,
    pub groups: u64,
}

/// Blobs on their way from one stage of the sealing pipeline to the next:
/// their bytes end to end in one buffer, in the order of `items`, each
/// item saying how many bytes are its own.
struct Batch<I> {
    data: Vec<u8>,
    items: Vec<I>,
}

// Not derived: that would ask `I: Default`.
impl<I> Default for Batch<I> {
    fn default() -> Self {
        Batch {
            data: Vec::new(),
            items: Vec::new(),
        }
    }
}

/// An item of a [`Batch`], which knows how many of its bytes are the item's.
trait Part {
    fn len(&self) -> usize;
}

impl<I: Part> Batch<I> {
    /// Each item with its bytes.
    fn parts(&self) -> impl Iterator<Item = (&I, &[u8])> {
        let mut at = 0;
        self.items.iter().map(move |item| {
            let bytes = &self.data[at..at + item.len()];
            at += item.len();
            (item, bytes)
        })
    }
}

/// Bytes of chunks a [`WorkSender`] gathers before it hands them over.
const BATCH_BYTES: usize = 256 << 10;

/// Chunks on their way to a worker (their plaintexts).
type WorkBatch = Batch<Work>;

/// A chunk of a [`WorkBatch`].
struct Work {
    keys: ChunkKeys,
    id: Id,
    family: KeyId,
    len: u32,
    /// The read window it belongs to ([`NO_WINDOW`] in file mode).
    window: u32,
}

impl Part for Work {
    fn len(&self) -> usize {
        self.len as usize
    }
}

/// Sealed chunks (and tree pages) on their way to the packer.
type SealedBatch = Batch<Sealed>;

/// A blob of a [`SealedBatch`].
struct Sealed {
    id: Id,
    family: KeyId,
    len: u32,
    raw_len: u32,
    window: u32,
}

/// The window of blobs that belong to no read window (file mode).
const NO_WINDOW: u32 = u32::MAX;

/// The packs of one read window's blobs stored before this run, as
/// positions in the index's `packs` while the reader works; `None` when it
/// cannot tell. The packs written for the window itself come from the
/// packer.
type WindowHint = Option<PackSet>;
/// The same as pack ids, once the window's mark is written.
type WindowPacks = Option<Vec<Id>>;

impl Part for Sealed {
    fn len(&self) -> usize {
        self.len as usize
    }
}

/// Batch buffers that go back to the stage that fills them instead of
/// being freed. Freed memory returns to the system at once (see `main`),
/// so a buffer allocated per chunk, or per batch, was faulted in and
/// zeroed again each time. At most `keep` batches wait here, and one that
/// grew past four times the batch size (a large file chunk) is freed.
struct Pool<I> {
    free: Mutex<Vec<Batch<I>>>,
    keep: usize,
}

impl<I> Pool<I> {
    fn new(keep: usize) -> Self {
        Pool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    fn take(&self) -> Batch<I> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut batch: Batch<I>) {
        if batch.data.capacity() > 4 * BATCH_BYTES {
            return;
        }
        batch.data.clear();
        batch.items.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(batch);
        }
    }
}

/// The two pools of the sealing pipeline.
struct Pools {
    work: Pool<Work>,
    sealed: Pool<Sealed>,
}

impl Pools {
    /// Enough for every batch the channels hold and each stage has in hand.
    fn new(workers: usize) -> Arc<Self> {
        let keep = 3 * workers + 4;
        Arc::new(Pools {
            work: Pool::new(keep),
            sealed: Pool::new(keep),
        })
    }
}

/// Counters shared by the stages.
#[derive(Default)]
struct Counters {
    stored_bytes: AtomicU64,
    packs: AtomicU64,
    chunks: AtomicU64,
    new_chunks: AtomicU64,
    rows_reused: AtomicU64,
    rows_unread: AtomicU64,
    /// Read windows stored as an overlay on the parent's (FORMAT 3.4).
    overlays: AtomicU64,
    /// Large objects of a postgres store left out (`large_objects = "skip"`).
    large_objects_skipped: AtomicU64,
    /// Rows of extension configuration tables left out
    /// (`extension_config = "skip"`).
    extension_config_skipped: AtomicU64,
}

/// The first error any stage hit (later ones are consequences). The flag
/// mirrors whether an error is held, so the per-row check of the reading
/// thread takes no lock.
#[derive(Default, Clone)]
struct Failure {
    first: Arc<Mutex<Option<OpsError>>>,
    set: Arc<std::sync::atomic::AtomicBool>,
}

impl Failure {
    fn set(&self, e: OpsError) {
        let mut g = self.first.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
            self.set.store(true, Ordering::Release);
        }
    }
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
    fn take(&self) -> Option<OpsError> {
        let mut g = self.first.lock().unwrap();
        self.set.store(false, Ordering::Release);
        g.take()
    }
}

/// Runs one backup of the policy's store.
pub async fn backup(
    policy: &Policy,
    opts: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<BackupReport, OpsError> {
    let start = Instant::now();
    let repo = OpenRepo::open(policy, opts.target.as_deref()).await?;
    if !repo.vault.can_write() {
        // Refused before anything is read or written: a backup creates keys.
        return Err(crate::vault::VaultError::ReadOnly.into());
    }
    let lock_target = repo.target.clone();
    let lock = BackupLock::acquire(&lock_target).await?;
    let r = backup_locked(policy, opts, progress, repo, start).await;
    let released = lock.release(&lock_target).await;
    let report = r?;
    released?;
    Ok(report)
}

async fn backup_locked(
    policy: &Policy,
    opts: &BackupOptions,
    progress: Arc<dyn Progress>,
    repo: OpenRepo,
    start: Instant,
) -> Result<BackupReport, OpsError> {
    let seed = repo.chunk_seed();
    let OpenRepo {
        target,
        marker,
        vault,
        meta,
    } = repo;
    // The parent: this policy's latest readable snapshot (a target may hold
    // others). Only the snapshots' heads are read to choose it.
    let (heads, _) = Snapshot::heads_with_ids(&target, &meta).await?;
    let mut parent = None;
    let mut parents_unreadable = Vec::new();
    for head in heads.iter().rev().filter(|h| h.policy == policy.name) {
        match Snapshot::load(&target, &meta, &head.id).await {
            Ok(p) => {
                parent = Some(p);
                break;
            }
            Err(e) => {
                tracing::warn!(snapshot = %head.id, error = %e, "a snapshot of this policy is unreadable; the backup takes an older one as its parent");
                parents_unreadable.push(head.id.clone());
            }
        }
    }
    let parent_id = parent.as_ref().map(|p| p.id.clone());
    // The parent's page lists: the parts of a window read again that did
    // not change are named, not stored again.
    let parent_lists: HashMap<Id, PageList> = parent
        .iter()
        .flat_map(|p| p.page_lists())
        .map(|l| (l.id, *l))
        .collect();
    let target = Arc::new(target);
    let meta = Arc::new(meta);
    // The index loads while the first read window fills: reading needs no
    // index, storing does (ReaderCtx::ready_index). A backup asks of a chunk
    // only whether it is stored, and reads no page but its parent's, so it
    // loads a membership index with the locations of those pages alone.
    // A parent whose read windows all list their packs (FORMAT 3.5) says
    // where every chunk of its rows is: each window is then stored against
    // the index objects of the packs its rows' windows list, and no index
    // of the whole repository is loaded (its memory grows with the
    // repository). Files, a first backup and older parents load it, and so
    // does a parent with a table of several windows without rowid ranges
    // (PostgreSQL, WITHOUT ROWID): every window of it would need the
    // whole table's packs.
    let windowed = policy.store.kind != StoreKind::Files
        && parent.as_ref().is_some_and(|p| {
            let tables = p.record_tables();
            !tables.is_empty()
                && tables.iter().all(|t| {
                    !t.windows.is_empty()
                        && t.windows.iter().map(|w| w.pages).sum::<u64>() == t.pages.len() as u64
                        && t.windows.iter().all(|w| w.packs.is_some())
                        && (t.windows.len() == 1
                            || t.windows.iter().all(|w| w.from.is_some() || w.to.is_some()))
                })
        });
    let index_load = (!windowed).then(|| {
        let (target, meta) = (target.clone(), meta.clone());
        let pages: Vec<Id> = parent.as_ref().map_or_else(Vec::new, |p| {
            let tables = p.record_tables().iter().flat_map(|t| t.pages.iter());
            let files = p.files.iter().flat_map(|f| f.pages.iter());
            tables.chain(files).copied().collect()
        });
        tokio::spawn(async move { Index::load_membership(&target, &meta, pages).await })
    });
    let vault: SharedVault = Arc::new(tokio::sync::Mutex::new(vault));
    let counters = Arc::new(Counters::default());
    let failure = Failure::default();
    let handle = tokio::runtime::Handle::current();
    let now = chrono::Utc::now();

    // Workers and packer.
    let (work_tx, work_rx) = sync_channel::<WorkBatch>(opts.workers * 2);
    let (sealed_tx, sealed_rx) = sync_channel::<SealedBatch>(opts.workers * 2);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let pools = Pools::new(opts.workers.max(1));
    let mut threads = Vec::new();
    for i in 0..opts.workers.max(1) {
        let rx = work_rx.clone();
        let tx = sealed_tx.clone();
        let level = opts.zstd_level;
        let pools = pools.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("custos-seal-{i}"))
                .spawn(move || worker(rx, tx, level, &pools))
                .map_err(|e| OpsError::Internal(format!("spawning a worker: {e}")))?,
        );
    }
    // Tree pages go to the packer directly (metadata packs).
    let sealed_pages = sealed_tx.clone();
    let placed = Arc::new(Mutex::new(Vec::new()));
    let format = Arc::new(FormatRaise::new(marker.clone()));
    drop(sealed_tx);
    let packer = {
        let ctx = PackerCtx {
            target: target.clone(),
            meta: meta.clone(),
            counters: counters.clone(),
            failure: failure.clone(),
            handle: handle.clone(),
            pack_size: opts.pack_size,
            budget: opts.open_pack_budget,
            uploads: Arc::new(tokio::sync::Semaphore::new(opts.uploads.max(1))),
            pools: pools.clone(),
            placed: placed.clone(),
            format: format.clone(),
        };
        std::thread::Builder::new()
            .name("custos-packer".into())
            .spawn(move || packer(ctx, sealed_rx))
            .map_err(|e| OpsError::Internal(format!("spawning the packer: {e}")))?
    };

    // The reader runs on a blocking thread: SQLite and file reads are sync.
    let reader = ReaderCtx {
        policy: policy.clone(),
        vault: vault.clone(),
        meta: meta.clone(),
        index: Arc::new(Index::default()),
        index_load,
        lists: windowed
            .then(|| IndexObjects::new(target.clone(), meta.clone(), BACKUP_KEPT_ENTRIES)),
        target: target.clone(),
        handle: handle.clone(),
        work: WorkSender::new(work_tx, pools.clone()),
        in_flight: HashSet::new(),
        window: NO_WINDOW,
        hint: WindowHint::default(),
        hints: Vec::new(),
        counters: counters.clone(),
        failure: failure.clone(),
        progress: progress.clone(),
        seed,
        params: marker.records_chunking,
        file_params: marker.files_chunking,
        now,
        // Moved, not cloned: at 4 GiB a parent lists half a million
        // tree pages, and a copy held all through the backup cost its
        // size again at the peak.
        parent,
        pages_out: PageSender::new(sealed_pages, pools.clone()),
        window_budget: opts.window_budget,
        threads: opts.workers.max(1),
        pack_cache: None,
        scratch: Vec::new(),
    };
    let read_result = tokio::task::spawn_blocking(move || reader.run())
        .await
        .map_err(|e| OpsError::Internal(format!("reader thread: {e}")))?;
    // The reader dropped its sender: workers drain and stop, then the packer.
    for t in threads {
        let _ = t.join();
    }
    let _ = packer.join();
    let mut content = match read_result {
        Ok(v) => v,
        Err(e) => {
            failure.set(e);
            ReadContent::default()
        }
    };
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let placed = std::mem::take(&mut *placed.lock().unwrap());
    let tables = match (&mut content.sqlite, &mut content.postgres) {
        (Some(s), _) => Some(&mut s.tables),
        (_, Some(p)) => Some(&mut p.tables),
        _ => None,
    };
    if let Some(tables) = tables {
        mark_window_packs(tables, &content.window_packs, &placed);
        let mut found = StoredLists {
            parent: parent_lists,
            index: content.index.take(),
            objects: IndexObjects::new(target.clone(), meta.clone(), BACKUP_KEPT_ENTRIES),
        };
        store_page_lists(
            (&target, &format),
            &meta,
            tables,
            &mut found,
            opts.pack_size,
            &counters,
        )
        .await?;
    }
    // Every key used must be in every vault location before the snapshot
    // that needs it exists.
    vault.lock().await.persist().await?;

    let mut snapshot = Snapshot {
        version: crate::repo::snapshot::SNAPSHOT_VERSION,
        id: Snapshot::new_id(),
        policy: policy.name.clone(),
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        parent: parent_id,
        custos_version: crate::VERSION.to_string(),
        store: content.store,
        sqlite: content.sqlite,
        files: content.files,
        postgres: content.postgres,
        stats: SnapshotStats {
            items: content.items,
            bytes_read: content.bytes_read,
            chunks: counters.chunks.load(Ordering::Relaxed),
            new_chunks: counters.new_chunks.load(Ordering::Relaxed),
            new_bytes_stored: 0,
            packs_written: counters.packs.load(Ordering::Relaxed),
            duration_ms: 0,
        },
    };
    snapshot.stats.new_bytes_stored = counters.stored_bytes.load(Ordering::Relaxed);
    snapshot.stats.duration_ms = start.elapsed().as_millis() as u64;
    // The snapshot's own stats cannot count the object they are in; the
    // report does (a backup with nothing new still writes it).
    let snapshot_bytes = snapshot.store(&target, &meta).await?;
    let duration = start.elapsed().as_secs_f64();
    let stored = snapshot.stats.new_bytes_stored + snapshot_bytes;
    let tables = snapshot
        .sqlite
        .as_ref()
        .map(|s| {
            s.tables
                .iter()
                .map(|t| TableSummary {
                    name: t.name.clone(),
                    class: t.class.clone(),
                    rows: t.rows,
                    groups: t.groups,
                })
                .collect()
        })
        .unwrap_or_default();
    let tables = match &snapshot.postgres {
        Some(pg) => table_summaries(&pg.tables),
        None => tables,
    };
    Ok(BackupReport {
        snapshot: snapshot.id.clone(),
        policy: policy.name.clone(),
        target: target.name.clone(),
        store_kind: snapshot.store.kind.clone(),
        items: snapshot.stats.items,
        bytes_read: snapshot.stats.bytes_read,
        chunks: snapshot.stats.chunks,
        new_chunks: snapshot.stats.new_chunks,
        new_bytes_stored: stored,
        dedup_ratio: if stored == 0 {
            f64::INFINITY
        } else {
            snapshot.stats.bytes_read as f64 / stored as f64
        },
        rows_reused: counters.rows_reused.load(Ordering::Relaxed),
        rows_unread: counters.rows_unread.load(Ordering::Relaxed),
        windows_overlaid: counters.overlays.load(Ordering::Relaxed),
        parents_unreadable,
        large_objects_skipped: counters.large_objects_skipped.load(Ordering::Relaxed),
        extension_config_skipped: counters.extension_config_skipped.load(Ordering::Relaxed),
        whole_index: !windowed,
        duration_s: duration,
        tables,
    })
}

fn worker(
    rx: Arc<Mutex<Receiver<WorkBatch>>>,
    tx: SyncSender<SealedBatch>,
    level: i32,
    pools: &Pools,
) {
    let mut codec = Codec::new(level);
    let mut lens = Vec::new();
    loop {
        let batch = {
            let g = rx.lock().unwrap();
            g.recv()
        };
        let Ok(batch) = batch else { return };
        let mut out = pools.sealed.take();
        out.data.reserve(batch.data.len() + 17 * batch.items.len());
        let chunks: Vec<(&ChunkKeys, &Id, &[u8])> = batch
            .parts()
            .map(|(w, plain)| (&w.keys, &w.id, plain))
            .collect();
        lens.clear();
        seal_chunks_into(&mut codec, &chunks, &mut out.data, &mut lens);
        drop(chunks);
        for (w, &len) in batch.items.iter().zip(&lens) {
            out.items.push(Sealed {
                id: w.id,
                family: w.family,
                len,
                raw_len: w.len,
                window: w.window,
            });
        }
        pools.work.give(batch);
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Sends chunks to the workers in batches (one channel message per
/// ~256 KiB), so the threads do not wake each other per chunk; a chunk's
/// plaintext is copied once, into the batch.
struct WorkSender {
    tx: SyncSender<WorkBatch>,
    pools: Arc<Pools>,
    batch: WorkBatch,
    /// The read window the chunks sent belong to.
    window: u32,
}

impl WorkSender {
    fn new(tx: SyncSender<WorkBatch>, pools: Arc<Pools>) -> Self {
        WorkSender {
            tx,
            pools,
            batch: WorkBatch::default(),
            window: NO_WINDOW,
        }
    }

    /// A sender of its own to the same workers (one per grouping thread).
    fn fork(&self) -> Self {
        let mut s = WorkSender::new(self.tx.clone(), self.pools.clone());
        s.window = self.window;
        s
    }

    fn send(
        &mut self,
        keys: &ChunkKeys,
        id: Id,
        family: KeyId,
        data: &[u8],
    ) -> Result<(), OpsError> {
        let work = Work {
            keys: keys.clone(),
            id,
            family,
            len: data.len() as u32,
            window: self.window,
        };
        if gather(&mut self.batch, &self.pools.work, data, work) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), OpsError> {
        hand_over(&self.tx, &mut self.batch, "the sealing workers stopped")
    }
}

/// Adds an item and its bytes to `batch`, which is taken from `pool` when
/// it has none yet; whether the batch is full.
fn gather<I>(batch: &mut Batch<I>, pool: &Pool<I>, data: &[u8], item: I) -> bool {
    if batch.items.is_empty() && batch.data.capacity() == 0 {
        *batch = pool.take();
        batch.data.reserve(BATCH_BYTES + data.len());
    }
    batch.data.extend_from_slice(data);
    batch.items.push(item);
    batch.data.len() >= BATCH_BYTES
}

/// Sends `batch` on (if it holds anything), leaving it empty; `gone` says
/// which stage stopped if the channel is closed.
fn hand_over<I>(
    tx: &SyncSender<Batch<I>>,
    batch: &mut Batch<I>,
    gone: &str,
) -> Result<(), OpsError> {
    if batch.items.is_empty() {
        return Ok(());
    }
    tx.send(std::mem::take(batch))
        .map_err(|_| OpsError::Internal(gone.into()))
}

/// Gathers sealed tree pages into batches for the packer, as
/// [`WorkSender`] gathers chunks for the workers. A page sent alone woke
/// the packer each time: at 1 GiB the two threads' futex calls for it were
/// about 4% of a first backup's CPU samples.
struct PageSender {
    tx: SyncSender<SealedBatch>,
    pools: Arc<Pools>,
    batch: SealedBatch,
}

impl PageSender {
    fn new(tx: SyncSender<SealedBatch>, pools: Arc<Pools>) -> Self {
        PageSender {
            tx,
            pools,
            batch: SealedBatch::default(),
        }
    }

    fn send(&mut self, id: Id, sealed: &[u8], window: u32) -> Result<(), OpsError> {
        let len = sealed.len() as u32;
        let page = Sealed {
            id,
            family: META_FAMILY,
            len,
            raw_len: len,
            window,
        };
        if gather(&mut self.batch, &self.pools.sealed, sealed, page) {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands over the pages gathered (the reader's last step).
    fn flush(&mut self) -> Result<(), OpsError> {
        hand_over(&self.tx, &mut self.batch, "the packer stopped")
    }
}

struct PackerCtx {
    target: Arc<Target>,
    meta: Arc<MetaKey>,
    counters: Arc<Counters>,
    failure: Failure,
    handle: tokio::runtime::Handle,
    pack_size: usize,
    budget: usize,
    uploads: Arc<tokio::sync::Semaphore>,
    pools: Arc<Pools>,
    /// Each pack written, with the read windows whose blobs it holds.
    placed: Arc<Mutex<Vec<(Id, PackSet)>>>,
    /// Raises the repository's marker before the first pack is written.
    format: Arc<FormatRaise>,
}

fn packer(ctx: PackerCtx, rx: Receiver<SealedBatch>) {
    let mut open: HashMap<KeyId, (PackWriter, PackSet)> = HashMap::new();
    let mut open_bytes = 0usize;
    let mut tasks = Vec::new();
    for batch in rx {
        if ctx.failure.is_set() {
            continue; // drain so upstream stages can finish
        }
        for (s, sealed) in batch.parts() {
            let (w, windows) = open
                .entry(s.family)
                .or_insert_with(|| (PackWriter::for_pack(ctx.pack_size), PackSet::default()));
            w.add(s.id, sealed, s.raw_len);
            if s.window != NO_WINDOW {
                windows.add(s.window);
            }
            open_bytes += sealed.len();
            if w.len() >= ctx.pack_size {
                let w = open.remove(&s.family).unwrap();
                open_bytes -= w.0.data_len();
                tasks.push(flush(&ctx, w));
            } else if open_bytes > ctx.budget {
                let fam = *open
                    .iter()
                    .max_by_key(|(_, w)| w.0.len())
                    .map(|(k, _)| k)
                    .unwrap();
                let w = open.remove(&fam).unwrap();
                open_bytes -= w.0.data_len();
                tasks.push(flush(&ctx, w));
            }
        }
        ctx.pools.sealed.give(batch);
    }
    if !ctx.failure.is_set() {
        for (_, w) in open.drain() {
            tasks.push(flush(&ctx, w));
        }
    }
    for t in tasks.into_iter().flatten() {
        match ctx.handle.block_on(t) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ctx.failure.set(e),
            Err(e) => ctx
                .failure
                .set(OpsError::Internal(format!("upload task: {e}"))),
        }
    }
}

type UploadTask = tokio::task::JoinHandle<Result<(), OpsError>>;

/// Closes a pack and starts its upload.
fn flush(ctx: &PackerCtx, (w, windows): (PackWriter, PackSet)) -> Option<UploadTask> {
    if w.is_empty() {
        return None;
    }
    let (id, bytes, index) = w.finish(&ctx.meta);
    ctx.placed.lock().unwrap().push((id, windows));
    // No vault barrier is needed here: the reader persists every key at
    // every vault location before it hands out a chunk sealed under it.
    let permit = ctx
        .handle
        .block_on(ctx.uploads.clone().acquire_owned())
        .expect("semaphore never closed");
    let target = ctx.target.clone();
    let meta = ctx.meta.clone();
    let counters = ctx.counters.clone();
    let format = ctx.format.clone();
    Some(ctx.handle.spawn(async move {
        let _permit = permit;
        let n = bytes.len() as u64;
        format.before_write(&target).await?;
        target.put(&pack_path(&id), bytes.into()).await?;
        let index_bytes = index.store(&target, &meta).await?;
        counters
            .stored_bytes
            .fetch_add(n + index_bytes, Ordering::Relaxed);
        counters.packs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }))
}

#[derive(Default)]
struct ReadContent {
    store: StoreInfo,
    sqlite: Option<SqliteSnapshot>,
    files: Option<FilesSnapshot>,
    postgres: Option<PostgresSnapshot>,
    items: u64,
    bytes_read: u64,
    /// Per window mark written, in order: the packs of blobs stored before.
    window_packs: Vec<WindowPacks>,
    /// The index the reader stored against last (the whole membership
    /// index, or the last window's): page lists already stored are found
    /// in it and not stored again.
    index: Option<Arc<Index>>,
}

struct ReaderCtx {
    policy: Policy,
    vault: SharedVault,
    meta: Arc<MetaKey>,
    /// The index chunks are looked up in: the whole membership index once
    /// [`ReaderCtx::ready_index`] has taken `index_load` (empty until
    /// then), or with `lists`, the index of the window being stored.
    index: Arc<Index>,
    index_load: Option<tokio::task::JoinHandle<Result<Index, crate::repo::RepoError>>>,
    target: Arc<Target>,
    handle: tokio::runtime::Handle,
    work: WorkSender,
    in_flight: HashSet<Id>,
    /// The read window being stored (its position in `hints`), or
    /// [`NO_WINDOW`].
    window: u32,
    /// What is known so far of the packs of the window being stored.
    hint: WindowHint,
    /// The same, as pack ids, for every window whose mark is written, in
    /// order.
    hints: Vec<WindowPacks>,
    /// With a parent whose windows all list their packs: their index
    /// objects. Each window is then stored against an index of the packs
    /// the parent's windows over the same rows list (`index` is that),
    /// and no index of the whole repository is loaded.
    lists: Option<IndexObjects>,
    counters: Arc<Counters>,
    failure: Failure,
    progress: Arc<dyn Progress>,
    seed: u64,
    params: ChunkParams,
    file_params: ChunkParams,
    now: chrono::DateTime<chrono::Utc>,
    parent: Option<Snapshot>,
    /// Sealed tree pages, in batches to the packer.
    pages_out: PageSender,
    window_budget: usize,
    /// Threads that chunk and hash a window's groups.
    threads: usize,
    /// Metadata packs read to reuse the parent's tree pages.
    pack_cache: Option<PackCache>,
    /// A buffer for window digests, kept from one window to the next.
    scratch: Vec<u8>,
}

/// Rows of one table read in storage order, gathered by group until the
/// window's byte budget is reached. Reading in storage order needs no sort
/// (so no plaintext temporary file and a sequential read); a group whose
/// rows span two windows is stored as two runs (FORMAT 3.4). Window limits
/// fall at byte offsets of the table, so an edit moves only the groups near
/// a limit into the neighbouring window.
///
/// The reading thread only appends: each row to one buffer, and each run
/// of consecutive rows with the same coordinates as one entry. Rows are
/// linked per group later, by [`Window::group`], and only for a window that
/// is stored anew: a window whose digest matches the parent's is never
/// grouped. The buffers are kept (cleared) from one window to the next.
#[derive(Default)]
struct Window {
    /// The groups, once [`Window::group`] has run, in the order they are
    /// stored in.
    slots: Vec<Slot>,
    /// Every row of the window, in arrival order.
    arena: Vec<u8>,
    /// Rows: (start in `arena`, length), in arrival order.
    rows: Vec<(u32, u32)>,
    /// The rows' numbers, group after group ([`Window::group`] fills it;
    /// a slot's rows are `order[first..first + rows]`), so that a group's
    /// rows are found by loads that do not wait for each other, not by
    /// following a chain of cache misses.
    order: Vec<u32>,
    /// Runs of consecutive rows with equal coordinates, in read order.
    runs: Vec<Run>,
    /// The coordinates' text of every run.
    coord_bytes: Vec<u8>,
    bytes: usize,
    /// Rowid table: the rowids the window stands for (set by the reader
    /// when it hands the window over).
    range: RowidRange,
    /// The digest of the leaves the window's rowids meet, for the next
    /// backup (FORMAT, "Unread stretches"; set by the reader with `range`).
    stretch: Option<[u8; 32]>,
}

/// Where a coordinate's text is in `Window::coord_bytes` (start, length),
/// or no coordinate: 8 bytes, where `Option<(u32, u32)>` takes 12. A
/// window holds one per run and per group for its subject and bucket
/// each (about a million at 1 GiB of call records, every call its own run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Coord {
    start: u32,
    len: u32,
}

impl Coord {
    const NONE: Coord = Coord {
        start: 0,
        len: u32::MAX,
    };
}

/// Consecutive rows with the same coordinates: where the subject and the
/// bucket are, the first row, and how many rows and bytes.
struct Run {
    subject: Coord,
    bucket: Coord,
    first: u32,
    rows: u32,
    bytes: u32,
}

/// One group of a window.
struct Slot {
    /// The group's coordinates (those of the group's first run).
    subject: Coord,
    bucket: Coord,
    /// Its rows and their bytes (a window's offsets are 32-bit too).
    rows: u32,
    bytes: u32,
    /// Where its rows start in [`Window::order`].
    first: u32,
}

/// Bytes a window's digest gathers before hashing them ([`Window::digest`]).
const DIGEST_SCRATCH: usize = 64 << 10;

impl Window {
    /// A window whose row buffer is reserved for `budget` up front (pages
    /// are only touched as rows arrive), so it never grows by copying.
    fn with_budget(budget: usize) -> Self {
        Window {
            arena: Vec::with_capacity(budget.saturating_mul(2).saturating_add(1 << 16)),
            ..Window::default()
        }
    }

    fn add(&mut self, coords: &GroupCoords, row: &[u8]) {
        let at = self.rows.len() as u32;
        let len = row.len() as u32;
        self.rows.push((self.arena.len() as u32, len));
        self.arena.extend_from_slice(row);
        self.bytes += row.len();
        let subject = coords.subject.as_deref().map(str::as_bytes);
        let bucket = coords.bucket.as_deref().map(str::as_bytes);
        if let Some(last) = self.runs.last() {
            if self.text(last.subject) == subject && self.text(last.bucket) == bucket {
                let run = self.runs.last_mut().expect("just seen");
                run.rows += 1;
                run.bytes += len;
                return;
            }
        }
        let subject = subject.map_or(Coord::NONE, |t| self.keep(t));
        let bucket = bucket.map_or(Coord::NONE, |t| self.keep(t));
        self.runs.push(Run {
            subject,
            bucket,
            first: at,
            rows: 1,
            bytes: len,
        });
    }

    /// Appends a coordinate's text; returns where it is.
    fn keep(&mut self, text: &[u8]) -> Coord {
        let at = Coord {
            start: self.coord_bytes.len() as u32,
            len: u32::try_from(text.len())
                .ok()
                .filter(|&n| n != u32::MAX)
                .expect("a coordinate shorter than 4 GiB"),
        };
        self.coord_bytes.extend_from_slice(text);
        at
    }

    /// A coordinate as text (it was appended from `&str`, so it borrows).
    fn coord(&self, at: Coord) -> Option<std::borrow::Cow<'_, str>> {
        self.text(at).map(String::from_utf8_lossy)
    }

    /// A run's coordinate text, as bytes (appended from `&str`, so UTF-8;
    /// compared and hashed as bytes, so never validated row by row).
    fn text(&self, at: Coord) -> Option<&[u8]> {
        coord_text(&self.coord_bytes, at)
    }

    /// Links every row to its group: fills `slots`, one per distinct
    /// coordinates, in (bucket, subject) order by their texts, a missing
    /// one first (the order the groups are stored in), each with its rows
    /// in read order.
    ///
    /// The runs are sorted by one 128-bit integer each ([`run_key`]): the
    /// bucket's rank among the window's few buckets, the subject's head,
    /// the run's number. Looking each run up in a hash table of the
    /// window's groups instead cost three cache misses a run (the table,
    /// the group, its text), a third of the storing thread's time, which
    /// every other thread waits on; the sort reads the runs in order.
    /// Where heads tie on subjects of 8 bytes or more, the texts settle it.
    fn group(&mut self) {
        debug_assert!(self.slots.is_empty(), "a window is grouped once");
        let Window {
            slots,
            rows,
            order,
            runs,
            coord_bytes,
            ..
        } = self;
        let text = |at: Coord| coord_text(coord_bytes, at);
        let mut keys: Vec<u128> = {
            // The distinct buckets, sorted (runs mostly repeat the last).
            let mut buckets: Vec<Option<&[u8]>> = Vec::new();
            let mut last = None;
            for run in runs.iter() {
                let b = text(run.bucket);
                if last != Some(b) {
                    buckets.push(b);
                    last = Some(b);
                }
            }
            buckets.sort_unstable();
            buckets.dedup();
            let mut last: Option<(Option<&[u8]>, u32)> = None;
            (0u32..)
                .zip(runs.iter())
                .map(|(i, run)| {
                    let b = text(run.bucket);
                    let rank = match last {
                        Some((t, r)) if t == b => r,
                        _ => {
                            let r = buckets.binary_search(&b).expect("every bucket ranked") as u32;
                            last = Some((b, r));
                            r
                        }
                    };
                    run_key(rank, text(run.subject), i)
                })
                .collect()
        };
        keys.sort_unstable();
        // Heads that tie on subjects of 8 bytes or more: by the texts,
        // then (for equal texts) the run's number, so read order.
        let subject = |k: u128| text(runs[k as u32 as usize].subject);
        let mut at = 0;
        while at < keys.len() {
            let mut end = at + 1;
            while end < keys.len() && keys[end] >> 32 == keys[at] >> 32 {
                end += 1;
            }
            if end - at > 1 && head_is_partial(keys[at]) {
                keys[at..end]
                    .sort_unstable_by(|&a, &b| subject(a).cmp(&subject(b)).then(a.cmp(&b)));
            }
            at = end;
        }
        order.clear();
        order.reserve_exact(rows.len());
        let mut prev: Option<u128> = None;
        for (i, &k) in keys.iter().enumerate() {
            // Load the run this loop reads four runs on.
            if let Some(&ahead) = keys.get(i + 4) {
                crate::prefetch::line(&runs[ahead as u32 as usize]);
            }
            let run = &runs[k as u32 as usize];
            let same = prev.is_some_and(|p| {
                p >> 32 == k >> 32 && (!head_is_partial(k) || subject(p) == text(run.subject))
            });
            if same {
                let s = slots.last_mut().expect("a group started");
                s.rows += run.rows;
                s.bytes += run.bytes;
            } else {
                slots.push(Slot {
                    subject: run.subject,
                    bucket: run.bucket,
                    rows: run.rows,
                    bytes: run.bytes,
                    first: order.len() as u32,
                });
            }
            order.extend(run.first..run.first + run.rows);
            prev = Some(k);
        }
    }

    /// Asks the CPU to start loading a group's rows (at most the first 8,
    /// two cache lines each) into its caches.
    fn prefetch_rows(&self, slot: &Slot) {
        let first = slot.first as usize;
        for &at in &self.order[first..first + slot.rows.min(8) as usize] {
            let (start, len) = self.rows[at as usize];
            if let Some(row) = self.arena.get(start as usize..(start + len) as usize) {
                crate::prefetch::head(row);
            }
        }
    }

    /// A group's rows, in read order.
    fn group_rows<'a>(&'a self, slot: &Slot) -> impl Iterator<Item = &'a [u8]> + 'a {
        let first = slot.first as usize;
        self.order[first..first + slot.rows as usize]
            .iter()
            .map(|&at| {
                let (start, len) = self.rows[at as usize];
                &self.arena[start as usize..(start + len) as usize]
            })
    }

    /// Whether the window ends after `row`, just added: once it holds
    /// `budget` bytes, at the next anchor row (one every 8 KiB of rows on
    /// average, chosen by the row's content), or at twice the budget. Because anchors are
    /// rows, not offsets, window limits fall at the same rows from one
    /// backup to the next even after earlier rows changed size, so the
    /// windows after a change line up with the parent's again.
    fn full(&self, budget: usize, row: &[u8]) -> bool {
        self.bytes >= budget && (is_anchor(row) || self.bytes >= budget.saturating_mul(2))
    }

    /// The window's content, digested (FORMAT 4, "Window reuse"): every
    /// row in read order with its length, and the runs of rows with equal
    /// coordinates, after what `h` already holds. Two windows have the same
    /// digest only if they hold the same rows in the same order under the
    /// same coordinates, hence the same groups.
    fn digest(&self, mut h: blake3::Hasher, scratch: &mut Vec<u8>) -> [u8; 32] {
        // The bytes are hashed as one stream, fed a scratch's worth at a
        // time: the digest is the same as of their concatenation, and the
        // scratch stays small (it held every run's coordinates, some
        // 8 MiB a window at 4 GiB of call records, kept between windows).
        let feed = |h: &mut blake3::Hasher, scratch: &mut Vec<u8>, at_least: usize| {
            if scratch.len() >= at_least {
                h.update(scratch);
                scratch.clear();
            }
        };
        h.update(&(self.rows.len() as u64).to_le_bytes());
        h.update(&(self.arena.len() as u64).to_le_bytes());
        h.update(&self.arena);
        scratch.clear();
        for &(_, len) in &self.rows {
            scratch.extend_from_slice(&len.to_le_bytes());
            feed(&mut h, scratch, DIGEST_SCRATCH);
        }
        feed(&mut h, scratch, 0);
        scratch.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        for run in &self.runs {
            for part in [run.subject, run.bucket] {
                match self.text(part) {
                    None => scratch.push(0),
                    Some(v) => {
                        scratch.push(1);
                        scratch.extend_from_slice(&(v.len() as u64).to_le_bytes());
                        scratch.extend_from_slice(v);
                    }
                }
            }
            scratch.extend_from_slice(&run.rows.to_le_bytes());
            feed(&mut h, scratch, DIGEST_SCRATCH);
        }
        feed(&mut h, scratch, 0);
        *h.finalize().as_bytes()
    }

    /// Empties the window, keeping its buffers.
    fn clear(&mut self) {
        self.slots.clear();
        self.arena.clear();
        self.rows.clear();
        self.order.clear();
        self.runs.clear();
        self.coord_bytes.clear();
        self.bytes = 0;
        self.range = RowidRange::ALL;
        self.stretch = None;
    }
}

/// A coordinate's text in a window's `coord_bytes`.
fn coord_text(bytes: &[u8], at: Coord) -> Option<&[u8]> {
    (at != Coord::NONE).then(|| &bytes[at.start as usize..(at.start + at.len) as usize])
}

/// A run's place in the order groups are stored in, as one integer, high
/// bits first: the bucket's rank (32 bits, with the subject's presence as
/// its lowest: a missing subject first), the subject's head (64 bits),
/// the run's number (32 bits, so read order among a group's runs).
///
/// The head is the subject's first 7 bytes, zero-padded, then a byte that
/// is the text's length up to 7, or 8 for a longer one. Where two heads
/// differ, the texts order the same way: either they differ in those 7
/// bytes, or one is a prefix of the other and the shorter comes first.
/// Heads that end in 8 can tie on different texts ([`head_is_partial`]);
/// any other head is its whole text.
fn run_key(rank: u32, subject: Option<&[u8]>, run: u32) -> u128 {
    let (present, head) = match subject {
        None => (0u128, 0u64),
        Some(t) => {
            let mut b = [0u8; 8];
            let n = t.len().min(7);
            b[..n].copy_from_slice(&t[..n]);
            b[7] = t.len().min(8) as u8;
            (1, u64::from_be_bytes(b))
        }
    };
    let rank = u128::from(rank) * 2 + present;
    assert!(
        rank <= u128::from(u32::MAX),
        "fewer than 2^31 buckets a window"
    );
    rank << 96 | u128::from(head) << 32 | u128::from(run)
}

/// Whether a [`run_key`]'s head stands for a subject of 8 bytes or more,
/// which the head does not hold whole.
fn head_is_partial(key: u128) -> bool {
    (key >> 96) & 1 == 1 && (key >> 32) as u8 == 8
}

/// Whether a row ends a full window: about one in every 8 KiB of rows, by a
/// fast hash of its encoding (which starts with its rowid or key).
fn is_anchor(row: &[u8]) -> bool {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = row.len() as u64;
    let mut it = row.chunks_exact(8);
    for w in &mut it {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    last[..it.remainder().len()].copy_from_slice(it.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    // One byte in 8 KiB: a row is an anchor with probability len / 8192,
    // so anchors are about 8 KiB of rows apart whatever the row size.
    (h >> 51) < row.len() as u64
}

/// What a table's windows add up to, window by window.
#[derive(Default)]
struct TableAcc {
    pages: Vec<Id>,
    groups: u64,
    checksum: u128,
    windows: Vec<WindowMark>,
}

impl TableAcc {
    /// The snapshot's entry for the table these windows add up to.
    fn into_entry(self, name: String, class: String, rows: u64, bytes: u64) -> TableEntry {
        TableEntry {
            name,
            class,
            rows,
            bytes,
            checksum: hex::encode(self.checksum.to_le_bytes()),
            groups: self.groups,
            pages: self.pages,
            windows: self.windows,
        }
    }
}

/// Whether a window of the parent holds rows of `range` (a missing limit is
/// unbounded, so a table without rowids overlaps everywhere).
fn overlaps(mark: &WindowMark, range: &RowidRange) -> bool {
    let starts_before_end = match (mark.from, range.to) {
        (Some(f), Some(t)) => f < t,
        _ => true,
    };
    let ends_after_start = match (mark.to, range.from) {
        (Some(t), Some(f)) => f < t,
        _ => true,
    };
    starts_before_end && ends_after_start
}

/// Index entries of the parent's windows' packs kept from one window to
/// the next, by the reader and by the page check each (about 11 MiB).
const BACKUP_KEPT_ENTRIES: usize = 1 << 18;

/// The parent snapshot's windows of one table, in order, each with its
/// tree pages, and where each is by digest.
#[derive(Default)]
struct PriorWindows {
    list: Vec<(WindowMark, Vec<Id>)>,
    by_digest: HashMap<String, usize>,
}

impl PriorWindows {
    fn get(&self, digest: &str) -> Option<&(WindowMark, Vec<Id>)> {
        self.by_digest.get(digest).map(|&i| &self.list[i])
    }
}

/// The windows of `table` (same class) in the parent snapshot; none if the
/// parent has no such table, recorded no windows, or its window page
/// counts do not add up to its pages. The table's page ids are taken out
/// of the parent, not copied (a table is read once, and nothing else
/// reads the parent's record pages once the backup has begun reading):
/// at 4 GiB they are some 16 MB, and a copy was held all through the
/// backup.
fn prior_windows(parent: Option<&mut Snapshot>, table: &str, class: &str) -> PriorWindows {
    let mut out = PriorWindows::default();
    let Some(t) = parent.and_then(|p| {
        p.record_tables_mut()
            .iter_mut()
            .find(|t| t.name == table && t.class == class)
    }) else {
        return out;
    };
    let counted = t.windows.iter().try_fold(0usize, |at, w| {
        at.checked_add(usize::try_from(w.pages).ok()?)
    });
    if counted != Some(t.pages.len()) {
        return out;
    }
    let mut pages = std::mem::take(&mut t.pages).into_iter();
    for w in &t.windows {
        out.by_digest.insert(w.digest.clone(), out.list.len());
        let own: Vec<Id> = pages.by_ref().take(w.pages as usize).collect();
        out.list.push((w.clone(), own));
    }
    out
}

/// Overlays a backup keeps on a read window before it stores the window's
/// groups on pages of their own again (FORMAT 3.4, "Overlay pages"): more
/// keep each incremental smaller, and make every reader of the window
/// read more pages and the repository keep the chunks the overlays
/// superseded.
const MAX_WINDOW_OVERLAYS: usize = 8;

/// A window read again whose deletions would be more than one in this
/// many of the parent window's groups gets pages of its own rather than an
/// overlay: what an overlay deletes stays stored while its base is kept.
const MAX_DELETED_SHARE: usize = 8;

/// A group of the parent's window as it stands, as little of it as an
/// overlay needs: who it is, and a fingerprint of the rest.
struct BaseGroup {
    g: [u8; 8],
    s: Option<KeyId>,
    /// Its time key and unit, in [`OverlayBase::units`].
    t: u16,
    deletion: bool,
    chunks: u32,
    /// [`entry_print`] of the entry.
    print: [u8; 16],
    /// Where its entry is among the entries of the window's pages, in
    /// page order (see [`OverlayBase::page_ends`]).
    at: u32,
}

/// What an entry holds besides its keys and unit, in 16 bytes: equal
/// prints mean equal rows, bytes and chunks. A chunk id is a keyed hash
/// of the chunk (FORMAT 1.2): a group of one chunk (most) is printed by
/// its id's first 16 bytes with its counts mixed in, others by a hash of
/// the lot.
fn entry_print(rows: u64, bytes: u64, mut chunks: impl ExactSizeIterator<Item = Id>) -> [u8; 16] {
    let mut out = [0u8; 16];
    if chunks.len() == 1 {
        let id = chunks.next().expect("one chunk");
        out.copy_from_slice(&id.0[..16]);
        let mix = |x: u64| x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        let lo = u64::from_le_bytes(out[..8].try_into().unwrap()) ^ mix(rows);
        let hi = u64::from_le_bytes(out[8..].try_into().unwrap()) ^ mix(bytes ^ 0x5555);
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&hi.to_le_bytes());
        // Tells a group of one chunk from the hash of several.
        out[0] |= 1;
        return out;
    }
    let mut h = blake3::Hasher::new();
    h.update(&rows.to_le_bytes()).update(&bytes.to_le_bytes());
    h.update(&(chunks.len() as u64).to_le_bytes());
    for c in chunks {
        h.update(&c.0);
    }
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out[0] &= !1;
    out
}

/// The parent's window over the same rowids as a window read again, its
/// groups as they stand ([`ReaderCtx::overlay_base`]).
struct OverlayBase {
    /// The parent window's pages, which an overlay keeps.
    pages: Vec<Id>,
    /// Its overlays' page counts.
    overlays: Vec<u64>,
    /// Its groups as they stand, in page order.
    groups: Vec<BaseGroup>,
    /// How many entries its pages hold, up to the end of each page.
    page_ends: Vec<u32>,
    /// The time keys and units its groups name.
    units: Vec<(KeyId, Arc<str>)>,
    /// `groups`' positions by their tags (no two share one).
    by_tag: TagIndex,
    /// The position after the last group found: the window's groups come
    /// in the order the base's unchanged ones stand in.
    next: usize,
    /// Which of `groups` the window read has (changed or not).
    seen: Vec<bool>,
    /// The packs the parent window's mark lists: its pages' and every
    /// chunk's they name.
    packs: Vec<Id>,
    /// Chunks its pages name besides those of the groups standing.
    superseded_chunks: u64,
    /// The subject keys its pages name besides those of the groups
    /// standing.
    superseded_keys: Vec<KeyId>,
}

impl OverlayBase {
    /// The position of the group tagged `g`, if one is.
    fn find(&mut self, g: &[u8; 8]) -> Option<usize> {
        let at = match self.groups.get(self.next) {
            Some(b) if b.g == *g => self.next,
            _ => self.by_tag.find(g)? as usize,
        };
        self.next = at + 1;
        Some(at)
    }
}

/// Positions by 8-byte tag: the tags sorted with their positions, in
/// buckets of tags sharing their top bits ([`Buckets`]; a group's tag is
/// derived from its key, so tags are uniform and a bucket holds about
/// four): a look-up reads where its bucket starts and a cache line of tags
/// and positions, where a binary search through the positions into the
/// groups missed the cache twice a step (5% of an incremental's time at
/// 1 GiB, with a window's new and changed groups out of the base's
/// order). 17 bytes a position (4 with the binary search, about 25 with a
/// hash map), sorted where they were made.
struct TagIndex {
    /// Each tag (as a big-endian integer) with its position, by tag.
    tags: Vec<(u64, u32)>,
    buckets: Buckets,
}

impl TagIndex {
    /// The index of `tags` (position `i` is the `i`th), or `None` if two
    /// are the same.
    fn new(tags: impl Iterator<Item = [u8; 8]>) -> Option<TagIndex> {
        let mut tags: Vec<(u64, u32)> = (0u32..)
            .zip(tags)
            .map(|(i, g)| (u64::from_be_bytes(g), i))
            .collect();
        tags.sort_unstable();
        if tags.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let buckets = Buckets::new(tags.len(), |i| Self::key(tags[i].0));
        Some(TagIndex { tags, buckets })
    }

    /// A tag as a [`Buckets`] key (in the top bits).
    fn key(tag: u64) -> u128 {
        u128::from(tag) << 64
    }

    fn find(&self, g: &[u8; 8]) -> Option<u32> {
        let t = u64::from_be_bytes(*g);
        let (a, b) = self.buckets.of(Self::key(t));
        let bucket = &self.tags[a as usize..b as usize];
        let k = find_in_bucket(bucket, t, |e| e.0)?;
        Some(bucket[k].1)
    }
}

/// The entries of an [`OverlayBase`]'s groups, read again from its pages
/// for a window stored on pages of its own after all. They are asked for
/// in the window's order, which follows the base's pages and each
/// overlay's (each in the window's order): a few decoded pages are kept,
/// one for each level, not the window's entries whole (about 150 bytes
/// a group, 38 MB for a window of call records at 4 GiB).
struct BaseEntries<'b> {
    reader: BaseReader,
    base: &'b OverlayBase,
    cache: PackCache,
    /// Decoded pages (their position in `base.pages`), the latest used
    /// last.
    pages: Vec<(usize, Vec<GroupEntry>)>,
}

/// Decoded pages [`BaseEntries`] keeps: the base's and each overlay's.
const BASE_ENTRY_PAGES: usize = MAX_WINDOW_OVERLAYS + 2;

impl<'b> BaseEntries<'b> {
    fn new(reader: BaseReader, base: &'b OverlayBase) -> Self {
        BaseEntries {
            cache: tree_cache(reader.target.clone(), 1),
            reader,
            base,
            pages: Vec::with_capacity(BASE_ENTRY_PAGES),
        }
    }

    /// The entry of `base.groups[i]`.
    fn entry(&mut self, table: &str, i: usize) -> Result<GroupEntry, OpsError> {
        let at = self.base.groups[i].at;
        let ends = &self.base.page_ends;
        let p = ends.partition_point(|&end| end <= at);
        let first = p.checked_sub(1).map_or(0, |q| ends[q]);
        let k = match self.pages.iter().position(|(q, _)| *q == p) {
            Some(k) => k,
            None => {
                let id = self.base.pages.get(p).ok_or_else(|| {
                    OpsError::Internal(format!(
                        "table {table}: a group of the parent's window is on no page"
                    ))
                })?;
                let page = self.reader.handle.block_on(Page::load(
                    &mut self.cache,
                    &self.reader.index,
                    &self.reader.meta,
                    id,
                ))?;
                let Page::Groups { groups, .. } = page else {
                    return Err(OpsError::Internal(format!(
                        "table {table}: a page of the parent's window holds no groups"
                    )));
                };
                if groups.len() != (ends[p] - first) as usize {
                    return Err(OpsError::Internal(format!(
                        "table {table}: a page of the parent's window read {} groups, then {}",
                        ends[p] - first,
                        groups.len()
                    )));
                }
                if self.pages.len() == BASE_ENTRY_PAGES {
                    self.pages.remove(0);
                }
                self.pages.push((p, groups));
                self.pages.len() - 1
            }
        };
        // The latest used last, so the first is the one to drop.
        if k + 1 != self.pages.len() {
            let used = self.pages.remove(k);
            self.pages.push(used);
        }
        let (_, entries) = self.pages.last().expect("the page just used");
        Ok(entries[(at - first) as usize].clone())
    }
}

/// Where a window's group is while its overlay is drafted.
enum Pos {
    /// The base's group, unchanged.
    Base(u32),
    /// A group new or changed: its place in [`OverlayDraft::changed`].
    New(u32),
}

/// A window's groups compared with the parent's as they come
/// ([`ReaderCtx::finish_window`] decides what is stored).
struct OverlayDraft {
    base: OverlayBase,
    /// Every group of the window, in order.
    order: Vec<Pos>,
    /// The groups new or changed, in order.
    changed: Vec<GroupEntry>,
    /// The base's groups that came changed.
    replaced: Vec<u32>,
    /// Whether a group of the base came twice.
    twice: bool,
}

impl OverlayDraft {
    fn new(base: OverlayBase) -> Self {
        OverlayDraft {
            order: Vec::with_capacity(base.groups.len()),
            base,
            changed: Vec::new(),
            replaced: Vec::new(),
            twice: false,
        }
    }

    fn push(&mut self, e: GroupEntry) {
        let base = &mut self.base;
        let found = base.find(&e.g).filter(|&i| {
            let b = &base.groups[i];
            b.s == e.s && base.units[b.t as usize].0 == e.t
        });
        if let Some(i) = found {
            // A window holds a group once; were it named twice, an overlay
            // could not say both, and the window gets pages of its own.
            self.twice |= base.seen[i];
            if !base.seen[i] {
                base.seen[i] = true;
                let print = entry_print(e.rows, e.bytes, e.chunks.iter().copied());
                if base.groups[i].print == print {
                    self.order.push(Pos::Base(i as u32));
                    return;
                }
                self.replaced.push(i as u32);
            }
        }
        self.order.push(Pos::New(self.changed.len() as u32));
        self.changed.push(e);
    }
}

/// Where a read window's group entries go as they come.
enum WindowSink {
    /// Onto pages of the window's own.
    Pages(GroupPager),
    /// Into a draft of an overlay on the parent's window.
    Overlay(Box<OverlayDraft>),
}

/// Checks the parent's tree pages of a window before they stand in a new
/// snapshot.
struct ReuseCheck {
    handle: tokio::runtime::Handle,
    index: Arc<Index>,
    /// With the parent's windows' pack lists: their index objects, and a
    /// window is checked through its own list (all of them list theirs;
    /// `index` serves a window that lists none).
    lists: Option<IndexObjects>,
    meta: Arc<MetaKey>,
    vault: SharedVault,
}

impl ReuseCheck {
    /// The blobs (pages and chunks) a window's `pages` refer to, if they
    /// can stand: each is a readable page of `table` whose every group's
    /// keys are still in the vault (not destroyed, not being destroyed)
    /// and whose every chunk is indexed. `None` if one cannot. With the
    /// count come the packs holding them.
    fn blobs(
        &mut self,
        cache: &mut PackCache,
        table: &str,
        pages: &[Id],
        listed: Option<&[Id]>,
    ) -> Option<Reuse> {
        let index = match (&mut self.lists, listed) {
            (Some(objects), Some(list)) => match self.handle.block_on(objects.index_of(list)) {
                Ok(p) => p.index.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "the index objects of a window of the parent are unreadable; the window is stored again");
                    return None;
                }
            },
            _ => self.index.clone(),
        };
        let mut chunks = 0u64;
        let mut packs = PackSet::default();
        let (mut ids, mut subjects, mut found) = (Vec::new(), Vec::new(), Vec::new());
        // One page at a time: the vault is locked only between loads.
        for id in pages {
            // Walked in place: a page's groups are not copied out.
            ids.clear();
            subjects.clear();
            let scanned = self
                .handle
                .block_on(Page::load_plain(cache, &index, &self.meta, id))
                .and_then(|(object, plain)| {
                    let head = tree::scan_groups(&plain, |_, g| {
                        subjects.extend(g.s);
                        ids.extend(g.chunks());
                    })
                    .map_err(|why| crate::repo::RepoError::malformed(object, why))?;
                    Ok((head.table == table).then_some((head.t, head.count)))
                });
            packs.add(index.chunks.get(id)?.pack);
            let (t, groups) = match scanned {
                Ok(Some(head)) => head,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(page = %id, error = %e, "a tree page of the parent snapshot is unreadable; the window is stored again");
                    return None;
                }
            };
            {
                // A page's groups share one time key.
                let vault = self.vault.blocking_lock();
                if groups > 0 {
                    vault.key(&t)?;
                }
                // Looked up together, so the vault's cache misses overlap.
                let wanted: Vec<Option<&KeyId>> = subjects.iter().map(Some).collect();
                if vault.keys_many(&wanted).iter().any(Option::is_none) {
                    return None;
                }
            }
            // The page's chunks looked up together, so the index's cache
            // misses overlap.
            index.chunks.positions(&ids, &mut found);
            for pos in &found {
                packs.add(index.chunks.pack_at((*pos)?));
            }
            chunks += ids.len() as u64;
        }
        Some(Reuse {
            blobs: chunks + pages.len() as u64,
            packs: index.pack_ids(&packs),
        })
    }
}

/// A window of the parent whose pages can stand: how many blobs they refer
/// to, and the packs holding them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reuse {
    blobs: u64,
    packs: Vec<Id>,
}

/// Windows of the parent (their index in [`PriorWindows::list`]) with
/// their tree pages and the packs their marks list.
type WindowPages = Vec<(usize, Vec<Id>, Option<Vec<Id>>)>;

/// The page check's verdict on one window of the parent: the blobs its
/// pages refer to if they can stand ([`ReuseCheck::blobs`]).
struct Verdict {
    /// The table's position in the schema.
    t: usize,
    /// The window's index in the table's [`PriorWindows::list`].
    i: usize,
    reuse: Option<Reuse>,
}

/// The verdicts on one table's windows, as the reader asks for them.
struct Verdicts<'a> {
    rx: &'a Receiver<Verdict>,
    t: usize,
    /// The windows checked, in increasing order ([`TablePrep::same`]).
    checked: Vec<usize>,
    /// How many of their verdicts were received.
    received: usize,
}

impl Verdicts<'_> {
    /// The verdict on window `i` (asked in increasing `i`); those on
    /// earlier windows the reader did not ask about are passed over. A
    /// window not checked (its leaves changed), or whose verdict cannot
    /// come (the check stopped), is read.
    fn get(&mut self, i: usize) -> Option<Reuse> {
        if self.checked[self.received..].binary_search(&i).is_err() {
            return None;
        }
        while self.received < self.checked.len() {
            let v = self.rx.recv().ok()?;
            self.received += 1;
            debug_assert_eq!(v.t, self.t, "verdicts come table by table");
            if v.i == i {
                return v.reuse;
            }
        }
        None
    }

    /// Receives the verdicts the reader did not ask for, so that the
    /// next table's are next.
    fn drain(&mut self) {
        while self.received < self.checked.len() {
            if self.rx.recv().is_err() {
                return;
            }
            self.received += 1;
        }
    }
}

/// A table prepared before any table is read ([`ReaderCtx::prepare_table`]).
struct TablePrep {
    plan: TablePlan,
    class: String,
    prior: PriorWindows,
    /// Whether to read rows from the table's leaf pages (a failed walk
    /// reads them with a query).
    pages: bool,
    /// Whether the table is read in stretches around the parent's windows
    /// whose leaves digest as they did (`same`).
    stretched: bool,
    fingerprint: blake3::Hasher,
    /// The parent's windows whose leaves digest as they did.
    same: Vec<usize>,
    /// The table's rows, counted by the walk (for the progress), if it
    /// walked the table.
    rows: Option<u64>,
    walk_ms: u64,
}

/// What the reading thread hands the storing thread, in rowid order.
enum Handover {
    /// A read window.
    Rows(Window),
    /// A window of the parent (its index in [`PriorWindows::list`]) not
    /// read, with the packs holding its blobs (from the page check).
    Unread(usize, Option<Vec<Id>>),
}

/// A stretch of a table, in rowid order: rows to read, or a window of the
/// parent (its index in [`PriorWindows::list`]) whose b-tree leaves are
/// unchanged, reused without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stretch {
    Read(RowidRange),
    Unread(usize),
}

/// Splits a table into stretches: each window of the parent whose leaves
/// digest as they did (`same`) is unread, the rowids between them are
/// read. The windows taken are in order and disjoint, and the read ranges
/// are exactly the rest, so every rowid is read or in an unread window,
/// whatever the parent's marks say.
#[cfg(test)]
fn plan_stretches(prior: &PriorWindows, same: impl FnMut(usize) -> bool) -> Vec<Stretch> {
    Stretches::new(prior, same).collect()
}

/// The stretch digest of a read window (`window`, inside the read
/// stretch `stretch`) from the stretch's leaves: what the whole table's
/// leaves give for it. `None` without leaves, or for a window that does not
/// lie inside the stretch (a row whose rowid could not be read ends it).
/// Windows are asked in rowid order; the leaves below each window's end
/// are forgotten then.
fn window_stretch(
    leaves: Option<&std::cell::RefCell<StretchLeaves<'_>>>,
    stretch: RowidRange,
    window: RowidRange,
    h: &blake3::Hasher,
) -> Option<[u8; 32]> {
    let starts_inside = stretch
        .from
        .is_none_or(|f| window.from.is_some_and(|w| w >= f));
    let ends_inside = stretch.to.is_none_or(|t| window.to.is_some_and(|w| w <= t));
    if !(starts_inside && ends_inside) {
        return None;
    }
    leaves?.borrow_mut().window(window.from, window.to, h)
}

/// The stretches of a table one at a time, in rowid order (see
/// `plan_stretches`). `same(i)` is asked in increasing `i`, and only
/// when the stretch before window `i` is needed, so the verdict on a
/// window may arrive while the stretches before it are read.
struct Stretches<'p, F> {
    prior: &'p PriorWindows,
    same: F,
    /// The next window to consider.
    next: usize,
    /// The next rowid not yet covered; `None` before the first window.
    start: Option<i64>,
    /// Whether a stretch was given yet.
    given: bool,
    /// A window reaches the end of the rowids, or the last read was given.
    done: bool,
    /// An unread window to give after the read stretch just given.
    pending: Option<usize>,
}

impl<'p, F: FnMut(usize) -> bool> Stretches<'p, F> {
    fn new(prior: &'p PriorWindows, same: F) -> Self {
        Stretches {
            prior,
            same,
            next: 0,
            start: None,
            given: false,
            done: false,
            pending: None,
        }
    }
}

impl<F: FnMut(usize) -> bool> Iterator for Stretches<'_, F> {
    type Item = Stretch;

    fn next(&mut self) -> Option<Stretch> {
        if let Some(i) = self.pending.take() {
            return Some(Stretch::Unread(i));
        }
        if self.done {
            return None;
        }
        while let Some((mark, _)) = self.prior.list.get(self.next) {
            let i = self.next;
            self.next += 1;
            let ordered = match (self.start, mark.from) {
                (_, None) => !self.given,
                (None, Some(_)) => true,
                (Some(s), Some(f)) => f >= s,
            };
            let nonempty = match (mark.from, mark.to) {
                (Some(f), Some(t)) => f < t,
                _ => true,
            };
            if mark.stretch.is_none() || !ordered || !nonempty || !(self.same)(i) {
                continue;
            }
            let gap = match mark.from {
                Some(f) if self.start.is_none_or(|s| s < f) => Some(RowidRange {
                    from: self.start,
                    to: Some(f),
                }),
                _ => None,
            };
            match mark.to {
                Some(t) => self.start = Some(t),
                None => self.done = true,
            }
            self.given = true;
            return Some(match gap {
                Some(range) => {
                    self.pending = Some(i);
                    Stretch::Read(range)
                }
                None => Stretch::Unread(i),
            });
        }
        self.done = true;
        self.given = true;
        Some(Stretch::Read(RowidRange {
            from: self.start,
            to: None,
        }))
    }
}

/// A checksum share written as hex of a u128 LE.
fn parse_sum(hex_sum: &str) -> Option<u128> {
    let b: [u8; 16] = hex::decode(hex_sum).ok()?.try_into().ok()?;
    Some(u128::from_le_bytes(b))
}

/// What the grouping threads share (read-only) while a window is stored.
/// It owns what it holds, so the storing thread can page a batch's groups
/// while the grouping threads chunk the next ones.
struct GroupCtx<'a> {
    meta: Arc<MetaKey>,
    index: Arc<Index>,
    counters: Arc<Counters>,
    table: &'a str,
    params: ChunkParams,
    seed: u64,
    /// The window's time keys; a [`GroupRef`] names one by position.
    times: Vec<TimeRef>,
}

/// A time key of a window: its id, its key and the time unit label
/// written in tree pages. Shared by every group of a bucket.
struct TimeRef {
    id: KeyId,
    key: Key32,
    unit: Arc<str>,
}

/// A group's keys, resolved (and created if new) once per window: its time
/// key (a position in [`GroupCtx::times`]) and its subject key. The subject
/// key's bytes travel with its id, so the grouping threads never look it up
/// again. One per group of the window being stored: kept small.
struct GroupRef {
    s: Option<KeyId>,
    skey: Option<Key32>,
    time: u32,
}

/// Where the bytes of a group that makes one chunk are: its one row in
/// the window, or its rows gathered.
enum OneChunk<'w> {
    Row(&'w [u8]),
    Gathered(std::ops::Range<usize>),
}

impl<'w> OneChunk<'w> {
    fn bytes<'a>(&self, gathered: &'a [u8]) -> &'a [u8]
    where
        'w: 'a,
    {
        match self {
            OneChunk::Row(row) => row,
            OneChunk::Gathered(r) => &gathered[r.clone()],
        }
    }
}

/// Groups whose keys and one-chunk ids a grouping thread computes side by
/// side.
const KEYS_AT_ONCE: usize = crate::crypto::lanes::BATCH;

/// Groups a grouping thread chunks at a time. The storing thread pages a
/// batch's entries as soon as the batches before it are in, so a window's
/// entries are never all held at once.
const GROUP_BATCH: usize = 2048;

/// A batch of groups chunked: its number, and its entries in order with
/// their rows' share of the table checksum.
type GroupBatch = (usize, Result<(Vec<GroupEntry>, u128), OpsError>);

/// The vault kind and name of the time key of a group of `class`: its
/// period bucket, or else the class epoch (`label`) of the snapshot.
fn time_key_name(class: &str, bucket: Option<&str>, epoch_label: &str) -> (KeyKind, String) {
    match bucket {
        Some(b) => (KeyKind::Period, format!("{class}:{b}")),
        None => (KeyKind::Epoch, format!("{class}:{epoch_label}")),
    }
}

/// The time unit label written in tree pages (FORMAT 3.4).
fn unit_label(kind: KeyKind, name: &str) -> String {
    match kind {
        KeyKind::Period => format!("period:{name}"),
        _ => format!("epoch:{name}"),
    }
}

impl GroupCtx<'_> {
    /// A grouping thread: chunks the batches of `slots` (and `refs`) whose
    /// numbers it takes from `tickets`, sending each batch's result to
    /// `done`, until no batch is left or one failed. Returns the packs its
    /// chunks went to, once its last chunks are handed to the workers.
    fn serve(
        &self,
        window: &Window,
        slots: &[Slot],
        refs: &[GroupRef],
        tickets: &Mutex<Receiver<usize>>,
        done: Sender<GroupBatch>,
        mut sender: WorkSender,
    ) -> Result<PackSet, OpsError> {
        let mut packs = PackSet::default();
        loop {
            // The lock is held only while waiting for a number (a guard in
            // a `while let` would be held through the batch).
            let next = tickets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            let Ok(k) = next else { break };
            let range = k * GROUP_BATCH..((k + 1) * GROUP_BATCH).min(slots.len());
            // A panic is reported as the batch's error, so the storing
            // thread never waits for it.
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.process(
                    window,
                    &slots[range.clone()],
                    &refs[range],
                    &mut sender,
                    &mut packs,
                )
            }))
            .unwrap_or_else(|_| Err(OpsError::Internal("a grouping thread panicked".into())));
            let failed = r.is_err();
            if done.send((k, r)).is_err() || failed {
                break;
            }
        }
        sender.flush().map(|_| packs)
    }

    /// How many one-chunk groups ahead [`Self::process`] asks for the rows
    /// of while it gathers a group's.
    const PREFETCH_AHEAD: usize = 4;

    /// Chunks a slice of a window's groups (their keys already exist and
    /// are persisted) and returns their entries in order.
    fn process(
        &self,
        window: &Window,
        slots: &[Slot],
        refs: &[GroupRef],
        work: &mut WorkSender,
        packs: &mut PackSet,
    ) -> Result<(Vec<GroupEntry>, u128), OpsError> {
        let mut out = Vec::with_capacity(slots.len());
        // These groups' share of the table checksum (a wrapping sum, so
        // the threads' shares add up in any order), their rows hashed side
        // by side.
        let mut terms = self.meta.row_terms();
        let mut chunker = Chunker::new(self.params, self.seed);
        let min = self.params.min as usize;
        let mut gathered = Vec::new();
        // A run of groups at a time: their keys, and the chunk ids of the
        // groups that make one chunk each (most of them), are computed side
        // by side. `small` lists those groups (position in the run, bytes).
        let mut small: Vec<(usize, OneChunk<'_>)> = Vec::new();
        let mut ids = Vec::new();
        // Where the index has each of `ids` (looked up together: the
        // cache misses overlap).
        let mut found = Vec::new();
        for (run_slots, run_refs) in slots.chunks(KEYS_AT_ONCE).zip(refs.chunks(KEYS_AT_ONCE)) {
            let parents: Vec<(Option<&KeyBytes>, &KeyBytes)> = run_refs
                .iter()
                .map(|r| (r.skey.as_deref(), &*self.times[r.time as usize].key))
                .collect();
            let keys: Vec<ChunkKeys> = ChunkKeys::of_groups(&parents, self.table);
            drop(parents);
            ChunkKeys::prepare(&keys.iter().collect::<Vec<_>>());
            // The groups of one chunk: their rows gathered (a one-row
            // group stays in place), their ids computed together.
            gathered.clear();
            small.clear();
            // Their rows lie scattered over the window (read in rowid
            // order, stored by group), and this is where they are first
            // read: the rows of the groups a few ahead start loading while
            // these are gathered.
            let ahead = |slot: &Slot| {
                if slot.bytes as usize <= min {
                    window.prefetch_rows(slot);
                }
            };
            run_slots.iter().take(Self::PREFETCH_AHEAD).for_each(ahead);
            for (i, slot) in run_slots.iter().enumerate() {
                if let Some(next) = run_slots.get(i + Self::PREFETCH_AHEAD) {
                    ahead(next);
                }
                if slot.bytes as usize > min {
                    continue;
                }
                if slot.rows == 1 {
                    let row = window.group_rows(slot).next().unwrap_or_default();
                    terms.add(row);
                    small.push((i, OneChunk::Row(row)));
                    continue;
                }
                let from = gathered.len();
                for row in window.group_rows(slot) {
                    terms.add(row);
                    gathered.extend_from_slice(row);
                }
                small.push((i, OneChunk::Gathered(from..gathered.len())));
            }
            {
                let plains: Vec<(&ChunkKeys, &[u8])> = small
                    .iter()
                    .map(|(i, c)| (&keys[*i], c.bytes(&gathered)))
                    .collect();
                ChunkKeys::chunk_ids(&plains, &mut ids);
            }
            self.index.chunks.positions(&ids, &mut found);
            let mut small_ids = small.iter().zip(&ids).zip(&found).peekable();
            for (i, (slot, r)) in run_slots.iter().zip(run_refs).enumerate() {
                // The rows of a group are scattered over the window (read
                // in rowid order, stored by group): start loading the next
                // group's rows while this one is chunked (those of a
                // one-chunk group were gathered above).
                if let Some(next) = run_slots.get(i + 1).filter(|n| n.bytes as usize > min) {
                    window.prefetch_rows(next);
                }
                let time = &self.times[r.time as usize];
                let keys = &keys[i];
                let mut chunks = ChunkIds::new();
                let mut emit = |c: &[u8], id: Id, stored: Option<u32>| {
                    ReaderCtx::emit(
                        work,
                        stored,
                        None,
                        packs,
                        &self.counters,
                        keys,
                        time.id,
                        &mut chunks,
                        c,
                        id,
                    )
                };
                match small_ids.next_if(|(((j, _), _), _)| *j == i) {
                    // Gathered above, one chunk, its id and place known.
                    Some((((_, c), id), at)) => {
                        // At most `min` bytes (`slot.bytes`): the one chunk
                        // `chunk_all` would cut.
                        let bytes = c.bytes(&gathered);
                        debug_assert!(bytes.len() <= min, "a slot's bytes are its rows'");
                        if !bytes.is_empty() {
                            let stored = at.map(|k| self.index.chunks.pack_at(k));
                            emit(bytes, *id, stored)?;
                        }
                    }
                    None => {
                        // A one-row group is chunked in place; others are
                        // gathered.
                        let from = gathered.len();
                        let bytes: &[u8] = if slot.rows == 1 {
                            let row = window.group_rows(slot).next().unwrap_or_default();
                            terms.add(row);
                            row
                        } else {
                            for row in window.group_rows(slot) {
                                terms.add(row);
                                gathered.extend_from_slice(row);
                            }
                            &gathered[from..]
                        };
                        chunker.chunk_all(bytes, &mut |c| {
                            let id = keys.chunk_id(c);
                            emit(c, id, self.index.chunks.pack(&id))
                        })?;
                        // Only the run's one-chunk groups stay gathered.
                        gathered.truncate(from);
                    }
                }
                out.push(GroupEntry {
                    g: keys.group_id.0[..8].try_into().unwrap(),
                    s: r.s,
                    t: time.id,
                    u: time.unit.clone(),
                    rows: u64::from(slot.rows),
                    bytes: u64::from(slot.bytes),
                    chunks,
                });
            }
        }
        let checksum = terms.sum();
        Ok((out, checksum))
    }
}

/// A cache of `packs` packs for the tree pages a backup reads (its
/// parent's): a few pages are copied out of their pack, since a backup
/// keeps them longer than the cache keeps the pack
/// ([`PackCache::copying_out`]).
fn tree_cache(target: Arc<Target>, packs: usize) -> PackCache {
    PackCache::new(target, packs).copying_out()
}

/// Reads the parent's window a window read again is overlaid on, on a
/// thread of its own while the window is grouped: neither needs the other,
/// and both were the reading thread's.
struct BaseReader {
    handle: tokio::runtime::Handle,
    target: Arc<Target>,
    /// The index of the window being stored (see [`ReaderCtx::index`]).
    index: Arc<Index>,
    meta: Arc<MetaKey>,
}

impl BaseReader {
    /// The parent's window `mark` (its `pages`) as it stands, if the
    /// window being stored can be an overlay on it: its pages are all
    /// readable group pages of `table`, and its overlays apply. `None`
    /// otherwise: the window is stored on pages of its own. (Whether the
    /// keys its pages name are still in the vault is asked once the
    /// window's groups are known, by [`ReaderCtx::keys_live`].)
    fn read(&self, table: &str, mark: &WindowMark, pages: &[Id]) -> Option<OverlayBase> {
        let packs = mark.packs.clone()?;
        let starts = mark.overlay_starts()?;
        // A cache of its own, dropped once the pages are read: packs stay
        // mapped while cached.
        let mut cache = tree_cache(self.target.clone(), 1);
        let index = self.index.clone();
        // As many as the parent's window had (the mark says, and is not
        // trusted beyond a bound), and room for what its overlays name.
        let overlaid: u64 = mark.overlays.iter().sum();
        let mut groups: Vec<BaseGroup> = Vec::with_capacity(
            (mark.groups.saturating_add(overlaid.saturating_mul(64))).min(1 << 22) as usize,
        );
        let mut units: Vec<(KeyId, Arc<str>)> = Vec::new();
        let mut entry_starts = Vec::with_capacity(starts.len());
        let mut page_ends = Vec::with_capacity(pages.len());
        // Read together, a part at a time (nearby pages with one request),
        // and walked in place: a page's groups are not copied out.
        let mut read = None;
        for (i, id) in pages.iter().enumerate() {
            for _ in starts.iter().filter(|&&s| s == i) {
                entry_starts.push(groups.len());
            }
            if i % tree::PAGES_AT_ONCE == 0 {
                let part = &pages[i..(i + tree::PAGES_AT_ONCE).min(pages.len())];
                read = match self
                    .handle
                    .block_on(tree::PagesRead::fetch(&mut cache, &index, part))
                {
                    Ok(Ok(read)) => Some(read),
                    Ok(Err(_)) => return None,
                    Err(e) => {
                        tracing::warn!(table, error = %e, "tree pages of the parent snapshot are unreadable; the window is stored on pages of its own");
                        return None;
                    }
                };
            }
            let read = read.as_ref().expect("fetched at the part's first page");
            let scanned =
                read.plain(&self.meta, i % tree::PAGES_AT_ONCE)
                    .and_then(|(object, plain)| {
                        let mut unit = None;
                        let head = tree::scan_groups(&plain, |head, g| {
                            let t = *unit.get_or_insert_with(|| {
                                match units
                                    .iter()
                                    .position(|(t, u)| *t == head.t && **u == *head.unit)
                                {
                                    Some(k) => k,
                                    None => {
                                        units.push((head.t, head.unit.into()));
                                        units.len() - 1
                                    }
                                }
                            });
                            let chunks = g.chunks();
                            groups.push(BaseGroup {
                                g: g.g,
                                s: g.s,
                                t: t.min(usize::from(u16::MAX)) as u16,
                                deletion: g.rows == 0 && chunks.len() == 0,
                                chunks: chunks.len() as u32,
                                print: entry_print(g.rows, g.bytes, chunks),
                                at: groups.len() as u32,
                            });
                        })
                        .map_err(|why| crate::repo::RepoError::malformed(object, why))?;
                        Ok(head.table == table)
                    });
            match scanned {
                Ok(true) if units.len() <= usize::from(u16::MAX) => {
                    page_ends.push(u32::try_from(groups.len()).ok()?);
                }
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(page = %id, error = %e, "a tree page of the parent snapshot is unreadable; the window is stored on pages of its own");
                    return None;
                }
            }
        }
        let mut superseded_chunks = 0u64;
        let mut superseded_keys = Vec::new();
        let applied = tree::apply_overlays_by(
            &mut groups,
            &entry_starts,
            |g| ((g.g, g.s, units[g.t as usize].0), g.deletion),
            |g| {
                superseded_chunks += u64::from(g.chunks);
                superseded_keys.extend(g.s);
            },
        );
        if let Err(why) = applied {
            tracing::warn!(table, error = %why, "the overlays of a read window of the parent do not apply; the window is stored on pages of its own");
            return None;
        }
        let by_tag = TagIndex::new(groups.iter().map(|g| g.g))?;
        Some(OverlayBase {
            pages: pages.to_vec(),
            overlays: mark.overlays.clone(),
            seen: vec![false; groups.len()],
            groups,
            page_ends,
            units,
            by_tag,
            next: 0,
            packs,
            superseded_chunks,
            superseded_keys,
        })
    }
}

impl ReaderCtx {
    fn run(mut self) -> Result<ReadContent, OpsError> {
        let r = match self.policy.store.kind {
            // SQLite reads its first window while the index loads.
            StoreKind::Sqlite => self.read_sqlite(),
            StoreKind::Files => self.ready_index().and_then(|_| self.read_files()),
            StoreKind::Postgres => self.ready_index().and_then(|_| self.read_postgres()),
        };
        // A load error is reported even if nothing needed the index.
        let r = r.and_then(|c| self.ready_index().map(|_| c));
        let r = r.map(|mut c| {
            c.window_packs = std::mem::take(&mut self.hints);
            c.index = Some(self.index.clone());
            c
        });
        // Dropping `self` (the work and page senders) lets the workers and
        // the packer finish.
        r.and_then(|c| self.work.flush().map(|_| c))
            .and_then(|c| self.pages_out.flush().map(|_| c))
    }

    /// With the parent's windows' lists (`lists`): makes `index` an index
    /// of the packs listed by the parent's windows over the rows of
    /// `range`, which hold every chunk of those rows stored before
    /// (FORMAT 3.5). A chunk stored by another window is then stored again.
    fn window_index(&mut self, range: &RowidRange, prior: &PriorWindows) -> Result<(), OpsError> {
        let Some(objects) = self.lists.as_mut() else {
            return Ok(());
        };
        let mut list: Vec<Id> = prior
            .list
            .iter()
            .filter(|(mark, _)| overlaps(mark, range))
            .flat_map(|(mark, _)| mark.packs.iter().flatten().copied())
            .collect();
        list.sort_unstable();
        list.dedup();
        let built = self.handle.block_on(objects.index_of(&list))?;
        self.index = built.index.clone();
        Ok(())
    }

    /// Waits for the index (loading since the backup started) if it is not
    /// there yet. Everything that looks chunks up calls this first.
    fn ready_index(&mut self) -> Result<(), OpsError> {
        if let Some(load) = self.index_load.take() {
            let index = self
                .handle
                .block_on(load)
                .map_err(|e| OpsError::Internal(format!("loading the index: {e}")))??;
            self.index = Arc::new(index);
        }
        Ok(())
    }

    /// The class-epoch key of this snapshot (created if needed), its id
    /// and unit label.
    fn epoch_key(&self, class: &str) -> (KeyId, Key32, String) {
        let label = self.policy.store.epoch.label(self.now);
        let (kind, name) = time_key_name(class, None, &label);
        let mut v = self.vault.blocking_lock();
        let (id, k) = v.get_or_create(kind, &name);
        (id, k.boxed(), unit_label(kind, &name))
    }

    /// Takes one chunk (`id` is its chunk id under `keys`; `stored`, the
    /// pack `index` has it in, if any): dedup, hand to the workers.
    #[allow(clippy::too_many_arguments)]
    fn emit<C: std::ops::Deref<Target = [Id]> + Extend<Id>>(
        work: &mut WorkSender,
        stored: Option<u32>,
        mut in_flight: Option<&mut HashSet<Id>>,
        packs: &mut PackSet,
        counters: &Counters,
        keys: &ChunkKeys,
        family: KeyId,
        chunks: &mut C,
        data: &[u8],
        id: Id,
    ) -> Result<(), OpsError> {
        counters.chunks.fetch_add(1, Ordering::Relaxed);
        // Dedup against what earlier backups stored. Within this run, a chunk
        // can only repeat inside its own group (ids are keyed per group):
        // record groups check their own list (a repeat across two read
        // windows of one group is stored twice, harmlessly); file mode, one
        // group for the whole tree, keeps a set (`in_flight`).
        if let Some(p) = stored {
            packs.add(p);
        }
        let new = stored.is_none()
            && !chunks.contains(&id)
            && in_flight.as_mut().is_none_or(|set| set.insert(id));
        if new {
            counters.new_chunks.fetch_add(1, Ordering::Relaxed);
            work.send(keys, id, family, data)?;
        }
        chunks.extend([id]);
        Ok(())
    }

    /// Stores a window: reuses the parent's tree pages of a window with the
    /// same digest when every key and blob they name is still there, or else
    /// chunks and stores every group, in (bucket, subject) order, on pages
    /// of its own.
    fn flush_window(
        &mut self,
        window: &mut Window,
        table: &str,
        class: &str,
        acc: &mut TableAcc,
        prior: &PriorWindows,
    ) -> Result<(), OpsError> {
        if window.rows.is_empty() {
            return Ok(());
        }
        self.ready_index()?;
        let epoch = self.policy.store.epoch.label(self.now);
        let mut h = self.meta.keyed_hasher("window-v2");
        for part in [table, class, epoch.as_str()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = hex::encode(window.digest(h, &mut self.scratch));
        let rows = window.rows.len() as u64;
        if let Some((mark, pages)) = prior.get(&digest) {
            let sum = parse_sum(&mark.checksum);
            if let Some(sum) =
                sum.filter(|_| mark.rows == rows && mark.bytes == window.bytes as u64)
            {
                if let Some(packs) = self.reusable(table, pages, mark.packs.as_deref()) {
                    acc.pages.extend_from_slice(pages);
                    acc.groups += mark.groups;
                    acc.checksum = acc.checksum.wrapping_add(sum);
                    acc.windows.push(WindowMark {
                        from: window.range.from,
                        to: window.range.to,
                        stretch: window.stretch.map(hex::encode),
                        ..mark.clone()
                    });
                    self.hints.push(Some(packs));
                    self.counters.rows_reused.fetch_add(rows, Ordering::Relaxed);
                    window.clear();
                    return Ok(());
                }
            }
        }
        self.window_index(&window.range, prior)?;
        let base = match self.overlay_base(window, prior) {
            None => {
                window.group();
                None
            }
            Some((mark, pages)) => {
                let reader = self.base_reader();
                std::thread::scope(|s| {
                    let read = std::thread::Builder::new()
                        .name("custos-base".into())
                        .spawn_scoped(s, || reader.read(table, mark, pages));
                    window.group();
                    match read {
                        Ok(read) => read
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                        Err(_) => reader.read(table, mark, pages),
                    }
                })
            }
        };
        // Chunks and pages sent from here on belong to this window.
        self.window = self.hints.len() as u32;
        self.work.window = self.window;
        self.hint = Some(PackSet::default());
        let pages_before = acc.pages.len();
        let mut sink = match base {
            Some(base) => WindowSink::Overlay(Box::new(OverlayDraft::new(base))),
            None => WindowSink::Pages(GroupPager::default()),
        };
        let (n, checksum) = self.store_groups(window, table, class, &mut sink, &mut acc.pages)?;
        let (overlays, base_packs) = self.finish_window(table, sink, &mut acc.pages)?;
        acc.groups += n;
        acc.checksum = acc.checksum.wrapping_add(checksum);
        acc.windows.push(WindowMark {
            digest,
            rows,
            bytes: window.bytes as u64,
            groups: n,
            checksum: hex::encode(checksum.to_le_bytes()),
            pages: (acc.pages.len() - pages_before) as u64,
            from: window.range.from,
            to: window.range.to,
            stretch: window.stretch.map(hex::encode),
            packs: None,
            lists: Vec::new(),
            overlays,
        });
        let hint = std::mem::take(&mut self.hint).map(|k| {
            let mut ids = self.index.pack_ids(&k);
            if !base_packs.is_empty() {
                ids.extend(base_packs);
                ids.sort_unstable();
                ids.dedup();
            }
            ids
        });
        self.hints.push(hint);
        window.clear();
        Ok(())
    }

    /// The parent's window that `window` may be stored as an overlay on
    /// (FORMAT 3.4, "Overlay pages"), if any: for a rowid table's window
    /// read from its leaves, a parent window over the same rowids (else one
    /// of about as many rows that starts or ends where it does) with a list
    /// of its packs and fewer than [`MAX_WINDOW_OVERLAYS`] overlays.
    /// [`BaseReader::read`] reads it.
    fn overlay_base<'p>(
        &self,
        window: &Window,
        prior: &'p PriorWindows,
    ) -> Option<(&'p WindowMark, &'p Vec<Id>)> {
        window.stretch?;
        // The parent's window over the same rowids; else the one that
        // starts, or ends, where this one does (a window's end moves when
        // the rows before it grew or shrank past an anchor). Any window
        // would do (the overlay says what differs); these differ least.
        let (from, to) = (window.range.from, window.range.to);
        let read = || prior.list.iter().filter(|(m, _)| m.stretch.is_some());
        // Not one of about twice its rows (a window that split): its
        // deletions would be too many for an overlay, found only after
        // the window is grouped.
        let rows = window.rows.len() as u64;
        let near =
            |m: &WindowMark| m.rows <= rows + rows / 4 + 64 && rows <= m.rows + m.rows / 4 + 64;
        let (mark, pages) = read()
            .find(|(m, _)| m.from == from && m.to == to)
            .or_else(|| read().find(|(m, _)| m.from == from && near(m)))
            .or_else(|| read().find(|(m, _)| m.to == to && near(m)))?;
        (mark.packs.is_some() && mark.overlays.len() < MAX_WINDOW_OVERLAYS).then_some((mark, pages))
    }

    /// What [`BaseReader::read`] needs, taken from the reading thread.
    fn base_reader(&self) -> BaseReader {
        BaseReader {
            handle: self.handle.clone(),
            target: self.target.clone(),
            index: self.index.clone(),
            meta: self.meta.clone(),
        }
    }
    /// Stores what the window's groups left in `sink`: the last page, or
    /// the overlay on the parent's window (or, if that would be as large
    /// as the window, pages of its own). Returns the window's overlays and
    /// the packs the parent's window lists if the window keeps its pages.
    fn finish_window(
        &mut self,
        table: &str,
        sink: WindowSink,
        pages: &mut Vec<Id>,
    ) -> Result<(Vec<u64>, Vec<Id>), OpsError> {
        let page = |groups| Page::Groups {
            table: table.to_string(),
            groups,
        };
        let draft = match sink {
            WindowSink::Pages(mut pager) => {
                if let Some(p) = pager.finish() {
                    pages.push(self.store_page(page(p))?);
                }
                return Ok((Vec::new(), Vec::new()));
            }
            WindowSink::Overlay(draft) => *draft,
        };
        let OverlayDraft {
            base,
            order,
            changed,
            replaced,
            twice,
        } = draft;
        // The base's groups the window no longer has: deletions, made
        // only if an overlay may be stored (they hold each group's keys).
        let unseen = base.seen.iter().filter(|seen| !**seen).count();
        let few_deletions = unseen * MAX_DELETED_SHARE <= base.groups.len();
        let mut deleted_chunks = 0u64;
        let deletions: Vec<GroupEntry> = base
            .groups
            .iter()
            .zip(&base.seen)
            .filter(|(_, seen)| !**seen && few_deletions)
            .map(|(g, _)| {
                deleted_chunks += u64::from(g.chunks);
                let (t, u) = &base.units[g.t as usize];
                GroupEntry {
                    g: g.g,
                    s: g.s,
                    t: *t,
                    u: u.clone(),
                    rows: 0,
                    bytes: 0,
                    chunks: ChunkIds::new(),
                }
            })
            .collect();
        let size = changed.len() + unseen;
        let replaced_chunks: u64 = replaced
            .iter()
            .map(|&i| u64::from(base.groups[i as usize].chunks))
            .sum();
        // Deletions keep what they delete: the base's pages still name
        // it, so `prune` cannot free it until the window gets pages of its
        // own. Many of them (a month's rows deleted by retention, say)
        // and it gets them now.
        if !twice && size <= base.groups.len() && few_deletions && self.keys_live(&base, &replaced)
        {
            // The parent's pages stay named, and what they name.
            self.counters.chunks.fetch_add(
                base.pages.len() as u64 + base.superseded_chunks + replaced_chunks + deleted_chunks,
                Ordering::Relaxed,
            );
            pages.extend_from_slice(&base.pages);
            let mut overlays = base.overlays;
            if size == 0 {
                return Ok((overlays, base.packs));
            }
            let before = pages.len();
            let mut pager = GroupPager::whole();
            for e in changed.into_iter().chain(deletions) {
                for p in pager.push(e) {
                    pages.push(self.store_page(page(p))?);
                }
            }
            if let Some(p) = pager.finish() {
                pages.push(self.store_page(page(p))?);
            }
            self.counters.overlays.fetch_add(1, Ordering::Relaxed);
            overlays.push((pages.len() - before) as u64);
            return Ok((overlays, base.packs));
        }
        // Pages of its own, the groups in the order they came: the base's
        // unchanged ones read again from its pages, a few pages at a time.
        drop(deletions);
        let mut entries = BaseEntries::new(self.base_reader(), &base);
        let mut changed: Vec<Option<GroupEntry>> = changed.into_iter().map(Some).collect();
        let mut pager = GroupPager::default();
        for pos in order {
            let e = match pos {
                Pos::Base(i) => entries.entry(table, i as usize)?,
                Pos::New(j) => changed[j as usize].take().expect("each new entry once"),
            };
            for p in pager.push(e) {
                pages.push(self.store_page(page(p))?);
            }
        }
        if let Some(p) = pager.finish() {
            pages.push(self.store_page(page(p))?);
        }
        Ok((Vec::new(), Vec::new()))
    }

    /// Whether every key the parent window's pages name is still in the
    /// vault (not destroyed, not being destroyed), as for a window reused
    /// whole: its time keys, and the subject keys of every group but those
    /// the window read has unchanged (the grouping just found those keys
    /// in the vault, usable).
    fn keys_live(&self, base: &OverlayBase, replaced: &[u32]) -> bool {
        let vault = self.vault.blocking_lock();
        if base.units.iter().any(|(t, _)| vault.key(t).is_none()) {
            return false;
        }
        let unseen = base
            .groups
            .iter()
            .zip(&base.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(g, _)| g);
        let replaced = replaced.iter().map(|&i| &base.groups[i as usize]);
        let wanted: Vec<Option<&KeyId>> = unseen
            .chain(replaced)
            .filter_map(|g| g.s.as_ref())
            .chain(&base.superseded_keys)
            .map(Some)
            .collect();
        vault.keys_many(&wanted).iter().all(Option::is_some)
    }

    /// The keyed hasher every stretch digest of `table` starts from: what
    /// besides the b-tree pages decides a window's rows, groups and keys
    /// (the table, its class and plan, the class epoch).
    fn stretch_hasher(&self, table: &str, class: &str, plan: &TablePlan) -> blake3::Hasher {
        let epoch = self.policy.store.epoch.label(self.now);
        let mut h = self.meta.keyed_hasher("stretch-v1");
        let period = plan.period.as_ref();
        let parts = [
            Some(table),
            Some(class),
            Some(epoch.as_str()),
            plan.subject.as_deref(),
            period.map(|(col, _)| col.as_str()),
            period.map(|(_, every)| every.as_str()),
        ];
        for part in parts {
            match part {
                None => h.update(&[0]),
                Some(p) => h
                    .update(&[1])
                    .update(&(p.len() as u64).to_le_bytes())
                    .update(p.as_bytes()),
            };
        }
        h
    }

    /// Takes a window of the parent whose rows were not read because its
    /// b-tree leaves are unchanged (its pages checked with
    /// [`ReuseCheck::blobs`] before the stretches were planned).
    fn take_unread(
        &mut self,
        acc: &mut TableAcc,
        mark: &WindowMark,
        pages: &[Id],
        packs: Option<Vec<Id>>,
    ) {
        let sum = parse_sum(&mark.checksum).expect("checked when planned");
        acc.pages.extend_from_slice(pages);
        acc.groups += mark.groups;
        acc.checksum = acc.checksum.wrapping_add(sum);
        acc.windows.push(mark.clone());
        self.hints.push(packs);
        self.counters
            .rows_reused
            .fetch_add(mark.rows, Ordering::Relaxed);
        self.counters
            .rows_unread
            .fetch_add(mark.rows, Ordering::Relaxed);
    }

    /// What checking the parent's pages needs, owned, so a thread of its
    /// own can check while this one reads.
    fn reuse_check(&self, lists: Option<IndexObjects>) -> ReuseCheck {
        ReuseCheck {
            handle: self.handle.clone(),
            index: self.index.clone(),
            lists,
            meta: self.meta.clone(),
            vault: self.vault.clone(),
        }
    }

    /// Whether the parent's tree pages of a window can stand in this
    /// snapshot ([`ReuseCheck::blobs`]): the packs holding their blobs if
    /// they can. Counts their blobs when they can.
    fn reusable(&mut self, table: &str, pages: &[Id], listed: Option<&[Id]>) -> Option<Vec<Id>> {
        // On this thread, the reader's own index objects (and what they
        // keep) serve; they come back after the check.
        let lists = self.lists.take();
        let mut check = self.reuse_check(lists);
        let target = self.target.clone();
        let cache = self.pack_cache.get_or_insert_with(|| tree_cache(target, 4));
        let reuse = check.blobs(cache, table, pages, listed);
        self.lists = check.lists;
        let reuse = reuse?;
        self.counters
            .chunks
            .fetch_add(reuse.blobs, Ordering::Relaxed);
        Some(reuse.packs)
    }

    /// Chunks and stores every group of a window, in (bucket, subject)
    /// order; returns how many group runs it wrote and their rows' share
    /// of the table checksum.
    fn store_groups(
        &mut self,
        window: &mut Window,
        table: &str,
        class: &str,
        sink: &mut WindowSink,
        pages: &mut Vec<Id>,
    ) -> Result<(u64, u128), OpsError> {
        let window = &*window;
        let slots = &window.slots[..];
        let n = slots.len() as u64;
        // Keys first: every key this window needs is created and persisted
        // at every vault location before any chunk sealed under it exists.
        // Groups come sorted by bucket, so the time key changes rarely.
        let epoch = self.policy.store.epoch.label(self.now);
        let mut times: Vec<TimeRef> = Vec::new();
        let refs: Vec<GroupRef> = {
            let mut v = self.vault.blocking_lock();
            let mut last: Option<Option<&[u8]>> = None;
            let mut refs = Vec::with_capacity(slots.len());
            for slot in slots {
                let bucket = window.text(slot.bucket);
                if last != Some(bucket) {
                    let text = window.coord(slot.bucket);
                    let (kind, name) = time_key_name(class, text.as_deref(), &epoch);
                    let (id, key) = v.get_or_create(kind, &name);
                    times.push(TimeRef {
                        id,
                        key: key.boxed(),
                        unit: unit_label(kind, &name).into(),
                    });
                    last = Some(bucket);
                }
                refs.push(GroupRef {
                    s: None,
                    skey: None,
                    time: (times.len() - 1) as u32,
                });
            }
            // Then the subject keys, looked up on several threads (a keyed
            // pseudonym and a few cache misses each, most of this thread's
            // work per group); the ones missing are created here after, in
            // order.
            let missing = self.subject_keys(&v, window, &mut refs);
            let names: Vec<&str> = missing.iter().map(|(_, p)| p.as_str()).collect();
            v.get_or_create_each(KeyKind::Subject, &names, |n, id, key| {
                let i = missing[n].0;
                refs[i].s = Some(id);
                refs[i].skey = Some(key.boxed());
            });
            refs
        };
        self.persist_vault()?;
        // Then the groups, in batches on several threads (key derivation,
        // chunking and hashing are per group). This thread pages each
        // batch's entries in order as the batches come in, while the
        // threads chunk the next ones; a batch is handed out only when it
        // is at most `ahead` batches past the first one not paged yet.
        let ctx = GroupCtx {
            meta: self.meta.clone(),
            index: self.index.clone(),
            counters: self.counters.clone(),
            table,
            params: self.params,
            seed: self.seed,
            times,
        };
        let batches = slots.len().div_ceil(GROUP_BATCH);
        let threads = self.threads.clamp(1, batches.max(1));
        let ahead = 2 * threads;
        let senders: Vec<WorkSender> = (0..threads).map(|_| self.work.fork()).collect();
        let (done_tx, done_rx) = channel::<GroupBatch>();
        let (ticket_tx, ticket_rx) = channel::<usize>();
        let ticket_rx = Mutex::new(ticket_rx);
        let (refs, ctx) = (&refs, &ctx);
        std::thread::scope(|scope| -> Result<(u64, u128), OpsError> {
            let handles: Vec<_> = senders
                .into_iter()
                .map(|sender| {
                    let (done, tickets) = (done_tx.clone(), &ticket_rx);
                    scope.spawn(move || ctx.serve(window, slots, refs, tickets, done, sender))
                })
                .collect();
            drop(done_tx);
            let paged =
                self.page_batches((batches, ahead), &ticket_tx, &done_rx, table, sink, pages);
            // The threads end once no batch is left to hand out.
            drop(ticket_tx);
            let mut joined = Ok(());
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(OpsError::Internal("a grouping thread panicked".into()))
                });
                match r {
                    Ok(packs) => {
                        if let Some(known) = self.hint.as_mut() {
                            known.merge(&packs);
                        }
                    }
                    Err(e) => joined = joined.and(Err(e)),
                }
            }
            let checksum = paged?;
            joined?;
            Ok((n, checksum))
        })
    }

    /// Hands out the batches of a window's groups (`batches` of them, at
    /// most `ahead` past the first not paged yet) and pages their entries
    /// in order as they come in. Returns their rows' share of the table
    /// checksum, or the first error a batch reported.
    fn page_batches(
        &mut self,
        (batches, ahead): (usize, usize),
        tickets: &Sender<usize>,
        done: &Receiver<GroupBatch>,
        table: &str,
        sink: &mut WindowSink,
        pages: &mut Vec<Id>,
    ) -> Result<u128, OpsError> {
        let stopped = || OpsError::Internal("the grouping threads stopped".into());
        let mut handed = 0;
        while handed < batches.min(ahead) {
            tickets.send(handed).map_err(|_| stopped())?;
            handed += 1;
        }
        let mut waiting: BTreeMap<usize, Vec<GroupEntry>> = BTreeMap::new();
        let mut checksum = 0u128;
        let mut next = 0;
        while next < batches {
            let (k, r) = done.recv().map_err(|_| stopped())?;
            let (entries, sum) = r?;
            checksum = checksum.wrapping_add(sum);
            waiting.insert(k, entries);
            while let Some(entries) = waiting.remove(&next) {
                next += 1;
                for entry in entries {
                    match sink {
                        WindowSink::Pages(pager) => {
                            for p in pager.push(entry) {
                                pages.push(self.store_page(Page::Groups {
                                    table: table.to_string(),
                                    groups: p,
                                })?);
                            }
                        }
                        WindowSink::Overlay(draft) => draft.push(entry),
                    }
                }
                if handed < batches {
                    tickets.send(handed).map_err(|_| stopped())?;
                    handed += 1;
                }
            }
        }
        Ok(checksum)
    }

    /// Sets the subject key of each group of the window (`refs`, in the
    /// same order) that has a subject and whose key the vault has now,
    /// looking them up on the grouping threads. Returns the positions of
    /// the groups whose subject has no key yet, in order, with their
    /// pseudonyms.
    fn subject_keys(
        &self,
        vault: &Vault,
        window: &Window,
        refs: &mut [GroupRef],
    ) -> Vec<(usize, PseudonymHex)> {
        let lookup =
            |first: usize, slots: &[Slot], refs: &mut [GroupRef]| -> Vec<(usize, PseudonymHex)> {
                let mut missing = Vec::new();
                let mut pseudonyms = Vec::new();
                // A run of groups at a time: their pseudonyms are computed side
                // by side, then looked up.
                for (run, (slots, refs)) in slots
                    .chunks(KEYS_AT_ONCE)
                    .zip(refs.chunks_mut(KEYS_AT_ONCE))
                    .enumerate()
                {
                    let subjects: Vec<(usize, &[u8])> = slots
                        .iter()
                        .enumerate()
                        .filter_map(|(i, slot)| window.text(slot.subject).map(|s| (i, s)))
                        .collect();
                    let texts: Vec<&[u8]> = subjects.iter().map(|(_, s)| *s).collect();
                    subject_pseudonyms_hex(vault.pseudonym_key(), &texts, &mut pseudonyms);
                    let names: Vec<&str> = pseudonyms.iter().map(|p| p.as_str()).collect();
                    let found = vault.get_existing_many(KeyKind::Subject, &names);
                    for (((i, _), pseudo), found) in subjects.iter().zip(&pseudonyms).zip(found) {
                        match found {
                            Some((id, key)) => {
                                refs[*i].s = Some(id);
                                refs[*i].skey = Some(key.boxed());
                            }
                            None => missing.push((first + run * KEYS_AT_ONCE + i, *pseudo)),
                        }
                    }
                }
                missing
            };
        let threads = self.threads.max(1);
        let slots = &window.slots[..];
        if threads == 1 || slots.len() < 1024 {
            return lookup(0, slots, refs);
        }
        let per = slots.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = slots
                .chunks(per)
                .zip(refs.chunks_mut(per))
                .enumerate()
                .map(|(n, (part, refs))| scope.spawn(move || lookup(n * per, part, refs)))
                .collect();
            let mut missing = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(part) => missing.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            missing
        })
    }

    /// Persists new keys to every vault location (a no-op when none).
    fn persist_vault(&self) -> Result<(), OpsError> {
        let vault = self.vault.clone();
        self.handle.block_on(async move {
            let mut v = vault.lock().await;
            if v.is_dirty() {
                v.persist().await?;
            }
            Ok(())
        })
    }

    /// Seals a tree page and hands it to the packer (if not stored before
    /// this run).
    ///
    /// Pages sent in this run are not remembered: a page lists chunk ids
    /// keyed per group, so two windows of one run make the same page only
    /// if they hold the same groups' same rows, and such a page is then
    /// stored twice, harmlessly, like a chunk repeated across two windows
    /// of one group. A map of them took 37 MiB at 4 GiB (685 k pages in a
    /// table of 1 M buckets) and kept no page out.
    fn store_page(&mut self, page: Page) -> Result<Id, OpsError> {
        let (index, hint) = (&self.index, &mut self.hint);
        let window = self.window;
        let (id, sealed) = page.seal_if_new(&self.meta, |id| {
            if let Some(p) = index.chunks.pack(id) {
                if let Some(known) = hint.as_mut() {
                    known.add(p);
                }
                return false;
            }
            true
        });
        // Pages are blobs like chunks and are counted with them.
        self.counters.chunks.fetch_add(1, Ordering::Relaxed);
        if let Some(sealed) = sealed {
            self.counters.new_chunks.fetch_add(1, Ordering::Relaxed);
            self.pages_out.send(id, &sealed, window)?;
        }
        Ok(id)
    }

    fn read_sqlite(&mut self) -> Result<ReadContent, OpsError> {
        let path = self.policy.store.path.clone().ok_or_else(|| {
            OpsError::Invalid(format!(
                "{}: [store] has no `path`; add it",
                self.policy.file.display()
            ))
        })?;
        let src = SqliteSource::open(&path)?;
        let schema = src.schema()?;
        // Every listed table must exist, with its columns; checked before
        // any data moves.
        for t in &self.policy.store.tables {
            let plan = self.policy.plan(&t.name);
            src.check_plan(&schema, &plan)?;
        }
        // Every table's b-tree is walked first, while the index loads;
        // then one thread checks the parent's pages of the windows whose
        // leaves are unchanged, table by table, while this one reads.
        let preps: Vec<TablePrep> = schema
            .tables
            .iter()
            .map(|ts| self.prepare_table(&src, ts))
            .collect();
        // Per table: its name and the parent's windows to check.
        let to_check: Vec<(String, WindowPages)> = schema
            .tables
            .iter()
            .zip(&preps)
            .map(|(ts, p)| {
                let windows = p.same.iter().map(|&i| {
                    let (mark, pages) = &p.prior.list[i];
                    (i, pages.clone(), mark.packs.clone())
                });
                (ts.name.clone(), windows.collect())
            })
            .collect();
        if to_check.iter().any(|(_, w)| !w.is_empty()) {
            self.ready_index()?;
        }
        // The page check's thread has index objects of its own.
        let lists = self.lists.as_ref().map(|_| {
            IndexObjects::new(self.target.clone(), self.meta.clone(), BACKUP_KEPT_ENTRIES)
        });
        let mut check = self.reuse_check(lists);
        let target = self.target.clone();
        // One verdict per window checked, in table order and, within a
        // table, in window order; bounded, so the check runs at most a few
        // thousand windows ahead of the reader.
        let (verdict_tx, verdict_rx) = sync_channel::<Verdict>(4096);
        let mut tables = Vec::new();
        let mut items = 0u64;
        let mut bytes_read = 0u64;
        std::thread::scope(|scope| -> Result<(), OpsError> {
            scope.spawn(move || {
                let mut cache = tree_cache(target, 2);
                for (t, (table, windows)) in to_check.into_iter().enumerate() {
                    for (i, pages, listed) in windows {
                        let reuse = check.blobs(&mut cache, &table, &pages, listed.as_deref());
                        if verdict_tx.send(Verdict { t, i, reuse }).is_err() {
                            return; // the reader stopped
                        }
                    }
                }
            });
            // Moved in, so that a table failing drops it here: the check's
            // next send then fails and its thread ends, instead of the
            // scope waiting on a send nobody receives.
            let verdict_rx = verdict_rx;
            for (t, (ts, mut prep)) in schema.tables.iter().zip(preps).enumerate() {
                let mut verdicts = Verdicts {
                    rx: &verdict_rx,
                    t,
                    checked: std::mem::take(&mut prep.same),
                    received: 0,
                };
                let entry = self.read_table(&src, ts, prep, &mut |i| verdicts.get(i))?;
                // The verdicts of windows the plan did not ask about.
                verdicts.drain();
                items = items.saturating_add(entry.rows);
                bytes_read += entry.bytes;
                tables.push(entry);
            }
            Ok(())
        })?;
        Ok(ReadContent {
            store: StoreInfo {
                kind: "sqlite".into(),
                location: path.display().to_string(),
            },
            sqlite: Some(SqliteSnapshot { schema, tables }),
            files: None,
            postgres: None,
            items,
            bytes_read,
            window_packs: Vec::new(),
            index: None,
        })
    }

    /// What a table needs before any table is read: its plan, its
    /// parent's windows, and which of them digest as they did (a walk of
    /// the table's b-tree that keeps no leaf: the leaves of the stretches
    /// that are read are walked again as their rows are, so no table's
    /// leaves wait in memory while the tables before it are read).
    fn prepare_table(&mut self, src: &SqliteSource, ts: &TableSchema) -> TablePrep {
        let plan = self.policy.plan(&ts.name);
        let class = self.policy.class_of(&ts.name).as_str().to_string();
        let prior = prior_windows(self.parent.as_mut(), &ts.name, &class);
        let began = Instant::now();
        let fingerprint = self.stretch_hasher(&ts.name, &class, &plan);
        // The parent's windows that can stand unread if their leaves digest
        // as they did.
        let candidates: Vec<usize> = (0..prior.list.len())
            .filter(|&i| {
                let mark = &prior.list[i].0;
                mark.stretch.is_some() && parse_sum(&mark.checksum).is_some()
            })
            .collect();
        let (pages, same, rows) = if candidates.is_empty() {
            // Every row is read; the walk comes then.
            (true, Vec::new(), None)
        } else {
            let ranges: Vec<RowidRange> = candidates
                .iter()
                .map(|&i| {
                    let mark = &prior.list[i].0;
                    RowidRange {
                        from: mark.from,
                        to: mark.to,
                    }
                })
                .collect();
            match src.stretch_digests(ts, &ranges, &fingerprint) {
                Ok(Some(walked)) => {
                    let same = candidates
                        .into_iter()
                        .zip(walked.digests)
                        .filter(|(i, now)| {
                            prior.list[*i].0.stretch.as_deref() == Some(hex::encode(now).as_str())
                        })
                        .map(|(i, _)| i)
                        .collect();
                    (true, same, Some(walked.rows))
                }
                Ok(None) => (false, Vec::new(), None),
                Err(e) => {
                    tracing::warn!(table = %ts.name, error = %e, "cannot read the table's b-tree pages; reading all its rows");
                    (false, Vec::new(), None)
                }
            }
        };
        let stretched = !same.is_empty();
        TablePrep {
            plan,
            class,
            prior,
            pages,
            stretched,
            fingerprint,
            same,
            rows,
            walk_ms: began.elapsed().as_millis() as u64,
        }
    }

    /// Reads one table: the parent's windows whose pages can stand
    /// (`blobs`, from the page check) unread, every other rowid read into
    /// windows and stored.
    fn read_table(
        &mut self,
        src: &SqliteSource,
        ts: &TableSchema,
        prep: TablePrep,
        verdict: &mut dyn FnMut(usize) -> Option<Reuse>,
    ) -> Result<TableEntry, OpsError> {
        let TablePrep {
            plan,
            class,
            prior,
            pages,
            stretched,
            fingerprint,
            rows: walked_rows,
            walk_ms,
            ..
        } = prep;
        // A walk of the table counted its rows; otherwise SQLite counts
        // them (a pass over every leaf, on this thread, before any is read).
        let total = walked_rows.or_else(|| src.row_count(ts).ok());
        self.progress
            .phase(&format!("reading {}", ts.name), total, "rows");
        // The stretches are planned as they are read: the verdict on a
        // window of the parent (its pages can stand, with how many blobs)
        // is asked for only when this thread wants the next stretch and
        // every stretch before that window was read (the read that leads
        // up to a window ends where the window starts only if it stands),
        // so the page check runs ahead of this thread instead of before it.
        let counters = self.counters.clone();
        // The packs of the windows left unread, from their verdicts, until
        // their marks are written.
        let unread_packs = std::cell::RefCell::new(HashMap::new());
        let same = |i: usize| match verdict(i) {
            Some(r) => {
                counters.chunks.fetch_add(r.blobs, Ordering::Relaxed);
                unread_packs.borrow_mut().insert(i, r.packs);
                true
            }
            None => false,
        };
        let stretches: Box<dyn Iterator<Item = Stretch> + '_> = if stretched {
            Box::new(Stretches::new(&prior, same))
        } else {
            Box::new(std::iter::once(Stretch::Read(RowidRange::ALL)))
        };
        let planned = Instant::now();
        let mut rows = 0u64;
        let mut unread = 0u64;
        let mut tbytes = 0u64;
        let mut since_progress = 0u64;
        let name = ts.name.clone();
        let budget = self.window_budget;
        let failure = self.failure.clone();
        let progress = self.progress.clone();
        let has_rowid = ts.rowid.is_some();
        // The most leaves a stretch held at once, for the debug line.
        let mut most_leaves = 0usize;
        let mut pages = pages;
        // Two windows: this thread reads rows into one while another
        // thread stores the one before (digest, reuse or keys, chunks,
        // pages). A full window is handed over, never queued, and comes
        // back cleared for reuse. Unread stretches go the same way, so
        // the store takes every window in rowid order.
        let (full_tx, full_rx) = sync_channel::<Handover>(0);
        let (free_tx, free_rx) = sync_channel::<Window>(2);
        for _ in 0..2 {
            free_tx
                .send(Window::with_budget(budget))
                .expect("the channel has room");
        }
        let handed_over = || OpsError::Internal("the window store stopped".into());
        let this = &mut *self;
        let (scan, stored) = std::thread::scope(|scope| {
            let (name, class, prior) = (&name, &class, &prior);
            let storer = scope.spawn(move || -> Result<TableAcc, OpsError> {
                let mut acc = TableAcc::default();
                for item in full_rx {
                    match item {
                        Handover::Rows(mut window) => {
                            this.flush_window(&mut window, name, class, &mut acc, prior)?;
                            // The reader may be gone (it failed); then
                            // nothing needs the buffer.
                            let _ = free_tx.send(window);
                        }
                        Handover::Unread(i, packs) => {
                            let (mark, pages) = &prior.list[i];
                            this.take_unread(&mut acc, mark, pages, packs);
                        }
                    }
                }
                Ok(acc)
            });
            let mut window = free_rx.recv().expect("two windows were queued");
            let mut scan = Ok(());
            for stretch in stretches {
                let range = match stretch {
                    Stretch::Unread(i) => {
                        let mark = &prior.list[i].0;
                        let packs = unread_packs.borrow_mut().remove(&i);
                        if full_tx.send(Handover::Unread(i, packs)).is_err() {
                            break; // the store failed; its error follows
                        }
                        // The parent's counts: authenticated, but summed
                        // without overflow whatever they say.
                        rows = rows.saturating_add(mark.rows);
                        unread = unread.saturating_add(mark.rows);
                        tbytes = tbytes.saturating_add(mark.bytes);
                        progress.advance(mark.rows);
                        continue;
                    }
                    Stretch::Read(range) => range,
                };
                // The leaves of the stretch: its rows are read from them,
                // and its windows' stretch digests come from them.
                let leaves = if pages {
                    match src.stretch_leaves(ts, range) {
                        Ok(l) => l.map(std::cell::RefCell::new),
                        Err(e) => {
                            tracing::warn!(table = %ts.name, error = %e, "cannot read the table's b-tree pages; reading its rows with a query");
                            pages = false;
                            None
                        }
                    }
                } else {
                    None
                };
                let leaves_ref = leaves.as_ref();
                window.range = RowidRange {
                    from: range.from,
                    to: None,
                };
                let r = src.scan_natural_pages(
                    ts,
                    &plan,
                    leaves_ref,
                    range,
                    |coords: &GroupCoords, row: &[u8]| -> Result<(), OpsError> {
                        if failure.is_set() {
                            return Err(OpsError::Internal(
                                "stopping after an earlier failure".into(),
                            ));
                        }
                        window.add(coords, row);
                        rows += 1;
                        tbytes += row.len() as u64;
                        if window.full(budget, row) {
                            // The window ends after this row's rowid.
                            let to = has_rowid
                                .then(|| crate::store::record::row_span(row).ok())
                                .flatten()
                                .and_then(|(rowid, _)| rowid?.checked_add(1));
                            window.range.to = to;
                            window.stretch =
                                window_stretch(leaves_ref, range, window.range, &fingerprint);
                            let next = free_rx.recv().map_err(|_| handed_over())?;
                            let full = std::mem::replace(&mut window, next);
                            window.range.from = to;
                            full_tx
                                .send(Handover::Rows(full))
                                .map_err(|_| handed_over())?;
                        }
                        since_progress += 1;
                        if since_progress == 4096 {
                            progress.advance(since_progress);
                            since_progress = 0;
                        }
                        Ok(())
                    },
                );
                if let Some(l) = &leaves {
                    most_leaves = most_leaves.max(l.borrow().most);
                }
                if let Err(e) = r {
                    scan = Err(e);
                    break;
                }
                if !window.rows.is_empty() {
                    // A read stretch ends its last window, so the
                    // unread window after it starts a window too.
                    window.range.to = range.to;
                    window.stretch = window_stretch(leaves_ref, range, window.range, &fingerprint);
                    let next = match free_rx.recv() {
                        Ok(w) => w,
                        Err(_) => break, // the store failed
                    };
                    let full = std::mem::replace(&mut window, next);
                    if full_tx.send(Handover::Rows(full)).is_err() {
                        break;
                    }
                }
            }
            drop(full_tx);
            let stored = storer
                .join()
                .unwrap_or_else(|_| Err(OpsError::Internal("the window store panicked".into())));
            (scan, stored)
        });
        // The store's own error explains a reader stopped by it.
        let acc = match (scan, stored) {
            (_, Err(e)) => return Err(e),
            (Err(ScanError::Store(e)), Ok(_)) => return Err(e.into()),
            (Err(ScanError::Sink(e)), Ok(_)) => return Err(e),
            (Ok(()), Ok(acc)) => acc,
        };
        tracing::debug!(
            table = %ts.name,
            rows,
            unread,
            most_leaves,
            walk_ms,
            read_ms = planned.elapsed().as_millis() as u64,
            "table read"
        );
        self.progress.advance(since_progress);
        self.progress.finish_phase();
        Ok(acc.into_entry(name, class, rows, tbytes))
    }

    fn read_files(&mut self) -> Result<ReadContent, OpsError> {
        let root = self.policy.store.root.clone().ok_or_else(|| {
            OpsError::Invalid(format!(
                "{}: [store] has no `root`; add it",
                self.policy.file.display()
            ))
        })?;
        let class = self.policy.store.class.as_str().to_string();
        let walk = files::walk(&root, false)?;
        let (key_id, key, unit) = self.epoch_key(&class);
        self.persist_vault()?;
        let gk = group_key(None, &key, "files");
        let keys = ChunkKeys::new(gk);
        // Change detection: entries of the parent snapshot under the same key.
        let mut previous: HashMap<String, FileRecord> = HashMap::new();
        if let Some(p) = self.parent.as_ref().and_then(|p| p.files.clone()) {
            if p.key == key_id {
                let mut cache = tree_cache(self.target.clone(), 2);
                for id in &p.pages {
                    let page = self.handle.block_on(Page::load(
                        &mut cache,
                        &self.index,
                        &self.meta,
                        id,
                    ))?;
                    if let Page::Files { files, .. } = page {
                        for f in files {
                            previous.insert(f.entry.path.clone(), f);
                        }
                    }
                }
            }
        }
        let total: u64 = walk.entries.iter().map(|e| e.size).sum();
        self.progress.phase("reading files", Some(total), "bytes");
        let mut pager = FilePager::default();
        let mut pages = Vec::new();
        let mut bytes_read = 0u64;
        let mut nfiles = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for e in &walk.entries {
            if self.failure.is_set() {
                break;
            }
            let mut rec = FileRecord {
                entry: e.clone(),
                chunks: Vec::new(),
            };
            if e.kind == FileKind::File {
                nfiles += 1;
                let reuse = previous.get(&e.path).filter(|p| {
                    p.entry.size == e.size
                        && p.entry.mtime_ns == e.mtime_ns
                        && p.chunks.iter().all(|c| self.index.chunks.contains_key(c))
                });
                if let Some(p) = reuse {
                    rec.chunks = p.chunks.clone();
                    self.counters
                        .chunks
                        .fetch_add(p.chunks.len() as u64, Ordering::Relaxed);
                } else {
                    let mut f = files::open_entry(&root, e)?;
                    let mut chunker = Chunker::new(self.file_params, self.seed);
                    let (work, index, counters) = (&mut self.work, &self.index, &self.counters);
                    let in_flight = &mut self.in_flight;
                    let chunks = &mut rec.chunks;
                    // File mode has no read windows, so no pack lists.
                    let mut packs = PackSet::default();
                    let mut emit = |c: &[u8]| {
                        let in_flight = Some(&mut *in_flight);
                        let packs = &mut packs;
                        let id = keys.chunk_id(c);
                        let stored = index.chunks.pack(&id);
                        Self::emit(
                            work, stored, in_flight, packs, counters, &keys, key_id, chunks, c, id,
                        )
                    };
                    let mut read = 0u64;
                    loop {
                        let n = f.read(&mut buf).map_err(|err| {
                            OpsError::Invalid(format!(
                                "reading {}: {err}",
                                root.join(&e.path).display()
                            ))
                        })?;
                        if n == 0 {
                            break;
                        }
                        read += n as u64;
                        chunker.push(&buf[..n], &mut emit)?;
                        self.progress.advance(n as u64);
                    }
                    chunker.finish(&mut emit)?;
                    if read != e.size {
                        return Err(OpsError::Invalid(format!(
                            "{} changed size while being read ({} then {} bytes); run the backup again",
                            root.join(&e.path).display(),
                            e.size,
                            read
                        )));
                    }
                    bytes_read += read;
                }
            }
            if let Some(p) = pager.push(rec) {
                pages.push(self.store_page(Page::Files {
                    version: PAGE_VERSION,
                    files: p,
                })?);
            }
        }
        if let Some(p) = pager.finish() {
            pages.push(self.store_page(Page::Files {
                version: PAGE_VERSION,
                files: p,
            })?);
        }
        self.progress.finish_phase();
        Ok(ReadContent {
            store: StoreInfo {
                kind: "files".into(),
                location: root.display().to_string(),
            },
            sqlite: None,
            postgres: None,
            files: Some(FilesSnapshot {
                class,
                key: key_id,
                unit,
                files: nfiles,
                bytes: total,
                pages,
                skipped: walk.skipped,
            }),
            items: walk.entries.len() as u64,
            bytes_read,
            window_packs: Vec::new(),
            index: None,
        })
    }

    /// Reads a PostgreSQL store on one exported snapshot (tables streamed
    /// over several connections sharing it) and stores its rows through the
    /// same windows and groups as SQLite.
    fn read_postgres(&mut self) -> Result<ReadContent, OpsError> {
        let pg = |e: PgError| OpsError::Invalid(format!("store: {e}"));
        let handle = self.handle.clone();
        let conn = PgConn::from_store(&self.policy.store).map_err(pg)?;
        let mut src = handle.block_on(PgSource::open(&conn)).map_err(pg)?;
        // Large objects are not backed up: refused, unless the policy says
        // to go on without them.
        let large = handle.block_on(src.large_objects()).map_err(pg)?;
        if large > 0 {
            if self.policy.store.large_objects == NotBackedUp::Refuse {
                return Err(pg(PgError::LargeObjects {
                    server: conn.server(),
                    count: large,
                }));
            }
            tracing::warn!(
                count = large,
                "the database's large objects are left out, as the policy's large_objects = \"skip\" says"
            );
            self.counters
                .large_objects_skipped
                .store(large as u64, Ordering::Relaxed);
        }
        // Rows of extension configuration tables are read like a table's
        // when every schema is read (the schema dump then creates the
        // extensions, so a restore can fill their tables); else, if there
        // are any, refused unless the policy says to go on without them.
        let choice = self.policy.store.extension_config;
        if choice != ExtensionConfig::Include || !conn.schemas.is_empty() {
            let config = handle.block_on(src.extension_config()).map_err(pg)?;
            if !config.is_empty() {
                let tables = config
                    .iter()
                    .map(|(ext, t, n)| format!("{t} of extension {ext}: {n} rows"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let why = match choice {
                    ExtensionConfig::Refuse => Some("the policy says extension_config = \"refuse\""),
                    ExtensionConfig::Include => Some("with `schemas` set, pg_dump leaves the extensions out of the schema, so a restore could not create these tables; read every schema (no `schemas`) to keep them"),
                    ExtensionConfig::Skip => None,
                };
                if let Some(why) = why {
                    return Err(pg(PgError::ExtensionConfig {
                        server: conn.server(),
                        tables,
                        why: why.into(),
                    }));
                }
                tracing::warn!(
                    tables = %tables,
                    "rows of extension configuration tables are left out, as the policy's extension_config = \"skip\" says"
                );
                let rows: i64 = config.iter().map(|c| c.2).sum();
                self.counters
                    .extension_config_skipped
                    .store(rows as u64, Ordering::Relaxed);
            }
            src.leave_out_extension_config();
        }
        // Every listed table must exist, with its columns; checked before
        // any data moves.
        for t in &self.policy.store.tables {
            src.check_plan(&self.policy.plan(&t.name)).map_err(pg)?;
        }
        handle.block_on(src.lock()).map_err(pg)?;
        let tools = handle
            .block_on(PgTools::locate(src.server_version()))
            .map_err(pg)?;
        let mut plans = Vec::new();
        let mut names = Vec::new();
        for t in src.tables() {
            // The policy may name a table `name` or `schema.name`; the
            // snapshot and the group keys use the display name.
            let listed = self.policy.store.tables.iter().find(|c| t.matches(&c.name));
            let pname = listed.map_or_else(|| t.display_name(), |c| c.name.clone());
            plans.push(src.check_plan(&self.policy.plan(&pname)).map_err(pg)?);
            names.push((
                t.display_name(),
                self.policy.class_of(&pname).as_str().to_string(),
            ));
        }
        let schema = handle.block_on(src.schema(&tools)).map_err(pg)?;
        let parallel = self.threads.clamp(1, 4);
        let receivers = handle.block_on(src.stream(plans, parallel)).map_err(pg)?;
        let mut tables = Vec::new();
        let mut items = 0u64;
        let mut bytes_read = 0u64;
        for ((name, class), mut rows) in names.into_iter().zip(receivers) {
            let mut next = || rows.blocking_next().map(|r| r.map_err(pg));
            let entry = self.store_table_rows(&name, &class, &mut next)?;
            items = items.saturating_add(entry.rows);
            bytes_read += entry.bytes;
            tables.push(entry);
        }
        handle.block_on(src.close()).map_err(pg)?;
        Ok(ReadContent {
            store: StoreInfo {
                kind: "postgres".into(),
                location: conn.url().to_string(),
            },
            sqlite: None,
            files: None,
            postgres: Some(PostgresSnapshot { schema, tables }),
            items,
            bytes_read,
            window_packs: Vec::new(),
            index: None,
        })
    }

    /// Stores one table's rows, given in batches of (coordinates, encoded
    /// row), through the read windows; returns its snapshot entry.
    fn store_table_rows(
        &mut self,
        name: &str,
        class: &str,
        next: &mut dyn FnMut() -> Option<Result<RowBatch, OpsError>>,
    ) -> Result<TableEntry, OpsError> {
        self.progress
            .phase(&format!("reading {name}"), None, "rows");
        let prior = prior_windows(self.parent.as_mut(), name, class);
        let mut acc = TableAcc::default();
        let mut window = Window::with_budget(self.window_budget);
        let mut rows = 0u64;
        let mut tbytes = 0u64;
        while let Some(batch) = next() {
            if self.failure.is_set() {
                return Err(OpsError::Internal(
                    "stopping after an earlier failure".into(),
                ));
            }
            let batch = batch?;
            let n = batch.len() as u64;
            for (coords, row) in &batch {
                window.add(coords, row);
                rows += 1;
                tbytes += row.len() as u64;
                if window.full(self.window_budget, row) {
                    self.flush_window(&mut window, name, class, &mut acc, &prior)?;
                }
            }
            self.progress.advance(n);
        }
        self.flush_window(&mut window, name, class, &mut acc, &prior)?;
        self.progress.finish_phase();
        Ok(acc.into_entry(name.to_string(), class.to_string(), rows, tbytes))
    }
}

/// Writes each window mark's pack list (FORMAT 3.5): the packs of its
/// blobs stored before this backup and those written for it, sorted. A
/// window whose packs are not all known gets none, and a restore reads it
/// through the whole index.
fn mark_window_packs(tables: &mut [TableEntry], known: &[WindowPacks], placed: &[(Id, PackSet)]) {
    let marks = tables.iter().map(|t| t.windows.len()).sum::<usize>();
    if marks != known.len() {
        // Cannot happen: every mark written records what it knows.
        debug_assert_eq!(marks, known.len(), "a pack list per window mark");
        tracing::warn!("the read windows' pack lists do not line up; none are written");
        return;
    }
    let mut written: Vec<Vec<Id>> = vec![Vec::new(); known.len()];
    for (id, windows) in placed {
        for &w in &windows.0 {
            if let Some(list) = written.get_mut(w as usize) {
                list.push(*id);
            }
        }
    }
    let mut seq = 0usize;
    for t in tables.iter_mut() {
        for mark in &mut t.windows {
            let k = &known[seq];
            mark.packs = k.as_ref().map(|before| {
                let mut list = before.clone();
                list.extend_from_slice(&written[seq]);
                list.sort_unstable();
                list.dedup();
                list
            });
            seq += 1;
        }
    }
}

/// Writes the page lists (FORMAT 3.4) of every read window that has pages
/// and names none yet: its pages cut into parts at content-defined
/// boundaries ([`tree::list_parts`]), each part a list page. A part the
/// parent names, or that an earlier backup stored (found through the
/// reader's index), is named where it lies; the others go in metadata packs
/// of their own. Records each window's lists in its mark, and their packs
/// in the mark's pack list. A window reused from the parent keeps the
/// parent's lists: the parent was read through them, and packs of the
/// metadata family are never deleted while a snapshot needs them.
async fn store_page_lists(
    target: (&Target, &FormatRaise),
    meta: &MetaKey,
    tables: &mut [TableEntry],
    found: &mut StoredLists,
    pack_size: usize,
    counters: &Counters,
) -> Result<(), OpsError> {
    enum Part {
        Known(PageList),
        New(usize),
    }
    let mut writer = PackWriter::new();
    // Where each new part went, once its pack is stored.
    let mut written: Vec<Option<PageList>> = Vec::new();
    let mut new_ids: HashMap<Id, usize> = HashMap::new();
    // (new part, id, offset, sealed len) of the open pack's parts.
    let mut pending: Vec<(usize, Id, u32, u32)> = Vec::new();
    // Per window whose lists are made here: (table, window, parts).
    let mut made: Vec<(usize, usize, Vec<Part>)> = Vec::new();
    for (ti, table) in tables.iter_mut().enumerate() {
        let (pages, windows) = (&table.pages, &mut table.windows);
        let mut at = 0usize;
        for (wi, mark) in windows.iter_mut().enumerate() {
            let n = mark.pages as usize;
            if !mark.lists.is_empty() {
                counters
                    .chunks
                    .fetch_add(mark.lists.len() as u64, Ordering::Relaxed);
                let packs: Vec<Id> = mark.lists.iter().map(|l| l.pack).collect();
                packs.into_iter().for_each(|p| add_pack(mark, p));
            } else if n > 0 {
                let mut parts = Vec::new();
                for part in tree::list_parts(&pages[at..at + n]) {
                    let (id, plain) = tree::list_page(meta, part);
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    if let Some(&k) = new_ids.get(&id) {
                        parts.push(Part::New(k));
                        continue;
                    }
                    if let Some(l) = found.place(&id).await {
                        parts.push(Part::Known(l));
                        continue;
                    }
                    // Sealed only when it is new.
                    let sealed = tree::seal_list(meta, &id, &plain);
                    if !writer.is_empty() && writer.len() + sealed.len() > pack_size {
                        let full = std::mem::take(&mut writer);
                        put_lists(target, meta, full, &mut pending, &mut written, counters).await?;
                    }
                    let k = written.len();
                    written.push(None);
                    new_ids.insert(id, k);
                    pending.push((k, id, writer.len() as u32, sealed.len() as u32));
                    writer.add(id, &sealed, sealed.len() as u32);
                    counters.new_chunks.fetch_add(1, Ordering::Relaxed);
                    parts.push(Part::New(k));
                }
                made.push((ti, wi, parts));
            }
            at += n;
        }
    }
    if !writer.is_empty() {
        put_lists(target, meta, writer, &mut pending, &mut written, counters).await?;
    }
    for (ti, wi, parts) in made {
        let mark = &mut tables[ti].windows[wi];
        for part in parts {
            let l = match part {
                Part::Known(l) => l,
                Part::New(k) => written[k].expect("every new part is stored"),
            };
            mark.lists.push(l);
            add_pack(mark, l.pack);
        }
    }
    Ok(())
}

/// Page lists an earlier backup stored: named by the parent, or found
/// through the reader's index and placed through their pack's index
/// object.
struct StoredLists {
    /// The parent's lists by id: most parts of a window read again.
    parent: HashMap<Id, PageList>,
    index: Option<Arc<Index>>,
    objects: IndexObjects,
}

impl StoredLists {
    /// Where list `id` is stored already, if it is and its pack's index
    /// object says where.
    async fn place(&mut self, id: &Id) -> Option<PageList> {
        if let Some(l) = self.parent.get(id) {
            return Some(*l);
        }
        let index = self.index.as_ref()?;
        let pack = index.packs.get(index.chunks.pack(id)? as usize)?.0;
        // A list pack's lists are asked for one after another: the last
        // index built serves them.
        let of_pack = self.objects.index_of(&[pack]).await.ok()?;
        let loc = of_pack.index.chunks.get(id)?;
        Some(PageList {
            id: *id,
            pack,
            offset: loc.offset,
            len: loc.len,
        })
    }
}

/// Stores a pack of page lists and its index object, then records where
/// each of its parts lies.
async fn put_lists(
    (target, format): (&Target, &FormatRaise),
    meta: &MetaKey,
    writer: PackWriter,
    pending: &mut Vec<(usize, Id, u32, u32)>,
    written: &mut [Option<PageList>],
    counters: &Counters,
) -> Result<(), OpsError> {
    let (pack, bytes, index) = writer.finish(meta);
    let n = bytes.len() as u64;
    format.before_write(target).await?;
    target.put(&pack_path(&pack), bytes.into()).await?;
    let index_bytes = index.store(target, meta).await?;
    counters
        .stored_bytes
        .fetch_add(n + index_bytes, Ordering::Relaxed);
    counters.packs.fetch_add(1, Ordering::Relaxed);
    for (k, id, offset, len) in pending.drain(..) {
        written[k] = Some(PageList {
            id,
            pack,
            offset,
            len,
        });
    }
    Ok(())
}

/// Adds `pack` to a window mark's pack list, if it has one.
fn add_pack(mark: &mut WindowMark, pack: Id) {
    if let Some(packs) = &mut mark.packs {
        if let Err(at) = packs.binary_search(&pack) {
            packs.insert(at, pack);
        }
    }
}

/// The report lines of a snapshot's tables.
fn table_summaries(tables: &[TableEntry]) -> Vec<TableSummary> {
    tables
        .iter()
        .map(|t| TableSummary {
            name: t.name.clone(),
            class: t.class.clone(),
            rows: t.rows,
            groups: t.groups,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_index_finds_every_tag_and_no_other() {
        let tag = |i: u64| {
            *blake3::hash(&i.to_le_bytes())
                .as_bytes()
                .first_chunk::<8>()
                .unwrap()
        };
        for n in [0u64, 1, 7, 8, 9, 100, 5000] {
            let idx = TagIndex::new((0..n).map(tag)).unwrap();
            for i in 0..n {
                assert_eq!(idx.find(&tag(i)), Some(i as u32), "tag {i} of {n}");
            }
            for i in n..n + 200 {
                assert_eq!(idx.find(&tag(i)), None, "absent tag {i} of {n}");
            }
        }
        // Tags alike in their top bits (hostile pages): one long run,
        // searched by halves, still exact.
        let alike = |i: u64| (i * 3).to_be_bytes();
        let idx = TagIndex::new((0..3000).map(alike)).unwrap();
        for i in 0..3000 {
            assert_eq!(idx.find(&alike(i)), Some(i as u32));
            assert_eq!(idx.find(&(i * 3 + 1).to_be_bytes()), None);
        }
        // Two groups with one tag: no index.
        assert!(TagIndex::new([tag(1), tag(2), tag(1)].into_iter()).is_none());
    }

    fn c(subject: Option<&str>, bucket: Option<&str>) -> GroupCoords {
        GroupCoords {
            subject: subject.map(str::to_string),
            bucket: bucket.map(str::to_string),
        }
    }

    fn prior(ranges: &[(Option<i64>, Option<i64>)]) -> PriorWindows {
        let mut p = PriorWindows::default();
        for &(from, to) in ranges {
            let mark = WindowMark {
                digest: String::new(),
                rows: 1,
                bytes: 1,
                groups: 1,
                checksum: String::new(),
                pages: 0,
                from,
                to,
                stretch: Some(String::new()),
                packs: None,
                lists: Vec::new(),
                overlays: Vec::new(),
            };
            p.list.push((mark, Vec::new()));
        }
        p
    }

    fn read(from: Option<i64>, to: Option<i64>) -> Stretch {
        Stretch::Read(RowidRange { from, to })
    }

    /// A parent snapshot of one table `t` (class `c`) whose windows hold
    /// `counts` pages each, over `pages` page ids.
    fn parent(counts: &[u64], pages: usize) -> Snapshot {
        let window = |i: usize, n: u64| WindowMark {
            digest: format!("w{i}"),
            rows: 1,
            bytes: 1,
            groups: 1,
            checksum: String::new(),
            pages: n,
            from: None,
            to: None,
            stretch: None,
            packs: None,
            lists: Vec::new(),
            overlays: Vec::new(),
        };
        let table = TableEntry::of_pages(
            pages,
            counts
                .iter()
                .enumerate()
                .map(|(i, &n)| window(i, n))
                .collect(),
        );
        let schema = crate::store::sqlite::SqliteSchema::empty();
        Snapshot {
            version: 1,
            id: "p".into(),
            policy: "p".into(),
            time: String::new(),
            parent: None,
            custos_version: String::new(),
            store: Default::default(),
            sqlite: Some(crate::repo::snapshot::SqliteSnapshot {
                schema,
                tables: vec![table],
            }),
            files: None,
            postgres: None,
            stats: Default::default(),
        }
    }

    #[test]
    fn prior_windows_take_their_pages_from_the_parent_in_order() {
        let mut p = parent(&[2, 0, 3], 5);
        let prior = prior_windows(Some(&mut p), "t", "c");
        let ids = |r: std::ops::Range<u8>| r.map(|i| Id([i; 32])).collect::<Vec<_>>();
        let got: Vec<Vec<Id>> = prior.list.iter().map(|(_, pages)| pages.clone()).collect();
        assert_eq!(got, [ids(0..2), ids(2..2), ids(2..5)]);
        assert_eq!(prior.get("w2").map(|(m, _)| m.pages), Some(3));
        // Taken, not copied: the parent keeps no page list of the table.
        assert!(p.record_tables()[0].pages.is_empty());
        // Another class, or counts that do not add up to the pages: no
        // windows, and the parent's pages stay where they were.
        let mut p = parent(&[2, 3], 5);
        assert!(prior_windows(Some(&mut p), "t", "other").list.is_empty());
        for (counts, n) in [(&[2, 2][..], 5), (&[2, 4][..], 5), (&[u64::MAX, 6][..], 5)] {
            let mut p = parent(counts, n);
            assert!(prior_windows(Some(&mut p), "t", "c").list.is_empty());
            assert_eq!(p.record_tables()[0].pages.len(), n);
        }
    }

    #[test]
    fn stretches_read_every_rowid_no_unread_window_covers() {
        let p = prior(&[(None, Some(10)), (Some(10), Some(20)), (Some(30), None)]);
        let plan = |same: &[bool]| plan_stretches(&p, |i| same[i]);
        use Stretch::Unread;
        assert_eq!(
            plan(&[true, true, true]),
            [Unread(0), Unread(1), read(Some(20), Some(30)), Unread(2)]
        );
        assert_eq!(
            plan(&[false, true, false]),
            [read(None, Some(10)), Unread(1), read(Some(20), None)]
        );
        assert_eq!(plan(&[false, false, false]), [read(None, None)]);
        assert_eq!(
            plan(&[true, false, true]),
            [Unread(0), read(Some(10), Some(30)), Unread(2)]
        );
        // Marks out of order or overlapping are read, never trusted.
        let p = prior(&[(Some(5), Some(20)), (Some(10), Some(30)), (None, Some(40))]);
        let plan = plan_stretches(&p, |_| true);
        assert_eq!(plan, [read(None, Some(5)), Unread(0), read(Some(20), None)]);
        // An empty or unmarked window is read.
        let mut p = prior(&[(Some(5), Some(5)), (Some(7), Some(9))]);
        p.list[1].0.stretch = None;
        let plan = plan_stretches(&p, |_| true);
        assert_eq!(plan, [read(None, None)]);
    }

    #[test]
    fn stretches_ask_each_verdict_once_in_order_when_the_reader_reaches_it() {
        let p = prior(&[(None, Some(10)), (Some(20), Some(30)), (Some(40), None)]);
        let asked = std::cell::RefCell::new(Vec::new());
        let mut it = Stretches::new(&p, |i| {
            asked.borrow_mut().push(i);
            i != 1
        });
        // Nothing is asked before the first stretch is wanted, and the
        // first stretch needs only the first verdict.
        assert!(asked.borrow().is_empty());
        assert_eq!(it.next(), Some(Stretch::Unread(0)));
        assert_eq!(*asked.borrow(), [0]);
        // Window 1 cannot stand: the read runs on to window 2, which is
        // asked about before the read stretch is given.
        assert_eq!(it.next(), Some(read(Some(10), Some(40))));
        assert_eq!(*asked.borrow(), [0, 1, 2]);
        assert_eq!(it.next(), Some(Stretch::Unread(2)));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
        assert_eq!(*asked.borrow(), [0, 1, 2]);
    }

    #[test]
    fn a_parent_window_overlaps_the_rowids_it_shares_with_a_range() {
        let mark = |from, to| WindowMark {
            digest: String::new(),
            rows: 0,
            bytes: 0,
            groups: 0,
            checksum: String::new(),
            pages: 0,
            from,
            to,
            stretch: None,
            packs: None,
            lists: Vec::new(),
            overlays: Vec::new(),
        };
        let range = |from, to| RowidRange { from, to };
        // [10, 20) against ranges touching, inside, around and apart.
        let m = mark(Some(10), Some(20));
        assert!(overlaps(&m, &range(Some(19), Some(30))));
        assert!(overlaps(&m, &range(Some(0), Some(11))));
        assert!(overlaps(&m, &range(Some(12), Some(13))));
        assert!(overlaps(&m, &range(None, None)));
        assert!(!overlaps(&m, &range(Some(20), Some(30))));
        assert!(!overlaps(&m, &range(Some(0), Some(10))));
        assert!(!overlaps(&m, &range(None, Some(10))));
        assert!(!overlaps(&m, &range(Some(20), None)));
        // Unbounded marks: the first and the last window of a table.
        assert!(overlaps(&mark(None, Some(10)), &range(Some(9), None)));
        assert!(!overlaps(&mark(None, Some(10)), &range(Some(10), None)));
        assert!(overlaps(&mark(Some(10), None), &range(None, Some(11))));
        assert!(!overlaps(&mark(Some(10), None), &range(None, Some(10))));
        assert!(overlaps(&mark(None, None), &range(Some(5), Some(6))));
    }

    #[test]
    fn verdicts_pass_over_windows_not_asked_and_keep_tables_apart() {
        let (tx, rx) = sync_channel(16);
        for (t, i, blobs) in [
            (0, 1, Some(5)),
            (0, 3, None),
            (0, 4, Some(7)),
            (1, 0, Some(2)),
        ] {
            let reuse = blobs.map(|blobs| Reuse {
                blobs,
                packs: vec![Id([i as u8; 32])],
            });
            tx.send(Verdict { t, i, reuse }).unwrap();
        }
        let mut first = Verdicts {
            rx: &rx,
            t: 0,
            checked: vec![1, 3, 4],
            received: 0,
        };
        // Window 0 was not checked: read, and no verdict is taken.
        assert_eq!(first.get(0), None);
        assert_eq!(first.received, 0);
        // Window 1's verdict is passed over when window 3 is asked first.
        assert_eq!(first.get(3), None);
        assert_eq!(first.received, 2);
        first.drain();
        let mut second = Verdicts {
            rx: &rx,
            t: 1,
            checked: vec![0],
            received: 0,
        };
        let reuse = second.get(0).expect("window 0 of table 1 stands");
        assert_eq!((reuse.blobs, reuse.packs), (2, vec![Id([0; 32])]));
        // A check that stopped leaves the window to be read.
        drop(tx);
        let mut third = Verdicts {
            rx: &rx,
            t: 2,
            checked: vec![0],
            received: 0,
        };
        assert_eq!(third.get(0), None);
    }

    #[test]
    fn groups_are_ordered_by_their_coordinates_texts() {
        // Subjects that tie on their first eight bytes, that are prefixes
        // of one another, that hold NUL bytes, and missing ones.
        let subjects = [
            None,
            Some(""),
            Some("\0"),
            Some("1"),
            Some("10"),
            Some("100000000"),
            Some("10000000"),
            Some("100000000\0"),
            Some("1000000000"),
            Some("12345678a"),
            Some("12345678"),
            Some("2"),
            Some("a\0b"),
            Some("a"),
            Some("é"),
        ];
        let buckets = [None, Some("2026-03"), Some("2026-04"), Some("")];
        let mut w = Window::default();
        let mut i = 0u32;
        for b in buckets {
            for s in subjects {
                // Added in a scrambled order.
                let s = subjects[(i as usize * 7) % subjects.len()].or(s);
                w.add(&c(s, b), format!("row {i}").as_bytes());
                i += 1;
            }
        }
        w.group();
        let mut want: Vec<u32> = (0..w.slots.len() as u32).collect();
        want.sort_by(|&a, &b| {
            let (a, b) = (&w.slots[a as usize], &w.slots[b as usize]);
            (w.text(a.bucket), w.text(a.subject)).cmp(&(w.text(b.bucket), w.text(b.subject)))
        });
        assert!(w.slots.len() > 40, "{}", w.slots.len());
        // The slots are in that order: the order they are stored in.
        let made: Vec<u32> = (0..w.slots.len() as u32).collect();
        assert_eq!(made, want);
    }

    #[test]
    fn window_gathers_each_groups_rows_in_order_and_reuses_its_buffers() {
        let keys = [
            c(Some("1"), Some("2026-03")),
            c(Some("1"), Some("2026-04")),
            c(Some("2"), Some("2026-03")),
            c(None, None),
            c(Some("1"), None),
            c(None, Some("1")),
        ];
        let mut w = Window::default();
        for round in 0..2 {
            let mut want: HashMap<GroupCoords, Vec<u8>> = HashMap::new();
            for i in 0..600u32 {
                // Runs of one to three rows with the same coordinates.
                let k = &keys[(i as usize / (1 + i as usize % 3) * 7 + round) % keys.len()];
                let row = format!("row {i};");
                w.add(k, row.as_bytes());
                want.entry(k.clone())
                    .or_default()
                    .extend_from_slice(row.as_bytes());
            }
            assert!(w.runs.len() < 600 && w.runs.len() > 100, "{}", w.runs.len());
            assert!(w.slots.is_empty(), "grouping waits for `group`");
            w.group();
            assert_eq!(w.slots.len(), keys.len());
            assert_eq!(w.bytes, want.values().map(Vec::len).sum::<usize>());
            for s in &w.slots {
                let got: Vec<u8> = w.group_rows(s).flatten().copied().collect();
                let coords = GroupCoords {
                    subject: w.coord(s.subject).map(String::from),
                    bucket: w.coord(s.bucket).map(String::from),
                };
                assert_eq!(&got, &want[&coords], "{coords:?}");
                assert_eq!(s.bytes as usize, got.len());
                assert_eq!(s.rows as usize, w.group_rows(s).count());
            }
            w.clear();
            assert!(w.slots.is_empty() && w.runs.is_empty() && w.bytes == 0);
        }
    }

    fn digest_of(rows: &[(GroupCoords, &[u8])]) -> [u8; 32] {
        let mut w = Window::default();
        for (c, r) in rows {
            w.add(c, r);
        }
        w.digest(blake3::Hasher::new_keyed(&[7; 32]), &mut Vec::new())
    }

    /// The window digest as FORMAT 4 states it, hashed in one piece: a
    /// window whose lengths and coordinates fill the scratch many times
    /// over digests the same when fed a scratch at a time.
    #[test]
    fn a_window_digest_fed_in_parts_is_that_of_the_whole() {
        let key = [7; 32];
        let mut w = Window::default();
        let mut rows = Vec::new();
        for i in 0..40_000u32 {
            let coords = c(Some(&format!("customer-{}", i / 3)), Some("2026-03"));
            let row = format!("row {i} {}", "x".repeat((i % 17) as usize));
            w.add(&coords, row.as_bytes());
            rows.push((coords, row));
        }
        let mut whole = Vec::new();
        whole.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        let arena: Vec<u8> = rows.iter().flat_map(|(_, r)| r.bytes()).collect();
        whole.extend_from_slice(&(arena.len() as u64).to_le_bytes());
        whole.extend_from_slice(&arena);
        for (_, r) in &rows {
            whole.extend_from_slice(&(r.len() as u32).to_le_bytes());
        }
        // Runs: consecutive rows of equal coordinates.
        let mut runs: Vec<(&GroupCoords, u32)> = Vec::new();
        for (coords, _) in &rows {
            match runs.last_mut() {
                Some((last, n)) if *last == coords => *n += 1,
                _ => runs.push((coords, 1)),
            }
        }
        whole.extend_from_slice(&(runs.len() as u64).to_le_bytes());
        for (coords, n) in &runs {
            for part in [&coords.subject, &coords.bucket] {
                match part {
                    None => whole.push(0),
                    Some(v) => {
                        whole.push(1);
                        whole.extend_from_slice(&(v.len() as u64).to_le_bytes());
                        whole.extend_from_slice(v.as_bytes());
                    }
                }
            }
            whole.extend_from_slice(&n.to_le_bytes());
        }
        assert!(whole.len() > 8 * DIGEST_SCRATCH, "{}", whole.len());
        let want = *blake3::Hasher::new_keyed(&key)
            .update(&whole)
            .finalize()
            .as_bytes();
        let mut scratch = Vec::new();
        assert_eq!(
            w.digest(blake3::Hasher::new_keyed(&key), &mut scratch),
            want
        );
        assert!(
            scratch.capacity() <= 2 * DIGEST_SCRATCH,
            "{}",
            scratch.capacity()
        );
    }

    #[test]
    fn window_digest_changes_with_any_row_byte_split_or_group() {
        let (a, b) = (c(Some("a"), Some("2026-01")), c(Some("b"), Some("2026-01")));
        let base = digest_of(&[
            (a.clone(), b"row-1"),
            (b.clone(), b"row-2"),
            (b.clone(), b"row-3"),
        ]);
        assert_eq!(
            base,
            digest_of(&[
                (a.clone(), b"row-1"),
                (b.clone(), b"row-2"),
                (b.clone(), b"row-3")
            ])
        );
        let variants = [
            digest_of(&[
                (a.clone(), b"row-1"),
                (b.clone(), b"row-2"),
                (b.clone(), b"row-4"),
            ]),
            digest_of(&[
                (a.clone(), b"row-1r"),
                (b.clone(), b"ow-2"),
                (b.clone(), b"row-3"),
            ]),
            digest_of(&[
                (a.clone(), b"row-1"),
                (a.clone(), b"row-2"),
                (b.clone(), b"row-3"),
            ]),
            digest_of(&[
                (a.clone(), b"row-1"),
                (b.clone(), b"row-2"),
                (a.clone(), b"row-3"),
            ]),
            digest_of(&[
                (b.clone(), b"row-2"),
                (a.clone(), b"row-1"),
                (b.clone(), b"row-3"),
            ]),
            digest_of(&[
                (a.clone(), b"row-1"),
                (c(Some("b"), None), b"row-2"),
                (b.clone(), b"row-3"),
            ]),
            digest_of(&[
                (a.clone(), b"row-1"),
                (c(Some("b2026-01"), None), b"row-2"),
                (b.clone(), b"row-3"),
            ]),
            digest_of(&[(a.clone(), b"row-1"), (b.clone(), b"row-2")]),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(&base, v, "variant {i}");
        }
    }

    #[test]
    fn anchors_are_about_one_per_8_kib_of_rows() {
        let mut n = 0;
        let mut bytes = 0usize;
        for i in 0..200_000u64 {
            let row = format!("{i:>12}-{}", "x".repeat((i % 90) as usize));
            bytes += row.len();
            n += is_anchor(row.as_bytes()) as usize;
        }
        let per = bytes / n.max(1);
        assert!((4096..16384).contains(&per), "{per} bytes per anchor");
    }

    #[test]
    fn a_window_keeps_its_runs_and_groups_small() {
        // A window holds one run per row of call records and one slot per
        // group: their size is a backup's memory (PERFORMANCE, "Memory: a
        // compact key vault").
        assert_eq!(std::mem::size_of::<Coord>(), 8);
        assert_eq!(std::mem::size_of::<Run>(), 28);
        assert_eq!(std::mem::size_of::<Slot>(), 28);
        let mut w = Window::default();
        w.add(&c(None, Some("2026-03")), b"x");
        assert_eq!(w.runs[0].subject, Coord::NONE);
        assert_eq!(w.coord(w.runs[0].bucket).as_deref(), Some("2026-03"));
        assert_eq!(w.text(w.runs[0].subject), None);
    }

    #[test]
    fn window_tells_apart_subjects_whose_heads_tie() {
        // Subjects of 8 bytes or more that share their first 7: the sort
        // key cannot hold them whole, so the texts must settle the order
        // and the groups, with each group's rows in read order.
        let subjects = ["12345678", "1234567", "123456789", "1234567\0", "12345679"];
        let mut w = Window::default();
        let mut want: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for i in 0..40u8 {
            let s = subjects[(i as usize * 3 + i as usize / 7) % subjects.len()];
            w.add(&c(Some(s), Some("2026-03")), &[i]);
            want.entry(s).or_default().push(i);
        }
        w.group();
        let got: Vec<(String, Vec<u8>)> = w
            .slots
            .iter()
            .map(|s| {
                let rows: Vec<u8> = w.group_rows(s).flatten().copied().collect();
                assert_eq!(
                    (s.rows as usize, s.bytes as usize),
                    (rows.len(), rows.len())
                );
                (w.coord(s.subject).unwrap().into_owned(), rows)
            })
            .collect();
        let want: Vec<(String, Vec<u8>)> = want.into_iter().map(|(s, r)| (s.into(), r)).collect();
        assert_eq!(got, want);
    }
}
