//! PostgreSQL record stores, end to end through the `custos` binary against
//! a real PostgreSQL cluster started by the test (tests/common/pg.rs).

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::file_url;
use custos::ops::backup::{BackupOptions, BackupReport, TableSummary};
use custos::ops::restore::{RestoreOptions, RestoreReport};
use custos::ops::OpsError;
use custos::policy::Policy;
use custos::progress::NoProgress;
use pg::{PgCluster, PASSWORD, TELECOM_SQL};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A policy for the database at `url`, with `tables`, the password read
/// from `pw_file`; initialised (keys, vault, target) on first use.
async fn policy(d: &Path, url: &str, tables: &str, pw_file: &str) -> Policy {
    let keys = d.join("keys");
    let first = !keys.join("service.age").exists();
    if first {
        custos::keys::init_keys(&keys).unwrap();
        fs::write(d.join("pw"), PASSWORD).unwrap();
    }
    let text = format!(
        "[policy]\nname = \"billing\"\n\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n\
         password_file = \"{pw_file}\"\n{tables}\n\
         [keys]\nidentity = {:?}\nrecipients = []\nvault = [\"{}\"]\n\n\
         [[targets]]\nname = \"primary\"\nurl = \"{}\"\n",
        keys.join("service.age").to_str().unwrap(),
        file_url(&d.join("vault")),
        file_url(&d.join("target")),
    );
    let p = d.join("policy.toml");
    fs::write(&p, text).unwrap();
    let policy = Policy::load(&p).unwrap_or_else(|e| panic!("{e}"));
    if first {
        custos::ops::init::init(&policy).await.unwrap();
    }
    policy
}

async fn backup(p: &Policy) -> Result<BackupReport, OpsError> {
    custos::ops::backup::backup(p, &BackupOptions::default(), Arc::new(NoProgress)).await
}

async fn restore(p: &Policy, to: &str, force: bool) -> Result<RestoreReport, OpsError> {
    let opts = RestoreOptions {
        target: None,
        snapshot: "latest".into(),
        to: PathBuf::from(to),
        force,
        only: Default::default(),
    };
    custos::ops::restore::restore(p, &opts, Arc::new(NoProgress)).await
}

const TELECOM_TABLES: &str = r#"
[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = { column = "started_at", every = "month" }

[[store.tables]]
name = "invoices"
class = "business"
subject = "customer_id"
period = { column = "issued", every = "day" }

[[store.tables]]
name = "billing.rates"
class = "business"
"#;

fn table<'a>(report: &'a BackupReport, name: &str) -> &'a TableSummary {
    report
        .tables
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("table {name} in {report:?}"))
}

/// Objects written under `snapshots/` and `data/` of the target.
fn stored_objects(d: &Path) -> usize {
    ["snapshots", "data"]
        .iter()
        .map(|s| walk(&d.join("target").join(s)))
        .sum()
}

fn walk(p: &Path) -> usize {
    match fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum(),
        Err(_) => 0,
    }
}

fn assert_same_dump(pg: &PgCluster, a: &str, b: &str) {
    let (x, y) = (pg.dump_sorted(a), pg.dump_sorted(b));
    assert!(x.len() > 1000, "the source dump has its rows");
    if x != y {
        let only_x: Vec<_> = x.iter().filter(|l| !y.contains(l)).take(10).collect();
        let only_y: Vec<_> = y.iter().filter(|l| !x.contains(l)).take(10).collect();
        panic!(
            "pg_dump of {a} and {b} differ:\nonly in {a}: {only_x:#?}\nonly in {b}: {only_y:#?}"
        );
    }
}

/// A cluster whose database `src` holds the telecom schema and rows, and
/// a folder for the test's keys, vault and target.
fn telecom_source() -> Option<(PgCluster, tempfile::TempDir)> {
    PgCluster::start().map(with_telecom)
}

/// `pg` with database `src` holding the telecom schema and rows, and a
/// folder for the test's keys, vault and target.
fn with_telecom(pg: PgCluster) -> (PgCluster, tempfile::TempDir) {
    pg.createdb("src");
    pg.psql("src", TELECOM_SQL);
    (pg, common::tempdir())
}

fn pw(d: &Path) -> String {
    d.join("pw").to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_to_database_and_sql_file_equals_source_by_pg_dump() {
    let Some(pg) = PgCluster::start() else { return };
    let tmp = common::tempdir();
    let d = tmp.path();
    pg.createdb("src");
    pg.pgbench_init("src", 1);
    pg.psql("src", TELECOM_SQL);
    let p = policy(d, &pg.url("src"), TELECOM_TABLES, &pw(d)).await;
    let b = backup(&p).await.unwrap();
    assert_eq!(b.store_kind, "postgres");
    assert_eq!(table(&b, "pgbench_accounts").rows, 100_000);
    assert_eq!(table(&b, "customers").rows, 301);
    assert_eq!(table(&b, "billing.rates").rows, 3);
    // Groups are (table, subject, period) exactly as for SQLite: one per
    // customer (the NULL id-less row has none: ids are never NULL here);
    // one per (customer, month) of calls; one per (customer, day) of
    // invoices; one for an unlisted table.
    assert_eq!(table(&b, "customers").groups, 301);
    let cdr_groups: u64 = pg
        .psql(
            "src",
            "SELECT count(DISTINCT (customer_id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM'))) FROM cdrs",
        )
        .parse()
        .unwrap();
    assert_eq!(table(&b, "cdrs").groups, cdr_groups);
    let inv_groups: u64 = pg
        .psql(
            "src",
            "SELECT count(DISTINCT (customer_id, issued)) FROM invoices",
        )
        .parse()
        .unwrap();
    assert_eq!(table(&b, "invoices").groups, inv_groups);
    assert_eq!(table(&b, "pgbench_branches").groups, 1);

    // `custos check --read-data` opens every group's chunks.
    let c = custos::ops::check::check(&p, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(c.ok, "check found problems: {:#?}", c.findings);
    let groups: u64 = b.tables.iter().map(|t| t.groups).sum();
    assert!(
        c.chunks_checked >= groups,
        "check opened {} chunks for {groups} groups",
        c.chunks_checked
    );

    // Into an empty database.
    pg.createdb("dst");
    let r = restore(&p, &pg.url("dst"), false).await.unwrap();
    assert_eq!(r.rows_shredded, 0);
    assert_eq!(r.items, b.items);
    assert_same_dump(&pg, "src", "dst");
    // The trigger is back and works, the sequences continue.
    pg.psql("dst", "INSERT INTO customers (name) VALUES ('new')");
    assert_eq!(
        pg.psql("dst", "SELECT what FROM audit ORDER BY ctid DESC LIMIT 1"),
        "INSERT 302"
    );
    assert_eq!(pg.psql("dst", "SELECT nextval('cdrs_id_seq')"), "5001");

    // A non-empty database is refused, then replaced with --force.
    let e = restore(&p, &pg.url("dst"), false).await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    restore(&p, &pg.url("dst"), true).await.unwrap();
    assert_same_dump(&pg, "src", "dst");

    // As a plain SQL script, loaded with psql.
    let sql = d.join("billing.sql");
    restore(&p, sql.to_str().unwrap(), false).await.unwrap();
    let text = fs::read_to_string(&sql).unwrap();
    assert!(text.contains("COPY \"public\".\"cdrs\""));
    assert!(!text.contains(PASSWORD));
    let e = restore(&p, sql.to_str().unwrap(), false).await.unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    pg.createdb("fromfile");
    pg.psql_file("fromfile", &sql);
    assert_same_dump(&pg, "src", "fromfile");

    // Nothing of the data or the password is stored in clear.
    let needle = b"quote's \"double\"";
    for f in all_files(&d.join("target")) {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} holds a customer name in clear",
            f.display()
        );
        assert!(!bytes
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()));
    }
}

