//! Verification of a restored SQLite database, run on a blocking thread:
//! per-table row counts and keyed checksums against the snapshot, SQLite's
//! own checks, and the policy's assertions.

use super::report::{AssertionResult, PragmaCheck, TableCheck};
use crate::crypto::MetaKey;
use crate::policy::DrillAssert;
use crate::repo::snapshot::SqliteSnapshot;
use crate::store::sqlite::{ScanError, SqliteSource};
use crate::store::TablePlan;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// What [`verify_sqlite`] found.
#[derive(Debug, Default)]
pub struct SqliteFindings {
    pub tables: Vec<TableCheck>,
    pub integrity_check: Option<PragmaCheck>,
    pub foreign_key_check: Option<PragmaCheck>,
    pub assertions: Vec<AssertionResult>,
    /// Reasons the verification could not be run at all.
    pub errors: Vec<String>,
}

/// Recomputes, over the restored rows, what the backup recorded per table:
/// the row count and the order-independent keyed checksum (the rows are
/// read and encoded by the same code the backup reads a store with).
/// `tables` comes in with the restore's counts; counts and checksums are
/// filled in.
pub fn verify_sqlite(
    db: &Path,
    snap: &SqliteSnapshot,
    meta: &MetaKey,
    mut tables: Vec<TableCheck>,
    asserts: &[DrillAssert],
) -> SqliteFindings {
    let mut f = SqliteFindings::default();
    match SqliteSource::open(db) {
        Ok(src) => {
            for tc in tables.iter_mut() {
                let Some(ts) = snap.schema.tables.iter().find(|t| t.name == tc.name) else {
                    f.errors.push(format!(
                        "table {}: not in the snapshot's schema (damaged manifest)",
                        tc.name
                    ));
                    continue;
                };
                let plan = TablePlan {
                    name: ts.name.clone(),
                    subject: None,
                    period: None,
                };
                let mut rows = 0u64;
                let mut terms = meta.row_terms();
                let r = src.scan_natural(ts, &plan, |_, row: &[u8]| -> Result<(), ()> {
                    rows += 1;
                    terms.add(row);
                    Ok(())
                });
                let sum = terms.sum();
                match r {
                    Ok(_) => {
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
                    Err(ScanError::Store(e)) => {
                        tc.count_ok = false;
                        f.errors
                            .push(format!("table {}: cannot read it back: {e}", tc.name));
                    }
                    Err(ScanError::Sink(())) => unreachable!("the sink does not fail"),
                }
            }
        }
        Err(e) => f
            .errors
            .push(format!("cannot open the restored database: {e}")),
    }
    f.tables = tables;
    let conn = match Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            f.errors
                .push(format!("cannot open the restored database: {e}"));
            return f;
        }
    };
    f.integrity_check = Some(integrity_check(&conn));
    f.foreign_key_check = Some(foreign_key_check(&conn));
    f.assertions = asserts.iter().map(|a| run_assert(&conn, a)).collect();
    f
}

fn integrity_check(conn: &Connection) -> PragmaCheck {
    let mut out = PragmaCheck::default();
    let r = (|| -> rusqlite::Result<Vec<String>> {
        let mut st = conn.prepare("PRAGMA integrity_check")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    match r {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => out.ok = true,
        Ok(lines) => {
            out.problems = lines.len() as u64;
            out.details = lines.into_iter().take(10).collect();
        }
        Err(e) => {
            out.problems = 1;
            out.details = vec![format!("integrity_check could not run: {e}")];
        }
    }
    out
}

fn foreign_key_check(conn: &Connection) -> PragmaCheck {
    let mut out = PragmaCheck::default();
    // (child table, parent table) only: the rowid of a violating row is left
    // out of the report.
    let r = (|| -> rusqlite::Result<Vec<(String, String)>> {
        let mut st = conn.prepare("PRAGMA foreign_key_check")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(2)?)))?;
        rows.collect()
    })();
    match r {
        Ok(v) if v.is_empty() => out.ok = true,
        Ok(v) => {
            out.problems = v.len() as u64;
            let mut per: std::collections::BTreeMap<(String, String), u64> = Default::default();
            for k in v {
                *per.entry(k).or_default() += 1;
            }
            out.details = per
                .into_iter()
                .take(10)
                .map(|((c, p), n)| format!("{n} row(s) of {c} refer to missing rows of {p}"))
                .collect();
        }
        Err(e) => {
            out.problems = 1;
            out.details = vec![format!("foreign_key_check could not run: {e}")];
        }
    }
    out
}

