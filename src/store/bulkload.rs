//! A rowid table's b-tree written page by page, from rows in rowid order,
//! into a database file no connection has open (SQLite file format, 1.6
//! "B-tree Pages" and 2.1 "Record Format").
//!
//! A restore builds most tables this way: inserting through SQLite's
//! statement machinery (bind, step, the b-tree's search for the insert
//! point) cost several times more than encoding the records and filling
//! the pages. The tree is built bottom up: leaves are filled in rowid order
//! and appended to the file, overflow pages as a cell needs them, then each
//! level of interior pages above them; the top page is written over the
//! table's root page, which `CREATE TABLE` allocated (empty). A table that
//! fits one leaf is written straight into its root.
//!
//! The records hold what a `SELECT` of the columns returns, so a `SELECT`
//! of the new table returns the same values: NULL in the field of a column
//! that aliases the rowid (the rowid is the cell's key), whole reals of a
//! REAL-affinity column as integers (as SQLite stores them; they read back
//! as reals), NaN as NULL (SQLite cannot store a NaN). Indexes are not
//! written: the caller rebuilds them from the table (`REINDEX`,
//! `CREATE INDEX`).
//!
//! The caller (the restore) uses this only for a UTF-8 database without
//! auto-vacuum (no pointer-map pages), for tables whose [`Layout`] it read
//! from the new database, and only while no connection has the file open;
//! it then records the new page count in the header ([`PageFile::close`]).

use super::indexbuild::IndexBuild;
use super::pages::{ColumnRead, Layout};
use rusqlite::types::ValueRef;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Bytes of consecutive pages gathered before one write.
const WRITE_BATCH: usize = 1 << 20;
/// The alignment `O_DIRECT` asks of buffers, lengths and offsets.
const DIRECT_ALIGN: usize = 4096;

/// SQLite's default limit on a row's record (`SQLITE_MAX_LENGTH`): an
/// `INSERT` of a longer one fails, and so does reading one back.
const MAX_RECORD: u64 = 1_000_000_000;

/// A database file's pages, written directly.
pub struct PageFile {
    file: File,
    /// The same file opened with `O_DIRECT`, once asked for
    /// ([`PageFile::write_around_cache`]) and taken by the file system:
    /// the batches of pages go through it, not through the page cache.
    direct: Option<File>,
    pub(super) page_size: u32,
    /// Page size less the reserved bytes at the end of each page.
    pub(super) usable: u32,
    /// The database's size in pages; the next page allocated is this + 1.
    pages: u32,
    /// Consecutive pages waiting to be written (from byte `lead` on, which
    /// is aligned for `O_DIRECT`; the vector never grows past its first
    /// capacity, so it never moves), the first numbered `batch_at`.
    batch: Vec<u8>,
    lead: usize,
    batch_at: u32,
    /// In a database with pointer-map pages (auto-vacuum), each page
    /// written here and its parent, found in the pages as they are
    /// written; the map's pages are written at [`close`](Self::close).
    ptrmap: Option<Vec<PtrEntry>>,
    /// The pages the file had when opened (pointer-map pages among them
    /// hold SQLite's entries; later ones start empty).
    had: u32,
}

/// A pointer-map entry (file format 1.7, "Pointer Map or Ptrmap Pages"):
/// a page, its kind, and the page that points to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PtrEntry {
    page: u32,
    kind: u8,
    parent: u32,
}

/// Pointer-map kinds of the pages written here.
const PTRMAP_OVERFLOW1: u8 = 3;
const PTRMAP_OVERFLOW2: u8 = 4;
const PTRMAP_BTREE: u8 = 5;

/// Why a page file cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the database header {0}")]
    Header(&'static str),
    /// (The rowids stay out of the message: a rowid may be a customer's id.)
    #[error("a row's rowid is not above the last row's: pages are written in rowid order")]
    Order { rowid: i64, last: i64 },
    #[error("a row has {got} values, the table {want} columns")]
    Shape { got: usize, want: usize },
    #[error("the database would exceed 2^32 - 2 pages")]
    Full,
    #[error("a row of {0} bytes is longer than SQLite reads (SQLITE_MAX_LENGTH, 10^9 bytes)")]
    TooLong(u64),
}

