//! Faults, damage and bad input, end to end: interrupted backups leave a
//! valid repository that the next backup reuses; damaged or hostile objects
//! are found and named, never restored into a wrong database; bad input
//! gets a clear error and changes nothing.

mod common;
#[path = "common/faults_util.rs"]
mod util;

use common::{copy_tree, custos, file_url, run, run_fail, stderr, stdout, tempdir};
use custos::demo::{generate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::ops::check::{check, Level};
use custos::ops::restore::{restore, RestoreOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use util::*;

/// A temporary folder with a demo database, service keys, a vault and a
/// `file://` target, and a policy file (`policy.toml`) tying them together.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    identity: PathBuf,
    policy: PathBuf,
}

impl Fixture {
    fn target_dir(&self) -> PathBuf {
        self.dir.path().join("target")
    }
    fn vault_dir(&self) -> PathBuf {
        self.dir.path().join("vault")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn vault_url(&self) -> String {
        file_url(&self.vault_dir())
    }
    /// A policy file `name` like the fixture's, with another target folder.
    fn policy_for_target(&self, name: &str, target: &Path) -> PathBuf {
        let p = self.path(name);
        std::fs::write(
            &p,
            sqlite_policy(
                &self.db,
                &self.identity,
                &self.vault_url(),
                &file_url(target),
                "",
            ),
        )
        .unwrap();
        p
    }
    fn load(&self) -> Policy {
        Policy::load(&self.policy).unwrap()
    }
}

/// Keys and a policy around a database created by `make_db`; the
/// repository and vault are initialised.
async fn fixture_with(make_db: impl FnOnce(&Path)) -> Fixture {
    let dir = tempdir();
    let db = dir.path().join("crm.db");
    make_db(&db);
    let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
    let f = Fixture {
        policy: dir.path().join("policy.toml"),
        identity: keys.identity_path,
        db,
        dir,
    };
    std::fs::create_dir_all(f.target_dir()).unwrap();
    let text = sqlite_policy(
        &f.db,
        &f.identity,
        &f.vault_url(),
        &file_url(&f.target_dir()),
        "",
    );
    std::fs::write(&f.policy, text).unwrap();
    custos::ops::init::init(&f.load()).await.unwrap();
    f
}

/// A fixture around a demo database of about 2 MiB (some 500 customers).
async fn demo_fixture(seed: u64) -> Fixture {
    fixture_with(|db| {
        generate(db, DemoSize::Bytes(2 << 20), seed, &NoProgress).unwrap();
    })
    .await
}

/// Small packs, so that a small database gives many packs.
fn small_packs() -> BackupOptions {
    BackupOptions {
        pack_size: 128 << 10,
        ..BackupOptions::default()
    }
}

fn assert_same_db(a: &Path, b: &Path) {
    let c = custos::store::compare::compare(a, b).unwrap();
    assert!(
        c.differences.is_empty(),
        "restored database differs: {:?}",
        &c.differences[..c.differences.len().min(5)]
    );
    assert!(c.rows > 0, "nothing was compared");
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn all_output(out: &Output) -> String {
    format!("{}\n{}", stdout(out), stderr(out))
}

/// No panic and no Rust backtrace in a failed command's output.
fn assert_no_panic(out: &Output) {
    let text = all_output(out);
    assert!(!text.contains("panicked"), "the command panicked:\n{text}");
    assert!(code(out) > 0, "killed by a signal?\n{text}");
}

/// Nothing but the target folder's own layout is left next to `to`: no
/// restored file and no temporary restore file.
fn assert_nothing_restored(to: &Path) {
    assert!(
        !to.exists(),
        "{} exists after a failed restore",
        to.display()
    );
    let parent = to.parent().unwrap();
    let name = to.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains(&name),
            "a leftover of the failed restore: {n} in {}",
            parent.display()
        );
    }
}

fn cli(args: &[&str]) -> Command {
    let mut c = custos();
    c.args(args);
    c
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------------------
// 1. Interrupted backups, in process: puts fail after N on an S3 target.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_cut_off_after_n_puts_leave_a_valid_repository_that_the_next_backup_reuses() {
    let s3 = FaultyS3::start();
    let f = demo_fixture(11).await;
    let extra = common::s3::policy_section(&s3.endpoint());
    let policy_for = |prefix: &str| {
        let text = sqlite_policy(
            &f.db,
            &f.identity,
            &f.vault_url(),
            &format!("s3://bkt/{prefix}"),
            &extra,
        );
        Policy::from_str(&text, Path::new("s3.toml")).unwrap()
    };
    // How many puts a whole backup makes (same vault, so same keys and
    // chunks): T. Then cut backups off after 1 put (tree pages come first),
    // T-8 (in the middle of the pack uploads) and T-1 (only the snapshot
    // object, written last, is refused).
    let probe = policy_for("probe");
    custos::ops::init::init(&probe).await.unwrap();
    let before = s3.puts();
    backup(&probe, &small_packs(), Arc::new(NoProgress))
        .await
        .unwrap();
    let total = s3.puts() - before;
    let probe_packs = objects_under(&s3.bucket_dir().join("probe"), "data").len();
    assert!(total > 10, "a whole backup made only {total} puts");
    assert!(
        probe_packs > 4,
        "a whole backup made only {probe_packs} packs"
    );
    for n in [1, total - 8, total - 1] {
        let prefix = format!("repo{n}");
        let policy = policy_for(&prefix);
        custos::ops::init::init(&policy).await.unwrap();
        let repo_dir = s3.bucket_dir().join(&prefix);

        s3.fail_puts_after(n);
        let err = backup(&policy, &small_packs(), Arc::new(NoProgress))
            .await
            .expect_err("a backup whose puts fail must fail");
        s3.clear();
        let msg = err.to_string();
        assert!(
            msg.contains("primary"),
            "N={n}: the error does not name the target: {msg}"
        );
        assert!(s3.refused() > 0, "N={n}: no put was refused");
        assert!(
            objects_under(&repo_dir, "snapshots").is_empty(),
            "N={n}: a snapshot was written by a failed backup"
        );
        let indexes = objects_under(&repo_dir, "index").len();
        assert!(indexes as u64 <= n, "N={n}: more objects than puts allowed");

        // The repository is valid: check --read-data finds no error.
        let report = check(&policy, None, true, Arc::new(NoProgress))
            .await
            .unwrap();
        let errors: Vec<_> = report
            .findings
            .iter()
            .filter(|x| x.level == Level::Error)
            .collect();
        assert!(report.ok && errors.is_empty(), "N={n}: {errors:?}");
        assert_eq!(report.snapshots, 0, "N={n}");

        // The next backup succeeds and reuses the packs whose index landed.
        let r = backup(&policy, &small_packs(), Arc::new(NoProgress))
            .await
            .unwrap();
        eprintln!(
            "N={n} of {total} puts: {indexes} of {probe_packs} index objects left; the next backup stored {} of {} chunks",
            r.new_chunks, r.chunks
        );
        assert!(r.chunks > 0);
        if indexes == probe_packs {
            assert_eq!(
                r.new_chunks, 0,
                "N={n}: every pack was indexed, yet chunks were stored again"
            );
        } else if indexes > 0 {
            assert!(
                r.new_chunks < r.chunks,
                "N={n}: {indexes} index objects were stored but the next backup stored all {} chunks again",
                r.chunks
            );
        } else {
            assert_eq!(r.new_chunks, r.chunks);
        }
        let report = check(&policy, None, true, Arc::new(NoProgress))
            .await
            .unwrap();
        assert!(report.ok, "N={n}: {:?}", report.findings);
        assert_eq!(report.snapshots, 1, "N={n}");
        let to = f.path(&format!("restored{n}.db"));
        restore(
            &policy,
            &RestoreOptions {
                target: None,
                snapshot: "latest".into(),
                to: to.clone(),
                force: false,
                only: Default::default(),
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
        assert_same_db(&f.db, &to);
    }
}

// ---------------------------------------------------------------------------
// 2. Interrupted backups, for real: `kill -9` of the binary.

#[test]
fn sigkill_during_backup_leaves_a_valid_repository_that_the_next_backup_reuses() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = rt.block_on(fixture_with(|db| {
        run(cli(&[
            "demo-data",
            "generate",
            "--out",
            p(db),
            "--size",
            "40m",
        ]));
    }));
    let data = f.target_dir();
    let mut child = cli(&["backup", "--policy", p(&f.policy)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until at least one pack and its index object are stored (the
    // index is written right after its pack), then kill.
    let mut seen = false;
    for _ in 0..120_000 {
        if !objects_under(&data, "index").is_empty() {
            seen = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        seen && running,
        "the backup was not caught mid-way (index seen: {seen}, still running: {running}, {status})"
    );
    assert!(!objects_under(&data, "data").is_empty());
    assert!(
        objects_under(&data, "snapshots").is_empty(),
        "the killed backup wrote its snapshot; the test did not interrupt it"
    );

    // check --read-data passes (info findings about unused packs allowed).
    let out = run(cli(&["check", "--policy", p(&f.policy), "--read-data"]));
    assert!(!stdout(&out).contains("ERROR"), "{}", stdout(&out));
    // Only complete snapshots are listed: none.
    let out = run(cli(&["snapshots", "--policy", p(&f.policy), "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // The next backup succeeds and stores fewer chunks than a full one.
    let out = run(cli(&["backup", "--policy", p(&f.policy), "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunks = r["chunks"].as_u64().unwrap();
    let new_chunks = r["new_chunks"].as_u64().unwrap();
    assert!(
        new_chunks < chunks,
        "the backup after the kill stored all {chunks} chunks again (reused none)"
    );
    let out = run(cli(&["snapshots", "--policy", p(&f.policy), "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let to = f.path("restored.db");
    run(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    assert_same_db(&f.db, &to);
}

// ---------------------------------------------------------------------------
// 3. Damaged packs and index objects.

/// Makes a copy of the fixture's target, damages it with `damage`, and
/// runs `check --read-data` and `restore` against it. Returns the outputs.
fn damaged_copy(
    f: &Fixture,
    case: &str,
    damage: impl FnOnce(&Path) -> Vec<String>,
) -> (Vec<String>, Output, Output, PathBuf) {
    let copy = f.path(&format!("t-{case}"));
    copy_tree(&f.target_dir(), &copy);
    let object = damage(&copy);
    let policy = f.policy_for_target(&format!("{case}.toml"), &copy);
    let chk = run_fail(cli(&["check", "--policy", p(&policy), "--read-data"]));
    let to = f.path(&format!("out-{case}/restored.db"));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let rst = run_fail(cli(&["restore", "--policy", p(&policy), "--to", p(&to)]));
    (object, chk, rst, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_packs_and_indexes_are_named_by_check_and_refused_by_restore() {
    let f = demo_fixture(3).await;
    let made = backup(&f.load(), &small_packs(), Arc::new(NoProgress))
        .await
        .unwrap();
    let packs = objects_under(&f.target_dir(), "data");
    assert!(packs.len() >= 3, "want several packs, got {}", packs.len());
    // The packs of the snapshot's page lists, which a restore reads by
    // place (FORMAT 3.4): their index objects are not needed to restore.
    let list_packs = page_list_packs(&f.load(), &made.snapshot).await;
    let chunk_pack = packs
        .iter()
        .find(|o| !list_packs.contains(o))
        .expect("a pack that holds no page list")
        .clone();
    let size = |dir: &Path, o: &str| std::fs::metadata(dir.join(o)).unwrap().len();
    let index_of = |pack: &str| format!("index/{}", pack.rsplit('/').next().unwrap());

    type Damage = Box<dyn FnOnce(&Path) -> Vec<String>>;
    let (p0, p1) = (packs[0].clone(), packs[1].clone());
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "bitflip",
            Box::new({
                let p0 = p0.clone();
                move |d| {
                    let n = size(d, &p0) as usize;
                    flip_bit(&d.join(&p0), n / 2);
                    vec![p0]
                }
            }),
            "does not hash to its name",
        ),
        (
            "truncated",
            Box::new({
                let p0 = p0.clone();
                move |d| {
                    let n = size(d, &p0);
                    truncate(&d.join(&p0), n / 2);
                    vec![p0]
                }
            }),
            "size",
        ),
        (
            "swapped",
            Box::new({
                let (p0, p1) = (p0.clone(), p1.clone());
                move |d| {
                    let a = std::fs::read(d.join(&p0)).unwrap();
                    let b = std::fs::read(d.join(&p1)).unwrap();
                    std::fs::write(d.join(&p0), b).unwrap();
                    std::fs::write(d.join(&p1), a).unwrap();
                    vec![p0, p1]
                }
            }),
            "",
        ),
        (
            "deleted-pack",
            Box::new({
                let p0 = p0.clone();
                move |d| {
                    std::fs::remove_file(d.join(&p0)).unwrap();
                    vec![p0]
                }
            }),
            "missing",
        ),
        (
            // A pack a restore finds through its index object (the list
            // packs' lists are read by place, so a restore needs no index
            // object for them).
            "deleted-index",
            Box::new({
                let p = chunk_pack.clone();
                move |d| {
                    std::fs::remove_file(d.join(index_of(&p))).unwrap();
                    // The pack itself is then unindexed: check names it.
                    vec![p]
                }
            }),
            "",
        ),
    ];
    for (case, damage, why) in cases {
        let (objects, chk, rst, to) = damaged_copy(&f, case, damage);
        let text = all_output(&chk);
        assert_eq!(code(&chk), 3, "{case}: check exit code\n{text}");
        for o in &objects {
            assert!(
                text.contains(o.as_str()),
                "{case}: check does not name {o}\n{text}"
            );
        }
        assert!(
            text.contains(why),
            "{case}: check does not say `{why}`\n{text}"
        );
        assert_no_panic(&chk);
        let text = all_output(&rst);
        assert_no_panic(&rst);
        if case == "deleted-index" {
            assert!(text.contains("in no index"), "{case}: restore says\n{text}");
        } else {
            assert!(
                objects.iter().any(|o| text.contains(o.as_str())),
                "{case}: restore does not name the pack\n{text}"
            );
        }
        assert_nothing_restored(&to);
        eprintln!(
            "{case}: check exit {}, restore exit {}: {}",
            code(&chk),
            code(&rst),
            stderr(&rst).trim()
        );
    }
}

/// `check --repair-index` rebuilds index objects deleted or damaged from
/// their packs' headers, after which the repository checks clean and
/// restores exactly. The index object of a damaged pack is dropped (the
/// pack is kept): the check still fails for the snapshot that needs it,
/// and the next backup stores those rows again and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_objects_are_rebuilt_from_whole_packs_and_dropped_for_damaged_ones() {
    let f = demo_fixture(8).await;
    backup(&f.load(), &small_packs(), Arc::new(NoProgress))
        .await
        .unwrap();
    let packs = objects_under(&f.target_dir(), "data");
    assert!(packs.len() >= 3, "want several packs, got {}", packs.len());
    let index_of = |pack: &str| format!("index/{}", pack.rsplit('/').next().unwrap());
    let (p0, p1, p2) = (&packs[0], &packs[1], &packs[2]);

    // Two index objects lost with their packs whole: repaired.
    let whole = f.path("t-whole");
    copy_tree(&f.target_dir(), &whole);
    std::fs::remove_file(whole.join(index_of(p0))).unwrap();
    flip_bit(&whole.join(index_of(p1)), 60);
    let policy = f.policy_for_target("whole.toml", &whole);
    let broken = run_fail(cli(&["check", "--policy", p(&policy), "--read-data"]));
    assert_eq!(code(&broken), 3, "{}", all_output(&broken));
    let fixed = run(cli(&[
        "check",
        "--policy",
        p(&policy),
        "--read-data",
        "--repair-index",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
    let mut rebuilt: Vec<&str> = report["repair"]["rebuilt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rebuilt.sort();
    let mut want = vec![index_of(p0), index_of(p1)];
    want.sort();
    assert_eq!(rebuilt, want, "{report}");
    assert_eq!(report["check"]["ok"], true, "{report}");
    let to = f.path("out-whole/restored.db");
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(cli(&["restore", "--policy", p(&policy), "--to", p(&to)]));
    assert_same_db(&f.db, &to);

    // A damaged pack's index object is dropped, never rebuilt from it;
    // the pack stays.
    let damaged = f.path("t-damaged");
    copy_tree(&f.target_dir(), &damaged);
    flip_bit(&damaged.join(p2), 200);
    let policy = f.policy_for_target("damaged.toml", &damaged);
    let out = run_fail(cli(&[
        "check",
        "--policy",
        p(&policy),
        "--read-data",
        "--repair-index",
    ]));
    let text = all_output(&out);
    assert_eq!(code(&out), 3, "{text}");
    assert!(
        text.contains(&format!("repaired: primary:{}: dropped", index_of(p2))),
        "{text}"
    );
    assert!(!damaged.join(index_of(p2)).exists(), "{text}");
    assert!(damaged.join(p2).exists(), "the damaged pack was deleted");
    // Run again: the pack is in no index and cannot give one.
    let again = run_fail(cli(&["check", "--policy", p(&policy), "--repair-index"]));
    let text = all_output(&again);
    assert!(
        text.contains(&format!("not repaired: primary:{p2}")),
        "{text}"
    );
    assert!(!damaged.join(index_of(p2)).exists(), "{text}");
    // The next backup stores the pack's rows again.
    run(cli(&["backup", "--policy", p(&policy)]));
    let to = f.path("out-damaged/restored.db");
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(cli(&["restore", "--policy", p(&policy), "--to", p(&to)]));
    assert_same_db(&f.db, &to);
}

/// A repository that lost its `custos-repo.json` is not taken for an
/// empty target: commands exit with the integrity code and say how to get
/// the marker back, and `custos init`, as the message says, writes a new
/// one and keeps every snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_without_its_marker_is_named_and_init_brings_it_back() {
    let f = demo_fixture(9).await;
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    std::fs::remove_file(f.target_dir().join("custos-repo.json")).unwrap();
    let to = f.path("restored.db");
    let rst = run_fail(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    let text = all_output(&rst);
    assert_eq!(code(&rst), 3, "{text}");
    assert!(text.contains("custos-repo.json is missing"), "{text}");
    assert_nothing_restored(&to);
    run(cli(&["init", "--policy", p(&f.policy)]));
    run(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    assert_same_db(&f.db, &to);
}

/// The README says exit code 3 means "data failed authentication"; a
/// restore that meets a corrupted pack should exit with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_corrupted_pack_exits_with_the_integrity_code() {
    let f = demo_fixture(4).await;
    backup(&f.load(), &small_packs(), Arc::new(NoProgress))
        .await
        .unwrap();
    let packs = objects_under(&f.target_dir(), "data");
    let (_, _, rst, _) = damaged_copy(&f, "flip", |d| {
        flip_bit(&d.join(&packs[0]), 100);
        vec![packs[0].clone()]
    });
    assert_eq!(code(&rst), 3, "{}", all_output(&rst));
}

/// A demo fixture backed up once, and the vault object name of one of its
/// subject-key shards.
async fn backed_up_with_a_subject_shard(seed: u64) -> (Fixture, String) {
    let f = demo_fixture(seed).await;
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    let shard = objects_under(&f.vault_dir(), "keys/subject")
        .into_iter()
        .next()
        .expect("a subject shard");
    (f, shard)
}

/// A damaged subject-key shard of the vault: listing snapshots needs only
/// the repository keys and still works; a restore, which needs the unit
/// keys, refuses naming the shard; neither changes a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_subject_shard_stops_a_restore_but_not_a_listing() {
    let (f, shard) = backed_up_with_a_subject_shard(6).await;
    std::fs::write(f.vault_dir().join(&shard), b"not an age file").unwrap();
    let before = (inventory(&f.target_dir()), inventory(&f.vault_dir()));

    let out = run(cli(&["snapshots", "--policy", p(&f.policy), "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    let to = f.path("restored.db");
    let rst = run_fail(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    let text = all_output(&rst);
    assert!(text.contains(shard.as_str()), "{text}");
    assert_eq!(
        code(&rst),
        3,
        "a damaged vault object is an integrity failure\n{text}"
    );
    assert!(!to.exists(), "a refused restore left {}", to.display());
    let after = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    assert_eq!(before, after, "a command changed the target or the vault");
}

/// A subject shard deleted from the vault (its keys and any tombstones
/// with it) is damage, not a destruction: check and restore fail with the
/// integrity code naming the shard, and no row is counted as shredded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subject_shard_is_not_taken_for_a_shred() {
    let (f, shard) = backed_up_with_a_subject_shard(7).await;
    std::fs::remove_file(f.vault_dir().join(&shard)).unwrap();

    let chk = run_fail(cli(&["check", "--policy", p(&f.policy), "--json"]));
    assert_eq!(code(&chk), 3, "{}", all_output(&chk));
    let report: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap();
    assert_eq!(report["groups_shredded"], 0, "{report}");
    assert!(stdout(&chk).contains(shard.as_str()), "{report}");

    let to = f.path("restored.db");
    let rst = run_fail(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    let text = all_output(&rst);
    assert_eq!(code(&rst), 3, "{text}");
    assert!(text.contains(shard.as_str()), "{text}");
    assert!(text.contains("nothing was shredded"), "{text}");
    assert_nothing_restored(&to);
    eprintln!(
        "check: {}\nrestore: {}",
        stdout(&chk).trim(),
        stderr(&rst).trim()
    );
}

// ---------------------------------------------------------------------------
// 4. Damaged or hostile metadata.

/// Two snapshots (the database changes between them).
async fn two_snapshots(seed: u64) -> (Fixture, Vec<String>) {
    let f = demo_fixture(seed).await;
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    custos::demo::mutate(&f.db, 0.01, seed + 1).unwrap();
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    let out = run(cli(&["snapshots", "--policy", p(&f.policy), "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    (f, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_objects_are_named_by_snapshots_check_and_restore() {
    let (f, ids) = two_snapshots(21).await;
    let (older, newer) = (&ids[0], &ids[1]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random", noise(600, 7)),
        (
            "swapped",
            std::fs::read(f.target_dir().join(format!("snapshots/{older}"))).unwrap(),
        ),
    ];
    for (case, bytes) in cases {
        let copy = f.path(&format!("t-{case}"));
        copy_tree(&f.target_dir(), &copy);
        let object = format!("snapshots/{newer}");
        std::fs::write(copy.join(&object), bytes).unwrap();
        let policy = f.policy_for_target(&format!("{case}.toml"), &copy);

        let out = cli(&["snapshots", "--policy", p(&policy)])
            .output()
            .unwrap();
        let text = all_output(&out);
        assert!(
            text.contains(&object),
            "{case}: snapshots does not name {object}\n{text}"
        );
        assert!(!text.contains("panicked"), "{text}");

        let out = run_fail(cli(&["check", "--policy", p(&policy)]));
        let text = all_output(&out);
        assert_eq!(code(&out), 3, "{case}\n{text}");
        assert!(
            text.contains(&object),
            "{case}: check does not name {object}\n{text}"
        );

        let to = f.path(&format!("out-{case}/restored.db"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let out = run_fail(cli(&[
            "restore",
            "--policy",
            p(&policy),
            "--snapshot",
            newer,
            "--to",
            p(&to),
        ]));
        assert_no_panic(&out);
        assert!(
            all_output(&out).contains(newer.as_str()),
            "{case}: restore does not name the snapshot\n{}",
            all_output(&out)
        );
        assert_nothing_restored(&to);
        eprintln!(
            "{case}: restore exit {}: {}",
            code(&out),
            stderr(&out).trim()
        );
    }
}

/// `restore --snapshot ID` of a snapshot whose object exists but cannot be
/// opened says "no snapshot matches", as if the id were mistyped: it should
/// name the damaged object and exit with the integrity code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_damaged_snapshot_id_names_the_damaged_object() {
    let (f, ids) = two_snapshots(25).await;
    let object = format!("snapshots/{}", ids[1]);
    std::fs::write(f.target_dir().join(&object), noise(600, 5)).unwrap();
    let to = f.path("restored.db");
    let out = run_fail(cli(&[
        "restore",
        "--policy",
        p(&f.policy),
        "--snapshot",
        &ids[1],
        "--to",
        p(&to),
    ]));
    let text = all_output(&out);
    assert!(text.contains(&object), "{text}");
    assert_eq!(code(&out), 3, "{text}");
}

/// `restore --snapshot latest` on a target whose newest snapshot object is
/// damaged silently restores the older snapshot: the operator asked for the
/// latest state and gets an older database without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_latest_refuses_when_a_snapshot_object_is_unreadable() {
    let (f, ids) = two_snapshots(23).await;
    std::fs::write(
        f.target_dir().join(format!("snapshots/{}", ids[1])),
        noise(600, 9),
    )
    .unwrap();
    let to = f.path("latest.db");
    let out = cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)])
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(
        !out.status.success() || text.contains(&format!("snapshots/{}", ids[1])),
        "restore of `latest` picked an older snapshot without naming the damaged one\n{text}"
    );
}

/// The primary target's whole chunk index and its snapshots.
async fn index_and_snapshots(
    policy: &Policy,
) -> (
    custos::repo::index::Index,
    Vec<custos::repo::snapshot::Snapshot>,
) {
    let repo = custos::ops::OpenRepo::open(policy, None).await.unwrap();
    let index = custos::repo::index::Index::load(&repo.target, &repo.meta)
        .await
        .unwrap();
    let (list, _) = custos::repo::snapshot::Snapshot::list(&repo.target, &repo.meta)
        .await
        .unwrap();
    (index, list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_tree_page_is_named_by_check_and_refused_by_restore() {
    let f = demo_fixture(31).await;
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    // The packs that hold the snapshot's tree pages (metadata packs).
    let (index, list) = index_and_snapshots(&f.load()).await;
    let mut trees: Vec<String> = Vec::new();
    for t in &list[0].sqlite.as_ref().unwrap().tables {
        for pid in &t.pages {
            let loc = index.chunks[pid];
            let path = custos::repo::pack::pack_path(&index.pack_of(&loc).0);
            if !trees.contains(&path) {
                trees.push(path);
            }
        }
    }
    assert!(!trees.is_empty());
    // Damage every such pack, so whichever page the restore reads first is damaged.
    for t in &trees {
        let path = f.target_dir().join(t);
        let n = std::fs::metadata(&path).unwrap().len();
        truncate(&path, n / 2);
    }
    let out = run_fail(cli(&["check", "--policy", p(&f.policy)]));
    let text = all_output(&out);
    assert_eq!(code(&out), 3, "{text}");
    for t in &trees {
        assert!(text.contains(t.as_str()), "check does not name {t}\n{text}");
    }
    let to = f.path("restored.db");
    let out = run_fail(cli(&["restore", "--policy", p(&f.policy), "--to", p(&to)]));
    assert_no_panic(&out);
    let text = all_output(&out);
    assert!(
        trees.iter().any(|t| text.contains(t.as_str())),
        "restore does not name the damaged page\n{text}"
    );
    assert_nothing_restored(&to);
    eprintln!("tree: restore exit {}: {}", code(&out), stderr(&out).trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tree_page_stops_prune_before_it_deletes_anything() {
    use custos::ops::prune::{forget_and_prune, PruneOptions};
    let f = demo_fixture(37).await;
    let policy = f.load();
    backup(&policy, &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    // One bit of the last tree page of the snapshot's largest table.
    let (index, list) = index_and_snapshots(&policy).await;
    let snap = &list[0];
    let table = snap
        .record_tables()
        .iter()
        .max_by_key(|t| t.pages.len())
        .unwrap();
    assert!(table.pages.len() > 1, "{}", table.pages.len());
    let loc = index.chunks[table.pages.last().unwrap()];
    let pack = custos::repo::pack::pack_path(&index.pack_of(&loc).0);
    flip_bit(
        &f.target_dir().join(&pack),
        (loc.offset + loc.len / 2) as usize,
    );
    let before = inventory(&f.target_dir());
    let e = forget_and_prune(&policy, &PruneOptions::default())
        .await
        .unwrap_err()
        .to_string();
    for part in [snap.id.as_str(), pack.as_str(), "custos check"] {
        assert!(e.contains(part), "names {part}: {e}");
    }
    assert_eq!(inventory(&f.target_dir()), before, "prune changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_keyholder_manifest_with_dotdot_paths() {
    use custos::repo::snapshot::Snapshot;
    use custos::repo::tree::{store_pages, Page};
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"bravo").unwrap();
    let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
    let target = dir.path().join("target");
    let text = format!(
        r#"[policy]
name = "files"
[store]
kind = "files"
root = "{}"
[keys]
identity = "{}"
recipients = []
vault = ["{}"]
[[targets]]
name = "primary"
url = "{}"
"#,
        src.display(),
        keys.identity_path.display(),
        file_url(&dir.path().join("vault")),
        file_url(&target)
    );
    let policy = Policy::from_str(&text, Path::new("files.toml")).unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    backup(&policy, &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();

    // Someone holding the keys rewrites the manifest.
    let repo = custos::ops::OpenRepo::open(&policy, None).await.unwrap();
    let (list, bad) = Snapshot::list(&repo.target, &repo.meta).await.unwrap();
    assert!(bad.is_empty());
    let good = list[0].clone();
    let mut files = Vec::new();
    let index = custos::repo::index::Index::load(&repo.target, &repo.meta)
        .await
        .unwrap();
    let mut cache = custos::repo::cache::PackCache::new(Arc::new(repo.target.clone()), 2);
    for pid in &good.files.as_ref().unwrap().pages {
        let Page::Files { files: f, .. } = Page::load(&mut cache, &index, &repo.meta, pid)
            .await
            .unwrap()
        else {
            panic!("not a file page")
        };
        files.extend(f);
    }
    let absolute = dir.path().join("abs-escape");
    let evil_paths = [
        "../escape".to_string(),
        "sub/../../escape2".to_string(),
        absolute.to_str().unwrap().to_string(),
    ];
    for (i, evil) in evil_paths.iter().enumerate() {
        let mut files = files.clone();
        let victim = files
            .iter_mut()
            .find(|r| r.entry.path == "a.txt")
            .expect("a.txt in the manifest");
        victim.entry.path = evil.clone();
        let page = Page::Files { version: 1, files };
        let pid = store_pages(&repo.target, &repo.meta, &[page])
            .await
            .unwrap()[0];
        let mut snap = good.clone();
        snap.id = format!("{:016x}", 0xee00 + i);
        snap.parent = None;
        snap.files.as_mut().unwrap().pages = vec![pid];
        snap.store(&repo.target, &repo.meta).await.unwrap();

        let root = dir.path().join(format!("out{i}/restored"));
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        let err = restore(
            &policy,
            &RestoreOptions {
                target: None,
                snapshot: snap.id.clone(),
                to: root.clone(),
                force: false,
                only: Default::default(),
            },
            Arc::new(NoProgress),
        )
        .await
        .expect_err("a manifest with a `..` path must be refused");
        let msg = err.to_string();
        assert!(
            msg.contains(evil),
            "the error does not name `{evil}`: {msg}"
        );
        assert!(!dir.path().join(format!("out{i}/escape")).exists());
        assert!(!dir.path().join(format!("out{i}/escape2")).exists());
        assert!(!absolute.exists(), "an absolute manifest path was written");
        for e in ["escape", "escape2"] {
            assert!(!dir.path().join(e).exists(), "{e} written outside the root");
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Wrong keys.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_cannot_back_up_or_restore_and_writes_nothing() {
    let f = demo_fixture(41).await;
    backup(&f.load(), &BackupOptions::default(), Arc::new(NoProgress))
        .await
        .unwrap();
    let other = custos::keys::init_keys(&f.path("other-keys")).unwrap();
    let policy = f.path("other.toml");
    std::fs::write(
        &policy,
        sqlite_policy(
            &f.db,
            &other.identity_path,
            &f.vault_url(),
            &file_url(&f.target_dir()),
            "",
        ),
    )
    .unwrap();
    let before = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    let out = run_fail(cli(&["backup", "--policy", p(&policy)]));
    let text = all_output(&out);
    assert_no_panic(&out);
    assert!(
        text.contains("not a recipient"),
        "backup with another identity:\n{text}"
    );
    eprintln!(
        "wrong identity: backup exit {}: {}",
        code(&out),
        stderr(&out).trim()
    );
    let backup_code = code(&out);
    let to = f.path("restored.db");
    let out = run_fail(cli(&["restore", "--policy", p(&policy), "--to", p(&to)]));
    let text = all_output(&out);
    assert_no_panic(&out);
    assert!(text.contains("not a recipient"), "restore:\n{text}");
    assert_nothing_restored(&to);
    assert_eq!(code(&out), backup_code);
    assert!(backup_code == 1 || backup_code == 2, "{backup_code}");
    let after = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    assert_eq!(before, after, "the target or vault changed");
}

// ---------------------------------------------------------------------------
// 6. Bad input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_store_file_is_named_and_nothing_is_written() {
    let f = demo_fixture(51).await;
    let missing = f.path("no-such.db");
    let policy = f.path("missing.toml");
    std::fs::write(
        &policy,
        sqlite_policy(
            &missing,
            &f.identity,
            &f.vault_url(),
            &file_url(&f.target_dir()),
            "",
        ),
    )
    .unwrap();
    let before = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    let out = run_fail(cli(&["backup", "--policy", p(&policy)]));
    assert_no_panic(&out);
    let text = all_output(&out);
    assert!(
        text.contains(p(&missing)),
        "the error does not name the path\n{text}"
    );
    assert!(!missing.exists(), "backup created the missing database");
    assert_eq!(
        before,
        (inventory(&f.target_dir()), inventory(&f.vault_dir()))
    );
    eprintln!(
        "missing store: exit {}: {}",
        code(&out),
        stderr(&out).trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_column_in_policy_is_named_before_any_data_moves() {
    let f = demo_fixture(52).await;
    let text = std::fs::read_to_string(&f.policy)
        .unwrap()
        .replace("subject = \"customer_id\"", "subject = \"cust_no\"");
    let policy = f.path("column.toml");
    std::fs::write(&policy, text).unwrap();
    let before = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    let out = run_fail(cli(&["backup", "--policy", p(&policy)]));
    assert_no_panic(&out);
    let text = all_output(&out);
    assert!(
        text.contains("cdrs") && text.contains("cust_no"),
        "the error does not name table and column\n{text}"
    );
    let after = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    assert_eq!(before.0, after.0, "objects were written to the target");
    assert_eq!(before.1, after.1, "the vault changed");
    eprintln!(
        "unknown column: exit {}: {}",
        code(&out),
        stderr(&out).trim()
    );
}

#[test]
fn malformed_policy_exits_2_naming_file_and_line() {
    let dir = tempdir();
    let cases = [
        ("syntax.toml", "[policy]\nname = \"x\"\n\n[store\nkind = \"sqlite\"\n", ":4:"),
        (
            "typo.toml",
            "[policy]\nname = \"x\"\n\n[store]\nkind = \"sqlite\"\npath = \"/x.db\"\npaht = \"/y.db\"\n",
            ":7:",
        ),
    ];
    for (name, text, line) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        for cmd in ["backup", "check", "init"] {
            let out = run_fail(cli(&[cmd, "--policy", p(&path)]));
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{cmd} {name}: {err}");
            let at = format!("{}{line}", p(&path));
            assert!(err.contains(&at), "{cmd} {name}: no `{at}` in\n{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_s3_target_is_named_and_fails_within_the_retry_budget() {
    let f = demo_fixture(53).await;
    let port = closed_port();
    let extra = format!(
        "\n[s3]\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 0\n"
    );
    let policy = f.path("s3.toml");
    std::fs::write(
        &policy,
        sqlite_policy(&f.db, &f.identity, &f.vault_url(), "s3://bkt/crm", &extra),
    )
    .unwrap();
    for args in [
        vec!["init", "--policy", p(&policy)],
        vec!["backup", "--policy", p(&policy)],
        vec!["check", "--policy", p(&policy)],
    ] {
        let mut child = cli(&args)
            .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
            .env_remove("AWS_ENDPOINT_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A hang guard, not a timing assertion: the retry budget is a few
        // seconds; a command still running after two minutes is stuck.
        let mut done = false;
        for _ in 0..1200 {
            if child.try_wait().unwrap().is_some() {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !done {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(done, "{args:?} still running after two minutes");
        let text = all_output(&out);
        assert_no_panic(&out);
        assert_ne!(code(&out), 0, "{args:?}");
        assert!(
            text.contains("primary") && text.contains("s3://bkt/crm"),
            "{args:?}: the error does not name the target and its URL\n{text}"
        );
        eprintln!(
            "unreachable {}: exit {}: {}",
            args[0],
            code(&out),
            stderr(&out).trim()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fts5_virtual_table_is_refused_by_name_before_any_data_moves() {
    let f = fixture_with(|db| {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch(
            "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE cdrs(id INTEGER PRIMARY KEY, customer_id INTEGER, started_at TEXT);
             INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');
             INSERT INTO cdrs VALUES (1, 1, '2026-03-01T10:00:00Z');
             CREATE VIRTUAL TABLE notes_fts USING fts5(body);
             INSERT INTO notes_fts(body) VALUES ('call back tomorrow');",
        )
        .unwrap();
    })
    .await;
    let before = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    let out = run_fail(cli(&["backup", "--policy", p(&f.policy)]));
    assert_no_panic(&out);
    let text = all_output(&out);
    assert!(
        text.contains("notes_fts"),
        "the error does not name the table\n{text}"
    );
    assert!(text.contains("virtual"), "{text}");
    let after = (inventory(&f.target_dir()), inventory(&f.vault_dir()));
    assert_eq!(before.0, after.0, "objects were written to the target");
    eprintln!("fts5: exit {}: {}", code(&out), stderr(&out).trim());
}
