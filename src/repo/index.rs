//! Index objects: `index/<pack id>`, one per pack, written right after the
//! pack. They say where each chunk lies, so a backup knows which chunks are
//! stored (dedup) and a restore fetches byte ranges.
//!
//! Sealed body (MetaKey, kind "index", name = pack id hex; FORMAT 3.3):
//! ```text
//! "CIDX" | version u8 | pack id [32] | pack size u64 LE | entry table
//! version 2 (written): count u32 LE | count × (id prefix [16] | gap zigzag varint
//!                                               | sealed len varint | raw len varint)
//! version 1 (read):    count u32 LE | count × (chunk id [32] | offset u32 LE
//!                                               | sealed len u32 LE | raw len u32 LE)
//! ```
//! A version 2 entry's offset is the previous entry's end (the first's:
//! the pack's data start) plus its gap, so blobs written back to back cost
//! one byte of offset. A pack's header holds the same entry table, of the
//! pack's version.

use super::{put_varint, take_varint, RepoError};
use crate::crypto::{Id, MetaKey};
use crate::target::Target;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Bytes of a version 1 entry: a whole chunk id and three u32.
pub const ENTRY_LEN_V1: usize = 44;
/// Fewest bytes of a version 2 entry: the id prefix and three one-byte
/// varints.
const ENTRY_MIN_V2: usize = 19;
/// The entry-table version this build writes (index objects and pack
/// headers); it reads 1 and 2.
pub const ENTRIES_VERSION: u8 = 2;
/// Where a pack's first blob starts ("CUSTOSPK" and the version byte): the
/// base of a version 2 table's first gap.
const DATA_START: u64 = 9;

/// One blob of a pack: the first 16 bytes of its id (FORMAT 3.3: ids are
/// keyed BLAKE3 outputs, so a prefix names one chunk of a repository with
/// a collision chance below 2^-65 even at 2^32 chunks, and every reader
/// checks what it opens against the whole id it asked for), where it lies,
/// and its plaintext length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: [u8; 16],
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

impl IndexEntry {
    pub fn new(id: &Id, offset: u32, len: u32, raw_len: u32) -> IndexEntry {
        IndexEntry {
            key: id.0[..16].try_into().expect("16 bytes"),
            offset,
            len,
            raw_len,
        }
    }

    /// Whether this entry is the chunk `id`'s (its prefix matches).
    pub fn names(&self, id: &Id) -> bool {
        self.key == id.0[..16]
    }

    /// The entry's key as the in-memory index keeps it ([`key_of`]).
    pub fn key(&self) -> u128 {
        u128::from_be_bytes(self.key)
    }

