//! Retention: which snapshots the `[snapshots] keep_*` rules keep, and which
//! shred units are due for destruction (docs/RETENTION.md).
//!
//! Two independent questions, both answered without changing anything:
//!
//! * [`keep_decisions`]: given snapshot times, which snapshots the policy's
//!   `keep_last/hourly/daily/weekly/monthly/yearly` rules keep (restic-like,
//!   in UTC). `ops::prune` forgets the others and deletes the packs no kept
//!   snapshot needs.
//! * [`due_units`]: which shred units' retention has ended at a given clock
//!   time: period units (`<class>:<bucket>`), subjects (by pseudonym) and
//!   class-epoch units. It reads the live store through [`LiveStore`] and
//!   the vault's key names; it destroys nothing. The shredding side takes
//!   the list (a subject's id travels inside [`DueUnit::subject`], which is
//!   never printed, logged or serialized).
//!
//! Time is always a parameter (`now`), never read from the system clock
//! here, so results are reproducible.

pub mod apply;

use crate::crypto::subject_pseudonym;
use crate::policy::{DataClass, Policy, SnapshotsConfig, StoreKind, TableConfig};
use crate::store::sqlite::{subject_text, time_value};
use crate::store::Every;
use crate::vault::{KeyKind, Vault};
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Errors of the retention computations. They name the store and table,
/// never a value of a row.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("store {path}: {doing}: {source}; check that the database exists, is readable and has the policy's tables and columns")]
    Store {
        path: PathBuf,
        doing: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "retention of a {0} store is not built yet; only sqlite stores are read for due units"
    )]
    UnsupportedStore(&'static str),
    #[error("policy `{0}`: the store has no path; set [store] path")]
    NoPath(String),
    #[error("{0}")]
    Postgres(#[from] crate::store::postgres::PgError),
}

// ---------------------------------------------------------------------------
// Snapshot retention: keep_* rules
// ---------------------------------------------------------------------------

/// Why a snapshot is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepReason {
    /// The policy sets no `keep_*` rule: every snapshot is kept.
    NoRules,
    /// The newest snapshot is never forgotten.
    Latest,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// Its time could not be read: never forgotten on a guess.
    Undated,
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotDecision {
    pub id: String,
    pub time: String,
    pub keep: bool,
    /// Empty when the snapshot is to be forgotten.
    pub reasons: Vec<KeepReason>,
}

/// Whether the policy sets any `keep_*` rule.
pub fn has_rules(rules: &SnapshotsConfig) -> bool {
    [
        rules.keep_last,
        rules.keep_hourly,
        rules.keep_daily,
        rules.keep_weekly,
        rules.keep_monthly,
        rules.keep_yearly,
    ]
    .iter()
    .any(Option::is_some)
}

/// Applies the `keep_*` rules to snapshots given as `(id, RFC 3339 time)`.
/// Returns one decision per snapshot, newest first.
///
/// Semantics (restic's, in UTC): snapshots are walked newest first; each
/// rule `keep_X = n` keeps the newest snapshot of each of the `n` most recent
/// X-buckets (hour, day, ISO week, month, year) that hold a snapshot;
/// `keep_last = n` keeps the `n` newest. A snapshot is kept if any rule keeps
/// it. In addition the newest snapshot is always kept, snapshots whose time
/// cannot be read are always kept, and with no rule at all everything is
/// kept. Ties in time are broken by id (larger id counts as newer).
pub fn keep_decisions(
    rules: &SnapshotsConfig,
    snaps: &[(String, String)],
) -> Vec<SnapshotDecision> {
    let mut dated: Vec<(DateTime<Utc>, &String, &String)> = Vec::new();
    let mut out = Vec::new();
    for (id, time) in snaps {
        match DateTime::parse_from_rfc3339(time) {
            Ok(t) => dated.push((t.with_timezone(&Utc), id, time)),
            Err(_) => out.push(SnapshotDecision {
                id: id.clone(),
                time: time.clone(),
                keep: true,
                reasons: vec![KeepReason::Undated],
            }),
        }
    }
    dated.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(a.1)));
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); dated.len()];
    if !has_rules(rules) {
        reasons.iter_mut().for_each(|r| r.push(KeepReason::NoRules));
    } else {
        type Bucket = fn(usize, &DateTime<Utc>) -> (i64, i64, i64, i64);
        let rule_list: [(Option<u32>, KeepReason, Bucket); 6] = [
            (rules.keep_last, KeepReason::Last, |i, _| {
                (i as i64, 0, 0, 0)
            }),
            (rules.keep_hourly, KeepReason::Hourly, |_, t| {
                (t.year() as i64, t.ordinal() as i64, t.hour() as i64, 0)
            }),
            (rules.keep_daily, KeepReason::Daily, |_, t| {
                (t.year() as i64, t.ordinal() as i64, 0, 0)
            }),
            (rules.keep_weekly, KeepReason::Weekly, |_, t| {
                let w = t.iso_week();
                (w.year() as i64, w.week() as i64, 0, 0)
            }),
            (rules.keep_monthly, KeepReason::Monthly, |_, t| {
                (t.year() as i64, t.month() as i64, 0, 0)
            }),
            (rules.keep_yearly, KeepReason::Yearly, |_, t| {
                (t.year() as i64, 0, 0, 0)
            }),
        ];
        for (n, reason, bucket) in rule_list {
            let Some(mut left) = n else { continue };
            let mut last = None;
            for (i, (t, _, _)) in dated.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let b = bucket(i, t);
                if last != Some(b) {
                    last = Some(b);
                    left -= 1;
                    reasons[i].push(reason);
                }
            }
        }
        if let Some(r) = reasons.first_mut() {
            if r.is_empty() {
                r.push(KeepReason::Latest);
            }
        }
    }
    let mut decided: Vec<SnapshotDecision> = dated
        .iter()
        .zip(reasons)
        .map(|((_, id, time), reasons)| SnapshotDecision {
            id: (*id).clone(),
            time: (*time).clone(),
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect();
    decided.append(&mut out);
    decided
}

// ---------------------------------------------------------------------------
// Due units
// ---------------------------------------------------------------------------

/// The kind of a shred unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// A (class, period bucket) key: `consumption:2026-03`.
    Period,
    /// A subject (customer) key, named by its pseudonym.
    Subject,
    /// A (class, epoch) key: `identity:2026-Q1`.
    Epoch,
}

