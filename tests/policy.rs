//! The policy file: the design's example is accepted, the shipped examples
//! load, and every class of mistake is refused with file, line and key.

use chrono::{TimeZone, Utc};
use custos::policy::{
    parse_cron, parse_duration, DataClass, Epoch, ExtensionConfig, NotBackedUp, Policy,
    PolicyError, StoreKind,
};
use custos::store::Every;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DAY: u64 = 86_400;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/policies")
        .join(name)
}

/// The design's example policy (a valid one) as text.
fn base() -> String {
    std::fs::read_to_string(fixture("design.toml")).unwrap()
}

/// The base policy with one piece of text replaced (the mistake).
fn with(old: &str, new: &str) -> String {
    let b = base();
    assert!(b.contains(old), "the base policy has no `{old}`");
    b.replacen(old, new, 1)
}

/// The 1-based number of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line contains `{needle}`"))
        + 1
}

const FILE: &str = "conf/crm.toml";

fn refused(text: &str) -> PolicyError {
    match Policy::from_str(text, Path::new(FILE)) {
        Ok(_) => panic!("a broken policy was accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the policy is refused with exactly one problem, placed on the
/// line containing `needle`, naming `key`; returns the message.
fn refused_at(text: &str, needle: &str, key: &str) -> String {
    let e = refused(text);
    let shown = e.to_string();
    let line = line_of(text, needle);
    assert!(
        shown.starts_with(&format!("{FILE}:{line}:")),
        "expected {FILE}:{line}: in: {shown}"
    );
    assert!(
        shown.contains(&format!("`{key}`")),
        "expected key `{key}` in: {shown}"
    );
    assert_eq!(e.line, line);
    assert_eq!(e.key, key);
    assert!(e.column >= 1);
    assert!(e.more.is_empty(), "expected one problem, got: {shown}");
    shown
}

// ---------------------------------------------------------------------------
// Accepted policies
// ---------------------------------------------------------------------------

#[test]
fn design_example_is_accepted_in_full() {
    let p = Policy::load(&fixture("design.toml")).unwrap();
    assert_eq!(p.file, fixture("design.toml"));
    assert_eq!(p.name, "crm");
    assert_eq!(p.store.kind, StoreKind::Sqlite);
    assert_eq!(p.store.path, Some(PathBuf::from("/var/lib/crm/crm.db")));
    assert_eq!(p.store.default_class, DataClass::Business);
    assert_eq!(p.store.epoch, Epoch::Quarter);

    let customers = p.table("customers").unwrap();
    assert_eq!(customers.class, DataClass::Identity);
    assert_eq!(customers.subject.as_deref(), Some("id"));
    assert!(customers.period.is_none());
    let r = customers.retain.as_ref().unwrap();
    assert_eq!(r.after, "closed_at");
    assert_eq!(r.for_, Duration::from_secs(3 * 365 * DAY));

    let cdrs = p.table("cdrs").unwrap();
    assert_eq!(cdrs.class, DataClass::Consumption);
    let period = cdrs.period.as_ref().unwrap();
    assert_eq!(
        (period.column.as_str(), period.every),
        ("started_at", Every::Month)
    );
    assert_eq!(
        cdrs.retain.as_ref().unwrap().for_,
        Duration::from_secs(180 * DAY)
    );

    assert_eq!(p.keys.identity, PathBuf::from("/etc/custos/service.age"));
    assert_eq!(p.keys.recipients.len(), 1);
    assert_eq!(
        p.keys.vault,
        vec!["file:///var/lib/custos/vault", "s3://keys-dr/crm"]
    );

    assert_eq!(p.targets.len(), 2);
    assert_eq!(p.primary().name, "primary");
    assert!(p.target("dr-east").unwrap().offsite);
    assert!(p.target("nowhere").is_none());

    assert_eq!(p.schedule.backup.as_deref(), Some("0 0 2 * * *"));
    assert_eq!(p.schedule.drill.as_deref(), Some("0 0 4 * * Sun"));
    assert_eq!(p.schedule.retention.as_deref(), Some("0 30 3 * * *"));
    assert_eq!(p.schedule.replicate, None);

    assert_eq!(p.snapshots.keep_daily, Some(7));
    assert_eq!(p.snapshots.keep_monthly, Some(12));
    assert_eq!(p.snapshots.keep_yearly, Some(7));
    assert_eq!(p.snapshots.keep_last, None);

    assert_eq!(p.drill.rto, Some(Duration::from_secs(30 * 60)));
    assert_eq!(p.drill.assert.len(), 1);
    assert!(p.drill.assert[0].sql.contains("id_number IS NULL"));
    assert_eq!(p.drill.assert[0].expect, toml::Value::Integer(0));

    assert_eq!(p.shred.grace, Duration::from_secs(7 * DAY));
    assert_eq!(p.replication.min_copies, None);
}

#[test]
fn shipped_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let crm = Policy::load(&dir.join("crm.toml")).unwrap();
    assert_eq!(crm.name, "crm");
    assert_eq!(crm.class_of("customers"), DataClass::Identity);
    assert_eq!(crm.class_of("subscriptions"), DataClass::Business);
    assert_eq!(crm.class_of("tickets"), DataClass::Service);
    assert_eq!(crm.targets.len(), 2);
    assert!(crm
        .targets
        .iter()
        .any(|t| t.offsite && t.url.starts_with("s3://")));
    assert!(crm.keys.vault.len() >= 2);

    let billing = Policy::load(&dir.join("billing.toml")).unwrap();
    assert_eq!(billing.name, "billing");
    let cdrs = billing.table("cdrs").unwrap();
    assert_eq!(cdrs.class, DataClass::Consumption);
    assert_eq!(cdrs.subject.as_deref(), Some("customer_id"));
    assert_eq!(cdrs.period.as_ref().unwrap().every, Every::Month);
    assert_eq!(
        cdrs.retain.as_ref().unwrap().for_,
        Duration::from_secs(180 * DAY)
    );
    assert_eq!(billing.class_of("invoices"), DataClass::Business);
    assert_eq!(billing.targets.len(), 2);
    assert!(billing
        .targets
        .iter()
        .any(|t| t.offsite && t.url.starts_with("s3://")));
    assert!(billing.keys.vault.len() >= 2);
}

#[test]
fn every_file_in_policies_folder_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn relative_paths_resolve_against_the_policy_folder() {
    let text = with("path = \"/var/lib/crm/crm.db\"", "path = \"data/crm.db\"").replace(
        "identity = \"/etc/custos/service.age\"",
        "identity = \"service.age\"",
    );
    let p = Policy::from_str(&text, Path::new("/etc/custos/policies/crm.toml")).unwrap();
    assert_eq!(
        p.store.path,
        Some(PathBuf::from("/etc/custos/policies/data/crm.db"))
    );
    assert_eq!(
        p.keys.identity,
        PathBuf::from("/etc/custos/policies/service.age")
    );
}

#[test]
fn plan_and_class_of_follow_the_table_list() {
    let p = Policy::from_str(&base(), Path::new(FILE)).unwrap();
    let plan = p.plan("cdrs");
    assert_eq!(plan.name, "cdrs");
    assert_eq!(plan.subject.as_deref(), Some("customer_id"));
    assert_eq!(plan.period, Some(("started_at".to_string(), Every::Month)));
    let other = p.plan("audit_trail");
    assert_eq!(other.name, "audit_trail");
    assert_eq!((other.subject, other.period), (None, None));
    assert_eq!(p.class_of("customers"), DataClass::Identity);
    assert_eq!(p.class_of("audit_trail"), DataClass::Business);
}

#[test]
fn default_class_and_epoch_can_be_set() {
    let text = with(
        "kind = \"sqlite\"",
        "kind = \"sqlite\"\ndefault_class = \"service\"\nepoch = \"month\"",
    );
    let p = Policy::from_str(&text, Path::new(FILE)).unwrap();
    assert_eq!(p.class_of("anything"), DataClass::Service);
    assert_eq!(p.store.epoch, Epoch::Month);
}

#[test]
fn postgres_and_files_stores_are_accepted_with_their_location() {
    let pg = with(
        "kind = \"sqlite\"                 # sqlite | postgres | files\npath = \"/var/lib/crm/crm.db\"",
        "kind = \"postgres\"\nurl = \"postgres://custos@db/crm\"",
    );
    let p = Policy::from_str(&pg, Path::new(FILE)).unwrap();
    assert_eq!(p.store.kind, StoreKind::Postgres);
    assert_eq!(p.store.url.as_deref(), Some("postgres://custos@db/crm"));
    assert_eq!(p.store.large_objects, NotBackedUp::Refuse);
    assert_eq!(p.store.extension_config, ExtensionConfig::Include);
    // The store of that policy with more keys after its url.
    let store_with = |keys: &str| {
        let url = "url = \"postgres://custos@db/crm\"";
        let text = pg.replacen(url, &format!("{url}\n{keys}"), 1);
        Policy::from_str(&text, Path::new(FILE)).unwrap().store
    };
    let s = store_with("large_objects = \"skip\"\nextension_config = \"skip\"");
    assert_eq!(s.large_objects, NotBackedUp::Skip);
    assert_eq!(s.extension_config, ExtensionConfig::Skip);
    let s = store_with("extension_config = \"refuse\"");
    assert_eq!(s.extension_config, ExtensionConfig::Refuse);
    // A SQLite store takes neither.
    for key in ["large_objects", "extension_config"] {
        let text = with(
            "path = \"/var/lib/crm/crm.db\"",
            &format!("path = \"/var/lib/crm/crm.db\"\n{key} = \"skip\""),
        );
        let m = refused_at(&text, &format!("{key} ="), &format!("store.{key}"));
        assert!(m.contains("only a `postgres` store"), "{m}");
    }

    let files = r#"
[policy]
name = "contracts"
[store]
kind = "files"
root = "scans"
class = "business"
epoch = "year"
[keys]
identity = "service.age"
vault = ["file:///var/lib/custos/vault"]
[[targets]]
name = "local"
url = "file:///srv/backup/contracts"
"#;
    let p = Policy::from_str(files, Path::new("/etc/custos/contracts.toml")).unwrap();
    assert_eq!(p.store.kind, StoreKind::Files);
    assert_eq!(p.store.root, Some(PathBuf::from("/etc/custos/scans")));
    assert_eq!(p.store.class, DataClass::Business);
    assert_eq!(p.store.epoch, Epoch::Year);
    assert_eq!(p.shred.grace, Duration::from_secs(7 * DAY));
}

#[test]
fn s3_settings_merge_target_over_policy_defaults() {
    let text = base()
        + "\n[s3]\nendpoint = \"https://s3.example.net\"\nregion = \"eu-west-1\"\nmax_retries = 2\n";
    let text = text.replacen(
        "offsite = true",
        "offsite = true\nregion = \"us-east-2\"\nallow_http = false",
        1,
    );
    let p = Policy::from_str(&text, Path::new(FILE)).unwrap();
    let dr = p.target("dr-east").unwrap();
    let s = p.s3_for(dr);
    assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.net"));
    assert_eq!(s.region.as_deref(), Some("us-east-2"));
    assert_eq!(s.allow_http, Some(false));
    assert_eq!(s.max_retries, Some(2));
    let s = p.s3_for(p.primary());
    assert_eq!(s.region.as_deref(), Some("eu-west-1"));
    assert_eq!(s.allow_http, None);
}

// ---------------------------------------------------------------------------
// Refused policies: one test per class of mistake
// ---------------------------------------------------------------------------

#[test]
fn syntax_error_is_placed() {
    let text = with("name = \"dr-east\"", "name = \"dr-east");
    let e = refused(&text);
    assert!(
        e.to_string()
            .starts_with(&format!("{FILE}:{}:", line_of(&text, "\"dr-east"))),
        "{e}"
    );
}

#[test]
fn unknown_key_in_a_table_is_an_error() {
    let text = std::fs::read_to_string(fixture("typo.toml")).unwrap();
    let e = Policy::load(&fixture("typo.toml")).unwrap_err();
    let shown = e.to_string();
    let line = line_of(&text, "subjet =");
    assert!(shown.contains("typo.toml"), "{shown}");
    assert!(shown.contains(&format!("typo.toml:{line}:1:")), "{shown}");
    assert!(shown.contains("`store.tables[1].subjet`"), "{shown}");
    assert!(
        shown.contains("subject"),
        "the message lists the expected keys: {shown}"
    );
}

#[test]
fn unknown_section_is_an_error() {
    let text = with("[shred]", "[shreding]");
    refused_at(&text, "[shreding]", "shreding");
}

#[test]
fn unknown_key_in_an_inline_table_is_an_error() {
    let text = with(
        "retain = { after = \"started_at\", for = \"180d\" }",
        "retain = { after = \"started_at\", fro = \"180d\" }",
    );
    refused_at(&text, "fro =", "store.tables[1].retain.fro");
}

#[test]
fn wrong_type_is_an_error() {
    let text = with("keep_monthly = 12", "keep_monthly = \"12\"");
    refused_at(&text, "keep_monthly", "snapshots.keep_monthly");
}

#[test]
fn wrong_type_inside_an_array_is_an_error() {
    let text = with(
        "vault = [\"file:///var/lib/custos/vault\", \"s3://keys-dr/crm\"]",
        "vault = [\"file:///var/lib/custos/vault\", 3]",
    );
    refused_at(&text, "vault =", "keys.vault[1]");
}

#[test]
fn missing_required_key_is_an_error() {
    let text = with("url = \"s3://dr-east/crm\"\n", "");
    // Reported at the [[targets]] header of the second target.
    let e = refused(&text);
    assert_eq!(e.key, "targets[1].url");
    let second_header = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[targets]]"))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(
        e.to_string()
            .starts_with(&format!("{FILE}:{second_header}:")),
        "{e}"
    );
}

