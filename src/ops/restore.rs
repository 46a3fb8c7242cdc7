//! `custos restore`: rebuilds a store from a snapshot.
//!
//! Record mode: schema first, then rows group by group, then indexes, views
//! and triggers (done by the SQLite restorer). Rows of groups whose keys were
//! destroyed are omitted and counted per table, never silently. File mode:
//! the tree with contents, modes, mtimes and links.
//!
//! A fetching thread reads packs and opens chunks while the writing thread
//! inserts rows, so network, decryption and SQLite overlap.

use super::{OpenRepo, OpsError};
use crate::crypto::{group_key, ChunkKeys, Id, KeyBytes, MetaKey};
use crate::policy::{Policy, ResourcesConfig};
use crate::progress::Progress;
use crate::repo::cache::PackCache;
use crate::repo::index::{ChunkLoc, Index};
use crate::repo::pack::{open_chunk, open_chunks_into, Codec, ToOpen, MAX_RAW_CHUNK};
use crate::repo::snapshot::{Snapshot, TableEntry};
use crate::repo::tree::{self, GroupEntry, Page, PagesRead};
use crate::store::files::{FileKind, FilesRestorer};
use crate::store::postgres::{
    redact_url, restore_conn, PgConn, PgError, PgOutput, PgRestoreTo, PgRestorer, SqlScript,
};
use crate::store::sqlite::{SqliteRestorer, WriterBuffers};
use crate::target::Target;
use crate::vault::{KeyId, KeyKind, Vault};
use bytes::Bytes;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: Option<String>,
    pub snapshot: String,
    pub to: PathBuf,
    pub force: bool,
    /// What to take from a record snapshot (default: everything).
    pub only: Selection,
}

/// A part of a record snapshot to restore: some tables, the rows of one
/// customer, or both. The new database has the snapshot's whole schema;
/// tables (and rows) left out are empty. Only what is selected is opened:
/// the tree pages of the tables selected are read, and only the chunks of
/// the groups selected (DESIGN "Scale": a restore of one table or one
/// subject reads only what it needs).
#[derive(Clone, Default)]
pub struct Selection {
    /// Only these tables, named as in the snapshot; empty: every table.
    pub tables: Vec<String>,
    /// Only the rows of this customer: the subject id, as for `custos
    /// shred --subject`. Tables without a subject give no rows.
    pub subject: Option<String>,
}

impl Selection {
    /// Whether everything is selected.
    pub fn is_all(&self) -> bool {
        self.tables.is_empty() && self.subject.is_none()
    }

    /// Whether the table named is selected (every table when none is
    /// named).
    pub fn takes(&self, table: &str) -> bool {
        self.tables.is_empty() || self.tables.iter().any(|t| t == table)
    }
}

/// A subject id is a customer value: never printed.
impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("tables", &self.tables)
            .field("subject", &self.subject.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The groups a restore opens: every group, or those keyed by one of the
/// selected subject's keys (a subject has one key, two after concurrent
/// writers, FORMAT 7).
enum GroupFilter {
    All,
    Subject(Vec<KeyId>),
}

impl GroupFilter {
    fn keeps(&self, g: &GroupEntry) -> bool {
        match self {
            GroupFilter::All => true,
            GroupFilter::Subject(ids) => g.s.as_ref().is_some_and(|s| ids.contains(s)),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TableRestore {
    pub name: String,
    pub rows_expected: u64,
    pub rows_restored: u64,
    pub rows_shredded: u64,
    pub groups_shredded: u64,
    /// Of the rows restored into SQLite, those written straight into the
    /// table's pages (the others went in through SQL inserts).
    pub rows_by_pages: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub snapshot_time: String,
    pub target: String,
    pub to: String,
    pub items: u64,
    pub bytes: u64,
    pub bytes_fetched: u64,
    /// Reads of pack objects, whole or a span of one.
    pub pack_reads: u64,
    pub rows_shredded: u64,
    pub tables: Vec<TableRestore>,
    pub duration_s: f64,
    /// Whether the whole chunk index was loaded: for a file snapshot, and
    /// for read windows that list no packs (snapshots written before the
    /// lists existed, FORMAT 3.5) or whose list misses a blob. Otherwise
    /// each window's blobs were found through its packs' index objects.
    pub whole_index: bool,
    /// Index objects read for the windows' packs.
    pub index_objects_read: u64,
    /// Whether only a part of the snapshot was restored (`--table`,
    /// `--subject`); `tables` then lists the tables selected, and a
    /// table's `rows_expected` counts the rows selected.
    pub partial: bool,
    /// The pseudonym (FORMAT 1.3) of the customer selected with
    /// `--subject`, never the subject id: what the audit log and the shred
    /// ledger name a customer by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Foreign keys a partial PostgreSQL restore did not create (rows they
    /// point at may be left out), as pg_dump names them: `schema.table
    /// constraint`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys_left_out: Vec<String>,
}

impl RestoreReport {
    /// For the audit log: what a partial restore took (`partial: tables
    /// customers, cdrs; subject <pseudonym>`), or `None` for a whole one.
    pub fn partial_detail(&self) -> Option<String> {
        if !self.partial {
            return None;
        }
        let tables: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
        Some(match &self.subject {
            Some(pseudonym) => {
                format!("partial: tables {}; subject {pseudonym}", tables.join(", "))
            }
            None => format!("partial: tables {}", tables.join(", ")),
        })
    }
}

/// Why a group's keys could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKeyProblem {
    /// A parent key is no longer in the vault and a tombstone names it (or
    /// its unit is being destroyed): the group was shredded.
    Shredded,
    /// A parent key is neither in the vault nor destroyed: the vault object
    /// that held it is damaged or was deleted. The group's rows are out of
    /// reach, not gone by design: an integrity error, never a shred.
    Missing {
        /// The key's id.
        key: KeyId,
        /// Whether it is the group's subject key (else its time key).
        subject: bool,
    },
    /// The keys named do not derive the group's id: the manifest is damaged
    /// or hostile.
    Mismatch,
}

impl GroupKeyProblem {
    /// Why a key the vault does not give out is missing: shredded if the
    /// vault recorded its destruction, else [`GroupKeyProblem::Missing`].
    pub fn absent(vault: &Vault, key: &KeyId, subject: bool) -> GroupKeyProblem {
        if vault.destroyed(key) {
            GroupKeyProblem::Shredded
        } else {
            GroupKeyProblem::Missing { key: *key, subject }
        }
    }
}

/// The message of a key that is neither in the vault nor destroyed.
pub fn missing_key_message(key: &KeyId, subject: bool) -> String {
    format!(
        "{} key {key} is neither in the key vault nor destroyed: {} at a vault location is damaged or was deleted (restore it from another vault location or a copy; nothing was shredded)",
        if subject { "subject" } else { "time" },
        Vault::object_of(key, subject)
    )
}

/// Resolves a group's key from the vault.
pub fn group_keys(
    vault: &Vault,
    g: &GroupEntry,
    table: &str,
) -> Result<ChunkKeys, GroupKeyProblem> {
    parent_keys(vault, g).and_then(|p| keys_from_parents(p, g, table))
}

/// The keys a group's key derives from: its subject key (if it has a
/// subject) and its time key, both from the vault.
pub fn parent_keys<'v>(
    vault: &'v Vault,
    g: &GroupEntry,
) -> Result<ParentKeys<'v>, GroupKeyProblem> {
    let t = vault
        .key(&g.t)
        .ok_or_else(|| GroupKeyProblem::absent(vault, &g.t, false))?;
    let s: Option<&KeyBytes> = match &g.s {
        Some(id) => Some(
            vault
                .key(id)
                .ok_or_else(|| GroupKeyProblem::absent(vault, id, true))?,
        ),
        None => None,
    };
    Ok((s, t))
}

/// [`parent_keys`] of many groups, their subject keys looked up together
/// ([`Vault::keys_many`]: the look-ups are cache misses in the vault's
/// table, and asked for ahead they overlap). Time keys are few, and stay
/// in the cache.
pub fn parent_keys_many<'v, 'g>(
    vault: &'v Vault,
    groups: impl Iterator<Item = &'g GroupEntry> + Clone,
) -> Vec<Result<ParentKeys<'v>, GroupKeyProblem>> {
    let ids: Vec<Option<&KeyId>> = groups.clone().map(|g| g.s.as_ref()).collect();
    let subjects = vault.keys_many(&ids);
    drop(ids);
    groups
        .zip(subjects)
        .map(|(g, s)| {
            let t = vault
                .key(&g.t)
                .ok_or_else(|| GroupKeyProblem::absent(vault, &g.t, false))?;
            let s = match &g.s {
                Some(id) => Some(s.ok_or_else(|| GroupKeyProblem::absent(vault, id, true))?),
                None => None,
            };
            Ok((s, t))
        })
        .collect()
}