impl UnitKind {
    /// The vault's kind of this unit's key.
    pub fn key_kind(self) -> KeyKind {
        match self {
            UnitKind::Period => KeyKind::Period,
            UnitKind::Subject => KeyKind::Subject,
            UnitKind::Epoch => KeyKind::Epoch,
        }
    }
}

/// A subject id in clear (canonical text, FORMAT.md section 9). It cannot be
/// printed with `Debug`/`Display` or serialized: only [`expose`](Self::expose)
/// gives the text, for the shredding code that needs it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubjectId(String);

impl SubjectId {
    /// The subject's canonical text. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectId(<redacted>)")
    }
}

/// One shred unit whose retention has ended.
#[derive(Clone, Debug, Serialize)]
pub struct DueUnit {
    pub kind: UnitKind,
    /// The data class of the unit (for a subject: the class of the table
    /// whose retention ends last).
    pub class: DataClass,
    /// The period or epoch label (`2026-03`, `2026-Q1`), or the subject's
    /// pseudonym.
    pub label: String,
    /// The key's name in the vault: `<class>:<label>` or the pseudonym.
    pub key_name: String,
    /// When the retention ended.
    pub due_since: DateTime<Utc>,
    /// The tables whose retention decided it (empty for epochs of a file
    /// store).
    pub tables: Vec<String>,
    /// Whether the vault still holds a key of that name (false: already
    /// destroyed, or never backed up).
    pub key_present: bool,
    /// The subject id, for the shredding code; never serialized.
    #[serde(skip)]
    pub subject: Option<SubjectId>,
}

/// What a subject's rows of one table say about its retention clock.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectTimes {
    /// Canonical subject text.
    pub subject: String,
    /// The latest readable time of the `after` column among its rows.
    pub latest: Option<DateTime<Utc>>,
    /// Some row has no readable time (e.g. `closed_at` NULL: still open).
    pub open: bool,
}

/// Read access to the live record store for retention. Implemented for
/// SQLite by [`SqliteLive`]; a PostgreSQL store implements the same two
/// queries.
pub trait LiveStore {
    /// Every distinct period label of `column` in `table` for buckets of
    /// `every` (rows whose value is not a time give none).
    fn period_labels(
        &self,
        table: &str,
        column: &str,
        every: Every,
    ) -> Result<BTreeSet<String>, RetentionError>;

    /// For each subject of `table` (non-NULL `subject` column): the latest
    /// time of `after` and whether some row has none. Calls `each` once per
    /// subject, in any order.
    fn subject_times(
        &self,
        table: &str,
        subject: &str,
        after: &str,
        each: &mut dyn FnMut(SubjectTimes),
    ) -> Result<(), RetentionError>;
}