#[test]
fn missing_section_is_an_error() {
    let b = base();
    let start = b.find("[keys]").unwrap();
    let end = b.find("[[targets]]").unwrap();
    let text = format!("{}{}", &b[..start], &b[end..]);
    let e = refused(&text);
    assert_eq!(e.key, "keys");
    assert!(e.to_string().contains("`keys`"), "{e}");
    assert!(e.to_string().starts_with(FILE), "{e}");
}

#[test]
fn bad_policy_name_is_an_error() {
    let text = with("name = \"crm\"", "name = \"CRM prod\"");
    refused_at(&text, "CRM prod", "policy.name");
}

#[test]
fn bad_target_name_is_an_error() {
    let text = with("name = \"dr-east\"", "name = \"dr east\"");
    refused_at(&text, "dr east", "targets[1].name");
}

#[test]
fn sqlite_store_without_path_is_an_error() {
    let text = with("path = \"/var/lib/crm/crm.db\"", "");
    refused_at(&text, "kind = \"sqlite\"", "store.path");
}

#[test]
fn store_location_key_must_match_kind() {
    let text = with(
        "path = \"/var/lib/crm/crm.db\"",
        "path = \"/var/lib/crm/crm.db\"\nroot = \"/srv/files\"",
    );
    refused_at(&text, "root =", "store.root");
}