/// A group's subject key (if any) and time key.
pub type ParentKeys<'v> = (Option<&'v KeyBytes>, &'v KeyBytes);

/// The second half of [`group_keys`]: derives the group's keys and checks
/// them against the group id the manifest names. A walk over many groups
/// looks all their parent keys up first (the look-ups are cache misses in
/// the vault's table, and back to back they overlap), then derives.
pub fn keys_from_parents(
    (s, t): ParentKeys<'_>,
    g: &GroupEntry,
    table: &str,
) -> Result<ChunkKeys, GroupKeyProblem> {
    named_by(ChunkKeys::new(group_key(s, t, table)), g)
}

/// The keys, if they derive the group id the manifest names for `g`.
fn named_by(keys: ChunkKeys, g: &GroupEntry) -> Result<ChunkKeys, GroupKeyProblem> {
    if keys.group_id.0[..8] != g.g {
        return Err(GroupKeyProblem::Mismatch);
    }
    Ok(keys)
}

/// [`keys_from_parents`] of many groups of one table, their keys derived
/// side by side ([`crate::crypto::lanes`]); a group whose parent keys
/// could not be had keeps its problem.
pub fn keys_from_parents_many<'g>(
    parents: Vec<Result<ParentKeys<'_>, GroupKeyProblem>>,
    groups: impl IntoIterator<Item = &'g GroupEntry>,
    table: &str,
) -> Vec<Result<ChunkKeys, GroupKeyProblem>> {
    let found: Vec<(Option<&KeyBytes>, &KeyBytes)> = parents
        .iter()
        .filter_map(|p| p.as_ref().ok().copied())
        .collect();
    let mut keys = ChunkKeys::of_groups(&found, table).into_iter();
    drop(found);
    parents
        .into_iter()
        .zip(groups)
        .map(|(p, g)| {
            p?;
            named_by(keys.next().expect("one key a group with parents"), g)
        })
        .collect()
}

/// Fetches and opens every chunk of a group, in order. `object` names the
/// group in an error (built only then: this is the restore's hot path).
pub async fn read_group(
    codec: &mut Codec,
    cache: &mut PackCache,
    index: &Index,
    keys: &ChunkKeys,
    chunks: &[Id],
    object: impl Fn() -> String,
) -> Result<Vec<u8>, OpsError> {
    let mut out = Vec::new();
    for id in chunks {
        let loc = index.chunks.get(id).ok_or_else(|| {
            OpsError::Integrity(format!(
                "{}: chunk {id} is in no index (repository damaged; run `custos check`)",
                object()
            ))
        })?;
        let sealed = cache
            .blob(index, loc)
            .await
            .map_err(|e| OpsError::Integrity(e.to_string()))?;
        let plain = open_chunk(codec, keys, id, &sealed, loc.raw_len).map_err(|e| {
            OpsError::Integrity(format!(
                "{}: chunk {id}: {e}",
                cache.object_name(&index.pack_of(loc).0)
            ))
        })?;
        out.extend_from_slice(&plain);
    }
    Ok(out)
}

/// One read window of a table ([`window_batches`]).
pub(super) struct WindowPages<'a> {
    /// The window's pages: a range of the table's `pages`.
    pub range: std::ops::Range<usize>,
    /// The packs its mark lists.
    pub packs: Option<&'a [Id]>,
    /// Where each of its overlays starts among its pages (FORMAT 3.4).
    pub overlays: Vec<usize>,
}

/// The table's pages cut into read windows ([`TableEntry::page_windows`]),
/// each with the packs its mark lists, so that a window's rows reach the
/// writer together and go in in rowid order. A snapshot without window
/// marks, or with marks that do not add up to its pages, gives one page a
/// batch, and no pack lists.
pub(super) fn window_batches(t: &TableEntry) -> Vec<WindowPages<'_>> {
    t.page_windows()
        .into_iter()
        .map(|w| WindowPages {
            packs: w.mark.and_then(|i| t.windows[i].packs.as_deref()),
            range: w.range,
            overlays: w.overlays,
        })
        .collect()
}