/// A SQLite store opened read-only for retention queries.
pub struct SqliteLive {
    conn: rusqlite::Connection,
    path: PathBuf,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqliteLive {
    /// Opens the database read-only. Temporary tables (GROUP BY) are kept in
    /// memory, so no customer id is spilled to a temporary file.
    pub fn open(path: &Path) -> Result<SqliteLive, RetentionError> {
        use rusqlite::functions::FunctionFlags;
        use rusqlite::OpenFlags;
        let err = |doing: &str| {
            let path = path.to_path_buf();
            let doing = doing.to_string();
            move |source| RetentionError::Store {
                path,
                doing,
                source,
            }
        };
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("opening"))?;
        conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA query_only = ON;")
            .map_err(err("setting pragmas"))?;
        let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
        conn.create_scalar_function("custos_ret_subject", 1, flags, |ctx| {
            Ok(subject_text(ctx.get_raw(0)))
        })
        .map_err(err("registering functions"))?;
        conn.create_scalar_function("custos_ret_time", 1, flags, |ctx| {
            Ok(time_value(ctx.get_raw(0)).map(|t| t.and_utc().timestamp()))
        })
        .map_err(err("registering functions"))?;
        conn.create_scalar_function("custos_ret_bucket", 2, flags, |ctx| {
            let every = match ctx.get_raw(1).as_str().unwrap_or("") {
                "day" => Every::Day,
                "month" => Every::Month,
                _ => Every::Year,
            };
            Ok(crate::store::sqlite::bucket_label(ctx.get_raw(0), every))
        })
        .map_err(err("registering functions"))?;
        Ok(SqliteLive {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, doing: String) -> impl FnOnce(rusqlite::Error) -> RetentionError + '_ {
        move |source| RetentionError::Store {
            path: self.path.clone(),
            doing,
            source,
        }
    }
}

impl LiveStore for SqliteLive {
    fn period_labels(
        &self,
        table: &str,
        column: &str,
        every: Every,
    ) -> Result<BTreeSet<String>, RetentionError> {
        let sql = format!(
            "SELECT DISTINCT custos_ret_bucket({}, '{}') FROM {}",
            ident(column),
            every.as_str(),
            ident(table)
        );
        let doing = format!("reading the periods of table `{table}`");
        let mut st = self.conn.prepare(&sql).map_err(self.err(doing.clone()))?;
        let rows = st
            .query_map([], |r| r.get::<_, Option<String>>(0))
            .map_err(self.err(doing.clone()))?;
        let mut out = BTreeSet::new();
        for r in rows {
            if let Some(l) = r.map_err(self.err(doing.clone()))? {
                out.insert(l);
            }
        }
        Ok(out)
    }

