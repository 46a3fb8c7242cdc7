//! `custos demo [--dir DIR] [--size small|1g]`: the whole story on
//! generated telecom data with the embedded default (a SQLite store and two
//! `file://` targets), told in plain words: backup, incremental, restore,
//! check, replication, a drill from the off-site copy, the erasure of one
//! customer with its certificate, and the audit trail.
//!
//! `custos demo-data generate|mutate`: the generator alone (benchmarks).

use super::{wrap, Failure};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use custos::demo::{self, DemoSize};
use custos::ops::backup::BackupOptions;
use custos::ops::human_bytes;
use custos::ops::restore::RestoreOptions;
use custos::progress::NoProgress;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory for the demo (database, keys, policy, targets, vault).
    #[arg(long, default_value = "custos-demo")]
    dir: PathBuf,
    /// Size of the generated database: `small` (a few MB) or e.g. `1g`.
    #[arg(long, default_value = "small")]
    size: String,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
pub enum DemoDataCmd {
    /// Create a new telecom demo database.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "small")]
        size: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Change about `fraction` of its rows (updates, new call records, deletions).
    Mutate {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 0.01)]
        fraction: f64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
}

pub fn run_data(c: DemoDataCmd) -> Result<()> {
    match c {
        DemoDataCmd::Generate { out, size, seed } => {
            let size: DemoSize = size.parse().map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let s = demo::generate(
                &out,
                size,
                seed,
                super::progress::for_terminal(false).as_ref(),
            )?;
            println!(
                "generated {}: {} customers, {} subscriptions, {} tickets, {} call records, {}",
                out.display(),
                s.customers,
                s.subscriptions,
                s.tickets,
                s.cdrs,
                human_bytes(s.bytes)
            );
        }
        DemoDataCmd::Mutate { db, fraction, seed } => {
            let s = demo::mutate(&db, fraction, seed)?;
            println!(
                "changed {}: {} rows updated, {} inserted, {} deleted",
                db.display(),
                s.updated,
                s.inserted,
                s.deleted
            );
        }
    }
    Ok(())
}

/// The demo policy: the shape of `policies/crm.toml`, on local folders.
pub fn demo_policy(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Written by `custos demo`: a telecom CRM database backed up to two
# local targets, keys in two local vault locations.
[policy]
name = "demo-crm"

[store]
kind = "sqlite"
path = "{d}/crm.db"
epoch = "quarter"            # tables without subject/period rotate keys quarterly

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "subscriptions"
class = "business"
subject = "customer_id"

[[store.tables]]
name = "tickets"
class = "service"
subject = "customer_id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = {{ column = "started_at", every = "month" }}

[keys]
identity = "{d}/keys/service.age"
recipients = []
vault = ["file://{d}/vault/a", "file://{d}/vault/b"]

[[targets]]
name = "primary"
url = "file://{d}/targets/primary"

[[targets]]
name = "offsite"
url = "file://{d}/targets/offsite"
offsite = true
"#
    )
}

fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

pub async fn run(a: DemoArgs) -> Result<(), Failure> {
    run_inner(a).await.map_err(wrap)
}

