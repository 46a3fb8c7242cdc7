//! Tree pages: the content-addressed nodes under a snapshot (snapshot →
//! table → pages of groups; or snapshot → pages of files), stored as blobs
//! in metadata packs (family [`META_FAMILY`]) and found through the index
//! like chunks, so that a snapshot of millions of groups is a few packs, not
//! tens of thousands of small objects.
//!
//! A page is JSON, zstd-compressed, sealed under the metadata key (kind
//! "tree", name = tree id). The tree id is a keyed hash of the plaintext, so
//! an unchanged page keeps its id and is not stored again. Page boundaries are
//! content-defined (from group ids or path hashes), so one changed group
//! rewrites one page, not every page after it.

use super::cache::PackCache;
use super::index::{
    ChunkLoc, Index, IndexEntry, IndexObjects, KEPT_INDEX_ENTRIES, MAX_WINDOW_PACKS,
};
use super::{compress_meta, decompress_meta, frame_meta_raw, put_varint, take_varint, RepoError};
use crate::crypto::{Id, MetaKey};
use crate::store::files::FileEntry;
use crate::vault::KeyId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const PAGE_VERSION: u32 = 1;
/// The version of a group page whose chunk ids are all short (FORMAT 1.2,
/// 3.4): each written as its 16 bytes of hash. A page naming any version 1
/// chunk id is written as version [`PAGE_VERSION`], 32 bytes an id.
pub const GROUP_PAGE_SHORT: u32 = 2;
/// A group page of a period unit ends after a group whose tag's first two
/// bytes (u16 LE) are zero modulo this. A closed period's pages never
/// change, so they are larger: fewer ids for every snapshot to list.
pub const PERIOD_PAGE_AVG: u16 = 64;
/// The same for an epoch unit (a table without a period: its rows change
/// anywhere, every snapshot). An update rewrites the page around it, so
/// these pages are smaller: an incremental rewrites less, for more page
/// ids in the page lists of the read windows it touches (see PERFORMANCE,
/// "Incremental: smaller pages where rows change in place" and "Snapshots:
/// page lists instead of page ids").
pub const EPOCH_PAGE_AVG: u16 = 8;
pub const GROUP_PAGE_MAX: usize = 1024;
pub const FILE_PAGE_AVG: u16 = 256;
pub const FILE_PAGE_MAX: usize = 4096;

/// One shred group's share of a table in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// The first 8 bytes of the group id (derived from the group key, so
    /// unlinkable without it): a check that the named keys are the group's.
    pub g: [u8; 8],
    /// Subject key id, if the group has a subject.
    pub s: Option<KeyId>,
    /// Time key id (period or class-epoch key).
    pub t: KeyId,
    /// The time unit: `period:<class>:<label>` or `epoch:<class>:<label>`.
    pub u: std::sync::Arc<str>,
    pub rows: u64,
    pub bytes: u64,
    pub chunks: ChunkIds,
}

/// A group's chunk ids. Nearly every group of a table of records has one
/// (its rows are one chunk), held inline: a list of its own for each of
/// the 4.3 M groups at 1 GiB was an allocation made and freed per group
/// by every backup, restore and check.
pub type ChunkIds = smallvec::SmallVec<[Id; 1]>;

/// What names one group on a page (FORMAT 3.4, "Overlay pages"): its
/// tag, subject key id and time key id. An overlay entry with the same
/// key as a base entry stands instead of it.
pub type GroupKey = ([u8; 8], Option<KeyId>, KeyId);

impl GroupEntry {
    pub fn key(&self) -> GroupKey {
        (self.g, self.s, self.t)
    }

    /// An overlay's deletion: the group's rows are gone from the window
    /// (rows 0, no chunks; a group stored with rows has at least one).
    pub fn is_deletion(&self) -> bool {
        self.rows == 0 && self.chunks.is_empty()
    }
}

/// A read window's groups as they stand, from its pages' entries in page
/// order (FORMAT 3.4, "Overlay pages"): `starts` are the positions, in
/// increasing order, of the first entry of each overlay, oldest first
/// (none: the entries stand as they are). An entry stands unless a later
/// overlay names its group; a deletion (no rows, no chunks) never stands.
/// The entries left keep their order. `superseded` sees every entry that
/// does not stand. Refuses an overlay that names a group twice, and a
/// deletion outside an overlay.
pub fn apply_overlays<T>(
    entries: &mut Vec<T>,
    starts: &[usize],
    entry: impl Fn(&T) -> &GroupEntry,
    superseded: impl FnMut(&T),
) -> Result<(), String> {
    apply_overlays_by(
        entries,
        starts,
        |e| {
            let g = entry(e);
            (g.key(), g.is_deletion())
        },
        superseded,
    )
}

/// [`apply_overlays`] on entries of any shape: `key` gives an entry's
/// group key and whether it is a deletion.
pub fn apply_overlays_by<T>(
    entries: &mut Vec<T>,
    starts: &[usize],
    key: impl Fn(&T) -> (GroupKey, bool),
    mut superseded: impl FnMut(&T),
) -> Result<(), String> {
    if starts.windows(2).any(|w| w[0] > w[1]) || starts.last().is_some_and(|&s| s > entries.len()) {
        return Err("the overlays are out of order".into());
    }
    let base = starts.first().copied().unwrap_or(entries.len());
    if let Some(e) = entries[..base].iter().find(|e| key(e).1) {
        return Err(format!(
            "group {} has no rows outside an overlay",
            hex::encode(key(e).0 .0)
        ));
    }
    if base == entries.len() {
        return Ok(());
    }
    // Level 0 is the base, level k the k-th overlay: from the newest back,
    // an entry stands if no later level named its group.
    let mut bounds = Vec::with_capacity(starts.len() + 2);
    bounds.push(0);
    bounds.extend_from_slice(starts);
    bounds.push(entries.len());
    let mut stands = vec![true; entries.len()];
    let seed = KeySeed::new();
    let mut named = KeySet::with_capacity(entries.len() - base);
    let mut level = KeySet::with_capacity(0);
    for k in (0..bounds.len() - 1).rev() {
        level.clear();
        for (i, stand) in stands
            .iter_mut()
            .enumerate()
            .take(bounds[k + 1])
            .skip(bounds[k])
        {
            let (g, deletion) = key(&entries[i]);
            let hash = seed.hash(&g);
            if deletion || named.contains(hash, &g) {
                *stand = false;
            }
            if k > 0 && !level.insert(hash, g) {
                return Err(format!("an overlay names group {} twice", hex::encode(g.0)));
            }
        }
        named.take_from(&mut level);
    }
    let mut at = 0usize;
    entries.retain(|e| {
        let keep = stands[at];
        at += 1;
        if !keep {
            superseded(e);
        }
        keep
    });
    Ok(())
}

/// A per-call random key for hashing group keys. Their bytes are keyed
/// hashes and random ids, but whoever holds a repository's keys could
/// write pages of keys alike in the bytes hashed; under a seed they cannot
/// choose keys that collide. Folded by wide multiplications, as the vault
/// folds its ids: SipHash over them was most of applying a window's
/// overlays (about 0.15 CPU s of an incremental at 1 GiB).
#[derive(Clone, Copy)]
struct KeySeed([u64; 2]);

impl KeySeed {
    fn new() -> Self {
        use std::hash::BuildHasher;
        let r = std::hash::RandomState::new();
        KeySeed([r.hash_one(0u8), r.hash_one(1u8) | 1])
    }

