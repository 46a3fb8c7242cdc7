//! Logical comparison of two SQLite databases: schema objects and every row
//! of every table, value by value with its storage class. Used by the demo
//! and by tests; `sqldiff` is the external cross-check.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Differences found (empty when the databases are logically identical),
/// plus how many rows were compared.
#[derive(Debug, Default)]
pub struct Comparison {
    pub tables: usize,
    pub rows: u64,
    pub differences: Vec<String>,
}

/// type, name, tbl_name, sql of one sqlite_master row.
type SchemaRow = (String, String, String, Option<String>);

fn open(p: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Compares `a` and `b`. Tables listed in `skip` are not compared row by row.
pub fn compare(a: &Path, b: &Path) -> rusqlite::Result<Comparison> {
    let ca = open(a)?;
    let cb = open(b)?;
    let mut out = Comparison::default();
    let schema = |c: &Connection| -> rusqlite::Result<Vec<SchemaRow>> {
        let mut st = c.prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect()
    };
    let sa = schema(&ca)?;
    let sb = schema(&cb)?;
    if sa != sb {
        for e in sa.iter().filter(|e| !sb.contains(e)) {
            out.differences.push(format!(
                "schema object {} `{}` differs or is missing in the copy",
                e.0, e.1
            ));
        }
        for e in sb.iter().filter(|e| !sa.contains(e)) {
            out.differences.push(format!(
                "schema object {} `{}` exists only in the copy",
                e.0, e.1
            ));
        }
    }
    for p in ["user_version", "application_id"] {
        let va: i64 = ca.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))?;
        let vb: i64 = cb.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))?;
        if va != vb {
            out.differences.push(format!("PRAGMA {p}: {va} vs {vb}"));
        }
    }
    for (kind, name, _, sql) in &sa {
        if kind != "table"
            || sql
                .as_deref()
                .map(|s| s.to_ascii_uppercase().contains("VIRTUAL TABLE"))
                .unwrap_or(false)
        {
            continue;
        }
        out.tables += 1;
        let without_rowid = sql
            .as_deref()
            .map(|s| {
                s.to_ascii_uppercase()
                    .replace(char::is_whitespace, "")
                    .ends_with("WITHOUTROWID")
            })
            .unwrap_or(false);
        let cols: Vec<String> = {
            let mut st = ca.prepare(&format!(
                "SELECT name FROM pragma_table_info({})",
                quote_string(name)
            ))?;
            let r = st.query_map([], |r| r.get::<_, String>(0))?;
            r.collect::<rusqlite::Result<_>>()?
        };
        let mut exprs: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
        let order = if without_rowid {
            (1..=cols.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            exprs.insert(0, "rowid".into());
            "rowid".into()
        };
        let q = format!(
            "SELECT {} FROM {} ORDER BY {}",
            if exprs.is_empty() {
                "1".to_string()
            } else {
                exprs.join(", ")
            },
            quote_ident(name),
            if order.is_empty() { "1".into() } else { order }
        );
        let mut st_a = ca.prepare(&q)?;
        let mut st_b = match cb.prepare(&q) {
            Ok(s) => s,
            Err(e) => {
                out.differences
                    .push(format!("table `{name}`: cannot read the copy: {e}"));
                continue;
            }
        };
        let n = st_a.column_count();
        let mut ra = st_a.query([])?;
        let mut rb = st_b.query([])?;
        let mut i = 0u64;
        loop {
            let (x, y) = (ra.next()?, rb.next()?);
            match (x, y) {
                (None, None) => break,
                (Some(_), None) | (None, Some(_)) => {
                    out.differences.push(format!(
                        "table `{name}`: row counts differ (after {i} rows)"
                    ));
                    break;
                }
                (Some(x), Some(y)) => {
                    for c in 0..n {
                        let vx = x.get_ref(c)?;
                        let vy = y.get_ref(c)?;
                        let differ = match (vx, vy) {
                            // Bit equality: -0.0 and 0.0 are different values.
                            (
                                rusqlite::types::ValueRef::Real(a),
                                rusqlite::types::ValueRef::Real(b),
                            ) => a.to_bits() != b.to_bits(),
                            _ => vx != vy,
                        };
                        if differ {
                            out.differences.push(format!(
                                "table `{name}`: row {} differs in column {}",
                                i + 1,
                                c
                            ));
                            break;
                        }
                    }
                }
            }
            i += 1;
            if out.differences.len() > 20 {
                return Ok(out);
            }
        }
        out.rows += i;
    }
    Ok(out)
}

fn quote_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
