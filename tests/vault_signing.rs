//! Upgrading a key vault written before vault objects were signed, end to
//! end through the binary: the vault and repository in
//! `tests/fixtures/vault-v1` were written by the previous format (see its
//! README). Until `custos keys sign-vault` signs it, every job refuses it
//! and changes nothing; after, every job reads it, the old snapshot
//! restores row by row, and an unsigned object put back is refused by name.

mod common;

#[path = "common/roundtrip_util.rs"]
mod util;

use common::{
    age_decrypt, copy_tree, custos, file_url, rows, run, run_fail, stderr, stdout, tempdir,
};
use custos::repo::marker::FORMAT_VERSION;
use rusqlite::Connection;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use util::all_files;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault-v1")
}

/// The fixture copied into `d`, with its policy.
fn setup(d: &Path) -> PathBuf {
    copy_tree(&fixture(), d);
    use std::os::unix::fs::PermissionsExt;
    for f in ["service.age", "signing.key"] {
        std::fs::set_permissions(
            d.join("keys").join(f),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n\n\
             [[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n\n\
             [[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nsubject = \"customer_id\"\n\
             period = {{ column = \"started_at\", every = \"month\" }}\n\n\
             [keys]\nidentity = \"{}\"\nrecipients = []\nvault = [\"{}\"]\n\n\
             [[targets]]\nname = \"primary\"\nurl = \"{}\"\n",
            d.join("crm.db").display(),
            d.join("keys/service.age").display(),
            file_url(&d.join("vault")),
            file_url(&d.join("target")),
        ),
    )
    .unwrap();
    policy
}

/// The repository marker's format version.
fn marker_version(d: &Path) -> u64 {
    common::repo_marker(&d.join("target"))["version"]
        .as_u64()
        .unwrap()
}

/// The versions of the packs on the target (each pack's ninth byte).
fn pack_versions(d: &Path) -> std::collections::BTreeSet<u8> {
    all_files(&d.join("target/data"))
        .into_iter()
        .map(|(_, bytes)| bytes[8])
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_same_rows(a: &Path, b: &Path) {
    for t in ["customers", "cdrs"] {
        let (x, y) = (rows(a, t, "1"), rows(b, t, "1"));
        assert!(!x.is_empty(), "{t} has rows");
        assert_eq!(x, y, "table {t}");
    }
}

/// The exit code and stderr of a command expected to fail.
fn fails(cmd: &mut std::process::Command) -> (i32, String) {
    let out = run_fail(cmd);
    (out.status.code().unwrap(), stderr(&out))
}

/// Every `.age` object of the vault is a version 2 payload whose last 64
/// bytes are the service's signature (FORMAT.md 7), checked here with
/// `signing.pub` alone.
fn assert_all_signed(d: &Path) {
    let identity = custos::keys::load_identity(&d.join("keys/service.age")).unwrap();
    let public = custos::keys::load_public_key(&d.join("keys/signing.pub")).unwrap();
    let mut n = 0;
    for (path, bytes) in all_files(&d.join("vault")) {
        let name = path.display();
        if path.extension().is_none_or(|e| e != "age") {
            continue;
        }
        let plain = age_decrypt(&identity, &bytes);
        assert_eq!(&plain[8..10], &[2, 0], "{name}: payload version 2");
        let (payload, sig) = plain.split_at(plain.len() - 64);
        let mut m = b"custos vault payload\n".to_vec();
        m.extend_from_slice(blake3::hash(payload).as_bytes());
        public
            .verify_strict(
                &m,
                &ed25519_dalek::Signature::from_bytes(sig.try_into().unwrap()),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
    }
    assert!(n >= 5, "{n} vault objects");
}

#[test]
fn an_unsigned_vault_is_refused_until_signed_once_then_reads_and_restores() {
    let tmp = tempdir();
    let d = tmp.path();
    let policy = setup(d);
    let pol = p(&policy);
    let before = (all_files(&d.join("vault")), all_files(&d.join("target")));

    // Every job refuses the unsigned vault, names the object and the way
    // out, and writes nothing.
    let (code, err) = fails(custos().args(["snapshots", "--policy", pol]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("meta.age"), "{err}");
    assert!(err.contains("not signed"), "{err}");
    assert!(err.contains("custos keys sign-vault"), "{err}");
    let (code, err) = fails(custos().args(["backup", "--policy", pol]));
    assert_eq!(code, 3, "{err}");
    let out = d.join("out.db");
    let (code, _) = fails(custos().args(["restore", "--policy", pol, "--to", p(&out)]));
    assert_eq!(code, 3);
    assert!(!out.exists());
    assert_eq!(
        (all_files(&d.join("vault")), all_files(&d.join("target"))),
        before
    );

    // Signed once, as it stands; the audit trail records it.
    let state = d.join("state");
    let r = run(custos().args(["--state-dir", p(&state)]).args([
        "keys",
        "sign-vault",
        "--policy",
        pol,
        "--json",
    ]));
    let r: Json = serde_json::from_slice(&r.stdout).unwrap();
    let signed: Vec<&str> = r["signed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for o in ["meta.age", "keys/period/all.age", "shred/ledger.age"] {
        assert!(signed.iter().any(|s| s.ends_with(o)), "{o} in {signed:?}");
    }
    // Twelve customers, one of them shredded: eleven subject keys and the
    // shredded one's tombstone; three months of call records.
    assert_eq!(r["subject_keys"], 11, "{r}");
    assert_eq!(r["period_keys"], 3, "{r}");
    assert_eq!(r["tombstones"], 1, "{r}");
    assert_all_signed(d);
    let audit = run(custos().args(["--state-dir", p(&state)]).args([
        "audit",
        "show",
        "--op",
        "keys.sign-vault",
        "--json",
    ]));
    let audit = stdout(&audit);
    assert!(audit.contains("\"outcome\":\"ok\""), "{audit}");
    assert!(
        audit.contains(&format!("{} unsigned objects signed", signed.len())),
        "{audit}"
    );
    // The target is untouched (the backup lock was taken and released).
    assert_eq!(all_files(&d.join("target")), before.1);

    // The old snapshot restores and equals the source row by row.
    run(custos().args(["restore", "--policy", pol, "--to", p(&out)]));
    assert_same_rows(&d.join("crm.db"), &out);
    run(custos().args(["check", "--policy", pol, "--read-data"]));

    // A new backup after a change, restored.
    Connection::open(d.join("crm.db"))
        .unwrap()
        .execute(
            "INSERT INTO cdrs (customer_id, started_at, seconds) VALUES (5, '2026-11-03 09:00:00', 61)",
            [],
        )
        .unwrap();
    // The fixture's repository is of format version 1 (44-byte index
    // entries, 32-byte chunk ids); reading it changed nothing, and the
    // first backup raises its marker to this build's format before it
    // writes packs of version 2 beside the old ones (their small chunks
    // LZ4 blocks, the old ones zstd frames). The window it reads again
    // holds groups that did not change: their short ids must not share an
    // index key with their version 1 chunks, or the backup would take
    // those (sealed under another nonce) for its own and the restore and
    // check below fail.
    assert_eq!(marker_version(d), 1);
    assert_eq!(pack_versions(d), [1].into());
    run(custos().args(["backup", "--policy", pol]));
    assert_eq!(marker_version(d), u64::from(FORMAT_VERSION));
    assert_eq!(pack_versions(d), [1, 2].into());
    let out2 = d.join("out2.db");
    run(custos().args(["restore", "--policy", pol, "--to", p(&out2)]));
    assert_same_rows(&d.join("crm.db"), &out2);
    run(custos().args(["check", "--policy", pol, "--read-data"]));
    assert_all_signed(d);

    // Again: nothing to do.
    let again = run(custos().args(["keys", "sign-vault", "--policy", pol]));
    assert!(
        stdout(&again).contains("signed already: nothing to do"),
        "{}",
        stdout(&again)
    );

    // The fixture's unsigned period shard put back (a planted or rolled
    // back object) is refused by every job, and sign-vault will not sign it.
    let signed_vault = all_files(&d.join("vault"));
    std::fs::copy(
        fixture().join("vault/keys/period/all.age"),
        d.join("vault/keys/period/all.age"),
    )
    .unwrap();
    let (code, err) = fails(custos().args(["backup", "--policy", pol]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("keys/period/all.age"), "{err}");
    let (code, err) = fails(custos().args(["keys", "sign-vault", "--policy", pol]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("the vault already is"), "{err}");
    let period = d.join("vault/keys/period/all.age");
    let now = all_files(&d.join("vault"));
    assert_eq!(now.len(), signed_vault.len());
    let differ: Vec<_> = now
        .into_iter()
        .zip(&signed_vault)
        .filter(|(now, before)| now != *before)
        .map(|(now, _)| now.0)
        .collect();
    assert_eq!(differ, [period], "nothing else changed");
}

#[test]
fn with_the_public_key_alone_the_vault_is_read_not_written() {
    let tmp = tempdir();
    let d = tmp.path();
    let policy = setup(d);
    let pol = p(&policy);
    run(custos().args(["keys", "sign-vault", "--policy", pol]));

    // signing.key moved away, signing.pub kept: a recovery reader.
    std::fs::rename(d.join("keys/signing.key"), d.join("signing.key.away")).unwrap();
    let out = d.join("out.db");
    run(custos().args(["restore", "--policy", pol, "--to", p(&out)]));
    assert_same_rows(&d.join("crm.db"), &out);
    let before = (all_files(&d.join("vault")), all_files(&d.join("target")));
    let (code, err) = fails(custos().args(["backup", "--policy", pol]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("public key alone"), "{err}");
    let (code, _) = fails(custos().args(["keys", "sign-vault", "--policy", pol]));
    assert_eq!(code, 2);
    assert_eq!(
        (all_files(&d.join("vault")), all_files(&d.join("target"))),
        before
    );

    // Neither file: the signatures cannot be checked, and the error says
    // which identity and what to put beside it.
    std::fs::remove_file(d.join("keys/signing.pub")).unwrap();
    let (code, err) = fails(custos().args(["snapshots", "--policy", pol]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("signing.pub"), "{err}");
    assert!(err.contains("service.age"), "{err}");
}
