//! A key vault location whose S3 bucket keeps object versions: a key a
//! shred destroys outlives it in earlier versions of the vault's objects,
//! which the object store interface can neither list nor delete. custos
//! asks each S3 vault location (`GetBucketVersioning`, signed), warns at
//! `init` and in `check`, and says so in every destruction certificate.
//!
//! Against moto (the S3 server that keeps bucket versioning; installed by
//! `scripts/test.sh`), through the binary as an operator runs it; skipped
//! loudly when moto is not installed.

mod common;
#[path = "common/roundtrip_util.rs"]
mod util;

use common::{custos, run, start_moto, stderr, stdout};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Makes `bucket` on moto and sets its versioning to each of `status` in
/// turn (none: never set).
fn bucket(endpoint: &str, bucket: &str, status: &[&str]) {
    let st = Command::new("curl")
        .args(["-s", "-f", "-X", "PUT", &format!("{endpoint}/{bucket}")])
        .status()
        .unwrap();
    assert!(st.success(), "cannot create bucket {bucket}");
    for s in status {
        let body = format!(
            r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>{s}</Status></VersioningConfiguration>"#
        );
        let st = Command::new("curl")
            .args([
                "-s",
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/xml",
            ])
            .args(["--data-binary", &body])
            .arg(format!("{endpoint}/{bucket}?versioning"))
            .status()
            .unwrap();
        assert!(st.success(), "cannot set versioning {s} on {bucket}");
    }
}

fn cli(dir: &Path, endpoint: &str) -> Command {
    let mut c = custos();
    c.env("CUSTOS_STATE_DIR", dir.join("state"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing-secret-0123456789")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
    c
}

#[test]
fn a_vault_bucket_keeping_versions_is_named_at_init_and_in_the_certificate() {
    let Some(moto) = start_moto() else {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED a_vault_bucket_keeping_versions_is_named_at_init_and_in_the_certificate:\n\
             moto is not installed (scripts/test.sh installs it)\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    };
    let ep = moto.endpoint.clone();
    bucket(&ep, "vault-plain", &[]);
    bucket(&ep, "vault-versioned", &["Enabled"]);
    bucket(&ep, "vault-suspended", &["Enabled", "Suspended"]);

    let d = common::tempdir();
    let dir = d.path();
    let db = dir.join("crm.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO customers VALUES (1, 'ada'), (2, 'bob'), (3, 'cy');",
        )
        .unwrap();
    }
    run(cli(dir, &ep)
        .args(["keys", "init", "--out"])
        .arg(dir.join("keys")));
    let policy = dir.join("crm.toml");
    let vaults = [
        "s3://vault-plain/crm",
        "s3://vault-versioned/crm",
        "s3://vault-suspended/crm",
    ]
    .map(String::from)
    .into_iter()
    .chain([common::file_url(&dir.join("vault-folder"))])
    .collect::<Vec<_>>();
    let text = format!(
        "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = {}\n\n\
         [[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n{}\n\
         [s3]\nendpoint = \"{ep}\"\nregion = \"us-east-1\"\nallow_http = true\n",
        util::toml_str(&db),
        util::keys_and_targets(
            &dir.join("keys").join("service.age"),
            &vaults,
            &[("primary", common::file_url(&dir.join("target")), false)]
        ),
    );
    std::fs::write(&policy, text).unwrap();

    // init warns about the two buckets that keep versions, and only them.
    let out = run(cli(dir, &ep)
        .args(["init", "--json", "--policy"])
        .arg(&policy));
    let warned: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("warning: key vault location"))
        .map(str::to_string)
        .collect();
    assert_eq!(warned.len(), 2, "{}", stderr(&out));
    assert!(warned[0].contains("s3://vault-versioned/crm") && warned[0].contains("enabled"));
    assert!(warned[1].contains("s3://vault-suspended/crm") && warned[1].contains("suspended"));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let keeping: Vec<&str> = report["vault_keeps_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["location"].as_str().unwrap())
        .collect();
    assert_eq!(
        keeping,
        ["s3://vault-versioned/crm", "s3://vault-suspended/crm"]
    );

    // `check` says so too, as a warning (the check still passes), since a
    // bucket's setting can change after init.
    run(cli(dir, &ep).args(["backup", "--policy"]).arg(&policy));
    let out = run(cli(dir, &ep)
        .args(["check", "--json", "--policy"])
        .arg(&policy));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let warned: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "warning")
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    assert_eq!(
        warned,
        [
            "vault:s3://vault-versioned/crm",
            "vault:s3://vault-suspended/crm"
        ],
        "{report}"
    );

    // A shred still destroys the key; its certificate says what each
    // location answered and that earlier versions may hold the key.
    run(cli(dir, &ep)
        .args(["shred", "--policy"])
        .arg(&policy)
        .args(["--subject", "2", "--reason", "erasure request", "--now"]));
    let certs: Vec<_> = std::fs::read_dir(dir.join("state/certificates/crm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(certs.len(), 1, "{certs:?}");
    let cert: Value = serde_json::from_str(&std::fs::read_to_string(&certs[0]).unwrap()).unwrap();
    let ver = &cert["body"]["verification"];
    let asked: Vec<(String, String)> = ver["vault_versioning"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["location"].as_str().unwrap().to_string(),
                v["versioning"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(asked[0], ("s3://vault-plain/crm".into(), "off".into()));
    assert_eq!(
        asked[1],
        ("s3://vault-versioned/crm".into(), "enabled".into())
    );
    assert_eq!(
        asked[2],
        ("s3://vault-suspended/crm".into(), "suspended".into())
    );
    assert!(asked[3].1.starts_with("not asked"), "{asked:?}");
    let residual = ver["key_residual"].as_str().unwrap();
    assert!(
        residual.starts_with("Earlier versions of vault objects may still hold the key")
            && residual.contains("s3://vault-versioned/crm, s3://vault-suspended/crm")
            && !residual.contains("vault-plain"),
        "{residual}"
    );
    // The certificate still verifies, and its text shows both.
    let id = cert["body"]["id"].as_str().unwrap();
    let shown = stdout(&run(cli(dir, &ep).args(["certificates", "show", id])));
    assert!(
        shown.contains("s3://vault-versioned/crm: enabled")
            && shown.contains("Residual key copies"),
        "{shown}"
    );
    run(cli(dir, &ep)
        .args(["certificates", "verify", id, "--policy"])
        .arg(&policy));
    // What it says is true: the bucket that keeps versions still holds an
    // earlier version of a vault object (moto lists them).
    let versions = Command::new("curl")
        .args(["-s", "-f"])
        .arg(format!("{ep}/vault-versioned?versions"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&versions.stdout);
    assert!(
        listing.matches("<IsLatest>false</IsLatest>").count() >= 1,
        "{listing}"
    );
}