fn all_files(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                v.extend(all_files(&e.path()));
            } else {
                v.push(e.path());
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_concurrent_writes_restores_one_committed_state() {
    let Some(pg) = PgCluster::start() else { return };
    let tmp = common::tempdir();
    let d = tmp.path();
    pg.createdb("src");
    pg.pgbench_init("src", 2);
    let p = policy(d, &pg.url("src"), "", &pw(d)).await;
    // pgbench's TPC-B-like transaction moves `delta` into one account, its
    // teller and its branch and logs it in history: in every committed
    // state the four sums are equal. A read that is not one snapshot sees
    // them differ.
    let mut writer = pg
        .tool("pgbench")
        .args(["-n", "-c", "2", "-T", "600", "src"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let count = |db: &str| -> u64 {
        pg.psql(db, "SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap()
    };
    while count("src") < 200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = count("src");
    let b = backup(&p).await;
    let after = count("src");
    let _ = writer.kill();
    let _ = writer.wait();
    b.unwrap();
    assert!(after > before, "the writer committed while the backup ran");
    pg.createdb("dst");
    restore(&p, &pg.url("dst"), false).await.unwrap();
    let sums = pg.psql(
        "dst",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let v: Vec<&str> = sums.split(' ').collect();
    assert_eq!(v.len(), 4, "{sums}");
    assert!(v.iter().all(|x| *x == v[0]), "sums differ: {sums}");
    let restored = count("dst");
    assert!(
        restored >= before && restored <= after,
        "restored {restored} history rows, source had {before} before and {after} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_any_data_moves() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    let good = policy(d, &pg.url("src"), TELECOM_TABLES, &pw(d)).await;
    let base = stored_objects(d);

    // Wrong password.
    let wrong = d.join("wrong-pw");
    fs::write(&wrong, "not-the-password\n").unwrap();
    let p = policy(d, &pg.url("src"), TELECOM_TABLES, wrong.to_str().unwrap()).await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
    assert!(
        !e.contains("not-the-password"),
        "the password is not shown: {e}"
    );

    // Password file missing.
    let p = policy(d, &pg.url("src"), TELECOM_TABLES, "/nonexistent/pw").await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("password_file"), "{e}");

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://postgres@127.0.0.1:{port}/src");
    let p = policy(d, &url, TELECOM_TABLES, &pw(d)).await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");

    // TLS required of a server that has none.
    let p = policy(
        d,
        &format!("{}?sslmode=require", pg.url("src")),
        TELECOM_TABLES,
        &pw(d),
    )
    .await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("TLS") && e.contains("sslmode"), "{e}");

    // A listed table that does not exist.
    let t = "[[store.tables]]\nname = \"subscribers\"\nclass = \"identity\"\nsubject = \"id\"\n";
    let p = policy(d, &pg.url("src"), t, &pw(d)).await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(
        e.contains("subscribers") && e.contains("does not exist"),
        "{e}"
    );

    // A subject column the table does not have.
    let t = "[[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nsubject = \"msisdn\"\n";
    let p = policy(d, &pg.url("src"), t, &pw(d)).await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("cdrs") && e.contains("msisdn"), "{e}");

    // A period column that is not a time.
    let t = "[[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nperiod = { column = \"meta\", every = \"day\" }\n";
    let p = policy(d, &pg.url("src"), t, &pw(d)).await;
    let e = backup(&p).await.unwrap_err().to_string();
    assert!(e.contains("not a time"), "{e}");

    assert_eq!(stored_objects(d), base, "no data was written");
    // And the good policy works.
    backup(&good).await.unwrap();
    assert!(stored_objects(d) > base);
}

/// Large objects are not backed up: a database holding one is refused
/// before any data moves, unless the policy says `large_objects = "skip"`;
/// then the restore has the tables and no large object at all (not an
/// empty one where the source had a customer's letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_refused_unless_skipped_and_never_restored_empty() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    pg.psql(
        "src",
        "CREATE TABLE letters (id int PRIMARY KEY, customer_id int, body oid);\n\
         INSERT INTO letters VALUES (1, 7, lo_from_bytea(0, 'dear customer 7'::bytea)),\n\
         (2, 8, lo_from_bytea(0, 'dear customer 8'::bytea));",
    );
    let refused = policy(d, &pg.url("src"), TELECOM_TABLES, &pw(d)).await;
    let before = stored_objects(d);
    let e = backup(&refused).await.unwrap_err().to_string();
    assert!(
        e.contains("2 large objects") && e.contains("large_objects = \"skip\""),
        "{e}"
    );
    assert!(!e.contains("dear customer"), "no content in the error: {e}");
    assert_eq!(stored_objects(d), before, "nothing was written");

    let skip = format!("large_objects = \"skip\"\n{TELECOM_TABLES}");
    let p = policy(d, &pg.url("src"), &skip, &pw(d)).await;
    let b = backup(&p).await.unwrap();
    assert_eq!(b.large_objects_skipped, 2);
    assert_eq!(table(&b, "letters").rows, 2);

    pg.createdb("dst");
    restore(&p, &pg.url("dst"), false).await.unwrap();
    assert_eq!(
        pg.psql("dst", "SELECT count(*) FROM pg_largeobject_metadata"),
        "0",
        "no large object is created empty"
    );
    // Everything but the large objects is the source's.
    pg.psql("src", "SELECT lo_unlink(body) FROM letters");
    assert_same_dump(&pg, "src", "dst");

    // A database without large objects needs no setting.
    pg.createdb("plain");
    pg.psql("plain", TELECOM_SQL);
    let p = policy(d, &pg.url("plain"), TELECOM_TABLES, &pw(d)).await;
    assert_eq!(backup(&p).await.unwrap().large_objects_skipped, 0);
}

/// Rows of an extension's configuration tables (what
/// `pg_extension_config_dump` marks: pgq's queues, pg_cron's jobs) and its
/// configuration sequences are backed up, and restored after `CREATE
/// EXTENSION` in the order of the tables' keys, as pg_dump's data section
/// would; a drill compares them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_configuration_rows_are_backed_up_restored_and_drilled() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    assert_eq!(
        pg.psql(
            "src",
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pgq'"
        ),
        "1",
        "the extension pgq is missing: install Debian's postgresql-15-pgq3 (scripts/test.sh does)"
    );
    // pgq keeps its queues, consumers, subscriptions and ticks in
    // configuration tables (with foreign keys between them) and its batch
    // ids in a configuration sequence: CREATE EXTENSION makes them empty.
    // One transaction each: a tick takes the snapshot of the events
    // committed before it.
    for sql in [
        "CREATE EXTENSION pgq",
        "SELECT pgq.create_queue('invoices')",
        "SELECT pgq.register_consumer('invoices', 'billing')",
        "SELECT pgq.insert_event('invoices', 'issued', 'customer 7')",
        "SELECT pgq.force_tick('invoices')",
        "SELECT pgq.ticker('invoices')",
        "SELECT pgq.finish_batch(pgq.next_batch('invoices', 'billing'))",
        "SELECT pgq.insert_event('invoices', 'issued', 'customer 8')",
        "SELECT pgq.force_tick('invoices')",
        "SELECT pgq.ticker('invoices')",
        "SELECT pgq.next_batch('invoices', 'billing')",
    ] {
        pg.psql("src", sql);
    }
    assert_eq!(
        pg.psql("src", "SELECT ev_data FROM pgq.get_batch_events(2)"),
        "customer 8"
    );
    let tables = format!("{TELECOM_TABLES}{DRILL_PGQ}");
    let p = policy(d, &pg.url("src"), &tables, &pw(d)).await;
    let b = backup(&p).await.unwrap();
    assert_eq!(b.extension_config_skipped, 0);
    assert_eq!(table(&b, "pgq.queue").rows, 1);
    assert_eq!(table(&b, "pgq.subscription").rows, 1);
    assert_eq!(table(&b, "pgq.tick").rows, 3);
    // Configuration tables come after the others, a table after those its
    // foreign keys point at.
    let at = |n: &str| b.tables.iter().position(|t| t.name == n).unwrap();
    assert!(at("billing.rates") < at("pgq.consumer"));
    assert!(
        at("pgq.queue") < at("pgq.subscription") && at("pgq.consumer") < at("pgq.subscription")
    );
    assert!(at("pgq.queue") < at("pgq.tick"));

    // A restore creates the extension, then fills its tables and sets its
    // sequence: pg_dump (which dumps configuration rows and sequences) of
    // the restore equals the source's.
    pg.createdb("dst");
    restore(&p, &pg.url("dst"), false).await.unwrap();
    assert_same_dump(&pg, "src", "dst");
    assert_eq!(
        pg.psql("dst", "SELECT last_value FROM pgq.batch_id_seq"),
        pg.psql("src", "SELECT last_value FROM pgq.batch_id_seq")
    );
    // The restored queue goes on: its consumer gets the open batch and its
    // events again, and the next batch id follows the source's.
    let dst = |sql: &str| pg.psql("dst", sql);
    assert_eq!(dst("SELECT pgq.next_batch('invoices', 'billing')"), "2");
    assert_eq!(
        dst("SELECT ev_data FROM pgq.get_batch_events(2)"),
        "customer 8"
    );
    dst("SELECT pgq.finish_batch(2)");
    dst("SELECT pgq.insert_event('invoices', 'issued', 'customer 9')");
    dst("SELECT pgq.force_tick('invoices')");
    dst("SELECT pgq.ticker('invoices')");
    assert_eq!(dst("SELECT pgq.next_batch('invoices', 'billing')"), "3");
    // The script form holds them too.
    let script = d.join("restore.sql");
    restore(&p, script.to_str().unwrap(), false).await.unwrap();
    pg.createdb("from_script");
    pg.psql_file("from_script", &script);
    assert_same_dump(&pg, "src", "from_script");

    // A drill reads them back from its scratch database and compares.
    let out = drill(&p, d).await;
    let r = &out.report;
    assert_eq!(
        r.verdict,
        custos::drill::report::Verdict::Pass,
        "{:?}",
        r.reasons
    );
    let queue = r.tables.iter().find(|t| t.name == "pgq.queue").unwrap();
    assert!(
        queue.count_ok && queue.checksum_ok == Some(true),
        "{queue:?}"
    );
    assert!(r.assertions.iter().all(|a| a.passed), "{:?}", r.assertions);
}