    fn subject_times(
        &self,
        table: &str,
        subject: &str,
        after: &str,
        each: &mut dyn FnMut(SubjectTimes),
    ) -> Result<(), RetentionError> {
        let sql = format!(
            "SELECT custos_ret_subject({s}), max(custos_ret_time({a})), \
             sum(custos_ret_time({a}) IS NULL) FROM {t} WHERE {s} IS NOT NULL GROUP BY 1",
            s = ident(subject),
            a = ident(after),
            t = ident(table)
        );
        let doing = format!("reading the retention times of table `{table}`");
        let mut st = self.conn.prepare(&sql).map_err(self.err(doing.clone()))?;
        let mut rows = st.query([]).map_err(self.err(doing.clone()))?;
        while let Some(r) = rows.next().map_err(self.err(doing.clone()))? {
            let subject: Option<String> = r.get(0).map_err(self.err(doing.clone()))?;
            let latest: Option<i64> = r.get(1).map_err(self.err(doing.clone()))?;
            let open: i64 = r.get(2).map_err(self.err(doing.clone()))?;
            let Some(subject) = subject else { continue };
            each(SubjectTimes {
                subject,
                latest: latest.and_then(|s| DateTime::from_timestamp(s, 0)),
                open: open > 0,
            });
        }
        Ok(())
    }
}

/// Opens the policy's live store for retention queries.
pub fn open_live_store(policy: &Policy) -> Result<Box<dyn LiveStore>, RetentionError> {
    match policy.store.kind {
        StoreKind::Sqlite => {
            let path = policy
                .store
                .path
                .as_ref()
                .ok_or_else(|| RetentionError::NoPath(policy.name.clone()))?;
            Ok(Box::new(SqliteLive::open(path)?))
        }
        StoreKind::Postgres => Ok(Box::new(PgLive::open(
            &crate::store::postgres::PgConn::from_store(&policy.store)?,
        )?)),
        StoreKind::Files => Ok(Box::new(NoRecords)),
    }
}

/// A PostgreSQL store opened for retention queries. [`LiveStore`] is a
/// blocking interface; each query runs on a runtime of its own on a helper
/// thread, so it may be called from inside or outside a tokio runtime.
/// Aggregation runs on the server where order is time order (date,
/// timestamp, timestamptz, integer and float columns: `min`/`max` per
/// subject, distinct days per period); text columns are read value by value
/// and parsed as ISO 8601 here, as the SQLite store does. Values are read
/// by their text output and canonicalised with the backup's own rules, so
/// subjects and labels match the shred units the backup wrote.
pub struct PgLive {
    rt: Option<tokio::runtime::Runtime>,
    conn: crate::store::postgres::PgConn,
    client: tokio_postgres::Client,
    tables: Vec<crate::store::postgres::PgTable>,
}

impl PgLive {
    /// Connects and reads the catalog (tables and column types).
    pub fn open(conn: &crate::store::postgres::PgConn) -> Result<PgLive, RetentionError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                crate::store::postgres::PgError::Tool(format!("cannot start a runtime: {e}"))
            })?;
        let conn = conn.clone();
        let (client, tables) = std::thread::scope(|s| {
            s.spawn(|| {
                rt.block_on(async {
                    let client = conn.connect().await?;
                    let (tables, _) = crate::store::postgres::read_catalog(&client, &conn).await?;
                    Ok::<_, crate::store::postgres::PgError>((client, tables))
                })
            })
            .join()
            .expect("the retention query thread does not panic")
        })?;
        Ok(PgLive {
            rt: Some(rt),
            conn,
            client,
            tables,
        })
    }

    fn block<T: Send>(
        &self,
        f: impl std::future::Future<Output = Result<T, RetentionError>> + Send,
    ) -> Result<T, RetentionError> {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the store");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .expect("the retention query thread does not panic")
        })
    }

    /// The table and the base type of `column`, or an error naming them.
    fn column(&self, table: &str, column: &str) -> Result<(String, String), RetentionError> {
        use crate::store::postgres::PgError;
        let t = self
            .tables
            .iter()
            .find(|t| t.matches(table))
            .ok_or_else(|| PgError::MissingTable {
                server: self.conn.server(),
                table: table.to_string(),
                schemas: if self.conn.schemas.is_empty() {
                    "all user schemas".into()
                } else {
                    self.conn.schemas.join(", ")
                },
            })?;
        let c =
            t.columns
                .iter()
                .find(|c| c.name == column)
                .ok_or_else(|| PgError::MissingColumn {
                    server: self.conn.server(),
                    table: t.display_name(),
                    column: column.to_string(),
                    role: "retention",
                })?;
        Ok((t.qualified(), c.base_type.clone()))
    }
}

impl Drop for PgLive {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Base types whose order is time order (for `min`/`max` on the server).
fn ordered_as_time(base_type: &str) -> bool {
    matches!(
        base_type,
        "date" | "timestamp" | "timestamptz" | "int2" | "int4" | "int8" | "float4" | "float8"
    )
}

impl LiveStore for PgLive {
    fn period_labels(
        &self,
        table: &str,
        column: &str,
        every: Every,
    ) -> Result<BTreeSet<String>, RetentionError> {
        let (qt, base) = self.column(table, column)?;
        let col = ident(column);
        let sql = if matches!(base.as_str(), "date" | "timestamp" | "timestamptz") {
            // Whole days (UTC: the session's time zone) give every bucket.
            format!("SELECT DISTINCT pg_catalog.date_trunc('day', {col})::text FROM {qt} WHERE {col} IS NOT NULL")
        } else {
            format!("SELECT DISTINCT {col}::text FROM {qt} WHERE {col} IS NOT NULL")
        };
        let what = format!("reading the periods of table `{table}`");
        self.block(async {
            let rows = self
                .client
                .query(&sql, &[])
                .await
                .map_err(|e| self.conn.data_err(&what, &e))?;
            let mut out = BTreeSet::new();
            for r in rows {
                let v: &str = r.get(0);
                if let Some(l) = crate::store::postgres::period_label_of(v.as_bytes(), &base, every)
                {
                    out.insert(l);
                }
            }
            Ok(out)
        })
    }

