//! `custos run --policies DIR` (the daemon) and
//! `custos run-once --policy P --job JOB` (one job now).

use anyhow::{Context, Result};
use clap::Args;
use custos::schedule::daemon::{self, DaemonOptions};
use custos::schedule::state::StateFiles;
use custos::schedule::{JobKind, JobOutcome};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct RunArgs {
    /// The folder of policy files (`*.toml`).
    #[arg(long)]
    policies: PathBuf,
    /// Jobs running at once, across all policies.
    #[arg(long, default_value_t = 2)]
    max_jobs: usize,
    /// How long a claim on a tick lasts unless renewed (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = duration)]
    lease_ttl: Duration,
    /// On SIGTERM, how long running jobs may take before they are aborted.
    #[arg(long, default_value = "60s", value_parser = duration)]
    stop_timeout: Duration,
    /// How long replication waits before trying again an off-site target
    /// it found unreachable (doubled per failed run, at most 64 times).
    #[arg(long, default_value = "60s", value_parser = duration)]
    replication_retry: Duration,
}

#[derive(Args)]
pub struct RunOnceArgs {
    /// The policy file.
    #[arg(long)]
    policy: PathBuf,
    /// The job: backup, replicate, drill or retention.
    #[arg(long)]
    job: JobKind,
    /// How long the claim lasts unless renewed.
    #[arg(long, default_value = "60s", value_parser = duration)]
    lease_ttl: Duration,
    /// Print the run record as JSON.
    #[arg(long)]
    json: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    custos::policy::parse_duration(s)
}

fn state_files() -> Result<StateFiles> {
    let dir = super::state_dir()?;
    Ok(StateFiles::open(&dir)?)
}

pub async fn run(a: RunArgs) -> Result<()> {
    let mut opts = DaemonOptions::new(a.policies);
    opts.max_jobs = a.max_jobs.max(1);
    opts.lease_ttl = a.lease_ttl;
    opts.stop_timeout = a.stop_timeout;
    opts.ctx.state = Some(super::state_dir()?);
    opts.ctx.replication_retry = Some(a.replication_retry);
    daemon::run(opts, state_files()?).await?;
    Ok(())
}

pub async fn run_once(a: RunOnceArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let ctx = custos::schedule::jobs::JobContext {
        state: Some(super::state_dir()?),
        ..Default::default()
    };
    let rec = daemon::run_once(&policy, a.job, &ctx, state_files()?, a.lease_ttl)
        .await
        .with_context(|| format!("run-once {} of {}", a.job, a.policy.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&rec)?);
    }
    match &rec.outcome {
        JobOutcome::Ok { detail } => {
            if !a.json {
                println!(
                    "{} of policy `{}`: ok in {:.1} s: {detail}",
                    a.job, policy.name, rec.duration_s
                );
            }
            Ok(())
        }
        other => anyhow::bail!("{} of policy `{}`: {}", a.job, policy.name, other.word()),
    }
}