impl PageFile {
    /// Opens a database file that SQLite created and closed (its header
    /// names its size).
    pub fn open(file: File) -> Result<Self, LoadError> {
        let mut h = [0u8; 100];
        file.read_exact_at(&mut h, 0)?;
        if &h[..16] != b"SQLite format 3\0" {
            return Err(LoadError::Header("is not a SQLite header"));
        }
        let page_size = match u16::from_be_bytes([h[16], h[17]]) {
            1 => 65536,
            n => u32::from(n),
        };
        if !page_size.is_power_of_two() || page_size < 512 {
            return Err(LoadError::Header("has an invalid page size"));
        }
        let usable = page_size - u32::from(h[20]);
        if usable < 480 {
            return Err(LoadError::Header("reserves too much of each page"));
        }
        let counter = u32::from_be_bytes(h[24..28].try_into().expect("4 bytes"));
        let valid_for = u32::from_be_bytes(h[92..96].try_into().expect("4 bytes"));
        let in_header = u32::from_be_bytes(h[28..32].try_into().expect("4 bytes"));
        let len = file.metadata()?.len();
        if len % u64::from(page_size) != 0 {
            return Err(LoadError::Header("names a size the file does not have"));
        }
        let pages = u32::try_from(len / u64::from(page_size)).map_err(|_| LoadError::Full)?;
        // The file may run past the size the header names (an auto-vacuum
        // commit leaves it so); SQLite reads the header's, as here, and
        // pages appended go over the rest.
        if counter != valid_for || in_header == 0 || in_header > pages {
            return Err(LoadError::Header("names a size the file does not have"));
        }
        let pages = in_header;
        let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH + DIRECT_ALIGN);
        let lead = batch.as_ptr().align_offset(DIRECT_ALIGN);
        batch.resize(lead, 0);
        // A largest root page is set only where pointer-map pages are kept.
        let largest_root = u32::from_be_bytes(h[52..56].try_into().expect("4 bytes"));
        Ok(PageFile {
            file,
            direct: None,
            page_size,
            usable,
            pages,
            batch,
            lead,
            batch_at: 0,
            ptrmap: (largest_root != 0).then(Vec::new),
            had: pages,
        })
    }

    /// The page the lock byte falls in (at 1 GiB), which is never used.
    fn lock_page(&self) -> u64 {
        (1u64 << 30) / u64::from(self.page_size) + 1
    }

    /// The pointer-map page that holds `pgno`'s entry (SQLite's
    /// `ptrmapPageno`): page 2, then one every `usable / 5 + 1` pages, the
    /// lock byte's page skipped.
    fn ptrmap_page(&self, pgno: u32) -> u32 {
        let per = self.usable / 5 + 1;
        let at = (pgno - 2) / per * per + 2;
        if u64::from(at) == self.lock_page() {
            at + 1
        } else {
            at
        }
    }

    /// Writes the pages of `path` (this file) around the page cache from
    /// now on, where the file system and the page size allow it: a restore
    /// writes each page once, and a cache page taken for it would evict
    /// something else. The header is still read and written through the
    /// cache ([`close`](Self::close)); pages written here are never
    /// written through it, so the two never overlap.
    pub fn write_around_cache(&mut self, path: &Path) {
        if !(self.page_size as usize).is_multiple_of(DIRECT_ALIGN) {
            return;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => self.direct = Some(f),
            Err(e) => tracing::debug!(error = %e, "pages written through the page cache"),
        }
    }

    pub(super) fn alloc(&mut self) -> Result<u32, LoadError> {
        let lock_page = self.lock_page();
        loop {
            self.pages = self.pages.checked_add(1).ok_or(LoadError::Full)?;
            if self.pages == u32::MAX {
                return Err(LoadError::Full);
            }
            if u64::from(self.pages) == lock_page {
                self.put_raw(self.pages, &vec![0; self.page_size as usize])?;
            } else if self.ptrmap.is_some() && self.ptrmap_page(self.pages) == self.pages {
                // A pointer-map page: written at close (through the page
                // cache, like the header; never through the batches).
            } else {
                return Ok(self.pages);
            }
        }
    }

    /// Writes b-tree page `pgno` (1-based); consecutive pages go out in
    /// batches. With a pointer map, its children and its cells' first
    /// overflow pages are noted as pointed to from it.
    pub(super) fn put(&mut self, pgno: u32, page: &[u8]) -> Result<(), LoadError> {
        if let Some(map) = &mut self.ptrmap {
            note_btree_page(map, self.usable, pgno, page);
        }
        self.put_raw(pgno, page)
    }

    /// Writes overflow page `pgno`; with a pointer map, the next page of
    /// its chain is noted as pointed to from it.
    pub(super) fn put_overflow(&mut self, pgno: u32, page: &[u8]) -> Result<(), LoadError> {
        if let Some(map) = &mut self.ptrmap {
            let next = u32::from_be_bytes(page[..4].try_into().expect("4 bytes"));
            if next != 0 {
                map.push(PtrEntry {
                    page: next,
                    kind: PTRMAP_OVERFLOW2,
                    parent: pgno,
                });
            }
        }
        self.put_raw(pgno, page)
    }

    fn put_raw(&mut self, pgno: u32, page: &[u8]) -> Result<(), LoadError> {
        debug_assert_eq!(page.len(), self.page_size as usize);
        let size = self.page_size as usize;
        let held = self.batch.len() - self.lead;
        let next = self.batch_at + (held / size) as u32;
        if held == 0 || pgno != next || held + size > WRITE_BATCH {
            self.flush()?;
            self.batch_at = pgno;
        }
        self.batch.extend_from_slice(page);
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), LoadError> {
        if self.batch.len() > self.lead {
            let at = u64::from(self.batch_at - 1) * u64::from(self.page_size);
            let data = &self.batch[self.lead..];
            let mut done = false;
            if let Some(d) = &self.direct {
                match d.write_all_at(data, at) {
                    Ok(()) => done = true,
                    // Taken at open, refused at the write: through the
                    // cache from now on (this batch whole, again).
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                self.file.write_all_at(data, at)?;
            }
            self.batch.truncate(self.lead);
        }
        Ok(())
    }

    /// Writes what is pending and records the database's new size in its
    /// header (and a new change counter, so a connection that cached the
    /// old pages reads them again).
    pub fn close(mut self) -> Result<(), LoadError> {
        self.flush()?;
        self.write_ptrmap()?;
        let mut h = [0u8; 100];
        self.file.read_exact_at(&mut h, 0)?;
        let counter = u32::from_be_bytes(h[24..28].try_into().expect("4 bytes")).wrapping_add(1);
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&self.pages.to_be_bytes());
        h[92..96].copy_from_slice(&counter.to_be_bytes());
        self.file.write_all_at(&h, 0)?;
        Ok(())
    }

    /// Writes the noted entries into the pointer-map pages: those the
    /// file had are read and updated, new ones start empty.
    fn write_ptrmap(&mut self) -> Result<(), LoadError> {
        let Some(mut map) = self.ptrmap.take() else {
            return Ok(());
        };
        map.sort_unstable();
        let size = self.page_size as usize;
        let mut page = vec![0u8; size];
        let mut i = 0;
        while i < map.len() {
            let at = self.ptrmap_page(map[i].page);
            let offset = u64::from(at - 1) * u64::from(self.page_size);
            if at <= self.had {
                self.file.read_exact_at(&mut page, offset)?;
            } else {
                // New: past what the header named (the file may hold an
                // old page there, which is not the map's).
                page.fill(0);
            }
            while i < map.len() && self.ptrmap_page(map[i].page) == at {
                let e = map[i];
                let o = 5 * (e.page - at - 1) as usize;
                if o + 5 > self.usable as usize {
                    return Err(LoadError::Io(std::io::Error::other(
                        "a pointer-map entry falls outside its page",
                    )));
                }
                page[o] = e.kind;
                page[o + 1..o + 5].copy_from_slice(&e.parent.to_be_bytes());
                i += 1;
            }
            self.file.write_all_at(&page, offset)?;
        }
        Ok(())
    }
}

