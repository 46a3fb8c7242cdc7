//! A rowid table's b-tree, read page by page: the leaves in rowid order,
//! each with its rowid range and a digest of its bytes and overflow pages.
//!
//! A backup compares these digests with the parent snapshot's to skip
//! reading stretches of a table that did not change (FORMAT 4, "Unread
//! stretches"). Pages are read on the backup's own connection, inside its
//! read transaction, so they are those of the snapshot the rows are read
//! from: from the database file in rollback-journal mode (no writer can
//! change it while the read transaction lasts), through SQLite's
//! `sqlite_dbpage` virtual table in WAL mode (WAL frames included; see
//! [`PageReader`]). The walk only reads and hashes: any page that does not parse
//! as the SQLite file format says is an error, and the caller then reads
//! the table row by row as it would without the walk.

use rusqlite::{Connection, OptionalExtension};

/// Why a table's b-tree could not be walked. Never fatal to a backup: it
/// reads the table's rows instead.
#[derive(Debug, thiserror::Error)]
pub enum BtreeError {
    #[error("SQLite error while {doing}: {source}")]
    Sql {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("page {page} of the table's b-tree is malformed: {why}")]
    Malformed { page: u32, why: &'static str },
    #[error("reading page {page} from the database file: {source}")]
    Io {
        page: u32,
        #[source]
        source: std::io::Error,
    },
}

/// One leaf of a table's b-tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Smallest and largest rowid on the leaf.
    pub min: i64,
    pub max: i64,
    /// The leaf's page number (rows are read back from it, in the same
    /// read transaction).
    pub pgno: u32,
    /// How many rows (cells) the leaf holds.
    pub rows: u32,
    /// BLAKE3 of the leaf page and, in cell order, every overflow page its
    /// cells spill into.
    pub digest: [u8; 32],
}

impl Leaf {
    /// Whether the leaf meets the rowids `[from, to)` (`None`: unbounded):
    /// its rowid span overlaps them, whether or not a row of it falls in.
    fn meets(&self, from: Option<i64>, to: Option<i64>) -> bool {
        from.is_none_or(|f| self.max >= f) && to.is_none_or(|t| self.min < t)
    }
}

/// What besides its leaves decides how a table's rows read back: its
/// `CREATE` statement, the text encoding, the page layout.
#[derive(Clone, Debug)]
struct TableHead {
    sql: String,
    encoding: String,
    page_size: u32,
    usable: u32,
}

impl TableHead {
    /// A stretch digest begun after `h`: the head first (FORMAT,
    /// "Unread stretches"), then the leaves it is given.
    fn begin(&self, mut h: blake3::Hasher) -> StretchSum {
        for part in [self.sql.as_bytes(), self.encoding.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.page_size.to_le_bytes());
        h.update(&self.usable.to_le_bytes());
        StretchSum { h, leaves: 0 }
    }
}

/// A stretch digest being computed: every leaf the range meets, in rowid
/// order, then their count. Any change to a row in the range (update,
/// insert, delete, a spilled value's tail) changes a leaf or overflow page,
/// or which leaves the range meets, so it changes the digest; rows outside
/// the range may change it too.
#[derive(Clone)]
struct StretchSum {
    h: blake3::Hasher,
    leaves: u64,
}

impl StretchSum {
    fn add(&mut self, leaf: &Leaf) {
        self.add_digest(&leaf.digest);
    }

    fn add_digest(&mut self, digest: &[u8; 32]) {
        self.h.update(digest);
        self.leaves += 1;
    }

    fn finish(mut self) -> [u8; 32] {
        self.h.update(&self.leaves.to_le_bytes());
        *self.h.finalize().as_bytes()
    }
}

/// Interior and leaf page types of a table b-tree, and of an index b-tree.
const INTERIOR: u8 = 0x05;
pub(super) const LEAF: u8 = 0x0d;
const INDEX_INTERIOR: u8 = 0x02;
const INDEX_LEAF: u8 = 0x0a;
/// Deeper than any real b-tree (SQLite itself stops at 20).
const MAX_DEPTH: usize = 40;

/// What one walk of a whole table gives ([`stretch_digests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// The stretch digest of each range asked for, in the order asked.
    pub digests: Vec<[u8; 32]>,
    /// The rows of the table (the cells of its leaves), in the read
    /// transaction walked: what `SELECT count(*)` would say, without a
    /// second pass over every leaf.
    pub rows: u64,
}

/// The stretch digest (FORMAT, "Unread stretches") of each of `ranges`
/// (rowids `[from, to)`, in any order, overlapping or not) after `h`, from
/// one walk of the whole table that keeps no leaf (and checks every page),
/// and the table's row count. `None` as for [`LeafStream::open`].
///
/// This thread reads and parses the pages; another hashes them and adds
/// each leaf to the digests of the ranges it meets, a batch of leaves at a
/// time, in leaf order. Hashing was about a third of the walk, which a
/// backup runs before it reads any table.
pub fn stretch_digests(
    conn: &Connection,
    table: &str,
    ranges: &[(Option<i64>, Option<i64>)],
    h: &blake3::Hasher,
) -> Result<Option<Walked>, BtreeError> {
    stretch_digests_in(conn, table, ranges, h, LEAF_BATCH_BYTES)
}

