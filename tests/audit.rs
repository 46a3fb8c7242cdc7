//! The audit trail through the binary: commands append entries, `audit
//! verify` names a tampered entry, `audit show` filters, checkpoints are
//! signed and checked, and the log is copied to the primary target.

mod common;

use common::{custos, run, run_fail, stderr, stdout};
use serde_json::Value;
use std::path::Path;

fn cmd(state: &Path) -> std::process::Command {
    let mut c = custos();
    c.arg("--state-dir")
        .arg(state)
        .env("CUSTOS_ACTOR", "tester");
    c
}

fn show(state: &Path, args: &[&str]) -> Vec<Value> {
    let out = run(cmd(state).args(["audit", "show", "--json"]).args(args));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn setup(root: &Path) -> std::path::PathBuf {
    let state = root.join("state");
    run(cmd(&state)
        .args(["keys", "init", "--out"])
        .arg(root.join("keys")));
    let policy = root.join("crm.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n\n[keys]\nidentity = \"{}\"\nrecipients = []\nvault = [\"{}\"]\n\n[[targets]]\nname = \"primary\"\nurl = \"{}\"\n",
            root.join("crm.db").display(),
            root.join("keys/service.age").display(),
            common::file_url(&root.join("vault")),
            common::file_url(&root.join("primary")),
        ),
    )
    .unwrap();
    run(cmd(&state).args(["init", "--policy"]).arg(&policy));
    for (u, r) in [("ann", "auditor"), ("bob", "operator")] {
        run(cmd(&state).args(["users", "add", u, "--role", r]));
    }
    policy
}

#[test]
fn one_byte_tamper_is_named_by_audit_verify() {
    let d = common::tempdir();
    setup(d.path());
    let state = d.path().join("state");
    let es = show(&state, &[]);
    let ops: Vec<&str> = es.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["keys.init", "init", "users.add", "users.add"]);
    assert!(es.iter().all(|e| e["actor"] == "tester"));
    run(cmd(&state).args(["audit", "verify"]));

    // Change one byte of entry 3 (the first users.add).
    let log = state.join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let line3 = text.lines().nth(2).unwrap();
    let at = text.find(line3).unwrap() + line3.find("user:ann").unwrap() + 5;
    let mut bytes = text.into_bytes();
    bytes[at] = b'e'; // user:ann -> user:enn
    std::fs::write(&log, bytes).unwrap();

    let out = run_fail(cmd(&state).args(["audit", "verify"]));
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("line 3") && err.contains("seq 3"), "{err}");
    let out = run_fail(cmd(&state).args(["audit", "verify", "--json"]));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["verification"]["first_break"]["seq"], 3);
    assert_eq!(v["verification"]["entries"], 2, "entries before the break");
}

#[test]
fn show_filters_checkpoint_and_replication() {
    let d = common::tempdir();
    let policy = setup(d.path());
    let state = d.path().join("state");

    assert_eq!(show(&state, &["--op", "users"]).len(), 2);
    assert_eq!(
        show(&state, &["--op", "init"]).len(),
        1,
        "exact op, not a prefix match"
    );
    assert_eq!(
        show(&state, &["--actor", "tester", "--since", "1h"]).len(),
        4
    );
    assert!(show(&state, &["--actor", "nobody"]).is_empty());
    assert!(show(&state, &["--since", "2999-01-01"]).is_empty());
    let out = run_fail(cmd(&state).args(["audit", "show", "--since", "soon"]));
    assert!(stderr(&out).contains("--since"));

    // A restore outside a drill is flagged (it fails here: there is no
    // snapshot, and the failure is recorded too).
    run_fail(
        cmd(&state)
            .args(["restore", "--policy"])
            .arg(&policy)
            .arg("--to")
            .arg(d.path().join("out.db")),
    );
    let r = show(&state, &["--op", "restore"]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["outcome"], "failed");
    assert_eq!(r[0]["flags"][0], "restore-outside-drill");

    // Checkpoint, then verify the signature with the policy's public key.
    run(cmd(&state)
        .args(["audit", "checkpoint", "--policy"])
        .arg(&policy));
    let out = run(cmd(&state)
        .args(["audit", "verify", "--json", "--policy"])
        .arg(&policy));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["signatures_checked"], true);
    assert_eq!(v["verification"]["checkpoints_verified"], 1);
    assert_eq!(v["verification"]["unsigned_tail"], 0);

    // Another key does not verify the checkpoint.
    run(cmd(&state)
        .args(["keys", "init", "--out"])
        .arg(d.path().join("other")));
    let out = run_fail(
        cmd(&state)
            .args(["audit", "verify", "--public-key"])
            .arg(d.path().join("other/signing.pub")),
    );
    assert!(stderr(&out).contains("another key"), "{}", stderr(&out));

    // Replication: the whole log as one segment, then only what is new.
    let out = run(cmd(&state)
        .args(["audit", "replicate", "--json", "--policy"])
        .arg(&policy));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let n = r["entries"].as_u64().unwrap();
    assert!(n >= 7, "{r}");
    let seg = d
        .path()
        .join("primary")
        .join(r["segment"].as_str().unwrap());
    let local = std::fs::read_to_string(state.join("audit/audit.jsonl")).unwrap();
    assert!(local.starts_with(&std::fs::read_to_string(&seg).unwrap()));
    let out = run(cmd(&state)
        .args(["audit", "replicate", "--json", "--policy"])
        .arg(&policy));
    let r2: Value = serde_json::from_str(&stdout(&out)).unwrap();
    // The first replicate run itself was not in the log when it copied it.
    assert!(r2["entries"].as_u64().unwrap() <= 1, "{r2}");
    let segs = std::fs::read_dir(d.path().join("primary/audit"))
        .unwrap()
        .count();
    assert!(segs >= 1);
}

#[test]
fn users_commands_and_access_review() {
    let d = common::tempdir();
    let state = d.path().join("state");
    let out = run(cmd(&state).args(["users", "add", "ann", "--role", "auditor", "--json"]));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("cst_"));
    let file = std::fs::read_to_string(state.join("users.json")).unwrap();
    assert!(!file.contains(&token), "tokens are stored only as hashes");
    let out = run_fail(cmd(&state).args(["users", "add", "bob", "--role", "root"]));
    assert!(stderr(&out).contains("not a role"));
    let out = run(cmd(&state).args(["users", "rotate-token", "ann", "--json"]));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_ne!(v["token"].as_str().unwrap(), token);
    let out = run(cmd(&state).args(["users", "review", "--json"]));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["users"][0]["name"], "ann");
    assert_eq!(v["users"][0]["last_used"], Value::Null);
    run(cmd(&state).args(["users", "remove", "ann"]));
    let out = run(cmd(&state).args(["users", "list", "--json"]));
    assert_eq!(stdout(&out).trim(), "[]");
    let ops: Vec<String> = show(&state, &["--op", "users"])
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["op"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "users.add:ok",
            "users.add:failed",
            "users.rotate-token:ok",
            "users.review:ok",
            "users.remove:ok"
        ]
    );
}
