//! Snapshots: `snapshots/<id>`, the root object of one snapshot.
//!
//! JSON, zstd-compressed, sealed under the metadata key (kind "snapshot",
//! name = snapshot id). Written last in a backup: a snapshot that is listed
//! refers only to stored objects.

use super::pack::pack_path;
use super::tree;
use super::{compress_meta, decompress_meta, RepoError};
use crate::crypto::{Id, MetaKey};
use crate::store::postgres::PgSchema;
use crate::store::sqlite::SqliteSchema;
use crate::target::Target;
use crate::vault::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub id: String,
    pub policy: String,
    /// RFC 3339 UTC time the store was read.
    pub time: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub custos_version: String,
    pub store: StoreInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSnapshot>,
    /// A PostgreSQL store's schema and tables (absent for other stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSnapshot>,
    pub stats: SnapshotStats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreInfo {
    /// `sqlite`, `postgres` or `files`.
    pub kind: String,
    /// The store's path as given in the policy.
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSnapshot {
    pub schema: SqliteSchema,
    pub tables: Vec<TableEntry>,
}

/// The content of a PostgreSQL snapshot: the schema (pg_dump sections,
/// columns, sequence values) and the tables' rows, as for SQLite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSnapshot {
    pub schema: PgSchema,
    pub tables: Vec<TableEntry>,
}

/// Serialized by hand: the pages of a window that names page lists are
/// left out of the object (FORMAT 3.5); loading puts them back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    pub name: String,
    pub class: String,
    pub rows: u64,
    /// Bytes of canonical row encoding.
    pub bytes: u64,
    /// Order-independent keyed checksum of the rows (hex, 16 bytes): the
    /// wrapping sum of `keyed_hash("row", encoded row)[..16]` as u128 LE.
    pub checksum: String,
    pub groups: u64,
    /// Every tree page of the table, the windows' in order. Complete in a
    /// loaded snapshot, whether the object lists them or names page lists.
    pub pages: Vec<Id>,
    /// The table's read windows in order (FORMAT 3.3a), so the next backup
    /// can reuse the pages of a window whose content did not change. Empty
    /// in snapshots written before windows were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowMark>,
}

/// One read window of a table: what a later backup needs to recognise the
/// same content and reuse the window's tree pages whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowMark {
    /// Keyed digest (hex, 32 bytes; metadata key, domain `window`) of the
    /// window's rows in read order with their group coordinates, the
    /// table, its class and the class epoch label.
    pub digest: String,
    pub rows: u64,
    pub bytes: u64,
    /// Group runs written for the window.
    pub groups: u64,
    /// The window's share of the table checksum (hex, u128 LE).
    pub checksum: String,
    /// How many consecutive ids of the table's `pages` hold its groups.
    pub pages: u64,
    /// Rowid table: the window holds the table's rows with rowid in
    /// `[from, to)` (absent: unbounded). Absent for WITHOUT ROWID tables
    /// and in snapshots written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Keyed digest (hex; metadata key, domain `stretch-v1`) of the b-tree
    /// leaves holding rowids `[from, to)` when the window was read
    /// (FORMAT 4, "Unread stretches"): a later backup whose leaves give the
    /// same digest reuses the window without reading its rows. Absent when
    /// the pages could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stretch: Option<String>,
    /// The packs holding the window's tree pages and every chunk they name
    /// (FORMAT 3.5), so a restore reads the index objects of these packs
    /// alone instead of the whole index. Absent in snapshots written before
    /// it existed; a reader then uses the whole index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<Vec<Id>>,
    /// Where the window's page ids are stored, in order, as list pages
    /// (FORMAT 3.4: the window's pages cut at content-defined boundaries,
    /// so a change rewrites the part around it), instead of in the
    /// snapshot object. Empty in snapshots written before they existed,
    /// and for a window of no pages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<PageList>,
    /// The window's **overlays** (FORMAT 3.4, "Overlay pages"), oldest
    /// first: how many pages each holds, of the window's last pages. The
    /// pages before them are the base. An entry of an overlay stands
    /// instead of the entry of the same group on the pages before it, and
    /// one of no rows and no chunks says the group's rows are gone. Empty
    /// (and absent) when the window's pages hold its groups as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<u64>,
}