/// Notes what b-tree page `pgno` points to: its children, and the first
/// overflow page of each cell that spills (file format 1.6).
fn note_btree_page(map: &mut Vec<PtrEntry>, usable: u32, pgno: u32, page: &[u8]) {
    let kind = page[0];
    let interior = kind == INTERIOR || kind == INDEX_INTERIOR;
    let cells = usize::from(u16::from_be_bytes([page[3], page[4]]));
    let header = if interior { 12 } else { 8 };
    let mut child = |page_no: u32, kind: u8| {
        map.push(PtrEntry {
            page: page_no,
            kind,
            parent: pgno,
        })
    };
    if interior {
        child(
            u32::from_be_bytes(page[8..12].try_into().expect("4 bytes")),
            PTRMAP_BTREE,
        );
    }
    let usable = u64::from(usable);
    let max_local = if kind == LEAF {
        table_max_local(usable)
    } else {
        index_max_local(usable)
    };
    for c in 0..cells {
        let mut at = usize::from(u16::from_be_bytes([
            page[header + 2 * c],
            page[header + 2 * c + 1],
        ]));
        if interior {
            child(
                u32::from_be_bytes(page[at..at + 4].try_into().expect("4 bytes")),
                PTRMAP_BTREE,
            );
            if kind == INTERIOR {
                continue; // a rowid, no payload
            }
            at += 4;
        }
        let (payload, n) = super::btree::varint(page, at).expect("a cell this module wrote");
        at += n;
        if kind == LEAF {
            let (_, n) = super::btree::varint(page, at).expect("a cell this module wrote");
            at += n;
        }
        if payload > max_local {
            at += local_size(payload, usable, max_local);
            child(
                u32::from_be_bytes(page[at..at + 4].try_into().expect("4 bytes")),
                PTRMAP_OVERFLOW1,
            );
        }
    }
}

/// Page flags (file format 1.6).
const INTERIOR: u8 = 0x05;
const LEAF: u8 = 0x0d;
pub(super) const INDEX_INTERIOR: u8 = 0x02;
pub(super) const INDEX_LEAF: u8 = 0x0a;

/// A page being filled: cells from the end backwards, their pointers after
/// the header.
pub(super) struct PageBuf {
    bytes: Vec<u8>,
    header: usize,
    cells: usize,
    /// Start of the cell content area.
    content: usize,
    /// Length of the cell pushed last (0 once taken back).
    last: usize,
}

impl PageBuf {
    pub(super) fn new(size: u32, usable: u32, kind: u8) -> Self {
        let mut bytes = vec![0u8; size as usize];
        bytes[0] = kind;
        PageBuf {
            bytes,
            header: if kind == LEAF || kind == INDEX_LEAF {
                8
            } else {
                12
            },
            cells: 0,
            content: usable as usize,
            last: 0,
        }
    }

    pub(super) fn fits(&self, cell: usize) -> bool {
        self.header + 2 * (self.cells + 1) + cell <= self.content
    }

    pub(super) fn push(&mut self, cell: &[u8]) {
        self.content -= cell.len();
        self.bytes[self.content..self.content + cell.len()].copy_from_slice(cell);
        let ptr = self.header + 2 * self.cells;
        self.bytes[ptr..ptr + 2].copy_from_slice(&(self.content as u16).to_be_bytes());
        self.cells += 1;
        self.last = cell.len();
    }

    /// Takes back the cell pushed last (once; cells are written from the
    /// end of the page backwards, so it starts the content area).
    pub(super) fn pop(&mut self, out: &mut Vec<u8>) {
        debug_assert!(self.cells > 0 && self.last > 0, "one push to take back");
        out.clear();
        out.extend_from_slice(&self.bytes[self.content..self.content + self.last]);
        self.bytes[self.content..self.content + self.last].fill(0);
        self.content += self.last;
        self.cells -= 1;
        let ptr = self.header + 2 * self.cells;
        self.bytes[ptr..ptr + 2].fill(0);
        self.last = 0;
    }

    /// The finished page; the buffer is left empty for the next one.
    pub(super) fn seal(&mut self, right: Option<u32>) -> &[u8] {
        self.bytes[1..3].fill(0); // no freeblocks
        self.bytes[3..5].copy_from_slice(&(self.cells as u16).to_be_bytes());
        // 65536 is written as 0.
        self.bytes[5..7].copy_from_slice(&(self.content as u16).to_be_bytes());
        self.bytes[7] = 0;
        if let Some(r) = right {
            self.bytes[8..12].copy_from_slice(&r.to_be_bytes());
        }
        &self.bytes
    }

    pub(super) fn reset(&mut self, usable: u32) {
        let kind = self.bytes[0];
        self.bytes.fill(0);
        self.bytes[0] = kind;
        self.cells = 0;
        self.content = usable as usize;
        self.last = 0;
    }
}

