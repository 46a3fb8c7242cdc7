//! SQLite record store: read → encode → restore → compare, through the
//! public API only, on real database files.

use custos::store::record::{decode_row, RowReader};
use custos::store::sqlite::{
    ScanError, SourceOptions, SqliteError, SqliteRestorer, SqliteSchema, SqliteSource, TableSchema,
};
use custos::store::{Every, GroupCoords, TablePlan};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn plain_plan(t: &TableSchema) -> TablePlan {
    TablePlan {
        name: t.name.clone(),
        subject: None,
        period: None,
    }
}

/// A table's name and its encoded rows, one buffer per row.
type TableRows = (String, Vec<Vec<u8>>);

/// Backs up every table: the schema and, per table, its encoded rows one by one.
fn backup(path: &Path) -> (SqliteSchema, Vec<TableRows>) {
    let src = SqliteSource::open(path).unwrap();
    let schema = src.schema().unwrap();
    let mut out = Vec::new();
    for t in &schema.tables {
        let mut rows = Vec::new();
        let stats = src
            .scan(t, &plain_plan(t), |coords, bytes| {
                assert_eq!(coords, &GroupCoords::default());
                rows.push(bytes.to_vec());
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap();
        assert_eq!(stats.rows, rows.len() as u64);
        assert_eq!(
            stats.bytes,
            rows.iter().map(|r| r.len() as u64).sum::<u64>()
        );
        assert_eq!(src.row_count(t).unwrap(), stats.rows, "table {}", t.name);
        out.push((t.name.clone(), rows));
    }
    (schema, out)
}

/// Restores, feeding tables in reverse order and interleaved, each table's
/// rows split into buffers of 1, 2, 3, 1, 2, 3, ... whole rows, plus an
/// empty buffer per table. Returns the tables written page by page.
fn restore(dst: &Path, schema: &SqliteSchema, tables: &[TableRows]) -> Vec<String> {
    let mut r = SqliteRestorer::create(dst, schema, false).unwrap();
    let mut queues: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (name, rows) in tables.iter().rev() {
        let mut bufs = Vec::new();
        let mut i = 0;
        let mut k = 1;
        while i < rows.len() {
            let end = (i + k).min(rows.len());
            bufs.push(rows[i..end].concat());
            i = end;
            k = k % 3 + 1;
        }
        bufs.push(Vec::new());
        bufs.reverse(); // popped from the back
        queues.push((name.clone(), bufs));
    }
    let mut inserted: HashMap<String, u64> = HashMap::new();
    loop {
        let mut any = false;
        for (name, bufs) in queues.iter_mut() {
            if let Some(b) = bufs.pop() {
                any = true;
                *inserted.entry(name.clone()).or_default() += r.insert_rows(name, &b).unwrap();
            }
        }
        if !any {
            break;
        }
    }
    for (name, rows) in tables {
        assert_eq!(inserted[name], rows.len() as u64, "table {name}");
    }
    let paged = r.written_by_pages().map(|(t, _)| t.to_owned()).collect();
    r.finish().unwrap();
    paged
}

/// Restores one table after the other, as a restore does, each in buffers
/// of `per` rows; a table named in `backwards` gets its buffers last first.
/// Returns the tables written page by page.
fn restore_in_order(
    dst: &Path,
    schema: &SqliteSchema,
    tables: &[TableRows],
    per: usize,
    backwards: &str,
) -> Vec<String> {
    let mut r = SqliteRestorer::create(dst, schema, false).unwrap();
    for (name, rows) in tables {
        let mut bufs: Vec<Vec<u8>> = rows.chunks(per).map(|c| c.concat()).collect();
        if name == backwards {
            bufs.reverse();
        }
        let n: u64 = bufs.iter().map(|b| r.insert_rows(name, b).unwrap()).sum();
        assert_eq!(n, rows.len() as u64, "table {name}");
    }
    let paged = r.written_by_pages().map(|(t, _)| t.to_owned()).collect();
    // The index SQLite made for the UNIQUE column is built with its rows
    // (the last table, so its load is complete only at finish), so are
    // those of reals, DESC columns, the NOCASE and RTRIM collations (a
    // NOCASE text holding a 0x00 byte among them), `lower()` and a partial
    // index on `IS NOT NULL`; an index of another expression is left to
    // SQLite.
    let built = r.finish().unwrap();
    for made in [
        "sqlite_autoindex_uniq_1",
        "odd idx \"q\"",
        "plain_r_desc",
        "plain_a",
        "plain_t_rtrim",
        "plain_t_nocase",
        "plain_t_lower",
        "uniq_partial",
        "order_from",
    ] {
        assert!(built.iter().any(|i| i == made), "{made} not in {built:?}");
    }
    assert!(!built.iter().any(|i| i == "uniq_expr"), "{built:?}");
    paged
}

fn sqldiff_available() -> bool {
    Command::new("sqldiff").arg("--help").output().is_ok()
}

/// `sqldiff a b` prints nothing; skipped loudly only when sqldiff is absent.
fn assert_sqldiff_empty(a: &Path, b: &Path) {
    if !sqldiff_available() {
        eprintln!("!!!!! sqldiff NOT FOUND: skipping the sqldiff comparison (install sqlite3-tools); the row-by-row comparison still runs !!!!!");
        return;
    }
    let out = Command::new("sqldiff").arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "sqldiff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "sqldiff found differences:\n{}",
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4000)])
    );
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A text rendering of one value: storage class from `typeof()` and exact
/// content (integer, IEEE bits, or a hash and length of the bytes).
fn render(class: &str, v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => format!("{class}:null"),
        ValueRef::Integer(i) => format!("{class}:int:{i}"),
        ValueRef::Real(r) => format!("{class}:real:{:016x}", r.to_bits()),
        ValueRef::Text(t) => format!("{class}:text:{}:{}", t.len(), blake3::hash(t).to_hex()),
        ValueRef::Blob(b) => format!("{class}:blob:{}:{}", b.len(), blake3::hash(b).to_hex()),
    }
}