/// The most overlays a reader accepts on one read window (a writer keeps
/// far fewer, see `backup`).
pub const MAX_OVERLAYS: usize = 256;

impl WindowMark {
    /// Where each overlay of the window starts, as a position among its
    /// pages, oldest first (none when it has none); `None` if they do not
    /// fit in its pages.
    pub fn overlay_starts(&self) -> Option<Vec<usize>> {
        let mut at = self.pages;
        let mut starts = Vec::with_capacity(self.overlays.len());
        for &n in self.overlays.iter().rev() {
            if n == 0 {
                return None;
            }
            at = at.checked_sub(n)?;
            starts.push(at as usize);
        }
        starts.reverse();
        Some(starts)
    }
}

/// A list page's place: its tree id and where its sealed bytes lie, so a
/// snapshot is read without the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageList {
    pub id: Id,
    pub pack: Id,
    pub offset: u32,
    pub len: u32,
}

/// The largest sealed list page a reader accepts (2^21 page ids).
pub const MAX_LIST_BYTES: u32 = 64 << 20;

#[cfg(test)]
impl TableEntry {
    /// A table `t` of `pages` made-up page ids and these windows, for
    /// tests of how pages are cut into windows.
    pub(crate) fn of_pages(pages: usize, windows: Vec<WindowMark>) -> Self {
        TableEntry {
            name: "t".into(),
            class: "c".into(),
            rows: 1,
            bytes: 1,
            checksum: String::new(),
            groups: 1,
            pages: (0..pages).map(|i| Id([i as u8; 32])).collect(),
            windows,
        }
    }
}

/// One read window's pages ([`TableEntry::page_windows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageWindow {
    /// Its pages: a range of the table's `pages`.
    pub range: std::ops::Range<usize>,
    /// Where each of its overlays starts among them, oldest first.
    pub overlays: Vec<usize>,
    /// Its mark in the table's `windows`, if the marks count the pages.
    pub mark: Option<usize>,
}

impl TableEntry {
    /// The table's pages by read window, windows of no pages left out. A
    /// table whose window marks do not count its pages (or that has none)
    /// gives one page a window, no overlays: [`Snapshot::load`] refuses
    /// such a table if it has overlays.
    pub fn page_windows(&self) -> Vec<PageWindow> {
        // Counts read from the snapshot may be anything: a sum that wraps
        // must not pass for the number of pages (the ranges below would
        // then reach past them).
        let marked = self
            .windows
            .iter()
            .try_fold(0u64, |n, w| n.checked_add(w.pages));
        if self.windows.is_empty() || marked != Some(self.pages.len() as u64) {
            return (0..self.pages.len())
                .map(|i| PageWindow {
                    range: i..i + 1,
                    overlays: Vec::new(),
                    mark: None,
                })
                .collect();
        }
        let mut at = 0usize;
        self.windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w.pages > 0)
            .map(|(i, w)| {
                let range = at..at + w.pages as usize;
                at = range.end;
                PageWindow {
                    range,
                    overlays: w.overlay_starts().unwrap_or_default(),
                    mark: Some(i),
                }
            })
            .collect()
    }
}

impl TableEntry {
    /// The page ids the snapshot object itself lists: those of the windows
    /// that name no page list (all of them in older snapshots).
    fn stored_pages(&self) -> impl Iterator<Item = &Id> + '_ {
        let mut at = 0usize;
        let listed = self.windows.iter().any(|w| !w.lists.is_empty());
        let mut spans = Vec::new();
        if listed {
            for w in &self.windows {
                let n = w.pages as usize;
                if w.lists.is_empty() {
                    spans.push(at..at + n);
                }
                at += n;
            }
            debug_assert_eq!(at, self.pages.len(), "the windows' pages add up");
        } else {
            spans.push(0..self.pages.len());
        }
        spans
            .into_iter()
            .flat_map(move |r| self.pages.get(r).unwrap_or(&[]).iter())
    }
}