    fn hash(self, (g, s, t): &GroupKey) -> u64 {
        fn fold(a: u64, b: u64) -> u64 {
            let p = u128::from(a) * u128::from(b);
            (p as u64) ^ ((p >> 64) as u64)
        }
        let half = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        };
        let s = s.map_or([0xff; 16], |s| s.0);
        let [k0, k1] = self.0;
        let h = fold(u64::from_le_bytes(*g) ^ k0, half(&s, 0) ^ k1);
        let h = fold(h ^ half(&s, 1), half(&t.0, 0) ^ k0);
        fold(h ^ half(&t.0, 1), k1)
    }
}

/// A set of group keys, hashed by [`KeySeed`].
struct KeySet(hashbrown::HashTable<(u64, GroupKey)>);

impl KeySet {
    fn with_capacity(n: usize) -> Self {
        KeySet(hashbrown::HashTable::with_capacity(n))
    }

    fn contains(&self, hash: u64, k: &GroupKey) -> bool {
        self.0.find(hash, |(_, e)| e == k).is_some()
    }

    /// Adds `k`; false if it was there.
    fn insert(&mut self, hash: u64, k: GroupKey) -> bool {
        match self.0.entry(hash, |(_, e)| *e == k, |(h, _)| *h) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((hash, k));
                true
            }
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// Moves every key of `other` here.
    fn take_from(&mut self, other: &mut KeySet) {
        for (hash, k) in other.0.drain() {
            self.insert(hash, k);
        }
    }
}

/// One file (or directory or link) of a file-mode snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    #[serde(flatten)]
    pub entry: FileEntry,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Page {
    /// Written as version [`GROUP_PAGE_SHORT`] when every chunk id is
    /// short, else [`PAGE_VERSION`] (the ids decide, see `encode_groups`).
    Groups {
        table: String,
        groups: Vec<GroupEntry>,
    },
    Files {
        version: u32,
        files: Vec<FileRecord>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesBody<F> {
    version: u32,
    files: F,
}

/// Largest count or length a page may declare (hostile input bound).
const MAX_DECLARED: u64 = 1 << 26;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err("truncated".into());
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn varint(&mut self) -> Result<u64, String> {
        take_varint(self.b, &mut self.at).map_err(String::from)
    }
    fn bounded(&mut self) -> Result<usize, String> {
        let v = self.varint()?;
        if v > MAX_DECLARED || v as usize > self.b.len() {
            return Err(format!("declared length {v} is absurd"));
        }
        Ok(v as usize)
    }
    fn string(&mut self) -> Result<&'a str, String> {
        let n = self.bounded()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "invalid UTF-8".to_string())
    }
    fn key_id(&mut self) -> Result<KeyId, String> {
        Ok(KeyId(self.take(16)?.try_into().unwrap()))
    }
}

/// Binary body of a group page (FORMAT 3.4). All groups of a page share one
/// time unit and time key, written once.
fn encode_groups(table: &str, groups: &[GroupEntry]) -> Vec<u8> {
    let short = groups.iter().all(|g| g.chunks.iter().all(Id::is_short));
    let (version, width) = if short {
        (GROUP_PAGE_SHORT, 16)
    } else {
        (PAGE_VERSION, 32)
    };
    let mut out = Vec::with_capacity(64 + groups.len() * 64);
    out.extend_from_slice(b"G");
    out.push(version as u8);
    put_varint(&mut out, table.len() as u64);
    out.extend_from_slice(table.as_bytes());
    let (t, u) = groups
        .first()
        .map(|g| (g.t, &*g.u))
        .unwrap_or((KeyId([0; 16]), ""));
    out.extend_from_slice(&t.0);
    put_varint(&mut out, u.len() as u64);
    out.extend_from_slice(u.as_bytes());
    put_varint(&mut out, groups.len() as u64);
    for g in groups {
        debug_assert!(g.t == t && &*g.u == u, "a page holds one time unit");
        out.extend_from_slice(&g.g);
        match &g.s {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.0);
            }
            None => out.push(0),
        }
        put_varint(&mut out, g.rows);
        put_varint(&mut out, g.bytes);
        put_varint(&mut out, g.chunks.len() as u64);
        for c in &g.chunks {
            out.extend_from_slice(&c.0[..width]);
        }
    }
    out
}

/// The head of a group page, borrowed from its plaintext.
pub struct GroupsHead<'a> {
    pub table: &'a str,
    /// The time key id all the page's groups share.
    pub t: KeyId,
    /// The time unit all the page's groups share.
    pub unit: &'a str,
    /// How many groups the page declares.
    pub count: usize,
}

/// One group of a group page, borrowed from its plaintext.
pub struct GroupRef<'a> {
    pub g: [u8; 8],
    pub s: Option<KeyId>,
    pub rows: u64,
    pub bytes: u64,
    /// The chunk ids, `width` bytes each.
    chunks: &'a [u8],
    /// 32 (version 1 ids) or 16 (short ids, their zero bytes left out).
    width: usize,
}

impl GroupRef<'_> {
    /// The group's chunk ids, in order (a short id with its 16 zero
    /// bytes).
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = Id> + '_ {
        self.chunks.chunks_exact(self.width).map(|c| {
            let mut id = [0u8; 32];
            id[..c.len()].copy_from_slice(c);
            Id(id)
        })
    }
}

/// The width of a chunk id in a group page of version `v`.
fn id_width(v: u32) -> Result<usize, String> {
    match v {
        PAGE_VERSION => Ok(32),
        GROUP_PAGE_SHORT => Ok(16),
        v => Err(format!("group page version {v}")),
    }
}

/// Walks a group page's plaintext (FORMAT 3.4, from its `"G"`) without
/// copying it: `each` sees the head and every group, in order. The whole
/// page is checked as [`Page::decode`] checks it, so an error may come
/// after some groups were seen.
pub fn scan_groups<'a>(
    b: &'a [u8],
    mut each: impl FnMut(&GroupsHead<'a>, GroupRef<'a>),
) -> Result<GroupsHead<'a>, String> {
    if b.first() != Some(&b'G') {
        return Err("not a group page".into());
    }
    let width = id_width(*b.get(1).ok_or("truncated")? as u32)?;
    let mut r = Reader { b, at: 2 };
    let table = r.string()?;
    let t = r.key_id()?;
    let unit = r.string()?;
    let count = r.bounded()?;
    let head = GroupsHead {
        table,
        t,
        unit,
        count,
    };
    for _ in 0..count {
        let g: [u8; 8] = r.take(8)?.try_into().unwrap();
        let s = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.key_id()?),
            f => return Err(format!("unknown subject flag {f}")),
        };
        let rows = r.varint()?;
        let bytes = r.varint()?;
        let nc = r.bounded()?;
        let chunks = r.take(nc.checked_mul(width).ok_or("truncated")?)?;
        each(
            &head,
            GroupRef {
                g,
                s,
                rows,
                bytes,
                chunks,
                width,
            },
        );
    }
    if r.at != b.len() {
        return Err("trailing bytes".into());
    }
    Ok(head)
}

fn decode_groups(b: &[u8]) -> Result<(String, Vec<GroupEntry>), String> {
    let mut groups = Vec::new();
    let table = decode_groups_into(b, &mut groups, |count| count.min(1 << 16), |g| g)?;
    Ok((table.to_string(), groups))
}

