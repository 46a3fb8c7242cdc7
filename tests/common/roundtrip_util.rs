//! Helpers of the end-to-end round-trip tests: an awkward SQLite database
//! built value by value, exact comparisons (ours, `compare` and `sqldiff`),
//! policy texts, file-tree snapshots and raw-byte searches over stored
//! objects.
#![allow(dead_code)]

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A customer name that must never be found outside the source database.
pub const NAME_MARKER: &str = "Zyxwvutsrq-NAME-MARKER-41d7";
/// Bytes placed inside a BLOB that must never be found in clear.
pub const BLOB_MARKER: &[u8] = b"BLOB-MARKER-c90e-\x00\x01-qwertz";
/// The prefix of every subject id of the awkward database.
pub const SUBJECT_PREFIX: &str = "SUBJ-7f3a9";

/// The subject ids used in the awkward database.
pub fn subject_ids() -> Vec<String> {
    (1..=6)
        .map(|i| format!("{SUBJECT_PREFIX}-{i:04}"))
        .collect()
}

/// Size of the one large BLOB of the awkward database.
pub const BIG_BLOB: usize = 3 * 1024 * 1024 + 123;

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough
/// that the big blob cannot dedup or compress to nothing.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn text(b: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(b))
}

fn blob(b: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(b))
}

/// The big blob: noise with NUL runs and the blob marker in the middle.
pub fn big_blob() -> Vec<u8> {
    let mut b = noise(BIG_BLOB, 0xC057_05BA_C0FF_EE01);
    for i in (0..b.len()).step_by(4093) {
        let end = (i + 64).min(b.len());
        b[i..end].fill(0);
    }
    let mid = b.len() / 2;
    b[mid..mid + BLOB_MARKER.len()].copy_from_slice(BLOB_MARKER);
    b
}