    fn subject_times(
        &self,
        table: &str,
        subject: &str,
        after: &str,
        each: &mut dyn FnMut(SubjectTimes),
    ) -> Result<(), RetentionError> {
        use crate::store::postgres::{subject_of, time_of};
        let (qt, sbase) = self.column(table, subject)?;
        let (_, abase) = self.column(table, after)?;
        let (s, a) = (ident(subject), ident(after));
        let what = format!("reading the retention times of table `{table}`");
        let mut found: Vec<SubjectTimes> = Vec::new();
        if ordered_as_time(&abase) {
            // A subject is open if some row has no time or one outside the
            // readable range; readable times form one interval, so the
            // ends (min, max) decide.
            let sql = format!(
                "SELECT {s}::text, min({a})::text, max({a})::text, bool_or({a} IS NULL)                  FROM {qt} WHERE {s} IS NOT NULL GROUP BY {s}"
            );
            let rows = self.block(async {
                self.client
                    .query(&sql, &[])
                    .await
                    .map_err(|e| self.conn.data_err(&what, &e).into())
            })?;
            for r in rows {
                let Some(subject) = subject_of(r.get::<_, &str>(0).as_bytes(), &sbase) else {
                    continue;
                };
                let t = |i: usize| {
                    r.get::<_, Option<&str>>(i)
                        .and_then(|v| time_of(v.as_bytes(), &abase))
                };
                let (min, max) = (t(1), t(2));
                let null: Option<bool> = r.get(3);
                found.push(SubjectTimes {
                    subject,
                    latest: max.map(|m| m.and_utc()),
                    open: null.unwrap_or(true) || min.is_none() || max.is_none(),
                });
            }
        } else {
            let sql = format!("SELECT {s}::text, {a}::text FROM {qt} WHERE {s} IS NOT NULL");
            let rows = self.block(async {
                self.client
                    .query(&sql, &[])
                    .await
                    .map_err(|e| self.conn.data_err(&what, &e).into())
            })?;
            let mut per: BTreeMap<String, (Option<DateTime<Utc>>, bool)> = BTreeMap::new();
            for r in rows {
                let Some(subject) = subject_of(r.get::<_, &str>(0).as_bytes(), &sbase) else {
                    continue;
                };
                let t = r
                    .get::<_, Option<&str>>(1)
                    .and_then(|v| time_of(v.as_bytes(), &abase))
                    .map(|t| t.and_utc());
                let e = per.entry(subject).or_insert((None, false));
                match t {
                    Some(t) => e.0 = Some(e.0.map_or(t, |c| c.max(t))),
                    None => e.1 = true,
                }
            }
            for (subject, (latest, open)) in per {
                found.push(SubjectTimes {
                    subject,
                    latest,
                    open,
                });
            }
        }
        for st in found {
            each(st);
        }
        Ok(())
    }
}

/// The live store of a file-mode policy: no tables, so no periods or
/// subjects (its epoch units are still computed from the vault).
pub struct NoRecords;

impl LiveStore for NoRecords {
    fn period_labels(
        &self,
        _: &str,
        _: &str,
        _: Every,
    ) -> Result<BTreeSet<String>, RetentionError> {
        Ok(BTreeSet::new())
    }
    fn subject_times(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &mut dyn FnMut(SubjectTimes),
    ) -> Result<(), RetentionError> {
        Ok(())
    }
}

fn ymd(y: i32, m: u32, d: u32) -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(y, m, d)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

fn next_month(y: i32, m: u32) -> Option<DateTime<Utc>> {
    if m == 12 {
        ymd(y + 1, 1, 1)
    } else {
        ymd(y, m + 1, 1)
    }
}

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The end (exclusive, UTC) of a period bucket label: `2026-03-14` (day) ends
/// 2026-03-15T00:00Z, `2026-03` (month) 2026-04-01, `2026` (year)
/// 2027-01-01. `None` if the label is not of that shape.
pub fn period_end(label: &str, every: Every) -> Option<DateTime<Utc>> {
    let parts: Vec<&str> = label.split('-').collect();
    match (every, parts.as_slice()) {
        (Every::Day, [y, m, d]) => {
            let day = ymd(num(y, 4)?, num(m, 2)?, num(d, 2)?)?;
            day.checked_add_signed(chrono::TimeDelta::days(1))
        }
        (Every::Month, [y, m]) => {
            let (y, m): (i32, u32) = (num(y, 4)?, num(m, 2)?);
            ymd(y, m, 1)?;
            next_month(y, m)
        }
        (Every::Year, [y]) => ymd(num::<i32>(y, 4)? + 1, 1, 1),
        _ => None,
    }
}

/// The end (exclusive, UTC) of an epoch label: `2026-Q1` ends 2026-04-01,
/// `2026-03` 2026-04-01, `2026` 2027-01-01.
pub fn epoch_end(label: &str) -> Option<DateTime<Utc>> {
    match label.split_once("-Q") {
        Some((y, q)) => {
            let (y, q): (i32, u32) = (num(y, 4)?, num(q, 1)?);
            if !(1..=4).contains(&q) {
                return None;
            }
            next_month(y, q * 3)
        }
        None => period_end(label, Every::Month).or_else(|| period_end(label, Every::Year)),
    }
}

fn plus(t: DateTime<Utc>, d: std::time::Duration) -> Option<DateTime<Utc>> {
    t.checked_add_signed(chrono::TimeDelta::from_std(d).ok()?)
}

/// Whether a table's retention clock is its period column: then its rows'
/// retention ends per period unit.
fn period_retained(t: &TableConfig) -> Option<std::time::Duration> {
    match (&t.period, &t.retain) {
        (Some(p), Some(r)) if p.column == r.after => Some(r.for_),
        _ => None,
    }
}

/// Whether a table's retention is per subject: a subject column and a
/// retention clock that is not the period column.
fn subject_retained(t: &TableConfig) -> bool {
    t.subject.is_some() && t.retain.is_some() && period_retained(t).is_none()
}

/// The retention of a class's epoch units: the longest `retain.for` among
/// the policy's tables of that class (none: epochs of that class are kept).
pub fn epoch_retention(policy: &Policy, class: DataClass) -> Option<std::time::Duration> {
    policy
        .store
        .tables
        .iter()
        .filter(|t| t.class == class)
        .filter_map(|t| t.retain.as_ref().map(|r| r.for_))
        .max()
}

/// The shred units whose retention has ended at `now`, sorted by kind,
/// class and label. Read-only.
///
/// * **Periods**: the key `<class>:<label>` is shared by every table of that
///   class with a period of that bucket length, so it is due when every one
///   of them has a retention on its period column and the latest of
///   `end of bucket + retain.for` has passed. Labels come from the live
///   store and from the vault's period keys (periods no longer in the store
///   but still in snapshots).
/// * **Subjects**: tables with a subject whose `retain.after` is not their
///   period column. A subject is due when, in every such table where it has
///   rows, each row has a readable `after` time and the latest one plus
///   `retain.for` has passed; `due_since` is the latest of those ends.
///   Memory grows with the number of subjects of those tables.
/// * **Epochs**: every class-epoch key in the vault whose epoch end plus
///   [`epoch_retention`] of its class has passed.
pub fn due_units(
    policy: &Policy,
    store: &dyn LiveStore,
    vault: &Vault,
    now: DateTime<Utc>,
) -> Result<Vec<DueUnit>, RetentionError> {
    let mut out = Vec::new();
    let vault_names = |kind: KeyKind| -> BTreeSet<String> {
        vault
            .entries()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.name)
            .collect()
    };
    let period_keys = vault_names(KeyKind::Period);
    let tables = &policy.store.tables;