#[test]
fn postgres_store_without_url_is_an_error() {
    let text = with(
        "kind = \"sqlite\"                 # sqlite | postgres | files\npath = \"/var/lib/crm/crm.db\"",
        "kind = \"postgres\"",
    );
    refused_at(&text, "kind = \"postgres\"", "store.url");
}

#[test]
fn unknown_store_kind_is_an_error() {
    let text = with("kind = \"sqlite\"", "kind = \"mysql\"");
    let msg = refused_at(&text, "kind = \"mysql\"", "store.kind");
    assert!(msg.contains("postgres"), "{msg}");
}

#[test]
fn duplicate_table_is_an_error() {
    let text = with("name = \"cdrs\"", "name = \"customers\"");
    let e = refused(&text);
    // The second `customers` entry is the duplicate.
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name = \"customers\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert_eq!(e.line, second, "{e}");
    assert_eq!(e.key, "store.tables[1].name");
    assert!(e.more.is_empty(), "{e}");
    assert!(e.to_string().contains("store.tables[0]"), "{e}");
}

#[test]
fn duplicate_target_is_an_error() {
    let text = with("name = \"dr-east\"", "name = \"primary\"");
    let e = refused(&text);
    assert_eq!(e.key, "targets[1].name");
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name = \"primary\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert_eq!(e.line, second, "{e}");
}

