//! Retention end to end: forget + prune on real SQLite backups (file:// and
//! a real S3 server) keeps every kept snapshot restorable and shrinks the
//! target; prune and backup never run at once; due units are computed from
//! a store with known times at a given clock; the CLI never prints subject
//! ids and writes an audit entry.

mod common;

use common::{bytes_under, custos, file_url, run, stdout, tempdir, S3Server};
use custos::ops::backup::{backup, BackupOptions};
use custos::ops::check::{check, Level};
use custos::ops::lock::BackupLock;
use custos::ops::prune::{forget_and_prune, PruneOptions};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::snapshot::Snapshot;
use custos::retention::{due_units, epoch_end, SqliteLive, UnitKind};
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE customers(id TEXT PRIMARY KEY, name TEXT, closed_at);
CREATE TABLE contracts(id INTEGER PRIMARY KEY, customer_id TEXT, ended_at);
CREATE TABLE cdrs(id INTEGER PRIMARY KEY, customer_id TEXT, started_at TEXT, payload BLOB);
CREATE TABLE sms(id INTEGER PRIMARY KEY, customer_id TEXT, sent_at TEXT);
CREATE TABLE events(id INTEGER PRIMARY KEY, created_at TEXT, what TEXT);
";

const TABLES: &str = r#"
[[store.tables]]
name = "customers"
class = "identity"
subject = "id"
retain = { after = "closed_at", for = "365d" }

[[store.tables]]
name = "contracts"
class = "business"
subject = "customer_id"
retain = { after = "ended_at", for = "30d" }

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = { column = "started_at", every = "month" }
retain = { after = "started_at", for = "180d" }

[[store.tables]]
name = "sms"
class = "consumption"
subject = "customer_id"
period = { column = "sent_at", every = "month" }
retain = { after = "sent_at", for = "200d" }

[[store.tables]]
name = "events"
class = "service"
retain = { after = "created_at", for = "30d" }
"#;

struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    policy: PathBuf,
}

impl Fixture {
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn load(&self) -> Policy {
        Policy::load(&self.policy).unwrap()
    }
}