impl Serialize for TableEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Stored<'a>(&'a TableEntry);
        impl Serialize for Stored<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.stored_pages())
            }
        }
        let mut st = s.serialize_struct("TableEntry", 8)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("class", &self.class)?;
        st.serialize_field("rows", &self.rows)?;
        st.serialize_field("bytes", &self.bytes)?;
        st.serialize_field("checksum", &self.checksum)?;
        st.serialize_field("groups", &self.groups)?;
        st.serialize_field("pages", &Stored(self))?;
        if self.windows.is_empty() {
            st.skip_field("windows")?;
        } else {
            st.serialize_field("windows", &self.windows)?;
        }
        st.end()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSnapshot {
    pub class: String,
    /// The class-epoch key all file contents of this snapshot are under.
    pub key: KeyId,
    pub unit: String,
    pub files: u64,
    pub bytes: u64,
    pub pages: Vec<Id>,
    #[serde(default)]
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotStats {
    pub items: u64,
    pub bytes_read: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes_stored: u64,
    pub packs_written: u64,
    pub duration_ms: u64,
}

/// Lists this close together in one pack are read with one request.
const LIST_GAP: u64 = 256 << 10;
/// The most bytes one request for lists reads.
const LIST_RUN: u64 = 32 << 20;

pub fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}")
}

impl Snapshot {
    /// The tables of a record-mode snapshot (SQLite or PostgreSQL); empty
    /// for file mode. Everything that walks a snapshot's table pages
    /// (prune, check, shredding proofs) goes through this, so no kind of
    /// record store is forgotten.
    pub fn record_tables(&self) -> &[TableEntry] {
        if let Some(sq) = &self.sqlite {
            &sq.tables
        } else if let Some(pg) = &self.postgres {
            &pg.tables
        } else {
            &[]
        }
    }

    /// As [`record_tables`](Self::record_tables), to change them (a backup
    /// takes its parent's page lists instead of copying them).
    pub fn record_tables_mut(&mut self) -> &mut [TableEntry] {
        if let Some(sq) = &mut self.sqlite {
            &mut sq.tables
        } else if let Some(pg) = &mut self.postgres {
            &mut pg.tables
        } else {
            &mut []
        }
    }