    /// One entry of a version 1 table ([`ENTRY_LEN_V1`] bytes).
    fn decode_v1(e: &[u8]) -> IndexEntry {
        let u = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().expect("4 bytes"));
        IndexEntry {
            key: e[..16].try_into().expect("16 bytes"),
            offset: u(32),
            len: u(36),
            raw_len: u(40),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub pack: Id,
    pub pack_size: u64,
    pub entries: Vec<IndexEntry>,
}

pub fn index_path(pack: &Id) -> String {
    format!("index/{}", pack.to_hex())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

impl IndexFile {
    /// Appends the entry table (version [`ENTRIES_VERSION`]: a count, then
    /// the entries) to `out`. Entries may be in any order; custos writes
    /// them in offset order, where each gap is 0.
    pub(crate) fn encode_entries_into(entries: &[IndexEntry], out: &mut Vec<u8>) {
        out.reserve(4 + entries.len() * 22);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        let mut end = DATA_START as i64;
        for e in entries {
            out.extend_from_slice(&e.key);
            put_varint(out, zigzag(i64::from(e.offset) - end));
            put_varint(out, u64::from(e.len));
            put_varint(out, u64::from(e.raw_len));
            end = i64::from(e.offset) + i64::from(e.len);
        }
    }

    /// Decodes an entry table of `version` (1 or 2), calling `each` with
    /// every entry in order. Refuses a count the bytes cannot hold, a
    /// truncated or overlong table, and (version 2) an offset or length
    /// beyond 32 bits.
    pub(crate) fn for_each_entry(
        object: &str,
        version: u8,
        b: &[u8],
        mut each: impl FnMut(IndexEntry) -> Result<(), RepoError>,
    ) -> Result<usize, RepoError> {
        if b.len() < 4 {
            return Err(RepoError::malformed(object, "entry table truncated"));
        }
        let count = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        let body = &b[4..];
        let declares = |holds: &str| {
            RepoError::malformed(
                object,
                format!("entry table declares {count} entries but holds {holds}"),
            )
        };
        match version {
            1 => {
                if body.len() != count.saturating_mul(ENTRY_LEN_V1) {
                    return Err(declares(&format!("{} bytes", b.len())));
                }
                for e in body.chunks_exact(ENTRY_LEN_V1) {
                    each(IndexEntry::decode_v1(e))?;
                }
            }
            2 => {
                if body.len() < count.saturating_mul(ENTRY_MIN_V2) {
                    return Err(declares(&format!("{} bytes", b.len())));
                }
                let mut at = 0usize;
                let mut end = DATA_START as i64;
                let bad = |why: &str| RepoError::malformed(object, format!("entry table: {why}"));
                let u32_of = |v: u64, what: &str| {
                    u32::try_from(v).map_err(|_| bad(&format!("{what} beyond 32 bits")))
                };
                for _ in 0..count {
                    let Some(key) = body.get(at..at + 16) else {
                        return Err(bad("truncated"));
                    };
                    at += 16;
                    let gap = take_varint(body, &mut at).map_err(bad)?;
                    let len = u32_of(take_varint(body, &mut at).map_err(bad)?, "length")?;
                    let raw_len = u32_of(take_varint(body, &mut at).map_err(bad)?, "raw length")?;
                    let offset = end
                        .checked_add(unzigzag(gap))
                        .and_then(|o| u32::try_from(o).ok())
                        .ok_or_else(|| bad("offset beyond 32 bits"))?;
                    end = i64::from(offset) + i64::from(len);
                    each(IndexEntry {
                        key: key.try_into().expect("16 bytes"),
                        offset,
                        len,
                        raw_len,
                    })?;
                }
                if at != body.len() {
                    return Err(declares("more bytes"));
                }
            }
            v => {
                return Err(RepoError::malformed(
                    object,
                    format!("entry table version {v}"),
                ))
            }
        }
        Ok(count)
    }

    fn decode_entries(object: &str, version: u8, b: &[u8]) -> Result<Vec<IndexEntry>, RepoError> {
        // Room for the entries the table declares, but no more than its
        // bytes can hold (a hostile count is refused by the decoder), so
        // the vector is not grown by doubling: half its capacity would
        // stay allocated beside the entries while the object is kept.
        let declared = b
            .get(..4)
            .map_or(0, |c| u32::from_le_bytes(c.try_into().unwrap()) as usize);
        let mut out = Vec::with_capacity(declared.min(b.len() / ENTRY_MIN_V2));
        Self::for_each_entry(object, version, b, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// A version 1 entry table of whole ids `(id, offset, sealed len, raw
    /// len)`, as earlier builds wrote one (tests of the readers).
    #[cfg(test)]
    pub(crate) fn v1_table(entries: &[(Id, u32, u32, u32)]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_le_bytes().to_vec();
        for (id, offset, len, raw) in entries {
            out.extend_from_slice(&id.0);
            for v in [offset, len, raw] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// The plaintext of the index object (what [`store`](Self::store)
    /// seals, encoded there after room for the nonce).
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.entries.len() * 22);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"CIDX");
        out.push(ENTRIES_VERSION);
        out.extend_from_slice(&self.pack.0);
        out.extend_from_slice(&self.pack_size.to_le_bytes());
        Self::encode_entries_into(&self.entries, out);
    }

    /// Decodes an index object of version 1 or 2.
    pub fn decode(object: &str, b: &[u8]) -> Result<IndexFile, RepoError> {
        let (pack, pack_size) = Self::header(object, b)?;
        let entries = Self::decode_entries(object, b[4], &b[45..])?;
        for e in &entries {
            Self::within(object, pack_size, e)?;
        }
        Ok(IndexFile {
            pack,
            pack_size,
            entries,
        })
    }

    /// Checks an index object as [`decode`](Self::decode) does without
    /// keeping its entries: its pack, the pack's size and how many entries
    /// it holds.
    pub fn summary(object: &str, b: &[u8]) -> Result<(Id, u64, usize), RepoError> {
        let (pack, pack_size) = Self::header(object, b)?;
        let count = Self::for_each_entry(object, b[4], &b[45..], |e| {
            Self::within(object, pack_size, &e)
        })?;
        Ok((pack, pack_size, count))
    }

    /// The pack and its size, from an index object's header (magic and
    /// version checked).
    fn header(object: &str, b: &[u8]) -> Result<(Id, u64), RepoError> {
        if b.len() < 45 || &b[..4] != b"CIDX" {
            return Err(RepoError::malformed(object, "not an index (bad magic)"));
        }
        if !(1..=ENTRIES_VERSION).contains(&b[4]) {
            return Err(RepoError::malformed(
                object,
                format!("index version {}", b[4]),
            ));
        }
        let pack = Id(b[5..37].try_into().unwrap());
        let pack_size = u64::from_le_bytes(b[37..45].try_into().unwrap());
        Ok((pack, pack_size))
    }

    fn within(object: &str, pack_size: u64, e: &IndexEntry) -> Result<(), RepoError> {
        if e.offset as u64 + e.len as u64 > pack_size {
            return Err(RepoError::malformed(object, "entry beyond the pack's size"));
        }
        Ok(())
    }

    /// Writes the index object (version [`ENTRIES_VERSION`]); returns its
    /// size in bytes.
    pub async fn store(&self, target: &Target, meta: &MetaKey) -> Result<u64, RepoError> {
        let name = self.pack.to_hex();
        // Encoded after room for the nonce and sealed in place: one buffer.
        let mut sealed =
            Vec::with_capacity(MetaKey::NONCE_ROOM + 48 + self.entries.len() * 22 + 16);
        sealed.extend_from_slice(&[0; MetaKey::NONCE_ROOM]);
        self.encode_into(&mut sealed);
        meta.seal_tail("index", &name, &mut sealed, 0);
        let bytes = sealed.len() as u64;
        target.put(&index_path(&self.pack), sealed.into()).await?;
        Ok(bytes)
    }
}

/// Where one chunk lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

/// Chunk id → location, as one sorted vector of 32-byte entries (no hash
/// table overhead), so millions of chunks fit in a bounded budget.
///
/// An entry keeps the first 16 bytes of the id, not all 32: ids are keyed
/// BLAKE3 outputs, so two different chunks share a 128-bit prefix with
/// probability below 2^-65 even at 2^32 chunks. Every reader checks what it
/// opens against the whole id it asked for (a chunk's content must hash to
/// it), so such a collision would surface as an integrity error, never as
/// wrong data.
///
/// A *membership* map ([`Index::load_membership`], for a backup) keeps only
/// the sorted keys with the pack each is in, 20 bytes a chunk, and the
/// locations of the few ids named at load (the parent's tree pages): a
/// backup asks of every other chunk only whether it is stored, and where
/// (which pack, for the read window's pack list, FORMAT 3.5).
#[derive(Default)]
pub struct ChunkMap {
    /// Sorted keys with their locations (a full map).
    entries: Vec<(u128, ChunkLoc)>,
    /// Sorted keys with their packs (a membership map).
    keys: Vec<Member>,
    /// In a membership map: the locations of the ids named at load.
    located: HashMap<u128, ChunkLoc>,
    /// In a membership map, while loading: the keys to keep locations of.
    wanted: HashSet<u128>,
    membership: bool,
    sorted: bool,
    /// Where the entries of each bucket of keys start. Ids are uniform, so
    /// a bucket holds about four entries (two cache lines) and a lookup is
    /// a short scan, not a binary search, for about one byte of bucket
    /// table per entry.
    buckets: Buckets,
}

/// An entry of a membership map: a key ([`key_of`], as bytes so that an
/// entry is 20 bytes, not 32 with a `u128`'s alignment) and its pack's
/// position in [`Index::packs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Member {
    key: [u8; 16],
    pack: u32,
}

impl Member {
    fn key(&self) -> u128 {
        u128::from_be_bytes(self.key)
    }
}

/// The in-memory key of an id: its first 16 bytes, big-endian, so keys
/// sort as the ids do.
pub fn key_of(id: &Id) -> u128 {
    u128::from_be_bytes(id.0[..16].try_into().unwrap())
}

fn top_bits(key: u128, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (key >> (128 - bits)) as usize
    }
}

/// Where each bucket of sorted keys starts, a bucket being the keys that
/// share their top bits: for keys spread uniformly (chunk ids, group
/// tags) a bucket holds about four, so a look-up reads where its bucket
/// starts and scans a cache line or two ([`find_in_bucket`]) instead of
/// searching the whole list by halves. Keys are given left-aligned in a
/// `u128` (a shorter key in its top bits).
#[derive(Default)]
pub(crate) struct Buckets {
    /// `starts[p]`: the first key whose top `bits` bits are at least `p`;
    /// then the number of keys.
    starts: Vec<u32>,
    bits: u32,
}

impl Buckets {
    /// The buckets of `n` sorted keys, `key(i)` being the `i`th.
    pub(crate) fn new(n: usize, key: impl Fn(usize) -> u128) -> Buckets {
        // About four keys a bucket: 2^bits ≥ n / 4.
        let bits = if n < 8 {
            0
        } else {
            (usize::BITS - (n / 4 - 1).leading_zeros()).min(28)
        };
        let nb = 1usize << bits;
        let mut starts = Vec::with_capacity(nb + 1);
        let mut i = 0usize;
        for p in 0..nb {
            while i < n && top_bits(key(i), bits) < p {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(n as u32);
        Buckets { starts, bits }
    }

    /// The positions of the keys in `key`'s bucket, from and to.
    pub(crate) fn of(&self, key: u128) -> (u32, u32) {
        let p = top_bits(key, self.bits);
        (self.starts[p], self.starts[p + 1])
    }

    fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4
    }
}

/// Where the item whose key is `key` is in `bucket`, sorted by key. A
/// bucket of uniform keys holds a few and is scanned; but stored objects
/// can name any keys, and a bucket of many (keys alike in their top bits)
/// is searched by halves: a scan made every look-up in it linear.
pub(crate) fn find_in_bucket<T, K: Ord>(
    bucket: &[T],
    key: K,
    key_of: impl Fn(&T) -> K,
) -> Option<usize> {
    const SCANNED: usize = 16;
    if bucket.len() <= SCANNED {
        bucket.iter().position(|e| key_of(e) == key)
    } else {
        bucket.binary_search_by_key(&key, key_of).ok()
    }
}

/// Sorts `v` with `sort`, on two threads when it is long: the items are
/// first split in place by `high` (the key's top bit: ids are uniform, so
/// about half each side), then each side is sorted on its own thread.
fn sort_on_two_threads<T: Send>(
    v: &mut [T],
    high: impl Fn(&T) -> bool,
    sort: impl Fn(&mut [T]) + Sync,
) {
    if v.len() < 1 << 16 {
        return sort(v);
    }
    let (mut i, mut j) = (0, v.len());
    loop {
        while i < j && !high(&v[i]) {
            i += 1;
        }
        while i < j && high(&v[j - 1]) {
            j -= 1;
        }
        if i >= j {
            break;
        }
        v.swap(i, j - 1);
        i += 1;
        j -= 1;
    }
    let (low, upper) = v.split_at_mut(i);
    std::thread::scope(|s| {
        s.spawn(|| sort(upper));
        sort(low);
    });
}

impl ChunkMap {
    fn push(&mut self, key: u128, loc: ChunkLoc) {
        if self.membership {
            self.keys.push(Member {
                key: key.to_be_bytes(),
                pack: loc.pack,
            });
            if self.wanted.contains(&key) {
                self.located.insert(key, loc);
            }
        } else {
            self.entries.push((key, loc));
        }
        self.sorted = false;
    }