async fn run_inner(a: DemoArgs) -> Result<()> {
    let size: DemoSize = a.size.parse().map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    if a.dir.exists() && std::fs::read_dir(&a.dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty; remove it or choose another --dir",
            a.dir.display()
        );
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let db = dir.join("crm.db");
    let progress = super::progress::for_terminal(false);

    step(
        1,
        "Generating a telecom CRM database (customers, subscriptions, tickets, call records)",
    );
    let g = demo::generate(&db, size, a.seed, progress.as_ref())?;
    println!(
        "   {} customers, {} subscriptions, {} tickets, {} call detail records: {}",
        g.customers,
        g.subscriptions,
        g.tickets,
        g.cdrs,
        human_bytes(g.bytes)
    );

    step(
        2,
        "Creating the service keys (age identity for the vault, ed25519 for signing)",
    );
    let k = custos::keys::init_keys(&dir.join("keys"))?;
    println!("   recipient {}", k.recipient);

    step(
        3,
        "Writing the policy and creating the repositories and the key vault",
    );
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, demo_policy(&dir))?;
    let policy = custos::policy::Policy::load(&policy_path)?;
    custos::ops::init::init(&policy).await?;
    println!("   policy {}", policy_path.display());
    println!("   targets: primary and offsite (file://), vault in two locations");

    step(
        4,
        "First backup: every row encrypted under its shred group's key",
    );
    let opts = BackupOptions::for_policy(&policy);
    let b1 = custos::ops::backup::backup(&policy, &opts, progress.clone()).await?;
    println!(
        "   snapshot {}: {} rows, {} read, {} stored, {:.1} s",
        b1.snapshot,
        b1.items,
        human_bytes(b1.bytes_read),
        human_bytes(b1.new_bytes_stored),
        b1.duration_s
    );
    for t in &b1.tables {
        println!(
            "     {:<14} {:<12} {:>9} rows in {:>7} shred groups",
            t.name, t.class, t.rows, t.groups
        );
    }

    step(
        5,
        "Changing about 1% of the rows (new calls, address changes, closed tickets)",
    );
    let m = demo::mutate(&db, 0.01, a.seed + 1)?;
    println!(
        "   {} updated, {} inserted, {} deleted",
        m.updated, m.inserted, m.deleted
    );

    step(6, "Second backup: only changed groups cost storage");
    let b2 = custos::ops::backup::backup(&policy, &opts, progress.clone()).await?;
    let db_size = std::fs::metadata(&db)?.len();
    println!(
        "   snapshot {}: {} rows{}, {} new bytes stored ({:.2}% of the database file), {:.1} s",
        b2.snapshot,
        b2.items,
        match b2.rows_unread {
            0 => String::new(),
            n => format!(" ({n} unchanged, not read again)"),
        },
        human_bytes(b2.new_bytes_stored),
        100.0 * b2.new_bytes_stored as f64 / db_size.max(1) as f64,
        b2.duration_s
    );

    step(
        7,
        "Restoring the latest snapshot to a new file and comparing it with the live database",
    );
    let restored = dir.join("restored.db");
    let r = custos::ops::restore::restore(
        &policy,
        &RestoreOptions {
            target: None,
            snapshot: "latest".into(),
            to: restored.clone(),
            force: false,
            only: Default::default(),
        },
        progress.clone(),
    )
    .await?;
    let cmp = custos::store::compare::compare(&db, &restored)?;
    if !cmp.differences.is_empty() {
        bail!(
            "the restored database differs: {}",
            cmp.differences.join("; ")
        );
    }
    println!(
        "   {} rows restored in {:.1} s; identical to the source: {} tables, {} rows compared value by value",
        r.items, r.duration_s, cmp.tables, cmp.rows
    );

    step(
        8,
        "Checking the repository, reading and decrypting every byte",
    );
    let c = custos::ops::check::check(&policy, None, true, Arc::new(NoProgress)).await?;
    super::check::print_report(&c);
    if !c.ok {
        bail!("check found errors");
    }

    let state = custos::state::StateDir::at(dir.join("state"))?;
    step(
        9,
        "Replicating to the off-site target and re-reading every copy",
    );
    let meta = custos::ops::open_repository_keys(&policy)
        .await
        .ok()
        .map(|v| Arc::new(custos::crypto::MetaKey::new(v.meta_key())));
    let rep = custos::replicate::replicate(
        &policy,
        &custos::replicate::ReplicateOptions {
            verify: true,
            meta,
            state: Some(state.clone()),
            ..Default::default()
        },
    )
    .await?;
    if !rep.ok {
        bail!("replication did not complete: {:?}", rep.problems);
    }
    println!(
        "   {} objects copied; every snapshot held and verified on {} targets",
        rep.actions.iter().filter(|a| a.ok).count(),
        rep.targets.len()
    );

    step(
        10,
        "Restore drill from the off-site copy alone: restore, verify, sign a report",
    );
    let drill = custos::drill::run(
        &policy,
        &state,
        &custos::drill::DrillOptions {
            snapshot: custos::drill::SnapshotChoice::Latest,
            target: Some("offsite".into()),
            redrill_of: None,
        },
        Arc::new(NoProgress),
    )
    .await?;
    let d = &drill.report;
    println!(
        "   drill {}: {} (recovery time {} ms, {} tables checked against the backup's counts and checksums)",
        d.id,
        d.verdict.as_str(),
        d.rto.measured_ms.unwrap_or_default(),
        d.tables.len()
    );
    if d.verdict != custos::drill::report::Verdict::Pass {
        bail!("the drill failed: {}", d.reasons.join("; "));
    }
    println!("   signed report {}", drill.local_path.display());

    step(
        11,
        "Erasing one customer: destroying its key everywhere, with a signed certificate",
    );
    let customer: i64 = rusqlite::Connection::open(&db)?.query_row(
        "SELECT id FROM customers ORDER BY id LIMIT 1 OFFSET 7",
        [],
        |r| r.get(0),
    )?;
    let at = chrono::Utc::now();
    custos::shred::request(
        &policy,
        &state,
        &custos::shred::Request {
            unit: custos::shred::UnitSpec::Subject(customer.to_string()),
            reason: Some("erasure request (demo)".into()),
            request_ref: Some("DEMO-1".into()),
            requester: custos::audit::cli_actor(),
            role: "operator".into(),
            now: true,
        },
        at,
    )
    .await?;
    let run = custos::shred::run(
        &policy,
        &state,
        &custos::shred::RunOptions {
            now: at,
            performer: custos::audit::cli_actor(),
            role: "retention".into(),
            only: None,
        },
    )
    .await?;
    let Some(done) = run.destroyed.first() else {
        bail!("the erasure did not complete: {:?}", run.failed);
    };
    println!(
        "   certificate {}: {} groups ({} rows, counted over every snapshot on every target) made unreadable",
        done.certificate, done.groups_unreadable, done.rows_unreadable
    );
    // Restore from the off-site copy and compare with the live database
    // minus that customer's rows.
    let after = dir.join("restored-after-erasure.db");
    let r2 = custos::ops::restore::restore(
        &policy,
        &RestoreOptions {
            target: Some("offsite".into()),
            snapshot: "latest".into(),
            to: after.clone(),
            force: false,
            only: Default::default(),
        },
        Arc::new(NoProgress),
    )
    .await?;
    let expected = dir.join("expected-after-erasure.db");
    std::fs::copy(&db, &expected)?;
    {
        let c = rusqlite::Connection::open(&expected)?;
        // The restored database keeps rows that only point at the customer
        // (e.g. ticket history without a subject column), as custos does.
        c.execute_batch("PRAGMA foreign_keys = OFF")?;
        for (table, col) in [
            ("customers", "id"),
            ("subscriptions", "customer_id"),
            ("tickets", "customer_id"),
            ("cdrs", "customer_id"),
        ] {
            c.execute(&format!("DELETE FROM {table} WHERE {col} = ?1"), [customer])?;
        }
    }
    let cmp = custos::store::compare::compare(&expected, &after)?;
    if !cmp.differences.is_empty() {
        bail!(
            "the restore after erasure differs from the source minus that customer: {}",
            cmp.differences.join("; ")
        );
    }
    println!(
        "   restore from off-site: {} rows omitted as shredded; every other row identical ({} rows compared)",
        r2.rows_shredded, cmp.rows
    );
    std::fs::remove_file(&expected)?;

    step(12, "Checking the audit trail's hash chain");
    let log = custos::audit::AuditLog::open(&state.sub("audit")?)?;
    let v = log.verify(None)?;
    if !v.ok() {
        bail!("the audit trail is broken: {:?}", v.first_break);
    }
    println!("   {} entries, chain intact", v.entries);

    println!("\nDone. Everything is in {}:", dir.display());
    let st = dir.join("state");
    println!(
        "   custos snapshots --policy {} --state-dir {}",
        policy_path.display(),
        st.display()
    );
    println!(
        "   custos reports verify {} --policy {} --state-dir {}",
        d.id,
        policy_path.display(),
        st.display()
    );
    println!(
        "   custos certificates show {} --state-dir {}",
        done.certificate,
        st.display()
    );
    println!("   custos audit show --state-dir {}", st.display());
    Ok(())
}