/// [`stretch_digests`], handing leaves over once a batch holds `batch`
/// bytes of them.
fn stretch_digests_in(
    conn: &Connection,
    table: &str,
    ranges: &[(Option<i64>, Option<i64>)],
    h: &blake3::Hasher,
    batch_bytes: usize,
) -> Result<Option<Walked>, BtreeError> {
    let Some(mut leaves) = LeafStream::open(conn, table, None, None)? else {
        return Ok(None);
    };
    let sums = vec![leaves.head.begin(h.clone()); ranges.len()];
    // The ranges by where they start (unbounded first); those that may
    // still meet a leaf are active. Leaves come in rowid order, so a range
    // whose end a leaf has passed meets no later leaf.
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut next = 0;
    let mut active: Vec<usize> = Vec::new();
    let mut rows = 0u64;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<LeafBatch>(2);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<LeafBatch>();
        let hashing = scope.spawn(move || {
            let mut sums = sums;
            for mut batch in full_rx {
                batch.add_to(&mut sums);
                batch.clear();
                // The walk may have ended: the batch is then dropped.
                let _ = empty_tx.send(batch);
            }
            sums
        });
        let mut batch = LeafBatch::default();
        let walked = (|| -> Result<(), BtreeError> {
            while let Some(leaf) = leaves.next_leaf_bytes(&mut batch.bytes)? {
                rows += u64::from(leaf.rows);
                while let Some(&i) = order.get(next) {
                    if ranges[i].0.is_some_and(|f| f > leaf.max) {
                        break;
                    }
                    active.push(i);
                    next += 1;
                }
                active.retain(|&i| ranges[i].1.is_none_or(|t| t > leaf.min));
                batch.targets.extend(active.iter().map(|&i| i as u32));
                batch.leaves.push((batch.bytes.len(), batch.targets.len()));
                if batch.bytes.len() >= batch_bytes {
                    let fresh = empty_rx.try_recv().unwrap_or_default();
                    if full_tx.send(std::mem::replace(&mut batch, fresh)).is_err() {
                        break; // the hashing thread panicked; join says so
                    }
                }
            }
            Ok(())
        })();
        if walked.is_ok() && !batch.leaves.is_empty() {
            let _ = full_tx.send(batch);
        }
        drop(full_tx);
        let sums = match hashing.join() {
            Ok(sums) => sums,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        walked?;
        Ok(Some(Walked {
            digests: sums.into_iter().map(StretchSum::finish).collect(),
            rows,
        }))
    })
}

/// Bytes of leaf pages (with their overflow pages) per batch handed to
/// the hashing thread of [`stretch_digests`]: 64 pages of 4 KiB.
const LEAF_BATCH_BYTES: usize = 256 << 10;

/// Leaves walked and not yet hashed: each leaf's bytes (its page, then its
/// overflow pages in cell order), and the ranges whose digests it goes in.
#[derive(Default)]
struct LeafBatch {
    bytes: Vec<u8>,
    targets: Vec<u32>,
    /// Per leaf, in rowid order: where its bytes and its targets end.
    leaves: Vec<(usize, usize)>,
}

impl LeafBatch {
    /// Hashes each leaf and adds it to its ranges' digests, in leaf order.
    fn add_to(&self, sums: &mut [StretchSum]) {
        let (mut byte, mut target) = (0, 0);
        for &(bytes_end, targets_end) in &self.leaves {
            let digest = *blake3::hash(&self.bytes[byte..bytes_end]).as_bytes();
            for &i in &self.targets[target..targets_end] {
                sums[i as usize].add_digest(&digest);
            }
            (byte, target) = (bytes_end, targets_end);
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.targets.clear();
        self.leaves.clear();
    }
}

/// A page to visit, its depth, and the keys its parents give its rows:
/// above `lo` (if any), at most `hi` (if any).
struct Visit {
    pgno: u32,
    depth: usize,
    lo: Option<i64>,
    hi: Option<i64>,
}

/// The leaves of a table that meet the rowids `[from, to)`, walked one at
/// a time: the walk holds the path it is on, not the leaves. Each page's
/// rows must lie within the keys its parents give it, and rowids must
/// rise from leaf to leaf; subtrees whose keys keep them outside the range
/// are not read.
pub struct LeafStream<'c> {
    pages: PageReader<'c>,
    head: TableHead,
    from: Option<i64>,
    to: Option<i64>,
    stack: Vec<Visit>,
    visited: u64,
    /// The last rowid seen.
    prev: Option<i64>,
    buf: Vec<u8>,
    overflow: Vec<u8>,
    children: Vec<(u32, Option<i64>, Option<i64>)>,
}