    fn key_at(&self, i: usize) -> u128 {
        if self.membership {
            self.keys[i].key()
        } else {
            self.entries[i].0
        }
    }

    /// Sorts by id; of several locations of one id (a chunk stored twice)
    /// keeps one, any being a valid copy.
    fn seal(&mut self) {
        if !self.sorted {
            if self.membership {
                sort_on_two_threads(
                    &mut self.keys,
                    |m| m.key[0] >> 7 == 1,
                    |half| half.sort_unstable_by_key(Member::key),
                );
                self.keys.dedup_by(|b, a| a.key == b.key);
                self.keys.shrink_to_fit();
                self.wanted = HashSet::new();
            } else {
                sort_on_two_threads(
                    &mut self.entries,
                    |e| e.0 >> 127 == 1,
                    |half| half.sort_unstable_by_key(|e| e.0),
                );
                self.entries.dedup_by(|b, a| a.0 == b.0);
                self.entries.shrink_to_fit();
            }
            self.sorted = true;
        }
        self.buckets = Buckets::new(self.len(), |i| self.key_at(i));
    }

    /// Where a chunk lies. In a membership map, only the ids named at load
    /// have a location.
    pub fn get(&self, id: &Id) -> Option<&ChunkLoc> {
        if self.membership {
            return self.located.get(&key_of(id));
        }
        self.position(id).map(|i| &self.entries[i].1)
    }

    /// The position of `key` among the entries `a..b` (its bucket).
    fn find(&self, key: u128, a: usize, b: usize) -> Option<usize> {
        let found = if self.membership {
            find_in_bucket(&self.keys[a..b], key, Member::key)
        } else {
            find_in_bucket(&self.entries[a..b], key, |e| e.0)
        };
        found.map(|i| a + i)
    }

    /// The entry's position (0..len), e.g. for a bitset of checked chunks.
    pub fn position(&self, id: &Id) -> Option<usize> {
        debug_assert!(self.sorted || self.is_empty());
        if self.is_empty() {
            return None;
        }
        let key = key_of(id);
        let (a, b) = self.buckets.of(key);
        self.find(key, a as usize, b as usize)
    }

    /// The positions of many ids, as [`ChunkMap::position`] gives each, into
    /// `out` (cleared first). Every id's bucket is read before any entry is
    /// compared: the reads do not depend on each other, so their cache
    /// misses overlap instead of queueing one behind the other.
    pub fn positions(&self, ids: &[Id], out: &mut Vec<Option<usize>>) {
        out.clear();
        if self.is_empty() {
            out.resize(ids.len(), None);
            return;
        }
        self.each_bucket_range(ids, |ranges| {
            out.extend(
                ranges
                    .iter()
                    .map(|&(key, a, b)| self.find(key, a as usize, b as usize)),
            )
        });
    }

    /// The locations of many ids, as [`ChunkMap::get`] gives each, appended
    /// to `out`. In a full map the buckets are read first, as in
    /// [`ChunkMap::positions`], and each location is taken from the entry
    /// just compared (a second look-up would miss the cache again).
    pub fn locs<'a>(&self, ids: impl IntoIterator<Item = &'a Id>, out: &mut Vec<Option<ChunkLoc>>) {
        if self.membership || self.is_empty() {
            out.extend(ids.into_iter().map(|id| self.get(id).copied()));
            return;
        }
        self.each_bucket_range(ids, |ranges| {
            out.extend(ranges.iter().map(|&(key, a, b)| {
                self.find(key, a as usize, b as usize)
                    .map(|i| self.entries[i].1)
            }))
        });
    }

    /// Each id's key with the range of entries its bucket spans, handed to
    /// `each` [`RANGES_AT_ONCE`] ids at a time, in order. The buckets of a
    /// batch are all read before `each` compares any entry, so that their
    /// cache misses overlap; the batch is on the stack, not a list made
    /// (and faulted in) for every call.
    fn each_bucket_range<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a Id>,
        mut each: impl FnMut(&[(u128, u32, u32)]),
    ) {
        debug_assert!(self.sorted);
        let mut ranges = [(0u128, 0u32, 0u32); RANGES_AT_ONCE];
        let mut n = 0;
        for id in ids {
            let key = key_of(id);
            let (a, b) = self.buckets.of(key);
            ranges[n] = (key, a, b);
            n += 1;
            if n == RANGES_AT_ONCE {
                each(&ranges);
                n = 0;
            }
        }
        each(&ranges[..n]);
    }

