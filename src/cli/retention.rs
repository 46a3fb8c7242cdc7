//! `custos retention --policy P [--target NAME] [--dry-run] [--json] [--as-of TIME]`
//!
//! Applies the `[snapshots] keep_*` rules on every target (or `--target`):
//! forget + prune; lists the shred units whose retention has ended (periods,
//! subjects by pseudonym, never by id, class epochs), schedules them for
//! destruction after the `[shred] grace`, and destroys what is past its
//! grace and not held (see `custos::retention::apply`). `--dry-run` changes
//! nothing. One audit entry per run, also on failure.

use anyhow::{Context, Result};
use clap::Args;
use custos::audit::{AuditLog, Event, Outcome};
use custos::ops::human_bytes;
use custos::ops::prune::PruneReport;
use custos::retention::apply::{apply, ApplyOptions, ApplyReport};
use custos::retention::UnitKind;
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

pub async fn run(a: RetentionArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let state = super::state_dir()?;
    let audit = AuditLog::open(&state.sub("audit")?)?;
    let mut event = Event::new("retention", "operator").policy(&policy.name);
    if let Some(t) = &a.target {
        event = event.object(format!("target:{t}"));
    }
    if a.dry_run {
        event = event.flag("dry-run");
    }
    let now = match &a.as_of {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| {
                format!("--as-of `{t}` is not an RFC 3339 time (e.g. 2026-06-01T00:00:00Z)")
            })?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let opts = ApplyOptions {
        now,
        dry_run: a.dry_run,
        target: a.target.clone(),
        lock_wait: Duration::from_secs(a.lock_wait),
        actor: event.actor.clone(),
        role: "operator".into(),
    };
    let r = match apply(&policy, &state, &opts).await {
        Ok(r) => r,
        Err(e) => {
            // The message names objects and tables, never a value of a row.
            let _ = audit.append(&event.outcome(Outcome::Failed).detail(format!("{e:#}")));
            return Err(e.into());
        }
    };
    audit.append(
        &event
            .outcome(if r.ok() { Outcome::Ok } else { Outcome::Failed })
            .detail(summary(&r)),
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_text(&r);
    }
    if r.ok() {
        Ok(())
    } else {
        anyhow::bail!(
            "retention of policy `{}` did not complete: {}",
            policy.name,
            r.errors
                .iter()
                .cloned()
                .chain(
                    r.shred
                        .iter()
                        .flat_map(|s| s.failed.iter().map(|(u, why)| format!("{}: {why}", u.name)))
                )
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

/// One line for the audit trail: counts only.
fn summary(r: &ApplyReport) -> String {
    let count = |k: UnitKind| r.due.iter().filter(|u| u.kind == k).count();
    let forgotten: usize = r.snapshots.iter().map(|p| p.forgotten.len()).sum();
    let packs: u64 = r
        .snapshots
        .iter()
        .map(|p| p.packs_deleted + p.unindexed_packs_deleted)
        .sum();
    let bytes: u64 = r.snapshots.iter().map(|p| p.bytes_deleted).sum();
    format!(
        "{}forgot {forgotten} snapshot(s), deleted {packs} pack(s) ({bytes} bytes) on {} target(s); due: {} period(s), {} subject(s), {} epoch(s); scheduled {}, destroyed {}, pending {}, held {}, errors {}",
        if r.dry_run { "dry run: would have " } else { "" },
        r.snapshots.len(),
        count(UnitKind::Period),
        count(UnitKind::Subject),
        count(UnitKind::Epoch),
        r.scheduled.len(),
        r.shred.as_ref().map_or(0, |s| s.destroyed.len()),
        r.pending.len(),
        r.held.len(),
        r.errors.len(),
    )
}

fn print_prune(r: &PruneReport) {
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
}

fn print_text(r: &ApplyReport) {
    for p in &r.snapshots {
        print_prune(p);
    }
    for t in &r.write_once_skipped {
        println!("target {t}: write-once, nothing forgotten or pruned (objects stay until the lock expires)");
    }
    println!(
        "due for destruction as of {}: {}",
        r.as_of,
        if r.due.is_empty() { "nothing" } else { "" }
    );
    for u in &r.due {
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
    let unit = |u: &custos::shred::Unit| format!("{} {}", u.kind.as_str(), u.name);
    for p in &r.scheduled {
        println!("scheduled  {}  destroyed after {}", unit(&p.unit), p.due);
    }
    if let Some(s) = &r.shred {
        for d in &s.destroyed {
            println!(
                "destroyed  {}  certificate {}{}",
                unit(&d.unit),
                d.certificate,
                if d.resumed {
                    " (finished an interrupted run)"
                } else {
                    ""
                }
            );
        }
        for (u, why) in &s.failed {
            println!("FAILED     {}: {why}", unit(u));
        }
    }
    for p in &r.pending {
        println!(
            "pending    {}  due {}{}",
            unit(&p.unit),
            p.due,
            if r.held.contains(&p.unit) {
                "  (held)"
            } else {
                ""
            }
        );
    }
    for u in &r.in_progress {
        println!(
            "IN PROGRESS {}  (journalled; the next run finishes it)",
            unit(u)
        );
    }
    for e in &r.errors {
        println!("error      {e}");
    }
}