impl<'c> LeafStream<'c> {
    /// Opens the walk of `table` on `conn` (inside its read transaction).
    /// `None` when the table has no b-tree of its own to walk (a virtual
    /// table, a WITHOUT ROWID table) or the SQLite build has no
    /// `sqlite_dbpage`.
    pub fn open(
        conn: &'c Connection,
        table: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Option<Self>, BtreeError> {
        let sql_err = |doing| move |source| BtreeError::Sql { doing, source };
        let row: Option<(Option<i64>, Option<String>)> = conn
            .query_row(
                "SELECT rootpage, sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql_err("reading the table's root page"))?;
        let Some((Some(root), sql)) = row else {
            return Ok(None);
        };
        let sql = sql.unwrap_or_default();
        if root <= 0 {
            return Ok(None);
        }
        let Some(mut pages) = PageReader::open(conn)? else {
            return Ok(None);
        };
        let (page_size, usable) = (pages.page_size, pages.usable);
        let encoding: String = conn
            .query_row("PRAGMA main.encoding", [], |r| r.get(0))
            .map_err(sql_err("reading the text encoding"))?;
        let root = u32::try_from(root).map_err(|_| BtreeError::Malformed {
            page: 0,
            why: "a root page number out of range",
        })?;
        let mut buf = Vec::with_capacity(page_size as usize);
        pages.read(root, &mut buf)?;
        // A WITHOUT ROWID table is an index b-tree: nothing to walk.
        if matches!(
            Page::new(&buf, root, usable)?.kind,
            INDEX_INTERIOR | INDEX_LEAF
        ) {
            return Ok(None);
        }
        Ok(Some(LeafStream {
            pages,
            head: TableHead {
                sql,
                encoding,
                page_size,
                usable,
            },
            from,
            to,
            stack: vec![Visit {
                pgno: root,
                depth: 0,
                lo: None,
                hi: None,
            }],
            visited: 0,
            prev: None,
            buf,
            overflow: Vec::with_capacity(page_size as usize),
            children: Vec::new(),
        }))
    }

    /// The database's text encoding in the walk's read transaction.
    pub fn encoding(&self) -> &str {
        &self.head.encoding
    }

    /// Whether a subtree of keys (lo, hi] can hold a leaf meeting the range.
    fn wanted(&self, lo: Option<i64>, hi: Option<i64>) -> bool {
        let below = matches!((hi, self.from), (Some(h), Some(f)) if h < f);
        let above = matches!((lo, self.to), (Some(l), Some(t)) if l >= t.saturating_sub(1));
        !below && !above
    }

    /// The next leaf that meets the range, in rowid order; `None` after
    /// the last. After an error the walk is over.
    pub fn next_leaf(&mut self) -> Result<Option<Leaf>, BtreeError> {
        let mut h = blake3::Hasher::new();
        let leaf = self.step(&mut |bytes| {
            h.update(bytes);
        })?;
        Ok(leaf.map(|mut leaf| {
            leaf.digest = *h.finalize().as_bytes();
            leaf
        }))
    }

    /// Like [`next_leaf`](Self::next_leaf), but appends the leaf's bytes
    /// (its page, then its overflow pages in cell order: what its digest
    /// hashes) to `out` instead of hashing them; the leaf's `digest` is
    /// left zero. After an error `out` may hold part of a leaf.
    fn next_leaf_bytes(&mut self, out: &mut Vec<u8>) -> Result<Option<Leaf>, BtreeError> {
        self.step(&mut |bytes| out.extend_from_slice(bytes))
    }

    /// Walks on to the next leaf that meets the range and gives `feed` its
    /// bytes; its `digest` is left for the caller. After an error the walk
    /// is over.
    fn step(&mut self, feed: &mut dyn FnMut(&[u8])) -> Result<Option<Leaf>, BtreeError> {
        let r = self.walk_on(feed);
        if r.is_err() {
            self.stack.clear();
        }
        r
    }

    fn walk_on(&mut self, feed: &mut dyn FnMut(&[u8])) -> Result<Option<Leaf>, BtreeError> {
        let page_count = u64::from(self.pages.page_count);
        while let Some(Visit {
            pgno,
            depth,
            lo,
            hi,
        }) = self.stack.pop()
        {
            self.visited += 1;
            if self.visited > page_count || depth > MAX_DEPTH {
                return Err(BtreeError::Malformed {
                    page: pgno,
                    why: "the b-tree has a cycle or is too deep",
                });
            }
            self.pages.read(pgno, &mut self.buf)?;
            let page = Page::new(&self.buf, pgno, self.head.usable)?;
            // Only a root leaf may be empty (an empty table). SQLite
            // refuses any other page without cells as corrupt; the walk
            // would skip an empty leaf, or follow an empty interior page
            // to its right-most child alone, and read the table without
            // the rows it lost.
            if page.cells == 0 && page.kind == INTERIOR {
                return Err(page.malformed("an interior page without cells"));
            }
            if page.cells == 0 && depth > 0 {
                return Err(page.malformed("an empty page below the root"));
            }
            match page.kind {
                INTERIOR => {
                    // Child `i` holds the keys above the key of cell `i - 1`
                    // (or the page's own lower bound) up to its cell's key;
                    // the right-most child the keys above the last cell's.
                    self.children.clear();
                    let mut below = lo;
                    for i in 0..page.cells {
                        let at = page.cell(i)?;
                        let child = page.u32_at(at)?;
                        let key = page.varint(at + 4)?.0 as i64;
                        self.children.push((child, below, Some(key)));
                        below = Some(key);
                    }
                    self.children.push((page.right_most()?, below, hi));
                    // Pushed in reverse so the leftmost pops first.
                    for i in (0..self.children.len()).rev() {
                        let (pgno, lo, hi) = self.children[i];
                        if self.wanted(lo, hi) {
                            self.stack.push(Visit {
                                pgno,
                                depth: depth + 1,
                                lo,
                                hi,
                            });
                        }
                    }
                }
                LEAF => {
                    let mut min = None;
                    let mut spilled = Vec::new();
                    for i in 0..page.cells {
                        let cell = page.leaf_cell(i)?;
                        if self.prev.is_some_and(|p| cell.rowid <= p) {
                            return Err(page.malformed("rowids out of order"));
                        }
                        if lo.is_some_and(|l| cell.rowid <= l) || hi.is_some_and(|h| cell.rowid > h)
                        {
                            return Err(page.malformed("a rowid outside its parent's keys"));
                        }
                        self.prev = Some(cell.rowid);
                        min = min.or(Some(cell.rowid));
                        if let Some(first) = cell.overflow {
                            spilled.push((first, cell.overflow_pages));
                        }
                    }
                    let (Some(min), Some(max)) = (min, self.prev) else {
                        continue;
                    };
                    let leaf = Leaf {
                        min,
                        max,
                        pgno,
                        rows: page.cells as u32,
                        digest: [0; 32],
                    };
                    // A leaf of a wanted subtree may still miss the range.
                    if !leaf.meets(self.from, self.to) {
                        continue;
                    }
                    feed(&self.buf);
                    for (mut next, n) in spilled {
                        for _ in 0..n {
                            self.visited += 1;
                            if self.visited > page_count {
                                return Err(BtreeError::Malformed {
                                    page: pgno,
                                    why: "an overflow chain loops",
                                });
                            }
                            self.pages.read(next, &mut self.overflow)?;
                            feed(&self.overflow);
                            next =
                                u32::from_be_bytes(self.overflow[..4].try_into().expect("4 bytes"));
                        }
                    }
                    return Ok(Some(leaf));
                }
                _ => return Err(page.malformed("not a table b-tree page")),
            }
        }
        Ok(None)
    }
}

/// The leaves of a stretch being read, shared by its reader and the
/// digests of its windows: the reader takes them one at a time
/// ([`next_leaf`](Self::next_leaf)), and each window's stretch digest
/// ([`window`](Self::window)) is computed from those kept since the
/// window's start. So a stretch holds about one window's leaves, not all
/// of its own.
pub struct StretchLeaves<'c> {
    stream: LeafStream<'c>,
    /// Leaves walked and not yet forgotten, in rowid order.
    kept: std::collections::VecDeque<Leaf>,
    /// How many of `kept` the reader has taken.
    taken: usize,
    /// Rowids below this were forgotten (the end of the last window).
    floor: Option<i64>,
    /// The walk failed: no more digests.
    failed: bool,
    /// The most leaves kept at once (for the memory figures).
    pub most: usize,
}

impl<'c> StretchLeaves<'c> {
    /// The leaves `stream` walks, as they are needed.
    pub fn new(stream: LeafStream<'c>) -> Self {
        StretchLeaves {
            stream,
            kept: Default::default(),
            taken: 0,
            floor: None,
            failed: false,
            most: 0,
        }
    }

