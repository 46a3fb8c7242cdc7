//! `policy check DIR`: every problem of a folder of policies, each naming
//! the file, line and key; one test per class of mistake.

mod common;

use custos::policy::{check_dir, PolicyError};
use std::path::{Path, PathBuf};

const RECIPIENT: &str = "age1jd62egkwa5z34vefwl5r0f4unyna4gew9ezm3se7yphp0dpfjanschuhak";

/// A valid policy named `name` backing up `db` to `target`.
fn policy(name: &str, db: &str, target: &str, extra: &str) -> String {
    format!(
        r#"[policy]
name = "{name}"

[store]
kind = "sqlite"
path = "{db}"

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[keys]
identity = "service.age"
recipients = ["{RECIPIENT}"]
vault = ["file:///var/lib/custos/vault/{name}"]

[[targets]]
name = "primary"
url = "{target}"
{extra}"#
    )
}

fn folder(files: &[(&str, String)]) -> tempfile::TempDir {
    let d = common::tempdir();
    for (n, text) in files {
        std::fs::write(d.path().join(n), text).unwrap();
    }
    d
}

/// Checks the folder and returns its only problem.
fn only_problem(d: &Path) -> PolicyError {
    let r = check_dir(d, true).unwrap();
    assert_eq!(
        r.problems.len(),
        1,
        "expected one problem: {:#?}",
        r.problems
    );
    r.problems[0].clone()
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

fn assert_placed(e: &PolicyError, file: &Path, line: usize, key: &str) {
    let msg = e.to_string();
    assert_eq!(e.file, file, "{msg}");
    assert_eq!(e.line, line, "{msg}");
    assert_eq!(e.key, key, "{msg}");
    assert!(
        msg.starts_with(&format!("{}:{line}:", file.display())),
        "{msg}"
    );
    assert!(msg.contains(&format!("`{key}`")), "{msg}");
}

/// The only problem of one valid policy with `extra` appended, placed on
/// the first line containing `needle` and under `key`.
fn placed_problem(extra: &str, needle: &str, key: &str) -> PolicyError {
    let text = policy("crm", "crm.db", "file:///srv/b/crm", extra);
    let d = folder(&[("crm.toml", text.clone())]);
    let e = only_problem(d.path());
    assert_placed(&e, &d.path().join("crm.toml"), line_of(&text, needle), key);
    e
}

#[test]
fn unknown_key() {
    let e = placed_problem(
        "\n[schedule]\nbakup = \"0 0 2 * * *\"\n",
        "bakup",
        "schedule.bakup",
    );
    assert!(e.message.contains("unknown key `bakup`"), "{e}");
}

#[test]
fn bad_cron() {
    let e = placed_problem(
        "\n[schedule]\nbackup = \"0 2 * * *\"\n",
        "backup =",
        "schedule.backup",
    );
    assert!(e.message.contains("did you mean `0 0 2 * * *`"), "{e}");
}

#[test]
fn bad_duration() {
    let e = placed_problem("\n[drill]\nrto = \"half an hour\"\n", "rto", "drill.rto");
    assert!(e.message.contains("not a duration"), "{e}");
}

#[test]
fn resources_out_of_range_or_without_a_unit() {
    // Each mistake alone, placed on its line and key, saying why.
    for (extra, key, needle, says) in [
        (
            "threads = 0",
            "resources.threads",
            "threads",
            "from 1 to 256",
        ),
        (
            "buffer_memory = \"256\"",
            "resources.buffer_memory",
            "buffer_memory",
            "has no unit",
        ),
        (
            "buffer_memory = \"256MB\"",
            "resources.buffer_memory",
            "buffer_memory",
            "unknown unit `MB`",
        ),
        (
            "buffer_memory = \"8MiB\"",
            "resources.buffer_memory",
            "buffer_memory",
            "from 32MiB to 16GiB",
        ),
    ] {
        let e = placed_problem(&format!("\n[resources]\n{extra}\n"), needle, key);
        assert!(e.message.contains(says), "{extra}: {e}");
    }
    // A section naming a setting custos does not have.
    let e = placed_problem(
        "\n[resources]\nmemory = \"1GiB\"\n",
        "memory =",
        "resources.memory",
    );
    assert!(e.message.contains("unknown key `memory`"), "{e}");
}

#[test]
fn resources_are_read_with_their_defaults() {
    let dir = common::tempdir();
    let file = dir.path().join("crm.toml");
    let read = |extra: &str| {
        let text = policy("crm", "crm.db", "file:///srv/b/crm", extra);
        custos::policy::Policy::from_str(&text, &file)
            .unwrap()
            .resources
    };
    let r = read("");
    assert_eq!(r.threads, None);
    assert_eq!(r.buffer_memory, 256 << 20);
    assert!(r.threads() >= 1);
    // The defaults are the budgets custos always had.
    assert_eq!(
        (r.eighth(), r.restore_packs(), r.sort_run_bytes()),
        (32 << 20, 8, 16 << 20)
    );
    assert_eq!(r.restore_cache_kib(), 64 << 10);
    assert_eq!(r.check_batch_chunks(), 1 << 17);
    let r = read("\n[resources]\nthreads = 3\nbuffer_memory = \"1GiB\"\n");
    assert_eq!((r.threads, r.threads()), (Some(3), 3));
    assert_eq!(r.buffer_memory, 1 << 30);
    assert_eq!((r.eighth(), r.restore_packs()), (128 << 20, 32));
    // The least: packs are never fewer than two.
    let r = read("\n[resources]\nbuffer_memory = \"32MiB\"\n");
    assert_eq!((r.eighth(), r.restore_packs()), (4 << 20, 2));
}

#[test]
fn catch_up_must_be_a_boolean() {
    placed_problem(
        "\n[schedule]\ncatch_up = \"yes\"\n",
        "catch_up",
        "schedule.catch_up",
    );
}

#[test]
fn duplicate_policy_names_across_files() {
    let a = policy("crm", "a.db", "file:///srv/b/a", "");
    let b = policy("crm", "b.db", "file:///srv/b/b", "");
    let d = folder(&[("a.toml", a), ("b.toml", b.clone())]);
    let e = only_problem(d.path());
    assert_placed(
        &e,
        &d.path().join("b.toml"),
        line_of(&b, "name = \"crm\""),
        "policy.name",
    );
    assert!(e.message.contains("a.toml"), "names the other file: {e}");
}

#[test]
fn two_policies_sharing_a_target() {
    let a = policy("crm", "a.db", "file:///srv/b/shared", "");
    let b = policy("billing", "b.db", "file:///srv/b/shared/billing", "");
    let d = folder(&[("a.toml", a), ("b.toml", b.clone())]);
    let e = only_problem(d.path());
    assert_placed(
        &e,
        &d.path().join("b.toml"),
        line_of(&b, "url = \"file:///srv/b/shared/billing"),
        "targets[0].url",
    );
    assert!(e.message.contains("policy `crm`"), "{e}");
}

#[test]
fn a_table_listed_twice() {
    let extra = "\n[[store.tables]]\nname = \"customers\"\nclass = \"business\"\n";
    // Tables must come before [keys] in this helper's layout: insert after the first table.
    let text = policy("crm", "crm.db", "file:///srv/b/crm", "").replacen(
        "\n[keys]",
        &format!("{extra}\n[keys]"),
        1,
    );
    let d = folder(&[("crm.toml", text.clone())]);
    let e = only_problem(d.path());
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name = \"customers\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert_placed(&e, &d.path().join("crm.toml"), line, "store.tables[1].name");
    assert!(e.message.contains("already listed"), "{e}");
}

fn store_with(d: &Path, sql: &str) -> PathBuf {
    let db = d.join("crm.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    db
}

#[test]
fn a_subject_column_missing_from_a_reachable_store() {
    let d = common::tempdir();
    let db = store_with(
        d.path(),
        "CREATE TABLE customers (customer_id INTEGER, name TEXT);",
    );
    let text = policy("crm", db.to_str().unwrap(), "file:///srv/b/crm", "");
    std::fs::write(d.path().join("crm.toml"), &text).unwrap();
    let e = only_problem(d.path());
    assert_placed(
        &e,
        &d.path().join("crm.toml"),
        line_of(&text, "subject ="),
        "store.tables[0].subject",
    );
    assert!(e.message.contains("column `id` does not exist"), "{e}");
    assert!(
        e.message.contains("customer_id"),
        "lists the columns there are: {e}"
    );
    // Without probing the store, the same folder passes.
    assert!(check_dir(d.path(), false).unwrap().is_ok());
}

#[test]
fn a_table_missing_from_a_reachable_store() {
    let d = common::tempdir();
    let db = store_with(d.path(), "CREATE TABLE clients (id INTEGER);");
    let text = policy("crm", db.to_str().unwrap(), "file:///srv/b/crm", "");
    std::fs::write(d.path().join("crm.toml"), &text).unwrap();
    let e = only_problem(d.path());
    assert_placed(
        &e,
        &d.path().join("crm.toml"),
        line_of(&text, "name = \"customers\""),
        "store.tables[0].name",
    );
}

#[test]
fn replication_without_an_offsite_target() {
    let text = policy(
        "crm",
        "crm.db",
        "file:///srv/b/crm",
        "\n[[targets]]\nname = \"second\"\nurl = \"file:///srv/c/crm\"\n\n[schedule]\nreplicate = \"0 0 3 * * *\"\n",
    );
    let d = folder(&[("crm.toml", text.clone())]);
    let e = only_problem(d.path());
    assert_placed(
        &e,
        &d.path().join("crm.toml"),
        line_of(&text, "replicate ="),
        "schedule.replicate",
    );
    assert!(e.message.contains("offsite = true"), "{e}");
}

/// Two files with three problems: a bad grace (a.toml), then a policy
/// name (`Billing`) and a cron expression (`nightly`) in b.toml.
fn three_problems_in_two_files() -> tempfile::TempDir {
    let a = policy(
        "crm",
        "a.db",
        "file:///srv/b/a",
        "\n[shred]\ngrace = \"soon\"\n",
    );
    let b = policy(
        "Billing",
        "b.db",
        "file:///srv/b/b",
        "\n[schedule]\nbackup = \"nightly\"\n",
    );
    folder(&[("a.toml", a), ("b.toml", b)])
}

#[test]
fn every_problem_of_every_file_is_reported_and_the_exit_code_is_2() {
    let d = three_problems_in_two_files();
    let r = check_dir(d.path(), true).unwrap();
    let keys: Vec<&str> = r.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["shred.grace", "policy.name", "schedule.backup"]);
    let out = common::run_fail(common::custos().args(["policy", "check"]).arg(d.path()));
    assert_eq!(out.status.code(), Some(2));
    let text = common::stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("a.toml:") && text.contains("b.toml:"),
        "{text}"
    );
}

