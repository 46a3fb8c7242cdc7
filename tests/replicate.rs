//! Replication across real targets (`file://` and two buckets of a real S3
//! server over HTTP): copies restore alone, damage is found and repaired,
//! an interrupted run leaves only restorable snapshots, and a target that
//! is down leaves snapshots under-replicated until it comes back.

mod common;
#[path = "common/faults_util.rs"]
mod util;

use common::{custos, file_url, run, run_fail, stderr, stdout, tempdir, S3Server};
use custos::demo::{generate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::ops::check::{check, Level};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::replicate::{replicate, Reason, ReplicateOptions, ReplicationReport};
use custos::state::StateDir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use util::{flip_bit, objects_under, truncate, FaultyS3};

/// A demo database, service keys, a file vault, a file primary and the
/// state directory; the off-site targets are given per test.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    identity: PathBuf,
}

impl Fixture {
    fn new(seed: u64) -> Fixture {
        let dir = tempdir();
        let db = dir.path().join("crm.db");
        generate(&db, DemoSize::Bytes(1 << 20), seed, &NoProgress).unwrap();
        let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
        Fixture {
            identity: keys.identity_path,
            db,
            dir,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn primary_dir(&self) -> PathBuf {
        self.path("primary")
    }
    fn state(&self) -> StateDir {
        StateDir::at(self.path("state")).unwrap()
    }
    /// Writes `policy.toml`: the primary, then `offsite` as (name, url,
    /// extra lines), then `extra`.
    fn policy(&self, offsite: &[(&str, String, &str)], extra: &str) -> (PathBuf, Policy) {
        std::fs::create_dir_all(self.primary_dir()).unwrap();
        let mut text = format!(
            r#"[policy]
name = "crm"

[store]
kind = "sqlite"
path = "{db}"

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = {{ column = "started_at", every = "month" }}

[keys]
identity = "{id}"
recipients = []
vault = ["{vault}"]

[[targets]]
name = "primary"
url = "{primary}"
"#,
            db = self.db.display(),
            id = self.identity.display(),
            vault = file_url(&self.path("vault")),
            primary = file_url(&self.primary_dir()),
        );
        for (name, url, more) in offsite {
            text.push_str(&format!(
                "\n[[targets]]\nname = \"{name}\"\nurl = \"{url}\"\noffsite = true\n{more}\n"
            ));
        }
        text.push_str(extra);
        let p = self.path("policy.toml");
        std::fs::write(&p, text).unwrap();
        let policy = Policy::load(&p).unwrap();
        (p, policy)
    }
}

async fn meta_key(policy: &Policy) -> Arc<custos::crypto::MetaKey> {
    let v = custos::ops::open_vault(policy).await.unwrap();
    Arc::new(custos::crypto::MetaKey::new(v.meta_key()))
}

fn opts(f: &Fixture, verify: bool, meta: Option<Arc<custos::crypto::MetaKey>>) -> ReplicateOptions {
    ReplicateOptions {
        verify,
        meta,
        state: Some(f.state()),
        attempts: Some(2),
        backoff: Some(Duration::from_millis(50)),
        ..Default::default()
    }
}

fn small_packs() -> BackupOptions {
    BackupOptions {
        pack_size: 64 << 10,
        ..BackupOptions::default()
    }
}

/// One backup in small packs.
async fn backup_small(policy: &Policy) -> custos::ops::backup::BackupReport {
    backup(policy, &small_packs(), Arc::new(NoProgress))
        .await
        .unwrap()
}

/// Deletes every `n`th call record of the fixture's database, so the next
/// backup is an incremental with a change.
fn delete_every(db: &Path, n: u32) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(&format!("DELETE FROM cdrs WHERE rowid % {n} = 0"), [])
        .unwrap();
}

async fn restore_and_compare(policy: &Policy, target: &str, snapshot: &str, db: &Path, to: &Path) {
    restore(
        policy,
        &RestoreOptions {
            target: Some(target.into()),
            snapshot: snapshot.into(),
            to: to.to_path_buf(),
            force: true,
            only: Default::default(),
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap_or_else(|e| panic!("restore of {snapshot} from {target}: {e}"));
    let c = custos::store::compare::compare(db, to).unwrap();
    assert!(
        c.differences.is_empty(),
        "restore from {target} differs: {:?}",
        &c.differences[..c.differences.len().min(5)]
    );
    assert!(c.rows > 0, "nothing was compared");
}

async fn assert_check_clean(policy: &Policy, target: &str) {
    let r = check(policy, Some(target), true, Arc::new(NoProgress))
        .await
        .unwrap();
    let errors: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .collect();
    assert!(errors.is_empty(), "check of {target}: {errors:?}");
}

fn target<'a>(r: &'a ReplicationReport, name: &str) -> &'a custos::replicate::TargetReport {
    r.targets.iter().find(|t| t.name == name).unwrap()
}

fn pack_files(dir: &Path) -> Vec<PathBuf> {
    objects_under(dir, "data")
        .into_iter()
        .map(|p| dir.join(p))
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_copies_restore_alone_and_a_verify_marks_them_replicated() {
    let s3 = S3Server::start();
    s3.create_bucket("east");
    s3.create_bucket("west");
    let f = Fixture::new(7);
    let (policy_file, policy) = f.policy(
        &[
            ("dr-east", s3.url("east", "crm"), ""),
            ("dr-west", s3.url("west", "crm"), ""),
        ],
        &common::s3::policy_section(&s3.endpoint()),
    );
    custos::ops::init::init(&policy).await.unwrap();
    let b = backup_small(&policy).await;
    assert!(objects_under(&s3.root().join("east/crm"), "snapshots").is_empty());

    let meta = meta_key(&policy).await;
    let r = replicate(&policy, &opts(&f, false, Some(meta.clone())))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    for name in ["dr-east", "dr-west"] {
        let t = target(&r, name);
        assert_eq!(t.snapshots, vec![b.snapshot.clone()], "{name}");
        assert!(t.objects_copied > 2, "{name}: {t:?}");
        assert_eq!(t.objects_repaired, 0, "{name}");
        assert_eq!(t.lag, 0);
    }
    assert!(r.repairs().next().is_none(), "a first copy is not a repair");
    assert_eq!(r.snapshots.len(), 1);
    assert!(
        !r.snapshots[0].replicated,
        "copied but not verified yet: {:?}",
        r.snapshots[0]
    );

    // A second run copies nothing; a verify reads everything and marks the
    // snapshot replicated on all three targets (the default min_copies).
    let r = replicate(&policy, &opts(&f, true, Some(meta)))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.actions.is_empty(), "{:?}", r.actions);
    assert!(target(&r, "dr-west").objects_checked > 2);
    assert!(r.snapshots[0].replicated, "{:?}", r.snapshots[0]);
    assert_eq!(r.snapshots[0].verified_on.len(), 3);

    for name in ["primary", "dr-east", "dr-west"] {
        let to = f.path(&format!("restored-{name}.db"));
        restore_and_compare(&policy, name, &b.snapshot, &f.db, &to).await;
    }

    // The primary is gone: the binary restores from an off-site copy alone
    // (the vault is kept apart) and lists it as replicated.
    std::fs::remove_dir_all(f.primary_dir()).unwrap();
    let to = f.path("from-west.db");
    let state = f.path("state");
    run(custos()
        .envs(s3.env())
        .env("CUSTOS_STATE_DIR", &state)
        .args(["restore", "--policy"])
        .arg(&policy_file)
        .args(["--target", "dr-west", "--to"])
        .arg(&to));
    let c = custos::store::compare::compare(&f.db, &to).unwrap();
    assert!(c.differences.is_empty() && c.rows > 0);
    let out = run(custos()
        .envs(s3.env())
        .env("CUSTOS_STATE_DIR", &state)
        .args(["snapshots", "--json", "--target", "dr-east", "--policy"])
        .arg(&policy_file));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["id"], b.snapshot.as_str());
    assert_eq!(rows[0]["replicated"], true, "{rows}");
    run(custos()
        .envs(s3.env())
        .env("CUSTOS_STATE_DIR", &state)
        .args(["check", "--read-data", "--target", "dr-east", "--policy"])
        .arg(&policy_file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_and_repairs_deleted_truncated_and_bit_flipped_objects() {
    let s3 = S3Server::start();
    s3.create_bucket("east");
    s3.create_bucket("west");
    let f = Fixture::new(8);
    let (policy_file, policy) = f.policy(
        &[
            ("dr-east", s3.url("east", "crm"), ""),
            ("dr-west", s3.url("west", "crm"), ""),
        ],
        &common::s3::policy_section(&s3.endpoint()),
    );
    custos::ops::init::init(&policy).await.unwrap();
    let b = backup_small(&policy).await;
    let meta = meta_key(&policy).await;
    assert!(
        replicate(&policy, &opts(&f, true, Some(meta.clone())))
            .await
            .unwrap()
            .ok
    );

    let east = s3.root().join("east/crm");
    let west = s3.root().join("west/crm");
    let packs = pack_files(&east);
    assert!(packs.len() >= 4, "only {} packs", packs.len());
    let rel = |root: &Path, p: &Path| p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
    // dr-east: one pack deleted, one truncated, one with a bit flipped.
    let deleted = rel(&east, &packs[0]);
    std::fs::remove_file(&packs[0]).unwrap();
    let truncated = rel(&east, &packs[1]);
    truncate(&packs[1], 100);
    let flipped = rel(&east, &packs[2]);
    let len = std::fs::metadata(&packs[2]).unwrap().len() as usize;
    flip_bit(&packs[2], len / 2);
    // dr-west: its snapshot object and an index object with a bit flipped.
    let snap = format!("snapshots/{}", b.snapshot);
    flip_bit(&west.join(&snap), 40);
    let index = objects_under(&west, "index")[0].clone();
    flip_bit(&west.join(&index), 30);
    // The primary lost an index object: repaired from an off-site copy.
    let lost = objects_under(&f.primary_dir(), "index")[1].clone();
    std::fs::remove_file(f.primary_dir().join(&lost)).unwrap();

    // A run without --verify already sees what the listings show (a
    // missing object, a size that differs) but not a flipped bit.
    let r = replicate(&policy, &opts(&f, false, Some(meta.clone())))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let found = |r: &ReplicationReport, t: &str, o: &str| {
        r.actions
            .iter()
            .find(|a| a.target == t && a.object == o)
            .map(|a| (a.reason, a.repair, a.ok))
    };
    assert_eq!(
        found(&r, "dr-east", &deleted),
        Some((Reason::Missing, false, true))
    );
    assert_eq!(
        found(&r, "dr-east", &truncated),
        Some((Reason::HashMismatch, true, true))
    );
    assert_eq!(
        found(&r, "primary", &lost),
        Some((Reason::Missing, true, true))
    );
    assert_eq!(
        found(&r, "dr-east", &flipped),
        None,
        "bit flips need --verify"
    );

    // --verify (through the binary, with --json) finds and repairs the rest.
    let out = run(custos()
        .envs(s3.env())
        .env("CUSTOS_STATE_DIR", f.path("state"))
        .args(["replicate", "--verify", "--json", "--policy"])
        .arg(&policy_file));
    let r: ReplicationReport = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        found(&r, "dr-east", &flipped),
        Some((Reason::HashMismatch, true, true))
    );
    assert_eq!(
        found(&r, "dr-west", &snap),
        Some((Reason::Unauthentic, true, true))
    );
    assert_eq!(
        found(&r, "dr-west", &index),
        Some((Reason::Unauthentic, true, true))
    );
    assert_eq!(r.repairs().count(), 3, "{:?}", r.actions);
    assert!(r.snapshots[0].replicated);
    for name in ["primary", "dr-east", "dr-west"] {
        assert_check_clean(&policy, name).await;
    }
    let to = f.path("east.db");
    restore_and_compare(&policy, "dr-east", &b.snapshot, &f.db, &to).await;

    // Without the key, copies are compared: the majority of three wins.
    flip_bit(&west.join(&snap), 41);
    let r = replicate(&policy, &opts(&f, true, None)).await.unwrap();
    assert!(r.ok && !r.authenticated, "{r:?}");
    assert_eq!(
        found(&r, "dr-west", &snap),
        Some((Reason::Differs, true, true))
    );
    assert_check_clean(&policy, "dr-west").await;

    // A pack damaged on every target cannot be repaired: named, non-zero.
    let victim = rel(&east, &pack_files(&east)[3]);
    for root in [&east, &west, &f.primary_dir()] {
        flip_bit(&root.join(&victim), 20);
    }
    let out = run_fail(
        custos()
            .envs(s3.env())
            .env("CUSTOS_STATE_DIR", f.path("state"))
            .args(["replicate", "--verify", "--policy"])
            .arg(&policy_file),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains(&victim) && text.contains("no target holds a good copy"),
        "{text}"
    );
    let r = custos::replicate::overview(&policy, Some(&f.state()), 1)
        .await
        .unwrap();
    assert!(!r.snapshots[0].replicated, "{:?}", r.snapshots[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_cut_off_midway_lists_only_restorable_snapshots_and_the_next_run_completes() {
    let s3 = FaultyS3::start();
    let f = Fixture::new(9);
    let (_, base) = f.policy(&[], &common::s3::policy_section(&s3.endpoint()));
    custos::ops::init::init(&base).await.unwrap();
    let s1 = backup_small(&base).await;
    // A second, incremental snapshot after a change.
    delete_every(&f.db, 7);
    let s2 = backup_small(&base).await;
    let objects = ["data", "index", "snapshots"]
        .iter()
        .map(|d| objects_under(&f.primary_dir(), d).len() as u64)
        .sum::<u64>()
        + 1;
    assert!(objects > 10, "{objects}");

    for n in [1, objects / 2, objects - 1] {
        let prefix = format!("dr{n}");
        let (_, policy) = f.policy(
            &[("dr", format!("s3://bkt/{prefix}"), "")],
            &common::s3::policy_section(&s3.endpoint()),
        );
        s3.fail_puts_after(n);
        let r = replicate(&policy, &opts(&f, false, None)).await.unwrap();
        s3.clear();
        assert!(!r.ok, "N={n}: a cut-off run reported success");
        let dr = target(&r, "dr");
        assert!(dr.error.is_some(), "N={n}: {dr:?}");
        assert!(
            r.failed_targets().contains(&"dr"),
            "N={n}: {:?}",
            r.failed_targets()
        );
        // Whatever the target lists is restorable.
        let listed: Vec<String> = objects_under(&s3.bucket_dir().join(&prefix), "snapshots")
            .iter()
            .map(|p| p.trim_start_matches("snapshots/").to_string())
            .collect();
        assert!(listed.len() < 2, "N={n}: both snapshots reached the target");
        if n == objects - 1 {
            assert_eq!(listed.len(), 1, "N={n}: the first snapshot should be there");
        }
        if n > 1 {
            assert_check_clean(&policy, "dr").await;
        }
        for id in &listed {
            let to = f.path(&format!("cut-{n}-{id}.db"));
            restore(
                &policy,
                &RestoreOptions {
                    target: Some("dr".into()),
                    snapshot: id.clone(),
                    to,
                    force: true,
                    only: Default::default(),
                },
                Arc::new(NoProgress),
            )
            .await
            .unwrap_or_else(|e| panic!("N={n}: listed snapshot {id} does not restore: {e}"));
        }
        // The next run completes.
        let r = replicate(&policy, &opts(&f, true, None)).await.unwrap();
        assert!(r.ok, "N={n}: {r:?}");
        let mut want = vec![s1.snapshot.clone(), s2.snapshot.clone()];
        want.sort();
        assert_eq!(target(&r, "dr").snapshots, want, "N={n}");
        let to = f.path(&format!("after-{n}.db"));
        restore_and_compare(&policy, "dr", &s2.snapshot, &f.db, &to).await;
    }
}

/// A TCP forwarder on a fixed local port that can be stopped (connections
/// refused: the target is down) and started again on the same port.
struct Switch {
    port: u16,
    upstream: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Switch {
    async fn new(upstream: &str) -> Switch {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut s = Switch {
            port,
            upstream: upstream.trim_start_matches("http://").to_string(),
            stop: None,
        };
        s.up().await;
        s
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    async fn up(&mut self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    a = l.accept() => {
                        let Ok((mut down, _)) = a else { continue };
                        let _ = down.set_nodelay(true);
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = up.set_nodelay(true);
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                }
            }
        });
        self.stop = Some(tx);
    }
    fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_leaves_new_snapshots_under_replicated_until_it_comes_back() {
    let s3 = S3Server::start();
    s3.create_bucket("east");
    let mut switch = Switch::new(&s3.endpoint()).await;
    let f = Fixture::new(10);
    let (policy_file, policy) = f.policy(
        &[(
            "dr-east",
            s3.url("east", "crm"),
            &format!("endpoint = \"{}\"\nallow_http = true", switch.endpoint()),
        )],
        "\n[s3]\nregion = \"us-east-1\"\nmax_retries = 0\n\n[replication]\nmin_copies = 2\nconcurrency = 2\nmax_bytes_per_sec = 100000000\n",
    );
    custos::ops::init::init(&policy).await.unwrap();
    let s1 = backup_small(&policy).await;
    assert!(replicate(&policy, &opts(&f, true, None)).await.unwrap().ok);

    switch.down();
    delete_every(&f.db, 5);
    let s2 = backup_small(&policy).await;
    let r = replicate(&policy, &opts(&f, true, None)).await.unwrap();
    assert!(!r.ok);
    let east = target(&r, "dr-east");
    assert!(!east.reachable, "{east:?}");
    assert!(
        east.error.as_deref().unwrap().contains("dr-east"),
        "{east:?}"
    );
    assert!(target(&r, "primary").reachable);
    let status =
        |r: &ReplicationReport, id: &str| r.snapshots.iter().find(|s| s.id == id).unwrap().clone();
    assert!(status(&r, &s1.snapshot).replicated);
    let st = status(&r, &s2.snapshot);
    assert!(!st.replicated, "{st:?}");
    assert_eq!(st.verified_on, vec!["primary".to_string()]);

    // The binary exits non-zero and names the target; `snapshots` shows the
    // new snapshot under-replicated.
    let state = f.path("state");
    let out = run_fail(
        custos()
            .envs(s3.env())
            .env_remove("AWS_ENDPOINT_URL")
            .env("CUSTOS_STATE_DIR", &state)
            .args(["replicate", "--policy"])
            .arg(&policy_file),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`dr-east`"), "{}", stderr(&out));
    let out = run(custos()
        .envs(s3.env())
        .env("CUSTOS_STATE_DIR", &state)
        .args(["snapshots", "--json", "--policy"])
        .arg(&policy_file));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&s1.snapshot)["replicated"], true);
    assert_eq!(row(&s2.snapshot)["replicated"], false);

    // Back up: the next run catches up and verifies.
    switch.up().await;
    let r = replicate(&policy, &opts(&f, true, None)).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert!(status(&r, &s2.snapshot).replicated);
    let out = run(custos()
        .envs(s3.env())
        .env_remove("AWS_ENDPOINT_URL")
        .env("CUSTOS_STATE_DIR", &state)
        .args(["targets", "--json", "--policy"])
        .arg(&policy_file));
    let o: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        o["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["replicated"] == true),
        "{o}"
    );
    let east = o["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "dr-east")
        .unwrap();
    assert_eq!(east["lag"], 0);
    assert_eq!(east["snapshots"], 2);
    assert!(east["last_verified"].is_string());
    switch.down();
}

#[test]
fn replication_settings_are_validated_with_their_key() {
    let f = Fixture::new(11);
    let (_, ok) = f.policy(
        &[("dr", file_url(&f.path("dr")), "")],
        "\n[replication]\nmin_copies = 1\nconcurrency = 8\nmax_bytes_per_sec = 1048576\n",
    );
    assert_eq!(ok.replication.concurrency, Some(8));
    assert_eq!(ok.replication.max_bytes_per_sec, Some(1 << 20));
    assert_eq!(custos::replicate::min_copies(&ok), 1);
    let text = std::fs::read_to_string(f.path("policy.toml")).unwrap();
    for (bad, key) in [
        ("concurrency = 8", "concurrency = 0"),
        ("concurrency = 8", "concurrency = 65"),
        ("max_bytes_per_sec = 1048576", "max_bytes_per_sec = 0"),
    ] {
        let t = text.replace(bad, key);
        let e = Policy::from_str(&t, Path::new("p.toml")).expect_err(key);
        let field = key.split(' ').next().unwrap();
        assert_eq!(e.key, format!("replication.{field}"), "{e}");
    }
    let (_, default) = f.policy(&[("dr", file_url(&f.path("dr")), "")], "");
    assert_eq!(
        custos::replicate::min_copies(&default),
        2,
        "default: every target"
    );
}

fn snapshot_ids_on(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = objects_under(dir, "snapshots")
        .iter()
        .map(|p| p.trim_start_matches("snapshots/").to_string())
        .collect();
    v.sort();
    v
}

async fn prune_one(policy: &Policy, target: &str) -> Vec<String> {
    let r = custos::ops::prune::forget_and_prune(
        policy,
        &custos::ops::prune::PruneOptions {
            target: Some(target.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("prune of {target}: {e}"));
    r.forgotten
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_forgotten_on_the_primary_is_never_copied_back_while_others_await_their_prune() {
    let f = Fixture::new(12);
    let dr = f.path("dr");
    let (policy_file, policy) = f.policy(
        &[("dr", file_url(&dr), "")],
        "\n[snapshots]\nkeep_last = 1\n",
    );
    custos::ops::init::init(&policy).await.unwrap();
    let s1 = backup_small(&policy).await;
    delete_every(&f.db, 3);
    let s2 = backup_small(&policy).await;
    let meta = meta_key(&policy).await;
    assert!(
        replicate(&policy, &opts(&f, true, Some(meta.clone())))
            .await
            .unwrap()
            .ok
    );
    let mut both = vec![s1.snapshot.clone(), s2.snapshot.clone()];
    both.sort();
    assert_eq!(snapshot_ids_on(&dr), both);

    // Retention prunes the primary first; a replication runs before it
    // reaches the off-site target.
    assert_eq!(
        prune_one(&policy, "primary").await,
        vec![s1.snapshot.clone()]
    );
    for verify in [false, true] {
        let r = replicate(&policy, &opts(&f, verify, Some(meta.clone())))
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(
            snapshot_ids_on(&f.primary_dir()),
            vec![s2.snapshot.clone()],
            "the forgotten snapshot came back to the primary"
        );
        assert!(
            !r.actions
                .iter()
                .any(|a| a.object == format!("snapshots/{}", s1.snapshot)),
            "{:?}",
            r.actions
        );
        assert_eq!(r.offsite_only, vec![s1.snapshot.clone()]);
        assert_eq!(target(&r, "primary").snapshots, vec![s2.snapshot.clone()]);
    }
    // Replication never deletes: the off-site copy waits for its prune.
    assert_eq!(snapshot_ids_on(&dr), both);
    assert_eq!(prune_one(&policy, "dr").await, vec![s1.snapshot.clone()]);
    let r = replicate(&policy, &opts(&f, true, Some(meta.clone())))
        .await
        .unwrap();
    assert!(r.ok && r.offsite_only.is_empty(), "{r:?}");
    for (name, dir) in [("primary", f.primary_dir()), ("dr", dr.clone())] {
        assert_eq!(snapshot_ids_on(&dir), vec![s2.snapshot.clone()], "{name}");
        assert_check_clean(&policy, name).await;
    }
    let to = f.path("after-prune.db");
    restore_and_compare(&policy, "dr", &s2.snapshot, &f.db, &to).await;

    // A primary that lost a snapshot object (not forgotten) gets it back
    // only when asked: `replicate --restore-primary`.
    let lost = f.primary_dir().join(format!("snapshots/{}", s2.snapshot));
    std::fs::remove_file(&lost).unwrap();
    let r = replicate(&policy, &opts(&f, false, Some(meta.clone())))
        .await
        .unwrap();
    assert_eq!(r.offsite_only, vec![s2.snapshot.clone()]);
    assert!(!lost.exists());
    let out = run(custos()
        .env("CUSTOS_STATE_DIR", f.path("state"))
        .args(["replicate", "--policy"])
        .arg(&policy_file));
    assert!(
        stdout(&out).contains("--restore-primary") && stdout(&out).contains(&s2.snapshot),
        "{}",
        stdout(&out)
    );
    let out = run(custos()
        .env("CUSTOS_STATE_DIR", f.path("state"))
        .args(["replicate", "--restore-primary", "--json", "--policy"])
        .arg(&policy_file));
    let r: ReplicationReport = serde_json::from_str(&stdout(&out)).unwrap();
    let a = r
        .actions
        .iter()
        .find(|a| a.object == format!("snapshots/{}", s2.snapshot))
        .expect("the snapshot is copied back");
    assert!(a.target == "primary" && a.repair && a.ok, "{a:?}");
    assert!(lost.exists());
    assert_check_clean(&policy, "primary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_object_mends_one_object_from_an_offsite_copy() {
    let s3 = S3Server::start();
    s3.create_bucket("east");
    let f = Fixture::new(13);
    let (_, policy) = f.policy(
        &[("dr-east", s3.url("east", "crm"), "")],
        &common::s3::policy_section(&s3.endpoint()),
    );
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    let meta = meta_key(&policy).await;
    assert!(
        replicate(&policy, &opts(&f, true, Some(meta.clone())))
            .await
            .unwrap()
            .ok
    );
    let east = s3.root().join("east/crm");
    // A drill of the primary found a pack with a flipped bit.
    let pack = objects_under(&f.primary_dir(), "data")[1].clone();
    let len = std::fs::metadata(f.primary_dir().join(&pack))
        .unwrap()
        .len() as usize;
    flip_bit(&f.primary_dir().join(&pack), len / 3);
    // Another pack is damaged too, but nobody asked about it.
    let other = objects_under(&f.primary_dir(), "data")[2].clone();
    flip_bit(&f.primary_dir().join(&other), 10);

    let (actions, problems) = custos::replicate::repair_object(&policy, &pack, Some(meta.clone()))
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(actions.len(), 1, "{actions:?}");
    let a = &actions[0];
    assert_eq!(
        (
            a.target.as_str(),
            a.object.as_str(),
            a.reason,
            a.from.as_str(),
            a.repair,
            a.ok
        ),
        (
            "primary",
            pack.as_str(),
            Reason::HashMismatch,
            "dr-east",
            true,
            true
        )
    );
    assert_eq!(
        std::fs::read(f.primary_dir().join(&pack)).unwrap(),
        std::fs::read(east.join(&pack)).unwrap()
    );
    // Only that object: the other damaged pack is still damaged.
    assert_ne!(
        std::fs::read(f.primary_dir().join(&other)).unwrap(),
        std::fs::read(east.join(&other)).unwrap()
    );

    // An index object missing off-site comes from the primary; a snapshot
    // object with a flipped bit off-site is authenticated and replaced.
    let index = objects_under(&east, "index")[0].clone();
    std::fs::remove_file(east.join(&index)).unwrap();
    let (actions, _) = custos::replicate::repair_object(&policy, &index, Some(meta.clone()))
        .await
        .unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(
        (actions[0].target.as_str(), actions[0].reason, actions[0].ok),
        ("dr-east", Reason::Missing, true)
    );
    let snap = objects_under(&east, "snapshots")[0].clone();
    flip_bit(&east.join(&snap), 33);
    let (actions, _) = custos::replicate::repair_object(&policy, &snap, Some(meta.clone()))
        .await
        .unwrap();
    assert_eq!(
        actions
            .iter()
            .map(|a| (a.target.as_str(), a.reason, a.repair))
            .collect::<Vec<_>>(),
        vec![("dr-east", Reason::Unauthentic, true)]
    );
    assert_check_clean(&policy, "dr-east").await;

    // Not a replicated object.
    let e = custos::replicate::repair_object(&policy, "locks/backup.json", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("locks/backup.json"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_certificates_and_audit_segments_reach_every_target_and_the_majority_repairs_them()
{
    let s3 = S3Server::start();
    s3.create_bucket("east");
    let f = Fixture::new(14);
    let west = f.path("west");
    let (_, policy) = f.policy(
        &[
            ("dr-east", s3.url("east", "crm"), ""),
            ("dr-west", file_url(&west), ""),
        ],
        &common::s3::policy_section(&s3.endpoint()),
    );
    custos::ops::init::init(&policy).await.unwrap();
    backup_small(&policy).await;
    let state = f.state();
    // A real drill stores its signed report on the primary.
    let drill = custos::drill::run(
        &policy,
        &state,
        &custos::drill::DrillOptions {
            snapshot: custos::drill::SnapshotChoice::Latest,
            target: None,
            redrill_of: None,
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let report = format!("reports/{}.json", drill.report.id);
    // An audit segment, as `audit replicate` writes it.
    let log = custos::audit::AuditLog::open(&f.path("state/audit")).unwrap();
    let primary = custos::ops::open_target(&policy, policy.primary(), false).unwrap();
    let seg = custos::audit::replicate(&log, &primary)
        .await
        .unwrap()
        .segment
        .expect("the drill left audit entries to replicate");
    // A signed certificate document.
    let signing =
        custos::keys::load_signing_key(&custos::keys::signing_key_path_for(&f.identity)).unwrap();
    let cert_text = custos::signed::sign(
        &signing,
        "custos-certificate",
        &serde_json::json!({"unit": "identity:2024", "method": "cryptographic erase (purge)"}),
    )
    .unwrap();
    let cert = "certificates/cert-0001.json".to_string();
    primary
        .put(&cert, bytes::Bytes::from(cert_text.clone().into_bytes()))
        .await
        .unwrap();
    let docs = [report.clone(), seg.clone(), cert.clone()];
    let originals: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| std::fs::read(f.primary_dir().join(d)).unwrap())
        .collect();

    let east = s3.root().join("east/crm");
    let r = replicate(&policy, &opts(&f, false, None)).await.unwrap();
    assert!(r.ok, "{r:?}");
    for (d, want) in docs.iter().zip(&originals) {
        for (name, root) in [("dr-east", &east), ("dr-west", &west)] {
            assert_eq!(&std::fs::read(root.join(d)).unwrap(), want, "{d} on {name}");
            assert!(r
                .actions
                .iter()
                .any(|a| &a.object == d && a.target == name && a.reason == Reason::Missing));
        }
    }
    // The copies still verify with the public key alone.
    let public =
        custos::keys::load_public_key(&f.identity.parent().unwrap().join("signing.pub")).unwrap();
    let west_report = std::fs::read_to_string(west.join(&report)).unwrap();
    custos::signed::verify(&west_report, &public, None).unwrap();

    // Damage one copy of each: a flipped bit off-site (same size: found by
    // --verify), a truncated certificate, and the primary's own audit
    // segment, which the two off-site copies outvote.
    flip_bit(&west.join(&report), 20);
    truncate(&east.join(&cert), 10);
    flip_bit(&f.primary_dir().join(&seg), 5);
    let r = replicate(&policy, &opts(&f, true, Some(meta_key(&policy).await)))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let found = |t: &str, o: &str| {
        r.actions
            .iter()
            .find(|a| a.target == t && a.object == o)
            .map(|a| (a.reason, a.repair, a.ok))
    };
    assert_eq!(
        found("dr-west", &report),
        Some((Reason::Differs, true, true))
    );
    assert_eq!(
        found("dr-east", &cert),
        Some((Reason::SizeMismatch, true, true))
    );
    assert_eq!(found("primary", &seg), Some((Reason::Differs, true, true)));
    assert_eq!(r.repairs().count(), 3, "{:?}", r.actions);
    for (d, want) in docs.iter().zip(&originals) {
        for root in [&f.primary_dir(), &east, &west] {
            assert_eq!(
                &std::fs::read(root.join(d)).unwrap(),
                want,
                "{d} under {root:?}"
            );
        }
    }
    custos::signed::verify(
        &std::fs::read_to_string(west.join(&report)).unwrap(),
        &public,
        None,
    )
    .unwrap();
}

/// The format version of the repository marker in a `file://` target's
/// folder, and a way to set it (as a repository written by a build of
/// format version 1 would have it).
fn marker_version(dir: &Path) -> (u64, String) {
    let m = common::repo_marker(dir);
    (m["version"].as_u64().unwrap(), m["repo_id"].to_string())
}

fn set_marker_version(dir: &Path, version: u64) {
    let mut m = common::repo_marker(dir);
    m["version"] = version.into();
    std::fs::write(
        dir.join("custos-repo.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_of_format_version_1_is_raised_before_it_receives_newer_packs() {
    let f = Fixture::new(11);
    let dr = f.path("dr");
    let (_, policy) = f.policy(&[("dr", file_url(&dr), "")], "");
    custos::ops::init::init(&policy).await.unwrap();
    set_marker_version(&dr, 1);
    let (_, dr_id) = marker_version(&dr);
    let b = backup_small(&policy).await;
    let newest = u64::from(custos::repo::marker::FORMAT_VERSION);
    assert_eq!(marker_version(&f.primary_dir()).0, newest);
    assert_eq!(marker_version(&dr).0, 1, "a backup writes the primary only");

    let r = replicate(&policy, &opts(&f, false, None)).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(target(&r, "dr").snapshots, vec![b.snapshot.clone()]);
    assert_eq!(
        marker_version(&dr),
        (newest, dr_id),
        "raised, its repository id kept"
    );
    for p in pack_files(&dr) {
        assert_eq!(std::fs::read(&p).unwrap()[8], 2, "{}", p.display());
    }
    restore_and_compare(&policy, "dr", &b.snapshot, &f.db, &f.path("from-dr.db")).await;
    assert_check_clean(&policy, "dr").await;
}