/// Everything that must be equal between source and restored databases:
/// schema rows, pragmas, and every row of every table (with its rowid),
/// value by value with storage class and exact bytes.
fn dump(path: &Path) -> BTreeMap<String, Vec<String>> {
    let c = Connection::open(path).unwrap();
    let mut out = BTreeMap::new();
    let mut schema: Vec<String> = c
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema")
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{:?}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    schema.sort();
    out.insert("(schema)".into(), schema);
    let mut pragmas = Vec::new();
    for p in [
        "user_version",
        "application_id",
        "page_size",
        "auto_vacuum",
        "encoding",
        "journal_mode",
    ] {
        let v: Value = c
            .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
            .unwrap();
        pragmas.push(format!("{p}={v:?}"));
    }
    out.insert("(pragmas)".into(), pragmas);
    let tables: Vec<(String, bool)> = c
        .prepare("SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name <> 'sqlite_schema'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (t, wr) in tables {
        let cols: Vec<String> = c
            .prepare("SELECT name FROM pragma_table_xinfo(?1)")
            .unwrap()
            .query_map([&t], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut sel: Vec<String> = Vec::new();
        if !wr {
            let alias = ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|a| !cols.iter().any(|c| c.eq_ignore_ascii_case(a)))
                .unwrap();
            sel.push(format!("'integer', {alias}"));
        }
        for col in &cols {
            sel.push(format!("typeof({0}), {0}", q(col)));
        }
        let order = if wr {
            String::new()
        } else {
            " ORDER BY 2".into()
        };
        let sql = format!("SELECT {} FROM {}{order}", sel.join(", "), q(&t));
        let mut stmt = c.prepare(&sql).unwrap();
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut s = Vec::new();
                for i in (0..n).step_by(2) {
                    let class: String = r.get(i)?;
                    s.push(render(&class, r.get_ref(i + 1)?));
                }
                Ok(s.join(" "))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.insert(format!("table {t}"), rows);
    }
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "integrity of {}", path.display());
    out
}

fn assert_same(a: &Path, b: &Path) {
    let da = dump(a);
    let db = dump(b);
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>());
    for (k, va) in &da {
        assert_eq!(va.len(), db[k].len(), "{k}: row counts differ");
        for (i, (x, y)) in va.iter().zip(&db[k]).enumerate() {
            assert_eq!(x, y, "{k}: row {i} differs");
        }
    }
    assert_sqldiff_empty(a, b);
}

fn text_bytes(b: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(b))
}