const DRILL_PGQ: &str = r#"
[drill]
[[drill.assert]]
sql = "SELECT count(*) FROM pgq.subscription"
expect = 1
"#;

/// Where a backup cannot keep configuration rows (the policy says
/// `refuse`, or reads chosen schemas, whose dump leaves the extension
/// out), a database whose configuration tables hold rows is refused
/// before any data moves, unless the policy says `skip`. Only rows the
/// extension's condition selects count, as for pg_dump. (The test marks a
/// table in the catalog as an extension's script would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_configuration_rows_that_cannot_be_kept_are_refused_unless_skipped() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    pg.psql(
        "src",
        "CREATE EXTENSION pg_trgm;\n\
         CREATE TABLE public.trgm_jobs (id int PRIMARY KEY, command text, builtin bool);\n\
         INSERT INTO trgm_jobs VALUES (1, 'vacuum customer 7', false), (2, 'vacuum customer 8', false), (3, 'default', true);\n\
         ALTER EXTENSION pg_trgm ADD TABLE public.trgm_jobs;\n\
         UPDATE pg_extension SET extconfig = ARRAY['public.trgm_jobs'::regclass::oid],\n\
           extcondition = ARRAY['WHERE NOT builtin'] WHERE extname = 'pg_trgm';",
    );
    // The policy refuses them; or it reads chosen schemas, whose dump
    // leaves the extension out, so a restore could not create the table.
    let refuse = format!("extension_config = \"refuse\"\n{TELECOM_TABLES}");
    let schemas = format!("schemas = [\"public\", \"billing\"]\n{TELECOM_TABLES}");
    for (tables, why) in [
        (&refuse, "the policy says"),
        (&schemas, "with `schemas` set"),
    ] {
        let p = policy(d, &pg.url("src"), tables, &pw(d)).await;
        let before = stored_objects(d);
        let e = backup(&p).await.unwrap_err().to_string();
        assert!(
            e.contains("public.trgm_jobs of extension pg_trgm: 2 rows")
                && e.contains(why)
                && e.contains("extension_config = \"skip\""),
            "{e}"
        );
        assert!(!e.contains("customer 7"), "no content in the error: {e}");
        assert_eq!(stored_objects(d), before, "nothing was written");
    }

    let skip = format!("extension_config = \"skip\"\n{TELECOM_TABLES}");
    let p = policy(d, &pg.url("src"), &skip, &pw(d)).await;
    let b = backup(&p).await.unwrap();
    assert_eq!(b.extension_config_skipped, 2);
    assert!(b.tables.iter().all(|t| t.name != "trgm_jobs"), "{b:?}");

    // Rows the extension's condition leaves out do not count, and an
    // empty configuration table is no reason to refuse.
    pg.psql("src", "UPDATE trgm_jobs SET builtin = true");
    let p = policy(d, &pg.url("src"), &schemas, &pw(d)).await;
    let b = backup(&p).await.unwrap();
    assert_eq!(b.extension_config_skipped, 0);
    assert!(b.tables.iter().all(|t| t.name != "trgm_jobs"), "{b:?}");
}

