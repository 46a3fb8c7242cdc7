//! Random damage to a repository and its key vault, end to end.
//!
//! A repository of two snapshots (the second after a day's changes) and
//! its vault are copied, one object of either is damaged at random (a bit
//! flipped, the object cut short, overwritten with noise, emptied or
//! deleted), and `check --read-data` and `restore` are run on the copy as
//! a user would. Whatever the damage:
//!
//! - neither command panics or dies by a signal, and each exits with one
//!   of the documented codes;
//! - `check --read-data` fails for any damage to a pack, an index object
//!   or a snapshot object (every one is authenticated), and damage to
//!   those or to the vault's keys is never reported as an operational
//!   failure (exit 1);
//! - a restore that succeeds has restored exactly the latest snapshot's
//!   database (compared row by row), and one that fails leaves nothing
//!   behind: damage is never restored as data, and a key that cannot be
//!   read is never taken for a destroyed one;
//! - damage to a pack or an index object is repaired on the copy alone:
//!   `check --repair-index` rebuilds an index object from its whole pack
//!   (the copy then checks clean) or drops that of a damaged pack, and a
//!   backup after it restores exactly;
//! - a backup into the damaged copy exits as documented and changes no
//!   object that was there (it only adds).
//!
//! The repository is in a folder, and again on an S3 server over HTTP.
//! `CUSTOS_DAMAGE_CASES=N` runs N cases (default 24 in a folder, 12 on S3);
//! `CUSTOS_DAMAGE_SEED=S` starts at case seed S (a failure names its seed).

mod common;
#[path = "common/roundtrip_util.rs"]
mod same;
#[path = "common/faults_util.rs"]
mod util;

use common::s3::policy_section;
use common::{copy_tree, custos, file_url, stderr, stdout, tempdir, S3Server};
use custos::demo::{generate, mutate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::policy::Policy;
use custos::progress::NoProgress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use util::{inventory, list_files, noise, sqlite_policy};

/// What was done to the chosen object.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Damage {
    /// One bit of one byte flipped.
    Flip,
    /// Cut to a shorter length (possibly zero).
    Truncate,
    /// A stretch of bytes overwritten with noise.
    Noise,
    /// Removed.
    Delete,
}

/// Exit codes the README documents for `check` and `restore`.
const DOCUMENTED: [i32; 4] = [0, 1, 2, 3];

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// Damages `object` (a file under `dir`) as `rng` picks; returns what was
/// done, or `None` if the pick would leave the bytes as they were.
fn damage(dir: &Path, object: &str, kind: Damage, rng: &mut StdRng) -> Option<String> {
    let path = dir.join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    let what = match kind {
        Damage::Delete => {
            std::fs::remove_file(&path).unwrap();
            return Some("deleted".into());
        }
        _ if len == 0 => return None,
        Damage::Flip => {
            let at = rng.gen_range(0..len);
            let bit = rng.gen_range(0..8);
            bytes[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} of {len} flipped")
        }
        Damage::Truncate => {
            let to = rng.gen_range(0..len);
            bytes.truncate(to);
            format!("cut from {len} to {to} bytes")
        }
        Damage::Noise => {
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - at).min(64));
            let junk = noise(n, rng.gen::<u64>() | 1);
            if bytes[at..at + n] == junk[..] {
                return None;
            }
            bytes[at..at + n].copy_from_slice(&junk);
            format!("{n} bytes at {at} of {len} overwritten")
        }
    };
    std::fs::write(&path, bytes).unwrap();
    Some(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_is_found_and_never_restored_as_data() {
    sweep(None, 24).await;
}

/// The same over real HTTP: the repository on an S3 server on 127.0.0.1
/// (its objects are files, damaged in place), the vault in a folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_over_s3_is_found_and_never_restored_as_data() {
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    sweep(Some(&s3), 12).await;
}