#[test]
fn the_shipped_example_policies_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let r = check_dir(&dir, true).unwrap();
    assert!(r.is_ok(), "{:#?}", r.problems);
    let classes: std::collections::BTreeSet<_> = r
        .policies
        .iter()
        .flat_map(|p| {
            let mut c: Vec<_> = p.store.tables.iter().map(|t| t.class).collect();
            if p.store.kind == custos::policy::StoreKind::Files {
                c.push(p.store.class);
            }
            c
        })
        .collect();
    assert_eq!(
        classes.len(),
        4,
        "examples cover the four data classes: {classes:?}"
    );
    assert!(r.policies.len() >= 4);
}

#[test]
fn check_and_show_print_json_for_tools() {
    // Problems: the same three as the text, with their places, and exit 2.
    let d = three_problems_in_two_files();
    let out = common::run_fail(
        common::custos()
            .args(["policy", "check", "--json"])
            .arg(d.path()),
    );
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "{v}");
    let problems = v["problems"].as_array().unwrap();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["shred.grace", "policy.name", "schedule.backup"]);
    let grace = &problems[0];
    assert!(
        grace["file"].as_str().unwrap().ends_with("a.toml"),
        "{grace}"
    );
    assert!(grace["line"].as_u64().unwrap() > 1, "{grace}");
    assert!(grace["message"].as_str().unwrap().len() > 5, "{grace}");

    // A good policy: ok, named; and shown with its defaults, credentials
    // left out of every URL, durations in seconds and the next runs in
    // order.
    let good = policy(
        "crm",
        "crm.db",
        "s3://backups/crm?endpoint=http://user:secret-token@127.0.0.1:9000",
        "\n[shred]\ngrace = \"2w\"\n[schedule]\nbackup = \"0 0 1 * * *\"\n",
    );
    let d = folder(&[("crm.toml", good)]);
    let out = common::run(
        common::custos()
            .args(["policy", "check", "--json", "--no-store"])
            .arg(d.path()),
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["policies"], serde_json::json!(["crm"]));
    assert_eq!(v["problems"], serde_json::json!([]));

    let out = common::run(
        common::custos()
            .args(["policy", "show", "--json"])
            .arg(d.path().join("crm.toml")),
    );
    let text = common::stdout(&out);
    assert!(!text.contains("secret-token"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["name"], "crm");
    assert_eq!(v["store"]["kind"], "sqlite");
    assert_eq!(v["store"]["tables"][0]["subject"], "id");
    assert_eq!(v["shred"]["grace_s"], 14 * 86400);
    assert_eq!(v["targets"][0]["primary"], true);
    assert_eq!(v["targets"][0]["url"], "s3://backups/crm");
    let backup = v["schedule"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "backup")
        .unwrap();
    assert_eq!(backup["cron"], "0 0 1 * * *");
    let next: Vec<chrono::DateTime<chrono::Utc>> = backup["next_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(next.len(), 5);
    assert!(next
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::days(1)));
    assert!(next
        .iter()
        .all(|t| t.format("%H:%M:%S").to_string() == "01:00:00"));
    // No [resources]: one thread per core, 256 MiB of buffers.
    assert_eq!(v["resources"]["threads_set"], false);
    assert!(v["resources"]["threads"].as_u64().unwrap() >= 1);
    assert_eq!(v["resources"]["buffer_memory"], 256u64 << 20);
}
