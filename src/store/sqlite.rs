//! SQLite in record mode: a consistent, streaming read of every table, and a
//! faithful rebuild of the database from its rows.
//!
//! * [`SqliteSource`] opens a database read-only and pins one snapshot with a
//!   read transaction, so every table is read from the same point in time
//!   even while another process writes (WAL mode; in rollback-journal mode
//!   writers wait until the source is dropped). [`SqliteSource::schema`]
//!   describes what must be rebuilt; [`SqliteSource::scan`] streams one
//!   table's rows, encoded by [`super::record`], grouped by shred-group
//!   coordinates so that rows of one group arrive contiguously.
//! * [`SqliteRestorer`] builds a new database from a [`SqliteSchema`] and
//!   encoded rows fed in any order, in a temporary file next to the target
//!   that is renamed into place only by [`SqliteRestorer::finish`].
//!
//! Grouping order, bucket and subject rules are specified in
//! docs/FORMAT.md section 9. Errors name the database path, tables and columns,
//! never row values.

use super::btree::{LeafStream, PageReader, StretchLeaves};
use super::bulkload::{put_record, LoadError, PageFile, TableLoad};
use super::indexbuild::{Collation, IndexBuild, IndexSpec, KeyColumn, NullFilter, RUN_BYTES};
use super::indexsql::{self, Key, Where};
use super::pages::{is_real_affinity, read_rows, ColumnRead, Layout, ReadError};
use super::record::{
    decode_row, decode_row_ref, encode_owned_row, encode_row, encode_row_with, row_span, Row,
};
use super::{Every, GroupCoords, TablePlan};
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Version of the [`SqliteSchema`] shape, stored with it.
pub const SQLITE_SCHEMA_VERSION: u32 = 1;

/// Errors of the SQLite store. Messages name the path, table and column
/// concerned and say what to do; they never contain row values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    #[error("SQLite database {path} does not exist; check the policy's store path")]
    NotFound { path: PathBuf },
    #[error("{path} already exists; restore into a new path, or pass force to replace it")]
    AlreadyExists { path: PathBuf },
    #[error("cannot open SQLite database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("SQLite error in {path} while {doing}: {source}")]
    Sql {
        path: PathBuf,
        doing: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("I/O error on {path} while {doing}: {source}")]
    Io {
        path: PathBuf,
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot back up or restore {object} in {path} faithfully: {reason}")]
    Unsupported {
        path: PathBuf,
        object: String,
        reason: String,
    },
    #[error("no table `{table}` in {path}; check the table name in the policy")]
    NoSuchTable { path: PathBuf, table: String },
    #[error("table `{table}` in {path} has no column `{column}` (named as the {role}); check the policy")]
    NoSuchColumn {
        path: PathBuf,
        table: String,
        column: String,
        role: &'static str,
    },
    #[error(
        "plan for table `{plan}` was used to scan table `{table}`; pass the plan of that table"
    )]
    PlanMismatch { plan: String, table: String },
    #[error(
        "encoded rows for table `{table}` are invalid at byte {offset} of the buffer: {source}"
    )]
    Record {
        table: String,
        offset: usize,
        #[source]
        source: super::record::RecordError,
    },
    #[error(
        "a row for table `{table}` does not fit its schema ({detail}); \
         the rows belong to another table or schema"
    )]
    RowShape { table: String, detail: String },
    #[error("cannot write the new database {path} while {doing}: {source}")]
    Load {
        path: PathBuf,
        doing: String,
        #[source]
        source: super::bulkload::LoadError,
    },
    #[error(
        "the saved schema is invalid: {0}; it was written by another custos version or is corrupt"
    )]
    BadSchema(String),
    #[error(
        "SQLite database {path} is corrupt: table `{table}` reads otherwise from its pages than \
         with a query ({detail}); check it with PRAGMA integrity_check and back up a repaired copy"
    )]
    Corrupt {
        path: PathBuf,
        table: String,
        detail: String,
    },
}

/// Result of a [`SqliteSource::scan`]: the store failed, or the sink did.
#[derive(Debug, thiserror::Error)]
pub enum ScanError<E> {
    #[error(transparent)]
    Store(SqliteError),
    #[error("the row sink failed: {0}")]
    Sink(E),
}

impl<E> From<SqliteError> for ScanError<E> {
    fn from(e: SqliteError) -> Self {
        ScanError::Store(e)
    }
}

/// What one scan emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Rows passed to the sink.
    pub rows: u64,
    /// Encoded bytes passed to the sink.
    pub bytes: u64,
    /// Of the rows, those decoded straight from the table's pages
    /// ([`SqliteSource::scan_natural_pages`]); the others came from a query.
    pub from_pages: u64,
}

/// Everything needed to rebuild a database, besides its rows. Persisted in
/// the snapshot (see docs/FORMAT.md section 9).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SqliteSchema {
    /// Shape version, [`SQLITE_SCHEMA_VERSION`].
    pub version: u32,
    /// User objects from `sqlite_schema` in creation (rowid) order: tables,
    /// indexes, views, triggers. SQLite's own objects (`sqlite_sequence`,
    /// `sqlite_stat*`, automatic indexes) are not listed; they are recreated.
    pub entries: Vec<SchemaEntry>,
    /// Every table whose rows must be restored: user tables in creation
    /// order, then `sqlite_stat1`/`sqlite_stat4`, then `sqlite_sequence`.
    pub tables: Vec<TableSchema>,
    /// `PRAGMA user_version`.
    pub user_version: i64,
    /// `PRAGMA application_id`.
    pub application_id: i64,
    /// `PRAGMA page_size` in bytes.
    pub page_size: u32,
    /// `PRAGMA auto_vacuum`: 0 none, 1 full, 2 incremental.
    pub auto_vacuum: u8,
    /// `PRAGMA encoding`: `UTF-8`, `UTF-16le` or `UTF-16be`.
    pub encoding: String,
    /// Whether the database was in WAL journal mode (persistent in the file).
    pub wal: bool,
}

#[cfg(test)]
impl SqliteSchema {
    /// A schema of no objects, for tests that need a snapshot's shape.
    pub(crate) fn empty() -> Self {
        SqliteSchema {
            version: 1,
            entries: Vec::new(),
            tables: Vec::new(),
            user_version: 0,
            application_id: 0,
            page_size: 4096,
            auto_vacuum: 0,
            encoding: "UTF-8".into(),
            wal: false,
        }
    }
}

/// One row of `sqlite_schema`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SchemaEntry {
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    pub name: String,
    pub tbl_name: String,
    /// The statement that creates the object, exactly as SQLite stored it.
    pub sql: Option<String>,
}

/// One table whose rows are backed up and restored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableSchema {
    pub name: String,
    /// Restorable (non-generated) columns in table order: the values of an
    /// encoded row, in this order.
    pub columns: Vec<String>,
    pub without_rowid: bool,
    /// For rowid tables, the name by which the rowid is read and written
    /// (`rowid`, `_rowid_` or `oid`, whichever no column shadows); every
    /// encoded row of the table carries its rowid. `None` for WITHOUT ROWID.
    pub rowid: Option<String>,
    /// WITHOUT ROWID tables: primary key columns in key order (the scan's
    /// tie-break order). Empty for rowid tables.
    pub primary_key: Vec<String>,
    /// Generated columns: not stored in rows, recomputed by the schema, but
    /// usable as subject or period column.
    pub generated: Vec<String>,
    /// SQLite's own table (`sqlite_sequence`, `sqlite_stat1`, `sqlite_stat4`):
    /// restored verbatim, never named by a policy.
    pub internal: bool,
}

impl TableSchema {
    fn find_column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .chain(self.generated.iter())
            .find(|c| c.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }
}

/// The subject column and the period column with its bucket length, as
/// spelled in the table.
type PlanColumns<'t> = (Option<&'t str>, Option<(&'t str, Every)>);

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for ch in name.chars() {
        if ch == '"' {
            s.push('"');
        }
        s.push(ch);
    }
    s.push('"');
    s
}

/// The canonical subject text of a value (see docs/FORMAT.md section 9): INTEGER in
/// decimal, TEXT as is (`hex:` + lowercase hex when not UTF-8), REAL as its
/// shortest round-trip decimal (Rust's `{:?}` of `f64`), BLOB `hex:` + hex,
/// NULL none.
pub fn subject_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(format!("{r:?}")),
        ValueRef::Text(t) => Some(match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => format!("hex:{}", hex::encode(t)),
        }),
        ValueRef::Blob(b) => Some(format!("hex:{}", hex::encode(b))),
    }
}

/// The period bucket label of a time value, or `None` when the value cannot
/// be read as a time. INTEGER and REAL are unix seconds (UTC); TEXT is an
/// ISO 8601 date (`2026-03-14`) or date-time (`2026-03-14T10:00:00Z`,
/// `2026-03-14 10:00:00`, optional seconds, fraction and `Z`/`±hh:mm`
/// offset; no offset means UTC). Labels: `2026-03-14` (day), `2026-03`
/// (month), `2026` (year); years outside 0000–9999 give `None`.
pub fn bucket_label(v: ValueRef<'_>, every: Every) -> Option<String> {
    label_of(time_value(v)?, every)
}

/// The label of the period holding the UTC instant `t`.
fn label_of(t: NaiveDateTime, every: Every) -> Option<String> {
    let (y, m, d) = (t.year(), t.month(), t.day());
    if !(0..=9999).contains(&y) {
        return None;
    }
    Some(match every {
        Every::Day => format!("{y:04}-{m:02}-{d:02}"),
        Every::Month => format!("{y:04}-{m:02}"),
        Every::Year => format!("{y:04}"),
    })
}