/// Decodes a group page's plaintext (FORMAT 3.4) onto the end of `out`,
/// each group through `wrap`: a caller gathering many pages' groups (a
/// restore's read window) puts them straight into its list. Before the
/// first group, `out` reserves `room(count)` more, `count` being the
/// number of groups the page declares (not trusted: cap it). Returns the
/// page's table; on an error, some groups may have been pushed.
pub fn decode_groups_into<'a, T>(
    b: &'a [u8],
    out: &mut Vec<T>,
    room: impl FnOnce(usize) -> usize,
    mut wrap: impl FnMut(GroupEntry) -> T,
) -> Result<&'a str, String> {
    let mut room = Some(room);
    let mut u: Option<std::sync::Arc<str>> = None;
    let head = scan_groups(b, |head, g| {
        if let Some(room) = room.take() {
            out.reserve(room(head.count));
        }
        let u = u.get_or_insert_with(|| head.unit.into());
        out.push(wrap(GroupEntry {
            g: g.g,
            s: g.s,
            t: head.t,
            u: u.clone(),
            rows: g.rows,
            bytes: g.bytes,
            chunks: g.chunks().collect(),
        }));
    })?;
    Ok(head.table)
}

/// The pack family of metadata blobs (tree pages): packs of this family
/// hold no chunk of any shred group.
pub const META_FAMILY: KeyId = KeyId([0u8; 16]);

impl Page {
    /// Seals the page: returns its id and sealed bytes.
    /// The plaintext: `"G" ‖ version u8 ‖ binary body` for group pages,
    /// `"F" ‖ JSON` for file pages.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Page::Groups { table, groups, .. } => encode_groups(table, groups),
            Page::Files { version, files } => {
                let mut out = b"F".to_vec();
                serde_json::to_writer(
                    &mut out,
                    &FilesBody {
                        version: *version,
                        files,
                    },
                )
                .expect("page serializes");
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Page, String> {
        match b.first() {
            Some(b'G') => {
                let (table, groups) = decode_groups(b)?;
                Ok(Page::Groups { table, groups })
            }
            Some(b'F') => {
                let body: FilesBody<Vec<FileRecord>> =
                    serde_json::from_slice(&b[1..]).map_err(|e| e.to_string())?;
                if body.version != PAGE_VERSION {
                    return Err(format!("page version {}", body.version));
                }
                Ok(Page::Files {
                    version: body.version,
                    files: body.files,
                })
            }
            _ => Err("unknown page kind".into()),
        }
    }

    /// Seals the page: returns its id and sealed bytes.
    pub fn seal(&self, meta: &MetaKey) -> (Id, Vec<u8>) {
        let (id, sealed) = self.seal_if_new(meta, |_| true);
        (id, sealed.expect("asked to seal"))
    }

    /// The page's id, and its sealed bytes only if `is_new(id)`: a page
    /// already stored (most pages of an incremental backup) is hashed but
    /// neither compressed nor encrypted again.
    pub fn seal_if_new(
        &self,
        meta: &MetaKey,
        is_new: impl FnOnce(&Id) -> bool,
    ) -> (Id, Option<Vec<u8>>) {
        let plain = self.encode();
        let id = meta.keyed_hash("tree", &plain);
        if !is_new(&id) {
            return (id, None);
        }
        // Group pages are keyed hashes and random ids: zstd would spend
        // its time to give back as many bytes (FORMAT 3.4).
        let framed = match self {
            Page::Groups { .. } => frame_meta_raw(&plain),
            Page::Files { .. } => compress_meta(&plain),
        };
        let sealed = meta.seal("tree", &id.to_hex(), &framed);
        (id, Some(sealed))
    }

    pub fn open(object: &str, id: &Id, meta: &MetaKey, sealed: &[u8]) -> Result<Page, RepoError> {
        Page::decode_opened(object, &Page::open_plain(object, id, meta, sealed)?)
    }

    /// Decodes an opened page's plaintext; errors name `object`.
    fn decode_opened(object: &str, plain: &[u8]) -> Result<Page, RepoError> {
        Page::decode(plain).map_err(|why| RepoError::malformed(object, why))
    }

    /// A sealed page's plaintext, checked against its id, not decoded
    /// (see [`scan_groups`]).
    pub fn open_plain(
        object: &str,
        id: &Id,
        meta: &MetaKey,
        sealed: &[u8],
    ) -> Result<Vec<u8>, RepoError> {
        let z = meta
            .open("tree", &id.to_hex(), sealed)
            .map_err(|source| RepoError::Crypto {
                object: object.into(),
                source,
            })?;
        let plain = decompress_meta(object, &z)?;
        if meta.keyed_hash("tree", &plain) != *id {
            return Err(RepoError::malformed(
                object,
                "content does not match its id",
            ));
        }
        Ok(plain)
    }

    /// Reads a page from its metadata pack, through the index.
    pub async fn load(
        cache: &mut PackCache,
        index: &Index,
        meta: &MetaKey,
        id: &Id,
    ) -> Result<Page, RepoError> {
        let (object, plain) = Page::load_plain(cache, index, meta, id).await?;
        Page::decode_opened(&object, &plain)
    }

    /// As [`load`](Self::load), the plaintext not decoded, with the name
    /// of the page for messages.
    pub async fn load_plain(
        cache: &mut PackCache,
        index: &Index,
        meta: &MetaKey,
        id: &Id,
    ) -> Result<(String, Vec<u8>), RepoError> {
        let Some(loc) = index.chunks.get(id) else {
            return Err(RepoError::malformed(
                format!("tree page {id}"),
                "in no index (repository damaged; run `custos check`)",
            ));
        };
        let pack = index.pack_of(loc).0;
        let object = format!("{} (tree page {id})", cache.object_name(&pack));
        let sealed = cache
            .blob(index, loc)
            .await
            .map_err(|e| RepoError::malformed(&object, e.to_string()))?;
        let plain = Page::open_plain(&object, id, meta, &sealed)?;
        Ok((object, plain))
    }
}

/// Blobs of one pack lying at most this far apart are read together.
const READ_TOGETHER_GAP: u64 = 64 << 10;

/// The sealed bytes of many tree pages, fetched a run at a time: pages
/// that lie together in a pack (as a window's pages do, written one after
/// another) are one read, not one each. A restore of a snapshot whose
/// windows were reused from older backups otherwise read every page of a
/// window on its own once the chunk packs had pushed its metadata pack out
/// of the cache (31 k reads of a few KiB at 1 GiB after five backups).
/// Each page is authenticated when [`page`](Self::page) opens it.
pub struct PagesRead {
    /// The runs' bytes, the offset in their pack each starts at, and the
    /// pack's object name (for errors).
    runs: Vec<(Bytes, u64, String)>,
    /// Each page's id, where it lies in its pack, and its run.
    at: Vec<(Id, ChunkLoc, usize)>,
}

impl PagesRead {
    /// Reads the pages `ids`. A page `index` does not locate is given
    /// back (`Ok(Err(page))`, nothing read) for the caller to name.
    pub async fn fetch(
        cache: &mut PackCache,
        index: &Index,
        ids: &[Id],
    ) -> Result<Result<PagesRead, Id>, RepoError> {
        let mut locs = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(loc) = index.chunks.get(id) else {
                return Ok(Err(*id));
            };
            locs.push(*loc);
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| (locs[i].pack, locs[i].offset));
        let mut runs = Vec::new();
        let mut at: Vec<(Id, ChunkLoc, usize)> =
            ids.iter().zip(&locs).map(|(id, l)| (*id, *l, 0)).collect();
        let mut i = 0;
        while i < order.len() {
            let first = locs[order[i]];
            let start = u64::from(first.offset);
            let mut end = start + u64::from(first.len);
            let mut j = i + 1;
            while let Some(&k) = order.get(j) {
                let l = locs[k];
                if l.pack != first.pack || u64::from(l.offset) > end + READ_TOGETHER_GAP {
                    break;
                }
                end = end.max(u64::from(l.offset) + u64::from(l.len));
                j += 1;
            }
            let (pack, size) = index.pack_of(&first);
            let object = cache.object_name(&pack);
            let (bytes, base) = cache.blobs_at(pack, size, start..end).await.map_err(|e| {
                RepoError::malformed(
                    format!("{object} (tree page {})", ids[order[i]]),
                    e.to_string(),
                )
            })?;
            for &k in &order[i..j] {
                at[k].2 = runs.len();
            }
            runs.push((bytes, base, object));
            i = j;
        }
        Ok(Ok(PagesRead { runs, at }))
    }

