//! `custos status --policies DIR [--json]`: per policy and job, the last
//! run, its outcome and the next run.

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
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let files = StateFiles::open(&super::state_dir()?)?;
    let list = daemon::status(&a.policies, &files)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
    };
    println!(
        "{:<16} {:<10} {:<20} {:<10} {:<20} {:>5} {:>5} {:>5}",
        "POLICY", "JOB", "LAST RUN (UTC)", "OUTCOME", "NEXT RUN (UTC)", "OK", "FAIL", "SKIP"
    );
    for s in &list {
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
    Ok(())
}
