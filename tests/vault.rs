//! Key vault and service keys, against real files (`LocalFileSystem` in
//! temporary directories) and `InMemory` stores.

mod common;

use age::x25519::Identity;
use common::age_decrypt;
use custos::keys::{self, KeysError};
use custos::vault::{KeyId, KeyKind, Vault, VaultError, VaultKeys, VaultLocation};
use ed25519_dalek::SigningKey;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

/// Fresh service keys: an identity and a signing key.
fn service() -> VaultKeys {
    VaultKeys::new(
        Identity::generate(),
        SigningKey::generate(&mut rand::rngs::OsRng),
    )
}

fn fs_loc(dir: &Path) -> VaultLocation {
    std::fs::create_dir_all(dir).unwrap();
    VaultLocation {
        url: format!("file://{}", dir.display()),
        store: Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()),
    }
}

fn mem_loc(name: &str) -> VaultLocation {
    VaultLocation {
        url: format!("memory://{name}"),
        store: Arc::new(InMemory::new()),
    }
}

/// One object of a location.
async fn object(loc: &VaultLocation, name: &str) -> bytes::Bytes {
    loc.store
        .get(&ObjPath::from(name))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// Every object at a location: (name, bytes).
async fn all_objects(loc: &VaultLocation) -> Vec<(String, Vec<u8>)> {
    let metas: Vec<_> = loc.store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let b = loc
            .store
            .get(&m.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push((m.location.to_string(), b.to_vec()));
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether any object of any location holds `needle`, raw or (for `.age`
/// objects) after decryption with `identity`.
async fn anywhere(locs: &[VaultLocation], keys: &VaultKeys, needle: &[u8]) -> Vec<String> {
    let identity = keys.identity();
    let mut hits = Vec::new();
    for l in locs {
        for (name, bytes) in all_objects(l).await {
            if contains(&bytes, needle) {
                hits.push(format!("{} {name} (raw)", l.url));
            }
            if name.ends_with(".age") && contains(&age_decrypt(identity, &bytes), needle) {
                hits.push(format!("{} {name} (decrypted)", l.url));
            }
        }
    }
    hits
}

#[tokio::test]
async fn create_open_round_trip_two_locations() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = mem_loc("b");
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    assert!(!v.is_dirty());
    let meta = *v.meta_key().expose();
    let pseudo = *v.pseudonym_key().expose();
    assert_ne!(meta, pseudo);

    let subj = custos::crypto::subject_pseudonym(v.pseudonym_key(), "customer-42");
    let (sid, sk) = v.get_or_create(KeyKind::Subject, &subj);
    let sk = *sk.expose();
    let (pid, pk) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    let pk = *pk.expose();
    let (eid, _) = v.get_or_create(KeyKind::Epoch, "identity:2026-Q4");
    // Asking again gives the same key.
    assert_eq!(v.get_or_create(KeyKind::Subject, &subj).0, sid);
    assert!(v.is_dirty());
    v.persist().await.unwrap();
    assert!(!v.is_dirty());

    // Layout at the file location.
    let names: Vec<String> = all_objects(&a).await.into_iter().map(|o| o.0).collect();
    let subj_shard = format!("keys/subject/{:02x}.age", sid.0[0]);
    for n in [
        "custos-vault.json",
        "meta.age",
        "keys/period/all.age",
        "keys/epoch/all.age",
        subj_shard.as_str(),
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
    }
    assert_eq!(names.len(), 5, "{names:?}");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/custos-vault.json")).unwrap())
            .unwrap();
    assert_eq!(marker["format"], "custos-vault");
    assert_eq!(marker["version"], 1);
    assert_eq!(marker["policy"], "crm");
    assert_eq!(marker["vault_id"], v.vault_id());
    // No raw subject id, and no key in clear, anywhere.
    let locs = [a.clone(), b.clone()];
    for (_, bytes) in all_objects(&a)
        .await
        .iter()
        .chain(all_objects(&b).await.iter())
    {
        assert!(!contains(bytes, b"customer-42"));
        assert!(!contains(bytes, &sk));
        assert!(!contains(bytes, &meta));
    }
    assert!(anywhere(&locs, &id, b"customer-42").await.is_empty());

    // Open from both locations, and from each alone.
    for set in [vec![a.clone(), b.clone()], vec![a.clone()], vec![b.clone()]] {
        let o = Vault::open(set, &id, &[]).await.unwrap();
        assert!(!o.is_dirty());
        assert_eq!(o.vault_id(), v.vault_id());
        assert_eq!(o.policy(), "crm");
        assert_eq!(o.meta_key().expose(), &meta);
        assert_eq!(o.pseudonym_key().expose(), &pseudo);
        assert_eq!(o.entries(), v.entries());
        let (lid, lk) = o.lookup(KeyKind::Subject, &subj).unwrap();
        assert_eq!((lid, lk.expose()), (sid, &sk));
        assert_eq!(o.key(&pid).unwrap().expose(), &pk);
        assert_eq!(o.entry(&eid).unwrap().name, "identity:2026-Q4");
        assert!(o.lookup(KeyKind::Period, "consumption:2026-04").is_none());
    }
    assert_eq!(v.entries().len(), 3);
    assert_eq!(v.locations(), vec![a.url.clone(), b.url.clone()]);
}

#[tokio::test]
async fn open_with_other_identity_is_not_a_recipient() {
    let a = mem_loc("a");
    let id = service();
    Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let stranger = service();
    let e = Vault::open(vec![a.clone()], &stranger, &[])
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::NotRecipient { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("not a recipient"), "{msg}");
    assert!(msg.contains("memory://a"), "{msg}");
}

#[tokio::test]
async fn open_without_vault_fails() {
    let e = Vault::open(vec![mem_loc("x"), mem_loc("y")], &service(), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::NoVault { .. }), "{e}");
    assert!(e.to_string().contains("memory://y"));
}

#[tokio::test]
async fn recovery_recipient_can_open() {
    let a = mem_loc("a");
    let b = mem_loc("b");
    let id = service();
    let recovery = Identity::generate();
    let mut v = Vault::create(
        vec![a.clone(), b.clone()],
        &id,
        &[recovery.to_public()],
        "crm",
    )
    .await
    .unwrap();
    let (kid, k) = v.get_or_create(KeyKind::Period, "service:2026-01");
    let k = *k.expose();
    v.persist().await.unwrap();
    // The recovery identity with the service's public key reads...
    let reader = VaultKeys::read_only(recovery, id.verifying_key());
    let before = (all_objects(&a).await, all_objects(&b).await);
    let mut o = Vault::open(vec![a.clone(), b.clone()], &reader, &[])
        .await
        .unwrap();
    assert_eq!(o.key(&kid).unwrap().expose(), &k);
    assert_eq!(o.meta_key().expose(), v.meta_key().expose());
    // ...and cannot write: it cannot sign.
    o.get_or_create(KeyKind::Period, "service:2026-02");
    assert!(matches!(o.persist().await, Err(VaultError::ReadOnly)));
    assert_eq!((all_objects(&a).await, all_objects(&b).await), before);
    let fresh = mem_loc("fresh");
    assert!(matches!(
        Vault::create(vec![fresh.clone()], &reader, &[], "crm").await,
        Err(VaultError::ReadOnly)
    ));
    assert!(all_objects(&fresh).await.is_empty());
    // Another service's public key verifies nothing.
    let e = Vault::open(
        vec![a, b],
        &VaultKeys::read_only(reader.identity().clone(), service().verifying_key()),
        &[],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, VaultError::BadSignature { .. }), "{e}");
}

#[tokio::test]
async fn create_refuses_existing_vault_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let v = Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let before = all_objects(&a).await;
    let e = Vault::create(vec![b.clone(), a.clone()], &id, &[], "crm")
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::AlreadyExists { .. }), "{e}");
    assert!(e.to_string().contains(&a.url), "{e}");
    assert!(all_objects(&b).await.is_empty());
    assert_eq!(all_objects(&a).await, before);
    let o = Vault::open(vec![a], &id, &[]).await.unwrap();
    assert_eq!(o.vault_id(), v.vault_id());
}

