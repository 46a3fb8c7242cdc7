//! `custos status --policies DIR [--json]`: per policy and job, the last
//! run, its outcome and the next run; per policy, the replication state
//! (under-replicated snapshots, per target the last verification and
//! whether it is unreachable) from the local replication record.

use anyhow::Result;
use clap::Args;
use custos::schedule::daemon;
use custos::schedule::state::StateFiles;
use std::path::PathBuf;

#[derive(Args)]
pub struct StatusArgs {
    /// The folder of policy files (`*.toml`).
    #[arg(long)]
    policies: PathBuf,
    /// Print one JSON object: `jobs` and `replication`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let state = super::state_dir()?;
    let files = StateFiles::open(&state)?;
    let all = daemon::full_status(&a.policies, &files, &state)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let list = &all.jobs;
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
    };
    println!(
        "{:<16} {:<10} {:<20} {:<10} {:<20} {:>5} {:>5} {:>5}",
        "POLICY", "JOB", "LAST RUN (UTC)", "OUTCOME", "NEXT RUN (UTC)", "OK", "FAIL", "SKIP"
    );
    for s in list {
        let (last, outcome) = match &s.last_run {
            Some(r) => (t(Some(r.tick)), r.outcome.word().to_string()),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<16} {:<10} {:<20} {:<10} {:<20} {:>5} {:>5} {:>5}",
            s.policy,
            s.job.as_str(),
            last,
            outcome,
            t(s.next_run),
            s.runs_ok,
            s.runs_failed,
            s.ticks_skipped
        );
        if let Some(r) = &s.last_run {
            if let custos::schedule::JobOutcome::Failed { error } = &r.outcome {
                println!("    last error: {error}");
            }
        }
    }
    for p in &all.replication {
        print_replication(p);
    }
    Ok(())
}

fn print_replication(p: &daemon::PolicyReplication) {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
    println!();
    println!(
        "replication of `{}`: {} snapshot(s) known, {} under-replicated (min_copies {})",
        p.policy,
        p.snapshots,
        p.under_replicated.len(),
        p.min_copies
    );
    for s in &p.under_replicated {
        println!(
            "    under-replicated {} ({}/{} verified: {})",
            s.id,
            s.verified_on.len(),
            s.min_copies,
            s.verified_on.join(", ")
        );
    }
    for t in &p.targets {
        print!(
            "  {:<16} {:<8} last verified {}, last ok {}, {} snapshot(s) verified",
            t.name,
            if t.offsite { "off-site" } else { "primary" },
            or(&t.last_verified),
            or(&t.last_ok),
            t.snapshots_verified
        );
        if t.failures > 0 {
            print!(
                "; UNREACHABLE since {} ({} failed run(s)), next try after {}",
                or(&t.unreachable_since),
                t.failures,
                or(&t.retry_after)
            );
        }
        println!();
        if let Some(e) = &t.last_error {
            println!("      last error: {e}");
        }
    }
}
