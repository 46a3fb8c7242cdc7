//! Crypto-shredding end to end: real SQLite demo data, a `file://` and an
//! S3 target (the in-process S3 server), two vault locations (one local,
//! one on S3); erasure of a subject, of a period, legal holds, cancel
//! within grace, certificate verification, and a run killed after its
//! journal was written.

mod common;
#[path = "common/faults_util.rs"]
mod faults_util;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::{custos, run, run_fail, stdout, S3Server};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::vault::KeyKind;
use rusqlite::Connection;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use util::{all_files, assert_same_db, contains};

struct Env {
    _tmp: tempfile::TempDir,
    s3: S3Server,
    dir: PathBuf,
    policy_path: PathBuf,
    policy: Policy,
    identity: PathBuf,
    public_key: PathBuf,
    state: PathBuf,
    /// The database as each snapshot saw it: (snapshot id per target, copy).
    versions: Vec<(Vec<(String, String)>, PathBuf)>,
}

const TABLES: [(&str, &str); 4] = [
    ("customers", "id"),
    ("subscriptions", "customer_id"),
    ("tickets", "customer_id"),
    ("cdrs", "customer_id"),
];

/// The policy; `worm_dr` declares the off-site target write-once.
fn policy_text_with(d: &Path, s3: &S3Server, worm_dr: bool) -> String {
    format!(
        r#"[policy]
name = "crm"

[store]
kind = "sqlite"
path = "{d}/crm.db"

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "subscriptions"
class = "business"
subject = "customer_id"

[[store.tables]]
name = "tickets"
class = "service"
subject = "customer_id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = {{ column = "started_at", every = "month" }}

[keys]
identity = "{d}/keys/service.age"
recipients = []
vault = ["file://{d}/vault/a", "{vb}"]

[[targets]]
name = "primary"
url = "file://{d}/targets/primary"

[[targets]]
name = "dr"
url = "{dr}"
offsite = true
worm = {worm_dr}

[s3]
endpoint = "{ep}"
region = "us-east-1"
allow_http = true
max_retries = 1

[shred]
grace = "7d"
"#,
        d = d.display(),
        vb = s3.url("keys-b", "crm"),
        dr = s3.url("crm-dr", "crm"),
        ep = s3.endpoint(),
    )
}

/// Demo data, keys, init, and two snapshots on each target (the database
/// changed by one "day" between them).
async fn setup() -> Env {
    setup_with(false).await
}