    /// Page `i` of the ids fetched, opened and checked against its id.
    pub fn page(&self, meta: &MetaKey, i: usize) -> Result<Page, RepoError> {
        let (object, plain) = self.plain(meta, i)?;
        Page::decode_opened(&object, &plain)
    }

    /// As [`page`](Self::page), the plaintext not decoded (see
    /// [`scan_groups`]), with the name of the page for messages.
    pub fn plain(&self, meta: &MetaKey, i: usize) -> Result<(String, Vec<u8>), RepoError> {
        let (id, loc, run) = &self.at[i];
        let (bytes, base, pack) = &self.runs[*run];
        let object = format!("{pack} (tree page {id})");
        let from = (u64::from(loc.offset) - base) as usize;
        let sealed = bytes
            .get(from..from + loc.len as usize)
            .ok_or_else(|| RepoError::malformed(&object, "shorter than indexed"))?;
        let plain = Page::open_plain(&object, id, meta, sealed)?;
        Ok((object, plain))
    }
}

/// Pages read together at most ([`load_pages`]): nearby ones are one
/// request, and what is held decoded stays bounded.
pub const PAGES_AT_ONCE: usize = 1024;

/// The pages `ids`, read together through `index` ([`PagesRead`]) and
/// opened in order. Callers walking many pages pass at most
/// [`PAGES_AT_ONCE`] at a time: all of them are held at once.
pub async fn load_pages(
    cache: &mut PackCache,
    index: &Index,
    meta: &MetaKey,
    ids: &[Id],
) -> Result<Vec<Page>, RepoError> {
    let read = fetch_located(cache, index, ids).await?;
    (0..ids.len()).map(|i| read.page(meta, i)).collect()
}

/// The pages `ids`, opened but not decoded (for [`scan_groups`]), each
/// with its name for messages: read through `index` [`PAGES_AT_ONCE`] at
/// a time, as [`load_pages`] reads them.
async fn read_plain_pages(
    cache: &mut PackCache,
    index: &Index,
    meta: &MetaKey,
    ids: &[Id],
) -> Result<Vec<(String, Vec<u8>)>, RepoError> {
    let mut out = Vec::with_capacity(ids.len());
    for part in ids.chunks(PAGES_AT_ONCE) {
        let read = fetch_located(cache, index, part).await?;
        for i in 0..part.len() {
            out.push(read.plain(meta, i)?);
        }
    }
    Ok(out)
}

/// [`PagesRead::fetch`], a page `index` does not locate an error naming it.
async fn fetch_located(
    cache: &mut PackCache,
    index: &Index,
    ids: &[Id],
) -> Result<PagesRead, RepoError> {
    PagesRead::fetch(cache, index, ids)
        .await?
        .map_err(|missing| {
            RepoError::malformed(
                format!("tree page {missing}"),
                "in no index (repository damaged; run `custos check`)",
            )
        })
}

/// A read window's groups as they stand, and the entries of its pages
/// that do not ([`apply_overlays`]), its `pages` read through `index`
/// [`PAGES_AT_ONCE`] at a time ([`load_pages`]); `overlays` are where its
/// overlays start among them. Pages of files are passed over.
pub async fn load_window(
    cache: &mut PackCache,
    index: &Index,
    meta: &MetaKey,
    pages: &[Id],
    overlays: &[usize],
) -> Result<(Vec<GroupEntry>, Vec<GroupEntry>), RepoError> {
    let mut groups = Vec::new();
    let mut starts = Vec::with_capacity(overlays.len());
    for (p, part) in pages.chunks(PAGES_AT_ONCE).enumerate() {
        let loaded = load_pages(cache, index, meta, part).await?;
        for (j, page) in loaded.into_iter().enumerate() {
            let i = p * PAGES_AT_ONCE + j;
            for _ in overlays.iter().filter(|&&s| s == i) {
                starts.push(groups.len());
            }
            if let Page::Groups { groups: g, .. } = page {
                groups.extend(g);
            }
        }
    }
    let mut gone = Vec::new();
    apply_overlays(&mut groups, &starts, |g| g, |g| gone.push(g.clone())).map_err(|why| {
        RepoError::malformed(
            format!(
                "the read window of tree pages {}",
                pages.first().map(Id::to_hex).unwrap_or_default()
            ),
            why,
        )
    })?;
    Ok((groups, gone))
}

/// Where a walk of read windows finds their pages: through the index
/// objects of the packs a window lists (FORMAT 3.5), the most recent kept
/// up to [`KEPT_INDEX_ENTRIES`], so memory follows the window, not the
/// repository; or through the target's whole index, loaded once when
/// first needed (a window listing no packs, too many, or not all of its
/// pages). A restore finds a window's blobs through one as well.
pub struct WindowIndex {
    objects: IndexObjects,
    whole: Option<Arc<Index>>,
    target: Arc<crate::target::Target>,
    meta: Arc<MetaKey>,
    /// Packs found holding a tree page of a window read before (metadata
    /// packs, FORMAT 3.4): where [`for_pages`](Self::for_pages) looks for
    /// the next windows' pages first.
    page_packs: std::collections::HashSet<Id>,
}

impl WindowIndex {
    pub fn new(target: Arc<crate::target::Target>, meta: Arc<MetaKey>) -> Self {
        WindowIndex {
            objects: IndexObjects::new(target.clone(), meta.clone(), KEPT_INDEX_ENTRIES),
            whole: None,
            target,
            meta,
            page_packs: Default::default(),
        }
    }

    /// The target's whole index.
    pub async fn whole(&mut self) -> Result<Arc<Index>, RepoError> {
        if let Some(w) = &self.whole {
            return Ok(w.clone());
        }
        let w = Arc::new(Index::load(&self.target, &self.meta).await?);
        self.whole = Some(w.clone());
        Ok(w)
    }

    /// Whether the whole index was loaded.
    pub fn whole_loaded(&self) -> bool {
        self.whole.is_some()
    }

    /// Index objects read for windows' packs so far.
    pub fn objects_read(&self) -> u64 {
        self.objects.fetched
    }

    /// The index to read a window listing `listed` through: of those
    /// packs alone, or the whole index if it lists none (or too many to be
    /// honest), or once the whole index is loaded anyway.
    pub async fn for_window(&mut self, listed: Option<&[Id]>) -> Result<Arc<Index>, RepoError> {
        match listed {
            Some(packs) if self.whole.is_none() && packs.len() <= MAX_WINDOW_PACKS => {
                Ok(self.objects.index_of(packs).await?.index.clone())
            }
            _ => self.whole().await,
        }
    }