/// Builds a database with everything awkward a faithful restore must keep.
///
/// Tables listed in [`awkward_tables_toml`]: `customers` (identity, subject
/// `ref`) and `calls` (consumption, subject `customer_ref`, monthly period
/// on `started_at`). Not listed: `odd_values` (no primary key, no declared
/// types), `rate_card` (WITHOUT ROWID), `attachments` (the multi-MiB BLOB),
/// `audit` (filled by a trigger).
pub fn build_awkward(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        r#"
        PRAGMA user_version = 20260417;
        PRAGMA application_id = 1129666387;
        CREATE TABLE customers (
            id INTEGER PRIMARY KEY,
            ref TEXT NOT NULL UNIQUE,
            name TEXT,
            balance REAL,
            photo BLOB,
            calls_made INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            customer_ref TEXT,
            started_at TEXT,
            seconds INTEGER,
            note TEXT
        );
        CREATE TABLE odd_values (a, b, c);
        CREATE TABLE rate_card (
            zone TEXT NOT NULL,
            band INTEGER NOT NULL,
            price REAL,
            PRIMARY KEY (zone, band)
        ) WITHOUT ROWID;
        CREATE TABLE attachments (id INTEGER PRIMARY KEY, customer_ref TEXT, body BLOB);
        CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT);
        CREATE INDEX calls_long ON calls (seconds) WHERE seconds > 600;
        CREATE INDEX customers_lower_name ON customers (lower(name));
        CREATE INDEX customers_balance ON customers (balance DESC, ref COLLATE NOCASE);
        CREATE INDEX calls_note ON calls (note COLLATE RTRIM, seconds DESC);
        CREATE VIEW long_calls AS
            SELECT c.name, k.started_at, k.seconds FROM calls k JOIN customers c ON c.ref = k.customer_ref
            WHERE k.seconds > 600;
        "#,
    )
    .unwrap();

    // Customers: rowid gaps (1, 2, 7, 1000, 2^40, i64::MAX), the name
    // marker, Unicode of every kind, embedded NUL, values of other classes.
    let subjects = subject_ids();
    let names: Vec<Vec<u8>> = vec![
        NAME_MARKER.as_bytes().to_vec(),
        "Zoë Ångström-Łukasiewicz 日本語 テスト 🦀👩‍👩‍👧"
            .as_bytes()
            .to_vec(),
        "مرحبا עברית (RTL) e\u{301} combining, ZWJ\u{200d}, BOM\u{feff}, max \u{10ffff}"
            .as_bytes()
            .to_vec(),
        b"with\x00embedded\x00NULs\x00".to_vec(),
        Vec::new(),
        "plain".as_bytes().to_vec(),
    ];
    let ids: [i64; 6] = [1, 2, 7, 1000, 1 << 40, i64::MAX];
    for (i, ((id, subj), name)) in ids.iter().zip(&subjects).zip(&names).enumerate() {
        let photo = [0u8, 0, 1, 0, 255, 0, i as u8];
        c.execute(
            "INSERT INTO customers (id, ref, name, balance, photo) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, subj, text(name), -12.5 * i as f64, blob(&photo)],
        )
        .unwrap();
    }
    // A value whose class differs from its column's declared type: TEXT in
    // a REAL column, a BLOB in a TEXT column, NULL photo.
    c.execute(
        "UPDATE customers SET balance = 'n/a', name = ?1, photo = NULL WHERE id = 9223372036854775807",
        params![blob(b"\xff\xfe not text \x00")],
    )
    .unwrap();

    // The trigger exists before the calls are inserted, so `audit` and
    // `calls_made` are its results: a restore that fires it again doubles them.
    c.execute_batch(
        r#"
        CREATE TRIGGER calls_count AFTER INSERT ON calls BEGIN
            UPDATE customers SET calls_made = calls_made + 1 WHERE ref = NEW.customer_ref;
            INSERT INTO audit (what) VALUES ('call ' || NEW.id);
        END;
        "#,
    )
    .unwrap();
    let months = [
        "2025-11-30T23:59:59Z",
        "2025-12-01T00:00:00Z",
        "2026-01-15 08:30:00",
        "2026-02-28T12:00:00+02:00",
        "2026-03-01",
    ];
    let mut n = 0i64;
    for (si, subj) in subjects.iter().enumerate() {
        for (mi, m) in months.iter().enumerate() {
            for k in 0..(1 + (si + mi) % 3) {
                n += 1;
                c.execute(
                    "INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES (?1, ?2, ?3, ?4)",
                    params![subj, m, (n * 97) % 1500, format!("call {n}/{k} ☎")],
                )
                .unwrap();
            }
        }
    }
    // Awkward period and subject values: NULL subject, NULL time, a time
    // that does not parse, an integer where a time text is expected.
    c.execute_batch(
        r#"
        INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES (NULL, '2026-01-02T00:00:00Z', 5, 'no subject');
        INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES ('SUBJ-7f3a9-0002', NULL, 6, 'no time  ');
        INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES ('SUBJ-7f3a9-0003', 'not a date', 7, NULL);
        INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES ('SUBJ-7f3a9-0004', 1767225600, 8, 'unix time');
        INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES ('SUBJ-7f3a9-9999', '2026-02-01', 9, 'unknown customer');
        "#,
    )
    .unwrap();
    // Rowid gaps and a sqlite_sequence ahead of max(id).
    c.execute_batch(
        "DELETE FROM calls WHERE id % 4 = 0; DELETE FROM calls WHERE id = (SELECT max(id) FROM calls);",
    )
    .unwrap();

    // No primary key, no declared types: every storage class and extreme.
    let odd: Vec<[ToSqlOutput<'_>; 3]> = vec![
        [
            (-0.0f64).into(),
            f64::INFINITY.into(),
            f64::NEG_INFINITY.into(),
        ],
        [i64::MIN.into(), i64::MAX.into(), 0i64.into()],
        [f64::MIN_POSITIVE.into(), f64::MAX.into(), 5e-324f64.into()],
        [
            text(b"\x00leading NUL"),
            text(b"trailing NUL\x00"),
            text("\u{0}\u{1}\u{7f}\u{80}\u{fffd}".as_bytes()),
        ],
        [blob(b""), blob(b"\x00"), blob(&[0u8; 300])],
        [
            ToSqlOutput::from(rusqlite::types::Null),
            text(b""),
            ToSqlOutput::from(rusqlite::types::Null),
        ],
        [text(b"1"), 1i64.into(), 1.0f64.into()],
        [text(b"1"), 1i64.into(), 1.0f64.into()], // an exact duplicate row
    ];
    for row in &odd {
        c.execute(
            "INSERT INTO odd_values VALUES (?1, ?2, ?3)",
            params![row[0], row[1], row[2]],
        )
        .unwrap();
    }
    c.execute("DELETE FROM odd_values WHERE rowid = 3", [])
        .unwrap();

    for (zone, band, price) in [
        ("EU", 1, 0.05),
        ("EU", 2, 0.07),
        ("ROW", 1, 1.5),
        ("日本", -3, -0.0),
        ("", 0, f64::INFINITY),
    ] {
        c.execute(
            "INSERT INTO rate_card VALUES (?1, ?2, ?3)",
            params![zone, band, price],
        )
        .unwrap();
    }
    // A class that differs from the declared type inside the primary key.
    c.execute(
        "INSERT INTO rate_card VALUES (?1, 'x', NULL)",
        params![blob(b"\x00zone")],
    )
    .unwrap();

    let big = big_blob();
    c.execute(
        "INSERT INTO attachments (id, customer_ref, body) VALUES (10, ?1, ?2)",
        params![subjects[0], blob(&big)],
    )
    .unwrap();
    c.execute(
        "INSERT INTO attachments (id, customer_ref, body) VALUES (20, ?1, ?2)",
        params![subjects[1], blob(BLOB_MARKER)],
    )
    .unwrap();
}