pub async fn restore(
    policy: &Policy,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreReport, OpsError> {
    let start = Instant::now();
    let repo = OpenRepo::open(policy, opts.target.as_deref()).await?;
    let snap = Snapshot::find(&repo.target, &repo.meta, &opts.snapshot).await?;
    let OpenRepo {
        target,
        vault,
        meta,
        ..
    } = repo;
    let target = Arc::new(target);
    let meta = Arc::new(meta);
    let mut report = RestoreReport {
        snapshot: snap.id.clone(),
        snapshot_time: snap.time.clone(),
        target: target.name.clone(),
        to: opts.to.display().to_string(),
        items: 0,
        bytes: 0,
        bytes_fetched: 0,
        pack_reads: 0,
        rows_shredded: 0,
        tables: Vec::new(),
        duration_s: 0.0,
        whole_index: false,
        index_objects_read: 0,
        partial: !opts.only.is_all(),
        subject: None,
        foreign_keys_left_out: Vec::new(),
    };
    if !opts.only.is_all() && snap.files.is_some() {
        return Err(OpsError::Invalid(format!(
            "snapshot {}: --table and --subject select part of a database snapshot; it holds files, not tables",
            snap.id
        )));
    }
    let src = Source {
        resources: policy.resources,
        index: Locator::new(target.clone(), meta.clone()),
        target,
        vault,
        meta,
    };
    if snap.sqlite.is_some() {
        restore_sqlite(&snap, src, opts, progress, &mut report).await?;
    } else if snap.files.is_some() {
        restore_files(&snap, src, opts, progress, &mut report).await?;
    } else if snap.postgres.is_some() {
        restore_postgres(policy, &snap, src, opts, progress, &mut report).await?;
    } else {
        return Err(OpsError::Invalid(format!(
            "snapshot {} holds no database and no files",
            snap.id
        )));
    }
    report.duration_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Checks a selection against the snapshot's tables (`names`) and turns
/// its subject into the filter of the groups to open (the subject's key
/// ids, its pseudonym noted in `report`).
async fn selection(
    snap_id: &str,
    names: &[&str],
    only: &Selection,
    vault: &Vault,
    report: &mut RestoreReport,
) -> Result<GroupFilter, OpsError> {
    if let Some(t) = only.tables.iter().find(|t| !names.contains(&t.as_str())) {
        return Err(OpsError::Invalid(format!(
            "snapshot {snap_id}: no table `{t}` (--table); it holds {}",
            names.join(", ")
        )));
    }
    match &only.subject {
        None => Ok(GroupFilter::All),
        Some(id) if id.is_empty() => Err(OpsError::Invalid(
            "--subject: the subject id is empty".into(),
        )),
        Some(id) => {
            let name = crate::crypto::subject_pseudonym(vault.pseudonym_key(), id);
            let ids = vault
                .key_ids_of([(KeyKind::Subject, name.as_str())])
                .into_values()
                .flatten()
                .collect::<Vec<_>>();
            if ids.is_empty() {
                return Err(OpsError::Invalid(format!(
                    "--subject: {}",
                    without_key(vault, &name).await
                )));
            }
            report.subject = Some(name);
            Ok(GroupFilter::Subject(ids))
        }
    }
}

/// Why the vault holds no key of the subject of pseudonym `name`, as the
/// shredding ledger tells it: a shred it records (when, and the
/// certificate), or none, and then the subject has no rows in any
/// snapshot, or its key was lost (its groups are then damage, which
/// `custos check` names). A key is found by its name (the pseudonym) only
/// while the vault holds it; a destroyed key leaves a tombstone of its
/// id, not its name, so the ledger is what can tell a shred apart.
async fn without_key(vault: &Vault, name: &str) -> String {
    match crate::shred::ledger::Ledger::load(vault).await {
        Ok(ledger) => match ledger
            .history
            .iter()
            .rev()
            .find(|d| d.unit.kind == KeyKind::Subject && d.unit.name == name)
        {
            Some(d) => format!(
                "the subject's data was shredded on {} (certificate {}): none of it can be restored",
                d.destroyed, d.certificate
            ),
            None => "the vault holds no key of the subject given, and the shredding ledger records no shred of it: no snapshot holds rows of it (if one should, its key is lost: `custos check` names the keys missing from the vault)".into(),
        },
        Err(e) => format!(
            "the vault holds no key of the subject given: no snapshot holds rows of it, or they were shredded (the shredding ledger could not be read to tell which: {e})"
        ),
    }
}

/// `post_data` (pg_dump's plain post-data section) without its foreign
/// keys, and the names of those left out (`schema.table constraint`).
/// pg_dump opens each object with a comment block whose `-- Name: ...;
/// Type: ...; Schema: ...` line says what it is; a foreign key's block
/// (`Type: FK CONSTRAINT`) runs to the next object's block.
fn without_foreign_keys(post_data: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(post_data.len());
    let mut left_out = Vec::new();
    let mut skipping = false;
    let mut lines = post_data.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        // An object's block (or the closing one) starts with a bare `--`
        // followed by a comment line.
        let header =
            line.trim_end() == "--" && lines.peek().is_some_and(|next| next.starts_with("-- "));
        if header {
            let next = lines.peek().copied().unwrap_or_default();
            let fields: Vec<&str> = next.trim_end().split("; ").collect();
            skipping = fields.get(1) == Some(&"Type: FK CONSTRAINT");
            if skipping {
                let name = fields[0].trim_start_matches("-- Name: ");
                let schema = fields
                    .get(2)
                    .and_then(|f| f.strip_prefix("Schema: "))
                    .unwrap_or("-");
                left_out.push(format!("{schema}.{name}"));
            }
        }
        if !skipping {
            out.push_str(line);
        }
    }
    (out, left_out)
}

/// A restore's cache of packs: as many as its `[resources]` allow, each
/// checked for its size, not hashed, since every blob a restore uses is
/// authenticated on its own ([`PackCache::without_pack_hashes`]).
fn pack_cache(target: &Arc<Target>, resources: &ResourcesConfig) -> PackCache {
    PackCache::new(target.clone(), resources.restore_packs()).without_pack_hashes()
}

/// Where a restore reads from.
struct Source {
    /// The policy's `[resources]`: threads and buffers.
    resources: ResourcesConfig,
    target: Arc<Target>,
    index: Locator,
    vault: Vault,
    meta: Arc<MetaKey>,
}

/// Where a restore finds blobs. A read window lists the packs holding its
/// tree pages and chunks (FORMAT 3.5), so only those packs' index objects
/// are read and memory follows the window, not the repository. A window
/// listing none (written before the lists existed), or whose list misses a
/// blob, is read through the whole index, loaded once when first needed.
struct Locator {
    windows: tree::WindowIndex,
    meta: Arc<MetaKey>,
}

impl Locator {
    fn new(target: Arc<Target>, meta: Arc<MetaKey>) -> Self {
        Locator {
            windows: tree::WindowIndex::new(target, meta.clone()),
            meta,
        }
    }

    /// The whole index (every index object of the target).
    async fn whole(&mut self) -> Result<Arc<Index>, OpsError> {
        Ok(self.windows.whole().await?)
    }

    /// A window's index and groups: through its packs when it lists them and
    /// they locate everything, or else through the whole index (the pages
    /// read through the window's packs are kept: a page is the same whichever
    /// index located it).
    async fn open(
        &mut self,
        cache: &mut PackCache,
        vault: &Vault,
        (snapshot, table): (&str, &str),
        (pages, overlays, packs): (&[Id], &[usize], Option<&[Id]>),
        filter: &GroupFilter,
        lists: WindowLists,
    ) -> Result<OpenWindow, OpsError> {
        let WindowLists {
            mut groups,
            mut locs,
        } = lists;
        let meta = self.meta.clone();
        let at = (snapshot, table);
        let index = self.windows.for_window(packs).await?;
        let read = window_groups(cache, &index, &meta, at, (pages, overlays), &mut groups).await?;
        if read.is_ok() {
            groups.retain(|(_, g)| filter.keeps(g));
            let located = Located::of(&index, &groups, locs);
            if located.complete(vault, &groups) {
                return Ok((index, groups, located));
            }
            locs = located.locs;
        }
        if !self.windows.whole_loaded() {
            tracing::warn!(
                snapshot,
                table,
                "a read window's pack list misses some of its blobs; reading through the whole index"
            );
        }
        let index = self.whole().await?;
        if read.is_err() {
            window_groups(cache, &index, &meta, at, (pages, overlays), &mut groups)
                .await?
                .map_err(|page| {
                    OpsError::Integrity(format!(
                        "snapshot {snapshot}, table {table}: tree page {page} is in no index (repository damaged; run `custos check`)"
                    ))
                })?;
            groups.retain(|(_, g)| filter.keeps(g));
        }
        let located = Located::of(&index, &groups, locs);
        Ok((index, groups, located))
    }

    fn report(&self, report: &mut RestoreReport) {
        report.whole_index = self.windows.whole_loaded();
        report.index_objects_read = self.windows.objects_read();
    }
}

/// A window's index, its groups (each with the tree page naming it) and
/// where their chunks are.
type OpenWindow = (Arc<Index>, Vec<(Id, GroupEntry)>, Located);

/// The lists of a read window, kept from window to window: a window holds
/// some 200 k to 300 k groups, and lists made anew for each would be
/// faulted in afresh every time (freed memory goes back to the system at
/// once, see `main.rs`).
#[derive(Default)]
struct WindowLists {
    groups: Vec<(Id, GroupEntry)>,
    locs: Vec<Option<ChunkLoc>>,
}

impl WindowLists {
    /// The lists of a window read, emptied for the next.
    fn of((_, mut groups, Located { mut locs }): OpenWindow) -> Self {
        groups.clear();
        locs.clear();
        WindowLists { groups, locs }
    }
}

/// Where a window's chunks are: every chunk of every group, group after
/// group, looked up back to back so that the index's cache misses overlap
/// (one group at a time, each look-up waited alone). `None` where the
/// index does not locate a chunk.
struct Located {
    locs: Vec<Option<ChunkLoc>>,
}

/// Chunks located per call, to bound the look-ups' scratch space.
const LOCATE_BATCH: usize = 1 << 14;

impl Located {
    /// Locates `groups`' chunks, into `locs` (cleared first).
    fn of(index: &Index, groups: &[(Id, GroupEntry)], mut locs: Vec<Option<ChunkLoc>>) -> Self {
        let mut ids = groups.iter().flat_map(|(_, g)| &g.chunks);
        locs.clear();
        loop {
            let before = locs.len();
            index
                .chunks
                .locs(ids.by_ref().take(LOCATE_BATCH), &mut locs);
            if locs.len() - before < LOCATE_BATCH {
                break;
            }
        }
        Located { locs }
    }

    /// Whether every chunk the window's restore will open is located: the
    /// chunks of each group whose keys are still in the vault. The vault
    /// is asked only about a group whose chunks are not all located (a
    /// shred may have deleted their packs).
    fn complete(&self, vault: &Vault, groups: &[(Id, GroupEntry)]) -> bool {
        let mut at = 0;
        groups.iter().all(|(_, g)| {
            let found = &self.locs[at..at + g.chunks.len()];
            at += g.chunks.len();
            found.iter().all(Option::is_some) || parent_keys(vault, g).is_err()
        })
    }
}

/// The parent keys of a run of a window's groups, looked up back to back
/// (their misses in the vault's table overlap) just before the run is
/// read, or why a group's could not be had.
struct Parents<'v> {
    from: usize,
    keys: Vec<Result<ParentKeys<'v>, GroupKeyProblem>>,
}