    /// The database's text encoding in the walk's read transaction.
    pub fn encoding(&self) -> &str {
        self.stream.encoding()
    }

    /// Walks one more leaf into `kept`; `false` after the last.
    fn pull(&mut self) -> Result<bool, BtreeError> {
        match self.stream.next_leaf() {
            Ok(Some(leaf)) => {
                self.kept.push_back(leaf);
                self.most = self.most.max(self.kept.len());
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// The reader's next leaf, in rowid order.
    pub fn next_leaf(&mut self) -> Result<Option<Leaf>, BtreeError> {
        if self.taken == self.kept.len() && !self.pull()? {
            return Ok(None);
        }
        self.taken += 1;
        Ok(Some(self.kept[self.taken - 1].clone()))
    }

    /// The stretch digest of the rowids `[from, to)` after `h`, as a walk
    /// of the whole table gives it; then the leaves below `to` are
    /// forgotten. Windows are
    /// asked in rowid order, each starting where the last ended. `None`
    /// when the walk failed or `from` lies below what was forgotten.
    pub fn window(
        &mut self,
        from: Option<i64>,
        to: Option<i64>,
        h: &blake3::Hasher,
    ) -> Option<[u8; 32]> {
        // Every leaf that meets the window: walked until one starts at or
        // after its end.
        while !self.failed
            && self
                .kept
                .back()
                .is_none_or(|l| to.is_none_or(|t| l.min < t))
        {
            if !matches!(self.pull(), Ok(true)) {
                break;
            }
        }
        let below_floor = self
            .floor
            .is_some_and(|floor| from.is_none_or(|f| f < floor));
        let digest = (!self.failed && !below_floor).then(|| {
            let mut sum = self.stream.head.begin(h.clone());
            for leaf in self.kept.iter().filter(|l| l.meets(from, to)) {
                sum.add(leaf);
            }
            sum.finish()
        });
        // Leaves wholly below the window's end meet no later window.
        while self
            .kept
            .front()
            .is_some_and(|l| to.is_none_or(|t| l.max < t))
        {
            self.kept.pop_front();
            self.taken = self.taken.saturating_sub(1);
        }
        if to.is_some() {
            self.floor = self.floor.max(to);
        }
        digest
    }
}

/// SQLite's varint at `at` of `b` (big-endian, 7 bits a byte, the ninth
/// byte whole): its value and length; `None` if it runs past the end.
pub(super) fn varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(at + i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Pages of the database, read on one connection's read transaction,
/// with the page layout they share.
///
/// Through `sqlite_dbpage` a page cost about 1.8 µs (a statement reset,
/// bind and step each): half of an incremental's serial walk of the
/// b-trees at 1 GiB. So in rollback-journal mode, the pages are read from
/// the database file itself: while the connection holds its read
/// transaction (SQLite's SHARED lock), no writer can change the file (a
/// writer needs the EXCLUSIVE lock to write to it, spills included), so
/// the file's bytes are the snapshot's. In WAL mode a page's latest
/// version may be in the WAL, so pages go through `sqlite_dbpage` there,
/// and also when the connection is not in a transaction, has no file, or
/// the file's first page differs from SQLite's (the path now names
/// another file).
pub(super) struct PageReader<'c> {
    source: PageSource<'c>,
    pub(super) page_size: u32,
    pub(super) page_count: u32,
    /// Page size less the reserved bytes at the end of each page.
    pub(super) usable: u32,
}

enum PageSource<'c> {
    Sql(rusqlite::Statement<'c>),
    File(std::fs::File),
}

impl<'c> PageReader<'c> {
    /// `None` when the SQLite build has no `sqlite_dbpage`.
    pub(super) fn open(conn: &'c Connection) -> Result<Option<Self>, BtreeError> {
        let sql_err = |doing| move |source| BtreeError::Sql { doing, source };
        let stmt = match conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1") {
            Ok(s) => s,
            // A build without SQLITE_ENABLE_DBPAGE_VTAB.
            Err(e) if e.to_string().contains("no such table") => return Ok(None),
            Err(e) => return Err(sql_err("preparing to read pages")(e)),
        };
        let pragma = |name: &str| -> Result<i64, BtreeError> {
            conn.query_row(&format!("PRAGMA main.{name}"), [], |r| r.get(0))
                .map_err(sql_err("reading the page layout"))
        };
        let page_size = pragma("page_size")?.clamp(0, 1 << 16) as u32;
        let page_count = pragma("page_count")?.clamp(0, u32::MAX as i64) as u32;
        let journal: String = conn
            .query_row("PRAGMA main.journal_mode", [], |r| r.get(0))
            .map_err(sql_err("reading the journal mode"))?;
        let mut pages = PageReader {
            source: PageSource::Sql(stmt),
            page_size,
            page_count,
            usable: page_size,
        };
        // Reserved bytes at the end of each page (database header offset 20).
        let mut buf = Vec::with_capacity(page_size as usize);
        pages.read(1, &mut buf)?;
        pages.usable = page_size.saturating_sub(u32::from(buf[20]));
        if pages.usable < 480 {
            return Err(BtreeError::Malformed {
                page: 1,
                why: "a usable page size below 480 bytes",
            });
        }
        if journal.eq_ignore_ascii_case("wal") || conn.is_autocommit() {
            return Ok(Some(pages));
        }
        let file = conn
            .path()
            .filter(|p| !p.is_empty())
            .and_then(|p| std::fs::File::open(p).ok())
            .filter(|f| {
                f.metadata()
                    .is_ok_and(|m| m.len() >= u64::from(page_count) * u64::from(page_size))
            });
        if let Some(file) = file {
            let mut direct = PageReader {
                source: PageSource::File(file),
                ..pages
            };
            let mut first = Vec::with_capacity(page_size as usize);
            if direct.read(1, &mut first).is_ok() && first == buf {
                return Ok(Some(direct));
            }
        }
        Ok(Some(pages))
    }

    /// Whether pages are read from the database file (not through SQL).
    #[cfg(test)]
    pub(super) fn reads_the_file(&self) -> bool {
        matches!(self.source, PageSource::File(_))
    }

    /// Reads page `pgno` into `buf` (replacing its content).
    pub(super) fn read(&mut self, pgno: u32, buf: &mut Vec<u8>) -> Result<(), BtreeError> {
        if pgno == 0 || pgno > self.page_count {
            return Err(BtreeError::Malformed {
                page: pgno,
                why: "a page number outside the database",
            });
        }
        buf.clear();
        match &mut self.source {
            PageSource::Sql(stmt) => {
                stmt.query_row([pgno], |r| {
                    buf.extend_from_slice(r.get_ref(0)?.as_blob()?);
                    Ok(())
                })
                .map_err(|source| BtreeError::Sql {
                    doing: "reading a page",
                    source,
                })?;
            }
            PageSource::File(f) => {
                use std::os::unix::fs::FileExt;
                buf.resize(self.page_size as usize, 0);
                let at = u64::from(pgno - 1) * u64::from(self.page_size);
                f.read_exact_at(buf, at)
                    .map_err(|source| BtreeError::Io { page: pgno, source })?;
            }
        }
        if buf.len() != self.page_size as usize || buf.len() < 100 {
            return Err(BtreeError::Malformed {
                page: pgno,
                why: "a page of the wrong size",
            });
        }
        Ok(())
    }
}

/// One b-tree page's header and cell pointers (FORMAT of SQLite, 1.6).
pub(super) struct Page<'a> {
    bytes: &'a [u8],
    pgno: u32,
    usable: u32,
    /// Where the page header starts (100 on page 1).
    header: usize,
    pub(super) kind: u8,
    pub(super) cells: usize,
}

/// A table leaf cell: its rowid, its payload and where the payload spills.
pub(super) struct LeafCell {
    pub(super) rowid: i64,
    /// The payload's whole length, on the page and in overflow pages.
    pub(super) payload: u64,
    /// Where the payload starts on the page, and how much of it is there.
    pub(super) start: usize,
    pub(super) local: usize,
    pub(super) overflow: Option<u32>,
    pub(super) overflow_pages: u64,
}

impl<'a> Page<'a> {
    pub(super) fn new(bytes: &'a [u8], pgno: u32, usable: u32) -> Result<Self, BtreeError> {
        let header = if pgno == 1 { 100 } else { 0 };
        let mut p = Page {
            bytes,
            pgno,
            usable,
            header,
            kind: 0,
            cells: 0,
        };
        p.kind = *bytes
            .get(header)
            .ok_or_else(|| p.malformed("no page header"))?;
        p.cells = usize::from(p.u16_at(header + 3)?);
        Ok(p)
    }

