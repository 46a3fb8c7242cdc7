//! Drills of PostgreSQL snapshots: a scratch database that the drill
//! creates, restores into, verifies and always drops.
//!
//! * [`ScratchDb::create`] makes `custos_drill_<id>` on the policy's server
//!   (or `[drill] scratch_url`) and keeps a *guard* connection to it that
//!   holds a session advisory lock ([`GUARD_LOCK`]) for the whole drill.
//!   [`ScratchDb::drop_now`] drops it (`DROP DATABASE ... WITH (FORCE)`);
//!   if the drill is dropped instead (an error, Ctrl-C), `Drop` does the same
//!   on a thread of its own before returning.
//! * A drill killed outright leaves its database behind, but its guard
//!   connection dies with the process and the server releases the lock. The
//!   next drill on that server ([`sweep`]) drops every `custos_drill_*`
//!   database whose lock it can take, except those named by a drill that
//!   started less than [`YOUNG_SECS`] ago (one may be between `CREATE
//!   DATABASE` and taking its lock).
//! * [`verify_postgres`] reads the restored tables back with the same reader
//!   and row encoding the backup used (COPY text output, canonical record
//!   encoding) and recomputes the per-table row count and the keyed
//!   order-independent checksum; then runs the `[[drill.assert]]` queries
//!   in a READ ONLY transaction.

use super::report::{AssertionResult, TableCheck};
use crate::crypto::MetaKey;
use crate::policy::{DrillAssert, Policy};
use crate::repo::snapshot::PostgresSnapshot;
use crate::store::postgres::{quote_ident, PgConn, PgError, PgSource};
use crate::store::TablePlan;
use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Every scratch database's name starts with this.
pub const DB_PREFIX: &str = "custos_drill_";

/// The advisory lock key a running drill holds in its scratch database
/// (the bytes of `custos`).
pub const GUARD_LOCK: i64 = 0x0000_6375_7374_6f73;

/// A scratch database named by a drill younger than this is never swept.
pub const YOUNG_SECS: i64 = 600;

/// The scratch database name of drill `id` (`drill-20260314T101500Z-1a2b3c4d`
/// gives `custos_drill_20260314t101500z_1a2b3c4d`).
pub fn db_name(drill_id: &str) -> String {
    let rest = drill_id.strip_prefix("drill-").unwrap_or(drill_id);
    let clean: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{DB_PREFIX}{clean}")
}

/// When the drill that named database `name` started, if the name says.
fn started_of(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(DB_PREFIX)?;
    let stamp = rest.split('_').next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dt%H%M%Sz")
        .ok()
        .map(|t| t.and_utc())
}

/// The server scratch databases are made on: `[drill] scratch_url` if set,
/// else the store's URL; the password is the store's (`password_file` /
/// `password_env`). The database of the URL is only used to connect from.
pub fn scratch_server(policy: &Policy) -> Result<PgConn, PgError> {
    let store = PgConn::from_store(&policy.store)?;
    match &policy.drill.scratch_url {
        None => Ok(store),
        Some(url) => {
            let c = PgConn::parse(url)?;
            if c.has_password() {
                return Ok(c);
            }
            let mut c = crate::store::postgres::restore_conn(url, Some(&store))?;
            c.schemas = store.schemas.clone();
            Ok(c)
        }
    }
}

/// A drill's scratch database; dropped by [`drop_now`](Self::drop_now) or,
/// failing that, when dropped.
pub struct ScratchDb {
    server: PgConn,
    name: String,
    conn: PgConn,
    guard: Option<Client>,
}

impl std::fmt::Debug for ScratchDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDb")
            .field("name", &self.name)
            .field("server", &self.server.server())
            .finish_non_exhaustive()
    }
}