/// A first backup asks for a read window's new subject keys at once
/// (`get_or_create_each`): each name gets one key, the one asked for one
/// at a time after; the keys fill a few subject shards (up to 4096 keys
/// a shard) rather than all 256, so a persist rewrites those alone; a
/// later session's new keys go to one more shard and leave the others'
/// objects as they were; reopened, every key is found by name.
#[tokio::test]
async fn new_subject_keys_fill_few_shards() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let id = service();
    let mut v = Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let names: Vec<String> = (0..10_000).map(|i| format!("p-{i}")).collect();
    let mut asked: Vec<&str> = names.iter().map(String::as_str).collect();
    asked.push(asked[17]);
    let mut got: Vec<Option<(KeyId, [u8; 32])>> = vec![None; asked.len()];
    v.get_or_create_each(KeyKind::Subject, &asked, |i, kid, k| {
        assert!(got[i].is_none(), "name {i} handed out twice");
        got[i] = Some((kid, *k.expose()));
    });
    let got: Vec<(KeyId, [u8; 32])> = got.into_iter().map(|g| g.unwrap()).collect();
    assert_eq!(got[17], got[10_000], "a name asked twice gets one key");
    let ids: HashSet<KeyId> = got.iter().map(|g| g.0).collect();
    let bytes: HashSet<[u8; 32]> = got.iter().map(|g| g.1).collect();
    assert_eq!((ids.len(), bytes.len()), (10_000, 10_000));
    assert!(!bytes.contains(&[0u8; 32]));
    for (name, (kid, k)) in names.iter().zip(&got) {
        let (i, key) = v.get_or_create(KeyKind::Subject, name);
        assert_eq!((i, key.expose()), (*kid, k));
    }
    let shards: BTreeSet<u8> = ids.iter().map(|i| i.0[0]).collect();
    assert_eq!(shards.len(), 3, "10,000 keys, 4096 a shard: {shards:?}");
    v.persist().await.unwrap();
    let subject_objects = |all: Vec<(String, Vec<u8>)>| -> BTreeMap<String, Vec<u8>> {
        all.into_iter()
            .filter(|(n, _)| n.starts_with("keys/subject/"))
            .collect()
    };
    let before = subject_objects(all_objects(&a).await);
    let expect: BTreeSet<String> = shards
        .iter()
        .map(|b| format!("keys/subject/{b:02x}.age"))
        .collect();
    assert_eq!(before.keys().cloned().collect::<BTreeSet<_>>(), expect);
    drop(v);

    let mut o = Vault::open(vec![a.clone()], &id, &[]).await.unwrap();
    let more: Vec<String> = (0..100).map(|i| format!("q-{i}")).collect();
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    let mut new_ids = BTreeSet::new();
    o.get_or_create_each(KeyKind::Subject, &more, |_, kid, _| {
        new_ids.insert(kid.0[0]);
    });
    assert_eq!(new_ids.len(), 1, "{new_ids:?}");
    assert!(shards.is_disjoint(&new_ids), "the least filled shard");
    o.persist().await.unwrap();
    let after = subject_objects(all_objects(&a).await);
    assert_eq!(after.len(), 4);
    for (name, bytes) in &before {
        assert_eq!(after.get(name), Some(bytes), "{name} was rewritten");
    }
    drop(o);

    let r = Vault::open(vec![a.clone()], &id, &[]).await.unwrap();
    for (name, (kid, k)) in names.iter().zip(&got) {
        let (i, key) = r.lookup(KeyKind::Subject, name).unwrap();
        assert_eq!((i, key.expose()), (*kid, k));
    }
    for name in &more {
        assert!(r.lookup(KeyKind::Subject, name).is_some());
    }
}