/// Groups whose parent keys are looked up together.
const PARENTS_BATCH: usize = 4096;

impl<'v> Parents<'v> {
    /// The keys of group `i`, looking up the next batch when `i` is past
    /// the current one (groups are asked for in order).
    fn of(
        &mut self,
        vault: &'v Vault,
        groups: &[(Id, GroupEntry)],
        i: usize,
    ) -> Result<ParentKeys<'v>, GroupKeyProblem> {
        if i < self.from || i >= self.from + self.keys.len() {
            self.from = i;
            self.keys.clear();
            let to = (i + PARENTS_BATCH).min(groups.len());
            let found = parent_keys_many(vault, groups[i..to].iter().map(|(_, g)| g));
            self.keys.extend(found);
        }
        self.keys[i - self.from]
    }
}

/// A window's groups from its tree pages, each with the page naming it,
/// into `groups` (cleared first; its room is kept from window to window);
/// `Ok(Err(page))` if `index` does not locate `page`.
async fn window_groups(
    cache: &mut PackCache,
    index: &Index,
    meta: &MetaKey,
    (snapshot, table): (&str, &str),
    (pages, overlays): (&[Id], &[usize]),
    groups: &mut Vec<(Id, GroupEntry)>,
) -> Result<Result<(), Id>, OpsError> {
    groups.clear();
    let read = match PagesRead::fetch(cache, index, pages).await? {
        Ok(read) => read,
        Err(page) => return Ok(Err(page)),
    };
    // Where each overlay's entries start.
    let mut starts = Vec::with_capacity(overlays.len());
    for (i, pid) in pages.iter().enumerate() {
        for _ in overlays.iter().filter(|&&s| s == i) {
            starts.push(groups.len());
        }
        let (object, plain) = read.plain(meta, i)?;
        if plain.first() == Some(&b'F') {
            return Err(OpsError::Invalid(format!(
                "tree {pid} of table {table} is not a group page"
            )));
        }
        // The page's groups go straight into the window's list. Where it
        // has no room yet (the first window), it is made for as many
        // groups a page as this one declares (capped, as the pages are
        // not trusted), instead of growing a list of a few hundred
        // thousand entries by copies into fresh memory.
        let empty = groups.capacity() == 0;
        let room = |count: usize| {
            if empty {
                count.saturating_mul(pages.len()).min(1 << 20)
            } else {
                0
            }
        };
        let pt = tree::decode_groups_into(&plain, groups, room, |g| (*pid, g))
            .map_err(|why| crate::repo::RepoError::malformed(&object, why))?;
        if pt != table {
            return Err(OpsError::Invalid(format!(
                "tree {pid} belongs to table {pt}, not {table}"
            )));
        }
    }
    tree::apply_overlays(groups, &starts, |(_, g)| g, |_| ())
        .map_err(|why| {
        OpsError::Invalid(format!(
            "snapshot {snapshot}, table {table}: a read window's overlays do not apply: {why} (damaged or hostile snapshot)"
        ))
    })?;
    Ok(Ok(()))
}