/// Runs one assertion: the first column of the first row (NULL when there
/// is no row) must equal `expect`.
pub fn run_assert(conn: &Connection, a: &DrillAssert) -> AssertionResult {
    let mut res = AssertionResult {
        sql: a.sql.clone(),
        ..Default::default()
    };
    // Numbers and booleans are counts or yes/no answers and may be shown;
    // anything else could be a customer value and is not.
    let showable = matches!(
        a.expect,
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
    );
    if showable {
        res.expected = toml_to_json(&a.expect);
    }
    let r = (|| -> rusqlite::Result<(bool, Option<serde_json::Value>, bool)> {
        let mut st = conn.prepare(&a.sql)?;
        if st.column_count() == 0 {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let mut rows = st.query([])?;
        let (passed, actual, numeric) = match rows.next()? {
            None => (false, None, false),
            Some(row) => {
                let v = row.get_ref(0)?;
                (
                    equals(&a.expect, v),
                    numeric_json(v),
                    numeric_json(v).is_some(),
                )
            }
        };
        Ok((passed, actual, numeric))
    })();
    match r {
        Ok((passed, actual, numeric)) => {
            res.passed = passed;
            if showable && numeric {
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

pub(super) fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    match v {
        toml::Value::Integer(i) => Some((*i).into()),
        toml::Value::Boolean(b) => Some((*b).into()),
        // Floats as text: the signed form must round-trip exactly.
        toml::Value::Float(x) => Some(serde_json::Value::String(x.to_string())),
        _ => None,
    }
}

fn numeric_json(v: ValueRef<'_>) -> Option<serde_json::Value> {
    match v {
        ValueRef::Integer(i) => Some(i.into()),
        ValueRef::Real(x) => Some(serde_json::Value::String(x.to_string())),
        _ => None,
    }
}

/// `expect` against a SQLite value: integers, reals, booleans (as 0/1) and
/// text compare by value.
fn equals(expect: &toml::Value, v: ValueRef<'_>) -> bool {
    match (expect, v) {
        (toml::Value::Integer(e), ValueRef::Integer(i)) => *e == i,
        (toml::Value::Integer(e), ValueRef::Real(x)) => (*e as f64) == x,
        (toml::Value::Float(e), ValueRef::Real(x)) => *e == x,
        (toml::Value::Float(e), ValueRef::Integer(i)) => *e == i as f64,
        (toml::Value::Boolean(b), ValueRef::Integer(i)) => i == i64::from(*b),
        (toml::Value::String(s), ValueRef::Text(t)) => s.as_bytes() == t,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_compare_and_hide_non_numeric_values() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES ('secret'), ('x');")
            .unwrap();
        let a = |sql: &str, expect: toml::Value| DrillAssert {
            sql: sql.into(),
            expect,
        };
        let r = run_assert(&c, &a("SELECT count(*) FROM t", toml::Value::Integer(2)));
        assert!(r.passed);
        assert_eq!(r.actual, Some(2.into()));
        let r = run_assert(&c, &a("SELECT count(*) FROM t", toml::Value::Integer(3)));
        assert!(!r.passed);
        assert_eq!(r.actual, Some(2.into()));
        let r = run_assert(
            &c,
            &a(
                "SELECT a FROM t ORDER BY a",
                toml::Value::String("nope".into()),
            ),
        );
        assert!(!r.passed);
        assert_eq!((&r.expected, &r.actual), (&None, &None));
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("secret") && !text.contains("nope"));
        let r = run_assert(&c, &a("SELECT nope FROM t", toml::Value::Integer(0)));
        assert!(!r.passed);
        assert!(r.note.unwrap().contains("failed"));
        let r = run_assert(&c, &a("SELECT 1 = 1", toml::Value::Boolean(true)));
        assert!(r.passed);
    }
}