#[tokio::test]
async fn missing_shard_is_repaired_by_next_persist() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let (sid, sk) = v.get_or_create(KeyKind::Subject, "p-1");
    let sk = *sk.expose();
    let (pid, pk) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    let pk = *pk.expose();
    v.persist().await.unwrap();
    drop(v);

    // Location b loses its subject shard and its period shard.
    let shard = format!("keys/subject/{:02x}.age", sid.0[0]);
    std::fs::remove_file(dir.path().join("b").join(&shard)).unwrap();
    std::fs::remove_file(dir.path().join("b/keys/period/all.age")).unwrap();

    let mut o = Vault::open(vec![a.clone(), b.clone()], &id, &[])
        .await
        .unwrap();
    assert!(
        o.is_dirty(),
        "a location lacking entries must be marked for repair"
    );
    assert_eq!(o.key(&sid).unwrap().expose(), &sk);
    assert_eq!(o.key(&pid).unwrap().expose(), &pk);
    o.persist().await.unwrap();
    assert!(!o.is_dirty());
    assert!(dir.path().join("b").join(&shard).exists());

    // Location b alone now holds everything.
    let only_b = Vault::open(vec![b.clone()], &id, &[]).await.unwrap();
    assert!(!only_b.is_dirty());
    assert_eq!(only_b.key(&sid).unwrap().expose(), &sk);
    assert_eq!(only_b.key(&pid).unwrap().expose(), &pk);
    assert_eq!(only_b.lookup(KeyKind::Subject, "p-1").unwrap().0, sid);
}