/// The record of `values`, each with how its column is read, into `head`
/// (from the returned offset: the header's length, then the serial types)
/// and `body`, as SQLite writes it: a rowid alias as NULL, a NaN as NULL,
/// a whole real of a REAL-affinity column as an integer.
pub(super) fn put_record<'v>(
    values: impl Iterator<Item = (ValueRef<'v>, &'v ColumnRead)>,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> usize {
    // Room for the header's length, written last, in front.
    head.clear();
    head.resize(9, 0);
    body.clear();
    for (v, col) in values {
        let serial = if col.rowid {
            0
        } else {
            match v {
                ValueRef::Null => 0,
                ValueRef::Integer(i) => int_serial(i, body),
                ValueRef::Real(r) if r.is_nan() => 0,
                ValueRef::Real(r) if col.real && whole(r) => int_serial(r as i64, body),
                ValueRef::Real(r) => {
                    body.extend_from_slice(&r.to_bits().to_be_bytes());
                    7
                }
                ValueRef::Text(t) => {
                    body.extend_from_slice(t);
                    t.len() as u64 * 2 + 13
                }
                ValueRef::Blob(b) => {
                    body.extend_from_slice(b);
                    b.len() as u64 * 2 + 12
                }
            }
        };
        put_varint(head, serial);
    }
    let total = header_len(head.len() as u64 - 9);
    if total < 0x80 {
        head[8] = total as u8;
        8
    } else {
        let mut len = Vec::with_capacity(9);
        put_varint(&mut len, total);
        let at = 9 - len.len();
        head[at..9].copy_from_slice(&len);
        at
    }
}

/// One table's b-tree being built.
pub struct TableLoad {
    root: u32,
    layout: Layout,
    leaf: Option<PageBuf>,
    /// Leaves written so far: page number and largest rowid.
    leaves: Vec<(u32, i64)>,
    last: Option<i64>,
    rows: u64,
    max_record: u64,
    /// The table's indexes, gathered as the rows come.
    indexes: Vec<IndexBuild>,
    /// Scratch for one row: the record header (from `head_at`), the body,
    /// the cell.
    head: Vec<u8>,
    head_at: usize,
    body: Vec<u8>,
    cell: Vec<u8>,
}

impl TableLoad {
    /// Starts the table whose (empty) root page is `root`.
    pub fn new(root: u32, layout: Layout) -> Self {
        TableLoad {
            root,
            layout,
            leaf: None,
            leaves: Vec::new(),
            last: None,
            rows: 0,
            max_record: MAX_RECORD,
            indexes: Vec::new(),
            head: Vec::new(),
            head_at: 0,
            body: Vec::new(),
            cell: Vec::new(),
        }
    }

    /// Builds these indexes of the table too, from its rows.
    pub fn with_indexes(mut self, indexes: Vec<IndexBuild>) -> Self {
        self.indexes = indexes;
        self
    }

