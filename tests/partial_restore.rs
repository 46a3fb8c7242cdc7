//! Partial restores of a SQLite snapshot: `custos restore --table` and
//! `--subject`, end to end through the binary, compared row by row with
//! the source; a subject's restore fetches a fraction of what a whole
//! restore fetches; bad selections are refused before a file is made.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::{custos, file_url, rows, run, run_fail, stderr, stdout, tempdir};
use custos::demo::{generate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::vault::KeyKind;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The demo's tables with a subject column, and that column.
const SUBJECT_TABLES: [(&str, &str); 5] = [
    ("customers", "id"),
    ("subscriptions", "customer_id"),
    ("tickets", "customer_id"),
    ("ticket_history", "customer_id"),
    ("cdrs", "customer_id"),
];

fn policy_text(d: &Path, identity: &Path) -> String {
    let mut tables = String::new();
    for (name, col) in SUBJECT_TABLES {
        let (class, period) = if name == "cdrs" {
            (
                "consumption",
                "period = { column = \"started_at\", every = \"month\" }\n",
            )
        } else {
            ("identity", "")
        };
        tables.push_str(&format!(
            "[[store.tables]]\nname = \"{name}\"\nclass = \"{class}\"\nsubject = \"{col}\"\n{period}\n"
        ));
    }
    format!(
        "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n\n{tables}\
         [keys]\nidentity = \"{}\"\nrecipients = []\nvault = [\"{}\"]\n\n\
         [[targets]]\nname = \"primary\"\nurl = \"{}\"\n",
        d.join("crm.db").display(),
        identity.display(),
        file_url(&d.join("vault")),
        file_url(&d.join("target")),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `custos restore --policy P --to TO` with `args`; its `--json` report.
fn restore(policy: &Path, to: &Path, args: &[&str]) -> Json {
    let out = run(custos()
        .args(["restore", "--policy", p(policy), "--to", p(to), "--json"])
        .args(args));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn one(db: &Path, sql: &str) -> String {
    let c = Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get::<_, Value>(0))
        .map(|v| format!("{v:?}"))
        .unwrap()
}

fn table_report<'a>(r: &'a Json, name: &str) -> &'a Json {
    r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("table {name} in {r}"))
}