#[tokio::test]
async fn new_empty_location_is_filled_by_persist() {
    let a = mem_loc("a");
    let c = mem_loc("c");
    let id = service();
    let mut v = Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let (kid, _) = v.get_or_create(KeyKind::Epoch, "identity:2026-Q4");
    v.persist().await.unwrap();
    let mut o = Vault::open(vec![a.clone(), c.clone()], &id, &[])
        .await
        .unwrap();
    assert!(o.is_dirty());
    o.persist().await.unwrap();
    let only_c = Vault::open(vec![c], &id, &[]).await.unwrap();
    assert_eq!(only_c.vault_id(), v.vault_id());
    assert_eq!(
        only_c.key(&kid).unwrap().expose(),
        v.key(&kid).unwrap().expose()
    );
}

#[tokio::test]
async fn open_refuses_locations_of_different_vaults() {
    let a = mem_loc("a");
    let b = mem_loc("b");
    let id = service();
    Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    Vault::create(vec![b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let e = Vault::open(vec![a, b], &id, &[]).await.unwrap_err();
    assert!(matches!(e, VaultError::Mismatch { .. }), "{e}");
}

#[tokio::test]
async fn persist_failure_keeps_entries_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    // A plain file where location b needs its `keys` folder: writes there fail.
    let blocker = dir.path().join("b/keys");
    std::fs::write(&blocker, b"not a folder").unwrap();

    let (kid, k) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    let k = *k.expose();
    let e = v.persist().await.unwrap_err();
    assert!(e.to_string().contains(&b.url), "{e}");
    assert!(!e.to_string().contains(&a.url), "{e}");
    assert!(v.is_dirty());
    // Retry after the fault is gone writes again.
    std::fs::remove_file(&blocker).unwrap();
    v.persist().await.unwrap();
    assert!(!v.is_dirty());
    let only_b = Vault::open(vec![b], &id, &[]).await.unwrap();
    assert_eq!(only_b.key(&kid).unwrap().expose(), &k);
}

#[tokio::test]
async fn unreadable_location_lets_open_succeed_but_persist_fail() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let (kid, _) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    v.persist().await.unwrap();
    // Location b becomes unreadable: its root folder is replaced by a file.
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("b"), b"not a folder").unwrap();

    let mut o = Vault::open(vec![a.clone(), b.clone()], &id, &[])
        .await
        .unwrap();
    assert!(o.key(&kid).is_some());
    o.get_or_create(KeyKind::Period, "consumption:2026-04");
    let e = o.persist().await.unwrap_err();
    assert!(matches!(e, VaultError::NotRead { .. }), "{e}");
    assert!(e.to_string().contains(&b.url), "{e}");
    assert!(o.is_dirty());
}

