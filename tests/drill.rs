//! Restore drills and signed reports, end to end through the binary:
//! PASS from `file://` and from a real S3 server; FAIL naming the damaged
//! object after a bit flip in a pack; FAIL when an assertion does not hold;
//! shredded groups counted and listed, not lost; an edited report refused by
//! `reports verify`; the HTML page rendered by headless Chromium; scratch
//! space gone after a killed drill once the next drill has run.

mod common;
#[path = "common/faults_util.rs"]
mod util;

use common::{custos, file_url, run, run_fail, stderr, stdout, tempdir, S3Server};
use custos::demo::{generate, DemoSize};
use custos::progress::NoProgress;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use util::{flip_bit, objects_under, sqlite_policy};

/// A demo database, service keys, a vault, a `file://` target, a policy and
/// a state directory, in one temporary folder.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    keys: PathBuf,
    policy: PathBuf,
}

impl Fixture {
    fn new(seed: u64, extra: &str) -> Fixture {
        let dir = tempdir();
        let db = dir.path().join("crm.db");
        generate(&db, DemoSize::Bytes(2 << 20), seed, &NoProgress).unwrap();
        let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            sqlite_policy(
                &db,
                &keys.identity_path,
                &file_url(&dir.path().join("vault")),
                &file_url(&target),
                extra,
            ),
        )
        .unwrap();
        let f = Fixture {
            keys: dir.path().join("keys"),
            dir,
            db,
            policy,
        };
        run(f.cli(&["init", "--policy", &f.policy_s()]));
        run(f.cli(&["backup", "--policy", &f.policy_s()]));
        f
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }
    fn policy_s(&self) -> String {
        self.policy.display().to_string()
    }
    fn public_key(&self) -> String {
        self.keys.join("signing.pub").display().to_string()
    }
    /// The binary with this fixture's state directory.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = custos();
        c.arg("--state-dir").arg(self.state()).args(args);
        c
    }
    fn drill(&self, extra: &[&str]) -> Command {
        let mut args = vec!["drill", "--policy", self.policy.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        self.cli(&args)
    }
    /// Entries left in the scratch folder.
    fn scratch_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.state().join("scratch")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    fn report_path(&self, id: &str) -> PathBuf {
        self.state()
            .join("reports")
            .join("faults")
            .join(format!("{id}.json"))
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn report_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

/// A few customer values of the demo database, to prove reports hold none.
fn customer_values(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT name, id_number, email, phone FROM customers LIMIT 20")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok(vec![
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ])
        })
        .unwrap();
    rows.flat_map(|r| r.unwrap())
        .flatten()
        .filter(|v| v.len() >= 6)
        .collect()
}