    /// The largest rowid loaded so far.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// The rows loaded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one row; its rowid must be above every rowid before it.
    pub fn push(
        &mut self,
        file: &mut PageFile,
        rowid: i64,
        values: &[ValueRef<'_>],
    ) -> Result<(), LoadError> {
        if let Some(last) = self.last.filter(|&l| rowid <= l) {
            return Err(LoadError::Order { rowid, last });
        }
        if values.len() != self.layout.columns.len() {
            return Err(LoadError::Shape {
                got: values.len(),
                want: self.layout.columns.len(),
            });
        }
        self.record(values);
        let usable = u64::from(file.usable);
        let payload = (self.header().len() + self.body.len()) as u64;
        if payload > self.max_record {
            return Err(LoadError::TooLong(payload));
        }
        let local = local_size(payload, usable, table_max_local(usable));
        self.cell.clear();
        put_varint(&mut self.cell, payload);
        put_varint(&mut self.cell, rowid as u64);
        let spill = local < payload as usize;
        let cell_len = self.cell.len() + local + if spill { 4 } else { 0 };
        let leaf = self
            .leaf
            .get_or_insert_with(|| PageBuf::new(file.page_size, file.usable, LEAF));
        if !leaf.fits(cell_len) {
            let max = self.last.expect("a full leaf holds rows");
            let pgno = file.alloc()?;
            file.put(pgno, leaf.seal(None))?;
            leaf.reset(file.usable);
            self.leaves.push((pgno, max));
        }
        // The payload: header then body, split between the cell and its
        // overflow pages.
        let mut rest = Payload {
            parts: [&self.head[self.head_at..], &self.body],
            at: 0,
        };
        rest.take(local, &mut self.cell);
        if spill {
            let first = write_overflow(file, &mut rest)?;
            self.cell.extend_from_slice(&first.to_be_bytes());
        }
        for ix in &mut self.indexes {
            ix.push(rowid, values, &self.layout)?;
        }
        let leaf = self.leaf.as_mut().expect("made above");
        leaf.push(&self.cell);
        self.last = Some(rowid);
        self.rows += 1;
        Ok(())
    }

    /// The record of one row into `head` and `body`.
    fn record(&mut self, values: &[ValueRef<'_>]) {
        self.head_at = put_record(
            values.iter().copied().zip(&self.layout.columns),
            &mut self.head,
            &mut self.body,
        );
    }

    /// The record header [`record`](Self::record) made.
    fn header(&self) -> &[u8] {
        &self.head[self.head_at..]
    }

    /// Writes the rest of the tree and its root, then the indexes'. Returns
    /// each index's name and, if it was left to SQLite, why.
    pub fn finish(
        mut self,
        file: &mut PageFile,
    ) -> Result<Vec<(String, Option<&'static str>)>, LoadError> {
        let indexes = std::mem::take(&mut self.indexes);
        self.finish_table(file)?;
        let mut out = Vec::with_capacity(indexes.len());
        for ix in indexes {
            let name = ix.spec().name.clone();
            out.push((name, ix.finish(file)?));
        }
        Ok(out)
    }

    fn finish_table(mut self, file: &mut PageFile) -> Result<(), LoadError> {
        let Some(mut leaf) = self.leaf.take() else {
            return Ok(()); // no rows: the root stays an empty leaf
        };
        let max = self.last.expect("a leaf holds rows");
        if self.leaves.is_empty() {
            file.put(self.root, leaf.seal(None))?;
            return file.flush();
        }
        let pgno = file.alloc()?;
        file.put(pgno, leaf.seal(None))?;
        self.leaves.push((pgno, max));
        let mut level = std::mem::take(&mut self.leaves);
        let mut cell = Vec::with_capacity(13);
        loop {
            // Split the level's children into interior pages, each as full
            // as it goes, but never leaving one child alone on the last.
            let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
            let mut start = 0;
            let mut page = PageBuf::new(file.page_size, file.usable, INTERIOR);
            for (i, &(_, key)) in level.iter().enumerate() {
                cell.clear();
                cell.extend_from_slice(&[0; 4]);
                put_varint(&mut cell, key as u64);
                if i > start && !page.fits(cell.len()) {
                    groups.push(start..i);
                    start = i;
                    page.reset(file.usable);
                }
                page.push(&cell);
            }
            groups.push(start..level.len());
            if groups.len() > 1 && groups.last().is_some_and(|g| g.len() == 1) {
                let n = groups.len();
                groups[n - 2].end -= 1;
                groups[n - 1].start -= 1;
            }
            let top = groups.len() == 1;
            let mut up = Vec::with_capacity(groups.len());
            for g in groups {
                let mut page = PageBuf::new(file.page_size, file.usable, INTERIOR);
                let children = &level[g];
                let (right, key) = *children.last().expect("a page has children");
                for &(child, max) in &children[..children.len() - 1] {
                    cell.clear();
                    cell.extend_from_slice(&child.to_be_bytes());
                    put_varint(&mut cell, max as u64);
                    page.push(&cell);
                }
                let pgno = if top { self.root } else { file.alloc()? };
                file.put(pgno, page.seal(Some(right)))?;
                up.push((pgno, key));
            }
            if top {
                return file.flush();
            }
            level = up;
        }
    }
}

/// The most of a payload a table leaf keeps on the page (file format 1.6).
pub(super) fn table_max_local(usable: u64) -> u64 {
    usable - 35
}

/// The most of a payload an index page keeps on the page (file format 1.6).
pub(super) fn index_max_local(usable: u64) -> u64 {
    (usable - 12) * 64 / 255 - 23
}

/// How much of a payload stays on its page (file format 1.6): all of it up
/// to `x` ([`table_max_local`] or [`index_max_local`]), else a part chosen
/// so the overflow pages fill.
pub(super) fn local_size(payload: u64, usable: u64, x: u64) -> usize {
    (if payload <= x {
        payload
    } else {
        let m = ((usable - 12) * 32 / 255) - 23;
        let k = m + (payload - m) % (usable - 4);
        if k <= x {
            k
        } else {
            m
        }
    }) as usize
}

/// Writes the rest of a payload to a chain of overflow pages; returns the
/// first.
pub(super) fn write_overflow(
    file: &mut PageFile,
    rest: &mut Payload<'_>,
) -> Result<u32, LoadError> {
    let first = file.alloc()?;
    let mut page = vec![0u8; file.page_size as usize];
    let mut data = Vec::with_capacity(file.usable as usize - 4);
    let mut pgno = first;
    loop {
        page.fill(0);
        data.clear();
        rest.take(file.usable as usize - 4, &mut data);
        page[4..4 + data.len()].copy_from_slice(&data);
        let next = if rest.left() > 0 { file.alloc()? } else { 0 };
        page[..4].copy_from_slice(&next.to_be_bytes());
        file.put_overflow(pgno, &page)?;
        if next == 0 {
            return Ok(first);
        }
        pgno = next;
    }
}

/// A payload in two parts, taken from the front.
pub(super) struct Payload<'a> {
    pub(super) parts: [&'a [u8]; 2],
    pub(super) at: usize,
}

impl Payload<'_> {
    pub(super) fn left(&self) -> usize {
        self.parts[0].len() + self.parts[1].len() - self.at
    }

    pub(super) fn take(&mut self, n: usize, out: &mut Vec<u8>) {
        let n = n.min(self.left());
        let mut need = n;
        let mut at = self.at;
        for part in self.parts {
            if at >= part.len() {
                at -= part.len();
                continue;
            }
            let k = need.min(part.len() - at);
            out.extend_from_slice(&part[at..at + k]);
            need -= k;
            at = 0;
            if need == 0 {
                break;
            }
        }
        self.at += n;
    }
}

/// A real SQLite stores as an integer in a REAL-affinity column: a whole
/// number within 6-byte integers, -2^47 to 2^47 - 1 (not -0.0, whose sign
/// an integer loses).
pub(super) fn whole(r: f64) -> bool {
    const LIMIT: f64 = (1u64 << 47) as f64;
    r.fract() == 0.0 && (-LIMIT..LIMIT).contains(&r) && !(r == 0.0 && r.is_sign_negative())
}

/// Integers at the edges of every width, of both signs, and the extremes:
/// what the tests of integer encodings try.
#[cfg(test)]
pub(super) fn edge_integers() -> Vec<i64> {
    let mut values = vec![i64::MIN, i64::MIN + 1, i64::MAX, 0, -1, 1];
    for shift in 0..64 {
        for base in [1i64 << shift, (1i64 << shift).wrapping_neg()] {
            values.extend([base.wrapping_sub(1), base, base.wrapping_add(1)]);
        }
    }
    values
}

/// Appends an integer's big-endian bytes to `body`; returns its serial type.
pub(super) fn int_serial(i: i64, body: &mut Vec<u8>) -> u64 {
    let (serial, width) = match i {
        0 => return 8,
        1 => return 9,
        -0x80..=0x7f => (1, 1),
        -0x8000..=0x7fff => (2, 2),
        -0x80_0000..=0x7f_ffff => (3, 3),
        -0x8000_0000..=0x7fff_ffff => (4, 4),
        -0x8000_0000_0000..=0x7fff_ffff_ffff => (5, 6),
        _ => (6, 8),
    };
    put_first(body, &(i << (64 - 8 * width)).to_be_bytes(), width);
    serial
}

/// Appends the first `n` bytes of `b`: all of `b` is written, a store of
/// a fixed size, and the rest cut off again, instead of a call to copy a
/// slice whose length is known only at run time (a few bytes, once a value
/// of a restore: integers, varints, index keys).
#[inline]
pub(super) fn put_first<const N: usize>(out: &mut Vec<u8>, b: &[u8; N], n: usize) {
    debug_assert!(n <= N);
    let at = out.len();
    out.extend_from_slice(b);
    out.truncate(at + n);
}

/// Appends a SQLite varint (big-endian groups of 7 bits, the ninth byte
/// whole). Inlined for the one-byte case, nearly every serial type of a
/// record header (a restore writes one a value).
#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        put_long_varint(out, v);
    }
}