    pub(super) fn malformed(&self, why: &'static str) -> BtreeError {
        BtreeError::Malformed {
            page: self.pgno,
            why,
        }
    }

    fn u16_at(&self, at: usize) -> Result<u16, BtreeError> {
        self.bytes
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| self.malformed("a field past the page end"))
    }

    fn u32_at(&self, at: usize) -> Result<u32, BtreeError> {
        self.bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| self.malformed("a field past the page end"))
    }

    fn right_most(&self) -> Result<u32, BtreeError> {
        self.u32_at(self.header + 8)
    }

    /// Offset of cell `i` (from the cell pointer array).
    fn cell(&self, i: usize) -> Result<usize, BtreeError> {
        let array = self.header + if self.kind == INTERIOR { 12 } else { 8 };
        let at = usize::from(self.u16_at(array + 2 * i)?);
        if at >= self.usable as usize {
            return Err(self.malformed("a cell pointer past the usable page"));
        }
        Ok(at)
    }

    /// SQLite's varint at `at`: its value and length.
    fn varint(&self, at: usize) -> Result<(u64, usize), BtreeError> {
        varint(self.bytes, at).ok_or_else(|| self.malformed("a varint past the page end"))
    }

    pub(super) fn leaf_cell(&self, i: usize) -> Result<LeafCell, BtreeError> {
        let at = self.cell(i)?;
        let (payload, n1) = self.varint(at)?;
        let (rowid, n2) = self.varint(at + n1)?;
        let u = u64::from(self.usable);
        // How much of the payload stays on the page (SQLite file format,
        // 1.6, "table b-tree leaf cell").
        let x = u - 35;
        let local = if payload <= x {
            payload
        } else {
            let m = ((u - 12) * 32 / 255) - 23;
            let k = m + ((payload - m) % (u - 4));
            if k <= x {
                k
            } else {
                m
            }
        };
        let (overflow, overflow_pages) = if payload > local {
            let ptr = at + n1 + n2 + local as usize;
            if ptr + 4 > self.usable as usize {
                return Err(self.malformed("a cell past the usable page"));
            }
            (Some(self.u32_at(ptr)?), (payload - local).div_ceil(u - 4))
        } else {
            if at + n1 + n2 + local as usize > self.usable as usize {
                return Err(self.malformed("a cell past the usable page"));
            }
            (None, 0)
        };
        Ok(LeafCell {
            rowid: rowid as i64,
            payload,
            start: at + n1 + n2,
            local: local as usize,
            overflow,
            overflow_pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of a table (all of them, or those meeting a range of
    /// rowids) in rowid order, with what else decides how its rows read back:
    /// the reference the streamed digests are held to.
    #[derive(Clone, Debug)]
    struct TableLeaves {
        leaves: Vec<Leaf>,
        head: TableHead,
    }

    impl TableLeaves {
        /// The digest of the leaves holding rowids in `[from, to)` (`None`:
        /// unbounded), after what `h` already holds.
        ///
        /// Leaves walked for a range ([`walk_range`]) give the digest of any
        /// range inside it that the whole table's leaves give.
        fn stretch(&self, from: Option<i64>, to: Option<i64>, h: blake3::Hasher) -> [u8; 32] {
            let mut sum = self.head.begin(h);
            let start = match from {
                Some(f) => self.leaves.partition_point(|l| l.max < f),
                None => 0,
            };
            for leaf in &self.leaves[start..] {
                if to.is_some_and(|t| leaf.min >= t) {
                    break;
                }
                sum.add(leaf);
            }
            sum.finish()
        }
    }

    /// Walks `table`'s b-tree on `conn` (inside its read transaction): every
    /// leaf. `None` when the table has no b-tree of its own to walk (a
    /// virtual table, a WITHOUT ROWID table) or the SQLite build has no
    /// `sqlite_dbpage`.
    fn walk(conn: &Connection, table: &str) -> Result<Option<TableLeaves>, BtreeError> {
        walk_range(conn, table, None, None)
    }

    /// Gives `visit` every leaf that meets `[from, to)`, in rowid order,
    /// hashed as it is walked, and returns the table's head.
    fn walk_each(
        conn: &Connection,
        table: &str,
        from: Option<i64>,
        to: Option<i64>,
        mut visit: impl FnMut(&TableHead, Leaf),
    ) -> Result<Option<TableHead>, BtreeError> {
        let Some(mut leaves) = LeafStream::open(conn, table, from, to)? else {
            return Ok(None);
        };
        while let Some(leaf) = leaves.next_leaf()? {
            visit(&leaves.head, leaf);
        }
        Ok(Some(leaves.head))
    }

    /// Like [`walk`], but only the leaves that meet the rowids `[from, to)`
    /// (`None`: unbounded): subtrees whose keys keep them outside are not
    /// read. Only a walk of the whole table checks every page, so a range is
    /// walked after the whole table was, in the same read transaction.
    fn walk_range(
        conn: &Connection,
        table: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Option<TableLeaves>, BtreeError> {
        let mut leaves = Vec::new();
        let head = walk_each(conn, table, from, to, |_, leaf| leaves.push(leaf))?;
        Ok(head.map(|head| TableLeaves { leaves, head }))
    }

    /// A database of 3000 rows, every 100th with a value that spills into
    /// overflow pages.
    fn db(dir: &std::path::Path, wal: bool) -> std::path::PathBuf {
        let path = dir.join("t.db");
        let c = Connection::open(&path).unwrap();
        if wal {
            c.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        }
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, big BLOB);
             CREATE TABLE k (a TEXT PRIMARY KEY, b INT) WITHOUT ROWID;",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 1..=3000i64 {
            let big = (i % 100 == 0).then(|| vec![(i % 251) as u8; 20_000]);
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![i * 2, format!("row {i}"), big],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        path
    }

    fn leaves(path: &std::path::Path) -> TableLeaves {
        let c = Connection::open(path).unwrap();
        c.execute_batch("BEGIN").unwrap();
        walk(&c, "t").unwrap().expect("a rowid table")
    }

    /// The database file's bytes, where table `t`'s root page starts in
    /// them (an interior page), and its page number.
    fn root_page(path: &std::path::Path) -> (Vec<u8>, usize, i64) {
        let c = Connection::open(path).unwrap();
        let root: i64 = c
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let bytes = std::fs::read(path).unwrap();
        let page = 4096 * (root as usize - 1);
        assert_eq!(bytes[page], INTERIOR);
        (bytes, page, root)
    }

    /// The test database, its table's leaves, and a connection in a read
    /// transaction on it.
    fn walked() -> (tempfile::TempDir, TableLeaves, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        let all = leaves(&path);
        let c = Connection::open(&path).unwrap();
        c.execute_batch("BEGIN").unwrap();
        (dir, all, c)
    }

    fn digest(l: &TableLeaves, from: Option<i64>, to: Option<i64>) -> [u8; 32] {
        l.stretch(from, to, blake3::Hasher::new())
    }

    /// In rollback-journal mode, inside a read transaction, pages are read
    /// from the file, byte for byte what `sqlite_dbpage` gives; outside a
    /// transaction, and in WAL mode, through `sqlite_dbpage`, so a page
    /// whose latest version is still in the WAL is read as SQLite sees it.
    #[test]
    fn pages_come_from_the_file_only_where_it_holds_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        let c = Connection::open(&path).unwrap();
        assert!(!PageReader::open(&c).unwrap().unwrap().reads_the_file());
        c.execute_batch("BEGIN").unwrap();
        c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        let mut direct = PageReader::open(&c).unwrap().unwrap();
        assert!(direct.reads_the_file());
        let mut stmt = c
            .prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .unwrap();
        let mut buf = Vec::new();
        for pgno in 1..=direct.page_count {
            direct.read(pgno, &mut buf).unwrap();
            let want: Vec<u8> = stmt.query_row([pgno], |r| r.get(0)).unwrap();
            assert_eq!(buf, want, "page {pgno}");
        }
        assert!(direct.read(direct.page_count + 1, &mut buf).is_err());
        drop(stmt);
        // A file cut short under the reader (no SQLite writer could do it):
        // an I/O error that names the page.
        let last = direct.page_count;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(u64::from(last - 1) * u64::from(direct.page_size))
            .unwrap();
        let e = direct.read(last, &mut buf).unwrap_err();
        assert!(
            matches!(e, BtreeError::Io { page, .. } if page == last),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("page {last} ")), "{e}");
        c.execute_batch("COMMIT").unwrap();

        // WAL: a writer keeps its frames in the WAL (no checkpoint).
        let wdir = tempfile::tempdir().unwrap();
        let wpath = db(wdir.path(), true);
        let w = Connection::open(&wpath).unwrap();
        w.execute_batch(
            "PRAGMA wal_autocheckpoint = 0;
             INSERT INTO t VALUES (100001, 'late', NULL);",
        )
        .unwrap();
        let c = Connection::open(&wpath).unwrap();
        c.execute_batch("BEGIN").unwrap();
        c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert!(!PageReader::open(&c).unwrap().unwrap().reads_the_file());
        let l = walk(&c, "t").unwrap().unwrap();
        assert_eq!(l.leaves.last().unwrap().max, 100001, "the WAL's row");
    }

    #[test]
    fn leaves_cover_every_row_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        let l = leaves(&path);
        assert!(l.leaves.len() > 10, "{} leaves", l.leaves.len());
        for w in l.leaves.windows(2) {
            assert!(w[0].min <= w[0].max && w[0].max < w[1].min);
        }
        let c = Connection::open(&path).unwrap();
        let mut st = c.prepare("SELECT id FROM t").unwrap();
        let ids: Vec<i64> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids.len(), 3000);
        for id in ids {
            let i = l.leaves.partition_point(|x| x.max < id);
            assert!(l.leaves[i].min <= id, "rowid {id} on no leaf");
        }
        assert_eq!(l.leaves[0].min, 2);
        assert_eq!(l.leaves.last().unwrap().max, 6000);
        let c = Connection::open(&path).unwrap();
        assert!(walk(&c, "k").unwrap().is_none(), "WITHOUT ROWID");
        assert!(walk(&c, "nope").unwrap().is_none());
    }