/// `[[store.tables]]` entries for the awkward database (two of its six
/// tables; the others are backed up in the default class).
pub fn awkward_tables_toml() -> &'static str {
    r#"
[[store.tables]]
name = "customers"
class = "identity"
subject = "ref"

[[store.tables]]
name = "calls"
class = "consumption"
subject = "customer_ref"
period = { column = "started_at", every = "month" }
"#
}

/// A full sqlite policy text.
pub fn sqlite_policy(
    name: &str,
    db: &Path,
    identity: &Path,
    vault: &[String],
    targets: &[(&str, String, bool)],
    extra: &str,
) -> String {
    let mut s = format!(
        "[policy]\nname = \"{name}\"\n\n[store]\nkind = \"sqlite\"\npath = {}\n{}\n",
        toml_str(db),
        awkward_tables_toml()
    );
    s.push_str(&keys_and_targets(identity, vault, targets));
    s.push_str(extra);
    s
}

/// A database of `customers` customers (`ref` C000, C001, ...) and `calls`
/// calls spread over the 12 months of 2026, interleaved across customers,
/// rows of varying size.
pub fn build_calls_db(path: &Path, customers: i64, calls: i64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, ref TEXT NOT NULL, name TEXT);
         CREATE TABLE calls (id INTEGER PRIMARY KEY, customer_ref TEXT NOT NULL,
                             started_at TEXT NOT NULL, seconds INTEGER, note TEXT);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..customers {
        tx.execute(
            "INSERT INTO customers (ref, name) VALUES (?1, ?2)",
            params![format!("C{i:03}"), format!("Customer number {i}")],
        )
        .unwrap();
    }
    for i in 0..calls {
        let month = 1 + i * 12 / calls;
        tx.execute(
            "INSERT INTO calls (customer_ref, started_at, seconds, note) VALUES (?1, ?2, ?3, ?4)",
            params![
                format!("C{:03}", (i * 7919) % customers),
                format!("2026-{month:02}-{:02}T10:00:00Z", 1 + i % 28),
                (i * 37) % 3600,
                "n".repeat((i % 17) as usize)
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A temporary folder holding `calls.db`, made by `build`, and the policy
/// `policy` writes for it there.
pub fn calls_setup(
    build: fn(&Path),
    policy: fn(&Path, &Path) -> custos::policy::Policy,
) -> (tempfile::TempDir, PathBuf, custos::policy::Policy) {
    let tmp = crate::common::tempdir();
    let db = tmp.path().join("calls.db");
    build(&db);
    let p = policy(tmp.path(), &db);
    (tmp, db, p)
}

/// Destroys one key of the policy's vault directly (what a shred does at
/// its core), at every vault location.
pub async fn destroy_key(
    policy: &custos::policy::Policy,
    kind: custos::vault::KeyKind,
    name: &str,
) {
    let mut vault = custos::ops::open_vault(policy).await.unwrap();
    vault.destroy(kind, name).await.unwrap();
}

/// The `[[store.tables]]` of a [`build_calls_db`] database: customers by
/// subject, calls by subject and month.
pub const CALLS_TABLES: &str =
    "[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"ref\"\n\n\
     [[store.tables]]\nname = \"calls\"\nclass = \"consumption\"\nsubject = \"customer_ref\"\n\
     period = { column = \"started_at\", every = \"month\" }\n";

/// A policy file in `d` for the SQLite database `db` with the given
/// `[[store.tables]]` sections: fresh keys, a vault folder and one
/// `file://` target folder (`d/vault`, `d/target`). Returns its path.
pub fn write_local_policy(d: &Path, name: &str, db: &Path, tables: &str) -> PathBuf {
    fs::create_dir_all(d.join("target")).unwrap();
    let target = crate::common::file_url(&d.join("target"));
    write_policy(d, name, db, tables, target, "")
}

/// As [`write_local_policy`], with the one target at `target` and `extra`
/// appended (an `[s3]` section, say).
pub fn write_policy(
    d: &Path,
    name: &str,
    db: &Path,
    tables: &str,
    target: String,
    extra: &str,
) -> PathBuf {
    let keys = custos::keys::init_keys(&d.join("keys")).unwrap();
    fs::create_dir_all(d.join("vault")).unwrap();
    let vault = crate::common::file_url(&d.join("vault"));
    let text = format!(
        "[policy]\nname = \"{name}\"\n\n[store]\nkind = \"sqlite\"\npath = {}\n\n{tables}\n{}{extra}",
        toml_str(db),
        keys_and_targets(&keys.identity_path, &[vault], &[("primary", target, false)])
    );
    let path = d.join("policy.toml");
    fs::write(&path, &text).unwrap();
    path
}

/// The `[keys]` and `[[targets]]` sections.
pub fn keys_and_targets(
    identity: &Path,
    vault: &[String],
    targets: &[(&str, String, bool)],
) -> String {
    let vault: Vec<String> = vault.iter().map(|v| format!("\"{v}\"")).collect();
    let mut s = format!(
        "\n[keys]\nidentity = {}\nrecipients = []\nvault = [{}]\n",
        toml_str(identity),
        vault.join(", ")
    );
    for (name, url, offsite) in targets {
        s.push_str(&format!(
            "\n[[targets]]\nname = \"{name}\"\nurl = \"{url}\"\noffsite = {offsite}\n"
        ));
    }
    s
}

/// A path as a TOML basic string.
pub fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("a UTF-8 path"))
}

/// Every value of every table (and sqlite_sequence, and the pragmas), with
/// its storage class and exact bits: stricter than `compare` on REALs
/// (`-0.0` vs `0.0`) and independent of it.
pub fn exact_dump(path: &Path) -> BTreeMap<String, Vec<String>> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out = BTreeMap::new();
    let tables: Vec<(String, String)> = {
        let mut st = c
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let r = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .unwrap();
        r.collect::<Result<_, _>>().unwrap()
    };
    for (t, sql) in tables {
        let without_rowid = sql.to_ascii_uppercase().contains("WITHOUT ROWID");
        let q = if without_rowid {
            format!("SELECT * FROM \"{t}\"")
        } else {
            format!("SELECT rowid, * FROM \"{t}\"")
        };
        let mut st = c.prepare(&q).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut lines = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            let mut line = Vec::new();
            for i in 0..n {
                line.push(match r.get_ref(i).unwrap() {
                    ValueRef::Null => "null".to_string(),
                    ValueRef::Integer(v) => format!("int:{v}"),
                    ValueRef::Real(v) => format!("real:{:016x}", v.to_bits()),
                    ValueRef::Text(b) => format!("text:{}:{}", b.len(), blake3::hash(b).to_hex()),
                    ValueRef::Blob(b) => format!("blob:{}:{}", b.len(), blake3::hash(b).to_hex()),
                });
            }
            lines.push(line.join("|"));
        }
        lines.sort(); // WITHOUT ROWID and no-PK order is not what we compare
        out.insert(t, lines);
    }
    let mut pragmas = Vec::new();
    for p in ["user_version", "application_id"] {
        let v: i64 = c
            .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
            .unwrap();
        pragmas.push(format!("{p}={v}"));
    }
    let mut st = c
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    let schema = st
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?.unwrap_or_default()
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    pragmas.extend(schema);
    out.insert(" pragmas and schema".into(), pragmas);
    out
}

