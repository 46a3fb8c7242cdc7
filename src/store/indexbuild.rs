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
//! records under the BINARY collation: per key column a class byte (NULL,
//! integer, text, blob, in SQLite's order), then the value (integers in
//! as few bytes as keep their order, see `put_int`; text and blobs with
//! 0x00 escaped as 0x00 0x01 and ended by 0x00 0x00, so a prefix sorts
//! first), then the rowid (eight bytes big-endian, the sign bit flipped).
//! These keys live only in memory and in the build's temporary file.
//! Only what that covers is built here: a key of table columns,
//! ascending, BINARY, not partial, with no REAL value in a key (a real
//! compares with integers by value, which this order does not reproduce).
//! Anything else is refused and left to SQLite (`REINDEX`); so is a UNIQUE
//! index whose entries turn out to repeat a key without a NULL (SQLite
//! then reports the constraint).

use super::bulkload::{
    header_len, int_serial, local_size, put_varint, write_overflow, LoadError, PageBuf, PageFile,
    Payload, INDEX_INTERIOR, INDEX_LEAF,
};
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

/// Bytes of entries, counting each one's [`Start`], sorted in memory before
/// they are written out as a run. The sort takes up to as much again.
pub const RUN_BYTES: usize = 16 << 20;

/// What an index holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    /// The index's root page (empty until the build).
    pub root: u32,
    /// Key columns, as positions in the table's columns.
    pub columns: Vec<usize>,
    /// No two entries may share a key without a NULL in it.
    pub unique: bool,
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
    dir: PathBuf,
    spill: Option<File>,
    spilled: u64,
    runs: Vec<(u64, u64)>,
    key: Vec<u8>,
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
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    [
        u64::from_be_bytes(p[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
    ]
}

/// An entry's key in a run buffer (`klen u32, key`), and where the next
/// entry starts.
fn entry(buf: &[u8], at: usize) -> (&[u8], usize) {
    let klen = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    (&buf[at + 4..at + 4 + klen], at + 4 + klen)
}

/// The index record a key stands for (key values, then the rowid), into
/// `out`; whether a key value is NULL. The key is one this module made.
fn record_of(key: &[u8], head: &mut Vec<u8>, body: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    head.clear();
    body.clear();
    let mut null = false;
    let fields = key.len() - 8;
    let mut at = 0;
    while at < fields {
        let class = key[at];
        at += 1;
        let serial = match class {
            1 => {
                null = true;
                0
            }
            2 => int_serial(take_int(key, &mut at), body),
            _ => {
                // Runs of bytes up to each 0x00: an escaped 0x00 (0x00
                // 0x01) puts one back, the end (0x00 0x00) stops.
                let start = body.len();
                loop {
                    let run = key[at..]
                        .iter()
                        .position(|&b| b == 0)
                        .expect("a key's text ends with 0x00 0x00");
                    body.extend_from_slice(&key[at..at + run]);
                    at += run + 2;
                    if key[at - 1] == 0 {
                        break;
                    }
                    body.push(0);
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
    let rowid = u64::from_be_bytes(key[fields..].try_into().expect("8 bytes")) ^ (1 << 63);
    let serial = int_serial(rowid as i64, body);
    put_varint(head, serial);
    out.clear();
    put_varint(out, header_len(head.len() as u64));
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    null
}

impl IndexBuild {
    /// Gathers `spec`'s entries; runs that do not fit in memory go to an
    /// unlinked file in `dir`.
    pub fn new(spec: IndexSpec, dir: &Path) -> Self {
        IndexBuild {
            spec,
            run_bytes: RUN_BYTES,
            batch_bytes: MERGE_BATCH,
            refused: None,
            buf: Vec::new(),
            starts: Vec::new(),
            dir: dir.to_owned(),
            spill: None,
            spilled: 0,
            runs: Vec::new(),
            key: Vec::new(),
        }
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
        if self.refused.is_some() {
            return Ok(());
        }
        self.key.clear();
        for &c in &self.spec.columns {
            let v = if layout.columns[c].rowid {
                ValueRef::Integer(rowid)
            } else {
                values[c]
            };
            match v {
                ValueRef::Null => self.key.push(1),
                ValueRef::Integer(i) => {
                    self.key.push(2);
                    put_int(i, &mut self.key);
                }
                ValueRef::Text(t) => {
                    self.key.push(3);
                    escape(t, &mut self.key);
                }
                ValueRef::Blob(b) => {
                    self.key.push(4);
                    escape(b, &mut self.key);
                }
                ValueRef::Real(_) => {
                    self.refused = Some("a REAL value in a key column");
                    self.buf = Vec::new();
                    self.starts = Vec::new();
                    return Ok(());
                }
            }
        }
        self.key
            .extend_from_slice(&((rowid as u64) ^ (1 << 63)).to_be_bytes());
        self.starts.push(Start {
            prefix: prefix_of(&self.key),
            at: u32::try_from(self.buf.len()).expect("a run is under 4 GiB"),
        });
        self.buf
            .extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&self.key);
        if self.buf.len() + self.starts.len() * std::mem::size_of::<Start>() >= self.run_bytes {
            self.spill_run()?;
        }
        Ok(())
    }

    fn sort_run(&mut self) {
        let buf = &self.buf;
        self.starts.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| entry(buf, a.at as usize).0.cmp(entry(buf, b.at as usize).0))
        });
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
        for s in &self.starts {
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
    unique: bool,
    /// The last key less its rowid, and whether a value of it was NULL.
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
            unique: spec.unique,
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
        let null = record_of(key, &mut self.head, &mut self.body, &mut self.rec);
        if self.unique {
            // Only a UNIQUE index needs the key before to compare with.
            let prefix = &key[..key.len() - 8];
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
    // Bytes that a sign extension gives back: n for the value's magnitude.
    let m = if i < 0 { !i } else { i } as u64;
    let n = (8 - m.leading_zeros() as usize / 8).max(1);
    out.push(if i < 0 {
        0x7f - n as u8
    } else {
        0x80 + n as u8
    });
    out.extend_from_slice(&i.to_be_bytes()[8 - n..]);
}

/// The integer [`put_int`] wrote at `*at`; moves `*at` past it.
fn take_int(key: &[u8], at: &mut usize) -> i64 {
    let len = key[*at];
    let (n, mut v) = if len >= 0x80 {
        ((len - 0x80) as usize, 0i64)
    } else {
        ((0x7f - len) as usize, -1i64)
    };
    for &b in &key[*at + 1..*at + 1 + n] {
        v = (v << 8) | b as i64;
    }
    *at += 1 + n;
    v
}

/// Appends `b` with 0x00 escaped as 0x00 0x01, then 0x00 0x00.
fn escape(b: &[u8], out: &mut Vec<u8>) {
    // Copied in runs between its 0x00 bytes (most texts have none).
    let mut runs = b.split(|&byte| byte == 0);
    if let Some(first) = runs.next() {
        out.extend_from_slice(first);
    }
    for run in runs {
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(run);
    }
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
        let local = local_size(p, usable, (usable - 12) * 64 / 255 - 23);
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
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!("PRAGMA page_size = {page_size}; {SCHEMA}"))
            .unwrap();
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
                        columns: columns.clone(),
                        unique: *unique,
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
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut file = PageFile::open(f).unwrap();
        let mut t = TableLoad::new(table, layout()).with_indexes(builds);
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

    #[test]
    fn a_real_key_or_a_repeated_unique_key_is_left_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut rows = rows(5, 200, 100);
        rows[10].1[1] = Value::Real(1.5);
        let built = load(&path, 4096, &rows, RUN_BYTES);
        let why = |name: &str| built.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(why("t_ab"), Some("a REAL value in a key column"));
        assert_eq!(why("t_id_a"), Some("a REAL value in a key column"));
        assert_eq!(why("t_c"), None);
        // Until SQLite rebuilds them, the refused indexes are empty.
        assert_ne!(integrity(&path), "ok");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("REINDEX t_ab; REINDEX t_id_a;").unwrap();
        assert_eq!(integrity(&path), "ok");

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
                key.extend_from_slice(&(7u64 ^ (1 << 63)).to_be_bytes());
                let (mut head, mut body, mut rec) = (Vec::new(), Vec::new(), Vec::new());
                assert!(!record_of(&key, &mut head, &mut body, &mut rec));
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

    /// An integer comes back as it went in, whatever its size and sign.
    #[test]
    fn integer_keys_come_back() {
        let mut values = vec![i64::MIN, i64::MIN + 1, i64::MAX, 0, -1, 1];
        for shift in 0..64 {
            for base in [1i64 << shift, (1i64 << shift).wrapping_neg()] {
                values.extend([base.wrapping_sub(1), base, base.wrapping_add(1)]);
            }
        }
        let mut key = Vec::new();
        for &v in &values {
            put_int(v, &mut key);
        }
        let mut at = 0;
        for &v in &values {
            assert_eq!(take_int(&key, &mut at), v);
        }
        assert_eq!(at, key.len());
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
            columns: vec![0],
            unique: false,
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
                let rowid = (u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap())
                    ^ (1 << 63)) as i64;
                values[rowid as usize - 1].clone()
            })
            .collect();
        assert_eq!(ours, sqlite);
    }
}