/// A location that fails part-way through its shards gives nothing: the
/// keys read from it before the failure are not used, nor its tombstones,
/// and persist refuses to write until it is readable.
#[tokio::test]
async fn a_location_failing_mid_read_gives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b_files = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b_files.clone()], &id, &[], "crm")
        .await
        .unwrap();
    // Keys made in four sessions: each session's new subject keys go to
    // a shard of their own (the least filled).
    let mut ids = Vec::new();
    for round in 0..4 {
        for n in 0..16 {
            ids.push(
                v.get_or_create(KeyKind::Subject, &format!("{round}-{n:030x}"))
                    .0,
            );
        }
        v.persist().await.unwrap();
        v = Vault::open(vec![a.clone(), b_files.clone()], &id, &[])
            .await
            .unwrap();
    }
    let (period, _) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    v.persist().await.unwrap();
    let objects = all_objects(&b_files).await;
    let holding: Vec<&String> = objects
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("keys/subject/"))
        .collect();
    assert!(holding.len() > 2, "{holding:?}");
    // b fails on its last subject shard, after the others were read; a
    // loses its subject shards, so the subject keys are only in b.
    let last = holding.iter().max().unwrap().to_string();
    let fault = common::FaultStore::new(b_files.store.clone());
    fault.fail_gets_of(&last);
    let b = VaultLocation {
        url: b_files.url.clone(),
        store: fault.store(),
    };
    for (name, _) in &objects {
        if name.starts_with("keys/subject/") {
            a.store.delete(&ObjPath::from(name.as_str())).await.unwrap();
        }
    }
    let mut o = Vault::open(vec![a.clone(), b.clone()], &id, &[])
        .await
        .unwrap();
    for kid in &ids {
        assert!(
            o.key(kid).is_none(),
            "a key read from the failed location is used"
        );
    }
    assert!(o.key(&period).is_some());
    assert_eq!(o.entries().len(), 1);
    o.get_or_create(KeyKind::Period, "consumption:2026-04");
    let e = o.persist().await.unwrap_err();
    assert!(matches!(e, VaultError::NotRead { .. }), "{e}");
    assert!(e.to_string().contains(&b.url), "{e}");

    // Readable again, b gives every key back.
    fault.clear_faults();
    let o = Vault::open(vec![a, b], &id, &[]).await.unwrap();
    for kid in &ids {
        assert!(o.key(kid).is_some());
    }
}

#[tokio::test]
async fn destroy_removes_key_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = mem_loc("b");
    let locs = [a.clone(), b.clone()];
    let id = service();
    let mut v = Vault::create(locs.to_vec(), &id, &[], "crm").await.unwrap();
    let (gone, gk) = v.get_or_create(KeyKind::Subject, "p-gone");
    let gk = *gk.expose();
    let (kept, kk) = v.get_or_create(KeyKind::Subject, "p-kept");
    let kk = *kk.expose();
    let (_, pk) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    let pk = *pk.expose();
    v.persist().await.unwrap();
    // The search can find keys: before the destroy, it does.
    assert!(!anywhere(&locs, &id, &gk).await.is_empty());

    let r = v.destroy(KeyKind::Subject, "p-gone").await.unwrap();
    assert_eq!(r.key_ids, vec![gone]);
    assert_eq!(r.locations_checked, vec![a.url.clone(), b.url.clone()]);
    assert_eq!(
        r.commitments,
        vec![hex::encode(
            custos::crypto::Key32::from_bytes(gk).commitment()
        )]
    );
    assert!(v.lookup(KeyKind::Subject, "p-gone").is_none());
    assert!(v.key(&gone).is_none());
    assert!(!v.is_dirty());

    let hits = anywhere(&locs, &id, &gk).await;
    assert!(hits.is_empty(), "destroyed key still stored: {hits:?}");
    assert!(anywhere(&locs, &id, b"p-gone").await.is_empty());
    assert!(!anywhere(&locs, &id, &kk).await.is_empty());
    assert!(!anywhere(&locs, &id, &pk).await.is_empty());

    let o = Vault::open(locs.to_vec(), &id, &[]).await.unwrap();
    assert!(o.key(&gone).is_none());
    assert_eq!(o.key(&kept).unwrap().expose(), &kk);

    let e = v.destroy(KeyKind::Subject, "p-gone").await.unwrap_err();
    assert!(matches!(e, VaultError::UnknownKey { .. }), "{e}");
}

#[tokio::test]
async fn location_that_missed_a_destroy_cannot_resurrect_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let (gone, gk) = v.get_or_create(KeyKind::Period, "consumption:2020-01");
    let gk = *gk.expose();
    v.persist().await.unwrap();
    let stale = std::fs::read(dir.path().join("b/keys/period/all.age")).unwrap();
    v.destroy(KeyKind::Period, "consumption:2020-01")
        .await
        .unwrap();
    // Location b comes back from an old copy that still holds the key.
    std::fs::write(dir.path().join("b/keys/period/all.age"), &stale).unwrap();

    let mut o = Vault::open(vec![a.clone(), b.clone()], &id, &[])
        .await
        .unwrap();
    assert!(
        o.key(&gone).is_none(),
        "tombstone must win over a stale copy"
    );
    assert!(o.is_dirty());
    o.persist().await.unwrap();
    let hits = anywhere(&[a, b], &id, &gk).await;
    assert!(hits.is_empty(), "{hits:?}");
}