/// Whether `sqldiff` can be run.
pub fn sqldiff_available() -> bool {
    Command::new("sqldiff").arg("--help").output().is_ok()
}

/// Asserts that `restored` equals `source`: our exact dump, the crate's
/// `compare`, and `sqldiff` (skipped loudly if it is not installed).
pub fn assert_same_db(source: &Path, restored: &Path) {
    let cmp = custos::store::compare::compare(source, restored).unwrap();
    assert!(
        cmp.differences.is_empty(),
        "compare found differences between {} and {}: {:#?}",
        source.display(),
        restored.display(),
        cmp.differences
    );
    assert!(cmp.tables > 0, "compare compared no table");
    let (a, b) = (exact_dump(source), exact_dump(restored));
    for (t, rows) in &a {
        assert_eq!(Some(rows), b.get(t), "table `{t}` differs (exact dump)");
    }
    assert_eq!(a.len(), b.len(), "the restored database has other tables");
    if !sqldiff_available() {
        eprintln!(
            "!!!!! sqldiff NOT FOUND: the sqldiff half of this comparison is SKIPPED (install sqlite3-tools) !!!!!"
        );
        return;
    }
    for args in [&[][..], &["--schema"][..]] {
        let out = Command::new("sqldiff")
            .args(args)
            .arg(source)
            .arg(restored)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sqldiff {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "sqldiff {args:?} found differences:\n{}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4000)])
        );
    }
}