fn assert_pass(r: &Value) {
    assert_eq!(r["verdict"], "PASS", "reasons: {}", r["reasons"]);
    assert_eq!(r["reasons"].as_array().unwrap().len(), 0);
    let tables = r["tables"].as_array().unwrap();
    assert!(tables.len() >= 5, "per-table results: {tables:?}");
    for t in tables {
        assert_eq!(t["count_ok"], true, "{t}");
        assert_eq!(t["checksum_ok"], true, "{t}");
        assert_eq!(t["rows_expected"], t["rows_restored"], "{t}");
        assert_eq!(t["checksum_expected"], t["checksum_restored"], "{t}");
    }
    let cdrs = tables.iter().find(|t| t["name"] == "cdrs").unwrap();
    assert!(cdrs["rows_restored"].as_u64().unwrap() > 100);
    assert_eq!(r["integrity_check"]["ok"], true);
    assert_eq!(r["foreign_key_check"]["ok"], true);
    assert!(r["rto"]["measured_ms"].is_u64());
    assert!(r["restored"]["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn drill_passes_from_file_target_with_a_signed_report() {
    let f = Fixture::new(
        11,
        "[drill]\nrto = \"1h\"\n[[drill.assert]]\nsql = \"SELECT count(*) FROM customers WHERE id_number IS NULL\"\nexpect = 0\n",
    );
    let out = run(f.drill(&[]));
    let r = report_of(&out);
    assert_pass(&r);
    assert_eq!(r["target"]["name"], "primary");
    assert_eq!(r["store"], "sqlite");
    assert_eq!(r["snapshot"]["selection"], "latest");
    assert_eq!(r["rto"]["target_ms"], 3_600_000);
    assert_eq!(r["rto"]["met"], true);
    assert_eq!(r["assertions"][0]["passed"], true);
    assert_eq!(r["assertions"][0]["actual"], 0);
    assert_eq!(r["custos_version"], custos::VERSION);
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("drill-") && id.len() == "drill-20260101T000000Z-0123abcd".len());

    // Stored locally and on the primary target, the same signed text.
    let local = std::fs::read_to_string(f.report_path(&id)).unwrap();
    let remote = std::fs::read_to_string(f.target().join(format!("reports/{id}.json"))).unwrap();
    assert_eq!(local, remote);
    let key = custos::keys::load_public_key(&f.keys.join("signing.pub")).unwrap();
    let body = custos::drill::report::DrillReport::verify(&local, &key).unwrap();
    assert_eq!(body.id, id);

    // No customer value anywhere in the report.
    let values = customer_values(&f.db);
    assert!(values.len() > 20);
    for v in &values {
        assert!(
            !local.contains(v.as_str()),
            "the report holds a customer value"
        );
    }

    // The scratch space is gone; the audit log has the drill.
    assert!(f.scratch_entries().is_empty(), "{:?}", f.scratch_entries());
    let audit = std::fs::read_to_string(f.state().join("audit/audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["op"], "drill");
    assert_eq!(last["outcome"], "ok");
    assert!(last["objects"]
        .as_array()
        .unwrap()
        .contains(&Value::from(id.clone())));

    // reports list / show / verify.
    let out = run(f.cli(&["reports", "list", "--policy", &f.policy_s(), "--json"]));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["verdict"], "PASS");
    let out = run(f.cli(&["reports", "show", &id, "--format", "json"]));
    assert_eq!(stdout(&out), local);
    let out = run(f.cli(&["reports", "show", &id]));
    assert!(stdout(&out).contains("PASS"));
    let out = run(f.cli(&["reports", "verify", &id, "--public-key", &f.public_key()]));
    assert!(stdout(&out).contains("signature OK"), "{}", stdout(&out));
    run(f.cli(&["reports", "verify", &id, "--policy", &f.policy_s()]));

    // Edited by one byte (a digit of a count, then a single space): refused.
    let edited = f.dir.path().join("edited.json");
    let pos = local.find("\"rows_expected\": ").unwrap() + "\"rows_expected\": ".len();
    let mut b = local.clone().into_bytes();
    b[pos] = if b[pos] == b'9' { b'8' } else { b[pos] + 1 };
    std::fs::write(&edited, &b).unwrap();
    let out = run_fail(f.cli(&[
        "reports",
        "verify",
        edited.to_str().unwrap(),
        "--public-key",
        &f.public_key(),
    ]));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("NOT VERIFIED"), "{}", stderr(&out));
    let mut b = local.clone().into_bytes();
    let sp = local.find("\n  ").unwrap() + 1;
    b.insert(sp, b' ');
    b.remove(b.len() - 1);
    std::fs::write(&edited, &b).unwrap();
    let out = run_fail(f.cli(&[
        "reports",
        "verify",
        edited.to_str().unwrap(),
        "--public-key",
        &f.public_key(),
    ]));
    assert_eq!(code(&out), 3);
    // The untouched file still verifies as a file too.
    run(f.cli(&[
        "reports",
        "verify",
        f.report_path(&id).to_str().unwrap(),
        "--public-key",
        &f.public_key(),
    ]));
}

#[test]
fn drill_passes_from_the_s3_server() {
    let s3 = S3Server::start();
    s3.create_bucket("drills");
    let dir = tempdir();
    let db = dir.path().join("crm.db");
    generate(&db, DemoSize::Bytes(1 << 20), 5, &NoProgress).unwrap();
    let keys = custos::keys::init_keys(&dir.path().join("keys")).unwrap();
    let policy = dir.path().join("policy.toml");
    // The only target, the primary, is on the S3 server.
    let text = sqlite_policy(
        &db,
        &keys.identity_path,
        &file_url(&dir.path().join("vault")),
        &s3.url("drills", "crm"),
        "",
    );
    std::fs::write(&policy, text).unwrap();
    let state = dir.path().join("state");
    let cli = |args: &[&str]| {
        let mut c = custos();
        c.envs(s3.env()).arg("--state-dir").arg(&state).args(args);
        c
    };
    let p = policy.to_str().unwrap();
    run(cli(&["init", "--policy", p]));
    run(cli(&["backup", "--policy", p]));
    let out = run(cli(&[
        "drill", "--policy", p, "--target", "primary", "--json",
    ]));
    let r = report_of(&out);
    assert_pass(&r);
    assert!(r["target"]["url"]
        .as_str()
        .unwrap()
        .starts_with("s3://drills"));
    let id = r["id"].as_str().unwrap();
    // The report object is on the S3 target.
    let obj = s3.root().join(format!("drills/crm/reports/{id}.json"));
    let text = std::fs::read_to_string(&obj).unwrap();
    let key = custos::keys::load_public_key(&dir.path().join("keys/signing.pub")).unwrap();
    custos::drill::report::DrillReport::verify(&text, &key).unwrap();
}

#[test]
fn bit_flip_in_a_pack_fails_the_drill_naming_the_object() {
    let f = Fixture::new(12, "");
    let packs = objects_under(&f.target(), "data");
    assert!(!packs.is_empty());
    // One bit of one pack (every pack is read by the restore of the only
    // snapshot).
    let victim = &packs[packs.len() / 2];
    let n = std::fs::metadata(f.target().join(victim)).unwrap().len() as usize;
    flip_bit(&f.target().join(victim), n / 3);
    let (out, r) = fails_naming(&f, victim);
    let reasons = r["reasons"].to_string();
    assert!(reasons.contains(victim.as_str()), "{reasons}");
    assert!(r["repair"].as_str().unwrap().contains("not attempted"));
    assert!(stderr(&out).contains("FAILED"));
    assert!(f.scratch_entries().is_empty(), "{:?}", f.scratch_entries());
    // The FAIL is signed and kept like a PASS.
    let id = r["id"].as_str().unwrap();
    run(f.cli(&["reports", "verify", id, "--public-key", &f.public_key()]));
    let audit = std::fs::read_to_string(f.state().join("audit/audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "failed");
}

#[test]
fn bit_flip_in_a_page_list_fails_the_drill_naming_its_pack() {
    let f = Fixture::new(12, "");
    let policy = custos::policy::Policy::load(&f.policy).unwrap();
    let list = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let repo = custos::ops::OpenRepo::open(&policy, None).await.unwrap();
        let s = custos::repo::snapshot::Snapshot::find(&repo.target, &repo.meta, "latest")
            .await
            .unwrap();
        let first = *s.page_lists().next().expect("a page list");
        first
    });
    let victim = format!("data/{}/{}", &list.pack.to_string()[..2], list.pack);
    flip_bit(
        &f.target().join(&victim),
        (list.offset + list.len / 2) as usize,
    );
    fails_naming(&f, &victim);
}

/// Runs a drill that must fail on integrity, naming `victim` (a path
/// under the primary target) as the one damaged object.
fn fails_naming(f: &Fixture, victim: &str) -> (Output, Value) {
    let out = run_fail(f.drill(&[]));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let r = report_of(&out);
    assert_eq!(r["verdict"], "FAIL");
    assert_eq!(r["failure"], "integrity");
    assert_eq!(
        r["corrupt_objects"],
        serde_json::json!([format!("primary:{victim}")]),
        "{}",
        r["reasons"]
    );
    (out, r)
}

#[test]
fn failing_assertion_fails_the_drill() {
    let f = Fixture::new(
        13,
        "[[drill.assert]]\nsql = \"SELECT count(*) FROM customers\"\nexpect = 0\n\
         [[drill.assert]]\nsql = \"SELECT count(*) FROM cdrs WHERE customer_id IS NULL\"\nexpect = 0\n\
         [[drill.assert]]\nsql = \"SELECT name FROM customers ORDER BY id LIMIT 1\"\nexpect = \"nobody\"\n",
    );
    let customers: i64 = rusqlite::Connection::open(&f.db)
        .unwrap()
        .query_row("SELECT count(*) FROM customers", [], |r| r.get(0))
        .unwrap();
    let out = run_fail(f.drill(&[]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let r = report_of(&out);
    assert_eq!(r["verdict"], "FAIL");
    assert_eq!(r["failure"], "other");
    let a = r["assertions"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0]["passed"], false);
    assert_eq!(a[0]["expected"], 0);
    assert_eq!(a[0]["actual"], customers);
    assert_eq!(a[0]["sql"], "SELECT count(*) FROM customers");
    assert_eq!(a[1]["passed"], true);
    // A text expectation: only whether it held, never the value.
    assert_eq!(a[2]["passed"], false);
    assert!(a[2]["actual"].is_null() && a[2]["expected"].is_null());
    let reasons: Vec<&str> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("SELECT count(*) FROM customers"));
    // The data itself was fine.
    for t in r["tables"].as_array().unwrap() {
        assert_eq!(t["checksum_ok"], true);
    }
    let first_name: String = rusqlite::Connection::open(&f.db)
        .unwrap()
        .query_row("SELECT name FROM customers ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let signed = std::fs::read_to_string(f.report_path(r["id"].as_str().unwrap())).unwrap();
    assert!(!signed.contains(&first_name));
}

#[tokio::test(flavor = "multi_thread")]
async fn shredded_groups_are_listed_not_lost() {
    let f = Fixture::new(14, "");
    let policy = custos::policy::Policy::load(&f.policy).unwrap();
    let mut vault = custos::ops::open_vault(&policy).await.unwrap();
    let victim = vault
        .entries()
        .into_iter()
        .find(|e| e.kind == custos::vault::KeyKind::Period)
        .expect("a period key");
    vault.destroy(victim.kind, &victim.name).await.unwrap();
    drop(vault);
    let out = run(f.drill(&[]));
    let r = report_of(&out);
    assert_eq!(r["verdict"], "PASS", "{}", r["reasons"]);
    let cdrs = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cdrs")
        .unwrap()
        .clone();
    let shredded = cdrs["rows_shredded"].as_u64().unwrap();
    assert!(shredded > 0, "{cdrs}");
    assert!(cdrs["checksum_ok"].is_null());
    assert_eq!(cdrs["count_ok"], true);
    let listed = &r["shredded"];
    let t = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "cdrs")
        .unwrap();
    assert_eq!(t["rows"].as_u64().unwrap(), shredded);
    let groups = t["listed"].as_array().unwrap();
    assert_eq!(groups.len() as u64, t["groups"].as_u64().unwrap());
    assert!(groups
        .iter()
        .all(|g| g["group"].as_str().unwrap().len() == 16
            && g["unit"]
                .as_str()
                .unwrap()
                .ends_with(victim.name.rsplit(':').next().unwrap())));
    // Tables without shredded rows still compare their checksums.
    let customers = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "customers")
        .unwrap()
        .clone();
    assert_eq!(customers["checksum_ok"], true);
}