/// [`setup`], with the off-site target declared `worm = true` if asked.
async fn setup_with(worm_dr: bool) -> Env {
    let s3 = S3Server::start();
    s3.create_bucket("keys-b");
    s3.create_bucket("crm-dr");
    let tmp = common::tempdir();
    let d = tmp.path().to_path_buf();
    for sub in ["vault/a", "targets/primary", "state"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    let db = d.join("crm.db");
    custos::demo::generate(&db, custos::demo::DemoSize::Bytes(700_000), 7, &NoProgress).unwrap();
    let keys = custos::keys::init_keys(&d.join("keys")).unwrap();
    let policy_path = d.join("policy.toml");
    fs::write(&policy_path, policy_text_with(&d, &s3, worm_dr)).unwrap();
    let policy = Policy::load(&policy_path).unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    let mut versions = Vec::new();
    for v in 0..2 {
        if v > 0 {
            custos::demo::mutate(&db, 0.05, 11).unwrap();
        }
        let snaps = backup_each_target(&policy).await;
        let copy = d.join(format!("crm-v{v}.db"));
        fs::copy(&db, &copy).unwrap();
        versions.push((snaps, copy));
    }
    Env {
        identity: keys.identity_path,
        public_key: keys.public_key_path,
        state: d.join("state"),
        _tmp: tmp,
        s3,
        dir: d,
        policy_path,
        policy,
        versions,
    }
}

/// One backup on each target; the snapshot id per target.
async fn backup_each_target(policy: &Policy) -> Vec<(String, String)> {
    let mut snaps = Vec::new();
    for t in ["primary", "dr"] {
        let opts = custos::ops::backup::BackupOptions {
            target: Some(t.to_string()),
            ..Default::default()
        };
        let r = custos::ops::backup::backup(policy, &opts, Arc::new(NoProgress))
            .await
            .unwrap();
        snaps.push((t.to_string(), r.snapshot));
    }
    snaps
}

impl Env {
    /// The binary; `CUSTOS_TEST_BIN` runs another build of it (for a
    /// target directory shared by several checkouts).
    fn cli(&self) -> Command {
        let mut c = match std::env::var_os("CUSTOS_TEST_BIN") {
            Some(b) => Command::new(b),
            None => custos(),
        };
        c.envs(self.s3.env())
            .env("CUSTOS_ACTOR", "dpo-test")
            .arg("--state-dir")
            .arg(&self.state);
        c
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![
            self.dir.join("vault/a"),
            self.s3.root().join("keys-b"),
            self.dir.join("targets/primary"),
            self.s3.root().join("crm-dr"),
            self.state.clone(),
        ]
    }

    fn vault_roots(&self) -> Vec<PathBuf> {
        vec![self.dir.join("vault/a"), self.s3.root().join("keys-b")]
    }
}

/// A customer with rows in every subject table.
fn busy_customer(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    c.query_row(
        "SELECT customer_id FROM cdrs WHERE customer_id IN (SELECT customer_id FROM tickets)
           AND customer_id IN (SELECT customer_id FROM subscriptions)
         GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Copies `db` and deletes rows matching `filter(table)`; returns the copy
/// and the number of rows deleted.
fn minus(db: &Path, out: &Path, filter: impl Fn(&str, &str) -> Option<String>) -> u64 {
    fs::copy(db, out).unwrap();
    let c = Connection::open(out).unwrap();
    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    let mut n = 0;
    for (t, col) in TABLES {
        if let Some(w) = filter(t, col) {
            n += c
                .execute(&format!("DELETE FROM {t} WHERE {w}"), [])
                .unwrap() as u64;
        }
    }
    n
}

async fn restore_all(env: &Env, expect: impl Fn(&Path, &Path) -> u64) {
    for (i, (snaps, copy)) in env.versions.iter().enumerate() {
        let expected = env.dir.join(format!("expected-{i}.db"));
        let n = expect(copy, &expected);
        assert!(n > 0, "the shredded unit has rows in version {i}");
        for (target, snap) in snaps {
            let to = env.dir.join(format!("restored-{i}-{target}.db"));
            let opts = RestoreOptions {
                target: Some(target.clone()),
                snapshot: snap.clone(),
                to: to.clone(),
                force: true,
                only: Default::default(),
            };
            let r = restore(&env.policy, &opts, Arc::new(NoProgress))
                .await
                .unwrap_or_else(|e| panic!("restore of {snap} from {target} failed: {e}"));
            assert_eq!(
                r.rows_shredded, n,
                "rows counted as shredded, {target} v{i}"
            );
            assert_same_db(&expected, &to);
        }
    }
}

/// [`restore_all`], expecting the rows of the customers whose subject
/// column matches `customers` (e.g. `IN (1, 2)`) and every call of
/// January 2026 to be gone.
async fn restore_all_without(env: &Env, customers: &str) {
    restore_all(env, |db, out| {
        minus(db, out, |t, col| {
            Some(if t == "cdrs" {
                format!("{col} {customers} OR started_at LIKE '2026-01%'")
            } else {
                format!("{col} {customers}")
            })
        })
    })
    .await;
}

/// Destroys the busiest customer and January 2026 in one run; checks that
/// each certificate counts the unit's rows in every snapshot on both
/// targets, as the databases the snapshots were taken of hold them, and
/// that every snapshot restores without them.
async fn erase_busy_customer_and_january(env: &Env) {
    let subject = busy_customer(&env.versions[0].1);
    let period = "consumption:2026-01";
    let state = custos::state::StateDir::at(&env.state).unwrap();
    let units = [
        custos::shred::UnitSpec::Subject(subject.to_string()),
        custos::shred::UnitSpec::Period(period.into()),
    ];
    destroy_all_now(env, &state, &units).await;
    let vault = custos::ops::open_vault(&env.policy).await.unwrap();
    let pseudo = custos::crypto::subject_pseudonym(vault.pseudonym_key(), &subject.to_string());
    let sum = |f: &dyn Fn(&Path) -> u64| env.versions.iter().map(|(_, db)| f(db)).sum::<u64>();
    let certs = certificate_bodies(env);
    let snapshots = env.versions.len();
    let customer_rows = sum(&|db| rows_where(db, |col| format!("{col} = {subject}")));
    assert_counts(&certs, &pseudo, customer_rows, snapshots);
    assert_counts(&certs, period, sum(&january_calls), snapshots);
    restore_all_without(env, &format!("= {subject}")).await;
}

/// Every vault key shard at every location, decrypted with the identity.
fn vault_plaintexts(env: &Env) -> Vec<(PathBuf, Vec<u8>)> {
    let id = custos::keys::load_identity(&env.identity).unwrap();
    let mut out = Vec::new();
    for root in env.vault_roots() {
        for (p, bytes) in all_files(&root) {
            if !bytes.starts_with(b"age-encryption.org/v1\n") {
                continue;
            }
            out.push((p, common::age_decrypt(&id, &bytes)));
        }
    }
    out
}

/// Every JSON string value in a document.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

fn certificates(env: &Env) -> Vec<PathBuf> {
    let d = env.state.join("certificates/crm");
    let mut v: Vec<PathBuf> = fs::read_dir(&d)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The bodies of every certificate stored.
fn certificate_bodies(env: &Env) -> Vec<Value> {
    certificates(env)
        .iter()
        .map(|p| {
            let mut v: Value = serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
            v["body"].take()
        })
        .collect()
}

/// The certificate of unit `name` among `certs`, checked to count `rows`
/// on each of the two targets, every group unreadable, in `snapshots`
/// snapshots on each.
fn assert_counts<'a>(certs: &'a [Value], name: &str, rows: u64, snapshots: usize) -> &'a Value {
    let cert = certs
        .iter()
        .find(|b| b["unit"]["name"] == name)
        .unwrap_or_else(|| panic!("no certificate for {name}"));
    assert_eq!(
        cert["rows_unreadable"].as_u64().unwrap(),
        2 * rows,
        "{name}"
    );
    for t in ["primary", "dr"] {
        let cov = target_cov(cert, t);
        assert_eq!(cov["rows"].as_u64().unwrap(), rows, "{name} on {t}: {cov}");
        assert_eq!(cov["groups"], cov["groups_unreadable"], "{cov}");
        assert_eq!(
            cov["snapshots_affected"].as_array().unwrap().len(),
            snapshots,
            "{name} on {t}: {cov}"
        );
    }
    cert
}

/// Calls in January 2026 in `db` (the rows of unit `consumption:2026-01`).
fn january_calls(db: &Path) -> u64 {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM cdrs WHERE started_at LIKE '2026-01%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
}

async fn key_bytes(env: &Env, kind: KeyKind, name: &str) -> Vec<u8> {
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    v.lookup(kind, name).unwrap().1.expose().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_subject_leaves_no_key_and_no_row_anywhere() {
    let env = setup().await;
    let subject = busy_customer(&env.versions[0].1);
    let pseudo = {
        let v = custos::ops::open_vault(&env.policy).await.unwrap();
        custos::crypto::subject_pseudonym(v.pseudonym_key(), &subject.to_string())
    };
    let key = key_bytes(&env, KeyKind::Subject, &pseudo).await;
    // The search below can find the key: it is in a vault shard now.
    assert!(vault_plaintexts(&env)
        .iter()
        .any(|(_, p)| contains(p, &key)));

    let out = run(env
        .cli()
        .args(["shred", "--policy"])
        .arg(&env.policy_path)
        .args([
            "--subject",
            &subject.to_string(),
            "--reason",
            "erasure request",
            "--request-ref",
            "DSR-2026-0042",
            "--now",
        ]));
    let text = stdout(&out);
    assert!(text.contains("destroyed subject:"), "{text}");
    assert!(!text.contains(&format!(" {subject} ")), "{text}");

    // Every snapshot from every target: the customer's rows are gone and
    // counted, every other row is identical.
    let id = subject.to_string();
    restore_all(&env, |db, out| {
        minus(db, out, |t, col| {
            let _ = t;
            Some(format!("{col} = {id}"))
        })
    })
    .await;

    // The key is in no file of any vault location, target or the state
    // directory, raw or inside a decrypted vault shard.
    let roots = env.roots();
    let refs: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    let n = util::assert_absent(&refs, &[("subject key".into(), key.clone())]);
    assert!(n > 20, "searched {n} files");
    for (p, plain) in vault_plaintexts(&env) {
        assert!(!contains(&plain, &key), "key found in {}", p.display());
    }
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    assert!(v.lookup(KeyKind::Subject, &pseudo).is_none());

    // One certificate: valid, on the primary, naming the pseudonym, never the id.
    let certs = certificates(&env);
    assert_eq!(certs.len(), 1, "{certs:?}");
    let cert_text = fs::read_to_string(&certs[0]).unwrap();
    let cert: Value = serde_json::from_str(&cert_text).unwrap();
    let body = &cert["body"];
    assert_eq!(cert["kind"], "custos.certificate");
    assert_eq!(body["method"], "cryptographic erase (purge)");
    assert_eq!(body["unit"]["name"], pseudo.as_str());
    assert_eq!(body["request_ref"], "DSR-2026-0042");
    assert_eq!(body["grace_skipped"], true);
    assert_eq!(body["verification"]["key_holders_found"], 0);
    assert_eq!(body["targets"].as_array().unwrap().len(), 2);
    for t in body["targets"].as_array().unwrap() {
        assert_eq!(t["snapshots_affected"].as_array().unwrap().len(), 2, "{t}");
        assert!(t["groups"].as_u64().unwrap() > 0);
        assert_eq!(t["groups"], t["groups_unreadable"]);
        assert!(t["error"].is_null(), "{t}");
    }
    let cid = body["id"].as_str().unwrap().to_string();
    let on_primary = env
        .dir
        .join(format!("targets/primary/certificates/{cid}.json"));
    assert_eq!(fs::read_to_string(on_primary).unwrap(), cert_text);

    // A restore of the customer alone is refused, saying it was shredded,
    // when, and under which certificate; it makes no file and names no id.
    let to = env.dir.join("erased-customer.db");
    let out = run_fail(
        env.cli()
            .args(["restore", "--policy"])
            .arg(&env.policy_path)
            .arg("--to")
            .arg(&to)
            .args(["--subject", &id]),
    );
    assert_eq!(out.status.code(), Some(2));
    let says = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        says.contains("the subject's data was shredded on ")
            && says.contains(&format!("(certificate {cid})")),
        "{says}"
    );
    assert!(!says.contains(&format!(" {id} ")), "{says}");
    assert!(!to.exists());
    let mut all = Vec::new();
    strings(&cert, &mut all);
    assert!(
        !all.iter().any(|s| s == &id),
        "subject id in the certificate"
    );

    // The audit log records the request and the shred, without the id.
    let log = fs::read_to_string(env.state.join("audit/audit.jsonl")).unwrap();
    let mut ops = Vec::new();
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let mut s = Vec::new();
        strings(&e, &mut s);
        assert!(!s
            .iter()
            .any(|x| x == &id || x.contains(&format!("subject {id}"))));
        ops.push((e["op"].as_str().unwrap().to_string(), e["objects"].clone()));
    }
    assert!(
        ops.iter()
            .any(|(op, o)| op == "shred" && o[0] == cid.as_str()),
        "{ops:?}"
    );

    // Verify: valid as stored; one byte changed makes it fail (exit code 3).
    run(env
        .cli()
        .args(["certificates", "verify"])
        .arg(&cid)
        .arg("--public-key")
        .arg(&env.public_key));
    let shown = stdout(&run(env.cli().args([
        "certificates",
        "show",
        &cid,
        "--format",
        "html",
    ])));
    assert!(shown.contains("cryptographic erase (purge)") && shown.contains(&pseudo));
    let edited = env.dir.join("edited.json");
    let mut b = cert_text.clone().into_bytes();
    let at = cert_text.find("\"rows_unreadable\": ").unwrap() + 19;
    b[at] = if b[at] == b'9' { b'8' } else { b'9' };
    fs::write(&edited, &b).unwrap();
    let bad = run_fail(
        env.cli()
            .args(["certificates", "verify"])
            .arg(&edited)
            .arg("--public-key")
            .arg(&env.public_key),
    );
    assert_eq!(bad.status.code(), Some(3));

    // A second request for the same subject says it is already destroyed.
    let again = run_fail(
        env.cli()
            .args(["shred", "--policy"])
            .arg(&env.policy_path)
            .args(["--subject", &id]),
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already destroyed"));
    assert!(!String::from_utf8_lossy(&again.stderr).contains(&format!(" {id} ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_is_shredded_after_grace_while_held_and_cancelled_units_keep_their_data() {
    let env = setup().await;
    let held = busy_customer(&env.versions[0].1).to_string();
    let p = |args: &[&str]| {
        let mut c = env.cli();
        c.arg(args[0])
            .args(["--policy"])
            .arg(&env.policy_path)
            .args(&args[1..]);
        c
    };
    let mut h = env.cli();
    h.args(["holds", "add", "--policy"])
        .arg(&env.policy_path)
        .args(["--subject", &held, "--reason", "litigation 7/2026"]);
    run(h);
    // A held subject is not shredded, even with --now.
    let out = stdout(&run(p(&["shred", "--subject", &held, "--now"])));
    assert!(out.contains("held"), "{out}");
    // A period request within grace, cancelled.
    run(p(&[
        "shred",
        "--period",
        "consumption:2025-12",
        "--reason",
        "retention",
    ]));
    let list = stdout(&run(p(&["shred", "--list"])));
    assert!(
        list.contains("pending      period:consumption:2025-12"),
        "{list}"
    );
    assert!(list.contains("[HELD]"), "{list}");
    run(p(&["shred", "--cancel", "--period", "consumption:2025-12"]));
    // Another period: pending, not due at the first run, destroyed by the
    // first run after the grace.
    run(p(&[
        "shred",
        "--period",
        "consumption:2026-01",
        "--reason",
        "retention ended",
    ]));
    let first = stdout(&run(p(&["shred", "--run"])));
    assert!(
        first.contains("waiting   period:consumption:2026-01"),
        "{first}"
    );
    assert!(first.contains("held"), "{first}");
    assert!(certificates(&env).is_empty());
    let key = key_bytes(&env, KeyKind::Period, "consumption:2026-01").await;

    let state = custos::state::StateDir::at(&env.state).unwrap();
    let opts = custos::shred::RunOptions {
        now: chrono::Utc::now() + chrono::Duration::days(8),
        performer: "job:crm/retention".into(),
        role: "retention".into(),
        only: None,
    };
    let r = custos::shred::run(&env.policy, &state, &opts)
        .await
        .unwrap();
    assert_eq!(r.destroyed.len(), 1, "{r:?}");
    assert_eq!(r.destroyed[0].unit.name, "consumption:2026-01");
    assert_eq!(r.held.len(), 1);
    assert_eq!(certificates(&env).len(), 1);

    // January's CDRs are gone from every snapshot; the held subject's rows
    // and December's rows (cancelled) are all still there.
    restore_all(&env, |db, out| {
        minus(db, out, |t, _| {
            (t == "cdrs").then(|| "started_at LIKE '2026-01%'".to_string())
        })
    })
    .await;
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    assert!(v.lookup(KeyKind::Period, "consumption:2025-12").is_some());
    let pseudo = custos::crypto::subject_pseudonym(v.pseudonym_key(), &held);
    assert!(v.lookup(KeyKind::Subject, &pseudo).is_some());
    for (path, plain) in vault_plaintexts(&env) {
        assert!(!contains(&plain, &key), "period key in {}", path.display());
    }

    // Lifting the hold lets the next run destroy the subject.
    let mut h = env.cli();
    h.args(["holds", "remove", "--policy"])
        .arg(&env.policy_path)
        .args(["--subject", &held]);
    run(h);
    let out = stdout(&run(p(&["shred", "--run"])));
    assert!(
        out.contains(&format!("destroyed subject:{pseudo}")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_its_journal_is_finished_by_the_next_run() {
    if !cfg!(debug_assertions) {
        // The binary is built like this test: a release build has no hook.
        eprintln!("skipped: the crash hook exists only in debug builds");
        return;
    }
    let env = setup().await;
    let subject = busy_customer(&env.versions[1].1).to_string();
    let pseudo = {
        let v = custos::ops::open_vault(&env.policy).await.unwrap();
        custos::crypto::subject_pseudonym(v.pseudonym_key(), &subject)
    };
    let key = key_bytes(&env, KeyKind::Subject, &pseudo).await;
    let mut c = env.cli();
    c.args(["shred", "--policy"])
        .arg(&env.policy_path)
        .args(["--subject", &subject, "--now"])
        .env(custos::shred::CRASH_HOOK_ENV, "journal");
    let out = run_fail(c);
    assert!(!out.status.success());

    // In progress: listed as such; the key is still stored, but fenced: a
    // restore meanwhile cannot read it.
    let mut l = env.cli();
    l.args(["shred", "--policy"])
        .arg(&env.policy_path)
        .arg("--list");
    let list = stdout(&run(l));
    assert!(
        list.contains(&format!("IN PROGRESS  subject:{pseudo}")),
        "{list}"
    );
    assert!(vault_plaintexts(&env)
        .iter()
        .any(|(_, p)| contains(p, &key)));
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    assert!(
        v.lookup(KeyKind::Subject, &pseudo).is_none(),
        "fenced key readable"
    );
    assert!(v.entries().iter().any(|e| e.name == pseudo));
    drop(v);
    // A cancel is refused now.
    let mut c = env.cli();
    c.args(["shred", "--policy"])
        .arg(&env.policy_path)
        .args(["--cancel", "--subject", &subject]);
    run_fail(c);

    let mut r = env.cli();
    r.args(["shred", "--policy"])
        .arg(&env.policy_path)
        .arg("--run");
    let text = stdout(&run(r));
    assert!(text.contains("finishing an interrupted run"), "{text}");
    for (p, plain) in vault_plaintexts(&env) {
        assert!(!contains(&plain, &key), "key left in {}", p.display());
    }
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    assert!(!v.entries().iter().any(|e| e.name == pseudo));
    assert!(v.fences().is_empty());
    assert_eq!(certificates(&env).len(), 1);
    let id = subject.clone();
    restore_all(&env, |db, out| {
        minus(db, out, |_, col| Some(format!("{col} = {id}")))
    })
    .await;
}

/// The pack objects under a target's root folder.
fn packs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = all_files(&root.join("data"))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    v.sort();
    v
}

fn target_cov<'a>(cert: &'a Value, name: &str) -> &'a Value {
    cert["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {cert}"))
}

/// A destruction request by the tests' data-protection officer.
fn dpo_request(unit: custos::shred::UnitSpec, now: bool) -> custos::shred::Request {
    custos::shred::Request {
        unit,
        reason: Some("test".into()),
        request_ref: None,
        requester: "dpo-test".into(),
        role: "operator".into(),
        now,
    }
}

/// Run options of the retention role at `now`.
fn retention_run(now: chrono::DateTime<chrono::Utc>) -> custos::shred::RunOptions {
    custos::shred::RunOptions {
        now,
        performer: "dpo-test".into(),
        role: "retention".into(),
        only: None,
    }
}

/// Requests the destruction of `unit` without grace and runs it at once;
/// exactly one unit must be destroyed.
async fn destroy_now(env: &Env, state: &custos::state::StateDir, unit: custos::shred::UnitSpec) {
    destroy_all_now(env, state, &[unit]).await;
}

/// Requests the destruction of every unit of `units` without grace, then
/// destroys them in one run; each must be destroyed, none fail.
async fn destroy_all_now(
    env: &Env,
    state: &custos::state::StateDir,
    units: &[custos::shred::UnitSpec],
) {
    for u in units {
        custos::shred::request(
            &env.policy,
            state,
            &dpo_request(u.clone(), true),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    }
    let r = custos::shred::run(&env.policy, state, &retention_run(chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(r.destroyed.len(), units.len(), "{r:?}");
    assert!(r.failed.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_deletes_the_units_own_packs_except_on_write_once_targets() {
    let env = setup_with(true).await;
    assert!(env.policy.targets[1].worm && !env.policy.targets[0].worm);
    let primary_root = env.dir.join("targets/primary");
    let dr_root = env.s3.root().join("crm-dr/crm");
    let primary_before = packs(&primary_root);
    let dr_before = packs(&dr_root);
    let state = custos::state::StateDir::at(&env.state).unwrap();

    // A period owns whole packs (one time key per pack): deleted on the
    // primary, kept on the write-once copy.
    let period = custos::shred::UnitSpec::Period("consumption:2026-01".into());
    destroy_now(&env, &state, period).await;
    let cert_path = certificates(&env).pop().unwrap();
    let cert: Value = serde_json::from_str(&fs::read_to_string(&cert_path).unwrap()).unwrap();
    let cert = &cert["body"];
    let p = target_cov(cert, "primary");
    let deleted = p["packs_deleted"].as_u64().unwrap();
    assert!(deleted > 0, "{p}");
    assert_eq!(p["packs_of_unit"].as_u64().unwrap(), deleted, "{p}");
    assert_eq!(p["packs_shared"], 0, "{p}");
    assert_eq!(p["worm"], false);
    assert_eq!(p["residual"]["remains"], false, "{p}");
    let primary_after = packs(&primary_root);
    assert_eq!(
        primary_after.len() as u64,
        primary_before.len() as u64 - deleted
    );
    let d = target_cov(cert, "dr");
    assert_eq!(d["worm"], true);
    assert!(d["packs_of_unit"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["packs_deleted"], 0, "{d}");
    assert_eq!(d["residual"]["remains"], true, "{d}");
    let why = d["residual"]["why"].as_str().unwrap();
    assert!(
        why.contains("write-once") && why.contains("lock expires"),
        "{why}"
    );
    assert_eq!(
        packs(&dr_root),
        dr_before,
        "nothing deleted from the worm target"
    );
    assert!(
        cert["residual_ciphertext"].as_str().unwrap().contains("dr"),
        "{cert}"
    );
    // The text form names the residual per target.
    let mut show = env.cli();
    show.args(["certificates", "show"]).arg(&cert_path);
    let text = stdout(&run(show));
    assert!(
        text.contains("residual ciphertext: remains (write-once"),
        "{text}"
    );

    // Both targets still check clean and restore everything else.
    for t in ["primary", "dr"] {
        let c = custos::ops::check::check(&env.policy, Some(t), true, Arc::new(NoProgress))
            .await
            .unwrap();
        assert!(c.ok, "check of {t} after the shred: {:?}", c.findings);
    }
    restore_all(&env, |db, out| {
        minus(db, out, |t, _| {
            (t == "cdrs").then(|| "started_at LIKE '2026-01%'".to_string())
        })
    })
    .await;

    // A subject's chunks share packs with other subjects: none is deleted
    // and the certificate says why ciphertext remains.
    let subject = busy_customer(&env.versions[0].1).to_string();
    destroy_now(&env, &state, custos::shred::UnitSpec::Subject(subject)).await;
    let cert_path = certificates(&env)
        .into_iter()
        .find(|c| c != &cert_path)
        .unwrap();
    let cert: Value = serde_json::from_str(&fs::read_to_string(&cert_path).unwrap()).unwrap();
    let p = target_cov(&cert["body"], "primary");
    assert!(p["packs_shared"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["packs_deleted"], 0, "{p}");
    assert_eq!(p["residual"]["remains"], true, "{p}");
    assert!(
        p["residual"]["why"]
            .as_str()
            .unwrap()
            .contains("forgotten and pruned"),
        "{p}"
    );
    assert_eq!(packs(&primary_root), primary_after);
}

/// Rows of `where_` in each table of `db` (the rows a unit's groups hold).
fn rows_where(db: &Path, where_: impl Fn(&str) -> String) -> u64 {
    let c = Connection::open(db).unwrap();
    TABLES
        .iter()
        .map(|(t, col)| {
            c.query_row(
                &format!("SELECT count(*) FROM {t} WHERE {}", where_(col)),
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_destroys_several_units_and_certifies_each_as_its_own() {
    let env = setup().await;
    let state = custos::state::StateDir::at(&env.state).unwrap();
    let v0 = &env.versions[0].1;
    // Two customers with calls in January 2026, and January itself: the
    // customers' January groups are of two units at once.
    let c = Connection::open(v0).unwrap();
    let two: Vec<i64> = c
        .prepare(
            "SELECT customer_id FROM cdrs WHERE started_at LIKE '2026-01%'
             GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 2",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(two.len(), 2);
    let period = "consumption:2026-01";
    let units = [
        custos::shred::UnitSpec::Subject(two[0].to_string()),
        custos::shred::UnitSpec::Period(period.into()),
        custos::shred::UnitSpec::Subject(two[1].to_string()),
    ];
    let primary_before = packs(&env.dir.join("targets/primary"));
    destroy_all_now(&env, &state, &units).await;

    // Each certificate counts its own unit's rows in every snapshot of
    // every target, as the databases the snapshots were taken of hold them
    // (a customer's January calls in the customer's and in January's).
    let vault = custos::ops::open_vault(&env.policy).await.unwrap();
    let customer = |id: i64| {
        let pseudo = custos::crypto::subject_pseudonym(vault.pseudonym_key(), &id.to_string());
        let rows: u64 = env
            .versions
            .iter()
            .map(|(_, db)| rows_where(db, |col| format!("{col} = {id}")))
            .sum();
        (pseudo, rows)
    };
    let january: u64 = env.versions.iter().map(|(_, db)| january_calls(db)).sum();
    let expected = [
        customer(two[0]),
        (period.to_string(), january),
        customer(two[1]),
    ];
    let certs = certificate_bodies(&env);
    assert_eq!(certs.len(), 3);
    let mut deleted = 0;
    for (name, rows) in &expected {
        let cert = assert_counts(&certs, name, *rows, 2);
        for t in ["primary", "dr"] {
            let cov = target_cov(cert, t);
            assert!(cov["error"].is_null(), "{cov}");
            if name == period {
                // The period owns whole packs; the customers share theirs.
                assert!(cov["packs_deleted"].as_u64().unwrap() > 0, "{cov}");
                assert_eq!(cov["packs_deleted"], cov["packs_of_unit"], "{cov}");
                if t == "primary" {
                    deleted = cov["packs_deleted"].as_u64().unwrap();
                }
            } else {
                assert_eq!(cov["packs_deleted"], 0, "{cov}");
                assert!(cov["packs_shared"].as_u64().unwrap() > 0, "{cov}");
            }
        }
    }
    assert_eq!(
        packs(&env.dir.join("targets/primary")).len() as u64,
        primary_before.len() as u64 - deleted
    );

    // Every snapshot restores without the three units' rows, and nothing
    // else is missing; both targets still check clean.
    restore_all_without(&env, &format!("IN ({}, {})", two[0], two[1])).await;
    for t in ["primary", "dr"] {
        let c = custos::ops::check::check(&env.policy, Some(t), true, Arc::new(NoProgress))
            .await
            .unwrap();
        assert!(c.ok, "check of {t} after the shred: {:?}", c.findings);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_at_once_are_each_decided_as_alone() {
    use custos::shred::{ShredError, UnitSpec};
    let env = setup().await;
    // 2026-03 ends 2026-04-01, + 280 days is 2027-01-06: young at `at`;
    // 2025-12 ends 2026-01-01, + 280 days is 2026-10-08: old enough.
    let (state, strict, at) = floor_280d(&env);
    let young = busy_customer(&env.versions[1].1).to_string();
    // A customer whose last call, in every snapshot, is before February.
    let old: i64 = {
        let last = |db: &Path| -> Vec<i64> {
            Connection::open(db)
                .unwrap()
                .prepare(
                    "SELECT customer_id FROM cdrs GROUP BY customer_id
                     HAVING max(started_at) < '2026-02' ORDER BY customer_id",
                )
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let later = last(&env.versions[1].1);
        *last(&env.versions[0].1)
            .iter()
            .find(|c| later.contains(c))
            .expect("a customer without recent calls")
    };
    let units = [
        UnitSpec::Subject(old.to_string()),
        UnitSpec::Subject(young.clone()),
        UnitSpec::Period("consumption:2025-12".into()),
        UnitSpec::Subject(old.to_string()),
        UnitSpec::Subject("no-such-customer".into()),
        UnitSpec::Period("consumption:2026-03".into()),
    ];
    let reqs: Vec<_> = units.iter().map(|u| dpo_request(u.clone(), true)).collect();
    let r = custos::shred::request_many(&strict, &state, &reqs, at)
        .await
        .unwrap();
    assert_eq!(r.len(), 6);
    assert!(r[0].is_ok(), "{:?}", r[0]);
    assert!(
        matches!(r[1], Err(ShredError::BelowFloor { .. })),
        "{:?}",
        r[1]
    );
    assert!(r[2].is_ok(), "{:?}", r[2]);
    assert!(
        matches!(r[3], Err(ShredError::AlreadyPending { .. })),
        "{:?}",
        r[3]
    );
    assert!(
        matches!(r[4], Err(ShredError::UnknownUnit { .. })),
        "{:?}",
        r[4]
    );
    assert!(
        matches!(r[5], Err(ShredError::BelowFloor { .. })),
        "{:?}",
        r[5]
    );
    let msg = r[1].as_ref().unwrap_err().to_string();
    assert!(
        msg.contains("the subject has consumption records of period 2026-03"),
        "{msg}"
    );

    // The ledger holds the two accepted requests, and only them.
    let vault = custos::ops::open_vault(&env.policy).await.unwrap();
    let pseudo = custos::crypto::subject_pseudonym(vault.pseudonym_key(), &old.to_string());
    let ledger = custos::shred::status(&strict).await.unwrap();
    let mut pending: Vec<String> = ledger.pending.iter().map(|p| p.unit.to_string()).collect();
    pending.sort();
    let mut want = vec![
        format!("subject:{pseudo}"),
        "period:consumption:2025-12".to_string(),
    ];
    want.sort();
    assert_eq!(pending, want);

    // One audit entry per request, four of them failures.
    let log = fs::read_to_string(env.state.join("audit/audit.jsonl")).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["op"] == "shred.request")
        .collect();
    assert_eq!(entries.len(), 6, "{log}");
    assert_eq!(
        entries.iter().filter(|e| e["outcome"] == "failed").count(),
        4,
        "{log}"
    );

    // The young customer alone is refused the same way.
    let e = custos::shred::request(
        &strict,
        &state,
        &dpo_request(UnitSpec::Subject(young), true),
        at,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ShredError::BelowFloor { .. }), "{e}");
}

/// A subject's floor weighs every record of the subject in any snapshot,
/// also one that only a later snapshot's overlay on an older window holds
/// (the window's base pages were walked with the older snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_floor_sees_records_that_only_an_overlay_holds() {
    use custos::shred::{ShredError, UnitSpec};
    let env = setup().await;
    let (state, strict, at) = floor_280d(&env);
    // A customer whose calls were all before February in both snapshots
    // (old enough at `at`), with calls in a window of the table that is
    // not its last (one an incremental overlays, not one it extends).
    let db = env.dir.join("crm.db");
    let (customer, call): (i64, i64) = {
        let c = Connection::open(&db).unwrap();
        c.query_row(
            "SELECT customer_id, min(id) FROM cdrs GROUP BY customer_id
             HAVING max(started_at) < '2026-02'
             ORDER BY min(id) LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let v0 = Connection::open(&env.versions[0].1).unwrap();
    let before: String = v0
        .query_row(
            "SELECT max(started_at) FROM cdrs WHERE customer_id = ?1",
            [customer],
            |r| r.get(0),
        )
        .unwrap();
    assert!(before.as_str() < "2026-02", "{before}");
    // One of its calls moves to March 2026 (young at `at`: March ends
    // 2026-04-01, + 280 days is 2027-01-06) and a third snapshot is taken.
    let moved = Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE cdrs SET started_at = '2026-03-15T10:00:00Z' WHERE id = ?1",
            [call],
        )
        .unwrap();
    assert_eq!(moved, 1);
    let third = backup_each_target(&env.policy).await;

    let refused = || async {
        let e = custos::shred::request(
            &strict,
            &state,
            &dpo_request(UnitSpec::Subject(customer.to_string()), true),
            at,
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ShredError::BelowFloor { .. }), "{msg}");
        assert!(
            msg.contains("the subject has consumption records of period 2026-03"),
            "{msg}"
        );
    };
    refused().await;

    // The same when the third snapshot's windows list a pack that does not
    // exist (their pages are then found through the whole index).
    let repo = custos::ops::OpenRepo::open(&env.policy, Some("primary"))
        .await
        .unwrap();
    let id = &third.iter().find(|(t, _)| t == "primary").unwrap().1;
    let mut snap = custos::repo::snapshot::Snapshot::find(&repo.target, &repo.meta, id)
        .await
        .unwrap();
    for t in &mut snap.sqlite.as_mut().expect("a SQLite snapshot").tables {
        for w in &mut t.windows {
            w.packs = Some(vec![custos::crypto::Id([7; 32])]);
        }
    }
    snap.store(&repo.target, &repo.meta).await.unwrap();
    drop(repo);
    refused().await;
}

/// A snapshot of the primary target that cannot be read: a subject
/// request under a floor is refused (its records there cannot be weighed),
/// and a destruction deletes no pack of that target and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_snapshot_refuses_a_floor_and_keeps_the_targets_packs() {
    use custos::shred::{ShredError, UnitSpec};
    let env = setup().await;
    let state = custos::state::StateDir::at(&env.state).unwrap();
    let customer = busy_customer(&env.versions[1].1).to_string();
    let first = &env.versions[0]
        .0
        .iter()
        .find(|(t, _)| t == "primary")
        .unwrap()
        .1;
    let object = env.dir.join(format!("targets/primary/snapshots/{first}"));
    let mut bytes = fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&object, &bytes).unwrap();

    let strict = with_shred_extra(&env, "min_retention = { consumption = \"1d\" }\n");
    let e = custos::shred::request(
        &strict,
        &state,
        &dpo_request(UnitSpec::Subject(customer.clone()), true),
        chrono::Utc::now(),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ShredError::FloorUnverifiable { .. }), "{msg}");
    assert!(msg.contains(first.as_str()), "{msg}");
    assert!(certificates(&env).is_empty());

    // Without a floor the keys go, but the primary's packs stay: what the
    // unreadable snapshot refers to cannot be told.
    let plain = with_shred_extra(&env, "");
    let primary_before = packs(&env.dir.join("targets/primary"));
    custos::shred::request(
        &plain,
        &state,
        &dpo_request(UnitSpec::Subject(customer), true),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let r = custos::shred::run(&plain, &state, &retention_run(chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(r.destroyed.len(), 1, "{r:?}");
    let cert = certificate_bodies(&env).pop().unwrap();
    let p = target_cov(&cert, "primary");
    let error = p["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1 snapshot object(s) unreadable") && error.contains(first.as_str()),
        "{p}"
    );
    assert_eq!(p["packs_deleted"], 0, "{p}");
    assert_eq!(p["residual"]["remains"], true, "{p}");
    assert_eq!(packs(&env.dir.join("targets/primary")), primary_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_nothing_due_does_not_read_the_repository() {
    let tmp = common::tempdir();
    let d = tmp.path();
    let db = d.join("crm.db");
    custos::demo::generate(&db, custos::demo::DemoSize::Bytes(200_000), 3, &NoProgress).unwrap();
    custos::keys::init_keys(&d.join("keys")).unwrap();
    fs::create_dir_all(d.join("vault")).unwrap();
    // The target is a counting wrapper around an in-memory store.
    let name = format!("shred-idle-{}", std::process::id());
    let counted = common::FaultStore::new(
        custos::target::open_url(
            &format!("memory://{name}-inner"),
            &Default::default(),
            false,
        )
        .unwrap(),
    );
    custos::target::register_memory(&name, counted.store());
    let text = faults_util::sqlite_policy(
        &db,
        &d.join("keys/service.age"),
        &format!("file://{}/vault", d.display()),
        &format!("memory://{name}"),
        "",
    );
    let policy_path = d.join("policy.toml");
    fs::write(&policy_path, text).unwrap();
    let policy = Policy::load(&policy_path).unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    custos::ops::backup::backup(&policy, &Default::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    let state = custos::state::StateDir::at(d.join("state")).unwrap();
    // A request still within its grace: the run has nothing to destroy.
    custos::shred::request(
        &policy,
        &state,
        &dpo_request(custos::shred::UnitSpec::Subject("1".into()), false),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let before = counted.counts();
    let r = custos::shred::run(&policy, &state, &retention_run(chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(r.waiting.len(), 1, "{r:?}");
    assert!(r.destroyed.is_empty() && r.failed.is_empty(), "{r:?}");
    let after = counted.counts();
    // Only the backup lock was taken and given back: nothing listed (no
    // snapshot, no index object), nothing deleted but the lock.
    assert_eq!(after.lists, before.lists, "{before:?} -> {after:?}");
    assert_eq!(after.deletes, before.deletes + 1, "{before:?} -> {after:?}");
}

/// The state directory, the policy with a 280-day floor for consumption
/// records, and the time the floor tests decide at (2026-12-02).
fn floor_280d(
    env: &Env,
) -> (
    custos::state::StateDir,
    Policy,
    chrono::DateTime<chrono::Utc>,
) {
    let state = custos::state::StateDir::at(&env.state).unwrap();
    let strict = with_shred_extra(env, "min_retention = { consumption = \"280d\" }\n");
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    (state, strict, at)
}

/// Rewrites the policy file with `extra` appended to `[shred]` (the last
/// table) and loads it.
fn with_shred_extra(env: &Env, extra: &str) -> Policy {
    let text = policy_text_with(&env.dir, &env.s3, false) + extra;
    fs::write(&env.policy_path, text).unwrap();
    Policy::load(&env.policy_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_retention_refuses_young_units_and_a_policy_edit_cannot_lower_it() {
    let env = setup().await;
    let state = custos::state::StateDir::at(&env.state).unwrap();
    let req = dpo_request;
    let period = |p: &str| custos::shred::UnitSpec::Period(p.into());
    let t0 = chrono::Utc::now();

    // A request made while the policy had no floor: pending, due in 7 days.
    let plain = env.policy.clone();
    custos::shred::request(
        &plain,
        &state,
        &req(period("consumption:2026-02"), false),
        t0,
    )
    .await
    .unwrap();

    // The floor appears: 400 days after the end of the period.
    let strict = with_shred_extra(&env, "min_retention = { consumption = \"400d\" }\n");
    let e = custos::shred::request(
        &strict,
        &state,
        &req(period("consumption:2026-01"), true),
        t0,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, custos::shred::ShredError::BelowFloor { .. }),
        "{msg}"
    );
    assert!(msg.contains("2027-03-08T00:00:00Z"), "{msg}");
    assert!(
        msg.contains("consumption records of period 2026-01 must be kept 400d"),
        "{msg}"
    );
    // An old enough period is accepted (2025-04 ends 2025-05-01; + 400d
    // is 2026-06-05).
    if t0 > chrono::DateTime::parse_from_rfc3339("2026-06-06T00:00:00Z").unwrap() {
        custos::shred::request(
            &strict,
            &state,
            &req(period("consumption:2025-04"), true),
            t0,
        )
        .await
        .unwrap();
    }
    // A subject whose usage records are young cannot be erased either, and
    // the error names no subject id.
    let subject = busy_customer(&env.versions[1].1).to_string();
    let e = custos::shred::request(
        &strict,
        &state,
        &req(custos::shred::UnitSpec::Subject(subject.clone()), true),
        t0,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("the subject has consumption records of period 2026-03"),
        "{msg}"
    );
    // (A short numeric id can appear inside a time or a hex pseudonym: those
    // words are set aside, and the id must not stand as a word of the rest.)
    let words: Vec<&str> = msg
        .split_whitespace()
        .filter(|w| !(w.contains(':') && w.contains('T')))
        .filter(|w| !w.trim_end_matches([',', ':', ';']).starts_with("subject:"))
        .flat_map(|w| w.split(|c: char| !c.is_ascii_alphanumeric()))
        .collect();
    assert!(!words.contains(&subject.as_str()), "{msg}");

    // The request made before the floor was recorded is due after its
    // grace, but a run keeps it pending: too young.
    let later = t0 + chrono::Duration::days(8);
    let opts = custos::shred::RunOptions {
        now: later,
        performer: "job:crm/retention".into(),
        role: "retention".into(),
        only: None,
    };
    let r = custos::shred::run(&strict, &state, &opts).await.unwrap();
    assert!(
        r.destroyed
            .iter()
            .all(|d| d.unit.name != "consumption:2026-02"),
        "{r:?}"
    );
    assert_eq!(r.below_floor.len(), 1, "{r:?}");
    assert_eq!(r.below_floor[0].0.name, "consumption:2026-02");

    // Lowering the policy value (or removing it) does not lower the floor.
    for extra in ["min_retention = { consumption = \"1d\" }\n", ""] {
        let lowered = with_shred_extra(&env, extra);
        assert!(lowered
            .shred
            .min_retention
            .values()
            .all(|d| d.as_secs() == 86_400));
        let e = custos::shred::request(
            &lowered,
            &state,
            &req(period("consumption:2026-01"), true),
            t0,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, custos::shred::ShredError::BelowFloor { .. }),
            "{e}"
        );
        let r = custos::shred::run(&lowered, &state, &opts).await.unwrap();
        assert_eq!(r.below_floor.len(), 1, "{r:?}");
        let l = custos::shred::status(&lowered).await.unwrap();
        assert_eq!(l.version, 2);
        assert_eq!(l.floors.len(), 1);
        assert_eq!(l.floors[0].class, "consumption");
        assert_eq!(l.floors[0].seconds, 400 * 86_400);
    }
    // The CLI says so and exits 2 (bad input).
    let mut c = env.cli();
    c.args(["shred", "--policy"]).arg(&env.policy_path).args([
        "--period",
        "consumption:2026-01",
        "--now",
    ]);
    let out = run_fail(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not be destroyed before 2027-03-08"),
        "{err}"
    );
    // The period key is still there.
    let v = custos::ops::open_vault(&env.policy).await.unwrap();
    assert!(v.lookup(KeyKind::Period, "consumption:2026-01").is_some());
    assert!(v.lookup(KeyKind::Period, "consumption:2026-02").is_some());

    // Raising it is recorded.
    let raised = with_shred_extra(&env, "min_retention = { consumption = \"500d\" }\n");
    let _ = custos::shred::request(
        &raised,
        &state,
        &req(period("consumption:2026-01"), true),
        t0,
    )
    .await;
    let l = custos::shred::status(&raised).await.unwrap();
    assert_eq!(l.floors[0].seconds, 500 * 86_400);
    assert!(l.floors[0].raised.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_a_later_snapshot_names_again_are_certified_in_it_too() {
    let mut env = setup().await;
    // A third snapshot on each target in which only tickets changed: the
    // other tables' read windows are the second snapshot's again (the
    // same pages), and the run reads them once for both snapshots.
    let db = env.dir.join("crm.db");
    let changed = Connection::open(&db)
        .unwrap()
        .execute("UPDATE tickets SET status = 'closed' WHERE id % 7 = 0", [])
        .unwrap();
    assert!(changed > 0);
    let snaps = backup_each_target(&env.policy).await;
    let copy = env.dir.join("crm-v2.db");
    fs::copy(&db, &copy).unwrap();
    env.versions.push((snaps, copy));

    erase_busy_customer_and_january(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_that_list_no_packs_or_wrong_ones_are_read_through_the_whole_index() {
    let env = setup().await;
    // A read window lists the packs of its pages (FORMAT 3.5), and the walk
    // reads only their index objects. On the primary the second snapshot's
    // windows list a pack that does not exist; on the off-site target the
    // first snapshot's list nothing (as written before the lists existed).
    // Those are read through the target's whole index, and certified the
    // same.
    let bogus = Some(vec![custos::crypto::Id([7; 32])]);
    for (target, v, list) in [("primary", 1, bogus), ("dr", 0, None)] {
        let repo = custos::ops::OpenRepo::open(&env.policy, Some(target))
            .await
            .unwrap();
        let id = &env.versions[v]
            .0
            .iter()
            .find(|(t, _)| t == target)
            .unwrap()
            .1;
        let mut snap = custos::repo::snapshot::Snapshot::find(&repo.target, &repo.meta, id)
            .await
            .unwrap();
        let tables = &mut snap.sqlite.as_mut().expect("a SQLite snapshot").tables;
        for t in tables {
            assert!(t.windows.iter().all(|w| w.packs.is_some()), "{}", t.name);
            for w in &mut t.windows {
                w.packs = list.clone();
            }
        }
        snap.store(&repo.target, &repo.meta).await.unwrap();
    }

    erase_busy_customer_and_january(&env).await;
}
