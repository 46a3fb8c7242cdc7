//! Rows read straight from a rowid table's leaf pages, without running a
//! query: the record of each leaf cell (SQLite file format, 2.1 "Record
//! Format") decoded into the values a `SELECT` of the table's columns
//! returns.
//!
//! A backup reads most of its rows this way: SQLite's statement machinery,
//! column accessors and per-value calls cost several times the decoding
//! itself. Pages come through [`PageReader`] (on the source's own
//! connection and read transaction: from the file in rollback-journal
//! mode, through `sqlite_dbpage` in WAL mode), so the rows are those of the
//! pinned snapshot, WAL frames included.
//!
//! What a `SELECT` would do beyond reading a record is reproduced or
//! refused, never guessed:
//! - a column that aliases the rowid (`INTEGER PRIMARY KEY`) reads as the
//!   rowid, whatever the record holds there;
//! - a column of REAL affinity reads an integer stored in the record (SQLite
//!   stores whole reals so) as a real;
//! - a NaN reads as NULL (as SQLite reads it);
//! - a record with fewer fields than columns (rows older than an `ALTER
//!   TABLE ADD COLUMN`) reads NULL for a missing column without a default.
//!
//! Anything else is [`ReadError::Unsupported`]: a record with more fields
//! than columns, a missing column with a default value, a reserved serial
//! type. The caller then reads the rest of the range with a query, from
//! the row that stopped this reader. A table the reader cannot describe
//! (generated columns, a non-UTF-8 database, WITHOUT ROWID) is never
//! given to it.

use super::btree::{varint, BtreeError, Leaf, Page, PageReader, LEAF};
use rusqlite::types::ValueRef;

/// How one column of a table reads back from a record field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnRead {
    /// The column aliases the rowid.
    pub rowid: bool,
    /// The column has REAL affinity: integers read as reals.
    pub real: bool,
    /// A record too short to hold this column reads NULL for it (the
    /// column has no default value).
    pub missing_is_null: bool,
}

/// How a table's records read back: one entry per column, in record order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<ColumnRead>,
}

