//! Choosing a snapshot among many reads only each one's head (id, policy,
//! time), then loads the one chosen; a check loads them one at a time. A
//! snapshot whose head reads but whose body does not must still be named,
//! never silently stand in for another.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::tempdir;
use custos::demo::{generate, DemoSize};
use custos::ops::backup::{backup, BackupOptions};
use custos::ops::check::check;
use custos::ops::restore::{restore, RestoreOptions};
use custos::ops::OpenRepo;
use custos::policy::Policy;
use custos::progress::NoProgress;
use custos::repo::snapshot::{snapshot_path, Snapshot};
use std::sync::Arc;
use util::write_local_policy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_body_is_unreadable_is_named_and_never_stands_in() {
    let dir = tempdir();
    let db = dir.path().join("crm.db");
    generate(&db, DemoSize::Bytes(1 << 20), 5, &NoProgress).unwrap();
    let tables = "[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n";
    let policy = Policy::load(&write_local_policy(dir.path(), "heads", &db, tables)).unwrap();
    custos::ops::init::init(&policy).await.unwrap();
    let opts = BackupOptions::default();
    backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let second = backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(second.rows_reused, second.items);
    assert!(second.parents_unreadable.is_empty());

    // A snapshot object, newest of all, sealed under the repository's key,
    // whose head is well formed and whose body is not.
    let repo = OpenRepo::open(&policy, None).await.unwrap();
    let forged = "00ff00ff00ff00ff";
    let json = format!(
        r#"{{"version":1,"id":"{forged}","policy":"heads","time":"2999-01-01T00:00:00Z","stats":"not stats"}}"#
    );
    let z = zstd::bulk::compress(json.as_bytes(), 3).unwrap();
    let sealed = repo.meta.seal("snapshot", forged, &z);
    repo.target
        .put(&snapshot_path(forged), sealed.into())
        .await
        .unwrap();
    let (heads, bad) = Snapshot::heads_with_ids(&repo.target, &repo.meta)
        .await
        .unwrap();
    assert!(bad.is_empty());
    assert_eq!(
        heads.last().unwrap().id,
        forged,
        "the forged head is the latest"
    );

    // `latest` is the forged one: restoring it fails and names it.
    let to = dir.path().join("restored.db");
    let ropts = |snapshot: &str| RestoreOptions {
        target: None,
        snapshot: snapshot.into(),
        to: to.clone(),
        force: true,
        only: Default::default(),
    };
    let e = restore(&policy, &ropts("latest"), Arc::new(NoProgress))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("snapshots/{forged}")), "{e}");
    assert!(!to.exists());
    // The others restore by id.
    let r = restore(&policy, &ropts(&second.snapshot), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(r.snapshot, second.snapshot);

    // A backup takes the latest readable snapshot of its policy as parent.
    let third = backup(&policy, &opts, Arc::new(NoProgress)).await.unwrap();
    let third_snap = Snapshot::load(&repo.target, &repo.meta, &third.snapshot)
        .await
        .unwrap();
    assert_eq!(third_snap.parent.as_deref(), Some(second.snapshot.as_str()));
    assert_eq!(third.rows_reused, third.items);
    // And says which newer one it passed over.
    assert_eq!(third.parents_unreadable, [forged]);

    // A check walks the readable ones and names the other.
    let c = check(&policy, None, false, Arc::new(NoProgress))
        .await
        .unwrap();
    assert!(!c.ok);
    assert_eq!(c.snapshots, 3, "{:?}", c.findings);
    let named: Vec<_> = c
        .findings
        .iter()
        .filter(|f| f.object.ends_with(&format!("snapshots/{forged}")))
        .collect();
    assert_eq!(named.len(), 1, "{:?}", c.findings);
}