/// A database with everything awkward a restore must keep.
/// `auto_vacuum`: `NONE`, `FULL` or `INCREMENTAL` (pointer-map pages,
/// which the restore's page writer keeps).
fn build_awkward(path: &Path, auto_vacuum: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        r#"
        PRAGMA foreign_keys = OFF; -- a dangling reference below, as old databases have
        PRAGMA page_size = 8192;
        PRAGMA auto_vacuum = {auto_vacuum};
        PRAGMA user_version = 42;
        PRAGMA application_id = 1129665364;
        CREATE TABLE plain(id INTEGER PRIMARY KEY, t TEXT, i INTEGER, r REAL, b BLOB, n NUMERIC, a);
        CREATE TABLE log(id INTEGER PRIMARY KEY, what TEXT);
        CREATE TRIGGER plain_log AFTER INSERT ON plain BEGIN
            INSERT INTO log(what) VALUES ('inserted ' || new.id);
        END;
        CREATE TABLE "odd ""name"" täble 表"("rowid" TEXT, "col with space" INTEGER, "select" BLOB, "ünïcode 列" ANY);
        CREATE TABLE "order"("group" INTEGER, "from" TEXT);
        CREATE TABLE nopk(a, b);
        CREATE TABLE wr(k1 TEXT, k2 INTEGER, v, PRIMARY KEY(k2, k1)) WITHOUT ROWID;
        CREATE TABLE coll(a TEXT COLLATE NOCASE PRIMARY KEY, b) WITHOUT ROWID;
        CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
        CREATE TABLE gen(a INTEGER, b TEXT, c AS (a * 2) VIRTUAL, d TEXT AS (upper(b)) STORED);
        CREATE TABLE strict_t(id INTEGER PRIMARY KEY, x ANY, y TEXT) STRICT;
        CREATE TABLE desc_pk(id INTEGER PRIMARY KEY DESC, v);
        CREATE TABLE uniq(a TEXT UNIQUE, b INTEGER, c REAL);
        CREATE TABLE chk(x INTEGER CHECK (x > 0), y TEXT NOT NULL DEFAULT 'd');
        CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES plain(id) ON DELETE CASCADE);
        CREATE INDEX uniq_partial ON uniq(b) WHERE b IS NOT NULL;
        CREATE INDEX uniq_expr ON uniq(lower(a), b + 1);
        CREATE INDEX "odd idx ""q""" ON "odd ""name"" täble 表"("col with space" DESC);
        CREATE INDEX plain_r_desc ON plain(r DESC, n);
        CREATE INDEX plain_a ON plain(a, i DESC);
        CREATE INDEX plain_t_nocase ON plain(t COLLATE NOCASE);
        CREATE INDEX plain_t_lower ON plain(lower(t), i DESC) WHERE t IS NOT NULL;
        CREATE INDEX plain_t_rtrim ON plain(t COLLATE RTRIM DESC);
        CREATE INDEX order_from ON "order"("from" COLLATE NOCASE, "group" DESC);
        CREATE VIEW v_plain AS SELECT id, t FROM plain WHERE id > 0;
        CREATE VIEW v_v AS SELECT count(*) AS n FROM v_plain;
        CREATE TRIGGER v_plain_ins INSTEAD OF INSERT ON v_plain BEGIN
            INSERT INTO plain(id, t) VALUES (new.id, new.t);
        END;
        CREATE TRIGGER auto_upd AFTER UPDATE ON auto BEGIN UPDATE log SET what = 'x'; END;
        "#
    ))
    .unwrap();
    let mut ins = c
        .prepare("INSERT INTO plain(id, t, i, r, b, n, a) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .unwrap();
    let big_blob: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let big_text: String = "Ωmega ✓ \u{1F600} ".repeat(150_000);
    type V<'a> = ToSqlOutput<'a>;
    let null = || V::Borrowed(ValueRef::Null);
    let rows: Vec<[V; 7]> = vec![
        [
            V::from(1),
            text_bytes(b"plain ascii"),
            V::from(i64::MIN),
            V::from(-0.0f64),
            V::from(vec![0u8, 1, 0]),
            V::from(1.5f64),
            V::from(-0.0f64),
        ],
        [
            V::from(5),
            text_bytes(b"nul\0inside\0"),
            V::from(i64::MAX),
            V::from(f64::INFINITY),
            V::from(Vec::<u8>::new()),
            V::from("12abc"),
            V::from(f64::NEG_INFINITY),
        ],
        [
            V::from(-7),
            text_bytes(b"\xff\xfe not utf-8 \xc3"),
            V::from("not a number"),
            V::from(f64::MAX),
            V::from(big_blob),
            V::from(7),
            V::from(5e-324f64),
        ],
        [
            V::from(1_000_000),
            text_bytes("e\u{301}\u{202E}rtl 🏳️‍🌈 𝔘𝔫𝔦".as_bytes()),
            V::from(1.25f64),
            V::from(f64::MIN_POSITIVE),
            V::from("text in a blob column"),
            V::from(vec![9u8]),
            V::from(String::new()),
        ],
        [
            V::from(1_000_001),
            V::from(big_text),
            null(),
            null(),
            null(),
            null(),
            null(),
        ],
        [
            V::from(1_000_002),
            V::from(17),
            V::from(vec![1u8, 2]),
            V::from(3),
            V::from(4.5f64),
            V::from(i64::MIN),
            V::from(vec![0u8; 0]),
        ],
        [
            V::from(1_000_003),
            text_bytes(b""),
            V::from(0),
            V::from(-1e-300f64),
            V::from(vec![0u8; 1]),
            V::from("  42  "),
            V::from(i64::MAX),
        ],
    ];
    for r in &rows {
        ins.execute(rusqlite::params_from_iter(r.iter())).unwrap();
    }
    drop(ins);
    c.execute_batch(
        r#"
        DELETE FROM plain WHERE id = 1000003;
        INSERT INTO "odd ""name"" täble 表"(_rowid_, "rowid", "col with space", "select", "ünïcode 列")
            VALUES (10, 'not the rowid', 1, x'00ff', 1.0), (3, NULL, 2, NULL, 'x'), (-2, '7', NULL, x'', x'01');
        INSERT INTO "order" VALUES (1, 'from'), (NULL, NULL), (1, 'from'), (2, 'From'), (2.5, 'FROM  ');
        INSERT INTO nopk VALUES (1, 1), (1, 1), (NULL, 'dup'), (NULL, 'dup');
        DELETE FROM nopk WHERE rowid = 2;
        INSERT INTO nopk VALUES (2, 2);
        INSERT INTO wr VALUES ('b', 2, 'x'), ('a', 2, NULL), ('z', -1, x'00'), ('', 0, 0.5);
        INSERT INTO coll VALUES ('Alpha', 1), ('beta', 2), ('GAMMA', 3);
        INSERT INTO auto(v) VALUES ('one'), ('two'), ('three'), ('four');
        DELETE FROM auto WHERE id >= 3;
        INSERT INTO gen(a, b) VALUES (1, 'abc'), (NULL, NULL), (21, 'Zz');
        INSERT INTO strict_t VALUES (1, 1.5, 'a'), (2, x'0102', 'b'), (3, 'txt', NULL), (4, -0.0, '');
        INSERT INTO desc_pk(rowid, id, v) VALUES (3, 10, 'x'), (1, 20, 'y');
        INSERT INTO uniq VALUES ('A', 1, 1.0), ('b', NULL, 2.5), (NULL, 3, NULL), (NULL, 3, NULL);
        INSERT INTO chk(x) VALUES (1), (2);
        INSERT INTO child VALUES (1, 5), (2, 999);
        ANALYZE;
        "#,
    )
    .unwrap();
    // -0.0 bound into an untyped column keeps its sign on disk.
    c.execute(
        "INSERT INTO nopk VALUES (?1, ?2)",
        rusqlite::params![-0.0f64, text_bytes(b"\x80")],
    )
    .unwrap();
    let neg: f64 = c
        .query_row(
            "SELECT a FROM nopk WHERE b = CAST(x'80' AS TEXT)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(neg.is_sign_negative(), "fixture: -0.0 kept in the source");
}

#[test]
fn awkward_database_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let dst = dir.path().join("restored.db");
    build_awkward(&src, "INCREMENTAL");
    let (schema, tables) = backup(&src);

    let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"sqlite_sequence"));
    assert!(names.contains(&"sqlite_stat1"));
    assert_eq!(*names.last().unwrap(), "sqlite_sequence");
    let odd = &schema.tables[names.iter().position(|n| n.starts_with("odd")).unwrap()];
    assert_eq!(odd.rowid.as_deref(), Some("_rowid_"));
    let gen = schema.tables.iter().find(|t| t.name == "gen").unwrap();
    assert_eq!(gen.columns, ["a", "b"]);
    assert_eq!(gen.generated, ["c", "d"]);
    let wr = schema.tables.iter().find(|t| t.name == "wr").unwrap();
    assert!(wr.without_rowid && wr.rowid.is_none());
    assert_eq!(wr.primary_key, ["k2", "k1"]);
    assert_eq!(schema.user_version, 42);
    assert_eq!(schema.application_id, 1129665364);
    assert_eq!(schema.page_size, 8192);
    assert_eq!(schema.auto_vacuum, 2);

    // The schema survives its persisted form.
    let json = serde_json::to_string(&schema).unwrap();
    let schema2: SqliteSchema = serde_json::from_str(&json).unwrap();
    assert_eq!(schema, schema2);

    // Every encoded row decodes, and rows of rowid tables carry rowids.
    for (name, rows) in &tables {
        let t = schema.tables.iter().find(|t| &t.name == name).unwrap();
        for r in rows {
            let (row, used) = decode_row(r).unwrap();
            assert_eq!(used, r.len());
            assert_eq!(row.rowid.is_some(), !t.without_rowid);
            assert_eq!(row.values.len(), t.columns.len());
        }
    }

    let paged = restore(&dst, &schema2, &tables);
    assert!(
        paged.iter().any(|t| t == "plain"),
        "pointer-map pages kept: rowid tables are written page by page ({paged:?})"
    );
    assert_same(&src, &dst);
    // Nothing but the restored database is left in the directory.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["restored.db", "src.db"]);

    // Triggers exist but did not fire during the restore; they work after.
    let c = Connection::open(&dst).unwrap();
    let before: i64 = c
        .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
        .unwrap();
    c.execute("INSERT INTO plain(id) VALUES (2000000)", [])
        .unwrap();
    let after: i64 = c
        .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, before + 1);
    // AUTOINCREMENT continues after the source's high-water mark, not max(id).
    c.execute("INSERT INTO auto(v) VALUES ('next')", [])
        .unwrap();
    let id: i64 = c
        .query_row("SELECT max(id) FROM auto", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, 5);
}