async fn restore_only(
    p: &Policy,
    to: &str,
    tables: &[&str],
    subject: Option<&str>,
) -> Result<RestoreReport, OpsError> {
    let opts = RestoreOptions {
        target: None,
        snapshot: "latest".into(),
        to: PathBuf::from(to),
        force: false,
        only: custos::ops::restore::Selection {
            tables: tables.iter().map(|t| t.to_string()).collect(),
            subject: subject.map(str::to_string),
        },
    };
    custos::ops::restore::restore(p, &opts, Arc::new(NoProgress)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_restores_take_one_customer_or_some_tables_without_foreign_keys() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    // (`allow` against a server without TLS connects without it.)
    let url = format!("{}?sslmode=allow", pg.url("src"));
    let p = policy(d, &url, TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
    let rows = |db: &str, sql: &str| pg.psql(db, sql);
    let fks = |db: &str| rows(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'");

    // One customer: its rows in every table with a subject, equal to the
    // source's; the other tables empty; no foreign key, the other
    // constraints and indexes there; no trigger fired on the rows.
    pg.createdb("one");
    let r = restore_only(&p, &pg.url("one"), &[], Some("7"))
        .await
        .unwrap();
    assert!(r.partial && r.subject.is_some());
    let mut left_out = r.foreign_keys_left_out.clone();
    left_out.sort();
    assert_eq!(
        left_out,
        [
            "public.cdrs cdrs_customer_id_fkey",
            "public.invoices invoices_customer_id_fkey"
        ]
    );
    for (table, filter) in [
        ("customers", "id"),
        ("cdrs", "customer_id"),
        ("invoices", "customer_id"),
    ] {
        let sql = format!("SELECT * FROM {table} WHERE {filter} = 7 ORDER BY 1");
        let want = rows("src", &sql);
        assert!(!want.is_empty(), "customer 7 has rows in {table}");
        assert_eq!(rows("one", &sql), want, "{table}");
        assert_eq!(
            rows(
                "one",
                &format!("SELECT count(*) FROM {table} WHERE {filter} <> 7")
            ),
            "0",
            "{table}: only customer 7"
        );
        let t = r.tables.iter().find(|t| t.name == table).unwrap();
        assert_eq!(t.rows_restored, t.rows_expected);
    }
    for table in ["audit", "billing.rates"] {
        assert_eq!(rows("one", &format!("SELECT count(*) FROM {table}")), "0");
    }
    assert_eq!(fks("one"), "0");
    assert_ne!(fks("src"), "0");
    assert_eq!(rows("one", "SELECT count(*) FROM pg_indexes WHERE indexname IN ('cdrs_customer', 'customers_pkey')"), "2");
    assert_eq!(
        rows(
            "one",
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'customers_audit'"
        ),
        "1"
    );

    // Some tables: the call records alone restore (their foreign key to
    // the customers, left empty, would refuse them), as a database and
    // as a script.
    pg.createdb("calls");
    let r = restore_only(&p, &pg.url("calls"), &["cdrs", "billing.rates"], None)
        .await
        .unwrap();
    assert_eq!(r.tables.len(), 2);
    for table in ["cdrs", "billing.rates"] {
        let sql = format!("SELECT * FROM {table} ORDER BY 1");
        assert_eq!(rows("calls", &sql), rows("src", &sql), "{table}");
    }
    assert_eq!(rows("calls", "SELECT count(*) FROM customers"), "0");
    let script = d.join("calls.sql");
    restore_only(&p, script.to_str().unwrap(), &["cdrs"], None)
        .await
        .unwrap();
    pg.createdb("calls_script");
    pg.psql_file("calls_script", &script);
    let sql = "SELECT * FROM cdrs ORDER BY 1";
    assert_eq!(rows("calls_script", sql), rows("src", sql));
    assert_eq!(fks("calls_script"), "0");

    // A selection that names no table of the snapshot, or a customer the
    // vault has no key of, is refused before the database is touched.
    pg.createdb("untouched");
    let e = restore_only(&p, &pg.url("untouched"), &["nope"], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no table `nope`") && e.contains("billing.rates"),
        "{e}"
    );
    let e = restore_only(&p, &pg.url("untouched"), &[], Some("999999"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no key of the subject") && !e.contains("999999"),
        "{e}"
    );
    assert_eq!(
        rows(
            "untouched",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_subject_and_shredded_period_are_left_out_and_counted() {
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    let p = policy(d, &pg.url("src"), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();

    // Erase customer 7 (the subject key of its pseudonym) and shred the
    // calls of January 2026 (the period key), as the shredding jobs will.
    let mut vault = custos::ops::open_vault(&p).await.unwrap();
    let pseudo = custos::crypto::subject_pseudonym(vault.pseudonym_key(), "7");
    vault
        .destroy(custos::vault::KeyKind::Subject, &pseudo)
        .await
        .unwrap();
    vault
        .destroy(custos::vault::KeyKind::Period, "consumption:2026-01")
        .await
        .unwrap();
    drop(vault);

    let count = |sql: &str| -> u64 { pg.psql("src", sql).parse().unwrap() };
    let cdrs_gone = count(
        "SELECT count(*) FROM cdrs WHERE customer_id = 7 \
         OR started_at < '2026-02-01 00:00:00+00'",
    );
    let invoices_gone = count("SELECT count(*) FROM invoices WHERE customer_id = 7");
    assert!(cdrs_gone > 100 && invoices_gone > 0);

    pg.createdb("dst");
    let r = restore(&p, &pg.url("dst"), false).await.unwrap();
    let shredded = |t: &str| r.tables.iter().find(|x| x.name == t).unwrap().rows_shredded;
    assert_eq!(shredded("customers"), 1);
    assert_eq!(shredded("cdrs"), cdrs_gone);
    assert_eq!(shredded("invoices"), invoices_gone);
    assert_eq!(shredded("billing.rates"), 0);
    assert_eq!(r.rows_shredded, 1 + cdrs_gone + invoices_gone);

    // The restore equals the source without exactly those rows.
    pg.psql("postgres", "CREATE DATABASE expected TEMPLATE src");
    pg.psql(
        "expected",
        "DELETE FROM cdrs WHERE customer_id = 7 OR started_at < '2026-02-01 00:00:00+00'; \
         DELETE FROM invoices WHERE customer_id = 7; DELETE FROM customers WHERE id = 7",
    );
    assert_same_dump(&pg, "expected", "dst");
}

fn policy_error(d: &Path, store: &str) -> String {
    let keys = d.join("keys");
    if !keys.join("service.age").exists() {
        custos::keys::init_keys(&keys).unwrap();
    }
    let text = format!(
        "[policy]\nname = \"p\"\n\n[store]\n{store}\n\n[keys]\nidentity = {:?}\nrecipients = []\n\
         vault = [\"{}\"]\n\n[[targets]]\nname = \"primary\"\nurl = \"{}\"\n",
        keys.join("service.age").to_str().unwrap(),
        file_url(&d.join("vault")),
        file_url(&d.join("target")),
    );
    let p = d.join("bad.toml");
    fs::write(&p, text).unwrap();
    match Policy::load(&p) {
        Ok(_) => panic!("policy accepted:\n{store}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn policy_keeps_passwords_out_and_postgres_keys_on_postgres_stores() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let e = policy_error(
        d,
        "kind = \"postgres\"\nurl = \"postgres://u:hunter2@h/db\"",
    );
    assert!(e.contains("store.url") && e.contains("password"), "{e}");
    let e = policy_error(
        d,
        "kind = \"postgres\"\nurl = \"postgres://u@h/db\"\npassword_file = \"pw\"\npassword_env = \"PW\"",
    );
    assert!(e.contains("not both"), "{e}");
    let e = policy_error(
        d,
        "kind = \"sqlite\"\npath = \"x.db\"\npassword_env = \"PW\"",
    );
    assert!(e.contains("only a `postgres` store"), "{e}");
    let e = policy_error(
        d,
        "kind = \"sqlite\"\npath = \"x.db\"\nschemas = [\"public\"]",
    );
    assert!(e.contains("store.schemas"), "{e}");
    let e = policy_error(
        d,
        "kind = \"postgres\"\nurl = \"postgres://u@h/db\"\nschemas = [\"\"]",
    );
    assert!(e.contains("store.schemas[0]"), "{e}");
    let e = policy_error(
        d,
        "kind = \"sqlite\"\npath = \"x.db\"\nlarge_objects = \"skip\"",
    );
    assert!(e.contains("store.large_objects"), "{e}");
    let e = policy_error(
        d,
        "kind = \"postgres\"\nurl = \"postgres://u@h/db\"\nlarge_objects = \"keep\"",
    );
    assert!(
        e.contains("large_objects") && e.contains("refuse") && e.contains("skip"),
        "{e}"
    );
}

/// Every row of `table` as read with parts of `part_blocks` blocks.
async fn read_all(
    pg: &PgCluster,
    db: &str,
    table: &str,
    subject: Option<&str>,
    part_blocks: u64,
) -> (usize, Vec<(custos::store::GroupCoords, Vec<u8>)>) {
    use custos::store::postgres::{PgConn, PgSource};
    let conn = PgConn::parse(&pg.url(db))
        .unwrap()
        .with_password(zeroize::Zeroizing::new(PASSWORD.to_string()));
    let src = PgSource::open(&conn).await.unwrap();
    let plan = src
        .check_plan(&custos::store::TablePlan {
            name: table.into(),
            subject: subject.map(str::to_string),
            period: None,
        })
        .unwrap();
    let mut t = src
        .stream_with(vec![plan], 3, part_blocks)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let parts = t.parts();
    let mut rows = Vec::new();
    while let Some(b) = t.next().await {
        rows.extend(b.unwrap());
    }
    src.close().await.unwrap();
    (parts, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_read_in_parts_gives_the_rows_of_one_scan() {
    let Some(pg) = PgCluster::start() else { return };
    pg.createdb("src");
    pg.pgbench_init("src", 1);
    let (one, whole) = read_all(&pg, "src", "pgbench_accounts", Some("bid"), u64::MAX).await;
    let (many, parted) = read_all(&pg, "src", "pgbench_accounts", Some("bid"), 100).await;
    assert_eq!(one, 1);
    assert!(many > 10, "{many} parts");
    assert_eq!(whole.len(), 100_000);
    assert!(whole == parted, "same rows, same order, same groups");
    assert_eq!(whole[0].0.subject.as_deref(), Some("1"));
}

/// Scratch databases of drills left on the cluster.
fn scratch_dbs(pg: &PgCluster) -> Vec<String> {
    let out = pg.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'custos\\_drill\\_%' ORDER BY 1",
    );
    out.lines().map(str::to_string).collect()
}

async fn drill(p: &Policy, d: &Path) -> custos::drill::DrillOutcome {
    let state = custos::state::StateDir::at(d.join("state")).unwrap();
    let opts = custos::drill::DrillOptions {
        snapshot: custos::drill::SnapshotChoice::Latest,
        target: None,
        redrill_of: None,
    };
    custos::drill::run(p, &state, &opts, Arc::new(NoProgress))
        .await
        .unwrap()
}

const DRILL_OK: &str = r#"
[drill]
rto = "10m"
[[drill.assert]]
sql = "SELECT count(*) FROM customers"
expect = 301
[[drill.assert]]
sql = "SELECT count(*) = 3 FROM billing.rates"
expect = true
"#;

const DRILL_FALSE: &str = r#"
[drill]
[[drill.assert]]
sql = "SELECT count(*) FROM cdrs WHERE duration IS NULL"
expect = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_restores_into_a_scratch_database_verifies_and_drops_it() {
    use custos::drill::report::{FailureKind, Verdict};
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    let tables = format!("{TELECOM_TABLES}{DRILL_OK}");
    let p = policy(d, &pg.url("src"), &tables, &pw(d)).await;
    backup(&p).await.unwrap();

    // A database left by a drill killed long ago, and one by a drill that
    // is (as far as anyone can tell) starting right now.
    let young = custos::drill::pg::db_name(&custos::drill::report::new_id(chrono::Utc::now()));
    pg.psql(
        "postgres",
        "CREATE DATABASE custos_drill_20200101t000000z_deadbeef",
    );
    pg.psql("postgres", &format!("CREATE DATABASE {young}"));

    let out = drill(&p, d).await;
    let r = &out.report;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert_eq!(r.store, "postgres");
    assert_eq!(r.tables.len(), 5, "{:?}", r.tables);
    for t in &r.tables {
        assert!(t.count_ok && t.checksum_ok == Some(true), "{t:?}");
        assert_eq!(t.rows_restored, t.rows_expected);
    }
    let customers = r.tables.iter().find(|t| t.name == "customers").unwrap();
    assert_eq!(customers.rows_restored, 301);
    assert_eq!(r.assertions.len(), 2);
    assert!(r.assertions.iter().all(|a| a.passed), "{:?}", r.assertions);
    assert_eq!(r.assertions[0].actual, Some(301.into()));
    assert!(r.rto.measured_ms.is_some() && r.rto.met == Some(true));
    // The signed report is stored and verifies.
    let key = custos::keys::load_public_key(&d.join("keys/signing.pub")).unwrap();
    custos::signed::verify(&out.signed, &key, None).unwrap();
    // The old leftover was swept, the young one left alone, ours dropped.
    assert_eq!(scratch_dbs(&pg), vec![young.clone()]);
    pg.psql("postgres", &format!("DROP DATABASE {young}"));

    // A false assertion: FAIL (other), and still no scratch database.
    let tables = format!("{TELECOM_TABLES}{DRILL_FALSE}");
    let p = policy(d, &pg.url("src"), &tables, &pw(d)).await;
    let out = drill(&p, d).await;
    let r = &out.report;
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.failure, Some(FailureKind::Other));
    assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
    assert!(r.reasons[0].contains("drill.assert[0]"), "{:?}", r.reasons);
    let nulls: i64 = pg
        .psql("src", "SELECT count(*) FROM cdrs WHERE duration IS NULL")
        .parse()
        .unwrap();
    assert!(nulls > 0);
    assert_eq!(r.assertions[0].actual, Some(nulls.into()));
    assert!(r
        .tables
        .iter()
        .all(|t| t.count_ok && t.checksum_ok == Some(true)));
    assert!(scratch_dbs(&pg).is_empty());
    assert!(!out.signed.contains(PASSWORD));
}

/// Runs the `custos` binary and checks it succeeded.
fn cli(args: &[&str]) -> String {
    let out = common::run(common::custos().args(args));
    common::stdout(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_cli_erases_a_subject_and_a_period_of_postgres_data() {
    use custos::drill::report::Verdict;
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    let p = policy(d, &pg.url("src"), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
    let pf = d.join("policy.toml");
    let pf = pf.to_str().unwrap();

    cli(&[
        "shred",
        "--policy",
        pf,
        "--subject",
        "7",
        "--now",
        "--reason",
        "erasure request",
    ]);
    cli(&[
        "shred",
        "--policy",
        pf,
        "--period",
        "consumption:2026-02",
        "--now",
    ]);
    cli(&["shred", "--policy", pf, "--run"]);

    let count = |sql: &str| -> u64 { pg.psql("src", sql).parse().unwrap() };
    let feb = "started_at >= '2026-02-01 00:00:00+00' AND started_at < '2026-03-01 00:00:00+00'";
    let cdrs_gone = count(&format!(
        "SELECT count(*) FROM cdrs WHERE customer_id = 7 OR ({feb})"
    ));
    let invoices_gone = count("SELECT count(*) FROM invoices WHERE customer_id = 7");
    assert!(cdrs_gone > 100 && invoices_gone > 0);

    pg.createdb("dst");
    let r = restore(&p, &pg.url("dst"), false).await.unwrap();
    let shredded = |t: &str| r.tables.iter().find(|x| x.name == t).unwrap().rows_shredded;
    assert_eq!(shredded("customers"), 1);
    assert_eq!(shredded("cdrs"), cdrs_gone);
    assert_eq!(shredded("invoices"), invoices_gone);
    assert_eq!(shredded("billing.rates") + shredded("audit"), 0);
    assert_eq!(r.rows_shredded, 1 + cdrs_gone + invoices_gone);

    pg.psql("postgres", "CREATE DATABASE expected TEMPLATE src");
    pg.psql(
        "expected",
        &format!(
            "DELETE FROM cdrs WHERE customer_id = 7 OR ({feb}); \
             DELETE FROM invoices WHERE customer_id = 7; DELETE FROM customers WHERE id = 7"
        ),
    );
    assert_same_dump(&pg, "expected", "dst");

    // A drill counts the shredded rows as shredded, not lost, and passes.
    let out = drill(&p, d).await;
    let rep = &out.report;
    assert_eq!(rep.verdict, Verdict::Pass, "{:?}", rep.reasons);
    let t = rep.tables.iter().find(|t| t.name == "cdrs").unwrap();
    assert_eq!(
        (
            t.rows_shredded,
            t.rows_restored + t.rows_shredded,
            t.checksum_ok
        ),
        (cdrs_gone, t.rows_expected, None)
    );
    let listed: u64 = rep.shredded.iter().map(|s| s.rows).sum();
    assert_eq!(listed, 1 + cdrs_gone + invoices_gone);
    assert!(scratch_dbs(&pg).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_units_of_a_postgres_store_at_a_fixed_clock() {
    use custos::retention::{due_units, open_live_store, UnitKind};
    let Some((pg, tmp)) = telecom_source() else {
        return;
    };
    let d = tmp.path();
    let tables = r#"
[[store.tables]]
name = "customers"
class = "identity"
subject = "id"
retain = { after = "closed_at", for = "30d" }

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = { column = "started_at", every = "month" }
retain = { after = "started_at", for = "90d" }
"#;
    let p = policy(d, &pg.url("src"), tables, &pw(d)).await;
    let vault = custos::ops::open_vault(&p).await.unwrap();
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let now = t("2026-06-01T00:00:00Z");
    let store = open_live_store(&p).unwrap();
    let due = due_units(&p, store.as_ref(), &vault, now).unwrap();

    // Calls run from 2026-01-01 for about 110 days: January and February
    // (month end + 90 days = 2026-05-02 and 2026-05-30) are due, March
    // (2026-06-30) is not.
    let periods: Vec<(String, chrono::DateTime<chrono::Utc>)> = due
        .iter()
        .filter(|u| u.kind == UnitKind::Period)
        .map(|u| (u.key_name.clone(), u.due_since))
        .collect();
    assert_eq!(
        periods,
        vec![
            ("consumption:2026-01".to_string(), t("2026-05-02T00:00:00Z")),
            ("consumption:2026-02".to_string(), t("2026-05-30T00:00:00Z")),
        ]
    );
    // Customer i (id i) closed on 2026-01-01 + i days when i % 4 = 0, else
    // still open: due when closed_at + 30 days <= now, i.e. i <= 121.
    let mut expected: Vec<(String, chrono::DateTime<chrono::Utc>)> = (1..=300)
        .filter(|i| i % 4 == 0 && *i <= 121)
        .map(|i: i64| {
            (
                custos::crypto::subject_pseudonym(vault.pseudonym_key(), &i.to_string()),
                t("2026-01-01T00:00:00Z") + chrono::TimeDelta::days(i + 30),
            )
        })
        .collect();
    expected.sort();
    let mut subjects: Vec<(String, chrono::DateTime<chrono::Utc>)> = due
        .iter()
        .filter(|u| u.kind == UnitKind::Subject)
        .map(|u| (u.key_name.clone(), u.due_since))
        .collect();
    subjects.sort();
    assert_eq!(subjects.len(), 30);
    assert_eq!(subjects, expected);
    assert!(due.iter().all(|u| u.kind != UnitKind::Epoch));
    // One second earlier than the last due time: that subject is not due.
    let last = expected.iter().map(|e| e.1).max().unwrap();
    let due = due_units(
        &p,
        store.as_ref(),
        &vault,
        last - chrono::TimeDelta::seconds(1),
    )
    .unwrap();
    assert_eq!(
        due.iter().filter(|u| u.kind == UnitKind::Subject).count(),
        29
    );
}

/// A new CA (its certificate PEM) and a server certificate it signs for
/// `names`.
fn ca_and_server(names: &[&str]) -> (String, pg::ServerTls) {
    let (ca, server, _) = ca_with_certs(names, "nobody");
    (ca, server)
}

/// A new CA (its certificate PEM), a server certificate it signs for
/// `names`, and a client certificate it signs for common name `cn`
/// (certificate and key, PEM).
fn ca_with_certs(names: &[&str], cn: &str) -> (String, pg::ServerTls, (String, String)) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "custos test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let server = rcgen::CertificateParams::new(names).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    (
        ca_cert.pem(),
        pg::ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_ca_pem: None,
        },
        (client_cert.pem(), client_key.serialize_pem()),
    )
}

/// Writes a PEM file with `mode`.
fn write_pem(path: &Path, pem: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, pem).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    // The server takes role custos_cert by a certificate its CA signed,
    // and no password.
    let (ca_pem, mut server, (cert_pem, key_pem)) = ca_with_certs(&["127.0.0.1"], pg::CERT_USER);
    server.client_ca_pem = Some(ca_pem.clone());
    let Some((pg, tmp)) = PgCluster::start_tls(&server).map(with_telecom) else {
        return;
    };
    let d = tmp.path();
    let ca = d.join("ca.pem");
    write_pem(&ca, &ca_pem, 0o644);
    let (crt, key, loose) = (
        d.join("client.crt"),
        d.join("client.key"),
        d.join("loose.key"),
    );
    write_pem(&crt, &cert_pem, 0o644);
    write_pem(&key, &key_pem, 0o600);
    write_pem(&loose, &key_pem, 0o644);
    // The same common name, signed by a CA the server does not know.
    let (_, _, (other_crt_pem, other_key_pem)) = ca_with_certs(&["127.0.0.1"], pg::CERT_USER);
    let (other_crt, other_key) = (d.join("other.crt"), d.join("other.key"));
    write_pem(&other_crt, &other_crt_pem, 0o644);
    write_pem(&other_key, &other_key_pem, 0o600);
    let url = |db: &str, client: &str| {
        format!(
            "postgres://{}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}{client}",
            pg::CERT_USER,
            pg.port,
            ca.display()
        )
    };
    let with = |c: &Path, k: &Path| format!("&sslcert={}&sslkey={}", c.display(), k.display());

    // Each refusal says why and writes nothing; none shows the key.
    let refusals = [
        (url("src", ""), "wants a client certificate"),
        (
            url("src", &with(&other_crt, &other_key)),
            "does not accept the one given",
        ),
        (url("src", &with(&crt, &loose)), "mode 0644"),
        (
            url("src", &format!("&sslcert={}", crt.display())),
            "needs `sslkey`",
        ),
        (url("src", &with(&crt, &d.join("absent.key"))), "absent.key"),
    ];
    policy(d, &url("src", &with(&crt, &key)), TELECOM_TABLES, &pw(d)).await;
    let base = stored_objects(d);
    let secret = key_pem.lines().nth(1).unwrap();
    for (u, why) in &refusals {
        let p = policy(d, u, TELECOM_TABLES, &pw(d)).await;
        let e = backup(&p).await.unwrap_err().to_string();
        assert!(e.contains(why), "{u}: {e}");
        assert!(
            !e.contains(secret) && !e.contains("PRIVATE KEY-----"),
            "{e}"
        );
        assert_eq!(stored_objects(d), base, "{u}: data was written");
    }

    // With its certificate: a backup, and a restore whose psql presents
    // the same certificate from the same URL.
    let p = policy(d, &url("src", &with(&crt, &key)), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
    assert!(stored_objects(d) > base);
    pg.createdb("dst");
    restore(&p, &url("dst", &with(&crt, &key)), false)
        .await
        .unwrap();
    assert_same_dump(&pg, "src", "dst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_server_is_verified_as_sslmode_says_and_refusals_write_nothing() {
    // The server's certificate names 127.0.0.1 only, and it takes TCP
    // clients over TLS only (hostssl).
    let (ca_pem, server) = ca_and_server(&["127.0.0.1"]);
    let Some((pg, tmp)) = PgCluster::start_tls(&server).map(with_telecom) else {
        return;
    };
    let d = tmp.path();
    let ca = d.join("ca.pem");
    fs::write(&ca, &ca_pem).unwrap();
    let (other_pem, _) = ca_and_server(&["127.0.0.1"]);
    let other = d.join("other-ca.pem");
    fs::write(&other, other_pem).unwrap();
    let url = |host: &str, db: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/{db}?{query}", pg.port)
    };
    let full = format!("sslmode=verify-full&sslrootcert={}", ca.display());

    // Each refusal names TLS (or the server's rule) and writes nothing.
    let refusals = [
        (
            url(
                "127.0.0.1",
                "src",
                &format!("sslmode=verify-full&sslrootcert={}", other.display()),
            ),
            "TLS",
        ),
        (url("localhost", "src", &full), "TLS"),
        (
            url("127.0.0.1", "src", "sslmode=verify-full"),
            "sslrootcert",
        ),
        (url("127.0.0.1", "src", "sslmode=sometimes"), "sslmode"),
        (url("127.0.0.1", "src", "sslmode=disable"), "only over TLS"),
    ];
    policy(d, &url("127.0.0.1", "src", &full), TELECOM_TABLES, &pw(d)).await;
    let base = stored_objects(d);
    for (u, why) in &refusals {
        let p = policy(d, u, TELECOM_TABLES, &pw(d)).await;
        let e = backup(&p).await.unwrap_err().to_string();
        assert!(e.contains(why), "{u}: {e}");
        assert!(!e.contains(PASSWORD), "{e}");
        assert_eq!(stored_objects(d), base, "{u}: data was written");
    }

    // verify-full with the CA that signed it: a backup, and a restore
    // whose tools (psql) connect with the same parameters.
    let p = policy(d, &url("127.0.0.1", "src", &full), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
    assert!(stored_objects(d) > base);
    pg.createdb("dst");
    restore(&p, &url("127.0.0.1", "dst", &full), false)
        .await
        .unwrap();
    assert_same_dump(&pg, "src", "dst");

    // SCRAM bound to the TLS session (SCRAM-SHA-256-PLUS with the server
    // certificate's hash): required here, and taken by both custos and the
    // libpq tools (psql) of a restore. Without the binding custos would be
    // refused.
    let bound = format!("{full}&channel_binding=require");
    let p = policy(d, &url("127.0.0.1", "src", &bound), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
    pg.createdb("dst_bound");
    restore(&p, &url("127.0.0.1", "dst_bound", &bound), false)
        .await
        .unwrap();
    assert_same_dump(&pg, "src", "dst_bound");

    // `allow` tries without TLS, is refused by the server's hostssl lines,
    // and connects again with TLS, as libpq (a restore's psql) does.
    let p = policy(
        d,
        &url("127.0.0.1", "src", "sslmode=allow"),
        TELECOM_TABLES,
        &pw(d),
    )
    .await;
    backup(&p).await.unwrap();
    pg.createdb("dst_allow");
    restore(&p, &url("127.0.0.1", "dst_allow", "sslmode=allow"), false)
        .await
        .unwrap();
    assert_same_dump(&pg, "src", "dst_allow");

    // verify-ca checks the chain and not the name: `localhost` is accepted.
    let ca_only = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    let p = policy(
        d,
        &url("localhost", "src", &ca_only),
        TELECOM_TABLES,
        &pw(d),
    )
    .await;
    backup(&p).await.unwrap();
    // No sslmode: `prefer`, encrypted without checking the certificate,
    // as libpq does (the server takes nothing else).
    let p = policy(d, &url("127.0.0.1", "src", ""), TELECOM_TABLES, &pw(d)).await;
    backup(&p).await.unwrap();
}
