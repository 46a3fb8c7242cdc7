//! The demo data generator and mutator against real SQLite files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use custos::demo::{generate, mutate, DemoError, DemoSize, GenStats, DATA_TABLES};
use custos::progress::{NoProgress, Progress};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

fn small(dir: &Path, name: &str, seed: u64) -> (PathBuf, GenStats) {
    let path = dir.join(name);
    let stats = generate(&path, DemoSize::Small, seed, &NoProgress).expect("generate small");
    (path, stats)
}

fn open(path: &Path) -> Connection {
    Connection::open(path).expect("open")
}

/// The hash of one row's values (type-tagged, REALs by their bits).
fn row_hash(row: &rusqlite::Row, columns: usize) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for i in 0..columns {
        match row.get_ref(i).expect("column") {
            ValueRef::Null => h.update(b"n"),
            ValueRef::Integer(v) => h.update(b"i").update(&v.to_le_bytes()),
            ValueRef::Real(v) => h.update(b"r").update(&v.to_bits().to_le_bytes()),
            ValueRef::Text(t) => h
                .update(b"t")
                .update(&(t.len() as u64).to_le_bytes())
                .update(t),
            ValueRef::Blob(b) => h
                .update(b"b")
                .update(&(b.len() as u64).to_le_bytes())
                .update(b),
        };
    }
    *h.finalize().as_bytes()
}

/// rowid → row hash for one table.
fn rows(conn: &Connection, table: &str) -> BTreeMap<i64, [u8; 32]> {
    let mut st = conn
        .prepare(&format!("SELECT rowid, * FROM {table} ORDER BY rowid"))
        .expect("prepare");
    let columns = st.column_count();
    let mut out = BTreeMap::new();
    let mut q = st.query([]).expect("query");
    while let Some(r) = q.next().expect("row") {
        let mut h = blake3::Hasher::new();
        h.update(&row_hash(r, columns));
        out.insert(r.get(0).expect("rowid"), *h.finalize().as_bytes());
    }
    out
}