    pub fn new_id() -> String {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Writes the snapshot object; returns its size in bytes. Refuses, and
    /// writes nothing, if a table names page lists and its windows' page
    /// counts do not add up to its pages: the object would lose pages.
    pub async fn store(&self, target: &Target, meta: &MetaKey) -> Result<u64, RepoError> {
        for t in self.record_tables() {
            if t.windows.iter().all(|w| w.lists.is_empty()) {
                continue;
            }
            let n = t
                .windows
                .iter()
                .fold(0u64, |n, w| n.saturating_add(w.pages));
            if n != t.pages.len() as u64 {
                return Err(RepoError::malformed(
                    format!("{}:{}", target.name, snapshot_path(&self.id)),
                    format!(
                        "not written: table `{}`'s read windows count {n} pages, it holds {}",
                        t.name,
                        t.pages.len()
                    ),
                ));
            }
        }
        let json = serde_json::to_vec(self).expect("snapshot serializes");
        let sealed = meta.seal("snapshot", &self.id, &compress_meta(&json));
        let bytes = sealed.len() as u64;
        target.put(&snapshot_path(&self.id), sealed.into()).await?;
        Ok(bytes)
    }

    /// Reads snapshot `id`, its windows' page lists included: every
    /// table's `pages` is complete.
    pub async fn load(target: &Target, meta: &MetaKey, id: &str) -> Result<Snapshot, RepoError> {
        let mut s: Snapshot = load_as(target, meta, id).await?;
        s.read_page_lists(target, meta).await?;
        s.check_overlays(&format!("{}:{}", target.name, snapshot_path(id)))?;
        Ok(s)
    }

    /// Refuses overlays (FORMAT 3.4) a reader could misplace: one of more
    /// pages than its window, or in a table whose windows' page counts do
    /// not add up to its pages (the windows could not be told apart).
    fn check_overlays(&self, object: &str) -> Result<(), RepoError> {
        for t in self.record_tables() {
            if t.windows.iter().all(|w| w.overlays.is_empty()) {
                continue;
            }
            if let Some((wi, w)) = t
                .windows
                .iter()
                .enumerate()
                .find(|(_, w)| w.overlays.len() > MAX_OVERLAYS || w.overlay_starts().is_none())
            {
                return Err(RepoError::malformed(
                    object,
                    format!(
                        "table `{}`: read window {wi} has {} overlays of {:?} pages and {} pages in all",
                        t.name,
                        w.overlays.len(),
                        &w.overlays[..w.overlays.len().min(8)],
                        w.pages
                    ),
                ));
            }
            let n = t
                .windows
                .iter()
                .try_fold(0u64, |n, w| n.checked_add(w.pages));
            if n != Some(t.pages.len() as u64) {
                return Err(RepoError::malformed(
                    object,
                    format!(
                        "table `{}`: its read windows have overlays and do not count its {} pages",
                        t.name,
                        t.pages.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The page lists the snapshot's windows name (FORMAT 3.4): blobs it
    /// needs beside its pages.
    pub fn page_lists(&self) -> impl Iterator<Item = &PageList> + '_ {
        self.record_tables()
            .iter()
            .flat_map(|t| t.windows.iter().flat_map(|w| w.lists.iter()))
    }

    /// Puts back the pages of every window that names page lists (FORMAT
    /// 3.5), read from their packs by place. Nearby lists in one pack are
    /// read with one request (a backup writes its lists together).
    async fn read_page_lists(&mut self, target: &Target, meta: &MetaKey) -> Result<(), RepoError> {
        let object = format!("{}:{}", target.name, snapshot_path(&self.id));
        let tables = self.record_tables_mut();
        // (table, window, part, list) of every list.
        let mut refs: Vec<(usize, usize, usize, PageList)> = Vec::new();
        for (ti, t) in tables.iter().enumerate() {
            if t.windows.iter().all(|w| w.lists.is_empty()) {
                continue;
            }
            let inline = t
                .windows
                .iter()
                .filter(|w| w.lists.is_empty())
                .fold(0u64, |n, w| n.saturating_add(w.pages));
            if inline != t.pages.len() as u64 {
                return Err(RepoError::malformed(
                    &object,
                    format!(
                        "table `{}`: its windows without page lists hold {inline} pages, the snapshot lists {}",
                        t.name,
                        t.pages.len()
                    ),
                ));
            }
            for (wi, w) in t.windows.iter().enumerate() {
                for (k, l) in w.lists.iter().enumerate() {
                    if l.len > MAX_LIST_BYTES {
                        return Err(RepoError::malformed(
                            &object,
                            format!(
                                "table `{}`: page list {} of {} bytes is absurd",
                                t.name, l.id, l.len
                            ),
                        ));
                    }
                    refs.push((ti, wi, k, *l));
                }
            }
        }
        if refs.is_empty() {
            return Ok(());
        }
        refs.sort_by_key(|(.., l)| (l.pack, l.offset));
        let mut got: HashMap<(usize, usize, usize), Vec<Id>> = HashMap::with_capacity(refs.len());
        let mut i = 0;
        while i < refs.len() {
            let pack = refs[i].3.pack;
            let start = u64::from(refs[i].3.offset);
            let mut end = start + u64::from(refs[i].3.len);
            let mut j = i + 1;
            while let Some((.., l)) = refs.get(j) {
                let (at, to) = (u64::from(l.offset), u64::from(l.offset) + u64::from(l.len));
                if l.pack != pack || at > end + LIST_GAP || to.max(end) - start > LIST_RUN {
                    break;
                }
                end = end.max(to);
                j += 1;
            }
            // Named as `target:path`, as every damaged object is.
            let path = format!("{}:{}", target.name, pack_path(&pack));
            let bytes = target
                .get_range(&pack_path(&pack), start..end)
                .await
                .map_err(|e| {
                    RepoError::malformed(
                        &object,
                        format!(
                            "its page list {} in {path} cannot be read: {e}",
                            refs[i].3.id
                        ),
                    )
                })?;
            if (bytes.len() as u64) < end - start {
                return Err(RepoError::malformed(
                    &object,
                    format!("its page list {} lies past the end of {path}", refs[i].3.id),
                ));
            }
            for &(ti, wi, k, l) in &refs[i..j] {
                let at = (u64::from(l.offset) - start) as usize;
                let sealed = &bytes[at..at + l.len as usize];
                let name = format!(
                    "{object}: page list {} of table `{}` in {path}",
                    l.id, tables[ti].name
                );
                got.insert((ti, wi, k), tree::open_list(&name, &l.id, meta, sealed)?);
            }
            i = j;
        }
        // Each window's parts hold its pages, no more, no fewer.
        let mut listed = vec![0usize; tables.len()];
        for (ti, t) in tables.iter().enumerate() {
            for (wi, w) in t.windows.iter().enumerate() {
                if w.lists.is_empty() {
                    continue;
                }
                let n: usize = (0..w.lists.len())
                    .map(|k| got.get(&(ti, wi, k)).map_or(0, Vec::len))
                    .sum();
                if n as u64 != w.pages {
                    return Err(RepoError::malformed(
                        &object,
                        format!(
                            "table `{}`: the page lists of read window {wi} hold {n} pages, its read window {}",
                            t.name, w.pages
                        ),
                    ));
                }
                listed[ti] += n;
            }
        }
        for (ti, t) in tables.iter_mut().enumerate() {
            if listed[ti] == 0 && t.windows.iter().all(|w| w.lists.is_empty()) {
                continue;
            }
            let mut pages = Vec::with_capacity(t.pages.len() + listed[ti]);
            let mut inline = std::mem::take(&mut t.pages).into_iter();
            for (wi, w) in t.windows.iter().enumerate() {
                if w.lists.is_empty() {
                    pages.extend(inline.by_ref().take(w.pages as usize));
                }
                for k in 0..w.lists.len() {
                    pages.extend(got.remove(&(ti, wi, k)).unwrap_or_default());
                }
            }
            t.pages = pages;
        }
        Ok(())
    }

    /// Every snapshot on a target, oldest first. Unreadable snapshot objects
    /// are returned as errors beside the good ones.
    pub async fn list(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<Snapshot>, Vec<RepoError>), RepoError> {
        let (good, bad) = Self::list_with_ids(target, meta).await?;
        Ok((good, bad.into_iter().map(|(_, e)| e).collect()))
    }

    /// Like [`list`](Self::list), with the id of each unreadable object.
    pub async fn list_with_ids(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<Snapshot>, Vec<(String, RepoError)>), RepoError> {
        let (read, mut bad) = read_all::<Snapshot>(target, meta).await?;
        let mut good = Vec::with_capacity(read.len());
        for mut s in read {
            let object = format!("{}:{}", target.name, snapshot_path(&s.id));
            match s
                .read_page_lists(target, meta)
                .await
                .and_then(|()| s.check_overlays(&object))
            {
                Ok(()) => good.push(s),
                Err(e) => bad.push((s.id, e)),
            }
        }
        Ok((good, bad))
    }

    /// The head ([`SnapshotHead`]) of every snapshot on a target, oldest
    /// first, with the id of each unreadable object. Choosing among many
    /// snapshots reads these, then loads only the one chosen.
    pub async fn heads_with_ids(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<SnapshotHead>, Vec<(String, RepoError)>), RepoError> {
        read_all(target, meta).await
    }

    /// The [`SnapshotSummary`] of every snapshot on a target, oldest first,
    /// with the id of each unreadable object: what listings show.
    pub async fn summaries_with_ids(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<SnapshotSummary>, Vec<(String, RepoError)>), RepoError> {
        read_all(target, meta).await
    }

    /// Finds a snapshot on a target by `latest`, an id or a unique id prefix,
    /// refusing to guess when a snapshot object is unreadable: `latest`
    /// could silently be an older snapshot, and an id may name the damaged
    /// object itself (then its own error is returned).
    pub async fn find(target: &Target, meta: &MetaKey, which: &str) -> Result<Snapshot, RepoError> {
        let (good, mut bad) = Self::heads_with_ids(target, meta).await?;
        if which == "latest" {
            if !bad.is_empty() {
                let names: Vec<String> = bad.iter().map(|(_, e)| e.to_string()).collect();
                return Err(RepoError::malformed(
                    format!("{}:snapshots/", target.name),
                    format!(
                        "cannot tell which snapshot is the latest, {} snapshot object(s) are unreadable: {}; \
                         name a snapshot id (custos snapshots lists the readable ones)",
                        bad.len(),
                        names.join("; ")
                    ),
                ));
            }
        } else if let Some(pos) = bad.iter().position(|(id, _)| id.starts_with(which)) {
            if !good.iter().any(|s| s.id.starts_with(which)) {
                return Err(bad.swap_remove(pos).1);
            }
            return Err(RepoError::AmbiguousSnapshot(which.into()));
        }
        let id = &select_by(&good, which, |h| &h.id)?.id;
        Self::load(target, meta, id).await
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub fn select<'a>(list: &'a [Snapshot], which: &str) -> Result<&'a Snapshot, RepoError> {
        select_by(list, which, |s| &s.id)
    }
}

/// The fields of a snapshot object that say which snapshot it is, read
/// without decoding the rest: a snapshot at 1 GiB lists some 67 k tree
/// pages, and a target holds many snapshots.
#[derive(Clone, Debug, Deserialize)]
pub struct SnapshotHead {
    pub version: u32,
    pub id: String,
    pub policy: String,
    /// RFC 3339 UTC time the store was read.
    pub time: String,
}

/// What a listing of snapshots shows: the head, the store, the stats and
/// the tables' names, read without the page ids or the windows' page
/// lists (a listing does not vouch for them; `custos check` does).
#[derive(Clone, Debug, Deserialize)]
pub struct SnapshotSummary {
    #[serde(flatten)]
    pub head: SnapshotHead,
    #[serde(default)]
    pub parent: Option<String>,
    pub store: StoreInfo,
    pub stats: SnapshotStats,
    #[serde(default)]
    sqlite: Option<TableNames>,
    #[serde(default)]
    postgres: Option<TableNames>,
}

#[derive(Clone, Debug, Deserialize)]
struct TableNames {
    tables: Vec<TableName>,
}

#[derive(Clone, Debug, Deserialize)]
struct TableName {
    name: String,
}

impl SnapshotSummary {
    /// The names of a record-mode snapshot's tables; empty for file mode.
    pub fn table_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.sqlite
            .iter()
            .chain(self.postgres.iter())
            .flat_map(|t| t.tables.iter().map(|n| n.name.as_str()))
    }
}

impl Named for SnapshotSummary {
    fn named(&self) -> (u32, &str, &str) {
        self.head.named()
    }
}

/// What both a [`Snapshot`] and its [`SnapshotHead`] say of themselves:
/// (format version, id, time).
trait Named: serde::de::DeserializeOwned {
    fn named(&self) -> (u32, &str, &str);

    /// Why the decoded object cannot be what it says, if it cannot.
    fn refused(&self) -> Option<String> {
        None
    }
}

impl Named for Snapshot {
    fn named(&self) -> (u32, &str, &str) {
        (self.version, &self.id, &self.time)
    }

    /// A snapshot holds one store's contents (FORMAT 3.5), the kind its
    /// `store` names: a restore, a prune or a check reading another part
    /// than the one listed would silently use the wrong contents.
    fn refused(&self) -> Option<String> {
        let held: Vec<&str> = [
            ("sqlite", self.sqlite.is_some()),
            ("postgres", self.postgres.is_some()),
            ("files", self.files.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, held)| held.then_some(kind))
        .collect();
        match held[..] {
            [] => None,
            [kind] if kind == self.store.kind => None,
            [kind] => Some(format!(
                "store kind `{}` but it holds {kind} contents",
                self.store.kind
            )),
            _ => Some(format!(
                "it holds the contents of several stores ({})",
                held.join(", ")
            )),
        }
    }
}

impl Named for SnapshotHead {
    fn named(&self) -> (u32, &str, &str) {
        (self.version, &self.id, &self.time)
    }
}

/// Every snapshot object on a target read as `T`, oldest first, and the
/// id of each unreadable one with why.
async fn read_all<T: Named>(
    target: &Target,
    meta: &MetaKey,
) -> Result<(Vec<T>, Vec<(String, RepoError)>), RepoError> {
    let mut good: Vec<T> = Vec::new();
    let mut bad = Vec::new();
    for (path, _) in target.list("snapshots/").await? {
        let id = path.rsplit('/').next().unwrap_or("").to_string();
        match load_as(target, meta, &id).await {
            Ok(s) => good.push(s),
            Err(e) => bad.push((id, e)),
        }
    }
    good.sort_by(|a, b| {
        let ((_, ia, ta), (_, ib, tb)) = (a.named(), b.named());
        ta.cmp(tb).then(ia.cmp(ib))
    });
    Ok((good, bad))
}

/// Reads the snapshot object `id` as `T`.
async fn load_as<T: Named>(target: &Target, meta: &MetaKey, id: &str) -> Result<T, RepoError> {
    let path = snapshot_path(id);
    let bytes = target.get(&path).await?;
    open_as(&format!("{}:{}", target.name, path), id, meta, &bytes)
}

/// Opens a sealed snapshot object as `T`; it must be of this format's
/// version and name itself.
fn open_as<T: Named>(
    object: &str,
    id: &str,
    meta: &MetaKey,
    sealed: &[u8],
) -> Result<T, RepoError> {
    let t: T = open_json(object, id, meta, sealed)?;
    let (version, named, _) = t.named();
    if version != SNAPSHOT_VERSION {
        return Err(RepoError::malformed(
            object,
            format!("snapshot version {version}"),
        ));
    }
    if named != id {
        return Err(RepoError::malformed(object, "names another snapshot"));
    }
    if let Some(why) = t.refused() {
        return Err(RepoError::malformed(object, why));
    }
    Ok(t)
}

/// Opens a sealed snapshot object into `T` (all of it, or its head).
fn open_json<T: serde::de::DeserializeOwned>(
    object: &str,
    id: &str,
    meta: &MetaKey,
    sealed: &[u8],
) -> Result<T, RepoError> {
    let z = meta
        .open("snapshot", id, sealed)
        .map_err(|source| RepoError::Crypto {
            object: object.into(),
            source,
        })?;
    let json = decompress_meta(object, &z)?;
    serde_json::from_slice(&json).map_err(|e| RepoError::malformed(object, e.to_string()))
}

/// The entry of `list` (oldest first) named by `latest`, a full id or a
/// unique id prefix.
fn select_by<'a, T>(
    list: &'a [T],
    which: &str,
    id: impl Fn(&T) -> &str,
) -> Result<&'a T, RepoError> {
    if which == "latest" {
        return list
            .last()
            .ok_or_else(|| RepoError::NoSnapshot(which.into()));
    }
    let m: Vec<_> = list.iter().filter(|s| id(s).starts_with(which)).collect();
    match m.len() {
        0 => Err(RepoError::NoSnapshot(which.into())),
        1 => Ok(m[0]),
        _ => Err(RepoError::AmbiguousSnapshot(which.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key32;

    /// A files snapshot as JSON, `extra` fields added at its top level.
    fn files_snapshot(kind: &str, extra: &str) -> String {
        format!(
            r#"{{"version":1,"id":"0123456789abcdef","policy":"p","time":"2026-03-01T00:00:00Z",
            "parent":null,"custos_version":"0.1.0","store":{{"kind":"{kind}","location":"/x"}},
            "files":{{"class":"c","key":"{key}","unit":"epoch:c:2026","files":0,"bytes":0,"pages":[]}},
            "stats":{{"items":0,"bytes_read":0,"chunks":0,"new_chunks":0,"new_bytes_stored":0,
            "packs_written":0,"duration_ms":0}}{extra}}}"#,
            key = "00".repeat(16)
        )
    }

    fn open(meta: &MetaKey, json: &str) -> Result<Snapshot, RepoError> {
        let id = "0123456789abcdef";
        let sealed = meta.seal("snapshot", id, &compress_meta(json.as_bytes()));
        open_as::<Snapshot>("t:snapshots/x", id, meta, &sealed)
    }

    fn mark(pages: u64, overlays: &[u64]) -> WindowMark {
        WindowMark {
            digest: String::new(),
            rows: 1,
            bytes: 1,
            groups: 1,
            checksum: String::new(),
            pages,
            from: None,
            to: None,
            stretch: None,
            packs: None,
            lists: Vec::new(),
            overlays: overlays.to_vec(),
        }
    }

    #[test]
    fn overlays_that_do_not_fit_their_window_or_table_are_refused() {
        assert_eq!(mark(5, &[]).overlay_starts(), Some(vec![]));
        assert_eq!(mark(5, &[2, 1]).overlay_starts(), Some(vec![2, 4]));
        assert_eq!(mark(3, &[3]).overlay_starts(), Some(vec![0]));
        assert_eq!(mark(3, &[2, 2]).overlay_starts(), None);
        assert_eq!(mark(3, &[0]).overlay_starts(), None);
        assert_eq!(mark(3, &[u64::MAX]).overlay_starts(), None);
        let snap = |windows: Vec<WindowMark>, pages: usize| {
            let meta = MetaKey::new(&Key32::from_bytes([7; 32]));
            let mut s = open(&meta, &files_snapshot("files", "")).unwrap();
            s.files = None;
            s.store.kind = "sqlite".into();
            s.sqlite = Some(SqliteSnapshot {
                schema: crate::store::sqlite::SqliteSchema::empty(),
                tables: vec![TableEntry::of_pages(pages, windows)],
            });
            s
        };
        assert!(snap(vec![mark(2, &[1]), mark(3, &[2, 1])], 5)
            .check_overlays("x")
            .is_ok());
        let e = snap(vec![mark(2, &[1]), mark(3, &[2, 2])], 5)
            .check_overlays("x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("read window 1 has 2 overlays"), "{e}");
        // Marks that do not count the pages: the windows, and so the
        // overlays, cannot be told apart.
        let e = snap(vec![mark(2, &[1]), mark(3, &[])], 6)
            .check_overlays("x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not count its 6 pages"), "{e}");
        let many = vec![1u64; MAX_OVERLAYS + 1];
        assert!(
            snap(vec![mark(MAX_OVERLAYS as u64 + 1, &many)], MAX_OVERLAYS + 1)
                .check_overlays("x")
                .is_err()
        );
        // Windows without overlays are not this check's business.
        assert!(snap(vec![mark(2, &[])], 7).check_overlays("x").is_ok());
    }

    #[test]
    fn a_snapshot_holding_another_store_s_contents_is_refused() {
        let meta = MetaKey::new(&Key32::from_bytes([7; 32]));
        let s = open(&meta, &files_snapshot("files", "")).unwrap();
        assert!(s.files.is_some() && s.sqlite.is_none());
        // The kind names SQLite, the contents are files.
        let e = open(&meta, &files_snapshot("sqlite", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t:snapshots/x") && e.contains("holds files contents"),
            "{e}"
        );
        // Files and a SQLite part side by side: restore would take one,
        // a check or a prune both or another.
        let sqlite = r#","sqlite":{"schema":{"version":1,"entries":[],"tables":[],"user_version":0,
            "application_id":0,"page_size":4096,"auto_vacuum":0,"encoding":"UTF-8","wal":false},
            "tables":[]}"#;
        let two = files_snapshot("files", sqlite);
        assert!(
            serde_json::from_str::<Snapshot>(&two).is_ok(),
            "decodes alone"
        );
        let e = open(&meta, &two).unwrap_err().to_string();
        assert!(e.contains("several stores"), "{e}");
    }
}