#[test]
fn no_primary_target_is_an_error() {
    let text = with(
        "url = \"file:///srv/backup/crm\"",
        "url = \"file:///srv/backup/crm\"\noffsite = true",
    );
    let msg = refused_at(&text, "[[targets]]", "targets");
    assert!(msg.contains("primary"), "{msg}");
}

#[test]
fn no_target_at_all_is_an_error() {
    let b = base();
    let start = b.find("[[targets]]").unwrap();
    let end = b.find("[schedule]").unwrap();
    let text = format!("targets = []\n{}{}", &b[..start], &b[end..]);
    refused_at(&text, "targets = []", "targets");
}

#[test]
fn bad_cron_is_an_error() {
    let text = with("drill = \"0 0 4 * * Sun\"", "drill = \"0 0 4 * * Sundays\"");
    refused_at(&text, "Sundays", "schedule.drill");
}

#[test]
fn five_field_cron_gets_a_hint() {
    let text = with("backup = \"0 0 2 * * *\"", "backup = \"0 2 * * *\"");
    let msg = refused_at(&text, "backup =", "schedule.backup");
    assert!(msg.contains("0 0 2 * * *"), "{msg}");
}

#[test]
fn bad_duration_is_an_error() {
    let text = with("for = \"3y\"", "for = \"3 years\"");
    refused_at(&text, "3 years", "store.tables[0].retain.for");
    let text = with("rto = \"30m\"", "rto = \"0m\"");
    refused_at(&text, "rto =", "drill.rto");
    let text = with("grace = \"7d\"", "grace = \"7\"");
    refused_at(&text, "grace =", "shred.grace");
}