    // Periods.
    for class in DataClass::ALL {
        for every in [Every::Day, Every::Month, Every::Year] {
            let group: Vec<&TableConfig> = tables
                .iter()
                .filter(|t| t.class == class && t.period.as_ref().is_some_and(|p| p.every == every))
                .collect();
            if group.is_empty() {
                continue;
            }
            let Some(fors) = group
                .iter()
                .map(|t| period_retained(t))
                .collect::<Option<Vec<_>>>()
            else {
                continue; // some table keeps these periods without limit
            };
            let keep = fors.into_iter().max().expect("group is not empty");
            let mut labels = BTreeSet::new();
            for t in &group {
                let p = t.period.as_ref().expect("filtered on period");
                labels.extend(store.period_labels(&t.name, &p.column, every)?);
            }
            let prefix = format!("{class}:");
            labels.extend(
                period_keys
                    .iter()
                    .filter_map(|n| n.strip_prefix(&prefix))
                    .filter(|l| period_end(l, every).is_some())
                    .map(str::to_string),
            );
            for label in labels {
                let Some(due) = period_end(&label, every).and_then(|e| plus(e, keep)) else {
                    continue;
                };
                if due <= now {
                    let key_name = format!("{class}:{label}");
                    out.push(DueUnit {
                        kind: UnitKind::Period,
                        class,
                        key_present: vault.lookup(KeyKind::Period, &key_name).is_some(),
                        label,
                        key_name,
                        due_since: due,
                        tables: group.iter().map(|t| t.name.clone()).collect(),
                        subject: None,
                    });
                }
            }
        }
    }