    /// The first index to read a window listing `listed` through
    /// ([`for_window`](Self::for_window)). A read that fails through it
    /// asks [`again`](Self::again) for the next.
    pub async fn first(&mut self, listed: Option<&[Id]>) -> Result<Through, RepoError> {
        let index = self.for_window(listed).await?;
        Ok(Through {
            index,
            whole: self.whole_loaded(),
        })
    }

    /// After a read through `tried` failed with `e` (a page or blob the
    /// listed packs do not hold, or a page of theirs that does not open):
    /// the whole index, or `e` itself if that was the whole index.
    pub async fn again(&mut self, tried: &Through, e: RepoError) -> Result<Through, RepoError> {
        if tried.whole {
            return Err(e);
        }
        self.through_whole().await
    }

    /// The whole index, to read through.
    async fn through_whole(&mut self) -> Result<Through, RepoError> {
        Ok(Through {
            index: self.whole().await?,
            whole: true,
        })
    }

    /// A read window's groups as they stand and those superseded
    /// ([`load_window`]), its pages found through an index of them alone
    /// ([`for_pages`](Self::for_pages)), else through the whole index. A
    /// page that cannot be read through the whole index either is an
    /// error. A caller that needs a chunk's place asks
    /// [`first`](Self::first) for the index of the window's packs.
    pub async fn load_window(
        &mut self,
        cache: &mut PackCache,
        listed: Option<&[Id]>,
        pages: &[Id],
        overlays: &[usize],
    ) -> Result<(Vec<GroupEntry>, Vec<GroupEntry>), RepoError> {
        let mut at = self.pages_first(listed, pages).await?;
        loop {
            match load_window(cache, &at.index, &self.meta, pages, overlays).await {
                Ok(read) => return Ok(read),
                Err(e) => at = self.again(&at, e).await?,
            }
        }
    }

    /// The first index to read `pages` of a window listing `listed`
    /// through: one of those pages alone ([`for_pages`](Self::for_pages)),
    /// or else the whole index.
    async fn pages_first(
        &mut self,
        listed: Option<&[Id]>,
        pages: &[Id],
    ) -> Result<Through, RepoError> {
        match self.for_pages(listed, pages).await? {
            Some(index) => Ok(Through {
                index: Arc::new(index),
                whole: false,
            }),
            None => self.through_whole().await,
        }
    }

    /// Some of a read window's pages (`pages`, e.g. those no window walked
    /// before named), opened but not decoded (for [`scan_groups`]), each
    /// with its name for messages: as stored, overlays not applied, so
    /// every entry of every page is there, superseded or not. Read
    /// [`PAGES_AT_ONCE`] at a time through an index of the window's listed
    /// packs that locates these pages alone ([`for_pages`](Self::for_pages)),
    /// else through the whole index, where a page not found is an error.
    pub async fn load_plain_pages(
        &mut self,
        cache: &mut PackCache,
        listed: Option<&[Id]>,
        pages: &[Id],
    ) -> Result<Vec<(String, Vec<u8>)>, RepoError> {
        let mut at = self.pages_first(listed, pages).await?;
        loop {
            match read_plain_pages(cache, &at.index, &self.meta, pages).await {
                Ok(read) => return Ok(read),
                Err(e) => at = self.again(&at, e).await?,
            }
        }
    }

    /// An index that locates `pages` alone, not the chunks they name,
    /// from the index objects of the packs the window lists (`listed`):
    /// first those that held pages of windows read before (a window's
    /// pages lie in the few metadata packs of the backups that wrote
    /// them), then the others eight at a time, until every page is found.
    /// `None` if the window lists no packs, or too many, or its packs do
    /// not hold every page, or the whole index is loaded already.
    async fn for_pages(
        &mut self,
        listed: Option<&[Id]>,
        pages: &[Id],
    ) -> Result<Option<Index>, RepoError> {
        let Some(listed) = listed.filter(|l| l.len() <= MAX_WINDOW_PACKS) else {
            return Ok(None);
        };
        if self.whole.is_some() {
            return Ok(None);
        }
        // The pages not found yet, as index entries name them.
        let mut wanted: std::collections::HashSet<[u8; 16]> = pages
            .iter()
            .map(|p| p.0[..16].try_into().expect("16 bytes"))
            .collect();
        let (first, rest): (Vec<Id>, Vec<Id>) =
            listed.iter().partition(|p| self.page_packs.contains(*p));
        let mut batches = vec![first];
        batches.extend(rest.chunks(8).map(<[Id]>::to_vec));
        let mut index = Index::default();
        for batch in batches {
            if wanted.is_empty() {
                break;
            }
            let (files, _) = self.objects.files(&batch).await?;
            for f in files {
                let found: Vec<IndexEntry> = f
                    .entries
                    .iter()
                    .filter(|e| wanted.remove(&e.key))
                    .copied()
                    .collect();
                if !found.is_empty() {
                    self.page_packs.insert(f.pack);
                    index.add(&super::index::IndexFile {
                        pack: f.pack,
                        pack_size: f.pack_size,
                        entries: found,
                    });
                }
            }
        }
        if !wanted.is_empty() {
            return Ok(None);
        }
        index.seal();
        Ok(Some(index))
    }
}

/// An index a window's read goes through ([`WindowIndex::first`]).
pub struct Through {
    pub index: Arc<Index>,
    /// Whether it is the target's whole index (else that of some packs:
    /// what it does not find may be elsewhere).
    pub whole: bool,
}

/// A read window's page ids as one blob, a **list page** (FORMAT 3.4):
/// `"L" ‖ version u8 (1) ‖ count varint ‖ count × tree id [32]`, sealed
/// like a page. A snapshot names the list, not every page, so a backup
/// that reuses a window writes nothing for it.
pub fn encode_list(pages: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + pages.len() * 32);
    out.extend_from_slice(b"L");
    out.push(PAGE_VERSION as u8);
    put_varint(&mut out, pages.len() as u64);
    for p in pages {
        out.extend_from_slice(&p.0);
    }
    out
}

/// The page ids of a list page's plaintext; refuses anything else.
pub fn decode_list(b: &[u8]) -> Result<Vec<Id>, String> {
    if b.first() != Some(&b'L') {
        return Err("not a page list".into());
    }
    let mut r = Reader { b, at: 1 };
    let v = r.take(1)?[0] as u32;
    if v != PAGE_VERSION {
        return Err(format!("page list version {v}"));
    }
    let n = r.bounded()?;
    if n.checked_mul(32) != Some(b.len() - r.at) {
        return Err(format!("declares {n} pages in {} bytes", b.len() - r.at));
    }
    Ok(r.b[r.at..]
        .chunks_exact(32)
        .map(|c| Id(c.try_into().unwrap()))
        .collect())
}

/// A read window's page ids are cut into list pages after a page whose
/// id's first two bytes (u16 LE) are zero modulo this, or at
/// [`LIST_PART_MAX`] ids: a changed page changes its part (and at most the
/// next, if its id was a boundary), not the whole window's list. The cut
/// is the writer's; a reader concatenates a window's parts.
pub const LIST_PART_AVG: u16 = 128;
pub const LIST_PART_MAX: usize = 1024;

/// A window's page ids cut into parts (see [`LIST_PART_AVG`]).
pub fn list_parts(pages: &[Id]) -> Vec<&[Id]> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, p) in pages.iter().enumerate() {
        let n = i + 1 - start;
        if u16::from_le_bytes([p.0[0], p.0[1]]) % LIST_PART_AVG == 0 || n == LIST_PART_MAX {
            parts.push(&pages[start..=i]);
            start = i + 1;
        }
    }
    if start < pages.len() {
        parts.push(&pages[start..]);
    }
    parts
}

