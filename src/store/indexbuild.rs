//! An index's b-tree built from the keys of the rows its table's bulk load
//! wrote (SQLite file format, 1.6 "B-tree Pages", index b-trees), instead
//! of by `CREATE INDEX` or `REINDEX` reading the table back.
//!
//! Each row gives one entry: a record of the key columns' values and the
//! rowid. Entries are gathered in runs of about [`RUN_BYTES`], each sorted
//! in memory and, when there is more than one, written to an unlinked
//! temporary file; at the end the runs are merged and the entries fill the
//! index's leaves in order, each leaf's last entry going up as the
//! separator between it and the next, then the interior levels the same
//! way; the top page is written over the index's root page. Memory stays
//! at one run however large the table.
//!
//! Entries sort by a byte string that compares as SQLite compares index
//! records. Per key column a class byte (NULL, number, text, blob, in
//! SQLite's order), then the value:
//!
//! - a number (integer or real, compared by value as SQLite compares
//!   them): its integer part toward zero in as few bytes as keep the order
//!   (see `put_int`), then a byte saying whether a fraction follows and of
//!   which sign, then the fraction's eight bytes (see `put_real`); a real
//!   beyond the range of 64-bit integers is a byte below or above every
//!   integer part, then its eight bytes;
//! - a text or blob: its bytes with 0x00 escaped as 0x00 0x01 and ended by
//!   0x00 0x00, so a prefix sorts first; a text under NOCASE with its ASCII
//!   letters in lower case, under RTRIM without its trailing spaces (the
//!   orders of SQLite's built-in collations; BINARY as it is). SQLite's
//!   NOCASE compares texts up to the first 0x00 of either, then by their
//!   lengths: a NOCASE text holding a 0x00 is the part before it in lower
//!   case, a 0x00, then its length in eight bytes big-endian (escaped like
//!   the rest, so it sorts above every text without a 0x00 that it
//!   starts with).
//!
//! A DESC column's bytes are inverted. Then comes the rowid (eight bytes
//! big-endian, the sign bit flipped), which no two entries share, and
//! after it what the order does not keep but the record needs (the
//! trailer): the original text of a column whose collation changed it,
//! and the eight bytes of a real whose value is an integer (it sorts with
//! that integer, but is written as a real). The key's last byte says
//! whether it has a trailer (0: none; 1: the trailer's length precedes
//! it, four bytes). These keys live only in memory and in the build's
//! temporary file.
//!
//! Only what that covers is built here: keys that are table columns or
//! `lower()` / `upper()` of one (SQLite's built-in functions: NULL stays
//! NULL, anything else becomes text, ASCII letters folded), under the
//! BINARY, NOCASE or RTRIM collation, and, for a partial index, the
//! condition `column IS [NOT] NULL` (rows that fail it get no entry; see
//! [`indexsql`](super::indexsql) for what is read of the statement).
//! Anything else is refused and left to SQLite (`REINDEX`); so is an
//! index that meets `lower()` or `upper()` of a real (SQLite's text of a
//! real is not reproduced here), and a UNIQUE index whose entries turn
//! out to repeat a key without a NULL (SQLite then reports the
//! constraint).

use super::bulkload::{
    header_len, index_max_local, int_serial, local_size, put_first, put_varint, whole,
    write_overflow, LoadError, PageBuf, PageFile, Payload, INDEX_INTERIOR, INDEX_LEAF,
};
pub use super::indexsql::Fold;
use super::pages::Layout;
use rusqlite::types::ValueRef;
use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Bytes of entries, counting each one's [`Start`] twice (its own and its
/// room in the sort, see [`sort_starts`]), sorted in memory before they are
/// written out as a run: what a table's indexes share while its rows load
/// (see [`IndexBuild::with_run_bytes`]).
pub const RUN_BYTES: usize = 16 << 20;

/// The least an index's runs are given, however many share [`RUN_BYTES`].
const MIN_RUN_BYTES: usize = 1 << 20;

/// What an index holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    /// The index's root page (empty until the build).
    pub root: u32,
    /// Key columns, in the index's order.
    pub columns: Vec<KeyColumn>,
    /// No two entries may share a key without a NULL in it.
    pub unique: bool,
    /// A partial index's condition: only the rows it holds have entries.
    pub only: Option<NullFilter>,
    /// A WITHOUT ROWID table's own b-tree, keyed by its primary key: each
    /// entry's record is the whole row, given with it
    /// ([`IndexBuild::push_row`]), and there is no rowid.
    pub clustered: bool,
    /// An index of a WITHOUT ROWID table: its last key columns are the
    /// table's primary key (SQLite appends them to every entry), and its
    /// records have no rowid.
    pub without_rowid: bool,
}

/// A partial index's condition that the build follows: the rows whose
/// column `column` is NULL (`not_null` false) or is not (true).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NullFilter {
    pub column: usize,
    pub not_null: bool,
}

/// One key column of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyColumn {
    /// Its position in the table's columns.
    pub column: usize,
    /// Sorted in descending order.
    pub desc: bool,
    /// How its texts compare.
    pub collation: Collation,
    /// The key is `lower()` or `upper()` of the column, not the column.
    pub fold: Option<Fold>,
}

impl KeyColumn {
    /// Table column `column`, ascending, BINARY.
    pub fn binary(column: usize) -> Self {
        KeyColumn {
            column,
            desc: false,
            collation: Collation::Binary,
            fold: None,
        }
    }
}

/// SQLite's built-in collations, the ones a key here can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collation {
    /// Bytewise.
    Binary,
    /// Bytewise with ASCII upper-case letters as lower-case ones.
    NoCase,
    /// Bytewise without trailing spaces.
    Rtrim,
}

impl Collation {
    /// The collation SQLite names `name` (any case), if it is one of these.
    pub fn named(name: &str) -> Option<Self> {
        [
            ("BINARY", Collation::Binary),
            ("NOCASE", Collation::NoCase),
            ("RTRIM", Collation::Rtrim),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| c)
    }
}

/// One index being gathered while its table loads. An entry is kept as its
/// key alone; the record is rebuilt from it when the tree is written.
pub struct IndexBuild {
    spec: IndexSpec,
    run_bytes: usize,
    /// Bytes of entries in a batch from the merge to the page writer.
    batch_bytes: usize,
    /// Why the index is left to SQLite, once known.
    refused: Option<&'static str>,
    /// The current run: entries, each `klen u32, key`, and for each its
    /// key's first bytes and where it starts (see [`Start`]).
    buf: Vec<u8>,
    starts: Vec<Start>,
    /// Room the sort moves `starts` through ([`sort_starts`]), counted in
    /// the run's bytes.
    spare: Vec<Start>,
    dir: PathBuf,
    spill: Option<File>,
    spilled: u64,
    runs: Vec<(u64, u64)>,
    key: Vec<u8>,
    /// The key's trailer while it is made, and a text in its collation's
    /// order.
    trailer: Vec<u8>,
    scratch: Vec<u8>,
    /// A key column's `lower()` or `upper()`.
    folded: Vec<u8>,
}

/// An entry in a run: its key's first 16 bytes, big-endian in two words
/// (zeros past a shorter key), and where it starts in the run buffer.
/// Sorting by the words orders most pairs without reading the buffer; the
/// keys are compared only when the words tie. Zeros past a shorter key
/// never misorder: where the words differ, either both keys have bytes
/// there, or the shorter key is a prefix of the longer up to that point
/// and sorts first on both counts.
#[derive(Clone, Copy)]
struct Start {
    prefix: [u64; 2],
    at: u32,
}