    /// The location of the entry at `pos` (from [`ChunkMap::position`]),
    /// so that a caller needing both does one lookup, not two. Full maps
    /// only.
    pub fn loc_at(&self, pos: usize) -> &ChunkLoc {
        assert!(!self.membership, "a membership map holds no locations");
        &self.entries[pos].1
    }

    pub fn contains_key(&self, id: &Id) -> bool {
        self.position(id).is_some()
    }

    /// The pack of the entry at `pos` (from [`ChunkMap::position`]).
    pub fn pack_at(&self, pos: usize) -> u32 {
        if self.membership {
            self.keys[pos].pack
        } else {
            self.entries[pos].1.pack
        }
    }

    /// The pack a chunk is in (its position in [`Index::packs`]), in a full
    /// map or a membership map alike.
    pub fn pack(&self, id: &Id) -> Option<u32> {
        self.position(id).map(|i| self.pack_at(i))
    }

    pub fn len(&self) -> usize {
        if self.membership {
            self.keys.len()
        } else {
            self.entries.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the map (entries or keys and the bucket table), for
    /// reports.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u128, ChunkLoc)>()
            + self.keys.capacity() * std::mem::size_of::<Member>()
            + self.located.capacity() * 48
            + self.buckets.heap_bytes()
    }
}

impl std::ops::Index<&Id> for ChunkMap {
    type Output = ChunkLoc;
    fn index(&self, id: &Id) -> &ChunkLoc {
        self.get(id).expect("chunk id in the index")
    }
}

const _: () = assert!(std::mem::size_of::<Member>() == 20);

/// Ids whose buckets [`ChunkMap::each_bucket_range`] reads ahead of
/// comparing their entries: enough misses in flight to overlap them all,
/// in 8 KiB of stack.
const RANGES_AT_ONCE: usize = 256;

/// A small set of packs (positions in [`Index::packs`], or packs a backup
/// writes), each once, in the order first added: the packs of a read
/// window's or a tree page's blobs (FORMAT 3.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackSet(pub Vec<u32>);

impl PackSet {
    pub fn add(&mut self, pack: u32) {
        if self.0.last() != Some(&pack) && !self.0.contains(&pack) {
            self.0.push(pack);
        }
    }

    pub fn merge(&mut self, other: &PackSet) {
        for &p in &other.0 {
            self.add(p);
        }
    }
}

/// Index objects read one pack at a time, for a reader that knows which
/// packs it needs (a restore: each read window of a snapshot lists its
/// packs, FORMAT 3.5), the most recently used kept up to a budget of
/// entries. Memory follows the window, not the repository.
pub struct IndexObjects {
    target: Arc<Target>,
    meta: Arc<MetaKey>,
    kept: std::collections::VecDeque<Arc<IndexFile>>,
    /// The index the last call built.
    last: Option<Arc<PacksIndex>>,
    kept_entries: usize,
    budget: usize,
    /// Whether an index built keeps the objects it was built from
    /// ([`PacksIndex::files`]); see [`IndexObjects::with_files`].
    with_files: bool,
    /// Index objects fetched (cache misses), for reports and tests.
    pub fetched: u64,
    /// Indexes built, and given again (see [`IndexObjects::index_of`]).
    pub built: u64,
    pub reused: u64,
}

/// An index of some packs (see [`IndexObjects::index_of`]).
pub struct PacksIndex {
    pub index: Arc<Index>,
    /// The index objects it was built from, if asked for
    /// ([`IndexObjects::with_files`]): the index's pack `i` is `files[i]`'s.
    /// Empty otherwise.
    pub files: Vec<Arc<IndexFile>>,
    /// The packs asked for, sorted, each once.
    packs: Vec<Id>,
}

/// Index entries a restore or a check keeps from one read window to the
/// next (consecutive windows share packs): about 28 MiB at most.
pub const KEPT_INDEX_ENTRIES: usize = 1 << 20;

/// A window naming more packs than this is read through the whole index
/// instead (a hostile snapshot could name any number).
pub const MAX_WINDOW_PACKS: usize = 4096;

impl IndexObjects {
    /// `budget`: entries kept across calls (28 bytes each in memory).
    pub fn new(target: Arc<Target>, meta: Arc<MetaKey>, budget: usize) -> Self {
        IndexObjects {
            target,
            meta,
            kept: Default::default(),
            last: None,
            kept_entries: 0,
            budget,
            with_files: false,
            fetched: 0,
            built: 0,
            reused: 0,
        }
    }

    /// Indexes built keep the index objects they were built from
    /// ([`PacksIndex::files`], for a reader of the entries as stored).
    /// Without, the objects of a window's packs beyond the budget are
    /// freed once merged: the index holds their entries already, so a
    /// window listing many packs no longer holds them twice.
    pub fn with_files(mut self) -> Self {
        self.with_files = true;
        self
    }

    /// An index of just `packs` (duplicates ignored). A pack whose index
    /// object is gone (a shred deleted it with its pack) is left out, and
    /// so is one whose object is unreadable, named in `broken` as
    /// [`Index::load`] does: a lookup of their chunks then fails, and the
    /// caller decides.
    ///
    /// If every pack asked for was in the last call's packs, the last index
    /// is given again: consecutive read windows often list the same packs,
    /// and an index of more packs locates as well.
    pub async fn index_of(&mut self, packs: &[Id]) -> Result<Arc<PacksIndex>, RepoError> {
        if let Some(last) = &self.last {
            if packs.iter().all(|p| last.packs.binary_search(p).is_ok()) {
                self.reused += 1;
                return Ok(last.clone());
            }
        }
        self.last = None;
        let mut asked = packs.to_vec();
        asked.sort_unstable();
        asked.dedup();
        let (index, mut files) = self.build(&asked).await?;
        if !self.with_files {
            files = Vec::new();
        }
        self.built += 1;
        let built = Arc::new(PacksIndex {
            index: Arc::new(index),
            files,
            packs: asked,
        });
        self.last = Some(built.clone());
        Ok(built)
    }

    async fn build(&mut self, packs: &[Id]) -> Result<(Index, Vec<Arc<IndexFile>>), RepoError> {
        let mut idx = Index::default();
        let (files, broken) = self.files(packs).await?;
        idx.broken = broken;
        idx.chunks
            .entries
            .reserve_exact(files.iter().map(|f| f.entries.len()).sum());
        for f in &files {
            idx.add(f);
        }
        idx.seal();
        Ok((idx, files))
    }