#[inline(never)]
fn put_long_varint(out: &mut Vec<u8>, v: u64) {
    if v > 0x00ff_ffff_ffff_ffff {
        let mut b = [0u8; 9];
        b[8] = v as u8;
        let mut rest = v >> 8;
        for i in (0..8).rev() {
            b[i] = (rest as u8 & 0x7f) | 0x80;
            rest >>= 7;
        }
        out.extend_from_slice(&b);
        return;
    }
    let n = varint_len(v);
    let mut b = [0u8; 8];
    for (k, i) in (0..n).rev().enumerate() {
        let byte = ((v >> (7 * i)) & 0x7f) as u8;
        b[k] = if i > 0 { byte | 0x80 } else { byte };
    }
    put_first(out, &b, n);
}

/// The length of a record header whose serial types take `types` bytes:
/// the header starts with its own length, that varint included.
pub(super) fn header_len(types: u64) -> u64 {
    let mut total = types + 1;
    while varint_len(total) as u64 + types != total {
        total = varint_len(total) as u64 + types;
    }
    total
}

/// The bytes [`put_varint`] writes for `v`.
fn varint_len(v: u64) -> usize {
    if v > 0x00ff_ffff_ffff_ffff {
        9
    } else {
        (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pages::ColumnRead;
    use rand::{Rng, SeedableRng};
    use rusqlite::types::Value;
    use rusqlite::Connection;
    use std::path::Path;

    /// `t(id INTEGER PRIMARY KEY, a, r REAL, x TEXT, b BLOB)`: the rowid
    /// alias, a column of no affinity, REAL, TEXT and BLOB.
    const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a, r REAL, x TEXT, b BLOB)";

    fn layout() -> Layout {
        let col = |rowid, real| ColumnRead {
            rowid,
            real,
            missing_is_null: true,
        };
        Layout {
            columns: vec![
                col(true, false),
                col(false, false),
                col(false, true),
                col(false, false),
                col(false, false),
            ],
        }
    }

    /// A new database of `page_size` holding the empty table; its root page.
    fn create(path: &Path, page_size: u32) -> u32 {
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!("PRAGMA page_size = {page_size}; {TABLE};"))
            .unwrap();
        c.query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// The file as the restore opens it: pages of 4 KiB or more written
    /// around the page cache (where the file system takes `O_DIRECT`),
    /// smaller ones through it, so the tests' page sizes cover both.
    fn open(path: &Path) -> PageFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut file = PageFile::open(f).unwrap();
        file.write_around_cache(path);
        if file.page_size < 4096 {
            assert!(file.direct.is_none(), "pages of {} bytes", file.page_size);
        }
        file
    }

    fn load(path: &Path, root: u32, rows: &[(i64, Vec<Value>)]) {
        let mut file = open(path);
        let mut t = TableLoad::new(root, layout());
        for (rowid, values) in rows {
            let refs: Vec<ValueRef<'_>> = values.iter().map(ValueRef::from).collect();
            t.push(&mut file, *rowid, &refs).unwrap();
        }
        t.finish(&mut file).unwrap();
        file.close().unwrap();
    }

    fn value(rng: &mut rand::rngs::StdRng, page: usize) -> Value {
        let len = |rng: &mut rand::rngs::StdRng| match rng.gen_range(0..10) {
            0 => rng.gen_range(page / 2..page * 3), // spills, sometimes over pages
            1 => 0,
            _ => rng.gen_range(1..40),
        };
        match rng.gen_range(0..9) {
            0 => Value::Null,
            1 => Value::Integer(rng.gen_range(-2..3)),
            2 => {
                let bits = rng.gen_range(0..64);
                Value::Integer(rng.gen::<i64>() >> bits)
            }
            3 => Value::Real(rng.gen_range(-1e6..1e6)),
            4 => Value::Real(f64::from(rng.gen_range(-1000..1000))),
            5 => Value::Real([-0.0, f64::INFINITY, f64::MIN, 5e-324][rng.gen_range(0..4)]),
            6 => {
                let n = len(rng);
                Value::Text((0..n).map(|_| rng.gen_range('a'..='ж')).collect())
            }
            _ => {
                let n = len(rng);
                Value::Blob((0..n).map(|_| rng.gen()).collect())
            }
        }
    }

    /// What a `SELECT` of the row returns.
    fn expected(rowid: i64, values: &[Value]) -> Vec<Value> {
        let mut v = values.to_vec();
        v[0] = Value::Integer(rowid);
        if let Value::Integer(i) = v[2] {
            v[2] = Value::Real(i as f64);
        }
        v
    }

    /// SQLite finds the file intact: every page used once, every b-tree
    /// in order, every index matching its table.
    fn assert_intact(path: &Path) {
        let c = Connection::open(path).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    fn select(path: &Path) -> Vec<(i64, Vec<Value>)> {
        assert_intact(path);
        let c = Connection::open(path).unwrap();
        let mut stmt = c
            .prepare("SELECT rowid, id, a, r, x, b FROM t ORDER BY rowid")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                (1..6).map(|i| r.get(i)).collect::<Result<_, _>>()?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn a_table_written_page_by_page_reads_back_as_its_rows() {
        for (seed, page_size, n) in [(1u64, 512u32, 3000), (2, 4096, 2000), (3, 65536, 400)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let root = create(&path, page_size);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut rowid = -(1i64 << 40);
            let mut rows = Vec::new();
            for i in 0..n {
                rowid += match i % 7 {
                    0 => rng.gen_range(1..1 << 30),
                    _ => rng.gen_range(1..4),
                };
                if i == n - 1 {
                    rowid = i64::MAX;
                }
                let mut values: Vec<Value> = (0..5)
                    .map(|_| value(&mut rng, page_size as usize))
                    .collect();
                values[0] = Value::Integer(rowid);
                // As affinity leaves them: no text in the REAL column, no
                // numbers in the TEXT one.
                if let Value::Text(_) | Value::Blob(_) = values[2] {
                    values[2] = Value::Null;
                }
                if let Value::Integer(_) | Value::Real(_) = values[3] {
                    values[3] = Value::Null;
                }
                if i % 11 == 0 {
                    values[2] = Value::Real(f64::NAN);
                }
                rows.push((rowid, values));
            }
            load(&path, root, &rows);
            let got = select(&path);
            assert_eq!(got.len(), rows.len(), "page size {page_size}");
            for ((rowid, values), (got_rowid, got_values)) in rows.iter().zip(&got) {
                assert_eq!(rowid, got_rowid);
                let mut want = expected(*rowid, values);
                if matches!(values[2], Value::Real(r) if r.is_nan()) {
                    want[2] = Value::Null;
                }
                assert_eq!(&want, got_values, "row {rowid}, page size {page_size}");
                // -0.0 keeps its sign.
                if let (Value::Real(w), Value::Real(g)) = (&want[1], &got_values[1]) {
                    assert_eq!(w.to_bits(), g.to_bits());
                }
            }
            // The tree has interior pages, and SQLite can add to it.
            let c = Connection::open(&path).unwrap();
            c.execute("INSERT INTO t(a) VALUES ('after')", []).unwrap();
            c.execute("DELETE FROM t WHERE id % 3 = 0 AND a IS NOT 'after'", [])
                .unwrap();
            drop(c);
            let after = Value::Text("after".into());
            assert_eq!(select(&path).iter().filter(|r| r.1[1] == after).count(), 1);
        }
    }

    #[test]
    fn a_record_header_longer_than_one_varint_byte_reads_back() {
        // 100 text columns of 100 bytes: two-byte serial types, a header
        // of 202 bytes whose length takes two bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let cols: Vec<String> = (0..100).map(|i| format!("c{i} TEXT")).collect();
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("CREATE TABLE w({})", cols.join(", ")))
            .unwrap();
        let root: u32 = c
            .query_row("SELECT rootpage FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        drop(c);
        let plain = ColumnRead {
            rowid: false,
            real: false,
            missing_is_null: true,
        };
        let mut file = open(&path);
        let mut t = TableLoad::new(
            root,
            Layout {
                columns: vec![plain; 100],
            },
        );
        let rows: Vec<Vec<Value>> = (0..50)
            .map(|r| {
                (0..100)
                    .map(|i| Value::Text(format!("{r:03}{i:03}").repeat(17)[..100].to_owned()))
                    .collect()
            })
            .collect();
        for (i, row) in rows.iter().enumerate() {
            let refs: Vec<ValueRef<'_>> = row.iter().map(ValueRef::from).collect();
            t.push(&mut file, i as i64 + 1, &refs).unwrap();
        }
        assert_eq!(t.header().len(), 202);
        t.finish(&mut file).unwrap();
        file.close().unwrap();
        assert_intact(&path);
        let c = Connection::open(&path).unwrap();
        let got: Vec<Vec<Value>> = c
            .prepare("SELECT * FROM w ORDER BY rowid")
            .unwrap()
            .query_map([], |r| (0..100).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, rows);
    }

    #[test]
    fn whole_reals_are_stored_as_sqlite_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let root = create(&path, 4096);
        let rows: Vec<(i64, Vec<Value>)> = [
            2.0,
            -3.0,
            1e15,
            1e300,
            0.5,
            -0.0,
            -140737488355328.0,
            -140737488355329.0,
            140737488355327.0,
            140737488355328.0,
        ]
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let v = vec![
                Value::Null,
                Value::Null,
                Value::Real(r),
                Value::Null,
                Value::Null,
            ];
            (i as i64 + 1, v)
        })
        .collect();
        // On disk: a whole real within 6-byte integers is an integer
        // (serial types 1 to 5, 8, 9); others, and -0.0, are 8-byte reals (7).
        let mut t = TableLoad::new(root, layout());
        let serials = [1u8, 1, 7, 7, 7, 7, 5, 7, 5, 7];
        assert_eq!(serials.len(), rows.len());
        for ((_, v), serial) in rows.iter().zip(serials) {
            let refs: Vec<ValueRef<'_>> = v.iter().map(ValueRef::from).collect();
            t.record(&refs);
            assert_eq!(t.header(), [6, 0, 0, serial, 0, 0], "{v:?}");
        }
        load(&path, root, &rows);
        let c = Connection::open(&path).unwrap();
        let got: Vec<f64> = c
            .prepare("SELECT r FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), rows.len());
        for (g, (_, w)) in got.iter().zip(&rows) {
            let Value::Real(w) = w[2] else { unreachable!() };
            assert_eq!(g.to_bits(), w.to_bits());
        }
        // And they compare as the source's do, through an index too.
        c.execute_batch("CREATE INDEX t_r ON t(r)").unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t WHERE r = 2", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_strict_tables_whole_reals_pass_its_type_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE s(id INTEGER PRIMARY KEY, r REAL, a ANY) STRICT")
            .unwrap();
        let root: u32 = c
            .query_row("SELECT rootpage FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        drop(c);
        let col = |rowid, real| ColumnRead {
            rowid,
            real,
            missing_is_null: true,
        };
        let mut file = open(&path);
        let mut t = TableLoad::new(
            root,
            Layout {
                columns: vec![col(true, false), col(false, true), col(false, false)],
            },
        );
        for (i, r) in [2.0, -7.0, 0.25].into_iter().enumerate() {
            let a = ValueRef::Real(r);
            t.push(
                &mut file,
                i as i64 + 1,
                &[ValueRef::Null, ValueRef::Real(r), a],
            )
            .unwrap();
        }
        t.finish(&mut file).unwrap();
        file.close().unwrap();
        assert_intact(&path);
        let c = Connection::open(&path).unwrap();
        let got: Vec<(String, f64, String, f64)> = c
            .prepare("SELECT typeof(r), r, typeof(a), a FROM s ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let real = |v: f64| ("real".to_owned(), v, "real".to_owned(), v);
        assert_eq!(got, [real(2.0), real(-7.0), real(0.25)]);
    }

    #[test]
    fn the_page_of_the_lock_byte_is_never_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        create(&path, 65536);
        let mut file = open(&path);
        // The lock byte (offset 2^30) is on page 16385 of 64 KiB pages.
        file.pages = 16383;
        assert_eq!(file.alloc().unwrap(), 16384);
        assert_eq!(file.alloc().unwrap(), 16386);
        assert_eq!(file.pages, 16386);
    }

    #[test]
    fn rows_out_of_order_or_of_another_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let root = create(&path, 4096);
        let mut file = open(&path);
        let mut t = TableLoad::new(root, layout());
        let row = [ValueRef::Null; 5];
        t.push(&mut file, 5, &row).unwrap();
        assert!(matches!(
            t.push(&mut file, 5, &row),
            Err(LoadError::Order { rowid: 5, last: 5 })
        ));
        assert!(matches!(
            t.push(&mut file, 6, &row[..4]),
            Err(LoadError::Shape { got: 4, want: 5 })
        ));
        // A record longer than SQLite reads (the limit lowered for the test).
        t.max_record = 100;
        let mut long = row;
        long[3] = ValueRef::Text(&[b'x'; 100]);
        assert!(matches!(
            t.push(&mut file, 7, &long),
            Err(LoadError::TooLong(107))
        ));
        assert_eq!(t.last(), Some(5));
    }

    #[test]
    fn a_file_that_is_not_a_closed_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        create(&path, 4096);
        let f = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        // One page fewer than the header names.
        let named = std::fs::metadata(&path).unwrap().len();
        f().set_len(named - 4096).unwrap();
        assert!(matches!(PageFile::open(f()), Err(LoadError::Header(_))));
        // One page more is SQLite's file still (an auto-vacuum commit
        // leaves one so): the header's size counts, pages go after it.
        f().set_len(named + 4096).unwrap();
        let mut pf = PageFile::open(f()).unwrap();
        assert_eq!(u64::from(pf.alloc().unwrap()), named / 4096 + 1);
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(matches!(PageFile::open(f()), Err(LoadError::Header(_))));
    }

    /// Every integer comes back from the bytes and serial type
    /// `int_serial` wrote (SQLite's record format: big-endian two's
    /// complement in 1, 2, 3, 4, 6 or 8 bytes; 0 and 1 in the type alone),
    /// in the fewest bytes, after bytes already in the record.
    #[test]
    fn integers_round_trip_through_their_serial_types() {
        for v in edge_integers() {
            let mut body = vec![0xee; 3];
            let serial = int_serial(v, &mut body);
            let width = match serial {
                8 | 9 => 0,
                1..=4 => serial as usize,
                5 => 6,
                6 => 8,
                other => panic!("serial type {other} for {v}"),
            };
            assert_eq!(body.len(), 3 + width, "{v}");
            assert_eq!(&body[..3], &[0xee; 3]);
            let got = match serial {
                8 => 0,
                9 => 1,
                _ => {
                    let mut b = [if body[3] & 0x80 != 0 { 0xff } else { 0 }; 8];
                    b[8 - width..].copy_from_slice(&body[3..]);
                    i64::from_be_bytes(b)
                }
            };
            assert_eq!(got, v);
            if width > 1 {
                // No shorter width holds it.
                let fits = |w: usize| {
                    let bits = 8 * w as u32;
                    v >= -(1i64 << (bits - 1)) && v < (1i64 << (bits - 1))
                };
                let mut shorter = [1usize, 2, 3, 4, 6].into_iter().filter(|&w| w < width);
                assert!(shorter.all(|w| !fits(w)), "{v} in {width} bytes");
            }
        }
    }

    #[test]
    fn varints_round_trip_through_the_reader() {
        for v in [
            0u64,
            127,
            128,
            16383,
            16384,
            (1 << 21) - 1,
            1 << 21,
            (1 << 28) + 5,
            (1 << 35) - 1,
            1 << 42,
            (1 << 49) + 77,
            1 << 56,
            (1 << 56) - 1,
            u64::MAX,
            1 << 63,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(super::super::btree::varint(&b, 0), Some((v, b.len())));
        }
    }
}
