//! The jobs a policy schedules and the one function that runs them.
//!
//! * `backup`: one snapshot to the primary target; on success, when the
//!   policy has off-site targets, a replication follows at once.
//! * `replicate`: every target brought up to date and verified (`--verify`).
//! * `drill`: the latest snapshot, then a random older one, each restored
//!   from the next target in turn (so every copy is proven over time),
//!   with its signed report.
//! * `retention`: forget + prune, schedule due shreds, destroy what is past
//!   grace (`retention::apply`).
//!
//! Each job appends to the audit trail (the job's actor is
//! `job:<policy>/<job>`, role `job`). Wire a new job into [`run_job`] and
//! nothing else.

use crate::audit::{AuditLog, Event, Outcome};
use crate::drill::{DrillOptions, SnapshotChoice};
use crate::ops::backup::BackupOptions;
use crate::policy::Policy;
use crate::progress::NoProgress;
use crate::state::StateDir;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A scheduled job of a policy, named as in `[schedule]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Replicate,
    Drill,
    Retention,
}

impl JobKind {
    /// Every job, in the order they run in a day.
    pub const ALL: [JobKind; 4] = [
        JobKind::Backup,
        JobKind::Replicate,
        JobKind::Drill,
        JobKind::Retention,
    ];

    /// The job's name (`backup`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Replicate => "replicate",
            JobKind::Drill => "drill",
            JobKind::Retention => "retention",
        }
    }

    /// The job's cron expression in the policy, if it is scheduled.
    pub fn cron(self, policy: &Policy) -> Option<&str> {
        let s = &policy.schedule;
        match self {
            JobKind::Backup => s.backup.as_deref(),
            JobKind::Replicate => s.replicate.as_deref(),
            JobKind::Drill => s.drill.as_deref(),
            JobKind::Retention => s.retention.as_deref(),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown job `{s}`: use backup, replicate, drill or retention"))
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum JobOutcome {
    /// It did its work; `detail` says what (e.g. the snapshot id).
    Ok { detail: String },
    /// It failed; the error names what and where.
    Failed { error: String },
    /// It was stopped by a shutdown before it finished (a backup so stopped
    /// leaves the repository valid; the next run reuses what was uploaded).
    Aborted,
}

impl JobOutcome {
    /// A short word: `ok`, `failed`, `aborted`.
    pub fn word(&self) -> &'static str {
        match self {
            JobOutcome::Ok { .. } => "ok",
            JobOutcome::Failed { .. } => "failed",
            JobOutcome::Aborted => "aborted",
        }
    }
}

/// What jobs share: tunables from the command line.
#[derive(Clone, Debug, Default)]
pub struct JobContext {
    /// The local state directory (audit trail, reports, replication
    /// records). Without it, drill and retention jobs fail and backups are
    /// not audited.
    pub state: Option<StateDir>,
    /// The first pause before replication tries again a target it found
    /// unreachable, doubled per failed run (default
    /// [`crate::replicate::DEFAULT_RETRY_BACKOFF`]). Until then the target
    /// is reported, not tried, and the others are served.
    pub replication_retry: Option<std::time::Duration>,
}

fn actor(policy: &Policy, kind: JobKind) -> String {
    format!("job:{}/{}", policy.name, kind.as_str())
}

fn audit(ctx: &JobContext, policy: &Policy, kind: JobKind, outcome: &JobOutcome) {
    let Some(state) = &ctx.state else { return };
    let (o, detail) = match outcome {
        JobOutcome::Ok { detail } => (Outcome::Ok, detail.clone()),
        JobOutcome::Failed { error } => (Outcome::Failed, error.clone()),
        JobOutcome::Aborted => (Outcome::Failed, "aborted".to_string()),
    };
    let ev = Event::new(kind.as_str(), "job")
        .actor(actor(policy, kind))
        .policy(&policy.name)
        .outcome(o)
        .detail(detail);
    let r = state
        .sub("audit")
        .map_err(|e| e.to_string())
        .and_then(|d| AuditLog::open(&d).map_err(|e| e.to_string()))
        .and_then(|l| l.append(&ev).map_err(|e| e.to_string()));
    if let Err(e) = r {
        tracing::error!(policy = %policy.name, job = %kind, "cannot append to the audit trail: {e}");
    }
}

fn failed(e: impl fmt::Display) -> JobOutcome {
    JobOutcome::Failed {
        error: e.to_string(),
    }
}

fn need_state(ctx: &JobContext) -> Result<&StateDir, JobOutcome> {
    ctx.state
        .as_ref()
        .ok_or_else(|| failed("no local state directory was given to the job"))
}

/// Runs one job of `policy` now and says how it ended. Never panics on a
/// job failure: the failure is the outcome. Backups, drills and
/// retention runs audit themselves; this records the job's outcome too.
pub async fn run_job(ctx: &JobContext, policy: &Policy, kind: JobKind) -> JobOutcome {
    // Boxed so that each job's future is checked `Send` where it is made
    // (the daemon runs jobs on spawned tasks).
    let fut: futures::future::BoxFuture<'_, JobOutcome> = match kind {
        JobKind::Backup => Box::pin(backup_job(ctx, policy)),
        JobKind::Replicate => Box::pin(replicate_job(ctx, policy, true)),
        JobKind::Drill => Box::pin(drill_job(ctx, policy)),
        JobKind::Retention => Box::pin(retention_job(ctx, policy)),
    };
    let out = fut.await;
    audit(ctx, policy, kind, &out);
    out
}

async fn backup_job(ctx: &JobContext, policy: &Policy) -> JobOutcome {
    let opts = BackupOptions::for_policy(policy);
    let r = match crate::ops::backup::backup(policy, &opts, Arc::new(NoProgress)).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let mut detail = format!("snapshot {} ({} items)", r.snapshot, r.items);
    if policy.targets.len() > 1 {
        // Off-site copies right after the backup; a target that is down
        // leaves the snapshot under-replicated (reported), not the backup
        // failed.
        match replicate_job(ctx, policy, false).await {
            JobOutcome::Ok { detail: d } => detail.push_str(&format!("; {d}")),
            JobOutcome::Failed { error } => {
                tracing::error!(policy = %policy.name, "replication after backup: {error}");
                detail.push_str(&format!("; replication incomplete: {error}"));
            }
            _ => {}
        }
    }
    JobOutcome::Ok { detail }
}

async fn replicate_job(ctx: &JobContext, policy: &Policy, verify: bool) -> JobOutcome {
    let meta = match crate::ops::open_repository_keys(policy).await {
        Ok(v) => Some(Arc::new(crate::crypto::MetaKey::new(v.meta_key()))),
        Err(e) => {
            tracing::warn!(policy = %policy.name, "replication without the metadata key (vault: {e}): objects compared by bytes");
            None
        }
    };
    let opts = crate::replicate::ReplicateOptions {
        verify,
        meta,
        state: ctx.state.clone(),
        retry_backoff: Some(
            ctx.replication_retry
                .unwrap_or(crate::replicate::DEFAULT_RETRY_BACKOFF),
        ),
        ..Default::default()
    };
    match crate::replicate::replicate(policy, &opts).await {
        Ok(r) if r.ok => {
            let copied = r.actions.iter().filter(|a| a.ok && !a.repair).count();
            let repaired = r.actions.iter().filter(|a| a.ok && a.repair).count();
            JobOutcome::Ok {
                detail: format!(
                    "replicated to {} target(s): {copied} object(s) copied, {repaired} repaired{}",
                    r.targets.len(),
                    if verify { ", verified" } else { "" }
                ),
            }
        }
        Ok(r) => {
            let problems: Vec<String> = r
                .problems
                .iter()
                .map(|p| format!("{}: {}: {}", p.target, p.object, p.message))
                .chain(r.targets.iter().filter(|t| !t.reachable).map(|t| {
                    format!(
                        "target `{}` unreachable: {}",
                        t.name,
                        t.error.as_deref().unwrap_or("no answer")
                    )
                }))
                .collect();
            failed(format!("replication incomplete: {}", problems.join("; ")))
        }
        Err(e) => failed(e),
    }
}

async fn drill_job(ctx: &JobContext, policy: &Policy) -> JobOutcome {
    let state = match need_state(ctx) {
        Ok(s) => s,
        Err(o) => return o,
    };
    // Rotate through the targets: the n-th drill job restores from target
    // n mod count (n kept in the state directory).
    let target = next_drill_target(state, policy);
    let mut verdicts = Vec::new();
    let mut fail = Vec::new();
    for choice in [SnapshotChoice::Latest, SnapshotChoice::Random] {
        let opts = DrillOptions {
            snapshot: choice,
            target: Some(target.clone()),
            redrill_of: None,
        };
        match crate::drill::run(policy, state, &opts, Arc::new(NoProgress)).await {
            Ok(o) => {
                let r = &o.report;
                verdicts.push(format!("{} {}", r.id, r.verdict.as_str()));
                if r.verdict != crate::drill::report::Verdict::Pass {
                    fail.push(format!("drill {} FAILED: {}", r.id, r.reasons.join("; ")));
                    if o.repaired {
                        let again = opts.again_after_repair(r);
                        if let Ok(o2) =
                            crate::drill::run(policy, state, &again, Arc::new(NoProgress)).await
                        {
                            verdicts.push(format!(
                                "re-drill {} {}",
                                o2.report.id,
                                o2.report.verdict.as_str()
                            ));
                        }
                    }
                }
            }
            Err(e) => fail.push(format!("drill could not run: {e}")),
        }
    }
    if fail.is_empty() {
        JobOutcome::Ok {
            detail: format!("from `{target}`: {}", verdicts.join(", ")),
        }
    } else {
        failed(format!("from `{target}`: {}", fail.join("; ")))
    }
}

fn next_drill_target(state: &StateDir, policy: &Policy) -> String {
    let names: Vec<&str> = policy.targets.iter().map(|t| t.name.as_str()).collect();
    let file = state
        .sub("jobs")
        .map(|d| d.join(format!("{}.drill-rotation", policy.name)))
        .ok();
    let n: usize = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if let Some(f) = &file {
        let _ = std::fs::write(f, format!("{}\n", n.wrapping_add(1)));
    }
    names[n % names.len()].to_string()
}

async fn retention_job(ctx: &JobContext, policy: &Policy) -> JobOutcome {
    let state = match need_state(ctx) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let opts = crate::retention::apply::ApplyOptions {
        now: chrono::Utc::now(),
        dry_run: false,
        target: None,
        lock_wait: std::time::Duration::from_secs(600),
        actor: actor(policy, JobKind::Retention),
        role: "job".into(),
    };
    match crate::retention::apply::apply(policy, state, &opts).await {
        Ok(r) => {
            let forgotten: usize = r.snapshots.iter().map(|p| p.forgotten.len()).sum();
            let destroyed = r.shred.as_ref().map_or(0, |s| s.destroyed.len());
            let detail = format!(
                "forgot {forgotten} snapshot(s); due {}, scheduled {}, destroyed {destroyed}, pending {}, held {}",
                r.due.len(),
                r.scheduled.len(),
                r.pending.len(),
                r.held.len()
            );
            if r.ok() {
                JobOutcome::Ok { detail }
            } else {
                let mut errs = r.errors.clone();
                if let Some(s) = &r.shred {
                    errs.extend(s.failed.iter().map(|(u, why)| format!("{}: {why}", u.name)));
                }
                failed(format!("{detail}; errors: {}", errs.join("; ")))
            }
        }
        Err(e) => failed(e),
    }
}