    // Subjects.
    struct State {
        due: Option<DateTime<Utc>>,
        blocked: bool,
        class: DataClass,
        tables: Vec<String>,
    }
    let mut subjects: BTreeMap<String, State> = BTreeMap::new();
    for t in tables.iter().filter(|t| subject_retained(t)) {
        let retain = t.retain.as_ref().expect("filtered on retain");
        let subject_col = t.subject.as_ref().expect("filtered on subject");
        store.subject_times(&t.name, subject_col, &retain.after, &mut |st| {
            let due = st.latest.and_then(|l| plus(l, retain.for_));
            let s = subjects.entry(st.subject).or_insert(State {
                due: None,
                blocked: false,
                class: t.class,
                tables: Vec::new(),
            });
            s.tables.push(t.name.clone());
            match due {
                Some(d) if !st.open => {
                    if s.due.is_none_or(|cur| d > cur) {
                        s.due = Some(d);
                        s.class = t.class;
                    }
                }
                _ => s.blocked = true,
            }
        })?;
    }
    for (subject, s) in subjects {
        let Some(due) = s.due else { continue };
        if s.blocked || due > now {
            continue;
        }
        let pseudonym = subject_pseudonym(vault.pseudonym_key(), &subject);
        out.push(DueUnit {
            kind: UnitKind::Subject,
            class: s.class,
            key_present: vault.lookup(KeyKind::Subject, &pseudonym).is_some(),
            label: pseudonym.clone(),
            key_name: pseudonym,
            due_since: due,
            tables: s.tables,
            subject: Some(SubjectId(subject)),
        });
    }