#[test]
fn unknown_data_class_is_an_error() {
    let text = with("class = \"consumption\"", "class = \"usage\"");
    let msg = refused_at(&text, "\"usage\"", "store.tables[1].class");
    assert!(
        msg.contains("consumption"),
        "the message lists the classes: {msg}"
    );
}

#[test]
fn unknown_period_is_an_error() {
    let text = with("every = \"month\"", "every = \"week\"");
    refused_at(&text, "\"week\"", "store.tables[1].period.every");
}

#[test]
fn retain_without_after_is_an_error() {
    let text = with(
        "retain = { after = \"closed_at\", for = \"3y\" }",
        "retain = { for = \"3y\" }",
    );
    refused_at(&text, "retain = { for", "store.tables[0].retain.after");
}

#[test]
fn bad_recipient_is_an_error() {
    let text = with(
        "age1jd62egkwa5z34vefwl5r0f4unyna4gew9ezm3se7yphp0dpfjanschuhak",
        "age1...",
    );
    refused_at(&text, "recipients =", "keys.recipients[0]");
}

#[test]
fn empty_vault_is_an_error() {
    let text = with(
        "vault = [\"file:///var/lib/custos/vault\", \"s3://keys-dr/crm\"]",
        "vault = []",
    );
    refused_at(&text, "vault = []", "keys.vault");
}

#[test]
fn unsupported_url_scheme_is_an_error() {
    let text = with("s3://keys-dr/crm", "ftp://keys-dr/crm");
    refused_at(&text, "ftp://", "keys.vault[1]");
    let text = with("s3://dr-east/crm", "https://dr-east/crm");
    refused_at(&text, "https://dr-east", "targets[1].url");
}

#[test]
fn relative_file_url_is_an_error() {
    let text = with("file:///srv/backup/crm", "file://srv/backup/crm");
    let msg = refused_at(&text, "file://srv", "targets[0].url");
    assert!(msg.contains("absolute"), "{msg}");
}

#[test]
fn min_copies_above_target_count_is_an_error() {
    let text = base() + "\n[replication]\nmin_copies = 3\n";
    refused_at(&text, "min_copies", "replication.min_copies");
}

#[test]
fn vault_on_a_target_is_an_error() {
    let text = with("s3://keys-dr/crm", "s3://dr-east/crm/");
    refused_at(&text, "vault =", "keys.vault[1]");
    let text = with(
        "file:///var/lib/custos/vault",
        "file:///srv/backup/crm/keys",
    );
    refused_at(&text, "vault =", "keys.vault[0]");
}