#[tokio::test]
async fn destroy_retry_after_failed_write_completes() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs_loc(&dir.path().join("a"));
    let b = fs_loc(&dir.path().join("b"));
    let id = service();
    let mut v = Vault::create(vec![a.clone(), b.clone()], &id, &[], "crm")
        .await
        .unwrap();
    let (gone, gk) = v.get_or_create(KeyKind::Epoch, "identity:2019-Q1");
    let gk = *gk.expose();
    v.persist().await.unwrap();
    // Make b's epoch shard unwritable: replace it with a non-empty folder.
    let p = dir.path().join("b/keys/epoch/all.age");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("x"), b"x").unwrap();
    assert!(v.destroy(KeyKind::Epoch, "identity:2019-Q1").await.is_err());
    assert!(v.key(&gone).is_none());
    std::fs::remove_dir_all(&p).unwrap();
    let r = v.destroy(KeyKind::Epoch, "identity:2019-Q1").await.unwrap();
    assert_eq!(r.key_ids, vec![gone]);
    assert!(anywhere(&[a, b], &id, &gk).await.is_empty());
}

#[cfg(unix)]
#[test]
fn key_files_have_strict_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let k = keys::init_keys(&dir.path().join("new/keys")).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&k.identity_path), 0o600);
    assert_eq!(mode(&k.signing_key_path), 0o600);
    assert_eq!(mode(&k.public_key_path), 0o644);
    assert!(k.recipient.starts_with("age1"));
    let text = std::fs::read_to_string(&k.identity_path).unwrap();
    assert!(text.contains("\nAGE-SECRET-KEY-1"));
}

#[test]
fn init_keys_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys::init_keys(dir.path()).unwrap();
    let before: Vec<Vec<u8>> = [&k.identity_path, &k.signing_key_path, &k.public_key_path]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let e = keys::init_keys(dir.path()).unwrap_err();
    assert!(matches!(e, KeysError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("service.age"), "{e}");
    let after: Vec<Vec<u8>> = [&k.identity_path, &k.signing_key_path, &k.public_key_path]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);

    // Only one of the three present: still refused, and nothing else written.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("signing.pub"), b"x").unwrap();
    let e = keys::init_keys(other.path()).unwrap_err();
    assert!(e.to_string().contains("signing.pub"), "{e}");
    assert!(!other.path().join("service.age").exists());
    assert!(!other.path().join("signing.key").exists());
}

#[tokio::test]
async fn service_keys_open_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys::init_keys(&dir.path().join("keys")).unwrap();
    let id = keys::load_vault_keys(&k.identity_path).unwrap();
    assert!(id.can_sign());
    let recovery = keys::parse_recipient(&Identity::generate().to_public().to_string()).unwrap();
    let a = mem_loc("a");
    let v = Vault::create(vec![a.clone()], &id, &[recovery], "crm")
        .await
        .unwrap();
    let again = keys::load_vault_keys(&k.identity_path).unwrap();
    let o = Vault::open(vec![a.clone()], &again, &[]).await.unwrap();
    assert_eq!(o.meta_key().expose(), v.meta_key().expose());
    // The marker lists no secrets.
    let m = object(&a, "custos-vault.json").await;
    assert!(!contains(&m, v.meta_key().expose()));
}

/// A payload followed by its signature by `sk`, as FORMAT.md 7 defines it:
/// ed25519 over the context line and the payload's BLAKE3 hash.
fn signed(sk: &SigningKey, payload: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let mut m = b"custos vault payload\n".to_vec();
    m.extend_from_slice(blake3::hash(payload).as_bytes());
    let mut out = payload.to_vec();
    out.extend_from_slice(&sk.sign(&m).to_bytes());
    out
}

/// Age-encrypts `plain` to `identity` (the vault's own wrapping, forged).
fn age_encrypt(identity: &Identity, plain: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let r = identity.to_public();
    let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = e.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    out
}