/// The restored file has the source's whole schema, passes SQLite's own
/// check, and keeps the pragmas.
fn assert_schema_kept(source: &Path, restored: &Path) {
    let schema = "SELECT group_concat(type || ' ' || name || ' ' || coalesce(sql, ''), char(10)) \
                  FROM (SELECT * FROM sqlite_schema WHERE name NOT LIKE 'sqlite_stat%' ORDER BY name)";
    assert_eq!(one(source, schema), one(restored, schema));
    assert_eq!(
        one(restored, "PRAGMA integrity_check"),
        "Text(\"ok\")",
        "integrity_check"
    );
    assert_eq!(
        one(source, "PRAGMA user_version"),
        one(restored, "PRAGMA user_version")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_or_one_customer_is_restored_alone_and_equals_the_source_rows() {
    let tmp = tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    generate(&db, DemoSize::Bytes(3 << 20), 11, &NoProgress).unwrap();
    let keys = custos::keys::init_keys(&d.join("keys")).unwrap();
    let policy = d.join("policy.toml");
    std::fs::write(&policy, policy_text(d, &keys.identity_path)).unwrap();
    run(custos().args(["init", "--policy", p(&policy)]));
    // Small packs, so that one customer's chunks lie in a few of many.
    let opts = BackupOptions {
        pack_size: 64 << 10,
        ..BackupOptions::default()
    };
    let loaded = Policy::load(&policy).unwrap();
    backup(&loaded, &opts, Arc::new(NoProgress)).await.unwrap();

    // The customer with the most call records.
    let busiest = one(
        &db,
        "SELECT customer_id FROM cdrs GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1",
    );
    let id = busiest
        .strip_prefix("Integer(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{busiest}"))
        .to_string();

    let whole = restore(&policy, &d.join("whole.db"), &[]);
    assert_eq!(whole["partial"], false);

    // One customer: every table with a subject holds exactly the source's
    // rows of that customer, the others are empty.
    let vault = custos::ops::open_vault(&loaded).await.unwrap();
    let name = custos::crypto::subject_pseudonym(vault.pseudonym_key(), &id);
    drop(vault);
    let sub = d.join("subject.db");
    let r = restore(&policy, &sub, &["--subject", &id]);
    assert_eq!(r["partial"], true);
    // The report and the audit log name the customer by pseudonym.
    assert_eq!(r["subject"], name.as_str());
    let out = run(custos().args(["audit", "show", "--op", "restore", "--json"]));
    let audit: Json = serde_json::from_slice(&out.stdout).unwrap();
    let details: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter_map(|d| d.split(" duration_s=").next())
        .filter(|d| d.starts_with("partial"))
        .collect();
    let tables: Vec<&str> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        vec![format!(
            "partial: tables {}; subject {name}",
            tables.join(", ")
        )],
        "{audit}"
    );
    assert_schema_kept(&db, &sub);
    let mut restored_rows = 0;
    for (table, col) in SUBJECT_TABLES {
        let want = rows(&db, table, &format!("{col} = {id}"));
        assert!(!want.is_empty() || table == "ticket_history" || table == "tickets");
        let got = rows(&sub, table, "1");
        assert_eq!(got, want, "table {table}: the customer's rows");
        let t = table_report(&r, table);
        assert_eq!(t["rows_restored"], want.len());
        assert_eq!(t["rows_expected"], want.len());
        restored_rows += want.len();
    }
    assert!(restored_rows > 10, "the customer has rows: {restored_rows}");
    assert_eq!(rows(&sub, "settings", "1"), Vec::<Vec<Value>>::new());
    assert_eq!(r["items"], restored_rows);
    // Only what is needed is fetched: the tree pages of every table, and
    // the packs holding the customer's chunks.
    let (part, all) = (
        r["bytes_fetched"].as_u64().unwrap(),
        whole["bytes_fetched"].as_u64().unwrap(),
    );
    assert!(
        part * 3 < all,
        "a customer's restore fetched {part} bytes, a whole restore {all}"
    );

    // One table: equal to the source's, the other tables empty.
    let one_table = d.join("cdrs.db");
    let r = restore(&policy, &one_table, &["--table", "cdrs"]);
    assert_schema_kept(&db, &one_table);
    assert_eq!(rows(&one_table, "cdrs", "1"), rows(&db, "cdrs", "1"));
    for (table, _) in &SUBJECT_TABLES[..4] {
        assert!(rows(&one_table, table, "1").is_empty(), "{table} is empty");
    }
    assert_eq!(
        r["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["cdrs", "sqlite_sequence"],
        "{r}"
    );
    // The AUTOINCREMENT counter came with it.
    assert_eq!(
        rows(&one_table, "sqlite_sequence", "1"),
        rows(&db, "sqlite_sequence", "1")
    );

    // Both: the customer's call records alone.
    let both = d.join("both.db");
    restore(&policy, &both, &["--table", "cdrs", "--subject", &id]);
    assert_eq!(
        rows(&both, "cdrs", "1"),
        rows(&db, "cdrs", &format!("customer_id = {id}"))
    );
    assert!(rows(&both, "customers", "1").is_empty());

    // Refused before a file is made: a table the snapshot lacks, a
    // customer the vault has no key of; neither names the customer.
    for (args, says) in [
        (vec!["--table", "nope"], "no table `nope`"),
        (
            vec!["--subject", "no-such-customer-4711"],
            "no key of the subject",
        ),
    ] {
        let to = d.join("refused.db");
        let out = run_fail(
            custos()
                .args(["restore", "--policy", p(&policy), "--to", p(&to)])
                .args(&args),
        );
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("no-such-customer-4711"), "{text}");
        assert!(!to.exists());
        assert_eq!(leftovers(d), Vec::<PathBuf>::new());
    }

    // A customer whose key is gone with no shred recorded in the ledger
    // (destroyed behind custos's back, or lost) is not called shredded:
    // the message points at `custos check`. (A recorded shred is named
    // with its certificate: tests/shred.rs.)
    util::destroy_key(&loaded, KeyKind::Subject, &name).await;
    let to = d.join("shredded.db");
    let out = run_fail(
        custos()
            .args(["restore", "--policy", p(&policy), "--to", p(&to)])
            .args(["--subject", &id]),
    );
    let says = stderr(&out);
    assert!(
        says.contains("the shredding ledger records no shred of it")
            && says.contains("`custos check`")
            && !says.contains("was shredded"),
        "{says}"
    );
    assert!(!to.exists());
}

/// Temporary restore files left in `d`.
fn leftovers(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("custos-restore"))
        .collect()
}