    /// The index objects of `packs` (duplicates ignored), from those kept
    /// or fetched (eight at a time), and those that could not be read,
    /// named. A pack whose index object is gone is left out. What was
    /// fetched is kept for the next calls, the oldest let go first beyond
    /// the budget.
    #[allow(clippy::type_complexity)]
    pub async fn files(
        &mut self,
        packs: &[Id],
    ) -> Result<(Vec<Arc<IndexFile>>, Vec<(String, String)>), RepoError> {
        use futures::stream::{self, StreamExt};
        let mut files: Vec<Arc<IndexFile>> = Vec::with_capacity(packs.len());
        let mut broken = Vec::new();
        let mut missing = Vec::new();
        for p in packs {
            if files.iter().any(|f| f.pack == *p) || missing.contains(p) {
                continue;
            }
            match self.kept.iter().position(|f| f.pack == *p) {
                Some(i) => {
                    let f = self.kept.remove(i).expect("position is in range");
                    self.kept.push_back(f.clone());
                    files.push(f);
                }
                None => missing.push(*p),
            }
        }
        let (target, meta) = (&self.target, &self.meta);
        let mut loads = stream::iter(missing.into_iter().map(|p| async move {
            let path = index_path(&p);
            let object = format!("{}:{}", target.name, path);
            let bytes = match target.get(&path).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(RepoError::from(e)),
            };
            let meta = meta.clone();
            let opened = tokio::task::spawn_blocking(move || {
                let mut plain = Vec::with_capacity(bytes.len());
                meta.open_into("index", &p.to_hex(), &bytes, &mut plain)
                    .map_err(|e| e.to_string())
                    .and_then(|()| IndexFile::decode(&object, &plain).map_err(|e| e.to_string()))
                    .and_then(|f| {
                        if f.pack == p {
                            Ok(f)
                        } else {
                            Err("names another pack".to_string())
                        }
                    })
                    .map_err(|why| (object, why))
            })
            .await
            .map_err(|e| RepoError::malformed(index_path(&p), format!("was not opened: {e}")))?;
            Ok(Some(opened))
        }))
        .buffer_unordered(8);
        while let Some(r) = loads.next().await {
            match r? {
                None => {}
                Some(Ok(f)) => {
                    self.fetched += 1;
                    let f = Arc::new(f);
                    self.kept_entries += f.entries.len();
                    self.kept.push_back(f.clone());
                    files.push(f);
                }
                Some(Err(b)) => broken.push(b),
            }
        }
        // Kept for the next windows (consecutive windows share packs),
        // oldest first out, within the budget.
        while self.kept_entries > self.budget {
            let Some(f) = self.kept.pop_front() else {
                break;
            };
            self.kept_entries -= f.entries.len();
        }
        Ok((files, broken))
    }
}

/// The in-memory index of a repository (all index objects merged).
#[derive(Default)]
pub struct Index {
    pub packs: Vec<(Id, u64)>,
    /// How many entries each pack's index object holds (as `packs`).
    pub entry_counts: Vec<u32>,
    pub chunks: ChunkMap,
    /// Packs alone: no chunk is kept (see [`Index::load_packs`]).
    packs_only: bool,
    /// Index objects that could not be read (named), reported by check.
    pub broken: Vec<(String, String)>,
}

impl Index {
    /// Adds one index object; call [`Index::seal`] before looking up.
    pub fn add(&mut self, f: &IndexFile) {
        let p = self.packs.len() as u32;
        self.add_pack(f.pack, f.pack_size, f.entries.len());
        if self.packs_only {
            return;
        }
        for e in &f.entries {
            self.chunks.push(
                e.key(),
                ChunkLoc {
                    pack: p,
                    offset: e.offset,
                    len: e.len,
                    raw_len: e.raw_len,
                },
            );
        }
    }

    /// Adds a pack and how many entries its index object holds, without
    /// its chunks.
    fn add_pack(&mut self, pack: Id, size: u64, entries: usize) {
        self.packs.push((pack, size));
        self.entry_counts
            .push(u32::try_from(entries).unwrap_or(u32::MAX));
    }

    /// Makes the index ready for lookups.
    pub fn seal(&mut self) {
        self.chunks.seal();
    }

    /// The ids of a set of this index's packs.
    pub fn pack_ids(&self, packs: &PackSet) -> Vec<Id> {
        packs.0.iter().map(|&p| self.packs[p as usize].0).collect()
    }

    pub fn pack_of(&self, loc: &ChunkLoc) -> (Id, u64) {
        self.packs[loc.pack as usize]
    }

    /// Loads every index object of a target. Unreadable ones are recorded in
    /// `broken` (their chunks are then unknown, so a backup re-stores them).
    pub async fn load(target: &Target, meta: &MetaKey) -> Result<Index, RepoError> {
        Self::load_into(target, meta, Index::default()).await
    }

    /// Reads every index object of a target but keeps only its pack, the
    /// pack's size and its entry count (and the unreadable objects): a few
    /// dozen bytes a pack, whatever the chunks.
    pub async fn load_packs(target: &Target, meta: &MetaKey) -> Result<Index, RepoError> {
        let idx = Index {
            packs_only: true,
            ..Index::default()
        };
        Self::load_into(target, meta, idx).await
    }

    /// Loads a membership index (see [`ChunkMap`]): whether any chunk is
    /// stored, and where the chunks of `located` are (a backup names its
    /// parent's tree pages). About 60% of the memory of [`Index::load`].
    pub async fn load_membership(
        target: &Target,
        meta: &MetaKey,
        located: impl IntoIterator<Item = Id>,
    ) -> Result<Index, RepoError> {
        let mut idx = Index::default();
        idx.chunks.membership = true;
        idx.chunks.wanted = located.into_iter().map(|id| key_of(&id)).collect();
        Self::load_into(target, meta, idx).await
    }