/// A list page's id and plaintext; [`seal_list`] seals it, once the
/// writer knows it is not stored yet.
pub fn list_page(meta: &MetaKey, pages: &[Id]) -> (Id, Vec<u8>) {
    let plain = encode_list(pages);
    (meta.keyed_hash("tree", &plain), plain)
}

/// Seals a list page's plaintext under its id (see [`list_page`]).
pub fn seal_list(meta: &MetaKey, id: &Id, plain: &[u8]) -> Vec<u8> {
    meta.seal("tree", &id.to_hex(), &frame_meta_raw(plain))
}

/// Opens a sealed list page, checked against its id.
pub fn open_list(
    object: &str,
    id: &Id,
    meta: &MetaKey,
    sealed: &[u8],
) -> Result<Vec<Id>, RepoError> {
    let plain = Page::open_plain(object, id, meta, sealed)?;
    decode_list(&plain).map_err(|why| RepoError::malformed(object, why))
}

/// Stores pages as one metadata pack with its index object (tools and
/// tests; a backup streams its pages through its packer instead).
pub async fn store_pages(
    target: &crate::target::Target,
    meta: &MetaKey,
    pages: &[Page],
) -> Result<Vec<Id>, RepoError> {
    let mut w = super::pack::PackWriter::new();
    let mut ids = Vec::new();
    for p in pages {
        let (id, sealed) = p.seal(meta);
        w.add(id, &sealed, sealed.len() as u32);
        ids.push(id);
    }
    let (pack, bytes, index) = w.finish(meta);
    target
        .put(&super::pack::pack_path(&pack), bytes.into())
        .await?;
    index.store(target, meta).await?;
    Ok(ids)
}

/// Cuts a stream of group entries into pages: a page never spans two time
/// units (so the pages of a closed month stay the same snapshot after
/// snapshot), and within a unit pages end at content-defined boundaries.
#[derive(Default)]
pub struct GroupPager {
    cur: Vec<GroupEntry>,
    /// Cut only where the unit changes or a page is full (an overlay's
    /// pages: written once, never found again by content).
    whole: bool,
}

impl GroupPager {
    /// A pager for an overlay (FORMAT 3.4): its pages are new in every
    /// snapshot that writes one, so they are as large as a page may be,
    /// fewer pages to seal, index and list.
    pub fn whole() -> Self {
        GroupPager {
            cur: Vec::new(),
            whole: true,
        }
    }

    /// Adds an entry; returns the pages completed by it (zero, one or two).
    pub fn push(&mut self, e: GroupEntry) -> Vec<Vec<GroupEntry>> {
        let mut done = Vec::new();
        if self.cur.last().is_some_and(|l| l.u != e.u) {
            done.push(std::mem::take(&mut self.cur));
        }
        let b = !self.whole && u16::from_le_bytes([e.g[0], e.g[1]]).is_multiple_of(page_avg(&e.u));
        self.cur.push(e);
        if b || self.cur.len() >= GROUP_PAGE_MAX {
            done.push(std::mem::take(&mut self.cur));
        }
        done
    }

    pub fn finish(&mut self) -> Option<Vec<GroupEntry>> {
        if self.cur.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.cur))
        }
    }
}

/// The boundary modulus of a unit's group pages: [`EPOCH_PAGE_AVG`] for an
/// epoch unit, [`PERIOD_PAGE_AVG`] for a period unit (the unit label's
/// prefix, FORMAT 3.4, as the backup writes it).
fn page_avg(unit: &str) -> u16 {
    if unit.starts_with("epoch:") {
        EPOCH_PAGE_AVG
    } else {
        PERIOD_PAGE_AVG
    }
}

/// Cuts a stream of file records into pages at content-defined boundaries.
#[derive(Default)]
pub struct FilePager {
    cur: Vec<FileRecord>,
}