/// Why the reader stopped before the end of its range.
#[derive(Debug)]
pub enum ReadError<E> {
    /// A page does not parse as the file format says.
    Btree(BtreeError),
    /// The record of the row with this rowid is one this reader does not
    /// decode (see the module docs); no row from it on was given to the
    /// sink.
    Unsupported { rowid: i64, why: &'static str },
    /// The sink failed.
    Sink(E),
}

impl<E> From<BtreeError> for ReadError<E> {
    fn from(e: BtreeError) -> Self {
        ReadError::Btree(e)
    }
}

/// Columns decoded into a stack array per row (wider tables use a vector).
const ON_STACK: usize = 32;

/// Reads every row with a rowid in `[from, to)` (`None`: unbounded) from
/// the leaves `next_leaf` gives in rowid order, and gives the sink its
/// rowid and values.
pub(super) fn read_rows<E>(
    pages: &mut PageReader<'_>,
    mut next_leaf: impl FnMut() -> Result<Option<Leaf>, BtreeError>,
    layout: &Layout,
    from: Option<i64>,
    to: Option<i64>,
    mut sink: impl FnMut(i64, &[ValueRef<'_>]) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let usable = pages.usable;
    let mut buf = Vec::with_capacity(pages.page_size as usize);
    let mut spill = Vec::new();
    let mut overflow = Vec::with_capacity(pages.page_size as usize);
    let mut prev: Option<i64> = None;
    while let Some(leaf) = next_leaf()? {
        if from.is_some_and(|f| leaf.max < f) {
            continue;
        }
        if to.is_some_and(|t| leaf.min >= t) {
            break;
        }
        pages.read(leaf.pgno, &mut buf)?;
        let page = Page::new(&buf, leaf.pgno, usable)?;
        if page.kind != LEAF {
            return Err(page.malformed("not a table leaf page").into());
        }
        for i in 0..page.cells {
            let cell = page.leaf_cell(i)?;
            let rowid = cell.rowid;
            if prev.is_some_and(|p| rowid <= p) {
                return Err(page.malformed("rowids out of order").into());
            }
            prev = Some(rowid);
            if from.is_some_and(|f| rowid < f) {
                continue;
            }
            if to.is_some_and(|t| rowid >= t) {
                return Ok(());
            }
            let local = &buf[cell.start..cell.start + cell.local];
            let payload: &[u8] = match cell.overflow {
                None => local,
                Some(first) => {
                    if cell.overflow_pages > u64::from(pages.page_count) {
                        return Err(page.malformed("a payload larger than the database").into());
                    }
                    spill.clear();
                    spill.extend_from_slice(local);
                    let mut next = first;
                    for _ in 0..cell.overflow_pages {
                        pages.read(next, &mut overflow)?;
                        let want = (cell.payload as usize - spill.len()).min(usable as usize - 4);
                        spill.extend_from_slice(&overflow[4..4 + want]);
                        next = u32::from_be_bytes(overflow[..4].try_into().expect("4 bytes"));
                    }
                    if spill.len() as u64 != cell.payload {
                        return Err(page.malformed("an overflow chain ends early").into());
                    }
                    &spill
                }
            };
            let n = layout.columns.len();
            let r = if n <= ON_STACK {
                let mut values = [ValueRef::Null; ON_STACK];
                decode(payload, rowid, layout, &mut values[..n]).map(|()| sink(rowid, &values[..n]))
            } else {
                let mut wide = vec![ValueRef::Null; n];
                decode(payload, rowid, layout, &mut wide).map(|()| sink(rowid, &wide))
            };
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ReadError::Sink(e)),
                Err(why) => return Err(ReadError::Unsupported { rowid, why }),
            }
        }
    }
    Ok(())
}

/// A big-endian two's complement integer of 1 to 8 bytes.
fn int_be(b: &[u8]) -> i64 {
    let mut v = if b[0] & 0x80 != 0 { -1i64 } else { 0 };
    for &byte in b {
        v = (v << 8) | i64::from(byte);
    }
    v
}

/// Decodes one record into `values` (one per column of the layout).
fn decode<'p>(
    payload: &'p [u8],
    rowid: i64,
    layout: &Layout,
    values: &mut [ValueRef<'p>],
) -> Result<(), &'static str> {
    const MALFORMED: &str = "a malformed record";
    let (header_len, mut at) = varint(payload, 0).ok_or(MALFORMED)?;
    let header_len = usize::try_from(header_len).map_err(|_| MALFORMED)?;
    // A header of its own length alone holds no field: SQLite never
    // writes one (a table has a column) and reads it as corrupt.
    if header_len > payload.len() || header_len <= at {
        return Err(MALFORMED);
    }
    let mut body = header_len;
    let mut field = 0usize;
    while at < header_len {
        let (serial, n) = varint(&payload[..header_len], at).ok_or(MALFORMED)?;
        at += n;
        let col = layout
            .columns
            .get(field)
            .ok_or("a record with more fields than the table has columns")?;
        let size = match serial {
            0 | 8 | 9 => 0,
            1..=4 => serial as usize,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return Err("a reserved serial type"),
            n => ((n - 12) / 2) as usize,
        };
        let bytes = payload.get(body..body + size).ok_or(MALFORMED)?;
        body += size;
        let v = match serial {
            0 => ValueRef::Null,
            1..=6 => ValueRef::Integer(int_be(bytes)),
            7 => {
                let r = f64::from_bits(u64::from_be_bytes(bytes.try_into().expect("8 bytes")));
                if r.is_nan() {
                    ValueRef::Null
                } else {
                    ValueRef::Real(r)
                }
            }
            8 => ValueRef::Integer(0),
            9 => ValueRef::Integer(1),
            n if n % 2 == 0 => ValueRef::Blob(bytes),
            _ => ValueRef::Text(bytes),
        };
        values[field] = match (v, col) {
            (_, c) if c.rowid => ValueRef::Integer(rowid),
            (ValueRef::Integer(i), c) if c.real => ValueRef::Real(i as f64),
            (v, _) => v,
        };
        field += 1;
    }
    if body != payload.len() {
        return Err(MALFORMED);
    }
    for (i, col) in layout.columns.iter().enumerate().skip(field) {
        values[i] = if col.rowid {
            ValueRef::Integer(rowid)
        } else if col.missing_is_null {
            ValueRef::Null
        } else {
            return Err("a record without a column that has a default value");
        };
    }
    Ok(())
}