    async fn load_into(
        target: &Target,
        meta: &MetaKey,
        mut idx: Index,
    ) -> Result<Index, RepoError> {
        use futures::stream::{self, StreamExt};
        let list = target.list("index/").await?;
        // Reserve from the objects' sizes (a version 2 entry is at least 19
        // bytes sealed), so the table is not doubled while growing. Version
        // 1 objects (44 bytes an entry) reserve twice what they fill; the
        // pages never touched are never resident, and `seal` gives them
        // back.
        let estimate = list
            .iter()
            .map(|(_, n)| n / ENTRY_MIN_V2 as u64)
            .sum::<u64>()
            .min(1 << 28) as usize;
        if idx.packs_only {
            // No chunk is kept.
        } else if idx.chunks.membership {
            idx.chunks.keys.reserve_exact(estimate);
        } else {
            idx.chunks.entries.reserve_exact(estimate);
        }
        idx.packs.reserve_exact(list.len());
        // Objects are decrypted on the blocking threads, one per core at a
        // time, while up to 16 are fetched; each is decoded and merged here.
        // The plaintexts' buffers are taken and given back here, not on the
        // blocking threads (memory an idle blocking thread allocated and
        // another thread freed stays in that thread's heap until it
        // allocates again), and used again from object to object, a few
        // kept (one per core and two): each fresh one was faulted in page by
        // page, then given back once its object was decoded.
        let opener = Arc::new(meta.clone());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let decrypting = Arc::new(tokio::sync::Semaphore::new(cores));
        let spare = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
        let spare = &spare;
        let mut results = stream::iter(list.into_iter().map(|(path, _)| {
            let (opener, decrypting) = (opener.clone(), decrypting.clone());
            async move {
                let bytes = target.get(&path).await?;
                let object = format!("{}:{}", target.name, path);
                let permit = decrypting
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let mut plain = spare
                    .lock()
                    .expect("the buffer list is never poisoned")
                    .pop()
                    .unwrap_or_default();
                plain.clear();
                plain.reserve(bytes.len());
                let opening = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let name = path.rsplit('/').next().unwrap_or("");
                    let opened = opener.open_into("index", name, &bytes, &mut plain);
                    (opened.map_err(|e| e.to_string()), plain)
                });
                let (opened, plain) = match opening.await {
                    Ok(done) => done,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => (Err(format!("was not opened: {e}")), Vec::new()),
                };
                Ok::<_, RepoError>((object, opened, plain))
            }
        }))
        .buffer_unordered(16);
        while let Some(r) = results.next().await {
            let (object, opened, plain) = r?;
            let name = object.rsplit('/').next().unwrap_or("");
            let names = |pack: &Id| {
                if pack.to_hex() == name {
                    Ok(())
                } else {
                    Err("names another pack".to_string())
                }
            };
            let added = opened.and_then(|()| {
                if idx.packs_only {
                    // Checked as a whole, but no entry is kept.
                    let (pack, size, count) =
                        IndexFile::summary(&object, &plain).map_err(|e| e.to_string())?;
                    names(&pack)?;
                    idx.add_pack(pack, size, count);
                } else {
                    let f = IndexFile::decode(&object, &plain).map_err(|e| e.to_string())?;
                    names(&f.pack)?;
                    idx.add(&f);
                }
                Ok(())
            });
            if let Err(why) = added {
                idx.broken.push((object, why));
            }
            let mut kept = spare.lock().expect("the buffer list is never poisoned");
            if kept.len() < cores + 2 {
                kept.push(plain);
            }
        }
        idx.seal();
        tracing::debug!(
            target = %target.name,
            chunks = idx.chunks.len(),
            packs = idx.packs.len(),
            mib = idx.chunks.heap_bytes() >> 20,
            "chunk index loaded"
        );
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pack: u8, ids: &[u8]) -> IndexFile {
        IndexFile {
            pack: Id([pack; 32]),
            pack_size: 1000,
            entries: ids
                .iter()
                .enumerate()
                .map(|(i, b)| IndexEntry::new(&Id([*b; 32]), 9 + 10 * i as u32, 10, 5))
                .collect(),
        }
    }

    #[test]
    fn batched_positions_match_single_lookups() {
        let mut idx = Index::default();
        let mut present = Vec::new();
        for pack in 0..40u8 {
            let ids: Vec<u8> = (0..6)
                .map(|i| pack.wrapping_mul(6).wrapping_add(i))
                .collect();
            present.extend(ids.iter().map(|b| Id([*b; 32])));
            idx.add(&file(pack, &ids));
        }
        idx.seal();
        // Each id asked for three times: more ids than a batch of bucket
        // reads (`RANGES_AT_ONCE`), so batches end in the middle.
        let mut ids = [present.clone(), present.clone(), present.clone()].concat();
        for b in [240u8, 241, 250, 255] {
            ids.push(Id([b; 32]));
        }
        ids.reverse();
        assert!(ids.len() > 2 * RANGES_AT_ONCE);
        let mut out = Vec::new();
        idx.chunks.positions(&ids, &mut out);
        assert_eq!(out.len(), ids.len());
        for (id, got) in ids.iter().zip(&out) {
            assert_eq!(*got, idx.chunks.position(id), "{id}");
        }
        assert_eq!(
            out.iter().filter(|p| p.is_some()).count(),
            3 * present.len()
        );
        let mut locs = vec![None];
        idx.chunks.locs(&ids, &mut locs);
        assert_eq!(locs.len(), ids.len() + 1, "appended");
        for (id, got) in ids.iter().zip(&locs[1..]) {
            assert_eq!(*got, idx.chunks.get(id).copied(), "{id}");
        }
        Index::default().chunks.positions(&ids[..3], &mut out);
        assert_eq!(out, vec![None; 3]);
        locs.clear();
        Index::default().chunks.locs(&ids[..3], &mut locs);
        assert_eq!(locs, vec![None; 3]);
    }

    /// A uniform id, as keyed BLAKE3 ids are.
    fn id(i: u32) -> Id {
        Id(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// `packs` index objects of `per` chunks each: chunk `i` is at offset
    /// `i` of pack `id(1_000_000 + i / per)`.
    fn uniform_files(packs: u32, per: u32) -> Vec<IndexFile> {
        (0..packs)
            .map(|pack| IndexFile {
                pack: id(1_000_000 + pack),
                pack_size: 1 << 20,
                entries: (pack * per..pack * per + per)
                    .map(|i| IndexEntry::new(&id(i), i, 1, 1))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn many_uniform_ids_are_found_through_the_buckets() {
        // Below and above the length sorted on two threads; a pack stored
        // twice holds the same chunks at another place.
        for (packs, per) in [(50u32, 100u32), (100, 1000)] {
            let n = packs * per;
            let files = uniform_files(packs, per);
            let mut idx = Index::default();
            for f in &files {
                idx.add(f);
            }
            idx.add(&files[1]);
            idx.seal();
            assert_eq!(idx.chunks.len(), n as usize);
            assert!(idx.chunks.buckets.bits > 0);
            assert!(idx.chunks.entries.windows(2).all(|w| w[0].0 < w[1].0));
            for i in 0..n {
                let loc = idx.chunks.get(&id(i)).expect("stored id");
                assert_eq!(loc.offset, i);
                if i / per != 1 {
                    assert_eq!(idx.pack_of(loc).0, id(1_000_000 + i / per));
                }
            }
            for i in n..n + 5000 {
                assert!(!idx.chunks.contains_key(&id(i)), "{i}");
            }
        }
    }

    #[test]
    fn sorting_on_two_threads_sorts_as_one_thread() {
        let uniform: Vec<u128> = (0..200_000u32).map(|i| key_of(&id(i))).collect();
        let high: Vec<u128> = uniform.iter().map(|k| k | 1 << 127).collect();
        let low: Vec<u128> = uniform.iter().map(|k| k >> 1).collect();
        let mut repeated = uniform[..70_000].to_vec();
        repeated.extend_from_slice(&uniform[..70_000]);
        for mut v in [uniform, high, low, repeated] {
            let mut want = v.clone();
            want.sort_unstable();
            sort_on_two_threads(&mut v, |k| *k >> 127 == 1, |half| half.sort_unstable());
            assert_eq!(v, want);
        }
    }

    #[test]
    fn a_membership_index_knows_every_id_and_locates_only_the_named_ones() {
        let files = uniform_files(20, 50);
        let mut full = Index::default();
        let mut member = Index::default();
        member.chunks.membership = true;
        member.chunks.wanted = [7u32, 512, 999].iter().map(|i| key_of(&id(*i))).collect();
        for f in &files {
            full.add(f);
            member.add(f);
        }
        // A chunk stored twice is one key.
        member.add(&files[3]);
        full.seal();
        member.seal();
        assert_eq!(member.chunks.len(), 1000);
        assert!(member.chunks.heap_bytes() < full.chunks.heap_bytes() * 2 / 3);
        for i in 0..1000 {
            assert!(member.chunks.contains_key(&id(i)), "{i}");
            // Each key knows its pack (files[3], added twice, by either
            // position: the same pack).
            let pack = |idx: &Index| idx.packs[idx.chunks.pack(&id(i)).unwrap() as usize].0;
            assert_eq!(pack(&member), pack(&full), "{i}");
            assert_eq!(pack(&full), files[(i / 50) as usize].pack, "{i}");
        }
        for i in 1000..3000 {
            assert!(!member.chunks.contains_key(&id(i)), "{i}");
            assert_eq!(member.chunks.pack(&id(i)), None);
        }
        for i in [7u32, 512, 999] {
            let (a, b) = (member.chunks.get(&id(i)), full.chunks.get(&id(i)));
            assert_eq!(a.map(|l| l.offset), Some(i));
            assert_eq!(member.pack_of(a.unwrap()), full.pack_of(b.unwrap()));
        }
        assert!(member.chunks.get(&id(8)).is_none());
    }

    #[test]
    fn lookups_after_merging_index_files() {
        let mut idx = Index::default();
        idx.add(&file(1, &[5, 3, 9]));
        idx.add(&file(2, &[3, 7]));
        idx.seal();
        assert_eq!(idx.chunks.len(), 4);
        for b in [3u8, 5, 7, 9] {
            assert!(idx.chunks.contains_key(&Id([b; 32])), "{b}");
        }
        assert!(!idx.chunks.contains_key(&Id([4; 32])));
        let loc = idx.chunks[&Id([7; 32])];
        assert_eq!(idx.pack_of(&loc).0, Id([2; 32]));
        assert_eq!(loc.offset, 19);
    }

    #[test]
    fn ids_alike_in_their_top_bits_are_found_without_a_scan_of_their_bucket() {
        // Index objects of ids sharing their first 8 bytes: one bucket of
        // them all. Each look-up scanned it, so looking up every id was
        // quadratic (minutes at this size in a debug build).
        let n = 200_000u32;
        let alike = |i: u32| {
            let mut b = [0x5a; 32];
            b[8..12].copy_from_slice(&i.to_be_bytes());
            Id(b)
        };
        let f = IndexFile {
            pack: Id([1; 32]),
            pack_size: u64::MAX,
            entries: (0..n)
                .map(|i| IndexEntry::new(&alike(i), i, 1, 1))
                .collect(),
        };
        let mut idx = Index::default();
        idx.add(&f);
        idx.seal();
        // (Scanned, this took minutes in a debug build; found by halves,
        // about a second. The time is not asserted: the suite never
        // asserts times.)
        for i in (0..n).rev() {
            assert_eq!(idx.chunks.get(&alike(i)).map(|l| l.offset), Some(i));
        }
        assert!(!idx.chunks.contains_key(&alike(n)));
        let ids: Vec<Id> = (0..n).map(alike).collect();
        let mut locs = Vec::new();
        idx.chunks.locs(&ids, &mut locs);
        assert!(locs
            .iter()
            .zip(0..)
            .all(|(l, i)| l.map(|l| l.offset) == Some(i)));
    }

    #[test]
    fn version_1_tables_and_objects_are_read_with_the_ids_prefixes() {
        let rows = [(id(1), 9, 100, 80), (id(2), 109, 7, 7), (id(3), 40, 5, 300)];
        let table = IndexFile::v1_table(&rows);
        let got = IndexFile::decode_entries("x", 1, &table).unwrap();
        let want: Vec<IndexEntry> = rows
            .iter()
            .map(|(i, o, l, r)| IndexEntry::new(i, *o, *l, *r))
            .collect();
        assert_eq!(got, want);
        assert!(got
            .iter()
            .zip(&rows)
            .all(|(e, r)| e.names(&r.0) && !e.names(&id(9))));
        let mut object = b"CIDX\x01".to_vec();
        object.extend_from_slice(&[4; 32]);
        object.extend_from_slice(&1000u64.to_le_bytes());
        object.extend_from_slice(&table);
        let f = IndexFile::decode("x", &object).unwrap();
        assert_eq!((f.pack, f.pack_size, f.entries), (Id([4; 32]), 1000, want));
        // A version 1 table is 44 bytes an entry, exactly.
        assert!(IndexFile::decode_entries("x", 1, &table[..table.len() - 1]).is_err());
        assert!(IndexFile::decode_entries("x", 3, &table).is_err());
    }

    #[test]
    fn version_2_entries_are_compact_and_keep_any_order() {
        // Back to back, as a pack writer adds them: one byte of gap each.
        let packed: Vec<IndexEntry> = (0..100u32)
            .map(|i| IndexEntry::new(&id(i), 9 + 200 * i, 200, 300))
            .collect();
        let mut b = Vec::new();
        IndexFile::encode_entries_into(&packed, &mut b);
        assert_eq!(b.len(), 4 + 100 * (16 + 1 + 2 + 2));
        assert_eq!(IndexFile::decode_entries("x", 2, &b).unwrap(), packed);
        // Out of order, overlapping, at the ends of the 32-bit range.
        let odd = vec![
            IndexEntry::new(&id(1), u32::MAX - 10, 10, u32::MAX),
            IndexEntry::new(&id(2), 9, 0, 0),
            IndexEntry::new(&id(3), 5, 4, 1),
            IndexEntry::new(&id(4), 5, 4, 1),
            IndexEntry::new(&id(5), 0, u32::MAX, 0),
        ];
        b.clear();
        IndexFile::encode_entries_into(&odd, &mut b);
        assert_eq!(IndexFile::decode_entries("x", 2, &b).unwrap(), odd);
        let f = IndexFile {
            pack: id(7),
            pack_size: 1 << 33,
            entries: odd,
        };
        assert_eq!(IndexFile::decode("x", &f.encode()).unwrap(), f);
    }

    #[test]
    fn hostile_version_2_tables_are_refused_by_what_is_wrong() {
        let entries = [IndexEntry::new(&id(1), 9, 300, 400)];
        let mut good = Vec::new();
        IndexFile::encode_entries_into(&entries, &mut good);
        let refused = |b: &[u8]| {
            IndexFile::decode_entries("idx", 2, b)
                .unwrap_err()
                .to_string()
        };
        for n in 0..good.len() {
            assert!(
                IndexFile::decode_entries("x", 2, &good[..n]).is_err(),
                "{n}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(refused(&longer).contains("holds more bytes"));
        // A count the bytes cannot hold is refused before anything is
        // allocated for it.
        let mut many = good.clone();
        many[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refused(&many).contains("declares 4294967295 entries"));
        // An offset before 0 or past 32 bits, a length past 32 bits, an
        // overlong varint.
        let entry = |gap: &[u8], len: &[u8]| {
            let mut b = 1u32.to_le_bytes().to_vec();
            b.extend_from_slice(&[1; 16]);
            b.extend_from_slice(gap);
            b.extend_from_slice(len);
            b.push(1);
            b
        };
        assert!(refused(&entry(&[19], &[1])).contains("offset beyond 32 bits"));
        assert!(refused(&entry(&[0xfe, 0xff, 0xff, 0xff, 0x1f], &[1]))
            .contains("offset beyond 32 bits"));
        assert!(refused(&entry(&[0], &[0x80, 0x80, 0x80, 0x80, 0x10]))
            .contains("length beyond 32 bits"));
        assert!(refused(&entry(&[0xff; 11], &[1])).contains("varint too long"));
        let fine = IndexFile::decode_entries("x", 2, &entry(&[0], &[1])).unwrap();
        assert_eq!((fine[0].offset, fine[0].len, fine[0].raw_len), (9, 1, 1));
    }

    #[test]
    fn index_object_round_trips_and_refuses_garbage() {
        let f = file(4, &[1, 2, 3, 4, 5]);
        let b = f.encode();
        let decoded = IndexFile::decode("x", &b).unwrap();
        assert_eq!(decoded, f);
        // Sized to what the table declares, not grown by doubling (kept
        // objects would hold the spare room).
        assert_eq!(decoded.entries.capacity(), 5);
        for n in 0..b.len() {
            assert!(IndexFile::decode("x", &b[..n]).is_err(), "{n}");
        }
        let mut big = f.clone();
        big.pack_size = 10;
        assert!(IndexFile::decode("x", &big.encode()).is_err());
    }

    #[test]
    fn a_summary_refuses_what_a_decode_refuses_and_counts_what_it_keeps() {
        let f = file(7, &[1, 2, 3, 4]);
        let b = f.encode();
        assert_eq!(
            IndexFile::summary("x", &b).unwrap(),
            (f.pack, f.pack_size, f.entries.len())
        );
        // Every truncation, a bad magic, an unknown version and an entry
        // beyond the pack's end: both refuse.
        let mut bad: Vec<Vec<u8>> = (0..b.len()).map(|n| b[..n].to_vec()).collect();
        let mut magic = b.clone();
        magic[0] ^= 1;
        let mut version = b.clone();
        version[4] = ENTRIES_VERSION + 1;
        let mut short = f.clone();
        short.pack_size = 10;
        bad.extend([magic, version, short.encode()]);
        for (i, b) in bad.iter().enumerate() {
            assert!(IndexFile::decode("x", b).is_err(), "{i}");
            assert!(IndexFile::summary("x", b).is_err(), "{i}");
        }
    }

    #[tokio::test]
    async fn packs_alone_are_loaded_as_the_whole_index_loads_them() {
        use crate::crypto::Key32;
        use crate::target::S3Settings;
        let t = Target::open(
            "t",
            "memory://load-packs",
            false,
            &S3Settings::default(),
            true,
        )
        .unwrap();
        let meta = MetaKey::new(&Key32::random());
        let files = [file(1, &[10, 11]), file(2, &[20, 21, 22]), file(3, &[30])];
        for f in &files {
            f.store(&t, &meta).await.unwrap();
        }
        // One object that does not open, one that names another pack.
        t.put(&index_path(&Id([4; 32])), vec![9u8; 80].into())
            .await
            .unwrap();
        let other = meta.seal("index", &Id([5; 32]).to_hex(), &file(6, &[60]).encode());
        t.put(&index_path(&Id([5; 32])), other.into())
            .await
            .unwrap();

        let whole = Index::load(&t, &meta).await.unwrap();
        let packs = Index::load_packs(&t, &meta).await.unwrap();
        let listed = |idx: &Index| {
            let mut v: Vec<(Id, u64, u32)> = idx
                .packs
                .iter()
                .zip(&idx.entry_counts)
                .map(|(p, n)| (p.0, p.1, *n))
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(listed(&packs), listed(&whole));
        assert_eq!(
            listed(&packs),
            files
                .iter()
                .map(|f| (f.pack, f.pack_size, f.entries.len() as u32))
                .collect::<Vec<_>>()
        );
        let broken = |idx: &Index| {
            let mut v = idx.broken.clone();
            v.sort_unstable();
            v
        };
        assert_eq!(broken(&packs), broken(&whole));
        assert_eq!(packs.broken.len(), 2);
        assert!(packs.chunks.is_empty());
        assert_eq!(whole.chunks.len(), 6);
    }

    #[tokio::test]
    async fn an_index_of_some_packs_keeps_their_objects_only_when_asked() {
        use crate::crypto::Key32;
        use crate::target::S3Settings;
        let t = Arc::new(
            Target::open(
                "t",
                "memory://index-of",
                false,
                &S3Settings::default(),
                true,
            )
            .unwrap(),
        );
        let meta = Arc::new(MetaKey::new(&Key32::random()));
        let files = [file(1, &[10, 11]), file(2, &[20, 21, 22])];
        for f in &files {
            f.store(&t, &meta).await.unwrap();
        }
        let packs: Vec<Id> = files.iter().map(|f| f.pack).collect();
        for with in [false, true] {
            let mut objects = IndexObjects::new(t.clone(), meta.clone(), 1 << 10);
            if with {
                objects = objects.with_files();
            }
            let built = objects.index_of(&packs).await.unwrap();
            // Either way every entry is found, in its own pack.
            for f in &files {
                for e in &f.entries {
                    let id = Id([e.key[0]; 32]);
                    let loc = built.index.chunks.get(&id).expect("entry found");
                    assert_eq!(built.index.pack_of(loc).0, f.pack);
                }
            }
            let mut kept: Vec<Id> = built.files.iter().map(|f| f.pack).collect();
            kept.sort_unstable();
            assert_eq!(kept, if with { packs.clone() } else { Vec::new() });
        }
    }
}
