//! Record stores: where records live, read consistently and rebuilt on restore.
//!
//! * [`sqlite`]: a SQLite database read in record mode (rows grouped into shred
//!   groups) and rebuilt row by row.
//! * [`files`]: a directory tree read in file mode.
//! * [`postgres`]: a PostgreSQL database read in record mode on one exported
//!   snapshot and rebuilt (or written as a SQL script) from its rows.
//! * [`btree`]: a rowid table's b-tree leaves read page by page and digested,
//!   so a backup can skip stretches unchanged since its parent.
//! * [`pages`]: rows decoded straight from a rowid table's leaf pages (the
//!   backup's fast read path; a query reads what it cannot).
//! * [`bulkload`]: a rowid table's b-tree written page by page from rows in
//!   rowid order (the restore's fast write path).
//! * [`indexbuild`]: an index's b-tree built from the keys of the rows a
//!   bulk load wrote (sorted runs, merged).
//! * [`record`]: the canonical, versioned encoding of one row, shared by both
//!   directions; it is what gets chunked and encrypted.

pub mod btree;
pub mod bulkload;
pub mod compare;
pub mod files;
pub mod indexbuild;
pub mod indexsql;
pub mod pages;
pub mod postgres;
pub mod record;
pub mod sqlite;

use serde::{Deserialize, Serialize};

/// Where a row belongs: the shred group coordinates the store computed for it.
///
/// `subject` is the canonical text of the subject column's value (integers in
/// decimal, text as is (`hex:` + hex if not UTF-8), reals in shortest
/// round-trip decimal, blobs as `hex:` + lowercase hex); `None` when the table has no
/// subject column or the value is NULL. `bucket` is the period label (`2026-03`
/// for a month, `2026-03-14` for a day, `2026` for a year); `None` when the
/// table has no period or the value cannot be read as a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct GroupCoords {
    pub subject: Option<String>,
    pub bucket: Option<String>,
}

/// The length of a period bucket, from the policy's `period = { every = .. }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Every {
    Day,
    Month,
    Year,
}

impl Every {
    pub fn as_str(self) -> &'static str {
        match self {
            Every::Day => "day",
            Every::Month => "month",
            Every::Year => "year",
        }
    }
}

/// How one table is to be read: which columns make the group coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePlan {
    pub name: String,
    /// Column holding the subject (customer id), if any.
    pub subject: Option<String>,
    /// Column holding the time of the row and the bucket length, if any.
    pub period: Option<(String, Every)>,
}