/// The UTC instant of a time value as [`bucket_label`] reads it (unix
/// seconds or ISO 8601 text), or `None` when it cannot be read as a time.
pub fn time_value(v: ValueRef<'_>) -> Option<NaiveDateTime> {
    Some(match v {
        ValueRef::Integer(i) => chrono::DateTime::from_timestamp(i, 0)?.naive_utc(),
        ValueRef::Real(r) => {
            if !r.is_finite() {
                return None;
            }
            let s = r.floor();
            if s < -(2f64.powi(62)) || s > 2f64.powi(62) {
                return None;
            }
            chrono::DateTime::from_timestamp(s as i64, 0)?.naive_utc()
        }
        ValueRef::Text(b) => parse_iso8601(std::str::from_utf8(b).ok()?)?,
        _ => return None,
    })
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// Parses the ISO 8601 forms accepted for periods into a UTC date-time.
fn parse_iso8601(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )?;
    if b.len() == 10 {
        return Some(date.and_time(NaiveTime::MIN));
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let rest = &b[11..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let hour = digits(&rest[0..2])?;
    let min = digits(&rest[3..5])?;
    let mut i = 5;
    let mut sec = 0;
    if rest.get(i) == Some(&b':') {
        sec = digits(rest.get(i + 1..i + 3)?)?;
        i += 3;
        if rest.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while rest.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
    }
    // A leap second stays in its minute.
    let time = NaiveTime::from_hms_opt(hour, min, sec.min(59))?;
    let local = date.and_time(time);
    let zone = &rest[i..];
    let offset_minutes: i64 = match zone {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), tz @ ..] => {
            let (h, m) = match tz {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let o = i64::from(h * 60 + m);
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    local.checked_sub_signed(TimeDelta::try_minutes(offset_minutes)?)
}

fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("custos_bucket", 2, flags, |ctx| {
        let every = match ctx.get_raw(1) {
            ValueRef::Text(b"day") => Every::Day,
            ValueRef::Text(b"month") => Every::Month,
            ValueRef::Text(b"year") => Every::Year,
            _ => {
                return Err(rusqlite::Error::UserFunctionError(
                    "custos_bucket: second argument must be 'day', 'month' or 'year'".into(),
                ))
            }
        };
        Ok(bucket_label(ctx.get_raw(0), every))
    })?;
    conn.create_scalar_function("custos_subject", 1, flags, |ctx| {
        Ok(subject_text(ctx.get_raw(0)))
    })
}

/// How a [`SqliteSource`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// Keep SQLite's sorter in memory. A grouped scan (subject or period)
    /// sorts the table; by default SQLite spills a large sort to temporary
    /// files (unlinked as soon as opened, in `SQLITE_TMPDIR` or the system
    /// temporary directory), which hold plaintext rows while the scan runs.
    /// `true` keeps them in memory instead: no plaintext on disk, but memory
    /// grows with the size of the largest grouped table.
    pub sort_in_memory: bool,
}

/// A SQLite database opened read-only, with one snapshot pinned for the
/// lifetime of this value. Everything read through it (schema, every table,
/// row counts) comes from that one snapshot.
pub struct SqliteSource {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for SqliteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteSource {
    /// Opens `path` read-only (never creating it), registers the grouping
    /// functions and starts the read transaction that pins the snapshot.
    ///
    /// A WAL database needs its `-shm` file or a writable directory, as for
    /// any SQLite reader. In rollback-journal mode, writers of the database
    /// wait (busy) until this source is dropped.
    pub fn open(path: &Path) -> Result<Self, SqliteError> {
        Self::open_with(path, &SourceOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(path: &Path, options: &SourceOptions) -> Result<Self, SqliteError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(SqliteError::Io {
                    path: path.to_owned(),
                    doing: "opening the database".into(),
                    source: std::io::Error::other("not a regular file"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SqliteError::NotFound {
                    path: path.to_owned(),
                })
            }
            Err(e) => {
                return Err(SqliteError::Io {
                    path: path.to_owned(),
                    doing: "opening the database".into(),
                    source: e,
                })
            }
        }
        let open_err = |source| SqliteError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(open_err)?;
        register_functions(&conn).map_err(open_err)?;
        if options.sort_in_memory {
            conn.execute_batch("PRAGMA temp_store = MEMORY")
                .map_err(open_err)?;
        }
        conn.execute_batch("BEGIN DEFERRED").map_err(open_err)?;
        // The first read starts the read transaction: from here on this
        // connection sees one snapshot.
        conn.query_row("SELECT count(*) FROM main.sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(open_err)?;
        Ok(SqliteSource {
            conn,
            path: path.to_owned(),
        })
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_err(&self, doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> SqliteError {
        let path = self.path.clone();
        let doing = doing.into();
        move |source| SqliteError::Sql {
            path,
            doing,
            source,
        }
    }

    fn unsupported(&self, object: String, reason: &str) -> SqliteError {
        SqliteError::Unsupported {
            path: self.path.clone(),
            object,
            reason: reason.to_owned(),
        }
    }

    fn pragma_i64(&self, name: &str) -> Result<i64, SqliteError> {
        self.conn
            .query_row(&format!("PRAGMA main.{name}"), [], |r| r.get(0))
            .map_err(self.sql_err(format!("reading PRAGMA {name}")))
    }

    /// Describes everything a restore must rebuild, in restore order.
    ///
    /// Refuses (with a message naming the object) what cannot be restored
    /// row by row: virtual tables and their shadow tables, unknown `sqlite_`
    /// objects, and rowid tables whose columns shadow all of `rowid`,
    /// `_rowid_` and `oid`.
    pub fn schema(&self) -> Result<SqliteSchema, SqliteError> {
        let mut objects: Vec<(String, String, String, Option<String>)> = Vec::new();
        {
            let doing = "reading sqlite_schema";
            let mut stmt = self
                .conn
                .prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema ORDER BY rowid")
                .map_err(self.sql_err(doing))?;
            let mut rows = stmt.query([]).map_err(self.sql_err(doing))?;
            while let Some(r) = rows.next().map_err(self.sql_err(doing))? {
                let get = |i| r.get::<_, Option<String>>(i);
                objects.push((
                    get(0).map_err(self.sql_err(doing))?.unwrap_or_default(),
                    get(1).map_err(self.sql_err(doing))?.unwrap_or_default(),
                    get(2).map_err(self.sql_err(doing))?.unwrap_or_default(),
                    get(3).map_err(self.sql_err(doing))?,
                ));
            }
        }
        // Virtual tables first: their shadow tables would otherwise be
        // reported as ordinary tables.
        for (kind, name, _, sql) in &objects {
            let is_virtual = sql.as_deref().is_some_and(|s| {
                s.trim_start()
                    .get(..20)
                    .is_some_and(|p| p.eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
            });
            if kind == "table" && is_virtual {
                return Err(self.unsupported(
                    format!("virtual table `{name}`"),
                    "virtual tables (fts, rtree, ...) are not restorable row by row; \
                     remove it from the database or back the file up in file mode",
                ));
            }
        }
        let mut entries = Vec::new();
        let mut user_tables = Vec::new();
        let mut stat_tables = Vec::new();
        let mut sequence = false;
        for (kind, name, tbl_name, sql) in objects {
            let lower = name.to_ascii_lowercase();
            match kind.as_str() {
                "table" if lower == "sqlite_sequence" => sequence = true,
                "table" if lower == "sqlite_stat1" || lower == "sqlite_stat4" => {
                    stat_tables.push(name)
                }
                "index" if sql.is_none() => {} // automatic index of a constraint
                "table" | "index" | "view" | "trigger" => {
                    if lower.starts_with("sqlite_") {
                        return Err(self.unsupported(
                            format!("{kind} `{name}`"),
                            "it is an internal SQLite object custos does not know how to recreate",
                        ));
                    }
                    if sql.is_none() {
                        return Err(self.unsupported(
                            format!("{kind} `{name}`"),
                            "sqlite_schema has no SQL for it",
                        ));
                    }
                    if kind == "table" {
                        user_tables.push(name.clone());
                    }
                    entries.push(SchemaEntry {
                        kind,
                        name,
                        tbl_name,
                        sql,
                    });
                }
                _ => {
                    return Err(self.unsupported(
                        format!("object `{name}` of type `{kind}`"),
                        "unknown kind of schema object",
                    ))
                }
            }
        }
        let mut tables = Vec::new();
        for t in &user_tables {
            tables.push(self.table_schema(t, false)?);
        }
        for t in &stat_tables {
            tables.push(self.table_schema(t, true)?);
        }
        if sequence {
            tables.push(self.table_schema("sqlite_sequence", true)?);
        }
        let encoding: String = self
            .conn
            .query_row("PRAGMA main.encoding", [], |r| r.get(0))
            .map_err(self.sql_err("reading PRAGMA encoding"))?;
        let journal: String = self
            .conn
            .query_row("PRAGMA main.journal_mode", [], |r| r.get(0))
            .map_err(self.sql_err("reading PRAGMA journal_mode"))?;
        Ok(SqliteSchema {
            version: SQLITE_SCHEMA_VERSION,
            entries,
            tables,
            user_version: self.pragma_i64("user_version")?,
            application_id: self.pragma_i64("application_id")?,
            page_size: self.pragma_i64("page_size")? as u32,
            auto_vacuum: self.pragma_i64("auto_vacuum")? as u8,
            encoding,
            wal: journal.eq_ignore_ascii_case("wal"),
        })
    }

    fn table_schema(&self, name: &str, internal: bool) -> Result<TableSchema, SqliteError> {
        let doing = format!("reading the columns of table `{name}`");
        let (kind, wr): (String, bool) = self
            .conn
            .query_row(
                "SELECT type, wr FROM pragma_table_list(?1) WHERE schema = 'main'",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.sql_err(doing.clone()))?;
        if kind != "table" {
            return Err(self.unsupported(
                format!("table `{name}`"),
                &format!("SQLite lists it as a `{kind}` table, which is not restorable row by row"),
            ));
        }
        let mut columns = Vec::new();
        let mut generated = Vec::new();
        let mut pk: Vec<(i64, String)> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT name, pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid")
                .map_err(self.sql_err(doing.clone()))?;
            let mut rows = stmt.query([name]).map_err(self.sql_err(doing.clone()))?;
            while let Some(r) = rows.next().map_err(self.sql_err(doing.clone()))? {
                let col: String = r.get(0).map_err(self.sql_err(doing.clone()))?;
                let key: i64 = r.get(1).map_err(self.sql_err(doing.clone()))?;
                let hidden: i64 = r.get(2).map_err(self.sql_err(doing.clone()))?;
                match hidden {
                    0 => columns.push(col.clone()),
                    2 | 3 => generated.push(col.clone()),
                    _ => {
                        return Err(self.unsupported(
                            format!("column `{col}` of table `{name}`"),
                            "it is a hidden column",
                        ))
                    }
                }
                if key > 0 {
                    pk.push((key, col));
                }
            }
        }
        if columns.is_empty() {
            return Err(self.unsupported(format!("table `{name}`"), "it has no stored columns"));
        }
        let rowid = if wr {
            None
        } else {
            let shadowed = |alias: &str| {
                columns
                    .iter()
                    .chain(generated.iter())
                    .any(|c| c.eq_ignore_ascii_case(alias))
            };
            match ["rowid", "_rowid_", "oid"].into_iter().find(|a| !shadowed(a)) {
                Some(a) => Some(a.to_owned()),
                None => {
                    return Err(self.unsupported(
                        format!("table `{name}`"),
                        "its columns named rowid, _rowid_ and oid hide the rowid, so rowids cannot be kept",
                    ))
                }
            }
        };
        pk.sort();
        Ok(TableSchema {
            name: name.to_owned(),
            columns,
            without_rowid: wr,
            rowid,
            primary_key: if wr {
                pk.into_iter().map(|(_, c)| c).collect()
            } else {
                Vec::new()
            },
            generated,
            internal,
        })
    }

    fn find_table<'s>(
        &self,
        schema: &'s SqliteSchema,
        name: &str,
    ) -> Result<&'s TableSchema, SqliteError> {
        schema
            .tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| SqliteError::NoSuchTable {
                path: self.path.clone(),
                table: name.to_owned(),
            })
    }

    fn plan_columns<'t>(
        &self,
        table: &'t TableSchema,
        plan: &TablePlan,
    ) -> Result<PlanColumns<'t>, SqliteError> {
        let missing = |column: &str, role| SqliteError::NoSuchColumn {
            path: self.path.clone(),
            table: table.name.clone(),
            column: column.to_owned(),
            role,
        };
        let subject = match &plan.subject {
            Some(c) => Some(table.find_column(c).ok_or_else(|| missing(c, "subject"))?),
            None => None,
        };
        let period = match &plan.period {
            Some((c, every)) => Some((
                table
                    .find_column(c)
                    .ok_or_else(|| missing(c, "period column"))?,
                *every,
            )),
            None => None,
        };
        Ok((subject, period))
    }

    /// Checks a policy's plan against the schema: the table exists and its
    /// subject and period columns exist (generated columns count).
    pub fn check_plan(&self, schema: &SqliteSchema, plan: &TablePlan) -> Result<(), SqliteError> {
        let table = self.find_table(schema, &plan.name)?;
        self.plan_columns(table, plan).map(|_| ())
    }

    /// Number of rows in a table, in the pinned snapshot (for progress).
    pub fn row_count(&self, table: &TableSchema) -> Result<u64, SqliteError> {
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM main.{}", ident(&table.name)),
                [],
                |r| r.get(0),
            )
            .map_err(self.sql_err(format!("counting the rows of table `{}`", table.name)))?;
        Ok(n as u64)
    }

    /// Streams every row of `table` to `sink`, one encoded row per call, with
    /// its group coordinates. Rows come ordered by (bucket, subject, rowid or
    /// primary key), so rows with equal coordinates are contiguous; without
    /// subject and period they come in rowid / primary key order with
    /// default coordinates. Memory use does not grow with the table.
    pub fn scan<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        self.scan_ordered(table, plan, true, RowidRange::ALL, sink)
    }

    /// Like [`scan`](Self::scan), but in storage order (rowid or primary
    /// key): no sort, so nothing is spilled to SQLite's temporary files and
    /// the read is sequential. Rows of one group are not contiguous; the
    /// caller groups them (the backup engine does, in bounded windows).
    pub fn scan_natural<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        self.scan_ordered(table, plan, false, RowidRange::ALL, sink)
    }

    /// Like [`scan_natural`](Self::scan_natural), but only the rows whose
    /// rowid is in `range` (a rowid table; a WITHOUT ROWID table is read
    /// whole whatever the range).
    pub fn scan_natural_range<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        range: RowidRange,
        sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        self.scan_ordered(table, plan, false, range, sink)
    }

    /// The leaves of a rowid table's b-tree that meet `range`, walked as
    /// they are read ([`StretchLeaves`]; after
    /// the whole table was walked in this read transaction). `None` for a
    /// WITHOUT ROWID table or without `sqlite_dbpage`.
    pub fn stretch_leaves(
        &self,
        table: &TableSchema,
        range: RowidRange,
    ) -> Result<Option<StretchLeaves<'_>>, super::btree::BtreeError> {
        if table.rowid.is_none() {
            return Ok(None);
        }
        let stream = LeafStream::open(&self.conn, &table.name, range.from, range.to)?;
        Ok(stream.map(StretchLeaves::new))
    }

    /// The stretch digest of each of `ranges` after `h`, and the table's
    /// row count, from a walk of the whole table that keeps no leaf
    /// ([`btree::stretch_digests`](super::btree::stretch_digests)). `None`
    /// for a WITHOUT ROWID table or without `sqlite_dbpage`.
    pub fn stretch_digests(
        &self,
        table: &TableSchema,
        ranges: &[RowidRange],
        h: &blake3::Hasher,
    ) -> Result<Option<super::btree::Walked>, super::btree::BtreeError> {
        if table.rowid.is_none() {
            return Ok(None);
        }
        let ranges: Vec<_> = ranges.iter().map(|r| (r.from, r.to)).collect();
        super::btree::stretch_digests(&self.conn, &table.name, &ranges, h)
    }

    /// Like [`scan_natural_range`](Self::scan_natural_range), the same rows
    /// with the same coordinates in the same order, but decoded straight
    /// from the leaf pages of `leaves` (from [`stretch_leaves`](Self::stretch_leaves)
    /// on this source, for `range`) where [`pages`](super::pages) can read them: several
    /// times cheaper than a query. Without leaves, for a table the page
    /// reader cannot describe, and from the first row it cannot decode, the
    /// rows are read with a query.
    pub fn scan_natural_pages<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        leaves: Option<&RefCell<StretchLeaves<'_>>>,
        range: RowidRange,
        mut sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        let read = match leaves {
            Some(l) if l.borrow().encoding() == "UTF-8" => self.page_layout(table, plan)?,
            _ => None,
        };
        let (Some(leaves), Some(read)) = (leaves, read) else {
            return self.scan_natural_range(table, plan, range, sink);
        };
        let mut reader = match PageReader::open(&self.conn) {
            Ok(Some(r)) => r,
            _ => return self.scan_natural_range(table, plan, range, sink),
        };
        let mut natural = NaturalCoords::default();
        let mut buf = Vec::new();
        let mut stats = ScanStats::default();
        let mut last: Option<i64> = None;
        let r = read_rows(
            &mut reader,
            || leaves.borrow_mut().next_leaf(),
            &read.layout,
            range.from,
            range.to,
            |rowid, values| {
                buf.clear();
                encode_row(Some(rowid), values, &mut buf);
                if let Some((i, every)) = read.bucket {
                    natural.bucket(values[i], every);
                }
                if let Some(i) = read.subject {
                    natural.subject(values[i]);
                }
                sink(&natural.coords, &buf)?;
                stats.rows += 1;
                stats.bytes += buf.len() as u64;
                last = Some(rowid);
                Ok(())
            },
        );
        stats.from_pages = stats.rows;
        let failed = match r {
            Ok(()) => return Ok(stats),
            Err(ReadError::Sink(e)) => return Err(ScanError::Sink(e)),
            Err(ReadError::Unsupported { rowid, why }) => {
                tracing::debug!(table = %table.name, rowid, why, "reading the rest of the range with a query");
                format!("the pages cannot read the row with rowid {rowid}: {why}")
            }
            Err(ReadError::Btree(e)) => {
                tracing::warn!(table = %table.name, error = %e, "cannot read rows from the table's pages; reading the rest with a query");
                e.to_string()
            }
        };
        self.scan_after_pages(table, plan, range, stats, last, &failed, sink)
    }

    /// The rest of `range` after the pages gave the first `given.rows` of
    /// it (the last with rowid `last`) and then stopped (`failed` says why:
    /// a row they cannot decode, or a malformed page).
    ///
    /// A query from where the pages stopped would seek that rowid through
    /// interior keys the walk had not checked yet, and a malformed b-tree
    /// can send the seek past rows a scan of the range reads (a row moved
    /// out of order, a key further on): those rows would be lost without a
    /// word. So the query reads the range again from its start, in the
    /// b-tree's order as the pages did, and skips the rows they gave; if
    /// the rows it skips do not end at `last`, the two reads disagree and
    /// the database is corrupt. (Rows the pages cannot decode are rare past
    /// a range's first: rows older than an added column with a default
    /// come first, in rowid order.)
    #[allow(clippy::too_many_arguments)]
    fn scan_after_pages<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        range: RowidRange,
        given: ScanStats,
        last: Option<i64>,
        failed: &str,
        mut sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        /// The sink failed, or the query's rows part from the pages'.
        enum Resumed<E> {
            Sink(E),
            Differs,
        }
        let mut skipped = 0u64;
        let mut skipped_to = None;
        let mut stats = given;
        let r = self.scan_natural_range(table, plan, range, |coords: &GroupCoords, row: &[u8]| {
            if skipped < given.rows {
                skipped += 1;
                skipped_to = row_span(row).ok().and_then(|(rowid, _)| rowid);
                return Ok(());
            }
            if skipped_to != last {
                return Err(Resumed::Differs);
            }
            sink(coords, row).map_err(Resumed::Sink)?;
            stats.rows += 1;
            stats.bytes += row.len() as u64;
            Ok(())
        });
        let corrupt = || {
            ScanError::Store(SqliteError::Corrupt {
                path: self.path.clone(),
                table: table.name.clone(),
                detail: failed.to_string(),
            })
        };
        match r {
            Ok(_) => {}
            Err(ScanError::Sink(Resumed::Sink(e))) => return Err(ScanError::Sink(e)),
            Err(ScanError::Sink(Resumed::Differs)) => return Err(corrupt()),
            Err(ScanError::Store(e)) => return Err(ScanError::Store(e)),
        }
        if skipped != given.rows || skipped_to != last {
            return Err(corrupt());
        }
        Ok(stats)
    }

    /// How `table`'s records read back as its columns, or `None` when the
    /// page reader cannot tell (see [`pages`](super::pages)): a WITHOUT
    /// ROWID table, generated columns, a rowid alias it cannot confirm.
    /// (The caller checks the text encoding: the walk read it.)
    fn page_layout(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
    ) -> Result<Option<PageRead>, SqliteError> {
        if table.rowid.is_none() || table.without_rowid || !table.generated.is_empty() {
            return Ok(None);
        }
        let doing = format!("reading the columns of table `{}`", table.name);
        let (subject, period) = self.plan_columns(table, plan)?;
        let at = |c: &str| table.columns.iter().position(|x| x == c);
        let subject = match subject {
            Some(c) => match at(c) {
                Some(i) => Some(i),
                None => return Ok(None),
            },
            None => None,
        };
        let bucket = match period {
            Some((c, every)) => match at(c) {
                Some(i) => Some((i, every)),
                None => return Ok(None),
            },
            None => None,
        };
        let Some(layout) = record_layout(&self.conn, table).map_err(self.sql_err(doing))? else {
            return Ok(None);
        };
        Ok(Some(PageRead {
            layout,
            subject,
            bucket,
        }))
    }

    fn scan_ordered<E, F>(
        &self,
        table: &TableSchema,
        plan: &TablePlan,
        grouped: bool,
        range: RowidRange,
        mut sink: F,
    ) -> Result<ScanStats, ScanError<E>>
    where
        F: FnMut(&GroupCoords, &[u8]) -> Result<(), E>,
    {
        if !plan.name.eq_ignore_ascii_case(&table.name) {
            return Err(ScanError::Store(SqliteError::PlanMismatch {
                plan: plan.name.clone(),
                table: table.name.clone(),
            }));
        }
        let (subject, period) = self.plan_columns(table, plan)?;
        let mut select: Vec<String> = Vec::new();
        if let Some(r) = &table.rowid {
            select.push(r.clone());
        }
        let first_value = select.len();
        select.extend(table.columns.iter().map(|c| ident(c)));
        let mut order: Vec<String> = Vec::new();
        // A grouped scan sorts by the computed coordinates, so SQLite
        // computes them (the registered functions); a natural scan reads
        // the raw columns and computes them here, once per change of value.
        let mut bucket_at = None;
        if let Some((col, every)) = period {
            if grouped {
                select.push(format!(
                    "custos_bucket({}, '{}')",
                    ident(col),
                    every.as_str()
                ));
                order.push(select.len().to_string());
            } else {
                select.push(ident(col));
            }
            bucket_at = Some((select.len() - 1, every));
        }
        let mut subject_at = None;
        if let Some(col) = subject {
            if grouped {
                select.push(format!("custos_subject({})", ident(col)));
                order.push(select.len().to_string());
            } else {
                select.push(ident(col));
            }
            subject_at = Some(select.len() - 1);
        }
        match &table.rowid {
            Some(r) => order.push(r.clone()),
            None => order.extend(table.primary_key.iter().map(|c| ident(c))),
        }
        let mut filter = Vec::new();
        if let Some(r) = &table.rowid {
            if let Some(from) = range.from {
                filter.push(format!("{r} >= {from}"));
            }
            if let Some(to) = range.to {
                filter.push(format!("{r} < {to}"));
            }
        }
        let filter = if filter.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filter.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM main.{}{filter} ORDER BY {}",
            select.join(", "),
            ident(&table.name),
            order.join(", ")
        );
        let doing = format!("reading table `{}`", table.name);
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(self.sql_err(doing.clone()))?;
        let mut rows = stmt.query([]).map_err(self.sql_err(doing.clone()))?;
        let ncols = table.columns.len();
        let mut coords = GroupCoords::default();
        let mut natural = NaturalCoords::default();
        let mut buf = Vec::new();
        let mut stats = ScanStats::default();
        while let Some(row) = rows.next().map_err(self.sql_err(doing.clone()))? {
            let rowid = match table.rowid {
                Some(_) => match row.get_ref(0).map_err(self.sql_err(doing.clone()))? {
                    ValueRef::Integer(i) => Some(i),
                    _ => {
                        return Err(ScanError::Store(self.unsupported(
                            format!("table `{}`", table.name),
                            "a rowid read back as a non-integer",
                        )))
                    }
                },
                None => None,
            };
            buf.clear();
            // Each value is fetched once (encoding sizes, then writes, the
            // row); wide tables fetch twice rather than allocate.
            if ncols <= VALUES_ON_STACK {
                let mut values = [ValueRef::Null; VALUES_ON_STACK];
                for (i, v) in values[..ncols].iter_mut().enumerate() {
                    *v = row.get_ref_unwrap(first_value + i);
                }
                encode_row(rowid, &values[..ncols], &mut buf);
            } else {
                encode_row_with(
                    rowid,
                    ncols,
                    |i| row.get_ref_unwrap(first_value + i),
                    &mut buf,
                );
            }
            if let Some((i, every)) = bucket_at {
                let v = row.get_ref_unwrap(i);
                if grouped {
                    set_coord(&mut coords.bucket, v);
                } else {
                    natural.bucket(v, every);
                }
            }
            if let Some(i) = subject_at {
                let v = row.get_ref_unwrap(i);
                if grouped {
                    set_coord(&mut coords.subject, v);
                } else {
                    natural.subject(v);
                }
            }
            let coords = if grouped { &coords } else { &natural.coords };
            sink(coords, &buf).map_err(ScanError::Sink)?;
            stats.rows += 1;
            stats.bytes += buf.len() as u64;
        }
        Ok(stats)
    }
}