async fn restore_sqlite(
    snap: &Snapshot,
    src: Source,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
    report: &mut RestoreReport,
) -> Result<(), OpsError> {
    let Source {
        resources,
        target,
        index: mut locator,
        vault,
        ..
    } = src;
    let sq = snap.sqlite.as_ref().unwrap();
    // The selection is checked before the new file is made.
    let only = &opts.only;
    let names: Vec<&str> = sq.tables.iter().map(|t| t.name.as_str()).collect();
    let filter = selection(&snap.id, &names, only, &vault, report).await?;
    // A table selection keeps `sqlite_sequence`, so that an AUTOINCREMENT
    // table goes on from its counter (a subject's rows keep none: the
    // counters are not the customer's).
    let selected =
        |name: &str| only.takes(name) || (only.subject.is_none() && name == "sqlite_sequence");
    let buffers = WriterBuffers {
        sort_run_bytes: resources.sort_run_bytes(),
        cache_kib: resources.restore_cache_kib(),
    };
    let restorer = SqliteRestorer::create_with(&opts.to, &sq.schema, opts.force, buffers)?;
    // The writer gets (table position in the snapshot, encoded rows in
    // pieces, each a run of whole rows). A message is a whole read window
    // (tens of MiB): handed over, never queued, so one window is being
    // written while the next is read.
    let (tx, rx) = sync_channel::<(usize, Vec<Vec<u8>>)>(0);
    let names: Vec<String> = sq.tables.iter().map(|t| t.name.clone()).collect();
    let writer = std::thread::Builder::new()
        .name("custos-restore-writer".into())
        .spawn(move || -> Result<(SqliteRestorer, Vec<u64>), OpsError> {
            let mut r = restorer;
            let mut counts = vec![0u64; names.len()];
            for (t, pieces) in rx {
                let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                counts[t] += r.insert_pieces(&names[t], &pieces)?;
            }
            Ok((r, counts))
        })
        .map_err(|e| OpsError::Internal(format!("spawning the writer: {e}")))?;
    let mut cache = pack_cache(&target, &resources);
    let total = sq
        .tables
        .iter()
        .filter(|t| selected(&t.name))
        .fold(0u64, |n, t| n.saturating_add(t.rows));
    // Of a subject's rows, how many there are is known only as the pages
    // are read: the progress shows the selected tables' rows then.
    progress.phase("restoring rows", Some(total), "rows");
    let mut fetch_err = None;
    let mut reader = WindowReader::new(matches!(filter, GroupFilter::Subject(_)), &resources);
    let mut lists = WindowLists::default();
    'tables: for (ti, t) in sq.tables.iter().enumerate() {
        if !selected(&t.name) {
            continue;
        }
        let mut tr = TableRestore {
            name: t.name.clone(),
            rows_expected: match filter {
                GroupFilter::All => t.rows,
                GroupFilter::Subject(_) => 0,
            },
            ..Default::default()
        };
        // The lists are kept from window to window of a table, not from
        // table to table: a table's windows hold about as many groups
        // each, and a list sized for another table's would stay that size.
        lists = WindowLists::default();
        for w in window_batches(t) {
            // The window's index and groups, with the tree page naming each.
            let pages = (&t.pages[w.range.clone()], &w.overlays[..], w.packs);
            let at = (snap.id.as_str(), t.name.as_str());
            let opened = locator
                .open(
                    &mut cache,
                    &vault,
                    at,
                    pages,
                    &filter,
                    std::mem::take(&mut lists),
                )
                .await;
            let window = match opened {
                Ok(w) => w,
                Err(e) => {
                    fetch_err = Some(e);
                    break 'tables;
                }
            };
            if let GroupFilter::Subject(_) = filter {
                tr.rows_expected = window
                    .1
                    .iter()
                    .fold(tr.rows_expected, |n, (_, g)| n.saturating_add(g.rows));
            }
            let place = Place {
                snapshot: &snap.id,
                target: &target.name,
                table: &t.name,
            };
            let rows = match reader
                .read(
                    &window,
                    &mut cache,
                    place,
                    &vault,
                    &mut tr,
                    progress.as_ref(),
                )
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    fetch_err = Some(e);
                    break 'tables;
                }
            };
            lists = WindowLists::of(window);
            report.bytes += rows.iter().map(|p| p.len() as u64).sum::<u64>();
            if !rows.is_empty() && tx.send((ti, rows)).is_err() {
                break 'tables; // the writer failed; its error follows
            }
        }
        report.rows_shredded = report.rows_shredded.saturating_add(tr.rows_shredded);
        report.tables.push(tr);
    }
    drop(tx);
    progress.finish_phase();
    let written = writer
        .join()
        .map_err(|_| OpsError::Internal("the restore writer panicked".into()))?;
    if let Some(e) = fetch_err {
        // The restorer is dropped unfinished: its temporary file goes away.
        return Err(e);
    }
    let (restorer, counts) = written?;
    for (name, rows) in restorer.written_by_pages() {
        if let Some(tr) = report.tables.iter_mut().find(|t| t.name == name) {
            tr.rows_by_pages = rows;
        }
    }
    for tr in report.tables.iter_mut() {
        tr.rows_restored = sq
            .tables
            .iter()
            .position(|t| t.name == tr.name)
            .map_or(0, |i| counts[i]);
        if tr.rows_restored.saturating_add(tr.rows_shredded) != tr.rows_expected {
            return Err(OpsError::Integrity(format!(
                "table {}: restored {} rows + {} shredded, but the snapshot recorded {}",
                tr.name, tr.rows_restored, tr.rows_shredded, tr.rows_expected
            )));
        }
    }
    report.bytes_fetched = cache.fetched;
    report.pack_reads = cache.reads;
    locator.report(report);
    // Every row is in: the chunk index, the keys and the cached packs are
    // freed before SQLite builds the indexes, its hungriest step.
    drop((reader, lists));
    drop((cache, locator, vault));
    progress.phase("building indexes", None, "");
    restorer.finish()?;
    progress.finish_phase();
    report.items = report.tables.iter().map(|t| t.rows_restored).sum();
    Ok(())
}

/// Names a window's rows in errors.
#[derive(Clone, Copy)]
struct Place<'a> {
    snapshot: &'a str,
    target: &'a str,
    table: &'a str,
}

/// Reads a read window's groups: with their keys and chunk locations
/// resolved beforehand ([`Located`], [`Parents`]), the packs of a part of the window fetched
/// (each verified against its name, as always), and then the part's chunks
/// opened on every core, each thread taking a contiguous run of groups so
/// the rows come out in the order of the groups.
struct WindowReader<'v> {
    codecs: Vec<Codec>,
    /// Packs a part of a window may need at once: the part's chunks are
    /// opened from these, held in memory together
    /// ([`ResourcesConfig::restore_packs`]).
    packs_at_once: usize,
    /// Fetch only the spans of packs that hold the groups read (a few
    /// groups of each pack: one customer's), not whole packs.
    sparse: bool,
    /// A part's groups and chunk locations, their room kept from part to
    /// part and window to window (a part of call records holds some
    /// 100 k groups).
    part: Vec<Pending<'v>>,
    locs: Vec<ChunkLoc>,
}