/// Without auto-vacuum, rowid and WITHOUT ROWID tables are written page
/// by page (a WITHOUT ROWID table's rows sorted by its primary key): whole
/// tables one after the other, or one buffer before a table's rows arrive
/// interleaved or out of order (the rest then goes in through SQL). Every
/// way gives the source's rows, an intact file (automatic indexes rebuilt:
/// `integrity_check` compares every index with its table) and working
/// triggers.
#[test]
fn rowid_tables_written_page_by_page_round_trip_exactly() {
    written_page_by_page("NONE", 0);
}

/// With auto-vacuum the page writer keeps the pointer map: every page it
/// writes has its parent's entry (`integrity_check` reads every one), and
/// SQLite, which moves pages by them to make room for the roots of the
/// indexes created after the rows, and in FULL mode at each commit, leaves
/// a sound file.
#[test]
fn rowid_tables_written_page_by_page_keep_the_pointer_map() {
    written_page_by_page("FULL", 1);
    written_page_by_page("INCREMENTAL", 2);
}

fn written_page_by_page(auto_vacuum: &str, mode: u8) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    build_awkward(&src, auto_vacuum);
    let (schema, tables) = backup(&src);
    assert_eq!(schema.auto_vacuum, mode);
    // Rowid and WITHOUT ROWID tables alike, but those with generated
    // columns.
    let user_tables: Vec<&str> = schema
        .tables
        .iter()
        .filter(|t| !t.internal && t.generated.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    assert!(user_tables.len() >= 10, "{user_tables:?}");
    assert!(user_tables.contains(&"wr") && user_tables.contains(&"coll"));

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let mut want: Vec<String> = user_tables.iter().map(|s| s.to_string()).collect();
    want.sort();
    for (i, per) in [1000, 1, 2].into_iter().enumerate() {
        let dst = dir.path().join(format!("in-order-{per}.db"));
        let paged = restore_in_order(&dst, &schema, &tables, per, "uniq");
        assert_eq!(sorted(paged), want, "buffers of {per}");
        assert_same(&src, &dst);
        if i == 0 {
            // A restored database is an ordinary one: SQLite writes on.
            let c = Connection::open(&dst).unwrap();
            c.execute_batch(
                "INSERT INTO uniq VALUES ('new', 9, 9.5);
                 INSERT INTO plain(id, t) VALUES (3000000, 'more');
                 DELETE FROM plain WHERE id = 5;",
            )
            .unwrap();
            let dup = c.execute("INSERT INTO uniq VALUES ('A', 0, 0)", []);
            assert!(dup.is_err(), "the rebuilt UNIQUE index holds the rows");
            // The WITHOUT ROWID tables' b-trees are their primary keys.
            let (k1, k2): (String, i64) = c
                .query_row(
                    "SELECT k1, k2 FROM wr ORDER BY k2 DESC, k1 LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let dup = c.execute(
                "INSERT INTO wr VALUES (?1, ?2, 'again')",
                rusqlite::params![k1, k2],
            );
            assert!(dup.is_err(), "the primary key is the table's b-tree");
            let a: String = c
                .query_row("SELECT a FROM coll LIMIT 1", [], |r| r.get(0))
                .unwrap();
            let found: i64 = c
                .query_row("SELECT count(*) FROM coll WHERE a = upper(?1)", [&a], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(found, 1, "a NOCASE key is found in any case");
            let ok: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
        }
    }
    let dst = dir.path().join("interleaved.db");
    let paged = restore(&dst, &schema, &tables);
    assert!(paged.iter().any(|t| t == "plain"), "{paged:?}");
    assert_same(&src, &dst);
}

#[test]
fn wal_mode_and_encoding_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("w.db");
    let dst = dir.path().join("w2.db");
    let c = Connection::open(&src).unwrap();
    c.execute_batch(
        "PRAGMA encoding = 'UTF-16le'; PRAGMA journal_mode = WAL;
         CREATE TABLE t(x TEXT, y); INSERT INTO t VALUES ('héllo ✓', 1), ('', x'00');
         CREATE TABLE s(id INTEGER PRIMARY KEY AUTOINCREMENT); DROP TABLE s;",
    )
    .unwrap();
    // Closed: the -wal and -shm files are gone, as for an idle application.
    drop(c);
    let (schema, tables) = backup(&src);
    assert!(schema.wal);
    assert_eq!(schema.encoding, "UTF-16le");
    // sqlite_sequence outlives its AUTOINCREMENT table and must be recreated.
    assert!(schema.tables.iter().any(|t| t.name == "sqlite_sequence"));
    restore(&dst, &schema, &tables);
    assert_same(&src, &dst);
    // The in-memory sort option reads the same rows.
    let s = SqliteSource::open_with(
        &src,
        &SourceOptions {
            sort_in_memory: true,
        },
    )
    .unwrap();
    let t = &schema.tables[0];
    let plan = TablePlan {
        name: "t".into(),
        subject: Some("y".into()),
        period: None,
    };
    let mut n = 0;
    s.scan(t, &plan, |_, _| {
        n += 1;
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn consistent_snapshot_while_another_connection_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.db");
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
         CREATE TABLE ledger(id INTEGER PRIMARY KEY, amount INTEGER);
         CREATE TABLE mirror(id INTEGER PRIMARY KEY, amount INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
         INSERT INTO acct SELECT i, 1000 FROM n;",
    )
    .unwrap();
    drop(c);
    let commits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (commits, stop, path) = (commits.clone(), stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut c = Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut i: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let tx = c.transaction().unwrap();
                let (from, to, amount) = (i % 100 + 1, (i * 7) % 100 + 1, i % 13);
                tx.execute(
                    "UPDATE acct SET bal = bal - ?1 WHERE id = ?2",
                    [amount, from],
                )
                .unwrap();
                tx.execute("UPDATE acct SET bal = bal + ?1 WHERE id = ?2", [amount, to])
                    .unwrap();
                tx.execute("INSERT INTO ledger VALUES (?1, ?2)", [i, amount])
                    .unwrap();
                tx.execute("INSERT INTO mirror VALUES (?1, ?2)", [i, amount])
                    .unwrap();
                tx.commit().unwrap();
                commits.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let wait_for = |n: u64| {
        for _ in 0..30_000 {
            if commits.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the writer made no progress");
    };
    wait_for(50);
    let before_open = commits.load(Ordering::SeqCst);
    let src = SqliteSource::open(&path).unwrap();
    let after_open = commits.load(Ordering::SeqCst);
    let schema = src.schema().unwrap();
    let mut read: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for t in &schema.tables {
        let mut first = true;
        let mut rows = Vec::new();
        src.scan(t, &plain_plan(t), |_, bytes| {
            if first {
                // Let the writer commit more while this table is being read.
                first = false;
                wait_for(commits.load(Ordering::SeqCst) + 20);
            }
            rows.push(bytes.to_vec());
            Ok::<(), String>(())
        })
        .unwrap();
        read.insert(t.name.clone(), rows);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let ints = |name: &str| -> Vec<(i64, i64)> {
        read[name]
            .iter()
            .map(|b| {
                let (row, _) = decode_row(b).unwrap();
                match row.values[1] {
                    custos::store::record::Value::Integer(v) => (row.rowid.unwrap(), v),
                    _ => panic!("integer expected"),
                }
            })
            .collect()
    };
    let total: i64 = ints("acct").iter().map(|(_, b)| b).sum();
    assert_eq!(total, 100 * 1000, "balances from one consistent state");
    let ledger = ints("ledger");
    assert_eq!(ledger, ints("mirror"), "both tables from the same state");
    let n = ledger.len() as u64;
    assert!(
        before_open <= n && n <= after_open + 1,
        "snapshot at open: {before_open} <= {n} <= {after_open} + 1"
    );
    let final_count: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert!(
        final_count as u64 >= n + 60,
        "writes went on during the scan and were not seen"
    );
    // Source row counts also come from the snapshot.
    let ledger_t = schema.tables.iter().find(|t| t.name == "ledger").unwrap();
    assert_eq!(src.row_count(ledger_t).unwrap(), n);
}

#[test]
fn virtual_tables_are_refused_by_name() {
    for (name, sql) in [
        ("docs_fts", "CREATE VIRTUAL TABLE docs_fts USING fts5(body)"),
        (
            "places_rtree",
            "CREATE VIRTUAL TABLE places_rtree USING rtree(id, minx, maxx)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE ok(x)").unwrap();
        if let Err(e) = c.execute_batch(sql) {
            eprintln!("!!!!! {name}: module not compiled in ({e}); case skipped !!!!!");
            continue;
        }
        drop(c);
        let src = SqliteSource::open(&path).unwrap();
        let err = src.schema().unwrap_err();
        assert!(matches!(err, SqliteError::Unsupported { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("virtual"), "{msg}");
    }
}

#[test]
fn rowid_hidden_by_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(r#"CREATE TABLE "hides it"(rowid, _rowid_, oid)"#)
        .unwrap();
    let err = SqliteSource::open(&path).unwrap().schema().unwrap_err();
    assert!(err.to_string().contains("hides it"), "{err}");
}

#[test]
fn missing_database_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let err = SqliteSource::open(&path).unwrap_err();
    assert!(matches!(err, SqliteError::NotFound { .. }));
    assert!(err.to_string().contains("absent.db"), "{err}");
    assert!(!path.exists());
}

#[test]
fn restore_refuses_existing_target_and_cleans_up_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.db");
    Connection::open(&src)
        .unwrap()
        .execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b); INSERT INTO t VALUES (1, 'x');")
        .unwrap();
    let (schema, tables) = backup(&src);
    let dst = dir.path().join("d.db");
    std::fs::write(&dst, b"keep me").unwrap();
    let err = SqliteRestorer::create(&dst, &schema, false).unwrap_err();
    assert!(matches!(err, SqliteError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("d.db"));
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");

    // A restore abandoned half way leaves the target and directory untouched.
    let mut r = SqliteRestorer::create(&dst, &schema, true).unwrap();
    r.insert_rows("t", &tables[0].1[0]).unwrap();
    let bad = r.insert_rows("t", &[5, 0x10, 1, 0x01]).unwrap_err();
    assert!(matches!(bad, SqliteError::Record { .. }), "{bad}");
    let unknown = r.insert_rows("nope", &[]).unwrap_err();
    assert!(unknown.to_string().contains("nope"));
    // The same row twice violates the primary key.
    let dup = r.insert_rows("t", &tables[0].1[0]).unwrap_err();
    assert!(dup.to_string().contains("`t`"), "{dup}");
    drop(r);
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    // With force, finish replaces it.
    std::fs::write(dir.path().join("d.db-wal"), b"stale").unwrap();
    let mut r = SqliteRestorer::create(&dst, &schema, true).unwrap();
    r.insert_rows("t", &tables[0].1.concat()).unwrap();
    r.finish().unwrap();
    assert!(!dir.path().join("d.db-wal").exists());
    assert_same(&src, &dst);
}

#[test]
fn plans_are_checked_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE cdrs(id INTEGER PRIMARY KEY, customer_id, started_at, day AS (date(started_at)))")
        .unwrap();
    let src = SqliteSource::open(&path).unwrap();
    let schema = src.schema().unwrap();
    let plan = |name: &str, subject: &str, period: &str| TablePlan {
        name: name.into(),
        subject: Some(subject.into()),
        period: Some((period.into(), Every::Day)),
    };
    src.check_plan(&schema, &plan("cdrs", "customer_id", "started_at"))
        .unwrap();
    src.check_plan(&schema, &plan("CDRS", "customer_id", "day"))
        .unwrap();
    let e = src
        .check_plan(&schema, &plan("calls", "customer_id", "started_at"))
        .unwrap_err();
    assert!(e.to_string().contains("calls"), "{e}");
    let e = src
        .check_plan(&schema, &plan("cdrs", "cust", "started_at"))
        .unwrap_err();
    assert!(
        e.to_string().contains("cdrs") && e.to_string().contains("cust"),
        "{e}"
    );
    let e = src
        .check_plan(&schema, &plan("cdrs", "customer_id", "when"))
        .unwrap_err();
    assert!(e.to_string().contains("when"), "{e}");
    let t = &schema.tables[0];
    let e = src
        .scan(t, &plan("cdrs", "nope", "started_at"), |_, _| {
            Ok::<(), ()>(())
        })
        .unwrap_err();
    assert!(matches!(
        e,
        ScanError::Store(SqliteError::NoSuchColumn { .. })
    ));
}

/// A small deterministic generator (no need for statistical quality).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn groups_are_contiguous_on_shuffled_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let mut c = Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE cdrs(id INTEGER PRIMARY KEY, customer, started_at, amount INTEGER)",
    )
    .unwrap();
    let mut rng = Lcg(7);
    let mut expected: HashMap<i64, GroupCoords> = HashMap::new();
    let mut ids: Vec<i64> = (1..=3000).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.next(i as u64 + 1) as usize);
    }
    let tx = c.transaction().unwrap();
    for id in ids {
        let month = 1 + rng.next(6) as u32;
        let day = 1 + rng.next(28) as u32;
        let (when, bucket): (Value, Option<String>) = match rng.next(6) {
            0 => (
                Value::Text(format!("2026-{month:02}-{day:02}")),
                Some(format!("2026-{month:02}")),
            ),
            1 => (
                Value::Text(format!("2026-{month:02}-{day:02}T10:11:12Z")),
                Some(format!("2026-{month:02}")),
            ),
            2 => (
                Value::Text(format!("2026-{month:02}-{day:02} 23:59:59")),
                Some(format!("2026-{month:02}")),
            ),
            3 => {
                let secs = chrono::NaiveDate::from_ymd_opt(2026, month, day)
                    .unwrap()
                    .and_hms_opt(12, 0, 0)
                    .unwrap()
                    .and_utc()
                    .timestamp();
                (Value::Integer(secs), Some(format!("2026-{month:02}")))
            }
            4 => (Value::Null, None),
            _ => (Value::Text("yesterday".into()), None),
        };
        // Integer 7 and text '7' share one canonical subject: "7".
        let (who, subject): (Value, Option<String>) = match rng.next(5) {
            0 => (Value::Text("7".into()), Some("7".into())),
            1 => (Value::Null, None),
            2 => (Value::Blob(vec![0xab, 0x01]), Some("hex:ab01".into())),
            _ => {
                let k = rng.next(12) as i64;
                (Value::Integer(k), Some(k.to_string()))
            }
        };
        tx.execute(
            "INSERT INTO cdrs VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, who, when, id * 3],
        )
        .unwrap();
        expected.insert(id, GroupCoords { subject, bucket });
    }
    tx.commit().unwrap();
    drop(c);

    let src = SqliteSource::open(&path).unwrap();
    let schema = src.schema().unwrap();
    let t = &schema.tables[0];
    let plan = TablePlan {
        name: "cdrs".into(),
        subject: Some("customer".into()),
        period: Some(("started_at".into(), Every::Month)),
    };
    let mut finished: HashSet<GroupCoords> = HashSet::new();
    let mut current: Option<GroupCoords> = None;
    let mut last_id = i64::MIN;
    let mut seen = 0;
    let stats = src
        .scan(t, &plan, |coords, bytes| {
            let mut rows = RowReader::new(bytes);
            let row = rows.next().unwrap().unwrap();
            assert!(rows.next().is_none(), "one row per call");
            let id = row.rowid.unwrap();
            assert_eq!(&expected[&id], coords, "row {id}");
            if current.as_ref() != Some(coords) {
                if let Some(prev) = current.take() {
                    finished.insert(prev);
                }
                assert!(!finished.contains(coords), "group {coords:?} split");
                current = Some(coords.clone());
                last_id = i64::MIN;
            }
            assert!(id > last_id, "rowid order inside a group");
            last_id = id;
            seen += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(seen, 3000);
    assert_eq!(stats.rows, 3000);
    finished.extend(current);
    let distinct: HashSet<&GroupCoords> = expected.values().collect();
    assert_eq!(finished.len(), distinct.len());
    assert!(finished.len() > 50);
}

#[test]
fn sink_errors_stop_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
        .unwrap();
    let src = SqliteSource::open(&path).unwrap();
    let schema = src.schema().unwrap();
    let mut calls = 0;
    let err = src
        .scan(&schema.tables[0], &plain_plan(&schema.tables[0]), |_, _| {
            calls += 1;
            if calls == 2 {
                Err("full")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, ScanError::Sink("full")));
    assert_eq!(calls, 2);
}

/// Throughput on a larger table (run with `--ignored --nocapture`); prints
/// rates, asserts only that everything arrived.
#[test]
#[ignore]
fn throughput_on_a_large_table() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.db");
    let dst = dir.path().join("big2.db");
    let n: i64 = 1_000_000;
    Connection::open(&src)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE cdrs(id INTEGER PRIMARY KEY, customer_id INTEGER, started_at INTEGER,
                               callee TEXT, seconds INTEGER, cost REAL);
             CREATE INDEX cdrs_customer ON cdrs(customer_id);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n})
             INSERT INTO cdrs SELECT i, (i * 7919) % 20000, 1767225600 + (i * 104729) % 31536000,
                                     printf('+4420%08d', i), i % 3600, (i % 1000) / 7.0 FROM k;"
        ))
        .unwrap();
    let size = std::fs::metadata(&src).unwrap().len();
    let t0 = std::time::Instant::now();
    let source = SqliteSource::open(&src).unwrap();
    let schema = source.schema().unwrap();
    let plan = TablePlan {
        name: "cdrs".into(),
        subject: Some("customer_id".into()),
        period: Some(("started_at".into(), Every::Month)),
    };
    let mut restorer = SqliteRestorer::create(&dst, &schema, false).unwrap();
    let mut batch = Vec::new();
    let mut groups = 0u64;
    let mut last = GroupCoords::default();
    let stats = source
        .scan(&schema.tables[0], &plan, |c, b| {
            if *c != last {
                groups += 1;
                last = c.clone();
            }
            batch.extend_from_slice(b);
            if batch.len() > 1 << 20 {
                restorer.insert_rows("cdrs", &batch).unwrap();
                batch.clear();
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    restorer.insert_rows("cdrs", &batch).unwrap();
    let t1 = t0.elapsed();
    restorer.finish().unwrap();
    let t2 = t0.elapsed();
    assert_eq!(stats.rows, n as u64);
    let count: i64 = Connection::open(&dst)
        .unwrap()
        .query_row("SELECT count(*) FROM cdrs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, n);
    eprintln!(
        "{n} rows, {size} byte database, {groups} groups, {} encoded bytes: \
         scan+insert {t1:?}, with indexes and sync {t2:?}",
        stats.bytes
    );
}