/// Rowids `[from, to)`; `None` is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowidRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl RowidRange {
    pub const ALL: RowidRange = RowidRange {
        from: None,
        to: None,
    };
}

/// The last raw value of a column, to skip recomputing a coordinate when
/// the next row holds the same value.
#[derive(Default)]
enum LastValue {
    #[default]
    Unset,
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl LastValue {
    /// Whether `v` differs from the last value; remembers `v`.
    fn changed(&mut self, v: ValueRef<'_>) -> bool {
        let same = match (&*self, v) {
            (LastValue::Null, ValueRef::Null) => true,
            (LastValue::Integer(a), ValueRef::Integer(b)) => *a == b,
            (LastValue::Real(a), ValueRef::Real(b)) => *a == b.to_bits(),
            (LastValue::Text(a), ValueRef::Text(b)) => a.as_slice() == b,
            (LastValue::Blob(a), ValueRef::Blob(b)) => a.as_slice() == b,
            _ => false,
        };
        if !same {
            *self = match (std::mem::take(self), v) {
                // A text or blob after one of its kind reuses its buffer.
                (LastValue::Text(mut a), ValueRef::Text(t)) => {
                    a.clear();
                    a.extend_from_slice(t);
                    LastValue::Text(a)
                }
                (LastValue::Blob(mut a), ValueRef::Blob(b)) => {
                    a.clear();
                    a.extend_from_slice(b);
                    LastValue::Blob(a)
                }
                (_, ValueRef::Null) => LastValue::Null,
                (_, ValueRef::Integer(i)) => LastValue::Integer(i),
                (_, ValueRef::Real(r)) => LastValue::Real(r.to_bits()),
                (_, ValueRef::Text(t)) => LastValue::Text(t.to_vec()),
                (_, ValueRef::Blob(b)) => LastValue::Blob(b.to_vec()),
            };
        }
        !same
    }
}

/// Period buckets computed row by row, as [`bucket_label`] would: an
/// INTEGER time inside the current bucket's span of seconds keeps the
/// label without any date arithmetic; a text or real time is read as an
/// instant and keeps the label if it falls in the span (no label is
/// formatted); other values are recomputed when they change.
#[derive(Default)]
pub struct BucketCache {
    /// Unix seconds `[start, end)` of the current label.
    span: Option<(i64, i64)>,
    last: LastValue,
}

impl BucketCache {
    /// Sets `slot` to `v`'s label; `slot` must hold what the last call
    /// left there.
    pub fn update(&mut self, slot: &mut Option<String>, v: ValueRef<'_>, every: Every) {
        if let (ValueRef::Integer(i), Some((start, end))) = (v, self.span) {
            if (start..end).contains(&i) {
                return;
            }
        }
        if !self.last.changed(v) {
            return;
        }
        let t = time_value(v);
        // Whole seconds, rounded down: the second `label_of` dates.
        let secs = t.map(|t| t.and_utc().timestamp());
        if let (Some(s), Some((start, end))) = (secs, self.span) {
            if (start..end).contains(&s) {
                return;
            }
        }
        let label = t.and_then(|t| label_of(t, every));
        self.span = match (secs, &label) {
            (Some(s), Some(_)) => bucket_span(s, every),
            _ => None,
        };
        if *slot != label {
            *slot = label;
        }
    }
}

/// The coordinates of rows read in storage order, computed row by row (a
/// coordinate is recomputed only when its column's value changes).
#[derive(Default)]
struct NaturalCoords {
    coords: GroupCoords,
    bucket: BucketCache,
    subject: LastValue,
}

impl NaturalCoords {
    fn bucket(&mut self, v: ValueRef<'_>, every: Every) {
        self.bucket.update(&mut self.coords.bucket, v, every);
    }