/// One group of a part: its keys (from the vault) and where its chunks are.
struct Pending<'v> {
    group: usize,
    subject: Option<&'v KeyBytes>,
    time: &'v KeyBytes,
    locs: std::ops::Range<usize>,
}

impl<'v> WindowReader<'v> {
    fn new(sparse: bool, resources: &ResourcesConfig) -> Self {
        WindowReader {
            codecs: (0..resources.threads().clamp(1, 16))
                .map(|_| Codec::new(3))
                .collect(),
            packs_at_once: resources.restore_packs(),
            sparse,
            part: Vec::new(),
            locs: Vec::new(),
        }
    }

    /// The window's rows, group after group, in pieces of whole rows (one
    /// per opening thread and part, not copied together); shredded groups
    /// are counted in `tr` and skipped.
    async fn read(
        &mut self,
        (index, groups, located): &OpenWindow,
        cache: &mut PackCache,
        place: Place<'_>,
        vault: &'v Vault,
        tr: &mut TableRestore,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<u8>>, OpsError> {
        let sparse = self.sparse;
        let mut out = Vec::new();
        let mut next = 0;
        // Where the next group's chunks are in `located.locs`.
        let mut at = 0;
        let mut parents = Parents {
            from: 0,
            keys: Vec::with_capacity(PARENTS_BATCH),
        };
        let mut part = std::mem::take(&mut self.part);
        let mut locs = std::mem::take(&mut self.locs);
        while next < groups.len() {
            // A part: as many groups as fit in `packs_at_once` packs.
            part.clear();
            locs.clear();
            let mut packs: Vec<u32> = Vec::new();
            let mut rows = 0u64;
            while next < groups.len() {
                let (_, g) = &groups[next];
                let (subject, time) = match parents.of(vault, groups, next) {
                    Ok(keys) => keys,
                    Err(GroupKeyProblem::Missing { key, subject }) => {
                        return Err(OpsError::Integrity(format!(
                            "{}: table {} group {}: {}",
                            place.snapshot,
                            place.table,
                            hex::encode(g.g),
                            missing_key_message(&key, subject)
                        )));
                    }
                    Err(_) => {
                        tr.rows_shredded = tr.rows_shredded.saturating_add(g.rows);
                        tr.groups_shredded += 1;
                        rows = rows.saturating_add(g.rows);
                        next += 1;
                        at += g.chunks.len();
                        continue;
                    }
                };
                let start = locs.len();
                let mut added = 0;
                let found = &located.locs[at..at + g.chunks.len()];
                for (id, loc) in g.chunks.iter().zip(found) {
                    let loc = loc.ok_or_else(|| {
                        OpsError::Integrity(format!(
                            "{}: table {} group {}: chunk {id} is in no index (repository damaged; run `custos check`)",
                            place.snapshot,
                            place.table,
                            hex::encode(g.g)
                        ))
                    })?;
                    if !packs.contains(&loc.pack)
                        && !locs[start..].iter().any(|l| l.pack == loc.pack)
                    {
                        added += 1;
                    }
                    locs.push(loc);
                }
                if !part.is_empty() && packs.len() + added > self.packs_at_once {
                    locs.truncate(start);
                    break;
                }
                for l in &locs[start..] {
                    if !packs.contains(&l.pack) {
                        packs.push(l.pack);
                    }
                }
                part.push(Pending {
                    group: next,
                    subject,
                    time,
                    locs: start..locs.len(),
                });
                rows = rows.saturating_add(g.rows);
                next += 1;
                at += g.chunks.len();
            }
            // The part's packs, verified, held while its chunks are opened;
            // for a few groups of each pack (`sparse`), the span of the
            // pack that holds them (each chunk is authenticated as it is
            // opened), with the offset it starts at.
            let mut fetched: Vec<(u32, Bytes, u64)> = Vec::with_capacity(packs.len());
            for p in &packs {
                let (pid, size) = index.packs[*p as usize];
                let got = if sparse {
                    let in_pack = locs.iter().filter(|l| l.pack == *p);
                    let start = in_pack.clone().map(|l| u64::from(l.offset)).min();
                    let end = in_pack
                        .map(|l| u64::from(l.offset) + u64::from(l.len))
                        .max();
                    cache
                        .span(pid, size, start.unwrap_or(0)..end.unwrap_or(0))
                        .await
                } else {
                    cache.pack(pid, size).await.map(|b| (b, 0))
                };
                let (bytes, base) = got.map_err(|e| OpsError::Integrity(e.to_string()))?;
                fetched.push((*p, bytes, base));
            }
            let object = |pack: u32| cache.object_name(&index.packs[pack as usize].0);
            let pieces = open_parts(
                &mut self.codecs,
                &part,
                groups,
                &locs,
                &fetched,
                place,
                &object,
            );
            for piece in pieces {
                let piece = piece?;
                if !piece.is_empty() {
                    out.push(piece);
                }
            }
            progress.advance(rows);
        }
        part.clear();
        locs.clear();
        (self.part, self.locs) = (part, locs);
        Ok(out)
    }
}

/// Groups whose keys, nonces and chunk ids a restore thread computes side
/// by side.
const KEYS_AT_ONCE: usize = crate::crypto::lanes::BATCH;

/// Opens the chunks of a part on one thread per codec, each taking a
/// contiguous run of groups of about the same number of chunks; returns the
/// runs' bytes in order (or the error of each run).
fn open_parts(
    codecs: &mut [Codec],
    part: &[Pending<'_>],
    groups: &[(Id, GroupEntry)],
    locs: &[ChunkLoc],
    packs: &[(u32, Bytes, u64)],
    place: Place<'_>,
    object: &(dyn Fn(u32) -> String + Sync),
) -> Vec<Result<Vec<u8>, OpsError>> {
    let threads = codecs.len().min(part.len().div_ceil(64)).max(1);
    let per = locs.len().div_ceil(threads).max(1);
    let mut runs = Vec::with_capacity(threads);
    let mut from = 0;
    for _ in 0..threads {
        let mut to = from;
        let mut n = 0;
        while to < part.len() && (n < per || runs.len() + 1 == threads) {
            n += part[to].locs.len();
            to += 1;
        }
        runs.push(from..to);
        from = to;
    }
    let open_run = |codec: &mut Codec, run: std::ops::Range<usize>| -> Result<Vec<u8>, OpsError> {
        // Sized from the index's plain lengths, so it is not copied while
        // it grows (a piece can be tens of MiB); capped, as a hostile
        // index could declare anything.
        let size: u64 = part[run.clone()]
            .iter()
            .flat_map(|p| &locs[p.locs.clone()])
            .map(|l| l.raw_len.min(MAX_RAW_CHUNK) as u64)
            .sum();
        let mut out = Vec::with_capacity(size.min(256 << 20) as usize);
        let (mut body, mut opened) = (Vec::new(), Vec::new());
        // A run of groups at a time: their keys, nonces and chunk ids are
        // computed side by side.
        for groups_run in part[run].chunks(KEYS_AT_ONCE) {
            let keys = keys_from_parents_many(
                groups_run.iter().map(|p| Ok((p.subject, p.time))).collect(),
                groups_run.iter().map(|p| &groups[p.group].1),
                place.table,
            );
            let mut chunks: Vec<ToOpen<'_>> = Vec::new();
            let mut names: Vec<u32> = Vec::new();
            for (p, keys) in groups_run.iter().zip(&keys) {
                let (pid, g) = &groups[p.group];
                let Ok(keys) = keys else {
                    return Err(OpsError::Integrity(format!(
                        "{}: tree page {pid}: group {} does not match the keys it names (damaged or hostile manifest)",
                        place.target,
                        hex::encode(g.g)
                    )));
                };
                for (id, loc) in g.chunks.iter().zip(&locs[p.locs.clone()]) {
                    let (_, pack, base) = packs
                        .iter()
                        .find(|(n, _, _)| *n == loc.pack)
                        .expect("the part's packs were fetched");
                    let (s, e) = (loc.offset as usize, loc.offset as usize + loc.len as usize);
                    let base = *base as usize;
                    let Some(sealed) = s.checked_sub(base).and_then(|s| pack.get(s..e - base))
                    else {
                        return Err(OpsError::Integrity(format!(
                            "{}: size {} differs from the indexed {e} (truncated or replaced)",
                            object(loc.pack),
                            base + pack.len()
                        )));
                    };
                    chunks.push((keys, id, sealed, loc.raw_len));
                    names.push(loc.pack);
                }
            }
            open_chunks_into(codec, &chunks, &mut body, &mut out, &mut opened);
            for ((_, id, _, _), (r, pack)) in chunks.iter().zip(opened.iter().zip(&names)) {
                if let Err(e) = r {
                    return Err(OpsError::Integrity(format!(
                        "{}: chunk {id}: {e}",
                        object(*pack)
                    )));
                }
            }
        }
        Ok(out)
    };
    if runs.len() == 1 {
        return vec![open_run(&mut codecs[0], runs.pop().unwrap())];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = codecs
            .iter_mut()
            .zip(runs)
            .map(|(codec, run)| scope.spawn(|| open_run(codec, run)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(OpsError::Internal("a restore thread panicked".into())))
            })
            .collect()
    })
}