/// Everything a `.dump` shows: the schema and a hash of every table's rows.
fn content(path: &Path) -> BTreeMap<String, (usize, [u8; 32])> {
    let conn = open(path);
    let mut out = BTreeMap::new();
    let mut schema = blake3::Hasher::new();
    let mut tables = Vec::new();
    {
        let mut st = conn
            .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
            .expect("schema");
        let mut q = st.query([]).expect("schema");
        while let Some(r) = q.next().expect("row") {
            let (ty, name, sql): (String, String, String) =
                (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
            schema
                .update(ty.as_bytes())
                .update(name.as_bytes())
                .update(sql.as_bytes());
            if ty == "table" {
                tables.push(name);
            }
        }
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    schema.update(&version.to_le_bytes());
    out.insert("(schema)".to_string(), (0, *schema.finalize().as_bytes()));
    for t in tables {
        let rows = rows(&conn, &t);
        let mut h = blake3::Hasher::new();
        for (id, rh) in &rows {
            h.update(&id.to_le_bytes()).update(rh);
        }
        out.insert(t, (rows.len(), *h.finalize().as_bytes()));
    }
    out
}

fn count(conn: &Connection, sql: &str) -> u64 {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

fn is_cjk(s: &str) -> bool {
    s.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c))
}

/// Progress that records what it was told.
#[derive(Default)]
struct Recorder {
    phases: std::sync::Mutex<Vec<String>>,
    advanced: AtomicU64,
}
impl Progress for Recorder {
    fn phase(&self, name: &str, _total: Option<u64>, _unit: &'static str) {
        self.phases.lock().unwrap().push(name.to_string());
    }
    fn advance(&self, n: u64) {
        self.advanced.fetch_add(n, Ordering::Relaxed);
    }
}

#[test]
fn small_is_deterministic_and_seed_dependent() {
    let dir = tempfile::tempdir().unwrap();
    let (a, sa) = small(dir.path(), "a.db", 42);
    let (b, sb) = small(dir.path(), "b.db", 42);
    let (c, _) = small(dir.path(), "c.db", 43);
    assert_eq!(sa, sb);
    let (ca, cb, cc) = (content(&a), content(&b), content(&c));
    assert_eq!(ca, cb, "same seed, different content");
    for t in DATA_TABLES {
        assert_ne!(ca[t].1, cc[t].1, "table {t} does not depend on the seed");
    }
    assert_eq!(ca["(schema)"], cc["(schema)"]);
}

#[test]
fn small_has_the_schema_and_realistic_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let rec = Recorder::default();
    let stats = generate(&path, DemoSize::Small, 7, &rec).unwrap();
    let conn = open(&path);

    let names = |ty: &str| -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = ?1 AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        let v = st.query_map([ty], |r| r.get(0)).unwrap();
        v.map(Result::unwrap).collect()
    };
    assert_eq!(
        names("table"),
        [
            "cdrs",
            "customers",
            "settings",
            "subscriptions",
            "ticket_history",
            "tickets"
        ]
    );
    assert_eq!(
        names("index"),
        [
            "cdrs_customer_time",
            "subscriptions_customer",
            "ticket_history_ticket",
            "tickets_customer"
        ]
    );
    assert_eq!(names("view"), ["active_customers"]);
    assert_eq!(names("trigger"), ["tickets_status_history"]);
    assert_eq!(count(&conn, "PRAGMA user_version"), 3);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_ne!(journal.to_lowercase(), "wal");

    // Stats agree with the file.
    assert_eq!(
        stats.customers,
        count(&conn, "SELECT count(*) FROM customers")
    );
    assert_eq!(
        stats.subscriptions,
        count(&conn, "SELECT count(*) FROM subscriptions")
    );
    assert_eq!(stats.tickets, count(&conn, "SELECT count(*) FROM tickets"));
    assert_eq!(
        stats.ticket_history,
        count(&conn, "SELECT count(*) FROM ticket_history")
    );
    assert_eq!(stats.cdrs, count(&conn, "SELECT count(*) FROM cdrs"));
    assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(stats.customers, 2_000);
    assert!(
        (6_500_000..=9_500_000).contains(&stats.bytes),
        "small is {} bytes, expected about 8 MB",
        stats.bytes
    );
    assert!(stats.subscriptions > stats.customers && stats.tickets > 1_000);

    // CDRs make most of the file.
    let cdr_bytes = count(
        &conn,
        "SELECT sum(pgsize) FROM dbstat WHERE name IN ('cdrs', 'cdrs_customer_time')",
    );
    assert!(
        cdr_bytes * 100 / stats.bytes >= 85,
        "cdrs are {cdr_bytes} of {} bytes",
        stats.bytes
    );

    // Half Chinese names with a pinyin form, half European names; all with
    // identity numbers and an ASCII Latin form.
    let mut st = conn
        .prepare("SELECT name, name_latin, id_number, phone FROM customers")
        .unwrap();
    let mut q = st.query([]).unwrap();
    let (mut chinese, mut latin) = (0, 0);
    while let Some(r) = q.next().unwrap() {
        let (name, latin_name, id, phone): (String, String, String, String) = (
            r.get(0).unwrap(),
            r.get(1).unwrap(),
            r.get(2).unwrap(),
            r.get(3).unwrap(),
        );
        assert!(
            latin_name.is_ascii() && latin_name.contains(' '),
            "{latin_name}"
        );
        assert!(!id.is_empty());
        if is_cjk(&name) {
            chinese += 1;
            assert_eq!(id.len(), 18, "Chinese identity number {id}");
            assert!(phone.starts_with("+86 1"), "{phone}");
        } else {
            latin += 1;
            assert!(
                name.chars().all(|c| c.is_alphabetic() || c == ' '),
                "{name}"
            );
        }
    }
    assert!((800..=1200).contains(&chinese), "{chinese} Chinese names");
    assert!((800..=1200).contains(&latin), "{latin} Latin names");
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM customers WHERE name = '王伟' OR name LIKE '李%'"
        ) > 0
    );

    // CDRs: the 365 days before the reference date, stored in time order.
    let bounds: (String, String) = conn
        .query_row(
            "SELECT min(started_at), max(started_at) FROM cdrs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(bounds.0.as_str() >= "2025-03-16T00:00:00Z", "{}", bounds.0);
    assert!(bounds.1.as_str() < "2026-03-16T00:00:00Z", "{}", bounds.1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs a JOIN cdrs b ON b.id = a.id + 1 WHERE b.started_at < a.started_at"
        ),
        0,
        "cdrs are not in time order"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs WHERE started_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z'"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(DISTINCT substr(started_at, 1, 7)) FROM cdrs"
        ),
        13,
        "12 months back from the middle of a month touch 13 calendar months"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs WHERE kind NOT IN ('voice', 'sms', 'data')"
        ),
        0
    );
    // Heavy tail: the busiest 10% of customers make more than a third of the records.
    let top = count(
        &conn,
        "SELECT sum(n) FROM (SELECT count(*) AS n FROM cdrs GROUP BY customer_id ORDER BY n DESC LIMIT 200)",
    );
    assert!(top * 3 > stats.cdrs, "top 10% have {top} of {}", stats.cdrs);
    // No records for customers outside their contract.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs d JOIN customers c ON c.id = d.customer_id
             WHERE d.started_at < substr(c.created_at, 1, 10) OR d.started_at >= c.closed_at"
        ),
        0
    );
    assert!(count(&conn, "SELECT count(*) FROM active_customers") > 1_500);

    // Progress saw every phase and every record.
    let phases = rec.phases.lock().unwrap().clone();
    assert!(
        phases.iter().any(|p| p.contains("call records")),
        "{phases:?}"
    );
    assert!(rec.advanced.load(Ordering::Relaxed) >= stats.customers + stats.cdrs);
}