    fn subject(&mut self, v: ValueRef<'_>) {
        if self.subject.changed(v) {
            self.coords.subject = subject_text(v);
        }
    }
}

/// Whether the columns `pragma_table_xinfo` lists (name, hidden) are
/// `columns`, in order, none of them hidden or generated.
fn stored_columns_are<'a>(
    info: impl ExactSizeIterator<Item = (&'a str, i64)>,
    columns: &[String],
) -> bool {
    info.len() == columns.len()
        && info
            .zip(columns)
            .all(|((name, hidden), c)| name == c && hidden == 0)
}

/// How `table`'s records read back, from the database `conn` has open:
/// `None` for a table whose records do not hold exactly its columns in
/// order (WITHOUT ROWID, generated or hidden columns) or whose rowid alias
/// SQLite does not confirm. Shared by the backup's page reader and the
/// restore's bulk load.
fn record_layout(conn: &Connection, table: &TableSchema) -> rusqlite::Result<Option<Layout>> {
    if table.rowid.is_none() || table.without_rowid {
        return Ok(None);
    }
    // (name, declared type, no default, primary key position, hidden)
    type Info = (String, String, bool, i64, i64);
    let mut stmt = conn.prepare(
        "SELECT name, type, dflt_value IS NULL, pk, hidden \
                 FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    let info: Vec<Info> = stmt
        .query_map([&table.name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .and_then(|rows| rows.collect())?;
    // A VIRTUAL generated column (hidden 2) is not in the records; a
    // STORED one (3) is, with a value the rows do not hold.
    let mut info = info;
    info.retain(|i| i.4 != 2);
    if !stored_columns_are(info.iter().map(|i| (&*i.0, i.4)), &table.columns) {
        return Ok(None);
    }
    // A rowid alias is the one primary key column declared INTEGER
    // (but not every such column is one): SQLite reads it with its
    // `Rowid` opcode, an ordinary column with `Column`.
    let keys: Vec<&Info> = info.iter().filter(|i| i.3 > 0).collect();
    let alias = match keys.as_slice() {
        [k] if k.1.eq_ignore_ascii_case("INTEGER") => {
            let sql = format!(
                "EXPLAIN SELECT {} FROM main.{} NOT INDEXED",
                ident(&k.0),
                ident(&table.name)
            );
            let mut stmt = conn.prepare(&sql)?;
            let ops: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(1))
                .and_then(|rows| rows.collect())?;
            let reads = |op: &str| ops.iter().any(|o| o == op);
            match (reads("Rowid"), reads("Column")) {
                (true, false) => Some(k.0.as_str()),
                (false, true) => None,
                _ => return Ok(None),
            }
        }
        _ => None,
    };
    let columns = info
        .iter()
        .map(|(name, declared, no_default, _, _)| ColumnRead {
            rowid: alias == Some(name.as_str()),
            real: is_real_affinity(declared),
            missing_is_null: *no_default,
        })
        .collect();
    Ok(Some(Layout { columns }))
}

/// Decodes the rows of `pieces` in the order of `spans` (key, then
/// `piece << 40 | offset`) and gives each to `f` with its offset. Rows
/// taken out of the order in which they lie, in buffers larger than the
/// caches, are loaded a few rows ahead.
fn each_row<'p>(
    pieces: &[&'p [u8]],
    spans: &[(i64, u64)],
    values: &mut Vec<ValueRef<'p>>,
    record: impl Fn(usize, super::record::RecordError) -> SqliteError,
    mut f: impl FnMut(Option<i64>, &[ValueRef<'p>], usize) -> Result<(), SqliteError>,
) -> Result<(), SqliteError> {
    let at = |span: u64| ((span >> 40) as usize, (span & ((1 << 40) - 1)) as usize);
    for (k, &(_, span)) in spans.iter().enumerate() {
        if let Some(&(_, ahead)) = spans.get(k + 4) {
            let (i, pos) = at(ahead);
            crate::prefetch::head(&pieces[i][pos..]);
        }
        let (i, pos) = at(span);
        let (rowid, _) = decode_row_ref(&pieces[i][pos..], values).map_err(|e| record(pos, e))?;
        f(rowid, values, pos)?;
    }
    Ok(())
}

/// Sorts a window's rows (rowid, span) as `sort_unstable` does. A
/// window's rowids are a range the backup read, nearly every rowid of it
/// a row: each row is then put at its rowid's place in `slots` (one pass,
/// no comparisons), and the sort is left for sparse rowids or a rowid
/// that repeats (a damaged or hostile snapshot; it fails later, as it
/// would have). The sort was about 2% of a restore's samples.
fn sort_spans(spans: &mut Vec<(i64, u64)>, slots: &mut Vec<u64>) {
    if !place_spans(spans, slots) {
        spans.sort_unstable();
    }
    // Kept for the next window up to 2 MiB: a larger range's slots
    // (8 bytes a rowid) would stay in the peak for the rest of the run.
    if slots.capacity() > 1 << 18 {
        *slots = Vec::new();
    }
}

/// [`sort_spans`] by placing each row at its rowid's slot; false, with
/// `spans` as they were, when the rowids are sparse or one repeats.
fn place_spans(spans: &mut Vec<(i64, u64)>, slots: &mut Vec<u64>) -> bool {
    const EMPTY: u64 = u64::MAX;
    let n = spans.len();
    let Some((lo, hi)) = spans.iter().fold(None, |b: Option<(i64, i64)>, &(r, _)| {
        Some(b.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))))
    }) else {
        return true;
    };
    let range = i128::from(hi) - i128::from(lo) + 1;
    if n < 64 || range > 4 * n as i128 {
        return false;
    }
    slots.clear();
    slots.resize(range as usize, EMPTY);
    for &(rowid, span) in spans.iter() {
        let slot = &mut slots[(rowid - lo) as usize];
        if *slot != EMPTY || span == EMPTY {
            return false;
        }
        *slot = span;
    }
    spans.clear();
    spans.extend(
        slots
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != EMPTY)
            .map(|(k, &s)| (lo + k as i64, s)),
    );
    true
}

/// How [`SqliteSource::scan_natural_pages`] reads a table from its pages:
/// the records' layout and where the coordinates' columns are.
struct PageRead {
    layout: Layout,
    subject: Option<usize>,
    bucket: Option<(usize, Every)>,
}

/// The unix seconds `[start, end)` of the UTC day, month or year that
/// holds `t`.
fn bucket_span(t: i64, every: Every) -> Option<(i64, i64)> {
    let d = chrono::DateTime::from_timestamp(t, 0)?.date_naive();
    let (start, end) = match every {
        Every::Day => (d, d.succ_opt()?),
        Every::Month => {
            let first = d.with_day(1)?;
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)?
            };
            (first, next)
        }
        Every::Year => (
            NaiveDate::from_ymd_opt(d.year(), 1, 1)?,
            NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)?,
        ),
    };
    let secs = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc().timestamp();
    Some((secs(start), secs(end)))
}

/// Columns read into a stack array per row (wider tables are read twice).
const VALUES_ON_STACK: usize = 32;