impl FilePager {
    pub fn push(&mut self, r: FileRecord) -> Option<Vec<FileRecord>> {
        let h = blake3::hash(r.entry.path.as_bytes());
        let b =
            u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]).is_multiple_of(FILE_PAGE_AVG);
        self.cur.push(r);
        if b || self.cur.len() >= FILE_PAGE_MAX {
            Some(std::mem::take(&mut self.cur))
        } else {
            None
        }
    }

    pub fn finish(&mut self) -> Option<Vec<FileRecord>> {
        if self.cur.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.cur))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8, subject: bool) -> GroupEntry {
        GroupEntry {
            g: [i; 8],
            s: subject.then_some(KeyId([i; 16])),
            t: KeyId([9; 16]),
            u: "period:consumption:2026-03".into(),
            rows: 3 + i as u64,
            bytes: 300 * i as u64,
            chunks: smallvec::smallvec![Id([i; 32]), Id([i + 1; 32])],
        }
    }

    fn group_page(i: u8) -> Page {
        Page::Groups {
            table: "calls".into(),
            groups: (0..5)
                .map(|j| entry(i.wrapping_mul(5).wrapping_add(j), j % 2 == 0))
                .collect(),
        }
    }

    /// A `file://` target in a new folder (kept while the folder lives)
    /// and a metadata key.
    fn local_target() -> (tempfile::TempDir, Arc<crate::target::Target>, MetaKey) {
        use crate::target::{S3Settings, Target};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let target = Target::open("t", &url, false, &S3Settings::default(), true).unwrap();
        let meta = MetaKey::new(&crate::crypto::Key32::random());
        (dir, Arc::new(target), meta)
    }

    #[tokio::test]
    async fn pages_that_lie_together_in_a_pack_are_read_at_once() {
        let (dir, target, meta) = local_target();
        let a: Vec<Page> = (0..20).map(group_page).collect();
        let b: Vec<Page> = (20..25).map(group_page).collect();
        let ids_a = store_pages(&target, &meta, &a).await.unwrap();
        let ids_b = store_pages(&target, &meta, &b).await.unwrap();
        let index = Index::load(&target, &meta).await.unwrap();
        // Room for one pack: both are fetched whole and verified, and the
        // first is pushed out by the second.
        let mut cache = PackCache::new(target.clone(), 1);
        PagesRead::fetch(&mut cache, &index, &ids_a[..1])
            .await
            .unwrap()
            .unwrap();
        PagesRead::fetch(&mut cache, &index, &ids_b[..1])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cache.reads, 2);
        // A page no index locates is given back, nothing read.
        let stray = Id([9; 32]);
        let missing = PagesRead::fetch(&mut cache, &index, &[ids_a[0], stray])
            .await
            .unwrap();
        assert!(matches!(missing, Err(id) if id == stray));
        assert_eq!(cache.reads, 2);

        // A window's pages: the first pack's in another order, one of the
        // second's among them. The first pack's are one read of a span (it
        // was verified, and is no longer cached), the second's come from
        // the cache.
        let mut ids: Vec<Id> = ids_a.iter().rev().copied().collect();
        ids.insert(7, ids_b[3]);
        let mut want: Vec<&Page> = a.iter().rev().collect();
        want.insert(7, &b[3]);
        let read = PagesRead::fetch(&mut cache, &index, &ids)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cache.reads, 3, "one read for the twenty pages of a pack");
        for (i, page) in want.iter().enumerate() {
            assert_eq!(&read.page(&meta, i).unwrap(), *page, "page {i}");
        }

        // A page whose bytes changed in the pack: the others still open,
        // it does not, and the error names it.
        let loc = *index.chunks.get(&ids_a[4]).unwrap();
        let (pack, _) = index.pack_of(&loc);
        let path = dir.path().join(super::super::pack::pack_path(&pack));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let read = PagesRead::fetch(&mut cache, &index, &ids_a)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.page(&meta, 3).unwrap(), a[3]);
        let e = read.page(&meta, 4).unwrap_err().to_string();
        assert!(e.contains(&format!("tree page {}", ids_a[4])), "{e}");
    }

    #[tokio::test]
    async fn a_few_pages_are_copied_out_of_their_pack_when_the_cache_says_so() {
        let (_dir, target, meta) = local_target();
        let a: Vec<Page> = (0..20).map(group_page).collect();
        let ids = store_pages(&target, &meta, &a).await.unwrap();
        let index = Index::load(&target, &meta).await.unwrap();
        let (pack, size) = index.pack_of(index.chunks.get(&ids[0]).unwrap());
        for copying in [true, false] {
            let mut cache = PackCache::new(target.clone(), 1);
            if copying {
                cache = cache.copying_out();
            }
            let one = PagesRead::fetch(&mut cache, &index, &ids[..1])
                .await
                .unwrap()
                .unwrap();
            let all = PagesRead::fetch(&mut cache, &index, &ids)
                .await
                .unwrap()
                .unwrap();
            // The pack as the cache holds it: the bytes the runs were cut
            // from.
            let whole = cache.pack(pack, size).await.unwrap();
            let within = |b: &Bytes| {
                let (p, q) = (whole.as_ptr() as usize, b.as_ptr() as usize);
                (p..p + whole.len()).contains(&q)
            };
            assert_eq!(within(&one.runs[0].0), !copying, "a page alone");
            assert!(within(&all.runs[0].0), "the pages of a whole pack");
            assert_eq!(one.page(&meta, 0).unwrap(), a[0]);
            for (i, page) in a.iter().enumerate() {
                assert_eq!(&all.page(&meta, i).unwrap(), page, "page {i}");
            }
        }
    }

    #[test]
    fn list_parts_end_at_page_id_boundaries_and_cover_every_page_once() {
        let id = |lo: u16, n: u8| {
            let mut b = [n; 32];
            b[..2].copy_from_slice(&lo.to_le_bytes());
            Id(b)
        };
        // 128 and 256 are boundaries, 64 is not.
        let pages = [
            id(1, 0),
            id(128, 1),
            id(64, 2),
            id(3, 3),
            id(256, 4),
            id(5, 5),
        ];
        let parts = list_parts(&pages);
        assert_eq!(parts, [&pages[..2], &pages[2..5], &pages[5..]]);
        // A change inside a part leaves the others as they were.
        let mut changed = pages;
        changed[3] = id(7, 9);
        let again = list_parts(&changed);
        assert_eq!((again[0], again[2]), (parts[0], parts[2]));
        assert_ne!(again[1], parts[1]);
        // No boundary: parts of LIST_PART_MAX.
        let long: Vec<Id> = (0..LIST_PART_MAX * 2 + 3).map(|i| id(1, i as u8)).collect();
        let lens: Vec<usize> = list_parts(&long).iter().map(|p| p.len()).collect();
        assert_eq!(lens, [LIST_PART_MAX, LIST_PART_MAX, 3]);
        assert!(list_parts(&[]).is_empty());
    }

    #[test]
    fn list_page_round_trips_and_rejects_garbage() {
        let meta = MetaKey::new(&crate::crypto::Key32::from_bytes([7; 32]));
        let pages: Vec<Id> = (0..5u8).map(|i| Id([i; 32])).collect();
        let (id, plain) = list_page(&meta, &pages);
        let sealed = seal_list(&meta, &id, &plain);
        assert_eq!(open_list("x", &id, &meta, &sealed).unwrap(), pages);
        assert_eq!(decode_list(&encode_list(&[])).unwrap(), Vec::<Id>::new());
        // Another id, a page, a short or padded body, a lying count.
        assert!(open_list("x", &Id([1; 32]), &meta, &sealed).is_err());
        let b = encode_list(&pages);
        for n in 0..b.len() {
            assert!(decode_list(&b[..n]).is_err(), "cut at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_list(&long).is_err());
        let mut lying = b.clone();
        lying[2] = 4;
        assert!(decode_list(&lying).is_err());
        let group = Page::Groups {
            table: "t".into(),
            groups: vec![entry(1, true)],
        };
        assert!(decode_list(&group.encode()).is_err());
        assert!(Page::decode(&b).is_err(), "a list is not a page");
    }

    #[test]
    fn a_page_of_short_chunk_ids_writes_16_bytes_an_id_and_reads_them_back() {
        let short = |i: u8| Id::short_chunk_id(&[i; 32]);
        let mut groups = vec![entry(1, true), entry(2, false)];
        for g in &mut groups {
            g.chunks = g.chunks.iter().map(|c| short(c.0[0])).collect();
        }
        let p = Page::Groups {
            table: "cdrs".into(),
            groups: groups.clone(),
        };
        let b = p.encode();
        assert_eq!(b[1] as u32, GROUP_PAGE_SHORT);
        assert_eq!(Page::decode(&b).unwrap(), p);
        let mut seen = Vec::new();
        scan_groups(&b, |_, g| seen.push(g.chunks().collect::<Vec<_>>())).unwrap();
        assert_eq!(
            seen,
            groups.iter().map(|g| g.chunks.to_vec()).collect::<Vec<_>>()
        );
        for n in 0..b.len() {
            assert!(
                Page::decode(&b[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        // The same groups with version 1 ids: 16 bytes more an id.
        let long = Page::Groups {
            table: "cdrs".into(),
            groups: vec![entry(1, true), entry(2, false)],
        };
        let lb = long.encode();
        assert_eq!(lb[1] as u32, PAGE_VERSION);
        assert_eq!(lb.len(), b.len() + 4 * 16);
        // One version 1 id among short ones: the page is version 1.
        groups[1].chunks[0] = Id([7; 32]);
        let mixed = Page::Groups {
            table: "cdrs".into(),
            groups,
        };
        let mb = mixed.encode();
        assert_eq!(mb[1] as u32, PAGE_VERSION);
        assert_eq!(Page::decode(&mb).unwrap(), mixed);
        // A version this build does not know is refused by name.
        let mut unknown = b.clone();
        unknown[1] = 3;
        assert_eq!(Page::decode(&unknown).unwrap_err(), "group page version 3");
    }

    #[test]
    fn group_page_round_trips_and_rejects_garbage() {
        let p = Page::Groups {
            table: "cdrs".into(),
            groups: vec![entry(1, true), entry(2, false)],
        };
        let b = p.encode();
        assert_eq!(Page::decode(&b).unwrap(), p);
        for n in 0..b.len() {
            assert!(
                Page::decode(&b[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Page::decode(&long).is_err());
        // An absurd declared count is refused without allocating it.
        let mut absurd = b"G\x01".to_vec();
        absurd.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Page::decode(&absurd).is_err());
    }

    /// An entry of `unit` whose tag starts with `tag` (u16 LE).
    fn tagged(tag: u16, unit: &str) -> GroupEntry {
        let mut e = entry(1, true);
        e.g[..2].copy_from_slice(&tag.to_le_bytes());
        e.u = unit.into();
        e
    }

    /// Feeds the entries and returns each page's (unit, tags).
    fn pages_of(entries: Vec<GroupEntry>) -> Vec<(String, Vec<u16>)> {
        let mut pager = GroupPager::default();
        let mut pages: Vec<Vec<GroupEntry>> = Vec::new();
        for e in entries {
            pages.extend(pager.push(e));
        }
        pages.extend(pager.finish());
        pages
            .iter()
            .map(|p| {
                assert!(p.iter().all(|e| e.u == p[0].u), "a page spans two units");
                let tags = p.iter().map(|e| u16::from_le_bytes([e.g[0], e.g[1]]));
                (p[0].u.to_string(), tags.collect())
            })
            .collect()
    }

    #[test]
    fn pages_end_at_tag_boundaries_smaller_in_epoch_units() {
        let (epoch, month) = ("epoch:service:2026-Q1", "period:consumption:2026-03");
        // 8 divides 24 but 16 and 64 do not: a boundary in an epoch unit
        // only.
        let tags = [1, 24, 2, 128, 3];
        let pages = pages_of(tags.iter().map(|&t| tagged(t, epoch)).collect());
        assert_eq!(
            pages,
            [
                (epoch.into(), vec![1, 24]),
                (epoch.into(), vec![2, 128]),
                (epoch.into(), vec![3])
            ]
        );
        let pages = pages_of(tags.iter().map(|&t| tagged(t, month)).collect());
        assert_eq!(
            pages,
            [(month.into(), vec![1, 24, 2, 128]), (month.into(), vec![3])]
        );
        // A new unit starts a page; a page holds at most GROUP_PAGE_MAX groups.
        let mut entries = vec![tagged(1, epoch), tagged(2, month)];
        entries.extend((0..GROUP_PAGE_MAX + 1).map(|_| tagged(1, month)));
        let pages = pages_of(entries);
        let lens: Vec<usize> = pages.iter().map(|(_, t)| t.len()).collect();
        assert_eq!(lens, [1, GROUP_PAGE_MAX, 2]);
        assert_eq!((pages[0].0.as_str(), pages[1].0.as_str()), (epoch, month));
    }

    #[test]
    fn scanning_a_group_page_sees_what_decoding_gives() {
        let groups = vec![entry(1, true), entry(2, false), entry(3, true)];
        let b = encode_groups("cdrs", &groups);
        let mut seen = Vec::new();
        let head = scan_groups(&b, |head, g| {
            seen.push(GroupEntry {
                g: g.g,
                s: g.s,
                t: head.t,
                u: head.unit.into(),
                rows: g.rows,
                bytes: g.bytes,
                chunks: g.chunks().collect(),
            })
        })
        .unwrap();
        assert_eq!((head.table, head.count), ("cdrs", 3));
        assert_eq!(seen, groups);
        // A file page, or a page of another version, is not a group page.
        let files = Page::Files {
            version: PAGE_VERSION,
            files: Vec::new(),
        };
        assert!(scan_groups(&files.encode(), |_, _| {}).is_err());
        let mut other = b.clone();
        other[1] = 2;
        assert!(scan_groups(&other, |_, _| {}).is_err());
    }

    fn gone(e: &GroupEntry) -> GroupEntry {
        GroupEntry {
            rows: 0,
            bytes: 0,
            chunks: ChunkIds::new(),
            ..e.clone()
        }
    }

    fn changed(e: &GroupEntry) -> GroupEntry {
        GroupEntry {
            rows: e.rows + 1,
            chunks: smallvec::smallvec![Id([0xee; 32])],
            ..e.clone()
        }
    }

    fn tags(v: &[GroupEntry]) -> Vec<(u8, u64)> {
        v.iter().map(|g| (g.g[0], g.rows)).collect()
    }

    #[test]
    fn overlays_stand_for_the_groups_they_name_newest_first() {
        let base: Vec<GroupEntry> = (1..=5).map(|i| entry(i, i % 2 == 0)).collect();
        // Overlay 1 changes group 2 and deletes group 3; overlay 2 changes
        // group 2 again, brings group 3 back and adds group 9.
        let o1 = vec![changed(&base[1]), gone(&base[2])];
        let o2 = vec![changed(&changed(&base[1])), base[2].clone(), entry(9, true)];
        let mut all: Vec<GroupEntry> = base.iter().chain(&o1).chain(&o2).cloned().collect();
        let mut superseded = Vec::new();
        apply_overlays(
            &mut all,
            &[5, 7],
            |g| g,
            |g| superseded.push((g.g[0], g.rows)),
        )
        .unwrap();
        assert_eq!(
            tags(&all),
            [(1, 4), (4, 7), (5, 8), (2, 7), (3, 6), (9, 12)]
        );
        assert_eq!(
            all[..3],
            [base[0].clone(), base[3].clone(), base[4].clone()]
        );
        assert_eq!(all[3..], [o2[0].clone(), base[2].clone(), entry(9, true)]);
        assert_eq!(superseded, [(2, 5), (3, 6), (2, 6), (3, 0)]);

        // Only the first overlay: group 3 is gone, group 2 changed once.
        let mut one: Vec<GroupEntry> = base.iter().chain(&o1).cloned().collect();
        apply_overlays(&mut one, &[5], |g| g, |_| ()).unwrap();
        assert_eq!(tags(&one), [(1, 4), (4, 7), (5, 8), (2, 6)]);

        // No overlay: the entries stand as they are.
        let mut none = base.clone();
        apply_overlays(&mut none, &[], |g| g, |_| ()).unwrap();
        assert_eq!(none, base);
        // An overlay of the whole window (no base) is its groups.
        let mut whole = base.clone();
        apply_overlays(&mut whole, &[0], |g| g, |_| ()).unwrap();
        assert_eq!(whole, base);
    }

    #[test]
    fn overlays_stand_for_their_own_key_only_however_it_hashes() {
        // The same tag and time key; no subject, and a subject id of the
        // bytes a missing one hashes as: two groups, not one.
        let none = entry(1, false);
        let some = GroupEntry {
            s: Some(KeyId([0xff; 16])),
            rows: 9,
            ..none.clone()
        };
        let mut all = vec![none.clone(), some.clone()];
        let mut superseded = 0;
        apply_overlays(&mut all, &[1], |g| g, |_| superseded += 1).unwrap();
        assert_eq!(all, [none, some]);
        assert_eq!(superseded, 0);
    }

    #[test]
    fn overlays_that_name_a_group_twice_or_delete_in_the_base_are_refused() {
        let base: Vec<GroupEntry> = (1..=3).map(|i| entry(i, true)).collect();
        let mut twice: Vec<GroupEntry> = base
            .iter()
            .cloned()
            .chain([changed(&base[0]), gone(&base[0])])
            .collect();
        let e = apply_overlays(&mut twice, &[3], |g| g, |_| ()).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // The same group in two overlays is what overlays are for.
        let mut two: Vec<GroupEntry> = base
            .iter()
            .cloned()
            .chain([changed(&base[0]), gone(&base[0])])
            .collect();
        apply_overlays(&mut two, &[3, 4], |g| g, |_| ()).unwrap();
        assert_eq!(tags(&two), [(2, 5), (3, 6)]);
        let mut deleted_base = vec![gone(&base[0]), base[1].clone()];
        let e = apply_overlays(&mut deleted_base, &[], |g| g, |_| ()).unwrap_err();
        assert!(e.contains("no rows"), "{e}");
        let mut unordered = base.clone();
        assert!(apply_overlays(&mut unordered, &[2, 1], |g| g, |_| ()).is_err());
        assert!(apply_overlays(&mut unordered, &[4], |g| g, |_| ()).is_err());
    }
}