#[tokio::test]
async fn locations_that_disagree_on_a_key_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let locs: Vec<VaultLocation> = ["a", "b", "c"]
        .iter()
        .map(|n| fs_loc(&dir.path().join(n)))
        .collect();
    let sk = SigningKey::generate(&mut rand::rngs::OsRng);
    let id = VaultKeys::new(Identity::generate(), sk.clone());
    let mut v = Vault::create(locs.clone(), &id, &[], "crm").await.unwrap();
    let (pid, pk) = v.get_or_create(KeyKind::Period, "consumption:2026-03");
    let pk = *pk.expose();
    v.persist().await.unwrap();
    drop(v);

    // Location c's copy of the key is changed (a validly wrapped shard,
    // signed with the service's key: what two writers could leave).
    let shard = dir.path().join("c/keys/period/all.age");
    let mut plain = age_decrypt(id.identity(), &std::fs::read(&shard).unwrap());
    plain.truncate(plain.len() - 64);
    let at = plain.windows(32).position(|w| w == pk).expect("the key");
    plain[at] ^= 1;
    std::fs::write(&shard, age_encrypt(id.identity(), &signed(&sk, &plain))).unwrap();

    // The error names the location that differs and the first that listed
    // the key, whichever order the policy gives.
    let (a, b, c) = (&locs[0], &locs[1], &locs[2]);
    for (set, url, other) in [
        (vec![a.clone(), b.clone(), c.clone()], &c.url, &a.url),
        (vec![c.clone(), b.clone()], &b.url, &c.url),
    ] {
        match Vault::open(set, &id, &[]).await {
            Err(VaultError::Conflict {
                url: u,
                other: o,
                key_id,
            }) => {
                assert_eq!((&u, &o, key_id), (url, other, pid));
            }
            Err(e) => panic!("expected a conflict, got {e}"),
            Ok(_) => panic!("expected a conflict, the vault opened"),
        }
    }
    // Each alone opens.
    for l in [a, c] {
        Vault::open(vec![l.clone()], &id, &[]).await.unwrap();
    }
}

