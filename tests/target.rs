//! Target conformance: the same checks against `memory://`, `file://` and a
//! real S3 server (s3s-fs over HTTP), plus error and retry behaviour.

mod common;

use bytes::Bytes;
use common::s3::{ACCESS_KEY, SECRET_KEY};
use common::{FaultStore, S3Server};
use custos::target::{
    open_url, open_url_with, S3Credentials, S3Settings, Target, TargetError, RETRY_ATTEMPTS,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A guard against hangs only; no test asserts how long anything takes.
const HANG_GUARD: Duration = Duration::from_secs(180);

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn target(name: &str, url: &str, store: Arc<dyn object_store::ObjectStore>) -> Target {
    Target {
        name: name.to_string(),
        url: url.to_string(),
        offsite: false,
        store,
    }
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// The suite every target kind must pass. `t` must be empty.
async fn conformance(t: &Target) {
    // Missing objects.
    assert_eq!(t.get_opt("obj/missing").await.unwrap(), None);
    assert_eq!(t.head("obj/missing").await.unwrap(), None);
    let err = t.get("obj/missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&t.name) && text.contains("obj/missing"),
        "{text}"
    );

    // Put, get, head, overwrite.
    t.put("obj/one", Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(
        t.get("obj/one").await.unwrap(),
        Bytes::from_static(b"first")
    );
    assert_eq!(t.head("obj/one").await.unwrap(), Some(5));
    t.put("obj/one", Bytes::from_static(b"second!"))
        .await
        .unwrap();
    assert_eq!(
        t.get_opt("obj/one").await.unwrap(),
        Some(Bytes::from_static(b"second!"))
    );
    assert_eq!(t.head("obj/one").await.unwrap(), Some(7));

    // Empty object.
    t.put("obj/empty", Bytes::new()).await.unwrap();
    assert_eq!(t.get("obj/empty").await.unwrap(), Bytes::new());
    assert_eq!(t.head("obj/empty").await.unwrap(), Some(0));

    // Create-only put.
    assert!(t
        .put_new("locks/a", Bytes::from_static(b"mine"))
        .await
        .unwrap());
    assert!(!t
        .put_new("locks/a", Bytes::from_static(b"theirs"))
        .await
        .unwrap());
    assert_eq!(t.get("locks/a").await.unwrap(), Bytes::from_static(b"mine"));

    // Listing: nested prefixes, whole-segment matching, sorted, relative paths.
    for i in 0..50u32 {
        let path = format!("data/{}/obj{i:03}", i % 5);
        t.put(&path, Bytes::from(vec![b'x'; i as usize]))
            .await
            .unwrap();
    }
    // A sibling whose name starts with the prefix is not under it.
    t.put("dataset/x", Bytes::from_static(b"s")).await.unwrap();
    let all = t.list("data").await.unwrap();
    assert_eq!(all.len(), 50, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    assert_eq!(all[0], ("data/0/obj000".to_string(), 0));
    assert!(all.contains(&("data/3/obj013".to_string(), 13)));
    let three = t.list("data/3").await.unwrap();
    assert_eq!(three.len(), 10, "{three:?}");
    assert!(three.iter().all(|(p, _)| p.starts_with("data/3/")));
    assert_eq!(t.list("data/3/").await.unwrap(), three, "trailing slash");
    assert!(t.list("nothing/here").await.unwrap().is_empty());
    let everything: Vec<String> = t
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(everything.len(), 50 + 4, "{everything:?}");
    for p in ["obj/one", "obj/empty", "locks/a", "data/4/obj049"] {
        assert!(everything.iter().any(|e| e == p), "{p} in {everything:?}");
    }

    // Delete (twice: deleting a missing object is fine).
    t.delete("obj/one").await.unwrap();
    assert_eq!(t.get_opt("obj/one").await.unwrap(), None);
    t.delete("obj/one").await.unwrap();
    t.delete("never/existed").await.unwrap();
    assert_eq!(t.list("obj").await.unwrap().len(), 1);

    // A large object.
    let big = pattern(8 << 20, 7);
    t.put("packs/big", big.clone()).await.unwrap();
    assert_eq!(t.head("packs/big").await.unwrap(), Some(8 << 20));
    let back = t.get("packs/big").await.unwrap();
    assert!(back == big, "8 MiB object came back different");
    // Ranges of it (check reads the span of a pack its chunks lie in).
    assert_eq!(
        t.get_range("packs/big", 0..10).await.unwrap(),
        big.slice(0..10)
    );
    let mid = (5 << 20) as u64;
    assert!(
        t.get_range("packs/big", mid..mid + 4097).await.unwrap()
            == big.slice(5 << 20..(5 << 20) + 4097)
    );
    let err = t.get_range("packs/none", 0..4).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // Past the end: an error, or the bytes there are (never other bytes).
    let end = (8 << 20) as u64;
    if let Ok(b) = t.get_range("packs/big", end - 4..end + 4).await {
        assert_eq!(b, big.slice((8 << 20) - 4..));
    }

    // Paths that escape or are malformed are refused, not normalised.
    let err = t
        .put("../escape", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::InvalidPath { .. }), "{err}");
}

#[tokio::test]
async fn memory_target_conforms() {
    let url = format!("memory://{}", unique("conf"));
    let store = open_url(&url, &S3Settings::default(), false).unwrap();
    conformance(&target("mem", &url, store)).await;
}

#[tokio::test]
async fn memory_targets_with_one_name_share_one_store() {
    let url = format!("memory://{}", unique("shared"));
    let a = target(
        "a",
        &url,
        open_url(&url, &S3Settings::default(), false).unwrap(),
    );
    let b = target(
        "b",
        &url,
        open_url(&url, &S3Settings::default(), false).unwrap(),
    );
    a.put("x/y", Bytes::from_static(b"shared")).await.unwrap();
    assert_eq!(b.get("x/y").await.unwrap(), Bytes::from_static(b"shared"));
    // A prefix is a view on the same store.
    let sub_url = format!("{url}/x");
    let sub = target(
        "sub",
        &sub_url,
        open_url(&sub_url, &S3Settings::default(), false).unwrap(),
    );
    assert_eq!(sub.get("y").await.unwrap(), Bytes::from_static(b"shared"));
    let other_url = format!("memory://{}", unique("other"));
    let c = target(
        "c",
        &other_url,
        open_url(&other_url, &S3Settings::default(), false).unwrap(),
    );
    assert_eq!(c.get_opt("x/y").await.unwrap(), None);
}

#[tokio::test]
async fn file_target_conforms() {
    let dir = common::tempdir();
    let root = dir.path().join("repo");
    let url = common::file_url(&root);
    let store = open_url(&url, &S3Settings::default(), true).unwrap();
    assert!(root.is_dir(), "create=true makes the directory");
    let t = target("local", &url, store);
    conformance(&t).await;
    // The objects are plain files under the root.
    assert_eq!(std::fs::read(root.join("locks/a")).unwrap(), b"mine");
}

#[test]
fn missing_file_directory_is_named() {
    let dir = common::tempdir();
    let missing = dir.path().join("no-such-dir");
    let url = common::file_url(&missing);
    let err = open_url(&url, &S3Settings::default(), false).unwrap_err();
    assert!(matches!(err, TargetError::MissingDirectory { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(!missing.exists(), "create=false must not create it");
}

#[test]
fn file_target_that_is_a_file_is_refused() {
    let dir = common::tempdir();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = open_url(&common::file_url(&file), &S3Settings::default(), true).unwrap_err();
    assert!(matches!(err, TargetError::Directory { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_target_conforms() {
    let s3 = S3Server::start();
    s3.create_bucket("conform");
    let url = s3.url("conform", "repo/one");
    // Credentials come from the environment S3Server exported.
    let store = open_url(&url, &s3.settings(), false).unwrap();
    let t = target("s3", &url, store);
    tokio::time::timeout(HANG_GUARD, conformance(&t))
        .await
        .expect("hang guard");
    // The prefix is applied: objects live under repo/one in the bucket.
    let on_disk = s3.root().join("conform/repo/one/locks/a");
    assert_eq!(std::fs::read(on_disk).unwrap(), b"mine");
    // A sibling prefix sees none of them.
    let other = s3.url("conform", "repo/two");
    let t2 = target(
        "s3b",
        &other,
        open_url(&other, &s3.settings(), false).unwrap(),
    );
    assert!(t2.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_refused_clearly_and_secret_never_shown() {
    let s3 = S3Server::start();
    s3.create_bucket("guarded");
    let url = s3.url("guarded", "repo");
    let bad_secret = "wrong-secret-value-do-not-print-42";
    let creds = S3Credentials::new(ACCESS_KEY, bad_secret);
    let store = open_url_with(&url, &s3.settings(), Some(&creds), false).unwrap();
    let t = target("guarded-target", &url, store);
    let err = tokio::time::timeout(HANG_GUARD, t.put("snap/x", Bytes::from_static(b"data")))
        .await
        .expect("hang guard")
        .unwrap_err();
    assert!(matches!(err, TargetError::Denied { .. }), "{err:?}");
    assert!(!err.is_transient());
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("guarded-target") && text.contains("snap/x"),
        "{text}"
    );
    assert!(text.contains("credentials"), "says what to check: {text}");
    assert!(!text.contains(bad_secret), "secret leaked: {text}");
    assert!(!text.contains(SECRET_KEY), "secret leaked: {text}");
    assert!(!format!("{creds:?}").contains(bad_secret));
    // Nothing was written.
    assert!(!s3.root().join("guarded/repo/snap/x").exists());

    // The right secret works against the same server.
    let good = open_url_with(&url, &s3.settings(), Some(&s3.credentials()), false).unwrap();
    let t = target("guarded-target", &url, good);
    t.put("snap/x", Bytes::from_static(b"data")).await.unwrap();
    assert!(s3.root().join("guarded/repo/snap/x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_s3_endpoint_gives_one_bounded_error_naming_the_target() {
    // A port that was just free: connections to it are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let settings = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        max_retries: Some(1),
    };
    let secret = "unreachable-secret-never-printed-99";
    let creds = S3Credentials::new(ACCESS_KEY, secret);
    let url = "s3://offsite-bucket/crm";
    let store = open_url_with(url, &settings, Some(&creds), false).unwrap();
    let t = target("dr-east", url, store);
    let err = tokio::time::timeout(HANG_GUARD, t.get("index/latest"))
        .await
        .expect("hang guard")
        .unwrap_err();
    match &err {
        TargetError::Unreachable { attempts, .. } => assert_eq!(*attempts, RETRY_ATTEMPTS),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains("dr-east"), "{text}");
    assert!(text.contains(url), "{text}");
    assert!(text.contains("index/latest"), "{text}");
    assert!(text.contains(&format!("{RETRY_ATTEMPTS} times")), "{text}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
}

fn faulty(name: &str) -> (FaultStore, Target) {
    let url = format!("memory://{}", unique(name));
    let fs = FaultStore::new(open_url(&url, &S3Settings::default(), false).unwrap());
    let t = target(name, &url, fs.store());
    (fs, t)
}

#[tokio::test]
async fn transient_put_failure_is_retried() {
    let (fs, t) = faulty("retry-once");
    fs.fail_nth_put(1);
    t.put("a/b", Bytes::from_static(b"v")).await.unwrap();
    let c = fs.counts();
    assert_eq!((c.puts, c.failed_puts), (2, 1));
    assert_eq!(t.get("a/b").await.unwrap(), Bytes::from_static(b"v"));

    fs.fail_nth_put(3);
    assert!(t.put_new("a/c", Bytes::from_static(b"w")).await.unwrap());
    assert_eq!(fs.counts().puts, 4);
}

#[tokio::test]
async fn persistent_put_failure_stops_after_the_retry_budget() {
    let (fs, t) = faulty("retry-all");
    fs.fail_puts_after(0);
    let err = t.put("a/b", Bytes::from_static(b"v")).await.unwrap_err();
    assert!(matches!(err, TargetError::Unreachable { .. }), "{err}");
    assert_eq!(fs.counts().puts, u64::from(RETRY_ATTEMPTS));
    assert_eq!(fs.counts().failed_puts, u64::from(RETRY_ATTEMPTS));
    assert_eq!(t.get_opt("a/b").await.unwrap(), None);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let (fs, t) = faulty("no-retry");
    assert_eq!(t.get_opt("absent").await.unwrap(), None);
    assert_eq!(fs.counts().gets, 1);
    t.put_new("k", Bytes::from_static(b"1")).await.unwrap();
    assert!(!t.put_new("k", Bytes::from_static(b"2")).await.unwrap());
    assert_eq!(fs.counts().puts, 2);
}

#[tokio::test]
async fn corrupted_reads_are_visible() {
    let (fs, t) = faulty("corrupt");
    let data = pattern(1000, 3);
    t.put("x", data.clone()).await.unwrap();
    fs.corrupt_gets(true);
    let got = t.get("x").await.unwrap();
    assert_eq!(got.len(), data.len());
    assert_ne!(got, data);
    fs.clear_faults();
    assert_eq!(t.get("x").await.unwrap(), data);
}