#[test]
fn generate_refuses_an_existing_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exists.db");
    std::fs::write(&path, b"precious").unwrap();
    let err = generate(&path, DemoSize::Small, 1, &NoProgress).unwrap_err();
    assert!(matches!(err, DemoError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

/// Rows (inserted, updated, deleted) per table.
type PerTable = BTreeMap<&'static str, (u64, u64, u64)>;

/// Rows inserted, updated and deleted between two versions of a database.
fn diff(before: &Path, after: &Path) -> (u64, u64, u64, PerTable) {
    let (b, a) = (open(before), open(after));
    let (mut ins, mut upd, mut del) = (0, 0, 0);
    let mut per = BTreeMap::new();
    for t in DATA_TABLES {
        let (rb, ra) = (rows(&b, t), rows(&a, t));
        let i = ra.keys().filter(|k| !rb.contains_key(k)).count() as u64;
        let d = rb.keys().filter(|k| !ra.contains_key(k)).count() as u64;
        let u = rb
            .iter()
            .filter(|(k, h)| ra.get(k).is_some_and(|h2| h2 != *h))
            .count() as u64;
        per.insert(t, (i, u, d));
        ins += i;
        upd += u;
        del += d;
    }
    (ins, upd, del, per)
}

fn total_rows(path: &Path) -> u64 {
    let conn = open(path);
    DATA_TABLES
        .iter()
        .map(|t| count(&conn, &format!("SELECT count(*) FROM {t}")))
        .sum()
}

#[test]
fn mutate_changes_about_one_percent_like_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = small(dir.path(), "base.db", 5);
    let one = dir.path().join("one.db");
    let two = dir.path().join("two.db");
    let other = dir.path().join("other.db");
    for p in [&one, &two, &other] {
        std::fs::copy(&base, p).unwrap();
    }
    let stats = mutate(&one, 0.01, 9).unwrap();
    let stats2 = mutate(&two, 0.01, 9).unwrap();
    mutate(&other, 0.01, 10).unwrap();
    assert_eq!(stats, stats2);
    assert_eq!(content(&one), content(&two), "mutate is not deterministic");
    assert_ne!(content(&one)["cdrs"], content(&other)["cdrs"]);

    let rows = total_rows(&base);
    let (ins, upd, del, per) = diff(&base, &one);
    let changed = ins + upd + del;
    assert!(
        changed * 200 >= rows && changed * 50 <= rows,
        "{changed} of {rows} rows changed: {per:?}"
    );
    assert_eq!(
        (stats.inserted, stats.updated, stats.deleted),
        (ins, upd, del),
        "{per:?}"
    );

    // Most of the change is new call records, on the day after the last one.
    let (cdr_ins, cdr_upd, cdr_del) = per["cdrs"];
    assert!(cdr_ins * 100 >= changed * 60, "{per:?}");
    assert!(cdr_upd > 0 && cdr_del == 0, "{per:?}");
    let conn = open(&one);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs WHERE started_at >= '2026-03-16'"
        ),
        cdr_ins
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs WHERE started_at >= '2026-03-17'"
        ),
        0
    );
    assert!(
        count(
            &conn,
            "SELECT count(DISTINCT customer_id) FROM cdrs WHERE started_at >= '2026-03-16'"
        ) > 100,
        "new records for few customers"
    );
    // Updates are spread over the CRM tables; old closed tickets go.
    assert!(
        per["customers"].1 > 0 && per["subscriptions"].1 > 0 && per["tickets"].1 > 0,
        "{per:?}"
    );
    assert!(per["tickets"].2 > 0, "{per:?}");
    assert_eq!(per["customers"].0 + per["customers"].2, 0);
    // The trigger stamped the status changes with the business clock.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM ticket_history WHERE changed_at = '2026-03-16T12:00:00Z'"
        ),
        per["tickets"].1
    );

    // The next day moves on.
    let s3 = mutate(&one, 0.01, 9).unwrap();
    assert!(s3.inserted > 0);
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM cdrs WHERE started_at >= '2026-03-17'"
        ) > 0
    );
}