impl ScratchDb {
    /// Creates database `name` on `server` and takes its guard lock. The
    /// role needs CREATEDB (or use `[drill] scratch_url` with one that has).
    pub async fn create(server: &PgConn, name: &str) -> Result<ScratchDb, PgError> {
        let maint = server.connect().await?;
        server
            .execute_ddl(
                &maint,
                &format!("creating the drill's scratch database {name}"),
                &format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name)),
            )
            .await?;
        drop(maint);
        let conn = server.with_database(name)?;
        let mut db = ScratchDb {
            server: server.clone(),
            name: name.to_string(),
            conn,
            guard: None,
        };
        // From here on `db` drops the database if anything fails.
        let guard = db.conn.connect().await?;
        let got: bool = guard
            .query_one("SELECT pg_catalog.pg_try_advisory_lock($1)", &[&GUARD_LOCK])
            .await
            .map_err(|e| db.conn.query_err("locking the scratch database", &e))?
            .get(0);
        if !got {
            return Err(PgError::Tool(format!(
                "scratch database {name} is locked by another session (a sweeping drill?); run the drill again"
            )));
        }
        db.guard = Some(guard);
        Ok(db)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How to connect to the scratch database.
    pub fn conn(&self) -> &PgConn {
        &self.conn
    }

    /// Drops the database now, reporting a failure.
    pub async fn drop_now(mut self) -> Result<(), PgError> {
        self.guard.take();
        let r = drop_database(&self.server, &self.name).await;
        self.name.clear();
        r
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        self.guard.take();
        let server = self.server.clone();
        let name = std::mem::take(&mut self.name);
        // No async drop: a thread with a runtime of its own, joined, so the
        // database is gone before the drill's caller goes on (or exits).
        let r = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PgError::Tool(format!("cannot start a runtime: {e}")))?;
            let r = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    drop_database(&server, &name),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(PgError::Tool(format!(
                        "dropping scratch database {name} timed out"
                    )))
                })
            });
            r
        })
        .join();
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                "cannot drop a drill's scratch database: {e}; the next drill drops it, or drop it by hand"
            ),
            Err(_) => tracing::error!("dropping a drill's scratch database panicked"),
        }
    }
}

async fn drop_database(server: &PgConn, name: &str) -> Result<(), PgError> {
    let maint = server.connect().await?;
    server
        .execute_ddl(
            &maint,
            &format!("dropping the drill's scratch database {name}"),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        )
        .await
}