/// The affinity SQLite gives a declared column type is REAL (SQLite's
/// "Determination Of Column Affinity": the first rule that matches wins).
pub fn is_real_affinity(declared: &str) -> bool {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") || t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        return false;
    }
    if t.contains("BLOB") || t.is_empty() {
        return false;
    }
    t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{RowidRange, ScanError, ScanStats, SqliteSource};
    use crate::store::{Every, GroupCoords, TablePlan};
    use rand::{Rng, SeedableRng};
    use rusqlite::Connection;

    type Rows = Vec<(GroupCoords, Vec<u8>)>;

    fn plan(table: &str, subject: Option<&str>, period: Option<&str>) -> TablePlan {
        TablePlan {
            name: table.into(),
            subject: subject.map(Into::into),
            period: period.map(|p| (p.into(), Every::Month)),
        }
    }

    /// The rows of `range` as a query reads them and as the pages do.
    fn both(src: &SqliteSource, plan: &TablePlan, range: RowidRange) -> (Rows, Rows, ScanStats) {
        let schema = src.schema().unwrap();
        let ts = schema.tables.iter().find(|t| t.name == plan.name).unwrap();
        let mut query = Vec::new();
        src.scan_natural_range(ts, plan, range, |c: &GroupCoords, r: &[u8]| {
            query.push((c.clone(), r.to_vec()));
            Ok::<_, ()>(())
        })
        .unwrap();
        // The whole table is walked first, as a backup does; the rows are
        // read from the leaves of the range alone, walked as they are read.
        src.stretch_digests(ts, &[], &blake3::Hasher::new())
            .unwrap();
        let leaves = src
            .stretch_leaves(ts, range)
            .unwrap()
            .map(std::cell::RefCell::new);
        let mut pages = Vec::new();
        let stats = src
            .scan_natural_pages(
                ts,
                plan,
                leaves.as_ref(),
                range,
                |c: &GroupCoords, r: &[u8]| {
                    pages.push((c.clone(), r.to_vec()));
                    Ok::<_, ()>(())
                },
            )
            .unwrap();
        assert_eq!(stats.rows, pages.len() as u64);
        (query, pages, stats)
    }

    /// Asserts both reads agree on every range, and returns the rows read
    /// from pages over the whole table.
    fn agree(path: &std::path::Path, plan: &TablePlan) -> (u64, u64) {
        let src = SqliteSource::open(path).unwrap();
        let (query, pages, stats) = both(&src, plan, RowidRange::ALL);
        assert!(!query.is_empty());
        assert_eq!(query.len(), pages.len(), "{}", plan.name);
        for (i, (q, p)) in query.iter().zip(&pages).enumerate() {
            assert_eq!(q, p, "{}: row {i} differs", plan.name);
        }
        for (from, to) in [
            (Some(1), Some(2)),
            (Some(17), Some(400)),
            (None, Some(50)),
            (Some(333), None),
            (Some(-5), Some(0)),
            (Some(10_000_000), None),
        ] {
            let (q, p, _) = both(&src, plan, RowidRange { from, to });
            assert_eq!(q, p, "{} [{from:?}, {to:?})", plan.name);
        }
        (stats.from_pages, stats.rows)
    }

    /// A value of every storage class and width SQLite stores differently.
    fn value(rng: &mut rand::rngs::StdRng) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match rng.gen_range(0..14) {
            0 => Value::Null,
            1 => Value::Integer(rng.gen_range(-1..=1)),
            2 => Value::Integer(rng.gen_range(-200..200)),
            3 => Value::Integer(rng.gen_range(-40_000..40_000)),
            4 => Value::Integer(rng.gen_range(-(1 << 23)..(1 << 23)) << 8),
            5 => Value::Integer(rng.gen()),
            6 => Value::Integer(
                *[i64::MIN, i64::MAX, 1 << 47, -(1 << 47)]
                    .get(rng.gen_range(0..4))
                    .unwrap(),
            ),
            7 => Value::Real(rng.gen_range(-1e6..1e6)),
            8 => Value::Real(f64::from(rng.gen_range(-1000i32..1000))),
            9 => Value::Real(
                *[-0.0, f64::INFINITY, f64::NEG_INFINITY, 1e300, 5e-324]
                    .get(rng.gen_range(0..5))
                    .unwrap(),
            ),
            10 => Value::Text(String::new()),
            11 => {
                let n = if rng.gen_bool(0.1) {
                    rng.gen_range(3000..30_000)
                } else {
                    rng.gen_range(1..40)
                };
                Value::Text(
                    (0..n)
                        .map(|i| ['a', 'é', '\0', '語', 'z'][(i * 7 + n) % 5])
                        .collect(),
                )
            }
            12 => Value::Blob(Vec::new()),
            _ => {
                let n = if rng.gen_bool(0.1) {
                    rng.gen_range(3000..30_000)
                } else {
                    rng.gen_range(1..40)
                };
                Value::Blob((0..n).map(|_| rng.gen()).collect())
            }
        }
    }

    /// A new database `name` in `dir`, set up with `sql`.
    fn create(dir: &tempfile::TempDir, name: &str, sql: &str) -> (std::path::PathBuf, Connection) {
        let path = dir.path().join(name);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(sql).unwrap();
        (path, c)
    }

    fn fill(c: &Connection, table: &str, cols: usize, rows: i64, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let marks = vec!["?"; cols].join(", ");
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare(&format!("INSERT INTO {table} VALUES ({marks})"))
                .unwrap();
            for _ in 0..rows {
                let vals: Vec<_> = (0..cols).map(|_| value(&mut rng)).collect();
                st.execute(rusqlite::params_from_iter(vals)).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    #[test]
    fn rows_from_pages_are_the_rows_a_query_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "p.db",
            "PRAGMA page_size = 1024;
             CREATE TABLE t (a INT, r REAL, n NUMERIC, s TEXT, b BLOB, d DOUBLE, x, f FLOAT);",
        );
        fill(&c, "t", 8, 2000, 1);
        // Customers and their calls: coordinates from the pages too.
        c.execute_batch(
            "CREATE TABLE calls (id INTEGER PRIMARY KEY, customer_id INT, started_at INT, v TEXT);",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..3000i64 {
            let customer: rusqlite::types::Value = match i % 97 {
                0 => rusqlite::types::Value::Null,
                1 => rusqlite::types::Value::Text(format!("c{}", i % 13)),
                _ => rusqlite::types::Value::Integer(i % 41),
            };
            tx.execute(
                "INSERT INTO calls (id, customer_id, started_at, v) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    i * 3 + 1,
                    customer,
                    1_700_000_000 + i * 5000,
                    "x".repeat((i % 300) as usize)
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        drop(c);
        let (from_pages, rows) = agree(&path, &plan("t", Some("s"), Some("a")));
        assert_eq!((from_pages, rows), (2000, 2000));
        let (from_pages, rows) = agree(
            &path,
            &plan("calls", Some("customer_id"), Some("started_at")),
        );
        assert_eq!((from_pages, rows), (3000, 3000));
    }

    #[test]
    fn a_rowid_alias_reads_as_the_rowid_and_a_look_alike_as_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "a.db",
            "CREATE TABLE alias (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE desc_key (id INTEGER PRIMARY KEY DESC, v TEXT);
             CREATE TABLE int_key (id INT PRIMARY KEY, v TEXT);
             CREATE TABLE wide (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
                                c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29,
                                c30, c31, c32, c33, c34, c35, c36, c37, c38, c39);",
        );
        for t in ["alias", "desc_key", "int_key"] {
            c.execute_batch(&format!(
                "INSERT INTO {t} (id, v) VALUES (5, 'five'), (NULL, 'null'), (-7, 'neg'), (900, 'big');"
            ))
            .unwrap();
        }
        fill(&c, "wide", 40, 300, 2);
        drop(c);
        for t in ["alias", "desc_key", "int_key"] {
            let (from_pages, rows) = agree(&path, &plan(t, Some("v"), None));
            assert_eq!((from_pages, rows), (4, 4), "{t}");
        }
        assert_eq!(agree(&path, &plan("wide", Some("c3"), None)), (300, 300));
    }

    #[test]
    fn rows_older_than_an_added_column_read_its_null_and_stop_at_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "alter.db",
            "CREATE TABLE t (a INT, b TEXT); CREATE TABLE u (a INT, b TEXT);",
        );
        fill(&c, "t", 2, 500, 3);
        fill(&c, "u", 2, 500, 4);
        c.execute_batch(
            "ALTER TABLE t ADD COLUMN c REAL;
             ALTER TABLE u ADD COLUMN c REAL DEFAULT 2.5;",
        )
        .unwrap();
        fill(&c, "t", 3, 500, 5);
        fill(&c, "u", 3, 500, 6);
        drop(c);
        // No default: the missing column reads NULL, every row from pages.
        assert_eq!(agree(&path, &plan("t", Some("b"), None)), (1000, 1000));
        // A default: the first old row stops the page reader, a query
        // reads the rest.
        assert_eq!(agree(&path, &plan("u", Some("b"), None)), (0, 1000));
    }

    #[test]
    fn tables_the_pages_cannot_describe_are_read_with_a_query() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "g.db",
            "CREATE TABLE g (a INT, b INT GENERATED ALWAYS AS (a * 2) STORED, s TEXT);
             CREATE TABLE k (a TEXT PRIMARY KEY, b INT) WITHOUT ROWID;",
        );
        for i in 0..100 {
            c.execute("INSERT INTO g (a, s) VALUES (?1, 'x')", [i])
                .unwrap();
            c.execute(
                "INSERT INTO k VALUES (?1, ?2)",
                rusqlite::params![format!("k{i}"), i],
            )
            .unwrap();
        }
        drop(c);
        assert_eq!(agree(&path, &plan("g", Some("s"), None)), (0, 100));
        assert_eq!(agree(&path, &plan("k", Some("a"), None)), (0, 100));
        // A UTF-16 database.
        let path16 = dir.path().join("u16.db");
        let c = Connection::open(&path16).unwrap();
        c.execute_batch("PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (s TEXT);")
            .unwrap();
        for i in 0..100 {
            c.execute("INSERT INTO t VALUES (?1)", [format!("é{i}")])
                .unwrap();
        }
        drop(c);
        assert_eq!(agree(&path16, &plan("t", Some("s"), None)), (0, 100));
    }

    #[test]
    fn pages_are_those_of_the_read_transaction_wal_included() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = create(
            &dir,
            "w.db",
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (k INT, v TEXT);",
        );
        fill(&writer, "t", 2, 800, 7);
        let src = SqliteSource::open(&path).unwrap();
        // Committed after the source's snapshot: seen by neither read.
        writer.execute("UPDATE t SET v = 'later'", []).unwrap();
        writer
            .execute("DELETE FROM t WHERE rowid % 3 = 0", [])
            .unwrap();
        let p = plan("t", Some("v"), None);
        let (query, pages, stats) = both(&src, &p, RowidRange::ALL);
        assert_eq!(query, pages);
        assert_eq!(stats.from_pages, 800);
        assert!(pages
            .iter()
            .all(|(c, _)| c.subject.as_deref() != Some("later")));
    }

    #[test]
    fn a_record_without_fields_is_not_read_as_a_row_of_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "n.db",
            "PRAGMA page_size = 1024; CREATE TABLE t (a TEXT);
             INSERT INTO t VALUES ('x'), (NULL), ('z');",
        );
        let root: i64 = c
            .query_row("SELECT rootpage FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        drop(c);
        // The NULL row's record [02 00] becomes [01]: its payload one
        // byte, its header that byte alone. SQLite calls it corrupt.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 1024 * (root as usize - 1);
        assert_eq!(bytes[page], LEAF);
        let ptr = page + 8 + 2;
        let cell = page + u16::from_be_bytes([bytes[ptr], bytes[ptr + 1]]) as usize;
        assert_eq!(bytes[cell..cell + 4], [2, 2, 2, 0]);
        bytes[cell] = 1;
        bytes[cell + 2] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let src = SqliteSource::open(&path).unwrap();
        let schema = src.schema().unwrap();
        let ts = &schema.tables[0];
        let p = plan("t", Some("a"), None);
        let leaves = src
            .stretch_leaves(ts, RowidRange::ALL)
            .unwrap()
            .map(std::cell::RefCell::new);
        let mut rows = Vec::new();
        let r = src.scan_natural_pages(ts, &p, leaves.as_ref(), RowidRange::ALL, |c, _| {
            rows.push(c.subject.clone());
            Ok::<_, ()>(())
        });
        // The pages give up at that row, and the query that reads on
        // stops at it with SQLite's own error.
        let Err(ScanError::Store(e)) = r else {
            panic!("read as a row: {r:?}");
        };
        assert!(e.to_string().contains("malformed"), "{e}");
        assert_eq!(rows, [Some("x".to_string())]);
    }

    #[test]
    fn a_row_out_of_order_reads_as_a_query_reads_it_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "o.db",
            "PRAGMA page_size = 1024; CREATE TABLE t (v TEXT);",
        );
        for i in 1..=60i64 {
            c.execute(
                "INSERT INTO t (rowid, v) VALUES (?1, ?2)",
                rusqlite::params![i * 2, format!("{i:0>30}")],
            )
            .unwrap();
        }
        let root: i64 = c
            .query_row("SELECT rootpage FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        drop(c);
        // The first row of the second leaf gets rowid 1, below the rows
        // before it. SQLite's scan reads it where it lies; a seek past the
        // first leaf's last row (through the leaf's cells) skips it.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 1024 * (root as usize - 1);
        assert_eq!(bytes[page], 0x05, "an interior root");
        let at = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        let cell = page + at(&bytes, page + 14);
        let leaf =
            1024 * (u32::from_be_bytes(bytes[cell..cell + 4].try_into().unwrap()) as usize - 1);
        assert_eq!(bytes[leaf], LEAF);
        let first = leaf + at(&bytes, leaf + 8);
        assert!(bytes[first + 1] > 2 && bytes[first + 1] < 0x80);
        bytes[first + 1] = 1;
        std::fs::write(&path, &bytes).unwrap();

        let (query, pages, stats) = query_and_pages(&path);
        assert_eq!(query.len(), 60);
        // The first leaf from the pages, the rest from a query that read
        // the table again and skipped them: the rows a query reads.
        assert!(stats.from_pages > 0 && stats.from_pages < 60, "{stats:?}");
        assert_eq!(stats.rows, 60);
        assert_eq!(pages, query);
    }

    /// The rows of table `t` (column `v` its subject) of the database at
    /// `path` as a query reads them, and as the pages read them (with the
    /// page read's counts).
    #[allow(clippy::type_complexity)]
    fn query_and_pages(
        path: &std::path::Path,
    ) -> (
        Vec<(GroupCoords, Vec<u8>)>,
        Vec<(GroupCoords, Vec<u8>)>,
        crate::store::sqlite::ScanStats,
    ) {
        let src = SqliteSource::open(path).unwrap();
        let schema = src.schema().unwrap();
        let ts = &schema.tables[0];
        let p = plan("t", Some("v"), None);
        let mut query = Vec::new();
        src.scan_natural_range(ts, &p, RowidRange::ALL, |c: &GroupCoords, r: &[u8]| {
            query.push((c.clone(), r.to_vec()));
            Ok::<_, ()>(())
        })
        .unwrap();
        let leaves = src
            .stretch_leaves(ts, RowidRange::ALL)
            .unwrap()
            .map(std::cell::RefCell::new);
        let mut pages = Vec::new();
        let stats = src
            .scan_natural_pages(ts, &p, leaves.as_ref(), RowidRange::ALL, |c, r| {
                pages.push((c.clone(), r.to_vec()));
                Ok::<_, ()>(())
            })
            .unwrap();
        (query, pages, stats)
    }

    #[test]
    fn a_query_after_a_row_the_pages_cannot_read_is_not_sent_astray_by_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = create(
            &dir,
            "k.db",
            "PRAGMA page_size = 1024; CREATE TABLE t (v TEXT);",
        );
        let row = |c: &Connection, i: i64| {
            c.execute(
                "INSERT INTO t (rowid, v) VALUES (?1, ?2)",
                rusqlite::params![i, format!("{i:0>30}")],
            )
            .unwrap();
        };
        // Rows 100 on, older than a column with a default: the pages read
        // rows 1 to 99 and stop at row 100.
        for i in 100..=175 {
            row(&c, i);
        }
        c.execute_batch("ALTER TABLE t ADD COLUMN w INT DEFAULT 7")
            .unwrap();
        for i in 1..100 {
            row(&c, i);
        }
        let root: i64 = c
            .query_row("SELECT rootpage FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        drop(c);
        // Every key of the root past the one above row 100 reads 1: the
        // walk has not reached them when the pages stop; a scan ignores
        // them, but a seek of rowid 100 binary-searches through them.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 1024 * (root as usize - 1);
        assert_eq!(bytes[page], 0x05, "an interior root");
        let cells = u16::from_be_bytes([bytes[page + 3], bytes[page + 4]]) as usize;
        assert!(cells >= 5, "{cells} cells");
        let mut past = 0;
        for i in 0..cells {
            let ptr = page + 12 + 2 * i;
            let key = page + u16::from_be_bytes([bytes[ptr], bytes[ptr + 1]]) as usize + 4;
            let (k, n) = varint(&bytes, key).unwrap();
            if k >= 100 && past > 0 {
                bytes[key..key + n - 1].fill(0x80);
                bytes[key + n - 1] = 1;
            }
            past += usize::from(k >= 100);
        }
        std::fs::write(&path, &bytes).unwrap();

        let (query, pages, stats) = query_and_pages(&path);
        assert_eq!(query.len(), 175);
        assert_eq!(stats.from_pages, 99, "{stats:?}");
        assert_eq!(pages.len(), 175);
        assert_eq!(pages, query);
    }

    #[test]
    fn affinity_follows_sqlites_rules_in_order() {
        for (t, real) in [
            ("REAL", true),
            ("double precision", true),
            ("FLOAT", true),
            ("FLOATING POINT", false), // "INT" wins
            ("NUMERIC", false),
            ("", false),
            ("BLOB REAL", false),
            ("CHARREAL", false),
            ("decimal(10,2)", false),
        ] {
            assert_eq!(is_real_affinity(t), real, "{t}");
        }
    }

    #[test]
    fn integers_sign_extend_from_every_width() {
        assert_eq!(int_be(&[0xff]), -1);
        assert_eq!(int_be(&[0x7f]), 127);
        assert_eq!(int_be(&[0x80, 0, 0]), -(1 << 23));
        assert_eq!(int_be(&[0, 0x80, 0, 0, 0, 0]), 1 << 39);
        assert_eq!(int_be(&i64::MIN.to_be_bytes()), i64::MIN);
    }

    #[test]
    fn a_hostile_record_is_refused_not_read_past() {
        let layout = Layout {
            columns: vec![
                ColumnRead {
                    rowid: false,
                    real: false,
                    missing_is_null: true,
                };
                2
            ],
        };
        let mut v = [ValueRef::Null; 2];
        for bad in [
            &[][..],
            &[0x05, 0x01][..],             // header longer than the payload
            &[0x02, 0x20, 0x00][..],       // a text past the payload
            &[0x02, 0x01, 0x05, 0x06][..], // trailing bytes
            &[0x04, 0x01, 0x01, 0x01, 1, 2, 3][..], // three fields, two columns
            &[0x02, 0x0a][..],             // reserved serial type
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x01][..], // a header without fields
        ] {
            assert!(decode(bad, 1, &layout, &mut v).is_err(), "{bad:?}");
        }
        assert!(decode(&[0x03, 0x01, 0x0f, 7, b'a'], 1, &layout, &mut v).is_ok());
        assert_eq!(v, [ValueRef::Integer(7), ValueRef::Text(b"a")]);
        // A NaN (which SQLite never writes) reads as NULL, as SQLite reads it.
        let mut nan = vec![0x02, 0x07];
        nan.extend_from_slice(&f64::NAN.to_bits().to_be_bytes());
        assert!(decode(&nan, 1, &layout, &mut v).is_ok());
        assert_eq!(v, [ValueRef::Null, ValueRef::Null]);
    }
}