async fn restore_files(
    snap: &Snapshot,
    src: Source,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
    report: &mut RestoreReport,
) -> Result<(), OpsError> {
    let Source {
        resources,
        target,
        index: mut locator,
        vault,
        meta,
    } = src;
    let fs = snap.files.as_ref().unwrap();
    // File snapshots list no packs: the whole index.
    let index = locator.whole().await?;
    locator.report(report);
    let Some(key) = vault.key(&fs.key) else {
        if !vault.destroyed(&fs.key) {
            return Err(OpsError::Integrity(format!(
                "snapshot {}: unit {}: {}",
                snap.id,
                fs.unit,
                missing_key_message(&fs.key, false)
            )));
        }
        return Err(OpsError::Invalid(format!(
            "snapshot {}: the key of unit {} was destroyed; its files cannot be restored",
            snap.id, fs.unit
        )));
    };
    let keys = ChunkKeys::new(group_key(None, key, "files"));
    let mut r = FilesRestorer::create(&opts.to, opts.force)?;
    let mut cache = pack_cache(&target, &resources);
    let mut codec = Codec::new(3);
    progress.phase("restoring files", Some(fs.bytes), "bytes");
    for pid in &fs.pages {
        let Page::Files { files, .. } = Page::load(&mut cache, &index, &meta, pid).await? else {
            return Err(OpsError::Invalid(format!("tree {pid} is not a file page")));
        };
        for f in &files {
            match f.entry.kind {
                FileKind::Dir => r.dir(&f.entry)?,
                FileKind::Symlink => r.symlink(&f.entry)?,
                FileKind::File => {
                    r.begin_file(&f.entry)?;
                    let object = || format!("{}: file {}", snap.id, f.entry.path);
                    for id in &f.chunks {
                        let data = read_group(
                            &mut codec,
                            &mut cache,
                            &index,
                            &keys,
                            std::slice::from_ref(id),
                            object,
                        )
                        .await?;
                        r.write(&data)?;
                        report.bytes += data.len() as u64;
                        progress.advance(data.len() as u64);
                    }
                    r.end_file()?;
                }
            }
            report.items += 1;
        }
    }
    r.finish()?;
    progress.finish_phase();
    report.bytes_fetched = cache.fetched;
    report.pack_reads = cache.reads;
    Ok(())
}

