//! `custos retention --policy P [--target NAME] [--dry-run] [--json] [--as-of TIME]`
//!
//! Applies the `[snapshots] keep_*` rules on one target (forget + prune,
//! unless `--dry-run`) and lists the shred units whose retention has ended:
//! periods, subjects (by pseudonym, never by id) and class epochs. Listing
//! destroys nothing. One audit entry per run, also on failure.

use anyhow::{Context, Result};
use clap::Args;
use custos::audit::{AuditLog, Event, Outcome};
use custos::ops::human_bytes;
use custos::ops::prune::{forget_and_prune, PruneOptions, PruneReport};
use custos::retention::{due_units, open_live_store, DueUnit, UnitKind};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct RetentionArgs {
    #[arg(long)]
    policy: PathBuf,
    /// Target whose snapshots are forgotten and pruned (default: the primary).
    #[arg(long)]
    target: Option<String>,
    /// Report only: forget and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Compute due units as of this time (RFC 3339) instead of now.
    #[arg(long)]
    as_of: Option<String>,
    /// Seconds to wait for a running backup to finish before pruning.
    #[arg(long, default_value_t = 600)]
    lock_wait: u64,
}

#[derive(Serialize)]
struct Output<'a> {
    policy: &'a str,
    as_of: String,
    dry_run: bool,
    snapshots: &'a PruneReport,
    due: &'a [DueUnit],
}

pub async fn run(a: RetentionArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let state = super::state_dir()?;
    let audit = AuditLog::open(&state.sub("audit")?)?;
    let target_name = a
        .target
        .clone()
        .unwrap_or_else(|| policy.primary().name.clone());
    let mut event = Event::new("retention", "operator")
        .policy(&policy.name)
        .object(format!("target:{target_name}"));
    if a.dry_run {
        event = event.flag("dry-run");
    }
    match work(&a, &policy).await {
        Ok((report, due, now)) => {
            let count = |k: UnitKind| due.iter().filter(|u| u.kind == k).count();
            let detail = format!(
                "{}forgot {} snapshot(s), deleted {} pack(s) ({} bytes); due: {} period(s), {} subject(s), {} epoch(s)",
                if a.dry_run { "dry run: would have " } else { "" },
                report.forgotten.len(),
                report.packs_deleted + report.unindexed_packs_deleted,
                report.bytes_deleted,
                count(UnitKind::Period),
                count(UnitKind::Subject),
                count(UnitKind::Epoch),
            );
            audit.append(&event.detail(detail))?;
            if a.json {
                let out = Output {
                    policy: &policy.name,
                    as_of: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    dry_run: a.dry_run,
                    snapshots: &report,
                    due: &due,
                };
                println!("{}", serde_json::to_string(&out)?);
            } else {
                print_text(&report, &due, now);
            }
            Ok(())
        }
        Err(e) => {
            // The message names objects and tables, never a value of a row.
            let _ = audit.append(&event.outcome(Outcome::Failed).detail(format!("{e:#}")));
            Err(e)
        }
    }
}

async fn work(
    a: &RetentionArgs,
    policy: &custos::policy::Policy,
) -> Result<(PruneReport, Vec<DueUnit>, chrono::DateTime<chrono::Utc>)> {
    let now = match &a.as_of {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| {
                format!("--as-of `{t}` is not an RFC 3339 time (e.g. 2026-06-01T00:00:00Z)")
            })?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let opts = PruneOptions {
        target: a.target.clone(),
        dry_run: a.dry_run,
        lock_wait: Duration::from_secs(a.lock_wait),
    };
    let report = forget_and_prune(policy, &opts).await?;
    let vault = custos::ops::open_vault(policy).await?;
    let store = open_live_store(policy)?;
    let due = due_units(policy, store.as_ref(), &vault, now)?;
    Ok((report, due, now))
}

fn print_text(r: &PruneReport, due: &[DueUnit], now: chrono::DateTime<chrono::Utc>) {
    let kept = r.snapshots.iter().filter(|d| d.keep).count();
    let verb = if r.dry_run { "would forget" } else { "forgot" };
    println!(
        "target {}: {} snapshot(s), {kept} kept, {verb} {}",
        r.target,
        r.snapshots.len(),
        r.forgotten.len()
    );
    for d in &r.snapshots {
        let why: Vec<String> = d
            .reasons
            .iter()
            .map(|x| format!("{x:?}").to_lowercase())
            .collect();
        if d.keep {
            println!("  keep   {}  {}  ({})", d.id, d.time, why.join(", "));
        } else {
            println!("  forget {}  {}", d.id, d.time);
        }
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "prune: {verb} {} pack(s) and {} unindexed pack(s), {}; {} pack(s) ({}) in use",
        r.packs_deleted,
        r.unindexed_packs_deleted,
        human_bytes(r.bytes_deleted),
        r.packs_kept,
        human_bytes(r.bytes_kept)
    );
    println!(
        "due for destruction as of {}: {}",
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        if due.is_empty() { "nothing" } else { "" }
    );
    for u in due {
        println!(
            "  {:<7} {:<11} {:<32} since {}{}",
            format!("{:?}", u.kind).to_lowercase(),
            u.class.as_str(),
            u.label,
            u.due_since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if u.key_present {
                ""
            } else {
                "  (key already gone)"
            }
        );
    }
}