#[test]
fn random_drill_picks_an_older_snapshot() {
    let f = Fixture::new(15, "");
    custos::demo::mutate(&f.db, 0.01, 16).unwrap();
    run(f.cli(&["backup", "--policy", &f.policy_s()]));
    let out = run(f.cli(&["snapshots", "--policy", &f.policy_s(), "--json"]));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = list[0]["id"].as_str().unwrap().to_string();
    let out = run(f.drill(&["--snapshot", "random"]));
    let r = report_of(&out);
    assert_pass(&r);
    assert_eq!(r["snapshot"]["selection"], "random");
    assert_eq!(r["snapshot"]["id"], first.as_str());
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|c| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(c))
                .find(|p| p.is_file())
        })
    })
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (scripts/test.sh installs it)");
        return;
    };
    let f = Fixture::new(17, "[drill]\nrto = \"2h\"\n");
    let r = report_of(&run(f.drill(&[])));
    let id = r["id"].as_str().unwrap();
    let out = run(f.cli(&["reports", "show", id, "--format", "html"]));
    let page = f.dir.path().join("report.html");
    std::fs::write(&page, &out.stdout).unwrap();
    let profile = f.dir.path().join("chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url::Url::from_file_path(&page).unwrap().to_string())
        .output()
        .unwrap();
    let dom = stdout(&out);
    assert!(out.status.success() && !dom.is_empty(), "{}", stderr(&out));
    // Parsed by the browser: the DOM it dumps is the page's, with the verdict,
    // the RTO and one table row per restored table.
    let verdict = dom.find("id=\"verdict\"").expect("verdict element");
    assert!(dom[verdict..].starts_with("id=\"verdict\" class=\"pass\">PASS<"));
    let rto = dom.find("id=\"rto\">").expect("rto element");
    let rto_text = &dom[rto + 9..rto + 9 + dom[rto + 9..].find('<').unwrap()];
    assert!(rto_text.contains("objective 7200.000 s"), "{rto_text}");
    assert!(rto_text.contains("(met)"), "{rto_text}");
    let tables = dom.find("id=\"tables\"").expect("per-table table");
    let body = &dom[tables..tables + dom[tables..].find("</table>").unwrap()];
    let n = r["tables"].as_array().unwrap().len();
    assert_eq!(body.matches("<tr>").count(), n + 1, "{body}");
    for t in r["tables"].as_array().unwrap() {
        assert!(body.contains(&format!("<td>{}</td>", t["name"].as_str().unwrap())));
    }
}