#[test]
fn s3_options_on_a_file_target_are_an_error() {
    let text = with(
        "url = \"file:///srv/backup/crm\"",
        "url = \"file:///srv/backup/crm\"\nregion = \"eu-west-1\"",
    );
    refused_at(&text, "region =", "targets[0].region");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = std::fs::read_to_string(fixture("several.toml")).unwrap();
    let e = Policy::load(&fixture("several.toml")).unwrap_err();
    let keys: Vec<&str> = e.problems().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["policy.name", "schedule.backup", "shred.grace"]);
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    for (needle, key) in [
        ("Billing Prod", "policy.name"),
        ("every night", "schedule.backup"),
        ("a week", "shred.grace"),
    ] {
        let place = format!("several.toml:{}:", line_of(&text, needle));
        assert!(
            shown
                .lines()
                .any(|l| l.contains(&place) && l.contains(&format!("`{key}`"))),
            "no line with {place} and {key} in:\n{shown}"
        );
    }
}

#[test]
fn unreadable_file_names_the_file() {
    let path = fixture("no-such-policy.toml");
    let e = Policy::load(&path).unwrap_err();
    assert!(e.to_string().contains("no-such-policy.toml"), "{e}");
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn errors_never_echo_the_recipient_list_or_other_values_needlessly() {
    // A recipient that fails to parse is named by its position, not printed.
    let text = with(
        "age1jd62egkwa5z34vefwl5r0f4unyna4gew9ezm3se7yphp0dpfjanschuhak",
        "age1jd62egkwa5z34vefwl5r0f4unyna4gew9ezm3se7yphp0dpfjanschuhaX",
    );
    let e = refused(&text);
    assert!(!e.to_string().contains("schuhaX"), "{e}");
}

// ---------------------------------------------------------------------------
// Durations, crons, epochs
// ---------------------------------------------------------------------------

#[test]
fn durations_parse() {
    for (text, secs) in [
        ("30s", 30),
        ("30m", 30 * 60),
        ("12h", 12 * 3600),
        ("1d", DAY),
        ("180d", 180 * DAY),
        ("2w", 14 * DAY),
        ("6mo", 180 * DAY),
        ("1mo", 30 * DAY),
        ("3y", 3 * 365 * DAY),
        ("10y", 3650 * DAY),
    ] {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_secs(secs)),
            "{text}"
        );
    }
}

#[test]
fn durations_reject_garbage() {
    for bad in [
        "",
        "d",
        "30",
        "0d",
        "-1d",
        "1.5h",
        "30 d",
        " 30d",
        "30d ",
        "30D",
        "3yrs",
        "1h30m",
        "30sec",
        "999999999999999999999d",
        "99999999999999y",
    ] {
        assert!(parse_duration(bad).is_err(), "`{bad}` was accepted");
    }
}

#[test]
fn crons_parse_and_reject_garbage() {
    for good in [
        "0 0 2 * * *",
        "0 0 4 * * Sun",
        "0 30 3 * * *",
        "0 0 5 1 * * 2027",
        "@daily",
    ] {
        assert!(parse_cron(good).is_ok(), "`{good}` was refused");
    }
    for bad in [
        "",
        "every night",
        "0 2 * * *",
        "0 0 25 * * *",
        "* * * * * * * *",
        "0 0 2 * * Funday",
    ] {
        assert!(parse_cron(bad).is_err(), "`{bad}` was accepted");
    }
}

#[test]
fn epoch_labels() {
    let t = Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap();
    assert_eq!(Epoch::Month.label(t), "2026-11");
    assert_eq!(Epoch::Quarter.label(t), "2026-Q4");
    assert_eq!(Epoch::Year.label(t), "2026");
    let jan = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(Epoch::Quarter.label(jan), "2027-Q1");
    assert_eq!(Epoch::Month.label(jan), "2027-01");
    let mar = Utc.with_ymd_and_hms(2026, 3, 31, 23, 59, 59).unwrap();
    assert_eq!(Epoch::Quarter.label(mar), "2026-Q1");
    let apr = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    assert_eq!(Epoch::Quarter.label(apr), "2026-Q2");
}

#[test]
fn data_class_names() {
    let names: Vec<&str> = DataClass::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names, ["identity", "business", "service", "consumption"]);
    for c in DataClass::ALL {
        assert_eq!(c.as_str().parse::<DataClass>(), Ok(c));
    }
    assert!("Identity".parse::<DataClass>().is_err());
}