/// Asserts that two databases differ (so equality checks can fail).
pub fn assert_different_db(a: &Path, b: &Path) {
    let cmp = custos::store::compare::compare(a, b).unwrap();
    assert!(
        !cmp.differences.is_empty(),
        "{} and {} were expected to differ",
        a.display(),
        b.display()
    );
}

/// Every regular file under `root` (recursively, not following links),
/// with its bytes.
pub fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push((e.path(), fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// BLAKE3 of every file under `root` (path → hash), for "nothing changed".
pub fn hash_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    all_files(root)
        .into_iter()
        .map(|(p, b)| (p, blake3::hash(&b).to_hex().to_string()))
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Panics naming every file under `roots` that contains one of `needles`
/// (name, bytes). Returns how many files were searched.
pub fn assert_absent(roots: &[&Path], needles: &[(String, Vec<u8>)]) -> usize {
    let mut hits = Vec::new();
    let mut n = 0;
    for root in roots {
        for (path, bytes) in all_files(root) {
            n += 1;
            for (what, needle) in needles {
                if contains(&bytes, needle) {
                    hits.push(format!("{what} found in {}", path.display()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "leaks:\n{}", hits.join("\n"));
    n
}

/// The 32 secret bytes of an age x25519 identity (`AGE-SECRET-KEY-1...`,
/// bech32), read from an identity file.
pub fn age_secret_bytes(identity_file: &Path) -> (String, Vec<u8>) {
    let text = fs::read_to_string(identity_file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an AGE-SECRET-KEY line")
        .to_string();
    let lower = line.to_ascii_lowercase();
    let data = &lower[lower.rfind('1').unwrap() + 1..];
    const CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let fives: Vec<u8> = data
        .chars()
        .map(|c| CHARSET.find(c).expect("bech32 character") as u8)
        .collect();
    let fives = &fives[..fives.len() - 6]; // checksum
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for v in fives {
        acc = (acc << 5) | *v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    assert_eq!(out.len(), 32, "an x25519 secret is 32 bytes");
    (line, out)
}

/// One entry of a file tree as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    File {
        mode: u32,
        mtime: (i64, i64),
        hash: String,
        len: u64,
    },
    Link {
        target: PathBuf,
    },
}

/// Everything under `root` (not the root itself): relative path → node.
pub fn tree_state(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.permissions().mode() & 0o7777;
            let mtime = (m.mtime(), m.mtime_nsec());
            let node = if m.file_type().is_symlink() {
                Node::Link {
                    target: fs::read_link(&p).unwrap(),
                }
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir { mode, mtime }
            } else {
                let b = fs::read(&p).unwrap();
                Node::File {
                    mode,
                    mtime,
                    hash: blake3::hash(&b).to_hex().to_string(),
                    len: b.len() as u64,
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// A backup with small read windows (32 KiB of rows) and small packs
/// (48 KiB): many of each, and packs shared by windows.
pub async fn backup_small(policy: &custos::policy::Policy) -> custos::ops::backup::BackupReport {
    let opts = custos::ops::backup::BackupOptions {
        window_budget: 32 << 10,
        pack_size: 48 << 10,
        ..Default::default()
    };
    custos::ops::backup::backup(
        policy,
        &opts,
        std::sync::Arc::new(custos::progress::NoProgress),
    )
    .await
    .unwrap()
}

/// Restores `snapshot` of the policy's primary target to the new file `to`.
pub async fn try_restore(
    policy: &custos::policy::Policy,
    snapshot: &str,
    to: &Path,
) -> Result<custos::ops::restore::RestoreReport, custos::ops::OpsError> {
    let opts = custos::ops::restore::RestoreOptions {
        target: None,
        snapshot: snapshot.to_string(),
        to: to.to_path_buf(),
        force: false,
        only: Default::default(),
    };
    custos::ops::restore::restore(
        policy,
        &opts,
        std::sync::Arc::new(custos::progress::NoProgress),
    )
    .await
}