/// The first 16 bytes of `key` as [`Start::prefix`] takes them.
fn prefix_of(key: &[u8]) -> [u64; 2] {
    if let Some(p) = key.first_chunk::<16>() {
        // Most keys: read as they are.
        return [
            u64::from_be_bytes(p[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
        ];
    }
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    [
        u64::from_be_bytes(p[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
    ]
}

/// How far ahead of the entry it writes out a spill asks for an entry's
/// bytes ([`IndexBuild::spill_run`]).
const SPILL_AHEAD: usize = 8;

/// Stretches of a run this short are sorted by comparisons
/// ([`sort_starts`]).
const RADIX_MIN: usize = 64;

/// Sorts a run's entries by key (see [`Start`]): a most-significant-byte
/// first radix sort of their prefixes (each stretch of entries alike in
/// the bytes before is split by its next byte that varies), with
/// stretches of at most [`RADIX_MIN`] entries, and entries whose prefixes
/// are equal, sorted by comparing (their keys in `buf` where the prefixes
/// tie). A comparison sort of a whole run made about 18 comparisons an
/// entry for a run of 250 k, reading two keys in `buf` (cache misses) at
/// every tie; an index of customer ids and ISO times is split by three or
/// four bytes into stretches of a few entries. `spare` is room the
/// entries are moved through, as many as `starts` (an in-place radix
/// sort, swapping each entry into its bucket, was no faster than the
/// comparison sort).
fn sort_starts(starts: &mut [Start], spare: &mut Vec<Start>, buf: &[u8]) {
    spare.resize(
        starts.len(),
        Start {
            prefix: [0; 2],
            at: 0,
        },
    );
    radix_sort(starts, spare, 0, buf);
}

/// [`sort_starts`] of entries whose prefixes share their first `k` bytes.
fn radix_sort(v: &mut [Start], spare: &mut [Start], mut k: usize, buf: &[u8]) {
    let by_key =
        |a: &Start, b: &Start| entry(buf, a.at as usize).0.cmp(entry(buf, b.at as usize).0);
    // Byte k of a prefix is byte k % 8, from the top, of word k / 8.
    let byte = |s: &Start, k: usize| (s.prefix[k / 8] >> (56 - 8 * (k % 8))) as u8 as usize;
    let mut counts = [0u32; 256];
    loop {
        if v.len() <= RADIX_MIN {
            v.sort_unstable_by(|a, b| a.prefix.cmp(&b.prefix).then_with(|| by_key(a, b)));
            return;
        }
        if k == 16 {
            v.sort_unstable_by(by_key);
            return;
        }
        counts.fill(0);
        for s in v.iter() {
            counts[byte(s, k)] += 1;
        }
        if counts[byte(&v[0], k)] as usize != v.len() {
            break;
        }
        k += 1; // the same byte in all: the next one
    }
    let mut next = [0u32; 256];
    let mut sum = 0;
    for (n, c) in next.iter_mut().zip(&counts) {
        (*n, sum) = (sum, sum + c);
    }
    for s in v.iter() {
        let d = &mut next[byte(s, k)];
        spare[*d as usize] = *s;
        *d += 1;
    }
    v.copy_from_slice(spare);
    let mut from = 0;
    for c in counts {
        let to = from + c as usize;
        if c > 1 {
            radix_sort(&mut v[from..to], &mut spare[from..to], k + 1, buf);
        }
        from = to;
    }
}

/// An entry's key in a run buffer (`klen u32, key`), and where the next
/// entry starts.
fn entry(buf: &[u8], at: usize) -> (&[u8], usize) {
    let klen = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    (&buf[at + 4..at + 4 + klen], at + 4 + klen)
}

/// The index record a key stands for (key values, then the rowid), into
/// `out`. `inv` holds a byte a key column that its bytes were XORed with
/// (0xff for a DESC column, else 0). Returns whether a key value is NULL,
/// and the length of the part of the key that orders it before the rowid.
/// The key is one this module made.
fn record_of(
    key: &[u8],
    inv: &[u8],
    rowid: bool,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (bool, usize) {
    head.clear();
    body.clear();
    let n = key.len();
    let (order_len, trailer) = if key[n - 1] == 0 {
        (n - 9, &key[..0])
    } else {
        let tlen = u32::from_le_bytes(key[n - 5..n - 1].try_into().expect("4 bytes")) as usize;
        let t = n - 5 - tlen;
        (t - 8, &key[t..n - 5])
    };
    let mut null = false;
    let mut at = 0;
    // The next item of the trailer, whose first byte names its column.
    let mut tat = 0;
    for (k, &inv) in inv.iter().enumerate() {
        let own = trailer.get(tat) == Some(&(k as u8));
        let class = key[at] ^ inv;
        at += 1;
        let serial = match class {
            1 => {
                null = true;
                0
            }
            2 => {
                let real = match key[at] ^ inv {
                    REAL_BELOW => {
                        at += 9;
                        f64::from_bits(!take_u64(key, at - 8, inv))
                    }
                    REAL_ABOVE => {
                        at += 9;
                        f64::from_bits(take_u64(key, at - 8, inv))
                    }
                    _ => {
                        let i = take_int(key, &mut at, inv);
                        let mark = key[at] ^ inv;
                        at += 1;
                        match mark {
                            WHOLE if own => {
                                let bits = &trailer[tat + 1..tat + 9];
                                tat += 9;
                                f64::from_bits(u64::from_be_bytes(
                                    bits.try_into().expect("8 bytes"),
                                ))
                            }
                            WHOLE => {
                                put_varint(head, int_serial(i, body));
                                continue;
                            }
                            FRACTION_UP => {
                                at += 8;
                                i as f64 + f64::from_bits(take_u64(key, at - 8, inv))
                            }
                            _ => {
                                at += 8;
                                i as f64 - f64::from_bits(!take_u64(key, at - 8, inv))
                            }
                        }
                    }
                };
                body.extend_from_slice(&real.to_bits().to_be_bytes());
                7
            }
            _ => {
                let start = body.len();
                if own {
                    // The original is in the trailer; the key has the
                    // collation's form.
                    skip_escaped(key, &mut at, inv);
                    tat += 1;
                    unescape(trailer, &mut tat, 0, body);
                } else {
                    unescape(key, &mut at, inv, body);
                }
                let n = (body.len() - start) as u64;
                if class == 3 {
                    n * 2 + 13
                } else {
                    n * 2 + 12
                }
            }
        };
        put_varint(head, serial);
    }
    if rowid {
        let rowid = u64::from_be_bytes(key[order_len..order_len + 8].try_into().expect("8 bytes"))
            ^ (1 << 63);
        let serial = int_serial(rowid as i64, body);
        put_varint(head, serial);
    }
    out.clear();
    put_varint(out, header_len(head.len() as u64));
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    (null, order_len)
}

/// Inverts a DESC column's key bytes.
#[inline]
fn invert_if(desc: bool, bytes: &mut [u8]) {
    if desc {
        for b in bytes {
            *b = !*b;
        }
    }
}

/// Eight bytes of `key` at `at`, XORed with `inv`, big-endian.
fn take_u64(key: &[u8], at: usize, inv: u8) -> u64 {
    let v = u64::from_be_bytes(key[at..at + 8].try_into().expect("8 bytes"));
    if inv == 0 {
        v
    } else {
        !v
    }
}

/// The bytes [`escape`] wrote at `*at` (XORed with `inv`), into `body`;
/// moves `*at` past them.
#[inline]
fn unescape(key: &[u8], at: &mut usize, inv: u8, body: &mut Vec<u8>) {
    if inv == 0 {
        // Runs of bytes up to each 0x00: an escaped 0x00 (0x00 0x01) puts
        // one back, the end (0x00 0x00) stops.
        loop {
            let run = memchr::memchr(0, &key[*at..]).expect("a key's text ends with 0x00 0x00");
            body.extend_from_slice(&key[*at..*at + run]);
            *at += run + 2;
            if key[*at - 1] == 0 {
                return;
            }
            body.push(0);
        }
    }
    loop {
        let b = key[*at] ^ inv;
        *at += 1;
        if b != 0 {
            body.push(b);
        } else if key[*at] ^ inv == 0 {
            *at += 1;
            return;
        } else {
            *at += 1;
            body.push(0);
        }
    }
}

/// Moves `*at` past the bytes [`escape`] wrote there (XORed with `inv`).
fn skip_escaped(key: &[u8], at: &mut usize, inv: u8) {
    loop {
        let zero = memchr::memchr(inv, &key[*at..]).expect("a key's text ends with 0x00 0x00");
        *at += zero + 2;
        if key[*at - 1] == inv {
            return;
        }
    }
}

impl IndexBuild {
    /// Gathers `spec`'s entries; runs that do not fit in memory go to an
    /// unlinked file in `dir`.
    pub fn new(spec: IndexSpec, dir: &Path) -> Self {
        // A trailer names its columns by a byte.
        let refused = (spec.columns.len() > 256).then_some("more than 256 key columns");
        IndexBuild {
            spec,
            run_bytes: RUN_BYTES,
            batch_bytes: MERGE_BATCH,
            refused,
            buf: Vec::new(),
            starts: Vec::new(),
            spare: Vec::new(),
            dir: dir.to_owned(),
            spill: None,
            spilled: 0,
            runs: Vec::new(),
            key: Vec::new(),
            trailer: Vec::new(),
            scratch: Vec::new(),
            folded: Vec::new(),
        }
    }

    /// Runs of `bytes` (at least 1 MiB), for a table whose indexes share
    /// [`RUN_BYTES`].
    pub fn with_run_bytes(mut self, bytes: usize) -> Self {
        self.run_bytes = bytes.max(MIN_RUN_BYTES);
        self
    }

    pub fn spec(&self) -> &IndexSpec {
        &self.spec
    }

    /// Adds the entry of one row (its values in table order).
    pub fn push(
        &mut self,
        rowid: i64,
        values: &[ValueRef<'_>],
        layout: &Layout,
    ) -> Result<(), LoadError> {
        self.push_entry(rowid, values, layout, None)
    }

    /// Adds a row of a WITHOUT ROWID table (a [`IndexSpec::clustered`]
    /// build): its values in table order, for the key, and its record.
    pub fn push_row(
        &mut self,
        values: &[ValueRef<'_>],
        layout: &Layout,
        record: &[u8],
    ) -> Result<(), LoadError> {
        self.push_entry(0, values, layout, Some(record))
    }

    fn push_entry(
        &mut self,
        rowid: i64,
        values: &[ValueRef<'_>],
        layout: &Layout,
        record: Option<&[u8]>,
    ) -> Result<(), LoadError> {
        if self.refused.is_some() {
            return Ok(());
        }
        let value = |c: usize| {
            if layout.columns[c].rowid {
                ValueRef::Integer(rowid)
            } else {
                values[c]
            }
        };
        if let Some(only) = self.spec.only {
            // SQLite stores a NaN as NULL.
            let null = match value(only.column) {
                ValueRef::Null => true,
                ValueRef::Real(r) => r.is_nan(),
                _ => false,
            };
            if null == only.not_null {
                return Ok(());
            }
        }
        self.key.clear();
        self.trailer.clear();
        for k in 0..self.spec.columns.len() {
            let kc = self.spec.columns[k];
            let col = &layout.columns[kc.column];
            let mut v = value(kc.column);
            if let Some(fold) = kc.fold {
                // SQLite's lower() and upper(): NULL stays NULL, anything
                // else becomes text (an integer its decimal digits, a blob
                // its bytes), ASCII letters folded.
                self.folded.clear();
                match v {
                    ValueRef::Null => {}
                    ValueRef::Real(r) if r.is_nan() => v = ValueRef::Null,
                    ValueRef::Real(_) => {
                        // SQLite's own text of a real is not reproduced here.
                        self.refuse("lower() or upper() of a real");
                        return Ok(());
                    }
                    ValueRef::Integer(i) => {
                        use std::io::Write as _;
                        write!(self.folded, "{i}").expect("writing to a vector");
                    }
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        self.folded.extend(t.iter().map(|&b| fold.byte(b)));
                    }
                }
                if !matches!(v, ValueRef::Null) {
                    v = ValueRef::Text(&self.folded);
                }
            }
            let start = self.key.len();
            match v {
                ValueRef::Null => self.key.push(1),
                ValueRef::Integer(i) => put_int_key(i, &mut self.key),
                // SQLite stores a NaN as NULL.
                ValueRef::Real(r) if r.is_nan() => self.key.push(1),
                ValueRef::Real(r) => {
                    self.key.push(2);
                    if put_real(r, &mut self.key) && !(col.real && whole(r)) {
                        // Sorted as its integer, written as a real.
                        self.trailer.push(k as u8);
                        self.trailer.extend_from_slice(&r.to_bits().to_be_bytes());
                    }
                }
                ValueRef::Text(t) => {
                    self.key.push(3);
                    let ordered: &[u8] = match kc.collation {
                        Collation::Binary => {
                            escape(t, &mut self.key);
                            invert_if(kc.desc, &mut self.key[start..]);
                            continue;
                        }
                        Collation::NoCase => {
                            self.scratch.clear();
                            match memchr::memchr(0, t) {
                                None => self.scratch.extend(t.iter().map(u8::to_ascii_lowercase)),
                                Some(nul) => {
                                    // SQLite's NOCASE stops at the first
                                    // 0x00, then orders by length: the
                                    // text before it, a 0x00 (which sorts
                                    // above the end of a text without one),
                                    // and the length.
                                    self.scratch
                                        .extend(t[..nul].iter().map(u8::to_ascii_lowercase));
                                    self.scratch.push(0);
                                    self.scratch
                                        .extend_from_slice(&(t.len() as u64).to_be_bytes());
                                }
                            }
                            &self.scratch
                        }
                        Collation::Rtrim => {
                            let end = t.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                            &t[..end]
                        }
                    };
                    escape(ordered, &mut self.key);
                    if ordered != t {
                        self.trailer.push(k as u8);
                        escape(t, &mut self.trailer);
                    }
                }
                ValueRef::Blob(b) => {
                    self.key.push(4);
                    escape(b, &mut self.key);
                }
            }
            invert_if(kc.desc, &mut self.key[start..]);
        }
        self.key
            .extend_from_slice(&((rowid as u64) ^ (1 << 63)).to_be_bytes());
        if let Some(record) = record {
            // The record is the row's own; nothing else is needed.
            self.trailer.clear();
            self.trailer.extend_from_slice(record);
        }
        if self.trailer.is_empty() {
            self.key.push(0);
        } else {
            self.key.extend_from_slice(&self.trailer);
            self.key
                .extend_from_slice(&(self.trailer.len() as u32).to_le_bytes());
            self.key.push(1);
        }
        self.starts.push(Start {
            prefix: prefix_of(&self.key),
            at: u32::try_from(self.buf.len()).expect("a run is under 4 GiB"),
        });
        self.buf
            .extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&self.key);
        // Each entry takes its bytes and two starts: its own and its room
        // in `spare`.
        if self.buf.len() + 2 * self.starts.len() * std::mem::size_of::<Start>() >= self.run_bytes {
            self.spill_run()?;
        }
        Ok(())
    }

    /// Leaves the index to SQLite, for `why`; what was gathered is dropped.
    fn refuse(&mut self, why: &'static str) {
        self.refused = Some(why);
        self.buf = Vec::new();
        self.starts = Vec::new();
        self.spare = Vec::new();
    }

    fn sort_run(&mut self) {
        sort_starts(&mut self.starts, &mut self.spare, &self.buf);
    }

    /// Sorts the current run and appends it to the temporary file.
    fn spill_run(&mut self) -> Result<(), LoadError> {
        if self.starts.is_empty() {
            return Ok(());
        }
        self.sort_run();
        if self.spill.is_none() {
            let path = self
                .dir
                .join(format!(".custos-index-run-{:016x}", rand::random::<u64>()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            // Unlinked at once: the file goes away with its handle, whatever
            // happens to this process.
            std::fs::remove_file(&path)?;
            self.spill = Some(f);
        }
        let f = self.spill.as_mut().expect("opened above");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &*f);
        let start = self.spilled;
        for (i, s) in self.starts.iter().enumerate() {
            // The entries lie in the order they came, not sorted: the one
            // a few places on is asked for ahead.
            if let Some(ahead) = self.starts.get(i + SPILL_AHEAD) {
                crate::prefetch::line(self.buf[ahead.at as usize..].as_ptr());
            }
            let at = s.at as usize;
            let (_, end) = entry(&self.buf, at);
            out.write_all(&self.buf[at..end])?;
            self.spilled += (end - at) as u64;
        }
        out.flush()?;
        drop(out);
        self.runs.push((start, self.spilled - start));
        self.buf.clear();
        self.starts.clear();
        Ok(())
    }

    /// Writes the index's b-tree. Returns why it was left to SQLite, if it
    /// was (nothing is written then, unless a UNIQUE key repeats: pages
    /// written before that are left unused, and SQLite's `REINDEX` fails
    /// on the same keys).
    pub fn finish(mut self, file: &mut PageFile) -> Result<Option<&'static str>, LoadError> {
        if let Some(why) = self.refused {
            return Ok(Some(why));
        }
        let mut out = EntryWriter::new(&self.spec, file);
        if self.runs.is_empty() {
            self.sort_run();
            for s in &self.starts {
                if !out.add(file, entry(&self.buf, s.at as usize).0)? {
                    return Ok(Some(REPEATS));
                }
            }
            out.tree.finish(file)?;
            return Ok(None);
        }
        self.spill_run()?;
        // Every entry is in the file now: the run's room is not held
        // through the merge.
        (self.buf, self.starts, self.spare) = (Vec::new(), Vec::new(), Vec::new());
        let f = self.spill.as_ref().expect("runs were spilled");
        let (runs, batch_bytes) = (&self.runs, self.batch_bytes);
        // Two threads: this one merges the runs into batches of keys in
        // order, a second rebuilds their records and writes the pages.
        // Three batches circulate (filled, handed over, handed back), so
        // the memory is under 1 MiB whatever the index's size.
        let (full_tx, full_rx) = sync_channel::<Result<Vec<u8>, LoadError>>(1);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(3);
        for _ in 0..3 {
            empty_tx
                .send(Vec::with_capacity(batch_bytes + 4096))
                .expect("room for 3");
        }
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<Option<&'static str>, LoadError> {
                for batch in full_rx {
                    let batch = batch?;
                    let mut at = 0;
                    while at < batch.len() {
                        let (key, next) = entry(&batch, at);
                        at = next;
                        if !out.add(file, key)? {
                            return Ok(Some(REPEATS));
                        }
                    }
                    // The merge may have stopped; then the batch is dropped.
                    let _ = empty_tx.send(batch);
                }
                out.tree.finish(file)?;
                Ok(None)
            });
            if let Err(e) = merge_runs(f, runs, batch_bytes, &empty_rx, &full_tx) {
                // The writer may have stopped first (a repeated key, a
                // write error): its result says why, not this send.
                let _ = full_tx.send(Err(e));
            }
            drop(full_tx);
            writer.join().expect("the index writer thread panicked")
        })
    }
}

/// Why an index whose keys repeat is left to SQLite.
const REPEATS: &str = "a UNIQUE key repeats";

/// Turns keys, in order, into the index's records on its pages, and
/// watches a UNIQUE index for a repeated key.
struct EntryWriter {
    tree: TreeWriter,
    /// Each key column's inversion (see [`record_of`]).
    inv: Vec<u8>,
    unique: bool,
    /// Records are the keys' trailers ([`IndexSpec::clustered`]).
    clustered: bool,
    /// Records end with the rowid.
    rowid: bool,
    /// The last key's ordering part (before its rowid), and whether a
    /// value of it was NULL.
    last: Vec<u8>,
    last_null: bool,
    head: Vec<u8>,
    body: Vec<u8>,
    rec: Vec<u8>,
}

impl EntryWriter {
    fn new(spec: &IndexSpec, file: &PageFile) -> Self {
        EntryWriter {
            tree: TreeWriter::new(spec.root, file),
            inv: spec
                .columns
                .iter()
                .map(|c| if c.desc { 0xff } else { 0 })
                .collect(),
            unique: spec.unique,
            clustered: spec.clustered,
            rowid: !spec.without_rowid,
            last: Vec::new(),
            last_null: true,
            head: Vec::new(),
            body: Vec::new(),
            rec: Vec::new(),
        }
    }

    /// Writes the entry of `key`; false, with nothing written, when a
    /// UNIQUE index repeats a key without a NULL.
    fn add(&mut self, file: &mut PageFile, key: &[u8]) -> Result<bool, LoadError> {
        if self.clustered {
            // A row's record is its key's trailer (never empty).
            let n = key.len();
            let tlen = u32::from_le_bytes(key[n - 5..n - 1].try_into().expect("4 bytes")) as usize;
            self.tree.add(file, &key[n - 5 - tlen..n - 5])?;
            return Ok(true);
        }
        let (null, order_len) = record_of(
            key,
            &self.inv,
            self.rowid,
            &mut self.head,
            &mut self.body,
            &mut self.rec,
        );
        if self.unique {
            // Only a UNIQUE index needs the key before to compare with.
            let prefix = &key[..order_len];
            if !null && !self.last_null && prefix == self.last.as_slice() {
                return Ok(false);
            }
            self.last.clear();
            self.last.extend_from_slice(prefix);
            self.last_null = null;
        }
        self.tree.add(file, &self.rec)?;
        Ok(true)
    }
}

/// Bytes of keys in a batch handed from the merge to the page writer.
const MERGE_BATCH: usize = 256 << 10;

/// Merges the sorted runs at `runs` of `f` into batches of entries in key
/// order (each at least `batch_bytes`, but the last), sent on `full`;
/// stops when the receiver has gone.
fn merge_runs(
    f: &File,
    runs: &[(u64, u64)],
    batch_bytes: usize,
    empty: &Receiver<Vec<u8>>,
    full: &SyncSender<Result<Vec<u8>, LoadError>>,
) -> Result<(), LoadError> {
    let mut readers: Vec<RunReader<'_>> = runs
        .iter()
        .map(|&(at, len)| RunReader::new(f, at, len))
        .collect();
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, r) in readers.iter_mut().enumerate() {
        let mut first = Head {
            prefix: [0; 2],
            run: i,
            entry: Vec::new(),
        };
        if r.next(&mut first.entry)? {
            first.set_prefix();
            heap.push(first);
        }
    }
    let Ok(mut batch) = empty.recv() else {
        return Ok(());
    };
    while let Some(mut top) = heap.peek_mut() {
        batch.extend_from_slice(&top.entry);
        if readers[top.run].next(&mut top.entry)? {
            // The replaced head sinks to its place when `top` drops.
            top.set_prefix();
        } else {
            PeekMut::pop(top);
        }
        if batch.len() >= batch_bytes {
            if full.send(Ok(batch)).is_err() {
                return Ok(());
            }
            let Ok(next) = empty.recv() else {
                return Ok(());
            };
            batch = next;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        let _ = full.send(Ok(batch));
    }
    Ok(())
}

/// A run's next entry, ordered for a min-heap on the key. The key's first
/// bytes ([`prefix_of`]) order most pairs without reading the entries.
struct Head {
    prefix: [u64; 2],
    run: usize,
    entry: Vec<u8>,
}

impl Head {
    fn set_prefix(&mut self) {
        self.prefix = prefix_of(entry(&self.entry, 0).0);
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap's greatest is the smallest key.
        other
            .prefix
            .cmp(&self.prefix)
            .then_with(|| entry(&other.entry, 0).0.cmp(entry(&self.entry, 0).0))
    }
}

/// Reads a run's entries back from the temporary file.
struct RunReader<'f> {
    file: &'f File,
    at: u64,
    end: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<'f> RunReader<'f> {
    fn new(file: &'f File, at: u64, len: u64) -> Self {
        RunReader {
            file,
            at,
            end: at + len,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Makes `n` bytes available from `pos`; false at the end of the run.
    fn fill(&mut self, n: usize) -> Result<bool, LoadError> {
        if self.buf.len() - self.pos >= n {
            return Ok(true);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = (n - self.buf.len()).max(256 << 10);
        let take = want.min((self.end - self.at) as usize);
        if self.buf.len() + take < n {
            return Ok(false);
        }
        let old = self.buf.len();
        self.buf.resize(old + take, 0);
        self.file.read_exact_at(&mut self.buf[old..], self.at)?;
        self.at += take as u64;
        Ok(true)
    }

    /// The next entry into `out`; false at the end of the run.
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool, LoadError> {
        if !self.fill(4)? {
            return Ok(false);
        }
        let b = &self.buf[self.pos..];
        let len = 4 + u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        if !self.fill(len)? {
            return Err(LoadError::Io(std::io::Error::other(
                "an index run ends inside an entry",
            )));
        }
        out.clear();
        out.extend_from_slice(&self.buf[self.pos..self.pos + len]);
        self.pos += len;
        Ok(true)
    }
}

/// An integer key value, in as few bytes as keep the order: a length
/// byte, then the value's low bytes big-endian. The length byte is
/// `0x80 + n` for a value of `n` bytes that is not negative, `0x7f - n`
/// for a negative one (whose bytes are its two's complement), so negative
/// values sort first, the most bytes first among them, and the fewest
/// first among the others. Small keys put more of themselves in a run's
/// 16 leading bytes ([`Start`]) and take less room than eight fixed bytes.
fn put_int(i: i64, out: &mut Vec<u8>) {
    let (len, n) = int_head(i);
    out.push(len);
    put_first(out, &(i << (64 - 8 * n)).to_be_bytes(), n);
}

/// [`put_int`]'s length byte for `i`, and how many of its bytes follow:
/// as many as a sign extension gives the value back from.
#[inline]
fn int_head(i: i64) -> (u8, usize) {
    let m = if i < 0 { !i } else { i } as u64;
    let n = (8 - m.leading_zeros() as usize / 8).max(1);
    let len = if i < 0 {
        0x7f - n as u8
    } else {
        0x80 + n as u8
    };
    (len, n)
}

/// An integer key value whole: its class byte, [`put_int`]'s bytes and
/// [`WHOLE`], written at once.
#[inline]
fn put_int_key(i: i64, out: &mut Vec<u8>) {
    let (len, n) = int_head(i);
    let mut b = [0u8; 11];
    b[0] = 2;
    b[1] = len;
    // The value's low n bytes first, then the byte after them.
    b[2..10].copy_from_slice(&((i as u64) << (8 * (8 - n))).to_be_bytes());
    b[2 + n] = WHOLE;
    put_first(out, &b, 3 + n);
}

/// The integer [`put_int`] wrote at `*at` (XORed with `inv`); moves `*at`
/// past it. At least eight bytes follow its length byte in a key (the
/// rowid comes after it), so they are read as one word.
#[inline]
fn take_int(key: &[u8], at: &mut usize, inv: u8) -> i64 {
    let len = key[*at] ^ inv;
    // 1 to 8 in the keys put_int writes.
    let n = if len >= 0x80 { len - 0x80 } else { 0x7f - len }.min(8) as u32;
    let mut word = u64::from_be_bytes(key[*at + 1..*at + 9].try_into().expect("8 bytes"));
    if inv != 0 {
        word = !word;
    }
    // The value's n bytes, moved down; a negative one's sign extended.
    let low = word.checked_shr(64 - 8 * n).unwrap_or(0);
    let v = if len >= 0x80 || n == 8 {
        low
    } else {
        low | (u64::MAX << (8 * n))
    };
    *at += 1 + n as usize;
    v as i64
}

/// A number's byte after its integer part: a fraction below zero follows
/// (its magnitude's bits inverted), none, or one above zero.
const FRACTION_DOWN: u8 = 0x7f;
const WHOLE: u8 = 0x80;
const FRACTION_UP: u8 = 0x81;
/// In place of an integer part (whose first byte is 0x77 to 0x88, see
/// [`put_int`]): a real below every 64-bit integer (its bits inverted),
/// or one at or above 2^63.
const REAL_BELOW: u8 = 0x10;
const REAL_ABOVE: u8 = 0xf0;

/// A real key value (not a NaN), after its class byte, so that it sorts
/// among integers by value: within the range of 64-bit integers its
/// integer part toward zero ([`put_int`]), then the fraction (exact: the
/// difference of a double and its truncation is one), after a byte that
/// orders it below, at or above the integer; beyond that range a byte
/// below or above every integer part, then its bits in an order that
/// sorts. True when the value is a whole number: its key is that
/// integer's.
fn put_real(r: f64, out: &mut Vec<u8>) -> bool {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    if r < -LIMIT {
        out.push(REAL_BELOW);
        out.extend_from_slice(&(!r.to_bits()).to_be_bytes());
        return false;
    }
    if r >= LIMIT {
        out.push(REAL_ABOVE);
        out.extend_from_slice(&r.to_bits().to_be_bytes());
        return false;
    }
    let t = r.trunc();
    put_int(t as i64, out);
    let f = r - t;
    if f > 0.0 {
        out.push(FRACTION_UP);
        out.extend_from_slice(&f.to_bits().to_be_bytes());
        false
    } else if f < 0.0 {
        out.push(FRACTION_DOWN);
        out.extend_from_slice(&(!(-f).to_bits()).to_be_bytes());
        false
    } else {
        out.push(WHOLE);
        true
    }
}

/// Appends `b` with 0x00 escaped as 0x00 0x01, then 0x00 0x00.
fn escape(b: &[u8], out: &mut Vec<u8>) {
    // Copied in runs between its 0x00 bytes (most texts have none).
    let mut rest = b;
    while let Some(zero) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..zero]);
        out.extend_from_slice(&[0, 1]);
        rest = &rest[zero + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0, 0]);
}

/// Fills an index b-tree bottom up from entries in order.
struct TreeWriter {
    root: u32,
    leaf: PageBuf,
    /// Leaves written, and the separator after each (a cell without its
    /// child pointer).
    children: Vec<u32>,
    seps: Vec<Vec<u8>>,
    cell: Vec<u8>,
}

impl TreeWriter {
    fn new(root: u32, file: &PageFile) -> Self {
        TreeWriter {
            root,
            leaf: PageBuf::new(file.page_size, file.usable, INDEX_LEAF),
            children: Vec::new(),
            seps: Vec::new(),
            cell: Vec::new(),
        }
    }

    /// The cell of a payload on an index page, overflow written.
    fn make_cell(file: &mut PageFile, payload: &[u8], cell: &mut Vec<u8>) -> Result<(), LoadError> {
        let usable = u64::from(file.usable);
        let p = payload.len() as u64;
        let local = local_size(p, usable, index_max_local(usable));
        cell.clear();
        put_varint(cell, p);
        cell.extend_from_slice(&payload[..local]);
        if local < payload.len() {
            let mut rest = Payload {
                parts: [&payload[local..], &[]],
                at: 0,
            };
            let first = write_overflow(file, &mut rest)?;
            cell.extend_from_slice(&first.to_be_bytes());
        }
        Ok(())
    }

    fn add(&mut self, file: &mut PageFile, record: &[u8]) -> Result<(), LoadError> {
        let mut cell = std::mem::take(&mut self.cell);
        Self::make_cell(file, record, &mut cell)?;
        if !self.leaf.fits(cell.len()) {
            // The leaf is full: its last entry goes up as the separator
            // before the next leaf (an index page holds at least four).
            let mut sep = Vec::new();
            self.leaf.pop(&mut sep);
            let pgno = file.alloc()?;
            file.put(pgno, self.leaf.seal(None))?;
            self.children.push(pgno);
            self.seps.push(sep);
            self.leaf.reset(file.usable);
        }
        self.leaf.push(&cell);
        self.cell = cell;
        Ok(())
    }

    fn finish(mut self, file: &mut PageFile) -> Result<(), LoadError> {
        if self.children.is_empty() {
            file.put(self.root, self.leaf.seal(None))?;
            return file.flush();
        }
        let pgno = file.alloc()?;
        file.put(pgno, self.leaf.seal(None))?;
        self.children.push(pgno);
        let mut children = std::mem::take(&mut self.children);
        let mut seps = std::mem::take(&mut self.seps);
        loop {
            // Group the children into pages: a page's cells are (child,
            // separator after it), its last child is its right pointer, and
            // the separator after that child goes up a level.
            let n = children.len();
            let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
            let mut start = 0;
            let mut page = PageBuf::new(file.page_size, file.usable, INDEX_INTERIOR);
            let mut i = 0;
            while i + 1 < n {
                if page.fits(4 + seps[i].len()) {
                    page.push(&[&[0u8; 4][..], &seps[i]].concat());
                    i += 1;
                } else {
                    groups.push(start..i + 1);
                    start = i + 1;
                    i += 1;
                    page.reset(file.usable);
                }
            }
            groups.push(start..n);
            let k = groups.len();
            if k > 1 && groups[k - 1].len() == 1 {
                groups[k - 2].end -= 1;
                groups[k - 1].start -= 1;
            }
            let top = k == 1;
            let mut up_children = Vec::with_capacity(k);
            let mut up_seps = Vec::with_capacity(k.saturating_sub(1));
            for (g, range) in groups.iter().enumerate() {
                let mut page = PageBuf::new(file.page_size, file.usable, INDEX_INTERIOR);
                let last = range.end - 1;
                for c in range.start..last {
                    let mut cell = children[c].to_be_bytes().to_vec();
                    cell.extend_from_slice(&seps[c]);
                    page.push(&cell);
                }
                let pgno = if top { self.root } else { file.alloc()? };
                file.put(pgno, page.seal(Some(children[last])))?;
                up_children.push(pgno);
                if g + 1 < k {
                    up_seps.push(std::mem::take(&mut seps[last]));
                }
            }
            if top {
                return file.flush();
            }
            children = up_children;
            seps = up_seps;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bulkload::TableLoad;
    use crate::store::pages::ColumnRead;
    use rand::{Rng, SeedableRng};
    use rusqlite::types::Value;
    use rusqlite::Connection;

    const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b TEXT, c BLOB);
         CREATE INDEX t_ab ON t(a, b);
         CREATE UNIQUE INDEX t_c ON t(c);
         CREATE INDEX t_id_a ON t(id, a);";

    fn layout() -> Layout {
        let col = |rowid| ColumnRead {
            rowid,
            real: false,
            missing_is_null: true,
        };
        Layout {
            columns: vec![col(true), col(false), col(false), col(false)],
        }
    }

    fn root(c: &Connection, name: &str) -> u32 {
        c.query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn text(rng: &mut rand::rngs::StdRng, long: usize) -> String {
        let n = if rng.gen_range(0..20) == 0 {
            rng.gen_range(long / 2..long * 3)
        } else {
            rng.gen_range(0..6)
        };
        (0..n).map(|_| rng.gen_range('a'..='e')).collect()
    }

    /// Loads `rows` into `t` with its three indexes built from them, in
    /// runs of `run_bytes`; returns what each index's build said.
    fn load(
        path: &Path,
        page_size: u32,
        rows: &[(i64, Vec<Value>)],
        run_bytes: usize,
    ) -> Vec<(String, Option<&'static str>)> {
        load_after(
            path,
            &format!("PRAGMA page_size = {page_size};"),
            rows,
            run_bytes,
        )
    }

    /// [`load`], the database's pragmas set by `pragmas`.
    fn load_after(
        path: &Path,
        pragmas: &str,
        rows: &[(i64, Vec<Value>)],
        run_bytes: usize,
    ) -> Vec<(String, Option<&'static str>)> {
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!("{pragmas} {SCHEMA}")).unwrap();
        let specs = [
            ("t_ab", vec![1, 2], false),
            ("t_c", vec![3], true),
            ("t_id_a", vec![0, 1], false),
        ];
        let dir = path.parent().unwrap();
        let builds = specs
            .iter()
            .map(|(name, columns, unique)| {
                let mut b = IndexBuild::new(
                    IndexSpec {
                        name: name.to_string(),
                        root: root(&c, name),
                        columns: columns.iter().map(|&c| KeyColumn::binary(c)).collect(),
                        unique: *unique,
                        only: None,
                        clustered: false,
                        without_rowid: false,
                    },
                    dir,
                );
                b.run_bytes = run_bytes;
                // Many batches from the merge to the page writer.
                b.batch_bytes = run_bytes / 3;
                b
            })
            .collect();
        let table = root(&c, "t");
        drop(c);
        load_table(path, table, layout(), builds, rows)
    }

    /// Writes `rows` into the empty table at root `table` of the database
    /// at `path`, building `builds` with them; returns what each build said.
    fn load_table(
        path: &Path,
        table: u32,
        layout: Layout,
        builds: Vec<IndexBuild>,
        rows: &[(i64, Vec<Value>)],
    ) -> Vec<(String, Option<&'static str>)> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut file = PageFile::open(f).unwrap();
        let mut t = TableLoad::new(table, layout).with_indexes(builds);
        for (rowid, values) in rows {
            let refs: Vec<ValueRef<'_>> = values.iter().map(ValueRef::from).collect();
            t.push(&mut file, *rowid, &refs).unwrap();
        }
        let built = t.finish(&mut file).unwrap();
        file.close().unwrap();
        built
    }

    fn integrity(path: &Path) -> String {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    fn rows(seed: u64, n: usize, long: usize) -> Vec<(i64, Vec<Value>)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rowid = -50i64;
        (0..n)
            .map(|i| {
                rowid += rng.gen_range(1..1000);
                let a = match rng.gen_range(0..5) {
                    0 => Value::Null,
                    1 => Value::Integer(rng.gen_range(-3..3)),
                    2 => Value::Integer(rng.gen::<i64>()),
                    3 => Value::Text(text(&mut rng, long)),
                    _ => Value::Blob(text(&mut rng, long).into_bytes()),
                };
                let b = match rng.gen_range(0..4) {
                    0 => Value::Null,
                    _ => Value::Text(text(&mut rng, long)),
                };
                // Unique, or NULL (which may repeat); one with a zero byte.
                let c = match rng.gen_range(0..3) {
                    0 => Value::Null,
                    _ => Value::Blob(format!("k{i}\0{}", i % 7).into_bytes()),
                };
                (rowid, vec![Value::Integer(rowid), a, b, c])
            })
            .collect()
    }

    /// The merge gives every entry of every run once, in key order, for
    /// any number of runs, runs of different lengths, empty ones and keys
    /// that share their first 16 bytes.
    #[test]
    fn merged_runs_come_out_in_key_order() {
        use std::io::Write;
        let mut x = 0x2545_f491_u32;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for k in 0..=9usize {
            let dir = tempfile::tempdir().unwrap();
            let mut f = File::create_new(dir.path().join("runs")).unwrap();
            let (mut runs, mut all, mut at) = (Vec::new(), Vec::new(), 0u64);
            for r in 0..k {
                let mut keys: Vec<Vec<u8>> = (0..(r * 37 % 200))
                    .map(|_| {
                        let mut key = vec![7u8; 16 * (rand() as usize % 2)];
                        let tail = rand() as usize % 30;
                        key.extend((0..tail).map(|_| rand() as u8 % 4));
                        key
                    })
                    .collect();
                keys.sort();
                let mut bytes = Vec::new();
                for key in &keys {
                    bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
                    bytes.extend_from_slice(key);
                }
                f.write_all(&bytes).unwrap();
                runs.push((at, bytes.len() as u64));
                at += bytes.len() as u64;
                all.extend(keys);
            }
            all.sort();
            // Small batches, so that many go round.
            let (full_tx, full_rx) = sync_channel(1);
            let (empty_tx, empty_rx) = sync_channel(3);
            for _ in 0..3 {
                empty_tx.send(Vec::new()).unwrap();
            }
            let mut got = Vec::new();
            std::thread::scope(|s| {
                let (f, runs) = (&f, &runs);
                s.spawn(move || {
                    merge_runs(f, runs, 100, &empty_rx, &full_tx).unwrap();
                });
                for batch in full_rx {
                    let batch = batch.unwrap();
                    let mut at = 0;
                    while at < batch.len() {
                        let (key, next) = entry(&batch, at);
                        got.push(key.to_vec());
                        at = next;
                    }
                    let _ = empty_tx.send(batch);
                }
            });
            assert_eq!(got, all, "{k} runs");
        }
    }

    #[test]
    fn indexes_built_from_the_rows_pass_sqlites_check_and_serve_queries() {
        // Page sizes with index cells that spill (512), runs in memory and
        // merged from a file, trees of one leaf and of several levels.
        for (seed, page_size, n, run_bytes) in [
            (1u64, 512u32, 3000, 4096),
            (2, 4096, 4000, RUN_BYTES),
            (3, 4096, 5, 64),
            (4, 1024, 2500, 50_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let rows = rows(seed, n, page_size as usize / 4);
            let built = load(&path, page_size, &rows, run_bytes);
            assert!(built.iter().all(|(_, why)| why.is_none()), "{built:?}");
            assert_eq!(integrity(&path), "ok", "seed {seed}");
            // The temporary runs are gone.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
            let c = Connection::open(&path).unwrap();
            let count =
                |sql: &str, v: &Value| -> i64 { c.query_row(sql, [v], |r| r.get(0)).unwrap() };
            for (_, values) in rows.iter().step_by(97) {
                for (col, index) in [("a", "t_ab"), ("c", "t_c")] {
                    let v = if col == "a" { &values[1] } else { &values[3] };
                    let by_index =
                        format!("SELECT count(*) FROM t INDEXED BY {index} WHERE {col} IS ?1");
                    let by_table = format!("SELECT count(*) FROM t NOT INDEXED WHERE {col} IS ?1");
                    assert_eq!(count(&by_index, v), count(&by_table, v));
                }
            }
            // SQLite writes on: a duplicate of a unique key is refused.
            let dup = rows.iter().find_map(|(_, v)| match &v[3] {
                Value::Blob(b) => Some(b.clone()),
                _ => None,
            });
            if let Some(b) = dup {
                assert!(c.execute("INSERT INTO t(c) VALUES (?1)", [b]).is_err());
            }
        }
    }

    /// Every key column a value of every class: integers, reals (whole,
    /// fractional, beyond 64-bit integers, signed zeros, infinities),
    /// texts differing in case and trailing spaces, blobs.
    fn any_value(rng: &mut rand::rngs::StdRng) -> Value {
        const EDGES: [f64; 22] = [
            f64::NEG_INFINITY,
            -1e300,
            -18446744073709551616.0,
            -9223372036854775808.0,
            -9007199254740994.0,
            -140737488355328.0,
            -1.5,
            -1.0,
            -0.5,
            -5e-324,
            -0.0,
            0.0,
            5e-324,
            0.5,
            1.0,
            140737488355327.0,
            140737488355328.0,
            9007199254740992.0,
            9223372036854774784.0,
            9223372036854775808.0,
            1e300,
            f64::INFINITY,
        ];
        const INTS: [i64; 8] = [
            i64::MIN,
            -9007199254740993,
            -1,
            0,
            1,
            9007199254740993,
            9223372036854774784,
            i64::MAX,
        ];
        match rng.gen_range(0..9) {
            0 => Value::Null,
            1 => Value::Integer(rng.gen_range(-3..3)),
            2 => Value::Integer(INTS[rng.gen_range(0..INTS.len())]),
            3 => Value::Real(EDGES[rng.gen_range(0..EDGES.len())]),
            4 => Value::Real(f64::from(rng.gen_range(-3..3)) + rng.gen_range(-1.0..1.0)),
            5 => Value::Real(f64::from(rng.gen_range(-3i32..3))),
            6 | 7 => Value::Text(
                (0..rng.gen_range(0..5))
                    .map(|_| ['a', 'A', 'b', 'B', ' ', 'é', '0', '\0'][rng.gen_range(0..8)])
                    .collect(),
            ),
            _ => Value::Blob(
                (0..rng.gen_range(0..4))
                    .map(|_| [0u8, b' ', b'a', b'A'][rng.gen_range(0..4)])
                    .collect(),
            ),
        }
    }

    /// The records of an index b-tree in order, read off the file (none
    /// may spill to overflow pages).
    fn index_records(path: &Path, root: u32) -> Vec<Vec<u8>> {
        fn walk(data: &[u8], size: usize, usable: usize, pgno: u32, out: &mut Vec<Vec<u8>>) {
            let page = &data[(pgno as usize - 1) * size..pgno as usize * size];
            let kind = page[0];
            let cells = u16::from_be_bytes([page[3], page[4]]) as usize;
            let at = if kind == INDEX_INTERIOR { 12 } else { 8 };
            for i in 0..cells {
                let mut off = u16::from_be_bytes([page[at + 2 * i], page[at + 2 * i + 1]]) as usize;
                if kind == INDEX_INTERIOR {
                    let child = u32::from_be_bytes(page[off..off + 4].try_into().unwrap());
                    walk(data, size, usable, child, out);
                    off += 4;
                }
                let (len, used) = crate::store::btree::varint(page, off).unwrap();
                assert!(len <= index_max_local(usable as u64), "no overflow");
                out.push(page[off + used..off + used + len as usize].to_vec());
            }
            if kind == INDEX_INTERIOR {
                let right = u32::from_be_bytes(page[8..12].try_into().unwrap());
                walk(data, size, usable, right, out);
            } else {
                assert_eq!(kind, INDEX_LEAF);
            }
        }
        let data = std::fs::read(path).unwrap();
        let size = match u16::from_be_bytes([data[16], data[17]]) {
            1 => 65536,
            s => s as usize,
        };
        let mut out = Vec::new();
        walk(&data, size, size - data[20] as usize, root, &mut out);
        out
    }

    /// The key columns of index `name` as SQLite lists them.
    /// The spec of index `name` of table `t(id, r, n, a, s)`: its keys
    /// (columns, or `lower()` / `upper()` of one) and its condition, as
    /// the restore reads them.
    fn spec_of(c: &Connection, name: &str, unique: bool) -> IndexSpec {
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap();
        let parsed = crate::store::indexsql::parse(&sql).unwrap();
        let column = |n: &str| {
            ["id", "r", "n", "a", "s"]
                .iter()
                .position(|c| *c == n)
                .unwrap()
        };
        let mut columns = key_columns(c, name);
        for (k, key) in parsed.keys.iter().enumerate() {
            if let crate::store::indexsql::Key::Fold(f, n) = key {
                columns[k].column = column(n);
                columns[k].fold = Some(*f);
            }
        }
        let only = parsed.condition.map(|w| match w {
            crate::store::indexsql::Where::Null {
                column: n,
                not_null,
            } => NullFilter {
                column: column(&n),
                not_null,
            },
            crate::store::indexsql::Where::Other => panic!("{name}: a condition not read"),
        });
        IndexSpec {
            name: name.into(),
            root: root(c, name),
            columns,
            unique,
            only,
            clustered: false,
            without_rowid: false,
        }
    }

    fn key_columns(c: &Connection, name: &str) -> Vec<KeyColumn> {
        c.prepare("SELECT cid, \"desc\", coll FROM pragma_index_xinfo(?1) WHERE key ORDER BY seqno")
            .unwrap()
            .query_map([name], |r| {
                Ok(KeyColumn {
                    column: r.get::<_, i64>(0)? as usize,
                    desc: r.get(1)?,
                    collation: Collation::named(&r.get::<_, String>(2)?).unwrap(),
                    fold: None,
                })
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Indexes of reals among integers, DESC columns and the NOCASE and
    /// RTRIM collations, built here from the rows as SQLite returns them,
    /// hold the very records SQLite's own `CREATE INDEX` writes, in its
    /// order: REAL affinity's whole numbers written as integers, a real
    /// equal to an integer still a real elsewhere, texts as they were.
    #[test]
    fn indexes_of_reals_desc_and_collations_hold_sqlites_records() {
        const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, r REAL, n NUMERIC, a, s TEXT);";
        const INDEXES: &str = "
            CREATE INDEX t_r ON t(r);
            CREATE INDEX t_r_desc ON t(r DESC, s);
            CREATE INDEX t_a ON t(a, r);
            CREATE INDEX t_n_desc ON t(n DESC);
            CREATE INDEX t_s_nocase ON t(s COLLATE NOCASE, a DESC);
            CREATE INDEX t_s_rtrim ON t(s COLLATE RTRIM DESC);
            CREATE INDEX t_a_nocase ON t(a COLLATE NOCASE DESC, id);
            CREATE UNIQUE INDEX t_id_r ON t(id DESC, r);
            CREATE INDEX t_r_some ON t(r DESC) WHERE r IS NOT NULL;
            CREATE INDEX t_a_none ON t(id, s) WHERE a ISNULL;
            CREATE INDEX t_s_lower ON t(lower(s), a DESC);
            CREATE INDEX t_s_upper ON t(UPPER(s) COLLATE NOCASE DESC) WHERE s NOTNULL;";
        const NAMES: [&str; 12] = [
            "t_r",
            "t_r_desc",
            "t_a",
            "t_n_desc",
            "t_s_nocase",
            "t_s_rtrim",
            "t_a_nocase",
            "t_id_r",
            "t_r_some",
            "t_a_none",
            "t_s_lower",
            "t_s_upper",
        ];
        for (seed, n, run_bytes) in [(11u64, 3000, 4096), (12, 2000, RUN_BYTES)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            // SQLite's: the rows, then its indexes.
            let twin = dir.path().join("twin.db");
            let c = Connection::open(&twin).unwrap();
            c.execute_batch(&format!("PRAGMA page_size = 4096; {TABLE}"))
                .unwrap();
            for i in 0..n {
                let row = [0; 4].map(|_| any_value(&mut rng));
                c.execute(
                    "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![i * 3 - 1000, row[0], row[1], row[2], row[3]],
                )
                .unwrap();
            }
            c.execute_batch(INDEXES).unwrap();
            let rows: Vec<(i64, Vec<Value>)> = c
                .prepare("SELECT id, r, n, a, s FROM t ORDER BY id")
                .unwrap()
                .query_map([], |r| {
                    let values: Vec<Value> = (0..5).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                    Ok((r.get(0)?, values))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            drop(c);

            // Ours: the same schema, its indexes built with the rows.
            let path = dir.path().join("t.db");
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("PRAGMA page_size = 4096; {TABLE} {INDEXES}"))
                .unwrap();
            let builds = NAMES
                .iter()
                .map(|name| {
                    let mut b = IndexBuild::new(spec_of(&c, name, *name == "t_id_r"), dir.path());
                    b.run_bytes = run_bytes;
                    b.batch_bytes = run_bytes / 3;
                    b
                })
                .collect();
            let table = root(&c, "t");
            drop(c);
            let col = |rowid, real| ColumnRead {
                rowid,
                real,
                missing_is_null: true,
            };
            let layout = Layout {
                columns: vec![
                    col(true, false),
                    col(false, true),
                    col(false, false),
                    col(false, false),
                    col(false, false),
                ],
            };
            let built = load_table(&path, table, layout, builds, &rows);
            assert!(built.iter().all(|(_, why)| why.is_none()), "{built:?}");
            assert_eq!(integrity(&path), "ok", "seed {seed}");

            let (ours, theirs) = (
                Connection::open(&path).unwrap(),
                Connection::open(&twin).unwrap(),
            );
            for name in NAMES {
                let mine = index_records(&path, root(&ours, name));
                let sqlites = index_records(&twin, root(&theirs, name));
                assert_eq!(mine.len(), sqlites.len(), "{name}");
                if !["t_r_some", "t_a_none", "t_s_upper"].contains(&name) {
                    assert_eq!(mine.len(), n as usize, "{name}");
                } else {
                    assert!(mine.len() > 100 && mine.len() < n as usize, "{name}");
                }
                if let Some(i) = (0..mine.len()).find(|&i| mine[i] != sqlites[i]) {
                    panic!(
                        "{name}, seed {seed}: entry {i} is {:02x?}, SQLite's {:02x?}",
                        mine[i], sqlites[i]
                    );
                }
            }
        }
    }

    /// In an auto-vacuum database the pages written here get their
    /// pointer-map entries (tables and indexes of several levels, cells
    /// spilling to overflow pages, separators among them, a map of many
    /// pages at 512 bytes a page): `integrity_check` reads every entry, and
    /// SQLite, which moves pages by them (a new index's root takes the
    /// place of a written page; a vacuum fills the holes of deleted rows),
    /// leaves a sound file.
    #[test]
    fn with_auto_vacuum_the_pointer_map_is_kept() {
        for (mode, seed) in [("FULL", 21u64), ("INCREMENTAL", 22)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let rows = rows(seed, 3000, 600);
            let pragmas = format!("PRAGMA page_size = 512; PRAGMA auto_vacuum = {mode};");
            let built = load_after(&path, &pragmas, &rows, 4096);
            assert!(built.iter().all(|(_, why)| why.is_none()), "{built:?}");
            assert_eq!(integrity(&path), "ok", "{mode}");
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE INDEX t_b ON t(b);
                 DELETE FROM t WHERE id % 3 = 0;
                 PRAGMA incremental_vacuum;",
            )
            .unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM t INDEXED BY t_b", [], |r| r.get(0))
                .unwrap();
            let kept = rows.iter().filter(|(id, _)| id % 3 != 0).count();
            assert_eq!(n as usize, kept, "{mode}");
            drop(c);
            assert_eq!(integrity(&path), "ok", "{mode}, after SQLite moved pages");
        }
    }

    #[test]
    fn a_repeated_unique_key_is_left_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut rows = self::rows(6, 200, 100);
        rows[20].1[3] = Value::Blob(b"same".to_vec());
        rows[150].1[3] = Value::Blob(b"same".to_vec());
        let built = load(&path, 4096, &rows, 2048);
        let why = built.iter().find(|(n, _)| n == "t_c").unwrap().1;
        assert_eq!(why, Some("a UNIQUE key repeats"));
    }

    /// A text or blob comes back as it went in, 0x00 bytes wherever they
    /// are, from the escaped form a key holds.
    #[test]
    fn escaped_bytes_come_back() {
        let values: [&[u8]; 8] = [
            b"",
            b"\0",
            b"\0\0",
            b"a\0",
            b"\0a",
            b"a\0\0b\0c",
            b"no zero byte at all",
            b"\x01\0\x01",
        ];
        for v in values {
            for class in [3u8, 4] {
                let mut key = vec![class];
                escape(v, &mut key);
                let order_len = key.len();
                key.extend_from_slice(&(7u64 ^ (1 << 63)).to_be_bytes());
                key.push(0);
                let (mut head, mut body, mut rec) = (Vec::new(), Vec::new(), Vec::new());
                let got = record_of(&key, &[0], true, &mut head, &mut body, &mut rec);
                assert_eq!(got, (false, order_len));
                let serial = v.len() as u64 * 2 + if class == 3 { 13 } else { 12 };
                let mut want_head = Vec::new();
                put_varint(&mut want_head, serial);
                put_varint(&mut want_head, 1);
                assert_eq!(head, want_head, "{v:?}");
                assert_eq!(&body[..v.len()], v, "{v:?}");
                assert_eq!(&body[v.len()..], &[7], "then the rowid");
            }
        }
    }

    /// An integer comes back as it went in, whatever its size and sign,
    /// from ascending and DESC (inverted) keys.
    #[test]
    fn integer_keys_come_back() {
        let values = crate::store::bulkload::edge_integers();
        let mut key = Vec::new();
        for &v in &values {
            put_int(v, &mut key);
            // The form a key column takes, class and whole mark around it.
            let mut want = vec![2];
            put_int(v, &mut want);
            want.push(WHOLE);
            let mut got = Vec::new();
            put_int_key(v, &mut got);
            assert_eq!(got, want, "{v}");
        }
        let end = key.len();
        // A rowid's eight bytes follow in a key.
        key.extend_from_slice(&[0xa5; 8]);
        let mut inverted: Vec<u8> = key.iter().map(|b| !b).collect();
        inverted.truncate(end);
        inverted.extend_from_slice(&[0x5a; 8]);
        for (bytes, inv) in [(&key, 0), (&inverted, 0xff)] {
            let mut at = 0;
            for &v in &values {
                assert_eq!(take_int(bytes, &mut at, inv), v);
            }
            assert_eq!(at, end);
        }
    }

    /// Keys alike in their first bytes, or in all sixteen, or shorter
    /// than sixteen, or repeated whole: the radix sort of a run orders
    /// them as comparing the keys does, at sizes on both sides of
    /// [`RADIX_MIN`].
    #[test]
    fn a_run_sorted_by_radix_orders_as_its_keys_compare() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (n, shared) in [
            (1000, 0),
            (RADIX_MIN, 3),
            (5000, 14),
            (5000, 16),
            (3000, 40),
        ] {
            let mut buf = Vec::new();
            let mut starts = Vec::new();
            let common: Vec<u8> = (0..shared).map(|_| rng.gen()).collect();
            for _ in 0..n {
                let mut key = common.clone();
                // Few values in a byte, so that prefixes tie often.
                let len = rng.gen_range(0..24);
                key.extend((0..len).map(|_| rng.gen_range(0..3u8)));
                if rng.gen_range(0..10) == 0 && !starts.is_empty() {
                    let Start { at, .. } = starts[rng.gen_range(0..starts.len())];
                    key = entry(&buf, at as usize).0.to_vec();
                }
                starts.push(Start {
                    prefix: prefix_of(&key),
                    at: buf.len() as u32,
                });
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(&key);
            }
            let mut want: Vec<&[u8]> = starts
                .iter()
                .map(|s| entry(&buf, s.at as usize).0)
                .collect();
            want.sort_unstable();
            let mut spare = Vec::new();
            sort_starts(&mut starts, &mut spare, &buf);
            let got: Vec<&[u8]> = starts
                .iter()
                .map(|s| entry(&buf, s.at as usize).0)
                .collect();
            assert_eq!(got, want, "{n} keys sharing {shared} bytes");
        }
    }

    /// The byte order of the keys is SQLite's order of the values (BINARY
    /// collation): classes, integers by value, text and blobs bytewise
    /// with a prefix first; so is the order of a sorted run, whose keys
    /// are first compared by their leading 16 bytes.
    #[test]
    fn key_bytes_sort_as_sqlite_orders_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE v(x)").unwrap();
        let mut values = Vec::new();
        for _ in 0..3000 {
            let v = match rng.gen_range(0..7) {
                0 => Value::Null,
                6 => Value::Integer(
                    [
                        i64::MIN,
                        i64::MIN + 1,
                        -257,
                        -256,
                        -255,
                        -1,
                        0,
                        255,
                        256,
                        i64::MAX,
                    ][rng.gen_range(0..10)],
                ),
                // Keys that share their first 16 bytes, or end inside them.
                5 => Value::Text(
                    "0123456789abcdefghij"[..rng.gen_range(8..20)]
                        .chars()
                        .chain((0..rng.gen_range(0..3)).map(|_| rng.gen_range('\0'..'c')))
                        .collect(),
                ),
                1 => Value::Integer(rng.gen_range(-300..300)),
                2 => Value::Integer(rng.gen::<i64>() >> rng.gen_range(0..64)),
                3 => Value::Text(
                    (0..rng.gen_range(0..4))
                        .map(|_| rng.gen_range('\0'..'c'))
                        .collect(),
                ),
                _ => Value::Blob(
                    (0..rng.gen_range(0..4))
                        .map(|_| rng.gen_range(0..3))
                        .collect(),
                ),
            };
            c.execute("INSERT INTO v VALUES (?1)", [&v]).unwrap();
            values.push(v);
        }
        let sqlite: Vec<Value> = c
            .prepare("SELECT x FROM v ORDER BY x, rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let layout = Layout {
            columns: vec![ColumnRead {
                rowid: false,
                real: false,
                missing_is_null: true,
            }],
        };
        let spec = IndexSpec {
            name: "v".into(),
            root: 2,
            columns: vec![KeyColumn::binary(0)],
            unique: false,
            only: None,
            clustered: false,
            without_rowid: false,
        };
        let mut b = IndexBuild::new(spec, Path::new("."));
        for (i, v) in values.iter().enumerate() {
            b.push(i as i64 + 1, &[ValueRef::from(v)], &layout).unwrap();
        }
        b.sort_run();
        let ours: Vec<Value> = b
            .starts
            .iter()
            .map(|s| {
                let key = entry(&b.buf, s.at as usize).0;
                let rowid =
                    (u64::from_be_bytes(key[key.len() - 9..key.len() - 1].try_into().unwrap())
                        ^ (1 << 63)) as i64;
                values[rowid as usize - 1].clone()
            })
            .collect();
        assert_eq!(ours, sqlite);
    }
}