/// A shard payload as FORMAT.md 7 lays it out, with one period entry and
/// no tombstone (version 1 has no signature; version 2 is then signed).
fn period_payload(
    version: u16,
    vault_id: &[u8],
    name: &str,
    created: i64,
    key: &[u8; 32],
) -> Vec<u8> {
    let object = "keys/period/all.age";
    let mut b = b"CUSTOSVK".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(vault_id);
    b.extend_from_slice(&(object.len() as u16).to_le_bytes());
    b.extend_from_slice(object.as_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.push(2);
    b.extend_from_slice(&[0x5a; 16]);
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&created.to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// The vault id a location's plaintext marker gives away.
async fn marker_vault_id(loc: &VaultLocation) -> Vec<u8> {
    let m = object(loc, "custos-vault.json").await;
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    hex::decode(v["vault_id"].as_str().unwrap()).unwrap()
}

/// Someone who can write one vault location and knows the service's
/// public recipient plants a key for next month's unit, dated early so
/// that a lookup would prefer it, and a tombstone for a live key. Neither
/// is taken: unsigned or signed with any other key, the planted object is
/// refused by name, nothing of it is used, and once it is replaced from
/// the other location the vault opens as the service left it.
#[tokio::test]
async fn planted_keys_and_tombstones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fs_loc(&dir.path().join("a")), fs_loc(&dir.path().join("b")));
    let locs = vec![a.clone(), b.clone()];
    let id = service();
    let mut v = Vault::create(locs.clone(), &id, &[], "crm").await.unwrap();
    let (kid, _) = v.get_or_create(KeyKind::Period, "consumption:2026-04");
    let (sid, _) = v.get_or_create(KeyKind::Subject, "p-42");
    v.persist().await.unwrap();
    drop(v);

    let vault_id = marker_vault_id(&b).await;
    let wrap_to_service = |plain: &[u8]| age_encrypt(id.identity(), plain);
    let planted_key = [0x77u8; 32];
    let attacker = SigningKey::generate(&mut rand::rngs::OsRng);
    let period = dir.path().join("b/keys/period/all.age");
    let good_period = std::fs::read(&period).unwrap();
    let v1 = period_payload(1, &vault_id, "consumption:2026-05", 0, &planted_key);
    let v2 = signed(
        &attacker,
        &period_payload(2, &vault_id, "consumption:2026-05", 0, &planted_key),
    );
    for (plain, unsigned) in [(v1, true), (v2, false)] {
        std::fs::write(&period, wrap_to_service(&plain)).unwrap();
        let e = Vault::open(locs.clone(), &id, &[]).await.unwrap_err();
        match (&e, unsigned) {
            (VaultError::Unsigned { url, object }, true)
            | (VaultError::BadSignature { url, object }, false) => {
                assert_eq!(
                    (url.as_str(), object.as_str()),
                    (b.url.as_str(), "keys/period/all.age")
                );
            }
            _ => panic!("expected a refusal of the planted shard, got {e}"),
        }
        let msg = e.to_string();
        assert!(!msg.contains("consumption:2026-05"), "{msg}");
        // The repository keys alone do not read the period shard.
        Vault::open_repository_keys(&locs, &id).await.unwrap();
    }

    // A tombstone for the live subject key, signed by another key.
    let shard = format!("b/keys/subject/{:02x}.age", sid.0[0]);
    let good_subject = std::fs::read(dir.path().join(&shard)).unwrap();
    let object = format!("keys/subject/{:02x}.age", sid.0[0]);
    let mut t = b"CUSTOSVK\x02\x00".to_vec();
    t.extend_from_slice(&vault_id);
    t.extend_from_slice(&(object.len() as u16).to_le_bytes());
    t.extend_from_slice(object.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&sid.0);
    t.extend_from_slice(&0i64.to_le_bytes());
    std::fs::write(&period, &good_period).unwrap();
    std::fs::write(
        dir.path().join(&shard),
        wrap_to_service(&signed(&attacker, &t)),
    )
    .unwrap();
    let e = Vault::open(locs.clone(), &id, &[]).await.unwrap_err();
    assert!(
        matches!(&e, VaultError::BadSignature { object: o, .. } if *o == object),
        "{e}"
    );

    // Replaced from the other location, the vault is as the service left it.
    std::fs::write(dir.path().join(&shard), &good_subject).unwrap();
    let o = Vault::open(locs.clone(), &id, &[]).await.unwrap();
    assert!(o.lookup(KeyKind::Period, "consumption:2026-05").is_none());
    assert_eq!(
        o.lookup(KeyKind::Period, "consumption:2026-04").unwrap().0,
        kid
    );
    assert!(o.key(&sid).is_some());
    assert!(!o.is_dirty());
}

/// A shred record is signed like a shard: a ledger planted as plain JSON
/// (format 1) or signed by another key is refused by name.
#[tokio::test]
async fn a_planted_ledger_is_refused() {
    let a = mem_loc("a");
    let id = service();
    let v = Vault::create(vec![a.clone()], &id, &[], "crm")
        .await
        .unwrap();
    v.write_record("shred/ledger.age", b"{\"seq\":1}")
        .await
        .unwrap();
    let back = v.read_record("shred/ledger.age").await.unwrap();
    assert_eq!(&back[0].1.as_ref().unwrap()[..], b"{\"seq\":1}");
    let plant = |plain: Vec<u8>| age_encrypt(id.identity(), &plain);
    let forged =
        b"{\"format\":\"custos-shred-ledger\",\"version\":2,\"seq\":99,\"holds\":[]}".to_vec();
    let mut framed = b"CUSTOSVR\x02\x00".to_vec();
    framed.extend_from_slice(&marker_vault_id(&a).await);
    framed.extend_from_slice(&16u16.to_le_bytes());
    framed.extend_from_slice(b"shred/ledger.age");
    framed.extend_from_slice(&forged);
    let attacker = SigningKey::generate(&mut rand::rngs::OsRng);
    for (plain, unsigned) in [(forged.clone(), true), (signed(&attacker, &framed), false)] {
        a.store
            .put(&ObjPath::from("shred/ledger.age"), plant(plain).into())
            .await
            .unwrap();
        let e = v.read_record("shred/ledger.age").await.unwrap_err();
        assert!(
            matches!(
                (&e, unsigned),
                (VaultError::Unsigned { .. }, true) | (VaultError::BadSignature { .. }, false)
            ),
            "{e}"
        );
        // A job opening the vault reads the ledger's fences: refused too.
        assert!(Vault::open(vec![a.clone()], &id, &[]).await.is_err());
    }
}