/// Updates a coordinate from a computed TEXT/NULL value, allocating only when
/// it changes.
fn set_coord(slot: &mut Option<String>, v: ValueRef<'_>) {
    match v {
        ValueRef::Text(b) => {
            if slot.as_deref().map(str::as_bytes) != Some(b) {
                *slot = Some(String::from_utf8_lossy(b).into_owned());
            }
        }
        _ => *slot = None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Plain,
    Sequence,
}

struct Target {
    insert: String,
    ncols: usize,
    rowid: bool,
    kind: TargetKind,
    /// Until the table's rows start: its root page, record layout and the
    /// indexes to build with it, when its pages can be written directly
    /// ([`bulkload`]).
    bulk: Option<(u32, Layout, Vec<IndexSpec>)>,
    /// Until a WITHOUT ROWID table's rows start: how its b-tree is built
    /// from them, when it can be.
    cluster: Option<ClusterPlan>,
}

/// A key column of an index, from `pragma_index_xinfo`: the table
/// column's number (-1 the rowid, -2 an expression), DESC, collation, and
/// the column's name.
type IndexKey = (i64, bool, String, Option<String>);

/// How a WITHOUT ROWID table's b-tree is built from its rows: sorted by
/// its primary key as an index's entries are ([`IndexSpec::clustered`]),
/// each row's record in the table's storage order (the primary key's
/// columns first, then the others in table order).
struct ClusterPlan {
    spec: IndexSpec,
    layout: Layout,
    /// The table's columns in the record's order.
    order: Vec<usize>,
    /// The indexes to build with it.
    indexes: Vec<IndexSpec>,
}

/// A WITHOUT ROWID table whose rows are being gathered.
struct ClusterLoad {
    build: IndexBuild,
    layout: Layout,
    order: Vec<usize>,
    indexes: Vec<IndexBuild>,
    rows: u64,
    head: Vec<u8>,
    body: Vec<u8>,
    record: Vec<u8>,
}

impl ClusterLoad {
    fn push(&mut self, values: &[ValueRef<'_>]) -> Result<(), LoadError> {
        let at = put_record(
            self.order
                .iter()
                .map(|&c| (values[c], &self.layout.columns[c])),
            &mut self.head,
            &mut self.body,
        );
        self.record.clear();
        self.record.extend_from_slice(&self.head[at..]);
        self.record.extend_from_slice(&self.body);
        self.build.push_row(values, &self.layout, &self.record)?;
        for ix in &mut self.indexes {
            ix.push(0, values, &self.layout)?;
        }
        self.rows += 1;
        Ok(())
    }
}

/// Builds a new database from a schema and encoded rows. Until
/// [`finish`](Self::finish) succeeds, the database is a temporary file in
/// the target's directory, deleted if the restorer is dropped.
pub struct SqliteRestorer {
    /// Open while rows go in through SQL, and for the final steps; closed
    /// while a table's pages are written directly.
    conn: Option<Connection>,
    /// The file, while pages are written directly, and the table whose
    /// b-tree is being built.
    pages: Option<PageFile>,
    loading: Option<(String, TableLoad)>,
    /// The WITHOUT ROWID table whose rows are being gathered.
    clustering: Option<(String, ClusterLoad)>,
    /// Tables built page by page, and their rows loaded so.
    loaded: Vec<(String, u64)>,
    /// Indexes created with the tables, to be built with their rows.
    early: std::collections::HashSet<String>,
    /// Indexes whose entries SQLite must build at the end: automatic ones
    /// of tables built page by page that were not built with them.
    reindex: Vec<String>,
    /// Indexes built with their tables' rows.
    built: Vec<String>,
    tmp: PathBuf,
    path: PathBuf,
    force: bool,
    schema: SqliteSchema,
    targets: HashMap<String, Target>,
    sequence: Vec<Row>,
    /// Scratch for [`insert_pieces`](Self::insert_pieces).
    spans: Vec<(i64, u64)>,
    /// Scratch for [`sort_spans`], kept from window to window.
    slots: Vec<u64>,
    buffers: WriterBuffers,
    done: bool,
}

/// What a [`SqliteRestorer`] may hold in memory besides the rows given to
/// it: the index entries a table's indexes sort in one run, all of them
/// together, and SQLite's page cache while rows go in through SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterBuffers {
    pub sort_run_bytes: usize,
    pub cache_kib: u32,
}

impl Default for WriterBuffers {
    fn default() -> Self {
        WriterBuffers {
            sort_run_bytes: RUN_BYTES,
            cache_kib: INSERT_CACHE_KIB,
        }
    }
}

impl fmt::Debug for SqliteRestorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRestorer")
            .field("path", &self.path)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

const ENCODINGS: [&str; 3] = ["UTF-8", "UTF-16le", "UTF-16be"];

/// The restoring connection's page cache while rows go in, in KiB, by
/// default ([`WriterBuffers`]). Rows
/// go in in rowid order, but a `UNIQUE` column's index is updated in random
/// order by every insert; at 4 GiB the benchmark's outgrows 16 MiB, and
/// the restore was about 20% slower with it (PERFORMANCE.md, 4 GiB).
const INSERT_CACHE_KIB: u32 = 64 << 10;

/// The page cache while the indexes are built, in KiB. SQLite's sorter
/// sorts its keys in batches as large as the page cache, and 8 MiB batches
/// sort within the CPU's caches: a restore at 1 GiB took 4 to 7 s less
/// than with 64 MiB (PERFORMANCE.md, "Restore: smaller sort batches for the indexes").
const INDEX_BUILD_CACHE_KIB: u32 = 8 << 10;

impl SqliteRestorer {
    /// Starts a restore into `path`. Refuses an existing `path` unless
    /// `force`. Creates the tables (not yet indexes, views or triggers) in a
    /// temporary file in the same directory, set up for speed (no journal,
    /// no sync, one transaction); CHECK constraints are not re-evaluated.
    pub fn create(path: &Path, schema: &SqliteSchema, force: bool) -> Result<Self, SqliteError> {
        SqliteRestorer::create_with(path, schema, force, WriterBuffers::default())
    }

    /// [`create`](Self::create), holding at most `buffers` in memory.
    pub fn create_with(
        path: &Path,
        schema: &SqliteSchema,
        force: bool,
        buffers: WriterBuffers,
    ) -> Result<Self, SqliteError> {
        if schema.version != SQLITE_SCHEMA_VERSION {
            return Err(SqliteError::BadSchema(format!(
                "shape version {} (this build reads {})",
                schema.version, SQLITE_SCHEMA_VERSION
            )));
        }
        if !schema.page_size.is_power_of_two() || !(512..=65536).contains(&schema.page_size) {
            return Err(SqliteError::BadSchema(format!(
                "page size {}",
                schema.page_size
            )));
        }
        if schema.auto_vacuum > 2 || !ENCODINGS.contains(&schema.encoding.as_str()) {
            return Err(SqliteError::BadSchema(
                "auto_vacuum or encoding out of range".into(),
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(SqliteError::Io {
                    path: path.to_owned(),
                    doing: "checking the restore target".into(),
                    source: std::io::Error::other("it is a directory"),
                })
            }
            Ok(_) if !force => {
                return Err(SqliteError::AlreadyExists {
                    path: path.to_owned(),
                })
            }
            _ => {}
        }
        let file_name = path.file_name().ok_or_else(|| SqliteError::Io {
            path: path.to_owned(),
            doing: "choosing the restore target".into(),
            source: std::io::Error::other("the path has no file name"),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.custos-restore-{:016x}",
            file_name.to_string_lossy(),
            rand::random::<u64>()
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| SqliteError::Io {
                path: tmp.clone(),
                doing: "creating the temporary restore file".into(),
                source,
            })?;
        let mut r = SqliteRestorer {
            conn: None,
            pages: None,
            loading: None,
            clustering: None,
            loaded: Vec::new(),
            early: Default::default(),
            reindex: Vec::new(),
            built: Vec::new(),
            tmp,
            path: path.to_owned(),
            force,
            schema: schema.clone(),
            targets: HashMap::new(),
            sequence: Vec::new(),
            spans: Vec::new(),
            slots: Vec::new(),
            buffers,
            done: false,
        };
        // From here on, dropping `r` on error removes the temporary file.
        r.setup()?;
        Ok(r)
    }

    fn sql_err(&self, doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> SqliteError {
        let path = self.tmp.clone();
        let doing = doing.into();
        move |source| SqliteError::Sql {
            path,
            doing,
            source,
        }
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connection is open until finish")
    }

    /// Opens the connection to the new database, set up for speed (no
    /// journal, no sync, one transaction). The file's own settings (page
    /// size, auto-vacuum, encoding) are given before its first table.
    fn connect(&mut self, file_settings: &str) -> Result<(), SqliteError> {
        let conn = Connection::open_with_flags(
            &self.tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| SqliteError::Open {
            path: self.tmp.clone(),
            source,
        })?;
        self.conn = Some(conn);
        let cache_kib = self.buffers.cache_kib;
        let settings = format!(
            "{file_settings}
             PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA cache_size = -{cache_kib};
             PRAGMA foreign_keys = OFF;
             PRAGMA ignore_check_constraints = ON;
             BEGIN;"
        );
        self.conn()
            .execute_batch(&settings)
            .map_err(self.sql_err("setting up the new database"))?;
        let n = self.schema.tables.len();
        self.conn()
            .set_prepared_statement_cache_capacity(n.clamp(16, 1024));
        Ok(())
    }

    fn setup(&mut self) -> Result<(), SqliteError> {
        let s = &self.schema;
        let file_settings = format!(
            "PRAGMA page_size = {};
             PRAGMA auto_vacuum = {};
             PRAGMA encoding = '{}';",
            s.page_size, s.auto_vacuum, s.encoding
        );
        self.connect(&file_settings)?;
        for e in &self.schema.entries {
            if e.kind != "table" {
                continue;
            }
            let sql = e
                .sql
                .as_deref()
                .ok_or_else(|| SqliteError::BadSchema(format!("table `{}` has no SQL", e.name)))?;
            self.conn()
                .execute_batch(sql)
                .map_err(self.sql_err(format!("creating table `{}`", e.name)))?;
        }
        let internal: Vec<String> = self
            .schema
            .tables
            .iter()
            .filter(|t| t.internal)
            .map(|t| t.name.to_ascii_lowercase())
            .collect();
        if internal.iter().any(|n| n.starts_with("sqlite_stat")) {
            // The documented way to create the statistics tables; then keep
            // exactly the ones the source had, empty.
            self.conn()
                .execute_batch("ANALYZE sqlite_schema")
                .map_err(self.sql_err("creating the sqlite_stat tables"))?;
            for stat in ["sqlite_stat1", "sqlite_stat4"] {
                if !self.table_exists(stat)? {
                    continue;
                }
                let sql = if internal.iter().any(|n| n == stat) {
                    format!("DELETE FROM main.{stat}")
                } else {
                    format!("DROP TABLE main.{stat}")
                };
                self.conn()
                    .execute_batch(&sql)
                    .map_err(self.sql_err(format!("preparing {stat}")))?;
            }
        }
        if internal.iter().any(|n| n == "sqlite_sequence")
            && !self.table_exists("sqlite_sequence")?
        {
            // sqlite_sequence cannot be created directly: an AUTOINCREMENT
            // table creates it, and it survives that table's drop.
            self.conn()
                .execute_batch(
                    "CREATE TABLE main.custos_restore_sequence_seed(x INTEGER PRIMARY KEY AUTOINCREMENT);
                     DROP TABLE main.custos_restore_sequence_seed;",
                )
                .map_err(self.sql_err("creating sqlite_sequence"))?;
        }
        // Pages are written directly only where text is stored as the rows
        // hold it (with auto-vacuum, the page writer keeps the pointer map).
        let bulk_file = self.schema.encoding == "UTF-8";
        let tables = self.schema.tables.clone();
        for t in &tables {
            if !self.table_exists(&t.name)? {
                return Err(SqliteError::BadSchema(format!(
                    "table `{}` is listed for rows but no entry creates it",
                    t.name
                )));
            }
            if t.without_rowid == t.rowid.is_some() {
                return Err(SqliteError::BadSchema(format!(
                    "table `{}` is both or neither WITHOUT ROWID and rowid",
                    t.name
                )));
            }
            let mut cols: Vec<String> = Vec::new();
            if let Some(r) = &t.rowid {
                if !matches!(r.as_str(), "rowid" | "_rowid_" | "oid") {
                    return Err(SqliteError::BadSchema(format!(
                        "table `{}` names its rowid `{r}`",
                        t.name
                    )));
                }
                cols.push(r.clone());
            }
            cols.extend(t.columns.iter().map(|c| ident(c)));
            let marks = vec!["?"; cols.len()].join(", ");
            let insert = format!(
                "INSERT INTO main.{}({}) VALUES ({})",
                ident(&t.name),
                cols.join(", "),
                marks
            );
            let kind = if t.internal && t.name.eq_ignore_ascii_case("sqlite_sequence") {
                TargetKind::Sequence
            } else {
                TargetKind::Plain
            };
            // Prepare once now: a schema whose columns do not match fails
            // here, naming the table, rather than at the first row.
            self.conn()
                .prepare(&insert)
                .map_err(self.sql_err(format!("preparing inserts into table `{}`", t.name)))?;
            let bulk = if kind == TargetKind::Plain && !t.internal && bulk_file {
                match self.bulk_target(t)? {
                    Some((root, layout)) => {
                        let specs = self.prepare_indexes(t)?;
                        Some((root, layout, specs))
                    }
                    None => None,
                }
            } else {
                None
            };
            let cluster = if kind == TargetKind::Plain && !t.internal && bulk_file {
                match self.cluster_plan(t)? {
                    Some(mut plan) => {
                        plan.indexes = self.prepare_indexes(t)?;
                        Some(plan)
                    }
                    None => None,
                }
            } else {
                None
            };
            self.targets.insert(
                t.name.clone(),
                Target {
                    insert,
                    ncols: t.columns.len(),
                    rowid: t.rowid.is_some(),
                    kind,
                    bulk,
                    cluster,
                },
            );
        }
        self.reread_roots()
    }

    /// Reads the root pages of the tables and indexes to be written page
    /// by page, now that every table's indexes are made: in an
    /// auto-vacuum database, dropping an index moves the last root page
    /// into the one freed (SQLite renumbers it in `sqlite_schema`), so a
    /// root read before a later drop may name another b-tree's page. A
    /// table whose root is no longer one to write goes in through SQL (its
    /// indexes, made already, follow its rows); such an index is rebuilt
    /// at the end.
    fn reread_roots(&mut self) -> Result<(), SqliteError> {
        let named = |f: fn(&Target) -> bool| -> Vec<String> {
            self.targets
                .iter()
                .filter(|(_, t)| f(t))
                .map(|(n, _)| n.clone())
                .collect()
        };
        let (bulk, cluster) = (named(|t| t.bulk.is_some()), named(|t| t.cluster.is_some()));
        for name in bulk {
            let doing = format!("reading the root pages of table `{name}`");
            let target = self.targets.get_mut(&name).expect("listed above");
            let Some((_, layout, specs)) = target.bulk.take() else {
                continue;
            };
            let Some(root) = self
                .root_page("table", &name)
                .map_err(self.sql_err(doing.clone()))?
            else {
                continue;
            };
            let kept = self.reread_index_roots(specs, &doing)?;
            let target = self.targets.get_mut(&name).expect("listed above");
            target.bulk = Some((root, layout, kept));
        }
        for name in cluster {
            let doing = format!("reading the root page of table `{name}`");
            let root = self
                .root_page("table", &name)
                .map_err(self.sql_err(doing))?;
            let target = self.targets.get_mut(&name).expect("listed above");
            let Some(mut plan) = target.cluster.take() else {
                continue;
            };
            let Some(root) = root else {
                // In through SQL; its indexes, made already, follow.
                continue;
            };
            plan.spec.root = root;
            let doing = format!("reading the root pages of table `{name}`");
            plan.indexes = self.reread_index_roots(std::mem::take(&mut plan.indexes), &doing)?;
            let target = self.targets.get_mut(&name).expect("listed above");
            target.cluster = Some(plan);
        }
        Ok(())
    }

    /// The indexes of `specs` with their root pages read again; one that
    /// has none any more is left out, to be rebuilt at the end.
    fn reread_index_roots(
        &mut self,
        specs: Vec<IndexSpec>,
        doing: &str,
    ) -> Result<Vec<IndexSpec>, SqliteError> {
        let mut kept = Vec::with_capacity(specs.len());
        for mut spec in specs {
            match self
                .root_page("index", &spec.name)
                .map_err(self.sql_err(doing.to_owned()))?
            {
                Some(r) => {
                    spec.root = r;
                    kept.push(spec);
                }
                None => self.reindex.push(spec.name),
            }
        }
        Ok(kept)
    }

    /// How WITHOUT ROWID table `t`'s b-tree is built from its rows, if it
    /// can be: every column stored (none generated), its primary key's
    /// columns under a collation the build follows. The root is read by
    /// `reread_roots`.
    fn cluster_plan(&self, t: &TableSchema) -> Result<Option<ClusterPlan>, SqliteError> {
        if !t.without_rowid || !t.generated.is_empty() {
            return Ok(None);
        }
        let doing = format!("reading the primary key of table `{}`", t.name);
        let conn = self.conn();
        let info: Vec<(String, String, i64)> = conn
            .prepare("SELECT name, type, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid")
            .and_then(|mut st| {
                st.query_map([&t.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(self.sql_err(doing.clone()))?;
        if !stored_columns_are(info.iter().map(|i| (&*i.0, i.2)), &t.columns) {
            return Ok(None);
        }
        let indexes: Vec<(String, String)> = conn
            .prepare("SELECT name, origin FROM pragma_index_list(?1, 'main')")
            .and_then(|mut st| {
                st.query_map([&t.name], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(self.sql_err(doing.clone()))?;
        let Some(pk) = indexes.iter().find(|i| i.1 == "pk").map(|i| i.0.clone()) else {
            return Ok(None);
        };

        // Every column, in the record's order; the key's first.
        let stored: Vec<(i64, bool, String, bool)> = conn
            .prepare(
                "SELECT cid, \"desc\", coll, key FROM pragma_index_xinfo(?1, 'main') \
                 ORDER BY seqno",
            )
            .and_then(|mut st| {
                st.query_map([&pk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .map_err(self.sql_err(doing))?;
        let ncols = t.columns.len();
        let order: Option<Vec<usize>> = stored
            .iter()
            .map(|s| usize::try_from(s.0).ok().filter(|&c| c < ncols))
            .collect();
        let Some(order) = order else {
            return Ok(None);
        };
        let mut seen = vec![false; ncols];
        for &c in &order {
            seen[c] = true;
        }
        if order.len() != ncols || seen.contains(&false) {
            return Ok(None);
        }
        let columns: Option<Vec<KeyColumn>> = stored
            .iter()
            .zip(&order)
            .filter(|(s, _)| s.3)
            .map(|(s, &column)| {
                Some(KeyColumn {
                    column,
                    desc: s.1,
                    collation: Collation::named(&s.2)?,
                    fold: None,
                })
            })
            .collect();
        let Some(columns) = columns.filter(|c| !c.is_empty() && c.len() <= 256) else {
            return Ok(None);
        };
        let layout = Layout {
            columns: info
                .iter()
                .map(|(_, declared, _)| ColumnRead {
                    rowid: false,
                    real: is_real_affinity(declared),
                    missing_is_null: true,
                })
                .collect(),
        };
        Ok(Some(ClusterPlan {
            spec: IndexSpec {
                name: t.name.clone(),
                root: 0,
                columns,
                unique: false,
                only: None,
                clustered: true,
                without_rowid: false,
            },
            layout,
            order,
            indexes: Vec::new(),
        }))
    }

    /// The root page and record layout of a table whose pages can be
    /// written directly, read from the new database (the root is read
    /// again once every table's indexes are made, see `reread_roots`).
    fn bulk_target(&self, t: &TableSchema) -> Result<Option<(u32, Layout)>, SqliteError> {
        let doing = format!("reading the columns of table `{}`", t.name);
        let Some(layout) = record_layout(self.conn(), t).map_err(self.sql_err(doing.clone()))?
        else {
            return Ok(None);
        };
        Ok(self
            .root_page("table", &t.name)
            .map_err(self.sql_err(doing))?
            .map(|r| (r, layout)))
    }

    /// The root page of a table or index of the new database (`None` for
    /// page 1 or a number out of range, which no page writer may touch).
    fn root_page(&self, kind: &str, name: &str) -> rusqlite::Result<Option<u32>> {
        let root: i64 = self.conn().query_row(
            "SELECT rootpage FROM main.sqlite_schema WHERE type = ?1 AND name = ?2",
            [kind, name],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(root).ok().filter(|&r| r > 1))
    }

    /// The indexes to build with a table written page by page: its
    /// automatic indexes and its others, created now (on the empty table)
    /// so they have root pages. An index [`indexbuild`] does not cover is
    /// dropped again to be created at the end, or (automatic) rebuilt then.
    fn prepare_indexes(&mut self, t: &TableSchema) -> Result<Vec<IndexSpec>, SqliteError> {
        let doing = format!("reading the indexes of table `{}`", t.name);
        for e in &self.schema.entries {
            if e.kind == "index" && e.tbl_name.eq_ignore_ascii_case(&t.name) {
                // One that fails here is created (and its error reported)
                // at the end, as every index was.
                if let Some(sql) = &e.sql {
                    if self.conn().execute_batch(sql).is_ok() {
                        self.early.insert(e.name.clone());
                    }
                }
            }
        }
        // A WITHOUT ROWID table's primary key is the table itself.
        let list: Vec<(String, bool, bool)> = self
            .conn()
            .prepare(
                "SELECT name, \"unique\", partial FROM pragma_index_list(?1, 'main') \
                 WHERE origin <> 'pk' OR ?2 = 0",
            )
            .and_then(|mut st| {
                st.query_map(rusqlite::params![&t.name, t.without_rowid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(self.sql_err(doing.clone()))?;
        let mut specs = Vec::new();
        for (name, unique, partial) in list {
            // The key columns, then what SQLite appends: the rowid, or a
            // WITHOUT ROWID table's primary key columns.
            let stored: Vec<(IndexKey, bool)> = self
                .conn()
                .prepare(
                    "SELECT cid, \"desc\", coll, name, key FROM pragma_index_xinfo(?1, 'main') \
                     ORDER BY seqno",
                )
                .and_then(|mut st| {
                    st.query_map([&name], |r| {
                        Ok(((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?), r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(self.sql_err(doing.clone()))?;
            let (keys, tail): (Vec<_>, Vec<_>) = stored.into_iter().partition(|(_, key)| *key);
            let keys: Vec<IndexKey> = keys.into_iter().map(|(k, _)| k).collect();
            let tail: Vec<IndexKey> = tail.into_iter().map(|(k, _)| k).collect();
            let spec = self
                .key_spec(t, &name, &keys, partial)
                .and_then(|(mut columns, only)| {
                    if t.without_rowid {
                        // Keys are unique with the primary key appended; a
                        // UNIQUE one is left to SQLite, which checks it.
                        if unique {
                            return None;
                        }
                        columns.extend(self.key_spec(t, &name, &tail, false)?.0);
                    }
                    Some((columns, only))
                });
            if let Some((columns, only)) = spec {
                // Its root is read once every table's indexes are made
                // (`reread_roots`).
                specs.push(IndexSpec {
                    name,
                    root: 0,
                    columns,
                    unique,
                    only,
                    clustered: false,
                    without_rowid: t.without_rowid,
                });
                continue;
            }
            let early = self.early.remove(&name);
            tracing::debug!(
                index = %name,
                after = if early { "created" } else { "rebuilt" },
                "index not built with its rows (an expression, a condition or a collation it does not follow)"
            );
            if early {
                self.conn()
                    .execute_batch(&format!("DROP INDEX main.{}", ident(&name)))
                    .map_err(self.sql_err(doing.clone()))?;
            } else {
                self.reindex.push(name);
            }
        }
        Ok(specs)
    }

    /// The key columns of index `name` of `t` (from `pragma_index_xinfo`:
    /// column number, DESC, collation) and its condition, if the build
    /// covers them: each key a column or `lower()` / `upper()` of one,
    /// under BINARY, NOCASE or RTRIM, and a partial index's condition
    /// `column IS [NOT] NULL`. `None` leaves the index to SQLite.
    fn key_spec(
        &self,
        t: &TableSchema,
        name: &str,
        keys: &[IndexKey],
        partial: bool,
    ) -> Option<(Vec<KeyColumn>, Option<NullFilter>)> {
        // Automatic indexes have no statement; they are all columns.
        let parsed = self
            .schema
            .entries
            .iter()
            .find(|e| e.kind == "index" && e.name == name)
            .and_then(|e| e.sql.as_deref())
            .and_then(indexsql::parse);
        let find = |n: &str| t.columns.iter().position(|c| c.eq_ignore_ascii_case(n));
        let columns: Vec<KeyColumn> = keys
            .iter()
            .enumerate()
            .map(|(k, (cid, desc, coll, column))| {
                let (column, fold) = match *cid {
                    // An expression: SQLite gives no column for it.
                    -2 => match parsed.as_ref()?.keys.get(k)? {
                        Key::Fold(f, n) => (find(n)?, Some(*f)),
                        _ => return None,
                    },
                    // A column, by name: `cid` counts generated columns,
                    // which the rows do not hold (nor an index of one).
                    c if c >= 0 => (
                        t.columns.iter().position(|n| Some(n) == column.as_ref())?,
                        None,
                    ),
                    _ => return None,
                };
                Some(KeyColumn {
                    column,
                    desc: *desc,
                    collation: Collation::named(coll)?,
                    fold,
                })
            })
            .collect::<Option<_>>()?;
        if columns.is_empty() {
            return None;
        }
        let only = if partial {
            match parsed?.condition? {
                Where::Null { column, not_null } => Some(NullFilter {
                    column: find(&column)?,
                    not_null,
                }),
                Where::Other => return None,
            }
        } else {
            None
        };
        Some((columns, only))
    }

    /// Closes the connection (committing) so pages can be written
    /// directly; opens the file for that.
    fn open_pages(&mut self) -> Result<(), SqliteError> {
        if self.pages.is_none() {
            if let Some(conn) = self.conn.take() {
                conn.execute_batch("COMMIT")
                    .map_err(|source| SqliteError::Sql {
                        path: self.tmp.clone(),
                        doing: "committing before writing pages".into(),
                        source,
                    })?;
                conn.close().map_err(|(_, source)| SqliteError::Sql {
                    path: self.tmp.clone(),
                    doing: "closing before writing pages".into(),
                    source,
                })?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.tmp)
                .map_err(|source| SqliteError::Io {
                    path: self.tmp.clone(),
                    doing: "opening the new database to write pages".into(),
                    source,
                })?;
            let mut pages =
                PageFile::open(file).map_err(self.load_err("opening it to write pages"))?;
            pages.write_around_cache(&self.tmp);
            self.pages = Some(pages);
        }
        Ok(())
    }

    fn load_err(&self, doing: impl Into<String>) -> impl FnOnce(LoadError) -> SqliteError {
        let path = self.tmp.clone();
        let doing = doing.into();
        move |source| SqliteError::Load {
            path,
            doing,
            source,
        }
    }

    /// Completes the table being built, if any.
    fn finish_load(&mut self) -> Result<(), SqliteError> {
        if let Some((name, load)) = self.loading.take() {
            let pages = self.pages.as_mut().expect("pages are open while loading");
            let rows = load.rows();
            let done = load.finish(pages);
            let doing = format!("completing table `{name}` and its indexes");
            let indexes = done.map_err(self.load_err(doing))?;
            self.loaded.push((name, rows));
            for (index, left) in indexes {
                match left {
                    Some(why) => {
                        tracing::debug!(%index, why, "index left to SQLite: rebuilt after the tables");
                        self.reindex.push(index)
                    }
                    None => self.built.push(index),
                }
            }
        }
        if let Some((name, load)) = self.clustering.take() {
            self.open_pages()?;
            let pages = self.pages.as_mut().expect("opened above");
            let doing = format!("writing the b-tree of table `{name}`");
            match load.build.finish(pages).map_err(self.load_err(doing))? {
                None => {
                    self.loaded.push((name, load.rows));
                    for ix in load.indexes {
                        let index = ix.spec().name.clone();
                        let doing = format!("writing index `{index}`");
                        let pages = self.pages.as_mut().expect("opened above");
                        match ix.finish(pages).map_err(self.load_err(doing))? {
                            Some(why) => {
                                tracing::debug!(%index, why, "index left to SQLite: rebuilt after the tables");
                                self.reindex.push(index)
                            }
                            None => self.built.push(index),
                        }
                    }
                }
                Some(why) => {
                    // Cannot be, by the plan; the rows must not be lost.
                    return Err(SqliteError::BadSchema(format!(
                        "table `{name}`: its rows could not be written ({why})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Completes any table being built and reopens the connection.
    fn sql(&mut self) -> Result<(), SqliteError> {
        self.finish_load()?;
        if let Some(pages) = self.pages.take() {
            pages
                .close()
                .map_err(self.load_err("recording its size in its header"))?;
            self.connect("")?;
        }
        Ok(())
    }

    fn table_exists(&self, name: &str) -> Result<bool, SqliteError> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(self.sql_err("reading the new schema"))
    }

    /// Inserts a buffer of zero or more whole encoded rows of `table` (as
    /// named in the schema). Tables may come in any order and interleaved,
    /// one table's rows over several calls. Returns the rows inserted.
    pub fn insert_rows(&mut self, table: &str, encoded: &[u8]) -> Result<u64, SqliteError> {
        self.insert_pieces(table, &[encoded])
    }

    /// Inserts the rows of several buffers of whole encoded rows of `table`
    /// together, as one buffer holding them all: a restore hands over a
    /// read window's rows in pieces (one per thread that opened them), each
    /// a run of groups, so the window's rowids interleave across pieces.
    pub fn insert_pieces(&mut self, table: &str, pieces: &[&[u8]]) -> Result<u64, SqliteError> {
        // The rows' order is worked out in a vector kept from window to
        // window (a window of call records holds some 700 k rows).
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        let r = self.insert_spans(table, pieces, &mut spans);
        self.spans = spans;
        r
    }

    fn insert_spans(
        &mut self,
        table: &str,
        pieces: &[&[u8]],
        spans: &mut Vec<(i64, u64)>,
    ) -> Result<u64, SqliteError> {
        let target = self
            .targets
            .get(table)
            .ok_or_else(|| SqliteError::NoSuchTable {
                path: self.path.clone(),
                table: table.to_owned(),
            })?;
        let shape = |detail: String| SqliteError::RowShape {
            table: table.to_owned(),
            detail,
        };
        let record = |offset: usize, source| SqliteError::Record {
            table: table.to_owned(),
            offset,
            source,
        };
        if target.kind == TargetKind::Sequence {
            // A handful of rows; written by finish, after every insert that
            // could bump them.
            let mut n = 0;
            for encoded in pieces {
                let mut pos = 0;
                while pos < encoded.len() {
                    let (row, used) = decode_row(&encoded[pos..]).map_err(|e| record(pos, e))?;
                    if row.values.len() != target.ncols || row.rowid.is_some() != target.rowid {
                        return Err(shape(format!(
                            "{} values, rowid {}",
                            row.values.len(),
                            row.rowid.is_some()
                        )));
                    }
                    self.sequence.push(row);
                    pos += used;
                    n += 1;
                }
            }
            return Ok(n);
        }
        // Rows of a rowid table go in in rowid order: appending to the end
        // of the table's b-tree is several times cheaper than inserting
        // into its middle, and the pieces hold a whole read window, whose
        // rows the backup read in rowid order but stored by group. A row is
        // named by its piece and its offset in it, (piece << 40) | offset.
        for (i, encoded) in pieces.iter().enumerate() {
            let mut pos = 0;
            while pos < encoded.len() {
                let (rowid, used) = row_span(&encoded[pos..]).map_err(|e| record(pos, e))?;
                let key = rowid.filter(|_| target.rowid).unwrap_or(i64::MIN);
                spans.push((key, ((i as u64) << 40) | pos as u64));
                pos += used;
            }
        }
        let ordered = |spans: &[(i64, u64)]| spans.windows(2).all(|w| w[0].0 < w[1].0);
        if target.rowid && !ordered(spans) {
            sort_spans(spans, &mut self.slots);
        }
        // The table's pages are written directly while its rows come in
        // rowid order, each window after the last; otherwise its tree is
        // completed and the rest goes in through SQL.
        let clustering = matches!(&self.clustering, Some((t, _)) if t == table);
        if !target.rowid && (clustering || target.cluster.is_some()) {
            let ncols = target.ncols;
            if !clustering {
                self.finish_load()?;
                let target = self.targets.get_mut(table).expect("looked up above");
                let plan = target.cluster.take().expect("checked above");
                // The table and its indexes share one run budget.
                let dir = self.tmp_dir();
                let share = self.buffers.sort_run_bytes / (1 + plan.indexes.len());
                let build = IndexBuild::new(plan.spec, &dir).with_run_bytes(share);
                let indexes = plan
                    .indexes
                    .into_iter()
                    .map(|spec| IndexBuild::new(spec, &dir).with_run_bytes(share))
                    .collect();
                let load = ClusterLoad {
                    build,
                    layout: plan.layout,
                    order: plan.order,
                    indexes,
                    rows: 0,
                    head: Vec::new(),
                    body: Vec::new(),
                    record: Vec::new(),
                };
                self.clustering = Some((table.to_owned(), load));
            }
            let (_, load) = self.clustering.as_mut().expect("started above");
            let mut values = Vec::with_capacity(ncols);
            each_row(pieces, spans, &mut values, record, |rowid, values, pos| {
                if rowid.is_some() || values.len() != ncols {
                    return Err(shape(format!(
                        "row at byte {pos}: {} values, rowid {}; expected {ncols} values and no rowid",
                        values.len(),
                        rowid.is_some(),
                    )));
                }
                load.push(values).map_err(|source| SqliteError::Load {
                    path: self.tmp.clone(),
                    doing: format!("gathering row at byte {pos} of table `{table}`"),
                    source,
                })
            })?;
            return Ok(spans.len() as u64);
        }
        let loading = matches!(&self.loading, Some((t, _)) if t == table);
        let last = match &self.loading {
            Some((t, load)) if t == table => load.last(),
            _ => None,
        };
        let bulk = (loading || target.bulk.is_some())
            && target.rowid
            && ordered(spans)
            && spans.first().is_none_or(|f| last.is_none_or(|l| f.0 > l));
        let ncols = target.ncols;
        let mut values = Vec::with_capacity(ncols);
        if bulk {
            if !loading {
                self.finish_load()?;
                self.open_pages()?;
                let target = self.targets.get_mut(table).expect("looked up above");
                let (root, layout, specs) = target.bulk.take().expect("bulk checked above");
                let dir = self.tmp_dir();
                // The table's indexes share one run budget, so memory does
                // not grow with their number.
                let share = self.buffers.sort_run_bytes / specs.len().max(1);
                let builds = specs
                    .into_iter()
                    .map(|spec| IndexBuild::new(spec, &dir).with_run_bytes(share))
                    .collect();
                let load = TableLoad::new(root, layout).with_indexes(builds);
                self.loading = Some((table.to_owned(), load));
            }
            let pages = self.pages.as_mut().expect("opened above");
            let (_, load) = self.loading.as_mut().expect("started above");
            each_row(pieces, spans, &mut values, record, |rowid, values, pos| {
                let Some(rowid) = rowid.filter(|_| values.len() == ncols) else {
                    return Err(shape(format!(
                        "row at byte {pos}: {} values, rowid {}; expected {ncols} values and a rowid",
                        values.len(),
                        rowid.is_some(),
                    )));
                };
                load.push(pages, rowid, values)
                    .map_err(|source| SqliteError::Load {
                        path: self.tmp.clone(),
                        doing: format!("writing row at byte {pos} of table `{table}`"),
                        source,
                    })
            })?;
            return Ok(spans.len() as u64);
        }
        if let Some(t) = self.targets.get_mut(table) {
            t.bulk = None;
        }
        self.sql()?;
        let target = &self.targets[table];
        let conn = self.conn.as_ref().expect("connection is open until finish");
        let doing = format!("inserting rows into table `{table}`");
        let sql_err = |source| SqliteError::Sql {
            path: self.tmp.clone(),
            doing: doing.clone(),
            source,
        };
        let mut stmt = conn.prepare_cached(&target.insert).map_err(sql_err)?;
        each_row(pieces, spans, &mut values, record, |rowid, values, pos| {
            if values.len() != target.ncols || rowid.is_some() != target.rowid {
                return Err(shape(format!(
                    "row at byte {pos}: {} values, rowid {}; expected {} values, rowid {}",
                    values.len(),
                    rowid.is_some(),
                    target.ncols,
                    target.rowid
                )));
            }
            let mut idx = 1;
            if let Some(r) = rowid {
                stmt.raw_bind_parameter(idx, r).map_err(sql_err)?;
                idx += 1;
            }
            for v in values.iter() {
                stmt.raw_bind_parameter(idx, ToSqlOutput::Borrowed(*v))
                    .map_err(sql_err)?;
                idx += 1;
            }
            stmt.raw_execute().map_err(sql_err)?;
            Ok(())
        })?;
        Ok(spans.len() as u64)
    }

    /// The tables whose b-trees were written page by page so far, the one
    /// being built included, with the rows written so (the rest went in
    /// through SQL).
    pub fn written_by_pages(&self) -> impl Iterator<Item = (&str, u64)> {
        self.loaded
            .iter()
            .map(|(name, rows)| (name.as_str(), *rows))
            .chain(
                self.loading
                    .iter()
                    .map(|(name, l)| (name.as_str(), l.rows())),
            )
            .chain(
                self.clustering
                    .iter()
                    .map(|(name, l)| (name.as_str(), l.rows)),
            )
    }

    /// The directory of the new database, where index runs are spilled.
    fn tmp_dir(&self) -> PathBuf {
        match self.tmp.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// Completes the database: `sqlite_sequence` contents, indexes, views
    /// and triggers (after the data, so triggers do not fire), `user_version`
    /// and `application_id`, WAL mode if the source had it; then syncs the
    /// file and renames it over the target path (removing stale `-wal`,
    /// `-shm` and `-journal` files of that path first). Returns the indexes
    /// built from the rows of tables written page by page (SQLite built
    /// the others).
    pub fn finish(mut self) -> Result<Vec<String>, SqliteError> {
        self.sql()?;
        if let Some(t) = self
            .schema
            .tables
            .iter()
            .find(|t| t.internal && t.name.eq_ignore_ascii_case("sqlite_sequence"))
        {
            let insert = self.targets[&t.name].insert.clone();
            let conn = self.conn();
            conn.execute_batch("DELETE FROM main.sqlite_sequence")
                .map_err(self.sql_err("writing sqlite_sequence"))?;
            let mut stmt = conn
                .prepare(&insert)
                .map_err(self.sql_err("writing sqlite_sequence"))?;
            for row in &self.sequence {
                let mut idx = 1;
                if let Some(r) = row.rowid {
                    stmt.raw_bind_parameter(idx, r)
                        .map_err(self.sql_err("writing sqlite_sequence"))?;
                    idx += 1;
                }
                for v in &row.values {
                    stmt.raw_bind_parameter(idx, ToSqlOutput::Borrowed(v.as_value_ref()))
                        .map_err(self.sql_err("writing sqlite_sequence"))?;
                    idx += 1;
                }
                stmt.raw_execute()
                    .map_err(self.sql_err("writing sqlite_sequence"))?;
            }
        }
        // Index builds sort every key; one helper thread sorts the sorter's
        // batches while the main thread fills the next (the rows are all
        // in, so the other cores are idle by now), in batches as large as
        // the page cache, which shrinks for them.
        self.conn()
            .execute_batch(&format!(
                "PRAGMA threads = 2; PRAGMA cache_size = -{INDEX_BUILD_CACHE_KIB}"
            ))
            .map_err(self.sql_err("setting up the index builds"))?;
        // Indexes of tables built page by page that were not built with
        // them are built now from the table, as the indexes below are.
        for name in &self.reindex {
            self.conn()
                .execute_batch(&format!("REINDEX main.{}", ident(name)))
                .map_err(self.sql_err(format!("building index `{name}`")))?;
        }
        for e in self.schema.entries.iter().filter(|e| e.kind == "index") {
            if self.early.contains(&e.name) {
                continue; // created with its table, built with its rows
            }
            let sql = e.sql.as_deref().unwrap_or_default();
            self.conn()
                .execute_batch(sql)
                .map_err(self.sql_err(format!("creating index `{}`", e.name)))?;
        }
        // Views and triggers in creation order; one that depends on an object
        // created later is retried until no progress is made.
        let mut pending: Vec<&SchemaEntry> = self
            .schema
            .entries
            .iter()
            .filter(|e| e.kind == "view" || e.kind == "trigger")
            .collect();
        while !pending.is_empty() {
            let mut failed = Vec::new();
            let mut last_err = None;
            for e in &pending {
                let sql = e.sql.as_deref().unwrap_or_default();
                if let Err(err) = self.conn().execute_batch(sql) {
                    last_err = Some((e, err));
                    failed.push(*e);
                }
            }
            if failed.len() == pending.len() {
                let (e, err) = last_err.expect("a failure was recorded");
                return Err(self.sql_err(format!("creating {} `{}`", e.kind, e.name))(
                    err,
                ));
            }
            pending = failed;
        }
        let meta = format!(
            "PRAGMA main.user_version = {}; PRAGMA main.application_id = {}; COMMIT;",
            self.schema.user_version, self.schema.application_id
        );
        self.conn()
            .execute_batch(&meta)
            .map_err(self.sql_err("committing the restored database"))?;
        if self.schema.wal {
            self.conn()
                .query_row("PRAGMA main.journal_mode = WAL", [], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(self.sql_err("switching to WAL mode"))?;
        }
        let conn = self.conn.take().expect("connection is open until finish");
        conn.close().map_err(|(_, source)| SqliteError::Sql {
            path: self.tmp.clone(),
            doing: "closing the restored database".into(),
            source,
        })?;
        let io = |path: &Path, doing: &str| {
            let path = path.to_owned();
            let doing = doing.to_owned();
            move |source| SqliteError::Io {
                path,
                doing,
                source,
            }
        };
        std::fs::File::open(&self.tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&self.tmp, "syncing the restored database"))?;
        if !self.force && std::fs::symlink_metadata(&self.path).is_ok() {
            return Err(SqliteError::AlreadyExists {
                path: self.path.clone(),
            });
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut stale = self.path.clone().into_os_string();
            stale.push(suffix);
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(Path::new(&stale), "removing a stale journal file")(e))
                }
                _ => {}
            }
        }
        std::fs::rename(&self.tmp, &self.path)
            .map_err(io(&self.path, "moving the restored database into place"))?;
        self.done = true;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Best effort: makes the rename durable on filesystems that allow
            // syncing a directory.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(std::mem::take(&mut self.built))
    }
}

impl Drop for SqliteRestorer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        drop(self.conn.take());
        let _ = std::fs::remove_file(&self.tmp);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = self.tmp.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Encodes owned rows into one buffer (a convenience for callers that hold
/// rows, e.g. tests and tools).
pub fn encode_rows<'r>(rows: impl IntoIterator<Item = &'r Row>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        encode_owned_row(r, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_sort_by_placing_as_by_comparing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut slots = Vec::new();
        for case in 0..400 {
            let n = rng.gen_range(0..3000);
            let base: i64 = match case % 4 {
                0 => 1,
                1 => i64::MAX - 5000,
                2 => i64::MIN + 3,
                _ => rng.gen_range(-1_000_000..1_000_000),
            };
            // Dense, gappy, sparse, and with a rowid repeated.
            let spread = [1, 2, 5, 1000][case / 4 % 4];
            let mut rowids: Vec<i64> = (0..n as i64)
                .map(|k| base.saturating_add(k.saturating_mul(spread)))
                .collect();
            if case % 7 == 3 && n > 1 {
                let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
                rowids[a] = rowids[b];
            }
            let mut spans: Vec<(i64, u64)> = rowids
                .iter()
                .map(|&r| (r, rng.gen_range(0..1u64 << 50)))
                .collect();
            // Out of order, as a window's rows come by group.
            for i in (1..spans.len()).rev() {
                spans.swap(i, rng.gen_range(0..=i));
            }
            let mut want = spans.clone();
            want.sort_unstable();
            sort_spans(&mut spans, &mut slots);
            assert_eq!(spans, want, "case {case}");
        }
    }

    fn label(v: ValueRef<'_>, e: Every) -> Option<String> {
        bucket_label(v, e)
    }

    #[test]
    fn cached_buckets_and_subjects_match_a_fresh_computation_on_every_row() {
        let year = 365 * 86_400;
        let mut values: Vec<ValueRef<'static>> = Vec::new();
        // Integer times around day, month and year ends, repeated and out
        // of order, mixed with text, reals, NULLs and out-of-range seconds.
        for base in [0i64, 1_709_251_199, 1_711_929_600, 1_735_689_599, -1] {
            for d in [0, 1, -1, 86_399, 86_400, 31 * 86_400, year, 0, -86_400] {
                values.push(ValueRef::Integer(base + d));
            }
        }
        values.extend([
            ValueRef::Text(b"2026-03-14T23:30:00-01:00"),
            ValueRef::Integer(1_773_532_800),
            ValueRef::Text(b"2026-03-14T23:30:00-01:00"),
            ValueRef::Null,
            ValueRef::Integer(1_773_532_800),
            ValueRef::Real(1_773_532_799.5),
            ValueRef::Integer(i64::MAX),
            ValueRef::Integer(253_402_300_800),
            ValueRef::Integer(253_402_300_799),
            ValueRef::Blob(b"2026-03-14"),
            ValueRef::Text(b"not a time"),
            ValueRef::Integer(-62_167_219_201),
            ValueRef::Integer(-62_167_219_200),
        ]);
        // Texts in one span and across its ends: offsets that move the
        // UTC day or month, fractions of a second, times before 1970,
        // texts and integers of the same span interleaved.
        values.extend(
            [
                "2026-03-31T10:00:00Z",
                "2026-03-31T23:59:59Z",
                "2026-03-31T23:59:59.999",
                "2026-03-31T22:30:00-02:00",
                "2026-03-31T12:00:00Z",
                "2026-04-01T00:30:00+01:00",
                "2026-04-01 00:00:00",
                "2026-04-01",
                "2026-12-31T23:59:59Z",
                "2027-01-01T00:00:00+00:00",
                "1969-12-31T23:59:59.5Z",
                "1970-01-01T00:00:00Z",
                "1969-12-31",
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:00:00-02:00",
                "0000-01-01T00:00:00Z",
                "2026-02-30",
            ]
            .map(|t| ValueRef::Text(t.as_bytes())),
        );
        values.extend([
            ValueRef::Integer(1_774_915_200),
            ValueRef::Text(b"2026-03-31T10:00:00Z"),
            ValueRef::Real(1_774_915_199.25),
            ValueRef::Text(b"2026-03-31T10:00:00Z"),
            ValueRef::Integer(1_774_915_199),
            ValueRef::Real(-0.5),
            ValueRef::Text(b"1970-01-01T00:00:00Z"),
        ]);
        for every in [Every::Day, Every::Month, Every::Year] {
            let mut cache = BucketCache::default();
            let mut slot = None;
            let mut subject_cache = LastValue::default();
            let mut subject = None;
            for (i, v) in values.iter().enumerate() {
                cache.update(&mut slot, *v, every);
                assert_eq!(slot, bucket_label(*v, every), "row {i}: {v:?} {every:?}");
                if subject_cache.changed(*v) {
                    subject = subject_text(*v);
                }
                assert_eq!(subject, subject_text(*v), "row {i}: {v:?}");
            }
        }
    }

    #[test]
    fn bucket_formats() {
        let t = |s: &'static str| ValueRef::Text(s.as_bytes());
        assert_eq!(
            label(t("2026-03-14"), Every::Day).as_deref(),
            Some("2026-03-14")
        );
        assert_eq!(
            label(t("2026-03-14"), Every::Month).as_deref(),
            Some("2026-03")
        );
        assert_eq!(label(t("2026-03-14"), Every::Year).as_deref(), Some("2026"));
        assert_eq!(
            label(t("2026-03-14T10:00:00Z"), Every::Day).as_deref(),
            Some("2026-03-14")
        );
        assert_eq!(
            label(t("2026-03-14 10:00:00"), Every::Month).as_deref(),
            Some("2026-03")
        );
        assert_eq!(
            label(t("2026-03-14T10:00"), Every::Day).as_deref(),
            Some("2026-03-14")
        );
        assert_eq!(
            label(t("2026-03-14 23:59:59.999"), Every::Day).as_deref(),
            Some("2026-03-14")
        );
        // Offsets move the instant to UTC.
        assert_eq!(
            label(t("2026-03-01T00:30:00+01:00"), Every::Month).as_deref(),
            Some("2026-02")
        );
        assert_eq!(
            label(t("2026-12-31T23:30:00-0100"), Every::Year).as_deref(),
            Some("2027")
        );
        // Unix seconds, integer and real.
        assert_eq!(
            label(ValueRef::Integer(1_773_446_400), Every::Day).as_deref(),
            Some("2026-03-14")
        );
        assert_eq!(
            label(ValueRef::Integer(0), Every::Day).as_deref(),
            Some("1970-01-01")
        );
        assert_eq!(
            label(ValueRef::Integer(-1), Every::Day).as_deref(),
            Some("1969-12-31")
        );
        assert_eq!(
            label(ValueRef::Real(1_773_446_400.75), Every::Month).as_deref(),
            Some("2026-03")
        );
        assert_eq!(
            label(ValueRef::Real(-0.5), Every::Day).as_deref(),
            Some("1969-12-31")
        );
        // Not a time.
        for bad in [
            "",
            "2026",
            "2026-3-14",
            "2026-02-30",
            "2026-03-14X10:00",
            "2026-03-14T25:00",
            "2026-03-14T10:00:00+2",
            "2026-03-14T10:00:00.",
            "2026-03-14 ",
            "14/03/2026",
            "2026-03-14T10:00:00Zjunk",
        ] {
            assert_eq!(label(t(bad), Every::Day), None, "{bad:?}");
        }
        assert_eq!(label(ValueRef::Null, Every::Day), None);
        assert_eq!(label(ValueRef::Blob(b"2026-03-14"), Every::Day), None);
        assert_eq!(label(ValueRef::Real(f64::INFINITY), Every::Day), None);
        assert_eq!(label(ValueRef::Integer(i64::MAX), Every::Day), None);
        assert_eq!(label(ValueRef::Text(b"2026-03-14\xff"), Every::Day), None);
    }

    #[test]
    fn subject_forms() {
        assert_eq!(subject_text(ValueRef::Integer(-42)).as_deref(), Some("-42"));
        assert_eq!(subject_text(ValueRef::Text(b"c-1")).as_deref(), Some("c-1"));
        assert_eq!(
            subject_text(ValueRef::Text(b"\xff\x00")).as_deref(),
            Some("hex:ff00")
        );
        assert_eq!(
            subject_text(ValueRef::Blob(b"\x01\xab")).as_deref(),
            Some("hex:01ab")
        );
        assert_eq!(subject_text(ValueRef::Real(0.1)).as_deref(), Some("0.1"));
        assert_eq!(subject_text(ValueRef::Real(5.0)).as_deref(), Some("5.0"));
        assert_eq!(
            subject_text(ValueRef::Real(1e300)).as_deref(),
            Some("1e300")
        );
        assert_eq!(subject_text(ValueRef::Null), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident(r#"a "b""#), r#""a ""b""""#);
    }
}