/// Rebuilds a PostgreSQL snapshot into an empty database (`--to
/// postgres://...`) or a plain SQL script (`--to FILE.sql`): schema, rows
/// table by table, then sequences, indexes, constraints and triggers.
async fn restore_postgres(
    policy: &Policy,
    snap: &Snapshot,
    src: Source,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
    report: &mut RestoreReport,
) -> Result<(), OpsError> {
    let pg = |e: PgError| OpsError::Invalid(format!("restore: {e}"));
    let Source {
        resources,
        target,
        index: mut locator,
        vault,
        ..
    } = src;
    let ps = snap.postgres.as_ref().unwrap();
    // The selection is checked before the database or file is touched.
    let only = &opts.only;
    let names: Vec<&str> = ps.tables.iter().map(|t| t.name.as_str()).collect();
    let filter = selection(&snap.id, &names, only, &vault, report).await?;
    // A part of the database may hold rows whose foreign keys point at
    // rows left out, so its foreign keys are not created (listed in the
    // report; the whole restore's schema has them).
    let schema = if only.is_all() {
        std::borrow::Cow::Borrowed(&ps.schema)
    } else {
        let mut schema = ps.schema.clone();
        let (post, left_out) = without_foreign_keys(&schema.post_data);
        schema.post_data = post;
        report.foreign_keys_left_out = left_out;
        std::borrow::Cow::Owned(schema)
    };
    let mut out = match PgRestoreTo::parse(&opts.to) {
        PgRestoreTo::Database(url) => {
            report.to = redact_url(&url);
            let source = PgConn::from_store(&policy.store).ok();
            let conn = restore_conn(&url, source.as_ref()).map_err(pg)?;
            PgOutput::Database(Box::new(
                PgRestorer::create(conn, &schema, opts.force)
                    .await
                    .map_err(pg)?,
            ))
        }
        PgRestoreTo::Script(path) => PgOutput::Script(Box::new(
            SqlScript::create(&path, &schema, opts.force).map_err(pg)?,
        )),
    };
    let mut cache = pack_cache(&target, &resources);
    let mut codec = Codec::new(3);
    let total = ps
        .tables
        .iter()
        .filter(|t| only.takes(&t.name))
        .fold(0u64, |n, t| n.saturating_add(t.rows));
    progress.phase("restoring rows", Some(total), "rows");
    for t in ps.tables.iter().filter(|t| only.takes(&t.name)) {
        let table = ps
            .schema
            .tables
            .iter()
            .find(|s| s.display_name() == t.name)
            .ok_or_else(|| {
                OpsError::Integrity(format!(
                    "snapshot {}: table {} has rows but no columns in the schema (damaged snapshot)",
                    snap.id, t.name
                ))
            })?;
        out.begin_table(table).await.map_err(pg)?;
        let mut tr = TableRestore {
            name: t.name.clone(),
            rows_expected: match filter {
                GroupFilter::All => t.rows,
                GroupFilter::Subject(_) => 0,
            },
            ..Default::default()
        };
        // As in `restore_sqlite`: kept within a table.
        let mut lists = WindowLists::default();
        for w in window_batches(t) {
            let pages = (&t.pages[w.range.clone()], &w.overlays[..], w.packs);
            let at = (snap.id.as_str(), t.name.as_str());
            let window = locator
                .open(&mut cache, &vault, at, pages, &filter, lists)
                .await?;
            let (index, groups, _) = &window;
            if let GroupFilter::Subject(_) = filter {
                tr.rows_expected = groups
                    .iter()
                    .fold(tr.rows_expected, |n, (_, g)| n.saturating_add(g.rows));
            }
            for (pid, g) in groups {
                let keys = match group_keys(&vault, g, &t.name) {
                    Ok(k) => k,
                    Err(GroupKeyProblem::Shredded) => {
                        tr.rows_shredded = tr.rows_shredded.saturating_add(g.rows);
                        tr.groups_shredded += 1;
                        progress.advance(g.rows);
                        continue;
                    }
                    Err(GroupKeyProblem::Missing { key, subject }) => {
                        return Err(OpsError::Integrity(format!(
                            "{}: tree page {pid}: group {}: {}",
                            target.name,
                            hex::encode(g.g),
                            missing_key_message(&key, subject)
                        )));
                    }
                    Err(GroupKeyProblem::Mismatch) => {
                        return Err(OpsError::Integrity(format!(
                            "{}: tree page {pid}: group {} does not match the keys it names (damaged or hostile manifest)",
                            target.name,
                            hex::encode(g.g)
                        )));
                    }
                };
                let object = || format!("{}: table {} group {}", snap.id, t.name, hex::encode(g.g));
                let bytes =
                    read_group(&mut codec, &mut cache, index, &keys, &g.chunks, object).await?;
                report.bytes += bytes.len() as u64;
                tr.rows_restored += out.insert_rows(&bytes).await.map_err(pg)?;
                progress.advance(g.rows);
            }
            lists = WindowLists::of(window);
        }
        if tr.rows_restored.saturating_add(tr.rows_shredded) != tr.rows_expected {
            return Err(OpsError::Integrity(format!(
                "table {}: restored {} rows + {} shredded, but the snapshot recorded {}",
                tr.name, tr.rows_restored, tr.rows_shredded, tr.rows_expected
            )));
        }
        report.rows_shredded = report.rows_shredded.saturating_add(tr.rows_shredded);
        report.tables.push(tr);
    }
    progress.finish_phase();
    progress.phase("building indexes, constraints and triggers", None, "");
    out.finish().await.map_err(pg)?;
    progress.finish_phase();
    report.items = report.tables.iter().map(|t| t.rows_restored).sum();
    report.bytes_fetched = cache.fetched;
    report.pack_reads = cache.reads;
    locator.report(report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `pages` pages whose windows count `counts` pages.
    fn table(pages: usize, counts: &[u64]) -> TableEntry {
        let window = |n: u64| {
            serde_json::json!({"digest": "", "rows": 0, "bytes": 0, "groups": 0,
                "checksum": "", "pages": n})
        };
        serde_json::from_value(serde_json::json!({
            "name": "t", "class": "c", "rows": 0, "bytes": 0, "checksum": "", "groups": 0,
            "pages": (0..pages).map(|i| Id([i as u8; 32])).collect::<Vec<_>>(),
            "windows": counts.iter().map(|&n| window(n)).collect::<Vec<_>>(),
        }))
        .expect("a table entry")
    }

    #[test]
    fn foreign_keys_are_cut_out_of_the_post_data_section() {
        let post = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET lock_timeout = 0;\n\n\
            --\n-- Name: cdrs cdrs_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres\n--\n\n\
            ALTER TABLE ONLY public.cdrs\n    ADD CONSTRAINT cdrs_pkey PRIMARY KEY (id);\n\n\n\
            --\n-- Name: cdrs cdrs_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres\n--\n\n\
            ALTER TABLE ONLY public.cdrs\n    ADD CONSTRAINT cdrs_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);\n\n\n\
            --\n-- Name: cdrs_started; Type: INDEX; Schema: public; Owner: postgres\n--\n\n\
            CREATE INDEX cdrs_started ON public.cdrs USING btree (started_at);\n\n\n\
            --\n-- Name: rates rates_plan_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: postgres\n--\n\n\
            ALTER TABLE ONLY billing.rates\n    ADD CONSTRAINT rates_plan_fkey FOREIGN KEY (plan) REFERENCES billing.plans(id);\n\n\n\
            --\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n";
        let (kept, left_out) = without_foreign_keys(post);
        assert_eq!(
            left_out,
            [
                "public.cdrs cdrs_customer_id_fkey",
                "billing.rates rates_plan_fkey"
            ]
        );
        assert!(
            !kept.contains("FOREIGN KEY") && !kept.contains("FK CONSTRAINT"),
            "{kept}"
        );
        for part in [
            "\\restrict abc",
            "SET lock_timeout",
            "PRIMARY KEY (id);",
            "CREATE INDEX cdrs_started",
            "dump complete",
            "\\unrestrict abc",
        ] {
            assert!(kept.contains(part), "{part} kept: {kept}");
        }
        // Without foreign keys, nothing changes.
        let (same, none) = without_foreign_keys(&kept);
        assert_eq!((same.as_str(), none.len()), (kept.as_str(), 0));
    }

    #[test]
    fn window_counts_that_wrap_do_not_pass_for_the_pages() {
        let ranges = |t: &TableEntry| -> Vec<(usize, usize)> {
            window_batches(t)
                .into_iter()
                .map(|w| (w.range.start, w.range.end))
                .collect()
        };
        assert_eq!(ranges(&table(3, &[2, 0, 1])), [(0, 2), (2, 3)]);
        // u64::MAX + 2 wraps to 1, the number of pages: the windows were
        // taken as they were, and the first range reached past the page.
        assert_eq!(ranges(&table(1, &[u64::MAX, 2])), [(0, 1)]);
        assert_eq!(ranges(&table(2, &[u64::MAX, 3])), [(0, 1), (1, 2)]);
    }
}