/// Keys, a vault, a policy around a database made by `fill`; `target` is
/// the primary's URL (None: a `file://` folder `target/`), `extra` is
/// appended to the policy. The repository is initialised.
async fn fixture(fill: impl FnOnce(&Connection), target: Option<String>, extra: &str) -> Fixture {
    let dir = tempdir();
    let db = dir.path().join("crm.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(SCHEMA).unwrap();
    fill(&c);
    drop(c);
    let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
    let target = target.unwrap_or_else(|| {
        let t = dir.path().join("target");
        std::fs::create_dir_all(&t).unwrap();
        file_url(&t)
    });
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let text = format!(
        "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = {db:?}\n{TABLES}\n\
         [keys]\nidentity = {id:?}\nrecipients = []\nvault = [\"{vault}\"]\n\n\
         [[targets]]\nname = \"primary\"\nurl = \"{target}\"\n{extra}\n",
        db = db.to_str().unwrap(),
        id = keys.identity_path.to_str().unwrap(),
        vault = file_url(&vault),
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let f = Fixture { dir, db, policy };
    custos::ops::init::init(&f.load()).await.unwrap();
    f
}

fn small_packs() -> BackupOptions {
    BackupOptions {
        pack_size: 64 << 10,
        ..BackupOptions::default()
    }
}

/// Incompressible bytes (xorshift), so pack sizes follow the data.
fn noise(len: usize, mut s: u64) -> Vec<u8> {
    s |= 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// 200 call records of about 1 KiB in month `ym` (e.g. `2025-09`).
fn add_month(c: &Connection, ym: &str, seed: u64) {
    let mut st = c
        .prepare("INSERT INTO cdrs(customer_id, started_at, payload) VALUES (?1, ?2, ?3)")
        .unwrap();
    for i in 0..200u64 {
        st.execute(params![
            format!("C-{}", i % 7),
            format!("{ym}-{:02}T10:00:00Z", i % 28 + 1),
            noise(1000, seed * 1000 + i)
        ])
        .unwrap();
    }
}

async fn restore_equal(policy: &Policy, snapshot: &str, source: &Path, to: &Path) {
    restore(
        policy,
        &RestoreOptions {
            target: None,
            snapshot: snapshot.to_string(),
            to: to.to_path_buf(),
            force: false,
            only: Default::default(),
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let c = custos::store::compare::compare(source, to).unwrap();
    assert!(
        c.differences.is_empty(),
        "snapshot {snapshot} differs from its source: {:?}",
        &c.differences[..c.differences.len().min(5)]
    );
    assert!(c.rows > 0);
}

async fn assert_check_read_data(policy: &Policy) {
    let r = check(policy, None, true, Arc::new(NoProgress))
        .await
        .unwrap();
    let errors: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .collect();
    assert!(r.ok && errors.is_empty(), "check --read-data: {errors:?}");
}

async fn snapshot_ids(policy: &Policy) -> Vec<String> {
    let repo = custos::ops::OpenRepo::open(policy, None).await.unwrap();
    let (list, bad) = Snapshot::list(&repo.target, &repo.meta).await.unwrap();
    assert!(bad.is_empty());
    list.into_iter().map(|s| s.id).collect()
}

/// Three snapshots of a store whose oldest months are deleted between them;
/// `keep_last = 2` forgets the first. Returns (snapshot ids, source copies).
async fn three_snapshots(f: &Fixture) -> (Vec<String>, Vec<PathBuf>) {
    let policy = f.load();
    let mut ids = Vec::new();
    let mut copies = Vec::new();
    for step in 0..3 {
        if step > 0 {
            let c = Connection::open(&f.db).unwrap();
            let old = ["2025-09", "2025-10", "2025-11"];
            for m in &old[(step - 1) * 2..(step * 2).min(3)] {
                c.execute(
                    "DELETE FROM cdrs WHERE started_at LIKE ?1",
                    [format!("{m}%")],
                )
                .unwrap();
            }
            add_month(&c, &format!("2026-0{step}"), 50 + step as u64);
        }
        let r = backup(&policy, &small_packs(), Arc::new(NoProgress))
            .await
            .unwrap();
        let copy = f.path(&format!("source-{step}.db"));
        std::fs::copy(&f.db, &copy).unwrap();
        ids.push(r.snapshot);
        copies.push(copy);
    }
    (ids, copies)
}

fn months(c: &Connection) {
    for (i, m) in ["2025-09", "2025-10", "2025-11", "2025-12"]
        .iter()
        .enumerate()
    {
        add_month(c, m, i as u64 + 1);
    }
    c.execute_batch(
        "INSERT INTO customers VALUES ('C-1', 'a', '2025-01-01'), ('C-2', 'b', NULL);
         INSERT INTO events(created_at, what) VALUES ('2026-01-05', 'login');",
    )
    .unwrap();
}

/// The scenario on one target: `bytes` measures the repository's bytes.
async fn forget_and_prune_scenario(f: &Fixture, bytes: impl Fn() -> u64) {
    let policy = f.load();
    let (ids, copies) = three_snapshots(f).await;
    let before = bytes();

    // A dry run reports and changes nothing.
    let dry = forget_and_prune(
        &policy,
        &PruneOptions {
            dry_run: true,
            ..PruneOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.forgotten, [ids[0].clone()]);
    assert!(dry.packs_deleted > 0, "{dry:?}");
    assert_eq!(bytes(), before, "a dry run deleted something");
    assert_eq!(snapshot_ids(&policy).await.len(), 3);

    let r = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap();
    assert_eq!(r.forgotten, [ids[0].clone()]);
    assert_eq!(r.packs_deleted, dry.packs_deleted);
    assert_eq!(r.bytes_deleted, dry.bytes_deleted);
    let kept: Vec<(&str, bool)> = r
        .snapshots
        .iter()
        .map(|d| (d.id.as_str(), d.keep))
        .collect();
    assert_eq!(
        kept,
        [
            (ids[2].as_str(), true),
            (ids[1].as_str(), true),
            (ids[0].as_str(), false)
        ]
    );
    let after = bytes();
    // Months 2025-09 and 2025-10 (400 rows of 1000 random bytes) were only
    // in the forgotten snapshot: their packs are gone.
    assert!(
        before - after >= 350_000,
        "the target shrank by {} bytes only ({before} → {after})",
        before - after
    );
    let mut left = snapshot_ids(&policy).await;
    left.sort();
    let mut want = vec![ids[1].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(left, want);
    assert_check_read_data(&policy).await;
    for (i, (id, copy)) in ids.iter().zip(&copies).enumerate().skip(1) {
        restore_equal(&policy, id, copy, &f.path(&format!("restored-{i}.db"))).await;
    }
    let gone = restore(
        &policy,
        &RestoreOptions {
            target: None,
            snapshot: ids[0].clone(),
            to: f.path("restored-0.db"),
            force: false,
            only: Default::default(),
        },
        Arc::new(NoProgress),
    )
    .await;
    assert!(gone.is_err(), "the forgotten snapshot still restores");

    // A second run finds nothing more to do.
    let again = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap();
    assert!(again.forgotten.is_empty());
    assert_eq!(again.packs_deleted + again.unindexed_packs_deleted, 0);
    assert_eq!(bytes(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_on_a_file_target_keeps_kept_snapshots_whole_and_shrinks_the_target() {
    let f = fixture(months, None, "\n[snapshots]\nkeep_last = 2\n").await;
    let target = f.path("target");
    forget_and_prune_scenario(&f, || bytes_under(&target)).await;
}

/// A read window lists the packs of its blobs (FORMAT 3.5), and prune
/// finds what a kept window needs through their index objects. A list
/// that names a pack that does not exist, names none, or names its tree
/// pages' packs but not its chunks' sends prune to the whole index for
/// that window: nothing a kept snapshot needs is deleted, and what only
/// the forgotten one needed is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_windows_need_when_their_pack_lists_are_wrong_or_missing() {
    use custos::crypto::Id;
    // (what, the list given a window's pages' packs)
    type Rewrite = fn(Vec<Id>) -> Option<Vec<Id>>;
    let rewrites: [(&str, Rewrite); 3] = [
        ("a pack that does not exist", |_| Some(vec![Id([7; 32])])),
        ("none", |_| None),
        ("its pages' packs only", Some),
    ];
    for (what, rewrite) in rewrites {
        let f = fixture(months, None, "\n[snapshots]\nkeep_last = 2\n").await;
        let policy = f.load();
        let (ids, copies) = three_snapshots(&f).await;
        let repo = custos::ops::OpenRepo::open(&policy, None).await.unwrap();
        let index = custos::repo::index::Index::load(&repo.target, &repo.meta)
            .await
            .unwrap();
        let mut left_out = 0;
        for id in &ids[1..] {
            let mut snap = Snapshot::find(&repo.target, &repo.meta, id).await.unwrap();
            let tables = &mut snap.sqlite.as_mut().expect("a SQLite snapshot").tables;
            for t in tables {
                for w in t.page_windows() {
                    let mark = &mut t.windows[w.mark.expect("windows are marked")];
                    let listed = mark.packs.clone().expect("every window lists its packs");
                    let mut of_pages: Vec<Id> = t.pages[w.range]
                        .iter()
                        .map(|p| index.pack_of(&index.chunks[p]).0)
                        .collect();
                    of_pages.sort_unstable();
                    of_pages.dedup();
                    left_out += listed.iter().filter(|p| !of_pages.contains(p)).count();
                    mark.packs = rewrite(of_pages);
                }
            }
            snap.store(&repo.target, &repo.meta).await.unwrap();
        }
        // Some windows' chunks lie in packs their pages do not.
        assert!(left_out > 0, "{what}");
        drop((repo, index));
        let target = f.path("target");
        let before = bytes_under(&target);
        let r = forget_and_prune(&policy, &PruneOptions::default())
            .await
            .unwrap();
        assert_eq!(r.forgotten, [ids[0].clone()], "{what}");
        let after = bytes_under(&target);
        assert!(
            before - after >= 350_000,
            "{what}: the target shrank by {} bytes only",
            before - after
        );
        assert_check_read_data(&policy).await;
        for (i, (id, copy)) in ids.iter().zip(&copies).enumerate().skip(1) {
            restore_equal(&policy, id, copy, &f.path(&format!("restored-{i}.db"))).await;
        }
    }
}

/// Flips the byte at `at(length)` of a file: damage a reader must notice.
fn flip_byte(path: &Path, at: impl FnOnce(usize) -> usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0x55;
    std::fs::write(path, &bytes).unwrap();
}

/// Prune refuses, naming snapshot `id` as unreadable, and the target
/// keeps every byte and every snapshot object.
async fn prune_refuses_naming(f: &Fixture, ids: &[String], id: &str) {
    let target = f.path("target");
    let before = bytes_under(&target);
    let e = forget_and_prune(&f.load(), &PruneOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 snapshot object(s) are unreadable, so prune cannot tell what they need")
            && e.contains(id),
        "{e}"
    );
    assert_eq!(bytes_under(&target), before);
    for id in ids {
        assert!(f.path(&format!("target/snapshots/{id}")).exists(), "{id}");
    }
}

/// A snapshot object that cannot be read stops prune before it deletes
/// anything: what the snapshot needs cannot be told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_nothing_while_a_snapshot_cannot_be_read() {
    let f = fixture(months, None, "\n[snapshots]\nkeep_last = 2\n").await;
    let (ids, _) = three_snapshots(&f).await;
    flip_byte(&f.path(&format!("target/snapshots/{}", ids[1])), |n| n / 2);
    prune_refuses_naming(&f, &ids, &ids[1]).await;
}

/// The snapshot object reads (its head is fine); one of its page lists,
/// sealed in a metadata pack, does not. Prune reads each snapshot in full
/// one at a time, after the heads: the second stage must stop it as the
/// first does, also for the snapshot it would forget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_nothing_while_a_snapshots_page_list_cannot_be_read() {
    let f = fixture(months, None, "\n[snapshots]\nkeep_last = 2\n").await;
    let (ids, _) = three_snapshots(&f).await;
    let repo = custos::ops::MetaRepo::open(&f.load(), None).await.unwrap();
    let snap = Snapshot::find(&repo.target, &repo.meta, &ids[0])
        .await
        .unwrap();
    let list = *snap.page_lists().next().expect("a page list");
    let pack = f.path(&format!(
        "target/{}",
        custos::repo::pack::pack_path(&list.pack)
    ));
    flip_byte(&pack, |_| list.offset as usize + list.len as usize / 2);
    prune_refuses_naming(&f, &ids, &ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_on_an_s3_target_keeps_kept_snapshots_whole_and_shrinks_the_target() {
    let s3 = S3Server::start();
    s3.create_bucket("crm");
    let extra = format!(
        "\n[snapshots]\nkeep_last = 2\n\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 1\n",
        s3.endpoint()
    );
    let f = fixture(months, Some(s3.url("crm", "repo")), &extra).await;
    let bucket = s3.root().join("crm");
    forget_and_prune_scenario(&f, || bytes_under(&bucket)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_running_backup_and_never_deletes_under_it() {
    let f = fixture(months, None, "\n[snapshots]\nkeep_last = 1\n").await;
    let policy = f.load();
    let (ids, copies) = three_snapshots(&f).await;
    let target = custos::ops::select_target(&policy, None).unwrap();

    // A backup holds the lock: prune gives up after its wait, deleting nothing.
    let held = BackupLock::acquire(&target).await.unwrap();
    let before = bytes_under(&f.path("target"));
    let opts = PruneOptions {
        lock_wait: Duration::from_millis(600),
        ..PruneOptions::default()
    };
    let e = forget_and_prune(&policy, &opts).await.unwrap_err();
    assert!(e.to_string().contains("another backup"), "{e}");
    assert_eq!(bytes_under(&f.path("target")), before);
    assert_eq!(snapshot_ids(&policy).await.len(), 3);

    // The backup finishes while prune waits: prune then runs.
    let t2 = target.clone();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        held.release(&t2).await.unwrap();
    });
    let r = forget_and_prune(
        &policy,
        &PruneOptions {
            lock_wait: Duration::from_secs(30),
            ..PruneOptions::default()
        },
    )
    .await
    .unwrap();
    release.await.unwrap();
    assert_eq!(r.forgotten.len(), 2);
    assert_eq!(snapshot_ids(&policy).await, [ids[2].clone()]);
    restore_equal(&policy, &ids[2], &copies[2], &f.path("r2.db")).await;

    // A real backup and prune started together: whichever takes the lock
    // first runs; a refused backup is run again. Every kept snapshot then
    // restores and check --read-data passes.
    {
        let c = Connection::open(&f.db).unwrap();
        c.execute("DELETE FROM cdrs WHERE started_at LIKE '2025-12%'", [])
            .unwrap();
        add_month(&c, "2026-05", 99);
    }
    let copy = f.path("source-concurrent.db");
    std::fs::copy(&f.db, &copy).unwrap();
    let bopts = small_packs();
    let popts = PruneOptions {
        lock_wait: Duration::from_secs(60),
        ..PruneOptions::default()
    };
    let (b, p) = tokio::join!(
        backup(&policy, &bopts, Arc::new(NoProgress)),
        forget_and_prune(&policy, &popts)
    );
    p.unwrap();
    let new_id = match b {
        Ok(r) => r.snapshot,
        Err(e) => {
            assert!(e.to_string().contains("another backup"), "{e}");
            backup(&policy, &bopts, Arc::new(NoProgress))
                .await
                .unwrap()
                .snapshot
        }
    };
    // Prune once more now that the new snapshot exists (keeps only it).
    forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap();
    assert_eq!(snapshot_ids(&policy).await, [new_id.as_str()]);
    assert_check_read_data(&policy).await;
    restore_equal(&policy, &new_id, &copy, &f.path("r-new.db")).await;
}

fn due_store(c: &Connection) {
    c.execute_batch(
        "INSERT INTO customers VALUES
           ('C-1', 'a', '2025-01-01'), ('C-2', 'b', NULL), ('C-3', 'c', '2025-10-01'),
           ('C-4', 'd', 1735689600), ('C-5', 'e', '2024-06-01');
         INSERT INTO contracts(customer_id, ended_at) VALUES
           ('C-1', '2026-05-20'), ('C-4', '2025-02-01'), ('C-6', '2026-01-01T00:00:00Z'),
           ('C-5', NULL);
         INSERT INTO cdrs(customer_id, started_at) VALUES
           ('C-1', '2025-10-03T10:00:00Z'), ('C-1', '2025-11-03 10:00'), ('C-3', '2025-12-31T23:59:59Z'),
           ('C-4', '2026-01-15');
         INSERT INTO sms(customer_id, sent_at) VALUES ('C-1', '2025-09-10'), ('C-2', '2025-10-11');
         INSERT INTO events(created_at, what) VALUES ('2026-01-05', 'login');",
    )
    .unwrap();
}

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_units_follow_the_store_times_at_the_given_clock() {
    let f = fixture(due_store, None, "").await;
    let policy = f.load();
    backup(&policy, &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    let vault = custos::ops::open_vault(&policy).await.unwrap();
    let store = SqliteLive::open(&f.db).unwrap();
    let pseud = |s: &str| custos::crypto::subject_pseudonym(vault.pseudonym_key(), s);

    let due = due_units(&policy, &store, &vault, at("2026-06-01T00:00:00Z")).unwrap();
    let got: Vec<(UnitKind, &str, String, String, bool)> = due
        .iter()
        .map(|u| {
            (
                u.kind,
                u.class.as_str(),
                u.label.clone(),
                u.due_since.format("%Y-%m-%d").to_string(),
                u.key_present,
            )
        })
        .collect();
    let want_subjects = vec![
        (
            UnitKind::Subject,
            "identity",
            pseud("C-4"),
            "2026-01-01".to_string(),
            true,
        ),
        (
            UnitKind::Subject,
            "business",
            pseud("C-6"),
            "2026-01-31".to_string(),
            true,
        ),
    ];
    // Sorted by class in the regulation's order (identity before business).
    let mut want = vec![
        // Shared by cdrs (180d) and sms (200d): the later end counts.
        (
            UnitKind::Period,
            "consumption",
            "2025-09".to_string(),
            "2026-04-19".to_string(),
            true,
        ),
        (
            UnitKind::Period,
            "consumption",
            "2025-10".to_string(),
            "2026-05-20".to_string(),
            true,
        ),
    ];
    want.extend(want_subjects);
    assert_eq!(got, want);
    // The subject id travels with the unit for the shredding code, and
    // nowhere else.
    let c4 = due.iter().find(|u| u.label == pseud("C-4")).unwrap();
    assert_eq!(c4.subject.as_ref().unwrap().expose(), "C-4");
    assert_eq!(c4.tables, ["customers", "contracts"]);
    let json = serde_json::to_string(&due).unwrap();
    assert!(!json.contains("C-4") && !json.contains("C-6"), "{json}");
    assert!(!format!("{due:?}").contains("C-4"));

    // Earlier, nothing is due; C-1 waits for its contract (2026-06-19).
    assert!(
        due_units(&policy, &store, &vault, at("2025-12-31T00:00:00Z"))
            .unwrap()
            .is_empty()
    );
    let later = due_units(&policy, &store, &vault, at("2026-06-20T00:00:00Z")).unwrap();
    assert!(later.iter().any(|u| u.label == pseud("C-1")));
    assert!(!later
        .iter()
        .any(|u| u.label == pseud("C-2") || u.label == pseud("C-5")));

    // Epochs: the backup's class-epoch keys (identity, business, service)
    // are due one class retention after the epoch ends.
    let label = policy.store.epoch.label(chrono::Utc::now());
    let end = epoch_end(&label).unwrap();
    let epochs = |now| -> Vec<String> {
        due_units(&policy, &store, &vault, now)
            .unwrap()
            .into_iter()
            .filter(|u| u.kind == UnitKind::Epoch)
            .map(|u| u.key_name)
            .collect()
    };
    assert!(epochs(end + chrono::TimeDelta::days(29)).is_empty());
    assert_eq!(
        epochs(end + chrono::TimeDelta::days(31)),
        [format!("business:{label}"), format!("service:{label}")]
    );
    assert_eq!(
        epochs(end + chrono::TimeDelta::days(366)),
        [
            format!("identity:{label}"),
            format!("business:{label}"),
            format!("service:{label}")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_command_lists_due_units_by_pseudonym_and_audits_the_run() {
    let f = fixture(due_store, None, "\n[snapshots]\nkeep_last = 1\n").await;
    let policy = f.load();
    for _ in 0..2 {
        backup(&policy, &BackupOptions::default(), Arc::new(NoProgress))
            .await
            .unwrap();
    }
    let state = f.path("state");
    let cmd = |extra: &[&str]| {
        let mut c = custos();
        c.arg("--state-dir")
            .arg(&state)
            .args(["retention", "--policy"])
            .arg(&f.policy)
            .args(["--as-of", "2026-06-01T00:00:00Z"])
            .args(extra);
        c
    };
    let out = stdout(&run(cmd(&["--dry-run", "--json"])));
    assert!(!out.contains("C-4") && !out.contains("C-6"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["snapshots"][0]["forgotten"].as_array().unwrap().len(), 1);
    assert!(v["scheduled"].as_array().unwrap().is_empty());
    let kinds: BTreeMap<String, usize> =
        v["due"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, u| {
                *m.entry(u["kind"].as_str().unwrap().to_string())
                    .or_default() += 1;
                m
            });
    assert_eq!(
        kinds,
        BTreeMap::from([("period".into(), 2), ("subject".into(), 2)])
    );
    assert_eq!(
        snapshot_ids(&policy).await.len(),
        2,
        "a dry run forgot a snapshot"
    );

    let text = stdout(&run(cmd(&[])));
    assert!(text.contains("forgot 1"), "{text}");
    assert!(!text.contains("C-4"), "{text}");
    assert_eq!(snapshot_ids(&policy).await.len(), 1);

    // The real run scheduled every due unit for destruction after the grace
    // (default 7 days); nothing is destroyed yet.
    let v: serde_json::Value = serde_json::from_str(&stdout(&run(cmd(&["--json"])))).unwrap();
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 4, "{v}");
    assert!(v["shred"]["destroyed"].as_array().unwrap().is_empty());
    // After the grace, the next run destroys them, with a certificate each.
    let mut later = custos();
    later
        .arg("--state-dir")
        .arg(&state)
        .args(["retention", "--policy"])
        .arg(&f.policy)
        .args(["--as-of", "2026-06-09T00:00:00Z", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&run(later))).unwrap();
    let destroyed = v["shred"]["destroyed"].as_array().unwrap();
    assert_eq!(destroyed.len(), 4, "{v}");
    assert!(v["pending"].as_array().unwrap().is_empty());
    for d in destroyed {
        let id = d["certificate"].as_str().unwrap();
        assert!(state
            .join("certificates/crm")
            .join(format!("{id}.json"))
            .is_file());
    }
    // The latest snapshot now restores without the expired customers' rows
    // (C-4, C-6) and without the expired months, and with everything else.
    let to = f.path("restored.db");
    let mut r = custos();
    r.arg("--state-dir")
        .arg(&state)
        .args(["restore", "--policy"])
        .arg(&f.policy)
        .args(["--snapshot", "latest", "--to"])
        .arg(&to);
    run(r);
    let c = Connection::open(&to).unwrap();
    let ids: Vec<String> = c
        .prepare("SELECT id FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, ["C-1", "C-2", "C-3", "C-5"]);
    let contracts: Vec<String> = c
        .prepare("SELECT customer_id FROM contracts ORDER BY customer_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(contracts, ["C-1", "C-5"]);

    let log = custos::audit::AuditLog::open(&state.join("audit")).unwrap();
    let entries = log.entries().unwrap();
    let ours: Vec<_> = entries.iter().filter(|e| e.op == "retention").collect();
    assert_eq!(ours.len(), 4);
    assert!(ours[0].flags.contains(&"dry-run".to_string()));
    let all = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(!all.contains("C-4"));
    assert!(log.verify(None).unwrap().ok());
}