/// Runs the sweep with the repository in a folder, or with `s3` in bucket
/// `bkt` of that server; `default_cases` unless `CUSTOS_DAMAGE_CASES`.
async fn sweep(s3: Option<&S3Server>, default_cases: u64) {
    let cases: u64 = std::env::var("CUSTOS_DAMAGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let start: u64 = std::env::var("CUSTOS_DAMAGE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);

    // A demo database of about 1 MiB, backed up twice in small packs.
    let dir = tempdir();
    let root = dir.path();
    let db = root.join("crm.db");
    generate(&db, DemoSize::Bytes(1 << 20), 21, &NoProgress).unwrap();
    let keys = custos::keys::init_keys(&root.join("keys")).unwrap();
    // Where a repository named `name` keeps its objects, as files.
    let repo_dir = |name: &str| match s3 {
        Some(s3) => s3.root().join("bkt").join(name),
        None => root.join(name),
    };
    let (target, vault) = (repo_dir("target"), root.join("vault"));
    std::fs::create_dir_all(&target).unwrap();
    let extra = s3.map_or(String::new(), |s3| policy_section(&s3.endpoint()));
    let policy_for = |name: &str, t: &Path, v: &Path| {
        let p = root.join(name);
        let url = match s3 {
            Some(_) => format!("s3://bkt/{}", t.file_name().unwrap().to_str().unwrap()),
            None => file_url(t),
        };
        let text = sqlite_policy(&db, &keys.identity_path, &file_url(v), &url, &extra);
        std::fs::write(&p, text).unwrap();
        p
    };
    let env = s3.map_or(Vec::new(), |s3| s3.env());
    let custos = || {
        let mut c = custos();
        c.envs(env.iter().cloned());
        c
    };
    let policy = policy_for("policy.toml", &target, &vault);
    let load = || Policy::load(&policy).unwrap();
    custos::ops::init::init(&load()).await.unwrap();
    let small = BackupOptions {
        pack_size: 64 << 10,
        ..BackupOptions::default()
    };
    backup(&load(), &small, Arc::new(NoProgress)).await.unwrap();
    mutate(&db, 0.02, 22).unwrap();
    backup(&load(), &small, Arc::new(NoProgress)).await.unwrap();

    // Every object a user's copy of the repository or vault holds (locks
    // are not data).
    let objects = |d: &Path| -> Vec<String> {
        list_files(d)
            .into_iter()
            .filter(|o| !o.starts_with("locks/"))
            .collect()
    };
    let (target_objects, vault_objects) = (objects(&target), objects(&vault));
    assert!(
        target_objects
            .iter()
            .filter(|o| o.starts_with("data/"))
            .count()
            >= 4,
        "want several packs: {target_objects:?}"
    );

    // `custos VERB --policy P MORE…`, as a user runs it.
    let cli = |verb: &str, p: &Path, more: &[&str]| {
        custos()
            .args([verb, "--policy", p.to_str().unwrap()])
            .args(more)
            .output()
            .unwrap()
    };
    // A restore of the latest snapshot into a new folder `dir`.
    let restore_into = |p: &Path, dir: &str| {
        let to = root.join(dir).join("restored.db");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let out = cli("restore", p, &["--to", to.to_str().unwrap()]);
        (out, to)
    };
    let run_case = |name: &str, t: &Path, v: &Path| {
        let p = policy_for(&format!("{name}.toml"), t, v);
        let chk = cli("check", &p, &["--read-data"]);
        let (rst, to) = restore_into(&p, &format!("out-{name}"));
        (chk, rst, to)
    };

    // The undamaged copy passes both: the sweep below can tell damage
    // from a harness that always fails.
    let (t0, v0) = (repo_dir("t-clean"), root.join("v-clean"));
    copy_tree(&target, &t0);
    copy_tree(&vault, &v0);
    let (chk, rst, to) = run_case("clean", &t0, &v0);
    assert_eq!(chk.status.code(), Some(0), "{}", describe("check", &chk));
    assert_eq!(rst.status.code(), Some(0), "{}", describe("restore", &rst));
    same::assert_same_db(&db, &to);

    let kinds = [
        Damage::Flip,
        Damage::Truncate,
        Damage::Noise,
        Damage::Delete,
    ];
    let (mut found, mut refused, mut restored, mut repaired) = (0, 0, 0, 0);
    for seed in start..start + cases {
        let mut rng = StdRng::seed_from_u64(seed);
        // Three cases in four damage the repository, one the vault.
        let in_vault = rng.gen_range(0..4) == 0;
        let list = if in_vault {
            &vault_objects
        } else {
            &target_objects
        };
        let object = list[rng.gen_range(0..list.len())].clone();
        let kind = kinds[rng.gen_range(0..kinds.len())];
        // Deleting a whole snapshot is a repository without it, which no
        // check can tell from one that never had it.
        if kind == Damage::Delete && object.starts_with("snapshots/") {
            continue;
        }
        let name = format!("case{seed}");
        let (t, v) = (
            repo_dir(&format!("t-{name}")),
            root.join(format!("v-{name}")),
        );
        copy_tree(&target, &t);
        copy_tree(&vault, &v);
        let Some(how) = damage(if in_vault { &v } else { &t }, &object, kind, &mut rng) else {
            continue;
        };
        let place = if in_vault { "vault" } else { "target" };
        let case = format!("seed {seed}: {place} object {object} {how}");
        let (chk, rst, to) = run_case(&name, &t, &v);
        for (what, out) in [("check", &chk), ("restore", &rst)] {
            let text = describe(what, out);
            assert!(
                !text.contains("panicked"),
                "{case}: {what} panicked\n{text}"
            );
            assert!(
                !text.contains("upgrading"),
                "{case}: {what} suggests an upgrade for damage\n{text}"
            );
            let code = out.status.code();
            assert!(
                code.is_some_and(|c| DOCUMENTED.contains(&c)),
                "{case}: {what} exit code not documented\n{text}"
            );
        }
        let authenticated = ["data/", "index/", "snapshots/"]
            .iter()
            .any(|p| object.starts_with(p));
        if authenticated {
            assert_ne!(
                chk.status.code(),
                Some(0),
                "{case}: check --read-data found nothing\n{}",
                describe("check", &chk)
            );
        }
        // Damage is not an operational failure (exit 1: a location
        // unreachable, an I/O error): a damaged object of the repository
        // or of the vault's keys gets the integrity code (or, where age
        // cannot tell damage from another identity's object, 2).
        // (A repository's marker deleted is a repository that lost it.)
        let sealed = authenticated
            || (in_vault && (object.starts_with("keys/") || object == "meta.age"))
            || (!in_vault && object == "custos-repo.json" && kind == Damage::Delete);
        if sealed {
            for (what, out) in [("check", &chk), ("restore", &rst)] {
                assert_ne!(
                    out.status.code(),
                    Some(1),
                    "{case}: {what} calls damage an operational failure\n{}",
                    describe(what, out)
                );
            }
        }
        if chk.status.code() != Some(0) {
            found += 1;
        }
        if rst.status.code() == Some(0) {
            restored += 1;
            eprintln!("{case}: restored; comparing");
            same::assert_same_db(&db, &to);
            assert!(
                !stdout(&rst).contains("shredded") && !stderr(&rst).contains("shredded"),
                "{case}: a restore of undamaged keys omitted rows as shredded\n{}",
                describe("restore", &rst)
            );
        } else {
            refused += 1;
            let text = describe("restore", &rst);
            assert!(
                !to.exists(),
                "{case}: a failed restore left its file\n{text}"
            );
            let left: Vec<_> = std::fs::read_dir(to.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                left.is_empty(),
                "{case}: a failed restore left {left:?}\n{text}"
            );
        }
        eprintln!(
            "{case}: check exit {:?}, restore exit {:?}",
            chk.status.code(),
            rst.status.code()
        );
        // A backup into the damaged copy exits as documented and leaves
        // every object that was there as it was (it only adds).
        let before = inventory(&t);
        let p = root.join(format!("{name}.toml"));
        let bk = cli("backup", &p, &[]);
        let text = describe("backup", &bk);
        assert!(
            !text.contains("panicked"),
            "{case}: backup panicked\n{text}"
        );
        assert!(
            bk.status.code().is_some_and(|c| DOCUMENTED.contains(&c)),
            "{case}: backup exit code not documented\n{text}"
        );
        let after = inventory(&t);
        for (object, hash) in before.iter().filter(|(o, _)| !o.starts_with("locks/")) {
            assert_eq!(
                after.get(object),
                Some(hash),
                "{case}: the backup changed or removed {object}\n{text}"
            );
        }
        // Damage to a pack or an index object is repaired on this copy
        // alone: `check --repair-index` rebuilds index objects from whole
        // packs (an index object alone damaged: the copy then checks
        // clean) and drops those of damaged or missing packs, after which
        // a backup stores those rows again and its snapshot restores
        // exactly.
        if !in_vault && (object.starts_with("index/") || object.starts_with("data/")) {
            let fix = cli("check", &p, &["--read-data", "--repair-index"]);
            let text = describe("check --repair-index", &fix);
            assert!(!text.contains("panicked"), "{case}: {text}");
            assert!(
                stdout(&fix).lines().any(|l| l.starts_with("repaired: ")),
                "{case}: nothing repaired\n{text}"
            );
            if object.starts_with("index/") {
                assert_eq!(fix.status.code(), Some(0), "{case}: not repaired\n{text}");
            } else {
                assert!(matches!(fix.status.code(), Some(0 | 3)), "{case}: {text}");
            }
            let bk = cli("backup", &p, &[]);
            assert_eq!(
                bk.status.code(),
                Some(0),
                "{case}: no backup after the repair\n{}",
                describe("backup", &bk)
            );
            let (rst, fixed) = restore_into(&p, &format!("fixed-{name}"));
            assert_eq!(
                rst.status.code(),
                Some(0),
                "{case}: the backup after the repair does not restore\n{}",
                describe("restore", &rst)
            );
            same::assert_same_db(&db, &fixed);
            repaired += 1;
            let _ = std::fs::remove_dir_all(fixed.parent().unwrap());
        }
        let _ = std::fs::remove_dir_all(&t);
        let _ = std::fs::remove_dir_all(&v);
        let _ = std::fs::remove_dir_all(to.parent().unwrap());
    }
    eprintln!(
        "{found} damaged copies failed the check; {refused} restores refused, {restored} restored whole; {repaired} repaired by --repair-index and a backup"
    );
}