#[test]
fn mutate_refuses_what_is_not_a_demo_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    assert!(matches!(
        mutate(&path, 0.01, 1),
        Err(DemoError::NotDemo { .. })
    ));
    assert!(matches!(
        mutate(&path, 0.0, 1),
        Err(DemoError::InvalidFraction { .. })
    ));
    assert!(mutate(&dir.path().join("missing.db"), 0.01, 1).is_err());
    assert!(!dir.path().join("missing.db").exists());
}

#[test]
fn byte_targets_land_within_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let target = 24u64 << 20;
    let path = dir.path().join("sized.db");
    let stats = generate(&path, DemoSize::Bytes(target), 3, &NoProgress).unwrap();
    let ratio = stats.bytes as f64 / target as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{} bytes for a {target} target",
        stats.bytes
    );
}

#[test]
fn demo_size_parses() {
    let p = |s: &str| s.parse::<DemoSize>();
    assert_eq!(p("small").unwrap(), DemoSize::Small);
    assert_eq!(p("Small").unwrap(), DemoSize::Small);
    assert_eq!(p("1g").unwrap(), DemoSize::Bytes(1 << 30));
    assert_eq!(p("4G").unwrap(), DemoSize::Bytes(4 << 30));
    assert_eq!(p("256m").unwrap(), DemoSize::Bytes(256 << 20));
    assert_eq!(p("1gib").unwrap(), DemoSize::Bytes(1 << 30));
    assert_eq!(p("1 GiB").unwrap(), DemoSize::Bytes(1 << 30));
    assert_eq!(p("500MB").unwrap(), DemoSize::Bytes(500_000_000));
    assert_eq!(p("1.5g").unwrap(), DemoSize::Bytes(3 << 29));
    assert_eq!(p("2097152").unwrap(), DemoSize::Bytes(2 << 20));
    for bad in ["", "g", "abc", "10x", "0", "100k", "1..5g", "-1g", "2t"] {
        let err = p(bad).unwrap_err();
        assert!(matches!(err, DemoError::InvalidSize { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("small"), "{err}");
    }
}

/// Manual measurement, not part of the suite:
/// `DEMO_SIZE=1g DEMO_OUT=<new file> cargo test --test demo_data measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure() {
    let size: DemoSize = std::env::var("DEMO_SIZE")
        .unwrap_or_else(|_| "small".into())
        .parse()
        .unwrap();
    let out =
        PathBuf::from(std::env::var("DEMO_OUT").expect("DEMO_OUT: a path for the new database"));
    struct Timer(std::time::Instant);
    impl Progress for Timer {
        fn phase(&self, name: &str, total: Option<u64>, unit: &'static str) {
            println!("{:>8.2?} {name} ({total:?} {unit})", self.0.elapsed());
        }
        fn finish_phase(&self) {
            println!("{:>8.2?} done", self.0.elapsed());
        }
    }
    let t = std::time::Instant::now();
    let stats = generate(&out, size, 1, &Timer(t)).unwrap();
    let gen = t.elapsed();
    println!("{size:?}: {stats:?} in {gen:?}");
    let copy = out.with_extension("mutated");
    std::fs::copy(&out, &copy).unwrap();
    let t = std::time::Instant::now();
    let m = mutate(&copy, 0.01, 1).unwrap();
    println!("mutate(0.01): {m:?} in {:?}", t.elapsed());
}