    #[test]
    fn a_change_moves_only_the_digest_of_its_stretch() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        let before = leaves(&path);
        let c = Connection::open(&path).unwrap();
        // The last byte of a spilled value: only an overflow page changes.
        let mut big = vec![(1500 % 251) as u8; 20_000];
        big[19_999] = 0xff;
        c.execute("UPDATE t SET big = ?1 WHERE id = 3000", [big])
            .unwrap();
        let after = leaves(&path);
        let near = (Some(2900), Some(3100));
        let far = (Some(100), Some(1000));
        assert_ne!(
            digest(&before, near.0, near.1),
            digest(&after, near.0, near.1)
        );
        assert_eq!(digest(&before, far.0, far.1), digest(&after, far.0, far.1));
        // A small update, an insert into a gap, a delete: each seen.
        for sql in [
            "UPDATE t SET v = 'changed' WHERE id = 4000",
            "INSERT INTO t (id, v) VALUES (4501, 'new')",
            "DELETE FROM t WHERE id = 5000",
        ] {
            let before = leaves(&path);
            c.execute(sql, []).unwrap();
            let after = leaves(&path);
            let at: i64 = sql
                .split(|ch: char| !ch.is_ascii_digit())
                .find_map(|w| w.parse().ok())
                .unwrap();
            let r = (Some(at - 50), Some(at + 50));
            assert_ne!(digest(&before, r.0, r.1), digest(&after, r.0, r.1), "{sql}");
            assert_eq!(digest(&before, far.0, far.1), digest(&after, far.0, far.1));
        }
        // What decides how rows read back is part of every digest.
        let before = leaves(&path);
        c.execute("ALTER TABLE t ADD COLUMN w INT DEFAULT 7", [])
            .unwrap();
        let after = leaves(&path);
        assert_ne!(digest(&before, far.0, far.1), digest(&after, far.0, far.1));
    }

    #[test]
    fn a_range_walk_and_a_walk_keeping_no_leaf_digest_as_the_whole_table() {
        let (_dir, all, c) = walked();
        let h = blake3::Hasher::new_keyed(&[7; 32]);
        // Bounds on, between and beyond rows and leaves, open or not.
        let mut edges = vec![None, Some(i64::MIN), Some(i64::MAX), Some(-5)];
        for l in all.leaves.iter().step_by(7) {
            edges.extend([Some(l.min), Some(l.max), Some(l.max + 1), Some(l.min + 1)]);
        }
        edges.extend([Some(2999), Some(3000), Some(6000), Some(6001)]);
        let mut ranges = Vec::new();
        for (i, &from) in edges.iter().enumerate() {
            for &to in edges.iter().skip(i % 5).step_by(5) {
                ranges.push((from, to));
            }
        }
        let walked = stretch_digests(&c, "t", &ranges, &h).unwrap().unwrap();
        let count: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(walked.rows, count as u64, "the walk counts the rows");
        let streamed = walked.digests;
        assert_eq!(streamed.len(), ranges.len());
        // The leaves reach the hashing thread one at a time, a few at a
        // time (some spill into overflow pages), or all at once.
        let batched: Vec<_> = [0, 3 * 4096, usize::MAX]
            .map(|b| {
                let w = stretch_digests_in(&c, "t", &ranges, &h, b)
                    .unwrap()
                    .unwrap();
                assert_eq!(w.rows, count as u64);
                w.digests
            })
            .into();
        for (n, (&(from, to), got)) in ranges.iter().zip(&streamed).enumerate() {
            let want = all.stretch(from, to, h.clone());
            assert_eq!(*got, want, "[{from:?}, {to:?}) streamed");
            for b in &batched {
                assert_eq!(b[n], want, "[{from:?}, {to:?}) in batches");
            }
            let part = walk_range(&c, "t", from, to).unwrap().unwrap();
            assert!(part.leaves.iter().all(|l| l.meets(from, to)));
            let inside = [
                (from, to),
                (from.map(|f| f.saturating_add(3)), to),
                (from, to.map(|t| t.saturating_sub(3))),
            ];
            for (f, t) in inside {
                assert_eq!(
                    part.stretch(f, t, h.clone()),
                    all.stretch(f, t, h.clone()),
                    "[{f:?}, {t:?}) inside [{from:?}, {to:?})"
                );
            }
        }
        // A range walk reads only the subtrees it needs.
        let l = &all.leaves[all.leaves.len() / 2];
        let part = walk_range(&c, "t", Some(l.min), Some(l.max + 1))
            .unwrap()
            .unwrap();
        assert_eq!(part.leaves, vec![l.clone()]);
        let mut one = LeafStream::open(&c, "t", Some(l.min), Some(l.max + 1))
            .unwrap()
            .unwrap();
        while one.next_leaf().unwrap().is_some() {}
        let pages = all.leaves.len() as u64;
        assert!(
            one.visited < pages / 4,
            "{} pages read for one leaf of {pages}",
            one.visited
        );
        assert!(stretch_digests(&c, "k", &ranges, &h).unwrap().is_none());
        assert_eq!(
            stretch_digests(&c, "t", &[], &h).unwrap(),
            Some(Walked {
                digests: vec![],
                rows: count as u64
            })
        );
    }

    #[test]
    fn a_stretch_walked_as_it_is_read_digests_each_window_as_the_whole_table() {
        let (_dir, all, c) = walked();
        let h = blake3::Hasher::new_keyed(&[9; 32]);
        let mid = all.leaves[all.leaves.len() / 3].max;
        let ranges = [(None, None), (Some(mid - 1), Some(5001)), (Some(101), None)];
        for (from, to) in ranges {
            let ids: Vec<i64> = c
                .prepare("SELECT id FROM t WHERE id >= ?1 AND id < ?2 ORDER BY id")
                .unwrap()
                .query_map([from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)], |r| {
                    r.get(0)
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let meets = all.leaves.iter().filter(|l| l.meets(from, to)).count();
            // Windows of a few rows, of about a leaf, of many leaves; read
            // from the leaves, or (a query) without taking any.
            for (every, reads) in [
                (1, true),
                (7, true),
                (150, true),
                (1000, true),
                (150, false),
            ] {
                let mut s =
                    StretchLeaves::new(LeafStream::open(&c, "t", from, to).unwrap().unwrap());
                let mut at: Option<Leaf> = None;
                let mut start = from;
                for (n, &id) in ids.iter().enumerate() {
                    while reads && at.as_ref().is_none_or(|l| l.max < id) {
                        at = Some(s.next_leaf().unwrap().expect("a leaf holds every row"));
                    }
                    if (n + 1) % every == 0 {
                        let end = Some(id + 1);
                        let want = all.stretch(start, end, h.clone());
                        assert_eq!(s.window(start, end, &h), Some(want), "[{start:?}, {end:?})");
                        start = end;
                    }
                }
                assert_eq!(
                    s.window(start, to, &h),
                    Some(all.stretch(start, to, h.clone()))
                );
                // About a window's leaves were kept, not the stretch's.
                let per_leaf = (ids.len() / meets).max(1);
                let bound = (every / per_leaf + 3).min(meets);
                assert!(
                    s.most <= bound,
                    "{} kept, every {every}, {meets} in all",
                    s.most
                );
                // Rowids forgotten cannot be digested again.
                assert_eq!(s.window(from, to, &h), None);
            }
        }
    }

    #[test]
    fn a_rowid_outside_its_parents_keys_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        // The root's first divider key lowered below its left child's rows.
        let (mut bytes, page, _) = root_page(&path);
        let cell = u16::from_be_bytes([bytes[page + 12], bytes[page + 13]]) as usize;
        let key = page + cell + 4;
        assert!(bytes[key] & 0x80 != 0, "a key of two bytes or more");
        bytes[key] = 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute_batch("BEGIN").unwrap();
        let e = walk(&c, "t").unwrap_err();
        assert!(e.to_string().contains("outside its parent's keys"), "{e}");
    }

    #[test]
    fn a_page_without_cells_other_than_an_empty_root_is_malformed() {
        // Page `pgno` of the test database loses its cells: SQLite calls
        // that corrupt, and the walk must not read the table without them.
        fn emptied(pgno: impl Fn(&[u8], usize, i64) -> u32, why: &str) {
            let dir = tempfile::tempdir().unwrap();
            let path = db(dir.path(), false);
            let (mut bytes, page, root) = root_page(&path);
            let pgno = pgno(&bytes, page, root);
            let at = 4096 * (pgno as usize - 1);
            bytes[at + 3..at + 5].copy_from_slice(&[0, 0]);
            std::fs::write(&path, &bytes).unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute_batch("BEGIN").unwrap();
            let e = walk(&c, "t").unwrap_err();
            assert!(
                matches!(e, BtreeError::Malformed { page, .. } if page == pgno),
                "{e}"
            );
            assert!(e.to_string().contains(why), "{e}");
            let q = c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
            assert!(q.is_err(), "SQLite reads it: {q:?}");
        }
        // The root's first child, a leaf: skipped, its rows lost.
        emptied(
            |bytes, page, _| {
                let cell = u16::from_be_bytes([bytes[page + 12], bytes[page + 13]]) as usize;
                let child = u32::from_be_bytes(bytes[page + cell..][..4].try_into().unwrap());
                assert_eq!(bytes[4096 * (child as usize - 1)], LEAF);
                child
            },
            "an empty page below the root",
        );
        // The root, an interior page: only its right-most child was read.
        emptied(|_, _, root| root as u32, "an interior page without cells");
    }

    #[test]
    fn pages_come_from_the_read_transaction_wal_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), true);
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let first = walk(&reader, "t").unwrap().unwrap();
        // Committed to the WAL after the reader's snapshot: not seen by it.
        writer
            .execute("UPDATE t SET v = 'later' WHERE id = 200", [])
            .unwrap();
        let same = walk(&reader, "t").unwrap().unwrap();
        assert_eq!(first.leaves, same.leaves);
        reader.execute_batch("COMMIT").unwrap();
        // A new read transaction sees the WAL frame.
        reader.execute_batch("BEGIN").unwrap();
        let now = walk(&reader, "t").unwrap().unwrap();
        let r = (Some(150), Some(250));
        assert_ne!(digest(&first, r.0, r.1), digest(&now, r.0, r.1));
        assert_eq!(
            digest(&first, Some(3000), None),
            digest(&now, Some(3000), None)
        );
    }

    #[test]
    fn a_hostile_page_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        // Point the root's right-most child back at the root: a cycle.
        let (mut bytes, page, root) = root_page(&path);
        bytes[page + 8..page + 12].copy_from_slice(&(root as u32).to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute_batch("BEGIN").unwrap();
        let e = walk(&c, "t").unwrap_err();
        assert!(matches!(e, BtreeError::Malformed { .. }), "{e}");
        // Garbage in every cell pointer of every page.
        for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
            if i % 4096 > 12 && i % 4096 < 200 {
                *b = 0xff;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute_batch("BEGIN").unwrap();
        assert!(walk(&c, "t").is_err());
    }
}