/// Drops the scratch databases of drills that no longer run (their guard
/// lock is free), except those of drills started less than [`YOUNG_SECS`]
/// before `now`. Returns the names dropped.
pub async fn sweep(server: &PgConn, now: DateTime<Utc>) -> Result<Vec<String>, PgError> {
    let maint = server.connect().await?;
    let names: Vec<String> = maint
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database \
             WHERE datname LIKE 'custos\\_drill\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| server.query_err("listing scratch databases", &e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = Vec::new();
    for name in names {
        if started_of(&name).is_some_and(|t| (now - t).num_seconds() < YOUNG_SECS) {
            continue;
        }
        let Ok(conn) = server.with_database(&name) else {
            continue;
        };
        let Ok(c) = conn.connect().await else {
            continue; // being dropped, or not ours to open
        };
        let free = c
            .query_one("SELECT pg_catalog.pg_try_advisory_lock($1)", &[&GUARD_LOCK])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        drop(c);
        if !free {
            continue; // a running drill holds it
        }
        server
            .execute_ddl(
                &maint,
                &format!("dropping abandoned scratch database {name}"),
                &format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                ),
            )
            .await?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// What [`verify_postgres`] found.
#[derive(Debug, Default)]
pub struct PgFindings {
    pub tables: Vec<TableCheck>,
    pub assertions: Vec<AssertionResult>,
    /// Reasons the verification could not be run at all.
    pub errors: Vec<String>,
}

/// Recomputes, over the rows of the restored database, what the backup
/// recorded per table (row count, keyed order-independent checksum) and
/// runs the assertions. `tables` comes in with the restore's counts.
pub async fn verify_postgres(
    conn: &PgConn,
    snap: &PostgresSnapshot,
    meta: &MetaKey,
    mut tables: Vec<TableCheck>,
    asserts: &[DrillAssert],
) -> PgFindings {
    let mut f = PgFindings::default();
    match read_back(conn, snap, meta, &mut tables).await {
        Ok(errs) => f.errors.extend(errs),
        Err(e) => {
            f.errors
                .push(format!("cannot read the restored database back: {e}"));
            tables.iter_mut().for_each(|t| t.count_ok = false);
        }
    }
    f.tables = tables;
    match conn.connect().await {
        Ok(c) => {
            for a in asserts {
                f.assertions.push(run_assert(&c, conn, a).await);
            }
        }
        Err(e) => f
            .errors
            .push(format!("cannot connect to run the assertions: {e}")),
    }
    f
}

async fn read_back(
    conn: &PgConn,
    snap: &PostgresSnapshot,
    meta: &MetaKey,
    tables: &mut [TableCheck],
) -> Result<Vec<String>, PgError> {
    let src = PgSource::open(conn).await?;
    let mut errors = Vec::new();
    let mut plans = Vec::new();
    let mut which = Vec::new();
    for (i, tc) in tables.iter_mut().enumerate() {
        if !snap
            .schema
            .tables
            .iter()
            .any(|t| t.display_name() == tc.name)
        {
            errors.push(format!(
                "table {}: not in the snapshot's schema (damaged manifest)",
                tc.name
            ));
            tc.count_ok = false;
            continue;
        }
        let plan = TablePlan {
            name: tc.name.clone(),
            subject: None,
            period: None,
        };
        match src.check_plan(&plan) {
            Ok(p) => {
                plans.push(p);
                which.push(i);
            }
            Err(e) => {
                tc.count_ok = false;
                errors.push(format!(
                    "table {}: not in the restored database: {e}",
                    tc.name
                ));
            }
        }
    }
    let mut streams = src.stream(plans, 2).await?;
    for (rows_of, &i) in streams.iter_mut().zip(&which) {
        let tc = &mut tables[i];
        let mut rows = 0u64;
        let mut terms = meta.row_terms();
        let mut failed = None;
        while let Some(batch) = rows_of.next().await {
            match batch {
                Ok(b) => {
                    for (_, row) in &b {
                        rows += 1;
                        terms.add(row);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let sum = terms.sum();
        if let Some(e) = failed {
            tc.count_ok = false;
            errors.push(format!("table {}: cannot read it back: {e}", tc.name));
            continue;
        }
        tc.rows_restored = rows;
        tc.count_ok = rows.saturating_add(tc.rows_shredded) == tc.rows_expected;
        let got = hex::encode(sum.to_le_bytes());
        tc.checksum_ok = if tc.rows_shredded == 0 {
            Some(got == tc.checksum_expected)
        } else {
            None
        };
        tc.checksum_restored = Some(got);
    }
    drop(streams);
    src.close().await?;
    Ok(errors)
}

/// Runs one assertion in a READ ONLY transaction: the first column of the
/// first row (NULL when there is no row) must equal `expect`. Only a
/// number or a boolean is ever shown; the server's message of a failing
/// query is not (it may quote a value).
pub async fn run_assert(c: &Client, conn: &PgConn, a: &DrillAssert) -> AssertionResult {
    let mut res = AssertionResult {
        sql: a.sql.clone(),
        ..Default::default()
    };
    let showable = matches!(
        a.expect,
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
    );
    if showable {
        res.expected = super::verify::toml_to_json(&a.expect);
    }
    let r = async {
        c.batch_execute("BEGIN TRANSACTION READ ONLY")
            .await
            .map_err(|e| conn.query_err("starting a read-only transaction", &e))?;
        // Preparing refuses several statements in one query.
        let st = c
            .prepare(&a.sql)
            .await
            .map_err(|e| conn.data_err("preparing the query", &e))?;
        let ty = st
            .columns()
            .first()
            .map(|col| col.type_().clone())
            .ok_or_else(|| PgError::Tool("the query returns no column".into()))?;
        let msgs = c
            .simple_query(&a.sql)
            .await
            .map_err(|e| conn.data_err("running the query", &e))?;
        let first = msgs.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        });
        Ok::<_, PgError>((ty, first.flatten()))
    }
    .await;
    let _ = c.batch_execute("ROLLBACK").await;
    match r {
        Ok((ty, value)) => {
            let passed = value.as_deref().is_some_and(|v| equals(&a.expect, &ty, v));
            res.passed = passed;
            let actual = value.as_deref().and_then(|v| shown(&ty, v));
            if showable && actual.is_some() {
                res.actual = actual;
            } else if !showable {
                res.note = Some("values not shown: the expectation is not a number".into());
            } else if !passed {
                res.note = Some("the query returned no row, NULL or a non-numeric value".into());
            }
        }
        Err(e) => {
            res.passed = false;
            res.note = Some(format!("the query failed: {e}"));
        }
    }
    res
}

fn is_int(ty: &Type) -> bool {
    [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(ty)
}

fn is_real(ty: &Type) -> bool {
    [Type::FLOAT4, Type::FLOAT8, Type::NUMERIC].contains(ty)
}

/// A result value that may be shown: an integer, a real (as text, like the
/// SQLite drill) or a boolean.
fn shown(ty: &Type, v: &str) -> Option<serde_json::Value> {
    if is_int(ty) {
        v.parse::<i64>().ok().map(Into::into)
    } else if is_real(ty) {
        v.parse::<f64>()
            .ok()
            .map(|x| serde_json::Value::String(x.to_string()))
    } else if *ty == Type::BOOL {
        Some((v == "t").into())
    } else {
        None
    }
}

/// `expect` against a value's text output and type.
fn equals(expect: &toml::Value, ty: &Type, v: &str) -> bool {
    match expect {
        toml::Value::Integer(e) if is_int(ty) => v.parse::<i64>().is_ok_and(|i| i == *e),
        toml::Value::Integer(e) if is_real(ty) => v.parse::<f64>().is_ok_and(|x| x == *e as f64),
        toml::Value::Float(e) if is_int(ty) || is_real(ty) => {
            v.parse::<f64>().is_ok_and(|x| x == *e)
        }
        toml::Value::Boolean(b) if *ty == Type::BOOL => (v == "t") == *b,
        toml::Value::Boolean(b) if is_int(ty) => v.parse::<i64>().is_ok_and(|i| i == i64::from(*b)),
        toml::Value::String(s) => s == v,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_carry_the_drill_time() {
        let n = db_name("drill-20260314T101500Z-1a2b3c4d");
        assert_eq!(n, "custos_drill_20260314t101500z_1a2b3c4d");
        assert!(n.len() < 64);
        let t = started_of(&n).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-14T10:15:00+00:00");
        assert_eq!(started_of("custos_drill_x"), None);
    }

    #[test]
    fn values_compare_by_type() {
        assert!(equals(&toml::Value::Integer(3), &Type::INT8, "3"));
        assert!(!equals(&toml::Value::Integer(3), &Type::INT8, "4"));
        assert!(equals(&toml::Value::Integer(3), &Type::NUMERIC, "3.00"));
        assert!(equals(&toml::Value::Boolean(true), &Type::BOOL, "t"));
        assert!(!equals(&toml::Value::Boolean(true), &Type::BOOL, "f"));
        assert!(equals(&toml::Value::String("x".into()), &Type::TEXT, "x"));
        assert_eq!(shown(&Type::TEXT, "secret"), None);
        assert_eq!(shown(&Type::INT4, "7"), Some(7.into()));
    }
}