    // Epochs.
    for name in vault_names(KeyKind::Epoch) {
        let Some((class, label)) = name.split_once(':') else {
            continue;
        };
        let Ok(class) = class.parse::<DataClass>() else {
            continue;
        };
        let Some(keep) = epoch_retention(policy, class) else {
            continue;
        };
        let Some(due) = epoch_end(label).and_then(|e| plus(e, keep)) else {
            continue;
        };
        if due <= now {
            out.push(DueUnit {
                kind: UnitKind::Epoch,
                class,
                label: label.to_string(),
                key_name: name.clone(),
                due_since: due,
                tables: tables
                    .iter()
                    .filter(|t| t.class == class && t.retain.is_some())
                    .map(|t| t.name.clone())
                    .collect(),
                key_present: true,
                subject: None,
            });
        }
    }
    out.sort_by(|a, b| (a.kind, a.class, &a.label).cmp(&(b.kind, b.class, &b.label)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(
        last: Option<u32>,
        hourly: Option<u32>,
        daily: Option<u32>,
        weekly: Option<u32>,
        monthly: Option<u32>,
        yearly: Option<u32>,
    ) -> SnapshotsConfig {
        SnapshotsConfig {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_yearly: yearly,
        }
    }

    /// Snapshots named by their time: `2026-03-14T10:00`.
    fn snaps(times: &[&str]) -> Vec<(String, String)> {
        times
            .iter()
            .map(|t| (t.to_string(), format!("{t}:00Z")))
            .collect()
    }

    fn kept(r: &SnapshotsConfig, times: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = keep_decisions(r, &snaps(times))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    /// Two snapshots a day at 01:00 and 13:00, from 2025-12-20 to 2026-03-10.
    fn twice_daily() -> Vec<String> {
        let mut v = Vec::new();
        let mut d = NaiveDate::from_ymd_opt(2025, 12, 20).unwrap();
        while d <= NaiveDate::from_ymd_opt(2026, 3, 10).unwrap() {
            v.push(format!("{d}T01:00"));
            v.push(format!("{d}T13:00"));
            d = d.succ_opt().unwrap();
        }
        v
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let t = [
            "2026-01-01T10:00",
            "2026-01-02T10:00",
            "2026-01-03T10:00",
            "2026-01-04T10:00",
        ];
        assert_eq!(
            kept(&rules(Some(2), None, None, None, None, None), &t),
            ["2026-01-03T10:00", "2026-01-04T10:00"]
        );
    }

    #[test]
    fn keep_daily_keeps_the_last_snapshot_of_each_recent_day() {
        let all = twice_daily();
        assert_eq!(
            kept(&rules(None, None, Some(3), None, None, None), &strs(&all)),
            ["2026-03-08T13:00", "2026-03-09T13:00", "2026-03-10T13:00"]
        );
    }

    #[test]
    fn keep_hourly_counts_hours_that_hold_a_snapshot() {
        let t = [
            "2026-01-01T10:05",
            "2026-01-01T10:40",
            "2026-01-01T11:10",
            "2026-01-01T13:00",
            "2026-01-01T13:30",
        ];
        assert_eq!(
            kept(&rules(None, Some(2), None, None, None, None), &t),
            ["2026-01-01T11:10", "2026-01-01T13:30"]
        );
    }

    #[test]
    fn keep_weekly_uses_iso_weeks() {
        // 2026-03-08 is a Sunday (week 10), 2026-03-09 a Monday (week 11).
        let all = twice_daily();
        assert_eq!(
            kept(&rules(None, None, None, Some(3), None, None), &strs(&all)),
            ["2026-03-01T13:00", "2026-03-08T13:00", "2026-03-10T13:00"]
        );
    }

    #[test]
    fn keep_monthly_and_yearly_combine_as_a_union() {
        let all = twice_daily();
        assert_eq!(
            kept(
                &rules(None, None, None, None, Some(2), Some(2)),
                &strs(&all)
            ),
            ["2025-12-31T13:00", "2026-02-28T13:00", "2026-03-10T13:00"]
        );
        assert_eq!(
            kept(
                &rules(Some(1), None, Some(2), None, Some(4), None),
                &strs(&all)
            ),
            [
                "2025-12-31T13:00",
                "2026-01-31T13:00",
                "2026-02-28T13:00",
                "2026-03-09T13:00",
                "2026-03-10T13:00"
            ]
        );
    }

    #[test]
    fn reasons_are_recorded_and_the_latest_is_never_forgotten() {
        let all = twice_daily();
        let d = keep_decisions(
            &rules(None, None, None, None, Some(0), None),
            &snaps(&strs(&all)),
        );
        assert_eq!(d.len(), all.len());
        assert_eq!(d[0].id, "2026-03-10T13:00");
        assert_eq!(d[0].reasons, [KeepReason::Latest]);
        assert_eq!(d.iter().filter(|x| x.keep).count(), 1);
        let d = keep_decisions(
            &rules(Some(1), None, Some(1), None, None, None),
            &snaps(&strs(&all)),
        );
        assert_eq!(d[0].reasons, [KeepReason::Last, KeepReason::Daily]);
        assert!(!d[1].keep && d[1].reasons.is_empty());
    }

    #[test]
    fn no_rules_keep_everything_and_undated_snapshots_are_kept() {
        let all = twice_daily();
        let d = keep_decisions(&SnapshotsConfig::default(), &snaps(&strs(&all)));
        assert!(d
            .iter()
            .all(|x| x.keep && x.reasons == [KeepReason::NoRules]));
        let mut s = snaps(&["2026-01-01T10:00", "2026-01-02T10:00"]);
        s.push(("bad".into(), "yesterday".into()));
        let d = keep_decisions(&rules(Some(1), None, None, None, None, None), &s);
        let k: Vec<(&str, bool)> = d.iter().map(|x| (x.id.as_str(), x.keep)).collect();
        assert_eq!(
            k,
            [
                ("2026-01-02T10:00", true),
                ("2026-01-01T10:00", false),
                ("bad", true)
            ]
        );
    }

    #[test]
    fn ends_of_periods_and_epochs() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            period_end("2026-03", Every::Month),
            Some(t("2026-04-01T00:00:00Z"))
        );
        assert_eq!(
            period_end("2026-12", Every::Month),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            period_end("2026-02-28", Every::Day),
            Some(t("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            period_end("2026", Every::Year),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(period_end("2026-13", Every::Month), None);
        assert_eq!(period_end("2026-03", Every::Day), None);
        assert_eq!(epoch_end("2026-Q1"), Some(t("2026-04-01T00:00:00Z")));
        assert_eq!(epoch_end("2026-Q4"), Some(t("2027-01-01T00:00:00Z")));
        assert_eq!(epoch_end("2026-11"), Some(t("2026-12-01T00:00:00Z")));
        assert_eq!(epoch_end("2026"), Some(t("2027-01-01T00:00:00Z")));
        assert_eq!(epoch_end("2026-Q5"), None);
    }

    #[test]
    fn subject_ids_do_not_print() {
        let s = SubjectId("C-0042".into());
        assert!(!format!("{s:?}").contains("0042"));
        assert_eq!(s.expose(), "C-0042");
    }
}