#[test]
fn killed_drill_leaves_scratch_that_the_next_drill_removes() {
    let f = Fixture::new(18, "");
    let scratch = f.state().join("scratch");
    // Kill a drill while its scratch space exists. The drill may finish
    // before the kill lands; then try again.
    let mut caught = false;
    for _ in 0..20 {
        let mut child = f
            .drill(&[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        loop {
            let dirs: Vec<PathBuf> = std::fs::read_dir(&scratch)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            if !dirs.is_empty() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let left: Vec<PathBuf> = std::fs::read_dir(&scratch)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "never killed a drill while its scratch space existed"
    );
    // The next drill removes the abandoned scratch space and its own.
    let r = report_of(&run(f.drill(&[])));
    assert_pass(&r);
    assert!(
        f.scratch_entries().is_empty(),
        "left behind: {:?}",
        f.scratch_entries()
    );
}

#[test]
fn sigterm_removes_scratch_at_once() {
    let f = Fixture::new(19, "");
    let scratch = f.state().join("scratch");
    for _ in 0..20 {
        let mut child = f
            .drill(&[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut signalled = false;
        let status = loop {
            let busy = std::fs::read_dir(&scratch)
                .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(false);
            if busy && !signalled {
                Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .unwrap();
                signalled = true;
            }
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        if signalled && status.code() == Some(130) {
            assert!(
                f.scratch_entries().is_empty(),
                "left behind: {:?}",
                f.scratch_entries()
            );
            return;
        }
    }
    panic!("never interrupted a drill while its scratch space existed");
}

/// The packs of the latest snapshot's page lists (read by place when the
/// snapshot is loaded, before any data).
fn list_packs(f: &Fixture) -> Vec<String> {
    let policy = custos::policy::Policy::load(&f.policy).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(util::page_list_packs(&policy, "latest"))
}

/// Replicates to an off-site target, flips a bit in the pack `pick`
/// chooses on the primary, and drills: the drill fails naming the pack,
/// repairs it from the off-site copy and drills again, which passes.
/// Returns the two reports.
fn damaged_pack_is_repaired_and_redrilled(
    seed: u64,
    pick: impl FnOnce(&Fixture, &[String]) -> String,
) -> (Value, Value) {
    let dr = tempdir();
    let f = Fixture::new(
        seed,
        &format!(
            "[[targets]]\nname = \"dr\"\nurl = \"{}\"\noffsite = true\n",
            file_url(dr.path())
        ),
    );
    run(f.cli(&["replicate", "--policy", &f.policy_s()]));
    let packs = objects_under(&f.target(), "data");
    let victim = pick(&f, &packs);
    let good = std::fs::read(dr.path().join(&victim)).unwrap();
    let n = good.len();
    flip_bit(&f.target().join(&victim), n / 3);
    let out = run_fail(f.drill(&[]));
    // The failure stays on record and decides the exit code.
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let reports: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{}", stdout(&out));
    let (failed, again) = (reports[0].clone(), reports[1].clone());
    assert_eq!(failed["verdict"], "FAIL");
    assert_eq!(
        failed["corrupt_objects"],
        serde_json::json!([format!("primary:{victim}")])
    );
    assert!(
        failed["repair"]
            .as_str()
            .unwrap()
            .starts_with("repaired 1 "),
        "{}",
        failed["repair"]
    );
    // The primary holds the good bytes again, and the re-drill passes,
    // naming the drill it follows.
    assert_eq!(std::fs::read(f.target().join(&victim)).unwrap(), good);
    assert_eq!(again["verdict"], "PASS", "{}", again["reasons"]);
    assert_eq!(again["redrill_of"], failed["id"]);
    for r in [&failed, &again] {
        let id = r["id"].as_str().unwrap();
        assert!(f.report_path(id).is_file());
        run(f.cli(&["reports", "verify", id, "--public-key", &f.public_key()]));
    }
    (failed, again)
}

#[test]
fn damaged_pack_is_repaired_from_the_offsite_copy_and_redrilled() {
    // A pack of chunks or tree pages: the drill chose its snapshot, and
    // the re-drill restores that same snapshot.
    let (failed, again) = damaged_pack_is_repaired_and_redrilled(15, |f, packs| {
        let lists = list_packs(f);
        packs
            .iter()
            .find(|p| !lists.contains(p))
            .expect("a pack without page lists")
            .clone()
    });
    assert!(failed["snapshot"]["id"].is_string(), "{failed}");
    assert_eq!(again["snapshot"]["id"], failed["snapshot"]["id"]);
}

#[test]
fn a_damaged_page_list_pack_is_repaired_and_the_same_choice_drilled_again() {
    // The snapshot's page lists are in the damaged pack: the drill fails
    // while choosing its snapshot, so the re-drill makes the same choice
    // (the latest) once the pack is repaired.
    let (failed, again) = damaged_pack_is_repaired_and_redrilled(16, |f, packs| {
        let lists = list_packs(f);
        packs
            .iter()
            .find(|p| **p == lists[0])
            .expect("the page-list pack is on the primary")
            .clone()
    });
    assert!(failed["snapshot"].is_null(), "{failed}");
    assert!(again["snapshot"]["id"].is_string(), "{again}");
}
